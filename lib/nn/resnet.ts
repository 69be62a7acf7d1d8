// ResNets: the CIFAR family (resnet20 ... resnet110: 3x3 stem, 16/32/64 channels, 1x1 conv + BN
// projection shortcuts) and torchvision's (resnet18 ... resnet101), with any activation of the
// registry in the stem and in every block (AdaShift's placement: ADASHIFT.md). Names follow
// torchvision/timm, so PyTorch state dicts load unchanged.
import { AdaShiftError, check, checkBooleans, checkOptions } from '../errors';
import { batchNormAct, batchNormAdaShiftMA, FusableAct } from '../ops/norm';
import { add } from '../ops/elementwise';
import { flatten } from '../ops/elementwise';
import { globalAvgPool, maxPool2d } from '../ops/pool';
import { full, Tensor } from '../tensor';
import { noGrad } from '../autograd';
import { activation, ActivationName, ActivationOptions, AdaShiftB, AdaShiftMA, GELU, Linear, ModuleOptions, ReLU, SiLU } from './activation';
import { BatchNorm2d, Conv2d } from './layers';
import { Module, Sequential, TensorModule } from './module';

export interface BlockOptions extends ModuleOptions {
  act: ActivationName;
  actOptions?: ActivationOptions;
  /** Use the fused BatchNorm + activation op where an activation directly follows a BN. */
  fused?: boolean;
}
const BLOCK_OPTIONS = ['device', 'act', 'actOptions', 'fused'];

/** @internal
 * BN followed by an activation module, with the residual (a block's shortcut) added between
 * them when given: act(bn(x) + residual). In training, ReLU, SiLU, GELU and AdaShift-B run as
 * one fused op (BN statistics and the AdaShift pooled context from one pass over the input; the
 * residual read in the same passes instead of a sum written and read back), and AdaShift-MA
 * reads BN's input itself (batchNormAdaShiftMA: BN's output is never written or kept for
 * backward); in eval the residual joins BN's own pass. `fused: false` runs BN, add and the
 * activation as separate ops.
 */
export function bnAct(x: Tensor, bn: BatchNorm2d, act: TensorModule, fused = true, residual: Tensor | null = null): Tensor {
  let kind: FusableAct | null = null;
  if (act instanceof ReLU) kind = 'relu';
  else if (act instanceof SiLU) kind = 'silu';
  else if (act instanceof GELU) kind = act.approximate === 'tanh' ? 'gelu-tanh' : 'gelu';
  else if (act instanceof AdaShiftB) kind = 'adashift-b';
  if (!fused) {
    const z = bn.forward(x) as Tensor;
    return act.forward(residual ? add(z, residual) : z) as Tensor;
  }
  if (act instanceof AdaShiftMA && bn.training) {
    bn.checkInput(x);
    const y = batchNormAdaShiftMA(x, bn.opParams(), act.opParams(), { training: true, momentum: bn.momentum, eps: bn.eps, residual });
    bn.numBatchesTracked.value += 1n;
    return y;
  }
  if (kind === null || !bn.training) return act.forward(bn.forward(x, residual)) as Tensor;
  bn.checkInput(x);
  const y = batchNormAct(
    x,
    bn.opParams(),
    kind,
    {
      training: true,
      momentum: bn.momentum,
      eps: bn.eps,
      residual,
      ...(kind === 'adashift-b' ? { shift: (act as AdaShiftB).opParams() } : {}),
    },
  );
  bn.numBatchesTracked.value += 1n;
  return y;
}

function projection(inC: number, outC: number, stride: number, options: ModuleOptions): Sequential {
  const dev = { device: options.device };
  return new Sequential(new Conv2d(inC, outC, 1, { ...dev, stride }), new BatchNorm2d(outC, dev));
}

/** Two 3x3 convolutions; act1 after bn1, act2 after the residual add. */
export class BasicBlock extends Module {
  static readonly expansion = 1;
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly act1: TensorModule;
  readonly conv2: Conv2d;
  readonly bn2: BatchNorm2d;
  readonly act2: TensorModule;
  readonly downsample: Sequential | null;
  private readonly fused: boolean;
  constructor(inC: number, planes: number, stride: number, options: BlockOptions) {
    super();
    options = checkOptions('BasicBlock', options, BLOCK_OPTIONS);
    const dev = { device: options.device };
    const actOptions = { rect: 'linear' as const, ...options.actOptions, device: options.device };
    this.conv1 = this.registerModule('conv1', new Conv2d(inC, planes, 3, { ...dev, stride, padding: 1 }));
    this.bn1 = this.registerModule('bn1', new BatchNorm2d(planes, dev));
    this.act1 = this.registerModule('act1', activation(options.act, planes, actOptions));
    this.conv2 = this.registerModule('conv2', new Conv2d(planes, planes, 3, { ...dev, padding: 1 }));
    this.bn2 = this.registerModule('bn2', new BatchNorm2d(planes, dev));
    this.act2 = this.registerModule('act2', activation(options.act, planes, actOptions));
    this.downsample = stride !== 1 || inC !== planes ? this.registerModule('downsample', projection(inC, planes, stride, options)) : null;
    this.fused = options.fused ?? true;
  }
  lastBn(): BatchNorm2d {
    return this.bn2;
  }
  override forward(x: Tensor): Tensor {
    const h = bnAct(this.conv1.forward(x), this.bn1, this.act1, this.fused);
    const shortcut = this.downsample ? this.downsample.forward(x) : x;
    return bnAct(this.conv2.forward(h), this.bn2, this.act2, this.fused, shortcut);
  }
}

/** 1x1 -> 3x3 (stride here, torchvision v1.5) -> 1x1 x4; act3 after the residual add. */
export class Bottleneck extends Module {
  static readonly expansion = 4;
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly act1: TensorModule;
  readonly conv2: Conv2d;
  readonly bn2: BatchNorm2d;
  readonly act2: TensorModule;
  readonly conv3: Conv2d;
  readonly bn3: BatchNorm2d;
  readonly act3: TensorModule;
  readonly downsample: Sequential | null;
  private readonly fused: boolean;
  constructor(inC: number, planes: number, stride: number, options: BlockOptions) {
    super();
    const outC = planes * Bottleneck.expansion;
    options = checkOptions('Bottleneck', options, BLOCK_OPTIONS);
    const dev = { device: options.device };
    const actOptions = { rect: 'norm' as const, ...options.actOptions, device: options.device };
    this.conv1 = this.registerModule('conv1', new Conv2d(inC, planes, 1, dev));
    this.bn1 = this.registerModule('bn1', new BatchNorm2d(planes, dev));
    this.act1 = this.registerModule('act1', activation(options.act, planes, actOptions));
    this.conv2 = this.registerModule('conv2', new Conv2d(planes, planes, 3, { ...dev, stride, padding: 1 }));
    this.bn2 = this.registerModule('bn2', new BatchNorm2d(planes, dev));
    this.act2 = this.registerModule('act2', activation(options.act, planes, actOptions));
    this.conv3 = this.registerModule('conv3', new Conv2d(planes, outC, 1, dev));
    this.bn3 = this.registerModule('bn3', new BatchNorm2d(outC, dev));
    this.act3 = this.registerModule('act3', activation(options.act, outC, actOptions));
    this.downsample = stride !== 1 || inC !== outC ? this.registerModule('downsample', projection(inC, outC, stride, options)) : null;
    this.fused = options.fused ?? true;
  }
  lastBn(): BatchNorm2d {
    return this.bn3;
  }
  override forward(x: Tensor): Tensor {
    const h1 = bnAct(this.conv1.forward(x), this.bn1, this.act1, this.fused);
    const h2 = bnAct(this.conv2.forward(h1), this.bn2, this.act2, this.fused);
    const shortcut = this.downsample ? this.downsample.forward(x) : x;
    return bnAct(this.conv3.forward(h2), this.bn3, this.act3, this.fused, shortcut);
  }
}

export type ResNetName = 'resnet20' | 'resnet32' | 'resnet44' | 'resnet56' | 'resnet110' | 'resnet18' | 'resnet34' | 'resnet50' | 'resnet101';
export const RESNETS: readonly ResNetName[] = ['resnet20', 'resnet32', 'resnet44', 'resnet56', 'resnet110', 'resnet18', 'resnet34', 'resnet50', 'resnet101'];

export interface ResNetOptions extends ModuleOptions {
  act?: ActivationName;
  actOptions?: ActivationOptions;
  numClasses?: number;
  inChannels?: number;
  /** torchvision models: 3x3 stride-1 stem and no max-pool, for 28-32 px images. */
  smallInput?: boolean;
  /** Zero the last BN weight of every block (each block starts as the identity). */
  zeroInitResidual?: boolean;
  /** Fused BN + activation in training (default true). */
  fused?: boolean;
}

const CIFAR_DEPTH: Record<string, number> = { resnet20: 3, resnet32: 5, resnet44: 7, resnet56: 9, resnet110: 18 };
const TV_LAYOUT: Record<string, { block: 'basic' | 'bottleneck'; layers: number[] }> = {
  resnet18: { block: 'basic', layers: [2, 2, 2, 2] },
  resnet34: { block: 'basic', layers: [3, 4, 6, 3] },
  resnet50: { block: 'bottleneck', layers: [3, 4, 6, 3] },
  resnet101: { block: 'bottleneck', layers: [3, 4, 23, 3] },
};

export class ResNet extends Module {
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly act1: TensorModule;
  readonly stages: Sequential[];
  readonly fc: Linear;
  readonly maxPool: boolean;
  readonly config: Required<Pick<ResNetOptions, 'act' | 'numClasses' | 'inChannels' | 'smallInput'>> & { name: ResNetName };
  private readonly fused: boolean;

  constructor(name: ResNetName, options: ResNetOptions = {}) {
    super();
    options = checkOptions('resnet', options, ['device', 'act', 'actOptions', 'numClasses', 'inChannels', 'smallInput', 'zeroInitResidual', 'fused']);
    checkBooleans('resnet', options, ['smallInput', 'zeroInitResidual', 'fused']);
    const act = options.act ?? 'relu';
    const numClasses = options.numClasses ?? (Object.hasOwn(CIFAR_DEPTH, name) ? 10 : 1000);
    const inChannels = options.inChannels ?? 3;
    check(Number.isInteger(numClasses) && numClasses >= 1, 'ERR_ARG', () => `resnet: numClasses must be a positive integer, got ${numClasses}`);
    check(Number.isInteger(inChannels) && inChannels >= 1, 'ERR_ARG', () => `resnet: inChannels must be a positive integer, got ${inChannels}`);
    const dev = { device: options.device };
    const blockOpts: BlockOptions = { ...dev, act, actOptions: options.actOptions, fused: options.fused };
    this.fused = options.fused ?? true;
    this.stages = [];
    let widths: number[], counts: number[], Block: typeof BasicBlock | typeof Bottleneck;
    // own keys only: 'toString' or '__proto__' is in every object (a checkpoint naming one built a net of no blocks)
    if (Object.hasOwn(CIFAR_DEPTH, name)) {
      widths = [16, 32, 64];
      counts = [CIFAR_DEPTH[name], CIFAR_DEPTH[name], CIFAR_DEPTH[name]];
      Block = BasicBlock;
      this.conv1 = this.registerModule('conv1', new Conv2d(inChannels, 16, 3, { ...dev, padding: 1 }));
      this.maxPool = false;
    } else if (Object.hasOwn(TV_LAYOUT, name)) {
      widths = [64, 128, 256, 512];
      counts = TV_LAYOUT[name].layers;
      Block = TV_LAYOUT[name].block === 'basic' ? BasicBlock : Bottleneck;
      this.conv1 = this.registerModule('conv1', options.smallInput ? new Conv2d(inChannels, 64, 3, { ...dev, padding: 1 }) : new Conv2d(inChannels, 64, 7, { ...dev, stride: 2, padding: 3 }));
      this.maxPool = !options.smallInput;
    } else {
      throw new AdaShiftError('ERR_ARG', `unknown model '${name}'; expected one of ${RESNETS.join(', ')}`);
    }
    const stem = widths[0];
    this.bn1 = this.registerModule('bn1', new BatchNorm2d(stem, dev));
    this.act1 = this.registerModule('act1', activation(act, stem, { rect: Block === BasicBlock ? 'linear' : 'norm', ...options.actOptions, ...dev }));
    let inC = stem;
    widths.forEach((w, i) => {
      const blocks: Module[] = [];
      for (let j = 0; j < counts[i]; j++) {
        const stride = j === 0 && i > 0 ? 2 : 1;
        const b = new Block(inC, w, stride, blockOpts);
        inC = w * Block.expansion;
        blocks.push(b);
      }
      this.stages.push(this.registerModule(`layer${i + 1}`, new Sequential(...blocks)));
    });
    this.fc = this.registerModule('fc', new Linear(inC, numClasses, dev));
    if (options.zeroInitResidual) {
      noGrad(() => {
        for (const stage of this.stages) for (const b of stage.layers) {
          const bn = (b as BasicBlock | Bottleneck).lastBn();
          bn.weight._setData(full(bn.weight.shape, 0, { device: bn.weight.device }));
        }
      });
    }
    this.config = { name, act, numClasses, inChannels, smallInput: options.smallInput ?? false };
  }

  /** Logits [N, numClasses] for images [N, inChannels, H, W]. */
  override forward(x: Tensor): Tensor {
    let h = bnAct(this.conv1.forward(x), this.bn1, this.act1, this.fused);
    if (this.maxPool) h = maxPool2d(h, 3, 2, 1);
    for (const s of this.stages) h = s.forward(h);
    return this.fc.forward(flatten(globalAvgPool(h), 1));
  }
}

/** Builds a ResNet by name (see ResNetOptions). */
export function resnet(name: ResNetName, options: ResNetOptions = {}): ResNet {
  return new ResNet(name as ResNetName, options);
}
