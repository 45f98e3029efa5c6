// Adam, step for step as torch.optim.Adam (single-tensor path, no weight decay), with its state
// exposed so checkpoints can store and restore it.
#pragma once
#include <ATen/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <vector>

namespace tc {

struct AdamOptions {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  // Where the two moments live: their dtype (float32, or bfloat16 to halve their memory; the update is
  // computed in float32 either way) and device (default: each parameter's own; e.g. the CPU while the
  // parameters train on a GPU).
  c10::ScalarType stateDtype = c10::kFloat;
  c10::optional<c10::Device> stateDevice;
};

struct AdamState {
  at::Tensor expAvg, expAvgSq;
};

class Adam {
 public:
  Adam(std::vector<at::Tensor*> params, AdamOptions options);
  // Updates every parameter from its .grad() with learning rate `lr`; a parameter without a
  // gradient is skipped (as torch does).
  void step(double lr);
  int64_t steps() const { return steps_; }
  void setSteps(int64_t n) { steps_ = n; }
  std::vector<AdamState>& state() { return state_; }

 private:
  std::vector<at::Tensor*> params_;
  AdamOptions options_;
  std::vector<AdamState> state_;
  int64_t steps_ = 0;
};

}  // namespace tc
