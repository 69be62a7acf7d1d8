// `adashift bench step`: the median time of one training step (forward, cross-entropy, backward,
// SGD with momentum and weight decay, zeroGrad, loss read back) of ResNets with each activation,
// images/s and peak tensor memory per step; with PyTorch present, the same models in PyTorch
// (bench/torch_step.py, a long-lived peer) measured in the same run, each of our steps
// alternating with one of theirs so that machine noise affects both alike. Sections: 'step'
// (models x activations), 'threads' (1 thread vs all, CPU), 'batch' (batch sizes).
import { ChildProcess, spawn } from 'child_process';
import * as os from 'os';
import { Device, getAllowTF32, resolveDevice } from '../device';
import { AdaShiftError, check, checkOptions } from '../errors';
import { CudaGraph } from '../graph';
import { native } from '../native';
import { ActivationName, ACTIVATIONS } from '../nn/activation';
import { resnet, ResNet, ResNetName } from '../nn/resnet';
import { crossEntropyWithCorrect } from '../ops/loss';
import { makeOptimizer, paramGroups } from '../optim';
import type { BaseHyper, Optimizer } from '../optim';
import { manualSeed, memory, randn, resetPeakMemory, Tensor, tensor, tidy } from '../tensor';
import { applyTF32, environment, findTorchPython, median, noTorchReason, pairedRatio, resultDir, scriptPath, timeIt, writeResult } from './common';
import { cpuLabel } from '../provenance';

/** A benchmark model: a ResNet with its input and batch. */
export interface StepModelSpec {
  /** Name in the results ('resnet20', 'resnet50-small', 'resnet50'). */
  name: string;
  model: ResNetName;
  batch: number;
  /** [C, H, W] */
  input: [number, number, number];
  classes: number;
  smallInput: boolean;
  /** Measured by default only on a GPU. */
  gpuOnly?: boolean;
}

export const STEP_MODELS: Record<string, StepModelSpec> = {
  resnet20: { name: 'resnet20', model: 'resnet20', batch: 64, input: [1, 28, 28], classes: 10, smallInput: true },
  'resnet50-small': { name: 'resnet50-small', model: 'resnet50', batch: 32, input: [3, 32, 32], classes: 10, smallInput: true },
  resnet50: { name: 'resnet50', model: 'resnet50', batch: 128, input: [3, 224, 224], classes: 1000, smallInput: false, gpuOnly: true },
};
export const STEP_MODEL_NAMES = Object.keys(STEP_MODELS);

export type StepSection = 'step' | 'threads' | 'batch';
export const STEP_SECTIONS: readonly StepSection[] = ['step', 'threads', 'batch'];
export const DEFAULT_BATCH_SIZES = [16, 32, 64, 128, 256];

/**
 * The optimizers a measured step can use (ours and PyTorch's, with BN and bias parameters exempt
 * from weight decay): SGD with momentum (default), AdamW, and timm's LAMB (no PyTorch peer: torch
 * has no LAMB). On a CUDA device ours is capturable, so --graph can capture its update.
 */
export const STEP_OPTIMIZERS = {
  sgd: { kind: 'sgd', lr: 0.01, momentum: 0.9, weightDecay: 5e-4, weightDecayExempt: 'bn-and-bias' },
  adamw: { kind: 'adamw', lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.05, weightDecayExempt: 'bn-and-bias' },
  lamb: { kind: 'lamb', lr: 1e-3, betas: [0.9, 0.999], eps: 1e-6, weightDecay: 0.02, maxGradNorm: 1.0, weightDecayExempt: 'bn-and-bias' },
} as const;
export type StepOptimizerName = keyof typeof STEP_OPTIMIZERS;
export const STEP_OPTIMIZER_NAMES = Object.keys(STEP_OPTIMIZERS) as StepOptimizerName[];

/** The optimizer of a measured step. */
function stepOptimizer(model: ResNet, name: StepOptimizerName, device: Device): Optimizer<BaseHyper> {
  const h: { lr: number; weightDecay: number; momentum?: number; betas?: readonly number[]; eps?: number; maxGradNorm?: number } = STEP_OPTIMIZERS[name];
  const groups = paramGroups(model, { weightDecay: h.weightDecay, exempt: 'bn-and-bias' });
  return makeOptimizer(name, groups, {
    lr: h.lr, momentum: h.momentum, betas: h.betas ? [h.betas[0], h.betas[1]] : undefined, eps: h.eps, maxGradNorm: h.maxGradNorm, capturable: device.startsWith('cuda'),
  });
}

export interface BenchStepOptions {
  /** Names of STEP_MODELS (default resnet20, resnet50-small, and resnet50 on a GPU). */
  models?: string[];
  acts?: ActivationName[];
  /** Batch size for every model of the 'step' section (default: each model's). */
  batch?: number;
  /** Override of the input's H = W (tests: tiny inputs). */
  inputSize?: number;
  device?: string;
  /** CPU threads for the 'step' and 'batch' sections (default: the current setting). */
  threads?: number;
  repeats?: number;
  warmup?: number;
  /** false: no PyTorch side. */
  torch?: boolean;
  /**
   * CUDA only: also time the step captured as one CUDA graph (copy of the batch into the static
   * input, replay, loss read back), reported as `graph` next to the eager time.
   */
  graph?: boolean;
  /** The python to run the PyTorch peer with (default: ADASHIFT_PYTHON if set, else a search). */
  python?: string;
  /** The optimizer of the step (default 'sgd'). */
  opt?: StepOptimizerName;
  /**
   * CUDA convolutions in TF32 for this run (setAllowTF32; default: the current setting), and
   * PyTorch's peer set the same way (its cuDNN convolutions default to TF32).
   */
  tf32?: boolean;
  sections?: StepSection[];
  /** Batch sizes of the 'batch' section (default 16, 32, 64, 128, 256). */
  batchSizes?: number[];
  outDir?: string | null;
  onResult?: (section: StepSection, row: StepRow | StepError) => void;
}

export interface TorchStep {
  ms: number;
  msAll: number[];
  imagesPerSec: number;
  /** CUDA: torch.cuda.max_memory_allocated over the timed steps; null on CPU. */
  peakBytes: number | null;
}

export interface StepRow {
  model: string;
  act: ActivationName;
  batch: number;
  input: number[];
  classes: number;
  threads: number;
  params: number;
  /** Median of the timed steps. */
  ms: number;
  msAll: number[];
  imagesPerSec: number;
  /** Highest live tensor bytes during a timed step (memory().peakBytes after resetPeakMemory). */
  peakBytes: number;
  /** Live tensor bytes before a step (parameters, optimizer state, the batch). */
  baseBytes: number;
  torch?: TorchStep | { error: string };
  /** PyTorch's time over ours (> 1: we are faster): the ratio of the two medians. */
  speedupVsTorch?: number;
  /**
   * The same per step: PyTorch's step over ours just before it (the two alternate), median and
   * quartiles over the timed steps; the machine's drift between steps cancels in each pair.
   */
  speedupVsTorchPaired?: { median: number; q1: number; q3: number };
  /** The same step replayed as a CUDA graph (bench step --graph, CUDA only). */
  graph?: GraphStep | { error: string };
  /**
   * This activation's step over ReLU's in the same round, median and quartiles over the rounds:
   * only when the activations were timed round robin (the step section without a PyTorch peer,
   * with relu among the activations).
   */
  vsReluPaired?: { median: number; q1: number; q3: number };
}

export interface GraphStep {
  ms: number;
  msAll: number[];
  imagesPerSec: number;
  /** Device bytes of the graph's memory pool. */
  poolBytes: number;
  /** Eager ms over graph ms (> 1: the graph is faster). */
  speedupVsEager: number;
}

/** A configuration our side could not run (e.g. out of device memory); the run goes on. */
export interface StepError {
  model: string;
  act: ActivationName;
  batch: number;
  threads: number;
  error: string;
}

export function isStepError(r: StepRow | StepError): r is StepError {
  return 'error' in r;
}

// ---- one model on our side ----------------------------------------------------------------

/** A model, its optimizer and one fixed random batch: the training step to time. */
export class StepCase {
  readonly model: ResNet;
  readonly opt: Optimizer<BaseHyper>;
  readonly x: Tensor;
  readonly labels: Int32Array;
  constructor(readonly spec: StepModelSpec, readonly act: ActivationName, readonly device: Device, optimizer: StepOptimizerName = 'sgd') {
    manualSeed(0);
    this.model = resnet(spec.model, { act, numClasses: spec.classes, inChannels: spec.input[0], smallInput: spec.smallInput, device });
    this.model.train();
    this.opt = stepOptimizer(this.model, optimizer, device);
    this.x = randn([spec.batch, ...spec.input], { device });
    this.labels = Int32Array.from({ length: spec.batch }, (_, i) => (i * 7919 + 13) % spec.classes);
  }

  /**
   * One training step as train() does it. `hooks` wrap the loss and the optimizer update (the
   * profiler uses them to attribute their native calls).
   */
  run(hooks?: { loss<R>(fn: () => R, logits: Tensor): R; optimizer(fn: () => void): void }): void {
    tidy(() => {
      const logits = this.model.forward(this.x);
      const r = hooks ? hooks.loss(() => crossEntropyWithCorrect(logits, this.labels), logits) : crossEntropyWithCorrect(logits, this.labels);
      r.loss.backward();
      const update = () => {
        this.opt.step();
        this.opt.zeroGrad();
      };
      if (hooks) hooks.optimizer(update);
      else update();
      r.loss.item();
      r.correct.item();
    });
  }

  /**
   * The step as a CUDA graph: one eager warm-up step, then the capture. Each replay is one
   * training step on the static batch `x` and the labels `labels`, a tensor made before the
   * capture that every replay reads: dispose it only after the graph.
   */
  captureGraph(): { graph: CudaGraph<{ loss: Tensor; correct: Tensor }>; labels: Tensor } {
    const y = tensor(Float32Array.from(this.labels), [this.labels.length], { device: this.device });
    try {
      const graph = CudaGraph.capture(
        () => {
          const r = crossEntropyWithCorrect(this.model.forward(this.x), y);
          r.loss.backward();
          this.opt.step();
          this.opt.zeroGrad();
          return r;
        },
        { device: this.device, warmup: 1 },
      );
      return { graph, labels: y };
    } catch (e) {
      y.dispose();
      throw e;
    }
  }

  /** Seconds for one step, with the device's peak tensor bytes during it. */
  timedStep(): { seconds: number; peakBytes: number; baseBytes: number } {
    native.synchronize(this.device);
    const baseBytes = deviceBytes(this.device).bytes;
    resetPeakMemory(this.device);
    const seconds = timeIt(this.device, () => this.run());
    return { seconds, peakBytes: deviceBytes(this.device).peakBytes, baseBytes };
  }

  params(): number {
    return this.model.numParameters();
  }

  /**
   * Bytes this case keeps between steps: the model's parameters and buffers, the optimizer's
   * state and the batch (float32), counted from the tensors themselves, so other live tensors
   * (other cases', garbage released meanwhile) do not enter it.
   */
  residentBytes(): number {
    const own = new Set<Tensor>([...this.model.parameters(), ...this.model.namedBuffers().map(([, b]) => b), this.x]);
    for (const st of Object.values(this.opt.stateDict().state)) for (const v of Object.values(st)) if (v instanceof Tensor) own.add(v);
    let bytes = 0;
    for (const t of own) bytes += t.numel * 4;
    return bytes;
  }

  dispose(): void {
    this.model.dispose();
    this.x.dispose();
    this.opt.dispose();
  }
}

function deviceBytes(device: Device): { bytes: number; peakBytes: number } {
  const d = memory().devices.find((e) => e.device === device);
  return d ? { bytes: d.bytes, peakBytes: d.peakBytes } : { bytes: 0, peakBytes: 0 };
}

/** The spec with the run's overrides (batch, input size). */
export function modelSpec(name: string, overrides: { batch?: number; inputSize?: number } = {}): StepModelSpec {
  const base = STEP_MODELS[name];
  if (!base) throw new Error(`unknown benchmark model '${name}'; expected one of ${STEP_MODEL_NAMES.join(', ')}`);
  const s = overrides.inputSize;
  return { ...base, batch: overrides.batch ?? base.batch, input: s ? [base.input[0], s, s] : [...base.input] };
}

// ---- the PyTorch peer ---------------------------------------------------------------------

type PeerReply = { ok: boolean; error?: string; [k: string]: unknown };

/** The longest one PyTorch peer request may take (a ResNet-50 224x224 step on one CPU thread takes seconds). */
const PEER_TIMEOUT_MS = 300_000;

/** bench/torch_step.py as a child process, one JSON request / reply per line. */
export class TorchPeer {
  private buffer = '';
  private waiters: ((r: PeerReply) => void)[] = [];
  private exited: string | null = null;
  private stderrTail = '';
  readonly version: Promise<string | null>;

  private constructor(private proc: ChildProcess) {
    proc.stdout!.setEncoding('utf8');
    proc.stdout!.on('data', (chunk: string) => {
      this.buffer += chunk;
      let nl: number;
      while ((nl = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, nl).trim();
        this.buffer = this.buffer.slice(nl + 1);
        if (!line.startsWith('{')) continue;
        let r: PeerReply;
        try {
          r = JSON.parse(line) as PeerReply;
        } catch {
          continue;
        }
        this.waiters.shift()?.(r);
      }
    });
    proc.stderr!.setEncoding('utf8');
    proc.stderr!.on('data', (chunk: string) => {
      this.stderrTail = (this.stderrTail + chunk).slice(-2000);
    });
    proc.on('exit', (code, signal) => this.onGone(`the PyTorch peer exited (${signal ?? `code ${code}`})`));
    proc.on('error', (e) => this.onGone(`the PyTorch peer failed: ${e.message}`));
    proc.stdin!.on('error', () => undefined);
    // the hello line
    this.version = new Promise<PeerReply>((res) => this.waiters.push(res)).then((r) => (r.ok ? String(r.torch) : null));
  }

  /** The peer is gone (exited, failed, or stopped for hanging): every waiting request gets why. */
  private onGone(why: string): void {
    if (this.exited) return;
    const tail = this.stderrTail.trim().split('\n').slice(-3).join(' | ');
    this.exited = `${why}${tail ? `: ${tail}` : ''}`;
    for (const w of this.waiters.splice(0)) w({ ok: false, error: this.exited });
  }

  /** Whether the peer has gone (the terminal's footer says so instead of "alternating"). */
  get gone(): string | null {
    return this.exited;
  }

  static async start(python: string): Promise<TorchPeer> {
    const proc = spawn(python, [scriptPath('torch_step.py')], { stdio: ['pipe', 'pipe', 'pipe'] });
    const peer = new TorchPeer(proc);
    const v = await peer.version;
    if (v === null) throw new Error(peer.exited ?? 'the PyTorch peer did not start');
    return peer;
  }

  /**
   * One request; a reply that does not come within timeoutMs (a peer that hangs) ends the peer:
   * it is killed and this and every later request answer with the reason.
   */
  request(req: Record<string, unknown>, timeoutMs = PEER_TIMEOUT_MS): Promise<PeerReply> {
    if (this.exited) return Promise.resolve({ ok: false, error: this.exited });
    return new Promise<PeerReply>((res) => {
      const timer = setTimeout(() => {
        this.onGone(`the PyTorch peer did not answer '${String(req.cmd)}' within ${timeoutMs / 1000} s and was stopped`);
        this.proc.kill('SIGKILL');
      }, timeoutMs);
      this.waiters.push((r) => {
        clearTimeout(timer);
        res(r);
      });
      this.proc.stdin!.write(JSON.stringify(req) + '\n');
    });
  }

  async close(): Promise<void> {
    if (this.exited) return;
    const gone = new Promise<void>((res) => this.proc.once('exit', () => res()));
    await this.request({ cmd: 'quit' });
    this.proc.stdin!.end();
    const timer = setTimeout(() => this.proc.kill(), 5000);
    await gone;
    clearTimeout(timer);
  }
}

// ---- measuring ----------------------------------------------------------------------------

interface Ctx {
  device: Device;
  repeats: number;
  warmup: number;
  peer: TorchPeer | null;
  graph: boolean;
  opt: StepOptimizerName;
}

/** Replays of the captured step: a new batch copied in (device to device), replay, loss read. */
function measureGraph(ours: StepCase, ctx: Ctx, eagerMs: number): GraphStep | { error: string } {
  let captured: { graph: CudaGraph<{ loss: Tensor; correct: Tensor }>; labels: Tensor } | null = null;
  const batch = randn(ours.x.shape, { device: ctx.device });
  try {
    captured = ours.captureGraph();
    const g = captured.graph;
    const once = () => {
      ours.x.copy_(batch);
      g.replay();
      g.outputs.loss.item();
      g.outputs.correct.item();
    };
    for (let i = 0; i < ctx.warmup; i++) once();
    const times: number[] = [];
    for (let i = 0; i < ctx.repeats; i++) times.push(timeIt(ctx.device, once));
    const ms = median(times) * 1e3;
    return { ms, msAll: times.map((t) => t * 1e3), imagesPerSec: ours.spec.batch / (ms / 1e3), poolBytes: g.poolBytes, speedupVsEager: eagerMs / ms };
  } catch (e) {
    return { error: (e as Error).message };
  } finally {
    captured?.graph.dispose();
    captured?.labels.dispose();
    batch.dispose();
  }
}

function torchDevice(device: string): string {
  return device.startsWith('cuda') ? device : 'cpu';
}

/** The row of our timed steps (seconds), before any PyTorch or graph fields. */
function ourRow(ours: StepCase, threads: number, times: number[], peak: number, base: number): StepRow {
  const spec = ours.spec;
  const ms = median(times) * 1e3;
  return {
    model: spec.name,
    act: ours.act,
    batch: spec.batch,
    input: [...spec.input],
    classes: spec.classes,
    threads,
    params: ours.params(),
    ms,
    msAll: times.map((t) => t * 1e3),
    imagesPerSec: spec.batch / (ms / 1e3),
    peakBytes: peak,
    baseBytes: base,
  };
}

/**
 * Without a PyTorch peer: the models of all the activations built (each warmed up as it is
 * built), kept, and their steps timed round robin (round i of every activation before round i + 1
 * of any), so each activation's step can be set against ReLU's of the same round (vsReluPaired)
 * with the machine's drift cancelled. A configuration that fails to build or to step gets an
 * error row; the others go on.
 */
async function measureRoundRobin(ctx: Ctx, spec: StepModelSpec, acts: ActivationName[], threads: number): Promise<(StepRow | StepError)[]> {
  const cases: (StepCase | null)[] = [];
  const errors: (string | null)[] = [];
  const times: number[][] = acts.map(() => []);
  // Memory per model as if it ran alone: its resident bytes (parameters, buffers, the optimizer's
  // state, the batch: StepCase.residentBytes) plus the most a timed step of it adds on top of
  // all that is live.
  const transient = acts.map(() => 0);
  try {
    const step = (k: number, timed: boolean) => {
      const c = cases[k];
      if (!c || errors[k]) return;
      try {
        if (!timed) return c.run();
        const s = c.timedStep();
        times[k].push(s.seconds);
        transient[k] = Math.max(transient[k], s.peakBytes - s.baseBytes);
      } catch (e) {
        errors[k] = (e as Error).message;
      }
    };
    for (const [k, act] of acts.entries()) {
      try {
        cases.push(new StepCase(spec, act, ctx.device, ctx.opt));
        errors.push(null);
      } catch (e) {
        cases.push(null);
        errors.push((e as Error).message);
      }
      for (let i = 0; i < ctx.warmup; i++) step(k, false);
    }
    for (let i = 0; i < ctx.repeats; i++) acts.forEach((_, k) => step(k, true));
    const rows: (StepRow | StepError)[] = acts.map((act, k) => {
      const c = cases[k];
      if (errors[k] || !c) return { model: spec.name, act, batch: spec.batch, threads, error: errors[k] ?? 'not built' };
      const resident = c.residentBytes();
      return ourRow(c, threads, times[k], resident + transient[k], resident);
    });
    const relu = acts.indexOf('relu');
    const reluRow = relu >= 0 ? rows[relu] : null;
    rows.forEach((r, k) => {
      if (isStepError(r)) return;
      if (reluRow && !isStepError(reluRow)) r.vsReluPaired = pairedRatio(times[k], times[relu]);
      if (ctx.graph) r.graph = measureGraph(cases[k]!, ctx, r.ms);
    });
    return rows;
  } finally {
    for (const c of cases) c?.dispose();
  }
}

/** Ours and (when present) PyTorch's step on one configuration, alternating step by step. */
async function measure(ctx: Ctx, spec: StepModelSpec, act: ActivationName, threads: number): Promise<StepRow> {
  const ours = new StepCase(spec, act, ctx.device, ctx.opt);
  try {
    let torchError: string | null = null;
    if (ctx.peer) {
      const r = await ctx.peer.request({
        cmd: 'setup',
        model: spec.model,
        smallInput: spec.smallInput,
        act,
        batch: spec.batch,
        input: spec.input,
        classes: spec.classes,
        device: torchDevice(ctx.device),
        threads,
        optimizer: STEP_OPTIMIZERS[ctx.opt],
        allowTF32: getAllowTF32(),
        seed: 0,
      });
      if (!r.ok) torchError = r.error ?? 'setup failed';
    }
    const useTorch = ctx.peer !== null && torchError === null;
    const torchStep = async (): Promise<{ t: number; peak: number | null } | null> => {
      if (!useTorch || torchError) return null;
      const r = await ctx.peer!.request({ cmd: 'step', n: 1 });
      if (!r.ok) {
        torchError = r.error ?? 'step failed';
        return null;
      }
      return { t: (r.times as number[])[0], peak: (r.peakBytes as number | null) ?? null };
    };
    for (let i = 0; i < ctx.warmup; i++) {
      ours.run();
      await torchStep();
    }
    const times: number[] = [], ttimes: number[] = [];
    // Memory as in the round robin: the model's resident bytes plus the most a step adds on top
    // of all that is live (so tensors other code left alive in the process do not count).
    let transient = 0, tpeak: number | null = null;
    for (let i = 0; i < ctx.repeats; i++) {
      const s = ours.timedStep();
      times.push(s.seconds);
      transient = Math.max(transient, s.peakBytes - s.baseBytes);
      const t = await torchStep();
      if (t) {
        ttimes.push(t.t);
        if (t.peak !== null) tpeak = Math.max(tpeak ?? 0, t.peak);
      }
    }
    const resident = ours.residentBytes();
    const row = ourRow(ours, threads, times, resident + transient, resident);
    const ms = row.ms;
    if (ctx.graph) row.graph = measureGraph(ours, ctx, ms);
    if (torchError) row.torch = { error: torchError };
    else if (useTorch && ttimes.length) {
      const tms = median(ttimes) * 1e3;
      row.torch = { ms: tms, msAll: ttimes.map((t) => t * 1e3), imagesPerSec: spec.batch / (tms / 1e3), peakBytes: tpeak };
      row.speedupVsTorch = tms / ms;
      if (ttimes.length === times.length) row.speedupVsTorchPaired = pairedRatio(ttimes, times);
    }
    return row;
  } finally {
    ours.dispose();
    if (ctx.peer) await ctx.peer.request({ cmd: 'free' });
  }
}

export interface StepReport extends ReturnType<typeof environment> {
  benchmark: 'step';
  repeats: number;
  warmup: number;
  optimizer: (typeof STEP_OPTIMIZERS)[StepOptimizerName];
  torchPython: string | null;
  torchVersion: string | null;
  torchError?: string;
  /** Why the peer stopped part-way (it exited, or hung and was stopped); rows after it have no PyTorch time. */
  torchLost?: string;
  /** How many activations the step section timed. */
  activations: number;
  /** The run was asked not to start the PyTorch peer (--no-torch). */
  torchSkipped?: boolean;
  /** PyTorch on CUDA runs with torch.backends.cudnn.benchmark = True (its best case). */
  torchCudnnBenchmark: boolean;
  sections: {
    step?: (StepRow | StepError)[];
    threads?: (StepRow | StepError)[] | { skipped: string };
    batch?: (StepRow | StepError)[];
  };
  file?: string;
}

export async function benchStep(options: BenchStepOptions = {}): Promise<StepReport> {
  options = checkOptions('benchStep', options, ['models', 'acts', 'batch', 'inputSize', 'device', 'threads', 'repeats', 'warmup', 'torch', 'graph', 'python', 'opt', 'tf32', 'sections', 'batchSizes', 'outDir', 'onResult']);
  const outDir = resultDir(options.outDir);
  const device = resolveDevice(options.device);
  const cuda = device.startsWith('cuda');
  const graph = options.graph ?? false;
  if (graph && !cuda) throw new AdaShiftError('ERR_CUDA_GRAPH', `bench step --graph times CUDA graph replays and needs a CUDA device; the device is '${device}'`);
  const opt = options.opt ?? 'sgd';
  check(STEP_OPTIMIZER_NAMES.includes(opt), 'ERR_ARG', () => `unknown benchmark optimizer '${String(opt)}'; expected one of ${STEP_OPTIMIZER_NAMES.join(', ')}`);
  const acts = options.acts ?? [...ACTIVATIONS];
  const models = options.models ?? STEP_MODEL_NAMES.filter((m) => cuda || !STEP_MODELS[m].gpuOnly);
  for (const m of models) modelSpec(m); // validates the names before anything runs
  const sections = options.sections ?? [...STEP_SECTIONS];
  const repeats = options.repeats ?? 10;
  const warmup = options.warmup ?? 2;
  const tf32Mode = applyTF32('benchStep', options.tf32);
  const tf32 = tf32Mode.tf32;
  const startThreads = native.getNumThreads();
  if (options.threads !== undefined) native.setNumThreads(options.threads);
  const env = environment(device); // at the start: the date is when the measurements began
  const threads = native.getNumThreads();
  const allThreads = Math.max(1, os.cpus().length);

  // An explicit python is tried directly (the peer's start is the check); otherwise one that
  // imports torch is looked for.
  const python = options.torch === false ? undefined : findTorchPython(options.python);
  let peer: TorchPeer | null = null;
  let torchVersion: string | null = null;
  let torchError: string | undefined;
  if (python) {
    try {
      peer = await TorchPeer.start(python);
      torchVersion = await peer.version;
    } catch (e) {
      torchError = (e as Error).message;
      peer = null;
    }
  }
  const ctx: Ctx = { device, repeats, warmup, peer, graph, opt };
  let peerLost: string | null = null;
  const overrides = { inputSize: options.inputSize };
  const out: StepReport['sections'] = {};
  const run = async (section: StepSection, spec: StepModelSpec, act: ActivationName, n: number): Promise<StepRow | StepError> => {
    let row: StepRow | StepError;
    try {
      row = await measure(ctx, spec, act, n);
    } catch (e) {
      row = { model: spec.name, act, batch: spec.batch, threads: n, error: (e as Error).message };
    }
    options.onResult?.(section, row);
    return row;
  };
  const setThreads = async (n: number) => {
    native.setNumThreads(n);
    if (peer) await peer.request({ cmd: 'threads', n });
  };
  try {
    if (sections.includes('step')) {
      out.step = [];
      for (const m of models) {
        const spec = modelSpec(m, { ...overrides, batch: options.batch });
        if (!peer && acts.length > 1) {
          // no peer to alternate with: our activations round robin instead
          for (const row of await measureRoundRobin(ctx, spec, acts, threads)) {
            options.onResult?.('step', row);
            out.step.push(row);
          }
        } else {
          for (const act of acts) out.step.push(await run('step', spec, act, threads));
        }
      }
    }
    if (sections.includes('threads')) {
      if (cuda) out.threads = { skipped: 'CPU thread scaling is measured on the CPU device only' };
      else {
        const rows: (StepRow | StepError)[] = [];
        const spec = modelSpec('resnet20', overrides);
        const counts = allThreads > 1 ? [1, allThreads] : [1];
        for (const act of ['relu', 'adashift-b'] as ActivationName[]) {
          for (const n of counts) {
            await setThreads(n);
            rows.push(await run('threads', spec, act, n));
          }
        }
        await setThreads(threads);
        out.threads = rows;
      }
    }
    if (sections.includes('batch')) {
      out.batch = [];
      for (const b of options.batchSizes ?? DEFAULT_BATCH_SIZES) {
        const spec = modelSpec('resnet20', { ...overrides, batch: b });
        out.batch.push(await run('batch', spec, 'adashift-b', threads));
      }
    }
  } finally {
    if (peer) {
      peerLost = peer.gone;
      await peer.close();
    }
    native.setNumThreads(options.threads !== undefined ? startThreads : threads);
    tf32Mode.restore();
  }
  const report: StepReport = {
    benchmark: 'step',
    ...env,
    // on a CUDA device: ours and (with a peer) PyTorch's convolutions both in TF32, or both not
    allowTF32: cuda ? tf32 : undefined,
    threads,
    repeats,
    warmup,
    optimizer: STEP_OPTIMIZERS[opt],
    torchPython: python ?? null,
    ...(options.torch === false ? { torchSkipped: true } : {}),
    torchVersion,
    torchCudnnBenchmark: cuda && torchVersion !== null,
    ...(torchError ? { torchError } : {}),
    ...(peerLost ? { torchLost: peerLost } : {}),
    activations: acts.length,
    sections: out,
  };
  if (outDir !== null) {
    const stamp = report.date.replace(/[:.]/g, '-');
    report.file = writeResult(outDir, `step-${device.replace(':', '')}-${stamp}.json`, report);
  }
  return report;
}

// ---- printing -----------------------------------------------------------------------------

function mib(bytes: number | null | undefined): string {
  return bytes === null || bytes === undefined ? '-' : `${(bytes / 2 ** 20).toFixed(1)}`;
}

/** One progress line per measured row. */
export function stepRowLine(section: StepSection, r: StepRow | StepError): string {
  if (isStepError(r)) return `[${section}] ${r.model} ${r.act} batch ${r.batch} threads ${r.threads}: error: ${r.error}`;
  const p = r.speedupVsTorchPaired;
  const paired = p ? `, paired x${p.median.toFixed(2)}, IQR ${p.q1.toFixed(2)}-${p.q3.toFixed(2)}` : '';
  const t = r.torch && 'ms' in r.torch ? `  torch ${r.torch.ms.toFixed(1)} ms (x${r.speedupVsTorch!.toFixed(2)}${paired})` : r.torch ? `  torch error: ${r.torch.error}` : '';
  const g = r.graph ? ('ms' in r.graph ? `  graph ${r.graph.ms.toFixed(2)} ms (x${r.graph.speedupVsEager.toFixed(2)} eager)` : `  graph error: ${r.graph.error}`) : '';
  const v = r.vsReluPaired && r.act !== 'relu' ? `, x${r.vsReluPaired.median.toFixed(2)} ReLU's step (IQR ${r.vsReluPaired.q1.toFixed(2)}-${r.vsReluPaired.q3.toFixed(2)})` : '';
  return `[${section}] ${r.model} ${r.act} batch ${r.batch} threads ${r.threads}: ${r.ms.toFixed(1)} ms/step, ${r.imagesPerSec.toFixed(0)} img/s, peak ${mib(r.peakBytes)} MiB${v}${t}${g}`;
}

/** The compact table of a report (printed last by the CLI). */
export function stepTable(report: StepReport): string {
  const lines: string[] = [];
  const graphCol = Object.values(report.sections).some((rows) => Array.isArray(rows) && rows.some((r) => !isStepError(r) && r.graph));
  const head = `${'section'.padEnd(8)} ${'model'.padEnd(15)} ${'act'.padEnd(12)} ${'batch'.padStart(5)} ${'thr'.padStart(3)} ${'ms/step'.padStart(9)} ${'img/s'.padStart(8)} ${'peak MiB'.padStart(9)} ${'torch ms'.padStart(9)} ${'torch/ours'.padStart(10)}${graphCol ? ` ${'graph ms'.padStart(9)}` : ''}`;
  lines.push(head, '-'.repeat(head.length));
  for (const [section, rows] of Object.entries(report.sections)) {
    if (!Array.isArray(rows)) {
      lines.push(`${section.padEnd(8)} skipped: ${rows.skipped}`);
      continue;
    }
    for (const r of rows) {
      if (isStepError(r)) {
        lines.push(`${section.padEnd(8)} ${r.model.padEnd(15)} ${r.act.padEnd(12)} ${String(r.batch).padStart(5)} ${String(r.threads).padStart(3)} error: ${r.error}`);
        continue;
      }
      const t = r.torch && 'ms' in r.torch ? r.torch.ms.toFixed(1) : r.torch ? 'error' : '-';
      lines.push(
        `${section.padEnd(8)} ${r.model.padEnd(15)} ${r.act.padEnd(12)} ${String(r.batch).padStart(5)} ${String(r.threads).padStart(3)} ${r.ms.toFixed(1).padStart(9)} ${r.imagesPerSec.toFixed(0).padStart(8)} ${mib(r.peakBytes).padStart(9)} ${t.padStart(9)} ${(r.speedupVsTorch ? `x${r.speedupVsTorch.toFixed(2)}` : '-').padStart(10)}${graphCol ? ` ${(r.graph ? ('ms' in r.graph ? r.graph.ms.toFixed(2) : 'error') : '-').padStart(9)}` : ''}`,
      );
    }
  }
  lines.push(
    `device ${report.device}${report.gpu ? ` (${report.gpu})` : ''}, ${report.threads} thread(s), ${cpuLabel(report.cpu, report.cpuDetails)}, optimizer ${report.optimizer.kind}, commit ${report.commit}; ` +
      (report.torchVersion
        ? `PyTorch ${report.torchVersion} (${report.torchPython}), alternating step by step${report.torchLost ? `; the peer stopped part-way (${report.torchLost}): the rows after it have no PyTorch time` : ''}`
        : report.torchError
          ? `PyTorch side failed: ${report.torchError}`
          : `${report.torchSkipped ? 'no PyTorch side (--no-torch)' : noTorchReason()}${report.activations > 1 ? ': each step timed round robin with the other activations' : ''}`),
  );
  return lines.join('\n');
}
