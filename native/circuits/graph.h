// Attribution graphs (circuit-tracer's method, ../docs/graphs.md): the direct effects between every
// active transcoder feature, error, token, positional embedding, bias and target of one prompt in
// the local replacement model, where attention patterns and norm scales are frozen and each MLP
// contributes its transcoder's reconstruction plus an error, with the transcoder's skip connection
// as the only linear path through it. Forward values stay the real model's.
//
// Rows (targets) come out of batched backward passes: the prompt is run once as `batchSize` copies
// with autograd, then for each batch of targets their reading vectors are injected as gradients and
// one backward pass yields every target's row, contracted with each source's vector:
//   A[t, s] = <source vector of s, d target_t / d (residual write at s)>.
// Rows are returned sparse (exact non-zeros, optionally top-k / thresholded), so that memory grows
// with the kept entries, never with n_nodes^2.
#pragma once
#include <ATen/Tensor.h>

#include <memory>
#include <mutex>
#include <vector>

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
  at::Tensor columns;       // [nnz] int64, ascending within a row
  at::Tensor values;        // [nnz] float32
  at::Tensor targetValues;  // [n] float64: the target quantity itself (for completeness checks)
  at::Tensor droppedMass;   // [n] float64: sum of |A| of entries a top-k / threshold left out
};

class AttributionGraph {
 public:
  // Runs the prompt ([T] tokens) once without grad (activations, errors, constants) and once as
  // `batchSize` copies with grad (the graph the backward passes reuse). Every layer without a
  // transcoder becomes a whole-MLP error.
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
  // The vector a target injects at its reading point ([d]).
  at::Tensor readingVector(const GraphTarget& t) const;

  std::shared_ptr<const ReplacementModel> replacement_;
  int64_t T_ = 0, L_ = 0, B_ = 1;
  bool hasPositional_ = false;
  at::Tensor featLayer_, featPos_, featIdx_, featAct_;
  std::vector<at::Tensor> layerFeatPos_, layerDecoder_, layerAct_;  // per layer: positions, decoder rows [n_l, d], activations
  std::vector<int64_t> layerFeatStart_;                             // per layer: first source index of its features
  std::vector<at::Tensor> errors_;                                  // per layer [T, d]
  std::vector<at::Tensor> attnConst_, mlpConst_;                    // per layer [T, d] / [d]
  at::Tensor embed_, posEmbed_;                                     // [T, d]
  at::Tensor lastLogits_, errorNorms_;
  std::vector<at::Tensor> targetValue_;                             // per layer: the input hook [T, d] (no grad)
  at::Tensor finalNormed_;                                          // ln_final output [T, d] (no grad)
  // The batched forward with grad, kept for every backward pass.
  at::Tensor gEmbed_, gPos_, gFinal_;
  std::vector<at::Tensor> gAttnOut_, gMlpOut_, gInput_;
  mutable std::mutex mutex_;  // one backward at a time over the shared graph
};

}  // namespace tc
