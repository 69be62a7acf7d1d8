// The baseline activations: ReLU, GELU (erf form, or the tanh approximation), SiLU.
import { needsGrad, record } from '../autograd';
import { AdaShiftError, checkOptions } from '../errors';
import { ActKind, native } from '../native';
import { Tensor } from '../tensor';
import { assertTensor, wrap } from './util';

function activation(kind: number, name: string, x: Tensor): Tensor {
  assertTensor(x, name, 'x');
  const out = wrap(native.actForward(kind, x.handle));
  if (!needsGrad(x)) return out;
  // Backward recomputes from the input; nothing extra is saved.
  return record(out, name, [x], (g) => [wrap(native.actBackward(kind, x.handle, g.handle))]);
}

export function relu(x: Tensor): Tensor {
  return activation(ActKind.relu, 'relu', x);
}

export interface GeluOptions {
  /** 'none' (default): x * Phi(x) with erf; 'tanh': PyTorch's tanh approximation. */
  approximate?: 'none' | 'tanh';
}
export function gelu(x: Tensor, options: GeluOptions = {}): Tensor {
  options = checkOptions('gelu', options, ['approximate']);
  const tanh = options.approximate === 'tanh';
  if (options.approximate !== undefined && !tanh && options.approximate !== 'none') {
    throw new AdaShiftError('ERR_ARG', `gelu: approximate must be 'none' or 'tanh', got '${String(options.approximate)}'`);
  }
  return activation(tanh ? ActKind.geluTanh : ActKind.gelu, tanh ? 'gelu_tanh' : 'gelu', x);
}

export function silu(x: Tensor): Tensor {
  return activation(ActKind.silu, 'silu', x);
}
