// Products with a sparse activation matrix F [N, m] held as entries (row, col, value) in row order:
// row n's entries are offsets[n] .. offsets[n + 1]. These are the decoder's forward and backward and
// the encoder's weight gradient when only a few features per row are active (TopK, trained ReLU),
// at O(nnz d) instead of the O(N m d) of a dense GEMM.
//
// On the CPU (float32) they are hand-written loops, parallel over rows or over features (a
// counting sort gives each feature its entries), so no two threads write the same row and the
// sums are in a fixed order: deterministic for any thread count. Elsewhere (CUDA, other dtypes)
// they are ATen ops (embedding_bag, index_select, index_add_), device-agnostic; `portable` selects
// those on the CPU too, which is how the tests check the GPU path on a machine without one.
#pragma once
#include <ATen/Tensor.h>

namespace tc {

struct SparseEntries {
  at::Tensor offsets;  // [N + 1] int64, row starts
  at::Tensor cols;     // [nnz] int64, feature of each entry
  at::Tensor values;   // [nnz]
  int64_t rows() const { return offsets.size(0) - 1; }
};

// Entries of every positive element of `dense` [N, m] (ReLU's active features), in row order;
// float32 values whatever the dtype of `dense`.
SparseEntries positiveEntries(const at::Tensor& dense, bool portable = false);
// Entries of `cols` / `values` [N, k]: k per row.
SparseEntries fixedEntries(const at::Tensor& cols, const at::Tensor& values);

// out [N, d] = F W, W [m, d].
at::Tensor sparseTimesDense(const SparseEntries& F, const at::Tensor& W, bool portable = false);
// For every entry e = (n, j): <A[n], W[j]>. A [N, d], W [m, d] -> [nnz].
at::Tensor entryDots(const SparseEntries& F, const at::Tensor& A, const at::Tensor& W, bool portable = false);
// out [m, d] += F^T A with F's values replaced by `values` [nnz] (the same entries); A [N, d].
void addSparseTransposeTimesDense(at::Tensor& out, const SparseEntries& F, const at::Tensor& values, const at::Tensor& A,
                                  bool portable = false);

}  // namespace tc
