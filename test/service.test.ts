/**
 * The service (lib/service/server.ts) through Fastify's inject, on the shipped model and its
 * transcoders: graphs computed on request, saved, listed and served on circuit-tracer's routes and
 * valid against the graph schema; feature cards and byte ranges of the compact layout; bad bodies,
 * traversal slugs and out-of-range ids get 400/404 naming the problem; a burst of graph requests gets
 * answers or 429s with Retry-After, never a 500, and the service answers afterwards; the token; the
 * refusal to bind beyond loopback without one.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { ReplacementModel } from '../lib/circuits/replacement-model.js';
import { tokenizeToFile } from '../lib/data/tokenize.js';
import { collectFeatureStats, writeFeatureCards } from '../lib/features/dashboards.js';
import { FeatureFiles } from '../lib/features/feature-files.js';
import { validateGraphJson } from '../lib/graphs/graph-json.js';
import { createServer, listen } from '../lib/service/server.js';
import { tempDir } from './helpers/fixtures.js';

const SHIPPED = new URL('../models/greater-than', import.meta.url).pathname;
const PROMPT = 'The war lasted from the year 1732 to the year 17';

let replacement: ReplacementModel;
let graphsDir: string;
let featuresDir: string;
let app: FastifyInstance;

beforeAll(async () => {
  replacement = await ReplacementModel.load(SHIPPED, [join(SHIPPED, 'transcoders')]);
  const work = tempDir('transcoders-service-');
  writeFileSync(join(work, 'data.txt'), Array.from({ length: 60 }, (_, i) => `The war lasted from the year 17${10 + i} to the year 17${20 + (i % 70)}.`).join('\n\n'));
  const tokenFile = join(work, 'tokens.safetensors');
  await tokenizeToFile([join(work, 'data.txt')], replacement.model.tokenizer!, tokenFile, { contextSize: 16 });
  featuresDir = join(work, 'features');
  await writeFeatureCards(replacement, await collectFeatureStats(replacement, tokenFile, { examples: 3, quantiles: 2 }), featuresDir, { scan: 'greater-than' });
  graphsDir = join(work, 'graphs');
  app = createServer(replacement, { graphsDir, featuresDir, maxPromptTokens: 40, maxQueuedJobs: 2 });
});

afterAll(async () => {
  await app?.close();
});

describe('the service', () => {
  it('computes a graph on request, saves it, lists it and serves it on circuit-tracer\'s routes', async () => {
    const r = await app.inject({ method: 'POST', url: '/api/graph', payload: { prompt: PROMPT, slug: 'war-1732' } });
    expect(r.statusCode, r.body).toBe(200);
    const graph = r.json();
    validateGraphJson(graph);
    expect(graph.metadata.slug).toBe('war-1732');
    expect(graph.nodes.some((n: { feature_type: string }) => n.feature_type === 'cross layer transcoder')).toBe(true);
    const saved = JSON.parse(readFileSync(join(graphsDir, 'war-1732.json'), 'utf8'));
    expect(saved).toEqual(graph);
    const list = (await app.inject({ url: '/api/graphs' })).json() as { graphs: { slug: string }[] };
    expect(list.graphs.map((g) => g.slug)).toContain('war-1732');
    expect((await app.inject({ url: '/data/graph-metadata.json' })).json()).toEqual(list);
    expect((await app.inject({ url: '/api/graphs/war-1732' })).json()).toEqual(graph);
    expect((await app.inject({ url: '/graph_data/war-1732.json' })).json()).toEqual(graph);
    expect((await app.inject({ url: '/api/graphs/none-such' })).statusCode).toBe(404);
  });

  it.each([
    [{}, /must have required property 'prompt'/],
    [{ prompt: 5 }, /prompt must be string/],
    [{ prompt: PROMPT, extra: 1 }, /must NOT have additional properties/],
    [{ prompt: PROMPT, maxFeatureNodes: -1 }, /maxFeatureNodes must be >= 1/],
    [{ prompt: PROMPT, nodeThreshold: 2 }, /nodeThreshold must be <= 1/],
    [{ prompt: PROMPT, slug: '../../etc/passwd' }, /slug must match pattern/],
    [{ prompt: `${PROMPT} `.repeat(20) }, /prompt: \d+ tokens, more than this service's limit of 40/],
    [{ prompt: PROMPT, maxFeatureNodes: 20000 }, /maxFeatureNodes: 20000 is more than this service's limit/],
  ])('answers a bad graph request %j with a 400 naming the problem', async (payload, message) => {
    const r = await app.inject({ method: 'POST', url: '/api/graph', payload });
    expect(r.statusCode).toBe(400);
    expect(r.json().error).toMatch(message);
  });

  it('refuses traversal in slugs and file names', async () => {
    for (const url of ['/api/graphs/..%2F..%2Fetc%2Fpasswd', '/graph_data/..%2Fgraph-metadata.json', '/features/..%2F..%2Fetc%2Fpasswd', '/api/graphs/.hidden']) {
      const r = await app.inject({ url });
      expect([400, 404], `${url}: ${r.statusCode}`).toContain(r.statusCode);
      expect(r.body).not.toContain('root:');
    }
    expect((await app.inject({ url: '/features/../../etc/passwd' })).statusCode).toBe(404);
  });

  it('serves feature cards, and the compact files with byte ranges as the viewer fetches them', async () => {
    const files = new FeatureFiles(featuresDir);
    const r = await app.inject({ url: '/api/features/1/3' });
    expect(r.statusCode).toBe(200);
    expect(r.json()).toEqual(files.read(1, 3));
    expect((await app.inject({ url: `/api/features/1/${files.features(1)}` })).json().error).toMatch(/out of range/);
    expect((await app.inject({ url: '/api/features/9/0' })).statusCode).toBe(404);
    expect((await app.inject({ url: '/api/features/x/0' })).statusCode).toBe(400);
    const index = await app.inject({ url: '/features/index.json.gz' });
    expect(index.statusCode).toBe(200);
    expect(index.rawPayload).toEqual(readFileSync(join(featuresDir, 'index.json.gz')));
    // The record of feature 3 of layer 1, as circuit-tracer's viewer asks for it (offsets[f]..offsets[f + 1]).
    const { offsets } = (JSON.parse((await import('node:zlib')).gunzipSync(index.rawPayload).toString()) as { offsets: number[] }[])[1]!;
    const part = await app.inject({ url: '/features/layer_1.bin', headers: { range: `bytes=${offsets[3]}-${offsets[4]! - 1}` } });
    expect(part.statusCode).toBe(206);
    expect(part.headers['content-range']).toBe(`bytes ${offsets[3]}-${offsets[4]! - 1}/${readFileSync(join(featuresDir, 'layer_1.bin')).length}`);
    expect(part.rawPayload).toEqual(readFileSync(join(featuresDir, 'layer_1.bin')).subarray(offsets[3], offsets[4]));
    expect((await app.inject({ url: '/features/layer_1.bin', headers: { range: 'bytes=99999999-' } })).statusCode).toBe(416);
  });

  it('a burst of graph requests gets answers or 429s with Retry-After, never a 500; the service answers afterwards', async () => {
    const rs = await Promise.all(Array.from({ length: 10 }, (_, i) => app.inject({ method: 'POST', url: '/api/graph', payload: { prompt: PROMPT, slug: `burst-${i}` } })));
    const codes = rs.map((r) => r.statusCode);
    expect(codes.filter((c) => c === 200).length).toBeGreaterThanOrEqual(3);
    expect(codes.filter((c) => c === 429).length).toBeGreaterThan(0);
    expect(codes.every((c) => c === 200 || c === 429)).toBe(true);
    for (const r of rs.filter((x) => x.statusCode === 429)) expect(r.headers['retry-after']).toBe('5');
    const health = (await app.inject({ url: '/api/health' })).json();
    expect(health).toMatchObject({ ok: true, layers: [0, 1, 2], jobs: { running: 0, waiting: 0, stopped: 0 } });
  });

  it('requires the token when it has one; refuses to bind beyond loopback without one', async () => {
    const secured = createServer(replacement, { token: 'open-sesame-123' });
    expect((await secured.inject({ url: '/api/graphs' })).statusCode).toBe(401);
    expect((await secured.inject({ url: '/api/graphs', headers: { authorization: 'Bearer wrong-token-000' } })).statusCode).toBe(401);
    expect((await secured.inject({ url: '/api/graphs', headers: { authorization: 'Bearer open-sesame-123' } })).statusCode).toBe(404);
    expect((await secured.inject({ url: '/api/health' })).statusCode).toBe(200);
    await secured.close();
    const open = createServer(replacement);
    await expect(listen(open, { host: '0.0.0.0', port: 0 })).rejects.toThrow(/refusing to serve on 0\.0\.0\.0 without a token/);
    // On loopback it listens, and answers real HTTP requests.
    const address = await listen(open, { port: 0 });
    expect(address).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(((await (await fetch(`${address}/api/health`)).json()) as { ok: boolean }).ok).toBe(true);
    await open.close();
    expect(() => createServer(replacement, { token: 'short' })).toThrow(/at least 8 characters/);
  });
});
