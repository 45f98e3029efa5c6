/**
 * Exports that keep the function: a transcoder trained on a TransformerLens-processed GPT-2 reads
 * LayerNormPre(resid) there, while circuit-tracer and sparsify run the model raw, where the MLP input
 * is w ⊙ LayerNormPre(resid) + b. On a random GPT-2 (LayerNorm gains ≠ 1, biases ≠ 0) loaded both
 * ways, the exported files run on the RAW model's activations must give the features (and outputs)
 * the original gives on the PROCESSED model's, to 1e-5 relative; the same export without the fold
 * must fail that comparison (so the test catches the bug it guards against); and an independent
 * PyTorch computation from the Hugging Face weights file agrees. Also: refusals, the SAELens 6
 * layout and model names, `transcoders convert` on a train output folder.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { convertCommand } from '../lib/cli/convert.js';
import { InvalidArgumentError } from '../lib/errors.js';
import { readSafetensors, writeSafetensors } from '../lib/io/safetensors.js';
import { loadModel, type Model } from '../lib/models/model.js';
import { Tensor } from '../lib/tensor.js';
import { mlpHooks, type TranscoderConfig } from '../lib/transcoders/config.js';
import {
  exportCircuitTracer,
  exportCircuitTracerSet,
  exportSaeLens,
  exportSparsify,
  loadCircuitTracerTranscoder,
  loadSaeLensTranscoder,
  loadSparsifyTranscoder,
  loadTranscoder,
  parseYaml,
} from '../lib/transcoders/formats/index.js';
import { loadNativeTranscoder, saveTranscoder } from '../lib/transcoders/formats/native.js';
import { Transcoder } from '../lib/transcoders/transcoder.js';
import { Rng } from '../lib/util/random.js';
import { DEVICE, makeTempModel, tempDir, TINY_GPT2 } from './helpers/fixtures.js';
import { maxDiff, PYTHON } from './helpers/reference.js';

const D = TINY_GPT2.dModel;
const F = 64;
/** Relative tolerance of every "same function" comparison (float32 arithmetic on both sides). */
const TOL = 1e-5;

let work: string;
let modelDir: string;
let raw: Model;
let processed: Model;
/** Activations of the same tokens: rawActs from the model loaded raw, processedActs from the processed one. */
let rawActs: Record<string, Tensor>;
let processedActs: Record<string, Tensor>;

const HOOKS = ['blocks.0.ln2.hook_normalized', 'blocks.1.ln2.hook_normalized', 'blocks.1.hook_resid_mid'];

function randomTensor(shape: number[], rng: Rng, scale = 1, offset = 0): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return Tensor.from(Float32Array.from({ length: n }, () => offset + scale * rng.normal()), shape);
}

/** A transcoder with random parameters (non-zero input pre-bias; skip path when asked) trained "on the processed model". */
async function randomTranscoder(config: Partial<TranscoderConfig>, seed: number): Promise<Transcoder> {
  const rng = new Rng(seed);
  const layer = config.layer ?? 1;
  const cfg = { arch: 'relu', dIn: D, dOut: D, dSae: F, layer, ...mlpHooks(layer), modelName: modelDir, processing: 'transformerlens', ...config } as TranscoderConfig;
  const params: Record<string, Tensor> = {
    W_enc: randomTensor([cfg.dIn, cfg.dSae], rng, 0.3),
    b_enc: randomTensor([cfg.dSae], rng, 0.2, cfg.arch === 'topk' ? 0.5 : 0),
    W_dec: randomTensor([cfg.dSae, cfg.dOut], rng, 0.3),
    b_dec: randomTensor([cfg.dIn], rng, 0.3),
    b_dec_out: randomTensor([cfg.dOut], rng, 0.3),
  };
  if (cfg.skip) params.W_skip = randomTensor([cfg.dIn, cfg.dOut], rng, 0.2);
  if (cfg.arch === 'jumprelu') params.threshold = Tensor.from(Float32Array.from({ length: cfg.dSae }, () => 0.4 * rng.uniform()), [cfg.dSae]);
  return Transcoder.fromParameters(cfg, params, { device: DEVICE });
}

/** The same parameters with processing 'none': what an export without the LayerNorm fold writes. */
async function unfolded(tc: Transcoder): Promise<Transcoder> {
  return Transcoder.fromParameters({ ...tc.config, processing: 'none' }, tc.parameters(), { device: DEVICE });
}

/** Relative max difference of `actual` to `expected` (scale: max |expected|, which must be non-zero). */
function relDiff(actual: Tensor, expected: Tensor): number {
  expect(actual.shape).toEqual(expected.shape);
  const { diff, scale } = maxDiff(actual, expected);
  expect(scale).toBeGreaterThan(0);
  return diff / scale;
}

function expectSame(actual: Tensor, expected: Tensor, what: string): void {
  const r = relDiff(actual, expected);
  expect(r, `${what}: relative max |diff| ${r}`).toBeLessThanOrEqual(TOL);
}

/** The comparison the fold is for: features of `exported` on the raw model vs `original` on the processed model. */
async function compareOnModels(exported: Transcoder, original: Transcoder, hook: string): Promise<{ features: number; outputs: number }> {
  const x = processedActs[hook]!;
  const xr = rawActs[hook]!;
  return {
    features: relDiff(await exported.encode(xr), await original.encode(x)),
    outputs: relDiff(await exported.forward(xr), await original.forward(x)),
  };
}

function python(code: string, args: string[]): string {
  const r = spawnSync(PYTHON, ['-c', code, ...args], { encoding: 'utf8', maxBuffer: 64 << 20, env: { ...process.env, PYTHONPATH: new URL('./reference/', import.meta.url).pathname } });
  if (r.status !== 0) throw new Error(`python failed (${r.status}): ${r.stderr || r.error?.message}`);
  return r.stdout;
}

function expectInvalid(fn: () => unknown, ...mentions: (string | RegExp)[]): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, `expected an InvalidArgumentError mentioning ${mentions.join(', ')}`).toBeInstanceOf(InvalidArgumentError);
  for (const m of mentions) expect((err as Error).message).toMatch(m);
}

beforeAll(async () => {
  work = tempDir('transcoders-exports-');
  modelDir = makeTempModel(TINY_GPT2);
  raw = await loadModel(modelDir, { processing: 'none', device: DEVICE });
  processed = await loadModel(modelDir, { processing: 'transformerlens', device: DEVICE });
  const rng = new Rng(7);
  const tokens = Array.from({ length: 3 }, () => Array.from({ length: 12 }, () => Math.floor(rng.uniform() * TINY_GPT2.vocabSize)));
  rawActs = (await raw.run(tokens, { cache: HOOKS, logits: false })).cache;
  processedActs = (await processed.run(tokens, { cache: HOOKS, logits: false })).cache;
});

afterAll(() => {
  raw?.dispose();
  processed?.dispose();
});

describe('the fixture makes the fold matter', () => {
  it('ln2 gains are not all one and its biases not zero; the raw and processed MLP inputs differ', () => {
    for (const layer of [0, 1]) {
      const w = raw.weight(`blocks.${layer}.ln2.w`).toFloat32Array();
      const b = raw.weight(`blocks.${layer}.ln2.b`).toFloat32Array();
      expect(Math.max(...Array.from(w, (v) => Math.abs(v - 1)))).toBeGreaterThan(0.05);
      expect(Math.max(...Array.from(b, Math.abs))).toBeGreaterThan(0.01);
      const hook = `blocks.${layer}.ln2.hook_normalized`;
      expect(relDiff(rawActs[hook]!, processedActs[hook]!)).toBeGreaterThan(0.05);
    }
  });
});

describe('circuit-tracer and sparsify exports of processed transcoders', () => {
  it('circuit-tracer (relu): the exported file on the raw model gives the features of the original on the processed model; unfolded it does not', async () => {
    const hook = 'blocks.1.ln2.hook_normalized';
    const tc = await randomTranscoder({ arch: 'relu' }, 1);
    const file = join(work, 'ct-relu', 'layer_1.safetensors');
    exportCircuitTracer(tc, file, { model: raw });
    const back = await loadCircuitTracerTranscoder(file, { device: DEVICE });
    expect(back.config).toMatchObject({ arch: 'relu', layer: 1, hookIn: hook, hookOut: 'blocks.1.hook_mlp_out', processing: 'none' });
    const folded = await compareOnModels(back, tc, hook);
    expect(folded.features, `features, relative max |diff| ${folded.features}`).toBeLessThanOrEqual(TOL);
    expect(folded.outputs, `outputs, relative max |diff| ${folded.outputs}`).toBeLessThanOrEqual(TOL);
    expect((await readSafetensors(file)).metadata).toMatchObject({ 'transcoders.trained_on_processing': 'transformerlens', 'transcoders.input_fold': 'blocks.1.ln2 weight and bias folded into the encoder' });

    // The bug this guards against: the same parameters written without the fold compute something else on the raw model.
    const plainFile = join(work, 'ct-relu-unfolded', 'layer_1.safetensors');
    exportCircuitTracer(await unfolded(tc), plainFile);
    const wrong = await compareOnModels(await loadCircuitTracerTranscoder(plainFile, { device: DEVICE }), tc, hook);
    expect(wrong.features, 'unfolded export must not match').toBeGreaterThan(1000 * TOL);
  });

  it('circuit-tracer: skip and JumpReLU transcoders keep features and outputs; residual-stream inputs are centred instead', async () => {
    const cases: [Partial<TranscoderConfig>, string][] = [
      [{ arch: 'relu', skip: true }, 'blocks.1.ln2.hook_normalized'],
      [{ arch: 'jumprelu', skip: true, layer: 0, ...mlpHooks(0) }, 'blocks.0.ln2.hook_normalized'],
      [{ arch: 'relu', skip: true, hookIn: 'blocks.1.hook_resid_mid' }, 'blocks.1.hook_resid_mid'],
    ];
    for (const [i, [config, hook]] of cases.entries()) {
      const tc = await randomTranscoder(config, 10 + i);
      const file = join(work, `ct-case-${i}`, `layer_${tc.config.layer}.safetensors`);
      // Centring needs no model; passing it anyway must not change anything.
      exportCircuitTracer(tc, file, { model: raw });
      const back = await loadCircuitTracerTranscoder(file, { device: DEVICE, hookIn: hook });
      const folded = await compareOnModels(back, tc, hook);
      expect(folded.features, `${hook} ${config.arch}: features ${folded.features}`).toBeLessThanOrEqual(TOL);
      expect(folded.outputs, `${hook} ${config.arch}: outputs ${folded.outputs}`).toBeLessThanOrEqual(TOL);
      const plainFile = join(work, `ct-case-${i}-unfolded`, `layer_${tc.config.layer}.safetensors`);
      exportCircuitTracer(await unfolded(tc), plainFile);
      const wrong = await compareOnModels(await loadCircuitTracerTranscoder(plainFile, { device: DEVICE, hookIn: hook }), tc, hook);
      expect(wrong.outputs, `${hook}: unfolded export must not match`).toBeGreaterThan(1000 * TOL);
    }
  });

  it('circuit-tracer set (2 layers, relu + skip): every layer folded with its own ln2, recorded in config.yaml', async () => {
    const tcs = [await randomTranscoder({ arch: 'relu', skip: true, layer: 0, ...mlpHooks(0) }, 20), await randomTranscoder({ arch: 'relu', skip: true, layer: 1 }, 21)];
    const dir = join(work, 'ct-set');
    exportCircuitTracerSet(tcs, dir, { model: raw });
    const cfg = parseYaml(readFileSync(join(dir, 'config.yaml'), 'utf8'), 'config.yaml').value as Record<string, unknown>;
    expect(cfg).toMatchObject({
      model_kind: 'transcoder_set',
      model_name: 'gpt2',
      feature_input_hook: 'ln2.hook_normalized',
      feature_output_hook: 'hook_mlp_out',
      activation: 'relu',
      transcoders_export: {
        trained_on_processing: 'transformerlens',
        input_fold: 'layernorm',
        folded: ['blocks.0.ln2 weight and bias folded into the encoder', 'blocks.1.ln2 weight and bias folded into the encoder'],
      },
    });
    for (const tc of tcs) {
      const hook = tc.config.hookIn;
      const r = await compareOnModels(await loadTranscoder(dir, { layer: tc.config.layer, device: DEVICE }), tc, hook);
      expect(r.features, `set layer ${tc.config.layer} features ${r.features}`).toBeLessThanOrEqual(TOL);
      expect(r.outputs, `set layer ${tc.config.layer} outputs ${r.outputs}`).toBeLessThanOrEqual(TOL);
    }
  });

  it('sparsify (topk): the exported folder on the raw model gives the original features; unfolded it does not', async () => {
    const hook = 'blocks.1.ln2.hook_normalized';
    const tc = await randomTranscoder({ arch: 'topk', k: 8 }, 30);
    const dir = join(work, 'sp', 'h.1.mlp');
    exportSparsify(tc, dir, { model: raw });
    const back = await loadSparsifyTranscoder(dir, { device: DEVICE });
    expect(back.config).toMatchObject({ arch: 'topk', k: 8, layer: 1, hookIn: hook, processing: 'none' });
    const folded = await compareOnModels(back, tc, hook);
    expect(folded.features, `features ${folded.features}`).toBeLessThanOrEqual(TOL);
    expect(folded.outputs, `outputs ${folded.outputs}`).toBeLessThanOrEqual(TOL);
    expect(JSON.parse(readFileSync(join(dir, 'cfg.json'), 'utf8')).transcoders_export).toEqual({
      trained_on_processing: 'transformerlens',
      input_fold: 'blocks.1.ln2 weight and bias folded into the encoder',
      hook_in: hook,
      hook_out: 'blocks.1.hook_mlp_out',
    });
    const plain = join(work, 'sp-unfolded', 'h.1.mlp');
    exportSparsify(await unfolded(tc), plain);
    const wrong = await compareOnModels(await loadSparsifyTranscoder(plain, { device: DEVICE }), tc, hook);
    expect(wrong.features, 'unfolded export must not match').toBeGreaterThan(1000 * TOL);
  });

  it('independent check in PyTorch from the Hugging Face weights file: exported files on LN(resid) = originals on LayerNormPre(resid)', async () => {
    // Python recomputes both MLP inputs from the residual with the ln_2 weight and bias read from
    // model.safetensors, runs the original parameters on the normalised residual and each exported
    // file with its tool's semantics on the raw MLP input.
    const relu = await randomTranscoder({ arch: 'relu', skip: true }, 40);
    const topk = await randomTranscoder({ arch: 'topk', k: 8 }, 41);
    const dir = join(work, 'python');
    exportCircuitTracer(relu, join(dir, 'layer_1.safetensors'), { model: raw });
    exportSparsify(topk, join(dir, 'h.1.mlp'), { model: raw });
    writeSafetensors(join(dir, 'relu.safetensors'), relu.parameters());
    writeSafetensors(join(dir, 'topk.safetensors'), topk.parameters());
    writeSafetensors(join(dir, 'resid.safetensors'), { resid: rawActs['blocks.1.hook_resid_mid']! });
    const code = `
import json, os, sys, torch
import torch.nn.functional as F
from safetensors_io import load_file, save_file
model_dir, d = sys.argv[1], sys.argv[2]
hf = load_file(os.path.join(model_dir, "model.safetensors"))
eps = json.load(open(os.path.join(model_dir, "config.json")))["layer_norm_epsilon"]
w, b = hf["h.1.ln_2.weight"].double(), hf["h.1.ln_2.bias"].double()
r = load_file(os.path.join(d, "resid.safetensors"))["resid"].double()
x_p = F.layer_norm(r, (r.shape[-1],), eps=eps)          # processed: LayerNormPre
x_r = F.layer_norm(r, (r.shape[-1],), w, b, eps=eps)    # raw: the MLP input
out = {}
o = {k: v.double() for k, v in load_file(os.path.join(d, "relu.safetensors")).items()}
out["relu_orig"] = torch.relu((x_p - o["b_dec"]) @ o["W_enc"] + o["b_enc"])
out["relu_orig_y"] = out["relu_orig"] @ o["W_dec"] + o["b_dec_out"] + x_p @ o["W_skip"]
t = {k: v.double() for k, v in load_file(os.path.join(d, "layer_1.safetensors")).items()}
out["relu_ct"] = torch.relu(F.linear(x_r, t["W_enc"], t["b_enc"]))
out["relu_ct_y"] = out["relu_ct"] @ t["W_dec"] + t["b_dec"] + x_r @ t["W_skip"].T
o = {k: v.double() for k, v in load_file(os.path.join(d, "topk.safetensors")).items()}
k = json.load(open(os.path.join(d, "h.1.mlp", "cfg.json")))["k"]
def topk_dense(pre):
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, idx, vals)
out["topk_orig"] = topk_dense(torch.relu((x_p - o["b_dec"]) @ o["W_enc"] + o["b_enc"]))
s = {k2: v.double() for k2, v in load_file(os.path.join(d, "h.1.mlp", "sae.safetensors")).items()}
out["topk_sp"] = topk_dense(torch.relu(F.linear(x_r, s["encoder.weight"], s["encoder.bias"])))
save_file({k2: v.float() for k2, v in out.items()}, os.path.join(d, "out.safetensors"))
`;
    python(code, [modelDir, dir]);
    const py = (await readSafetensors(join(dir, 'out.safetensors'))).tensors;
    expectSame(py.relu_ct!, py.relu_orig!, 'circuit-tracer export on LN(resid) vs original on LayerNormPre(resid), features (PyTorch)');
    expectSame(py.relu_ct_y!, py.relu_orig_y!, 'circuit-tracer export vs original, outputs (PyTorch)');
    expectSame(py.topk_sp!, py.topk_orig!, 'sparsify export vs original, features (PyTorch)');
    // And our own forward of the original on the processed model agrees with the PyTorch one.
    expectSame(await relu.encode(processedActs['blocks.1.ln2.hook_normalized']!), py.relu_orig!, 'our processed-model features vs PyTorch');
  });

  it('transcoders of raw models (processing none or not recorded) export unchanged, with or without a model', async () => {
    for (const processing of ['none', null] as const) {
      const tc = await randomTranscoder({ arch: 'relu', skip: true, processing }, 50);
      const a = join(work, `plain-${processing}`, 'a.safetensors');
      const b = join(work, `plain-${processing}`, 'b.safetensors');
      exportCircuitTracer(tc, a);
      exportCircuitTracer(tc, b, { model: raw });
      expect(readFileSync(a).equals(readFileSync(b))).toBe(true);
      const back = await loadCircuitTracerTranscoder(a, { device: DEVICE });
      const x = rawActs['blocks.1.ln2.hook_normalized']!;
      expectSame(await back.forward(x), await tc.forward(x), `processing ${processing}: same function on the same input`);
    }
  });
});

describe('refusals, before anything is written', () => {
  it('a processed transcoder without the raw model, or with a processed one, is refused with what is needed', async () => {
    const tc = await randomTranscoder({ arch: 'relu' }, 60);
    const file = join(work, 'refused', 'layer_1.safetensors');
    expectInvalid(() => exportCircuitTracer(tc, file), /TransformerLens-processed/, /processing 'none'/, /--model DIR/, /blocks\.1\.ln2/);
    expectInvalid(() => exportCircuitTracer(tc, file, { model: processed }), /processing 'transformerlens'/, /load it with processing 'none'/);
    const bf16 = await loadModel(modelDir, { processing: 'none', dtype: 'bfloat16' });
    expectInvalid(() => exportCircuitTracer(tc, file, { model: bf16 }), /bfloat16/, /float32/);
    bf16.dispose();
    const topk = await randomTranscoder({ arch: 'topk', k: 8 }, 61);
    expectInvalid(() => exportSparsify(topk, join(work, 'refused', 'sp')), /sparsify/, /processing 'none'/);
    const layer0 = await randomTranscoder({ layer: 0, ...mlpHooks(0) }, 62);
    expectInvalid(() => exportCircuitTracerSet([layer0, tc], join(work, 'refused', 'set')), /--model DIR/);
    expect(existsSync(join(work, 'refused'))).toBe(false);
  });

  it('a zero LayerNorm gain is refused naming the layer; so are hooks that cannot be converted exactly', async () => {
    const broken = join(tempDir('transcoders-zero-ln-'), 'gpt2');
    cpSync(modelDir, broken, { recursive: true });
    const { tensors } = await readSafetensors(join(broken, 'model.safetensors'));
    const w = tensors['h.1.ln_2.weight']!.toFloat32Array();
    w[3] = 0;
    writeSafetensors(join(broken, 'model.safetensors'), { ...tensors, 'h.1.ln_2.weight': Tensor.from(w, [D]) });
    const zeroModel = await loadModel(broken, { processing: 'none' });
    const tc = await randomTranscoder({ arch: 'relu' }, 70);
    expectInvalid(() => exportCircuitTracer(tc, join(work, 'zero', 'layer_1.safetensors'), { model: zeroModel }), /blocks\.1\.ln2\.w\[3\] = 0/, /layer 1/);
    zeroModel.dispose();

    const postIn = await randomTranscoder({ arch: 'relu', dIn: 4 * D, hookIn: 'blocks.1.mlp.hook_post' }, 71);
    expectInvalid(() => exportCircuitTracer(postIn, join(work, 'zero', 'x.safetensors'), { model: raw }), /blocks\.1\.mlp\.hook_post/, /computes differently/);
    const normOut = await randomTranscoder({ arch: 'relu', hookOut: 'blocks.1.ln2.hook_normalized' }, 72);
    expectInvalid(() => exportCircuitTracer(normOut, join(work, 'zero', 'y.safetensors'), { model: raw }), /writes 'blocks\.1\.ln2\.hook_normalized'/, /residual stream/);
    const residTopk = await randomTranscoder({ arch: 'topk', k: 8, hookIn: 'blocks.1.hook_resid_mid' }, 73);
    expectInvalid(() => exportSparsify(residTopk, join(work, 'zero', 'sp'), { model: raw }), /MLP module/, /hook_resid_mid/);
    expect(existsSync(join(work, 'zero'))).toBe(false);
  });

  it('an existing file where a folder is needed (and a folder where a file is needed) is refused', async () => {
    const tc = await randomTranscoder({ arch: 'topk', k: 8, processing: 'none' }, 80);
    const dir = join(work, 'paths');
    mkdirSync(dir, { recursive: true });
    const file = join(dir, 'a-file');
    writeFileSync(file, 'x');
    expectInvalid(() => exportSparsify(tc, file), /a-file exists and is not a folder/);
    const relu = await randomTranscoder({ arch: 'relu', processing: 'none' }, 81);
    const layer0 = await randomTranscoder({ arch: 'relu', layer: 0, ...mlpHooks(0), processing: 'none' }, 82);
    expectInvalid(() => exportSaeLens(relu, file), /not a folder/);
    expectInvalid(() => exportCircuitTracerSet([layer0], file), /not a folder/);
    expectInvalid(() => exportCircuitTracer(tc, dir), /is a folder/);
    expectInvalid(() => exportCircuitTracer(tc, join(file, 'layer_0.safetensors')), /not a folder/);
    expect(readdirSync(dir)).toEqual(['a-file']);
  });
});

describe('SAELens 6 export', () => {
  it('keeps the processing in explicit model_from_pretrained_kwargs, names a local model by config.json, and reads back', async () => {
    const tc = await randomTranscoder({ arch: 'relu', skip: true }, 90);
    const dir = join(work, 'saelens');
    exportSaeLens(tc, dir);
    const cfg = JSON.parse(readFileSync(join(dir, 'cfg.json'), 'utf8'));
    expect(cfg).toMatchObject({
      architecture: 'skip_transcoder',
      apply_b_dec_to_input: false,
      metadata: {
        model_name: 'gpt2', // the fixture folder's name (its config.json has no _name_or_path)
        hook_name: 'blocks.1.ln2.hook_normalized',
        hook_name_out: 'blocks.1.hook_mlp_out',
        prepend_bos: true,
        model_from_pretrained_kwargs: { fold_ln: true, center_writing_weights: true, center_unembed: true, fold_value_biases: true },
        sae_lens_version: '6.0.0',
      },
    });
    expect(cfg.hook_name).toBeUndefined();
    const back = await loadSaeLensTranscoder(dir, { device: DEVICE });
    expect(back.config).toMatchObject({ arch: 'relu', skip: true, layer: 1, hookIn: 'blocks.1.ln2.hook_normalized', hookOut: 'blocks.1.hook_mlp_out', processing: 'transformerlens', modelName: 'gpt2' });
    // SAELens runs the processed model here, so nothing is folded: same function on the same (processed) input.
    const x = processedActs['blocks.1.ln2.hook_normalized']!;
    expectSame(await back.forward(x), await tc.forward(x), 'SAELens round trip');

    const named = join(tempDir('transcoders-named-'), 'my-local-copy');
    cpSync(modelDir, named, { recursive: true });
    writeFileSync(join(named, 'config.json'), JSON.stringify({ ...JSON.parse(readFileSync(join(modelDir, 'config.json'), 'utf8')), _name_or_path: 'openai-community/gpt2' }));
    const renamed = await Transcoder.fromParameters({ ...tc.config, modelName: named }, tc.parameters());
    exportSaeLens(renamed, join(work, 'saelens-named'));
    expect(JSON.parse(readFileSync(join(work, 'saelens-named', 'cfg.json'), 'utf8')).metadata.model_name).toBe('openai-community/gpt2');
    const elsewhere = await Transcoder.fromParameters({ ...tc.config, modelName: '/nowhere/on/this/machine/gpt2-medium' }, tc.parameters());
    exportSaeLens(elsewhere, join(work, 'saelens-elsewhere'));
    expect(JSON.parse(readFileSync(join(work, 'saelens-elsewhere', 'cfg.json'), 'utf8')).metadata.model_name).toBe('gpt2-medium');
  });
});

describe('transcoders convert', () => {
  /** A folder as `transcoders train` writes it: OUT/layer_L/ (native) and a log. */
  async function trainFolder(name: string, config: Partial<TranscoderConfig>, modelName: string): Promise<{ dir: string; tcs: Transcoder[] }> {
    const dir = join(work, name);
    const tcs = [await randomTranscoder({ ...config, layer: 0, ...mlpHooks(0), modelName }, 100), await randomTranscoder({ ...config, layer: 1, ...mlpHooks(1), modelName }, 101)];
    for (const tc of tcs) saveTranscoder(tc, join(dir, `layer_${tc.config.layer}`));
    writeFileSync(join(dir, 'train.jsonl'), '{}\n');
    return { dir, tcs };
  }
  const convert = async (...args: string[]) => {
    const values: Record<string, string> = {};
    const positionals: string[] = [];
    for (let i = 0; i < args.length; i++) {
      if (args[i]!.startsWith('--')) values[args[i]!.slice(2)] = args[++i]!;
      else positionals.push(args[i]!);
    }
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    try {
      await convertCommand.run(values, positionals);
      return log.mock.calls.map((c) => String(c[0]));
    } finally {
      log.mockRestore();
    }
  };

  it('a train folder to circuit-tracer: a complete set, folded with the recorded model folder', async () => {
    const { dir, tcs } = await trainFolder('train-relu', { arch: 'relu' }, modelDir);
    const out = join(work, 'convert-ct');
    const lines = await convert(dir, out, '--to', 'circuit-tracer');
    expect(lines.join('\n')).toMatch(/circuit-tracer set of 2 layers/);
    expect(readdirSync(out).sort()).toEqual(['config.yaml', 'layer_0.safetensors', 'layer_1.safetensors']);
    const cfg = parseYaml(readFileSync(join(out, 'config.yaml'), 'utf8'), 'config.yaml').value as Record<string, unknown>;
    expect(cfg).toMatchObject({ model_kind: 'transcoder_set', activation: 'relu', transcoders: [join(out, 'layer_0.safetensors'), join(out, 'layer_1.safetensors')] });
    for (const tc of tcs) {
      const r = await compareOnModels(await loadTranscoder(out, { layer: tc.config.layer }), tc, tc.config.hookIn);
      expect(r.features, `convert layer ${tc.config.layer}: ${r.features}`).toBeLessThanOrEqual(TOL);
    }
  });

  it('a train folder to sparsify (h.L.mlp/), saelens and native (layer_L/); --layer picks one; --model when the recorded folder is gone', async () => {
    const { dir, tcs } = await trainFolder('train-topk', { arch: 'topk', k: 8 }, '/gone/gpt2');
    await expect(convert(dir, join(work, 'convert-sp-fail'), '--to', 'sparsify')).rejects.toThrow(/--model DIR/);
    expect(existsSync(join(work, 'convert-sp-fail'))).toBe(false);
    const sp = join(work, 'convert-sp');
    await convert(dir, sp, '--to', 'sparsify', '--model', modelDir);
    expect(readdirSync(sp).sort()).toEqual(['h.0.mlp', 'h.1.mlp']);
    for (const tc of tcs) {
      const back = await loadTranscoder(join(sp, `h.${tc.config.layer}.mlp`));
      expect(back.config).toMatchObject({ arch: 'topk', k: 8, layer: tc.config.layer });
      const r = await compareOnModels(back, tc, tc.config.hookIn);
      expect(r.features, `sparsify layer ${tc.config.layer}: ${r.features}`).toBeLessThanOrEqual(TOL);
    }

    const { dir: reluDir, tcs: reluTcs } = await trainFolder('train-relu-2', { arch: 'relu', skip: true }, modelDir);
    for (const to of ['saelens', 'native']) {
      const out = join(work, `convert-${to}`);
      await convert(reluDir, out, '--to', to);
      expect(readdirSync(out).sort()).toEqual(['layer_0', 'layer_1']);
      for (const tc of reluTcs) {
        const back = await loadTranscoder(join(out, `layer_${tc.config.layer}`));
        expect(back.config).toMatchObject({ layer: tc.config.layer, processing: 'transformerlens' });
        const x = processedActs[tc.config.hookIn]!;
        expectSame(await back.forward(x), await tc.forward(x), `${to} layer ${tc.config.layer}`);
      }
    }
    const one = join(work, 'convert-one');
    await convert(reluDir, one, '--to', 'circuit-tracer', '--layer', '1');
    expect(readdirSync(one)).toEqual(['layer_1.safetensors']);
    const single = await loadNativeTranscoder(join(reluDir, 'layer_1'));
    const r = await compareOnModels(await loadCircuitTracerTranscoder(join(one, 'layer_1.safetensors')), single, 'blocks.1.ln2.hook_normalized');
    expect(r.outputs).toBeLessThanOrEqual(TOL);
    await expect(convert(reluDir, one, '--to', 'native', '--layer', '5')).rejects.toThrow(/no layer_5/);
    await expect(convert(reluDir, join(work, 'convert-uri'), '--to', 'saelens', '--uri-prefix', 'hf://a/b')).rejects.toThrow(InvalidArgumentError);
  });
});
