// A whole training run in C++: activations from a source (model forward or cache) flow through one
// shuffle buffer per layer into that layer's trainer, step after step, until the step budget, the
// end of the data, or a stop request. Progress and checkpoint snapshots leave through callbacks.
#pragma once
#include <ATen/Tensor.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "train/cross_layer_trainer.h"
#include "train/shuffle_buffer.h"
#include "train/sources.h"
#include "train/step_trainer.h"

namespace tc {

// One transcoder being trained: a per-layer transcoder with its StepTrainer, or a cross-layer
// transcoder with its CrossLayerTrainer (which takes every layer's pair of the same rows). Its spec
// names its placement (layers, input and target hooks): the model source reads those hooks, and
// dead-feature resampling splices a per-layer transcoder in there.
struct RunSlot {
  std::shared_ptr<Transcoder> transcoder;
  std::shared_ptr<StepTrainer> trainer;
  std::shared_ptr<CrossLayerTranscoder> crossLayer;
  std::shared_ptr<CrossLayerTrainer> crossTrainer;

  // The number of (input, target) pairs of the source it consumes: 1, or a CLT's layers.
  int64_t pairs() const { return crossLayer ? crossLayer->spec().nLayers : 1; }
  int64_t steps() const { return crossTrainer ? crossTrainer->steps() : trainer->steps(); }
};

struct RunOptions {
  int64_t batchSize = 4096;      // activation rows per step
  int64_t totalSteps = 0;        // stop when every trainer has taken this many steps
  int64_t bufferRows = 1 << 18;  // shuffle buffer capacity per layer
  bool shuffle = true;
  uint64_t seed = 0;
  int64_t logEvery = 10;         // steps between progress reports
  int64_t checkpointEvery = 0;   // steps between checkpoint snapshots (0: none)
  // Data-parallel training (distributed/data_parallel.h): this process is one rank; batchSize is its
  // slice of each global batch (batchSize x ranks rows), the source reads its slice of the data.
  // Every rank takes the same steps and stops at the same step (a stop request or the end of any
  // rank's data ends the run on all of them).
  std::shared_ptr<DataParallel> dataParallel;
  // Feature-sharded training (StepTrainer::setFeatureShards): every rank reads the whole batch and
  // trains its slice of each transcoder's features; snapshots gather the slices (a collective: every
  // rank takes them at the same steps, and gets the whole transcoder).
  std::shared_ptr<DataParallel> featureShards;
};

struct RunProgress {
  int64_t step = 0;
  int64_t position = 0;  // data position to resume from (see TrainingRun::position)
  std::vector<StepMetrics> metrics;  // the latest step's metrics, one per layer (a CLT's: one per layer it spans)
  double collectiveSeconds = 0;      // data-parallel: time in collectives since the previous report
};

// Copies of everything a checkpoint holds, taken between steps.
struct RunSnapshot {
  int64_t step = 0;
  int64_t position = 0;
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> tensors;  // per slot: parameters and trainer state
};

struct RunResult {
  int64_t steps = 0;
  int64_t position = 0;
  bool exhausted = false;  // the data ran out before the step budget
  bool stopped = false;    // stop() was requested (on any rank)
  double collectiveSeconds = 0;  // data-parallel: time in collectives over the run
};

class TrainingRun {
 public:
  TrainingRun(std::vector<RunSlot> slots, std::unique_ptr<ActivationSource> source, RunOptions options);

  RunResult run(const std::function<void(const RunProgress&)>& onProgress,
                const std::function<void(const RunSnapshot&)>& onCheckpoint);
  // Where a resumed run should start reading: without shuffling, exactly after the last trained
  // row (so a resumed run replays the uninterrupted one); with shuffling, after the rows read so
  // far (rows still in the buffers are not replayed).
  int64_t position(int64_t steps) const;
  void stop() { stop_ = true; }

  // Parameters and trainer state of a slot, copied (for checkpoints).
  static std::vector<std::pair<std::string, at::Tensor>> snapshotSlot(const RunSlot& slot);
  // Every slot's snapshot, the features of every rank gathered when sharded (a collective then).
  RunSnapshot snapshot(int64_t step);

 private:
  bool fill(bool& exhausted);
  // Data-parallel: every rank starts from rank 0's weights and trainer state, at the same step.
  void synchronizeStart();
  // The group the ranks agree through (data-parallel or feature-sharded), or null.
  DataParallel* group() const { return options_.dataParallel ? options_.dataParallel.get() : options_.featureShards.get(); }
  // Resamples the slot's dead features when its step count is a multiple of resampleEvery.
  int64_t maybeResample(size_t slot);

  std::vector<RunSlot> slots_;
  std::unique_ptr<ActivationSource> source_;
  RunOptions options_;
  std::vector<ShuffleBuffer> buffers_;
  int64_t startPosition_ = 0, startStep_ = 0;
  std::atomic<bool> stop_{false};
};

}  // namespace tc
