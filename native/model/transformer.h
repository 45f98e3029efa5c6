// The forward pass of a decoder-only transformer (GPT-2, GPT-NeoX/Pythia, Llama/Mistral/Qwen2/Qwen3,
// Gemma-2/Gemma-3), written with
// ATen operations that support autograd, with TransformerLens hook points and MLP splicing.
#pragma once
#include <ATen/Tensor.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/hooks.h"
#include "model/weights.h"

namespace tc {

// What replaces one layer's MLP output (hook_mlp_out) in a forward pass.
struct MlpReplacement {
  enum class Kind { Zero, Mean, Value, Module };
  // What a Module reads: the MLP's input (its LayerNorm's output, mlp.hook_in) or the residual
  // stream the MLP block reads before that LayerNorm (resid_mid; resid_pre in parallel blocks).
  enum class Input { MlpIn, Residual };
  Kind kind = Kind::Zero;
  Input input = Input::MlpIn;
  at::Tensor value;  // Mean: [d] (undefined: the mean over this batch's positions); Value: broadcastable to [B, T, d]
  // Module: called with (its input, original MLP output) and returns [B, T, d].
  // Transcoders and JS callbacks plug in here.
  std::function<at::Tensor(const at::Tensor& mlpIn, const at::Tensor& mlpOut)> module;
  bool moduleNeedsOriginal = true;
};

struct ForwardOptions {
  std::vector<std::string> hooks;                 // names of activations to return
  std::map<int64_t, MlpReplacement> mlpReplacements;
  bool grad = false;                              // record autograd history
  bool logits = true;                             // compute the unembedding
  int64_t stopAfterLayer = -1;                    // >= 0: run blocks 0..stopAfterLayer only (activation collection)
  // Padded batches: the number of real tokens of each row ([B], integer; undefined: all T are real)
  // and whether the padding precedes them. Pads are masked out of attention, real tokens get
  // positions 0..n-1, and 'mean' replacements average real positions only.
  at::Tensor lengths;
  bool padLeft = false;
  // Values to use instead of computing them, by hook name: attention patterns
  // ("blocks.L.attn.hook_pattern", [B or 1, H, T, T]) and norm scales ("*.hook_scale", [B or 1, T, 1]):
  // interventions with frozen attention / direct effects replay a clean run's.
  std::map<std::string, at::Tensor> replay;
};

struct ForwardResult {
  at::Tensor logits;                      // [B, T, V]
  std::map<std::string, at::Tensor> cache;
};

class Transformer {
 public:
  Transformer(ModelConfig cfg, Weights weights);

  const ModelConfig& config() const { return cfg_; }
  const Weights& weights() const { return w_; }
  // Mutable weights for LanguageModelTrainer, which updates them in place.
  Weights& weightsForTraining() { return w_; }
  c10::Device device() const { return w_.W_E.device(); }

  // Checks tokens (int32/int64, [T] or [B, T], ids in range, T within the context) and returns
  // them as int64 [B, T] on the model's device.
  at::Tensor prepareTokens(const at::Tensor& tokens) const;
  ForwardResult forward(const at::Tensor& tokens, const ForwardOptions& options) const;
  // Mean next-token cross-entropy (nats) of logits [B, T, V] for tokens [B, T]; per-token
  // losses [B, T - 1] when `perToken`. With `real` ([B, T] bool, from realPositions) only
  // predictions from a real token of a real token count; the others are NaN per token.
  static at::Tensor nextTokenLoss(const at::Tensor& logits, const at::Tensor& tokens, bool perToken,
                                  const at::Tensor& real = {});
  // [B, T] bool, true at real tokens, for options.lengths (checked: [B], each in [1, T]);
  // undefined when every position is real.
  static at::Tensor realPositions(const ForwardOptions& options, int64_t B, int64_t T, c10::Device device);

 private:
  // The model's norm over the last axis: LayerNorm (LayerNormPre when w/b are undefined) or RMSNorm
  // (RMSNormPre when w is undefined); fills *scale when asked (hook_scale).
  // A defined `fixedScale` is used instead of the input's own scale. *normalized gets what
  // TransformerLens's hook_normalized records: a LayerNorm's output, an RMSNorm's x / scale before
  // its gain.
  at::Tensor norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, at::Tensor* scale,
                  const at::Tensor& fixedScale = {}, at::Tensor* normalized = nullptr) const;
  // A block's norm, recording its hook_scale / hook_normalized when requested (and replaying a scale
  // given in options.replay).
  at::Tensor observedNorm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, HookCapture& hooks, int64_t layer,
                          BlockHook scaleHook, BlockHook normalizedHook, const ForwardOptions& options) const;
  // Per-forward tables shared by all layers.
  struct Positions {
    at::Tensor future;   // [T, T] bool, true above the diagonal (masked keys)
    at::Tensor blocked;  // padded batches: [B, 1, T, T] bool, future and pad keys (a pad query keeps itself)
    at::Tensor ids;      // padded batches: [B, T] int64 position of each token (real tokens 0..n-1)
    std::vector<at::Tensor> rotary;          // per config rope: [2, B or 1, T, rotaryDim] cos/sin
    std::map<int64_t, at::Tensor> windowed;  // sliding window -> blocked keys (future, pads, too far back)
    const at::Tensor& mask(int64_t window) const { return window > 0 ? windowed.at(window) : blocked.defined() ? blocked : future; }
  };
  Positions positions(int64_t T, const at::Tensor& real) const;
  at::Tensor attention(int64_t layer, const at::Tensor& x, const Positions& pos, HookCapture& hooks, const ForwardOptions& options) const;
  at::Tensor mlp(int64_t layer, const at::Tensor& x, HookCapture& hooks, const ForwardOptions& options) const;
  // `x` is the MLP's input, `residual` the residual stream its LayerNorm read.
  at::Tensor mlpOrReplacement(int64_t layer, const at::Tensor& x, const at::Tensor& residual, const ForwardOptions& options,
                              HookCapture& hooks) const;
  at::Tensor block(int64_t layer, const at::Tensor& residPre, const Positions& pos, const ForwardOptions& options,
                   HookCapture& hooks) const;

  ModelConfig cfg_;
  Weights w_;
};

}  // namespace tc
