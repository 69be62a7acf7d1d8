// `adashift bench step --profile`: where a training step's time goes, by op family. While
// profiling, lib/native.ts's `native` is an object of timing wrappers around the raw binding
// (setNativeLayer); when off it is the raw binding itself, so the hook costs nothing. Each
// wrapped call's time (on CUDA: up to a synchronize after the call, so kernel time, not launch
// time) goes to a family chosen by the binding function's name, or by the scope the call runs
// in: AdaShift's context networks (forward and, through their graph nodes, backward), the loss
// and the optimizer. 'framework overhead' is the step's time minus all native time minus the
// profiler's own cost (measured per call).
import type { GradFn } from '../autograd';
import { NativeBinding, rawNative, setNativeLayer } from '../native';
import { ActivationName } from '../nn/activation';
import { AdaShiftB, AdaShiftMA } from '../nn/activation';
import { resolveDevice } from '../device';
import { checkOptions } from '../errors';
import { Tensor } from '../tensor';
import { applyTF32, environment, median, resultDir, timeIt, writeResult } from './common';
import { modelSpec, StepCase } from './step';
import type { StepOptimizerName } from './step';

export type Family =
  | 'conv'
  | 'batchnorm'
  | 'activation'
  | 'pooling'
  | 'linear'
  | 'loss'
  | 'optimizer'
  | 'elementwise'
  | 'memory'
  | 'other';

export const FAMILY_LABELS: Record<Family | 'overhead' | 'profiler', string> = {
  conv: 'conv (forward, backward)',
  batchnorm: 'batchnorm (incl. fused BN+act)',
  activation: 'activation (relu/gelu/silu, AdaShift gate+pool+context)',
  pooling: 'pooling (max, global average)',
  linear: 'linear / matmul',
  loss: 'loss (cross-entropy)',
  optimizer: 'optimizer (update, zeroGrad)',
  elementwise: 'elementwise (residual add, grad accumulation)',
  memory: 'memory (alloc, fill, copy)',
  other: 'other native',
  overhead: 'framework overhead (JS, autograd, dispose)',
  profiler: 'profiler (measurement cost)',
};

/** Family of a binding function when no scope says otherwise; absent: not timed. */
const BY_NAME: Record<string, Family> = {
  conv2dForward: 'conv',
  conv2dBackward: 'conv',
  gemm: 'linear',
  batchNormStats: 'batchnorm',
  batchNormActForward: 'batchnorm',
  batchNormActBackwardReduce: 'batchnorm',
  batchNormBackwardParams: 'batchnorm',
  batchNormActBackwardApply: 'batchnorm',
  actForward: 'activation',
  actBackward: 'activation',
  gateForward: 'activation',
  gateBackwardReduce: 'activation',
  gateBackwardApply: 'activation',
  layerNormForward: 'activation',
  layerNormBackward: 'activation',
  adashiftBContextForward: 'activation',
  adashiftBContextBackward: 'activation',
  softmaxForward: 'activation',
  softmaxBackward: 'activation',
  regionPoolForward: 'pooling',
  regionPoolBackward: 'pooling',
  maxPool2dForward: 'pooling',
  maxPool2dBackward: 'pooling',
  avgPool2dForward: 'pooling',
  avgPool2dBackward: 'pooling',
  matmul: 'linear',
  addRowvec: 'linear',
  sumRows: 'linear',
  crossEntropyForward: 'loss',
  crossEntropyBackward: 'loss',
  sgdStep: 'optimizer',
  adamwStep: 'optimizer',
  lambGradClip: 'optimizer',
  lambStep: 'optimizer',
  optimAdvance: 'optimizer',
  optimSchedWrite: 'optimizer',
  optimSchedNew: 'optimizer',
  binary: 'elementwise',
  axpby: 'elementwise',
  axpy_: 'elementwise',
  fill_: 'elementwise',
  sumAll: 'elementwise',
  permute: 'elementwise',
  empty: 'memory',
  full: 'memory',
  fromArray: 'memory',
  rand: 'memory',
  to: 'memory',
  clone: 'memory',
};

/** Family of a binding function missing from BY_NAME (added later), from its name. */
export function familyOf(name: string): Family {
  if (BY_NAME[name]) return BY_NAME[name];
  if (/^conv/i.test(name)) return 'conv';
  if (/batchNorm|^bn/i.test(name)) return 'batchnorm';
  if (/adashift|gate|^act|relu|gelu|silu|layerNorm|softmax/i.test(name)) return 'activation';
  if (/pool/i.test(name)) return 'pooling';
  if (/matmul|gemm|linear/i.test(name)) return 'linear';
  if (/crossEntropy|loss/i.test(name)) return 'loss';
  if (/sgd|adam|lamb/i.test(name)) return 'optimizer';
  return 'other';
}

/** Bookkeeping and control functions: passed through untimed. */
const UNTIMED = new Set(['NativeTensor', 'backendInfo', 'memory', 'setNumThreads', 'getNumThreads', 'synchronize', 'emptyCache', 'resetPeakMemory', 'gemmBackend', 'gemmInfo']);

// ---- scopes -------------------------------------------------------------------------------

let scope: Family | null = null;

function withScope<R>(f: Family, fn: () => R): R {
  const prev = scope;
  scope = f;
  try {
    return fn();
  } finally {
    scope = prev;
  }
}

const tagged = new WeakSet<GradFn>();

/**
 * Makes the backward closures of the graph nodes between `out` and `stop` run in `family`'s
 * scope, so that their native calls are attributed as the forward's were.
 */
function tagGraph(outs: (Tensor | null | undefined)[], stop: (Tensor | null | undefined)[], family: Family): void {
  const stops = new Set(stop.filter(Boolean) as Tensor[]);
  const stack: GradFn[] = [];
  for (const o of outs) if (o?.gradFn) stack.push(o.gradFn);
  while (stack.length) {
    const fn = stack.pop()!;
    if (tagged.has(fn)) continue;
    tagged.add(fn);
    const backward = fn.backward;
    fn.backward = (g: Tensor) => withScope(family, () => backward.call(fn, g));
    for (const t of fn.inputs) if (t && !stops.has(t) && t.gradFn) stack.push(t.gradFn);
  }
}

type Patch = { proto: Record<string, unknown>; key: string; orig: unknown };

/** AdaShift modules' forward and context run in the 'activation' scope (their graphs too). */
function patchModules(): Patch[] {
  const patches: Patch[] = [];
  for (const cls of [AdaShiftB, AdaShiftMA]) {
    const proto = cls.prototype as unknown as Record<string, unknown>;
    for (const key of ['forward', 'context']) {
      const orig = proto[key] as (this: unknown, x: Tensor) => Tensor;
      patches.push({ proto, key, orig });
      proto[key] = function (this: unknown, x: Tensor): Tensor {
        return withScope('activation', () => {
          const y = orig.call(this, x);
          tagGraph([y], [x], 'activation');
          return y;
        });
      };
    }
  }
  return patches;
}

// ---- the timing layer ---------------------------------------------------------------------

export interface Tally {
  ms: number;
  calls: number;
}

export interface NativeProfiler {
  /** Per family, since the last reset. */
  families: Map<Family, Tally>;
  /** Per binding function, since the last reset. */
  functions: Map<string, Tally>;
  reset(): void;
  calls(): number;
}

let active: { profiler: NativeProfiler; patches: Patch[] } | null = null;

/**
 * Installs the timing layer (and the module scopes) until stopNativeProfiler(). On CUDA every
 * timed call is followed by a synchronize of `device` inside the timer.
 */
export function startNativeProfiler(device: string): NativeProfiler {
  if (active) throw new Error('the native profiler is already running');
  const sync = device.startsWith('cuda');
  const families = new Map<Family, Tally>();
  const functions = new Map<string, Tally>();
  let calls = 0;
  const raw = rawNative as unknown as Record<string, unknown>;
  const layer: Record<string, unknown> = {};
  for (const name of Object.keys(raw)) {
    const f = raw[name];
    if (typeof f !== 'function' || UNTIMED.has(name)) {
      layer[name] = f;
      continue;
    }
    const byName: Family = familyOf(name);
    const fnTally: Tally = { ms: 0, calls: 0 };
    functions.set(name, fnTally);
    layer[name] = function (...args: unknown[]): unknown {
      const t0 = performance.now();
      const r = (f as (...a: unknown[]) => unknown).apply(raw, args);
      if (sync) rawNative.synchronize(device);
      const dt = performance.now() - t0;
      const fam = scope ?? byName;
      let t = families.get(fam);
      if (!t) families.set(fam, (t = { ms: 0, calls: 0 }));
      t.ms += dt;
      t.calls++;
      fnTally.ms += dt;
      fnTally.calls++;
      calls++;
      return r;
    };
  }
  const profiler: NativeProfiler = {
    families,
    functions,
    reset() {
      families.clear();
      for (const t of functions.values()) {
        t.ms = 0;
        t.calls = 0;
      }
      calls = 0;
    },
    calls: () => calls,
  };
  active = { profiler, patches: patchModules() };
  setNativeLayer(layer as unknown as NativeBinding);
  return profiler;
}

export function stopNativeProfiler(): void {
  if (!active) return;
  setNativeLayer(null);
  for (const p of active.patches.reverse()) p.proto[p.key] = p.orig;
  active = null;
  scope = null;
}

/** The profiler's own cost per wrapped call (ms): a wrapped no-op minus a direct one. */
function wrapperCostMs(): number {
  const fam = new Map<Family, Tally>();
  const noop = (a: number) => a;
  const wrapped = (...args: unknown[]): unknown => {
    const t0 = performance.now();
    const r = (noop as (...a: unknown[]) => unknown).apply(null, args);
    const dt = performance.now() - t0;
    const f: Family = scope ?? 'other';
    let t = fam.get(f);
    if (!t) fam.set(f, (t = { ms: 0, calls: 0 }));
    t.ms += dt;
    t.calls++;
    return r;
  };
  const n = 20000;
  const run = (fn: (a: number) => unknown) => {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) fn(i);
    return (performance.now() - t0) / n;
  };
  run(wrapped);
  run(noop);
  const costs: number[] = [];
  for (let k = 0; k < 5; k++) costs.push(run(wrapped) - run(noop));
  return Math.max(0, median(costs));
}

// ---- the profile of a training step -------------------------------------------------------

export interface ProfileOptions {
  model?: string;
  act?: ActivationName;
  batch?: number;
  inputSize?: number;
  device?: string;
  repeats?: number;
  warmup?: number;
  /** CPU threads during the profile (restored after). */
  threads?: number;
  /** The step's optimizer (default 'sgd'). */
  opt?: StepOptimizerName;
  /** CUDA convolutions in TF32 during the profile (default: the current setting; restored after). */
  tf32?: boolean;
  outDir?: string | null;
}

export interface ProfileRow {
  family: Family | 'overhead' | 'profiler';
  label: string;
  /** Mean per profiled step. */
  ms: number;
  /** Of the profiled step time. */
  percent: number;
  /** Native calls per step. */
  calls: number;
}

export interface ProfileReport extends ReturnType<typeof environment> {
  benchmark: 'step-profile';
  model: string;
  act: ActivationName;
  /** The step's optimizer. */
  opt: StepOptimizerName;
  batch: number;
  input: number[];
  repeats: number;
  warmup: number;
  /** Median step time without the profiler. */
  stepMs: number;
  /** Mean step time with the profiler on (the rows sum to this). */
  profiledStepMs: number;
  /** Native time per step, all families. */
  nativeMs: number;
  /** What a native call's time means: 'kernel (synchronised)' on CUDA, 'call' on CPU. */
  timing: string;
  rows: ProfileRow[];
  /** The 15 most expensive binding functions (ms and calls per step). */
  functions: { name: string; ms: number; calls: number }[];
  file?: string;
}

/** Profiles one model + activation: time per op family per training step. */
export function benchProfile(options: ProfileOptions = {}): ProfileReport {
  options = checkOptions('benchProfile', options, ['model', 'act', 'batch', 'inputSize', 'device', 'repeats', 'warmup', 'threads', 'opt', 'tf32', 'outDir']);
  const outDir = resultDir(options.outDir);
  const device = resolveDevice(options.device);
  const spec = modelSpec(options.model ?? 'resnet20', { batch: options.batch, inputSize: options.inputSize });
  const act = options.act ?? 'adashift-b';
  const repeats = options.repeats ?? 10;
  const warmup = options.warmup ?? 2;
  const tf32Mode = applyTF32('benchProfile', options.tf32);
  const startThreads = rawNative.getNumThreads();
  if (options.threads !== undefined) rawNative.setNumThreads(options.threads);
  const threads = rawNative.getNumThreads();
  let c: StepCase;
  try {
    c = new StepCase(spec, act, device, options.opt ?? 'sgd');
  } catch (e) {
    rawNative.setNumThreads(startThreads);
    tf32Mode.restore();
    throw e;
  }
  let profiledMs = 0;
  const famTotals = new Map<Family, Tally>();
  const fnTotals = new Map<string, Tally>();
  let calls = 0;
  let stepMs: number;
  try {
    for (let i = 0; i < warmup; i++) c.run();
    const plain: number[] = [];
    for (let i = 0; i < repeats; i++) plain.push(timeIt(device, () => c.run()));
    stepMs = median(plain) * 1e3;
    const prof = startNativeProfiler(device);
    try {
      const hooks = {
        loss<R>(fn: () => R, logits: Tensor): R {
          const r = withScope('loss', fn) as unknown as { loss: Tensor; correct: Tensor };
          tagGraph([r.loss, r.correct], [logits], 'loss');
          return r as unknown as R;
        },
        optimizer(fn: () => void): void {
          withScope('optimizer', fn);
        },
      };
      c.run(hooks); // one untimed step with the layer on (first-call effects)
      for (let i = 0; i < repeats; i++) {
        prof.reset();
        profiledMs += timeIt(device, () => c.run(hooks)) * 1e3;
        for (const [f, t] of prof.families) {
          const a = famTotals.get(f) ?? { ms: 0, calls: 0 };
          famTotals.set(f, { ms: a.ms + t.ms, calls: a.calls + t.calls });
        }
        for (const [n, t] of prof.functions) {
          const a = fnTotals.get(n) ?? { ms: 0, calls: 0 };
          fnTotals.set(n, { ms: a.ms + t.ms, calls: a.calls + t.calls });
        }
        calls += prof.calls();
      }
    } finally {
      stopNativeProfiler();
    }
  } finally {
    c.dispose();
    rawNative.setNumThreads(startThreads);
    tf32Mode.restore();
  }
  const per = (x: number) => x / repeats;
  const step = per(profiledMs);
  const rows: ProfileRow[] = [];
  let nativeMs = 0;
  for (const [f, t] of famTotals) {
    nativeMs += per(t.ms);
    rows.push({ family: f, label: FAMILY_LABELS[f], ms: per(t.ms), percent: 0, calls: per(t.calls) });
  }
  const profilerMs = Math.min(Math.max(0, step - nativeMs), per(calls) * wrapperCostMs());
  const overheadMs = Math.max(0, step - nativeMs - profilerMs);
  rows.push({ family: 'overhead', label: FAMILY_LABELS.overhead, ms: overheadMs, percent: 0, calls: 0 });
  rows.push({ family: 'profiler', label: FAMILY_LABELS.profiler, ms: profilerMs, percent: 0, calls: per(calls) });
  for (const r of rows) r.percent = step > 0 ? (100 * r.ms) / step : 0;
  rows.sort((a, b) => b.ms - a.ms);
  const functions = [...fnTotals]
    .filter(([, t]) => t.calls > 0)
    .map(([name, t]) => ({ name, ms: per(t.ms), calls: per(t.calls) }))
    .sort((a, b) => b.ms - a.ms)
    .slice(0, 15);
  const report: ProfileReport = {
    benchmark: 'step-profile',
    ...environment(device),
    allowTF32: device.startsWith('cuda') ? tf32Mode.tf32 : undefined,
    threads,
    model: spec.name,
    act,
    opt: options.opt ?? 'sgd',
    batch: spec.batch,
    input: [...spec.input],
    repeats,
    warmup,
    stepMs,
    profiledStepMs: step,
    nativeMs,
    timing: device.startsWith('cuda') ? 'kernel (each native call synchronised)' : 'call',
    rows,
    functions,
  };
  if (outDir !== null) {
    const stamp = report.date.replace(/[:.]/g, '-');
    report.file = writeResult(outDir, `step-profile-${device.replace(':', '')}-${stamp}.json`, report);
  }
  return report;
}

/** The profile as a table sorted by time. */
export function profileTable(r: ProfileReport): string {
  const lines: string[] = [];
  lines.push(
    `${r.model} ${r.act}, ${r.opt}, batch ${r.batch}, input ${r.input.join('x')}, device ${r.device}${r.gpu ? ` (${r.gpu})` : ''}, ${r.threads} thread(s): ` +
      `${r.stepMs.toFixed(2)} ms/step unprofiled, ${r.profiledStepMs.toFixed(2)} ms/step profiled (${r.repeats} steps, mean)`,
  );
  const head = `${'family'.padEnd(58)} ${'ms/step'.padStart(9)} ${'% step'.padStart(7)} ${'calls'.padStart(7)}`;
  lines.push(head, '-'.repeat(head.length));
  for (const row of r.rows) {
    lines.push(`${row.label.padEnd(58)} ${row.ms.toFixed(3).padStart(9)} ${row.percent.toFixed(1).padStart(7)} ${(row.calls ? row.calls.toFixed(0) : '').padStart(7)}`);
  }
  lines.push(`top native functions: ${r.functions.slice(0, 6).map((f) => `${f.name} ${f.ms.toFixed(2)} ms (${f.calls.toFixed(0)})`).join(', ')}`);
  if (r.device.startsWith('cuda')) lines.push('CUDA: every native call is synchronised inside its timer, so times are kernel times (the profiled step is slower than the plain one).');
  return lines.join('\n');
}
