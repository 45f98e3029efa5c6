/**
 * Attribution on one prompt with transcoders in place of MLPs (the paper's method, §3 of
 * docs/paper-method): every upstream component's contribution to a direction read later in the
 * residual stream, with each LayerNorm frozen to its constant 1/scale. The tensor work is native
 * (native/circuits/attribution.cc); this is its typed handle.
 */
import { runOnDevice } from '../device-queue.js';
import { InvalidArgumentError } from '../errors.js';
import { native, type NativeTensor } from '../native.js';
import type { Model } from '../models/model.js';
import { Tensor } from '../tensor.js';
import type { Transcoder } from '../transcoders/transcoder.js';

/** Where a direction is read on the residual stream of a layer. */
export type Sublayer = 'resid_pre' | 'resid_mid' | 'resid_post';

/** One term of a decomposition; `vector . residual(layer, sublayer)[position] == contrib`. */
export interface AttributionNode {
  /** `logit` and `direction` only occur as roots. */
  kind: 'feature' | 'attention' | 'embedding' | 'logit' | 'direction';
  layer: number;
  position: number;
  /** Transcoder feature index (kind 'feature'). */
  feature?: number;
  /** Attention head (kind 'attention'); `position` is then the source position. */
  head?: number;
  /** Logit roots: the token (minus the other token, for a logit difference). */
  token?: number;
  minus?: number;
  contrib: number;
  /** The contribution was clipped to the path's cap ("zero-ablation" mode). */
  capped: boolean;
  sublayer: Sublayer;
  vector: Tensor;
}

interface NativeNode extends Omit<AttributionNode, 'vector' | 'kind'> {
  kind: 'feature' | 'attention' | 'embedding';
  vector: NativeTensor;
}

interface NativeAttribution {
  lnConstant(layer: number, position: number, ln2: boolean): number;
  residual(layer: number, sublayer: Sublayer): NativeTensor;
  activations(layer: number): NativeTensor;
  transcoderOutput(layer: number): NativeTensor;
  featureContributions(v: NativeTensor, layer: number, position: number): Promise<NativeTensor>;
  attentionContributions(v: NativeTensor, layer: number, position: number): NativeTensor;
  embeddingContribution(v: NativeTensor, position: number): number;
  transcoderError(v: NativeTensor, layer: number, position: number): number;
  featureRoot(layer: number, feature: number, position: number): NativeNode;
  children(node: { vector: NativeTensor; layer: number; sublayer: Sublayer; position: number }, k: number, ignoreBos: boolean, cap: number | null, keepAll: boolean): Promise<NativeNode[]>;
}

const toNode = (n: NativeNode): AttributionNode => ({ ...n, vector: new Tensor(n.vector) });

export class Attribution {
  readonly model: Model;
  readonly tokens: readonly number[];
  /** Transcoders by layer. */
  readonly transcoders: ReadonlyMap<number, Transcoder>;
  private readonly handle: NativeAttribution;

  private constructor(model: Model, tokens: number[], transcoders: Map<number, Transcoder>, handle: NativeAttribution) {
    this.model = model;
    this.tokens = tokens;
    this.transcoders = transcoders;
    this.handle = handle;
  }

  /**
   * Runs `model` (loaded with processing 'transformerlens') on one prompt and every transcoder on its
   * layer's MLP input. `transcoders` are matched to layers by their config.layer.
   */
  static async create(model: Model, transcoders: readonly Transcoder[], tokens: readonly number[]): Promise<Attribution> {
    if (model.processing !== 'transformerlens') {
      throw new InvalidArgumentError("attribution needs the model loaded with processing 'transformerlens' (the decompositions are exact only there)");
    }
    const byLayer = new Map<number, Transcoder>();
    for (const tc of transcoders) {
      if (byLayer.has(tc.config.layer)) throw new InvalidArgumentError(`two transcoders for layer ${tc.config.layer}`);
      byLayer.set(tc.config.layer, tc);
    }
    const ids = Tensor.from(Int32Array.from(tokens), [tokens.length]);
    const Native = native().Attribution as unknown as { create(m: unknown, t: Record<number, unknown>, ids: NativeTensor): Promise<NativeAttribution> };
    const handle = await runOnDevice(model.device, () => Native.create(model.handle, Object.fromEntries([...byLayer].map(([l, t]) => [l, t.handle])), ids.handle));
    return new Attribution(model, [...tokens], byLayer, handle);
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

  /** A transcoder feature as a root node: its activation, and W_enc[:, F] / scale on its MLP input. */
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

  /** The unembedding direction of `token` (minus that of `minus`) read on the last residual at `position`, as a root node. */
  logitRoot(position: number, token: number, minus?: number): AttributionNode {
    const { nLayers, dModel, vocabSize } = this.model.config;
    for (const id of [token, minus]) {
      if (id !== undefined && (!Number.isInteger(id) || id < 0 || id >= vocabSize)) throw new InvalidArgumentError(`token id ${id} is out of range [0, ${vocabSize})`);
    }
    const WU = this.model.weight('unembed.W_U').toFloat32Array();
    const bU = this.model.weight('unembed.b_U').toFloat32Array();
    const ln = this.lnConstant(nLayers, position);
    // ln_final is LayerNormPre: the logit is W_U[:, token] . resid_post / scale + b_U[token].
    const direction = Float32Array.from({ length: dModel }, (_, i) => (WU[i * vocabSize + token]! - (minus === undefined ? 0 : WU[i * vocabSize + minus]!)) * ln);
    const resid = this.residual(nLayers - 1, 'resid_post').toFloat32Array().subarray(position * dModel, (position + 1) * dModel);
    const bias = bU[token]! - (minus === undefined ? 0 : bU[minus]!);
    const value = direction.reduce((s, v, i) => s + v * resid[i]!, 0) + bias;
    return {
      kind: 'logit', layer: nLayers - 1, position, token, ...(minus !== undefined ? { minus } : {}),
      contrib: value, capped: false, sublayer: 'resid_post', vector: Tensor.from(direction, [dModel]),
    };
  }
}
