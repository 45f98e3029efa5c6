#include "transcoder/cross_layer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "core/errors.h"
#include "transcoder/topk.h"

namespace tc {

std::vector<std::pair<std::string, at::Tensor*>> CrossLayerParams::named() {
  std::vector<std::pair<std::string, at::Tensor*>> out = {{"W_enc", &W_enc}, {"b_enc", &b_enc}};
  for (size_t s = 0; s < W_dec.size(); ++s) out.emplace_back("W_dec_" + std::to_string(s), &W_dec[s]);
  out.emplace_back("b_dec", &b_dec);
  if (W_skip.defined()) out.emplace_back("W_skip", &W_skip);
  if (threshold.defined()) out.emplace_back("threshold", &threshold);
  return out;
}

std::vector<std::pair<std::string, const at::Tensor*>> CrossLayerParams::named() const {
  std::vector<std::pair<std::string, const at::Tensor*>> out;
  for (auto& [name, t] : const_cast<CrossLayerParams*>(this)->named()) out.emplace_back(name, t);
  return out;
}

namespace {

void expectShape(const at::Tensor& t, const std::string& name, std::vector<int64_t> shape) {
  if (!t.defined()) throw InvalidArgument("cross-layer transcoder parameter '" + name + "' is missing");
  if (t.sizes() != at::IntArrayRef(shape))
    throw InvalidArgument("cross-layer transcoder parameter '" + name + "' has shape " + c10::str(t.sizes()) + ", expected " +
                          c10::str(at::IntArrayRef(shape)));
}

}  // namespace

CrossLayerTranscoder::CrossLayerTranscoder(CrossLayerSpec spec, CrossLayerParams params) : spec_(std::move(spec)), params_(std::move(params)) {
  const int64_t L = spec_.nLayers, F = spec_.dSae, dIn = spec_.dIn, dOut = spec_.dOut;
  if (L <= 0 || dIn <= 0 || dOut <= 0 || F <= 0) throw InvalidArgument("cross-layer transcoder sizes (nLayers, dIn, dOut, dSae) must be positive");
  const bool topk = spec_.arch == TranscoderArch::TopK || spec_.arch == TranscoderArch::BatchTopK;
  if (topk && (spec_.k <= 0 || spec_.k > F))
    throw InvalidArgument("topk cross-layer transcoder: k must be in [1, d_sae], got " + std::to_string(spec_.k));
  const bool thresholds = spec_.arch == TranscoderArch::JumpReLU || spec_.arch == TranscoderArch::BatchTopK;
  if (spec_.arch == TranscoderArch::JumpReLU && !(spec_.bandwidth > 0))
    throw InvalidArgument("jumprelu cross-layer transcoder: bandwidth must be positive");
  for (auto* hooks : {&spec_.hookIn, &spec_.hookOut})
    if (!hooks->empty() && static_cast<int64_t>(hooks->size()) != L)
      throw InvalidArgument("a cross-layer transcoder of " + std::to_string(L) + " layers needs one hook per layer, got " +
                            std::to_string(hooks->size()));
  expectShape(params_.W_enc, "W_enc", {L, dIn, F});
  expectShape(params_.b_enc, "b_enc", {L, F});
  if (static_cast<int64_t>(params_.W_dec.size()) != L)
    throw InvalidArgument("a cross-layer transcoder of " + std::to_string(L) + " layers needs " + std::to_string(L) +
                          " decoders W_dec_0..W_dec_" + std::to_string(L - 1) + ", got " + std::to_string(params_.W_dec.size()));
  for (int64_t s = 0; s < L; ++s) expectShape(params_.W_dec[s], "W_dec_" + std::to_string(s), {F, L - s, dOut});
  expectShape(params_.b_dec, "b_dec", {L, dOut});
  if (spec_.skip) expectShape(params_.W_skip, "W_skip", {L, dIn, dOut});
  else if (params_.W_skip.defined()) throw InvalidArgument("W_skip given but the cross-layer transcoder has no skip connection");
  if (thresholds) expectShape(params_.threshold, "threshold", {L, F});
  else if (params_.threshold.defined()) throw InvalidArgument("threshold given but the cross-layer transcoder is neither jumprelu nor batchtopk");
  for (const auto& [name, t] : params_.named())
    if (t->device() != params_.W_enc.device() || t->scalar_type() != params_.W_enc.scalar_type())
      throw InvalidArgument("cross-layer transcoder parameter '" + name + "' is " + std::string(c10::toString(t->scalar_type())) + " on " +
                            t->device().str() + ", W_enc " + c10::toString(params_.W_enc.scalar_type()) + " on " + params_.W_enc.device().str());
}

CrossLayerParams CrossLayerTranscoder::initialParams(const CrossLayerSpec& spec, uint64_t seed, const at::TensorOptions& options,
                                                     double initThreshold) {
  at::NoGradGuard noGrad;
  // Generated on the CPU with a seeded generator, then moved: the same seed gives the same weights
  // on every device.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto f32 = at::TensorOptions().dtype(c10::kFloat);
  const int64_t L = spec.nLayers, F = spec.dSae;
  CrossLayerParams p;
  const double encBound = 1.0 / std::sqrt(static_cast<double>(F));
  const double decBound = 1.0 / std::sqrt(static_cast<double>(L * spec.dOut));
  p.W_enc = at::empty({L, spec.dIn, F}, f32).uniform_(-encBound, encBound, gen);
  for (int64_t s = 0; s < L; ++s) p.W_dec.push_back(at::empty({F, L - s, spec.dOut}, f32).uniform_(-decBound, decBound, gen));
  p.b_enc = at::zeros({L, F}, f32);
  p.b_dec = at::zeros({L, spec.dOut}, f32);
  if (spec.skip) p.W_skip = at::zeros({L, spec.dIn, spec.dOut}, f32);
  if (spec.arch == TranscoderArch::JumpReLU) p.threshold = at::full({L, F}, initThreshold, f32);
  if (spec.arch == TranscoderArch::BatchTopK) p.threshold = at::zeros({L, F}, f32);  // until training estimates it
  for (auto& [name, t] : p.named()) *t = t->to(options);
  return p;
}

void CrossLayerTranscoder::checkLayer(int64_t s) const {
  if (s < 0 || s >= spec_.nLayers)
    throw InvalidArgument("layer " + std::to_string(s) + " is outside the cross-layer transcoder's layers 0.." + std::to_string(spec_.nLayers - 1));
}

void CrossLayerTranscoder::checkInputs(const at::Tensor& x, int64_t width, const char* what) const {
  if (x.dim() != 3 || x.size(1) != spec_.nLayers || x.size(2) != width)
    throw InvalidArgument(std::string("cross-layer transcoder ") + what + " must be [N, " + std::to_string(spec_.nLayers) + ", " +
                          std::to_string(width) + "], got " + c10::str(x.sizes()));
}

at::Tensor CrossLayerTranscoder::preActivations(int64_t s, const at::Tensor& x) const {
  checkLayer(s);
  if (x.size(-1) != spec_.dIn)
    throw InvalidArgument("layer " + std::to_string(s) + "'s cross-layer transcoder input has " + std::to_string(x.size(-1)) +
                          " features, expected d_in = " + std::to_string(spec_.dIn));
  return at::addmm(params_.b_enc[s], x.reshape({-1, spec_.dIn}), params_.W_enc[s]);
}

at::Tensor CrossLayerTranscoder::preActivations(const at::Tensor& x) const {
  checkInputs(x, spec_.dIn, "inputs");
  // One batched GEMM over the layers: [L, N, d_in] x [L, d_in, F].
  return at::baddbmm(params_.b_enc.unsqueeze(1), x.transpose(0, 1), params_.W_enc).transpose(0, 1);
}

namespace {

// relu | topk | jumprelu of pre [..., F] with thresholds broadcastable to it.
at::Tensor activation(const CrossLayerSpec& spec, const at::Tensor& pre, const at::Tensor& theta) {
  switch (spec.arch) {
    case TranscoderArch::ReLU: return at::relu(pre);
    case TranscoderArch::TopK: {
      at::Tensor idx = topkIndices(pre.detach(), spec.k);  // the values by gather: differentiable
      return at::zeros_like(pre).scatter(-1, idx, at::relu(pre.gather(-1, idx)));
    }
    case TranscoderArch::BatchTopK:
      // Outside training: the threshold that training estimated in place of the batch's selection.
      return at::relu(pre) * (pre > theta.detach()).to(pre.scalar_type());
    case TranscoderArch::JumpReLU: {
      // f = pre * H(pre - threshold); df/dthreshold = -(threshold / bandwidth) K((pre - threshold) / bandwidth)
      // with the rectangle kernel K, injected by a term whose value is zero and whose gradient is that.
      at::Tensor out = pre * (pre > theta).to(pre.scalar_type()).detach();
      if (theta.requires_grad()) {
        const double eps = spec.bandwidth;
        at::Tensor kernel = ((pre.detach() - theta.detach()).abs() < eps / 2).to(pre.scalar_type());
        at::Tensor surrogate = -(theta.detach() / eps) * kernel * theta;
        out = out + (surrogate - surrogate.detach());
      }
      return out;
    }
  }
  return pre;
}

}  // namespace

at::Tensor CrossLayerTranscoder::activate(int64_t s, const at::Tensor& pre) const {
  checkLayer(s);
  return activation(spec_, pre, params_.threshold.defined() ? params_.threshold[s] : at::Tensor());
}

at::Tensor CrossLayerTranscoder::activate(const at::Tensor& pre) const { return activation(spec_, pre, params_.threshold); }

at::Tensor CrossLayerTranscoder::decodeFrom(int64_t s, const at::Tensor& f) const {
  checkLayer(s);
  const int64_t targets = spec_.nLayers - s;
  // All of the layer's decoders in one GEMM: [N, F] x [F, (L - s) d_out].
  return at::mm(f.reshape({-1, spec_.dSae}), params_.W_dec[s].reshape({spec_.dSae, targets * spec_.dOut})).view({-1, targets, spec_.dOut});
}

at::Tensor CrossLayerTranscoder::decodeFromTopK(int64_t s, const at::Tensor& indices, const at::Tensor& values) const {
  checkLayer(s);
  const int64_t rows = indices.size(0), k = indices.size(1), width = (spec_.nLayers - s) * spec_.dOut;
  at::Tensor table = params_.W_dec[s].reshape({spec_.dSae, width});
  if (table.device().is_cpu() && table.scalar_type() == c10::kBFloat16) {
    // libtorch's CPU embedding_bag has no bfloat16 kernel: gather the rows and sum them.
    at::Tensor rowsOf = table.index_select(0, indices.reshape({-1})).view({rows, k, width});
    return (rowsOf * values.reshape({rows, k, 1})).sum(1).view({rows, -1, spec_.dOut});
  }
  // embedding_bag with per-sample weights gathers the k decoder rows of each row and sums them.
  at::Tensor offsets = at::arange(0, rows * k, k, indices.options().dtype(c10::kLong));
  at::Tensor y = std::get<0>(at::embedding_bag(table, indices.reshape({-1}), offsets, /*scale_grad_by_freq=*/false,
                                               /*mode=sum*/ 0, /*sparse=*/false, values.reshape({-1})));
  return y.view({rows, -1, spec_.dOut});
}

at::Tensor CrossLayerTranscoder::addBiasAndSkip(int64_t t, const at::Tensor& out, const at::Tensor& x) const {
  checkLayer(t);
  at::Tensor y = out + params_.b_dec[t];
  if (params_.W_skip.defined()) {
    if (!x.defined()) throw InvalidArgument("decoding a skip cross-layer transcoder needs its inputs x");
    y = at::addmm(y, x.reshape({-1, spec_.dIn}), params_.W_skip[t]);
  }
  return y;
}

namespace {

// y [N, L, d_out] + b_dec (+ the skip paths of x [N, L, d_in]).
at::Tensor withBiasAndSkip(const CrossLayerParams& p, at::Tensor y, const at::Tensor& x) {
  y = y + p.b_dec;
  if (p.W_skip.defined()) y = y + at::bmm(x.transpose(0, 1), p.W_skip).transpose(0, 1);
  return y;
}

}  // namespace

at::Tensor CrossLayerTranscoder::decode(const at::Tensor& f, const at::Tensor& x) const {
  checkInputs(f, spec_.dSae, "activations");
  if (spec_.skip) {
    if (!x.defined()) throw InvalidArgument("decoding a skip cross-layer transcoder needs its inputs x");
    checkInputs(x, spec_.dIn, "inputs");
  }
  const int64_t N = f.size(0), L = spec_.nLayers;
  at::Tensor y = at::zeros({N, L, spec_.dOut}, f.options().dtype(params_.b_dec.scalar_type()));
  for (int64_t s = 0; s < L; ++s) y.narrow(1, s, L - s).add_(decodeFrom(s, f.select(1, s)));
  return withBiasAndSkip(params_, y, x);
}

at::Tensor CrossLayerTranscoder::forward(const at::Tensor& x) const {
  at::Tensor pre = preActivations(x);
  if (spec_.arch != TranscoderArch::TopK) return decode(activate(pre), x);
  const int64_t N = x.size(0), L = spec_.nLayers;
  at::Tensor y = at::zeros({N, L, spec_.dOut}, pre.options());
  for (int64_t s = 0; s < L; ++s) {
    at::Tensor layerPre = pre.select(1, s);
    at::Tensor idx = topkIndices(layerPre, spec_.k);
    y.narrow(1, s, L - s).add_(decodeFromTopK(s, idx, at::relu(layerPre.gather(-1, idx))));
  }
  return withBiasAndSkip(params_, y, x);
}

at::Tensor CrossLayerTranscoder::decoderNorms() const {
  std::vector<at::Tensor> norms;
  for (const at::Tensor& w : params_.W_dec) norms.push_back(w.pow(2).sum(at::IntArrayRef{1, 2}).sqrt());
  return at::stack(norms);
}

}  // namespace tc
