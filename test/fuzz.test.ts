// 1,000 invalid calls at the raw binding and 1,000 at the public API (test/helpers/fuzz.ts), and
// 1,500 made by mutating one argument of a valid call of each binding function the hand-written
// generators do not cover (test/helpers/fuzz-seeds.ts): each must throw an Error whose code
// starts with 'ERR_' - never crash the process, never return, never leave a tensor alive.
// A native crash would take jest down with it, so the same cases first run in a child process
// (against dist/); a case that kills the child is recorded, its kind skipped, and the child
// restarted after it. The in-process runs then skip those kinds.
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as ts from 'typescript';
import { types } from 'util';
import * as as from '../lib';
import { native } from '../lib/native';
import { ensureDist } from './helpers/dist';
import { FuzzCase, makeApiCase, makeEnv, makeNativeCase, NATIVE_FUNCTIONS, NO_ARG_FUNCTIONS, runCase } from './helpers/fuzz';
import { makeMutationCase, makeValidCase, MUTATION_ALL_OPTIONAL, MUTATION_FUNCTIONS, MUTATION_PARAMS, MUTATION_SEMANTIC } from './helpers/fuzz-seeds';

// ADASHIFT_FUZZ_SEED (a number, 0x... allowed) and ADASHIFT_FUZZ_SCALE (a whole multiplier of
// the case counts) run other and more cases than the default ones, e.g.
//   ADASHIFT_FUZZ_SEED=0xbeef ADASHIFT_FUZZ_SCALE=8 npx jest test/fuzz.test.ts
function envInt(name: string, fallback: number, min: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const v = Number(raw);
  if (!Number.isSafeInteger(v) || v < min) throw new Error(`${name} must be an integer >= ${min}, got '${raw}'`);
  return v;
}
const SEED = envInt('ADASHIFT_FUZZ_SEED', 0xada5, 0) >>> 0;
const SCALE = envInt('ADASHIFT_FUZZ_SCALE', 1, 1);
const N = 1000 * SCALE;
/** mutation cases: spread evenly over the functions of fuzz-seeds.ts (round robin) */
const N_MUT = 1500 * SCALE;
/** the layers in the order the child replays them */
const LAYERS = [
  { name: 'native', n: N },
  { name: 'api', n: N },
  { name: 'mutation', n: N_MUT },
];
const isError = (e: unknown) => types.isNativeError(e) || e instanceof Error;

interface Crash {
  layer: string;
  i: number;
  sig: string;
  desc: string;
  how: string;
}

// ---- crash isolation -------------------------------------------------------------------------
// The child loads the compiled package (dist/, rebuilt if stale) and the generator transpiled to
// plain JS by this process, runs the cases in order and writes each one to a progress file
// before calling it: after a crash the last line names the case that killed it.
const CHILD = `
const fs = require('fs');
const cfg = JSON.parse(process.env.FUZZ_CFG);
const as = require(cfg.dist);
const { native } = require(cfg.dist + '/native');
const fz = require(cfg.helper);
const fm = require(cfg.seedsHelper);
as.setDefaultDevice('cpu');
const env = fz.makeEnv(native, as);
const fd = fs.openSync(cfg.progress, 'w');
const makers = { native: fz.makeNativeCase, api: fz.makeApiCase, mutation: fm.makeMutationCase };
const start = cfg.layers.findIndex((l) => l.name === cfg.startLayer);
for (let l = start; l < cfg.layers.length; l++) {
  const { name, n } = cfg.layers[l];
  for (let i = l === start ? cfg.startIndex : 0; i < n; i++) {
    const c = makers[name](i, cfg.seed, env);
    if (cfg.skip.includes(c.sig)) {
      if (c.cleanup) c.cleanup();
      continue;
    }
    fs.writeSync(fd, JSON.stringify({ layer: name, i, sig: c.sig, desc: c.desc }) + '\\n');
    try { c.call(); } catch (e) { /* judged in-process */ }
    if (c.cleanup) c.cleanup();
  }
}
fs.writeSync(fd, 'DONE\\n');
`;

function transpileHelpers(dir: string): string {
  for (const name of ['fuzz', 'prng', 'fuzz-seeds']) {
    const src = fs.readFileSync(path.join(__dirname, 'helpers', `${name}.ts`), 'utf8');
    const js = ts.transpileModule(src, { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022 } }).outputText;
    fs.writeFileSync(path.join(dir, `${name}.js`), js);
  }
  return dir;
}

let crashCache: Crash[] | undefined;
function findCrashes(): Crash[] {
  if (crashCache) return crashCache;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'adashift-fuzz-'));
  const progress = path.join(dir, 'progress.jsonl');
  const helpers = transpileHelpers(dir);
  const dist = ensureDist();
  const crashes: Crash[] = [];
  let start = { layer: LAYERS[0].name, i: 0 };
  try {
    for (let attempt = 0; attempt < 25; attempt++) {
      const cfg = {
        dist,
        helper: path.join(helpers, 'fuzz.js'),
        seedsHelper: path.join(helpers, 'fuzz-seeds.js'),
        seed: SEED,
        layers: LAYERS,
        startLayer: start.layer,
        startIndex: start.i,
        skip: crashes.map((c) => c.sig),
        progress,
      };
      const r = spawnSync(process.execPath, ['-e', CHILD], {
        encoding: 'utf8',
        timeout: 120_000,
        env: { ...process.env, FUZZ_CFG: JSON.stringify(cfg), ADASHIFT_DEVICE: 'cpu' },
      });
      const lines = fs.existsSync(progress) ? fs.readFileSync(progress, 'utf8').trim().split('\n') : [];
      if (r.status === 0 && lines[lines.length - 1] === 'DONE') break;
      const lastLine = lines.filter((x) => x.startsWith('{')).pop();
      if (!lastLine) throw new Error(`fuzz child failed before any case (status ${r.status}, signal ${r.signal}):\n${r.stderr}`);
      const last = JSON.parse(lastLine) as Crash;
      crashes.push({ ...last, how: r.signal ? `killed by ${r.signal}` : `exit status ${r.status}: ${r.stderr.trim().split('\n').slice(-3).join(' / ')}` });
      const l = LAYERS.findIndex((x) => x.name === last.layer);
      if (last.i + 1 < LAYERS[l].n) start = { layer: last.layer, i: last.i + 1 };
      else if (l + 1 < LAYERS.length) start = { layer: LAYERS[l + 1].name, i: 0 };
      else break;
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  crashCache = crashes;
  return crashes;
}

// ---- in-process runs -------------------------------------------------------------------------
interface NativeTensorLike {
  disposed: boolean;
  dispose(): void;
}
function track<T extends NativeTensorLike>(made: NativeTensorLike[], t: T): T {
  made.push(t);
  return t;
}

function snap() {
  const m = as.memory();
  return { tensors: m.tensors, bytes: m.bytes, leaked: m.leaked };
}

interface LayerRun {
  failures: string[];
  /** cases after which more tensors were alive than before (an error path that leaks) */
  leaks: string[];
  ran: number;
  skipped: number;
  before: ReturnType<typeof snap>;
  after: ReturnType<typeof snap>;
}

function runLayer(make: (i: number, seed: number, env: ReturnType<typeof makeEnv>) => FuzzCase, n = N): LayerRun {
  const crashSigs = new Set(findCrashes().map((c) => c.sig));
  const threads = as.getNumThreads();
  const before = snap();
  const env = makeEnv(native, as);
  const bySig = new Map<string, { count: number; example: string; problem: string }>();
  const leaksBySig = new Map<string, { count: number; example: string }>();
  let ran = 0, skipped = 0;
  try {
    for (let i = 0; i < n; i++) {
      const c = make(i, SEED, env);
      if (crashSigs.has(c.sig)) {
        c.cleanup?.();
        skipped++;
        continue;
      }
      ran++;
      const live = as.memory().tensors;
      const r = runCase(c, isError);
      const grew = as.memory().tensors - live;
      c.cleanup?.();
      if (grew > 0) {
        const prev = leaksBySig.get(c.sig);
        if (prev) prev.count += grew;
        else leaksBySig.set(c.sig, { count: grew, example: `#${i} ${c.desc}` });
      }
      if (!r.ok) {
        const prev = bySig.get(c.sig);
        if (prev) prev.count++;
        else bySig.set(c.sig, { count: 1, example: `#${i} ${c.desc}`, problem: r.problem! });
      }
    }
  } finally {
    env.dispose();
    as.setNumThreads(threads);
    as.setDefaultDevice('cpu');
  }
  const failures = [...bySig.entries()].sort().map(([sig, f]) => `${sig} (x${f.count}): ${f.problem} -- e.g. ${f.example}`);
  const leaks = [...leaksBySig.entries()].sort().map(([sig, f]) => `${sig}: ${f.count} tensor(s) left alive over all its cases -- e.g. ${f.example}`);
  return { failures, leaks, ran, skipped, before, after: snap() };
}

beforeAll(() => as.setDefaultDevice('cpu'));
afterAll(() => as.setDefaultDevice(undefined));

describe('fuzzing with invalid arguments', () => {
  test('the generators cover every function of the raw binding', () => {
    const exported = Object.keys(native).filter((k) => typeof (native as unknown as Record<string, unknown>)[k] === 'function' && k !== 'NativeTensor');
    const covered = [...NATIVE_FUNCTIONS, ...NO_ARG_FUNCTIONS, ...MUTATION_FUNCTIONS];
    // a binding function nobody fuzzes: write a spec for it in test/helpers/fuzz-seeds.ts
    expect(exported.filter((f) => !covered.includes(f))).toEqual([]);
    // a generator for a function the binding no longer has
    expect(covered.filter((f) => !exported.includes(f))).toEqual([]);
    // each function has one generator
    expect(covered.filter((f, i) => covered.indexOf(f) !== i)).toEqual([]);
    // the functions said to take no arguments take none
    for (const f of NO_ARG_FUNCTIONS) expect([f, (native as unknown as Record<string, Function>)[f].length]).toEqual([f, 0]);
  });

  test(`mutation fuzzer: the ${N_MUT} cases reach every argument position, semantic list and truncation of every function`, () => {
    const before = snap();
    const env = makeEnv(native, as);
    const seen = new Map<string, Set<string>>();
    try {
      for (let i = 0; i < N_MUT; i++) {
        const c = makeMutationCase(i, SEED, env);
        c.cleanup();
        const name = c.sig.split(' ')[1];
        if (!seen.has(name)) seen.set(name, new Set());
        seen.get(name)!.add(String(c.slot));
      }
    } finally {
      env.dispose();
    }
    const missing: string[] = [];
    for (const [name, params] of MUTATION_PARAMS) {
      const got = seen.get(name) ?? new Set();
      params.forEach((p, i) => {
        if (!got.has(String(i))) missing.push(`${name} arg ${i + 1} (${p})`);
      });
      if (MUTATION_SEMANTIC.includes(name) && !got.has('semantic')) missing.push(`${name} semantic`);
      if (!MUTATION_ALL_OPTIONAL.includes(name) && !got.has('missing')) missing.push(`${name} missing arguments`);
    }
    expect(missing).toEqual([]);
    // building and cleaning up the cases leaves nothing behind
    expect(snap()).toEqual(before);
  });

  test(`mutation fuzzer: the ${N_MUT} valid seed calls succeed and return what the binding declares`, () => {
    const before = snap();
    const env = makeEnv(native, as);
    const threads = as.getNumThreads();
    const problems = new Map<string, string>();
    const perFunction = new Map<string, number>();
    try {
      for (let i = 0; i < N_MUT; i++) {
        const v = makeValidCase(i, SEED, env);
        try {
          const p = v.run();
          perFunction.set(v.name, (perFunction.get(v.name) ?? 0) + 1);
          if (p && !problems.has(v.name)) problems.set(v.name, `#${i} ${v.desc}: ${p}`);
        } finally {
          v.cleanup();
        }
      }
      // the functions that take no arguments
      for (const f of NO_ARG_FUNCTIONS) {
        const r = (native as unknown as Record<string, () => unknown>)[f]();
        if (r === undefined || r === null) problems.set(f, `returned ${r}`);
      }
    } finally {
      env.dispose();
      as.setNumThreads(threads);
    }
    expect([...problems.values()]).toEqual([]);
    expect([...perFunction.keys()].sort()).toEqual([...MUTATION_FUNCTIONS].sort());
    expect(snap()).toEqual(before);
  });

  test('no invalid call crashes the process (cases replayed in a child process)', () => {
    const crashes = findCrashes();
    expect(crashes.map((c) => `${c.sig}: ${c.how} -- e.g. #${c.i} ${c.desc}`)).toEqual([]);
  });

  test(`raw binding: ${N} invalid calls each throw an Error with an ERR_* code`, () => {
    const r = runLayer(makeNativeCase);
    expect(r.ran + r.skipped).toBe(N);
    expect(r.failures).toEqual([]);
    // nothing the calls made is still alive, and nothing was left for the GC to collect
    expect(r.leaks).toEqual([]);
    expect(r.after).toEqual(r.before);
  });

  test(`public API: ${N} invalid calls each throw an Error with an ERR_* code`, () => {
    const r = runLayer(makeApiCase);
    expect(r.ran + r.skipped).toBe(N);
    expect(r.failures).toEqual([]);
  });

  test('public API: failed calls leave no live tensors behind', () => {
    const r = runLayer(makeApiCase);
    expect(r.leaks).toEqual([]);
    expect(r.after).toEqual(r.before);
  });

  test(`mutation fuzzer: ${N_MUT} invalid calls each throw an Error with an ERR_* code, leaving no tensor alive`, () => {
    const backend = native.gemmBackend();
    const r = runLayer(makeMutationCase, N_MUT);
    expect(r.ran + r.skipped).toBe(N_MUT);
    expect(r.failures).toEqual([]);
    expect(r.leaks).toEqual([]);
    expect(r.after).toEqual(r.before);
    expect(native.gemmBackend()).toBe(backend);
  });

  // User code can run in the middle of a native call: an array's element getter runs while the
  // binding reads a shape / axes / tensor list. A getter that disposes a tensor of the same call
  // must not leave the binding working on a stale reference.
  test('an argument whose getter disposes a tensor of the same call is refused with an ERR_* code', () => {
    const n = native;
    const mk = (s: number[]) => n.rand(s, 0, -1, 1, 7, 0, 'cpu');
    /** a copy of xs whose element `at` disposes `victim` when read */
    const disposing = <T>(xs: T[], victim: { dispose(): void }, at: number): T[] => {
      const a = xs.slice();
      Object.defineProperty(a, at, { get: () => (victim.dispose(), xs[at]), enumerable: true });
      return a;
    };
    const cases: [string, (made: NativeTensorLike[]) => unknown][] = [
      ['NativeTensor#reshape: shape getter disposes the receiver', (m) => {
        const x = track(m, mk([2, 3]));
        return x.reshape(disposing([3, 2], x, 0));
      }],
      ['NativeTensor#reshape of an empty tensor: shape getter disposes the receiver', (m) => {
        const x = track(m, mk([0, 3]));
        return x.reshape(disposing([0], x, 0));
      }],
      ['permute: axes getter disposes x', (m) => {
        const x = track(m, mk([2, 3, 4]));
        return n.permute(x, disposing([2, 0, 1], x, 0));
      }],
      ['regionPoolBackward: inputShape getter disposes dt', (m) => {
        const dt = track(m, mk([2, 4, 3]));
        return n.regionPoolBackward(dt, disposing([2, 3, 4, 5], dt, 1), 2);
      }],
      ['lambGradClip: a grads getter disposes a later gradient', (m) => {
        const g0 = track(m, mk([3])), g1 = track(m, mk([2]));
        return n.lambGradClip(disposing([g0, g1], g1, 0), 1);
      }],
    ];
    const problems: string[] = [];
    for (const [label, run] of cases) {
      const made: NativeTensorLike[] = [];
      const live = as.memory().tensors;
      let r: unknown;
      try {
        r = run(made);
        problems.push(`${label}: returned instead of throwing`);
      } catch (e) {
        const code = (e as { code?: unknown }).code;
        if (!isError(e) || typeof code !== 'string' || !code.startsWith('ERR_')) problems.push(`${label}: threw without an ERR_ code: ${String(e)}`);
      }
      for (const t of [...made, ...(r && typeof r === 'object' && 'dispose' in r ? [r as NativeTensorLike] : [])]) if (!t.disposed) t.dispose();
      const grew = as.memory().tensors - live;
      if (grew !== 0) problems.push(`${label}: memory().tensors ${grew > 0 ? '+' : ''}${grew} after disposing everything the case made`);
    }
    expect(problems).toEqual([]);
  });

  test('afterwards the process is healthy: a normal op works and memory() is back to the baseline', () => {
    const before = snap();
    const out = as.tidy(() => {
      const a = as.tensor([1, -2, 3, -4], [2, 2]);
      // [[1,-2],[3,-4]] @ itself = [[-5, 6], [-9, 10]]
      return as.functional.relu(as.functional.matmul(a, a)).toArray();
    });
    expect(out).toEqual([[0, 6], [0, 10]]);
    expect(snap()).toEqual(before);
    expect(as.getNumThreads()).toBeGreaterThanOrEqual(1);
  });
});
