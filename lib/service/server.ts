/**
 * The HTTP service over a replacement model (Fastify): attribution graphs computed on request and
 * saved, the saved graphs, feature cards, and the static routes circuit-tracer's viewer fetches
 * (`/data/graph-metadata.json`, `/graph_data/:slug.json`, `/features/...` with byte ranges).
 *
 * Every request body and parameter is checked against a JSON schema (a 400 names the field); slugs
 * and file names are restricted to a safe alphabet; prompts are bounded in tokens. Graph jobs run
 * one at a time (the model's device queue runs them anyway); beyond `maxQueuedJobs` waiting, a
 * request gets 429 with Retry-After. A bearer token, when set, is required on every route but
 * `/api/health`. {@link listen} refuses to bind beyond the loopback interface without a token.
 * A failed job answers its error and leaves the service as it was.
 */
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { timingSafeEqual } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { ReplacementModel } from '../circuits/replacement-model.js';
import { InvalidArgumentError, TranscodersError } from '../errors.js';
import { FeatureFiles } from '../features/feature-files.js';
import { attributionGraph } from '../graphs/attribute.js';
import { buildGraphJson, checkSlug, GRAPH_METADATA_FILE, slugOf, writeGraphFiles } from '../graphs/graph-json.js';
import { pruneGraph, PRUNE_DEFAULTS } from '../graphs/prune.js';

export interface ServerOptions {
  /** Where graphs are saved and read (default: none: POST /api/graph answers without saving, the graph routes 404). */
  graphsDir?: string;
  /** A features folder written by `transcoders features`. */
  featuresDir?: string;
  /** A bearer token every route but /api/health requires. */
  token?: string;
  /** Longest prompt in tokens (default 256). */
  maxPromptTokens?: number;
  /** Graph jobs waiting beyond the running one before requests get 429 (default 4). */
  maxQueuedJobs?: number;
  /** Most feature nodes a graph request may ask for (default 10,000). */
  maxFeatureNodes?: number;
  /** The viewers' id of the model and transcoders (default: the model folder's name). */
  scan?: string;
  /** Fastify's logger (default off). */
  logger?: boolean;
}

const SLUG = '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$';
const FILE = '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$';

const GRAPH_BODY = {
  type: 'object',
  required: ['prompt'],
  additionalProperties: false,
  properties: {
    prompt: { type: 'string', minLength: 1, maxLength: 20000 },
    slug: { type: 'string', pattern: SLUG },
    maxFeatureNodes: { type: 'integer', minimum: 1 },
    maxLogits: { type: 'integer', minimum: 1, maximum: 100 },
    nodeThreshold: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
    edgeThreshold: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
  },
} as const;

interface GraphBody {
  prompt: string;
  slug?: string;
  maxFeatureNodes?: number;
  maxLogits?: number;
  nodeThreshold?: number;
  edgeThreshold?: number;
}

/** The service as a Fastify instance (not listening: call {@link listen}, or use `inject` in tests). */
export function createServer(replacement: ReplacementModel, options: ServerOptions = {}): FastifyInstance {
  const maxPromptTokens = options.maxPromptTokens ?? 256;
  const maxQueued = options.maxQueuedJobs ?? 4;
  const maxFeatureNodes = options.maxFeatureNodes ?? 10000;
  const graphsDir = options.graphsDir ? resolve(options.graphsDir) : undefined;
  const features = options.featuresDir ? new FeatureFiles(resolve(options.featuresDir)) : undefined;
  const scan = options.scan ?? (replacement.model.dir.split('/').filter(Boolean).pop() ?? 'model');
  const app = Fastify({ logger: options.logger ?? false, bodyLimit: 1 << 20, ajv: { customOptions: { allErrors: false, coerceTypes: false, removeAdditional: false, useDefaults: false } } });

  // Errors: schema violations and our InvalidArgumentErrors are the client's (400, the message names
  // the field); anything else is ours (500) and does not take the service down.
  app.setErrorHandler((err: Error & { validation?: unknown; statusCode?: number }, _req, reply) => {
    if (err.validation) return reply.code(400).send({ error: `invalid request: ${err.message}` });
    if (err instanceof InvalidArgumentError) return reply.code(400).send({ error: err.message });
    if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) return reply.code(err.statusCode).send({ error: err.message });
    return reply.code(500).send({ error: err instanceof TranscodersError ? err.message : `internal error: ${err.message}` });
  });

  if (options.token !== undefined) {
    if (options.token.length < 8) throw new InvalidArgumentError('the service token must be at least 8 characters');
    const expected = Buffer.from(`Bearer ${options.token}`);
    app.addHook('onRequest', async (req, reply) => {
      if (req.url === '/api/health') return;
      const given = Buffer.from(req.headers.authorization ?? '');
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
        await reply.code(401).header('WWW-Authenticate', 'Bearer').send({ error: 'a bearer token is required (Authorization: Bearer <token>)' });
      }
    });
  }

  // One graph job at a time; a bounded number waiting.
  let running = 0;
  let waiting = 0;
  let chain: Promise<unknown> = Promise.resolve();
  const job = async <T>(reply: FastifyReply, work: () => Promise<T>): Promise<T | undefined> => {
    if (running + waiting > maxQueued) {
      await reply.code(429).header('Retry-After', '5').send({ error: `busy: ${running + waiting} graph jobs are running or waiting (at most ${maxQueued + 1})` });
      return undefined;
    }
    waiting++;
    const turn = chain.then(async () => {
      waiting--;
      running++;
      try {
        return await work();
      } finally {
        running--;
      }
    });
    chain = turn.catch(() => undefined);
    return turn;
  };

  app.get('/api/health', async () => ({
    ok: true,
    model: replacement.model.dir.split('/').filter(Boolean).pop(),
    layers: replacement.layers,
    features: features ? features.layers : [],
    graphs: graphsDir !== undefined,
    jobs: { running, waiting },
  }));

  app.post<{ Body: GraphBody }>('/api/graph', { schema: { body: GRAPH_BODY } }, async (req, reply) => {
    const body = req.body;
    const tokens = replacement.tokenize(body.prompt);
    if (tokens.length > maxPromptTokens) throw new InvalidArgumentError(`prompt: ${tokens.length} tokens, more than this service's limit of ${maxPromptTokens}`);
    if (body.maxFeatureNodes !== undefined && body.maxFeatureNodes > maxFeatureNodes) throw new InvalidArgumentError(`maxFeatureNodes: ${body.maxFeatureNodes} is more than this service's limit of ${maxFeatureNodes}`);
    const slug = body.slug ?? slugOf(body.prompt);
    checkSlug(slug);
    const result = await job(reply, async () => {
      const graph = await attributionGraph(replacement, tokens, {
        maxFeatureNodes: body.maxFeatureNodes ?? maxFeatureNodes,
        ...(body.maxLogits !== undefined ? { maxLogits: body.maxLogits } : {}),
        scan,
      });
      const pruned = pruneGraph(graph, { nodeThreshold: body.nodeThreshold ?? PRUNE_DEFAULTS.nodeThreshold, edgeThreshold: body.edgeThreshold ?? PRUNE_DEFAULTS.edgeThreshold });
      const json = buildGraphJson(graph, pruned, { slug });
      if (graphsDir) await writeGraphFiles(graphsDir, slug, json);
      return json;
    });
    return result === undefined ? reply : result;
  });

  const metadata = (reply: FastifyReply) => {
    const file = graphsDir ? join(graphsDir, GRAPH_METADATA_FILE) : undefined;
    if (!file || !existsSync(file)) return reply.code(graphsDir ? 200 : 404).send(graphsDir ? { graphs: [] } : { error: 'this service saves no graphs (start it with --graphs DIR)' });
    return reply.type('application/json').send(readFileSync(file));
  };
  const graphFile = (slug: string, reply: FastifyReply) => {
    if (!graphsDir) return reply.code(404).send({ error: 'this service saves no graphs (start it with --graphs DIR)' });
    const file = join(graphsDir, `${slug}.json`);
    if (!existsSync(file)) return reply.code(404).send({ error: `no graph '${slug}'` });
    return reply.type('application/json').send(createReadStream(file));
  };
  const slugParams = { type: 'object', required: ['slug'], properties: { slug: { type: 'string', pattern: SLUG } } } as const;
  app.get('/api/graphs', async (_req, reply) => metadata(reply));
  app.get('/data/graph-metadata.json', async (_req, reply) => metadata(reply));
  app.get<{ Params: { slug: string } }>('/api/graphs/:slug', { schema: { params: slugParams } }, async (req, reply) => graphFile(req.params.slug, reply));
  app.get<{ Params: { file: string } }>('/graph_data/:file', { schema: { params: { type: 'object', required: ['file'], properties: { file: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\\.json$' } } } } }, async (req, reply) =>
    graphFile(req.params.file.slice(0, -'.json'.length), reply));

  // Path parameters are strings (no type coercion anywhere: a body's "5" is not 5): ids by pattern.
  const id = { type: 'string', pattern: '^[0-9]{1,9}$' } as const;
  app.get<{ Params: { layer: string; index: string } }>('/api/features/:layer/:index', {
    schema: { params: { type: 'object', required: ['layer', 'index'], properties: { layer: id, index: id } } },
  }, async (req, reply) => {
    if (!features) return reply.code(404).send({ error: 'this service has no feature cards (start it with --features DIR, written by `transcoders features`)' });
    const [layer, index] = [Number(req.params.layer), Number(req.params.index)];
    if (features.features(layer) === 0) return reply.code(404).send({ error: `no feature cards for layer ${layer} (layers ${features.layers.join(', ')})` });
    if (index >= features.features(layer)) return reply.code(404).send({ error: `feature ${index} is out of range [0, ${features.features(layer)}) of layer ${layer}` });
    return features.read(layer, index);
  });

  // The features folder as circuit-tracer's viewer fetches it: index.json.gz, and byte ranges of the .bin files.
  app.get<{ Params: { file: string } }>('/features/:file', { schema: { params: { type: 'object', required: ['file'], properties: { file: { type: 'string', pattern: FILE } } } } }, async (req, reply) => {
    if (!features) return reply.code(404).send({ error: 'this service has no feature cards' });
    const file = join(features.dir, req.params.file);
    if (!existsSync(file) || !statSync(file).isFile()) return reply.code(404).send({ error: `no file '${req.params.file}'` });
    return sendRange(req, reply, file);
  });

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
