// Where a result came from: date, commit, Node, CPU and threads, device (and GPU, CUDA
// versions, TF32 mode). Benchmark JSON, compare summaries and training configs carry it, so that a
// number can be traced to the build and machine that produced it.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { backendInfo, getAllowTF32 } from './device';
import { addonFile } from './native';

const packageRoot = path.resolve(__dirname, '..');

/** This package's version, from its package.json. */
export function packageVersion(): string {
  try {
    return (JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version?: string }).version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/**
 * The commit of this package's checkout (or of the checkout rooted at `root`), with '-dirty'
 * when tracked files other than bench/results and Markdown documents have changed since, or 'unknown' when
 * it is not one: an installed copy inside someone else's repository must not report that
 * repository's commit.
 */
export function gitCommit(root: string = packageRoot): string {
  try {
    const git = (...args: string[]) =>
      execFileSync('git', args, { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
    if (fs.realpathSync(git('rev-parse', '--show-toplevel')) !== fs.realpathSync(root)) return 'unknown';
    // '-dirty' when tracked files differ from the commit: the numbers are not that commit's.
    // Result files (bench/results) and Markdown documents do not run: they do not count.
    const dirty = git('status', '--porcelain', '--untracked-files=no', '--', '.', ':(exclude)bench/results', ':(exclude,glob)**/*.md') !== '';
    return git('rev-parse', '--short=12', 'HEAD') + (dirty ? '-dirty' : '');
  } catch {
    return 'unknown';
  }
}

/** The CPU beyond its marketing name: what makes two "AMD EPYC" hosts differ in speed. */
export interface CpuDetails {
  vendor?: string;
  family?: number;
  model?: number;
  stepping?: number;
  /** Vector instruction sets the kernels choose between, as far as the CPU reports them. */
  isa: string[];
  /** Cache sizes of CPU 0 in bytes (L1 data, L2, L3), where the system lists them. */
  cacheBytes: { l1d?: number; l2?: number; l3?: number };
}

const ISA_FLAGS = ['avx512f', 'avx2', 'fma', 'avx', 'sse4_2', 'neon', 'asimd'];

/** Parses a cache size as /sys lists it ("32K", "1024K", "32768K", "1M"). */
function cacheSize(text: string): number | undefined {
  const m = /^(\d+)([KMG]?)$/.exec(text.trim());
  if (!m) return undefined;
  return Number(m[1]) * ({ '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 } as Record<string, number>)[m[2]];
}

/**
 * The CPU's vendor, family, model and stepping, its vector instruction sets and cache sizes, from
 * /proc/cpuinfo and /sys on Linux (empty elsewhere). Benchmark results carry it: hosts sold
 * under one name ("AMD EPYC") differ by generation, and with it in FMA width and caches.
 */
export function cpuDetails(): CpuDetails {
  const details: CpuDetails = { isa: [], cacheBytes: {} };
  try {
    const text = fs.readFileSync('/proc/cpuinfo', 'utf8');
    const first = text.split(/\n\s*\n/)[0];
    const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(.*)$`, 'm').exec(first)?.[1]?.trim();
    details.vendor = field('vendor_id') ?? field('CPU implementer');
    const num = (v: string | undefined) => (v !== undefined && /^(0x)?[0-9a-f]+$/i.test(v) ? Number(v) : undefined);
    details.family = num(field('cpu family') ?? field('CPU architecture'));
    details.model = num(field('model') ?? field('CPU part'));
    details.stepping = num(field('stepping') ?? field('CPU variant'));
    const flags = new Set((field('flags') ?? field('Features') ?? '').split(/\s+/));
    details.isa = ISA_FLAGS.filter((f) => flags.has(f));
  } catch {
    // not Linux, or no /proc: the name from os.cpus() is all there is
  }
  const levels: Record<string, 'l1d' | 'l2' | 'l3'> = { '1Data': 'l1d', '2Unified': 'l2', '3Unified': 'l3' };
  for (let i = 0; i < 8; ++i) {
    const dir = `/sys/devices/system/cpu/cpu0/cache/index${i}`;
    try {
      const read = (f: string) => fs.readFileSync(path.join(dir, f), 'utf8').trim();
      const key = levels[read('level') + read('type')];
      const size = cacheSize(read('size'));
      if (key && size !== undefined) details.cacheBytes[key] = size;
    } catch {
      break;
    }
  }
  return details;
}

/** "AMD EPYC (family 25 model 17, avx512f, L2 1 MiB, L3 32 MiB)": a result's CPU in one line. */
export function cpuLabel(name: string, d: CpuDetails | undefined): string {
  if (!d) return name;
  const mib = (b: number) => (b >= 1024 ** 2 ? `${+(b / 1024 ** 2).toFixed(1)} MiB` : `${+(b / 1024).toFixed(0)} KiB`);
  const parts = [
    d.family !== undefined && d.model !== undefined ? `family ${d.family} model ${d.model}` : '',
    d.isa[0] ?? '',
    d.cacheBytes.l2 ? `L2 ${mib(d.cacheBytes.l2)}` : '',
    d.cacheBytes.l3 ? `L3 ${mib(d.cacheBytes.l3)}` : '',
  ].filter((p) => p !== '');
  return parts.length ? `${name} (${parts.join(', ')})` : name;
}

/** The loaded addon's file (relative to the package) and when it was built. */
function addonInfo(): { file: string; built: string } | undefined {
  const file = addonFile();
  if (!file) return undefined;
  try {
    return { file: path.relative(packageRoot, file), built: fs.statSync(file).mtime.toISOString() };
  } catch {
    return { file, built: 'unknown' };
  }
}

export function environment(device: string) {
  const info = backendInfo();
  const cpus = os.cpus();
  return {
    date: new Date().toISOString(),
    version: packageVersion(),
    commit: gitCommit(),
    node: process.version,
    cpu: cpus.length ? cpus[0].model : 'unknown',
    cpuDetails: cpuDetails(),
    hardwareThreads: cpus.length,
    threads: info.cpuThreads,
    device,
    gpu: device.startsWith('cuda') ? info.devices[Number(device.split(':')[1] ?? 0)]?.name : undefined,
    cudaRuntime: info.cudaCompiled && info.cudaUsable ? info.runtimeVersion : undefined,
    cudaDriver: info.cudaCompiled && info.cudaUsable ? info.driverVersion : undefined,
    // whether CUDA convolutions ran in TF32 (setAllowTF32); the CPU computes in float32 always
    allowTF32: device.startsWith('cuda') ? getAllowTF32() : undefined,
    // the addon that ran (the commit names the sources; a build is not always of them)
    addon: addonInfo(),
    // the package's environment variables that were set: several change what is measured
    // (ADASHIFT_GEMM, ADASHIFT_CPU_GENERIC, ADASHIFT_POOL_SPIN_US, ADASHIFT_TORCH_SETTLE_MS, ...)
    settings: Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('ADASHIFT_')).sort(([a], [b]) => a.localeCompare(b))),
  };
}
