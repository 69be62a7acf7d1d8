// The 2-D convolution (cross-correlation, square stride and padding) and its input and weight
// gradients as float64 direct sums over the definition, for checking the package's GEMM-lowered
// kernels. Each output entry is one sum in float64, returned unrounded.
export interface ConvRef {
  y: Float64Array;
  dx: Float64Array;
  dw: Float64Array;
}

/** y = conv(x, w); dx, dw: the gradients of sum(y * dy). `skipYdx`: dw only (large cases). */
export function convRef(
  X: Float32Array, Wt: Float32Array, DY: Float32Array, xs: number[], ws: number[], pad: number, stride: number, skipYdx = false,
): ConvRef {
  const [N, C, H, W] = xs, [Co, , kh, kw] = ws;
  const Ho = Math.floor((H + 2 * pad - kh) / stride) + 1, Wo = Math.floor((W + 2 * pad - kw) / stride) + 1;
  const y = new Float64Array(skipYdx ? 0 : N * Co * Ho * Wo), dx = new Float64Array(skipYdx ? 0 : N * C * H * W);
  const dw = new Float64Array(Co * C * kh * kw);
  for (let co = 0; co < Co; co++)
    for (let c = 0; c < C; c++)
      for (let i = 0; i < kh; i++)
        for (let j = 0; j < kw; j++) {
          const wi = ((co * C + c) * kh + i) * kw + j, wv = Wt[wi];
          let acc = 0;
          for (let n = 0; n < N; n++)
            for (let oh = 0; oh < Ho; oh++) {
              const h = oh * stride + i - pad;
              if (h < 0 || h >= H) continue;
              for (let ow = 0; ow < Wo; ow++) {
                const v = ow * stride + j - pad;
                if (v < 0 || v >= W) continue;
                const yi = ((n * Co + co) * Ho + oh) * Wo + ow, xi = ((n * C + c) * H + h) * W + v;
                acc += DY[yi] * X[xi];
                if (!skipYdx) {
                  dx[xi] += DY[yi] * wv;
                  y[yi] += wv * X[xi];
                }
              }
            }
          dw[wi] = acc;
        }
  return { y, dx, dw };
}
