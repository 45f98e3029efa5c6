#include "bindings/connections_wrap.h"

#include <ATen/ATen.h>

#include <cmath>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "circuits/connections.h"
#include "bindings/js_errors.h"
#include "bindings/js_args.h"
#include "bindings/task.h"
#include "bindings/replacement_model_wrap.h"
#include "bindings/tensor_wrap.h"
#include "bindings/transcoder_wrap.h"

namespace tc {

namespace {

int64_t intArg(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) throw InvalidArgument(std::string(name) + " must be an integer");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d)) throw InvalidArgument(std::string(name) + " must be an integer");
  return static_cast<int64_t>(d);
}

// Shared locks on every transcoder a computation reads (taken on the worker).
std::vector<std::shared_lock<std::shared_mutex>> lockAll(const std::vector<std::shared_ptr<Transcoder>>& tcs) {
  std::vector<std::shared_lock<std::shared_mutex>> locks;
  for (const auto& t : tcs) {
    if (t) locks.emplace_back(t->mutex());
  }
  return locks;
}

Napi::Array numbers(Napi::Env env, const at::Tensor& t) {
  at::Tensor c = t.to(at::kCPU, c10::kDouble).contiguous();
  const double* p = c.data_ptr<double>();
  Napi::Array out = Napi::Array::New(env, c.numel());
  for (int64_t i = 0; i < c.numel(); ++i) out[static_cast<uint32_t>(i)] = Napi::Number::New(env, p[i]);
  return out;
}

Napi::Object listToJs(Napi::Env env, const LayerConnections& c) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("layer", static_cast<double>(c.layer));
  if (c.head >= 0) {
    o.Set("attnLayer", static_cast<double>(c.attnLayer));
    o.Set("head", static_cast<double>(c.head));
  }
  o.Set("indices", numbers(env, c.indices));
  o.Set("values", numbers(env, c.values));
  return o;
}

Napi::Object topkToJs(Napi::Env env, const TopK& t) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("indices", numbers(env, t.indices));
  o.Set("values", numbers(env, t.values));
  return o;
}

Napi::Object effectsToJs(Napi::Env env, const TokenEffects& e) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("top", topkToJs(env, e.top));
  o.Set("bottom", topkToJs(env, e.bottom));
  return o;
}

TopKMerge mergeFrom(const std::string& name) {
  if (name == "auto") return TopKMerge::Auto;
  if (name == "scan") return TopKMerge::Scan;
  if (name == "topk") return TopKMerge::TopK;
  throw InvalidArgument("merge must be 'auto', 'scan' or 'topk', got '" + name + "'");
}

ConnectionDirection directionFrom(const std::string& name) {
  if (name == "downstream") return ConnectionDirection::Downstream;
  if (name == "upstream") return ConnectionDirection::Upstream;
  throw InvalidArgument("direction must be 'downstream' or 'upstream', got '" + name + "'");
}

// Shared locks on every transcoder of a replacement model (taken on the worker).
std::vector<std::shared_lock<std::shared_mutex>> lockAll(const ReplacementModel& rm) {
  std::vector<std::shared_lock<std::shared_mutex>> locks;
  for (int64_t l : rm.layers()) locks.emplace_back(rm.transcoder(l).mutex());
  return locks;
}

// featureConnections(replacementModel, layer, feature, { k, throughAttention })
//   -> Promise<{ upstream: List[], downstream: List[] }>, List = { layer, attnLayer?, head?, indices, values }
Napi::Value featureConnectionsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    std::shared_ptr<const ReplacementModel> rm = JsReplacementModel::replacementOf(info[0], "the replacement model");
    int64_t layer = intArg(info[1], "layer"), feature = intArg(info[2], "feature");
    Napi::Object o = objectOr(info[3]);
    int64_t k = intOr(o, "k", 10);
    bool through = boolOr(o, "throughAttention", false);
    return Task<FeatureConnections>::start(
        env, "transcoders:featureConnections",
        [rm, layer, feature, k, through]() {
          auto locks = lockAll(*rm);
          return featureConnections(*rm, layer, feature, k, through);
        },
        [](Napi::Env env, FeatureConnections& r) -> Napi::Value {
          Napi::Object out = Napi::Object::New(env);
          Napi::Array up = Napi::Array::New(env, r.upstream.size()), down = Napi::Array::New(env, r.downstream.size());
          for (size_t i = 0; i < r.upstream.size(); ++i) up[static_cast<uint32_t>(i)] = listToJs(env, r.upstream[i]);
          for (size_t i = 0; i < r.downstream.size(); ++i) down[static_cast<uint32_t>(i)] = listToJs(env, r.downstream[i]);
          out.Set("upstream", up);
          out.Set("downstream", down);
          return out;
        });
  });
}

// deEmbedding(replacementModel, layer, feature, { k, attnLayer, head }) -> Promise<{ top, bottom }>
Napi::Value deEmbeddingJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    std::shared_ptr<const ReplacementModel> rm = JsReplacementModel::replacementOf(info[0], "the replacement model");
    int64_t layer = intArg(info[1], "layer"), feature = intArg(info[2], "feature");
    Napi::Object o = objectOr(info[3]);
    int64_t k = intOr(o, "k", 10), attnLayer = intOr(o, "attnLayer", -1), head = intOr(o, "head", -1);
    return Task<TokenEffects>::start(
        env, "transcoders:deEmbedding",
        [rm, layer, feature, k, attnLayer, head]() {
          std::shared_lock lock(rm->transcoder(layer).mutex());
          return deEmbedding(*rm, layer, feature, k, attnLayer, head);
        },
        [](Napi::Env env, TokenEffects& e) -> Napi::Value { return effectsToJs(env, e); });
  });
}

// logitEffects(replacementModel, layer, feature, { k }) -> Promise<{ top, bottom }>
Napi::Value logitEffectsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    std::shared_ptr<const ReplacementModel> rm = JsReplacementModel::replacementOf(info[0], "the replacement model");
    int64_t layer = intArg(info[1], "layer"), feature = intArg(info[2], "feature");
    int64_t k = intOr(objectOr(info[3]), "k", 10);
    return Task<TokenEffects>::start(
        env, "transcoders:logitEffects",
        [rm, layer, feature, k]() {
          std::shared_lock lock(rm->transcoder(layer).mutex());
          return logitEffects(*rm, layer, feature, k);
        },
        [](Napi::Env env, TokenEffects& e) -> Napi::Value { return effectsToJs(env, e); });
  });
}

// logitEffectsOn(replacementModel, layer, feature, tokens (int tensor), { attnLayer, head }) -> Promise<NativeTensor [n]>
Napi::Value logitEffectsOnJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    std::shared_ptr<const ReplacementModel> rm = JsReplacementModel::replacementOf(info[0], "the replacement model");
    int64_t layer = intArg(info[1], "layer"), feature = intArg(info[2], "feature");
    at::Tensor tokens = JsTensor::tensorOf(info[3], "tokens");
    Napi::Object o = objectOr(info[4]);
    int64_t attnLayer = intOr(o, "attnLayer", -1), head = intOr(o, "head", -1);
    return Task<at::Tensor>::start(
        env, "transcoders:logitEffectsOn",
        [rm, layer, feature, tokens, attnLayer, head]() {
          std::shared_lock lock(rm->transcoder(layer).mutex());
          return logitEffectsOn(*rm, layer, feature, tokens, attnLayer, head);
        },
        [](Napi::Env env, at::Tensor& t) -> Napi::Value { return JsTensor::wrap(env, t); });
  });
}

// A source / target operand: a transcoder (its W_dec / W_enc, read under its lock) or a tensor.
struct Operand {
  std::shared_ptr<Transcoder> tc;
  at::Tensor tensor;
  at::Tensor get(bool decoder) const { return tc ? (decoder ? tc->params().W_dec : tc->params().W_enc).detach() : tensor; }
};

Operand operandFrom(const Napi::Value& v, const char* name) {
  if (JsTensor::isTensor(v)) return {nullptr, JsTensor::tensorOf(v, name)};
  return {JsTranscoder::transcoderOf(v, name), at::Tensor()};
}

// topkConnections(src, dst, { k, blockSize, direction, merge }) -> Promise<{ indices, values }> (NativeTensors)
Napi::Value topkConnectionsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    Operand src = operandFrom(info[0], "source (a Transcoder or its W_dec tensor)");
    Operand dst = operandFrom(info[1], "target (a Transcoder or its W_enc tensor)");
    Napi::Object o = objectOr(info[2]);
    ConnectionOptions options;
    options.k = intOr(o, "k", options.k);
    options.blockSize = intOr(o, "blockSize", options.blockSize);
    options.direction = directionFrom(stringOr(o, "direction", "downstream"));
    options.merge = mergeFrom(stringOr(o, "merge", "auto"));
    return Task<TopK>::start(
        env, "transcoders:topkConnections",
        [src, dst, options]() {
          auto locks = lockAll({src.tc, dst.tc == src.tc ? nullptr : dst.tc});
          return topkConnections(src.get(true), dst.get(false), options);
        },
        [](Napi::Env env, TopK& t) -> Napi::Value {
          Napi::Object out = Napi::Object::New(env);
          out.Set("indices", JsTensor::wrap(env, t.indices));
          out.Set("values", JsTensor::wrap(env, t.values));
          return out;
        });
  });
}

// gemmGflops({ m, k, n, iters }) -> Promise<number>: the best float32 at::mm throughput on the CPU.
Napi::Value gemmGflopsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    Napi::Object o = objectOr(info[0]);
    int64_t m = intOr(o, "m", 2048), kk = intOr(o, "k", 2048), n = intOr(o, "n", 2048), iters = intOr(o, "iters", 5);
    return Task<double>::start(
        env, "transcoders:gemmGflops", [m, kk, n, iters]() { return gemmGflops(m, kk, n, iters); },
        [](Napi::Env env, double& g) -> Napi::Value { return Napi::Number::New(env, g); });
  });
}

}  // namespace

Napi::Object connectionsExports(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("featureConnections", Napi::Function::New(env, featureConnectionsJs, "featureConnections"));
  o.Set("deEmbedding", Napi::Function::New(env, deEmbeddingJs, "deEmbedding"));
  o.Set("logitEffects", Napi::Function::New(env, logitEffectsJs, "logitEffects"));
  o.Set("logitEffectsOn", Napi::Function::New(env, logitEffectsOnJs, "logitEffectsOn"));
  o.Set("topkConnections", Napi::Function::New(env, topkConnectionsJs, "topkConnections"));
  o.Set("gemmGflops", Napi::Function::New(env, gemmGflopsJs, "gemmGflops"));
  return o;
}

}  // namespace tc
