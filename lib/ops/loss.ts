// The fused cross-entropy loss (log-softmax + NLL + label smoothing in one kernel per
// direction), and the count of correct predictions that comes with it.
import { needsGrad, noGrad, record } from '../autograd';
import { AdaShiftError, check, checkOptions } from '../errors';
import { capturingOn } from '../graph';
import { native } from '../native';
import { Tensor } from '../tensor';
import type { Device } from '../device';
import { assertTensor, reshapeOwned, shapeStr, wrap } from './util';

/** Class indices, one per row of the logits: integers in [0, K). A Tensor holds them as float32. */
export type Labels = Int32Array | Uint8Array | Uint16Array | Uint32Array | Float32Array | readonly number[] | Tensor;

export interface CrossEntropyOptions {
  /** eps in [0, 1]: the target puts 1 - eps on the label and eps / K on every class. Default 0. */
  labelSmoothing?: number;
}

function logitsDims(fn: string, logits: Tensor): [number, number] {
  assertTensor(logits, fn, 'logits');
  const s = logits.shape;
  check(s.length === 2 && s[0] >= 1 && s[1] >= 1, 'ERR_SHAPE', () => `${fn}: logits must have shape [N, K] with N, K >= 1, got ${shapeStr(s)}`);
  return [s[0], s[1]];
}

/** Exactly N class indices, integers in [0, K) (ERR_ARG naming the first bad one). */
export function checkLabelValues(fn: string, values: ArrayLike<number>, N: number, K: number): void {
  check(values.length === N, 'ERR_ARG', () => `${fn}: expected ${N} labels (one per row of the logits), got ${values.length}`);
  for (let i = 0; i < N; i++) {
    const v = values[i];
    if (!(typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < K)) {
      const got = typeof v === 'number' ? String(v) : `${typeof v} ${String(v)}${typeof v === 'bigint' ? ' (pass numbers: an Int32Array or a number array)' : ''}`;
      throw new AdaShiftError('ERR_ARG', `${fn}: labels must be integers in [0, ${K}) (class indices), got ${got} at index ${i}`);
    }
  }
}

/**
 * Validates labels (integers in [0, K), exactly N of them) and returns them as a float32
 * tensor on `device` that the caller owns (a view when the labels already are such a tensor).
 */
function labelTensor(fn: string, labels: Labels, N: number, K: number, device: Device): Tensor {
  let values: ArrayLike<number>;
  if (labels instanceof Tensor) {
    check(labels.shape.length === 1, 'ERR_ARG', () => `${fn}: a labels tensor must have shape [${N}], got ${shapeStr(labels.shape)}`);
    if (labels.device === device && capturingOn(device)) {
      // Inside a CUDA graph capture nothing can be read back: the kernels check the labels
      // instead (a row whose label is not a class index gets a NaN loss).
      check(labels.shape[0] === N, 'ERR_ARG', () => `${fn}: expected ${N} labels (one per row of the logits), got ${labels.shape[0]}`);
      return labels.detach();
    }
    values = labels.toFloat32Array();
  } else if (Array.isArray(labels) || ArrayBuffer.isView(labels)) {
    values = labels as ArrayLike<number>;
  } else {
    throw new AdaShiftError('ERR_ARG', `${fn}: labels must be an Int32Array, a number array or a Tensor of class indices, got ${labels === null ? 'null' : typeof labels}`);
  }
  checkLabelValues(fn, values, N, K);
  if (labels instanceof Tensor) return labels.device === device ? labels.detach() : labels.to(device);
  return new Tensor(native.fromArray(Float32Array.from(values), [N], device));
}

function smoothingOf(fn: string, options: CrossEntropyOptions): number {
  check(options !== null && typeof options === 'object', 'ERR_ARG', () => `${fn}: options must be an object, got ${options === null ? 'null' : typeof options}`);
  checkOptions(fn, options, ['labelSmoothing']);
  const eps = options.labelSmoothing ?? 0;
  check(typeof eps === 'number' && eps >= 0 && eps <= 1, 'ERR_ARG', () => `${fn}: labelSmoothing must be a number in [0, 1], got ${String(eps)}`);
  return eps;
}

/**
 * Cross-entropy over logits [N, K] and class labels, with optional label smoothing, averaged
 * over the batch (F.cross_entropy): returns a scalar tensor (shape []). Backward:
 * dlogits = (softmax - target) * g / N.
 */
export function crossEntropy(logits: Tensor, labels: Labels, options: CrossEntropyOptions = {}): Tensor {
  const { loss, correct } = crossEntropyWithCorrect(logits, labels, options);
  correct.dispose();
  return loss;
}

/** crossEntropy, plus the number of rows whose (first) largest logit is the label, as a scalar tensor. */
export function crossEntropyWithCorrect(logits: Tensor, labels: Labels, options: CrossEntropyOptions = {}): { loss: Tensor; correct: Tensor } {
  const fn = 'crossEntropy';
  const [N, K] = logitsDims(fn, logits);
  const eps = smoothingOf(fn, options);
  const y = labelTensor(fn, labels, N, K, logits.device);
  const [lossH, lseH, correctH] = native.crossEntropyForward(logits.handle, y.handle, eps);
  const loss = wrap(reshapeOwned(lossH, []));
  const correct = wrap(reshapeOwned(correctH, []));
  const lse = wrap(lseH);
  if (!needsGrad(logits)) {
    lse.dispose();
    y.dispose();
    return { loss, correct };
  }
  record(loss, fn, [logits], (g) => [wrap(native.crossEntropyBackward(logits.handle, y.handle, lse.handle, g.handle, eps))], [lse, y]);
  return { loss, correct };
}

/** The number of rows of logits [N, K] whose first largest entry is the label (NaN counts as the largest, as in torch.argmax). */
export function countCorrect(logits: Tensor, labels: Labels): number {
  return noGrad(() => {
    const { loss, correct } = crossEntropyWithCorrect(logits, labels);
    loss.dispose();
    const n = correct.item();
    correct.dispose();
    return n;
  });
}

/** The fraction of rows of logits [N, K] whose first largest entry is the label (NaN counts as the largest). */
export function accuracy(logits: Tensor, labels: Labels): number {
  const [N] = logitsDims('accuracy', logits);
  return countCorrect(logits, labels) / N;
}
