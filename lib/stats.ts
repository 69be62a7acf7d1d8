// Summary statistics of measurements (benchmarks, training runs).

export function mean(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** Sample standard deviation (n - 1); 0 for fewer than two values. */
export function std(xs: number[]): number {
  if (xs.length < 2) return 0;
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1));
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * Median and quartiles over rounds of ref[i] / t[i] (linear interpolation between order
 * statistics): the ratio of two things timed in the same round, seconds apart, so a drift of
 * the machine between rounds cancels in each pair.
 */
export function pairedRatio(ref: number[], t: number[]): { median: number; q1: number; q3: number } {
  if (ref.length === 0 || ref.length !== t.length) throw new Error(`pairedRatio: needs two equally long, non-empty series, got ${ref.length} and ${t.length}`);
  const r = ref.map((v, i) => v / t[i]).sort((a, b) => a - b);
  const at = (q: number) => {
    const pos = q * (r.length - 1), lo = Math.floor(pos), hi = Math.ceil(pos);
    return r[lo] + (r[hi] - r[lo]) * (pos - lo);
  };
  return { median: at(0.5), q1: at(0.25), q3: at(0.75) };
}
