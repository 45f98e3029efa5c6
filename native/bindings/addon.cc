// Entry point of the native addon: registers the classes and functions lib/native.ts loads.
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <napi.h>
#include <torch/version.h>

#include "bindings/attribution_wrap.h"
#include "bindings/graph_wrap.h"
#include "bindings/connections_wrap.h"
#include "bindings/js_errors.h"
#include "bindings/state.h"
#include "bindings/task.h"
#include "core/threads.h"
#include "bindings/safetensors_js.h"
#include "bindings/cross_layer_wrap.h"
#include "bindings/distributed_wrap.h"
#include "bindings/features_wrap.h"
#include "bindings/model_wrap.h"
#include "bindings/tensor_wrap.h"
#include "bindings/replacement_model_wrap.h"
#include "bindings/run_wrap.h"
#include "bindings/transcoder_wrap.h"

namespace tc {
namespace {

Napi::Value setNumThreadsJs(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    if (!info[0].IsNumber()) throw InvalidArgument("setNumThreads(n): n must be a positive integer");
    int n = info[0].As<Napi::Number>().Int32Value();
    if (n < 1) throw InvalidArgument("setNumThreads(n): n must be a positive integer, got " + std::to_string(n));
    setNumThreads(n);
    return info.Env().Undefined();
  });
}

Napi::Value getNumThreadsJs(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), numThreads()); }

// The intra-op thread count libtorch reports on a worker thread, where the library's work runs.
Napi::Value workerNumThreads(const Napi::CallbackInfo& info) {
  return Task<int>::start(
      info.Env(), "transcoders:workerNumThreads", []() { return at::get_num_threads(); },
      [](Napi::Env env, int& n) -> Napi::Value { return Napi::Number::New(env, n); });
}

Napi::Value torchInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("version", TORCH_VERSION);
  out.Set("cudaAvailable", at::hasCUDA());
  out.Set("cudaDeviceCount", at::hasCUDA() ? static_cast<int>(torch::cuda::device_count()) : 0);
  out.Set("cxx11Abi", static_cast<bool>(_GLIBCXX_USE_CXX11_ABI));
  out.Set("parallelInfo", at::get_parallel_info());
  return out;
}

// { executing, maxExecuting }: native Tasks executing work now / at most at once since the last
// resetWorkCounts() (see core/threads.h).
Napi::Value workCounts(const Napi::CallbackInfo& info) {
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("executing", workExecuting());
  out.Set("maxExecuting", workMaxExecuting());
  return out;
}

Napi::Value resetWorkCounts(const Napi::CallbackInfo& info) {
  resetMaxExecuting();
  return info.Env().Undefined();
}

Napi::Value registerErrors(const Napi::CallbackInfo& info) {
  registerErrorClasses(info);
  return info.Env().Undefined();
}

Napi::Object init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonState());
  exports.Set("Tensor", JsTensor::define(env));
  exports.Set("Model", JsModel::define(env));
  exports.Set("Transcoder", JsTranscoder::define(env));
  exports.Set("StepTrainer", JsTrainer::define(env));
  exports.Set("CrossLayerTranscoder", JsCrossLayerTranscoder::define(env));
  exports.Set("CrossLayerTrainer", JsCrossLayerTrainer::define(env));
  exports.Set("stackLayers", Napi::Function::New(env, stackLayersJs));
  exports.Set("TrainingRun", JsTrainingRun::define(env));
  exports.Set("ReplacementModel", JsReplacementModel::define(env));
  exports.Set("Attribution", JsAttribution::define(env));
  exports.Set("AttributionGraph", JsAttributionGraph::define(env));
  exports.Set("Connections", connectionsExports(env));
  exports.Set("Features", featuresExports(env));
  exports.Set("Distributed", distributedExports(env));
  exports.Set("shuffleBatches", Napi::Function::New(env, shuffleBatchesJs));
  exports.Set("geometricMedian", Napi::Function::New(env, geometricMedianJs));
  exports.Set("klDivergence", Napi::Function::New(env, klDivergenceJs));
  exports.Set("setNumThreads", Napi::Function::New(env, setNumThreadsJs));
  exports.Set("getNumThreads", Napi::Function::New(env, getNumThreadsJs));
  exports.Set("workerNumThreads", Napi::Function::New(env, workerNumThreads));
  exports.Set("loadSafetensors", Napi::Function::New(env, loadSafetensorsJs));
  exports.Set("torchInfo", Napi::Function::New(env, torchInfo));
  exports.Set("workCounts", Napi::Function::New(env, workCounts));
  exports.Set("resetWorkCounts", Napi::Function::New(env, resetWorkCounts));
  exports.Set("registerErrorClasses", Napi::Function::New(env, registerErrors));
  return exports;
}

}  // namespace
}  // namespace tc

static Napi::Object InitTranscoders(Napi::Env env, Napi::Object exports) { return tc::init(env, exports); }

NODE_API_MODULE(transcoders, InitTranscoders)
