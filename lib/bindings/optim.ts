// Native functions of the optim op family (native/napi/optim.cc). Every update is in place:
// the parameter and its state tensors are modified, nothing is returned.
import type { NativeTensor as T } from '../native';

export interface OptimBinding {
  /** SGD (PyTorch semantics). buf: null when momentum is 0; firstStep seeds it with the gradient. */
  sgdStep(p: T, g: T, buf: T | null, lr: number, momentum: number, dampening: number, nesterov: boolean, weightDecay: number, firstStep: boolean): void;
  /** AdamW (PyTorch). step: the 1-based count after this update. */
  adamwStep(p: T, g: T, m: T, v: T, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, step: number): void;
  /** timm Lamb's global clip factor max(||all grads|| / maxGradNorm, 1), a [1] tensor on the grads' device. */
  lambGradClip(grads: T[], maxGradNorm: number): T;
  /** One timm Lamb update of p, m, v. clip: from lambGradClip, or null for none. */
  lambStep(
    p: T, g: T, m: T, v: T, clip: T | null, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number, step: number,
    biasCorrection: boolean, gradAveraging: boolean, decoupledDecay: boolean, trustClip: boolean, alwaysAdapt: boolean,
  ): void;
}

export type { T };
