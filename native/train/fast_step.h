// A training step's loss and gradients written out by hand instead of through autograd, for the
// architectures where the sparsity of the activations can be used:
//
// - topk: the dense encoder GEMM, then everything on the k active features of each row (decode,
//   value gradients, decoder and encoder weight gradients: O(N k d) instead of O(N m d)); AuxK on
//   the dead features' top k_aux the same way, its gradient reaching the encoder (as OpenAI's
//   reference and our autograd loss do).
// - relu: once few features are active (below `sparseBelowDensity` of the N x m activations, as in
//   any trained ReLU transcoder), the same sparse products; otherwise the five dense GEMMs with the
//   elementwise work fused (no autograd graph, no [N, m] temporaries beyond pre/f and its gradient).
//
// The gradients are those of transcoderLoss (losses.h): the reference tests compare both with the
// PyTorch reference trainer. Paths not covered (jumprelu, relu with active ghost gradients) return
// false from fastStepApplies and keep autograd.
//
// bfloat16 compute: the dense GEMMs run on bf16 copies of their operands (the encoder GEMM is 99% of
// a TopK step's FLOPs), while parameters, gradients, the sparse products and Adam stay float32.
#pragma once
#include <ATen/Tensor.h>

#include "transcoder/losses.h"
#include "transcoder/transcoder.h"

namespace tc {

struct FastStepOptions {
  c10::ScalarType computeDtype = c10::kFloat;  // kFloat or kBFloat16
  double sparseBelowDensity = 0.02;            // relu: sparse products below this fraction active
  bool portableProducts = false;               // the device-agnostic sparse products on the CPU too (tests)
};

struct FastStepResult {
  at::Tensor yHat;                          // [N, d_out]
  at::Tensor reconstruction, sparsity, total;  // scalars, as LossTerms
  at::Tensor fired;                         // [m] bool: active in some row
  at::Tensor l0;                            // scalar: active features per row, mean
  bool sparse = false;                      // the sparse products ran
};

// [N, m] work tensors kept from step to step: a fresh one costs a page fault per 4 KiB on the CPU
// (about 0.15 s for the 400 MB of a 4096 x 24576 batch), as much as the arithmetic done on it.
struct FastStepBuffers {
  at::Tensor pre, dPre, wEncT;
};

bool fastStepApplies(const TranscoderSpec& spec, const LossOptions& loss, bool anyDead);

// Loss of x [N, d_in], y [N, d_out] and the gradient of every parameter, stored in its .grad()
// (the big ones written into last step's gradient tensors when their shapes still match).
FastStepResult fastStep(Transcoder& tc, const at::Tensor& x, const at::Tensor& y, const LossOptions& loss, bool anyDead,
                        const FastStepOptions& options, FastStepBuffers& buffers);

}  // namespace tc
