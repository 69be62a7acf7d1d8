// Pooling, differentiable: max (PyTorch semantics, the argmax saved for backward), average and
// global average.
import { needsGrad, record } from '../autograd';
import { AdaShiftError, check } from '../errors';
import { native } from '../native';
import { Tensor } from '../tensor';
import { assertTensor, reshapeOwned, shapeStr, wrap } from './util';

/** A window size: one number for both axes, or [height, width]. */
export type Size2 = number | readonly [number, number];

function pair(v: Size2, fn: string, name: string): [number, number] {
  if (typeof v === 'number') return [v, v];
  if (Array.isArray(v) && v.length === 2 && typeof v[0] === 'number' && typeof v[1] === 'number') return [v[0], v[1]];
  throw new AdaShiftError('ERR_ARG', `${fn}: ${name} must be a number or a pair [h, w] of numbers, got ${JSON.stringify(v)}`);
}

function geometry(fn: string, x: Tensor, kernel: Size2, stride: Size2 | undefined | null, padding: Size2) {
  assertTensor(x, fn, 'x');
  check(x.shape.length === 4, 'ERR_SHAPE', () => `${fn}: expected an input of shape [N, C, H, W], got ${shapeStr(x.shape)}`);
  const k = pair(kernel, fn, 'kernel');
  const s = stride === undefined || stride === null ? k : pair(stride, fn, 'stride');
  const p = pair(padding, fn, 'padding');
  return [k[0], k[1], s[0], s[1], p[0], p[1]] as const;
}

/**
 * 2-D max pooling (F.max_pool2d, ceil_mode false): stride defaults to the kernel, padding
 * counts as -inf and may be at most half the kernel. Backward sends each output's gradient to
 * the position of its maximum (the first one on ties). The positions are kept between forward
 * and backward as a float32 tensor of flat offsets h * W + w inside each input plane (exact:
 * planes are limited to 2^24 elements).
 */
export function maxPool2d(x: Tensor, kernel: Size2, stride?: Size2 | null, padding: Size2 = 0): Tensor {
  const [kh, kw, sh, sw, ph, pw] = geometry('maxPool2d', x, kernel, stride, padding);
  const [yH, idxH] = native.maxPool2dForward(x.handle, kh, kw, sh, sw, ph, pw);
  const y = wrap(yH), idx = wrap(idxH);
  if (!needsGrad(x)) {
    idx.dispose();
    return y;
  }
  const shape = x.shape;
  return record(y, 'maxPool2d', [x], (g) => [wrap(native.maxPool2dBackward(g.handle, idx.handle, shape, kh, kw, sh, sw, ph, pw))], [idx]);
}

/**
 * 2-D average pooling (F.avg_pool2d, ceil_mode false): stride defaults to the kernel; with
 * countIncludePad (default) the divisor counts the padded window, else only input elements.
 */
export function avgPool2d(x: Tensor, kernel: Size2, stride?: Size2 | null, padding: Size2 = 0, countIncludePad = true): Tensor {
  const [kh, kw, sh, sw, ph, pw] = geometry('avgPool2d', x, kernel, stride, padding);
  check(typeof countIncludePad === 'boolean', 'ERR_ARG', () => 'avgPool2d: countIncludePad must be a boolean');
  const y = wrap(native.avgPool2dForward(x.handle, kh, kw, sh, sw, ph, pw, countIncludePad));
  if (!needsGrad(x)) return y;
  const shape = x.shape;
  return record(y, 'avgPool2d', [x], (g) => [wrap(native.avgPool2dBackward(g.handle, shape, kh, kw, sh, sw, ph, pw, countIncludePad))]);
}

/** Mean over H and W: [N, C, H, W] -> [N, C] (the classifier head's pooling). */
export function globalAvgPool(x: Tensor): Tensor {
  assertTensor(x, 'globalAvgPool', 'x');
  const s = x.shape;
  check(s.length === 4 && s[2] >= 1 && s[3] >= 1, 'ERR_SHAPE', () => `globalAvgPool: expected an input of shape [N, C, H, W] with H, W >= 1, got ${shapeStr(s)}`);
  const [N, C] = s;
  // AdaShift's region pool with a 1 x 1 grid gives [N, 1, C]: the same memory as [N, C].
  const y = wrap(reshapeOwned(native.regionPoolForward(x.handle, 1), [N, C]));
  if (!needsGrad(x)) return y;
  return record(y, 'globalAvgPool', [x], (g) => {
    const g3 = g.handle.reshape([N, 1, C]);
    try {
      return [wrap(native.regionPoolBackward(g3, s, 1))];
    } finally {
      g3.dispose();
    }
  });
}
