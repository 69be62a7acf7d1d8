// Whole ResNets against PyTorch (test/fixtures/make_resnet_fixtures.py, float64 references):
// ResNet-20 (CIFAR layout, 1 input channel, 10 classes) with every activation, one training
// step end to end -- training-mode logits, the label-smoothed cross-entropy, every parameter
// gradient, the updated running statistics and num_batches_tracked, one SGD step (momentum
// 0.9, weight decay 5e-4) -- and eval-mode logits with the updated statistics. Also: the fused
// BN + activation path against the unfused one, state-dict names, a save/load round trip
// through safetensors, handle hygiene of a training step, and a small model that fits random
// labels.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as as from '../lib';
import { ResNet, resnet } from '../lib/nn/resnet';
import { IntTensor, isIntTensor } from '../lib/io/safetensors';
import { crossEntropy } from '../lib/ops/loss';
import { SGD } from '../lib/optim';
import { CloseResult, compareArrays } from './helpers/compare';
import { Prng } from './helpers/prng';

const dir = path.join(__dirname, 'fixtures', 'resnet');
interface Case {
  name: string;
  file: string;
  model: 'resnet20';
  act: as.nn.ActivationName;
  inChannels: number;
  numClasses: number;
  inputShape: number[];
  labelSmoothing: number;
  sgd: { lr: number; momentum: number; weightDecay: number; dampening: number; nesterov: boolean };
  hasStep: boolean;
}
const cases: Case[] = JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8'));

// float32 through 20 layers against float64: relative 1e-4 per element with an absolute floor of
// 1e-5 x the tensor's largest magnitude (test/helpers/compare.ts). Gradients go through the
// network twice (forward and back) and get a floor of 3e-5 x their scale. Measured worst cases
// (RESNET_REPORT=1): logits 8.5e-7, gradients 8.7e-6 (AdaShift-MA), running statistics 1.5e-7,
// eval logits 5.2e-7, SGD step 8.3e-7 of the tensor's scale.
const RTOL = 1e-4;
const ATOL_SCALE = 1e-5;
const GRAD_ATOL_SCALE = 3e-5;
// The fused and unfused paths differ only by float32 rounding: fused BN + AdaShift-B takes the
// pooled mean of BN's output from BN's own per-(n, c) sums instead of pooling the output, which
// differs in the last bits and is carried through 20 layers (measured: up to ~4e-6 of the
// tensor's scale; ReLU and SiLU come out bit-identical).
const FUSED_RTOL = 1e-5;
const FUSED_ATOL_SCALE = 2e-5;

type Entry = as.Tensor | IntTensor;
type Fixture = Record<string, Entry>;

// On the CPU unless ADASHIFT_TEST_DEVICE names another device: the CPU emulation of CUDA
// (cuda_emu_jest) and scripts/gpu-check.sh run these comparisons on 'cuda' too.
beforeAll(() => as.setDefaultDevice((process.env.ADASHIFT_TEST_DEVICE as as.DeviceSpec | undefined) || 'cpu'));
afterAll(() => as.setDefaultDevice(undefined));

const fixtures = new Map<string, Fixture>();
function load(c: Case): Fixture {
  let f = fixtures.get(c.name);
  if (!f) {
    f = as.io.loadSafetensors(path.join(dir, c.file)) as Fixture;
    for (const v of Object.values(f)) if (v instanceof as.Tensor) as.keep(v);
    fixtures.set(c.name, f);
  }
  return f;
}
afterAll(() => {
  for (const f of fixtures.values()) for (const v of Object.values(f)) if (v instanceof as.Tensor) v.dispose();
  fixtures.clear();
});

const T = (f: Fixture, k: string): as.Tensor => {
  const v = f[k];
  if (!(v instanceof as.Tensor)) throw new Error(`fixture has no float tensor '${k}'`);
  return v;
};
const I = (f: Fixture, k: string): bigint => {
  const v = f[k];
  if (!isIntTensor(v)) throw new Error(`fixture has no integer tensor '${k}'`);
  return BigInt(v.data[0]);
};
const arr = (t: as.Tensor | null | undefined): Float32Array => {
  if (!t) throw new Error('missing tensor (no gradient reached it?)');
  return t.toFloat32Array();
};
const maxAbs = (a: ArrayLike<number>): number => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
};
const sameBits = (a: Float32Array, b: Float32Array): boolean =>
  a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
const failures = (rs: CloseResult[]) => rs.filter((r) => !r.ok).map((r) => r.message);
const parentOf = (name: string) => name.slice(0, name.lastIndexOf('.'));

/**
 * The fixture's state dict before the step ('param.<name>' without the prefix). With
 * copy = true the tensors are fresh copies (the caller disposes them), so that nothing the
 * model does in place can reach the fixture's own tensors (loadStateDict currently shares the
 * source's storage instead of copying it: see the 'loadStateDict copies' test).
 */
function stateOf(f: Fixture, copy = false): Record<string, Entry> {
  const sd: Record<string, Entry> = {};
  for (const [k, v] of Object.entries(f)) {
    if (!k.startsWith('param.')) continue;
    sd[k.slice('param.'.length)] = copy && v instanceof as.Tensor ? as.tensor(v.toFloat32Array(), v.shape) : v;
  }
  return sd;
}
const disposeAll = (d: Record<string, Entry>) => {
  for (const v of Object.values(d)) if (v instanceof as.Tensor) v.dispose();
};
const labelsOf = (f: Fixture): number[] => Array.from((f.labels as IntTensor).data, Number);

function build(c: Case, f: Fixture, fused = true): ResNet {
  const m = resnet(c.model, { act: c.act, inChannels: c.inChannels, numClasses: c.numClasses, fused });
  const sd = stateOf(f, true);
  try {
    expect(m.loadStateDict(sd)).toEqual({ missing: [], unexpected: [] });
  } finally {
    disposeAll(sd);
  }
  return m;
}

/** Training-mode forward + label-smoothed cross-entropy + backward. */
function trainStep(m: ResNet, c: Case, f: Fixture): { logits: Float32Array; loss: number } {
  return as.tidy(() => {
    m.train();
    const logits = m.forward(T(f, 'x'));
    const loss = crossEntropy(logits, labelsOf(f), { labelSmoothing: c.labelSmoothing });
    loss.backward();
    return { logits: logits.toFloat32Array(), loss: loss.item() };
  });
}

function evalLogits(m: ResNet, f: Fixture): Float32Array {
  m.eval();
  const out = as.tidy(() => as.noGrad(() => m.forward(T(f, 'x')).toFloat32Array()));
  m.train();
  return out;
}

// What each comparison used of its tolerance, per quantity and activation: the largest error
// relative to the tensor's largest magnitude, and the largest |a - b| / (atol + rtol |b|)
// (1 = at the tolerance). Printed with RESNET_REPORT=1.
const report: Record<string, Record<string, { err: number; used: number }>> = {};
function close(act: string, what: string, actual: Float32Array, ref: Float32Array, rtol: number, atolScale: number, label: string, floor = 0): CloseResult {
  const r = compareArrays(actual, ref, rtol, atolScale, label, floor);
  const scale = Math.max(maxAbs(ref), floor, 1e-30);
  const atol = atolScale * scale;
  let used = 0;
  if (actual.length === ref.length) for (let i = 0; i < ref.length; i++) used = Math.max(used, Math.abs(actual[i] - ref[i]) / (atol + rtol * Math.abs(ref[i])));
  const row = (report[act] ??= {});
  const e = (row[what] ??= { err: 0, used: 0 });
  e.err = Math.max(e.err, r.maxAbs / scale);
  e.used = Math.max(e.used, used);
  return r;
}
afterAll(() => {
  if (process.env.RESNET_REPORT) {
    const lines = Object.entries(report).map(([act, row]) => `${act}: ${Object.entries(row).map(([k, v]) => `${k} ${v.err.toExponential(1)} (${(100 * v.used).toFixed(0)}%)`).join(', ')}`);
    console.log(`max |err| / max |ref| per quantity (share of the tolerance used):\n${lines.join('\n')}`);
  }
});

describe.each(cases.map((c) => [c.name, c] as const))('%s against PyTorch', (_name, c) => {
  let f: Fixture;
  let m: ResNet;
  let out: { logits: Float32Array; loss: number };
  beforeAll(() => {
    f = load(c);
    m = build(c, f);
    out = trainStep(m, c, f);
  });
  afterAll(() => m?.dispose());

  test("stateDict() has exactly the fixture's names, shapes and dtypes", () => {
    const sd = m.stateDict();
    const ref = stateOf(f);
    expect(Object.keys(sd).sort()).toEqual(Object.keys(ref).sort());
    for (const [k, v] of Object.entries(ref)) {
      const mine = sd[k];
      if (isIntTensor(v)) {
        expect([k, isIntTensor(mine) && mine.dtype]).toEqual([k, 'I64']);
      } else {
        expect([k, mine instanceof as.Tensor && mine.shape]).toEqual([k, v.shape]);
      }
    }
  });

  test('training-mode logits and the label-smoothed loss', () => {
    const ref = arr(T(f, 'logits'));
    const r = close(c.act, 'logits', out.logits, ref, RTOL, ATOL_SCALE, 'logits');
    expect(failures([r])).toEqual([]);
    const lossRef = T(f, 'loss').item();
    const lr = close(c.act, 'loss', Float32Array.of(out.loss), Float32Array.of(lossRef), RTOL, 0, 'loss');
    expect(failures([lr])).toEqual([]);
  });

  test('every parameter gradient', () => {
    const params = m.namedParameters();
    const refs = new Map(params.map(([n]) => [n, arr(T(f, `grad.${n}`))]));
    // A gradient that is zero in exact math (AdaShift-MA's k.bias: softmax ignores a shift of
    // every key) is judged on the scale of its siblings in the same module.
    const siblingScale = new Map<string, number>();
    for (const [n, g] of refs) siblingScale.set(parentOf(n), Math.max(siblingScale.get(parentOf(n)) ?? 0, maxAbs(g)));
    const rs: CloseResult[] = [];
    for (const [n, p] of params) {
      const ref = refs.get(n)!;
      const floor = siblingScale.get(parentOf(n))!;
      const r = close(c.act, 'grad', arr(p.grad), ref, RTOL, GRAD_ATOL_SCALE, `grad.${n}`, floor);
      rs.push(r);
    }
    expect(params.length).toBe(Object.keys(f).filter((k) => k.startsWith('grad.')).length);
    expect(failures(rs)).toEqual([]);
  });

  test('running statistics and num_batches_tracked after the forward', () => {
    const rs: CloseResult[] = [];
    for (const [n, b] of m.namedBuffers()) {
      const ref = arr(T(f, `after.${n}`));
      const r = close(c.act, 'running stats', arr(b), ref, RTOL, ATOL_SCALE, `after.${n}`);
      rs.push(r);
    }
    expect(failures(rs)).toEqual([]);
    const ints = m.namedIntBuffers();
    expect(ints.length).toBeGreaterThan(0);
    for (const [n, b] of ints) {
      expect([n, b.value]).toEqual([n, I(f, `after.${n}`)]);
      expect(b.value).toBe(I(f, `param.${n}`) + 1n);
    }
  });

  test('eval-mode logits with the updated running statistics', () => {
    const ref = arr(T(f, 'eval_logits'));
    const r = close(c.act, 'eval logits', evalLogits(m, f), ref, RTOL, ATOL_SCALE, 'eval_logits');
    expect(failures([r])).toEqual([]);
  });

  test('one SGD step (momentum 0.9, weight decay 5e-4)', () => {
    const { lr, momentum, weightDecay, dampening, nesterov } = c.sgd;
    const opt = new SGD(m.parameters(), { lr, momentum, weightDecay, dampening, nesterov });
    opt.step();
    const rs: CloseResult[] = [];
    for (const [n, p] of m.namedParameters()) {
      let ref: Float32Array;
      if (c.hasStep) {
        ref = arr(T(f, `step.${n}`));
      } else {
        // The first step with momentum seeds the buffer with the gradient: p - lr (g + wd p),
        // from the reference parameter and gradient, in float64.
        const p0 = arr(T(f, `param.${n}`)), g = arr(T(f, `grad.${n}`));
        ref = Float32Array.from(p0, (v, i) => v - lr * (g[i] + weightDecay * v));
      }
      const r = close(c.act, c.hasStep ? 'step' : 'step (from ref grad)', arr(p), ref, RTOL, ATOL_SCALE, `step.${n}`);
      rs.push(r);
    }
    opt.dispose();
    expect(failures(rs)).toEqual([]);
  });
});

describe('fused BN + activation against the unfused path', () => {
  test.each(cases.map((c) => [c.act, c] as const))('%s: same logits, gradients and running statistics', (_act, c) => {
    const f = load(c);
    const a = build(c, f, true);
    const b = build(c, f, false);
    try {
      const oa = trainStep(a, c, f);
      const ob = trainStep(b, c, f);
      const rs: CloseResult[] = [close(c.act, 'fused vs unfused', oa.logits, ob.logits, FUSED_RTOL, FUSED_ATOL_SCALE, 'logits')];
      const ga = a.namedParameters(), gb = new Map(b.namedParameters());
      const refs = new Map(ga.map(([n]) => [n, arr(gb.get(n)!.grad)]));
      const siblingScale = new Map<string, number>();
      for (const [n, g] of refs) siblingScale.set(parentOf(n), Math.max(siblingScale.get(parentOf(n)) ?? 0, maxAbs(g)));
      for (const [n, p] of ga) {
        const floor = siblingScale.get(parentOf(n))!;
        const r = close(c.act, 'fused vs unfused', arr(p.grad), refs.get(n)!, FUSED_RTOL, FUSED_ATOL_SCALE, `grad.${n}`, floor);
        rs.push(r);
      }
      const bb = new Map(b.namedBuffers());
      for (const [n, t] of a.namedBuffers()) rs.push(close(c.act, 'fused vs unfused', arr(t), arr(bb.get(n)), FUSED_RTOL, FUSED_ATOL_SCALE, n));
      expect(failures(rs)).toEqual([]);
      const ib = new Map(b.namedIntBuffers());
      for (const [n, v] of a.namedIntBuffers()) expect([n, v.value]).toEqual([n, ib.get(n)!.value]);
    } finally {
      a.dispose();
      b.dispose();
    }
  });
});

describe('state dicts', () => {
  test.each(cases.map((c) => [c.act, c] as const))('%s: saved with io.saveSafetensors and loaded into a fresh model, logits are bit-identical', (_act, c) => {
    const f = load(c);
    const file = path.join(os.tmpdir(), `adashift-resnet-${process.pid}-${c.act}.safetensors`);
    const a = build(c, f);
    const b = resnet(c.model, { act: c.act, inChannels: c.inChannels, numClasses: c.numClasses });
    try {
      // Change every parameter and buffer from the fixture's values first (one training step).
      trainStep(a, c, f);
      const opt = new SGD(a.parameters(), { lr: 0.1, momentum: 0.9 });
      opt.step();
      opt.dispose();
      a.zeroGrad();
      as.io.saveSafetensors(file, a.stateDict());
      const loaded = as.io.loadSafetensors(file);
      try {
        expect(b.loadStateDict(loaded)).toEqual({ missing: [], unexpected: [] });
      } finally {
        for (const v of Object.values(loaded)) if (v instanceof as.Tensor) v.dispose();
      }
      const ia = a.namedIntBuffers(), ib = new Map(b.namedIntBuffers());
      for (const [n, v] of ia) expect([n, ib.get(n)!.value]).toEqual([n, v.value]);
      expect(sameBits(evalLogits(a, f), evalLogits(b, f))).toBe(true);
      const ta = trainStep(a, c, f), tb = trainStep(b, c, f);
      expect(sameBits(ta.logits, tb.logits)).toBe(true);
      const gb = new Map(b.namedParameters());
      for (const [n, p] of a.namedParameters()) expect([n, sameBits(arr(p.grad), arr(gb.get(n)!.grad))]).toEqual([n, true]);
    } finally {
      a.dispose();
      b.dispose();
      fs.rmSync(file, { force: true });
    }
  });

  test('loadStateDict copies: training the model changes neither the source dict nor a second model loaded from it', () => {
    // PyTorch's load_state_dict copies into the module's own tensors (param.copy_(src)).
    const c = cases.find((x) => x.act === 'adashift-b')!;
    const f = load(c);
    const src = stateOf(f, true);
    const before = new Map(Object.entries(src).flatMap(([k, v]) => (v instanceof as.Tensor ? [[k, v.toFloat32Array()] as const] : [])));
    const a = resnet(c.model, { act: c.act, inChannels: c.inChannels, numClasses: c.numClasses });
    const b = resnet(c.model, { act: c.act, inChannels: c.inChannels, numClasses: c.numClasses });
    try {
      a.loadStateDict(src);
      b.loadStateDict(src);
      trainStep(a, c, f); // updates a's running statistics in place
      const opt = new SGD(a.parameters(), { lr: 0.1, momentum: 0.9 });
      opt.step(); // updates a's parameters in place
      opt.dispose();
      const changedSrc = [...before].filter(([k, v]) => !sameBits((src[k] as as.Tensor).toFloat32Array(), v)).map(([k]) => k);
      const bState = b.stateDict();
      const changedB = [...before].filter(([k, v]) => !sameBits((bState[k] as as.Tensor).toFloat32Array(), v)).map(([k]) => k);
      expect({ changedSrc: changedSrc.slice(0, 3), changedB: changedB.slice(0, 3) }).toEqual({ changedSrc: [], changedB: [] });
    } finally {
      a.dispose();
      b.dispose();
      disposeAll(src);
    }
  });

  test('loadStateDict (strict) names what is missing and what is unexpected', () => {
    const c = cases.find((x) => x.act === 'adashift-ma')!;
    const f = load(c);
    const m = resnet(c.model, { act: 'relu', inChannels: c.inChannels, numClasses: c.numClasses });
    try {
      expect(() => m.loadStateDict(stateOf(f))).toThrow(/unexpected keys: .*act1\.q\.weight/);
      const sd = stateOf(load(cases.find((x) => x.act === 'relu')!));
      delete sd['layer3.0.downsample.1.running_var'];
      expect(() => m.loadStateDict(sd)).toThrow(/missing keys: layer3\.0\.downsample\.1\.running_var/);
    } finally {
      m.dispose();
    }
  });
});

describe('handle hygiene', () => {
  test.each(['relu', 'adashift-b', 'adashift-ma'] as const)('%s: a full training step leaves no tensor behind', (act) => {
    const c = cases.find((x) => x.act === act)!;
    const f = load(c);
    const before = as.memory().tensors;
    const m = build(c, f);
    const opt = new SGD(m.parameters(), { lr: 0.1, momentum: 0.9, weightDecay: 5e-4 });
    for (let i = 0; i < 2; i++) {
      m.zeroGrad();
      trainStep(m, c, f);
      opt.step();
    }
    evalLogits(m, f);
    opt.dispose();
    m.zeroGrad();
    m.dispose();
    expect(as.memory().tensors).toBe(before);
  });
});

describe('Module.to', () => {
  test('to the device a module is on keeps its gradients; nothing is copied or left behind', () => {
    const lin = new as.nn.Linear(3, 2, { device: 'cpu' });
    const before = as.memory().tensors;
    as.tidy(() => as.functional.sum(lin.forward(as.randn([4, 3]))).backward());
    const g = lin.weight.grad!.toFloat32Array();
    const w = lin.weight.toFloat32Array();
    expect(lin.to('cpu')).toBe(lin);
    expect(lin.weight.grad!.toFloat32Array()).toEqual(g);
    expect(lin.weight.toFloat32Array()).toEqual(w);
    expect(as.memory().tensors).toBe(before + 2); // the two gradients
    lin.zeroGrad();
    lin.dispose();
  });
});

describe('training fits random labels', () => {
  // 64 fixed random 8x8 grey images with random labels; ResNet-20 memorises them. 8x8 keeps
  // this to a few seconds on two cores (stage sizes 8, 4, 2).
  const N = 64, S = 8, STEPS = 60;
  test.each(['relu', 'adashift-b'] as const)('%s: training loss below 0.05 after 60 SGD steps', (act) => {
    const rng = new Prng(act === 'relu' ? 11 : 12);
    const x = as.keep(as.tensor(rng.normals(N * S * S), [N, 1, S, S]));
    const labels = Array.from({ length: N }, () => rng.int(0, 9));
    as.manualSeed(act === 'relu' ? 101 : 102);
    const m = resnet('resnet20', { act, inChannels: 1, numClasses: 10 });
    const opt = new SGD(m.parameters(), { lr: 0.05, momentum: 0.9 });
    const losses: number[] = [];
    try {
      for (let s = 0; s < STEPS; s++) {
        as.tidy(() => {
          m.zeroGrad();
          const loss = crossEntropy(m.forward(x), labels);
          loss.backward();
          opt.step();
          losses.push(loss.item());
        });
      }
    } finally {
      opt.dispose();
      m.dispose();
      x.dispose();
    }
    expect(losses.every(Number.isFinite)).toBe(true);
    expect(losses[0]).toBeGreaterThan(1);
    expect(losses[STEPS - 1]).toBeLessThan(0.05);
  });
});

describe('memory over a training run', () => {
  // 100 SGD steps of a small ResNet: after the optimizer has made its momentum buffers (first
  // step), the live tensor count and bytes must not grow: every step frees what it made.
  test.each(['relu', 'adashift-b', 'adashift-ma'])('%s: memory() is flat over 100 training steps', (act) => {
    as.manualSeed(5);
    const model = resnet('resnet20', { act: act as as.nn.ActivationName, inChannels: 1, numClasses: 10 });
    const opt = new SGD(model.parameters(), { lr: 0.01, momentum: 0.9, weightDecay: 5e-4 });
    const x = as.randn([4, 1, 8, 8]);
    const labels = [0, 3, 7, 9];
    const step = () =>
      as.tidy(() => {
        crossEntropy(model.forward(x), labels).backward();
        opt.step();
        opt.zeroGrad();
      });
    step();
    const after1 = as.memory();
    const counts: number[] = [], bytes: number[] = [];
    for (let i = 0; i < 100; i++) {
      step();
      const m = as.memory();
      counts.push(m.tensors);
      bytes.push(m.bytes);
    }
    expect(new Set(counts)).toEqual(new Set([after1.tensors]));
    expect(new Set(bytes)).toEqual(new Set([after1.bytes]));
    x.dispose();
    for (const s of Object.values(opt.stateDict().state)) for (const v of Object.values(s)) if (typeof v !== 'number') v.dispose();
    model.dispose();
  });
});
