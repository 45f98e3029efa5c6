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
    // Each rank shuffles its own slice with its own stream.
    const uint64_t rankSeed = options_.dataParallel ? 1000003ULL * static_cast<uint64_t>(options_.dataParallel->rank()) : 0;
    buffers_.emplace_back(options_.bufferRows, options_.shuffle, options_.seed + 7919 * i + rankSeed);
    if (slot.trainer && slot.trainer->options().resampleEvery > 0 && !source_->model())
      throw InvalidArgument("dead-feature resampling runs the model: it needs a model and token data, not an activation cache");
    if (options_.featureShards) {
      if (options_.dataParallel) throw InvalidArgument("a run is data-parallel or feature-sharded, not both");
      if (slot.crossLayer) throw InvalidArgument("feature-sharded training covers per-layer transcoders; a cross-layer transcoder trains in one process");
      slot.trainer->setFeatureShards(options_.featureShards);
    }
    if (options_.dataParallel) {
      if (slot.crossLayer) throw InvalidArgument("data-parallel training covers per-layer transcoders; a cross-layer transcoder trains in one process");
      if (slot.trainer->options().resampleEvery > 0) throw InvalidArgument("dead-feature resampling is not available in data-parallel training (each rank would resample from its own rows)");
      slot.trainer->setDataParallel(options_.dataParallel);
    }
  }
  startPosition_ = source_->position();
  startStep_ = slots_.front().steps();
}

int64_t TrainingRun::position(int64_t steps) const {
  const int64_t ranks = options_.dataParallel ? options_.dataParallel->size() : 1;
  return options_.shuffle ? source_->position() : startPosition_ + (steps - startStep_) * options_.batchSize * ranks;
}

void TrainingRun::synchronizeStart() {
  DataParallel& dp = *group();
  const int64_t step = slots_.front().steps();
  at::Tensor steps = dp.max(at::tensor({static_cast<double>(step), -static_cast<double>(step)}, at::TensorOptions().dtype(c10::kDouble)));
  if (steps[0].item<double>() != -steps[1].item<double>())
    throw InvalidArgument("the ranks start at different steps (" + std::to_string(static_cast<int64_t>(-steps[1].item<double>())) + " to " +
                          std::to_string(static_cast<int64_t>(steps[0].item<double>())) + "): every rank must resume from the same checkpoint");
  if (options_.featureShards) return;  // each rank holds its own features (b_dec and b_dec_out start equal)
  for (RunSlot& slot : slots_) {
    std::unique_lock lock(slot.transcoder->mutex());
    std::vector<at::Tensor*> state;
    for (auto& [name, t] : slot.transcoder->params().named()) state.push_back(t);
    for (AdamState& a : slot.trainer->optimizer().state()) state.insert(state.end(), {&a.expAvg, &a.expAvgSq});
    state.push_back(&slot.trainer->stepsSinceFired());
    at::NoGradGuard noGrad;
    dp.broadcastFromRoot(state);
  }
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

namespace {
// The dimension along which a per-layer transcoder's tensor holds its features (-1: none, replicated).
int64_t featureDim(const std::string& name) {
  std::string base = name;
  if (base.rfind("adam.", 0) == 0) base = base.substr(5, base.rfind('.') - 5);
  if (base == "W_enc") return 1;
  if (base == "b_enc" || base == "W_dec" || base == "threshold" || base == "steps_since_fired") return 0;
  return -1;
}
}  // namespace

RunSnapshot TrainingRun::snapshot(int64_t step) {
  RunSnapshot snap;
  snap.step = step;
  snap.position = position(step);
  for (const auto& slot : slots_) {
    auto tensors = snapshotSlot(slot);
    if (options_.featureShards) {
      // Rank r's slice, broadcast by rank r in turn, side by side along the feature dimension.
      ProcessGroup& g = options_.featureShards->group();
      for (auto& [name, t] : tensors) {
        const int64_t dim = featureDim(name);
        if (dim < 0) continue;
        std::vector<at::Tensor> parts;
        for (int r = 0; r < g.size(); ++r) parts.push_back(g.broadcast(t.to(c10::kCPU), r));
        t = at::cat(parts, dim).to(t.device());
      }
    }
    snap.tensors.push_back(std::move(tensors));
  }
  return snap;
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
  DataParallel* dp = group();
  if (dp) {
    synchronizeStart();
    dp->takeSeconds();  // the per-step figures count the steps' collectives only
  }
  bool stopped = false;
  while (step < options_.totalSteps) {
    if (!dp) {
      if (stop_) break;
      if (!fill(exhausted)) break;
    } else {
      // Every rank takes the step or none does: a stop request or an exhausted slice on any rank
      // ends the run on all of them at this step.
      const bool stopHere = stop_;
      const bool ready = stopHere || fill(exhausted);
      at::Tensor flags = dp->max(at::tensor({stopHere ? 1.0f : 0.0f, ready ? 0.0f : 1.0f}));
      if (flags[0].item<float>() > 0) {
        stopped = true;
        break;
      }
      if (flags[1].item<float>() > 0) {
        exhausted = true;
        break;
      }
    }
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
    if (dp) {
      const double seconds = dp->takeSeconds();
      progress.collectiveSeconds += seconds;
      result.collectiveSeconds += seconds;
    }
    if (onProgress && (step % options_.logEvery == 0 || last)) {
      onProgress(progress);
      progress.collectiveSeconds = 0;
    }
    if (onCheckpoint && options_.checkpointEvery > 0 && step % options_.checkpointEvery == 0 && !last) onCheckpoint(snapshot(step));
  }
  if (onProgress && !progress.metrics.empty() && progress.step % options_.logEvery != 0 && step < options_.totalSteps)
    onProgress(progress);  // the last step before an early end
  result.steps = step;
  result.position = position(step);
  result.exhausted = exhausted && step < options_.totalSteps;
  result.stopped = dp ? stopped : stop_.load();
  return result;
}

}  // namespace tc
