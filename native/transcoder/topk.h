// The indices of the k largest entries of each row of a matrix, in no particular order: what TopK
// transcoders select. at::topk on the CPU keeps a heap of (value, index) pairs per row (or sorts a
// copy of the row); this selects by a threshold instead: the k-th largest of a small sample of the
// row gives a threshold that admits a few times k entries, one pass over the row collects those,
// and the top k among them are exact. A row where the sample misjudges (fewer than k admitted, NaN)
// falls back to a full selection, so the result is always the exact top k (ties at the k-th value
// resolved by position; NaN counts as largest, as in at::topk).
//
// CPU float32 and bfloat16 matrices take this path; other devices and dtypes use at::topk.
#pragma once
#include <ATen/Tensor.h>

namespace tc {

// scores [..., n] -> int64 [..., k], k <= n.
at::Tensor topkIndices(const at::Tensor& scores, int64_t k);

}  // namespace tc
