#include "tensor/dtype.h"

#include <ATen/Context.h>
#include <torch/cuda.h>

#include <utility>
#include <vector>

#include "core/errors.h"

namespace tc {

namespace {

struct DtypeRow {
  const char* name;
  const char* safetensors;
  c10::ScalarType type;
};

const std::vector<DtypeRow>& table() {
  static const std::vector<DtypeRow> rows = {
      {"float32", "F32", c10::kFloat}, {"float16", "F16", c10::kHalf}, {"bfloat16", "BF16", c10::kBFloat16},
      {"float64", "F64", c10::kDouble}, {"int64", "I64", c10::kLong},  {"int32", "I32", c10::kInt},
      {"int16", "I16", c10::kShort},    {"int8", "I8", c10::kChar},    {"uint8", "U8", c10::kByte},
      {"bool", "BOOL", c10::kBool},
  };
  return rows;
}

}  // namespace

c10::ScalarType dtypeFromName(const std::string& name) {
  for (const auto& row : table())
    if (name == row.name) return row.type;
  throw InvalidArgument("unknown dtype '" + name +
                        "' (expected float32, float16, bfloat16, float64, int64, int32, int16, int8, uint8 or bool)");
}

std::string dtypeName(c10::ScalarType type) {
  for (const auto& row : table())
    if (type == row.type) return row.name;
  return c10::toString(type);
}

c10::ScalarType dtypeFromSafetensors(const std::string& code) {
  for (const auto& row : table())
    if (code == row.safetensors) return row.type;
  throw InvalidArgument("unsupported safetensors dtype '" + code + "'");
}

c10::Device deviceFromName(const std::string& name) {
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(name);
  } catch (const c10::Error&) {
    throw InvalidArgument("unknown device '" + name + "' (expected 'cpu', 'cuda' or 'cuda:N')");
  }
  if (device.is_cuda()) {
    if (!at::hasCUDA())
      throw InvalidArgument("device '" + name + "' requested but CUDA is not available: this libtorch has no CUDA "
                            "support or sees no GPU (for CUDA, build against a CUDA libtorch: set LIBTORCH and run "
                            "`npm rebuild transcoders`)");
    int count = static_cast<int>(torch::cuda::device_count());
    if (device.has_index() && device.index() >= count)
      throw InvalidArgument("device '" + name + "' requested but only " + std::to_string(count) + " CUDA device(s) exist");
  } else if (!device.is_cpu() || (device.has_index() && device.index() != 0)) {
    throw InvalidArgument("unsupported device '" + name + "' (expected 'cpu' or 'cuda[:N]')");
  }
  return device;
}

}  // namespace tc
