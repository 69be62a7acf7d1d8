// compare(): trains each activation with several seeds under the same settings and writes a
// report: a Markdown table (test accuracy mean and spread, seconds per epoch, images/s,
// parameters), summary.json, and SVG plots of test accuracy and train loss per epoch. An
// activation may be listed more than once with options of its own ('adashift-ma:grid=4').
import * as fs from 'fs';
import * as path from 'path';
import { resolveDevice } from '../device';
import { AdaShiftError, check, checkOptions } from '../errors';
import { ensureDir, writeAtomic } from '../io/safetensors';
import { notRegularFile } from '../io/files';
import { acquireRunLock } from './lock';
import { ActivationName, ACTIVATIONS, ACTIVATION_OWN_OPTIONS } from '../nn/activation';
import { resnet } from '../nn/resnet';
import { cpuLabel, environment } from '../provenance';
import { mean, median, std } from '../stats';
import { EpochMetrics, refuseChangedSettings, train, TrainActOptions, TrainCallbacks, TRAIN_DEFAULTS, TRAIN_OPTIONS, TrainOptions } from './train';

/** One activation of a comparison with options of its own, over the comparison's actOptions. */
export interface CompareArm {
  act: ActivationName;
  actOptions?: TrainActOptions;
}

export interface CompareOptions extends Omit<TrainOptions, 'act' | 'out' | 'resume' | 'seed'> {
  /**
   * Continue the comparison in out (its compare.json): the settings are its own (entries and
   * seeds may be given anew, e.g. another seed; device, threads, graph and dataDir may change;
   * any other setting given must equal the comparison's).
   */
  resume?: boolean;
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
  /** The sample standard deviation over the seeds; null with one seed (undefined there, not 0). */
  stdTestAcc: number | null;
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
  /** Asked after every batch and before every run: true stops the comparison (resume continues it). */
  shouldStop?(): boolean;
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

/** What compare() resolves to. Without interrupted, every run is done and the report written. */
export interface CompareResult {
  /** One row per entry whose runs are all done (every entry's unless interrupted). */
  rows: CompareRow[];
  /** The Markdown table ('' when interrupted). */
  table: string;
  plots: string[];
  /** report.md's path (undefined when interrupted). */
  report?: string;
  /** A run was stopped (shouldStop): compare({resume: true, out}) continues from there. */
  interrupted: boolean;
  /** Runs done of the comparison's runs (entries x seeds). */
  runsDone: number;
  runs: number;
}

// The comparison's record in its folder (compare.json): its options, for resume, and who ran it.
interface ComparePlan {
  options: Omit<CompareOptions, 'out' | 'resume' | 'acts'> & { acts: string[] };
  started: Provenance;
  resumed: Provenance[];
}
type Provenance = ReturnType<typeof environment>;

/** What a resumed comparison may be given anew: what to run (entries, seeds) and where. */
/** The most runs per entry a comparison makes (the command line's bound too). */
const MAX_SEEDS = 1000;

/** A comparison's own files (its runs are in folders of their own). */
const COMPARISON_FILES = ['compare.json', 'report.md', 'summary.json', 'test-accuracy.svg', 'train-loss.svg'];

const COMPARE_RESUME_MAY_CHANGE = new Set(['acts', 'seeds', 'device', 'threads', 'graph', 'dataDir', 'maxBatches', 'out', 'resume', 'overwrite']);

// JSON with sorted keys: settings compared by value.
const stable = (v: unknown): string =>
  v !== null && typeof v === 'object' && !Array.isArray(v)
    ? `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${stable((v as Record<string, unknown>)[k])}`).join(',')}}`
    : JSON.stringify(v) ?? 'undefined';

function readPlan(file: string): ComparePlan {
  if (!fs.existsSync(file)) throw new AdaShiftError('ERR_IO', `nothing to resume: ${file} does not exist (compare writes it when a comparison starts)`);
  const notFile = notRegularFile(file);
  if (notFile) throw new AdaShiftError('ERR_IO', `${file}: ${notFile}`);
  let plan: ComparePlan;
  try {
    plan = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new AdaShiftError('ERR_IO', `${file}: not a comparison's record (${(e as Error).message})`);
  }
  check(plan !== null && typeof plan === 'object' && plan.options !== null && typeof plan.options === 'object' && Array.isArray(plan.options.acts) && plan.started !== undefined, 'ERR_IO', () => `${file}: not a comparison's record (options, acts or started missing)`);
  const isRecord = (v: unknown) => v !== null && typeof v === 'object' && !Array.isArray(v);
  check(isRecord(plan.started), 'ERR_IO', () => `${file}: not a comparison's record ('started' must be an object: the date, commit and machine it started on)`);
  plan.resumed ??= [];
  check(Array.isArray(plan.resumed) && plan.resumed.every(isRecord), 'ERR_IO', () => `${file}: not a comparison's record ('resumed' must be an array of objects)`);
  const seeds = plan.options.seeds;
  check(seeds === undefined || (Number.isInteger(seeds) && seeds >= 1 && seeds <= MAX_SEEDS), 'ERR_IO', () => `${file}: 'seeds' must be an integer in [1, ${MAX_SEEDS}], got ${JSON.stringify(seeds)}`);
  return plan;
}

/**
 * Trains every entry of acts seeds times with the same settings, then writes report.md,
 * summary.json and the plots to out. Each run has its own folder (train()'s files). With
 * resume, a comparison stopped part-way (its compare.json) continues: finished runs are read
 * back, a stopped one resumes from its checkpoint, the rest run.
 */
export async function compare(options: CompareOptions, callbacks: CompareCallbacks = {}): Promise<CompareResult> {
  // train()'s options but the two compare sets per run (act, seed is the first seed), and its own
  checkOptions('compare', options, [...TRAIN_OPTIONS.filter((k) => k !== 'act'), 'acts', 'seeds']);
  check(typeof options.out === 'string' && options.out.length > 0, 'ERR_ARG', () => 'compare: an output folder (out) is required');
  const planFile = path.join(options.out, 'compare.json');
  const plan = options.resume === true ? readPlan(planFile) : null;
  if (plan) {
    // The settings are the comparison's; one given now that differs is refused, not dropped.
    const given = Object.entries(options).filter(([k, v]) => v !== undefined && !COMPARE_RESUME_MAY_CHANGE.has(k));
    const saved = { ...TRAIN_DEFAULTS, ...plan.options } as Record<string, unknown>;
    refuseChangedSettings('compare: a resumed comparison', "the comparison's", 'compare into another folder', given.filter(([k, v]) => stable(v) !== stable(saved[k])).map(([k, v]) => [k, v, saved[k]]));
    options = { ...plan.options, ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)), out: options.out };
  }
  const seeds = options.seeds ?? 1;
  const seed0 = options.seed ?? 0;
  check(options.acts === undefined || (Array.isArray(options.acts) && options.acts.length > 0), 'ERR_ARG', () => `compare: acts must be a non-empty array of activations (${ACTIVATIONS.join(', ')}), got ${JSON.stringify(options.acts)}`);
  check(Number.isInteger(seeds) && seeds >= 1 && seeds <= MAX_SEEDS, 'ERR_ARG', () => `compare: seeds must be an integer in [1, ${MAX_SEEDS}], got ${seeds}`);
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
      resnet(options.model ?? TRAIN_DEFAULTS.model, { act: a.act, actOptions: a.actOptions, numClasses: 10, inChannels: 1, smallInput: true, device: 'cpu' }).dispose();
    } catch (e) {
      if (e instanceof AdaShiftError) throw new AdaShiftError(e.code, `compare: '${a.label}': ${e.message}`);
      throw e;
    }
  }
  const runFolder = (a: ResolvedArm, seed: number) => path.join(options.out, `${folderOf(a.label)}-seed${seed}`);
  if (!plan && options.overwrite !== true) {
    // A new comparison does not replace an earlier one's runs unless told to (before any run).
    const held = [planFile, ...arms.flatMap((a) => Array.from({ length: seeds }, (_, i) => path.join(runFolder(a, seed0 + i), 'checkpoint.safetensors')))].filter((f) => fs.existsSync(f));
    check(held.length === 0, 'ERR_ARG', () => `compare: ${options.out} already holds ${held[0] === planFile ? 'a comparison (compare.json)' : `a run (${held[0]})`}: continue it with resume (--resume), replace it with overwrite (--overwrite), or write to another folder`);
  }
  ensureDir(options.out);
  // one process writes a comparison (train() locks each run's folder too); one that replaces
  // another removes its report first, so a stop before the new report leaves none of the old
  const lock = acquireRunLock(options.out, 'comparison');
  try {
    if (!plan && options.overwrite === true) for (const f of COMPARISON_FILES) fs.rmSync(path.join(options.out, f), { force: true });
    const { acts: _a, seeds: _s, seed: _sd, out, resume: _r, ...trainOptions } = options;
    // Taken before the runs: the code and machine that ran them (an edit to the checkout while
    // they run must not change what the report says they ran).
    const now = environment(resolveDevice(options.device));
    const settings = { ...trainOptions, overwrite: undefined, acts: arms.map((a) => a.label), seeds, seed: seed0 };
    const record: ComparePlan = plan ? { ...plan, options: settings, resumed: [...plan.resumed, now] } : { options: settings, started: now, resumed: [] };
    writeAtomic(planFile, [Buffer.from(JSON.stringify(record, null, 2) + '\n')]);
    const rows: CompareRow[] = [];
    const total = arms.length * seeds;
    let k = 0;
    for (const arm of arms) {
      const histories: EpochMetrics[][] = [];
      let params = 0;
      for (let i = 0; i < seeds; i++) {
        const seed = seed0 + i;
        const runOut = runFolder(arm, seed);
        if (callbacks.shouldStop?.() === true) return { rows, table: '', plots: [], interrupted: true, runsDone: k, runs: total };
        callbacks.onRunStart?.(arm.label, seed, k, total);
        // A run of a resumed comparison with a checkpoint continues from it (train() returns a
        // finished run's history without training).
        const resumeRun = plan !== null && fs.existsSync(path.join(runOut, 'checkpoint.safetensors'));
        const runOptions: TrainOptions = { ...trainOptions, act: arm.act, actOptions: arm.actOptions, seed, out: runOut, resume: resumeRun };
        const own = callbacks.train?.(arm.label, seed) ?? {};
        const r = await train(runOptions, { ...own, shouldStop: () => own.shouldStop?.() === true || callbacks.shouldStop?.() === true });
        if (r.history.length < (options.epochs ?? TRAIN_DEFAULTS.epochs)) return { rows, table: '', plots: [], interrupted: true, runsDone: k, runs: total };
        k++;
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
        stdTestAcc: finals.length > 1 ? std(finals) : null,
        // Medians over every epoch of every seed: a few epochs slowed by another process on a
        // shared machine move a mean, not a median.
        secondsPerEpoch: median(epochs.map((e) => e.seconds)),
        imagesPerSec: median(epochs.map((e) => e.imagesPerSec)),
        peakBytes: Math.max(...epochs.map((e) => e.peakBytes ?? 0)),
        params,
        histories,
      });
    }
    const table = markdownTable(rows, options, record.started, record.resumed);
    const plots = await renderPlots(rows, out);
    writeAtomic(path.join(out, 'report.md'), [Buffer.from(`${table}\n\n![test accuracy](test-accuracy.svg)\n![train loss](train-loss.svg)\n`)]);
    const summary = { ...record.started, resumed: record.resumed, options: record.options, rows };
    writeAtomic(path.join(out, 'summary.json'), [Buffer.from(JSON.stringify(summary, null, 2) + '\n')]);
    return { rows, table, plots, report: path.join(out, 'report.md'), interrupted: false, runsDone: total, runs: total };
  } finally {
    lock.release();
  }
}

export function markdownTable(rows: CompareRow[], options: Partial<CompareOptions> = {}, provenance?: Provenance, resumed: Provenance[] = []): string {
  const relu = rows.find((r) => r.label === 'relu');
  const seeds = rows[0]?.finalTestAcc.length ?? 0;
  const lines = [
    `| activation | test accuracy (${seeds === 1 ? 'one seed' : `mean ± std over ${seeds} seeds`}) | seconds / epoch (median) | images / s (median)${relu ? ' | time vs ReLU' : ''} | peak tensor memory (MiB) | parameters |`,
    `| --- | --- | --- | ---${relu ? ' | ---' : ''} | --- | --- |`,
  ];
  for (const r of rows) {
    const acc = `${(100 * r.meanTestAcc).toFixed(2)}%${r.stdTestAcc === null ? '' : ` ± ${(100 * r.stdTestAcc).toFixed(2)}`}`;
    const vs = relu ? ` | ${(r.secondsPerEpoch / relu.secondsPerEpoch).toFixed(2)}x` : '';
    lines.push(`| ${r.label} | ${acc} | ${r.secondsPerEpoch.toFixed(1)} | ${r.imagesPerSec.toFixed(0)}${vs} | ${(r.peakBytes / 2 ** 20).toFixed(1)} | ${r.params.toLocaleString('en-US')} |`);
  }
  const o = options;
  const setting = [o.model ?? 'resnet20', o.dataset ?? 'fashion-mnist', `${o.epochs ?? 10} ${(o.epochs ?? 10) === 1 ? 'epoch' : 'epochs'}`, `batch ${o.batch ?? 128}`, `${o.opt ?? 'sgd'} lr ${o.lr ?? 0.1}`, `schedule ${o.schedule ?? 'cosine'}`]
    .concat(o.limitTrain ? [`first ${o.limitTrain} training images`] : [])
    .concat(o.limitTest ? [`accuracy on the first ${o.limitTest} test images`] : [])
    // the settings a reader would otherwise take to be train's defaults
    .concat(o.augment === false ? ['no augmentation'] : [])
    .concat(o.wd !== undefined && o.wd !== TRAIN_DEFAULTS.wd ? [`weight decay ${o.wd}`] : [])
    .concat(o.momentum !== undefined && o.momentum !== TRAIN_DEFAULTS.momentum ? [`momentum ${o.momentum}`] : [])
    .concat(o.warmup !== undefined && o.warmup !== TRAIN_DEFAULTS.warmup ? [`warm-up ${o.warmup} epochs`] : [])
    .concat(o.labelSmoothing ? [`label smoothing ${o.labelSmoothing}`] : [])
    .concat(o.actOptions && Object.keys(o.actOptions).length ? [`activation options ${Object.entries(o.actOptions).map(([k, v]) => `${k} ${v}`).join(', ')}`] : [])
    .join(', ');
  const p = provenance;
  const machine = (q: Provenance) => (q.device === 'cpu' ? `${cpuLabel(q.cpu, q.cpuDetails)}, ${q.threads} thread(s)` : `${q.gpu ?? q.device}`);
  const source = p ? `\n\n${p.date}, adashift ${p.version} (commit ${p.commit}), ${machine(p)}` : '';
  const later = resumed.map((q) => `\nresumed ${q.date}, adashift ${q.version} (commit ${q.commit}), ${machine(q)}`).join('');
  return `${setting}${source}${later}\n\n${lines.join('\n')}`;
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
