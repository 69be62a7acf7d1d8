// The dataset layer: IDX and CIFAR readers on small files written here in the real formats
// (every value read back is checked), their errors on corrupt files, the real Fashion-MNIST when
// the Debian package is installed, the transforms against a plain pad/crop/flip reference, and
// the loader (order, resume, dropLast, determinism independent of batch size, and prefetch in a
// worker thread -- from the compiled dist/ -- giving exactly the main thread's batches).
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import * as data from '../lib/data';
import { AdaShiftError } from '../lib/errors';
import { ensureDist } from './helpers/dist';
import { Prng } from './helpers/prng';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'adashift-data-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

function dirFor(name: string): string {
  const d = path.join(tmp, name);
  fs.mkdirSync(d, { recursive: true });
  return d;
}

function randomBytes(rng: Prng, n: number, max = 255): Uint8Array {
  const a = new Uint8Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.int(0, max);
  return a;
}

/** An IDX file written by hand (big-endian header), independent of the package's encodeIdx. */
function idxBytes(dims: number[], body: Uint8Array, magic = 0x0800 | dims.length): Buffer {
  const head = Buffer.alloc(4 + 4 * dims.length);
  head.writeUInt32BE(magic, 0);
  dims.forEach((d, i) => head.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([head, Buffer.from(body)]);
}

function writeFile(file: string, bytes: Uint8Array, gzip = false): string {
  fs.writeFileSync(file, gzip ? zlib.gzipSync(bytes) : bytes);
  return file;
}

/** Expects fn to throw an AdaShiftError with `code` whose message matches every pattern. */
function expectError(fn: () => unknown, code: string, ...patterns: (string | RegExp)[]): AdaShiftError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(AdaShiftError);
  const e = err as AdaShiftError;
  expect(e.code).toBe(code);
  for (const p of patterns) {
    if (typeof p === 'string') expect(e.message).toContain(p);
    else expect(e.message).toMatch(p);
  }
  return e;
}

function isShared(a: Uint8Array): boolean {
  return Object.prototype.toString.call(a.buffer) === '[object SharedArrayBuffer]';
}

// ---- IDX -------------------------------------------------------------------------------------

describe('IDX', () => {
  const rng = new Prng(11);
  const dims = [3, 5, 4];
  const body = randomBytes(rng, 60);

  test('hostile files: a FIFO, a device and a gzip bomb are refused without blocking, reading without end or inflating', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'adashift-hostile-'));
    try {
      const fifo = path.join(dir, 'train-images-idx3-ubyte');
      if (spawnSync('mkfifo', [fifo]).status === 0) {
        expectError(() => data.readIdx(fifo), 'ERR_IO', fifo, 'a FIFO (named pipe), not a regular file');
        expectError(() => data.readIdxDims(fifo), 'ERR_IO', 'a FIFO (named pipe), not a regular file');
      }
      expectError(() => data.readIdx('/dev/zero'), 'ERR_IO', '/dev/zero: a device, not a regular file');
      // a header of 2 x 2 x 2 bytes followed by 64 MiB of zeros: 64 KiB gzipped
      const bomb = path.join(dir, 'bomb.gz');
      fs.writeFileSync(bomb, zlib.gzipSync(Buffer.concat([Buffer.from(idxBytes([2, 2, 2], new Uint8Array(8))), Buffer.alloc(64 << 20)])));
      expect(fs.statSync(bomb).size).toBeLessThan(1 << 20);
      expectError(() => data.readIdx(bomb), 'ERR_IO', 'inflates past the 24 bytes its header declares (dimensions 2 x 2 x 2)');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('parses raw and gzipped arrays, detecting gzip by its magic bytes', () => {
    for (const gz of [false, true]) {
      const raw = idxBytes(dims, body);
      const buf = gz ? zlib.gzipSync(raw) : raw;
      const a = data.parseIdx(new Uint8Array(buf), 'mem');
      expect(a.dims).toEqual(dims);
      expect(Array.from(a.data)).toEqual(Array.from(body));
    }
    const d = dirFor('idx-basic');
    // Names that lie: gzip data without .gz, raw data with .gz.
    writeFile(path.join(d, 'plain-but-gzipped'), idxBytes(dims, body), true);
    writeFile(path.join(d, 'raw.gz'), idxBytes(dims, body), false);
    for (const f of ['plain-but-gzipped', 'raw.gz']) {
      const a = data.readIdx(path.join(d, f));
      expect(a.dims).toEqual(dims);
      expect(Array.from(a.data)).toEqual(Array.from(body));
    }
    const labels = data.parseIdx(new Uint8Array(idxBytes([7], body.subarray(0, 7))));
    expect(labels.dims).toEqual([7]);
    expect(Array.from(labels.data)).toEqual(Array.from(body.subarray(0, 7)));
    // The package's encoder writes the same bytes.
    expect(Buffer.from(data.encodeIdx(dims, body)).equals(idxBytes(dims, body))).toBe(true);
  });

  test('corrupt files: bad magic, wrong type, truncated, too long, bad gzip', () => {
    const good = idxBytes(dims, body);
    expectError(() => data.parseIdx(new Uint8Array(idxBytes([60], body)), 'x-images', 3), 'ERR_IO', 'x-images', 'magic', '0x00000801', 'expected 0x00000803 for images');
    expectError(() => data.parseIdx(new Uint8Array(good), 'x-labels', 1), 'ERR_IO', 'magic', '0x00000803', 'expected 0x00000801 for labels');
    expectError(() => data.parseIdx(new Uint8Array(idxBytes(dims, body, 0x12340803))), 'ERR_IO', 'magic', '0x12340803');
    expectError(() => data.parseIdx(new Uint8Array(idxBytes(dims, body, 0x00000d03))), 'ERR_IO', 'type 0x0d', 'unsigned bytes');
    expectError(() => data.parseIdx(new Uint8Array(good.subarray(0, good.length - 5)), 'cut'), 'ERR_IO', 'cut', 'truncated', 'need 60', 'found 55');
    expectError(() => data.parseIdx(new Uint8Array(good.subarray(0, 10))), 'ERR_IO', 'truncated IDX header');
    expectError(() => data.parseIdx(new Uint8Array([0, 0])), 'ERR_IO', 'truncated');
    expectError(() => data.parseIdx(new Uint8Array(Buffer.concat([good, Buffer.from([1, 2, 3])]))), 'ERR_IO', 'size mismatch', '63 data bytes', 'product 60');

    const d = dirFor('idx-corrupt');
    const gz = zlib.gzipSync(good);
    // A gzip stream cut short, and one with damaged deflate data.
    const cut = writeFile(path.join(d, 'cut.gz'), gz.subarray(0, Math.floor(gz.length / 2)));
    expectError(() => data.readIdx(cut), 'ERR_IO', cut, 'corrupt gzip');
    const damaged = Buffer.from(gz);
    for (let i = 12; i < damaged.length - 8; i++) damaged[i] ^= 0x5a;
    const bad = writeFile(path.join(d, 'bad.gz'), damaged);
    expectError(() => data.readIdx(bad), 'ERR_IO', bad, 'corrupt gzip');
    expectError(() => data.readIdx(path.join(d, 'nope')), 'ERR_IO', 'nope', 'no such file');
  });

  test('empty arrays: no images, images of zero pixels, no labels', () => {
    const none = new Uint8Array(0);
    expectError(() => data.parseIdx(new Uint8Array(idxBytes([0, 28, 28], none)), 'e-images', 3), 'ERR_IO', 'e-images: holds no images', '[0, 28, 28]');
    expectError(() => data.parseIdx(new Uint8Array(zlib.gzipSync(idxBytes([0, 28, 28], none))), 'gz-images', 3), 'ERR_IO', 'gz-images: holds no images');
    expectError(() => data.parseIdx(new Uint8Array(idxBytes([7, 0, 28], none)), 'h0', 3), 'ERR_IO', 'h0: holds no images', '0x28 pixels');
    expectError(() => data.parseIdx(new Uint8Array(idxBytes([7, 28, 0], none)), 'w0', 3), 'ERR_IO', 'w0: holds no images', '28x0 pixels');
    expectError(() => data.parseIdx(new Uint8Array(idxBytes([0], none)), 'e-labels', 1), 'ERR_IO', 'e-labels: holds no labels', '[0]');
    const f = writeFile(path.join(dirFor('idx-empty'), 'empty-idx3-ubyte.gz'), idxBytes([0, 28, 28], none), true);
    expectError(() => data.readIdx(f, 3), 'ERR_IO', f, 'holds no images');
    expectError(() => data.readIdxDims(f, 3), 'ERR_IO', f, 'holds no images');
    // Without an expected kind, parseIdx stays a plain reader of any IDX array.
    expect(data.parseIdx(new Uint8Array(idxBytes([0, 28, 28], none))).dims).toEqual([0, 28, 28]);
  });

  test('readIdxDims reads the header alone, raw or gzipped, of a large file', () => {
    const d = dirFor('idx-dims');
    const big = randomBytes(new Prng(4), 200 * 28 * 28); // random: about 157 KB even gzipped
    const gz = writeFile(path.join(d, 'big.gz'), idxBytes([200, 28, 28], big), true);
    expect(fs.statSync(gz).size).toBeGreaterThan(128 * 1024);
    expect(data.readIdxDims(gz, 3)).toEqual([200, 28, 28]);
    const raw = writeFile(path.join(d, 'big'), idxBytes([200, 28, 28], big.subarray(0, 1000))); // data not checked
    expect(data.readIdxDims(raw, 3)).toEqual([200, 28, 28]);
    expectError(() => data.readIdxDims(raw, 1), 'ERR_IO', raw, 'expected 0x00000801 for labels');
    expectError(() => data.readIdxDims(path.join(d, 'nope'), 3), 'ERR_IO', 'nope', 'no such file');
  });
});

// ---- MNIST-style datasets from IDX files -----------------------------------------------------

const IDX_NAMES = {
  trainImages: 'train-images-idx3-ubyte', trainLabels: 'train-labels-idx1-ubyte',
  testImages: 't10k-images-idx3-ubyte', testLabels: 't10k-labels-idx1-ubyte',
};

interface IdxSet { dir: string; train: { images: Uint8Array; labels: Uint8Array }; test: { images: Uint8Array; labels: Uint8Array } }

/** Four IDX files of nTrain / nTest h x w images; some gzipped, some raw. */
function writeIdxSet(name: string, nTrain: number, nTest: number, h = 6, w = 5, seed = 3): IdxSet {
  const rng = new Prng(seed);
  const d = dirFor(name);
  const train = { images: randomBytes(rng, nTrain * h * w), labels: randomBytes(rng, nTrain, 9) };
  const test = { images: randomBytes(rng, nTest * h * w), labels: randomBytes(rng, nTest, 9) };
  writeFile(path.join(d, IDX_NAMES.trainImages + '.gz'), idxBytes([nTrain, h, w], train.images), true);
  writeFile(path.join(d, IDX_NAMES.trainLabels), idxBytes([nTrain], train.labels));
  writeFile(path.join(d, IDX_NAMES.testImages), idxBytes([nTest, h, w], test.images));
  writeFile(path.join(d, IDX_NAMES.testLabels + '.gz'), idxBytes([nTest], test.labels), true);
  return { dir: d, train, test };
}

describe('MNIST / Fashion-MNIST from IDX files', () => {
  test('loads both splits with every value, metadata and limit', () => {
    const s = writeIdxSet('mnist-ok', 23, 9);
    for (const [name, mean, std] of [['mnist', 0.1307, 0.3081], ['fashion-mnist', 0.286, 0.353]] as const) {
      for (const split of ['train', 'test'] as const) {
        const ds = data.loadDataset(name, split, { dataDir: s.dir });
        const ref = s[split];
        expect(ds).toMatchObject({ name, split, count: ref.labels.length, channels: 1, height: 6, width: 5, numClasses: 10 });
        expect(ds.mean).toEqual([mean]);
        expect(ds.std).toEqual([std]);
        expect(ds.classNames).toHaveLength(10);
        expect(Array.from(ds.images)).toEqual(Array.from(ref.images));
        expect(Array.from(ds.labels)).toEqual(Array.from(ref.labels));
        expect(ds.labels).toBeInstanceOf(Uint8Array);
        expect(isShared(ds.images)).toBe(true);
      }
    }
    expect(data.loadDataset('Fashion_MNIST' as never, 'train', { dataDir: s.dir }).name).toBe('fashion-mnist');
    const lim = data.loadDataset('mnist', 'train', { dataDir: s.dir, limit: 4 });
    expect(lim.count).toBe(4);
    expect(Array.from(lim.images)).toEqual(Array.from(s.train.images.subarray(0, 4 * 30)));
    expect(Array.from(lim.labels)).toEqual(Array.from(s.train.labels.subarray(0, 4)));
    expect(isShared(lim.images)).toBe(true);
    expect(data.loadDataset('mnist', 'test', { dataDir: s.dir, limit: 1000 }).count).toBe(9);
  });

  test('errors: unknown name, missing directory or file, count mismatch, label range, bad magic', () => {
    expectError(() => data.loadDataset('imagenet' as never, 'train'), 'ERR_ARG', 'imagenet', 'fashion-mnist', 'cifar100');
    expectError(() => data.loadDataset('mnist', 'train'), 'ERR_IO', 'no data directory', '--data-dir', 'train-images-idx3-ubyte');
    expectError(() => data.loadDataset('mnist', 'train', { dataDir: tmp, limit: 0 }), 'ERR_ARG', 'limit');

    const missing = path.join(tmp, 'no-such-dir');
    expectError(() => data.loadDataset('fashion-mnist', 'train', { dataDir: missing }), 'ERR_IO',
      missing, 'does not exist', 'train-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz',
      '`apt-get install dataset-fashion-mnist` (Debian/Ubuntu)', '--data-dir');

    const s = writeIdxSet('mnist-partial', 5, 4);
    fs.unlinkSync(path.join(s.dir, IDX_NAMES.testImages));
    expectError(() => data.loadDataset('fashion-mnist', 'test', { dataDir: s.dir }), 'ERR_IO',
      't10k-images-idx3-ubyte not found', 'looked for t10k-images-idx3-ubyte.gz, t10k-images-idx3-ubyte', 'apt-get install dataset-fashion-mnist');
    expect(data.loadDataset('fashion-mnist', 'train', { dataDir: s.dir }).count).toBe(5);

    const m = writeIdxSet('mnist-mismatch', 5, 4);
    writeFile(path.join(m.dir, IDX_NAMES.trainLabels), idxBytes([6], new Uint8Array(6)));
    expectError(() => data.loadDataset('mnist', 'train', { dataDir: m.dir }), 'ERR_IO', 'count mismatch', 'holds 5 images', 'holds 6 labels');

    const r = writeIdxSet('mnist-range', 5, 4);
    writeFile(path.join(r.dir, IDX_NAMES.trainLabels), idxBytes([5], new Uint8Array([1, 2, 10, 3, 4])));
    expectError(() => data.loadDataset('mnist', 'train', { dataDir: r.dir }), 'ERR_IO', 'label 10 at index 2', 'out of range', '0..9');

    const b = writeIdxSet('mnist-swapped', 5, 4);
    writeFile(path.join(b.dir, IDX_NAMES.trainImages + '.gz'), idxBytes([5], new Uint8Array(5)), true);
    expectError(() => data.loadDataset('mnist', 'train', { dataDir: b.dir }), 'ERR_IO', 'magic number 0x00000801', 'expected 0x00000803');

    const t = writeIdxSet('mnist-truncated', 5, 4);
    const f = path.join(t.dir, IDX_NAMES.testImages);
    fs.truncateSync(f, fs.statSync(f).size - 7);
    expectError(() => data.loadDataset('mnist', 'test', { dataDir: t.dir }), 'ERR_IO', f, 'truncated', 'need 120', 'found 113');
  });

  test('an empty split (no images, no labels, zero-pixel images) is an ERR_IO naming the file', () => {
    const zt = writeIdxSet('mnist-zero-test', 6, 0);
    const zti = path.join(zt.dir, IDX_NAMES.testImages);
    for (const name of ['mnist', 'fashion-mnist'] as const) {
      expectError(() => data.loadDataset(name, 'test', { dataDir: zt.dir }), 'ERR_IO', `${zti}: holds no images`);
    }
    expect(data.loadDataset('mnist', 'train', { dataDir: zt.dir }).count).toBe(6);

    const zr = writeIdxSet('mnist-zero-train', 0, 4);
    const zri = path.join(zr.dir, IDX_NAMES.trainImages + '.gz');
    expectError(() => data.loadDataset('fashion-mnist', 'train', { dataDir: zr.dir, limit: 64 }), 'ERR_IO', `${zri}: holds no images`);
    expect(data.loadDataset('fashion-mnist', 'test', { dataDir: zr.dir }).count).toBe(4);

    const zl = writeIdxSet('mnist-zero-labels', 5, 4);
    const zll = writeFile(path.join(zl.dir, IDX_NAMES.trainLabels), idxBytes([0], new Uint8Array(0)));
    expectError(() => data.loadDataset('mnist', 'train', { dataDir: zl.dir }), 'ERR_IO', `${zll}: holds no labels`);

    const h0 = dirFor('mnist-h0');
    for (const [img, lab] of [[IDX_NAMES.trainImages, IDX_NAMES.trainLabels], [IDX_NAMES.testImages, IDX_NAMES.testLabels]]) {
      writeFile(path.join(h0, img), idxBytes([8, 0, 28], new Uint8Array(0)));
      writeFile(path.join(h0, lab), idxBytes([8], new Uint8Array(8)));
    }
    expectError(() => data.loadDataset('fashion-mnist', 'train', { dataDir: h0 }), 'ERR_IO', path.join(h0, IDX_NAMES.trainImages), 'holds no images', '0x28 pixels');
  });

  test('both splits must have images of one size: the file at fault is named', () => {
    // Writes the four files with train images of trainSize and test images of testSize.
    const write = (name: string, trainSize: [number, number], testSize: [number, number]) => {
      const rng = new Prng(8);
      const d = dirFor(name);
      for (const [img, lab, n, [h, w], gz] of [
        [IDX_NAMES.trainImages, IDX_NAMES.trainLabels, 7, trainSize, true],
        [IDX_NAMES.testImages, IDX_NAMES.testLabels, 3, testSize, false],
      ] as const) {
        writeFile(path.join(d, img + (gz ? '.gz' : '')), idxBytes([n, h, w], randomBytes(rng, n * h * w)), gz);
        writeFile(path.join(d, lab), idxBytes([n], randomBytes(rng, n, 9)));
      }
      return { dir: d, train: path.join(d, IDX_NAMES.trainImages + '.gz'), test: path.join(d, IDX_NAMES.testImages) };
    };
    // The audit's case: train 28x28 (the real size), test 32x32 -- refused whichever split is loaded.
    const a = write('mnist-size-test', [28, 28], [32, 32]);
    for (const split of ['train', 'test'] as const) {
      expectError(() => data.loadDataset('fashion-mnist', split, { dataDir: a.dir }), 'ERR_IO',
        `${a.test}: holds 32x32 images, but ${a.train} holds 28x28`, 'Fashion-MNIST', 'one size', '28x28 in the real dataset');
    }
    // The training split at fault.
    const b = write('mnist-size-train', [32, 32], [28, 28]);
    for (const split of ['train', 'test'] as const) {
      expectError(() => data.loadDataset('mnist', split, { dataDir: b.dir }), 'ERR_IO', `${b.train}: holds 32x32 images, but ${b.test} holds 28x28`, 'MNIST');
    }
    // Neither at the real size (synthetic sets): the training split's size is the dataset's.
    const c = write('mnist-size-synthetic', [6, 5], [5, 6]);
    for (const split of ['train', 'test'] as const) {
      expectError(() => data.loadDataset('mnist', split, { dataDir: c.dir }), 'ERR_IO', `${c.test}: holds 5x6 images, but ${c.train} holds 6x5`);
    }
    // One size, whatever it is, loads.
    const ok = write('mnist-size-ok', [12, 12], [12, 12]);
    expect(data.loadDataset('mnist', 'test', { dataDir: ok.dir })).toMatchObject({ count: 3, height: 12, width: 12 });
    expect(data.loadDataset('mnist', 'train', { dataDir: ok.dir })).toMatchObject({ count: 7, height: 12, width: 12 });
  });

  const REAL = data.DEFAULT_DATA_DIRS['fashion-mnist']!;
  const haveReal = fs.existsSync(path.join(REAL, 'train-images-idx3-ubyte.gz'));
  (haveReal ? test : test.skip)('the real Fashion-MNIST (Debian package dataset-fashion-mnist)', () => {
    const train = data.loadDataset('fashion-mnist', 'train');
    const test_ = data.loadDataset('fashion-mnist', 'test');
    for (const [ds, n] of [[train, 60000], [test_, 10000]] as const) {
      expect(ds).toMatchObject({ count: n, channels: 1, height: 28, width: 28, numClasses: 10 });
      expect(ds.images.length).toBe(n * 784);
      const hist = new Array(10).fill(0);
      for (const l of ds.labels) hist[l]++;
      expect(hist).toEqual(new Array(10).fill(n / 10)); // balanced: 6000 / 1000 per class
      expect(ds.labels[0]).toBe(9); // both splits start with an ankle boot
    }
    // The standard normalisation mean is this training set's pixel mean.
    let sum = 0;
    for (const v of train.images) sum += v;
    expect(sum / train.images.length / 255).toBeCloseTo(0.286, 3);
    expect(train.classNames![9]).toBe('Ankle boot');
  });
});

// ---- CIFAR -----------------------------------------------------------------------------------

interface CifarRecords { labels: number[]; coarse: number[]; images: Uint8Array }

function cifarRecords(rng: Prng, n: number, classes: number, coarse = 0): CifarRecords {
  const labels = Array.from({ length: n }, () => rng.int(0, classes - 1));
  return { labels, coarse: labels.map(() => rng.int(0, Math.max(coarse - 1, 0))), images: randomBytes(rng, n * 3072) };
}

function cifarBytes(r: CifarRecords, hundred: boolean): Buffer {
  const rec = hundred ? 3074 : 3073;
  const out = Buffer.alloc(r.labels.length * rec);
  r.labels.forEach((l, i) => {
    if (hundred) {
      out[i * rec] = r.coarse[i];
      out[i * rec + 1] = l;
    } else {
      out[i * rec] = l;
    }
    out.set(r.images.subarray(i * 3072, (i + 1) * 3072), i * rec + rec - 3072);
  });
  return out;
}

describe('CIFAR', () => {
  const rng = new Prng(5);
  const batches = [3, 2, 4, 1, 2].map((n) => cifarRecords(rng, n, 10));
  const testBatch = cifarRecords(rng, 3, 10);
  let c10: string;
  beforeAll(() => {
    c10 = dirFor('cifar10');
    batches.forEach((b, i) => fs.writeFileSync(path.join(c10, `data_batch_${i + 1}.bin`), cifarBytes(b, false)));
    fs.writeFileSync(path.join(c10, 'test_batch.bin'), cifarBytes(testBatch, false));
  });

  test('CIFAR-10: five training batches in order, the test batch, every value', () => {
    const tr = data.readCifar10(c10, 'train', { records: 'any' });
    expect(tr).toMatchObject({ name: 'cifar10', split: 'train', count: 12, channels: 3, height: 32, width: 32, numClasses: 10 });
    expect(Array.from(tr.labels)).toEqual(batches.flatMap((b) => b.labels));
    const all = Buffer.concat(batches.map((b) => Buffer.from(b.images)));
    expect(Buffer.from(tr.images).equals(all)).toBe(true);
    expect(isShared(tr.images)).toBe(true);
    expect(tr.mean).toEqual([0.4914, 0.4822, 0.4465]);
    expect(tr.std).toEqual([0.247, 0.2435, 0.2616]);
    expect(tr.classNames).toEqual(['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']);
    const te = data.loadDataset('cifar-10' as never, 'test', { dataDir: c10, records: 'any' });
    expect(te.count).toBe(3);
    expect(Array.from(te.labels)).toEqual(testBatch.labels);
    expect(Buffer.from(te.images).equals(Buffer.from(testBatch.images))).toBe(true);
    // The image is stored R plane, G plane, B plane: pixel (y, x) of channel c is at c*1024 + y*32 + x.
    expect(te.images[3072 + 2 * 1024 + 5 * 32 + 7]).toBe(testBatch.images[3072 + 2048 + 167]);
    const lim = data.loadDataset('cifar10', 'train', { dataDir: c10, records: 'any', limit: 4 });
    expect(Array.from(lim.labels)).toEqual([...batches[0].labels, batches[1].labels[0]]);
    // The folder the official tarball extracts to is found too.
    const parent = dirFor('cifar10-parent');
    fs.cpSync(c10, path.join(parent, 'cifar-10-batches-bin'), { recursive: true });
    expect(data.readCifar10(parent, 'test', { records: 3 }).count).toBe(3);
  });

  test('CIFAR-100: fine and coarse labels', () => {
    const d = dirFor('cifar100');
    const train = cifarRecords(rng, 5, 100, 20);
    const test_ = cifarRecords(rng, 2, 100, 20);
    fs.writeFileSync(path.join(d, 'train.bin'), cifarBytes(train, true));
    fs.writeFileSync(path.join(d, 'test.bin'), cifarBytes(test_, true));
    const fine = data.readCifar100(d, 'train', 'fine', { records: 'any' });
    expect(fine).toMatchObject({ name: 'cifar100', count: 5, numClasses: 100, channels: 3 });
    expect(Array.from(fine.labels)).toEqual(train.labels);
    expect(Buffer.from(fine.images).equals(Buffer.from(train.images))).toBe(true);
    expect(fine.classNames).toHaveLength(100);
    expect(new Set(fine.classNames).size).toBe(100);
    expect(fine.mean).toEqual([0.5071, 0.4865, 0.4409]);
    expect(fine.std).toEqual([0.2673, 0.2564, 0.2762]);
    const coarse = data.readCifar100(d, 'test', 'coarse', { records: 2 });
    expect(coarse.numClasses).toBe(20);
    expect(coarse.classNames).toHaveLength(20);
    expect(Array.from(coarse.labels)).toEqual(test_.coarse);
    expect(Buffer.from(coarse.images).equals(Buffer.from(test_.images))).toBe(true);
    const viaLoad = data.loadDataset('cifar100', 'test', { dataDir: d, labels: 'coarse', records: 'any' });
    expect(Array.from(viaLoad.labels)).toEqual(test_.coarse);
    // Standard record counts by default: 50000 in train.bin.
    expectError(() => data.readCifar100(d, 'train'), 'ERR_IO', 'train.bin', 'wrong record count', '5 records', 'expected 50000');
  });

  test('errors: missing files, sizes, record counts, label range', () => {
    expectError(() => data.readCifar10(path.join(tmp, 'nothing'), 'train'), 'ERR_IO', 'CIFAR-10 not found', 'data_batch_1.bin', 'data_batch_5.bin', 'cifar-10-binary.tar.gz');
    expectError(() => data.loadDataset('cifar10', 'train'), 'ERR_IO', 'no data directory', 'data_batch_1.bin');
    expectError(() => data.readCifar10(c10, 'train'), 'ERR_IO', 'data_batch_1.bin', 'wrong record count', '3 records of 3073 bytes', 'expected 10000');

    const d = dirFor('cifar10-bad');
    fs.cpSync(c10, d, { recursive: true });
    fs.unlinkSync(path.join(d, 'data_batch_4.bin'));
    expectError(() => data.readCifar10(d, 'train', { records: 'any' }), 'ERR_IO', 'missing: data_batch_4.bin');
    fs.writeFileSync(path.join(d, 'data_batch_4.bin'), cifarBytes(batches[3], false).subarray(0, 3000));
    expectError(() => data.readCifar10(d, 'train', { records: 'any' }), 'ERR_IO', 'data_batch_4.bin', 'size 3000 bytes', 'multiple of the record size 3073');
    const bad = cifarRecords(new Prng(1), 2, 10);
    bad.labels[1] = 10;
    fs.writeFileSync(path.join(d, 'data_batch_4.bin'), cifarBytes(bad, false));
    expectError(() => data.readCifar10(d, 'train', { records: 'any' }), 'ERR_IO', 'data_batch_4.bin', 'label 10 of record 1', 'out of range', '0..9');

    const h = dirFor('cifar100-bad');
    const r = cifarRecords(new Prng(2), 2, 100, 20);
    fs.writeFileSync(path.join(h, 'test.bin'), Buffer.concat([cifarBytes(r, true), Buffer.alloc(10)]));
    expectError(() => data.readCifar100(h, 'test', 'fine', { records: 'any' }), 'ERR_IO', 'test.bin', 'multiple of the record size 3074');
    r.coarse[0] = 20;
    fs.writeFileSync(path.join(h, 'test.bin'), cifarBytes(r, true));
    expect(data.readCifar100(h, 'test', 'fine', { records: 'any' }).count).toBe(2);
    expectError(() => data.readCifar100(h, 'test', 'coarse', { records: 'any' }), 'ERR_IO', 'label 20 of record 0', '0..19');
  });

  test('an empty batch file (0 records) is an ERR_IO naming the file', () => {
    const d = dirFor('cifar10-empty');
    fs.cpSync(c10, d, { recursive: true });
    const e3 = path.join(d, 'data_batch_3.bin');
    fs.writeFileSync(e3, Buffer.alloc(0));
    expectError(() => data.readCifar10(d, 'train', { records: 'any' }), 'ERR_IO', `${e3}: empty file`, 'holds no images', 'record is 3073 bytes');
    const et = path.join(d, 'test_batch.bin');
    fs.writeFileSync(et, Buffer.alloc(0));
    expectError(() => data.loadDataset('cifar10', 'test', { dataDir: d, records: 'any' }), 'ERR_IO', `${et}: empty file`, 'holds no images');

    const h = dirFor('cifar100-empty');
    fs.writeFileSync(path.join(h, 'train.bin'), cifarBytes(cifarRecords(new Prng(3), 2, 100, 20), true));
    fs.writeFileSync(path.join(h, 'test.bin'), Buffer.alloc(0));
    expectError(() => data.readCifar100(h, 'test', 'fine', { records: 'any' }), 'ERR_IO', `${path.join(h, 'test.bin')}: empty file`, 'holds no images', 'record is 3074 bytes');
    expect(data.readCifar100(h, 'train', 'fine', { records: 'any' }).count).toBe(2);
  });
});

// ---- transforms ------------------------------------------------------------------------------

/** Plain reference: pad with zeros, crop at (top, left) of the padded image, flip, normalise. */
function referenceAugment(src: Uint8Array, c: number, h: number, w: number, p: number, size: [number, number], top: number, left: number, flip: boolean, mean: number[], std: number[]): Float32Array {
  const ph = h + 2 * p, pw = w + 2 * p;
  const padded = new Uint8Array(c * ph * pw);
  for (let ch = 0; ch < c; ch++) for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) padded[(ch * ph + y + p) * pw + x + p] = src[(ch * h + y) * w + x];
  const [oh, ow] = size;
  const out = new Float32Array(c * oh * ow);
  for (let ch = 0; ch < c; ch++) {
    for (let y = 0; y < oh; y++) {
      for (let x = 0; x < ow; x++) {
        const v = padded[(ch * ph + top + y) * pw + left + x];
        const xx = flip ? ow - 1 - x : x;
        out[(ch * oh + y) * ow + xx] = (v / 255 - mean[ch]) / std[ch];
      }
    }
  }
  return out;
}

/** An rng that returns the given values in order. */
function scripted(values: number[]): () => number {
  let i = 0;
  return () => {
    if (i >= values.length) throw new Error('rng called too often');
    return values[i++];
  };
}

describe('transforms', () => {
  const mean = [0.25, 0.5], std = [0.5, 0.125];

  test('normalizeInto: (x/255 - mean) / std per channel, at the given offsets', () => {
    const rng = new Prng(7);
    const c = 2, h = 3, w = 4;
    const src = randomBytes(rng, 5 + c * h * w);
    src[5] = 0;
    src[6] = 255;
    const dst = new Float32Array(3 + c * h * w).fill(NaN);
    data.normalizeInto(src, 5, dst, 3, c, h, w, mean, std);
    expect(Number.isNaN(dst[0]) && Number.isNaN(dst[2])).toBe(true);
    for (let ch = 0; ch < c; ch++) {
      for (let i = 0; i < h * w; i++) {
        const v = src[5 + ch * h * w + i];
        expect(dst[3 + ch * h * w + i]).toBe(Math.fround((v / 255 - mean[ch]) / std[ch]));
      }
    }
    expect(dst[3]).toBe(-0.5);
    expect(dst[4]).toBeCloseTo(1.5, 6);
    expectError(() => data.normalizeInto(src, 0, dst, 0, c, h, w, [0.5], std), 'ERR_ARG', 'one value per channel');
  });

  test('random crop with zero padding shifts pixels and fills zeros; flip mirrors', () => {
    // 1 channel, 3x4 image with values 1..12; padding 2, output 3x4; mean 0 std 1 -> value/255.
    const src = Uint8Array.from({ length: 12 }, (_, i) => i + 1);
    const dst = new Float32Array(12);
    const px = (v: number) => Math.fround(v / 255);
    // rng 0 -> top = -2 (two zero rows), rng 0.999 -> left = +2 (shift left by 2, two zero columns at the right).
    data.augmentInto(src, 0, dst, 0, 1, 3, 4, [0], [1], scripted([0, 0.999]), { randomCrop: { padding: 2 } });
    expect(Array.from(dst)).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 3, 4, 0, 0].map(px));
    // top +1, left -1, then flip: row 1 of the image shifted right by one, mirrored.
    data.augmentInto(src, 0, dst, 0, 1, 3, 4, [0], [1], scripted([0.6, 0.2, 0.3]), { randomCrop: { padding: 2 }, horizontalFlip: true });
    expect(Array.from(dst)).toEqual([7, 6, 5, 0, 11, 10, 9, 0, 0, 0, 0, 0].map(px));
    // Flip only (one draw: < 0.5 flips).
    data.augmentInto(src, 0, dst, 0, 1, 3, 4, [0], [1], scripted([0.49]), { horizontalFlip: true });
    expect(Array.from(dst)).toEqual([4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9].map(px));
    data.augmentInto(src, 0, dst, 0, 1, 3, 4, [0], [1], scripted([0.5]), { horizontalFlip: true });
    expect(Array.from(dst)).toEqual(Array.from(src).map(px));
    // Padded pixels are 0 in [0, 255] space, i.e. -mean/std after normalisation.
    data.augmentInto(src, 0, dst, 0, 1, 3, 4, [0.5], [0.25], scripted([0, 0]), { randomCrop: { padding: 1 } });
    expect(dst[0]).toBe(-2);
    expect(dst[5]).toBe(Math.fround((1 / 255 - 0.5) / 0.25));
    expectError(() => data.augmentInto(src, 0, dst, 0, 1, 3, 4, [0], [1], Math.random, { randomCrop: { padding: -1 } }), 'ERR_ARG', 'padding');
    expectError(() => data.augmentInto(src, 0, dst, 0, 1, 3, 4, [0], [1], Math.random, { randomCrop: { padding: 0, size: 5 } }), 'ERR_ARG', 'larger than the padded image');
  });

  test('augmentInto equals pad + crop + flip + normalise, and is deterministic for a given rng', () => {
    const rng = new Prng(9);
    for (let t = 0; t < 40; t++) {
      const c = 2, h = rng.int(1, 7), w = rng.int(1, 7), p = rng.int(0, 3);
      const size = rng.bool() ? undefined : rng.int(1, Math.min(h, w) + 2 * p);
      const flip = rng.bool();
      const src = randomBytes(rng, c * h * w);
      const [oh, ow] = size === undefined ? [h, w] : [size, size];
      const u = [rng.next(), rng.next(), rng.next()];
      const top = Math.floor(u[0] * (h + 2 * p - oh + 1)), left = Math.floor(u[1] * (w + 2 * p - ow + 1));
      const opts: data.AugmentOptions = { randomCrop: { padding: p, size }, horizontalFlip: flip };
      const dst = new Float32Array(c * oh * ow).fill(NaN);
      data.augmentInto(src, 0, dst, 0, c, h, w, mean, std, scripted(flip ? u : u.slice(0, 2)), opts);
      expect(Array.from(dst)).toEqual(Array.from(referenceAugment(src, c, h, w, p, [oh, ow], top, left, flip && u[2] < 0.5, mean, std)));
      const again = new Float32Array(dst.length);
      data.augmentInto(src, 0, again, 0, c, h, w, mean, std, scripted(flip ? u : u.slice(0, 2)), opts);
      expect(again).toEqual(dst);
    }
    // With a seeded generator: the same seed gives the same image.
    const src = randomBytes(rng, 3 * 32 * 32);
    const a = new Float32Array(3072), b = new Float32Array(3072);
    const opts = { randomCrop: { padding: 4 }, horizontalFlip: true };
    data.augmentInto(src, 0, a, 0, 3, 32, 32, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3], data.mulberry32(42), opts);
    data.augmentInto(src, 0, b, 0, 3, 32, 32, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3], data.mulberry32(42), opts);
    expect(b).toEqual(a);
  });
});

// ---- loader ----------------------------------------------------------------------------------

function syntheticDataset(n: number, c = 3, h = 6, w = 5, seed = 21): data.Dataset {
  const rng = new Prng(seed);
  const images = new Uint8Array(new SharedArrayBuffer(n * c * h * w));
  images.set(randomBytes(rng, n * c * h * w));
  return {
    name: 'synthetic', split: 'train', images, labels: randomBytes(rng, n, 9), count: n, channels: c, height: h, width: w, numClasses: 10,
    mean: Array.from({ length: c }, (_, i) => 0.3 + 0.1 * i), std: Array.from({ length: c }, (_, i) => 0.2 + 0.05 * i),
  };
}

async function collect(it: AsyncIterableIterator<data.Batch>): Promise<data.Batch[]> {
  const out: data.Batch[] = [];
  for await (const b of it) out.push(b);
  return out;
}

function concatIndices(bs: data.Batch[]): number[] {
  return bs.flatMap((b) => Array.from(b.indices));
}

/** Every batch's images, labels, indices and shape equal, in the same order. */
function expectSameBatches(a: data.Batch[], b: data.Batch[]): void {
  expect(a.length).toBe(b.length);
  a.forEach((x, i) => {
    expect(b[i].index).toBe(x.index);
    expect(b[i].shape).toEqual(x.shape);
    expect(Buffer.from(b[i].images.buffer, b[i].images.byteOffset, b[i].images.byteLength)
      .equals(Buffer.from(x.images.buffer, x.images.byteOffset, x.images.byteLength))).toBe(true);
    expect(Array.from(b[i].labels)).toEqual(Array.from(x.labels));
    expect(Array.from(b[i].indices)).toEqual(Array.from(x.indices));
  });
}

describe('DataLoader', () => {
  test("close() during an epoch's iteration stops it with ERR_DISPOSED (no worker outlives the close); a new epoch() works", async () => {
    const ds = { name: 'd', split: 'train', images: new Uint8Array(8 * 4), labels: new Uint8Array(8), count: 8, channels: 1, height: 2, width: 2, numClasses: 10, mean: [0.5], std: [0.5] } as data.Dataset;
    const loader = new data.DataLoader(ds, { batchSize: 2 });
    const it = loader.epoch(0);
    expect((await it.next()).done).toBe(false);
    await loader.close();
    await expect(it.next()).rejects.toMatchObject({ code: 'ERR_DISPOSED', message: expect.stringMatching(/close\(\) was called during epoch 0's iteration \(before batch 1\)/) });
    let n = 0;
    for await (const _b of loader.epoch(1)) n++;
    expect(n).toBe(4);
    await loader.close();
  });

  test("boolean options must be booleans ('false' would shuffle, drop, prefetch, flip)", () => {
    const ds = { name: 'd', split: 'train', images: new Uint8Array(4 * 4), labels: new Uint8Array(4), count: 4, channels: 1, height: 2, width: 2, numClasses: 10, mean: [0.5], std: [0.5] } as data.Dataset;
    for (const [o, message] of [
      [{ shuffle: 'false' }, 'DataLoader: shuffle must be a boolean, got "false"'],
      [{ dropLast: 'false' }, 'DataLoader: dropLast must be a boolean, got "false"'],
      [{ prefetch: 'false' }, 'DataLoader: prefetch must be a boolean, got "false"'],
      [{ augment: { horizontalFlip: 1 } }, 'augment: horizontalFlip must be a boolean, got 1'],
    ] as const) {
      expect(() => new data.DataLoader(ds, { batchSize: 2, ...(o as object) })).toThrow(expect.objectContaining({ code: 'ERR_ARG', message }));
    }
  });

  test('loadDataset refuses options of another dataset and empty folder names', () => {
    for (const [args, message] of [
      [['fashion-mnist', 'test', { labels: 'coarse' }], /^loadDataset: labels "coarse": only cifar100 has label sets/],
      [['cifar100', 'test', { labels: 'bogus', dataDir: '/nowhere' }], /^loadDataset: labels "bogus": expected 'fine' or 'coarse'/],
      [['mnist', 'test', { records: 'any' }], /^loadDataset: records applies to the CIFAR datasets' batch files, not to mnist/],
      [['mnist', 'test', { dataDir: '' }], /^loadDataset: dataDir must be a folder name, got ""/],
      [['mnist', 'test', { limit: '5' }], /^loadDataset: limit must be a positive integer, got "5"/],
      [['mnist', 'test', null], /^mnist: no data directory/], // null options are the defaults (was a TypeError)
    ] as const) {
      expect(() => data.loadDataset(...(args as unknown as Parameters<typeof data.loadDataset>))).toThrow(expect.objectContaining({ message: expect.stringMatching(message) }));
    }
  });

  const ds = syntheticDataset(103);
  const per = 3 * 6 * 5;

  test('each epoch visits every example once, normalised, with Int32Array labels', async () => {
    const loader = new data.DataLoader(ds, { batchSize: 10, shuffle: true, seed: 5, prefetch: false });
    expect(loader.batchesPerEpoch).toBe(11);
    expect(loader.prefetchMode).toBe('off');
    const bs = await collect(loader.epoch(0));
    expect(bs.map((b) => b.index)).toEqual([...Array(11).keys()]);
    expect(bs.map((b) => b.shape[0])).toEqual([10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 3]);
    const idx = concatIndices(bs);
    expect([...idx].sort((x, y) => x - y)).toEqual([...Array(103).keys()]);
    expect(idx).not.toEqual([...Array(103).keys()]);
    const expected = new Float32Array(per);
    for (const b of bs) {
      expect(b.labels).toBeInstanceOf(Int32Array);
      expect(b.images).toBeInstanceOf(Float32Array);
      expect(b.shape).toEqual([b.labels.length, 3, 6, 5]);
      expect(b.images.length).toBe(b.labels.length * per);
      b.indices.forEach((i, k) => {
        expect(b.labels[k]).toBe(ds.labels[i]);
        data.normalizeInto(ds.images, i * per, expected, 0, 3, 6, 5, ds.mean, ds.std);
        expect(b.images.subarray(k * per, (k + 1) * per)).toEqual(expected);
      });
    }
    await loader.close();
  });

  test('order: new per epoch, same for the same seed, dataset order without shuffle; dropLast', async () => {
    const a = new data.DataLoader(ds, { batchSize: 16, shuffle: true, seed: 1, prefetch: false });
    const b = new data.DataLoader(ds, { batchSize: 16, shuffle: true, seed: 1, prefetch: false });
    const other = new data.DataLoader(ds, { batchSize: 16, shuffle: true, seed: 2, prefetch: false });
    const e0 = concatIndices(await collect(a.epoch(0)));
    const e1 = concatIndices(await collect(a.epoch(1)));
    expect(e1).not.toEqual(e0);
    expect([...e1].sort((x, y) => x - y)).toEqual([...Array(103).keys()]);
    expect(concatIndices(await collect(b.epoch(1)))).toEqual(e1);
    expect(concatIndices(await collect(b.epoch(0)))).toEqual(e0);
    expect(concatIndices(await collect(other.epoch(0)))).not.toEqual(e0);
    expect(Array.from(a.order(1))).toEqual(e1);
    // The order does not depend on the batch size.
    const c = new data.DataLoader(ds, { batchSize: 7, shuffle: true, seed: 1, prefetch: false });
    expect(concatIndices(await collect(c.epoch(1)))).toEqual(e1);

    const plain = new data.DataLoader(ds, { batchSize: 16, prefetch: false });
    expect(concatIndices(await collect(plain.epoch(0)))).toEqual([...Array(103).keys()]);
    expect(concatIndices(await collect(plain.epoch(3)))).toEqual([...Array(103).keys()]);

    const dl = new data.DataLoader(ds, { batchSize: 16, shuffle: true, seed: 1, dropLast: true, prefetch: false });
    expect(dl.batchesPerEpoch).toBe(6);
    const bs = await collect(dl.epoch(0));
    expect(bs.map((x) => x.shape[0])).toEqual([16, 16, 16, 16, 16, 16]);
    expect(concatIndices(bs)).toEqual(e0.slice(0, 96));
    expect(new data.DataLoader(ds, { batchSize: 200, dropLast: true }).batchesPerEpoch).toBe(0);
    expect(await collect(new data.DataLoader(ds, { batchSize: 200, dropLast: true }).epoch(0))).toEqual([]);
  });

  test('augmentation depends only on (seed, epoch, example): batch size, resume and prefetch do not matter', async () => {
    const augment = { randomCrop: { padding: 2, size: 5 }, horizontalFlip: true };
    const full = await collect(new data.DataLoader(ds, { batchSize: 8, shuffle: true, seed: 3, augment }).epoch(2));
    expect(full[0].shape).toEqual([8, 3, 5, 5]);
    const byIndex = new Map<number, Float32Array>();
    for (const b of full) b.indices.forEach((i, k) => byIndex.set(i, b.images.slice(k * 75, (k + 1) * 75)));
    // Another batch size: the same augmented image for every example.
    for (const b of await collect(new data.DataLoader(ds, { batchSize: 13, shuffle: true, seed: 3, augment, prefetch: false }).epoch(2))) {
      b.indices.forEach((i, k) => expect(b.images.slice(k * 75, (k + 1) * 75)).toEqual(byIndex.get(i)));
    }
    // Resume mid-epoch: the tail of the full epoch.
    const loader = new data.DataLoader(ds, { batchSize: 8, shuffle: true, seed: 3, augment, prefetch: true });
    expectSameBatches(full.slice(9), await collect(loader.epoch(2, 9)));
    expect(await collect(loader.epoch(2, loader.batchesPerEpoch))).toEqual([]);
    // Prefetch off: identical.
    expectSameBatches(full, await collect(new data.DataLoader(ds, { batchSize: 8, shuffle: true, seed: 3, augment, prefetch: false }).epoch(2)));
    // Another epoch or seed: different augmentations.
    const e3 = await collect(loader.epoch(3));
    const sameIdx = e3[0].indices[0];
    const again = await collect(new data.DataLoader(ds, { batchSize: 8, shuffle: true, seed: 4, augment, prefetch: false }).epoch(2));
    const differs = again.some((b) => b.indices.some((i, k) => !b.images.slice(k * 75, (k + 1) * 75).every((v, j) => v === byIndex.get(i)![j])));
    expect(differs).toBe(true);
    expect(e3[0].images.slice(0, 75)).not.toEqual(byIndex.get(sameIdx));
    expectError(() => loader.epoch(-1), 'ERR_ARG', 'epoch');
    expectError(() => loader.epoch(0, loader.batchesPerEpoch + 1), 'ERR_ARG', 'startBatch');
    expectError(() => new data.DataLoader(ds, { batchSize: 0 }), 'ERR_ARG', 'batchSize');
    expectError(() => new data.DataLoader(ds, { batchSize: 4, augment: { randomCrop: { padding: 1, size: 9 } } }), 'ERR_ARG', 'randomCrop.size');
    await loader.close();
  });

  test('prefetch in a worker thread (compiled dist/) gives exactly the main thread batches', async () => {
    const dist = ensureDist();
    const compiled = require(path.join(dist, 'data', 'index.js')) as typeof data;
    expect(compiled.loaderWorkerFile()).toBe(path.join(dist, 'data', 'loader-worker.js'));
    expect(data.loaderWorkerFile()).toBeUndefined(); // the TypeScript sources build on the main thread
    expect(new data.DataLoader(ds, { batchSize: 4 }).prefetchMode).toBe('main');

    const augment = { randomCrop: { padding: 3 }, horizontalFlip: true };
    const opts = { batchSize: 9, shuffle: true, seed: 77, augment };
    const ref = new data.DataLoader(ds, { ...opts, prefetch: false });
    const worker = new compiled.DataLoader(ds, { ...opts, prefetch: true });
    expect(worker.prefetchMode).toBe('worker');
    for (const epoch of [0, 1]) expectSameBatches(await collect(ref.epoch(epoch)), await collect(worker.epoch(epoch)));
    expect(worker.prefetchMode).toBe('worker');
    expect(worker.stats).toEqual({ workerBatches: 2 * worker.batchesPerEpoch, mainBatches: 0 });
    const b = (await collect(worker.epoch(1, 5)))[0];
    expect(b.labels).toBeInstanceOf(Int32Array);
    expect(b.images).toBeInstanceOf(Float32Array);
    // Resume and stopping early (a batch asked for ahead is left behind) with the worker.
    expectSameBatches((await collect(ref.epoch(4))).slice(6), await collect(worker.epoch(4, 6)));
    for await (const x of worker.epoch(5)) if (x.index === 2) break;
    expectSameBatches(await collect(ref.epoch(5)), await collect(worker.epoch(5)));
    await worker.close();
    // After close() a new epoch starts a new worker.
    expectSameBatches(await collect(ref.epoch(6)), await collect(worker.epoch(6)));
    await worker.close();

    // A dataset whose images are not on a SharedArrayBuffer is copied into one once.
    const plain = { ...ds, images: new Uint8Array(Array.from(ds.images)) };
    const w2 = new compiled.DataLoader(plain, { batchSize: 25, shuffle: true, seed: 1, prefetch: true });
    expectSameBatches(await collect(new data.DataLoader(ds, { batchSize: 25, shuffle: true, seed: 1, prefetch: false }).epoch(0)), await collect(w2.epoch(0)));
    await w2.close();
  });

  test('a worker that dies mid-epoch: the loader says so once and builds the rest here, same batches', async () => {
    const compiled = require(path.join(ensureDist(), 'data', 'index.js')) as typeof data;
    const opts = { batchSize: 10, shuffle: true, seed: 8, augment: { horizontalFlip: true } };
    const ref = await collect(new data.DataLoader(ds, { ...opts, prefetch: false }).epoch(1));
    const loader = new compiled.DataLoader(ds, opts);
    const stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      const got: data.Batch[] = [];
      for await (const b of loader.epoch(1)) {
        got.push(b);
        // eslint-disable-next-line @typescript-eslint/no-explicit-any
        if (b.index === 3) await (loader as any).worker.terminate();
      }
      expectSameBatches(ref, got);
      expect(loader.prefetchMode).toBe('main');
      expect(loader.stats.workerBatches).toBeGreaterThanOrEqual(4);
      expect(loader.stats.mainBatches).toBeGreaterThan(0);
      expect(stderr.mock.calls.map((c) => String(c[0])).join('')).toContain('prefetch worker unavailable');
    } finally {
      stderr.mockRestore();
      await loader.close();
    }
  });

  test('an unclosed loader does not keep the process alive', () => {
    const dist = ensureDist();
    const script = `
      const d = require(${JSON.stringify(path.join(dist, 'data', 'index.js'))});
      const n = 50, images = new Uint8Array(n * 12).map((_, i) => i % 251);
      const ds = { name: 'x', split: 'train', images, labels: new Uint8Array(n), count: n, channels: 1, height: 3, width: 4, numClasses: 10, mean: [0.5], std: [0.25] };
      (async () => {
        const loader = new d.DataLoader(ds, { batchSize: 8, shuffle: true });
        let k = 0;
        for await (const b of loader.epoch(0)) k += b.labels.length;
        console.log('seen', k, loader.stats.workerBatches);
      })();`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30_000 });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('seen 50 7');
    expect(r.status).toBe(0);
  });
});
