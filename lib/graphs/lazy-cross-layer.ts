/**
 * Attribution graphs from a cross-layer transcoder read lazily (lazyCrossLayer: circuit-tracer's
 * layout), for sets too large to load: circuit-tracer's Gemma-2-2B 2.5M CLT is 160 GiB, almost all of
 * it decoders, and a prompt activates a few thousand features.
 *
 * The graph of a prompt only involves its active features. So the encoders are read one layer at a
 * time to find them (from the model's own hook values: the replacement model reproduces the model
 * exactly, its errors absorbing what the CLT misses), and only the active features' encoder vectors,
 * biases, thresholds and decoders are read into a compact CLT of the same function on this prompt:
 * every inactive feature contributes 0 to every output, and relu / jumprelu act feature by feature.
 * The graph of the compact CLT, with its feature indices mapped back, is the graph of the full one.
 */
import { InvalidArgumentError } from '../errors.js';
import type { Model } from '../models/model.js';
import { ReplacementModel } from '../circuits/replacement-model.js';
import { Tensor } from '../tensor.js';
import { CrossLayerTranscoder } from '../transcoders/cross-layer.js';
import type { LazyCrossLayerTranscoder } from '../transcoders/lazy.js';
import type { PlacementOptions } from '../transcoders/transcoder.js';
import { attributionGraph, type AttributedGraph, type AttributeOptions } from './attribute.js';

/** A CLT holding only some features of a larger one: `features[l][j]` is compact feature j's index in layer l. */
export interface CompactCrossLayer {
  clt: CrossLayerTranscoder;
  features: number[][];
}

/** Features per layer whose encoder is read at once (bounds memory to that many encoder vectors). */
const ENCODER_CHUNK = 16384;

/**
 * The active features of `tokens` in each layer of `lazy` (relu / jumprelu of the pre-activations of
 * the model's hook values), read from the encoders in chunks of features, and a CLT of just those.
 * Padding features (when layers differ in their counts) have zero weights and never fire.
 */
export async function compactCrossLayer(model: Model, lazy: LazyCrossLayerTranscoder, tokens: readonly number[], options: PlacementOptions = {}): Promise<CompactCrossLayer> {
  const L = lazy.nLayers;
  if (L !== model.config.nLayers) throw new InvalidArgumentError(`${lazy.dir}: a ${L}-layer cross-layer transcoder cannot replace the MLPs of a ${model.config.nLayers}-layer model`);
  if (lazy.dIn !== model.config.dModel || lazy.dOut !== model.config.dModel) throw new InvalidArgumentError(`${lazy.dir}: widths ${lazy.dIn} -> ${lazy.dOut} do not match the model's d_model ${model.config.dModel}`);
  const T = tokens.length;
  const d = lazy.dIn;
  const { cache } = await model.run([[...tokens]], { cache: [...lazy.hookIn], logits: false });
  const features: number[][] = [];
  for (let l = 0; l < L; l++) {
    const x = cache[lazy.hookIn[l]!]!.toFloat32Array(); // [T, d]
    const active: number[] = [];
    for (let start = 0; start < lazy.dSae; start += ENCODER_CHUNK) {
      const ids = Array.from({ length: Math.min(ENCODER_CHUNK, lazy.dSae - start) }, (_, j) => start + j);
      const pre = await preActivations(x, T, d, lazy.encoderVectors(l, ids), lazy.encoderBias(l, ids));
      const threshold = lazy.thresholds(l, ids);
      ids.forEach((f, j) => {
        for (let p = 0; p < T; p++) {
          const v = pre[p * ids.length + j]!;
          // relu(v) and JumpReLU's v (v > θ) are non-zero exactly when this holds.
          if (threshold ? v > threshold[j]! && v !== 0 : v > 0) {
            active.push(f);
            break;
          }
        }
      });
    }
    features.push(active);
  }
  Object.values(cache).forEach((t) => t.dispose());
  const width = Math.max(1, ...features.map((f) => f.length));
  const wEnc = new Float32Array(L * d * width);
  // Padding features: no weights and a negative bias, so relu and jumprelu (θ = 0) keep them at 0.
  const bEnc = new Float32Array(L * width).fill(-1);
  const threshold = lazy.arch === 'jumprelu' ? new Float32Array(L * width) : undefined;
  const bDec = new Float32Array(L * lazy.dOut);
  const params: Record<string, Tensor> = {};
  for (let l = 0; l < L; l++) {
    const fs = features[l]!;
    const vectors = lazy.encoderVectors(l, fs); // [n, d]
    fs.forEach((_, j) => {
      for (let i = 0; i < d; i++) wEnc[(l * d + i) * width + j] = vectors[j * d + i]!;
    });
    bEnc.set(lazy.encoderBias(l, fs), l * width);
    if (threshold) threshold.set(lazy.thresholds(l, fs)!, l * width);
    bDec.set(lazy.outputBias(l), l * lazy.dOut);
    const dec = new Float32Array(width * (L - l) * lazy.dOut);
    dec.set(lazy.decoderRows(l, fs)); // [n, (L - l) dOut]: compact rows 0..n-1, padding rows 0
    params[`W_dec_${l}`] = Tensor.from(dec, [width, L - l, lazy.dOut]);
  }
  params.W_enc = Tensor.from(wEnc, [L, d, width]);
  params.b_enc = Tensor.from(bEnc, [L, width]);
  params.b_dec = Tensor.from(bDec, [L, lazy.dOut]);
  if (threshold) params.threshold = Tensor.from(threshold, [L, width]);
  try {
    const clt = await CrossLayerTranscoder.fromParameters(
      { arch: lazy.arch, nLayers: L, dIn: d, dOut: lazy.dOut, dSae: width, skip: false, hookIn: [...lazy.hookIn], hookOut: [...lazy.hookOut], modelName: lazy.modelName, processing: 'none' },
      params,
      options,
    );
    return { clt, features };
  } finally {
    Object.values(params).forEach((t) => t.dispose());
  }
}

/** x [T, d] times the encoder vectors [n, d] (rows) plus their biases: [T, n], by a one-layer CLT's encoder on the native side. */
async function preActivations(x: Float32Array, T: number, d: number, vectors: Float32Array, bias: Float32Array): Promise<Float32Array> {
  const n = bias.length;
  const wEnc = new Float32Array(d * n);
  for (let j = 0; j < n; j++) for (let i = 0; i < d; i++) wEnc[i * n + j] = vectors[j * d + i]!;
  // JumpReLU's pre (pre > θ) with θ the lowest float keeps every pre-activation as it is.
  const params = {
    W_enc: Tensor.from(wEnc, [1, d, n]),
    b_enc: Tensor.from(bias, [1, n]),
    threshold: Tensor.from(new Float32Array(n).fill(-3.4028234663852886e38), [1, n]),
    W_dec_0: Tensor.from(new Float32Array(n), [n, 1, 1]),
    b_dec: Tensor.from(new Float32Array(1), [1, 1]),
  };
  const input = Tensor.from(x, [T, 1, d]);
  const encoder = await CrossLayerTranscoder.fromParameters({ arch: 'jumprelu', nLayers: 1, dIn: d, dOut: 1, dSae: n, skip: false, hookIn: ['blocks.0.hook_in'], hookOut: ['blocks.0.hook_out'] }, params);
  try {
    return (await encoder.encode(input)).toFloat32Array();
  } finally {
    input.dispose();
    Object.values(params).forEach((t) => t.dispose());
  }
}

/**
 * The attribution graph of `prompt` on `model` with the lazily read CLT `lazy` replacing every MLP:
 * the graph of its compact CLT ({@link compactCrossLayer}), feature indices those of the full CLT.
 */
export async function lazyCrossLayerGraph(model: Model, lazy: LazyCrossLayerTranscoder, prompt: string | readonly number[], options: AttributeOptions & PlacementOptions = {}): Promise<AttributedGraph> {
  const tokens = typeof prompt === 'string' ? model.tokenize(prompt) : [...prompt];
  if (tokens.length === 0) throw new InvalidArgumentError('the prompt has no tokens');
  const { clt, features } = await compactCrossLayer(model, lazy, tokens, options);
  const graph = await attributionGraph(ReplacementModel.createCrossLayer(model, clt), tokens, options);
  const nodes = graph.nodes.map((n) => (n.kind === 'feature' ? { ...n, index: features[n.layer]![n.index]! } : n));
  return { ...graph, ...(typeof prompt === 'string' ? { prompt } : {}), nodes, dTranscoder: Array(lazy.nLayers).fill(lazy.dSae) };
}
