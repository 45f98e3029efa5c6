/**
 * The replacement model: construction checks (each a clear InvalidArgumentError naming the layer and
 * what is wrong), placements of every supported hook pair, loading from paths, and runs with the
 * transcoders spliced in — feature masks against a hand-written masked decode.
 */
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { existsSync, readFileSync } from 'node:fs';
import { findCircuit, InvalidArgumentError, loadModel, ReplacementModel, Tensor, Transcoder, writeGraph, type Model, type TranscoderConfig } from '../lib/index.js';
import { saveTranscoder } from '../lib/transcoders/formats/native.js';
import { Rng } from '../lib/util/random.js';
import { makeTempModel, tempDir } from './helpers/fixtures.js';

const SPEC = { arch: 'gpt2', nLayers: 2, dModel: 16, nHeads: 2, vocabSize: 300, nCtx: 16, std: 0.2 } as const;
let gpt2: Model;
let neox: Model;
let dir: string;

async function transcoder(config: Partial<TranscoderConfig>, seed = 1): Promise<Transcoder> {
  const rng = new Rng(seed);
  const d = config.dIn ?? 16;
  const m = config.dSae ?? 12;
  const mat = (a: number, b: number) => Tensor.from(Float32Array.from({ length: a * b }, () => 0.4 * rng.normal()), [a, b]);
  const v = (n: number) => Tensor.from(Float32Array.from({ length: n }, () => 0.1 * rng.normal()), [n]);
  return Transcoder.fromParameters(
    { arch: 'relu', dIn: d, dOut: config.dOut ?? d, dSae: m, layer: 0, hookIn: 'blocks.0.ln2.hook_normalized', hookOut: 'blocks.0.hook_mlp_out', ...config },
    { W_enc: mat(d, m), b_enc: v(m), W_dec: mat(m, config.dOut ?? d), b_dec: v(d), b_dec_out: v(config.dOut ?? d) },
  );
}

beforeAll(async () => {
  dir = makeTempModel(SPEC);
  gpt2 = await loadModel(dir);
  neox = await loadModel(makeTempModel({ ...SPEC, arch: 'gpt_neox' }));
});

describe('ReplacementModel construction', () => {
  it('pairs transcoders with layers and resolves each placement', async () => {
    const rm = ReplacementModel.create(gpt2, [
      await transcoder({ layer: 1, hookIn: 'blocks.1.hook_resid_mid', hookOut: 'blocks.1.mlp.hook_out' }),
      await transcoder({ layer: 0, hookIn: 'blocks.0.mlp.hook_in', hookOut: 'blocks.0.hook_mlp_out' }),
    ]);
    expect(rm.layers).toEqual([0, 1]);
    expect(rm.placement(0)).toEqual({ layer: 0, hookIn: 'blocks.0.mlp.hook_in', hookOut: 'blocks.0.hook_mlp_out', input: 'mlp' });
    expect(rm.placement(1)).toEqual({ layer: 1, hookIn: 'blocks.1.hook_resid_mid', hookOut: 'blocks.1.mlp.hook_out', input: 'residual' });
    expect(rm.hooks()).toEqual(['blocks.0.mlp.hook_in', 'blocks.0.hook_mlp_out', 'blocks.1.hook_resid_mid', 'blocks.1.mlp.hook_out']);
    // Parallel blocks: the MLP's LayerNorm reads resid_pre.
    const parallel = ReplacementModel.create(neox, [await transcoder({ layer: 1, hookIn: 'blocks.1.hook_resid_pre', hookOut: 'blocks.1.hook_mlp_out' })]);
    expect(parallel.placement(1).input).toBe('residual');
  });

  it('rejects what cannot work, naming the layer and the cause', async () => {
    const cases: [string, () => Promise<unknown>, RegExp][] = [
      ['layer out of range', async () => ReplacementModel.create(gpt2, [await transcoder({ layer: 2, hookIn: 'blocks.2.ln2.hook_normalized', hookOut: 'blocks.2.hook_mlp_out' })]), /layer 2, but the model has layers 0\.\.1/],
      ['no layer recorded', async () => ReplacementModel.create(gpt2, [await transcoder({ layer: -1, hookIn: '', hookOut: '' })]), /records no layer/],
      ['a hook the model does not have', async () => ReplacementModel.create(gpt2, [await transcoder({ hookIn: 'blocks.0.ln3.hook_normalized' })]), /the model has no hook blocks\.0\.ln3\.hook_normalized/],
      ['resid_mid of a parallel block', async () => ReplacementModel.create(neox, [await transcoder({ hookIn: 'blocks.0.hook_resid_mid' })]), /no hook blocks\.0\.hook_resid_mid \(its attention and MLP run in parallel/],
      ['an input that is not the MLP\'s', async () => ReplacementModel.create(gpt2, [await transcoder({ hookIn: 'blocks.0.hook_resid_pre' })]), /does not replace layer 0's MLP: a transcoder reads/],
      ['another layer\'s hook', async () => ReplacementModel.create(gpt2, [await transcoder({ hookIn: 'blocks.1.ln2.hook_normalized' })]), /does not replace layer 0's MLP/],
      ['an output that is not the MLP\'s', async () => ReplacementModel.create(gpt2, [await transcoder({ hookOut: 'blocks.0.hook_resid_post' })]), /a transcoder writes blocks\.0\.hook_mlp_out or blocks\.0\.mlp\.hook_out/],
      ['width', async () => ReplacementModel.create(gpt2, [await transcoder({ dIn: 8, dOut: 8 })]), /dIn 8 and dOut 8; the model's width is 16/],
      ['duplicates', async () => ReplacementModel.create(gpt2, [await transcoder({}), await transcoder({}, 2)]), /two transcoders for layer 0/],
      ['processing', async () => ReplacementModel.create(gpt2, [await transcoder({ processing: 'transformerlens' })]), /expects the model loaded with processing 'transformerlens', not 'none'/],
      ['two models', async () => ReplacementModel.create(gpt2, [
        await transcoder({ modelName: '/models/gpt2' }),
        await transcoder({ layer: 1, hookIn: 'blocks.1.ln2.hook_normalized', hookOut: 'blocks.1.hook_mlp_out', modelName: 'EleutherAI/pythia-70m' }),
      ]), /transcoders of different models: layer 0 was trained on \/models\/gpt2, layer 1 on EleutherAI\/pythia-70m/],
      ['none', async () => ReplacementModel.create(gpt2, []), /at least one transcoder/],
      ['not a transcoder', async () => ReplacementModel.create(gpt2, [{} as Transcoder]), /must be Transcoder objects/],
      ['a map key that is not the layer', async () => ReplacementModel.create(gpt2, new Map([[1, await transcoder({})]])), /given for layer 1 records layer 0/],
    ];
    for (const [what, build, message] of cases) {
      const err = await build().then(() => null, (e: unknown) => e);
      expect(err, what).toBeInstanceOf(InvalidArgumentError);
      expect((err as Error).message, what).toMatch(message);
    }
    // One model under two spellings is one model.
    expect(() => ReplacementModel.create(gpt2, [])).toThrow(InvalidArgumentError);
    const same = ReplacementModel.create(gpt2, [
      await transcoder({ modelName: '/models/gpt2/' }),
      await transcoder({ layer: 1, hookIn: 'blocks.1.ln2.hook_normalized', hookOut: 'blocks.1.hook_mlp_out', modelName: 'openai-community/gpt2' }),
    ]);
    expect(same.layers).toEqual([0, 1]);
  });

  it('loads the model with the processing its transcoders record, from a training output folder', async () => {
    const out = tempDir('rm-load-');
    saveTranscoder(await transcoder({ processing: 'transformerlens' }), join(out, 'layer_0'));
    saveTranscoder(await transcoder({ layer: 1, hookIn: 'blocks.1.ln2.hook_normalized', hookOut: 'blocks.1.hook_mlp_out', processing: 'transformerlens' }), join(out, 'layer_1'));
    const rm = await ReplacementModel.load(dir, [out]);
    expect(rm.model.processing).toBe('transformerlens');
    expect(rm.layers).toEqual([0, 1]);
    await expect(ReplacementModel.load(dir, [out], { processing: 'none' })).rejects.toThrow(/expects the model loaded with processing 'transformerlens', not 'none'/);
    await expect(ReplacementModel.load(dir, [])).rejects.toThrow(/at least one transcoder path/);
  });
});

describe('ReplacementModel runs', () => {
  it('feature masks equal a hand-written masked decode, and run() replaces every layer', async () => {
    const tc = await transcoder({});
    const rm = ReplacementModel.create(gpt2, [tc]);
    const tokens = [[1, 5, 9, 200, 7], [3, 3, 8, 150, 2]];
    const { cache } = await gpt2.run(tokens, { cache: ['blocks.0.ln2.hook_normalized'] });
    const x = cache['blocks.0.ln2.hook_normalized']!.toFloat32Array();
    const p = tc.parameters();
    const [Wenc, benc, Wdec, bdec, bout] = [p.W_enc, p.b_enc, p.W_dec, p.b_dec, p.b_dec_out].map((t) => t.toFloat32Array());
    const removed = [0, 3, 7];
    const y = new Float32Array(x.length);
    for (let r = 0; r < x.length / 16; r++) {
      for (let i = 0; i < 16; i++) y[r * 16 + i] = bout![i]!;
      for (let f = 0; f < 12; f++) {
        if (removed.includes(f)) continue;
        let pre = benc![f]!;
        for (let i = 0; i < 16; i++) pre += (x[r * 16 + i]! - bdec![i]!) * Wenc![i * 12 + f]!;
        if (pre > 0) for (let i = 0; i < 16; i++) y[r * 16 + i]! += pre * Wdec![f * 16 + i]!;
      }
    }
    const byHand = (await gpt2.run(tokens, { replaceMlp: { 0: { value: Tensor.from(y, [2, 5, 16]) } } })).logits!.toFloat32Array();
    const masked = (await rm.run(tokens, { replace: { remove: { 0: removed } } })).logits!.toFloat32Array();
    const kept = (await rm.run(tokens, { replace: { keep: { 0: [...Array(12).keys()].filter((f) => !removed.includes(f)) } } })).logits!.toFloat32Array();
    const diff = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);
    expect(diff(masked, byHand)).toBeLessThan(1e-4);
    expect(diff(kept, byHand)).toBeLessThan(1e-4);
    const all = (await rm.run(tokens)).logits!.toFloat32Array();
    const direct = (await gpt2.run(tokens, { replaceMlp: { 0: tc } })).logits!.toFloat32Array();
    expect(diff(all, direct)).toBe(0);
    expect(() => rm.replacements({ remove: { 0: [12] } })).toThrow(/feature 12 of layer 0 is out of range \[0, 12\)/);
    expect(() => rm.replacements({ layers: [1] })).toThrow(/no transcoder for layer 1/);
  });
});

describe('the circuit pipeline on a raw model', () => {
  it('findCircuit + writeGraph with residual-reading transcoders: paths, bias nodes of raw attention, files', async () => {
    const rm = ReplacementModel.create(gpt2, [
      await transcoder({ layer: 0, hookIn: 'blocks.0.hook_resid_mid', hookOut: 'blocks.0.hook_mlp_out' }, 3),
      await transcoder({ layer: 1, hookIn: 'blocks.1.ln2.hook_normalized', hookOut: 'blocks.1.hook_mlp_out' }, 4),
    ]);
    const circuit = await findCircuit({ replacement: rm, prompt: [1, 17, 42, 250, 9, 33] }, { kind: 'logit', token: 5, minus: 7 }, { iters: 2, branches: 4, filter: { kinds: ['attention'] } });
    expect(circuit.levels).toHaveLength(2);
    // The root is the real logit difference at the last position (the model's own logits).
    const logits = (await rm.model.run([[1, 17, 42, 250, 9, 33]])).logits!.toFloat32Array();
    expect(Math.abs(circuit.root.contrib - (logits[5 * 300 + 5]! - logits[5 * 300 + 7]!))).toBeLessThan(1e-4);
    const graph = circuit.graph!;
    expect(graph.metadata.transcoders.map((t) => t.hookIn)).toEqual(['blocks.0.hook_resid_mid', 'blocks.1.ln2.hook_normalized']);
    // Raw attention reads ln1's bias and the value bias: its parents get a bias node when they have children.
    const attentionParents = graph.edges.filter((e) => e.target.startsWith('attn')).map((e) => e.target);
    expect(attentionParents.length).toBeGreaterThan(0);
    for (const id of new Set(attentionParents)) expect(graph.nodes.some((n) => n.id === `err.bias.${id}`), id).toBe(true);
    const dir = tempDir('rm-graph-');
    writeGraph(graph, { json: join(dir, 'g.json'), dot: join(dir, 'g.dot'), html: join(dir, 'g.html') });
    expect(JSON.parse(readFileSync(join(dir, 'g.json'), 'utf8')).metadata.root).toBe(graph.metadata.root);
    expect(existsSync(join(dir, 'g.dot')) && existsSync(join(dir, 'g.html'))).toBe(true);
  });
});
