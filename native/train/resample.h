// Dead-feature resampling (Anthropic's "resample neurons", as in the transcoder paper's code):
// dead features are re-initialised towards inputs on which the transcoder hurts the model most.
//
// 1. Run sequences through the model clean and with the transcoder spliced in; per token, the loss
//    increase is delta = CE_spliced - CE_clean.
// 2. In each sequence pick one position with probability proportional to relu(delta).
// 3. Draw min(#dead, #candidates) of those positions without replacement, proportional to delta.
// 4. Each dead feature's encoder column points along the input activation there (scaled to
//    `scale` x the mean norm of the alive encoder columns), its decoder row along the
//    transcoder's reconstruction error there (unit norm), its encoder bias is 0, its Adam moments
//    are reset, and the learning rate restarts low.
// The paper's code writes the *input* activation into both encoder and decoder; for a transcoder the
// decoder lives in the output space, so we use the output error (docs/transcoders.md).
#pragma once
#include <ATen/Tensor.h>

#include "model/transformer.h"
#include "train/step_trainer.h"

namespace tc {

// Resamples the features of `trainer` that have not fired for its dead-feature window, using
// `tokens` [R, T]. Returns how many were re-initialised.
int64_t resampleDeadFeatures(StepTrainer& trainer, const Transformer& model, int64_t layer, const std::string& hookIn,
                             const std::string& hookOut, const at::Tensor& tokens, double scale, uint64_t seed);

}  // namespace tc
