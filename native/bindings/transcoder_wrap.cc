#include "bindings/transcoder_wrap.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <mutex>
#include <set>
#include <shared_mutex>

#include "bindings/js_errors.h"
#include "bindings/js_args.h"
#include "bindings/state.h"
#include "bindings/task.h"
#include "bindings/trainer_state.h"
#include "tensor/dtype.h"
#include "bindings/tensor_wrap.h"
#include "eval/metrics.h"
#include "transcoder/init.h"

namespace tc {

namespace {

TranscoderSpec specFrom(const Napi::Object& o) {
  TranscoderSpec s;
  s.arch = transcoderArchFromName(stringOr(o, "arch", "relu"));
  s.dIn = intOr(o, "dIn", 0);
  s.dOut = intOr(o, "dOut", 0);
  s.dSae = intOr(o, "dSae", 0);
  s.skip = boolOr(o, "skip", false);
  s.k = intOr(o, "k", 0);
  s.bandwidth = numberOr(o, "bandwidth", 1e-3);
  s.layer = intOr(o, "layer", -1);
  s.hookIn = stringOr(o, "hookIn", "");
  s.hookOut = stringOr(o, "hookOut", "");
  return s;
}

LossOptions lossOptionsFrom(const Napi::Object& o) {
  LossOptions l;
  std::string recon = stringOr(o, "reconstruction", "paper");
  if (recon == "paper") l.reconstruction = Reconstruction::Paper;
  else if (recon == "fvu") l.reconstruction = Reconstruction::Fvu;
  else throw InvalidArgument("unknown reconstruction loss '" + recon + "' (expected paper or fvu)");
  l.l1Coefficient = numberOr(o, "l1Coefficient", 0);
  l.l0Coefficient = numberOr(o, "l0Coefficient", 0);
  l.auxkAlpha = numberOr(o, "auxkAlpha", 0);
  l.kAux = intOr(o, "kAux", 0);
  l.ghostGrads = boolOr(o, "ghostGrads", false);
  std::string residual = stringOr(o, "ghostResidual", "input");
  if (residual != "input" && residual != "target") throw InvalidArgument("ghostResidual must be 'input' or 'target'");
  l.ghostResidualFromInput = residual == "input";
  if (hasValue(o, "dead")) l.dead = JsTensor::tensorOf(o.Get("dead"), "dead").to(c10::kBool);
  return l;
}

TrainOptions trainOptionsFrom(const Napi::Object& o) {
  TrainOptions t;
  optimizerOptionsFrom(o, t.lr, t.adam, t.schedule);
  t.schedulerBeforeStep = boolOr(o, "schedulerBeforeStep", false);
  t.loss = lossOptionsFrom(objectOr(o.Get("loss")));
  t.sparsityWarmupSteps = intOr(o, "sparsityWarmupSteps", 0);
  t.maxGradNorm = numberOr(o, "maxGradNorm", 0);
  t.normalizeDecoder = boolOr(o, "normalizeDecoder", true);
  t.deadFeatureWindow = intOr(o, "deadFeatureWindow", t.deadFeatureWindow);
  t.resampleEvery = intOr(o, "resampleEvery", 0);
  t.resampleSequences = intOr(o, "resampleSequences", t.resampleSequences);
  t.resampleScale = numberOr(o, "resampleScale", t.resampleScale);
  t.resampleWarmupSteps = intOr(o, "resampleWarmupSteps", t.resampleWarmupSteps);
  const std::string compute = stringOr(o, "computeDtype", "float32");
  if (compute != "float32" && compute != "bfloat16") throw InvalidArgument("computeDtype must be 'float32' or 'bfloat16', got '" + compute + "'");
  t.fast.computeDtype = compute == "bfloat16" ? c10::kBFloat16 : c10::kFloat;
  t.fast.sparseBelowDensity = numberOr(o, "sparseBelowDensity", t.fast.sparseBelowDensity);
  t.fast.portableProducts = boolOr(o, "portableProducts", false);
  return t;
}

Napi::Object tensorMap(Napi::Env env, const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  Napi::Object out = Napi::Object::New(env);
  for (const auto& [name, t] : tensors) out.Set(name, JsTensor::wrap(env, t));
  return out;
}

std::vector<std::pair<std::string, at::Tensor>> detachedParams(const Transcoder& tc) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& [name, t] : tc.params().named()) out.emplace_back(name, t->detach());
  return out;
}

// Runs `work(transcoder)` on a worker holding the transcoder's lock shared, and wraps the tensor result.
Napi::Value readTask(Napi::Env env, std::shared_ptr<Transcoder> tc, const char* name,
                     std::function<at::Tensor(const Transcoder&)> work) {
  return Task<at::Tensor>::start(
      env, name,
      [tc, work]() {
        std::shared_lock lock(tc->mutex());
        at::NoGradGuard noGrad;
        return work(*tc);
      },
      [](Napi::Env env, at::Tensor& t) -> Napi::Value { return JsTensor::wrap(env, t); });
}

}  // namespace

// ---- NativeTranscoder -----------------------------------------------------------------------------

Napi::Function JsTranscoder::define(Napi::Env env) {
  Napi::Function cls = DefineClass(env, "NativeTranscoder",
                                   {
                                       StaticMethod<&JsTranscoder::create>("create"),
                                       StaticMethod<&JsTranscoder::fromParams>("fromParams"),
                                       InstanceMethod<&JsTranscoder::encode>("encode"),
                                       InstanceMethod<&JsTranscoder::encodeSparse>("encodeSparse"),
                                       InstanceMethod<&JsTranscoder::decode>("decode"),
                                       InstanceMethod<&JsTranscoder::forward>("forward"),
                                       InstanceMethod<&JsTranscoder::loss>("loss"),
                                       InstanceMethod<&JsTranscoder::parameters>("parameters"),
                                       InstanceMethod<&JsTranscoder::initializeBiases>("initializeBiases"),
                                       InstanceMethod<&JsTranscoder::batchStats>("batchStats"),
                                   });
  AddonState::of(env).transcoderClass = Napi::Persistent(cls);
  return cls;
}

Napi::Object JsTranscoder::wrap(Napi::Env env, std::shared_ptr<Transcoder> transcoder) {
  using Handle = std::shared_ptr<Transcoder>;
  auto external = Napi::External<Handle>::New(env, new Handle(std::move(transcoder)), [](Napi::Env, Handle* h) { delete h; });
  return AddonState::of(env).transcoderClass.New({external});
}

std::shared_ptr<Transcoder> JsTranscoder::transcoderOf(const Napi::Value& value, const char* what) {
  if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(AddonState::of(value.Env()).transcoderClass.Value()))
    throw InvalidArgument(std::string(what) + " must be a Transcoder");
  return JsTranscoder::Unwrap(value.As<Napi::Object>())->tc_;
}

JsTranscoder::JsTranscoder(const Napi::CallbackInfo& info) : Napi::ObjectWrap<JsTranscoder>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw Napi::TypeError::New(info.Env(), "transcoders are created by Transcoder.create / Transcoder.load");
  tc_ = *info[0].As<Napi::External<std::shared_ptr<Transcoder>>>().Data();
}

// create(spec, { seed, device, dtype, initThreshold }) -> Promise<NativeTranscoder>
Napi::Value JsTranscoder::create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    TranscoderSpec spec = specFrom(objectOr(info[0]));
    Napi::Object o = objectOr(info[1]);
    auto seed = static_cast<uint64_t>(intOr(o, "seed", 0));
    auto options = at::TensorOptions()
                       .device(deviceFromName(stringOr(o, "device", "cpu")))
                       .dtype(dtypeFromName(stringOr(o, "dtype", "float32")));
    double initThreshold = numberOr(o, "initThreshold", 1e-3);
    using Handle = std::shared_ptr<Transcoder>;
    return Task<Handle>::start(
        env, "transcoders:createTranscoder",
        [=]() { return std::make_shared<Transcoder>(spec, Transcoder::initialParams(spec, seed, options, initThreshold)); },
        [](Napi::Env env, Handle& tc) -> Napi::Value { return wrap(env, tc); });
  });
}

// fromParams(spec, { name: NativeTensor }, { device, dtype }) -> Promise<NativeTranscoder>; copies the tensors.
Napi::Value JsTranscoder::fromParams(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    TranscoderSpec spec = specFrom(objectOr(info[0]));
    Napi::Object given = objectOr(info[1]);
    Napi::Object o = objectOr(info[2]);
    auto options = at::TensorOptions()
                       .device(deviceFromName(stringOr(o, "device", "cpu")))
                       .dtype(dtypeFromName(stringOr(o, "dtype", "float32")));
    TranscoderParams p;
    auto take = [&](const char* name) {
      return hasValue(given, name) ? JsTensor::tensorOf(given.Get(name), name) : at::Tensor();
    };
    p.W_enc = take("W_enc");
    p.b_enc = take("b_enc");
    p.W_dec = take("W_dec");
    p.b_dec = take("b_dec");
    p.b_dec_out = take("b_dec_out");
    p.W_skip = take("W_skip");
    p.threshold = take("threshold");
    for (const auto& key : given.GetPropertyNames().As<Napi::Array>()) {
      std::string name = Napi::Value(key.second).As<Napi::String>();
      static const std::set<std::string> known = {"W_enc", "b_enc", "W_dec", "b_dec", "b_dec_out", "W_skip", "threshold"};
      if (!known.count(name)) throw InvalidArgument("unknown transcoder parameter '" + name + "'");
    }
    using Handle = std::shared_ptr<Transcoder>;
    return Task<Handle>::start(
        env, "transcoders:transcoderFromParams",
        [=]() mutable {
          at::NoGradGuard noGrad;
          for (auto& [name, t] : p.named()) *t = t->to(options, /*non_blocking=*/false, /*copy=*/true);
          return std::make_shared<Transcoder>(spec, std::move(p));
        },
        [](Napi::Env env, Handle& tc) -> Napi::Value { return wrap(env, tc); });
  });
}

Napi::Value JsTranscoder::encode(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    at::Tensor x = JsTensor::tensorOf(info[0], "x");
    return readTask(info.Env(), tc_, "transcoders:encode", [x](const Transcoder& tc) {
      at::Tensor f = tc.encode(x.to(tc.params().W_enc.options()));
      std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
      shape.back() = tc.spec().dSae;
      return f.view(shape);
    });
  });
}

Napi::Value JsTranscoder::forward(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    at::Tensor x = JsTensor::tensorOf(info[0], "x");
    return readTask(info.Env(), tc_, "transcoders:forward",
                    [x](const Transcoder& tc) { return tc.forward(x.to(tc.params().W_enc.options())); });
  });
}

// decode(f, x?) -> Promise<NativeTensor>
Napi::Value JsTranscoder::decode(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    at::Tensor f = JsTensor::tensorOf(info[0], "f");
    at::Tensor x = JsTensor::isTensor(info[1]) ? JsTensor::tensorOf(info[1], "x") : at::Tensor();
    return readTask(info.Env(), tc_, "transcoders:decode", [f, x](const Transcoder& tc) {
      auto options = tc.params().W_enc.options();
      at::Tensor y = tc.decode(f.to(options), x.defined() ? x.to(options) : x);
      std::vector<int64_t> shape(f.sizes().begin(), f.sizes().end());
      shape.back() = tc.spec().dOut;
      return y.view(shape);
    });
  });
}

// encodeSparse(x) -> Promise<{ offsets, indices, values }>
Napi::Value JsTranscoder::encodeSparse(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    at::Tensor x = JsTensor::tensorOf(info[0], "x");
    std::shared_ptr<Transcoder> tc = tc_;
    return Task<SparseActivations>::start(
        env, "transcoders:encodeSparse",
        [tc, x]() {
          std::shared_lock lock(tc->mutex());
          at::NoGradGuard noGrad;
          return tc->encodeSparse(x.to(tc->params().W_enc.options()).reshape({-1, tc->spec().dIn}));
        },
        [](Napi::Env env, SparseActivations& s) -> Napi::Value {
          return tensorMap(env, {{"offsets", s.offsets}, {"indices", s.indices}, {"values", s.values}});
        });
  });
}

// loss(x, y, lossOptions, { grad }) -> Promise<{ pre, f, yHat, reconstruction, sparsity, ghost, total, grads? }>
Napi::Value JsTranscoder::loss(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    at::Tensor x = JsTensor::tensorOf(info[0], "x");
    at::Tensor y = JsTensor::tensorOf(info[1], "y");
    LossOptions options = lossOptionsFrom(objectOr(info[2]));
    bool wantGrads = boolOr(objectOr(info[3]), "grad", false);
    std::shared_ptr<Transcoder> tc = tc_;
    using Named = std::vector<std::pair<std::string, at::Tensor>>;
    return Task<Named>::start(
        env, "transcoders:loss",
        [tc, x, y, options, wantGrads]() {
          std::unique_lock lock(tc->mutex());  // gradients are written into the parameters
          auto opts = tc->params().W_enc.options();
          // Gradients are computed on leaf copies, so the transcoder's own parameters are untouched.
          Transcoder copy(tc->spec(), [&] {
            TranscoderParams p = tc->params();
            for (auto& [name, t] : p.named()) *t = t->detach().clone().requires_grad_(wantGrads);
            return p;
          }());
          at::AutoGradMode grad(wantGrads);
          LossOptions o = options;
          if (o.dead.defined()) o.dead = o.dead.to(opts.device());
          LossTerms t = transcoderLoss(copy, x.to(opts), y.to(opts), o);
          Named out = {{"pre", t.pre.detach()}, {"f", t.f.detach()}, {"yHat", t.yHat.detach()},
                       {"reconstruction", t.reconstruction.detach()}, {"sparsity", t.sparsity.detach()},
                       {"ghost", t.ghost.detach()}, {"total", t.total.detach()}};
          if (wantGrads) {
            t.total.backward();
            for (auto& [name, p] : copy.params().named())
              out.emplace_back("grad." + name, p->grad().defined() ? p->grad() : at::zeros_like(*p));
          }
          return out;
        },
        [](Napi::Env env, Named& named) -> Napi::Value { return tensorMap(env, named); });
  });
}

Napi::Value JsTranscoder::parameters(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    std::shared_lock lock(tc_->mutex());
    return tensorMap(info.Env(), detachedParams(*tc_));
  });
}

// initializeBiases(x [N, d_in], y [N, d_out], method) -> Promise<void>
Napi::Value JsTranscoder::initializeBiases(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    at::Tensor x = JsTensor::tensorOf(info[0], "x");
    at::Tensor y = JsTensor::tensorOf(info[1], "y");
    std::string method = info[2].IsString() ? std::string(info[2].As<Napi::String>()) : "mean";
    std::shared_ptr<Transcoder> tc = tc_;
    return Task<bool>::start(
        env, "transcoders:initializeBiases",
        [tc, x, y, method]() {
          std::unique_lock lock(tc->mutex());
          initializeDecoderBiases(*tc, x, y, method);
          return true;
        },
        [](Napi::Env env, bool&) -> Napi::Value { return env.Undefined(); });
  });
}

// batchStats(x, y) -> Promise<{ rows, sumSquaredError, sumSquaredY, activeSum, sumY, fireCounts }>
Napi::Value JsTranscoder::batchStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    at::Tensor x = JsTensor::tensorOf(info[0], "x");
    at::Tensor y = JsTensor::tensorOf(info[1], "y");
    std::shared_ptr<Transcoder> tc = tc_;
    return Task<TranscoderBatchStats>::start(
        env, "transcoders:batchStats",
        [tc, x, y]() {
          std::shared_lock lock(tc->mutex());
          return transcoderBatchStats(*tc, x, y);
        },
        [](Napi::Env env, TranscoderBatchStats& s) -> Napi::Value {
          Napi::Object out = tensorMap(env, {{"sumY", s.sumY}, {"fireCounts", s.fireCounts}});
          out.Set("rows", static_cast<double>(s.rows));
          out.Set("sumSquaredError", s.sumSquaredError);
          out.Set("sumSquaredY", s.sumSquaredY);
          out.Set("activeSum", s.activeSum);
          return out;
        });
  });
}

Napi::Value klDivergenceJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    at::Tensor p = JsTensor::tensorOf(info[0], "referenceLogits");
    at::Tensor q = JsTensor::tensorOf(info[1], "logits");
    return Task<double>::start(
        env, "transcoders:klDivergence", [p, q]() { return meanKlDivergence(p, q); },
        [](Napi::Env env, double& kl) -> Napi::Value { return Napi::Number::New(env, kl); });
  });
}

Napi::Value geometricMedianJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    at::Tensor points = JsTensor::tensorOf(info[0], "points");
    Napi::Object o = objectOr(info[1]);
    int64_t maxIter = intOr(o, "maxIter", 100);
    double ftol = numberOr(o, "ftol", 1e-20), eps = numberOr(o, "eps", 1e-6);
    return Task<at::Tensor>::start(
        env, "transcoders:geometricMedian", [=]() { return geometricMedian(points, maxIter, ftol, eps); },
        [](Napi::Env env, at::Tensor& t) -> Napi::Value { return JsTensor::wrap(env, t); });
  });
}

Napi::Object stepMetricsToJs(Napi::Env env, const StepMetrics& m) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("step", static_cast<double>(m.step));
  o.Set("lr", m.lr);
  o.Set("total", m.total);
  o.Set("reconstruction", m.reconstruction);
  o.Set("sparsity", m.sparsity);
  o.Set("ghost", m.ghost);
  o.Set("fvu", m.fvu);
  o.Set("l0", m.l0);
  o.Set("deadFraction", m.deadFraction);
  o.Set("resampled", static_cast<double>(m.resampled));
  return o;
}

// ---- NativeTrainer --------------------------------------------------------------------------------

Napi::Function JsTrainer::define(Napi::Env env) {
  Napi::Function cls = DefineClass(env, "NativeTrainer",
                                   {
                                       InstanceMethod<&JsTrainer::run>("run"),
                                       InstanceMethod<&JsTrainer::state>("state"),
                                       InstanceMethod<&JsTrainer::setState>("setState"),
                                   });
  AddonState::of(env).trainerClass = Napi::Persistent(cls);
  return cls;
}

std::pair<std::shared_ptr<StepTrainer>, std::shared_ptr<Transcoder>> JsTrainer::trainerOf(const Napi::Value& value, const char* what) {
  if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(AddonState::of(value.Env()).trainerClass.Value()))
    throw InvalidArgument(std::string(what) + " must be a StepTrainer");
  JsTrainer* self = JsTrainer::Unwrap(value.As<Napi::Object>());
  return {self->trainer_, self->tc_};
}

// new NativeTrainer(transcoder, options)
JsTrainer::JsTrainer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<JsTrainer>(info) {
  guard(info.Env(), [&]() {
    tc_ = JsTranscoder::transcoderOf(info[0], "the trainer's transcoder");
    std::unique_lock lock(tc_->mutex());
    trainer_ = std::make_shared<StepTrainer>(tc_, trainOptionsFrom(objectOr(info[1])));
    return 0;
  });
}

// run(xs [S, N, d_in], ys [S, N, d_out]) -> Promise<metrics[]>
Napi::Value JsTrainer::run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    at::Tensor xs = JsTensor::tensorOf(info[0], "xs");
    at::Tensor ys = JsTensor::tensorOf(info[1], "ys");
    std::shared_ptr<StepTrainer> trainer = trainer_;
    std::shared_ptr<Transcoder> tc = tc_;
    return Task<std::vector<StepMetrics>>::start(
        env, "transcoders:train",
        [trainer, tc, xs, ys]() {
          std::unique_lock lock(tc->mutex());
          return trainer->run(xs, ys);
        },
        [](Napi::Env env, std::vector<StepMetrics>& metrics) -> Napi::Value {
          Napi::Array out = Napi::Array::New(env, metrics.size());
          for (size_t i = 0; i < metrics.size(); ++i) out[i] = stepMetricsToJs(env, metrics[i]);
          return out;
        });
  });
}

// state() -> { step, steps_since_fired, "adam.<param>.exp_avg", "adam.<param>.exp_avg_sq" } (copies)
Napi::Value JsTrainer::state(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    std::shared_lock lock(tc_->mutex());
    std::vector<std::string> names;
    for (const auto& [name, t] : tc_->params().named()) names.push_back(name);
    return trainerStateToJs(info.Env(), trainer_->stepsSinceFired(), names, trainer_->optimizer());
  });
}

// setState(state) restores what state() returned (for resuming).
Napi::Value JsTrainer::setState(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    std::unique_lock lock(tc_->mutex());
    std::vector<std::string> names;
    for (const auto& [name, t] : tc_->params().named()) names.push_back(name);
    trainerStateFromJs(objectOr(info[0]), trainer_->stepsSinceFired(), names, trainer_->optimizer());
    return info.Env().Undefined();
  });
}

}  // namespace tc
