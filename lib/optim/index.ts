// Optimizers (SGD, AdamW, LAMB) with fused native updates, parameter groups, and
// learning-rate schedules.
import { check, checkOptions } from '../errors';
import type { Tensor } from '../tensor';
import { AdamW } from './adamw';
import { LAMB } from './lamb';
import type { BaseHyper, NamedParam, Optimizer, ParamGroupSpec, ParamsArg } from './optimizer';
import { SGD } from './sgd';

export { Optimizer } from './optimizer';
export type { BaseHyper, CommonOptions, NamedParam, OptimizerStateDict, ParamGroup, ParamGroupSpec, ParamList, ParamsArg, ParamState } from './optimizer';
export { SGD } from './sgd';
export type { SGDHyper, SGDOptions } from './sgd';
export { AdamW } from './adamw';
export type { AdamWHyper, AdamWOptions } from './adamw';
export { LAMB } from './lamb';
export type { LAMBHyper, LAMBOptions } from './lamb';
export { cosineWithWarmup, LrScheduler, oneCycle, stepLr } from './schedule';
export type { CosineWithWarmupOptions, LrSchedule, OneCycleOptions, StepLrOptions } from './schedule';

/** 1-D parameters (BatchNorm / LayerNorm weights and biases) and every parameter named '*bias'. */
export function isBnOrBias(name: string, p: Tensor): boolean {
  return p.shape.length <= 1 || name === 'bias' || name.endsWith('.bias');
}

export interface ParamGroupsOptions {
  weightDecay: number;
  /** Which parameters get weight decay 0: 'bn-and-bias' (default), 'none', or a predicate. */
  exempt?: 'bn-and-bias' | 'none' | ((name: string, p: Tensor) => boolean);
}

/**
 * Two parameter groups of a module (or of [name, tensor] pairs): [decayed with weightDecay,
 * exempt with weightDecay 0]. Both groups are always present (possibly empty), so group 0 and
 * group 1 keep their meaning.
 */
export function paramGroups(module: { namedParameters(): NamedParam[] } | NamedParam[], options: ParamGroupsOptions): ParamGroupSpec[] {
  check(options !== null && typeof options === 'object', 'ERR_ARG', () => 'paramGroups: options {weightDecay, exempt?} are required');
  checkOptions('paramGroups', options, ['weightDecay', 'exempt']);
  const wd = options.weightDecay;
  check(typeof wd === 'number' && Number.isFinite(wd) && wd >= 0, 'ERR_ARG', () => `paramGroups: weightDecay must be a finite number >= 0, got ${String(wd)}`);
  const ex = options.exempt ?? 'bn-and-bias';
  check(ex === 'bn-and-bias' || ex === 'none' || typeof ex === 'function', 'ERR_ARG', () => `paramGroups: exempt must be 'bn-and-bias', 'none' or a function, got ${String(ex)}`);
  const named = Array.isArray(module) ? module : module && typeof module.namedParameters === 'function' ? module.namedParameters() : null;
  check(named !== null, 'ERR_ARG', () => 'paramGroups: expected a Module or [name, tensor] pairs');
  const isExempt = ex === 'bn-and-bias' ? isBnOrBias : ex === 'none' ? () => false : ex;
  const decay: NamedParam[] = [], noDecay: NamedParam[] = [];
  for (const [n, p] of named) (isExempt(n, p) ? noDecay : decay).push([n, p]);
  return [
    { params: decay, weightDecay: wd },
    { params: noDecay, weightDecay: 0 },
  ];
}

export type OptimizerName = 'sgd' | 'adamw' | 'lamb';

/** What makeOptimizer passes on (each optimizer takes the ones it has; the rest stay default). */
export interface MakeOptimizerOptions {
  lr: number;
  /** SGD */
  momentum?: number;
  /** AdamW, LAMB */
  betas?: [number, number];
  eps?: number;
  /** LAMB */
  maxGradNorm?: number | null;
  capturable?: boolean;
}

/** @internal An optimizer by name (train and bench step choose one with a flag). */
export function makeOptimizer(name: OptimizerName, params: ParamsArg, o: MakeOptimizerOptions): Optimizer<BaseHyper> {
  const common = { lr: o.lr, capturable: o.capturable };
  switch (name) {
    case 'sgd':
      return new SGD(params, { ...common, momentum: o.momentum }) as unknown as Optimizer<BaseHyper>;
    case 'adamw':
      return new AdamW(params, { ...common, betas: o.betas, eps: o.eps }) as unknown as Optimizer<BaseHyper>;
    case 'lamb':
      return new LAMB(params, { ...common, betas: o.betas, eps: o.eps, maxGradNorm: o.maxGradNorm }) as unknown as Optimizer<BaseHyper>;
  }
}
