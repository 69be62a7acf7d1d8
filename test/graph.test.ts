// CUDA graphs (lib/graph.ts) and the in-place copy they are fed with (Tensor.copy_). The
// capture cases need a GPU and are skipped elsewhere; the allocator's graph pools are tested on
// the CPU by native/tests/core_tests.cc (block_cache_*).
import * as as from '../lib';
import { thrown } from './helpers/errors';

const info = as.backendInfo();
const cudaTest = info.cudaUsable ? test : test.skip;
const F = as.functional;

describe('copy_', () => {
  test('overwrites the values in place from a Float32Array or a tensor', () => {
    const t = as.zeros([2, 3], { device: 'cpu' });
    const h = t.handle;
    t.copy_(Float32Array.from([1, 2, 3, 4, 5, 6]));
    expect(Array.from(t.toFloat32Array())).toEqual([1, 2, 3, 4, 5, 6]);
    const src = as.tensor([[-1, -2, -3], [7, 8, 9]], undefined, { device: 'cpu' });
    expect(t.copy_(src)).toBe(t);
    expect(Array.from(t.toFloat32Array())).toEqual([-1, -2, -3, 7, 8, 9]);
    expect(t.handle).toBe(h);
    // an array the addon made (in Node's main context, not this test's vm context)
    const made = as.tensor([4, 4, 4, 5, 5, 5], [2, 3], { device: 'cpu' });
    t.copy_(made.toFloat32Array());
    made.dispose();
    expect(Array.from(t.toFloat32Array())).toEqual([4, 4, 4, 5, 5, 5]);
    src.dispose();
    t.dispose();
  });

  test('refuses another shape, a non-tensor, results of ops and tensors that require grad', () => {
    const t = as.zeros([2, 3], { device: 'cpu' });
    expect(thrown(() => t.copy_(new Float32Array(5)), 'ERR_SHAPE').message).toMatch(/expected 6 values for shape \[2, 3\], got 5/);
    const wrong = as.zeros([3, 2], { device: 'cpu' });
    expect(thrown(() => t.copy_(wrong), 'ERR_SHAPE').message).toMatch(/copy_: the source must have the destination's shape \[2, 3\], got \[3, 2\]/);
    expect(thrown(() => t.copy_([1, 2]), 'ERR_SHAPE').message).toMatch(/expected 6 values for shape \[2, 3\], got 2/);
    expect(thrown(() => t.copy_('ab' as never), 'ERR_ARG').message).toMatch(/src must be a Tensor, a typed array or an array of numbers, got string/);
    const p = as.zeros([2, 3], { device: 'cpu', requiresGrad: true });
    expect(thrown(() => p.copy_(t), 'ERR_AUTOGRAD').message).toMatch(/only inside noGrad/);
    as.noGrad(() => p.copy_(as.ones([2, 3], { device: 'cpu' })));
    expect(Array.from(p.toFloat32Array())).toEqual([1, 1, 1, 1, 1, 1]);
    const y = F.relu(p);
    expect(thrown(() => y.copy_(t), 'ERR_AUTOGRAD').message).toMatch(/result of an op/);
    for (const x of [t, wrong, p, y]) x.dispose();
  });
});

describe('CudaGraph: the API where no capture can run', () => {
  test('capturing on the CPU is refused with ERR_CUDA_GRAPH, before fn runs', () => {
    let ran = false;
    const e = thrown(() => as.CudaGraph.capture(() => (ran = true), { device: 'cpu' }), 'ERR_CUDA_GRAPH');
    expect(e.message).toMatch(/CUDA graphs need a CUDA device; the device is 'cpu'/);
    expect(ran).toBe(false);
    expect(as.isCapturing('cpu')).toBe(false);
    expect(thrown(() => as.CudaGraph.capture('x' as unknown as () => void, { device: 'cpu' }), 'ERR_ARG').message).toMatch(/fn must be a function/);
  });
});

// ---- on a GPU -------------------------------------------------------------------------------

/** One SGD training step of a small ResNet, reading nothing back (capturable). */
function trainer(act: as.nn.ActivationName) {
  as.manualSeed(3);
  const model = as.nn.resnet('resnet20', { act, numClasses: 10, inChannels: 1, device: 'cuda' });
  model.train();
  const opt = new as.optim.SGD(model.parameters(), { lr: 0.05, momentum: 0.9, weightDecay: 1e-4 });
  const step = (x: as.Tensor, y: as.Tensor) => {
    const { loss, correct } = F.crossEntropyWithCorrect(model.forward(x), y);
    loss.backward();
    opt.step();
    opt.zeroGrad();
    return { loss, correct };
  };
  return { model, opt, step };
}

function batches(n: number, batch: number): { x: Float32Array; y: Float32Array }[] {
  as.manualSeed(11);
  return Array.from({ length: n }, (_, i) => {
    const x = as.randn([batch, 1, 28, 28], { device: 'cpu' });
    const out = { x: x.toFloat32Array(), y: Float32Array.from({ length: batch }, (_, j) => (j * 7 + i * 3) % 10) };
    x.dispose();
    return out;
  });
}

describe('CudaGraph on CUDA', () => {
  cudaTest('a replay recomputes from the static input after copy_, with the captured ops', () => {
    const x = as.zeros([1000], { device: 'cuda' });
    const g = as.CudaGraph.capture(() => F.gelu(F.add(F.mul(x, x), x)), { device: 'cuda' });
    try {
      for (const v of [0.5, -2, 3]) {
        x.copy_(new Float32Array(1000).fill(v));
        g.replay();
        const want = F.gelu(F.add(F.mul(x, x), x)).toFloat32Array();
        expect(Array.from(g.outputs.toFloat32Array())).toEqual(Array.from(want));
      }
      expect(g.poolBytes).toBeGreaterThan(0);
    } finally {
      g.dispose();
      x.dispose();
    }
    expect(g.isDisposed).toBe(true);
    expect(thrown(() => g.replay(), 'ERR_CUDA_GRAPH').message).toMatch(/disposed/);
  });

  for (const act of ['relu', 'adashift-b', 'adashift-ma'] as as.nn.ActivationName[]) {
    cudaTest(`a captured ResNet-20 training step (${act}) replays the eager steps bit for bit`, () => {
      const data = batches(4, 8);
      // eager
      const a = trainer(act);
      const eagerLoss: number[] = [];
      for (const b of data) {
        as.tidy(() => {
          const x = as.tensor(b.x, [8, 1, 28, 28], { device: 'cuda' });
          const y = as.tensor(b.y, [8], { device: 'cuda' });
          eagerLoss.push(a.step(x, y).loss.item());
        });
      }
      // captured: the warm-up step runs eagerly on batch 0, each replay is one more step
      const b = trainer(act);
      const x = as.zeros([8, 1, 28, 28], { device: 'cuda' });
      const y = as.zeros([8], { device: 'cuda' });
      x.copy_(data[0].x);
      y.copy_(data[0].y);
      const g = as.CudaGraph.capture(() => b.step(x, y), { device: 'cuda', warmup: 1 });
      const graphLoss: number[] = [];
      for (const d of data.slice(1)) {
        x.copy_(d.x);
        y.copy_(d.y);
        g.replay();
        graphLoss.push(g.outputs.loss.item());
      }
      expect(graphLoss).toEqual(eagerLoss.slice(1));
      const pa = a.model.stateDict(), pb = b.model.stateDict();
      for (const [name, t] of Object.entries(pa)) {
        if (!(t instanceof as.Tensor)) continue;
        expect([name, Array.from((pb[name] as as.Tensor).toFloat32Array())]).toEqual([name, Array.from(t.toFloat32Array())]);
      }
      g.dispose();
      for (const t of [x, y]) t.dispose();
      a.model.dispose();
      b.model.dispose();
    });
  }

  cudaTest('reads, synchronize and copies from JS data are refused inside a capture, which is dropped', () => {
    const x = as.ones([16], { device: 'cuda' });
    const tries: [string, () => void, RegExp][] = [
      ['read', () => F.relu(x).toFloat32Array(), /copying between host and device memory/],
      ['synchronize', () => as.synchronize('cuda'), /synchronize\(\) is not possible while a CUDA graph is being captured/],
      ['tensor from JS data', () => as.tensor([1, 2, 3], undefined, { device: 'cuda' }), /making a tensor from JS data/],
    ];
    for (const [, fn, msg] of tries) {
      expect(thrown(() => as.CudaGraph.capture(fn, { device: 'cuda' }), 'ERR_CUDA_GRAPH').message).toMatch(msg);
      expect(as.isCapturing('cuda:0')).toBe(false);
      expect(Array.from(F.add(x, x).toFloat32Array())).toEqual(new Array(16).fill(2));
    }
    x.dispose();
  });

  cudaTest('a failed capture leaves no uncomputed gradient behind: the next eager backward is exact', () => {
    const p = as.ones([32], { device: 'cuda', requiresGrad: true });
    const adamw = new as.optim.AdamW([p], { lr: 1e-3 });
    // backward (which makes p.grad) is recorded, then AdamW refuses to be captured
    thrown(() => as.CudaGraph.capture(() => {
      F.sum(F.mul(p, p)).backward();
      adamw.step();
    }, { device: 'cuda' }), 'ERR_CUDA_GRAPH');
    expect(p.grad === null || p.grad.isDisposed).toBe(true);
    F.sum(F.mul(p, p)).backward();
    expect(Array.from(p.grad!.toFloat32Array())).toEqual(new Array(32).fill(2));
    p.grad!.dispose();
    adamw.dispose();
    p.dispose();
  });

  // A captured training step of a small problem (loss = sum((W x - t)^2) over static inputs) with
  // each capturable optimizer: the eager run and the replays see the same batches and the same
  // learning rates (a scheduler steps between replays, outside the graph).
  const capturableOptimizers: [string, (ps: as.Tensor[]) => as.optim.Optimizer<as.optim.BaseHyper>][] = [
    ['AdamW', (ps) => new as.optim.AdamW([{ params: ps.slice(0, 1) }, { params: ps.slice(1), weightDecay: 0 }], { lr: 1e-2, capturable: true })],
    ['LAMB', (ps) => new as.optim.LAMB(ps, { lr: 1e-2, weightDecay: 0.02, capturable: true })],
    ['LAMB without weight decay (one fused pass)', (ps) => new as.optim.LAMB(ps, { lr: 1e-2, capturable: true })],
    ['LAMB decoupled, no clip', (ps) => new as.optim.LAMB(ps, { lr: 1e-2, weightDecay: 0.05, decoupledDecay: true, maxGradNorm: null, capturable: true })],
    ['SGD momentum', (ps) => new as.optim.SGD(ps, { lr: 0.05, momentum: 0.9, weightDecay: 1e-3, capturable: true })],
  ];
  for (const [name, make] of capturableOptimizers) {
    cudaTest(`a captured step with capturable ${name} replays the eager steps bit for bit, learning rate schedule included`, () => {
      const steps = 6;
      const batches = Array.from({ length: steps }, (_, k) => {
        as.manualSeed(500 + k);
        return { x: as.randn([16, 8]).toFloat32Array(), t: as.randn([16, 5]).toFloat32Array() };
      });
      const setup = () => {
        as.manualSeed(3);
        const w = as.keep(as.randn([5, 8], { device: 'cuda', std: 0.3 })).requiresGrad_();
        const b = as.keep(as.zeros([5], { device: 'cuda' })).requiresGrad_();
        const opt = make([w, b]);
        const sched = new as.optim.LrScheduler(opt, as.optim.cosineWithWarmup({ baseLr: 0.02, warmupSteps: 2, totalSteps: steps, minLr: 1e-3 }));
        const x = as.zeros([16, 8], { device: 'cuda' });
        const t = as.zeros([16, 5], { device: 'cuda' });
        const step = () => {
          const y = F.linear(x, w, b);
          const loss = F.sum(F.mul(F.sub(y, t), F.sub(y, t)));
          loss.backward();
          opt.step();
          opt.zeroGrad();
          return loss;
        };
        return { w, b, opt, sched, x, t, step };
      };
      const a = setup();
      for (const d of batches) {
        a.x.copy_(d.x);
        a.t.copy_(d.t);
        as.tidy(() => void a.step());
        a.sched.step();
      }
      const c = setup();
      c.x.copy_(batches[0].x);
      c.t.copy_(batches[0].t);
      const g = as.CudaGraph.capture(() => c.step(), { device: 'cuda', warmup: 1 });
      c.sched.step();
      // setting the learning rate inside a capture is refused (a replay would set it again), for
      // every group or none
      const lrs = c.opt.paramGroups.map((grp) => grp.lr);
      expect(thrown(() => as.CudaGraph.capture(() => { c.opt.lr = 0.5; }, { device: 'cuda' }), 'ERR_CUDA_GRAPH').message).toMatch(
        /the learning rate cannot be set during a CUDA graph capture/,
      );
      expect(c.opt.paramGroups.map((grp) => grp.lr)).toEqual(lrs);
      for (const d of batches.slice(1)) {
        c.x.copy_(d.x);
        c.t.copy_(d.t);
        g.replay();
        c.sched.step();
      }
      expect(Array.from(c.w.toFloat32Array())).toEqual(Array.from(a.w.toFloat32Array()));
      expect(Array.from(c.b.toFloat32Array())).toEqual(Array.from(a.b.toFloat32Array()));
      // LAMB's group step reads the replays' count back from the device
      if (c.opt instanceof as.optim.LAMB) expect(c.opt.groupStep(0)).toBe(steps);
      // the replays advanced the device step count: the state dict reads it back
      const sa = a.opt.stateDict(), sc = c.opt.stateDict();
      expect(sc.paramGroups).toEqual(sa.paramGroups);
      for (const [k, st] of Object.entries(sa.state)) {
        expect([k, sc.state[Number(k)].step]).toEqual([k, st.step]);
        for (const [n, v] of Object.entries(st)) {
          if (v instanceof as.Tensor) expect([k, n, Array.from((sc.state[Number(k)][n] as as.Tensor).toFloat32Array())]).toEqual([k, n, Array.from(v.toFloat32Array())]);
        }
      }
      g.dispose();
      for (const r of [a, c]) {
        r.opt.dispose();
        for (const t of [r.w, r.b, r.x, r.t]) t.dispose();
      }
    });
  }

  cudaTest('a capturable optimizer refuses a capture before its first eager step', () => {
    const p = as.ones([32], { device: 'cuda', requiresGrad: true });
    const adamw = new as.optim.AdamW([p], { lr: 1e-3, capturable: true });
    expect(thrown(() => as.CudaGraph.capture(() => {
      F.sum(F.mul(p, p)).backward();
      adamw.step();
    }, { device: 'cuda' }), 'ERR_CUDA_GRAPH').message).toMatch(/AdamW\.step\(\) cannot be captured into a CUDA graph: its state .* does not exist yet; run one step eagerly before capturing \(warmup: 1\)/);
    adamw.dispose();
    p.dispose();
  });

  cudaTest('optimizers: AdamW cannot be captured, SGD needs its momentum buffers first', () => {
    const p = as.ones([32], { device: 'cuda', requiresGrad: true });
    const run = (opt: { step(): void; zeroGrad(): void }) => () => {
      F.sum(F.mul(p, p)).backward();
      opt.step();
      opt.zeroGrad();
    };
    const adamw = new as.optim.AdamW([p], { lr: 1e-3 });
    expect(thrown(() => as.CudaGraph.capture(run(adamw), { device: 'cuda', warmup: 1 }), 'ERR_CUDA_GRAPH').message).toMatch(
      /AdamW\.step\(\) cannot be captured into a CUDA graph: its update depends on the step count .*construct it with \{capturable: true\}/,
    );
    const sgd = new as.optim.SGD([p], { lr: 1e-3, momentum: 0.9 });
    expect(thrown(() => as.CudaGraph.capture(run(sgd), { device: 'cuda' }), 'ERR_CUDA_GRAPH').message).toMatch(/run one step eagerly before capturing \(warmup: 1\)/);
    const g = as.CudaGraph.capture(run(sgd), { device: 'cuda', warmup: 1 });
    g.replay();
    g.dispose();
    p.dispose();
  });
});
