#include "transcoder/init.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "core/errors.h"

namespace tc {

at::Tensor geometricMedian(const at::Tensor& points, int64_t maxIter, double ftol, double eps) {
  if (points.dim() != 2 || points.size(0) == 0) throw InvalidArgument("geometric median: points must be a non-empty [N, d] tensor");
  at::NoGradGuard noGrad;
  at::Tensor p = points.to(c10::kDouble);  // the iteration is sensitive to rounding: accumulate in float64
  at::Tensor median = p.mean(0);
  double objective = (p - median).norm(2, {1}).mean().item<double>();
  for (int64_t i = 0; i < maxIter; ++i) {
    at::Tensor weights = 1.0 / (p - median).norm(2, {1}).clamp_min(eps);
    median = (weights.unsqueeze(1) * p).sum(0) / weights.sum();
    double next = (p - median).norm(2, {1}).mean().item<double>();
    bool converged = std::abs(objective - next) <= ftol * next;
    objective = next;
    if (converged) break;
  }
  return median.to(points.scalar_type());
}

void initializeDecoderBiases(Transcoder& tc, const at::Tensor& x, const at::Tensor& y, const std::string& method) {
  if (method == "zeros") return;
  if (method != "mean" && method != "geometric_median")
    throw InvalidArgument("unknown b_dec initialisation '" + method + "' (expected mean, geometric_median or zeros)");
  at::NoGradGuard noGrad;
  TranscoderParams& p = tc.params();
  auto centre = [&](const at::Tensor& t) { return method == "mean" ? t.mean(0) : geometricMedian(t); };
  p.b_dec.copy_(centre(x.reshape({-1, tc.spec().dIn}).to(p.b_dec.options())));
  p.b_dec_out.copy_(centre(y.reshape({-1, tc.spec().dOut}).to(p.b_dec_out.options())));
}

}  // namespace tc
