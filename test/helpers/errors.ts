import { types } from 'util';

/**
 * Runs fn, which must throw an Error (with the given `code`, when given) (and a message matching `message`,
 * when given); returns the error. Errors made by the addon come from Node's main realm, not
 * jest's sandbox, so this checks isNativeError rather than instanceof alone.
 */
export function thrown(fn: () => unknown, code?: string, message?: RegExp): Error & { code: string } {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  if (err === undefined) throw new Error(`expected ${code ?? 'an error'}, but the call returned normally`);
  expect(types.isNativeError(err) || err instanceof Error).toBe(true);
  if (code !== undefined) expect((err as { code?: unknown }).code).toBe(code);
  expect(typeof (err as Error).message).toBe('string');
  if (message) expect((err as Error).message).toMatch(message);
  return err as Error & { code: string };
}
