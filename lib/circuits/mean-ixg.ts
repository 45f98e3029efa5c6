/**
 * Dataset-averaged input x gradient (the paper's `mean ixg`): how much, on average over many
 * prompts, each feature of an upstream transcoder drives one downstream feature. For the downstream
 * feature's encoder direction n = W_enc_down[:, F], the gradient of n . (upstream output) with respect
 * to the upstream activations is g = W_dec_up n (no LayerNorm constant, as in the paper), and the
 * input x gradient at a position is g * f_up(position).
 */
import { InvalidArgumentError } from '../errors.js';
import type { ReplacementModel } from './replacement-model.js';

export interface MeanIxgOptions {
  /** Sequences per forward pass (default 8). */
  batchSize?: number;
}

/**
 * The mean over every token of `sequences` (of any lengths) of g * f_up for the transcoders of layers
 * `upstreamLayer` and `downstreamLayer` of the replacement model, [dSae of the upstream one].
 */
export async function meanInputTimesGradient(
  replacement: ReplacementModel,
  upstreamLayer: number,
  downstreamLayer: number,
  feature: number,
  sequences: readonly (readonly number[])[],
  options: MeanIxgOptions = {},
): Promise<Float32Array> {
  const upstream = replacement.transcoder(upstreamLayer);
  const downstream = replacement.transcoder(downstreamLayer);
  const hookIn = replacement.placement(upstreamLayer).hookIn;
  const up = upstream.config;
  const down = downstream.config;
  if (!Number.isInteger(feature) || feature < 0 || feature >= down.dSae) throw new InvalidArgumentError(`feature ${feature} is out of range [0, ${down.dSae})`);
  if (up.layer > down.layer) throw new InvalidArgumentError(`the upstream transcoder (layer ${up.layer}) must not come after the downstream one (layer ${down.layer})`);
  if (up.dOut !== down.dIn) throw new InvalidArgumentError(`upstream dOut ${up.dOut} differs from downstream dIn ${down.dIn}`);
  if (sequences.length === 0) throw new InvalidArgumentError('mean ixg needs at least one sequence');
  const m = up.dSae;
  const d = up.dOut;
  const W_enc = downstream.parameters().W_enc.toFloat32Array();
  const W_dec = upstream.parameters().W_dec.toFloat32Array();
  const n = Float32Array.from({ length: d }, (_, i) => W_enc[i * down.dSae + feature]!);
  const g = new Float64Array(m);
  for (let i = 0; i < m; i++) {
    let s = 0;
    for (let j = 0; j < d; j++) s += W_dec[i * d + j]! * n[j]!;
    g[i] = s;
  }
  const sum = new Float64Array(m);
  let count = 0;
  const batchSize = options.batchSize ?? 8;
  for (let start = 0; start < sequences.length; start += batchSize) {
    const batch = sequences.slice(start, start + batchSize);
    const { cache, lengths } = await replacement.model.run(batch, { cache: [hookIn], logits: false });
    const f = (await upstream.encode(cache[hookIn]!)).toFloat32Array();
    // Rows of different lengths are padded on the right: only each row's first lengths[b] positions are tokens.
    const T = f.length / m / batch.length;
    lengths.forEach((len, b) => {
      for (let t = 0; t < len; t++) for (let i = 0; i < m; i++) sum[i]! += g[i]! * f[(b * T + t) * m + i]!;
      count += len;
    });
  }
  return Float32Array.from(sum, (s) => s / count);
}
