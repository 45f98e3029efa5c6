#include "bindings/replacement_model_wrap.h"

#include "bindings/js_args.h"
#include "bindings/model_wrap.h"
#include "bindings/state.h"
#include "bindings/transcoder_wrap.h"
#include "core/errors.h"

namespace tc {

Napi::Function JsReplacementModel::define(Napi::Env env) {
  Napi::Function cls = DefineClass(env, "NativeReplacementModel",
                                   {StaticMethod<&JsReplacementModel::create>("create"),
                                    InstanceMethod<&JsReplacementModel::placements>("placements")});
  AddonState::of(env).replacementModelClass = Napi::Persistent(cls);
  return cls;
}

JsReplacementModel::JsReplacementModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<JsReplacementModel>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw Napi::TypeError::New(info.Env(), "replacement models are created by ReplacementModel.create(model, transcoders)");
  rm_ = *info[0].As<Napi::External<std::shared_ptr<const ReplacementModel>>>().Data();
}

std::shared_ptr<const ReplacementModel> JsReplacementModel::replacementOf(const Napi::Value& value, const char* what) {
  if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(AddonState::of(value.Env()).replacementModelClass.Value()))
    throw InvalidArgument(std::string(what) + " must be a ReplacementModel");
  return JsReplacementModel::Unwrap(value.As<Napi::Object>())->rm_;
}

Napi::Value JsReplacementModel::create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    std::shared_ptr<const Transformer> model = JsModel::modelOf(info[0], "model");
    if (!info[1].IsArray()) throw InvalidArgument("transcoders must be an array of Transcoders");
    auto list = info[1].As<Napi::Array>();
    std::vector<std::shared_ptr<Transcoder>> transcoders;
    for (uint32_t i = 0; i < list.Length(); ++i) transcoders.push_back(JsTranscoder::transcoderOf(list.Get(i), "transcoder"));
    using Handle = std::shared_ptr<const ReplacementModel>;
    auto external = Napi::External<Handle>::New(env, new Handle(std::make_shared<const ReplacementModel>(model, transcoders)),
                                                [](Napi::Env, Handle* h) { delete h; });
    return AddonState::of(env).replacementModelClass.New({external});
  });
}

Napi::Value JsReplacementModel::placements(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    std::vector<int64_t> layers = rm_->layers();
    Napi::Array out = Napi::Array::New(env, layers.size());
    for (size_t i = 0; i < layers.size(); ++i) {
      const Placement& p = rm_->placement(layers[i]);
      Napi::Object o = Napi::Object::New(env);
      o.Set("layer", static_cast<double>(p.layer));
      o.Set("hookIn", p.hookIn);
      o.Set("hookOut", p.hookOut);
      o.Set("input", p.input == MlpReplacement::Input::Residual ? "residual" : "mlp");
      out[static_cast<uint32_t>(i)] = o;
    }
    return out;
  });
}

}  // namespace tc
