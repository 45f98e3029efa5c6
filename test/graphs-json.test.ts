/**
 * The viewer JSON (lib/graphs/graph-json.ts), its folder with graph-metadata.json, and the adjacency file
 * (lib/graphs/adjacency-file.ts). Every file written is validated against the committed JSON Schema with
 * a separate ajv instance, configured as Neuronpedia validates uploads; the adjacency file is read back
 * with our safetensors reader and with the independent Python one.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { FormatError, InvalidArgumentError } from '../lib/errors.js';
import { readSafetensors } from '../lib/io/safetensors.js';
import { LOCK_FILE } from '../lib/io/lock.js';
import { writeAdjacencyFile } from '../lib/graphs/adjacency-file.js';
import { NODE_KIND_CODES, toDenseValues, toSparseAdjacency, type AttributionGraph } from '../lib/graphs/graph.js';
import { buildGraphJson, cantorPairing, checkSlug, GRAPH_METADATA_FILE, validateGraphJson, writeGraphFiles, type GraphJson } from '../lib/graphs/graph-json.js';
import { pruneGraph } from '../lib/graphs/prune.js';
import { tempDir } from './helpers/fixtures.js';
import { handBuiltGraph, handBuiltGraphWithInputs, randomDag } from './helpers/graphs.js';
import { PYTHON } from './helpers/reference.js';

const SCHEMA_FILE = new URL('../lib/graphs/attribution-graph.schema.json', import.meta.url);
const schema = JSON.parse(readFileSync(SCHEMA_FILE, 'utf8'));
const validateAgainstSchema = new Ajv({ allErrors: true, strict: false }).compile(schema);
/** graph-metadata.json entries are the graphs' metadata objects. */
const validateMetadata = new Ajv({ allErrors: true, strict: false }).compile(schema.properties.metadata);

function expectSchemaValid(json: unknown): void {
  if (!validateAgainstSchema(json)) throw new Error(`schema errors: ${JSON.stringify(validateAgainstSchema.errors?.slice(0, 5))}`);
}

/** Ids unique, every link between written nodes, each link a kept edge with weight A[target, source]. */
function expectConsistent(graph: AttributionGraph, json: GraphJson): void {
  const ids = json.nodes.map((node) => node.node_id);
  expect(new Set(ids).size).toBe(ids.length);
  const idSet = new Set(ids);
  for (const link of json.links) {
    expect(idSet.has(link.source)).toBe(true);
    expect(idSet.has(link.target)).toBe(true);
  }
  const linkSet = new Set(json.links.map((link) => `${link.source}->${link.target}`));
  expect(linkSet.size).toBe(json.links.length);
  for (const node of json.nodes) {
    const linked = json.links.some((link) => link.source === node.node_id || link.target === node.node_id);
    if (node.feature_type === 'cross layer transcoder' || node.feature_type === 'mlp reconstruction error') expect(linked).toBe(true);
  }
  const dense = toDenseValues(graph.adjacency);
  const n = graph.nodes.length;
  const byId = new Map<string, number>();
  json.nodes.forEach((node) => byId.set(node.node_id, -1));
  graph.nodes.forEach((node, i) => {
    const id = node.kind === 'feature' ? `${node.layer}_${node.index}_${node.position}`
      : node.kind === 'error' ? `${node.layer}_-1_${node.position}`
        : node.kind === 'token' ? `E_${node.index}_${node.position}`
          : node.kind === 'positional' ? `E_-1_${node.position}`
            : node.kind === 'logit' ? `${graph.nLayers + 1}_${node.index}_${node.position}` : null;
    if (id !== null && byId.has(id)) byId.set(id, i);
  });
  for (const link of json.links) {
    const s = byId.get(link.source)!;
    const t = byId.get(link.target)!;
    expect(link.weight).toBe(dense[t * n + s]);
    expect(link.weight).not.toBe(0);
  }
}

describe('graph JSON', () => {
  it('has circuit-tracer\'s ids, kinds and fields for the hand-built graph', () => {
    const graph = handBuiltGraph();
    const pruned = pruneGraph(graph);
    const json = buildGraphJson(graph, pruned, { slug: 'hand', createTimeMs: 1 });
    expectSchemaValid(json);
    expectConsistent(graph, json);
    // Kept: f1, f2, f3, e7, both tokens, both logits (pruning test). The error id of the newer
    // convention: the older "0_{layer}_{pos}" would make e7 "0_1_1", the id of f1.
    expect(json.nodes.map((node) => node.node_id)).toEqual(['0_1_1', '1_0_1', '1_2_1', '1_-1_1', 'E_5_0', 'E_11_1', '3_7_1', '3_9_1']);
    const [f1, f2, f3, e7, t0, , l7, l9] = json.nodes;
    expect(f1).toEqual({
      node_id: '0_1_1', feature: 2, layer: '0', ctx_idx: 1, feature_type: 'cross layer transcoder', token_prob: 0, is_target_logit: false,
      run_idx: 0, reverse_ctx_idx: 0, jsNodeId: '0_1-0', clerp: '', influence: pruned.cumulativeInfluence[1], activation: 2.25,
    });
    expect([f2!.feature, f3!.feature]).toEqual([cantorPairing(1, 0), cantorPairing(1, 2)]);
    expect([cantorPairing(1, 0), cantorPairing(1, 2), cantorPairing(23, 5458)]).toEqual([1, 8, 15_028_879]);
    expect(e7).toMatchObject({ feature: -1, layer: '1', ctx_idx: 1, feature_type: 'mlp reconstruction error', jsNodeId: '1_-1-1', activation: null });
    expect(t0).toMatchObject({ feature: 0, layer: 'E', ctx_idx: 0, feature_type: 'embedding', jsNodeId: 'E_5-0', activation: null });
    expect(l7).toMatchObject({ feature: 7, layer: '3', ctx_idx: 1, feature_type: 'logit', token_prob: 0.6, is_target_logit: true, jsNodeId: 'L_7-1', clerp: 'Output " a" (p=0.600)' });
    expect(l9).toMatchObject({ token_prob: 0.3, is_target_logit: false, clerp: 'Output " b" (p=0.300)' });
    expect(json.links).toHaveLength(11);
    expect(json.links[0]).toEqual({ source: 'E_5_0', target: '0_1_1', weight: 1 });
    expect(json.metadata).toMatchObject({
      slug: 'hand', scan: 'hand-model', transcoder_list: ['tc-l0', 'tc-l1'], prompt_tokens: ['<bos>', ' x⏎'], prompt: '<bos> x\n',
      node_threshold: 0.8, schema_version: 1, pruning_settings: { node_threshold: 0.8, edge_threshold: 0.98 }, info: { create_time_ms: 1 },
    });
    expect(json.metadata.info.generator.name).toBe('transcoders');
    expect(json.metadata.info.generator.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(json.qParams).toEqual({ pinnedIds: [], supernodes: [], linkType: 'both', clickedId: '', sg_pos: '' });
  });

  it('writes positional nodes as embeddings (or omits them) and never writes bias nodes', () => {
    const graph = handBuiltGraphWithInputs();
    const pruned = pruneGraph(graph, { nodeThreshold: 0.95 });
    const json = buildGraphJson(graph, pruned, { slug: 'inputs' });
    expectSchemaValid(json);
    expectConsistent(graph, json);
    const positional = json.nodes.filter((node) => node.node_id.startsWith('E_-1_'));
    expect(positional.map((node) => node.node_id)).toEqual(['E_-1_0', 'E_-1_1']);
    expect(positional[1]).toMatchObject({ feature: -1, layer: 'E', ctx_idx: 1, feature_type: 'embedding', jsNodeId: 'E_-1-1', clerp: 'Pos: 1' });
    expect(json.links.some((link) => link.source === 'E_-1_1')).toBe(true);
    // Bias nodes (indices 12, 13) are kept by pruning but have no JSON kind: neither they nor their links appear.
    expect(pruned.nodeMask[12]! & pruned.nodeMask[13]!).toBe(1);
    expect(json.nodes).toHaveLength(new Set(json.nodes.map((node) => `${node.layer}_${node.feature}_${node.ctx_idx}`)).size);
    // Every kept edge is a link except those from the bias nodes.
    const n = graph.nodes.length;
    let kept = 0;
    let fromBias = 0;
    pruned.edgeMask.forEach((flag, i) => {
      if (!flag) return;
      kept++;
      if (i % n === 12 || i % n === 13) fromBias++;
    });
    expect(fromBias).toBeGreaterThan(0);
    expect(json.links).toHaveLength(kept - fromBias);

    const omitted = buildGraphJson(graph, pruned, { slug: 'inputs', positionalNodes: 'omit' });
    expectSchemaValid(omitted);
    expect(omitted.nodes.some((node) => node.node_id.startsWith('E_-1_'))).toBe(false);
    expect(omitted.links.some((link) => link.source.startsWith('E_-1_'))).toBe(false);
    expect(() => buildGraphJson(graph, pruned, { slug: 'x', positionalNodes: 'bias' as 'omit' })).toThrow(/positionalNodes must be 'embedding' or 'omit'/);
  });

  it('takes the attribution\'s variants: positional index = position, a bias node after the last block, a direction target', () => {
    const base = handBuiltGraphWithInputs();
    const nodes = base.nodes.map((node, i) => {
      if (node.kind === 'positional') return { ...node, index: node.position };
      if (i === 13) return { ...node, layer: 2 }; // the biases after the last block, read by a logit
      if (i === 15) return { ...node, index: -1, label: 'direction' };
      return node;
    });
    const graph = { ...base, nodes };
    const json = buildGraphJson(graph, pruneGraph(graph), { slug: 'variants' });
    expectSchemaValid(json);
    expect(json.nodes.map((node) => node.node_id)).toContain('3_-1_1');
    expect(json.nodes.find((node) => node.node_id === '3_-1_1')).toMatchObject({ feature: -1, jsNodeId: 'L_-1-1', clerp: 'Output "direction" (p=0.300)' });
    const badBias = { ...graph, nodes: nodes.map((node, i) => (i === 13 ? { ...node, layer: 3 } : node)) };
    expect(() => pruneGraph(badBias)).toThrow(/nodes\[13\]\.layer is 3; a bias node needs a layer in \[0, 2\]/);
  });

  it('is the same from the sparse and the dense form of a random graph, and valid', () => {
    const { dense, sparse } = randomDag(11);
    const fromDense = buildGraphJson(dense, pruneGraph(dense), { slug: 'r', createTimeMs: 5 });
    const fromSparse = buildGraphJson(sparse, pruneGraph(sparse), { slug: 'r', createTimeMs: 5 });
    expect(fromSparse).toEqual(fromDense);
    expectSchemaValid(fromSparse);
    expectConsistent(dense, fromDense);
    expect(fromSparse.links.length).toBeGreaterThan(5);
  });

  it('refuses non-finite values, naming the node or link', () => {
    const graph = handBuiltGraph();
    const pruned = pruneGraph(graph);
    const values = Float32Array.from(toDenseValues(graph.adjacency));
    values[10 * 12 + 2] = NaN;
    expect(() => buildGraphJson({ ...graph, adjacency: { form: 'dense', n: 12, values } }, pruned, { slug: 'x' })).toThrow(
      /weight A\[10, 2\] from node 2 \(feature layer 1 index 0 at position 1\) to node 10 \(logit 7 at position 1\) is NaN/,
    );
    const badInfluence = { ...pruned, cumulativeInfluence: Float64Array.from(pruned.cumulativeInfluence) };
    badInfluence.cumulativeInfluence[2] = NaN;
    expect(() => buildGraphJson(graph, badInfluence, { slug: 'x' })).toThrow(/the influence of node 2 \(feature layer 1 index 0 at position 1\) is NaN/);
    const json = buildGraphJson(graph, pruned, { slug: 'x' });
    json.links[3]!.weight = NaN;
    expect(() => validateGraphJson(json)).toThrow(/links\[3\]\.weight \(from "E_11_1" to "1_0_1"\) is NaN; JSON files must hold finite numbers only/);
    const json2 = buildGraphJson(graph, pruned, { slug: 'x' });
    json2.nodes[0]!.activation = Infinity;
    expect(() => validateGraphJson(json2)).toThrow(/nodes\[0\]\.activation \(node "0_1_1"\) is Infinity/);
  });

  it('refuses JSON that does not match the schema, naming the field', () => {
    const graph = handBuiltGraph();
    const json = buildGraphJson(graph, pruneGraph(graph), { slug: 'x' });
    (json.nodes[2] as unknown as { layer: number }).layer = 1;
    delete (json.qParams as Partial<GraphJson['qParams']>).sg_pos;
    expect(() => validateGraphJson(json)).toThrow(/does not match attribution-graph.schema.json: \/qParams must have required property 'sg_pos'; \/nodes\/2\/layer must be string/);
  });

  it('checks slugs', () => {
    for (const bad of ['', '../x', 'a/b', 'a\\b', '.hidden', 'x'.repeat(201), 'a b']) expect(() => checkSlug(bad)).toThrow(InvalidArgumentError);
    expect(() => checkSlug('gemma-2-2b_dallas.v1')).not.toThrow();
    expect(() => buildGraphJson(handBuiltGraph(), pruneGraph(handBuiltGraph()), { slug: 'a/b' })).toThrow(/graph slug "a\/b" is not allowed/);
  });
});

describe('graph folders', () => {
  const graph = handBuiltGraph();
  const pruned = pruneGraph(graph);
  const jsonFor = (slug: string, prompt = graph.prompt) => buildGraphJson({ ...graph, prompt }, pruned, { slug });

  it('writes {slug}.json and keeps graph-metadata.json up to date, one entry per slug', async () => {
    const dir = join(tempDir('transcoders-graphs-'), 'graphs');
    const a = jsonFor('first');
    const b = jsonFor('second');
    const written = await writeGraphFiles(dir, 'first', a);
    expect(written).toEqual({ graphFile: join(dir, 'first.json'), metadataFile: join(dir, GRAPH_METADATA_FILE) });
    await writeGraphFiles(dir, 'second', b);
    const readJson = (name: string) => JSON.parse(readFileSync(join(dir, name), 'utf8'));
    expect(readJson(GRAPH_METADATA_FILE).graphs.map((g: { slug: string }) => g.slug)).toEqual(['first', 'second']);
    expect(readJson('first.json')).toEqual(a);
    expectSchemaValid(readJson('first.json'));
    expectSchemaValid(readJson('second.json'));

    const rewritten = jsonFor('first', 'another prompt');
    await writeGraphFiles(dir, 'first', rewritten);
    const index = readJson(GRAPH_METADATA_FILE);
    expect(index.graphs.map((g: { slug: string }) => g.slug)).toEqual(['second', 'first']);
    expect(index.graphs[1]).toEqual(rewritten.metadata);
    for (const entry of index.graphs) expect(validateMetadata(entry), JSON.stringify(validateMetadata.errors)).toBe(true);
    expect(readJson('first.json').metadata.prompt).toBe('another prompt');
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
  });

  it('a corrupt graph-metadata.json is an error naming the file, and nothing is written', async () => {
    const dir = tempDir('transcoders-graphs-');
    const index = join(dir, GRAPH_METADATA_FILE);
    for (const [text, why] of [['{"graphs": [', /invalid JSON/], ['{"graphs": 3}', /field 'graphs' is 3/], ['{"graphs": [{"name": "x"}]}', /graphs\[0\] is \{"name":"x"\}, not metadata with a slug/], ['[]', /the top level is \[\]/]] as const) {
      writeFileSync(index, text);
      const attempt = writeGraphFiles(dir, 'first', jsonFor('first'));
      await expect(attempt).rejects.toThrow(FormatError);
      await expect(writeGraphFiles(dir, 'first', jsonFor('first'))).rejects.toThrow(new RegExp(`${index.replaceAll('/', '\\/')}: not a valid graph index.*${why.source}`));
      expect(existsSync(join(dir, 'first.json'))).toBe(false);
      expect(readFileSync(index, 'utf8')).toBe(text);
    }
  });

  it('refuses a slug that differs from the JSON, and waits for another writer\'s lock', async () => {
    const dir = tempDir('transcoders-graphs-');
    await expect(writeGraphFiles(dir, 'other', jsonFor('first'))).rejects.toThrow(/slug "other" differs from the graph's metadata.slug "first"/);
    await expect(writeGraphFiles(dir, '../first', jsonFor('first'))).rejects.toThrow(/not allowed/);
    // A lock held by a live process (this one, as another writer would hold it) makes the writer wait, then give up.
    const lock = join(dir, LOCK_FILE);
    writeFileSync(lock, JSON.stringify({ pid: process.pid, host: hostname(), since: 'then', what: 'another writer' }));
    await expect(writeGraphFiles(dir, 'first', jsonFor('first'), { lockTimeoutMs: 150 })).rejects.toThrow(/is in use by process \d+ \(another writer/);
    // The other writer finishes while this one waits.
    const released = new Promise<void>((resolve) => setTimeout(() => {
      rmSync(lock);
      resolve();
    }, 100));
    const waiting = writeGraphFiles(dir, 'first', jsonFor('first'), { lockTimeoutMs: 5000 });
    await released;
    await expect(waiting).resolves.toMatchObject({ graphFile: join(dir, 'first.json') });
  });
});

describe('adjacency file', () => {
  it('round-trips through our safetensors reader and the independent Python one', async () => {
    const graph = handBuiltGraphWithInputs();
    const sparse: AttributionGraph = { ...graph, adjacency: toSparseAdjacency(graph.adjacency) };
    const file = join(tempDir('transcoders-adjacency-'), 'graph.safetensors');
    writeAdjacencyFile(file, sparse);
    const { tensors, metadata } = await readSafetensors(file);
    const n = graph.nodes.length;
    expect(tensors.adjacency!.shape).toEqual([n, n]);
    expect(tensors.adjacency!.dtype).toBe('float32');
    expect(tensors.adjacency!.toFloat32Array()).toEqual(toDenseValues(graph.adjacency));
    expect([...(tensors.node_kind!.toTypedArray() as Int32Array)]).toEqual(graph.nodes.map((node) => NODE_KIND_CODES[node.kind]));
    expect([...(tensors.node_layer!.toTypedArray() as Int32Array)]).toEqual(graph.nodes.map((node) => node.layer));
    expect([...(tensors.node_position!.toTypedArray() as Int32Array)]).toEqual(graph.nodes.map((node) => node.position));
    expect([...(tensors.node_index!.toTypedArray() as Int32Array)]).toEqual(graph.nodes.map((node) => node.index));
    expect([...tensors.node_activation!.toFloat32Array()]).toEqual(graph.nodes.map((node) => node.activation));
    expect([...tensors.node_probability!.toFloat32Array()]).toEqual(graph.nodes.map((node) => Math.fround(node.probability ?? 0)));
    expect(metadata).toMatchObject({ format: 'transcoders.attribution-graph', version: '1', prompt: graph.prompt, scan: 'hand-model', n_layers: '2' });
    expect(JSON.parse(metadata.node_kind_codes!)).toEqual(NODE_KIND_CODES);
    expect(JSON.parse(metadata.tokens!)).toEqual(graph.tokens);

    const ref = new URL('./reference/', import.meta.url).pathname;
    const script = `import sys, json; sys.path.insert(0, ${JSON.stringify(ref)})
from safetensors_io import load_file
t = load_file(${JSON.stringify(file)})
print(json.dumps({k: {"dtype": str(v.dtype), "shape": list(v.shape), "values": v.flatten().tolist()} for k, v in t.items()}))`;
    const r = spawnSync(PYTHON, ['-c', script], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const py = JSON.parse(r.stdout) as Record<string, { dtype: string; shape: number[]; values: number[] }>;
    expect(py.adjacency!.shape).toEqual([n, n]);
    expect(py.adjacency!.dtype).toBe('torch.float32');
    expect(py.adjacency!.values).toEqual([...toDenseValues(graph.adjacency)]);
    expect(py.node_kind).toEqual({ dtype: 'torch.int32', shape: [n], values: graph.nodes.map((node) => NODE_KIND_CODES[node.kind]) });
    expect(py.node_position!.values).toEqual(graph.nodes.map((node) => node.position));
    expect(Object.keys(py).sort()).toEqual(['adjacency', 'node_activation', 'node_index', 'node_kind', 'node_layer', 'node_position', 'node_probability']);
  });

  it('refuses a graph whose dense adjacency exceeds the limit, naming the size', () => {
    const file = join(tempDir('transcoders-adjacency-'), 'graph.safetensors');
    expect(() => writeAdjacencyFile(file, handBuiltGraph(), { maxDenseBytes: 100 })).toThrow(/the dense adjacency of 12 nodes would take 576 B \(12² float32\), above the limit of 100 B/);
    expect(existsSync(file)).toBe(false);
  });
});
