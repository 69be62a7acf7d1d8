// LayerNorm, softmax, (batched) matmul and linear layers, differentiable.
import { needsGrad, record } from '../autograd';
import { check, checkOptions } from '../errors';
import { native } from '../native';
import { Tensor } from '../tensor';
import { assertTensor, noMoreArgs, reshapeOwned, shapeStr, wrap } from './util';

/** LayerNorm over the last axis with affine weight and bias (biased variance, like PyTorch). */
export function layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps = 1e-5): Tensor {
  assertTensor(x, 'layerNorm', 'x');
  assertTensor(weight, 'layerNorm', 'weight');
  assertTensor(bias, 'layerNorm', 'bias');
  const [y, meanH, rstdH] = native.layerNormForward(x.handle, weight.handle, bias.handle, eps);
  const out = wrap(y);
  const mean = wrap(meanH), rstd = wrap(rstdH);
  if (!needsGrad(x, weight, bias)) {
    mean.dispose();
    rstd.dispose();
    return out;
  }
  return record(
    out,
    'layerNorm',
    [x, weight, bias],
    (g) => {
      const [dx, dw, db] = native.layerNormBackward(g.handle, x.handle, mean.handle, rstd.handle, weight.handle);
      const grads = [dx, dw, db].map(wrap);
      const want = [x, weight, bias].map((t) => t.requiresGrad);
      return grads.map((t, i) => (want[i] ? t : (t.dispose(), null)));
    },
    [mean, rstd],
  );
}

/** Softmax over the last axis. */
export function softmax(x: Tensor, ...extra: never[]): Tensor {
  assertTensor(x, 'softmax', 'x');
  noMoreArgs('softmax', extra, 'softmax(x) normalises over the last axis');
  const out = wrap(native.softmaxForward(x.handle));
  if (!needsGrad(x)) return out;
  // Backward needs only the output; keep a private view so the caller may dispose `out`.
  const saved = out.detach();
  return record(out, 'softmax', [x], (g) => [wrap(native.softmaxBackward(saved.handle, g.handle))], [saved]);
}

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
}

/**
 * op(a) @ op(b) for rank-2 or rank-3 (batched) operands; a rank-2 operand is shared by
 * every batch entry.
 */
export function matmul(a: Tensor, b: Tensor, options: MatmulOptions = {}): Tensor {
  assertTensor(a, 'matmul', 'a');
  assertTensor(b, 'matmul', 'b');
  const o = checkOptions('matmul', options, ['transA', 'transB']);
  const ta = o.transA ?? false, tb = o.transB ?? false;
  check(typeof ta === 'boolean' && typeof tb === 'boolean', 'ERR_ARG', () => 'matmul: transA and transB must be booleans');
  const out = wrap(native.matmul(a.handle, b.handle, ta, tb));
  if (!needsGrad(a, b)) return out;
  const aShape = a.shape, bShape = b.shape;
  const batch = out.shape.length === 3 ? out.shape[0] : 1;
  // A shared (rank-2) operand in a batched product gets the sum of its per-entry gradients.
  const reduceShared = (gFull: ReturnType<typeof native.matmul>, shape: number[]) => {
    if (shape.length === 2 && batch > 1 && gFull.shape.length === 3) {
      const summed = native.sumRows(gFull, batch);
      gFull.dispose();
      return wrap(reshapeOwned(summed, shape));
    }
    return wrap(gFull);
  };
  return record(out, 'matmul', [a, b], (g) => {
    let da: Tensor | null = null, db: Tensor | null = null;
    if (a.requiresGrad) {
      // ta: dA (stored [K, M]) = op(B) @ dC^T; else dA = dC @ op(B)^T
      const h = ta ? native.matmul(b.handle, g.handle, tb, true) : native.matmul(g.handle, b.handle, false, !tb);
      da = reduceShared(h, aShape);
    }
    if (b.requiresGrad) {
      // tb: dB (stored [N, K]) = dC^T @ op(A); else dB = op(A)^T @ dC
      const h = tb ? native.matmul(g.handle, a.handle, true, ta) : native.matmul(a.handle, g.handle, !ta, false);
      db = reduceShared(h, bShape);
    }
    return [da, db];
  });
}

/** y = x @ weight^T + bias, over the last axis of x (weight [out, in], bias [out]). */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  assertTensor(x, 'linear', 'x');
  assertTensor(weight, 'linear', 'weight');
  const xs = x.shape;
  const inF = xs[xs.length - 1];
  check(weight.shape.length === 2 && weight.shape[1] === inF, 'ERR_SHAPE', () => `linear: weight must be [out, ${inF}] for input ${shapeStr(xs)}, got ${shapeStr(weight.shape)}`);
  const outF = weight.shape[0];
  if (bias !== undefined && bias !== null) assertTensor(bias, 'linear', 'bias');
  if (bias) check(bias.shape.length === 1 && bias.shape[0] === outF, 'ERR_SHAPE', () => `linear: bias must be [${outF}], got ${shapeStr(bias.shape)}`);
  const rows = xs.slice(0, -1).reduce((p, d) => p * d, 1);
  const x2 = x.handle.reshape([rows, inF]);
  const y2 = native.matmul(x2, weight.handle, false, true);
  let y = y2;
  if (bias) {
    y = native.addRowvec(y2, bias.handle);
    y2.dispose();
  }
  const out = wrap(reshapeOwned(y, [...xs.slice(0, -1), outF]));
  if (!needsGrad(x, weight, bias)) {
    x2.dispose();
    return out;
  }
  const xView = wrap(x2);
  return record(
    out,
    'linear',
    [x, weight, bias ?? null],
    (g) => {
      const g2 = g.handle.reshape([rows, outF]);
      const dx = x.requiresGrad ? wrap(reshapeOwned(native.matmul(g2, weight.handle, false, false), xs)) : null;
      const dw = weight.requiresGrad ? wrap(native.matmul(g2, xView.handle, true, false)) : null;
      const db = bias && bias.requiresGrad ? wrap(native.sumRows(g2, rows)) : null;
      g2.dispose();
      return [dx, dw, db];
    },
    [xView],
  );
}
