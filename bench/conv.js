#!/usr/bin/env node
// conv2d forward + backward timings on the ResNet-20 shapes (batch 64, 3x3, stride 1, pad 1:
// 16 ch at 28x28, 32 ch at 14x14, 64 ch at 7x7), with each CPU GEMM backend (the package's own
// kernel and OpenBLAS when compiled in), side by side in one run, and PyTorch's CPU conv2d when
// /usr/bin/python3 has torch (same thread count). Rates are also given as a fraction of this
// CPU's multiply-add ceiling, measured in the same run (native cpuPeakGflops: register-only FMA
// chains on every thread), so the distance to the hardware's limit is read off directly.
//
//   node bench/conv.js [--threads N] [--reps R] [--batch B] [--json out.json]
//
// Needs the compiled package (npx tsc -p tsconfig.json) and the addon. Reports medians of R
// timed runs after a warm-up.
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const as = require('../dist');
const { native } = require('../dist/native');

const args = process.argv.slice(2);
const USAGE = 'usage: node bench/conv.js [--threads N] [--reps R] [--batch B] [--json out.json]';
if (args.includes('--help') || args.includes('-h')) {
  console.log(USAGE);
  process.exit(0);
}
const known = new Set(['--threads', '--reps', '--batch', '--json']);
for (let i = 0; i < args.length; i += 2) {
  if (!known.has(args[i]) || i + 1 >= args.length) {
    console.error(`bench/conv.js: unexpected argument '${args[i]}'${known.has(args[i]) ? ' (missing its value)' : ''}\n${USAGE}`);
    process.exit(2);
  }
}
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const positive = (name, dflt) => {
  const v = Number(opt(name, dflt));
  if (!Number.isInteger(v) || v < 1) {
    console.error(`bench/conv.js: --${name} must be a positive integer, got '${opt(name, dflt)}'\n${USAGE}`);
    process.exit(2);
  }
  return v;
};
const threads = positive('threads', as.getNumThreads());
const reps = positive('reps', 7);
const batch = positive('batch', 64);
const jsonOut = opt('json', null);
as.setNumThreads(threads);
if (jsonOut) {
  // a result file that cannot be written fails now, not after the measurements
  const probe = `${jsonOut}.probe-${process.pid}`;
  try {
    fs.writeFileSync(probe, '');
    fs.rmSync(probe, { force: true });
  } catch (e) {
    console.error(`bench/conv.js: --json ${jsonOut} cannot be written (${e.code || e.message})`);
    process.exit(2);
  }
}

const shapes = [
  { name: '16ch 28x28', C: 16, H: 28 },
  { name: '32ch 14x14', C: 32, H: 14 },
  { name: '64ch 7x7', C: 64, H: 7 },
];
const info = native.gemmInfo();
// The ceiling, three 300 ms shots before our timings, three between ours and PyTorch's and three
// after (the clock of a shared VM moves, and one shot can land in a slow moment): the median of
// the nine, which each implementation's percentages divide by.
const peakShots = () => [0, 1, 2].map(() => native.cpuPeakGflops(300));
const peakBeforeShots = peakShots();
const backends = info.blasCompiled ? ['own', 'openblas'] : ['own'];
const initial = native.gemmBackend();

const median = (a) => {
  const s = [...a].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6;

function timeOnce(x, w, dy) {
  let t0 = process.hrtime.bigint();
  const y = native.conv2dForward(x.handle, w.handle, null, 1, 1, 1, 1);
  const fwd = ms(t0);
  t0 = process.hrtime.bigint();
  const [dx, dw] = native.conv2dBackward(dy.handle, x.handle, w.handle, 1, 1, 1, 1, true, true, false);
  const bwd = ms(t0);
  y.dispose();
  dx.dispose();
  dw.dispose();
  return { fwd, bwd };
}

// Backends run one after the other, the own kernel first: OpenBLAS's worker threads keep
// spinning for a while after each call and would steal the cores from the pool's threads if
// the backends were interleaved.
const results = [];
for (const b of backends) {
  native.gemmBackend(b);
  for (const s of shapes) {
    as.manualSeed(1);
    const x = as.randn([batch, s.C, s.H, s.H]);
    const w = as.randn([s.C, s.C, 3, 3], { std: 0.1 });
    const dy = as.randn([batch, s.C, s.H, s.H]);
    const flops = 2 * batch * s.C * s.H * s.H * s.C * 9; // forward; backward is twice this
    timeOnce(x, w, dy); // warm-up: buffers, page faults, BLAS threads
    const fwds = [], bwds = [];
    for (let r = 0; r < reps; r++) {
      const t = timeOnce(x, w, dy);
      fwds.push(t.fwd);
      bwds.push(t.bwd);
    }
    const fwd = median(fwds), bwd = median(bwds);
    results.push({ shape: s.name, impl: b === 'own' ? 'adashift own GEMM' : 'adashift OpenBLAS', fwd, bwd, total: fwd + bwd,
      fwdGflops: flops / fwd / 1e6, bwdGflops: (2 * flops) / bwd / 1e6 });
    x.dispose();
    w.dispose();
    dy.dispose();
  }
}
native.gemmBackend(initial);
const peakBetweenShots = peakShots();

// PyTorch, same shapes and thread count, in a child process.
const py = `
import json, sys, time, torch, torch.nn.functional as F
torch.set_num_threads(${threads})
out = []
for name, C, H in ${JSON.stringify(shapes.map((s) => [s.name, s.C, s.H]))}:
    torch.manual_seed(1)
    x = torch.randn(${batch}, C, H, H, requires_grad=True)
    w = (torch.randn(C, C, 3, 3) * 0.1).requires_grad_()
    dy = torch.randn(${batch}, C, H, H)
    def once():
        t0 = time.perf_counter(); y = F.conv2d(x, w, padding=1); t1 = time.perf_counter()
        gx, gw = torch.autograd.grad(y, (x, w), dy); t2 = time.perf_counter()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3
    once()
    f, b = zip(*[once() for _ in range(${reps})])
    med = lambda a: sorted(a)[len(a) // 2] if len(a) % 2 else sum(sorted(a)[len(a)//2-1:len(a)//2+1]) / 2
    out.append({"shape": name, "fwd": med(f), "bwd": med(b)})
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": out}))
`;
let torchInfo = null;
const python = process.env.ADASHIFT_PYTHON || '/usr/bin/python3';
if (process.env.ADASHIFT_PYTHON || fs.existsSync(python)) {
  const r = spawnSync(python, ['-c', py], { encoding: 'utf8', timeout: 600000 });
  if (r.status === 0) {
    torchInfo = JSON.parse(r.stdout.trim().split('\n').pop());
    for (const t of torchInfo.results) {
      const s = shapes.find((q) => q.name === t.shape);
      const flops = 2 * batch * s.C * s.H * s.H * s.C * 9;
      results.push({ shape: t.shape, impl: `PyTorch ${torchInfo.torch}`, fwd: t.fwd, bwd: t.bwd, total: t.fwd + t.bwd,
        fwdGflops: flops / t.fwd / 1e6, bwdGflops: (2 * flops) / t.bwd / 1e6 });
    }
  } else {
    console.error(`PyTorch comparison skipped: ${(r.stderr || r.error || '').toString().split('\n').filter(Boolean).pop()}`);
  }
}

const peakAfterShots = peakShots();
const allShots = [...peakBeforeShots, ...peakBetweenShots, ...peakAfterShots];
const peak = median(allShots);
for (const r of results) {
  r.fwdOfPeak = r.fwdGflops / peak;
  r.bwdOfPeak = r.bwdGflops / peak;
}
console.log(`conv2d 3x3 s1 p1, batch ${batch}, ${threads} thread(s), median of ${reps}; own kernel tile ${info.kernel}`);
const shots = (a) => a.map((v) => v.toFixed(0)).join('/');
console.log(`FMA peak of ${threads} thread(s), measured: ${peak.toFixed(0)} GFLOP/s, the median of 9 shots (${shots(peakBeforeShots)} before, ${shots(peakBetweenShots)} between ours and PyTorch's, ${shots(peakAfterShots)} after)`);
console.log('shape        implementation         fwd ms  bwd ms  total ms  fwd GFLOP/s (of peak)  bwd GFLOP/s (of peak)');
const pct = (f) => `${(100 * f).toFixed(0)}%`.padStart(5);
for (const r of results.sort((a, b) => shapes.findIndex((s) => s.name === a.shape) - shapes.findIndex((s) => s.name === b.shape))) {
  console.log(`${r.shape.padEnd(12)} ${r.impl.padEnd(22)} ${r.fwd.toFixed(2).padStart(6)}  ${r.bwd.toFixed(2).padStart(6)}  ${r.total.toFixed(2).padStart(8)}  ${r.fwdGflops.toFixed(1).padStart(11)} ${pct(r.fwdOfPeak)}      ${r.bwdGflops.toFixed(1).padStart(11)} ${pct(r.bwdOfPeak)}`);
}
if (jsonOut) {
  const { environment } = require('../dist/bench/common');
  const report = { ...environment('cpu'), batch, threads, reps, kernel: info.kernel, fmaPeakGflops: { median: peak, before: peakBeforeShots, between: peakBetweenShots, after: peakAfterShots }, torch: torchInfo && torchInfo.torch, results };
  const tmp = `${jsonOut}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(report, null, 2) + '\n');
  fs.renameSync(tmp, jsonOut);
}
