// Hook points of the forward pass, named as in TransformerLens so that activations, transcoder
// configs and circuit code share one vocabulary ("blocks.8.ln2.hook_normalized", ...).
#pragma once
#include <ATen/Tensor.h>

#include <array>
#include <map>
#include <string>
#include <vector>

#include "model/config.h"

namespace tc {

enum class ModelHook { Embed, PosEmbed, LnFinalScale, LnFinalNormalized, UnembedPre, Count };

enum class BlockHook {
  ResidPre, Ln1Scale, Ln1Normalized, AttnQ, AttnK, AttnV, AttnRotQ, AttnRotK, AttnScores, AttnPattern, AttnZ,
  Ln1PostScale, Ln1PostNormalized, AttnOut, ResidMid, Ln2Scale, Ln2Normalized, MlpIn, MlpPre, MlpPreLinear, MlpPost,
  Ln2PostScale, Ln2PostNormalized, MlpHookOut, MlpOut, ResidPost, Count
};

// The name of a hook ("blocks.3.ln2.hook_scale", "ln_final.hook_scale").
std::string hookName(int64_t layer, BlockHook h);
std::string hookName(ModelHook h);

// Every hook name a model of this configuration has, in forward order.
std::vector<std::string> hookNames(const ModelConfig& cfg);

// A set of requested hooks, resolved once from names; collects their tensors during a forward.
class HookCapture {
 public:
  // Throws InvalidArgument naming the first unknown hook.
  HookCapture(const ModelConfig& cfg, const std::vector<std::string>& names);
  HookCapture() = default;

  bool wants(ModelHook h) const { return model_[static_cast<size_t>(h)]; }
  bool wants(int64_t layer, BlockHook h) const {
    return !blocks_.empty() && blocks_[layer][static_cast<size_t>(h)];
  }
  void record(ModelHook h, const at::Tensor& t);
  void record(int64_t layer, BlockHook h, const at::Tensor& t);

  std::map<std::string, at::Tensor>& tensors() { return tensors_; }

 private:
  std::array<bool, static_cast<size_t>(ModelHook::Count)> model_{};
  std::vector<std::array<bool, static_cast<size_t>(BlockHook::Count)>> blocks_;
  std::map<std::string, at::Tensor> tensors_;
};

}  // namespace tc
