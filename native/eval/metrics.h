// Reductions used by evaluation, done natively so that [N, d_sae] activations and [B, T, V]
// logits never travel to JS.
#pragma once
#include <ATen/Tensor.h>

#include "transcoder/cross_layer.h"
#include "transcoder/transcoder.h"

namespace tc {

// Sums over a batch from which exact dataset-wide metrics follow (see lib/transcoders/evaluate.ts).
struct TranscoderBatchStats {
  int64_t rows = 0;
  double sumSquaredError = 0;  // sum ||y - y_hat||^2
  double sumSquaredY = 0;      // sum ||y||^2
  at::Tensor sumY;             // [d_out] float64: sum of y (for the dataset mean)
  double activeSum = 0;        // sum over rows of the number of active features
  at::Tensor fireCounts;       // [d_sae] int64: rows in which each feature is active
};

TranscoderBatchStats transcoderBatchStats(const Transcoder& tc, const at::Tensor& x, const at::Tensor& y);

// The same sums per layer of a cross-layer transcoder (float64 [L] and [L, d_out], fire counts
// int64 [L, F]); x [N, L, d_in] and y [N, L, d_out] are every layer's input and target of the same rows.
struct CrossLayerBatchStats {
  int64_t rows = 0;
  at::Tensor sumSquaredError, sumSquaredY, sumY, activeSum, fireCounts;
};

CrossLayerBatchStats crossLayerBatchStats(const CrossLayerTranscoder& clt, const at::Tensor& x, const at::Tensor& y);

// Mean over positions of KL(softmax(reference) || softmax(logits)), in nats. Both [..., V].
double meanKlDivergence(const at::Tensor& referenceLogits, const at::Tensor& logits);

}  // namespace tc
