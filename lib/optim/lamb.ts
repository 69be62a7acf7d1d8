// LAMB as timm implements it (timm/optim/lamb.py, the NVIDIA FusedLAMB variant).
import { check } from '../errors';
import { native, NativeTensor } from '../native';
import { Tensor } from '../tensor';
import { checkBetas, checkBool, checkNumber, CommonOptions, Optimizer, ParamGroup, ParamsArg, ScheduleConstants } from './optimizer';

export interface LAMBHyper {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
  /** Bias-correct the moments (timm: bias_correction, default true). */
  biasCorrection: boolean;
  /** m = b1 m + (1 - b1) g (true) or b1 m + g (false) (timm: grad_averaging). */
  gradAveraging: boolean;
  /** LAMBC: clamp the trust ratio to at most 1 (timm: trust_clip). */
  trustClip: boolean;
  /** Apply the trust ratio also to parameters with weight decay 0 (timm: always_adapt). */
  alwaysAdapt: boolean;
  /** p *= 1 - lr wd instead of adding wd p to the update (timm: decoupled_decay). */
  decoupledDecay: boolean;
}

export interface LAMBOptions extends CommonOptions, Partial<LAMBHyper> {
  /**
   * Global gradient-norm clipping before the update, as timm does it: every gradient is divided
   * by max(||all gradients|| / maxGradNorm, 1). null disables it. Default 1.0 (timm's default).
   */
  maxGradNorm?: number | null;
}

/**
 * timm's Lamb. Per step: the global clip factor c (one reduction over every gradient); then
 * per parameter, with g = grad / c: m = b1 m + b3 g; v = b2 v + (1 - b2) g^2;
 * u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps) + wd p; when wd != 0 (or alwaysAdapt)
 * u *= ||p|| / ||u|| (1 when either norm is 0; at most 1 with trustClip); p -= lr u.
 * The step count is per group and advances on every step() (as in timm). The gradients are
 * not modified (timm divides them in place by the clip factor).
 */
export class LAMB extends Optimizer<LAMBHyper> {
  readonly maxGradNorm: number | null;

  constructor(params: ParamsArg, options: LAMBOptions = {}) {
    check(options !== null && typeof options === 'object', 'ERR_ARG', () => 'LAMB: options must be an object');
    super(
      params,
      {
        lr: options.lr ?? 1e-3,
        betas: options.betas ? ([...options.betas] as [number, number]) : [0.9, 0.999],
        eps: options.eps ?? 1e-6,
        weightDecay: options.weightDecay ?? 0,
        biasCorrection: options.biasCorrection ?? true,
        gradAveraging: options.gradAveraging ?? true,
        trustClip: options.trustClip ?? false,
        alwaysAdapt: options.alwaysAdapt ?? false,
        decoupledDecay: options.decoupledDecay ?? false,
      },
      options,
      'LAMB',
      ['maxGradNorm'],
    );
    const mg = options.maxGradNorm === undefined ? 1.0 : options.maxGradNorm;
    if (mg !== null) checkNumber(mg, 'LAMB: maxGradNorm', (x) => x > 0, 'a finite number > 0 or null');
    this.maxGradNorm = mg;
  }

  protected validate(h: LAMBHyper, where: string): void {
    checkNumber(h.lr, `${where}: lr`, (x) => x >= 0, 'a finite number >= 0');
    checkBetas(h.betas, where);
    checkNumber(h.eps, `${where}: eps`, (x) => x >= 0, 'a finite number >= 0');
    checkNumber(h.weightDecay, `${where}: weightDecay`, (x) => x >= 0, 'a finite number >= 0');
    for (const k of ['biasCorrection', 'gradAveraging', 'trustClip', 'alwaysAdapt', 'decoupledDecay'] as const) checkBool(h[k], `${where}: ${k}`);
  }

  protected bufferNames(): string[] {
    return ['exp_avg', 'exp_avg_sq'];
  }

  protected override countsGroupSteps(): boolean {
    return true;
  }

  /**
   * The group's step count (advanced by every step(), like timm's group['step']). Capturable:
   * read back from the device (CUDA graph replays advance it there).
   */
  groupStep(group = 0): number {
    if (this.capturable) this.syncStepsFromDevice();
    return this.groupSteps[group];
  }

  private clip: NativeTensor | null = null;

  override step(): void {
    // The global clip factor over every gradient of every group (timm: _get_clip_grad_norm).
    const grads: Tensor[] = [];
    for (const g of this.paramGroups) for (const p of this.withGrad(g)) grads.push(p.grad!);
    this.clip = this.maxGradNorm !== null && grads.length > 0 ? native.lambGradClip(grads.map((t) => t.handle), this.maxGradNorm) : null;
    try {
      super.step();
    } finally {
      this.clip?.dispose();
      this.clip = null;
    }
  }

  protected scheduleConstants(g: ParamGroup<LAMBHyper>): ScheduleConstants {
    return {
      kind: 'lamb', beta1: g.betas[0], beta2: g.betas[1], weightDecay: g.weightDecay, biasCorrection: g.biasCorrection, decoupledDecay: g.decoupledDecay,
    };
  }

  protected updateGroup(g: ParamGroup<LAMBHyper>, index: number, sched: Tensor | null): void {
    // A capturable group's count is its schedule's, which advances only when the group updates.
    if (this.capturable && !sched) return;
    const step = sched ? this.scheduledStep(index) : ++this.groupSteps[index];
    for (const p of this.withGrad(g)) {
      const st = this.stateOf(p, ['exp_avg', 'exp_avg_sq']);
      const { exp_avg: m, exp_avg_sq: v } = st.buffers;
      native.lambStep(
        p.handle, p.grad!.handle, m.handle, v.handle, this.clip, g.lr, g.betas[0], g.betas[1], g.eps, g.weightDecay, step,
        g.biasCorrection, g.gradAveraging, g.decoupledDecay, g.trustClip, g.alwaysAdapt, sched?.handle ?? null,
      );
      st.step = step;
    }
  }
}
