#include "transcoder/cross_layer_losses.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

#include "core/errors.h"
#include "transcoder/topk.h"

namespace tc {

CrossLayerSparsity crossLayerSparsityFromName(const std::string& name) {
  if (name == "none") return CrossLayerSparsity::None;
  if (name == "l1") return CrossLayerSparsity::L1;
  if (name == "tanh") return CrossLayerSparsity::Tanh;
  if (name == "l0") return CrossLayerSparsity::L0;
  throw InvalidArgument("unknown cross-layer sparsity penalty '" + name + "' (expected none, l1, tanh or l0)");
}

namespace {

// Per target layer: sum_n ||y - y_hat||^2 / sum_n ||y - mean_n y||^2, [L].
at::Tensor layerFvu(const at::Tensor& yHat, const at::Tensor& y) {
  return (yHat - y).pow(2).sum(at::IntArrayRef{0, 2}) / (y - y.mean(0, /*keepdim=*/true)).pow(2).sum(at::IntArrayRef{0, 2});
}

// H(pre - threshold) with d/dthreshold = -(1/eps) K((pre - threshold)/eps) and no gradient to pre.
at::Tensor jumpStep(const CrossLayerTranscoder& clt, const at::Tensor& pre) {
  const at::Tensor& theta = clt.params().threshold;
  const double eps = clt.spec().bandwidth;
  at::Tensor h = (pre > theta).to(pre.scalar_type()).detach();
  if (theta.requires_grad()) {
    at::Tensor kernel = ((pre.detach() - theta.detach()).abs() < eps / 2).to(pre.scalar_type());
    at::Tensor surrogate = -(1.0 / eps) * kernel * theta;
    h = h + (surrogate - surrogate.detach());
  }
  return h;
}

// AuxK: per source layer, the k_aux largest pre-activations among its dead features reconstruct
// the detached residual of every layer it writes to.
at::Tensor auxkTerm(const CrossLayerTranscoder& clt, const CrossLayerLossTerms& t, const at::Tensor& y, const CrossLayerLossOptions& o) {
  const CrossLayerSpec& spec = clt.spec();
  const int64_t L = spec.nLayers;
  const int64_t kAux = o.kAux > 0 ? o.kAux : std::max<int64_t>(1, spec.dIn / 2);
  at::Tensor deadPerLayer = o.dead.sum(1).cpu();
  at::Tensor e = (y - t.yHat).detach();
  at::Tensor eHat = at::zeros_like(e);
  bool any = false;
  for (int64_t s = 0; s < L; ++s) {
    const int64_t ka = std::min(kAux, deadPerLayer[s].item<int64_t>());
    if (ka == 0) continue;
    any = true;
    at::Tensor pre = t.pre.select(1, s);
    at::Tensor masked = pre.detach().masked_fill(o.dead[s].logical_not(), -std::numeric_limits<double>::infinity());
    at::Tensor idx = std::get<1>(at::topk(masked, ka, -1));
    eHat.narrow(1, s, L - s).add_(clt.decodeFromTopK(s, idx, at::relu(pre.gather(1, idx))));
  }
  if (!any) return at::zeros({}, y.options());
  return o.auxkAlpha * layerFvu(eHat, e).sum();
}

}  // namespace

CrossLayerLossTerms crossLayerLoss(const CrossLayerTranscoder& clt, const at::Tensor& x, const at::Tensor& y, const CrossLayerLossOptions& o) {
  const CrossLayerSpec& spec = clt.spec();
  if (x.dim() != 3 || y.dim() != 3 || x.size(0) != y.size(0) || x.size(1) != spec.nLayers || y.size(1) != spec.nLayers ||
      y.size(2) != spec.dOut)
    throw InvalidArgument("cross-layer transcoder loss: x must be [N, " + std::to_string(spec.nLayers) + ", d_in] and y [N, " +
                          std::to_string(spec.nLayers) + ", d_out] with the same N, got " + c10::str(x.sizes()) + " and " + c10::str(y.sizes()));
  if (o.dead.defined() && (o.dead.dim() != 2 || o.dead.size(0) != spec.nLayers || o.dead.size(1) != spec.dSae))
    throw InvalidArgument("the dead-feature mask must be [" + std::to_string(spec.nLayers) + ", " + std::to_string(spec.dSae) + "], got " +
                          c10::str(o.dead.sizes()));
  if (o.sparsity == CrossLayerSparsity::L0 && spec.arch != TranscoderArch::JumpReLU)
    throw InvalidArgument("the l0 sparsity penalty needs a jumprelu cross-layer transcoder (its threshold carries the gradient)");
  CrossLayerLossTerms t;
  t.pre = clt.preActivations(x);
  if (spec.arch == TranscoderArch::TopK) {
    // Sparse decode: each row's k features per layer through embedding_bag, so the decoders'
    // gradients (and the work) come from the active rows only, never an [N, F] x [F, (L - s) d] GEMM.
    const int64_t L = spec.nLayers;
    at::Tensor y = at::zeros({x.size(0), L, spec.dOut}, t.pre.options());
    std::vector<at::Tensor> indices, values;
    for (int64_t s = 0; s < L; ++s) {
      at::Tensor pre = t.pre.select(1, s);
      at::Tensor idx = topkIndices(pre.detach(), spec.k);
      at::Tensor val = at::relu(pre.gather(1, idx));
      y.narrow(1, s, L - s).add_(clt.decodeFromTopK(s, idx, val));
      indices.push_back(idx);
      values.push_back(val);
    }
    t.f = at::zeros_like(t.pre).scatter(-1, at::stack(indices, 1), at::stack(values, 1));
    t.yHat = y + clt.params().b_dec;
    if (clt.params().W_skip.defined()) t.yHat = t.yHat + at::bmm(x.transpose(0, 1), clt.params().W_skip).transpose(0, 1);
  } else if (spec.arch == TranscoderArch::BatchTopK) {
    const int64_t N = x.size(0), L = spec.nLayers;
    std::vector<at::Tensor> layers, minimum;
    for (int64_t s = 0; s < L; ++s) {
      at::Tensor act = at::relu(t.pre.select(1, s));  // [N, F]
      auto [top, idx] = at::topk(act.detach().reshape({-1}), std::min<int64_t>(N * spec.k, act.numel()));
      at::Tensor keep = at::zeros({act.numel()}, act.options()).index_fill_(0, idx, 1).view_as(act);
      layers.push_back(act * keep);
      at::Tensor positive = top.masked_select(top > 0);
      minimum.push_back(positive.numel() > 0 ? positive.min() : at::zeros({}, top.options()));
    }
    t.f = at::stack(layers, 1);
    t.batchMinimum = at::stack(minimum).detach();
    t.yHat = clt.decode(t.f, x);
  } else {
    t.f = clt.activate(t.pre);
    t.yHat = clt.decode(t.f, x);
  }
  t.omega = clt.decoderNorms();
  at::Tensor fvu = layerFvu(t.yHat, y);
  t.layerFvu = fvu.detach();
  t.reconstruction = o.reconstruction == Reconstruction::Fvu ? fvu.sum()
                                                             : ((t.yHat - y).pow(2) / y.norm(2, {-1}, /*keepdim=*/true)).mean(at::IntArrayRef{0, 2}).sum();
  at::Tensor zero = at::zeros({}, y.options());
  switch (o.sparsity) {
    case CrossLayerSparsity::None: t.sparsity = zero; break;
    case CrossLayerSparsity::L1: t.sparsity = o.sparsityCoefficient * (t.f * t.omega).sum(at::IntArrayRef{1, 2}).mean(); break;
    case CrossLayerSparsity::Tanh: t.sparsity = o.sparsityCoefficient * at::tanh(o.tanhScale * t.f * t.omega).sum(at::IntArrayRef{1, 2}).mean(); break;
    case CrossLayerSparsity::L0: t.sparsity = o.sparsityCoefficient * jumpStep(clt, t.pre).sum(at::IntArrayRef{1, 2}).mean(); break;
  }
  if (o.preactCoefficient != 0) {
    at::Tensor below = spec.arch == TranscoderArch::JumpReLU ? clt.params().threshold - t.pre : -t.pre;
    t.preact = o.preactCoefficient * at::relu(below).sum(at::IntArrayRef{1, 2}).mean();
  } else {
    t.preact = zero;
  }
  const bool topk = spec.arch == TranscoderArch::TopK || spec.arch == TranscoderArch::BatchTopK;
  const bool auxk = topk && o.auxkAlpha > 0 && o.dead.defined() && o.dead.any().item<bool>();
  t.auxk = auxk ? auxkTerm(clt, t, y, o) : zero;
  t.total = t.reconstruction + t.sparsity + t.preact + t.auxk;
  return t;
}

}  // namespace tc
