/**
 * Exports for tools that run the model with its raw Hugging Face weights (circuit-tracer loads
 * TransformerLens with fold_ln / center_writing_weights off; sparsify hooks the Hugging Face
 * modules), of transcoders trained on a TransformerLens-processed model.
 *
 * What the transcoder reads differs between the two loadings, and the export changes the encoder so
 * that the exported file computes the same features on the raw model:
 *
 * - `blocks.L.ln2.hook_normalized` (also `ln1`, `ln_final`): processed, LayerNormPre
 *   x_p = (r − mean r)/σ(r); raw, x_r = w ⊙ x_p + b with that LayerNorm's weight w and bias b. So
 *   x_p = (x_r − b)/w and pre = ((x_r − b)/w − b_dec) W_enc + b_enc: W_enc' = diag(1/w) W_enc and an
 *   input bias b + w ⊙ b_dec, which the formats (no input bias) fold into b_enc. A skip path reads
 *   x_p too: W_skip' = diag(1/w) W_skip, and −(b/w) W_skip joins the output bias.
 * - residual hooks (`hook_resid_pre/mid/post`, `hook_attn_out`, `hook_mlp_out`): center_writing_weights
 *   makes the processed residual the raw one minus its d_model mean, x_p = x_r (I − 11ᵀ/d), so every
 *   column of W_enc (and of W_skip) loses its mean over d_in.
 *
 * Both are exact: fold_ln is a re-parametrisation, center_writing_weights centres every write into
 * the residual (so the processed residual is the centred raw one), and fold_value_biases moves
 * b_V into b_O without changing the residual (attention rows sum to one).
 *
 * The output side needs no change: the target the transcoder learned (the processed
 * `hook_mlp_out`) is the raw one minus its mean over d_model, and everything that reads the
 * residual stream is a LayerNorm, which removes that mean. The output hook must therefore be a
 * write into the residual stream; any other hook, on either side, is refused rather than exported
 * with a different function.
 */
import { InvalidArgumentError } from '../../errors.js';
import type { Model } from '../../models/model.js';
import type { Transcoder } from '../transcoder.js';

/** Options of the exports to formats whose tools load the model raw (circuit-tracer, sparsify). */
export interface RawModelExportOptions {
  /**
   * The model the transcoder was trained on, loaded with processing 'none' (float32). Needed when
   * the transcoder records processing 'transformerlens' and reads a LayerNorm's output: that
   * LayerNorm's raw weight and bias are folded into the encoder (see raw-model.ts). Not used for
   * transcoders of raw models.
   */
  model?: Model;
}

/** How the exported encoder's input relates to what the transcoder was trained on. */
export type InputFold =
  | { kind: 'none' }
  /** x_trained = (x_raw − b) / w, the inverse of the LayerNorm `layerNorm` (e.g. `blocks.3.ln2`). */
  | { kind: 'layernorm'; layerNorm: string; w: Float64Array; b: Float64Array }
  /** x_trained = x_raw − mean(x_raw). */
  | { kind: 'centre' };

const LAYERNORM_HOOK = /^(blocks\.\d+\.ln[12]|ln_final)\.hook_normalized$/;
const RESIDUAL_HOOK = /^blocks\.\d+\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out)$/;

/**
 * The fold that makes `tc` compute its features on the raw model, or `{ kind: 'none' }` when it was
 * trained on a raw model (processing 'none' or not recorded). Refuses (InvalidArgumentError) what
 * cannot be exported exactly: a processed transcoder without the raw model, a processed model
 * given instead, a LayerNorm weight with a zero entry, hooks other than those above.
 * `who` names the export and `target` the format in messages.
 */
export function rawModelInputFold(tc: Transcoder, who: string, target: string, options: RawModelExportOptions = {}): InputFold {
  const c = tc.config;
  if (c.processing !== 'transformerlens') return { kind: 'none' };
  const which = `the layer-${c.layer} transcoder (${c.hookIn} -> ${c.hookOut})`;
  if (!RESIDUAL_HOOK.test(c.hookOut)) {
    throw new InvalidArgumentError(
      `${who}: ${which} was trained on a TransformerLens-processed model and writes '${c.hookOut}'; ${target} runs the model raw, ` +
        'and only outputs written into the residual stream (hook_mlp_out, hook_attn_out, hook_resid_*) keep their function there',
    );
  }
  if (RESIDUAL_HOOK.test(c.hookIn)) return { kind: 'centre' };
  const ln = LAYERNORM_HOOK.exec(c.hookIn);
  if (!ln) {
    throw new InvalidArgumentError(
      `${who}: ${which} was trained on a TransformerLens-processed model and reads '${c.hookIn}', which ${target} (raw model) computes differently; ` +
        'only LayerNorm outputs (ln1/ln2/ln_final.hook_normalized) and residual-stream hooks can be converted exactly',
    );
  }
  const layerNorm = ln[1]!;
  const model = options.model;
  if (!model) {
    throw new InvalidArgumentError(
      `${who}: ${which} was trained on a TransformerLens-processed model, whose ${c.hookIn} has no LayerNorm weight and bias; ` +
        `${target} loads the model raw, so the export must fold ${layerNorm}'s weight and bias into the encoder. ` +
        "Pass the model loaded with processing 'none' ({ model }, or --model DIR on the command line)",
    );
  }
  if (model.processing !== 'none') {
    throw new InvalidArgumentError(
      `${who}: the model ${model.dir} is loaded with processing '${model.processing}', which folds its LayerNorm weights away; load it with processing 'none'`,
    );
  }
  if (model.dtype !== 'float32') {
    // The fold divides by w: LayerNorm weights rounded to 16 bits would shift every feature slightly.
    throw new InvalidArgumentError(`${who}: the model ${model.dir} is loaded in ${model.dtype}; load it in float32 (the default) so that its LayerNorm weights are exact`);
  }
  if (model.config.dModel !== c.dIn) {
    throw new InvalidArgumentError(`${who}: the model ${model.dir} has d_model = ${model.config.dModel}, but ${which} reads vectors of d_in = ${c.dIn}`);
  }
  const names = new Set(model.weightNames());
  const read = (name: string): Float64Array => {
    if (!names.has(name)) throw new InvalidArgumentError(`${who}: the model ${model.dir} has no weight '${name}' (the LayerNorm ${which} reads)`);
    return Float64Array.from(model.weight(name).toFloat32Array());
  };
  const w = read(`${layerNorm}.w`);
  const b = read(`${layerNorm}.b`);
  const bad = w.findIndex((v) => v === 0 || !Number.isFinite(v));
  if (bad >= 0) {
    throw new InvalidArgumentError(
      `${who}: ${layerNorm}.w[${bad}] = ${w[bad]} in ${model.dir}: the LayerNorm of layer ${c.layer} cannot be inverted, so ${which} cannot be expressed on the raw model`,
    );
  }
  const badBias = b.findIndex((v) => !Number.isFinite(v));
  if (badBias >= 0) throw new InvalidArgumentError(`${who}: ${layerNorm}.b[${badBias}] = ${b[badBias]} in ${model.dir} is not finite`);
  return { kind: 'layernorm', layerNorm, w, b };
}

/** A short record of what an export did to the input side, for the exported files' metadata. */
export function describeFold(fold: InputFold): string {
  switch (fold.kind) {
    case 'none':
      return 'none';
    case 'layernorm':
      return `${fold.layerNorm} weight and bias folded into the encoder`;
    case 'centre':
      return 'input centring folded into the encoder';
  }
}
