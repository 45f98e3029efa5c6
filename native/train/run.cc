#include "train/run.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <mutex>
#include <shared_mutex>

#include "core/errors.h"
#include "train/resample.h"

namespace tc {

TrainingRun::TrainingRun(std::vector<RunSlot> slots, std::unique_ptr<ActivationSource> source, RunOptions options)
    : slots_(std::move(slots)), source_(std::move(source)), options_(options) {
  if (slots_.empty()) throw InvalidArgument("a training run needs at least one transcoder");
  if (options_.batchSize < 1) throw InvalidArgument("batch size must be positive");
  if (options_.shuffle && options_.bufferRows < 2 * options_.batchSize)
    throw InvalidArgument("the shuffle buffer (" + std::to_string(options_.bufferRows) +
                          " rows) must hold at least two batches (" + std::to_string(2 * options_.batchSize) + " rows)");
  for (size_t i = 0; i < slots_.size(); ++i) {
    const RunSlot& slot = slots_[i];
    if (!(slot.trainer && slot.transcoder) && !(slot.crossTrainer && slot.crossLayer))
      throw InvalidArgument("training slot " + std::to_string(i) + " has neither a transcoder with its trainer nor a cross-layer one");
    buffers_.emplace_back(options_.bufferRows, options_.shuffle, options_.seed + 7919 * i);
    if (slot.trainer && slot.trainer->options().resampleEvery > 0 && !source_->model())
      throw InvalidArgument("dead-feature resampling runs the model: it needs a model and token data, not an activation cache");
  }
  startPosition_ = source_->position();
  startStep_ = slots_.front().steps();
}

int64_t TrainingRun::position(int64_t steps) const {
  return options_.shuffle ? source_->position() : startPosition_ + (steps - startStep_) * options_.batchSize;
}

std::vector<std::pair<std::string, at::Tensor>> TrainingRun::snapshotSlot(const RunSlot& slot) {
  std::shared_lock lock(slot.crossLayer ? slot.crossLayer->mutex() : slot.transcoder->mutex());
  at::NoGradGuard noGrad;
  std::vector<std::pair<std::string, at::Tensor>> out;
  auto params = slot.crossLayer ? slot.crossLayer->params().named() : slot.transcoder->params().named();
  for (const auto& [name, t] : params) out.emplace_back(name, t->detach().clone());
  out.emplace_back("steps_since_fired", (slot.crossTrainer ? slot.crossTrainer->stepsSinceFired() : slot.trainer->stepsSinceFired()).clone());
  auto& adam = slot.crossTrainer ? slot.crossTrainer->optimizer().state() : slot.trainer->optimizer().state();
  for (size_t i = 0; i < params.size(); ++i) {
    out.emplace_back("adam." + params[i].first + ".exp_avg", adam[i].expAvg.clone());
    out.emplace_back("adam." + params[i].first + ".exp_avg_sq", adam[i].expAvgSq.clone());
  }
  return out;
}

int64_t TrainingRun::maybeResample(size_t slot) {
  if (!slots_[slot].trainer) return 0;  // cross-layer transcoders are not resampled
  StepTrainer& trainer = *slots_[slot].trainer;
  const TrainOptions& o = trainer.options();
  if (o.resampleEvery <= 0 || trainer.steps() % o.resampleEvery != 0) return 0;
  const TranscoderSpec& spec = slots_[slot].transcoder->spec();
  return resampleDeadFeatures(trainer, *source_->model(), spec.layer, spec.hookIn, spec.hookOut,
                              source_->resampleTokens(o.resampleSequences), o.resampleScale,
                              options_.seed + 104729 * static_cast<uint64_t>(trainer.steps() + slot));
}

// Pushes source data until every buffer can serve a batch; false when the data ran out first.
bool TrainingRun::fill(bool& exhausted) {
  auto allReady = [&] {
    for (auto& b : buffers_)
      if (!b.ready(options_.batchSize, exhausted)) return false;
    return true;
  };
  ActivationBatch batch;
  while (!allReady()) {
    if (exhausted) return false;
    if (!source_->next(batch)) {
      exhausted = true;
      continue;
    }
    size_t pairs = 0;
    for (const RunSlot& slot : slots_) pairs += static_cast<size_t>(slot.pairs());
    if (batch.size() != pairs) throw InvalidArgument("the activation source serves a different number of layers than are trained");
    size_t next = 0;
    for (size_t i = 0; i < slots_.size(); ++i) {
      const int64_t n = slots_[i].pairs();
      if (n == 1) {
        buffers_[i].push(batch[next].first.detach(), batch[next].second.detach());
      } else {
        // A CLT's rows hold every layer's pair side by side ([rows, L d]), so they shuffle together.
        std::vector<at::Tensor> xs, ys;
        for (int64_t l = 0; l < n; ++l) {
          xs.push_back(batch[next + l].first.detach());
          ys.push_back(batch[next + l].second.detach());
        }
        buffers_[i].push(at::cat(xs, 1), at::cat(ys, 1));
      }
      next += static_cast<size_t>(n);
    }
  }
  return true;
}

RunResult TrainingRun::run(const std::function<void(const RunProgress&)>& onProgress,
                           const std::function<void(const RunSnapshot&)>& onCheckpoint) {
  RunResult result;
  bool exhausted = false;
  int64_t step = slots_.front().steps();
  RunProgress progress;
  while (step < options_.totalSteps && !stop_) {
    if (!fill(exhausted)) break;
    progress.metrics.clear();
    for (size_t i = 0; i < slots_.size(); ++i) {
      auto [x, y] = buffers_[i].take(options_.batchSize);
      if (const RunSlot& slot = slots_[i]; slot.crossLayer) {
        const CrossLayerSpec& spec = slot.crossLayer->spec();
        CrossLayerStepMetrics m;
        {
          std::unique_lock lock(slot.crossLayer->mutex());
          m = slot.crossTrainer->step(x.reshape({x.size(0), spec.nLayers, spec.dIn}), y.reshape({y.size(0), spec.nLayers, spec.dOut}));
        }
        // One entry per layer: the shared loss terms with that layer's FVU (target) and L0 (source).
        for (int64_t l = 0; l < spec.nLayers; ++l) {
          StepMetrics layer = m.summary;
          layer.fvu = m.layerFvu[l];
          layer.l0 = m.layerL0[l];
          progress.metrics.push_back(layer);
        }
        continue;
      }
      {
        std::unique_lock lock(slots_[i].transcoder->mutex());
        progress.metrics.push_back(slots_[i].trainer->step(x, y));
      }
      progress.metrics.back().resampled = maybeResample(i);
    }
    ++step;
    progress.step = step;
    progress.position = position(step);
    bool last = step >= options_.totalSteps;
    if (onProgress && (step % options_.logEvery == 0 || last)) onProgress(progress);
    if (onCheckpoint && options_.checkpointEvery > 0 && step % options_.checkpointEvery == 0 && !last) {
      RunSnapshot snap;
      snap.step = step;
      snap.position = position(step);
      for (const auto& slot : slots_) snap.tensors.push_back(snapshotSlot(slot));
      onCheckpoint(snap);
    }
  }
  if (onProgress && !progress.metrics.empty() && progress.step % options_.logEvery != 0 && step < options_.totalSteps)
    onProgress(progress);  // the last step before an early end
  result.steps = step;
  result.position = position(step);
  result.exhausted = exhausted && step < options_.totalSteps;
  result.stopped = stop_;
  return result;
}

}  // namespace tc
