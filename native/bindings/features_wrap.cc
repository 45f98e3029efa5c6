#include "bindings/features_wrap.h"

#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

#include "bindings/js_args.h"
#include "bindings/js_errors.h"
#include "bindings/task.h"
#include "bindings/tensor_wrap.h"
#include "features/feature_stats.h"
#include "tensor/dtype.h"

namespace tc {
namespace {

FeatureStatsOptions optionsFrom(const Napi::Object& o) {
  FeatureStatsOptions s;
  s.features = intOr(o, "features", 0);
  s.context = intOr(o, "context", 0);
  s.examples = intOr(o, "examples", s.examples);
  s.samples = intOr(o, "samples", s.samples);
  s.bins = intOr(o, "bins", s.bins);
  s.seed = static_cast<uint64_t>(intOr(o, "seed", 0));
  s.layer = intOr(o, "layer", 0);
  s.portable = boolOr(o, "portable", false);
  return s;
}

using Named = std::vector<std::pair<std::string, at::Tensor>>;

Named namedOf(FeatureStats& s) {
  Named out;
  for (auto& [name, t] : s.named()) out.emplace_back(name, *t);
  return out;
}

Napi::Object toJs(Napi::Env env, const Named& tensors) {
  Napi::Object out = Napi::Object::New(env);
  for (const auto& [name, t] : tensors) out.Set(name, JsTensor::wrap(env, t));
  return out;
}

// featureStatsInit({ features, context, examples, samples, bins, device }) -> state
Napi::Value init(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Napi::Object o = objectOr(info[0]);
    FeatureStats s = initFeatureStats(optionsFrom(o), deviceFromName(stringOr(o, "device", "cpu")));
    return toJs(info.Env(), namedOf(s));
  });
}

// featureStatsUpdate(state, acts [B, T, F], rows [B], options) -> Promise<state>. The state's tensors
// are taken over (some are updated in place): use only the returned state afterwards.
Napi::Value update(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    Napi::Object given = objectOr(info[0]);
    FeatureStats s;
    for (auto& [name, t] : s.named()) {
      if (!given.Has(name)) throw InvalidArgument("feature statistics: the state has no '" + name + "'");
      *t = JsTensor::tensorOf(given.Get(name), name.c_str());
    }
    at::Tensor acts = JsTensor::tensorOf(info[1], "acts");
    at::Tensor rows = JsTensor::tensorOf(info[2], "rows");
    FeatureStatsOptions o = optionsFrom(objectOr(info[3]));
    checkFeatureStats(s, o);
    return Task<Named>::start(
        env, "transcoders:featureStatsUpdate",
        [s, acts, rows, o]() mutable {
          updateFeatureStats(s, acts, rows, o);
          return namedOf(s);
        },
        [](Napi::Env env, Named& out) -> Napi::Value { return toJs(env, out); });
  });
}

}  // namespace

Napi::Object featuresExports(Napi::Env env) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("featureStatsInit", Napi::Function::New(env, init));
  out.Set("featureStatsUpdate", Napi::Function::New(env, update));
  return out;
}

}  // namespace tc
