/**
 * transcoders: train transcoders on language models and find interpretable feature circuits.
 * Path through the library: prompt -> tokens (tokenizer/) -> forward (models/) -> transcoder ->
 * attribution -> graph -> export.
 */
export { TranscodersError, InvalidArgumentError, FormatError, TorchError, NativeLoadError } from './errors.js';
export { Tensor, DTYPES, type DType, type TensorData, type TensorSource, type FromOptions } from './tensor.js';
export { setNumThreads, getNumThreads, workerNumThreads, torchInfo, type TorchInfo } from './runtime.js';
export {
  readSafetensorsHeader,
  readSafetensors,
  loadSafetensorsTensors,
  writeSafetensors,
  type SafetensorsHeader,
  type SafetensorsEntry,
  type RawTensor,
} from './io/safetensors.js';
export { Tokenizer, type TokenizerOptions, type EncodeOptions } from './tokenizer/tokenizer.js';
export { readModelConfig, parseModelConfig, parameterCount, type ModelConfig, type Architecture, type Activation } from './models/config.js';
export {
  loadModel,
  Model,
  PROCESSINGS,
  MODEL_DTYPES,
  type LoadModelOptions,
  type Processing,
  type ModelDType,
  type MlpReplacement,
  type RunOptions,
  type RunOutput,
  type TokensInput,
} from './models/model.js';
export { selectHooks } from './models/hooks.js';
