// CUDA graphs: the device work of a function (a whole training step: forward, backward,
// optimizer) is recorded once and replayed with one launch, so the step no longer pays a
// kernel launch and a trip through JS per op.
//
// What a replay does is exactly what was queued during the capture, with the same memory:
// - inputs: the captured function must read them from tensors made before the capture (static
//   inputs); copy each new batch into them with copy_() before replay();
// - outputs: tensors the function returns live in the graph's memory pool and hold the newest
//   replay's values; read them after replay();
// - host work does not replay: values computed in JS, scalar arguments (an optimizer's lr),
//   random seeds are those of the capture. Reading values back, synchronize() and copies
//   from JS data are refused during the capture (ERR_CUDA_GRAPH).
// Run the function eagerly once or twice before capturing (`warmup`), so that lazily made state
// (optimizer buffers, gradients) exists and is not re-initialised by every replay.
import { backendInfo, DeviceSpec, resolveDevice } from './device';
import { AdaShiftError, check, checkOptions } from './errors';
import { native } from './native';
import { closeCreationLog, keep, openCreationLog, tensorsIn, tidy } from './tensor';

export interface CaptureOptions {
  /** The CUDA device whose work is captured (default: the default device; it must be CUDA). */
  device?: DeviceSpec;
  /** Eager runs of fn before the capture (default 0); their results are disposed. */
  warmup?: number;
}

/** Whether a CUDA graph is being captured on `device` (false for the CPU). */
export function isCapturing(device?: DeviceSpec): boolean {
  // a device that is not CUDA, or CUDA not usable here, captures nothing; a misspelt one is an error
  const d = resolveDevice(typeof device === 'string' && device.startsWith('cuda') && !backendInfo().cudaUsable ? 'cpu' : device);
  return capturingOn(d);
}

/** @internal isCapturing for a resolved device string (the ops' and optimizers' per-step checks). */
export function capturingOn(device: string): boolean {
  return device.startsWith('cuda') && native.cudaGraphCapturing(device);
}

/** A captured CUDA graph: replay() re-runs the recorded device work; outputs holds fn's result. */
export class CudaGraph<T = unknown> {
  private handle: unknown;
  private constructor(
    handle: unknown,
    readonly device: string,
    /** What the captured function returned; its tensors are overwritten by every replay. */
    readonly outputs: T,
  ) {
    this.handle = handle;
  }

  /**
   * Captures the device work fn queues on `options.device`. Tensors made inside fn and not
   * returned are disposed after the capture (their memory stays with the graph).
   */
  static capture<T>(fn: () => T, options: CaptureOptions = {}): CudaGraph<T> {
    check(typeof fn === 'function', 'ERR_ARG', () => `CudaGraph.capture(fn): fn must be a function, got ${typeof fn}`);
    options = checkOptions('CudaGraph.capture', options, ['device', 'warmup']);
    const device = resolveDevice(options.device);
    if (!device.startsWith('cuda')) {
      throw new AdaShiftError('ERR_CUDA_GRAPH', `CUDA graphs need a CUDA device; the device is '${device}' (pass {device: 'cuda'})`);
    }
    const warmup = options.warmup ?? 0;
    check(Number.isInteger(warmup) && warmup >= 0, 'ERR_ARG', () => `CudaGraph.capture: warmup must be a non-negative integer, got ${String(warmup)}`);
    for (let i = 0; i < warmup; i++) tidy(() => void fn());
    native.synchronize(device);
    native.cudaGraphBegin(device);
    // Every tensor made during the capture: if the capture fails, none of their kernels ever
    // ran, so those still alive (outputs, gradients stored in .grad, optimizer buffers made on
    // first use) hold garbage and are disposed rather than left for the next eager step to add
    // into. (A disposed .grad counts as no gradient; optimizers re-create disposed buffers.)
    const created = openCreationLog();
    let outputs: T;
    let handle: unknown;
    try {
      try {
        outputs = tidy(fn);
        check(!(outputs instanceof Promise), 'ERR_ARG', () => 'CudaGraph.capture(fn): fn must be synchronous (it returned a Promise)');
      } catch (e) {
        native.cudaGraphAbort(device);
        throw e;
      }
      handle = native.cudaGraphEnd(device);
    } catch (e) {
      for (const t of created) t.dispose();
      throw e;
    } finally {
      closeCreationLog(created);
    }
    for (const t of tensorsIn(outputs)) keep(t);
    return new CudaGraph(handle, device, outputs);
  }

  /** Queues one replay on the device's stream (returns without waiting, like any op). */
  replay(): void {
    check(this.handle !== null, 'ERR_CUDA_GRAPH', () => 'replay(): the CUDA graph was disposed');
    native.cudaGraphReplay(this.handle);
  }

  /** Device bytes held by the graph's memory pool (its tensors and temporaries). */
  get poolBytes(): number {
    return this.handle === null ? 0 : native.cudaGraphPoolBytes(this.handle);
  }

  get isDisposed(): boolean {
    return this.handle === null;
  }

  /**
   * Frees the graph and the tensors in `outputs`. Other tensors the capture left in its pool
   * (gradients it assigned to .grad) give their memory back when they are disposed.
   */
  dispose(): void {
    if (this.handle === null) return;
    native.cudaGraphDispose(this.handle);
    this.handle = null;
    for (const t of tensorsIn(this.outputs)) t.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
