// A worker_threads entry point (and a plain module for the main thread): runs one AdaShift
// forward/backward with the package it is handed and returns every output as Float32Arrays.
// worker.test.ts runs it in Workers against dist/ and on the main thread against lib/.
'use strict';
const { isMainThread, parentPort, workerData } = require('worker_threads');

/**
 * as: the adashift module; spec: {kind: 'b' | 'ma', seed, shape: [N, C, H, W], options}.
 * Parameters get non-trivial values (randn, +1 on LayerNorm weights) from the seeded stream.
 */
function compute(as, spec) {
  as.manualSeed(spec.seed);
  const C = spec.shape[1];
  const m = spec.kind === 'b' ? new as.nn.AdaShiftB(C, spec.options) : new as.nn.AdaShiftMA(C, spec.options);
  const state = {};
  for (const [name, p] of m.namedParameters()) {
    const isNormWeight = /(^|\.)(norm|q|k|v|rect|rect\.1)\.weight$/.test(name) && p.shape.length === 1;
    state[name] = as.randn(p.shape, { mean: isNormWeight ? 1 : 0, std: 0.5 });
  }
  m.loadStateDict(state);
  for (const t of Object.values(state)) t.dispose();
  const x = as.randn(spec.shape, { std: 1.5, requiresGrad: true });
  const dy = as.randn(spec.shape);
  const base = as.memory().devices[0].tensors;
  const out = as.tidy(() => {
    const y = m.forward(x);
    y.backward(dy);
    return y.toFloat32Array();
  });
  const result = { y: out, dx: x.grad.toFloat32Array(), grads: {} };
  for (const [name, p] of m.namedParameters()) result.grads[name] = p.grad.toFloat32Array();
  // everything but the gradients was freed by tidy
  result.leftover = as.memory().devices[0].tensors - base;
  x.grad.dispose();
  m.dispose();
  x.dispose();
  dy.dispose();
  result.threadId = require('worker_threads').threadId;
  return result;
}

module.exports = { compute };

if (!isMainThread && workerData && workerData.dist) {
  const as = require(workerData.dist);
  as.setDefaultDevice('cpu');
  const before = as.memory().devices[0].tensors;
  const results = workerData.specs.map((s) => compute(as, s));
  parentPort.postMessage({ results, liveDelta: as.memory().devices[0].tensors - before, info: as.backendInfo().cudaCompiled });
}
