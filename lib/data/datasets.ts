// Image classification datasets in memory: uint8 CHW images + uint8 labels, with the standard
// per-channel normalisation constants. Images live on a SharedArrayBuffer so that the loader's
// prefetch worker reads them without a copy.
import * as fs from 'fs';
import * as path from 'path';
import { AdaShiftError, checkOptions } from '../errors';
import { readCifar10, readCifar100, sharedBytes } from './cifar';
import { readIdx, readIdxDims } from './idx';

export type DatasetName = 'fashion-mnist' | 'mnist' | 'cifar10' | 'cifar100';

export interface Dataset {
  name: string;
  split: 'train' | 'test';
  /** N * C * H * W bytes, channel-major per image (CHW), 0..255. */
  images: Uint8Array;
  /** N labels in 0..numClasses-1. */
  labels: Uint8Array;
  count: number;
  channels: number;
  height: number;
  width: number;
  numClasses: number;
  classNames?: string[];
  /** Per-channel normalisation constants, in [0, 1] units: x' = (x/255 - mean) / std. */
  mean: number[];
  std: number[];
}

export const DATASET_NAMES: readonly DatasetName[] = ['fashion-mnist', 'mnist', 'cifar10', 'cifar100'];

/** Where each dataset is looked for when no dataDir is given. */
export const DEFAULT_DATA_DIRS: Record<DatasetName, string | undefined> = {
  // Debian/Ubuntu package dataset-fashion-mnist.
  'fashion-mnist': '/usr/share/datasets/fashion-mnist',
  mnist: undefined,
  cifar10: undefined,
  cifar100: undefined,
};

export const FASHION_MNIST_CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];
export const MNIST_CLASSES = ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'];

const ALIASES: Record<string, DatasetName> = {
  'fashion-mnist': 'fashion-mnist', fashion_mnist: 'fashion-mnist', fashionmnist: 'fashion-mnist', fmnist: 'fashion-mnist',
  mnist: 'mnist',
  cifar10: 'cifar10', 'cifar-10': 'cifar10', cifar_10: 'cifar10',
  cifar100: 'cifar100', 'cifar-100': 'cifar100', cifar_100: 'cifar100',
};

/** @internal The canonical name of a dataset ('Fashion-MNIST', 'fashion_mnist' -> 'fashion-mnist'); ERR_ARG if unknown. */
export function resolveDatasetName(name: string): DatasetName {
  const n = typeof name === 'string' ? ALIASES[name.trim().toLowerCase()] : undefined;
  if (!n) {
    throw new AdaShiftError('ERR_ARG', `unknown dataset ${JSON.stringify(name)}: expected one of ${DATASET_NAMES.join(', ')}`);
  }
  return n;
}

export interface LoadDatasetOptions {
  /** Folder with the dataset files; default DEFAULT_DATA_DIRS[name]. */
  dataDir?: string;
  /** Keep only the first `limit` examples. */
  limit?: number;
  /** CIFAR-100 labels: 'fine' (100 classes, default) or 'coarse' (20). */
  labels?: 'fine' | 'coarse';
  /** CIFAR only: records each file must hold (default: the standard counts; 'any' for subsets). */
  records?: number | 'any';
}

const IDX_BASES = {
  train: { images: 'train-images-idx3-ubyte', labels: 'train-labels-idx1-ubyte' },
  test: { images: 't10k-images-idx3-ubyte', labels: 't10k-labels-idx1-ubyte' },
};

/** The file names accepted for one IDX file: gzipped or raw, and the common "dot" spelling. */
function idxCandidates(base: string): string[] {
  const dotted = base.replace(/-(idx\d-ubyte)$/, '.$1');
  return [`${base}.gz`, base, `${dotted}.gz`, dotted];
}

function idxFileList(): string {
  return ['train', 'test'].flatMap((s) => {
    const b = IDX_BASES[s as 'train' | 'test'];
    return [b.images, b.labels];
  }).map((b) => `${b}.gz`).join(', ');
}

function howToGet(name: DatasetName): string {
  const files = `the four IDX files (${idxFileList()}; gzipped or not)`;
  if (name === 'fashion-mnist') {
    return 'Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), which puts the files in ' +
      `/usr/share/datasets/fashion-mnist, or pass --data-dir (dataDir) with ${files}.`;
  }
  if (name === 'mnist') return `Pass --data-dir (dataDir) with ${files}.`;
  return '';
}

function findIdx(dir: string, base: string, name: DatasetName, display: string): string {
  const candidates = idxCandidates(base);
  for (const c of candidates) {
    const p = path.join(dir, c);
    if (fs.existsSync(p)) return p;
  }
  throw new AdaShiftError('ERR_IO', `${display}: ${base} not found in ${dir}; looked for ${candidates.join(', ')}. ${howToGet(name)}`);
}

/** The image size of the MNIST family's files (height, width). */
const IDX_IMAGE_SIZE: readonly [number, number] = [28, 28];

/** The first of `base`'s accepted file names present in `dir`, or undefined. */
function existingIdx(dir: string, base: string): string | undefined {
  return idxCandidates(base).map((c) => path.join(dir, c)).find((p) => fs.existsSync(p));
}

/**
 * Both splits of a dataset hold images of one size: the training split's (28x28 for the real
 * MNIST family; the small synthetic sets of tests use others). A split is refused when the other
 * split's images file is present with a different size; the message names the file at fault --
 * the one that is not 28x28 when the other is, else the test split's. The other file's header
 * alone is read; when it is missing or unreadable, loading that split reports it.
 */
function checkImageSize(display: string, dir: string, split: 'train' | 'test', file: string, h: number, w: number): void {
  const other = split === 'train' ? 'test' : 'train';
  const otherFile = existingIdx(dir, IDX_BASES[other].images);
  if (otherFile === undefined) return;
  let dims: number[];
  try {
    dims = readIdxDims(otherFile, 3);
  } catch {
    return;
  }
  const [, oh, ow] = dims;
  if (oh === h && ow === w) return;
  const [sh, sw] = IDX_IMAGE_SIZE;
  const standard = (a: number, b: number) => a === sh && b === sw;
  const self = { file, h, w }, that = { file: otherFile, h: oh, w: ow };
  let bad: typeof self, good: typeof self;
  if (standard(h, w) !== standard(oh, ow)) [bad, good] = standard(h, w) ? [that, self] : [self, that];
  else [bad, good] = split === 'test' ? [self, that] : [that, self];
  throw new AdaShiftError(
    'ERR_IO',
    `${bad.file}: holds ${bad.h}x${bad.w} images, but ${good.file} holds ${good.h}x${good.w}: ` +
      `the train and test splits of ${display} must have images of one size (${sh}x${sw} in the real dataset)`,
  );
}

function loadIdxDataset(name: 'fashion-mnist' | 'mnist', dir: string, split: 'train' | 'test'): Dataset {
  const display = name === 'fashion-mnist' ? 'Fashion-MNIST' : 'MNIST';
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
    throw new AdaShiftError('ERR_IO', `${display}: data directory ${dir} does not exist. ${howToGet(name)}`);
  }
  const bases = IDX_BASES[split];
  const imagesFile = findIdx(dir, bases.images, name, display);
  const labelsFile = findIdx(dir, bases.labels, name, display);
  const imgs = readIdx(imagesFile, 3);
  const labs = readIdx(labelsFile, 1);
  const [n, h, w] = imgs.dims;
  if (labs.dims[0] !== n) {
    throw new AdaShiftError('ERR_IO', `${display}: images/labels count mismatch: ${imagesFile} holds ${n} images, ${labelsFile} holds ${labs.dims[0]} labels`);
  }
  for (let i = 0; i < n; i++) {
    if (labs.data[i] >= 10) {
      throw new AdaShiftError('ERR_IO', `${labelsFile}: label ${labs.data[i]} at index ${i} is out of range: expected 0..9`);
    }
  }
  checkImageSize(display, dir, split, imagesFile, h, w);
  const images = sharedBytes(imgs.data.length);
  images.set(imgs.data);
  return {
    name, split, images, labels: labs.data.slice(), count: n, channels: 1, height: h, width: w, numClasses: 10,
    classNames: (name === 'fashion-mnist' ? FASHION_MNIST_CLASSES : MNIST_CLASSES).slice(),
    mean: name === 'fashion-mnist' ? [0.286] : [0.1307],
    std: name === 'fashion-mnist' ? [0.353] : [0.3081],
  };
}

/** @internal The first `n` examples of a dataset (a copy; images stay on a SharedArrayBuffer). */
export function takeFirst(ds: Dataset, n: number): Dataset {
  if (n >= ds.count) return ds;
  const per = ds.channels * ds.height * ds.width;
  const images = sharedBytes(n * per);
  images.set(ds.images.subarray(0, n * per));
  return { ...ds, images, labels: ds.labels.slice(0, n), count: n };
}

/**
 * Loads a dataset split into memory. Fashion-MNIST is found at its Debian package location by
 * default; the others need dataDir. Errors: ERR_ARG for an unknown name or bad options, ERR_IO
 * for missing or corrupt files, a file that holds no images (or labels), and an IDX dataset whose
 * two splits have images of different sizes (the message says which file, what is wrong, and
 * how to get it).
 */
export function loadDataset(name: DatasetName, split: 'train' | 'test', options: LoadDatasetOptions = {}): Dataset {
  const n = resolveDatasetName(name);
  if (split !== 'train' && split !== 'test') {
    throw new AdaShiftError('ERR_ARG', `loadDataset: split must be 'train' or 'test', got ${JSON.stringify(split)}`);
  }
  options = checkOptions('loadDataset', options, ['dataDir', 'limit', 'labels', 'records']);
  const { limit } = options;
  if (limit !== undefined && !(Number.isInteger(limit) && limit > 0)) {
    throw new AdaShiftError('ERR_ARG', `loadDataset: limit must be a positive integer, got ${JSON.stringify(limit) ?? String(limit)}`);
  }
  // options of another dataset are refused, not ignored (labels: CIFAR-100's; records: CIFAR's)
  if (options.labels !== undefined && (n !== 'cifar100' || (options.labels !== 'fine' && options.labels !== 'coarse'))) {
    throw new AdaShiftError('ERR_ARG', `loadDataset: labels ${JSON.stringify(options.labels)}: ${n === 'cifar100' ? "expected 'fine' or 'coarse'" : `only cifar100 has label sets ('fine', 'coarse'); ${n} has one`}`);
  }
  if (options.records !== undefined && n !== 'cifar10' && n !== 'cifar100') {
    throw new AdaShiftError('ERR_ARG', `loadDataset: records applies to the CIFAR datasets' batch files, not to ${n}`);
  }
  if (options.dataDir !== undefined && (typeof options.dataDir !== 'string' || options.dataDir === '')) {
    throw new AdaShiftError('ERR_ARG', `loadDataset: dataDir must be a folder name, got ${JSON.stringify(options.dataDir)}`);
  }
  const dir = options.dataDir ?? DEFAULT_DATA_DIRS[n];
  if (dir === undefined) {
    const files = n === 'cifar10' ? 'data_batch_1.bin .. data_batch_5.bin, test_batch.bin (the CIFAR-10 binary version)'
      : n === 'cifar100' ? 'train.bin, test.bin (the CIFAR-100 binary version)'
        : `${idxFileList()} (gzipped or not)`;
    throw new AdaShiftError('ERR_IO', `${n}: no data directory: pass dataDir (--data-dir) with ${files}`);
  }
  let ds: Dataset;
  if (n === 'fashion-mnist' || n === 'mnist') ds = loadIdxDataset(n, dir, split);
  else if (n === 'cifar10') ds = readCifar10(dir, split, { records: options.records });
  else ds = readCifar100(dir, split, options.labels ?? 'fine', { records: options.records });
  return limit !== undefined ? takeFirst(ds, limit) : ds;
}
