/**
 * Feature interventions and steering (lib/circuits/interventions.ts over native/circuits/intervention.cc).
 * The key check is circuit-tracer's: with attention frozen and direct effects only, changing one
 * feature's activation from a to v moves every downstream target (feature pre-activations, demeaned
 * logits) by (v - a) / a x its adjacency column A[target, feature] from the attribution graph, computed
 * by a different method (one forward that replays the clean run, against batched backward passes),
 * 1e-4 relative. Steering reproduces at each generated step the logits of an intervention on the
 * sequence so far.
 */
import { describe, expect, it } from 'vitest';
import { intervene, steer, stepInterventions } from '../lib/circuits/interventions.js';
import { attributionGraph } from '../lib/graphs/attribute.js';
import type { SparseAdjacency } from '../lib/graphs/graph.js';
import { Rng } from '../lib/util/random.js';
import { graphFixture, presetSpec, type GraphFixtureSpec } from './helpers/graph-fixtures.js';
import { maxDiff } from './helpers/reference.js';

const PROMPT = [1, 17, 42, 250, 9, 33, 100, 7, 58, 12];
const SPECS: GraphFixtureSpec[] = [
  { name: 'gpt2 raw, relu+skip / topk', model: presetSpec('tiny-gpt2'), processing: 'none', input: 'ln2', kinds: [{ arch: 'relu', skip: true }, { arch: 'topk', skip: false }] },
  { name: 'llama raw, hook_resid_mid, relu+skip', model: presetSpec('tiny-llama'), processing: 'none', input: 'residual', kinds: [{ arch: 'relu', skip: true }] },
  { name: 'gemma2 raw, mlp.hook_in, jumprelu+skip', model: presetSpec('tiny-gemma2'), processing: 'none', input: 'mlp.hook_in', kinds: [{ arch: 'jumprelu', skip: true }] },
];

describe.each(SPECS)('interventions: $name', (spec) => {
  it('with frozen attention and direct effects, every downstream target moves by the adjacency prediction', async () => {
    const fx = await graphFixture(spec);
    const graph = await attributionGraph(fx.replacement, PROMPT, { batchSize: 16 });
    const a = graph.adjacency as SparseAdjacency;
    const V = fx.model.config.vocabSize;
    const T = PROMPT.length;
    const cap = fx.model.config.finalSoftcap;
    const clean = await intervene(fx.replacement, PROMPT, [], { directEffects: true });
    // No intervention: the model's own logits.
    const own = (await fx.model.run([PROMPT])).logits!;
    expect(maxDiff(clean.logits, own).diff).toBeLessThan(1e-4);
    const demeaned = (logits: Float32Array, v: number) => {
      const last = logits.subarray((T - 1) * V, T * V);
      const pre = cap > 0 ? Float64Array.from(last, (x) => cap * Math.atanh(x / cap)) : Float64Array.from(last);
      return pre[v]! - pre.reduce((x, y) => x + y, 0) / V;
    };
    const rng = new Rng(3);
    const features = graph.nodes.map((n, i) => [n, i] as const).filter(([n]) => n.kind === 'feature' && n.layer < fx.model.config.nLayers - 1);
    let checked = 0;
    for (let trial = 0; trial < 4; trial++) {
      const [s, si] = features[rng.int(features.length)]!;
      const value = trial % 2 === 0 ? 0 : 2.5 * s.activation;
      const after = await intervene(fx.replacement, PROMPT, [{ layer: s.layer, position: s.position, feature: s.index, value }], { directEffects: true });
      expect(after.activations.get(s.layer)!.toFloat32Array()[s.position * 24 + s.index]).toBeCloseTo(value, 5);
      const factor = (value - s.activation) / s.activation;
      for (let t = 0; t < graph.nodes.length; t++) {
        const target = graph.nodes[t]!;
        if (Number.isNaN(graph.targetValues[t]!)) continue;
        let column = 0;
        for (let k = a.rowStart[t]!; k < a.rowStart[t + 1]!; k++) if (a.columns[k] === si) column = a.values[k]!;
        let before: number, now: number;
        if (target.kind === 'feature') {
          const m = 24;
          before = clean.preActivations.get(target.layer)!.toFloat32Array()[target.position * m + target.index]!;
          now = after.preActivations.get(target.layer)!.toFloat32Array()[target.position * m + target.index]!;
        } else {
          before = demeaned(clean.logits.toFloat32Array(), target.index);
          now = demeaned(after.logits.toFloat32Array(), target.index);
        }
        const predicted = factor * column;
        expect(Math.abs(now - before - predicted), `target ${t} (${target.kind} L${target.layer}@${target.position}) from ${s.layer}:${s.index}@${s.position}`).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(before)));
        if (column !== 0) checked++;
      }
    }
    expect(checked).toBeGreaterThan(10);
  });
});

describe('interventions without freezing, and steering', () => {
  it('downstream layers respond; the intervened value is reported; an empty intervention is the model', async () => {
    const fx = await graphFixture(SPECS[0]!);
    const open = await intervene(fx.replacement, PROMPT, [], { freezeAttention: false });
    expect(maxDiff(open.logits, (await fx.model.run([PROMPT])).logits!).diff).toBeLessThan(1e-4);
    const r = await intervene(fx.replacement, PROMPT, [{ layer: 0, position: -1, feature: 3, value: 7 }], { freezeAttention: false });
    expect(r.activations.get(0)!.toFloat32Array()[(PROMPT.length - 1) * 24 + 3]).toBeCloseTo(7, 5);
    expect(maxDiff(r.logits, open.logits).diff).toBeGreaterThan(1e-3);
    // Layer 0's other activations are unchanged; layer 1 saw a new input at the last position only.
    const [a0, b0] = [open.activations.get(0)!.toFloat32Array(), r.activations.get(0)!.toFloat32Array()];
    b0[(PROMPT.length - 1) * 24 + 3] = a0[(PROMPT.length - 1) * 24 + 3]!;
    expect(maxDiff(b0, a0).diff).toBe(0);
  });

  it('steering reproduces the intervened logits at every step; sampling is reproducible with a seed', async () => {
    const fx = await graphFixture(SPECS[1]!);
    const steering = [{ layer: 0, feature: 5, value: 4, position: 'new' as const }, { layer: 1, feature: 2, value: 0, position: 2 }];
    const greedy = await steer(fx.replacement, PROMPT, steering, { maxNewTokens: 4, stopToken: null });
    expect(greedy.tokens).toHaveLength(4);
    const V = fx.model.config.vocabSize;
    for (const [i, step] of greedy.steps.entries()) {
      const prefix = [...PROMPT, ...greedy.tokens.slice(0, i)];
      expect(step.interventions).toEqual(stepInterventions(steering, PROMPT.length, prefix.length));
      const r = await intervene(fx.replacement, prefix, step.interventions, { freezeAttention: false });
      const last = r.logits.toFloat32Array().slice((prefix.length - 1) * V, prefix.length * V);
      expect(maxDiff(step.logits, last).diff).toBeLessThan(1e-5);
      expect(step.token).toBe(last.indexOf(Math.max(...last)));
    }
    const [s1, s2] = [await steer(fx.replacement, PROMPT, steering, { maxNewTokens: 5, temperature: 1.5, seed: 9, stopToken: null }), await steer(fx.replacement, PROMPT, steering, { maxNewTokens: 5, temperature: 1.5, seed: 9, stopToken: null })];
    expect(s1.tokens).toEqual(s2.tokens);
    const unsteered = await steer(fx.replacement, PROMPT, [], { maxNewTokens: 4, stopToken: null });
    expect(unsteered.steps[0]!.logits).not.toEqual(greedy.steps[0]!.logits);
  });

  it('bad interventions are clear errors', async () => {
    const fx = await graphFixture(SPECS[0]!);
    await expect(intervene(fx.replacement, PROMPT, [{ layer: 5, position: 0, feature: 0, value: 1 }])).rejects.toThrow(/layer 5 has no transcoder/);
    await expect(intervene(fx.replacement, PROMPT, [{ layer: 0, position: 0, feature: 99, value: 1 }])).rejects.toThrow(/feature 99 is out of range \[0, 24\)/);
    await expect(intervene(fx.replacement, PROMPT, [{ layer: 0, position: 40, feature: 0, value: 1 }])).rejects.toThrow(/position 40 is outside the prompt of 10 tokens/);
    await expect(intervene(fx.replacement, PROMPT, [{ layer: 0, position: 0, feature: 0, value: NaN }])).rejects.toThrow(/value must be a finite number/);
    await expect(steer(fx.replacement, PROMPT, [], { maxNewTokens: 1000 })).rejects.toThrow(/exceed the model's context/);
  });
});
