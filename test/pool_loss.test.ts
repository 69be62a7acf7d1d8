// Pooling (max, average, global average) and the fused cross-entropy: forward and gradients
// against PyTorch fixtures (test/fixtures/make_norm_fixtures.py), label handling, the count of
// correct predictions, determinism across thread counts, and errors.
import * as fs from 'fs';
import * as path from 'path';
import * as as from '../lib';
import { accuracy, countCorrect, crossEntropy, crossEntropyWithCorrect } from '../lib/ops/loss';
import { avgPool2d, globalAvgPool, maxPool2d } from '../lib/ops/pool';
import { compareArrays, CloseResult } from './helpers/compare';
import { thrown } from './helpers/errors';
import { native } from '../lib/native';

const dir = path.join(__dirname, 'fixtures', 'norm');
interface Case {
  name: string;
  file: string;
  kind: string;
  options: { kernel?: [number, number]; stride?: [number, number]; padding?: [number, number]; countIncludePad?: boolean; labelSmoothing?: number };
  inputShape: number[];
}
const cases: Case[] = JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8'));

// float32 against float64 references: relative 1e-4 with an absolute floor of 1e-5 x the
// tensor's largest magnitude (test/helpers/compare.ts).
const RTOL = 1e-4;
const ATOL_SCALE = 1e-5;

beforeAll(() => as.setDefaultDevice('cpu'));
afterAll(() => as.setDefaultDevice(undefined));

const arr = (t: as.Tensor | null): Float32Array => {
  if (!t) throw new Error('missing tensor');
  return t.toFloat32Array();
};
const leaf = (t: as.Tensor): as.Tensor => as.tensor(t.toFloat32Array(), t.shape).requiresGrad_();
// Bitwise equality of two float arrays (jest's toEqual is slow on large typed arrays).
const sameBits = (a: Float32Array, b: Float32Array): boolean =>
  a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
const failures = (rs: CloseResult[]) => rs.filter((r) => !r.ok).map((r) => r.message);
const load = (c: Case) => as.io.loadSafetensors(path.join(dir, c.file)) as Record<string, as.Tensor>;


describe('pooling against PyTorch fixtures', () => {
  const pools = cases.filter((c) => c.kind === 'maxpool' || c.kind === 'avgpool' || c.kind === 'gap');
  test.each(pools.map((c) => [c.name, c] as const))('%s', (_n, c) => {
    const bad = as.tidy(() => {
      const f = load(c);
      const x = leaf(f.x);
      const o = c.options;
      const y =
        c.kind === 'maxpool'
          ? maxPool2d(x, o.kernel!, o.stride!, o.padding!)
          : c.kind === 'avgpool'
            ? avgPool2d(x, o.kernel!, o.stride!, o.padding!, o.countIncludePad!)
            : globalAvgPool(x);
      expect(y.shape).toEqual(f.y.shape);
      y.backward(f.dy);
      const rs = [compareArrays(arr(y), arr(f.y), RTOL, ATOL_SCALE, 'y'), compareArrays(arr(x.grad), arr(f.dx), RTOL, ATOL_SCALE, 'dx')];
      // max pooling routes exact values: the gradient is a sum of dy entries in a fixed order
      if (c.kind === 'maxpool') expect(arr(y)).toEqual(arr(f.y));
      x.grad!.dispose();
      return failures(rs);
    });
    expect(bad).toEqual([]);
  });

  test('the fixtures cover the window combinations the contract asks for', () => {
    for (const kind of ['maxpool', 'avgpool']) {
      for (const hw of ['7,7', '28,28', '9,12']) {
        for (const ksp of ['2,2,0', '3,2,1', '3,1,1']) {
          const hit = cases.some(
            (c) => c.kind === kind && c.inputShape.slice(2).join() === hw && [c.options.kernel![0], c.options.stride![0], c.options.padding![0]].join() === ksp,
          );
          expect(`${kind} ${hw} ${ksp} ${hit}`).toBe(`${kind} ${hw} ${ksp} true`);
        }
      }
    }
    expect(cases.some((c) => c.kind === 'avgpool' && c.options.countIncludePad === false)).toBe(true);
    expect(cases.some((c) => c.name.includes('ties'))).toBe(true);
  });

  test('maxPool2d: ties go to the first maximum; stride defaults to the kernel; scalars and pairs', () => {
    as.tidy(() => {
      const x = as.tensor([1, 5, 5, 2, 0, 5, 3, 3, 1], [1, 1, 3, 3]).requiresGrad_();
      const y = maxPool2d(x, 2, 1);
      expect(Array.from(arr(y))).toEqual([5, 5, 3, 5]);
      y.backward(as.tensor([1, 10, 100, 1000], [1, 1, 2, 2]));
      // windows: (0,0) [1,5,2,0] -> offset 1; (0,1) [5,5,0,5] -> the first 5, offset 1;
      // (1,0) [2,0,3,3] -> the first 3, offset 6; (1,1) [0,5,3,1] -> offset 5
      expect(Array.from(arr(x.grad))).toEqual([0, 11, 0, 0, 0, 1000, 100, 0, 0]);
      const z = maxPool2d(as.randn([2, 3, 8, 6]), [2, 3]);
      expect(z.shape).toEqual([2, 3, 4, 2]);
      x.grad!.dispose();
    });
  });

  test('avgPool2d counts the padding (or not) like PyTorch', () => {
    as.tidy(() => {
      const x = as.ones([1, 1, 3, 3]);
      expect(Array.from(arr(avgPool2d(x, 3, 1, 1, true)))).toEqual([4, 6, 4, 6, 9, 6, 4, 6, 4].map((v) => Math.fround(v / 9)));
      expect(Array.from(arr(avgPool2d(x, 3, 1, 1, false)))).toEqual(new Array(9).fill(1));
    });
  });

  test('globalAvgPool returns [N, C]', () => {
    as.tidy(() => {
      const x = as.randn([3, 5, 4, 2]);
      const y = globalAvgPool(x);
      expect(y.shape).toEqual([3, 5]);
      const xs = arr(x), ys = arr(y);
      for (let p = 0; p < 15; p++) {
        let s = 0;
        for (let i = 0; i < 8; i++) s += xs[p * 8 + i];
        expect(ys[p]).toBeCloseTo(s / 8, 5);
      }
    });
  });
});

describe('crossEntropy against PyTorch fixtures', () => {
  const ce = cases.filter((c) => c.kind === 'ce');
  test.each(ce.map((c) => [c.name, c] as const))('%s', (_n, c) => {
    const bad = as.tidy(() => {
      const f = load(c);
      const logits = leaf(f.logits);
      const labels = Array.from(arr(f.labels));
      const { loss, correct } = crossEntropyWithCorrect(logits, labels, { labelSmoothing: c.options.labelSmoothing });
      expect(loss.shape).toEqual([]);
      loss.backward(as.tensor(arr(f.g)[0]));
      expect(correct.item()).toBe(arr(f.correct)[0]);
      const rs = [
        compareArrays(arr(loss), arr(f.loss), RTOL, ATOL_SCALE, 'loss'),
        compareArrays(arr(logits.grad), arr(f.dlogits), RTOL, ATOL_SCALE, 'dlogits'),
      ];
      logits.grad!.dispose();
      return failures(rs);
    });
    expect(bad).toEqual([]);
  });

  test('the fixtures cover K = 10 and 7, smoothing 0 and 0.1', () => {
    const ce2 = cases.filter((c) => c.kind === 'ce');
    for (const K of [10, 7]) for (const ls of [0, 0.1]) expect(ce2.some((c) => c.inputShape[1] === K && c.options.labelSmoothing === ls)).toBe(true);
  });
});

describe('crossEntropy behaviour', () => {
  test('labels as number[], Int32Array and Tensor give the same loss and gradient', () => {
    as.tidy(() => {
      const logits = as.randn([6, 4], { std: 2 }).requiresGrad_();
      const lab = [3, 0, 1, 1, 2, 0];
      const results: Float32Array[] = [];
      for (const l of [lab, Int32Array.from(lab), as.tensor(lab)]) {
        const loss = crossEntropy(logits, l, { labelSmoothing: 0.05 });
        loss.backward();
        results.push(Float32Array.of(loss.item(), ...arr(logits.grad)));
        logits.grad!.dispose();
        logits.grad = null;
      }
      expect(results[1]).toEqual(results[0]);
      expect(results[2]).toEqual(results[0]);
    });
  });

  test('the gradient accumulates, a labels tensor may be disposed before backward, no handle leaks', () => {
    const before = as.memory().tensors;
    as.tidy(() => {
      const logits = as.randn([5, 3]).requiresGrad_();
      const labels = as.tensor([0, 1, 2, 2, 1]);
      const l1 = crossEntropy(logits, labels);
      labels.dispose();
      l1.backward();
      const g1 = arr(logits.grad);
      crossEntropy(logits, [0, 1, 2, 2, 1]).backward();
      const g2 = arr(logits.grad);
      for (let i = 0; i < g1.length; i++) expect(g2[i]).toBeCloseTo(2 * g1[i], 6);
      // the gradient rows sum to zero (softmax - a distribution)
      for (let r = 0; r < 5; r++) expect(Math.abs(g1[r * 3] + g1[r * 3 + 1] + g1[r * 3 + 2])).toBeLessThan(1e-6);
      logits.grad!.dispose();
      as.noGrad(() => crossEntropy(logits, [0, 0, 0, 0, 0]));
    });
    expect(as.memory().tensors).toBe(before);
  });

  test('countCorrect and accuracy (first maximum on ties)', () => {
    as.tidy(() => {
      const logits = as.tensor([
        [1, 3, 2],
        [5, 5, 0],
        [0, 0, 9],
        [2, 1, 0],
      ]);
      expect(countCorrect(logits, [1, 1, 2, 0])).toBe(3); // row 1 ties: argmax is 0
      expect(accuracy(logits, [1, 0, 2, 0])).toBe(1);
      expect(accuracy(logits, [0, 1, 1, 2])).toBe(0);
    });
  });

  test('NaN counts as the largest logit (as torch.argmax), the first NaN on ties', () => {
    as.tidy(() => {
      // 40 columns: on CUDA the row is split over the 32 lanes of a warp, so the NaN (column 8)
      // and the largest number (column 24, same lane group) meet in the lanes' merge.
      const row = (nanAt: number[], big: number) => Array.from({ length: 40 }, (_, k) => (nanAt.includes(k) ? NaN : k === big ? 5 : 0));
      const logits = as.tensor([row([8], 24), row([], 24), row([3, 30], 24), row([0], 24)]);
      expect(countCorrect(logits, [8, 24, 3, 0])).toBe(4);
      expect(countCorrect(logits, [24, 0, 30, 24])).toBe(0);
    });
  });

  test('smoothing 1 is the mean negative log-likelihood of the uniform target', () => {
    as.tidy(() => {
      const logits = as.randn([3, 5]);
      const l = crossEntropy(logits, [0, 1, 2], { labelSmoothing: 1 }).item();
      const x = arr(logits);
      let ref = 0;
      for (let r = 0; r < 3; r++) {
        const row = Array.from(x.slice(r * 5, r * 5 + 5));
        const mx = Math.max(...row);
        const lse = mx + Math.log(row.reduce((s, v) => s + Math.exp(v - mx), 0));
        ref += row.reduce((s, v) => s + (lse - v) / 5, 0);
      }
      expect(l).toBeCloseTo(ref / 3, 5);
    });
  });

  test('labels are validated with clear ERR_ARG messages', () => {
    as.tidy(() => {
      const logits = as.randn([3, 4]);
      const cases: [unknown, RegExp][] = [
        [[0, 1], /expected 3 labels \(one per row of the logits\), got 2/],
        [[0, 1, 4], /labels must be integers in \[0, 4\) \(class indices\), got 4 at index 2/],
        [[0, -1, 2], /got -1 at index 1/],
        [[0, 1.5, 2], /got 1.5 at index 1/],
        [[0, NaN, 2], /got NaN at index 1/],
        [as.tensor([0, 1, 7]), /got 7 at index 2/],
        [as.tensor([[0, 1, 2]]), /a labels tensor must have shape \[3\], got \[1, 3\]/],
        ['012', /labels must be an Int32Array, a number array or a Tensor/],
      ];
      for (const [labels, msg] of cases) {
        const e = thrown(() => crossEntropy(logits, labels as number[]));
        expect(e.code).toBe('ERR_ARG');
        expect(e.message).toMatch(msg);
      }
      let e = thrown(() => crossEntropy(logits, [0, 1, 2], { labelSmoothing: 1.5 }));
      expect(e.code).toBe('ERR_ARG');
      expect(e.message).toMatch(/labelSmoothing must be a number in \[0, 1\], got 1.5/);
      e = thrown(() => crossEntropy(logits, [0, 1, 2], null as unknown as object));
      expect(e.code).toBe('ERR_ARG');
      expect(e.message).toMatch(/options must be an object, got null/);
      e = thrown(() => crossEntropy(as.randn([3, 4, 1]), [0, 1, 2]));
      expect(e.code).toBe('ERR_SHAPE');
      // the native layer checks CPU labels too
      const { native } = require('../lib/native');
      e = thrown(() => native.crossEntropyForward(logits.handle, as.tensor([0, 1, 9]).handle, 0));
      expect(e.code).toBe('ERR_ARG');
      expect(e.message).toMatch(/labels must be integers in \[0, 4\), got 9 at index 2/);
    });
  });
});

describe('pooling errors', () => {
  test('padding, kernel, stride and sizes are checked', () => {
    as.tidy(() => {
      const x = as.randn([1, 2, 5, 5]);
      let e = thrown(() => maxPool2d(x, 3, 1, 2));
      expect(e.code).toBe('ERR_ARG');
      expect(e.message).toMatch(/maxPool2d: padding must be non-negative and at most half the kernel size, got padding 2 x 2 for kernel 3 x 3/);
      e = thrown(() => avgPool2d(x, 7));
      expect(e.code).toBe('ERR_SHAPE');
      expect(e.message).toMatch(/avgPool2d: the output would be empty/);
      e = thrown(() => maxPool2d(x, 0));
      expect(e.code).toBe('ERR_ARG');
      e = thrown(() => maxPool2d(x, 2, [1, 0]));
      expect(e.code).toBe('ERR_ARG');
      e = thrown(() => maxPool2d(x, [2, 2, 2] as unknown as number));
      expect(e.code).toBe('ERR_ARG');
      expect(e.message).toMatch(/kernel must be a number or a pair/);
      e = thrown(() => maxPool2d(as.randn([2, 5, 5]), 2));
      expect(e.code).toBe('ERR_SHAPE');
      e = thrown(() => globalAvgPool(as.randn([2, 5])));
      expect(e.code).toBe('ERR_SHAPE');
      e = thrown(() => maxPool2d(x, 1.5));
      expect(e.code).toBe('ERR_ARG');
    });
  });

  test('plane limits: an output plane past 2^31 elements, a max-pool plane past 2^24 (also in backward)', () => {
    // Checked from the shapes alone, before anything the size of these planes is allocated.
    const dy = native.empty([1, 1, 1, 1], 'cpu');
    try {
      // kernel 2, stride 1, padding 1 makes the output (H + 1) x (W + 1): 46341^2 > 2^31 - 1
      // while the input plane 46340^2 is below it.
      let e = thrown(() => native.avgPool2dBackward(dy, [1, 1, 46340, 46340], 2, 2, 1, 1, 1, 1, true));
      expect(e.code).toBe('ERR_SHAPE');
      expect(e.message).toMatch(/avgPool2d backward: an output plane is limited to 2\^31 elements \(Ho \* Wo\), got 46341 x 46341/);
      // Max pooling's indices are floats: exact up to 2^24.
      e = thrown(() => native.maxPool2dBackward(dy, dy, [1, 1, 4097, 4097], 2, 2, 2, 2, 0, 0));
      expect(e.code).toBe('ERR_SHAPE');
      expect(e.message).toMatch(/maxPool2d backward: an input plane is limited to 2\^24 elements \(H \* W\), got 4097 x 4097/);
    } finally {
      dy.dispose();
    }
  });
});

describe('determinism', () => {
  test('pooling and cross-entropy give the same bits with 1 and 2 threads', () => {
    const before = as.getNumThreads();
    const run = () =>
      as.tidy(() => {
        as.manualSeed(3);
        const x = as.randn([8, 16, 28, 28]).requiresGrad_();
        const a = maxPool2d(x, 3, 2, 1);
        const b = avgPool2d(x, 3, 1, 1, false);
        const g = globalAvgPool(x);
        const logits = as.randn([300, 10], { std: 3 }).requiresGrad_();
        const labels = Array.from({ length: 300 }, (_, i) => (i * 7) % 10);
        const loss = crossEntropy(logits, labels, { labelSmoothing: 0.1 });
        as.functional.sum(a).backward();
        as.functional.sum(b).backward();
        as.functional.sum(g).backward();
        loss.backward();
        const out = [arr(a), arr(b), arr(g), arr(x.grad), arr(loss), arr(logits.grad)];
        x.grad!.dispose();
        logits.grad!.dispose();
        return out;
      });
    try {
      as.setNumThreads(1);
      const r1 = run();
      as.setNumThreads(2);
      const r2 = run();
      const r3 = run();
      for (let i = 0; i < r1.length; i++) {
        expect(sameBits(r2[i], r1[i])).toBe(true);
        expect(sameBits(r3[i], r1[i])).toBe(true);
      }
    } finally {
      as.setNumThreads(before);
    }
  });
});

describe('crossEntropy at extreme logits', () => {
  test('infinite logits without smoothing, and logits of 1e38, give PyTorch\'s losses (not NaN, not 0)', () => {
    const loss = (rows: number[][], labels: number[], labelSmoothing = 0) => {
      const x = as.tensor(rows);
      const l = crossEntropy(x, Int32Array.from(labels), { labelSmoothing });
      const v = l.item();
      [x, l].forEach((t) => t.dispose());
      return v;
    };
    // every other logit -inf: the label's probability is 1 (torch: 0); the label's logit -inf: inf
    expect(loss([[-Infinity, 2, -Infinity]], [1])).toBe(0);
    expect(loss([[1, -Infinity, 3]], [1])).toBe(Infinity);
    // equal huge logits: log(K) (the logits' magnitude must not swallow it)
    expect(loss([Array(10).fill(3.4e38)], [3])).toBeCloseTo(Math.log(10), 6);
    expect(loss([Array(10).fill(1e30)], [3], 0.1)).toBeCloseTo(Math.log(10), 6);
    // one logit 20 above nine equal ones (1e30 apart from 0): the loss of the gaps only
    const gap = Math.log(1 + 9 * Math.exp(-20));
    expect(loss([[1e6 + 20, ...Array(9).fill(1e6)]], [0])).toBeCloseTo(gap, 6);
  });

  test('the gradient depends on the logits\' differences only: 1e4 added to every logit changes it by float rounding, not by 1e-4', () => {
    const z = [[0.5, -1.25, 2, 0.75, -0.5], [1, 1.5, -2, 0, 0.25]];
    const grad = (offset: number) => {
      const x = as.tensor(z.map((r) => r.map((v) => v + offset)), undefined, { requiresGrad: true });
      as.tidy(() => crossEntropy(x, Int32Array.of(2, 0), { labelSmoothing: 0.1 }).backward());
      const g = Array.from(x.grad!.toFloat32Array());
      x.grad!.dispose();
      x.dispose();
      return g;
    };
    const g4 = grad(1e4);
    // the logits themselves round to float32 at 1e4 (ulp 1e-3): compare with the gradient of the
    // rounded differences, in double
    const rounded = z.map((r) => r.map((v) => Math.fround(v + 1e4) - 1e4));
    const ref = rounded.flatMap((r, i) => {
      const m = Math.max(...r), e = r.map((v) => Math.exp(v - m)), s = e.reduce((a, b) => a + b, 0);
      return e.map((v, k) => (v / s - ((k === [2, 0][i] ? 0.9 : 0) + 0.1 / 5)) / 2);
    });
    expect(g4.length).toBe(ref.length);
    for (let i = 0; i < ref.length; i++) expect(Math.abs(g4[i] - ref[i])).toBeLessThan(3e-7);
  });
});
