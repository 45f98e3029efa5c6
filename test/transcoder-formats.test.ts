/**
 * Foreign transcoder formats (SAELens, circuit-tracer, sparsify): fixtures written by an independent
 * Python writer (test/reference/safetensors_io.py, torch 1.13) together with each format's own
 * forward computed in PyTorch from its own semantics; our loaders must reproduce it (1e-5 relative).
 * Exports of our transcoders (non-zero input pre-bias, skip paths) are re-read by Python, checked for
 * key names and shapes, and run with the format's semantics, and reloaded by us; circuit-tracer
 * sets' config.yaml is also read with PyYAML, as circuit-tracer does. Malformed files must fail with
 * FormatErrors naming the file and the key (and the line, for YAML). The LayerNorm folding of
 * exports of processed transcoders is tested in exports.test.ts.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { FormatError, InvalidArgumentError } from '../lib/errors.js';
import { readSafetensors, writeSafetensors, type RawTensor } from '../lib/io/safetensors.js';
import { Tensor } from '../lib/tensor.js';
import { mlpHooks, type TranscoderConfig } from '../lib/transcoders/config.js';
import {
  detectTranscoderFormat,
  exportCircuitTracer,
  exportCircuitTracerSet,
  exportSaeLens,
  exportSparsify,
  loadCircuitTracerTranscoder,
  loadSaeLensTranscoder,
  loadSparsifyTranscoder,
  loadTranscoder,
  parseYaml,
  readCircuitTracerConfig,
  SAELENS_LAYOUT_VERSION,
} from '../lib/transcoders/formats/index.js';
import { saveTranscoder } from '../lib/transcoders/formats/native.js';
import { Transcoder } from '../lib/transcoders/transcoder.js';
import { Rng } from '../lib/util/random.js';
import { DEVICE, tempDir } from './helpers/fixtures.js';
import { maxDiff, PYTHON } from './helpers/reference.js';

const REFERENCE_DIR = new URL('./reference/', import.meta.url).pathname;

/** Runs inline Python with test/reference on the path; returns stdout. */
function python(code: string, args: string[]): string {
  const r = spawnSync(PYTHON, ['-c', code, ...args], {
    encoding: 'utf8',
    maxBuffer: 64 << 20,
    env: { ...process.env, PYTHONPATH: REFERENCE_DIR },
  });
  if (r.status !== 0) throw new Error(`python failed (${r.status}): ${r.stderr || r.error?.message}`);
  return r.stdout;
}

// Each format's forward, written from its own source's semantics (not from ours).
const PY_SEMANTICS = `
import torch
def saelens_forward(cfg, t, x):
    arch = cfg.get("architecture", "standard")
    apply = cfg.get("apply_b_dec_to_input", True) if not arch.endswith("transcoder") else False
    sae_in = x - t["b_dec"] if apply else x
    if "b_dec_out" in t:
        sae_in = x - t["b_dec"]
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    f = torch.relu(pre)
    if arch.startswith("jumprelu"):
        f = f * (pre > t["threshold"]).to(f.dtype)
    y = f @ t["W_dec"] + (t["b_dec_out"] if "b_dec_out" in t else t["b_dec"])
    if "skip" in arch:
        y = y + x @ t["W_skip"].T
    return y

def circuit_tracer_forward(t, x, activation=None, k=None):
    pre = torch.nn.functional.linear(x, t["W_enc"], t["b_enc"])
    # circuit-tracer: activation relu / topk from the config, anything else from the weights
    if "activation_function.threshold" in t and activation not in ("relu", "topk"):
        f = pre * (pre > t["activation_function.threshold"]).to(pre.dtype)
    elif activation == "topk" or ("k" in t and activation is None):
        kk = k if k is not None else int(t["k"].item())
        _, idx = torch.topk(pre, k=kk, dim=-1)
        gate = torch.zeros_like(pre).scatter_(-1, idx, 1)
        assert bool((torch.topk(pre, k=kk, dim=-1).values[:, -1] > 0).all()), "fixture outside the regime where TopK without ReLU agrees"
        f = pre * gate
    else:
        f = torch.relu(pre)
    y = f @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        y = y + x @ t["W_skip"].T
    return y

def sparsify_forward(cfg, t, x):
    inp = x if cfg.get("transcode", False) else x - t["b_dec"]
    pre = torch.relu(torch.nn.functional.linear(inp, t["encoder.weight"], t["encoder.bias"]))
    vals, idx = pre.topk(cfg["k"], dim=-1, sorted=False)
    y = (vals[..., None] * t["W_dec"][idx]).sum(-2) + t["b_dec"]
    if cfg.get("skip_connection", False):
        y = y + x @ t["W_skip"].mT
    return y
`;

const PY_FIXTURES = `
import json, os, sys, torch
from safetensors_io import save_file
${PY_SEMANTICS}
out = sys.argv[1]
g = torch.Generator().manual_seed(0)
def rn(*shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale
d, F, N = 8, 32, 16
x = rn(N, d)
save_file({"x": x}, os.path.join(out, "x.safetensors"))
expected = {}
def folder(name):
    p = os.path.join(out, name)
    os.makedirs(p, exist_ok=True)
    return p

def saelens(name, cfg, d_out, skip=False, jump=False, input_bias=False, b_dec_out=False):
    t = {"W_enc": rn(d, F, scale=0.5), "b_enc": rn(F, scale=0.2), "W_dec": rn(F, d_out, scale=0.3)}
    t["b_dec"] = rn(d if (input_bias or b_dec_out) else d_out, scale=0.3)
    if b_dec_out:
        t["b_dec_out"] = rn(d_out, scale=0.3)
    if skip:
        t["W_skip"] = rn(d_out, d, scale=0.2)
    if jump:
        t["threshold"] = rn(F, scale=0.3)   # some negative: SAELens applies a ReLU first
    p = folder(name)
    save_file(t, os.path.join(p, "sae_weights.safetensors"))
    json.dump(cfg, open(os.path.join(p, "cfg.json"), "w"))
    expected[name] = saelens_forward(cfg, t, x)

base = {"d_in": d, "d_sae": F, "dtype": "float32", "device": "cpu", "normalize_activations": "none"}
saelens("sl_transcoder", dict(base, architecture="transcoder", d_out=d, apply_b_dec_to_input=False, model_name="gpt2",
        hook_name="blocks.2.ln2.hook_normalized", hook_name_out="blocks.2.hook_mlp_out", hook_layer=2,
        model_from_pretrained_kwargs={"fold_ln": False}), d)
saelens("sl_skip", dict(base, architecture="skip_transcoder", d_out=6, apply_b_dec_to_input=False,
        metadata={"sae_lens_version": "6.5.0", "model_name": "gpt2", "hook_name": "blocks.1.hook_resid_mid", "hook_name_out": "blocks.1.hook_mlp_out"}), 6, skip=True)
saelens("sl_jumprelu", dict(base, architecture="jumprelu_transcoder", d_out=d, apply_b_dec_to_input=False,
        hook_name="blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out"), d, jump=True)
saelens("sl_jumprelu_skip", dict(base, architecture="jumprelu_skip_transcoder", d_out=d, apply_b_dec_to_input=False,
        hook_name="blocks.0.ln2.hook_normalized", hook_name_out="blocks.0.hook_mlp_out"), d, skip=True, jump=True)
saelens("sl_standard", dict(base, architecture="standard", apply_b_dec_to_input=True, hook_point="blocks.3.hook_resid_pre",
        activation_fn_str="relu"), d, input_bias=True)
saelens("sl_dunefsky_folded", dict(base, architecture="standard", apply_b_dec_to_input=False, d_out=d, model_name="gpt2-small",
        hook_name="blocks.8.ln2.hook_normalized", hook_name_out="blocks.8.hook_mlp_out", hook_layer=8), d)
saelens("sl_dunefsky_unfolded", dict(base, architecture="standard", d_out=d,
        hook_name="blocks.8.ln2.hook_normalized", hook_name_out="blocks.8.hook_mlp_out"), d, b_dec_out=True)

def plt(path, skip=False, jump=False, k=None, dtype=torch.float32, bias=0.0):
    t = {"W_enc": rn(F, d, scale=0.5), "b_enc": rn(F, scale=0.2) + bias, "W_dec": rn(F, d, scale=0.3), "b_dec": rn(d, scale=0.3)}
    if skip:
        t["W_skip"] = rn(d, d, scale=0.2)
    if jump:
        t["activation_function.threshold"] = rn(F, scale=0.3)
    if k is not None:
        t["k"] = torch.tensor(k)
    t = {key: (v.to(dtype) if v.is_floating_point() else v) for key, v in t.items()}
    save_file(t, path)
    return {key: (v.float() if v.is_floating_point() else v) for key, v in t.items()}

ct = folder("ct_set")
open(os.path.join(ct, "config.yaml"), "w").write("""# a transcoder set
model_kind: transcoder_set
model_name: "gpt2"   # quoted
feature_input_hook: mlp.hook_in
feature_output_hook: 'hook_mlp_out'
transcoders:
  - hf://someone/repo/layer_0.safetensors
  - hf://someone/repo/layer_1.safetensors?revision=main
""")
expected["ct_layer0"] = circuit_tracer_forward(plt(os.path.join(ct, "layer_0.safetensors")), x)
expected["ct_layer1"] = circuit_tracer_forward(plt(os.path.join(ct, "layer_1.safetensors"), skip=True), x)
expected["ct_jumprelu_bf16"] = circuit_tracer_forward(plt(os.path.join(folder("ct_lone"), "jr.safetensors"), skip=True, jump=True, dtype=torch.bfloat16), x)
expected["ct_topk"] = circuit_tracer_forward(plt(os.path.join(folder("ct_topk"), "layer_4.safetensors"), k=4, bias=0.5), x)

def sparsify(name, cfg, d_out, skip):
    M = cfg["num_latents"] or cfg["expansion_factor"] * d
    t = {"encoder.weight": rn(M, d, scale=0.5), "encoder.bias": rn(M, scale=0.2), "W_dec": rn(M, d_out, scale=0.3), "b_dec": rn(d_out, scale=0.3)}
    if skip:
        t["W_skip"] = rn(d_out, d, scale=0.2)
    p = folder(name)
    save_file(t, os.path.join(p, "sae.safetensors"))
    json.dump(dict(cfg, d_in=d), open(os.path.join(p, "cfg.json"), "w"))
    expected[name.replace("/", "_")] = sparsify_forward(cfg, t, x)

sparsify("sp/layers.5.mlp", {"activation": "topk", "expansion_factor": 32, "normalize_decoder": False, "num_latents": F, "k": 4,
         "multi_topk": False, "skip_connection": True, "transcode": True}, d, True)
sparsify("sp/custom_coder", {"activation": "topk", "expansion_factor": 4, "normalize_decoder": True, "num_latents": 0, "k": 5,
         "multi_topk": False, "skip_connection": False, "transcode": False}, d, False)
save_file(expected, os.path.join(out, "expected.safetensors"))
`;

// Reads our exports with the independent reader, checks their layout, runs each format's forward.
const PY_EXPORT_CHECK = `
import json, os, sys, torch
from safetensors_io import load_file, save_file
${PY_SEMANTICS}
spec = json.load(open(sys.argv[1]))
x = load_file(sys.argv[2])["x"]
outputs, layouts = {}, {}
for name, fmt, path, activation, k in spec:
    if fmt == "saelens":
        cfg = json.load(open(os.path.join(path, "cfg.json")))
        t = load_file(os.path.join(path, "sae_weights.safetensors"))
        assert cfg["apply_b_dec_to_input"] is False and cfg["normalize_activations"] == "none" and cfg["dtype"] == "float32"
        assert cfg["metadata"]["sae_lens_version"] >= "6" and "hook_name" not in cfg, "SAELens 6 layout: model fields in metadata"
        assert list(t["W_enc"].shape) == [cfg["d_in"], cfg["d_sae"]] and list(t["W_dec"].shape) == [cfg["d_sae"], cfg["d_out"]]
        outputs[name] = saelens_forward(cfg, t, x)
    elif fmt == "circuit-tracer":
        t = load_file(path)
        # circuit-tracer takes the activation from config.yaml (a lone file: the caller's arguments)
        outputs[name] = circuit_tracer_forward(t, x, activation, k)
        cfg = None
    else:
        cfg = json.load(open(os.path.join(path, "cfg.json")))
        t = load_file(os.path.join(path, "sae.safetensors"))
        outputs[name] = sparsify_forward(cfg, t, x)
    layouts[name] = {"cfg": cfg, "tensors": {k: [str(v.dtype), list(v.shape)] for k, v in t.items()}}
save_file(outputs, sys.argv[3])
print(json.dumps(layouts))
`;

const D = 8;
const F = 32;

function expectClose(actual: Tensor, expected: Tensor, what: string): void {
  expect(actual.shape, what).toEqual(expected.shape);
  const { diff, scale } = maxDiff(actual, expected);
  expect(diff, `${what}: max |diff| ${diff} (scale ${scale})`).toBeLessThanOrEqual(1e-5 * Math.max(1, scale));
}

function randomTensor(shape: number[], rng: Rng, scale = 1, offset = 0): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return Tensor.from(Float32Array.from({ length: n }, () => offset + scale * rng.normal()), shape);
}

/** One of ours with random parameters, a non-zero input pre-bias, and (when asked) a skip path. */
async function randomTranscoder(config: Partial<TranscoderConfig>, seed: number): Promise<Transcoder> {
  const rng = new Rng(seed);
  const cfg = { dIn: D, dOut: D, dSae: F, layer: 3, ...mlpHooks(3), modelName: 'gpt2', processing: 'none', ...config } as TranscoderConfig;
  const params: Record<string, Tensor> = {
    W_enc: randomTensor([cfg.dIn, cfg.dSae], rng, 0.5),
    b_enc: randomTensor([cfg.dSae], rng, 0.2, cfg.arch === 'topk' ? 0.5 : 0),
    W_dec: randomTensor([cfg.dSae, cfg.dOut], rng, 0.3),
    b_dec: randomTensor([cfg.dIn], rng, 0.3),
    b_dec_out: randomTensor([cfg.dOut], rng, 0.3),
  };
  if (cfg.skip) params.W_skip = randomTensor([cfg.dIn, cfg.dOut], rng, 0.2);
  if (cfg.arch === 'jumprelu') params.threshold = Tensor.from(Float32Array.from({ length: cfg.dSae }, () => 0.4 * rng.uniform()), [cfg.dSae]);
  return Transcoder.fromParameters(cfg, params, { device: DEVICE });
}

async function expectFormatError(p: Promise<unknown> | (() => unknown), file: string, ...mentions: string[]): Promise<void> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err, `expected a FormatError mentioning ${mentions.join(', ')}`).toBeInstanceOf(FormatError);
  const e = err as FormatError;
  expect(e.file.endsWith(file), `error file '${e.file}' should end with ${file}`).toBe(true);
  expect(e.message).toContain(file);
  for (const m of mentions) expect(e.message).toContain(m);
}

let root: string;
let x: Tensor;
let expected: Record<string, Tensor>;

beforeAll(async () => {
  root = tempDir('transcoder-formats-');
  python(PY_FIXTURES, [root]);
  x = (await readSafetensors(join(root, 'x.safetensors'))).tensors.x!;
  expected = (await readSafetensors(join(root, 'expected.safetensors'))).tensors;
});

describe('loading against each format’s own semantics', () => {
  it('SAELens: transcoder, skip (d_out != d_in), jumprelu (negative thresholds), jumprelu skip', async () => {
    const tc = await loadSaeLensTranscoder(join(root, 'sl_transcoder'), { device: DEVICE });
    expect(tc.config).toMatchObject({ arch: 'relu', dIn: 8, dOut: 8, dSae: 32, skip: false, layer: 2, hookIn: 'blocks.2.ln2.hook_normalized', hookOut: 'blocks.2.hook_mlp_out', modelName: 'gpt2', processing: 'none' });
    expectClose(await tc.forward(x), expected.sl_transcoder!, 'sl_transcoder');

    const skip = await loadSaeLensTranscoder(join(root, 'sl_skip'), { device: DEVICE });
    expect(skip.config).toMatchObject({ arch: 'relu', dOut: 6, skip: true, layer: 1, hookIn: 'blocks.1.hook_resid_mid', hookOut: 'blocks.1.hook_mlp_out', modelName: 'gpt2', processing: 'transformerlens' });
    expect(skip.parameters().W_skip.shape).toEqual([8, 6]);
    expectClose(await skip.forward(x), expected.sl_skip!, 'sl_skip');

    for (const name of ['sl_jumprelu', 'sl_jumprelu_skip']) {
      const jr = await loadSaeLensTranscoder(join(root, name), { device: DEVICE });
      expect(jr.config.arch).toBe('jumprelu');
      expect(jr.config.skip).toBe(name.includes('skip'));
      expect(Math.min(...jr.parameters().threshold.toFloat32Array())).toBeGreaterThanOrEqual(0);
      expectClose(await jr.forward(x), expected[name]!, name);
    }
  });

  it('SAELens SAE-style and the community GPT-2 conversions (standard, with or without input b_dec / b_dec_out)', async () => {
    const std = await loadSaeLensTranscoder(join(root, 'sl_standard'), { device: DEVICE });
    expect(std.config).toMatchObject({ arch: 'relu', dOut: 8, layer: 3, hookIn: 'blocks.3.hook_resid_pre', hookOut: 'blocks.3.hook_resid_pre' });
    expect(maxDiff(std.parameters().b_dec, std.parameters().b_dec_out).diff).toBe(0);
    expectClose(await std.forward(x), expected.sl_standard!, 'sl_standard');
    for (const name of ['sl_dunefsky_folded', 'sl_dunefsky_unfolded']) {
      const tc = await loadSaeLensTranscoder(join(root, name), { device: DEVICE });
      expect(tc.config).toMatchObject({ layer: 8, hookIn: 'blocks.8.ln2.hook_normalized', hookOut: 'blocks.8.hook_mlp_out', processing: 'transformerlens' });
      expectClose(await tc.forward(x), expected[name]!, name);
    }
  });

  it('circuit-tracer: a set with config.yaml (relu, skip), a bf16 JumpReLU + skip file, a TopK file with k', async () => {
    const l1 = await loadCircuitTracerTranscoder(join(root, 'ct_set'), { layer: 1, device: DEVICE });
    expect(l1.config).toMatchObject({ arch: 'relu', skip: true, layer: 1, hookIn: 'blocks.1.mlp.hook_in', hookOut: 'blocks.1.hook_mlp_out', modelName: 'gpt2', processing: 'none' });
    expectClose(await l1.forward(x), expected.ct_layer1!, 'ct_layer1');
    const l0 = await loadCircuitTracerTranscoder(join(root, 'ct_set', 'layer_0.safetensors'), { device: DEVICE });
    expect(l0.config).toMatchObject({ layer: 0, skip: false, hookIn: 'blocks.0.mlp.hook_in' });
    expectClose(await l0.forward(x), expected.ct_layer0!, 'ct_layer0');

    const jr = await loadCircuitTracerTranscoder(join(root, 'ct_lone', 'jr.safetensors'), { device: DEVICE });
    expect(jr.config).toMatchObject({ arch: 'jumprelu', skip: true, layer: -1, hookIn: '', hookOut: '' });
    expectClose(await jr.forward(x), expected.ct_jumprelu_bf16!, 'ct_jumprelu_bf16');
    const jrHooked = await loadCircuitTracerTranscoder(join(root, 'ct_lone', 'jr.safetensors'), { layer: 6, hookIn: 'blocks.6.hook_resid_mid', device: DEVICE });
    expect(jrHooked.config).toMatchObject({ layer: 6, hookIn: 'blocks.6.hook_resid_mid', hookOut: 'blocks.6.hook_mlp_out' });

    const topk = await loadTranscoder(join(root, 'ct_topk', 'layer_4.safetensors'), { device: DEVICE });
    expect(topk.config).toMatchObject({ arch: 'topk', k: 4, layer: 4, ...mlpHooks(4) });
    expectClose(await topk.forward(x), expected.ct_topk!, 'ct_topk');
  });

  it('sparsify: a skip transcoder in layers.5.mlp, and an SAE (transcode false, input centring)', async () => {
    const tc = await loadSparsifyTranscoder(join(root, 'sp', 'layers.5.mlp'), { device: DEVICE });
    expect(tc.config).toMatchObject({ arch: 'topk', k: 4, dSae: 32, skip: true, layer: 5, ...mlpHooks(5), processing: 'none' });
    expectClose(await tc.forward(x), expected['sp_layers.5.mlp']!, 'sparsify transcoder');
    const sae = await loadTranscoder(join(root, 'sp', 'custom_coder'), { device: DEVICE, layer: 2, hookIn: 'blocks.2.hook_resid_post', hookOut: 'blocks.2.hook_resid_post' });
    expect(sae.config).toMatchObject({ arch: 'topk', k: 5, dSae: 32, skip: false, layer: 2, hookIn: 'blocks.2.hook_resid_post' });
    expectClose(await sae.forward(x), expected.sp_custom_coder!, 'sparsify SAE');
    const unnamed = await loadSparsifyTranscoder(join(root, 'sp', 'custom_coder'));
    expect(unnamed.config).toMatchObject({ layer: -1, hookIn: '', hookOut: '' });
  });
});

describe('exports', () => {
  it('SAELens, circuit-tracer and sparsify exports run identically in Python and reload identically', async () => {
    const out = join(root, 'exports');
    const cases: { name: string; format: 'saelens' | 'circuit-tracer' | 'sparsify'; tc: Transcoder; path: string }[] = [];
    const add = async (name: string, format: (typeof cases)[number]['format'], config: Partial<TranscoderConfig>, seed: number) => {
      const tc = await randomTranscoder(config, seed);
      const path = join(out, format === 'circuit-tracer' ? `${name}.safetensors` : name);
      if (format === 'saelens') exportSaeLens(tc, path);
      else if (format === 'circuit-tracer') exportCircuitTracer(tc, path);
      else exportSparsify(tc, path);
      cases.push({ name, format, tc, path });
    };
    await add('sl_relu', 'saelens', { arch: 'relu' }, 1);
    await add('sl_relu_skip', 'saelens', { arch: 'relu', skip: true, dOut: 6 }, 2);
    await add('sl_jumprelu', 'saelens', { arch: 'jumprelu' }, 3);
    await add('sl_jumprelu_skip', 'saelens', { arch: 'jumprelu', skip: true, processing: 'transformerlens' }, 4);
    await add('ct_relu_skip', 'circuit-tracer', { arch: 'relu', skip: true }, 5);
    await add('ct_jumprelu', 'circuit-tracer', { arch: 'jumprelu' }, 6);
    await add('ct_topk_skip', 'circuit-tracer', { arch: 'topk', k: 4, skip: true }, 7);
    await add('sp_topk_skip', 'sparsify', { arch: 'topk', k: 4, skip: true }, 8);
    await add('sp_topk', 'sparsify', { arch: 'topk', k: 6 }, 9);

    const specFile = join(out, 'spec.json');
    writeFileSync(specFile, JSON.stringify(cases.map((c) => [c.name, c.format, c.path, c.format === 'circuit-tracer' ? c.tc.config.arch : null, c.tc.config.k ?? null])));
    const layouts = JSON.parse(python(PY_EXPORT_CHECK, [specFile, join(root, 'x.safetensors'), join(out, 'ref.safetensors')])) as Record<
      string,
      { cfg: Record<string, unknown> | null; tensors: Record<string, [string, number[]]> }
    >;
    const ref = (await readSafetensors(join(out, 'ref.safetensors'))).tensors;

    for (const c of cases) {
      const ours = await c.tc.forward(x);
      expectClose(ref[c.name]!, ours, `${c.name}: the format's forward (Python) on our export`);
      const back = c.format === 'saelens' ? await loadSaeLensTranscoder(c.path) : c.format === 'circuit-tracer' ? await loadCircuitTracerTranscoder(c.path) : await loadSparsifyTranscoder(c.path);
      expectClose(await back.forward(x), ours, `${c.name}: reloaded`);
      const cfg = c.tc.config;
      expect(back.config).toMatchObject({ arch: cfg.arch, dIn: cfg.dIn, dOut: cfg.dOut, dSae: cfg.dSae, skip: cfg.skip, ...(cfg.k ? { k: cfg.k } : {}) });
      expect(back.config.processing).toBe(c.format === 'saelens' ? cfg.processing : 'none');
      expect(detectTranscoderFormat(c.path)).toBe(c.format);
    }

    const t = (name: string) => layouts[name]!.tensors;
    expect(t('sl_relu_skip')).toEqual({ W_enc: ['torch.float32', [8, 32]], b_enc: ['torch.float32', [32]], W_dec: ['torch.float32', [32, 6]], b_dec: ['torch.float32', [6]], W_skip: ['torch.float32', [6, 8]] });
    expect(Object.keys(t('sl_jumprelu_skip')).sort()).toEqual(['W_dec', 'W_enc', 'W_skip', 'b_dec', 'b_enc', 'threshold']);
    // SAELens 6: sizes and dtype at the top level, the model fields in `metadata`.
    expect(Object.keys(layouts.sl_relu!.cfg!).sort()).toEqual(['apply_b_dec_to_input', 'architecture', 'd_in', 'd_out', 'd_sae', 'device', 'dtype', 'metadata', 'normalize_activations', 'reshape_activations']);
    expect(layouts.sl_relu!.cfg).toMatchObject({
      architecture: 'transcoder',
      d_in: 8,
      d_out: 8,
      d_sae: 32,
      device: 'cpu',
      apply_b_dec_to_input: false,
      reshape_activations: 'none',
      metadata: {
        model_name: 'gpt2',
        hook_name: 'blocks.3.ln2.hook_normalized',
        hook_name_out: 'blocks.3.hook_mlp_out',
        hook_head_index: null,
        sae_lens_version: SAELENS_LAYOUT_VERSION,
        model_from_pretrained_kwargs: { fold_ln: false, center_writing_weights: false, center_unembed: false, fold_value_biases: false },
      },
    });
    expect(layouts.sl_relu_skip!.cfg!.architecture).toBe('skip_transcoder');
    expect(layouts.sl_jumprelu!.cfg!.architecture).toBe('jumprelu_transcoder');
    expect(layouts.sl_jumprelu_skip!.cfg).toMatchObject({
      architecture: 'jumprelu_skip_transcoder',
      metadata: { model_from_pretrained_kwargs: { fold_ln: true, center_writing_weights: true, center_unembed: true, fold_value_biases: true } },
    });
    // No `k` tensor: circuit-tracer's strict loader refuses it; k travels in config.yaml (and our metadata).
    expect(t('ct_topk_skip')).toEqual({ W_enc: ['torch.float32', [32, 8]], b_enc: ['torch.float32', [32]], W_dec: ['torch.float32', [32, 8]], b_dec: ['torch.float32', [8]], W_skip: ['torch.float32', [8, 8]] });
    expect((await readSafetensors(cases.find((c) => c.name === 'ct_topk_skip')!.path)).metadata).toMatchObject({ 'transcoders.activation': 'topk', 'transcoders.k': '4', 'transcoders.input_fold': 'none' });
    expect(Object.keys(t('ct_jumprelu')).sort()).toEqual(['W_dec', 'W_enc', 'activation_function.threshold', 'b_dec', 'b_enc']);
    expect(t('sp_topk_skip')).toEqual({ 'encoder.weight': ['torch.float32', [32, 8]], 'encoder.bias': ['torch.float32', [32]], W_dec: ['torch.float32', [32, 8]], b_dec: ['torch.float32', [8]], W_skip: ['torch.float32', [8, 8]] });
    expect(layouts.sp_topk!.cfg).toMatchObject({ activation: 'topk', k: 6, num_latents: 32, transcode: true, skip_connection: false, d_in: 8 });
  });

  it('circuit-tracer sets (2-layer topk, 2-layer relu + skip): layer files and config.yaml, read by PyYAML and circuit-tracer semantics, and by us', async () => {
    const sets = {
      topk: [await randomTranscoder({ arch: 'topk', k: 4, layer: 0, ...mlpHooks(0) }, 11), await randomTranscoder({ arch: 'topk', k: 4, layer: 1, ...mlpHooks(1) }, 12)],
      relu: [await randomTranscoder({ arch: 'relu', skip: true, layer: 1, ...mlpHooks(1) }, 13), await randomTranscoder({ arch: 'relu', skip: true, layer: 0, ...mlpHooks(0) }, 14)],
    };
    // Python reads config.yaml with yaml.safe_load, as circuit-tracer's loader does, opens the listed
    // files and runs each with the configured activation.
    const PY_SET = `
import json, sys, yaml, torch
from safetensors_io import load_file, save_file
${PY_SEMANTICS}
cfg = yaml.safe_load(open(sys.argv[1]))
x = load_file(sys.argv[2])["x"]
out = {str(i): circuit_tracer_forward(load_file(p), x, cfg["activation"], cfg.get("k")) for i, p in enumerate(cfg["transcoders"])}
save_file(out, sys.argv[3])
print(json.dumps(cfg))
`;
    for (const [name, tcs] of Object.entries(sets)) {
      const dir = join(root, `ct_export_set_${name}`);
      exportCircuitTracerSet(tcs, dir);
      const files = [0, 1].map((l) => join(dir, `layer_${l}.safetensors`));
      const expectedConfig = {
        model_kind: 'transcoder_set',
        model_name: 'gpt2',
        feature_input_hook: 'ln2.hook_normalized',
        feature_output_hook: 'hook_mlp_out',
        activation: name,
        ...(name === 'topk' ? { k: 4 } : {}),
        transcoders: files,
        transcoders_export: { trained_on_processing: 'none', input_fold: 'none' },
      };
      expect(parseYaml(readFileSync(join(dir, 'config.yaml'), 'utf8'), 'config.yaml').value).toEqual(expectedConfig);
      const pyConfig = JSON.parse(python(PY_SET, [join(dir, 'config.yaml'), join(root, 'x.safetensors'), join(dir, 'ref.safetensors')]));
      expect(pyConfig).toEqual(expectedConfig);
      const ref = (await readSafetensors(join(dir, 'ref.safetensors'))).tensors;
      for (const f of files) expect(Object.keys((await readSafetensors(f)).tensors)).not.toContain('k');
      expect(detectTranscoderFormat(dir)).toBe('circuit-tracer');
      for (const tc of tcs) {
        const l = tc.config.layer;
        const ours = await tc.forward(x);
        const back = await loadTranscoder(dir, { layer: l });
        expect(back.config).toMatchObject({ arch: name, ...(name === 'topk' ? { k: 4 } : {}), skip: tc.config.skip, layer: l, hookIn: tc.config.hookIn, hookOut: tc.config.hookOut, modelName: 'gpt2' });
        // Round trip through float32 files with b_dec folded into b_enc: 1e-6 relative.
        const { diff, scale } = maxDiff(await back.forward(x), ours);
        expect(diff, `${name} set layer ${l} reloaded: max |diff| ${diff} (scale ${scale})`).toBeLessThanOrEqual(1e-6 * Math.max(1, scale));
        expectClose(ref[String(l)]!, ours, `${name} set layer ${l}: circuit-tracer semantics in Python`);
      }
      await expect(loadTranscoder(dir)).rejects.toThrow(InvalidArgumentError);
    }
    const dir = join(root, 'ct_export_set_topk');
    expect(() => exportCircuitTracerSet([sets.topk[1]!], join(root, 'ct_lone_layer1'))).toThrow(/one transcoder per layer/);
    // A folder holding more layer files than the set would make circuit-tracer load them too.
    expect(() => exportCircuitTracerSet([sets.topk[0]!], dir)).toThrow(/layer_1\.safetensors.*empty folder/);
    // With a URI prefix (a set uploaded to the Hub) the list holds hf:// URIs; we still read the files beside config.yaml.
    const hub = join(root, 'ct_export_set_hub');
    exportCircuitTracerSet(sets.relu, hub, { uriPrefix: 'hf://someone/gpt2-transcoders/' });
    expect((parseYaml(readFileSync(join(hub, 'config.yaml'), 'utf8'), 'config.yaml').value as { transcoders: string[] }).transcoders).toEqual([
      'hf://someone/gpt2-transcoders/layer_0.safetensors',
      'hf://someone/gpt2-transcoders/layer_1.safetensors',
    ]);
    expectClose(await (await loadTranscoder(hub, { layer: 1 })).forward(x), await sets.relu[0]!.forward(x), 'set with hf:// entries, layer 1');
  });

  it('refuses what a format cannot represent', async () => {
    const dir = join(root, 'refused');
    const topk = await randomTranscoder({ arch: 'topk', k: 4 }, 21);
    expect(() => exportSaeLens(topk, dir)).toThrow(InvalidArgumentError);
    expect(() => exportSaeLens(topk, dir)).toThrow(/TopK/);
    const relu = await randomTranscoder({ arch: 'relu' }, 22);
    expect(() => exportSparsify(relu, dir)).toThrow(InvalidArgumentError);
    const rng = new Rng(23);
    const negative = await Transcoder.fromParameters(
      { arch: 'jumprelu', dIn: D, dOut: D, dSae: F },
      {
        W_enc: randomTensor([D, F], rng),
        b_enc: randomTensor([F], rng),
        W_dec: randomTensor([F, D], rng),
        b_dec: randomTensor([D], rng),
        b_dec_out: randomTensor([D], rng),
        threshold: randomTensor([F], rng, 0.1, -0.5),
      },
    );
    expect(() => exportSaeLens(negative, dir)).toThrow(/negative/);
    const narrow = await randomTranscoder({ arch: 'relu', dOut: 6 }, 24);
    expect(() => exportCircuitTracer(narrow, join(dir, 'x.safetensors'))).toThrow(InvalidArgumentError);
  });
});

describe('detection and dispatch', () => {
  it('detects every format from the files present', async () => {
    const native = join(root, 'native');
    saveTranscoder(await randomTranscoder({ arch: 'relu' }, 31), native);
    expect(detectTranscoderFormat(native)).toBe('native');
    expect(detectTranscoderFormat(join(native, 'transcoder.safetensors'))).toBe('native');
    expect(detectTranscoderFormat(join(root, 'sl_skip'))).toBe('saelens');
    expect(detectTranscoderFormat(join(root, 'sl_skip', 'sae_weights.safetensors'))).toBe('saelens');
    expect(detectTranscoderFormat(join(root, 'sp', 'layers.5.mlp'))).toBe('sparsify');
    expect(detectTranscoderFormat(join(root, 'ct_set'))).toBe('circuit-tracer');
    expect(detectTranscoderFormat(join(root, 'ct_lone', 'jr.safetensors'))).toBe('circuit-tracer');
    expect(detectTranscoderFormat(join(root, 'x.safetensors'))).toBeNull();
    expect(detectTranscoderFormat(join(root, 'sp'))).toBeNull();
    expect(detectTranscoderFormat(join(root, 'missing'))).toBeNull();
    const pt = join(root, 'final_sparse_autoencoder_gpt2-small_blocks.8.ln2.hook_normalized_24576.pt');
    writeFileSync(pt, 'PK');
    expect(detectTranscoderFormat(pt)).toBe('paper-pt');
    await expect(loadTranscoder(pt)).rejects.toThrow(FormatError); // 'PK' alone is no zip
    await expect(loadTranscoder(join(root, 'sp'))).rejects.toThrow(FormatError);

    const viaDispatch = await loadTranscoder(join(root, 'sl_transcoder', 'sae_weights.safetensors'));
    expectClose(await viaDispatch.forward(x), expected.sl_transcoder!, 'loadTranscoder(SAELens weights file)');
    expect((await loadTranscoder(native)).config.arch).toBe('relu');
  });
});

describe('malformed files', () => {
  /** A copy of a fixture folder with some tensors replaced or removed and the config patched. */
  async function variant(
    source: string,
    weightsFile: string,
    change: { drop?: string[]; set?: Record<string, Tensor | RawTensor>; cfg?: Record<string, unknown>; cfgFile?: string },
  ): Promise<string> {
    const dir = join(root, 'bad', `${source.replaceAll('/', '_')}-${Math.random().toString(36).slice(2, 8)}`);
    mkdirSync(dir, { recursive: true });
    cpSync(join(root, source), dir, { recursive: true });
    const { tensors } = await readSafetensors(join(dir, weightsFile));
    for (const k of change.drop ?? []) delete tensors[k];
    writeSafetensors(join(dir, weightsFile), { ...tensors, ...(change.set ?? {}) });
    if (change.cfg) {
      const cfgFile = join(dir, change.cfgFile ?? 'cfg.json');
      writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(readFileSync(cfgFile, 'utf8')), ...change.cfg }));
    }
    return dir;
  }
  const W = 'sae_weights.safetensors';

  it('SAELens: missing key, wrong shape, wrong dtype, extra tensor, unknown architecture, normalisation, input b_dec on a transcoder', async () => {
    const rng = new Rng(41);
    await expectFormatError(loadSaeLensTranscoder(await variant('sl_skip', W, { drop: ['W_dec'] })), W, "'W_dec'", 'missing');
    await expectFormatError(loadSaeLensTranscoder(await variant('sl_skip', W, { drop: ['W_skip'] })), W, "'W_skip'");
    await expectFormatError(loadSaeLensTranscoder(await variant('sl_skip', W, { set: { b_enc: randomTensor([31], rng) } })), W, "'b_enc'", '[31]', '[32]');
    await expectFormatError(loadSaeLensTranscoder(await variant('sl_skip', W, { set: { W_skip: randomTensor([8, 6], rng) } })), W, "'W_skip'", '[6,8]');
    await expectFormatError(loadSaeLensTranscoder(await variant('sl_transcoder', W, { set: { W_enc: Tensor.from(new Int32Array(8 * 32), [8, 32]) } })), W, "'W_enc'", 'dtype I32');
    await expectFormatError(loadSaeLensTranscoder(await variant('sl_transcoder', W, { set: { b_dec_out: randomTensor([8], rng) } })), W, "'b_dec_out'", 'unexpected');
    await expectFormatError(loadSaeLensTranscoder(await variant('sl_jumprelu', W, { drop: ['threshold'] })), W, "'threshold'");
    await expectFormatError(loadSaeLensTranscoder(await variant('sl_transcoder', W, { cfg: { architecture: 'gated' } })), 'cfg.json', "'architecture'", 'gated');
    await expectFormatError(loadSaeLensTranscoder(await variant('sl_transcoder', W, { cfg: { normalize_activations: 'expected_average_only_in' } })), 'cfg.json', "'normalize_activations'", 'expected_average_only_in');
    await expectFormatError(loadSaeLensTranscoder(await variant('sl_transcoder', W, { cfg: { apply_b_dec_to_input: true } })), 'cfg.json', "'apply_b_dec_to_input'");
    await expectFormatError(loadSaeLensTranscoder(await variant('sl_transcoder', W, { cfg: { d_sae: 16 } })), W, "'W_enc'", '[8,16]');
    await expectFormatError(loadSaeLensTranscoder(await variant('sl_transcoder', W, { cfg: { d_in: undefined } })), 'cfg.json', "'d_in'");
    await expectFormatError(loadSaeLensTranscoder(await variant('sl_standard', W, { set: { W_dec: randomTensor([32, 6], rng), b_dec: randomTensor([8], rng) } })), 'cfg.json', 'd_out = 6');
  });

  it('circuit-tracer: missing key, untransposed encoder, bad k, config conflicts', async () => {
    const L = 'layer_4.safetensors';
    const rng = new Rng(42);
    const load = (dir: string) => loadCircuitTracerTranscoder(join(dir, L));
    await expectFormatError(load(await variant('ct_topk', L, { drop: ['b_dec'] })), L, "'b_dec'", 'missing');
    await expectFormatError(load(await variant('ct_topk', L, { set: { W_enc: randomTensor([8, 32], rng) } })), L, "'W_enc'", '[8,32]');
    await expectFormatError(load(await variant('ct_topk', L, { set: { W_dec: randomTensor([32, 7], rng) } })), L, "'W_dec'");
    await expectFormatError(load(await variant('ct_topk', L, { set: { k: Tensor.from(new Float32Array([4]), []) } })), L, "'k'", 'integer');
    await expectFormatError(load(await variant('ct_topk', L, { set: { k: Tensor.from(new BigInt64Array([40n]), []) } })), L, 'k = 40');
    await expectFormatError(load(await variant('ct_topk', L, { set: { 'activation_function.threshold': randomTensor([32], rng) } })), L, "'k'", 'activation_function.threshold');
    const conflicting = await variant('ct_topk', L, {});
    writeFileSync(join(conflicting, 'config.yaml'), 'model_kind: transcoder_set\nactivation: topk\nk: 3\n');
    await expectFormatError(load(conflicting), L, 'k = 3');
    writeFileSync(join(conflicting, 'config.yaml'), 'model_kind: cross_layer_transcoder\n');
    await expectFormatError(load(conflicting), 'config.yaml', 'cross_layer_transcoder');
    writeFileSync(join(conflicting, 'config.yaml'), 'model_kind: transcoder_set\n  stray: [\n');
    await expectFormatError(load(conflicting), 'config.yaml', 'config.yaml:1', 'invalid YAML');
  });

  it('sparsify: groupmax, unknown activation, latent count, skip mismatch', async () => {
    const S = 'sae.safetensors';
    const src = 'sp/layers.5.mlp';
    await expectFormatError(loadSparsifyTranscoder(await variant(src, S, { cfg: { activation: 'groupmax' } })), 'cfg.json', 'groupmax');
    await expectFormatError(loadSparsifyTranscoder(await variant(src, S, { cfg: { activation: 'batchtopk' } })), 'cfg.json', "'activation'");
    await expectFormatError(loadSparsifyTranscoder(await variant(src, S, { cfg: { num_latents: 64 } })), S, "'encoder.weight'", 'num_latents');
    await expectFormatError(loadSparsifyTranscoder(await variant(src, S, { drop: ['W_skip'] })), S, "'W_skip'");
    await expectFormatError(loadSparsifyTranscoder(await variant(src, S, { cfg: { skip_connection: false } })), S, "'W_skip'");
    await expectFormatError(loadSparsifyTranscoder(await variant(src, S, { cfg: { k: 33 } })), 'cfg.json', "'k'");
    await expectFormatError(loadSparsifyTranscoder(await variant(src, S, { drop: ['encoder.bias'] })), S, "'encoder.bias'");
  });

  it('YAML (the yaml package): nested maps, block scalars, quoted commas, comments, lists of paths and of {layer, filepath} items', () => {
    const text = [
      '# header comment',
      'model_kind: transcoder_set',
      'model_name: "google/gemma-2-2b"  # trailing comment',
      "scan: 'it''s, with a comma'",
      'k: 64',
      'flag: yes',
      'description: |',
      '  first line',
      '  second: not a key',
      'folded: >-',
      '  one',
      '  two',
      'nested:',
      '  training:',
      '    lr: 4.0e-4',
      '    widths: [16, "32, quoted"]',
      'transcoders:',
      '  - id: a',
      '    layer: 1',
      '    filepath: hf://org/repo/layer_1.safetensors?revision=main',
      '  - {layer: 0, filepath: "hf://org/repo/layer_0.safetensors"}',
      'paths:',
      '  - /abs/layer_0.safetensors   # comment after an item',
      '  - "hf://org/repo/x#frag.safetensors"',
    ].join('\n');
    expect(parseYaml(text, 'c.yaml').value).toEqual({
      model_kind: 'transcoder_set',
      model_name: 'google/gemma-2-2b',
      scan: "it's, with a comma",
      k: 64,
      flag: true, // YAML 1.1, as PyYAML
      description: 'first line\nsecond: not a key\n',
      folded: 'one two',
      nested: { training: { lr: 4e-4, widths: [16, '32, quoted'] } },
      transcoders: [
        { id: 'a', layer: 1, filepath: 'hf://org/repo/layer_1.safetensors?revision=main' },
        { layer: 0, filepath: 'hf://org/repo/layer_0.safetensors' },
      ],
      paths: ['/abs/layer_0.safetensors', 'hf://org/repo/x#frag.safetensors'],
    });
    const dir = join(root, 'yaml-config');
    mkdirSync(dir, { recursive: true });
    const file = join(dir, 'config.yaml');
    writeFileSync(file, text);
    const ct = readCircuitTracerConfig(file);
    expect(ct).toMatchObject({ modelKind: 'transcoder_set', modelName: 'google/gemma-2-2b', k: 64 });
    expect([...ct.layerFiles]).toEqual([
      [1, 'layer_1.safetensors'],
      [0, 'layer_0.safetensors'],
    ]);
  });

  it('YAML errors: malformed text and fields of the wrong type are FormatErrors naming the file and the line', async () => {
    const dir = join(root, 'yaml-bad');
    mkdirSync(dir, { recursive: true });
    const file = join(dir, 'config.yaml');
    const cases: [string, string[]][] = [
      ['model_kind: transcoder_set\ntranscoders: [a, b\n', ['config.yaml:', 'invalid YAML']],
      ['model_kind: transcoder_set\nk: 3\nk: 4\n', ['config.yaml:3', 'invalid YAML', 'unique']],
      ['a: 1\n---\nb: 2\n', ['config.yaml:', 'invalid YAML']],
      ['- just\n- a list\n', ['config.yaml', 'expected a mapping']],
      ['model_kind: transcoder_set\nk: four\n', ['config.yaml:2', "'k'", 'positive integer', 'four']],
      ['model_kind: transcoder_set\nfeature_input_hook:\n  nested: map\n', ['config.yaml:3', "'feature_input_hook'", 'string']],
      ['model_kind: transcoder_set\ntranscoders: layer_0.safetensors\n', ['config.yaml:2', "'transcoders'", 'list']],
      ['model_kind: transcoder_set\ntranscoders:\n  - {layer: -1, filepath: x.safetensors}\n', ['config.yaml:3', 'entry 0']],
      ['model_kind: transcoder_set\ntranscoders:\n  - {layer: 0, filepath: a.safetensors}\n  - {layer: 0, filepath: b.safetensors}\n', ['config.yaml:3', 'layer 0 twice']],
    ];
    for (const [text, mentions] of cases) {
      writeFileSync(file, text);
      await expectFormatError(() => readCircuitTracerConfig(file), 'config.yaml', ...mentions);
    }
  });
});
