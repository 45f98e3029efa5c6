/**
 * The HTTP service over a replacement model (Fastify): attribution graphs computed on request (with
 * progress as server-sent events) and saved, interventions and steered generation, feature cards
 * (from a features folder or computed on demand), our viewer at `/`, and the static routes
 * circuit-tracer's viewer fetches (`/data/graph-metadata.json`, `/graph_data/:slug.json`,
 * `/features/...` with byte ranges).
 *
 * Every request body and parameter is checked against a JSON schema (schemas.ts; a 400 names the
 * field); slugs and file names are restricted to a safe alphabet; prompts are bounded in tokens.
 * Heavy jobs run one at a time through one queue (job-queue.ts) with a bound on those waiting (429 +
 * Retry-After) and a time limit (503 + Retry-After); a client that disconnects stops its job after
 * the step it is in. A bearer token, when set, is required on every route but `/api/health` and the
 * viewer's own files. {@link listen} refuses to bind beyond the loopback interface without a token.
 * A failed or stopped job answers its error and leaves the service as it was.
 */
import { createReadStream, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { timingSafeEqual } from 'node:crypto';
import { inflateSync } from 'node:zlib';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { intervene, steer, type FeatureIntervention } from '../circuits/interventions.js';
import type { ReplacementModel } from '../circuits/replacement-model.js';
import { CancelledError, InvalidArgumentError, throwIfCancelled, TranscodersError } from '../errors.js';
import { attributionGraph } from '../graphs/attribute.js';
import { buildGraphJson, GRAPH_METADATA_FILE, slugOf, validateGraphJson, writeGraphFiles, type GraphJson } from '../graphs/graph-json.js';
import { pruneGraph, PRUNE_DEFAULTS } from '../graphs/prune.js';
import { VIEWER_FILES, viewerAssetsDir } from '../graphs/viewer-folder.js';
import { parseJsonText } from '../io/json.js';
import { softmax } from '../util/softmax.js';
import { folderCards, NoSuchFeatureError, onDemandCards, type FeatureCardSource } from './feature-cards.js';
import { JobQueue, JobTimeoutError, QueueFullError } from './job-queue.js';
import {
  FEATURE_PARAMS, FILE_PARAMS, GRAPH_BODY, GRAPH_FILE_PARAMS, INTERVENE_BODY, QPARAMS_BODY, SLUG_PARAMS, STEER_BODY,
  type GraphBody, type InterveneBody, type QParamsBody, type SteerBody,
} from './schemas.js';

export interface ServerOptions {
  /** Where graphs are saved and read (default: none: POST /api/graph answers without saving, the graph routes 404). */
  graphsDir?: string;
  /** A features folder written by `transcoders features` (default: cards computed on demand). */
  featuresDir?: string;
  /** The token file on-demand cards are computed over (default: the demo's templated sentences). */
  featureCorpus?: string;
  /** A bearer token every route but /api/health and the viewer's files requires. */
  token?: string;
  /** Longest prompt in tokens (default 256). */
  maxPromptTokens?: number;
  /** Jobs waiting beyond the running one before requests get 429 (default 4). */
  maxQueuedJobs?: number;
  /** Most feature nodes a graph request may ask for (default 10,000). */
  maxFeatureNodes?: number;
  /** Most tokens a steered generation may ask for (default 64). */
  maxNewTokens?: number;
  /** A job's time limit in seconds, waiting included (default 300): past it, 503. */
  jobTimeoutSeconds?: number;
  /** Time a client has to send its request, in seconds (default 30). */
  requestTimeoutSeconds?: number;
  /** The viewers' id of the model and transcoders (default: the model folder's name). */
  scan?: string;
  /** Fastify's logger (default off). */
  logger?: boolean;
}

/** What a failed request answers: the status, the body, and Retry-After for 429/503. */
function failure(err: unknown): { status: number; error: string; retryAfter?: number } {
  const e = err as Error & { validation?: unknown; statusCode?: number };
  if (e.validation) return { status: 400, error: `invalid request: ${e.message}` };
  if (err instanceof QueueFullError) return { status: 429, error: err.message, retryAfter: 5 };
  if (err instanceof JobTimeoutError) return { status: 503, error: err.message, retryAfter: 30 };
  if (err instanceof CancelledError) return { status: 503, error: err.message, retryAfter: 5 };
  if (err instanceof NoSuchFeatureError) return { status: 404, error: err.message };
  if (err instanceof InvalidArgumentError) return { status: 400, error: err.message };
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) return { status: e.statusCode, error: e.message };
  return { status: 500, error: err instanceof TranscodersError ? err.message : `internal error: ${e.message}` };
}

/** A signal that fires when the client closes the connection before its answer is sent. */
function clientGone(reply: FastifyReply): AbortSignal {
  const controller = new AbortController();
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) controller.abort();
  });
  return controller.signal;
}

/** The top `k` logits of one position as {token, id, logit, probability}. */
function topLogits(replacement: ReplacementModel, logits: Float32Array, k: number): { token: string; id: number; logit: number; probability: number }[] {
  const p = softmax(logits);
  const order = [...logits.keys()].sort((a, b) => logits[b]! - logits[a]! || a - b).slice(0, k);
  return order.map((id) => ({ token: replacement.model.decode([id]), id, logit: logits[id]!, probability: p[id]! }));
}

/** The service as a Fastify instance (not listening: call {@link listen}, or use `inject` in tests). */
export function createServer(replacement: ReplacementModel, options: ServerOptions = {}): FastifyInstance {
  const maxPromptTokens = options.maxPromptTokens ?? 256;
  const maxFeatureNodes = options.maxFeatureNodes ?? 10000;
  const maxNewTokens = options.maxNewTokens ?? 64;
  const graphsDir = options.graphsDir ? resolve(options.graphsDir) : undefined;
  const scan = options.scan ?? (replacement.model.dir.split('/').filter(Boolean).pop() ?? 'model');
  const jobs = new JobQueue(options.maxQueuedJobs ?? 4, 1000 * (options.jobTimeoutSeconds ?? 300));
  const onDemandDir = options.featuresDir ? null : mkdtempSync(join(tmpdir(), 'transcoders-serve-features-'));
  const cards: FeatureCardSource = options.featuresDir
    ? folderCards(resolve(options.featuresDir))
    : onDemandCards(replacement, { workDir: onDemandDir!, scan, ...(options.featureCorpus ? { tokenFile: options.featureCorpus } : {}) });
  const viewer = viewerAssetsDir();
  const requestTimeout = 1000 * (options.requestTimeoutSeconds ?? 30);
  const app = Fastify({
    logger: options.logger ?? false,
    bodyLimit: 1 << 20,
    // The time to receive a request (a slow client); answers take as long as their job (its own limit).
    requestTimeout,
    ajv: { customOptions: { allErrors: false, coerceTypes: false, removeAdditional: false, useDefaults: false } },
  });
  app.addHook('onClose', async () => {
    if (onDemandDir) rmSync(onDemandDir, { recursive: true, force: true });
  });

  // Errors: the client's are 4xx naming the problem; ours are 500 and do not take the service down.
  app.setErrorHandler((err, _req, reply) => {
    const f = failure(err);
    if (f.retryAfter !== undefined) reply.header('Retry-After', String(f.retryAfter));
    return reply.code(f.status).send({ error: f.error });
  });

  const publicRoutes = new Set(['/api/health', '/', '/index.html', '/data.js', '/favicon.ico', ...VIEWER_FILES.map((f) => `/${f}`)]);
  if (options.token !== undefined) {
    if (options.token.length < 8) throw new InvalidArgumentError('the service token must be at least 8 characters');
    const expected = Buffer.from(`Bearer ${options.token}`);
    app.addHook('onRequest', async (req, reply) => {
      if (publicRoutes.has(req.url.split('?')[0]!)) return;
      const given = Buffer.from(req.headers.authorization ?? '');
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
        await reply.code(401).header('WWW-Authenticate', 'Bearer').send({ error: 'a bearer token is required (Authorization: Bearer <token>)' });
      }
    });
  }

  const promptTokens = (prompt: string): number[] => {
    const tokens = replacement.tokenize(prompt);
    if (tokens.length > maxPromptTokens) throw new InvalidArgumentError(`prompt: ${tokens.length} tokens, more than this service's limit of ${maxPromptTokens}`);
    return tokens;
  };
  const checkFeature = (where: string, layer: number, feature: number): void => {
    if (!replacement.layers.includes(layer)) throw new InvalidArgumentError(`${where}.layer: ${layer} has no transcoder (layers ${replacement.layers.join(', ')})`);
    const n = replacement.featureCount(layer);
    if (feature >= n) throw new InvalidArgumentError(`${where}.feature: ${feature} is out of range [0, ${n}) of layer ${layer}`);
  };
  const checkPosition = (where: string, position: number, length: number): number => {
    if (position < -length || position >= length) throw new InvalidArgumentError(`${where}: ${position} is outside the prompt's ${length} tokens`);
    return position < 0 ? position + length : position;
  };

  app.get('/api/health', async () => ({
    ok: true,
    model: replacement.model.dir.split('/').filter(Boolean).pop(),
    layers: replacement.layers,
    features: cards.layers,
    featureCards: cards.kind,
    graphs: graphsDir !== undefined,
    jobs: jobs.counts,
  }));

  // A graph: JSON, or with `Accept: text/event-stream` progress events and then the graph.
  app.post<{ Body: GraphBody }>('/api/graph', { schema: { body: GRAPH_BODY } }, async (req, reply) => {
    const body = req.body;
    const tokens = promptTokens(body.prompt);
    if (body.maxFeatureNodes !== undefined && body.maxFeatureNodes > maxFeatureNodes) throw new InvalidArgumentError(`maxFeatureNodes: ${body.maxFeatureNodes} is more than this service's limit of ${maxFeatureNodes}`);
    const slug = body.slug ?? slugOf(body.prompt);
    const stream = (req.headers.accept ?? '').includes('text/event-stream');
    const gone = clientGone(reply);
    let send = (_event: string, _data: unknown): void => {};
    const build = (signal: AbortSignal): Promise<GraphJson> => graphJob(tokens, body, slug, signal, (stage, done, total) => send('progress', { stage, done, total }));
    if (!stream) return jobs.run(build, { signal: gone });
    // Refusals (a full queue) are plain answers; once the job is admitted the answer is a stream.
    jobs.checkRoom();
    const { running, waiting } = jobs.counts;
    reply.hijack();
    reply.raw.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-cache', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' });
    send = (event, data) => {
      if (!reply.raw.destroyed) reply.raw.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    };
    send('progress', { stage: 'queued', done: 0, total: 1, running, waiting });
    try {
      send('result', await jobs.run(build, { signal: gone }));
    } catch (err) {
      const f = failure(err);
      send('error', { error: f.error, status: f.status });
    }
    reply.raw.end();
    return reply;
  });

  async function graphJob(tokens: number[], body: GraphBody, slug: string, signal: AbortSignal, progress: (stage: string, done: number, total: number) => void): Promise<GraphJson> {
    const graph = await attributionGraph(replacement, tokens, {
      maxFeatureNodes: body.maxFeatureNodes ?? maxFeatureNodes,
      ...(body.maxLogits !== undefined ? { maxLogits: body.maxLogits } : {}),
      scan,
      signal,
      onProgress: (done, planned) => progress('attribution', done, planned),
    });
    progress('pruning', 0, 1);
    const pruned = pruneGraph(graph, { nodeThreshold: body.nodeThreshold ?? PRUNE_DEFAULTS.nodeThreshold, edgeThreshold: body.edgeThreshold ?? PRUNE_DEFAULTS.edgeThreshold });
    const json = buildGraphJson(graph, pruned, { slug });
    throwIfCancelled(signal);
    if (graphsDir) {
      progress('saving', 0, 1);
      await writeGraphFiles(graphsDir, slug, json);
    }
    return json;
  }

  app.post<{ Body: InterveneBody }>('/api/intervene', { schema: { body: INTERVENE_BODY } }, async (req, reply) => {
    const body = req.body;
    const tokens = promptTokens(body.prompt);
    const T = tokens.length;
    const position = checkPosition('position', body.position ?? -1, T);
    const positions = body.interventions.map((v, i) => {
      checkFeature(`interventions[${i}]`, v.layer, v.feature);
      return checkPosition(`interventions[${i}].position`, v.position, T);
    });
    const k = body.topK ?? 10;
    const V = replacement.model.config.vocabSize;
    return jobs.run(async (signal) => {
      const clean = await intervene(replacement, tokens, []);
      throwIfCancelled(signal);
      // A scale multiplies the feature's activation on the clean prompt (each layer's read once).
      const acts = new Map<number, Float32Array>();
      const activation = (layer: number) => acts.get(layer) ?? acts.set(layer, clean.activations.get(layer)!.toFloat32Array()).get(layer)!;
      const resolved: FeatureIntervention[] = body.interventions.map((v, i) => {
        const p = positions[i]!;
        const m = replacement.featureCount(v.layer);
        const value = v.value ?? v.scale! * activation(v.layer)[p * m + v.feature]!;
        return { layer: v.layer, position: p, feature: v.feature, value };
      });
      const after = await intervene(replacement, tokens, resolved, { freezeAttention: body.freezeAttention ?? true });
      const row = (logits: Float32Array) => logits.subarray(position * V, (position + 1) * V);
      return {
        tokens: tokens.map((t) => replacement.model.decode([t])),
        position,
        interventions: resolved,
        baseline: topLogits(replacement, row(clean.logits.toFloat32Array()), k),
        intervened: topLogits(replacement, row(after.logits.toFloat32Array()), k),
      };
    }, { signal: clientGone(reply) });
  });

  app.post<{ Body: SteerBody }>('/api/steer', { schema: { body: STEER_BODY } }, async (req, reply) => {
    const body = req.body;
    const tokens = promptTokens(body.prompt);
    const n = body.maxNewTokens ?? 20;
    if (n > maxNewTokens) throw new InvalidArgumentError(`maxNewTokens: ${n} is more than this service's limit of ${maxNewTokens}`);
    body.steering.forEach((s, i) => {
      checkFeature(`steering[${i}]`, s.layer, s.feature);
      if (s.position !== 'new') checkPosition(`steering[${i}].position`, s.position, tokens.length);
    });
    const generation = { maxNewTokens: n, temperature: body.temperature ?? 0, seed: body.seed ?? 0 };
    return jobs.run(async (signal) => {
      const baseline = await steer(replacement, tokens, [], { ...generation, signal });
      const steered = await steer(replacement, tokens, body.steering, { ...generation, signal });
      const text = (ids: number[]) => replacement.model.decode(ids);
      return { baseline: text(baseline.tokens), steered: text(steered.tokens), baselineTokens: baseline.tokens, steeredTokens: steered.tokens };
    }, { signal: clientGone(reply) });
  });

  const noGraphs = (reply: FastifyReply) => reply.code(404).send({ error: 'this service saves no graphs (start it with --graphs DIR)' });
  const metadata = (reply: FastifyReply) => {
    if (!graphsDir) return noGraphs(reply);
    const file = join(graphsDir, GRAPH_METADATA_FILE);
    if (!existsSync(file)) return reply.send({ graphs: [] });
    return reply.type('application/json').send(readFileSync(file));
  };
  const graphFile = (slug: string, reply: FastifyReply) => {
    if (!graphsDir) return noGraphs(reply);
    const file = join(graphsDir, `${slug}.json`);
    if (!existsSync(file)) return reply.code(404).send({ error: `no graph '${slug}'` });
    return reply.type('application/json').send(createReadStream(file));
  };
  app.get('/api/graphs', async (_req, reply) => metadata(reply));
  app.get('/data/graph-metadata.json', async (_req, reply) => metadata(reply));
  app.get<{ Params: { slug: string } }>('/api/graphs/:slug', { schema: { params: SLUG_PARAMS } }, async (req, reply) => graphFile(req.params.slug, reply));
  app.get<{ Params: { file: string } }>('/graph_data/:file', { schema: { params: GRAPH_FILE_PARAMS } }, async (req, reply) => graphFile(req.params.file.slice(0, -'.json'.length), reply));

  // The viewer's edits (pinned nodes, supernodes, the clicked node, labels) saved into the graph file.
  app.put<{ Params: { slug: string }; Body: QParamsBody }>('/api/graphs/:slug/qparams', { schema: { params: SLUG_PARAMS, body: QPARAMS_BODY } }, async (req, reply) => {
    if (!graphsDir) return noGraphs(reply);
    const file = join(graphsDir, `${req.params.slug}.json`);
    if (!existsSync(file)) return reply.code(404).send({ error: `no graph '${req.params.slug}'` });
    const graph = parseJsonText(readFileSync(file, 'utf8'), file, 'not a graph file') as GraphJson;
    graph.qParams = req.body;
    validateGraphJson(graph);
    await writeGraphFiles(graphsDir, req.params.slug, graph);
    return { ok: true };
  });

  app.get<{ Params: { layer: string; index: string } }>('/api/features/:layer/:index', { schema: { params: FEATURE_PARAMS } }, async (req, reply) => {
    const deflated = await cards.card(Number(req.params.layer), Number(req.params.index), (work) => jobs.run(work, { signal: clientGone(reply) }));
    reply.type('application/json; charset=utf-8').header('Vary', 'Accept-Encoding');
    // The record is stored deflated: sent as it is to clients that accept that (browsers, fetch), inflated for others.
    if (/\bdeflate\b/.test(String(req.headers['accept-encoding'] ?? ''))) return reply.header('Content-Encoding', 'deflate').send(deflated);
    return reply.send(inflateSync(deflated));
  });

  // The features folder as circuit-tracer's viewer fetches it: index.json.gz, and byte ranges of the .bin files.
  app.get<{ Params: { file: string } }>('/features/:file', { schema: { params: FILE_PARAMS } }, async (req, reply) => {
    if (!cards.folder) return reply.code(404).send({ error: 'this service computes feature cards on demand (GET /api/features/:layer/:index); it has no features folder to serve' });
    const file = join(cards.folder.dir, req.params.file);
    if (!existsSync(file) || !statSync(file).isFile()) return reply.code(404).send({ error: `no file '${req.params.file}'` });
    return sendRange(req, reply, file);
  });

  // Our viewer (dist/viewer, built by `npm run build`); its data.js is empty here: graphs come from the API.
  const types: Record<string, string> = { html: 'text/html; charset=utf-8', js: 'text/javascript; charset=utf-8', css: 'text/css; charset=utf-8' };
  const asset = (name: string) => async (_req: FastifyRequest, reply: FastifyReply) => {
    if (!viewer) return reply.code(404).send({ error: 'the viewer is not built (dist/viewer is missing): run `npm run build`' });
    return reply.type(types[name.split('.').pop()!]!).send(createReadStream(join(viewer, name)));
  };
  app.get('/', asset('index.html'));
  for (const f of VIEWER_FILES) app.get(`/${f}`, asset(f));
  app.get('/data.js', async (_req, reply) => reply.type(types.js!).send('// served by transcoders serve: graphs come from the API\n'));
  app.get('/favicon.ico', async (_req, reply) => reply.code(204).send()); // browsers ask; there is none

  return app;
}

/** A file, or the byte range its Range header asks for (206; 416 when unsatisfiable). */
function sendRange(req: FastifyRequest, reply: FastifyReply, file: string): FastifyReply {
  const size = statSync(file).size;
  const type = file.endsWith('.gz') ? 'application/gzip' : file.endsWith('.json') ? 'application/json' : 'application/octet-stream';
  reply.header('Accept-Ranges', 'bytes');
  const range = req.headers.range;
  if (range === undefined) return reply.type(type).header('Content-Length', size).send(createReadStream(file));
  const m = /^bytes=(\d*)-(\d*)$/.exec(range);
  let start = m && m[1] !== '' ? Number(m[1]) : NaN;
  let end = m && m[2] !== '' ? Number(m[2]) : size - 1;
  if (m && m[1] === '' && m[2] !== '') {
    start = Math.max(0, size - Number(m[2]));
    end = size - 1;
  }
  end = Math.min(end, size - 1);
  if (!m || !Number.isSafeInteger(start) || start > end || start >= size) {
    return reply.code(416).header('Content-Range', `bytes */${size}`).send({ error: `range '${range}' is not satisfiable for a ${size}-byte file` });
  }
  return reply.code(206).type(type).header('Content-Range', `bytes ${start}-${end}/${size}`).header('Content-Length', end - start + 1).send(createReadStream(file, { start, end }));
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1']);

/** Throws unless `host` is the loopback interface or a token protects the service. */
export function checkBindable(host: string, token: string | undefined): void {
  if (!LOOPBACK.has(host) && token === undefined) {
    throw new InvalidArgumentError(`refusing to serve on ${host} without a token: anyone who can reach it could run jobs on this machine (give --token SECRET, or bind to 127.0.0.1)`);
  }
}

/** Starts listening; refuses a host beyond the loopback interface unless the server has a token. */
export async function listen(app: FastifyInstance, options: { host?: string; port?: number; token?: string }): Promise<string> {
  const host = options.host ?? '127.0.0.1';
  checkBindable(host, options.token);
  return app.listen({ host, port: options.port ?? 8041 });
}
