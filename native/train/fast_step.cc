#include "train/fast_step.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <limits>

#include "train/sparse_products.h"
#include "transcoder/topk.h"

namespace tc {

namespace {

// `t` in the compute dtype (itself when it already is).
at::Tensor in(const at::Tensor& t, c10::ScalarType compute) { return t.scalar_type() == compute ? t : t.to(compute); }

// `slot` when it has this shape and dtype, otherwise a new tensor stored there.
at::Tensor& reuse(at::Tensor& slot, at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (!slot.defined() || slot.sizes() != sizes || slot.scalar_type() != c10::typeMetaToScalarType(options.dtype()) ||
      slot.device() != options.device())
    slot = at::empty(sizes, options);
  return slot;
}

// The gradient tensor of `param` to write into: last step's when it still fits.
at::Tensor& gradOf(at::Tensor& param) { return reuse(param.mutable_grad(), param.sizes(), param.options()); }

// out = a b with a and b in the compute dtype (out has the parameters' dtype).
void productInto(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, c10::ScalarType compute) {
  if (compute == out.scalar_type()) at::mm_out(out, a, b);
  else out.copy_(at::mm(in(a, compute), in(b, compute)));
}

// Pre-activations (x - b_dec) W_enc + b_enc [N, m] in the compute dtype, into `out`. In bf16 the
// bias rides in the GEMM as an extra input column of ones, so it is added at the GEMM's fp32
// accumulation and the result is rounded once (and never converted: TopK selects on it directly).
at::Tensor& preActivationsInto(at::Tensor& out, const TranscoderParams& p, const at::Tensor& xc, c10::ScalarType compute) {
  reuse(out, {xc.size(0), p.W_enc.size(1)}, xc.options().dtype(compute));
  if (compute == p.W_enc.scalar_type()) return at::addmm_out(out, p.b_enc, xc, p.W_enc);
  at::Tensor xOnes = at::cat({xc, at::ones({xc.size(0), 1}, xc.options())}, 1);
  at::Tensor wBias = at::cat({p.W_enc, p.b_enc.unsqueeze(0)}, 0);
  return at::mm_out(out, in(xOnes, compute), in(wBias, compute));
}

// The reconstruction loss and its gradient with respect to y_hat (with a reduction: this slice's
// share of the global batch's loss, see losses.h).
std::pair<at::Tensor, at::Tensor> reconstruction(const at::Tensor& yHat, const at::Tensor& y, Reconstruction kind, const BatchReduction* r) {
  at::Tensor diff = yHat - y;
  if (kind == Reconstruction::Paper) {
    // mean over elements of diff^2 / ||y_n||
    const double share = rowShare(y.size(0), r);
    at::Tensor rowNorm = y.norm(2, {-1}, /*keepdim=*/true);
    at::Tensor loss = (diff.pow(2) / rowNorm).mean() * share;
    return {loss, diff.mul(2.0 * share / static_cast<double>(diff.numel())).div_(rowNorm)};
  }
  at::Tensor variance = totalVariance(y, r);
  at::Tensor loss = diff.pow(2).sum() / variance;
  return {loss, diff.mul(2.0).div_(variance)};
}

// Decoder output of the active features `F` (summed over the ranks' features when sharded) plus the
// biases and the skip path.
at::Tensor decodeSparse(const TranscoderParams& p, const SparseEntries& F, const at::Tensor& x, bool portable, const FeatureShards* shards) {
  at::Tensor y = sparseTimesDense(F, p.W_dec, portable);
  if (shards) y = shards->sum(y);
  if (p.W_skip.defined()) y.addmm_(x, p.W_skip);
  return y.add_(p.b_dec_out);
}

// The gradients of W_enc, b_enc and b_dec from pre-activation gradients given on entries: each
// (F, dPre) pair adds its F^T-shaped terms, accumulated as [m, d_in] and transposed once.
void encoderGradients(TranscoderParams& p, const at::Tensor& xc, std::initializer_list<std::pair<const SparseEntries*, const at::Tensor*>> parts,
                      bool portable, FastStepBuffers& buffers, const FeatureShards* shards) {
  const int64_t m = p.W_enc.size(1), dIn = p.W_enc.size(0);
  at::Tensor& wEncT = reuse(buffers.wEncT, {m, dIn}, xc.options()).zero_();
  at::Tensor bEnc = at::zeros({m}, xc.options());
  for (const auto& [F, dPre] : parts) {
    addSparseTransposeTimesDense(wEncT, *F, *dPre, xc, portable);
    bEnc.index_add_(0, F->cols, *dPre);
  }
  gradOf(p.W_enc).copy_(wEncT.t());
  p.b_enc.mutable_grad() = bEnc;
  // pre = (x - b_dec) W_enc + b_enc, so dL/db_dec = -W_enc (sum_n dL/dpre_n): a sum over the
  // features, so over the ranks' when sharded.
  p.b_dec.mutable_grad() = at::mv(p.W_enc, bEnc).neg_();
  if (shards) p.b_dec.mutable_grad() = shards->sum(p.b_dec.grad());
}

}  // namespace

bool fastStepApplies(const TranscoderSpec& spec, const LossOptions& loss, bool anyDead) {
  if (spec.arch == TranscoderArch::TopK) return true;
  if (spec.arch == TranscoderArch::ReLU) return !(loss.ghostGrads && anyDead);
  return false;
}

FastStepResult fastStep(Transcoder& tc, const at::Tensor& x, const at::Tensor& y, const LossOptions& o, bool anyDead,
                        const FastStepOptions& options, FastStepBuffers& buffers) {
  at::NoGradGuard noGrad;
  const TranscoderSpec& spec = tc.spec();
  TranscoderParams& p = tc.params();
  const int64_t N = x.size(0), m = spec.dSae;
  // Parameters, gradients and the sparse products are in the parameters' dtype (float32 unless the
  // transcoder was made in another); the dense GEMMs in bf16 when asked.
  const c10::ScalarType master = p.W_enc.scalar_type();
  const c10::ScalarType compute = options.computeDtype == c10::kBFloat16 ? c10::kBFloat16 : master;
  const bool portable = options.portableProducts;
  // Means over rows are over the global batch's rows when this batch is a slice of it.
  const BatchReduction* red = o.reduction;
  const FeatureShards* shards = o.shards;
  const double rows = red ? static_cast<double>(red->globalRows) : static_cast<double>(N);
  const auto count = [&](int64_t n) { return at::scalar_tensor(static_cast<double>(n) / rows, x.options().dtype(c10::kDouble)); };
  FastStepResult r;

  at::Tensor xc = x - p.b_dec;
  at::Tensor& pre = preActivationsInto(buffers.pre, p, xc, compute);
  at::Tensor dYHat;

  if (spec.arch == TranscoderArch::ReLU) {
    at::Tensor& f = pre.clamp_min_(0);  // pre is not needed again: f > 0 exactly where pre > 0
    const double l1PerRow = o.l1Coefficient / rows;
    const int64_t active = at::count_nonzero(f).item<int64_t>();
    r.l0 = count(active);
    r.sparse = static_cast<double>(active) < options.sparseBelowDensity * static_cast<double>(N) * static_cast<double>(m);
    if (r.sparse) {
      SparseEntries F = positiveEntries(f, portable);
      F.values = F.values.to(master);
      r.yHat = decodeSparse(p, F, x, portable, shards);
      std::tie(r.reconstruction, dYHat) = reconstruction(r.yHat, y, o.reconstruction, red);
      r.sparsity = F.values.sum() * l1PerRow;
      // Every entry is active, so the ReLU passes its gradient; |f|' = 1 there.
      at::Tensor dPre = entryDots(F, dYHat, p.W_dec, portable).add_(l1PerRow);
      addSparseTransposeTimesDense(gradOf(p.W_dec).zero_(), F, F.values, dYHat, portable);
      encoderGradients(p, xc, {{&F, &dPre}}, portable, buffers, shards);
      r.fired = at::zeros({m}, x.options().dtype(c10::kBool)).index_fill_(0, F.cols, true);
    } else {
      // The five GEMMs; f and its gradient stay in the compute dtype, sums accumulate in float32.
      at::Tensor wDec = in(p.W_dec, compute);
      r.yHat = at::mm(f, wDec).to(master);
      if (shards) r.yHat = shards->sum(r.yHat);
      if (p.W_skip.defined()) r.yHat.addmm_(x, p.W_skip);
      r.yHat.add_(p.b_dec_out);
      std::tie(r.reconstruction, dYHat) = reconstruction(r.yHat, y, o.reconstruction, red);
      r.sparsity = at::sum(f, master) * l1PerRow;
      at::Tensor dY = in(dYHat, compute);
      productInto(gradOf(p.W_dec), f.t(), dY, compute);
      at::Tensor& dPre = reuse(buffers.dPre, f.sizes(), f.options());
      at::mm_out(dPre, dY, wDec.t()).add_(l1PerRow);
      at::threshold_backward_out(dPre, dPre, f, 0);  // the ReLU's gradient: zero where f = 0
      r.fired = at::amax(f, {0}) > 0;
      productInto(gradOf(p.W_enc), xc.t(), dPre, compute);
      // Column sums as a GEMV: it accumulates in float32 for bf16 too, and reads dPre once.
      at::Tensor bEnc = at::mm(at::ones({1, N}, dPre.options()), dPre).squeeze(0).to(master);
      p.b_enc.mutable_grad() = bEnc;
      p.b_dec.mutable_grad() = at::mv(p.W_enc, bEnc).neg_();
      if (shards) p.b_dec.mutable_grad() = shards->sum(p.b_dec.grad());
    }
  } else {
    at::Tensor topIdx = topkIndices(pre, spec.k);
    at::Tensor topValues = pre.gather(1, topIdx).to(master);
    at::Tensor topActive = at::relu(topValues);
    // Sharded: this rank's k best are candidates; those outside the row's k best over every rank's
    // features stay in the entries with value 0 (no output, no gradient), as unselected features.
    if (shards) topActive.masked_fill_(shards->selectAcross(topValues, spec.k).logical_not(), 0);
    SparseEntries F = fixedEntries(topIdx, topActive);
    r.yHat = decodeSparse(p, F, x, portable, shards);
    std::tie(r.reconstruction, dYHat) = reconstruction(r.yHat, y, o.reconstruction, red);
    at::Tensor dPre = entryDots(F, dYHat, p.W_dec, portable);
    at::threshold_backward_out(dPre, dPre, F.values, 0);
    at::Tensor& gradDec = gradOf(p.W_dec).zero_();
    addSparseTransposeTimesDense(gradDec, F, F.values, dYHat, portable);
    at::Tensor activeCols = F.cols.masked_select(F.values > 0);
    r.fired = at::zeros({m}, x.options().dtype(c10::kBool)).index_fill_(0, activeCols, true);
    r.l0 = count(activeCols.size(0));

    if (o.auxkAlpha > 0 && anyDead) {
      // AuxK: the top k_aux dead features (by pre-activation) reconstruct the detached residual,
      // normalised by its variance and weighted by alpha min(1, dead / k_aux).
      at::Tensor deadIdx = o.dead.to(x.device()).nonzero().squeeze(1);
      const int64_t localDead = deadIdx.size(0);
      // Sharded: the dead features of every rank count, and the k_aux are chosen across them.
      const int64_t nDead = shards ? static_cast<int64_t>(shards->sum(at::scalar_tensor(static_cast<double>(localDead), x.options().dtype(c10::kDouble))).item<double>()) : localDead;
      const int64_t kAux = o.kAux > 0 ? o.kAux : std::max<int64_t>(1, spec.dIn / 2);
      const int64_t ka = std::min(kAux, nDead);
      const int64_t kaLocal = std::min(ka, localDead);
      // The dead columns, gathered into the (otherwise unused) gradient buffer.
      at::Tensor deadPre = reuse(buffers.dPre, {N, m}, pre.options()).view({-1}).narrow(0, 0, N * localDead).view({N, localDead});
      at::index_select_out(deadPre, pre, 1, deadIdx);
      at::Tensor auxLocal = kaLocal > 0 ? topkIndices(deadPre, kaLocal) : at::zeros({N, 0}, x.options().dtype(c10::kLong));
      at::Tensor auxValues = deadPre.gather(1, auxLocal).to(master);
      at::Tensor auxActive = at::relu(auxValues);
      if (shards) {
        at::Tensor candidates = at::full({N, ka}, -std::numeric_limits<float>::infinity(), auxValues.options());
        candidates.narrow(1, 0, kaLocal).copy_(auxValues);
        auxActive.masked_fill_(shards->selectAcross(candidates, ka).narrow(1, 0, kaLocal).logical_not(), 0);
      }
      // The dead features' decoder rows, gathered: the products below run over this compact copy
      // (19 MB for 6144 dead of 768 wide, cache-resident) instead of rows scattered over W_dec.
      at::Tensor wDead = p.W_dec.index_select(0, deadIdx);
      SparseEntries A = kaLocal > 0 ? fixedEntries(auxLocal, auxActive) : SparseEntries{};
      at::Tensor e = y - r.yHat;
      at::Tensor eHat = kaLocal > 0 ? sparseTimesDense(A, wDead, portable) : at::zeros_like(e);
      if (shards) eHat = shards->sum(eHat);
      const double weight = o.auxkAlpha * std::min(1.0, static_cast<double>(nDead) / static_cast<double>(kAux));
      auto [auxLoss, dEHat] = reconstruction(eHat, e, Reconstruction::Fvu, red);
      r.sparsity = auxLoss * weight;
      dEHat.mul_(weight);
      if (kaLocal > 0) {
        at::Tensor dAux = entryDots(A, dEHat, wDead, portable);
        at::threshold_backward_out(dAux, dAux, A.values, 0);
        at::Tensor gradDead = at::zeros_like(wDead);
        addSparseTransposeTimesDense(gradDead, A, A.values, dEHat, portable);
        gradDec.index_add_(0, deadIdx, gradDead);
        A.cols = deadIdx.index_select(0, A.cols);  // global feature ids for the encoder's gradients
        encoderGradients(p, xc, {{&F, &dPre}, {&A, &dAux}}, portable, buffers, shards);
      } else {
        encoderGradients(p, xc, {{&F, &dPre}}, portable, buffers, shards);
      }
    } else {
      r.sparsity = at::zeros({}, y.options());
      encoderGradients(p, xc, {{&F, &dPre}}, portable, buffers, shards);
    }
  }
  r.total = r.reconstruction + r.sparsity;
  p.b_dec_out.mutable_grad() = dYHat.sum(0);
  if (p.W_skip.defined()) productInto(gradOf(p.W_skip), x.t(), dYHat, compute);
  return r;
}

}  // namespace tc
