#!/usr/bin/env node
// Builds the native addon during `npm ci` / `npm install`, with no downloads:
//   - CMake present (default): cmake-js, which adds the CUDA backend when nvcc is found.
//   - CMake missing, or ADASHIFT_BUILD=gyp: node-gyp (CPU backend only), against the local
//     Node headers npm is configured with.
// ADASHIFT_CUDA=0 forces a CPU-only CMake build; ADASHIFT_CUDA_ARCH picks CUDA architectures.
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');

function run(cmd, args) {
  console.error(`[adashift] ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: process.env });
  if (r.error) throw r.error;
  return r.status === 0;
}

function hasCmake() {
  const r = spawnSync('cmake', ['--version'], { stdio: 'ignore' });
  return !r.error && r.status === 0;
}

function findNodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    (() => { try { return require.resolve('node-gyp/bin/node-gyp.js'); } catch { return undefined; } })(),
    path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    '/usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js',
    '/usr/local/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js',
  ];
  return candidates.find((p) => p && fs.existsSync(p));
}

function buildWithGyp() {
  const gyp = findNodeGyp();
  if (!gyp) {
    console.error('[adashift] neither CMake nor node-gyp was found: install CMake (>= 3.18) to build the addon');
    process.exit(1);
  }
  // Build against the headers of the running Node (no header download).
  const nodedir = process.env.npm_config_nodedir || path.resolve(path.dirname(process.execPath), '..');
  const args = [gyp, 'rebuild', `--nodedir=${nodedir}`, `-j`, String(os.availableParallelism?.() ?? os.cpus().length)];
  if (!run(process.execPath, args)) process.exit(1);
}

function buildWithCmake() {
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  // Configure every time with the CUDA choice spelled out: a build folder keeps its cached
  // choice otherwise (a CPU-only build would stay CPU-only after nvcc is installed).
  const defs = [`--CDADASHIFT_CUDA=${process.env.ADASHIFT_CUDA === '0' ? 'OFF' : 'ON'}`];
  // ADASHIFT_BUILD_TESTS=1 also builds the C++ kernel tests (core_tests, and cuda_check with
  // CUDA) in the same folder, so the kernels are compiled once (scripts/gpu-check.sh).
  // The CPU emulation of CUDA (cuda_emu_check) is for hosts without a GPU: npm test builds it in
  // build-tests/; here it is left out unless asked for (ADASHIFT_CUDA_EMU=1).
  defs.push(`--CDADASHIFT_BUILD_TESTS=${process.env.ADASHIFT_BUILD_TESTS === '1' ? 'ON' : 'OFF'}`);
  defs.push(`--CDADASHIFT_CUDA_EMU=${process.env.ADASHIFT_CUDA_EMU === '1' ? 'ON' : 'OFF'}`);
  const log = process.env.ADASHIFT_VERBOSE ? [] : ['--log-level', 'warn'];
  const jobs = ['--parallel', String(os.availableParallelism?.() ?? os.cpus().length)];
  if (!run(process.execPath, [cmakeJs, 'configure', ...defs, ...log])) process.exit(1);
  if (!run(process.execPath, [cmakeJs, 'compile', ...defs, ...jobs, ...log])) process.exit(1);
}

if (process.env.ADASHIFT_BUILD === 'gyp' || !hasCmake()) {
  if (process.env.ADASHIFT_BUILD !== 'gyp') console.error('[adashift] CMake not found: building the CPU backend with node-gyp');
  buildWithGyp();
} else {
  buildWithCmake();
}
