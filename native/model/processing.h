// TransformerLens's default weight processing (HookedTransformer.from_pretrained defaults):
// fold_ln, center_writing_weights, center_unembed, fold_value_biases. Transcoders trained on
// TransformerLens models (the paper's GPT-2 transcoders among them) only work on the processed
// model. Next-token log-probabilities are unchanged up to float error.
#pragma once
#include "model/config.h"
#include "model/weights.h"

namespace tc {

// Processes float32 weights in place (out-of-place tensor ops: the tied W_U/W_E views are never
// written through). Afterwards every LayerNorm is a LayerNormPre (no affine) and every RMSNorm
// that feeds a linear map an RMSNormPre; RMSNorm models get no centring of writing weights (their
// norms do not remove the mean), as in TransformerLens. Gemma's post-attention/post-feedforward
// norms and the per-head q/k norms write or rotate after their gain and are kept.
void processLikeTransformerLens(const ModelConfig& cfg, Weights& w);

}  // namespace tc
