/** `transcoders circuit`: greedy path search from a feature or logit root, paths printed, graph exported. */
import { writeFileAtomic } from '../io/atomic.js';
import { Attribution, type AttributionNode } from '../circuits/attribution.js';
import { pathsToGraph } from '../circuits/graph.js';
import { formatPaths, toDot, toHtml } from '../circuits/render.js';
import { greedyPaths } from '../circuits/search.js';
import { InvalidArgumentError } from '../errors.js';
import type { Model } from '../models/model.js';
import { DEVICE_OPTION, applyThreads, intOption, THREADS_OPTION, type Command } from './command.js';
import { loadModelWithTranscoders } from './transcoder-paths.js';

/** A token given as text (one token without BOS) or as `#id`. */
export function resolveToken(model: Model, text: string, flag: string): number {
  if (/^#\d+$/.test(text)) return Number(text.slice(1));
  const ids = model.tokenize(text, { prependBos: false });
  if (ids.length !== 1) throw new InvalidArgumentError(`${flag} '${text}' is ${ids.length} tokens (${ids.join(', ')}); give one token, or an id as #N`);
  return ids[0]!;
}

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
  details: 'Tokens are text that tokenises to one token (e.g. " 40") or ids written #N. The model is loaded with TransformerLens\n' +
    'processing, which the decompositions need. Paths print as `node token: attribution <- ...`; see docs/circuits.md.',
  options: {
    transcoders: { type: 'string', value: 'PATH', description: 'transcoders (a train output folder of layer_L, or paths)', multiple: true },
    prompt: { type: 'string', short: 'p', value: 'TEXT', description: 'the prompt (BOS prepended by the model\'s convention)' },
    feature: { type: 'string', value: 'L:F[@POS]', description: 'root: transcoder feature F of layer L at position POS (default last)' },
    'logit-diff': { type: 'string', value: 'A B', description: 'root: logit of token A minus token B at the last position' },
    logit: { type: 'string', value: 'TOKEN', description: 'root: logit of a token at the last position' },
    iters: { type: 'string', value: 'N', description: 'search iterations (default 3)' },
    branches: { type: 'string', value: 'N', description: 'children per node and beam width (default 15)' },
    cap: { type: 'boolean', description: 'zero-ablation mode: cap contributions at the path\'s feature activation (no graph)' },
    'keep-bos': { type: 'boolean', description: 'include attention from the first position' },
    out: { type: 'string', short: 'o', value: 'FILE', description: 'write the graph as JSON' },
    dot: { type: 'string', value: 'FILE', description: 'write the graph as Graphviz DOT' },
    html: { type: 'string', value: 'FILE', description: 'write a self-contained HTML/SVG view of the graph' },
    json: { type: 'boolean', description: 'print the graph JSON instead of text' },
    device: DEVICE_OPTION,
    threads: THREADS_OPTION,
  },
  async run(values, positionals) {
    applyThreads(values);
    const [dir, extra] = positionals;
    if (!dir) throw new InvalidArgumentError('circuit needs the model folder: transcoders circuit <model-dir> --transcoders DIR --prompt TEXT ...');
    const roots = ['feature', 'logit-diff', 'logit'].filter((k) => values[k] !== undefined);
    if (roots.length !== 1) throw new InvalidArgumentError('give exactly one root: --feature L:F[@POS], --logit-diff TOKEN_A TOKEN_B or --logit TOKEN');
    if (values['logit-diff'] !== undefined && extra === undefined) throw new InvalidArgumentError('--logit-diff needs two tokens: --logit-diff TOKEN_A TOKEN_B');
    if (values['logit-diff'] === undefined && extra !== undefined) throw new InvalidArgumentError(`unexpected argument '${extra}'`);
    if (typeof values.prompt !== 'string') throw new InvalidArgumentError('--prompt TEXT is required');
    // Attribution is exact only on TransformerLens-processed weights.
    const { model, transcoders } = await loadModelWithTranscoders(values, dir, { processing: 'transformerlens' });
    const tokens = model.tokenize(values.prompt);
    const attribution = await Attribution.create(model, transcoders, tokens);
    const last = tokens.length - 1;
    let root: AttributionNode;
    if (typeof values.feature === 'string') {
      const f = parseFeature(values.feature, tokens.length);
      root = attribution.featureRoot(f.layer, f.feature, f.position);
    } else if (typeof values.logit === 'string') {
      root = attribution.logitRoot(last, resolveToken(model, values.logit, '--logit'));
    } else {
      root = attribution.logitRoot(last, resolveToken(model, values['logit-diff'] as string, '--logit-diff'), resolveToken(model, extra!, '--logit-diff'));
    }
    const search = {
      iters: intOption(values.iters, 'iters', 1) ?? 3,
      branches: intOption(values.branches, 'branches', 1) ?? 15,
      ignoreBos: values['keep-bos'] !== true,
      cap: values.cap === true,
    };
    const levels = await greedyPaths(attribution, root, search);
    const wantGraph = values.out !== undefined || values.dot !== undefined || values.html !== undefined || values.json === true;
    if (wantGraph && search.cap) throw new InvalidArgumentError('graphs need raw attributions: drop --cap to write --out/--dot/--html/--json');
    const graph = wantGraph ? pathsToGraph(attribution, levels, { prompt: values.prompt, search }) : null;
    if (values.json) console.log(JSON.stringify(graph, null, 2));
    else console.log(formatPaths(attribution, levels));
    if (graph && typeof values.out === 'string') writeFileAtomic(values.out, [JSON.stringify(graph, null, 2) + '\n']);
    if (graph && typeof values.dot === 'string') writeFileAtomic(values.dot, [toDot(graph)]);
    if (graph && typeof values.html === 'string') writeFileAtomic(values.html, [toHtml(graph, `Circuit of ${graph.metadata.root}`)]);
    if (graph && !values.json) console.error(`graph: ${graph.nodes.length} nodes, ${graph.edges.length} edges`);
  },
};
