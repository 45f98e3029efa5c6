#include "bindings/cross_layer_wrap.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <mutex>
#include <shared_mutex>

#include "bindings/js_args.h"
#include "bindings/js_errors.h"
#include "bindings/state.h"
#include "bindings/task.h"
#include "bindings/trainer_state.h"
#include "bindings/tensor_wrap.h"
#include "bindings/transcoder_wrap.h"
#include "eval/metrics.h"
#include "tensor/dtype.h"

namespace tc {

namespace {

std::vector<std::string> stringsOr(const Napi::Object& o, const char* key) {
  std::vector<std::string> out;
  if (!hasValue(o, key)) return out;
  if (!o.Get(key).IsArray()) throw InvalidArgument(std::string(key) + " must be an array of hook names");
  auto list = o.Get(key).As<Napi::Array>();
  for (uint32_t i = 0; i < list.Length(); ++i) {
    if (!list.Get(i).IsString()) throw InvalidArgument(std::string(key) + "[" + std::to_string(i) + "] must be a hook name");
    out.push_back(list.Get(i).As<Napi::String>());
  }
  return out;
}

CrossLayerSpec specFrom(const Napi::Object& o) {
  CrossLayerSpec s;
  s.arch = transcoderArchFromName(stringOr(o, "arch", "relu"));
  s.nLayers = intOr(o, "nLayers", 0);
  s.dIn = intOr(o, "dIn", 0);
  s.dOut = intOr(o, "dOut", 0);
  s.dSae = intOr(o, "dSae", 0);
  s.skip = boolOr(o, "skip", false);
  s.k = intOr(o, "k", 0);
  s.bandwidth = numberOr(o, "bandwidth", 1e-3);
  s.hookIn = stringsOr(o, "hookIn");
  s.hookOut = stringsOr(o, "hookOut");
  return s;
}

CrossLayerLossOptions lossOptionsFrom(const Napi::Object& o) {
  CrossLayerLossOptions l;
  const std::string recon = stringOr(o, "reconstruction", "fvu");
  if (recon == "paper") l.reconstruction = Reconstruction::Paper;
  else if (recon == "fvu") l.reconstruction = Reconstruction::Fvu;
  else throw InvalidArgument("unknown reconstruction loss '" + recon + "' (expected fvu or paper)");
  l.sparsity = crossLayerSparsityFromName(stringOr(o, "sparsity", "none"));
  l.sparsityCoefficient = numberOr(o, "sparsityCoefficient", 0);
  l.tanhScale = numberOr(o, "tanhScale", 1);
  l.preactCoefficient = numberOr(o, "preactCoefficient", 0);
  l.auxkAlpha = numberOr(o, "auxkAlpha", 0);
  l.kAux = intOr(o, "kAux", 0);
  if (hasValue(o, "dead")) l.dead = JsTensor::tensorOf(o.Get("dead"), "dead").to(c10::kBool);
  return l;
}

CrossLayerTrainOptions trainOptionsFrom(const Napi::Object& o) {
  CrossLayerTrainOptions t;
  optimizerOptionsFrom(o, t.lr, t.adam, t.schedule);
  t.loss = lossOptionsFrom(objectOr(o.Get("loss")));
  t.sparsityWarmupSteps = intOr(o, "sparsityWarmupSteps", 0);
  t.maxGradNorm = numberOr(o, "maxGradNorm", 0);
  t.deadFeatureWindow = intOr(o, "deadFeatureWindow", t.deadFeatureWindow);
  return t;
}

at::TensorOptions placementFrom(const Napi::Object& o) {
  return at::TensorOptions().device(deviceFromName(stringOr(o, "device", "cpu"))).dtype(dtypeFromName(stringOr(o, "dtype", "float32")));
}

using Named = std::vector<std::pair<std::string, at::Tensor>>;

Napi::Object namedToJs(Napi::Env env, const Named& tensors) {
  Napi::Object out = Napi::Object::New(env);
  for (const auto& [name, t] : tensors) out.Set(name, JsTensor::wrap(env, t));
  return out;
}

Napi::Value readTask(Napi::Env env, std::shared_ptr<CrossLayerTranscoder> clt, const char* name,
                     std::function<at::Tensor(const CrossLayerTranscoder&)> work) {
  return Task<at::Tensor>::start(
      env, name,
      [clt, work]() {
        std::shared_lock lock(clt->mutex());
        at::NoGradGuard noGrad;
        return work(*clt);
      },
      [](Napi::Env env, at::Tensor& t) -> Napi::Value { return JsTensor::wrap(env, t); });
}

Napi::Object crossLayerMetricsToJs(Napi::Env env, const CrossLayerStepMetrics& m) {
  Napi::Object o = stepMetricsToJs(env, m.summary);
  Napi::Array fvu = Napi::Array::New(env, m.layerFvu.size()), l0 = Napi::Array::New(env, m.layerL0.size());
  for (size_t i = 0; i < m.layerFvu.size(); ++i) fvu[i] = m.layerFvu[i];
  for (size_t i = 0; i < m.layerL0.size(); ++i) l0[i] = m.layerL0[i];
  o.Set("layerFvu", fvu);
  o.Set("layerL0", l0);
  return o;
}

}  // namespace

// ---- NativeCrossLayerTranscoder -------------------------------------------------------------------

Napi::Function JsCrossLayerTranscoder::define(Napi::Env env) {
  Napi::Function cls = DefineClass(env, "NativeCrossLayerTranscoder",
                                   {
                                       StaticMethod<&JsCrossLayerTranscoder::create>("create"),
                                       StaticMethod<&JsCrossLayerTranscoder::fromParams>("fromParams"),
                                       InstanceMethod<&JsCrossLayerTranscoder::encode>("encode"),
                                       InstanceMethod<&JsCrossLayerTranscoder::forward>("forward"),
                                       InstanceMethod<&JsCrossLayerTranscoder::loss>("loss"),
                                       InstanceMethod<&JsCrossLayerTranscoder::parameters>("parameters"),
                                       InstanceMethod<&JsCrossLayerTranscoder::batchStats>("batchStats"),
                                   });
  AddonState::of(env).crossLayerClass = Napi::Persistent(cls);
  return cls;
}

Napi::Object JsCrossLayerTranscoder::wrap(Napi::Env env, std::shared_ptr<CrossLayerTranscoder> clt) {
  using Handle = std::shared_ptr<CrossLayerTranscoder>;
  auto external = Napi::External<Handle>::New(env, new Handle(std::move(clt)), [](Napi::Env, Handle* h) { delete h; });
  return AddonState::of(env).crossLayerClass.New({external});
}

bool JsCrossLayerTranscoder::isCrossLayer(const Napi::Value& value) {
  return value.IsObject() && value.As<Napi::Object>().InstanceOf(AddonState::of(value.Env()).crossLayerClass.Value());
}

std::shared_ptr<CrossLayerTranscoder> JsCrossLayerTranscoder::transcoderOf(const Napi::Value& value, const char* what) {
  if (!isCrossLayer(value)) throw InvalidArgument(std::string(what) + " must be a CrossLayerTranscoder");
  return JsCrossLayerTranscoder::Unwrap(value.As<Napi::Object>())->clt_;
}

JsCrossLayerTranscoder::JsCrossLayerTranscoder(const Napi::CallbackInfo& info) : Napi::ObjectWrap<JsCrossLayerTranscoder>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw Napi::TypeError::New(info.Env(), "cross-layer transcoders are created by CrossLayerTranscoder.create / loadCrossLayerTranscoder");
  clt_ = *info[0].As<Napi::External<std::shared_ptr<CrossLayerTranscoder>>>().Data();
}

// create(spec, { seed, device, dtype, initThreshold }) -> Promise<NativeCrossLayerTranscoder>
Napi::Value JsCrossLayerTranscoder::create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    CrossLayerSpec spec = specFrom(objectOr(info[0]));
    Napi::Object o = objectOr(info[1]);
    auto seed = static_cast<uint64_t>(intOr(o, "seed", 0));
    at::TensorOptions options = placementFrom(o);
    double initThreshold = numberOr(o, "initThreshold", 1e-3);
    using Handle = std::shared_ptr<CrossLayerTranscoder>;
    return Task<Handle>::start(
        env, "transcoders:createCrossLayer",
        [=]() { return std::make_shared<CrossLayerTranscoder>(spec, CrossLayerTranscoder::initialParams(spec, seed, options, initThreshold)); },
        [](Napi::Env env, Handle& clt) -> Napi::Value { return wrap(env, clt); });
  });
}

// fromParams(spec, { W_enc, b_enc, W_dec_0.., b_dec, W_skip?, threshold? }, { device, dtype }) -> Promise<...>; copies.
Napi::Value JsCrossLayerTranscoder::fromParams(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    CrossLayerSpec spec = specFrom(objectOr(info[0]));
    Napi::Object given = objectOr(info[1]);
    at::TensorOptions options = placementFrom(objectOr(info[2]));
    CrossLayerParams p;
    if (spec.nLayers > 0) p.W_dec.resize(spec.nLayers);
    std::map<std::string, at::Tensor*> slots;
    for (auto& [name, t] : p.named()) slots[name] = t;
    slots["W_skip"] = &p.W_skip;
    slots["threshold"] = &p.threshold;
    for (const auto& key : given.GetPropertyNames().As<Napi::Array>()) {
      std::string name = Napi::Value(key.second).As<Napi::String>();
      auto it = slots.find(name);
      if (it == slots.end()) throw InvalidArgument("unknown cross-layer transcoder parameter '" + name + "'");
      *it->second = JsTensor::tensorOf(given.Get(name), name.c_str());
    }
    using Handle = std::shared_ptr<CrossLayerTranscoder>;
    return Task<Handle>::start(
        env, "transcoders:crossLayerFromParams",
        [=]() mutable {
          at::NoGradGuard noGrad;
          for (auto& [name, t] : p.named())
            if (t->defined()) *t = t->to(options, /*non_blocking=*/false, /*copy=*/true);
          return std::make_shared<CrossLayerTranscoder>(spec, std::move(p));
        },
        [](Napi::Env env, Handle& clt) -> Napi::Value { return wrap(env, clt); });
  });
}

// encode(x [N, L, d_in]) -> Promise<f [N, L, F]>
Napi::Value JsCrossLayerTranscoder::encode(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    at::Tensor x = JsTensor::tensorOf(info[0], "x");
    return readTask(info.Env(), clt_, "transcoders:crossLayerEncode", [x](const CrossLayerTranscoder& clt) {
      return clt.activate(clt.preActivations(x.to(clt.params().W_enc.options())));
    });
  });
}

// forward(x [N, L, d_in]) -> Promise<y [N, L, d_out]>
Napi::Value JsCrossLayerTranscoder::forward(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    at::Tensor x = JsTensor::tensorOf(info[0], "x");
    return readTask(info.Env(), clt_, "transcoders:crossLayerForward",
                    [x](const CrossLayerTranscoder& clt) { return clt.forward(x.to(clt.params().W_enc.options())); });
  });
}

// loss(x, y, lossOptions, { grad }) -> Promise<{ pre, f, yHat, omega, layerFvu, reconstruction, sparsity, preact, auxk, total, grad.<param>? }>
Napi::Value JsCrossLayerTranscoder::loss(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    at::Tensor x = JsTensor::tensorOf(info[0], "x");
    at::Tensor y = JsTensor::tensorOf(info[1], "y");
    CrossLayerLossOptions options = lossOptionsFrom(objectOr(info[2]));
    bool wantGrads = boolOr(objectOr(info[3]), "grad", false);
    std::shared_ptr<CrossLayerTranscoder> clt = clt_;
    return Task<Named>::start(
        env, "transcoders:crossLayerLoss",
        [clt, x, y, options, wantGrads]() {
          std::shared_lock lock(clt->mutex());
          auto opts = clt->params().W_enc.options();
          // Gradients are computed on leaf copies, so the transcoder's own parameters are untouched.
          CrossLayerParams p = clt->params();
          for (auto& [name, t] : p.named()) *t = t->detach().clone().requires_grad_(wantGrads);
          CrossLayerTranscoder copy(clt->spec(), std::move(p));
          lock.unlock();
          at::AutoGradMode grad(wantGrads);
          CrossLayerLossOptions o = options;
          if (o.dead.defined()) o.dead = o.dead.to(opts.device());
          CrossLayerLossTerms t = crossLayerLoss(copy, x.to(opts), y.to(opts), o);
          Named out = {{"pre", t.pre.detach()}, {"f", t.f.detach()}, {"yHat", t.yHat.detach()}, {"omega", t.omega.detach()},
                       {"layerFvu", t.layerFvu}, {"reconstruction", t.reconstruction.detach()}, {"sparsity", t.sparsity.detach()},
                       {"preact", t.preact.detach()}, {"auxk", t.auxk.detach()}, {"total", t.total.detach()}};
          if (wantGrads) {
            t.total.backward();
            for (auto& [name, q] : copy.params().named()) out.emplace_back("grad." + name, q->grad().defined() ? q->grad() : at::zeros_like(*q));
          }
          return out;
        },
        [](Napi::Env env, Named& named) -> Napi::Value { return namedToJs(env, named); });
  });
}

Napi::Value JsCrossLayerTranscoder::parameters(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    std::shared_lock lock(clt_->mutex());
    Named out;
    for (const auto& [name, t] : clt_->params().named()) out.emplace_back(name, t->detach());
    return namedToJs(info.Env(), out);
  });
}

// batchStats(x [N, L, d_in], y [N, L, d_out]) -> Promise<{ rows, sumSquaredError [L], sumSquaredY [L], sumY [L, d], activeSum [L], fireCounts [L, F] }>
Napi::Value JsCrossLayerTranscoder::batchStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    at::Tensor x = JsTensor::tensorOf(info[0], "x");
    at::Tensor y = JsTensor::tensorOf(info[1], "y");
    std::shared_ptr<CrossLayerTranscoder> clt = clt_;
    return Task<CrossLayerBatchStats>::start(
        env, "transcoders:crossLayerBatchStats",
        [clt, x, y]() {
          std::shared_lock lock(clt->mutex());
          return crossLayerBatchStats(*clt, x, y);
        },
        [](Napi::Env env, CrossLayerBatchStats& s) -> Napi::Value {
          Napi::Object out = namedToJs(env, {{"sumSquaredError", s.sumSquaredError}, {"sumSquaredY", s.sumSquaredY}, {"sumY", s.sumY},
                                             {"activeSum", s.activeSum}, {"fireCounts", s.fireCounts}});
          out.Set("rows", static_cast<double>(s.rows));
          return out;
        });
  });
}

Napi::Value stackLayersJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    if (!info[0].IsArray() || info[0].As<Napi::Array>().Length() == 0) throw InvalidArgument("stackLayers: give a non-empty array of tensors");
    auto list = info[0].As<Napi::Array>();
    std::vector<at::Tensor> layers;
    for (uint32_t i = 0; i < list.Length(); ++i) {
      at::Tensor t = JsTensor::tensorOf(list.Get(i), ("layer " + std::to_string(i) + "'s activations").c_str());
      if (t.dim() == 0 || (!layers.empty() && t.sizes() != layers.front().sizes()))
        throw InvalidArgument("stackLayers: layer " + std::to_string(i) + "'s activations have shape " + c10::str(t.sizes()) +
                              (layers.empty() ? std::string() : ", layer 0's " + c10::str(layers.front().sizes())));
      layers.push_back(t);
    }
    return Task<at::Tensor>::start(
        env, "transcoders:stackLayers",
        [layers]() {
          std::vector<at::Tensor> rows;
          for (const at::Tensor& t : layers) rows.push_back(t.reshape({-1, t.size(-1)}));
          return at::stack(rows, 1);
        },
        [](Napi::Env env, at::Tensor& t) -> Napi::Value { return JsTensor::wrap(env, t); });
  });
}

// ---- NativeCrossLayerTrainer ----------------------------------------------------------------------

Napi::Function JsCrossLayerTrainer::define(Napi::Env env) {
  Napi::Function cls = DefineClass(env, "NativeCrossLayerTrainer",
                                   {
                                       InstanceMethod<&JsCrossLayerTrainer::run>("run"),
                                       InstanceMethod<&JsCrossLayerTrainer::state>("state"),
                                       InstanceMethod<&JsCrossLayerTrainer::setState>("setState"),
                                   });
  AddonState::of(env).crossLayerTrainerClass = Napi::Persistent(cls);
  return cls;
}

bool JsCrossLayerTrainer::isTrainer(const Napi::Value& value) {
  return value.IsObject() && value.As<Napi::Object>().InstanceOf(AddonState::of(value.Env()).crossLayerTrainerClass.Value());
}

std::pair<std::shared_ptr<CrossLayerTrainer>, std::shared_ptr<CrossLayerTranscoder>> JsCrossLayerTrainer::trainerOf(const Napi::Value& value,
                                                                                                                     const char* what) {
  if (!isTrainer(value)) throw InvalidArgument(std::string(what) + " must be a CrossLayerTrainer");
  JsCrossLayerTrainer* self = JsCrossLayerTrainer::Unwrap(value.As<Napi::Object>());
  return {self->trainer_, self->clt_};
}

// new NativeCrossLayerTrainer(transcoder, options)
JsCrossLayerTrainer::JsCrossLayerTrainer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<JsCrossLayerTrainer>(info) {
  guard(info.Env(), [&]() {
    clt_ = JsCrossLayerTranscoder::transcoderOf(info[0], "the trainer's cross-layer transcoder");
    std::unique_lock lock(clt_->mutex());
    trainer_ = std::make_shared<CrossLayerTrainer>(clt_, trainOptionsFrom(objectOr(info[1])));
    return 0;
  });
}

// run(xs [S, N, L, d_in], ys [S, N, L, d_out]) -> Promise<metrics[]>
Napi::Value JsCrossLayerTrainer::run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    at::Tensor xs = JsTensor::tensorOf(info[0], "xs");
    at::Tensor ys = JsTensor::tensorOf(info[1], "ys");
    std::shared_ptr<CrossLayerTrainer> trainer = trainer_;
    std::shared_ptr<CrossLayerTranscoder> clt = clt_;
    return Task<std::vector<CrossLayerStepMetrics>>::start(
        env, "transcoders:trainCrossLayer",
        [trainer, clt, xs, ys]() {
          std::unique_lock lock(clt->mutex());
          return trainer->run(xs, ys);
        },
        [](Napi::Env env, std::vector<CrossLayerStepMetrics>& metrics) -> Napi::Value {
          Napi::Array out = Napi::Array::New(env, metrics.size());
          for (size_t i = 0; i < metrics.size(); ++i) out[i] = crossLayerMetricsToJs(env, metrics[i]);
          return out;
        });
  });
}

// state() -> { step, steps_since_fired, "adam.<param>.exp_avg", "adam.<param>.exp_avg_sq" } (copies)
Napi::Value JsCrossLayerTrainer::state(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    std::shared_lock lock(clt_->mutex());
    std::vector<std::string> names;
    for (const auto& [name, t] : clt_->params().named()) names.push_back(name);
    return trainerStateToJs(info.Env(), trainer_->stepsSinceFired(), names, trainer_->optimizer());
  });
}

// setState(state) restores what state() returned (for resuming).
Napi::Value JsCrossLayerTrainer::setState(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    std::unique_lock lock(clt_->mutex());
    std::vector<std::string> names;
    for (const auto& [name, t] : clt_->params().named()) names.push_back(name);
    trainerStateFromJs(objectOr(info[0]), trainer_->stepsSinceFired(), names, trainer_->optimizer());
    return info.Env().Undefined();
  });
}

}  // namespace tc
