// Activation modules: the baselines (ReLU, GELU, SiLU) and AdaShift-B / AdaShift-MA, with the
// parameter names and initialisation of the reference implementation (see ADASHIFT.md).
import { AdaShiftError, check, checkBooleans, checkOptions } from '../errors';
import { DeviceSpec } from '../device';
import { adashiftB, AdaShiftBParams, adashiftMA, AdaShiftMAParams } from '../ops/adashift';
import { gelu, relu, silu } from '../ops/activation';
import { layerNorm, linear, matmul, softmax } from '../ops/dense';
import { permute, reshape, scale } from '../ops/elementwise';
import { full, rand, randn, Tensor } from '../tensor';
import { Module, reprNumber, Sequential, TensorModule } from './module';

export interface ModuleOptions {
  device?: DeviceSpec;
}

export class ReLU extends Module {
  override forward(x: Tensor): Tensor {
    return relu(x);
  }
}

export class GELU extends Module {
  constructor(readonly approximate: 'none' | 'tanh' = 'none') {
    super();
    // checked here as well as by the op: a model with a bad option fails when built, not in its first step
    check(approximate === 'none' || approximate === 'tanh', 'ERR_ARG', () => `GELU: approximate must be 'none' or 'tanh', got ${JSON.stringify(approximate)}`);
  }
  protected override extraRepr(): string {
    return this.approximate === 'tanh' ? "approximate='tanh'" : '';
  }
  override forward(x: Tensor): Tensor {
    return gelu(x, { approximate: this.approximate });
  }
}

export class SiLU extends Module {
  override forward(x: Tensor): Tensor {
    return silu(x);
  }
}

/** LayerNorm over the last axis (weight, bias), as a module so names nest ("norm.weight"). */
export class LayerNorm extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;
  constructor(readonly features: number, readonly eps = 1e-5, options: ModuleOptions & { weightInit?: number } = {}) {
    super();
    options = checkOptions('LayerNorm', options, ['device', 'weightInit']);
    checkChannels(features, 'LayerNorm');
    check(typeof eps === 'number' && eps > 0 && Number.isFinite(eps), 'ERR_ARG', () => `LayerNorm: eps (the second argument) must be a finite number > 0, got ${JSON.stringify(eps) ?? typeof eps}${eps !== null && typeof eps === 'object' ? ' (options go third: new LayerNorm(features, eps, options))' : ''}`);
    const device = options.device;
    this.weight = this.registerParameter('weight', full([features], options.weightInit ?? 1, { device }))!;
    this.bias = this.registerParameter('bias', full([features], 0, { device }))!;
  }
  protected override extraRepr(): string {
    return `${this.features}, eps=${reprNumber(this.eps)}`;
  }
  override forward(x: Tensor): Tensor {
    return layerNorm(x, this.weight, this.bias, this.eps);
  }
}

/** y = x W^T + b, PyTorch's default init (uniform in +-1/sqrt(in) for weight and bias). */
export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  constructor(readonly inFeatures: number, readonly outFeatures: number, options: ModuleOptions & { bias?: boolean; weightStd?: number } = {}) {
    super();
    options = checkOptions('Linear', options, ['device', 'bias', 'weightStd']);
    checkBooleans('Linear', options, ['bias']);
    checkChannels(inFeatures, 'Linear');
    checkChannels(outFeatures, 'Linear');
    const bound = 1 / Math.sqrt(inFeatures);
    const device = options.device;
    const w =
      options.weightStd !== undefined
        ? randn([outFeatures, inFeatures], { device, std: options.weightStd })
        : rand([outFeatures, inFeatures], { device, low: -bound, high: bound });
    this.weight = this.registerParameter('weight', w)!;
    this.bias = (options.bias ?? true) ? this.registerParameter('bias', rand([outFeatures], { device, low: -bound, high: bound })) : null;
  }
  protected override extraRepr(): string {
    return `inFeatures=${this.inFeatures}, outFeatures=${this.outFeatures}, bias=${this.bias !== null}`;
  }
  override forward(x: Tensor): Tensor {
    return linear(x, this.weight, this.bias);
  }
}

function checkChannels(c: number, who: string): void {
  check(Number.isInteger(c) && c >= 1, 'ERR_ARG', () => `${who}: channels must be a positive integer, got ${c}`);
}

const SHIFT_EPS = 1e-6;

export interface AdaShiftBOptions extends ModuleOptions {
  /** A Linear(C, C) on the pooled context before the LayerNorm. Default false. */
  proj?: boolean;
}

/** AdaShift-B: one shift per sample and channel from the global average (ADASHIFT.md). */
export class AdaShiftB extends Module {
  readonly norm: LayerNorm;
  readonly proj: Linear | null;
  constructor(readonly channels: number, options: AdaShiftBOptions = {}) {
    super();
    options = checkOptions('AdaShiftB', options, ['device', 'proj']);
    checkBooleans('AdaShiftB', options, ['proj']);
    checkChannels(channels, 'AdaShiftB');
    const device = options.device;
    this.proj = options.proj ? this.registerModule('proj', new Linear(channels, channels, { device })) : null;
    this.norm = this.registerModule('norm', new LayerNorm(channels, SHIFT_EPS, { device, weightInit: 0.01 }));
  }
  protected override extraRepr(): string {
    return `${this.channels}, proj=${this.proj !== null}`;
  }
  override forward(x: Tensor): Tensor {
    checkInput(x, this.channels, 'AdaShiftB');
    return adashiftB(x, this.opParams());
  }

  /** The module's parameters as the functional ops take them (adashiftB, batchNormAct's shift). */
  opParams(): AdaShiftBParams {
    return { normWeight: this.norm.weight, normBias: this.norm.bias, projWeight: this.proj?.weight, projBias: this.proj?.bias, eps: this.norm.eps };
  }

  /** The context network: pooled means [N, 1, C] -> shift [N, 1, C]. */
  context(t: Tensor): Tensor {
    const m = this.proj ? this.proj.forward(t) : t;
    return this.norm.forward(m);
  }
}

export interface AdaShiftMAOptions extends ModuleOptions {
  /** Regions per side (P); clamped to H and W per axis. Default 7. */
  grid?: number;
  /** Channels per attention head; heads = max(floor(C / headDim), 1). Default 64. */
  headDim?: number;
  /** 'norm' (LayerNorm, weight 0.01; default) or 'linear' (Linear without bias, then LayerNorm). */
  rect?: 'norm' | 'linear';
  /**
   * Keep the context network's intermediates for backward (true) or only the shift, the
   * backward computing them again from the input (false, default): the same gradients to the
   * bit, less memory held between forward and backward (at 7x7 maps with the 7x7 grid about four
   * times the input's size less), a few percent more time per step.
   */
  keepContext?: boolean;
}

/** AdaShift-MA: multi-range context, attention over a P x P grid of regions (ADASHIFT.md). */
export class AdaShiftMA extends Module {
  readonly grid: number;
  readonly headDim: number;
  readonly heads: number;
  readonly rect: 'norm' | 'linear';
  readonly keepContext: boolean;
  readonly q: LayerNorm;
  readonly k: LayerNorm;
  readonly v: LayerNorm;
  private readonly rectNorm: LayerNorm | null = null;
  private readonly rectSeq: { linear: Linear; norm: LayerNorm } | null = null;

  constructor(readonly channels: number, options: AdaShiftMAOptions = {}) {
    super();
    options = checkOptions('AdaShiftMA', options, ['device', 'grid', 'headDim', 'rect', 'keepContext']);
    checkChannels(channels, 'AdaShiftMA');
    const device = options.device;
    this.grid = options.grid ?? 7;
    this.headDim = options.headDim ?? 64;
    this.rect = options.rect ?? 'norm';
    this.keepContext = options.keepContext ?? false;
    check(typeof this.keepContext === 'boolean', 'ERR_ARG', () => `AdaShiftMA: keepContext must be a boolean, got ${String(options.keepContext)}`);
    check(Number.isInteger(this.grid) && this.grid >= 1 && this.grid <= 1024, 'ERR_ARG', () => `AdaShiftMA: grid must be an integer in [1, 1024], got ${options.grid}`);
    check(Number.isInteger(this.headDim) && this.headDim >= 1, 'ERR_ARG', () => `AdaShiftMA: headDim must be a positive integer, got ${options.headDim}`);
    check(this.rect === 'norm' || this.rect === 'linear', 'ERR_ARG', () => `AdaShiftMA: rect must be 'norm' or 'linear', got '${String(options.rect)}'`);
    this.heads = Math.max(Math.floor(channels / this.headDim), 1);
    if (channels % this.heads !== 0) {
      throw new AdaShiftError('ERR_ARG', `AdaShiftMA: ${channels} channels do not split into ${this.heads} heads (headDim ${this.headDim}); pick a headDim that divides the channels`);
    }
    this.q = this.registerModule('q', new LayerNorm(channels, SHIFT_EPS, { device }));
    this.k = this.registerModule('k', new LayerNorm(channels, SHIFT_EPS, { device }));
    this.v = this.registerModule('v', new LayerNorm(channels, SHIFT_EPS, { device }));
    if (this.rect === 'norm') {
      this.rectNorm = this.registerModule('rect', new LayerNorm(channels, SHIFT_EPS, { device, weightInit: 0.01 }));
    } else {
      // Named like PyTorch's nn.Sequential: rect.0 (Linear), rect.1 (LayerNorm).
      // trunc-normal(std 0.02) truncated at +-2 (absolute) as in the reference: at this std
      // the truncation never triggers, so a plain normal draw is the same distribution.
      const lin = new Linear(channels, channels, { device, bias: false, weightStd: 0.02 });
      const norm = new LayerNorm(channels, SHIFT_EPS, { device });
      this.registerModule('rect', new Sequential(lin, norm));
      this.rectSeq = { linear: lin, norm };
    }
  }

  protected override extraRepr(): string {
    return `${this.channels}, grid=${this.grid}, headDim=${this.headDim}, heads=${this.heads}, rect='${this.rect}', keepContext=${this.keepContext}`;
  }
  override forward(x: Tensor): Tensor {
    checkInput(x, this.channels, 'AdaShiftMA');
    return adashiftMA(x, this.opParams());
  }

  /** The module's parameters as functional.adashiftMA (and batchNormAdaShiftMA) take them. */
  opParams(): AdaShiftMAParams {
    const rectNorm = this.rectNorm ?? this.rectSeq!.norm;
    return {
      grid: this.grid,
      heads: this.heads,
      qWeight: this.q.weight,
      qBias: this.q.bias,
      kWeight: this.k.weight,
      kBias: this.k.bias,
      vWeight: this.v.weight,
      vBias: this.v.bias,
      rectLinearWeight: this.rectSeq?.linear.weight ?? null,
      rectWeight: rectNorm.weight,
      rectBias: rectNorm.bias,
      eps: SHIFT_EPS,
      keepContext: this.keepContext,
    };
  }

  /** The context network, attention over region tokens: t [N, T, C] -> shift [N, T, C]. */
  context(t: Tensor): Tensor {
    const [N, T, C] = t.shape;
    const G = this.heads, d = C / G;
    // [N, T, C] -> [N*G, T, d]; with one head the layout is already right (a view).
    const split = (z: Tensor): Tensor => (G === 1 ? z : reshape(permute(reshape(z, [N, T, G, d]), [0, 2, 1, 3]), [N * G, T, d]));
    const q = split(this.q.forward(t));
    const k = split(this.k.forward(t));
    const v = split(this.v.forward(t));
    const attn = softmax(scale(matmul(q, k, { transB: true }), 1 / Math.sqrt(d)));
    const av = matmul(attn, v);
    const o = G === 1 ? av : reshape(permute(reshape(av, [N, G, T, d]), [0, 2, 1, 3]), [N, T, C]);
    if (this.rectNorm) return this.rectNorm.forward(o);
    return this.rectSeq!.norm.forward(this.rectSeq!.linear.forward(o));
  }
}

function checkInput(x: Tensor, channels: number, who: string): void {
  check(x instanceof Tensor, 'ERR_ARG', () => `${who}.forward: input must be a Tensor, got ${x === null ? 'null' : typeof x}`);
  const s = x.shape;
  check(s.length === 4 && s[1] === channels, 'ERR_SHAPE', () => `${who}(${channels}): expected an input of shape [N, ${channels}, H, W], got [${s.join(', ')}]`);
}

export type ActivationName = 'relu' | 'gelu' | 'silu' | 'adashift-b' | 'adashift-ma';
export const ACTIVATIONS: readonly ActivationName[] = ['relu', 'gelu', 'silu', 'adashift-b', 'adashift-ma'];

export type ActivationOptions = AdaShiftBOptions & AdaShiftMAOptions & { approximate?: 'none' | 'tanh' };
/** The option names activation() takes (every activation's; each reads its own). */
export const ACTIVATION_OPTIONS = ['device', 'proj', 'grid', 'headDim', 'rect', 'keepContext', 'approximate'] as const satisfies readonly (keyof ActivationOptions)[];

/** The options each activation reads (besides device); activation() ignores the others. */
export const ACTIVATION_OWN_OPTIONS: Readonly<Record<ActivationName, readonly Exclude<(typeof ACTIVATION_OPTIONS)[number], 'device'>[]>> = {
  relu: [],
  gelu: ['approximate'],
  silu: [],
  'adashift-b': ['proj'],
  'adashift-ma': ['grid', 'headDim', 'rect', 'keepContext'],
};

/** The activation registry: a module for `name` acting on `channels` channels. */
export function activation(name: ActivationName, channels: number, options: ActivationOptions = {}): TensorModule {
  // Options of every activation are accepted (a model passes one set to all its activations);
  // each gets its own.
  const o = checkOptions('activation', options, ACTIVATION_OPTIONS);
  switch (name) {
    case 'relu':
      return new ReLU();
    case 'gelu':
      return new GELU(o.approximate ?? 'none');
    case 'silu':
      return new SiLU();
    case 'adashift-b':
      return new AdaShiftB(channels, { device: o.device, proj: o.proj });
    case 'adashift-ma':
      return new AdaShiftMA(channels, { device: o.device, grid: o.grid, headDim: o.headDim, rect: o.rect, keepContext: o.keepContext });
    default:
      throw new AdaShiftError('ERR_ARG', `unknown activation '${String(name)}'; expected one of ${ACTIVATIONS.join(', ')}`);
  }
}
