// The benchmark programs on tiny settings (ResNet-20, batch 2, 8x8 inputs, one repeat): the
// JSON's shape, the profile's families summing to the profiled step, peak memory, and the
// PyTorch side (skipped cleanly without torch; run when a python with torch is found).
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { benchAct } from '../lib/bench/act';
import { pairedRatio } from '../lib/stats';
import { benchStep, isStepError, StepError, stepRowLine, StepRow, stepTable, TorchPeer } from '../lib/bench/step';
import { findTorchPython, noTorchReason } from '../lib/bench/common';
import { benchProfile, startNativeProfiler, stopNativeProfiler } from '../lib/bench/profile';
import { native, rawNative } from '../lib/native';
import { memory, resetPeakMemory } from '../lib/tensor';
import { getAllowTF32, ones, zeros } from '../lib';
import { thrown } from './helpers/errors';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'adashift-bench-'));
const TINY = { models: ['resnet20'], inputSize: 8, batch: 2, repeats: 1, warmup: 0, device: 'cpu' };

// A "python" that cannot import torch.
const noTorch = path.join(tmp, 'python-without-torch');
fs.writeFileSync(noTorch, '#!/bin/sh\nexit 1\n', { mode: 0o755 });

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function cpu() {
  return memory().devices.find((d) => d.device === 'cpu')!;
}

/** The rows of a section, none of them an error. */
function ok(rows: (StepRow | StepError)[] | { skipped: string } | undefined): StepRow[] {
  expect(Array.isArray(rows)).toBe(true);
  const list = rows as (StepRow | StepError)[];
  expect(list.filter(isStepError)).toEqual([]);
  return list as StepRow[];
}

function checkRow(r: StepRow, act: string, batch: number) {
  expect(r.act).toBe(act);
  expect(r.model).toBe('resnet20');
  expect(r.batch).toBe(batch);
  expect(r.input).toEqual([1, 8, 8]);
  expect(r.msAll).toHaveLength(1);
  expect(r.ms).toBeGreaterThan(0);
  expect(r.imagesPerSec).toBeCloseTo(batch / (r.ms / 1e3), 6);
  expect(r.params).toBeGreaterThan(200000);
  // a step holds the batch's activations and gradients on top of the parameters and state
  expect(r.peakBytes).toBeGreaterThan(r.baseBytes);
  expect(r.baseBytes).toBeGreaterThanOrEqual(4 * r.params);
}

describe('peak memory counter', () => {
  test('resetPeakMemory restarts the peak at the live bytes; allocations raise it', () => {
    resetPeakMemory('cpu');
    const base = cpu();
    expect(base.peakBytes).toBe(base.bytes);
    const a = zeros([1000], { device: 'cpu' });
    const b = ones([500], { device: 'cpu' });
    a.dispose();
    const after = cpu();
    expect(after.peakBytes).toBe(base.bytes + 6000);
    expect(after.bytes).toBe(base.bytes + 2000);
    b.dispose();
    resetPeakMemory('cpu');
    expect(cpu().peakBytes).toBe(cpu().bytes);
  });
});

describe('bench step', () => {
  test('JSON shape, all sections, PyTorch skipped when ADASHIFT_PYTHON has no torch', async () => {
    const saved = process.env.ADASHIFT_PYTHON;
    process.env.ADASHIFT_PYTHON = noTorch;
    const before = memory().tensors;
    const threadsBefore = native.getNumThreads();
    let r;
    try {
      expect(findTorchPython()).toBeUndefined();
      const seen: string[] = [];
      r = await benchStep({ ...TINY, acts: ['relu', 'adashift-b'], batchSizes: [2, 4], outDir: tmp, onResult: (s, row) => seen.push(`${s}:${row.act}`) });
      expect(seen.slice(0, 2)).toEqual(['step:relu', 'step:adashift-b']);
    } finally {
      if (saved === undefined) delete process.env.ADASHIFT_PYTHON;
      else process.env.ADASHIFT_PYTHON = saved;
    }
    expect(memory().tensors).toBe(before);
    expect(native.getNumThreads()).toBe(threadsBefore);
    expect(r.benchmark).toBe('step');
    expect(r.torchPython).toBeNull();
    expect(r.torchVersion).toBeNull();
    for (const k of ['date', 'commit', 'cpu', 'threads', 'device']) expect(r).toHaveProperty(k);
    expect(r.device).toBe('cpu');
    expect(r.optimizer).toMatchObject({ kind: 'sgd', momentum: 0.9, weightDecay: 5e-4 });
    const step = ok(r.sections.step);
    expect(step.map((x) => x.act)).toEqual(['relu', 'adashift-b']);
    for (const row of step) {
      checkRow(row, row.act, 2);
      expect(row.torch).toBeUndefined();
      expect(row.speedupVsTorch).toBeUndefined();
    }
    const threads = ok(r.sections.threads);
    expect(threads.map((x) => x.act)).toEqual(os.cpus().length > 1 ? ['relu', 'relu', 'adashift-b', 'adashift-b'] : ['relu', 'adashift-b']);
    expect(threads[0].threads).toBe(1);
    for (const row of threads) checkRow(row, row.act, 64);
    const batch = ok(r.sections.batch);
    expect(batch.map((x) => x.batch)).toEqual([2, 4]);
    for (const row of batch) checkRow(row, 'adashift-b', row.batch);
    // the file holds the same report
    expect(r.file).toMatch(/step-cpu-.*\.json$/);
    const onDisk = JSON.parse(fs.readFileSync(r.file!, 'utf8'));
    expect(onDisk.sections.step).toHaveLength(2);
    expect(onDisk.sections.batch[1].batch).toBe(4);
  });

  test('sections are selectable', async () => {
    const r = await benchStep({ ...TINY, acts: ['silu'], sections: ['step'], torch: false, outDir: null });
    expect(Object.keys(r.sections)).toEqual(['step']);
    expect(r.file).toBeUndefined();
    checkRow(ok(r.sections.step)[0], 'silu', 2);
  });

  test('tf32 (step and profile): set for the run and restored after it; a CPU report has no TF32 mode; a non-boolean is refused', async () => {
    const r = await benchStep({ ...TINY, acts: ['relu'], sections: ['step'], torch: false, tf32: true, outDir: null });
    expect(getAllowTF32()).toBe(false);
    expect(r.allowTF32).toBeUndefined(); // the CPU computes in float32 whatever the setting
    await expect(benchStep({ ...TINY, torch: false, tf32: 1 as unknown as boolean, outDir: null })).rejects.toThrow(/benchStep: tf32 must be a boolean/);
    const p = benchProfile({ model: 'resnet20', batch: 2, inputSize: 8, device: 'cpu', repeats: 1, warmup: 0, tf32: true, outDir: null });
    expect(getAllowTF32()).toBe(false);
    expect(p.allowTF32).toBeUndefined();
    expect(() => benchProfile({ device: 'cpu', tf32: 'yes' as unknown as boolean, outDir: null })).toThrow(/benchProfile: tf32 must be a boolean/);
  });

  test('the optimizer is selectable: AdamW and LAMB steps, recorded in the report', async () => {
    const before = memory().tensors;
    for (const opt of ['adamw', 'lamb'] as const) {
      const r = await benchStep({ ...TINY, acts: ['adashift-b'], sections: ['step'], torch: false, opt, outDir: null });
      expect(r.optimizer.kind).toBe(opt);
      checkRow(ok(r.sections.step)[0], 'adashift-b', 2);
    }
    expect(memory().tensors).toBe(before);
  });

  test("without a PyTorch peer the activations run round robin: each step against ReLU's of the same round", async () => {
    const before = memory().tensors;
    const lines: string[] = [];
    const r = await benchStep({ ...TINY, repeats: 3, warmup: 1, acts: ['relu', 'adashift-b'], sections: ['step'], torch: false, outDir: null, onResult: (s, row) => lines.push(stepRowLine(s, row)) });
    expect(memory().tensors).toBe(before); // every model of the round robin disposed
    const [relu, b] = ok(r.sections.step);
    expect([relu.act, b.act]).toEqual(['relu', 'adashift-b']);
    expect(relu.msAll).toHaveLength(3);
    expect(b.msAll).toHaveLength(3);
    // round i of AdaShift-B over round i of ReLU, three rounds: the middle ratio, quartiles
    // halfway to each neighbour
    const ratios = b.msAll.map((v, i) => v / relu.msAll[i]).sort((x, y) => x - y);
    expect(b.vsReluPaired!.median).toBeCloseTo(ratios[1], 9);
    expect(b.vsReluPaired!.q1).toBeCloseTo((ratios[0] + ratios[1]) / 2, 9);
    expect(b.vsReluPaired!.q3).toBeCloseTo((ratios[1] + ratios[2]) / 2, 9);
    expect(lines[1]).toMatch(/adashift-b .* ms\/step, .* x\d+\.\d\d ReLU's step \(IQR \d+\.\d\d-\d+\.\d\d\)/);
    // the table says why there is no PyTorch column: asked for, not missing
    expect(r.torchSkipped).toBe(true);
    expect(stepTable(r)).toMatch(/no PyTorch side \(--no-torch\)/);
    expect(stepTable(r)).not.toMatch(/PyTorch not found/);
    // one activation alone (timed on its own, the other path): nothing to pair, and the memory
    // figures of the round robin, where the other model (2 MB here) was resident too: both paths
    // count the model's own tensors plus what its step adds, so tensors left alive elsewhere in
    // the process do not enter (the peak's margin is for garbage another test file left in this
    // worker, released while a step runs)
    const one = await benchStep({ ...TINY, repeats: 3, warmup: 1, acts: ['adashift-b'], sections: ['step'], torch: false, outDir: null });
    const alone = ok(one.sections.step)[0];
    expect(alone.vsReluPaired).toBeUndefined();
    expect(alone.baseBytes).toBe(b.baseBytes);
    expect(Math.abs(b.peakBytes - alone.peakBytes)).toBeLessThan(1024);
    expect(b.peakBytes).toBeGreaterThan(b.baseBytes);
  });

  test('bad options fail before measuring: an unknown model or optimizer, --graph without CUDA', async () => {
    await expect(benchStep({ ...TINY, models: ['resnet7'], torch: false, outDir: null })).rejects.toThrow(/unknown benchmark model 'resnet7'/);
    await expect(benchStep({ ...TINY, opt: 'adam' as 'adamw', torch: false, outDir: null })).rejects.toThrow(/unknown benchmark optimizer 'adam'; expected one of sgd, adamw, lamb/);
    // --graph times CUDA graph replays: refused on the CPU before anything (the PyTorch peer too) starts
    await expect(benchStep({ ...TINY, graph: true, outDir: null })).rejects.toMatchObject({
      code: 'ERR_CUDA_GRAPH',
      message: expect.stringMatching(/needs a CUDA device; the device is 'cpu'/),
    });
  });

  const torchPython = findTorchPython();
  (torchPython ? test : test.skip)('with PyTorch: alternating steps, ratio reported', async () => {
    const r = await benchStep({ ...TINY, repeats: 3, acts: ['adashift-ma'], sections: ['step'], python: torchPython, outDir: null });
    expect(r.torchVersion).toMatch(/\d+\.\d+/);
    expect(r.torchCudnnBenchmark).toBe(false);
    const row = ok(r.sections.step)[0];
    expect(row.torch).toBeDefined();
    expect('error' in row.torch! ? row.torch.error : null).toBeNull();
    const t = row.torch as { ms: number; msAll: number[]; imagesPerSec: number; peakBytes: number | null };
    expect(t.msAll).toHaveLength(3);
    expect(t.ms).toBeGreaterThan(0);
    expect(t.peakBytes).toBeNull(); // CPU
    expect(row.speedupVsTorch).toBeCloseTo(t.ms / row.ms, 6);
    // step i of PyTorch over step i of ours, three of them: the middle one, and the quartiles
    // halfway to each neighbour
    const ratios = t.msAll.map((v, i) => v / row.msAll[i]).sort((a, b) => a - b);
    expect(row.speedupVsTorchPaired!.median).toBeCloseTo(ratios[1], 9);
    expect(row.speedupVsTorchPaired!.q1).toBeCloseTo((ratios[0] + ratios[1]) / 2, 9);
    expect(row.speedupVsTorchPaired!.q3).toBeCloseTo((ratios[1] + ratios[2]) / 2, 9);
  });

  (torchPython ? test : test.skip)('with PyTorch: AdamW on both sides; LAMB has no peer (its rows say why)', async () => {
    const a = await benchStep({ ...TINY, acts: ['relu'], sections: ['step'], python: torchPython, opt: 'adamw', outDir: null });
    const ra = ok(a.sections.step)[0];
    expect(ra.torch && 'ms' in ra.torch).toBe(true);
    const l = await benchStep({ ...TINY, acts: ['relu'], sections: ['step'], python: torchPython, opt: 'lamb', outDir: null });
    const rl = ok(l.sections.step)[0];
    expect(rl.torch && 'error' in rl.torch ? rl.torch.error : '').toMatch(/has no LAMB optimizer \(timm's LAMB is not part of torch\)/);
    expect(rl.ms).toBeGreaterThan(0);
  });
});

describe('bench step --profile', () => {
  test('families sum to the profiled step; the binding is the raw one again afterwards', () => {
    const before = memory().tensors;
    const r = benchProfile({ model: 'resnet20', act: 'adashift-b', batch: 2, inputSize: 8, device: 'cpu', repeats: 2, warmup: 1, outDir: tmp });
    expect(native).toBe(rawNative);
    expect(memory().tensors).toBe(before);
    expect(r.benchmark).toBe('step-profile');
    expect(r.stepMs).toBeGreaterThan(0);
    const fams = r.rows.map((x) => x.family);
    for (const f of ['conv', 'batchnorm', 'activation', 'pooling', 'linear', 'loss', 'optimizer', 'overhead', 'profiler']) expect(fams).toContain(f);
    const native_ = r.rows.filter((x) => x.family !== 'overhead' && x.family !== 'profiler').reduce((a, x) => a + x.ms, 0);
    expect(native_).toBeCloseTo(r.nativeMs, 9);
    expect(r.nativeMs).toBeLessThanOrEqual(r.profiledStepMs);
    const total = r.rows.reduce((a, x) => a + x.ms, 0);
    expect(total).toBeLessThanOrEqual(r.profiledStepMs * (1 + 1e-9));
    expect(total).toBeGreaterThan(r.profiledStepMs * 0.999);
    // sorted by time, percentages of the step
    for (let i = 1; i < r.rows.length; i++) expect(r.rows[i - 1].ms).toBeGreaterThanOrEqual(r.rows[i].ms);
    expect(r.rows.reduce((a, x) => a + x.percent, 0)).toBeCloseTo(100, 3);
    // the calls land where they belong: convs, the optimizer's one update per parameter
    expect(r.rows.find((x) => x.family === 'conv')!.calls).toBeGreaterThanOrEqual(2 * 21);
    expect(r.functions.find((f) => f.name === 'sgdStep')!.calls).toBeGreaterThan(50);
    // AdaShift-B's context networks run natively inside the fused BatchNorm ops
    const ctx = r.functions.find((f) => f.name === 'adashiftBContextForward');
    expect(ctx?.calls).toBeGreaterThanOrEqual(19);
    expect(r.rows.find((x) => x.family === 'activation')!.calls).toBeGreaterThanOrEqual(2 * 19);
    expect(JSON.parse(fs.readFileSync(r.file!, 'utf8')).rows).toHaveLength(r.rows.length);
  });

  test('the profiling layer is zero-cost when off and can be started only once', () => {
    expect(native).toBe(rawNative);
    const p = startNativeProfiler('cpu');
    try {
      expect(native).not.toBe(rawNative);
      expect(() => startNativeProfiler('cpu')).toThrow(/already running/);
      native.full([4], 1, 'cpu').dispose();
      expect(p.families.get('memory')).toEqual({ ms: expect.any(Number), calls: 1 });
    } finally {
      stopNativeProfiler();
    }
    expect(native).toBe(rawNative);
  });
});

describe('bench act', () => {
  test('rows, derived rates and ratios, and the JSON file', () => {
    const before = memory().tensors;
    const seen: string[] = [];
    const shapes = [[2, 3, 5, 7], [1, 4, 9, 9]];
    const r = benchAct({ shapes, acts: ['relu', 'silu', 'adashift-b', 'adashift-ma'], device: 'cpu', repeats: 3, warmup: 1, torch: false, outDir: tmp, onResult: (row) => seen.push(`${row.act}@${row.shape.join('x')}`) });
    expect(memory().tensors).toBe(before);
    expect(seen).toEqual(['relu@2x3x5x7', 'silu@2x3x5x7', 'adashift-b@2x3x5x7', 'adashift-ma@2x3x5x7', 'relu@1x4x9x9', 'silu@1x4x9x9', 'adashift-b@1x4x9x9', 'adashift-ma@1x4x9x9']);
    expect(r.benchmark).toBe('act');
    expect(r.torchPython).toBeNull();
    for (const k of ['date', 'commit', 'version', 'cpu', 'threads', 'device']) expect(r).toHaveProperty(k);
    expect(r.copyBandwidth.map((c) => c.shape)).toEqual(shapes);
    for (const row of r.results) {
      const n = row.shape.reduce((a, b) => a * b, 1);
      expect(row.forwardMs).toBeGreaterThan(0);
      expect(row.backwardMs).toBeGreaterThan(0);
      expect(row.totalMs).toBeCloseTo(row.forwardMs + row.backwardMs, 9);
      expect(row.bytesPerElement).toBe(row.act.startsWith('adashift') ? 32 : 20);
      expect(row.melemPerSec).toBeCloseTo(n / (row.totalMs / 1e3) / 1e6, 6);
      expect(row.gbPerSec).toBeCloseTo((n * row.bytesPerElement) / (row.totalMs / 1e3) / 1e9, 6);
      const copy = r.copyBandwidth.find((c) => c.shape === row.shape)!;
      expect(row.fractionOfCopy).toBeCloseTo(row.gbPerSec / copy.gbPerSec, 9);
      const silu = r.results.find((x) => x.act === 'silu' && x.shape === row.shape)!;
      expect(row.vsSilu).toBeCloseTo(silu.totalMs / row.totalMs, 9);
      const p = row.vsSiluPaired!;
      expect(p.q1).toBeLessThanOrEqual(p.median);
      expect(p.median).toBeLessThanOrEqual(p.q3);
      expect(p.q1).toBeGreaterThan(0);
      expect(row.torch).toBeUndefined();
    }
    expect(r.results.filter((x) => x.act === 'silu').every((x) => x.vsSilu === 1)).toBe(true);
    const onDisk = JSON.parse(fs.readFileSync(r.file!, 'utf8'));
    expect(onDisk.results).toHaveLength(8);
    expect(onDisk.results[2].vsSilu).toBeCloseTo(r.results[2].vsSilu!, 12);
  });

  // a folder under /proc cannot be made (Linux)
  (fs.existsSync('/proc/self') ? test : test.skip)('an output folder that cannot be made fails before anything is timed', async () => {
    const t0 = Date.now();
    expect(() => benchAct({ shapes: [[64, 64, 28, 28]], acts: ['adashift-ma'], repeats: 50, torch: false, device: 'cpu', outDir: '/proc/adashift-no-such' })).toThrow(expect.objectContaining({ code: 'ERR_IO' }));
    await expect(benchStep({ models: ['resnet20'], acts: ['relu'], sections: ['step'], repeats: 50, torch: false, device: 'cpu', outDir: '/proc/adashift-no-such' })).rejects.toMatchObject({ code: 'ERR_IO' });
    expect(() => benchProfile({ model: 'resnet20', act: 'relu', repeats: 50, device: 'cpu', outDir: '/proc/adashift-no-such' })).toThrow(expect.objectContaining({ code: 'ERR_IO' }));
    expect(Date.now() - t0).toBeLessThan(5000); // 50 repeats of each would take far longer
  });

  test('bad options fail before anything is timed', () => {
    for (const [o, message] of [
      [{ repeats: 0 }, /^benchAct: repeats must be an integer >= 1, got 0/],
      [{ warmup: -1 }, /^benchAct: warmup must be an integer >= 0, got -1/],
      [{ shapes: [[1, 4, 4]] }, /^benchAct: shapes must be a non-empty array of \[N, C, H, W\] with positive integers, got \[\[1,4,4\]\]/],
      [{ shapes: '1,4,4,4' }, /^benchAct: shapes must be/],
      [{ acts: ['swish'] }, /^benchAct: acts must be a non-empty array of relu, gelu/],
    ] as const) {
      expect(() => benchAct({ ...(o as object), torch: false, device: 'cpu' })).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: expect.stringMatching(message) }));
    }
  });

  test('without SiLU among the activations there is no SiLU ratio', () => {
    const r = benchAct({ shapes: [[1, 2, 3, 3]], acts: ['relu'], device: 'cpu', repeats: 1, warmup: 0, torch: false, outDir: null });
    expect(r.file).toBeUndefined();
    expect(r.results[0].vsSilu).toBeUndefined();
    expect(r.results[0].vsSiluPaired).toBeUndefined();
  });

  test('the paired ratio: per-round ratios, median and quartiles between order statistics', () => {
    // ratios 2, 2, 3, 4 (rounds out of order): median at 1.5 -> 2.5, q1 at 0.75 -> 2, q3 at 2.25 -> 3.25
    expect(pairedRatio([8, 2, 6, 4], [2, 1, 2, 2])).toEqual({ median: 2.5, q1: 2, q3: 3.25 });
    expect(pairedRatio([3], [2])).toEqual({ median: 1.5, q1: 1.5, q3: 1.5 });
    // round i against round i: 1/10, 10/1 and 4/4 give 0.1, 1, 10 (pairing sorted series would give 1, 1, 1)
    expect(pairedRatio([1, 10, 4], [10, 1, 4])).toEqual({ median: 1, q1: 0.55, q3: 5.5 });
    expect(() => pairedRatio([], [])).toThrow(/non-empty/);
    expect(() => pairedRatio([1, 2], [1])).toThrow(/equally long/);
  });
});

describe('benchmark plumbing', () => {
  test('a PyTorch peer that hangs is stopped after the request timeout, and every later request says why', async () => {
    // answers the hello line, then never again
    const hanging = path.join(tmp, 'python-hanging-peer');
    fs.writeFileSync(hanging, `#!${process.execPath}\nprocess.stdout.write(JSON.stringify({ ok: true, torch: 'fake' }) + '\\n');\nsetInterval(() => {}, 1000);\n`, { mode: 0o755 });
    const peer = await TorchPeer.start(hanging);
    const t0 = Date.now();
    const r = await peer.request({ cmd: 'step' }, 300);
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(r).toMatchObject({ ok: false, error: expect.stringMatching(/^the PyTorch peer did not answer 'step' within 0\.3 s and was stopped/) });
    expect(peer.gone).toMatch(/did not answer 'step'/);
    expect(await peer.request({ cmd: 'threads' })).toMatchObject({ ok: false, error: expect.stringMatching(/did not answer 'step'/) });
    await peer.close();
  });

  test('a result folder that exists but cannot be written fails before anything is measured', () => {
    // /proc: no file can be made there, not even by root
    const e = thrown(() => benchAct({ shapes: [[1, 2, 3, 3]], acts: ['relu'], device: 'cpu', repeats: 1, warmup: 0, torch: false, outDir: '/proc' }), 'ERR_IO');
    expect(e.message).toMatch(/^\/proc: the result folder cannot be written to \(\w+\); give another with --out$/);
  });

  test('ADASHIFT_PYTHON is the only python tried when set: one without torch means no PyTorch side, and the line says so', () => {
    const saved = process.env.ADASHIFT_PYTHON;
    process.env.ADASHIFT_PYTHON = noTorch;
    try {
      expect(findTorchPython()).toBeUndefined();
      expect(noTorchReason()).toBe(`ADASHIFT_PYTHON=${noTorch} cannot import torch`);
    } finally {
      if (saved === undefined) delete process.env.ADASHIFT_PYTHON;
      else process.env.ADASHIFT_PYTHON = saved;
    }
  });
});

describe('bench act with a failing PyTorch peer', () => {
  test('each row records the peer\'s error and keeps its own numbers; the run completes', () => {
    // imports torch (passes the check) but fails every benchmark script
    const failing = path.join(tmp, 'python-failing-peer');
    fs.writeFileSync(failing, '#!/bin/sh\n[ "$1" = "-c" ] && exit 0\nexit 3\n', { mode: 0o755 });
    const saved = process.env.ADASHIFT_PYTHON;
    process.env.ADASHIFT_PYTHON = failing;
    try {
      const r = benchAct({ shapes: [[1, 2, 3, 3]], acts: ['relu', 'silu'], device: 'cpu', repeats: 1, warmup: 0, torch: true, outDir: null });
      expect(r.torchPython).toBe(failing);
      expect(r.results.map((row) => [row.act, row.torch, row.torchError])).toEqual([
        ['relu', undefined, 'torch_act.py failed (exit code 3)'],
        ['silu', undefined, 'torch_act.py failed (exit code 3)'],
      ]);
      expect(r.results.every((row) => row.totalMs > 0)).toBe(true);
    } finally {
      if (saved === undefined) delete process.env.ADASHIFT_PYTHON;
      else process.env.ADASHIFT_PYTHON = saved;
    }
  });
});

describe('PyTorch peer scripts', () => {
  const benchDir = path.resolve(__dirname, '..', 'bench');

  test('the npm package ships every script the benchmarks run', () => {
    // package.json "files": an installed package must find bench/torch_act.py and torch_step.py
    const pkg = JSON.parse(fs.readFileSync(path.resolve(__dirname, '..', 'package.json'), 'utf8')) as { files: string[] };
    const globs = pkg.files.map((f) => new RegExp(`^${f.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*')}(/.*)?$`));
    const scripts = fs.readdirSync(benchDir).filter((f) => f.endsWith('.py')).map((f) => `bench/${f}`);
    expect(scripts).toEqual(expect.arrayContaining(['bench/torch_act.py', 'bench/torch_step.py', 'bench/peer_lifetime.py']));
    for (const f of scripts) expect(globs.some((g) => g.test(f))).toBe(true);
  });

  // AdaShift-MA's peer at sizes the grid (7) does not divide -- 8x8, 9x14, and 3x5 (fewer rows and
  // columns than the grid) -- as at even ones: uneven cells by ADASHIFT.md's rule, no traceback
  // (it broke on anything but H % 7 == W % 7 == 0). Its values were checked against the package
  // apart from this test; here the peer must run and report its times.
  const actPeer = findTorchPython();
  (actPeer ? test : test.skip)('torch_act.py runs AdaShift-MA at sizes the grid does not divide', () => {
    const saved = process.env.ADASHIFT_PYTHON;
    process.env.ADASHIFT_PYTHON = actPeer;
    try {
      const shapes = [[2, 16, 8, 8], [1, 8, 9, 14], [1, 4, 3, 5], [1, 4, 14, 14]];
      const r = benchAct({ shapes, acts: ['adashift-ma'], device: 'cpu', repeats: 1, warmup: 0, torch: true, outDir: null });
      expect(r.torchPython).toBe(actPeer);
      for (const row of r.results) {
        expect([row.shape, row.torchError]).toEqual([row.shape, undefined]);
        expect(row.torch!.forwardMs).toBeGreaterThan(0);
        expect(row.torch!.backwardMs).toBeGreaterThan(0);
      }
    } finally {
      if (saved === undefined) delete process.env.ADASHIFT_PYTHON;
      else process.env.ADASHIFT_PYTHON = saved;
    }
  });

  const python = ['/usr/bin/python3', 'python3'].find((p) => spawnSync(p, ['-c', 'pass']).status === 0);
  (python && process.platform === 'linux' ? test : test.skip)('a peer exits when the Node process that started it is killed', async () => {
    // A parent that starts a peer (the real lifetime helper, then a long sleep) and prints its pid.
    const peer = `import sys, time; sys.path.insert(0, ${JSON.stringify(benchDir)}); from peer_lifetime import die_with_parent; die_with_parent(); print('up', flush=True); time.sleep(120)`;
    const parentJs = `const c = require('child_process').spawn(${JSON.stringify(python)}, ['-c', ${JSON.stringify(peer)}], { stdio: ['ignore', 'pipe', 'inherit'] });
      c.stdout.once('data', () => console.log(c.pid)); setInterval(() => {}, 1000);`;
    const parent = spawn(process.execPath, ['-e', parentJs], { stdio: ['ignore', 'pipe', 'inherit'] });
    const pid = await new Promise<number>((resolve) => parent.stdout!.once('data', (d) => resolve(Number(String(d).trim()))));
    const alive = (p: number) => {
      try {
        process.kill(p, 0);
        return !/^State:\s+Z/m.test(fs.readFileSync(`/proc/${p}/status`, 'utf8'));
      } catch {
        return false;
      }
    };
    expect(alive(pid)).toBe(true);
    parent.kill('SIGKILL'); // no chance for the parent to clean up
    const deadline = Date.now() + 5000;
    while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(alive(pid)).toBe(false);
  });
});
