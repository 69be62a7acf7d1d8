// safetensors I/O: round trips (F32 of several shapes incl. 0-d and empty, I64, I32,
// metadata), the on-disk layout checked by an independent parser, the fixture files, other
// float dtypes, every kind of corrupt file (ERR_IO with a message that says what is wrong),
// atomic saves (a failing save, an integer entry whose data is not its dtype's typed array
// included, leaves the old file and no temp files), files that are well formed but cannot be
// loaded (a dtype or rank the tensors do not take: the file and tensor named), and the output
// folders the CLI makes.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { types } from 'util';
import * as as from '../lib';
import { ensureDir } from '../lib/io/safetensors';
import { ensureDist } from './helpers/dist';
import { thrown } from './helpers/errors';

const io = as.io;
let dir: string;

beforeAll(() => {
  as.setDefaultDevice('cpu');
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'adashift-st-'));
});
afterAll(() => {
  as.setDefaultDevice(undefined);
  fs.rmSync(dir, { recursive: true, force: true });
});

function file(name: string): string {
  return path.join(dir, name);
}


/** An independent reader: header length, header JSON, and the raw data section. */
function parseRaw(f: string): { headerLen: number; header: Record<string, any>; data: Buffer } {
  const buf = fs.readFileSync(f);
  const headerLen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8'));
  return { headerLen, header, data: buf.subarray(8 + headerLen) };
}

/** Builds a file from a header object and a data buffer. */
function writeRaw(f: string, header: unknown, data: Buffer = Buffer.alloc(0), headerLenOverride?: bigint): void {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(headerLenOverride ?? BigInt(json.length));
  fs.writeFileSync(f, Buffer.concat([len, json, data]));
}

const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

function cpuTensors(): number {
  return as.memory().devices[0].tensors;
}

describe('round trip', () => {
  test('F32 tensors of several shapes (0-d, empty, 1-4 d), I64, I32 and metadata', () => {
    const special = new Float32Array([NaN, -0, Infinity, -Infinity, 1e-45, 3.4028234663852886e38, -1.5, 0.1]);
    const entries: Record<string, as.io.SafetensorsEntry> = {
      scalar: as.tensor(2.5),
      empty: as.zeros([0]),
      empty3: as.zeros([2, 0, 5]),
      vec: as.tensor(special),
      mat: as.randn([3, 4]),
      img: as.randn([2, 3, 2, 5]),
      ids: { dtype: 'I64', shape: [2, 2], data: new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n, 0n, -5n]) },
      idx: { dtype: 'I32', shape: [3], data: new Int32Array([-(2 ** 31), 2 ** 31 - 1, 7]) },
      noints: { dtype: 'I32', shape: [0], data: new Int32Array(0) },
    };
    const metadata = { format: 'pt', note: 'ünïcødé ✓', json: JSON.stringify({ a: [1, 2] }) };
    const f = file('roundtrip.safetensors');
    io.saveSafetensors(f, entries, metadata);
    const before = cpuTensors();
    const back = io.readSafetensors(f);
    expect(cpuTensors() - before).toBe(6); // the six F32 entries became tensors
    expect(back.metadata).toEqual(metadata);
    expect(Object.keys(back.tensors).sort()).toEqual(Object.keys(entries).sort());
    for (const [name, v] of Object.entries(entries)) {
      const w = back.tensors[name];
      if (v instanceof as.Tensor) {
        expect(w).toBeInstanceOf(as.Tensor);
        const t = w as as.Tensor;
        expect(t.shape).toEqual(v.shape);
        expect(bits(t.toFloat32Array())).toEqual(bits(v.toFloat32Array())); // bit for bit, NaN and -0 too
        t.dispose();
        v.dispose();
      } else {
        expect(io.isIntTensor(w)).toBe(true);
        const it = w as as.io.IntTensor;
        expect(it.dtype).toBe(v.dtype);
        expect(it.shape).toEqual(v.shape);
        expect(it.data.constructor).toBe(v.data.constructor);
        expect(Array.from(it.data as ArrayLike<bigint | number>)).toEqual(Array.from(v.data as ArrayLike<bigint | number>));
      }
    }
  });

  test('the file layout follows the format (checked by an independent parser)', () => {
    const a = as.tensor([1, 2, 3]);
    const b = as.tensor([[4.5]]);
    const f = file('layout.safetensors');
    io.saveSafetensors(f, { b, a, c: { dtype: 'I32', shape: [1], data: new Int32Array([9]) } }, { k: 'v' });
    const raw = parseRaw(f);
    expect(raw.headerLen % 8).toBe(0);
    expect(raw.header.__metadata__).toEqual({ k: 'v' });
    expect(raw.header.a).toEqual({ dtype: 'F32', shape: [3], data_offsets: [0, 12] });
    expect(raw.header.b).toEqual({ dtype: 'F32', shape: [1, 1], data_offsets: [12, 16] });
    expect(raw.header.c).toEqual({ dtype: 'I32', shape: [1], data_offsets: [16, 20] });
    expect(raw.data.length).toBe(20);
    expect([0, 1, 2, 3].map((i) => raw.data.readFloatLE(i * 4))).toEqual([1, 2, 3, 4.5]);
    expect(raw.data.readInt32LE(16)).toBe(9);
    a.dispose();
    b.dispose();
  });

  test('saving over an existing file replaces it', () => {
    const f = file('replace.safetensors');
    const a = as.tensor([1, 2]);
    io.saveSafetensors(f, { a });
    const b = as.tensor([3, 4, 5]);
    io.saveSafetensors(f, { b });
    const t = io.loadSafetensors(f);
    expect(Object.keys(t)).toEqual(['b']);
    expect(Array.from((t.b as as.Tensor).toFloat32Array())).toEqual([3, 4, 5]);
    for (const x of [a, b, t.b as as.Tensor]) x.dispose();
  });
});

describe('reading other files', () => {
  test('a fixture written by test/fixtures/make_fixtures.py (PyTorch side)', () => {
    const f = path.join(__dirname, 'fixtures', 'activations', 'relu_2x3x5x7.safetensors');
    const { tensors, metadata } = io.readSafetensors(f);
    expect(metadata.name).toBe('relu_2x3x5x7');
    expect(metadata.kind).toBe('relu');
    expect(JSON.parse(metadata.inputShape)).toEqual([2, 3, 5, 7]);
    for (const k of ['x', 'dy', 'y', 'dx']) expect((tensors[k] as as.Tensor).shape).toEqual([2, 3, 5, 7]);
    const x = (tensors.x as as.Tensor).toFloat32Array();
    const y = (tensors.y as as.Tensor).toFloat32Array();
    // the values agree with an independent parse of the same bytes...
    const raw = parseRaw(f);
    const [b0] = raw.header.x.data_offsets;
    expect(Array.from(x)).toEqual(Array.from({ length: x.length }, (_, i) => raw.data.readFloatLE(b0 + 4 * i)));
    // ... and make sense: y = relu(x)
    expect(Array.from(y)).toEqual(Array.from(x, (v) => Math.max(v, 0)));
    for (const t of Object.values(tensors)) (t as as.Tensor).dispose();
  });

  test('F64, F16 and BF16 entries are converted to float32 tensors', () => {
    const f64 = Buffer.alloc(16);
    f64.writeDoubleLE(0.1, 0);
    f64.writeDoubleLE(-3e40, 8); // overflows float32
    const f16 = Buffer.alloc(10);
    [0x3c00, 0xc000, 0x7c00, 0x0001, 0x7e00].forEach((h, i) => f16.writeUInt16LE(h, 2 * i)); // 1, -2, inf, 2^-24, NaN
    const bf16 = Buffer.alloc(4);
    [0x3f80, 0xc0a0].forEach((h, i) => bf16.writeUInt16LE(h, 2 * i)); // 1, -5
    const f = file('floats.safetensors');
    writeRaw(f, {
      d: { dtype: 'F64', shape: [2], data_offsets: [0, 16] },
      h: { dtype: 'F16', shape: [5], data_offsets: [16, 26] },
      b: { dtype: 'BF16', shape: [2, 1], data_offsets: [26, 30] },
    }, Buffer.concat([f64, f16, bf16]));
    const t = io.loadSafetensors(f) as Record<string, as.Tensor>;
    expect(Array.from(t.d.toFloat32Array())).toEqual([Math.fround(0.1), -Infinity]);
    const h = Array.from(t.h.toFloat32Array());
    expect(h.slice(0, 4)).toEqual([1, -2, Infinity, 2 ** -24]);
    expect(Number.isNaN(h[4])).toBe(true);
    expect(t.b.shape).toEqual([2, 1]);
    expect(Array.from(t.b.toFloat32Array())).toEqual([1, -5]);
    Object.values(t).forEach((x) => x.dispose());
  });
});

describe('corrupt files give ERR_IO with a clear message', () => {
  const good = () => {
    const data = Buffer.alloc(24);
    for (let i = 0; i < 6; i++) data.writeFloatLE(i, 4 * i);
    return { header: { a: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] }, b: { dtype: 'F32', shape: [2], data_offsets: [16, 24] } }, data };
  };
  const cases: [string, (f: string) => void, RegExp][] = [
    ['an empty file', (f) => fs.writeFileSync(f, Buffer.alloc(0)), /truncated: 0 bytes, a safetensors file starts with an 8-byte header length/],
    ['a 7-byte file', (f) => fs.writeFileSync(f, Buffer.alloc(7, 1)), /truncated: 7 bytes/],
    ['a header length larger than the file', (f) => { const g = good(); writeRaw(f, g.header, g.data, 5000n); }, /header length 5000 exceeds the \d+ bytes after it/],
    ['a header length of 2^64 - 1', (f) => writeRaw(f, {}, Buffer.alloc(0), 2n ** 64n - 1n), /header length 18446744073709551615 is past the 104857600 bytes \(100 MiB\) a header may take here/],
    ['a header that is not JSON', (f) => writeRaw(f, '{"a": {"dtype": "F32", ', Buffer.alloc(4)), /corrupt header \(not JSON\)/],
    ['a header that is a JSON array', (f) => writeRaw(f, '[1, 2]'), /corrupt header: expected a JSON object/],
    ['an unknown dtype', (f) => { const g = good(); (g.header.a as any).dtype = 'F8_E4M3'; writeRaw(f, g.header, g.data); }, /tensor 'a' has unsupported dtype 'F8_E4M3'/],
    ['a negative dimension', (f) => { const g = good(); (g.header.b as any).shape = [-2]; writeRaw(f, g.header, g.data); }, /tensor 'b' has an invalid shape/],
    ['offsets that are not a pair', (f) => { const g = good(); (g.header.b as any).data_offsets = [16]; writeRaw(f, g.header, g.data); }, /tensor 'b' has invalid data_offsets/],
    ['reversed offsets', (f) => { const g = good(); (g.header.b as any).data_offsets = [24, 16]; writeRaw(f, g.header, g.data); }, /tensor 'b' has invalid data_offsets/],
    ['offsets out of range', (f) => { const g = good(); (g.header.b as any).data_offsets = [40, 48]; writeRaw(f, g.header, g.data); }, /truncated: tensor 'b' ends at byte 48 of the data section, which has 24 bytes/],
    ['a size that does not match the shape', (f) => { const g = good(); (g.header.a as any).shape = [3, 2]; writeRaw(f, g.header, g.data); }, /tensor 'a': 16 bytes of data for shape \[3, 2\] of F32 \(expected 24\)/],
    ['overlapping tensors', (f) => { const g = good(); (g.header.b as any).data_offsets = [8, 16]; writeRaw(f, g.header, g.data); }, /corrupt: tensors 'a' and 'b' overlap/],
    ['a truncated data section', (f) => { const g = good(); writeRaw(f, g.header, g.data.subarray(0, 20)); }, /truncated: tensor 'b' ends at byte 24 of the data section, which has 20 bytes/],
    ['a gap between tensors', (f) => { const g = good(); (g.header.b as any).data_offsets = [20, 28]; writeRaw(f, g.header, Buffer.concat([g.data, Buffer.alloc(4)])); }, /corrupt: bytes 16 to 20 of the data section belong to no tensor \(before 'b'\); the format allows no gaps/],
    ['bytes after the last tensor', (f) => { const g = good(); writeRaw(f, g.header, Buffer.concat([g.data, Buffer.alloc(8)])); }, /corrupt: the data section has 8 bytes after the last tensor's end \(byte 24\) that belong to no tensor/],
    ['a metadata value that is not a string', (f) => { const g = good(); writeRaw(f, { ...g.header, __metadata__: { epoch: 3 } }, g.data); }, /corrupt header: __metadata__ 'epoch' must be a string \(the format's metadata maps strings to strings\), got 3/],
    ["torch.save's zip archive", (f) => fs.writeFileSync(f, Buffer.concat([Buffer.from('PK\x03\x04', 'latin1'), Buffer.alloc(60, 7)])), /a zip archive \(torch\.save's format for \.pt\/\.pth files\), not safetensors; in Python, safetensors\.torch\.save_file/],
    ['a FIFO', (f) => { fs.rmSync(f, { force: true }); if (spawnSync('mkfifo', [f]).status !== 0) fs.mkdirSync(f); }, /a (FIFO \(named pipe\)|folder), not a regular file/],
    ['a header past the 100 MiB cap', (f) => { const len = Buffer.alloc(8); len.writeBigUInt64LE(200n << 20n); fs.writeFileSync(f, Buffer.concat([len, Buffer.alloc(1024)])); }, /header length 209715200 is past the 104857600 bytes \(100 MiB\) a header may take here/],
    ["torch.save's older pickle", (f) => fs.writeFileSync(f, Buffer.concat([Buffer.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8]), Buffer.alloc(40)])), /a Python pickle \(torch\.save's older format\), not safetensors/],
  ];
  test.each(cases)('%s', (_name, make, message) => {
    const f = file(`corrupt-${_name.replace(/\W+/g, '_')}.safetensors`);
    make(f);
    const before = cpuTensors();
    const e = thrown(() => io.readSafetensors(f));
    expect(e.code).toBe('ERR_IO');
    expect(e.message).toContain(f); // names the file
    expect(e.message).toMatch(message);
    expect(cpuTensors()).toBe(before); // nothing decoded before the error is left alive
  });

  test('the well-formed base of those cases does load (so each case tests one defect)', () => {
    const g = good();
    const f = file('good.safetensors');
    writeRaw(f, g.header, g.data);
    const t = io.loadSafetensors(f) as Record<string, as.Tensor>;
    expect(t.a.toArray()).toEqual([[0, 1], [2, 3]]);
    expect(t.b.toArray()).toEqual([4, 5]);
    t.a.dispose();
    t.b.dispose();
  });
});

describe('well-formed files that cannot be loaded name the file and the tensor', () => {
  test.each([
    ['U8', 1],
    ['I8', 1],
    ['I16', 2],
    ['BOOL', 1],
  ] as [string, number][])('a valid %s tensor: ERR_DTYPE, nothing left alive', (dtype, size) => {
    const f = file(`dtype-${dtype}.safetensors`);
    const data = Buffer.alloc(8 + 3 * size);
    data.writeFloatLE(1.5, 0);
    data.writeFloatLE(2.5, 4);
    writeRaw(f, { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, q: { dtype, shape: [3], data_offsets: [8, 8 + 3 * size] } }, data);
    const before = cpuTensors();
    const e = thrown(() => io.loadSafetensors(f), 'ERR_DTYPE');
    expect(e.message).toContain(f);
    expect(e.message).toContain(`tensor 'q'`);
    expect(e.message).toMatch(new RegExp(`dtype ${dtype} cannot be loaded as a tensor \\(supported: F32, F64, F16, BF16, I64, I32\\)`));
    expect(cpuTensors()).toBe(before); // 'a', decoded first, was freed
  });

  test('a float tensor of more than 8 dimensions: ERR_SHAPE naming the file, the tensor and the limit', () => {
    const f = file('rank9.safetensors');
    const shape = [1, 1, 1, 1, 1, 1, 1, 1, 2];
    writeRaw(f, { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, deep: { dtype: 'F32', shape, data_offsets: [4, 12] } }, Buffer.alloc(12));
    const before = cpuTensors();
    const e = thrown(() => io.loadSafetensors(f), 'ERR_SHAPE');
    expect(e.message).toContain(f);
    expect(e.message).toMatch(/tensor 'deep' has 9 dimensions \(shape \[1, 1, 1, 1, 1, 1, 1, 1, 2\]\); a tensor has at most 8/);
    expect(cpuTensors()).toBe(before);
    // 8 dimensions load
    writeRaw(f, { deep: { dtype: 'F32', shape: shape.slice(1), data_offsets: [0, 8] } }, Buffer.alloc(8));
    const t = io.loadSafetensors(f).deep as as.Tensor;
    expect(t.shape).toEqual(shape.slice(1));
    t.dispose();
  });
});

describe('atomic saves', () => {
  const tempsIn = (d: string) => fs.readdirSync(d).filter((n) => n.endsWith('.tmp'));

  test("a killed writer's temp file is removed by the next save of that file; a running process's is kept", () => {
    const sub = fs.mkdtempSync(path.join(dir, 'stale-'));
    const target = path.join(sub, 'checkpoint.safetensors');
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!; // a process that has exited
    const staleName = `.checkpoint.safetensors.${dead}.k1ll3d.tmp`;
    const liveName = `.checkpoint.safetensors.${process.ppid}.wr1t1ng.tmp`; // the parent still runs
    const otherName = `.other.safetensors.${dead}.x.tmp`; // another file's: not this save's to touch
    for (const n of [staleName, liveName, otherName]) fs.writeFileSync(path.join(sub, n), 'partial');
    const t = as.ones([3]);
    io.saveSafetensors(target, { t });
    t.dispose();
    expect(tempsIn(sub).sort()).toEqual([liveName, otherName].sort());
  });

  test('a save that fails while writing leaves the target untouched and no temp files', () => {
    // The target is a non-empty directory: the temp file is written, then the rename fails.
    const sub = fs.mkdtempSync(path.join(dir, 'atomic-'));
    const target = path.join(sub, 'model.safetensors');
    fs.mkdirSync(target);
    fs.writeFileSync(path.join(target, 'keep.txt'), 'precious');
    const t = as.ones([1000]);
    const e = thrown(() => io.saveSafetensors(target, { t }));
    expect(e.code).toBe('ERR_IO');
    expect(e.message).toMatch(/could not write/);
    expect(fs.readFileSync(path.join(target, 'keep.txt'), 'utf8')).toBe('precious');
    expect(tempsIn(sub)).toEqual([]);
    t.dispose();
  });

  test('a save with an invalid entry leaves an existing file byte for byte as it was', () => {
    const sub = fs.mkdtempSync(path.join(dir, 'atomic-'));
    const target = path.join(sub, 'model.safetensors');
    const a = as.tensor([1, 2, 3]);
    io.saveSafetensors(target, { a });
    const original = fs.readFileSync(target);
    const disposed = as.zeros([2]);
    disposed.dispose();
    const bad: [string, () => void, string][] = [
      ['not a tensor', () => io.saveSafetensors(target, { a, b: [1, 2] as unknown as as.Tensor }), 'ERR_ARG'],
      ['a disposed tensor', () => io.saveSafetensors(target, { a, z: disposed }), 'ERR_DISPOSED'],
      ['ints of the wrong length', () => io.saveSafetensors(target, { a, i: { dtype: 'I32', shape: [4], data: new Int32Array(3) } }), 'ERR_SHAPE'],
      ['a reserved name', () => io.saveSafetensors(target, { __metadata__: a }), 'ERR_ARG'],
      ['non-string metadata', () => io.saveSafetensors(target, { a }, { n: 5 as unknown as string }), 'ERR_ARG'],
    ];
    for (const [label, fn, code] of bad) {
      const e = thrown(fn);
      expect([label, e.code]).toEqual([label, code]);
      expect(fs.readFileSync(target).equals(original)).toBe(true);
      expect(tempsIn(sub)).toEqual([]);
    }
    a.dispose();
  });

  test('integer entries whose data is not their dtype\'s typed array, and arguments that are not objects, are refused before anything is written', () => {
    const sub = fs.mkdtempSync(path.join(dir, 'atomic-'));
    const target = path.join(sub, 'model.safetensors');
    const a = as.tensor([1, 2, 3]);
    io.saveSafetensors(target, { a });
    const original = fs.readFileSync(target);
    const int = (e: unknown) => e as as.io.IntTensor;
    const bad: [string, () => void, string, RegExp][] = [
      ['I64 with Int32Array data', () => io.saveSafetensors(target, { a, i: { dtype: 'I64', shape: [2], data: new Int32Array([5, 7]) } }), 'ERR_DTYPE',
        /^saveSafetensors: 'i' has dtype I64, so its data must be a BigInt64Array, got an Int32Array$/],
      ['I32 with BigInt64Array data', () => io.saveSafetensors(target, { a, i: { dtype: 'I32', shape: [2], data: new BigInt64Array(2) } }), 'ERR_DTYPE',
        /^saveSafetensors: 'i' has dtype I32, so its data must be an Int32Array, got a BigInt64Array$/],
      ['I32 with a plain array', () => io.saveSafetensors(target, { a, i: int({ dtype: 'I32', shape: [2], data: [5, 7] }) }), 'ERR_DTYPE',
        /^saveSafetensors: 'i' has dtype I32, so its data must be an Int32Array, got a plain array$/],
      ['I32 with Float32Array data', () => io.saveSafetensors(target, { a, i: int({ dtype: 'I32', shape: [2], data: new Float32Array(2) }) }), 'ERR_DTYPE',
        /'i' has dtype I32, so its data must be an Int32Array, got a Float32Array/],
      ['I64 with no data', () => io.saveSafetensors(target, { a, i: int({ dtype: 'I64', shape: [2] }) }), 'ERR_DTYPE',
        /'i' has dtype I64, so its data must be a BigInt64Array, got undefined/],
      ['a shape that is not an array', () => io.saveSafetensors(target, { a, i: int({ dtype: 'I32', shape: 2, data: new Int32Array(2) }) }), 'ERR_SHAPE',
        /'i' shape must be an array of non-negative integers, got a number/],
      ['a negative dimension', () => io.saveSafetensors(target, { a, i: { dtype: 'I32', shape: [-2], data: new Int32Array(2) } }), 'ERR_SHAPE',
        /'i' shape must be an array of non-negative integers, got \[-2\]/],
      ['a float object that is not a Tensor', () => io.saveSafetensors(target, { a, f: int({ dtype: 'F32', shape: [2], data: new Float32Array(2) }) }), 'ERR_ARG',
        /'f' must be a Tensor or \{dtype: 'I64' \| 'I32', shape, data\}, got an object of dtype "F32"/],
      ['tensors null', () => io.saveSafetensors(target, null as never), 'ERR_ARG', /^saveSafetensors: tensors must be an object of name: Tensor or \{dtype: 'I64' \| 'I32', shape, data\}, got null$/],
      ['tensors an array', () => io.saveSafetensors(target, [a] as never), 'ERR_ARG', /tensors must be an object .*, got a plain array/],
      ['tensors a Tensor', () => io.saveSafetensors(target, a as never), 'ERR_ARG', /tensors must be an object .*, got a Tensor/],
      ['metadata null', () => io.saveSafetensors(target, { a }, null as never), 'ERR_ARG', /^saveSafetensors: metadata must be an object of name: string, got null$/],
      ['a file name that is not a string', () => io.saveSafetensors(undefined as never, { a }), 'ERR_ARG', /^saveSafetensors: the file must be a non-empty string, got undefined$/],
    ];
    for (const [label, fn, code, message] of bad) {
      const e = thrown(fn);
      expect([label, e.constructor.name, e.code, e.message]).toEqual([label, 'AdaShiftError', code, expect.stringMatching(message)]);
      expect(fs.readFileSync(target).equals(original)).toBe(true);
      expect(tempsIn(sub)).toEqual([]);
    }
    expect(fs.readdirSync(sub)).toEqual(['model.safetensors']);
    // the right typed arrays are written and read back
    io.saveSafetensors(target, { a, i: { dtype: 'I64', shape: [2], data: new BigInt64Array([5n, 7n]) }, j: { dtype: 'I32', shape: [2], data: new Int32Array([5, 7]) } });
    const back = io.loadSafetensors(target);
    expect(Array.from((back.i as as.io.IntTensor).data as BigInt64Array)).toEqual([5n, 7n]);
    expect(Array.from((back.j as as.io.IntTensor).data as Int32Array)).toEqual([5, 7]);
    (back.a as as.Tensor).dispose();
    a.dispose();
  });

  test('a save onto a folder, or of a disposed tensor, fails before anything is written', () => {
    const sub = fs.mkdtempSync(path.join(dir, 'atomic-'));
    fs.mkdirSync(path.join(sub, 'taken'));
    const t = as.ones([2]);
    expect(thrown(() => io.saveSafetensors(path.join(sub, 'taken'), { t }), 'ERR_IO').message).toMatch(/taken: could not write: it is a folder; give a file name/);
    const gone = as.ones([1]);
    gone.dispose();
    expect(thrown(() => io.saveSafetensors(path.join(sub, 'g.safetensors'), { t, gone }), 'ERR_DISPOSED').message).toMatch(/saveSafetensors: 'gone' was disposed/);
    expect(fs.readdirSync(sub)).toEqual(['taken']);
    expect(fs.readdirSync(path.join(sub, 'taken'))).toEqual([]);
    t.dispose();
  });

  test('a save into a directory that does not exist fails cleanly', () => {
    const sub = fs.mkdtempSync(path.join(dir, 'atomic-'));
    const t = as.ones([2]);
    const e = thrown(() => io.saveSafetensors(path.join(sub, 'missing', 'm.safetensors'), { t }));
    expect(e.code).toBe('ERR_IO');
    expect(fs.readdirSync(sub)).toEqual([]);
    t.dispose();
  });
});

describe('output folders (ensureDir, used by train, compare and the benchmarks)', () => {
  test('makes missing parents, accepts an existing folder, refuses a file in the path', () => {
    const base = fs.mkdtempSync(path.join(dir, 'dirs-'));
    const deep = path.join(base, 'a', 'b', 'c');
    ensureDir(deep);
    expect(fs.statSync(deep).isDirectory()).toBe(true);
    ensureDir(deep);  // already there
    fs.writeFileSync(path.join(base, 'f'), 'x');
    expect(thrown(() => ensureDir(path.join(base, 'f')), 'ERR_IO').message).toMatch(/exists and is not a folder/);
    expect(thrown(() => ensureDir(path.join(base, 'f', 'sub')), 'ERR_IO').message).toMatch(/cannot create the folder: ENOTDIR/);
  });

  // fs.mkdirSync(..., { recursive: true }) never returns here (procfs answers ENOENT for the
  // child of a folder that exists); run in a child with a time limit so a regression fails the
  // test instead of hanging the suite.
  (fs.existsSync('/proc/self') ? test : test.skip)('a folder under /proc is refused at once with ERR_IO', () => {
    const dist = ensureDist();
    const script = `
      const { ensureDir } = require(${JSON.stringify(path.join(dist, 'io', 'safetensors.js'))});
      try { ensureDir('/proc/adashift-no-such/sub'); console.log('made'); }
      catch (e) { console.log(e.code + ' ' + e.message); }`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20_000 });
    expect(r.error).toBeUndefined();
    expect(r.stdout.trim()).toMatch(/^ERR_IO \/proc\/adashift-no-such\/sub: cannot create the folder: ENOENT/);
  });
});
