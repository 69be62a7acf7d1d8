// The IDX format (MNIST, Fashion-MNIST): a big-endian header -- two zero bytes, a type byte
// (0x08 = unsigned byte, the only type these datasets use), the number of dimensions -- then one
// big-endian uint32 per dimension, then the data in row-major order. Files may be gzipped; that
// is detected by the gzip magic bytes 1f 8b, not by the file name.
import * as fs from 'fs';
import * as zlib from 'zlib';
import { AdaShiftError } from '../errors';
import { notRegularFile } from '../io/files';

export interface IdxArray {
  dims: number[];
  data: Uint8Array;
}

/** @internal The magic number of an unsigned-byte IDX file with `ndims` dimensions (0x00000803 for images). */
export function idxMagic(ndims: number): number {
  return 0x0800 | ndims;
}

function hex32(v: number): string {
  return '0x' + (v >>> 0).toString(16).padStart(8, '0');
}

function ioError(name: string, msg: string): AdaShiftError {
  return new AdaShiftError('ERR_IO', `${name}: ${msg}`);
}

/** @internal True when the bytes start with the gzip magic 1f 8b. */
export function isGzip(buf: Uint8Array): boolean {
  return buf.length >= 2 && buf[0] === 0x1f && buf[1] === 0x8b;
}

/** @internal Decompresses gzip data (detected by its magic bytes); other data is returned as is. */
export function maybeGunzip(buf: Uint8Array, name = '<buffer>'): Uint8Array {
  if (!isGzip(buf)) return buf;
  try {
    const out = zlib.gunzipSync(buf);
    return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    throw ioError(name, `corrupt gzip data (${msg}); the file is damaged or incomplete: download or install it again`);
  }
}

interface IdxHeader {
  dims: number[];
  headerBytes: number;
  /** The number of data bytes the dimensions call for. */
  product: number;
}

/**
 * Checks the magic number and reads the dimensions of (decompressed) IDX bytes; only the header
 * needs to be present. With `expectedDims` 3 (images) or 1 (labels), an empty array -- no
 * images, no labels, or images of zero pixels -- is refused: a dataset split must hold data.
 */
function parseIdxHeader(bytes: Uint8Array, name: string, expectedDims?: number): IdxHeader {
  if (bytes.length < 4) {
    throw ioError(name, `truncated IDX file: ${bytes.length} bytes, expected at least 4 for the magic number`);
  }
  const magic = ((bytes[0] << 24) | (bytes[1] << 16) | (bytes[2] << 8) | bytes[3]) >>> 0;
  const ndims = bytes[3];
  const what = expectedDims === 3 ? ' for images' : expectedDims === 1 ? ' for labels' : '';
  if (expectedDims !== undefined && magic !== idxMagic(expectedDims)) {
    throw ioError(name, `bad IDX magic number ${hex32(magic)}: expected ${hex32(idxMagic(expectedDims))}${what} (unsigned bytes, ${expectedDims} dimension${expectedDims === 1 ? '' : 's'})`);
  }
  if (bytes[0] !== 0 || bytes[1] !== 0) {
    throw ioError(name, `bad IDX magic number ${hex32(magic)}: expected 0x000008NN (two zero bytes, type 0x08, number of dimensions); not an IDX file`);
  }
  if (bytes[2] !== 0x08) {
    throw ioError(name, `unsupported IDX data type 0x${bytes[2].toString(16).padStart(2, '0')} (magic ${hex32(magic)}): only unsigned bytes (0x08) are supported`);
  }
  if (ndims === 0) throw ioError(name, `bad IDX magic number ${hex32(magic)}: zero dimensions`);
  const headerBytes = 4 + 4 * ndims;
  if (bytes.length < headerBytes) {
    throw ioError(name, `truncated IDX header: ${bytes.length} bytes, expected ${headerBytes} for ${ndims} dimensions`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dims: number[] = [];
  let product = 1;
  for (let i = 0; i < ndims; i++) {
    const d = view.getUint32(4 + 4 * i, false);
    dims.push(d);
    product *= d;
  }
  if (!Number.isSafeInteger(product) || product > 2 ** 32) {
    throw ioError(name, `IDX dimensions [${dims.join(', ')}] are implausibly large (product ${product})`);
  }
  if (expectedDims === 3 || expectedDims === 1) {
    const items = expectedDims === 3 ? 'images' : 'labels';
    if (dims[0] === 0) {
      throw ioError(name, `holds no ${items} (IDX dimensions [${dims.join(', ')}]): an empty split cannot be trained or evaluated on; the file is incomplete or was written without data`);
    }
    if (expectedDims === 3 && (dims[1] === 0 || dims[2] === 0)) {
      throw ioError(name, `holds no images: its ${dims[0]} images are ${dims[1]}x${dims[2]} pixels (IDX dimensions [${dims.join(', ')}]); an image needs at least one pixel`);
    }
  }
  return { dims, headerBytes, product };
}

/**
 * Parses an unsigned-byte IDX array (gzipped or not). With `expectedDims`, the magic number must
 * be exactly 0x0000080<expectedDims> (0x00000803 for images, 0x00000801 for labels), and the
 * array must not be empty (no images, images of zero pixels, or no labels). The returned data is
 * a view into `buf` (or into the decompressed bytes), not a copy.
 */
export function parseIdx(buf: Uint8Array, name = '<buffer>', expectedDims?: number): IdxArray {
  const bytes = maybeGunzip(buf, name);
  const { dims, headerBytes, product } = parseIdxHeader(bytes, name, expectedDims);
  const actual = bytes.length - headerBytes;
  if (actual < product) {
    throw ioError(name, `truncated IDX data: dimensions [${dims.join(', ')}] need ${product} bytes after the ${headerBytes}-byte header, found ${actual} (file is ${bytes.length} bytes, expected ${headerBytes + product})`);
  }
  if (actual > product) {
    throw ioError(name, `IDX size mismatch: dimensions [${dims.join(', ')}] (product ${product}) do not match the ${actual} data bytes after the header (file is ${bytes.length} bytes, expected ${headerBytes + product})`);
  }
  return { dims, data: bytes.subarray(headerBytes) };
}

/** Bytes read for readIdxDims: far more than any header needs, even compressed. */
const HEADER_PREFIX_BYTES = 64 * 1024;

/**
 * The dimensions of an IDX file (gzipped or not) from its header alone: only the first bytes of
 * the file are read and decompressed, and the data is not checked. Errors as parseIdx's header
 * checks (ERR_IO naming the file).
 */
export function readIdxDims(file: string, expectedDims?: number): number[] {
  const notFile = notRegularFile(file);
  if (notFile) throw ioError(file, notFile);
  let prefix: Uint8Array;
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const buf = Buffer.alloc(HEADER_PREFIX_BYTES);
      const n = fs.readSync(fd, buf, 0, buf.length, 0);
      prefix = new Uint8Array(buf.buffer, buf.byteOffset, n);
    } finally {
      fs.closeSync(fd);
    }
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw ioError(file, err.code === 'ENOENT' ? 'no such file' : `cannot read (${err.message})`);
  }
  return parseIdxHeader(headerBytesOf(prefix, file), file, expectedDims).dims;
}

/** The first bytes of an IDX file's content from a prefix of the file (decompressed when gzipped). */
function headerBytesOf(prefix: Uint8Array, file: string): Uint8Array {
  if (!isGzip(prefix)) return prefix;
  try {
    // A gzip stream cut short decompresses to a prefix of the data with a sync flush.
    const out = zlib.gunzipSync(prefix.subarray(0, HEADER_PREFIX_BYTES), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    throw ioError(file, `corrupt gzip data (${msg}); the file is damaged or incomplete: download or install it again`);
  }
}

/** Reads an unsigned-byte IDX file, gzipped or not (see parseIdx). */
export function readIdx(file: string, expectedDims?: number): IdxArray {
  const notFile = notRegularFile(file);
  if (notFile) throw ioError(file, notFile);
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw ioError(file, err.code === 'ENOENT' ? 'no such file' : `cannot read (${err.message})`);
  }
  let bytes = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  if (isGzip(bytes)) {
    // the header first, from a prefix: the whole stream is then inflated to at most the size the
    // header declares (a small file that inflates to gigabytes is refused, not inflated)
    const h = parseIdxHeader(headerBytesOf(bytes, file), file, expectedDims);
    const limit = h.headerBytes + h.product;
    try {
      const out = zlib.gunzipSync(bytes, { maxOutputLength: limit + 1 });
      bytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ERR_BUFFER_TOO_LARGE') throw ioError(file, `inflates past the ${limit} bytes its header declares (dimensions ${h.dims.join(' x ')}): not an IDX file of that size`);
      const msg = e instanceof Error ? e.message : String(e);
      throw ioError(file, `corrupt gzip data (${msg}); the file is damaged or incomplete: download or install it again`);
    }
  }
  return parseIdx(bytes, file, expectedDims);
}

/** @internal Encodes an unsigned-byte IDX array (for tests and tools). */
export function encodeIdx(dims: number[], data: Uint8Array): Uint8Array {
  const product = dims.reduce((a, b) => a * b, 1);
  if (product !== data.length) {
    throw new AdaShiftError('ERR_ARG', `encodeIdx: dimensions [${dims.join(', ')}] need ${product} bytes, got ${data.length}`);
  }
  const out = new Uint8Array(4 + 4 * dims.length + data.length);
  out[2] = 0x08;
  out[3] = dims.length;
  const view = new DataView(out.buffer);
  dims.forEach((d, i) => view.setUint32(4 + 4 * i, d, false));
  out.set(data, 4 + 4 * dims.length);
  return out;
}
