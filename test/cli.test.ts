/**
 * The command line end to end on tiny models: every command has --help; tokenize -> train -> eval ->
 * cache -> train from the cache -> convert; bad arguments exit 2 with one readable line.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadNativeTranscoder } from '../lib/transcoders/formats/native.js';
import { loadTranscoder } from '../lib/transcoders/formats/index.js';
import { ensureDist, runCli } from './helpers/cli.js';
import { makeTempModel, tempDir, TINY_GPT2 } from './helpers/fixtures.js';
import { maxDiff } from './helpers/reference.js';
import { Tensor } from '../lib/index.js';
import { loadCrossLayerTranscoder } from '../lib/transcoders/formats/cross-layer.js';

const COMMANDS = ['demo', 'run', 'train', 'eval', 'cache', 'tokenize', 'convert', 'info', 'make-model', 'features', 'serve'];
let work: string;
let modelDir: string;

beforeAll(() => {
  ensureDist();
  work = tempDir('transcoders-cli-');
  modelDir = makeTempModel({ ...TINY_GPT2, nCtx: 64, std: 0.1 });
  const text = Array.from({ length: 120 }, (_, i) => `The war lasted from the year 17${10 + (i % 80)} to the year 17${20 + ((i * 7) % 70)}.`).join('\n\n');
  writeFileSync(join(work, 'data.txt'), text);
});

describe('transcoders CLI', () => {
  it.each(COMMANDS)('%s --help describes the command', (cmd) => {
    const r = runCli([cmd, '--help']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^Usage: transcoders ${cmd}`));
    expect(r.stdout).toContain('--help');
  });

  it('features: cards of the shipped model\'s transcoders in the compact layout; refuses a used folder, and --resume where no pass was stopped', async () => {
    const shipped = new URL('../models/greater-than', import.meta.url).pathname;
    const out = join(work, 'features');
    let r = runCli(['features', shipped, '--transcoders', join(shipped, 'transcoders'), '--data', join(work, 'data.txt'), '--out', out, '--tokens', '1024', '--examples', '3', '--context-size', '16', '--quiet']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/wrote \d+ feature cards \(3 layers, 1024 tokens\)/);
    const { FeatureFiles } = await import('../lib/features/feature-files.js');
    const files = new FeatureFiles(out);
    expect(files.layers).toEqual([0, 1, 2]);
    const card = files.read(2, 5);
    expect(card.examples_quantiles[0]!.quantile_name).toBe('Top activations');
    expect(card.top_logits).toHaveLength(10);
    expect(files.read(0, 1).de_embedding?.top).toHaveLength(10);
    expect(existsSync(join(out, '.pass'))).toBe(false);
    r = runCli(['features', shipped, '--transcoders', join(shipped, 'transcoders'), '--data', join(work, 'data.txt'), '--out', out, '--quiet']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/already holds feature cards/);
    r = runCli(['features', shipped, '--transcoders', join(shipped, 'transcoders'), '--data', join(work, 'data.txt'), '--out', join(work, 'features-none'), '--resume', '--quiet']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--resume: .* holds no stopped pass/);
  });

  it('serve: refuses a non-local host without a token before loading anything', () => {
    const r = runCli(['serve', modelDir, '--transcoders', join(work, 'none'), '--host', '0.0.0.0']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/refusing to serve on 0\.0\.0\.0 without a token/);
  });

  it('lists every command', () => {
    const r = runCli(['--help']);
    for (const cmd of COMMANDS) expect(r.stdout).toContain(`  ${cmd} `);
  });

  it('cross-layer: train --arch clt-relu, eval it, graph and intervene on it, convert to circuit-tracer and back without changing it', async () => {
    const tokens = join(work, 'clt-tokens.safetensors');
    let r = runCli(['tokenize', modelDir, '--data', join(work, 'data.txt'), '--out', tokens, '--context-size', '32']);
    expect(r.status, r.stderr).toBe(0);
    const out = join(work, 'clt-run');
    r = runCli(['train', modelDir, '--data', tokens, '--layers', '0-1', '--arch', 'clt-relu', '--d-sae', '64', '--batch-size', '64', '--steps', '12', '--lr', '3e-3', '--sparsity', 'tanh', '--sparsity-coefficient', '1e-3', '--out', out, '--quiet']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain(join(out, 'clt'));
    r = runCli(['eval', modelDir, '--transcoders', out, '--data', tokens, '--sequences', '4', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const ev = JSON.parse(r.stdout) as { layers: { fvu: number; l0: number }[]; ceLossReplaced: number };
    expect(ev.layers).toHaveLength(2);
    expect(Number.isFinite(ev.ceLossReplaced)).toBe(true);
    const ct = join(work, 'clt-ct');
    r = runCli(['convert', out, ct, '--to', 'circuit-tracer']);
    expect(r.status, r.stderr).toBe(0);
    expect(existsSync(join(ct, 'W_dec_1.safetensors')) && existsSync(join(ct, 'config.yaml'))).toBe(true);
    const back = join(work, 'clt-native');
    r = runCli(['convert', ct, back, '--to', 'native']);
    expect(r.status, r.stderr).toBe(0);
    const a = await loadCrossLayerTranscoder(join(out, 'clt'));
    const b = await loadCrossLayerTranscoder(back);
    for (const [name, t] of Object.entries(a.parameters())) expect(maxDiff(b.parameters()[name]!, t).diff, name).toBe(0);
    // The CLT's attribution graph and an intervention on one of its features, from the command line.
    const graphDir = join(work, 'clt-graph');
    r = runCli(['graph', modelDir, '--transcoders', out, '--prompt', 'The war lasted from the year 1732 to the year 17', '--out', graphDir, '--slug', 'clt']);
    expect(r.status, r.stderr).toBe(0);
    const graphJson = JSON.parse(readFileSync(join(graphDir, 'clt.json'), 'utf8')) as { nodes: { feature_type: string }[] };
    expect(graphJson.nodes.some((n) => n.feature_type === 'cross layer transcoder')).toBe(true);
    // The same graph from the circuit-tracer folder read lazily (only the prompt's active features).
    r = runCli(['graph', modelDir, '--transcoders', ct, '--lazy', '--prompt', 'The war lasted from the year 1732 to the year 17', '--out', graphDir, '--slug', 'clt-lazy']);
    expect(r.status, r.stderr).toBe(0);
    const lazyJson = JSON.parse(readFileSync(join(graphDir, 'clt-lazy.json'), 'utf8')) as { nodes: { node_id: string }[]; links: unknown[] };
    expect(lazyJson.nodes.map((n) => n.node_id)).toEqual((graphJson as unknown as typeof lazyJson).nodes.map((n) => n.node_id));
    expect(lazyJson.links.length).toBe((graphJson as unknown as typeof lazyJson).links.length);
    r = runCli(['graph', modelDir, '--transcoders', out, '--lazy', '--prompt', 'x', '--out', graphDir]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--lazy reads one circuit-tracer cross-layer transcoder folder/);
    r = runCli(['intervene', modelDir, '--transcoders', out, '--prompt', 'The war lasted from the year 1732 to the year 17', '--set', `0:0@1=3`, '--json']);
    expect(r.status, r.stderr).toBe(0);
    // Options of the other kind of transcoder are refused before any work.
    r = runCli(['train', modelDir, '--data', tokens, '--layers', '0-1', '--arch', 'clt-relu', '--d-sae', '64', '--steps', '2', '--recipe', 'paper', '--out', join(work, 'x')]);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--recipe is for --arch relu or topk or jumprelu/);
    r = runCli(['convert', out, join(work, 'y'), '--to', 'saelens']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/cross-layer transcoder: convert it --to native or --to circuit-tracer/);
  });

  it('tokenize, train two layers, eval, cache, train from the cache, convert', () => {
    const tokens = join(work, 'tokens.safetensors');
    let r = runCli(['tokenize', modelDir, '--data', join(work, 'data.txt'), '--out', tokens, '--context-size', '32']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/wrote \d+ rows from 120 documents/);

    const out = join(work, 'run');
    r = runCli(['train', modelDir, '--data', tokens, '--layers', '0,1', '--d-sae', '96', '--batch-size', '64', '--steps', '30', '--lr', '3e-3', '--lr-schedule', 'constant', '--out', out, '--quiet']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('trained 30 steps, 1920 tokens');
    expect(existsSync(join(out, 'layer_0', 'cfg.json'))).toBe(true);
    expect(readFileSync(join(out, 'train.jsonl'), 'utf8').trim().split('\n')).toHaveLength(6);

    r = runCli(['eval', modelDir, '--transcoders', out, '--data', tokens, '--sequences', '8', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const evaluation = JSON.parse(r.stdout);
    expect(evaluation.layers.map((l: { layer: number }) => l.layer)).toEqual([0, 1]);
    expect(evaluation.sequences).toBe(8);
    expect(evaluation.layers[0].fvu).toBeGreaterThan(0);

    const cache = join(work, 'cache');
    r = runCli(['cache', modelDir, '--layers', '1', '--data', tokens, '--out', cache, '--sequences', '20', '--dtype', 'bfloat16']);
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(readFileSync(join(cache, 'layer_1', 'meta.json'), 'utf8'))).toMatchObject({ layer: 1, dtype: 'bfloat16', count: 640 });
    r = runCli(['train', '--activations', join(cache, 'layer_1'), '--d-sae', '32', '--arch', 'topk', '--k', '4', '--batch-size', '32', '--steps', '10', '--out', join(work, 'run2'), '--quiet']);
    expect(r.status, r.stderr).toBe(0);
  });

  it('converts between formats without changing the transcoder', async () => {
    const out = join(work, 'run');
    const original = await loadNativeTranscoder(join(out, 'layer_1'));
    const x = Tensor.from(Float32Array.from({ length: 5 * 32 }, (_, i) => Math.sin(i)), [5, 32]);
    const expected = await original.forward(x);
    // circuit-tracer runs the model raw: its export of this processed transcoder is re-expressed on the raw
    // model (LayerNorm folded), so it is compared across the two models in exports.test.ts, not here.
    for (const to of ['saelens', 'native']) {
      const dest = join(work, `converted-${to}`);
      const r = runCli(['convert', join(out, 'layer_1'), dest, '--to', to]);
      expect(r.status, r.stderr).toBe(0);
      const back = await loadTranscoder(to === 'circuit-tracer' ? join(dest, 'layer_1.safetensors') : dest);
      expect(maxDiff(await back.forward(x), expected).diff).toBeLessThanOrEqual(1e-5);
    }
  });

  it('bad arguments exit with status 2 and one readable line', () => {
    for (const args of [
      ['train', modelDir, '--data', 'x.txt', '--layers', '7', '--d-sae', '8', '--steps', '1', '--out', join(work, 'bad')],
      ['train', '--activations', join(work, 'nowhere'), '--d-sae', '8', '--steps', '1', '--out', join(work, 'bad'), '--data', 'y'],
      ['convert', join(work, 'run', 'layer_1'), join(work, 'c'), '--to', 'onnx'],
      ['eval', modelDir, '--data', 'x'],
    ]) {
      const r = runCli(args);
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
  });
});
