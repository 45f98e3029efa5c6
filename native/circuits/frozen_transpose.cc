#include "circuits/frozen_transpose.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "core/errors.h"

namespace tc {

namespace {

std::string block(int64_t l) { return "blocks." + std::to_string(l) + "."; }

// g @ W^T in W's dtype (bfloat16 models multiply in bfloat16, as autograd would), back to float32.
at::Tensor timesTransposed(const at::Tensor& g, const at::Tensor& W) {
  return at::matmul(g.to(W.scalar_type()), W.t()).to(c10::kFloat);
}

}  // namespace

std::vector<std::string> FrozenTranspose::hooks(const ModelConfig& cfg) {
  std::vector<std::string> names = {"ln_final.hook_scale"};
  for (int64_t l = 0; l < cfg.nLayers; ++l) {
    names.push_back(block(l) + "ln1.hook_scale");
    names.push_back(block(l) + "ln2.hook_scale");
    names.push_back(block(l) + "attn.hook_pattern");
    if (cfg.sandwichNorms) names.push_back(block(l) + "ln1_post.hook_scale");
  }
  return names;
}

FrozenTranspose::FrozenTranspose(std::shared_ptr<const ReplacementModel> replacement, const std::map<std::string, at::Tensor>& cache)
    : replacement_(std::move(replacement)) {
  const ModelConfig& cfg = replacement_->model().config();
  L_ = cfg.nLayers;
  auto get = [&](const std::string& name) { return cache.at(name)[0]; };
  finalScale_ = get("ln_final.hook_scale").to(c10::kFloat);
  T_ = finalScale_.size(0);
  for (int64_t l = 0; l < L_; ++l) {
    ln1Scale_.push_back(get(block(l) + "ln1.hook_scale").to(c10::kFloat));
    ln2Scale_.push_back(get(block(l) + "ln2.hook_scale").to(c10::kFloat));
    pattern_.push_back(get(block(l) + "attn.hook_pattern"));  // [H, T, T], the model dtype
    if (cfg.sandwichNorms) ln1PostScale_.push_back(get(block(l) + "ln1_post.hook_scale").to(c10::kFloat));
  }
}

at::Tensor FrozenTranspose::normTranspose(const at::Tensor& g, const at::Tensor& w, const at::Tensor& scale, bool gain) const {
  const ModelConfig& cfg = replacement_->model().config();
  const int64_t P = g.size(1);
  at::Tensor gw = g;
  if (gain && w.defined()) gw = g * normGain(cfg, w).to(c10::kFloat);
  if (cfg.norm == Norm::LayerNorm) gw = gw - gw.mean(-1, /*keepdim=*/true);
  return gw / scale.narrow(0, 0, P);
}

at::Tensor FrozenTranspose::attentionTranspose(int64_t layer, const at::Tensor& g) const {
  const ModelConfig& cfg = replacement_->model().config();
  const LayerWeights& Lw = replacement_->model().weights().layers[layer];
  const int64_t m = g.size(0), P = g.size(1), d = cfg.dModel, H = cfg.nHeads, K = cfg.kvHeads(), dh = cfg.dHead;
  at::Tensor gOut = g;
  if (cfg.sandwichNorms) gOut = normTranspose(g, Lw.ln1PostW, ln1PostScale_[layer], /*gain=*/true);
  // Heads as the batch of one GEMM each over every row: [H, P, m dh] (the pattern is not expanded per row).
  at::Tensor gz = timesTransposed(gOut.reshape({m * P, d}), Lw.W_O.view({H * dh, d}));  // [m P, H dh]
  gz = gz.view({m, P, H, dh}).permute({2, 1, 0, 3}).reshape({H, P, m * dh});
  at::Tensor Pt = pattern_[layer].narrow(1, 0, P).narrow(2, 0, P).transpose(1, 2).to(c10::kFloat);  // [H, keys, queries]
  at::Tensor gv = at::bmm(Pt, gz).view({H, P, m, dh});
  if (K != H) gv = gv.view({K, H / K, P, m, dh}).sum(1);  // query heads share a value head
  at::Tensor W_V = Lw.W_QKV.narrow(1, (H + K) * dh, K * dh);  // [d, K dh]
  at::Tensor gx = timesTransposed(gv.permute({2, 1, 0, 3}).reshape({m * P, K * dh}), W_V).view({m, P, d});
  return normTranspose(gx, Lw.ln1W, ln1Scale_[layer], /*gain=*/true);
}

void FrozenTranspose::inject(at::Tensor& g, const Injection& j) const {
  at::Tensor u = j.vector.to(g.options()).view({1, 1, -1});
  if (j.layer == L_) {  // the final norm's output
    const Weights& w = replacement_->model().weights();
    g[j.row][j.position].add_(normTranspose(u, w.lnFinalW, finalScale_.narrow(0, j.position, 1), /*gain=*/true).view({-1}));
    return;
  }
  const Placement& p = replacement_->placement(j.layer);
  if (p.input == MlpReplacement::Input::Residual) {
    g[j.row][j.position].add_(u.view({-1}));
    return;
  }
  // ln2.hook_normalized (LayerNorm: after the gain, as TransformerLens; RMSNorm: only where the gain
  // is folded) or mlp.hook_in: through the frozen ln2.
  const LayerWeights& Lw = replacement_->model().weights().layers[j.layer];
  const bool gain = p.hookIn != block(j.layer) + "ln2.hook_normalized" || replacement_->model().config().norm == Norm::LayerNorm;
  g[j.row][j.position].add_(normTranspose(u, Lw.ln2W, ln2Scale_[j.layer].narrow(0, j.position, 1), gain).view({-1}));
}

at::Tensor FrozenTranspose::backward(int64_t rows, int64_t prefix, const std::vector<Injection>& injections, const LayerVisitor& visit) const {
  const Transformer& model = replacement_->model();
  const ModelConfig& cfg = model.config();
  if (prefix < 1 || prefix > T_) throw InvalidArgument("backward prefix " + std::to_string(prefix) + " is outside [1, " + std::to_string(T_) + "]");
  int64_t top = -1;
  for (const Injection& j : injections) {
    if (j.row < 0 || j.row >= rows || j.position < 0 || j.position >= prefix || j.layer < 0 || j.layer > L_)
      throw InvalidArgument("injection (row " + std::to_string(j.row) + ", layer " + std::to_string(j.layer) + ", position " +
                            std::to_string(j.position) + ") is outside the batch");
    top = std::max(top, j.layer);
  }
  at::NoGradGuard noGrad;
  at::Tensor g = at::zeros({rows, prefix, cfg.dModel}, model.weights().W_E.options().dtype(c10::kFloat));
  auto injectsAt = [&](int64_t layer) {
    return std::any_of(injections.begin(), injections.end(), [&](const Injection& j) { return j.layer == layer; });
  };
  auto injectAt = [&](int64_t layer) {
    for (const Injection& j : injections)
      if (j.layer == layer) inject(g, j);
  };
  injectAt(L_);
  for (int64_t l = std::min(top, L_ - 1); l >= 0; --l) {
    // g: the gradient at resid_post of layer l, which is also the gradient at its MLP output
    // (nothing above the highest injection reads it).
    at::Tensor gMlp = top > l ? g : at::Tensor();
    at::Tensor skipIn;  // what the transcoder's skip passes down from the MLP output to its input
    if (at::Tensor W_skip = replacement_->skipWeight(l); gMlp.defined() && replacement_->has(l) && W_skip.defined()) {
      skipIn = timesTransposed(gMlp, W_skip);
      if (replacement_->placement(l).input == MlpReplacement::Input::MlpIn)
        skipIn = normTranspose(skipIn, model.weights().layers[l].ln2W, ln2Scale_[l], /*gain=*/true);
    }
    if (cfg.parallelResidual) {
      // resid_post = resid_pre + attn(resid_pre) + mlp(resid_pre): this layer's targets read
      // resid_pre beside the block, not through its attention.
      if (gMlp.defined()) g = g + attentionTranspose(l, gMlp);
      if (skipIn.defined()) g = g + skipIn;
      if (g.is_same(gMlp) && injectsAt(l)) g = g.clone();
      injectAt(l);
      visit(l, gMlp, gMlp);
    } else {
      // resid_post = resid_mid + mlp(resid_mid), resid_mid = resid_pre + attn(resid_pre).
      if (skipIn.defined()) g = g + skipIn;
      if (g.is_same(gMlp) && injectsAt(l)) g = g.clone();
      injectAt(l);
      at::Tensor gAttn = g;
      g = g + attentionTranspose(l, gAttn);
      visit(l, gAttn, gMlp);
    }
  }
  return g;
}

}  // namespace tc
