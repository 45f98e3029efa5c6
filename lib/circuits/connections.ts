/**
 * Input-invariant ("weights-based") connections between transcoder features (paper-method.md §4.1):
 * products of weights only, valid for every prompt. With row vectors:
 *
 * - feature i of layer l1 -> feature j of layer l2 > l1: `W_dec[l1][i] . W_enc[l2][:, j]`;
 * - through head h of attention layer la (l1 < la <= l2): `W_dec[l1][i] W_V[la,h] W_O[la,h] . W_enc[l2][:, j]`;
 * - de-embedding of feature j: `W_E @ W_enc[:, j]` ([V]), or through a head: `W_E @ W_V W_O @ W_enc[:, j]`;
 * - logit effects of feature i: `W_dec[i] @ W_U` ([V]).
 *
 * Load the model with processing 'transformerlens' (the paper's setting: centred W_E / W_U, folded
 * LayerNorms). The products run natively (native/circuits/connections.cc); the all-pairs top-k of
 * {@link topkConnections} streams blocks through the BLAS GEMM without forming a d_sae x d_sae matrix.
 * Top-k lists are sorted by value descending; on the CPU ties go to the smaller index.
 */
import { runOnDevice } from '../device-queue.js';
import { InvalidArgumentError } from '../errors.js';
import { native, type NativeConnectionList, type NativeTopK } from '../native.js';
import { Tensor } from '../tensor.js';
import { Transcoder } from '../transcoders/transcoder.js';
import type { ReplacementModel } from './replacement-model.js';

/** One feature and its connection strength. */
export interface FeatureScore {
  feature: number;
  value: number;
}

/** The top-k connections of a feature with the transcoder of `layer`, directly or through one attention head. */
export interface ConnectionList {
  /** Layer of the other transcoder. */
  layer: number;
  /** Attention layer and head the connection runs through (absent for the direct connection). */
  attnLayer?: number;
  head?: number;
  features: FeatureScore[];
}

/** One connection of a merged, cross-layer ranking. */
export interface Connection extends FeatureScore {
  layer: number;
  attnLayer?: number;
  head?: number;
}

export interface FeatureConnections {
  layer: number;
  feature: number;
  k: number;
  /** Features of earlier layers by `W_dec[l][i] . W_enc[layer][:, feature]` (one list per layer, then per (layer, attention layer, head)). */
  upstream: ConnectionList[];
  /** Features of later layers by `W_dec[layer][feature] . W_enc[l][:, j]` (same layout). */
  downstream: ConnectionList[];
  /** The top k of the direct lists across all layers. */
  top: { upstream: Connection[]; downstream: Connection[] };
  /** With `throughAttention`: the top k of the per-head lists across all layers and heads. */
  topThroughAttention?: { upstream: Connection[]; downstream: Connection[] };
}

/** A token and its score; `text` is its decoded text when the model has a tokenizer that knows the id. */
export interface TokenScore {
  token: number;
  text: string | null;
  value: number;
}

/** The k highest and k lowest (most negative) tokens of a [V] score vector. */
export interface TokenEffects {
  top: TokenScore[];
  bottom: TokenScore[];
}

/** The all-pairs result: row r's top-k partners (`indices` int64 [R, k], `values` float32 [R, k]). */
export interface TopkConnectionsResult {
  indices: Tensor;
  values: Tensor;
}

export interface TopkConnectionsOptions {
  /** Connections kept per feature (default 10). */
  k?: number;
  /**
   * Rows per streamed block, and columns of the other operand per block (default 4096). Memory is
   * O(blockSize^2 + rows * k); large enough blocks run at the BLAS GEMM's throughput.
   */
  blockSize?: number;
  /**
   * `'downstream'` (default): for every source feature (row of W_dec_src) its top-k target features;
   * `'upstream'`: for every target feature (column of W_enc_dst) its top-k source features.
   */
  direction?: 'downstream' | 'upstream';
  /**
   * How a block is merged into the running top-k: `'scan'` (CPU; an insertion scan against the k-th best,
   * deterministic ties), `'topk'` (at::topk over running best + block best; any device), `'auto'` (default:
   * scan on the CPU).
   */
  merge?: 'auto' | 'scan' | 'topk';
}

const connections = () => native().Connections;

function checkInt(value: unknown, name: string, min: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got ${String(value)}`);
  return value;
}

/** The top k connections of several lists, merged by value (ties: earlier list, then list order). */
export function mergeConnections(lists: readonly ConnectionList[], k: number): Connection[] {
  const all: Connection[] = lists.flatMap((l) =>
    l.features.map((f) => ({ layer: l.layer, ...(l.head !== undefined ? { attnLayer: l.attnLayer!, head: l.head } : {}), ...f })),
  );
  return all.filter((c) => !Number.isNaN(c.value)).sort((a, b) => b.value - a.value).slice(0, k);
}

const toList = (l: NativeConnectionList): ConnectionList => ({
  layer: l.layer,
  ...(l.head !== undefined ? { attnLayer: l.attnLayer!, head: l.head } : {}),
  features: l.indices.map((feature, i) => ({ feature, value: l.values[i]! })),
});

/**
 * A feature's input-invariant connections with every other transcoder: for each earlier layer l the
 * top-k of `W_dec[l] @ W_enc[layer][:, feature]`, for each later layer the top-k of
 * `W_dec[layer][feature] @ W_enc[l]`; with `throughAttention`, also through every head of every
 * attention layer in between (one list per (layer, attention layer, head)).
 */
export async function featureConnections(
  replacement: ReplacementModel,
  layer: number,
  feature: number,
  options: { k?: number; throughAttention?: boolean } = {},
): Promise<FeatureConnections> {
  const k = checkInt(options.k ?? 10, 'k', 1);
  checkInt(layer, 'layer', 0);
  checkInt(feature, 'feature', 0);
  const r = await runOnDevice(replacement.model.device, () => connections().featureConnections(replacement.handle, layer, feature, { k, throughAttention: options.throughAttention ?? false }));
  const upstream = r.upstream.map(toList);
  const downstream = r.downstream.map(toList);
  const direct = (ls: ConnectionList[]) => ls.filter((l) => l.head === undefined);
  const viaHeads = (ls: ConnectionList[]) => ls.filter((l) => l.head !== undefined);
  return {
    layer,
    feature,
    k,
    upstream,
    downstream,
    top: { upstream: mergeConnections(direct(upstream), k), downstream: mergeConnections(direct(downstream), k) },
    ...(options.throughAttention
      ? { topThroughAttention: { upstream: mergeConnections(viaHeads(upstream), k), downstream: mergeConnections(viaHeads(downstream), k) } }
      : {}),
  };
}

function tokenScores(replacement: ReplacementModel, t: NativeTopK): TokenScore[] {
  const tok = replacement.model.tokenizer;
  return t.indices.map((token, i) => ({
    token,
    text: tok && token >= 0 && token < tok.vocabSize ? tok.decode([token]) : null,
    value: t.values[i]!,
  }));
}

/**
 * De-embedding of feature `feature` of the layer's transcoder: the tokens whose embeddings drive it
 * most directly, `W_E @ W_enc[:, feature]` (processed, centred W_E; no positional embedding, no
 * LayerNorm), or through head `head.head` of attention layer `head.layer` (which must not come after
 * the transcoder's layer): `W_E @ W_V W_O @ W_enc[:, feature]`. Returns the top and bottom k tokens.
 */
export async function deEmbedding(
  replacement: ReplacementModel,
  layer: number,
  feature: number,
  options: { k?: number; head?: { layer: number; head: number } } = {},
): Promise<TokenEffects> {
  const k = checkInt(options.k ?? 10, 'k', 1);
  checkInt(feature, 'feature', 0);
  if (options.head) {
    checkInt(options.head.layer, 'head.layer', 0);
    checkInt(options.head.head, 'head.head', 0);
  }
  const r = await runOnDevice(replacement.model.device, () => connections().deEmbedding(replacement.handle, layer, feature, {
    k,
    attnLayer: options.head?.layer ?? -1,
    head: options.head?.head ?? -1,
  }));
  return { top: tokenScores(replacement, r.top), bottom: tokenScores(replacement, r.bottom) };
}

/** Direct logit effects of a feature, `W_dec[feature] @ W_U` (no LayerNorm): the top and bottom k tokens. */
export async function logitEffects(replacement: ReplacementModel, layer: number, feature: number, options: { k?: number } = {}): Promise<TokenEffects> {
  const k = checkInt(options.k ?? 10, 'k', 1);
  checkInt(feature, 'feature', 0);
  const r = await runOnDevice(replacement.model.device, () => connections().logitEffects(replacement.handle, layer, feature, { k }));
  return { top: tokenScores(replacement, r.top), bottom: tokenScores(replacement, r.bottom) };
}

/**
 * A feature's logit effects on the given tokens (no LayerNorm): `W_dec[feature] . W_U[:, t]`, or as
 * carried by head `head.head` of a later attention layer `head.layer`: `W_dec[feature] W_V W_O . W_U[:, t]`.
 */
export async function logitEffectsOn(
  replacement: ReplacementModel,
  layer: number,
  feature: number,
  tokens: readonly number[],
  options: { head?: { layer: number; head: number } } = {},
): Promise<number[]> {
  checkInt(feature, 'feature', 0);
  const ids = Tensor.from(Int32Array.from(tokens.map((t) => checkInt(t, 'token id', 0))), [tokens.length]);
  const r = new Tensor(await runOnDevice(replacement.model.device, () => connections().logitEffectsOn(replacement.handle, layer, feature, ids.handle, { attnLayer: options.head?.layer ?? -1, head: options.head?.head ?? -1 })));
  const values = Array.from(r.toFloat32Array());
  r.dispose();
  return values;
}

/**
 * All-pairs top-k connections between two transcoders' features: scores `W_dec_src[i] . W_enc_dst[:, j]`.
 * `source` is a Transcoder (its W_dec [m1, d]) or that tensor; `target` a Transcoder (its W_enc [d, m2])
 * or that tensor. Downstream returns [m1, k] (each source's best targets), upstream [m2, k].
 */
export async function topkConnections(source: Transcoder | Tensor, target: Transcoder | Tensor, options: TopkConnectionsOptions = {}): Promise<TopkConnectionsResult> {
  const opts: Required<TopkConnectionsOptions> = {
    k: checkInt(options.k ?? 10, 'k', 1),
    blockSize: checkInt(options.blockSize ?? 4096, 'blockSize', 1),
    direction: options.direction ?? 'downstream',
    merge: options.merge ?? 'auto',
  };
  if (opts.direction !== 'downstream' && opts.direction !== 'upstream') throw new InvalidArgumentError(`direction must be 'downstream' or 'upstream', got '${String(opts.direction)}'`);
  const operand = (x: Transcoder | Tensor, name: string) => {
    if (x instanceof Transcoder || x instanceof Tensor) return x.handle;
    throw new InvalidArgumentError(`${name} must be a Transcoder or a Tensor`);
  };
  const src = operand(source, 'source');
  const dst = operand(target, 'target');
  const r = await runOnDevice(source.device, () => connections().topkConnections(src, dst, opts));
  return { indices: new Tensor(r.indices), values: new Tensor(r.values) };
}

/** The best float32 GEMM throughput (GFLOP/s) of libtorch on the CPU for [m, k] x [k, n] (default 2048^3). */
export async function gemmGflops(options: { m?: number; k?: number; n?: number; iters?: number } = {}): Promise<number> {
  return runOnDevice('cpu', () => connections().gemmGflops({ m: options.m ?? 2048, k: options.k ?? 2048, n: options.n ?? 2048, iters: options.iters ?? 5 }));
}
