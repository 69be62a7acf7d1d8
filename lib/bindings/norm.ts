// Native functions of the norm op family (native/napi/norm.cc): BatchNorm2d with an optional
// fused activation, pooling, and the fused cross-entropy.
import type { NativeTensor as T } from '../native';

type OptT = T | null;

/** Activation fused after BatchNorm: 0 none, 1 ReLU, 2 SiLU, 3 the AdaShift-B gate, 4 GELU (erf), 5 GELU (tanh approximation). */
export const NormActKind = { none: 0, relu: 1, silu: 2, gate: 3, gelu: 4, geluTanh: 5 } as const;

export interface NormBinding {
  /**
   * Training: batch mean and invstd [C], running stats updated in place (when given).
   * Eval: mean = runningMean, invstd = 1/sqrt(runningVar + eps). With `planes`, also
   * planeXhat[n, c] = (mean_x[n, c] - mean_c) * invstd_c and pooled = planeXhat * w + b ([N, C]),
   * plus the plane means of `residual` when one is given (planes only).
   */
  batchNormStats(x: T, weight: OptT, bias: OptT, runningMean: OptT, runningVar: OptT, training: boolean, momentum: number, eps: number, planes: boolean, residual?: OptT): [T, T, OptT, OptT];
  /** y = act(bn(x) + residual); s: the shift [N, C] or [N, 1, C] for the gate; residual: x's shape, or null. */
  batchNormActForward(x: T, weight: T, bias: T, mean: T, invstd: T, act: number, s: OptT, residual?: OptT): T;
  /**
   * Per (n, c) plane: [sum dz_d, sum dz_d * xhat, ds (gate only)], each [N, C]; with writeDz also
   * dz_d itself (x's shape), the activation's direct input gradient, else null.
   */
  batchNormActBackwardReduce(x: T, dy: T, weight: T, bias: T, mean: T, invstd: T, act: number, s: OptT, residual: OptT, writeDz: boolean): [T, T, OptT, OptT];
  /** Channel sums (with the pooled path's dm when given) -> [dweight, dbias]. */
  batchNormBackwardParams(sumDz: T, sumDzXhat: T, dm: OptT, planeXhat: OptT): [T, T];
  /**
   * [dx, dresidual]; training needs dweight and dbias (the channel sums), eval ignores them.
   * dresidual (the activation's input gradient) only with a residual, else null.
   */
  batchNormActBackwardApply(x: T, dy: T, weight: T, bias: T, mean: T, invstd: T, act: number, s: OptT, dm: OptT, dweight: OptT, dbias: OptT, training: boolean, residual?: OptT): [T, OptT];

  /** -> [y, indices]: indices are flat offsets h * W + w inside the input plane, as float32. */
  maxPool2dForward(x: T, kh: number, kw: number, sh: number, sw: number, ph: number, pw: number): [T, T];
  maxPool2dBackward(dy: T, indices: T, inputShape: number[], kh: number, kw: number, sh: number, sw: number, ph: number, pw: number): T;
  avgPool2dForward(x: T, kh: number, kw: number, sh: number, sw: number, ph: number, pw: number, countIncludePad: boolean): T;
  avgPool2dBackward(dy: T, inputShape: number[], kh: number, kw: number, sh: number, sw: number, ph: number, pw: number, countIncludePad: boolean): T;

  /** labels: class indices as float32 [N] -> [mean loss [1], log-sum-exp [N], correct count [1]]. */
  crossEntropyForward(logits: T, labels: T, labelSmoothing: number): [T, T, T];
  /** grad: the loss's upstream gradient (one element). */
  crossEntropyBackward(logits: T, labels: T, lse: T, grad: T, labelSmoothing: number): T;
}

export type { T };
