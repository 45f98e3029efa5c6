#include "train/shuffle_buffer.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "core/errors.h"

namespace tc {

ShuffleBuffer::ShuffleBuffer(int64_t capacity, bool shuffle, uint64_t seed) : capacity_(capacity), shuffle_(shuffle), seed_(seed) {
  if (capacity < 2) throw InvalidArgument("the shuffle buffer needs a capacity of at least 2 rows");
}

void ShuffleBuffer::append(at::Tensor& into, const at::Tensor& rows) {
  into = into.defined() ? at::cat({into, rows}) : rows.clone();
}

void ShuffleBuffer::push(const at::Tensor& x, const at::Tensor& y) {
  if (x.size(0) != y.size(0)) throw InvalidArgument("shuffle buffer: inputs and targets have different row counts");
  append(poolX_, x);
  append(poolY_, y);
  pending_ = poolX_.size(0);
}

// Moves rows from the pool to the serving queue: with shuffling, once the pool is full (or the data
// ends), permute it and serve one half, keeping the other; without, serve everything in order.
void ShuffleBuffer::promote(bool draining) {
  if (pending_ == 0) return;
  at::Tensor x = poolX_, y = poolY_;
  int64_t serveCount = pending_;
  if (shuffle_) {
    if (pending_ < capacity_ && !draining) return;
    // A fresh generator per round from (seed, round): the order is reproducible and independent
    // of how the pool was filled.
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed_ + 0x9e3779b97f4a7c15ULL * ++round_);
    at::Tensor perm = at::randperm(pending_, gen, at::TensorOptions().dtype(c10::kLong)).to(x.device());
    x = x.index_select(0, perm);
    y = y.index_select(0, perm);
    if (!draining) serveCount = pending_ / 2;
  }
  at::Tensor restX = x.narrow(0, serveCount, pending_ - serveCount), restY = y.narrow(0, serveCount, pending_ - serveCount);
  at::Tensor newX = x.narrow(0, 0, serveCount), newY = y.narrow(0, 0, serveCount);
  if (servable() > 0) {
    newX = at::cat({serveX_.narrow(0, served_, servable()), newX});
    newY = at::cat({serveY_.narrow(0, served_, servable()), newY});
  }
  serveX_ = newX.contiguous();
  serveY_ = newY.contiguous();
  served_ = 0;
  poolX_ = restX.size(0) > 0 ? restX.clone() : at::Tensor();
  poolY_ = restY.size(0) > 0 ? restY.clone() : at::Tensor();
  pending_ = poolX_.defined() ? poolX_.size(0) : 0;
}

bool ShuffleBuffer::ready(int64_t batch, bool draining) {
  if (servable() < batch) promote(draining);
  return servable() >= batch;
}

std::pair<at::Tensor, at::Tensor> ShuffleBuffer::take(int64_t batch) {
  if (!ready(batch)) throw InvalidArgument("shuffle buffer: not enough rows to serve a batch");
  auto out = std::make_pair(serveX_.narrow(0, served_, batch), serveY_.narrow(0, served_, batch));
  served_ += batch;
  return out;
}

}  // namespace tc
