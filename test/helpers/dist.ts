// Makes sure dist/ (the compiled package, what `require('adashift')` loads) is at least as new
// as every lib/ source, rebuilding it with tsc when it is missing or stale. Used by the tests
// that load the package outside jest's module system (worker threads, child processes).
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

export const ROOT = path.resolve(__dirname, '..', '..');
export const DIST = path.join(ROOT, 'dist');

function newestMtime(dir: string): number {
  let newest = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, newestMtime(p));
    else if (e.name.endsWith('.ts')) newest = Math.max(newest, fs.statSync(p).mtimeMs);
  }
  return newest;
}

function distIsFresh(): boolean {
  const index = path.join(DIST, 'index.js');
  if (!fs.existsSync(index)) return false;
  return fs.statSync(index).mtimeMs >= newestMtime(path.join(ROOT, 'lib'));
}

/** Builds dist/ with `tsc -p tsconfig.json` unless it is already up to date; returns its path. */
export function ensureDist(): string {
  if (distIsFresh()) return DIST;
  const tsc = require.resolve('typescript/bin/tsc', { paths: [ROOT] });
  const r = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
  // tsc emits even with type errors; what matters here is an up-to-date dist/index.js.
  if (!distIsFresh()) {
    throw new Error(`could not build dist/ with tsc (status ${r.status}):\n${r.stdout}\n${r.stderr}`);
  }
  if (r.status !== 0) process.stderr.write(`warning: tsc reported errors while building dist/:\n${r.stdout}${r.stderr}\n`);
  // index.js's mtime may equal a source's: touch it so the next check does not rebuild.
  const now = new Date();
  fs.utimesSync(path.join(DIST, 'index.js'), now, now);
  return DIST;
}

/**
 * Runs `script` (which may `require(DIST)`, the compiled package) in a fresh node process on
 * the CPU with extra environment variables (switches read once at load), and returns the JSON
 * it writes to stdout. The child must exit cleanly and print nothing to stderr.
 */
export function jsonFromChild(script: string, env: Record<string, string>): unknown {
  ensureDist();
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, ADASHIFT_DEVICE: 'cpu', ...env } });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return JSON.parse(r.stdout);
}
