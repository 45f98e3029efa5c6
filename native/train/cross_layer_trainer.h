// The cross-layer transcoder's training step: loss (cross_layer_losses.h) by autograd, finiteness
// checks, optional clipping, Adam with a schedule, dead-feature counters per layer. No decoder
// normalisation: the penalties weight each feature by its decoder norm instead.
#pragma once
#include <ATen/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "train/adam.h"
#include "train/schedule.h"
#include "train/step_trainer.h"
#include "transcoder/cross_layer.h"
#include "transcoder/cross_layer_losses.h"

namespace tc {

struct CrossLayerTrainOptions {
  double lr = 2e-4;
  AdamOptions adam;
  ScheduleSpec schedule;
  CrossLayerLossOptions loss;       // coefficients; `dead` is filled in by the trainer
  int64_t sparsityWarmupSteps = 0;  // the sparsity coefficient ramps linearly from 0 over these steps
  double maxGradNorm = 0;           // 0: no clipping
  int64_t deadFeatureWindow = 1000; // steps without firing after which a feature counts as dead
};

struct CrossLayerStepMetrics {
  StepMetrics summary;         // fvu: mean over layers; l0: mean active features per row and source layer
  std::vector<double> layerFvu, layerL0;
};

class CrossLayerTrainer {
 public:
  CrossLayerTrainer(std::shared_ptr<CrossLayerTranscoder> clt, CrossLayerTrainOptions options);

  // One step per batch: xs [S, N, L, d_in], ys [S, N, L, d_out].
  std::vector<CrossLayerStepMetrics> run(const at::Tensor& xs, const at::Tensor& ys);
  // One step on x [N, L, d_in], y [N, L, d_out] (moved to the transcoder's device and dtype).
  CrossLayerStepMetrics step(const at::Tensor& x, const at::Tensor& y);

  int64_t steps() const { return adam_.steps(); }
  // Steps since each feature last fired (int64 [L, F]).
  at::Tensor& stepsSinceFired() { return sinceFired_; }
  Adam& optimizer() { return adam_; }
  std::shared_ptr<CrossLayerTranscoder> transcoder() const { return clt_; }
  const CrossLayerTrainOptions& options() const { return options_; }

 private:
  std::vector<at::Tensor*> parameters();
  static std::string where(int64_t step);

  std::shared_ptr<CrossLayerTranscoder> clt_;
  CrossLayerTrainOptions options_;
  Adam adam_;
  at::Tensor sinceFired_;
};

}  // namespace tc
