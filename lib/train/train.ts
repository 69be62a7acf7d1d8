// train(): a ResNet on a real dataset with the chosen activation, optimizer and schedule;
// per-epoch metrics (metrics.jsonl), a checkpoint each epoch (and on interruption), exact
// resume. evaluate(): test loss and accuracy of a model or a checkpoint.
import * as fs from 'fs';
import * as path from 'path';
import { AdaShiftError, check, checkOptions, fail } from '../errors';
import { Device, DeviceSpec, getNumThreads, resolveDevice, setNumThreads } from '../device';
import { environment } from '../provenance';
import { noGrad } from '../autograd';
import { ensureDir, writeAtomic } from '../io/safetensors';
import { ActivationName, ActivationOptions, ACTIVATION_OPTIONS, ACTIVATIONS } from '../nn/activation';
import { resnet, ResNet, ResNetName, RESNETS } from '../nn/resnet';
import { Module, TensorModule } from '../nn/module';
import { acquireRunLock, RunLock } from './lock';
import { checkLabelValues, crossEntropyWithCorrect } from '../ops/loss';
import type { Labels } from '../ops/loss';
import { LrScheduler, makeOptimizer, Optimizer, cosineWithWarmup, oneCycle, paramGroups, stepLr } from '../optim';
import type { BaseHyper, LrSchedule, OptimizerName } from '../optim';
import { getRngState, keep, manualSeed, memory, resetPeakMemory, setRngState, Tensor, tensor, tidy, zeros } from '../tensor';
import { CudaGraph } from '../graph';
import { AugmentOptions, DataLoader, Dataset, DatasetName, loadDataset } from '../data';
import { CheckpointData, disposeCheckpoint, loadCheckpoint, saveCheckpoint } from './checkpoint';

export type { OptimizerName };
export type ScheduleName = 'cosine' | 'step' | 'onecycle' | 'none';

export interface TrainOptions {
  model?: ResNetName;
  act?: ActivationName;
  dataset?: DatasetName;
  dataDir?: string;
  epochs?: number;
  batch?: number;
  opt?: OptimizerName;
  lr?: number;
  momentum?: number;
  wd?: number;
  schedule?: ScheduleName;
  /** Linear warm-up, in epochs (fractions allowed). */
  warmup?: number;
  labelSmoothing?: number;
  /** Random crop (padding) and horizontal flip; default on. */
  augment?: boolean;
  /** Default: the default device (setDefaultDevice, else ADASHIFT_DEVICE, else 'auto'). */
  device?: DeviceSpec;
  seed?: number;
  threads?: number;
  /** Output folder: metrics.jsonl, checkpoint.safetensors, config.json. */
  out?: string | null;
  limitTrain?: number;
  limitTest?: number;
  /** Continue from out/checkpoint.safetensors. */
  resume?: boolean;
  /**
   * Start a new run in an out that holds one (its checkpoint.safetensors), replacing it. Without
   * it (or resume) such an out is refused: the run there is not lost to a repeated command.
   */
  overwrite?: boolean;
  /** Stop after this many training batches in total (tests, interruption). */
  maxBatches?: number;
  /**
   * CUDA: capture the training step (forward, backward, optimizer) into a CUDA graph once and
   * replay it for every full-size batch (the optimizer is then capturable: its learning rate and
   * step count live on the device). The first batch of the run and a smaller last batch run
   * eagerly. Default false.
   */
  graph?: boolean;
  /**
   * The activation's own options, as nn.activation takes them: AdaShift-B's proj, AdaShift-MA's
   * grid, headDim, rect and keepContext, GELU's approximate (each read by its activation only;
   * the ResNet's BasicBlocks default AdaShift-MA's rect to 'linear', as the authors' code does).
   * Recorded with the run: eval and --resume rebuild the same model.
   */
  actOptions?: TrainActOptions;
}

/** nn.activation's options but the device (the run's); keepContext may change on resume. */
export type TrainActOptions = Omit<ActivationOptions, 'device'>;
const ACT_OPTION_KEYS = ACTIVATION_OPTIONS.filter((k): k is Exclude<typeof k, 'device'> => k !== 'device');

export interface EpochMetrics {
  epoch: number;
  trainLoss: number;
  trainAcc: number;
  testLoss: number;
  testAcc: number;
  /** The learning rate of the epoch's last training step. */
  lr: number;
  imagesPerSec: number;
  seconds: number;
  /**
   * The highest live tensor bytes on the training device during the epoch's training steps
   * (memory().peakBytes: the model, the optimizer's state, the batch and what forward keeps for
   * backward, everything live in the process; kernels' scratch space is not counted).
   */
  peakBytes: number;
}

export interface BatchInfo {
  epoch: number;
  batch: number;
  batches: number;
  loss: number;
  acc: number;
  imagesPerSec: number;
  /** The learning rate of this batch's step. */
  lr: number;
}

export interface TrainCallbacks {
  onStart?(info: { config: Required<Omit<TrainOptions, 'out' | 'dataDir' | 'limitTrain' | 'limitTest' | 'maxBatches' | 'threads' | 'overwrite'>>; params: number; trainCount: number; testCount: number; batchesPerEpoch: number; startEpoch: number; startBatch: number; device: string }): void;
  onBatch?(info: BatchInfo): void;
  onEvalStart?(epoch: number): void;
  onEpoch?(metrics: EpochMetrics): void;
  /** Checked after every batch: true stops training after saving a checkpoint. */
  shouldStop?(): boolean;
}

export interface TrainResult {
  history: EpochMetrics[];
  interrupted: boolean;
  checkpoint?: string;
  params: number;
  /** With graph: how many training steps ran as CUDA graph replays (0 otherwise). */
  graphSteps: number;
}

/** train()'s defaults for the options not given. */
export const TRAIN_DEFAULTS = {
  model: 'resnet20' as ResNetName,
  act: 'adashift-b' as ActivationName,
  dataset: 'fashion-mnist' as DatasetName,
  epochs: 10,
  batch: 128,
  opt: 'sgd' as OptimizerName,
  lr: 0.1,
  momentum: 0.9,
  wd: 5e-4,
  schedule: 'cosine' as ScheduleName,
  warmup: 1,
  labelSmoothing: 0,
  augment: true,
  seed: 0,
  resume: false,
  graph: false,
};

/** What a resumed run may be given anew; every other setting is the run's own. */
const RESUME_MAY_CHANGE = new Set(['epochs', 'device', 'graph', 'dataDir', 'threads', 'maxBatches', 'out', 'resume', 'overwrite']);
/** Every option train() takes (the compiler checks the list against TrainOptions, both ways). */
export const TRAIN_OPTIONS = ['model', 'act', 'dataset', 'dataDir', 'epochs', 'batch', 'opt', 'lr', 'momentum', 'wd', 'schedule', 'warmup', 'labelSmoothing', 'augment', 'device', 'seed', 'threads', 'out', 'limitTrain', 'limitTest', 'resume', 'overwrite', 'maxBatches', 'graph', 'actOptions'] as const satisfies readonly (keyof TrainOptions)[];
// An option added to TrainOptions but not to the list would be refused at run time: this fails to compile instead.
const UNLISTED_TRAIN_OPTIONS: Record<Exclude<keyof TrainOptions, (typeof TRAIN_OPTIONS)[number]>, never> = {};
void UNLISTED_TRAIN_OPTIONS;

function normalize(options: TrainOptions) {
  const o = { ...TRAIN_DEFAULTS, ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) } as typeof TRAIN_DEFAULTS & TrainOptions;
  check(RESNETS.includes(o.model), 'ERR_ARG', () => `unknown model '${o.model}'; expected one of ${RESNETS.join(', ')}`);
  check(ACTIVATIONS.includes(o.act), 'ERR_ARG', () => `unknown activation '${o.act}'; expected one of ${ACTIVATIONS.join(', ')}`);
  check(['sgd', 'adamw', 'lamb'].includes(o.opt), 'ERR_ARG', () => `unknown optimizer '${o.opt}'; expected sgd, adamw or lamb`);
  check(['cosine', 'step', 'onecycle', 'none'].includes(o.schedule), 'ERR_ARG', () => `unknown schedule '${o.schedule}'; expected cosine, step, onecycle or none`);
  const num = (v: unknown, ok: (x: number) => boolean) => typeof v === 'number' && ok(v);
  const int = (lo: number) => (x: number) => Number.isSafeInteger(x) && x >= lo;
  for (const [k, v, ok, expected] of [
    ['epochs', o.epochs, num(o.epochs, int(1)), 'an integer >= 1'],
    ['batch', o.batch, num(o.batch, int(1)), 'an integer >= 1'],
    ['lr', o.lr, num(o.lr, (x) => x > 0 && Number.isFinite(x)), 'a number > 0'],
    ['wd', o.wd, num(o.wd, (x) => x >= 0 && Number.isFinite(x)), 'a number >= 0'],
    ['momentum', o.momentum, num(o.momentum, (x) => x >= 0 && x < 1), 'a number in [0, 1)'],
    ['warmup', o.warmup, num(o.warmup, (x) => x >= 0 && Number.isFinite(x)), 'a number of epochs >= 0'],
    ['labelSmoothing', o.labelSmoothing, num(o.labelSmoothing, (x) => x >= 0 && x < 1), 'a number in [0, 1)'],
    ['seed', o.seed, num(o.seed, int(0)), 'an integer >= 0'],
    ['threads', o.threads, o.threads === undefined || num(o.threads, int(1)), 'an integer >= 1'],
    ['limitTrain', o.limitTrain, o.limitTrain === undefined || num(o.limitTrain, int(1)), 'an integer >= 1'],
    ['limitTest', o.limitTest, o.limitTest === undefined || num(o.limitTest, int(1)), 'an integer >= 1'],
    ['maxBatches', o.maxBatches, o.maxBatches === undefined || num(o.maxBatches, int(1)), 'an integer >= 1'],
    ['augment', o.augment, typeof o.augment === 'boolean', 'a boolean'],
    ['graph', o.graph, typeof o.graph === 'boolean', 'a boolean'],
    ['resume', o.resume, typeof o.resume === 'boolean', 'a boolean'],
    ['overwrite', o.overwrite, o.overwrite === undefined || typeof o.overwrite === 'boolean', 'a boolean'],
    ['dataset', o.dataset, typeof o.dataset === 'string', 'a dataset name'],
    ['dataDir', o.dataDir, o.dataDir === undefined || (typeof o.dataDir === 'string' && o.dataDir !== ''), 'a folder'],
    // '' would write nothing while the run reports its files
    ['out', o.out, o.out === undefined || o.out === null || (typeof o.out === 'string' && o.out !== ''), 'a folder (or null: write nothing)'],
  ] as [string, unknown, boolean, string][]) {
    check(ok, 'ERR_ARG', () => `train: invalid ${k}: ${JSON.stringify(v) ?? String(v)} (expected ${expected})`);
  }
  // The values themselves are checked by the activation modules when the model is built.
  check(o.actOptions === undefined || (o.actOptions !== null && typeof o.actOptions === 'object'), 'ERR_ARG', () => `train: invalid actOptions: ${String(o.actOptions)} (expected an object)`);
  if (o.actOptions) o.actOptions = actOptionsOf(checkOptions('train actOptions', o.actOptions, ACT_OPTION_KEYS));
  return o;
}

/**
 * Refuses settings given anew to something resumed (a run, a comparison) that keeps its own:
 * differ lists [name, given, its own], each named in the message.
 */
export function refuseChangedSettings(who: string, whose: string, instead: string, differ: [string, unknown, unknown][]): void {
  if (!differ.length) return;
  const was = (r: unknown) => (r === undefined ? 'not set' : JSON.stringify(r));
  const many = differ.length > 1;
  fail('ERR_ARG', `${who} keeps its settings, and ${differ.map(([k, v, r]) => `${k} ${JSON.stringify(v)} (${whose}: ${was(r)})`).join(', ')} ${many ? 'differ' : 'differs'}: leave ${many ? 'them' : 'it'} out, or ${instead}`);
}

/** The given activation options only, in a fixed key order (what a run records and compares). */
function actOptionsOf(a: TrainActOptions): TrainActOptions {
  return Object.fromEntries(ACT_OPTION_KEYS.filter((k) => a[k] !== undefined).map((k) => [k, a[k]]));
}


function augmentFor(ds: Dataset, on: boolean): AugmentOptions | undefined {
  if (!on) return undefined;
  // Digits are not mirror-symmetric; clothes and CIFAR objects are.
  return { randomCrop: { padding: ds.height <= 28 ? 2 : 4 }, horizontalFlip: ds.name !== 'mnist' };
}

// On a CUDA device the optimizer is capturable with or without graph: the step's scalars are then
// derived on the device either way, so a run with graph replays gives the eager run's bits.
function makeTrainOptimizer(model: ResNet, o: ReturnType<typeof normalize>, device: Device): Optimizer<BaseHyper> {
  const groups = paramGroups(model, { weightDecay: o.wd, exempt: 'bn-and-bias' });
  return makeOptimizer(o.opt, groups, { lr: o.lr, momentum: o.momentum, capturable: device.startsWith('cuda') });
}

/**
 * The training step as a CUDA graph: static input tensors for full-size batches, the step
 * captured once (after at least one eager step has made the optimizer's state) and replayed for
 * each later full-size batch. BatchNorm's host-side batch counters, which a replay does not run,
 * are advanced by what one step adds.
 */
class GraphStep {
  private graph: CudaGraph<{ loss: Tensor; correct: Tensor }> | null = null;
  private labels: Float32Array;
  private x: Tensor | null = null;
  private y: Tensor | null = null;
  private counters: { value: bigint }[] = [];
  private perStep: bigint[] = [];
  private replays = 0;

  constructor(
    private readonly model: ResNet,
    private readonly step: (x: Tensor, y: Tensor) => { loss: Tensor; correct: Tensor },
    private readonly device: Device,
    private readonly shape: number[],
    private readonly numClasses: number,
  ) {
    this.labels = new Float32Array(shape[0]);
  }

  /** Runs the step on a full-size batch; [loss, correct]. */
  run(images: Float32Array, labels: ArrayLike<number>): [number, number] {
    // The captured loss cannot check its labels on the host: checked here, as the eager step does.
    checkLabelValues('crossEntropy', labels, this.shape[0], this.numClasses);
    this.labels.set(labels);
    this.x ??= keep(zeros(this.shape, { device: this.device }));
    this.y ??= keep(zeros([this.shape[0]], { device: this.device }));
    this.x.copy_(images);
    this.y.copy_(this.labels);
    if (!this.graph) {
      this.counters = this.model.namedIntBuffers().map(([, b]) => b);
      const before = this.counters.map((b) => b.value);
      this.graph = CudaGraph.capture(() => this.step(this.x!, this.y!), { device: this.device });
      this.perStep = this.counters.map((b, i) => b.value - before[i]);
    } else {
      // the capture ran the step's host side (counters included) once, for its first replay
      this.counters.forEach((b, i) => (b.value += this.perStep[i]));
    }
    this.graph.replay();
    this.replays++;
    return [this.graph.outputs.loss.item(), this.graph.outputs.correct.item()];
  }

  get replayCount(): number {
    return this.replays;
  }

  dispose(): void {
    this.graph?.dispose();
    this.x?.dispose();
    this.y?.dispose();
    this.graph = null;
    this.x = this.y = null;
  }
}

function makeSchedule(o: ReturnType<typeof normalize>, stepsPerEpoch: number): LrSchedule | null {
  const total = o.epochs * stepsPerEpoch;
  const warmupSteps = Math.min(Math.round(o.warmup * stepsPerEpoch), total - 1);
  switch (o.schedule) {
    case 'cosine':
      return cosineWithWarmup({ baseLr: o.lr, warmupSteps, totalSteps: total });
    case 'step':
      return stepLr({ baseLr: o.lr, stepSize: Math.max(1, Math.round(total / 3)), gamma: 0.1 });
    case 'onecycle':
      return oneCycle({ maxLr: o.lr, totalSteps: total });
    case 'none':
      return null;
  }
}

/** Test loss and accuracy of a model over a dataset (eval mode, no graph). */
export function evaluate(model: TensorModule, ds: Dataset, options: { batch?: number; device?: DeviceSpec } = {}): { loss: number; acc: number; count: number } {
  options = checkOptions('evaluate', options, ['batch', 'device']);
  check(model instanceof Module && model.parameters().length > 0, 'ERR_ARG', () => `evaluate: model must be a module with parameters (e.g. nn.resnet), got ${model === null ? 'null' : typeof model}`);
  check(ds !== null && typeof ds === 'object' && Number.isInteger(ds.count) && ds.count >= 1 && ds.images instanceof Uint8Array && ds.labels instanceof Uint8Array, 'ERR_ARG', () => 'evaluate: ds must be a dataset of at least one image (data.loadDataset)');
  const batch = options.batch ?? 256;
  check(Number.isInteger(batch) && batch >= 1, 'ERR_ARG', () => `evaluate: batch must be a positive integer, got ${JSON.stringify(batch)}`);
  const device = resolveDevice(options.device ?? model.parameters()[0].device);
  const wasTraining = model.training;
  model.eval();
  let lossSum = 0, correct = 0;
  const per = ds.channels * ds.height * ds.width;
  const buf = new Float32Array(batch * per);
  try {
    for (let start = 0; start < ds.count; start += batch) {
      const n = Math.min(batch, ds.count - start);
      const images = buf.subarray(0, n * per);
      for (let i = 0; i < n; i++) {
        for (let c = 0; c < ds.channels; c++) {
          const m = ds.mean[c] * 255, s = ds.std[c] * 255;
          const off = (start + i) * per + c * ds.height * ds.width;
          const dst = i * per + c * ds.height * ds.width;
          for (let k = 0; k < ds.height * ds.width; k++) images[dst + k] = (ds.images[off + k] - m) / s;
        }
      }
      const labels = Int32Array.from(ds.labels.subarray(start, start + n));
      const [l, c] = noGrad(() =>
        tidy(() => {
          const logits = model.forward(tensor(images, [n, ds.channels, ds.height, ds.width], { device }));
          const r = crossEntropyWithCorrect(logits, labels);
          return [r.loss.item(), r.correct.item()];
        }),
      );
      lossSum += l * n;
      correct += c;
    }
  } finally {
    model.train(wasTraining);
  }
  return { loss: lossSum / ds.count, acc: correct / ds.count, count: ds.count };
}

function optimizerBuffers(opt: Optimizer<BaseHyper>): { buffers: Record<number, Record<string, import('../tensor').Tensor>>; meta: CheckpointData['meta']['optimizer'] } {
  const sd = opt.stateDict();
  const buffers: Record<number, Record<string, import('../tensor').Tensor>> = {};
  const state: Record<number, { step: number }> = {};
  for (const [i, s] of Object.entries(sd.state)) {
    state[Number(i)] = { step: s.step as number };
    for (const [k, v] of Object.entries(s)) if (k !== 'step') (buffers[Number(i)] ??= {})[k] = v as import('../tensor').Tensor;
  }
  return { buffers, meta: { kind: opt.constructor.name, state, paramGroups: sd.paramGroups } };
}

/** The files of a run in its folder (an overwrite removes them before the new run starts). */
const RUN_FILES = ['checkpoint.safetensors', 'metrics.jsonl', 'config.json'];

/** What a run holds that must be freed when it ends, however it ends. */
interface Held {
  resumed?: CheckpointData;
  model?: ResNet;
  opt?: ReturnType<typeof makeTrainOptimizer>;
  loader?: DataLoader;
  graph?: GraphStep;
  lock?: RunLock;
}

/** Trains a ResNet (see TrainOptions); resolves when done or stopped. */
export async function train(options: TrainOptions = {}, callbacks: TrainCallbacks = {}): Promise<TrainResult> {
  // The caller's options only: a checkpoint's saved settings (normalised below too) may come
  // from another version of the package.
  options = checkOptions('train', options, TRAIN_OPTIONS);
  const o = normalize(options);
  const device = resolveDevice(o.device);
  check(!o.graph || device.startsWith('cuda'), 'ERR_CUDA_GRAPH', () => `train: graph (CUDA graphs) needs a CUDA device; the device is '${device}'`);
  const out = o.out ?? null;
  const ckptFile = out ? path.join(out, 'checkpoint.safetensors') : null;
  // What the run has made, freed however it ends: an error before the first batch (a dataset
  // that does not load, an output folder that cannot be made) must not leave the checkpoint's
  // or the model's tensors alive in the caller's process.
  const held: Held = {};
  // threads: for this run; the process's setting is restored when it ends
  const threadsBefore = getNumThreads();
  if (o.threads !== undefined) setNumThreads(o.threads);
  try {
    return await runTraining(o, options, callbacks, device, out, ckptFile, held);
  } finally {
    if (o.threads !== undefined) setNumThreads(threadsBefore);
    if (held.resumed) disposeCheckpoint(held.resumed);
    held.graph?.dispose();
    await held.loader?.close();
    held.model?.dispose();
    held.opt?.dispose();
    held.lock?.release();
  }
}

/** train() once its options are checked: everything it makes goes into held as it is made. */
async function runTraining(
  o: ReturnType<typeof normalize>,
  options: TrainOptions,
  callbacks: TrainCallbacks,
  device: Device,
  out: string | null,
  ckptFile: string | null,
  held: Held,
): Promise<TrainResult> {
  // The output folder first (a bad one fails before the datasets are read and the model built),
  // and its lock: one process writes a run (a second one given the folder stops here, before it
  // reads the first one's checkpoint).
  if (out) {
    ensureDir(out);
    held.lock = acquireRunLock(out, 'training run');
  }
  let resumed: CheckpointData | null = null;
  if (o.resume) {
    check(ckptFile !== null, 'ERR_ARG', () => 'train: resume needs an output folder (out) holding checkpoint.safetensors');
    if (!fs.existsSync(ckptFile!)) throw new AdaShiftError('ERR_IO', `nothing to resume: ${ckptFile} does not exist (a run stopped before its first checkpoint starts again without resume)`);
    resumed = held.resumed = loadCheckpoint(ckptFile!, device);
  }
  // The run's configuration is the checkpoint's when resuming (flags other than epochs, device,
  // threads and graph cannot change a run half-way): a setting given now that differs from the
  // run's is refused rather than dropped without a word.
  const saved = resumed?.meta.config as TrainOptions | undefined;
  if (saved) {
    const run = normalize(saved) as unknown as Record<string, unknown>;
    // the activation's options one by one, as actOptions.<name> (keepContext may change)
    const runAct = (run.actOptions ?? {}) as Record<string, unknown>;
    const given: [string, unknown, unknown][] = [
      ...Object.entries(options).filter(([k]) => k !== 'actOptions').map(([k, v]): [string, unknown, unknown] => [k, v, run[k]]),
      ...Object.entries(options.actOptions ?? {}).filter(([k]) => k !== 'keepContext').map(([k, v]): [string, unknown, unknown] => [`actOptions.${k}`, v, runAct[k]]),
    ];
    refuseChangedSettings('train: a resumed run', "the run's", 'start a new run in another folder', given.filter(([k, v, r]) => v !== undefined && !RESUME_MAY_CHANGE.has(k) && v !== r));
  }
  // keepContext (memory against time, the same results) may change when resuming.
  const keepContext = options.actOptions?.keepContext;
  const cfg = saved
    ? normalize({
        ...saved, epochs: options.epochs ?? saved.epochs, device: o.device, graph: o.graph, dataDir: options.dataDir ?? saved.dataDir, resume: true, out, maxBatches: o.maxBatches,
        ...(keepContext !== undefined ? { actOptions: { ...saved.actOptions, keepContext } } : {}),
      })
    : o;
  check(o.resume || o.overwrite === true || ckptFile === null || !fs.existsSync(ckptFile), 'ERR_ARG', () => `train: ${out} already holds a run (checkpoint.safetensors): continue it with resume (--resume), replace it with overwrite (--overwrite), or write to another folder`);
  // a run this one replaces goes whole, so that no file of it can pass for the new run's if
  // this one stops early
  if (out && o.overwrite === true && !o.resume) for (const f of RUN_FILES) fs.rmSync(path.join(out, f), { force: true });

  const trainSet = loadDataset(cfg.dataset, 'train', { dataDir: cfg.dataDir, limit: cfg.limitTrain });
  const testSet = loadDataset(cfg.dataset, 'test', { dataDir: cfg.dataDir, limit: cfg.limitTest });
  manualSeed(cfg.seed);
  const model = (held.model = resnet(cfg.model, { act: cfg.act, actOptions: cfg.actOptions, numClasses: trainSet.numClasses, inChannels: trainSet.channels, smallInput: true, device }));
  const loader = (held.loader = new DataLoader(trainSet, { batchSize: cfg.batch, shuffle: true, seed: cfg.seed, augment: augmentFor(trainSet, cfg.augment), dropLast: false }));
  const opt = (held.opt = makeTrainOptimizer(model, cfg, device));
  const schedule = makeSchedule(cfg, loader.batchesPerEpoch);
  const scheduler = schedule ? new LrScheduler(opt, schedule) : null;
  const history: EpochMetrics[] = [];
  let startEpoch = 0, startBatch = 0;
  let partial = { lossSum: 0, correct: 0, seen: 0, seconds: 0 };
  if (resumed) {
    model.loadStateDict(resumed.model);
    const sd = opt.stateDict();
    const state: Record<number, Record<string, unknown>> = {};
    for (const [i, s] of Object.entries(resumed.meta.optimizer.state)) state[Number(i)] = { ...s, ...(resumed.optimizerBuffers[Number(i)] ?? {}) };
    opt.loadStateDict({ state: state as typeof sd.state, paramGroups: resumed.meta.optimizer.paramGroups as typeof sd.paramGroups });
    if (scheduler && resumed.meta.scheduler) scheduler.loadStateDict(resumed.meta.scheduler);
    setRngState(resumed.meta.rng);
    startEpoch = resumed.meta.epoch;
    startBatch = resumed.meta.batch;
    if (resumed.meta.partial) partial = { ...resumed.meta.partial };
    // one by one: spreading a long history into push's arguments overflows the stack
    for (const h of resumed.meta.history as unknown as EpochMetrics[]) history.push(h);
    disposeCheckpoint(resumed);
    held.resumed = undefined;
  }
  const params = model.numParameters();
  if (out && !resumed) {
    const config = { ...cfg, resume: undefined, overwrite: undefined, out: undefined, provenance: environment(device) };
    writeAtomic(path.join(out, 'config.json'), [Buffer.from(JSON.stringify(config, null, 2) + '\n')]);
  } else if (out && saved && cfg.epochs !== saved.epochs) {
    // a resume that changes the length of the run: config.json says so (its provenance stays the start's)
    const file = path.join(out, 'config.json');
    let config: Record<string, unknown> = {};
    try {
      config = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch {
      config = { ...cfg, resume: undefined, overwrite: undefined, out: undefined };
    }
    writeAtomic(file, [Buffer.from(JSON.stringify({ ...config, epochs: cfg.epochs }, null, 2) + '\n')]);
  }
  const { out: _o, dataDir: _d, limitTrain: _lt, limitTest: _ls, maxBatches: _m, threads: _t, overwrite: _w, ...shown } = cfg;
  // the device as resolved (the options may leave it to the default)
  callbacks.onStart?.({ config: { ...shown, device } as never, params, trainCount: trainSet.count, testCount: testSet.count, batchesPerEpoch: loader.batchesPerEpoch, startEpoch, startBatch, device });

  const save = (epoch: number, batch: number, part: typeof partial | null) => {
    if (!ckptFile) return;
    const ob = optimizerBuffers(opt);
    saveCheckpoint(ckptFile, {
      model: model.stateDict(),
      optimizerBuffers: ob.buffers,
      meta: {
        config: { ...cfg, resume: false, overwrite: undefined, out: undefined, maxBatches: undefined },
        epoch,
        batch,
        optimizer: ob.meta,
        scheduler: scheduler ? scheduler.stateDict() : null,
        rng: getRngState(),
        partial: part,
        history: history as unknown as Record<string, unknown>[],
      },
    });
  };
  const writeMetrics = () => {
    if (out) writeAtomic(path.join(out, 'metrics.jsonl'), [Buffer.from(history.map((h) => JSON.stringify(h)).join('\n') + (history.length ? '\n' : ''))]);
  };

  let interrupted = false;
  let batchesRun = 0;
  const step = (x: Tensor, y: Labels) => {
    const logits = model.forward(x);
    const r = crossEntropyWithCorrect(logits, y, { labelSmoothing: cfg.labelSmoothing });
    r.loss.backward();
    opt.step();
    opt.zeroGrad();
    return r;
  };
  const graph = cfg.graph ? (held.graph = new GraphStep(model, step, device, [cfg.batch, trainSet.channels, trainSet.height, trainSet.width], trainSet.numClasses)) : null;
  for (let epoch = startEpoch; epoch < cfg.epochs && !interrupted; epoch++) {
    model.train();
    let { lossSum, correct, seen, seconds } = epoch === startEpoch ? partial : { lossSum: 0, correct: 0, seen: 0, seconds: 0 };
    const first = epoch === startEpoch ? startBatch : 0;
    let lastBatch = first;
    // the learning rate of the epoch's last step (reported; the schedule has moved on after it)
    let lr = opt.paramGroups[0].lr;
    resetPeakMemory(device);
    for await (const b of loader.epoch(epoch, first)) {
      const t0 = process.hrtime.bigint();
      const n = b.shape[0];
      lr = opt.paramGroups[0].lr;
      // With graph: replays for full-size batches once one eager step has run in this process.
      const [l, c] = graph && n === cfg.batch && batchesRun > 0
        ? graph.run(b.images, b.labels)
        : tidy(() => {
            const r = step(tensor(b.images, b.shape, { device }), b.labels);
            return [r.loss.item(), r.correct.item()];
          });
      scheduler?.step();
      if (!Number.isFinite(l)) {
        throw new AdaShiftError('ERR_ARG', `training diverged: loss is ${l} at epoch ${epoch + 1}, batch ${b.index + 1}; lower the learning rate (--lr)`);
      }
      seconds += Number(process.hrtime.bigint() - t0) / 1e9;
      lossSum += l * n;
      correct += c;
      seen += n;
      lastBatch = b.index + 1;
      batchesRun++;
      callbacks.onBatch?.({ epoch, batch: b.index, batches: loader.batchesPerEpoch, loss: lossSum / seen, acc: correct / seen, imagesPerSec: seen / seconds, lr });
      // One turn of the event loop per batch: when the loader is ahead, its batches come as
      // resolved promises and the loop would never reach its timers and signal handlers (a
      // Ctrl-C took effect only when training ended). A turn costs microseconds.
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (callbacks.shouldStop?.() || (cfg.maxBatches !== undefined && batchesRun >= cfg.maxBatches)) {
        if (lastBatch < loader.batchesPerEpoch) {
          interrupted = true;
          save(epoch, lastBatch, { lossSum, correct, seen, seconds });
          break;
        }
        interrupted = true;
      }
    }
    if (interrupted && lastBatch < loader.batchesPerEpoch) break;
    const peakBytes = memory().devices.find((d) => d.device === device)?.peakBytes ?? 0;
    callbacks.onEvalStart?.(epoch);
    // at the training batch size: evaluation keeps a forward's activations until each batch ends,
    // so a larger batch would need more memory than the training step the user sized
    const ev = evaluate(model, testSet, { device, batch: cfg.batch });
    const m: EpochMetrics = {
      epoch: epoch + 1,
      trainLoss: lossSum / seen,
      trainAcc: correct / seen,
      testLoss: ev.loss,
      testAcc: ev.acc,
      lr,
      imagesPerSec: seen / seconds,
      seconds,
      peakBytes,
    };
    history.push(m);
    // the checkpoint first: it is the run (metrics.jsonl is its history written out), so a stop
    // between the two writes leaves metrics one epoch behind, which the resume rewrites
    save(epoch + 1, 0, null);
    writeMetrics();
    callbacks.onEpoch?.(m);
  }
  return { history, interrupted, checkpoint: ckptFile ?? undefined, params, graphSteps: graph?.replayCount ?? 0 };
}

/** Loads a checkpoint's model and evaluates it on its dataset's test split (or another). */
export function evaluateCheckpoint(file: string, options: { dataset?: DatasetName; dataDir?: string; limitTest?: number; limit?: number; device?: DeviceSpec; batch?: number } = {}) {
  options = checkOptions('evaluateCheckpoint', options, ['dataset', 'dataDir', 'limitTest', 'limit', 'device', 'batch']);
  check(options.limit === undefined || options.limitTest === undefined, 'ERR_ARG', () => 'evaluateCheckpoint: give limitTest or its older name limit, not both');
  const device = resolveDevice(options.device);
  const ck = loadCheckpoint(file, device);
  const cfg = ck.meta.config as TrainOptions;
  try {
    // The run's data folder holds the run's dataset: another dataset comes from its own folder
    // (dataDir, else its default), not from files of the same names in the run's.
    const dataset = options.dataset ?? cfg.dataset ?? TRAIN_DEFAULTS.dataset;
    const dataDir = options.dataDir ?? (dataset === (cfg.dataset ?? TRAIN_DEFAULTS.dataset) ? cfg.dataDir : undefined);
    const ds = loadDataset(dataset, 'test', { dataDir, limit: options.limitTest ?? options.limit });
    const model = resnet(cfg.model ?? 'resnet20', { act: cfg.act, actOptions: cfg.actOptions, numClasses: ds.numClasses, inChannels: ds.channels, smallInput: true, device });
    try {
      model.loadStateDict(ck.model);
      return { ...evaluate(model, ds, { device, batch: options.batch }), epoch: ck.meta.epoch, model: cfg.model, act: cfg.act, dataset: ds.name };
    } finally {
      model.dispose();
    }
  } finally {
    disposeCheckpoint(ck);
  }
}
