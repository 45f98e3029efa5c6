/**
 * `transcoders graph`: the attribution graph of a prompt (circuit-tracer's method), pruned by
 * influence, written as `{out}/{slug}.json` + `{out}/graph-metadata.json` for circuit-tracer's and
 * Neuronpedia's viewers, optionally with the full unpruned adjacency as safetensors.
 */
import { basename } from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import type { ReplacementModel } from '../circuits/replacement-model.js';
import { attributionGraph, ATTRIBUTE_DEFAULTS, type AttributeOptions, type GraphTargets } from '../graphs/attribute.js';
import { lazyCrossLayerGraph } from '../graphs/lazy-cross-layer.js';
import { loadModel, PROCESSINGS, type Model } from '../models/model.js';
import { isCircuitTracerCrossLayer } from '../transcoders/formats/cross-layer.js';
import { lazyCrossLayer, type LazyCrossLayerTranscoder } from '../transcoders/lazy.js';
import { writeAdjacencyFile } from '../graphs/adjacency-file.js';
import { buildGraphJson, checkSlug, writeGraphFiles, slugOf } from '../graphs/graph-json.js';
import { graphScores, pruneGraph, PRUNE_DEFAULTS } from '../graphs/prune.js';
import { resolveToken } from './prompt-arguments.js';
import {
  applyThreads, checkInputArgument, checkInputPaths, checkOutputPath, choiceOption, DEVICE_OPTION, intOption, listOption, numberOption, THREADS_OPTION, type Command,
} from './command.js';
import { ProgressBar } from './progress.js';
import { loadModelWithTranscoders } from './transcoder-paths.js';

const GRAPH_DTYPES = ['float32', 'bfloat16'] as const;

export const graphCommand: Command = {
  name: 'graph',
  summary: 'Build the attribution graph of a prompt (circuit-tracer\'s method), prune it and write files the graph viewers open.',
  usage: 'graph <model-dir> --transcoders PATH --prompt TEXT --out DIR [options]',
  details: 'Nodes: active transcoder features, error nodes, tokens, positional embeddings (GPT-2), one bias node per layer, and the\n' +
    'targets (the top logits by default; --logit-diff A B for one logit difference). Edges: direct effects in the local replacement\n' +
    'model (attention patterns and norm scales frozen). Writes DIR/SLUG.json and updates DIR/graph-metadata.json; see docs/graphs.md.',
  arguments: [{ name: 'model-dir', required: true }, { name: 'TOKEN_B' }],
  options: {
    transcoders: { type: 'string', value: 'PATH', description: 'transcoders (a train output folder of layer_L, a circuit-tracer set, or paths)', multiple: true, required: true },
    prompt: { type: 'string', short: 'p', value: 'TEXT', description: 'the prompt (BOS prepended by the model\'s convention)', required: true },
    out: { type: 'string', short: 'o', value: 'DIR', description: 'folder for SLUG.json and graph-metadata.json', required: true },
    slug: { type: 'string', value: 'S', description: 'the graph\'s name (default: from the prompt)' },
    'max-feature-nodes': { type: 'string', value: 'N', description: 'rows for at most N features, the most influential first (default: all)' },
    'node-threshold': { type: 'string', value: 'X', description: `pruning: cumulative node influence kept (default ${PRUNE_DEFAULTS.nodeThreshold})` },
    'edge-threshold': { type: 'string', value: 'X', description: `pruning: cumulative edge score kept (default ${PRUNE_DEFAULTS.edgeThreshold})` },
    'max-logits': { type: 'string', value: 'N', description: `at most N logit targets (default ${ATTRIBUTE_DEFAULTS.maxLogits})` },
    'logit-prob': { type: 'string', value: 'P', description: `logit targets up to this cumulative probability (default ${ATTRIBUTE_DEFAULTS.logitProbability})` },
    'logit-diff': { type: 'string', value: 'A B', description: 'one target: logit of token A minus token B at the last position' },
    'batch-size': { type: 'string', value: 'N', description: `rows per backward pass (default ${ATTRIBUTE_DEFAULTS.batchSize})` },
    'row-top-k': { type: 'string', value: 'K', description: 'keep the K largest edges into each node (default: all; for long prompts)' },
    adjacency: { type: 'string', value: 'FILE', description: 'also write the unpruned adjacency and node table as safetensors' },
    scan: { type: 'string', value: 'NAME', description: 'model/transcoder id for the viewers (default: the model folder name)' },
    dtype: { type: 'string', value: 'T', description: 'model compute dtype: float32 (default) or bfloat16' },
    processing: { type: 'string', value: 'P', description: 'override the model processing (none, transformerlens)' },
    lazy: { type: 'boolean', description: 'a circuit-tracer cross-layer transcoder folder read lazily: only the prompt\'s active features (for sets too large to load)' },
    json: { type: 'boolean', description: 'print a JSON summary instead of text' },
    device: DEVICE_OPTION,
    threads: THREADS_OPTION,
  },
  async run(values, positionals) {
    applyThreads(values);
    const [dir, extra] = positionals as [string, string | undefined];
    checkInputArgument(dir, 'model-dir');
    checkInputPaths(values, ['transcoders']);
    if (values['logit-diff'] !== undefined && extra === undefined) throw new InvalidArgumentError('--logit-diff needs two tokens: --logit-diff TOKEN_A TOKEN_B');
    if (values['logit-diff'] === undefined && extra !== undefined) throw new InvalidArgumentError(`unexpected argument '${extra}'`);
    const out = values.out as string;
    checkOutputPath(out, '--out', 'folder');
    if (typeof values.adjacency === 'string') checkOutputPath(values.adjacency, '--adjacency', 'file-mkdir');
    const prompt = values.prompt as string;
    const slug = typeof values.slug === 'string' ? values.slug : slugOf(prompt);
    checkSlug(slug);
    const nodeThreshold = numberOption(values['node-threshold'], 'node-threshold') ?? PRUNE_DEFAULTS.nodeThreshold;
    const edgeThreshold = numberOption(values['edge-threshold'], 'edge-threshold') ?? PRUNE_DEFAULTS.edgeThreshold;
    for (const [flag, v] of [['--node-threshold', nodeThreshold], ['--edge-threshold', edgeThreshold]] as const) {
      if (!(v > 0 && v <= 1)) throw new InvalidArgumentError(`${flag} must be in (0, 1], got ${v}`);
    }
    const logitProbability = numberOption(values['logit-prob'], 'logit-prob');
    const dtype = choiceOption(values.dtype, 'dtype', GRAPH_DTYPES) ?? 'float32';
    const maxFeatureNodes = intOption(values['max-feature-nodes'], 'max-feature-nodes', 0);
    const maxLogits = intOption(values['max-logits'], 'max-logits', 1);
    const batchSize = intOption(values['batch-size'], 'batch-size', 1);
    const rowTopK = intOption(values['row-top-k'], 'row-top-k', 1);

    let model: Model;
    let paths: string[];
    let replacement: ReplacementModel | null = null;
    let lazy: LazyCrossLayerTranscoder | null = null;
    if (values.lazy === true) {
      paths = listOption(values, 'transcoders');
      if (paths.length !== 1 || !isCircuitTracerCrossLayer(paths[0]!)) throw new InvalidArgumentError(`--lazy reads one circuit-tracer cross-layer transcoder folder (W_enc_L / W_dec_L .safetensors), got --transcoders ${paths.join(' ')}`);
      lazy = lazyCrossLayer(paths[0]!);
      // circuit-tracer runs the model raw.
      const processing = choiceOption(values.processing, 'processing', PROCESSINGS) ?? 'none';
      model = await loadModel(dir, { processing, dtype, device: (values.device as string | undefined) ?? 'cpu' });
    } else {
      ({ replacement, model, paths } = await loadModelWithTranscoders({ ...values, dtype }, dir));
    }
    const tokens = model.tokenize(prompt);
    if (tokens.length > model.config.nCtx) throw new InvalidArgumentError(`--prompt is ${tokens.length} tokens, longer than the model's context of ${model.config.nCtx}`);
    let targets: GraphTargets = { kind: 'logits' };
    if (typeof values['logit-diff'] === 'string') {
      targets = { kind: 'logit-difference', token: resolveToken(model, values['logit-diff'], '--logit-diff'), minus: resolveToken(model, extra!, '--logit-diff') };
    }
    const bar = values.json ? null : new ProgressBar('graph rows', 1, '');
    let barFor: ProgressBar | null = null;
    const options: AttributeOptions = {
      targets,
      ...(maxFeatureNodes !== undefined && { maxFeatureNodes }),
      ...(maxLogits !== undefined && { maxLogits }),
      ...(logitProbability !== undefined && { logitProbability }),
      ...(batchSize !== undefined && { batchSize }),
      ...(rowTopK !== undefined && { rowTopK }),
      scan: typeof values.scan === 'string' ? values.scan : basename(dir.replace(/[\\/]+$/, '')),
      transcoderList: paths,
      onProgress: (done, planned) => {
        if (!bar) return;
        barFor ??= new ProgressBar('graph rows', planned, ' rows');
        barFor.update(done);
      },
    };
    const graph = lazy ? await lazyCrossLayerGraph(model, lazy, tokens, { ...options, device: model.device }) : await attributionGraph(replacement!, tokens, options);
    const pruned = pruneGraph(graph, { nodeThreshold, edgeThreshold });
    const scores = graphScores(graph);
    const json = buildGraphJson(graph, pruned, { slug });
    const files = await writeGraphFiles(out, slug, json);
    if (typeof values.adjacency === 'string') writeAdjacencyFile(values.adjacency, graph);
    const kept = pruned.nodeMask.reduce((a, b) => a + b, 0);
    const summary = {
      slug, graph: files.graphFile, metadata: files.metadataFile, tokens: tokens.length,
      activeFeatures: graph.activeFeatures, visitedFeatures: graph.visitedFeatures, nodes: graph.nodes.length, edges: graph.adjacency.form === 'sparse' ? graph.adjacency.columns.length : 0,
      keptNodes: kept, keptLinks: json.links.length, replacementScore: scores.replacementScore, completenessScore: scores.completenessScore,
    };
    if (values.json) console.log(JSON.stringify(summary, null, 2));
    else {
      console.log(`${files.graphFile}: ${kept} of ${graph.nodes.length} nodes and ${json.links.length} links kept (${graph.visitedFeatures} of ${graph.activeFeatures} active features visited)`);
      console.log(`replacement score ${scores.replacementScore.toFixed(3)}, completeness score ${scores.completenessScore.toFixed(3)}`);
      console.log(`view: circuit-tracer start-server --graph_file_dir ${out}`);
    }
  },
};
