#!/usr/bin/env node
// What AdaShift-MA's keepContext costs and saves in a training step: the same ResNet with
// AdaShift-MA built twice, recomputing its context network in backward (keepContext false, the
// default) and keeping it (true), steps alternated pair by pair on one batch (forward, backward,
// SGD); per setting the median step time and the highest tensor memory above the model during a
// step, and the median of the paired time ratios (recomputing / keeping).
//
//   node bench/ma-context.js [--model resnet20|resnet50] [--batch B] [--reps R] [--threads N] [--json out.json]
//
// resnet20: 1x28x28 inputs (Fashion-MNIST's size); resnet50: the small-input form, 3x32x32.
// Needs the compiled package (npm ci builds it).
'use strict';
const fs = require('fs');
const as = require('../dist');

const args = process.argv.slice(2);
const USAGE = 'usage: node bench/ma-context.js [--model resnet20|resnet50] [--batch B] [--reps R] [--threads N] [--json out.json]';
if (args.includes('--help') || args.includes('-h')) {
  console.log(USAGE);
  process.exit(0);
}
const known = new Set(['--model', '--batch', '--reps', '--threads', '--json']);
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
const model = opt('model', 'resnet20');
if (model !== 'resnet20' && model !== 'resnet50') {
  console.error(`bench/ma-context.js: --model must be resnet20 or resnet50, got '${model}'\n${USAGE}`);
  process.exit(2);
}
const small = model === 'resnet20';
const batch = positive('batch', small ? 64 : 32);
const reps = positive('reps', small ? 15 : 6);
if (args.includes('--threads')) as.setNumThreads(positive('threads', 1));
const warmup = 2;
const inC = small ? 1 : 3, side = small ? 28 : 32;

function build(keepContext) {
  as.manualSeed(1);
  const m = as.nn.resnet(model, { act: 'adashift-ma', actOptions: { keepContext }, numClasses: 10, inChannels: inC, smallInput: true });
  return { m, opt: new as.optim.SGD(m.parameters(), { lr: 0.01, momentum: 0.9 }) };
}
const x = as.randn([batch, inC, side, side]);
const labels = Int32Array.from({ length: batch }, (_, i) => (i * 7919 + 13) % 10);
const runs = { recompute: build(false), keep: build(true) };

function step(r) {
  as.resetPeakMemory();
  const base = as.memory().bytes;
  const t0 = process.hrtime.bigint();
  as.tidy(() => {
    r.opt.zeroGrad();
    as.functional.crossEntropy(r.m.forward(x), labels).backward();
    r.opt.step();
  });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  return { ms, peak: as.memory().devices[0].peakBytes - base };
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
const median = (a) => {
  const b = [...a].sort((p, q) => p - q);
  return b.length % 2 ? b[b.length >> 1] : (b[b.length / 2 - 1] + b[b.length / 2]) / 2;
};
const ratios = times.recompute.map((v, i) => v / times.keep[i]);
const mib = (b) => b / 2 ** 20;
const results = {
  model, batch, input: [inC, side, side], threads: as.getNumThreads(), reps, warmup,
  recompute: { stepMs: median(times.recompute), peakMiB: mib(peak.recompute) },
  keep: { stepMs: median(times.keep), peakMiB: mib(peak.keep) },
  timeRatioPaired: median(ratios),
};
console.log(`${model}, batch ${batch}, ${results.threads} thread(s), AdaShift-MA, ${reps} alternated pairs:`);
console.log(`  keepContext false (recompute): ${results.recompute.stepMs.toFixed(1)} ms/step, peak ${results.recompute.peakMiB.toFixed(1)} MiB above the model`);
console.log(`  keepContext true  (keep):      ${results.keep.stepMs.toFixed(1)} ms/step, peak ${results.keep.peakMiB.toFixed(1)} MiB above the model`);
console.log(`  time recompute / keep, paired median: ${results.timeRatioPaired.toFixed(3)}`);
const jsonOut = opt('json', null);
if (jsonOut) {
  const { environment } = require('../dist/bench/common');
  const report = { benchmark: 'ma-context', ...environment('cpu'), ...results };
  const tmp = `${jsonOut}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(report, null, 2) + '\n');
  fs.renameSync(tmp, jsonOut);
  console.log(`wrote ${jsonOut}`);
}
