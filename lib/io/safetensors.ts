// The safetensors format: 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}}, then raw
// little-endian data. Files are written atomically (temp file, fsync, rename); reading checks
// every offset and size and says what is wrong with a corrupt or truncated file.
import * as fs from 'fs';
import * as path from 'path';
import { types } from 'util';
import { AdaShiftError, checkOptions, typeName } from '../errors';
import { DeviceSpec } from '../device';
import { Tensor, tensor } from '../tensor';
import { notRegularFile, processRuns } from './files';

/** An integer tensor kept in JS memory (the compute tensors are float32 only). */
export interface IntTensor {
  dtype: 'I64' | 'I32';
  shape: number[];
  data: BigInt64Array | Int32Array;
}

export type SafetensorsEntry = Tensor | IntTensor;

const DTYPE_BYTES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };
const MAX_HEADER = 100 * 1024 * 1024;
/** The most dimensions a Tensor has (kMaxDims in native/core/tensor.h). */
const MAX_DIMS = 8;

function ioError(file: string, msg: string): AdaShiftError {
  return new AdaShiftError('ERR_IO', `${file}: ${msg}`);
}

export function isIntTensor(v: unknown): v is IntTensor {
  return !!v && typeof v === 'object' && !(v instanceof Tensor) && ((v as IntTensor).dtype === 'I64' || (v as IntTensor).dtype === 'I32');
}

/** What a value is, for messages: its type, or its constructor's name for an object. */
function describe(v: unknown): string {
  if (v === null || v === undefined) return String(v);
  if (Array.isArray(v)) return 'a plain array';
  const what = typeName(v);
  return `${/^[aeiouAEIOU]/.test(what) ? 'an' : 'a'} ${what}`;
}

/**
 * Checks an integer entry ({dtype, shape, data}) and returns its bytes: the shape must be
 * non-negative integers, the data the typed array of the dtype (BigInt64Array for I64,
 * Int32Array for I32; the bytes are written as they are, so another array would make a file
 * that cannot be read back) with one value per element.
 */
function intEntryBytes(name: string, v: IntTensor): Buffer {
  const shape: unknown = v.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new AdaShiftError('ERR_SHAPE', `saveSafetensors: '${name}' shape must be an array of non-negative integers, got ${Array.isArray(shape) ? `[${shape.map((d) => String(d)).join(', ')}]` : describe(shape)}`);
  }
  // util.types: a typed array made in another realm (a worker's, jest's sandbox) is one too
  const [ok, want] = v.dtype === 'I64' ? [types.isBigInt64Array(v.data), 'a BigInt64Array'] : [types.isInt32Array(v.data), 'an Int32Array'];
  if (!ok) throw new AdaShiftError('ERR_DTYPE', `saveSafetensors: '${name}' has dtype ${v.dtype}, so its data must be ${want}, got ${describe(v.data)}`);
  const n = (shape as number[]).reduce((a, b) => a * b, 1);
  if (v.data.length !== n) throw new AdaShiftError('ERR_SHAPE', `saveSafetensors: '${name}' has ${v.data.length} values for shape [${shape.join(', ')}] (expected ${n})`);
  return Buffer.from(v.data.buffer, v.data.byteOffset, v.data.byteLength);
}

/**
 * Writes tensors (and optional string metadata) to `file`, atomically. Every entry and the
 * metadata are checked before anything is written: a refused save leaves `file` as it was.
 */
export function saveSafetensors(file: string, tensors: Record<string, SafetensorsEntry>, metadata: Record<string, string> = {}): void {
  if (typeof file !== 'string' || file === '') throw new AdaShiftError('ERR_ARG', `saveSafetensors: the file must be a non-empty string, got ${typeof file === 'string' ? 'an empty string' : describe(file)}`);
  if (!tensors || typeof tensors !== 'object' || Array.isArray(tensors) || tensors instanceof Tensor) {
    throw new AdaShiftError('ERR_ARG', `saveSafetensors: tensors must be an object of name: Tensor or {dtype: 'I64' | 'I32', shape, data}, got ${describe(tensors)}`);
  }
  if (!metadata || typeof metadata !== 'object' || Array.isArray(metadata)) {
    throw new AdaShiftError('ERR_ARG', `saveSafetensors: metadata must be an object of name: string, got ${describe(metadata)}`);
  }
  const header: Record<string, unknown> = {};
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const name of Object.keys(tensors).sort()) {
    if (name === '__metadata__') throw new AdaShiftError('ERR_ARG', "saveSafetensors: '__metadata__' is reserved");
    const v = tensors[name];
    let buf: Buffer, dtype: string, shape: number[];
    if (v instanceof Tensor) {
      if (v.isDisposed) throw new AdaShiftError('ERR_DISPOSED', `saveSafetensors: '${name}' was disposed`);
      const data = v.toFloat32Array();
      buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      dtype = 'F32';
      shape = v.shape;
    } else if (isIntTensor(v)) {
      buf = intEntryBytes(name, v);
      dtype = v.dtype;
      shape = [...v.shape];
    } else {
      const what = v && typeof v === 'object' && 'dtype' in v ? `an object of dtype ${JSON.stringify((v as { dtype: unknown }).dtype)}` : describe(v);
      throw new AdaShiftError('ERR_ARG', `saveSafetensors: '${name}' must be a Tensor or {dtype: 'I64' | 'I32', shape, data}, got ${what}`);
    }
    if (!isLittleEndian()) throw new AdaShiftError('ERR_IO', 'saveSafetensors: big-endian hosts are not supported');
    header[name] = { dtype, shape, data_offsets: [offset, offset + buf.length] };
    chunks.push(buf);
    offset += buf.length;
  }
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== 'string') throw new AdaShiftError('ERR_ARG', `saveSafetensors: metadata '${k}' must be a string, got ${describe(v)}`);
  }
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  writeAtomic(file, [head, Buffer.from(json, 'utf8'), ...chunks]);
}

/**
 * Creates the folder `dir` and any missing parents, one level at a time (mkdir -p). Node's
 * recursive mkdir never returns for a path under /proc or /sys: the kernel answers ENOENT for
 * the child of a folder that exists, which it takes for a missing parent and retries forever.
 * Throws ERR_IO naming the folder that could not be made.
 * @internal
 */
export function ensureDir(dir: string): void {
  const missing: string[] = [];
  for (let p = path.resolve(dir); ; ) {
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(dir, `cannot create the folder: ${(e as Error).message}`);
    }
    if (st) {
      if (!st.isDirectory()) throw ioError(dir, `cannot create the folder: '${p}' exists and is not a folder`);
      break;
    }
    missing.push(p);
    const parent = path.dirname(p);
    if (parent === p) break;
    p = parent;
  }
  for (const d of missing.reverse()) {
    try {
      fs.mkdirSync(d);
    } catch (e) {
      // made meanwhile by another process: fine if it is a folder
      if ((e as NodeJS.ErrnoException).code === 'EEXIST' && fs.statSync(d).isDirectory()) continue;
      throw ioError(dir, `cannot create the folder: ${(e as Error).message}`);
    }
  }
}

/**
 * Flushes a folder's entries, so that a rename in it survives a power loss (where the platform
 * lets a folder be opened and synced; elsewhere the rename stands as the OS keeps it).
 */
function syncFolder(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // not supported here (e.g. Windows): nothing more to do
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/**
 * Temp files of `base` that a killed process left (its pid no longer runs here): removed before
 * the next write of the same file, so a run killed while saving does not leave one per kill.
 */
function removeStaleTemps(dir: string, base: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return; // the write below says what is wrong with the folder
  }
  const prefix = `.${base}.`;
  for (const name of names) {
    if (!name.startsWith(prefix) || !name.endsWith('.tmp')) continue;
    const pid = Number(name.slice(prefix.length).split('.')[0]);
    if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid) continue;
    if (processRuns(pid)) continue; // it may be writing now
    fs.rmSync(path.join(dir, name), { force: true });
  }
}

/** @internal Writes buffers to a temp file beside `file`, flushes it, then renames over `file`. */
export function writeAtomic(file: string, parts: Buffer[]): void {
  // A folder in the file's place would be found only at the rename, after a temp file was
  // written into the folder above it.
  let isDir = false;
  try {
    isDir = fs.statSync(file).isDirectory();
  } catch {
    // not there yet (the usual case), or not reachable: the write below says why
  }
  if (isDir) throw ioError(file, 'could not write: it is a folder; give a file name');
  const dir = path.dirname(path.resolve(file));
  removeStaleTemps(dir, path.basename(file));
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`);
  let fd: number | undefined;
  try {
    fd = fs.openSync(tmp, 'w', 0o644);
    for (const p of parts) {
      let done = 0;
      while (done < p.length) done += fs.writeSync(fd, p, done, p.length - done);
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, file);
    syncFolder(dir);
  } catch (e) {
    if (fd !== undefined) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e instanceof AdaShiftError ? e : ioError(file, `could not write: ${(e as Error).message}`);
  }
}

function isLittleEndian(): boolean {
  return new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
}

export interface SafetensorsFile {
  metadata: Record<string, string>;
  tensors: Record<string, SafetensorsEntry>;
}

/**
 * Reads a safetensors file: F32 (and F64/F16/BF16, converted; F64 values beyond float32's range
 * become +-Infinity) as Tensors, I64/I32 as IntTensor.
 */
export function readSafetensors(file: string, options: { device?: DeviceSpec } = {}): SafetensorsFile {
  options = checkOptions('readSafetensors', options, ['device']);
  const notFile = notRegularFile(file);
  if (notFile) throw ioError(file, notFile);
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    throw ioError(file, `cannot read: ${(e as Error).message}`);
  }
  if (buf.length < 8) throw ioError(file, `truncated: ${buf.length} bytes, a safetensors file starts with an 8-byte header length`);
  const n = buf.readBigUInt64LE(0);
  if (n > BigInt(Math.min(MAX_HEADER, buf.length - 8))) {
    // Two files users hand to a safetensors reader by mistake: torch.save's zip archive and its
    // older pickle (their first bytes read as an impossible header length).
    const convert = "in Python, safetensors.torch.save_file(model.state_dict(), 'model.safetensors') writes one";
    if (buf[0] === 0x50 && buf[1] === 0x4b && buf[2] === 0x03 && buf[3] === 0x04) throw ioError(file, `a zip archive (torch.save's format for .pt/.pth files), not safetensors; ${convert}`);
    if (buf[0] === 0x80 && buf[1] >= 2 && buf[1] <= 5) throw ioError(file, `a Python pickle (torch.save's older format), not safetensors; ${convert}`);
    throw ioError(file, n > BigInt(MAX_HEADER) ? `header length ${n} is past the ${MAX_HEADER} bytes (100 MiB) a header may take here` : `corrupt or truncated: header length ${n} exceeds the ${buf.length - 8} bytes after it`);
  }
  const headerLen = Number(n);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8'));
  } catch (e) {
    throw ioError(file, `corrupt header (not JSON): ${(e as Error).message}`);
  }
  if (!header || typeof header !== 'object' || Array.isArray(header)) throw ioError(file, 'corrupt header: expected a JSON object');
  const dataStart = 8 + headerLen;
  const dataLen = buf.length - dataStart;
  const out: Record<string, SafetensorsEntry> = {};
  let metadata: Record<string, string> = {};
  const ranges: [number, number, string][] = [];
  try {
  for (const [name, raw] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw ioError(file, `corrupt header: __metadata__ must be an object of strings, got ${Array.isArray(raw) ? 'an array' : JSON.stringify(raw)}`);
      for (const [k, v] of Object.entries(raw)) if (typeof v !== 'string') throw ioError(file, `corrupt header: __metadata__ '${k}' must be a string (the format's metadata maps strings to strings), got ${JSON.stringify(v)}`);
      metadata = raw as Record<string, string>;
      continue;
    }
    const info = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const dtype = String(info?.dtype);
    const size = DTYPE_BYTES[dtype];
    if (!size) throw ioError(file, `tensor '${name}' has unsupported dtype '${dtype}'`);
    const shape = info.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw ioError(file, `tensor '${name}' has an invalid shape`);
    const offs = info.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isSafeInteger(d) && d >= 0) || offs[0] > offs[1]) {
      throw ioError(file, `tensor '${name}' has invalid data_offsets`);
    }
    const [b, e] = offs as [number, number];
    const count = (shape as number[]).reduce((a, d) => a * d, 1);
    if (e - b !== count * size) throw ioError(file, `tensor '${name}': ${e - b} bytes of data for shape [${shape.join(', ')}] of ${dtype} (expected ${count * size})`);
    if (e > dataLen) throw ioError(file, `truncated: tensor '${name}' ends at byte ${e} of the data section, which has ${dataLen} bytes`);
    ranges.push([b, e, name]);
    const bytes = buf.subarray(dataStart + b, dataStart + e);
    // an own property whatever the name ('__proto__' assigned would replace the record's prototype)
    Object.defineProperty(out, name, { value: decode(file, name, bytes, dtype, shape as number[], count, options.device), enumerable: true, writable: true, configurable: true });
  }
  } catch (e) {
    // Free what was decoded before the error.
    for (const v of Object.values(out)) if (v instanceof Tensor) v.dispose();
    throw e;
  }
  // The tensors must tile the data section: no overlap, and no bytes that no tensor indexes
  // (the format forbids them: a file must not carry data its header does not describe).
  ranges.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  let end = 0;
  let problem = '';
  for (let i = 0; i < ranges.length && !problem; i++) {
    const [b, e, name] = ranges[i];
    if (b < end) problem = `corrupt: tensors '${ranges[i - 1][2]}' and '${name}' overlap`;
    else if (b > end) problem = `corrupt: bytes ${end} to ${b} of the data section belong to no tensor (before '${name}'); the format allows no gaps`;
    end = Math.max(end, e);
  }
  if (!problem && end < dataLen) problem = `corrupt: the data section has ${dataLen - end} bytes after the last tensor's end (byte ${end}) that belong to no tensor`;
  if (problem) {
    for (const v of Object.values(out)) if (v instanceof Tensor) v.dispose();
    throw ioError(file, problem);
  }
  return { metadata, tensors: out };
}

/** Reads the tensors of a safetensors file (see readSafetensors for the metadata too). */
export function loadSafetensors(file: string, options: { device?: DeviceSpec } = {}): Record<string, SafetensorsEntry> {
  return readSafetensors(file, options).tensors;
}

function decode(file: string, name: string, bytes: Buffer, dtype: string, shape: number[], count: number, device?: DeviceSpec): SafetensorsEntry {
  if (['F32', 'F64', 'F16', 'BF16'].includes(dtype) && shape.length > MAX_DIMS) {
    throw new AdaShiftError('ERR_SHAPE', `${file}: tensor '${name}' has ${shape.length} dimensions (shape [${shape.join(', ')}]); a tensor has at most ${MAX_DIMS}`);
  }
  const copy = new Uint8Array(bytes); // aligned copy
  const view = new DataView(copy.buffer);
  switch (dtype) {
    case 'F32':
      return tensor(new Float32Array(copy.buffer, 0, count), shape, { device });
    case 'F64': {
      // Rounded to the nearest float32, without a word: values beyond float32's range (about
      // 3.4e38) become +-Infinity, the tiniest ones 0.
      const f = new Float32Array(count);
      for (let i = 0; i < count; i++) f[i] = view.getFloat64(i * 8, true);
      return tensor(f, shape, { device });
    }
    case 'F16':
    case 'BF16': {
      const f = new Float32Array(count);
      for (let i = 0; i < count; i++) f[i] = dtype === 'F16' ? halfToFloat(view.getUint16(i * 2, true)) : bf16ToFloat(view.getUint16(i * 2, true));
      return tensor(f, shape, { device });
    }
    case 'I64':
      return { dtype: 'I64', shape, data: new BigInt64Array(copy.buffer, 0, count) };
    case 'I32':
      return { dtype: 'I32', shape, data: new Int32Array(copy.buffer, 0, count) };
    default:
      throw new AdaShiftError('ERR_DTYPE', `${file}: tensor '${name}': safetensors dtype ${dtype} cannot be loaded as a tensor (supported: F32, F64, F16, BF16, I64, I32)`);
  }
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

function bf16ToFloat(b: number): number {
  const f = new Float32Array(new Uint32Array([b << 16]).buffer);
  return f[0];
}
