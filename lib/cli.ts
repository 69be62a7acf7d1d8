#!/usr/bin/env node
// The adashift command line: a thin shell over the exported functions (argument parsing and
// printing only).
import { Command, InvalidArgumentError } from 'commander';
import { backendInfo, resolveDevice, setNumThreads } from './device';
import { memory } from './tensor';
import { ACTIVATIONS, ActivationName } from './nn/activation';
import { ActResult, benchAct } from './bench/act';

function parseIntArg(name: string, lo: number, hi: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < lo || n > hi) throw new InvalidArgumentError(`${name} must be an integer in [${lo}, ${hi}], got '${v}'`);
    return n;
  };
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
  for (const a of acts) {
    if (!ACTIVATIONS.includes(a as ActivationName)) throw new InvalidArgumentError(`unknown activation '${a}'; expected ${ACTIVATIONS.join(', ')}`);
  }
  return acts as ActivationName[];
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

function cudaVersion(v: number): string {
  return v ? `${Math.floor(v / 1000)}.${(v % 1000) / 10}` : 'none';
}

export function doctorText(): string {
  const info = backendInfo();
  const lines: string[] = [];
  lines.push(`adashift ${require('../package.json').version} on Node ${process.version} (${process.platform}-${process.arch})`);
  lines.push(`CPU backend: available, ${info.cpuThreads} thread(s)`);
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
  let auto: string;
  try {
    auto = resolveDevice('auto');
  } catch (e) {
    auto = `error: ${(e as Error).message}`;
  }
  const env = process.env.ADASHIFT_DEVICE;
  lines.push(`default device: ${auto}${env ? ` (ADASHIFT_DEVICE=${env})` : ''}${auto === 'cpu' && !info.cudaUsable ? ' (CUDA not usable, see above)' : ''}`);
  if (!info.cudaCompiled) {
    lines.push('to build for a GPU: install the CUDA toolkit (nvcc) and run `npm rebuild adashift`');
  }
  return lines.join('\n');
}

function actRow(r: ActResult): string {
  const shape = r.shape.join('x');
  const torch = r.torch ? `  torch ${r.torch.totalMs.toFixed(2).padStart(9)} ms  ${r.torch.melemPerSec.toFixed(0).padStart(6)} Melem/s  x${r.speedupVsTorch!.toFixed(2)}` : '';
  return `${r.act.padEnd(12)} ${shape.padEnd(14)} fwd ${r.forwardMs.toFixed(2).padStart(8)} ms  bwd ${r.backwardMs.toFixed(2).padStart(8)} ms  ${r.melemPerSec.toFixed(0).padStart(6)} Melem/s  ${r.gbPerSec.toFixed(1).padStart(6)} GB/s${torch}`;
}

export function main(argv = process.argv): void {
  const program = new Command();
  program.name('adashift').description('AdaShift activation: train, evaluate, benchmark').version(require('../package.json').version);
  program.showHelpAfterError();
  program.exitOverride((err) => {
    process.exit(err.exitCode);
  });

  program
    .command('doctor')
    .description('show the backends this build and host offer, and why CUDA is or is not used')
    .option('--json', 'print JSON')
    .action((opts) => {
      if (opts.json) console.log(JSON.stringify({ ...backendInfo(), memory: memory() }, null, 2));
      else console.log(doctorText());
    });

  const bench = program.command('bench').description('benchmark programs');
  bench
    .command('act')
    .description('forward+backward of each activation: time, Melem/s, GB/s, and PyTorch side by side')
    .option('--shape <N,C,H,W>', 'a shape to measure (repeatable; default 64,64,28,28 and 32,256,56,56)', parseShape)
    .option('--add-shape <N,C,H,W>', 'measure this shape in addition to the defaults', parseShape)
    .option('--acts <list>', `activations (default ${ACTIVATIONS.join(',')})`, parseActs)
    .option('--device <device>', "'auto', 'cpu', 'cuda' or 'cuda:N'", 'auto')
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
      console.log(`copy bandwidth: ${r.copyBandwidth.map((c) => `${c.shape.join('x')} ${c.gbPerSec.toFixed(1)} GB/s`).join(', ')}`);
      console.log(`device ${r.device}${r.gpu ? ` (${r.gpu})` : ''}, ${r.threads} thread(s), commit ${r.commit}${r.torchPython ? '' : '; PyTorch not found (set ADASHIFT_PYTHON)'}`);
      if (r.file) console.log(`wrote ${r.file}`);
    });

  program.parse(argv);
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
