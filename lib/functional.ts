// Stateless, differentiable functions (PyTorch's torch.nn.functional).
export { relu, gelu, silu } from './ops/activation';
export type { GeluOptions } from './ops/activation';
export { adashift, adashiftB, adashiftGate, adashiftMA, regionPool } from './ops/adashift';
export type { AdaShiftBParams, AdaShiftMAParams } from './ops/adashift';
export { layerNorm, linear, matmul, softmax } from './ops/dense';
export { add, addScalar, div, flatten, mean, mul, permute, reshape, scale, sub, sum, transpose } from './ops/elementwise';
export { batchNorm2d, batchNormAct, batchNormAdaShiftMA } from './ops/norm';
export type { BatchNormActName, BatchNormActOptions, BatchNormOptions, BatchNormParams } from './ops/norm';
export { avgPool2d, globalAvgPool, maxPool2d } from './ops/pool';
export { accuracy, countCorrect, crossEntropy, crossEntropyWithCorrect } from './ops/loss';
export type { CrossEntropyOptions, Labels } from './ops/loss';
export { conv2d } from './ops/conv';
export type { Conv2dOptions } from './ops/conv';
