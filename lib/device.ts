// Device selection: 'auto' | 'cuda' | 'cuda:N' | 'cpu', per call or from ADASHIFT_DEVICE.
// 'auto' takes CUDA when usable, else the CPU, and says why on stderr once per process;
// an explicit 'cuda' that cannot be honoured throws ERR_NO_CUDA.
import { AdaShiftError } from './errors';
import { native, NativeBackendInfo } from './native';

/** A concrete device: what tensors report. */
export type Device = 'cpu' | `cuda:${number}`;
/** A device to ask for: a concrete one, 'cuda' (cuda:0) or 'auto' (CUDA when usable, else the CPU). */
export type DeviceSpec = 'auto' | 'cuda' | Device;

let cachedInfo: NativeBackendInfo | undefined;
export function backendInfo(): NativeBackendInfo {
  if (!cachedInfo) cachedInfo = native.backendInfo();
  return { ...cachedInfo, cpuThreads: native.getNumThreads(), devices: cachedInfo.devices.map((d) => ({ ...d })) };
}

let warnedFallback = false;
let defaultOverride: DeviceSpec | undefined;

/** Sets the device used when none is given (default: ADASHIFT_DEVICE or 'auto'). */
export function setDefaultDevice(spec: DeviceSpec | undefined): void {
  if (spec !== undefined) resolveDevice(spec);
  defaultOverride = spec;
}

const DEVICE_SPELLING = /^(auto|cpu|cuda(:\d+)?)$/;

/** ADASHIFT_DEVICE, checked: a misspelt value names the variable (checked at load too, below). */
function envDevice(): DeviceSpec {
  const v = process.env.ADASHIFT_DEVICE;
  if (v === undefined || v === '') return 'auto';
  if (!DEVICE_SPELLING.test(v)) throw new AdaShiftError('ERR_ARG', `ADASHIFT_DEVICE must be 'auto', 'cpu', 'cuda' or 'cuda:N', got '${v}'`);
  return v as DeviceSpec;
}

/** Turns a device spec into a concrete device string ('cpu' or 'cuda:N'). */
export function resolveDevice(spec?: DeviceSpec | string): Device {
  const s = spec ?? defaultOverride ?? envDevice();
  if (s === 'cpu') return 'cpu';
  const info = backendInfo();
  if (s === 'auto') {
    if (info.cudaUsable) return 'cuda:0';
    if (!warnedFallback && info.cudaCompiled) {
      warnedFallback = true;
      process.stderr.write(`adashift: using the CPU backend: ${info.reason}\n`);
    }
    return 'cpu';
  }
  const m = /^cuda(?::(\d+))?$/.exec(String(s));
  if (!m) {
    throw new AdaShiftError('ERR_DEVICE', `unknown device '${String(s)}'; expected 'auto', 'cpu', 'cuda' or 'cuda:N'`);
  }
  if (!info.cudaUsable) {
    throw new AdaShiftError('ERR_NO_CUDA', `device '${s}' was requested but CUDA is not usable: ${info.reason}`);
  }
  const index = m[1] === undefined ? 0 : Number(m[1]);
  if (index >= info.devices.length) {
    throw new AdaShiftError('ERR_DEVICE', `device cuda:${index} does not exist; this host has ${info.devices.length} CUDA device(s)`);
  }
  return `cuda:${index}`;
}

export function setNumThreads(n: number): void {
  native.setNumThreads(n);
}
export function getNumThreads(): number {
  return native.getNumThreads();
}

/**
 * Lets convolutions on CUDA round their operands to TF32 (a 10-bit mantissa) and multiply them on
 * the tensor cores, accumulating in float32: PyTorch's `torch.backends.cudnn.allow_tf32`, which
 * is on by default there and off by default here. It applies to products of 64 or more output
 * rows on GPUs of compute capability 8.0 or later, is read when each convolution is launched (a
 * captured CUDA graph keeps the mode it was captured with), and leaves the CPU alone.
 * `ADASHIFT_ALLOW_TF32=1` sets it when the package loads.
 */
export function setAllowTF32(on: boolean): void {
  if (typeof on !== 'boolean') {
    throw new AdaShiftError('ERR_ARG', `setAllowTF32: expected a boolean, got ${on === null ? 'null' : typeof on}`);
  }
  native.setConvAllowTF32(on);
}
export function getAllowTF32(): boolean {
  return native.getConvAllowTF32();
}

// The thread pool's variables (read by the addon, which ignores a value it cannot use): a value
// that is not a number in range is refused when the package loads, as ADASHIFT_ALLOW_TF32's
// below, rather than running with a thread count the user did not ask for.
for (const [name, lo, hi] of [['ADASHIFT_NUM_THREADS', 1, Infinity], ['ADASHIFT_POOL_THREADS', 1, 256], ['ADASHIFT_POOL_SPIN_US', 0, 1e6]] as const) {
  const v = process.env[name];
  if (v === undefined || v === '') continue;
  const n = Number(v);
  if (!/^\s*\d+\s*$/.test(v) || n < lo || n > hi) {
    throw new AdaShiftError('ERR_ARG', `${name} must be an integer ${hi === Infinity ? `>= ${lo}` : `in [${lo}, ${hi}]`}, got '${v}'`);
  }
}

envDevice();

// ADASHIFT_ALLOW_TF32: '1' or 'true' turns TF32 on, '0', 'false' or '' leaves it off; anything
// else is refused when the package loads (a misspelt value would otherwise change the numbers
// without a word).
{
  const v = process.env.ADASHIFT_ALLOW_TF32;
  if (v !== undefined) {
    const on = ['1', 'true'].includes(v.toLowerCase()), off = ['0', 'false', ''].includes(v.toLowerCase());
    if (!on && !off) throw new AdaShiftError('ERR_ARG', `ADASHIFT_ALLOW_TF32 must be 1 or 0 (or true / false), got '${v}'`);
    native.setConvAllowTF32(on);
  }
}
