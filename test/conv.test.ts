// conv2d forward and every gradient against PyTorch fixtures (test/fixtures/make_conv_fixtures.py,
// float64 references) with each CPU GEMM backend; the own GEMM against a float64 reference and
// against BLAS on awkward shapes; bit-identical results for 1 and 2 threads; error cases.
import * as fs from 'fs';
import * as path from 'path';
import { types } from 'util';
import * as as from '../lib';
import { native } from '../lib/native';
import { conv2d } from '../lib/ops/conv';
import { compareArrays } from './helpers/compare';
import { convRef } from './helpers/conv-ref';
import { thrown } from './helpers/errors';
import { ensureDist, jsonFromChild } from './helpers/dist';

const dir = path.join(__dirname, 'fixtures', 'conv');
interface Case {
  name: string;
  file: string;
  N: number;
  Cin: number;
  Cout: number;
  H: number;
  W: number;
  kernel: [number, number];
  stride: [number, number];
  padding: [number, number];
  bias: boolean;
}
const cases: Case[] = JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8'));

// float32 kernels against float64 references: relative 1e-4 per element, with an absolute floor
// of 1e-5 x the tensor's largest magnitude (outputs that cancel to ~0 cannot keep a relative
// error; see test/helpers/compare.ts). The longest sums here (dw: N*Ho*Wo <= 3*784 terms) have
// float32 rounding errors around 1e-6 of the scale.
const RTOL = 1e-4;
const ATOL_SCALE = 1e-5;

const gemmInfo = native.gemmInfo();
const backends: ('own' | 'openblas')[] = gemmInfo.blasCompiled ? ['own', 'openblas'] : ['own'];
const initialBackend = native.gemmBackend();
const initialThreads = as.getNumThreads();
afterAll(() => {
  native.gemmBackend(initialBackend);
  as.setNumThreads(initialThreads);
});

function runCase(c: Case) {
  return as.tidy(() => {
    const f = as.io.loadSafetensors(path.join(dir, c.file)) as Record<string, as.Tensor>;
    const x = f.x.requiresGrad_();
    const w = f.w.requiresGrad_();
    const b = c.bias ? f.b.requiresGrad_() : null;
    const y = conv2d(x, w, b, { stride: c.stride, padding: c.padding });
    expect(y.shape).toEqual(f.y.shape);
    y.backward(f.dy);
    const results = [
      compareArrays(y.toFloat32Array(), f.y.toFloat32Array(), RTOL, ATOL_SCALE, 'y'),
      compareArrays(x.grad!.toFloat32Array(), f.dx.toFloat32Array(), RTOL, ATOL_SCALE, 'dx'),
      compareArrays(w.grad!.toFloat32Array(), f.dw.toFloat32Array(), RTOL, ATOL_SCALE, 'dw'),
    ];
    if (b) results.push(compareArrays(b.grad!.toFloat32Array(), f.db.toFloat32Array(), RTOL, ATOL_SCALE, 'db'));
    for (const t of [x, w, b]) if (t) t.grad!.dispose();
    return results;
  });
}

describe.each(backends)('conv2d against PyTorch fixtures, %s GEMM', (backend) => {
  beforeAll(() => native.gemmBackend(backend));

  test.each(cases.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const before = as.memory().tensors;
    const bad = runCase(c).filter((r) => !r.ok).map((r) => r.message);
    expect(bad).toEqual([]);
    expect(as.memory().tensors).toBe(before);
  });
});

test('the fixtures cover the shapes the contract asks for', () => {
  const ks = new Set(cases.map((c) => c.kernel[0]));
  for (const k of [1, 3, 7]) expect(ks.has(k)).toBe(true);
  for (const s of [1, 2]) expect(cases.some((c) => c.stride[0] === s)).toBe(true);
  for (const p of [0, 1, 3]) expect(cases.some((c) => c.padding[0] === p)).toBe(true);
  for (const ch of [3, 5, 16, 17]) expect(cases.some((c) => c.Cin === ch || c.Cout === ch)).toBe(true);
  for (const n of [1, 3]) expect(cases.some((c) => c.N === n)).toBe(true);
  for (const hw of [1, 5, 8, 28]) expect(cases.some((c) => c.H === hw && c.W === hw)).toBe(true);
  expect(cases.some((c) => c.H === 9 && c.W === 12)).toBe(true);
  expect(cases.some((c) => c.bias) && cases.some((c) => !c.bias)).toBe(true);
  // the pure-GEMM 1x1 path and a 1x1 through im2col
  expect(cases.some((c) => c.kernel[0] === 1 && c.stride[0] === 1 && c.padding[0] === 0)).toBe(true);
  expect(cases.some((c) => c.kernel[0] === 1 && (c.stride[0] > 1 || c.padding[0] > 0))).toBe(true);
});

test('gradients are only computed for the inputs that need them', () => {
  as.tidy(() => {
    const x = as.randn([2, 3, 6, 6]);
    const w = as.randn([4, 3, 3, 3]).requiresGrad_();
    const b = as.randn([4]);
    const y = conv2d(x, w, b, { padding: 1 });
    y.backward(as.randn(y.shape));
    expect(x.grad).toBeNull();
    expect(b.grad).toBeNull();
    expect(w.grad!.shape).toEqual([4, 3, 3, 3]);
    const [dx, dw, db] = native.conv2dBackward(as.randn(y.shape).handle, x.handle, w.handle, 1, 1, 1, 1, false, false, true);
    expect(dx).toBeNull();
    expect(dw).toBeNull();
    expect(db!.shape).toEqual([4]);
    db!.dispose();
    // nothing requires grad: no graph
    const z = conv2d(x, as.randn([4, 3, 1, 1]));
    expect(z.gradFn).toBeNull();
  });
});

// ---- GEMM ------------------------------------------------------------------------------------
// Deterministic small PRNG (mulberry32) so the shapes and values are the same on every run.
function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface GemmCase {
  m: number; n: number; k: number; ta: boolean; tb: boolean;
  lda: number; ldb: number; ldc: number; alpha: number; beta: number;
}

function gemmCases(): GemmCase[] {
  const sizes = [1, 7, 64, 129, 300];
  const r = rng(1234);
  const pick = <T>(a: T[]) => a[Math.floor(r() * a.length)];
  const out: GemmCase[] = [];
  const add = (m: number, n: number, k: number, ta: boolean, tb: boolean, pad: boolean, alpha: number, beta: number) => {
    const padBy = pad ? 1 + Math.floor(r() * 5) : 0;
    out.push({
      m, n, k, ta, tb,
      lda: Math.max(1, ta ? m : k) + padBy,
      ldb: Math.max(1, tb ? k : n) + padBy,
      ldc: Math.max(1, n) + padBy,
      alpha, beta,
    });
  };
  // every transpose combination on the extremes, then random shapes from the size set
  for (const ta of [false, true])
    for (const tb of [false, true]) {
      add(1, 1, 1, ta, tb, false, 1, 0);
      if (!ta && !tb) add(300, 300, 300, ta, tb, false, 1, 0);
      else add(300, 129, 64, ta, tb, false, 1, 0);
      add(129, 7, 300, ta, tb, true, 0.5, -0.5);
      add(7, 129, 1, ta, tb, true, 1, 1);
      add(49, 49, 64, ta, tb, ta, 0.125, 0); // AdaShift-MA's attention: 7-row tiles
      add(49, 64, 49, ta, tb, !ta, 1, 0);
      // a last sliver of 16 columns or fewer (one vector wide in the small-product entry), with
      // 7- and 8-row tiles, several depth blocks and beta
      add(49, 16, 49, ta, tb, tb, 1, 0);
      add(16, 45, 300, ta, tb, !tb, 0.5, 0.25);
      add(40, 9, 700, ta, tb, true, 1, 1);
      // one row block over several depth blocks, the slivers split across the pool once
      add(100, 200, 700, ta, tb, tb, 1, 0.5);
    }
  add(64, 64, 3136, true, false, false, 1, 0); // AdaShift-MA's rect weight gradient over N * T tokens
  for (let i = 0; i < 24; i++) {
    add(pick(sizes), pick(sizes), pick(sizes), r() < 0.5, r() < 0.5, r() < 0.5, pick([1, 1, 0.5, -2]), pick([0, 0, 1, 0.25]));
  }
  return out;
}

function fillRandom(n: number, r: () => number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = r() * 2 - 1;
  return a;
}

function gemmRef(g: GemmCase, A: Float32Array, B: Float32Array, C: Float32Array): Float64Array {
  const out = new Float64Array(C.length);
  for (let i = 0; i < C.length; i++) out[i] = C[i];
  for (let i = 0; i < g.m; i++)
    for (let j = 0; j < g.n; j++) {
      let acc = 0;
      for (let p = 0; p < g.k; p++) {
        const a = g.ta ? A[p * g.lda + i] : A[i * g.lda + p];
        const b = g.tb ? B[j * g.ldb + p] : B[p * g.ldb + j];
        acc += a * b;
      }
      const c = i * g.ldc + j;
      out[c] = g.alpha * acc + (g.beta === 0 ? 0 : g.beta * C[c]);
    }
  return out;
}

describe('CPU GEMM', () => {
  const all = gemmCases();
  test.each(all.map((g) => [`${g.m}x${g.n}x${g.k} ta=${+g.ta} tb=${+g.tb} ld+${g.lda - Math.max(1, g.ta ? g.m : g.k)} a=${g.alpha} b=${g.beta}`, g] as const))('%s', (_n, g) => {
    const r = rng(g.m * 1000003 + g.n * 1009 + g.k);
    const aRows = g.ta ? g.k : g.m, bRows = g.tb ? g.n : g.k;
    const A = fillRandom(Math.max(1, aRows * g.lda), r);
    const B = fillRandom(Math.max(1, bRows * g.ldb), r);
    const C = fillRandom(g.m * g.ldc, r);
    // beta == 0: C must not be read (NaN there must not leak through)
    if (g.beta === 0) for (let i = 0; i < C.length; i += 3) C[i] = NaN;
    const ref = gemmRef(g, A, B, C);
    as.tidy(() => {
      // on the CPU whatever the default device: this entry point is the CPU GEMM
      const cpu = { device: 'cpu' as const };
      const a = as.tensor(A, undefined, cpu), b = as.tensor(B, undefined, cpu), c = as.tensor(C, undefined, cpu);
      const run = (backend: 'own' | 'serial' | 'small' | 'blas') =>
        new as.Tensor(native.gemm(a.handle, b.handle, c.handle, g.ta, g.tb, g.m, g.n, g.k, g.lda, g.ldb, g.ldc, g.alpha, g.beta, backend)).toFloat32Array();
      const own = run('own');
      // entries outside the m x n window (the ldc padding) are left as they were
      for (let i = 0; i < g.m; i++)
        for (let j = g.n; j < g.ldc; j++) {
          const v = own[i * g.ldc + j], was = C[i * g.ldc + j];
          expect(Number.isNaN(was) ? Number.isNaN(v) : v === was).toBe(true);
        }
      const window = (arr: ArrayLike<number>) => {
        const o = new Float32Array(g.m * g.n);
        for (let i = 0; i < g.m; i++) for (let j = 0; j < g.n; j++) o[i * g.n + j] = arr[i * g.ldc + j];
        return o;
      };
      // float32 sums of k <= 300 products of values in [-1, 1]: error well below 1e-5 of the scale
      const refW = window(ref);
      const res = compareArrays(window(own), refW, 1e-4, 1e-5, 'own');
      expect(res.message).toMatch(/ok/);
      // the single-threaded own kernel gives the very same bits, and so does the small-product
      // entry (A read in place; 7-row tiles where they compute fewer padding rows, as for 49;
      // a last sliver one vector wide where 16 columns or fewer are left)
      expect(Buffer.from(run('serial').buffer).equals(Buffer.from(own.buffer))).toBe(true);
      expect(Buffer.from(run('small').buffer).equals(Buffer.from(own.buffer))).toBe(true);
      if (gemmInfo.blasCompiled) {
        const blas = run('blas');
        expect(compareArrays(window(blas), refW, 1e-4, 1e-5, 'blas').message).toMatch(/ok/);
        expect(compareArrays(window(own), window(blas), 1e-4, 1e-5, 'own vs blas').message).toMatch(/ok/);
      }
    });
  });

  test('the backend switch reports what is in use', () => {
    expect(native.gemmBackend('own')).toBe('own');
    expect(native.gemmInfo().backend).toBe('own');
    if (gemmInfo.blasCompiled) {
      expect(native.gemmBackend('openblas')).toBe('openblas');
      expect(native.gemmBackend()).toBe('openblas');
    } else {
      expect(() => native.gemmBackend('openblas')).toThrow(/no BLAS/);
    }
    expect(() => native.gemmBackend('mkl' as 'own')).toThrow(/'own' or 'openblas'/);
    expect(gemmInfo.kernel).toMatch(/^\d+x\d+/);
    native.gemmBackend(initialBackend);
  });

  test("the CPU's measured FMA ceiling bounds what the GEMM reaches", () => {
    // A register-only FMA loop on every thread: a GEMM, which also moves data, cannot beat it.
    // (1.5x margin for a shared machine's clock moving between the two measurements.) A peak
    // routine compiled to scalar code or spilling its accumulators would read far too low.
    const peak = native.cpuPeakGflops(100);
    expect(Number.isFinite(peak) && peak > 0).toBe(true);
    const n = 384;
    as.tidy(() => {
      // on the CPU whatever the default device (cuda:0 where a GPU is usable)
      const cpu = { device: 'cpu' } as const;
      const a = as.randn([n * n], cpu), b = as.randn([n * n], cpu), c = as.zeros([n * n], cpu);
      const run = () => native.gemm(a.handle, b.handle, c.handle, false, false, n, n, n, n, n, n, 1, 0, 'own').dispose();
      run();
      const times: number[] = [];
      for (let i = 0; i < 5; i++) {
        const t0 = process.hrtime.bigint();
        run();
        times.push(Number(process.hrtime.bigint() - t0) / 1e9);
      }
      const gemmGflops = (2 * n * n * n) / Math.min(...times) / 1e9;
      expect(gemmGflops).toBeLessThan(1.5 * peak);
      // and the peak is a rate this machine can reach: a loop the compiler dropped or computed
      // once would read thousands of times too high
      expect(gemmGflops).toBeGreaterThan(0.05 * peak);
    });
    for (const bad of [0, 10001, 1.5, NaN]) expect(() => native.cpuPeakGflops(bad)).toThrow(/ms/);
  });

  test('GEMM argument checks', () => {
    as.tidy(() => {
      const t = as.zeros([12], { device: 'cpu' });
      expect(() => native.gemm(t.handle, t.handle, t.handle, false, false, 3, 4, 5, 5, 4, 4, 1, 0, 'own')).toThrow(/holds 12 elements/);
      expect(() => native.gemm(t.handle, t.handle, t.handle, false, false, 2, 2, 3, 2, 2, 2, 1, 0, 'own')).toThrow(/leading dimension of a must be at least 3/);
      expect(() => native.gemm(t.handle, t.handle, t.handle, false, false, 2, 2, 2, 2, 2, 2, 1, 0, 'fast' as 'own')).toThrow(/backend must be/);
    });
  });
});

// ---- determinism -----------------------------------------------------------------------------
// The own GEMM sums every output element in an order fixed by the shapes, and conv2d's own
// reductions (dW over samples, db) are fixed too: the bits are the same for any thread count.
// OpenBLAS partitions its work by its thread count (outputs differ in the last bits between 1
// and 2 threads), so with it only run-to-run identity at a fixed thread count is promised.
describe.each(backends)('conv2d determinism, %s GEMM', (backend) => {
  beforeAll(() => native.gemmBackend(backend));
  afterAll(() => as.setNumThreads(initialThreads));

  const shapes: { name: string; x: number[]; w: number[]; stride: number; padding: number }[] = [
    { name: '3x3 s1 p1, N=8 (samples across threads)', x: [8, 16, 14, 14], w: [16, 16, 3, 3], stride: 1, padding: 1 },
    { name: '3x3 s2 p1, N=3 (threads inside the GEMM)', x: [3, 17, 15, 13], w: [33, 17, 3, 3], stride: 2, padding: 1 },
    { name: '1x1 s1 p0, N=20', x: [20, 32, 7, 7], w: [64, 32, 1, 1], stride: 1, padding: 0 },
    { name: '7x7 s2 p3, N=2, big columns', x: [2, 3, 64, 64], w: [16, 3, 7, 7], stride: 2, padding: 3 },
    { name: '3x3 s1 p1, N=2, 16 channels (dW by 16-wide tiles over long rows)', x: [2, 16, 28, 28], w: [16, 16, 3, 3], stride: 1, padding: 1 },
    { name: '5x5 s1 p2, N=1', x: [1, 32, 14, 14], w: [24, 32, 5, 5], stride: 1, padding: 2 },
    { name: '3x3 s1 p1, N=3, dW rows over two depth blocks', x: [3, 8, 17, 16], w: [12, 8, 3, 3], stride: 1, padding: 1 },
    { name: '7x7 s1 p3, N=6', x: [6, 5, 12, 9], w: [7, 5, 7, 7], stride: 1, padding: 3 },
    { name: '3x3 s1 p1, N=4, pixel rows (forward and dX)', x: [4, 32, 7, 7], w: [64, 32, 3, 3], stride: 1, padding: 1 },
    { name: '3x3 s1 p1, N=1, pixel rows with threads inside', x: [1, 32, 14, 14], w: [32, 32, 3, 3], stride: 1, padding: 1 },
    // dW sample by sample in 16 fixed groups (N >= 16), next to each sample's dX
    { name: '3x3 s1 p1, N=20, dW per sample (taps tile)', x: [20, 16, 14, 14], w: [16, 16, 3, 3], stride: 1, padding: 1 },
    { name: '3x3 s1 p1, N=17, dW per sample (32 output channels)', x: [17, 8, 9, 9], w: [32, 8, 3, 3], stride: 1, padding: 1 },
    { name: '3x3 s2 p1, N=16, dW per sample (phase planes)', x: [16, 8, 11, 9], w: [12, 8, 3, 3], stride: 2, padding: 1 },
  ];
  const run = (s: (typeof shapes)[number], threads: number) =>
    as.tidy(() => {
      as.setNumThreads(threads);
      as.manualSeed(7);
      const x = as.randn(s.x), w = as.randn(s.w), b = as.randn([s.w[0]]);
      const y = native.conv2dForward(x.handle, w.handle, b.handle, s.stride, s.stride, s.padding, s.padding);
      const dy = as.randn(y.shape);
      const grads = native.conv2dBackward(dy.handle, x.handle, w.handle, s.stride, s.stride, s.padding, s.padding, true, true, true);
      return [y, ...grads].map((h) => {
        const a = h!.toFloat32Array();
        h!.dispose();
        return a;
      });
    });
  const same = (a: Float32Array[], b: Float32Array[]) => a.every((v, i) => Buffer.from(v.buffer).equals(Buffer.from(b[i].buffer)));
  test.each(shapes.map((s) => [s.name, s] as const))(backend === 'own' ? '%s: 1 and 2 threads bit-identical' : '%s: run to run bit-identical', (_n, s) => {
    const one = run(s, 1), oneAgain = run(s, 1), two = run(s, 2), twoAgain = run(s, 2);
    for (const a of one) expect(a.every(Number.isFinite)).toBe(true);
    expect(same(one, oneAgain)).toBe(true);
    expect(same(two, twoAgain)).toBe(true);
    if (backend === 'own') expect(same(one, two)).toBe(true);
  });
});

// The weight gradient reads each tap's row of the padded sample in place at the exact output
// pixels (Wp = W + 2 pad per row, or the phase planes' width with a stride) against dy^T, in
// depth blocks of 256 pixels: with fewer than 16 samples all samples summed in registers, with
// more sample by sample in 16 fixed groups; the forward and dX run the windows lowering or pixel
// rows; with samples across threads or threads inside one sample. Each against a float64 direct
// sum.
describe('conv2d forward and gradients against a float64 direct sum', () => {
  afterAll(() => as.setNumThreads(initialThreads));
  const cases: [string, number[], number[], number, number][] = [
    ['short rows, one depth block, N=4', [4, 6, 7, 7], [10, 6, 3, 3], 1, 1],
    ['short rows, two depth blocks, N=3', [3, 8, 17, 16], [12, 8, 3, 3], 1, 1],
    ['short rows, N=1 (threads inside)', [1, 5, 9, 11], [7, 5, 5, 5], 2, 1],
    ['long rows (870 pixels per sample: four depth blocks), N=2', [2, 3, 30, 29], [5, 3, 3, 3], 1, 1],
    ['stride 2 (phase planes), N=3', [3, 5, 11, 9], [6, 5, 3, 3], 1, 2],
    // dX phases each keep their padded copy of dy (and its zero borders) from sample to sample
    ['stride 2, samples across threads, N=6', [6, 5, 11, 9], [6, 5, 3, 3], 1, 2],
    ['stride 2, samples across threads, even size, N=5', [5, 3, 12, 10], [4, 3, 3, 3], 1, 2],
    ['stride 2, 1x1 (unused phases), N=4', [4, 6, 9, 10], [5, 6, 1, 1], 0, 2],
    // the phases need different paddings of dy (1 row and column for taps 0 and 2, none for
    // tap 1): one padded copy serves them all, the less padded phases reading further in
    ['stride 2, no padding (phases padded differently), N=5', [5, 3, 12, 11], [4, 3, 3, 3], 0, 2],
    ['stride 2, 2x2, odd size (phases of 2 and 1 rows), N=3', [3, 4, 9, 7], [6, 4, 2, 2], 0, 2],
    ['stride 3, 5x5, long rows, N=2', [2, 2, 70, 66], [3, 2, 5, 5], 2, 3],
    ['stride 2, 4x4, padding 3 (dX by columns), N=2', [2, 3, 9, 8], [4, 3, 4, 4], 3, 2],
    // pixel rows (AVX-512 only; elsewhere these run the windows lowering): output rows of at
    // most 32 pixels against 32-channel slivers, runs of up to 8 pixels
    ['pixel rows: 7x7, forward and dX, 64/32 channels, N=2', [2, 32, 7, 7], [64, 32, 3, 3], 1, 1],
    ['pixel rows: 5x5, 40 channels (a partial sliver), N=2', [2, 7, 5, 5], [40, 7, 3, 3], 1, 1],
    ['pixel rows: 20 wide (runs of 7, 7, 6), N=1', [1, 4, 6, 20], [32, 4, 3, 3], 1, 1],
    ['pixel rows: stride 2 (phase planes), 13x13 -> 7x7, N=2', [2, 8, 13, 13], [32, 8, 3, 3], 1, 2],
    ['pixel rows: stride 2, dX phases by pixel rows (32 input channels), N=2', [2, 32, 13, 13], [16, 32, 3, 3], 1, 2],
    // dW of all samples at once, in two passes (the copies of 20 samples exceed one pass)
    ['pointwise over two passes, N=20 (dW only)', [20, 2, 32, 32], [256, 2, 1, 1], 0, 1],
    // dW sample by sample in 16 fixed groups (N >= 16; groups of 5 and of 1 sample)
    ['dW per sample, N=80 (dW only)', [80, 1, 20, 20], [128, 1, 3, 3], 1, 1],
    ['dW per sample with dX, 16 output channels (taps tile), N=18', [18, 5, 10, 12], [16, 5, 3, 3], 1, 1],
    ['dW per sample with dX, stride 2, N=16', [16, 4, 11, 9], [6, 4, 3, 3], 1, 2],
    // a dW too large for per-sample partials (512 x 576 floats): all samples at once again
    ['large dW over 16 samples, all at once', [16, 64, 3, 3], [512, 64, 3, 3], 1, 1],
  ];
  test.each(cases)('%s', (name, xs, ws, pad, stride) => {
    const dwOnly = name.endsWith('(dW only)');
    const r = rng(xs.reduce((a, b) => a * 31 + b, 7));
    const [N, C, H, W] = xs, [Co, , kh, kw] = ws;
    const Ho = Math.floor((H + 2 * pad - kh) / stride) + 1, Wo = Math.floor((W + 2 * pad - kw) / stride) + 1;
    const X = fillRandom(N * C * H * W, r), Wt = fillRandom(Co * C * kh * kw, r), DY = fillRandom(N * Co * Ho * Wo, r);
    // references: each entry summed in float64, then rounded once
    const ref = convRef(X, Wt, DY, xs, ws, pad, stride, dwOnly);
    const dwref = Float32Array.from(ref.dw), dxref = ref.dx, yref = Float32Array.from(ref.y);
    for (const threads of [1, 2])
      as.tidy(() => {
        as.setNumThreads(threads);
        const x = as.tensor(X, xs), w = as.tensor(Wt, ws), dy = as.tensor(DY, [N, Co, Ho, Wo]);
        const [dxH, dwH] = native.conv2dBackward(dy.handle, x.handle, w.handle, stride, stride, pad, pad, !dwOnly, true, false);
        const dw = new as.Tensor(dwH!).toFloat32Array();
        expect(compareArrays(dw, dwref, 1e-4, 1e-5, `dw, ${threads} thread(s)`).message).toMatch(/ok/);
        if (dwOnly) return;
        const dx = new as.Tensor(dxH!).toFloat32Array();
        expect(compareArrays(dx, Float32Array.from(dxref), 1e-4, 1e-5, `dx, ${threads} thread(s)`).message).toMatch(/ok/);
        const y = new as.Tensor(native.conv2dForward(x.handle, w.handle, null, stride, stride, pad, pad)).toFloat32Array();
        expect(compareArrays(y, yref, 1e-4, 1e-5, `y, ${threads} thread(s)`).message).toMatch(/ok/);
        // A gradient folded into dx (dxAdd): dx + add, each element rounded once, whatever path
        // computed dx; the added tensor left as it was.
        const A = fillRandom(N * C * H * W, r), add = as.tensor(A, xs);
        const [dxaH] = native.conv2dBackward(dy.handle, x.handle, w.handle, stride, stride, pad, pad, true, false, false, add.handle);
        const dxa = new as.Tensor(dxaH!).toFloat32Array();
        const want = dx.map((v, i) => Math.fround(v + A[i]));
        expect(dxa.every((v, i) => Object.is(v, want[i]))).toBe(true);
        expect(Array.from(add.toFloat32Array())).toEqual(Array.from(A));
      });
  });
});

// A stride-1 3x3 weight gradient with at most 16 output channels runs on a register tile made
// for 3x3 taps (two channels' 9 taps per tile) where AVX-512 is; ADASHIFT_CPU_GENERIC=1 turns it
// off. Both must give the same bits, with whole and partial channel pairs (16, 3 and 1 input
// channels) and with the samples in one pass or two (320 one-channel 28x28 samples).
describe('the 3x3 weight-gradient taps tile (ADASHIFT_CPU_GENERIC)', () => {
  function dwBitsInChild(env: Record<string, string>): string[] {
    const dist = ensureDist();
    const script = `
      const as = require(${JSON.stringify(dist)});
      const { native } = require(${JSON.stringify(path.join(dist, 'native'))});
      const out = [];
      for (const [xs, co] of [[[4, 16, 28, 28], 16], [[3, 3, 9, 11], 10], [[2, 1, 8, 8], 16], [[320, 1, 28, 28], 16]]) {
        as.manualSeed(3);
        const x = as.randn(xs), w = as.randn([co, xs[1], 3, 3]), dy = as.randn([xs[0], co, xs[2], xs[3]]);
        const [, dw] = native.conv2dBackward(dy.handle, x.handle, w.handle, 1, 1, 1, 1, false, true, false);
        out.push(Buffer.from(dw.toFloat32Array().buffer).toString('base64'));
      }
      process.stdout.write(JSON.stringify(out));`;
    return jsonFromChild(script, env) as string[];
  }
  // Without AVX-512 both children would run the general tiles: nothing to compare.
  (gemmInfo.kernel.includes('avx512') ? test : test.skip)('the taps tile and the general tiles give the same bits', () => {
    const fast = dwBitsInChild({ ADASHIFT_CPU_GENERIC: '0' }), generic = dwBitsInChild({ ADASHIFT_CPU_GENERIC: '1' });
    expect(fast).toHaveLength(4);
    fast.forEach((v, i) => expect(`${i}:${v}`).toBe(`${i}:${generic[i]}`));
  });
});

// ---- errors ----------------------------------------------------------------------------------

describe('conv2d errors', () => {
  test('a gradient to fold into dx of another shape or device is refused', () => {
    as.tidy(() => {
      const x = as.zeros([2, 3, 5, 5]), w = as.zeros([4, 3, 3, 3]), dy = as.zeros([2, 4, 5, 5]);
      const e = thrown(() => native.conv2dBackward(dy.handle, x.handle, w.handle, 1, 1, 1, 1, true, true, false, as.zeros([2, 3, 5, 4]).handle));
      expect(e.code).toBe('ERR_SHAPE');
      expect(e.message).toMatch(/gradient to add to dx/);
    });
  });

  const x = () => as.zeros([2, 3, 5, 5]);
  const w = () => as.zeros([4, 3, 3, 3]);
  test('wrong ranks', () =>
    as.tidy(() => {
      thrown(() => conv2d(as.zeros([3, 5, 5]), w()), 'ERR_SHAPE', /input must have shape \[N, C, H, W\], got \[3, 5, 5\]/);
      thrown(() => conv2d(x(), as.zeros([4, 3, 3])), 'ERR_SHAPE', /weight must have shape \[Cout, Cin, kh, kw\], got \[4, 3, 3\]/);
    }));
  test('channel mismatch', () =>
    as.tidy(() => void thrown(() => conv2d(x(), as.zeros([4, 2, 3, 3])), 'ERR_SHAPE', /input has 3 channels but the weight expects 2/)));
  test('bias of the wrong size', () =>
    as.tidy(() => void thrown(() => conv2d(x(), w(), as.zeros([3])), 'ERR_SHAPE', /bias must have shape \[4\]/)));
  test('input smaller than the kernel', () =>
    as.tidy(() => {
      thrown(() => conv2d(as.zeros([1, 3, 2, 5]), w()), 'ERR_SHAPE', /spatial size 2x5 \(2x5 with padding\) is smaller than the kernel 3x3/);
      expect(conv2d(as.zeros([1, 3, 2, 5]), w(), null, { padding: 1 }).shape).toEqual([1, 4, 2, 5]);
    }));
  test('bad stride, padding, dilation, groups', () =>
    as.tidy(() => {
      thrown(() => conv2d(x(), w(), null, { stride: 0 }), 'ERR_ARG', /'stride' must be an integer >= 1/);
      thrown(() => conv2d(x(), w(), null, { padding: -1 }), 'ERR_ARG', /'padding' must be an integer >= 0/);
      thrown(() => conv2d(x(), w(), null, { stride: [1, 2, 3] as unknown as [number, number] }), 'ERR_ARG', /pair \[h, w\]/);
      thrown(() => conv2d(x(), w(), null, { dilation: 2 as never }), 'ERR_ARG', /only dilation 1/);
      thrown(() => conv2d(x(), w(), null, { groups: 3 as never }), 'ERR_ARG', /only groups 1/);
      thrown(() => native.conv2dForward(x().handle, w().handle, null, 0, 1, 0, 0), 'ERR_ARG', /'strideH' must be an integer/);
    }));
  test('backward with a gradient of the wrong shape', () =>
    as.tidy(() =>
      void thrown(() => native.conv2dBackward(as.zeros([2, 4, 3, 4]).handle, x().handle, w().handle, 1, 1, 0, 0, true, true, true), 'ERR_SHAPE', /output gradient: expected shape \[2, 4, 3, 3\], got \[2, 4, 3, 4\]/)));
  test('non-tensor arguments', () =>
    as.tidy(() => void thrown(() => conv2d(x(), 'w' as unknown as as.Tensor), 'ERR_ARG', /conv2d: 'weight' must be a Tensor/)));
});
