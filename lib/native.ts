// The one place that loads the compiled addon (build/Release/adashift.node) and describes its
// functions. Everything above this file speaks in Tensors, not handles.
/* eslint-disable @typescript-eslint/no-var-requires */

export interface NativeTensor {
  readonly shape: number[];
  readonly device: string;
  readonly numel: number;
  readonly disposed: boolean;
  /** Whether another handle (a view) shares this one's storage. */
  readonly storageShared: boolean;
  toFloat32Array(): Float32Array;
  dispose(): void;
  reshape(shape: number[]): NativeTensor;
}

export interface NativeDeviceInfo {
  index: number;
  name: string;
  totalMemory: number;
  computeCapability: string;
  multiprocessors: number;
}

export interface NativeBackendInfo {
  cudaCompiled: boolean;
  cudaUsable: boolean;
  runtimeVersion: number;
  driverVersion: number;
  reason: string;
  compiledArchs: string;
  cpuThreads: number;
  devices: NativeDeviceInfo[];
}

export interface NativeMemoryEntry {
  device: string;
  tensors: number;
  storages: number;
  bytes: number;
  /** CUDA: bytes the caching allocator holds from the driver (live + cached). */
  reservedBytes?: number;
  /** CPU: freed blocks kept for reuse. */
  cachedBytes?: number;
}

type T = NativeTensor;
type OptT = NativeTensor | null;

import type { ConvBinding } from './bindings/conv';
import type { NormBinding } from './bindings/norm';
import type { OptimBinding } from './bindings/optim';

export interface NativeBinding extends ConvBinding, NormBinding, OptimBinding {
  NativeTensor: Function;
  backendInfo(): NativeBackendInfo;
  memory(): NativeMemoryEntry[];
  setNumThreads(n: number): void;
  getNumThreads(): number;
  synchronize(device: string): void;
  emptyCache(device: string): void;
  empty(shape: number[], device: string): T;
  full(shape: number[], value: number, device: string): T;
  fromArray(data: Float32Array, shape: number[], device: string): T;
  rand(shape: number[], kind: number, a: number, b: number, seed: number, offset: number, device: string): T;
  to(t: T, device: string): T;
  clone(t: T): T;
  binary(op: number, a: T, b: T): T;
  axpby(alpha: number, a: T, beta: number, b: OptT): T;
  axpy_(y: T, alpha: number, x: T): void;
  fill_(t: T, value: number): void;
  sumAll(x: T): T;
  sumRows(x: T, rows: number): T;
  addRowvec(x: T, b: T): T;
  actForward(kind: number, x: T): T;
  actBackward(kind: number, x: T, dy: T): T;
  regionPoolForward(x: T, grid: number): T;
  regionPoolBackward(dt: T, inputShape: number[], grid: number): T;
  gateForward(x: T, s: T, grid: number): T;
  gateBackwardReduce(x: T, dy: T, s: T, grid: number): T;
  gateBackwardApply(x: T, dy: T, s: T, dt: OptT, grid: number): T;
  layerNormForward(x: T, w: T, b: T, eps: number): [T, T, T];
  layerNormBackward(dy: T, x: T, mean: T, rstd: T, w: T): [T, T, T];
  softmaxForward(x: T): T;
  softmaxBackward(y: T, dy: T): T;
  matmul(a: T, b: T, transA: boolean, transB: boolean): T;
  permute(x: T, axes: number[]): T;
}

export const BinaryOp = { add: 0, sub: 1, mul: 2, div: 3 } as const;
export const ActKind = { relu: 0, gelu: 1, geluTanh: 2, silu: 3 } as const;
export const RandKind = { uniform: 0, normal: 1 } as const;

function load(): NativeBinding {
  try {
    return require('bindings')({ bindings: 'adashift', module_root: require('path').resolve(__dirname, '..') });
  } catch (e) {
    const err = new Error(
      `adashift: the native addon could not be loaded (${(e as Error).message.split('\n')[0]}). ` +
        'Build it with `npm rebuild adashift` (needs a C++ compiler and CMake or node-gyp).',
    );
    (err as Error & { code: string }).code = 'ERR_NATIVE_LOAD';
    throw err;
  }
}

export const native: NativeBinding = load();
