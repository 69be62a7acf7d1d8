// Element-wise closeness with a tolerance that means something: |a - b| <= atol + rtol * |ref|,
// where atol is scaled to the reference's magnitude (atolScale * max|ref|) so tiny entries of a
// large tensor are judged against the tensor's scale, not against zero. A gradient that is
// exactly zero in exact math (a bias the output is invariant to) has no scale of its own:
// scaleFloor then lends it the scale of its sibling gradients.
export interface CloseResult {
  ok: boolean;
  maxAbs: number;
  maxRel: number;
  worst: number;
  message: string;
}

export function compareArrays(actual: Float32Array, expected: Float32Array, rtol: number, atolScale: number, label = '', scaleFloor = 0): CloseResult {
  if (actual.length !== expected.length) {
    return { ok: false, maxAbs: Infinity, maxRel: Infinity, worst: -1, message: `${label}: length ${actual.length} != ${expected.length}` };
  }
  let scale = 0;
  for (const v of expected) scale = Math.max(scale, Math.abs(v));
  const atol = atolScale * Math.max(scale, scaleFloor, 1e-30);
  let maxAbs = 0, maxRel = 0, worst = -1, ok = true, worstExcess = 0;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i], e = expected[i];
    if (!Number.isFinite(a)) {
      return { ok: false, maxAbs: Infinity, maxRel: Infinity, worst: i, message: `${label}: non-finite value ${a} at ${i}` };
    }
    const d = Math.abs(a - e);
    maxAbs = Math.max(maxAbs, d);
    if (Math.abs(e) > atol) maxRel = Math.max(maxRel, d / Math.abs(e));
    const excess = d - (atol + rtol * Math.abs(e));
    if (excess > 0) {
      ok = false;
      if (excess > worstExcess) {
        worstExcess = excess;
        worst = i;
      }
    }
  }
  const message = ok
    ? `${label}: ok (max abs ${maxAbs.toExponential(2)}, max rel ${maxRel.toExponential(2)})`
    : `${label}: mismatch at ${worst}: got ${actual[worst]}, expected ${expected[worst]} (max abs ${maxAbs.toExponential(2)}, scale ${scale.toExponential(2)}, rtol ${rtol}, atol ${atol.toExponential(2)})`;
  return { ok, maxAbs, maxRel, worst, message };
}

export function expectClose(actual: Float32Array, expected: Float32Array, rtol: number, atolScale: number, label = '', scaleFloor = 0): CloseResult {
  const r = compareArrays(actual, expected, rtol, atolScale, label, scaleFloor);
  if (!r.ok) throw new Error(r.message);
  return r;
}
