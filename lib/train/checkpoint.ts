// Training checkpoints in one safetensors file: the model's state dict under "model.", the
// optimizer's buffers under "optim.", and everything else (configuration, position, optimizer
// hyper-parameters, scheduler step, RNG state, partial-epoch sums) as JSON metadata. Written
// atomically, so an interrupted write never corrupts the previous checkpoint.
import { AdaShiftError } from '../errors';
import { IntTensor, isIntTensor, readSafetensors, saveSafetensors, SafetensorsEntry } from '../io/safetensors';
import { Tensor } from '../tensor';
import type { DeviceSpec } from '../device';

export const CHECKPOINT_FORMAT = 'adashift-checkpoint/1';

export interface CheckpointMeta {
  /** The training options the run was started with. */
  config: Record<string, unknown>;
  /** Completed epochs. */
  epoch: number;
  /** Batches already trained in epoch `epoch` (0 at an epoch boundary). */
  batch: number;
  optimizer: { kind: string; state: Record<number, { step: number }>; paramGroups: unknown[] };
  scheduler: { step: number } | null;
  rng: { seed: number; offset: number };
  /** Sums of the partial epoch (mid-epoch checkpoints), so a resumed epoch reports the same metrics. */
  partial: { lossSum: number; correct: number; seen: number; seconds: number } | null;
  /** Per-epoch metrics so far. */
  history: Record<string, unknown>[];
}

export interface CheckpointData {
  model: Record<string, Tensor | IntTensor>;
  optimizerBuffers: Record<number, Record<string, Tensor>>;
  meta: CheckpointMeta;
}

export function saveCheckpoint(file: string, data: CheckpointData): void {
  const tensors: Record<string, SafetensorsEntry> = {};
  for (const [k, v] of Object.entries(data.model)) tensors[`model.${k}`] = v;
  for (const [i, bufs] of Object.entries(data.optimizerBuffers)) {
    for (const [b, t] of Object.entries(bufs)) tensors[`optim.${i}.${b}`] = t;
  }
  saveSafetensors(file, tensors, { format: CHECKPOINT_FORMAT, meta: JSON.stringify(data.meta) });
}

/** What a metadata value is, for messages. */
function describe(v: unknown): string {
  if (v === undefined) return 'nothing (missing)';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v)}`;
  return `${typeof v} ${String(v)}`;
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

/**
 * Checks the structure of a checkpoint's parsed metadata: what train's resume and
 * evaluateCheckpoint read, with the types they read it as. The values themselves (a known model,
 * a positive learning rate...) are checked where they are used. Throws ERR_IO naming the file
 * and the first field that is wrong.
 */
function checkMeta(file: string, meta: unknown): CheckpointMeta {
  function bad(field: string, expected: string, v: unknown): never {
    throw new AdaShiftError('ERR_IO', `${file}: corrupt checkpoint metadata: '${field}' must be ${expected}, got ${describe(v)}`);
  }
  if (!isObject(meta)) throw new AdaShiftError('ERR_IO', `${file}: corrupt checkpoint metadata: expected a JSON object {config, epoch, batch, optimizer, scheduler, rng, partial, history}, got ${describe(meta)}`);
  const { config, optimizer, scheduler, rng, partial, history } = meta;
  if (!isObject(config)) bad('config', 'an object (the training options)', config);
  // the network and the data, which every checkpoint records
  for (const k of ['model', 'act', 'dataset']) if (typeof config[k] !== 'string') bad(`config.${k}`, 'a string', config[k]);
  // settings a checkpoint of an older version may lack (the defaults are used): typed when there
  for (const [keys, type] of [
    [['opt', 'schedule'], 'string'],
    [['epochs', 'batch', 'lr', 'momentum', 'wd', 'warmup', 'labelSmoothing', 'seed'], 'number'],
    [['augment', 'graph'], 'boolean'],
  ] as [string[], string][]) {
    for (const k of keys) if (config[k] !== undefined && typeof config[k] !== type) bad(`config.${k}`, `a ${type}`, config[k]);
  }
  if (config.dataDir !== undefined && config.dataDir !== null && typeof config.dataDir !== 'string') bad('config.dataDir', 'a string', config.dataDir);
  if (config.actOptions !== undefined && !isObject(config.actOptions)) bad('config.actOptions', 'an object', config.actOptions);
  if (!isCount(meta.epoch)) bad('epoch', 'a non-negative integer', meta.epoch);
  if (!isCount(meta.batch)) bad('batch', 'a non-negative integer', meta.batch);
  if (!isObject(optimizer)) bad('optimizer', 'an object {kind, state, paramGroups}', optimizer);
  if (typeof optimizer.kind !== 'string') bad('optimizer.kind', 'a string', optimizer.kind);
  if (!isObject(optimizer.state)) bad('optimizer.state', 'an object', optimizer.state);
  for (const [i, s] of Object.entries(optimizer.state)) {
    if (!/^(0|[1-9]\d*)$/.test(i)) throw new AdaShiftError('ERR_IO', `${file}: corrupt checkpoint metadata: 'optimizer.state' has the key '${i}', expected parameter indices (0, 1, ...)`);
    if (!isObject(s)) bad(`optimizer.state.${i}`, 'an object {step}', s);
    if (!isCount(s.step)) bad(`optimizer.state.${i}.step`, 'a non-negative integer', s.step);
  }
  if (!Array.isArray(optimizer.paramGroups)) bad('optimizer.paramGroups', 'an array', optimizer.paramGroups);
  optimizer.paramGroups.forEach((g, i) => isObject(g) || bad(`optimizer.paramGroups.${i}`, 'an object', g));
  if (scheduler !== null) {
    if (!isObject(scheduler)) bad('scheduler', 'null or an object {step}', scheduler);
    if (!isCount(scheduler.step)) bad('scheduler.step', 'a non-negative integer', scheduler.step);
  }
  if (!isObject(rng)) bad('rng', 'an object {seed, offset}', rng);
  for (const k of ['seed', 'offset']) if (!isCount(rng[k])) bad(`rng.${k}`, 'a non-negative integer', rng[k]);
  if (partial !== null) {
    if (!isObject(partial)) bad('partial', 'null or an object {lossSum, correct, seen, seconds}', partial);
    for (const k of ['lossSum', 'seconds']) if (typeof partial[k] !== 'number' || !Number.isFinite(partial[k])) bad(`partial.${k}`, 'a finite number', partial[k]);
    for (const k of ['correct', 'seen']) if (!isCount(partial[k])) bad(`partial.${k}`, 'a non-negative integer', partial[k]);
  }
  if (!Array.isArray(history)) bad('history', 'an array', history);
  history.forEach((h, i) => isObject(h) || bad(`history.${i}`, 'an object (one epoch\'s metrics)', h));
  return meta as unknown as CheckpointMeta;
}

/** The metadata of a checkpoint file, parsed and checked (ERR_IO naming the file if it is not one). */
function readMeta(file: string, metadata: Record<string, string>): CheckpointMeta {
  if (metadata.format !== CHECKPOINT_FORMAT) {
    throw new AdaShiftError('ERR_IO', `${file}: not an adashift training checkpoint (metadata format ${metadata.format === undefined ? 'missing' : `'${metadata.format}'`}, expected '${CHECKPOINT_FORMAT}')`);
  }
  if (typeof metadata.meta !== 'string') {
    throw new AdaShiftError('ERR_IO', `${file}: corrupt checkpoint: the metadata entry 'meta' must be a string of JSON, got ${describe(metadata.meta)}`);
  }
  let meta: unknown;
  try {
    meta = JSON.parse(metadata.meta);
  } catch (e) {
    throw new AdaShiftError('ERR_IO', `${file}: corrupt checkpoint metadata (${(e as Error).message})`);
  }
  return checkMeta(file, meta);
}

export function loadCheckpoint(file: string, device?: DeviceSpec): CheckpointData {
  const { metadata, tensors } = readSafetensors(file, { device });
  // Whatever is wrong below, no tensor of the file is left alive.
  try {
    const meta = readMeta(file, metadata);
    if (!Object.keys(tensors).some((k) => k.startsWith('model.'))) throw new AdaShiftError('ERR_IO', `${file}: the checkpoint holds no model tensors`);
    const model: Record<string, Tensor | IntTensor> = {};
    const optimizerBuffers: Record<number, Record<string, Tensor>> = {};
    for (const [k, v] of Object.entries(tensors)) {
      if (k.startsWith('model.')) Object.defineProperty(model, k.slice(6), { value: v, enumerable: true, writable: true, configurable: true });
      else if (k.startsWith('optim.') && v instanceof Tensor) {
        const m = /^optim\.(0|[1-9]\d*)\.(.+)$/.exec(k);
        if (!m) throw new AdaShiftError('ERR_IO', `${file}: corrupt checkpoint: tensor '${k}' is not named optim.<parameter index>.<buffer>`);
        Object.defineProperty((optimizerBuffers[Number(m[1])] ??= {}), m[2], { value: v, enumerable: true, writable: true, configurable: true });
      } else if (v instanceof Tensor) v.dispose();
    }
    return { model, optimizerBuffers, meta };
  } catch (e) {
    for (const v of Object.values(tensors)) if (v instanceof Tensor) v.dispose();
    throw e;
  }
}

export function disposeCheckpoint(c: CheckpointData): void {
  for (const v of Object.values(c.model)) if (!isIntTensor(v)) (v as Tensor).dispose();
  for (const bufs of Object.values(c.optimizerBuffers)) for (const t of Object.values(bufs)) t.dispose();
}
