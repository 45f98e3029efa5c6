#include "transcoder/topk.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <functional>
#include <cmath>
#include <utility>
#include <vector>

#include "core/errors.h"

namespace tc {

namespace {

constexpr int64_t kDirectBelow = 2048;
constexpr int64_t kSample = 512;
// (value, column) ordered by value descending, NaN first (as at::topk), then by column.
struct Entry {
  float value;
  int64_t col;
};
bool before(const Entry& a, const Entry& b) {
  const bool an = std::isnan(a.value), bn = std::isnan(b.value);
  if (an != bn) return an;
  if (!an && a.value != b.value) return a.value > b.value;
  return a.col < b.col;
}

// The k first entries of `entries` by `before`, written to out (columns).
void selectInto(std::vector<Entry>& entries, int64_t k, int64_t* out) {
  std::nth_element(entries.begin(), entries.begin() + (k - 1), entries.end(), before);
  for (int64_t j = 0; j < k; ++j) out[j] = entries[j].col;
}

// kSample distinct positions in [0, n), pseudo-random (a fixed LCG) and sorted: a strided sample
// could align with structure in the columns (every 4th feature biased, say) and misjudge the row.
std::vector<int64_t> samplePositions(int64_t n) {
  std::vector<int64_t> positions(kSample);
  uint64_t state = 0x9E3779B97F4A7C15ull;
  const int64_t stride = n / kSample;
  for (int64_t s = 0; s < kSample; ++s) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    positions[s] = s * stride + static_cast<int64_t>((state >> 33) % static_cast<uint64_t>(stride));  // one in each stride
  }
  return positions;
}

template <typename T>
void selectRow(const T* row, int64_t n, int64_t k, int64_t* out, const std::vector<int64_t>& positions, std::vector<Entry>& entries,
               std::vector<float>& sample) {
  entries.clear();
  // The threshold: the sample entry of rank about twice the k / n share of the sample plus 8, so
  // that it admits about twice the k needed (fewer than k has probability below 1e-4 at the
  // shapes TopK uses: the share above a sample order statistic is Beta-distributed).
  const int64_t rank = 2 * ((k * kSample + n - 1) / n) + 8;
  if (!positions.empty() && rank < kSample / 2) {
    sample.resize(kSample);
    int nan = 0;
    for (int64_t s = 0; s < kSample; ++s) {
      sample[s] = static_cast<float>(row[positions[s]]);
      nan |= sample[s] != sample[s];
    }
    if (!nan) {
      std::nth_element(sample.begin(), sample.begin() + rank, sample.end(), std::greater<float>());
      const float threshold = sample[rank];
      // Blocks of 64: a branch-free count (vectorised) first, the entries only where there are any.
      for (int64_t j0 = 0; j0 < n && !nan; j0 += 64) {
        const int64_t j1 = std::min(n, j0 + 64);
        int hits = 0;
        for (int64_t j = j0; j < j1; ++j) {
          const float v = static_cast<float>(row[j]);
          hits += v >= threshold;
          nan |= v != v;
        }
        if (hits == 0 || nan) continue;
        for (int64_t j = j0; j < j1; ++j) {
          const float v = static_cast<float>(row[j]);
          if (v >= threshold) entries.push_back({v, j});
        }
      }
      // Every entry left out is below the threshold, so below each admitted one: with k admitted
      // the top k are among them. Otherwise (or with a NaN anywhere) select from the whole row.
      if (!nan && static_cast<int64_t>(entries.size()) >= k) return selectInto(entries, k, out);
      entries.clear();
    }
  }
  entries.reserve(n);
  for (int64_t j = 0; j < n; ++j) entries.push_back({static_cast<float>(row[j]), j});
  selectInto(entries, k, out);
}

template <typename T>
void selectRows(const at::Tensor& scores, int64_t k, at::Tensor& out) {
  const int64_t N = scores.size(0), n = scores.size(1);
  const T* data = scores.data_ptr<T>();
  int64_t* o = out.data_ptr<int64_t>();
  // Rows shorter than kDirectBelow are selected directly (a sample would be most of the row).
  const std::vector<int64_t> positions = n >= kDirectBelow ? samplePositions(n) : std::vector<int64_t>();
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    std::vector<Entry> entries;
    std::vector<float> sample;
    for (int64_t r = begin; r < end; ++r) selectRow(data + r * n, n, k, o + r * k, positions, entries, sample);
  });
}

}  // namespace

at::Tensor topkIndices(const at::Tensor& scores, int64_t k) {
  if (scores.dim() < 1 || k < 0 || k > scores.size(-1))
    throw InvalidArgument("top-k selection needs rows of at least k = " + std::to_string(k) + " entries, got " + c10::str(scores.sizes()));
  if (scores.dim() != 2) {
    std::vector<int64_t> shape(scores.sizes().begin(), scores.sizes().end());
    shape.back() = k;
    return topkIndices(scores.reshape({-1, scores.size(-1)}), k).reshape(shape);
  }
  const bool cpu = scores.device().is_cpu() && (scores.scalar_type() == c10::kFloat || scores.scalar_type() == c10::kBFloat16);
  if (!cpu || k == 0) return std::get<1>(at::topk(scores, k, -1, /*largest=*/true, /*sorted=*/false));
  at::Tensor s = scores.contiguous();
  at::Tensor out = at::empty({s.size(0), k}, s.options().dtype(c10::kLong));
  if (s.scalar_type() == c10::kFloat) selectRows<float>(s, k, out);
  else selectRows<c10::BFloat16>(s, k, out);
  return out;
}

}  // namespace tc
