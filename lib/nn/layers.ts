// Convolution and batch normalisation modules (torchvision's names and initialisation).
import { check, checkBooleans, checkOptions } from '../errors';
import { conv2d } from '../ops/conv';
import { batchNorm2d } from '../ops/norm';
import { full, randn, Tensor, zeros } from '../tensor';
import { ModuleOptions } from './activation';
import { IntBuffer, Module, reprNumber } from './module';

export interface Conv2dOptions extends ModuleOptions {
  stride?: number;
  padding?: number;
  bias?: boolean;
}

/** 2-D convolution, weight [out, in, k, k], Kaiming-normal init (fan_out, ReLU gain) as torchvision's ResNets. */
export class Conv2d extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  readonly stride: number;
  readonly padding: number;
  constructor(readonly inChannels: number, readonly outChannels: number, readonly kernelSize: number, options: Conv2dOptions = {}) {
    super();
    options = checkOptions('Conv2d', options, ['device', 'stride', 'padding', 'bias']);
    checkBooleans('Conv2d', options, ['bias']);
    for (const [n, v] of [['inChannels', inChannels], ['outChannels', outChannels], ['kernelSize', kernelSize]] as const) {
      check(Number.isInteger(v) && v >= 1, 'ERR_ARG', () => `Conv2d: ${n} must be a positive integer, got ${v}`);
    }
    this.stride = options.stride ?? 1;
    this.padding = options.padding ?? 0;
    check(Number.isInteger(this.stride) && this.stride >= 1, 'ERR_ARG', () => `Conv2d: stride must be a positive integer, got ${this.stride}`);
    check(Number.isInteger(this.padding) && this.padding >= 0, 'ERR_ARG', () => `Conv2d: padding must be a non-negative integer, got ${this.padding}`);
    const fanOut = outChannels * kernelSize * kernelSize;
    this.weight = this.registerParameter('weight', randn([outChannels, inChannels, kernelSize, kernelSize], { device: options.device, std: Math.sqrt(2 / fanOut) }))!;
    this.bias = options.bias ? this.registerParameter('bias', zeros([outChannels], { device: options.device })) : null;
  }
  protected override extraRepr(): string {
    return `${this.inChannels}, ${this.outChannels}, kernelSize=${this.kernelSize}, stride=${this.stride}, padding=${this.padding}, bias=${this.bias !== null}`;
  }
  override forward(x: Tensor): Tensor {
    return conv2d(x, this.weight, this.bias, { stride: this.stride, padding: this.padding });
  }
}

export interface BatchNorm2dOptions extends ModuleOptions {
  eps?: number;
  momentum?: number;
}

/** Batch normalisation over (N, H, W) per channel, with running statistics for eval. */
export class BatchNorm2d extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;
  readonly runningMean: Tensor;
  readonly runningVar: Tensor;
  readonly numBatchesTracked: IntBuffer;
  readonly eps: number;
  readonly momentum: number;
  constructor(readonly channels: number, options: BatchNorm2dOptions = {}) {
    super();
    options = checkOptions('BatchNorm2d', options, ['device', 'eps', 'momentum']);
    check(Number.isInteger(channels) && channels >= 1, 'ERR_ARG', () => `BatchNorm2d: channels must be a positive integer, got ${channels}`);
    // null is refused rather than read as the default: PyTorch's momentum=None means a cumulative average, which this module does not compute
    check(options.momentum !== null && options.eps !== null, 'ERR_ARG', () => `BatchNorm2d: ${options.momentum === null ? "momentum null (PyTorch's cumulative moving average) is not supported; give a number in [0, 1]" : 'eps must be a number > 0, got null'}`);
    this.eps = options.eps ?? 1e-5;
    this.momentum = options.momentum ?? 0.1;
    check(typeof this.eps === 'number' && this.eps > 0, 'ERR_ARG', () => `BatchNorm2d: eps must be a number > 0, got ${JSON.stringify(this.eps)}`);
    check(typeof this.momentum === 'number' && this.momentum >= 0 && this.momentum <= 1, 'ERR_ARG', () => `BatchNorm2d: momentum must be a number in [0, 1], got ${JSON.stringify(this.momentum)}`);
    const dev = { device: options.device };
    this.weight = this.registerParameter('weight', full([channels], 1, dev))!;
    this.bias = this.registerParameter('bias', zeros([channels], dev))!;
    this.runningMean = this.registerBuffer('running_mean', zeros([channels], dev));
    this.runningVar = this.registerBuffer('running_var', full([channels], 1, dev));
    this.numBatchesTracked = this.registerIntBuffer('num_batches_tracked');
  }
  /** BN(x), or BN(x) + residual computed in the same pass (x's shape: a block's shortcut). */
  protected override extraRepr(): string {
    return `${this.channels}, eps=${reprNumber(this.eps)}, momentum=${this.momentum}`;
  }
  override forward(x: Tensor, residual: Tensor | null = null): Tensor {
    this.checkInput(x);
    const y = batchNorm2d(x, this.weight, this.bias, this.runningMean, this.runningVar, {
      training: this.training,
      momentum: this.momentum,
      eps: this.eps,
      residual,
    });
    // counted once the batch is taken: a refused input changes nothing
    if (this.training) this.numBatchesTracked.value += 1n;
    return y;
  }
  /** Refuses an input this module cannot normalise, naming the module's channels (the ops name their own arguments). */
  checkInput(x: Tensor): void {
    check(x instanceof Tensor, 'ERR_ARG', () => `BatchNorm2d.forward: input must be a Tensor, got ${x === null ? 'null' : typeof x}`);
    check(x.shape.length === 4 && x.shape[1] === this.channels, 'ERR_SHAPE', () => `BatchNorm2d(${this.channels}): expected an input of shape [N, ${this.channels}, H, W], got [${x.shape.join(', ')}]`);
  }
  /** The tensors as functional.batchNorm2d, batchNormAct and batchNormAdaShiftMA take them (bn). */
  opParams(): { weight: Tensor; bias: Tensor; runningMean: Tensor; runningVar: Tensor } {
    return { weight: this.weight, bias: this.bias, runningMean: this.runningMean, runningVar: this.runningVar };
  }
}
