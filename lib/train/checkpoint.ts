// Training checkpoints in one safetensors file: the model's state dict under "model.", the
// optimizer's buffers under "optim.", and everything else (configuration, position, optimizer
// hyper-parameters, scheduler step, RNG state, partial-epoch sums) as JSON metadata. Written
// atomically, so an interrupted write never corrupts the previous checkpoint.
import { AdaShiftError } from '../errors';
import { IntTensor, isIntTensor, readSafetensors, saveSafetensors, SafetensorsEntry } from '../io/safetensors';
import { Tensor } from '../tensor';

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

export function loadCheckpoint(file: string, device?: string): CheckpointData {
  const { metadata, tensors } = readSafetensors(file, { device });
  if (metadata.format !== CHECKPOINT_FORMAT || typeof metadata.meta !== 'string') {
    for (const v of Object.values(tensors)) if (v instanceof Tensor) v.dispose();
    throw new AdaShiftError('ERR_IO', `${file}: not an adashift training checkpoint (metadata format '${metadata.format ?? 'missing'}', expected '${CHECKPOINT_FORMAT}')`);
  }
  let meta: CheckpointMeta;
  try {
    meta = JSON.parse(metadata.meta);
  } catch (e) {
    throw new AdaShiftError('ERR_IO', `${file}: corrupt checkpoint metadata (${(e as Error).message})`);
  }
  const model: Record<string, Tensor | IntTensor> = {};
  const optimizerBuffers: Record<number, Record<string, Tensor>> = {};
  for (const [k, v] of Object.entries(tensors)) {
    if (k.startsWith('model.')) model[k.slice(6)] = v;
    else if (k.startsWith('optim.') && v instanceof Tensor) {
      const rest = k.slice(6);
      const dot = rest.indexOf('.');
      const i = Number(rest.slice(0, dot));
      (optimizerBuffers[i] ??= {})[rest.slice(dot + 1)] = v;
    } else if (v instanceof Tensor) v.dispose();
  }
  if (!Object.keys(model).length) throw new AdaShiftError('ERR_IO', `${file}: the checkpoint holds no model tensors`);
  return { model, optimizerBuffers, meta };
}

export function disposeCheckpoint(c: CheckpointData): void {
  for (const v of Object.values(c.model)) if (!isIntTensor(v)) (v as Tensor).dispose();
  for (const bufs of Object.values(c.optimizerBuffers)) for (const t of Object.values(bufs)) t.dispose();
}
