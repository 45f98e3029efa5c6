// NativeTrainingRun: the JS handle over a TrainingRun (wrapped by lib/transcoders/train.ts).
#pragma once
#include <napi.h>

#include <memory>

#include "train/run.h"

namespace tc {

class JsTrainingRun : public Napi::ObjectWrap<JsTrainingRun> {
 public:
  static Napi::Function define(Napi::Env env);
  // new NativeTrainingRun({ slots: [trainer], source, options })
  explicit JsTrainingRun(const Napi::CallbackInfo& info);

 private:
  // run(onProgress, onCheckpoint) -> Promise<{ steps, position, exhausted, stopped }>
  Napi::Value run(const Napi::CallbackInfo& info);
  Napi::Value stop(const Napi::CallbackInfo& info);
  // snapshot(step) -> Promise<{ step, position, slots }>: the state after the run (sharded: gathered).
  Napi::Value snapshot(const Napi::CallbackInfo& info);

  std::shared_ptr<TrainingRun> run_;
  bool started_ = false;
};

// shuffleBatches(x [n, d_in], y [n, d_out], { capacity, batch, shuffle, seed, chunk }) ->
// Promise<{ xs, ys }>: pushes the rows `chunk` at a time through a ShuffleBuffer and returns every
// batch it serves ([S, batch, d]). For tests and for inspecting the mixing.
Napi::Value shuffleBatchesJs(const Napi::CallbackInfo& info);

}  // namespace tc
