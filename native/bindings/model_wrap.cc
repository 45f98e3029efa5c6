#include "bindings/model_wrap.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <future>
#include <shared_mutex>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "bindings/cross_layer_wrap.h"
#include "bindings/js_errors.h"
#include "bindings/js_args.h"
#include "train/lm_trainer.h"
#include "bindings/js_call.h"
#include "bindings/state.h"
#include "bindings/task.h"
#include "io/safetensors.h"
#include "bindings/safetensors_js.h"
#include "circuits/replacement_model.h"
#include "model/processing.h"
#include "tensor/dtype.h"
#include "bindings/tensor_wrap.h"
#include "bindings/transcoder_wrap.h"

namespace tc {

namespace {

// ---- reading JS arguments (on the JS thread) ---------------------------------------------------

int64_t intField(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw InvalidArgument(std::string("config field '") + key + "' must be a number");
  return v.As<Napi::Number>().Int64Value();
}

std::vector<std::string> stringList(const Napi::Value& value, const char* what) {
  std::vector<std::string> out;
  if (value.IsUndefined() || value.IsNull()) return out;
  if (!value.IsArray()) throw InvalidArgument(std::string(what) + " must be an array of strings");
  auto arr = value.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value item = arr.Get(i);
    if (!item.IsString()) throw InvalidArgument(std::string(what) + " must be an array of strings");
    out.push_back(item.As<Napi::String>());
  }
  return out;
}

Napi::Array toJsStrings(Napi::Env env, const std::vector<std::string>& strings) {
  Napi::Array out = Napi::Array::New(env, strings.size());
  for (size_t i = 0; i < strings.size(); ++i) out[i] = Napi::String::New(env, strings[i]);
  return out;
}

double numberField(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw InvalidArgument(std::string("config field '") + key + "' must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

std::string stringField(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsString()) throw InvalidArgument(std::string("config field '") + key + "' must be a string");
  return v.As<Napi::String>();
}

std::vector<int64_t> intList(const Napi::Object& o, const char* key) {
  std::vector<int64_t> out;
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return out;
  if (!v.IsArray()) throw InvalidArgument(std::string("config field '") + key + "' must be an array of numbers");
  auto arr = v.As<Napi::Array>();
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value item = arr.Get(i);
    if (!item.IsNumber()) throw InvalidArgument(std::string("config field '") + key + "' must be an array of numbers");
    out.push_back(item.As<Napi::Number>().Int64Value());
  }
  return out;
}

// The normalised config of lib/models/config.ts (ModelConfig), validated there.
ModelConfig configFrom(const Napi::Object& c) {
  ModelConfig cfg;
  std::string arch = stringField(c, "arch");
  if (arch == "gpt2") cfg.arch = Arch::GPT2;
  else if (arch == "gpt_neox") cfg.arch = Arch::NeoX;
  else if (arch == "llama" || arch == "mistral" || arch == "qwen2" || arch == "qwen3") cfg.arch = Arch::Llama;
  else if (arch == "gemma2" || arch == "gemma3") cfg.arch = Arch::Gemma;
  else throw InvalidArgument("unknown architecture '" + arch + "'");
  cfg.nLayers = intField(c, "nLayers");
  cfg.dModel = intField(c, "dModel");
  cfg.nHeads = intField(c, "nHeads");
  cfg.nKvHeads = intField(c, "nKvHeads");
  cfg.dHead = intField(c, "dHead");
  cfg.dMlp = intField(c, "dMlp");
  cfg.nCtx = intField(c, "nCtx");
  cfg.vocabSize = intField(c, "vocabSize");
  cfg.lnEps = numberField(c, "lnEps");
  std::string norm = stringField(c, "norm");
  if (norm == "layernorm") cfg.norm = Norm::LayerNorm;
  else if (norm == "rmsnorm") cfg.norm = Norm::RMSNorm;
  else throw InvalidArgument("unknown norm '" + norm + "'");
  cfg.normPlusOne = c.Get("normPlusOne").ToBoolean();
  std::string act = stringField(c, "activation");
  if (act == "gelu_tanh") cfg.act = Activation::GeluTanh;
  else if (act == "gelu") cfg.act = Activation::GeluExact;
  else if (act == "relu") cfg.act = Activation::Relu;
  else if (act == "silu") cfg.act = Activation::Silu;
  else throw InvalidArgument("unknown activation '" + act + "'");
  cfg.gatedMlp = c.Get("gatedMlp").ToBoolean();
  cfg.sandwichNorms = c.Get("sandwichNorms").ToBoolean();
  cfg.qkNorm = c.Get("qkNorm").ToBoolean();
  cfg.parallelResidual = c.Get("parallelResidual").ToBoolean();
  cfg.rotaryDim = intField(c, "rotaryDim");
  Napi::Value ropes = c.Get("ropes");
  if (ropes.IsArray()) {
    auto arr = ropes.As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      auto r = arr.Get(i).As<Napi::Object>();
      Rope rope;
      std::string type = stringField(r, "type");
      if (type == "default") rope.type = Rope::Type::Default;
      else if (type == "linear") rope.type = Rope::Type::Linear;
      else if (type == "llama3") rope.type = Rope::Type::Llama3;
      else throw InvalidArgument("unknown rope type '" + type + "'");
      rope.base = numberField(r, "base");
      rope.factor = numberField(r, "factor");
      rope.lowFreqFactor = numberField(r, "lowFreqFactor");
      rope.highFreqFactor = numberField(r, "highFreqFactor");
      rope.originalMaxPositions = numberField(r, "originalMaxPositions");
      cfg.ropes.push_back(rope);
    }
  }
  cfg.layerRope = intList(c, "layerRopes");
  cfg.slidingWindow = intList(c, "slidingWindows");
  if (cfg.rotaryDim > 0 && cfg.ropes.empty()) throw InvalidArgument("a rotary model needs config field 'ropes'");
  for (int64_t r : cfg.layerRope)
    if (r < 0 || r >= static_cast<int64_t>(cfg.ropes.size())) throw InvalidArgument("config field 'layerRopes' indexes no rope");
  if (!cfg.layerRope.empty() && static_cast<int64_t>(cfg.layerRope.size()) != cfg.nLayers)
    throw InvalidArgument("config field 'layerRopes' must have one entry per layer");
  if (!cfg.slidingWindow.empty() && static_cast<int64_t>(cfg.slidingWindow.size()) != cfg.nLayers)
    throw InvalidArgument("config field 'slidingWindows' must have one entry per layer");
  cfg.scaleAttnByInverseLayerIdx = c.Get("scaleAttnByInverseLayerIdx").ToBoolean();
  cfg.attnScale = numberField(c, "attnScale");
  cfg.attnSoftcap = numberField(c, "attnSoftcap");
  cfg.finalSoftcap = numberField(c, "finalSoftcap");
  cfg.embedScale = numberField(c, "embedScale");
  cfg.attentionBias = c.Get("attentionBias").ToBoolean();
  cfg.qkvBias = c.Get("qkvBias").ToBoolean();
  cfg.mlpBias = c.Get("mlpBias").ToBoolean();
  cfg.tiedEmbeddings = c.Get("tiedEmbeddings").ToBoolean();
  if (cfg.kvHeads() <= 0 || cfg.nHeads % cfg.kvHeads() != 0)
    throw InvalidArgument("the number of attention heads must be a multiple of the number of key/value heads");
  return cfg;
}

struct CheckpointFile {
  std::string path;
  uint64_t dataStart = 0;
  std::vector<SafetensorsEntry> entries;
  std::vector<std::string> canonicalNames;  // Hugging Face name each entry maps to
};

std::vector<CheckpointFile> filesFrom(const Napi::Array& files) {
  std::vector<CheckpointFile> out;
  for (uint32_t i = 0; i < files.Length(); ++i) {
    auto f = files.Get(i).As<Napi::Object>();
    CheckpointFile file;
    file.path = f.Get("path").As<Napi::String>();
    file.dataStart = static_cast<uint64_t>(f.Get("dataStart").As<Napi::Number>().Int64Value());
    auto entries = f.Get("entries").As<Napi::Array>();
    file.entries = safetensorsEntriesFrom(entries);
    for (uint32_t j = 0; j < entries.Length(); ++j)
      file.canonicalNames.push_back(entries.Get(j).As<Napi::Object>().Get("name").As<Napi::String>());
    out.push_back(std::move(file));
  }
  return out;
}

// Whether every element is finite, in slices of at most 4M elements so that the check's temporaries
// stay small next to a multi-gigabyte model: a float64 sum is finite exactly when every element is
// (no float32, float16 or bfloat16 magnitude can overflow it).
bool allFinite(const at::Tensor& t) {
  if (t.dim() == 0) return std::isfinite(t.item<double>());
  const int64_t rows = t.size(0), perRow = std::max<int64_t>(1, t.numel() / std::max<int64_t>(1, rows));
  const int64_t step = std::max<int64_t>(1, (int64_t{1} << 22) / perRow);
  for (int64_t r = 0; r < rows; r += step)
    if (!std::isfinite(t.narrow(0, r, std::min(step, rows - r)).sum(c10::kDouble).item<double>())) return false;
  return true;
}

// The checkpoint's tensors, read one at a time from their files when the weights ask for them.
class CheckpointSource : public TensorSource {
 public:
  CheckpointSource(const std::vector<CheckpointFile>& files, std::string name) : name_(std::move(name)) {
    for (const auto& f : files)
      for (size_t i = 0; i < f.entries.size(); ++i) where_[f.canonicalNames[i]] = {&f, i};
  }
  bool has(const std::string& key) const override { return where_.count(key) > 0; }
  at::Tensor read(const std::string& key) override {
    auto it = where_.find(key);
    if (it == where_.end()) throw FormatError(name_, "missing tensor '" + key + "'");
    const CheckpointFile& f = *it->second.first;
    const SafetensorsEntry& e = f.entries[it->second.second];
    at::Tensor t = loadSafetensors(f.path, f.dataStart, {e}).at(e.name);
    where_.erase(it);
    return t;
  }
  const std::string& name() const override { return name_; }

 private:
  std::map<std::string, std::pair<const CheckpointFile*, size_t>> where_;
  std::string name_;
};

// ---- MLP replacement by a JS callback ---------------------------------------------------------
// The forward runs on a worker; the callback runs on the JS thread while the worker waits.

std::function<at::Tensor(const at::Tensor&, const at::Tensor&)> callbackModule(JsCall js, int64_t layer) {
  return [js, layer](const at::Tensor& input, const at::Tensor& original) mutable {
    at::Tensor result;
    js.call(
        [&](Napi::Env env, Napi::Function fn) {
          return fn.Call({JsTensor::wrap(env, input), original.defined() ? Napi::Value(JsTensor::wrap(env, original)) : env.Null(),
                          Napi::Number::New(env, static_cast<double>(layer))});
        },
        [&](Napi::Value value) { result = JsTensor::tensorOf(value, "the value returned by an MLP replacement callback"); },
        "the MLP replacement callback of layer " + std::to_string(layer));
    return result;
  };
}

enum class LossKind { None, Mean, PerToken };

struct RunResult {
  ForwardResult forward;
  at::Tensor loss;
};

}  // namespace

Napi::Function JsModel::define(Napi::Env env) {
  Napi::Function cls = DefineClass(env, "NativeModel",
                                   {
                                       StaticMethod<&JsModel::load>("load"),
                                       InstanceMethod<&JsModel::run>("run"),
                                       InstanceMethod<&JsModel::hookNames>("hookNames"),
                                       InstanceMethod<&JsModel::weightNames>("weightNames"),
                                       InstanceMethod<&JsModel::weight>("weight"),
                                       InstanceMethod<&JsModel::dispose>("dispose"),
                                       InstanceMethod<&JsModel::train>("train"),
                                       InstanceMethod<&JsModel::huggingFaceWeights>("huggingFaceWeights"),
                                       InstanceMethod<&JsModel::nonFiniteWeights>("nonFiniteWeights"),
                                   });
  AddonState::of(env).modelClass = Napi::Persistent(cls);
  return cls;
}

JsModel::JsModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<JsModel>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw Napi::TypeError::New(info.Env(), "models are created by loadModel(dir)");
  model_ = *info[0].As<Napi::External<std::shared_ptr<const Transformer>>>().Data();
}

std::shared_ptr<const Transformer> JsModel::modelOf(const Napi::Value& value, const char* what) {
  if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(AddonState::of(value.Env()).modelClass.Value()))
    throw InvalidArgument(std::string(what) + " must be a Model");
  return JsModel::Unwrap(value.As<Napi::Object>())->live();
}

std::shared_ptr<const Transformer> JsModel::live() const {
  if (!model_) throw InvalidArgument("this model was disposed");
  return model_;
}

// load({ config, files, device, dtype, processing, source }) -> Promise<NativeModel>
Napi::Value JsModel::load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    auto spec = info[0].As<Napi::Object>();
    ModelConfig cfg = configFrom(spec.Get("config").As<Napi::Object>());
    std::vector<CheckpointFile> files = filesFrom(spec.Get("files").As<Napi::Array>());
    c10::Device device = deviceFromName(spec.Get("device").As<Napi::String>());
    c10::ScalarType dtype = dtypeFromName(spec.Get("dtype").As<Napi::String>());
    std::string processing = spec.Get("processing").As<Napi::String>();
    std::string source = spec.Get("source").As<Napi::String>();
    if (processing != "none" && processing != "transformerlens")
      throw InvalidArgument("unknown processing '" + processing + "' (expected 'none' or 'transformerlens')");

    using Handle = std::shared_ptr<const Transformer>;
    struct Loaded {
      Handle model;
      std::vector<std::string> nonFinite;  // weights holding a NaN or an infinity
    };
    return Task<Loaded>::start(
        env, "transcoders:loadModel",
        [=]() -> Loaded {
          at::NoGradGuard noGrad;
          // Each tensor goes from its file straight into the target device and dtype (processing
          // needs float32 first), so the peak is about the weights plus one tensor.
          CheckpointSource hf(files, source);
          const bool process = processing == "transformerlens";
          Weights w = weightsFromHuggingFace(cfg, hf, device, process ? c10::kFloat : dtype);
          if (process) {
            processLikeTransformerLens(cfg, w);
            castWeights(w, device, dtype);
          }
          Loaded out;
          for (const std::string& name : tc::weightNames(w))
            if (!allFinite(weightByName(w, name))) out.nonFinite.push_back(name);
          out.model = std::make_shared<const Transformer>(cfg, std::move(w));
#if defined(__GLIBC__)
          // The per-tensor reads leave freed blocks in malloc's arenas: hand them back to the system.
          malloc_trim(0);
#endif
          return out;
        },
        [](Napi::Env env, Loaded& loaded) -> Napi::Value {
          auto external = Napi::External<Handle>::New(env, new Handle(loaded.model), [](Napi::Env, Handle* h) { delete h; });
          Napi::Object obj = AddonState::of(env).modelClass.New({external});
          JsModel::Unwrap(obj)->nonFinite_ = std::move(loaded.nonFinite);
          return obj;
        });
  });
}

// run(tokens, { hooks?, mlp?: [{ layer, kind, value?, fn? }], grad?, logits?, loss? })
//   -> Promise<{ logits?, cache, loss? }>
Napi::Value JsModel::run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    std::shared_ptr<const Transformer> model = live();
    at::Tensor tokens = JsTensor::tensorOf(info[0], "tokens");
    Napi::Object opts = info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(env);

    ForwardOptions options;
    options.hooks = stringList(opts.Get("hooks"), "hooks");
    options.grad = opts.Get("grad").ToBoolean();
    options.logits = !opts.Has("logits") || opts.Get("logits").ToBoolean();
    LossKind loss = LossKind::None;
    if (opts.Get("loss").IsString()) {
      std::string kind = opts.Get("loss").As<Napi::String>();
      loss = kind == "per-token" ? LossKind::PerToken : LossKind::Mean;
    }
    if (loss != LossKind::None) options.logits = true;
    // Padded batches (lib/models/model.ts pads ragged rows): real tokens per row and the padding side.
    if (JsTensor::isTensor(opts.Get("lengths"))) options.lengths = JsTensor::tensorOf(opts.Get("lengths"), "lengths");
    if (opts.Get("padding").IsString()) {
      std::string side = opts.Get("padding").As<Napi::String>();
      if (side != "left" && side != "right") throw InvalidArgument("padding must be 'right' or 'left', got '" + side + "'");
      options.padLeft = side == "left";
    }
    // Validate hook names now, so a typo fails before any work is queued.
    HookCapture(model->config(), options.hooks);

    std::vector<JsCall> callbacks;
    // A live thread-safe function keeps the event loop (and so the process) alive: until the task
    // owns the callbacks, release them if anything below throws.
    struct PendingCallbacks {
      std::vector<JsCall>& fns;
      bool handedOver = false;
      ~PendingCallbacks() {
        if (!handedOver)
          for (auto& f : fns) f.release();
      }
    } pending{callbacks};
    if (opts.Get("mlp").IsArray()) {
      auto list = opts.Get("mlp").As<Napi::Array>();
      for (uint32_t i = 0; i < list.Length(); ++i) {
        auto spec = list.Get(i).As<Napi::Object>();
        int64_t layer = spec.Get("layer").As<Napi::Number>().Int64Value();
        std::string kind = spec.Get("kind").As<Napi::String>();
        MlpReplacement r;
        if (kind == "zero") {
          r.kind = MlpReplacement::Kind::Zero;
        } else if (kind == "mean") {
          r.kind = MlpReplacement::Kind::Mean;
          if (JsTensor::isTensor(spec.Get("value"))) r.value = JsTensor::tensorOf(spec.Get("value"), "mean value");
        } else if (kind == "value") {
          r.kind = MlpReplacement::Kind::Value;
          r.value = JsTensor::tensorOf(spec.Get("value"), "replacement value");
        } else if (kind == "callback") {
          r.kind = MlpReplacement::Kind::Module;
          if (!spec.Get("fn").IsFunction()) throw InvalidArgument("an MLP replacement callback must be a function");
          callbacks.emplace_back(env, spec.Get("fn").As<Napi::Function>(), "transcoders:mlp-callback");
          r.module = callbackModule(callbacks.back(), layer);
        } else if (kind == "transcoder") {
          std::shared_ptr<Transcoder> tc = JsTranscoder::transcoderOf(spec.Get("transcoder"), "replacement transcoder");
          // It reads what its hookIn names (the MLP input, or the residual before the MLP's LayerNorm).
          at::Tensor keep = JsTensor::isTensor(spec.Get("keep")) ? JsTensor::tensorOf(spec.Get("keep"), "feature mask") : at::Tensor();
          r = transcoderReplacement(tc, inputOfHook(tc->spec().hookIn), keep);
        } else if (kind == "crossLayer") {
          // One entry replaces every layer: the CLT's layers share what earlier layers wrote.
          std::shared_ptr<CrossLayerTranscoder> clt = JsCrossLayerTranscoder::transcoderOf(spec.Get("transcoder"), "replacement cross-layer transcoder");
          std::vector<Placement> placements = resolveCrossLayerPlacements(*model, clt->spec());
          at::Tensor keep = JsTensor::isTensor(spec.Get("keep")) ? JsTensor::tensorOf(spec.Get("keep"), "feature mask") : at::Tensor();
          for (auto& [l, replacement] : crossLayerReplacements(clt, placements.front().input, keep)) {
            if (options.mlpReplacements.count(l)) throw InvalidArgument("layer " + std::to_string(l) + "'s MLP is replaced twice");
            options.mlpReplacements[l] = std::move(replacement);
          }
          continue;
        } else {
          throw InvalidArgument("unknown MLP replacement kind '" + kind + "' (expected zero, mean, value, callback, transcoder or crossLayer)");
        }
        if (options.mlpReplacements.count(layer)) throw InvalidArgument("layer " + std::to_string(layer) + "'s MLP is replaced twice");
        options.mlpReplacements[layer] = std::move(r);
      }
    }

    Napi::Promise promise = Task<RunResult>::start(
        env, "transcoders:run",
        [model, tokens, options, loss, callbacks]() mutable -> RunResult {
          struct ReleaseCallbacks {
            std::vector<JsCall>& fns;
            ~ReleaseCallbacks() {
              for (auto& f : fns) f.release();
            }
          } release{callbacks};
          RunResult out;
          out.forward = model->forward(tokens, options);
          if (loss != LossKind::None) {
            at::Tensor ids = model->prepareTokens(tokens);
            out.loss = Transformer::nextTokenLoss(out.forward.logits, ids, loss == LossKind::PerToken,
                                                  Transformer::realPositions(options, ids.size(0), ids.size(1), ids.device()));
          }
          return out;
        },
        [](Napi::Env env, RunResult& r) -> Napi::Value {
          Napi::Object result = Napi::Object::New(env);
          if (r.forward.logits.defined()) result.Set("logits", JsTensor::wrap(env, r.forward.logits));
          if (r.loss.defined()) result.Set("loss", JsTensor::wrap(env, r.loss));
          Napi::Object cache = Napi::Object::New(env);
          for (auto& [name, t] : r.forward.cache) cache.Set(name, JsTensor::wrap(env, t));
          result.Set("cache", cache);
          return result;
        });
    pending.handedOver = true;
    return promise;
  });
}

Napi::Value JsModel::hookNames(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value { return toJsStrings(info.Env(), tc::hookNames(live()->config())); });
}

Napi::Value JsModel::weightNames(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value { return toJsStrings(info.Env(), tc::weightNames(live()->weights())); });
}

// nonFiniteWeights() -> names of the weights holding a NaN or an infinity (checked in the load task).
Napi::Value JsModel::nonFiniteWeights(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value { return toJsStrings(info.Env(), nonFinite_); });
}

Napi::Value JsModel::weight(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    if (!info[0].IsString()) throw InvalidArgument("weight(name): name must be a string");
    return JsTensor::wrap(info.Env(), weightByName(live()->weights(), info[0].As<Napi::String>()));
  });
}

// train(tokens [S, B, T], { lr, beta1, beta2, eps, maxGradNorm }) -> Promise<number[]> (loss per step).
// The first call sets up Adam (its betas and eps); later calls continue with the same state.
Napi::Value JsModel::train(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    std::shared_ptr<Transformer> model = std::const_pointer_cast<Transformer>(live());
    at::Tensor tokens = JsTensor::tensorOf(info[0], "tokens");
    Napi::Object o = objectOr(info[1]);
    double lr = numberOr(o, "lr", 1e-3), maxGradNorm = numberOr(o, "maxGradNorm", 0);
    if (!trainer_) {
      AdamOptions adam;
      adam.beta1 = numberOr(o, "beta1", adam.beta1);
      adam.beta2 = numberOr(o, "beta2", adam.beta2);
      adam.eps = numberOr(o, "eps", adam.eps);
      trainer_ = std::make_shared<LanguageModelTrainer>(model, adam);
    }
    std::shared_ptr<LanguageModelTrainer> trainer = trainer_;
    using Losses = std::vector<double>;
    return Task<Losses>::start(
        env, "transcoders:trainModel", [trainer, tokens, lr, maxGradNorm]() { return trainer->run(tokens, lr, maxGradNorm); },
        [](Napi::Env env, Losses& losses) -> Napi::Value {
          Napi::Array out = Napi::Array::New(env, losses.size());
          for (size_t i = 0; i < losses.size(); ++i) out[i] = Napi::Number::New(env, losses[i]);
          return out;
        });
  });
}

Napi::Value JsModel::huggingFaceWeights(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    auto model = live();
    Napi::Object out = Napi::Object::New(info.Env());
    for (auto& [name, t] : weightsToHuggingFace(model->config(), model->weights())) out.Set(name, JsTensor::wrap(info.Env(), t));
    return out;
  });
}

Napi::Value JsModel::dispose(const Napi::CallbackInfo& info) {
  model_.reset();
  return info.Env().Undefined();
}

}  // namespace tc
