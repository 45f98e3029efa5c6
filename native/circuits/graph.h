// Attribution graphs (circuit-tracer's method, ../docs/graphs.md): the direct effects between every
// active transcoder feature, error, token, positional embedding, bias and target of one prompt in
// the local replacement model, where attention patterns and norm scales are frozen and each MLP
// contributes its transcoder's reconstruction plus an error, with the transcoder's skip connection
// as the only linear path through it. Forward values stay the real model's.
//
// Rows (targets) come out of batched backward passes through the frozen model's transpose
// (circuits/frozen_transpose.h): for each batch of `batchSize` targets their reading vectors are
// injected as gradients and one pass yields every target's row, contracted with each source's vector:
//   A[t, s] = <source vector of s, d target_t / d (residual write at s)>.
// Targets are batched by (layer, position), and a batch runs over the layers below its targets and
// the prefix of positions up to them only.
// Rows are returned sparse (exact non-zeros, optionally top-k / thresholded), so that memory grows
// with the kept entries, never with n_nodes^2.
#pragma once
#include <ATen/Tensor.h>

#include <memory>
#include <mutex>
#include <vector>

#include "circuits/frozen_transpose.h"
#include "circuits/replacement_model.h"

namespace tc {

// What a row measures: a feature's pre-activation at its input hook, the demeaned logit of a token,
// or a direction read at the final norm's output (position -1: the last token).
struct GraphTarget {
  enum class Kind { Feature, Logit, Direction };
  Kind kind = Kind::Logit;
  int64_t layer = -1, position = -1, index = -1;  // index: feature (Feature) or token id (Logit)
  at::Tensor direction;                           // [d] (Direction)
};

// Rows in compressed form: row i's entries are columns[rowStart[i] : rowStart[i + 1]].
struct GraphRows {
  at::Tensor rowStart;      // [n + 1] int64
  at::Tensor columns;       // [nnz] int32, ascending within a row
  at::Tensor values;        // [nnz] float32
  at::Tensor targetValues;  // [n] float64: the target quantity itself (for completeness checks)
  at::Tensor droppedMass;   // [n] float64: sum of |A| of entries a top-k / threshold left out
};

class AttributionGraph {
 public:
  // Runs the prompt ([T] tokens) without grad: activations, errors, constants, and the frozen
  // patterns and scales of the backward passes. Every layer without a transcoder becomes a
  // whole-MLP error. `batchSize`: targets per backward pass.
  AttributionGraph(std::shared_ptr<const ReplacementModel> replacement, const at::Tensor& tokens, int64_t batchSize);

  int64_t length() const { return T_; }
  int64_t nLayers() const { return L_; }
  // Sources, in this order: active features sorted by (layer, position, index); errors (layer-major,
  // then position); tokens; learned positional embeddings (GPT-2 only); bias nodes for layers
  // 0..L-1 and one for the unembedding (index L).
  int64_t numFeatures() const { return featLayer_.size(0); }
  int64_t numSources() const;
  int64_t errorOffset() const { return numFeatures(); }
  int64_t tokenOffset() const { return errorOffset() + L_ * T_; }
  int64_t positionalOffset() const { return tokenOffset() + T_; }
  int64_t biasOffset() const { return positionalOffset() + (hasPositional_ ? T_ : 0); }
  bool hasPositional() const { return hasPositional_; }
  // Active features: layer, position, feature index (int64) and activation (float32), [numFeatures].
  const at::Tensor& featureLayers() const { return featLayer_; }
  const at::Tensor& featurePositions() const { return featPos_; }
  const at::Tensor& featureIndices() const { return featIdx_; }
  const at::Tensor& featureActivations() const { return featAct_; }
  // The model's logits at the last position [V] (float32, CPU), for choosing logit targets.
  const at::Tensor& lastLogits() const { return lastLogits_; }
  // Per error node, the norm of its vector [L * T] (float32, CPU).
  const at::Tensor& errorNorms() const { return errorNorms_; }

  // The rows of `targets`. Entries with |A| <= threshold are dropped; with topK > 0 only the topK
  // largest |A| of each row are kept (their dropped |A| is reported per row).
  GraphRows rows(const std::vector<GraphTarget>& targets, double threshold = 0.0, int64_t topK = 0) const;

 private:
  // The constant a target adds to its own quantity (encoder bias terms; b_U and the final norm's bias).
  double ownConstant(const GraphTarget& t, const at::Tensor& u) const;
  // A feature's encoder column [d] and the constant of its pre-activation (b_enc, and a per-layer
  // transcoder's input pre-bias through the column).
  at::Tensor encoderColumn(int64_t layer, int64_t feature) const;
  double encoderConstant(int64_t layer, int64_t feature) const;
  // The vector a target injects at its reading point ([d]).
  at::Tensor readingVector(const GraphTarget& t) const;
  // R[:, feature columns of `source`] += gradient at layer `target`'s MLP output [m, P, d] . what each
  // feature of `source` writes there.
  void contractFeatures(int64_t source, int64_t target, const at::Tensor& gMlp, at::Tensor& R) const;

  std::shared_ptr<const ReplacementModel> replacement_;
  int64_t T_ = 0, L_ = 0, B_ = 1;
  bool hasPositional_ = false;
  at::Tensor featLayer_, featPos_, featIdx_, featAct_;
  // Per source layer: positions [n_l], and activation x decoder rows [n_l, targets, d] (float32): one
  // target (its own MLP) for a per-layer transcoder, L - l for a cross-layer one.
  std::vector<at::Tensor> layerFeatPos_, layerSource_;
  std::vector<std::vector<int64_t>> layerPosStart_;     // per layer: first feature at each position [T + 1]
  std::vector<int64_t> layerFeatStart_;                 // per layer: first source index of its features
  std::vector<at::Tensor> errors_;                                  // per layer [T, d]
  std::vector<at::Tensor> attnConst_, mlpConst_;                    // per layer [T, d] / [d]
  at::Tensor embed_, posEmbed_;                                     // [T, d]
  at::Tensor lastLogits_, errorNorms_;
  std::vector<at::Tensor> targetValue_;                             // per layer: the input hook [T, d] (no grad)
  at::Tensor finalNormed_;                                          // ln_final output [T, d] (no grad)
  std::unique_ptr<FrozenTranspose> transpose_;
  mutable std::mutex mutex_;  // one backward at a time over the shared graph
};

}  // namespace tc
