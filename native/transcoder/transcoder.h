// A transcoder: a wide, sparsely active layer approximating one MLP sublayer, mapping the MLP's
// input (e.g. blocks.L.ln2.hook_normalized) to its output (blocks.L.hook_mlp_out).
//
//   pre = (x - b_dec) W_enc + b_enc                          [N, m]
//   f   = relu(pre) | topk_k(relu(pre)) | pre * H(pre - threshold)
//   y   = f W_dec + b_dec_out (+ x W_skip)                   [N, d_out]
//
// b_dec is the paper's input-side pre-bias; formats without one fold it into b_enc on export.
#pragma once
#include <ATen/Tensor.h>

#include <cstdint>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

namespace tc {

// BatchTopK is a cross-layer transcoder's only (cross_layer.h): the top N k activations of a batch.
enum class TranscoderArch { ReLU, TopK, JumpReLU, BatchTopK };

struct TranscoderSpec {
  TranscoderArch arch = TranscoderArch::ReLU;
  int64_t dIn = 0, dOut = 0, dSae = 0;
  bool skip = false;        // W_skip: a dense linear path added to the output ("skip transcoder")
  int64_t k = 0;            // TopK: active features per row
  double bandwidth = 1e-3;  // JumpReLU: width of the straight-through kernel around the threshold
  // Where it sits in a model (TransformerLens hook names; resolved by circuits/replacement_model.h).
  int64_t layer = -1;
  std::string hookIn, hookOut;
};

TranscoderArch transcoderArchFromName(const std::string& name);

struct TranscoderParams {
  at::Tensor W_enc;      // [d_in, m]
  at::Tensor b_enc;      // [m]
  at::Tensor W_dec;      // [m, d_out]
  at::Tensor b_dec;      // [d_in]
  at::Tensor b_dec_out;  // [d_out]
  at::Tensor W_skip;     // [d_in, d_out], skip transcoders only
  at::Tensor threshold;  // [m], JumpReLU only

  // The parameters that exist, in a fixed order (the optimizer's and the file's).
  std::vector<std::pair<std::string, at::Tensor*>> named();
  std::vector<std::pair<std::string, const at::Tensor*>> named() const;
};

// Feature activations of a batch in compressed-row form: row n's features are
// indices[offsets[n]:offsets[n+1]] with values[...] (only non-zero activations).
struct SparseActivations {
  at::Tensor offsets;  // [N + 1] int64
  at::Tensor indices;  // [nnz] int64
  at::Tensor values;   // [nnz]
};

class Transcoder {
 public:
  // Checks every shape against the spec; throws InvalidArgument naming the parameter.
  Transcoder(TranscoderSpec spec, TranscoderParams params);

  // Fresh parameters: the paper's initialisation (kaiming-uniform W_enc and W_dec, unit-norm
  // decoder rows, zero biases), thresholds at `initThreshold`; deterministic for a seed on any device.
  static TranscoderParams initialParams(const TranscoderSpec& spec, uint64_t seed, const at::TensorOptions& options,
                                        double initThreshold = 1e-3);

  const TranscoderSpec& spec() const { return spec_; }
  TranscoderParams& params() { return params_; }
  const TranscoderParams& params() const { return params_; }

  at::Tensor preActivations(const at::Tensor& x) const;
  // Dense activations [N, m] from pre-activations (differentiable, with the JumpReLU straight-through gradients).
  at::Tensor activate(const at::Tensor& pre) const;
  at::Tensor encode(const at::Tensor& x) const { return activate(preActivations(x)); }
  SparseActivations encodeSparse(const at::Tensor& x) const;
  // Dense decode of f [N, m]; the skip path needs the input x (pass undefined when there is none).
  at::Tensor decode(const at::Tensor& f, const at::Tensor& x) const;
  // Sparse decode: sum_j values[n, j] W_dec[indices[n, j]] without forming [N, m] x [m, d_out].
  at::Tensor decodeTopK(const at::Tensor& indices, const at::Tensor& values, const at::Tensor& x) const;
  // x [..., d_in] -> y [..., d_out]; TopK decodes sparsely.
  at::Tensor forward(const at::Tensor& x) const;

  // Readers (encode/forward on workers) hold it shared; training holds it exclusively.
  std::shared_mutex& mutex() const { return mutex_; }

 private:
  at::Tensor addSkipAndBias(at::Tensor y, const at::Tensor& x) const;
  TranscoderSpec spec_;
  TranscoderParams params_;
  mutable std::shared_mutex mutex_;
};

}  // namespace tc
