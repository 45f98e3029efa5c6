/**
 * The shipped greater-than model and `transcoders demo`: its tokenizer, the probability-difference
 * metric against the independent PyTorch reference forward, feature removal against a hand-written
 * decode, a reduced demo end to end (report, FVU, paths reaching the start year), the CLI with the
 * shipped transcoders, and reproducing the committed training run from its seed.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { validateGraphJson } from '../lib/graphs/graph-json.js';
import {
  loadModel,
  loadTranscoder,
  ReplacementModel,
  runDemo,
  setNumThreads,
  Tensor,
  type MlpReplacement,
  type Transcoder,
  writeSafetensors,
  type Model,
} from '../lib/index.js';
import {
  DEMO_MODEL,
  DEMO_MODEL_DIR,
  examples,
  featureCards,
  greaterThan,
  greaterThanPrompt,
  greaterThanRows,
  onlyFeatures,
  onlyNeurons,
  withoutFeatures,
  yearTokenIds,
  type TrainingLog,
} from '../lib/demo/index.js';
import { PIECE_PATTERN } from '../lib/demo/tokenizer.js';
import { ensureDist, ROOT, runCli } from './helpers/cli.js';
import { tempDir } from './helpers/fixtures.js';
import { PYTHON } from './helpers/reference.js';

const REF = new URL('./reference/', import.meta.url).pathname;

describe('the shipped greater-than model', () => {
  let model: Model;
  beforeAll(async () => {
    model = await loadModel(DEMO_MODEL_DIR);
  });

  it('tokenizes every piece of the task text as one token and decodes it back exactly', () => {
    let n = 0;
    for (const text of examples(123)) {
      const ids = model.tokenize(text, { prependBos: false });
      expect(ids.length, text).toBe(text.match(new RegExp(PIECE_PATTERN, 'gu'))!.length);
      expect(model.decode(ids)).toBe(text);
      if (++n === 2000) break;
    }
    expect(model.tokenizer!.decodeEach(model.tokenize(greaterThanPrompt('war', 17, 32)))).toEqual(
      ['<|endoftext|>', 'The', ' war', ' lasted', ' from', ' the', ' year', ' 17', '32', ' to', ' the', ' year', ' 17'],
    );
    // Text outside the vocabulary falls back to byte tokens instead of failing.
    expect(model.decode(model.tokenize('The pandemic ended', { prependBos: false }))).toBe('The pandemic ended');
  });

  it('has the probability difference the independent PyTorch forward gives, for every start year', async () => {
    const ours = await greaterThan(model, { events: ['war', 'famine'] });
    const script = String.raw`
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from hf_reference import load_model, run
model_dir, rows, years = sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
config, layout = load_model(model_dir)
with torch.no_grad():
    p = torch.softmax(run(layout, rows)["logits"][:, -1].double(), -1)[:, years]
print(json.dumps(p.tolist()))
`;
    const { rows, startYears } = greaterThanRows(model, { events: ['war', 'famine'] });
    const r = spawnSync(PYTHON, ['-c', script, REF, DEMO_MODEL_DIR, JSON.stringify(rows), JSON.stringify(yearTokenIds(model))], { encoding: 'utf8', maxBuffer: 64 << 20 });
    expect(r.status, r.stderr).toBe(0);
    const probs = JSON.parse(r.stdout) as number[][];
    startYears.forEach((yy, i) => {
      const diff = (p: number[]) => p.reduce((s, q, zz) => s + (zz > yy ? q : -q), 0);
      const reference = (diff(probs[2 * i]!) + diff(probs[2 * i + 1]!)) / 2;
      expect(Math.abs(ours.probDiff[i]! - reference), `YY=${yy}`).toBeLessThan(1e-4);
    });
    // The trained model solves the task: most mass on valid end years at every start year.
    expect(ours.meanProbDiff).toBeGreaterThan(0.8);
  });

  it('removes features exactly: the spliced model equals a hand-written masked decode', async () => {
    const tc = await loadTranscoder(join(DEMO_MODEL_DIR, 'transcoders', 'layer_0'));
    const processed = await loadModel(DEMO_MODEL_DIR, { processing: 'transformerlens' });
    const tokens = processed.tokenize(greaterThanPrompt('siege', 15, 61));
    const { cache } = await processed.run([tokens], { cache: ['blocks.0.ln2.hook_normalized'] });
    const x = cache['blocks.0.ln2.hook_normalized']!.toFloat32Array();
    const p = tc.parameters();
    const [Wenc, benc, Wdec, bdec, bout] = [p.W_enc, p.b_enc, p.W_dec, p.b_dec, p.b_dec_out].map((t) => t!.toFloat32Array());
    const { dIn: d, dSae: m } = tc.config;
    const acts = Array.from({ length: tokens.length }, (_, t) =>
      Array.from({ length: m }, (_, f) => {
        let s = benc![f]!;
        for (let i = 0; i < d; i++) s += (x[t * d + i]! - bdec![i]!) * Wenc![i * m + f]!;
        return Math.max(0, s);
      }));
    const active = [...new Set(acts.flatMap((row) => row.flatMap((a, f) => (a > 0 ? [f] : []))))].slice(0, 5);
    expect(active.length).toBeGreaterThan(0);
    const out = new Float32Array(tokens.length * d);
    acts.forEach((row, t) => {
      for (let i = 0; i < d; i++) {
        let s = bout![i]!;
        row.forEach((a, f) => {
          if (!active.includes(f)) s += a * Wdec![f * d + i]!;
        });
        out[t * d + i] = s;
      }
    });
    const manual = await processed.run([tokens], { replaceMlp: { 0: { value: Tensor.from(out, [1, tokens.length, d]) } } });
    const removed = await processed.run([tokens], { replaceMlp: { 0: withoutFeatures(ReplacementModel.create(processed, [tc]), 0, active) } });
    const a = manual.logits!.toFloat32Array();
    const b = removed.logits!.toFloat32Array();
    expect(Math.max(...a.map((v, i) => Math.abs(v - b[i]!)))).toBeLessThan(1e-4);
    processed.dispose();
  });

  it('keeps units exactly: all neurons give the model, no neurons give b_out, all features give the transcoder', async () => {
    const processed = await loadModel(DEMO_MODEL_DIR, { processing: 'transformerlens' });
    const tc = await loadTranscoder(join(DEMO_MODEL_DIR, 'transcoders', 'layer_1'));
    const tokens = [processed.tokenize(greaterThanPrompt('reign', 12, 8)), processed.tokenize(greaterThanPrompt('truce', 18, 90))];
    const logits = async (replaceMlp?: Record<number, MlpReplacement>) => (await processed.run(tokens, replaceMlp ? { replaceMlp } : {})).logits!.toFloat32Array();
    const maxAbs = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);
    const all = Array.from({ length: processed.config.dMlp }, (_, n) => n);
    // The hand-written MLP (act(x W_in + b_in) W_out + b_out from the weights) equals the model's own.
    expect(maxAbs(await logits({ 1: onlyNeurons(processed, 1, all) }), await logits())).toBeLessThan(1e-4);
    const bOut = processed.weight('blocks.1.mlp.b_out');
    const constant = Tensor.from(new Float32Array(2 * tokens[0]!.length * 128).map((_, i) => bOut.toFloat32Array()[i % 128]!), [2, tokens[0]!.length, 128]);
    expect(maxAbs(await logits({ 1: onlyNeurons(processed, 1, []) }), await logits({ 1: { value: constant } }))).toBeLessThan(1e-4);
    const features = Array.from({ length: tc.config.dSae }, (_, f) => f);
    expect(maxAbs(await logits({ 1: onlyFeatures(ReplacementModel.create(processed, [tc]), 1, features) }), await logits({ 1: tc }))).toBeLessThan(1e-4);
    processed.dispose();
  });
});

describe('feature cards', () => {
  it('activation by start year and end-year effects (direct and through a head) equal an independent PyTorch computation', async () => {
    const processed = await loadModel(DEMO_MODEL_DIR, { processing: 'transformerlens' });
    const byLayer = new Map<number, Transcoder>();
    for (const l of [0, 1]) byLayer.set(l, await loadTranscoder(join(DEMO_MODEL_DIR, 'transcoders', `layer_${l}`)));
    const corpus = [processed.tokenize(greaterThanPrompt('war', 17, 40)), processed.tokenize(greaterThanPrompt('plague', 13, 75))];
    const refs = [{ layer: 0, feature: 248, position: 8, viaHead: { layer: 1, head: 3 } }, { layer: 1, feature: 494 }];
    const cards = await featureCards(ReplacementModel.create(processed, byLayer), refs, { corpus });
    expect(cards.map((c) => c.position)).toEqual([8, 12]);
    const work = tempDir('cards');
    const weights: Record<string, Tensor> = {
      W_V: processed.weight('blocks.1.attn.W_V'), W_O: processed.weight('blocks.1.attn.W_O'), W_U: processed.weight('unembed.W_U'),
    };
    writeSafetensors(join(work, 'weights.safetensors'), Object.fromEntries(Object.entries(weights).map(([k, t]) => [k, { dtype: 'F32', shape: t.shape, bytes: new Uint8Array(t.toFloat32Array().buffer.slice(0)) }])));
    const { rows } = greaterThanRows(processed);
    const script = String.raw`
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from hf_reference import load_model, run
from safetensors_io import load_file
model_dir, work, rows, years = sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5])
w = load_file(work + "/weights.safetensors")
tc = [load_file(f"{model_dir}/transcoders/layer_{l}/transcoder.safetensors") for l in (0, 1)]
config, layout = load_model(model_dir)
with torch.no_grad():
    hooks = run(layout, rows)
    def acts(layer, feature, position):
        x = hooks[f"blocks.{layer}.hook_resid_mid"][:, position].double()
        x = x - x.mean(-1, keepdim=True)
        x = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-5)
        p = {k: v.double() for k, v in tc[layer].items()}
        f = torch.relu((x - p["b_dec"]) @ p["W_enc"][:, feature] + p["b_enc"][feature])
        return f.reshape(97, -1).mean(1).tolist()
    WU = w["W_U"].double()[:, years]
    d0 = tc[0]["W_dec"].double()[248]
    via = d0 @ w["W_V"].double()[3] @ w["W_O"].double()[3]
    print(json.dumps({"by0": acts(0, 248, 8), "by1": acts(1, 494, 12), "end0": (via @ WU).tolist(), "end1": (tc[1]["W_dec"].double()[494] @ WU).tolist()}))
`;
    const r = spawnSync(PYTHON, ['-c', script, REF, DEMO_MODEL_DIR, work, JSON.stringify(rows), JSON.stringify(yearTokenIds(processed))], { encoding: 'utf8', maxBuffer: 64 << 20 });
    expect(r.status, r.stderr).toBe(0);
    const ref = JSON.parse(r.stdout) as Record<'by0' | 'by1' | 'end0' | 'end1', number[]>;
    const close = (ours: number[], theirs: number[]) => {
      const scale = Math.max(...theirs.map(Math.abs));
      expect(scale).toBeGreaterThan(0.1);
      ours.forEach((v, i) => expect(Math.abs(v - theirs[i]!) / scale, `index ${i}`).toBeLessThan(1e-4));
    };
    close(cards[0]!.byStartYear.activation, ref.by0);
    close(cards[1]!.byStartYear.activation, ref.by1);
    close(cards[0]!.endYearEffects, ref.end0);
    close(cards[1]!.endYearEffects, ref.end1);
    // The start-year feature reads the start year; the layer-1 feature raises late end years.
    expect(Math.max(...ref.by0) - Math.min(...ref.by0)).toBeGreaterThan(1);
    expect(ref.end1.slice(80).reduce((a, b) => a + b, 0)).toBeGreaterThan(ref.end1.slice(0, 20).reduce((a, b) => a + b, 0));
    for (const c of cards) expect(c.topExamples.length).toBeGreaterThan(0);
    processed.dispose();
  });
});

describe('transcoders demo', () => {
  it('runs end to end (reduced): the report exists, the transcoders reconstruct, the top paths reach the start year', async () => {
    setNumThreads(2);
    const out = tempDir('demo');
    const stages = new Set<string>();
    const result = await runDemo({ out, transcoders: { tokens: 200_000 }, evalSequences: 64, onProgress: (p) => stages.add(p.stage) });
    expect([...stages]).toEqual(['data', 'train', 'evaluate', 'circuit', 'experiment', 'features', 'graph', 'report']);
    const html = readFileSync(result.report, 'utf8');
    for (const part of ['<svg', 'The greater-than experiment', 'Top paths', 'Top activating examples', 'De-embedding', 'Logit effects']) expect(html).toContain(part);
    expect(html).not.toMatch(/https?:\/\/(?!www\.w3\.org)/); // self-contained
    for (const file of ['graph.json', 'feature-graph.json', 'demo.json', 'transcoders/layer_0/cfg.json']) expect(existsSync(join(out, file)), file).toBe(true);
    // The graphs are in our viewer (embedded in the report, and openable on their own), and saved for the service.
    for (const g of result.viewer.graphs) {
      expect(html).toContain(`<iframe class="viewer" src="viewer/index.html?slug=${g.slug}"`);
      validateGraphJson(JSON.parse(readFileSync(join(out, 'graphs', `${g.slug}.json`), 'utf8')));
      expect(g.nodes).toBeGreaterThan(3);
    }
    for (const file of ['index.html', 'viewer.js', 'viewer.css', 'data.js']) expect(existsSync(join(out, 'viewer', file)), file).toBe(true);
    expect(result.viewer.cards).toBeGreaterThan(0);
    for (const layer of result.evaluation.layers) expect(layer.fvu, `layer ${layer.layer}`).toBeLessThan(0.35);
    expect(result.evaluation.ceLossRecovered).toBeGreaterThan(0.7);
    expect(result.tokens[result.startYearPosition]).toBe('32');
    const top = result.logitCircuit.topPaths.slice(0, 5);
    expect(top.some((p) => p.positions.includes(result.startYearPosition)), JSON.stringify(top)).toBe(true);
    expect(result.experiment.original.meanProbDiff).toBeGreaterThan(0.8);
    expect(result.features.length).toBeGreaterThan(0);
  }, 600_000);

  it('runs from the CLI with the shipped transcoders (--pretrained) and has --help', () => {
    ensureDist();
    const out = tempDir('demo-cli');
    const r = runCli(['demo', '--pretrained', '--out', out, '--threads', '2']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain(`report: ${join(out, 'report.html')}`);
    expect(r.stdout).toMatch(/probability difference: model 0\.\d+/);
    expect(existsSync(join(out, 'report.html'))).toBe(true);
    expect(existsSync(join(out, 'transcoders'))).toBe(false); // nothing trained
    const help = runCli(['demo', '--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('--pretrained');
    // `run` defaults to the shipped model, which completes the greater-than prompt with a later year.
    const run = runCli(['run', '--prompt', 'The war lasted from the year 1732 to the year 17', '--json', '--threads', '2']);
    expect(run.status, run.stderr).toBe(0);
    const best = (JSON.parse(run.stdout) as { predictions: { token: string }[] }).predictions[0]!.token;
    expect(Number(best)).toBeGreaterThan(32);
    const bad = runCli(['demo', '--start-year', '99', '--pretrained', '--out', out]);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('startYear must be an integer in 2..97');
    // A model without the demo's vocabulary, or without shipped transcoders, is refused before any work.
    const other = tempDir('demo-other');
    expect(runCli(['make-model', other]).status).toBe(0);
    const wrongModel = runCli(['demo', '--model', other, '--out', out]);
    expect(wrongModel.status).toBe(2);
    expect(wrongModel.stderr).toMatch(/"\d\d" is not a single token, so the greater-than metric does not apply/);
    const copy = tempDir('demo-copy');
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json']) copyFileSync(join(DEMO_MODEL_DIR, f), join(copy, f));
    const noTranscoders = runCli(['demo', '--model', copy, '--pretrained', '--out', out]);
    expect(noTranscoders.status).toBe(2);
    expect(noTranscoders.stderr).toContain(`--pretrained: ${join(copy, 'transcoders', 'layer_0')} does not exist`);
  }, 300_000);
});

describe('reproducing the shipped model', () => {
  it('the training script run again from the seed gives the committed training curve (first 50 steps)', () => {
    ensureDist();
    const committed = JSON.parse(readFileSync(join(DEMO_MODEL_DIR, 'training.json'), 'utf8')) as TrainingLog;
    expect(committed.spec).toEqual(DEMO_MODEL);
    expect(committed.threads).toBe(2);
    // During warm-up the learning rate does not depend on the total step count, so a short run
    // follows the committed run's first steps exactly.
    const steps = 50;
    expect(steps).toBeLessThanOrEqual(DEMO_MODEL.warmupSteps);
    const dir = join(tempDir('demo-model'), 'greater-than');
    const r = spawnSync(process.execPath, [join(ROOT, 'scripts/train-demo-model.mjs'), dir, '--steps', String(steps), '--no-transcoders'], { encoding: 'utf8', timeout: 240_000 });
    expect(r.status, r.stderr).toBe(0);
    const log = JSON.parse(readFileSync(join(dir, 'training.json'), 'utf8')) as TrainingLog;
    expect(log.threads).toBe(2);
    expect(log.curve.map((c) => c.step)).toEqual([25, 50]);
    log.curve.forEach((c, i) => {
      const ref = committed.curve[i]!;
      expect(ref.step).toBe(c.step);
      expect(Math.abs(c.loss - ref.loss) / ref.loss, `step ${c.step}`).toBeLessThan(1e-4);
      expect(c.lr).toBeCloseTo(ref.lr, 12);
    });
    expect(existsSync(join(dir, 'training.svg'))).toBe(true);
    // The written folder is a Hugging Face model with the shipped tokenizer and configuration.
    for (const file of ['tokenizer.json', 'config.json']) expect(readFileSync(join(dir, file), 'utf8'), file).toBe(readFileSync(join(DEMO_MODEL_DIR, file), 'utf8'));
  }, 300_000);
});
