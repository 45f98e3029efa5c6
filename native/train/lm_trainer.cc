#include "train/lm_trainer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "core/errors.h"

namespace tc {

namespace {

std::vector<at::Tensor*> prepare(Transformer& model) {
  Weights& w = model.weightsForTraining();
  if (!w.lnFinalW.defined())
    throw InvalidArgument("training a model needs its raw weights: load it with processing 'none'");
  const bool tied = w.W_U.is_alias_of(w.W_E);
  std::vector<at::Tensor*> params = trainableWeights(w);
  for (at::Tensor* p : params) p->requires_grad_(true);
  // The tied unembedding must be a view taken after W_E requires grad, or it would not carry gradients.
  if (tied) w.W_U = w.W_E.t();
  return params;
}

}  // namespace

LanguageModelTrainer::LanguageModelTrainer(std::shared_ptr<Transformer> model, AdamOptions adam)
    : model_(std::move(model)), params_(prepare(*model_)), adam_(params_, adam) {}

std::vector<double> LanguageModelTrainer::run(const at::Tensor& tokens, double lr, double maxGradNorm) {
  if (tokens.dim() != 3) throw InvalidArgument("training tokens must be [steps, batch, sequence], got " + c10::str(tokens.sizes()));
  std::vector<double> losses;
  ForwardOptions forward;
  forward.grad = true;
  for (int64_t s = 0; s < tokens.size(0); ++s) {
    at::Tensor ids = model_->prepareTokens(tokens[s]);
    at::AutoGradMode grad(true);
    at::Tensor loss = Transformer::nextTokenLoss(model_->forward(ids, forward).logits, ids, false);
    for (at::Tensor* p : params_) p->mutable_grad() = at::Tensor();
    loss.backward();
    if (maxGradNorm > 0) {
      at::NoGradGuard noGrad;
      double sq = 0;
      for (at::Tensor* p : params_)
        if (p->grad().defined()) sq += p->grad().to(c10::kDouble).pow(2).sum().item<double>();
      double factor = maxGradNorm / (std::sqrt(sq) + 1e-6);
      if (factor < 1)
        for (at::Tensor* p : params_)
          if (p->grad().defined()) p->mutable_grad().mul_(factor);
    }
    adam_.step(lr);
    losses.push_back(loss.item<double>());
  }
  return losses;
}

}  // namespace tc
