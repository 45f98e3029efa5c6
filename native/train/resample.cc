#include "train/resample.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <mutex>
#include <shared_mutex>

namespace tc {

int64_t resampleDeadFeatures(StepTrainer& trainer, const Transformer& model, int64_t layer, const std::string& hookIn,
                             const std::string& hookOut, const at::Tensor& tokens, double scale, uint64_t seed) {
  at::NoGradGuard noGrad;
  std::shared_ptr<Transcoder> tc = trainer.transcoder();
  at::Tensor deadIdx = (trainer.stepsSinceFired() > trainer.options().deadFeatureWindow).nonzero().squeeze(1).cpu();
  if (deadIdx.numel() == 0) return 0;

  // Per-token loss increase caused by splicing the transcoder in.
  ForwardOptions clean;
  clean.hooks = {hookIn, hookOut};
  ForwardResult base = model.forward(tokens, clean);
  ForwardOptions spliced;
  MlpReplacement r;
  r.kind = MlpReplacement::Kind::Module;
  r.moduleNeedsOriginal = false;
  r.module = [&](const at::Tensor& input, const at::Tensor&) {
    return tc->forward(input.to(tc->params().W_enc.options())).to(input.options());
  };
  spliced.mlpReplacements[layer] = r;
  ForwardResult with = model.forward(tokens, spliced);
  at::Tensor ids = model.prepareTokens(tokens);
  at::Tensor delta = (Transformer::nextTokenLoss(with.logits, ids, true) - Transformer::nextTokenLoss(base.logits, ids, true)).cpu();

  // One candidate position per sequence, proportional to relu(delta).
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor weights = at::relu(delta);
  at::Tensor usable = (weights.sum(1) > 0).nonzero().squeeze(1);
  if (usable.numel() == 0) return 0;
  at::Tensor positions = at::multinomial(weights.index_select(0, usable), 1, false, gen).squeeze(1);
  at::Tensor candidateDelta = weights.index_select(0, usable).gather(1, positions.unsqueeze(1)).squeeze(1);

  // Draw min(#dead, #candidates) candidates without replacement, proportional to delta.
  const int64_t n = std::min<int64_t>(deadIdx.numel(), usable.numel());
  at::Tensor chosen = at::multinomial(candidateDelta, n, false, gen);
  at::Tensor rows = usable.index_select(0, chosen), cols = positions.index_select(0, chosen);
  const int64_t d = model.config().dModel;
  auto pick = [&](const at::Tensor& act) { return act.cpu().index({rows, cols}).reshape({n, d}).to(c10::kFloat); };
  at::Tensor x = pick(base.cache.at(hookIn));
  at::Tensor y = pick(base.cache.at(hookOut));
  std::unique_lock lock(tc->mutex());
  at::Tensor error = y - tc->forward(x.to(tc->params().W_enc.options())).cpu();
  auto unit = [](const at::Tensor& v) { return v / v.norm(2, {1}, true).clamp_min(1e-12); };

  at::Tensor targets = deadIdx.narrow(0, 0, n);
  at::Tensor alive = trainer.stepsSinceFired().cpu() <= trainer.options().deadFeatureWindow;
  at::Tensor encNorms = tc->params().W_enc.norm(2, {0}).cpu();
  double aliveNorm = alive.any().item<bool>() ? encNorms.masked_select(alive).mean().item<double>() : 1.0;
  trainer.reinitializeFeatures(targets, unit(x), unit(error), scale * aliveNorm);
  return n;
}

}  // namespace tc
