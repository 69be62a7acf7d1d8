# The CUDA kernels on a CPU emulation of CUDA (this folder), for machines without a GPU: a second
# copy of the kernel library, built with ADASHIFT_WITH_CUDA, whose native/core/cuda sources are
# rewritten to C++ at build time (cuda_emu_cu2cc) and compiled against the stub CUDA headers here,
# and cuda_emu_check: the unchanged cuda_check.cc and parity_*.cc linked with it.
# Included from CMakeLists.txt when ADASHIFT_BUILD_TESTS is ON, with or without nvcc; it touches
# neither adashift_core nor cuda_check. ADASHIFT_CUDA_EMU=OFF skips it.
option(ADASHIFT_CUDA_EMU "Build cuda_emu_check: the CUDA kernels on a CPU emulation of CUDA" ON)
if(NOT ADASHIFT_CUDA_EMU)
  return()
endif()

set(_emu_dir ${CMAKE_SOURCE_DIR}/native/tests/cuda_emu)
set(_emu_gen ${CMAKE_BINARY_DIR}/cuda_emu_src)
file(MAKE_DIRECTORY ${_emu_gen})

# The rewriter runs on the build host (a plain C++ program: no Python or Node needed).
add_executable(cuda_emu_cu2cc ${_emu_dir}/cu_to_cc.cc)

file(GLOB _emu_cuda_sources CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/native/core/cuda/*.cu
                                              ${CMAKE_SOURCE_DIR}/native/core/cuda/*.cuh)
set(_emu_generated)
set(_emu_generated_cc)
foreach(_src ${_emu_cuda_sources})
  get_filename_component(_name ${_src} NAME)
  if(_name MATCHES "\\.cu$")
    set(_out ${_emu_gen}/${_name}.cc)  # conv.cu -> conv.cu.cc
    list(APPEND _emu_generated_cc ${_out})
  else()
    set(_out ${_emu_gen}/${_name})  # headers keep their names: the .cc files include them so
  endif()
  add_custom_command(OUTPUT ${_out}
                     COMMAND cuda_emu_cu2cc ${_src} ${_out}
                     DEPENDS cuda_emu_cu2cc ${_src}
                     COMMENT "cuda_emu: rewriting ${_name} as C++"
                     VERBATIM)
  list(APPEND _emu_generated ${_out})
endforeach()

file(GLOB _emu_core_sources CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/native/core/*.cc
                                              ${CMAKE_SOURCE_DIR}/native/core/ops/*.cc
                                              ${CMAKE_SOURCE_DIR}/native/core/cpu/*.cc)
add_library(adashift_core_emu STATIC ${_emu_core_sources} ${_emu_generated}
                                     ${_emu_dir}/emu_runtime.cc)
# The stub headers come first: <cuda_runtime.h> must never reach a real toolkit.
target_include_directories(adashift_core_emu BEFORE PUBLIC ${_emu_dir})
target_include_directories(adashift_core_emu PUBLIC ${CMAKE_SOURCE_DIR}/native)
target_compile_definitions(adashift_core_emu PUBLIC ADASHIFT_WITH_CUDA
                                                    ADASHIFT_CUDA_ARCHS="cpu-emulation")
target_link_libraries(adashift_core_emu PUBLIC Threads::Threads)
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  # The CPU code exactly as in adashift_core (it is the reference the kernels are compared with).
  target_compile_options(adashift_core_emu PRIVATE -O3 -fno-math-errno -fopenmp-simd -Wall -Wextra
                                                   -Wno-unused-parameter)
  # Kernels: no FMA contraction (__fmul_rn must stay a product; see cuda_runtime.h), and the
  # CUDA-only pragmas (#pragma unroll) are not warnings.
  set(_emu_kernel_flags -ffp-contract=off -Wno-unknown-pragmas)
  # fmaf (the SGEMM's inner loop) is a libm call unless the compiler may use the FMA instruction:
  # allowed when the build host has it (the emulation runs where it is built). Same results
  # either way: fmaf is exactly rounded, and nothing else is contracted.
  if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64" AND NOT CMAKE_CROSSCOMPILING)
    include(CheckCXXSourceRuns)
    set(CMAKE_REQUIRED_FLAGS -mfma)
    check_cxx_source_runs("int main() { return __builtin_cpu_supports(\"fma\") ? 0 : 1; }"
                          ADASHIFT_CUDA_EMU_HOST_FMA)
    unset(CMAKE_REQUIRED_FLAGS)
    if(ADASHIFT_CUDA_EMU_HOST_FMA)
      list(APPEND _emu_kernel_flags -mfma)
    endif()
  endif()
  set_source_files_properties(${_emu_generated_cc} PROPERTIES COMPILE_OPTIONS "${_emu_kernel_flags}")
endif()
if(BLAS_FOUND AND ADASHIFT_BLAS)
  target_link_libraries(adashift_core_emu PUBLIC BLAS::BLAS)
  target_compile_definitions(adashift_core_emu PUBLIC ADASHIFT_WITH_BLAS)
  if(ADASHIFT_HAVE_OPENBLAS_SET_NUM_THREADS)
    target_compile_definitions(adashift_core_emu PRIVATE ADASHIFT_BLAS_OPENBLAS)
  endif()
endif()

file(GLOB _emu_parity_sources CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/native/tests/parity_*.cc)
add_executable(cuda_emu_check ${CMAKE_SOURCE_DIR}/native/tests/cuda_check.cc ${_emu_parity_sources})
target_link_libraries(cuda_emu_check PRIVATE adashift_core_emu)
add_test(NAME cuda_emu_check COMMAND cuda_emu_check)
set_tests_properties(cuda_emu_check PROPERTIES TIMEOUT 900)

# The emulator's own test: right results for correct kernels and graphs, and a stop with a
# message for each misuse it promises to catch (selftest.cu).
set(_emu_selftest ${_emu_gen}/selftest.cu.cc)
add_custom_command(OUTPUT ${_emu_selftest}
                   COMMAND cuda_emu_cu2cc ${_emu_dir}/selftest.cu ${_emu_selftest}
                   DEPENDS cuda_emu_cu2cc ${_emu_dir}/selftest.cu
                   COMMENT "cuda_emu: rewriting selftest.cu as C++"
                   VERBATIM)
add_executable(cuda_emu_selftest ${_emu_selftest})
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  set_source_files_properties(${_emu_selftest} PROPERTIES COMPILE_OPTIONS "${_emu_kernel_flags}")
endif()
target_link_libraries(cuda_emu_selftest PRIVATE adashift_core_emu)
add_test(NAME cuda_emu_selftest COMMAND cuda_emu_selftest)

# The Node addon on the emulation (build-tests/adashift_emu.node) and the jest suites that need a
# CUDA device, run with it: CUDA graphs captured and replayed through the TypeScript API (also
# the README's example of it), CUDA errors, optimizers on the device. Needs node with node-api-headers and node-addon-api (the
# package's own dependencies); skipped when they cannot be found.
find_program(ADASHIFT_NODE node)
if(ADASHIFT_NODE)
  execute_process(COMMAND ${ADASHIFT_NODE} -p "require('node-api-headers').include_dir"
                  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR} OUTPUT_VARIABLE _emu_napi_inc
                  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _emu_napi_rc)
  execute_process(COMMAND ${ADASHIFT_NODE} -p "require('path').resolve(require('node-addon-api').include_dir)"
                  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR} OUTPUT_VARIABLE _emu_naa_inc
                  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _emu_naa_rc)
endif()
if(ADASHIFT_NODE AND _emu_napi_rc EQUAL 0 AND _emu_naa_rc EQUAL 0 AND EXISTS ${CMAKE_SOURCE_DIR}/node_modules/jest)
  file(GLOB _emu_napi_sources CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/native/napi/*.cc)
  add_library(adashift_emu MODULE ${_emu_napi_sources})
  set_target_properties(adashift_emu PROPERTIES PREFIX "" SUFFIX ".node")
  target_include_directories(adashift_emu PRIVATE ${_emu_napi_inc} ${_emu_naa_inc})
  target_compile_definitions(adashift_emu PRIVATE NAPI_VERSION=8 NAPI_CPP_EXCEPTIONS)
  target_link_libraries(adashift_emu PRIVATE adashift_core_emu)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(adashift_emu PRIVATE -O2 -fvisibility=hidden)
  endif()
  add_test(NAME cuda_emu_jest
           COMMAND ${ADASHIFT_NODE} node_modules/jest/bin/jest.js --silent test/graph.test.ts
                   test/errors.test.ts test/optim.test.ts test/tf32.test.ts test/readme.test.ts
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(cuda_emu_jest PROPERTIES TIMEOUT 900
                       ENVIRONMENT "ADASHIFT_ADDON=$<TARGET_FILE:adashift_emu>;ADASHIFT_DEVICE=cpu")
  # train({graph: true}): CUDA graph replays of the training step against the eager run.
  add_test(NAME cuda_emu_jest_train
           COMMAND ${ADASHIFT_NODE} node_modules/jest/bin/jest.js --silent test/train.test.ts
                   -t "CUDA graphs|--graph"
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(cuda_emu_jest_train PROPERTIES TIMEOUT 900
                       ENVIRONMENT "ADASHIFT_ADDON=$<TARGET_FILE:adashift_emu>;ADASHIFT_DEVICE=cpu")
  # Every activation (and its gradients) and ResNet-20 with each activation (logits, loss, every
  # gradient, running statistics, one SGD step; fused against unfused BN) against the PyTorch
  # fixtures, on the emulated device. (The rest of resnet.test.ts, long training runs, stays on
  # the CPU: on the emulation it takes minutes.)
  add_test(NAME cuda_emu_jest_models
           COMMAND ${ADASHIFT_NODE} node_modules/jest/bin/jest.js --silent test/activations.test.ts
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  add_test(NAME cuda_emu_jest_resnet
           COMMAND ${ADASHIFT_NODE} node_modules/jest/bin/jest.js --silent test/resnet.test.ts
                   -t "against PyTorch|against the unfused path"
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(cuda_emu_jest_models cuda_emu_jest_resnet PROPERTIES TIMEOUT 900
                       ENVIRONMENT "ADASHIFT_ADDON=$<TARGET_FILE:adashift_emu>;ADASHIFT_DEVICE=cuda;ADASHIFT_TEST_DEVICE=cuda")
else()
  message(STATUS "adashift: node, node-api-headers or jest not found: no cuda_emu_jest")
endif()
