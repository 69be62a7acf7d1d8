// Shared pieces of the benchmark programs: timing with device synchronisation, medians,
// environment description, the PyTorch peer, and result files.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { getAllowTF32, setAllowTF32 } from '../device';
import { AdaShiftError, check } from '../errors';
import { ensureDir, writeAtomic } from '../io/safetensors';
import { native } from '../native';
export { environment, gitCommit } from '../provenance';
export { median, pairedRatio } from '../stats';

/** Seconds taken by fn, after the device's queued work has finished. */
export function timeIt(device: string, fn: () => void): number {
  native.synchronize(device);
  const t0 = process.hrtime.bigint();
  fn();
  native.synchronize(device);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/**
 * A python3 that can import torch, or undefined: `python` when given, else ADASHIFT_PYTHON when
 * set (only it: an explicit choice without torch means no PyTorch side, not another
 * interpreter's), else Debian's /usr/bin/python3, then python3 on the PATH.
 */
export function findTorchPython(python?: string): string | undefined {
  const explicit = python ?? process.env.ADASHIFT_PYTHON;
  const candidates = explicit ? [explicit] : ['/usr/bin/python3', 'python3'];
  for (const py of candidates) {
    const r = spawnSync(py, ['-c', 'import torch; print(torch.__version__)'], { stdio: ['ignore', 'pipe', 'ignore'], timeout: 60000 });
    if (r.status === 0) return py;
  }
  return undefined;
}

/** Why there is no PyTorch side, for the terminal line. */
export function noTorchReason(): string {
  const explicit = process.env.ADASHIFT_PYTHON;
  return explicit ? `ADASHIFT_PYTHON=${explicit} cannot import torch` : 'PyTorch not found (set ADASHIFT_PYTHON to a python3 with torch)';
}

/**
 * Runs a Python benchmark script with a JSON config; returns its JSON output (its last stdout
 * line). A run past timeoutMs is killed.
 */
export function runPython(python: string, script: string, config: unknown, timeoutMs = 300_000): unknown {
  const r = spawnSync(python, [script, JSON.stringify(config)], { stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 << 20, timeout: timeoutMs, killSignal: 'SIGKILL' });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ETIMEDOUT') throw new Error(`${path.basename(script)} ran past ${timeoutMs / 1000} s and was stopped`);
  if (r.status !== 0) throw new Error(`${path.basename(script)} failed (${r.signal ? `killed by ${r.signal}` : `exit code ${r.status}`})`);
  const lines = r.stdout.toString().trim().split('\n');
  return JSON.parse(lines[lines.length - 1]);
}

/**
 * A benchmark's result folder (default bench/results; null: write no file), made before anything
 * is measured: a folder that cannot be made fails at once, not after the whole run.
 */
export function resultDir(outDir: string | null | undefined): string | null {
  if (outDir === null) return null;
  const dir = outDir ?? 'bench/results';
  ensureDir(dir);
  // a folder that exists but cannot be written to fails here too: a probe file, made and removed
  const probe = path.join(dir, `.adashift-write-probe.${process.pid}`);
  try {
    fs.writeFileSync(probe, '');
    fs.rmSync(probe, { force: true });
  } catch (e) {
    throw new AdaShiftError('ERR_IO', `${dir}: the result folder cannot be written to (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); give another with --out`);
  }
  return dir;
}

export function writeResult(dir: string, name: string, data: unknown): string {
  ensureDir(dir);
  const file = path.join(dir, name);
  writeAtomic(file, [Buffer.from(JSON.stringify(data, null, 2) + '\n')]);
  return file;
}

export function scriptPath(name: string): string {
  // dist/bench/common.js -> <root>/bench/<name>; also works from lib/ under ts-jest
  return path.resolve(__dirname, '..', '..', 'bench', name);
}

/**
 * A benchmark's `tf32` option: true or false sets CUDA convolutions' TF32 mode for the run,
 * undefined or null keeps the current one. Returns the mode in force and a restore of the
 * previous setting, for the benchmark's finally.
 */
export function applyTF32(who: string, tf32: boolean | null | undefined): { tf32: boolean; restore(): void } {
  check(tf32 === undefined || tf32 === null || typeof tf32 === 'boolean', 'ERR_ARG', () => `${who}: tf32 must be a boolean, got ${typeof tf32}`);
  const before = getAllowTF32();
  if (typeof tf32 === 'boolean') setAllowTF32(tf32);
  return { tf32: getAllowTF32(), restore: () => setAllowTF32(before) };
}
