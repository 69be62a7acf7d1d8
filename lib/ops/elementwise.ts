// Element-wise arithmetic, reductions and shape ops, differentiable.
import { needsGrad, record } from '../autograd';
import { AdaShiftError, check } from '../errors';
import { BinaryOp, native, NativeTensor } from '../native';
import { Tensor } from '../tensor';
import { assertTensor, noMoreArgs, reshapeOwned, shapeStr, wrap } from './util';

function binaryOp(op: keyof typeof BinaryOp, a: Tensor, b: Tensor): Tensor {
  assertTensor(a, op, 'a');
  assertTensor(b, op, 'b');
  const out = wrap(native.binary(BinaryOp[op], a.handle, b.handle));
  if (!needsGrad(a, b)) return out;
  switch (op) {
    case 'add':
      return record(out, 'add', [a, b], (g) => [g, g]);
    case 'sub':
      return record(out, 'sub', [a, b], (g) => [g, b.requiresGrad ? wrap(native.axpby(-1, g.handle, 0, null)) : null]);
    case 'mul':
      return record(out, 'mul', [a, b], (g) => [
        a.requiresGrad ? wrap(native.binary(BinaryOp.mul, g.handle, b.handle)) : null,
        b.requiresGrad ? wrap(native.binary(BinaryOp.mul, g.handle, a.handle)) : null,
      ]);
    case 'div':
      return record(out, 'div', [a, b], (g) => {
        const ga = wrap(native.binary(BinaryOp.div, g.handle, b.handle));
        if (!b.requiresGrad) return [ga, null];
        // d(a/b)/db = -a/b^2 * g = -(g/b) * (a/b)
        const ratio = native.binary(BinaryOp.div, a.handle, b.handle);
        const prod = native.binary(BinaryOp.mul, ga.handle, ratio);
        ratio.dispose();
        const gb = wrap(native.axpby(-1, prod, 0, null));
        prod.dispose();
        if (!a.requiresGrad) {
          ga.dispose();
          return [null, gb];
        }
        return [ga, gb];
      });
  }
}

export const add = (a: Tensor, b: Tensor): Tensor => binaryOp('add', a, b);
export const sub = (a: Tensor, b: Tensor): Tensor => binaryOp('sub', a, b);
export const mul = (a: Tensor, b: Tensor): Tensor => binaryOp('mul', a, b);
export const div = (a: Tensor, b: Tensor): Tensor => binaryOp('div', a, b);

/** alpha * x */
export function scale(x: Tensor, alpha: number): Tensor {
  assertTensor(x, 'scale', 'x');
  check(typeof alpha === 'number' && Number.isFinite(alpha), 'ERR_ARG', () => `scale: the factor must be a finite number, got ${JSON.stringify(alpha) ?? typeof alpha}`);
  const out = wrap(native.axpby(alpha, x.handle, 0, null));
  if (!needsGrad(x)) return out;
  return record(out, 'scale', [x], (g) => [wrap(native.axpby(alpha, g.handle, 0, null))]);
}

/** x + c */
export function addScalar(x: Tensor, c: number): Tensor {
  assertTensor(x, 'addScalar', 'x');
  const out = wrap(native.axpby(1, x.handle, c, null));
  if (!needsGrad(x)) return out;
  return record(out, 'addScalar', [x], (g) => [g]);
}

/** Sum of all elements, shape []. */
export function sum(x: Tensor, ...extra: never[]): Tensor {
  assertTensor(x, 'sum', 'x');
  noMoreArgs('sum', extra, 'sum(x) adds every element (no dim)');
  const out = wrap(reshapeOwned(native.sumAll(x.handle), []));
  if (!needsGrad(x)) return out;
  const shape = x.shape;
  return record(out, 'sum', [x], (g) => [spreadScalar(g, shape, 1)]);
}

/**
 * The scalar g (shape []) times `scale` at every element of a tensor of `shape`, computed on g's
 * device: reading g on the host would synchronise the device on every backward and cannot run
 * inside a CUDA graph capture.
 */
function spreadScalar(g: Tensor, shape: readonly number[], scale: number): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const zeros = native.full([n, 1], 0, g.device);
  const g1 = g.handle.reshape([1]);
  let out: NativeTensor;
  try {
    out = native.addRowvec(zeros, g1);
  } finally {
    zeros.dispose();
    g1.dispose();
  }
  if (scale !== 1) {
    const scaled = native.axpby(scale, out, 0, null);
    out.dispose();
    out = scaled;
  }
  return wrap(reshapeOwned(out, shape));
}

/** Mean of all elements, shape []. */
export function mean(x: Tensor, ...extra: never[]): Tensor {
  assertTensor(x, 'mean', 'x');
  noMoreArgs('mean', extra, 'mean(x) averages every element (no dim)');
  const n = x.numel;
  check(n > 0, 'ERR_SHAPE', () => 'mean of an empty tensor');
  const s = native.sumAll(x.handle);
  const out = wrap(reshapeOwned(native.axpby(1 / n, s, 0, null), []));
  s.dispose();
  if (!needsGrad(x)) return out;
  const shape = x.shape;
  return record(out, 'mean', [x], (g) => [spreadScalar(g, shape, 1 / n)]);
}

/** Same data, new shape (one dimension may be -1). */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  assertTensor(x, 'reshape', 'x');
  check(Array.isArray(shape), 'ERR_SHAPE', () => `reshape: shape must be an array, got ${shape === null ? 'null' : typeof shape}`);
  const dims = Array.from(shape);
  dims.forEach((d, i) => check(Number.isSafeInteger(d) && d >= -1, 'ERR_SHAPE', () => `reshape: shape[${i}] must be an integer >= -1, got ${String(d)}`));
  const neg = dims.filter((d) => d === -1).length;
  if (neg > 1) throw new AdaShiftError('ERR_SHAPE', 'reshape: at most one dimension may be -1');
  if (neg === 1) {
    const known = dims.filter((d) => d !== -1).reduce((p, d) => p * d, 1);
    check(known > 0 && x.numel % known === 0, 'ERR_SHAPE', () => `reshape: cannot reshape ${shapeStr(x.shape)} into ${shapeStr(shape)}`);
    dims[dims.indexOf(-1)] = x.numel / known;
  }
  const inShape = x.shape;
  const out = wrap(x.handle.reshape(dims));
  if (!needsGrad(x)) return out;
  return record(out, 'reshape', [x], (g) => [wrap(g.handle.reshape(inShape))]);
}

/** Flattens dimensions from `startDim` on into one. */
export function flatten(x: Tensor, startDim = 1): Tensor {
  assertTensor(x, 'flatten', 'x');
  const s = x.shape;
  // negative: counted from the end, as in PyTorch (-1: the last axis)
  const rank = Math.max(s.length, 1);
  check(Number.isInteger(startDim) && startDim >= -rank && startDim < rank, 'ERR_ARG', () => `flatten: startDim ${startDim} out of range for ${shapeStr(s)} (expected an integer in [${-rank}, ${rank - 1}])`);
  const d = startDim < 0 ? startDim + rank : startDim;
  return reshape(x, [...s.slice(0, d), s.slice(d).reduce((a, b) => a * b, 1)]);
}

/** Reorders the axes: out.shape[i] = x.shape[axes[i]]. */
export function permute(x: Tensor, axes: readonly number[]): Tensor {
  assertTensor(x, 'permute', 'x');
  check(Array.isArray(axes), 'ERR_ARG', () => `permute: axes must be an array of integers, got ${axes === null ? 'null' : typeof axes}`);
  const out = wrap(native.permute(x.handle, Array.from(axes)));
  if (!needsGrad(x)) return out;
  const inverse = new Array<number>(axes.length);
  axes.forEach((a, i) => (inverse[a] = i));
  return record(out, 'permute', [x], (g) => [wrap(native.permute(g.handle, inverse))]);
}

/** Swaps two axes. */
export function transpose(x: Tensor, dim0: number, dim1: number): Tensor {
  assertTensor(x, 'transpose', 'x');
  check(Number.isInteger(dim0) && Number.isInteger(dim1), 'ERR_ARG', () => `transpose: axes must be integers, got ${String(dim0)}, ${String(dim1)}`);
  const r = x.shape.length;
  const axes = Array.from({ length: r }, (_, i) => i);
  const a = dim0 < 0 ? dim0 + r : dim0, b = dim1 < 0 ? dim1 + r : dim1;
  check(a >= 0 && a < r && b >= 0 && b < r, 'ERR_ARG', () => `transpose: axes ${dim0}, ${dim1} out of range for rank ${r}`);
  [axes[a], axes[b]] = [axes[b], axes[a]];
  return permute(x, axes);
}
