// SGD with momentum, dampening, Nesterov and (coupled) weight decay: torch.optim.SGD's update.
import { check } from '../errors';
import { native } from '../native';
import type { Tensor } from '../tensor';
import { checkBool, checkNumber, CommonOptions, Optimizer, ParamGroup, ParamsArg, ScheduleConstants } from './optimizer';

export interface SGDHyper {
  lr: number;
  momentum: number;
  dampening: number;
  nesterov: boolean;
  weightDecay: number;
}

export interface SGDOptions extends CommonOptions {
  lr: number;
  momentum?: number;
  dampening?: number;
  nesterov?: boolean;
  weightDecay?: number;
}

/**
 * PyTorch's SGD: g += wd * p; with momentum the first step seeds buf = g, later
 * buf = momentum * buf + (1 - dampening) * g; Nesterov: g += momentum * buf, else g = buf;
 * p -= lr * g. One fused native update per parameter; state buffer 'momentum_buffer'.
 */
export class SGD extends Optimizer<SGDHyper> {
  constructor(params: ParamsArg, options: SGDOptions) {
    check(options !== null && typeof options === 'object', 'ERR_ARG', () => 'SGD: options {lr, ...} are required');
    super(
      params,
      {
        lr: options.lr,
        momentum: options.momentum ?? 0,
        dampening: options.dampening ?? 0,
        nesterov: options.nesterov ?? false,
        weightDecay: options.weightDecay ?? 0,
      },
      options,
      'SGD',
    );
  }

  protected validate(h: SGDHyper, where: string): void {
    checkNumber(h.lr, `${where}: lr`, (x) => x >= 0, 'a finite number >= 0');
    checkNumber(h.momentum, `${where}: momentum`, (x) => x >= 0, 'a finite number >= 0');
    checkNumber(h.dampening, `${where}: dampening`, () => true, 'a finite number');
    checkNumber(h.weightDecay, `${where}: weightDecay`, (x) => x >= 0, 'a finite number >= 0');
    checkBool(h.nesterov, `${where}: nesterov`);
    check(!h.nesterov || (h.momentum > 0 && h.dampening === 0), 'ERR_ARG', () => `${where}: Nesterov momentum requires momentum > 0 and dampening 0, got momentum ${h.momentum} and dampening ${h.dampening}`);
  }

  protected bufferNames(g: ParamGroup<SGDHyper>): string[] {
    return g.momentum !== 0 ? ['momentum_buffer'] : [];
  }

  protected scheduleConstants(g: ParamGroup<SGDHyper>): ScheduleConstants {
    return { kind: 'sgd', beta1: 0, beta2: 0, weightDecay: g.weightDecay, biasCorrection: false, decoupledDecay: false };
  }

  /**
   * SGD captures without {capturable: true} too (its update has no step count), but then a
   * replay uses the learning rate of the capture.
   */
  protected override captureProblem(): string | null {
    if (this.capturable) return this.capturableProblem();
    for (const g of this.paramGroups) {
      if (g.momentum === 0) continue;
      for (const p of g.params) {
        if (p.grad && !this.hasBuffer(p, 'momentum_buffer')) {
          return 'its momentum buffers do not exist yet (the first update seeds them from the gradient, and every replay would seed them again); run one step eagerly before capturing (warmup: 1)';
        }
      }
    }
    return null;
  }

  protected updateGroup(g: ParamGroup<SGDHyper>, index: number, sched: Tensor | null): void {
    for (const p of this.withGrad(g)) {
      let buf = null;
      let first = false;
      if (g.momentum !== 0) {
        // A missing buffer (first update, or a state without one) is seeded with the gradient.
        first = !this.hasBuffer(p, 'momentum_buffer');
        buf = this.stateOf(p, ['momentum_buffer'], null).buffers.momentum_buffer;
      }
      native.sgdStep(p.handle, p.grad!.handle, buf ? buf.handle : null, g.lr, g.momentum, g.dampening, g.nesterov, g.weightDecay, first, sched?.handle ?? null);
      const st = this.stateOf(p, []);
      st.step = sched ? this.scheduledStep(index) : st.step + 1;
    }
  }
}
