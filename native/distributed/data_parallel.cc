#include "distributed/data_parallel.h"

#include <ATen/ATen.h>

#include "core/errors.h"

namespace tc {

DataParallel::DataParallel(std::shared_ptr<ProcessGroup> group, int64_t bucketBytes)
    : group_(std::move(group)), bucketBytes_(bucketBytes) {
  if (!group_) throw InvalidArgument("data-parallel training needs a process group");
  if (bucketBytes_ < 1024) throw InvalidArgument("the gradient bucket size must be at least 1 KiB, got " + std::to_string(bucketBytes_));
}

template <class F>
auto DataParallel::timed(F&& f) -> decltype(f()) {
  const auto t0 = std::chrono::steady_clock::now();
  struct Add {
    double& s;
    std::chrono::steady_clock::time_point t0;
    ~Add() { s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); }
  } add{seconds_, t0};
  return f();
}

double DataParallel::takeSeconds() {
  double s = seconds_;
  seconds_ = 0;
  return s;
}

BatchReduction DataParallel::reduction(int64_t localRows) {
  BatchReduction r;
  r.globalRows = localRows * size();
  r.sum = [this](const at::Tensor& t) { return sum(t); };
  return r;
}

at::Tensor DataParallel::sum(const at::Tensor& t) {
  return timed([&] { return group_->allReduce(t.to(c10::kCPU), ReduceKind::Sum).to(t.device()); });
}

at::Tensor DataParallel::max(const at::Tensor& t) {
  return timed([&] { return group_->allReduce(t.to(c10::kCPU), ReduceKind::Max).to(t.device()); });
}

void DataParallel::sumInPlace(const std::vector<at::Tensor*>& tensors) {
  timed([&] {
    // Buckets of consecutive tensors, each at most bucketBytes_ (a larger tensor fills one alone).
    // float64 tensors (statistics) travel in float64 buckets of their own; the rest in float32.
    std::vector<std::vector<at::Tensor*>> buckets;
    std::vector<c10::ScalarType> dtypes;
    for (c10::ScalarType dtype : {c10::kFloat, c10::kDouble}) {
      int64_t bytes = 0;
      bool open = false;
      for (at::Tensor* t : tensors) {
        if (!t->defined() || (t->scalar_type() == c10::kDouble) != (dtype == c10::kDouble)) continue;
        const int64_t b = t->numel() * c10::elementSize(dtype);
        if (!open || bytes + b > bucketBytes_) {
          buckets.emplace_back();
          dtypes.push_back(dtype);
          bytes = 0;
          open = true;
        }
        buckets.back().push_back(t);
        bytes += b;
      }
    }
    if (buckets.empty()) return;
    // A bucket of one float32 CPU tensor is reduced where it lies (no copies of the big gradients).
    auto inPlace = [](const std::vector<at::Tensor*>& bucket) {
      const at::Tensor& t = *bucket.front();
      return bucket.size() == 1 && t.device().is_cpu() && t.scalar_type() == c10::kFloat && t.is_contiguous();
    };
    std::vector<at::Tensor> flat;
    for (size_t i = 0; i < buckets.size(); ++i) {
      if (inPlace(buckets[i])) {
        flat.push_back(buckets[i].front()->detach().view({-1}));
        continue;
      }
      std::vector<at::Tensor> parts;
      for (at::Tensor* t : buckets[i]) parts.push_back(t->detach().to(c10::kCPU, dtypes[i]).reshape({-1}));
      flat.push_back(at::cat(parts));
    }
    group_->allReduceInPlace(flat, ReduceKind::Sum);
    for (size_t i = 0; i < buckets.size(); ++i) {
      if (inPlace(buckets[i])) continue;
      int64_t offset = 0;
      for (at::Tensor* t : buckets[i]) {
        const int64_t n = t->numel();
        t->detach().copy_(flat[i].narrow(0, offset, n).view(t->sizes()));
        offset += n;
      }
    }
  });
}

void DataParallel::broadcastFromRoot(const std::vector<at::Tensor*>& tensors) {
  timed([&] {
    for (at::Tensor* t : tensors) {
      if (!t->defined()) continue;
      at::Tensor root = group_->broadcast(t->detach().to(c10::kCPU), 0);
      t->detach().copy_(root);
    }
  });
}

}  // namespace tc
