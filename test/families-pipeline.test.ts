/**
 * The whole pipeline on a tiny model of each modern family: write a token file, train transcoders
 * on every layer from the model's own activations (the family's default hooks), evaluate with every
 * MLP replaced, build an attribution graph and run the paper's path search. Checks that training
 * lowers the reconstruction error, that the replaced model's loss is finite and recorded, and that
 * the graph and the search are exact where they can be (rows sum to their targets; the search's root
 * is the model's own logit difference).
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { findCircuit } from '../lib/circuits/find-circuit.js';
import { attributionGraph } from '../lib/graphs/attribute.js';
import type { SparseAdjacency } from '../lib/graphs/graph.js';
import { evaluate, loadModel, ReplacementModel, trainTranscoders } from '../lib/index.js';
import { writeTokenFile } from '../lib/data/token-file.js';
import { mlpHooks } from '../lib/transcoders/config.js';
import { Rng } from '../lib/util/random.js';
import { DEVICE, makeTempModel, tempDir } from './helpers/fixtures.js';
import { presetSpec } from './helpers/graph-fixtures.js';

const FAMILIES = ['tiny-llama', 'tiny-qwen3', 'tiny-gemma2', 'tiny-gemma3'];

describe.each(FAMILIES)('pipeline on %s', (preset) => {
  it('trains, evaluates, builds a graph and searches a circuit', async () => {
    const spec = presetSpec(preset, { nLayers: 2, seed: 21 });
    const dir = makeTempModel(spec);
    const model = await loadModel(dir, { device: DEVICE });
    const rng = new Rng(2);
    const C = 16;
    const rows = Array.from({ length: 256 }, () => Int32Array.from({ length: C }, () => rng.int(spec.vocabSize)));
    const tokenFile = join(tempDir(), 'tokens.bin');
    await writeTokenFile(tokenFile, rows, { contextSize: C, tokenizer: 'fixture', bos: 'none', sources: ['random'], documents: rows.length });
    const out = tempDir();
    const trained = await trainTranscoders({
      data: { tokenFile, model }, layers: [0, 1], arch: 'relu', dSae: 128, batchSize: 64, steps: 300, lr: 1e-2, l1Coefficient: 1e-4, schedule: 'constant', out, device: DEVICE,
    });
    expect(trained.transcoders.map((t) => [t.config.hookIn, t.config.hookOut])).toEqual([0, 1].map((l) => [mlpHooks(l, model.config.arch).hookIn, mlpHooks(l, model.config.arch).hookOut]));
    expect(trained.transcoders.every((t) => t.config.processing === 'none')).toBe(true);

    const replacement = ReplacementModel.create(model, trained.transcoders);
    const evalRows = rows.slice(0, 8).map((r) => [...r]);
    const evaluation = await evaluate(replacement, evalRows);
    expect(Number.isFinite(evaluation.ceLossReplaced)).toBe(true);
    expect(Number.isFinite(evaluation.ceLossClean)).toBe(true);
    for (const layer of evaluation.layers) expect(layer.fvu).toBeLessThan(1.0);

    const prompt = [...rows[0]!.subarray(0, 10)];
    const graph = await attributionGraph(replacement, prompt, { batchSize: 16 });
    expect(graph.activeFeatures).toBeGreaterThan(0);
    const a = graph.adjacency as SparseAdjacency;
    for (let i = 0; i < graph.nodes.length; i++) {
      if (Number.isNaN(graph.targetValues[i]!)) continue;
      let s = 0;
      for (let k = a.rowStart[i]!; k < a.rowStart[i + 1]!; k++) s += a.values[k]!;
      expect(Math.abs(s - graph.targetValues[i]!)).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(graph.targetValues[i]!)));
    }

    const circuit = await findCircuit({ replacement, prompt }, { kind: 'logit', token: 5, minus: 7 }, { iters: 2, branches: 4 });
    const logits = (await model.run([prompt])).logits!.toFloat32Array();
    const V = spec.vocabSize;
    const last = (prompt.length - 1) * V;
    // The root is the logit difference before Gemma's final soft-cap (logit = cap tanh(pre / cap)).
    const cap = model.config.finalSoftcap;
    const pre = (v: number) => (cap > 0 ? cap * Math.atanh(v / cap) : v);
    expect(Math.abs(circuit.root.contrib - (pre(logits[last + 5]!) - pre(logits[last + 7]!)))).toBeLessThan(1e-4);
    expect(circuit.levels.length).toBe(2);
    model.dispose();
  });
});
