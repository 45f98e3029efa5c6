/** Resolving --transcoders arguments: the replacement model of the commands that analyse transcoders. */
import { ReplacementModel } from '../circuits/replacement-model.js';
import { InvalidArgumentError } from '../errors.js';
import { resolveModelSource } from '../io/hf-cache.js';
import { hasLlamaLayout, readModelConfig } from '../models/config.js';
import { MODEL_DTYPES, PROCESSINGS, type Model } from '../models/model.js';
import type { Transcoder } from '../transcoders/transcoder.js';
import { choiceOption, listOption } from './command.js';

/**
 * The `--transcoders` (required), `--device` and `--processing` options of the commands that analyse
 * transcoders: the replacement model of `modelDir` with those transcoders, the model loaded with
 * `--processing`, else the processing the transcoders record, else TransformerLens processing for
 * GPT-2 and Pythia (the paper's setting) and none for the modern families (their released transcoders
 * were trained on raw models). `values.dtype` sets the compute dtype.
 */
export async function loadModelWithTranscoders(
  values: Record<string, unknown>,
  modelDir: string,
): Promise<{ replacement: ReplacementModel; model: Model; transcoders: Transcoder[]; paths: string[] }> {
  const paths = listOption(values, 'transcoders');
  if (paths.length === 0) throw new InvalidArgumentError('--transcoders PATH is required');
  const processing = choiceOption(values.processing, 'processing', PROCESSINGS);
  const dtype = choiceOption(values.dtype, 'dtype', MODEL_DTYPES);
  const arch = readModelConfig(resolveModelSource(modelDir)).arch;
  const replacement = await ReplacementModel.load(modelDir, paths, {
    device: (values.device as string | undefined) ?? 'cpu',
    ...(processing ? { processing } : {}),
    ...(dtype ? { dtype } : {}),
    fallbackProcessing: hasLlamaLayout(arch) ? 'none' : 'transformerlens',
  });
  return { replacement, model: replacement.model, transcoders: [...replacement.transcoders.values()], paths };
}
