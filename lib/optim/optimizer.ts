// The shared base of the optimizers: parameter groups (PyTorch-style), per-parameter state
// buffers on the parameter's device, zeroGrad, learning-rate access, state dicts, and the
// device-side schedules of capturable optimizers (CUDA graphs).
// Subclasses implement one update per parameter as one fused native call (lib/bindings/optim.ts);
// no per-element math happens in JS.
import { check, checkOptions } from '../errors';
import { noGrad } from '../autograd';
import { capturingOn } from '../graph';
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
  /**
   * Keep each group's learning rate and step count on the parameters' device, so that step()
   * can be captured into a CUDA graph and every replay uses the current learning rate and the
   * next step's bias corrections (default false). The step count is then one per group
   * (advanced by every step() that updates the group), and a new learning rate (setLr, a
   * scheduler, or assigning a group's lr) is written to the device when set, in stream order.
   */
  capturable?: boolean;
}

/** What a device-side schedule needs besides lr and the step: a group's constants. */
export interface ScheduleConstants {
  kind: 'sgd' | 'adamw' | 'lamb';
  beta1: number;
  beta2: number;
  weightDecay: number;
  biasCorrection: boolean;
  decoupledDecay: boolean;
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

/** @internal Groups whose spec gave their own lr and no lrScale (LrScheduler refuses to overwrite it silently). */
export const GROUPS_WITH_OWN_LR = new WeakSet<object>();

export abstract class Optimizer<H extends BaseHyper> {
  readonly paramGroups: ParamGroup<H>[] = [];
  /** Per-parameter state (created on the parameter's first update). */
  protected readonly state = new Map<Tensor, ParamState>();
  /**
   * Group-level step counts: those of optimizers that count steps per group (timm's Lamb), and
   * of every capturable group (the host's copy of its schedule's count; replays advance the
   * device's, syncStepsFromDevice reads it back).
   */
  protected groupSteps: number[] = [];
  /** The optimizer's name in error messages. */
  protected readonly name: string;
  /** Whether lr and the step count live on the device (see CommonOptions.capturable). */
  readonly capturable: boolean;
  /** Per group: its device-side schedule (capturable optimizers; made on the first step). */
  private readonly schedules: (Tensor | null)[] = [];

  /**
   * @param params Tensor[], [name, Tensor][] or groups [{params, lr?, weightDecay?, ...}]
   * @param defaults hyper-parameters of groups that do not override them
   */
  constructor(params: ParamsArg, defaults: H, options: CommonOptions, name: string, extraOptions: string[] = []) {
    this.name = name;
    options = checkOptions(name, options, [...Object.keys(defaults), 'noDecay', 'capturable', ...extraOptions]);
    check(Array.isArray(params), 'ERR_ARG', () => `${name}: params must be an array of tensors, of [name, tensor] pairs, or of parameter groups`);
    check(params.length > 0, 'ERR_ARG', () => `${name}: got an empty parameter list`);
    if (options.noDecay !== undefined) {
      check(typeof options.noDecay === 'function', 'ERR_ARG', () => `${name}: noDecay must be a function (name, param) => boolean`);
    }
    this.capturable = options.capturable === undefined ? false : checkBool(options.capturable, `${name}: capturable`);
    this.validate(defaults, name);
    const specs: ParamGroupSpec[] = isGroupList(params) ? params : [{ params: params as ParamList }];
    const seen = new Set<Tensor>();
    const known = new Set([...Object.keys(defaults), 'params', 'lrScale']);
    specs.forEach((spec, gi) => {
      const where = `${name}: param group ${gi}`;
      check(spec !== null && typeof spec === 'object' && Array.isArray(spec.params), 'ERR_ARG', () => `${where} must be an object with a 'params' array`);
      checkOptions(where, spec, [...known]);
      const named: NamedParam[] = isNamedList(spec.params)
        ? (spec.params as NamedParam[])
        : (spec.params as Tensor[]).map((p): NamedParam => ['', p]);
      named.forEach((entry, i) => {
        const p = Array.isArray(entry) ? entry[1] : undefined;
        check(Array.isArray(entry) && typeof entry[0] === 'string' && p instanceof Tensor, 'ERR_ARG', () => `${where}: parameter ${i} must be a Tensor (or a [name, Tensor] pair)`);
        check(!p!.isDisposed, 'ERR_DISPOSED', () => `${where}: parameter ${i}${entry[0] ? ` ('${entry[0]}')` : ''} was disposed`);
        // PyTorch's "can't optimize a non-leaf Tensor": the step would write into an op's result, not into what produced it
        check(p!.gradFn === null, 'ERR_ARG', () => `${where}: parameter ${i}${entry[0] ? ` ('${entry[0]}')` : ''} is the result of an op ('${p!.gradFn!.name}'), not a leaf: optimize the tensors it was computed from (module parameters, or tensors made with requiresGrad)`);
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
        const group = { ...hyper, ...extra, params: list.map(([, p]) => p), names: list.map(([n]) => n) } as ParamGroup<H>;
        // an lr without an lrScale: the group means its own rate, which a scheduler would replace
        if ('lr' in overrides && !('lrScale' in overrides)) GROUPS_WITH_OWN_LR.add(group);
        this.paramGroups.push(group);
        this.groupSteps.push(0);
      }
    });
    check(this.paramGroups.some((g) => g.params.length > 0), 'ERR_ARG', () => `${name}: got an empty parameter list`);
    if (this.capturable) this.paramGroups.forEach((g, gi) => this.routeLr(g, gi));
    for (const _ of this.paramGroups) this.schedules.push(null);
  }

  /**
   * A capturable group's lr becomes an accessor: every assignment (setLr, a scheduler, loading a
   * state dict, or plain `group.lr = x`) is validated and written to the group's device
   * schedule, in stream order, so the next step or graph replay uses it.
   */
  private routeLr(g: ParamGroup<H>, gi: number): void {
    let lr = g.lr;
    Object.defineProperty(g, 'lr', {
      enumerable: true,
      configurable: true,
      get: () => lr,
      set: (value: unknown) => {
        const v = checkNumber(value, `${this.name}: param group ${gi}: lr`, (x) => x >= 0, 'a finite number >= 0');
        this.checkLrSettable(gi);
        const sched = this.schedules[gi];
        if (sched && !sched.isDisposed) native.optimSchedWrite(sched.handle, 0, v);
        lr = v;
      },
    });
  }

  /** Checks a group's hyper-parameters (ERR_ARG naming the bad one). */
  protected abstract validate(h: H, where: string): void;
  /**
   * Updates every parameter of the group that has a gradient (runs under noGrad). sched: the
   * group's device schedule, already advanced for this step (capturable optimizers), else null.
   */
  protected abstract updateGroup(group: ParamGroup<H>, index: number, sched: Tensor | null): void;
  /** The constants a device schedule of this group derives its step scalars with. */
  protected abstract scheduleConstants(group: ParamGroup<H>): ScheduleConstants;
  /** Names of the state buffers a parameter of this group has once updated. */
  protected abstract bufferNames(group: ParamGroup<H>): string[];

  /** The learning rate of group 0. */
  get lr(): number {
    return this.paramGroups[0].lr;
  }
  /** Sets the learning rate of every group. */
  set lr(value: number) {
    checkNumber(value, `${this.name}: lr`, (x) => x >= 0, 'a finite number >= 0');
    this.paramGroups.forEach((_, gi) => this.checkLrSettable(gi)); // all or none
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

  /** A capturable group's lr cannot be set while its device is being captured. */
  private checkLrSettable(gi: number): void {
    const sched = this.schedules[gi];
    check(!sched || sched.isDisposed || !capturingOn(sched.device), 'ERR_CUDA_GRAPH', () => `${this.name}: the learning rate cannot be set during a CUDA graph capture (a replay would set it again to this value); set it between replays, where it is written to the device and read by the next replay`);
  }

  /** One update of every parameter that has a gradient (fused native kernels, no graph). */
  step(): void {
    this.checkCapture();
    // Every group's hyper-parameters and every gradient are checked before anything changes:
    // a bad gradient leaves all parameters, buffers and step counts as they were.
    this.paramGroups.forEach((g, i) => {
      this.validate(g, `${this.name}: param group ${i}`);
      this.checkGrads(g, i);
    });
    noGrad(() => {
      this.paramGroups.forEach((g, i) => {
        this.updateGroup(g, i, this.capturable ? this.advanceSchedule(g, i) : null);
      });
    });
  }

  /** Each gradient has its parameter's shape and device (ERR_SHAPE / ERR_DEVICE). */
  private checkGrads(g: ParamGroup<H>, gi: number): void {
    g.params.forEach((p, k) => {
      const grad = p.grad;
      if (!grad || grad.isDisposed) return;
      const what = () => `${this.name}: the gradient of param group ${gi}, parameter ${k}${g.names[k] ? ` ('${g.names[k]}')` : ''}`;
      check(grad.device === p.device, 'ERR_DEVICE', () => `${what()} is on ${grad.device}, the parameter on ${p.device}`);
      const a = grad.shape, b = p.shape;
      check(a.length === b.length && a.every((v, i) => v === b[i]), 'ERR_SHAPE', () => `${what()} has shape [${a.join(', ')}], expected the parameter's shape [${b.join(', ')}]`);
    });
  }

  /**
   * The group's device schedule advanced by one step (made on first use on the device of the
   * group's gradients, from the host's lr and step count), or null when no parameter of the
   * group has a gradient.
   */
  private advanceSchedule(g: ParamGroup<H>, gi: number): Tensor | null {
    const params = this.withGrad(g);
    if (params.length === 0) return null;
    const device = params[0].device;
    const other = params.find((p) => p.device !== device);
    check(other === undefined, 'ERR_DEVICE', () => `${this.name}: a capturable optimizer needs every parameter of a group on one device; param group ${gi} has parameters on ${device} and ${other!.device}`);
    let sched = this.schedules[gi];
    if (!sched || sched.isDisposed || sched.device !== device) {
      const step = sched && !sched.isDisposed ? this.scheduleStep(sched) : this.hostStep(g, gi);
      sched?.dispose();
      sched = keep(new Tensor(native.optimSchedNew(device, g.lr, step)));
      this.schedules[gi] = sched;
      this.groupSteps[gi] = step;
    }
    // The device counts in a float: exact to 2^24 steps.
    check(this.groupSteps[gi] < 2 ** 24, 'ERR_ARG', () => `${this.name}: param group ${gi} has reached 2^24 steps, the most a capturable optimizer counts`);
    this.groupSteps[gi]++;
    const c = this.scheduleConstants(g);
    native.optimAdvance(sched.handle, c.kind, c.beta1, c.beta2, c.weightDecay, c.biasCorrection, c.decoupledDecay);
    return sched;
  }

  /** The 1-based step count of a capturable group's update in progress (host copy). */
  protected scheduledStep(gi: number): number {
    return this.groupSteps[gi];
  }

  /** The step count a capturable group continues from: one count for the whole group. */
  private hostStep(g: ParamGroup<H>, gi: number): number {
    if (this.countsGroupSteps()) return this.groupSteps[gi];
    const steps = new Set(g.params.map((p) => this.state.get(p)?.step).filter((x): x is number => x !== undefined));
    check(steps.size <= 1, 'ERR_ARG', () => `${this.name}: a capturable optimizer counts steps per group, but the parameters of group ${gi} have different step counts (${[...steps].join(', ')})`);
    return steps.size === 0 ? 0 : [...steps][0];
  }

  /** The step count held by a device schedule (reads it back: a device sync). */
  private scheduleStep(sched: Tensor): number {
    return (sched.toArray() as number[])[1];
  }

  /**
   * Copies the device step counts of capturable groups into the host state (replays of a
   * captured step advance them on the device only).
   */
  protected syncStepsFromDevice(): void {
    this.schedules.forEach((sched, gi) => {
      if (!sched || sched.isDisposed) return;
      const step = this.scheduleStep(sched);
      this.groupSteps[gi] = step;
      for (const p of this.paramGroups[gi].params) {
        const st = this.state.get(p);
        if (st) st.step = step;
      }
    });
  }

  /**
   * Why this optimizer's step() cannot be recorded into a CUDA graph now (null: it can). A replay
   * repeats the captured kernels with their captured scalars, so an update whose scalars change
   * from step to step (a bias correction) cannot be captured.
   */
  protected captureProblem(): string | null {
    if (!this.capturable) {
      return `its update depends on the step count (bias correction), which a replay would not advance; construct it with {capturable: true} to keep the step count and the learning rate on the device`;
    }
    return this.capturableProblem();
  }

  /**
   * Why a capturable optimizer's step() cannot be captured now: state that its first step()
   * makes (the schedule, the moment buffers) would be made and initialised by every replay.
   */
  protected capturableProblem(): string | null {
    const names = (g: ParamGroup<H>) => this.bufferNames(g);
    for (const [gi, g] of this.paramGroups.entries()) {
      const params = this.withGrad(g);
      if (params.length === 0) continue;
      const sched = this.schedules[gi];
      if (!sched || sched.isDisposed || sched.device !== params[0].device || params.some((p) => names(g).some((n) => !this.hasBuffer(p, n)))) {
        return 'its state (the device-side learning rate and step count, the moment buffers) does not exist yet; run one step eagerly before capturing (warmup: 1)';
      }
    }
    return null;
  }

  private checkCapture(): void {
    const devices = new Set<string>();
    for (const g of this.paramGroups) for (const p of g.params) if (p.grad) devices.add(p.device);
    for (const d of devices) {
      if (!capturingOn(d)) continue;
      const why = this.captureProblem();
      check(why === null, 'ERR_CUDA_GRAPH', () => `${this.name}.step() cannot be captured into a CUDA graph: ${why}${this.capturable ? '' : '. Or capture the forward and backward only and call step() after replay()'}`);
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
    if (this.capturable) this.syncStepsFromDevice();
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
      // a key this optimizer does not have (another optimizer's state, a typo) is refused, not merged into the group
      const own = this.groupHyper(g);
      for (const k of Object.keys(hyper)) check(Object.hasOwn(own, k), 'ERR_ARG', () => `${n}.loadStateDict: param group ${gi} has '${k}', which ${n} does not take (its group settings: ${Object.keys(own).join(', ')})`);
      const merged: Record<string, unknown> = { ...own, ...hyper };
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
    if (this.capturable) {
      // One step count per group (the group's own for LAMB; else the loaded parameters' must
      // agree), counted on the device in a float: at most 2^24.
      this.paramGroups.forEach((g, gi) => {
        const counts = this.countsGroupSteps() ? new Set([steps[gi]]) : new Set(entries.filter(([p]) => g.params.includes(p)).map(([, step]) => step));
        check(counts.size <= 1, 'ERR_ARG', () => `${n}.loadStateDict: a capturable optimizer counts steps per group, but the state gives the parameters of group ${gi} different step counts (${[...counts].join(', ')})`);
        const big = [...counts].find((c) => c > 2 ** 24);
        check(big === undefined, 'ERR_ARG', () => `${n}.loadStateDict: group ${gi}'s step count ${big} is above 2^24, the most a capturable optimizer counts`);
      });
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
    // Buffers that exist with the same shape and device take the loaded values in place, so a
    // CUDA graph that updates them stays valid; the others are replaced.
    for (const [p, st] of fresh) {
      const old = this.state.get(p);
      for (const [b, t] of Object.entries(st.buffers)) {
        const o = old?.buffers[b];
        if (o && !o.isDisposed && o.device === t.device && o.shape.length === t.shape.length && o.shape.every((v, i) => v === t.shape[i])) {
          o.copy_(t);
          t.dispose();
          st.buffers[b] = o;
          delete old!.buffers[b];
        }
      }
    }
    this.disposeState();
    for (const [p, st] of fresh) this.state.set(p, st);
    hypers.forEach((h, gi) => Object.assign(this.paramGroups[gi], h));
    if (this.countsGroupSteps()) this.groupSteps = steps;
    if (this.capturable) {
      this.paramGroups.forEach((g, gi) => {
        const sched = this.schedules[gi];
        if (!sched || sched.isDisposed) return;
        this.groupSteps[gi] = this.hostStep(g, gi);
        native.optimSchedWrite(sched.handle, 1, this.groupSteps[gi]);
      });
    }
  }

  private disposeState(): void {
    for (const st of this.state.values()) for (const t of Object.values(st.buffers)) t.dispose();
    this.state.clear();
  }

  /** Frees every state buffer (the optimizer starts from scratch if used again). */
  dispose(): void {
    this.disposeState();
    this.groupSteps = this.groupSteps.map(() => 0);
    this.schedules.forEach((s, gi) => {
      s?.dispose();
      this.schedules[gi] = null;
    });
  }
}
