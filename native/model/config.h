// Architecture of a loaded language model, normalised from a Hugging Face config.json by
// lib/models/config.ts (which validates it and names the offending field on error).
#pragma once
#include <cstdint>
#include <string>

namespace tc {

enum class Arch { GPT2, NeoX };
enum class Activation { GeluTanh, GeluExact, Relu };

struct ModelConfig {
  Arch arch = Arch::GPT2;
  int64_t nLayers = 0, dModel = 0, nHeads = 0, dHead = 0, dMlp = 0, nCtx = 0, vocabSize = 0;
  double lnEps = 1e-5;
  Activation act = Activation::GeluTanh;
  bool parallelResidual = false;         // GPT-NeoX use_parallel_residual: attn and MLP both read resid_pre
  int64_t rotaryDim = 0;                 // 0: learned absolute positions (GPT-2)
  double rotaryBase = 10000.0;
  bool scaleAttnByInverseLayerIdx = false;  // GPT-2 option: scores also divided by (layer + 1)
};

}  // namespace tc
