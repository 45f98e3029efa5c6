/**
 * The demo's graphs in our viewer: the attribution graph of the prompt (circuit-tracer's method, the
 * same logit difference as the circuit's root) and the paper-method logit circuit, written as graph
 * files (`out/graphs/`, which `transcoders serve --graphs` serves) and as an offline viewer folder
 * (`out/viewer/`) with the feature cards of their feature nodes, computed over the demo's corpus.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { CircuitGraph } from '../circuits/graph.js';
import type { ReplacementModel } from '../circuits/replacement-model.js';
import { writeTokenFile } from '../data/token-file.js';
import { collectFeatureStats, writeFeatureCards } from '../features/dashboards.js';
import { FeatureFiles } from '../features/feature-files.js';
import { attributionGraph } from '../graphs/attribute.js';
import { circuitToAttributionGraph } from '../graphs/from-circuit.js';
import { buildGraphJson, writeGraphFiles, type GraphJson } from '../graphs/graph-json.js';
import { pruneGraph } from '../graphs/prune.js';
import { cardsOfGraphs, writeViewerFolder } from '../graphs/viewer-folder.js';

export const DEMO_SCAN = 'greater-than';
export const ATTRIBUTION_SLUG = 'greater-than-attribution';
export const CIRCUIT_SLUG = 'greater-than-circuit';

export interface DemoViewer {
  /** The viewer's index.html, relative to the demo's folder. */
  index: string;
  graphs: { slug: string; title: string; nodes: number; links: number }[];
  /** Feature cards embedded. */
  cards: number;
}

export interface DemoViewerInput {
  out: string;
  tokens: number[];
  /** The logit difference both graphs explain: token minus token, at the last position. */
  valid: number;
  invalid: number;
  logitCircuit: CircuitGraph;
  /** Token rows the feature cards are computed over. */
  corpus: readonly (readonly number[])[];
  tokenizerFile: string;
}

export async function writeDemoViewer(replacement: ReplacementModel, input: DemoViewerInput): Promise<DemoViewer> {
  const transcoderList = replacement.layers.map((l) => `${DEMO_SCAN}/${l}`);
  const graph = await attributionGraph(replacement, input.tokens, { targets: { kind: 'logit-difference', token: input.valid, minus: input.invalid }, scan: DEMO_SCAN, transcoderList });
  const attribution = buildGraphJson(graph, pruneGraph(graph), {
    slug: ATTRIBUTION_SLUG, description: 'Attribution graph of the end-year preference (circuit-tracer\'s method), pruned by influence',
  });
  const { graph: asGraph, kept } = circuitToAttributionGraph(input.logitCircuit, replacement.model.config.nLayers, { scan: DEMO_SCAN, transcoderList });
  const circuit = buildGraphJson(asGraph, kept, { slug: CIRCUIT_SLUG, description: 'The paper\'s greedy path search from the same logit difference' });
  const graphs: GraphJson[] = [attribution, circuit];
  for (const g of graphs) await writeGraphFiles(join(input.out, 'graphs'), g.metadata.slug, g);

  // Cards of every feature over the corpus (3 x 1024 features: seconds), embedded for the graphs' nodes.
  const work = join(input.out, '.viewer-work');
  mkdirSync(work, { recursive: true });
  try {
    const tokenFile = join(work, 'corpus.safetensors');
    const context = input.corpus[0]!.length;
    await writeTokenFile(tokenFile, input.corpus.map((r) => Int32Array.from(r)), { contextSize: context, tokenizer: input.tokenizerFile, bos: 'paper', sources: ['lib/demo/tasks.ts'], documents: input.corpus.length });
    const featuresDir = join(input.out, 'features');
    rmSync(featuresDir, { recursive: true, force: true });
    await writeFeatureCards(replacement, await collectFeatureStats(replacement, tokenFile, { examples: 5, quantiles: 3 }), featuresDir, { scan: DEMO_SCAN });
    const cards = cardsOfGraphs(graphs, new FeatureFiles(featuresDir));
    writeViewerFolder(join(input.out, 'viewer'), graphs, { features: cards });
    return {
      index: 'viewer/index.html',
      graphs: [
        { slug: ATTRIBUTION_SLUG, title: 'Attribution graph', nodes: attribution.nodes.length, links: attribution.links.length },
        { slug: CIRCUIT_SLUG, title: 'Logit circuit (paper method)', nodes: circuit.nodes.length, links: circuit.links.length },
      ],
      cards: cards.length,
    };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
