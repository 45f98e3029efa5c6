/**
 * Service overhead: the same work through `transcoders serve`'s HTTP routes and as direct library
 * calls, in the same run on the shipped model and its transcoders.
 *
 * - Graphs: POST /api/graph (no saving) against attributionGraph + pruneGraph + buildGraphJson called
 *   directly, one at a time, alternating; the service's time includes sending the JSON and the
 *   client's JSON.parse (what a caller of the service pays).
 * - Feature cards: GET /api/features/:layer/:index with `concurrency` keep-alive clients in a worker
 *   thread (its own event loop, as a separate client would have), asking for deflate as browsers do
 *   and inflating and parsing each card, against FeatureFiles.read (read, inflate, parse) on the same
 *   cards in a loop; look-ups per second. The service sends the stored deflated records as they are.
 * The goal (issue 14): overhead below 10%.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { ReplacementModel } from '../lib/circuits/replacement-model.js';
import { tokenizeToFile } from '../lib/data/tokenize.js';
import { examples } from '../lib/demo/tasks.js';
import { collectFeatureStats, writeFeatureCards } from '../lib/features/dashboards.js';
import { FeatureFiles } from '../lib/features/feature-files.js';
import { attributionGraph } from '../lib/graphs/attribute.js';
import { buildGraphJson } from '../lib/graphs/graph-json.js';
import { pruneGraph } from '../lib/graphs/prune.js';
import { createServer, listen } from '../lib/service/server.js';

const SHIPPED = new URL('../models/greater-than', import.meta.url).pathname;
const PROMPT = 'The war lasted from the year 1732 to the year 17';

export interface ServiceBenchOptions {
  /** Graphs per side and round (default 10). */
  graphs?: number;
  rounds?: number;
  /** Feature look-ups per side and round (default 20000). */
  lookups?: number;
  /** Concurrent HTTP clients for the look-ups (default 16). */
  concurrency?: number;
}

export interface ServiceBenchResult {
  name: string;
  loadAverage: number[];
  graph: { nodes: number; links: number; directMs: number; serviceMs: number; overhead: number; rounds: { directMs: number; serviceMs: number }[] };
  /**
   * servicePerS: the look-ups the service answers per second, its client only receiving them (as wrk
   * measures a server); parsedPerS: with the client also inflating and parsing every card, on the same
   * 2 cores (then the one client thread, doing the library's work plus HTTP's, is the bound).
   */
  features: { cardBytes: number; directPerS: number; servicePerS: number; parsedPerS: number; overhead: number; concurrency: number; rounds: { directPerS: number; servicePerS: number; parsedPerS: number }[] };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** The worker: `count` GETs of the cards over `concurrency` keep-alive connections; posts the seconds taken. */
const CLIENT = `
const { parentPort, workerData } = require('node:worker_threads');
const http = require('node:http');
const { inflateSync } = require('node:zlib');
const { origin, count, concurrency, ids, parse } = workerData;
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
const url = new URL(origin);
const get = (path) => new Promise((done, fail) => {
  http.get({ host: url.hostname, port: url.port, path, agent, headers: { 'accept-encoding': 'deflate' } }, (res) => {
    const chunks = [];
    res.on('data', (c) => chunks.push(c));
    res.on('end', () => {
      if (res.statusCode !== 200) return fail(new Error(path + ': ' + res.statusCode));
      const body = Buffer.concat(chunks);
      done(parse && res.headers['content-encoding'] === 'deflate' ? inflateSync(body) : body);
    });
  }).on('error', fail);
});
(async () => {
  let next = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < count) {
      const [l, f] = ids[next++ % ids.length];
      const body = await get('/api/features/' + l + '/' + f);
      if (parse) JSON.parse(body.toString('utf8'));
    }
  }));
  parentPort.postMessage((performance.now() - t0) / 1000);
  agent.destroy();
})().catch((err) => { parentPort.postMessage({ error: String(err) }); });
`;

function clientRun(origin: string, count: number, concurrency: number, ids: [number, number][], parse: boolean): Promise<number> {
  return new Promise((done, fail) => {
    const worker = new Worker(CLIENT, { eval: true, workerData: { origin, count, concurrency, ids, parse } });
    worker.once('message', (m: number | { error: string }) => (typeof m === 'number' ? done(m) : fail(new Error(m.error))));
    worker.once('error', fail);
  });
}

export async function benchService(options: ServiceBenchOptions = {}): Promise<ServiceBenchResult> {
  const graphs = options.graphs ?? 10;
  const rounds = options.rounds ?? 3;
  const lookups = options.lookups ?? 20000;
  const concurrency = options.concurrency ?? 16;
  const load = [loadavg()[0]!];
  const replacement = await ReplacementModel.load(SHIPPED, [join(SHIPPED, 'transcoders')]);
  const work = mkdtempSync(join(tmpdir(), 'transcoders-bench-service-'));
  try {
    // Cards of every feature, over 256 rows of the templated sentences.
    const sentences = examples(1);
    writeFileSync(join(work, 'corpus.jsonl'), Array.from({ length: 1024 }, () => JSON.stringify({ text: sentences.next().value })).join('\n') + '\n');
    const tokenFile = join(work, 'tokens.safetensors');
    await tokenizeToFile([join(work, 'corpus.jsonl')], replacement.model.tokenizer!, tokenFile, { contextSize: 32, maxRows: 256 });
    const featuresDir = join(work, 'features');
    await writeFeatureCards(replacement, await collectFeatureStats(replacement, tokenFile, { examples: 10 }), featuresDir, { scan: 'greater-than' });
    const files = new FeatureFiles(featuresDir);

    const app = createServer(replacement, { featuresDir, maxQueuedJobs: 64 });
    const origin = await listen(app, { port: 0 });
    const tokens = replacement.tokenize(PROMPT);
    const direct = async () => {
      const g = await attributionGraph(replacement, tokens, { scan: 'greater-than' });
      return buildGraphJson(g, pruneGraph(g), { slug: 'bench' });
    };
    const viaService = async () => {
      const r = await fetch(`${origin}/api/graph`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: PROMPT, slug: 'bench' }) });
      if (r.status !== 200) throw new Error(`POST /api/graph: ${r.status} ${await r.text()}`);
      return (await r.json()) as ReturnType<typeof direct> extends Promise<infer G> ? G : never;
    };
    // Warm both paths, and check they give the same graph.
    const [a, b] = [await direct(), await viaService()];
    if (JSON.stringify(a.nodes) !== JSON.stringify(b.nodes) || JSON.stringify(a.links) !== JSON.stringify(b.links)) throw new Error('the service and the library give different graphs');

    const graphRounds: { directMs: number; serviceMs: number }[] = [];
    const ids: [number, number][] = [];
    for (let i = 0; i < 4096; i++) ids.push([i % 3, (i * 7919) % files.features(i % 3)]);
    const featureRounds: { directPerS: number; servicePerS: number; parsedPerS: number }[] = [];
    for (let r = 0; r < rounds; r++) {
      const d: number[] = [];
      const s: number[] = [];
      for (let i = 0; i < graphs; i++) {
        // Alternate the order, so that drift affects both alike.
        for (const [fn, into] of (i + r) % 2 ? [[direct, d], [viaService, s]] as const : [[viaService, s], [direct, d]] as const) {
          const t0 = performance.now();
          await fn();
          into.push(performance.now() - t0);
        }
      }
      graphRounds.push({ directMs: median(d), serviceMs: median(s) });

      const t0 = performance.now();
      for (let i = 0; i < lookups; i++) {
        const [l, f] = ids[i % ids.length]!;
        files.read(l, f);
      }
      const directPerS = lookups / ((performance.now() - t0) / 1000);
      const servicePerS = lookups / (await clientRun(origin, lookups, concurrency, ids, false));
      const parsedPerS = lookups / (await clientRun(origin, lookups, concurrency, ids, true));
      featureRounds.push({ directPerS, servicePerS, parsedPerS });
    }
    await app.close();
    load.push(loadavg()[0]!);
    const directMs = median(graphRounds.map((x) => x.directMs));
    const serviceMs = median(graphRounds.map((x) => x.serviceMs));
    const directPerS = median(featureRounds.map((x) => x.directPerS));
    const servicePerS = median(featureRounds.map((x) => x.servicePerS));
    const parsedPerS = median(featureRounds.map((x) => x.parsedPerS));
    let cardBytes = 0;
    for (const [l, f] of ids.slice(0, 256)) cardBytes += files.readJson(l, f).length;
    return {
      name: `service overhead: shipped model (${replacement.layers.length} layers x ${replacement.featureCount(0)} features), prompt of ${tokens.length} tokens`,
      loadAverage: load,
      graph: { nodes: a.nodes.length, links: a.links.length, directMs, serviceMs, overhead: serviceMs / directMs - 1, rounds: graphRounds },
      features: { cardBytes: Math.round(cardBytes / 256), directPerS, servicePerS, parsedPerS, overhead: directPerS / servicePerS - 1, concurrency, rounds: featureRounds },
    };
  } finally {
    replacement.dispose();
    rmSync(work, { recursive: true, force: true });
  }
}

export function printService(r: ServiceBenchResult): void {
  console.log(`${r.name} (load average ${r.loadAverage.map((l) => l.toFixed(1)).join(' -> ')})`);
  const g = r.graph;
  console.log(`  graph (${g.nodes} nodes, ${g.links} links): ${g.directMs.toFixed(1)} ms direct, ${g.serviceMs.toFixed(1)} ms through POST /api/graph: overhead ${(100 * g.overhead).toFixed(1)}% (goal < 10%)`);
  const f = r.features;
  console.log(`  feature cards (${f.cardBytes} bytes of JSON each): ${f.directPerS.toFixed(0)}/s FeatureFiles.read, ${f.servicePerS.toFixed(0)}/s answered by GET /api/features (${f.concurrency} clients): overhead ${(100 * f.overhead).toFixed(1)}% (goal < 10%)`);
  console.log(`  ${f.parsedPerS.toFixed(0)}/s with the client inflating and parsing each card too (one client thread on the same cores)`);
}
