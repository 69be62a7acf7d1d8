// A seeded batch loader with prefetch. The order of an epoch is a Fisher-Yates permutation
// drawn from a small PRNG (mulberry32) seeded from (seed, epoch); the augmentation of each example
// draws from its own PRNG seeded from (seed, epoch, index of the example in the dataset). So a
// batch depends only on (seed, epoch, batch index): the same with prefetch on or off, for any
// timing, and when an epoch is resumed mid-way.
//
// Prefetch: the training step is synchronous and blocks the main thread, so the next batch is
// built in a worker_threads Worker (loader-worker.js next to this file) that reads the dataset
// images from a SharedArrayBuffer and sends back each batch as transferable arrays; the iterator
// asks for batch i+1 before it yields batch i. Where the worker file does not exist (running the
// TypeScript sources, e.g. under ts-jest) batches are built on the main thread, with identical
// results.
import * as fs from 'fs';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { AdaShiftError, checkBooleans, checkOptions } from '../errors';
import type { Dataset } from './datasets';
import {
  AugmentOptions, augmentedSize, augmentWithTable, normalizationTable, normalizeWithTable, validateAugment,
} from './transforms';

export interface LoaderOptions {
  batchSize: number;
  /** A new random order every epoch (default false: dataset order). */
  shuffle?: boolean;
  /** Seed of the order and the augmentation (default 0). Any safe integer. */
  seed?: number;
  augment?: AugmentOptions;
  /** Leave out the last, smaller batch (default false). */
  dropLast?: boolean;
  /** Build the next batch in a worker thread while the current one trains (default true). */
  prefetch?: boolean;
}

export interface Batch {
  /** batch x C x H x W floats, normalised (and augmented). */
  images: Float32Array;
  labels: Int32Array;
  /** Index in the dataset of each example of the batch. */
  indices: Int32Array;
  shape: [number, number, number, number];
  /** Batch index in the epoch. */
  index: number;
  epoch: number;
}

// ---- seeded random numbers -------------------------------------------------------------------

/** @internal A 32-bit integer finaliser (lowbias32): a bijection with good avalanche. */
export function mix32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d);
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b);
  return (x ^ (x >>> 16)) >>> 0;
}

/** @internal Hashes non-negative safe integers into a 32-bit seed (each value's low and high words are mixed in). */
export function seedHash(...values: number[]): number {
  let h = 0x243f6a88;
  for (const v of values) {
    const lo = v >>> 0, hi = Math.floor(v / 4294967296) >>> 0;
    h = mix32((h ^ lo) + 0x9e3779b9);
    h = mix32((h ^ hi) + 0x7f4a7c15);
  }
  return h;
}

/** @internal mulberry32: a small, fast 32-bit-state PRNG; returns uniforms in [0, 1). */
export function mulberry32(state: number): () => number {
  let s = state >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const STREAM_ORDER = 1;
const STREAM_AUGMENT = 2;

function seedWords(seed: number): [number, number] {
  // Negative seeds map to distinct words too.
  return seed >= 0 ? [seed, 0] : [-seed, 1];
}

/** @internal The order of the examples in `epoch`: a Fisher-Yates shuffle seeded from (seed, epoch). */
export function epochPermutation(count: number, seed: number, epoch: number): Int32Array {
  const [s, neg] = seedWords(seed);
  const rng = mulberry32(seedHash(STREAM_ORDER, s, neg, epoch));
  const p = new Int32Array(count);
  for (let i = 0; i < count; i++) p[i] = i;
  for (let i = count - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}

/** @internal The augmentation PRNG of one example: seeded from (seed, epoch, index in the dataset). */
export function exampleRng(seed: number, epoch: number, index: number): () => number {
  const [s, neg] = seedWords(seed);
  return mulberry32(seedHash(STREAM_AUGMENT, s, neg, epoch, index));
}

// ---- batch building (shared by the main thread and the worker) ---------------------------------

/** @internal Everything but the data that a BatchBuilder needs (plain data: it is sent to the worker). */
export interface BatchPlan {
  count: number;
  channels: number;
  height: number;
  width: number;
  mean: number[];
  std: number[];
  batchSize: number;
  shuffle: boolean;
  seed: number;
  augment?: AugmentOptions;
  dropLast: boolean;
}

/** @internal */
export interface RawBatch {
  images: Float32Array;
  labels: Int32Array;
  indices: Int32Array;
}

/** @internal */
export class BatchBuilder {
  readonly batchesPerEpoch: number;
  /** Output C, H, W of one example. */
  readonly itemShape: [number, number, number];
  private readonly table: Float32Array;
  private cachedEpoch = -1;
  private cachedOrder: Int32Array | undefined;

  constructor(private readonly images: Uint8Array, private readonly labels: Uint8Array, readonly plan: BatchPlan) {
    const { count, batchSize, channels: c, height: h, width: w } = plan;
    this.batchesPerEpoch = plan.dropLast ? Math.floor(count / batchSize) : Math.ceil(count / batchSize);
    const [oh, ow] = plan.augment ? augmentedSize(h, w, plan.augment) : [h, w];
    this.itemShape = [c, oh, ow];
    this.table = normalizationTable(c, plan.mean, plan.std);
  }

  /** The order of the examples in `epoch` (dataset order without shuffle). */
  order(epoch: number): Int32Array {
    if (this.cachedEpoch !== epoch || !this.cachedOrder) {
      const { count, seed, shuffle } = this.plan;
      if (shuffle) {
        this.cachedOrder = epochPermutation(count, seed, epoch);
      } else {
        this.cachedOrder = new Int32Array(count);
        for (let i = 0; i < count; i++) this.cachedOrder[i] = i;
      }
      this.cachedEpoch = epoch;
    }
    return this.cachedOrder;
  }

  build(epoch: number, batch: number): RawBatch {
    const { count, batchSize, channels: c, height: h, width: w, augment, seed } = this.plan;
    const order = this.order(epoch);
    const start = batch * batchSize;
    const n = Math.min(batchSize, count - start);
    if (!(batch >= 0 && n > 0)) throw new AdaShiftError('ERR_ARG', `batch ${batch} is outside the epoch (${this.batchesPerEpoch} batches)`);
    const [, oh, ow] = this.itemShape;
    const inPer = c * h * w, outPer = c * oh * ow;
    const images = new Float32Array(n * outPer);
    const labels = new Int32Array(n);
    const indices = new Int32Array(n);
    const doAugment = !!augment && (!!augment.randomCrop || !!augment.horizontalFlip);
    for (let k = 0; k < n; k++) {
      const idx = order[start + k];
      indices[k] = idx;
      labels[k] = this.labels[idx];
      if (doAugment) {
        augmentWithTable(this.images, idx * inPer, images, k * outPer, c, h, w, this.table, exampleRng(seed, epoch, idx), augment!);
      } else {
        normalizeWithTable(this.images, idx * inPer, images, k * outPer, c, h, w, this.table);
      }
    }
    return { images, labels, indices };
  }
}

// ---- the loader ------------------------------------------------------------------------------

/** @internal Message from the loader to its worker. */
export interface WorkerRequest {
  id: number;
  epoch: number;
  batch: number;
}
/** @internal Reply from the worker: a batch, or what went wrong. */
export type WorkerReply = ({ id: number } & RawBatch) | { id: number; error: string };
/** @internal workerData of the loader worker. */
export interface WorkerInit {
  images: Uint8Array;
  labels: Uint8Array;
  plan: BatchPlan;
}

/** @internal The compiled worker next to this file, or undefined where there is none (TypeScript sources). */
export function loaderWorkerFile(): string | undefined {
  if (__filename.endsWith('.ts')) return undefined;
  const f = path.join(__dirname, 'loader-worker.js');
  return fs.existsSync(f) ? f : undefined;
}

function isShared(buf: ArrayBufferLike): boolean {
  return Object.prototype.toString.call(buf) === '[object SharedArrayBuffer]';
}

let warnedFallback = false;
function warnFallback(why: string): void {
  if (warnedFallback) return;
  warnedFallback = true;
  process.stderr.write(`adashift: data loader prefetch worker unavailable (${why}); building batches on the main thread\n`);
}

interface Pending {
  epoch: number;
  batch: number;
  resolve: (b: RawBatch) => void;
  reject: (e: Error) => void;
}

export class DataLoader {
  readonly batchesPerEpoch: number;
  readonly batchSize: number;
  /** C, H, W of one example as the loader outputs it (after any crop). */
  readonly itemShape: [number, number, number];
  private readonly builder: BatchBuilder;
  private readonly prefetch: boolean;
  private worker: Worker | undefined;
  private workerBroken = false;
  private sharedImages: Uint8Array | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private counts = { worker: 0, main: 0 };
  /** close() calls so far: an iteration begun before one stops (see close). */
  private closings = 0;

  constructor(private readonly dataset: Dataset, options: LoaderOptions) {
    const o = checkOptions('DataLoader', options, ['batchSize', 'shuffle', 'seed', 'augment', 'dropLast', 'prefetch']) as LoaderOptions;
    // 'false' is truthy: it would shuffle, drop, prefetch
    checkBooleans('DataLoader', o, ['shuffle', 'dropLast', 'prefetch']);
    const bs = o.batchSize;
    if (!(Number.isInteger(bs) && bs > 0)) throw new AdaShiftError('ERR_ARG', `DataLoader: batchSize must be a positive integer, got ${String(bs)}`);
    const seed = o.seed ?? 0;
    if (!Number.isSafeInteger(seed)) throw new AdaShiftError('ERR_ARG', `DataLoader: seed must be a safe integer, got ${String(seed)}`);
    const d = dataset;
    const per = d.channels * d.height * d.width;
    if (!(Number.isInteger(d.count) && d.count >= 0) || d.images.length !== d.count * per || d.labels.length !== d.count) {
      throw new AdaShiftError('ERR_SHAPE', `DataLoader: dataset ${d.name} has ${d.images.length} image bytes and ${d.labels.length} labels; expected ${d.count} x ${d.channels}x${d.height}x${d.width} = ${d.count * per} bytes and ${d.count} labels`);
    }
    if (o.augment) validateAugment(d.height, d.width, o.augment);
    this.batchSize = bs;
    this.prefetch = o.prefetch ?? true;
    this.builder = new BatchBuilder(d.images, d.labels, {
      count: d.count, channels: d.channels, height: d.height, width: d.width, mean: d.mean.slice(), std: d.std.slice(),
      batchSize: bs, shuffle: !!o.shuffle, seed, augment: o.augment ? structuredClone(o.augment) : undefined, dropLast: !!o.dropLast,
    });
    this.batchesPerEpoch = this.builder.batchesPerEpoch;
    this.itemShape = this.builder.itemShape;
  }

  /** Where batches are built: 'worker' (prefetched in a worker thread), 'main' (this thread: no compiled worker, or it failed), 'off' (prefetch disabled). */
  get prefetchMode(): 'worker' | 'main' | 'off' {
    if (!this.prefetch) return 'off';
    return this.workerBroken || !loaderWorkerFile() ? 'main' : 'worker';
  }

  /** How many batches were built in the worker and on this thread so far. */
  get stats(): { workerBatches: number; mainBatches: number } {
    return { workerBatches: this.counts.worker, mainBatches: this.counts.main };
  }

  /** The order of the examples in `epoch` (indices into the dataset). */
  order(epoch: number): Int32Array {
    return this.builder.order(epoch).slice();
  }

  /**
   * Batches of one epoch, starting at batch `startBatch` (resume mid-epoch). Order and
   * augmentation depend only on (seed, epoch, position): the same for any timing, prefetch on or
   * off, and when resuming.
   */
  epoch(epoch: number, startBatch = 0): AsyncIterableIterator<Batch> {
    if (!(Number.isSafeInteger(epoch) && epoch >= 0)) throw new AdaShiftError('ERR_ARG', `DataLoader.epoch: epoch must be a non-negative integer, got ${String(epoch)}`);
    if (!(Number.isInteger(startBatch) && startBatch >= 0 && startBatch <= this.batchesPerEpoch)) {
      throw new AdaShiftError('ERR_ARG', `DataLoader.epoch: startBatch must be an integer in 0..${this.batchesPerEpoch}, got ${String(startBatch)}`);
    }
    return this.iterate(epoch, startBatch);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /**
   * Stops the prefetch worker, if any (a later epoch() starts a new one). An epoch's iteration
   * begun before close() and not finished stops with ERR_DISPOSED at its next batch, rather than
   * starting a worker that would outlive the close.
   */
  async close(): Promise<void> {
    this.closings++;
    const w = this.worker;
    if (!w) return;
    this.worker = undefined; // its 'exit' event is now expected, not a failure
    try {
      await w.terminate();
    } finally {
      this.drainPendingLocally();
    }
  }

  private async *iterate(epoch: number, start: number): AsyncGenerator<Batch, void, undefined> {
    const end = this.batchesPerEpoch;
    const closings = this.closings;
    let ahead: Promise<RawBatch> | undefined;
    try {
      for (let b = start; b < end; b++) {
        if (this.closings !== closings) {
          throw new AdaShiftError('ERR_DISPOSED', `DataLoader: close() was called during epoch ${epoch}'s iteration (before batch ${b}); start a new epoch() after close()`);
        }
        const cur = ahead ?? this.request(epoch, b);
        ahead = undefined;
        const raw = await cur;
        // Ask for the next batch before handing this one out: the worker builds it while the
        // caller trains on this one.
        if (b + 1 < end && this.workerAvailable()) ahead = this.request(epoch, b + 1);
        yield this.wrap(raw, epoch, b);
      }
    } finally {
      // The caller stopped early: nobody will await the batch asked for ahead.
      ahead?.catch(() => undefined);
    }
  }

  private wrap(raw: RawBatch, epoch: number, index: number): Batch {
    // Re-view the arrays in this module's realm (they may come from the worker's messages).
    const images = new Float32Array(raw.images.buffer, raw.images.byteOffset, raw.images.length);
    const labels = new Int32Array(raw.labels.buffer, raw.labels.byteOffset, raw.labels.length);
    const indices = new Int32Array(raw.indices.buffer, raw.indices.byteOffset, raw.indices.length);
    const [c, h, w] = this.itemShape;
    return { images, labels, indices, shape: [labels.length, c, h, w], index, epoch };
  }

  private workerAvailable(): boolean {
    return this.ensureWorker() !== undefined;
  }

  private request(epoch: number, batch: number): Promise<RawBatch> {
    const w = this.ensureWorker();
    if (!w) {
      try {
        this.counts.main++;
        return Promise.resolve(this.builder.build(epoch, batch));
      } catch (e) {
        return Promise.reject(e);
      }
    }
    const id = this.nextId++;
    return new Promise<RawBatch>((resolve, reject) => {
      this.pending.set(id, { epoch, batch, resolve, reject });
      if (this.pending.size === 1) w.ref(); // keep the process alive while a batch is on its way
      w.postMessage({ id, epoch, batch } satisfies WorkerRequest);
    });
  }

  private ensureWorker(): Worker | undefined {
    if (!this.prefetch || this.workerBroken) return undefined;
    if (this.worker) return this.worker;
    const file = loaderWorkerFile();
    if (!file) return undefined;
    try {
      if (!this.sharedImages) {
        const imgs = this.dataset.images;
        if (isShared(imgs.buffer)) {
          this.sharedImages = imgs;
        } else {
          this.sharedImages = new Uint8Array(new SharedArrayBuffer(imgs.length));
          this.sharedImages.set(imgs);
        }
      }
      const init: WorkerInit = { images: this.sharedImages, labels: this.dataset.labels.slice(), plan: this.builder.plan };
      const w = new Worker(file, { workerData: init });
      w.unref();
      w.on('message', (m: WorkerReply) => this.onReply(m));
      w.on('error', (e: Error) => this.onWorkerGone(w, e.message));
      w.on('exit', (code: number) => this.onWorkerGone(w, `exited with code ${code}`));
      this.worker = w;
      return w;
    } catch (e) {
      this.workerBroken = true;
      warnFallback(e instanceof Error ? e.message : String(e));
      return undefined;
    }
  }

  private onReply(m: WorkerReply): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (this.pending.size === 0) this.worker?.unref();
    if ('error' in m) {
      p.reject(new AdaShiftError('ERR_ARG', `DataLoader: batch ${p.batch} of epoch ${p.epoch}: ${m.error}`));
    } else {
      this.counts.worker++;
      p.resolve(m);
    }
  }

  private onWorkerGone(w: Worker, why: string): void {
    if (this.worker !== w) return;
    this.worker = undefined;
    this.workerBroken = true;
    warnFallback(`worker ${why}`);
    this.drainPendingLocally();
  }

  /** Builds on this thread the batches the worker will not deliver (same results). */
  private drainPendingLocally(): void {
    const left = [...this.pending.values()];
    this.pending.clear();
    for (const p of left) {
      try {
        this.counts.main++;
        p.resolve(this.builder.build(p.epoch, p.batch));
      } catch (e) {
        p.reject(e as Error);
      }
    }
  }
}
