#!/usr/bin/env bash
# The one GPU check: builds the addon with CUDA (sm_90 by default), compares every CUDA op with
# the CPU backend on random inputs (native/tests/cuda_check + the jest suites, whose CUDA cases
# run only where a GPU is usable), and runs the GPU benchmarks. Results (JSON) go to the folder
# given as $1, else $OUT, else bench/results. Without a usable GPU the CUDA parts print SKIPPED
# and the script still succeeds, so it can be tried anywhere first.
#   on the GPU host:  source .device/boot.sh && bash scripts/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench/results}}
mkdir -p "$out"
export ADASHIFT_CUDA_ARCH=${ADASHIFT_CUDA_ARCH:-90-real}
jobs=$(nproc)
node_bin=$(command -v node)
status=0
step() { printf '\n== %s\n' "$*"; }

step "build the addon with CUDA ($ADASHIFT_CUDA_ARCH)"
ADASHIFT_CUDA=1 "$node_bin" scripts/build-native.js || exit 1
"$node_bin" node_modules/typescript/bin/tsc -p tsconfig.json || exit 1
"$node_bin" dist/cli.js doctor | tee "$out/doctor.txt"
usable=$("$node_bin" -e 'console.log(require("./dist").backendInfo().cudaUsable ? 1 : 0)')
compiled=$("$node_bin" -e 'console.log(require("./dist").backendInfo().cudaCompiled ? 1 : 0)')
if command -v nvcc >/dev/null && [ "$compiled" != 1 ]; then
  echo "gpu-check: nvcc is here but the addon was built without CUDA; see the build output above"
  exit 1
fi

step "C++ kernel tests and CUDA-vs-CPU parity (native/tests)"
cmake -S . -B build-tests -DADASHIFT_BUILD_TESTS=ON -DCMAKE_CUDA_ARCHITECTURES="$ADASHIFT_CUDA_ARCH" >/dev/null || exit 1
cmake --build build-tests -j "$jobs" >/dev/null || exit 1
build-tests/core_tests | tail -n 3 || status=1
if [ -x build-tests/cuda_check ]; then
  build-tests/cuda_check "$out/cuda-kernels.json" | tee "$out/cuda_check.txt" | grep -E 'FAIL|SKIPPED|failed|GB/s' || true
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
  echo "cuda_check: not built (no nvcc)"
fi

step "jest suites (CUDA cases run where a GPU is usable)"
"$node_bin" node_modules/jest/bin/jest.js --silent 2>&1 | tail -n 8 || status=1

if [ "$usable" = 1 ]; then
  step "benchmarks on cuda:0"
  "$node_bin" dist/cli.js bench act --device cuda --repeats 20 --out "$out" || status=1
  # training steps: ResNet-20 and ResNet-50 at 224x224 (batch 128), eager and replayed as one
  # CUDA graph, ReLU against AdaShift-B and -MA
  "$node_bin" dist/cli.js bench step --device cuda --models resnet20,resnet50 --acts relu,adashift-b,adashift-ma \
    --sections step --repeats 5 --graph --out "$out" || status=1
else
  step "benchmarks: SKIPPED (CUDA not usable here)"
fi

step "summary"
if [ "$usable" = 1 ]; then grep -E '^cuda_check:' "$out/cuda_check.txt" | tail -n 5; fi
echo "results in $out; exit status $status"
exit $status
