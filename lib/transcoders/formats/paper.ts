/**
 * The paper's released transcoders (`final_sparse_autoencoder_gpt2-small_blocks.L.ln2.hook_normalized_24576.pt`):
 * a torch.save zip holding `{ cfg: <LanguageModelSAERunnerConfig dataclass>, state_dict: { W_enc, b_enc,
 * W_dec, b_dec, b_dec_out } }`, read with the restricted unpickler (nothing in the file is executed).
 * Its parameters are exactly ours (b_dec is the input pre-bias). They were trained on TransformerLens's
 * processed GPT-2, so the config records processing 'transformerlens'.
 */
import { FormatError } from '../../errors.js';
import { readTorchCheckpoint, type PickledTensor } from '../../io/torch-pickle.js';
import { Tensor } from '../../tensor.js';
import type { TranscoderConfig } from '../config.js';
import { Transcoder, type PlacementOptions } from '../transcoder.js';

/** Training fields of the paper's config worth keeping in our cfg.json. */
const TRAINING_FIELDS = [
  'l1_coefficient', 'lr', 'lr_scheduler_name', 'lr_warm_up_steps', 'train_batch_size', 'total_training_tokens', 'context_size',
  'dataset_path', 'b_dec_init_method', 'use_ghost_grads', 'feature_sampling_window', 'dead_feature_window', 'dead_feature_threshold',
  'feature_sampling_method', 'expansion_factor', 'n_batches_in_buffer', 'store_batch_size', 'seed',
];

function isTensor(v: unknown): v is PickledTensor {
  return typeof v === 'object' && v !== null && 'bytes' in v && 'shape' in v && 'dtype' in v;
}

function toTensor(t: PickledTensor, file: string, key: string): Tensor {
  const n = t.shape.reduce((a, b) => a * b, 1);
  const { buffer, byteOffset } = t.bytes;
  switch (t.dtype) {
    case 'float32': return Tensor.from(new Float32Array(buffer, byteOffset, n), t.shape);
    case 'float64': return Tensor.from(new Float64Array(buffer, byteOffset, n), t.shape, { dtype: 'float32' });
    case 'float16':
    case 'bfloat16': return Tensor.from(new Uint16Array(buffer, byteOffset, n), t.shape, { dtype: t.dtype });
    default: throw new FormatError(`${file}: state_dict '${key}' has dtype ${t.dtype}; expected floating point`, file);
  }
}

/** Loads a paper-format `.pt` transcoder (or SAE: without `b_dec_out`, b_dec is also the output bias). */
export async function loadPaperTranscoder(path: string, options: PlacementOptions = {}): Promise<Transcoder> {
  const root = readTorchCheckpoint(path) as { cfg?: Record<string, unknown>; state_dict?: Record<string, unknown> };
  const fail = (why: string): never => {
    throw new FormatError(`${path}: ${why}`, path);
  };
  if (typeof root !== 'object' || root === null || typeof root.cfg !== 'object' || typeof root.state_dict !== 'object') {
    fail("expected a dict with 'cfg' and 'state_dict' (the paper's save_model layout)");
  }
  const cfg = root.cfg!;
  const sd = root.state_dict!;
  const tensors: Record<string, Tensor> = {};
  for (const key of ['W_enc', 'b_enc', 'W_dec', 'b_dec']) {
    const t = sd[key];
    if (!isTensor(t)) fail(`state_dict has no tensor '${key}'`);
    tensors[key] = toTensor(t as PickledTensor, path, key);
  }
  const isTranscoder = cfg.is_transcoder === true;
  const out = sd.b_dec_out;
  if (isTranscoder && !isTensor(out)) fail("cfg.is_transcoder is true but state_dict has no 'b_dec_out'");
  tensors.b_dec_out = isTensor(out) ? toTensor(out, path, 'b_dec_out') : tensors.b_dec!;
  const [dIn, dSae] = tensors.W_enc!.shape as [number, number];
  const dOut = tensors.W_dec!.shape[1]!;
  const hookIn = typeof cfg.hook_point === 'string' ? cfg.hook_point : '';
  const layer = typeof cfg.hook_point_layer === 'number' ? cfg.hook_point_layer : -1;
  const training = Object.fromEntries(TRAINING_FIELDS.filter((k) => k in cfg && ['number', 'string', 'boolean'].includes(typeof cfg[k])).map((k) => [k, cfg[k]]));
  const config: Partial<TranscoderConfig> = {
    arch: 'relu',
    dIn,
    dOut,
    dSae,
    skip: false,
    hookIn,
    hookOut: isTranscoder && typeof cfg.out_hook_point === 'string' ? cfg.out_hook_point : hookIn,
    layer,
    modelName: typeof cfg.model_name === 'string' ? cfg.model_name : null,
    processing: 'transformerlens',
    training: { source: 'transcoder_circuits (paper)', ...training },
  };
  try {
    return await Transcoder.fromParameters(config, tensors, options);
  } catch (err) {
    throw new FormatError(`${path}: ${(err as Error).message}`, path);
  }
}
