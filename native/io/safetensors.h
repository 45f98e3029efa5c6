// Reads the tensors of a safetensors file whose header was already parsed and validated in
// TypeScript (lib/io/safetensors.ts). The file is memory-mapped and each tensor copied into
// memory libtorch owns, so nothing keeps the file mapped after loading (a file replaced on
// disk later can never fault a live tensor).
#pragma once
#include <ATen/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace tc {

struct SafetensorsEntry {
  std::string name;             // key in the file
  std::string dtype;            // safetensors code: F32, BF16, ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range relative to the data section
};

// Loads `entries` from `path`, whose data section starts at byte `dataStart`.
// Re-checks every range against the real file size and throws FormatError naming the file.
std::map<std::string, at::Tensor> loadSafetensors(const std::string& path, uint64_t dataStart,
                                                  const std::vector<SafetensorsEntry>& entries);

}  // namespace tc
