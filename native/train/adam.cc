#include "train/adam.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

namespace tc {

namespace {

// One pass over p, g, m, v instead of the six of the op-by-op update (the same arithmetic in the
// same order, in float32): float32 CPU tensors, contiguous.
void fusedStep(at::Tensor& p, const at::Tensor& g, AdamState& s, const AdamOptions& o, double lr, double bc1, double bc2Sqrt) {
  float* pp = p.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  float* mp = s.expAvg.data_ptr<float>();
  float* vp = s.expAvgSq.data_ptr<float>();
  const float b1 = static_cast<float>(o.beta1), b2 = static_cast<float>(o.beta2);
  const float c1 = static_cast<float>(1 - o.beta1), c2 = static_cast<float>(1 - o.beta2);
  const float eps = static_cast<float>(o.eps), bc2 = static_cast<float>(bc2Sqrt);
  const float stepSize = static_cast<float>(-lr / bc1);
  at::parallel_for(0, p.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float gi = gp[i];
      const float m = mp[i] * b1 + c1 * gi;
      const float v = vp[i] * b2 + c2 * gi * gi;
      mp[i] = m;
      vp[i] = v;
      pp[i] += stepSize * (m / (std::sqrt(v) / bc2 + eps));
    }
  });
}

bool fusable(const at::Tensor& p, const at::Tensor& g, const AdamState& s) {
  for (const at::Tensor* t : {&p, &g, &s.expAvg, &s.expAvgSq})
    if (!t->device().is_cpu() || t->scalar_type() != c10::kFloat || !t->is_contiguous()) return false;
  return true;
}

}  // namespace

Adam::Adam(std::vector<at::Tensor*> params, AdamOptions options) : params_(std::move(params)), options_(options) {
  for (at::Tensor* p : params_) {
    auto opts = p->options().dtype(options_.stateDtype).device(options_.stateDevice.value_or(p->device()));
    state_.push_back({at::zeros(p->sizes(), opts), at::zeros(p->sizes(), opts)});
  }
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
    if (fusable(p, g, s)) {
      fusedStep(p, g, s, options_, lr, bc1, bc2Sqrt);
      continue;
    }
    if (s.expAvg.scalar_type() != p.scalar_type() || s.expAvg.device() != p.device()) {
      // Moments stored elsewhere (bfloat16, another device): the update in float32 where they live.
      at::Tensor g32 = g.to(s.expAvg.device(), c10::kFloat);
      at::Tensor m = s.expAvg.to(c10::kFloat).mul_(options_.beta1).add_(g32, 1 - options_.beta1);
      at::Tensor v = s.expAvgSq.to(c10::kFloat).mul_(options_.beta2).addcmul_(g32, g32, 1 - options_.beta2);
      at::Tensor update = m / (v.sqrt() / bc2Sqrt).add_(options_.eps);
      p.add_(update.to(p.device(), p.scalar_type()), -lr / bc1);
      s.expAvg.copy_(m);
      s.expAvgSq.copy_(v);
      continue;
    }
    s.expAvg.mul_(options_.beta1).add_(g, 1 - options_.beta1);
    s.expAvgSq.mul_(options_.beta2).addcmul_(g, g, 1 - options_.beta2);
    at::Tensor denom = (s.expAvgSq.sqrt() / bc2Sqrt).add_(options_.eps);
    p.addcdiv_(s.expAvg, denom, -lr / bc1);
  }
}

}  // namespace tc
