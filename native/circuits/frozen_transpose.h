// The transpose of the frozen local replacement model (../docs/graphs.md): with attention patterns
// and every norm's scale frozen and each MLP a constant plus its transcoder's skip connection, the
// map from what is written into the residual stream to what targets read is linear, and its
// transpose carries a target's reading vector back down the layers:
//   frozen norm       y = (x - mean x) / s * w + b  ->  g_x = center(w g) / s   (RMSNorm: w g / s)
//   frozen attention  o = sum_h P_h (x W_V[h]) W_O[h] ->  g_x = sum_h P_h^T (g W_O[h]^T) W_V[h]^T
//   skip connection   o = x W_skip                  ->  g_x = g W_skip^T
// This is what autograd would compute through a frozen copy of the forward, done directly: no
// batched forward with grad (whose saved tensors grow with the batch), one stored copy of the
// patterns and scales, and each batch of targets runs only on the prefix of positions and the
// layers it can read from (causality), which is where the work goes at long prompts.
#pragma once
#include <ATen/Tensor.h>

#include <functional>
#include <map>
#include <string>
#include <memory>
#include <vector>

#include "circuits/replacement_model.h"

namespace tc {

class FrozenTranspose {
 public:
  // The hooks whose values (from a batch-of-one forward of the prompt) the constructor takes.
  static std::vector<std::string> hooks(const ModelConfig& cfg);
  // `cache`: a forward of the prompt ([1, T] tokens) that recorded `hooks(cfg)`: the frozen patterns
  // and scales.
  FrozenTranspose(std::shared_ptr<const ReplacementModel> replacement, const std::map<std::string, at::Tensor>& cache);

  // A reading vector `vector` [d] of batch row `row` at `position`: at layer `layer`'s transcoder
  // input hook (0 <= layer < L), or at the final norm's output (layer == L).
  struct Injection {
    int64_t row = 0, layer = 0, position = 0;
    at::Tensor vector;
  };
  // What the backward pass reports for layer l, each [m, prefix, d] float32: the gradient at the
  // attention output and at the MLP output (both undefined above the highest injection).
  using LayerVisitor = std::function<void(int64_t layer, const at::Tensor& attnOut, const at::Tensor& mlpOut)>;

  // One backward pass for `rows` targets over positions [0, prefix): calls `visit` for every layer
  // from the top down and returns the gradient at the embeddings ([rows, prefix, d] float32). Every
  // injection's position must be below `prefix`.
  at::Tensor backward(int64_t rows, int64_t prefix, const std::vector<Injection>& injections, const LayerVisitor& visit) const;

 private:
  // g [m, P, d] through a frozen norm with weight w (undefined: folded) and scales s [T, 1].
  at::Tensor normTranspose(const at::Tensor& g, const at::Tensor& w, const at::Tensor& scale, bool gain) const;
  at::Tensor attentionTranspose(int64_t layer, const at::Tensor& g) const;
  // Adds to g the effect of injecting `vector` at `layer`'s transcoder input hook.
  void inject(at::Tensor& g, const Injection& injection) const;

  std::shared_ptr<const ReplacementModel> replacement_;
  int64_t T_ = 0, L_ = 0;
  std::vector<at::Tensor> ln1Scale_, ln2Scale_, ln1PostScale_, pattern_;  // per layer: [T, 1] / [H, T, T]
  at::Tensor finalScale_;                                                 // [T, 1]
};

}  // namespace tc
