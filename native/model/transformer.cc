#include "model/transformer.h"

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/core/grad_mode.h>
#include <torch/version.h>

#include <cmath>
#include <limits>

#include "core/errors.h"

namespace tc {

Transformer::Transformer(ModelConfig cfg, Weights weights) : cfg_(std::move(cfg)), w_(std::move(weights)) {}

at::Tensor Transformer::prepareTokens(const at::Tensor& tokens) const {
  if (tokens.scalar_type() != c10::kLong && tokens.scalar_type() != c10::kInt)
    throw InvalidArgument("tokens must be int32 or int64, got " + std::string(c10::toString(tokens.scalar_type())));
  at::Tensor t = tokens.dim() == 1 ? tokens.unsqueeze(0) : tokens;
  if (t.dim() != 2) throw InvalidArgument("tokens must have shape [T] or [B, T], got " + std::to_string(tokens.dim()) + " dimensions");
  if (t.size(0) == 0 || t.size(1) == 0) throw InvalidArgument("tokens must not be empty");
  if (t.size(1) > cfg_.nCtx)
    throw InvalidArgument("sequence of " + std::to_string(t.size(1)) + " tokens is longer than the model's context of " +
                          std::to_string(cfg_.nCtx));
  int64_t lo = t.min().item<int64_t>(), hi = t.max().item<int64_t>();
  if (lo < 0 || hi >= cfg_.vocabSize)
    throw InvalidArgument("token id " + std::to_string(lo < 0 ? lo : hi) + " is out of range [0, " +
                          std::to_string(cfg_.vocabSize) + ")");
  return t.to(device(), c10::kLong);
}

namespace {

// A replayed value from options.replay (undefined when none), checked to broadcast to `shape`.
at::Tensor replayed(const ForwardOptions& options, const std::string& name, at::IntArrayRef shape, const at::TensorOptions& like) {
  auto it = options.replay.find(name);
  if (it == options.replay.end()) return {};
  const at::Tensor& t = it->second;
  if (t.dim() != static_cast<int64_t>(shape.size()) || (t.size(0) != 1 && t.size(0) != shape[0]))
    throw InvalidArgument("replayed " + name + " has shape " + c10::str(t.sizes()) + ", expected " + c10::str(shape));
  for (size_t i = 1; i < shape.size(); ++i)
    if (t.size(i) != shape[i]) throw InvalidArgument("replayed " + name + " has shape " + c10::str(t.sizes()) + ", expected " + c10::str(shape));
  return t.to(like).expand(shape);
}

}  // namespace

at::Tensor Transformer::norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, at::Tensor* scale,
                             const at::Tensor& fixedScale, at::Tensor* normalized) const {
  if (cfg_.norm == Norm::RMSNorm) {
    // As Hugging Face computes it: in float32, back to the model dtype before the gain (Llama) or
    // after it (Gemma's (1 + w)). hook_scale = sqrt(mean(x^2) + eps), as TransformerLens's RMSNorm.
    at::Tensor xf = x.to(c10::kFloat);
    at::Tensor ms = fixedScale.defined() ? fixedScale.to(c10::kFloat).pow(2) : xf.pow(2).mean(-1, /*keepdim=*/true).add_(cfg_.lnEps);
    if (scale != nullptr) *scale = ms.sqrt().to(x.scalar_type());
    at::Tensor inv = ms.rsqrt();
    at::Tensor n = xf * inv;
    if (normalized != nullptr) *normalized = n.to(x.scalar_type());
    if (!w.defined()) return n.to(x.scalar_type());
    if (cfg_.normPlusOne) return (n * (w.to(c10::kFloat) + 1.0)).to(x.scalar_type());
    return w * n.to(x.scalar_type());
  }
  if (scale == nullptr && !fixedScale.defined()) {
    at::Tensor out = at::layer_norm(x, {x.size(-1)}, w, b, cfg_.lnEps);
    if (normalized != nullptr) *normalized = out;
    return out;
  }
  // Spelled out when the scale is observed or replayed: TransformerLens's hook_scale = sqrt(mean(xc^2) + eps).
  at::Tensor xc = x - x.mean(-1, /*keepdim=*/true);
  at::Tensor s = fixedScale.defined() ? fixedScale.to(xc.scalar_type()) : (xc.pow(2).mean(-1, /*keepdim=*/true) + cfg_.lnEps).sqrt();
  if (scale != nullptr) *scale = s;
  at::Tensor out = xc / s;
  out = w.defined() ? at::addcmul(b, out, w) : out;
  if (normalized != nullptr) *normalized = out;
  return out;
}

at::Tensor Transformer::realPositions(const ForwardOptions& options, int64_t B, int64_t T, c10::Device device) {
  if (!options.lengths.defined()) return {};
  const at::Tensor& n = options.lengths;
  if (!c10::isIntegralType(n.scalar_type(), /*includeBool=*/false) || n.dim() != 1 || n.size(0) != B)
    throw InvalidArgument("lengths must be an integer tensor of shape [" + std::to_string(B) + "] (one per row), got " +
                          std::string(c10::toString(n.scalar_type())) + " " + c10::str(n.sizes()));
  at::Tensor cpu = n.to(at::kCPU, c10::kLong).contiguous();
  const int64_t* len = cpu.data_ptr<int64_t>();
  bool padded = false;
  for (int64_t b = 0; b < B; ++b) {
    if (len[b] < 1 || len[b] > T)
      throw InvalidArgument("lengths: row " + std::to_string(b) + " has length " + std::to_string(len[b]) + ", outside [1, " +
                            std::to_string(T) + "]");
    padded = padded || len[b] < T;
  }
  if (!padded) return {};  // nothing to mask: the plain forward, bit for bit
  at::Tensor t = at::arange(T, at::TensorOptions().dtype(c10::kLong).device(device)).view({1, T});
  at::Tensor l = cpu.to(device).view({B, 1});
  return options.padLeft ? t.ge(T - l) : t.lt(l);
}

namespace {

// Hugging Face's rope_type scalings of the inverse frequencies (modeling_rope_utils): linear
// divides them by the factor; llama3 divides the low frequencies, keeps the high ones and blends
// between by wavelength.
at::Tensor scaledFrequencies(const Rope& r, const at::Tensor& invFreq) {
  switch (r.type) {
    case Rope::Type::Default: return invFreq;
    case Rope::Type::Linear: return invFreq / r.factor;
    case Rope::Type::Llama3: {
      const double lowWavelen = r.originalMaxPositions / r.lowFreqFactor, highWavelen = r.originalMaxPositions / r.highFreqFactor;
      at::Tensor wavelen = (2.0 * M_PI) / invFreq;
      at::Tensor scaled = at::where(wavelen > lowWavelen, invFreq / r.factor, invFreq);
      at::Tensor smooth = (r.originalMaxPositions / wavelen - r.lowFreqFactor) / (r.highFreqFactor - r.lowFreqFactor);
      at::Tensor smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
      at::Tensor medium = wavelen.ge(highWavelen).logical_and(wavelen.le(lowWavelen));
      return at::where(medium, smoothed, scaled);
    }
  }
  return invFreq;
}

}  // namespace

Transformer::Positions Transformer::positions(int64_t T, const at::Tensor& real) const {
  Positions p;
  p.future = at::ones({T, T}, at::TensorOptions().dtype(c10::kBool).device(device())).triu_(1);
  if (real.defined()) {
    const int64_t B = real.size(0);
    // Position ids from the mask, as Hugging Face derives them: a row's i-th real token is at
    // position i whichever side the padding is on (pads get unspecified positions).
    p.ids = (real.to(c10::kLong).cumsum(1) - 1).clamp_min(0);
    // A query sees no future key and no pad key, except that a pad query keeps itself: no softmax
    // row is empty, so pad positions get (unspecified) finite values, never NaN.
    at::Tensor notSelf = at::eye(T, p.future.options()).logical_not();
    p.blocked = p.future.view({1, 1, T, T}).logical_or(real.logical_not().view({B, 1, 1, T}).logical_and(notSelf));
  }
  for (int64_t l = 0; l < cfg_.nLayers; ++l) {
    const int64_t w = cfg_.window(l);
    if (w <= 0 || p.windowed.count(w)) continue;
    // Sliding window (Mistral, Gemma, Qwen2): query i sees keys j with i - j < w, as Hugging Face.
    at::Tensor i = at::arange(T, at::TensorOptions().dtype(c10::kLong).device(device()));
    at::Tensor far = (i.view({T, 1}) - i.view({1, T})).ge(w);
    p.windowed[w] = (p.blocked.defined() ? p.blocked : p.future).logical_or(far);
  }
  if (cfg_.rotaryDim > 0) {
    // Rotate-half rotary embeddings, angles computed in float32 as Hugging Face does.
    auto f32 = at::TensorOptions().dtype(c10::kFloat).device(device());
    at::Tensor position = p.ids.defined() ? p.ids.to(c10::kFloat) : at::arange(T, f32).unsqueeze(0);  // [B or 1, T]
    for (const Rope& rope : cfg_.ropes) {
      at::Tensor invFreq = 1.0 / at::pow(rope.base, at::arange(0, cfg_.rotaryDim, 2, f32) / double(cfg_.rotaryDim));
      invFreq = scaledFrequencies(rope, invFreq);
      at::Tensor angles = position.unsqueeze(-1) * invFreq;
      angles = at::cat({angles, angles}, -1);
      p.rotary.push_back(at::stack({angles.cos(), angles.sin()}).to(w_.W_E.scalar_type()));
    }
  }
  return p;
}

namespace {

// Rotates the first rotaryDim features of q or k ([B, T, H, dh]) by position (tables [2, B or 1, T, rotaryDim]).
at::Tensor applyRotary(const at::Tensor& x, const at::Tensor& tables, int64_t rotaryDim) {
  const int64_t half = rotaryDim / 2;
  at::Tensor cos = tables[0].unsqueeze(2), sin = tables[1].unsqueeze(2);
  at::Tensor rot = x.narrow(-1, 0, rotaryDim);
  at::Tensor rotated = at::cat({-rot.narrow(-1, half, half), rot.narrow(-1, 0, half)}, -1);
  at::Tensor out = rot * cos + rotated * sin;
  if (rotaryDim == x.size(-1)) return out;
  return at::cat({out, x.narrow(-1, rotaryDim, x.size(-1) - rotaryDim)}, -1);
}

at::Tensor activation(Activation act, const at::Tensor& x) {
  switch (act) {
    case Activation::GeluTanh: return at::gelu(x, "tanh");
    case Activation::GeluExact: return at::gelu(x);
    case Activation::Relu: return at::relu(x);
    case Activation::Silu: return at::silu(x);
  }
  return x;
}

// The mean of x [B, T, d] over the real positions (all of them when `real` is undefined), [1, 1, d].
at::Tensor positionMean(const at::Tensor& x, const at::Tensor& real) {
  if (!real.defined()) return x.mean(at::IntArrayRef{0, 1}, /*keepdim=*/true);
  at::Tensor w = real.unsqueeze(-1).to(c10::kFloat);
  return ((x.to(c10::kFloat) * w).sum(at::IntArrayRef{0, 1}, /*keepdim=*/true) / w.sum()).to(x.scalar_type());
}

}  // namespace

at::Tensor Transformer::attention(int64_t layer, const at::Tensor& x, const Positions& pos, HookCapture& hooks, const ForwardOptions& options) const {
  const LayerWeights& L = w_.layers[layer];
  const int64_t B = x.size(0), T = x.size(1), d = cfg_.dModel, H = cfg_.nHeads, K = cfg_.kvHeads(), dh = cfg_.dHead;
  at::Tensor qkv = at::addmm(L.b_QKV, x.reshape({B * T, d}), L.W_QKV);  // [B T, (H + 2K) dh]: Q | K | V
  at::Tensor q = qkv.narrow(1, 0, H * dh).view({B, T, H, dh});
  at::Tensor k = qkv.narrow(1, H * dh, K * dh).view({B, T, K, dh});
  at::Tensor v = qkv.narrow(1, (H + K) * dh, K * dh).view({B, T, K, dh});
  hooks.record(layer, BlockHook::AttnQ, q);
  hooks.record(layer, BlockHook::AttnK, k);
  hooks.record(layer, BlockHook::AttnV, v);
  if (cfg_.qkNorm) {  // Qwen3 / Gemma-3: each head normalised before RoPE
    q = norm(q, L.qNormW, {}, nullptr);
    k = norm(k, L.kNormW, {}, nullptr);
  }
  if (cfg_.rotaryDim > 0) {
    const at::Tensor& tables = pos.rotary[cfg_.layerRope.empty() ? 0 : cfg_.layerRope[layer]];
    q = applyRotary(q, tables, cfg_.rotaryDim);
    k = applyRotary(k, tables, cfg_.rotaryDim);
    hooks.record(layer, BlockHook::AttnRotQ, q);
    hooks.record(layer, BlockHook::AttnRotK, k);
  }
  double scale = cfg_.attnScale > 0 ? cfg_.attnScale : 1.0 / std::sqrt(static_cast<double>(dh));
  if (cfg_.scaleAttnByInverseLayerIdx) scale /= static_cast<double>(layer + 1);
  at::Tensor qh = q.transpose(1, 2), kh = k.transpose(1, 2), vh = v.transpose(1, 2);  // [B, heads, T, dh]
  if (K != H) {  // grouped-query attention: query head h reads key/value head h / (H / K)
    kh = kh.repeat_interleave(H / K, 1);
    vh = vh.repeat_interleave(H / K, 1);
  }
  const int64_t window = cfg_.window(layer);
  at::Tensor z;
  at::Tensor fixedPattern = replayed(options, hookName(layer, BlockHook::AttnPattern), {B, H, T, T}, qh.options());
  [[maybe_unused]] bool observed = hooks.wants(layer, BlockHook::AttnScores) || hooks.wants(layer, BlockHook::AttnPattern) || fixedPattern.defined();
#if TORCH_VERSION_MAJOR >= 2
  if (!observed && !cfg_.scaleAttnByInverseLayerIdx && cfg_.attnScale == 0 && cfg_.attnSoftcap == 0 && window == 0) {
    // Fused kernel (flash / memory-efficient on CUDA) when nobody looks at the pattern; a padded
    // batch passes its mask (true = attend).
    z = pos.blocked.defined() ? at::scaled_dot_product_attention(qh, kh, vh, pos.blocked.logical_not(), 0.0, /*is_causal=*/false)
                              : at::scaled_dot_product_attention(qh, kh, vh, {}, 0.0, /*is_causal=*/true);
  }
#endif
  if (!z.defined()) {
    at::Tensor scores = at::matmul(qh, kh.transpose(-1, -2)).mul_(scale);  // [B, H, Tq, Tk]
    if (cfg_.attnSoftcap > 0) scores = at::tanh(scores / cfg_.attnSoftcap) * cfg_.attnSoftcap;  // Gemma-2
    scores = scores.masked_fill(pos.mask(window), -std::numeric_limits<double>::infinity());
    hooks.record(layer, BlockHook::AttnScores, scores);
    // Softmax in float32, as Hugging Face's eager attention (the same op in float32 models).
    at::Tensor pattern = fixedPattern.defined() ? fixedPattern : at::softmax(scores, -1, c10::kFloat).to(scores.scalar_type());
    hooks.record(layer, BlockHook::AttnPattern, pattern);
    z = at::matmul(pattern, vh);
  }
  z = z.transpose(1, 2);  // [B, T, H, dh]
  hooks.record(layer, BlockHook::AttnZ, z);
  at::Tensor out = at::addmm(L.b_O, z.reshape({B * T, H * dh}), L.W_O.view({H * dh, d})).view({B, T, d});
  if (cfg_.sandwichNorms) out = observedNorm(out, L.ln1PostW, {}, hooks, layer, BlockHook::Ln1PostScale, BlockHook::Ln1PostNormalized, options);
  return out;
}

at::Tensor Transformer::mlp(int64_t layer, const at::Tensor& x, HookCapture& hooks, const ForwardOptions& options) const {
  const LayerWeights& L = w_.layers[layer];
  const int64_t B = x.size(0), T = x.size(1);
  at::Tensor flat = x.reshape({B * T, cfg_.dModel});
  at::Tensor post;
  if (cfg_.gatedMlp) {  // SwiGLU / GeGLU: down(act(gate x) * up x)
    at::Tensor gate = at::addmm(L.b_gate, flat, L.W_gate);
    hooks.record(layer, BlockHook::MlpPre, gate.view({B, T, cfg_.dMlp}));
    at::Tensor up = at::addmm(L.b_in, flat, L.W_in);
    hooks.record(layer, BlockHook::MlpPreLinear, up.view({B, T, cfg_.dMlp}));
    post = activation(cfg_.act, gate).mul_(up);
  } else {
    at::Tensor pre = at::addmm(L.b_in, flat, L.W_in);
    hooks.record(layer, BlockHook::MlpPre, pre.view({B, T, cfg_.dMlp}));
    post = activation(cfg_.act, pre);
  }
  hooks.record(layer, BlockHook::MlpPost, post.view({B, T, cfg_.dMlp}));
  at::Tensor out = at::addmm(L.b_out, post, L.W_out).view({B, T, cfg_.dModel});
  if (cfg_.sandwichNorms) out = observedNorm(out, L.ln2PostW, {}, hooks, layer, BlockHook::Ln2PostScale, BlockHook::Ln2PostNormalized, options);
  return out;
}

at::Tensor Transformer::mlpOrReplacement(int64_t layer, const at::Tensor& x, const at::Tensor& residual,
                                         const ForwardOptions& options, HookCapture& hooks) const {
  auto it = options.mlpReplacements.find(layer);
  if (it == options.mlpReplacements.end()) return mlp(layer, x, hooks, options);
  const MlpReplacement& r = it->second;
  // The original MLP runs only when something needs it: its hooks, a mean over this batch, a module.
  bool needOriginal = hooks.wants(layer, BlockHook::MlpPre) || hooks.wants(layer, BlockHook::MlpPost) ||
                      (r.kind == MlpReplacement::Kind::Mean && !r.value.defined()) ||
                      (r.kind == MlpReplacement::Kind::Module && r.moduleNeedsOriginal);
  at::Tensor original = needOriginal ? mlp(layer, x, hooks, options) : at::Tensor();
  const std::vector<int64_t> shape = {x.size(0), x.size(1), cfg_.dModel};
  auto broadcast = [&](const at::Tensor& value) {
    if (!at::is_expandable_to(value.sizes(), shape))
      throw InvalidArgument("the replacement value of layer " + std::to_string(layer) + "'s MLP output has shape " +
                            c10::str(value.sizes()) + ", which does not broadcast to " + c10::str(at::IntArrayRef(shape)));
    return value.to(x.options()).expand(shape);
  };
  at::Tensor out;
  switch (r.kind) {
    case MlpReplacement::Kind::Zero: out = at::zeros(shape, x.options()); break;
    case MlpReplacement::Kind::Mean:
      out = r.value.defined() ? broadcast(r.value)
                              : positionMean(original, realPositions(options, x.size(0), x.size(1), x.device())).expand(shape);
      break;
    case MlpReplacement::Kind::Value: out = broadcast(r.value); break;
    case MlpReplacement::Kind::Module: out = r.module(r.input == MlpReplacement::Input::Residual ? residual : x, original); break;
  }
  if (out.sizes() != at::IntArrayRef(shape))
    throw InvalidArgument("the replacement of layer " + std::to_string(layer) + "'s MLP output has shape " +
                          c10::str(out.sizes()) + ", expected " + c10::str(at::IntArrayRef(shape)));
  return out.to(x.options());
}

at::Tensor Transformer::observedNorm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, HookCapture& hooks,
                                     int64_t layer, BlockHook scaleHook, BlockHook normalizedHook, const ForwardOptions& options) const {
  at::Tensor scale;
  at::Tensor fixed = replayed(options, hookName(layer, scaleHook), {x.size(0), x.size(1), 1}, x.options());
  at::Tensor normalized;
  at::Tensor out = norm(x, w, b, hooks.wants(layer, scaleHook) ? &scale : nullptr, fixed,
                        hooks.wants(layer, normalizedHook) ? &normalized : nullptr);
  hooks.record(layer, scaleHook, scale);
  hooks.record(layer, normalizedHook, normalized);
  return out;
}

at::Tensor Transformer::block(int64_t layer, const at::Tensor& residPre, const Positions& pos,
                              const ForwardOptions& options, HookCapture& hooks) const {
  const LayerWeights& L = w_.layers[layer];
  hooks.record(layer, BlockHook::ResidPre, residPre);

  at::Tensor x1 = observedNorm(residPre, L.ln1W, L.ln1B, hooks, layer, BlockHook::Ln1Scale, BlockHook::Ln1Normalized, options);
  at::Tensor attnOut = attention(layer, x1, pos, hooks, options);
  hooks.record(layer, BlockHook::AttnOut, attnOut);

  // Sequential blocks (GPT-2, NeoX without parallel residual) feed the MLP resid_mid; parallel
  // blocks feed it resid_pre.
  at::Tensor mlpIn = residPre;
  if (!cfg_.parallelResidual) {
    mlpIn = residPre + attnOut;
    hooks.record(layer, BlockHook::ResidMid, mlpIn);
  }
  at::Tensor x2 = observedNorm(mlpIn, L.ln2W, L.ln2B, hooks, layer, BlockHook::Ln2Scale, BlockHook::Ln2Normalized, options);
  hooks.record(layer, BlockHook::MlpIn, x2);
  at::Tensor mlpOut = mlpOrReplacement(layer, x2, mlpIn, options, hooks);
  hooks.record(layer, BlockHook::MlpHookOut, mlpOut);
  hooks.record(layer, BlockHook::MlpOut, mlpOut);

  at::Tensor residPost = cfg_.parallelResidual ? residPre + attnOut + mlpOut : mlpIn + mlpOut;
  hooks.record(layer, BlockHook::ResidPost, residPost);
  return residPost;
}

ForwardResult Transformer::forward(const at::Tensor& rawTokens, const ForwardOptions& options) const {
  for (const auto& [layer, r] : options.mlpReplacements)
    if (layer < 0 || layer >= cfg_.nLayers)
      throw InvalidArgument("MLP replacement for layer " + std::to_string(layer) + " but the model has " +
                            std::to_string(cfg_.nLayers) + " layers");
  HookCapture hooks(cfg_, options.hooks);
  at::Tensor tokens = prepareTokens(rawTokens);
  at::AutoGradMode gradMode(options.grad);
  const int64_t T = tokens.size(1);
  const Positions pos = positions(T, realPositions(options, tokens.size(0), T, device()));

  at::Tensor x = at::embedding(w_.W_E, tokens);
  // Gemma: embeddings times sqrt(d_model), the factor rounded to the model dtype as Hugging Face does.
  if (cfg_.embedScale != 1.0) x = x * at::scalar_tensor(cfg_.embedScale, x.options());
  hooks.record(ModelHook::Embed, x);
  if (w_.W_pos.defined()) {
    at::Tensor posEmbed = pos.ids.defined() ? at::embedding(w_.W_pos, pos.ids) : w_.W_pos.narrow(0, 0, T).unsqueeze(0).expand_as(x);
    hooks.record(ModelHook::PosEmbed, posEmbed);
    x = x + posEmbed;
  }
  const int64_t lastLayer = options.stopAfterLayer >= 0 ? std::min(options.stopAfterLayer, cfg_.nLayers - 1) : cfg_.nLayers - 1;
  for (int64_t l = 0; l <= lastLayer; ++l) x = block(l, x, pos, options, hooks);

  ForwardResult result;
  if (lastLayer < cfg_.nLayers - 1) {  // stopped early: no final LayerNorm, no logits
    result.cache = std::move(hooks.tensors());
    return result;
  }
  bool needFinal = options.logits || hooks.wants(ModelHook::LnFinalNormalized) || hooks.wants(ModelHook::LnFinalScale) ||
                   hooks.wants(ModelHook::UnembedPre);
  if (needFinal) {
    at::Tensor scale;
    at::Tensor fixed = replayed(options, hookName(ModelHook::LnFinalScale), {x.size(0), x.size(1), 1}, x.options());
    at::Tensor normalized;
    at::Tensor xf = norm(x, w_.lnFinalW, w_.lnFinalB, hooks.wants(ModelHook::LnFinalScale) ? &scale : nullptr, fixed,
                         hooks.wants(ModelHook::LnFinalNormalized) ? &normalized : nullptr);
    hooks.record(ModelHook::LnFinalScale, scale);
    hooks.record(ModelHook::LnFinalNormalized, normalized);
    hooks.record(ModelHook::UnembedPre, xf);
    if (options.logits) {
      const int64_t B = xf.size(0);
      result.logits = at::addmm(w_.b_U, xf.reshape({B * T, cfg_.dModel}), w_.W_U).view({B, T, cfg_.vocabSize});
      if (cfg_.finalSoftcap > 0) result.logits = at::tanh(result.logits / cfg_.finalSoftcap) * cfg_.finalSoftcap;
    }
  }
  result.cache = std::move(hooks.tensors());
  return result;
}

at::Tensor Transformer::nextTokenLoss(const at::Tensor& logits, const at::Tensor& tokens, bool perToken, const at::Tensor& real) {
  const int64_t T = tokens.size(1);
  if (T < 2) throw InvalidArgument("the loss needs at least 2 tokens per row (it predicts token t+1 from tokens <= t)");
  at::Tensor logProbs = at::log_softmax(logits.narrow(1, 0, T - 1).to(c10::kFloat), -1);
  at::Tensor nll = -logProbs.gather(-1, tokens.narrow(1, 1, T - 1).unsqueeze(-1)).squeeze(-1);  // [B, T-1]
  if (!real.defined()) return perToken ? nll : nll.mean();
  // A prediction counts when it reads a real token and predicts a real one.
  at::Tensor valid = real.narrow(1, 0, T - 1).logical_and(real.narrow(1, 1, T - 1));
  if (perToken) return nll.masked_fill(valid.logical_not(), std::numeric_limits<double>::quiet_NaN());
  return nll.masked_select(valid).mean();
}

}  // namespace tc
