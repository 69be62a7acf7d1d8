#!/usr/bin/env node
// Builds and runs the C++ kernel tests (native/tests) in build-tests/ with plain CMake + CTest.
// The CUDA parity check is built when nvcc is present and runs only where a GPU is.
'use strict';
const { spawnSync } = require('child_process');
const os = require('os');
const path = require('path');
const root = path.resolve(__dirname, '..');
const dir = path.join(root, 'build-tests');
const jobs = String(os.availableParallelism?.() ?? os.cpus().length);
function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.error || r.status !== 0) process.exit(r.status || 1);
}
run('cmake', ['-S', root, '-B', dir, '-DADASHIFT_BUILD_TESTS=ON', '-DCMAKE_BUILD_TYPE=Release']);
run('cmake', ['--build', dir, '-j', jobs]);
run('ctest', ['--test-dir', dir, '--output-on-failure']);
