// Names of the tensor element types shared with TypeScript (lib/tensor.ts) and safetensors.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>

namespace tc {

// "float32" | "float16" | "bfloat16" | "float64" | "int64" | "int32" | "int16" | "int8" | "uint8" | "bool"
c10::ScalarType dtypeFromName(const std::string& name);
std::string dtypeName(c10::ScalarType type);
// Safetensors codes: "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL".
c10::ScalarType dtypeFromSafetensors(const std::string& code);
// Parses "cpu", "cuda", "cuda:1"; rejects CUDA devices this libtorch cannot reach.
c10::Device deviceFromName(const std::string& name);

}  // namespace tc
