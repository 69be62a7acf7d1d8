// 2-D convolution, differentiable in the input, the weight and the bias.
import { needsGrad, record } from '../autograd';
import { AdaShiftError, check, checkOptions } from '../errors';
import { native } from '../native';
import { Tensor } from '../tensor';
import { assertTensor, sameShape, wrap } from './util';

export interface Conv2dOptions {
  /** Step between output pixels: one number for both axes, or [h, w]. Default 1. */
  stride?: number | [number, number];
  /** Zeros added on each side: one number for both axes, or [h, w]. Default 0. */
  padding?: number | [number, number];
  /** Only 1 is supported (accepted for PyTorch-like call sites; another value is a type error, and ERR_ARG from JavaScript). */
  dilation?: 1 | [1, 1];
  /** Only 1 is supported (as dilation). */
  groups?: 1;
}

function pair(v: number | [number, number] | undefined, dflt: number, min: number, name: string): [number, number] {
  if (v === undefined) return [dflt, dflt];
  const p: unknown[] = Array.isArray(v) ? v : [v, v];
  if (p.length !== 2 || !p.every((x) => typeof x === 'number' && Number.isInteger(x) && x >= min && x <= 1 << 20)) {
    throw new AdaShiftError('ERR_ARG', `conv2d: '${name}' must be an integer >= ${min} or a pair [h, w] of them, got ${JSON.stringify(v)}`);
  }
  return p as [number, number];
}

/**
 * y = conv2d(x, weight) + bias (cross-correlation, like PyTorch's F.conv2d).
 * x [N, Cin, H, W], weight [Cout, Cin, kh, kw], bias [Cout] or null; y [N, Cout, Ho, Wo] with
 * Ho = floor((H + 2 padH - kh) / strideH) + 1.
 */
export function conv2d(x: Tensor, weight: Tensor, bias?: Tensor | null, options: Conv2dOptions = {}): Tensor {
  assertTensor(x, 'conv2d', 'x');
  assertTensor(weight, 'conv2d', 'weight');
  if (bias !== undefined && bias !== null) assertTensor(bias, 'conv2d', 'bias');
  const b = bias ?? null;
  options = checkOptions('conv2d', options, ['stride', 'padding', 'dilation', 'groups']);
  const [sh, sw] = pair(options.stride, 1, 1, 'stride');
  const [ph, pw] = pair(options.padding, 0, 0, 'padding');
  const [dh, dw] = pair(options.dilation, 1, 1, 'dilation');
  check(dh === 1 && dw === 1, 'ERR_ARG', () => `conv2d: only dilation 1 is supported, got ${JSON.stringify(options.dilation)}`);
  check(options.groups === undefined || options.groups === 1, 'ERR_ARG', () => `conv2d: only groups 1 is supported, got ${String(options.groups)}`);
  const out = wrap(native.conv2dForward(x.handle, weight.handle, b ? b.handle : null, sh, sw, ph, pw));
  if (!needsGrad(x, weight, b)) return out;
  return record(out, 'conv2d', [x, weight, b], (g, pending) => {
    // A gradient already waiting for x (a residual block's shortcut) is added into dx while each
    // sample's dx is in cache, instead of by the engine in a pass of its own.
    const waiting = x.requiresGrad ? pending?.[0] ?? null : null;
    const add = waiting && waiting.device === x.device && sameShape(waiting.shape, x.shape) ? waiting : null;
    const [dx, dwt, db] = native.conv2dBackward(
      g.handle, x.handle, weight.handle, sh, sw, ph, pw,
      x.requiresGrad, weight.requiresGrad, b !== null && b.requiresGrad, add?.handle ?? null,
    );
    if (add && dx) pending![0] = null;
    return [dx ? wrap(dx) : null, dwt ? wrap(dwt) : null, db ? wrap(db) : null];
  });
}
