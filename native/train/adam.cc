#include "train/adam.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

namespace tc {

Adam::Adam(std::vector<at::Tensor*> params, AdamOptions options) : params_(std::move(params)), options_(options) {
  for (at::Tensor* p : params_) state_.push_back({at::zeros_like(*p), at::zeros_like(*p)});
}

void Adam::step(double lr) {
  at::NoGradGuard noGrad;
  ++steps_;
  const double bc1 = 1 - std::pow(options_.beta1, static_cast<double>(steps_));
  const double bc2Sqrt = std::sqrt(1 - std::pow(options_.beta2, static_cast<double>(steps_)));
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = *params_[i];
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    AdamState& s = state_[i];
    s.expAvg.mul_(options_.beta1).add_(g, 1 - options_.beta1);
    s.expAvgSq.mul_(options_.beta2).addcmul_(g, g, 1 - options_.beta2);
    at::Tensor denom = (s.expAvgSq.sqrt() / bc2Sqrt).add_(options_.eps);
    p.addcdiv_(s.expAvg, denom, -lr / bc1);
  }
}

}  // namespace tc
