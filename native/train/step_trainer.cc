#include "train/step_trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "core/errors.h"
#include "train/fast_step.h"

namespace tc {

namespace {

// g_j -= (g_j . w_j) w_j for every row j: the paper's projection that keeps unit-norm decoder rows
// on the sphere. On float32 CPU tensors one pass over the rows (no [m, d] temporaries).
void removeParallelComponent(at::Tensor& g, const at::Tensor& w) {
  if (!g.device().is_cpu() || g.scalar_type() != c10::kFloat || w.scalar_type() != c10::kFloat || !g.is_contiguous() ||
      !w.is_contiguous()) {
    g.sub_((g * w).sum(-1, /*keepdim=*/true) * w);
    return;
  }
  const int64_t rows = g.size(0), d = g.size(1);
  float* gp = g.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      float* gr = gp + j * d;
      const float* wr = wp + j * d;
      float dot = 0;
      for (int64_t i = 0; i < d; ++i) dot += gr[i] * wr[i];
      for (int64_t i = 0; i < d; ++i) gr[i] -= dot * wr[i];
    }
  });
}

}  // namespace

std::vector<at::Tensor*> StepTrainer::parameters() {
  std::vector<at::Tensor*> out;
  for (auto& [name, t] : tc_->params().named()) out.push_back(t);
  return out;
}

StepTrainer::StepTrainer(std::shared_ptr<Transcoder> transcoder, TrainOptions options)
    : tc_(std::move(transcoder)), options_(std::move(options)), adam_(parameters(), options_.adam) {
  for (at::Tensor* p : parameters()) p->requires_grad_(true);
  sinceFired_ = at::zeros({tc_->spec().dSae}, tc_->params().W_enc.options().dtype(c10::kLong));
}

StepMetrics StepTrainer::trainStep(const at::Tensor& x, const at::Tensor& y) {
  TranscoderParams& p = tc_->params();
  const int64_t step = adam_.steps();
  if (options_.normalizeDecoder) {
    at::NoGradGuard noGrad;
    p.W_dec.div_(p.W_dec.norm(2, {1}, /*keepdim=*/true));
  }
  const int64_t scheduleStep = options_.schedulerBeforeStep ? step + 1 : step;
  double lr = options_.lr * scheduleFactor(options_.schedule, scheduleStep);
  if (lastResample_ >= 0 && step - lastResample_ < options_.resampleWarmupSteps) {
    double ramp = static_cast<double>(step - lastResample_) / static_cast<double>(options_.resampleWarmupSteps);
    lr *= 1e-4 + (1 - 1e-4) * ramp;
  }

  LossOptions loss = options_.loss;
  if (options_.sparsityWarmupSteps > 0) {
    double ramp = std::min(1.0, static_cast<double>(step + 1) / static_cast<double>(options_.sparsityWarmupSteps));
    loss.l1Coefficient *= ramp;
    loss.l0Coefficient *= ramp;
  }
  BatchReduction reduction;
  if (dp_) {
    reduction = dp_->reduction(x.size(0));
    loss.reduction = &reduction;
  }
  loss.dead = sinceFired_ > options_.deadFeatureWindow;
  bool anyDead = loss.dead.any().item<bool>();
  if (shards_) {
    loss.shards = &shardOps_;
    // Whether any rank has dead features decides the AuxK branch (a collective) on every rank.
    anyDead = shards_->max(at::scalar_tensor(anyDead ? 1.0 : 0.0, at::TensorOptions().dtype(c10::kDouble))).item<double>() > 0;
    if (!fastStepApplies(tc_->spec(), loss, anyDead))
      throw InvalidArgument(where(step) + "feature-sharded training runs relu without ghost gradients (--ghost-grads off) and topk transcoders");
  }

  // The step's loss terms and, once it has run, every parameter's gradient: written out by hand
  // where fast_step.h covers the architecture (no autograd graph), by autograd otherwise.
  at::Tensor total, reconstruction, sparsity, ghost, yHat, fired, l0;
  std::function<void()> backward = [] {};
  if (fastStepApplies(tc_->spec(), loss, anyDead)) {
    FastStepResult r = fastStep(*tc_, x, y, loss, anyDead, options_.fast, buffers_);
    total = r.total, reconstruction = r.reconstruction, sparsity = r.sparsity, yHat = r.yHat, fired = r.fired, l0 = r.l0;
    ghost = at::zeros({}, y.options());
  } else {
    for (at::Tensor* param : parameters()) param->mutable_grad() = at::Tensor();  // autograd accumulates
    at::AutoGradMode grad(true);
    LossTerms t = transcoderLoss(*tc_, x, y, loss);
    at::NoGradGuard noGrad;
    total = t.total, reconstruction = t.reconstruction, sparsity = t.sparsity, ghost = t.ghost, yHat = t.yHat;
    fired = (t.f > 0).any(0);
    l0 = (t.f > 0).sum(-1).to(c10::kDouble).mean() * rowShare(x.size(0), loss.reduction);
    backward = [total = t.total] { total.backward(); };
  }
  at::Tensor fvu;
  if (dp_) {
    // The slice's shares of the loss terms and its gradients, summed over the ranks in one bucketed
    // all-reduce with the features that fired and the metrics: from here on everything is the
    // global batch's and the same on every rank (so is an error below: every rank raises it).
    backward();
    backward = [] {};
    at::NoGradGuard noGrad;
    // In float64: the loss shares, and for the FVU metric of the paper recipe the squared error and
    // the sums of y and ||y||^2 (the global variance without another collective).
    const int64_t d = y.size(-1);
    at::Tensor yd = y.detach().to(c10::kDouble);
    auto scalar = [](const at::Tensor& t) { return t.detach().to(c10::kDouble).reshape({1}); };
    at::Tensor stats = at::cat({scalar(total), scalar(reconstruction), scalar(sparsity), scalar(ghost), scalar(l0),
                                scalar((yHat.detach() - y).pow(2).sum()), scalar(yd.pow(2).sum()), yd.sum(0)}).cpu();
    at::Tensor firedCount = fired.to(c10::kFloat);
    std::vector<at::Tensor*> reduced;
    for (at::Tensor* param : parameters()) reduced.push_back(&param->mutable_grad());
    reduced.push_back(&firedCount);
    reduced.push_back(&stats);
    dp_->sumInPlace(reduced);
    fired = firedCount > 0;
    total = stats[0], reconstruction = stats[1], sparsity = stats[2], ghost = stats[3], l0 = stats[4];
    const double rows = static_cast<double>(reduction.globalRows);
    at::Tensor variance = stats[6] - stats.narrow(0, 7, d).pow(2).sum() / rows;
    fvu = loss.reconstruction == Reconstruction::Fvu ? reconstruction : stats[5] / variance;
  }
  double deadCount = -1;
  if (shards_) {
    // The terms that are sums over features are this rank's part: relu's L1, L0 and the dead count
    // (AuxK, the reconstruction and the FVU already are the whole transcoder's on every rank).
    at::NoGradGuard noGrad;
    const bool partialSparsity = tc_->spec().arch == TranscoderArch::ReLU;
    at::Tensor parts = at::stack({partialSparsity ? sparsity.detach().to(c10::kDouble).cpu().reshape({}) : at::zeros({}, at::TensorOptions().dtype(c10::kDouble)),
                                  l0.detach().to(c10::kDouble).cpu().reshape({}), loss.dead.sum().to(c10::kDouble).cpu().reshape({})});
    parts = shards_->sum(parts);
    if (partialSparsity) {
      sparsity = parts[0];
      total = reconstruction.detach().to(c10::kDouble).cpu() + parts[0];
    }
    l0 = parts[1];
    deadCount = parts[2].item<double>();
  }
  StepMetrics m{};
  {
    at::NoGradGuard noGrad;
    sinceFired_.add_(1).masked_fill_(fired.to(sinceFired_.device()), 0);
    m.step = step;
    m.lr = lr;
    m.total = total.item<double>();
    m.reconstruction = reconstruction.item<double>();
    m.sparsity = sparsity.item<double>();
    m.ghost = ghost.item<double>();
    // The standard recipe's reconstruction loss is the FVU itself.
    m.fvu = fvu.defined() ? fvu.item<double>()
            : loss.reconstruction == Reconstruction::Fvu ? m.reconstruction
                                                         : fractionOfVarianceUnexplained(yHat.detach(), y).item<double>();
    m.l0 = l0.item<double>();
    m.deadFraction = deadCount >= 0 ? deadCount / static_cast<double>(tc_->spec().dSae * shardOps_.ranks)
                                     : loss.dead.to(c10::kDouble).mean().item<double>();
  }

  // Named, not printed: std::to_string writes "-nan" for a NaN with its sign bit set.
  if (!std::isfinite(m.total))
    throw NonFinite(where(step) + "the loss is " + (std::isnan(m.total) ? "nan" : m.total > 0 ? "inf" : "-inf") + lastGood());
  backward();
  at::NoGradGuard noGrad;
  // A non-finite gradient would poison every parameter through Adam: stop before the update.
  if (std::string bad = firstNonFinite(tc_->params().named(), true); !bad.empty()) throw NonFinite(where(step) + "the gradient of " + bad + " is not finite" + lastGood());
  if (options_.normalizeDecoder && p.W_dec.grad().defined()) removeParallelComponent(p.W_dec.mutable_grad(), p.W_dec);
  if (options_.maxGradNorm > 0) {
    at::Tensor sq = at::zeros({}, x.options().dtype(c10::kDouble));
    at::Tensor sqShard = at::zeros({}, x.options().dtype(c10::kDouble));
    // Sharded: the feature-holding tensors' squares are summed over the ranks (the rest is replicated).
    for (const auto& [name, param] : tc_->params().named()) {
      if (!param->grad().defined()) continue;
      const bool perFeature = name == "W_enc" || name == "b_enc" || name == "W_dec" || name == "threshold";
      (shards_ && perFeature ? sqShard : sq) += param->grad().to(c10::kDouble).pow(2).sum();
    }
    if (shards_) sq = sq + shards_->sum(sqShard).to(sq.device());
    else sq = sq + sqShard;
    double norm = std::sqrt(sq.item<double>());
    double factor = options_.maxGradNorm / (norm + 1e-6);
    if (factor < 1)
      for (at::Tensor* param : parameters())
        if (param->grad().defined()) param->mutable_grad().mul_(factor);
  }
  adam_.step(lr);
  if (std::string bad = firstNonFinite(tc_->params().named(), false); !bad.empty())
    throw NonFinite(where(step) + "the update left " + bad + " not finite (the learning rate " + std::to_string(lr) + " is too large?)" + lastGood());
  return m;
}

void StepTrainer::setFeatureShards(std::shared_ptr<DataParallel> group) {
  const TranscoderSpec& spec = tc_->spec();
  if (spec.arch != TranscoderArch::ReLU && spec.arch != TranscoderArch::TopK)
    throw InvalidArgument("feature-sharded training runs relu and topk transcoders, not this one");
  if (spec.arch == TranscoderArch::ReLU && options_.loss.ghostGrads)
    throw InvalidArgument("feature-sharded relu training runs without ghost gradients: give --ghost-grads off");
  if (options_.resampleEvery > 0) throw InvalidArgument("feature-sharded training does not resample dead features");
  shards_ = std::move(group);
  shardOps_.rank = shards_->rank();
  shardOps_.ranks = shards_->size();
  DataParallel* g = shards_.get();
  shardOps_.sum = [g](const at::Tensor& t) { return g->sum(t); };
  shardOps_.max = [g](const at::Tensor& t) { return g->max(t); };
}

std::string firstNonFinite(const std::vector<std::pair<std::string, at::Tensor*>>& named, bool gradients) {
  // One device synchronisation and one read of each tensor in the common case: a sum is finite
  // only if every element is (an infinity or a NaN anywhere makes it inf or nan). Only when a sum
  // is not finite (or overflows) are the tensors searched element by element.
  auto of = [&](at::Tensor* t) { return gradients ? t->grad() : *t; };
  std::vector<at::Tensor> sums;
  for (const auto& [name, t] : named)
    if (of(t).defined()) sums.push_back(at::sum(of(t), c10::kFloat));
  if (sums.empty() || at::stack(sums).isfinite().all().item<bool>()) return "";
  for (const auto& [name, t] : named)
    if (of(t).defined() && !of(t).isfinite().all().item<bool>()) return name;
  return "";
}

std::string StepTrainer::where(int64_t step) const {
  const int64_t layer = tc_->spec().layer;
  return "training stopped at step " + std::to_string(step) + (layer >= 0 ? " of the layer-" + std::to_string(layer) + " transcoder" : "") + ": ";
}

std::string StepTrainer::lastGood() { return "; the last checkpoint written before this step is intact"; }

void StepTrainer::reinitializeFeatures(const at::Tensor& idx, const at::Tensor& encoder, const at::Tensor& decoder, double encoderNorm) {
  at::NoGradGuard noGrad;
  TranscoderParams& p = tc_->params();
  auto opts = p.W_enc.options();
  at::Tensor i = idx.to(opts.device());
  p.W_enc.index_copy_(1, i, (encoder.to(opts) * encoderNorm).t());
  p.W_dec.index_copy_(0, i, decoder.to(opts));
  p.b_enc.index_fill_(0, i, 0);
  // Adam moments of the touched columns (W_enc), entries (b_enc) and rows (W_dec) start afresh.
  auto named = p.named();
  auto& state = adam_.state();
  for (size_t k = 0; k < named.size(); ++k) {
    const std::string& name = named[k].first;
    int64_t dim = name == "W_enc" ? 1 : (name == "b_enc" || name == "W_dec" || name == "threshold") ? 0 : -1;
    if (dim < 0) continue;
    state[k].expAvg.index_fill_(dim, i.to(state[k].expAvg.device()), 0);
    state[k].expAvgSq.index_fill_(dim, i.to(state[k].expAvgSq.device()), 0);
  }
  sinceFired_.index_fill_(0, i.to(sinceFired_.device()), 0);
  lastResample_ = adam_.steps();
}

std::vector<StepMetrics> StepTrainer::run(const at::Tensor& xs, const at::Tensor& ys) {
  const TranscoderSpec& spec = tc_->spec();
  if (xs.dim() != 3 || ys.dim() != 3 || xs.size(0) != ys.size(0) || xs.size(1) != ys.size(1) ||
      xs.size(2) != spec.dIn || ys.size(2) != spec.dOut)
    throw InvalidArgument("training batches must be xs [S, N, d_in] and ys [S, N, d_out], got " + c10::str(xs.sizes()) +
                          " and " + c10::str(ys.sizes()));
  std::vector<StepMetrics> metrics;
  for (int64_t s = 0; s < xs.size(0); ++s) metrics.push_back(step(xs[s], ys[s]));
  return metrics;
}

StepMetrics StepTrainer::step(const at::Tensor& x, const at::Tensor& y) {
  auto options = tc_->params().W_enc.options();
  return trainStep(x.to(options), y.to(options));
}

}  // namespace tc
