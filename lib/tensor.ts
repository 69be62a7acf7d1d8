// Tensor: a float32, contiguous array in native memory (CPU or CUDA) plus the autograd fields.
// Memory is freed deterministically by dispose() / tidy(); a FinalizationRegistry frees what
// the program forgot (and counts it, see memory().leaked).
import { inspect, InspectOptionsStylized, types } from 'util';
import { AdaShiftError, check, checkBoolean, checkBooleans, checkOptions, checkSyncFn, refusePromise, typeName } from './errors';
import { Device, DeviceSpec, resolveDevice } from './device';
import { native, NativeTensor, RandKind } from './native';
import type { GradFn } from './autograd';
import { isGradEnabled, runBackward } from './autograd';

export type Shape = readonly number[];

export interface TensorOptions {
  device?: DeviceSpec;
  requiresGrad?: boolean;
}

// A Float32Array from any realm: the addon makes its arrays in Node's main context, where
// `instanceof` in a vm context (Jest, a REPL's context) does not see them as Float32Array.
function isFloat32Array(v: unknown): v is Float32Array {
  return types.isFloat32Array(v);
}

// ---- leak safety net -------------------------------------------------------------------------
let leaked = 0;
const finalizer = new FinalizationRegistry<NativeTensor>((h) => {
  if (!h.disposed) {
    h.dispose();
    leaked++;
  }
});

// ---- tidy scopes ----------------------------------------------------------------------------
const scopes: Set<Tensor>[] = [];
// Open creation logs: every tensor constructed while one is open is added to it, kept or not.
const creationLogs: Set<Tensor>[] = [];

export class Tensor {
  private h: NativeTensor;
  // Disposed through this object. The handle's own flag, shape, element count and device are
  // native accessors (a call into the addon each); ops read them several times per call, so the
  // wrapper keeps what cannot change for its handle and its own disposal state (a handle is
  // disposed only through its Tensor: ops dispose raw handles they made, never a Tensor's).
  private gone = false;
  /** @internal Set when a tidy() disposed this tensor (backward's error says so). */
  disposedByTidy = false;
  private shp: number[] | null = null;
  private num = -1;
  private dev: Device | null = null;
  private rg = false;
  /** Accumulated gradient of a leaf after backward(). */
  grad: Tensor | null = null;
  /** The autograd node that produced this tensor (null for leaves). */
  gradFn: GradFn | null = null;

  /** Tensors are made by tensor(), zeros(), randn(), ... and by ops; this wraps the addon's handle. */
  constructor(handle: NativeTensor, requiresGrad = false) {
    check(handle instanceof native.NativeTensor, 'ERR_ARG', () => 'new Tensor(handle): a Tensor wraps a handle of the addon; make tensors with tensor(), zeros(), ones(), randn(), ...');
    this.h = handle;
    this.requiresGrad = requiresGrad;
    finalizer.register(this, handle, this);
    if (scopes.length) scopes[scopes.length - 1].add(this);
    for (const log of creationLogs) log.add(this);
  }

  /** @internal The native handle (throws ERR_DISPOSED once disposed). */
  get handle(): NativeTensor {
    if (this.gone) throw new AdaShiftError('ERR_DISPOSED', 'the tensor was disposed and can no longer be used');
    return this.h;
  }

  get shape(): number[] {
    const h = this.handle;
    return (this.shp ??= h.shape).slice();
  }
  get device(): Device {
    return (this.dev ??= this.h.device as Device);
  }
  get numel(): number {
    const h = this.handle;
    if (this.num < 0) this.num = h.numel;
    return this.num;
  }
  get isDisposed(): boolean {
    return this.gone || this.h.disposed;
  }
  get isLeaf(): boolean {
    return this.gradFn === null;
  }

  /**
   * Whether gradients flow to this tensor: a leaf's is the user's choice (a boolean), a result's
   * follows from its inputs and cannot be changed (detach() cuts a result from the graph).
   */
  get requiresGrad(): boolean {
    return this.rg;
  }
  set requiresGrad(flag: boolean) {
    checkBoolean('requiresGrad', flag);
    if (flag === this.rg) return;
    check(this.gradFn === null, 'ERR_AUTOGRAD', () => `requiresGrad can only be changed on a leaf tensor (one not computed by an op); detach() gives this result cut from the graph`);
    this.rg = flag;
  }

  /** Copies the values to a new Float32Array (waits for queued device work). */
  toFloat32Array(): Float32Array {
    return this.handle.toFloat32Array();
  }

  /** Nested JS arrays shaped like the tensor (a number for a 0-d tensor). */
  toArray(): number | NestedArray {
    const data = Array.from(this.toFloat32Array());
    const shape = this.shape;
    if (shape.length === 0) return data[0];
    const build = (dim: number, offset: number): NestedArray => {
      const n = shape[dim];
      if (dim === shape.length - 1) return data.slice(offset, offset + n);
      const stride = shape.slice(dim + 1).reduce((a, b) => a * b, 1);
      return Array.from({ length: n }, (_, i) => build(dim + 1, offset + i * stride));
    };
    return build(0, 0);
  }

  /** The single value of a one-element tensor. */
  item(): number {
    check(this.numel === 1, 'ERR_SHAPE', () => `item() needs a tensor with one element, got shape [${this.shape.join(', ')}]`);
    return this.toFloat32Array()[0];
  }

  /** A copy on another device (the same tensor when already there). Not differentiable. */
  to(device: DeviceSpec): Tensor {
    const d = resolveDevice(device);
    if (d === this.handle.device) return this;
    return new Tensor(native.to(this.handle, d), false);
  }

  /**
   * Overwrites this tensor's values, in place, with those of `src` (a tensor of the same shape
   * on any device, or a Float32Array of numel values). The memory stays the same, so a captured
   * CUDA graph reading this tensor sees the new values on its next replay. Not differentiable:
   * refused on a result of an op, and on a tensor that requires grad outside noGrad().
   */
  copy_(src: Tensor | Float32Array | Int32Array | Uint8Array | Float64Array | readonly number[]): this {
    check(this.gradFn === null, 'ERR_AUTOGRAD', () => 'copy_: the tensor is the result of an op; copying into it would break its gradient');
    check(!(this.requiresGrad && isGradEnabled()), 'ERR_AUTOGRAD', () => 'copy_ into a tensor that requires grad is allowed only inside noGrad(() => ...)');
    if (!(src instanceof Tensor) && (ArrayBuffer.isView(src) || Array.isArray(src)) && !(src instanceof BigInt64Array || src instanceof BigUint64Array || src instanceof DataView)) {
      // other typed arrays and plain arrays of numbers (a DataLoader batch's Int32Array labels)
      // are converted to float32, as tensor() converts them
      let f32: Float32Array;
      if (isFloat32Array(src)) f32 = src;
      else {
        const values = Array.from(src as ArrayLike<unknown>);
        const bad = values.findIndex((v) => typeof v !== 'number');
        check(bad < 0, 'ERR_ARG', () => `copy_: src[${bad}] must be a number, got ${typeof values[bad]}`);
        f32 = Float32Array.from(values as number[]);
      }
      check(f32.length === this.numel, 'ERR_SHAPE', () => `copy_: expected ${this.numel} values for shape [${this.shape.join(', ')}], got ${f32.length}`);
      const h = native.fromArray(f32, this.shape, 'cpu');
      try {
        native.copy_(this.handle, h);
      } finally {
        h.dispose();
      }
      return this;
    }
    check(src instanceof Tensor, 'ERR_ARG', () => `copy_: src must be a Tensor, a typed array or an array of numbers, got ${typeName(src)}`);
    native.copy_(this.handle, src.handle);
    return this;
  }

  /** A tensor sharing this one's data, cut off from the autograd graph. */
  detach(): Tensor {
    return new Tensor(this.handle.reshape(this.shape), false);
  }

  /** Frees the native memory now. Further use throws ERR_DISPOSED. Idempotent. */
  dispose(): void {
    if (!this.gone) this.h.dispose();
    this.gone = true;
    finalizer.unregister(this);
    for (const s of scopes) s.delete(this);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /**
   * Back-propagates from this tensor: gradients accumulate (+=) into the .grad of every leaf
   * with requiresGrad. A non-scalar tensor needs an explicit upstream gradient.
   */
  backward(grad?: Tensor, options: { retainGraph?: boolean } = {}): void {
    runBackward(this, grad, checkOptions('backward', options, ['retainGraph']).retainGraph ?? false);
  }

  /** Sets requiresGrad on a leaf (returns this). */
  requiresGrad_(flag = true): this {
    checkBoolean('requiresGrad_(flag): flag', flag);
    check(this.isLeaf, 'ERR_AUTOGRAD', () => 'requiresGrad_ can only be changed on a leaf tensor (one not computed by an op)');
    this.requiresGrad = flag;
    return this;
  }

  /** @internal Replaces the data (same shape), disposing the old handle. Used by loadStateDict and .to() on modules. */
  _setData(other: Tensor): void {
    const h = other.handle;
    check(other !== this, 'ERR_ARG', () => '_setData: a tensor cannot take its own data');
    if (!this.gone) this.h.dispose();
    finalizer.unregister(this);
    this.h = h;
    this.gone = false;
    this.shp = null;
    this.num = -1;
    this.dev = null;
    finalizer.register(this, h, this);
    // `other` gives up its handle: make it an empty shell that does not free it again.
    other.h = h.reshape(h.shape);
    other.dispose();
  }

  toString(): string {
    if (this.isDisposed) return 'Tensor(disposed)';
    return `Tensor(shape=[${this.shape.join(', ')}], device=${this.device}${this.requiresGrad ? ', requiresGrad' : ''}${this.gradFn ? `, gradFn=${this.gradFn.name}` : ''})`;
  }

  /**
   * What console.log and util.inspect show: toString() and the values (reading them back from
   * the device), the first and last ones of a tensor of more than 1000 elements.
   */
  [inspect.custom](_depth: number, options: InspectOptionsStylized): string {
    const head = this.toString();
    if (this.isDisposed) return head;
    let values: Float32Array;
    try {
      values = this.toFloat32Array();
    } catch {
      return head; // values cannot be read now (e.g. inside a CUDA graph capture)
    }
    return `${head} ${formatValues(values, this.shape, options)}`;
  }

  /** JSON.stringify gives the shape, device and values. */
  toJSON(): { shape: number[]; device: string; values: number | NestedArray } | { disposed: true } {
    if (this.isDisposed) return { disposed: true };
    return { shape: this.shape, device: this.device, values: this.toArray() };
  }
}

/** Nested arrays of numbers: toArray()'s result. */
export type NestedArray = number[] | NestedArray[];

const SUMMARY_THRESHOLD = 1000; // elements; PyTorch's print threshold
const SUMMARY_EDGE = 3; // entries kept at each end of a summarised dimension

/** Nested brackets of the values, summarised PyTorch's way past SUMMARY_THRESHOLD elements. */
function formatValues(values: Float32Array, shape: number[], options: InspectOptionsStylized): string {
  const num = (x: number) => options.stylize(Number.isInteger(x) && Math.abs(x) < 1e16 ? `${x}.` : x.toPrecision(4).replace(/(\.\d*?)0+(e|$)/, '$1$2'), 'number');
  if (shape.length === 0) return num(values[0]);
  const summarise = values.length > SUMMARY_THRESHOLD;
  const strides = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
  const walk = (dim: number, offset: number, indent: string): string => {
    const n = shape[dim];
    const idx = summarise && n > 2 * SUMMARY_EDGE ? [...Array(SUMMARY_EDGE).keys(), -1, ...Array.from({ length: SUMMARY_EDGE }, (_, i) => n - SUMMARY_EDGE + i)] : [...Array(n).keys()];
    if (dim === shape.length - 1) return `[${idx.map((i) => (i < 0 ? '...' : num(values[offset + i]))).join(', ')}]`;
    const inner = idx.map((i) => (i < 0 ? '...' : walk(dim + 1, offset + i * strides[dim], `${indent} `)));
    return `[${inner.join(`,\n${indent} `)}]`;
  };
  return walk(0, 0, '');
}

// ---- creation -------------------------------------------------------------------------------
/** Checks a user-given shape: an array of non-negative integers. */
export function toShape(shape: unknown, fn: string): number[] {
  if (!Array.isArray(shape) && !(ArrayBuffer.isView(shape) && !(shape instanceof DataView))) {
    throw new AdaShiftError('ERR_SHAPE', `${fn}: shape must be an array of dimensions, got ${shape === null ? 'null' : typeof shape}`);
  }
  const dims = Array.from(shape as ArrayLike<unknown>);
  dims.forEach((d, i) => {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      throw new AdaShiftError('ERR_SHAPE', `${fn}: shape[${i}] must be a non-negative integer, got ${typeof d === 'number' ? d : typeof d}`);
    }
  });
  return dims as number[];
}

const TENSOR_OPTIONS = ['device', 'requiresGrad'];
function opts<T extends object>(o: T | null | undefined, fn: string, extra: string[] = []): T {
  const checked = checkOptions(fn, o, [...TENSOR_OPTIONS, ...extra]);
  checkBooleans(fn, checked, ['requiresGrad']);
  return checked;
}

// `rank`: set by the first number met (its depth); every number must sit at that depth, so
// [1, [2]] is ragged whichever entry comes first.
function flatten(data: unknown, shape: number[], depth: number, out: number[], rank = { of: -1 }): void {
  if (Array.isArray(data)) {
    if (rank.of >= 0 && depth >= rank.of) throw new AdaShiftError('ERR_SHAPE', `ragged nested array: an array at depth ${depth}, where numbers are at depth ${rank.of}`);
    if (shape.length === depth) shape.push(data.length);
    else if (shape[depth] !== data.length) {
      throw new AdaShiftError('ERR_SHAPE', `ragged nested array: expected ${shape[depth]} entries at depth ${depth}, got ${data.length}`);
    }
    for (const d of data) flatten(d, shape, depth + 1, out, rank);
  } else {
    if (typeof data !== 'number') {
      throw new AdaShiftError('ERR_DTYPE', `tensor data must be numbers, got ${data === null ? 'null' : typeof data}`);
    }
    if (depth !== shape.length) throw new AdaShiftError('ERR_SHAPE', 'ragged nested array');
    rank.of = depth;
    out.push(data);
  }
}

/**
 * Creates a tensor from a Float32Array, a number array (with `shape`), nested arrays, or a
 * number (a scalar of shape []).
 */
export function tensor(
  data: Float32Array | ArrayLike<number> | number | unknown[],
  shape?: Shape,
  options: TensorOptions = {},
): Tensor {
  let values: Float32Array;
  let inferred: number[];
  if (isFloat32Array(data)) {
    values = data;
    inferred = [data.length];
  } else if (typeof data === 'number') {
    values = Float32Array.of(data);
    inferred = [];
  } else if (Array.isArray(data)) {
    const flat: number[] = [];
    inferred = [];
    flatten(data, inferred, 0, flat);
    values = Float32Array.from(flat);
  } else if (data && typeof (data as ArrayLike<number>).length === 'number' && ArrayBuffer.isView(data)) {
    // BigInt arrays hold bigints, which Float32Array.from cannot convert (a bare TypeError)
    if (data instanceof BigInt64Array || data instanceof BigUint64Array) {
      throw new AdaShiftError('ERR_DTYPE', `tensor(): a ${data.constructor.name} holds 64-bit integers; convert them to numbers (e.g. Float32Array.from(data, Number)) first`);
    }
    values = Float32Array.from(data as ArrayLike<number>);
    inferred = [values.length];
  } else {
    throw new AdaShiftError('ERR_DTYPE', `tensor(): data must be a Float32Array, a number array or a number, got ${data === null ? 'null' : typeof data}`);
  }
  const o = opts(options, 'tensor');
  const s = shape === undefined || shape === null ? inferred : toShape(shape, 'tensor');
  return new Tensor(native.fromArray(values, s, resolveDevice(o.device)), o.requiresGrad ?? false);
}

export function empty(shape: Shape, options: TensorOptions = {}): Tensor {
  const o = opts(options, 'empty');
  return new Tensor(native.empty(toShape(shape, 'empty'), resolveDevice(o.device)), o.requiresGrad ?? false);
}
function filled(fn: string, shape: Shape, value: number, options: TensorOptions): Tensor {
  const o = opts(options, fn);
  return new Tensor(native.full(toShape(shape, fn), value, resolveDevice(o.device)), o.requiresGrad ?? false);
}
export function full(shape: Shape, value: number, options: TensorOptions = {}): Tensor {
  return filled('full', shape, value, options);
}
export function zeros(shape: Shape, options: TensorOptions = {}): Tensor {
  return filled('zeros', shape, 0, options);
}
export function ones(shape: Shape, options: TensorOptions = {}): Tensor {
  return filled('ones', shape, 1, options);
}

// ---- random numbers: a counter-based stream (Philox), identical on every device ----------------
const rng = { seed: 0x5eed, offset: 0 };

/** Seeds the generator that rand/randn and parameter initialisation draw from. */
export function manualSeed(seed: number): void {
  check(Number.isSafeInteger(seed) && seed >= 0, 'ERR_ARG', () => `manualSeed: seed must be a non-negative safe integer, got ${typeof seed === 'bigint' ? `the bigint ${seed}n (pass a number)` : typeof seed === 'number' ? seed : JSON.stringify(seed) ?? typeof seed}`);
  rng.seed = seed;
  rng.offset = 0;
}
export function getRngState(): { seed: number; offset: number } {
  return { ...rng };
}
export function setRngState(state: { seed: number; offset: number }): void {
  check(
    Number.isSafeInteger(state?.seed) && Number.isSafeInteger(state?.offset) && state.seed >= 0 && state.offset >= 0,
    'ERR_ARG',
    () => 'setRngState: expected {seed, offset} as non-negative safe integers',
  );
  rng.seed = state.seed;
  rng.offset = state.offset;
}

function draw(shape: Shape, kind: number, a: number, b: number, options: TensorOptions): Tensor {
  const dims = toShape(shape, kind === RandKind.normal ? 'randn' : 'rand');
  const h = native.rand(dims, kind, a, b, rng.seed, rng.offset, resolveDevice(options.device));
  rng.offset += Math.ceil(h.numel / 4) * 4; // whole Philox blocks: streams never overlap
  return new Tensor(h, options.requiresGrad ?? false);
}

/** Uniform samples in [low, high) (default [0, 1)). */
export function rand(shape: Shape, options: TensorOptions & { low?: number; high?: number } = {}): Tensor {
  options = opts(options, 'rand', ['low', 'high']);
  checkFinite('rand', options, ['low', 'high']);
  return draw(shape, RandKind.uniform, options.low ?? 0, options.high ?? 1, options);
}
/** Normal samples (default mean 0, std 1). */
export function randn(shape: Shape, options: TensorOptions & { mean?: number; std?: number } = {}): Tensor {
  options = opts(options, 'randn', ['mean', 'std']);
  checkFinite('randn', options, ['mean', 'std']);
  return draw(shape, RandKind.normal, options.mean ?? 0, options.std ?? 1, options);
}

// The distribution's numbers, named as the caller gave them (the binding would name its own arguments).
function checkFinite(fn: string, options: object, names: string[]): void {
  for (const n of names) {
    const v = (options as Record<string, unknown>)[n];
    check(v === undefined || (typeof v === 'number' && Number.isFinite(v)), 'ERR_ARG', () => `${fn}: ${n} must be a finite number, got ${JSON.stringify(v) ?? typeof v}`);
  }
}

// ---- scopes and memory ----------------------------------------------------------------------
function collect(value: unknown, keep: Set<Tensor>, seen: Set<unknown>): void {
  if (value instanceof Tensor) {
    keep.add(value);
    if (value.grad) keep.add(value.grad);
    return;
  }
  if (value === null || typeof value !== 'object' || seen.has(value) || ArrayBuffer.isView(value)) return;
  seen.add(value);
  if (Array.isArray(value)) for (const v of value) collect(v, keep, seen);
  else if (value instanceof Map) {
    for (const [k, v] of value) {
      collect(k, keep, seen);
      collect(v, keep, seen);
    }
  } else if (value instanceof Set) for (const v of value) collect(v, keep, seen);
  // plain objects and instances of classes alike: their own enumerable properties
  else for (const v of Object.values(value)) collect(v, keep, seen);
}

/** The tensors in a value (arrays, Maps, Sets, objects and class instances, at any depth), with their .grad. */
export function tensorsIn(value: unknown): Set<Tensor> {
  const found = new Set<Tensor>();
  collect(value, found, new Set());
  return found;
}

function disposeAll(scope: Set<Tensor>): void {
  for (const t of scope) {
    t.disposedByTidy = true;
    t.dispose();
  }
}

/**
 * Runs fn and disposes every tensor created inside it, except those it returns (in arrays,
 * Maps, Sets, objects and class instances, at any depth), those passed to keep(), and gradients stored in leaves' .grad. A
 * graph built inside it loses its intermediates and what its ops saved: run backward() inside
 * the tidy() that built the graph (returning the output keeps only the output).
 */
export function tidy<R>(fn: () => R): R {
  checkSyncFn('tidy', fn);
  const scope = new Set<Tensor>();
  scopes.push(scope);
  let result: R;
  try {
    result = fn();
  } catch (e) {
    scopes.pop();
    disposeAll(scope);
    throw e;
  }
  scopes.pop();
  if (result instanceof Promise) {
    // what it made before its first await is freed; what it makes after runs outside any scope
    disposeAll(scope);
    refusePromise('tidy', result, 'tensors made after an await are not tracked');
  }
  const kept = tensorsIn(result);
  for (const t of scope) {
    if (kept.has(t)) {
      if (scopes.length) scopes[scopes.length - 1].add(t);
    } else {
      t.disposedByTidy = true;
      t.dispose();
    }
  }
  return result;
}

/**
 * @internal Opens a log of every tensor constructed from now until closeCreationLog(log),
 * including those a tidy() keeps and gradients stored in .grad (CudaGraph.capture disposes them
 * when a capture fails: their memory was never written).
 */
export function openCreationLog(): Set<Tensor> {
  const log = new Set<Tensor>();
  creationLogs.push(log);
  return log;
}

/** @internal Closes a log opened by openCreationLog. */
export function closeCreationLog(log: Set<Tensor>): void {
  const i = creationLogs.lastIndexOf(log);
  if (i >= 0) creationLogs.splice(i, 1);
}

/** Excludes a tensor from the enclosing tidy() scopes. */
export function keep<T extends Tensor>(t: T): T {
  for (const s of scopes) s.delete(t);
  return t;
}

export interface MemoryInfo {
  /** Live tensors (handles) on every device. */
  tensors: number;
  /** Bytes held by live tensors on every device. */
  bytes: number;
  /**
   * Per device; peakBytes: the highest live tensor bytes since the last resetPeakMemory(device)
   * (tensor storage only: kernels' scratch space is not counted).
   */
  devices: { device: string; tensors: number; bytes: number; peakBytes: number; reservedBytes?: number; cachedBytes?: number }[];
  /** Tensors the garbage collector freed because nobody disposed them. */
  leaked: number;
}

/**
 * Restarts a device's peak counter (memory().devices[i].peakBytes) at its current live bytes;
 * the default device when none is given.
 */
export function resetPeakMemory(device?: DeviceSpec): void {
  native.resetPeakMemory(resolveDevice(device));
}

/** Exact live tensor counts and bytes, from the native counters. */
export function memory(): MemoryInfo {
  const devices = native.memory().map((m) => ({
    device: m.device,
    tensors: m.tensors,
    bytes: m.bytes,
    peakBytes: m.peakBytes,
    ...(m.reservedBytes !== undefined ? { reservedBytes: m.reservedBytes } : {}),
    ...(m.cachedBytes !== undefined ? { cachedBytes: m.cachedBytes } : {}),
  }));
  return {
    tensors: devices.reduce((a, d) => a + d.tensors, 0),
    bytes: devices.reduce((a, d) => a + d.bytes, 0),
    devices,
    leaked,
  };
}
