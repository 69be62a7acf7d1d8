// AdamW: torch.optim.AdamW's update (decoupled weight decay, bias-corrected moments).
import { check } from '../errors';
import { native } from '../native';
import type { Tensor } from '../tensor';
import { checkBetas, checkNumber, CommonOptions, Optimizer, ParamGroup, ParamsArg, ScheduleConstants } from './optimizer';

export interface AdamWHyper {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
}

export interface AdamWOptions extends CommonOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

/**
 * PyTorch's AdamW: p *= 1 - lr * wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
 * p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). One fused native update per
 * parameter; state buffers 'exp_avg', 'exp_avg_sq' and the per-parameter step count (one count
 * per group when capturable).
 */
export class AdamW extends Optimizer<AdamWHyper> {
  constructor(params: ParamsArg, options: AdamWOptions = {}) {
    check(options !== null && typeof options === 'object', 'ERR_ARG', () => 'AdamW: options must be an object');
    super(
      params,
      {
        lr: options.lr ?? 1e-3,
        betas: options.betas ? ([...options.betas] as [number, number]) : [0.9, 0.999],
        eps: options.eps ?? 1e-8,
        weightDecay: options.weightDecay ?? 1e-2,
      },
      options,
      'AdamW',
    );
  }

  protected validate(h: AdamWHyper, where: string): void {
    checkNumber(h.lr, `${where}: lr`, (x) => x >= 0, 'a finite number >= 0');
    checkBetas(h.betas, where);
    checkNumber(h.eps, `${where}: eps`, (x) => x >= 0, 'a finite number >= 0');
    checkNumber(h.weightDecay, `${where}: weightDecay`, (x) => x >= 0, 'a finite number >= 0');
  }

  protected bufferNames(): string[] {
    return ['exp_avg', 'exp_avg_sq'];
  }

  protected scheduleConstants(g: ParamGroup<AdamWHyper>): ScheduleConstants {
    return { kind: 'adamw', beta1: g.betas[0], beta2: g.betas[1], weightDecay: g.weightDecay, biasCorrection: true, decoupledDecay: false };
  }

  protected updateGroup(g: ParamGroup<AdamWHyper>, index: number, sched: Tensor | null): void {
    for (const p of this.withGrad(g)) {
      const st = this.stateOf(p, ['exp_avg', 'exp_avg_sq']);
      const { exp_avg: m, exp_avg_sq: v } = st.buffers;
      const step = sched ? this.scheduledStep(index) : st.step + 1;
      native.adamwStep(p.handle, p.grad!.handle, m.handle, v.handle, g.lr, g.betas[0], g.betas[1], g.eps, g.weightDecay, step, sched?.handle ?? null);
      st.step = step;
    }
  }
}
