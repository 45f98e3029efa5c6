// Data-parallel training's collectives over a process group: each rank trains on its slice of every
// global batch, computes its share of the batch's loss (losses.h, BatchReduction) and the gradients
// of that share; summing them over the ranks gives the global batch's gradients on every rank, so
// every rank takes the same optimizer step and the replicas stay equal.
//
// Gradients travel in buckets: they are packed in order into flat buffers of at most `bucketBytes`
// (a big tensor alone in its own), every bucket's all-reduce is started at once and then waited for,
// so there are a few large collectives per step instead of one per parameter.
#pragma once
#include <ATen/Tensor.h>

#include <chrono>
#include <memory>
#include <vector>

#include "distributed/process_group.h"
#include "transcoder/losses.h"

namespace tc {

class DataParallel {
 public:
  DataParallel(std::shared_ptr<ProcessGroup> group, int64_t bucketBytes = 32 << 20);

  int rank() const { return group_->rank(); }
  int size() const { return group_->size(); }
  ProcessGroup& group() { return *group_; }

  // The BatchReduction of a slice of `localRows` rows (every rank holds as many).
  BatchReduction reduction(int64_t localRows);
  // The sum over ranks of `t` (any device: reduced on the CPU, returned on t's device and dtype).
  at::Tensor sum(const at::Tensor& t);
  // Sums every tensor over the ranks in place, through flat float32 buckets (see above; float64
  // tensors in float64 buckets). Undefined tensors are skipped (every rank must pass the same list
  // of shapes).
  void sumInPlace(const std::vector<at::Tensor*>& tensors);
  // Rank 0's values of every tensor, copied into it in place on the other ranks.
  void broadcastFromRoot(const std::vector<at::Tensor*>& tensors);
  // The element-wise maximum over ranks of small flags (e.g. stop requests).
  at::Tensor max(const at::Tensor& t);

  // Seconds spent waiting in collectives since the last call (then reset): all-reduce time per step.
  double takeSeconds();

 private:
  template <class F>
  auto timed(F&& f) -> decltype(f());

  std::shared_ptr<ProcessGroup> group_;
  int64_t bucketBytes_;
  double seconds_ = 0;
};

}  // namespace tc
