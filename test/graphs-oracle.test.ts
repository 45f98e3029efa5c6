/**
 * circuit-tracer's oracle for attribution graphs, against an independent implementation: for sampled
 * sources of every kind (features, errors, tokens, positional embeddings, bias nodes), removing the
 * source's vector in the frozen local replacement model moves every target (feature pre-activations,
 * demeaned logits) by exactly the source's column of our adjacency. The frozen model is computed by
 * test/reference/graph_oracle.py (float64 PyTorch, written from the definitions without our code), on
 * random models of each family with relu / topk / jumprelu transcoders, with and without skip, raw
 * weights (circuit-tracer's setting). Tolerance: 1e-4 x max(1, |target|).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { attributionGraph } from '../lib/graphs/attribute.js';
import type { GraphNode, SparseAdjacency } from '../lib/graphs/graph.js';
import { readSafetensors } from '../lib/io/safetensors.js';
import { Rng } from '../lib/util/random.js';
import { tempDir } from './helpers/fixtures.js';
import { GRAPH_SPECS, graphFixture } from './helpers/graph-fixtures.js';
import { runPython } from './helpers/reference.js';

const PROMPT = [1, 17, 42, 250, 9, 33, 100, 7, 58, 12];

function perturbationOf(n: GraphNode): Record<string, unknown> {
  switch (n.kind) {
    case 'feature': return { kind: 'feature', layer: n.layer, position: n.position, feature: n.index };
    case 'error': return { kind: 'error', layer: n.layer, position: n.position };
    case 'token': return { kind: 'token', position: n.position };
    case 'positional': return { kind: 'positional', position: n.position };
    case 'bias': return { kind: 'bias', layer: n.layer };
    default: throw new Error(`no perturbation for ${n.kind}`);
  }
}

describe.each(GRAPH_SPECS.filter((s) => s.processing === 'none'))('oracle: $name', (spec) => {
  it('each sampled source column equals the frozen model\'s response to removing that source', async () => {
    const fx = await graphFixture(spec);
    const graph = await attributionGraph(fx.replacement, PROMPT, { batchSize: 16 });
    const a = graph.adjacency as SparseAdjacency;
    const rng = new Rng(11);
    // Sources: 12 features, 6 errors, 3 tokens, 2 positional (GPT-2), every bias node.
    const byKind = (kind: GraphNode['kind']) => graph.nodes.map((n, i) => [n, i] as const).filter(([n]) => n.kind === kind);
    const pick = <T,>(items: T[], k: number) => Array.from({ length: Math.min(k, items.length) }, () => items[rng.int(items.length)]!);
    const sources = [...pick(byKind('feature'), 12), ...pick(byKind('error'), 6), ...pick(byKind('token'), 3), ...pick(byKind('positional'), 2), ...byKind('bias')];
    const kinds = new Set(sources.map(([n]) => n.kind));
    expect([...kinds].sort()).toEqual(fx.model.config.arch === 'gpt2' ? ['bias', 'error', 'feature', 'positional', 'token'] : ['bias', 'error', 'feature', 'token']);
    // Targets: 10 feature rows and every logit.
    const rows = graph.nodes.map((n, i) => [n, i] as const).filter(([, i]) => !Number.isNaN(graph.targetValues[i]!));
    const targets = [...pick(rows.filter(([n]) => n.kind === 'feature'), 10), ...rows.filter(([n]) => n.kind === 'logit')];
    const dir = tempDir('transcoders-oracle-');
    const specFile = join(dir, 'spec.json');
    writeFileSync(specFile, JSON.stringify({
      model_dir: fx.dir, tokens: PROMPT, processing: 'none', transcoders: fx.oracleFiles,
      perturbations: sources.map(([n]) => perturbationOf(n)),
      targets: targets.map(([n]) => (n.kind === 'feature' ? { kind: 'feature', layer: n.layer, position: n.position, feature: n.index } : { kind: 'logit', position: n.position, token: n.index })),
    }));
    runPython('graph_oracle.py', [specFile, join(dir, 'out.safetensors')]);
    const out = (await readSafetensors(join(dir, 'out.safetensors'))).tensors;
    const effects = out.effects_direct!.toTypedArray() as Float64Array; // [n_perturbations, n_targets]
    const values = out.target_values!.toTypedArray() as Float64Array;
    let nonzero = 0;
    targets.forEach(([, t], j) => {
      expect(Math.abs(values[j]! - graph.targetValues[t]!), `target ${t} value`).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(values[j]!)));
      const scale = Math.max(1, Math.abs(values[j]!));
      sources.forEach(([s, si], i) => {
        let column = 0;
        for (let k = a.rowStart[t]!; k < a.rowStart[t + 1]!; k++) if (a.columns[k] === si) column = a.values[k]!;
        const expected = effects[i * targets.length + j]!;
        if (expected !== 0) nonzero++;
        expect(Math.abs(column - expected), `A[${t}, ${si}] (${s.kind} L${s.layer}@${s.position}) ${column} vs ${expected}`).toBeLessThanOrEqual(1e-4 * scale);
      });
    });
    expect(nonzero).toBeGreaterThan(sources.length);
  });
});
