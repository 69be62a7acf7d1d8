// Module: a tree of named parameters, buffers and sub-modules, with PyTorch's naming
// ("layer1.0.conv1.weight") so state dicts move between the two without renaming.
import { AdaShiftError, check, checkOptions } from '../errors';
import { DeviceSpec, resolveDevice } from '../device';
import { noGrad } from '../autograd';
import { native } from '../native';
import { keep, Tensor } from '../tensor';
import { IntTensor, isIntTensor } from '../io/safetensors';

/** A scalar integer buffer (PyTorch's int64 num_batches_tracked). */
export interface IntBuffer {
  value: bigint;
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
   * Parameters and buffers by name, in PyTorch's layout (integer buffers such as
   * num_batches_tracked as I64 scalars). The tensors are the module's own: do not dispose them.
   */
  stateDict(): Record<string, Tensor | IntTensor> {
    const out: Record<string, Tensor | IntTensor> = {};
    for (const [n, p] of this.namedParameters({ removeDuplicate: false })) out[n] = p;
    for (const [n, b] of this.namedBuffers()) out[n] = b;
    for (const [n, b] of this.namedIntBuffers()) out[n] = { dtype: 'I64', shape: [], data: BigInt64Array.of(b.value) };
    return out;
  }

  /**
   * Copies values from a state dict (shapes must match). strict (default true): every key of
   * the module must be present and no unknown key may appear.
   */
  loadStateDict(dict: Record<string, Tensor | IntTensor>, options: { strict?: boolean } = {}): { missing: string[]; unexpected: string[] } {
    check(dict !== null && typeof dict === 'object' && !Array.isArray(dict), 'ERR_ARG', () => `loadStateDict: expected an object of name -> Tensor, got ${dict === null ? 'null' : typeof dict}`);
    const strict = checkOptions('loadStateDict', options, ['strict']).strict ?? true;
    const own = this.stateDict();
    const ints = new Map(this.namedIntBuffers());
    // a key whose value is undefined or null (a failed lookup while building the dict) is missing
    const missing = Object.keys(own).filter((k) => dict[k] === undefined || dict[k] === null);
    const unexpected = Object.keys(dict).filter((k) => !(k in own));
    if (strict && (missing.length || unexpected.length)) {
      throw new AdaShiftError(
        'ERR_ARG',
        `loadStateDict: ${missing.length ? `missing keys: ${missing.join(', ')}` : ''}${missing.length && unexpected.length ? '; ' : ''}${unexpected.length ? `unexpected keys: ${unexpected.join(', ')}` : ''}`,
      );
    }
    // Every entry is checked before any is loaded, so a dict that fails leaves the module as it was.
    const loads: (() => void)[] = [];
    for (const [k, target] of Object.entries(own)) {
      const src = dict[k];
      if (!src) continue;
      const intBuf = ints.get(k);
      if (intBuf) {
        if (isIntTensor(src)) {
          check(src.data.length === 1, 'ERR_SHAPE', () => `loadStateDict: '${k}' must hold one integer`);
          const v = BigInt(src.data[0]);
          check(v >= 0n, 'ERR_ARG', () => `loadStateDict: '${k}' must be a count >= 0, got ${v}`);
          loads.push(() => (intBuf.value = v));
        } else {
          check(src instanceof Tensor && src.numel === 1, 'ERR_ARG', () => `loadStateDict: '${k}' must be an integer scalar`);
          const x = src.item();
          check(Number.isSafeInteger(x) && x >= 0, 'ERR_ARG', () => `loadStateDict: '${k}' must be a count (an integer >= 0), got ${x}`);
          const v = BigInt(x);
          loads.push(() => (intBuf.value = v));
        }
        continue;
      }
      if (!(target instanceof Tensor)) continue;
      check(src instanceof Tensor, 'ERR_ARG', () => `loadStateDict: '${k}' is not a Tensor`);
      const a = target.shape, b = src.shape;
      check(a.length === b.length && a.every((v, i) => v === b[i]), 'ERR_SHAPE', () => `loadStateDict: '${k}' has shape [${b.join(', ')}], the module expects [${a.join(', ')}]`);
      // Always a copy: the module must never share memory with the dict it loaded from.
      loads.push(() => noGrad(() => target._setData(new Tensor(src.device === target.device ? native.clone(src.handle) : native.to(src.handle, target.device)))));
    }
    for (const load of loads) load();
    return { missing, unexpected };
  }

  /** Moves every parameter and buffer, and the parameters' gradients, to a device (in place; returns this). */
  to(device: DeviceSpec | string): this {
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
