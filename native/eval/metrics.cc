#include "eval/metrics.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "core/errors.h"

namespace tc {

TranscoderBatchStats transcoderBatchStats(const Transcoder& tc, const at::Tensor& x, const at::Tensor& y) {
  at::NoGradGuard noGrad;
  auto options = tc.params().W_enc.options();
  at::Tensor x2 = x.to(options).reshape({-1, tc.spec().dIn});
  at::Tensor y2 = y.to(options).reshape({-1, tc.spec().dOut});
  if (x2.size(0) != y2.size(0)) throw InvalidArgument("evaluation inputs and targets have different numbers of rows");
  at::Tensor f = tc.encode(x2);
  at::Tensor yHat = tc.decode(f, x2);
  at::Tensor active = f > 0;
  TranscoderBatchStats s;
  s.rows = x2.size(0);
  s.sumSquaredError = (yHat - y2).to(c10::kDouble).pow(2).sum().item<double>();
  at::Tensor y64 = y2.to(c10::kDouble);
  s.sumSquaredY = y64.pow(2).sum().item<double>();
  s.sumY = y64.sum(0).cpu();
  s.activeSum = active.sum().item<double>();
  s.fireCounts = active.sum(0).to(c10::kLong).cpu();
  return s;
}

CrossLayerBatchStats crossLayerBatchStats(const CrossLayerTranscoder& clt, const at::Tensor& x, const at::Tensor& y) {
  at::NoGradGuard noGrad;
  auto options = clt.params().W_enc.options();
  at::Tensor x3 = x.to(options), y3 = y.to(options);
  if (x3.dim() != 3 || y3.dim() != 3 || x3.size(0) != y3.size(0))
    throw InvalidArgument("cross-layer evaluation inputs and targets must be [N, L, d] with the same N, got " + c10::str(x3.sizes()) + " and " +
                          c10::str(y3.sizes()));
  at::Tensor f = clt.activate(clt.preActivations(x3));
  at::Tensor yHat = clt.decode(f, x3);
  at::Tensor active = f > 0;
  at::Tensor y64 = y3.to(c10::kDouble);
  CrossLayerBatchStats s;
  s.rows = x3.size(0);
  s.sumSquaredError = (yHat.to(c10::kDouble) - y64).pow(2).sum(at::IntArrayRef{0, 2}).cpu();
  s.sumSquaredY = y64.pow(2).sum(at::IntArrayRef{0, 2}).cpu();
  s.sumY = y64.sum(0).cpu();
  s.activeSum = active.sum(at::IntArrayRef{0, 2}).to(c10::kDouble).cpu();
  s.fireCounts = active.sum(0).to(c10::kLong).cpu();
  return s;
}

double meanKlDivergence(const at::Tensor& referenceLogits, const at::Tensor& logits) {
  at::NoGradGuard noGrad;
  if (referenceLogits.sizes() != logits.sizes())
    throw InvalidArgument("KL divergence: logits of shapes " + c10::str(referenceLogits.sizes()) + " and " +
                          c10::str(logits.sizes()) + " differ");
  const int64_t V = logits.size(-1);
  at::Tensor p = at::log_softmax(referenceLogits.reshape({-1, V}).to(c10::kFloat), -1);
  at::Tensor q = at::log_softmax(logits.reshape({-1, V}).to(c10::kFloat).to(p.device()), -1);
  return (p.exp() * (p - q)).sum(-1).mean().item<double>();
}

}  // namespace tc
