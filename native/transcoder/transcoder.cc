#include "transcoder/transcoder.h"

#include "transcoder/topk.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "core/errors.h"
#include "transcoder/topk.h"

namespace tc {

TranscoderArch transcoderArchFromName(const std::string& name) {
  if (name == "relu") return TranscoderArch::ReLU;
  if (name == "topk") return TranscoderArch::TopK;
  if (name == "jumprelu") return TranscoderArch::JumpReLU;
  if (name == "batchtopk") return TranscoderArch::BatchTopK;
  throw InvalidArgument("unknown transcoder architecture '" + name + "' (expected relu, topk, jumprelu or batchtopk)");
}

std::vector<std::pair<std::string, at::Tensor*>> TranscoderParams::named() {
  std::vector<std::pair<std::string, at::Tensor*>> out = {
      {"W_enc", &W_enc}, {"b_enc", &b_enc}, {"W_dec", &W_dec}, {"b_dec", &b_dec}, {"b_dec_out", &b_dec_out}};
  if (W_skip.defined()) out.emplace_back("W_skip", &W_skip);
  if (threshold.defined()) out.emplace_back("threshold", &threshold);
  return out;
}

std::vector<std::pair<std::string, const at::Tensor*>> TranscoderParams::named() const {
  std::vector<std::pair<std::string, const at::Tensor*>> out;
  for (auto& [name, t] : const_cast<TranscoderParams*>(this)->named()) out.emplace_back(name, t);
  return out;
}

namespace {

void expectShape(const at::Tensor& t, const char* name, std::vector<int64_t> shape) {
  if (!t.defined()) throw InvalidArgument(std::string("transcoder parameter '") + name + "' is missing");
  if (t.sizes() != at::IntArrayRef(shape))
    throw InvalidArgument(std::string("transcoder parameter '") + name + "' has shape " + c10::str(t.sizes()) +
                          ", expected " + c10::str(at::IntArrayRef(shape)));
}

}  // namespace

Transcoder::Transcoder(TranscoderSpec spec, TranscoderParams params) : spec_(spec), params_(std::move(params)) {
  if (spec_.dIn <= 0 || spec_.dOut <= 0 || spec_.dSae <= 0) throw InvalidArgument("transcoder sizes must be positive");
  if (spec_.arch == TranscoderArch::BatchTopK)
    throw InvalidArgument("batchtopk is an activation of cross-layer transcoders; a per-layer transcoder is relu, topk or jumprelu");
  if (spec_.arch == TranscoderArch::TopK && (spec_.k <= 0 || spec_.k > spec_.dSae))
    throw InvalidArgument("topk transcoder: k must be in [1, d_sae], got " + std::to_string(spec_.k));
  if (spec_.arch == TranscoderArch::JumpReLU && !(spec_.bandwidth > 0))
    throw InvalidArgument("jumprelu transcoder: bandwidth must be positive");
  expectShape(params_.W_enc, "W_enc", {spec_.dIn, spec_.dSae});
  expectShape(params_.b_enc, "b_enc", {spec_.dSae});
  expectShape(params_.W_dec, "W_dec", {spec_.dSae, spec_.dOut});
  expectShape(params_.b_dec, "b_dec", {spec_.dIn});
  expectShape(params_.b_dec_out, "b_dec_out", {spec_.dOut});
  if (spec_.skip) expectShape(params_.W_skip, "W_skip", {spec_.dIn, spec_.dOut});
  else if (params_.W_skip.defined()) throw InvalidArgument("W_skip given but the transcoder has no skip connection");
  if (spec_.arch == TranscoderArch::JumpReLU) expectShape(params_.threshold, "threshold", {spec_.dSae});
  else if (params_.threshold.defined()) throw InvalidArgument("threshold given but the transcoder is not jumprelu");
}

TranscoderParams Transcoder::initialParams(const TranscoderSpec& spec, uint64_t seed, const at::TensorOptions& options,
                                           double initThreshold) {
  at::NoGradGuard noGrad;
  // Generated on the CPU with a seeded generator, then moved: the same seed gives the same
  // weights on every device.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto f32 = at::TensorOptions().dtype(c10::kFloat);
  // PyTorch's kaiming_uniform_ (a = 0, fan_in = size(1)): U(-sqrt(6 / fan_in), +sqrt(6 / fan_in)).
  auto kaiming = [&](int64_t rows, int64_t cols) {
    double bound = std::sqrt(6.0 / static_cast<double>(cols));
    return at::empty({rows, cols}, f32).uniform_(-bound, bound, gen);
  };
  TranscoderParams p;
  p.W_enc = kaiming(spec.dIn, spec.dSae);
  p.W_dec = kaiming(spec.dSae, spec.dOut);
  p.W_dec = p.W_dec / p.W_dec.norm(2, {1}, /*keepdim=*/true);
  p.b_enc = at::zeros({spec.dSae}, f32);
  p.b_dec = at::zeros({spec.dIn}, f32);
  p.b_dec_out = at::zeros({spec.dOut}, f32);
  if (spec.skip) p.W_skip = at::zeros({spec.dIn, spec.dOut}, f32);
  if (spec.arch == TranscoderArch::JumpReLU) p.threshold = at::full({spec.dSae}, initThreshold, f32);
  for (auto& [name, t] : p.named()) *t = t->to(options);
  return p;
}

at::Tensor Transcoder::preActivations(const at::Tensor& x) const {
  if (x.size(-1) != spec_.dIn)
    throw InvalidArgument("transcoder input has " + std::to_string(x.size(-1)) + " features, expected d_in = " +
                          std::to_string(spec_.dIn));
  at::Tensor flat = (x - params_.b_dec).reshape({-1, spec_.dIn});
  return at::addmm(params_.b_enc, flat, params_.W_enc);
}

at::Tensor Transcoder::activate(const at::Tensor& pre) const {
  switch (spec_.arch) {
    case TranscoderArch::ReLU: return at::relu(pre);
    case TranscoderArch::TopK: {
      at::Tensor idx = topkIndices(pre.detach(), spec_.k);  // the values by gather: differentiable
      return at::zeros_like(pre).scatter(-1, idx, at::relu(pre.gather(-1, idx)));
    }
    case TranscoderArch::BatchTopK: break;  // refused by the constructor
    case TranscoderArch::JumpReLU: {
      // f = pre * H(pre - threshold). Straight-through gradients: df/dpre = H, and
      // df/dthreshold = -(threshold / bandwidth) K((pre - threshold) / bandwidth) with the rectangle
      // kernel K. The second is injected by a term whose value is zero and whose gradient is that.
      const at::Tensor& theta = params_.threshold;
      at::Tensor gate = (pre > theta).to(pre.scalar_type()).detach();
      at::Tensor out = pre * gate;
      if (theta.requires_grad()) {
        double eps = spec_.bandwidth;
        at::Tensor kernel = ((pre.detach() - theta.detach()).abs() < eps / 2).to(pre.scalar_type());
        at::Tensor surrogate = -(theta.detach() / eps) * kernel * theta;
        out = out + (surrogate - surrogate.detach());
      }
      return out;
    }
  }
  return pre;
}

SparseActivations Transcoder::encodeSparse(const at::Tensor& x) const {
  at::Tensor f = encode(x).detach();
  at::Tensor nonzero = f != 0;
  SparseActivations out;
  at::Tensor counts = nonzero.sum(1);
  out.offsets = at::cat({at::zeros({1}, counts.options()), counts.cumsum(0)});
  at::Tensor where = nonzero.nonzero();  // [nnz, 2], row-major order
  out.indices = where.select(1, 1).contiguous();
  out.values = f.index({where.select(1, 0), out.indices});
  return out;
}

at::Tensor Transcoder::addSkipAndBias(at::Tensor y, const at::Tensor& x) const {
  if (params_.W_skip.defined()) y = at::addmm(y, x.reshape({-1, spec_.dIn}), params_.W_skip);
  return y + params_.b_dec_out;
}

at::Tensor Transcoder::decode(const at::Tensor& f, const at::Tensor& x) const {
  if (f.size(-1) != spec_.dSae)
    throw InvalidArgument("feature activations have " + std::to_string(f.size(-1)) + " columns, expected d_sae = " +
                          std::to_string(spec_.dSae));
  if (spec_.skip && !x.defined()) throw InvalidArgument("decoding a skip transcoder needs its input x");
  return addSkipAndBias(at::mm(f.reshape({-1, spec_.dSae}), params_.W_dec), x);
}

at::Tensor Transcoder::decodeTopK(const at::Tensor& indices, const at::Tensor& values, const at::Tensor& x) const {
  // embedding_bag with per-sample weights gathers the k decoder rows of each token and sums them.
  const int64_t rows = indices.size(0), k = indices.size(1);
  if (params_.W_dec.device().is_cpu() && params_.W_dec.scalar_type() == c10::kBFloat16) {
    // libtorch's CPU embedding_bag has no bfloat16 kernel: gather the rows and sum them.
    at::Tensor rowsOf = params_.W_dec.index_select(0, indices.reshape({-1})).view({rows, k, spec_.dOut});
    return addSkipAndBias((rowsOf * values.reshape({rows, k, 1})).sum(1), x);
  }
  at::Tensor offsets = at::arange(0, rows * k, k, indices.options().dtype(c10::kLong));
  at::Tensor y = std::get<0>(at::embedding_bag(params_.W_dec, indices.reshape({-1}), offsets, /*scale_grad_by_freq=*/false,
                                               /*mode=sum*/ 0, /*sparse=*/false, values.reshape({-1})));
  return addSkipAndBias(y, x);
}

at::Tensor Transcoder::forward(const at::Tensor& x) const {
  at::Tensor pre = preActivations(x);
  at::Tensor y;
  if (spec_.arch == TranscoderArch::TopK) {
    at::Tensor idx = topkIndices(pre, spec_.k);
    y = decodeTopK(idx, at::relu(pre.gather(-1, idx)), x);
  } else {
    y = decode(activate(pre), x);
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = spec_.dOut;
  return y.view(shape);
}

}  // namespace tc
