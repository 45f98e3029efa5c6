/** Writing a model back as a Hugging Face folder (after training it with Model.train). */
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { writeSafetensors } from '../io/safetensors.js';
import type { Model } from './model.js';

/**
 * Writes `model.safetensors` (atomically, in the weights' dtype) and, when saving elsewhere, copies
 * `config.json`, `tokenizer.json` and `tokenizer_config.json` from the model's folder.
 */
export function saveModel(model: Model, dir: string): void {
  const out = resolve(dir);
  mkdirSync(out, { recursive: true });
  writeSafetensors(join(out, 'model.safetensors'), model.huggingFaceWeights(), { format: 'pt' });
  if (out === model.dir) return;
  for (const file of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) {
    if (existsSync(join(model.dir, file))) copyFileSync(join(model.dir, file), join(out, file));
  }
}
