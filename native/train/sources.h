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

// Rows of a token file (safetensors `tokens`, I32 [rows, context]) read with pread, in order.
class TokenFileReader {
 public:
  TokenFileReader(std::string path, uint64_t dataOffset, int64_t rows, int64_t context, int64_t startRow);
  // Up to `count` next rows as int64 [n, context]; empty when the file is exhausted.
  at::Tensor next(int64_t count);
  int64_t position() const { return position_; }
  void rewind() { position_ = 0; }

 private:
  std::string path_;
  uint64_t dataOffset_;  // absolute byte offset of the tokens tensor
  int64_t rows_, context_, position_;
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
  ModelActivationSource(std::shared_ptr<const Transformer> model, std::string path, uint64_t dataOffset, int64_t rows,
                        int64_t context, std::vector<HookPair> hooks, int64_t sequencesPerForward, int64_t startRow);
  bool next(ActivationBatch& out) override;
  int64_t position() const override { return position_; }
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
  CacheActivationSource(std::vector<std::vector<CacheShard>> layers, int64_t startRow);
  bool next(ActivationBatch& out) override;
  int64_t position() const override { return position_; }

 private:
  std::vector<std::vector<CacheShard>> layers_;
  size_t shard_ = 0;
  int64_t position_;
  int64_t skip_;  // rows of the first shard read to skip when resuming
};

}  // namespace tc
