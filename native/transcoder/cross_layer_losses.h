// Training losses of a cross-layer transcoder: the sum over layers of the reconstruction loss (FVU
// or the paper's normalised MSE), a sparsity penalty weighted by each feature's decoder norm (L1 or
// the tanh penalty of Anthropic's CLTs) or JumpReLU's L0, an optional pre-activation penalty, and
// AuxK over TopK's dead features. The formulas are in docs/cross-layer.md.
#pragma once
#include <ATen/Tensor.h>

#include "transcoder/cross_layer.h"
#include "transcoder/losses.h"

namespace tc {

enum class CrossLayerSparsity { None, L1, Tanh, L0 };

CrossLayerSparsity crossLayerSparsityFromName(const std::string& name);

struct CrossLayerLossOptions {
  Reconstruction reconstruction = Reconstruction::Fvu;
  CrossLayerSparsity sparsity = CrossLayerSparsity::None;
  double sparsityCoefficient = 0;  // lambda of the L1, tanh or L0 penalty
  double tanhScale = 1;            // c in tanh(c f ||W_dec||)
  double preactCoefficient = 0;    // relu(-pre) (relu(threshold - pre) for jumprelu) per feature
  double auxkAlpha = 0;            // topk
  int64_t kAux = 0;                // topk: dead features per row and layer used by AuxK (default d_in / 2)
  at::Tensor dead;                 // [L, F] bool: features counted dead (AuxK)
};

struct CrossLayerLossTerms {
  at::Tensor pre, f, yHat;  // [N, L, F], [N, L, F], [N, L, d_out]
  at::Tensor omega;         // [L, F] decoder norms
  at::Tensor layerFvu;      // [L], detached: each target layer's fraction of variance unexplained
  at::Tensor batchMinimum;  // BatchTopK: [L], detached: the smallest activation each layer's selection kept
  at::Tensor reconstruction, sparsity, preact, auxk, total;  // scalars
};

// x [N, L, d_in], y [N, L, d_out]. A BatchTopK transcoder selects, per layer, the N k largest
// relu(pre) of the batch (ties broken by index), decoded densely.
CrossLayerLossTerms crossLayerLoss(const CrossLayerTranscoder& clt, const at::Tensor& x, const at::Tensor& y,
                                   const CrossLayerLossOptions& options);

}  // namespace tc
