// Training checkpoints (lib/train/checkpoint.ts): a round trip; metadata that is valid JSON but
// not a checkpoint's (a missing or mistyped field, null, a number...) is ERR_IO naming the file
// and the field; metadata that is not JSON, or not a string, is ERR_IO too; and whatever is
// refused, no tensor of the file is left alive.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as as from '../lib';
import { CHECKPOINT_FORMAT, CheckpointData, CheckpointMeta, disposeCheckpoint, loadCheckpoint, saveCheckpoint } from '../lib/train/checkpoint';
import { thrown } from './helpers/errors';

let dir: string;

beforeAll(() => {
  as.setDefaultDevice('cpu');
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'adashift-ckpt-'));
});
afterAll(() => {
  as.setDefaultDevice(undefined);
  fs.rmSync(dir, { recursive: true, force: true });
});

let serial = 0;
function file(name: string): string {
  return path.join(dir, `${serial++}-${name.replace(/\W+/g, '_')}.safetensors`);
}

const live = () => as.memory().tensors;

/** The metadata of a checkpoint written by train() after one epoch (SGD, cosine schedule). */
function goodMeta(): CheckpointMeta {
  return {
    config: {
      model: 'resnet20', act: 'relu', dataset: 'fashion-mnist', epochs: 2, batch: 8, opt: 'sgd', lr: 0.1, momentum: 0.9, wd: 5e-4,
      schedule: 'cosine', warmup: 1, labelSmoothing: 0, augment: true, seed: 0, resume: false, graph: false, device: 'cpu',
    },
    epoch: 1,
    batch: 0,
    optimizer: { kind: 'SGD', state: { 0: { step: 3 }, 1: { step: 3 } }, paramGroups: [{ lr: 0.05, momentum: 0.9, params: [0, 1] }] },
    scheduler: { step: 3 },
    rng: { seed: 0, offset: 128 },
    partial: null,
    history: [{ epoch: 1, trainLoss: 2.1, trainAcc: 0.2, testLoss: 2, testAcc: 0.25, lr: 0.05, imagesPerSec: 100, seconds: 0.2, peakBytes: 1000 }],
  };
}

/** Writes a checkpoint (two model tensors, an integer buffer, an optimizer buffer) with the given metadata string. */
function writeWithMeta(f: string, meta: string): void {
  const w = as.randn([2, 3]);
  const b = as.zeros([2]);
  const buf = as.ones([2, 3]);
  as.io.saveSafetensors(f, {
    'model.w': w,
    'model.b': b,
    'model.nbt': { dtype: 'I64', shape: [], data: BigInt64Array.of(3n) },
    'optim.0.momentum_buffer': buf,
  }, { format: CHECKPOINT_FORMAT, meta });
  for (const t of [w, b, buf]) t.dispose();
}

/** Writes a safetensors file by hand (its metadata need not be strings). */
function writeRaw(f: string, header: Record<string, unknown>, data: Buffer): void {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(f, Buffer.concat([len, json, data]));
}

describe('round trip', () => {
  test('saveCheckpoint then loadCheckpoint gives the tensors and the metadata back', () => {
    const f = file('good');
    const data: CheckpointData = {
      model: { 'conv.weight': as.randn([2, 3]), 'bn.num_batches_tracked': { dtype: 'I64', shape: [], data: BigInt64Array.of(5n) } },
      optimizerBuffers: { 0: { momentum_buffer: as.ones([2, 3]) } },
      meta: goodMeta(),
    };
    saveCheckpoint(f, data);
    const before = live();
    const back = loadCheckpoint(f, 'cpu');
    expect(back.meta).toEqual(goodMeta());
    expect((back.model['conv.weight'] as as.Tensor).toArray()).toEqual((data.model['conv.weight'] as as.Tensor).toArray());
    expect(Array.from((back.model['bn.num_batches_tracked'] as as.io.IntTensor).data as BigInt64Array)).toEqual([5n]);
    expect(back.optimizerBuffers[0].momentum_buffer.toArray()).toEqual([[1, 1, 1], [1, 1, 1]]);
    expect(live() - before).toBe(2);
    disposeCheckpoint(back);
    expect(live()).toBe(before);
    (data.model['conv.weight'] as as.Tensor).dispose();
    data.optimizerBuffers[0].momentum_buffer.dispose();
  });

  test('fields and settings it does not know, and settings an older version did not record, are accepted', () => {
    const f = file('compat');
    const meta = goodMeta() as unknown as Record<string, any>;
    meta.fromAnotherVersion = { x: 1 };
    meta.config.settingOfAnotherVersion = 1;
    delete meta.config.graph; // added after the format: the default is used
    delete meta.config.labelSmoothing;
    meta.config.actOptions = { grid: 4 };
    meta.config.dataDir = '/data';
    meta.partial = { lossSum: 12.5, correct: 3, seen: 16, seconds: 0.5 };
    meta.scheduler = null;
    writeWithMeta(f, JSON.stringify(meta));
    const c = loadCheckpoint(f, 'cpu');
    expect(c.meta).toEqual(meta);
    expect(Object.keys(c.model).sort()).toEqual(['b', 'nbt', 'w']);
    disposeCheckpoint(c);
  });
});

describe('metadata that is not a checkpoint\'s: ERR_IO naming the file and the field, nothing left alive', () => {
  type Edit = (m: Record<string, any>) => unknown;
  const set = (field: string, value: unknown): Edit => (m) => {
    const keys = field.split('.');
    const last = keys.pop()!;
    const o = keys.reduce((a, k) => a[k], m);
    if (value === undefined) delete o[last];
    else o[last] = value;
    return m;
  };
  const cases: [string, Edit, RegExp][] = [
    // the metadata as a whole
    ['an empty object', () => ({}), /'config' must be an object \(the training options\), got nothing \(missing\)/],
    ['null', () => null, /expected a JSON object \{config, epoch, batch, optimizer, scheduler, rng, partial, history\}, got null/],
    ['a number', () => 123, /expected a JSON object .*, got number 123/],
    ['an array', () => [goodMeta()], /expected a JSON object .*, got an array/],
    ['a string', () => 'checkpoint', /expected a JSON object .*, got the string "checkpoint"/],
    // config
    ['config null', set('config', null), /'config' must be an object \(the training options\), got null/],
    ['config an array', set('config', []), /'config' must be an object \(the training options\), got an array/],
    ['config without model', set('config.model', undefined), /'config\.model' must be a string, got nothing \(missing\)/],
    ['config.act a number', set('config.act', 5), /'config\.act' must be a string, got number 5/],
    ['config.dataset null', set('config.dataset', null), /'config\.dataset' must be a string, got null/],
    ['config.lr a string', set('config.lr', '0.1'), /'config\.lr' must be a number, got the string "0\.1"/],
    ['config.augment a number', set('config.augment', 1), /'config\.augment' must be a boolean, got number 1/],
    ['config.dataDir a number', set('config.dataDir', 7), /'config\.dataDir' must be a string, got number 7/],
    ['config.actOptions an array', set('config.actOptions', [4]), /'config\.actOptions' must be an object, got an array/],
    ['config.actOptions null', set('config.actOptions', null), /'config\.actOptions' must be an object, got null/],
    // position
    ['no epoch', set('epoch', undefined), /'epoch' must be a non-negative integer, got nothing \(missing\)/],
    ['a negative epoch', set('epoch', -1), /'epoch' must be a non-negative integer, got number -1/],
    ['a fractional batch', set('batch', 1.5), /'batch' must be a non-negative integer, got number 1\.5/],
    ['batch a string', set('batch', '0'), /'batch' must be a non-negative integer, got the string "0"/],
    // optimizer
    ['no optimizer', set('optimizer', undefined), /'optimizer' must be an object \{kind, state, paramGroups\}, got nothing \(missing\)/],
    ['optimizer.kind a number', set('optimizer.kind', 1), /'optimizer\.kind' must be a string, got number 1/],
    ['optimizer.state an array', set('optimizer.state', [{ step: 1 }]), /'optimizer\.state' must be an object, got an array/],
    ['optimizer.state keyed by name', set('optimizer.state', { w: { step: 1 } }), /'optimizer\.state' has the key 'w', expected parameter indices/],
    ['optimizer.state.1 null', set('optimizer.state.1', null), /'optimizer\.state\.1' must be an object \{step\}, got null/],
    ['optimizer.state.0 without step', set('optimizer.state.0.step', undefined), /'optimizer\.state\.0\.step' must be a non-negative integer, got nothing \(missing\)/],
    ['optimizer.paramGroups an object', set('optimizer.paramGroups', {}), /'optimizer\.paramGroups' must be an array, got an object/],
    ['optimizer.paramGroups holding null', set('optimizer.paramGroups', [null]), /'optimizer\.paramGroups\.0' must be an object, got null/],
    // scheduler, rng, partial, history
    ['no scheduler', set('scheduler', undefined), /'scheduler' must be null or an object \{step\}, got nothing \(missing\)/],
    ['scheduler.step negative', set('scheduler.step', -3), /'scheduler\.step' must be a non-negative integer, got number -3/],
    ['no rng', set('rng', undefined), /'rng' must be an object \{seed, offset\}, got nothing \(missing\)/],
    ['rng.offset fractional', set('rng.offset', 0.5), /'rng\.offset' must be a non-negative integer, got number 0\.5/],
    ['partial a number', set('partial', 3), /'partial' must be null or an object \{lossSum, correct, seen, seconds\}, got number 3/],
    ['partial.lossSum a string', set('partial', { lossSum: 'x', correct: 1, seen: 2, seconds: 0.1 }), /'partial\.lossSum' must be a finite number, got the string "x"/],
    ['partial.seen negative', set('partial', { lossSum: 1, correct: 1, seen: -2, seconds: 0.1 }), /'partial\.seen' must be a non-negative integer, got number -2/],
    ['no history', set('history', undefined), /'history' must be an array, got nothing \(missing\)/],
    ['history holding a number', set('history', [3]), /'history\.0' must be an object \(one epoch's metrics\), got number 3/],
  ];
  test.each(cases)('%s', (label, edit, message) => {
    const f = file(label);
    writeWithMeta(f, JSON.stringify(edit(goodMeta() as unknown as Record<string, any>)));
    const before = live();
    const e = thrown(() => loadCheckpoint(f, 'cpu'), 'ERR_IO');
    expect(e.constructor.name).toBe('AdaShiftError');
    expect(e.message.startsWith(`${f}: corrupt checkpoint metadata: `)).toBe(true);
    expect(e.message).toMatch(message);
    expect(live()).toBe(before); // the tensors read before the metadata was checked are freed
  });

  test("metadata that is not JSON: ERR_IO, and the tensors already read are freed", () => {
    const f = file('not-json');
    writeWithMeta(f, '{bad');
    const before = live();
    const e = thrown(() => loadCheckpoint(f, 'cpu'), 'ERR_IO');
    expect(e.message).toContain(f);
    expect(e.message).toMatch(/corrupt checkpoint metadata \(.*JSON/);
    expect(live()).toBe(before);
  });

  test("a 'meta' entry that is not a string, or missing, says so (not that the format is wrong)", () => {
    const data = Buffer.alloc(8);
    const tensors = { 'model.w': { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
    // a metadata value that is not a string breaks the safetensors format itself (the reader says
    // so); a missing one is the checkpoint's to name
    const byReader = (got: string) => `corrupt header: __metadata__ 'meta' must be a string \\(the format's metadata maps strings to strings\\), got ${got}`;
    for (const [meta, got] of [[123, byReader('123')], [{ epoch: 1 }, byReader('\\{"epoch":1\\}')], [undefined, "corrupt checkpoint: the metadata entry 'meta' must be a string of JSON, got nothing \\(missing\\)"]] as [unknown, string][]) {
      const f = file(`meta-${typeof meta}`);
      writeRaw(f, { ...tensors, __metadata__: { format: CHECKPOINT_FORMAT, meta } }, data);
      const before = live();
      const e = thrown(() => loadCheckpoint(f, 'cpu'), 'ERR_IO');
      expect(e.message).toMatch(new RegExp(`^${f.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: ${got}$`));
      expect(e.message).not.toMatch(/expected 'adashift-checkpoint\/1'/);
      expect(live()).toBe(before);
    }
  });

  test('a file that is not a checkpoint: ERR_IO naming the format found, nothing left alive', () => {
    const f = file('not-ckpt');
    const w = as.ones([2]);
    as.io.saveSafetensors(f, { 'model.w': w }, { format: 'pt' });
    w.dispose();
    const before = live();
    expect(thrown(() => loadCheckpoint(f, 'cpu'), 'ERR_IO').message).toMatch(/not an adashift training checkpoint \(metadata format 'pt', expected 'adashift-checkpoint\/1'\)/);
    expect(live()).toBe(before);
  });
});

describe('tensors that are not a checkpoint\'s', () => {
  test('no model tensors: ERR_IO, and the optimizer buffers are freed too', () => {
    const f = file('no-model');
    const buf = as.ones([2, 3]);
    as.io.saveSafetensors(f, { 'optim.0.momentum_buffer': buf, other: buf }, { format: CHECKPOINT_FORMAT, meta: JSON.stringify(goodMeta()) });
    buf.dispose();
    const before = live();
    expect(thrown(() => loadCheckpoint(f, 'cpu'), 'ERR_IO').message).toBe(`${f}: the checkpoint holds no model tensors`);
    expect(live()).toBe(before);
  });

  test('an optimizer buffer not named optim.<index>.<buffer>: ERR_IO naming it, nothing left alive', () => {
    for (const name of ['optim.w.momentum_buffer', 'optim.0', 'optim.-1.exp_avg', 'optim.01.exp_avg']) {
      const f = file(name);
      const w = as.ones([2]);
      as.io.saveSafetensors(f, { 'model.w': w, [name]: w }, { format: CHECKPOINT_FORMAT, meta: JSON.stringify(goodMeta()) });
      w.dispose();
      const before = live();
      expect(thrown(() => loadCheckpoint(f, 'cpu'), 'ERR_IO').message).toBe(`${f}: corrupt checkpoint: tensor '${name}' is not named optim.<parameter index>.<buffer>`);
      expect(live()).toBe(before);
    }
  });
});
