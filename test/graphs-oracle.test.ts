/**
 * circuit-tracer's oracle for attribution graphs, against an independent implementation: for sampled
 * sources of every kind (features, errors, tokens, positional embeddings, bias nodes), removing the
 * source's vector in the frozen local replacement model moves every target (feature pre-activations,
 * demeaned logits) by exactly the source's column of our adjacency. The frozen model is computed by
 * test/reference/graph_oracle.py (float64 PyTorch, written from the definitions without our code), on
 * random models of each family with relu / topk / jumprelu transcoders, with and without skip, raw
 * weights (circuit-tracer's setting) and a TransformerLens-processed GPT-2 (re-exported as the raw
 * checkpoint it is equivalent to). Tolerance: 1e-4 x max(1, |target|).
 */
import { cpSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { attributionGraph } from '../lib/graphs/attribute.js';
import type { GraphNode, SparseAdjacency } from '../lib/graphs/graph.js';
import { loadModel, type Model } from '../lib/index.js';
import { readSafetensors, writeSafetensors } from '../lib/io/safetensors.js';
import { Rng } from '../lib/util/random.js';
import { tempDir } from './helpers/fixtures.js';
import { GRAPH_SPECS, graphFixture, perturbationOf } from './helpers/graph-fixtures.js';
import { maxDiff, runPython } from './helpers/reference.js';

const PROMPT = [1, 17, 42, 250, 9, 33, 100, 7, 58, 12];

/**
 * What the processed model's b_U adds to the demeaned logit of token v, b_U[v] - mean(b_U): the
 * re-exported checkpoint cannot hold b_U, so the oracle's logit targets, and its bias node after the
 * last layer, miss exactly this (0 for raw models).
 */
function unembedShift(model: Model, v: number): number {
  const b = model.weight('unembed.b_U').toFloat32Array();
  return b[v]! - b.reduce((x, y) => x + y, 0) / b.length;
}

/**
 * A TransformerLens-processed GPT-2 is itself a raw GPT-2 checkpoint (but for b_U): LayerNormPre is a LayerNorm of unit
 * gain and zero bias, and the processed (centred, folded) matrices are just other weights. Writes that
 * checkpoint (with its own lm_head) so the oracle, which reads raw checkpoints only, runs the processed model.
 */
function processedAsRaw(model: Model): string {
  const dir = tempDir('transcoders-processed-raw-');
  const { dModel: d, nHeads: H, nLayers: L, vocabSize: V, nCtx } = model.config;
  const dh = d / H;
  const w = (name: string) => model.weight(name).toFloat32Array();
  const raw = (shape: number[], values: Float32Array) => ({ dtype: 'F32' as const, shape, bytes: new Uint8Array(Float32Array.from(values).buffer) });
  const tensors: Record<string, ReturnType<typeof raw>> = { 'wte.weight': raw([V, d], w('embed.W_E')), 'wpe.weight': raw([nCtx, d], w('pos_embed.W_pos')) };
  const ones = new Float32Array(d).fill(1);
  const zeros = new Float32Array(d);
  for (let l = 0; l < L; l++) {
    const p = `h.${l}.`;
    // W_Q/W_K/W_V [H, d, dh] -> Conv1D [d, 3 d] with columns Q | K | V by head.
    const qkv = new Float32Array(d * 3 * d);
    const bqkv = new Float32Array(3 * d);
    ['Q', 'K', 'V'].forEach((m, j) => {
      const W = w(`blocks.${l}.attn.W_${m}`);
      const b = w(`blocks.${l}.attn.b_${m}`);
      for (let h = 0; h < H; h++) for (let i = 0; i < d; i++) for (let k = 0; k < dh; k++) qkv[i * 3 * d + j * d + h * dh + k] = W[(h * d + i) * dh + k]!;
      bqkv.set(b, j * d);
    });
    Object.assign(tensors, {
      [`${p}ln_1.weight`]: raw([d], ones), [`${p}ln_1.bias`]: raw([d], zeros),
      [`${p}attn.c_attn.weight`]: raw([d, 3 * d], qkv), [`${p}attn.c_attn.bias`]: raw([3 * d], bqkv),
      [`${p}attn.c_proj.weight`]: raw([d, d], w(`blocks.${l}.attn.W_O`)), [`${p}attn.c_proj.bias`]: raw([d], w(`blocks.${l}.attn.b_O`)),
      [`${p}ln_2.weight`]: raw([d], ones), [`${p}ln_2.bias`]: raw([d], zeros),
      [`${p}mlp.c_fc.weight`]: raw([d, model.config.dMlp], w(`blocks.${l}.mlp.W_in`)), [`${p}mlp.c_fc.bias`]: raw([model.config.dMlp], w(`blocks.${l}.mlp.b_in`)),
      [`${p}mlp.c_proj.weight`]: raw([model.config.dMlp, d], w(`blocks.${l}.mlp.W_out`)), [`${p}mlp.c_proj.bias`]: raw([d], w(`blocks.${l}.mlp.b_out`)),
    });
  }
  const WU = w('unembed.W_U'); // [d, V] -> lm_head [V, d]; b_U has no place in a GPT-2 checkpoint (see unembedShift)
  tensors['ln_f.weight'] = raw([d], ones);
  tensors['ln_f.bias'] = raw([d], zeros);
  tensors['lm_head.weight'] = raw([V, d], Float32Array.from({ length: V * d }, (_, k) => WU[(k % d) * V + Math.floor(k / d)]!));
  writeSafetensors(join(dir, 'model.safetensors'), tensors);
  cpSync(join(model.dir, 'config.json'), join(dir, 'config.json'));
  return dir;
}

describe.each(GRAPH_SPECS)('oracle: $name', (spec) => {
  it('each sampled source column equals the frozen model\'s response to removing that source', async () => {
    const fx = await graphFixture(spec);
    const oracleModel = spec.processing === 'none' ? fx.dir : processedAsRaw(fx.model);
    const graph = await attributionGraph(fx.replacement, PROMPT, { batchSize: 16 });
    const a = graph.adjacency as SparseAdjacency;
    const rng = new Rng(11);
    // Sources: 12 features, 6 errors, 3 tokens, 2 positional (GPT-2), every bias node.
    const byKind = (kind: GraphNode['kind']) => graph.nodes.map((n, i) => [n, i] as const).filter(([n]) => n.kind === kind);
    const pick = <T,>(items: T[], k: number) => Array.from({ length: Math.min(k, items.length) }, () => items[rng.int(items.length)]!);
    const sources = [...pick(byKind('feature'), 12), ...pick(byKind('error'), 6), ...pick(byKind('token'), 3), ...pick(byKind('positional'), 2), ...byKind('bias')];
    const kinds = new Set(sources.map(([n]) => n.kind));
    expect([...kinds].sort()).toEqual(fx.model.config.arch === 'gpt2' ? ['bias', 'error', 'feature', 'positional', 'token'] : ['bias', 'error', 'feature', 'token']);
    if (spec.processing !== 'none') {
      // The re-exported checkpoint is the processed model: the same residual stream.
      const again = await loadModel(oracleModel, { processing: 'none' });
      const { cache: a1 } = await again.run([PROMPT], { cache: ['blocks.1.hook_resid_post'] });
      const { cache: a2 } = await fx.model.run([PROMPT], { cache: ['blocks.1.hook_resid_post'] });
      expect(maxDiff(a1['blocks.1.hook_resid_post']!, a2['blocks.1.hook_resid_post']!).diff).toBeLessThan(1e-4);
    }
    // Targets: 10 feature rows and every logit.
    const rows = graph.nodes.map((n, i) => [n, i] as const).filter(([, i]) => !Number.isNaN(graph.targetValues[i]!));
    const targets = [...pick(rows.filter(([n]) => n.kind === 'feature'), 10), ...rows.filter(([n]) => n.kind === 'logit')];
    const dir = tempDir('transcoders-oracle-');
    const specFile = join(dir, 'spec.json');
    writeFileSync(specFile, JSON.stringify({
      model_dir: oracleModel, tokens: PROMPT, processing: 'none', transcoders: fx.oracleFiles,
      perturbations: sources.map(([n]) => perturbationOf(n)),
      targets: targets.map(([n]) => (n.kind === 'feature' ? { kind: 'feature', layer: n.layer, position: n.position, feature: n.index } : { kind: 'logit', position: n.position, token: n.index })),
    }));
    runPython('graph_oracle.py', [specFile, join(dir, 'out.safetensors')]);
    const out = (await readSafetensors(join(dir, 'out.safetensors'))).tensors;
    const effects = out.effects_direct!.toTypedArray() as Float64Array; // [n_perturbations, n_targets]
    const values = out.target_values!.toTypedArray() as Float64Array;
    let nonzero = 0;
    targets.forEach(([tn, t], j) => {
      const shift = tn.kind === 'logit' ? unembedShift(fx.model, tn.index) : 0;
      values[j]! += shift;
      sources.forEach(([s], i) => {
        if (s.kind === 'bias' && s.layer === fx.model.config.nLayers) effects[i * targets.length + j]! += shift;
      });
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
