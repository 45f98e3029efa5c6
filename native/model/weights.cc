#include "model/weights.h"

#include <ATen/ATen.h>

#include "core/errors.h"

namespace tc {

at::Tensor MapTensorSource::read(const std::string& key) {
  auto it = t_.find(key);
  if (it == t_.end()) throw FormatError(name_, "missing tensor '" + key + "'");
  at::Tensor t = std::move(it->second);
  t_.erase(it);
  return t;
}

namespace {

// Reads checkpoint tensors straight into the target device and dtype, one at a time.
class Reader {
 public:
  Reader(TensorSource& hf, c10::Device device, c10::ScalarType dtype) : hf_(hf), device_(device), dtype_(dtype) {}
  at::Tensor take(const std::string& key) {
    if (!hf_.has(key)) throw FormatError(hf_.name(), "missing tensor '" + key + "'");
    return hf_.read(key).to(device_, dtype_);
  }
  // An optional tensor, or zeros of `shape` where the checkpoint has none.
  at::Tensor takeOr(const std::string& key, at::IntArrayRef shape) {
    return hf_.has(key) ? take(key) : at::zeros(shape, options());
  }
  at::Tensor takeIf(const std::string& key) { return hf_.has(key) ? take(key) : at::Tensor(); }
  bool has(const std::string& key) const { return hf_.has(key); }
  at::TensorOptions options() const { return at::TensorOptions().device(device_).dtype(dtype_); }

 private:
  TensorSource& hf_;
  c10::Device device_;
  c10::ScalarType dtype_;
};

Weights fromGpt2(const ModelConfig& c, Reader& r) {
  const int64_t d = c.dModel, H = c.nHeads, dh = c.dHead;
  Weights w;
  w.W_E = r.take("wte.weight");
  w.W_pos = r.take("wpe.weight");
  for (int64_t l = 0; l < c.nLayers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    LayerWeights L;
    L.ln1W = r.take(p + "ln_1.weight");
    L.ln1B = r.take(p + "ln_1.bias");
    // Conv1D stores [in, out]; the output columns are [Q | K | V], each split by head.
    L.W_QKV = r.take(p + "attn.c_attn.weight");
    L.b_QKV = r.take(p + "attn.c_attn.bias");
    L.W_O = r.take(p + "attn.c_proj.weight").view({H, dh, d});
    L.b_O = r.take(p + "attn.c_proj.bias");
    L.ln2W = r.take(p + "ln_2.weight");
    L.ln2B = r.take(p + "ln_2.bias");
    L.W_in = r.take(p + "mlp.c_fc.weight");
    L.b_in = r.take(p + "mlp.c_fc.bias");
    L.W_out = r.take(p + "mlp.c_proj.weight");
    L.b_out = r.take(p + "mlp.c_proj.bias");
    w.layers.push_back(std::move(L));
  }
  w.lnFinalW = r.take("ln_f.weight");
  w.lnFinalB = r.take("ln_f.bias");
  // Tied unembedding unless the checkpoint carries its own lm_head.
  w.W_U = r.has("lm_head.weight") ? r.take("lm_head.weight").t() : w.W_E.t();
  w.b_U = at::zeros({c.vocabSize}, r.options());
  return w;
}

Weights fromNeoX(const ModelConfig& c, Reader& r) {
  const int64_t d = c.dModel, H = c.nHeads, dh = c.dHead;
  Weights w;
  w.W_E = r.take("gpt_neox.embed_in.weight");
  for (int64_t l = 0; l < c.nLayers; ++l) {
    const std::string p = "gpt_neox.layers." + std::to_string(l) + ".";
    LayerWeights L;
    L.ln1W = r.take(p + "input_layernorm.weight");
    L.ln1B = r.take(p + "input_layernorm.bias");
    // nn.Linear stores [out, in]; the fused QKV output rows are ordered (head, qkv, dh).
    L.W_QKV = r.take(p + "attention.query_key_value.weight").view({H, 3, dh, d}).permute({3, 1, 0, 2}).reshape({d, 3 * H * dh});
    L.b_QKV = r.takeOr(p + "attention.query_key_value.bias", {3 * d}).view({H, 3, dh}).permute({1, 0, 2}).reshape({3 * H * dh});
    L.W_O = r.take(p + "attention.dense.weight").t().reshape({H, dh, d}).contiguous();
    L.b_O = r.takeOr(p + "attention.dense.bias", {d});
    L.ln2W = r.take(p + "post_attention_layernorm.weight");
    L.ln2B = r.take(p + "post_attention_layernorm.bias");
    L.W_in = r.take(p + "mlp.dense_h_to_4h.weight").t().contiguous();
    L.b_in = r.takeOr(p + "mlp.dense_h_to_4h.bias", {c.dMlp});
    L.W_out = r.take(p + "mlp.dense_4h_to_h.weight").t().contiguous();
    L.b_out = r.takeOr(p + "mlp.dense_4h_to_h.bias", {d});
    w.layers.push_back(std::move(L));
  }
  w.lnFinalW = r.take("gpt_neox.final_layer_norm.weight");
  w.lnFinalB = r.take("gpt_neox.final_layer_norm.bias");
  w.W_U = r.take("embed_out.weight").t().contiguous();
  w.b_U = at::zeros({c.vocabSize}, r.options());
  return w;
}

// Llama, Mistral, Qwen2/3 and Gemma-2/3 share one key layout (model.layers.L.self_attn.q_proj, ...).
Weights fromLlamaFamily(const ModelConfig& c, Reader& r) {
  const int64_t d = c.dModel, H = c.nHeads, K = c.kvHeads(), dh = c.dHead, dm = c.dMlp;
  Weights w;
  w.W_E = r.take("model.embed_tokens.weight");
  for (int64_t l = 0; l < c.nLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights L;
    L.ln1W = r.take(p + "input_layernorm.weight");
    // nn.Linear [out, in]: stacked into one [(H + 2K) dh, d] matrix (rows Q | K | V), used as its
    // transposed view [d, (H + 2K) dh]. The layer's three projections are the only copy made.
    at::Tensor q = r.take(p + "self_attn.q_proj.weight"), k = r.take(p + "self_attn.k_proj.weight"),
               v = r.take(p + "self_attn.v_proj.weight");
    L.W_QKV = at::cat({q, k, v}, 0).t();
    q.reset(), k.reset(), v.reset();
    L.b_QKV = at::cat({r.takeOr(p + "self_attn.q_proj.bias", {H * dh}), r.takeOr(p + "self_attn.k_proj.bias", {K * dh}),
                       r.takeOr(p + "self_attn.v_proj.bias", {K * dh})});
    if (c.qkNorm) {
      L.qNormW = r.take(p + "self_attn.q_norm.weight");
      L.kNormW = r.take(p + "self_attn.k_norm.weight");
    }
    // Linear weights stay in the file's [out, in] memory as transposed views: GEMMs read them as they
    // are (no copy at load, so loading holds the weights and not a second layout of them).
    L.W_O = r.take(p + "self_attn.o_proj.weight").t().view({H, dh, d});
    L.b_O = r.takeOr(p + "self_attn.o_proj.bias", {d});
    if (c.sandwichNorms) {
      L.ln1PostW = r.take(p + "post_attention_layernorm.weight");
      L.ln2W = r.take(p + "pre_feedforward_layernorm.weight");
      L.ln2PostW = r.take(p + "post_feedforward_layernorm.weight");
    } else {
      L.ln2W = r.take(p + "post_attention_layernorm.weight");
    }
    L.W_gate = r.take(p + "mlp.gate_proj.weight").t();
    L.b_gate = r.takeOr(p + "mlp.gate_proj.bias", {dm});
    L.W_in = r.take(p + "mlp.up_proj.weight").t();
    L.b_in = r.takeOr(p + "mlp.up_proj.bias", {dm});
    L.W_out = r.take(p + "mlp.down_proj.weight").t();
    L.b_out = r.takeOr(p + "mlp.down_proj.bias", {d});
    w.layers.push_back(std::move(L));
  }
  w.lnFinalW = r.take("model.norm.weight");
  w.W_U = r.has("lm_head.weight") ? r.take("lm_head.weight").t() : w.W_E.t();
  w.b_U = at::zeros({c.vocabSize}, r.options());
  return w;
}

template <class Fn>
void forEachWeight(Weights& w, Fn&& fn) {
  fn(w.W_E), fn(w.W_pos), fn(w.lnFinalW), fn(w.lnFinalB), fn(w.W_U), fn(w.b_U);
  for (auto& L : w.layers) {
    for (at::Tensor* t : {&L.ln1W, &L.ln1B, &L.W_QKV, &L.b_QKV, &L.qNormW, &L.kNormW, &L.W_O, &L.b_O, &L.ln1PostW, &L.ln2W,
                          &L.ln2B, &L.W_gate, &L.b_gate, &L.W_in, &L.b_in, &L.W_out, &L.b_out, &L.ln2PostW})
      fn(*t);
  }
}

}  // namespace

Weights weightsFromHuggingFace(const ModelConfig& cfg, TensorSource& hf, c10::Device device, c10::ScalarType dtype) {
  Reader r(hf, device, dtype);
  switch (cfg.arch) {
    case Arch::GPT2: return fromGpt2(cfg, r);
    case Arch::NeoX: return fromNeoX(cfg, r);
    case Arch::Llama:
    case Arch::Gemma: return fromLlamaFamily(cfg, r);
  }
  throw InvalidArgument("unknown architecture");
}

std::map<std::string, at::Tensor> weightsToHuggingFace(const ModelConfig& c, const Weights& w) {
  if (!w.lnFinalW.defined())
    throw InvalidArgument("only a model loaded with processing 'none' can be saved in Hugging Face layout (processing folds the norms away)");
  const int64_t d = c.dModel, H = c.nHeads, K = c.kvHeads(), dh = c.dHead;
  std::map<std::string, at::Tensor> hf;
  auto put = [&](const std::string& key, const at::Tensor& t) { hf[key] = t.detach().contiguous(); };
  if (c.arch == Arch::GPT2) {
    put("wte.weight", w.W_E);
    put("wpe.weight", w.W_pos);
    for (int64_t l = 0; l < c.nLayers; ++l) {
      const std::string p = "h." + std::to_string(l) + ".";
      const LayerWeights& L = w.layers[l];
      put(p + "ln_1.weight", L.ln1W);
      put(p + "ln_1.bias", L.ln1B);
      put(p + "attn.c_attn.weight", L.W_QKV);
      put(p + "attn.c_attn.bias", L.b_QKV);
      put(p + "attn.c_proj.weight", L.W_O.reshape({H * dh, d}));
      put(p + "attn.c_proj.bias", L.b_O);
      put(p + "ln_2.weight", L.ln2W);
      put(p + "ln_2.bias", L.ln2B);
      put(p + "mlp.c_fc.weight", L.W_in);
      put(p + "mlp.c_fc.bias", L.b_in);
      put(p + "mlp.c_proj.weight", L.W_out);
      put(p + "mlp.c_proj.bias", L.b_out);
    }
    put("ln_f.weight", w.lnFinalW);
    put("ln_f.bias", w.lnFinalB);
    if (!w.W_U.is_alias_of(w.W_E)) put("lm_head.weight", w.W_U.t());
    return hf;
  }
  if (c.arch == Arch::NeoX) {
    put("gpt_neox.embed_in.weight", w.W_E);
    for (int64_t l = 0; l < c.nLayers; ++l) {
      const std::string p = "gpt_neox.layers." + std::to_string(l) + ".";
      const LayerWeights& L = w.layers[l];
      put(p + "input_layernorm.weight", L.ln1W);
      put(p + "input_layernorm.bias", L.ln1B);
      // Back to nn.Linear [out, in] with output rows ordered (head, qkv, dh).
      put(p + "attention.query_key_value.weight", L.W_QKV.view({d, 3, H, dh}).permute({2, 1, 3, 0}).reshape({3 * d, d}));
      put(p + "attention.query_key_value.bias", L.b_QKV.view({3, H, dh}).permute({1, 0, 2}).reshape({3 * d}));
      put(p + "attention.dense.weight", L.W_O.reshape({H * dh, d}).t());
      put(p + "attention.dense.bias", L.b_O);
      put(p + "post_attention_layernorm.weight", L.ln2W);
      put(p + "post_attention_layernorm.bias", L.ln2B);
      put(p + "mlp.dense_h_to_4h.weight", L.W_in.t());
      put(p + "mlp.dense_h_to_4h.bias", L.b_in);
      put(p + "mlp.dense_4h_to_h.weight", L.W_out.t());
      put(p + "mlp.dense_4h_to_h.bias", L.b_out);
    }
    put("gpt_neox.final_layer_norm.weight", w.lnFinalW);
    put("gpt_neox.final_layer_norm.bias", w.lnFinalB);
    put("embed_out.weight", w.W_U.t());
    return hf;
  }
  put("model.embed_tokens.weight", w.W_E);
  for (int64_t l = 0; l < c.nLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const LayerWeights& L = w.layers[l];
    put(p + "input_layernorm.weight", L.ln1W);
    put(p + "self_attn.q_proj.weight", L.W_QKV.narrow(1, 0, H * dh).t());
    put(p + "self_attn.k_proj.weight", L.W_QKV.narrow(1, H * dh, K * dh).t());
    put(p + "self_attn.v_proj.weight", L.W_QKV.narrow(1, (H + K) * dh, K * dh).t());
    if (c.qkvBias) {
      put(p + "self_attn.q_proj.bias", L.b_QKV.narrow(0, 0, H * dh));
      put(p + "self_attn.k_proj.bias", L.b_QKV.narrow(0, H * dh, K * dh));
      put(p + "self_attn.v_proj.bias", L.b_QKV.narrow(0, (H + K) * dh, K * dh));
    }
    if (c.qkNorm) {
      put(p + "self_attn.q_norm.weight", L.qNormW);
      put(p + "self_attn.k_norm.weight", L.kNormW);
    }
    put(p + "self_attn.o_proj.weight", L.W_O.reshape({H * dh, d}).t());
    if (c.attentionBias) put(p + "self_attn.o_proj.bias", L.b_O);
    if (c.sandwichNorms) {
      put(p + "post_attention_layernorm.weight", L.ln1PostW);
      put(p + "pre_feedforward_layernorm.weight", L.ln2W);
      put(p + "post_feedforward_layernorm.weight", L.ln2PostW);
    } else {
      put(p + "post_attention_layernorm.weight", L.ln2W);
    }
    put(p + "mlp.gate_proj.weight", L.W_gate.t());
    put(p + "mlp.up_proj.weight", L.W_in.t());
    put(p + "mlp.down_proj.weight", L.W_out.t());
    if (c.mlpBias) {
      put(p + "mlp.gate_proj.bias", L.b_gate);
      put(p + "mlp.up_proj.bias", L.b_in);
      put(p + "mlp.down_proj.bias", L.b_out);
    }
  }
  put("model.norm.weight", w.lnFinalW);
  if (!w.W_U.is_alias_of(w.W_E)) put("lm_head.weight", w.W_U.t());
  return hf;
}

std::vector<at::Tensor*> trainableWeights(Weights& w) {
  std::vector<at::Tensor*> out;
  const bool tied = w.W_U.is_alias_of(w.W_E);
  forEachWeight(w, [&](at::Tensor& t) {
    if (!t.defined()) return;
    if (&t == &w.b_U) return;  // Hugging Face checkpoints have no unembedding bias
    if (tied && &t == &w.W_U) return;
    out.push_back(&t);
  });
  return out;
}

void castWeights(Weights& w, c10::Device device, c10::ScalarType dtype) {
  // A tied unembedding is a view of W_E: keep it one after the move.
  bool tied = w.W_U.defined() && w.W_E.defined() && w.W_U.is_alias_of(w.W_E);
  forEachWeight(w, [&](at::Tensor& t) {
    if (t.defined()) t = t.to(device, dtype);
  });
  if (tied) w.W_U = w.W_E.t();
}

at::Tensor normGain(const ModelConfig& cfg, const at::Tensor& weight) {
  if (!weight.defined()) return {};
  return cfg.normPlusOne ? weight + 1 : weight;
}

namespace {

// Head counts from the shapes: W_O is [H, dh, d], W_QKV [d, (H + 2K) dh].
int64_t kvHeadsOf(const LayerWeights& L) { return (L.W_QKV.size(1) / L.W_O.size(1) - L.W_O.size(0)) / 2; }

}  // namespace

std::vector<std::string> weightNames(const Weights& w) {
  std::vector<std::string> names = {"embed.W_E"};
  if (w.W_pos.defined()) names.push_back("pos_embed.W_pos");
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const std::string p = "blocks." + std::to_string(l) + ".";
    const LayerWeights& L = w.layers[l];
    if (L.ln1W.defined()) names.push_back(p + "ln1.w");
    if (L.ln1B.defined()) names.push_back(p + "ln1.b");
    names.insert(names.end(), {p + "attn.W_Q", p + "attn.W_K", p + "attn.W_V", p + "attn.W_O", p + "attn.b_Q",
                               p + "attn.b_K", p + "attn.b_V", p + "attn.b_O"});
    if (L.qNormW.defined()) names.insert(names.end(), {p + "attn.q_norm.w", p + "attn.k_norm.w"});
    if (L.ln1PostW.defined()) names.push_back(p + "ln1_post.w");
    if (L.ln2W.defined()) names.push_back(p + "ln2.w");
    if (L.ln2B.defined()) names.push_back(p + "ln2.b");
    if (L.W_gate.defined()) names.insert(names.end(), {p + "mlp.W_gate", p + "mlp.b_gate"});
    names.insert(names.end(), {p + "mlp.W_in", p + "mlp.b_in", p + "mlp.W_out", p + "mlp.b_out"});
    if (L.ln2PostW.defined()) names.push_back(p + "ln2_post.w");
  }
  if (w.lnFinalW.defined()) names.push_back("ln_final.w");
  if (w.lnFinalB.defined()) names.push_back("ln_final.b");
  names.insert(names.end(), {"unembed.W_U", "unembed.b_U"});
  return names;
}

at::Tensor weightByName(const Weights& w, const std::string& name) {
  auto unknown = [&]() { return InvalidArgument("unknown weight '" + name + "' (see model.weightNames())"); };
  auto defined = [&](const at::Tensor& t) {
    if (!t.defined()) throw unknown();
    return t;
  };
  if (name == "embed.W_E") return w.W_E;
  if (name == "pos_embed.W_pos") return defined(w.W_pos);
  if (name == "ln_final.w") return defined(w.lnFinalW);
  if (name == "ln_final.b") return defined(w.lnFinalB);
  if (name == "unembed.W_U") return w.W_U;
  if (name == "unembed.b_U") return w.b_U;
  const std::string prefix = "blocks.";
  if (name.rfind(prefix, 0) != 0) throw unknown();
  size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos) throw unknown();
  int64_t layer = -1;
  try {
    size_t used = 0;
    layer = std::stoll(name.substr(prefix.size(), dot - prefix.size()), &used);
    if (used != dot - prefix.size()) throw unknown();
  } catch (const std::logic_error&) {
    throw unknown();
  }
  if (layer < 0 || layer >= static_cast<int64_t>(w.layers.size())) throw unknown();
  const LayerWeights& L = w.layers[layer];
  const std::string rest = name.substr(dot + 1);
  const int64_t d = L.W_QKV.size(0), H = L.W_O.size(0), dh = L.W_O.size(1), K = kvHeadsOf(L);
  // W_Q [H, d, dh] and W_K/W_V [K, d, dh] are views of the fused [d, (H + 2K) dh] matrix.
  auto part = [&](int64_t start, int64_t heads) { return L.W_QKV.narrow(1, start * dh, heads * dh).view({d, heads, dh}).permute({1, 0, 2}); };
  auto bias = [&](int64_t start, int64_t heads) { return L.b_QKV.narrow(0, start * dh, heads * dh).view({heads, dh}); };
  if (rest == "attn.W_Q") return part(0, H);
  if (rest == "attn.W_K") return part(H, K);
  if (rest == "attn.W_V") return part(H + K, K);
  if (rest == "attn.b_Q") return bias(0, H);
  if (rest == "attn.b_K") return bias(H, K);
  if (rest == "attn.b_V") return bias(H + K, K);
  if (rest == "attn.W_O") return L.W_O;
  if (rest == "attn.b_O") return L.b_O;
  if (rest == "attn.q_norm.w") return defined(L.qNormW);
  if (rest == "attn.k_norm.w") return defined(L.kNormW);
  if (rest == "ln1.w") return defined(L.ln1W);
  if (rest == "ln1.b") return defined(L.ln1B);
  if (rest == "ln1_post.w") return defined(L.ln1PostW);
  if (rest == "ln2.w") return defined(L.ln2W);
  if (rest == "ln2.b") return defined(L.ln2B);
  if (rest == "ln2_post.w") return defined(L.ln2PostW);
  if (rest == "mlp.W_gate") return defined(L.W_gate);
  if (rest == "mlp.b_gate") return defined(L.b_gate);
  if (rest == "mlp.W_in") return L.W_in;
  if (rest == "mlp.b_in") return L.b_in;
  if (rest == "mlp.W_out") return L.W_out;
  if (rest == "mlp.b_out") return L.b_out;
  throw unknown();
}

}  // namespace tc
