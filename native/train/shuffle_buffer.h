// A buffer of (input, target) activation pairs that mixes rows from many sequences before they are
// served as training batches (neighbouring tokens of one sequence are strongly correlated).
// Pairs always move together. With shuffling on, the buffer fills to capacity, applies one random
// permutation to all rows, serves the first half and keeps the second half to mix with the next
// fill (the paper's "refill half, permute" scheme). With shuffling off, rows are served in the
// order they arrived.
#pragma once
#include <ATen/Tensor.h>

#include <cstdint>
#include <utility>

namespace tc {

class ShuffleBuffer {
 public:
  ShuffleBuffer(int64_t capacity, bool shuffle, uint64_t seed);

  // Appends rows x [n, d_in], y [n, d_out].
  void push(const at::Tensor& x, const at::Tensor& y);
  // Whether `batch` rows can be served now; `draining` (no more data coming) serves what is left.
  bool ready(int64_t batch, bool draining = false);
  std::pair<at::Tensor, at::Tensor> take(int64_t batch);
  int64_t size() const { return pending_ + servable(); }

 private:
  int64_t servable() const { return serveX_.defined() ? serveX_.size(0) - served_ : 0; }
  void append(at::Tensor& into, const at::Tensor& rows);
  void promote(bool draining);

  int64_t capacity_;
  bool shuffle_;
  uint64_t seed_;
  uint64_t round_ = 0;
  at::Tensor poolX_, poolY_;    // rows waiting to be mixed
  int64_t pending_ = 0;
  at::Tensor serveX_, serveY_;  // rows being served, in order
  int64_t served_ = 0;
};

}  // namespace tc
