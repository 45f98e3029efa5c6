#include "bindings/graph_wrap.h"

#include <ATen/ATen.h>

#include "bindings/js_errors.h"
#include "bindings/js_args.h"
#include "bindings/replacement_model_wrap.h"
#include "bindings/state.h"
#include "bindings/task.h"
#include "bindings/tensor_wrap.h"

namespace tc {

namespace {

GraphTarget targetFrom(const Napi::Value& value, size_t i) {
  const std::string where = "targets[" + std::to_string(i) + "]";
  if (!value.IsObject()) throw InvalidArgument(where + " must be an object");
  Napi::Object o = value.As<Napi::Object>();
  GraphTarget t;
  std::string kind = stringOr(o, "kind", "");
  if (kind == "feature") t.kind = GraphTarget::Kind::Feature;
  else if (kind == "logit") t.kind = GraphTarget::Kind::Logit;
  else if (kind == "direction") t.kind = GraphTarget::Kind::Direction;
  else throw InvalidArgument(where + ".kind must be 'feature', 'logit' or 'direction', got '" + kind + "'");
  t.layer = intOr(o, "layer", -1);
  t.position = intOr(o, "position", -1);
  t.index = intOr(o, "index", -1);
  if (t.kind == GraphTarget::Kind::Direction) t.direction = JsTensor::tensorOf(o.Get("direction"), (where + ".direction").c_str());
  return t;
}

}  // namespace

Napi::Function JsAttributionGraph::define(Napi::Env env) {
  return DefineClass(env, "NativeAttributionGraph",
                     {
                         StaticMethod<&JsAttributionGraph::create>("create"),
                         InstanceMethod<&JsAttributionGraph::info>("info"),
                         InstanceMethod<&JsAttributionGraph::rows>("rows"),
                         InstanceMethod<&JsAttributionGraph::dispose>("dispose"),
                     });
}

JsAttributionGraph::JsAttributionGraph(const Napi::CallbackInfo& info) : Napi::ObjectWrap<JsAttributionGraph>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw Napi::TypeError::New(info.Env(), "attribution graphs are created by attributionGraph(replacementModel, prompt)");
  graph_ = *info[0].As<Napi::External<std::shared_ptr<const AttributionGraph>>>().Data();
}

Napi::Value JsAttributionGraph::create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    std::shared_ptr<const ReplacementModel> rm = JsReplacementModel::replacementOf(info[0], "the replacement model");
    at::Tensor tokens = JsTensor::tensorOf(info[1], "tokens");
    Napi::Object opts = info[2].IsObject() ? info[2].As<Napi::Object>() : Napi::Object::New(env);
    int64_t batchSize = intOr(opts, "batchSize", 32);
    using Handle = std::shared_ptr<const AttributionGraph>;
    Napi::Function cls = info.This().As<Napi::Function>();
    auto ctor = std::make_shared<Napi::FunctionReference>(Napi::Persistent(cls));
    return Task<Handle>::start(
        env, "transcoders:attributionGraph",
        [rm, tokens, batchSize]() -> Handle {
          auto locks = rm->readLocks();
          return std::make_shared<const AttributionGraph>(rm, tokens, batchSize);
        },
        [ctor](Napi::Env env, Handle& graph) -> Napi::Value {
          auto external = Napi::External<Handle>::New(env, new Handle(graph), [](Napi::Env, Handle* h) { delete h; });
          return ctor->New({external});
        });
  });
}

Napi::Value JsAttributionGraph::info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    if (!graph_) throw InvalidArgument("this attribution graph was disposed");
    const AttributionGraph& g = *graph_;
    Napi::Object o = Napi::Object::New(env);
    o.Set("length", static_cast<double>(g.length()));
    o.Set("nLayers", static_cast<double>(g.nLayers()));
    o.Set("numSources", static_cast<double>(g.numSources()));
    o.Set("numFeatures", static_cast<double>(g.numFeatures()));
    o.Set("errorOffset", static_cast<double>(g.errorOffset()));
    o.Set("tokenOffset", static_cast<double>(g.tokenOffset()));
    o.Set("positionalOffset", g.hasPositional() ? Napi::Value(Napi::Number::New(env, static_cast<double>(g.positionalOffset()))) : env.Null());
    o.Set("biasOffset", static_cast<double>(g.biasOffset()));
    Napi::Object f = Napi::Object::New(env);
    f.Set("layer", JsTensor::wrap(env, g.featureLayers()));
    f.Set("position", JsTensor::wrap(env, g.featurePositions()));
    f.Set("index", JsTensor::wrap(env, g.featureIndices()));
    f.Set("activation", JsTensor::wrap(env, g.featureActivations()));
    o.Set("features", f);
    o.Set("lastLogits", JsTensor::wrap(env, g.lastLogits()));
    o.Set("errorNorms", JsTensor::wrap(env, g.errorNorms()));
    return o;
  });
}

Napi::Value JsAttributionGraph::rows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    if (!graph_) throw InvalidArgument("this attribution graph was disposed");
    if (!info[0].IsArray()) throw InvalidArgument("targets must be an array");
    auto list = info[0].As<Napi::Array>();
    std::vector<GraphTarget> targets;
    for (uint32_t i = 0; i < list.Length(); ++i) targets.push_back(targetFrom(list.Get(i), i));
    Napi::Object opts = info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(env);
    double threshold = opts.Get("threshold").IsNumber() ? opts.Get("threshold").As<Napi::Number>().DoubleValue() : 0.0;
    int64_t topK = intOr(opts, "topK", 0);
    if (!(threshold >= 0)) throw InvalidArgument("threshold must be a non-negative number");
    if (topK < 0) throw InvalidArgument("topK must be a non-negative integer");
    std::shared_ptr<const AttributionGraph> g = graph_;
    return Task<GraphRows>::start(
        env, "transcoders:graphRows", [g, targets, threshold, topK]() { return g->rows(targets, threshold, topK); },
        [](Napi::Env env, GraphRows& r) -> Napi::Value {
          Napi::Object o = Napi::Object::New(env);
          o.Set("rowStart", JsTensor::wrap(env, r.rowStart));
          o.Set("columns", JsTensor::wrap(env, r.columns));
          o.Set("values", JsTensor::wrap(env, r.values));
          o.Set("targetValues", JsTensor::wrap(env, r.targetValues));
          o.Set("droppedMass", JsTensor::wrap(env, r.droppedMass));
          return o;
        });
  });
}

Napi::Value JsAttributionGraph::dispose(const Napi::CallbackInfo& info) {
  graph_.reset();
  return info.Env().Undefined();
}

}  // namespace tc
