// A cross-layer transcoder (CLT): one encoder per layer s reading that layer's transcoder input,
// and decoders from s into the MLP output of s and of every later layer t >= s.
//
//   pre_s = x_s W_enc[s] + b_enc[s]                                 [N, F]
//   f_s   = relu(pre_s) | topk_k(relu(pre_s)) | pre_s * H(pre_s - threshold[s])
//           | batchtopk: in training the N k largest relu(pre_s) of the batch (cross_layer_losses.h);
//             otherwise relu(pre_s) * H(pre_s - threshold[s]), the threshold estimated in training
//   y_t   = sum_{s <= t} f_s W_dec[s][:, t - s, :] + b_dec[t] (+ x_t W_skip[t])
//
// W_dec[s] has shape [F, L - s, d_out]: indexed by source layer, as circuit-tracer stores it. A
// feature's decoder norm (what the sparsity penalties weight by) is the norm over all of its
// decoders together. There is no input pre-bias: the released CLTs have none.
#pragma once
#include <ATen/Tensor.h>

#include <cstdint>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "transcoder/transcoder.h"

namespace tc {

struct CrossLayerSpec {
  TranscoderArch arch = TranscoderArch::ReLU;
  int64_t nLayers = 0, dIn = 0, dOut = 0;
  int64_t dSae = 0;         // features per source layer
  bool skip = false;        // W_skip[t]: a dense linear path per layer
  int64_t k = 0;            // TopK: active features per row and source layer; BatchTopK: per row on average
  double bandwidth = 1e-3;  // JumpReLU: width of the straight-through kernel around the threshold
  // Where it sits in a model: per layer, the hooks it reads and writes (TransformerLens names; empty:
  // the placement's default). Resolved by circuits/replacement_model.h.
  std::vector<std::string> hookIn, hookOut;
};

struct CrossLayerParams {
  at::Tensor W_enc;               // [L, d_in, F]
  at::Tensor b_enc;               // [L, F]
  std::vector<at::Tensor> W_dec;  // W_dec[s]: [F, L - s, d_out]
  at::Tensor b_dec;               // [L, d_out], the output bias of each target layer
  at::Tensor W_skip;              // [L, d_in, d_out], skip CLTs only
  at::Tensor threshold;           // [L, F], JumpReLU (trained) and BatchTopK (estimated in training, used otherwise)

  // The parameters that exist, in a fixed order (the optimizer's and the file's): W_enc, b_enc,
  // W_dec_0 .. W_dec_{L-1}, b_dec, W_skip, threshold.
  std::vector<std::pair<std::string, at::Tensor*>> named();
  std::vector<std::pair<std::string, const at::Tensor*>> named() const;
};

class CrossLayerTranscoder {
 public:
  // Checks every shape against the spec; throws InvalidArgument naming the parameter.
  CrossLayerTranscoder(CrossLayerSpec spec, CrossLayerParams params);

  // Fresh parameters, deterministic for a seed on any device: encoders U(+-1/sqrt(F)), decoders
  // U(+-1/sqrt(L d_out)) (the initialisation of Anthropic's CLTs), zero biases and skips,
  // thresholds at `initThreshold`.
  static CrossLayerParams initialParams(const CrossLayerSpec& spec, uint64_t seed, const at::TensorOptions& options,
                                        double initThreshold = 1e-3);

  const CrossLayerSpec& spec() const { return spec_; }
  CrossLayerParams& params() { return params_; }
  const CrossLayerParams& params() const { return params_; }

  // Source layer s's pre-activations of its input x [N, d_in] -> [N, F].
  at::Tensor preActivations(int64_t s, const at::Tensor& x) const;
  // Every layer's pre-activations: x [N, L, d_in] -> [N, L, F].
  at::Tensor preActivations(const at::Tensor& x) const;
  // Source layer s's activations of its pre-activations [N, F] (differentiable, with JumpReLU's
  // straight-through gradients).
  at::Tensor activate(int64_t s, const at::Tensor& pre) const;
  // Every layer's activations, pre [N, L, F] -> f [N, L, F].
  at::Tensor activate(const at::Tensor& pre) const;
  // What source layer s's activations f [N, F] write into layers s..L-1: [N, L - s, d_out] (no bias).
  at::Tensor decodeFrom(int64_t s, const at::Tensor& f) const;
  // TopK's sparse form of decodeFrom: k (index, value) pairs per row, [N, k] each.
  at::Tensor decodeFromTopK(int64_t s, const at::Tensor& indices, const at::Tensor& values) const;
  // Outputs y [N, L, d_out] of activations f [N, L, F]; a skip CLT also needs its inputs x [N, L, d_in].
  at::Tensor decode(const at::Tensor& f, const at::Tensor& x) const;
  // x [N, L, d_in] -> y [N, L, d_out]; TopK decodes sparsely.
  at::Tensor forward(const at::Tensor& x) const;
  // Each feature's norm over all of its decoders, [L, F] (differentiable).
  at::Tensor decoderNorms() const;
  // Layer t's bias and skip path, added to what the features wrote: out [N, d_out], x [N, d_in].
  at::Tensor addBiasAndSkip(int64_t t, const at::Tensor& out, const at::Tensor& x) const;

  // Readers (encode/forward on workers) hold it shared; training holds it exclusively.
  std::shared_mutex& mutex() const { return mutex_; }

 private:
  void checkLayer(int64_t s) const;
  void checkInputs(const at::Tensor& x, int64_t width, const char* what) const;
  CrossLayerSpec spec_;
  CrossLayerParams params_;
  mutable std::shared_mutex mutex_;
};

}  // namespace tc
