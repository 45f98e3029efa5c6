/** `transcoders circuit`: greedy path search from a feature or logit root, paths printed, graph exported. */
import { basename } from 'node:path';
import { graphJson, writeGraph } from '../circuits/export.js';
import { findCircuit, type CircuitRoot } from '../circuits/find-circuit.js';
import { formatPaths } from '../circuits/render.js';
import { SEARCH_DEFAULTS } from '../circuits/search.js';
import { InvalidArgumentError } from '../errors.js';
import { DEVICE_OPTION, applyThreads, checkModelArgument, checkOutputPaths, checkTranscoderArguments, intOption, listOption, THREADS_OPTION, type Command } from './command.js';
import { loadModelWithTranscoders } from './transcoder-paths.js';
import { circuitToAttributionGraph } from '../graphs/from-circuit.js';
import { buildGraphJson, checkSlug, writeGraphFiles, slugOf } from '../graphs/graph-json.js';
import { resolveToken } from './prompt-arguments.js';

/** Parses `L:F[@POS]` (POS may be negative: -1 is the last position). */
export function parseFeature(text: string, length: number): { layer: number; feature: number; position: number } {
  const m = /^(\d+):(\d+)(?:@(-?\d+))?$/.exec(text);
  if (!m) throw new InvalidArgumentError(`--feature must look like L:F or L:F@POS (e.g. 8:89@-1), got '${text}'`);
  let position = m[3] === undefined ? length - 1 : Number(m[3]);
  if (position < 0) position += length;
  if (position < 0 || position >= length) throw new InvalidArgumentError(`--feature position ${m[3]} is outside the prompt (${length} tokens)`);
  return { layer: Number(m[1]), feature: Number(m[2]), position };
}

export const circuitCommand: Command = {
  name: 'circuit',
  summary: 'Find a circuit by the paper\'s greedy path search from a transcoder feature or a logit (difference); export the graph.',
  usage: 'circuit <model-dir> --transcoders DIR --prompt TEXT (--feature L:F[@POS] | --logit-diff TOKEN_A TOKEN_B | --logit TOKEN) [options]',
  details: 'Tokens are text that tokenises to one token (e.g. " 40") or ids written #N. The model is loaded with the processing\n' +
    'the transcoders record (default transformerlens); the decompositions are exact on raw and processed models alike.\n' +
    'Paths print as `node token: attribution <- ...`; see docs/circuits.md.',
  arguments: [{ name: 'model-dir', required: true }, { name: 'TOKEN_B' }],
  oneOf: [['feature', 'logit-diff', 'logit']],
  options: {
    transcoders: { type: 'string', value: 'PATH', description: 'transcoders (a train output folder of layer_L, or paths)', multiple: true, required: true },
    prompt: { type: 'string', short: 'p', value: 'TEXT', description: 'the prompt (BOS prepended by the model\'s convention)', required: true },
    feature: { type: 'string', value: 'L:F[@POS]', description: 'root: transcoder feature F of layer L at position POS (default last)' },
    'logit-diff': { type: 'string', value: 'A B', description: 'root: logit of token A minus token B at the last position' },
    logit: { type: 'string', value: 'TOKEN', description: 'root: logit of a token at the last position' },
    iters: { type: 'string', value: 'N', description: `search iterations (default ${SEARCH_DEFAULTS.iters})` },
    branches: { type: 'string', value: 'N', description: `children per node and beam width (default ${SEARCH_DEFAULTS.branches})` },
    cap: { type: 'boolean', description: 'zero-ablation mode: cap contributions at the path\'s feature activation (no graph)' },
    'keep-bos': { type: 'boolean', description: 'include attention from the first position' },
    out: { type: 'string', short: 'o', value: 'FILE', description: 'write the graph as JSON' },
    dot: { type: 'string', value: 'FILE', description: 'write the graph as Graphviz DOT' },
    html: { type: 'string', value: 'FILE', description: 'write a self-contained HTML/SVG view of the graph' },
    json: { type: 'boolean', description: 'print the graph JSON instead of text' },
    viewer: { type: 'string', value: 'DIR', description: 'also write the circuit for circuit-tracer\'s and Neuronpedia\'s viewers (DIR/SLUG.json, as `transcoders graph`)' },
    slug: { type: 'string', value: 'S', description: 'the viewer graph\'s name (default: from the prompt)' },
    processing: { type: 'string', value: 'P', description: 'override the model processing (none, transformerlens)' },
    device: DEVICE_OPTION,
    threads: THREADS_OPTION,
  },
  async run(values, positionals) {
    applyThreads(values);
    const [dir, extra] = positionals as [string, string | undefined];
    const modelDir = checkModelArgument(dir, 'model-dir')!;
    checkTranscoderArguments(values, 'transcoders');
    if (values['logit-diff'] !== undefined && extra === undefined) throw new InvalidArgumentError('--logit-diff needs two tokens: --logit-diff TOKEN_A TOKEN_B');
    if (values['logit-diff'] === undefined && extra !== undefined) throw new InvalidArgumentError(`unexpected argument '${extra}'`);
    const prompt = values.prompt as string;
    const search = {
      iters: intOption(values.iters, 'iters', 1) ?? SEARCH_DEFAULTS.iters,
      branches: intOption(values.branches, 'branches', 1) ?? SEARCH_DEFAULTS.branches,
      ignoreBos: values['keep-bos'] !== true,
      cap: values.cap === true,
    };
    const wantGraph = values.out !== undefined || values.dot !== undefined || values.html !== undefined || values.json === true || values.viewer !== undefined;
    if (wantGraph && search.cap) throw new InvalidArgumentError('graphs need raw attributions: drop --cap to write --out/--dot/--html/--json');
    // Every output is checked before the model loads.
    checkOutputPaths(values, { out: 'file', dot: 'file', html: 'file', viewer: 'folder' });
    const slug = typeof values.slug === 'string' ? values.slug : slugOf(prompt);
    if (values.viewer !== undefined) checkSlug(slug);
    if (values.viewer !== undefined && typeof values.feature === 'string') throw new InvalidArgumentError('--viewer needs a logit target (--logit or --logit-diff): the viewers\' graphs end in logits');
    const { replacement, model } = await loadModelWithTranscoders(values, modelDir);
    const tokens = model.tokenize(prompt);
    let root: CircuitRoot;
    if (typeof values.feature === 'string') root = { kind: 'feature', ...parseFeature(values.feature, tokens.length) };
    else if (typeof values.logit === 'string') root = { kind: 'logit', token: resolveToken(model, values.logit, '--logit') };
    else root = { kind: 'logit', token: resolveToken(model, values['logit-diff'] as string, '--logit-diff'), minus: resolveToken(model, extra!, '--logit-diff') };
    const circuit = await findCircuit({ replacement, prompt }, root, { ...search, graph: wantGraph });
    const { graph } = circuit;
    if (values.json) console.log(graphJson(graph!).trimEnd());
    else console.log(formatPaths(circuit.attribution, circuit.levels));
    if (graph) writeGraph(graph, { ...(typeof values.out === 'string' ? { json: values.out } : {}), ...(typeof values.dot === 'string' ? { dot: values.dot } : {}), ...(typeof values.html === 'string' ? { html: values.html } : {}) });
    if (graph && !values.json) console.error(`graph: ${graph.nodes.length} nodes, ${graph.edges.length} edges`);
    if (graph && typeof values.viewer === 'string') {
      const { graph: asGraph, kept } = circuitToAttributionGraph(graph, model.config.nLayers, { scan: basename(dir.replace(/[\\/]+$/, '')), transcoderList: listOption(values, 'transcoders') });
      const files = await writeGraphFiles(values.viewer, slug, buildGraphJson(asGraph, kept, { slug }));
      if (!values.json) console.error(`viewer graph: ${files.graphFile}`);
    }
  },
};
