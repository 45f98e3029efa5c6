// NativeAttributionGraph: the JS handle over an AttributionGraph (wrapped by lib/graphs/attribute.ts).
#pragma once
#include <napi.h>

#include <memory>

#include "circuits/graph.h"

namespace tc {

class JsAttributionGraph : public Napi::ObjectWrap<JsAttributionGraph> {
 public:
  static Napi::Function define(Napi::Env env);
  explicit JsAttributionGraph(const Napi::CallbackInfo& info);

 private:
  // create(replacementModel, tokens, { batchSize }) -> Promise<NativeAttributionGraph>
  static Napi::Value create(const Napi::CallbackInfo& info);
  // info() -> { length, nLayers, numSources, offsets, features: { layer, position, index, activation }, lastLogits, errorNorms }
  Napi::Value info(const Napi::CallbackInfo& info);
  // rows(targets, { threshold, topK }) -> Promise<{ rowStart, columns, values, targetValues, droppedMass }>
  Napi::Value rows(const Napi::CallbackInfo& info);
  Napi::Value dispose(const Napi::CallbackInfo& info);

  std::shared_ptr<const AttributionGraph> graph_;
};

}  // namespace tc
