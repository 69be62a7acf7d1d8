// compare(): trains each activation with several seeds under the same settings and writes a
// report: a Markdown table (test accuracy mean and spread, seconds per epoch, images/s,
// parameters), summary.json, and SVG plots of test accuracy and train loss per epoch.
import * as path from 'path';
import { resolveDevice } from '../device';
import { check, checkOptions } from '../errors';
import { ensureDir, writeAtomic } from '../io/safetensors';
import { ActivationName, ACTIVATIONS } from '../nn/activation';
import { cpuLabel, environment } from '../provenance';
import { mean, median, std } from '../stats';
import { EpochMetrics, train, TrainCallbacks, TRAIN_OPTIONS, TrainOptions } from './train';

export interface CompareOptions extends Omit<TrainOptions, 'act' | 'out' | 'resume' | 'seed'> {
  acts?: ActivationName[];
  seeds?: number;
  /** First seed; run k uses seed + k. */
  seed?: number;
  out: string;
}

export interface CompareRow {
  act: ActivationName;
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
  onRunStart?(act: ActivationName, seed: number, index: number, total: number): void;
  train?: (act: ActivationName, seed: number) => TrainCallbacks;
  onRunEnd?(act: ActivationName, seed: number, history: EpochMetrics[]): void;
}

export async function compare(options: CompareOptions, callbacks: CompareCallbacks = {}) {
  // train()'s options but the two compare sets per run (act, resume), and its own
  checkOptions('compare', options, [...TRAIN_OPTIONS.filter((k) => k !== 'act' && k !== 'resume'), 'acts', 'seeds']);
  const acts = options.acts ?? [...ACTIVATIONS];
  const seeds = options.seeds ?? 1;
  const seed0 = options.seed ?? 0;
  check(acts.length > 0 && acts.every((a) => ACTIVATIONS.includes(a)), 'ERR_ARG', () => `compare: acts must be some of ${ACTIVATIONS.join(', ')}`);
  check(Number.isInteger(seeds) && seeds >= 1, 'ERR_ARG', () => `compare: seeds must be a positive integer, got ${seeds}`);
  check(typeof options.out === 'string' && options.out.length > 0, 'ERR_ARG', () => 'compare: an output folder (out) is required');
  ensureDir(options.out);
  const { acts: _a, seeds: _s, seed: _sd, out, ...trainOptions } = options;
  // Taken before the runs: the code and machine that ran them (an edit to the checkout while
  // they run must not change what the report says they ran).
  const provenance = environment(resolveDevice(options.device));
  const rows: CompareRow[] = [];
  const total = acts.length * seeds;
  let k = 0;
  for (const act of acts) {
    const histories: EpochMetrics[][] = [];
    let params = 0;
    for (let i = 0; i < seeds; i++) {
      const seed = seed0 + i;
      callbacks.onRunStart?.(act, seed, k++, total);
      const r = await train({ ...trainOptions, act, seed, out: path.join(out, `${act}-seed${seed}`) }, callbacks.train?.(act, seed) ?? {});
      histories.push(r.history);
      params = r.params;
      callbacks.onRunEnd?.(act, seed, r.history);
    }
    const finals = histories.map((h) => h[h.length - 1].testAcc);
    const epochs = histories.flat();
    rows.push({
      act,
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
  const summary = { ...provenance, options: { ...trainOptions, acts, seeds, seed: seed0 }, rows };
  writeAtomic(path.join(out, 'summary.json'), [Buffer.from(JSON.stringify(summary, null, 2) + '\n')]);
  return { rows, table, plots, report: path.join(out, 'report.md') };
}

export function markdownTable(rows: CompareRow[], options: Partial<CompareOptions> = {}, provenance?: ReturnType<typeof environment>): string {
  const relu = rows.find((r) => r.act === 'relu');
  const lines = [
    `| activation | test accuracy (mean ± std over ${rows[0]?.finalTestAcc.length ?? 0} seed${rows[0]?.finalTestAcc.length === 1 ? '' : 's'}) | seconds / epoch (median) | images / s (median)${relu ? ' | time vs ReLU' : ''} | peak tensor memory (MiB) | parameters |`,
    `| --- | --- | --- | ---${relu ? ' | ---' : ''} | --- | --- |`,
  ];
  for (const r of rows) {
    const acc = `${(100 * r.meanTestAcc).toFixed(2)}% ± ${(100 * r.stdTestAcc).toFixed(2)}`;
    const vs = relu ? ` | ${(r.secondsPerEpoch / relu.secondsPerEpoch).toFixed(2)}x` : '';
    lines.push(`| ${r.act} | ${acc} | ${r.secondsPerEpoch.toFixed(1)} | ${r.imagesPerSec.toFixed(0)}${vs} | ${(r.peakBytes / 2 ** 20).toFixed(1)} | ${r.params.toLocaleString('en-US')} |`);
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
        activation: r.act,
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
