// `adashift bench act`: forward+backward of each activation on a few shapes, with effective
// bandwidth from the counted bytes (ADASHIFT.md) and, when PyTorch is present, the same
// activations in PyTorch measured in the same run.
import { Device, resolveDevice } from '../device';
import { check, checkOptions } from '../errors';
import { noGrad } from '../autograd';
import { native } from '../native';
import { activation, ActivationName, ACTIVATIONS } from '../nn/activation';
import { Module } from '../nn/module';
import { manualSeed, randn, Tensor, tidy } from '../tensor';
import { environment, findTorchPython, median, pairedRatio, resultDir, runPython, scriptPath, timeIt, writeResult } from './common';

export interface BenchActOptions {
  shapes?: number[][];
  acts?: ActivationName[];
  device?: string;
  repeats?: number;
  warmup?: number;
  torch?: boolean;
  outDir?: string | null;
  onResult?: (r: ActResult) => void;
}

export interface ActResult {
  act: string;
  shape: number[];
  forwardMs: number;
  backwardMs: number;
  totalMs: number;
  /** Million elements per second through forward+backward. */
  melemPerSec: number;
  /** Counted bytes per element (ADASHIFT.md): forward + backward. */
  bytesPerElement: number;
  gbPerSec: number;
  torch?: { forwardMs: number; backwardMs: number; totalMs: number; melemPerSec: number; version?: string };
  /** Forward+backward of each timed round, ms, in round order (the paired ratios come from these). */
  roundsMs?: number[];
  /** Torch's time over ours (> 1: we are faster). */
  speedupVsTorch?: number;
  /** Why the PyTorch peer gave no result for this row (it failed or ran too long). */
  torchError?: string;
  /**
   * This package's SiLU time over this activation's, same shape, same run (when SiLU ran): each
   * side's median forward plus median backward.
   */
  vsSilu?: number;
  /**
   * The same ratio taken per round (SiLU's forward+backward over this activation's in the same
   * round of the round robin, seconds apart) and then the median over rounds, with its first and
   * third quartiles: drift of the machine between rounds cancels in each pair.
   */
  vsSiluPaired?: { median: number; q1: number; q3: number };
  /** gbPerSec over the copy bandwidth measured for this shape in the same run. */
  fractionOfCopy: number;
}

// read x + write y, then read x + dy + write dx
const BASELINE_BYTES = 8 + 12;
// pool (4) + gate (8), then reduce (8) + apply (12)
const ADASHIFT_BYTES = 12 + 20;

export const DEFAULT_ACT_SHAPES = [
  [64, 64, 28, 28],
  [32, 256, 56, 56],
];

function bytesPerElement(act: string): number {
  return act.startsWith('adashift') ? ADASHIFT_BYTES : BASELINE_BYTES;
}

/**
 * Forward and backward times of each module on one input, round robin: repeat i of every
 * module runs before repeat i + 1 of any, so drift in the machine's speed (shared memory
 * bandwidth moves by 1.5x within minutes) hits every activation alike. Round i starts at module
 * i mod k, so no activation always follows the same one (what ran before leaves its data in the
 * caches and its threads spinning).
 */
function measureAll(mods: Module[], shape: number[], device: Device, repeats: number, warmup: number) {
  const x = randn(shape, { device, requiresGrad: true });
  const dy = randn(shape, { device });
  const fwd: number[][] = mods.map(() => []), bwd: number[][] = mods.map(() => []);
  for (let i = 0; i < warmup + repeats; i++) {
    mods.forEach((_, j) => {
      const k = (j + i) % mods.length;
      const m = mods[k];
      tidy(() => {
        let y!: Tensor;
        const tf = timeIt(device, () => {
          y = m.forward(x) as Tensor;
        });
        const tb = timeIt(device, () => y.backward(dy));
        x.grad?.dispose();
        x.grad = null;
        for (const p of m.parameters()) {
          p.grad?.dispose();
          p.grad = null;
        }
        if (i >= warmup) {
          fwd[k].push(tf);
          bwd[k].push(tb);
        }
      });
    });
  }
  x.dispose();
  dy.dispose();
  return mods.map((_, k) => ({ fwd: median(fwd[k]), bwd: median(bwd[k]), totals: fwd[k].map((f, i) => f + bwd[k][i]) }));
}

/** Measured device-to-device copy bandwidth (read + write), GB/s, on a tensor of n floats. */
export function copyBandwidth(n: number, device: Device, repeats = 10): number {
  return noGrad(() => {
    const x = randn([n], { device });
    const times: number[] = [];
    for (let i = 0; i < repeats + 2; i++) {
      const t = timeIt(device, () => native.clone(x.handle).dispose());
      if (i >= 2) times.push(t);
    }
    x.dispose();
    return (8 * n) / median(times) / 1e9;
  });
}

export function benchAct(options: BenchActOptions = {}) {
  options = checkOptions('benchAct', options, ['shapes', 'acts', 'device', 'repeats', 'warmup', 'torch', 'outDir', 'onResult']);
  const device = resolveDevice(options.device);
  const shapes = options.shapes ?? DEFAULT_ACT_SHAPES;
  const acts = options.acts ?? [...ACTIVATIONS];
  const repeats = options.repeats ?? 10;
  const warmup = options.warmup ?? 2;
  // checked before anything is timed: a bad value would otherwise surface as empty timings
  check(Array.isArray(shapes) && shapes.length > 0 && shapes.every((s) => Array.isArray(s) && s.length === 4 && s.every((d) => Number.isSafeInteger(d) && d >= 1)), 'ERR_ARG', () => `benchAct: shapes must be a non-empty array of [N, C, H, W] with positive integers, got ${JSON.stringify(shapes)}`);
  check(Array.isArray(acts) && acts.length > 0 && acts.every((a) => ACTIVATIONS.includes(a)), 'ERR_ARG', () => `benchAct: acts must be a non-empty array of ${ACTIVATIONS.join(', ')}, got ${JSON.stringify(acts)}`);
  check(Number.isSafeInteger(repeats) && repeats >= 1, 'ERR_ARG', () => `benchAct: repeats must be an integer >= 1, got ${JSON.stringify(repeats)}`);
  check(Number.isSafeInteger(warmup) && warmup >= 0, 'ERR_ARG', () => `benchAct: warmup must be an integer >= 0, got ${JSON.stringify(warmup)}`);
  const outDir = resultDir(options.outDir);
  const env = environment(device); // at the start: the date is when the measurements began
  manualSeed(0);
  const results: ActResult[] = [];
  const python = options.torch === false ? undefined : findTorchPython();
  // the copy bandwidth of each shape just before and just after its activations (it drifts by
  // 1.5x within minutes on a shared machine); their mean is what fractionOfCopy divides by
  const copy: { shape: number[]; gbPerSec: number; before: number; after: number }[] = [];
  for (const shape of shapes) {
    const numel = shape.reduce((a, b) => a * b, 1);
    const before = copyBandwidth(numel, device, repeats);
    const mods = acts.map((act) => activation(act, shape[1]).to(device));
    const times = measureAll(mods, shape, device, repeats, warmup);
    for (const m of mods) m.dispose();
    const after = copyBandwidth(numel, device, repeats);
    copy.push({ shape, gbPerSec: (before + after) / 2, before, after });
    const silu = acts.indexOf('silu');
    const copyGb = (before + after) / 2;
    for (const [k, act] of acts.entries()) {
      const { fwd, bwd } = times[k];
      const n = shape.reduce((a, b) => a * b, 1);
      const total = fwd + bwd;
      const r: ActResult = {
        act,
        shape,
        forwardMs: fwd * 1e3,
        backwardMs: bwd * 1e3,
        totalMs: total * 1e3,
        melemPerSec: n / total / 1e6,
        bytesPerElement: bytesPerElement(act),
        gbPerSec: (n * bytesPerElement(act)) / total / 1e9,
        vsSilu: silu >= 0 ? (times[silu].fwd + times[silu].bwd) / total : undefined,
        vsSiluPaired: silu >= 0 ? pairedRatio(times[silu].totals, times[k].totals) : undefined,
        fractionOfCopy: (n * bytesPerElement(act)) / total / 1e9 / copyGb,
        roundsMs: times[k].totals.map((t) => t * 1e3),
      };
      if (python) {
        // A peer that fails (or hangs) costs its row's comparison, not the run's results.
        try {
          const t = runPython(python, scriptPath('torch_act.py'), {
            act,
            shape,
            device: device.startsWith('cuda') ? 'cuda' : 'cpu',
            threads: native.getNumThreads(),
            repeats,
            warmup,
          }) as { forwardMs: number; backwardMs: number; torch?: string };
          const tt = t.forwardMs + t.backwardMs;
          r.torch = { forwardMs: t.forwardMs, backwardMs: t.backwardMs, totalMs: tt, melemPerSec: n / (tt / 1e3) / 1e6, version: t.torch };
          r.speedupVsTorch = tt / r.totalMs;
        } catch (e) {
          r.torchError = (e as Error).message;
        }
      }
      results.push(r);
      options.onResult?.(r);
    }
  }
  const report = { benchmark: 'act', ...env, repeats, warmup, torchPython: python ?? null, ...(options.torch === false ? { torchSkipped: true } : {}), copyBandwidth: copy, results };
  let file: string | undefined;
  if (outDir !== null) {
    const stamp = report.date.replace(/[:.]/g, '-');
    file = writeResult(outDir, `act-${device.replace(':', '')}-${stamp}.json`, report);
  }
  return { ...report, file };
}
