// NativeModel: the JS handle over a loaded Transformer (wrapped by lib/models/model.ts).
#pragma once
#include <napi.h>

#include <memory>
#include <string>
#include <vector>

#include "model/transformer.h"

namespace tc {

class JsModel : public Napi::ObjectWrap<JsModel> {
 public:
  static Napi::Function define(Napi::Env env);
  explicit JsModel(const Napi::CallbackInfo& info);
  // The model behind a JS handle; throws InvalidArgument for anything else or a disposed one.
  static std::shared_ptr<const Transformer> modelOf(const Napi::Value& value, const char* what);

 private:
  static Napi::Value load(const Napi::CallbackInfo& info);
  Napi::Value run(const Napi::CallbackInfo& info);
  Napi::Value hookNames(const Napi::CallbackInfo& info);
  Napi::Value weightNames(const Napi::CallbackInfo& info);
  Napi::Value weight(const Napi::CallbackInfo& info);
  Napi::Value dispose(const Napi::CallbackInfo& info);
  Napi::Value train(const Napi::CallbackInfo& info);
  Napi::Value huggingFaceWeights(const Napi::CallbackInfo& info);
  Napi::Value nonFiniteWeights(const Napi::CallbackInfo& info);
  std::shared_ptr<const Transformer> live() const;

  std::shared_ptr<const Transformer> model_;
  std::shared_ptr<class LanguageModelTrainer> trainer_;  // created by the first train() call
  std::vector<std::string> nonFinite_;                    // weights found non-finite when loaded
};

}  // namespace tc
