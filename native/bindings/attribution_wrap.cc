#include "bindings/attribution_wrap.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "bindings/js_errors.h"
#include "bindings/js_args.h"
#include "bindings/state.h"
#include "bindings/task.h"
#include "bindings/model_wrap.h"
#include "bindings/replacement_model_wrap.h"
#include "bindings/tensor_wrap.h"
#include "bindings/transcoder_wrap.h"

namespace tc {

namespace {

const char* sublayerName(Sublayer s) {
  switch (s) {
    case Sublayer::ResidPre: return "resid_pre";
    case Sublayer::ResidMid: return "resid_mid";
    case Sublayer::ResidPost: return "resid_post";
  }
  return "";
}

Sublayer sublayerFrom(const std::string& name) {
  if (name == "resid_pre") return Sublayer::ResidPre;
  if (name == "resid_mid") return Sublayer::ResidMid;
  if (name == "resid_post") return Sublayer::ResidPost;
  throw InvalidArgument("unknown sublayer '" + name + "' (expected resid_pre, resid_mid or resid_post)");
}

const char* kindName(NodeKind k) {
  switch (k) {
    case NodeKind::Feature: return "feature";
    case NodeKind::Attention: return "attention";
    case NodeKind::Embedding: return "embedding";
    case NodeKind::Logit: return "logit";
  }
  return "";
}

Napi::Object nodeToJs(Napi::Env env, const AttributionNode& n) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("kind", kindName(n.kind));
  o.Set("layer", static_cast<double>(n.layer));
  o.Set("position", static_cast<double>(n.position));
  if (n.feature >= 0) o.Set("feature", static_cast<double>(n.feature));
  if (n.head >= 0) o.Set("head", static_cast<double>(n.head));
  if (n.token >= 0) o.Set("token", static_cast<double>(n.token));
  if (n.minus >= 0) o.Set("minus", static_cast<double>(n.minus));
  o.Set("contrib", n.contrib);
  o.Set("bias", n.bias);
  o.Set("capped", n.capped);
  o.Set("sublayer", sublayerName(n.sublayer));
  o.Set("vector", JsTensor::wrap(env, n.vector));
  return o;
}

// { vector, layer, sublayer, position } -> the parts of a node the children computation reads.
AttributionNode nodeFrom(const Napi::Object& o) {
  AttributionNode n;
  n.vector = JsTensor::tensorOf(o.Get("vector"), "node.vector").to(c10::kFloat);
  n.layer = intOr(o, "layer", 0);
  n.position = intOr(o, "position", 0);
  n.sublayer = sublayerFrom(stringOr(o, "sublayer", "resid_pre"));
  return n;
}

int64_t intArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsNumber()) throw InvalidArgument(std::string(name) + " must be an integer");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (d != std::floor(d)) throw InvalidArgument(std::string(name) + " must be an integer");
  return static_cast<int64_t>(d);
}

}  // namespace

Napi::Function JsAttribution::define(Napi::Env env) {
  return DefineClass(env, "NativeAttribution",
                     {
                         StaticMethod<&JsAttribution::create>("create"),
                         InstanceMethod<&JsAttribution::lnConstant>("lnConstant"),
                         InstanceMethod<&JsAttribution::residual>("residual"),
                         InstanceMethod<&JsAttribution::activations>("activations"),
                         InstanceMethod<&JsAttribution::transcoderOutput>("transcoderOutput"),
                         InstanceMethod<&JsAttribution::featureContributions>("featureContributions"),
                         InstanceMethod<&JsAttribution::attentionContributions>("attentionContributions"),
                         InstanceMethod<&JsAttribution::embeddingContribution>("embeddingContribution"),
                         InstanceMethod<&JsAttribution::transcoderError>("transcoderError"),
                         InstanceMethod<&JsAttribution::featureRoot>("featureRoot"),
                         InstanceMethod<&JsAttribution::logitRoot>("logitRoot"),
                         InstanceMethod<&JsAttribution::featureBias>("featureBias"),
                         InstanceMethod<&JsAttribution::activation>("activation"),
                         InstanceMethod<&JsAttribution::children>("children"),
                     });
}

JsAttribution::JsAttribution(const Napi::CallbackInfo& info) : Napi::ObjectWrap<JsAttribution>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw Napi::TypeError::New(info.Env(), "attribution contexts are created by Attribution.create(replacementModel, tokens)");
  ctx_ = *info[0].As<Napi::External<std::shared_ptr<const AttributionContext>>>().Data();
}

Napi::Value JsAttribution::create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    std::shared_ptr<const ReplacementModel> rm = JsReplacementModel::replacementOf(info[0], "the replacement model");
    at::Tensor tokens = JsTensor::tensorOf(info[1], "tokens");
    using Handle = std::shared_ptr<const AttributionContext>;
    Napi::Function cls = info.This().As<Napi::Function>();
    auto ctor = std::make_shared<Napi::FunctionReference>(Napi::Persistent(cls));
    return Task<Handle>::start(
        env, "transcoders:attribution",
        [rm, tokens]() -> Handle {
          auto locks = rm->readLocks();
          return std::make_shared<const AttributionContext>(rm, rm->model().prepareTokens(tokens)[0]);
        },
        [ctor](Napi::Env env, Handle& ctx) -> Napi::Value {
          auto external = Napi::External<Handle>::New(env, new Handle(ctx), [](Napi::Env, Handle* h) { delete h; });
          return ctor->New({external});
        });
  });
}

Napi::Value JsAttribution::lnConstant(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    return Napi::Number::New(info.Env(), ctx_->lnConstant(intArg(info, 0, "layer"), intArg(info, 1, "position"), info[2].ToBoolean()));
  });
}

Napi::Value JsAttribution::residual(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    return JsTensor::wrap(info.Env(), ctx_->residual(intArg(info, 0, "layer"), sublayerFrom(info[1].ToString())));
  });
}

Napi::Value JsAttribution::activations(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value { return JsTensor::wrap(info.Env(), ctx_->activations(intArg(info, 0, "layer"))); });
}

Napi::Value JsAttribution::transcoderOutput(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value { return JsTensor::wrap(info.Env(), ctx_->transcoderOutput(intArg(info, 0, "layer"))); });
}

Napi::Value JsAttribution::featureContributions(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    at::Tensor v = JsTensor::tensorOf(info[0], "v").to(c10::kFloat);
    int64_t layer = intArg(info, 1, "layer"), position = intArg(info, 2, "position");
    auto ctx = ctx_;
    return Task<at::Tensor>::start(
        info.Env(), "transcoders:featureContributions",
        [ctx, v, layer, position]() {
          at::NoGradGuard noGrad;
          return ctx->featureContributions(v, layer, position);
        },
        [](Napi::Env env, at::Tensor& t) -> Napi::Value { return JsTensor::wrap(env, t); });
  });
}

Napi::Value JsAttribution::attentionContributions(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    at::NoGradGuard noGrad;
    at::Tensor v = JsTensor::tensorOf(info[0], "v").to(c10::kFloat);
    return JsTensor::wrap(info.Env(), ctx_->attentionContributions(v, intArg(info, 1, "layer"), intArg(info, 2, "position")));
  });
}

Napi::Value JsAttribution::embeddingContribution(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    at::Tensor v = JsTensor::tensorOf(info[0], "v").to(c10::kFloat);
    return Napi::Number::New(info.Env(), ctx_->embeddingContribution(v, intArg(info, 1, "position")));
  });
}

Napi::Value JsAttribution::transcoderError(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    at::Tensor v = JsTensor::tensorOf(info[0], "v").to(c10::kFloat);
    return Napi::Number::New(info.Env(), ctx_->transcoderError(v, intArg(info, 1, "layer"), intArg(info, 2, "position")));
  });
}

Napi::Value JsAttribution::featureRoot(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    return nodeToJs(info.Env(), ctx_->featureRoot(intArg(info, 0, "layer"), intArg(info, 1, "feature"), intArg(info, 2, "position")));
  });
}

Napi::Value JsAttribution::logitRoot(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    int64_t minus = info[2].IsUndefined() || info[2].IsNull() ? -1 : intArg(info, 2, "minus");
    if (!(info[2].IsUndefined() || info[2].IsNull()) && minus < 0) throw InvalidArgument("token id " + std::to_string(minus) + " is out of range");
    return nodeToJs(info.Env(), ctx_->logitRoot(intArg(info, 0, "position"), intArg(info, 1, "token"), minus));
  });
}

Napi::Value JsAttribution::featureBias(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    return Napi::Number::New(info.Env(), ctx_->featureBias(intArg(info, 0, "layer"), intArg(info, 1, "feature")));
  });
}

Napi::Value JsAttribution::activation(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    return Napi::Number::New(info.Env(), ctx_->activation(intArg(info, 0, "layer"), intArg(info, 1, "position"), intArg(info, 2, "feature")));
  });
}

// children(node, k, ignoreBos, cap | null, keepAll) -> Promise<node[]>
Napi::Value JsAttribution::children(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    AttributionNode parent = nodeFrom(objectOr(info[0]));
    int64_t k = intArg(info, 1, "k");
    if (k < 1) throw InvalidArgument("k must be at least 1");
    bool ignoreBos = info[2].ToBoolean();
    double cap = info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : std::numeric_limits<double>::quiet_NaN();
    bool keepAll = info[4].ToBoolean();
    auto ctx = ctx_;
    using Nodes = std::vector<AttributionNode>;
    return Task<Nodes>::start(
        env, "transcoders:children", [ctx, parent, k, ignoreBos, cap, keepAll]() { return ctx->children(parent, k, ignoreBos, cap, keepAll); },
        [](Napi::Env env, Nodes& nodes) -> Napi::Value {
          Napi::Array out = Napi::Array::New(env, nodes.size());
          for (size_t i = 0; i < nodes.size(); ++i) out[i] = nodeToJs(env, nodes[i]);
          return out;
        });
  });
}

}  // namespace tc
