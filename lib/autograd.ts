// Reverse-mode autograd over recorded nodes. Each op that needs gradients records a GradFn
// holding its inputs, what it saved, and a backward closure; backward() orders the graph with
// an iterative topological sort (deep ResNets overflow recursion) and accumulates gradients
// with +=. Gradient tensors made during backward are owned (and freed) by the engine; after a
// backward without retainGraph every node frees what it saved.
import { AdaShiftError, checkSyncFn, refusePromise } from './errors';
import { native } from './native';
import type { Tensor } from './tensor';

export interface GradFn {
  readonly name: string;
  /** The op's tensor inputs (null where an input needs no gradient). */
  inputs: (Tensor | null)[];
  /**
   * Given the output's gradient (owned by the engine: do not dispose), the inputs' gradients.
   * `pending`, when given, holds per input the gradient already waiting for it from the input's
   * other users (or null). A node may return, for input i, its gradient plus pending[i] (each
   * element rounded once, as the engine's own add would: a + b == b + a bit for bit) and then
   * sets pending[i] = null to say so; the engine frees the pending tensor. It must not keep or
   * change that tensor.
   */
  backward(grad: Tensor, pending?: (Tensor | null)[]): (Tensor | null)[];
  /** What the node saved for backward (its own tensors; freed by release()). */
  readonly saved?: readonly Tensor[];
  /** Frees what the node saved for backward. */
  release(): void;
  released?: boolean;
}

let gradDepthDisabled = 0;
let retainDepth = 0;

/** Inside a backward pass: whether the caller asked to keep the graph (nested backwards follow it). */
export function isRetainingGraph(): boolean {
  return retainDepth > 0;
}

/** Releases every node of the graph behind `root` (what it saved is freed). */
export function releaseGraph(root: Tensor): void {
  const stack: GradFn[] = root.gradFn ? [root.gradFn] : [];
  const seen = new Set<GradFn>();
  while (stack.length) {
    const fn = stack.pop()!;
    if (seen.has(fn)) continue;
    seen.add(fn);
    for (const t of fn.inputs) if (t?.gradFn) stack.push(t.gradFn);
    fn.release();
  }
}

/** Whether ops record the graph now (false inside noGrad). */
export function isGradEnabled(): boolean {
  return gradDepthDisabled === 0;
}

/** Runs fn without recording any graph (inference, optimizer updates). */
export function noGrad<R>(fn: () => R): R {
  checkSyncFn('noGrad', fn);
  let result: R;
  gradDepthDisabled++;
  try {
    result = fn();
  } finally {
    gradDepthDisabled--;
  }
  refusePromise('noGrad', result, 'its code after an await recorded the graph again');
  return result;
}

/** Whether an op on these inputs must record a node. */
export function needsGrad(...inputs: (Tensor | null | undefined)[]): boolean {
  if (gradDepthDisabled) return false;
  for (const t of inputs) if (t && t.requiresGrad) return true;
  return false;
}

/**
 * Attaches a node to an op's output. `fn` receives the output gradient; the node keeps
 * `inputs` so the engine can route the returned gradients.
 */
export function record(
  out: Tensor,
  name: string,
  inputs: (Tensor | null)[],
  backward: (g: Tensor, pending?: (Tensor | null)[]) => (Tensor | null)[],
  saved: Tensor[] = [],
  onRelease?: () => void,
): Tensor {
  out.requiresGrad = true;
  out.gradFn = {
    name,
    inputs: inputs.map((t) => (t && t.requiresGrad ? t : null)),
    backward,
    saved,
    release() {
      if (this.released) return;
      onRelease?.();
      for (const t of saved) t.dispose();
      saved.length = 0;
      this.inputs = [];
      this.released = true;
    },
  };
  return out;
}

/** Reference counts for gradient tensors the engine made (one tensor may feed several slots). */
class GradRefs {
  private refs = new Map<Tensor, number>();
  constructor(private external: Set<Tensor>) {}
  hold(t: Tensor): void {
    this.refs.set(t, (this.refs.get(t) ?? 0) + 1);
  }
  drop(t: Tensor): void {
    const r = (this.refs.get(t) ?? 1) - 1;
    if (r <= 0) {
      this.refs.delete(t);
      if (!this.external.has(t)) t.dispose();
    } else this.refs.set(t, r);
  }
  /** True when t is held exactly once and the engine may hand it over. */
  sole(t: Tensor): boolean {
    return this.refs.get(t) === 1 && !this.external.has(t);
  }
  forget(t: Tensor): void {
    this.refs.delete(t);
  }
}

export function runBackward(root: Tensor, grad: Tensor | undefined, retainGraph: boolean): void {
  // Imported here, not at the top: tensor.ts imports this module.
  const { Tensor: TensorClass, ones, keep } = require('./tensor') as typeof import('./tensor');
  if (!root.requiresGrad) {
    throw new AdaShiftError('ERR_AUTOGRAD', 'backward(): the tensor does not require grad (no input with requiresGrad was used to compute it)');
  }
  let upstream: Tensor;
  const external = new Set<Tensor>();
  if (grad === undefined) {
    if (root.numel !== 1) {
      throw new AdaShiftError('ERR_AUTOGRAD', `backward(): a gradient is needed for a non-scalar output of shape [${root.shape.join(', ')}]`);
    }
    upstream = ones(root.shape, { device: root.device });
  } else {
    if (!(grad instanceof TensorClass)) throw new AdaShiftError('ERR_ARG', 'backward(grad): grad must be a Tensor');
    const gs = grad.shape, rs = root.shape;
    if (gs.length !== rs.length || gs.some((v, i) => v !== rs[i])) {
      throw new AdaShiftError('ERR_SHAPE', `backward(grad): grad shape [${gs.join(', ')}] does not match the output shape [${rs.join(', ')}]`);
    }
    if (grad.device !== root.device) throw new AdaShiftError('ERR_DEVICE', `backward(grad): grad is on ${grad.device}, the output on ${root.device}`);
    upstream = grad;
    external.add(grad);
  }
  const refs = new GradRefs(external);

  const accumulateLeaf = (leaf: Tensor, g: Tensor): void => {
    if (leaf.grad === null || leaf.grad.isDisposed) {
      // Adopt the tensor only when nothing else can see its memory (a view of the upstream
      // gradient would later be accumulated into in place).
      if (refs.sole(g) && !g.handle.storageShared) {
        refs.forget(g);
        leaf.grad = keep(g);
      } else {
        leaf.grad = keep(new TensorClass(native.clone(g.handle)));
        refs.drop(g);
      }
    } else {
      native.axpy_(leaf.grad.handle, 1, g.handle);
      refs.drop(g);
    }
  };

  if (!root.gradFn) {
    refs.hold(upstream);
    accumulateLeaf(root, upstream);
    return;
  }

  // Iterative DFS post-order gives a topological order (inputs after their users when reversed).
  const order: GradFn[] = [];
  const visited = new Set<GradFn>();
  const stack: [GradFn, number][] = [[root.gradFn, 0]];
  visited.add(root.gradFn);
  while (stack.length) {
    const top = stack[stack.length - 1];
    const [fn, i] = top;
    if (fn.released) {
      throw new AdaShiftError('ERR_AUTOGRAD', `backward(): the graph through '${fn.name}' was already released by an earlier backward; pass {retainGraph: true} to the first call to go through it twice`);
    }
    if (i < fn.inputs.length) {
      top[1]++;
      const child = fn.inputs[i]?.gradFn;
      if (child && !visited.has(child)) {
        visited.add(child);
        stack.push([child, 0]);
      }
    } else {
      stack.pop();
      order.push(fn);
    }
  }

  const pending = new Map<GradFn, Tensor>();
  refs.hold(upstream);
  pending.set(root.gradFn, upstream);
  if (retainGraph) retainDepth++;
  try {
    for (let k = order.length - 1; k >= 0; k--) {
      const fn = order[k];
      const g = pending.get(fn);
      if (!g) continue; // no gradient reached this node (its output fed nothing that needs one)
      pending.delete(fn);
      // What already waits for each input (offered once per input node), for the node to fold
      // into its own gradient of that input.
      const offered = fn.inputs.map((t, i) => {
        const prev = t?.gradFn ? pending.get(t.gradFn) : undefined;
        return prev && fn.inputs.findIndex((u) => u?.gradFn === t!.gradFn) === i ? prev : null;
      });
      const waiting = offered.slice();
      let grads: (Tensor | null)[];
      try {
        grads = fn.backward(g, waiting);
      } catch (e) {
        refs.drop(g); // out of pending already: the finally below would not free it
        // A tensor the node needs (an input it reads in backward) was disposed after the forward:
        // say which node, not just that some tensor was disposed.
        if (e instanceof AdaShiftError && e.code === 'ERR_DISPOSED') {
          const byTidy = [...fn.inputs, ...(fn.saved ?? [])].some((t) => t?.isDisposed && t.disposedByTidy);
          throw new AdaShiftError(
            'ERR_DISPOSED',
            byTidy
              ? `backward(): '${fn.name}' needs a tensor that a tidy() disposed when it returned (an intermediate of the graph, or a tensor the op saved): run backward() inside the tidy() that built the graph (returning the output keeps only the output)`
              : `backward(): '${fn.name}' needs a tensor that was disposed after the forward (an input, or a tensor it saved); keep the tensors a graph was built from alive until backward() has run`,
          );
        }
        throw e;
      }
      for (let i = 0; i < fn.inputs.length; i++) {
        const input = fn.inputs[i];
        const gi = grads[i];
        if (!input || !gi) continue;
        refs.hold(gi);
        if (input.gradFn) {
          const prev = pending.get(input.gradFn);
          if (!prev) pending.set(input.gradFn, gi);
          else if (offered[i] === prev && waiting[i] === null) {
            // the node's gradient already includes prev
            refs.drop(prev);
            pending.set(input.gradFn, gi);
          } else {
            const sum = new TensorClass(native.binary(0, prev.handle, gi.handle));
            refs.drop(prev);
            refs.drop(gi);
            refs.hold(sum);
            pending.set(input.gradFn, sum);
          }
        } else {
          accumulateLeaf(input, gi);
        }
      }
      refs.drop(g);
      if (!retainGraph) fn.release();
    }
  } finally {
    if (retainGraph) retainDepth--;
    for (const g of pending.values()) refs.drop(g);
    if (grad === undefined) upstream.dispose();
  }
}
