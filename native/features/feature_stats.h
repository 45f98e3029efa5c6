// Streaming statistics of every feature of one transcoder layer over a corpus, for feature dashboards:
// counts, extremes, an activation histogram, the top-activating contexts and a uniform sample of the
// activating contexts (for quantile buckets), each context with the activations of all its tokens.
// Memory is O(features x (examples + samples) x context), whatever the corpus length.
//
// A context is one row of the token data ([T] tokens); its score for a feature is its largest
// activation over the row. The state is a set of tensors (so that a run can be checkpointed and
// resumed); update() folds in one batch of rows. Everything is device-agnostic ATen.
#pragma once
#include <ATen/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace tc {

struct FeatureStatsOptions {
  int64_t features = 0;  // F
  int64_t context = 0;   // T, tokens per row
  int64_t examples = 10; // K top-activating rows kept per feature
  int64_t samples = 40;  // R rows kept per feature, a uniform sample of its activating rows
  int64_t bins = 64;     // histogram bins (a power of two)
  uint64_t seed = 0;
  int64_t layer = 0;     // mixed into the sample keys, so that layers sample independently
  bool portable = false; // on the CPU too, the ATen path other devices take (instead of the fused loops)
};

// The state. Histogram: over the activations > 0, bins of width 2^histExp / bins on [0, 2^histExp),
// 2^histExp the smallest power of two >= act_max (the last bin also takes act_max itself); merged
// exactly when act_max grows past the range.
struct FeatureStats {
  at::Tensor count;        // int64 [F]: (row, token) entries > 0
  at::Tensor actMax;       // float32 [F] (0 while never active)
  at::Tensor actMin;       // float32 [F]: smallest activation > 0 (+inf while never active)
  at::Tensor hist;         // float64 [F, bins]
  at::Tensor histExp;      // int64 [F]
  // Slots are unordered (readers sort them).
  at::Tensor topScore;     // float32 [F, K]; -inf = empty slot
  at::Tensor topRow;       // int64 [F, K]; -1 = empty
  at::Tensor topActs;      // float32 [F, K, T]
  at::Tensor sampleKey;    // float64 [F, R]; +inf = empty (bottom-R keys: a uniform sample)
  at::Tensor sampleScore;  // float32 [F, R]
  at::Tensor sampleRow;    // int64 [F, R]
  at::Tensor sampleActs;   // float32 [F, R, T]
  at::Tensor tokens;       // int64 [1]: entries seen (rows x T)
  at::Tensor batches;      // int64 [1]: batches folded in (seeds each batch's sample keys)

  std::vector<std::pair<std::string, at::Tensor*>> named();
};

// An empty state on `device`.
FeatureStats initFeatureStats(const FeatureStatsOptions& o, const at::Device& device);

// Checks a state's tensors against the options (restored from a checkpoint); InvalidArgument names the field.
void checkFeatureStats(FeatureStats& s, const FeatureStatsOptions& o);

// Folds in a batch: acts [B, T, F] (>= 0, finite) of the rows `rows` (int64 [B], their indices in the data).
void updateFeatureStats(FeatureStats& s, const at::Tensor& acts, const at::Tensor& rows, const FeatureStatsOptions& o);

}  // namespace tc
