// Native functions of the conv op family (native/napi/conv.cc).
import type { NativeTensor as T } from '../native';

export type GemmBackendName = 'openblas' | 'own';

export interface ConvBinding {
  /** y [N, Cout, Ho, Wo] = conv2d(x [N, Cin, H, W], w [Cout, Cin, kh, kw]) + b [Cout]. */
  conv2dForward(x: T, w: T, b: T | null, strideH: number, strideW: number, padH: number, padW: number): T;
  /**
   * Gradients of sum(y * dy): [dx, dw, db], null where not asked for. With dxAdd (x's shape and
   * device), dx comes back as the input gradient plus dxAdd (the bits of a separate add).
   */
  conv2dBackward(
    dy: T, x: T, w: T, strideH: number, strideW: number, padH: number, padW: number,
    needDx: boolean, needDw: boolean, needDb: boolean, dxAdd?: T | null,
  ): [T | null, T | null, T | null];
  /**
   * The CPU GEMM conv2d uses ('own' by default; ADASHIFT_GEMM=openblas at load picks OpenBLAS in
   * builds that have it). With an argument, switches it first (process-wide).
   */
  gemmBackend(choice?: GemmBackendName): GemmBackendName;
  /** What the build offers: the backend in use, whether BLAS is compiled in, the own kernel's register tile. */
  gemmInfo(): { backend: GemmBackendName; blasCompiled: boolean; kernel: string };
  /**
   * The CPU's measured multiply-add ceiling: every pool thread runs register-only FMA chains
   * (at the vector width the GEMM uses) for about `ms` milliseconds (1 to 10000); GFLOP/s in
   * all. Blocks for about ms + 20 milliseconds.
   */
  cpuPeakGflops(ms: number): number;
  /**
   * Raw row-major CPU GEMM for tests and benchmarks: returns a copy of c with
   * C = alpha * op(A) op(B) + beta * C (C is m x n with leading dimension ldc). backend:
   * 'own' (the package's kernel), 'serial' (the same on one thread), 'small' (the same with A
   * read in place, for small products), 'blas', or 'default'.
   */
  gemm(
    a: T, b: T, c: T, transA: boolean, transB: boolean, m: number, n: number, k: number,
    lda: number, ldb: number, ldc: number, alpha: number, beta: number,
    backend: 'own' | 'serial' | 'small' | 'blas' | 'default',
  ): T;
}

export type { T };
