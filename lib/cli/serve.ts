/** `transcoders serve`: the HTTP service (lib/service/server.ts) over a model and its transcoders. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InvalidArgumentError } from '../errors.js';
import { checkBindable, createServer, listen } from '../service/server.js';
import { applyThreads, checkModelArgument, checkTranscoderArguments, DEVICE_OPTION, intOption, listOption, THREADS_OPTION, type Command } from './command.js';
import { tokenFileFor } from './data.js';
import { loadModelWithTranscoders } from './transcoder-paths.js';

export const serveCommand: Command = {
  name: 'serve',
  summary: 'Serve graphs (computed on request), saved graphs and feature cards over HTTP, on circuit-tracer\'s routes too.',
  usage: 'serve <model-dir> --transcoders PATH [--graphs DIR] [--features DIR | --corpus DATA] [--host 127.0.0.1] [--port N] [--token SECRET]',
  details: 'Opens our viewer at http://HOST:PORT/. Routes (docs/service.md): POST /api/graph {prompt, slug?, maxFeatureNodes?, ...}\n' +
    'computes, prunes and (with --graphs) saves a graph, with progress as server-sent events when asked (Accept:\n' +
    'text/event-stream); POST /api/intervene, POST /api/steer; GET /api/graphs, /api/graphs/:slug, PUT\n' +
    '/api/graphs/:slug/qparams, GET /api/features/:layer/:index (from --features, else computed on demand over --corpus or\n' +
    'a small default corpus), /api/health; and circuit-tracer\'s /data/graph-metadata.json, /graph_data/:slug.json and\n' +
    '/features/... (byte ranges). Bodies are checked against JSON schemas (400 naming the field); heavy jobs run one at a\n' +
    'time, with 429 + Retry-After beyond --max-queued waiting and 503 past --job-timeout. Binds to 127.0.0.1; another\n' +
    'host needs --token (sent as "Authorization: Bearer SECRET").',
  arguments: [{ name: 'model-dir', required: true }],
  options: {
    transcoders: { type: 'string', value: 'PATH', description: 'transcoders (a train output folder, a set, paths, or a cross-layer transcoder)', multiple: true, required: true },
    graphs: { type: 'string', value: 'DIR', description: 'where graphs are saved and served from' },
    features: { type: 'string', value: 'DIR', description: 'feature cards written by `transcoders features`' },
    corpus: { type: 'string', value: 'DATA', description: 'text or a token file for on-demand feature cards (default: a small built-in corpus)', multiple: true },
    host: { type: 'string', value: 'HOST', description: 'interface to bind (default 127.0.0.1)' },
    port: { type: 'string', value: 'N', description: 'port (default 8041)' },
    token: { type: 'string', value: 'SECRET', description: 'bearer token required on every route but /api/health (needed beyond 127.0.0.1)' },
    'max-prompt-tokens': { type: 'string', value: 'N', description: 'longest prompt (default 256)' },
    'max-queued': { type: 'string', value: 'N', description: 'jobs waiting before 429 (default 4)' },
    'job-timeout': { type: 'string', value: 'S', description: 'seconds a job may take, waiting included, before 503 (default 300)' },
    'max-new-tokens': { type: 'string', value: 'N', description: 'longest steered generation (default 64)' },
    processing: { type: 'string', value: 'P', description: 'override the model processing (none, transformerlens)' },
    device: DEVICE_OPTION,
    threads: THREADS_OPTION,
  },
  async run(values, positionals) {
    applyThreads(values);
    const host = (values.host as string | undefined) ?? '127.0.0.1';
    const token = values.token as string | undefined;
    // Checked before anything loads.
    checkBindable(host, token);
    const port = intOption(values.port, 'port', 0) ?? 8041;
    if (port > 65535) throw new InvalidArgumentError(`--port must be at most 65535, got ${port}`);
    const maxPromptTokens = intOption(values['max-prompt-tokens'], 'max-prompt-tokens', 1);
    const maxQueuedJobs = intOption(values['max-queued'], 'max-queued', 0);
    const jobTimeoutSeconds = intOption(values['job-timeout'], 'job-timeout', 1);
    const maxNewTokens = intOption(values['max-new-tokens'], 'max-new-tokens', 1);
    if (values.features !== undefined && values.corpus !== undefined) throw new InvalidArgumentError('give --features (cards computed beforehand) or --corpus (cards computed on demand), not both');
    const modelDir = checkModelArgument(positionals[0], 'model-dir')!;
    checkTranscoderArguments(values, 'transcoders');
    const { replacement, model } = await loadModelWithTranscoders(values, modelDir);
    const work = mkdtempSync(join(tmpdir(), 'transcoders-serve-'));
    const corpus = values.corpus === undefined ? undefined : (await tokenFileFor(model, listOption(values, 'corpus'), undefined, work)).file;
    const app = createServer(replacement, {
      ...(corpus !== undefined ? { featureCorpus: corpus } : {}),
      ...(jobTimeoutSeconds !== undefined ? { jobTimeoutSeconds } : {}),
      ...(maxNewTokens !== undefined ? { maxNewTokens } : {}),
      ...(typeof values.graphs === 'string' ? { graphsDir: values.graphs } : {}),
      ...(typeof values.features === 'string' ? { featuresDir: values.features } : {}),
      ...(token !== undefined ? { token } : {}),
      ...(maxPromptTokens !== undefined ? { maxPromptTokens } : {}),
      ...(maxQueuedJobs !== undefined ? { maxQueuedJobs } : {}),
    });
    const address = await listen(app, { host, port, ...(token !== undefined ? { token } : {}) });
    console.log(`serving ${modelDir} on ${address} (Ctrl-C to stop)`);
    await new Promise<void>((done) => {
      process.once('SIGINT', () => {
        void app.close().then(() => done());
      });
    });
    rmSync(work, { recursive: true, force: true });
  },
};
