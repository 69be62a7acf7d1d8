// AdaShift's fused path: y = x * sigmoid(x + s), with s = context(pool(x)) per region.
//
// Forward:  pool pass (reads x) -> context network on the tiny pooled tensor -> gate pass
//           (reads x, writes y): 12 bytes per element.
// Backward: reduce pass (reads x, dy -> ds per region) -> backward through the context network
//           (parameter gradients, dt) -> apply pass (reads x, dy, writes dx, adding
//           dt / |cell|): 20 bytes per element. The gate is recomputed, never stored.
import { isGradEnabled, isRetainingGraph, needsGrad, record, releaseGraph } from '../autograd';
import { check, checkOptions } from '../errors';
import { native, NativeTensor } from '../native';
import { Tensor } from '../tensor';
import { assertTensor, shapeStr, wrap } from './util';

/** @internal Number of region tokens for an input of shape [N, C, H, W] and a grid of P. */
export function regionTokens(shape: readonly number[], grid: number): number {
  return Math.min(grid, Math.max(shape[2], 1)) * Math.min(grid, Math.max(shape[3], 1));
}

/** Mean of x over each cell of a grid x grid region layout: [N, C, H, W] -> [N, P*P, C]. */
export function regionPool(x: Tensor, grid = 1): Tensor {
  assertTensor(x, 'regionPool', 'x');
  const out = wrap(native.regionPoolForward(x.handle, grid));
  if (!needsGrad(x)) return out;
  const shape = x.shape;
  return record(out, 'regionPool', [x], (g) => [wrap(native.regionPoolBackward(g.handle, shape, grid))]);
}

/**
 * The shift gate y = x * sigmoid(x + s[n, cell(h, w), c]) with s of shape [N, P*P, C],
 * differentiable in x and s (reduce pass + apply pass).
 */
export function adashiftGate(x: Tensor, s: Tensor, grid = 1): Tensor {
  assertTensor(x, 'adashiftGate', 'x');
  assertTensor(s, 'adashiftGate', 's');
  const out = wrap(native.gateForward(x.handle, s.handle, grid));
  if (!needsGrad(x, s)) return out;
  return record(out, 'adashiftGate', [x, s], (g) => [
    x.requiresGrad ? wrap(native.gateBackwardApply(x.handle, g.handle, s.handle, null, grid)) : null,
    s.requiresGrad ? wrap(native.gateBackwardReduce(x.handle, g.handle, s.handle, grid)) : null,
  ]);
}

/**
 * The fused AdaShift op. `context` maps the pooled tensor t [N, T, C] to the shift s of the
 * same shape using differentiable ops on its parameters (LayerNorm, linear, attention); it is
 * recorded as a private inner graph whose backward runs between the reduce and apply passes.
 * Parameter gradients accumulate into the parameters' .grad as for any other op.
 */
export function adashift(x: Tensor, grid: number, context: (t: Tensor) => Tensor): Tensor {
  assertTensor(x, 'adashift', 'x');
  check(typeof context === 'function', 'ERR_ARG', () => `adashift: context must be a function (t: Tensor) => Tensor, got ${typeof context}`);
  check(x.shape.length === 4, 'ERR_SHAPE', () => `AdaShift expects an input of shape [N, C, H, W], got ${shapeStr(x.shape)}`);
  const grad = isGradEnabled();
  // Inner graph: t is its leaf (requiresGrad so that dt comes back), s its root.
  const t = new Tensor(native.regionPoolForward(x.handle, grid), grad);
  const tokenShape = t.shape;
  let s: Tensor;
  try {
    s = context(t);
    checkShift(s, tokenShape);
  } catch (e) {
    t.dispose();
    throw e;
  }
  const y = wrap(native.gateForward(x.handle, s.handle, grid));
  if (!grad || (!s.requiresGrad && !x.requiresGrad)) {
    // Nothing upstream wants a gradient: drop the inner graph now.
    releaseGraph(s);
    if (s !== t) s.dispose();
    t.dispose();
    return y;
  }
  const sView = s.detach();
  return record(
    y,
    'adashift',
    [x],
    (dy) => {
      const ds = wrap(native.gateBackwardReduce(x.handle, dy.handle, sView.handle, grid));
      // Parameter gradients, and dt into t.grad (also when the context is the identity).
      if (s.requiresGrad) s.backward(ds, { retainGraph: isRetainingGraph() });
      ds.dispose();
      const dt = t.grad;
      const dx = x.requiresGrad ? wrap(native.gateBackwardApply(x.handle, dy.handle, sView.handle, dt ? dt.handle : null, grid)) : null;
      if (dt) {
        dt.dispose();
        t.grad = null;
      }
      return [dx];
    },
    [t, s, sView],
    () => releaseGraph(s),
  );
}

function checkShift(s: Tensor, tokenShape: number[]): void {
  check(
    s instanceof Tensor && s.shape.length === 3 && s.shape.every((v, i) => v === tokenShape[i]),
    'ERR_SHAPE',
    () => `AdaShift context network must return a shift of shape ${shapeStr(tokenShape)}, got ${s instanceof Tensor ? shapeStr(s.shape) : typeof s}`,
  );
}

export interface AdaShiftBParams {
  normWeight: Tensor;
  normBias: Tensor;
  projWeight?: Tensor | null;
  projBias?: Tensor | null;
  /** LayerNorm epsilon (default 1e-6). */
  eps?: number;
}

/**
 * AdaShift-B's parameters checked to be tensors: proj's (null without proj), the LayerNorm's
 * (nw, nb) and its eps (default 1e-6).
 * @internal
 */
export function adashiftBArgs(p: AdaShiftBParams, who: string) {
  check(p !== null && typeof p === 'object', 'ERR_ARG', () => `${who}: parameters {normWeight, normBias, projWeight?, projBias?} are required`);
  checkOptions(who, p, ['normWeight', 'normBias', 'projWeight', 'projBias', 'eps']);
  assertTensor(p.normWeight, who, 'normWeight');
  assertTensor(p.normBias, who, 'normBias');
  const pw = p.projWeight ?? null, pb = p.projBias ?? null;
  if (pw) assertTensor(pw, who, 'projWeight');
  if (pb) assertTensor(pb, who, 'projBias');
  return { pw, pb, nw: p.normWeight, nb: p.normBias, eps: p.eps ?? 1e-6 };
}

/**
 * AdaShift-B as one op: y = x * sigmoid(x + LN(proj?(mean_hw x))). The CPU runs it sample by
 * sample so each sample's data is read from memory once per pass and reused from cache (see
 * native/core/ops/adashift.h); the result equals adashift(x, 1, context) with the same
 * LayerNorm/proj context to float rounding.
 */
export function adashiftB(x: Tensor, p: AdaShiftBParams): Tensor {
  assertTensor(x, 'adashiftB', 'x');
  const { pw, pb, eps } = adashiftBArgs(p, 'adashiftB');
  const [yH, tH, uH, sH, meanH, rstdH] = native.adashiftBForward(x.handle, pw?.handle ?? null, pb?.handle ?? null, p.normWeight.handle, p.normBias.handle, eps);
  const y = wrap(yH);
  const saved = [tH, uH, sH, meanH, rstdH].map(wrap);
  const inputs = [x, pw, pb, p.normWeight, p.normBias];
  if (!needsGrad(...inputs)) {
    for (const t of saved) t.dispose();
    return y;
  }
  const [t, u, s, mean, rstd] = saved;
  return record(
    y,
    'adashiftB',
    inputs,
    (dy) => {
      const [dx, dpw, dpb, dnw, dnb] = native.adashiftBBackward(x.handle, dy.handle, t.handle, u.handle, s.handle, mean.handle, rstd.handle, pw?.handle ?? null, p.normWeight.handle, x.requiresGrad);
      const grads = [dx, dpw, dpb, dnw, dnb].map((h) => (h ? wrap(h) : null));
      return grads.map((g, i) => {
        if (g && !inputs[i]?.requiresGrad) {
          g.dispose();
          return null;
        }
        return g;
      });
    },
    saved,
  );
}

export interface AdaShiftMAParams {
  /** Regions per side (clamped to H and W per axis). */
  grid: number;
  /** Attention heads (must divide C). */
  heads: number;
  qWeight: Tensor;
  qBias: Tensor;
  kWeight: Tensor;
  kBias: Tensor;
  vWeight: Tensor;
  vBias: Tensor;
  /** The 'linear' rect's Linear weight [C, C] (no bias); null/absent for the 'norm' rect. */
  rectLinearWeight?: Tensor | null;
  /** The rect LayerNorm's weight and bias. */
  rectWeight: Tensor;
  rectBias: Tensor;
  /** LayerNorm epsilon (default 1e-6). */
  eps?: number;
  /**
   * Keep the context network's tensors (region tokens, attention weights, attention output,
   * rect input) for backward (true), or keep only the shift and recompute them in backward
   * (false, the default): the same gradients to the bit; about four times less kept memory at 7x7
   * maps with the 7x7 grid, for a few percent more time per step.
   */
  keepContext?: boolean;
}

/**
 * AdaShift-MA's parameters checked and laid out as the binding takes them (args), and its
 * differentiable parameters in the order of the binding's gradients after dx (params: q, k, v
 * weights and biases, the rect Linear weight or null, the rect LayerNorm's weight and bias).
 * @internal
 */
export function adashiftMAArgs(p: AdaShiftMAParams, who: string) {
  check(p !== null && typeof p === 'object', 'ERR_ARG', () => `${who}: parameters {grid, heads, q/k/v weights and biases, rectWeight, rectBias, rectLinearWeight?} are required`);
  checkOptions(who, p, ['grid', 'heads', 'qWeight', 'qBias', 'kWeight', 'kBias', 'vWeight', 'vBias', 'rectLinearWeight', 'rectWeight', 'rectBias', 'eps', 'keepContext']);
  check(p.keepContext === undefined || typeof p.keepContext === 'boolean', 'ERR_ARG', () => `${who}: keepContext must be a boolean, got ${String(p.keepContext)}`);
  const named: [Tensor, string][] = [
    [p.qWeight, 'qWeight'], [p.qBias, 'qBias'], [p.kWeight, 'kWeight'], [p.kBias, 'kBias'],
    [p.vWeight, 'vWeight'], [p.vBias, 'vBias'], [p.rectWeight, 'rectWeight'], [p.rectBias, 'rectBias'],
  ];
  for (const [t, n] of named) assertTensor(t, who, n);
  const lw = p.rectLinearWeight ?? null;
  if (lw) assertTensor(lw, who, 'rectLinearWeight');
  const eps = p.eps ?? 1e-6;
  const args = [p.grid, p.heads, p.qWeight.handle, p.qBias.handle, p.kWeight.handle, p.kBias.handle, p.vWeight.handle, p.vBias.handle, lw?.handle ?? null, p.rectWeight.handle, p.rectBias.handle, eps, p.keepContext ?? false] as const;
  const params: (Tensor | null)[] = [p.qWeight, p.qBias, p.kWeight, p.kBias, p.vWeight, p.vBias, lw, p.rectWeight, p.rectBias];
  return { args, params };
}

/**
 * The tensors adashiftMAForward keeps for backward (its results after y), wrapped: t, attn, o, z
 * with keepContext, else null (o's storage again as z for the 'norm' rect: a second handle,
 * disposed like the others), s, and the CPU's LayerNorm statistics (null on CUDA). saved lists
 * every one that is there; handles gives the backward binding's arguments.
 * @internal
 */
export function maSaved(hs: (NativeTensor | null)[]) {
  const [t, attn, o, z, s, stats] = hs.slice(1, 7).map((h) => (h ? wrap(h) : null));
  const saved = [t, attn, o, z, s, stats].filter((u): u is Tensor => u !== null);
  const handles = [t, attn, o, z, s, stats].map((u) => u?.handle ?? null) as [NativeTensor | null, NativeTensor | null, NativeTensor | null, NativeTensor | null, NativeTensor, NativeTensor | null];
  return { saved, handles };
}

/**
 * AdaShift-MA as one op: y = x * sigmoid(x + rect(attention(LN_q t, LN_k t, LN_v t))) over the
 * region tokens t = regionPool(x, grid). The CPU runs it sample by sample (see
 * native/core/ops/adashift.h); the result equals adashift(x, grid, context) with the same
 * attention context to float rounding.
 */
export function adashiftMA(x: Tensor, p: AdaShiftMAParams): Tensor {
  assertTensor(x, 'adashiftMA', 'x');
  const { args, params } = adashiftMAArgs(p, 'adashiftMA');
  const hs = native.adashiftMAForward(x.handle, ...args);
  const y = wrap(hs[0]);
  const { saved, handles } = maSaved(hs);
  const inputs = [x, ...params];
  if (!needsGrad(...inputs)) {
    for (const u of saved) u.dispose();
    return y;
  }
  return record(
    y,
    'adashiftMA',
    inputs,
    (dy) => {
      const hs = native.adashiftMABackward(x.handle, dy.handle, ...handles, ...args, x.requiresGrad);
      // dx and the parameters' gradients (the last two entries come with a BatchNorm input only)
      const grads = hs.slice(0, inputs.length).map((h) => (h ? wrap(h) : null));
      return grads.map((g, i) => {
        if (g && !inputs[i]?.requiresGrad) {
          g.dispose();
          return null;
        }
        return g;
      });
    },
    saved,
  );
}
