#include "model/hooks.h"

#include "core/errors.h"

namespace tc {

namespace {

const char* modelHookName(ModelHook h) {
  switch (h) {
    case ModelHook::Embed: return "hook_embed";
    case ModelHook::PosEmbed: return "hook_pos_embed";
    case ModelHook::LnFinalScale: return "ln_final.hook_scale";
    case ModelHook::LnFinalNormalized: return "ln_final.hook_normalized";
    case ModelHook::UnembedPre: return "unembed.hook_pre";  // what the unembedding reads (the final norm's output)
    default: return "";
  }
}

const char* blockHookSuffix(BlockHook h) {
  switch (h) {
    case BlockHook::ResidPre: return "hook_resid_pre";
    case BlockHook::Ln1Scale: return "ln1.hook_scale";
    case BlockHook::Ln1Normalized: return "ln1.hook_normalized";
    case BlockHook::AttnQ: return "attn.hook_q";
    case BlockHook::AttnK: return "attn.hook_k";
    case BlockHook::AttnV: return "attn.hook_v";
    case BlockHook::AttnRotQ: return "attn.hook_rot_q";
    case BlockHook::AttnRotK: return "attn.hook_rot_k";
    case BlockHook::AttnScores: return "attn.hook_attn_scores";
    case BlockHook::AttnPattern: return "attn.hook_pattern";
    case BlockHook::AttnZ: return "attn.hook_z";
    case BlockHook::Ln1PostScale: return "ln1_post.hook_scale";  // Gemma's post-attention norm
    case BlockHook::Ln1PostNormalized: return "ln1_post.hook_normalized";
    case BlockHook::AttnOut: return "hook_attn_out";
    case BlockHook::ResidMid: return "hook_resid_mid";
    case BlockHook::Ln2Scale: return "ln2.hook_scale";
    case BlockHook::Ln2Normalized: return "ln2.hook_normalized";
    case BlockHook::MlpIn: return "mlp.hook_in";  // exactly the tensor the MLP receives
    case BlockHook::MlpPre: return "mlp.hook_pre";  // gated MLPs: the gate projection
    case BlockHook::MlpPreLinear: return "mlp.hook_pre_linear";  // gated MLPs: the up projection
    case BlockHook::MlpPost: return "mlp.hook_post";
    case BlockHook::Ln2PostScale: return "ln2_post.hook_scale";  // Gemma's post-feedforward norm
    case BlockHook::Ln2PostNormalized: return "ln2_post.hook_normalized";
    case BlockHook::MlpHookOut: return "mlp.hook_out";  // exactly what the MLP adds to the residual
    case BlockHook::MlpOut: return "hook_mlp_out";
    case BlockHook::ResidPost: return "hook_resid_post";
    default: return "";
  }
}

bool exists(const ModelConfig& cfg, ModelHook h) { return h != ModelHook::PosEmbed || cfg.rotaryDim == 0; }

bool exists(const ModelConfig& cfg, BlockHook h) {
  if (h == BlockHook::ResidMid) return !cfg.parallelResidual;  // a parallel block has no resid_mid
  if (h == BlockHook::AttnRotQ || h == BlockHook::AttnRotK) return cfg.rotaryDim > 0;
  if (h == BlockHook::MlpPreLinear) return cfg.gatedMlp;
  if (h == BlockHook::Ln1PostScale || h == BlockHook::Ln1PostNormalized || h == BlockHook::Ln2PostScale ||
      h == BlockHook::Ln2PostNormalized)
    return cfg.sandwichNorms;
  return true;
}

std::string blockHookName(int64_t layer, BlockHook h) {
  return "blocks." + std::to_string(layer) + "." + blockHookSuffix(h);
}

}  // namespace

std::string hookName(int64_t layer, BlockHook h) { return blockHookName(layer, h); }
std::string hookName(ModelHook h) { return modelHookName(h); }

std::vector<std::string> hookNames(const ModelConfig& cfg) {
  std::vector<std::string> names;
  for (ModelHook h : {ModelHook::Embed, ModelHook::PosEmbed})
    if (exists(cfg, h)) names.push_back(modelHookName(h));
  for (int64_t l = 0; l < cfg.nLayers; ++l)
    for (size_t i = 0; i < static_cast<size_t>(BlockHook::Count); ++i)
      if (exists(cfg, BlockHook(i))) names.push_back(blockHookName(l, BlockHook(i)));
  names.push_back(modelHookName(ModelHook::LnFinalScale));
  names.push_back(modelHookName(ModelHook::LnFinalNormalized));
  names.push_back(modelHookName(ModelHook::UnembedPre));
  return names;
}

HookCapture::HookCapture(const ModelConfig& cfg, const std::vector<std::string>& names) {
  if (names.empty()) return;
  blocks_.assign(cfg.nLayers, {});
  for (const auto& name : names) {
    bool found = false;
    for (size_t i = 0; i < model_.size() && !found; ++i) {
      if (exists(cfg, ModelHook(i)) && name == modelHookName(ModelHook(i))) model_[i] = found = true;
    }
    for (int64_t l = 0; l < cfg.nLayers && !found; ++l) {
      for (size_t i = 0; i < static_cast<size_t>(BlockHook::Count) && !found; ++i) {
        if (exists(cfg, BlockHook(i)) && name == blockHookName(l, BlockHook(i))) blocks_[l][i] = found = true;
      }
    }
    if (!found) throw InvalidArgument("unknown hook '" + name + "' for this model (see model.hookNames)");
  }
}

void HookCapture::record(ModelHook h, const at::Tensor& t) {
  if (wants(h)) tensors_[modelHookName(h)] = t;
}

void HookCapture::record(int64_t layer, BlockHook h, const at::Tensor& t) {
  if (wants(layer, h)) tensors_[blockHookName(layer, h)] = t;
}

}  // namespace tc
