// NativeCrossLayerTranscoder and NativeCrossLayerTrainer: JS handles over a CrossLayerTranscoder
// and its trainer (wrapped by lib/transcoders/cross-layer.ts).
#pragma once
#include <napi.h>

#include <memory>

#include "train/cross_layer_trainer.h"
#include "transcoder/cross_layer.h"

namespace tc {

class JsCrossLayerTranscoder : public Napi::ObjectWrap<JsCrossLayerTranscoder> {
 public:
  static Napi::Function define(Napi::Env env);
  static Napi::Object wrap(Napi::Env env, std::shared_ptr<CrossLayerTranscoder> clt);
  // The transcoder behind a JS handle; throws InvalidArgument for anything else.
  static std::shared_ptr<CrossLayerTranscoder> transcoderOf(const Napi::Value& value, const char* what);
  static bool isCrossLayer(const Napi::Value& value);
  explicit JsCrossLayerTranscoder(const Napi::CallbackInfo& info);

 private:
  static Napi::Value create(const Napi::CallbackInfo& info);
  static Napi::Value fromParams(const Napi::CallbackInfo& info);
  Napi::Value encode(const Napi::CallbackInfo& info);
  Napi::Value forward(const Napi::CallbackInfo& info);
  Napi::Value loss(const Napi::CallbackInfo& info);
  Napi::Value parameters(const Napi::CallbackInfo& info);
  Napi::Value batchStats(const Napi::CallbackInfo& info);

  std::shared_ptr<CrossLayerTranscoder> clt_;
};

// stackLayers([t_0 .. t_{L-1}], each [..., d]) -> Promise<[rows, L, d]>: every layer's activations of the same rows.
Napi::Value stackLayersJs(const Napi::CallbackInfo& info);

class JsCrossLayerTrainer : public Napi::ObjectWrap<JsCrossLayerTrainer> {
 public:
  static Napi::Function define(Napi::Env env);
  explicit JsCrossLayerTrainer(const Napi::CallbackInfo& info);
  static bool isTrainer(const Napi::Value& value);
  // The trainer behind a JS handle and its transcoder; throws InvalidArgument for anything else.
  static std::pair<std::shared_ptr<CrossLayerTrainer>, std::shared_ptr<CrossLayerTranscoder>> trainerOf(const Napi::Value& value, const char* what);

 private:
  Napi::Value run(const Napi::CallbackInfo& info);
  Napi::Value state(const Napi::CallbackInfo& info);
  Napi::Value setState(const Napi::CallbackInfo& info);

  std::shared_ptr<CrossLayerTranscoder> clt_;
  std::shared_ptr<CrossLayerTrainer> trainer_;
};

}  // namespace tc
