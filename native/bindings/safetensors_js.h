// JS binding of the safetensors tensor loader.
#pragma once
#include <napi.h>

#include <vector>

#include "io/safetensors.h"

namespace tc {

// Reads [{ key, dtype, shape, begin, end }] as passed from lib/io/safetensors.ts.
std::vector<SafetensorsEntry> safetensorsEntriesFrom(const Napi::Array& entries);

// loadSafetensors(path, dataStart, entries: [{ key, dtype, shape, begin, end }]) -> Promise<{ [key]: NativeTensor }>
Napi::Value loadSafetensorsJs(const Napi::CallbackInfo& info);

}  // namespace tc
