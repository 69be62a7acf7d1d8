// The package inside worker_threads: the native addon is context-aware, so each Worker gets its
// own instance. An AdaShift forward/backward run in a Worker (against dist/) must equal the
// same computation on the main thread (against lib/) bit for bit, also with two Workers at once.
import * as path from 'path';
import * as v8 from 'v8';
import * as vm from 'vm';
import { Worker } from 'worker_threads';
import * as as from '../lib';
import { ensureDist } from './helpers/dist';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const { compute } = require('./helpers/adashift-worker.js') as { compute: (lib: typeof as, spec: Spec) => Result };

interface Spec {
  kind: 'b' | 'ma';
  seed: number;
  shape: number[];
  options: Record<string, unknown>;
}
interface Result {
  y: Float32Array;
  dx: Float32Array;
  grads: Record<string, Float32Array>;
  leftover: number;
  threadId: number;
}
interface Reply {
  results: Result[];
  liveDelta: number;
}

const WORKER = path.join(__dirname, 'helpers', 'adashift-worker.js');
let dist: string;

// The live-tensor counters are process-wide, and jest may have run other test files in this
// process: let the GC and the finalizers reclaim their leftovers now, so that nothing is freed
// while the workers run (this file itself leaves no garbage behind).
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 10));
  }
}

beforeAll(async () => {
  dist = ensureDist();
  as.setDefaultDevice('cpu');
  await settle();
});
afterAll(() => as.setDefaultDevice(undefined));

function runWorker(specs: Spec[]): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const w = new Worker(WORKER, { workerData: { dist, specs }, env: { ...process.env, ADASHIFT_DEVICE: 'cpu' } });
    let reply: Reply | undefined;
    w.on('message', (m: Reply) => (reply = m));
    w.on('error', reject);
    w.on('exit', (code) => {
      if (code !== 0) reject(new Error(`worker exited with code ${code}`));
      else if (!reply) reject(new Error('worker exited without posting a result'));
      else resolve(reply);
    });
  });
}

const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

function expectSameBits(got: Result, want: Result): void {
  expect(got.y.length).toBe(want.y.length);
  expect(bits(got.y).equals(bits(want.y))).toBe(true);
  expect(bits(got.dx).equals(bits(want.dx))).toBe(true);
  expect(Object.keys(got.grads).sort()).toEqual(Object.keys(want.grads).sort());
  for (const k of Object.keys(want.grads)) expect([k, bits(got.grads[k]).equals(bits(want.grads[k]))]).toEqual([k, true]);
}

const specB: Spec = { kind: 'b', seed: 11, shape: [2, 6, 9, 7], options: { proj: true } };
const specB2: Spec = { kind: 'b', seed: 12, shape: [3, 5, 4, 4], options: { proj: false } };
const specMA: Spec = { kind: 'ma', seed: 13, shape: [2, 8, 9, 7], options: { grid: 3, headDim: 4, rect: 'linear' } };

describe('worker_threads', () => {
  test('AdaShift-B forward/backward in a Worker equals the main thread bit for bit', async () => {
    const main = compute(as, specB);
    // sanity: the computation is not trivial (a non-zero shift, gradients everywhere)
    expect(main.y.some((v) => v !== 0)).toBe(true);
    expect(Object.values(main.grads).every((g) => g.some((v) => v !== 0))).toBe(true);
    expect(main.leftover).toBe(5); // dx and four parameter gradients
    const reply = await runWorker([specB]);
    expect(reply.results[0].threadId).not.toBe(0);
    expectSameBits(reply.results[0], main);
    expect(reply.results[0].leftover).toBe(5);
    expect(reply.liveDelta).toBe(0);
  });

  test('two Workers at once, each matching the main thread', async () => {
    await settle();
    const cpu = () => as.memory().devices[0];
    const before = { tensors: cpu().tensors, bytes: cpu().bytes };
    const [r1, r2] = await Promise.all([runWorker([specB2, specMA]), runWorker([specMA, specB])]);
    // the counters are process-wide (shared by all instances): back to the baseline once both
    // workers have disposed everything they made
    expect({ tensors: cpu().tensors, bytes: cpu().bytes }).toEqual(before);
    expect(r1.results[0].threadId).not.toBe(r2.results[0].threadId);
    expectSameBits(r1.results[0], compute(as, specB2));
    expectSameBits(r1.results[1], compute(as, specMA));
    expectSameBits(r2.results[0], compute(as, specMA));
    expectSameBits(r2.results[1], compute(as, specB));
  });

  test('the main thread keeps working after Workers unloaded their instances', () => {
    const t = as.tensor([1, 2, 3]);
    expect(Array.from(as.functional.scale(t, 2).toFloat32Array())).toEqual([2, 4, 6]);
    t.dispose();
  });
});
