// Data-dependent initialisation of a transcoder's biases, as in the paper: b_dec (the input
// pre-bias) and b_dec_out from the mean or the geometric median of sample activations.
#pragma once
#include <ATen/Tensor.h>

#include <string>

#include "transcoder/transcoder.h"

namespace tc {

// Weiszfeld's algorithm: m <- mean; repeat: w_i = 1 / max(||p_i - m||, eps), m <- sum w_i p_i / sum w_i,
// until the mean distance changes by at most ftol relative (or maxIter iterations). points [N, d].
at::Tensor geometricMedian(const at::Tensor& points, int64_t maxIter = 100, double ftol = 1e-20, double eps = 1e-6);

// method: "mean" | "geometric_median" | "zeros". Sets b_dec from x [N, d_in] and b_dec_out from y [N, d_out].
void initializeDecoderBiases(Transcoder& tc, const at::Tensor& x, const at::Tensor& y, const std::string& method);

}  // namespace tc
