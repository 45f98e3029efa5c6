#include "model/weights.h"

#include <ATen/ATen.h>

#include "core/errors.h"

namespace tc {

namespace {

at::Tensor take(std::map<std::string, at::Tensor>& hf, const std::string& key, const std::string& source) {
  auto it = hf.find(key);
  if (it == hf.end()) throw FormatError(source, "missing tensor '" + key + "'");
  return it->second.to(c10::kFloat);
}

at::Tensor takeOr(std::map<std::string, at::Tensor>& hf, const std::string& key, at::Tensor fallback) {
  auto it = hf.find(key);
  return it == hf.end() ? fallback : it->second.to(c10::kFloat);
}

Weights fromGpt2(const ModelConfig& c, std::map<std::string, at::Tensor>& hf, const std::string& src) {
  const int64_t d = c.dModel, H = c.nHeads, dh = c.dHead;
  Weights w;
  w.W_E = take(hf, "wte.weight", src);
  w.W_pos = take(hf, "wpe.weight", src);
  for (int64_t l = 0; l < c.nLayers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    LayerWeights L;
    L.ln1W = take(hf, p + "ln_1.weight", src);
    L.ln1B = take(hf, p + "ln_1.bias", src);
    // Conv1D stores [in, out]; the output columns are [Q | K | V], each split by head.
    L.W_QKV = take(hf, p + "attn.c_attn.weight", src).view({d, 3, H, dh});
    L.b_QKV = take(hf, p + "attn.c_attn.bias", src).view({3, H, dh});
    L.W_O = take(hf, p + "attn.c_proj.weight", src).view({H, dh, d});
    L.b_O = take(hf, p + "attn.c_proj.bias", src);
    L.ln2W = take(hf, p + "ln_2.weight", src);
    L.ln2B = take(hf, p + "ln_2.bias", src);
    L.W_in = take(hf, p + "mlp.c_fc.weight", src);
    L.b_in = take(hf, p + "mlp.c_fc.bias", src);
    L.W_out = take(hf, p + "mlp.c_proj.weight", src);
    L.b_out = take(hf, p + "mlp.c_proj.bias", src);
    w.layers.push_back(std::move(L));
  }
  w.lnFinalW = take(hf, "ln_f.weight", src);
  w.lnFinalB = take(hf, "ln_f.bias", src);
  // Tied unembedding unless the checkpoint carries its own lm_head.
  auto head = hf.find("lm_head.weight");
  w.W_U = head != hf.end() ? head->second.to(c10::kFloat).t() : w.W_E.t();
  w.b_U = at::zeros({c.vocabSize}, w.W_E.options());
  return w;
}

Weights fromNeoX(const ModelConfig& c, std::map<std::string, at::Tensor>& hf, const std::string& src) {
  const int64_t d = c.dModel, H = c.nHeads, dh = c.dHead;
  Weights w;
  w.W_E = take(hf, "gpt_neox.embed_in.weight", src);
  for (int64_t l = 0; l < c.nLayers; ++l) {
    const std::string p = "gpt_neox.layers." + std::to_string(l) + ".";
    LayerWeights L;
    L.ln1W = take(hf, p + "input_layernorm.weight", src);
    L.ln1B = take(hf, p + "input_layernorm.bias", src);
    // nn.Linear stores [out, in]; the fused QKV output rows are ordered (head, qkv, dh).
    at::Tensor qkv = take(hf, p + "attention.query_key_value.weight", src).view({H, 3, dh, d});
    L.W_QKV = qkv.permute({3, 1, 0, 2}).contiguous();
    at::Tensor zerosQKV = at::zeros({3 * d}, qkv.options());
    L.b_QKV = takeOr(hf, p + "attention.query_key_value.bias", zerosQKV).view({H, 3, dh}).permute({1, 0, 2}).contiguous();
    L.W_O = take(hf, p + "attention.dense.weight", src).t().reshape({H, dh, d}).contiguous();
    L.b_O = takeOr(hf, p + "attention.dense.bias", at::zeros({d}, qkv.options()));
    L.ln2W = take(hf, p + "post_attention_layernorm.weight", src);
    L.ln2B = take(hf, p + "post_attention_layernorm.bias", src);
    L.W_in = take(hf, p + "mlp.dense_h_to_4h.weight", src).t().contiguous();
    L.b_in = takeOr(hf, p + "mlp.dense_h_to_4h.bias", at::zeros({c.dMlp}, qkv.options()));
    L.W_out = take(hf, p + "mlp.dense_4h_to_h.weight", src).t().contiguous();
    L.b_out = takeOr(hf, p + "mlp.dense_4h_to_h.bias", at::zeros({d}, qkv.options()));
    w.layers.push_back(std::move(L));
  }
  w.lnFinalW = take(hf, "gpt_neox.final_layer_norm.weight", src);
  w.lnFinalB = take(hf, "gpt_neox.final_layer_norm.bias", src);
  w.W_U = take(hf, "embed_out.weight", src).t().contiguous();
  w.b_U = at::zeros({c.vocabSize}, w.W_E.options());
  return w;
}

template <class Fn>
void forEachWeight(Weights& w, Fn&& fn) {
  fn(w.W_E), fn(w.W_pos), fn(w.lnFinalW), fn(w.lnFinalB), fn(w.W_U), fn(w.b_U);
  for (auto& L : w.layers) {
    for (at::Tensor* t : {&L.ln1W, &L.ln1B, &L.W_QKV, &L.b_QKV, &L.W_O, &L.b_O, &L.ln2W, &L.ln2B, &L.W_in, &L.b_in,
                          &L.W_out, &L.b_out})
      fn(*t);
  }
}

}  // namespace

Weights weightsFromHuggingFace(const ModelConfig& cfg, std::map<std::string, at::Tensor>& hf, const std::string& source) {
  return cfg.arch == Arch::GPT2 ? fromGpt2(cfg, hf, source) : fromNeoX(cfg, hf, source);
}

std::map<std::string, at::Tensor> weightsToHuggingFace(const ModelConfig& c, const Weights& w) {
  if (!w.lnFinalW.defined())
    throw InvalidArgument("only a model loaded with processing 'none' can be saved in Hugging Face layout (processing folds the LayerNorms away)");
  const int64_t d = c.dModel, H = c.nHeads, dh = c.dHead;
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
      put(p + "attn.c_attn.weight", L.W_QKV.reshape({d, 3 * H * dh}));
      put(p + "attn.c_attn.bias", L.b_QKV.reshape({3 * H * dh}));
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
  put("gpt_neox.embed_in.weight", w.W_E);
  for (int64_t l = 0; l < c.nLayers; ++l) {
    const std::string p = "gpt_neox.layers." + std::to_string(l) + ".";
    const LayerWeights& L = w.layers[l];
    put(p + "input_layernorm.weight", L.ln1W);
    put(p + "input_layernorm.bias", L.ln1B);
    // Back to nn.Linear [out, in] with output rows ordered (head, qkv, dh).
    put(p + "attention.query_key_value.weight", L.W_QKV.permute({2, 1, 3, 0}).reshape({3 * d, d}));
    put(p + "attention.query_key_value.bias", L.b_QKV.permute({1, 0, 2}).reshape({3 * d}));
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
  // The tied GPT-2 unembedding is a view of W_E: keep it one after the move.
  bool tied = w.W_U.defined() && w.W_E.defined() && w.W_U.is_alias_of(w.W_E);
  forEachWeight(w, [&](at::Tensor& t) {
    if (t.defined()) t = t.to(device, dtype);
  });
  if (tied) w.W_U = w.W_E.t();
}

std::vector<std::string> weightNames(const Weights& w) {
  std::vector<std::string> names = {"embed.W_E"};
  if (w.W_pos.defined()) names.push_back("pos_embed.W_pos");
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const std::string p = "blocks." + std::to_string(l) + ".";
    if (w.layers[l].ln1W.defined()) names.insert(names.end(), {p + "ln1.w", p + "ln1.b"});
    names.insert(names.end(), {p + "attn.W_Q", p + "attn.W_K", p + "attn.W_V", p + "attn.W_O", p + "attn.b_Q",
                               p + "attn.b_K", p + "attn.b_V", p + "attn.b_O"});
    if (w.layers[l].ln2W.defined()) names.insert(names.end(), {p + "ln2.w", p + "ln2.b"});
    names.insert(names.end(), {p + "mlp.W_in", p + "mlp.b_in", p + "mlp.W_out", p + "mlp.b_out"});
  }
  if (w.lnFinalW.defined()) names.insert(names.end(), {"ln_final.w", "ln_final.b"});
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
  // W_Q/W_K/W_V are [H, d, dh] views of the fused [d, 3, H, dh] matrix.
  if (rest == "attn.W_Q") return L.W_QKV.select(1, 0).permute({1, 0, 2});
  if (rest == "attn.W_K") return L.W_QKV.select(1, 1).permute({1, 0, 2});
  if (rest == "attn.W_V") return L.W_QKV.select(1, 2).permute({1, 0, 2});
  if (rest == "attn.b_Q") return L.b_QKV.select(0, 0);
  if (rest == "attn.b_K") return L.b_QKV.select(0, 1);
  if (rest == "attn.b_V") return L.b_QKV.select(0, 2);
  if (rest == "attn.W_O") return L.W_O;
  if (rest == "attn.b_O") return L.b_O;
  if (rest == "ln1.w") return defined(L.ln1W);
  if (rest == "ln1.b") return defined(L.ln1B);
  if (rest == "ln2.w") return defined(L.ln2W);
  if (rest == "ln2.b") return defined(L.ln2B);
  if (rest == "mlp.W_in") return L.W_in;
  if (rest == "mlp.b_in") return L.b_in;
  if (rest == "mlp.W_out") return L.W_out;
  if (rest == "mlp.b_out") return L.b_out;
  throw unknown();
}

}  // namespace tc
