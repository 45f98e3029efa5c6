// Attribution primitives of the transcoder-circuits method (paper-method.md §3) on one prompt:
// with transcoders in place of MLPs, the contribution of an upstream component to a direction read
// at a later point of the residual stream is linear, once each LayerNorm is frozen to its
// input-dependent constant 1/scale. A direction u read through a frozen LayerNorm with weight w and
// bias b reads the residual r as  u . (w * (r - mean r) / scale + b)  =  P(w * u) / scale . r + u . b
// (P removes the mean): the first term is a node's `vector`, the constant its `bias`. On a
// TransformerLens-processed model (w and b folded away, every write to the residual centred) this
// is the paper's u / scale with no bias, and the vectors are the paper's (no explicit centring);
// on a raw model the centring, the weights and the biases are applied exactly.
#pragma once
#include <ATen/Tensor.h>

#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "circuits/replacement_model.h"

namespace tc {

// Where a direction is read: the residual stream before a block, between attention and MLP
// (sequential blocks), after the block.
enum class Sublayer { ResidPre, ResidMid, ResidPost };

enum class NodeKind { Feature, Attention, Embedding, Logit };

// One term of a decomposition: a component at (layer, position) whose contribution to the parent
// direction is `contrib`, and the direction `vector` (on the residual stream at `sublayer` of
// `layer`, position `position`) with  vector . residual + bias == contrib  (for features: while the
// feature is active). `bias` is what no upstream component explains: LayerNorm and value biases
// read along the node, a feature's encoder bias.
struct AttributionNode {
  NodeKind kind = NodeKind::Feature;
  int64_t layer = 0;
  int64_t position = 0;
  int64_t feature = -1;  // Feature
  int64_t head = -1;     // Attention
  int64_t source = -1;   // Attention: the source position (== position)
  int64_t token = -1, minus = -1;  // Logit: the token (minus the other token, for a difference)
  double contrib = 0;
  double bias = 0;
  bool capped = false;   // contrib was clipped to the path's cap ("zero-ablation" mode)
  double gradient = 0;   // Feature: W_dec[i] . parent vector (the parent's gradient through this feature)
  Sublayer sublayer = Sublayer::ResidPre;
  at::Tensor vector;     // [d]
};

class AttributionContext {
 public:
  // Runs the model once on `tokens` ([T]) and every transcoder on its input.
  AttributionContext(std::shared_ptr<const ReplacementModel> replacement, const at::Tensor& tokens);

  int64_t length() const { return T_; }
  const Transformer& model() const { return replacement_->model(); }

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

  // A transcoder feature as a root: the vector of its encoder column on the residual the MLP reads
  // (W_enc[:, F] / scale on a processed model), contrib = its activation.
  AttributionNode featureRoot(int64_t layer, int64_t feature, int64_t position) const;
  // The logit of `token` (minus that of `minus`, when >= 0) at `position` as a root, read on the last
  // residual through ln_final; contrib = its value.
  AttributionNode logitRoot(int64_t position, int64_t token, int64_t minus) const;
  // A feature's own bias (not scaled by any gradient): b_enc - W_enc[:, F] . b_dec, plus its encoder
  // column read along the MLP LayerNorm's bias on a raw model (paper-method E5).
  double featureBias(int64_t layer, int64_t feature) const;
  // The activation of one feature at one position.
  double activation(int64_t layer, int64_t position, int64_t feature) const;
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
  // The residual-side vector of a direction u read through the LayerNorm (weight w, maybe undefined)
  // whose 1/scale is c, and the constant that the LayerNorm's bias b adds along u.
  at::Tensor throughNorm(const at::Tensor& u, const at::Tensor& w, double c) const;
  static double alongBias(const at::Tensor& u, const at::Tensor& b);
  // A feature's encoder column as read off the residual the MLP reads, at `position`, and its bias,
  // both scaled by `factor` (a parent's gradient through the feature).
  std::pair<at::Tensor, double> featureInput(int64_t layer, int64_t feature, int64_t position, double factor) const;

  std::shared_ptr<const ReplacementModel> replacement_;
  bool parallel_;
  bool centre_;  // raw model: LayerNorms centre their input explicitly (see the header comment)
  // A direction read off the residual at `position`, taken back through Gemma's post-attention norm
  // (frozen scale): what the attention output must carry. Identity without sandwich norms.
  at::Tensor beforeAttentionPostNorm(const at::Tensor& v, int64_t layer, int64_t position) const;
  int64_t T_;
  std::vector<at::Tensor> residPre_, residMid_, residPost_;  // [T, d] per layer
  std::vector<at::Tensor> ln1Scale_, ln2Scale_;              // [T] per layer
  at::Tensor lnFinalScale_;                                   // [T]
  std::vector<at::Tensor> pattern_, values_, mlpOut_;  // [H, T, T], [T, H, dh] (GQA: repeated per query head), [T, d]
  std::vector<at::Tensor> attnPostScale_;  // Gemma: [T] frozen scale of the post-attention norm
  std::map<int64_t, at::Tensor> tcIn_;                  // each transcoder's input [T, d]
  std::map<int64_t, at::Tensor> acts_;                        // [T, m]
  // Transcoder outputs [T, d], decoded on first use (only error terms need them).
  mutable std::map<int64_t, at::Tensor> tcOut_;
  mutable std::mutex tcOutMutex_;
};

}  // namespace tc
