export { isIntTensor, loadSafetensors, readSafetensors, saveSafetensors, writeAtomic } from './safetensors';
export type { IntTensor, SafetensorsEntry, SafetensorsFile } from './safetensors';
