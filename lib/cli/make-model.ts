/** `transcoders make-model`: writes a random-weight model folder in exact Hugging Face layout. */
import { InvalidArgumentError } from '../errors.js';
import { ARCHITECTURES, hasLlamaLayout } from '../models/config.js';
import { createRandomModel, PRESETS, type RandomModelSpec } from '../models/random.js';
import { checkOutputPath, choiceOption, intOption, numberOption, rejectOptions, type Command } from './command.js';

export const makeModelCommand: Command = {
  name: 'make-model',
  summary: 'Create a random-weight model folder in exact Hugging Face layout (config.json, safetensors, tokenizer.json) for tests and benchmarks.',
  usage: `make-model <out-dir> [--preset NAME] [--arch ${ARCHITECTURES.join('|')}] [--layers N] [--d-model N] [--heads N] ...`,
  details: `Presets: ${Object.keys(PRESETS).join(', ')}. Flags override the preset's fields. Weights come from a seeded PRNG: the same flags give the same files.`,
  arguments: [{ name: 'out-dir', required: true }],
  options: {
    preset: { type: 'string', value: 'NAME', description: 'start from a named size (default tiny-gpt2)' },
    arch: { type: 'string', value: 'ARCH', description: `${ARCHITECTURES.join(', ')} (another family than the preset's drops its family fields)` },
    layers: { type: 'string', value: 'N', description: 'number of blocks' },
    'd-model': { type: 'string', value: 'N', description: 'residual width' },
    heads: { type: 'string', value: 'N', description: 'attention heads' },
    'kv-heads': { type: 'string', value: 'N', description: 'Llama/Qwen/Gemma families: key/value heads (grouped-query attention)' },
    'head-dim': { type: 'string', value: 'N', description: 'Llama/Qwen/Gemma families: head size (default d-model / heads)' },
    'd-mlp': { type: 'string', value: 'N', description: 'MLP width (default 4 x d-model)' },
    vocab: { type: 'string', value: 'N', description: 'vocabulary size (>= 258)' },
    ctx: { type: 'string', value: 'N', description: 'context length' },
    'parallel-residual': { type: 'string', value: 'true|false', description: 'GPT-NeoX use_parallel_residual (default true)' },
    'rotary-pct': { type: 'string', value: 'X', description: 'GPT-NeoX rotary fraction of the head dimension (default 0.25)' },
    activation: { type: 'string', value: 'NAME', description: 'gelu_new, gelu, relu, ...' },
    dtype: { type: 'string', value: 'F32|F16|BF16', description: 'weight dtype in the file (default F32)' },
    shards: { type: 'string', value: 'N', description: 'split into N safetensors shards with an index (default 1)' },
    prefixed: { type: 'boolean', description: 'GPT-2: write keys with the "transformer." prefix' },
    std: { type: 'string', value: 'X', description: 'standard deviation of weight entries (default 0.02)' },
    seed: { type: 'string', value: 'N', description: 'PRNG seed (default 0)' },
  },
  async run(values, positionals) {
    const dir = positionals[0]!;
    const preset = PRESETS[choiceOption(values.preset, 'preset', Object.keys(PRESETS)) ?? 'tiny-gpt2']!;
    const parallel = values['parallel-residual'];
    if (parallel !== undefined && parallel !== 'true' && parallel !== 'false') throw new InvalidArgumentError(`--parallel-residual must be true or false, got '${parallel}'`);
    const arch = values.arch !== undefined ? choiceOption(values.arch, 'arch', ARCHITECTURES)! : preset.arch;
    // Another architecture than the preset's: its family-specific fields do not carry over.
    const { nLayers, dModel, nHeads, dMlp, vocabSize, nCtx } = preset;
    const base: RandomModelSpec = arch === preset.arch ? preset : { arch, nLayers, dModel, nHeads, vocabSize, nCtx, ...(dMlp !== undefined && { dMlp }) };
    const spec: RandomModelSpec = {
      ...base,
      ...(values.layers !== undefined && { nLayers: intOption(values.layers, 'layers', 1)! }),
      ...(values['d-model'] !== undefined && { dModel: intOption(values['d-model'], 'd-model', 1)! }),
      ...(values.heads !== undefined && { nHeads: intOption(values.heads, 'heads', 1)! }),
      ...(values['kv-heads'] !== undefined && { nKvHeads: intOption(values['kv-heads'], 'kv-heads', 1)! }),
      ...(values['head-dim'] !== undefined && { dHead: intOption(values['head-dim'], 'head-dim', 1)! }),
      ...(values['d-mlp'] !== undefined && { dMlp: intOption(values['d-mlp'], 'd-mlp', 1)! }),
      ...(values.vocab !== undefined && { vocabSize: intOption(values.vocab, 'vocab', 258)! }),
      ...(values.ctx !== undefined && { nCtx: intOption(values.ctx, 'ctx', 1)! }),
      ...(parallel !== undefined && { parallelResidual: parallel === 'true' }),
      ...(values['rotary-pct'] !== undefined && { rotaryPct: numberOption(values['rotary-pct'], 'rotary-pct')! }),
      ...(values.activation !== undefined && { activation: values.activation as string }),
      ...(values.dtype !== undefined && { dtype: choiceOption(values.dtype, 'dtype', ['F32', 'F16', 'BF16'] as const)! }),
      ...(values.shards !== undefined && { shards: intOption(values.shards, 'shards', 1)! }),
      ...(values.prefixed !== undefined && { prefixed: true }),
      ...(values.std !== undefined && { std: numberOption(values.std, 'std')! }),
      ...(values.seed !== undefined && { seed: intOption(values.seed, 'seed', 0)! }),
    };
    if (spec.arch !== 'gpt_neox') rejectOptions(values, ['parallel-residual', 'rotary-pct'], `to ${spec.arch} models (they are GPT-NeoX options)`);
    if (spec.arch !== 'gpt2') rejectOptions(values, ['prefixed'], `to ${spec.arch} models (it is a GPT-2 option)`);
    if (!hasLlamaLayout(spec.arch)) rejectOptions(values, ['kv-heads', 'head-dim'], `to ${spec.arch} models (they are options of the Llama, Qwen and Gemma families)`);
    checkOutputPath(dir, '<out-dir>', 'folder');
    createRandomModel(dir, spec);
    console.log(`wrote ${dir} (${spec.arch}, ${spec.nLayers} layers, d_model ${spec.dModel}, vocab ${spec.vocabSize})`);
  },
};
