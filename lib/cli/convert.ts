/**
 * `transcoders convert`: any supported transcoder format, or a `transcoders train` output folder
 * (`OUT/layer_L/`), to the native, SAELens, circuit-tracer or sparsify layout.
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import { readModelConfig, type Architecture } from '../models/config.js';
import { isWrittenAsPath, resolveModelSource } from '../io/hf-cache.js';
import { loadModel, type Model } from '../models/model.js';
import { exportCircuitTracer, exportCircuitTracerSet, exportedModelName, loadTranscoder, sparsifyHookpoint } from '../transcoders/formats/index.js';
import { saveTranscoder } from '../transcoders/formats/native.js';
import { crossLayerFolder, exportCircuitTracerCrossLayer, loadCrossLayerTranscoder, saveCrossLayerTranscoder } from '../transcoders/formats/cross-layer.js';
import { prepareOutputFolder, type PreparedExport } from '../transcoders/formats/common.js';
import { prepareSaeLensExport } from '../transcoders/formats/saelens.js';
import { prepareSparsifyExport } from '../transcoders/formats/sparsify.js';
import type { Transcoder } from '../transcoders/transcoder.js';
import { loadTranscoderSet, trainingLayerDirs } from '../transcoders/transcoder-set.js';
import { checkOutputPath, checkTranscoderArgument, choiceOption, intOption, type Command } from './command.js';

const TARGETS = ['native', 'saelens', 'circuit-tracer', 'sparsify'] as const;
type Target = (typeof TARGETS)[number];
/** Targets whose tools run the model with raw weights: processed transcoders need the raw model there. */
const RAW_MODEL_TARGETS: readonly Target[] = ['circuit-tracer', 'sparsify'];

/** The architecture of the model folder `dir`, or null when it is not a readable model folder. */
function architectureOf(dir: string | undefined): Architecture | null {
  if (!dir) return null;
  try {
    return readModelConfig(dir).arch;
  } catch {
    return null;
  }
}

function isFolder(path: string | null | undefined): path is string {
  try {
    return !!path && statSync(path).isDirectory();
  } catch {
    return false;
  }
}

export const convertCommand: Command = {
  name: 'convert',
  summary: 'Convert transcoders between formats (detected: native, paper .pt, SAELens, circuit-tracer, sparsify, or a train output folder).',
  usage: 'convert <in> <out-dir> --to native|saelens|circuit-tracer|sparsify [--layer L] [--model DIR] [--uri-prefix URI]',
  details:
    "<in> is one transcoder, or a folder that `transcoders train` wrote (OUT/layer_L/ inside), whose every layer is converted:\n" +
    '  native, saelens:  <out-dir>/layer_L/            (one transcoder: <out-dir> itself)\n' +
    '  sparsify:         <out-dir>/h.L.mlp/ (GPT-2) or <out-dir>/layers.L.mlp/ (GPT-NeoX, or model unknown)\n' +
    '                    (one transcoder: <out-dir> itself)\n' +
    '  circuit-tracer:   a set: <out-dir>/layer_L.safetensors for L = 0..n-1 and <out-dir>/config.yaml\n' +
    '                    (one transcoder: <out-dir>/layer_L.safetensors)\n' +
    "An input pre-bias (the paper's b_dec) is folded into b_enc. circuit-tracer and sparsify run the model with raw weights:\n" +
    "transcoders trained on a TransformerLens-processed model get that model's LayerNorm (ln2) weight and bias folded into\n" +
    "the encoder, read from --model DIR (default: the model folder the transcoder records, when it exists here).\n" +
    'A cross-layer transcoder (a native, circuit-tracer, Gemma Scope 2 or crosslayer-transcoder checkpoint folder, or a\n' +
    'train output with clt/) converts --to native or circuit-tracer (<out-dir>/W_enc_L, W_dec_L .safetensors and config.yaml).',
  arguments: [{ name: 'in', required: true }, { name: 'out-dir', required: true }],
  options: {
    to: { type: 'string', value: 'FORMAT', description: TARGETS.join(', '), required: true },
    layer: { type: 'string', value: 'L', description: 'layer of the transcoder when the input does not say (or to pick one layer of a set or train folder)' },
    model: { type: 'string', value: 'DIR', description: 'the Hugging Face folder of the model the transcoders were trained on (read raw, for the LayerNorm fold)' },
    'uri-prefix': { type: 'string', value: 'URI', description: "circuit-tracer sets: list files in config.yaml as URI/layer_L.safetensors (e.g. hf://user/repo) instead of local paths" },
  },
  async run(values, positionals) {
    const [inputArg, out] = positionals as [string, string];
    const input = checkTranscoderArgument(inputArg, '<in>');
    checkOutputPath(out, '<out-dir>', 'folder');
    const to = choiceOption(values.to, 'to', TARGETS)!;
    const layer = intOption(values.layer, 'layer');
    // --model may be a folder or a Hugging Face repo id in the local hub cache.
    const modelOption = values.model === undefined || (isWrittenAsPath(values.model as string) && !isFolder(values.model as string)) ? (values.model as string | undefined) : resolveModelSource(values.model as string);
    const uriPrefix = values['uri-prefix'] as string | undefined;
    const clt = crossLayerFolder(input);
    if (clt) {
      if (to !== 'native' && to !== 'circuit-tracer') throw new InvalidArgumentError(`${clt} is a cross-layer transcoder: convert it --to native or --to circuit-tracer (${to} has no cross-layer layout)`);
      if (layer !== undefined || uriPrefix !== undefined || values.model !== undefined) throw new InvalidArgumentError('--layer, --model and --uri-prefix do not apply to a cross-layer transcoder');
      const transcoder = await loadCrossLayerTranscoder(clt);
      if (to === 'native') saveCrossLayerTranscoder(transcoder, out);
      else exportCircuitTracerCrossLayer(transcoder, out);
      console.log(`wrote ${to} cross-layer transcoder (${transcoder.config.arch}, ${transcoder.config.nLayers} layers x ${transcoder.config.dSae} features) to ${out}`);
      return;
    }

    // The transcoders: one, or every layer of a training output folder.
    const layerDirs = trainingLayerDirs(input);
    const many = layerDirs.size > 0 && layer === undefined;
    if (uriPrefix !== undefined && !(to === 'circuit-tracer' && many)) throw new InvalidArgumentError('--uri-prefix applies to circuit-tracer sets only (--to circuit-tracer on a train output folder)');
    if (modelOption !== undefined && !isFolder(modelOption)) throw new InvalidArgumentError(`--model ${modelOption}: no such folder`);
    let transcoders: Transcoder[];
    if (layerDirs.size > 0 && layer !== undefined) {
      const dir = layerDirs.get(layer);
      if (!dir) throw new InvalidArgumentError(`${input} has no layer_${layer}/ (it has layers ${[...layerDirs.keys()].sort((a, b) => a - b).join(', ')})`);
      transcoders = [await loadTranscoder(dir, { layer })];
    } else if (many) {
      transcoders = await loadTranscoderSet(input);
    } else {
      transcoders = [await loadTranscoder(input, layer !== undefined ? { layer } : {})];
    }

    // The raw model, when a processed transcoder goes to a tool that runs the model raw.
    const recorded = transcoders.map((t) => t.config.modelName).find((m) => m);
    const modelDir = modelOption ?? (isFolder(recorded) ? recorded : undefined);
    let model: Model | undefined;
    if (RAW_MODEL_TARGETS.includes(to) && transcoders.some((t) => t.config.processing === 'transformerlens')) {
      if (!modelDir) {
        throw new InvalidArgumentError(
          `the transcoders were trained on a TransformerLens-processed model${recorded ? ` (${recorded}, not a folder here)` : ''}; ${to} runs the model with raw weights, ` +
            "so the model's LayerNorm weights must be folded into the encoders: pass --model DIR (the model's Hugging Face folder)",
        );
      }
      model = await loadModel(modelDir, { processing: 'none' });
    }
    try {
      writeOutputs(to, transcoders, out, many, model, modelDir, uriPrefix);
    } finally {
      model?.dispose();
    }
  },
};

/** Writes the converted transcoders (see the command's details for the layout). */
function writeOutputs(to: Target, transcoders: Transcoder[], out: string, many: boolean, model: Model | undefined, modelDir: string | undefined, uriPrefix: string | undefined): void {
  const describe = (t: Transcoder) => `${t.config.arch} layer ${t.config.layer} (${t.config.dSae} features)`;
  if (to === 'circuit-tracer') {
    if (many) {
      exportCircuitTracerSet(transcoders, out, { model, ...(uriPrefix !== undefined ? { uriPrefix } : {}) });
      console.log(`wrote a circuit-tracer set of ${transcoders.length} layers (${describe(transcoders[0]!)} ...) to ${out}: layer_0..${transcoders.length - 1}.safetensors and config.yaml`);
    } else {
      const tc = transcoders[0]!;
      const file = join(out, `layer_${Math.max(0, tc.config.layer)}.safetensors`);
      exportCircuitTracer(tc, file, { model });
      console.log(`wrote circuit-tracer ${describe(tc)} to ${file}`);
    }
    return;
  }

  // One output per transcoder, every one validated and computed before the first is written.
  // sparsify folders are named after the hookpoint, which depends on the architecture.
  const arch: Architecture | null = to === 'sparsify' && many ? (model?.config.arch ?? architectureOf(modelDir)) : null;
  const folderOf = (t: Transcoder) => {
    if (!many) return out;
    return join(out, to === 'sparsify' ? sparsifyHookpoint(t.config.layer, arch) : `layer_${t.config.layer}`);
  };
  const prepared: { tc: Transcoder; dir: string; export: PreparedExport }[] = transcoders.map((tc) => ({
    tc,
    dir: folderOf(tc),
    export:
      to === 'saelens'
        ? prepareSaeLensExport(tc, !tc.config.modelName && modelDir ? { modelName: exportedModelName(modelDir) ?? undefined } : {})
        : to === 'sparsify'
          ? prepareSparsifyExport(tc, { model })
          : {
              write(dir: string) {
                prepareOutputFolder(dir, 'convert');
                saveTranscoder(tc, dir);
              },
            },
  }));
  for (const p of prepared) {
    p.export.write(p.dir);
    console.log(`wrote ${to} ${describe(p.tc)} to ${p.dir}`);
  }
}
