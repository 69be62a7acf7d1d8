// Autograd: finite-difference checks of every differentiable op and of the AdaShift modules
// (float32 forward, float64 differences on the JS side), then the engine's behaviour:
// accumulation, noGrad, shared subgraphs, retainGraph, very deep graphs, flat memory over many
// steps, and bit-for-bit determinism (repeat runs, 1 vs 2 CPU threads).
import * as os from 'os';
import * as as from '../lib';
import { Prng } from './helpers/prng';

const F = as.functional;
type T = as.Tensor;

beforeAll(() => as.setDefaultDevice('cpu'));
afterAll(() => as.setDefaultDevice(undefined));

// ---- directional finite-difference checks ---------------------------------------------------
//
// loss(inputs) = sum(y * r) for a fixed random r, evaluated in float64 from the float32 forward.
// Along a random direction d (entries N(0, 1) clipped to +-3) the analytic derivative is
// sum(grad * d); the numeric one is the 4-point central difference
//   (L(-2e) - 8 L(-e) + 8 L(e) - L(2e)) / (12 e),  e = 1e-2,
// whose truncation error (e^4 / 30 * L^(5)) is negligible here. The tolerance comes from float32
// rounding (unit roundoff u = 2^-24):
//   * each forward output carries a rounding error of at most CF * u * |y_i| (CF = 8: every
//     checked function ends in one float32 op of a few ulps - the gate y = x * sigmoid(x + s) for
//     the modules - and the error carried in through s is damped by dy/ds <= |x| / 4); the
//     errors of different outputs are independent, so |dL| stays below 6 standard deviations of
//     their sum,
//     6 * CF * u * sqrt(sum (y r)^2) (a uniform error has sd bound / sqrt(3) < bound);
//   * the perturbed inputs are rounded to float32: |dL| <= u * sum|g| (|x| + 2e|d|);
//   * the stencil weights sum to 18 and are divided by 12e;
//   * the analytic derivative itself is a float32 result: CB * u * sum|g d| with CB = 256
//     (sums of up to a few hundred terms in the backward kernels).
// Every check also asserts that the tolerance is below 1% of sum|g d|, so a gradient that is
// wrong by a few percent along a direction cannot pass. (Gradients that are zero in exact math,
// like LayerNorm-k's bias in attention, are held to 1% of the largest scale of the same check.)
const U = 2 ** -24;
const EPS = 1e-2;
const CF = 8;
const CB = 256;

interface InputSpec {
  name: string;
  shape: number[];
  values: Float32Array;
  wrt: boolean;
}
interface DirCheck {
  label: string;
  ana: number;
  num: number;
  tol: number;
  scale: number;
}

function numel(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * The core: `lossAt(values)` runs the forward (no graph) on the given input values and returns
 * sum(y * r) and sum|y * r|; `grads[k]` is the analytic gradient of input k (null when not wrt).
 */
function directionalChecks(
  label: string,
  inputs: InputSpec[],
  grads: (Float32Array | null)[],
  lossAt: (values: Float32Array[]) => { L: number; R: number },
  prng: Prng,
  directions = 3,
): DirCheck[] {
  const base = inputs.map((i) => i.values);
  const out: DirCheck[] = [];
  inputs.forEach((inp, k) => {
    if (!inp.wrt) return;
    const g = grads[k];
    if (!g) throw new Error(`${label}: no gradient reached '${inp.name}'`);
    expect(g.length).toBe(inp.values.length);
    for (let dir = 0; dir < directions; dir++) {
      const d = Float64Array.from({ length: g.length }, () => Math.max(-3, Math.min(3, prng.normal())));
      let ana = 0, absGD = 0, G = 0;
      for (let i = 0; i < g.length; i++) {
        ana += g[i] * d[i];
        absGD += Math.abs(g[i] * d[i]);
        G += Math.abs(g[i]) * (Math.abs(inp.values[i]) + 2 * EPS * Math.abs(d[i]));
      }
      let R = 0;
      const L = [-2, -1, 1, 2].map((j) => {
        const v = Float32Array.from(inp.values, (x, i) => x + j * EPS * d[i]);
        const vals = base.slice();
        vals[k] = v;
        const r = lossAt(vals);
        R = Math.max(R, r.R);
        return r.L;
      });
      const num = (L[0] - 8 * L[1] + 8 * L[2] - L[3]) / (12 * EPS);
      const tol = (18 / (12 * EPS)) * (6 * CF * U * R + U * G) + CB * U * absGD;
      out.push({ label: `${label} d/d${inp.name} #${dir}`, ana, num, tol, scale: absGD });
    }
  });
  return out;
}

function expectChecks(checks: DirCheck[]): void {
  expect(checks.length).toBeGreaterThan(0);
  const floor = Math.max(...checks.map((c) => c.scale));
  const bad = checks
    .filter((c) => !(Math.abs(c.ana - c.num) <= c.tol) || !(c.tol < 0.01 * (c.scale > 1e-3 * floor ? c.scale : floor)))
    .map((c) => `${c.label}: analytic ${c.ana.toPrecision(7)}, numeric ${c.num.toPrecision(7)}, |diff| ${Math.abs(c.ana - c.num).toExponential(2)}, tol ${c.tol.toExponential(2)}, scale ${c.scale.toExponential(2)}`);
  expect(bad).toEqual([]);
}

/** Checks a function of tensors: every input with wrt is a leaf with requiresGrad. */
function checkFn(label: string, inputs: InputSpec[], f: (xs: T[]) => T, seed = 1): DirCheck[] {
  const prng = new Prng(seed);
  return as.tidy(() => {
    const leaves = inputs.map((i) => as.tensor(i.values, i.shape, { requiresGrad: i.wrt }));
    const y = f(leaves);
    const r = prng.normals(y.numel);
    y.backward(as.tensor(r, y.shape));
    const grads = leaves.map((t) => (t.grad ? t.grad.toFloat32Array() : null));
    leaves.forEach((t) => t.grad?.dispose());
    const lossAt = (values: Float32Array[]) =>
      as.tidy(() =>
        as.noGrad(() => {
          const yv = f(values.map((v, k) => as.tensor(v, inputs[k].shape))).toFloat32Array();
          let L = 0, R2 = 0;
          for (let i = 0; i < yv.length; i++) {
            L += yv[i] * r[i];
            R2 += (yv[i] * r[i]) ** 2;
          }
          return { L, R: Math.sqrt(R2) };
        }),
      );
    return directionalChecks(label, inputs, grads, lossAt, prng);
  });
}

/** Checks a module wrt its input and every parameter (set to `params` with loadStateDict). */
function checkModule(label: string, m: as.nn.Module, xShape: number[], params: Record<string, Float32Array>, seed = 1): DirCheck[] {
  const prng = new Prng(seed);
  const names = m.namedParameters().map(([n]) => n);
  const shapes = new Map(m.namedParameters().map(([n, p]) => [n, p.shape]));
  const setParams = (vals: Record<string, Float32Array>) => {
    as.tidy(() => {
      const dict: Record<string, T> = {};
      for (const n of names) dict[n] = as.tensor(vals[n], shapes.get(n)!);
      m.loadStateDict(dict);
    });
  };
  const inputs: InputSpec[] = [
    { name: 'x', shape: xShape, values: prng.normals(numel(xShape), 1.5), wrt: true },
    ...names.map((n) => ({ name: n, shape: shapes.get(n)!, values: params[n], wrt: true })),
  ];
  setParams(params);
  m.zeroGrad();
  const checks = as.tidy(() => {
    const x = as.tensor(inputs[0].values, xShape, { requiresGrad: true });
    const y = m.forward(x) as T;
    const r = prng.normals(y.numel);
    y.backward(as.tensor(r, y.shape));
    const grads: (Float32Array | null)[] = [x.grad!.toFloat32Array(), ...m.parameters().map((p) => (p.grad ? p.grad.toFloat32Array() : null))];
    x.grad!.dispose();
    m.zeroGrad();
    const lossAt = (values: Float32Array[]) => {
      const vals: Record<string, Float32Array> = {};
      names.forEach((n, i) => (vals[n] = values[i + 1]));
      setParams(vals);
      return as.tidy(() =>
        as.noGrad(() => {
          const yv = (m.forward(as.tensor(values[0], xShape)) as T).toFloat32Array();
          let L = 0, R2 = 0;
          for (let i = 0; i < yv.length; i++) {
            L += yv[i] * r[i];
            R2 += (yv[i] * r[i]) ** 2;
          }
          return { L, R: Math.sqrt(R2) };
        }),
      );
    };
    return directionalChecks(label, inputs, grads, lossAt, prng);
  });
  setParams(params);
  return checks;
}

/** Non-trivial parameter values: randn * 0.5, +1 on LayerNorm weights (like the fixtures). */
function randomParams(m: as.nn.Module, prng: Prng): Record<string, Float32Array> {
  const out: Record<string, Float32Array> = {};
  for (const [n, p] of m.namedParameters()) {
    const normWeight = p.shape.length === 1 && n.endsWith('.weight');
    out[n] = prng.normals(p.numel, 0.5, normWeight ? 1 : 0);
  }
  return out;
}

const inp = (name: string, shape: number[], values: Float32Array, wrt = true): InputSpec => ({ name, shape, values, wrt });
const randIn = (name: string, shape: number[], prng: Prng, scale = 1, shift = 0, wrt = true) => inp(name, shape, prng.normals(numel(shape), scale, shift), wrt);

describe('the checker itself', () => {
  test('rejects a gradient that is 2% off', () => {
    const prng = new Prng(5);
    const x = randIn('x', [4, 5], prng);
    const checks = as.tidy(() => {
      const t = as.tensor(x.values, x.shape, { requiresGrad: true });
      const y = F.gelu(t);
      const r = prng.normals(20);
      y.backward(as.tensor(r, y.shape));
      const wrong = Float32Array.from(t.grad!.toFloat32Array(), (v) => v * 1.02);
      t.grad!.dispose();
      return directionalChecks('gelu (tampered)', [x], [wrong], (vals) => as.tidy(() => as.noGrad(() => {
        const yv = F.gelu(as.tensor(vals[0], x.shape)).toFloat32Array();
        let L = 0, R2 = 0;
        yv.forEach((v, i) => ((L += v * r[i]), (R2 += (v * r[i]) ** 2)));
        return { L, R: Math.sqrt(R2) };
      })), prng);
    });
    expect(checks.every((c) => Math.abs(c.ana - c.num) > c.tol)).toBe(true);
  });
});

describe('finite differences: element-wise and shape ops', () => {
  test('relu (inputs kept away from 0)', () => {
    const prng = new Prng(11);
    const v = Float32Array.from({ length: 60 }, () => (prng.bool() ? 1 : -1) * (0.3 + Math.abs(prng.normal())));
    expectChecks(checkFn('relu', [inp('x', [3, 4, 5], v)], ([x]) => F.relu(x)));
  });
  test('gelu (erf)', () => {
    const prng = new Prng(12);
    expectChecks(checkFn('gelu', [randIn('x', [3, 4, 5], prng, 1.5)], ([x]) => F.gelu(x)));
  });
  test('gelu (tanh approximation)', () => {
    const prng = new Prng(13);
    expectChecks(checkFn('gelu_tanh', [randIn('x', [3, 4, 5], prng, 1.5)], ([x]) => F.gelu(x, { approximate: 'tanh' })));
  });
  test('silu', () => {
    const prng = new Prng(14);
    expectChecks(checkFn('silu', [randIn('x', [3, 4, 5], prng, 1.5)], ([x]) => F.silu(x)));
  });
  test('permute (3-d and 4-d)', () => {
    const prng = new Prng(15);
    expectChecks(checkFn('permute3', [randIn('x', [2, 3, 4], prng)], ([x]) => F.permute(x, [2, 0, 1])));
    expectChecks(checkFn('permute4', [randIn('x', [2, 3, 1, 2], prng)], ([x]) => F.permute(x, [3, 1, 0, 2])));
  });
  test('reshape (followed by a non-linear op so the layout matters)', () => {
    const prng = new Prng(16);
    const w = as.tensor(prng.normals(24), [4, 6]);
    expectChecks(checkFn('reshape', [randIn('x', [2, 3, 4], prng)], ([x]) => F.mul(F.reshape(x, [4, -1]), w)));
    w.dispose();
  });
  test('add, sub, mul, div, scale, addScalar, sum, mean', () => {
    const prng = new Prng(17);
    const a = randIn('a', [3, 4], prng);
    const b = inp('b', [3, 4], Float32Array.from({ length: 12 }, () => (prng.bool() ? 1 : -1) * (1 + Math.abs(prng.normal()))));
    expectChecks(checkFn('arith', [a, b], ([x, y]) => F.div(F.mul(F.sub(F.add(x, y), F.scale(y, 0.3)), F.addScalar(x, 2)), y)));
    expectChecks(checkFn('sum', [a], ([x]) => F.sum(F.mul(x, x))));
    expectChecks(checkFn('mean', [a], ([x]) => F.mean(F.mul(x, x))));
  });
});

describe('finite differences: AdaShift ops', () => {
  test('regionPool (grid 3 on 5 x 7, grid 1, grid clamped to H)', () => {
    const prng = new Prng(21);
    // pooling is linear: multiply by a fixed tensor after it so every cell weight is checked
    const checkPool = (shape: number[], grid: number, tokens: number) => {
      const w = as.tensor(prng.normals(shape[0] * tokens * shape[1]), [shape[0], tokens, shape[1]]);
      expectChecks(checkFn(`regionPool g${grid}`, [randIn('x', shape, prng)], ([x]) => F.mul(F.regionPool(x, grid), w)));
      w.dispose();
    };
    checkPool([2, 3, 5, 7], 3, 9);
    checkPool([2, 3, 4, 4], 1, 1);
    checkPool([1, 2, 2, 9], 4, 8); // Ph = min(4, 2) = 2, Pw = 4
  });

  test('adashiftGate wrt x and s', () => {
    const prng = new Prng(22);
    expectChecks(checkFn('gate', [randIn('x', [2, 3, 5, 7], prng, 1.5), randIn('s', [2, 9, 3], prng)], ([x, s]) => F.adashiftGate(x, s, 3)));
    expectChecks(checkFn('gate g1', [randIn('x', [2, 4, 3, 3], prng, 1.5), randIn('s', [2, 1, 4], prng)], ([x, s]) => F.adashiftGate(x, s, 1)));
  });

  test('functional.adashift with a context made of ops (scale + softmax)', () => {
    const prng = new Prng(23);
    expectChecks(checkFn('adashift ctx', [randIn('x', [2, 3, 5, 4], prng, 1.5)], ([x]) => F.adashift(x, 2, (t) => F.scale(F.softmax(t), 3))));
  });

  test('functional.adashift with the identity as context (s = t)', () => {
    const prng = new Prng(24);
    expectChecks(checkFn('adashift identity', [randIn('x', [1, 2, 3, 3], prng, 1.5)], ([x]) => F.adashift(x, 1, (t) => t)));
  });
});

describe('finite differences: dense ops', () => {
  test('layerNorm wrt x, weight and bias', () => {
    const prng = new Prng(31);
    expectChecks(
      checkFn('layerNorm', [randIn('x', [4, 6], prng, 2, 0.5), randIn('weight', [6], prng, 0.5, 1), randIn('bias', [6], prng, 0.5)], ([x, w, b]) => F.layerNorm(x, w, b)),
    );
    expectChecks(checkFn('layerNorm 3d', [randIn('x', [2, 3, 5], prng), randIn('weight', [5], prng, 0.5, 1), randIn('bias', [5], prng, 0.5)], ([x, w, b]) => F.layerNorm(x, w, b, 1e-3)));
  });

  test('softmax', () => {
    const prng = new Prng(32);
    expectChecks(checkFn('softmax', [randIn('x', [3, 5], prng, 2)], ([x]) => F.softmax(x)));
    expectChecks(checkFn('softmax 3d', [randIn('x', [2, 2, 7], prng, 2)], ([x]) => F.softmax(x)));
  });

  test.each([
    [false, false],
    [true, false],
    [false, true],
    [true, true],
  ])('matmul transA=%s transB=%s', (ta, tb) => {
    const prng = new Prng(33 + Number(ta) * 2 + Number(tb));
    const M = 3, K = 4, N = 5;
    const a = randIn('a', ta ? [K, M] : [M, K], prng);
    const b = randIn('b', tb ? [N, K] : [K, N], prng);
    expectChecks(checkFn(`matmul ${ta} ${tb}`, [a, b], ([x, y]) => F.matmul(x, y, { transA: ta, transB: tb })));
  });

  test('batched matmul: both batched, and a shared rank-2 operand on either side', () => {
    const prng = new Prng(38);
    expectChecks(checkFn('bmm', [randIn('a', [2, 3, 4], prng), randIn('b', [2, 4, 5], prng)], ([x, y]) => F.matmul(x, y)));
    expectChecks(checkFn('bmm tA', [randIn('a', [2, 4, 3], prng), randIn('b', [2, 4, 5], prng)], ([x, y]) => F.matmul(x, y, { transA: true })));
    expectChecks(checkFn('bmm shared b', [randIn('a', [3, 3, 4], prng), randIn('b', [4, 5], prng)], ([x, y]) => F.matmul(x, y)));
    expectChecks(checkFn('bmm shared b^T', [randIn('a', [3, 3, 4], prng), randIn('b', [5, 4], prng)], ([x, y]) => F.matmul(x, y, { transB: true })));
    expectChecks(checkFn('bmm shared a', [randIn('a', [3, 4], prng), randIn('b', [2, 4, 5], prng)], ([x, y]) => F.matmul(x, y)));
    expectChecks(checkFn('bmm shared a^T', [randIn('a', [4, 3], prng), randIn('b', [2, 5, 4], prng)], ([x, y]) => F.matmul(x, y, { transA: true, transB: true })));
  });

  test('linear with and without bias, rank-3 input', () => {
    const prng = new Prng(39);
    expectChecks(checkFn('linear', [randIn('x', [2, 3, 4], prng), randIn('weight', [5, 4], prng, 0.5), randIn('bias', [5], prng)], ([x, w, b]) => F.linear(x, w, b)));
    expectChecks(checkFn('linear nobias', [randIn('x', [3, 4], prng), randIn('weight', [2, 4], prng, 0.5)], ([x, w]) => F.linear(x, w)));
  });
});

describe('finite differences: modules with random parameters', () => {
  test('nn.AdaShiftB with proj, wrt input and every parameter', () => {
    const prng = new Prng(41);
    const m = new as.nn.AdaShiftB(5, { proj: true });
    expectChecks(checkModule('AdaShiftB', m, [2, 5, 4, 3], randomParams(m, prng)));
    m.dispose();
  });

  test.each(['norm', 'linear'] as const)("nn.AdaShiftMA rect='%s', wrt input and every parameter", (rect) => {
    const prng = new Prng(rect === 'norm' ? 42 : 43);
    const m = new as.nn.AdaShiftMA(8, { grid: 3, headDim: 4, rect });
    expect(m.heads).toBe(2);
    expectChecks(checkModule(`AdaShiftMA ${rect}`, m, [2, 8, 5, 7], randomParams(m, prng)));
    m.dispose();
  });
});

describe('the engine', () => {
  test('gradients accumulate over backward calls', () => {
    const x = as.tensor([1, -2, 3], undefined, { requiresGrad: true });
    const c = as.tensor([0.5, 4, -1]);
    F.sum(F.mul(x, c)).backward();
    expect(Array.from(x.grad!.toFloat32Array())).toEqual([0.5, 4, -1]);
    F.sum(F.scale(x, 2)).backward();
    expect(Array.from(x.grad!.toFloat32Array())).toEqual([2.5, 6, 1]);
    for (const t of [x.grad!, x, c]) t.dispose();
  });

  test('module parameter gradients accumulate exactly (two steps = 2 x one step)', () => {
    const prng = new Prng(51);
    const m = new as.nn.AdaShiftMA(8, { grid: 2, headDim: 4 });
    const params = randomParams(m, prng);
    as.tidy(() => {
      const dict: Record<string, T> = {};
      for (const [n, p] of m.namedParameters()) dict[n] = as.tensor(params[n], p.shape);
      m.loadStateDict(dict);
    });
    const x = as.tensor(prng.normals(2 * 8 * 4 * 4), [2, 8, 4, 4]);
    const step = () => as.tidy(() => F.sum(m.forward(x)).backward());
    step();
    const once = m.parameters().map((p) => p.grad!.toFloat32Array());
    m.zeroGrad();
    step();
    step();
    const twice = m.parameters().map((p) => p.grad!.toFloat32Array());
    twice.forEach((g, i) => expect(Array.from(g)).toEqual(Array.from(once[i], (v) => v * 2)));
    m.dispose();
    x.dispose();
  });

  test('noGrad records nothing, and restores recording even after a throw', () => {
    const x = as.ones([3], { requiresGrad: true });
    expect(as.isGradEnabled()).toBe(true);
    const y = as.noGrad(() => {
      expect(as.isGradEnabled()).toBe(false);
      return F.mul(F.relu(x), x);
    });
    expect(y.requiresGrad).toBe(false);
    expect(y.gradFn).toBeNull();
    expect(() => F.sum(y).backward()).toThrow(expect.objectContaining({ code: 'ERR_AUTOGRAD' }));
    expect(() => as.noGrad(() => { throw new Error('inside'); })).toThrow('inside');
    expect(as.isGradEnabled()).toBe(true);
    // async code would record again after its first await: refused (an async function before it
    // runs, a function returning a promise when it returns)
    let ran = false;
    expect(() => as.noGrad((async () => { ran = true; await null; }) as never)).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: expect.stringMatching(/^noGrad\(fn\): fn must be synchronous, got an async function/) }));
    expect(ran).toBe(false);
    expect(() => as.noGrad(() => Promise.resolve(1))).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: expect.stringMatching(/^noGrad\(\): fn must be synchronous \(it returned a Promise\)/) }));
    expect(() => as.noGrad('f' as never)).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: 'noGrad(fn): fn must be a function, got string' }));
    expect(as.isGradEnabled()).toBe(true);
    const z = F.scale(x, 2);
    expect(z.requiresGrad).toBe(true);
    for (const t of [x, y, z]) t.dispose();
  });

  test('a tensor feeding several branches gets the sum of their gradients', () => {
    const xs = [1.5, -0.5, 2, -3];
    const x = as.tensor(xs, undefined, { requiresGrad: true });
    as.tidy(() => {
      // y = sum(x*x + 3x + relu(x)*x): dy/dx = 2x + 3 + (x > 0 ? 2x : 0)
      const y = F.sum(F.add(F.add(F.mul(x, x), F.scale(x, 3)), F.mul(F.relu(x), x)));
      y.backward();
    });
    expect(Array.from(x.grad!.toFloat32Array())).toEqual(xs.map((v) => 2 * v + 3 + (v > 0 ? 2 * v : 0)));
    x.grad!.dispose();
    x.dispose();
  });

  // A residual block's input gets its gradient from the shortcut first and from the branch's
  // convolution last; the convolution adds the waiting one into its dx (no add of the engine's
  // own), with the bits of that add, and in the other order the engine adds as before.
  test.each([
    ['the shortcut first: the convolution folds it in', true],
    ['the convolution first: the engine adds', false],
  ])('a gradient waiting for a convolution\'s input: %s', (_, shortcutFirst) => {
    const { native } = require('../lib/native') as typeof import('../lib/native');
    const p = new Prng(11);
    const x0 = as.tensor(Array.from({ length: 3 * 4 * 9 * 7 }, () => p.normal()), [3, 4, 9, 7], { requiresGrad: true });
    const w = as.tensor(Array.from({ length: 4 * 4 * 9 }, () => p.normal()), [4, 4, 3, 3], { requiresGrad: true });
    const g = as.tensor(Array.from({ length: 3 * 4 * 9 * 7 }, () => p.normal()), [3, 4, 9, 7]);
    const binary = jest.spyOn(native, 'binary');
    try {
      const xs = as.tidy(() => {
        const x = F.scale(x0, 1.5); // not a leaf: its gradient waits in the engine
        const c = F.conv2d(x, w, null, { padding: 1 });
        // shortcut first: add(c, x)'s node hands x its gradient before the convolution runs
        const y = shortcutFirst ? F.add(c, x) : F.add(F.scale(F.scale(x, 1), 1), c);
        binary.mockClear();
        y.backward(g);
        return binary.mock.calls.length;
      });
      expect(xs).toBe(shortcutFirst ? 0 : 1);
      // reference: the convolution's dx alone, plus g, in JS (float32 rounding of each sum)
      const ref = as.tidy(() => {
        const [dxH] = native.conv2dBackward(g.handle, F.scale(x0, 1.5).handle, w.handle, 1, 1, 1, 1, true, false, false);
        const dx = new as.Tensor(dxH!).toFloat32Array(), gv = g.toFloat32Array();
        return dx.map((v, i) => Math.fround(Math.fround(v + gv[i]) * 1.5));
      });
      const got = x0.grad!.toFloat32Array();
      expect(got.every((v, i) => Object.is(v, ref[i]))).toBe(true);
    } finally {
      binary.mockRestore();
      for (const t of [x0, w, g, x0.grad, w.grad]) t?.dispose();
    }
  });

  test('a 2,000-op chain backpropagates without overflowing the stack', () => {
    const x = as.tensor([0.5, -1, 2], undefined, { requiresGrad: true });
    const k = Math.fround(1.001);
    const { value } = as.tidy(() => {
      let y = x;
      for (let i = 0; i < 2000; i++) y = i % 2 ? F.scale(y, 1.001) : F.addScalar(y, 0.25);
      const loss = F.sum(y);
      loss.backward();
      return { value: loss.item() };
    });
    const gain = k ** 1000; // float64 reference of the product of 1000 float32 factors
    // 1000 float32 multiplications: relative error below 1000 * u
    for (const g of x.grad!.toFloat32Array()) expect(Math.abs(g - gain) / gain).toBeLessThan(1000 * U);
    let ref = 0;
    for (const v of [0.5, -1, 2]) {
      let y = v;
      for (let i = 0; i < 2000; i++) y = i % 2 ? y * k : y + 0.25;
      ref += y;
    }
    expect(Math.abs(value - ref) / Math.abs(ref)).toBeLessThan(4000 * U);
    x.grad!.dispose();
    x.dispose();
  });

  test('retainGraph lets a second backward go through the same ops', () => {
    const x = as.tensor([1, 2], undefined, { requiresGrad: true });
    const y = F.sum(F.mul(F.gelu(x), x));
    y.backward(undefined, { retainGraph: true });
    const once = x.grad!.toFloat32Array();
    y.backward();
    expect(Array.from(x.grad!.toFloat32Array())).toEqual(Array.from(once, (v) => 2 * v));
    expect(() => y.backward()).toThrow(expect.objectContaining({ code: 'ERR_AUTOGRAD' }));
  });

  test('an input disposed before backward: ERR_DISPOSED naming the op that needed it', () => {
    const x = as.tensor([1, -2, 3], undefined, { requiresGrad: true });
    const w = as.tensor([0.5, 0.5, 0.5], undefined, { requiresGrad: true });
    const y = F.sum(F.mul(F.silu(x), w));
    x.dispose();
    const before = as.memory().tensors;
    expect(() => y.backward()).toThrow(expect.objectContaining({ code: 'ERR_DISPOSED', message: expect.stringMatching(/^backward\(\): 'silu' needs a tensor that was disposed after the forward/) }));
    // w's gradient was accumulated before silu's node failed (as PyTorch would have too); every
    // other gradient made on the way is freed
    expect(w.grad).not.toBeNull();
    w.grad!.dispose();
    expect(as.memory().tensors).toBe(before);
    w.dispose();
  });

  test('retainGraph also works through an AdaShift module (its inner context graph)', () => {
    const m = new as.nn.AdaShiftB(4);
    const x = as.randn([2, 4, 3, 3], { requiresGrad: true });
    const dy = as.randn([2, 4, 3, 3]);
    const y = m.forward(x);
    y.backward(dy, { retainGraph: true });
    const once = x.grad!.toFloat32Array();
    const onceW = m.norm.weight.grad!.toFloat32Array();
    y.backward(dy);
    expect(Array.from(x.grad!.toFloat32Array())).toEqual(Array.from(once, (v) => 2 * v));
    expect(Array.from(m.norm.weight.grad!.toFloat32Array())).toEqual(Array.from(onceW, (v) => 2 * v));
  });

  test("backward(grad) leaves the caller's gradient tensor unchanged (reshape passes a view)", () => {
    const x = as.tensor([1, 2, 3, 4, 5, 6], [2, 3], { requiresGrad: true });
    const dy = as.tensor([1, 2, 3, 4, 5, 6], [6]);
    for (let i = 0; i < 3; i++) F.reshape(x, [6]).backward(dy);
    expect(Array.from(dy.toFloat32Array())).toEqual([1, 2, 3, 4, 5, 6]);
    expect(Array.from(x.grad!.toFloat32Array())).toEqual([3, 6, 9, 12, 15, 18]);
  });

  test('memory is flat over 100 AdaShift-MA steps inside tidy with zeroGrad', () => {
    const m = new as.nn.AdaShiftMA(8, { grid: 3, headDim: 4, rect: 'linear' });
    const x = as.randn([2, 8, 7, 7], { requiresGrad: true });
    const r = as.randn([2, 8, 7, 7]);
    const snap = () => {
      const mm = as.memory();
      return { tensors: mm.tensors, bytes: mm.bytes, leaked: mm.leaked };
    };
    const before = snap();
    const seen: string[] = [];
    for (let i = 0; i < 100; i++) {
      as.tidy(() => {
        const y = m.forward(x);
        F.sum(F.mul(y, r)).backward();
      });
      expect(m.parameters().every((p) => p.grad !== null)).toBe(true);
      m.zeroGrad();
      x.grad!.dispose();
      x.grad = null;
      seen.push(JSON.stringify(snap()));
    }
    expect(new Set(seen)).toEqual(new Set([JSON.stringify(before)]));
    m.dispose();
    x.dispose();
    r.dispose();
  });
});

describe('determinism', () => {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { compute } = require('./helpers/adashift-worker.js') as { compute: (lib: typeof as, spec: object) => { y: Float32Array; dx: Float32Array; grads: Record<string, Float32Array> } };
  const specs = [
    { kind: 'b', seed: 61, shape: [4, 32, 28, 28], options: { proj: true } },
    { kind: 'ma', seed: 62, shape: [2, 64, 28, 28], options: { grid: 7, headDim: 32, rect: 'linear' } },
    { kind: 'ma', seed: 63, shape: [3, 12, 9, 9], options: { grid: 3, headDim: 4, rect: 'norm' } },
  ];
  const asBytes = (r: { y: Float32Array; dx: Float32Array; grads: Record<string, Float32Array> }) =>
    [r.y, r.dx, ...Object.keys(r.grads).sort().map((k) => r.grads[k])].map((a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64'));

  test('the same forward+backward twice gives identical bits', () => {
    for (const s of specs) {
      const a = compute(as, s), b = compute(as, s);
      expect(a.y.some((v) => v !== 0)).toBe(true);
      expect(asBytes(b)).toEqual(asBytes(a));
    }
  });

  test('1 vs 2 CPU threads give identical bits (reductions, AdaShift-B/MA, big sums)', () => {
    const saved = as.getNumThreads();
    const two = Math.min(2, os.cpus().length);
    try {
      const run = (threads: number) => {
        as.setNumThreads(threads);
        expect(as.getNumThreads()).toBe(threads);
        const outs = specs.map((s) => asBytes(compute(as, s)));
        const big = as.tidy(() => {
          as.manualSeed(64);
          const x = as.randn([1 << 20]); // 256 blocks of the deterministic sum
          const rows = as.randn([4096, 64]);
          // linear's bias gradient sums 4096 rows (64-row blocks); its weight gradient is a GEMM
          const b = as.zeros([32], { requiresGrad: true });
          const w = as.randn([32, 64], { requiresGrad: true });
          F.linear(rows, w, b).backward(as.randn([4096, 32]));
          const out = [F.sum(x).item(), F.mean(x).item(), ...b.grad!.toFloat32Array(), ...w.grad!.toFloat32Array()];
          b.grad!.dispose();
          w.grad!.dispose();
          return out;
        });
        return { outs, big };
      };
      const one = run(1);
      const many = run(two);
      expect(many.outs).toEqual(one.outs);
      expect(many.big).toEqual(one.big);
    } finally {
      as.setNumThreads(saved);
    }
  });
});
