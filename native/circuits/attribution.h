// Attribution primitives of the transcoder-circuits method (paper-method.md §3) on one prompt:
// with transcoders in place of MLPs, the contribution of an upstream component to a direction read
// at a later point of the residual stream is linear, once each LayerNorm is frozen to its
// input-dependent constant 1/scale. Everything here works on a TransformerLens-processed model
// (mean-zero residual stream, folded value biases), where these decompositions are exact.
#pragma once
#include <ATen/Tensor.h>

#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "model/transformer.h"
#include "transcoder/transcoder.h"

namespace tc {

// Where a direction is read: the residual stream before a block, between attention and MLP
// (sequential blocks), after the block.
enum class Sublayer { ResidPre, ResidMid, ResidPost };

enum class NodeKind { Feature, Attention, Embedding };

// One term of a decomposition: a component at (layer, position) whose contribution to the parent
// direction is `contrib`, and the direction `vector` (on the residual stream at `sublayer` of
// `layer`, position `position`) whose dot product with that residual equals `contrib`.
struct AttributionNode {
  NodeKind kind = NodeKind::Feature;
  int64_t layer = 0;
  int64_t position = 0;
  int64_t feature = -1;  // Feature
  int64_t head = -1;     // Attention
  int64_t source = -1;   // Attention: the source position (== position)
  double contrib = 0;
  bool capped = false;   // contrib was clipped to the path's cap ("zero-ablation" mode)
  double gradient = 0;   // Feature: W_dec[i] . parent vector (the parent's gradient through this feature)
  Sublayer sublayer = Sublayer::ResidPre;
  at::Tensor vector;     // [d]
};

class AttributionContext {
 public:
  // Runs the model once on `tokens` ([T]) and every transcoder on its layer's MLP input.
  AttributionContext(std::shared_ptr<const Transformer> model, std::map<int64_t, std::shared_ptr<Transcoder>> transcoders,
                     const at::Tensor& tokens);

  int64_t length() const { return T_; }
  const Transformer& model() const { return *model_; }

  // 1 / scale of the LayerNorm reading the residual at (layer, position): ln1 reads resid_pre,
  // ln2 the MLP input; layer == nLayers means ln_final.
  double lnConstant(int64_t layer, int64_t position, bool ln2) const;
  // The residual stream at (layer, sublayer) [T, d].
  const at::Tensor& residual(int64_t layer, Sublayer sublayer) const;
  // The sublayer an MLP (transcoder) at `layer` reads.
  Sublayer mlpInput() const { return parallel_ ? Sublayer::ResidPre : Sublayer::ResidMid; }

  // Transcoder feature activations [T, m] and outputs [T, d] of a layer.
  const at::Tensor& activations(int64_t layer) const;
  const at::Tensor& transcoderOutput(int64_t layer) const;
  const Transcoder& transcoder(int64_t layer) const;

  // Contributions of every feature of `layer`'s transcoder to direction v (read on that layer's
  // MLP output) at `position`: (W_dec v) * f, [m].
  at::Tensor featureContributions(const at::Tensor& v, int64_t layer, int64_t position) const;
  // The top-k of those as nodes whose vectors live on the MLP input residual (LN constant applied);
  // without `withVectors` the vectors are left for materialize().
  std::vector<AttributionNode> featureChildren(const at::Tensor& v, int64_t layer, int64_t position, int64_t k,
                                               bool withVectors = true) const;
  // Fills in the vector of a child of a node with vector v (children() builds vectors only for the
  // candidates it returns).
  void materialize(AttributionNode& child, const at::Tensor& v, int64_t parentPosition) const;
  // Per head and source position, the contribution of attention at `layer` to v read at `position`
  // on the attention output: pattern[h, t, s] * (v_s,h W_O[h]) . v, [H, T].
  at::Tensor attentionContributions(const at::Tensor& v, int64_t layer, int64_t position) const;
  AttributionNode attentionChild(const at::Tensor& v, int64_t layer, int64_t position, int64_t head, int64_t source,
                                 double contrib) const;
  // v . (token + position embedding) at `position`.
  double embeddingContribution(const at::Tensor& v, int64_t position) const;
  // v . (MLP output - transcoder output) at (layer, position).
  double transcoderError(const at::Tensor& v, int64_t layer, int64_t position) const;

  // A transcoder feature as a root: vector W_enc[:, F] / scale on its MLP input, contrib = its activation.
  AttributionNode featureRoot(int64_t layer, int64_t feature, int64_t position) const;
  // Every candidate child of a node (§3.4): the top k transcoder features of each earlier layer, the top
  // k (head, source) pairs of each earlier attention layer, and the embedding; then the top k of all by
  // contribution. `ignoreBos` drops attention from source 0; contributions above `cap` (when finite)
  // are clipped to it and marked capped.
  // With `keepAll`, every candidate is returned (sorted), not only the global top k (for filters).
  std::vector<AttributionNode> children(const AttributionNode& parent, int64_t k, bool ignoreBos,
                                        double cap = std::numeric_limits<double>::quiet_NaN(), bool keepAll = false) const;
  // The layers whose MLP / attention write into the residual at (layer, sublayer).
  int64_t mlpLayersBefore(int64_t layer, Sublayer s) const;
  int64_t attentionLayersBefore(int64_t layer, Sublayer s) const;

 private:
  std::shared_ptr<const Transformer> model_;
  std::map<int64_t, std::shared_ptr<Transcoder>> transcoders_;
  bool parallel_;
  int64_t T_;
  std::vector<at::Tensor> residPre_, residMid_, residPost_;  // [T, d] per layer
  std::vector<at::Tensor> ln1Scale_, ln2Scale_;              // [T] per layer
  at::Tensor lnFinalScale_;                                   // [T]
  std::vector<at::Tensor> pattern_, values_, mlpOut_, mlpIn_;  // [H, T, T], [T, H, dh], [T, d], [T, d]
  std::map<int64_t, at::Tensor> acts_;                        // [T, m]
  // Transcoder outputs [T, d], decoded on first use (only error terms need them).
  mutable std::map<int64_t, at::Tensor> tcOut_;
  mutable std::mutex tcOutMutex_;
};

}  // namespace tc
