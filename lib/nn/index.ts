export { Module, Sequential } from './module';
export { AdaShiftB, AdaShiftMA, ACTIVATIONS, ACTIVATION_OWN_OPTIONS, activation, GELU, LayerNorm, Linear, ReLU, SiLU } from './activation';
export type { ActivationName, ActivationOptions, AdaShiftBOptions, AdaShiftMAOptions, ModuleOptions } from './activation';
export { BatchNorm2d, Conv2d } from './layers';
export type { BatchNorm2dOptions, Conv2dOptions } from './layers';
export { BasicBlock, Bottleneck, resnet, ResNet, RESNETS } from './resnet';
export type { BlockOptions, ResNetName, ResNetOptions } from './resnet';
export type { IntBuffer, TensorModule } from './module';
