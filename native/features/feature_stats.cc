#include "features/feature_stats.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIndexing.h>

#include <algorithm>
#include <atomic>
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

// Merges a batch's candidates into each feature's `keep` slots: the slots then hold the `keep` best
// of both by key (largest when `largest`, else smallest; an empty slot or a non-candidate holds
// -inf / +inf), ties going to the lower row (empty slots have row -1, so they beat non-candidates).
// Slots are unordered: a surviving entry stays where it is and an entering row takes an evicted slot,
// so a batch writes the activations of the entering rows only, and touches only the features with a
// candidate better than their worst slot. After the first rows that is a small part of them: a batch
// costs O(entries that change x T), not O(features x keep x T). Readers sort (FeatureStats.arrays).
void mergeSlots(at::Tensor& slotKey, at::Tensor& slotRow, at::Tensor* slotScore, at::Tensor& slotActs, const at::Tensor& batchKey,
                const at::Tensor& batchScore, const at::Tensor& acts, const at::Tensor& rows, bool largest) {
  const int64_t keep = slotKey.size(1), B = batchKey.size(1);
  const at::Tensor worst = (largest ? slotKey.amin(1) : slotKey.amax(1)).unsqueeze(1);
  const at::Tensor fs = (largest ? batchKey > worst : batchKey < worst).any(1).nonzero().squeeze(1);
  const int64_t n = fs.size(0);
  if (n == 0) return;
  const at::Tensor key = at::cat({slotKey.index_select(0, fs), batchKey.index_select(0, fs)}, 1);  // [n, keep + B]
  const at::Tensor row = at::cat({slotRow.index_select(0, fs), rows.unsqueeze(0).expand({n, B})}, 1);
  // Order by key, ties by row: a stable sort by key of the entries sorted by row.
  const at::Tensor byRow = std::get<1>(at::sort(row, /*stable=*/true, /*dim=*/1, /*descending=*/false));
  const at::Tensor order = byRow.gather(1, std::get<1>(at::sort(key.gather(1, byRow), /*stable=*/true, /*dim=*/1, /*descending=*/largest)));
  const at::Tensor chosen = at::zeros_like(key, key.options().dtype(at::kBool)).scatter_(1, order.narrow(1, 0, keep), true);
  // The j-th evicted slot of a feature takes its j-th entering row (nonzero lists both row-major).
  const at::Tensor dst = (~chosen.narrow(1, 0, keep)).nonzero();
  const at::Tensor src = chosen.narrow(1, keep, B).nonzero();
  if (dst.size(0) == 0) return;
  const at::Tensor dstF = fs.index_select(0, dst.select(1, 0)), dstS = dst.select(1, 1);
  const at::Tensor srcF = fs.index_select(0, src.select(1, 0)), srcB = src.select(1, 1);
  slotKey.index_put_({dstF, dstS}, batchKey.index({srcF, srcB}));
  slotRow.index_put_({dstF, dstS}, rows.index_select(0, srcB));
  if (slotScore) slotScore->index_put_({dstF, dstS}, batchScore.index({srcF, srcB}));
  // acts [B, T, F] viewed [B, F, T]: each entering (row, feature) brings its token list.
  slotActs.index_put_({dstF, dstS}, acts.permute({0, 2, 1}).index({srcB, srcF}));
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
  // update() writes into the state in place.
  for (auto& [name, t] : s.named())
    if (t->defined() && !t->is_contiguous()) *t = t->contiguous();
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
  const int64_t F = o.features, T = o.context;
  if (actsIn.dim() != 3 || actsIn.size(1) != T || actsIn.size(2) != F)
    throw InvalidArgument("feature statistics: activations must be [rows, " + std::to_string(T) + ", " + std::to_string(F) + "], got " + c10::str(actsIn.sizes()));
  const int64_t B = actsIn.size(0);
  if (rowsIn.dim() != 1 || rowsIn.size(0) != B) throw InvalidArgument("feature statistics: row ids must be [" + std::to_string(B) + "], got " + c10::str(rowsIn.sizes()));
  if (B == 0) return;
  const at::Device device = s.count.device();
  const at::Tensor acts = actsIn.to(device, at::kFloat);
  const at::Tensor rows = rowsIn.to(device, at::kLong);
  // The batch's per-feature aggregates: entries > 0, max, min of those, and each row's max (its score).
  // On the CPU one pass in plain loops over feature ranges (the elementwise ATen passes were most of a
  // batch's time); elsewhere ATen.
  at::Tensor bCount, bMax, bMin, score;  // [F] int64, [F], [F], [B, F]
  const bool cpu = device.is_cpu() && !o.portable;
  const at::Tensor a = cpu ? acts.contiguous() : acts;
  if (cpu) {
    bCount = at::zeros({F}, at::kLong);
    bMax = at::zeros({F}, at::kFloat);
    bMin = at::full({F}, kInf, at::kFloat);
    score = at::zeros({B, F}, at::kFloat);
    const float* v = a.data_ptr<float>();
    int64_t* cnt = bCount.data_ptr<int64_t>();
    float *mx = bMax.data_ptr<float>(), *mn = bMin.data_ptr<float>(), *sc = score.data_ptr<float>();
    std::atomic<bool> bad{false};
    at::parallel_for(0, F, 512, [&](int64_t f0, int64_t f1) {
      bool wrong = false;
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t t = 0; t < T; ++t) {
          const float* row = v + (b * T + t) * F;
          for (int64_t f = f0; f < f1; ++f) {
            const float x = row[f];
            wrong |= !(x >= 0.0f && x < std::numeric_limits<float>::infinity());
            if (x > 0.0f) {
              ++cnt[f];
              mx[f] = std::max(mx[f], x);
              mn[f] = std::min(mn[f], x);
              sc[b * F + f] = std::max(sc[b * F + f], x);
            }
          }
        }
      }
      if (wrong) bad = true;
    });
    if (bad) {
      if (!at::isfinite(a).all().item<bool>()) throw NonFinite("feature statistics: the activations hold NaN or infinite values");
      throw InvalidArgument("feature statistics: activations must be >= 0 (post-activation feature values)");
    }
  } else {
    if (!at::isfinite(a).all().item<bool>()) throw NonFinite("feature statistics: the activations hold NaN or infinite values");
    if ((a < 0).any().item<bool>()) throw InvalidArgument("feature statistics: activations must be >= 0 (post-activation feature values)");
    const at::Tensor active = a > 0;
    bCount = active.sum(at::IntArrayRef{0, 1});
    bMax = a.amax(at::IntArrayRef{0, 1});
    bMin = at::where(active, a, at::full({}, kInf, a.options())).amin(at::IntArrayRef{0, 1});
    score = a.amax(1);
  }

  // Counts and extremes.
  const at::Tensor hadAny = s.count > 0;
  s.count += bCount;
  s.actMax = at::maximum(s.actMax, bMax);
  s.actMin = at::minimum(s.actMin, bMin);

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
  if (cpu) {
    if (!s.hist.is_contiguous()) s.hist = s.hist.contiguous();
    const float* v = a.data_ptr<float>();
    const int64_t* e = s.histExp.data_ptr<int64_t>();
    double* h = s.hist.data_ptr<double>();
    const int64_t NB = o.bins;
    at::parallel_for(0, F, 512, [&](int64_t f0, int64_t f1) {
      for (int64_t r = 0; r < B * T; ++r) {
        const float* row = v + r * F;
        for (int64_t f = f0; f < f1; ++f) {
          if (!(row[f] > 0.0f)) continue;
          // v 2^-e NB is exact in double (powers of two): the same bin as the ATen path.
          const auto bin = static_cast<int64_t>(std::floor(std::ldexp(static_cast<double>(row[f]), static_cast<int>(-e[f])) * static_cast<double>(NB)));
          h[f * NB + std::min(std::max<int64_t>(bin, 0), NB - 1)] += 1.0;
        }
      }
    });
  } else {
    const at::Tensor active = a > 0;
    const at::Tensor where = active.nonzero();  // [M, 3]: (row, token, feature)
    if (where.size(0) > 0) {
      const at::Tensor f = where.select(1, 2);
      const at::Tensor v = a.masked_select(active).to(at::kDouble);
      const at::Tensor bin = at::floor(v * at::exp2(-s.histExp.index_select(0, f).to(at::kDouble)) * static_cast<double>(o.bins)).to(at::kLong).clamp(0, o.bins - 1);
      s.hist.view({-1}).index_add_(0, f * o.bins + bin, at::ones_like(v));
    }
  }

  // Contexts: each row's score for each feature is its largest activation; only activating rows compete.
  score = score.t();  // [F, B]
  const at::Tensor activating = score > 0;
  mergeSlots(s.topScore, s.topRow, nullptr, s.topActs, at::where(activating, score, at::full({}, -kInf, score.options())), score, acts, rows, /*largest=*/true);
  // A uniform sample without replacement of each feature's activating rows: the R smallest of
  // i.i.d. uniform keys. Keys come from a generator seeded by (seed, layer, batch index), so a
  // resumed run draws what the uninterrupted one would have.
  const uint64_t batch = static_cast<uint64_t>(s.batches.item<int64_t>());
  auto gen = at::make_generator<at::CPUGeneratorImpl>(splitmix64(o.seed ^ splitmix64(static_cast<uint64_t>(o.layer) ^ splitmix64(batch))));
  const at::Tensor draws = at::rand({F, B}, gen, at::TensorOptions().dtype(at::kDouble)).to(device);
  mergeSlots(s.sampleKey, s.sampleRow, &s.sampleScore, s.sampleActs, at::where(activating, draws, at::full({}, kInf, draws.options())), score, acts, rows,
             /*largest=*/false);
  s.tokens += B * T;
  s.batches += 1;
}

}  // namespace tc
