// Forward and every gradient (input and each parameter) of every activation against PyTorch
// fixtures (test/fixtures/make_fixtures.py, float64 references), on awkward shapes.
import * as fs from 'fs';
import * as path from 'path';
import * as as from '../lib';
import { compareArrays } from './helpers/compare';
import { ensureDist, jsonFromChild } from './helpers/dist';

const dir = path.join(__dirname, 'fixtures', 'activations');
interface Case {
  name: string;
  file: string;
  kind: string;
  options: Record<string, unknown>;
  inputShape: number[];
}
const cases: Case[] = JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8'));

// float32 kernels against float64 references: relative 1e-4 per element, with an absolute
// floor of 1e-5 x the tensor's largest magnitude (entries that cancel to ~0 cannot keep a
// relative error; see test/helpers/compare.ts).
const RTOL = 1e-4;
const ATOL_SCALE = 1e-5;

function build(c: Case): as.nn.Module {
  const C = c.inputShape[1];
  switch (c.kind) {
    case 'adashift-b':
      return new as.nn.AdaShiftB(C, { proj: Boolean(c.options.proj) });
    case 'adashift-ma':
      return new as.nn.AdaShiftMA(C, c.options as as.nn.AdaShiftMAOptions);
    case 'gelu-tanh':
      return as.nn.activation('gelu', C, { approximate: 'tanh' });
    default:
      return as.nn.activation(c.kind as as.nn.ActivationName, C);
  }
}

function run(c: Case) {
  return as.tidy(() => {
    const f = as.io.loadSafetensors(path.join(dir, c.file)) as Record<string, as.Tensor>;
    const m = build(c);
    const params: Record<string, as.Tensor> = {};
    for (const [k, v] of Object.entries(f)) if (k.startsWith('param.')) params[k.slice('param.'.length)] = v;
    m.loadStateDict(params);
    const x = f.x.requiresGrad_();
    const y = m.forward(x) as as.Tensor;
    y.backward(f.dy);
    const results = [
      compareArrays(y.toFloat32Array(), f.y.toFloat32Array(), RTOL, ATOL_SCALE, 'y'),
      compareArrays(x.grad!.toFloat32Array(), f.dx.toFloat32Array(), RTOL, ATOL_SCALE, 'dx'),
    ];
    const names = m.namedParameters().map(([n]) => n);
    expect(names.sort()).toEqual(Object.keys(params).sort());
    // Scale of the gradients of each sub-module (q, k, rect.1, ...): a bias whose exact
    // gradient is 0 (keys shifted uniformly leave the softmax unchanged) is judged on it.
    const maxAbs = (a: Float32Array) => a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const moduleScale = new Map<string, number>();
    for (const [n] of m.namedParameters()) {
      const mod = n.slice(0, n.lastIndexOf('.'));
      moduleScale.set(mod, Math.max(moduleScale.get(mod) ?? 0, maxAbs(f[`grad.${n}`].toFloat32Array())));
    }
    for (const [n, p] of m.namedParameters()) {
      const floor = moduleScale.get(n.slice(0, n.lastIndexOf('.')))!;
      results.push(compareArrays(p.grad!.toFloat32Array(), f[`grad.${n}`].toFloat32Array(), RTOL, ATOL_SCALE, `grad.${n}`, floor));
    }
    x.grad!.dispose();
    m.dispose();
    return results;
  });
}

describe('activations against PyTorch fixtures', () => {
  test.each(cases.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const results = run(c);
    const bad = results.filter((r) => !r.ok).map((r) => r.message);
    expect(bad).toEqual([]);
  });

  test('the fixtures cover the shapes the contract asks for', () => {
    const hw = new Set(cases.filter((c) => c.kind.startsWith('adashift')).map((c) => c.inputShape[2]));
    for (const s of [1, 3, 7, 9, 14, 28]) expect(hw.has(s)).toBe(true);
    expect(cases.some((c) => c.inputShape[0] === 1)).toBe(true);
    expect(cases.some((c) => c.inputShape[1] % 4 !== 0)).toBe(true);
    const ma = cases.filter((c) => c.kind === 'adashift-ma');
    expect(new Set(ma.map((c) => c.options.rect))).toEqual(new Set(['norm', 'linear']));
    expect(ma.some((c) => c.options.headDim === 32)).toBe(true);
    expect(ma.some((c) => c.options.headDim === 64)).toBe(true);
    expect(ma.some((c) => c.inputShape[2] % (c.options.grid as number) !== 0 && c.inputShape[2] > (c.options.grid as number))).toBe(true);
    const b = cases.filter((c) => c.kind === 'adashift-b');
    expect(new Set(b.map((c) => Boolean(c.options.proj)))).toEqual(new Set([true, false]));
  });
});

describe('AdaShift-B as one op', () => {
  // The per-sample CPU op must compute what the generic fused path (pool -> autograd
  // context -> gate) computes, whether samples or channels are spread across threads.
  test.each([
    [[1, 13, 9, 9], false],
    [[5, 8, 7, 7], true],
    [[2, 6, 1, 1], true],
  ])('shape %j, proj %s: equals the generic path', (shape, proj) => {
    as.tidy(() => {
      as.manualSeed(11);
      const C = (shape as number[])[1];
      const m = new as.nn.AdaShiftB(C, { proj: proj as boolean });
      m.loadStateDict({
        'norm.weight': as.randn([C], { mean: 1, std: 0.3 }),
        'norm.bias': as.randn([C], { std: 0.3 }),
        ...(proj ? { 'proj.weight': as.randn([C, C], { std: 0.3 }), 'proj.bias': as.randn([C], { std: 0.3 }) } : {}),
      });
      const x = as.randn(shape as number[], { std: 1.5, requiresGrad: true });
      const dy = as.randn(shape as number[]);
      const run = (fused: boolean) => {
        const y = fused ? m.forward(x) : as.functional.adashift(x, 1, (t) => m.context(t));
        y.backward(dy);
        const out = [y, x.grad!, ...m.parameters().map((p) => p.grad!)].map((t) => t.toFloat32Array());
        m.zeroGrad();
        x.grad = null;
        return out;
      };
      const a = run(true), b = run(false);
      a.forEach((v, i) => expect(compareArrays(v, b[i], 1e-5, 1e-6, `output ${i}`).message).toMatch(/ok/));
      const threads = as.getNumThreads();
      as.setNumThreads(1);
      try {
        const c = run(true);
        c.forEach((v, i) => expect(Array.from(v)).toEqual(Array.from(a[i]))); // thread count does not change the bits
      } finally {
        as.setNumThreads(threads);
      }
    });
  });
});

// Random AdaShift-MA parameters (std 0.3): the LayerNorm weights around 1, the biases and the
// 'linear' rect's matrix around 0.
function randomMAState(m: as.nn.AdaShiftMA): Record<string, as.Tensor> {
  const sd: Record<string, as.Tensor> = {};
  for (const [name, p] of m.namedParameters()) sd[name] = as.randn(p.shape, { mean: name.endsWith('weight') && p.shape.length === 1 ? 1 : 0, std: 0.3 });
  return sd;
}

describe('AdaShift-MA as one op', () => {
  // The per-sample CPU op must compute what the generic fused path (pool -> autograd attention
  // context -> gate) computes, whether samples or channels are spread across threads. The two
  // differ only in float32 rounding: the op accumulates its products in its own (fixed) order and
  // sums parameter gradients per sample, then over samples; with T <= 49 tokens and C <= 16 the
  // relative differences stay near 1e-6, so rtol 1e-5 (atol 1e-6 for values near zero).
  test.each([
    [[1, 16, 9, 9], 3, 8, 'norm'],
    [[1, 8, 7, 5], 7, 64, 'linear'],
    [[5, 8, 14, 14], 7, 4, 'linear'],
    [[3, 12, 10, 7], 4, 4, 'norm'],
    [[2, 6, 1, 1], 7, 2, 'norm'],
    [[2, 6, 9, 50], 7, 3, 'linear'], // rows of 48+: the backward runs band by band
  ])('shape %j, grid %d, headDim %d, rect %s: equals the generic path', (shape, grid, headDim, rect) => {
    as.tidy(() => {
      as.manualSeed(13);
      const C = (shape as number[])[1];
      const m = new as.nn.AdaShiftMA(C, { grid: grid as number, headDim: headDim as number, rect: rect as 'norm' | 'linear' });
      m.loadStateDict(randomMAState(m));
      const x = as.randn(shape as number[], { std: 1.5, requiresGrad: true });
      const dy = as.randn(shape as number[]);
      const run = (fused: boolean) => {
        const y = fused ? m.forward(x) : as.functional.adashift(x, grid as number, (t) => m.context(t));
        y.backward(dy);
        const out = [y, x.grad!, ...m.parameters().map((p) => p.grad!)].map((t) => t.toFloat32Array());
        m.zeroGrad();
        x.grad = null;
        return out;
      };
      const a = run(true), b = run(false);
      // Output 5, the k.bias gradient, is exactly zero in exact arithmetic (it adds q_i . b_k to
      // every logit of row i, and softmax ignores a per-row constant): both paths return rounding
      // noise there, so it is compared on the scale of the k.weight gradient (output 4).
      const floor = (i: number) => (i === 5 ? b[4].reduce((m, v) => Math.max(m, Math.abs(v)), 0) : 0);
      a.forEach((v, i) => expect(compareArrays(v, b[i], 1e-5, 1e-6, `output ${i}`, floor(i)).message).toMatch(/ok/));
      const threads = as.getNumThreads();
      as.setNumThreads(1);
      try {
        const c = run(true);
        c.forEach((v, i) => expect(Array.from(v)).toEqual(Array.from(a[i]))); // thread count does not change the bits
      } finally {
        as.setNumThreads(threads);
      }
    });
  });
});

describe('AdaShift-MA keepContext', () => {
  // Without keepContext the op keeps only its shift (and on the CPU its LayerNorm statistics)
  // and the backward runs the forward's context steps again: the same calls on the same values,
  // so every output and gradient must have the same bits as with the context kept; and the
  // memory held from forward to backward must drop by exactly the context's tensors.
  test.each([
    [[3, 8, 7, 7], 7, 4, 'linear'],
    [[2, 16, 9, 11], 3, 8, 'norm'],
    [[5, 6, 14, 14], 7, 3, 'linear'],
    [[1, 4, 5, 3], 7, 64, 'norm'],
    [[2, 6, 9, 50], 7, 2, 'norm'], // rows of 48+: the backward runs band by band
  ])('shape %j, grid %d, headDim %d, rect %s: same bits, less memory kept', (shape, grid, headDim, rect) => {
    as.tidy(() => {
      const [N, C, H, W] = shape as number[];
      const make = (keepContext: boolean) => new as.nn.AdaShiftMA(C, { grid: grid as number, headDim: headDim as number, rect: rect as 'norm' | 'linear', keepContext });
      const kept = make(true), lean = make(false);
      as.manualSeed(21);
      const sd = randomMAState(kept);
      kept.loadStateDict(sd);
      lean.loadStateDict(sd);
      expect(lean.keepContext).toBe(false);
      const x = as.randn(shape as number[], { std: 1.5, requiresGrad: true });
      const dy = as.randn(shape as number[]);
      const run = (m: as.nn.AdaShiftMA) => {
        const before = as.memory().bytes;
        const y = m.forward(x);
        const held = as.memory().bytes - before - 4 * y.numel;
        y.backward(dy);
        const out = [y, x.grad!, ...m.parameters().map((p) => p.grad!)].map((t) => Array.from(t.toFloat32Array()));
        x.grad = null;
        return { out, held };
      };
      const a = run(kept), b = run(lean);
      expect(b.out).toEqual(a.out);
      const Ph = Math.min(grid as number, H), Pw = Math.min(grid as number, W), T = Ph * Pw;
      const G = kept.heads;
      // t, o (and z for the 'linear' rect: the 'norm' rect's z is o's storage) and attn
      const context = 4 * (N * T * C * (rect === 'linear' ? 3 : 2) + N * G * T * T);
      expect(a.held - b.held).toBe(context);
    });
  });

  test('the fused BatchNorm + AdaShift-MA op: same bits either way, with a residual', () => {
    as.tidy(() => {
      as.manualSeed(8);
      const x = as.randn([4, 6, 10, 9], { std: 1.2, requiresGrad: true });
      const r = as.randn([4, 6, 10, 9], { requiresGrad: true });
      const w = as.randn([6], { mean: 1, std: 0.2, requiresGrad: true }), b = as.randn([6], { std: 0.2, requiresGrad: true });
      const dy = as.randn([4, 6, 10, 9]);
      const run = (keepContext: boolean) => {
        const m = new as.nn.AdaShiftMA(6, { grid: 4, headDim: 3, rect: 'linear', keepContext });
        as.manualSeed(3);
        m.loadStateDict(randomMAState(m));
        const rm = as.zeros([6]), rv = as.ones([6]);
        const y = as.functional.batchNormAdaShiftMA(x, { weight: w, bias: b, runningMean: rm, runningVar: rv }, m.opParams(), { training: true, residual: r });
        y.backward(dy);
        const out = [y, x.grad!, r.grad!, w.grad!, b.grad!, rm, rv, ...m.parameters().map((p) => p.grad!)].map((t) => Array.from(t.toFloat32Array()));
        for (const t of [x, r, w, b]) t.grad = null;
        return out;
      };
      expect(run(false)).toEqual(run(true));
    });
  });

  test('rejects a keepContext that is not a boolean', () => {
    expect(() => new as.nn.AdaShiftMA(4, { keepContext: 1 as unknown as boolean })).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: expect.stringContaining('keepContext must be a boolean') }));
  });
});

// Runs AdaShift-MA forward and backward on four shapes in a child process with the given
// environment (the switches below are read once per process) and returns every output's bits.
// Row widths 28, 37, 9 and 56 take 2, 3, 1 and 4 vector registers in the AVX-512 column sums.
function maBitsInChild(env: Record<string, string>): string[] {
  const dist = ensureDist();
  const script = `
    const as = require(${JSON.stringify(dist)});
    const out = [];
    for (const [shape, grid] of [[[3, 6, 28, 28], 7], [[2, 4, 13, 37], 4], [[2, 2, 9, 9], 3], [[1, 3, 11, 56], 7], [[1, 3, 32, 32], 7], [[1, 2, 6, 50], 7]]) {
      as.manualSeed(5);
      const m = new as.nn.AdaShiftMA(shape[1], { grid, headDim: 2 });
      const sd = {};
      for (const [name, p] of m.namedParameters()) sd[name] = as.randn(p.shape, { mean: name.endsWith('weight') ? 1 : 0, std: 0.3 });
      m.loadStateDict(sd);
      const x = as.randn(shape, { std: 1.5, requiresGrad: true });
      const y = m.forward(x);
      y.backward(as.randn(shape));
      for (const t of [y, x.grad, ...m.parameters().map((p) => p.grad)]) out.push(Buffer.from(t.toFloat32Array().buffer).toString('base64'));
    }
    process.stdout.write(JSON.stringify(out));`;
  const out = jsonFromChild(script, env) as string[];
  expect(out.length).toBe(6 * 10); // y, dx and 8 parameter gradients per shape
  return out;
}

describe('AdaShift on an empty input', () => {
  // H = 0 with N * C > 0: nothing to pool, no pixel to gate; the op returns an empty y, an empty
  // input gradient and zero parameter gradients (on every device: the CUDA path takes the same
  // early return).
  test.each([
    ['adashift-b', [2, 3, 0, 4]],
    ['adashift-b', [0, 3, 4, 4]],
    ['adashift-ma', [2, 4, 0, 5]],
  ])('%s on %j', (name, shape) => {
    as.tidy(() => {
      const C = (shape as number[])[1];
      const m = name === 'adashift-b' ? new as.nn.AdaShiftB(C, { proj: true }) : new as.nn.AdaShiftMA(C, { grid: 3, headDim: 2, rect: 'linear' });
      const x = as.zeros(shape as number[], { requiresGrad: true });
      const y = m.forward(x) as as.Tensor;
      expect(y.shape).toEqual(shape);
      y.backward(as.zeros(shape as number[]));
      expect(x.grad!.shape).toEqual(shape);
      for (const [n, p] of m.namedParameters()) expect([n, Array.from(p.grad!.toFloat32Array()).every((v) => v === 0)]).toEqual([n, true]);
    });
  });
});

describe('switches that must not change a bit', () => {
  // Where the CPU has AVX-512, the AdaShift-MA grid passes lay cell values out with a permute
  // and sum cell columns with masked loads and per-column-offset permutes; ADASHIFT_CPU_GENERIC=1
  // turns that off. Both do the same additions in the same order (the shapes' rows are not
  // multiples of 16 floats; uneven cells straddle the 16- and 32-float register boundaries).
  test('the hand-written AVX-512 grid paths (ADASHIFT_CPU_GENERIC)', () => {
    const fast = maBitsInChild({ ADASHIFT_CPU_GENERIC: '0' }), generic = maBitsInChild({ ADASHIFT_CPU_GENERIC: '1' });
    fast.forEach((v, i) => expect(`${i}:${v}`).toBe(`${i}:${generic[i]}`));
  });

  // The thread pool's workers spin between jobs unless ADASHIFT_POOL_SPIN_US=0: timing only.
  test('the thread pool spinning or sleeping between jobs (ADASHIFT_POOL_SPIN_US)', () => {
    const spin = maBitsInChild({ ADASHIFT_POOL_SPIN_US: '300' }), sleep = maBitsInChild({ ADASHIFT_POOL_SPIN_US: '0' });
    spin.forEach((v, i) => expect(`${i}:${v}`).toBe(`${i}:${sleep[i]}`));
  });
});

describe('edge values as PyTorch gives them', () => {
  const run = (f: (x: as.Tensor) => as.Tensor, xs: number[], dy = 5) => {
    const x = as.tensor(xs, undefined, { requiresGrad: true });
    const y = f(x);
    as.tidy(() => as.functional.sum(as.functional.scale(y, dy)).backward());
    const out = { y: Array.from(y.toFloat32Array()), dx: Array.from(x.grad!.toFloat32Array()) };
    x.grad!.dispose();
    [x, y].forEach((t) => t.dispose());
    return out;
  };
  test('ReLU passes NaN forward and backward and keeps -0 (torch.relu)', () => {
    const { y, dx } = run(as.functional.relu, [NaN, -1, 2, -0, 0]);
    expect(y).toEqual([NaN, 0, 2, -0, 0]);
    expect(Object.is(y[3], -0)).toBe(true);
    expect(dx).toEqual([5, 0, 5, 0, 0]);
  });
  test('SiLU and the AdaShift gate are 0 (not x * 6e-39) far below -88, NaN at -inf', () => {
    const { y, dx } = run(as.functional.silu, [-1e38, -3.4e38, -100, -Infinity]);
    expect(y.slice(0, 3).map((v) => v === 0)).toEqual([true, true, true]);
    expect(dx.slice(0, 3).map((v) => v === 0)).toEqual([true, true, true]);
    expect(Number.isNaN(y[3])).toBe(true); // -inf * sigmoid(-inf) = -inf * 0, as in PyTorch
    const x = as.tensor([-1e38, 3, -200], [1, 3, 1, 1]);
    const s = as.zeros([1, 1, 3]);
    const g = as.functional.adashiftGate(x, s, 1);
    expect(Array.from(g.toFloat32Array()).map((v) => Math.abs(v))).toEqual([0, Math.fround(3 / (1 + Math.exp(-3))), 0]);
    [x, s, g].forEach((t) => t.dispose());
  });
});
