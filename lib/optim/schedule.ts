// Learning-rate schedules (pure functions of the step) and LrScheduler, which applies one to an
// optimizer's groups step by step, like torch.optim.lr_scheduler.
import { check, checkOptions } from '../errors';
import { checkNumber, GROUPS_WITH_OWN_LR, Optimizer, BaseHyper } from './optimizer';

/** A learning rate for every step (0-based: lrAt(0) is the rate of the first update). */
export interface LrSchedule {
  lrAt(step: number): number;
}

function checkStep(step: unknown, what: string): number {
  return checkNumber(step, `${what}: step`, (x) => Number.isInteger(x) && x >= 0, 'an integer >= 0');
}
function checkInt(v: unknown, what: string, min: number): number {
  return checkNumber(v, what, (x) => Number.isInteger(x) && x >= min, `an integer >= ${min}`);
}
function checkObj(o: unknown, what: string, known: string[]): void {
  check(o !== null && typeof o === 'object', 'ERR_ARG', () => `${what}: options must be an object`);
  checkOptions(what, o as object, known);
}

export interface CosineWithWarmupOptions {
  baseLr: number;
  warmupSteps: number;
  totalSteps: number;
  minLr?: number;
  warmupStartLr?: number;
}

/**
 * Linear warm-up from warmupStartLr (at step 0) to baseLr (at warmupSteps), then a cosine from
 * baseLr to minLr at totalSteps (torch's CosineAnnealingLR with T_max = totalSteps - warmupSteps,
 * closed form); minLr after totalSteps.
 */
export function cosineWithWarmup(options: CosineWithWarmupOptions): LrSchedule {
  const w = 'cosineWithWarmup';
  checkObj(options, w, ['baseLr', 'warmupSteps', 'totalSteps', 'minLr', 'warmupStartLr']);
  const baseLr = checkNumber(options.baseLr, `${w}: baseLr`, (x) => x >= 0, 'a finite number >= 0');
  const warmup = checkInt(options.warmupSteps ?? 0, `${w}: warmupSteps`, 0);
  const total = checkInt(options.totalSteps, `${w}: totalSteps`, 1);
  check(total > warmup, 'ERR_ARG', () => `${w}: totalSteps (${total}) must be greater than warmupSteps (${warmup})`);
  const minLr = checkNumber(options.minLr ?? 0, `${w}: minLr`, (x) => x >= 0, 'a finite number >= 0');
  const startLr = checkNumber(options.warmupStartLr ?? 0, `${w}: warmupStartLr`, (x) => x >= 0, 'a finite number >= 0');
  return {
    lrAt(step: number): number {
      checkStep(step, w);
      if (step < warmup) return startLr + ((baseLr - startLr) * step) / warmup;
      const t = Math.min(step - warmup, total - warmup);
      return minLr + ((baseLr - minLr) * (1 + Math.cos((Math.PI * t) / (total - warmup)))) / 2;
    },
  };
}

export interface StepLrOptions {
  baseLr: number;
  stepSize: number;
  gamma?: number;
}

/** baseLr * gamma^floor(step / stepSize) (torch's StepLR). */
export function stepLr(options: StepLrOptions): LrSchedule {
  const w = 'stepLr';
  checkObj(options, w, ['baseLr', 'stepSize', 'gamma']);
  const baseLr = checkNumber(options.baseLr, `${w}: baseLr`, (x) => x >= 0, 'a finite number >= 0');
  const stepSize = checkInt(options.stepSize, `${w}: stepSize`, 1);
  const gamma = checkNumber(options.gamma ?? 0.1, `${w}: gamma`, (x) => x >= 0, 'a finite number >= 0');
  return {
    lrAt(step: number): number {
      checkStep(step, w);
      return baseLr * Math.pow(gamma, Math.floor(step / stepSize));
    },
  };
}

export interface OneCycleOptions {
  maxLr: number;
  totalSteps: number;
  pctStart?: number;
  divFactor?: number;
  finalDivFactor?: number;
  anneal?: 'cos' | 'linear';
  threePhase?: boolean;
}

/**
 * torch.optim.lr_scheduler.OneCycleLR's learning rates (momentum is not cycled): from
 * maxLr / divFactor up to maxLr over pctStart of the steps, then down to
 * maxLr / divFactor / finalDivFactor at totalSteps - 1. Defined for steps 0 .. totalSteps
 * (torch allows one step past the end); later steps are an error, as in torch.
 */
export function oneCycle(options: OneCycleOptions): LrSchedule {
  const w = 'oneCycle';
  checkObj(options, w, ['maxLr', 'totalSteps', 'pctStart', 'divFactor', 'finalDivFactor', 'anneal', 'threePhase']);
  const maxLr = checkNumber(options.maxLr, `${w}: maxLr`, (x) => x >= 0, 'a finite number >= 0');
  const total = checkInt(options.totalSteps, `${w}: totalSteps`, 1);
  const pct = checkNumber(options.pctStart ?? 0.3, `${w}: pctStart`, (x) => x >= 0 && x <= 1, 'in [0, 1]');
  const div = checkNumber(options.divFactor ?? 25, `${w}: divFactor`, (x) => x > 0, 'a finite number > 0');
  const finalDiv = checkNumber(options.finalDivFactor ?? 1e4, `${w}: finalDivFactor`, (x) => x > 0, 'a finite number > 0');
  const anneal = options.anneal ?? 'cos';
  check(anneal === 'cos' || anneal === 'linear', 'ERR_ARG', () => `${w}: anneal must be 'cos' or 'linear', got ${String(anneal)}`);
  const threePhase = options.threePhase ?? false;
  check(typeof threePhase === 'boolean', 'ERR_ARG', () => `${w}: threePhase must be a boolean`);
  const initial = maxLr / div;
  const minLr = initial / finalDiv;
  const phases: [number, number, number][] = threePhase // [end step, start lr, end lr]
    ? [
        [pct * total - 1, initial, maxLr],
        [2 * pct * total - 2, maxLr, initial],
        [total - 1, initial, minLr],
      ]
    : [
        [pct * total - 1, initial, maxLr],
        [total - 1, maxLr, minLr],
      ];
  const annealFn =
    anneal === 'cos'
      ? (a: number, b: number, t: number) => b + ((a - b) / 2) * (Math.cos(Math.PI * t) + 1)
      : (a: number, b: number, t: number) => (b - a) * t + a;
  return {
    lrAt(step: number): number {
      checkStep(step, w);
      check(step <= total, 'ERR_ARG', () => `${w}: step ${step} is past totalSteps (${total})`);
      let start = 0;
      for (let i = 0; i < phases.length; i++) {
        const [end, a, b] = phases[i];
        // a phase of no steps (pctStart 1: nothing left to anneal) is at its end value
        if (step <= end || i === phases.length - 1) return annealFn(a, b, end > start ? (step - start) / (end - start) : 1);
        start = end;
      }
      return minLr; // not reached
    },
  };
}

/**
 * Applies a schedule to an optimizer: on construction every group's lr becomes
 * schedule.lrAt(0) * group.lrScale, and each step() advances one step (call it after
 * optimizer.step(), as with torch's schedulers).
 */
export class LrScheduler {
  private t: number;

  constructor(readonly optimizer: Optimizer<BaseHyper>, readonly schedule: LrSchedule, options: { step?: number } = {}) {
    check(optimizer instanceof Optimizer, 'ERR_ARG', () => 'LrScheduler: optimizer must be an optim optimizer');
    check(schedule !== null && typeof schedule === 'object' && typeof schedule.lrAt === 'function', 'ERR_ARG', () => 'LrScheduler: schedule must have lrAt(step)');
    this.t = checkStep(checkOptions('LrScheduler', options, ['step']).step ?? 0, 'LrScheduler');
    // A group's own lr would be replaced by the schedule's (PyTorch's schedulers scale each
    // group's own lr instead): say how to get that here rather than drop it without a word.
    optimizer.paramGroups.forEach((g, i) => {
      check(!GROUPS_WITH_OWN_LR.has(g), 'ERR_ARG', () => `LrScheduler: param group ${i} has its own lr (${g.lr}), which the schedule would replace: every group's lr is schedule.lrAt(step) x its lrScale; give the group lrScale (e.g. ${g.lr} / the schedule's base lr) instead of lr, or with it`);
    });
    this.apply();
  }

  /** The step whose learning rate is in effect. */
  get currentStep(): number {
    return this.t;
  }

  /** The learning rate of each group, as last set. */
  get lastLr(): number[] {
    return this.optimizer.paramGroups.map((g) => g.lr);
  }

  step(): void {
    this.apply(this.t + 1);
  }

  /** Sets every group's lr for step t, then makes t current (a refused step changes nothing). */
  private apply(t = this.t): void {
    const lr = this.schedule.lrAt(t);
    check(typeof lr === 'number' && Number.isFinite(lr) && lr >= 0, 'ERR_ARG', () => `LrScheduler: the schedule's lrAt(${t}) is ${String(lr)}; a learning rate is a finite number >= 0`);
    for (const g of this.optimizer.paramGroups) g.lr = lr * g.lrScale;
    this.t = t;
  }

  stateDict(): { step: number } {
    return { step: this.t };
  }

  loadStateDict(sd: { step: number }): void {
    check(sd !== null && typeof sd === 'object', 'ERR_ARG', () => 'LrScheduler.loadStateDict: expected {step}');
    this.apply(checkStep(sd.step, 'LrScheduler.loadStateDict'));
  }
}
