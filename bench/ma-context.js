#!/usr/bin/env node
// What AdaShift-MA's keepContext costs and saves in a training step: the same ResNet with
// AdaShift-MA built twice, recomputing its context network in backward (keepContext false, the
// default) and keeping it (true), steps alternated pair by pair on one batch (forward, backward,
// SGD); per setting the median step time and the highest tensor memory above the model during a
// step, and the median of the paired time ratios (recomputing / keeping). With --shape, the
// activation alone instead: forward + backward of nn.AdaShiftMA (default options otherwise) on
// one input of that shape, the two settings and this package's SiLU round robin.
//
//   node bench/ma-context.js [--model resnet20|resnet50|resnet50-224] [--batch B] [--reps R] [--device D] [--threads N] [--json out.json]
//   node bench/ma-context.js --shape N,C,H,W [--reps R] [--device D] [--threads N] [--json out.json]
//
// resnet20: 1x28x28 inputs (Fashion-MNIST's size), batch 64; resnet50: the small-input form,
// 3x32x32, batch 32; resnet50-224: the ImageNet form, 3x224x224, batch 128 (a GPU's). --device:
// cpu (default) or cuda[:N]. Needs the compiled package (npm ci builds it).
'use strict';
const fs = require('fs');
const as = require('../dist');

process.on('uncaughtException', (e) => {
  console.error(`bench/ma-context.js: ${e.message}`);
  process.exit(1);
});

const args = process.argv.slice(2);
const USAGE = 'usage: node bench/ma-context.js [--model resnet20|resnet50|resnet50-224] [--batch B] [--reps R] [--device D] [--threads N] [--json out.json]\n' +
  '       node bench/ma-context.js --shape N,C,H,W [--reps R] [--device D] [--threads N] [--json out.json]';
if (args.includes('--help') || args.includes('-h')) {
  console.log(USAGE);
  process.exit(0);
}
const known = new Set(['--model', '--batch', '--reps', '--threads', '--json', '--shape', '--device']);
for (let i = 0; i < args.length; i += 2) {
  if (!known.has(args[i]) || i + 1 >= args.length) {
    console.error(`bench/ma-context.js: unexpected argument '${args[i]}'${known.has(args[i]) ? ' (missing its value)' : ''}\n${USAGE}`);
    process.exit(2);
  }
}
const opt = (name, dflt) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const positive = (name, dflt) => {
  const v = Number(opt(name, dflt));
  if (!Number.isInteger(v) || v < 1) {
    console.error(`bench/ma-context.js: --${name} must be a positive integer, got '${opt(name, dflt)}'\n${USAGE}`);
    process.exit(2);
  }
  return v;
};
const shapeArg = opt('shape', null);
let shape = null;
if (shapeArg !== null) {
  shape = shapeArg.split(',').map(Number);
  if (shape.length !== 4 || !shape.every((v) => Number.isInteger(v) && v >= 1)) {
    console.error(`bench/ma-context.js: --shape is N,C,H,W with positive integers, got '${shapeArg}'\n${USAGE}`);
    process.exit(2);
  }
  if (args.includes('--model') || args.includes('--batch')) {
    console.error(`bench/ma-context.js: --shape times the activation alone; --model and --batch do not apply\n${USAGE}`);
    process.exit(2);
  }
}
const MODELS = {
  resnet20: { net: 'resnet20', batch: 64, input: [1, 28, 28], classes: 10, smallInput: true, reps: 15 },
  resnet50: { net: 'resnet50', batch: 32, input: [3, 32, 32], classes: 10, smallInput: true, reps: 6 },
  'resnet50-224': { net: 'resnet50', batch: 128, input: [3, 224, 224], classes: 1000, smallInput: false, reps: 6 },
};
const model = opt('model', 'resnet20');
if (!(model in MODELS)) {
  console.error(`bench/ma-context.js: --model must be one of ${Object.keys(MODELS).join(', ')}, got '${model}'\n${USAGE}`);
  process.exit(2);
}
const spec = MODELS[model];
const device = opt('device', 'cpu');
if (!/^(cpu|cuda(:\d+)?)$/.test(device)) {
  console.error(`bench/ma-context.js: --device must be cpu, cuda or cuda:N, got '${device}'\n${USAGE}`);
  process.exit(2);
}
const batch = positive('batch', spec.batch);
const reps = positive('reps', shape ? 30 : spec.reps);
if (args.includes('--threads')) as.setNumThreads(positive('threads', 1));
const warmup = 2;
const median = (a) => {
  const b = [...a].sort((p, q) => p - q);
  return b.length % 2 ? b[b.length >> 1] : (b[b.length / 2 - 1] + b[b.length / 2]) / 2;
};
function writeJson(results) {
  const jsonOut = opt('json', null);
  if (!jsonOut) return;
  const { environment } = require('../dist/bench/common');
  const report = { benchmark: 'ma-context', ...environment(device), ...results };
  const tmp = `${jsonOut}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(report, null, 2) + '\n');
  fs.renameSync(tmp, jsonOut);
  console.log(`wrote ${jsonOut}`);
}

if (shape) {
  // The activation alone: forward + backward on one input, the three round robin.
  as.manualSeed(2);
  const C = shape[1];
  const mods = { recompute: new as.nn.AdaShiftMA(C, { keepContext: false, device }), keep: new as.nn.AdaShiftMA(C, { keepContext: true, device }) };
  const x = as.randn(shape, { requiresGrad: true, device }), dy = as.randn(shape, { device });
  const once = (k) => {
    as.synchronize(device);
    const t0 = process.hrtime.bigint();
    as.tidy(() => (k === 'silu' ? as.functional.silu(x) : mods[k].forward(x)).backward(dy));
    as.synchronize(device);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    x.grad.dispose();
    x.grad = null;
    return ms;
  };
  const t = { silu: [], recompute: [], keep: [] };
  for (let i = 0; i < warmup + reps; ++i)
    for (const k of ['silu', 'keep', 'recompute']) {
      const ms = once(k);
      if (i >= warmup) t[k].push(ms);
    }
  const results = {
    shape, device, threads: as.getNumThreads(), reps, warmup,
    siluMs: median(t.silu), recomputeMs: median(t.recompute), keepMs: median(t.keep),
    timeRatioPaired: median(t.recompute.map((v, i) => v / t.keep[i])),
    vsSiluRecompute: median(t.silu.map((v, i) => v / t.recompute[i])),
    vsSiluKeep: median(t.silu.map((v, i) => v / t.keep[i])),
  };
  console.log(`AdaShift-MA forward+backward on [${shape}], ${device}, ${results.threads} thread(s), ${reps} rounds: keepContext false ${results.recomputeMs.toFixed(2)} ms, true ${results.keepMs.toFixed(2)} ms (paired ratio ${results.timeRatioPaired.toFixed(3)}); SiLU ${results.siluMs.toFixed(2)} ms, SiLU time / AdaShift-MA's ${results.vsSiluRecompute.toFixed(2)} (false) and ${results.vsSiluKeep.toFixed(2)} (true), paired`);
  writeJson(results);
  process.exit(0);
}

function build(keepContext) {
  as.manualSeed(1);
  const m = as.nn.resnet(spec.net, { act: 'adashift-ma', actOptions: { keepContext }, numClasses: spec.classes, inChannels: spec.input[0], smallInput: spec.smallInput, device });
  return { m, opt: new as.optim.SGD(m.parameters(), { lr: 0.01, momentum: 0.9 }) };
}
const x = as.randn([batch, ...spec.input], { device });
const labels = Int32Array.from({ length: batch }, (_, i) => (i * 7919 + 13) % spec.classes);
const memDevice = x.device; // the resolved name ('cuda' is 'cuda:0')
const deviceMemory = () => as.memory().devices.find((e) => e.device === memDevice) ?? { bytes: 0, peakBytes: 0 };
const runs = { recompute: build(false), keep: build(true) };

function step(r) {
  as.synchronize(device);
  as.resetPeakMemory(memDevice);
  const base = deviceMemory().bytes;
  const t0 = process.hrtime.bigint();
  as.tidy(() => {
    r.opt.zeroGrad();
    as.functional.crossEntropy(r.m.forward(x), labels).backward();
    r.opt.step();
  });
  as.synchronize(device);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  return { ms, peak: deviceMemory().peakBytes - base };
}

const times = { recompute: [], keep: [] };
const peak = { recompute: 0, keep: 0 };
for (let i = 0; i < warmup + reps; ++i) {
  // Alternate which setting goes first, so neither always follows the other.
  for (const k of i % 2 ? ['recompute', 'keep'] : ['keep', 'recompute']) {
    const s = step(runs[k]);
    if (i < warmup) continue;
    times[k].push(s.ms);
    peak[k] = Math.max(peak[k], s.peak);
  }
}
const ratios = times.recompute.map((v, i) => v / times.keep[i]);
const mib = (b) => b / 2 ** 20;
const results = {
  model, batch, input: spec.input, device, threads: as.getNumThreads(), reps, warmup,
  recompute: { stepMs: median(times.recompute), peakMiB: mib(peak.recompute) },
  keep: { stepMs: median(times.keep), peakMiB: mib(peak.keep) },
  timeRatioPaired: median(ratios),
};
console.log(`${model}, batch ${batch}, ${device}, ${results.threads} thread(s), AdaShift-MA, ${reps} alternated pairs:`);
console.log(`  keepContext false (recompute): ${results.recompute.stepMs.toFixed(1)} ms/step, peak ${results.recompute.peakMiB.toFixed(1)} MiB above the model`);
console.log(`  keepContext true  (keep):      ${results.keep.stepMs.toFixed(1)} ms/step, peak ${results.keep.peakMiB.toFixed(1)} MiB above the model`);
console.log(`  time recompute / keep, paired median: ${results.timeRatioPaired.toFixed(3)}`);
writeJson(results);
