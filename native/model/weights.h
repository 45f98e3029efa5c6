// Canonical weights of a transformer, in TransformerLens layout (row vectors, x @ W), mapped
// from the Hugging Face checkpoint keys of GPT-2 and GPT-NeoX (see docs/models.md).
// Attention Q/K/V are stored fused ([d, 3, H, dh]) so the forward does one GEMM; the
// TransformerLens-shaped W_Q/W_K/W_V ([H, d, dh]) are views into it.
#pragma once
#include <ATen/Tensor.h>

#include <map>
#include <string>
#include <vector>

#include "model/config.h"

namespace tc {

struct LayerWeights {
  at::Tensor ln1W, ln1B;  // [d]; undefined once folded (LayerNormPre)
  at::Tensor W_QKV;       // [d, 3, H, dh]
  at::Tensor b_QKV;       // [3, H, dh]
  at::Tensor W_O;         // [H, dh, d]
  at::Tensor b_O;         // [d]
  at::Tensor ln2W, ln2B;  // [d]; undefined once folded
  at::Tensor W_in, b_in;  // [d, dm], [dm]
  at::Tensor W_out, b_out;  // [dm, d], [d]
};

struct Weights {
  at::Tensor W_E;    // [V, d]
  at::Tensor W_pos;  // [n_ctx, d]; undefined for rotary models
  std::vector<LayerWeights> layers;
  at::Tensor lnFinalW, lnFinalB;  // [d]; undefined once folded
  at::Tensor W_U;  // [d, V]
  at::Tensor b_U;  // [V]
};

// Builds float32 canonical weights from checkpoint tensors keyed by their Hugging Face names
// (GPT-2 keys without the "transformer." prefix). Throws FormatError for a missing key.
Weights weightsFromHuggingFace(const ModelConfig& cfg, std::map<std::string, at::Tensor>& hf, const std::string& source);

// The inverse of weightsFromHuggingFace: checkpoint tensors (contiguous, Hugging Face names without
// the "transformer." prefix). Needs unprocessed weights (LayerNorm parameters present).
std::map<std::string, at::Tensor> weightsToHuggingFace(const ModelConfig& cfg, const Weights& w);

// Every distinct trainable tensor (the tied GPT-2 unembedding is W_E's view and not listed).
std::vector<at::Tensor*> trainableWeights(Weights& w);

// Moves every weight to `device` / `dtype` (views stay views when nothing changes).
void castWeights(Weights& w, c10::Device device, c10::ScalarType dtype);

// TransformerLens names ("blocks.0.attn.W_Q", "unembed.W_U", ...) of the weights that exist.
std::vector<std::string> weightNames(const Weights& w);
// The weight under a TransformerLens name; throws InvalidArgument for an unknown name.
at::Tensor weightByName(const Weights& w, const std::string& name);

}  // namespace tc
