// Small helpers shared by the op families.
import { AdaShiftError } from '../errors';
import { NativeTensor } from '../native';
import { Tensor } from '../tensor';

export function wrap(h: NativeTensor): Tensor {
  return new Tensor(h);
}

export function assertTensor(t: unknown, fn: string, name: string): asserts t is Tensor {
  if (!(t instanceof Tensor)) {
    throw new AdaShiftError('ERR_ARG', `${fn}: '${name}' must be a Tensor, got ${t === null ? 'null' : typeof t}`);
  }
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

export function shapeStr(s: readonly number[]): string {
  return `[${s.join(', ')}]`;
}

/**
 * Refuses arguments a function does not take: `sum(x, 1)` or `softmax(x, {dim: 0})` would
 * otherwise run over every element / the last axis while the caller meant something else.
 */
export function noMoreArgs(fn: string, extra: readonly unknown[], what: string): void {
  if (extra.length) throw new AdaShiftError('ERR_ARG', `${fn}: ${what}; it takes no other argument, got ${extra.length} more (${extra.map((a) => JSON.stringify(a) ?? typeof a).join(', ')})`);
}

/** A reshaped view of a handle the caller owns; the original handle is released. */
export function reshapeOwned(h: NativeTensor, shape: readonly number[]): NativeTensor {
  const r = h.reshape(Array.from(shape));
  h.dispose();
  return r;
}
