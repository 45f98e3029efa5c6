/**
 * Attribution on one prompt with transcoders in place of MLPs (the paper's method, §3 of
 * docs/paper-method): every upstream component's contribution to a direction read later in the
 * residual stream, with each LayerNorm frozen to its constant 1/scale. Exact on raw models
 * (processing 'none', the LayerNorms' centring, weights and biases applied) and on TransformerLens-
 * processed ones (the paper's setting). The tensor work is native (native/circuits/attribution.cc);
 * this is its typed handle.
 */
import { runOnDevice } from '../device-queue.js';
import { native, type NativeAttribution, type NativeAttributionNode, type NativeSublayer } from '../native.js';
import type { Model } from '../models/model.js';
import { Tensor } from '../tensor.js';
import type { Transcoder } from '../transcoders/transcoder.js';
import type { ReplacementModel } from './replacement-model.js';

/** Where a direction is read on the residual stream of a layer. */
export type Sublayer = NativeSublayer;

/**
 * One term of a decomposition: `vector . residual(layer, sublayer)[position] + bias == contrib`
 * (for a feature: while it is active); the fields are documented on NativeAttributionNode.
 */
export interface AttributionNode extends Omit<NativeAttributionNode, 'kind' | 'vector'> {
  /** `logit` and `direction` only occur as roots. */
  kind: NativeAttributionNode['kind'] | 'direction';
  vector: Tensor;
}

const toNode = (n: NativeAttributionNode): AttributionNode => ({ ...n, vector: new Tensor(n.vector) });

export class Attribution {
  readonly replacement: ReplacementModel;
  readonly tokens: readonly number[];
  private readonly handle: NativeAttribution;

  private constructor(replacement: ReplacementModel, tokens: number[], handle: NativeAttribution) {
    this.replacement = replacement;
    this.tokens = tokens;
    this.handle = handle;
  }

  /** Runs the replacement model's model on one prompt and every transcoder on its input. */
  static async create(replacement: ReplacementModel, tokens: readonly number[]): Promise<Attribution> {
    const ids = Tensor.from(Int32Array.from(tokens), [tokens.length]);
    const handle = await runOnDevice(replacement.model.device, () => native().Attribution.create(replacement.handle, ids.handle));
    return new Attribution(replacement, [...tokens], handle);
  }

  get model(): Model {
    return this.replacement.model;
  }

  /** Transcoders by layer. */
  get transcoders(): ReadonlyMap<number, Transcoder> {
    return this.replacement.transcoders;
  }

  /** 1/scale of the LayerNorm at (layer, position): ln2 (the MLP input) or ln1; layer = nLayers is ln_final. */
  lnConstant(layer: number, position: number, ln: 'ln1' | 'ln2' = 'ln2'): number {
    return this.handle.lnConstant(layer, position, ln === 'ln2');
  }

  /** The cached residual stream [T, d]. */
  residual(layer: number, sublayer: Sublayer): Tensor {
    return new Tensor(this.handle.residual(layer, sublayer));
  }

  /** The sublayer an MLP reads (resid_mid, or resid_pre in parallel blocks). */
  get mlpInput(): Sublayer {
    return this.model.config.parallelResidual ? 'resid_pre' : 'resid_mid';
  }

  /** Feature activations [T, dSae] of the layer's transcoder on this prompt. */
  activations(layer: number): Tensor {
    return new Tensor(this.handle.activations(layer));
  }

  /** The activation of one feature at one position. */
  activation(layer: number, position: number, feature: number): number {
    return this.handle.activation(layer, position, feature);
  }

  /**
   * A feature's own bias, not scaled by any gradient: `b_enc[F] - W_enc[:, F] . b_dec`, plus the
   * encoder column read along the MLP LayerNorm's bias on a raw model (paper-method E5).
   */
  featureBias(layer: number, feature: number): number {
    return this.handle.featureBias(layer, feature);
  }

  /** The layer's transcoder output [T, d] on this prompt. */
  transcoderOutput(layer: number): Tensor {
    return new Tensor(this.handle.transcoderOutput(layer));
  }

  /** Input x gradient of every feature of `layer` for direction v at `position`: (W_dec v) * f, [dSae]. */
  async featureContributions(v: Tensor, layer: number, position: number): Promise<Tensor> {
    return new Tensor(await runOnDevice(this.model.device, () => this.handle.featureContributions(v.handle, layer, position)));
  }

  /** Contribution of each head and source position of `layer`'s attention to v at `position`, [H, T]. */
  attentionContributions(v: Tensor, layer: number, position: number): Tensor {
    return new Tensor(this.handle.attentionContributions(v.handle, layer, position));
  }

  /** v . (token + position embedding) at `position`. */
  embeddingContribution(v: Tensor, position: number): number {
    return this.handle.embeddingContribution(v.handle, position);
  }

  /** v . (MLP output - transcoder output) at (layer, position): the transcoder's error along v. */
  transcoderError(v: Tensor, layer: number, position: number): number {
    return this.handle.transcoderError(v.handle, layer, position);
  }

  /** A transcoder feature as a root node: its activation, and its encoder column read off the residual (W_enc[:, F] / scale, processed). */
  featureRoot(layer: number, feature: number, position: number): AttributionNode {
    return toNode(this.handle.featureRoot(layer, feature, position));
  }

  /**
   * The top-k children of a node: transcoder features of the layers before it, attention heads and
   * sources (top k per layer), and the embedding. `cap` clips contributions ("zero-ablation" mode);
   * `keepAll` returns every candidate instead of the global top k (sorted either way).
   */
  async children(
    node: Pick<AttributionNode, 'vector' | 'layer' | 'sublayer' | 'position'>,
    k: number,
    options: { ignoreBos?: boolean; cap?: number; keepAll?: boolean } = {},
  ): Promise<AttributionNode[]> {
    const parent = { vector: node.vector.handle, layer: node.layer, sublayer: node.sublayer, position: node.position };
    const kids = await runOnDevice(this.model.device, () => this.handle.children(parent, k, options.ignoreBos ?? true, options.cap ?? null, options.keepAll ?? false));
    return kids.map(toNode);
  }

  /**
   * The logit of `token` (minus that of `minus`) at `position` as a root node: the unembedding
   * direction read through ln_final on the last residual; `contrib` is the logit (difference).
   */
  logitRoot(position: number, token: number, minus?: number): AttributionNode {
    return toNode(this.handle.logitRoot(position, token, minus));
  }
}
