#include "train/sparse_products.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace tc {

namespace {

// The inner loops are compiled twice, for AVX2 + FMA and for the baseline ISA, and the loader
// picks one per machine (GCC/Clang function multi-versioning): the addon is built portably, without
// -march=native, yet these loops are memory-bound gathers where vector loads matter.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__INTEL_COMPILER)
#define TC_VECTOR_CLONES __attribute__((target_clones("avx2,fma", "default")))
#else
#define TC_VECTOR_CLONES
#endif

// y += a x over d floats.
TC_VECTOR_CLONES void axpy(float a, const float* x, float* y, int64_t d) {
  for (int64_t i = 0; i < d; ++i) y[i] += a * x[i];
}

// <x, y> with 16 running partial sums (vectorisable without reassociating one sum; the order is
// fixed for a given d, so results do not depend on threads).
TC_VECTOR_CLONES float dot(const float* x, const float* y, int64_t d) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= d; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += x[i + j] * y[i + j];
  float s = 0;
  for (; i < d; ++i) s += x[i] * y[i];
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

bool cpuFloat(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors)
    if (!t->device().is_cpu() || t->scalar_type() != c10::kFloat) return false;
  return true;
}

// The row of every entry (int64 [nnz]).
at::Tensor entryRows(const SparseEntries& F) {
  at::Tensor counts = F.offsets.slice(0, 1) - F.offsets.slice(0, 0, -1);
  return at::repeat_interleave(at::arange(F.rows(), F.offsets.options()), counts);
}

// Entries per ATen call in the generic paths: bounds the gathered [chunk, d] temporaries.
constexpr int64_t kChunk = 1 << 16;

template <typename T>
void fillPositiveEntries(const at::Tensor& dense, SparseEntries& F) {
  const int64_t N = dense.size(0), m = dense.size(1);
  const T* p = dense.data_ptr<T>();
  std::vector<int64_t> counts(N);
  at::parallel_for(0, N, 16, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      int64_t c = 0;
      for (int64_t j = 0; j < m; ++j) c += static_cast<float>(p[n * m + j]) > 0;
      counts[n] = c;
    }
  });
  F.offsets = at::empty({N + 1}, dense.options().dtype(c10::kLong));
  int64_t* off = F.offsets.data_ptr<int64_t>();
  off[0] = 0;
  for (int64_t n = 0; n < N; ++n) off[n + 1] = off[n] + counts[n];
  F.cols = at::empty({off[N]}, F.offsets.options());
  F.values = at::empty({off[N]}, dense.options().dtype(c10::kFloat));
  int64_t* cols = F.cols.data_ptr<int64_t>();
  float* vals = F.values.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      int64_t o = off[n];
      for (int64_t j = 0; j < m; ++j) {
        const float v = static_cast<float>(p[n * m + j]);
        if (v > 0) cols[o] = j, vals[o++] = v;
      }
    }
  });
}

}  // namespace

SparseEntries positiveEntries(const at::Tensor& dense, bool portable) {
  SparseEntries F;
  const bool cpu = dense.device().is_cpu() && (dense.scalar_type() == c10::kFloat || dense.scalar_type() == c10::kBFloat16);
  if (portable || !cpu) {
    at::Tensor mask = dense > 0;
    F.offsets = at::cat({at::zeros({1}, dense.options().dtype(c10::kLong)), mask.sum(1).cumsum(0)});
    F.cols = mask.nonzero().select(1, 1).contiguous();
    F.values = dense.masked_select(mask).to(c10::kFloat);
    return F;
  }
  at::Tensor d = dense.contiguous();
  if (d.scalar_type() == c10::kFloat) fillPositiveEntries<float>(d, F);
  else fillPositiveEntries<c10::BFloat16>(d, F);
  return F;
}

SparseEntries fixedEntries(const at::Tensor& cols, const at::Tensor& values) {
  const int64_t N = cols.size(0), k = cols.size(1);
  return {at::arange(0, N * k + 1, k, cols.options().dtype(c10::kLong)), cols.reshape({-1}).to(c10::kLong).contiguous(),
          values.reshape({-1}).contiguous()};
}

at::Tensor sparseTimesDense(const SparseEntries& F, const at::Tensor& W, bool portable) {
  const int64_t N = F.rows(), d = W.size(1);
  if (W.device().is_cpu() && W.scalar_type() != c10::kFloat && W.scalar_type() != c10::kDouble) {
    // libtorch's CPU embedding_bag has no bfloat16 / float16 kernel: through float32.
    SparseEntries asFloat{F.offsets, F.cols, F.values.to(c10::kFloat)};
    return sparseTimesDense(asFloat, W.to(c10::kFloat), portable).to(W.scalar_type());
  }
  if (portable || !cpuFloat({&W, &F.values})) {
    return std::get<0>(at::embedding_bag(W, F.cols, F.offsets.slice(0, 0, -1), /*scale_grad_by_freq=*/false, /*mode=sum*/ 0,
                                         /*sparse=*/false, F.values.to(W.scalar_type())));
  }
  at::Tensor w = W.contiguous();
  at::Tensor out = at::zeros({N, d}, w.options());
  const float* wp = w.data_ptr<float>();
  const float* vals = F.values.data_ptr<float>();
  const int64_t* cols = F.cols.data_ptr<int64_t>();
  const int64_t* off = F.offsets.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, N, 8, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n)
      for (int64_t i = off[n]; i < off[n + 1]; ++i) axpy(vals[i], wp + cols[i] * d, o + n * d, d);
  });
  return out;
}

at::Tensor entryDots(const SparseEntries& F, const at::Tensor& A, const at::Tensor& W, bool portable) {
  const int64_t N = F.rows(), d = W.size(1), nnz = F.cols.size(0);
  if (portable || !cpuFloat({&A, &W})) {
    at::Tensor rows = entryRows(F);
    at::Tensor out = at::empty({nnz}, A.options());
    for (int64_t s = 0; s < nnz; s += kChunk) {
      int64_t e = std::min(nnz, s + kChunk);
      out.slice(0, s, e).copy_((A.index_select(0, rows.slice(0, s, e)) * W.index_select(0, F.cols.slice(0, s, e))).sum(1));
    }
    return out;
  }
  at::Tensor a = A.contiguous(), w = W.contiguous();
  at::Tensor out = at::empty({nnz}, a.options());
  const float* ap = a.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const int64_t* cols = F.cols.data_ptr<int64_t>();
  const int64_t* off = F.offsets.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, N, 8, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n)
      for (int64_t i = off[n]; i < off[n + 1]; ++i) o[i] = dot(ap + n * d, wp + cols[i] * d, d);
  });
  return out;
}

void addSparseTransposeTimesDense(at::Tensor& out, const SparseEntries& F, const at::Tensor& values, const at::Tensor& A,
                                  bool portable) {
  const int64_t N = F.rows(), m = out.size(0), d = out.size(1), nnz = F.cols.size(0);
  if (portable || !cpuFloat({&out, &values, &A}) || !out.is_contiguous()) {
    at::Tensor rows = entryRows(F);
    for (int64_t s = 0; s < nnz; s += kChunk) {
      int64_t e = std::min(nnz, s + kChunk);
      at::Tensor rowsOf = A.index_select(0, rows.slice(0, s, e)) * values.slice(0, s, e).unsqueeze(1).to(A.scalar_type());
      out.index_add_(0, F.cols.slice(0, s, e), rowsOf.to(out.scalar_type()));
    }
    return;
  }
  // Counting sort of the entries by feature, keeping row order inside each feature: then each
  // feature's output row is one thread's, summed over its entries in row order.
  at::Tensor a = A.contiguous();
  const int64_t* cols = F.cols.data_ptr<int64_t>();
  const int64_t* off = F.offsets.data_ptr<int64_t>();
  at::Tensor v = values.contiguous();
  const float* vp = v.data_ptr<float>();
  std::vector<int64_t> start(m + 1, 0), rowOf(nnz);
  std::vector<float> valueOf(nnz);
  for (int64_t i = 0; i < nnz; ++i) ++start[cols[i] + 1];
  for (int64_t j = 0; j < m; ++j) start[j + 1] += start[j];
  std::vector<int64_t> cursor(start.begin(), start.end() - 1);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = off[n]; i < off[n + 1]; ++i) {
      int64_t slot = cursor[cols[i]]++;
      valueOf[slot] = vp[i];
      rowOf[slot] = n;
    }
  const float* ap = a.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, m, 64, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j)
      for (int64_t s = start[j]; s < start[j + 1]; ++s) axpy(valueOf[s], ap + rowOf[s] * d, o + j * d, d);
  });
}

}  // namespace tc
