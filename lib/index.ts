// adashift: train convolutional networks from Node with the AdaShift activation.
export { AdaShiftError } from './errors';
export type { ErrorCode } from './errors';
export { backendInfo, getAllowTF32, getNumThreads, resolveDevice, setAllowTF32, setDefaultDevice, setNumThreads } from './device';
export type { Device, DeviceSpec } from './device';
export {
  empty, full, getRngState, keep, manualSeed, memory, ones, rand, randn, resetPeakMemory, setRngState, Tensor, tensor, tidy, zeros,
} from './tensor';
export type { MemoryInfo, Shape, TensorOptions } from './tensor';
export { isGradEnabled, noGrad } from './autograd';
export { CudaGraph, isCapturing } from './graph';
export type { CaptureOptions } from './graph';
export * as functional from './functional';
export * as nn from './nn';
export * as io from './io';
import { native } from './native';

/** Waits until all queued work on a device has finished (no-op on the CPU). */
export function synchronize(device = 'cpu'): void {
  native.synchronize(device);
}

/** Returns cached (freed, kept for reuse) device or host memory to the system. */
export function emptyCache(device = 'cpu'): void {
  native.emptyCache(device);
}
export * as optim from './optim';
export * as data from './data';
export { evaluate, evaluateCheckpoint, train } from './train/train';
export type { BatchInfo, EpochMetrics, TrainActOptions, TrainCallbacks, TrainOptions, TrainResult } from './train/train';
export { armLabel, compare, parseArm } from './train/compare';
export type { CompareArm, CompareCallbacks, CompareOptions, CompareRow } from './train/compare';
export { benchAct } from './bench/act';
