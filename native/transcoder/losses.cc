#include "transcoder/losses.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

#include "core/errors.h"
#include "transcoder/topk.h"

namespace tc {

at::Tensor totalVariance(const at::Tensor& y, const BatchReduction* r) {
  if (!r) return (y - y.mean(0, /*keepdim=*/true)).pow(2).sum();
  // One all-reduce of the sums of y and of ||y||^2, in float64 (where sum ||y||^2 - ||sum y||^2 / N
  // loses nothing that matters, unlike in float32).
  const int64_t d = y.size(-1);
  at::Tensor yd = y.detach().to(c10::kDouble);
  at::Tensor sums = r->sum(at::cat({yd.sum(0), yd.pow(2).sum().reshape({1})}));
  at::Tensor mean = sums.narrow(0, 0, d).div(static_cast<double>(r->globalRows));
  return (sums[d] - mean.pow(2).sum() * static_cast<double>(r->globalRows)).to(y.scalar_type());
}

at::Tensor FeatureShards::selectAcross(const at::Tensor& values, int64_t k) const {
  const int64_t N = values.size(0), c = values.size(1);
  // Every rank's candidates side by side (an all-gather as a max over -inf padding), then the k best.
  at::Tensor all = at::full({ranks, N, c}, -std::numeric_limits<float>::infinity(), values.options().dtype(c10::kFloat));
  all[rank].copy_(values);
  all = max(all).permute({1, 0, 2}).reshape({N, ranks * c});
  at::Tensor chosen = topkIndices(all, std::min(k, ranks * c));
  at::Tensor local = chosen - rank * c;
  at::Tensor mine = (local >= 0).logical_and_(local < c);
  // Scatter into one spare column what is not this rank's.
  at::Tensor keep = at::zeros({N, c + 1}, values.options().dtype(c10::kBool));
  keep.scatter_(1, at::where(mine, local, at::full_like(local, c)), true);
  return keep.narrow(1, 0, c).contiguous();
}

double rowShare(int64_t rows, const BatchReduction* r) {
  return r ? static_cast<double>(rows) / static_cast<double>(r->globalRows) : 1.0;
}

at::Tensor fractionOfVarianceUnexplained(const at::Tensor& yHat, const at::Tensor& y, const BatchReduction* r) {
  return (yHat - y).pow(2).sum() / totalVariance(y, r);
}

namespace {

// Per-element normalised squared error of the paper: (y_hat - y)^2 / ||y||.
at::Tensor paperSquaredError(const at::Tensor& yHat, const at::Tensor& y) {
  return (yHat - y).pow(2) / y.norm(2, {-1}, /*keepdim=*/true);
}

// The paper's ghost-gradient term: dead features, through exp(pre), are trained to explain the
// residual; the term is rescaled to the size of the MSE and only its gradient matters.
at::Tensor ghostTerm(const Transcoder& tc, const LossTerms& t, const at::Tensor& x, const at::Tensor& y,
                     const LossOptions& o) {
  at::Tensor source = o.ghostResidualFromInput ? x : y;
  if (source.size(-1) != y.size(-1)) throw InvalidArgument("ghost residual from the input needs d_in == d_out");
  at::Tensor residual = source - t.yHat;
  at::Tensor deadIdx = o.dead.nonzero().squeeze(1);
  at::Tensor g = at::mm(t.pre.index_select(1, deadIdx).exp(), tc.params().W_dec.index_select(0, deadIdx));
  at::Tensor scale = (residual.norm(2, {-1}, true) / (1e-6 + 2 * g.norm(2, {-1}, true))).detach();
  g = g * scale;
  at::Tensor r = residual.detach();
  at::Tensor ghostEl = (g - r).pow(2) / r.norm(2, {-1}, true);
  at::Tensor mseEl = paperSquaredError(t.yHat, y);
  ghostEl = (mseEl / (ghostEl + 1e-6)).detach() * ghostEl;
  return ghostEl.mean() * rowShare(x.size(0), o.reduction);
}

// AuxK (Gao et al.): the top-k_aux dead features reconstruct the detached residual.
at::Tensor auxkTerm(const Transcoder& tc, const LossTerms& t, const at::Tensor& y, const LossOptions& o) {
  const int64_t nDead = o.dead.sum().item<int64_t>();
  const int64_t kAux = o.kAux > 0 ? o.kAux : std::max<int64_t>(1, tc.spec().dIn / 2);
  const int64_t ka = std::min(kAux, nDead);
  at::Tensor e = (y - t.yHat).detach();
  at::Tensor masked = t.pre.masked_fill(o.dead.logical_not(), -std::numeric_limits<double>::infinity());
  at::Tensor idx = std::get<1>(at::topk(masked, ka, -1));
  at::Tensor vals = at::relu(t.pre.gather(1, idx));
  at::Tensor offsets = at::arange(0, idx.size(0) * ka, ka, idx.options());
  at::Tensor eHat = std::get<0>(at::embedding_bag(tc.params().W_dec, idx.reshape({-1}), offsets, false, 0, false, vals.reshape({-1})));
  double weight = o.auxkAlpha * std::min(1.0, static_cast<double>(nDead) / static_cast<double>(kAux));
  return weight * fractionOfVarianceUnexplained(eHat, e, o.reduction);
}

// JumpReLU's L0: H(pre - threshold) counted per row, with d/dthreshold = -(1/eps) K((pre - threshold)/eps).
at::Tensor jumpL0(const Transcoder& tc, const at::Tensor& pre) {
  const at::Tensor& theta = tc.params().threshold;
  double eps = tc.spec().bandwidth;
  at::Tensor h = (pre > theta).to(pre.scalar_type()).detach();
  if (theta.requires_grad()) {
    at::Tensor kernel = ((pre.detach() - theta.detach()).abs() < eps / 2).to(pre.scalar_type());
    at::Tensor surrogate = -(1.0 / eps) * kernel * theta;
    h = h + (surrogate - surrogate.detach());
  }
  return h.sum(-1).mean();
}

}  // namespace

LossTerms transcoderLoss(const Transcoder& tc, const at::Tensor& x, const at::Tensor& y, const LossOptions& o) {
  const TranscoderSpec& spec = tc.spec();
  if (x.dim() != 2 || y.dim() != 2 || x.size(0) != y.size(0) || y.size(1) != spec.dOut)
    throw InvalidArgument("transcoder loss: x must be [N, d_in] and y [N, d_out] with the same N, got " +
                          c10::str(x.sizes()) + " and " + c10::str(y.sizes()));
  LossTerms t;
  t.pre = tc.preActivations(x);
  if (spec.arch == TranscoderArch::TopK) {
    // Sparse decode: gradients reach W_dec only through the k gathered rows of each token.
    at::Tensor idx = topkIndices(t.pre.detach(), spec.k);
    at::Tensor values = at::relu(t.pre.gather(-1, idx));
    t.yHat = tc.decodeTopK(idx, values, x);
    t.f = at::zeros_like(t.pre).scatter(-1, idx, values);
  } else {
    t.f = tc.activate(t.pre);
    t.yHat = tc.decode(t.f, x);
  }
  const double share = rowShare(x.size(0), o.reduction);
  t.reconstruction = o.reconstruction == Reconstruction::Paper ? paperSquaredError(t.yHat, y).mean() * share
                                                               : fractionOfVarianceUnexplained(t.yHat, y, o.reduction);
  bool anyDead = o.dead.defined() && o.dead.any().item<bool>();
  switch (spec.arch) {
    case TranscoderArch::ReLU: t.sparsity = o.l1Coefficient * share * t.f.abs().sum(-1).mean(); break;
    case TranscoderArch::JumpReLU: t.sparsity = o.l0Coefficient * share * jumpL0(tc, t.pre); break;
    case TranscoderArch::BatchTopK: break;  // refused by the Transcoder constructor
    case TranscoderArch::TopK:
      t.sparsity = o.auxkAlpha > 0 && anyDead ? auxkTerm(tc, t, y, o) : at::zeros({}, y.options());
      break;
  }
  t.ghost = spec.arch == TranscoderArch::ReLU && o.ghostGrads && anyDead ? ghostTerm(tc, t, x, y, o)
                                                                         : at::zeros({}, y.options());
  t.total = t.reconstruction + t.sparsity + t.ghost;
  return t;
}

}  // namespace tc
