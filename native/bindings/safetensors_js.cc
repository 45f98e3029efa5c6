#include "bindings/safetensors_js.h"

#include "bindings/js_errors.h"
#include "bindings/task.h"
#include "io/safetensors.h"
#include "bindings/tensor_wrap.h"

namespace tc {

std::vector<SafetensorsEntry> safetensorsEntriesFrom(const Napi::Array& entries) {
  std::vector<SafetensorsEntry> out;
  for (uint32_t j = 0; j < entries.Length(); ++j) {
    auto e = entries.Get(j).As<Napi::Object>();
    SafetensorsEntry entry;
    entry.name = e.Get("key").As<Napi::String>();
    entry.dtype = e.Get("dtype").As<Napi::String>();
    auto shape = e.Get("shape").As<Napi::Array>();
    for (uint32_t k = 0; k < shape.Length(); ++k) entry.shape.push_back(shape.Get(k).As<Napi::Number>().Int64Value());
    entry.begin = static_cast<uint64_t>(e.Get("begin").As<Napi::Number>().Int64Value());
    entry.end = static_cast<uint64_t>(e.Get("end").As<Napi::Number>().Int64Value());
    out.push_back(std::move(entry));
  }
  return out;
}

Napi::Value loadSafetensorsJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&]() -> Napi::Value {
    if (!info[0].IsString() || !info[1].IsNumber() || !info[2].IsArray())
      throw InvalidArgument("loadSafetensors(path, dataStart, entries): bad arguments");
    std::string path = info[0].As<Napi::String>();
    auto dataStart = static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value());
    std::vector<SafetensorsEntry> entries = safetensorsEntriesFrom(info[2].As<Napi::Array>());
    using Loaded = std::map<std::string, at::Tensor>;
    return Task<Loaded>::start(
        env, "transcoders:loadSafetensors", [=]() { return loadSafetensors(path, dataStart, entries); },
        [](Napi::Env env, Loaded& tensors) -> Napi::Value {
          Napi::Object out = Napi::Object::New(env);
          for (auto& [name, t] : tensors) out.Set(name, JsTensor::wrap(env, t));
          return out;
        });
  });
}

}  // namespace tc
