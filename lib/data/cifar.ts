// The CIFAR binary format (https://www.cs.toronto.edu/~kriz/cifar.html): fixed-size records with
// no header. CIFAR-10: <1 byte label><3072 bytes image>, five training batches
// data_batch_1..5.bin and test_batch.bin of 10000 records each. CIFAR-100: <1 byte coarse
// label><1 byte fine label><3072 bytes image>, train.bin (50000) and test.bin (10000). Images are
// 32x32, stored as the 1024 red values, then green, then blue, each row-major: already CHW.
import * as fs from 'fs';
import * as path from 'path';
import { AdaShiftError, checkOptions } from '../errors';
import type { Dataset } from './datasets';
import { notRegularFile } from '../io/files';

/** @internal */
export const CIFAR_IMAGE_BYTES = 3 * 32 * 32;

export const CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'];
export const CIFAR10_MEAN = [0.4914, 0.4822, 0.4465];
export const CIFAR10_STD = [0.247, 0.2435, 0.2616];
export const CIFAR100_MEAN = [0.5071, 0.4865, 0.4409];
export const CIFAR100_STD = [0.2673, 0.2564, 0.2762];

export const CIFAR100_FINE_CLASSES = [
  'apple', 'aquarium_fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle', 'bicycle', 'bottle',
  'bowl', 'boy', 'bridge', 'bus', 'butterfly', 'camel', 'can', 'castle', 'caterpillar', 'cattle',
  'chair', 'chimpanzee', 'clock', 'cloud', 'cockroach', 'couch', 'crab', 'crocodile', 'cup', 'dinosaur',
  'dolphin', 'elephant', 'flatfish', 'forest', 'fox', 'girl', 'hamster', 'house', 'kangaroo', 'keyboard',
  'lamp', 'lawn_mower', 'leopard', 'lion', 'lizard', 'lobster', 'man', 'maple_tree', 'motorcycle', 'mountain',
  'mouse', 'mushroom', 'oak_tree', 'orange', 'orchid', 'otter', 'palm_tree', 'pear', 'pickup_truck', 'pine_tree',
  'plain', 'plate', 'poppy', 'porcupine', 'possum', 'rabbit', 'raccoon', 'ray', 'road', 'rocket',
  'rose', 'sea', 'seal', 'shark', 'shrew', 'skunk', 'skyscraper', 'snail', 'snake', 'spider',
  'squirrel', 'streetcar', 'sunflower', 'sweet_pepper', 'table', 'tank', 'telephone', 'television', 'tiger', 'tractor',
  'train', 'trout', 'tulip', 'turtle', 'wardrobe', 'whale', 'willow_tree', 'wolf', 'woman', 'worm',
];
export const CIFAR100_COARSE_CLASSES = [
  'aquatic_mammals', 'fish', 'flowers', 'food_containers', 'fruit_and_vegetables', 'household_electrical_devices',
  'household_furniture', 'insects', 'large_carnivores', 'large_man-made_outdoor_things', 'large_natural_outdoor_scenes',
  'large_omnivores_and_herbivores', 'medium_mammals', 'non-insect_invertebrates', 'people', 'reptiles',
  'small_mammals', 'trees', 'vehicles_1', 'vehicles_2',
];

export interface CifarOptions {
  /**
   * Records each file must hold. Default: the standard counts (CIFAR-10: 10000 per batch file;
   * CIFAR-100: 50000 in train.bin, 10000 in test.bin). 'any': any positive number (small test
   * files, subsets).
   */
  records?: number | 'any';
}

/** @internal A Uint8Array on a SharedArrayBuffer, so that loader workers can read it without a copy. */
export function sharedBytes(n: number): Uint8Array {
  return new Uint8Array(new SharedArrayBuffer(Math.max(n, 0)));
}

/** @internal */
export function cifar10Files(split: 'train' | 'test'): string[] {
  return split === 'train' ? [1, 2, 3, 4, 5].map((i) => `data_batch_${i}.bin`) : ['test_batch.bin'];
}

/** @internal */
export function cifar100Files(split: 'train' | 'test'): string[] {
  return [split === 'train' ? 'train.bin' : 'test.bin'];
}

function checkSplit(fn: string, split: string): void {
  if (split !== 'train' && split !== 'test') {
    throw new AdaShiftError('ERR_ARG', `${fn}: split must be 'train' or 'test', got ${JSON.stringify(split)}`);
  }
}

/** The directory holding `files`: `dir` itself or the folder the official tarball extracts to. */
function resolveDir(dir: string, sub: string, files: string[], what: string, url: string): string {
  for (const d of [dir, path.join(dir, sub)]) {
    if (files.every((f) => fs.existsSync(path.join(d, f)))) return d;
  }
  const where = fs.existsSync(dir) ? ` in ${dir} (or ${path.join(dir, sub)})` : `: directory ${dir} does not exist`;
  const missing = files.filter((f) => !fs.existsSync(path.join(dir, f)) && !fs.existsSync(path.join(dir, sub, f)));
  throw new AdaShiftError(
    'ERR_IO',
    `${what} not found${where}; looked for ${files.join(', ')}` +
      (missing.length && missing.length < files.length ? ` (missing: ${missing.join(', ')})` : '') +
      `. Download the binary version from ${url}, extract it, and pass its folder as dataDir (--data-dir).`,
  );
}

function readNames(dir: string, file: string, expected: number, fallback: string[]): string[] {
  try {
    const p = path.join(dir, file);
    if (notRegularFile(p)) return fallback.slice(); // missing (or a FIFO, which would block)
    const names = fs.readFileSync(p, 'utf8').split(/\r?\n/).map((s) => s.trim()).filter((s) => s.length > 0);
    return names.length === expected ? names : fallback.slice();
  } catch {
    return fallback.slice();
  }
}

function readRecords(
  dir: string, files: string[], labelBytes: number, labelIndex: number, numClasses: number,
  records: number | 'any', fn: string,
): { images: Uint8Array; labels: Uint8Array; count: number } {
  const recordBytes = labelBytes + CIFAR_IMAGE_BYTES;
  if (records !== 'any' && !(Number.isInteger(records) && records > 0)) {
    throw new AdaShiftError('ERR_ARG', `${fn}: records must be a positive integer or 'any', got ${String(records)}`);
  }
  const sizes = files.map((f) => {
    const p = path.join(dir, f);
    const notFile = notRegularFile(p);
    if (notFile) throw new AdaShiftError('ERR_IO', `${p}: ${notFile}`);
    const size = fs.statSync(p).size;
    // a CIFAR batch is 30 MB; past 2 GiB Node cannot read a file whole (and no image buffer that
    // large would be made for it)
    if (size > 2 ** 31 - 1) throw new AdaShiftError('ERR_IO', `${p}: ${size} bytes: far larger than a CIFAR batch (at most 2 GiB is read)`);
    if (size === 0) {
      throw new AdaShiftError(
        'ERR_IO',
        `${p}: empty file (0 bytes): holds no images; a record is ${recordBytes} bytes (${labelBytes} label byte${labelBytes > 1 ? 's' : ''} + ${CIFAR_IMAGE_BYTES} image bytes): the file is incomplete or was written without data`,
      );
    }
    if (size % recordBytes !== 0) {
      throw new AdaShiftError(
        'ERR_IO',
        `${p}: size ${size} bytes is not a multiple of the record size ${recordBytes} (${labelBytes} label byte${labelBytes > 1 ? 's' : ''} + ${CIFAR_IMAGE_BYTES} image bytes): truncated or not a CIFAR binary file`,
      );
    }
    const n = size / recordBytes;
    if (records !== 'any' && n !== records) {
      throw new AdaShiftError('ERR_IO', `${p}: wrong record count: ${n} records of ${recordBytes} bytes, expected ${records} (${records * recordBytes} bytes)`);
    }
    return n;
  });
  const count = sizes.reduce((a, b) => a + b, 0);
  const images = sharedBytes(count * CIFAR_IMAGE_BYTES);
  const labels = new Uint8Array(count);
  let k = 0;
  files.forEach((f, fi) => {
    const p = path.join(dir, f);
    const buf = fs.readFileSync(p);
    if (buf.length !== sizes[fi] * recordBytes) throw new AdaShiftError('ERR_IO', `${p}: file changed while reading`);
    for (let r = 0; r < sizes[fi]; r++, k++) {
      const off = r * recordBytes;
      const label = buf[off + labelIndex];
      if (label >= numClasses) {
        throw new AdaShiftError('ERR_IO', `${p}: label ${label} of record ${r} is out of range: expected 0..${numClasses - 1}`);
      }
      labels[k] = label;
      images.set(buf.subarray(off + labelBytes, off + recordBytes), k * CIFAR_IMAGE_BYTES);
    }
  });
  return { images, labels, count };
}

/** Reads CIFAR-10 (binary version) from `dir` or `dir`/cifar-10-batches-bin. */
export function readCifar10(dir: string, split: 'train' | 'test', options: CifarOptions = {}): Dataset {
  checkSplit('readCifar10', split);
  options = checkOptions('readCifar10', options, ['records']);
  const files = cifar10Files(split);
  const d = resolveDir(dir, 'cifar-10-batches-bin', files, 'CIFAR-10', 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz');
  const { images, labels, count } = readRecords(d, files, 1, 0, 10, options.records ?? 10000, 'readCifar10');
  return {
    name: 'cifar10', split, images, labels, count, channels: 3, height: 32, width: 32, numClasses: 10,
    classNames: readNames(d, 'batches.meta.txt', 10, CIFAR10_CLASSES),
    mean: CIFAR10_MEAN.slice(), std: CIFAR10_STD.slice(),
  };
}

/** Reads CIFAR-100 (binary version) from `dir` or `dir`/cifar-100-binary, with fine (100) or coarse (20) labels. */
export function readCifar100(dir: string, split: 'train' | 'test', labels: 'fine' | 'coarse' = 'fine', options: CifarOptions = {}): Dataset {
  checkSplit('readCifar100', split);
  options = checkOptions('readCifar100', options, ['records']);
  if (labels !== 'fine' && labels !== 'coarse') {
    throw new AdaShiftError('ERR_ARG', `readCifar100: labels must be 'fine' or 'coarse', got ${JSON.stringify(labels)}`);
  }
  const files = cifar100Files(split);
  const d = resolveDir(dir, 'cifar-100-binary', files, 'CIFAR-100', 'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz');
  const numClasses = labels === 'fine' ? 100 : 20;
  const r = readRecords(d, files, 2, labels === 'fine' ? 1 : 0, numClasses, options.records ?? (split === 'train' ? 50000 : 10000), 'readCifar100');
  return {
    name: 'cifar100', split, images: r.images, labels: r.labels, count: r.count, channels: 3, height: 32, width: 32, numClasses,
    classNames: labels === 'fine'
      ? readNames(d, 'fine_label_names.txt', 100, CIFAR100_FINE_CLASSES)
      : readNames(d, 'coarse_label_names.txt', 20, CIFAR100_COARSE_CLASSES),
    mean: CIFAR100_MEAN.slice(), std: CIFAR100_STD.slice(),
  };
}
