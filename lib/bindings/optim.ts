// Native functions of the optim op family (native/napi/optim.cc). Every update is in place:
// the parameter and its state tensors are modified, nothing is returned. Every update takes an
// optional schedule tensor last (capturable optimizers): lr and the step-dependent scalars are
// then read from it on the device, and the lr and step arguments are only validated.
import type { NativeTensor as T } from '../native';

export interface OptimBinding {
  /** SGD (PyTorch semantics). buf: null when momentum is 0; firstStep seeds it with the gradient. */
  sgdStep(p: T, g: T, buf: T | null, lr: number, momentum: number, dampening: number, nesterov: boolean, weightDecay: number, firstStep: boolean, sched?: T | null): void;
  /** AdamW (PyTorch). step: the 1-based count after this update. */
  adamwStep(p: T, g: T, m: T, v: T, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, step: number, sched?: T | null): void;
  /** timm Lamb's global clip factor max(||all grads|| / maxGradNorm, 1), a [1] tensor on the grads' device. */
  lambGradClip(grads: T[], maxGradNorm: number): T;
  /** One timm Lamb update of p, m, v. clip: from lambGradClip, or null for none. */
  lambStep(
    p: T, g: T, m: T, v: T, clip: T | null, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, step: number,
    biasCorrection: boolean, gradAveraging: boolean, decoupledDecay: boolean, trustClip: boolean, alwaysAdapt: boolean,
    sched?: T | null,
  ): void;
  /** A schedule tensor ([8] floats on `device`): lr, the step count, the derived scalars. */
  optimSchedNew(device: string, lr: number, step: number): T;
  /** Advances a schedule one step on its device: step += 1, then the scalars of the new step. */
  optimAdvance(sched: T, kind: 'sgd' | 'adamw' | 'lamb', beta1: number, beta2: number, weightDecay: number, biasCorrection: boolean, decoupledDecay: boolean): void;
  /** Writes the lr (index 0) or the step count (index 1) of a schedule, in stream order. */
  optimSchedWrite(sched: T, index: 0 | 1, value: number): void;
}

export type { T };
