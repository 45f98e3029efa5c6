// The replacement model: one language model and its transcoders keyed by layer, each with its
// placement (which tensor of the block it reads, which it reconstructs), validated once here.
// Everything that runs "the model with transcoders" (evaluation, attribution, connections, the
// greedy search, feature cards) takes one of these instead of re-pairing models and transcoders.
#pragma once
#include <ATen/Tensor.h>

#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include "model/transformer.h"
#include "transcoder/cross_layer.h"
#include "transcoder/transcoder.h"

namespace tc {

// Where a transcoder sits in block `layer`. The input is what the MLP receives (its LayerNorm's
// output: `ln2.hook_normalized` / `mlp.hook_in`) or the residual the MLP block reads before that
// LayerNorm (`hook_resid_mid`; `hook_resid_pre` in parallel blocks). The output is always what the
// MLP adds to the residual (`hook_mlp_out` / `mlp.hook_out`).
struct Placement {
  int64_t layer = -1;
  std::string hookIn, hookOut;
  MlpReplacement::Input input = MlpReplacement::Input::MlpIn;
};

// What a transcoder reading `hookIn` receives in the forward: the residual for `hook_resid_mid` /
// `hook_resid_pre`, else the MLP's input.
MlpReplacement::Input inputOfHook(const std::string& hookIn);

// Checks a transcoder's declared hooks against a model and resolves its placement; throws
// InvalidArgument naming the hooks when the pair is not an MLP replacement the model has.
Placement resolvePlacement(const Transformer& model, const TranscoderSpec& spec);

class ReplacementModel {
 public:
  // Validates every transcoder against the model: layer range, hooks, widths, device, duplicates.
  ReplacementModel(std::shared_ptr<const Transformer> model, const std::vector<std::shared_ptr<Transcoder>>& transcoders);
  // A cross-layer transcoder in place of every MLP: its hooks checked at every layer, its device.
  ReplacementModel(std::shared_ptr<const Transformer> model, std::shared_ptr<CrossLayerTranscoder> crossLayer);

  // The cross-layer transcoder, or null when the layers have transcoders of their own.
  const CrossLayerTranscoder* crossLayer() const { return crossLayer_.get(); }
  const std::shared_ptr<CrossLayerTranscoder>& crossLayerPtr() const { return crossLayer_; }
  // Features of layer `layer`'s transcoder (of its source layer, for a cross-layer transcoder).
  int64_t featureCount(int64_t layer) const;
  // Layer `layer`'s skip weight [d_in, d_out] (undefined without a skip connection).
  at::Tensor skipWeight(int64_t layer) const;
  // Shared locks of every transcoder, for readers on a worker (graphs, interventions).
  std::vector<std::shared_lock<std::shared_mutex>> readLocks() const;

  const Transformer& model() const { return *model_; }
  const std::shared_ptr<const Transformer>& modelPtr() const { return model_; }
  // Layers with a transcoder, ascending.
  std::vector<int64_t> layers() const;
  bool has(int64_t layer) const { return slots_.count(layer) > 0; }
  // Throws InvalidArgument naming the layer when it has no transcoder (or only a cross-layer one).
  const Transcoder& transcoder(int64_t layer) const;
  const std::shared_ptr<Transcoder>& transcoderPtr(int64_t layer) const;
  const Placement& placement(int64_t layer) const;

  // The layer's transcoder as an MLP replacement for a forward pass. `keep` ([dSae] bool, optional)
  // zeroes every feature it does not keep before decoding (feature ablations).
  MlpReplacement replacement(int64_t layer, const at::Tensor& keep = at::Tensor()) const;

 private:
  struct Slot {
    std::shared_ptr<Transcoder> transcoder;
    Placement placement;
  };
  const Slot& slot(int64_t layer) const;

  std::shared_ptr<const Transformer> model_;
  std::map<int64_t, Slot> slots_;  // a cross-layer transcoder's: placements only
  std::shared_ptr<CrossLayerTranscoder> crossLayer_;
};

// A transcoder as an MLP replacement reading `input`, with an optional feature mask.
MlpReplacement transcoderReplacement(std::shared_ptr<Transcoder> transcoder, MlpReplacement::Input input,
                                     const at::Tensor& keep = at::Tensor());

// Checks a cross-layer transcoder's per-layer hooks against a model (as resolvePlacement does for
// each layer) and returns the placements, one per layer 0..L-1.
std::vector<Placement> resolveCrossLayerPlacements(const Transformer& model, const CrossLayerSpec& spec);

// A cross-layer transcoder as the MLP replacement of every layer 0..L-1 for one forward pass: the
// replacements share the decoder outputs written so far (layer s's features write into layers
// s..L-1 as soon as s has run), so they must all be used, in one forward at a time. `keep` ([L, F]
// bool, optional) zeroes every feature it does not keep before decoding.
std::map<int64_t, MlpReplacement> crossLayerReplacements(std::shared_ptr<CrossLayerTranscoder> clt, MlpReplacement::Input input,
                                                         const at::Tensor& keep = at::Tensor());

}  // namespace tc
