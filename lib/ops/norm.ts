// BatchNorm2d and the fused BatchNorm + activation (ReLU, SiLU, AdaShift-B), differentiable,
// optionally with a residual added between the two (y = act(bn(x) + r): a ResNet block's
// shortcut; each pass below then also reads r, and the backward apply pass writes dr).
//
// Training forward (native/core/ops/norm.h):
//   stats pass    reads x once: per-(n, c) plane means and M2 -> channel mean / invstd (Chan's
//                 formula, fixed order), running stats updated in place; for AdaShift-B also
//                 the pooled mean of BN's output m[n, c] = (mean_x[n, c] - mu_c) invstd_c w_c + b_c
//   context       (AdaShift-B) s = context(m) on the tiny [N, 1, C] tensor, an inner autograd
//                 graph exactly as in ops/adashift.ts
//   apply pass    reads x, writes y = act(bn(x))
// Backward:
//   reduce pass   reads x, dy: per plane sum(dz_d), sum(dz_d xhat), and ds (gate), with
//                 z = bn(x) and the gate recomputed
//   context       (AdaShift-B) ds -> the context parameters' grads and dm
//   params        channel sums in a fixed order, the pooled path's dm added in closed form
//   apply pass    reads x, dy, writes dx
import { isGradEnabled, isRetainingGraph, needsGrad, record, releaseGraph } from '../autograd';
import { NormActKind } from '../bindings/norm';
import { AdaShiftError, check, checkOptions } from '../errors';
import { native, NativeTensor } from '../native';
import { Tensor } from '../tensor';
import { assertTensor, reshapeOwned, sameShape, shapeStr, wrap } from './util';
import { adashiftBArgs, AdaShiftBParams, adashiftMAArgs, AdaShiftMAParams, maSaved } from './adashift';

export interface BatchNormOptions {
  /** Batch statistics (and a running-stats update) when true; running statistics when false. Default false, as F.batch_norm. */
  training?: boolean;
  /** Running-stats update: running = (1 - momentum) * running + momentum * batch. Default 0.1. */
  momentum?: number;
  /** Added to the variance. Default 1e-5. */
  eps?: number;
  /**
   * Added to BN's output in the same pass, BN(x) + residual (a ResNet block's shortcut; with
   * batchNormAct before the activation, act(BN(x) + residual), and AdaShift-B's context pools
   * that sum): x's shape, differentiable.
   */
  residual?: Tensor | null;
}

/** A BatchNorm2d's tensors: affine weight and bias [C], running statistics [C] (updated in place in training). */
export interface BatchNormParams {
  weight: Tensor;
  bias: Tensor;
  runningMean?: Tensor | null;
  runningVar?: Tensor | null;
}

export type BatchNormActName = 'relu' | 'silu' | 'gelu' | 'gelu-tanh' | 'adashift-b';
/** The activations batchNormAct fuses (alias). */
export type FusableAct = BatchNormActName;

export interface BatchNormActOptions extends BatchNormOptions {
  /**
   * AdaShift-B's context network: the pooled mean of BN's output m [N, 1, C] -> the shift s of
   * the same shape, with differentiable ops on its parameters (for nn.AdaShiftB:
   * `(m) => norm.forward(proj ? proj.forward(m) : m)`). Required for 'adashift-b'.
   */
  context?: (m: Tensor) => Tensor;
  /**
   * AdaShift-B's parameters instead of a context function (`nn.AdaShiftB.opParams()`): the
   * context network LayerNorm(proj?(m)) then runs natively, two calls per step instead of an
   * inner graph of ops, and its parameters get their gradients from this op's backward.
   */
  shift?: AdaShiftBParams;
}

/**
 * BatchNorm over the channels of x [N, C, H, W] (PyTorch's F.batch_norm). Training normalises
 * with the batch mean and biased variance and updates runningMean / runningVar in place with
 * the unbiased variance; eval uses the running statistics.
 */
export function batchNorm2d(
  x: Tensor,
  weight: Tensor,
  bias: Tensor,
  runningMean: Tensor | null,
  runningVar: Tensor | null,
  options: BatchNormOptions = {},
): Tensor {
  checkBnOptions('batchNorm2d', options);
  return bnAct('batchNorm2d', x, { weight, bias, runningMean, runningVar }, NormActKind.none, options);
}

/**
 * BatchNorm2d followed by an activation, fused: the same results (to float rounding) as
 * batchNorm2d then relu / silu / nn.AdaShiftB, with fewer passes over memory. For
 * 'adashift-b' the BN statistics and the AdaShift pool come from one reduction pass.
 */
export function batchNormAct(x: Tensor, bn: BatchNormParams, act: BatchNormActName, options: BatchNormActOptions = {}): Tensor {
  const kinds: Record<string, number> = { relu: NormActKind.relu, silu: NormActKind.silu, gelu: NormActKind.gelu, 'gelu-tanh': NormActKind.geluTanh, 'adashift-b': NormActKind.gate };
  const kind = typeof act === 'string' && Object.prototype.hasOwnProperty.call(kinds, act) ? kinds[act] : -1;
  if (kind < 0) throw new AdaShiftError('ERR_ARG', `batchNormAct: act must be 'relu', 'silu', 'gelu', 'gelu-tanh' or 'adashift-b', got '${String(act)}'`);
  checkBnOptions('batchNormAct', options, [...BN_OPTIONS, 'context', 'shift']);
  return bnAct('batchNormAct', x, bn, kind, options);
}

/**
 * BatchNorm2d followed by AdaShift-MA, y = adashiftMA(BN(x) + residual): the same bits as
 * batchNorm2d (with the residual) then adashiftMA, without BN's output ever written. The op
 * reads x (and the residual) sample by sample and lays each sample's BN(x) + residual out in a
 * per-thread buffer on the CPU; backward recomputes it and sums the gradient per plane while it
 * is in cache, so BatchNorm's backward needs no pass of its own over it. (CUDA: BatchNorm's
 * passes and the MA op in sequence.) Differentiable in x, the BN weight and bias, the residual
 * and every AdaShift-MA parameter.
 */
export function batchNormAdaShiftMA(x: Tensor, bn: BatchNormParams, ma: AdaShiftMAParams, options: BatchNormOptions = {}): Tensor {
  const name = 'batchNormAdaShiftMA';
  checkBnOptions(name, options);
  const { rm, rv, training, momentum, eps, r } = bnInputs(name, x, bn, options);
  const { args, params } = adashiftMAArgs(ma, name);
  // The MA op checks its parameters too, but only after the statistics pass has updated the
  // running statistics: a refused call must leave them alone, so they are checked first.
  const C = x.shape[1];
  const names = ['qWeight', 'qBias', 'kWeight', 'kBias', 'vWeight', 'vBias', 'rectLinearWeight', 'rectWeight', 'rectBias'];
  checkActParams(name, 'AdaShift-MA', x, params.map((t, i) => [t, names[i], i === 6 ? [C, C] : [C]]));
  for (const [t, what] of [[bn.weight, 'weight'], [bn.bias, 'bias'], [r, 'residual']] as const)
    if (t) check(t.device === x.device, 'ERR_DEVICE', () => `${name}: '${what}' is on ${t.device}, the input on ${x.device}`);
  check(Number.isInteger(ma.heads) && ma.heads >= 1 && C % ma.heads === 0, 'ERR_ARG', () => `${name}: heads must divide the ${C} channels, got ${ma.heads}`);
  check(Number.isInteger(ma.grid) && ma.grid >= 1, 'ERR_ARG', () => `${name}: grid must be an integer >= 1, got ${ma.grid}`);
  checkActEps(name, 'AdaShift-MA', ma.eps ?? 1e-6);
  const w = bn.weight, b = bn.bias;
  const [meanH, invstdH] = native.batchNormStats(x.handle, w.handle, b.handle, rm?.handle ?? null, rv?.handle ?? null, training, momentum, eps, false, null);
  const mean = wrap(meanH), invstd = wrap(invstdH);
  const bnArgs = [mean.handle, invstd.handle, w.handle, b.handle, r ? r.handle : null] as const;
  let hs: (NativeTensor | null)[];
  try {
    hs = native.adashiftMAForward(x.handle, ...args, ...bnArgs);
  } catch (e) {
    mean.dispose();
    invstd.dispose();
    throw e;
  }
  const y = wrap(hs[0] as NativeTensor);
  const { saved, handles } = maSaved(hs);
  const inputs = [x, w, b, r, ...params];
  if (!needsGrad(...inputs)) {
    for (const u of [mean, invstd, ...saved]) u.dispose();
    return y;
  }
  return record(
    y,
    name,
    inputs,
    (g) => {
      const out = native.adashiftMABackward(x.handle, g.handle, ...handles, ...args, true, ...bnArgs);
      const dz = wrap(out[0] as NativeTensor);
      const sumDz = out[10] as NativeTensor, sumDzX = out[11] as NativeTensor;
      const maGrads = out.slice(1, 10).map((h, i) => {
        if (!h) return null;
        if (params[i]?.requiresGrad) return wrap(h);
        h.dispose();
        return null;
      });
      let dx: Tensor | null = null, dw: Tensor | null = null, db: Tensor | null = null;
      try {
        if (x.requiresGrad || w.requiresGrad || b.requiresGrad) {
          // BatchNorm's backward from the per-plane sums: its params pass, then (for x) its
          // apply pass with the activation's gradient dz as the incoming one.
          const [dwH, dbH] = native.batchNormBackwardParams(sumDz, sumDzX, null, null);
          if (x.requiresGrad) dx = wrap(native.batchNormActBackwardApply(x.handle, dz.handle, w.handle, b.handle, mean.handle, invstd.handle, NormActKind.none, null, null, dwH, dbH, training, null)[0]);
          dw = wrap(dwH);
          db = wrap(dbH);
          if (!w.requiresGrad) dw = (dw.dispose(), null);
          if (!b.requiresGrad) db = (db.dispose(), null);
        }
      } finally {
        sumDz.dispose();
        sumDzX.dispose();
      }
      // The residual's gradient is the MA op's input gradient itself.
      const dr = r?.requiresGrad ? dz : (dz.dispose(), null);
      return [dx, dw, db, dr, ...maGrads];
    },
    [mean, invstd, ...saved],
  );
}

/**
 * A fused op's activation parameters [tensor | null, name, shape], checked against x's channels
 * and device before BatchNorm's statistics pass updates the running statistics (a refused call
 * must leave them alone; the native op would check them only after that pass).
 */
function checkActParams(name: string, what: string, x: Tensor, named: [Tensor | null, string, number[]][]): void {
  const C = x.shape[1];
  for (const [t, n, want] of named) {
    if (!t) continue;
    check(sameShape(t.shape, want), 'ERR_SHAPE', () => `${name}: ${what} parameter ${n} must have shape ${shapeStr(want)} for ${C} channels, got ${shapeStr(t.shape)}`);
    check(t.device === x.device, 'ERR_DEVICE', () => `${name}: ${what} parameter ${n} is on ${t.device}, the input on ${x.device}`);
  }
}

function checkActEps(name: string, what: string, eps: number): void {
  check(Number.isFinite(eps) && Math.fround(eps) > 0, 'ERR_ARG', () => `${name}: ${what} eps must be a positive number, got ${eps}`);
}

const BN_OPTIONS = ['training', 'momentum', 'eps', 'residual'];
function checkBnOptions(fn: string, options: unknown, known = BN_OPTIONS): void {
  check(options !== null && typeof options === 'object', 'ERR_ARG', () => `${fn}: options must be an object, got ${options === null ? 'null' : typeof options}`);
  checkOptions(fn, options as object, known);
}

/** The checked inputs and options of a BatchNorm op. */
function bnInputs(name: string, x: Tensor, bn: BatchNormParams, options: BatchNormOptions) {
  assertTensor(x, name, 'x');
  check(bn !== null && typeof bn === 'object', 'ERR_ARG', () => `${name}: bn must be {weight, bias, runningMean, runningVar}`);
  checkOptions(`${name}: bn`, bn, ['weight', 'bias', 'runningMean', 'runningVar']);
  assertTensor(bn.weight, name, 'weight');
  assertTensor(bn.bias, name, 'bias');
  const rm = bn.runningMean ?? null, rv = bn.runningVar ?? null;
  if (rm !== null) assertTensor(rm, name, 'runningMean');
  if (rv !== null) assertTensor(rv, name, 'runningVar');
  const xs = x.shape;
  check(xs.length === 4, 'ERR_SHAPE', () => `${name}: expected an input of shape [N, C, H, W], got ${shapeStr(xs)}`);
  // Checked here, not only by the passes that use them: the statistics pass, which updates the
  // running statistics, does not read them, and a refused call must change nothing.
  for (const [t, what] of [[bn.weight, 'weight'], [bn.bias, 'bias']] as const)
    check(sameShape(t.shape, [xs[1]]), 'ERR_SHAPE', () => `${name}: '${what}' must have shape [${xs[1]}] (one per channel), got ${shapeStr(t.shape)}`);
  const training = options.training ?? false;
  const momentum = options.momentum ?? 0.1;
  const eps = options.eps ?? 1e-5;
  check(typeof training === 'boolean', 'ERR_ARG', () => `${name}: training must be a boolean`);
  check(Number.isFinite(momentum), 'ERR_ARG', () => `${name}: momentum must be a finite number, got ${momentum}`);
  check(Number.isFinite(eps) && eps >= 0, 'ERR_ARG', () => `${name}: eps must be a finite number >= 0, got ${eps}`);
  const r = options.residual ?? null;
  if (r !== null) {
    assertTensor(r, name, 'residual');
    check(sameShape(r.shape, xs), 'ERR_SHAPE', () => `${name}: the residual must have the input's shape ${shapeStr(xs)}, got ${shapeStr(r.shape)}`);
  }
  return { rm, rv, training, momentum, eps, r };
}

function bnAct(name: string, x: Tensor, bn: BatchNormParams, act: number, options: BatchNormActOptions): Tensor {
  const { rm, rv, training, momentum, eps, r } = bnInputs(name, x, bn, options);
  const xs = x.shape;
  const gate = act === NormActKind.gate;
  const context = options.context;
  if (gate)
    check(
      (typeof context === 'function') !== (options.shift !== undefined),
      'ERR_ARG',
      () => `${name}: 'adashift-b' needs either options.shift (AdaShift-B's parameters, e.g. nn.AdaShiftB.opParams()) or options.context, the shift's context network (m [N, 1, C]) => s${context && options.shift ? ', not both' : ''}`,
    );
  const shiftArgs = gate && options.shift ? checkedShiftArgs(name, x, options.shift) : null;
  const rH = r ? r.handle : null;

  const w = bn.weight, b = bn.bias;
  const [meanH, invstdH, pxH, pooledH] = native.batchNormStats(x.handle, w.handle, b.handle, rm?.handle ?? null, rv?.handle ?? null, training, momentum, eps, gate, gate ? rH : null);
  const mean = wrap(meanH), invstd = wrap(invstdH);
  const [N, C] = xs;
  // The op's differentiable inputs: x, weight, bias (and the residual).
  const inputs = r ? [x, w, b, r] : [x, w, b];
  const wantInput = needsGrad(...inputs);

  if (!gate) {
    const y = wrap(native.batchNormActForward(x.handle, w.handle, b.handle, mean.handle, invstd.handle, act, null, rH));
    if (!wantInput) {
      mean.dispose();
      invstd.dispose();
      return y;
    }
    return record(y, name, inputs, (g) => bnBackward(x, g, w, b, r, mean, invstd, act, null, null, null, training), [mean, invstd]);
  }

  // AdaShift-B: the context network on the pooled mean of BN's output.
  const px = wrap(pxH as NativeTensor);
  const pooledShape = [N, 1, C];
  const grad = isGradEnabled();
  let shift: GateShift;
  try {
    shift = shiftArgs
      ? nativeShift(reshapeOwned(pooledH as NativeTensor, pooledShape), shiftArgs)
      : closureShift(name, new Tensor(reshapeOwned(pooledH as NativeTensor, pooledShape), grad && wantInput), context!);
  } catch (e) {
    for (const t of [mean, invstd, px]) t.dispose();
    throw e;
  }
  const y = wrap(native.batchNormActForward(x.handle, w.handle, b.handle, mean.handle, invstd.handle, act, shift.s.handle, rH));
  if (!grad || (!wantInput && !shift.requiresGrad)) {
    // Nothing upstream wants a gradient: drop the context's saved tensors (and inner graph) now.
    shift.release();
    for (const t of [mean, invstd, px, ...shift.saved]) t.dispose();
    return y;
  }
  return record(
    y,
    name,
    [...inputs, ...shift.inputs],
    (g) => bnBackward(x, g, w, b, r, mean, invstd, act, shift, px, pooledShape, training),
    [mean, invstd, px, ...shift.saved],
    () => shift.release(),
  );
}

/**
 * AdaShift-B's shift inside a fused BatchNorm op: s from the pooled mean m, and the context
 * network's backward from ds (dm, when asked for, and the gradients of its parameters, in the
 * order of `inputs`, which the op's node routes).
 */
interface GateShift {
  s: Tensor;
  inputs: (Tensor | null)[];
  requiresGrad: boolean;
  saved: Tensor[];
  backward(ds: Tensor, needDm: boolean): { dm: Tensor | null; grads: (Tensor | null)[] };
  release(): void;
}

/** A user's context network (differentiable ops on its parameters): its own graph carries their gradients. */
function closureShift(name: string, m: Tensor, context: (m: Tensor) => Tensor): GateShift {
  let s: Tensor;
  try {
    s = context(m);
    check(
      s instanceof Tensor && s.shape.length === 3 && sameShape(s.shape, m.shape),
      'ERR_SHAPE',
      () => `${name}: the context network must return a shift of shape ${shapeStr(m.shape)}, got ${s instanceof Tensor ? shapeStr(s.shape) : typeof s}`,
    );
  } catch (e) {
    m.dispose();
    throw e;
  }
  const sView = s.detach();
  return {
    s: sView,
    inputs: [],
    requiresGrad: s.requiresGrad,
    saved: [m, s, sView],
    backward(ds) {
      // The context parameters' gradients, and dm into m.grad (when m requires grad; also when
      // the context is the identity).
      if (s.requiresGrad) s.backward(ds, { retainGraph: isRetainingGraph() });
      const dm = m.grad;
      m.grad = null;
      return { dm, grads: [] };
    },
    release: () => releaseGraph(s),
  };
}

type ShiftArgs = ReturnType<typeof adashiftBArgs>;

/**
 * AdaShift-B's parameters for a fused op, checked against x (shapes, device, eps) before
 * BatchNorm's statistics pass updates the running statistics.
 */
function checkedShiftArgs(name: string, x: Tensor, p: AdaShiftBParams): ShiftArgs {
  const a = adashiftBArgs(p, name);
  const C = x.shape[1];
  checkActParams(name, 'AdaShift-B', x, [[a.pw, 'projWeight', [C, C]], [a.pb, 'projBias', [C]], [a.nw, 'normWeight', [C]], [a.nb, 'normBias', [C]]]);
  check(!a.pb || a.pw, 'ERR_ARG', () => `${name}: AdaShift-B projBias without projWeight`);
  checkActEps(name, 'AdaShift-B', a.eps);
  return a;
}

/** nn.AdaShiftB's context network (LayerNorm after an optional Linear) as two native calls. */
function nativeShift(mH: NativeTensor, a: ShiftArgs): GateShift {
  const m = wrap(mH);
  let hs: NativeTensor[];
  try {
    hs = native.adashiftBContextForward(m.handle, a.pw?.handle ?? null, a.pb?.handle ?? null, a.nw.handle, a.nb.handle, a.eps);
  } catch (e) {
    m.dispose();
    throw e;
  }
  const [s, u, mean, rstd] = hs.map(wrap);
  const params = [a.pw, a.pb, a.nw, a.nb];
  return {
    s,
    inputs: params,
    requiresGrad: isGradEnabled() && params.some((t) => t?.requiresGrad),
    // u is m itself without proj: a second handle, disposed like the others
    saved: [m, s, u, mean, rstd],
    backward(ds, needDm) {
      const out = native.adashiftBContextBackward(ds.handle, m.handle, u.handle, mean.handle, rstd.handle, a.pw?.handle ?? null, a.nw.handle, needDm);
      const grads = out.slice(1).map((h, i) => {
        if (h && params[i]?.requiresGrad) return wrap(h);
        h?.dispose();
        return null;
      });
      return { dm: out[0] ? wrap(out[0]) : null, grads };
    },
    release: () => undefined,
  };
}

function bnBackward(
  x: Tensor,
  g: Tensor,
  w: Tensor,
  b: Tensor,
  r: Tensor | null,
  mean: Tensor,
  invstd: Tensor,
  act: number,
  shift: GateShift | null,
  px: Tensor | null,
  pooledShape: number[] | null,
  training: boolean,
): (Tensor | null)[] {
  const sH = shift ? shift.s.handle : null;
  // Without an activation the residual's gradient is the output's, and BN's does not depend on
  // the residual: the passes run without it and dr is g itself.
  const plain = act === NormActKind.none;
  if (plain && r && !x.requiresGrad && !w.requiresGrad && !b.requiresGrad) return [null, null, null, r.requiresGrad ? g : null];
  const rH = r && !plain ? r.handle : null;
  // On the CPU, the reduce pass of SiLU, GELU and the gate also writes their direct gradient
  // dz_d, and the apply pass takes it as its incoming gradient (act none, the pooled path's dm
  // added per plane) instead of evaluating the activation's derivative again: one sigmoid (or
  // erf) fewer per element for 4 more bytes written; the same bits for SiLU and the gate, for
  // GELU to the rounding of its derivative's contracted multiply-adds. (On a GPU the recompute
  // is the cheaper: no dz_d.)
  const keepDz = x.device === 'cpu' && act !== NormActKind.relu && !plain && (x.requiresGrad || (r !== null && r.requiresGrad));
  const [sumDz, sumDzX, dsH, dzH] = native.batchNormActBackwardReduce(x.handle, g.handle, w.handle, b.handle, mean.handle, invstd.handle, act, sH, rH, keepDz);
  const dzDirect = dzH ? wrap(dzH) : null;
  const want = [x.requiresGrad, w.requiresGrad, b.requiresGrad];
  const wantR = r !== null && r.requiresGrad && !plain;
  let dm: Tensor | null = null;
  let shiftGrads: (Tensor | null)[] = [];
  if (shift) {
    const ds = wrap(reshapeOwned(dsH as NativeTensor, pooledShape!));
    try {
      ({ dm, grads: shiftGrads } = shift.backward(ds, want.some(Boolean) || wantR));
    } finally {
      ds.dispose();
    }
  }
  if (!want.some(Boolean) && !wantR) {
    sumDz.dispose();
    sumDzX.dispose();
    dm?.dispose();
    dzDirect?.dispose();
    return [...(r ? [null, null, null, null] : [null, null, null]), ...shiftGrads];
  }
  const [dwH, dbH] = native.batchNormBackwardParams(sumDz, sumDzX, dm ? dm.handle : null, dm ? px!.handle : null);
  sumDz.dispose();
  sumDzX.dispose();
  let dx: Tensor | null = null, dr: Tensor | null = null;
  try {
    if (want[0] || wantR) {
      // one pass gives both: dr is the activation's input gradient, dx that through BN
      const [dxH, drH] = dzDirect
        ? native.batchNormActBackwardApply(x.handle, dzDirect.handle, w.handle, b.handle, mean.handle, invstd.handle, NormActKind.none, null, dm ? dm.handle : null, dwH, dbH, training, rH)
        : native.batchNormActBackwardApply(x.handle, g.handle, w.handle, b.handle, mean.handle, invstd.handle, act, sH, dm ? dm.handle : null, dwH, dbH, training, rH);
      dx = wrap(dxH);
      dr = drH ? wrap(drH) : null;
      if (!want[0]) dx = (dx.dispose(), null);
      if (dr && !wantR) dr = (dr.dispose(), null);
    }
  } finally {
    dm?.dispose();
    dzDirect?.dispose();
  }
  const dw = wrap(dwH), db = wrap(dbH);
  const grads = [dx, want[1] ? dw : (dw.dispose(), null), want[2] ? db : (db.dispose(), null)];
  if (plain && r?.requiresGrad) dr = g;
  return [...grads, ...(r ? [dr] : []), ...shiftGrads];
}
