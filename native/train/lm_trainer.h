// Training the language model itself (not a transcoder): next-token cross-entropy backpropagated
// through the same ATen forward pass, and Adam on every weight. Updates the model in place.
#pragma once
#include <ATen/Tensor.h>

#include <memory>
#include <vector>

#include "model/transformer.h"
#include "train/adam.h"

namespace tc {

class LanguageModelTrainer {
 public:
  // The model must hold raw (unprocessed) weights.
  LanguageModelTrainer(std::shared_ptr<Transformer> model, AdamOptions adam);
  // One step per batch of tokens [S, B, T] at learning rate `lr`; returns each step's mean loss.
  std::vector<double> run(const at::Tensor& tokens, double lr, double maxGradNorm);

 private:
  std::shared_ptr<Transformer> model_;
  std::vector<at::Tensor*> params_;
  Adam adam_;
};

}  // namespace tc
