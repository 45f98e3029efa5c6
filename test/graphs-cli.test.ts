/**
 * `transcoders graph`, `intervene` and `steer` on the shipped model and its transcoders: the graph
 * files validate against the committed JSON Schema (with a separate ajv instance), node ids and kinds
 * follow circuit-tracer's conventions, every link joins two written nodes, graph-metadata.json lists the
 * graph; the adjacency file holds the unpruned n x n matrix and the node table of all six kinds. Bad input gets a
 * one-line error and exit code 1 or 2: a prompt longer than the context, an unknown --logit-diff token,
 * transcoders of another model, zero active features.
 */
import { readFileSync } from "node:fs";
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { beforeAll, describe, expect, it } from 'vitest';
import { readSafetensors } from '../lib/io/safetensors.js';
import { ensureDist, runCli } from './helpers/cli.js';
import { makeTempModel, tempDir, TINY_GPT2 } from './helpers/fixtures.js';

const MODEL = 'models/greater-than';
const TRANSCODERS = 'models/greater-than/transcoders';
const PROMPT = 'The war lasted from the year 1732 to the year 17';
const SCHEMA = JSON.parse(readFileSync(new URL('../lib/graphs/attribution-graph.schema.json', import.meta.url), 'utf8'));

beforeAll(() => ensureDist());

describe('transcoders graph', () => {
  it('writes viewer files for the shipped model that validate against the schema, and the adjacency file', async () => {
    const out = tempDir('transcoders-graph-cli-');
    const adjacency = join(out, 'adj', 'graph.safetensors');
    const r = runCli(['graph', MODEL, '--transcoders', TRANSCODERS, '--prompt', PROMPT, '--out', out, '--slug', 'greater-than', '--adjacency', adjacency, '--json']);
    expect(r.status, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout);
    expect(summary.keptNodes).toBeGreaterThan(10);
    const json = JSON.parse(readFileSync(join(out, 'greater-than.json'), 'utf8'));
    const validate = new Ajv({ allErrors: true, strict: false }).compile(SCHEMA);
    expect(validate(json), JSON.stringify(validate.errors?.slice(0, 3))).toBe(true);
    expect(json.metadata).toMatchObject({ slug: 'greater-than', scan: 'greater-than', schema_version: 1, node_threshold: 0.8 });
    expect(json.metadata.prompt_tokens).toHaveLength(13);
    const ids = new Set<string>(json.nodes.map((n: { node_id: string }) => n.node_id));
    expect(ids.size).toBe(json.nodes.length);
    for (const n of json.nodes) {
      if (n.feature_type === 'cross layer transcoder') expect(n.node_id).toBe(`${n.layer}_${n.node_id.split('_')[1]}_${n.ctx_idx}`);
      else if (n.feature_type === 'mlp reconstruction error') expect(n.node_id).toMatch(new RegExp(`^${n.layer}_-1_${n.ctx_idx}$`));
      else if (n.feature_type === 'embedding') expect(n.node_id).toMatch(/^E_-?\d+_\d+$/);
      else if (n.feature_type === 'logit') expect(n.node_id).toBe(`4_${n.feature}_12`);
      else throw new Error(`unexpected feature_type ${n.feature_type}`);
    }
    expect(json.nodes.filter((n: { feature_type: string }) => n.feature_type === 'logit').some((n: { is_target_logit: boolean }) => n.is_target_logit)).toBe(true);
    for (const l of json.links) {
      expect(ids.has(l.source), l.source).toBe(true);
      expect(ids.has(l.target), l.target).toBe(true);
      expect(Number.isFinite(l.weight)).toBe(true);
    }
    const index = JSON.parse(readFileSync(join(out, 'graph-metadata.json'), 'utf8'));
    expect(index.graphs.map((g: { slug: string }) => g.slug)).toEqual(['greater-than']);

    // The unpruned adjacency: n x n over every node, kinds coded.
    const { tensors } = await readSafetensors(adjacency);
    const n = tensors.node_kind!.shape[0]!;
    expect(tensors.adjacency!.shape).toEqual([n, n]);
    const kinds = tensors.node_kind!.toTypedArray() as Int32Array;
    expect(new Set(kinds)).toEqual(new Set([0, 1, 2, 3, 4, 5]));
    expect(n).toBe(summary.nodes);
  });

  it('bad input: long prompt, unknown --logit-diff token, transcoders of another model, zero active features', () => {
    const out = tempDir('transcoders-graph-bad-');
    const long = runCli(['graph', MODEL, '--transcoders', TRANSCODERS, '--prompt', 'year '.repeat(300), '--out', out]);
    expect(long.status).not.toBe(0);
    expect(long.stderr).toMatch(/tokens, longer than the model's context of \d+/);
    const token = runCli(['graph', MODEL, '--transcoders', TRANSCODERS, '--prompt', PROMPT, '--out', out, '--logit-diff', ' zzzqqq', '56']);
    expect(token.status).toBe(2);
    expect(token.stderr).toMatch(/--logit-diff ' zzzqqq' is \d+ tokens/);
    const other = makeTempModel({ ...TINY_GPT2, nCtx: 64 });
    const mismatch = runCli(['graph', other, '--transcoders', TRANSCODERS, '--prompt', PROMPT, '--out', out]);
    expect(mismatch.status).not.toBe(0);
    expect(mismatch.stderr.trim().split('\n')).toHaveLength(1);
    expect(mismatch.stderr).toMatch(/layer|width|dIn|transcoder/);
    // Zero active features: a transcoder set whose encoder biases are very negative.
    const dead = tempDir('transcoders-dead-');
    const r = runCli(['convert', TRANSCODERS, dead, '--to', 'native']);
    if (r.status !== 0) throw new Error(r.stderr);
    return deadSet(dead).then(() => {
      const none = runCli(['graph', MODEL, '--transcoders', dead, '--prompt', PROMPT, '--out', out]);
      expect(none.status).not.toBe(0);
      expect(none.stderr).toMatch(/no transcoder feature is active on this prompt/);
    });
  });
});

/** Rewrites a circuit-tracer set's encoder biases to -1e4: no feature can fire. */
async function deadSet(dir: string): Promise<void> {
  const { writeSafetensors } = await import('../lib/io/safetensors.js');
  for (const l of [0, 1, 2]) {
    const file = join(dir, `layer_${l}`, 'transcoder.safetensors');
    const { tensors, metadata } = await readSafetensors(file);
    const raw = Object.fromEntries(Object.entries(tensors).map(([k, t]) => {
      const values = t.toFloat32Array();
      if (k === 'b_enc') values.fill(-1e4);
      return [k, { dtype: 'F32' as const, shape: t.shape, bytes: new Uint8Array(values.buffer) }];
    }));
    writeSafetensors(file, raw, metadata);
  }
}

describe('transcoders circuit --viewer: the paper\'s circuit in the same files and node ids', () => {
  it('writes a viewer graph beside an attribution graph; it validates, and shares node ids', () => {
    const out = tempDir('transcoders-circuit-viewer-');
    const g = runCli(['graph', MODEL, '--transcoders', TRANSCODERS, '--prompt', PROMPT, '--out', out, '--slug', 'full']);
    expect(g.status, g.stderr).toBe(0);
    const c = runCli(['circuit', MODEL, '--transcoders', TRANSCODERS, '--prompt', PROMPT, '--logit-diff', '#319', '#292', '--viewer', out, '--slug', 'paper']);
    expect(c.status, c.stderr).toBe(0);
    const validate = new Ajv({ allErrors: true, strict: false }).compile(SCHEMA);
    const paper = JSON.parse(readFileSync(join(out, 'paper.json'), 'utf8'));
    const full = JSON.parse(readFileSync(join(out, 'full.json'), 'utf8'));
    expect(validate(paper), JSON.stringify(validate.errors?.slice(0, 3))).toBe(true);
    const index = JSON.parse(readFileSync(join(out, 'graph-metadata.json'), 'utf8'));
    expect(index.graphs.map((x: { slug: string }) => x.slug).sort()).toEqual(['full', 'paper']);
    const features = (j: { nodes: { feature_type: string; node_id: string }[] }) => new Set(j.nodes.filter((n) => n.feature_type === 'cross layer transcoder').map((n) => n.node_id));
    const [a, b] = [features(paper), features(full)];
    expect(a.size).toBeGreaterThan(3);
    expect([...a].filter((id) => b.has(id)).length).toBeGreaterThan(0);
    expect(paper.nodes.filter((n: { feature_type: string }) => n.feature_type === 'logit')).toHaveLength(1);
    const ids = new Set(paper.nodes.map((n: { node_id: string }) => n.node_id));
    for (const l of paper.links) expect(ids.has(l.source) && ids.has(l.target)).toBe(true);
    const bad = runCli(['circuit', MODEL, '--transcoders', TRANSCODERS, '--prompt', PROMPT, '--feature', '1:494', '--viewer', out]);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/--viewer needs a logit target/);
  });
});

describe('transcoders intervene and steer', () => {
  it('intervene --json: the distribution before and after; steer: greedy generation with and without steering', () => {
    const r = runCli(['intervene', MODEL, '--transcoders', TRANSCODERS, '--prompt', PROMPT, '--set', '1:494@-1=0', '--set', '0:248@8=0', '--top', '3', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.before).toHaveLength(3);
    expect(report.after).toHaveLength(3);
    expect(report.interventions).toEqual([{ layer: 1, feature: 494, value: 0, position: -1 }, { layer: 0, feature: 248, value: 0, position: 8 }]);
    expect(report.after[0].prob).not.toBe(report.before[0].prob);
    const s = runCli(['steer', MODEL, '--transcoders', TRANSCODERS, '--prompt', 'The war lasted from the year 1732 to the year', '--set', '1:494=10', '--max-new-tokens', '2', '--json']);
    expect(s.status, s.stderr).toBe(0);
    const steered = JSON.parse(s.stdout);
    expect(steered.unsteered.tokens).toHaveLength(2);
    expect(steered.steering).toEqual([{ layer: 1, feature: 494, value: 10, position: 'new' }]);
    const bad = runCli(['intervene', MODEL, '--transcoders', TRANSCODERS, '--prompt', PROMPT, '--set', '1:494=0']);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/--set must look like L:F@POS=VALUE/);
  });
});

