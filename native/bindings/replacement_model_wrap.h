// NativeReplacementModel: the JS handle over a ReplacementModel (wrapped by lib/circuits/replacement-model.ts).
#pragma once
#include <napi.h>

#include <memory>

#include "circuits/replacement_model.h"

namespace tc {

class JsReplacementModel : public Napi::ObjectWrap<JsReplacementModel> {
 public:
  static Napi::Function define(Napi::Env env);
  explicit JsReplacementModel(const Napi::CallbackInfo& info);
  // The replacement model behind a JS handle; throws InvalidArgument for anything else.
  static std::shared_ptr<const ReplacementModel> replacementOf(const Napi::Value& value, const char* what);

 private:
  // create(model, transcoders[]) -> NativeReplacementModel (validates synchronously; throws InvalidArgumentError)
  static Napi::Value create(const Napi::CallbackInfo& info);
  static Napi::Value createCrossLayer(const Napi::CallbackInfo& info);
  // placements() -> [{ layer, hookIn, hookOut, input: 'mlp' | 'residual' }], ascending layers
  Napi::Value placements(const Napi::CallbackInfo& info);
  // intervene(tokens, [{ layer, position, feature, value }], { freezeAttention, directEffects, constrainedLayers })
  //   -> Promise<{ logits, activations: { [layer]: Tensor }, preActivations: { [layer]: Tensor } }>
  Napi::Value intervene(const Napi::CallbackInfo& info);

  std::shared_ptr<const ReplacementModel> rm_;
};

}  // namespace tc
