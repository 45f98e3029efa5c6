/**
 * Random models of every family with random transcoders of every kind (relu / topk / jumprelu, with
 * and without a skip connection, reading any of the hooks transcoders declare), for attribution-graph
 * tests. Also writes the transcoders in the flat safetensors layout test/reference/graph_oracle.py reads.
 */
import { join } from 'node:path';
import { CrossLayerTranscoder, loadModel, ReplacementModel, Tensor, Transcoder, type Model, type Processing } from '../../lib/index.js';
import { writeSafetensors, type RawTensor } from '../../lib/io/safetensors.js';
import { PRESETS, type RandomModelSpec } from '../../lib/models/random.js';
import type { TranscoderArch } from '../../lib/transcoders/config.js';
import type { GraphNode } from '../../lib/graphs/graph.js';
import { Rng } from '../../lib/util/random.js';
import { DEVICE, makeTempModel, tempDir } from './fixtures.js';

export const GRAPH_DSAE = 24;

/** Where a fixture transcoder reads: the MLP input, or the residual stream before the MLP's norm. */
export type GraphInput = 'ln2' | 'mlp.hook_in' | 'residual';

export interface GraphFixtureSpec {
  name: string;
  model: RandomModelSpec;
  processing: Processing;
  input: GraphInput;
  /** Per layer (cycled): the transcoder kind and whether it has a skip connection. */
  kinds: { arch: TranscoderArch; skip: boolean }[];
}

export function presetSpec(name: string, extra: Partial<RandomModelSpec> = {}): RandomModelSpec {
  const base = PRESETS[name]!;
  return { ...base, std: 0.15, seed: 3, ...extra, configFields: { ...base.configFields, ...extra.configFields } };
}

export function hooksFor(model: Model, layer: number, input: GraphInput): { hookIn: string; hookOut: string } {
  const p = `blocks.${layer}.`;
  if (input === 'ln2') return { hookIn: `${p}ln2.hook_normalized`, hookOut: `${p}hook_mlp_out` };
  if (input === 'mlp.hook_in') return { hookIn: `${p}mlp.hook_in`, hookOut: `${p}mlp.hook_out` };
  return { hookIn: `${p}${model.config.parallelResidual ? 'hook_resid_pre' : 'hook_resid_mid'}`, hookOut: `${p}mlp.hook_out` };
}

export interface GraphFixture {
  model: Model;
  dir: string;
  replacement: ReplacementModel;
  transcoders: Transcoder[];
  /** layer -> flat safetensors file for the Python oracle. */
  oracleFiles: Record<string, string>;
}

export async function graphFixture(spec: GraphFixtureSpec, seed = 5): Promise<GraphFixture> {
  const dir = makeTempModel(spec.model);
  const model = await loadModel(dir, { processing: spec.processing, device: DEVICE });
  const rng = new Rng(seed);
  const d = model.config.dModel;
  const m = GRAPH_DSAE;
  const vec = (n: number, s: number, shift = 0) => Float32Array.from({ length: n }, () => shift + s * rng.normal());
  const transcoders: Transcoder[] = [];
  const oracleFiles: Record<string, string> = {};
  const files = tempDir('transcoders-graph-tc-');
  for (let l = 0; l < model.config.nLayers; l++) {
    const { arch, skip } = spec.kinds[l % spec.kinds.length]!;
    const hooks = hooksFor(model, l, spec.input);
    const p: Record<string, Float32Array> = {
      W_enc: vec(d * m, 0.3), b_enc: vec(m, 0.2, arch === 'jumprelu' ? 0.3 : 0), W_dec: vec(m * d, 0.3), b_dec: vec(d, 0.1), b_dec_out: vec(d, 0.1),
      ...(skip ? { W_skip: vec(d * d, 0.08) } : {}),
      ...(arch === 'jumprelu' ? { threshold: Float32Array.from({ length: m }, () => 0.2 + 0.2 * rng.uniform()) } : {}),
    };
    const shapes: Record<string, number[]> = { W_enc: [d, m], b_enc: [m], W_dec: [m, d], b_dec: [d], b_dec_out: [d], W_skip: [d, d], threshold: [m] };
    const k = arch === 'topk' ? 6 : undefined;
    transcoders.push(await Transcoder.fromParameters(
      { arch, dIn: d, dOut: d, dSae: m, skip, ...(k ? { k } : {}), layer: l, ...hooks, processing: model.processing },
      Object.fromEntries(Object.entries(p).map(([name, v]) => [name, Tensor.from(v, shapes[name]!)])),
      { device: DEVICE },
    ));
    const raw: Record<string, RawTensor> = Object.fromEntries(Object.entries(p).map(([name, v]) => [name, { dtype: 'F32', shape: shapes[name]!, bytes: new Uint8Array(v.buffer) }]));
    const file = join(files, `layer_${l}.safetensors`);
    writeSafetensors(file, raw, { arch, ...(k ? { k: String(k) } : {}), hook_in: hooks.hookIn, hook_out: hooks.hookOut });
    oracleFiles[String(l)] = file;
  }
  return { model, dir, replacement: ReplacementModel.create(model, transcoders), transcoders, oracleFiles };
}

/** The family x transcoder-kind x input-hook matrix the graph tests run on. */
const RELU_SKIP = { arch: 'relu' as const, skip: true };

export const GRAPH_SPECS: GraphFixtureSpec[] = [
  { name: 'gpt2 raw, ln2.hook_normalized, relu+skip / topk', model: presetSpec('tiny-gpt2'), processing: 'none', input: 'ln2', kinds: [RELU_SKIP, { arch: 'topk', skip: false }] },
  { name: 'gpt2 processed, hook_resid_mid, jumprelu / relu+skip', model: presetSpec('tiny-gpt2', { seed: 4 }), processing: 'transformerlens', input: 'residual', kinds: [{ arch: 'jumprelu', skip: false }, RELU_SKIP] },
  { name: 'neox parallel raw, hook_resid_pre, relu / topk+skip', model: presetSpec('tiny-neox'), processing: 'none', input: 'residual', kinds: [{ arch: 'relu', skip: false }, { arch: 'topk', skip: true }] },
  { name: 'llama raw, hook_resid_mid, relu+skip (GQA, llama3 RoPE)', model: presetSpec('tiny-llama'), processing: 'none', input: 'residual', kinds: [RELU_SKIP] },
  { name: 'mistral raw, mlp.hook_in, topk (sliding window)', model: presetSpec('tiny-mistral'), processing: 'none', input: 'mlp.hook_in', kinds: [{ arch: 'topk', skip: false }] },
  { name: 'qwen2 raw, hook_resid_mid, topk+skip (q/k/v biases)', model: presetSpec('tiny-qwen2'), processing: 'none', input: 'residual', kinds: [{ arch: 'topk', skip: true }] },
  { name: 'qwen3 raw, mlp.hook_in, jumprelu+skip (q/k norms)', model: presetSpec('tiny-qwen3'), processing: 'none', input: 'mlp.hook_in', kinds: [{ arch: 'jumprelu', skip: true }] },
  { name: 'gemma2 raw, mlp.hook_in, jumprelu / relu+skip (sandwich norms, soft-caps)', model: presetSpec('tiny-gemma2'), processing: 'none', input: 'mlp.hook_in', kinds: [{ arch: 'jumprelu', skip: false }, RELU_SKIP] },
  { name: 'gemma3 raw, mlp.hook_in, relu+skip', model: presetSpec('tiny-gemma3'), processing: 'none', input: 'mlp.hook_in', kinds: [RELU_SKIP] },
];

export interface CrossLayerGraphFixtureSpec {
  name: string;
  model: RandomModelSpec;
  input: GraphInput;
  arch: TranscoderArch;
  skip: boolean;
}

export interface CrossLayerGraphFixture {
  model: Model;
  dir: string;
  replacement: ReplacementModel;
  clt: CrossLayerTranscoder;
  /** The CLT as one safetensors file for the Python oracle (`cross_layer` in its spec). */
  oracleFile: string;
}

/** A random raw model with a random cross-layer transcoder over all its layers. */
export async function crossLayerGraphFixture(spec: CrossLayerGraphFixtureSpec, seed = 6): Promise<CrossLayerGraphFixture> {
  const dir = makeTempModel(spec.model);
  const model = await loadModel(dir, { processing: 'none', device: DEVICE });
  const rng = new Rng(seed);
  const d = model.config.dModel;
  const L = model.config.nLayers;
  const F = GRAPH_DSAE;
  const vec = (n: number, s: number, shift = 0) => Float32Array.from({ length: n }, () => shift + s * rng.normal());
  const p: Record<string, { data: Float32Array; shape: number[] }> = {
    W_enc: { data: vec(L * d * F, 0.3), shape: [L, d, F] },
    b_enc: { data: vec(L * F, 0.2, spec.arch === 'jumprelu' ? 0.3 : 0), shape: [L, F] },
    b_dec: { data: vec(L * d, 0.1), shape: [L, d] },
  };
  for (let s = 0; s < L; s++) p[`W_dec_${s}`] = { data: vec(F * (L - s) * d, 0.25), shape: [F, L - s, d] };
  if (spec.skip) p.W_skip = { data: vec(L * d * d, 0.08), shape: [L, d, d] };
  if (spec.arch === 'jumprelu') p.threshold = { data: Float32Array.from({ length: L * F }, () => 0.2 + 0.2 * rng.uniform()), shape: [L, F] };
  const k = spec.arch === 'topk' ? 6 : undefined;
  const hooks = Array.from({ length: L }, (_, l) => hooksFor(model, l, spec.input));
  const clt = await CrossLayerTranscoder.fromParameters(
    { arch: spec.arch, nLayers: L, dIn: d, dOut: d, dSae: F, skip: spec.skip, ...(k ? { k } : {}), hookIn: hooks.map((h) => h.hookIn), hookOut: hooks.map((h) => h.hookOut) },
    Object.fromEntries(Object.entries(p).map(([name, t]) => [name, Tensor.from(t.data, t.shape)])),
    { device: DEVICE },
  );
  const raw: Record<string, RawTensor> = Object.fromEntries(Object.entries(p).map(([name, t]) => [name, { dtype: 'F32', shape: t.shape, bytes: new Uint8Array(t.data.buffer) }]));
  const oracleFile = join(tempDir('transcoders-graph-clt-'), 'clt.safetensors');
  const template = (hook: string) => hook.replace(/^blocks\.0\./, 'blocks.{layer}.');
  writeSafetensors(oracleFile, raw, { arch: spec.arch, ...(k ? { k: String(k) } : {}), hook_in: template(hooks[0]!.hookIn), hook_out: template(hooks[0]!.hookOut) });
  return { model, dir, replacement: ReplacementModel.createCrossLayer(model, clt), clt, oracleFile };
}

/** Families x CLT kinds x input hooks for the cross-layer graph tests. */
export const CROSS_LAYER_GRAPH_SPECS: CrossLayerGraphFixtureSpec[] = [
  { name: 'gpt2 raw, ln2.hook_normalized, clt relu+skip', model: presetSpec('tiny-gpt2', { nLayers: 3 }), input: 'ln2', arch: 'relu', skip: true },
  { name: 'llama raw, hook_resid_mid, clt topk', model: presetSpec('tiny-llama', { nLayers: 3 }), input: 'residual', arch: 'topk', skip: false },
  { name: 'gemma2 raw, mlp.hook_in, clt jumprelu+skip', model: presetSpec('tiny-gemma2', { nLayers: 3 }), input: 'mlp.hook_in', arch: 'jumprelu', skip: true },
];

/** The oracle's perturbation (test/reference/graph_oracle.py) that removes the source node `n`. */
export function perturbationOf(n: GraphNode): Record<string, unknown> {
  switch (n.kind) {
    case 'feature': return { kind: 'feature', layer: n.layer, position: n.position, feature: n.index };
    case 'error': return { kind: 'error', layer: n.layer, position: n.position };
    case 'token': return { kind: 'token', position: n.position };
    case 'positional': return { kind: 'positional', position: n.position };
    case 'bias': return { kind: 'bias', layer: n.layer };
    default: throw new Error(`no perturbation for ${n.kind}`);
  }
}
