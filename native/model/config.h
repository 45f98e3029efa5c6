// Architecture of a loaded language model, normalised from a Hugging Face config.json by
// lib/models/config.ts (which validates it and names the offending field on error).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tc {

// Weight layouts: GPT-2, GPT-NeoX/Pythia, the Llama family (llama, mistral, qwen2, qwen3: RMSNorm,
// GQA, SwiGLU) and the Gemma family (gemma2, gemma3: Llama plus sandwich norms, (1 + w) norms).
enum class Arch { GPT2, NeoX, Llama, Gemma };
enum class Activation { GeluTanh, GeluExact, Relu, Silu };
enum class Norm { LayerNorm, RMSNorm };

// One rotary embedding (Hugging Face rope_type default / linear / llama3).
struct Rope {
  enum class Type { Default, Linear, Llama3 };
  Type type = Type::Default;
  double base = 10000.0;
  double factor = 1.0;                   // linear, llama3
  double lowFreqFactor = 1.0, highFreqFactor = 4.0;  // llama3
  double originalMaxPositions = 8192.0;  // llama3
};

struct ModelConfig {
  Arch arch = Arch::GPT2;
  int64_t nLayers = 0, dModel = 0, nHeads = 0, dHead = 0, dMlp = 0, nCtx = 0, vocabSize = 0;
  int64_t nKvHeads = 0;                  // grouped-query attention: k/v heads (== nHeads without GQA)
  double lnEps = 1e-5;
  Norm norm = Norm::LayerNorm;
  bool normPlusOne = false;              // Gemma: RMSNorm scales by (1 + weight)
  Activation act = Activation::GeluTanh;
  bool gatedMlp = false;                 // down(act(gate x) * up x)
  bool sandwichNorms = false;            // Gemma: norms after attention and after the MLP too
  bool qkNorm = false;                   // Qwen3, Gemma-3: RMSNorm of each q/k head before RoPE
  bool parallelResidual = false;         // GPT-NeoX use_parallel_residual: attn and MLP both read resid_pre
  int64_t rotaryDim = 0;                 // 0: learned absolute positions (GPT-2)
  std::vector<Rope> ropes;               // rotary models: the distinct rotary embeddings
  std::vector<int64_t> layerRope;        // rotary models: index into ropes, per layer
  std::vector<int64_t> slidingWindow;    // per layer: keys within this many positions (0: all earlier keys)
  bool scaleAttnByInverseLayerIdx = false;  // GPT-2 option: scores also divided by (layer + 1)
  double attnScale = 0.0;                // multiplies q.k (0: 1 / sqrt(dHead))
  double attnSoftcap = 0.0;              // Gemma-2: scores -> cap * tanh(scores / cap) (0: none)
  double finalSoftcap = 0.0;             // Gemma-2/3: the same on the logits
  double embedScale = 1.0;               // Gemma: embeddings times sqrt(dModel), in the model dtype
  bool attentionBias = true;             // q/k/v/o biases in the checkpoint (GPT-2 and NeoX: always kept)
  bool qkvBias = true;                   // Qwen2: q/k/v biases without an o bias
  bool mlpBias = true;
  bool tiedEmbeddings = true;

  int64_t kvHeads() const { return nKvHeads > 0 ? nKvHeads : nHeads; }
  // Columns of the fused Q/K/V projection: H query heads then K key and K value heads.
  int64_t qkvWidth() const { return (nHeads + 2 * kvHeads()) * dHead; }
  int64_t window(int64_t layer) const { return slidingWindow.empty() ? 0 : slidingWindow[layer]; }
};

}  // namespace tc
