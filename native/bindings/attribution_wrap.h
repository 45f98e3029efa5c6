// NativeAttribution: the JS handle over an AttributionContext (wrapped by lib/circuits/attribution.ts).
#pragma once
#include <napi.h>

#include <memory>

#include "circuits/attribution.h"

namespace tc {

class JsAttribution : public Napi::ObjectWrap<JsAttribution> {
 public:
  static Napi::Function define(Napi::Env env);
  explicit JsAttribution(const Napi::CallbackInfo& info);

 private:
  // create(replacementModel, tokens) -> Promise<NativeAttribution>
  static Napi::Value create(const Napi::CallbackInfo& info);
  Napi::Value lnConstant(const Napi::CallbackInfo& info);
  Napi::Value residual(const Napi::CallbackInfo& info);
  Napi::Value activations(const Napi::CallbackInfo& info);
  Napi::Value transcoderOutput(const Napi::CallbackInfo& info);
  Napi::Value featureContributions(const Napi::CallbackInfo& info);
  Napi::Value attentionContributions(const Napi::CallbackInfo& info);
  Napi::Value embeddingContribution(const Napi::CallbackInfo& info);
  Napi::Value transcoderError(const Napi::CallbackInfo& info);
  Napi::Value featureRoot(const Napi::CallbackInfo& info);
  // logitRoot(position, token, minus?) -> node
  Napi::Value logitRoot(const Napi::CallbackInfo& info);
  // featureBias(layer, feature) -> number
  Napi::Value featureBias(const Napi::CallbackInfo& info);
  // activation(layer, position, feature) -> number
  Napi::Value activation(const Napi::CallbackInfo& info);
  Napi::Value children(const Napi::CallbackInfo& info);

  std::shared_ptr<const AttributionContext> ctx_;
};

}  // namespace tc
