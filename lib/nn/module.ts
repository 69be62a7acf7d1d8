// Module: a tree of named parameters, buffers and sub-modules, with PyTorch's naming
// ("layer1.0.conv1.weight") so state dicts move between the two without renaming.
import { AdaShiftError, check, checkBoolean, checkOptions } from '../errors';
import { DeviceSpec, resolveDevice } from '../device';
import { inspect } from 'util';
import { noGrad } from '../autograd';
import { native } from '../native';
import { keep, Tensor, tensor } from '../tensor';
import { IntTensor, isIntTensor } from '../io/safetensors';

/** A scalar integer buffer (PyTorch's int64 num_batches_tracked). */
export interface IntBuffer {
  value: bigint;
}

/** What a state dict entry is, for messages. */
function entryKind(v: unknown): string {
  if (isIntTensor(v)) return `an ${v.dtype} integer entry of shape [${v.shape.join(', ')}]`;
  if (v instanceof Tensor) return `a tensor of shape [${v.shape.join(', ')}]`;
  if (v === null || typeof v !== 'object') return String(v);
  return Array.isArray(v) ? 'an array' : `an object (${(v as object).constructor?.name ?? 'Object'})`;
}

/**
 * When a dict's keys are the module's behind one prefix (a training checkpoint's 'model.', a
 * DataParallel 'module.') or the module's carry one the dict's lack, says which.
 */
function prefixHint(missing: string[], unexpected: string[], own: Record<string, unknown>): string {
  if (!unexpected.length) return '';
  const first = missing[0];
  for (const u of unexpected) {
    if (u.endsWith(`.${first}`)) {
      const p = u.slice(0, u.length - first.length);
      if (missing.every((k) => unexpected.includes(p + k))) return ` (the dict's keys are the module's with the prefix '${p}' in front${p === 'model.' ? ': a training checkpoint, read it with loadCheckpoint' : ''}; take the prefix off its keys)`;
    }
    if (first.endsWith(`.${u}`)) {
      const p = first.slice(0, first.length - u.length);
      if (unexpected.every((k) => p + k in own)) return ` (the module's keys are the dict's with the prefix '${p}' in front: load it into that submodule)`;
    }
  }
  return '';
}

export class Module {
  private readonly _params = new Map<string, Tensor | null>();
  private readonly _buffers = new Map<string, Tensor>();
  private readonly _modules = new Map<string, Module>();
  private readonly _intBuffers = new Map<string, IntBuffer>();
  training = true;

  /** Registers a trainable tensor (kept out of tidy scopes; requiresGrad is set). */
  protected registerParameter(name: string, t: Tensor | null): Tensor | null {
    if (t) {
      keep(t);
      t.requiresGrad = true;
    }
    this._params.set(name, t);
    return t;
  }
  protected registerBuffer(name: string, t: Tensor): Tensor {
    keep(t);
    this._buffers.set(name, t);
    return t;
  }
  protected registerIntBuffer(name: string, initial = 0n): IntBuffer {
    const b = { value: initial };
    this._intBuffers.set(name, b);
    return b;
  }
  protected registerModule<M extends Module>(name: string, m: M): M {
    this._modules.set(name, m);
    return m;
  }

  forward(..._args: unknown[]): unknown {
    throw new AdaShiftError('ERR_ARG', `${this.constructor.name}.forward is not implemented`);
  }

  /**
   * This module and every module below it, with their dotted names. A module assigned to a
   * property (`this.fc = new nn.Linear(4, 2)`, or a class field) is a child under the property's
   * name, as in PyTorch (also when it is a module of the tree under another name: its
   * parameters then come once from parameters(), its state dict entries under both names);
   * one registered with registerModule under another name is not added again, and a property
   * assigned a new module replaces the child of that name.
   */
  *namedModules(prefix = ''): Generator<[string, Module]> {
    yield* this.walkModules(prefix, new Set());
  }

  private *walkModules(prefix: string, ancestors: Set<Module>): Generator<[string, Module]> {
    this.adoptPropertyModules();
    yield [prefix, this];
    ancestors.add(this);
    // a child that is also an ancestor (a property pointing back up the tree) would never end
    for (const [n, m] of this._modules) if (!ancestors.has(m)) yield* m.walkModules(prefix ? `${prefix}.${n}` : n, ancestors);
    ancestors.delete(this);
  }

  private adoptPropertyModules(): void {
    const registered = new Set(this._modules.values());
    for (const [name, value] of Object.entries(this)) {
      if (value instanceof Module && value !== this && !registered.has(value)) this._modules.set(name, value);
    }
  }

  /**
   * Parameters with their names. A parameter shared by several modules (tied weights) comes once,
   * under its first name, as in PyTorch; `{removeDuplicate: false}` lists it under every name
   * (what stateDict() does).
   */
  namedParameters(options: { removeDuplicate?: boolean } = {}): [string, Tensor][] {
    const removeDuplicate = checkOptions('namedParameters', options, ['removeDuplicate']).removeDuplicate ?? true;
    const out: [string, Tensor][] = [];
    const seen = new Set<Tensor>();
    for (const [prefix, m] of this.namedModules()) {
      for (const [n, p] of m._params) {
        if (!p || (removeDuplicate && seen.has(p))) continue;
        seen.add(p);
        out.push([prefix ? `${prefix}.${n}` : n, p]);
      }
    }
    return out;
  }
  parameters(): Tensor[] {
    return this.namedParameters().map(([, p]) => p);
  }
  namedBuffers(): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [prefix, m] of this.namedModules()) {
      for (const [n, b] of m._buffers) out.push([prefix ? `${prefix}.${n}` : n, b]);
    }
    return out;
  }

  namedIntBuffers(): [string, IntBuffer][] {
    const out: [string, IntBuffer][] = [];
    for (const [prefix, m] of this.namedModules()) {
      for (const [n, b] of m._intBuffers) out.push([prefix ? `${prefix}.${n}` : n, b]);
    }
    return out;
  }

  /**
   * Parameters and buffers by name, in PyTorch's layout and order (module by module: its
   * parameters, then its buffers; integer buffers such as num_batches_tracked as I64 scalars).
   * Every entry is live: the tensors are the module's own (do not dispose them) and an integer
   * buffer's `data` reads its current value.
   */
  stateDict(): Record<string, Tensor | IntTensor> {
    const out: Record<string, Tensor | IntTensor> = {};
    for (const [prefix, m] of this.namedModules()) {
      const at = (n: string) => (prefix ? `${prefix}.${n}` : n);
      for (const [n, p] of m._params) if (p) out[at(n)] = p;
      for (const [n, b] of m._buffers) out[at(n)] = b;
      for (const [n, b] of m._intBuffers) {
        const entry = { dtype: 'I64', shape: [] } as unknown as IntTensor;
        Object.defineProperty(entry, 'data', { enumerable: true, get: () => BigInt64Array.of(b.value) });
        out[at(n)] = entry;
      }
    }
    return out;
  }

  /**
   * Copies values from a state dict (shapes must match; integer entries of a float tensor are
   * converted, as PyTorch's copy does). strict (default true): every key of the module must be
   * present and no unknown key may appear, except BatchNorm's num_batches_tracked, which may be
   * absent (PyTorch's rule: the module keeps its count). Every problem is named in one error.
   */
  loadStateDict(dict: Record<string, Tensor | IntTensor>, options: { strict?: boolean } = {}): { missing: string[]; unexpected: string[] } {
    check(dict !== null && typeof dict === 'object' && !Array.isArray(dict), 'ERR_ARG', () => `loadStateDict: expected an object of name -> Tensor, got ${dict === null ? 'null' : typeof dict}`);
    const strict = checkOptions('loadStateDict', options, ['strict']).strict ?? true;
    const own = this.stateDict();
    const ints = new Map(this.namedIntBuffers());
    // a key whose value is undefined or null (a failed lookup while building the dict) is missing
    const absent = (k: string) => dict[k] === undefined || dict[k] === null;
    const missing = Object.keys(own).filter((k) => absent(k) && !(ints.has(k) && /(^|\.)num_batches_tracked$/.test(k)));
    const unexpected = Object.keys(dict).filter((k) => !(k in own));
    // Every entry is checked before any is loaded, so a dict that fails leaves the module as it was.
    const problems: string[] = [];
    let shapeProblem = false;
    const loads: (() => void)[] = [];
    for (const [k, target] of Object.entries(own)) {
      const src = dict[k];
      if (absent(k)) continue;
      const intBuf = ints.get(k);
      if (intBuf) {
        let v: bigint | null = null;
        if (isIntTensor(src)) {
          if (src.data.length !== 1) problems.push(`'${k}' must hold one integer, got ${src.data.length}`);
          else v = BigInt(src.data[0]);
        } else if (src instanceof Tensor && src.numel === 1) {
          const x = src.item();
          if (Number.isSafeInteger(x)) v = BigInt(x);
          else problems.push(`'${k}' must be a count (an integer >= 0), got ${x}`);
        } else problems.push(`'${k}' must be an integer scalar, got ${entryKind(src)}`);
        if (v !== null && v < 0n) problems.push(`'${k}' must be a count >= 0, got ${v}`);
        else if (v !== null) {
          const value = v;
          loads.push(() => (intBuf.value = value));
        }
        continue;
      }
      if (!(target instanceof Tensor)) continue;
      const shape = src instanceof Tensor ? src.shape : isIntTensor(src) ? src.shape : null;
      if (!shape) {
        problems.push(`'${k}' must be a Tensor, got ${entryKind(src)}`);
        continue;
      }
      const a = target.shape;
      if (!(a.length === shape.length && a.every((d, i) => d === shape[i]))) {
        problems.push(`'${k}' has shape [${shape.join(', ')}], the module expects [${a.join(', ')}]`);
        shapeProblem = true;
        continue;
      }
      // Always a copy: the module must never share memory with the dict it loaded from.
      if (src instanceof Tensor) {
        loads.push(() => noGrad(() => target._setData(new Tensor(src.device === target.device ? native.clone(src.handle) : native.to(src.handle, target.device)))));
      } else {
        const values = Float32Array.from(src.data as ArrayLike<number | bigint>, (x) => Number(x));
        loads.push(() => noGrad(() => target._setData(tensor(values, shape, { device: target.device }))));
      }
    }
    const keyProblems = strict ? [missing.length ? `missing keys: ${missing.join(', ')}` : '', unexpected.length ? `unexpected keys: ${unexpected.join(', ')}` : ''].filter(Boolean) : [];
    if (keyProblems.length || problems.length) {
      const hint = strict && missing.length ? prefixHint(missing, unexpected, own) : '';
      throw new AdaShiftError(keyProblems.length ? 'ERR_ARG' : shapeProblem ? 'ERR_SHAPE' : 'ERR_ARG', `loadStateDict: ${[...keyProblems, ...problems].join('; ')}${hint}`);
    }
    for (const load of loads) load();
    return { missing, unexpected };
  }

  /** Moves every parameter and buffer, and the parameters' gradients, to a device (in place; returns this). */
  to(device: DeviceSpec): this {
    const d = resolveDevice(device);
    for (const t of [...this.parameters(), ...this.namedBuffers().map(([, b]) => b)]) {
      if (t.device === d) continue;
      t._setData(new Tensor(native.to(t.handle, d)));
      if (t.grad) {
        const moved = new Tensor(native.to(t.grad.handle, d), false);
        t.grad.dispose();
        t.grad = moved;
      }
    }
    return this;
  }

  train(mode = true): this {
    checkBoolean(`${this.constructor.name}.train(mode): mode`, mode);
    for (const [, m] of this.namedModules()) m.training = mode;
    return this;
  }
  eval(): this {
    return this.train(false);
  }

  /** Clears (disposes) every parameter's gradient. */
  zeroGrad(): void {
    for (const p of this.parameters()) {
      if (p.grad) p.grad.dispose();
      p.grad = null;
    }
  }

  /** Frees every parameter and buffer. */
  dispose(): void {
    for (const t of [...this.parameters(), ...this.namedBuffers().map(([, b]) => b)]) {
      t.grad?.dispose();
      t.dispose();
    }
  }

  numParameters(): number {
    return this.parameters().reduce((a, p) => a + p.numel, 0);
  }

  /** This module's own settings on one line, for toString() (PyTorch's extra_repr). */
  protected extraRepr(): string {
    return '';
  }

  /** The module tree as PyTorch prints it: `Linear(inFeatures=4, outFeatures=8, bias=true)`, children indented. */
  toString(): string {
    if (printing.has(this)) return `${this.constructor.name}(...)`; // a property pointing back up the tree
    printing.add(this);
    try {
      this.adoptPropertyModules();
      const extra = this.extraRepr();
      if (!this._modules.size) return `${this.constructor.name}(${extra})`;
      const lines = [...this._modules].map(([n, m]) => `  (${n}): ${m.toString().split('\n').join('\n  ')}`);
      return `${this.constructor.name}(${extra ? `\n  ${extra}` : ''}\n${lines.join('\n')}\n)`;
    } finally {
      printing.delete(this);
    }
  }

  /** console.log and util.inspect show toString(). */
  [inspect.custom](): string {
    return this.toString();
  }
}

const printing = new Set<Module>();

/** A number in a module's description: small ones in exponent form (eps=1e-5, not 0.00001). */
export function reprNumber(x: number): string {
  return x !== 0 && Math.abs(x) < 1e-3 ? x.toExponential() : String(x);
}

/** A module whose forward maps one tensor to one tensor: activations, layers, models. */
export interface TensorModule extends Module {
  forward(x: Tensor): Tensor;
}

/** Runs modules in order; children are named '0', '1', ... like PyTorch's nn.Sequential. */
export class Sequential extends Module {
  readonly layers: Module[];
  constructor(...layers: Module[]) {
    super();
    layers.forEach((m, i) => check(m instanceof Module, 'ERR_ARG', () => `Sequential: layer ${i} must be a Module (with forward), got ${m === null ? 'null' : typeof m}`));
    this.layers = layers;
    layers.forEach((m, i) => this.registerModule(String(i), m));
  }
  override forward(x: Tensor): Tensor {
    let y = x;
    for (const m of this.layers) y = m.forward(y) as Tensor;
    return y;
  }
}
