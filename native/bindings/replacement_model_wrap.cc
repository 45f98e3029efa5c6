#include "bindings/replacement_model_wrap.h"

#include "bindings/cross_layer_wrap.h"
#include "bindings/js_args.h"
#include "bindings/task.h"
#include "bindings/tensor_wrap.h"
#include "circuits/intervention.h"
#include "bindings/model_wrap.h"
#include "bindings/state.h"
#include "bindings/transcoder_wrap.h"
#include "bindings/js_errors.h"

namespace tc {

Napi::Function JsReplacementModel::define(Napi::Env env) {
  Napi::Function cls = DefineClass(env, "NativeReplacementModel",
                                   {StaticMethod<&JsReplacementModel::create>("create"),
                                    StaticMethod<&JsReplacementModel::createCrossLayer>("createCrossLayer"),
                                    InstanceMethod<&JsReplacementModel::placements>("placements"),
                                    InstanceMethod<&JsReplacementModel::intervene>("intervene")});
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

// createCrossLayer(model, crossLayerTranscoder): one cross-layer transcoder in place of every MLP.
Napi::Value JsReplacementModel::createCrossLayer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    std::shared_ptr<const Transformer> model = JsModel::modelOf(info[0], "model");
    std::shared_ptr<CrossLayerTranscoder> clt = JsCrossLayerTranscoder::transcoderOf(info[1], "the cross-layer transcoder");
    using Handle = std::shared_ptr<const ReplacementModel>;
    auto external = Napi::External<Handle>::New(env, new Handle(std::make_shared<const ReplacementModel>(model, clt)),
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

Napi::Value JsReplacementModel::intervene(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    at::Tensor tokens = JsTensor::tensorOf(info[0], "tokens");
    if (!info[1].IsArray()) throw InvalidArgument("interventions must be an array of { layer, position, feature, value }");
    auto list = info[1].As<Napi::Array>();
    std::vector<FeatureIntervention> interventions;
    for (uint32_t i = 0; i < list.Length(); ++i) {
      if (!list.Get(i).IsObject()) throw InvalidArgument("interventions[" + std::to_string(i) + "] must be an object");
      Napi::Object o = list.Get(i).As<Napi::Object>();
      FeatureIntervention v;
      v.layer = intOr(o, "layer", -1);
      v.position = intOr(o, "position", -1);
      v.feature = intOr(o, "feature", -1);
      Napi::Value value = o.Get("value");
      if (!value.IsNumber()) throw InvalidArgument("interventions[" + std::to_string(i) + "].value must be a number");
      v.value = value.As<Napi::Number>().DoubleValue();
      interventions.push_back(v);
    }
    Napi::Object opts = info[2].IsObject() ? info[2].As<Napi::Object>() : Napi::Object::New(env);
    InterventionOptions o;
    o.freezeAttention = !opts.Has("freezeAttention") || opts.Get("freezeAttention").ToBoolean();
    o.directEffects = opts.Get("directEffects").ToBoolean();
    if (opts.Get("constrainedLayers").IsArray()) {
      auto layers = opts.Get("constrainedLayers").As<Napi::Array>();
      for (uint32_t i = 0; i < layers.Length(); ++i) o.constrainedLayers.push_back(layers.Get(i).As<Napi::Number>().Int64Value());
    }
    std::shared_ptr<const ReplacementModel> rm = rm_;
    return Task<InterventionResult>::start(
        env, "transcoders:intervene",
        [rm, tokens, interventions, o]() {
          auto locks = rm->readLocks();
          return tc::intervene(*rm, tokens, interventions, o);
        },
        [](Napi::Env env, InterventionResult& r) -> Napi::Value {
          Napi::Object out = Napi::Object::New(env);
          out.Set("logits", JsTensor::wrap(env, r.logits));
          Napi::Object acts = Napi::Object::New(env), pre = Napi::Object::New(env);
          for (auto& [layer, t] : r.activations) acts.Set(std::to_string(layer), JsTensor::wrap(env, t));
          for (auto& [layer, t] : r.preActivations) pre.Set(std::to_string(layer), JsTensor::wrap(env, t));
          out.Set("activations", acts);
          out.Set("preActivations", pre);
          return out;
        });
  });
}

}  // namespace tc
