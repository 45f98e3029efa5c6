// Input-invariant ("weights-based") connections between transcoder features (paper-method.md §4.1):
// products of weights only, no prompt. With row vectors (x @ W):
//
//   feature i of layer l1 -> feature j of layer l2 > l1:      W_dec[l1][i] . W_enc[l2][:, j]
//   ... through head h of attention layer la, l1 < la <= l2:   W_dec[l1][i] W_V[la,h] W_O[la,h] . W_enc[l2][:, j]
//   de-embedding of feature j of layer l:                     W_E @ W_enc[l][:, j]                       [V]
//   ... through head h of attention layer la <= l:            W_E @ W_V[la,h] @ W_O[la,h] @ W_enc[l][:, j] [V]
//   logit effects of feature i of layer l:                    W_dec[l][i] @ W_U                          [V]
//
// Every top-k here orders by value descending and breaks ties by ascending index (CPU), so results
// are deterministic and equal a dense sort by (value desc, index asc). All of it runs on a
// TransformerLens-processed model (the paper's setting); the products themselves are valid for any.
#pragma once
#include <ATen/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "circuits/replacement_model.h"
#include "transcoder/transcoder.h"

namespace tc {

// The top-k entries of each row: indices int64 [R, k] and values float32 [R, k] (or [k] for a vector),
// sorted by value descending. Rows with fewer than k non-NaN entries are padded with index -1, value NaN.
struct TopK {
  at::Tensor indices;
  at::Tensor values;
};

// How running top-k lists are merged with a new block of scores:
// Scan: a per-row insertion scan against the current k-th best (CPU float32; deterministic ties, and
//       nearly free next to the GEMM since after the first block almost nothing beats the k-th best);
// TopK: at::topk over the concatenation of the running best and the block's top-k (any device);
// Auto: Scan on the CPU, TopK elsewhere.
enum class TopKMerge { Auto, Scan, TopK };

// Downstream: for every source feature i (row of W_dec_src), its top-k targets j.
// Upstream: for every target feature j (column of W_enc_dst), its top-k sources i.
enum class ConnectionDirection { Downstream, Upstream };

struct ConnectionOptions {
  int64_t k = 10;
  int64_t blockSize = 4096;  // rows of the streamed operand per block, and columns of the other
  ConnectionDirection direction = ConnectionDirection::Downstream;
  TopKMerge merge = TopKMerge::Auto;
};

// Row-wise top-k (largest, or smallest when !largest) of scores [R, C] or a vector [C].
TopK rowTopK(const at::Tensor& scores, int64_t k, bool largest = true, TopKMerge merge = TopKMerge::Auto);

// All-pairs top-k connections between the features of two transcoders, W_dec_src [m1, d] and
// W_enc_dst [d, m2]: scores S = W_dec_src @ W_enc_dst are never formed whole. Row blocks of
// `blockSize` (of W_dec_src, or of W_enc_dst^T upstream) are multiplied (at::mm, the BLAS GEMM) with
// column blocks of `blockSize` of the other operand, and each [blockSize, blockSize] block is merged
// into the rows' running top-k. Memory: O(blockSize^2 + rows * k). Returns [m1, k] downstream,
// [m2, k] upstream; indices int64, values float32, on the weights' device.
TopK topkConnections(const at::Tensor& W_dec_src, const at::Tensor& W_enc_dst, const ConnectionOptions& options);

// One list of a feature's connections: to the transcoder of `layer`, directly or through head
// `head` of attention layer `attnLayer` (both -1 when direct). indices/values are [k] on the CPU.
struct LayerConnections {
  int64_t layer = 0;
  int64_t attnLayer = -1;
  int64_t head = -1;
  at::Tensor indices;
  at::Tensor values;
};

struct FeatureConnections {
  std::vector<LayerConnections> upstream;    // sources in layers < layer (top-k of W_dec[l] @ W_enc[layer][:, F])
  std::vector<LayerConnections> downstream;  // targets in layers > layer (top-k of W_dec[layer][F] @ W_enc[l])
};

// Upstream and downstream connections of feature `feature` of the transcoder at `layer` with every
// other transcoder of the replacement model; with `throughAttention`, also through every head of every
// attention layer between them (one list per (layer, attention layer, head)). Callers hold the
// transcoders' locks.
FeatureConnections featureConnections(const ReplacementModel& rm, int64_t layer, int64_t feature, int64_t k, bool throughAttention);

// Top-k (largest) and bottom-k (most negative) entries of a [V] vector over tokens.
struct TokenEffects {
  TopK top;
  TopK bottom;
};

// De-embedding of `feature` of the layer's transcoder: W_E @ W_enc[:, feature], or through head `head`
// of attention layer `attnLayer` (both -1 for the direct one), which must not come after `layer`.
TokenEffects deEmbedding(const ReplacementModel& rm, int64_t layer, int64_t feature, int64_t k, int64_t attnLayer = -1,
                         int64_t head = -1);

// Direct logit effects of `feature` of the layer's transcoder: W_dec[feature] @ W_U (no LayerNorm).
TokenEffects logitEffects(const ReplacementModel& rm, int64_t layer, int64_t feature, int64_t k);

// The logit effects of `feature` on the given token ids ([n] int), directly (W_dec[feature] . W_U[:, t])
// or carried by head `head` of a later attention layer `attnLayer` (W_dec[feature] W_V W_O . W_U[:, t]);
// float32 [n] on the CPU.
at::Tensor logitEffectsOn(const ReplacementModel& rm, int64_t layer, int64_t feature, const at::Tensor& tokens, int64_t attnLayer = -1,
                          int64_t head = -1);

// Throughput probe: GFLOP/s of a float32 [m, kk] x [kk, n] at::mm on the CPU (random operands), the
// best of `iters` timed runs after one warm-up.
double gemmGflops(int64_t m, int64_t kk, int64_t n, int64_t iters);

}  // namespace tc
