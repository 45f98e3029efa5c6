/**
 * Greedy path search and graphs (paper-method.md §6 E): beam invariants, causality, the cap bound of
 * zero-ablation mode, a graph from one path, error-node values, exports, and the `circuit` command.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { Attribution, type AttributionNode } from '../lib/circuits/attribution.js';
import { GRAPH_SCHEMA, nodeId, pathsToGraph, sumOverTokens } from '../lib/circuits/graph.js';
import { meanInputTimesGradient } from '../lib/circuits/mean-ixg.js';
import { formatPaths, toDot, toHtml } from '../lib/circuits/render.js';
import { greedyPaths, isTerminal, type Path } from '../lib/circuits/search.js';
import { saveTranscoder } from '../lib/transcoders/formats/native.js';
import { readSafetensors, Tensor, writeSafetensors, type Model } from '../lib/index.js';
import { Rng } from '../lib/util/random.js';
import { CIRCUIT_DSAE, circuitFixture } from './helpers/circuits.js';
import { ensureDist, runCli } from './helpers/cli.js';
import { tempDir } from './helpers/fixtures.js';
import { runPython } from './helpers/reference.js';

const SEARCH = { iters: 3, branches: 6, ignoreBos: true, cap: false };
let model: Model;
let modelDir: string;
let attribution: Attribution;
let root: AttributionNode;
let levels: Path[][];
const T = 10;

beforeAll(async () => {
  const fx = await circuitFixture({ arch: 'gpt2', nLayers: 4, dModel: 32, nHeads: 4, vocabSize: 300, nCtx: 32, std: 0.2 });
  model = fx.model;
  modelDir = fx.dir;
  const rng = new Rng(5);
  const tokens = Array.from({ length: T }, () => rng.int(300));
  attribution = await Attribution.create(fx.replacement, tokens);
  const acts = attribution.activations(3).toFloat32Array().subarray((T - 1) * CIRCUIT_DSAE, T * CIRCUIT_DSAE);
  const F = acts.indexOf(Math.max(...acts));
  root = attribution.featureRoot(3, F, T - 1);
  levels = await greedyPaths(attribution, root, SEARCH);
  const dir = tempDir();
  fx.transcoders.forEach((tc) => saveTranscoder(tc, join(dir, `layer_${tc.config.layer}`)));
  transcoderDir = dir;
});
let transcoderDir: string;

describe('greedy path search', () => {
  it('E1: one level per iteration, at most `branches` paths of growing length, sorted, prefixes from the previous level', () => {
    expect(levels).toHaveLength(SEARCH.iters);
    levels.forEach((paths, i) => {
      expect(paths.length).toBeGreaterThan(0);
      expect(paths.length).toBeLessThanOrEqual(SEARCH.branches);
      for (const p of paths) expect(p).toHaveLength(i + 2);
      const last = paths.map((p) => p.at(-1)!.contrib);
      expect(last).toEqual([...last].sort((a, b) => b - a));
      if (i > 0) {
        const previous = new Set(levels[i - 1]!.map((p) => p.map(nodeId).join('|')));
        for (const p of paths) expect(previous.has(p.slice(0, -1).map(nodeId).join('|'))).toBe(true);
      }
    });
    expect(levels[0]![0]![0]!.contrib).toBeCloseTo(root.contrib, 10);
  });

  it('E2: children are causal and terminal nodes have none', () => {
    for (const path of levels.flat()) {
      for (let j = 1; j < path.length; j++) {
        const parent = path[j - 1]!;
        const child = path[j]!;
        expect(isTerminal(parent)).toBe(false);
        expect(child.position).toBeLessThanOrEqual(parent.position);
        if (child.kind === 'feature') expect(child.layer).toBeLessThan(parent.sublayer === 'resid_post' ? parent.layer + 1 : parent.layer);
        if (child.kind === 'attention') expect(child.layer).toBeLessThan(parent.sublayer === 'resid_pre' ? parent.layer : parent.layer + 1);
        if (child.kind === 'attention' && SEARCH.ignoreBos) expect(child.position).toBeGreaterThan(0);
      }
    }
  });

  it('E3: in zero-ablation mode no contribution exceeds the last feature activation on its path', async () => {
    // A weakly active root: its contributors' raw attributions exceed its activation, so caps apply.
    const acts = attribution.activations(3).toFloat32Array().subarray((T - 1) * CIRCUIT_DSAE, T * CIRCUIT_DSAE);
    const weakest = acts.indexOf(Math.min(...acts.filter((a) => a > 0)));
    const weakRoot = attribution.featureRoot(3, weakest, T - 1);
    const raw = await greedyPaths(attribution, weakRoot, SEARCH);
    expect(raw.flat().some((p) => p.at(-1)!.contrib > weakRoot.contrib)).toBe(true);
    const capped = await greedyPaths(attribution, weakRoot, { ...SEARCH, cap: true });
    let sawCap = false;
    for (const path of capped.flat()) {
      for (let j = 1; j < path.length; j++) {
        const lastFeature = [...path.slice(0, j)].reverse().find((n) => n.kind === 'feature')!;
        expect(path[j]!.contrib).toBeLessThanOrEqual(lastFeature.contrib + 1e-9);
        if (path[j]!.capped) sawCap = true;
      }
    }
    expect(sawCap).toBe(true);
    expect(() => pathsToGraph(attribution, capped, { search: { ...SEARCH, cap: true } })).toThrow(/raw attributions/);
  });

  it('filters restrict the nodes that enter paths', async () => {
    const onlyFeatures = await greedyPaths(attribution, root, { ...SEARCH, iters: 2, filter: { kinds: ['feature'], minLayer: 1 } });
    for (const path of onlyFeatures.flat()) for (const n of path.slice(1)) {
      expect(n.kind).toBe('feature');
      expect(n.layer).toBeGreaterThanOrEqual(1);
    }
  });
});

describe('graphs', () => {
  it('E4: a graph from one path has its nodes and edges; duplicate prefixes count once', () => {
    const path = levels[1]![0]!; // [r, a, b]
    const g = pathsToGraph(attribution, [[path], [path]], { search: SEARCH, errors: false });
    const [r, a, b] = path.map(nodeId);
    expect(g.edges).toEqual([
      { source: a, target: r, weight: path[1]!.contrib },
      { source: b, target: a, weight: path[2]!.contrib },
    ]);
    expect(g.nodes.map((n) => [n.id, n.contribution])).toEqual([[r, path[0]!.contrib], [a, path[1]!.contrib], [b, path[2]!.contrib]]);
    expect(g.schema).toBe(GRAPH_SCHEMA);
  });

  it('E5: error nodes: prune = contribution - explained, bias = b_enc - W_enc . b_dec, no transcoder error below layer 0', () => {
    const g = pathsToGraph(attribution, levels, { search: SEARCH });
    const byId = new Map(g.nodes.map((n) => [n.id, n]));
    const incoming = (id: string, kind?: string) => g.edges.filter((e) => e.target === id && (kind === undefined ? !e.source.startsWith('err.') : e.source.startsWith(kind)));
    const rootId = nodeId(root);
    const explained = incoming(rootId).reduce((s, e) => s + e.weight, 0);
    const prune = g.edges.find((e) => e.source === `err.prune.${rootId}`)!;
    expect(prune.weight).toBeCloseTo(byId.get(rootId)!.contribution - explained, 10);
    const p = attribution.transcoders.get(3)!.parameters();
    const d = 32;
    const W = p.W_enc.toFloat32Array();
    const bias = p.b_enc.toFloat32Array()[root.feature!]! - Array.from({ length: d }, (_, i) => W[i * CIRCUIT_DSAE + root.feature!]! * p.b_dec.toFloat32Array()[i]!).reduce((a, b) => a + b, 0);
    expect(g.edges.find((e) => e.source === `err.bias.${rootId}`)!.weight).toBeCloseTo(bias, 5);
    // Transcoder errors reach a node only from the MLP layers below it: none for layer-0 features.
    for (const n of g.nodes.filter((n) => n.kind === 'feature' && n.layer === 0)) expect(incoming(n.id, 'err.tc')).toHaveLength(0);
    // The root's errors: one per MLP layer below it, equal to v . (mlp_out - tc_out).
    expect(incoming(rootId, 'err.tc').map((e) => e.source).sort()).toEqual([0, 1, 2].map((l) => `err.tc${l}@${T - 1}`));
    for (const e of incoming(rootId, 'err.tc')) {
      const l = Number(/err\.tc(\d+)@/.exec(e.source)![1]);
      expect(e.weight).toBeCloseTo(attribution.transcoderError(root.vector, l, T - 1), 6);
    }
    // Feature nodes carry their activation.
    expect(byId.get(rootId)!.activation).toBeCloseTo(root.contrib, 6);
  });

  it('renders text, DOT and self-contained HTML', () => {
    const g = pathsToGraph(attribution, levels, { search: SEARCH, prompt: 'p' });
    expect(formatPaths(attribution, levels)).toMatch(new RegExp(`^--- paths of length 2 ---\\n\\[0\\]\\[0\\] ${nodeId(root).replace(/[[\]]/g, '\\$&')}`));
    const dot = toDot(g);
    expect(dot).toMatch(/^digraph circuit \{/);
    for (const e of g.edges) expect(dot).toContain(`"${e.source}" -> "${e.target}"`);
    const html = toHtml(g);
    expect(html).toMatch(/^<!doctype html>/);
    expect(html).not.toMatch(/<script|(src|href)="https?:/); // nothing loaded from elsewhere
    expect((html.match(/<circle /g) ?? []).length).toBe(g.nodes.length);
  });
});

describe('transcoders circuit', () => {
  it('searches from a logit difference and writes the graph', () => {
    ensureDist();
    const out = tempDir();
    const r = runCli(['circuit', modelDir, '--transcoders', transcoderDir, '--prompt', 'The war lasted from the year 1732 to the year 17',
      '--logit-diff', '#5', '#7', '--iters', '2', '--branches', '4', '--out', join(out, 'g.json'), '--dot', join(out, 'g.dot'), '--html', join(out, 'g.html')]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^--- paths of length 2 ---\n\[0\]\[0\] logit\[5-7\]@\d+/);
    const g = JSON.parse(readFileSync(join(out, 'g.json'), 'utf8'));
    expect(g.schema).toBe(GRAPH_SCHEMA);
    expect(g.metadata.root).toMatch(/^logit\[5-7\]@/);
    expect(g.nodes.length).toBeGreaterThan(2);
    const bad = runCli(['circuit', modelDir, '--transcoders', transcoderDir, '--prompt', 'x', '--feature', '9:1']);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/no transcoder for layer 9|layer 9/);
  });
});

describe('graph over tokens and dataset-averaged input x gradient', () => {
  it('sumOverTokens merges positions and preserves every total', () => {
    const g = pathsToGraph(attribution, levels, { search: SEARCH });
    const s = sumOverTokens(g);
    expect(s.nodes.length).toBeLessThanOrEqual(g.nodes.length);
    for (const n of s.nodes) expect(n.id).not.toMatch(/@\d/);
    const total = (xs: { contribution: number }[]) => xs.reduce((a, n) => a + n.contribution, 0);
    expect(total(s.nodes)).toBeCloseTo(total(g.nodes), 8);
    expect(s.edges.reduce((a, e) => a + e.weight, 0)).toBeCloseTo(g.edges.reduce((a, e) => a + e.weight, 0), 8);
    expect(new Set(s.edges.map((e) => `${e.source}>${e.target}`)).size).toBe(s.edges.length);
  });

  it('mean ixg: matches the independent reference activations, and sums to n . (upstream output - b_dec_out)', async () => {
    const up = attribution.transcoders.get(1)!;
    const down = attribution.transcoders.get(3)!;
    const F = 7;
    const rng = new Rng(11);
    const sequences = Array.from({ length: 5 }, () => Array.from({ length: 8 }, () => rng.int(300)));
    const ixg = await meanInputTimesGradient(attribution.replacement, 1, 3, F, sequences, { batchSize: 2 });
    const { cache } = await model.run(sequences, { cache: [up.config.hookIn], logits: false });
    const d = 32;
    const rows = 5 * 8;
    const x = Tensor.from(cache[up.config.hookIn]!.toFloat32Array(), [rows, d]);
    const dir = tempDir();
    writeSafetensors(join(dir, 'p.safetensors'), up.parameters());
    writeFileSync(join(dir, 'cfg.json'), JSON.stringify({ arch: 'relu', reconstruction: 'fvu' }));
    writeSafetensors(join(dir, 'd.safetensors'), { x, y: x });
    runPython('transcoder_reference.py', ['forward', join(dir, 'p.safetensors'), join(dir, 'cfg.json'), join(dir, 'd.safetensors'), join(dir, 'o.safetensors')]);
    const ref = (await readSafetensors(join(dir, 'o.safetensors'))).tensors;
    const f = ref.f!.toFloat32Array();
    const Wenc = down.parameters().W_enc.toFloat32Array();
    const Wdec = up.parameters().W_dec.toFloat32Array();
    const n = Float32Array.from({ length: d }, (_, i) => Wenc[i * CIRCUIT_DSAE + F]!);
    const m = CIRCUIT_DSAE;
    for (let i = 0; i < m; i++) {
      let g = 0;
      for (let j = 0; j < d; j++) g += Wdec[i * d + j]! * n[j]!;
      let mean = 0;
      for (let r = 0; r < rows; r++) mean += g * f[r * m + i]!;
      expect(ixg[i]).toBeCloseTo(mean / rows, 5);
    }
    // Sum over features: the mean of n . (y_hat - b_dec_out) over positions.
    const yHat = ref.y_hat!.toFloat32Array();
    const b = up.parameters().b_dec_out.toFloat32Array();
    let expected = 0;
    for (let r = 0; r < rows; r++) for (let j = 0; j < d; j++) expected += n[j]! * (yHat[r * d + j]! - b[j]!);
    expect(ixg.reduce((a, v) => a + v, 0)).toBeCloseTo(expected / rows, 4);
    await expect(meanInputTimesGradient(attribution.replacement, 3, 1, 0, sequences)).rejects.toThrow(/must not come after/);
  });
});
