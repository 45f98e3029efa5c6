/** `transcoders serve`: the HTTP service (lib/service/server.ts) over a model and its transcoders. */
import { InvalidArgumentError } from '../errors.js';
import { checkBindable, createServer, listen } from '../service/server.js';
import { applyThreads, checkModelArgument, checkTranscoderArguments, DEVICE_OPTION, intOption, THREADS_OPTION, type Command } from './command.js';
import { loadModelWithTranscoders } from './transcoder-paths.js';

export const serveCommand: Command = {
  name: 'serve',
  summary: 'Serve graphs (computed on request), saved graphs and feature cards over HTTP, on circuit-tracer\'s routes too.',
  usage: 'serve <model-dir> --transcoders PATH [--graphs DIR] [--features DIR] [--host 127.0.0.1] [--port N] [--token SECRET]',
  details: 'Routes: POST /api/graph {prompt, slug?, maxFeatureNodes?, maxLogits?, nodeThreshold?, edgeThreshold?} computes, prunes\n' +
    'and (with --graphs) saves a graph; GET /api/graphs, /api/graphs/:slug, /api/features/:layer/:index, /api/health; and\n' +
    'circuit-tracer\'s /data/graph-metadata.json, /graph_data/:slug.json, /features/index.json.gz and byte ranges of\n' +
    '/features/layer_L.bin. Bodies are checked against JSON schemas (400 naming the field); graph jobs run one at a time,\n' +
    'with 429 + Retry-After beyond --max-queued waiting. Binds to 127.0.0.1; another host needs --token (sent as\n' +
    '"Authorization: Bearer SECRET").',
  arguments: [{ name: 'model-dir', required: true }],
  options: {
    transcoders: { type: 'string', value: 'PATH', description: 'transcoders (a train output folder, a set, paths, or a cross-layer transcoder)', multiple: true, required: true },
    graphs: { type: 'string', value: 'DIR', description: 'where graphs are saved and served from' },
    features: { type: 'string', value: 'DIR', description: 'feature cards written by `transcoders features`' },
    host: { type: 'string', value: 'HOST', description: 'interface to bind (default 127.0.0.1)' },
    port: { type: 'string', value: 'N', description: 'port (default 8041)' },
    token: { type: 'string', value: 'SECRET', description: 'bearer token required on every route but /api/health (needed beyond 127.0.0.1)' },
    'max-prompt-tokens': { type: 'string', value: 'N', description: 'longest prompt (default 256)' },
    'max-queued': { type: 'string', value: 'N', description: 'graph jobs waiting before 429 (default 4)' },
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
    const modelDir = checkModelArgument(positionals[0], 'model-dir')!;
    checkTranscoderArguments(values, 'transcoders');
    const { replacement } = await loadModelWithTranscoders(values, modelDir);
    const app = createServer(replacement, {
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
  },
};
