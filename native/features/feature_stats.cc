#include "features/feature_stats.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorIndexing.h>

#include <cmath>
#include <limits>

#include "core/errors.h"

namespace tc {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The smallest e with 2^e >= v, for v > 0 (float64, exact at powers of two).
at::Tensor ceilLog2(const at::Tensor& v) {
  at::Tensor d = v.to(at::kDouble);
  at::Tensor e = at::ceil(at::log2(d));
  // log2 may round across an integer: step to the exact smallest power of two.
  e = at::where(at::exp2(e) < d, e + 1, e);
  e = at::where(at::exp2(e - 1) >= d, e - 1, e);
  return e.to(at::kLong);
}

// Keeps, per feature, the `keep` best of its current slots and the batch's candidates: by `key`
// ([F, keep + B]; largest or smallest first). Returns the chosen columns [F, keep] and their keys.
// A stable sort: among equal keys the current slots (earlier rows) come first, then the batch's rows
// in order, so ties always go to the lowest row, whatever the batching.
std::pair<at::Tensor, at::Tensor> choose(const at::Tensor& key, int64_t keep, bool largest) {
  auto [values, idx] = at::sort(key, /*stable=*/true, /*dim=*/1, /*descending=*/largest);
  return {idx.narrow(1, 0, keep), values.narrow(1, 0, keep)};
}

// The activations [F, keep, T] of the chosen columns: the old slots' (column < keep) or the batch row's.
at::Tensor gatherActs(const at::Tensor& old, const at::Tensor& acts, const at::Tensor& idx, int64_t keep) {
  using namespace at::indexing;
  const int64_t F = idx.size(0), T = old.size(2);
  at::Tensor fromOld = old.gather(1, idx.clamp_max(keep - 1).unsqueeze(2).expand({F, keep, T}));
  at::Tensor features = at::arange(F, idx.options()).unsqueeze(1).expand({F, keep});
  // acts [B, T, F] viewed [B, F, T]: (row, feature) pairs index whole token lists.
  at::Tensor fromBatch = acts.permute({0, 2, 1}).index({(idx - keep).clamp_min(0), features});
  return at::where((idx < keep).unsqueeze(2), fromOld, fromBatch);
}

void expectTensor(const at::Tensor& t, const char* name, at::ScalarType dtype, at::IntArrayRef shape) {
  if (!t.defined()) throw InvalidArgument(std::string("feature statistics: missing '") + name + "'");
  if (t.scalar_type() != dtype) throw InvalidArgument(std::string("feature statistics: '") + name + "' has dtype " + c10::toString(t.scalar_type()) + ", expected " + c10::toString(dtype));
  if (t.sizes() != shape) throw InvalidArgument(std::string("feature statistics: '") + name + "' has shape " + c10::str(t.sizes()) + ", expected " + c10::str(shape));
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor*>> FeatureStats::named() {
  return {{"count", &count},         {"act_max", &actMax},           {"act_min", &actMin},         {"hist", &hist},
          {"hist_exp", &histExp},    {"top_score", &topScore},       {"top_row", &topRow},         {"top_acts", &topActs},
          {"sample_key", &sampleKey}, {"sample_score", &sampleScore}, {"sample_row", &sampleRow},   {"sample_acts", &sampleActs},
          {"tokens", &tokens},       {"batches", &batches}};
}

FeatureStats initFeatureStats(const FeatureStatsOptions& o, const at::Device& device) {
  if (o.features < 1 || o.context < 1 || o.examples < 1 || o.samples < 1) throw InvalidArgument("feature statistics: features, context, examples and samples must be positive");
  if (o.bins < 1 || (o.bins & (o.bins - 1)) != 0) throw InvalidArgument("feature statistics: bins must be a power of two, got " + std::to_string(o.bins));
  const int64_t F = o.features, K = o.examples, R = o.samples, T = o.context;
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  auto f64 = at::TensorOptions().dtype(at::kDouble).device(device);
  auto i64 = at::TensorOptions().dtype(at::kLong).device(device);
  FeatureStats s;
  s.count = at::zeros({F}, i64);
  s.actMax = at::zeros({F}, f32);
  s.actMin = at::full({F}, kInf, f32);
  s.hist = at::zeros({F, o.bins}, f64);
  s.histExp = at::zeros({F}, i64);
  s.topScore = at::full({F, K}, -kInf, f32);
  s.topRow = at::full({F, K}, -1, i64);
  s.topActs = at::zeros({F, K, T}, f32);
  s.sampleKey = at::full({F, R}, kInf, f64);
  s.sampleScore = at::zeros({F, R}, f32);
  s.sampleRow = at::full({F, R}, -1, i64);
  s.sampleActs = at::zeros({F, R, T}, f32);
  s.tokens = at::zeros({1}, at::kLong);
  s.batches = at::zeros({1}, at::kLong);
  return s;
}

void checkFeatureStats(FeatureStats& s, const FeatureStatsOptions& o) {
  const int64_t F = o.features, K = o.examples, R = o.samples, T = o.context;
  expectTensor(s.count, "count", at::kLong, {F});
  expectTensor(s.actMax, "act_max", at::kFloat, {F});
  expectTensor(s.actMin, "act_min", at::kFloat, {F});
  expectTensor(s.hist, "hist", at::kDouble, {F, o.bins});
  expectTensor(s.histExp, "hist_exp", at::kLong, {F});
  expectTensor(s.topScore, "top_score", at::kFloat, {F, K});
  expectTensor(s.topRow, "top_row", at::kLong, {F, K});
  expectTensor(s.topActs, "top_acts", at::kFloat, {F, K, T});
  expectTensor(s.sampleKey, "sample_key", at::kDouble, {F, R});
  expectTensor(s.sampleScore, "sample_score", at::kFloat, {F, R});
  expectTensor(s.sampleRow, "sample_row", at::kLong, {F, R});
  expectTensor(s.sampleActs, "sample_acts", at::kFloat, {F, R, T});
  expectTensor(s.tokens, "tokens", at::kLong, {1});
  expectTensor(s.batches, "batches", at::kLong, {1});
}

void updateFeatureStats(FeatureStats& s, const at::Tensor& actsIn, const at::Tensor& rowsIn, const FeatureStatsOptions& o) {
  at::NoGradGuard noGrad;
  const int64_t F = o.features, K = o.examples, R = o.samples, T = o.context;
  if (actsIn.dim() != 3 || actsIn.size(1) != T || actsIn.size(2) != F)
    throw InvalidArgument("feature statistics: activations must be [rows, " + std::to_string(T) + ", " + std::to_string(F) + "], got " + c10::str(actsIn.sizes()));
  const int64_t B = actsIn.size(0);
  if (rowsIn.dim() != 1 || rowsIn.size(0) != B) throw InvalidArgument("feature statistics: row ids must be [" + std::to_string(B) + "], got " + c10::str(rowsIn.sizes()));
  if (B == 0) return;
  const at::Device device = s.count.device();
  const at::Tensor acts = actsIn.to(device, at::kFloat);
  const at::Tensor rows = rowsIn.to(device, at::kLong);
  if (!at::isfinite(acts).all().item<bool>()) throw NonFinite("feature statistics: the activations hold NaN or infinite values");
  if ((acts < 0).any().item<bool>()) throw InvalidArgument("feature statistics: activations must be >= 0 (post-activation feature values)");

  // Counts and extremes.
  const at::Tensor active = acts > 0;
  const at::Tensor hadAny = s.count > 0;
  s.count += active.sum(at::IntArrayRef{0, 1});
  s.actMax = at::maximum(s.actMax, acts.amax(at::IntArrayRef{0, 1}));
  s.actMin = at::minimum(s.actMin, at::where(active, acts, at::full({}, kInf, acts.options())).amin(at::IntArrayRef{0, 1}));

  // Histogram: widen each active feature's range to the power of two covering act_max, merging bins
  // (bin i of range 2^e is bin i >> (e' - e) of range 2^e'), then add this batch's values.
  const at::Tensor nowAny = s.count > 0;
  const at::Tensor target = at::where(nowAny, ceilLog2(at::where(nowAny, s.actMax, at::ones_like(s.actMax))), s.histExp);
  const at::Tensor shift = at::where(hadAny, target - s.histExp, at::zeros_like(target)).clamp_min(0);
  if (shift.any().item<bool>()) {
    const at::Tensor div = at::exp2(shift.to(at::kDouble)).unsqueeze(1);  // [F, 1]
    const at::Tensor bins = at::arange(o.bins, s.hist.options()).unsqueeze(0);
    const at::Tensor to = at::floor(bins / div).to(at::kLong).clamp_max(o.bins - 1);
    s.hist = at::zeros_like(s.hist).scatter_add_(1, to, s.hist);
  }
  s.histExp = target;
  const at::Tensor where = active.nonzero();  // [M, 3]: (row, token, feature)
  if (where.size(0) > 0) {
    const at::Tensor f = where.select(1, 2);
    const at::Tensor v = acts.masked_select(active).to(at::kDouble);
    const at::Tensor bin = at::floor(v * at::exp2(-s.histExp.index_select(0, f).to(at::kDouble)) * static_cast<double>(o.bins)).to(at::kLong).clamp(0, o.bins - 1);
    s.hist.view({-1}).index_add_(0, f * o.bins + bin, at::ones_like(v));
  }

  // Contexts: each row's score for each feature is its largest activation; only activating rows compete.
  const at::Tensor score = acts.amax(1).t();  // [F, B]
  const at::Tensor activating = score > 0;
  const at::Tensor rowIds = rows.unsqueeze(0).expand({F, B});
  {
    const at::Tensor key = at::cat({s.topScore, at::where(activating, score, at::full({}, -kInf, score.options()))}, 1);
    auto [idx, best] = choose(key, K, /*largest=*/true);
    const at::Tensor filled = best > -kInf;
    s.topActs = at::where(filled.unsqueeze(2), gatherActs(s.topActs, acts, idx, K), at::zeros_like(s.topActs));
    s.topRow = at::where(filled, at::cat({s.topRow, rowIds}, 1).gather(1, idx), at::full_like(s.topRow, -1));
    s.topScore = best;
  }
  {
    // A uniform sample without replacement of each feature's activating rows: the R smallest of
    // i.i.d. uniform keys. Keys come from a generator seeded by (seed, layer, batch index), so a
    // resumed run draws what the uninterrupted one would have.
    const uint64_t batch = static_cast<uint64_t>(s.batches.item<int64_t>());
    auto gen = at::make_generator<at::CPUGeneratorImpl>(splitmix64(o.seed ^ splitmix64(static_cast<uint64_t>(o.layer) ^ splitmix64(batch))));
    const at::Tensor draws = at::rand({F, B}, gen, at::TensorOptions().dtype(at::kDouble)).to(device);
    const at::Tensor key = at::cat({s.sampleKey, at::where(activating, draws, at::full({}, kInf, draws.options()))}, 1);
    auto [idx, kept] = choose(key, R, /*largest=*/false);
    const at::Tensor filled = kept < kInf;
    s.sampleActs = at::where(filled.unsqueeze(2), gatherActs(s.sampleActs, acts, idx, R), at::zeros_like(s.sampleActs));
    s.sampleRow = at::where(filled, at::cat({s.sampleRow, rowIds}, 1).gather(1, idx), at::full_like(s.sampleRow, -1));
    s.sampleScore = at::where(filled, at::cat({s.sampleScore, score}, 1).gather(1, idx), at::zeros_like(s.sampleScore));
    s.sampleKey = kept;
  }
  s.tokens += B * T;
  s.batches += 1;
}

}  // namespace tc
