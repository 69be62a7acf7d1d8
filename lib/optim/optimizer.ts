// The shared base of the optimizers: parameter groups (PyTorch-style), per-parameter state
// buffers on the parameter's device, zeroGrad, learning-rate access, and state dicts.
// Subclasses implement one update per parameter as one fused native call (lib/bindings/optim.ts);
// no per-element math happens in JS.
import { check } from '../errors';
import { noGrad } from '../autograd';
import { isCapturing } from '../graph';
import { native } from '../native';
import { keep, Tensor } from '../tensor';

/** A parameter with its name (Module.namedParameters() gives these). */
export type NamedParam = [string, Tensor];
export type ParamList = Tensor[] | NamedParam[];

/** A parameter group as given to an optimizer: its parameters plus hyper-parameter overrides. */
export interface ParamGroupSpec {
  params: ParamList;
  lr?: number;
  weightDecay?: number;
  /** LrScheduler sets this group's lr to schedule.lrAt(step) * lrScale (default 1). */
  lrScale?: number;
  [option: string]: unknown;
}

export type ParamsArg = ParamList | ParamGroupSpec[];

/** Hyper-parameters every optimizer has. */
export interface BaseHyper {
  lr: number;
  weightDecay: number;
}

/** A live parameter group: its tensors, their names ('' when unnamed) and hyper-parameters. */
export type ParamGroup<H extends BaseHyper> = H & {
  readonly params: Tensor[];
  readonly names: string[];
  lrScale: number;
};

/** Options every optimizer takes. */
export interface CommonOptions {
  /**
   * Parameters for which this returns true get weight decay 0: each group is split into a
   * decaying group and a non-decaying one (empty halves are dropped).
   */
  noDecay?: (name: string, p: Tensor) => boolean;
}

/** Per-parameter state: the update count and the buffers (on the parameter's device). */
export interface ParamState {
  step: number;
  buffers: Record<string, Tensor>;
}

/**
 * Serialisable optimizer state (PyTorch layout): `state[i]` for the i-th parameter counted
 * across groups in order, `paramGroups[g].params` the indices of group g.
 */
export interface OptimizerStateDict {
  state: Record<number, { step: number; [buffer: string]: Tensor | number }>;
  paramGroups: ({ params: number[]; lrScale: number; [hyper: string]: unknown })[];
}

export function isNamedList(list: readonly unknown[]): list is NamedParam[] {
  return list.length > 0 && Array.isArray(list[0]);
}

function isGroupList(list: readonly unknown[]): list is ParamGroupSpec[] {
  const f = list[0];
  return list.length > 0 && f !== null && typeof f === 'object' && !(f instanceof Tensor) && !Array.isArray(f);
}

/** Finite number check that says which option was wrong (ERR_ARG). */
export function checkNumber(v: unknown, what: string, cond: (x: number) => boolean, expected: string): number {
  check(typeof v === 'number' && Number.isFinite(v) && cond(v), 'ERR_ARG', () => `${what} must be ${expected}, got ${String(v)}`);
  return v as number;
}

export function checkBetas(v: unknown, what: string): [number, number] {
  check(Array.isArray(v) && v.length === 2, 'ERR_ARG', () => `${what}.betas must be a pair [beta1, beta2], got ${String(v)}`);
  const b = v as number[];
  checkNumber(b[0], `${what}.betas[0]`, (x) => x >= 0 && x < 1, 'in [0, 1)');
  checkNumber(b[1], `${what}.betas[1]`, (x) => x >= 0 && x < 1, 'in [0, 1)');
  return [b[0], b[1]];
}

export function checkBool(v: unknown, what: string): boolean {
  check(typeof v === 'boolean', 'ERR_ARG', () => `${what} must be a boolean, got ${String(v)}`);
  return v as boolean;
}

export abstract class Optimizer<H extends BaseHyper> {
  readonly paramGroups: ParamGroup<H>[] = [];
  /** Per-parameter state (created on the parameter's first update). */
  protected readonly state = new Map<Tensor, ParamState>();
  /** Group-level step counts, for optimizers that count steps per group (timm's Lamb). */
  protected groupSteps: number[] = [];
  /** The optimizer's name in error messages. */
  protected readonly name: string;

  /**
   * @param params Tensor[], [name, Tensor][] or groups [{params, lr?, weightDecay?, ...}]
   * @param defaults hyper-parameters of groups that do not override them
   */
  constructor(params: ParamsArg, defaults: H, options: CommonOptions, name: string, extraOptions: string[] = []) {
    this.name = name;
    const knownTop = new Set([...Object.keys(defaults), 'noDecay', ...extraOptions]);
    for (const k of Object.keys(options)) {
      check(knownTop.has(k), 'ERR_ARG', () => `${name}: unknown option '${k}' (known: ${[...knownTop].join(', ')})`);
    }
    check(Array.isArray(params), 'ERR_ARG', () => `${name}: params must be an array of tensors, of [name, tensor] pairs, or of parameter groups`);
    check(params.length > 0, 'ERR_ARG', () => `${name}: got an empty parameter list`);
    if (options.noDecay !== undefined) {
      check(typeof options.noDecay === 'function', 'ERR_ARG', () => `${name}: noDecay must be a function (name, param) => boolean`);
    }
    this.validate(defaults, name);
    const specs: ParamGroupSpec[] = isGroupList(params) ? params : [{ params: params as ParamList }];
    const seen = new Set<Tensor>();
    const known = new Set([...Object.keys(defaults), 'params', 'lrScale']);
    specs.forEach((spec, gi) => {
      const where = `${name}: param group ${gi}`;
      check(spec !== null && typeof spec === 'object' && Array.isArray(spec.params), 'ERR_ARG', () => `${where} must be an object with a 'params' array`);
      for (const k of Object.keys(spec)) {
        check(known.has(k), 'ERR_ARG', () => `${where}: unknown option '${k}' (known: ${[...known].join(', ')})`);
      }
      const named: NamedParam[] = isNamedList(spec.params)
        ? (spec.params as NamedParam[])
        : (spec.params as Tensor[]).map((p): NamedParam => ['', p]);
      named.forEach((entry, i) => {
        const p = Array.isArray(entry) ? entry[1] : undefined;
        check(Array.isArray(entry) && typeof entry[0] === 'string' && p instanceof Tensor, 'ERR_ARG', () => `${where}: parameter ${i} must be a Tensor (or a [name, Tensor] pair)`);
        check(!p!.isDisposed, 'ERR_DISPOSED', () => `${where}: parameter ${i}${entry[0] ? ` ('${entry[0]}')` : ''} was disposed`);
        check(!seen.has(p!), 'ERR_ARG', () => `${where}: parameter ${i}${entry[0] ? ` ('${entry[0]}')` : ''} appears more than once (in this or an earlier group)`);
        seen.add(p!);
      });
      const { params: _p, ...overrides } = spec;
      const hyper = { ...defaults, lrScale: 1, ...overrides } as H & { lrScale: number };
      const betas = (hyper as unknown as Record<string, unknown>).betas;
      if (Array.isArray(betas)) (hyper as unknown as Record<string, unknown>).betas = [...betas];
      this.validate(hyper, where);
      checkNumber(hyper.lrScale, `${where}: lrScale`, (x) => x >= 0, 'a finite number >= 0');
      const halves: [NamedParam[], Partial<BaseHyper>][] = options.noDecay
        ? [
            [named.filter(([n, p]) => !options.noDecay!(n, p)), {}],
            [named.filter(([n, p]) => options.noDecay!(n, p)), { weightDecay: 0 }],
          ]
        : [[named, {}]];
      for (const [list, extra] of halves) {
        if (options.noDecay && list.length === 0) continue;
        this.paramGroups.push({ ...hyper, ...extra, params: list.map(([, p]) => p), names: list.map(([n]) => n) } as ParamGroup<H>);
        this.groupSteps.push(0);
      }
    });
    check(this.paramGroups.some((g) => g.params.length > 0), 'ERR_ARG', () => `${name}: got an empty parameter list`);
  }

  /** Checks a group's hyper-parameters (ERR_ARG naming the bad one). */
  protected abstract validate(h: H, where: string): void;
  /** Updates every parameter of the group that has a gradient (runs under noGrad). */
  protected abstract updateGroup(group: ParamGroup<H>, index: number): void;
  /** Names of the state buffers a parameter of this group has once updated. */
  protected abstract bufferNames(group: ParamGroup<H>): string[];

  /** The learning rate of group 0. */
  get lr(): number {
    return this.paramGroups[0].lr;
  }
  /** Sets the learning rate of every group. */
  set lr(value: number) {
    checkNumber(value, `${this.name}: lr`, (x) => x >= 0, 'a finite number >= 0');
    for (const g of this.paramGroups) g.lr = value;
  }
  getLr(group = 0): number {
    return this.group(group).lr;
  }
  setLr(value: number, group?: number): void {
    if (group === undefined) {
      this.lr = value;
      return;
    }
    checkNumber(value, `${this.name}: lr`, (x) => x >= 0, 'a finite number >= 0');
    this.group(group).lr = value;
  }
  private group(i: number): ParamGroup<H> {
    check(Number.isInteger(i) && i >= 0 && i < this.paramGroups.length, 'ERR_ARG', () => `${this.name}: no param group ${i} (there are ${this.paramGroups.length})`);
    return this.paramGroups[i];
  }

  /** One update of every parameter that has a gradient (fused native kernels, no graph). */
  step(): void {
    this.checkCapture();
    noGrad(() => {
      this.paramGroups.forEach((g, i) => {
        this.validate(g, `${this.name}: param group ${i}`);
        this.updateGroup(g, i);
      });
    });
  }

  /**
   * Why this optimizer's step() cannot be recorded into a CUDA graph now (null: it can). A replay
   * repeats the captured kernels with their captured scalars, so an update whose scalars change
   * from step to step (a bias correction) cannot be captured.
   */
  protected captureProblem(): string | null {
    return `its update depends on the step count (bias correction), which a replay would not advance`;
  }

  private checkCapture(): void {
    const devices = new Set<string>();
    for (const g of this.paramGroups) for (const p of g.params) if (p.grad) devices.add(p.device);
    for (const d of devices) {
      if (!isCapturing(d)) continue;
      const why = this.captureProblem();
      check(why === null, 'ERR_CUDA_GRAPH', () => `${this.name}.step() cannot be captured into a CUDA graph: ${why}. Capture the forward and backward only and call step() after replay(), or use SGD`);
    }
  }

  /** Disposes every parameter's gradient and sets it to null. */
  zeroGrad(): void {
    for (const g of this.paramGroups) {
      for (const p of g.params) {
        if (p.grad) p.grad.dispose();
        p.grad = null;
      }
    }
  }

  /** Whether p's state has a live buffer of that name. */
  protected hasBuffer(p: Tensor, name: string): boolean {
    const b = this.state.get(p)?.buffers[name];
    return b !== undefined && !b.isDisposed;
  }

  /** The state of p, with zero-filled (fill null: uninitialised) buffers made on first use. */
  protected stateOf(p: Tensor, names: string[], fill: number | null = 0): ParamState {
    let st = this.state.get(p);
    // A disposed buffer (made during a CUDA graph capture that failed) means the state never
    // existed: start it afresh, step count included.
    if (!st || names.some((n) => st!.buffers[n]?.isDisposed)) {
      for (const b of Object.values(st?.buffers ?? {})) if (!b.isDisposed) b.dispose();
      st = { step: 0, buffers: {} };
      this.state.set(p, st);
    }
    for (const n of names) {
      if (!st.buffers[n]) {
        const h = fill === null ? native.empty(p.shape, p.device) : native.full(p.shape, fill, p.device);
        st.buffers[n] = keep(new Tensor(h));
      }
    }
    return st;
  }

  /** Parameters with a gradient (the kernels check its shape and device). */
  protected withGrad(group: ParamGroup<H>): Tensor[] {
    return group.params.filter((p) => p.grad !== null && p.grad !== undefined && !p.grad.isDisposed);
  }

  protected groupHyper(g: ParamGroup<H>): Record<string, unknown> {
    const { params: _p, names: _n, ...rest } = g as ParamGroup<H> & Record<string, unknown>;
    return rest;
  }

  /**
   * The optimizer's state. The buffer tensors are the optimizer's own (not copies): do not
   * dispose them, and save them (io.saveSafetensors) before the next step() changes them.
   */
  stateDict(): OptimizerStateDict {
    const state: OptimizerStateDict['state'] = {};
    const groups: OptimizerStateDict['paramGroups'] = [];
    let index = 0;
    this.paramGroups.forEach((g, gi) => {
      const ids: number[] = [];
      for (const p of g.params) {
        const st = this.state.get(p);
        if (st) state[index] = { step: st.step, ...st.buffers };
        ids.push(index++);
      }
      const entry: OptimizerStateDict['paramGroups'][number] = { ...this.groupHyper(g), params: ids } as OptimizerStateDict['paramGroups'][number];
      if (this.countsGroupSteps()) entry.step = this.groupSteps[gi];
      if (Array.isArray(entry.betas)) entry.betas = [...(entry.betas as number[])];
      groups.push(entry);
    });
    return { state, paramGroups: groups };
  }

  /** Whether stateDict().paramGroups[g] carries a group step count. */
  protected countsGroupSteps(): boolean {
    return false;
  }

  /**
   * Restores a state dict from stateDict() of an optimizer over parameters of the same shapes in
   * the same groups: hyper-parameters and buffers (copied onto each parameter's device).
   */
  loadStateDict(sd: OptimizerStateDict): void {
    const n = this.name;
    check(sd !== null && typeof sd === 'object' && Array.isArray(sd.paramGroups) && sd.state !== null && typeof sd.state === 'object', 'ERR_ARG', () => `${n}.loadStateDict: expected {state, paramGroups}`);
    check(sd.paramGroups.length === this.paramGroups.length, 'ERR_ARG', () => `${n}.loadStateDict: the state has ${sd.paramGroups.length} param groups, this optimizer ${this.paramGroups.length}`);
    const byIndex: Tensor[] = [];
    const hypers: (H & { lrScale: number })[] = [];
    const steps: number[] = [];
    this.paramGroups.forEach((g, gi) => {
      const sg = sd.paramGroups[gi];
      check(sg && Array.isArray(sg.params) && sg.params.length === g.params.length, 'ERR_ARG', () => `${n}.loadStateDict: param group ${gi} has ${sg && Array.isArray(sg.params) ? sg.params.length : '?'} parameters in the state, ${g.params.length} here`);
      sg.params.forEach((id, k) => {
        check(Number.isInteger(id) && id >= 0 && byIndex[id] === undefined, 'ERR_ARG', () => `${n}.loadStateDict: bad or repeated parameter index ${String(id)} in group ${gi}`);
        byIndex[id] = g.params[k];
      });
      const { params: _p, step, ...hyper } = sg as Record<string, unknown>;
      const merged: Record<string, unknown> = { ...this.groupHyper(g), ...hyper };
      if (Array.isArray(merged.betas)) merged.betas = [...(merged.betas as number[])];
      const h = merged as unknown as H & { lrScale: number };
      this.validate(h, `${n}.loadStateDict: param group ${gi}`);
      checkNumber(h.lrScale, `${n}.loadStateDict: param group ${gi}: lrScale`, (x) => x >= 0, 'a finite number >= 0');
      hypers.push(h);
      if (this.countsGroupSteps()) {
        steps.push(checkNumber(step, `${n}.loadStateDict: param group ${gi}: step`, (x) => Number.isInteger(x) && x >= 0, 'an integer >= 0'));
      }
    });
    // Validate every entry before changing anything.
    const entries: [Tensor, number, Record<string, Tensor>][] = [];
    for (const [key, value] of Object.entries(sd.state)) {
      const id = Number(key);
      const p = byIndex[id];
      check(p !== undefined, 'ERR_ARG', () => `${n}.loadStateDict: state for parameter ${key}, which no group lists`);
      check(value !== null && typeof value === 'object', 'ERR_ARG', () => `${n}.loadStateDict: state ${key} must be an object`);
      const step = checkNumber(value.step, `${n}.loadStateDict: state ${key}.step`, (x) => Number.isInteger(x) && x >= 0, 'an integer >= 0');
      const bufs: Record<string, Tensor> = {};
      const group = this.paramGroups.find((g) => g.params.includes(p))!;
      const allowed = new Set(this.bufferNames(group));
      for (const [b, t] of Object.entries(value)) {
        if (b === 'step') continue;
        check(allowed.has(b), 'ERR_ARG', () => `${n}.loadStateDict: unknown buffer '${b}' in state ${key} (expected ${[...allowed].join(', ') || 'none'})`);
        check(t instanceof Tensor && !t.isDisposed, 'ERR_ARG', () => `${n}.loadStateDict: state ${key}.${b} must be a live Tensor`);
        const a = (t as Tensor).shape, s = p.shape;
        check(a.length === s.length && a.every((v, i) => v === s[i]), 'ERR_SHAPE', () => `${n}.loadStateDict: state ${key}.${b} has shape [${a.join(', ')}], the parameter [${s.join(', ')}]`);
        bufs[b] = t as Tensor;
      }
      entries.push([p, step, bufs]);
    }
    // Copy first (the state dict may hold this optimizer's own buffers), then swap.
    const fresh = new Map<Tensor, ParamState>();
    for (const [p, step, bufs] of entries) {
      const st: ParamState = { step, buffers: {} };
      for (const [b, t] of Object.entries(bufs)) {
        // Always a copy: the state dict's tensors stay the caller's.
        const h = t.device === p.device ? native.clone(t.handle) : native.to(t.handle, p.device);
        st.buffers[b] = keep(new Tensor(h));
      }
      fresh.set(p, st);
    }
    this.disposeState();
    for (const [p, st] of fresh) this.state.set(p, st);
    hypers.forEach((h, gi) => Object.assign(this.paramGroups[gi], h));
    if (this.countsGroupSteps()) this.groupSteps = steps;
  }

  private disposeState(): void {
    for (const st of this.state.values()) for (const t of Object.values(st.buffers)) t.dispose();
    this.state.clear();
  }

  /** Frees every state buffer (the optimizer starts from scratch if used again). */
  dispose(): void {
    this.disposeState();
    this.groupSteps = this.groupSteps.map(() => 0);
  }
}
