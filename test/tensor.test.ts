// Tensor creation, the random streams, round trips, dispose / tidy / keep, the exact memory
// counters, and the FinalizationRegistry safety net (in a child process run with --expose-gc).
import { spawnSync } from 'child_process';
import * as path from 'path';
import * as ts from 'typescript';
import { inspect, types } from 'util';
import * as as from '../lib';
import { ensureDist } from './helpers/dist';
import { closeCreationLog, openCreationLog } from '../lib/tensor';

const F = as.functional;

beforeAll(() => as.setDefaultDevice('cpu'));
afterAll(() => as.setDefaultDevice(undefined));

function cpuMem(): { tensors: number; bytes: number } {
  const m = as.memory();
  const cpu = m.devices.find((d) => d.device === 'cpu');
  if (!cpu) throw new Error('memory() has no cpu entry');
  return { tensors: cpu.tensors, bytes: cpu.bytes };
}

function expectCode(fn: () => unknown, code: string): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  // Errors made by the addon come from Node's main realm, not jest's sandbox: no instanceof.
  expect(types.isNativeError(err) || err instanceof Error).toBe(true);
  expect((err as { code?: string }).code).toBe(code);
}

// ---- an independent Philox4x32-10 (Salmon et al. 2011), checked against Random123's KATs ----
function mulhilo(a: number, b: number): [number, number] {
  const p = BigInt(a) * BigInt(b);
  return [Number(p >> 32n), Number(p & 0xffffffffn)];
}
function philox(counter: [number, number, number, number], key: [number, number]): number[] {
  let [c0, c1, c2, c3] = counter;
  let [k0, k1] = key;
  for (let r = 0; r < 10; r++) {
    const [hi0, lo0] = mulhilo(0xd2511f53, c0);
    const [hi1, lo1] = mulhilo(0xcd9e8d57, c2);
    [c0, c1, c2, c3] = [(hi1 ^ c1 ^ k0) >>> 0, lo1, (hi0 ^ c3 ^ k1) >>> 0, lo0];
    k0 = (k0 + 0x9e3779b9) >>> 0;
    k1 = (k1 + 0xbb67ae85) >>> 0;
  }
  return [c0, c1, c2, c3];
}
/** The package's documented mapping: element i of a stream uses counter (offset + i) >> 2. */
function refUniform(seed: number, offset: number, n: number, lo = 0, hi = 1): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const idx = offset + i;
    const block = Math.floor(idx / 4);
    const v = philox([block >>> 0, Math.floor(block / 2 ** 32) >>> 0, 0, 0], [seed >>> 0, Math.floor(seed / 2 ** 32) >>> 0]);
    const u = ((v[idx & 3] >>> 8) + 1) / 16777216; // (0, 1], 24 bits
    out.push(lo + (hi - lo) * (1 - u));
  }
  return out;
}

describe('creation', () => {
  test('tensor() from a Float32Array copies the data and infers a 1-d shape', () => {
    const src = new Float32Array([1.5, -2, 3.25, 0]);
    const t = as.tensor(src);
    src[0] = 99;
    expect(t.shape).toEqual([4]);
    expect(t.numel).toBe(4);
    expect(t.device).toBe('cpu');
    expect(Array.from(t.toFloat32Array())).toEqual([1.5, -2, 3.25, 0]);
    t.dispose();
  });

  test('tensor() from a number array with an explicit shape', () => {
    const t = as.tensor([1, 2, 3, 4, 5, 6], [2, 3]);
    expect(t.shape).toEqual([2, 3]);
    expect(t.toArray()).toEqual([[1, 2, 3], [4, 5, 6]]);
    t.dispose();
  });

  test('tensor() from nested arrays infers the shape', () => {
    const t = as.tensor([[[1, 2]], [[3, 4]], [[5, 6]]]);
    expect(t.shape).toEqual([3, 1, 2]);
    expect(Array.from(t.toFloat32Array())).toEqual([1, 2, 3, 4, 5, 6]);
    t.dispose();
  });

  test('tensor() from a number is a 0-d scalar', () => {
    const t = as.tensor(-7.5);
    expect(t.shape).toEqual([]);
    expect(t.numel).toBe(1);
    expect(t.item()).toBe(-7.5);
    expect(t.toArray()).toBe(-7.5);
    t.dispose();
  });

  test('tensor() from another typed array converts to float32', () => {
    const t = as.tensor(new Int32Array([1, -2, 3]));
    expect(t.shape).toEqual([3]);
    expect(Array.from(t.toFloat32Array())).toEqual([1, -2, 3]);
    t.dispose();
  });

  test('values are rounded to float32, and NaN / Infinity survive', () => {
    const t = as.tensor([0.1, 1e-50, Infinity, -Infinity, NaN, 3e38 * 10]);
    const v = t.toFloat32Array();
    expect(v[0]).toBe(Math.fround(0.1));
    expect(v[1]).toBe(0);
    expect(v[2]).toBe(Infinity);
    expect(v[3]).toBe(-Infinity);
    expect(Number.isNaN(v[4])).toBe(true);
    expect(v[5]).toBe(Infinity);
    t.dispose();
  });

  test('ragged nested arrays and non-number entries are rejected', () => {
    expectCode(() => as.tensor([[1, 2], [3]]), 'ERR_SHAPE');
    expectCode(() => as.tensor([[1, 2], 3]), 'ERR_SHAPE');
    expectCode(() => as.tensor([1, 'a' as unknown as number]), 'ERR_DTYPE');
    expectCode(() => as.tensor([1, 2, 3], [2, 2]), 'ERR_SHAPE');
  });

  test('zeros, ones, full, empty: shapes and values', () => {
    const z = as.zeros([2, 3]);
    const o = as.ones([4]);
    const f = as.full([2, 2, 2], -1.25);
    const s = as.full([], 3);
    const e = as.empty([5, 2]);
    expect(z.shape).toEqual([2, 3]);
    expect(Array.from(z.toFloat32Array())).toEqual([0, 0, 0, 0, 0, 0]);
    expect(Array.from(o.toFloat32Array())).toEqual([1, 1, 1, 1]);
    expect(Array.from(f.toFloat32Array())).toEqual(new Array(8).fill(-1.25));
    expect(s.shape).toEqual([]);
    expect(s.item()).toBe(3);
    expect(e.shape).toEqual([5, 2]);
    expect(e.numel).toBe(10);
    for (const t of [z, o, f, s, e]) t.dispose();
  });

  test('empty tensors (a zero dimension) work everywhere', () => {
    const a = as.zeros([2, 0, 3]);
    const b = as.tensor(new Float32Array(0), [0, 4]);
    expect(a.numel).toBe(0);
    expect(a.toFloat32Array().length).toBe(0);
    expect(a.toArray()).toEqual([[], []]);
    expect(b.shape).toEqual([0, 4]);
    const r = F.reshape(b, [4, 0]);
    expect(r.shape).toEqual([4, 0]);
    for (const t of [a, b, r]) t.dispose();
  });

  test('requiresGrad and device options', () => {
    const t = as.ones([2], { requiresGrad: true, device: 'cpu' });
    expect(t.requiresGrad).toBe(true);
    expect(t.isLeaf).toBe(true);
    expect(t.toString()).toBe('Tensor(shape=[2], device=cpu, requiresGrad)');
    t.dispose();
  });
});

describe('random streams', () => {
  test('rand matches an independent Philox4x32-10 (Random123 known-answer vectors)', () => {
    // The reference implementation first reproduces the published KATs...
    const hex = (a: number[]) => a.map((v) => v.toString(16).padStart(8, '0')).join(' ');
    expect(hex(philox([0, 0, 0, 0], [0, 0]))).toBe('6627e8d5 e169c58d bc57ac4c 9b00dbd8');
    expect(hex(philox([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff]))).toBe('408f276d 41c83b0e a20bc7c6 6d5451fd');
    expect(hex(philox([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]))).toBe('d16cfe09 94fdcceb 5001e420 24126ea1');
    // ... then the package's uniform stream must equal it exactly (the mapping is exact in float32).
    for (const [seed, offset, n] of [[0, 0, 9], [12345, 0, 7], [2 ** 40 + 17, 8, 13], [7, 2 ** 34, 5]] as const) {
      as.setRngState({ seed, offset });
      const t = as.rand([n]);
      expect(Array.from(t.toFloat32Array())).toEqual(refUniform(seed, offset, n).map(Math.fround));
      t.dispose();
    }
  });

  test('randn is Box-Muller on the same Philox blocks', () => {
    as.setRngState({ seed: 99, offset: 0 });
    const t = as.randn([8]);
    const got = t.toFloat32Array();
    const u = refUniform(99, 0, 8).map((v) => 1 - v); // back to the (0, 1] draws
    for (let i = 0; i < 8; i++) {
      const base = i - (i % 4) + (i & 2);
      const r = Math.sqrt(-2 * Math.log(u[base])), a = 2 * Math.PI * u[base + 1];
      const z = i & 1 ? r * Math.sin(a) : r * Math.cos(a);
      // float32 logf / sinf / cosf: a few ulps of the O(1) result
      expect(Math.abs(got[i] - z)).toBeLessThan(1e-5 * Math.max(1, Math.abs(z)));
    }
    t.dispose();
  });

  test('manualSeed makes draws reproducible and resets the stream', () => {
    as.manualSeed(42);
    const a1 = as.randn([3, 5]), b1 = as.rand([7]);
    as.manualSeed(42);
    const a2 = as.randn([3, 5]), b2 = as.rand([7]);
    expect(Array.from(a2.toFloat32Array())).toEqual(Array.from(a1.toFloat32Array()));
    expect(Array.from(b2.toFloat32Array())).toEqual(Array.from(b1.toFloat32Array()));
    as.manualSeed(43);
    const a3 = as.randn([3, 5]);
    const same = a3.toFloat32Array().filter((v, i) => v === a1.toFloat32Array()[i]).length;
    expect(same).toBe(0);
    for (const t of [a1, b1, a2, b2, a3]) t.dispose();
  });

  test('every call draws new numbers and advances the state by whole Philox blocks', () => {
    as.manualSeed(7);
    expect(as.getRngState()).toEqual({ seed: 7, offset: 0 });
    const a = as.rand([10]);
    expect(as.getRngState()).toEqual({ seed: 7, offset: 12 });
    const b = as.rand([10]);
    expect(as.getRngState()).toEqual({ seed: 7, offset: 24 });
    const c = as.randn([1]);
    expect(as.getRngState()).toEqual({ seed: 7, offset: 28 });
    const av = a.toFloat32Array(), bv = b.toFloat32Array();
    expect(new Set([...av, ...bv]).size).toBe(20);
    for (const t of [a, b, c]) t.dispose();
  });

  test('getRngState / setRngState replay a draw, and one big draw equals aligned smaller ones', () => {
    as.manualSeed(3);
    as.rand([5]);
    const state = as.getRngState();
    const big = as.randn([8]);
    as.setRngState(state);
    const first = as.randn([4]);
    const second = as.randn([4]);
    expect([...first.toFloat32Array(), ...second.toFloat32Array()]).toEqual(Array.from(big.toFloat32Array()));
    // the state object is a copy: mutating it does not move the generator
    const s = as.getRngState();
    s.offset = 0;
    expect(as.getRngState().offset).not.toBe(0);
    for (const t of [big, first, second]) t.dispose();
  });

  test('randn statistics over 1e5 samples (bounds: 6 standard errors)', () => {
    const n = 100_000;
    as.manualSeed(2024);
    const t = as.randn([n]);
    const v = t.toFloat32Array();
    let s = 0, s2 = 0, within1 = 0, s3 = 0;
    for (const x of v) {
      s += x;
      s2 += x * x;
      s3 += x * x * x;
      if (Math.abs(x) < 1) within1++;
    }
    const mean = s / n, variance = s2 / n - mean * mean;
    expect(Math.abs(mean)).toBeLessThan(6 / Math.sqrt(n)); // sd of the mean: 1/sqrt(n)
    expect(Math.abs(variance - 1)).toBeLessThan(6 * Math.sqrt(2 / n)); // sd of s^2: sqrt(2/n)
    expect(Math.abs(s3 / n)).toBeLessThan(6 * Math.sqrt(15 / n)); // E[z^6] = 15
    const p = 0.682689492;
    expect(Math.abs(within1 / n - p)).toBeLessThan(6 * Math.sqrt((p * (1 - p)) / n));
    t.dispose();

    const m = as.randn([n], { mean: 3, std: 0.5 });
    const mv = m.toFloat32Array();
    const mm = mv.reduce((a, x) => a + x, 0) / n;
    const ms = Math.sqrt(mv.reduce((a, x) => a + (x - mm) ** 2, 0) / n);
    expect(Math.abs(mm - 3)).toBeLessThan((6 * 0.5) / Math.sqrt(n));
    expect(Math.abs(ms - 0.5)).toBeLessThan(6 * 0.5 * Math.sqrt(1 / (2 * n)));
    m.dispose();
  });

  test('rand statistics over 1e5 samples: inside [low, high), flat histogram', () => {
    const n = 100_000;
    as.manualSeed(77);
    const t = as.rand([n]);
    const v = t.toFloat32Array();
    let s = 0, s2 = 0, lo = Infinity, hi = -Infinity;
    const bins = new Array(10).fill(0);
    for (const x of v) {
      s += x;
      s2 += (x - 0.5) ** 2;
      lo = Math.min(lo, x);
      hi = Math.max(hi, x);
      bins[Math.floor(x * 10)]++;
    }
    expect(lo).toBeGreaterThanOrEqual(0);
    expect(hi).toBeLessThan(1);
    expect(Math.abs(s / n - 0.5)).toBeLessThan(6 * Math.sqrt(1 / 12 / n));
    expect(Math.abs(s2 / n - 1 / 12)).toBeLessThan(6 * Math.sqrt((1 / 80 - 1 / 144) / n));
    // chi-square with 9 degrees of freedom: mean 9, sd sqrt(18); 9 + 6 sd ~ 34.5
    const chi2 = bins.reduce((a, c) => a + (c - n / 10) ** 2 / (n / 10), 0);
    expect(chi2).toBeLessThan(9 + 6 * Math.sqrt(18));
    t.dispose();

    const r = as.rand([n], { low: -2, high: 6 });
    const rv = r.toFloat32Array();
    expect(Math.min(...rv)).toBeGreaterThanOrEqual(-2);
    expect(Math.max(...rv)).toBeLessThan(6);
    const rm = rv.reduce((a, x) => a + x, 0) / n;
    expect(Math.abs(rm - 2)).toBeLessThan(6 * Math.sqrt(64 / 12 / n));
    r.dispose();
  });

  test('invalid seeds and states are rejected', () => {
    expectCode(() => as.manualSeed(-1), 'ERR_ARG');
    expectCode(() => as.manualSeed(1.5), 'ERR_ARG');
    expect(() => as.manualSeed(1n as never)).toThrow('manualSeed: seed must be a non-negative safe integer, got the bigint 1n (pass a number)');
    expectCode(() => as.setRngState({ seed: 1, offset: -4 }), 'ERR_ARG');
    expectCode(() => as.rand([2], { low: 1, high: 0 }), 'ERR_ARG');
    expectCode(() => as.randn([2], { std: -1 }), 'ERR_ARG');
  });
});

describe('round trips', () => {
  test('toFloat32Array returns a copy', () => {
    const t = as.tensor([1, 2, 3]);
    const a = t.toFloat32Array();
    a[0] = 100;
    expect(Array.from(t.toFloat32Array())).toEqual([1, 2, 3]);
    t.dispose();
  });

  test('toArray mirrors nested input; item reads one-element tensors', () => {
    const nested = [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]];
    const t = as.tensor(nested);
    expect(t.toArray()).toEqual(nested);
    const one = as.tensor([[2.5]]);
    expect(one.item()).toBe(2.5);
    expectCode(() => t.item(), 'ERR_SHAPE');
    t.dispose();
    one.dispose();
  });

  test('functional.reshape keeps the values, infers -1 and rejects bad shapes', () => {
    const t = as.tensor(Float32Array.from({ length: 24 }, (_, i) => i), [2, 3, 4]);
    const r = F.reshape(t, [4, -1]);
    expect(r.shape).toEqual([4, 6]);
    expect(Array.from(r.toFloat32Array())).toEqual(Array.from({ length: 24 }, (_, i) => i));
    const s = F.reshape(r, [24]);
    expect(s.toArray()).toEqual(Array.from({ length: 24 }, (_, i) => i));
    expectCode(() => F.reshape(t, [5, 5]), 'ERR_SHAPE');
    expectCode(() => F.reshape(t, [-1, -1]), 'ERR_SHAPE');
    expectCode(() => F.reshape(t, [7, -1]), 'ERR_SHAPE');
    for (const x of [t, r, s]) x.dispose();
  });

  test('detach shares the data, drops the graph, and outlives the original', () => {
    const x = as.tensor([1, 2, 3], undefined, { requiresGrad: true });
    const y = F.scale(x, 2);
    expect(y.gradFn).not.toBeNull();
    const before = cpuMem();
    const d = y.detach();
    const after = cpuMem();
    expect(after.tensors - before.tensors).toBe(1);
    expect(after.bytes - before.bytes).toBe(0); // a view: no new storage
    expect(d.requiresGrad).toBe(false);
    expect(d.gradFn).toBeNull();
    y.dispose();
    expect(Array.from(d.toFloat32Array())).toEqual([2, 4, 6]);
    d.dispose();
    x.dispose();
  });

  test(".to('cpu') on a cpu tensor is the same tensor; unknown devices throw", () => {
    const t = as.ones([2]);
    expect(t.to('cpu')).toBe(t);
    expectCode(() => t.to('tpu' as as.DeviceSpec), 'ERR_DEVICE');
    t.dispose();
  });
});

describe('creation log (what CudaGraph.capture disposes when a capture fails)', () => {
  test('holds every tensor made while open: returned by tidy, kept, or stored in .grad; none after', () => {
    const p = as.randn([3], { requiresGrad: true });
    const log = openCreationLog();
    let kept: as.Tensor;
    try {
      kept = as.tidy(() => {
        F.sum(F.mul(p, p)).backward();
        return as.randn([2]);
      });
    } finally {
      closeCreationLog(log);
    }
    const after = as.randn([1]);
    expect([log.has(kept), log.has(p.grad!), log.has(p), log.has(after)]).toEqual([true, true, false, false]);
    // the tidy disposed its temporaries; the log still names them, disposed
    expect([...log].filter((t) => !t.isDisposed).length).toBe(2);
    for (const t of [p, kept, after]) t.dispose();
    p.grad!.dispose();
  });
});

describe('native handles', () => {
  test('cannot be constructed from JS, whatever the arguments', () => {
    const t = as.zeros([2]);
    const Ctor = Object.getPrototypeOf(t.handle).constructor as new (...a: unknown[]) => unknown;
    expect(Ctor.name).toBe('NativeTensor');
    const before = cpuMem();
    for (const args of [[], ['__adashift_internal__'], [{}], [t.handle], [Object.create(null)], ['x', 'y']])
      expect(() => new Ctor(...args)).toThrow(/NativeTensor cannot be constructed directly/);
    expect(cpuMem()).toEqual(before);
    t.dispose();
  });
});

describe('dispose', () => {
  test('dispose frees now, is idempotent, and later use throws ERR_DISPOSED', () => {
    const before = cpuMem();
    const t = as.zeros([3, 5]);
    expect(cpuMem()).toEqual({ tensors: before.tensors + 1, bytes: before.bytes + 60 });
    // read before disposal too: what the wrapper keeps of its handle does not outlive it
    expect([t.shape, t.numel, t.device]).toEqual([[3, 5], 15, 'cpu']);
    const shape = t.shape;
    shape[0] = 7; // a copy: the tensor's shape stays
    expect(t.shape).toEqual([3, 5]);
    t.dispose();
    expect(cpuMem()).toEqual(before);
    t.dispose();
    expect(cpuMem()).toEqual(before);
    expect(t.isDisposed).toBe(true);
    expect(t.toString()).toBe('Tensor(disposed)');
    expectCode(() => t.toFloat32Array(), 'ERR_DISPOSED');
    expectCode(() => t.shape, 'ERR_DISPOSED');
    expectCode(() => t.numel, 'ERR_DISPOSED');
    expectCode(() => F.relu(t), 'ERR_DISPOSED');
  });

  test('[Symbol.dispose] and `using` free the tensor (compiled by tsc, run in plain Node)', () => {
    // jest's sandbox realm has no Symbol.dispose (Node adds it to the main realm only), so the
    // `using` declaration runs in a child process, compiled the way tsc compiles user code.
    const dist = ensureDist();
    const src = `
      const as = require(${JSON.stringify(dist)});
      const cpu = () => as.memory().devices[0];
      const base = cpu();
      let escaped;
      {
        using t = as.ones([8]);
        escaped = t;
        if (cpu().tensors !== base.tensors + 1 || cpu().bytes !== base.bytes + 32) throw new Error('not counted');
      }
      const u = as.ones([2]);
      u[Symbol.dispose]();
      process.stdout.write(JSON.stringify({ escaped: escaped.isDisposed, u: u.isDisposed,
        same: cpu().tensors === base.tensors && cpu().bytes === base.bytes }));`;
    const js = ts.transpileModule(src, { compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.CommonJS, lib: ['lib.es2022.d.ts', 'lib.esnext.disposable.d.ts'] } }).outputText;
    const r = spawnSync(process.execPath, ['-e', js], { encoding: 'utf8', timeout: 60_000, cwd: path.dirname(dist), env: { ...process.env, ADASHIFT_DEVICE: 'cpu' } });
    expect({ status: r.status, stderr: r.stderr }).toEqual({ status: 0, stderr: '' });
    expect(JSON.parse(r.stdout)).toEqual({ escaped: true, u: true, same: true });
  });

  test('disposing a view keeps the shared storage for the other views', () => {
    const t = as.tensor([1, 2, 3, 4]);
    const v = F.reshape(t, [2, 2]);
    const before = cpuMem();
    t.dispose();
    expect(cpuMem()).toEqual({ tensors: before.tensors - 1, bytes: before.bytes });
    expect(v.toArray()).toEqual([[1, 2], [3, 4]]);
    v.dispose();
    expect(cpuMem()).toEqual({ tensors: before.tensors - 2, bytes: before.bytes - 16 });
  });
});

describe('tidy and keep', () => {
  test('tidy frees every tensor made inside except the returned one', () => {
    const outside = as.ones([4]);
    const before = cpuMem();
    let inner: as.Tensor[] = [];
    const r = as.tidy(() => {
      const a = as.zeros([10]);
      const b = F.add(a, a);
      const c = F.scale(b, 3);
      inner = [a, b];
      return c;
    });
    expect(inner.every((t) => t.isDisposed)).toBe(true);
    expect(r.isDisposed).toBe(false);
    expect(outside.isDisposed).toBe(false);
    expect(cpuMem()).toEqual({ tensors: before.tensors + 1, bytes: before.bytes + 40 });
    r.dispose();
    outside.dispose();
    expect(cpuMem()).toEqual({ tensors: before.tensors - 1, bytes: before.bytes - 16 });
  });

  test('nested tidy: the inner result moves to the outer scope', () => {
    const before = cpuMem();
    let innerResult: as.Tensor | undefined;
    let innerTemp: as.Tensor | undefined;
    const out = as.tidy(() => {
      innerResult = as.tidy(() => {
        innerTemp = as.ones([3]);
        return as.zeros([3]);
      });
      expect(innerTemp!.isDisposed).toBe(true);
      expect(innerResult.isDisposed).toBe(false);
      return as.full([2], 5);
    });
    expect(innerResult!.isDisposed).toBe(true); // freed by the outer scope
    expect(cpuMem()).toEqual({ tensors: before.tensors + 1, bytes: before.bytes + 8 });
    out.dispose();
    expect(cpuMem()).toEqual(before);
  });

  test('returned arrays, plain objects, Maps and nested containers are kept', () => {
    const before = cpuMem();
    let dropped: as.Tensor | undefined;
    const r = as.tidy(() => {
      dropped = as.ones([1]);
      return {
        list: [as.zeros([1]), [as.zeros([2])]],
        map: new Map([['m', as.zeros([3])]]),
        obj: { deep: { t: as.zeros([4]) } },
        n: 5,
      };
    });
    expect(dropped!.isDisposed).toBe(true);
    const kept = [r.list[0] as as.Tensor, (r.list[1] as as.Tensor[])[0], r.map.get('m')!, r.obj.deep.t];
    expect(kept.every((t) => !t.isDisposed)).toBe(true);
    expect(cpuMem()).toEqual({ tensors: before.tensors + 4, bytes: before.bytes + 4 * (1 + 2 + 3 + 4) });
    kept.forEach((t) => t.dispose());
    expect(cpuMem()).toEqual(before);
  });

  test('keep() excludes a tensor from every enclosing scope', () => {
    const before = cpuMem();
    let kept: as.Tensor | undefined;
    as.tidy(() => {
      as.tidy(() => {
        kept = as.keep(as.ones([6]));
        as.ones([6]);
      });
      return 1;
    });
    expect(kept!.isDisposed).toBe(false);
    expect(cpuMem()).toEqual({ tensors: before.tensors + 1, bytes: before.bytes + 24 });
    kept!.dispose();
    expect(cpuMem()).toEqual(before);
  });

  test('gradients stored in leaves survive the tidy that ran backward', () => {
    const x = as.tensor([1, 2, 3], undefined, { requiresGrad: true });
    const before = cpuMem();
    as.tidy(() => {
      F.sum(F.mul(x, x)).backward();
    });
    expect(x.grad).not.toBeNull();
    expect(Array.from(x.grad!.toFloat32Array())).toEqual([2, 4, 6]);
    expect(cpuMem()).toEqual({ tensors: before.tensors + 1, bytes: before.bytes + 12 });
    x.grad!.dispose();
    x.dispose();
  });

  test('a tensor disposed by hand inside tidy is not a problem', () => {
    const before = cpuMem();
    as.tidy(() => {
      const a = as.ones([2]);
      a.dispose();
      as.ones([2]);
    });
    expect(cpuMem()).toEqual(before);
  });

  test('tidy keeps what is returned in Sets, Map keys and class instances (a Set was freed under the caller), and frees the rest', () => {
    class Pair {
      constructor(readonly a: as.Tensor, readonly b: as.Tensor) {}
    }
    const before = as.memory().tensors;
    const r = as.tidy(() => {
      as.ones([3]); // freed
      const key = as.zeros([1]);
      return { set: new Set([as.ones([2])]), map: new Map([[key, 1]]), pair: new Pair(as.full([2], 3), as.full([2], 4)), bytes: new Uint8Array(4) };
    });
    expect(as.memory().tensors).toBe(before + 4);
    const [s0] = [...r.set];
    expect(Array.from(s0.toFloat32Array())).toEqual([1, 1]);
    expect(Array.from(r.pair.b.toFloat32Array())).toEqual([4, 4]);
    for (const t of [s0, ...r.map.keys(), r.pair.a, r.pair.b]) t.dispose();
    expect(as.memory().tensors).toBe(before);
  });

  test('tidy rejects an async function', () => {
    expectCode(() => as.tidy((async () => 1) as unknown as () => number), 'ERR_ARG');
  });

  test('tidy frees the tensors made inside it when fn throws', () => {
    const before = cpuMem();
    let made: as.Tensor | undefined;
    expect(() =>
      as.tidy(() => {
        made = as.zeros([16]);
        throw new Error('boom');
      }),
    ).toThrow('boom');
    expect(made!.isDisposed).toBe(true);
    expect(cpuMem()).toEqual(before);
    made!.dispose();
  });
});

describe('memory()', () => {
  test('exact tensor and byte counts per device, and totals', () => {
    const m0 = as.memory();
    expect(m0.tensors).toBe(m0.devices.reduce((a, d) => a + d.tensors, 0));
    expect(m0.bytes).toBe(m0.devices.reduce((a, d) => a + d.bytes, 0));
    expect(m0.devices[0].device).toBe('cpu');
    const before = cpuMem();
    const a = as.zeros([7, 3]); // 84 bytes
    const b = as.tensor(1); // 4 bytes
    const c = as.zeros([0, 9]); // a handle, no bytes
    const d = F.reshape(a, [21]); // a view: a handle, no bytes
    expect(cpuMem()).toEqual({ tensors: before.tensors + 4, bytes: before.bytes + 88 });
    const m1 = as.memory();
    expect(m1.tensors - m0.tensors).toBe(4);
    expect(m1.bytes - m0.bytes).toBe(88);
    a.dispose();
    expect(cpuMem()).toEqual({ tensors: before.tensors + 3, bytes: before.bytes + 88 });
    d.dispose();
    expect(cpuMem()).toEqual({ tensors: before.tensors + 2, bytes: before.bytes + 4 });
    b.dispose();
    c.dispose();
    expect(cpuMem()).toEqual(before);
  });

  test('counts return to the baseline after tidy around a forward/backward', () => {
    const m = new as.nn.AdaShiftB(4);
    const x = as.randn([2, 4, 3, 3], { requiresGrad: true });
    const before = cpuMem();
    as.tidy(() => {
      const y = m.forward(x);
      F.sum(y).backward();
    });
    // the gradients of x (72 floats) and of the parameters (4 + 4 floats) are the only survivors
    expect(cpuMem()).toEqual({ tensors: before.tensors + 3, bytes: before.bytes + 4 * (72 + 8) });
    m.zeroGrad();
    x.grad!.dispose();
    expect(cpuMem()).toEqual(before);
    m.dispose();
    x.dispose();
  });
});

describe('FinalizationRegistry safety net (child process with --expose-gc)', () => {
  test('a leaked tensor is freed by the GC and counted in memory().leaked; disposed ones are not', () => {
    const dist = ensureDist();
    const script = `
      const as = require(${JSON.stringify(dist)});
      const cpu = () => { const d = as.memory().devices[0]; return { tensors: d.tensors, bytes: d.bytes }; };
      (async () => {
        const base = cpu();
        const baseLeaked = as.memory().leaked;
        const held = as.ones([5]);
        (() => { for (let i = 0; i < 3; i++) as.zeros([1000]); })();   // leaked: never disposed
        (() => { as.zeros([50]).dispose(); as.tidy(() => as.zeros([70]) && 1); })(); // freed properly
        const afterCreate = cpu();
        for (let i = 0; i < 100 && as.memory().leaked - baseLeaked < 3; i++) {
          global.gc();
          await new Promise((r) => setTimeout(r, 5));
        }
        for (let i = 0; i < 5; i++) { global.gc(); await new Promise((r) => setTimeout(r, 5)); }
        const out = { base, afterCreate, after: cpu(), leaked: as.memory().leaked - baseLeaked,
                      heldValues: Array.from(held.toFloat32Array()) };
        process.stdout.write(JSON.stringify(out));
      })().catch((e) => { console.error(e); process.exit(1); });`;
    const r = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, ADASHIFT_DEVICE: 'cpu' } });
    expect({ status: r.status, signal: r.signal, stderr: r.stderr }).toEqual({ status: 0, signal: null, stderr: '' });
    const out = JSON.parse(r.stdout);
    expect(out.afterCreate).toEqual({ tensors: out.base.tensors + 4, bytes: out.base.bytes + 20 + 3 * 4000 });
    expect(out.leaked).toBe(3);
    expect(out.after).toEqual({ tensors: out.base.tensors + 1, bytes: out.base.bytes + 20 });
    expect(out.heldValues).toEqual([1, 1, 1, 1, 1]);
  });
});

describe('what a user sees of a tensor and a module', () => {
  test('console.log shows shape, device, autograd state and values; past 1000 elements a summary; JSON has the values', () => {
    const t = as.tensor([[1, 2], [3, 4.5]], undefined, { requiresGrad: true });
    expect(inspect(t)).toBe('Tensor(shape=[2, 2], device=cpu, requiresGrad) [[1., 2.],\n [3., 4.5]]');
    const y = as.functional.scale(t, 2);
    expect(String(y)).toBe('Tensor(shape=[2, 2], device=cpu, requiresGrad, gradFn=scale)');
    expect(JSON.parse(JSON.stringify({ y }))).toEqual({ y: { shape: [2, 2], device: 'cpu', values: [[2, 4], [6, 9]] } });
    const big = as.tensor(Float32Array.from({ length: 40 * 50 }, (_, i) => i), [40, 50]);
    const lines = inspect(big).split('\n');
    expect(lines[0]).toBe('Tensor(shape=[40, 50], device=cpu) [[0., 1., 2., ..., 47., 48., 49.],');
    expect(lines[3]).toBe(' ...,');
    expect(lines[6]).toBe(' [1950., 1951., 1952., ..., 1997., 1998., 1999.]]');
    expect(inspect(as.tensor(0.125))).toBe('Tensor(shape=[], device=cpu) 0.125');
    for (const x of [t, y, big]) x.dispose();
    expect(inspect(t)).toBe('Tensor(disposed)');
    expect(JSON.stringify(t)).toBe('{"disposed":true}');
  });

  test('a module prints as PyTorch prints it', () => {
    const m = new as.nn.Sequential(new as.nn.Conv2d(1, 4, 3, { padding: 1 }), new as.nn.BatchNorm2d(4), as.nn.activation('adashift-b', 4));
    expect(inspect(m)).toBe([
      'Sequential(',
      '  (0): Conv2d(1, 4, kernelSize=3, stride=1, padding=1, bias=false)',
      '  (1): BatchNorm2d(4, eps=1e-5, momentum=0.1)',
      '  (2): AdaShiftB(',
      '    4, proj=false',
      '    (norm): LayerNorm(4, eps=1e-6)',
      '  )',
      ')',
    ].join('\n'));
    m.dispose();
  });

  test('requiresGrad takes booleans and changes only on leaves; train(mode) a boolean; new Tensor() is the factories\' job', () => {
    const x = as.ones([2]);
    expect(() => { x.requiresGrad = 'yes' as never; }).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: 'requiresGrad must be a boolean, got "yes"' }));
    expect(() => x.requiresGrad_(1 as never)).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: 'requiresGrad_(flag): flag must be a boolean, got 1' }));
    x.requiresGrad = true;
    const h = as.functional.mul(x, x);
    // cutting a result from the graph this way would give wrong gradients (x * x * x gave [1, 1])
    expect(() => { h.requiresGrad = false; }).toThrow(expect.objectContaining({ code: 'ERR_AUTOGRAD', message: expect.stringMatching(/^requiresGrad can only be changed on a leaf tensor/) }));
    h.requiresGrad = true; // unchanged: allowed
    const bn = new as.nn.BatchNorm2d(2);
    expect(() => bn.train('false' as never)).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: 'BatchNorm2d.train(mode): mode must be a boolean, got "false"' }));
    expect(bn.training).toBe(true);
    expect(() => new as.Tensor({} as never)).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: expect.stringMatching(/^new Tensor\(handle\): a Tensor wraps a handle of the addon; make tensors with tensor\(\)/) }));
    // copy_ from the typed arrays a DataLoader gives (Int32Array labels) and from plain arrays
    const y = as.zeros([3]);
    y.copy_(Int32Array.of(1, 2, 3));
    expect(Array.from(y.toFloat32Array())).toEqual([1, 2, 3]);
    y.copy_([4, 5, 6]);
    expect(Array.from(y.toFloat32Array())).toEqual([4, 5, 6]);
    expect(() => y.copy_(new Map() as never)).toThrow('copy_: src must be a Tensor, a typed array or an array of numbers, got Map');
    expect(() => y.copy_(['a', 1, 2] as never)).toThrow('copy_: src[0] must be a number, got string');
    for (const t of [x, h, y]) t.dispose();
    bn.dispose();
  });
});
