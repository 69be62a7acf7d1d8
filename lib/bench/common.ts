// Shared pieces of the benchmark programs: timing with device synchronisation, medians,
// environment description, the PyTorch peer, and result files.
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { backendInfo } from '../device';
import { writeAtomic } from '../io/safetensors';
import { native } from '../native';

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Seconds taken by fn, after the device's queued work has finished. */
export function timeIt(device: string, fn: () => void): number {
  native.synchronize(device);
  const t0 = process.hrtime.bigint();
  fn();
  native.synchronize(device);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

export function gitCommit(): string {
  try {
    return execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: path.resolve(__dirname, '..', '..'), stdio: ['ignore', 'pipe', 'ignore'] })
      .toString()
      .trim();
  } catch {
    return 'unknown';
  }
}

export function environment(device: string) {
  const info = backendInfo();
  const cpus = os.cpus();
  return {
    date: new Date().toISOString(),
    commit: gitCommit(),
    node: process.version,
    cpu: cpus.length ? cpus[0].model : 'unknown',
    hardwareThreads: cpus.length,
    threads: info.cpuThreads,
    device,
    gpu: device.startsWith('cuda') ? info.devices[Number(device.split(':')[1] ?? 0)]?.name : undefined,
    cudaRuntime: info.cudaCompiled ? info.runtimeVersion : undefined,
    cudaDriver: info.cudaCompiled ? info.driverVersion : undefined,
  };
}

/** A python3 that can import torch, or undefined. Prefers ADASHIFT_PYTHON, then Debian's. */
export function findTorchPython(): string | undefined {
  const candidates = [process.env.ADASHIFT_PYTHON, '/usr/bin/python3', 'python3'].filter(Boolean) as string[];
  for (const py of candidates) {
    const r = spawnSync(py, ['-c', 'import torch; print(torch.__version__)'], { stdio: ['ignore', 'pipe', 'ignore'], timeout: 60000 });
    if (r.status === 0) return py;
  }
  return undefined;
}

/** Runs a Python benchmark script with a JSON config; returns its JSON output. */
export function runPython(python: string, script: string, config: unknown): unknown {
  const r = spawnSync(python, [script, JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${path.basename(script)} failed with exit code ${r.status}`);
  const lines = r.stdout.toString().trim().split('\n');
  return JSON.parse(lines[lines.length - 1]);
}

export function writeResult(dir: string, name: string, data: unknown): string {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, name);
  writeAtomic(file, [Buffer.from(JSON.stringify(data, null, 2) + '\n')]);
  return file;
}

export function scriptPath(name: string): string {
  // dist/bench/common.js -> <root>/bench/<name>; also works from lib/ under ts-jest
  return path.resolve(__dirname, '..', '..', 'bench', name);
}
