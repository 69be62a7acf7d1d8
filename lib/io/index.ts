export { isIntTensor, loadSafetensors, readSafetensors, saveSafetensors } from './safetensors';
export type { IntTensor, SafetensorsEntry, SafetensorsFile } from './safetensors';
