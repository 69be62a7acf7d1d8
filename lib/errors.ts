// Error codes carried by every error the package throws (error.code), native or not.
export type ErrorCode =
  | 'ERR_ARG'
  | 'ERR_SHAPE'
  | 'ERR_DTYPE'
  | 'ERR_DEVICE'
  | 'ERR_NO_CUDA'
  | 'ERR_CUDA'
  | 'ERR_CUDA_OOM'
  | 'ERR_CUDA_GRAPH'
  | 'ERR_DISPOSED'
  | 'ERR_IO'
  | 'ERR_AUTOGRAD';

export class AdaShiftError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = 'AdaShiftError';
    this.code = code;
  }
}

export function fail(code: ErrorCode, message: string): never {
  throw new AdaShiftError(code, message);
}

export function check(cond: unknown, code: ErrorCode, message: () => string): asserts cond {
  if (!cond) throw new AdaShiftError(code, message());
}
