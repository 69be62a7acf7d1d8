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
  | 'ERR_AUTOGRAD'
  /** Host (CPU) memory could not be allocated; on a CUDA device: ERR_CUDA_OOM. */
  | 'ERR_OOM';

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

/**
 * An options argument checked: undefined or null (the defaults) or a plain object whose keys
 * the callee knows. A misspelt option would otherwise be ignored without a word and the
 * default used in its place. Returns the object ({} for undefined or null).
 */
export function checkOptions<T extends object>(who: string, options: T | null | undefined, known: readonly string[]): T {
  if (options === undefined || options === null) return {} as T;
  check(typeof options === 'object' && !Array.isArray(options), 'ERR_ARG', () => `${who}: options must be an object, got ${Array.isArray(options) ? 'an array' : typeof options}`);
  for (const k of Object.keys(options)) {
    check(known.includes(k), 'ERR_ARG', () => `${who}: unknown option '${k}' (known: ${known.join(', ')})`);
  }
  return options;
}

/**
 * Refuses options given but not booleans: a string such as 'false' or 'no' is truthy and would
 * turn the option on.
 */
export function checkBooleans(who: string, options: object, names: readonly string[]): void {
  for (const n of names) {
    const v = (options as Record<string, unknown>)[n];
    if (v !== undefined) checkBoolean(`${who}: ${n}`, v);
  }
}

/** A flag given as an argument or assigned (`label` names it): a boolean, not a truthy string. */
export function checkBoolean(label: string, v: unknown): asserts v is boolean {
  check(typeof v === 'boolean', 'ERR_ARG', () => `${label} must be a boolean, got ${JSON.stringify(v) ?? typeof v}`);
}

/** What a value is, for messages: null or undefined, its constructor's name for an object, else its type. */
export function typeName(v: unknown): string {
  if (v === null || v === undefined) return String(v);
  return typeof v === 'object' ? (v as object).constructor?.name ?? 'object' : typeof v;
}

/**
 * The function of a scope that follows the call stack (tidy, noGrad): an async function is
 * refused before it runs, since after its first await it would run outside the scope (tensors
 * untracked, gradients recorded again). A plain function that returns a promise is caught by
 * `refusePromise` after it returns.
 */
export function checkSyncFn(who: string, fn: unknown): void {
  check(typeof fn === 'function', 'ERR_ARG', () => `${who}(fn): fn must be a function, got ${typeof fn}`);
  check(fn.constructor?.name !== 'AsyncFunction' && fn.constructor?.name !== 'AsyncGeneratorFunction', 'ERR_ARG',
    () => `${who}(fn): fn must be synchronous, got an async function; its code after an await would run outside ${who} (call ${who} inside the async function instead, around each synchronous step)`);
}

export function refusePromise(who: string, result: unknown, what: string): void {
  if (result instanceof Promise) {
    result.catch(() => undefined);
    fail('ERR_ARG', `${who}(): fn must be synchronous (it returned a Promise); ${what}`);
  }
}
