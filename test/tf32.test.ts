// setAllowTF32: the switch, its environment variable, and what it leaves alone (the CPU); on a
// CUDA device (a GPU, or the CPU emulation of CUDA under ctest's cuda_emu_jest) convolutions in
// TF32 against float64 direct sums, within TF32's rounding bound.
import { spawnSync } from 'child_process';
import * as as from '../lib';
import { native } from '../lib/native';
import { convRef } from './helpers/conv-ref';
import { DIST, ensureDist, jsonFromChild } from './helpers/dist';
import { thrown } from './helpers/errors';
import { Prng } from './helpers/prng';

const cuda = as.backendInfo().cudaUsable;
afterEach(() => as.setAllowTF32(false));

/** y, dx and dw of conv2d (square stride and padding) on a device, as float32 arrays. */
function convOn(device: as.DeviceSpec, X: Float32Array, Wt: Float32Array, DY: Float32Array, xs: number[], ws: number[], yShape: number[], pad: number, stride: number) {
  return as.tidy(() => {
    const x = as.tensor(X, xs, { device }), w = as.tensor(Wt, ws, { device }), dy = as.tensor(DY, yShape, { device });
    const y = new as.Tensor(native.conv2dForward(x.handle, w.handle, null, stride, stride, pad, pad)).toFloat32Array();
    const [dxH, dwH] = native.conv2dBackward(dy.handle, x.handle, w.handle, stride, stride, pad, pad, true, true, false);
    return { y, dx: new as.Tensor(dxH!).toFloat32Array(), dw: new as.Tensor(dwH!).toFloat32Array() };
  });
}

describe('setAllowTF32', () => {
  test('off by default; set and read back; anything but a boolean is refused', () => {
    expect(as.getAllowTF32()).toBe(false);
    as.setAllowTF32(true);
    expect(as.getAllowTF32()).toBe(true);
    as.setAllowTF32(false);
    expect(as.getAllowTF32()).toBe(false);
    for (const bad of [1, 'true', null, undefined, {}]) {
      thrown(() => as.setAllowTF32(bad as unknown as boolean), 'ERR_ARG', /setAllowTF32: expected a boolean/);
    }
    expect(as.getAllowTF32()).toBe(false);
  });

  test('ADASHIFT_ALLOW_TF32 sets it when the package loads; another value is refused', () => {
    const read = `console.log(JSON.stringify(require(${JSON.stringify(DIST)}).getAllowTF32()))`;
    expect(jsonFromChild(read, { ADASHIFT_ALLOW_TF32: '1' })).toBe(true);
    expect(jsonFromChild(read, { ADASHIFT_ALLOW_TF32: 'TRUE' })).toBe(true);
    expect(jsonFromChild(read, { ADASHIFT_ALLOW_TF32: '0' })).toBe(false);
    expect(jsonFromChild(read, { ADASHIFT_ALLOW_TF32: '' })).toBe(false);
    ensureDist();
    const r = spawnSync(process.execPath, ['-e', read], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, ADASHIFT_ALLOW_TF32: 'yes' } });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/ADASHIFT_ALLOW_TF32 must be 1 or 0 \(or true \/ false\), got 'yes'/);
  });

  test('the CPU ignores it: the same bits either way', () => {
    const p = new Prng(5);
    const xs = [2, 70, 6, 5], ws = [72, 70, 3, 3], ys = [2, 72, 6, 5];
    const X = p.normals(2 * 70 * 30), Wt = p.normals(72 * 70 * 9), DY = p.normals(2 * 72 * 30);
    const off = convOn('cpu', X, Wt, DY, xs, ws, ys, 1, 1);
    as.setAllowTF32(true);
    const on = convOn('cpu', X, Wt, DY, xs, ws, ys, 1, 1);
    for (const k of ['y', 'dx', 'dw'] as const) expect(Buffer.from(on[k].buffer).equals(Buffer.from(off[k].buffer))).toBe(true);
  });
});

// The bound: TF32 rounds each operand to a 10-bit mantissa (relative error at most 2^-11), so
// each product is off by at most 2^-10 of its magnitude, the sum by 2^-10 S with S the sum of the
// products' magnitudes (the same convolution on |x|, |w|, |dy|); float32 accumulation adds a
// little (4 sqrt(n) 2^-24 S, n the terms). Wrong indexing is off by O(S).
(cuda ? describe : describe.skip)('convolutions on CUDA in TF32', () => {
  const cases: [string, number[], number[], number, number][] = [
    // forward (72 rows), dX (8 * 9 = 72 rows) and dW (72 rows) all on the tensor cores
    ['3x3, 72 output channels, N=3', [3, 8, 9, 7], [72, 8, 3, 3], 1, 1],
    ['3x3 stride 2, 64 channels, N=2', [2, 64, 9, 10], [64, 64, 3, 3], 1, 2],
    ['1x1 pointwise, 70 -> 66, N=2', [2, 70, 5, 6], [66, 70, 1, 1], 0, 1],
  ];
  test.each(cases)('%s', (_name, xs, ws, pad, stride) => {
    const p = new Prng(xs.reduce((a, b) => a * 31 + b, 11));
    const [N, C, H, W] = xs, [Co, , kh, kw] = ws;
    const Ho = Math.floor((H + 2 * pad - kh) / stride) + 1, Wo = Math.floor((W + 2 * pad - kw) / stride) + 1;
    const ys = [N, Co, Ho, Wo];
    const X = p.normals(N * C * H * W), Wt = p.normals(Co * C * kh * kw), DY = p.normals(N * Co * Ho * Wo);
    const ref = convRef(X, Wt, DY, xs, ws, pad, stride);
    const abs = (a: Float32Array) => a.map(Math.abs);
    const mag = convRef(abs(X), abs(Wt), abs(DY), xs, ws, pad, stride);
    const terms = { y: C * kh * kw, dx: Co * kh * kw, dw: N * Ho * Wo };
    const fp32 = convOn('cuda', X, Wt, DY, xs, ws, ys, pad, stride);
    as.setAllowTF32(true);
    const tf32 = convOn('cuda', X, Wt, DY, xs, ws, ys, pad, stride);
    for (const k of ['y', 'dx', 'dw'] as const) {
      const got = tf32[k], want = ref[k], S = mag[k];
      const stat = 4 * Math.sqrt(terms[k]) * 2 ** -24;
      let worst = 0, err2 = 0, ref2 = 0;
      for (let i = 0; i < want.length; i++) {
        const d = Math.abs(got[i] - want[i]);
        worst = Math.max(worst, d / (1e-6 + 1e-5 * Math.abs(want[i]) + (2 ** -10 + stat) * S[i]));
        err2 += d * d;
        ref2 += want[i] * want[i];
      }
      expect(worst).toBeLessThanOrEqual(1);
      // TF32's rounding on random data: a relative L2 error near 3e-4, far over float32's
      const rel = Math.sqrt(err2 / ref2);
      expect(rel).toBeLessThan(2e-3);
      expect(rel).toBeGreaterThan(1e-5);
      // with TF32 off, float32 throughout (the mode reaches the kernels and leaves them)
      let rel32 = 0;
      for (let i = 0; i < want.length; i++) rel32 = Math.max(rel32, Math.abs(fp32[k][i] - want[i]) / (1e-6 + S[i]));
      expect(rel32).toBeLessThan(1e-5);
    }
  });
});
