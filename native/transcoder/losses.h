// Training losses of a transcoder: reconstruction (the paper's normalised MSE or the fraction of
// variance unexplained), sparsity (L1 for relu, L0 with straight-through gradients for jumprelu),
// AuxK for topk's dead features, and the paper's ghost gradients for relu's dead features.
#pragma once
#include <ATen/Tensor.h>

#include <functional>

#include "transcoder/transcoder.h"

namespace tc {

enum class Reconstruction {
  Paper,  // mean over elements of (y_hat - y)^2 / ||y|| (row norm, not squared)
  Fvu,    // sum ||y - y_hat||^2 / sum ||y - mean(y)||^2
};

// Data-parallel training: this process's rows are a slice of a global batch spread over ranks. Each
// rank's loss is then its share of the global batch's loss (means over rows taken over the global
// rows, the FVU's variance over the whole batch), so that the gradients summed over ranks are the
// gradients of the loss of the global batch, as one process would compute them.
struct BatchReduction {
  int64_t globalRows = 0;  // rows of the global batch (this slice's rows times the ranks)
  // The element-wise sum of a tensor over every rank (the same tensor on every rank).
  std::function<at::Tensor(const at::Tensor&)> sum;
};

// Feature-sharded training: this transcoder is one rank's slice of the features (encoder columns,
// decoder rows) and every rank sees the whole batch. The ranks' partial decoder outputs are summed
// into the reconstruction, and TopK (and AuxK) select their k entries across every rank's features.
struct FeatureShards {
  int64_t rank = 0, ranks = 1;
  std::function<at::Tensor(const at::Tensor&)> sum, max;  // element-wise over the ranks
  // Which of each row's candidates `values` [N, c] (this rank's best c, padded with -inf) are among
  // the row's `k` largest over every rank's candidates (all ranks pass the same c): bool [N, c].
  at::Tensor selectAcross(const at::Tensor& values, int64_t k) const;
};

// Sum over the (global) batch of ||y - mean(y)||^2, the FVU's denominator; the mean is the global
// batch's (two all-reduces when `r` is given).
at::Tensor totalVariance(const at::Tensor& y, const BatchReduction* r);

// The fraction of the global batch's rows that `rows` local rows are (1 without a reduction).
double rowShare(int64_t rows, const BatchReduction* r);

struct LossOptions {
  Reconstruction reconstruction = Reconstruction::Paper;
  double l1Coefficient = 0;  // relu
  double l0Coefficient = 0;  // jumprelu
  double auxkAlpha = 0;      // topk
  int64_t kAux = 0;          // topk: dead features used by AuxK (default d_in / 2)
  bool ghostGrads = false;   // relu
  bool ghostResidualFromInput = true;  // the paper's ghost residual is x - y_hat (see docs/transcoders.md)
  at::Tensor dead;           // [m] bool: features counted dead (ghost grads, AuxK)
  const BatchReduction* reduction = nullptr;  // data-parallel: this batch is a slice (see above)
  const FeatureShards* shards = nullptr;       // feature-sharded: these features are a slice (see above)
};

struct LossTerms {
  at::Tensor pre, f, yHat;            // [N, m], [N, m], [N, d_out]
  at::Tensor reconstruction;          // scalar
  at::Tensor sparsity;                // scalar, coefficient included (L1, L0 or AuxK term)
  at::Tensor ghost;                   // scalar
  at::Tensor total;                   // scalar
};

// x [N, d_in], y [N, d_out].
LossTerms transcoderLoss(const Transcoder& tc, const at::Tensor& x, const at::Tensor& y, const LossOptions& options);

// Fraction of variance unexplained: sum ||y - y_hat||^2 / sum ||y - mean(y)||^2; with a reduction,
// this slice's share of the global batch's FVU (the shares sum to it).
at::Tensor fractionOfVarianceUnexplained(const at::Tensor& yHat, const at::Tensor& y, const BatchReduction* r = nullptr);

}  // namespace tc
