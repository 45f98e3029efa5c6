// NativeTranscoder and NativeTrainer: JS handles over a Transcoder and its StepTrainer
// (wrapped by lib/transcoders/transcoder.ts and lib/transcoders/trainer.ts).
#pragma once
#include <napi.h>

#include <memory>

#include "train/step_trainer.h"
#include "transcoder/transcoder.h"

namespace tc {

class JsTranscoder : public Napi::ObjectWrap<JsTranscoder> {
 public:
  static Napi::Function define(Napi::Env env);
  static Napi::Object wrap(Napi::Env env, std::shared_ptr<Transcoder> transcoder);
  // The transcoder behind a JS handle; throws InvalidArgument for anything else.
  static std::shared_ptr<Transcoder> transcoderOf(const Napi::Value& value, const char* what);
  explicit JsTranscoder(const Napi::CallbackInfo& info);

 private:
  static Napi::Value create(const Napi::CallbackInfo& info);
  static Napi::Value fromParams(const Napi::CallbackInfo& info);
  Napi::Value encode(const Napi::CallbackInfo& info);
  Napi::Value encodeSparse(const Napi::CallbackInfo& info);
  Napi::Value decode(const Napi::CallbackInfo& info);
  Napi::Value forward(const Napi::CallbackInfo& info);
  Napi::Value loss(const Napi::CallbackInfo& info);
  Napi::Value parameters(const Napi::CallbackInfo& info);
  Napi::Value initializeBiases(const Napi::CallbackInfo& info);
  Napi::Value batchStats(const Napi::CallbackInfo& info);

  std::shared_ptr<Transcoder> tc_;
};

// A step's metrics as a JS object (shared by NativeTrainer.run and training-run progress).
Napi::Object stepMetricsToJs(Napi::Env env, const StepMetrics& m);

// klDivergence(referenceLogits, logits) -> Promise<number>: mean KL over positions, in nats.
Napi::Value klDivergenceJs(const Napi::CallbackInfo& info);

// geometricMedian(points [N, d], { maxIter, ftol, eps }) -> Promise<NativeTensor [d]>
Napi::Value geometricMedianJs(const Napi::CallbackInfo& info);

class JsTrainer : public Napi::ObjectWrap<JsTrainer> {
 public:
  static Napi::Function define(Napi::Env env);
  explicit JsTrainer(const Napi::CallbackInfo& info);
  // The trainer behind a JS handle and its transcoder; throws InvalidArgument for anything else.
  static std::pair<std::shared_ptr<StepTrainer>, std::shared_ptr<Transcoder>> trainerOf(const Napi::Value& value, const char* what);

 private:
  Napi::Value run(const Napi::CallbackInfo& info);
  Napi::Value state(const Napi::CallbackInfo& info);
  Napi::Value setState(const Napi::CallbackInfo& info);

  std::shared_ptr<Transcoder> tc_;
  std::shared_ptr<StepTrainer> trainer_;
};

}  // namespace tc
