// compare(): trains each activation with several seeds under the same settings and writes a
// report: a Markdown table (test accuracy mean and spread, seconds per epoch, images/s,
// parameters), summary.json, and SVG plots of test accuracy and train loss per epoch. An
// activation may be listed more than once with options of its own ('adashift-ma:grid=4').
import * as path from 'path';
import { resolveDevice } from '../device';
import { AdaShiftError, check, checkOptions } from '../errors';
import { ensureDir, writeAtomic } from '../io/safetensors';
import { ActivationName, ACTIVATIONS, ACTIVATION_OWN_OPTIONS } from '../nn/activation';
import { resnet } from '../nn/resnet';
import { cpuLabel, environment } from '../provenance';
import { mean, median, std } from '../stats';
import { EpochMetrics, train, TrainActOptions, TrainCallbacks, TRAIN_OPTIONS, TrainOptions } from './train';

/** One activation of a comparison with options of its own, over the comparison's actOptions. */
export interface CompareArm {
  act: ActivationName;
  actOptions?: TrainActOptions;
}

export interface CompareOptions extends Omit<TrainOptions, 'act' | 'out' | 'resume' | 'seed'> {
  /**
   * What to compare: activation names, CompareArm objects, or names with options in the
   * command line's form, e.g. 'adashift-b:proj', 'adashift-ma:grid=4:rect=norm' (see parseArm).
   * Every entry's label must differ. Default: every activation once.
   */
  acts?: (ActivationName | CompareArm | string)[];
  seeds?: number;
  /** First seed; run k uses seed + k. */
  seed?: number;
  out: string;
}

export interface CompareRow {
  /** The entry in parseArm's form ('adashift-ma:grid=4'; the name alone without own options). */
  label: string;
  act: ActivationName;
  /** The entry's own options (the comparison's actOptions apply as well). */
  actOptions: TrainActOptions;
  seeds: number[];
  finalTestAcc: number[];
  meanTestAcc: number;
  stdTestAcc: number;
  /** Median over every epoch of every seed. */
  secondsPerEpoch: number;
  /** Median over every epoch of every seed. */
  imagesPerSec: number;
  /** The highest of the epochs' peakBytes over every seed (bytes of live tensors in a step). */
  peakBytes: number;
  params: number;
  histories: EpochMetrics[][];
}

export interface CompareCallbacks {
  /** label: the entry's label (its activation's name when it has no options of its own). */
  onRunStart?(label: string, seed: number, index: number, total: number): void;
  train?: (label: string, seed: number) => TrainCallbacks;
  onRunEnd?(label: string, seed: number, history: EpochMetrics[]): void;
}

// How a spec's value is read, per option (the record makes a new activation option a compile error here).
const ARM_OPTION_KINDS: Record<keyof TrainActOptions, 'boolean' | 'integer' | 'string'> = {
  proj: 'boolean',
  grid: 'integer',
  headDim: 'integer',
  rect: 'string',
  keepContext: 'boolean',
  approximate: 'string',
};
const ARM_KEYS = Object.keys(ARM_OPTION_KINDS) as (keyof TrainActOptions)[];
const kebab = (k: string) => k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/**
 * An entry of `compare --acts`: an activation's name, then its own options, each `:name=value`
 * with the command line's flag names (`:grid=4`, `:head-dim=32`, `:rect=norm`,
 * `:approximate=tanh`; booleans bare or `=true` / `=false`: `:proj`, `:keep-context`).
 * Only options the activation reads are allowed (AdaShift-B: proj; AdaShift-MA: grid, head-dim,
 * rect, keep-context; GELU: approximate).
 */
export function parseArm(spec: string): CompareArm {
  check(typeof spec === 'string', 'ERR_ARG', () => `compare: an activation entry must be a string or {act, actOptions}, got ${typeof spec}`);
  const [act, ...parts] = spec.split(':').map((p) => p.trim());
  check(ACTIVATIONS.includes(act as ActivationName), 'ERR_ARG', () => `unknown activation '${act}' in '${spec}'; expected one of ${ACTIVATIONS.join(', ')}`);
  const options: Record<string, unknown> = {};
  for (const part of parts) {
    const eq = part.indexOf('=');
    const name = eq < 0 ? part : part.slice(0, eq);
    const value = eq < 0 ? undefined : part.slice(eq + 1);
    const key = ARM_KEYS.find((k) => kebab(k) === name);
    check(key !== undefined, 'ERR_ARG', () => `'${spec}': unknown option '${name}' (known: ${ARM_KEYS.map(kebab).join(', ')})`);
    check(!(key! in options), 'ERR_ARG', () => `'${spec}': ${name} is given twice`);
    const kind = ARM_OPTION_KINDS[key!];
    if (kind === 'boolean') {
      check(value === undefined || value === 'true' || value === 'false', 'ERR_ARG', () => `'${spec}': ${name} is a flag (${name}, ${name}=true or ${name}=false), got '${value}'`);
      options[key!] = value !== 'false';
    } else if (kind === 'integer') {
      const n = Number(value);
      check(value !== undefined && value !== '' && Number.isInteger(n), 'ERR_ARG', () => `'${spec}': ${name} must be ${name}=<integer>, got ${value === undefined ? 'no value' : `'${value}'`}`);
      options[key!] = n;
    } else {
      check(value !== undefined && value !== '', 'ERR_ARG', () => `'${spec}': ${name} must be ${name}=<value>`);
      options[key!] = value;
    }
  }
  return { act: act as ActivationName, actOptions: options as TrainActOptions };
}

/** An entry's label: parseArm's form, options in a fixed order (the name alone without options). */
export function armLabel(arm: CompareArm): string {
  const o = arm.actOptions ?? {};
  return [arm.act, ...ARM_KEYS.filter((k) => o[k] !== undefined).map((k) => (o[k] === true ? kebab(k) : `${kebab(k)}=${o[k]}`))].join(':');
}

interface ResolvedArm {
  label: string;
  act: ActivationName;
  own: TrainActOptions;
  /** The run's options: the comparison's, then the entry's own over them. */
  actOptions: TrainActOptions | undefined;
}

function resolveArm(entry: ActivationName | CompareArm | string, shared: TrainActOptions | undefined): ResolvedArm {
  const arm = typeof entry === 'string' ? parseArm(entry) : entry;
  check(arm !== null && typeof arm === 'object' && ACTIVATIONS.includes(arm.act), 'ERR_ARG', () => `compare: acts must be activation names or {act, actOptions} with act one of ${ACTIVATIONS.join(', ')}, got ${JSON.stringify(entry)}`);
  const own = checkOptions(`compare: ${arm.act}'s actOptions`, arm.actOptions, ARM_KEYS);
  for (const [k, v] of Object.entries(own)) {
    const kind = ARM_OPTION_KINDS[k as keyof TrainActOptions];
    check(typeof v === (kind === 'integer' ? 'number' : kind), 'ERR_ARG', () => `compare: ${arm.act}'s ${k} must be ${kind === 'integer' ? 'an' : 'a'} ${kind}, got ${JSON.stringify(v)}`);
  }
  const label = armLabel({ act: arm.act, actOptions: own });
  const mine = ACTIVATION_OWN_OPTIONS[arm.act];
  for (const k of Object.keys(own)) {
    check(mine.includes(k as keyof TrainActOptions), 'ERR_ARG', () => `compare: '${label}': ${arm.act} does not read ${kebab(k)} (its options: ${mine.length ? mine.map(kebab).join(', ') : 'none'})`);
  }
  const merged = { ...shared, ...own };
  return { label, act: arm.act, own, actOptions: Object.keys(merged).length ? merged : undefined };
}

// A run folder's name from a label: 'adashift-ma:grid=4' -> 'adashift-ma_grid-4'.
const folderOf = (label: string) => label.replace(/:/g, '_').replace(/=/g, '-');

export async function compare(options: CompareOptions, callbacks: CompareCallbacks = {}) {
  // train()'s options but the two compare sets per run (act, resume), and its own
  checkOptions('compare', options, [...TRAIN_OPTIONS.filter((k) => k !== 'act' && k !== 'resume'), 'acts', 'seeds']);
  const seeds = options.seeds ?? 1;
  const seed0 = options.seed ?? 0;
  check(options.acts === undefined || (Array.isArray(options.acts) && options.acts.length > 0), 'ERR_ARG', () => `compare: acts must be a non-empty array of activations (${ACTIVATIONS.join(', ')}), got ${JSON.stringify(options.acts)}`);
  check(Number.isInteger(seeds) && seeds >= 1, 'ERR_ARG', () => `compare: seeds must be a positive integer, got ${seeds}`);
  check(typeof options.out === 'string' && options.out.length > 0, 'ERR_ARG', () => 'compare: an output folder (out) is required');
  check(options.actOptions === undefined || (options.actOptions !== null && typeof options.actOptions === 'object'), 'ERR_ARG', () => `compare: invalid actOptions: ${String(options.actOptions)} (expected an object)`);
  const arms = (options.acts ?? [...ACTIVATIONS]).map((a) => resolveArm(a, options.actOptions));
  for (const [i, a] of arms.entries()) {
    check(arms.findIndex((b) => b.label === a.label) === i, 'ERR_ARG', () => `compare: '${a.label}' is listed twice`);
  }
  // Every entry's model is built once before the first run: an option its activation refuses
  // (a grid of 0, a head size that does not divide a layer's channels) stops the comparison
  // now, not after the entries before it have trained.
  for (const a of arms) {
    try {
      resnet(options.model ?? 'resnet20', { act: a.act, actOptions: a.actOptions, numClasses: 10, inChannels: 1, smallInput: true, device: 'cpu' }).dispose();
    } catch (e) {
      if (e instanceof AdaShiftError) throw new AdaShiftError(e.code, `compare: '${a.label}': ${e.message}`);
      throw e;
    }
  }
  ensureDir(options.out);
  const { acts: _a, seeds: _s, seed: _sd, out, ...trainOptions } = options;
  // Taken before the runs: the code and machine that ran them (an edit to the checkout while
  // they run must not change what the report says they ran).
  const provenance = environment(resolveDevice(options.device));
  const rows: CompareRow[] = [];
  const total = arms.length * seeds;
  let k = 0;
  for (const arm of arms) {
    const histories: EpochMetrics[][] = [];
    let params = 0;
    for (let i = 0; i < seeds; i++) {
      const seed = seed0 + i;
      callbacks.onRunStart?.(arm.label, seed, k++, total);
      const runOptions = { ...trainOptions, act: arm.act, actOptions: arm.actOptions, seed, out: path.join(out, `${folderOf(arm.label)}-seed${seed}`) };
      const r = await train(runOptions, callbacks.train?.(arm.label, seed) ?? {});
      histories.push(r.history);
      params = r.params;
      callbacks.onRunEnd?.(arm.label, seed, r.history);
    }
    const finals = histories.map((h) => h[h.length - 1].testAcc);
    const epochs = histories.flat();
    rows.push({
      label: arm.label,
      act: arm.act,
      actOptions: arm.own,
      seeds: histories.map((_, i) => seed0 + i),
      finalTestAcc: finals,
      meanTestAcc: mean(finals),
      stdTestAcc: std(finals),
      // Medians over every epoch of every seed: a few epochs slowed by another process on a
      // shared machine move a mean, not a median.
      secondsPerEpoch: median(epochs.map((e) => e.seconds)),
      imagesPerSec: median(epochs.map((e) => e.imagesPerSec)),
      peakBytes: Math.max(...epochs.map((e) => e.peakBytes ?? 0)),
      params,
      histories,
    });
  }
  const table = markdownTable(rows, options, provenance);
  const plots = await renderPlots(rows, out);
  writeAtomic(path.join(out, 'report.md'), [Buffer.from(`${table}\n\n![test accuracy](test-accuracy.svg)\n![train loss](train-loss.svg)\n`)]);
  const summary = { ...provenance, options: { ...trainOptions, acts: arms.map((a) => a.label), seeds, seed: seed0 }, rows };
  writeAtomic(path.join(out, 'summary.json'), [Buffer.from(JSON.stringify(summary, null, 2) + '\n')]);
  return { rows, table, plots, report: path.join(out, 'report.md') };
}

export function markdownTable(rows: CompareRow[], options: Partial<CompareOptions> = {}, provenance?: ReturnType<typeof environment>): string {
  const relu = rows.find((r) => r.label === 'relu');
  const lines = [
    `| activation | test accuracy (mean ± std over ${rows[0]?.finalTestAcc.length ?? 0} seed${rows[0]?.finalTestAcc.length === 1 ? '' : 's'}) | seconds / epoch (median) | images / s (median)${relu ? ' | time vs ReLU' : ''} | peak tensor memory (MiB) | parameters |`,
    `| --- | --- | --- | ---${relu ? ' | ---' : ''} | --- | --- |`,
  ];
  for (const r of rows) {
    const acc = `${(100 * r.meanTestAcc).toFixed(2)}% ± ${(100 * r.stdTestAcc).toFixed(2)}`;
    const vs = relu ? ` | ${(r.secondsPerEpoch / relu.secondsPerEpoch).toFixed(2)}x` : '';
    lines.push(`| ${r.label} | ${acc} | ${r.secondsPerEpoch.toFixed(1)} | ${r.imagesPerSec.toFixed(0)}${vs} | ${(r.peakBytes / 2 ** 20).toFixed(1)} | ${r.params.toLocaleString('en-US')} |`);
  }
  const o = options;
  const setting = [o.model ?? 'resnet20', o.dataset ?? 'fashion-mnist', `${o.epochs ?? 10} ${(o.epochs ?? 10) === 1 ? 'epoch' : 'epochs'}`, `batch ${o.batch ?? 128}`, `${o.opt ?? 'sgd'} lr ${o.lr ?? 0.1}`, `schedule ${o.schedule ?? 'cosine'}`]
    .concat(o.limitTrain ? [`first ${o.limitTrain} training images`] : [])
    .concat(o.actOptions && Object.keys(o.actOptions).length ? [`activation options ${Object.entries(o.actOptions).map(([k, v]) => `${k} ${v}`).join(', ')}`] : [])
    .join(', ');
  const p = provenance;
  const source = p ? `\n\n${p.date}, adashift ${p.version} (commit ${p.commit}), ${p.device === 'cpu' ? `${cpuLabel(p.cpu, p.cpuDetails)}, ${p.threads} thread(s)` : `${p.gpu ?? p.device}`}` : '';
  return `${setting}${source}\n\n${lines.join('\n')}`;
}

/** Line charts per activation (mean over seeds), rendered to SVG with vega-lite + vega. */
export async function renderPlots(rows: CompareRow[], out: string): Promise<string[]> {
  // Loaded on demand: plotting is not needed for training.
  const vega = require('vega') as typeof import('vega');
  const vl = require('vega-lite') as typeof import('vega-lite');
  const files: string[] = [];
  const series = (metric: 'testAcc' | 'trainLoss') =>
    rows.flatMap((r) => {
      const epochs = Math.min(...r.histories.map((h) => h.length));
      return Array.from({ length: epochs }, (_, e) => ({
        activation: r.label,
        epoch: e + 1,
        value: mean(r.histories.map((h) => h[e][metric])) * (metric === 'testAcc' ? 100 : 1),
      }));
    });
  for (const [metric, title, file] of [
    ['testAcc', 'test accuracy (%)', 'test-accuracy.svg'],
    ['trainLoss', 'train loss', 'train-loss.svg'],
  ] as const) {
    const spec = vl.compile({
      $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
      title: `${title} per epoch (mean over seeds)`,
      width: 480,
      height: 300,
      data: { values: series(metric) },
      mark: { type: 'line', point: true },
      encoding: {
        x: { field: 'epoch', type: 'quantitative', axis: { tickMinStep: 1 } },
        y: { field: 'value', type: 'quantitative', title, scale: { zero: false } },
        color: { field: 'activation', type: 'nominal' },
      },
    } as never).spec;
    const view = new vega.View(vega.parse(spec), { renderer: 'none' });
    const svg = await view.toSVG();
    view.finalize();
    const f = path.join(out, file);
    writeAtomic(f, [Buffer.from(svg)]);
    files.push(f);
  }
  return files;
}
