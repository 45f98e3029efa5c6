#include "bindings/run_wrap.h"

#include <ATen/ATen.h>

#include "bindings/cross_layer_wrap.h"
#include "bindings/distributed_wrap.h"
#include "bindings/js_errors.h"
#include "bindings/js_args.h"
#include "bindings/js_call.h"
#include "bindings/task.h"
#include "bindings/safetensors_js.h"
#include "bindings/model_wrap.h"
#include "circuits/replacement_model.h"
#include "bindings/tensor_wrap.h"
#include "bindings/transcoder_wrap.h"

namespace tc {

namespace {

Napi::Object snapshotToJs(Napi::Env env, const RunSnapshot& s) {
  Napi::Array slots = Napi::Array::New(env, s.tensors.size());
  for (size_t i = 0; i < s.tensors.size(); ++i) {
    Napi::Object named = Napi::Object::New(env);
    for (const auto& [name, t] : s.tensors[i]) named.Set(name, JsTensor::wrap(env, t));
    slots[i] = named;
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("step", static_cast<double>(s.step));
  o.Set("position", static_cast<double>(s.position));
  o.Set("slots", slots);
  return o;
}

// The activation source; a model source reads, for each slot, the hooks its transcoder is placed at.
std::unique_ptr<ActivationSource> sourceFrom(const Napi::Object& s, const std::vector<RunSlot>& slots, DataSlice slice) {
  std::string kind = stringOr(s, "kind", "");
  int64_t startRow = intOr(s, "startRow", 0);
  if (kind == "model") {
    Napi::Object file = objectOr(s.Get("tokenFile"));
    std::shared_ptr<const Transformer> model = JsModel::modelOf(s.Get("model"), "the training model");
    std::vector<HookPair> hooks;
    for (const RunSlot& slot : slots) {
      if (slot.crossLayer) {
        for (const Placement& p : resolveCrossLayerPlacements(*model, slot.crossLayer->spec())) hooks.push_back({p.hookIn, p.hookOut});
        continue;
      }
      const Placement p = resolvePlacement(*model, slot.transcoder->spec());
      hooks.push_back({p.hookIn, p.hookOut});
    }
    return std::make_unique<ModelActivationSource>(
        model, stringOr(file, "path", ""),
        static_cast<uint64_t>(intOr(file, "dataOffset", 0)), intOr(file, "rows", 0), intOr(file, "context", 0), std::move(hooks),
        intOr(s, "sequencesPerForward", 8), startRow, slice);
  }
  if (kind == "cache") {
    // One list of shards per cached layer, in the order the slots consume them.
    std::vector<std::vector<CacheShard>> layers;
    if (!s.Get("layers").IsArray()) throw InvalidArgument("an activation cache source needs its layers (an array of shard lists)");
    auto layerList = s.Get("layers").As<Napi::Array>();
    for (uint32_t l = 0; l < layerList.Length(); ++l) {
      if (!layerList.Get(l).IsArray()) throw InvalidArgument("an activation cache layer must be an array of shards");
      auto list = layerList.Get(l).As<Napi::Array>();
      std::vector<CacheShard> shards;
      for (uint32_t i = 0; i < list.Length(); ++i) {
        Napi::Object sh = objectOr(list.Get(i));
        shards.push_back({stringOr(sh, "path", ""), static_cast<uint64_t>(intOr(sh, "dataStart", 0)),
                          safetensorsEntriesFrom(sh.Get("entries").As<Napi::Array>()), intOr(sh, "rows", 0)});
      }
      layers.push_back(std::move(shards));
    }
    size_t pairs = 0;
    for (const RunSlot& slot : slots) pairs += static_cast<size_t>(slot.pairs());
    if (pairs != layers.size()) {
      throw InvalidArgument("the slots train " + std::to_string(pairs) + " layers but the activation cache source has " + std::to_string(layers.size()));
    }
    return std::make_unique<CacheActivationSource>(std::move(layers), startRow, slice);
  }
  throw InvalidArgument("unknown activation source '" + kind + "' (expected model or cache)");
}

}  // namespace

Napi::Function JsTrainingRun::define(Napi::Env env) {
  return DefineClass(env, "NativeTrainingRun",
                     {InstanceMethod<&JsTrainingRun::run>("run"), InstanceMethod<&JsTrainingRun::stop>("stop"),
                      InstanceMethod<&JsTrainingRun::snapshot>("snapshot")});
}

JsTrainingRun::JsTrainingRun(const Napi::CallbackInfo& info) : Napi::ObjectWrap<JsTrainingRun>(info) {
  guard(info.Env(), [&]() {
    Napi::Object spec = objectOr(info[0]);
    std::vector<RunSlot> slots;
    if (!spec.Get("slots").IsArray()) throw InvalidArgument("a training run needs its slots (an array of step trainers)");
    auto list = spec.Get("slots").As<Napi::Array>();
    for (uint32_t i = 0; i < list.Length(); ++i) {
      if (JsCrossLayerTrainer::isTrainer(list.Get(i))) {
        auto [trainer, clt] = JsCrossLayerTrainer::trainerOf(list.Get(i), "a training slot");
        slots.push_back({nullptr, nullptr, clt, trainer});
        continue;
      }
      auto [trainer, transcoder] = JsTrainer::trainerOf(list.Get(i), "a training slot");
      slots.push_back({transcoder, trainer, nullptr, nullptr});
    }
    Napi::Object o = objectOr(spec.Get("options"));
    RunOptions options;
    options.batchSize = intOr(o, "batchSize", options.batchSize);
    options.totalSteps = intOr(o, "totalSteps", options.totalSteps);
    options.bufferRows = intOr(o, "bufferRows", options.bufferRows);
    options.shuffle = boolOr(o, "shuffle", true);
    options.seed = static_cast<uint64_t>(intOr(o, "seed", 0));
    options.logEvery = std::max<int64_t>(1, intOr(o, "logEvery", options.logEvery));
    options.checkpointEvery = intOr(o, "checkpointEvery", 0);
    // Data-parallel: batchSize is this rank's slice of each global batch, and the source reads that slice.
    DataSlice slice;
    if (Napi::Value group = o.Get("processGroup"); !group.IsUndefined() && !group.IsNull()) {
      auto dp = std::make_shared<DataParallel>(processGroupOf(group), intOr(o, "bucketBytes", 32 << 20));
      if (boolOr(o, "featureShards", false)) {
        options.featureShards = dp;  // every rank reads the whole batch
      } else {
        options.dataParallel = dp;
        slice = {dp->rank(), dp->size(), options.batchSize};
      }
    }
    std::unique_ptr<ActivationSource> source = sourceFrom(objectOr(spec.Get("source")), slots, slice);
    run_ = std::make_shared<TrainingRun>(std::move(slots), std::move(source), options);
    return 0;
  });
}

Napi::Value JsTrainingRun::run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    if (started_) throw InvalidArgument("a training run can only be started once");
    if (!info[0].IsFunction() || !info[1].IsFunction()) throw InvalidArgument("run(onProgress, onCheckpoint): two functions expected");
    started_ = true;
    JsCall progress(env, info[0].As<Napi::Function>(), "transcoders:train-progress");
    JsCall checkpoint(env, info[1].As<Napi::Function>(), "transcoders:train-checkpoint");
    std::shared_ptr<TrainingRun> run = run_;
    return Task<RunResult>::start(
        env, "transcoders:trainingRun",
        [run, progress, checkpoint]() mutable {
          struct Release {
            JsCall &a, &b;
            ~Release() {
              a.release();
              b.release();
            }
          } release{progress, checkpoint};
          // Progress waits for the JS handler too: reports stay in order and the run cannot race
          // ahead of a slow consumer (the handler is quick: it logs and updates a progress bar).
          auto onProgress = [&](const RunProgress& p) {
            progress.call(
                [&](Napi::Env env, Napi::Function fn) {
                  Napi::Array metrics = Napi::Array::New(env, p.metrics.size());
                  for (size_t i = 0; i < p.metrics.size(); ++i) metrics[i] = stepMetricsToJs(env, p.metrics[i]);
                  Napi::Object o = Napi::Object::New(env);
                  o.Set("step", static_cast<double>(p.step));
                  o.Set("position", static_cast<double>(p.position));
                  o.Set("metrics", metrics);
                  o.Set("collectiveSeconds", p.collectiveSeconds);
                  return fn.Call({o});
                },
                [](Napi::Value) {}, "the training progress callback");
          };
          auto onCheckpoint = [&](const RunSnapshot& s) {
            checkpoint.call(
                [&](Napi::Env env, Napi::Function fn) { return fn.Call({snapshotToJs(env, s)}); },
                [](Napi::Value) {}, "the checkpoint callback");
          };
          return run->run(onProgress, onCheckpoint);
        },
        [](Napi::Env env, RunResult& r) -> Napi::Value {
          Napi::Object o = Napi::Object::New(env);
          o.Set("steps", static_cast<double>(r.steps));
          o.Set("position", static_cast<double>(r.position));
          o.Set("exhausted", r.exhausted);
          o.Set("stopped", r.stopped);
          o.Set("collectiveSeconds", r.collectiveSeconds);
          return o;
        });
  });
}

Napi::Value shuffleBatchesJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    at::Tensor x = JsTensor::tensorOf(info[0], "x");
    at::Tensor y = JsTensor::tensorOf(info[1], "y");
    Napi::Object o = objectOr(info[2]);
    int64_t capacity = intOr(o, "capacity", 64), batch = intOr(o, "batch", 8), chunk = intOr(o, "chunk", 16);
    bool shuffle = boolOr(o, "shuffle", true);
    auto seed = static_cast<uint64_t>(intOr(o, "seed", 0));
    using Pair = std::pair<at::Tensor, at::Tensor>;
    return Task<Pair>::start(
        env, "transcoders:shuffleBatches",
        [=]() {
          ShuffleBuffer buffer(capacity, shuffle, seed);
          std::vector<at::Tensor> xs, ys;
          int64_t pushed = 0;
          for (;;) {
            bool draining = pushed >= x.size(0);
            if (buffer.ready(batch, draining)) {
              auto [bx, by] = buffer.take(batch);
              xs.push_back(bx);
              ys.push_back(by);
            } else if (draining) {
              break;
            } else {
              int64_t n = std::min(chunk, x.size(0) - pushed);
              buffer.push(x.narrow(0, pushed, n), y.narrow(0, pushed, n));
              pushed += n;
            }
          }
          if (xs.empty()) return Pair{at::empty({0, batch, x.size(1)}), at::empty({0, batch, y.size(1)})};
          return Pair{at::stack(xs), at::stack(ys)};
        },
        [](Napi::Env env, Pair& p) -> Napi::Value {
          Napi::Object out = Napi::Object::New(env);
          out.Set("xs", JsTensor::wrap(env, p.first));
          out.Set("ys", JsTensor::wrap(env, p.second));
          return out;
        });
  });
}

// snapshot(step) -> Promise<snapshot>: every slot's state now (feature-sharded: gathered, on every rank together).
Napi::Value JsTrainingRun::snapshot(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    const int64_t step = info[0].IsNumber() ? info[0].As<Napi::Number>().Int64Value() : 0;
    std::shared_ptr<TrainingRun> run = run_;
    return Task<RunSnapshot>::start(
        env, "transcoders:trainingSnapshot", [run, step]() { return run->snapshot(step); },
        [](Napi::Env env, RunSnapshot& s) -> Napi::Value { return snapshotToJs(env, s); });
  });
}

Napi::Value JsTrainingRun::stop(const Napi::CallbackInfo& info) {
  run_->stop();
  return info.Env().Undefined();
}

}  // namespace tc
