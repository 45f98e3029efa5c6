/** `transcoders convert`: any supported transcoder format to the native, SAELens, circuit-tracer or sparsify layout. */
import { join } from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import { exportCircuitTracer, exportSaeLens, exportSparsify, loadTranscoder } from '../transcoders/formats/index.js';
import { saveTranscoder } from '../transcoders/formats/native.js';
import { choiceOption, intOption, type Command } from './command.js';

const TARGETS = ['native', 'saelens', 'circuit-tracer', 'sparsify'] as const;

export const convertCommand: Command = {
  name: 'convert',
  summary: 'Convert a transcoder between formats (detected: native, paper .pt, SAELens, circuit-tracer, sparsify).',
  usage: 'convert <in> <out-dir> --to native|saelens|circuit-tracer|sparsify [--layer L]',
  details: 'An input pre-bias (the paper\'s b_dec) is folded into b_enc for formats that have none. circuit-tracer output is\n' +
    'OUT/layer_L.safetensors.',
  options: {
    to: { type: 'string', value: 'FORMAT', description: TARGETS.join(', ') },
    layer: { type: 'string', value: 'L', description: 'layer of the transcoder when the input does not say (or to pick one of a set)' },
  },
  async run(values, positionals) {
    const [input, out] = positionals;
    if (!input || !out) throw new InvalidArgumentError('convert needs an input and an output: transcoders convert <in> <out-dir> --to FORMAT');
    const to = choiceOption(values.to, 'to', TARGETS);
    if (!to) throw new InvalidArgumentError(`--to FORMAT is required (${TARGETS.join(', ')})`);
    const layer = intOption(values.layer, 'layer');
    const tc = await loadTranscoder(input, layer !== undefined ? { layer } : {});
    if (to === 'native') saveTranscoder(tc, out);
    else if (to === 'saelens') exportSaeLens(tc, out);
    else if (to === 'sparsify') exportSparsify(tc, out);
    else exportCircuitTracer(tc, join(out, `layer_${Math.max(0, tc.config.layer)}.safetensors`));
    console.log(`wrote ${to} ${tc.config.arch} transcoder (layer ${tc.config.layer}, ${tc.config.dSae} features) to ${out}`);
  },
};
