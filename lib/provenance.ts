// Where a result came from: date, commit, Node, CPU and threads, device (and GPU, CUDA
// versions, TF32 mode). Benchmark JSON, compare summaries and training configs carry it, so that a
// number can be traced to the build and machine that produced it.
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { backendInfo, getAllowTF32 } from './device';

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

export function environment(device: string) {
  const info = backendInfo();
  const cpus = os.cpus();
  return {
    date: new Date().toISOString(),
    version: packageVersion(),
    commit: gitCommit(),
    node: process.version,
    cpu: cpus.length ? cpus[0].model : 'unknown',
    hardwareThreads: cpus.length,
    threads: info.cpuThreads,
    device,
    gpu: device.startsWith('cuda') ? info.devices[Number(device.split(':')[1] ?? 0)]?.name : undefined,
    cudaRuntime: info.cudaCompiled ? info.runtimeVersion : undefined,
    cudaDriver: info.cudaCompiled ? info.driverVersion : undefined,
    // whether CUDA convolutions ran in TF32 (setAllowTF32); the CPU computes in float32 always
    allowTF32: device.startsWith('cuda') ? getAllowTF32() : undefined,
  };
}
