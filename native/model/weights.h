// Canonical weights of a transformer, in TransformerLens layout (row vectors, x @ W), mapped
// from the Hugging Face checkpoint keys of GPT-2, GPT-NeoX and the Llama and Gemma families (see
// docs/models.md). Attention Q/K/V are stored fused ([d, (H + 2K) dh]: H query heads, then K key
// and K value heads) so the forward does one GEMM; the TransformerLens-shaped W_Q ([H, d, dh]) and
// W_K/W_V ([K, d, dh]) are views into it.
#pragma once
#include <ATen/Tensor.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model/config.h"

namespace tc {

struct LayerWeights {
  at::Tensor ln1W, ln1B;    // [d] attention input norm; undefined once folded (ln1B: LayerNorm only)
  at::Tensor W_QKV;         // [d, (H + 2K) dh]
  at::Tensor b_QKV;         // [(H + 2K) dh] (zeros where the checkpoint has none)
  at::Tensor qNormW, kNormW;  // [dh] Qwen3/Gemma-3 per-head q/k RMSNorm
  at::Tensor W_O;           // [H, dh, d]
  at::Tensor b_O;           // [d]
  at::Tensor ln1PostW;      // [d] Gemma post-attention norm (its output is what attention adds)
  at::Tensor ln2W, ln2B;    // [d] MLP input norm; undefined once folded
  at::Tensor W_gate, b_gate;  // [d, dm], [dm] gated MLPs only
  at::Tensor W_in, b_in;    // [d, dm], [dm] (the up projection of a gated MLP)
  at::Tensor W_out, b_out;  // [dm, d], [d]
  at::Tensor ln2PostW;      // [d] Gemma post-feedforward norm
};

struct Weights {
  at::Tensor W_E;    // [V, d]
  at::Tensor W_pos;  // [n_ctx, d]; undefined for rotary models
  std::vector<LayerWeights> layers;
  at::Tensor lnFinalW, lnFinalB;  // [d]; undefined once folded (lnFinalB: LayerNorm only)
  at::Tensor W_U;  // [d, V]
  at::Tensor b_U;  // [V]
};

// Checkpoint tensors by Hugging Face name, read one at a time so that loading never holds the
// whole file next to the converted weights (peak memory: the weights plus one tensor).
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual bool has(const std::string& key) const = 0;
  // The tensor under `key`, as a CPU tensor of the file's dtype; each key is read once.
  virtual at::Tensor read(const std::string& key) = 0;
  virtual const std::string& name() const = 0;  // for errors: the model folder
};

// A TensorSource over tensors already in memory (tests, weights built in C++).
class MapTensorSource : public TensorSource {
 public:
  MapTensorSource(std::map<std::string, at::Tensor> tensors, std::string name) : t_(std::move(tensors)), name_(std::move(name)) {}
  bool has(const std::string& key) const override { return t_.count(key) > 0; }
  at::Tensor read(const std::string& key) override;
  const std::string& name() const override { return name_; }

 private:
  std::map<std::string, at::Tensor> t_;
  std::string name_;
};

// Builds canonical weights of `dtype` on `device` from checkpoint tensors keyed by their Hugging
// Face names (GPT-2 keys without the "transformer." prefix), converting each tensor as it is read.
// Throws FormatError naming the key for a missing tensor.
Weights weightsFromHuggingFace(const ModelConfig& cfg, TensorSource& hf, c10::Device device, c10::ScalarType dtype);

// The inverse of weightsFromHuggingFace: checkpoint tensors (contiguous, Hugging Face names without
// the "transformer." prefix). Needs unprocessed weights (norm parameters present).
std::map<std::string, at::Tensor> weightsToHuggingFace(const ModelConfig& cfg, const Weights& w);

// Every distinct trainable tensor (a tied unembedding is W_E's view and not listed).
std::vector<at::Tensor*> trainableWeights(Weights& w);

// Moves every weight to `device` / `dtype` (views stay views when nothing changes).
void castWeights(Weights& w, c10::Device device, c10::ScalarType dtype);

// The per-dimension factor a norm multiplies by: its weight, or (1 + weight) for Gemma's norms;
// undefined when the norm has no weight (folded).
at::Tensor normGain(const ModelConfig& cfg, const at::Tensor& weight);

// TransformerLens names ("blocks.0.attn.W_Q", "unembed.W_U", ...) of the weights that exist.
std::vector<std::string> weightNames(const Weights& w);
// The weight under a TransformerLens name; throws InvalidArgument for an unknown name.
at::Tensor weightByName(const Weights& w, const std::string& name);

}  // namespace tc
