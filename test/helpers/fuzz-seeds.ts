// Mutation fuzzing of the raw binding: one valid call per function (its "seed", built fresh for
// every case from the case's own PRNG: small CPU tensors of consistent shapes, valid numbers,
// booleans and strings), then invalid variants made by changing exactly one argument into
// something the function's contract rejects, by a contract violation that needs several
// arguments (a "semantic" case), or by leaving out trailing arguments.
//
// Each parameter declares what is invalid for it, given the rest of the seed (null is fine for
// an optional tensor, a shape change only matters for the dimensions the contract ties to
// another argument, a buffer is only read when momentum is non-zero...), so every generated call
// must throw an Error whose `code` starts with 'ERR_'. The seeds themselves are checked to
// succeed (makeValidCase), so a generator that builds a bad seed does not go unnoticed.
//
// Case i is a pure function of (i, seed, the binding): a child process replays the same cases.
// Every tensor a case makes is disposed by its cleanup(); this file imports nothing from lib/.
import type { NativeBinding, NativeTensor } from '../../lib/native';
import type { FuzzCase, FuzzEnv } from './fuzz';
import { show } from './fuzz';
import { Prng } from './prng';

type Args = unknown[];
/** A property that may depend on the seed's arguments. */
type Pred<T> = T | ((a: Args) => T);
/** A candidate value, built only when picked. */
type Mut = [label: string, make: (c: Ctx) => unknown];

function ev<T>(p: Pred<T> | undefined, a: Args, dflt: T): T {
  if (p === undefined) return dflt;
  return typeof p === 'function' ? (p as (a: Args) => T)(a) : p;
}

// ---- per-case context: makes tensors and remembers them for cleanup --------------------------
export interface Ctx {
  native: NativeBinding;
  env: FuzzEnv;
  prng: Prng;
  blas: boolean;
  rand(shape: number[], lo?: number, hi?: number): NativeTensor;
  full(shape: number[], v: number): NativeTensor;
  from(values: number[], shape: number[]): NativeTensor;
  disposed(shape: number[]): NativeTensor;
  /** Tracks every NativeTensor in a result (arrays too) so cleanup disposes it. */
  keep<T>(x: T): T;
  onCleanup(fn: () => void): void;
  cleanup(): void;
}

const isHandle = (v: unknown): v is NativeTensor =>
  !!v && typeof v === 'object' && (v as { constructor?: { name?: string } }).constructor?.name === 'NativeTensor' && !Array.isArray(v);

function makeCtx(env: FuzzEnv, prng: Prng): Ctx {
  const made: NativeTensor[] = [];
  const after: (() => void)[] = [];
  const native = env.native;
  const track = (t: NativeTensor) => {
    made.push(t);
    return t;
  };
  const ctx: Ctx = {
    native,
    env,
    prng,
    blas: native.gemmInfo().blasCompiled,
    rand: (shape, lo = -1, hi = 1) => track(native.rand(shape, 0, lo, hi, prng.int(0, 2 ** 31), 0, 'cpu')),
    full: (shape, v) => track(native.full(shape, v, 'cpu')),
    from: (values, shape) => track(native.fromArray(Float32Array.from(values), shape, 'cpu')),
    disposed: (shape) => {
      const t = track(native.full(shape, 0, 'cpu'));
      t.dispose();
      return t;
    },
    keep<T>(x: T): T {
      if (isHandle(x)) track(x);
      else if (Array.isArray(x)) x.forEach((y) => ctx.keep(y));
      return x;
    },
    onCleanup: (fn) => after.push(fn),
    cleanup() {
      for (const t of made.splice(0)) {
        try {
          if (!t.disposed) t.dispose();
        } catch {
          /* a handle the call broke: nothing more to free */
        }
      }
      for (const fn of after.splice(0)) fn();
    },
  };
  return ctx;
}

// ---- parameter declarations ------------------------------------------------------------------
interface ParamBase {
  name: string;
  /** further values invalid for this position given the seed (values in range that break the contract) */
  extra?: (c: Ctx, a: Args) => Mut[];
}
interface TensorParam extends ParamBase {
  kind: 'T';
  /** null / undefined (and leaving the argument out) is valid */
  nullOk?: Pred<boolean>;
  /** whether another rank is invalid: true (one more / one fewer dimension), 'append' (one more only) */
  rank?: Pred<boolean | 'append'>;
  /** dimensions tied to other arguments by the contract: any change is invalid ('all': every one) */
  dims?: Pred<number[] | 'all'>;
}
interface IntParam extends ParamBase {
  kind: 'int';
  lo: number;
  hi: number;
}
interface NumParam extends ParamBase {
  kind: 'num';
  /** the native side converts to float32 and requires a finite result: overflowing values are invalid */
  f32?: boolean;
  min?: number;
  minOpen?: boolean;
  max?: number;
  maxOpen?: boolean;
}
interface BoolParam extends ParamBase {
  kind: 'bool';
}
interface StrParam extends ParamBase {
  kind: 'str';
  bad: (c: Ctx) => string[];
  nullOk?: boolean;
}
interface DevParam extends ParamBase {
  kind: 'dev';
}
/** an array of dimensions; its length (the rank) is always fixed */
interface ShapeParam extends ParamBase {
  kind: 'shape';
  dims: Pred<number[]>;
}
/** a non-empty array of tensors */
interface ListParam extends ParamBase {
  kind: 'tensors';
}
type Param = TensorParam | IntParam | NumParam | BoolParam | StrParam | DevParam | ShapeParam | ListParam;

function undefinedOk(p: Param, a: Args): boolean {
  if (p.kind === 'T') return ev(p.nullOk, a, false);
  if (p.kind === 'str') return !!p.nullOk;
  return false;
}

// ---- pools of invalid values ------------------------------------------------------------------
type JunkKind = 'string' | 'object' | 'array' | 'function' | 'bigint' | 'symbol' | 'boolean' | 'number' | 'null' | 'undefined';
function typeJunk(except: JunkKind[]): Mut[] {
  const all: [JunkKind, Mut][] = [
    ['string', ['string', () => 'abc']],
    ['object', ['object', () => ({})]],
    ['array', ['array', () => [1]]],
    ['function', ['function', () => () => 1]],
    ['bigint', ['bigint', () => 10n]],
    ['symbol', ['symbol', () => Symbol('s')]],
    ['boolean', ['boolean', () => true]],
    ['number', ['number', () => 3]],
    ['null', ['null', () => null]],
    ['undefined', ['undefined', () => undefined]],
  ];
  return all.filter(([k]) => !except.includes(k)).map(([, m]) => m);
}

const nullish = (ok: boolean): JunkKind[] => (ok ? ['null', 'undefined'] : []);
const withDim = (s: number[], d: number, v: number) => s.map((x, i) => (i === d ? v : x));

function tensorPool(p: TensorParam, a: Args, cur: unknown, c: Ctx): Mut[] {
  const ok = ev(p.nullOk, a, false);
  const pool: Mut[] = [
    ...typeJunk(nullish(ok)),
    ['disposed tensor', (cx) => cx.disposed(isHandle(cur) ? cur.shape : [1])],
    ['fake handle (NativeTensor prototype)', (cx) => cx.env.junk.fakeHandle],
    ['Proxy of a handle', (cx) => new Proxy(isHandle(cur) ? cur : (cx.env.junk.rawHandle as object), {})],
    ['duck-typed object', (cx) => cx.env.junk.duck],
    ['public Tensor instead of a handle', (cx) => cx.env.junk.publicTensor],
    ['Float32Array', () => new Float32Array(6)],
  ];
  if (isHandle(cur)) {
    const s = cur.shape;
    const rank = ev(p.rank, a, false);
    if (rank) pool.push(['one more dimension', (cx) => cx.rand([...s, 2])]);
    if (rank === true && s.length >= 1) pool.push(['one dimension fewer', (cx) => cx.rand(s.slice(0, -1))]);
    const dims = ev(p.dims, a, [] as number[] | 'all');
    for (const d of dims === 'all' ? s.map((_, i) => i) : dims) {
      pool.push([`dim ${d} + 1`, (cx) => cx.rand(withDim(s, d, s[d] + 1))]);
      if (s[d] > 0) pool.push([`dim ${d} - 1`, (cx) => cx.rand(withDim(s, d, s[d] - 1))]);
    }
  }
  return [...pool, ...(p.extra?.(c, a) ?? [])];
}

function numericJunk(): Mut[] {
  return [
    ['NaN', () => NaN],
    ['Infinity', () => Infinity],
    ['-Infinity', () => -Infinity],
    ['numeric string', () => '1'],
    ['Number object', () => new Number(1)],
    ...typeJunk(['number']),
  ];
}

function intPool(p: IntParam): Mut[] {
  const above = p.hi + 1 !== p.hi ? p.hi + 1 : p.hi * 2;
  return [
    ...numericJunk(),
    ['fractional', () => p.lo + 0.5],
    ['below range', () => p.lo - 1],
    ['above range', () => above],
    ['huge', () => 1e300],
    ['-huge', () => -1e300],
  ];
}

function numPool(p: NumParam): Mut[] {
  const pool = numericJunk();
  if (p.f32) pool.push(['overflows float32', () => 1e39], ['overflows float32 (negative)', () => -1e39]);
  if (p.min !== undefined) {
    const min = p.min;
    pool.push(['below the minimum', () => min - 0.25]);
    if (p.minOpen) pool.push(['at the open minimum', () => min]);
  }
  if (p.max !== undefined) {
    const max = p.max;
    pool.push(['above the maximum', () => max + 0.25]);
    if (p.maxOpen) pool.push(['at the open maximum', () => max]);
  }
  return pool;
}

function boolPool(): Mut[] {
  return [['number 1', () => 1], ['number 0', () => 0], ['string "true"', () => 'true'], ['Boolean object', () => new Boolean(true)], ...typeJunk(['boolean'])];
}

function devPool(c: Ctx): Mut[] {
  const pool: Mut[] = [
    ['unknown name', () => 'gpu'],
    ['upper case', () => 'CPU'],
    ['trailing space', () => 'cpu '],
    ['empty', () => ''],
    ['cuda: without index', () => 'cuda:'],
    ['negative index', () => 'cuda:-1'],
    ['non-digit index', () => 'cuda:x'],
    ['index too long', () => 'cuda:12345'],
    ['nonexistent index', () => 'cuda:999'],
    ['NUL inside', () => 'cpu\0'],
    ['String object', () => new String('cpu')],
    ['array', () => ['cpu']],
    ...typeJunk(['string', 'array']),
  ];
  if (!c.env.cudaUsable) pool.push(['cuda without CUDA', () => 'cuda'], ['cuda:0 without CUDA', () => 'cuda:0']);
  return pool;
}

function shapePool(p: ShapeParam, a: Args, cur: unknown): Mut[] {
  const pool: Mut[] = [
    ['negative dim', () => [2, -1, 3, 3]],
    ['NaN dim', () => [NaN, 2, 3, 3]],
    ['Infinity dim', () => [1, 1, Infinity, 3]],
    ['fractional dim', () => [2.5, 2, 3, 3]],
    ['dim above 2^53', () => [1, 1, 2 ** 60, 1]],
    ['more than 2^40 elements', () => [2 ** 21, 2 ** 20, 1, 1]],
    ['9 dims', () => [1, 1, 1, 1, 1, 1, 1, 1, 1]],
    ['string dim', () => ['2', 3, 3, 3]],
    ['null dim', () => [null, 1, 1, 1]],
    ['hole', () => [1, , 1, 1]], // eslint-disable-line no-sparse-arrays
    ['bigint dim', () => [2n, 1, 1, 1]],
    ['symbol dim', () => [Symbol('d'), 1, 1, 1]],
    ['Int32Array', () => new Int32Array([1, 1, 3, 3])],
    ['array-like object', () => ({ length: 4, 0: 1, 1: 1, 2: 3, 3: 3 })],
    ...typeJunk(['array']),
  ];
  if (Array.isArray(cur)) {
    const s = cur as number[];
    pool.push(['one more dimension', () => [...s, 1]], ['one dimension fewer', () => s.slice(0, -1)]);
    for (const d of ev(p.dims, a, [])) {
      pool.push([`dim ${d} + 1`, () => withDim(s, d, s[d] + 1)]);
      pool.push([`dim ${d} - 1`, () => withDim(s, d, s[d] - 1)]);
    }
  }
  return pool;
}

function listPool(cur: unknown): Mut[] {
  const list = Array.isArray(cur) ? (cur as NativeTensor[]) : [];
  const first = list[0];
  return [
    ['empty array', () => []],
    ['Float32Array', () => new Float32Array(3)],
    ...typeJunk(['array']),
    ['array holding a disposed tensor', (c) => [first, c.disposed([2])]],
    ['array holding null', () => [first, null]],
    ['array holding undefined', () => [undefined, first]],
    ['array holding a number', () => [first, 3]],
    ['array holding a string', () => ['abc', first]],
    ['array holding a public Tensor', (c) => [first, c.env.junk.publicTensor]],
    ['array holding a duck-typed object', (c) => [c.env.junk.duck]],
    ['array holding a fake handle (NativeTensor prototype)', (c) => [first, c.env.junk.fakeHandle]],
    ['array holding a Proxy of a handle', () => [new Proxy(first, {})]],
    ['sparse array', () => [first, , first]], // eslint-disable-line no-sparse-arrays
    ['nested array', () => [[first]]],
  ];
}

function poolFor(p: Param, a: Args, pos: number, c: Ctx): Mut[] {
  const cur = a[pos];
  let pool: Mut[];
  switch (p.kind) {
    case 'T':
      return tensorPool(p, a, cur, c);
    case 'int':
      pool = intPool(p);
      break;
    case 'num':
      pool = numPool(p);
      break;
    case 'bool':
      pool = boolPool();
      break;
    case 'str':
      pool = [...p.bad(c).map((s): Mut => [`string ${JSON.stringify(s)}`, () => s]), ...typeJunk(['string', ...nullish(!!p.nullOk)])];
      break;
    case 'dev':
      pool = devPool(c);
      break;
    case 'shape':
      pool = shapePool(p, a, cur);
      break;
    case 'tensors':
      pool = listPool(cur);
      break;
  }
  return [...pool, ...(p.extra?.(c, a) ?? [])];
}

// ---- the specs ----------------------------------------------------------------------------------
interface MutSpec {
  name: string;
  params: Param[];
  /** a valid argument list (tensors made through c, so cleanup frees them) */
  seed: (c: Ctx) => Args;
  /**
   * contract violations that need more than one argument changed: (c, seed) -> arguments, and
   * when given, whether the violation exists for this seed (a transposed layout of a square
   * tensor is the same shape)
   */
  semantic?: [string, (c: Ctx, a: Args) => Args, ((a: Args) => boolean)?][];
  /** checks what a valid call returned: a problem, or undefined */
  check?: (r: unknown, a: Args, c: Ctx) => string | undefined;
}

const shp = (t: unknown) => (t as NativeTensor).shape;
const T = (name: string, o: Omit<TensorParam, 'kind' | 'name'> = {}): TensorParam => ({ kind: 'T', name, rank: true, ...o });
const I = (name: string, lo: number, hi: number, extra?: ParamBase['extra']): IntParam => ({ kind: 'int', name, lo, hi, extra });
const B = (name: string, extra?: ParamBase['extra']): BoolParam => ({ kind: 'bool', name, extra });
const F = (name: string, o: Omit<NumParam, 'kind' | 'name'> = {}): NumParam => ({ kind: 'num', name, ...o });
/** a float32 number >= 0 that must stay finite */
const F0 = (name: string): NumParam => F(name, { f32: true, min: 0 });
/** The optional schedule tensor of the optimizer updates (capturable optimizers): [8] or null. */
const SCHED_ARG: TensorParam = T('sched', { nullOk: true, dims: 'all' });
const schedSeed = (c: Ctx) => (c.prng.bool() ? c.full([8], 1) : null);
const BETA = (name: string): NumParam => F(name, { f32: true, min: 0, max: 1, maxOpen: true, extra: () => [['rounds to 1 in float32', () => 1 - 1e-9]] });

const fmtResult = (x: unknown) => (x === null ? 'null' : isHandle(x) ? `tensor [${x.shape.join(',')}]` : show(x));
const sameShape = (x: unknown, s: number[]) => isHandle(x) && x.shape.length === s.length && x.shape.every((d, i) => d === s[i]);
/** A tensor of the given shape. */
function expectShape(r: unknown, s: number[]): string | undefined {
  return sameShape(r, s) ? undefined : `expected a tensor [${s.join(',')}], got ${fmtResult(r)}`;
}
/** An array of tensors of the given shapes (null: a null entry). */
function expectList(r: unknown, want: (number[] | null)[]): string | undefined {
  if (!Array.isArray(r) || r.length !== want.length) return `expected ${want.length} results, got ${show(r)}`;
  for (let i = 0; i < want.length; i++) {
    const w = want[i];
    if (w === null ? r[i] !== null : !sameShape(r[i], w)) return `result ${i}: expected ${w === null ? 'null' : `[${w.join(',')}]`}, got ${fmtResult(r[i])}`;
  }
  return undefined;
}
const expectUndefined = (r: unknown) => (r === undefined ? undefined : `expected undefined, got ${show(r)}`);

// conv geometry ---------------------------------------------------------------------------------
interface ConvGeo {
  N: number; Cin: number; Cout: number; H: number; W: number; kh: number; kw: number; sh: number; sw: number; ph: number; pw: number; Ho: number; Wo: number;
}
function convGeo(p: Prng): ConvGeo {
  const N = p.int(1, 2), Cin = p.int(1, 3), Cout = p.int(1, 3), kh = p.int(1, 3), kw = p.int(1, 3);
  const sh = p.int(1, 2), sw = p.int(1, 2), ph = p.int(0, 1), pw = p.int(0, 1);
  const H = Math.max(1, kh - 2 * ph + p.int(0, 3)), W = Math.max(1, kw - 2 * pw + p.int(0, 3));
  return { N, Cin, Cout, H, W, kh, kw, sh, sw, ph, pw, Ho: Math.floor((H + 2 * ph - kh) / sh) + 1, Wo: Math.floor((W + 2 * pw - kw) / sw) + 1 };
}
/** conv output shape from (x, w, ..., sh, sw, ph, pw) at the given argument offset of the strides */
function convOut(x: number[], w: number[], sh: number, sw: number, ph: number, pw: number): number[] {
  return [x[0], w[0], Math.floor((x[2] + 2 * ph - w[2]) / sh) + 1, Math.floor((x[3] + 2 * pw - w[3]) / sw) + 1];
}

// pool geometry ---------------------------------------------------------------------------------
interface PoolGeo {
  N: number; C: number; H: number; W: number; kh: number; kw: number; sh: number; sw: number; ph: number; pw: number; Ho: number; Wo: number;
}
function poolGeo(p: Prng): PoolGeo {
  const N = p.int(1, 2), C = p.int(1, 3), kh = p.int(1, 3), kw = p.int(1, 3);
  const ph = p.int(0, Math.floor(kh / 2)), pw = p.int(0, Math.floor(kw / 2)), sh = p.int(1, 2), sw = p.int(1, 2);
  const H = Math.max(1, kh - 2 * ph + p.int(0, 3)), W = Math.max(1, kw - 2 * pw + p.int(0, 3));
  return { N, C, H, W, kh, kw, sh, sw, ph, pw, Ho: Math.floor((H + 2 * ph - kh) / sh) + 1, Wo: Math.floor((W + 2 * pw - kw) / sw) + 1 };
}
const poolOut = (s: number[], kh: number, kw: number, sh: number, sw: number, ph: number, pw: number) => [
  s[0], s[1], Math.floor((s[2] + 2 * ph - kh) / sh) + 1, Math.floor((s[3] + 2 * pw - kw) / sw) + 1,
];
/** the six window parameters starting at argument i; kernel/padding extras need the input's H and W */
function windowParams(i: number, inputHW: (a: Args) => [number, number], backward: boolean): Param[] {
  const k = (name: string, dim: 0 | 1): IntParam =>
    I(name, 1, 2 ** 30, (_c, a) => {
      const [H, W] = inputHW(a);
      const pad = a[i + 4 + dim] as number;
      const out: Mut[] = [['larger than the padded input', () => (dim === 0 ? H : W) + 2 * pad + 1]];
      // with stride 1 a kernel one larger changes the output size: dy no longer fits
      if (backward && a[i + 2 + dim] === 1) out.push(['one larger (stride 1: another output size)', () => (a[i + dim] as number) + 1]);
      return out;
    });
  const pad = (name: string, dim: 0 | 1): IntParam =>
    I(name, 0, 2 ** 30, (_c, a) => [['more than half the kernel', () => Math.floor((a[i + dim] as number) / 2) + 1]]);
  return [k('kernelH', 0), k('kernelW', 1), I('strideH', 1, 2 ** 30), I('strideW', 1, 2 ** 30), pad('paddingH', 0), pad('paddingW', 1)];
}
/** inputShape dims tied to dy: N and C always, H / W when the stride is 1 */
const tiedInputDims = (shIndex: number) => (a: Args) => [0, 1, ...(a[shIndex] === 1 ? [2] : []), ...(a[shIndex + 1] === 1 ? [3] : [])];
/** Set on an argument that does something during the call only (not while the case is described). */
const ARM = Symbol('arm');
/** an inputShape array whose element 1 getter disposes a tensor of the same call (once armed) */
function disposingShape(s: number[], victim: NativeTensor): number[] {
  const arr = s.slice() as number[] & { [ARM]?: boolean };
  Object.defineProperty(arr, ARM, { value: false, writable: true });
  Object.defineProperty(arr, 1, {
    get: () => {
      if (arr[ARM]) victim.dispose();
      return s[1];
    },
    enumerable: true,
  });
  return arr;
}
const arm = (args: Args) => {
  for (const x of args) if (x && typeof x === 'object' && ARM in x) (x as { [ARM]: boolean })[ARM] = true;
};

// batch norm ------------------------------------------------------------------------------------
function bnDims(p: Prng, training: boolean): [number, number, number, number] {
  const N = p.int(1, 3), C = p.int(1, 4);
  let H = p.int(1, 3);
  const W = p.int(1, 3);
  if (training && N * H * W === 1) H = 2;
  return [N, C, H, W];
}
const actMismatch = (actAt: number) => (_c: Ctx, a: Args): Mut[] => [['another activation than s implies', () => (a[actAt] === 3 ? 1 : 3)]];
/** [N, C] or [N, 1, C] */
const planesOf = (c: Ctx, N: number, C: number) => (c.prng.bool() ? c.rand([N, C]) : c.rand([N, 1, C]));

// optimizers ------------------------------------------------------------------------------------
function paramShape(p: Prng): number[] {
  const rank = p.int(1, 3);
  return Array.from({ length: rank }, () => p.int(1, 4));
}
const aliasing = (pairs: [string, number, number][]): [string, (c: Ctx, a: Args) => Args][] =>
  pairs.map(([label, dst, src]): [string, (c: Ctx, a: Args) => Args] => [label, (_c, a) => a.map((x, i) => (i === dst ? a[src] : x))]);
const viewOf = (label: string, dst: number, src: number): [string, (c: Ctx, a: Args) => Args] => [
  label,
  (c, a) => {
    const base = a[src] as NativeTensor;
    const v = c.keep(base.reshape(base.shape));
    return a.map((x, i) => (i === dst ? v : x));
  },
];

function gemmRef(a: Args): Float32Array {
  const [A, Bm, Cm, ta, tb, m, n, k, lda, ldb, ldc, alpha, beta] = a as [NativeTensor, NativeTensor, NativeTensor, boolean, boolean, number, number, number, number, number, number, number, number];
  const av = A.toFloat32Array(), bv = Bm.toFloat32Array(), out = Cm.toFloat32Array().slice();
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let l = 0; l < k; l++) acc += (ta ? av[l * lda + i] : av[i * lda + l]) * (tb ? bv[j * ldb + l] : bv[l * ldb + j]);
      out[i * ldc + j] = alpha * acc + beta * out[i * ldc + j];
    }
  return out;
}

// A valid AdaShift-MA forward argument list: [x, grid, heads, q.w, q.b, k.w, k.b, v.w, v.b, linW | null, rect.w, rect.b, eps].
/** AdaShift-MA's optional BatchNorm input (bnMean, bnInvstd, bnWeight, bnBias, residual), half the time. */
function maBnSeed(c: Ctx, x: unknown): Args {
  if (!c.prng.bool()) return [null, null, null, null, null];
  const [N, C, H, W] = shp(x);
  return [c.rand([C]), c.rand([C], 0.5, 1.5), c.rand([C]), c.rand([C]), c.prng.bool() ? c.rand([N, C, H, W]) : null];
}
/** The parameters of that input at index i (bnMean at i). */
const maBnParams = (i: number): TensorParam[] => [
  T('bnMean', { nullOk: true, dims: [0] }),
  T('bnInvstd', { nullOk: (a) => a[i] == null, dims: [0] }),
  T('bnWeight', { nullOk: (a) => a[i] == null, dims: [0] }),
  T('bnBias', { nullOk: (a) => a[i] == null, dims: [0] }),
  T('residual', { nullOk: true, dims: 'all' }),
];

// AdaShift-B's context parameters after the input (x or m, at 0): proj.weight, proj.bias,
// norm.weight, norm.bias, eps; and what its backward takes after the saved u: the LayerNorm
// statistics, proj.weight and norm.weight.
const bContextParams = (): Param[] => [
  T('projWeight', { nullOk: (a) => a[2] == null, dims: 'all' }),
  T('projBias', { nullOk: true, dims: [0] }),
  T('normWeight', { dims: [0] }),
  T('normBias', { dims: [0] }),
  F('eps', { f32: true, min: 0, minOpen: true, extra: () => [['rounds to 0 in float32', () => 1e-50]] }),
];
/** Values for bContextParams at C channels (proj on or off, its bias with it or not). */
function bContextSeed(c: Ctx, C: number): Args {
  const p = c.prng;
  const pw = p.bool() ? c.rand([C, C]) : null;
  return [pw, pw && p.bool() ? c.rand([C]) : null, c.rand([C]), c.rand([C]), p.pick([1e-5, 1e-6, 0.1])];
}
/**
 * What an AdaShift-B backward takes from its forward: the context's parameters drawn (proj on
 * or off, its bias with it or not; eps 1e-5) and `forward` run on them; its outputs are kept
 * except the first (the op's result, not saved), disposed here.
 */
function bForwardSaved(
  c: Ctx,
  C: number,
  forward: (pw: NativeTensor | null, pb: NativeTensor | null, nw: NativeTensor, nb: NativeTensor) => NativeTensor[],
): { saved: NativeTensor[]; pw: NativeTensor | null; nw: NativeTensor } {
  const p = c.prng;
  const pw = p.bool() ? c.rand([C, C]) : null;
  const nw = c.rand([C]);
  const [first, ...saved] = c.keep(forward(pw, pw && p.bool() ? c.rand([C]) : null, nw, c.rand([C])));
  first.dispose();
  return { saved, pw, nw };
}
const bContextSaved = (): Param[] => [
  T('mean', { dims: 'all' }),
  T('rstd', { dims: 'all' }),
  T('projWeight', { nullOk: true, dims: 'all' }),
  T('normWeight', { dims: [0] }),
];

function maSeed(c: Ctx): Args {
  const p = c.prng;
  const N = p.int(1, 2), C = p.pick([1, 2, 4, 6]);
  const heads = p.pick([1, 2, 3, 4, 6].filter((g) => C % g === 0));
  const v = () => c.rand([C]);
  return [c.rand([N, C, p.int(1, 4), p.int(1, 4)]), p.int(1, 3), heads, v(), v(), v(), v(), v(), v(), p.bool() ? c.rand([C, C]) : null, v(), v(), p.pick([1e-5, 1e-6, 0.1]), p.bool()];
}

const MUTATION_SPECS: MutSpec[] = [
  // ---- lib/native.ts ---------------------------------------------------------------------------
  {
    name: 'resetPeakMemory',
    params: [{ kind: 'dev', name: 'device' }],
    seed: () => ['cpu'],
    check: expectUndefined,
  },
  {
    name: 'adashiftBForward',
    params: [
      T('x', { dims: [1] }),
      ...bContextParams(),
    ],
    seed: (c) => {
      const p = c.prng;
      const N = p.int(1, 2), C = p.int(1, 4);
      return [c.rand([N, C, p.int(1, 3), p.int(1, 3)]), ...bContextSeed(c, C)];
    },
    semantic: [
      ['projBias without projWeight', (c, a) => [a[0], null, c.rand([shp(a[0])[1]]), a[3], a[4], a[5]]],
      ['rank-3 input', (c, a) => [c.rand(shp(a[0]).slice(1)), a[1], a[2], a[3], a[4], a[5]]],
    ],
    check: (r, a) => {
      const [N, C] = shp(a[0]);
      return expectList(r, [shp(a[0]), [N, 1, C], [N, 1, C], [N, 1, C], [N], [N]]);
    },
  },
  {
    name: 'adashiftBBackward',
    params: [
      T('x', { dims: 'all' }),
      T('dy', { dims: 'all' }),
      T('t', { dims: 'all' }),
      T('u', { dims: 'all' }),
      T('s', { dims: 'all' }),
      ...bContextSaved(),
      B('needDx'),
    ],
    seed: (c) => {
      const p = c.prng;
      const N = p.int(1, 2), C = p.int(1, 4);
      const x = c.rand([N, C, p.int(1, 3), p.int(1, 3)]);
      const { saved, pw, nw } = bForwardSaved(c, C, (pw, pb, nw, nb) => c.native.adashiftBForward(x, pw, pb, nw, nb, 1e-5));
      return [x, c.rand(x.shape), ...saved, pw, nw, p.bool()];
    },
    semantic: [['s of the layout [N, C]', (c, a) => a.map((x, i) => (i === 4 ? c.rand([shp(a[0])[0], shp(a[0])[1]]) : x))]],
    check: (r, a) => {
      const C = shp(a[0])[1];
      const pw = a[7] != null;
      return expectList(r, [a[9] ? shp(a[0]) : null, pw ? [C, C] : null, pw ? [C] : null, [C], [C]]);
    },
  },
  {
    name: 'adashiftBContextForward',
    params: [
      T('m', { dims: [1] }),
      ...bContextParams(),
    ],
    seed: (c) => {
      const p = c.prng;
      const N = p.int(0, 3), C = p.int(1, 4);
      return [c.rand([N, 1, C]), ...bContextSeed(c, C)];
    },
    semantic: [
      ['projBias without projWeight', (c, a) => [a[0], null, c.rand([shp(a[0])[2]]), a[3], a[4], a[5]]],
      ['m of the layout [N, C]', (c, a) => [c.rand([shp(a[0])[0], shp(a[0])[2]]), ...a.slice(1)]],
    ],
    check: (r, a) => {
      const [N, , C] = shp(a[0]);
      return expectList(r, [[N, 1, C], [N, 1, C], [N], [N]]);
    },
  },
  {
    name: 'adashiftBContextBackward',
    params: [
      T('ds', { dims: 'all' }),
      T('m', { dims: 'all' }),
      T('u', { dims: 'all' }),
      ...bContextSaved(),
      B('needDm'),
    ],
    seed: (c) => {
      const p = c.prng;
      const N = p.int(0, 3), C = p.int(1, 4);
      const m = c.rand([N, 1, C]);
      const { saved, pw, nw } = bForwardSaved(c, C, (pw, pb, nw, nb) => c.native.adashiftBContextForward(m, pw, pb, nw, nb, 1e-5));
      return [c.rand([N, 1, C]), m, ...saved, pw, nw, p.bool()];
    },
    semantic: [['ds of the layout [N, C]', (c, a) => [c.rand([shp(a[0])[0], shp(a[0])[2]]), ...a.slice(1)]]],
    check: (r, a) => {
      const [N, , C] = shp(a[1]);
      const pw = a[5] != null;
      return expectList(r, [a[7] ? [N, 1, C] : null, pw ? [C, C] : null, pw ? [C] : null, [C], [C]]);
    },
  },
  {
    name: 'adashiftMAForward',
    params: [
      T('x', { dims: [1] }),
      I('grid', 1, 1024),
      I('heads', 1, 2 ** 40),
      T('qWeight', { dims: [0] }),
      T('qBias', { dims: [0] }),
      T('kWeight', { dims: [0] }),
      T('kBias', { dims: [0] }),
      T('vWeight', { dims: [0] }),
      T('vBias', { dims: [0] }),
      T('rectLinearWeight', { nullOk: true, dims: 'all' }),
      T('rectWeight', { dims: [0] }),
      T('rectBias', { dims: [0] }),
      F('eps', { f32: true, min: 0, minOpen: true, extra: () => [['rounds to 0 in float32', () => 1e-50]] }),
      B('keepContext'),
      ...maBnParams(14),
    ],
    seed: (c) => {
      const a = maSeed(c);
      return [...a, ...maBnSeed(c, a[0])];
    },
    semantic: [
      ['heads above the channels', (c, a) => a.map((v, i) => (i === 2 ? shp(a[0])[1] + 1 : v))],
      ['rank-3 input', (c, a) => [c.rand(shp(a[0]).slice(1)), ...a.slice(1)]],
    ],
    check: (r, a) => {
      const [N, C, H, W] = shp(a[0]);
      const T = Math.min(a[1] as number, H) * Math.min(a[1] as number, W), G = a[2] as number;
      const kept = a[13] === true; // t, attn, o, z only with keepContext
      return expectList(r, [shp(a[0]), kept ? [N, T, C] : null, kept ? [N, G, T, T] : null, kept ? [N, T, C] : null, kept ? [N, T, C] : null, [N, T, C], [N, 4, T]]);
    },
  },
  {
    name: 'adashiftMABackward',
    params: [
      T('x', { dims: 'all' }),
      T('dy', { dims: 'all' }),
      // the forward's context: all four tensors or none (the backward then recomputes them)
      T('t', { nullOk: (a) => a[3] == null && a[4] == null && a[5] == null, dims: 'all' }),
      T('attn', { nullOk: (a) => a[2] == null && a[4] == null && a[5] == null, dims: 'all' }),
      T('o', { nullOk: (a) => a[2] == null && a[3] == null && a[5] == null, dims: 'all' }),
      T('z', { nullOk: (a) => a[2] == null && a[3] == null && a[4] == null, dims: 'all' }),
      T('s', { dims: 'all' }),
      T('stats', { dims: 'all' }),
      I('grid', 1, 1024),
      I('heads', 1, 2 ** 40),
      T('qWeight', { dims: [0] }),
      T('qBias', { dims: [0] }),
      T('kWeight', { dims: [0] }),
      T('kBias', { dims: [0] }),
      T('vWeight', { dims: [0] }),
      T('vBias', { dims: [0] }),
      T('rectLinearWeight', { nullOk: true, dims: 'all' }),
      T('rectWeight', { dims: [0] }),
      T('rectBias', { dims: [0] }),
      F('eps', { f32: true, min: 0, minOpen: true, extra: () => [['rounds to 0 in float32', () => 1e-50]] }),
      B('keepContext'),
      B('needDx'),
      ...maBnParams(22),
    ],
    seed: (c) => {
      const a = maSeed(c);
      const bn = maBnSeed(c, a[0]);
      const [y, t, attn, o, z, s, stats] = c.keep(c.native.adashiftMAForward(...([...a, ...bn] as Parameters<typeof c.native.adashiftMAForward>)));
      y.dispose();
      return [a[0], c.rand(shp(a[0])), t, attn, o, z, s, stats, ...a.slice(1), c.prng.bool(), ...bn];
    },
    semantic: [
      ['s of the layout [N, C, T]', (c, a) => a.map((v, i) => (i === 6 ? c.rand([shp(a[6])[0], shp(a[6])[2], shp(a[6])[1]]) : v)), (a) => shp(a[6])[1] !== shp(a[6])[2]],
      ['stats of the layout [N, T, 4]', (c, a) => a.map((v, i) => (i === 7 ? c.rand([shp(a[7])[0], shp(a[7])[2], shp(a[7])[1]]) : v)), (a) => shp(a[7])[1] !== shp(a[7])[2]],
    ],
    check: (r, a) => {
      const [N, C] = shp(a[0]);
      const lin = a[16] != null, bn = a[22] != null;
      return expectList(r, [a[21] || bn ? shp(a[0]) : null, [C], [C], [C], [C], [C], [C], lin ? [C, C] : null, [C], [C], bn ? [N, C] : null, bn ? [N, C] : null]);
    },
  },
  // ---- lib/bindings/conv.ts --------------------------------------------------------------------
  {
    name: 'conv2dForward',
    params: [
      T('x', { dims: [1] }),
      T('weight', { dims: (a) => (a[2] != null ? [0, 1] : [1]) }),
      T('bias', { nullOk: true, dims: [0] }),
      I('strideH', 1, 2 ** 20),
      I('strideW', 1, 2 ** 20),
      I('padH', 0, 2 ** 20),
      I('padW', 0, 2 ** 20),
    ],
    seed: (c) => {
      const g = convGeo(c.prng);
      return [c.rand([g.N, g.Cin, g.H, g.W]), c.rand([g.Cout, g.Cin, g.kh, g.kw]), c.prng.bool(0.7) ? c.rand([g.Cout]) : null, g.sh, g.sw, g.ph, g.pw];
    },
    semantic: [
      ['kernel larger than the padded input', (c, a) => {
        const x = shp(a[0]), w = shp(a[1]);
        return [a[0], c.rand([w[0], w[1], x[2] + 2 * (a[5] as number) + 1, w[3]]), a[2], ...a.slice(3)];
      }],
      ['weight with no output channels', (c, a) => [a[0], c.rand([0, ...shp(a[1]).slice(1)]), null, ...a.slice(3)]],
      ['empty input plane without padding', (c, a) => [c.rand([shp(a[0])[0], shp(a[0])[1], 0, shp(a[0])[3]]), a[1], a[2], a[3], a[4], 0, a[6]]],
    ],
    check: (r, a) => expectShape(r, convOut(shp(a[0]), shp(a[1]), a[3] as number, a[4] as number, a[5] as number, a[6] as number)),
  },
  {
    name: 'conv2dBackward',
    params: [
      T('dy', { dims: 'all' }),
      // dy fixes N and C of x; H and W too where the stride is 1 (Ho = H + 2p - kh + 1)
      T('x', { dims: (a) => [0, 1, ...(a[3] === 1 ? [2] : []), ...(a[4] === 1 ? [3] : [])] }),
      T('weight', { dims: (a) => [0, 1, ...(a[3] === 1 ? [2] : []), ...(a[4] === 1 ? [3] : [])] }),
      I('strideH', 1, 2 ** 20),
      I('strideW', 1, 2 ** 20),
      I('padH', 0, 2 ** 20),
      I('padW', 0, 2 ** 20),
      B('needDx'),
      B('needDw'),
      B('needDb'),
    ],
    seed: (c) => {
      const g = convGeo(c.prng);
      const p = c.prng;
      return [c.rand([g.N, g.Cout, g.Ho, g.Wo]), c.rand([g.N, g.Cin, g.H, g.W]), c.rand([g.Cout, g.Cin, g.kh, g.kw]), g.sh, g.sw, g.ph, g.pw, p.bool(), p.bool(), p.bool()];
    },
    semantic: [
      ['kernel larger than the padded input', (c, a) => {
        const x = shp(a[1]), w = shp(a[2]);
        return [a[0], a[1], c.rand([w[0], w[1], x[2] + 2 * (a[5] as number) + 1, w[3]]), ...a.slice(3)];
      }],
    ],
    check: (r, a) => expectList(r, [a[7] ? shp(a[1]) : null, a[8] ? shp(a[2]) : null, a[9] ? [shp(a[2])[0]] : null]),
  },
  {
    name: 'gemm',
    params: [
      T('a', { rank: false, extra: (c, a) => [['one element too few', (cx) => cx.rand([shp(a[0])[0] - 1])]] }),
      T('b', { rank: false, extra: (c, a) => [['one element too few', (cx) => cx.rand([shp(a[1])[0] - 1])]] }),
      T('c', { rank: false, extra: (c, a) => [['one element too few', (cx) => cx.rand([shp(a[2])[0] - 1])]] }),
      B('transA'),
      B('transB'),
      // the operands hold exactly what the sizes need: one more row or column no longer fits
      I('m', 0, 2 ** 40, (_c, a) => [['one more than the operands hold', () => (a[5] as number) + 1]]),
      I('n', 0, 2 ** 40, (_c, a) => [['one more than the operands hold', () => (a[6] as number) + 1]]),
      I('k', 0, 2 ** 40, (_c, a) => [['one more than the operands hold', () => (a[7] as number) + 1]]),
      I('lda', 1, 2 ** 40, (_c, a) => [['below the stored row length', () => (a[3] ? (a[5] as number) : (a[7] as number)) - 1]]),
      I('ldb', 1, 2 ** 40, (_c, a) => [['below the stored row length', () => (a[4] ? (a[7] as number) : (a[6] as number)) - 1]]),
      I('ldc', 1, 2 ** 40, (_c, a) => [['below the stored row length', () => (a[6] as number) - 1]]),
      F('alpha'),
      F('beta'),
      { kind: 'str', name: 'backend', bad: (c) => ['OWN', 'Own', 'own ', '', 'openblas', 'cuda', 'fast', ...(c.blas ? [] : ['blas'])] },
    ],
    seed: (c) => {
      const p = c.prng;
      const m = p.int(1, 4), n = p.int(1, 4), k = p.int(1, 4), ta = p.bool(), tb = p.bool();
      const need = (rows: number, cols: number, ld: number) => (rows - 1) * ld + cols;
      const lda = (ta ? m : k) + p.int(0, 1), ldb = (tb ? k : n) + p.int(0, 1), ldc = n + p.int(0, 1);
      const A = c.rand([need(ta ? k : m, ta ? m : k, lda)]);
      const Bm = c.rand([need(tb ? n : k, tb ? k : n, ldb)]);
      const Cm = c.rand([need(m, n, ldc)]);
      return [A, Bm, Cm, ta, tb, m, n, k, lda, ldb, ldc, p.pick([1, 0.5, -2]), p.pick([0, 1, 0.25]), p.pick(['own', 'serial', 'default', ...(c.blas ? ['blas'] : [])])];
    },
    semantic: [
      // (rows - 1) * ld + cols overflows int64 in the bounds check: must be refused, not run
      ['bounds that overflow int64 (m 2^33, lda = ldc = 2^31)', (c, a) => [c.rand([4]), c.rand([4]), c.rand([4]), false, false, 2 ** 33, 1, 1, 2 ** 31, 1, 2 ** 31, 1, 0, a[13]]],
      ['bounds that overflow int64 (m 2^24, lda = ldc = 2^40)', (c, a) => [c.rand([4]), c.rand([4]), c.rand([4]), false, false, 2 ** 24, 1, 1, 2 ** 40, 1, 2 ** 40, 1, 0, a[13]]],
      ['operands holding nothing for a non-empty product', (c, a) => [c.rand([0]), c.rand([0]), c.rand([0]), false, false, 1, 1, 1, 1, 1, 1, 1, 0, a[13]]],
    ],
    check: (r, a) => {
      const bad = expectShape(r, shp(a[2]));
      if (bad) return bad;
      const got = (r as NativeTensor).toFloat32Array(), want = gemmRef(a);
      for (let i = 0; i < want.length; i++) if (!(Math.abs(got[i] - want[i]) <= 1e-4 * (1 + Math.abs(want[i])))) return `element ${i}: ${got[i]} vs ${want[i]}`;
      return undefined;
    },
  },
  {
    name: 'gemmBackend',
    params: [{ kind: 'str', name: 'choice', nullOk: true, bad: (c) => ['OWN', 'Own', 'own ', '', 'cuda', 'serial', 'default', 'mkl', ...(c.blas ? [] : ['openblas', 'blas'])] }],
    seed: (c) => {
      const before = c.native.gemmBackend();
      c.onCleanup(() => c.native.gemmBackend(before));
      return [c.prng.pick([undefined, null, 'own', ...(c.blas ? ['openblas'] : [])])];
    },
    check: (r, a, c) => {
      const want = a[0] ?? r;
      return r === want && (r === 'own' || (c.blas && r === 'openblas')) ? undefined : `expected ${show(want)}, got ${show(r)}`;
    },
  },
  // ---- lib/bindings/norm.ts: batch norm ---------------------------------------------------------
  {
    name: 'batchNormStats',
    params: [
      // C is tied to the per-channel tensors the call reads: weight and bias with planes, the running stats
      T('x', { dims: (a) => (a[9] != null ? 'all' : (a[8] && a[1] != null) || a[3] != null || a[4] != null ? [1] : []) }),
      T('weight', { nullOk: (a) => !a[8], rank: (a) => !!a[8], dims: (a) => (a[8] ? [0] : []) }),
      T('bias', { nullOk: (a) => !a[8], rank: (a) => !!a[8], dims: (a) => (a[8] ? [0] : []) }),
      T('runningMean', { nullOk: (a) => a[5] === true && a[4] == null, dims: [0] }),
      T('runningVar', { nullOk: (a) => a[5] === true && a[3] == null, dims: [0] }),
      B('training', (_c, a) => (a[3] == null ? [['eval without running stats', () => false]] : [])),
      F('momentum', { f32: true }),
      F('eps', { f32: true, min: 0 }),
      B('planes', (_c, a) => [
        ...(a[1] == null || a[2] == null ? [['planes without weight and bias', () => true] as Mut] : []),
        ...(a[9] != null ? [['a residual without planes', () => false] as Mut] : []),
      ]),
      T('residual', { nullOk: true, dims: 'all' }),
    ],
    seed: (c) => {
      const p = c.prng;
      const training = p.bool(), planes = p.bool();
      const [N, C, H, W] = bnDims(p, training);
      const affine = planes || p.bool(0.3);
      const running = !training || p.bool(0.6);
      return [
        c.rand([N, C, H, W]), affine ? c.rand([C]) : null, affine ? c.rand([C]) : null,
        running ? c.rand([C]) : null, running ? c.rand([C], 0.5, 1.5) : null,
        training, p.pick([0.1, 0.01, 0.5]), p.pick([1e-5, 1e-3, 0]), planes,
        planes && p.bool(0.4) ? c.rand([N, C, H, W]) : null,
      ];
    },
    semantic: [
      ['running stats sharing memory', (c, a) => {
        const rm = a[3] ?? c.rand([shp(a[0])[1]]);
        return [a[0], a[1], a[2], rm, rm, ...a.slice(5)];
      }],
      ['running var a view of the running mean', (c, a) => {
        const rm = (a[3] ?? c.rand([shp(a[0])[1]])) as NativeTensor;
        return [a[0], a[1], a[2], rm, c.keep(rm.reshape(rm.shape)), ...a.slice(5)];
      }],
      ['one value per channel when training', (c, a) => [c.rand([1, shp(a[0])[1], 1, 1]), ...a.slice(1, 5), true, ...a.slice(6)]],
      ['no channels', (c, a) => [c.rand([2, 0, 2, 2]), null, null, null, null, true, a[6], a[7], false]],
      ['an empty plane', (c, a) => [c.rand([2, shp(a[0])[1], 0, 2]), ...a.slice(1)]],
    ],
    check: (r, a) => {
      const [N, C] = shp(a[0]);
      return expectList(r, [[C], [C], a[8] ? [N, C] : null, a[8] ? [N, C] : null]);
    },
  },
  {
    name: 'batchNormActForward',
    params: [
      T('x', { dims: (a) => (a[7] != null ? 'all' : a[5] === 3 ? [0, 1] : [1]) }),
      T('weight', { dims: [0] }),
      T('bias', { dims: [0] }),
      T('mean', { dims: [0] }),
      T('invstd', { dims: [0] }),
      I('act', 0, 5, actMismatch(5)),
      T('s', { nullOk: (a) => a[5] !== 3, rank: 'append', dims: 'all' }),
      T('residual', { nullOk: true, dims: 'all' }),
    ],
    seed: (c) => {
      const p = c.prng;
      const [N, C, H, W] = bnDims(p, false);
      const act = p.int(0, 5);
      return [c.rand([N, C, H, W]), c.rand([C]), c.rand([C]), c.rand([C]), c.rand([C], 0.5, 2), act, act === 3 ? planesOf(c, N, C) : null,
        p.bool(0.4) ? c.rand([N, C, H, W]) : null];
    },
    semantic: [
      ['no channels', (c) => [c.rand([2, 0, 2, 2]), c.rand([0]), c.rand([0]), c.rand([0]), c.rand([0]), 0, null]],
      ['an empty plane', (c, a) => [c.rand([2, shp(a[0])[1], 2, 0]), ...a.slice(1)]],
    ],
    check: (r, a) => expectShape(r, shp(a[0])),
  },
  {
    name: 'batchNormActBackwardReduce',
    params: [
      T('x', { dims: 'all' }),
      T('dy', { dims: 'all' }),
      T('weight', { dims: [0] }),
      T('bias', { dims: [0] }),
      T('mean', { dims: [0] }),
      T('invstd', { dims: [0] }),
      I('act', 0, 5, actMismatch(6)),
      T('s', { nullOk: (a) => a[6] !== 3, rank: 'append', dims: 'all' }),
      T('residual', { nullOk: true, dims: 'all' }),
      B('writeDz'),
    ],
    seed: (c) => {
      const p = c.prng;
      const [N, C, H, W] = bnDims(p, false);
      const act = p.int(0, 5);
      return [c.rand([N, C, H, W]), c.rand([N, C, H, W]), c.rand([C]), c.rand([C]), c.rand([C]), c.rand([C], 0.5, 2), act, act === 3 ? planesOf(c, N, C) : null,
        p.bool(0.4) ? c.rand([N, C, H, W]) : null, p.bool()];
    },
    check: (r, a) => {
      const [N, C] = shp(a[0]);
      return expectList(r, [[N, C], [N, C], a[6] === 3 ? [N, C] : null, a[9] ? shp(a[0]) : null]);
    },
  },
  {
    name: 'batchNormBackwardParams',
    params: [
      T('sumDz', { dims: 'all' }),
      T('sumDzXhat', { dims: 'all' }),
      T('dm', { nullOk: (a) => a[3] == null, rank: 'append', dims: 'all' }),
      T('planeXhat', { nullOk: (a) => a[2] == null, rank: 'append', dims: 'all' }),
    ],
    seed: (c) => {
      const p = c.prng;
      const N = p.int(1, 3), C = p.int(1, 4);
      const pooled = p.bool();
      return [c.rand([N, C]), c.rand([N, C]), pooled ? planesOf(c, N, C) : null, pooled ? planesOf(c, N, C) : null];
    },
    semantic: [['plane sums of rank 4', (c, a) => [c.rand([...shp(a[0]), 1, 1]), c.rand([...shp(a[0]), 1, 1]), null, null]]],
    check: (r, a) => {
      const C = shp(a[0])[1];
      return expectList(r, [[C], [C]]);
    },
  },
  {
    name: 'batchNormActBackwardApply',
    params: [
      T('x', { dims: 'all' }),
      T('dy', { dims: 'all' }),
      T('weight', { dims: [0] }),
      T('bias', { dims: [0] }),
      T('mean', { dims: [0] }),
      T('invstd', { dims: [0] }),
      I('act', 0, 5, actMismatch(6)),
      T('s', { nullOk: (a) => a[6] !== 3, rank: 'append', dims: 'all' }),
      T('dm', { nullOk: true, rank: 'append', dims: 'all' }),
      T('dweight', { nullOk: (a) => !a[11], rank: (a) => !!a[11], dims: (a) => (a[11] ? [0] : []) }),
      T('dbias', { nullOk: (a) => !a[11], rank: (a) => !!a[11], dims: (a) => (a[11] ? [0] : []) }),
      B('training', (_c, a) => (a[9] == null || a[10] == null ? [['training without the channel sums', () => true]] : [])),
      T('residual', { nullOk: true, dims: 'all' }),
    ],
    seed: (c) => {
      const p = c.prng;
      const [N, C, H, W] = bnDims(p, false);
      const act = p.int(0, 5), training = p.bool();
      const sums = training || p.bool(0.3);
      return [
        c.rand([N, C, H, W]), c.rand([N, C, H, W]), c.rand([C]), c.rand([C]), c.rand([C]), c.rand([C], 0.5, 2),
        act, act === 3 ? planesOf(c, N, C) : null, (act === 3 || act === 0) && p.bool() ? planesOf(c, N, C) : null,
        sums ? c.rand([C]) : null, sums ? c.rand([C]) : null, training,
        p.bool(0.4) ? c.rand([N, C, H, W]) : null,
      ];
    },
    semantic: [['dm with ReLU (only the gate, or act none after the reduce pass wrote dz)', (c, a) => {
      const [N, C] = shp(a[0]);
      return [...a.slice(0, 6), 1, null, c.rand([N, C]), ...a.slice(9)];
    }]],
    check: (r, a) => expectList(r, [shp(a[0]), a[12] != null ? shp(a[0]) : null]),
  },
  // ---- lib/bindings/norm.ts: pooling --------------------------------------------------------
  {
    name: 'maxPool2dForward',
    params: [T('x'), ...windowParams(1, (a) => [shp(a[0])[2], shp(a[0])[3]], false)],
    seed: (c) => {
      const g = poolGeo(c.prng);
      return [c.rand([g.N, g.C, g.H, g.W]), g.kh, g.kw, g.sh, g.sw, g.ph, g.pw];
    },
    semantic: [['an empty plane', (c, a) => [c.rand([1, 1, 0, 3]), ...a.slice(1)]]],
    check: (r, a) => {
      const o = poolOut(shp(a[0]), ...(a.slice(1, 7) as [number, number, number, number, number, number]));
      return expectList(r, [o, o]);
    },
  },
  {
    name: 'maxPool2dBackward',
    params: [
      T('dy', { dims: 'all' }),
      T('indices', { dims: 'all' }),
      { kind: 'shape', name: 'inputShape', dims: tiedInputDims(5) },
      ...windowParams(3, (a) => [(a[2] as number[])[2], (a[2] as number[])[3]], true),
    ],
    seed: (c) => {
      const g = poolGeo(c.prng);
      const x = c.rand([g.N, g.C, g.H, g.W]);
      const [y, idx] = c.keep(c.native.maxPool2dForward(x, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw));
      return [c.rand(y.shape), idx, [g.N, g.C, g.H, g.W], g.kh, g.kw, g.sh, g.sw, g.ph, g.pw];
    },
    semantic: [
      ['inputShape whose getter disposes dy', (_c, a) => [a[0], a[1], disposingShape(a[2] as number[], a[0] as NativeTensor), ...a.slice(3)]],
      ['inputShape whose getter disposes indices', (_c, a) => [a[0], a[1], disposingShape(a[2] as number[], a[1] as NativeTensor), ...a.slice(3)]],
      ['indices of another shape than dy', (c, a) => [a[0], c.rand([...shp(a[1]).slice(0, 3), shp(a[1])[3] + 1]), ...a.slice(2)]],
    ],
    check: (r, a) => expectShape(r, a[2] as number[]),
  },
  {
    name: 'avgPool2dForward',
    params: [T('x'), ...windowParams(1, (a) => [shp(a[0])[2], shp(a[0])[3]], false), B('countIncludePad')],
    seed: (c) => {
      const g = poolGeo(c.prng);
      return [c.rand([g.N, g.C, g.H, g.W]), g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, c.prng.bool()];
    },
    semantic: [['an empty plane', (c, a) => [c.rand([1, 1, 3, 0]), ...a.slice(1)]]],
    check: (r, a) => expectShape(r, poolOut(shp(a[0]), ...(a.slice(1, 7) as [number, number, number, number, number, number]))),
  },
  {
    name: 'avgPool2dBackward',
    params: [
      T('dy', { dims: 'all' }),
      { kind: 'shape', name: 'inputShape', dims: tiedInputDims(4) },
      ...windowParams(2, (a) => [(a[1] as number[])[2], (a[1] as number[])[3]], true),
      B('countIncludePad'),
    ],
    seed: (c) => {
      const g = poolGeo(c.prng);
      return [c.rand([g.N, g.C, g.Ho, g.Wo]), [g.N, g.C, g.H, g.W], g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, c.prng.bool()];
    },
    semantic: [['inputShape whose getter disposes dy', (_c, a) => [a[0], disposingShape(a[1] as number[], a[0] as NativeTensor), ...a.slice(2)]]],
    check: (r, a) => expectShape(r, a[1] as number[]),
  },
  // ---- lib/bindings/norm.ts: cross-entropy ----------------------------------------------------
  ...(['crossEntropyForward', 'crossEntropyBackward'] as const).map((name): MutSpec => {
    const bwd = name === 'crossEntropyBackward';
    const sm = bwd ? 4 : 2;
    const badLabels = (_c: Ctx, a: Args): Mut[] => {
      const K = shp(a[0])[1];
      const labels = Array.from((a[1] as NativeTensor).toFloat32Array());
      const withLabel = (v: number) => (cx: Ctx) => cx.from([v, ...labels.slice(1)], [labels.length]);
      return [['label = K', withLabel(K)], ['negative label', withLabel(-1)], ['fractional label', withLabel(0.5)], ['NaN label', withLabel(NaN)], ['Infinity label', withLabel(Infinity)]];
    };
    const params: Param[] = [T('logits', { dims: [0] }), T('labels', { dims: [0], extra: badLabels })];
    if (bwd) params.push(T('lse', { dims: [0] }), T('grad', { rank: false, dims: [0] }));
    params.push(F('labelSmoothing', { f32: true, min: 0, max: 1 }));
    return {
      name,
      params,
      seed: (c) => {
        const p = c.prng;
        const N = p.int(1, 4), K = p.int(1, 5);
        const labels = c.from(Array.from({ length: N }, () => p.int(0, K - 1)), [N]);
        const smoothing = p.pick([0, 0.1, 1, Math.fround(p.next())]);
        return bwd ? [c.rand([N, K]), labels, c.rand([N, 2]), c.rand([1]), smoothing] : [c.rand([N, K]), labels, smoothing];
      },
      semantic: [
        ['logits with no classes', (c, a) => {
          const N = shp(a[0])[0];
          return a.map((x, i) => (i === 0 ? c.rand([N, 0]) : i === 1 ? c.full([N], 0) : x));
        }],
        ['logits with no rows', (c, a) => a.map((x, i) => (i === 0 ? c.rand([0, shp(a[0])[1]]) : i === 1 ? c.rand([0]) : i === 2 && bwd ? c.rand([0, 2]) : x))],
        ['smoothing that rounds above 1 in float32', (_c, a) => a.map((x, i) => (i === sm ? 1 + 1e-7 : x))],
      ],
      check: (r, a) => (bwd ? expectShape(r, shp(a[0])) : expectList(r, [[1], [shp(a[0])[0], 2], [1]])),
    };
  }),
  // ---- lib/bindings/optim.ts -----------------------------------------------------------------
  {
    name: 'sgdStep',
    params: [
      T('param', { dims: 'all' }),
      T('grad', { dims: 'all' }),
      T('momentumBuffer', { nullOk: (a) => a[4] === 0, rank: (a) => a[4] !== 0, dims: (a) => (a[4] !== 0 ? 'all' : []) }),
      F0('lr'),
      { ...F0('momentum'), extra: (_c, a) => [...(a[6] ? [['0 with Nesterov', () => 0] as Mut] : []), ...(a[2] == null ? [['non-zero without a buffer', () => 0.9] as Mut] : [])] },
      F('dampening', { f32: true, extra: (_c, a) => (a[6] ? [['non-zero with Nesterov', () => 0.1]] : []) }),
      B('nesterov', (_c, a) => (!a[6] && (a[4] === 0 || a[5] !== 0) ? [['true without momentum or with dampening', () => true]] : [])),
      F0('weightDecay'),
      B('firstStep'),
      SCHED_ARG,
    ],
    seed: (c) => {
      const p = c.prng;
      const s = paramShape(p);
      const momentum = p.bool(0.3) ? 0 : p.pick([0.9, 0.5]);
      const nesterov = momentum > 0 && p.bool(0.4);
      const buf = momentum !== 0 || p.bool() ? c.rand(s) : null;
      return [c.rand(s), c.rand(s), buf, p.pick([0.1, 0.01, 0]), momentum, nesterov ? 0 : p.pick([0, 0.1]), nesterov, p.pick([0, 1e-4]), p.bool(), schedSeed(c)];
    },
    semantic: [
      ...aliasing([['grad is the parameter', 1, 0], ['sched is the parameter', 9, 0]]),
      viewOf('grad a view of the parameter', 1, 0),
      ['buffer is the grad (momentum 0.9)', (_c, a) => [a[0], a[1], a[1], a[3], 0.9, 0, false, a[7], a[8], a[9]]],
      ['buffer is the parameter (momentum 0.9)', (_c, a) => [a[0], a[1], a[0], a[3], 0.9, 0, false, a[7], a[8], a[9]]],
    ],
    check: expectUndefined,
  },
  {
    name: 'adamwStep',
    params: [
      T('param', { dims: 'all' }),
      T('grad', { dims: 'all' }),
      T('expAvg', { dims: 'all' }),
      T('expAvgSq', { dims: 'all' }),
      F0('lr'),
      BETA('beta1'),
      BETA('beta2'),
      F0('eps'),
      F0('weightDecay'),
      I('step', 1, 2 ** 53),
      SCHED_ARG,
    ],
    seed: (c) => {
      const p = c.prng;
      const s = paramShape(p);
      return [c.rand(s), c.rand(s), c.rand(s), c.rand(s, 0, 1), p.pick([1e-3, 0.1, 0]), p.pick([0.9, 0, 0.5]), p.pick([0.999, 0.9]), p.pick([1e-8, 1e-6, 0]), p.pick([0.01, 0]), p.int(1, 100), schedSeed(c)];
    },
    semantic: [
      ...aliasing([['grad is the parameter', 1, 0], ['expAvg is the parameter', 2, 0], ['expAvgSq is the parameter', 3, 0], ['expAvg is the grad', 2, 1], ['expAvgSq is the grad', 3, 1], ['expAvgSq is expAvg', 3, 2], ['sched is expAvg', 10, 2]]),
      viewOf('expAvgSq a view of expAvg', 3, 2),
    ],
    check: expectUndefined,
  },
  {
    name: 'lambGradClip',
    params: [{ kind: 'tensors', name: 'grads' }, F('maxGradNorm', { f32: true, min: 0, minOpen: true })],
    seed: (c) => {
      const p = c.prng;
      return [Array.from({ length: p.int(1, 3) }, () => c.rand(paramShape(p))), p.pick([1, 0.5, 5])];
    },
    check: (r) => {
      const bad = expectShape(r, [1]);
      if (bad) return bad;
      const v = (r as NativeTensor).toFloat32Array()[0];
      return v >= 1 ? undefined : `clip factor ${v} < 1`;
    },
  },
  {
    name: 'lambStep',
    params: [
      T('param', { dims: 'all' }),
      T('grad', { dims: 'all' }),
      T('expAvg', { dims: 'all' }),
      T('expAvgSq', { dims: 'all' }),
      T('clip', { nullOk: true, rank: false, dims: [0] }),
      F0('lr'),
      BETA('beta1'),
      BETA('beta2'),
      F0('eps'),
      F0('weightDecay'),
      I('step', 1, 2 ** 53),
      B('biasCorrection'),
      B('gradAveraging'),
      B('decoupledDecay'),
      B('trustClip'),
      B('alwaysAdapt'),
      SCHED_ARG,
    ],
    seed: (c) => {
      const p = c.prng;
      const s = paramShape(p);
      return [
        c.rand(s), c.rand(s), c.rand(s), c.rand(s, 0, 1), p.bool() ? c.full([1], 1 + p.int(0, 3)) : null,
        p.pick([1e-3, 0.1, 0]), p.pick([0.9, 0]), p.pick([0.999, 0.9]), p.pick([1e-6, 0]), p.pick([0.01, 0]), p.int(1, 100),
        p.bool(), p.bool(), p.bool(), p.bool(), p.bool(), schedSeed(c),
      ];
    },
    semantic: [
      ...aliasing([['grad is the parameter', 1, 0], ['expAvg is the parameter', 2, 0], ['expAvg is the grad', 2, 1], ['expAvgSq is expAvg', 3, 2], ['sched is expAvgSq', 16, 3]]),
      viewOf('grad a view of the parameter', 1, 0),
    ],
    check: expectUndefined,
  },
  {
    name: 'optimSchedNew',
    params: [{ kind: 'dev', name: 'device' }, F0('lr'), I('step', 0, 2 ** 24)],
    seed: (c) => ['cpu', c.prng.pick([0.1, 0, 3]), c.prng.int(0, 100)],
    check: (r) => expectShape(r, [8]),
  },
  {
    name: 'optimAdvance',
    params: [
      T('sched', { dims: 'all' }),
      { kind: 'str', name: 'kind', bad: () => ['SGD', 'adam', '', 'lamb '] },
      BETA('beta1'),
      BETA('beta2'),
      F0('weightDecay'),
      B('biasCorrection'),
      B('decoupledDecay'),
    ],
    seed: (c) => {
      const p = c.prng;
      return [c.full([8], 1), p.pick(['sgd', 'adamw', 'lamb']), p.pick([0.9, 0]), p.pick([0.999, 0.5]), p.pick([0.01, 0]), p.bool(), p.bool()];
    },
    check: expectUndefined,
  },
  {
    name: 'optimSchedWrite',
    params: [
      T('sched', { dims: 'all' }),
      I('index', 0, 1),
      { ...F0('value'), extra: (_c, a) => (a[1] === 1 ? [['a fractional step count', () => 2.5], ['a step count above 2^24', () => 2 ** 24 + 2]] : []) },
    ],
    seed: (c) => {
      const index = c.prng.int(0, 1);
      return [c.full([8], 0), index, index === 0 ? c.prng.pick([0.1, 0, 3]) : c.prng.int(0, 100)];
    },
    check: expectUndefined,
  },
];

/** The binding functions the mutation fuzzer covers. */
export const MUTATION_FUNCTIONS = MUTATION_SPECS.map((s) => s.name);

// ---- case generation ----------------------------------------------------------------------------
type Slot = number | 'semantic' | 'missing';

function lastRequired(spec: MutSpec, a: Args): number {
  let last = -1;
  spec.params.forEach((p, i) => {
    if (!undefinedOk(p, a)) last = i;
  });
  return last;
}

/** The semantic cases that are violations for this seed. */
function semanticsFor(spec: MutSpec, a: Args) {
  return (spec.semantic ?? []).filter(([, , applies]) => !applies || applies(a));
}

/** Positions, then semantic cases, then truncation, in turn: every one is reached. */
function slotsOf(spec: MutSpec, a: Args): Slot[] {
  const slots: Slot[] = spec.params.map((_, i) => i);
  if (semanticsFor(spec, a).length) slots.push('semantic');
  if (lastRequired(spec, a) >= 0) slots.push('missing');
  return slots;
}

function prepare(index: number, seed: number, env: FuzzEnv) {
  const prng = new Prng((seed ^ Math.imul(index + 1, 0xc2b2ae35)) >>> 0);
  const spec = MUTATION_SPECS[index % MUTATION_SPECS.length];
  const round = Math.floor(index / MUTATION_SPECS.length);
  const ctx = makeCtx(env, prng);
  let args: Args;
  try {
    args = spec.seed(ctx);
  } catch (e) {
    ctx.cleanup();
    throw e;
  }
  const fn = (env.native as unknown as Record<string, (...a: unknown[]) => unknown>)[spec.name];
  return { prng, spec, round, ctx, args, fn };
}

export interface MutationCase extends FuzzCase {
  cleanup: () => void;
  /** which slot of the spec the case exercises (a position, 'semantic' or 'missing') */
  slot: Slot;
}

export function makeMutationCase(index: number, seed: number, env: FuzzEnv): MutationCase {
  const { prng, spec, round, ctx, args, fn } = prepare(index, seed, env);
  const slots = slotsOf(spec, args);
  const slot = slots[round % slots.length];
  let call: Args;
  let what: string;
  try {
    if (slot === 'semantic') {
      const [label, make] = prng.pick(semanticsFor(spec, args));
      call = make(ctx, args);
      what = `semantic:${label}`;
    } else if (slot === 'missing') {
      // leaving out arguments i.. is invalid when one of them may not be undefined given the
      // ones kept (two optional tensors that go together may both be left out)
      const cuts: number[] = [];
      for (let k = 0; k <= lastRequired(spec, args); k++) {
        const cut = args.slice(0, k);
        if (spec.params.some((p, i) => i >= k && !undefinedOk(p, cut))) cuts.push(k);
      }
      const keep = prng.pick(cuts);
      call = args.slice(0, keep);
      what = `missing argument ${keep + 1} (${spec.params[keep].name})`;
    } else {
      const p = spec.params[slot];
      const [label, make] = prng.pick(poolFor(p, args, slot, ctx));
      call = args.slice();
      call[slot] = make(ctx);
      what = `arg ${slot + 1} (${p.name}): ${label}`;
    }
  } catch (e) {
    ctx.cleanup();
    throw e;
  }
  return {
    layer: 'mutation',
    index,
    sig: `mutation ${spec.name} | ${what}`,
    desc: `${spec.name}(${call.map((x) => show(x)).join(', ')})`,
    call: () => {
      arm(call);
      return fn(...call);
    },
    cleanup: () => ctx.cleanup(),
    slot,
  };
}

export interface ValidCase {
  name: string;
  desc: string;
  /** runs the seed call; returns a problem, or undefined when it succeeded and its result checks out */
  run: () => string | undefined;
  cleanup: () => void;
}

/** The seed of case `index`, unmutated: it must succeed. */
export function makeValidCase(index: number, seed: number, env: FuzzEnv): ValidCase {
  const { spec, ctx, args, fn } = prepare(index, seed, env);
  return {
    name: spec.name,
    desc: `${spec.name}(${args.map((x) => show(x)).join(', ')})`,
    run: () => {
      let r: unknown;
      try {
        r = ctx.keep(fn(...args));
      } catch (e) {
        return `threw ${(e as { code?: string }).code ?? ''} ${(e as Error).message}`;
      }
      return spec.check?.(r, args, ctx);
    },
    cleanup: () => ctx.cleanup(),
  };
}

/** The parameter names of each function the mutation fuzzer covers (for the coverage check). */
export const MUTATION_PARAMS: ReadonlyMap<string, readonly string[]> = new Map(MUTATION_SPECS.map((s) => [s.name, s.params.map((p) => p.name)]));
/** The functions whose every argument may be left out (no truncation case). */
export const MUTATION_ALL_OPTIONAL: readonly string[] = MUTATION_SPECS.filter((s) =>
  s.params.every((p) => (p.kind === 'T' && p.nullOk === true) || (p.kind === 'str' && p.nullOk)),
).map((s) => s.name);
/** The functions that have semantic cases. */
export const MUTATION_SEMANTIC: readonly string[] = MUTATION_SPECS.filter((s) => s.semantic?.length).map((s) => s.name);
