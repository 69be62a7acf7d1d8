// Per-image transforms from uint8 CHW into a float32 destination: normalisation
// ((x/255 - mean) / std, as torchvision's ToTensor + Normalize) and the standard training
// augmentation (random crop with zero padding, then horizontal flip with p = 0.5, then
// normalisation). Padding happens in [0, 255] space before normalisation: a padded pixel is 0,
// exactly as torchvision's RandomCrop(size, padding) applied to the raw image.
import { AdaShiftError, checkBooleans, checkOptions } from '../errors';

export interface AugmentOptions {
  /** Pad each side with `padding` zero pixels, then crop a random `size` x `size` window (default size: the image's own). */
  randomCrop?: { size?: number; padding: number };
  /** Mirror left-right with probability 0.5. */
  horizontalFlip?: boolean;
}

/** @internal
 * A lookup table of the normalised value of every byte for every channel:
 * table[ch * 256 + v] = (v/255 - mean[ch]) / std[ch], computed in float64 and rounded once.
 */
export function normalizationTable(c: number, mean: number[], std: number[]): Float32Array {
  if (mean.length !== c || std.length !== c) {
    throw new AdaShiftError('ERR_ARG', `normalisation: mean and std need one value per channel (${c}), got ${mean.length} and ${std.length}`);
  }
  const t = new Float32Array(256 * c);
  for (let ch = 0; ch < c; ch++) {
    const m = mean[ch], s = std[ch];
    if (!(Number.isFinite(m) && Number.isFinite(s) && s > 0)) {
      throw new AdaShiftError('ERR_ARG', `normalisation: channel ${ch} has mean ${m} and std ${s}: expected finite values with std > 0`);
    }
    for (let v = 0; v < 256; v++) t[ch * 256 + v] = (v / 255 - m) / s;
  }
  return t;
}

/** @internal The output height and width of augmentInto for an h x w input. */
export function augmentedSize(h: number, w: number, options: AugmentOptions): [number, number] {
  const rc = options.randomCrop;
  if (!rc) return [h, w];
  const size = rc.size;
  return size === undefined ? [h, w] : [size, size];
}

/** @internal Checks augmentation options against an h x w image; throws ERR_ARG with what is wrong. */
export function validateAugment(h: number, w: number, options: AugmentOptions): void {
  // A misspelt option would otherwise be ignored without a word (no augmentation at all).
  checkOptions('augment', options, ['randomCrop', 'horizontalFlip']);
  checkBooleans('augment', options, ['horizontalFlip']);
  const rc = options.randomCrop;
  if (!rc) return;
  checkOptions('augment.randomCrop', rc, ['size', 'padding']);
  const p = rc.padding;
  if (!(Number.isInteger(p) && p >= 0)) {
    throw new AdaShiftError('ERR_ARG', `randomCrop.padding must be a non-negative integer, got ${String(p)}`);
  }
  if (rc.size !== undefined) {
    if (!(Number.isInteger(rc.size) && rc.size > 0)) {
      throw new AdaShiftError('ERR_ARG', `randomCrop.size must be a positive integer, got ${String(rc.size)}`);
    }
    if (rc.size > h + 2 * p || rc.size > w + 2 * p) {
      throw new AdaShiftError('ERR_ARG', `randomCrop.size ${rc.size} is larger than the padded image (${h + 2 * p}x${w + 2 * p})`);
    }
  }
}

/** @internal Normalises one image with a table from normalizationTable (the loader's fast path). */
export function normalizeWithTable(
  src: Uint8Array, srcOffset: number, dst: Float32Array, dstOffset: number, c: number, h: number, w: number, table: Float32Array,
): void {
  const hw = h * w;
  for (let ch = 0; ch < c; ch++) {
    const tb = ch * 256, s = srcOffset + ch * hw, d = dstOffset + ch * hw;
    for (let i = 0; i < hw; i++) dst[d + i] = table[tb + src[s + i]];
  }
}

/** @internal
 * Crop + flip + normalise one image with a table from normalizationTable. Random numbers are
 * drawn in a fixed order: crop top, crop left (only with randomCrop), flip (only with
 * horizontalFlip); each draw is one call of rng() (uniform in [0, 1)).
 */
export function augmentWithTable(
  src: Uint8Array, srcOffset: number, dst: Float32Array, dstOffset: number, c: number, h: number, w: number,
  table: Float32Array, rng: () => number, options: AugmentOptions,
): void {
  const [oh, ow] = augmentedSize(h, w, options);
  let top = 0, left = 0; // window origin in unpadded coordinates (may be negative)
  const rc = options.randomCrop;
  if (rc) {
    const p = rc.padding;
    top = Math.floor(rng() * (h + 2 * p - oh + 1)) - p;
    left = Math.floor(rng() * (w + 2 * p - ow + 1)) - p;
  }
  const flip = options.horizontalFlip ? rng() < 0.5 : false;
  const hw = h * w, ohw = oh * ow;
  for (let ch = 0; ch < c; ch++) {
    const tb = ch * 256, s = srcOffset + ch * hw, d = dstOffset + ch * ohw;
    const zero = table[tb];
    for (let y = 0; y < oh; y++) {
      const sy = top + y, drow = d + y * ow;
      if (sy < 0 || sy >= h) {
        for (let x = 0; x < ow; x++) dst[drow + x] = zero;
        continue;
      }
      const srow = s + sy * w;
      for (let x = 0; x < ow; x++) {
        const sx = left + (flip ? ow - 1 - x : x);
        dst[drow + x] = sx >= 0 && sx < w ? table[tb + src[srow + sx]] : zero;
      }
    }
  }
}

/** @internal dst[dstOffset + (ch*h + y)*w + x] = (src[srcOffset + (ch*h + y)*w + x]/255 - mean[ch]) / std[ch]. */
export function normalizeInto(
  src: Uint8Array, srcOffset: number, dst: Float32Array, dstOffset: number, c: number, h: number, w: number, mean: number[], std: number[],
): void {
  normalizeWithTable(src, srcOffset, dst, dstOffset, c, h, w, normalizationTable(c, mean, std));
}

/** @internal
 * Random crop with zero padding (padded pixels are 0 in [0, 255] space), then a horizontal flip
 * with p = 0.5, then normalisation, of one CHW uint8 image into dst (C x size x size floats, or
 * C x h x w without randomCrop.size). Deterministic for a given rng.
 */
export function augmentInto(
  src: Uint8Array, srcOffset: number, dst: Float32Array, dstOffset: number, c: number, h: number, w: number,
  mean: number[], std: number[], rng: () => number, options: AugmentOptions,
): void {
  validateAugment(h, w, options);
  augmentWithTable(src, srcOffset, dst, dstOffset, c, h, w, normalizationTable(c, mean, std), rng, options);
}
