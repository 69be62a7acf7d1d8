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
  /** Highest `bytes` since the last resetPeakMemory of this device (tensor storage only). */
  peakBytes: number;
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
  setConvAllowTF32(on: boolean): void;
  getConvAllowTF32(): boolean;
  synchronize(device: string): void;
  emptyCache(device: string): void;
  resetPeakMemory(device: string): void;
  empty(shape: number[], device: string): T;
  full(shape: number[], value: number, device: string): T;
  fromArray(data: Float32Array, shape: number[], device: string): T;
  rand(shape: number[], kind: number, a: number, b: number, seed: number, offset: number, device: string): T;
  to(t: T, device: string): T;
  clone(t: T): T;
  copy_(dst: T, src: T): void;
  cudaGraphBegin(device: string): void;
  /** An opaque handle owning the instantiated graph. */
  cudaGraphEnd(device: string): unknown;
  cudaGraphAbort(device: string): void;
  cudaGraphCapturing(device: string): boolean;
  cudaGraphReplay(graph: unknown): void;
  cudaGraphDispose(graph: unknown): void;
  cudaGraphPoolBytes(graph: unknown): number;
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
  /** AdaShift-B in one op: [y, t, u, s, mean, rstd] (t, u, s: [N, 1, C]; mean, rstd: [N]). */
  adashiftBForward(x: T, projW: OptT, projB: OptT, normW: T, normB: T, eps: number): [T, T, T, T, T, T];
  /** [dx | null, dProjW | null, dProjB | null, dNormW, dNormB] */
  adashiftBBackward(x: T, dy: T, t: T, u: T, s: T, mean: T, rstd: T, projW: OptT, normW: T, needDx: boolean): [OptT, OptT, OptT, T, T];
  /** AdaShift-B's context network on pooled means m [N, 1, C]: [s, u, mean, rstd] (u is m itself without proj). */
  adashiftBContextForward(m: T, projW: OptT, projB: OptT, normW: T, normB: T, eps: number): [T, T, T, T];
  /** [dm | null, dProjW | null, dProjB | null, dNormW, dNormB] */
  adashiftBContextBackward(ds: T, m: T, u: T, mean: T, rstd: T, projW: OptT, normW: T, needDm: boolean): [OptT, OptT, OptT, T, T];
  /**
   * AdaShift-MA in one op: [y, t, attn, o, z, s, stats] (t, o, z, s: [N, T, C]; attn: [N, heads,
   * T, T]; z is o itself when rectLinearWeight is null; t, attn, o, z are null unless
   * keepContext; stats [N, 4, T]: the CPU's LayerNorm statistics, null on CUDA). With a
   * BatchNorm input (bnMean ... bnBias from batchNormStats, residual optional) the op's input is
   * bn(x) + residual, never stored.
   */
  adashiftMAForward(
    x: T, grid: number, heads: number, qW: T, qB: T, kW: T, kB: T, vW: T, vB: T, rectLinearW: OptT, rectW: T, rectB: T, eps: number,
    keepContext: boolean,
    bnMean?: OptT, bnInvstd?: OptT, bnWeight?: OptT, bnBias?: OptT, residual?: OptT,
  ): [T, OptT, OptT, OptT, OptT, T, OptT];
  /**
   * [dx | null, dqW, dqB, dkW, dkB, dvW, dvB, dRectLinearW | null, dRectW, dRectB, sumDz | null,
   * sumDzXhat | null]; with a BatchNorm input dx is dz (the gradient of bn(x) + residual) and
   * sumDz / sumDzXhat [N, C] its per-plane sums, as batchNormActBackwardReduce gives them.
   */
  adashiftMABackward(
    x: T, dy: T, t: OptT, attn: OptT, o: OptT, z: OptT, s: T, stats: OptT,
    grid: number, heads: number, qW: T, qB: T, kW: T, kB: T, vW: T, vB: T, rectLinearW: OptT, rectW: T, rectB: T, eps: number,
    keepContext: boolean, needDx: boolean,
    bnMean?: OptT, bnInvstd?: OptT, bnWeight?: OptT, bnBias?: OptT, residual?: OptT,
  ): [OptT, T, T, T, T, T, T, OptT, T, T, OptT, OptT];
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
    // ADASHIFT_ADDON: another build of the addon, by path (the tests load the one built on the
    // CPU emulation of CUDA this way: native/tests/cuda_emu).
    const other = process.env.ADASHIFT_ADDON;
    if (other) return require(require('path').resolve(other));
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

const raw: NativeBinding = load();

/** The file the addon was loaded from (its build: provenance records it), or undefined. */
export function addonFile(): string | undefined {
  return Object.keys(require.cache).find((k) => k.endsWith('.node') && require.cache[k]?.exports === raw);
}

/**
 * The addon's functions. Normally the raw binding itself; while a profiler is installed
 * (setNativeLayer, used by lib/bench/profile.ts) an object of timing wrappers around it. Every
 * caller reads `native.fn` at call time, so swapping it costs nothing when profiling is off.
 */
export let native: NativeBinding = raw;

/** The unwrapped binding (the profiler times calls into this). */
export const rawNative: NativeBinding = raw;

/** @internal Installs a layer in front of the binding (null: back to the raw binding). */
export function setNativeLayer(layer: NativeBinding | null): void {
  native = layer ?? raw;
}
