export { Module, Sequential } from './module';
export { AdaShiftB, AdaShiftMA, ACTIVATIONS, activation, GELU, LayerNorm, Linear, ReLU, SiLU } from './activation';
export type { ActivationName, ActivationOptions, AdaShiftBOptions, AdaShiftMAOptions, ModuleOptions } from './activation';
