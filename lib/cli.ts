#!/usr/bin/env node
// The adashift command line: a thin shell over the exported functions (argument parsing and
// printing only).
import './cli-load';
import { Command, InvalidArgumentError, Option } from 'commander';
import { backendInfo, resolveDevice, setAllowTF32, setNumThreads } from './device';
import { memory } from './tensor';
import { ACTIVATIONS, ActivationName } from './nn/activation';
import { ActResult, benchAct } from './bench/act';
import { benchStep, isStepError, STEP_MODEL_NAMES, STEP_OPTIMIZER_NAMES, STEP_SECTIONS, StepSection, stepRowLine, stepTable } from './bench/step';
import { noTorchReason } from './bench/common';
import { benchProfile, profileTable } from './bench/profile';
import { RESNETS } from './nn/resnet';
import { BatchInfo, EpochMetrics, evaluateCheckpoint, train, TrainCallbacks, TrainOptions } from './train/train';
import { compare, CompareOptions, parseArm } from './train/compare';
import { AdaShiftError } from './errors';
import { DEFAULT_DATA_DIRS } from './data';
import * as path from 'path';
import * as os from 'os';
import { cpuDetails, cpuLabel } from './provenance';

function parseIntArg(name: string, lo: number, hi: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < lo || n > hi) throw new InvalidArgumentError(`${name} must be an integer in [${lo}, ${hi}], got '${v}'`);
    return n;
  };
}

// The spelling only: whether CUDA is usable here is checked when the command runs (ERR_NO_CUDA).
function parseDevice(v: string): string {
  if (!/^(auto|cpu|cuda(:\d+)?)$/.test(v)) throw new InvalidArgumentError(`--device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got '${v}'`);
  return v;
}

function parseShape(v: string, prev: number[][] = []): number[][] {
  const dims = v.split(/[,x]/).map(Number);
  if (dims.length !== 4 || !dims.every((d) => Number.isInteger(d) && d >= 1)) {
    throw new InvalidArgumentError(`a shape is N,C,H,W with positive integers (e.g. 8,64,28,28), got '${v}'`);
  }
  return [...prev, dims];
}

function parseActs(v: string): ActivationName[] {
  const acts = v.split(',').map((s) => s.trim());
  for (const [i, a] of acts.entries()) {
    if (!ACTIVATIONS.includes(a as ActivationName)) throw new InvalidArgumentError(`unknown activation '${a}'; expected ${ACTIVATIONS.join(', ')}`);
    if (acts.indexOf(a) !== i) throw new InvalidArgumentError(`'${a}' is listed twice`);
  }
  return acts as ActivationName[];
}

// compare's entries: names, each optionally with options of its own ('adashift-ma:grid=4').
function parseArms(v: string): string[] {
  const arms = v.split(',').map((s) => s.trim());
  for (const a of arms) {
    try {
      parseArm(a);
    } catch (e) {
      if (e instanceof AdaShiftError) throw new InvalidArgumentError(e.message);
      throw e;
    }
  }
  return arms;
}

function parseList(name: string, allowed: readonly string[]) {
  return (v: string): string[] => {
    const items = v.split(',').map((s) => s.trim()).filter(Boolean);
    for (const i of items) if (!allowed.includes(i)) throw new InvalidArgumentError(`unknown ${name} '${i}'; expected ${allowed.join(', ')}`);
    if (!items.length) throw new InvalidArgumentError(`${name}: an empty list`);
    return items;
  };
}

function parseIntList(name: string, lo: number, hi: number) {
  return (v: string): number[] => v.split(',').map((s) => parseIntArg(name, lo, hi)(s.trim()));
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

function cudaVersion(v: number): string {
  return v ? `${Math.floor(v / 1000)}.${(v % 1000) / 10}` : 'none';
}

/** What doctor reports, as data: the version and platform, the backends, the default device. */
export function doctorInfo() {
  const info = backendInfo();
  let defaultDevice: string;
  try {
    defaultDevice = resolveDevice(); // what a tensor made without a device gets (ADASHIFT_DEVICE, else 'auto')
  } catch (e) {
    defaultDevice = `error: ${(e as Error).message}`;
  }
  return {
    version: require('../package.json').version as string,
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    cpu: cpuLabel(os.cpus()[0]?.model ?? 'an unknown CPU', cpuDetails()),
    ...info,
    defaultDevice,
    adashiftDeviceEnv: process.env.ADASHIFT_DEVICE ?? null,
  };
}

export function doctorText(): string {
  const info = doctorInfo();
  const lines: string[] = [];
  lines.push(`adashift ${info.version} on Node ${info.node} (${info.platform})`);
  lines.push(`CPU backend: available, ${info.cpuThreads} thread(s) on ${info.cpu}`);
  lines.push(`CUDA compiled in: ${info.cudaCompiled ? `yes (architectures: ${info.compiledArchs})` : 'no'}`);
  if (info.cudaCompiled) {
    lines.push(`CUDA runtime: ${cudaVersion(info.runtimeVersion)}; driver: ${info.driverVersion ? cudaVersion(info.driverVersion) : 'not found'}`);
  }
  if (info.devices.length) {
    for (const d of info.devices) {
      lines.push(`  cuda:${d.index}  ${d.name}  ${gib(d.totalMemory)}  compute capability ${d.computeCapability}  ${d.multiprocessors} SMs`);
    }
  }
  lines.push(`CUDA usable: ${info.cudaUsable ? 'yes' : `no: ${info.reason}`}`);
  const auto = info.defaultDevice;
  const env = info.adashiftDeviceEnv;
  lines.push(`default device: ${auto}${env ? ` (ADASHIFT_DEVICE=${env})` : ''}${auto === 'cpu' && !info.cudaUsable ? ' (CUDA not usable, see above)' : ''}`);
  if (!info.cudaCompiled) {
    lines.push('to build for a GPU: install the CUDA toolkit (nvcc) and run `npm rebuild adashift`');
  }
  return lines.join('\n');
}

function actRow(r: ActResult): string {
  const shape = r.shape.join('x');
  const torch = r.torch
    ? `  torch ${r.torch.totalMs.toFixed(2).padStart(9)} ms  ${r.torch.melemPerSec.toFixed(0).padStart(6)} Melem/s  x${r.speedupVsTorch!.toFixed(2)}`
    : r.torchError ? `  torch error: ${r.torchError}` : '';
  const paired = r.vsSiluPaired && r.act !== 'silu' ? ` (paired ${r.vsSiluPaired.median.toFixed(2)}, IQR ${r.vsSiluPaired.q1.toFixed(2)}-${r.vsSiluPaired.q3.toFixed(2)})` : '';
  const silu = r.vsSilu !== undefined ? `  ${r.vsSilu.toFixed(2)}x SiLU${paired}` : '';
  return `${r.act.padEnd(12)} ${shape.padEnd(14)} fwd ${r.forwardMs.toFixed(2).padStart(8)} ms  bwd ${r.backwardMs.toFixed(2).padStart(8)} ms  ${r.melemPerSec.toFixed(0).padStart(6)} Melem/s  ${r.gbPerSec.toFixed(1).padStart(6)} GB/s (${(100 * r.fractionOfCopy).toFixed(0)}% of copy)${silu}${torch}`;
}

function parseNumberArg(name: string, lo: number, hi: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < lo || n > hi || v.trim() === '') throw new InvalidArgumentError(`${name} must be a number in [${lo}, ${hi}], got '${v}'`);
    return n;
  };
}

function choice(name: string, values: readonly string[]) {
  return (v: string): string => {
    if (!values.includes(v)) throw new InvalidArgumentError(`${name} must be one of ${values.join(', ')}, got '${v}'`);
    return v;
  };
}

/** Progress for a training run: a bar on a terminal, plain periodic lines otherwise. */
export function progressCallbacks(label = '', stream: NodeJS.WriteStream = process.stderr): TrainCallbacks & { stop(): void } {
  const tty = Boolean(stream.isTTY) && !process.env.CI;
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const cliProgress = require('cli-progress') as typeof import('cli-progress');
  let bar: import('cli-progress').SingleBar | null = null;
  let lastLine = 0;
  let epochs = 0;
  let started = 0;
  let done = 0;
  const prefix = label ? `${label} ` : '';
  const fmtEta = (s: number) => (Number.isFinite(s) ? `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s` : '?');
  const stopBar = () => {
    if (bar) {
      bar.stop();
      bar = null;
    }
  };
  return {
    onStart(info) {
      epochs = info.config.epochs;
      stream.write(
        `${prefix}${info.config.model} ${info.config.act} on ${info.config.dataset} (${info.trainCount} train / ${info.testCount} test images), ` +
          `${info.params.toLocaleString('en-US')} parameters, device ${info.device}` +
          (info.startEpoch >= epochs ? ', finished' : info.startEpoch || info.startBatch ? `, resuming at epoch ${info.startEpoch + 1} batch ${info.startBatch + 1}` : '') +
          '\n',
      );
    },
    onBatch(b: BatchInfo) {
      // ETA from the batches timed so far in this process (evaluation time not included)
      if (started === 0) started = Date.now();
      done++;
      const remaining = b.batches - b.batch - 1 + (epochs - b.epoch - 1) * b.batches;
      // unknown until one batch has been timed after the first (the first starts the clock)
      const eta = done < 2 ? NaN : (((Date.now() - started) / 1000) / (done - 1)) * remaining;
      if (tty) {
        if (!bar) {
          bar = new cliProgress.SingleBar(
            // runEta: cli-progress fills its own {eta} (this epoch's, in bare seconds) over a payload's
            { format: `${prefix}epoch {epoch}/{epochs} [{bar}] {value}/{total} | loss {loss} | acc {acc}% | {ips} img/s | ETA {runEta}`, hideCursor: true, clearOnComplete: true, stream },
            cliProgress.Presets.shades_classic,
          );
          bar.start(b.batches, b.batch, { epoch: b.epoch + 1, epochs, loss: '-', acc: '-', ips: '-', runEta: '?' });
        }
        bar.update(b.batch + 1, { loss: b.loss.toFixed(4), acc: (100 * b.acc).toFixed(2), ips: b.imagesPerSec.toFixed(0), runEta: fmtEta(eta) });
      } else {
        const now = Date.now();
        if (now - lastLine > 10000 || b.batch + 1 === b.batches) {
          lastLine = now;
          stream.write(`${prefix}epoch ${b.epoch + 1}/${epochs} batch ${b.batch + 1}/${b.batches} loss ${b.loss.toFixed(4)} acc ${(100 * b.acc).toFixed(2)}% ${b.imagesPerSec.toFixed(0)} img/s ETA ${fmtEta(eta)}\n`);
        }
      }
    },
    onEvalStart() {
      stopBar();
    },
    onEpoch(m: EpochMetrics) {
      stopBar();
      stream.write(
        `${prefix}epoch ${m.epoch}/${epochs}: train loss ${m.trainLoss.toFixed(4)} acc ${(100 * m.trainAcc).toFixed(2)}% | test loss ${m.testLoss.toFixed(4)} acc ${(100 * m.testAcc).toFixed(2)}% | ` +
          `lr ${m.lr.toPrecision(3)} | ${m.imagesPerSec.toFixed(0)} img/s | ${m.seconds.toFixed(1)} s | peak ${(m.peakBytes / 2 ** 20).toFixed(0)} MiB\n`,
      );
    },
    stop: stopBar,
  };
}

function addTrainFlags(cmd: Command): Command {
  return cmd
    .option('--model <name>', `model: ${RESNETS.join(', ')}`, choice('--model', RESNETS), 'resnet20')
    .option('--dataset <name>', 'fashion-mnist, mnist, cifar10 or cifar100', choice('--dataset', ['fashion-mnist', 'mnist', 'cifar10', 'cifar100']), 'fashion-mnist')
    .option('--data-dir <dir>', `dataset folder (fashion-mnist default: ${DEFAULT_DATA_DIRS['fashion-mnist']})`)
    .option('--epochs <n>', 'epochs', parseIntArg('--epochs', 1, 100000), 10)
    .option('--batch <n>', 'batch size', parseIntArg('--batch', 1, 65536), 128)
    .option('--opt <name>', 'sgd, adamw or lamb', choice('--opt', ['sgd', 'adamw', 'lamb']), 'sgd')
    .option('--lr <x>', 'learning rate (peak)', parseNumberArg('--lr', 1e-12, 100), 0.1)
    .option('--momentum <x>', 'SGD momentum', parseNumberArg('--momentum', 0, 0.999999), 0.9)
    .option('--wd <x>', 'weight decay (BN and bias parameters exempt)', parseNumberArg('--wd', 0, 10), 5e-4)
    .option('--schedule <name>', 'cosine, step, onecycle or none', choice('--schedule', ['cosine', 'step', 'onecycle', 'none']), 'cosine')
    .option('--warmup <epochs>', 'linear warm-up epochs', parseNumberArg('--warmup', 0, 100000), 1)
    .option('--label-smoothing <x>', 'cross-entropy label smoothing', parseNumberArg('--label-smoothing', 0, 0.99), 0)
    .option('--no-augment', 'no random crop / flip')
    .option('--device <device>', "'auto', 'cpu', 'cuda' or 'cuda:N' (default: ADASHIFT_DEVICE, else 'auto')", parseDevice)
    .option('--threads <n>', 'CPU threads', parseIntArg('--threads', 1, 4096))
    .option('--graph', 'CUDA: replay each training step as a captured CUDA graph')
    .option('--tf32', 'CUDA: convolutions in TF32 on the tensor cores (setAllowTF32; off by default)')
    .option('--overwrite', 'start anew in an --out that holds a run (or comparison), replacing it')
    .option('--limit-train <n>', 'use the first N training images', parseIntArg('--limit-train', 1, 1e9))
    .option('--limit-test <n>', 'use the first N test images', parseIntArg('--limit-test', 1, 1e9))
    .option('--proj', 'AdaShift-B: a Linear(C, C) before its LayerNorm')
    .option('--grid <n>', 'AdaShift-MA: regions per side (default 7)', parseIntArg('--grid', 1, 1024))
    .option('--head-dim <n>', 'AdaShift-MA: channels per attention head (default 64)', parseIntArg('--head-dim', 1, 65536))
    .option('--rect <form>', "AdaShift-MA: 'norm' or 'linear' (default: 'linear' in ResNet-18/34 and the CIFAR ResNets' basic blocks, 'norm' in bottlenecks)", choice('--rect', ['norm', 'linear']))
    .option('--keep-context', 'AdaShift-MA: keep its context network for backward (faster, more memory; the same results)')
    .option('--approximate <form>', "GELU: 'none' (the erf form, default) or 'tanh'", choice('--approximate', ['none', 'tanh']));
}

/** The activation options given on the command line (none: undefined, the defaults). */
function actOptionsFrom(opts: Record<string, unknown>): TrainOptions['actOptions'] {
  const a = {
    proj: opts.proj === true ? true : undefined,
    grid: opts.grid as number | undefined,
    headDim: opts.headDim as number | undefined,
    rect: opts.rect as 'norm' | 'linear' | undefined,
    keepContext: opts.keepContext === true ? true : undefined,
    approximate: opts.approximate as 'none' | 'tanh' | undefined,
  };
  const given = Object.fromEntries(Object.entries(a).filter(([, v]) => v !== undefined));
  return Object.keys(given).length ? given : undefined;
}

function trainOptionsFrom(opts: Record<string, unknown>): TrainOptions {
  return {
    model: opts.model as TrainOptions['model'],
    dataset: opts.dataset as TrainOptions['dataset'],
    dataDir: opts.dataDir as string | undefined,
    epochs: opts.epochs as number,
    batch: opts.batch as number,
    opt: opts.opt as TrainOptions['opt'],
    lr: opts.lr as number,
    momentum: opts.momentum as number,
    wd: opts.wd as number,
    schedule: opts.schedule as TrainOptions['schedule'],
    warmup: opts.warmup as number,
    labelSmoothing: opts.labelSmoothing as number,
    augment: opts.augment as boolean,
    device: opts.device as TrainOptions['device'],
    threads: opts.threads as number | undefined,
    graph: opts.graph === true,
    overwrite: opts.overwrite === true ? true : undefined,
    limitTrain: opts.limitTrain as number | undefined,
    limitTest: opts.limitTest as number | undefined,
    actOptions: actOptionsFrom(opts),
  };
}

/**
 * What --resume passes (train and compare): only the flags given on this command line, not the
 * defaults of those left out (the activation flags have none), with the settings a resume may
 * change; the resumed run or comparison refuses any other that differs from its own.
 */
function resumeOptions<T extends { out?: string | null; actOptions?: TrainOptions['actOptions'] }>(all: T, opts: Record<string, unknown>, cmd: Command): T {
  const given = (name: string) => cmd.getOptionValueSource(name) === 'cli';
  return { ...Object.fromEntries(Object.entries(all).filter(([k]) => given(k))), actOptions: all.actOptions, device: opts.device, threads: opts.threads, graph: opts.graph === true, dataDir: opts.dataDir, out: all.out, resume: true } as unknown as T;
}

/**
 * Ctrl-C (SIGINT) or SIGTERM (what timeout, docker stop, systemd and batch schedulers send): the
 * first asks training to stop after the current batch (a checkpoint is saved), a second exits at
 * once. A command that stopped this way exits with 128 + the signal's number (130, 143), as a
 * process killed by it would, so that `train && eval` does not go on as if it had finished.
 */
function interruptible(): { shouldStop(): boolean; dispose(): void; finish(): void } {
  let stopped: NodeJS.Signals | null = null;
  const code = (sig: NodeJS.Signals) => 128 + (sig === 'SIGINT' ? 2 : 15);
  const handler = (sig: NodeJS.Signals) => {
    if (stopped) process.exit(code(sig));
    stopped = sig;
    process.stderr.write(`\nadashift: ${sig === 'SIGINT' ? 'Ctrl-C' : sig}: stopping after this batch and saving a checkpoint (${sig === 'SIGINT' ? 'Ctrl-C' : 'the signal'} again to quit now)\n`);
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return {
    shouldStop: () => stopped !== null,
    dispose: () => {
      process.off('SIGINT', handler);
      process.off('SIGTERM', handler);
    },
    // after the command's own output: the exit status says it was stopped
    finish: () => {
      if (stopped) process.exitCode = code(stopped);
    },
  };
}

export const DEMO_OPTIONS: TrainOptions = {
  model: 'resnet20',
  act: 'adashift-b',
  dataset: 'fashion-mnist',
  epochs: 4,
  batch: 128,
  lr: 0.1,
  schedule: 'onecycle',
  limitTrain: 30000,
  limitTest: 10000,
};

export function main(argv = process.argv): void {
  const program = new Command();
  program.name('adashift').description('AdaShift activation: train, evaluate, benchmark').version(require('../package.json').version);
  program.showHelpAfterError();
  // a usage error (an unknown flag or command, a bad value) exits with 2, as argparse's and
  // getopt's do; 1 is for a run that failed, 130 / 143 for one stopped by a signal
  program.exitOverride((err) => {
    process.exit(err.exitCode === 0 ? 0 : 2);
  });

  program
    .command('doctor')
    .description('show the backends this build and host offer, and why CUDA is or is not used')
    .option('--json', 'print JSON')
    .action((opts) => {
      if (opts.json) console.log(JSON.stringify({ ...doctorInfo(), memory: memory() }, null, 2));
      else console.log(doctorText());
    });

  const bench = program.command('bench').description('benchmark programs');
  bench
    .command('act')
    .description('forward+backward of each activation: time, Melem/s, GB/s, and PyTorch side by side')
    .option('--shape <N,C,H,W>', 'a shape to measure (repeatable; default 64,64,28,28 and 32,256,56,56)', parseShape)
    .option('--add-shape <N,C,H,W>', 'measure this shape in addition to the defaults', parseShape)
    .option('--acts <list>', `activations (default ${ACTIVATIONS.join(',')})`, parseActs)
    .option('--device <device>', "'auto', 'cpu', 'cuda' or 'cuda:N' (default: ADASHIFT_DEVICE, else 'auto')", parseDevice)
    .option('--repeats <n>', 'timed runs (median reported)', parseIntArg('--repeats', 1, 10000), 10)
    .option('--warmup <n>', 'untimed runs first', parseIntArg('--warmup', 0, 1000), 2)
    .option('--threads <n>', 'CPU threads', parseIntArg('--threads', 1, 4096))
    .option('--no-torch', 'skip the PyTorch side-by-side run')
    .option('--out <dir>', 'folder for the JSON result', 'bench/results')
    .action((opts) => {
      if (opts.threads) setNumThreads(opts.threads);
      const shapes = [...(opts.shape ?? [[64, 64, 28, 28], [32, 256, 56, 56]]), ...(opts.addShape ?? [])];
      const r = benchAct({
        shapes,
        acts: opts.acts,
        device: opts.device,
        repeats: opts.repeats,
        warmup: opts.warmup,
        torch: opts.torch,
        outDir: opts.out,
        onResult: (row) => console.log(actRow(row)),
      });
      console.log(`copy bandwidth (before and after each shape's activations): ${r.copyBandwidth.map((c) => `${c.shape.join('x')} ${c.before.toFixed(1)} and ${c.after.toFixed(1)} GB/s`).join(', ')}`);
      console.log(`device ${r.device}${r.gpu ? ` (${r.gpu})` : ''}, ${r.threads} thread(s), ${cpuLabel(r.cpu, r.cpuDetails)}, commit ${r.commit}${r.torchPython ? '' : 'torchSkipped' in r ? '; no PyTorch side (--no-torch)' : `; ${noTorchReason()}`}`);
      if (r.file) console.log(`wrote ${r.file}`);
    });

  bench
    .command('step')
    .description('time per training step of ResNets for each activation: ms/step, images/s, peak memory, PyTorch side by side; --profile breaks one step into op families')
    .option('--models <list>', `models: ${STEP_MODEL_NAMES.join(', ')} (default resnet20,resnet50-small; resnet50 224x224 too on a GPU)`, parseList('model', STEP_MODEL_NAMES))
    .option('--acts <list>', `activations (default ${ACTIVATIONS.join(',')})`, parseActs)
    .option('--batch <n>', "batch size for every model of the 'step' section (default: resnet20 64, resnet50-small 32, resnet50 128)", parseIntArg('--batch', 1, 65536))
    .option('--sections <list>', `sections to run: ${STEP_SECTIONS.join(', ')} (default all)`, parseList('section', STEP_SECTIONS))
    .option('--device <device>', "'auto', 'cpu', 'cuda' or 'cuda:N' (default: ADASHIFT_DEVICE, else 'auto')", parseDevice)
    .option('--threads <n>', 'CPU threads', parseIntArg('--threads', 1, 4096))
    .option('--repeats <n>', 'timed steps (median reported)', parseIntArg('--repeats', 1, 10000), 10)
    .option('--warmup <n>', 'untimed steps first', parseIntArg('--warmup', 0, 1000), 2)
    .option('--no-torch', "skip the PyTorch side-by-side run (the step section then times the activations round robin, each step against ReLU's of the same round)")
    .option('--graph', 'CUDA: also time each step captured and replayed as one CUDA graph')
    .option('--opt <name>', `the step's optimizer: ${STEP_OPTIMIZER_NAMES.join(', ')} (PyTorch has no LAMB: no peer for it)`, choice('--opt', STEP_OPTIMIZER_NAMES), 'sgd')
    .option('--tf32', "CUDA: convolutions in TF32 on the tensor cores, ours and PyTorch's (setAllowTF32; PyTorch's default)")
    .option('--profile', 'profile one model + activation (the first of --models and --acts; default resnet20, adashift-b): time per op family per step')
    .option('--out <dir>', 'folder for the JSON result', 'bench/results')
    .addOption(new Option('--input-size <n>', 'override the input height = width (tests)').argParser(parseIntArg('--input-size', 1, 4096)).hideHelp())
    .addOption(new Option('--batch-sizes <list>', "batch sizes of the 'batch' section").argParser(parseIntList('--batch-sizes', 1, 65536)).hideHelp())
    .action(async (opts, cmd: Command) => {
      if (opts.profile) {
        // what the profile does not use is refused, not dropped: one model and activation, one step kind
        const unused = [['sections', '--sections'], ['torch', '--no-torch'], ['graph', '--graph'], ['batchSizes', '--batch-sizes']].filter(([k]) => cmd.getOptionValueSource(k) === 'cli').map(([, f]) => f);
        if (opts.models?.length > 1) unused.push('--models with more than one model');
        if (opts.acts?.length > 1) unused.push('--acts with more than one activation');
        if (unused.length) cmd.error(`error: --profile profiles one model and one activation's step; it does not take ${unused.join(', ')}`);
        const r = benchProfile({
          model: opts.models?.[0],
          act: opts.acts?.[0],
          batch: opts.batch,
          inputSize: opts.inputSize,
          device: opts.device,
          repeats: opts.repeats,
          warmup: opts.warmup,
          outDir: opts.out,
          threads: opts.threads,
          opt: opts.opt,
          tf32: opts.tf32 === true ? true : undefined,
        });
        console.log(profileTable(r));
        if (r.file) console.log(`wrote ${r.file}`);
        return;
      }
      const r = await benchStep({
        models: opts.models,
        acts: opts.acts,
        batch: opts.batch,
        inputSize: opts.inputSize,
        batchSizes: opts.batchSizes,
        sections: opts.sections as StepSection[] | undefined,
        device: opts.device,
        threads: opts.threads,
        repeats: opts.repeats,
        warmup: opts.warmup,
        torch: opts.torch,
        graph: opts.graph,
        opt: opts.opt,
        tf32: opts.tf32 === true ? true : undefined,
        outDir: opts.out,
        onResult: (section, row) => console.log(stepRowLine(section, row)),
      });
      console.log(stepTable(r));
      if (r.file) console.log(`wrote ${r.file}`);
      // every row an error (out of memory, a model that does not build): the run measured nothing
      const rows = Object.values(r.sections).flatMap((v) => (Array.isArray(v) ? v : []));
      if (rows.length > 0 && rows.every(isStepError)) {
        process.stderr.write('adashift: bench step measured nothing: every row failed (see the errors above)\n');
        process.exitCode = 1;
      }
    });

  addTrainFlags(
    program
      .command('train')
      .description('train a ResNet on a dataset with the chosen activation')
      .option('--act <name>', `activation: ${ACTIVATIONS.join(', ')}`, choice('--act', ACTIVATIONS), 'adashift-b')
      .option('--seed <n>', 'random seed', parseIntArg('--seed', 0, 2 ** 31), 0)
      .option('--out <dir>', 'output folder (metrics.jsonl, checkpoint.safetensors)')
      .option('--resume', 'continue from <out>/checkpoint.safetensors'),
  ).action(async (opts, cmd: Command) => {
    if (opts.tf32) setAllowTF32(true);
    const out = (opts.out as string | undefined) ?? path.join('runs', `${opts.model}-${opts.act}-${opts.dataset}-seed${opts.seed}`);
    // resuming, epochs extends the run; device, threads, graph and --keep-context may change
    const all: TrainOptions = { ...trainOptionsFrom(opts), act: opts.act, seed: opts.seed, out };
    const options: TrainOptions = opts.resume ? resumeOptions(all, opts, cmd) : all;
    const stop = interruptible();
    const progress = progressCallbacks();
    try {
      const r = await train(options, { ...progress, shouldStop: stop.shouldStop });
      const last = r.history[r.history.length - 1];
      if (r.interrupted) console.log(`stopped; checkpoint saved to ${r.checkpoint} (continue with --resume --out ${out})`);
      if (last) console.log(`test accuracy ${(100 * last.testAcc).toFixed(2)}% after ${last.epoch} epoch(s); metrics in ${path.join(out, 'metrics.jsonl')}`);
      if (opts.graph) console.log(`${r.graphSteps} training step(s) ran as CUDA graph replays (the run's first step and smaller last batches run eagerly)`);
      if (r.interrupted) stop.finish();
    } finally {
      progress.stop();
      stop.dispose();
    }
  });

  program
    .command('eval')
    .description('test loss and accuracy of a checkpoint')
    .requiredOption('--checkpoint <file>', 'a checkpoint.safetensors written by train')
    .option('--dataset <name>', "evaluate on another dataset of the same shape (from --data-dir, else its default folder)")
    .option('--data-dir <dir>', "dataset folder (default: the run's, for the run's dataset)")
    .option('--limit-test <n>', 'use the first N test images', parseIntArg('--limit-test', 1, 1e9))
    .option('--batch <n>', 'images per forward pass (default 256)', parseIntArg('--batch', 1, 65536))
    .option('--threads <n>', 'CPU threads', parseIntArg('--threads', 1, 4096))
    .option('--device <device>', "'auto', 'cpu', 'cuda' or 'cuda:N' (default: ADASHIFT_DEVICE, else 'auto')", parseDevice)
    .option('--tf32', 'CUDA: convolutions in TF32 on the tensor cores (setAllowTF32; off by default)')
    .action((opts) => {
      if (opts.tf32) setAllowTF32(true);
      if (opts.threads !== undefined) setNumThreads(opts.threads);
      const r = evaluateCheckpoint(opts.checkpoint, { dataset: opts.dataset, dataDir: opts.dataDir, limitTest: opts.limitTest, batch: opts.batch, device: opts.device });
      console.log(`${r.model} ${r.act} after ${r.epoch} epoch(s) on ${r.dataset} (${r.count} test images): loss ${r.loss.toFixed(4)}, accuracy ${(100 * r.acc).toFixed(2)}%`);
    });

  addTrainFlags(
    program
      .command('compare')
      .description('train each activation with several seeds; write a table and plots')
      .option(
        '--acts <list>',
        `activations (default ${ACTIVATIONS.join(',')}); each may carry options of its own, ` +
          "e.g. 'relu,adashift-b,adashift-b:proj,adashift-ma:grid=4:rect=norm' (names as the flags: proj, grid, head-dim, rect, keep-context, approximate)",
        parseArms,
      )
      .option('--seeds <n>', 'runs per activation', parseIntArg('--seeds', 1, 1000), 1)
      .option('--seed <n>', 'first seed', parseIntArg('--seed', 0, 2 ** 31), 0)
      .option('--out <dir>', 'output folder', 'runs/compare')
      .option('--resume', 'continue the comparison in <out> (finished runs are kept; --acts and --seeds may add runs)'),
  ).action(async (opts, cmd: Command) => {
    if (opts.tf32) setAllowTF32(true);
    const all: CompareOptions = { ...trainOptionsFrom(opts), acts: opts.acts, seeds: opts.seeds, seed: opts.seed, out: opts.out };
    const options: CompareOptions = opts.resume ? resumeOptions(all, opts, cmd) : all;
    const stop = interruptible();
    let progress: ReturnType<typeof progressCallbacks> | null = null;
    try {
      const r = await compare(options, {
        shouldStop: stop.shouldStop,
        onRunStart: (label, seed, i, total) => process.stderr.write(`run ${i + 1}/${total}: ${label}, seed ${seed}\n`),
        train: (label, seed) => {
          (progress as ReturnType<typeof progressCallbacks> | null)?.stop();
          progress = progressCallbacks(`[${label} s${seed}]`);
          return progress;
        },
      });
      if (r.interrupted) {
        console.log(`stopped after ${r.runsDone} of ${r.runs} runs; the stopped run saved a checkpoint (continue with: adashift compare --resume --out ${opts.out})`);
        stop.finish();
        return;
      }
      console.log(r.table);
      console.log(`report: ${r.report}; plots: ${r.plots.join(', ')}`);
    } finally {
      (progress as ReturnType<typeof progressCallbacks> | null)?.stop();
      stop.dispose();
    }
  });

  program
    .command('demo')
    .description('the main job: a ResNet-20 with AdaShift-B on part of Fashion-MNIST, then its test accuracy')
    .option('--device <device>', "'auto', 'cpu', 'cuda' or 'cuda:N' (default: ADASHIFT_DEVICE, else 'auto')", parseDevice)
    .option('--out <dir>', 'output folder', 'runs/demo')
    .action(async (opts) => {
      const stop = interruptible();
      const progress = progressCallbacks();
      const t0 = Date.now();
      try {
        // the demo's folder holds the previous demo's run: a new demo replaces it
        const r = await train({ ...DEMO_OPTIONS, device: opts.device, out: opts.out, overwrite: true }, { ...progress, shouldStop: stop.shouldStop });
        const last = r.history[r.history.length - 1];
        if (r.interrupted) {
          console.log(`demo stopped${last ? ` after ${last.epoch} of ${DEMO_OPTIONS.epochs} epochs` : ''}; its checkpoint is in ${opts.out} (npm run demo starts it again)`);
          stop.finish();
        } else if (last) {
          console.log(
            `demo: ResNet-20 with AdaShift-B, ${DEMO_OPTIONS.limitTrain} Fashion-MNIST training images, ${last.epoch} epochs: ` +
              `test accuracy ${(100 * last.testAcc).toFixed(2)}% on ${DEMO_OPTIONS.limitTest} test images in ${((Date.now() - t0) / 1000).toFixed(0)} s`,
          );
        }
      } finally {
        progress.stop();
        stop.dispose();
      }
    });

  program.parseAsync(argv).catch((e: Error & { code?: string }) => {
    process.stderr.write(`adashift: ${e.message}${e.code ? ` (${e.code})` : ''}\n`);
    process.exit(1);
  });
}

if (require.main === module) {
  try {
    main();
  } catch (e) {
    const err = e as Error & { code?: string };
    process.stderr.write(`adashift: ${err.message}${err.code ? ` (${err.code})` : ''}\n`);
    process.exit(1);
  }
}
