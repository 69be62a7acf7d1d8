// Invalid-argument fuzzing of the raw binding and of the public API. Case i is generated from
// its own seeded PRNG, so any process (jest, or a child that isolates crashes) builds the same
// case from (layer, i, seed) and a pool of operand tensors made the same way.
//
// Every generated call is invalid by construction: one argument (or the receiver) is replaced by
// a value of the wrong type or an out-of-range / mismatched value, or a required argument is
// left out. Each call must throw an Error whose `code` starts with 'ERR_'.
//
// This file imports nothing from lib/: the binding and the package are handed in.
import type * as AS from '../../lib';
import type { NativeBinding, NativeTensor } from '../../lib/native';
import { Prng } from './prng';

type Lib = typeof AS;
type Kind = 'self' | 'T' | 'T?' | 'shape' | 'num' | 'op' | 'act' | 'kind' | 'grid' | 'rows' | 'seed' | 'threads' | 'ms' | 'bool' | 'dev' | 'data' | 'axes';

export interface FuzzCase {
  layer: 'native' | 'api' | 'mutation';
  index: number;
  /** op, position and kind of defect: failures are grouped by it. */
  sig: string;
  desc: string;
  call: () => unknown;
  /** frees what building the case made (mutation cases build fresh tensors); called after the call */
  cleanup?: () => void;
}

export interface FuzzEnv {
  native: NativeBinding;
  as: Lib;
  cudaUsable: boolean;
  h: Record<string, NativeTensor>;
  t: Record<string, AS.Tensor>;
  junk: Record<string, unknown>;
  /** an AdaShift-B module over 3 channels */
  modB: AS.nn.AdaShiftB;
  dispose(): void;
}

const FAKE = Symbol('fake');

/** Makes the operand pool: valid handles / tensors of many shapes, disposed ones, fakes. */
export function makeEnv(native: NativeBinding, as: Lib): FuzzEnv {
  const cpu = 'cpu';
  const mk = (shape: number[]) => native.rand(shape, 1, 0, 1, 12345, 0, cpu);
  const h: Record<string, NativeTensor> = {
    x4: mk([2, 3, 4, 5]),
    dy4: mk([2, 3, 4, 5]),
    s4: mk([2, 4, 3]), // tokens of [2, 3, 4, 5] at grid 2: min(2, 4) * min(2, 5) = 4
    s4c: mk([2, 4, 2]), // wrong channel count
    m23: mk([2, 3]),
    m32: mk([3, 2]),
    m34: mk([3, 4]),
    m30: mk([3, 0]),
    m234: mk([2, 3, 4]),
    b245: mk([2, 4, 5]),
    b334: mk([3, 3, 4]),
    v1: mk([1]),
    v2: mk([2]),
    v3: mk([3]),
    v6: mk([6]),
    scalar: mk([]),
    r7: mk([1, 1, 1, 1, 1, 1, 2]),
    r4: mk([1, 2, 3, 1]),
    zeroH: mk([1, 2, 0, 3]),
    tallEmpty: mk([0, 1, 2 ** 31, 1]),
    mean2: mk([2]),
    rstd2: mk([2]),
  };
  const disposedHandle = native.full([2, 3], 1, cpu);
  disposedHandle.dispose();
  const t: Record<string, AS.Tensor> = {
    x4: as.randn([2, 3, 4, 5]),
    s4: as.randn([2, 4, 3]),
    m23: as.randn([2, 3]),
    m32: as.randn([3, 2]),
    m34: as.randn([3, 4]),
    m234: as.randn([2, 3, 4]),
    v2: as.randn([2]),
    v3: as.randn([3]),
    v4: as.randn([4]),
    v6: as.randn([6]),
    scalar: as.randn([]),
    empty: as.zeros([0, 3]),
    m30: as.zeros([3, 0]),
    g23: as.randn([2, 3], { requiresGrad: true }),
  };
  const disposedTensor = as.ones([2, 3]);
  disposedTensor.dispose();
  const proto = Object.getPrototypeOf(h.m23);
  const fake = Object.create(proto);
  Object.defineProperty(fake, FAKE, { value: true });
  const junk: Record<string, unknown> = {
    disposedHandle,
    disposedTensor,
    fakeHandle: fake,
    proxyHandle: new Proxy(h.m23, {}),
    duck: { shape: [2, 3], numel: 6, device: 'cpu', disposed: false, toFloat32Array: () => new Float32Array(6) },
    publicTensor: t.m23,
    rawHandle: h.m23,
  };
  const modB = new as.nn.AdaShiftB(3);
  return {
    native,
    as,
    cudaUsable: as.backendInfo().cudaUsable,
    h,
    t,
    junk,
    modB,
    dispose() {
      modB.dispose();
      for (const x of Object.values(h)) x.dispose();
      for (const x of Object.values(t)) {
        x.grad?.dispose();
        x.dispose();
      }
    },
  };
}

// ---- value pools: every entry is invalid for its kind ----------------------------------------
function commonJunk(): [string, unknown][] {
  return [
    ['string', 'abc'],
    ['object', {}],
    ['function', () => 1],
    ['bigint', 10n],
    ['symbol', Symbol('s')],
    ['boolean', true],
  ];
}

function invalidFor(kind: Kind, env: FuzzEnv, prng: Prng): [string, unknown] {
  const J = env.junk;
  const nullish: [string, unknown][] = [
    ['null', null],
    ['undefined', undefined],
  ];
  const numJunk: [string, unknown][] = [
    ['NaN', NaN],
    ['Infinity', Infinity],
    ['-Infinity', -Infinity],
    ['numeric string', '1'],
    ['array', [1]],
    ['Number object', new Number(1)],
    ...commonJunk(),
    ...nullish,
  ];
  const intJunk = (lo: number, hi: number): [string, unknown][] => [
    ...numJunk,
    ['below range', lo - 1],
    ['above range', hi + 1],
    ['fractional', lo + 0.5],
    ['huge', 1e300],
  ];
  let pool: [string, unknown][];
  switch (kind) {
    case 'self':
      // the receiver of a NativeTensor method or getter: a handle that is no longer usable.
      // (Foreign receivers are V8's business: it rejects them with 'Illegal invocation'; fake
      // and proxied handles are fuzzed as arguments instead.)
      pool = [['disposed handle', J.disposedHandle]];
      break;
    case 'T':
    case 'T?': {
      pool = [
        ['disposed handle', J.disposedHandle],
        ['fake handle (NativeTensor prototype)', J.fakeHandle],
        ['Proxy of a handle', J.proxyHandle],
        ['duck-typed object', J.duck],
        ['public Tensor instead of handle', J.publicTensor],
        ['Float32Array', new Float32Array(6)],
        ['number', 42],
        ['array', [1, 2, 3]],
        ...commonJunk(),
      ];
      if (kind === 'T') pool.push(...nullish);
      break;
    }
    case 'shape':
      pool = [
        ['negative dim', [2, -1]],
        ['NaN dim', [NaN, 2]],
        ['Infinity dim', [Infinity]],
        ['fractional dim', [2.5, 2]],
        ['dim above 2^53', [2 ** 60]],
        ['more than 2^40 elements', [2 ** 21, 2 ** 20]],
        ['9 dims', [1, 1, 1, 1, 1, 1, 1, 1, 1]],
        ['string dim', ['2', 3]],
        ['null dim', [null]],
        ['undefined dim', [undefined, 2]],
        ['hole', [2, , 3]], // eslint-disable-line no-sparse-arrays
        ['bigint dim', [2n]],
        ['symbol dim', [Symbol('d')]],
        ['object dim', [{}]],
        ['Int32Array', new Int32Array([2, 3])],
        ['array-like object', { length: 2, 0: 2, 1: 3 }],
        ['number', 6],
        ...commonJunk(),
        ...nullish,
      ];
      break;
    case 'num':
      pool = numJunk;
      break;
    case 'op':
      pool = intJunk(0, 3);
      break;
    case 'act':
      pool = intJunk(0, 3);
      break;
    case 'kind':
      pool = intJunk(0, 1);
      break;
    case 'grid':
      pool = [...intJunk(1, 1024), ['zero', 0]];
      break;
    case 'rows':
      pool = [...intJunk(1, 2 ** 40), ['zero', 0]];
      break;
    case 'seed':
      pool = [...intJunk(0, 2 ** 53 - 1), ['2^53', 2 ** 53]];
      break;
    case 'threads':
      pool = [...intJunk(1, 4096), ['zero', 0]];
      break;
    case 'ms':
      pool = [...intJunk(1, 10000), ['zero', 0]];
      break;
    case 'bool':
      pool = [
        ['number 1', 1],
        ['number 0', 0],
        ['string', 'true'],
        ['Boolean object', new Boolean(true)],
        ['object', {}],
        ['bigint', 1n],
        ['symbol', Symbol('b')],
        ...nullish,
      ];
      break;
    case 'dev': {
      pool = [
        ['unknown name', 'gpu'],
        ['upper case', 'CPU'],
        ['trailing space', 'cpu '],
        ['empty', ''],
        ['cuda: without index', 'cuda:'],
        ['negative index', 'cuda:-1'],
        ['non-digit index', 'cuda:x'],
        ['index too long', 'cuda:12345'],
        ['nonexistent index', 'cuda:999'],
        ['NUL inside', 'cpu\0'],
        ['number', 0],
        ['String object', new String('cpu')],
        ['array', ['cpu']],
        ['object', {}],
        ['symbol', Symbol('cpu')],
        ['bigint', 0n],
        ...nullish,
      ];
      if (!env.cudaUsable) pool.push(['cuda without CUDA', 'cuda'], ['cuda:0 without CUDA', 'cuda:0']);
      break;
    }
    case 'data':
      pool = [
        ['Float64Array', new Float64Array(6)],
        ['Int32Array', new Int32Array(6)],
        ['Uint8Array', new Uint8Array(24)],
        ['ArrayBuffer', new ArrayBuffer(24)],
        ['DataView', new DataView(new ArrayBuffer(24))],
        ['number array', [1, 2, 3, 4, 5, 6]],
        ...commonJunk(),
        ...nullish,
      ];
      break;
    case 'axes':
      pool = [
        ['duplicate axis', [0, 0, 1]],
        ['axis out of range', [0, 1, 3]],
        ['negative axis', [0, 1, -1]],
        ['fractional axis', [0, 1, 1.5]],
        ['too few axes', [1, 0]],
        ['too many axes', [0, 1, 2, 3]],
        ['seven axes', [0, 1, 2, 3, 4, 5, 6]],
        ['string axis', [0, 1, '2']],
        ['NaN axis', [0, 1, NaN]],
        ['null axis', [0, 1, null]],
        ['number', 2],
        ...commonJunk(),
        ...nullish,
      ];
      break;
  }
  return prng.pick(pool);
}

// ---- the raw binding ---------------------------------------------------------------------------
interface NativeSpec {
  name: string;
  kinds: Kind[];
  base: (e: FuzzEnv) => unknown[];
  /** argument lists that are well-typed but mismatched / out of range */
  semantic?: [string, (e: FuzzEnv) => unknown[]][];
  /** a method or getter of the handle class: the first argument is the receiver */
  method?: 'reshape' | 'toFloat32Array' | 'get shape' | 'get numel';
}

const NATIVE_SPECS: NativeSpec[] = [
  { name: 'setNumThreads', kinds: ['threads'], base: () => [1] },
  { name: 'setConvAllowTF32', kinds: ['bool'], base: () => [false] },
  { name: 'cpuPeakGflops', kinds: ['ms'], base: () => [1] },
  { name: 'synchronize', kinds: ['dev'], base: () => ['cpu'] },
  { name: 'emptyCache', kinds: ['dev'], base: () => ['cpu'] },
  { name: 'empty', kinds: ['shape', 'dev'], base: () => [[2, 3], 'cpu'] },
  { name: 'full', kinds: ['shape', 'num', 'dev'], base: () => [[2, 3], 1.5, 'cpu'] },
  {
    name: 'fromArray',
    kinds: ['data', 'shape', 'dev'],
    base: () => [new Float32Array(6), [2, 3], 'cpu'],
    semantic: [
      ['too few values', () => [new Float32Array(5), [2, 3], 'cpu']],
      ['too many values', () => [new Float32Array(7), [2, 3], 'cpu']],
      ['values for an empty shape', () => [new Float32Array(1), [0], 'cpu']],
    ],
  },
  {
    name: 'rand',
    kinds: ['shape', 'kind', 'num', 'num', 'seed', 'seed', 'dev'],
    base: () => [[4], 0, 0, 1, 1, 0, 'cpu'],
    semantic: [
      ['uniform low > high', () => [[4], 0, 2, 1, 1, 0, 'cpu']],
      ['negative std', () => [[4], 1, 0, -1, 1, 0, 'cpu']],
      ['bound overflows float32', () => [[4], 0, 0, 1e300, 1, 0, 'cpu']],
    ],
  },
  { name: 'to', kinds: ['T', 'dev'], base: (e) => [e.h.m23, 'cpu'] },
  { name: 'clone', kinds: ['T'], base: (e) => [e.h.m23] },
  {
    name: 'copy_',
    kinds: ['T', 'T'],
    base: (e) => [e.h.m23, e.h.m23],
    semantic: [
      ['transposed shapes', (e) => [e.h.m23, e.h.m32]],
      ['same numel, other rank', (e) => [e.h.m23, e.h.v6]],
    ],
  },
  // CUDA graphs: on the CPU every call is refused with a code; the graph-handle arguments get
  // the tensor-argument junk (none of it is a graph handle)
  { name: 'cudaGraphBegin', kinds: ['dev'], base: () => ['cpu'] },
  { name: 'cudaGraphEnd', kinds: ['dev'], base: () => ['cpu'] },
  { name: 'cudaGraphAbort', kinds: ['dev'], base: () => ['cpu'] },
  { name: 'cudaGraphCapturing', kinds: ['dev'], base: () => ['cpu'] },
  { name: 'cudaGraphReplay', kinds: ['T'], base: () => [{}] },
  { name: 'cudaGraphDispose', kinds: ['T'], base: () => [{}] },
  { name: 'cudaGraphPoolBytes', kinds: ['T'], base: () => [{}] },
  {
    name: 'binary',
    kinds: ['op', 'T', 'T'],
    base: (e) => [0, e.h.m23, e.h.m23],
    semantic: [
      ['transposed shapes', (e) => [2, e.h.m23, e.h.m32]],
      ['same numel, other rank', (e) => [1, e.h.m23, e.h.v6]],
      ['scalar and vector', (e) => [3, e.h.scalar, e.h.v1]],
    ],
  },
  {
    name: 'axpby',
    kinds: ['num', 'T', 'num', 'T?'],
    base: (e) => [1, e.h.m23, 1, e.h.m23],
    semantic: [['b of another shape', (e) => [1, e.h.m23, 2, e.h.m32]]],
  },
  {
    name: 'axpy_',
    kinds: ['T', 'num', 'T'],
    base: (e) => [e.h.m23, 1, e.h.m23],
    semantic: [
      ['x with more elements', (e) => [e.h.m23, 1, e.h.m34]],
      ['x with fewer elements', (e) => [e.h.m23, 1, e.h.v2]],
    ],
  },
  { name: 'fill_', kinds: ['T', 'num'], base: (e) => [e.h.m23, 0] },
  { name: 'sumAll', kinds: ['T'], base: (e) => [e.h.m23] },
  {
    name: 'sumRows',
    kinds: ['T', 'rows'],
    base: (e) => [e.h.m23, 2],
    semantic: [
      ['rows not dividing the size', (e) => [e.h.m23, 4]],
      ['more rows than elements', (e) => [e.h.m23, 7]],
    ],
  },
  {
    name: 'addRowvec',
    kinds: ['T', 'T'],
    base: (e) => [e.h.m23, e.h.v3],
    semantic: [
      ['vector too short', (e) => [e.h.m23, e.h.v2]],
      ['matrix as vector', (e) => [e.h.m23, e.h.m23]],
      ['0-d input', (e) => [e.h.scalar, e.h.v1]],
      ['vector of all elements', (e) => [e.h.m23, e.h.v6]],
    ],
  },
  { name: 'actForward', kinds: ['act', 'T'], base: (e) => [0, e.h.m23] },
  {
    name: 'actBackward',
    kinds: ['act', 'T', 'T'],
    base: (e) => [1, e.h.x4, e.h.dy4],
    semantic: [
      ['dy of another shape', (e) => [2, e.h.x4, e.h.m23]],
      ['dy transposed', (e) => [3, e.h.m23, e.h.m32]],
    ],
  },
  {
    name: 'regionPoolForward',
    kinds: ['T', 'grid'],
    base: (e) => [e.h.x4, 2],
    semantic: [
      ['rank-2 input', (e) => [e.h.m23, 1]],
      ['rank-3 input', (e) => [e.h.m234, 2]],
      ['H = 0 with cells to fill', (e) => [e.h.zeroH, 1]],
      ['H >= 2^30', (e) => [e.h.tallEmpty, 1]],
    ],
  },
  {
    name: 'regionPoolBackward',
    kinds: ['T', 'shape', 'grid'],
    base: (e) => [e.h.s4, [2, 3, 4, 5], 2],
    semantic: [
      ['dt for another grid', (e) => [e.h.s4, [2, 3, 4, 5], 1]],
      ['rank-3 input shape', (e) => [e.h.s4, [2, 3, 4], 2]],
      ['channel mismatch', (e) => [e.h.s4, [2, 4, 4, 5], 2]],
      ['batch mismatch', (e) => [e.h.s4, [3, 3, 4, 5], 2]],
      ['dt of rank 2', (e) => [e.h.m23, [2, 3, 4, 5], 2]],
    ],
  },
  {
    name: 'gateForward',
    kinds: ['T', 'T', 'grid'],
    base: (e) => [e.h.x4, e.h.s4, 2],
    semantic: [
      ['s for another grid', (e) => [e.h.x4, e.h.s4, 1]],
      ['s with other channels', (e) => [e.h.x4, e.h.s4c, 2]],
      ['x of rank 2', (e) => [e.h.m23, e.h.s4, 2]],
      ['s = x', (e) => [e.h.x4, e.h.x4, 2]],
    ],
  },
  {
    name: 'gateBackwardReduce',
    kinds: ['T', 'T', 'T', 'grid'],
    base: (e) => [e.h.x4, e.h.dy4, e.h.s4, 2],
    semantic: [
      ['dy of another shape', (e) => [e.h.x4, e.h.m23, e.h.s4, 2]],
      ['s of another shape', (e) => [e.h.x4, e.h.dy4, e.h.v6, 2]],
      ['grid giving 9 cells', (e) => [e.h.x4, e.h.dy4, e.h.s4, 3]],
    ],
  },
  {
    name: 'gateBackwardApply',
    kinds: ['T', 'T', 'T', 'T?', 'grid'],
    base: (e) => [e.h.x4, e.h.dy4, e.h.s4, e.h.s4, 2],
    semantic: [
      ['dt of another shape', (e) => [e.h.x4, e.h.dy4, e.h.s4, e.h.m23, 2]],
      ['dy of another shape', (e) => [e.h.x4, e.h.s4, e.h.s4, null, 2]],
      ['s with other channels', (e) => [e.h.x4, e.h.dy4, e.h.s4c, null, 2]],
    ],
  },
  {
    name: 'layerNormForward',
    kinds: ['T', 'T', 'T', 'num'],
    base: (e) => [e.h.m23, e.h.v3, e.h.v3, 1e-5],
    semantic: [
      ['weight too short', (e) => [e.h.m23, e.h.v2, e.h.v3, 1e-5]],
      ['bias too short', (e) => [e.h.m23, e.h.v3, e.h.v2, 1e-5]],
      ['0-d input', (e) => [e.h.scalar, e.h.v1, e.h.v1, 1e-5]],
      ['empty last axis', (e) => [e.h.m30, e.h.v3, e.h.v3, 1e-5]],
      ['eps 0', (e) => [e.h.m23, e.h.v3, e.h.v3, 0]],
      ['negative eps', (e) => [e.h.m23, e.h.v3, e.h.v3, -1e-5]],
      ['eps that rounds to 0 in float32', (e) => [e.h.m23, e.h.v3, e.h.v3, 1e-50]],
    ],
  },
  {
    name: 'layerNormBackward',
    kinds: ['T', 'T', 'T', 'T', 'T'],
    base: (e) => [e.h.m23, e.h.m23, e.h.mean2, e.h.rstd2, e.h.v3],
    semantic: [
      ['dy of another shape', (e) => [e.h.m32, e.h.m23, e.h.mean2, e.h.rstd2, e.h.v3]],
      ['mean of another length', (e) => [e.h.m23, e.h.m23, e.h.v3, e.h.rstd2, e.h.v3]],
      ['rstd of another length', (e) => [e.h.m23, e.h.m23, e.h.mean2, e.h.v6, e.h.v3]],
      ['weight of another length', (e) => [e.h.m23, e.h.m23, e.h.mean2, e.h.rstd2, e.h.v2]],
      ['0-d input', (e) => [e.h.scalar, e.h.scalar, e.h.v1, e.h.v1, e.h.v1]],
    ],
  },
  {
    name: 'softmaxForward',
    kinds: ['T'],
    base: (e) => [e.h.m23],
    semantic: [
      ['0-d input', (e) => [e.h.scalar]],
      ['empty last axis', (e) => [e.h.m30]],
    ],
  },
  {
    name: 'softmaxBackward',
    kinds: ['T', 'T'],
    base: (e) => [e.h.m23, e.h.m23],
    semantic: [
      ['dy transposed', (e) => [e.h.m23, e.h.m32]],
      ['dy flat', (e) => [e.h.m23, e.h.v6]],
      ['0-d y and dy', (e) => [e.h.scalar, e.h.scalar]],
    ],
  },
  {
    name: 'matmul',
    kinds: ['T', 'T', 'bool', 'bool'],
    base: (e) => [e.h.m23, e.h.m34, false, false],
    semantic: [
      ['inner dimensions differ', (e) => [e.h.m23, e.h.m23, false, false]],
      ['inner dimensions differ after transA', (e) => [e.h.m23, e.h.m34, true, false]],
      ['inner dimensions differ after transB', (e) => [e.h.m23, e.h.m34, false, true]],
      ['rank-1 operand', (e) => [e.h.v6, e.h.m23, false, false]],
      ['0-d operand', (e) => [e.h.scalar, e.h.m23, false, false]],
      ['rank-4 operand', (e) => [e.h.r4, e.h.m34, false, false]],
      ['batch sizes differ', (e) => [e.h.b334, e.h.b245, false, false]],
    ],
  },
  {
    name: 'permute',
    kinds: ['T', 'axes'],
    base: (e) => [e.h.m234, [2, 0, 1]],
    semantic: [
      ['rank-7 tensor', (e) => [e.h.r7, [0, 1, 2, 3, 4, 5]]],
      ['rank-7 tensor, 7 axes', (e) => [e.h.r7, [0, 1, 2, 3, 4, 5, 6]]],
      ['axes for a matrix on a 0-d tensor', (e) => [e.h.scalar, [0]]],
    ],
  },
  {
    name: 'NativeTensor#reshape',
    method: 'reshape',
    kinds: ['self', 'shape'],
    base: (e) => [e.h.m23, [3, 2]],
    semantic: [
      ['fewer elements', (e) => [e.h.m23, [5]]],
      ['more elements', (e) => [e.h.m23, [7]]],
      ['empty shape for a non-empty tensor', (e) => [e.h.m23, [0]]],
    ],
  },
  { name: 'NativeTensor#toFloat32Array', method: 'toFloat32Array', kinds: ['self'], base: (e) => [e.h.m23] },
  { name: 'NativeTensor#shape', method: 'get shape', kinds: ['self'], base: (e) => [e.h.m23] },
  { name: 'NativeTensor#numel', method: 'get numel', kinds: ['self'], base: (e) => [e.h.m23] },
];

/** The binding functions the native specs cover (the NativeTensor methods aside). */
export const NATIVE_FUNCTIONS = NATIVE_SPECS.filter((s) => !s.method).map((s) => s.name);
/** Functions that take no arguments: nothing to get wrong. */
export const NO_ARG_FUNCTIONS = ['backendInfo', 'memory', 'getNumThreads', 'getConvAllowTF32', 'gemmInfo'];

function invokeNative(spec: NativeSpec, env: FuzzEnv, args: unknown[]): () => unknown {
  if (!spec.method) {
    const fn = (env.native as unknown as Record<string, (...a: unknown[]) => unknown>)[spec.name];
    return () => fn(...args);
  }
  const proto = Object.getPrototypeOf(env.h.m23);
  const [self, ...rest] = args;
  if (spec.method.startsWith('get ')) {
    const getter = Object.getOwnPropertyDescriptor(proto, spec.method.slice(4))!.get!;
    return () => getter.call(self);
  }
  const m = proto[spec.method] as (...a: unknown[]) => unknown;
  return () => m.apply(self, rest);
}

export function show(v: unknown, depth = 0): string {
  if (typeof v === 'symbol') return 'Symbol()';
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'function') return 'function';
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number') return Object.is(v, -0) ? '-0' : String(v);
  if (v === null || v === undefined || typeof v === 'boolean') return String(v);
  if (typeof v === 'object' && (v as Record<symbol, unknown>)[FAKE]) return 'fake NativeTensor';
  if (ArrayBuffer.isView(v)) return `${v.constructor.name}(${(v as unknown as { length?: number }).length ?? (v as DataView).byteLength})`;
  if (v instanceof ArrayBuffer) return `ArrayBuffer(${v.byteLength})`;
  if (Array.isArray(v)) {
    if (depth > 1) return '[...]';
    const parts: string[] = [];
    for (let i = 0; i < v.length; i++) parts.push(i in v ? show(v[i], depth + 1) : '<hole>');
    return `[${parts.join(', ')}]`;
  }
  const o = v as { constructor?: { name?: string }; disposed?: unknown; isDisposed?: unknown; shape?: unknown };
  const cname = o.constructor?.name;
  if (cname === 'NativeTensor') {
    try {
      return o.disposed ? 'disposed NativeTensor' : `NativeTensor[${(o.shape as number[]).join(',')}]`;
    } catch {
      return 'NativeTensor(proxy)';
    }
  }
  if (cname === 'Tensor') {
    return o.isDisposed ? 'disposed Tensor' : `Tensor[${(o.shape as number[]).join(',')}]`;
  }
  if (cname && cname !== 'Object') return `${cname}{}`;
  try {
    return depth > 1 ? '{...}' : `{${Object.entries(v as object).map(([k, x]) => `${k}: ${show(x, depth + 1)}`).join(', ')}}`;
  } catch {
    return 'object';
  }
}

function requiredFrom(kinds: Kind[]): number {
  // the call is invalid when truncated before the last required argument
  let last = -1;
  kinds.forEach((k, i) => {
    if (k !== 'T?') last = i;
  });
  return last;
}

export function makeNativeCase(index: number, seed: number, env: FuzzEnv): FuzzCase {
  const prng = new Prng((seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0);
  const spec = prng.pick(NATIVE_SPECS);
  const roll = prng.next();
  let args: unknown[];
  let what: string;
  if (spec.semantic && roll < 0.3) {
    const [label, make] = prng.pick(spec.semantic);
    args = make(env);
    what = `semantic:${label}`;
  } else if (roll < 0.4 && !spec.method) {
    const last = requiredFrom(spec.kinds);
    const keep = prng.int(0, last);
    args = spec.base(env).slice(0, keep);
    what = `missing argument ${keep + 1}`;
  } else {
    args = spec.base(env);
    const pos = prng.int(0, spec.kinds.length - 1);
    const kind = spec.kinds[pos];
    const [label, value] = invalidFor(kind, env, prng);
    args[pos] = value;
    what = `${spec.method && pos === 0 ? 'receiver' : `arg ${pos + 1}`} (${kind}): ${label}`;
  }
  const desc = `${spec.name}(${args.map((a) => show(a)).join(', ')})`;
  return { layer: 'native', index, sig: `native ${spec.name} | ${what}`, desc, call: invokeNative(spec, env, args) };
}

// ---- the public API --------------------------------------------------------------------------
type ApiKind =
  | 'self' | 'tensor' | 'shape' | 'num' | 'options' | 'device' | 'axes' | 'seed' | 'threads' | 'grid' | 'dim'
  | 'context' | 'channels' | 'path' | 'geluopts' | 'mmopts' | 'state' | 'name' | 'flag';

interface ApiSpec {
  name: string;
  kinds: ApiKind[];
  /** positions from this index on may be left out (and may be null / undefined) */
  optionalFrom?: number;
  base: (e: FuzzEnv) => unknown[];
  call: (e: FuzzEnv, args: unknown[]) => unknown;
  semantic?: [string, (e: FuzzEnv) => unknown[]][];
}

function invalidApi(kind: ApiKind, env: FuzzEnv, prng: Prng, optional: boolean): [string, unknown] {
  const nullish: [string, unknown][] = optional ? [] : [['null', null], ['undefined', undefined]];
  const cuda: [string, unknown][] = env.cudaUsable ? [] : [['cuda without CUDA', 'cuda']];
  let pool: [string, unknown][];
  switch (kind) {
    case 'self':
      pool = [['disposed Tensor', env.junk.disposedTensor]];
      break;
    case 'tensor':
      pool = [
        ['disposed Tensor', env.junk.disposedTensor],
        ['raw NativeTensor handle', env.junk.rawHandle],
        ['duck-typed object', env.junk.duck],
        ['number array', [1, 2, 3]],
        ['Float32Array', new Float32Array(3)],
        ['number', 3],
        ...commonJunk(),
        ...nullish,
      ];
      break;
    case 'shape':
      pool = [
        ['negative dim', [2, -3]],
        ['NaN dim', [NaN]],
        ['fractional dim', [1.5, 4]],
        ['Infinity dim', [Infinity]],
        ['more than 2^40 elements', [2 ** 21, 2 ** 20]],
        ['9 dims', [1, 1, 1, 1, 1, 1, 1, 1, 1]],
        ['string dims', ['2', '3']],
        ['null dim', [null, 6]],
        ['number instead of array', 6],
        ['string instead of array', 'abc'],
        ['object instead of array', {}],
        ['bigint instead of array', 6n],
        ...nullish,
      ];
      break;
    case 'num':
      pool = [['NaN', NaN], ['Infinity', Infinity], ['-Infinity', -Infinity], ['string', 'x'], ['object', {}], ['bigint', 1n], ['symbol', Symbol('n')], ...nullish];
      break;
    case 'seed':
      pool = [['NaN', NaN], ['fractional', 1.5], ['negative', -1], ['2^53', 2 ** 53], ['string', '1'], ['object', {}], ['bigint', 1n], ...nullish];
      break;
    case 'threads':
      pool = [['NaN', NaN], ['fractional', 1.5], ['zero', 0], ['negative', -1], ['above 4096', 5000], ['string', '1'], ['object', {}], ['bigint', 1n], ...nullish];
      break;
    case 'flag':
      pool = [['number 1', 1], ['string', 'true'], ['Boolean object', new Boolean(true)], ['object', {}], ...nullish];
      break;
    case 'grid':
      pool = [['NaN', NaN], ['fractional', 1.5], ['zero', 0], ['negative', -2], ['above 1024', 1025], ['string', '2'], ['object', {}], ['bigint', 2n], ...nullish];
      break;
    case 'dim':
      pool = [['NaN', NaN], ['fractional', 1.5], ['below -rank', -7], ['past the rank', 9], ['string', '1'], ['object', {}], ['bigint', 1n], ...nullish];
      break;
    case 'options':
      pool = [['unknown device', { device: 'gpu' }], ['numeric device', { device: 7 }], ['object device', { device: {} }], ...cuda.map(([l, d]): [string, unknown] => [l, { device: d }])];
      break;
    case 'geluopts':
      pool = [['unknown approximation', { approximate: 'fast' }], ['numeric approximation', { approximate: 1 }]];
      break;
    case 'mmopts':
      pool = [['string transA', { transA: 'yes' }], ['numeric transB', { transB: 1 }]];
      break;
    case 'state':
      pool = [['negative offset', { seed: 1, offset: -4 }], ['fractional seed', { seed: 1.5, offset: 0 }], ['missing offset', { seed: 1 }], ['string seed', { seed: '1', offset: 0 }], ['null', null], ['number', 5]];
      break;
    case 'device':
      pool = [['unknown', 'gpu'], ['cuda: without index', 'cuda:'], ['number', 0], ['object', {}], ['symbol', Symbol('d')], ...cuda];
      break;
    case 'axes':
      pool = [['duplicate', [0, 0, 1]], ['out of range', [0, 1, 5]], ['too few', [1, 0]], ['negative', [-1, 0, 1]], ['fractional', [0.5, 1, 2]], ['string', 'abc'], ['number', 3], ['object', {}], ...nullish];
      break;
    case 'context':
      pool = [
        ['returns a number', () => 3],
        ['returns null', () => null],
        ['returns a tensor of the wrong shape', () => env.t.v6],
        ['returns a rank-4 tensor', () => env.t.x4],
        ['not a function', 5],
        ['null', null],
      ];
      break;
    case 'channels':
      pool = [['zero', 0], ['negative', -4], ['fractional', 2.5], ['NaN', NaN], ['string', '8'], ['null', null], ['object', {}]];
      break;
    case 'path':
      pool = [['directory', '/'], ['missing file', '/nonexistent/adashift-fuzz.safetensors'], ['empty string', ''], ['number (bad fd)', 987654], ['null', null], ['object', {}]];
      break;
    case 'name':
      pool = [['unknown', 'swish'], ['empty', ''], ['number', 5], ['null', null], ['object', {}], ['symbol', Symbol('a')]];
      break;
  }
  return prng.pick(pool);
}

type Tn = AS.Tensor;
const API_SPECS: ApiSpec[] = [
  {
    name: 'tensor',
    kinds: ['tensor', 'shape', 'options'],
    optionalFrom: 1,
    base: () => [[1, 2, 3, 4, 5, 6], [2, 3], {}],
    call: (e, a) => e.as.tensor(a[0] as number[], a[1] as number[], a[2] as object),
    semantic: [
      ['ragged nested array', () => [[[1, 2], [3]]]],
      ['mixed depth', () => [[1, [2, 3]]]],
      ['string entry', () => [[1, 'a']]],
      ['null entry', () => [[[1, null]]]],
      ['shape not matching the data', () => [[1, 2, 3], [2, 2]]],
      ['array-like data', () => [{ length: 2, 0: 1, 1: 2 }]],
      ['ArrayBuffer data', () => [new ArrayBuffer(8)]],
    ],
  },
  ...(['zeros', 'ones', 'empty'] as const).map((f): ApiSpec => ({ name: f, kinds: ['shape', 'options'], optionalFrom: 1, base: () => [[2, 3], {}], call: (e, a) => e.as[f](a[0] as number[], a[1] as object) })),
  { name: 'full', kinds: ['shape', 'num', 'options'], optionalFrom: 2, base: () => [[2, 3], 1, {}], call: (e, a) => e.as.full(a[0] as number[], a[1] as number, a[2] as object) },
  {
    name: 'rand',
    kinds: ['shape', 'options'],
    optionalFrom: 1,
    base: () => [[4], {}],
    call: (e, a) => e.as.rand(a[0] as number[], a[1] as object),
    semantic: [
      ['low > high', () => [[4], { low: 1, high: 0 }]],
      ['NaN low', () => [[4], { low: NaN }]],
      ['string high', () => [[4], { high: 'x' }]],
    ],
  },
  {
    name: 'randn',
    kinds: ['shape', 'options'],
    optionalFrom: 1,
    base: () => [[4], {}],
    call: (e, a) => e.as.randn(a[0] as number[], a[1] as object),
    semantic: [
      ['negative std', () => [[4], { std: -1 }]],
      ['infinite mean', () => [[4], { mean: Infinity }]],
    ],
  },
  { name: 'manualSeed', kinds: ['seed'], base: () => [1], call: (e, a) => e.as.manualSeed(a[0] as number) },
  { name: 'setRngState', kinds: ['state'], base: () => [{ seed: 1, offset: 0 }], call: (e, a) => e.as.setRngState(a[0] as { seed: number; offset: number }) },
  { name: 'setNumThreads', kinds: ['threads'], base: () => [1], call: (e, a) => e.as.setNumThreads(a[0] as number) },
  { name: 'setAllowTF32', kinds: ['flag'], base: () => [false], call: (e, a) => e.as.setAllowTF32(a[0] as boolean) },
  { name: 'setDefaultDevice', kinds: ['device'], optionalFrom: 0, base: () => ['cpu'], call: (e, a) => e.as.setDefaultDevice(a[0] as 'cpu') },
  { name: 'resolveDevice', kinds: ['device'], optionalFrom: 0, base: () => ['cpu'], call: (e, a) => e.as.resolveDevice(a[0] as string) },
  { name: 'relu', kinds: ['tensor'], base: (e) => [e.t.m23], call: (e, a) => e.as.functional.relu(a[0] as Tn) },
  { name: 'gelu', kinds: ['tensor', 'geluopts'], optionalFrom: 1, base: (e) => [e.t.m23, {}], call: (e, a) => e.as.functional.gelu(a[0] as Tn, a[1] as object) },
  { name: 'silu', kinds: ['tensor'], base: (e) => [e.t.m23], call: (e, a) => e.as.functional.silu(a[0] as Tn) },
  ...(['add', 'sub', 'mul', 'div'] as const).map((op): ApiSpec => ({
    name: op,
    kinds: ['tensor', 'tensor'],
    base: (e) => [e.t.m23, e.t.m23],
    call: (e, a) => e.as.functional[op](a[0] as Tn, a[1] as Tn),
    semantic: [
      ['transposed shapes', (e) => [e.t.m23, e.t.m32]],
      ['scalar and matrix', (e) => [e.t.scalar, e.t.m23]],
    ],
  })),
  { name: 'scale', kinds: ['tensor', 'num'], base: (e) => [e.t.m23, 2], call: (e, a) => e.as.functional.scale(a[0] as Tn, a[1] as number) },
  { name: 'addScalar', kinds: ['tensor', 'num'], base: (e) => [e.t.m23, 2], call: (e, a) => e.as.functional.addScalar(a[0] as Tn, a[1] as number) },
  { name: 'sum', kinds: ['tensor'], base: (e) => [e.t.m23], call: (e, a) => e.as.functional.sum(a[0] as Tn) },
  { name: 'mean', kinds: ['tensor'], base: (e) => [e.t.m23], call: (e, a) => e.as.functional.mean(a[0] as Tn), semantic: [['empty tensor', (e) => [e.t.empty]]] },
  {
    name: 'reshape',
    kinds: ['tensor', 'shape'],
    base: (e) => [e.t.m23, [3, 2]],
    call: (e, a) => e.as.functional.reshape(a[0] as Tn, a[1] as number[]),
    semantic: [
      ['two -1', (e) => [e.t.m23, [-1, -1]]],
      ['-1 that does not divide', (e) => [e.t.m23, [4, -1]]],
      ['-1 with a 0', (e) => [e.t.m23, [0, -1]]],
      ['wrong element count', (e) => [e.t.m23, [7]]],
    ],
  },
  { name: 'flatten', kinds: ['tensor', 'dim'], optionalFrom: 1, base: (e) => [e.t.m234, 1], call: (e, a) => e.as.functional.flatten(a[0] as Tn, a[1] as number), semantic: [['startDim past the rank', (e) => [e.t.m234, 3]]] },
  { name: 'permute', kinds: ['tensor', 'axes'], base: (e) => [e.t.m234, [2, 0, 1]], call: (e, a) => e.as.functional.permute(a[0] as Tn, a[1] as number[]) },
  { name: 'transpose', kinds: ['tensor', 'dim', 'dim'], base: (e) => [e.t.m234, 0, 1], call: (e, a) => e.as.functional.transpose(a[0] as Tn, a[1] as number, a[2] as number), semantic: [['axis past the rank', (e) => [e.t.m234, 0, 3]]] },
  { name: 'regionPool', kinds: ['tensor', 'grid'], optionalFrom: 1, base: (e) => [e.t.x4, 2], call: (e, a) => e.as.functional.regionPool(a[0] as Tn, a[1] as number), semantic: [['rank-2 input', (e) => [e.t.m23, 1]]] },
  {
    name: 'adashiftGate',
    kinds: ['tensor', 'tensor', 'grid'],
    optionalFrom: 2,
    base: (e) => [e.t.x4, e.t.s4, 2],
    call: (e, a) => e.as.functional.adashiftGate(a[0] as Tn, a[1] as Tn, a[2] as number),
    semantic: [
      ['s for another grid', (e) => [e.t.x4, e.t.s4, 3]],
      ['s of rank 2', (e) => [e.t.x4, e.t.m23, 2]],
    ],
  },
  {
    name: 'adashift',
    kinds: ['tensor', 'grid', 'context'],
    base: (e) => [e.t.x4, 2, (t: Tn) => t],
    call: (e, a) => e.as.functional.adashift(a[0] as Tn, a[1] as number, a[2] as (t: Tn) => Tn),
    semantic: [['rank-3 input', (e) => [e.t.m234, 1, (t: Tn) => t]]],
  },
  {
    name: 'layerNorm',
    kinds: ['tensor', 'tensor', 'tensor', 'num'],
    optionalFrom: 3,
    base: (e) => [e.t.m23, e.t.v3, e.t.v3, 1e-5],
    call: (e, a) => e.as.functional.layerNorm(a[0] as Tn, a[1] as Tn, a[2] as Tn, a[3] as number),
    semantic: [
      ['weight too short', (e) => [e.t.m23, e.t.v2, e.t.v3]],
      ['eps 0', (e) => [e.t.m23, e.t.v3, e.t.v3, 0]],
      ['0-d input', (e) => [e.t.scalar, e.t.v3, e.t.v3]],
    ],
  },
  { name: 'softmax', kinds: ['tensor'], base: (e) => [e.t.m23], call: (e, a) => e.as.functional.softmax(a[0] as Tn), semantic: [['0-d input', (e) => [e.t.scalar]], ['empty last axis', (e) => [e.t.m30]]] },
  {
    name: 'matmul',
    kinds: ['tensor', 'tensor', 'mmopts'],
    optionalFrom: 2,
    base: (e) => [e.t.m23, e.t.m34, {}],
    call: (e, a) => e.as.functional.matmul(a[0] as Tn, a[1] as Tn, a[2] as object),
    semantic: [
      ['inner dimensions differ', (e) => [e.t.m23, e.t.m23]],
      ['rank-1 operand', (e) => [e.t.v6, e.t.m23]],
      ['transB mismatch', (e) => [e.t.m23, e.t.m34, { transB: true }]],
    ],
  },
  {
    name: 'linear',
    kinds: ['tensor', 'tensor', 'tensor'],
    optionalFrom: 2,
    base: (e) => [e.t.m23, e.t.m23, e.t.v2],
    call: (e, a) => e.as.functional.linear(a[0] as Tn, a[1] as Tn, a[2] as Tn),
    semantic: [
      ['weight of another input size', (e) => [e.t.m23, e.t.m32, null]],
      ['bias of another length', (e) => [e.t.m23, e.t.m23, e.t.v3]],
      ['0-d input', (e) => [e.t.scalar, e.t.m23, null]],
    ],
  },
  { name: 'Tensor#item', kinds: ['self'], base: (e) => [e.t.m23], call: (e, a) => (a[0] as Tn).item(), semantic: [['several elements', (e) => [e.t.m23]], ['no elements', (e) => [e.t.empty]]] },
  {
    name: 'Tensor#backward',
    kinds: ['self', 'tensor'],
    optionalFrom: 2,
    base: (e) => [e.t.g23, e.t.m23],
    call: (e, a) => (a[0] as Tn).backward(a[1] as Tn),
    semantic: [
      ['does not require grad', (e) => [e.t.m23, e.t.m23]],
      ['gradient of another shape', (e) => [e.t.g23, e.t.m32]],
      ['non-scalar without a gradient', (e) => [e.t.g23, undefined]],
    ],
  },
  { name: 'Tensor#to', kinds: ['self', 'device'], optionalFrom: 1, base: (e) => [e.t.m23, 'cpu'], call: (e, a) => (a[0] as Tn).to(a[1] as never) },
  { name: 'Tensor#toFloat32Array', kinds: ['self'], base: (e) => [e.t.m23], call: (e, a) => (a[0] as Tn).toFloat32Array() },
  { name: 'Tensor#toArray', kinds: ['self'], base: (e) => [e.t.m23], call: (e, a) => (a[0] as Tn).toArray() },
  { name: 'Tensor#detach', kinds: ['self'], base: (e) => [e.t.m23], call: (e, a) => (a[0] as Tn).detach() },
  { name: 'nn.AdaShiftB', kinds: ['channels', 'options'], optionalFrom: 1, base: () => [4, {}], call: (e, a) => new e.as.nn.AdaShiftB(a[0] as number, a[1] as object) },
  {
    name: 'nn.AdaShiftMA',
    kinds: ['channels', 'options'],
    optionalFrom: 1,
    base: () => [8, { grid: 2, headDim: 4 }],
    call: (e, a) => new e.as.nn.AdaShiftMA(a[0] as number, a[1] as object),
    semantic: [
      ['grid 0', () => [8, { grid: 0 }]],
      ['grid 1025', () => [8, { grid: 1025 }]],
      ['fractional grid', () => [8, { grid: 2.5 }]],
      ['headDim 0', () => [8, { headDim: 0 }]],
      ['heads not dividing channels', () => [10, { headDim: 3 }]],
      ['unknown rect', () => [8, { rect: 'conv' }]],
    ],
  },
  { name: 'nn.Linear', kinds: ['channels', 'channels'], base: () => [3, 4], call: (e, a) => new e.as.nn.Linear(a[0] as number, a[1] as number) },
  { name: 'nn.LayerNorm', kinds: ['channels'], base: () => [3], call: (e, a) => new e.as.nn.LayerNorm(a[0] as number) },
  { name: 'nn.activation', kinds: ['name', 'channels'], base: () => ['adashift-b', 4], call: (e, a) => e.as.nn.activation(a[0] as never, a[1] as number) },
  {
    name: 'Module#forward',
    kinds: ['tensor'],
    base: (e) => [e.t.x4],
    call: (e, a) => e.modB.forward(a[0] as Tn),
    semantic: [
      ['wrong channel count', (e) => [e.t.m234]],
      ['rank-2 input', (e) => [e.t.m23]],
    ],
  },
  {
    name: 'Module#loadStateDict',
    kinds: ['state'],
    base: (e) => [e.modB.stateDict()],
    call: (e, a) => e.modB.loadStateDict(a[0] as Record<string, Tn>),
    semantic: [
      ['wrong shape', (e) => [{ 'norm.weight': e.t.v2, 'norm.bias': e.t.v3 }]],
      ['missing key', (e) => [{ 'norm.weight': e.t.v3 }]],
      ['unexpected key', (e) => [{ 'norm.weight': e.t.v3, 'norm.bias': e.t.v3, extra: e.t.v3 }]],
      ['not a tensor', (e) => [{ 'norm.weight': [1, 2, 3], 'norm.bias': e.t.v3 }]],
    ],
  },
  { name: 'io.readSafetensors', kinds: ['path'], base: () => ['x.safetensors'], call: (e, a) => e.as.io.readSafetensors(a[0] as string) },
];

export function makeApiCase(index: number, seed: number, env: FuzzEnv): FuzzCase {
  const prng = new Prng((seed ^ Math.imul(index + 1, 0x85ebca6b)) >>> 0);
  const spec = prng.pick(API_SPECS);
  const roll = prng.next();
  const isMethod = spec.kinds[0] === 'self';
  const required = spec.optionalFrom ?? spec.kinds.length;
  let args: unknown[];
  let what: string;
  if (spec.semantic && roll < 0.3) {
    const [label, make] = prng.pick(spec.semantic);
    args = make(env);
    what = `semantic:${label}`;
  } else if (roll < 0.4 && required > (isMethod ? 1 : 0)) {
    const keep = prng.int(isMethod ? 1 : 0, required - 1);
    args = spec.base(env).slice(0, keep);
    what = `missing argument ${keep + 1}`;
  } else {
    args = spec.base(env);
    const pos = prng.int(0, spec.kinds.length - 1);
    const optional = spec.optionalFrom !== undefined && pos >= spec.optionalFrom;
    const [label, value] = invalidApi(spec.kinds[pos], env, prng, optional);
    args[pos] = value;
    what = `arg ${pos + 1} (${spec.kinds[pos]}): ${label}`;
  }
  return { layer: 'api', index, sig: `api ${spec.name} | ${what}`, desc: `${spec.name}(${args.map((a) => show(a)).join(', ')})`, call: () => spec.call(env, args) };
}

export interface Outcome {
  ok: boolean;
  problem?: string;
}

/** Runs one case: it must throw an Error with a string code 'ERR_*'. Frees anything returned. */
export function runCase(c: FuzzCase, isError: (e: unknown) => boolean): Outcome {
  let result: unknown;
  try {
    result = c.call();
  } catch (e) {
    const code = (e as { code?: unknown })?.code;
    if (!isError(e)) return { ok: false, problem: `threw a non-Error: ${show(e)}` };
    if (typeof code !== 'string' || !code.startsWith('ERR_')) {
      return { ok: false, problem: `threw ${(e as Error).name} without an ERR_ code (code ${show(code)}): ${(e as Error).message}` };
    }
    if (!(e as Error).message) return { ok: false, problem: `${code} with an empty message` };
    return { ok: true };
  }
  const shown = show(result);
  freeResult(result);
  return { ok: false, problem: `returned ${shown} instead of throwing` };
}

function freeResult(v: unknown, depth = 0): void {
  if (!v || typeof v !== 'object' || depth > 2) return;
  const o = v as { dispose?: () => void; constructor?: { name?: string } };
  if (Array.isArray(v)) {
    v.forEach((x) => freeResult(x, depth + 1));
    return;
  }
  if (typeof o.dispose === 'function' && (o.constructor?.name === 'Tensor' || o.constructor?.name === 'NativeTensor' || 'parameters' in o)) {
    try {
      o.dispose();
    } catch {
      /* already unusable */
    }
  }
}
