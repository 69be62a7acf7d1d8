// Training, evaluation and comparison end to end on a small synthetic dataset written in the
// real IDX format: metrics and checkpoints, exact resume (at an epoch boundary and mid-epoch),
// evaluation of a checkpoint, the CLI's argument errors and Ctrl-C, and compare's report.
import { execFileSync, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import { encodeIdx } from '../lib/data/idx';
import { EpochMetrics, evaluateCheckpoint, train, TrainOptions } from '../lib/train/train';
import { armLabel, compare, markdownTable, parseArm } from '../lib/train/compare';
import { loadCheckpoint, disposeCheckpoint, saveCheckpoint } from '../lib/train/checkpoint';
import { backendInfo, memory } from '../lib';
import { gitCommit } from '../lib/provenance';
import { ensureDist, ROOT } from './helpers/dist';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'adashift-train-'));
const dataDir = path.join(tmp, 'data');

// Class k: a bright square at one of 10 positions of a 12x12 image, plus noise.
function writeDataset(dir: string, train: number, test: number, size = 12): void {
  fs.mkdirSync(dir, { recursive: true });
  let state = 12345;
  const rnd = () => ((state = (state * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const make = (count: number) => {
    const images = new Uint8Array(count * size * size);
    const labels = new Uint8Array(count);
    for (let i = 0; i < count; i++) {
      const k = i % 10;
      labels[i] = k;
      const r0 = 1 + Math.floor(k / 5) * 5, c0 = 1 + (k % 5) * 2;
      for (let p = 0; p < size * size; p++) images[i * size * size + p] = Math.floor(rnd() * 60);
      for (let r = r0; r < r0 + 4; r++) for (let c = c0; c < c0 + 2; c++) images[i * size * size + r * size + c] = 200 + Math.floor(rnd() * 55);
    }
    return { images, labels };
  };
  const tr = make(train), te = make(test);
  fs.writeFileSync(path.join(dir, 'train-images-idx3-ubyte.gz'), zlib.gzipSync(encodeIdx([train, size, size], tr.images)));
  fs.writeFileSync(path.join(dir, 'train-labels-idx1-ubyte.gz'), zlib.gzipSync(encodeIdx([train], tr.labels)));
  fs.writeFileSync(path.join(dir, 't10k-images-idx3-ubyte'), encodeIdx([test, size, size], te.images));
  fs.writeFileSync(path.join(dir, 't10k-labels-idx1-ubyte'), encodeIdx([test], te.labels));
}

beforeAll(() => writeDataset(dataDir, 200, 60));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

// No flips: they would move a class's square onto another class's position.
const base: TrainOptions = { model: 'resnet20', dataset: 'fashion-mnist', dataDir, batch: 32, lr: 0.05, epochs: 2, warmup: 0.5, device: 'cpu', seed: 3, augment: false };

/**
 * Live tensors plus those the garbage collector has freed for their owners: constant while a
 * run frees what it makes, whichever tensors an earlier test file in this worker left for the
 * collector (train() yields to the event loop every batch, where finalizers run).
 */
function accounted(): number {
  const m = memory();
  return m.tensors + m.leaked;
}

function checkpointBytes(file: string): Buffer {
  return fs.readFileSync(file);
}

function modelTensors(file: string): Record<string, Float32Array> {
  const c = loadCheckpoint(file, 'cpu');
  const out: Record<string, Float32Array> = {};
  for (const [k, v] of Object.entries(c.model)) if ('toFloat32Array' in v) out[k] = v.toFloat32Array();
  for (const [i, bufs] of Object.entries(c.optimizerBuffers)) for (const [b, t] of Object.entries(bufs)) out[`optim.${i}.${b}`] = t.toFloat32Array();
  disposeCheckpoint(c);
  return out;
}

describe('train', () => {
  test('writes per-epoch metrics, config and a checkpoint, and learns the task', async () => {
    const out = path.join(tmp, 'basic');
    const before = accounted();
    const epochs: number[] = [];
    const r = await train({ ...base, act: 'adashift-b', epochs: 3, out }, { onEpoch: (m) => epochs.push(m.epoch) });
    expect(epochs).toEqual([1, 2, 3]);
    expect(r.interrupted).toBe(false);
    const lines = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines).toHaveLength(3);
    for (const [i, m] of lines.entries()) {
      expect(m.epoch).toBe(i + 1);
      for (const k of ['trainLoss', 'trainAcc', 'testLoss', 'testAcc', 'lr', 'imagesPerSec', 'seconds', 'peakBytes']) expect(Number.isFinite(m[k])).toBe(true);
      // the peak holds at least the weights, their gradients and SGD's momentum (4 bytes each)
      expect(m.peakBytes).toBeGreaterThanOrEqual(3 * 4 * r.params);
    }
    expect(lines[2].trainLoss).toBeLessThan(lines[0].trainLoss);
    expect(lines[2].testAcc).toBeGreaterThan(0.5); // 10 classes: chance is 0.1
    const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    expect(config.act).toBe('adashift-b');
    // where the run came from: this checkout's commit, the package version, the device
    // (a copy without .git, as on a machine the tree was copied to, reports 'unknown')
    const git = spawnSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: ROOT });
    const head = git.status === 0 ? git.stdout.toString().trim() : null;
    expect(config.provenance.commit).toMatch(head ? new RegExp(`^${head}(-dirty)?$`) : /^unknown$/);
    expect(config.provenance.version).toBe(JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version);
    expect(config.provenance.device).toBe('cpu');
    expect(Number.isNaN(Date.parse(config.provenance.date))).toBe(false);
    const ck = loadCheckpoint(path.join(out, 'checkpoint.safetensors'));
    expect(ck.meta.epoch).toBe(3);
    expect(ck.meta.batch).toBe(0);
    expect(Object.keys(ck.model)).toContain('layer1.0.act1.norm.weight');
    expect(Object.keys(ck.optimizerBuffers).length).toBeGreaterThan(0);
    disposeCheckpoint(ck);
    expect(accounted()).toBe(before); // the run frees what it made
    const ev = evaluateCheckpoint(path.join(out, 'checkpoint.safetensors'), { dataDir, device: 'cpu' });
    expect(ev.acc).toBeCloseTo(lines[2].testAcc, 10);
    expect(ev.loss).toBeCloseTo(lines[2].testLoss, 5);
  });

  test('2 epochs straight equal 1 epoch + resume + 1 epoch, bit for bit', async () => {
    const straight = path.join(tmp, 'straight');
    const split = path.join(tmp, 'split');
    await train({ ...base, act: 'adashift-b', out: straight });
    await train({ ...base, act: 'adashift-b', epochs: 2, out: split, maxBatches: 7 }); // 7 batches = one epoch of 200/32
    const mid = loadCheckpoint(path.join(split, 'checkpoint.safetensors'));
    expect([mid.meta.epoch, mid.meta.batch]).toEqual([1, 0]);
    disposeCheckpoint(mid);
    await train({ ...base, act: 'adashift-b', out: split, resume: true });
    expect(modelTensors(path.join(split, 'checkpoint.safetensors'))).toEqual(modelTensors(path.join(straight, 'checkpoint.safetensors')));
    const a = fs.readFileSync(path.join(straight, 'metrics.jsonl'), 'utf8').split('\n').map((l) => (l ? JSON.parse(l) : null));
    const b = fs.readFileSync(path.join(split, 'metrics.jsonl'), 'utf8').split('\n').map((l) => (l ? JSON.parse(l) : null));
    const strip = (m: Record<string, number> | null) => m && { ...m, imagesPerSec: 0, seconds: 0, peakBytes: 0 };
    expect(b.map(strip)).toEqual(a.map(strip));
  });

  test('a run stopped mid-epoch resumes to the same result (Ctrl-C path)', async () => {
    const straight = path.join(tmp, 'straight-ma');
    const split = path.join(tmp, 'split-ma');
    await train({ ...base, act: 'relu', out: straight });
    let n = 0;
    const r = await train({ ...base, act: 'relu', out: split }, { shouldStop: () => ++n === 3 });
    expect(r.interrupted).toBe(true);
    const mid = loadCheckpoint(path.join(split, 'checkpoint.safetensors'));
    expect([mid.meta.epoch, mid.meta.batch]).toEqual([0, 3]);
    disposeCheckpoint(mid);
    expect(fs.existsSync(path.join(split, 'metrics.jsonl'))).toBe(false);
    await train({ ...base, act: 'relu', out: split, resume: true });
    expect(modelTensors(path.join(split, 'checkpoint.safetensors'))).toEqual(modelTensors(path.join(straight, 'checkpoint.safetensors')));
  });

  test('a resumed run refuses settings that differ from its own, and takes the same ones', async () => {
    const out = path.join(tmp, 'resume-settings');
    const r = await train({ ...base, act: 'relu', out }, { shouldStop: () => true });
    expect(r.interrupted).toBe(true);
    const ckpt = path.join(out, 'checkpoint.safetensors');
    const bytes = fs.readFileSync(ckpt);
    const before = accounted();
    await expect(train({ ...base, act: 'silu', out, resume: true })).rejects.toMatchObject({
      code: 'ERR_ARG',
      message: expect.stringMatching(/a resumed run keeps its settings, and act "silu" \(the run's: "relu"\) differs/),
    });
    await expect(train({ out, resume: true, lr: 0.5, batch: 7 })).rejects.toMatchObject({
      code: 'ERR_ARG',
      message: expect.stringMatching(/lr 0\.5 \(the run's: [0-9.e-]+\), batch 7 \(the run's: \d+\) differ: leave them out/),
    });
    // an error after the checkpoint is loaded (its data folder is gone) frees it too
    await expect(train({ out, resume: true, dataDir: path.join(tmp, 'no-data-here') })).rejects.toMatchObject({ code: 'ERR_IO' });
    expect(accounted()).toBe(before); // the loaded checkpoint is freed
    expect(fs.readFileSync(ckpt).equals(bytes)).toBe(true);
    // a setting in the checkpoint that this version does not know is not the caller's mistake
    const ck = loadCheckpoint(ckpt);
    (ck.meta.config as Record<string, unknown>).settingOfAnotherVersion = 1;
    saveCheckpoint(ckpt, ck);
    disposeCheckpoint(ck);
    // the run's own values, epochs and the device may be given
    const done = await train({ ...base, act: 'relu', out, resume: true, device: 'cpu' });
    expect(done.history.length).toBe(base.epochs);
  });

  test("the activation's options: recorded with the run, used by eval and resume; keepContext may change on resume", async () => {
    const o: TrainOptions = { ...base, act: 'adashift-ma', actOptions: { grid: 4, headDim: 8, rect: 'norm' }, limitTrain: 64, limitTest: 30 };
    const straight = await train({ ...o, out: path.join(tmp, 'act-straight') });
    const out = path.join(tmp, 'act-split');
    await train({ ...o, epochs: 1, out });
    const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    expect(config.actOptions).toEqual({ grid: 4, headDim: 8, rect: 'norm' });
    // the BasicBlock's default rect is 'linear' (rect.0.weight); 'norm' was asked for
    const keys = Object.keys(modelTensors(path.join(out, 'checkpoint.safetensors')));
    expect(keys).toContain('layer1.0.act1.rect.weight');
    expect(keys.some((k) => k.includes('rect.0.weight'))).toBe(false);
    await expect(train({ ...base, out, resume: true, actOptions: { grid: 3 } })).rejects.toMatchObject({ code: 'ERR_ARG', message: expect.stringMatching(/actOptions\.grid 3 \(the run's: 4\) differs/) });
    await expect(train({ ...base, out, resume: true, actOptions: { proj: true } })).rejects.toMatchObject({ code: 'ERR_ARG', message: expect.stringMatching(/actOptions\.proj true \(the run's: not set\) differs/) });
    // the second epoch keeping the context: the same bits as the straight run
    const tail = await train({ ...base, out, resume: true, actOptions: { keepContext: true, grid: 4 } });
    expect(tail.history.length).toBe(2);
    expect(modelTensors(tail.checkpoint!)).toEqual(modelTensors(straight.checkpoint!));
    const ev = evaluateCheckpoint(tail.checkpoint!, { dataDir, limit: 30 });
    expect(ev.acc).toBeCloseTo(tail.history[1].testAcc, 10);
    await expect(train({ ...base, act: 'adashift-ma', actOptions: { gird: 4 } as never })).rejects.toMatchObject({ code: 'ERR_ARG', message: expect.stringMatching(/train actOptions: unknown option 'gird'/) });
    await expect(train({ ...base, act: 'adashift-ma', actOptions: { headDim: 20 }, out: path.join(tmp, 'act-bad') })).rejects.toMatchObject({ code: 'ERR_ARG', message: expect.stringMatching(/do not split into 3 heads \(headDim 20\)/) });
  });

  test('bad options and missing data give clear errors', async () => {
    await expect(train({ ...base, act: 'tanh' as never })).rejects.toMatchObject({ code: 'ERR_ARG', message: expect.stringMatching(/unknown activation 'tanh'/) });
    await expect(train({ ...base, epochs: 0 })).rejects.toMatchObject({ code: 'ERR_ARG' });
    await expect(train({ ...base, dataDir: path.join(tmp, 'nope') })).rejects.toMatchObject({ code: 'ERR_IO', message: expect.stringMatching(/apt-get install dataset-fashion-mnist/) });
    await expect(train({ ...base, out: path.join(tmp, 'empty'), resume: true })).rejects.toMatchObject({ code: 'ERR_IO', message: expect.stringMatching(/nothing to resume/) });
    const bad = path.join(tmp, 'bad.safetensors');
    fs.writeFileSync(bad, Buffer.alloc(5));
    expect(() => evaluateCheckpoint(bad, { dataDir })).toThrow(expect.objectContaining({ code: 'ERR_IO' }));
    // values of the wrong type are named as given (a string is not a number, nor a boolean)
    for (const [k, v, expected] of [
      ['labelSmoothing', '0.1', '"0.1" (expected a number in [0, 1))'],
      ['lr', '0.1', '"0.1" (expected a number > 0)'],
      ['augment', 'no', '"no" (expected a boolean)'],
      ['maxBatches', 0, '0 (expected an integer >= 1)'],
      ['limitTrain', 2.5, '2.5 (expected an integer >= 1)'],
      ['out', '', '"" (expected a folder (or null: write nothing))'],
      ['overwrite', 1, '1 (expected a boolean)'],
    ] as const) {
      await expect(train({ ...base, [k]: v } as TrainOptions)).rejects.toMatchObject({ code: 'ERR_ARG', message: `train: invalid ${k}: ${expected}` });
    }
  });

  test("an epoch's lr is its last step's (not the schedule's next, 0 at the end of a cosine)", async () => {
    // 200 images in batches of 32: 7 steps per epoch, 14 in all; the last step is the 14th (index 13)
    const r = await train({ ...base, epochs: 2, warmup: 0, schedule: 'cosine', limitTest: 16, out: null });
    const cosine = (step: number) => (base.lr! * (1 + Math.cos((Math.PI * step) / 14))) / 2;
    expect(r.history.map((m) => m.lr)).toEqual([expect.closeTo(cosine(6), 9), expect.closeTo(cosine(13), 9)]);
    expect(r.history[1].lr).toBeGreaterThan(0);
  });

  test('the test split is evaluated at the training batch size: evaluation does not raise the peak the training step set', async () => {
    const { memory } = require('../lib/tensor') as typeof import('../lib/tensor');
    // 60 test images: evaluated at the default 256 they would be one forward of 60, above a step of 8
    const peaks: [number, number][] = [];
    await train({ ...base, batch: 8, epochs: 1, limitTrain: 32, out: null }, { onEpoch: (m) => void peaks.push([memory().devices.find((d) => d.device === 'cpu')!.peakBytes, m.peakBytes]) });
    expect(peaks).toHaveLength(1);
    expect(peaks[0][0]).toBe(peaks[0][1]);
  });

  test("threads apply to the run; the process's setting comes back after it", async () => {
    const { getNumThreads, setNumThreads } = require('../lib/device') as typeof import('../lib/device');
    const before = getNumThreads();
    try {
      setNumThreads(2);
      const set = getNumThreads(); // 2, or the pool's size where it is 1
      const seen: number[] = [];
      await train({ ...base, epochs: 1, limitTrain: 32, limitTest: 16, threads: 1, out: null }, { onBatch: () => void seen.push(getNumThreads()) });
      expect(seen.every((n) => n === 1)).toBe(true);
      expect(getNumThreads()).toBe(set);
    } finally {
      setNumThreads(before);
    }
  });

  test('a folder that holds a run is not started over unless told to (resume or overwrite)', async () => {
    const out = path.join(tmp, 'overwrite');
    const o = { ...base, epochs: 1, limitTrain: 32, limitTest: 16, out };
    const first = await train(o);
    const before = checkpointBytes(first.checkpoint!);
    await expect(train(o)).rejects.toMatchObject({ code: 'ERR_ARG', message: expect.stringMatching(/^train: .*overwrite already holds a run \(checkpoint\.safetensors\): continue it with resume \(--resume\), replace it with overwrite \(--overwrite\), or write to another folder/) });
    expect(checkpointBytes(first.checkpoint!).equals(before)).toBe(true);
    const again = await train({ ...o, overwrite: true, lr: 0.01 });
    expect(again.history).toHaveLength(1);
    expect(checkpointBytes(again.checkpoint!).equals(before)).toBe(false);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'))).not.toHaveProperty('overwrite');
  });

  test("evaluating on another dataset does not read the run's data folder", async () => {
    const out = path.join(tmp, 'eval-other');
    const r = await train({ ...base, epochs: 1, limitTrain: 32, limitTest: 16, out });
    expect(evaluateCheckpoint(r.checkpoint!, {}).count).toBe(60); // the run's dataset, from the run's folder, its whole test split
    // the run's folder holds files of MNIST's names: read as MNIST they would give 60 images
    let count: number | undefined;
    try {
      count = evaluateCheckpoint(r.checkpoint!, { dataset: 'mnist' }).count;
    } catch (e) {
      expect((e as Error).message).toMatch(/mnist/i);
    }
    if (count !== undefined) expect(count).not.toBe(60);
    expect(evaluateCheckpoint(r.checkpoint!, { dataset: 'mnist', dataDir, limitTest: 7 }).count).toBe(7);
    expect(() => evaluateCheckpoint(r.checkpoint!, { limit: 3, limitTest: 3 })).toThrow(expect.objectContaining({ code: 'ERR_ARG' }));
  });
});

// A checkpoint's every value: float tensors (model and optimizer buffers), integer buffers
// (BatchNorm's num_batches_tracked) and the optimizer's and scheduler's saved counts.
function checkpointValues(file: string): Record<string, unknown> {
  const out: Record<string, unknown> = modelTensors(file);
  const c = loadCheckpoint(file, 'cpu');
  for (const [k, v] of Object.entries(c.model)) if (!('toFloat32Array' in v)) out[k] = Array.from(v.data, String);
  out['meta.optimizer'] = c.meta.optimizer;
  out['meta.scheduler'] = c.meta.scheduler;
  disposeCheckpoint(c);
  return out;
}

const cudaTest = backendInfo().cudaUsable ? test : test.skip;

describe('training with CUDA graphs (graph: true)', () => {
  // 21 images in batches of 8: per epoch two full batches and one of 5. The run's first step and
  // each batch of 5 run eagerly, the first full batch after that is captured, then replayed.
  for (const opt of ['sgd', 'adamw', 'lamb'] as const) {
    cudaTest(`with ${opt}: the replayed steps give the eager run's metrics and checkpoint, bit for bit`, async () => {
      const o: TrainOptions = { ...base, device: 'cuda', batch: 8, limitTrain: 21, limitTest: 16, epochs: 2, opt, lr: opt === 'sgd' ? 0.05 : 2e-3 };
      const eager = await train({ ...o, out: path.join(tmp, `eager-${opt}`) });
      const graph = await train({ ...o, graph: true, out: path.join(tmp, `graph-${opt}`) });
      expect([eager.graphSteps, graph.graphSteps]).toEqual([0, 3]);
      const metrics = (h: typeof eager.history) => h.map((m) => [m.trainLoss, m.trainAcc, m.testLoss, m.testAcc, m.lr]);
      expect(metrics(graph.history)).toEqual(metrics(eager.history));
      expect(checkpointValues(graph.checkpoint!)).toEqual(checkpointValues(eager.checkpoint!));
    });
  }

  cudaTest('a graph run stopped mid-epoch and resumed with graph ends with the eager run\'s checkpoint, leaving no tensor alive', async () => {
    const before = accounted();
    // 37 images: 4 batches of 8 and one of 5 per epoch
    const o: TrainOptions = { ...base, device: 'cuda', batch: 8, limitTrain: 37, limitTest: 16, epochs: 2, opt: 'adamw', lr: 2e-3 };
    const straight = await train({ ...o, out: path.join(tmp, 'graph-resume-eager') });
    const out = path.join(tmp, 'graph-resume');
    // stops after 2 batches (an eager step, a replay); the resumed run starts with an eager step,
    // captures again, replays batch 4 of epoch 1 and the four full batches of epoch 2
    const head = await train({ ...o, graph: true, out, maxBatches: 2 });
    expect([head.interrupted, head.graphSteps]).toEqual([true, 1]);
    const tail = await train({ epochs: 2, device: 'cuda', dataDir, out, resume: true, graph: true });
    expect(tail.graphSteps).toBe(5);
    expect(checkpointValues(tail.checkpoint!)).toEqual(checkpointValues(straight.checkpoint!));
    expect(accounted()).toBe(before);
  });

  test('graph needs a CUDA device', async () => {
    await expect(train({ ...base, device: 'cpu', graph: true })).rejects.toMatchObject({ code: 'ERR_CUDA_GRAPH', message: expect.stringMatching(/graph \(CUDA graphs\) needs a CUDA device; the device is 'cpu'/) });
    // checked before a checkpoint is loaded (nothing loaded, nothing to leak)
    await expect(train({ ...base, device: 'cpu', graph: true, resume: true, out: path.join(tmp, 'no-such-run') })).rejects.toMatchObject({ code: 'ERR_CUDA_GRAPH', message: expect.stringMatching(/needs a CUDA device/) });
  });
});

describe('compare', () => {
  test('on a tiny budget writes the table, summary and both SVG plots', async () => {
    const out = path.join(tmp, 'compare');
    const r = await compare({ ...base, epochs: 2, acts: ['relu', 'adashift-b'], seeds: 2, out, limitTrain: 64, limitTest: 30 });
    expect(r.rows.map((x) => x.act)).toEqual(['relu', 'adashift-b']);
    for (const row of r.rows) {
      expect(row.finalTestAcc).toHaveLength(2);
      expect(row.histories.every((h) => h.length === 2)).toBe(true);
    }
    expect(r.rows[1].params).toBeGreaterThan(r.rows[0].params); // AdaShift-B adds LayerNorm parameters
    const report = fs.readFileSync(path.join(out, 'report.md'), 'utf8');
    expect(report).toMatch(/\| activation \| test accuracy \(mean ± std over 2 seeds\) \|.*\| peak tensor memory \(MiB\) \| parameters \|/);
    for (const row of r.rows) {
      expect(row.peakBytes).toBe(Math.max(...row.histories.flat().map((e) => e.peakBytes)));
      expect(report).toContain(`| ${(row.peakBytes / 2 ** 20).toFixed(1)} | ${row.params.toLocaleString('en-US')} |`);
    }
    expect(report).toMatch(/\| relu \| \d+\.\d\d% ± \d+\.\d\d \|/);
    expect(report).toMatch(/\| adashift-b \| /);
    for (const f of ['test-accuracy.svg', 'train-loss.svg']) {
      const svg = fs.readFileSync(path.join(out, f), 'utf8');
      expect(svg.startsWith('<svg')).toBe(true);
      expect(svg).toMatch(/adashift-b/); // the legend names each activation
      expect(svg).toMatch(/<path/);
    }
    expect(report).not.toMatch(/activation options/);
    const summary = JSON.parse(fs.readFileSync(path.join(out, 'summary.json'), 'utf8'));
    expect(summary.rows).toHaveLength(2);
    expect(markdownTable(r.rows, { actOptions: { grid: 4, proj: true } })).toMatch(/^resnet20, .*, activation options grid 4, proj true\n/);
    expect(summary.commit).toMatch(/^([0-9a-f]{12}(-dirty)?|unknown)$/);
    expect(report).toContain(`(commit ${summary.commit})`);
  });

  test('a folder that holds a comparison or one of its runs is not started over unless told to', async () => {
    const out = path.join(tmp, 'compare'); // the first test's comparison
    const o = { ...base, epochs: 1, acts: ['relu' as const], seeds: 1, out, limitTrain: 64, limitTest: 30 };
    const stamp = fs.statSync(path.join(out, 'relu-seed3', 'checkpoint.safetensors')).mtimeMs;
    await expect(compare(o)).rejects.toMatchObject({ code: 'ERR_ARG', message: expect.stringMatching(/^compare: .*compare already holds a comparison \(compare\.json\): continue it with resume/) });
    const lone = path.join(tmp, 'compare-lone');
    await train({ ...base, act: 'relu', epochs: 1, limitTrain: 32, limitTest: 16, out: path.join(lone, 'relu-seed3') });
    await expect(compare({ ...o, out: lone })).rejects.toMatchObject({ code: 'ERR_ARG', message: expect.stringMatching(/already holds a run \(.*relu-seed3\/checkpoint\.safetensors\)/) });
    expect(fs.statSync(path.join(out, 'relu-seed3', 'checkpoint.safetensors')).mtimeMs).toBe(stamp);
    const r = await compare({ ...o, out: lone, overwrite: true });
    expect(r.rows[0].histories[0]).toHaveLength(1);
  });

  test('entries with options of their own: parsed, labelled, validated', () => {
    expect(parseArm('relu')).toEqual({ act: 'relu', actOptions: {} });
    expect(parseArm('adashift-ma:rect=norm:head-dim=32:grid=4:keep-context')).toEqual({ act: 'adashift-ma', actOptions: { rect: 'norm', headDim: 32, grid: 4, keepContext: true } });
    expect(parseArm('adashift-b:proj=false')).toEqual({ act: 'adashift-b', actOptions: { proj: false } });
    expect(parseArm('gelu:approximate=tanh')).toEqual({ act: 'gelu', actOptions: { approximate: 'tanh' } });
    // the label lists options in one order, whatever the order given; it parses back to the entry
    const label = armLabel(parseArm('adashift-ma:rect=norm:head-dim=32:grid=4:keep-context'));
    expect(label).toBe('adashift-ma:grid=4:head-dim=32:rect=norm:keep-context');
    expect(parseArm(label)).toEqual({ act: 'adashift-ma', actOptions: { grid: 4, headDim: 32, rect: 'norm', keepContext: true } });
    expect(armLabel({ act: 'adashift-b', actOptions: { proj: false } })).toBe('adashift-b:proj=false');
    expect(armLabel({ act: 'silu' })).toBe('silu');
    for (const [spec, message] of [
      ['tanh', /unknown activation 'tanh' in 'tanh'/],
      ['adashift-ma:size=3', /'adashift-ma:size=3': unknown option 'size' \(known: proj, grid, head-dim, rect, keep-context, approximate\)/],
      ['adashift-ma:grid', /grid must be grid=<integer>, got no value/],
      ['adashift-ma:grid=2.5', /grid must be grid=<integer>, got '2.5'/],
      ['adashift-ma:rect', /rect must be rect=<value>/],
      ['adashift-b:proj=yes', /proj is a flag \(proj, proj=true or proj=false\), got 'yes'/],
      ['adashift-ma:grid=3:grid=4', /grid is given twice/],
    ] as const) {
      expect(() => parseArm(spec)).toThrow(expect.objectContaining({ code: 'ERR_ARG', message: expect.stringMatching(message) }));
    }
  });

  test('an entry the activation or the model refuses stops the comparison before any run', async () => {
    const out = path.join(tmp, 'compare-refused');
    for (const [acts, message] of [
      [['relu', 'relu:grid=4'], /^compare: 'relu:grid=4': relu does not read grid \(its options: none\)/],
      [['relu', 'adashift-b:grid=4'], /adashift-b does not read grid \(its options: proj\)/],
      [['relu', { act: 'adashift-ma', actOptions: { grid: '4' } }], /^compare: adashift-ma's grid must be an integer, got "4"/],
      [['relu', 'adashift-ma:head-dim=5'], /^compare: 'adashift-ma:head-dim=5': .*head/i],
      [['relu', 'adashift-ma:grid=0'], /^compare: 'adashift-ma:grid=0': .*grid/],
      [['relu', 'gelu:approximate=fast'], /^compare: 'gelu:approximate=fast': GELU: approximate must be 'none' or 'tanh', got "fast"/],
      [['adashift-ma:grid=4:rect=norm', 'relu', 'adashift-ma:rect=norm:grid=4'], /^compare: 'adashift-ma:grid=4:rect=norm' is listed twice/],
      [[{ act: 'swish' }], /compare: acts must be activation names or \{act, actOptions\}/],
      [[], /compare: acts must be a non-empty array/],
    ] as const) {
      await expect(compare({ ...base, acts: acts as never, out })).rejects.toMatchObject({ code: 'ERR_ARG', message: expect.stringMatching(message) });
    }
    expect(fs.existsSync(out)).toBe(false);
  });

  test("an activation twice with different options: each run is train()'s with the entry's options over the shared ones", async () => {
    const out = path.join(tmp, 'compare-arms');
    const small = { ...base, epochs: 1, limitTrain: 64, limitTest: 30 };
    const r = await compare({ ...small, acts: ['adashift-ma', 'adashift-ma:grid=2', { act: 'adashift-b', actOptions: { proj: true } }], actOptions: { grid: 3, headDim: 4 }, out });
    expect(r.rows.map((x) => x.label)).toEqual(['adashift-ma', 'adashift-ma:grid=2', 'adashift-b:proj']);
    expect(r.rows.map((x) => x.actOptions)).toEqual([{}, { grid: 2 }, { proj: true }]);
    const config = (folder: string) => JSON.parse(fs.readFileSync(path.join(out, folder, 'config.json'), 'utf8'));
    expect(config('adashift-ma-seed3').actOptions).toEqual({ grid: 3, headDim: 4 });
    expect(config('adashift-ma_grid-2-seed3').actOptions).toEqual({ grid: 2, headDim: 4 });
    expect(config('adashift-b_proj-seed3').actOptions).toEqual({ grid: 3, headDim: 4, proj: true });
    // AdaShift-MA's parameters do not depend on the grid; the proj adds a Linear(C, C) per activation
    expect(r.rows[1].params).toBe(r.rows[0].params);
    // the entry's run is the run train() makes with those options (the same seed: the same metrics)
    const alone = await train({ ...small, act: 'adashift-ma', actOptions: { grid: 2, headDim: 4 }, out: path.join(tmp, 'compare-arms-alone') });
    const strip = (h: typeof alone.history) => h.map(({ seconds: _s, imagesPerSec: _i, peakBytes: _p, ...m }) => m);
    expect(strip(r.rows[1].histories[0])).toEqual(strip(alone.history));
    expect(strip(r.rows[0].histories[0])).not.toEqual(strip(alone.history));
    const report = fs.readFileSync(path.join(out, 'report.md'), 'utf8');
    // one seed: no spread to show (a standard deviation of one value is undefined, not 0)
    expect(report).toMatch(/\| activation \| test accuracy \(one seed\) \|/);
    expect(report).toMatch(/\| adashift-ma:grid=2 \| \d+\.\d\d% \| /);
    expect(r.rows.map((x) => x.stdTestAcc)).toEqual([null, null, null]);
    expect(report).toMatch(/first 64 training images, accuracy on the first 30 test images, no augmentation/);
    expect(report).toMatch(/activation options grid 3, headDim 4/);
    expect(report).not.toMatch(/time vs ReLU/);
    expect(fs.readFileSync(path.join(out, 'test-accuracy.svg'), 'utf8')).toContain('adashift-ma:grid=2');
    expect(JSON.parse(fs.readFileSync(path.join(out, 'summary.json'), 'utf8')).options.acts).toEqual(['adashift-ma', 'adashift-ma:grid=2', 'adashift-b:proj']);
  });

  describe('stopped and resumed', () => {
    const small = { ...base, epochs: 2, acts: ['relu', 'adashift-b'], seeds: 2, limitTrain: 96, limitTest: 30 };
    const strip = (h: EpochMetrics[]) => h.map(({ seconds: _s, imagesPerSec: _i, peakBytes: _p, ...m }) => m);
    let straight: Awaited<ReturnType<typeof compare>>;
    beforeAll(async () => {
      straight = await compare({ ...small, out: path.join(tmp, 'compare-straight') });
    });

    test('a comparison stopped in its third run resumes to the straight result', async () => {
      const out = path.join(tmp, 'compare-stopped');
      let batches = 0;
      // asked before each run and after each batch (3 per epoch, 6 per run): the 17th ask
      // follows the third run's second batch
      const r = await compare({ ...small, out }, { shouldStop: () => ++batches >= 2 * 7 + 3 });
      expect(r).toMatchObject({ interrupted: true, runsDone: 2, runs: 4, table: '' });
      expect(r.report).toBeUndefined();
      const ck = loadCheckpoint(path.join(out, 'adashift-b-seed3', 'checkpoint.safetensors'));
      expect(ck.meta).toMatchObject({ epoch: 0, batch: 2 });
      disposeCheckpoint(ck);
      expect(r.rows.map((x) => x.label)).toEqual(['relu']);
      expect(fs.existsSync(path.join(out, 'report.md'))).toBe(false);
      expect(fs.existsSync(path.join(out, 'adashift-b-seed3', 'checkpoint.safetensors'))).toBe(true);
      expect(fs.existsSync(path.join(out, 'adashift-b-seed4'))).toBe(false);
      // finished runs are read back without a batch; the stopped one continues
      const trained: string[] = [];
      const resumed = await compare({ out, resume: true }, { train: (label, seed) => ({ onBatch: () => void trained.push(`${label} ${seed}`) }) });
      expect(resumed.interrupted).toBe(false);
      expect([...new Set(trained)]).toEqual(['adashift-b 3', 'adashift-b 4']);
      expect(trained.filter((t) => t === 'adashift-b 3')).toHaveLength(4); // its first epoch's last batch, then the second epoch
      expect(resumed.rows.map((x) => x.label)).toEqual(['relu', 'adashift-b']);
      resumed.rows.forEach((row, i) => {
        expect(row.histories.map(strip)).toEqual(straight.rows[i].histories.map(strip));
        expect(row.params).toBe(straight.rows[i].params);
      });
      for (const run of ['relu-seed3', 'adashift-b-seed3', 'adashift-b-seed4']) {
        expect(modelTensors(path.join(out, run, 'checkpoint.safetensors'))).toEqual(modelTensors(path.join(tmp, 'compare-straight', run, 'checkpoint.safetensors')));
      }
      const report = fs.readFileSync(path.join(out, 'report.md'), 'utf8');
      expect(report).toMatch(/\nresumed \d{4}-\d\d-\d\dT.*\(commit /);
      const summary = JSON.parse(fs.readFileSync(path.join(out, 'summary.json'), 'utf8'));
      expect(summary.resumed).toHaveLength(1);
      expect(summary.options.acts).toEqual(['relu', 'adashift-b']);
    });

    test('stopped between runs: the next run is not started', async () => {
      const out = path.join(tmp, 'compare-between');
      let done = 0;
      const r = await compare({ ...small, seeds: 1, out }, { onRunEnd: () => void done++, shouldStop: () => done >= 1 });
      expect(r).toMatchObject({ interrupted: true, runsDone: 1, runs: 2 });
      expect(fs.existsSync(path.join(out, 'adashift-b-seed3'))).toBe(false);
      // resuming with another seed adds its runs; the finished run is kept
      const trained: string[] = [];
      const more = await compare({ out, resume: true, seeds: 2 }, { train: (label, seed) => ({ onBatch: () => void trained.push(`${label} ${seed}`) }) });
      expect([...new Set(trained)]).toEqual(['relu 4', 'adashift-b 3', 'adashift-b 4']);
      expect(more.rows.map((x) => x.seeds)).toEqual([[3, 4], [3, 4]]);
      more.rows.forEach((row, i) => expect(row.histories.map(strip)).toEqual(straight.rows[i].histories.map(strip)));
    });

    test('a resumed comparison refuses settings that differ from its own', async () => {
      const out = path.join(tmp, 'compare-stopped');
      await expect(compare({ out, resume: true, lr: 0.2, batch: 32 })).rejects.toMatchObject({ code: 'ERR_ARG', message: expect.stringMatching(/^compare: a resumed comparison keeps its settings, and lr 0\.2 \(the comparison's: 0\.05\) differs/) });
      await expect(compare({ out, resume: true, actOptions: { proj: true } })).rejects.toMatchObject({ code: 'ERR_ARG', message: expect.stringMatching(/actOptions \{"proj":true\} \(the comparison's: not set\) differs/) });
      await expect(compare({ out, resume: true, opt: 'sgd', epochs: 2 })).resolves.toMatchObject({ interrupted: false });
      await expect(compare({ out: path.join(tmp, 'no-such-compare'), resume: true })).rejects.toMatchObject({ code: 'ERR_IO', message: expect.stringMatching(/nothing to resume: .*no-such-compare\/compare\.json does not exist/) });
      const bad = path.join(tmp, 'compare-bad-record');
      fs.mkdirSync(bad, { recursive: true });
      fs.writeFileSync(path.join(bad, 'compare.json'), '{"options": 3');
      await expect(compare({ out: bad, resume: true })).rejects.toMatchObject({ code: 'ERR_IO', message: expect.stringMatching(/compare\.json: not a comparison's record/) });
      // a record that would start endless runs, or break the report after them, stops at once
      const record = JSON.parse(fs.readFileSync(path.join(out, 'compare.json'), 'utf8'));
      for (const [edit, message] of [[{ options: { ...record.options, seeds: 1e308 } }, /'seeds' must be an integer in \[1, 1000\], got 1e\+308/], [{ resumed: 5 }, /'resumed' must be an array of objects/], [{ started: 1 }, /'started' must be an object/]] as [Record<string, unknown>, RegExp][]) {
        fs.writeFileSync(path.join(bad, 'compare.json'), JSON.stringify({ ...record, ...edit }));
        await expect(compare({ out: bad, resume: true })).rejects.toMatchObject({ code: 'ERR_IO', message: expect.stringMatching(message) });
      }
    });
  });

  // needs the git program (a machine the tree is copied to may lack it: skipped there)
  const gitTest = spawnSync('git', ['--version']).status === 0 ? test : test.skip;
  gitTest('the commit is reported only for a checkout rooted at the package', () => {
    const repo = path.join(tmp, 'outer-repo');
    fs.mkdirSync(path.join(repo, 'node_modules', 'pkg'), { recursive: true });
    const git = (...args: string[]) => execFileSync('git', args, { cwd: repo, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
    git('init', '-q');
    fs.writeFileSync(path.join(repo, 'a.txt'), 'a\n');
    git('add', 'a.txt');
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '-m', 'a');
    expect(gitCommit(repo)).toBe(git('rev-parse', '--short=12', 'HEAD'));
    // a changed result file or document does not run; a changed source file makes it dirty
    fs.mkdirSync(path.join(repo, 'bench', 'results'), { recursive: true });
    fs.writeFileSync(path.join(repo, 'bench', 'results', 'r.json'), '{}\n');
    git('add', 'bench/results/r.json');
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '-m', 'r');
    fs.writeFileSync(path.join(repo, 'bench', 'results', 'r.json'), '{"x": 1}\n');
    expect(gitCommit(repo)).toBe(git('rev-parse', '--short=12', 'HEAD'));
    fs.writeFileSync(path.join(repo, 'README.md'), '# r\n');
    git('add', 'README.md');
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '-m', 'readme');
    fs.writeFileSync(path.join(repo, 'README.md'), '# changed\n');
    expect(gitCommit(repo)).toBe(git('rev-parse', '--short=12', 'HEAD'));
    fs.writeFileSync(path.join(repo, 'a.txt'), 'changed\n');
    expect(gitCommit(repo)).toBe(`${git('rev-parse', '--short=12', 'HEAD')}-dirty`);
    // a package installed inside someone else's repository does not report its commit
    expect(gitCommit(path.join(repo, 'node_modules', 'pkg'))).toBe('unknown');
    expect(gitCommit(path.join(tmp, 'no-such-folder'))).toBe('unknown');
  });
});

describe('CLI', () => {
  let cli: string;
  beforeAll(() => {
    cli = path.join(ensureDist(), 'cli.js');
  });
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, ADASHIFT_DEVICE: 'cpu' } });

  test.each([
    [['train', '--act', 'tanh'], /--act must be one of relu, gelu, silu, adashift-b, adashift-ma, got 'tanh'/],
    [['train', '--epochs', '-1'], /--epochs must be an integer/],
    [['train', '--lr', 'fast'], /--lr must be a number/],
    [['compare', '--acts', 'relu,swish'], /unknown activation 'swish'/],
    [['compare', '--acts', 'relu,adashift-ma:grid=x'], /'adashift-ma:grid=x': grid must be grid=<integer>, got 'x'/],
    [['train', '--approximate', 'fast'], /--approximate must be one of none, tanh, got 'fast'/],
    [['eval', '--checkpoint', 'x', '--device', 'gpu'], /--device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'/],
    [['bench', 'step', '--acts', 'relu,relu'], /'relu' is listed twice/],
    [['bench', 'step', '--profile', '--sections', 'threads', '--no-torch'], /--profile profiles one model and one activation's step; it does not take --sections, --no-torch/],
    [['bench', 'step', '--profile', '--models', 'resnet20,resnet50-small'], /it does not take --models with more than one model/],
    [['eval'], /required option '--checkpoint <file>' not specified/],
    [['train', '--rect', 'square'], /--rect must be one of norm, linear, got 'square'/],
    [['train', '--grid', '0'], /--grid must be an integer/],
    [['frobnicate'], /unknown command 'frobnicate'/],
  ])('%j prints the problem and usage, and exits with 2 (a usage error)', (args, message) => {
    const r = run(...(args as string[]));
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(message as RegExp);
    expect(r.stderr).toMatch(/Usage: adashift/);
  });

  (backendInfo().cudaUsable ? test.skip : test)('ADASHIFT_DEVICE is the default of --device (cuda here: refused, not the CPU)', () => {
    for (const args of [['train', '--data-dir', dataDir, '--epochs', '1', '--out', path.join(tmp, 'env-cuda')], ['bench', 'act', '--shape', '2,4,8,8', '--acts', 'relu', '--no-torch', '--repeats', '1', '--out', tmp]]) {
      const r = spawnSync(process.execPath, [cli, ...args], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, ADASHIFT_DEVICE: 'cuda' } });
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/device 'cuda' was requested but CUDA is not usable.*\(ERR_NO_CUDA\)/);
      const cpu = spawnSync(process.execPath, [cli, ...args, '--device', 'cpu', ...(args[0] === 'train' ? ['--overwrite'] : [])], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, ADASHIFT_DEVICE: 'cuda' } });
      expect(cpu.status).toBe(0);
    }
  });

  test("progress: the run's ETA in minutes and seconds on a terminal (not the bar's own), '?' before a batch is timed", async () => {
    const { progressCallbacks } = require('../lib/cli') as typeof import('../lib/cli');
    const { Writable } = require('stream') as typeof import('stream');
    const text = (tty: boolean) => {
      let out = '';
      const stream = Object.assign(new Writable({ write: (c, _e, cb) => ((out += String(c)), cb()) }), { isTTY: tty, columns: 200 }) as unknown as NodeJS.WriteStream;
      return { stream, read: () => out };
    };
    const env = process.env.CI;
    delete process.env.CI;
    try {
      for (const tty of [true, false]) {
        const t = text(tty);
        const p = progressCallbacks('', t.stream);
        p.onStart!({ config: { epochs: 2, model: 'resnet20', act: 'relu', dataset: 'x' } as never, params: 1, trainCount: 8, testCount: 8, batchesPerEpoch: 50, startEpoch: 0, startBatch: 0, device: 'cpu' });
        for (let i = 0; i < 50; i++) {
          p.onBatch!({ epoch: 0, batch: i, batches: 50, loss: 1, acc: 0.5, imagesPerSec: 100, lr: 0.1 });
          if (i === 0 || i === 49) await new Promise((r) => setTimeout(r, 30));
        }
        p.stop();
        // the terminal's cursor and erase codes set apart
        const etas = [...t.read().replace(/\x1b\[[0-9;]*[A-Za-z]/g, ' ').matchAll(/ETA (\S+)/g)].map((m) => m[1]);
        expect(etas[0]).toBe('?');
        expect(etas.length).toBeGreaterThan(1);
        expect(etas.slice(1).every((e) => /^\d+m\d\ds$/.test(e))).toBe(true);
      }
    } finally {
      if (env !== undefined) process.env.CI = env;
    }
  });

  test('an output folder that cannot be made is an ERR_IO error, not a hang', () => {
    const f = path.join(tmp, 'a-file');
    fs.writeFileSync(f, 'x');
    const r = spawnSync(process.execPath, [cli, 'train', '--data-dir', dataDir, '--epochs', '1', '--out', path.join(f, 'run')], { cwd: ROOT, encoding: 'utf8', timeout: 60_000, env: { ...process.env, ADASHIFT_DEVICE: 'cpu' } });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/a-file\/run: cannot create the folder: ENOTDIR.*\(ERR_IO\)/);
    if (fs.existsSync('/proc/self')) {
      const p = spawnSync(process.execPath, [cli, 'bench', 'act', '--shape', '2,4,8,8', '--acts', 'relu', '--no-torch', '--repeats', '1', '--out', '/proc/adashift-no-such'], { cwd: ROOT, encoding: 'utf8', timeout: 60_000, env: { ...process.env, ADASHIFT_DEVICE: 'cpu' } });
      expect(p.error).toBeUndefined();
      expect(p.status).toBe(1);
      expect(p.stderr).toMatch(/\/proc\/adashift-no-such: cannot create the folder: ENOENT.*\(ERR_IO\)/);
    }
  });

  test('train then eval from the command line', () => {
    const out = path.join(tmp, 'cli-run');
    const t = run('train', '--act', 'silu', '--data-dir', dataDir, '--epochs', '1', '--batch', '50', '--no-augment', '--out', out);
    expect(t.status).toBe(0);
    expect(t.stdout).toMatch(/test accuracy \d+\.\d\d% after 1 epoch/);
    expect(t.stderr).toMatch(/epoch 1\/1: train loss/);
    const e = run('eval', '--checkpoint', path.join(out, 'checkpoint.safetensors'), '--data-dir', dataDir);
    expect(e.status).toBe(0);
    expect(e.stdout).toMatch(/resnet20 silu after 1 epoch\(s\) on fashion-mnist \(60 test images\): loss \d\.\d{4}, accuracy \d+\.\d\d%/);
  });

  test("the activation flags reach the run's configuration, and a resume may add --keep-context", () => {
    const out = path.join(tmp, 'cli-act');
    const t = run('train', '--act', 'adashift-ma', '--grid', '3', '--head-dim', '4', '--rect', 'norm', '--data-dir', dataDir, '--epochs', '1', '--batch', '50', '--limit-train', '50', '--no-augment', '--out', out);
    expect(t.status).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).actOptions).toEqual({ grid: 3, headDim: 4, rect: 'norm' });
    const r = run('train', '--resume', '--out', out, '--epochs', '2', '--keep-context', '--data-dir', dataDir);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/after 2 epoch\(s\)/);
    const bad = run('train', '--resume', '--out', out, '--epochs', '3', '--head-dim', '8', '--data-dir', dataDir);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/actOptions\.headDim 8 \(the run's: 4\) differs/);
  });

  test('compare: Ctrl-C stops the comparison with a checkpoint; --resume finishes it and refuses other settings', async () => {
    const out = path.join(tmp, 'cli-compare-sigint');
    const args = ['--data-dir', dataDir, '--epochs', '100', '--batch', '8', '--limit-train', '16', '--limit-test', '8', '--no-augment', '--out', out];
    const child = spawn(process.execPath, [cli, 'compare', '--acts', 'relu,silu', ...args], { cwd: ROOT, env: { ...process.env, ADASHIFT_DEVICE: 'cpu' } });
    let stderr = '', stdout = '';
    child.stdout.on('data', (d) => (stdout += d));
    const code = await new Promise<number | null>((resolve) => {
      child.stderr.on('data', (d) => {
        stderr += d;
        if (/\[relu s0\] epoch 1\/100 batch/.test(stderr) && !child.killed) child.kill('SIGINT');
      });
      child.on('exit', (c) => resolve(c));
    });
    expect(code).toBe(130); // stopped, not finished: 128 + SIGINT
    expect(stdout).toMatch(/stopped after 0 of 2 runs; the stopped run saved a checkpoint \(continue with: adashift compare --resume --out .*cli-compare-sigint\)/);
    expect(fs.existsSync(path.join(out, 'relu-seed0', 'checkpoint.safetensors'))).toBe(true);
    expect(fs.existsSync(path.join(out, 'report.md'))).toBe(false);
    const bad = run('compare', '--resume', '--out', out, '--lr', '0.3');
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/lr 0\.3 \(the comparison's: 0\.1\) differs/);
    const r = run('compare', '--resume', '--out', out, '--data-dir', dataDir);
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/\[relu s0\] .*resuming at epoch/);
    expect(r.stdout).toMatch(/\| relu \| .*\n\| silu \| /);
    expect(fs.readFileSync(path.join(out, 'report.md'), 'utf8')).toMatch(/\nresumed /);
  });

  cudaTest('train --device cuda --graph reports how many steps were graph replays', () => {
    const out = path.join(tmp, 'cli-graph');
    // 21 images in batches of 8: an eager step, a captured one (replayed), an eager batch of 5
    const t = run('train', '--device', 'cuda', '--graph', '--data-dir', dataDir, '--epochs', '1', '--batch', '8', '--limit-train', '21', '--limit-test', '16', '--no-augment', '--out', out);
    expect(t.status).toBe(0);
    expect(t.stdout).toMatch(/^1 training step\(s\) ran as CUDA graph replays/m);
  });

  /** Runs the CLI's train, sending the signal when its first progress line of epoch 1 comes. */
  const signalled = async (out: string, signal: NodeJS.Signals) => {
    const child = spawn(process.execPath, [cli, 'train', '--act', 'relu', '--data-dir', dataDir, '--epochs', '40', '--batch', '8', '--out', out], {
      cwd: ROOT,
      env: { ...process.env, ADASHIFT_DEVICE: 'cpu' },
    });
    let stderr = '', stdout = '';
    child.stdout.on('data', (d) => (stdout += d));
    let sent = false;
    const code = await new Promise<number | null>((resolve) => {
      child.stderr.on('data', (d) => {
        stderr += d;
        if (/batch 1\/25/.test(stderr) && !sent) {
          sent = true;
          child.kill(signal);
        }
      });
      child.on('exit', (c) => resolve(c));
    });
    return { code, stdout, stderr };
  };

  test('SIGTERM stops like Ctrl-C (a checkpoint, status 143) and soon: the loader being ahead does not starve the signal', async () => {
    const out = path.join(tmp, 'cli-sigterm');
    const r = await signalled(out, 'SIGTERM');
    expect(r.code).toBe(143);
    expect(r.stderr).toMatch(/SIGTERM: stopping after this batch and saving a checkpoint/);
    expect(r.stdout).toMatch(/stopped; checkpoint saved/);
    const ck = loadCheckpoint(path.join(out, 'checkpoint.safetensors'));
    // sent in epoch 1 of 40: the run stops within a few batches (it used to run to the end)
    expect(ck.meta.epoch * 25 + ck.meta.batch).toBeLessThan(2 * 25);
    disposeCheckpoint(ck);
  });

  test('one process writes a run: a second one given its folder stops at once; a lock left by a killed process is taken over', async () => {
    const out = path.join(tmp, 'cli-locked');
    const child = spawn(process.execPath, [cli, 'train', '--act', 'relu', '--data-dir', dataDir, '--epochs', '40', '--batch', '8', '--out', out], { cwd: ROOT, env: { ...process.env, ADASHIFT_DEVICE: 'cpu' } });
    let stderr = '';
    const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    await new Promise<void>((resolve) => child.stderr.on('data', (d) => { stderr += d; if (/batch 1\/25/.test(stderr)) resolve(); }));
    for (const args of [['--resume'], ['--overwrite', '--act', 'silu']]) {
      const second = run('train', '--data-dir', dataDir, '--epochs', '2', '--batch', '8', '--out', out, ...args);
      expect(second.status).toBe(1);
      expect(second.stderr).toMatch(new RegExp(`${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is in use: another adashift process \\(pid ${child.pid} on .*\\) has been writing a training run there since .*; wait for it to end, or write to another folder \\(if no such process writes there, its id was reused: remove .*\\.adashift\\.lock\\) \\(ERR_IO\\)`));
    }
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(fs.existsSync(path.join(out, '.adashift.lock'))).toBe(false); // released
    // a lock whose process is gone (killed with -9) does not block the folder
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
    fs.writeFileSync(path.join(out, '.adashift.lock'), JSON.stringify({ pid: dead, host: os.hostname(), started: '2026-01-01T00:00:00.000Z', what: 'training run' }));
    const r = run('train', '--resume', '--epochs', '1', '--out', out, '--data-dir', dataDir);
    expect(r.status).toBe(0);
  });

  test('--overwrite removes the replaced run first: a new run stopped early leaves no file of the old one', async () => {
    const out = path.join(tmp, 'overwrite-clean');
    await train({ ...base, act: 'adashift-b', epochs: 1, out });
    expect(fs.existsSync(path.join(out, 'metrics.jsonl'))).toBe(true);
    // the new run stops after one batch (before its first epoch ends)
    await train({ ...base, act: 'relu', epochs: 1, out, overwrite: true, maxBatches: 1 });
    expect(fs.existsSync(path.join(out, 'metrics.jsonl'))).toBe(false);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).act).toBe('relu');
    const ck = loadCheckpoint(path.join(out, 'checkpoint.safetensors'));
    expect((ck.meta.config as { act: string }).act).toBe('relu');
    disposeCheckpoint(ck);
    // a resume that lengthens the run says so in config.json
    await train({ out, resume: true, epochs: 2, dataDir });
    expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).epochs).toBe(2);
  });

  test('Ctrl-C saves a checkpoint and exits cleanly; --resume continues', async () => {
    const out = path.join(tmp, 'cli-sigint');
    // 40 epochs: the run must still be going when the signal arrives (a loaded machine can
    // deliver the first progress line late; 3 epochs of this data take well under a second)
    const child = spawn(process.execPath, [cli, 'train', '--act', 'relu', '--data-dir', dataDir, '--epochs', '40', '--batch', '8', '--out', out], {
      cwd: ROOT,
      env: { ...process.env, ADASHIFT_DEVICE: 'cpu' },
    });
    let stderr = '', stdout = '';
    child.stdout.on('data', (d) => (stdout += d));
    const code = await new Promise<number | null>((resolve) => {
      child.stderr.on('data', (d) => {
        stderr += d;
        if (/batch 1\/25/.test(stderr) && !child.killed) child.kill('SIGINT');
      });
      child.on('exit', (c) => resolve(c));
    });
    expect(code).toBe(130);
    expect(stdout).toMatch(/stopped; checkpoint saved/);
    const ck = loadCheckpoint(path.join(out, 'checkpoint.safetensors'));
    const stoppedAt = ck.meta.epoch;
    expect(ck.meta.epoch * 25 + ck.meta.batch).toBeGreaterThan(0);
    disposeCheckpoint(ck);
    // resume, shortened to 3 epochs in all (an option given on resume replaces the saved one)
    const r = run('train', '--resume', '--epochs', '3', '--out', out, '--data-dir', dataDir);
    expect(r.status).toBe(0);
    // (a loaded machine may have run past the third epoch before the signal: then it is finished)
    expect(r.stderr).toMatch(stoppedAt < 3 ? /resuming at epoch/ : /, finished\n/);
    expect(fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n')).toHaveLength(Math.max(3, stoppedAt));
  });
});
