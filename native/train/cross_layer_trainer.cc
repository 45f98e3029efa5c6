#include "train/cross_layer_trainer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>

#include "core/errors.h"

namespace tc {

std::vector<at::Tensor*> CrossLayerTrainer::parameters() {
  std::vector<at::Tensor*> out;
  for (auto& [name, t] : clt_->params().named()) out.push_back(t);
  return out;
}

CrossLayerTrainer::CrossLayerTrainer(std::shared_ptr<CrossLayerTranscoder> clt, CrossLayerTrainOptions options)
    : clt_(std::move(clt)), options_(std::move(options)), adam_(parameters(), options_.adam) {
  for (at::Tensor* p : parameters()) p->requires_grad_(true);
  const CrossLayerSpec& spec = clt_->spec();
  sinceFired_ = at::zeros({spec.nLayers, spec.dSae}, clt_->params().W_enc.options().dtype(c10::kLong));
}

std::string CrossLayerTrainer::where(int64_t step) {
  return "training stopped at step " + std::to_string(step) + " of the cross-layer transcoder: ";
}

CrossLayerStepMetrics CrossLayerTrainer::step(const at::Tensor& xIn, const at::Tensor& yIn) {
  auto options = clt_->params().W_enc.options();
  at::Tensor x = xIn.to(options), y = yIn.to(options);
  const int64_t step = adam_.steps();
  const double lr = options_.lr * scheduleFactor(options_.schedule, step);
  CrossLayerLossOptions loss = options_.loss;
  if (options_.sparsityWarmupSteps > 0)
    loss.sparsityCoefficient *= std::min(1.0, static_cast<double>(step + 1) / static_cast<double>(options_.sparsityWarmupSteps));
  loss.dead = sinceFired_ > options_.deadFeatureWindow;

  for (at::Tensor* param : parameters()) param->mutable_grad() = at::Tensor();  // autograd accumulates
  CrossLayerLossTerms t;
  {
    at::AutoGradMode grad(true);
    t = crossLayerLoss(*clt_, x, y, loss);
  }
  at::NoGradGuard noGrad;
  at::Tensor active = t.f.detach() > 0;  // [N, L, F]
  CrossLayerStepMetrics m;
  sinceFired_.add_(1).masked_fill_(active.any(0), 0);
  at::Tensor layerL0 = active.sum(-1).to(c10::kDouble).mean(0).cpu();
  at::Tensor layerFvu = t.layerFvu.to(c10::kDouble).cpu();
  for (int64_t l = 0; l < clt_->spec().nLayers; ++l) {
    m.layerFvu.push_back(layerFvu[l].item<double>());
    m.layerL0.push_back(layerL0[l].item<double>());
  }
  StepMetrics& s = m.summary;
  s.step = step;
  s.lr = lr;
  s.total = t.total.item<double>();
  s.reconstruction = t.reconstruction.item<double>();
  s.sparsity = (t.sparsity + t.preact + t.auxk).item<double>();
  s.ghost = 0;
  s.fvu = layerFvu.mean().item<double>();
  s.l0 = layerL0.mean().item<double>();
  s.deadFraction = loss.dead.to(c10::kDouble).mean().item<double>();
  // Named, not printed: std::to_string writes "-nan" for a NaN with its sign bit set.
  if (!std::isfinite(s.total))
    throw NonFinite(where(step) + "the loss is " + (std::isnan(s.total) ? "nan" : s.total > 0 ? "inf" : "-inf") +
                    "; the last checkpoint written before this step is intact");
  {
    at::AutoGradMode grad(true);
    t.total.backward();
  }
  if (std::string bad = firstNonFinite(clt_->params().named(), true); !bad.empty())
    throw NonFinite(where(step) + "the gradient of " + bad + " is not finite; the last checkpoint written before this step is intact");
  if (options_.maxGradNorm > 0) {
    at::Tensor sq = at::zeros({}, x.options().dtype(c10::kDouble));
    for (at::Tensor* param : parameters())
      if (param->grad().defined()) sq += param->grad().to(c10::kDouble).pow(2).sum();
    const double factor = options_.maxGradNorm / (std::sqrt(sq.item<double>()) + 1e-6);
    if (factor < 1)
      for (at::Tensor* param : parameters())
        if (param->grad().defined()) param->mutable_grad().mul_(factor);
  }
  adam_.step(lr);
  if (t.batchMinimum.defined()) {
    // BatchTopK's threshold for use outside training: the mean of each layer's smallest kept
    // activation over the first 1000 steps, then a moving average with weight 1e-3.
    const double weight = 1.0 / static_cast<double>(std::min<int64_t>(step + 1, 1000));
    at::Tensor& theta = clt_->params().threshold;
    theta.add_((t.batchMinimum.to(theta.options()).unsqueeze(1) - theta) * weight);
  }
  if (std::string bad = firstNonFinite(clt_->params().named(), false); !bad.empty())
    throw NonFinite(where(step) + "the update left " + bad + " not finite (the learning rate " + std::to_string(lr) +
                    " is too large?); the last checkpoint written before this step is intact");
  return m;
}

std::vector<CrossLayerStepMetrics> CrossLayerTrainer::run(const at::Tensor& xs, const at::Tensor& ys) {
  const CrossLayerSpec& spec = clt_->spec();
  if (xs.dim() != 4 || ys.dim() != 4 || xs.size(0) != ys.size(0) || xs.size(1) != ys.size(1) || xs.size(2) != spec.nLayers ||
      ys.size(2) != spec.nLayers || xs.size(3) != spec.dIn || ys.size(3) != spec.dOut)
    throw InvalidArgument("cross-layer training batches must be xs [S, N, " + std::to_string(spec.nLayers) + ", d_in] and ys [S, N, " +
                          std::to_string(spec.nLayers) + ", d_out], got " + c10::str(xs.sizes()) + " and " + c10::str(ys.sizes()));
  std::vector<CrossLayerStepMetrics> metrics;
  for (int64_t s = 0; s < xs.size(0); ++s) metrics.push_back(step(xs[s], ys[s]));
  return metrics;
}

}  // namespace tc
