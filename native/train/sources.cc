#include "train/sources.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/errors.h"

namespace tc {

TokenFileReader::TokenFileReader(std::string path, uint64_t dataOffset, int64_t rows, int64_t context, int64_t startRow, DataSlice slice)
    : path_(std::move(path)), dataOffset_(dataOffset), rows_(rows), context_(context), position_(startRow), start_(startRow), slice_(slice) {
  if (startRow < 0 || startRow > rows) throw InvalidArgument("token file start row " + std::to_string(startRow) + " is out of range");
  if (slice_.sliced() && (slice_.blockRows < 1 || slice_.rank < 0 || slice_.rank >= slice_.ranks))
    throw InvalidArgument("bad data slice: rank " + std::to_string(slice_.rank) + " of " + std::to_string(slice_.ranks) + ", " + std::to_string(slice_.blockRows) + " rows per block");
  position_ = rowOf(0);
}

int64_t TokenFileReader::rowOf(int64_t k) const {
  if (!slice_.sliced()) return start_ + k;
  const int64_t m = slice_.blockRows;
  return start_ + (k / m) * (slice_.ranks * m) + slice_.rank * m + k % m;
}

int64_t TokenFileReader::position() const {
  if (!slice_.sliced()) return position_;
  // Past every global batch this rank has started (rows it did not read of the last one are skipped).
  const int64_t m = slice_.blockRows;
  return std::min(rows_, start_ + (own_ + m - 1) / m * (slice_.ranks * m));
}

at::Tensor TokenFileReader::next(int64_t count) {
  // Runs of consecutive file rows: the whole request without a slice, at most a block with one.
  std::vector<std::pair<int64_t, int64_t>> runs;  // (first row, rows)
  int64_t n = 0;
  while (n < count) {
    const int64_t row = slice_.sliced() ? rowOf(own_) : position_;
    if (row >= rows_) break;
    int64_t len = std::min(count - n, rows_ - row);
    if (slice_.sliced()) len = std::min(len, slice_.blockRows - own_ % slice_.blockRows);
    runs.emplace_back(row, len);
    n += len;
    own_ += len;
    position_ = row + len;
  }
  if (n == 0) return at::Tensor();
  at::Tensor out = at::empty({n, context_}, at::TensorOptions().dtype(c10::kInt));
  int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw FormatError(path_, std::string("cannot open: ") + std::strerror(errno));
  auto* dst = static_cast<char*>(out.data_ptr());
  for (const auto& [row, len] : runs) {
    const size_t bytes = static_cast<size_t>(len * context_) * sizeof(int32_t);
    off_t offset = static_cast<off_t>(dataOffset_ + static_cast<uint64_t>(row * context_) * sizeof(int32_t));
    size_t done = 0;
    while (done < bytes) {
      ssize_t r = ::pread(fd, dst + done, bytes - done, offset + static_cast<off_t>(done));
      if (r <= 0) {
        ::close(fd);
        throw FormatError(path_, "truncated token file (read failed at row " + std::to_string(row) + ")");
      }
      done += static_cast<size_t>(r);
    }
    dst += bytes;
  }
  ::close(fd);
  return out.to(c10::kLong);
}

ModelActivationSource::ModelActivationSource(std::shared_ptr<const Transformer> model, std::string path, uint64_t dataOffset,
                                             int64_t rows, int64_t context, std::vector<HookPair> hooks,
                                             int64_t sequencesPerForward, int64_t startRow, DataSlice slice)
    : model_(std::move(model)),
      reader_(path, dataOffset, rows, context, context > 0 ? startRow / context : 0,
              slice.sliced() && context > 0 ? DataSlice{slice.rank, slice.ranks, slice.blockRows / context} : DataSlice{}),
      resampleReader_(path, dataOffset, rows, context, 0),
      hooks_(std::move(hooks)),
      sequencesPerForward_(sequencesPerForward),
      position_(startRow),
      skip_(context > 0 ? startRow % context : 0),
      context_(context),
      sliced_(slice.sliced()) {
  if (sliced_ && (context < 1 || slice.blockRows % context != 0))
    throw InvalidArgument("each rank's share of a batch (" + std::to_string(slice.blockRows) + " rows) must be whole sequences of " + std::to_string(context) + " tokens");
  if (sliced_ && skip_ != 0)
    throw InvalidArgument("a data-parallel run starts at a sequence's first token, not at activation row " + std::to_string(startRow));
  for (const auto& h : hooks_) forward_.hooks.insert(forward_.hooks.end(), {h.input, h.target});
  forward_.logits = false;
  // The deepest layer any hook reads: later blocks and the unembedding are skipped.
  int64_t deepest = 0;
  for (const auto& name : forward_.hooks) {
    if (name.rfind("blocks.", 0) == 0) deepest = std::max<int64_t>(deepest, std::stoll(name.substr(7)));
    else deepest = model_->config().nLayers - 1;
  }
  forward_.stopAfterLayer = deepest;
  HookCapture(model_->config(), forward_.hooks);  // validates the names now
}

bool ModelActivationSource::next(ActivationBatch& out) {
  at::Tensor tokens = reader_.next(sequencesPerForward_);
  if (!tokens.defined()) return false;
  at::NoGradGuard noGrad;
  ForwardResult r = model_->forward(tokens, forward_);
  out.clear();
  for (const auto& h : hooks_) {
    at::Tensor x = r.cache.at(h.input), y = r.cache.at(h.target);
    x = x.reshape({-1, x.size(-1)});
    y = y.reshape({-1, y.size(-1)});
    out.emplace_back(x.narrow(0, skip_, x.size(0) - skip_), y.narrow(0, skip_, y.size(0) - skip_));
  }
  position_ += out.front().first.size(0);
  skip_ = 0;
  return true;
}

at::Tensor ModelActivationSource::resampleTokens(int64_t count) {
  at::Tensor rows = resampleReader_.next(count);
  if (!rows.defined() || rows.size(0) < count) {
    resampleReader_.rewind();  // cycle: read from the start again
    at::Tensor more = resampleReader_.next(count - (rows.defined() ? rows.size(0) : 0));
    rows = rows.defined() ? (more.defined() ? at::cat({rows, more}) : rows) : more;
  }
  return rows;
}

CacheActivationSource::CacheActivationSource(std::vector<std::vector<CacheShard>> layers, int64_t startRow, DataSlice slice)
    : layers_(std::move(layers)), slice_(slice), start_(startRow), position_(startRow), skip_(startRow) {
  if (slice_.sliced() && (slice_.blockRows < 1 || slice_.rank < 0 || slice_.rank >= slice_.ranks))
    throw InvalidArgument("bad data slice: rank " + std::to_string(slice_.rank) + " of " + std::to_string(slice_.ranks));
  if (layers_.empty()) throw InvalidArgument("an activation cache source needs at least one layer");
  for (const auto& shards : layers_) {
    if (shards.size() != layers_.front().size()) throw InvalidArgument("the cached layers have different numbers of shards");
    for (size_t i = 0; i < shards.size(); ++i) {
      if (shards[i].rows != layers_.front()[i].rows) throw InvalidArgument("the cached layers' shard " + std::to_string(i) + " hold different numbers of rows");
    }
  }
  // Skip whole shards before the start row.
  const auto& first = layers_.front();
  while (shard_ < first.size() && skip_ >= first[shard_].rows) skip_ -= first[shard_++].rows;
}

bool CacheActivationSource::next(ActivationBatch& out) {
  if (shard_ >= layers_.front().size()) return false;
  out.clear();
  // With a slice: this rank's rows of the shard's (rows counted from the start row).
  at::Tensor mine;
  const int64_t first = position_ - start_;
  if (slice_.sliced()) {
    const int64_t n = layers_.front()[shard_].rows - skip_;
    std::vector<int64_t> keep;
    for (int64_t i = 0; i < n; ++i)
      if (slice_.owns(first + i)) keep.push_back(i);
    mine = at::tensor(keep, at::TensorOptions().dtype(c10::kLong));
  }
  for (const auto& shards : layers_) {
    const CacheShard& s = shards[shard_];
    auto tensors = loadSafetensors(s.path, s.dataStart, s.entries);
    at::Tensor x = tensors.at("input").to(c10::kFloat), y = tensors.at("target").to(c10::kFloat);
    if (skip_ > 0) {
      x = x.narrow(0, skip_, x.size(0) - skip_);
      y = y.narrow(0, skip_, y.size(0) - skip_);
    }
    const int64_t read = x.size(0);
    if (mine.defined()) {
      x = x.index_select(0, mine);
      y = y.index_select(0, mine);
    }
    out.emplace_back(x, y);
    if (&shards == &layers_.back()) position_ += read;
  }
  ++shard_;
  skip_ = 0;
  return true;
}

}  // namespace tc
