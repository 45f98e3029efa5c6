/** Resolving --transcoders arguments: the replacement model of the commands that analyse transcoders. */
import { ReplacementModel } from '../circuits/replacement-model.js';
import { InvalidArgumentError } from '../errors.js';
import { PROCESSINGS, type Model } from '../models/model.js';
import type { Transcoder } from '../transcoders/transcoder.js';
import { choiceOption, listOption } from './command.js';

/**
 * The `--transcoders` (required), `--device` and `--processing` options of the commands that analyse
 * transcoders: the replacement model of `modelDir` with those transcoders, the model loaded with
 * `--processing`, else the processing the transcoders record, else TransformerLens processing (the
 * paper's GPT-2 setting).
 */
export async function loadModelWithTranscoders(
  values: Record<string, unknown>,
  modelDir: string,
): Promise<{ replacement: ReplacementModel; model: Model; transcoders: Transcoder[]; paths: string[] }> {
  const paths = listOption(values, 'transcoders');
  if (paths.length === 0) throw new InvalidArgumentError('--transcoders PATH is required');
  const processing = choiceOption(values.processing, 'processing', PROCESSINGS);
  const replacement = await ReplacementModel.load(modelDir, paths, {
    device: (values.device as string | undefined) ?? 'cpu',
    ...(processing ? { processing } : {}),
    fallbackProcessing: 'transformerlens',
  });
  return { replacement, model: replacement.model, transcoders: [...replacement.transcoders.values()], paths };
}
