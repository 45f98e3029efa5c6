// Where training activations come from: a model run on rows of a pre-tokenised token file (one
// forward feeding every layer being trained), or an activation cache of (input, target) shards.
#pragma once
#include <ATen/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/transformer.h"

namespace tc {

// Data-parallel training's slice of the data: from the start row on, the data is cut into global
// batches of `ranks * blockRows` rows, and rank `rank` reads the `blockRows` rows at offset
// `rank * blockRows` of each (so the ranks' slices of a global batch, side by side, are the batch one
// process would read).
struct DataSlice {
  int64_t rank = 0, ranks = 1, blockRows = 0;
  bool sliced() const { return ranks > 1; }
  // Whether row `row` (counted from the start row) is this rank's.
  bool owns(int64_t row) const { return !sliced() || (row / blockRows) % ranks == rank; }
};

// Rows of a token file (safetensors `tokens`, I32 [rows, context]) read with pread, in order (with a
// slice: only this rank's rows, `slice.blockRows` counted in token rows).
class TokenFileReader {
 public:
  TokenFileReader(std::string path, uint64_t dataOffset, int64_t rows, int64_t context, int64_t startRow, DataSlice slice = {});
  // Up to `count` next rows as int64 [n, context]; empty when the file (or this rank's share) is exhausted.
  at::Tensor next(int64_t count);
  // The next row to read; with a slice, the first row of the next global batch this rank has not
  // started (what every rank has read past once they read in step).
  int64_t position() const;
  void rewind() { position_ = 0, own_ = 0; }

 private:
  // The file row of this rank's `k`-th row.
  int64_t rowOf(int64_t k) const;

  std::string path_;
  uint64_t dataOffset_;  // absolute byte offset of the tokens tensor
  int64_t rows_, context_, position_;
  int64_t start_, own_ = 0;  // with a slice: the start row and this rank's rows read so far
  DataSlice slice_;
};

struct HookPair {
  std::string input, target;
};

// One (input, target) pair of activation rows per trained layer.
using ActivationBatch = std::vector<std::pair<at::Tensor, at::Tensor>>;

class ActivationSource {
 public:
  virtual ~ActivationSource() = default;
  // Fills `out` with one entry per layer; false when the data is exhausted.
  virtual bool next(ActivationBatch& out) = 0;
  // Activation rows (token positions) served so far, counted from the start of the data.
  virtual int64_t position() const = 0;
  // For dead-feature resampling: the model and `count` token rows ([n, T]); null when the source
  // has no model (an activation cache).
  virtual const Transformer* model() const { return nullptr; }
  virtual at::Tensor resampleTokens(int64_t count) { return at::Tensor(); }
};

// Runs the model on `sequencesPerForward` token rows at a time and collects every layer's pair of
// hooks from that one forward (stopping after the deepest layer needed). Starts at activation row
// `startRow` (a token position: sequence startRow / context, offset startRow % context).
class ModelActivationSource : public ActivationSource {
 public:
  // With a slice (blockRows in activation rows, a multiple of the context), the start row must be a
  // sequence's first.
  ModelActivationSource(std::shared_ptr<const Transformer> model, std::string path, uint64_t dataOffset, int64_t rows,
                        int64_t context, std::vector<HookPair> hooks, int64_t sequencesPerForward, int64_t startRow,
                        DataSlice slice = {});
  bool next(ActivationBatch& out) override;
  int64_t position() const override { return sliced_ ? reader_.position() * context_ : position_; }
  const Transformer* model() const override { return model_.get(); }
  // Rows from a second reader that cycles through the file from the start.
  at::Tensor resampleTokens(int64_t count) override;

 private:
  std::shared_ptr<const Transformer> model_;
  TokenFileReader reader_;
  TokenFileReader resampleReader_;
  std::vector<HookPair> hooks_;
  int64_t sequencesPerForward_;
  ForwardOptions forward_;
  int64_t position_;
  int64_t skip_;  // activation rows of the first forward to drop when resuming mid-sequence
  int64_t context_;
  bool sliced_;
};

// Shards of an activation cache, each a safetensors file with `input` [rows, d_in] and `target`
// [rows, d_out], read in the given order, rows in file order.
struct CacheShard {
  std::string path;
  uint64_t dataStart;
  std::vector<SafetensorsEntry> entries;  // input and target
  int64_t rows;
};

// One or more cached layers read in step (one pair per layer per shard): shard i of every layer holds
// the same rows, as one cache writer made them (checked by the caller: same shard row counts).
class CacheActivationSource : public ActivationSource {
 public:
  // With a slice, each rank keeps its rows of every shard it reads (every rank reads every shard).
  CacheActivationSource(std::vector<std::vector<CacheShard>> layers, int64_t startRow, DataSlice slice = {});
  bool next(ActivationBatch& out) override;
  int64_t position() const override { return position_; }

 private:
  std::vector<std::vector<CacheShard>> layers_;
  DataSlice slice_;
  int64_t start_;
  size_t shard_ = 0;
  int64_t position_;
  int64_t skip_;  // rows of the first shard read to skip when resuming
};

}  // namespace tc
