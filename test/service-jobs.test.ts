/**
 * The service's jobs (lib/service/server.ts, job-queue.ts, feature-cards.ts) on the shipped model:
 * graph progress as server-sent events; interventions (scale 1 is the identity; a value equals the
 * library call; bad interventions get 400s naming them); steered generation (no steering is the
 * baseline); feature cards computed on demand; the viewer's qParams saved into the graph file; time
 * limits (503 + Retry-After, the queue freed); a client that disconnects mid-job stops it and the
 * service goes on answering; 50 concurrent clients get correct answers or 429s, never a 500, within
 * a memory bound.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { intervene, steer } from '../lib/circuits/interventions.js';
import { ReplacementModel } from '../lib/circuits/replacement-model.js';
import { tokenizeToFile } from '../lib/data/tokenize.js';
import { collectFeatureStats, writeFeatureCards } from '../lib/features/dashboards.js';
import { FeatureFiles } from '../lib/features/feature-files.js';
import { validateGraphJson, type GraphJson } from '../lib/graphs/graph-json.js';
import { createServer, listen } from '../lib/service/server.js';
import { softmax } from '../lib/util/softmax.js';
import { tempDir } from './helpers/fixtures.js';

const SHIPPED = new URL('../models/greater-than', import.meta.url).pathname;
const PROMPT = 'The war lasted from the year 1732 to the year 17';

let replacement: ReplacementModel;
let app: FastifyInstance;
let graphsDir: string;
let featuresDir: string;

/** Server-sent events of a body: [{event, data}]. */
function parseEvents(body: string): { event: string; data: unknown }[] {
  return body.split('\n\n').filter((b) => b.trim()).map((block) => {
    const lines = block.split('\n');
    const event = lines.find((l) => l.startsWith('event: '))!.slice(7);
    const data = JSON.parse(lines.find((l) => l.startsWith('data: '))!.slice(6));
    return { event, data };
  });
}

beforeAll(async () => {
  replacement = await ReplacementModel.load(SHIPPED, [join(SHIPPED, 'transcoders')]);
  const work = tempDir('transcoders-service-jobs-');
  graphsDir = join(work, 'graphs');
  writeFileSync(join(work, 'data.txt'), Array.from({ length: 40 }, (_, i) => `The war lasted from the year 17${10 + i} to the year 17${20 + (i % 70)}.`).join('\n\n'));
  const tokenFile = join(work, 'tokens.safetensors');
  await tokenizeToFile([join(work, 'data.txt')], replacement.model.tokenizer!, tokenFile, { contextSize: 16 });
  featuresDir = join(work, 'features');
  await writeFeatureCards(replacement, await collectFeatureStats(replacement, tokenFile, { examples: 3, quantiles: 2 }), featuresDir, { scan: 'greater-than' });
  app = createServer(replacement, { graphsDir, maxPromptTokens: 40, maxQueuedJobs: 2 });
});

afterAll(async () => {
  await app?.close();
});

describe('service jobs', () => {
  it('streams a graph\'s progress as server-sent events, then the graph', async () => {
    const r = await app.inject({ method: 'POST', url: '/api/graph', headers: { accept: 'text/event-stream' }, payload: { prompt: PROMPT, slug: 'sse' } });
    expect(r.statusCode).toBe(200);
    expect(r.headers['content-type']).toMatch(/^text\/event-stream/);
    const events = parseEvents(r.body);
    const progress = events.filter((e) => e.event === 'progress').map((e) => e.data as { stage: string; done: number; total: number });
    const attribution = progress.filter((p) => p.stage === 'attribution');
    expect(attribution.length).toBeGreaterThan(1);
    expect(attribution.map((p) => p.done)).toEqual([...attribution.map((p) => p.done)].sort((a, b) => a - b));
    expect(attribution.at(-1)!.done).toBe(attribution.at(-1)!.total);
    expect(progress.map((p) => p.stage)).toEqual(expect.arrayContaining(['queued', 'attribution', 'pruning', 'saving']));
    const result = events.at(-1)!;
    expect(result.event).toBe('result');
    validateGraphJson(result.data);
    expect(result.data).toEqual(JSON.parse(readFileSync(join(graphsDir, 'sse.json'), 'utf8')));
    // A refusal before the stream starts is a plain 400.
    const bad = await app.inject({ method: 'POST', url: '/api/graph', headers: { accept: 'text/event-stream' }, payload: { prompt: 7 } });
    expect(bad.statusCode).toBe(400);
  });

  it('intervenes: scale 1 changes nothing, a set value gives what the library gives, an ablation moves the logits', async () => {
    const tokens = replacement.tokenize(PROMPT);
    const clean = await intervene(replacement, tokens, []);
    const T = tokens.length;
    const m = replacement.featureCount(2);
    const acts = clean.activations.get(2)!.toFloat32Array();
    // The most active layer-2 feature at the last position.
    let feature = 0;
    for (let f = 1; f < m; f++) if (acts[(T - 1) * m + f]! > acts[(T - 1) * m + feature]!) feature = f;
    expect(acts[(T - 1) * m + feature]!).toBeGreaterThan(0);

    const identity = (await app.inject({ method: 'POST', url: '/api/intervene', payload: { prompt: PROMPT, interventions: [{ layer: 2, position: -1, feature, scale: 1 }], topK: 5 } })).json();
    expect(identity.position).toBe(T - 1);
    expect(identity.interventions[0].value).toBeCloseTo(acts[(T - 1) * m + feature]!, 6);
    for (let i = 0; i < 5; i++) {
      expect(identity.intervened[i].id).toBe(identity.baseline[i].id);
      expect(Math.abs(identity.intervened[i].logit - identity.baseline[i].logit)).toBeLessThan(1e-4);
    }

    const r = await app.inject({ method: 'POST', url: '/api/intervene', payload: { prompt: PROMPT, interventions: [{ layer: 2, position: T - 1, feature, value: 0 }], topK: 5 } });
    expect(r.statusCode, r.body).toBe(200);
    const body = r.json() as { baseline: { id: number; logit: number; probability: number }[]; intervened: { id: number; logit: number; probability: number }[]; tokens: string[] };
    expect(body.tokens.length).toBe(T);
    const direct = (await intervene(replacement, tokens, [{ layer: 2, position: T - 1, feature, value: 0 }])).logits.toFloat32Array();
    const V = replacement.model.config.vocabSize;
    const row = direct.subarray((T - 1) * V, T * V);
    const p = softmax(row);
    for (const e of body.intervened) {
      expect(Math.abs(e.logit - row[e.id]!)).toBeLessThan(1e-5);
      expect(Math.abs(e.probability - p[e.id]!)).toBeLessThan(1e-6);
    }
    // The top-5 are the 5 largest logits, in order.
    const order = [...row.keys()].sort((a, b) => row[b]! - row[a]!).slice(0, 5);
    expect(body.intervened.map((e) => e.id)).toEqual(order);
    expect(Math.max(...body.intervened.map((e, i) => Math.abs(e.logit - body.baseline.find((b) => b.id === e.id)!.logit) + i * 0))).toBeGreaterThan(1e-3);
  });

  it.each([
    [{ prompt: PROMPT }, /must have required property 'interventions'/],
    [{ prompt: PROMPT, interventions: [] }, /must NOT have fewer than 1 items/],
    [{ prompt: PROMPT, interventions: [{ layer: 0, position: 0, feature: 1 }] }, /must match exactly one schema in oneOf/],
    [{ prompt: PROMPT, interventions: [{ layer: 0, position: 0, feature: 1, value: 1, scale: 2 }] }, /must match exactly one schema in oneOf/],
    [{ prompt: PROMPT, interventions: [{ layer: 7, position: 0, feature: 1, value: 1 }] }, /interventions\[0\]\.layer: 7 has no transcoder/],
    [{ prompt: PROMPT, interventions: [{ layer: 0, position: 0, feature: 99999, value: 1 }] }, /interventions\[0\]\.feature: 99999 is out of range \[0, 1024\)/],
    [{ prompt: PROMPT, interventions: [{ layer: 0, position: 99, feature: 1, value: 1 }] }, /interventions\[0\]\.position: 99 is outside the prompt's \d+ tokens/],
    [{ prompt: PROMPT, interventions: [{ layer: 0, position: 0, feature: 1, value: '1' }] }, /value must be number/],
  ])('answers a bad intervention %j with a 400 naming it', async (payload, message) => {
    const r = await app.inject({ method: 'POST', url: '/api/intervene', payload });
    expect(r.statusCode).toBe(400);
    expect(r.json().error).toMatch(message);
  });

  it('steers a generation: no steering is the baseline, a steered one is the library\'s', async () => {
    const none = (await app.inject({ method: 'POST', url: '/api/steer', payload: { prompt: PROMPT, steering: [], maxNewTokens: 4 } })).json();
    expect(none.steered).toBe(none.baseline);
    expect(none.baselineTokens.length).toBeGreaterThan(0);
    const steering = [{ layer: 1, feature: 3, value: 25, position: 'new' as const }];
    const r = (await app.inject({ method: 'POST', url: '/api/steer', payload: { prompt: PROMPT, steering, maxNewTokens: 4 } })).json();
    const direct = await steer(replacement, PROMPT, steering, { maxNewTokens: 4 });
    expect(r.steeredTokens).toEqual(direct.tokens);
    expect(r.baselineTokens).toEqual(none.baselineTokens);
    const tooLong = await app.inject({ method: 'POST', url: '/api/steer', payload: { prompt: PROMPT, steering, maxNewTokens: 1000 } });
    expect(tooLong.statusCode).toBe(400);
    expect(tooLong.json().error).toMatch(/maxNewTokens: 1000 is more than this service's limit of 64/);
    const badPosition = await app.inject({ method: 'POST', url: '/api/steer', payload: { prompt: PROMPT, steering: [{ ...steering[0], position: 'old' }] } });
    expect(badPosition.statusCode).toBe(400);
  });

  it('computes feature cards on demand without a features folder, once per layer', async () => {
    const health = (await app.inject({ url: '/api/health' })).json();
    expect(health.featureCards).toBe('on-demand');
    const first = await app.inject({ url: '/api/features/1/5' });
    expect(first.statusCode, first.body).toBe(200);
    const card = first.json();
    expect(card).toMatchObject({ layer: 1, feature: 5, transcoder_id: 'greater-than/1' });
    expect(card.top_logits.length).toBe(10);
    expect(card.histogram.length).toBe(64);
    if (card.activation_frequency > 0) {
      const top = card.examples_quantiles[0].examples[0];
      expect(Math.max(...top.tokens_acts_list)).toBeCloseTo(card.act_max, 5);
      expect(top.tokens.length).toBe(top.tokens_acts_list.length);
    }
    const t0 = performance.now();
    expect((await app.inject({ url: '/api/features/1/6' })).statusCode).toBe(200);
    expect(performance.now() - t0).toBeLessThan(2000); // read from the layer's cards, not a second pass
    expect((await app.inject({ url: '/api/features/1/1024' })).statusCode).toBe(404);
    expect((await app.inject({ url: '/api/features/5/0' })).statusCode).toBe(404);
    expect((await app.inject({ url: '/features/index.json.gz' })).statusCode).toBe(404);
  });

  it('saves the viewer\'s qParams into the graph file', async () => {
    await app.inject({ method: 'POST', url: '/api/graph', payload: { prompt: PROMPT, slug: 'edited' } });
    const graph = (await app.inject({ url: '/api/graphs/edited' })).json() as GraphJson;
    const feature = graph.nodes.find((n) => n.feature_type === 'cross layer transcoder')!;
    const qParams = { pinnedIds: [feature.node_id], supernodes: [['years', feature.node_id]], linkType: 'both', clickedId: feature.node_id, sg_pos: '', clerps: [[feature.node_id, 'a year feature']] };
    const put = await app.inject({ method: 'PUT', url: '/api/graphs/edited/qparams', payload: qParams });
    expect(put.statusCode, put.body).toBe(200);
    const saved = JSON.parse(readFileSync(join(graphsDir, 'edited.json'), 'utf8')) as GraphJson;
    expect(saved.qParams).toEqual(qParams);
    expect(saved.nodes).toEqual(graph.nodes);
    validateGraphJson(saved);
    expect((await app.inject({ method: 'PUT', url: '/api/graphs/edited/qparams', payload: { ...qParams, pinnedIds: 'x' } })).statusCode).toBe(400);
    expect((await app.inject({ method: 'PUT', url: '/api/graphs/edited/qparams', payload: { ...qParams, extra: 1 } })).statusCode).toBe(400);
    expect((await app.inject({ method: 'PUT', url: '/api/graphs/..%2F..%2Fetc%2Fpasswd/qparams', payload: qParams })).statusCode).toBe(400);
    expect((await app.inject({ method: 'PUT', url: '/api/graphs/none-such/qparams', payload: qParams })).statusCode).toBe(404);
  });

  it('answers 503 with Retry-After past the time limit, and the queue is free afterwards', async () => {
    const slow = createServer(replacement, { jobTimeoutSeconds: 0.05 });
    const r = await slow.inject({ method: 'POST', url: '/api/graph', payload: { prompt: PROMPT } });
    expect(r.statusCode).toBe(503);
    expect(r.json().error).toMatch(/time limit of 0\.05 s/);
    expect(r.headers['retry-after']).toBe('30');
    expect((await slow.inject({ url: '/api/health' })).json().jobs).toEqual({ running: 0, waiting: 0, stopped: 1 });
    await slow.close();
  });

  it('a client that disconnects mid-job stops it; the service goes on answering', async () => {
    const server = createServer(replacement, { maxPromptTokens: 40 });
    const address = new URL(await listen(server, { port: 0 }));
    // Stream a graph, hang up at the first attribution progress.
    await new Promise<void>((done, fail) => {
      const req = request({ host: address.hostname, port: address.port, path: '/api/graph', method: 'POST', headers: { 'content-type': 'application/json', accept: 'text/event-stream' } }, (res) => {
        res.on('data', (chunk: Buffer) => {
          if (chunk.toString().includes('"stage":"attribution"')) {
            req.destroy();
            done();
          }
        });
        res.on('error', () => undefined);
      });
      req.on('error', (err) => (err.message.includes('socket hang up') ? undefined : fail(err)));
      req.end(JSON.stringify({ prompt: PROMPT }));
    });
    // The job stops after its batch; then the queue is empty and a new request is answered.
    let jobs = { running: 1, waiting: 0, stopped: 0 };
    for (let i = 0; i < 200 && jobs.running + jobs.waiting > 0; i++) {
      await new Promise((r) => setTimeout(r, 25));
      jobs = ((await (await fetch(`${address.origin}/api/health`)).json()) as { jobs: typeof jobs }).jobs;
    }
    expect(jobs).toEqual({ running: 0, waiting: 0, stopped: 1 });
    const after = await fetch(`${address.origin}/api/graph`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: PROMPT }) });
    expect(after.status).toBe(200);
    validateGraphJson(await after.json());
    await server.close();
  });

  it('50 concurrent clients asking for graphs and feature cards get correct answers or 429s, never a 500, in bounded memory', async () => {
    const server = createServer(replacement, { featuresDir, maxPromptTokens: 40, maxQueuedJobs: 3 });
    const address = await listen(server, { port: 0 });
    const files = new FeatureFiles(featuresDir);
    const reference = (await (await fetch(`${address}/api/graph`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: PROMPT }) })).json()) as GraphJson;
    const base = process.memoryUsage().rss;
    let peak = base;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    const clients = Array.from({ length: 50 }, async (_, i) => {
      if (i % 2 === 0) {
        const r = await fetch(`${address}/api/graph`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: PROMPT }) });
        if (r.status === 200) {
          const g = (await r.json()) as GraphJson;
          expect(g.nodes).toEqual(reference.nodes);
          expect(g.links).toEqual(reference.links);
        } else {
          expect(r.headers.get('retry-after')).toBe('5');
          await r.arrayBuffer();
        }
        return r.status;
      }
      const [layer, feature] = [i % 3, (i * 37) % 1024];
      const r = await fetch(`${address}/api/features/${layer}/${feature}`);
      expect(await r.json()).toEqual(files.read(layer, feature));
      return r.status;
    });
    const codes = await Promise.all(clients);
    clearInterval(sampler);
    expect(codes.every((c) => c === 200 || c === 429), codes.join(' ')).toBe(true);
    expect(codes.filter((c, i) => i % 2 === 0 && c === 200).length).toBeGreaterThanOrEqual(4);
    expect(codes.filter((c, i) => i % 2 === 1 && c === 200).length).toBe(25);
    // At most 4 graph jobs are admitted at once: memory grows by a few graphs, not by 50 requests' worth.
    expect(peak - base).toBeLessThan(256 * 2 ** 20);
    expect(((await (await fetch(`${address}/api/health`)).json()) as { jobs: unknown }).jobs).toEqual({ running: 0, waiting: 0, stopped: 0 });
    await server.close();
  });
});
