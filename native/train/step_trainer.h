// The transcoder training loop's step, in C++: decoder-norm constraint, loss with dead-feature
// terms, backward, decoder-gradient projection, optional clipping, Adam with a schedule.
// JS hands over whole chunks of batches and receives per-step metrics: nothing per step crosses
// into JS.
#pragma once
#include <ATen/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "distributed/data_parallel.h"
#include "train/adam.h"
#include "train/fast_step.h"
#include "train/schedule.h"
#include "transcoder/losses.h"
#include "transcoder/transcoder.h"

namespace tc {

struct TrainOptions {
  double lr = 4e-4;
  AdamOptions adam;
  ScheduleSpec schedule;
  // The paper steps its scheduler before the optimizer, so step n trains with lambda(n + 1).
  bool schedulerBeforeStep = false;
  LossOptions loss;                 // coefficients; `dead` is filled in by the trainer
  int64_t sparsityWarmupSteps = 0;  // L1 / L0 coefficient ramps linearly from 0 over these steps
  double maxGradNorm = 0;           // 0: no clipping
  bool normalizeDecoder = true;     // unit-norm decoder rows, gradient parallel to them removed
  int64_t deadFeatureWindow = 1000; // steps without firing after which a feature counts as dead
  // Dead-feature resampling (see resample.h): every `resampleEvery` steps (0: never), from
  // `resampleSequences` sequences; the learning rate then restarts at 1e-4 of its value and ramps
  // back linearly over `resampleWarmupSteps`.
  int64_t resampleEvery = 0;
  int64_t resampleSequences = 64;
  double resampleScale = 0.2;
  int64_t resampleWarmupSteps = 10000;
  // The hand-written step's settings (fast_step.h): bf16 GEMMs, the relu sparse-products density.
  FastStepOptions fast;
};

struct StepMetrics {
  int64_t step;
  double lr, total, reconstruction, sparsity, ghost, fvu, l0, deadFraction;
  int64_t resampled = 0;  // features re-initialised after this step
};

// The name of the first of `named` (their gradients, with `gradients`) holding a NaN or an infinity;
// "" when none does. One read of each tensor in the common case.
std::string firstNonFinite(const std::vector<std::pair<std::string, at::Tensor*>>& named, bool gradients);

class StepTrainer {
 public:
  StepTrainer(std::shared_ptr<Transcoder> transcoder, TrainOptions options);

  // Runs one step per batch: xs [S, N, d_in], ys [S, N, d_out].
  std::vector<StepMetrics> run(const at::Tensor& xs, const at::Tensor& ys);
  // One step on x [N, d_in], y [N, d_out] (moved to the transcoder's device and dtype).
  StepMetrics step(const at::Tensor& x, const at::Tensor& y);

  int64_t steps() const { return adam_.steps(); }
  // Steps since each feature last fired (int64 [m]).
  at::Tensor& stepsSinceFired() { return sinceFired_; }
  Adam& optimizer() { return adam_; }
  std::shared_ptr<Transcoder> transcoder() const { return tc_; }
  // Re-initialises features `idx`: encoder columns along `encoder` [n, d_in] (unit rows) scaled by
  // `encoderNorm`, decoder rows `decoder` [n, d_out] (unit rows), zero encoder biases, fresh Adam
  // moments and dead counters; starts the learning-rate ramp.
  void reinitializeFeatures(const at::Tensor& idx, const at::Tensor& encoder, const at::Tensor& decoder, double encoderNorm);
  const TrainOptions& options() const { return options_; }
  // Data-parallel training: each batch is this rank's slice of a global batch; the losses, the
  // gradients (summed over the ranks before the update), the dead-feature counts and the metrics are
  // then the global batch's, the same on every rank.
  void setDataParallel(std::shared_ptr<DataParallel> dp) { dp_ = std::move(dp); }
  const std::shared_ptr<DataParallel>& dataParallel() const { return dp_; }
  // Feature-sharded training: this transcoder holds this rank's slice of the features and every rank
  // trains on the whole batch (losses.h, FeatureShards). Relu without ghost gradients and topk: the
  // hand-written step (fast_step.h) is the one that knows the shards.
  void setFeatureShards(std::shared_ptr<DataParallel> group);
  bool sharded() const { return static_cast<bool>(shards_); }

 private:
  StepMetrics trainStep(const at::Tensor& x, const at::Tensor& y);
  std::vector<at::Tensor*> parameters();
  // "training stopped at step N of the layer-L transcoder: " and the note on the last checkpoint.
  std::string where(int64_t step) const;
  static std::string lastGood();

  std::shared_ptr<Transcoder> tc_;
  TrainOptions options_;
  Adam adam_;
  at::Tensor sinceFired_;
  int64_t lastResample_ = -1;
  FastStepBuffers buffers_;
  std::shared_ptr<DataParallel> dp_;
  std::shared_ptr<DataParallel> shards_;
  FeatureShards shardOps_;
};

}  // namespace tc
