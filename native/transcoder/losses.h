// Training losses of a transcoder: reconstruction (the paper's normalised MSE or the fraction of
// variance unexplained), sparsity (L1 for relu, L0 with straight-through gradients for jumprelu),
// AuxK for topk's dead features, and the paper's ghost gradients for relu's dead features.
#pragma once
#include <ATen/Tensor.h>

#include "transcoder/transcoder.h"

namespace tc {

enum class Reconstruction {
  Paper,  // mean over elements of (y_hat - y)^2 / ||y|| (row norm, not squared)
  Fvu,    // sum ||y - y_hat||^2 / sum ||y - mean(y)||^2
};

struct LossOptions {
  Reconstruction reconstruction = Reconstruction::Paper;
  double l1Coefficient = 0;  // relu
  double l0Coefficient = 0;  // jumprelu
  double auxkAlpha = 0;      // topk
  int64_t kAux = 0;          // topk: dead features used by AuxK (default d_in / 2)
  bool ghostGrads = false;   // relu
  bool ghostResidualFromInput = true;  // the paper's ghost residual is x - y_hat (see docs/transcoders.md)
  at::Tensor dead;           // [m] bool: features counted dead (ghost grads, AuxK)
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

// Fraction of variance unexplained: sum ||y - y_hat||^2 / sum ||y - mean(y)||^2.
at::Tensor fractionOfVarianceUnexplained(const at::Tensor& yHat, const at::Tensor& y);

}  // namespace tc
