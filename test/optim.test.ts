// Optimizers (SGD, AdamW, LAMB) against PyTorch / timm-algorithm fixtures
// (test/fixtures/make_optim_fixtures.py, float64 references), learning-rate schedules against
// torch's schedulers, state-dict round trips, zeroGrad, memory, and argument errors.
import * as fs from 'fs';
import * as path from 'path';
import { types } from 'util';
import * as as from '../lib';
import * as optim from '../lib/optim';
import { native } from '../lib/native';
import { compareArrays } from './helpers/compare';
import { thrown } from './helpers/errors';

const dir = path.join(__dirname, 'fixtures', 'optim');
interface Case {
  name: string;
  file: string;
  optimizer: 'SGD' | 'AdamW' | 'LAMB';
  options: Record<string, unknown>;
  groups: { names: string[]; options: Record<string, unknown> }[];
  params: { name: string; shape: number[] }[];
  steps: number;
}
interface ScheduleCase {
  name: string;
  kind: 'cosineWithWarmup' | 'stepLr' | 'oneCycle';
  options: Record<string, unknown>;
  lrs: number[];
}
const cases: Case[] = JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8'));
const schedules: ScheduleCase[] = JSON.parse(fs.readFileSync(path.join(dir, 'schedules.json'), 'utf8'));

const info = as.backendInfo();
const devices: as.DeviceSpec[] = ['cpu', ...(info.cudaUsable ? ['cuda' as const] : [])];

// float32 updates against float64 references over 5 steps: each step rounds a handful of
// float32 operations per element (~1e-7 relative each) and the parameters move by at most a few
// percent per step, so 1e-5 relative is a 10-50x margin; the absolute floor of 1e-6 x max|p|
// covers entries that pass near zero (a relative error means nothing there). LAMB's trust
// ratio comes from float32 norms summed in double: the same order of error.
const RTOL = 1e-5;
const ATOL_SCALE = 1e-6;


type Named = [string, as.Tensor][];

/** Bit-identical float arrays (Buffer.equals: jest's deep equality is slow on large arrays). */
function sameBits(a: Float32Array, b: Float32Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

function makeOptimizer(kind: string, params: optim.ParamsArg, options: Record<string, unknown>): optim.Optimizer<optim.BaseHyper> {
  switch (kind) {
    case 'SGD':
      return new optim.SGD(params, options as unknown as optim.SGDOptions);
    case 'AdamW':
      return new optim.AdamW(params, options as optim.AdamWOptions);
    case 'LAMB':
      return new optim.LAMB(params, options as optim.LAMBOptions);
  }
  throw new Error(kind);
}

/** Runs a fixture case on a device; returns the comparison of every parameter after every step. */
function runCase(c: Case, device: as.DeviceSpec, via: 'groups' | 'helper' | 'noDecay' = 'groups') {
  const f = as.io.loadSafetensors(path.join(dir, c.file), { device }) as Record<string, as.Tensor>;
  const named: Named = c.params.map((p) => [p.name, as.keep(f[`p0.${p.name}`].to(device)).requiresGrad_()]);
  const byName = new Map(named);
  let opt: optim.Optimizer<optim.BaseHyper>;
  if (via === 'groups') {
    const groups = c.groups.map((g) => ({ params: g.names.map((n): [string, as.Tensor] => [n, byName.get(n)!]), ...g.options }));
    opt = makeOptimizer(c.optimizer, groups, c.options);
  } else if (via === 'helper') {
    const spec = optim.paramGroups(named, { weightDecay: c.options.weightDecay as number });
    expect(spec.map((g) => (g.params as Named).map(([n]) => n))).toEqual(c.groups.map((g) => g.names));
    opt = makeOptimizer(c.optimizer, spec, c.options);
  } else {
    opt = makeOptimizer(c.optimizer, named, { ...c.options, noDecay: optim.isBnOrBias });
    expect(opt.paramGroups.map((g) => g.names)).toEqual(c.groups.map((g) => g.names));
  }
  const results = [];
  for (let k = 0; k < c.steps; k++) {
    for (const [n, p] of named) p.grad = as.keep(new as.Tensor(f[`g${k}.${n}`].handle.reshape(p.shape)));
    opt.step();
    opt.zeroGrad();
    for (const [n, p] of named) {
      results.push(compareArrays(p.toFloat32Array(), f[`p${k + 1}.${n}`].toFloat32Array(), RTOL, ATOL_SCALE, `${device} step ${k + 1} ${n}`));
    }
  }
  opt.dispose();
  for (const [, p] of named) p.dispose();
  for (const t of Object.values(f)) t.dispose();
  return results;
}

beforeAll(() => as.setDefaultDevice('cpu'));
afterAll(() => as.setDefaultDevice(undefined));

describe('optimizers against PyTorch fixtures', () => {
  const rows = cases.flatMap((c) => devices.map((d) => [`${c.name} (${d})`, c, d] as const));
  test.each(rows)('%s', (_n, c, device) => {
    const before = as.memory().tensors;
    const bad = runCase(c, device).filter((r) => !r.ok).map((r) => r.message);
    expect(bad).toEqual([]);
    expect(as.memory().tensors).toBe(before);
  });

  test('paramGroups(…, {exempt: "bn-and-bias"}) and the noDecay option give the fixture groups', () => {
    const c = cases.find((x) => x.name === 'sgd_nesterov')!;
    for (const via of ['helper', 'noDecay'] as const) {
      const bad = runCase(c, 'cpu', via).filter((r) => !r.ok).map((r) => r.message);
      expect(bad).toEqual([]);
    }
  });

  test('the fixtures cover what the contract asks for', () => {
    const names = cases.map((c) => c.name);
    expect(names).toEqual(expect.arrayContaining(['sgd_momentum', 'sgd_nesterov', 'adamw', 'lamb']));
    const sgd = cases.find((c) => c.name === 'sgd_momentum')!;
    expect(sgd.options).toMatchObject({ momentum: 0.9, weightDecay: 5e-4 });
    expect(sgd.groups[1].options).toEqual({ weightDecay: 0 });
    // odd sizes and one above a 4096-element reduction block
    const sizes = sgd.params.map((p) => p.shape.reduce((a, b) => a * b, 1));
    expect(sizes.some((n) => n > 4096)).toBe(true);
    expect(sizes.filter((n) => n % 4 !== 0).length).toBeGreaterThan(2);
  });
});

describe('paramGroups helper', () => {
  test('1-D parameters and biases of a module go to a weightDecay 0 group', () => {
    const m = new as.nn.Sequential(new as.nn.Linear(4, 3), new as.nn.LayerNorm(3), new as.nn.Linear(3, 2, { bias: false }));
    const [decay, exempt] = optim.paramGroups(m, { weightDecay: 0.05 });
    expect(decay.weightDecay).toBe(0.05);
    expect(exempt.weightDecay).toBe(0);
    expect((decay.params as Named).map(([n]) => n)).toEqual(['0.weight', '2.weight']);
    expect((exempt.params as Named).map(([n]) => n)).toEqual(['0.bias', '1.weight', '1.bias']);
    const none = optim.paramGroups(m, { weightDecay: 0.05, exempt: 'none' });
    expect(none[1].params).toEqual([]);
    const opt = new optim.AdamW(optim.paramGroups(m, { weightDecay: 0.05 }));
    expect(opt.paramGroups.map((g) => g.weightDecay)).toEqual([0.05, 0]);
    m.dispose();
  });
});

/** Parameters of awkward sizes with deterministic gradients per step. */
function problem(device: as.DeviceSpec, sizes: number[][] = [[5, 7, 3], [13], [4099], [1]]) {
  as.manualSeed(7);
  const params = sizes.map((s) => as.keep(as.randn(s, { device })).requiresGrad_());
  const setGrads = (k: number) => {
    as.manualSeed(100 + k);
    params.forEach((p, i) => {
      p.grad = as.keep(as.randn(p.shape, { device, std: 0.5 + i }));
    });
  };
  return { params, setGrads };
}

// Each maker takes extra options ({capturable: true} in the capturable tests).
type Maker = (ps: as.Tensor[], extra?: Record<string, unknown>) => optim.Optimizer<optim.BaseHyper>;
const makers: [string, Maker][] = [
  ['SGD nesterov', (ps, x = {}) => new optim.SGD([{ params: ps.slice(0, 2) }, { params: ps.slice(2), weightDecay: 0 }], { lr: 0.1, momentum: 0.9, nesterov: true, weightDecay: 1e-3, ...x })],
  ['SGD dampening', (ps, x = {}) => new optim.SGD(ps, { lr: 0.05, momentum: 0.8, dampening: 0.2, ...x })],
  ['AdamW', (ps, x = {}) => new optim.AdamW([{ params: ps.slice(0, 2) }, { params: ps.slice(2), lr: 3e-3, lrScale: 0.3, weightDecay: 0 }], { lr: 1e-2, ...x })],
  ['LAMB', (ps, x = {}) => new optim.LAMB([{ params: ps.slice(0, 2) }, { params: ps.slice(2), weightDecay: 0 }], { lr: 1e-2, weightDecay: 0.02, ...x })],
  ['LAMB decoupled', (ps, x = {}) => new optim.LAMB(ps, { lr: 1e-2, weightDecay: 0.05, decoupledDecay: true, trustClip: true, maxGradNorm: null, ...x })],
];

describe('state dicts', () => {
  test.each(makers)('%s: 3 steps, save, load into a fresh optimizer, 2 steps == 5 straight (bit-exact)', (_n, make) => {
    const before = as.memory().tensors;
    const baseLr = 0.05;
    const schedule = optim.cosineWithWarmup({ baseLr, warmupSteps: 2, totalSteps: 5, minLr: 0.001 });
    const straight = problem('cpu');
    const o1 = make(straight.params);
    const s1 = new optim.LrScheduler(o1, schedule);
    for (let k = 0; k < 5; k++) {
      straight.setGrads(k);
      o1.step();
      s1.step();
      o1.zeroGrad();
    }

    const resumed = problem('cpu');
    const o2 = make(resumed.params);
    const s2 = new optim.LrScheduler(o2, schedule);
    for (let k = 0; k < 3; k++) {
      resumed.setGrads(k);
      o2.step();
      s2.step();
      o2.zeroGrad();
    }
    const sd = o2.stateDict();
    const ssd = s2.stateDict();
    expect(ssd).toEqual({ step: 3 });
    expect(sd.paramGroups.flatMap((g) => g.params)).toEqual([0, 1, 2, 3]);
    const lrsAt3 = o2.paramGroups.map((g) => g.lr);
    // a fresh optimizer (another lr: hyper-parameters come from the state dict) over fresh
    // parameters that take over the resumed run's values
    const fresh = problem('cpu');
    fresh.params.forEach((p, i) => as.noGrad(() => p._setData(resumed.params[i].detach())));
    resumed.params.forEach((p) => p.dispose());
    const o3 = make(fresh.params);
    o3.lr = 123;
    o3.loadStateDict(sd);
    expect(o3.paramGroups.map((g) => g.lr)).toEqual(lrsAt3);
    o2.dispose(); // the loaded state is a copy: freeing the original must not matter
    const s3 = new optim.LrScheduler(o3, schedule);
    s3.loadStateDict(ssd);
    expect(s3.currentStep).toBe(3);
    for (let k = 3; k < 5; k++) {
      fresh.setGrads(k);
      o3.step();
      s3.step();
      o3.zeroGrad();
    }
    expect(fresh.params.map((p, i) => sameBits(p.toFloat32Array(), straight.params[i].toFloat32Array()))).toEqual(fresh.params.map(() => true));
    const a = o1.stateDict(), b = o3.stateDict();
    expect(Object.keys(b.state)).toEqual(Object.keys(a.state));
    for (const [k, st] of Object.entries(a.state)) {
      for (const [name, v] of Object.entries(st)) {
        const w = (b.state as Record<string, Record<string, unknown>>)[k][name];
        if (v instanceof as.Tensor) expect(sameBits((w as as.Tensor).toFloat32Array(), v.toFloat32Array())).toBe(true);
        else expect(w).toEqual(v);
      }
    }
    expect(b.paramGroups).toEqual(a.paramGroups);
    for (const o of [o1, o3]) o.dispose();
    for (const p of [...straight.params, ...fresh.params]) p.dispose();
    expect(as.memory().tensors).toBe(before);
  });

  test('stateDict layout: PyTorch-style indices, buffers, steps and hyper-parameters', () => {
    const { params, setGrads } = problem('cpu', [[3, 2], [5]]);
    const opt = new optim.AdamW([{ params: [params[0]] }, { params: [params[1]], weightDecay: 0, lrScale: 0.5 }], { lr: 0.01 });
    expect(opt.stateDict()).toEqual({
      state: {},
      paramGroups: [
        { params: [0], lr: 0.01, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.01, lrScale: 1 },
        { params: [1], lr: 0.01, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0, lrScale: 0.5 },
      ],
    });
    setGrads(0);
    params[1].grad!.dispose();
    params[1].grad = null; // a parameter without a gradient is skipped and gets no state
    opt.step();
    const sd = opt.stateDict();
    expect(Object.keys(sd.state)).toEqual(['0']);
    expect(sd.state[0].step).toBe(1);
    expect((sd.state[0].exp_avg as as.Tensor).shape).toEqual([3, 2]);
    expect((sd.state[0].exp_avg_sq as as.Tensor).device).toBe('cpu');
    const lamb = new optim.LAMB(params, { weightDecay: 0.01 });
    lamb.step();
    lamb.step();
    expect(lamb.stateDict().paramGroups[0].step).toBe(2);
    expect(lamb.groupStep(0)).toBe(2);
    opt.zeroGrad();
    for (const o of [opt, lamb]) o.dispose();
    params.forEach((p) => p.dispose());
  });

  test('loadStateDict rejects mismatched states without changing anything', () => {
    const { params, setGrads } = problem('cpu', [[3, 2], [5]]);
    const opt = new optim.SGD(params, { lr: 0.1, momentum: 0.9 });
    setGrads(0);
    opt.step();
    const sd = opt.stateDict();
    const other = problem('cpu', [[2, 3], [5]]);
    const o2 = new optim.SGD(other.params, { lr: 0.1, momentum: 0.9 });
    thrown(() => o2.loadStateDict(sd), 'ERR_SHAPE');
    expect(o2.stateDict().state).toEqual({});
    const o3 = new optim.SGD([{ params: [params[0]] }, { params: [params[1]] }], { lr: 0.1, momentum: 0.9 });
    thrown(() => o3.loadStateDict(sd), 'ERR_ARG');
    const bad = { ...sd, state: { 0: { ...sd.state[0], exp_avg: sd.state[0].momentum_buffer } } };
    expect(thrown(() => opt.loadStateDict(bad as optim.OptimizerStateDict), 'ERR_ARG').message).toMatch(/unknown buffer 'exp_avg'/);
    opt.loadStateDict(opt.stateDict()); // its own state: a no-op, not a use-after-free
    expect(Object.keys(opt.stateDict().state)).toEqual(['0', '1']);
    thrown(() => opt.loadStateDict({ ...sd, paramGroups: [{ ...sd.paramGroups[0], lr: -1 }] }), 'ERR_ARG');
    opt.zeroGrad();
    for (const o of [opt, o2, o3]) o.dispose();
    [...params, ...other.params].forEach((p) => p.dispose());
  });
});

/** Runs `steps` steps of an optimizer from make() under a cosine schedule; returns it and the parameters. */
function scheduledRun(make: Maker, extra: Record<string, unknown>, steps: number, from?: { sd: optim.OptimizerStateDict; params: as.Tensor[]; at: number }) {
  const run = problem('cpu');
  if (from) run.params.forEach((p, i) => as.noGrad(() => p._setData(from.params[i].detach())));
  const o = make(run.params, extra);
  if (from) o.loadStateDict(from.sd);
  const s = new optim.LrScheduler(o, optim.cosineWithWarmup({ baseLr: 0.05, warmupSteps: 2, totalSteps: 6, minLr: 0.001 }));
  if (from) s.loadStateDict({ step: from.at });
  for (let k = from?.at ?? 0; k < steps; k++) {
    run.setGrads(k);
    o.step();
    s.step();
    o.zeroGrad();
  }
  return { o, params: run.params, setGrads: run.setGrads };
}

/** Two steps of opt over params, the second without params[1]'s gradient; the state dict. */
function skippedStepState(opt: optim.Optimizer<optim.BaseHyper>, params: as.Tensor[], setGrads: (k: number) => void): optim.OptimizerStateDict {
  setGrads(0);
  opt.step();
  params[1].grad!.dispose();
  params[1].grad = null;
  opt.step(); // only params[0] is updated: steps 2 and 1
  return opt.stateDict();
}

function expectSameState(a: optim.OptimizerStateDict, b: optim.OptimizerStateDict): void {
  expect(Object.keys(b.state)).toEqual(Object.keys(a.state));
  for (const [k, st] of Object.entries(a.state)) {
    for (const [name, v] of Object.entries(st)) {
      const w = (b.state as Record<string, Record<string, unknown>>)[k][name];
      if (v instanceof as.Tensor) expect([k, name, sameBits((w as as.Tensor).toFloat32Array(), v.toFloat32Array())]).toEqual([k, name, true]);
      else expect([k, name, w]).toEqual([k, name, v]);
    }
  }
  expect(b.paramGroups).toEqual(a.paramGroups);
}

describe('capturable optimizers (lr and step count on the device)', () => {
  test.each(makers)('%s: the same bits as the eager optimizer over 6 scheduled steps, and the same state dict', (_n, make) => {
    const before = as.memory().tensors;
    const eager = scheduledRun(make, {}, 6);
    const cap = scheduledRun(make, { capturable: true }, 6);
    expect(cap.o.capturable).toBe(true);
    expect(cap.params.map((p, i) => sameBits(p.toFloat32Array(), eager.params[i].toFloat32Array()))).toEqual(cap.params.map(() => true));
    expectSameState(eager.o.stateDict(), cap.o.stateDict());
    for (const r of [eager, cap]) {
      r.o.dispose();
      for (const p of r.params) p.dispose();
    }
    expect(as.memory().tensors).toBe(before);
  });

  test.each(makers)('%s: state dicts move between capturable and eager optimizers mid-run', (_n, make) => {
    const straight = scheduledRun(make, {}, 6);
    for (const [first, second] of [[{ capturable: true }, {}], [{}, { capturable: true }]] as Record<string, unknown>[][]) {
      const head = scheduledRun(make, first, 3);
      const tail = scheduledRun(make, second, 6, { sd: head.o.stateDict(), params: head.params, at: 3 });
      expect(tail.params.map((p, i) => sameBits(p.toFloat32Array(), straight.params[i].toFloat32Array()))).toEqual(tail.params.map(() => true));
      expectSameState(straight.o.stateDict(), tail.o.stateDict());
      for (const r of [head, tail]) {
        r.o.dispose();
        for (const p of r.params) p.dispose();
      }
    }
    straight.o.dispose();
    for (const p of straight.params) p.dispose();
  });

  test.each(makers)('%s: a step with a bad gradient changes nothing (parameters, buffers, step counts), as without capturable', (_n, make) => {
    const runs = [{}, { capturable: true }].map((extra) => {
      const { params, setGrads } = problem('cpu');
      const o = make(params, extra);
      setGrads(0);
      o.step();
      setGrads(1);
      const last = params[params.length - 1];
      const good = last.grad!;
      last.grad = as.keep(as.zeros([2]));
      expect(thrown(() => o.step(), 'ERR_SHAPE').message).toMatch(/the gradient of param group \d+, parameter \d+ has shape \[2\], expected the parameter's shape \[1\]/);
      last.grad.dispose();
      last.grad = good;
      o.step();
      return { o, params };
    });
    const [eager, cap] = runs;
    expect(cap.params.map((p, i) => sameBits(p.toFloat32Array(), eager.params[i].toFloat32Array()))).toEqual(cap.params.map(() => true));
    expectSameState(eager.o.stateDict(), cap.o.stateDict());
    for (const r of runs) {
      r.o.dispose();
      for (const p of r.params) p.dispose();
    }
  });

  test.each(makers)('%s: loading a state into a capturable optimizer that has already stepped continues exactly', (_n, make) => {
    const straight = scheduledRun(make, {}, 6);
    const head = scheduledRun(make, {}, 3);
    // an optimizer that has stepped on other values: its schedule and buffers exist
    const other = scheduledRun(make, { capturable: true }, 2);
    const buffersBefore = Object.values(other.o.stateDict().state).flatMap((st) => Object.values(st).filter((v): v is as.Tensor => v instanceof as.Tensor));
    other.params.forEach((p, i) => as.noGrad(() => p._setData(head.params[i].detach())));
    other.o.loadStateDict(head.o.stateDict());
    // the buffers took the values in place (a CUDA graph that updates them stays valid)
    const buffersAfter = Object.values(other.o.stateDict().state).flatMap((st) => Object.values(st).filter((v): v is as.Tensor => v instanceof as.Tensor));
    expect(buffersAfter.every((t, i) => t === buffersBefore[i] && !t.isDisposed)).toBe(true);
    const s = new optim.LrScheduler(other.o, optim.cosineWithWarmup({ baseLr: 0.05, warmupSteps: 2, totalSteps: 6, minLr: 0.001 }));
    s.loadStateDict({ step: 3 });
    for (let k = 3; k < 6; k++) {
      other.setGrads(k);
      other.o.step();
      s.step();
      other.o.zeroGrad();
    }
    expect(other.params.map((p, i) => sameBits(p.toFloat32Array(), straight.params[i].toFloat32Array()))).toEqual(other.params.map(() => true));
    expectSameState(straight.o.stateDict(), other.o.stateDict());
    for (const r of [straight, head, other]) {
      r.o.dispose();
      for (const p of r.params) p.dispose();
    }
  });

  test('LAMB counts its steps per group: an eager state whose parameters skipped steps loads into a capturable LAMB', () => {
    const { params, setGrads } = problem('cpu', [[3], [4]]);
    const eager = new optim.LAMB(params, { lr: 1e-2 });
    const sd = skippedStepState(eager, params, setGrads);
    expect([sd.state[0].step, sd.state[1].step, sd.paramGroups[0].step]).toEqual([2, 1, 2]);
    const cap = new optim.LAMB(params, { lr: 1e-2, capturable: true });
    cap.loadStateDict(sd);
    expect(cap.groupStep(0)).toBe(2);
    setGrads(1);
    cap.step();
    expect(cap.groupStep(0)).toBe(3);
    for (const o of [eager, cap]) o.dispose();
    for (const p of params) p.dispose();
  });

  test('a step count above 2^24 is refused before anything changes', () => {
    const { params, setGrads } = problem('cpu', [[3]]);
    const src = new optim.AdamW(params, { lr: 1e-2 });
    setGrads(0);
    src.step();
    const sd = src.stateDict();
    sd.state[0].step = 2 ** 24 + 5;
    sd.paramGroups[0].lr = 0.5;
    const cap = new optim.AdamW(params, { lr: 1e-2, capturable: true });
    cap.step();
    const before = cap.stateDict();
    const m = (before.state[0].exp_avg as as.Tensor).toFloat32Array();
    expect(thrown(() => cap.loadStateDict(sd), 'ERR_ARG').message).toMatch(/group 0's step count 16777221 is above 2\^24, the most a capturable optimizer counts/);
    const after = cap.stateDict();
    expect([after.paramGroups[0].lr, after.state[0].step]).toEqual([1e-2, 1]);
    expect(sameBits((after.state[0].exp_avg as as.Tensor).toFloat32Array(), m)).toBe(true);
    for (const o of [src, cap]) o.dispose();
    for (const p of params) p.dispose();
  });

  test('a group counts one step: a state whose parameters disagree is refused; capturable must be a boolean', () => {
    const { params, setGrads } = problem('cpu', [[3], [4]]);
    const eager = new optim.AdamW(params, { lr: 1e-2 });
    const sd = skippedStepState(eager, params, setGrads);
    expect([sd.state[0].step, sd.state[1].step]).toEqual([2, 1]);
    const cap = new optim.AdamW(params, { lr: 1e-2, capturable: true });
    expect(thrown(() => cap.loadStateDict(sd), 'ERR_ARG').message).toMatch(/counts steps per group, but the state gives the parameters of group 0 different step counts \(2, 1\)/);
    expect(thrown(() => new optim.SGD(params, { lr: 1, capturable: 1 as unknown as boolean }), 'ERR_ARG').message).toMatch(/SGD: capturable must be a boolean, got 1/);
    // the lr of a capturable group is still validated on assignment
    expect(thrown(() => { cap.paramGroups[0].lr = -1; }, 'ERR_ARG').message).toMatch(/param group 0: lr must be a finite number >= 0, got -1/);
    for (const o of [eager, cap]) o.dispose();
    for (const p of params) p.dispose();
  });
});

describe('zeroGrad, skipped parameters, memory', () => {
  test('zeroGrad disposes every gradient and sets it to null; step without gradients changes nothing', () => {
    const before = as.memory().tensors;
    const { params, setGrads } = problem('cpu');
    const opt = new optim.SGD(params, { lr: 0.1, momentum: 0.9 });
    setGrads(0);
    const grads = params.map((p) => p.grad!);
    opt.zeroGrad();
    expect(params.every((p) => p.grad === null)).toBe(true);
    expect(grads.every((g) => g.isDisposed)).toBe(true);
    const values = params.map((p) => p.toFloat32Array());
    opt.step();
    params.forEach((p, i) => expect(p.toFloat32Array()).toEqual(values[i]));
    expect(opt.stateDict().state).toEqual({});
    opt.dispose();
    params.forEach((p) => p.dispose());
    expect(as.memory().tensors).toBe(before);
  });

  test('a disposed state buffer (a failed CUDA graph capture made it) restarts the state', () => {
    // SGD's first step takes buf = g; later ones buf = momentum * buf + (1 - dampening) * g, so a
    // restarted state is visible in the update.
    const run = (disposeBuffer: boolean) => {
      const p = as.tensor([1, -2, 3]).requiresGrad_();
      const opt = new optim.SGD([p], { lr: 0.5, momentum: 0.9, dampening: 0.5 });
      for (let i = 0; i < 2; i++) {
        p.grad = as.tensor([0.5, 1, -1]);
        if (i === 1 && disposeBuffer) (opt.stateDict().state['0'].momentum_buffer as as.Tensor).dispose();
        opt.step();
        p.grad.dispose();
      }
      const out = Array.from(p.toFloat32Array());
      opt.dispose();
      p.dispose();
      return out;
    };
    const kept = run(false), restarted = run(true);
    // kept: buf1 = g, p1 = p0 - 0.5 g; buf2 = 0.9 g + 0.5 g = 1.4 g, p2 = p1 - 0.7 g
    // restarted: buf2 = g again, p2 = p1 - 0.5 g
    const p0 = [1, -2, 3], g = [0.5, 1, -1];
    kept.forEach((v, i) => expect(v).toBeCloseTo(p0[i] - 1.2 * g[i], 6));
    restarted.forEach((v, i) => expect(v).toBeCloseTo(p0[i] - 1.0 * g[i], 6));
  });

  test('step() inside tidy keeps the state buffers and records no graph', () => {
    const { params, setGrads } = problem('cpu', [[6], [3, 3]]);
    const opt = new optim.LAMB(params, { weightDecay: 0.01 });
    as.tidy(() => {
      setGrads(0);
      opt.step();
      opt.zeroGrad();
    });
    const st = opt.stateDict().state;
    expect((st[0].exp_avg as as.Tensor).isDisposed).toBe(false);
    expect(params.every((p) => p.isLeaf && p.gradFn === null)).toBe(true);
    opt.dispose();
    params.forEach((p) => p.dispose());
  });

  test('CPU results do not depend on the thread count (LAMB norms, global clip)', () => {
    const run = (threads: number) => {
      const saved = as.getNumThreads();
      as.setNumThreads(threads);
      try {
        const { params, setGrads } = problem('cpu', [[40001], [4096 * 3 + 5]]);
        const opt = new optim.LAMB(params, { lr: 0.05, weightDecay: 0.1, alwaysAdapt: true });
        for (let k = 0; k < 3; k++) {
          setGrads(k);
          opt.step();
          opt.zeroGrad();
        }
        const out = params.map((p) => p.toFloat32Array());
        opt.dispose();
        params.forEach((p) => p.dispose());
        return out;
      } finally {
        as.setNumThreads(saved);
      }
    };
    const one = run(1);
    const many = run(Math.max(2, info.cpuThreads));
    expect(many.map((a, i) => sameBits(a, one[i]))).toEqual([true, true]);
  });
});

describe('learning rate', () => {
  test('lr get/set for all groups and per group; LrScheduler uses lrScale', () => {
    const { params } = problem('cpu', [[2], [3]]);
    const opt = new optim.SGD([{ params: [params[0]] }, { params: [params[1]], lr: 0.5, lrScale: 0.1 }], { lr: 1 });
    expect(opt.lr).toBe(1);
    expect(opt.getLr(1)).toBe(0.5);
    opt.setLr(0.25, 1);
    expect(opt.paramGroups[1].lr).toBe(0.25);
    opt.lr = 0.3;
    expect(opt.paramGroups.map((g) => g.lr)).toEqual([0.3, 0.3]);
    const sched = new optim.LrScheduler(opt, optim.stepLr({ baseLr: 2, stepSize: 2, gamma: 0.5 }));
    expect(sched.lastLr).toEqual([2, 0.2]);
    sched.step();
    sched.step();
    expect(sched.currentStep).toBe(2);
    expect(sched.lastLr).toEqual([1, 0.1]);
    thrown(() => opt.getLr(2), 'ERR_ARG');
    opt.dispose();
    params.forEach((p) => p.dispose());
  });
});

describe('schedules against torch.optim.lr_scheduler', () => {
  test.each(schedules.map((s) => [s.name, s] as const))('%s', (_n, s) => {
    const sched = (optim as unknown as Record<string, (o: unknown) => optim.LrSchedule>)[s.kind](s.options);
    // torch builds some of these recursively (StepLR multiplies, CosineAnnealingLR recurs):
    // double rounding differences only
    s.lrs.forEach((want, step) => {
      const got = sched.lrAt(step);
      expect(Math.abs(got - want)).toBeLessThanOrEqual(1e-12 + 1e-9 * Math.abs(want));
    });
    // and through LrScheduler on an optimizer
    const { params } = problem('cpu', [[2]]);
    const opt = new optim.SGD(params, { lr: 1 });
    const ls = new optim.LrScheduler(opt, sched);
    const seen = [opt.lr];
    for (let k = 1; k < s.lrs.length; k++) {
      ls.step();
      seen.push(opt.lr);
    }
    seen.forEach((v, k) => expect(Math.abs(v - s.lrs[k])).toBeLessThanOrEqual(1e-12 + 1e-9 * Math.abs(s.lrs[k])));
    opt.dispose();
    params.forEach((p) => p.dispose());
  });

  test('cosineWithWarmup stays at minLr after totalSteps; oneCycle ends at totalSteps', () => {
    const c = optim.cosineWithWarmup({ baseLr: 1, warmupSteps: 2, totalSteps: 10, minLr: 0.1 });
    expect(c.lrAt(10)).toBeCloseTo(0.1, 12);
    expect(c.lrAt(1000)).toBeCloseTo(0.1, 12);
    const o = optim.oneCycle({ maxLr: 1, totalSteps: 10 });
    expect(Number.isFinite(o.lrAt(10))).toBe(true);
    thrown(() => o.lrAt(11), 'ERR_ARG');
  });
});

describe('errors', () => {
  const p = () => as.keep(as.zeros([3]));
  test('bad hyper-parameters give ERR_ARG with the option named', () => {
    const t = p();
    const cases: [() => unknown, RegExp][] = [
      [() => new optim.SGD([t], { lr: -0.1 }), /lr must be a finite number >= 0, got -0.1/],
      [() => new optim.SGD([t], {} as optim.SGDOptions), /lr must be a finite number >= 0, got undefined/],
      [() => new optim.SGD([t], { lr: 0.1, momentum: -1 }), /momentum/],
      [() => new optim.SGD([t], { lr: 0.1, nesterov: true }), /Nesterov momentum requires momentum > 0/],
      [() => new optim.SGD([t], { lr: 0.1, momentum: 0.9, nesterov: true, dampening: 0.1 }), /dampening 0/],
      [() => new optim.SGD([t], { lr: 0.1, weightDecay: NaN }), /weightDecay/],
      [() => new optim.AdamW([t], { betas: [0.9, 1] }), /betas\[1\] must be in \[0, 1\)/],
      [() => new optim.AdamW([t], { eps: -1 }), /eps/],
      [() => new optim.AdamW([t], { lr: Infinity }), /lr/],
      [() => new optim.LAMB([t], { maxGradNorm: 0 }), /maxGradNorm must be a finite number > 0 or null/],
      [() => new optim.LAMB([t], { trustClip: 1 as unknown as boolean }), /trustClip must be a boolean/],
      [() => new optim.LAMB([t], { betas: [-0.1, 0.9] }), /betas\[0\]/],
      [() => new optim.SGD([], { lr: 0.1 }), /empty parameter list/],
      [() => new optim.SGD([t, t], { lr: 0.1 }), /appears more than once/],
      [() => new optim.SGD([{ params: [t] }, { params: [t] }], { lr: 0.1 }), /appears more than once/],
      [() => new optim.SGD([{ params: [t], weight_decay: 0 }], { lr: 0.1 }), /unknown option 'weight_decay'/],
      [() => new optim.SGD([3 as unknown as as.Tensor], { lr: 0.1 }), /must be a Tensor/],
      [() => new optim.SGD([{ params: [t], lrScale: -1 }], { lr: 0.1 }), /lrScale/],
      [() => new optim.SGD([t], { lr: 0.1, weight_decay: 0.1 } as optim.SGDOptions), /SGD: unknown option 'weight_decay'/],
      [() => new optim.AdamW([t], { maxGradNorm: 1 } as optim.AdamWOptions), /AdamW: unknown option 'maxGradNorm'/],
      [() => optim.cosineWithWarmup({ baseLr: 1, warmupSteps: 10, totalSteps: 10 }), /totalSteps \(10\) must be greater than warmupSteps/],
      [() => optim.stepLr({ baseLr: 1, stepSize: 0 }), /stepSize must be an integer >= 1/],
      [() => optim.oneCycle({ maxLr: 1, totalSteps: 10, pctStart: 1.5 }), /pctStart/],
      [() => optim.oneCycle({ maxLr: 1, totalSteps: 10, anneal: 'exp' as 'cos' }), /anneal/],
      [() => optim.stepLr({ baseLr: 1, stepSize: 2 }).lrAt(-1), /step must be an integer >= 0/],
      [() => optim.paramGroups([['w', t]], { weightDecay: -1 }), /weightDecay/],
    ];
    for (const [fn, msg] of cases) expect(thrown(fn, 'ERR_ARG').message).toMatch(msg);
    const opt = new optim.SGD([t], { lr: 0.1 });
    thrown(() => {
      opt.lr = NaN;
    }, 'ERR_ARG');
    opt.paramGroups[0].lr = -1; // set directly: caught at the next step
    thrown(() => opt.step(), 'ERR_ARG');
    t.dispose();
  });

  test('gradients of the wrong shape or device, and raw bindings with bad values', () => {
    const t = p().requiresGrad_();
    t.grad = as.keep(as.zeros([4]));
    const opt = new optim.AdamW([t]);
    expect(thrown(() => opt.step(), 'ERR_SHAPE').message).toMatch(/AdamW: the gradient of param group 0, parameter 0 has shape \[4\], expected the parameter's shape \[3\]/);
    opt.zeroGrad();
    const a = native.full([3], 1, 'cpu'), b = native.full([3], 1, 'cpu'), c = native.full([3], 0, 'cpu');
    expect(thrown(() => native.sgdStep(a, b, c, -1, 0.9, 0, false, 0, true), 'ERR_ARG').message).toMatch(/sgd_step: 'lr' must be a finite number >= 0/);
    expect(thrown(() => native.sgdStep(a, a, c, 0.1, 0.9, 0, false, 0, true), 'ERR_ARG').message).toMatch(/must not share memory/);
    expect(thrown(() => native.adamwStep(a, b, c, c, 0.1, 0.9, 0.999, 1e-8, 0, 1), 'ERR_ARG').message).toMatch(/'expAvg' and 'expAvgSq' must be different/);
    expect(thrown(() => native.adamwStep(a, b, c, native.full([3], 0, 'cpu'), 0.1, 0.9, 0.999, 1e-8, 0, 0), 'ERR_ARG').message).toMatch(/'step' must be an integer in \[1,/);
    expect(thrown(() => native.lambGradClip([], 1), 'ERR_ARG').message).toMatch(/at least one gradient/);
    expect(thrown(() => native.lambGradClip([a], 0), 'ERR_ARG').message).toMatch(/maxGradNorm/);
    // schedules of capturable optimizers
    expect(thrown(() => native.optimSchedNew('cpu', 0.1, 2 ** 24 + 1), 'ERR_ARG').message).toMatch(/optimSchedNew: 'step' must be an integer in \[0, 16777216\]/);
    expect(thrown(() => native.optimSchedNew('cpu', -1, 0), 'ERR_ARG').message).toMatch(/optim_sched_new: 'lr' must be a finite number >= 0/);
    const sched = native.optimSchedNew('cpu', 0.1, 3);
    expect(Array.from(sched.toFloat32Array().slice(0, 2))).toEqual([Math.fround(0.1), 3]);
    expect(thrown(() => native.optimSchedWrite(sched, 2 as 0, 1), 'ERR_ARG').message).toMatch(/optimSchedWrite: 'index' must be an integer in \[0, 1\]/);
    expect(thrown(() => native.optimSchedWrite(sched, 1, 2.5), 'ERR_ARG').message).toMatch(/optimSchedWrite: 'value' must be an integer in \[0, 16777216\]/);
    expect(thrown(() => native.optimSchedWrite(sched, 1, 2 ** 24 + 1), 'ERR_ARG').message).toMatch(/optimSchedWrite: 'value' must be an integer in \[0, 16777216\]/);
    const [p8, g8, m8, v8] = [0, 1, 2, 3].map(() => native.full([8], 0, 'cpu'));
    expect(thrown(() => native.adamwStep(p8, g8, m8, v8, 0.1, 0.9, 0.999, 1e-8, 0, 1, m8), 'ERR_ARG').message).toMatch(/adamw_step: the schedule tensor must not share memory with the parameter, its gradient or its state buffers/);
    for (const h of [p8, g8, m8, v8]) h.dispose();
    expect(thrown(() => native.optimAdvance(sched, 'adam' as 'adamw', 0.9, 0.999, 0, true, false), 'ERR_ARG').message).toMatch(/'kind' must be 'sgd', 'adamw' or 'lamb'/);
    expect(thrown(() => native.adamwStep(a, b, c, native.full([3], 0, 'cpu'), 0.1, 0.9, 0.999, 1e-8, 0, 1, b), 'ERR_SHAPE').message).toMatch(/adamw_step: a schedule tensor has shape \[8\], got \[3\]/);
    native.optimAdvance(sched, 'adamw', 0.9, 0.999, 0, true, false);
    expect(sched.toFloat32Array()[1]).toBe(4);
    sched.dispose();
    for (const h of [a, b, c]) h.dispose();
    opt.dispose();
    t.dispose();
  });
});

describe('LAMB with a NaN gradient element', () => {
  test("the global clip factor stays 1 (timm's where(norm > max, ...)): only that element's parameter turns NaN", () => {
    const a = as.keep(as.tensor([1, 2, 3])).requiresGrad_();
    const b = as.keep(as.tensor([4, 5])).requiresGrad_();
    a.grad = as.keep(as.tensor([1, NaN, 1]));
    b.grad = as.keep(as.tensor([1, 1]));
    const opt = new optim.LAMB([a, b], { lr: 1e-3 });
    opt.step();
    const pa = Array.from(a.toFloat32Array()), pb = Array.from(b.toFloat32Array());
    expect(pa.map(Number.isNaN)).toEqual([false, true, false]);
    expect(pb.every(Number.isFinite)).toBe(true);
    opt.dispose();
    for (const p of [a, b]) { p.grad!.dispose(); p.dispose(); }
  });
});
