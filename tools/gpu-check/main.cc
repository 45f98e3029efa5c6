// gpu-check: a C++ driver of the native core (no Node) for a machine with a GPU.
//
//   gpu-check check  [--device cuda]         numeric checks: the computation on --device against
//                                            the same one on the CPU (float32)
//   gpu-check bench  [--device cuda] [...]   StepTrainer steps (relu, topk + AuxK) on random cached
//                                            activations, and the model forward at GPT-2-small shape
//   gpu-check hf-forward --model DIR --tokens IN.safetensors --out OUT.safetensors [--device cuda]
//                                            logits of a GPT-2 checkpoint in Hugging Face layout
//                                            (compared with transformers by tools/gpu-check/hf_compare.py)
//
// Lines starting with PASS / FAIL / RESULT / SKIP are read by scripts/gpu-check.sh.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#ifndef TORCH_VERSION
#define TORCH_VERSION "(unknown version)"
#endif

#include "features/feature_stats.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "train/cross_layer_trainer.h"
#include "train/step_trainer.h"
#include "transcoder/cross_layer_losses.h"
#include "transcoder/losses.h"
#include "transcoder/transcoder.h"

namespace {

using tc::Transcoder;
using tc::TranscoderArch;
using tc::TranscoderSpec;
using tc::CrossLayerLossOptions;
using tc::CrossLayerLossTerms;
using tc::CrossLayerParams;
using tc::CrossLayerSparsity;
using tc::CrossLayerSpec;
using tc::CrossLayerTrainer;
using tc::CrossLayerTrainOptions;
using tc::CrossLayerTranscoder;

// ---- command line -----------------------------------------------------------------------------

struct Args {
  std::string command;
  std::map<std::string, std::string> opts;

  bool has(const std::string& k) const { return opts.count(k) > 0; }
  std::string str(const std::string& k, const std::string& def) const { return has(k) ? opts.at(k) : def; }
  int64_t num(const std::string& k, int64_t def) const { return has(k) ? std::stoll(opts.at(k)) : def; }
};

Args parseArgs(int argc, char** argv) {
  Args a;
  if (argc < 2) throw std::invalid_argument("missing command (check | bench | hf-forward); see --help");
  a.command = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string s = argv[i];
    if (s.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument '" + s + "'");
    std::string key = s.substr(2), value = "1";
    if (auto eq = key.find('='); eq != std::string::npos) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
    } else if (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) {
      value = argv[++i];
    }
    a.opts[key] = value;
  }
  return a;
}

const char* kUsage = R"(usage: gpu-check COMMAND [options]

commands:
  check        numeric checks, --device against the CPU (float32); exit 1 on any FAIL
  bench        training-step and model-forward benchmarks on --device
  hf-forward   --model DIR --tokens IN.safetensors --out OUT.safetensors: logits of a GPT-2
               checkpoint in Hugging Face layout (config.json + model.safetensors)

options:
  --device cpu|cuda   (default cuda when available, else cpu)
  --threads N         CPU intra-op threads (default: all cores)
check options:
  --reference cpu|cpu64   the reference: the CPU in float32 (default) or in float64
bench options (defaults: the paper's GPT-2-small shapes):
  --d-in 768 --d-sae 24576 --batch 4096 --k 32 --k-aux 384 --steps 20 --warmup 3
  --only relu|topk|model      one benchmark only
  --variants fp32,tf32,bf16   compute variants of the training benchmark (bf16: the dense
                              GEMMs in bfloat16, TrainOptions::fast.computeDtype)
  --model-layers 12 --model-d 768 --model-heads 12 --model-vocab 50257 --model-ctx 1024
  --model-batch 8 --model-iters 5
)";

// ---- helpers ----------------------------------------------------------------------------------

c10::Device gDevice = c10::kCPU;
// The reference side of the numeric checks: the CPU in float32 (or float64 with --reference cpu64,
// which gives the checks' tolerances something to measure on a machine without a GPU).
c10::ScalarType gRefDtype = c10::kFloat;

void sync() {
  if (gDevice.is_cuda()) torch::cuda::synchronize();
}

double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

at::TensorOptions f32(c10::Device d) { return at::TensorOptions().dtype(c10::kFloat).device(d); }

// Random tensors are drawn on the CPU from a seeded generator, then moved: the same inputs on every device.
at::Tensor randnCpu(at::IntArrayRef shape, uint64_t seed, double std = 1.0) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::normal(0.0, std, shape, gen, f32(c10::kCPU));
}

// ---- numeric checks ---------------------------------------------------------------------------

// TF32 tensor cores for float32 matmuls (torch.backends.cuda.matmul.allow_tf32); off by default.
void setTf32(bool on) { at::globalContext().setAllowTF32CuBLAS(on); }

int gFailures = 0, gPasses = 0;

// Relative error in the Frobenius norm: ||a - b|| / max(||b||, tiny).
double relError(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.detach().to(c10::kCPU, c10::kDouble), y = b.detach().to(c10::kCPU, c10::kDouble);
  if (x.sizes() != y.sizes()) return INFINITY;
  double den = std::max(y.norm().item<double>(), 1e-30);
  return (x - y).norm().item<double>() / den;
}

void expectClose(const std::string& what, const at::Tensor& got, const at::Tensor& want, double tol) {
  double err = relError(got, want);
  bool ok = std::isfinite(err) && err <= tol;
  std::printf("%s %-58s rel.err %.2e (tol %.0e)\n", ok ? "PASS" : "FAIL", what.c_str(), err, tol);
  std::fflush(stdout);
  (ok ? gPasses : gFailures)++;
}

// TopK picks its features by rank: a row whose k-th and (k+1)-th pre-activations lie within float32
// rounding of each other may select differently on the two devices, a legitimate difference that
// the tolerances would flag. Such rows (a gap under kTieGap of the batch's largest pre-activation,
// at rank k, and for AuxK at rank k_aux among the dead features) are left out of the topk checks'
// batches, judged on the reference side.
constexpr double kTieGap = 1e-4;
int64_t gTieRows = 0, gTopkRows = 0;

at::Tensor gapAt(const at::Tensor& p, int64_t k) {
  at::Tensor top = std::get<0>(at::topk(p, k + 1, -1));
  return top.select(1, k - 1) - top.select(1, k);
}

// Indices (CPU int64) of the rows of `pre` whose selections are unambiguous.
at::Tensor unambiguousRows(const at::Tensor& pre, int64_t k, const at::Tensor& dead = {}, int64_t kAux = 0) {
  at::Tensor p = pre.detach().to(c10::kCPU, c10::kDouble);
  double limit = kTieGap * p.abs().max().item<double>();
  at::Tensor keep = gapAt(p, k) >= limit;
  if (dead.defined() && kAux > 0) {
    at::Tensor d = dead.to(c10::kCPU);
    int64_t nDead = d.sum().item<int64_t>();
    if (nDead > kAux) {
      at::Tensor masked = p.masked_fill(d.logical_not(), -std::numeric_limits<double>::infinity());
      keep = keep.logical_and(gapAt(masked, kAux) >= limit);
    }
  }
  at::Tensor rows = keep.nonzero().squeeze(1);
  gTopkRows += p.size(0);
  gTieRows += p.size(0) - rows.size(0);
  return rows;
}

constexpr double kTolForward = 1e-4;  // forward values and loss gradients, float32
constexpr double kTolTrain = 1e-3;    // parameters after several Adam steps (Adam divides by sqrt(v))

// One transcoder with identical parameters on the CPU and on the device.
struct TranscoderPair {
  std::shared_ptr<Transcoder> cpu, dev;
};

TranscoderPair makePair(const TranscoderSpec& spec, uint64_t seed) {
  tc::TranscoderParams p = Transcoder::initialParams(spec, seed, f32(c10::kCPU));
  {
    // Non-zero biases so that every parameter takes part in the comparison.
    at::NoGradGuard noGrad;
    p.b_enc = randnCpu({spec.dSae}, seed + 1, 0.05);
    p.b_dec = randnCpu({spec.dIn}, seed + 2, 0.05);
    p.b_dec_out = randnCpu({spec.dOut}, seed + 3, 0.05);
  }
  // An independent copy on the device (cloned first: on a CPU run the two must not share storage).
  tc::TranscoderParams q = p;
  for (auto& [name, t] : q.named()) *t = t->clone().to(gDevice);
  for (auto& [name, t] : p.named()) *t = t->to(gRefDtype);
  return {std::make_shared<Transcoder>(spec, std::move(p)), std::make_shared<Transcoder>(spec, std::move(q))};
}

TranscoderSpec smallSpec(TranscoderArch arch) {
  TranscoderSpec s;
  s.arch = arch;
  s.dIn = 96;
  s.dOut = 96;
  s.dSae = 768;
  s.k = arch == TranscoderArch::TopK ? 16 : 0;
  return s;
}

const char* archName(TranscoderArch a) { return a == TranscoderArch::TopK ? "topk" : a == TranscoderArch::ReLU ? "relu" : "jumprelu"; }

void checkTranscoderForward(TranscoderArch arch) {
  TranscoderPair tp = makePair(smallSpec(arch), 11);
  at::Tensor x = randnCpu({512, 96}, 21);
  at::NoGradGuard noGrad;
  std::string n = std::string("transcoder ") + archName(arch);
  if (arch == TranscoderArch::TopK) x = x.index_select(0, unambiguousRows(tp.cpu->preActivations(x.to(gRefDtype)), tp.cpu->spec().k));
  at::Tensor xr = x.to(gRefDtype);
  expectClose(n + " forward y", tp.dev->forward(x.to(gDevice)), tp.cpu->forward(xr), kTolForward);
  expectClose(n + " encode f", tp.dev->encode(x.to(gDevice)), tp.cpu->encode(xr), kTolForward);
}

tc::LossOptions lossOptions(TranscoderArch arch, int64_t dSae, c10::Device device) {
  tc::LossOptions o;
  if (arch == TranscoderArch::ReLU) {
    o.l1Coefficient = 1.4e-4;
  } else {
    o.reconstruction = tc::Reconstruction::Fvu;
    o.auxkAlpha = 1.0 / 32;
    o.kAux = 48;
    o.dead = at::zeros({dSae}, at::TensorOptions().dtype(c10::kBool).device(device));
    o.dead.narrow(0, 0, dSae / 4).fill_(true);  // a quarter counted dead: AuxK takes part
  }
  return o;
}

void checkLossAndGradients(TranscoderArch arch) {
  TranscoderSpec spec = smallSpec(arch);
  TranscoderPair tp = makePair(spec, 31);
  at::Tensor x = randnCpu({512, 96}, 41), y = randnCpu({512, 96}, 42);
  if (arch == TranscoderArch::TopK) {
    at::NoGradGuard noGrad;
    tc::LossOptions o = lossOptions(arch, spec.dSae, c10::kCPU);
    at::Tensor rows = unambiguousRows(tp.cpu->preActivations(x.to(gRefDtype)), spec.k, o.dead, o.kAux);
    x = x.index_select(0, rows);
    y = y.index_select(0, rows);
  }
  std::map<std::string, at::Tensor> grads[2];
  at::Tensor totals[2], recs[2], sparsities[2];
  for (int side = 0; side < 2; ++side) {
    Transcoder& t = side == 0 ? *tp.cpu : *tp.dev;
    c10::Device d = side == 0 ? c10::Device(c10::kCPU) : gDevice;
    for (auto& [name, p] : t.params().named()) p->requires_grad_(true);
    at::AutoGradMode grad(true);
    c10::ScalarType dt = side == 0 ? gRefDtype : c10::kFloat;
    tc::LossTerms terms = tc::transcoderLoss(t, x.to(d, dt), y.to(d, dt), lossOptions(arch, spec.dSae, d));
    terms.total.backward();
    totals[side] = terms.total.detach();
    recs[side] = terms.reconstruction.detach();
    sparsities[side] = terms.sparsity.detach();
    for (auto& [name, p] : t.params().named()) grads[side][name] = p->grad();
  }
  std::string n = std::string("loss ") + archName(arch);
  expectClose(n + " total", totals[1], totals[0], kTolForward);
  expectClose(n + " reconstruction", recs[1], recs[0], kTolForward);
  expectClose(n + (arch == TranscoderArch::TopK ? " AuxK term" : " L1 term"), sparsities[1], sparsities[0], kTolForward);
  for (auto& [name, g] : grads[0]) {
    if (!g.defined()) continue;
    expectClose(n + " grad " + name, grads[1][name], g, kTolForward);
  }
}

void checkStepTrainer(TranscoderArch arch) {
  TranscoderSpec spec = smallSpec(arch);
  TranscoderPair tp = makePair(spec, 51);
  tc::TrainOptions o;
  o.lr = 1e-3;
  o.loss = lossOptions(arch, spec.dSae, c10::kCPU);
  o.loss.dead = at::Tensor();  // the trainer fills it in
  o.deadFeatureWindow = 2;     // features unfired for 2 steps count dead: AuxK takes part from step 3
  o.maxGradNorm = 1.0;
  const int64_t S = 6;
  at::Tensor xs = randnCpu({S, 256, 96}, 61), ys = randnCpu({S, 256, 96}, 62);
  tc::StepTrainer cpu(tp.cpu, o), dev(tp.dev, o);
  std::vector<tc::StepMetrics> mc, md;
  for (int64_t s = 0; s < S; ++s) {
    at::Tensor x = xs[s], y = ys[s];
    if (arch == TranscoderArch::TopK) {
      // The dead features this step's AuxK will use, and the reference's current encoder.
      at::NoGradGuard noGrad;
      at::Tensor dead = cpu.stepsSinceFired() > o.deadFeatureWindow;
      at::Tensor rows = unambiguousRows(tp.cpu->preActivations(x.to(gRefDtype)), spec.k, dead, o.loss.kAux);
      x = x.index_select(0, rows);
      y = y.index_select(0, rows);
    }
    mc.push_back(cpu.step(x, y));
    md.push_back(dev.step(x.to(gDevice), y.to(gDevice)));
  }
  std::string n = std::string("trainer ") + archName(arch) + " " + std::to_string(S) + " steps";
  std::vector<double> lc, ld;
  for (int64_t s = 0; s < S; ++s) {
    lc.push_back(mc[s].total);
    ld.push_back(md[s].total);
  }
  expectClose(n + " losses", at::tensor(ld, at::kDouble), at::tensor(lc, at::kDouble), kTolTrain);
  for (auto& [name, p] : tp.cpu->params().named()) {
    for (auto& [name2, q] : tp.dev->params().named())
      if (name2 == name) expectClose(n + " " + name, *q, *p, kTolTrain);
  }
  expectClose(n + " Adam exp_avg_sq W_enc", dev.optimizer().state()[0].expAvgSq, cpu.optimizer().state()[0].expAvgSq, kTolTrain);
}

// A random GPT-2 checkpoint in Hugging Face names (without the "transformer." prefix).
std::map<std::string, at::Tensor> randomGpt2(const tc::ModelConfig& c, uint64_t seed, c10::Device device, double std = 0.2) {
  std::map<std::string, at::Tensor> m;
  auto opts = f32(device);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto rnd = [&](std::vector<int64_t> shape, double s) {
    return device.is_cpu() ? at::normal(0.0, s, shape, gen, opts) : at::randn(shape, opts).mul_(s);
  };
  const int64_t d = c.dModel;
  m["wte.weight"] = rnd({c.vocabSize, d}, std);
  m["wpe.weight"] = rnd({c.nCtx, d}, std);
  for (int64_t l = 0; l < c.nLayers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    m[p + "ln_1.weight"] = rnd({d}, 0.1).add_(1);
    m[p + "ln_1.bias"] = rnd({d}, 0.1);
    m[p + "attn.c_attn.weight"] = rnd({d, 3 * d}, std);
    m[p + "attn.c_attn.bias"] = rnd({3 * d}, 0.1);
    m[p + "attn.c_proj.weight"] = rnd({d, d}, std);
    m[p + "attn.c_proj.bias"] = rnd({d}, 0.1);
    m[p + "ln_2.weight"] = rnd({d}, 0.1).add_(1);
    m[p + "ln_2.bias"] = rnd({d}, 0.1);
    m[p + "mlp.c_fc.weight"] = rnd({d, c.dMlp}, std);
    m[p + "mlp.c_fc.bias"] = rnd({c.dMlp}, 0.1);
    m[p + "mlp.c_proj.weight"] = rnd({c.dMlp, d}, std);
    m[p + "mlp.c_proj.bias"] = rnd({d}, 0.1);
  }
  m["ln_f.weight"] = rnd({d}, 0.1).add_(1);
  m["ln_f.bias"] = rnd({d}, 0.1);
  return m;
}

tc::ModelConfig gpt2Config(int64_t layers, int64_t d, int64_t heads, int64_t vocab, int64_t ctx) {
  tc::ModelConfig c;
  c.arch = tc::Arch::GPT2;
  c.nLayers = layers;
  c.dModel = d;
  c.nHeads = heads;
  c.nKvHeads = heads;
  c.dHead = d / heads;
  c.dMlp = 4 * d;
  c.nCtx = ctx;
  c.vocabSize = vocab;
  c.lnEps = 1e-5;
  c.act = tc::Activation::GeluTanh;
  return c;
}

std::unique_ptr<tc::Transformer> buildModel(const tc::ModelConfig& c, std::map<std::string, at::Tensor> hf, c10::Device d,
                                           c10::ScalarType dtype = c10::kFloat) {
  tc::MapTensorSource src(std::move(hf), "random gpt2");
  return std::make_unique<tc::Transformer>(c, tc::weightsFromHuggingFace(c, src, d, dtype));
}

void checkModelForward() {
  tc::ModelConfig c = gpt2Config(2, 64, 4, 300, 32);
  auto hf = randomGpt2(c, 71, c10::kCPU);
  std::map<std::string, at::Tensor> hfDev;
  for (auto& [k, v] : hf) hfDev[k] = v.clone();
  auto cpu = buildModel(c, std::move(hf), c10::kCPU, gRefDtype);
  auto dev = buildModel(c, std::move(hfDev), gDevice);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(81);
  at::Tensor tokens = at::randint(0, c.vocabSize, {3, 32}, gen, at::TensorOptions().dtype(c10::kLong));
  tc::ForwardOptions o;
  o.hooks = {"blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", "blocks.1.attn.hook_pattern"};
  tc::ForwardResult rc = cpu->forward(tokens, o), rd = dev->forward(tokens.to(gDevice), o);
  expectClose("model gpt2 logits", rd.logits, rc.logits, kTolForward);
  for (auto& h : o.hooks) expectClose("model gpt2 " + h, rd.cache.at(h), rc.cache.at(h), kTolForward);
  // The fused attention path (no hooks observed: scaled_dot_product_attention on torch 2.x).
  tc::ForwardOptions plain;
  expectClose("model gpt2 logits (no hooks)", dev->forward(tokens.to(gDevice), plain).logits, rc.logits, kTolForward);
  // Padded batch: left padding, lengths per row.
  tc::ForwardOptions padded;
  padded.lengths = at::tensor(std::vector<int64_t>{32, 20, 7}, at::kLong);
  padded.padLeft = true;
  tc::ForwardResult pc = cpu->forward(tokens, padded);
  tc::ForwardOptions paddedDev = padded;
  paddedDev.lengths = padded.lengths.to(gDevice);
  expectClose("model gpt2 logits (left-padded batch)", dev->forward(tokens.to(gDevice), paddedDev).logits, pc.logits, kTolForward);
}

// A cross-layer transcoder (4 layers) on the CPU and on the device: its loss terms and every gradient,
// then 4 CrossLayerTrainer steps (relu: decoder-norm L1 + pre-activation loss + skip; topk: AuxK).
void checkDashboardStats();  // below, with the feature-dashboard code

void checkCrossLayer(TranscoderArch arch) {
  CrossLayerSpec spec;
  spec.arch = arch;
  spec.nLayers = 4;
  spec.dIn = spec.dOut = 64;
  spec.dSae = 256;
  spec.k = arch == TranscoderArch::TopK ? 12 : 0;
  spec.skip = arch == TranscoderArch::ReLU;
  CrossLayerParams p = CrossLayerTranscoder::initialParams(spec, 71, f32(c10::kCPU));
  {
    at::NoGradGuard noGrad;
    p.b_enc = randnCpu({spec.nLayers, spec.dSae}, 72, 0.05);
    if (p.W_skip.defined()) p.W_skip = randnCpu({spec.nLayers, spec.dIn, spec.dOut}, 73, 0.02);
  }
  CrossLayerParams q = p;
  for (auto& [name, t] : q.named()) *t = t->clone().to(gDevice);
  for (auto& [name, t] : p.named()) *t = t->to(gRefDtype);
  auto cpu = std::make_shared<CrossLayerTranscoder>(spec, std::move(p));
  auto dev = std::make_shared<CrossLayerTranscoder>(spec, std::move(q));
  at::Tensor x = randnCpu({384, spec.nLayers, spec.dIn}, 74), y = randnCpu({384, spec.nLayers, spec.dOut}, 75, 0.5);
  CrossLayerLossOptions o;
  if (arch == TranscoderArch::ReLU) {
    o.sparsity = CrossLayerSparsity::L1;
    o.sparsityCoefficient = 1e-3;
    o.preactCoefficient = 1e-3;
  } else {
    o.auxkAlpha = 1.0 / 32;
    o.kAux = 32;
  }
  at::Tensor dead = at::zeros({spec.nLayers, spec.dSae}, at::TensorOptions().dtype(c10::kBool));
  dead.narrow(1, 0, spec.dSae / 4).fill_(true);
  if (arch == TranscoderArch::TopK) {
    // Rows whose selections are unambiguous at every layer (see unambiguousRows).
    at::NoGradGuard noGrad;
    at::Tensor pre = cpu->preActivations(x.to(gRefDtype));
    at::Tensor keep = at::ones({x.size(0)}, at::TensorOptions().dtype(c10::kBool));
    for (int64_t l = 0; l < spec.nLayers; ++l) {
      at::Tensor rows = unambiguousRows(pre.select(1, l), spec.k, dead[l], o.kAux);
      at::Tensor mask = at::zeros_like(keep);
      mask.index_fill_(0, rows, true);
      keep = keep.logical_and(mask);
    }
    at::Tensor rows = keep.nonzero().squeeze(1);
    x = x.index_select(0, rows);
    y = y.index_select(0, rows);
  }
  std::map<std::string, at::Tensor> grads[2];
  at::Tensor totals[2];
  for (int side = 0; side < 2; ++side) {
    CrossLayerTranscoder& t = side == 0 ? *cpu : *dev;
    c10::Device d = side == 0 ? c10::Device(c10::kCPU) : gDevice;
    for (auto& [name, param] : t.params().named()) param->requires_grad_(true);
    at::AutoGradMode grad(true);
    CrossLayerLossOptions od = o;
    od.dead = dead.to(d);
    c10::ScalarType dt = side == 0 ? gRefDtype : c10::kFloat;
    CrossLayerLossTerms terms = crossLayerLoss(t, x.to(d, dt), y.to(d, dt), od);
    terms.total.backward();
    totals[side] = terms.total.detach();
    for (auto& [name, param] : t.params().named()) {
      grads[side][name] = param->grad().detach().clone();
      param->mutable_grad() = at::Tensor();
      param->requires_grad_(false);
    }
  }
  std::string n = std::string("cross-layer ") + archName(arch);
  expectClose(n + " loss total", totals[1], totals[0], kTolForward);
  for (auto& [name, g] : grads[0]) expectClose(n + " grad " + name, grads[1][name], g, kTolForward);
  CrossLayerTrainOptions to;
  to.lr = 1e-3;
  to.loss = o;
  CrossLayerTrainer tcpu(cpu, to), tdev(dev, to);
  for (int step = 0; step < 4; ++step) {
    tcpu.step(x.to(gRefDtype), y.to(gRefDtype));
    tdev.step(x.to(gDevice), y.to(gDevice));
  }
  auto cpuParams = cpu->params().named(), devParams = dev->params().named();
  for (size_t i = 0; i < cpuParams.size(); ++i)
    expectClose(n + " after 4 steps " + cpuParams[i].first, *devParams[i].second, *cpuParams[i].second, kTolTrain);
}

int runChecks() {
  setTf32(false);  // full float32 on both sides
  std::printf("numeric checks: %s (float32) against cpu (%s)\n", gDevice.str().c_str(), c10::toString(gRefDtype));
  auto guarded = [](const std::string& name, const std::function<void()>& f) {
    try {
      f();
    } catch (const std::exception& e) {
      std::printf("FAIL %s: exception: %s\n", name.c_str(), e.what());
      gFailures++;
    }
  };
  for (TranscoderArch a : {TranscoderArch::ReLU, TranscoderArch::TopK}) {
    guarded(std::string("transcoder forward ") + archName(a), [&] { checkTranscoderForward(a); });
    guarded(std::string("loss ") + archName(a), [&] { checkLossAndGradients(a); });
    guarded(std::string("trainer ") + archName(a), [&] { checkStepTrainer(a); });
  }
  for (TranscoderArch a : {TranscoderArch::ReLU, TranscoderArch::TopK})
    guarded(std::string("cross-layer ") + archName(a), [&] { checkCrossLayer(a); });
  guarded("model forward", checkModelForward);
  guarded("feature stats", checkDashboardStats);
  std::printf("info: %lld of the topk checks' %lld rows left out as near-ties (selection gap < %.0e of the scale)\n",
              (long long)gTieRows, (long long)gTopkRows, kTieGap);
  std::printf("checks: %d passed, %d failed\n", gPasses, gFailures);
  return gFailures == 0 ? 0 : 1;
}

// Feature-dashboard statistics: six batches of sparse activations folded in on the device (the ATen
// path) and on the CPU (the fused loops); every tensor of the two states must be equal.
void checkDashboardStats() {
  tc::FeatureStatsOptions o;
  o.features = 300;
  o.context = 16;
  o.examples = 5;
  o.samples = 20;
  o.bins = 32;
  o.seed = 3;
  o.layer = 1;
  tc::FeatureStatsOptions portable = o;
  portable.portable = true;  // on a CPU-only run the device side is the CPU: compare the two paths there
  tc::FeatureStats cpu = tc::initFeatureStats(o, c10::kCPU), dev = tc::initFeatureStats(portable, gDevice);
  for (int64_t b = 0; b < 6; ++b) {
    at::Tensor acts = at::relu(randnCpu({8, o.context, o.features}, 90 + b) - 1.5) * (1 + b);
    at::Tensor rows = at::arange(b * 8, (b + 1) * 8, at::kLong);
    tc::updateFeatureStats(cpu, acts, rows, o);
    tc::updateFeatureStats(dev, acts.to(gDevice), rows.to(gDevice), portable);
  }
  auto a = cpu.named(), d = dev.named();
  for (size_t i = 0; i < a.size(); ++i) {
    const bool same = at::equal(*a[i].second, d[i].second->to(c10::kCPU));
    std::printf("%s feature stats %-45s %s\n", same ? "PASS" : "FAIL", a[i].first.c_str(), same ? "equal" : "differ");
    (same ? gPasses : gFailures)++;
  }
}

// ---- benchmarks -------------------------------------------------------------------------------

struct Variant {
  std::string name;
  bool tf32 = false;
  // Adjusts the options; returns false when the core does not support the variant.
  std::function<bool(tc::TrainOptions&)> apply;
};

// ---- compute variants of the training benchmark: add new ones here ----
std::vector<Variant> allVariants() {
  return {
      {"fp32", false, [](tc::TrainOptions&) { return true; }},
      {"tf32", true, [](tc::TrainOptions&) { return true; }},
      {"bf16", false, [](tc::TrainOptions& o) { o.fast.computeDtype = c10::kBFloat16; return true; }},
  };
}

struct BenchShape {
  int64_t dIn, dSae, batch, k, kAux, steps, warmup;
};

void benchTrainer(TranscoderArch arch, const BenchShape& s, const Variant& v) {
  TranscoderSpec spec;
  spec.arch = arch;
  spec.dIn = s.dIn;
  spec.dOut = s.dIn;
  spec.dSae = s.dSae;
  spec.k = arch == TranscoderArch::TopK ? s.k : 0;
  tc::TrainOptions o;  // paper-like options
  o.lr = 4e-4;
  if (arch == TranscoderArch::ReLU) {
    o.loss.reconstruction = tc::Reconstruction::Paper;  // normalised MSE
    o.loss.l1Coefficient = 1.4e-4;
  } else {
    o.loss.reconstruction = tc::Reconstruction::Fvu;
    o.loss.auxkAlpha = 1.0 / 32;
    o.loss.kAux = s.kAux;
  }
  std::string label = std::string(archName(arch)) + (arch == TranscoderArch::TopK ? " k=" + std::to_string(s.k) + " AuxK" : " L1") +
                      " " + std::to_string(s.dIn) + "->" + std::to_string(s.dSae) + " batch " + std::to_string(s.batch) + " [" +
                      v.name + "]";
  if (!v.apply(o)) {
    std::printf("SKIP bench %s: not supported by this core\n", label.c_str());
    return;
  }
  if (v.tf32 && !gDevice.is_cuda()) {
    std::printf("SKIP bench %s: TF32 is a CUDA mode\n", label.c_str());
    return;
  }
  setTf32(v.tf32);
  auto t = std::make_shared<Transcoder>(spec, Transcoder::initialParams(spec, 1, f32(gDevice)));
  tc::StepTrainer trainer(t, o);
  // Cached activations, already on the device: a few distinct batches, cycled.
  const int64_t S = 4;
  at::Tensor xs = at::randn({S, s.batch, s.dIn}, f32(gDevice));
  at::Tensor ys = (at::matmul(xs, at::randn({s.dIn, s.dIn}, f32(gDevice)) / std::sqrt(double(s.dIn))) +
                   0.1 * at::randn({S, s.batch, s.dIn}, f32(gDevice)));
  const int64_t nDead = arch == TranscoderArch::TopK ? s.dSae / 10 : 0;
  std::vector<double> times;
  double l0 = 0, loss = 0;
  for (int64_t i = 0; i < s.warmup + s.steps; ++i) {
    // AuxK every step: a tenth of the features counted dead (fresh weights have no dead features yet).
    if (nDead > 0) trainer.stepsSinceFired().narrow(0, 0, nDead).fill_(o.deadFeatureWindow + 1);
    sync();
    double t0 = seconds();
    tc::StepMetrics m = trainer.step(xs[i % S], ys[i % S]);
    sync();
    double dt = seconds() - t0;
    if (i >= s.warmup) times.push_back(dt);
    l0 = m.l0;
    loss = m.total;
  }
  setTf32(false);
  const double N = double(s.batch), d = double(s.dIn), m = double(s.dSae);
  // FLOPs per step counted: relu: 5 dense GEMMs of N x d x m (encoder, decoder, and the three
  // gradients); topk: the dense encoder and its weight gradient, plus the sparse decode of k and
  // k_aux rows (forward, value and decoder-row gradients).
  double flops = arch == TranscoderArch::ReLU ? 5 * 2 * N * d * m : 2 * 2 * N * d * m + 3 * 2 * N * double(s.k + s.kAux) * d;
  double med = median(times);
  std::printf("RESULT train %-52s %9.3f ms/step %12.0f tokens/s %9.1f GFLOP/s  (min %.3f ms, l0 %.1f, loss %.4g)\n",
              label.c_str(), med * 1e3, N / med, flops / med / 1e9, *std::min_element(times.begin(), times.end()) * 1e3, l0,
              loss);
  std::fflush(stdout);
}

void benchModel(const Args& a) {
  tc::ModelConfig c = gpt2Config(a.num("model-layers", 12), a.num("model-d", 768), a.num("model-heads", 12),
                                 a.num("model-vocab", 50257), a.num("model-ctx", 1024));
  const int64_t B = a.num("model-batch", 8), T = c.nCtx, iters = a.num("model-iters", 5);
  auto model = buildModel(c, randomGpt2(c, 5, gDevice, 0.02), gDevice);
  at::Tensor tokens = at::randint(0, c.vocabSize, {B, T}, at::TensorOptions().dtype(c10::kLong).device(gDevice));
  char label[160];
  std::snprintf(label, sizeof label, "gpt2 forward %lldL d%lld h%lld V%lld, %lld x %lld tokens", (long long)c.nLayers,
                (long long)c.dModel, (long long)c.nHeads, (long long)c.vocabSize, (long long)B, (long long)T);
  for (bool tf32 : {false, true}) {
    if (tf32 && !gDevice.is_cuda()) break;
    setTf32(tf32);
    tc::ForwardOptions o;  // no grad, logits on
    std::vector<double> times;
    for (int64_t i = 0; i < iters + 1; ++i) {
      sync();
      double t0 = seconds();
      at::Tensor logits = model->forward(tokens, o).logits;
      sync();
      if (i > 0) times.push_back(seconds() - t0);
    }
    double med = median(times);
    std::printf("RESULT model %-52s %9.3f ms/fwd  %12.0f tokens/s  [%s]\n", label, med * 1e3, double(B * T) / med,
                tf32 ? "tf32" : "fp32");
    std::fflush(stdout);
  }
  setTf32(false);
}

int runBench(const Args& a) {
  BenchShape s{a.num("d-in", 768), a.num("d-sae", 24576), a.num("batch", 4096), a.num("k", 32),
               a.num("k-aux", 384), a.num("steps", 20), a.num("warmup", 3)};
  std::string only = a.str("only", "");
  std::string wanted = a.str("variants", gDevice.is_cuda() ? "fp32,tf32,bf16" : "fp32,bf16");
  std::printf("benchmarks on %s (torch %s)\n", gDevice.str().c_str(), TORCH_VERSION);
  // One failing benchmark (out of memory, say) is reported and the others still run.
  int failures = 0;
  auto guarded = [&](const std::string& name, const std::function<void()>& f) {
    try {
      f();
    } catch (const c10::Error& e) {
      std::printf("FAIL bench %s: libtorch: %s\n", name.c_str(), e.what_without_backtrace());
      failures++;
    } catch (const std::exception& e) {
      std::printf("FAIL bench %s: %s\n", name.c_str(), e.what());
      failures++;
    }
    setTf32(false);
    std::fflush(stdout);
  };
  for (TranscoderArch arch : {TranscoderArch::ReLU, TranscoderArch::TopK}) {
    if (!only.empty() && only != archName(arch)) continue;
    for (const Variant& v : allVariants())
      if (("," + wanted + ",").find("," + v.name + ",") != std::string::npos)
        guarded(std::string(archName(arch)) + " [" + v.name + "]", [&] { benchTrainer(arch, s, v); });
  }
  if (only.empty() || only == "model") guarded("model forward", [&] { benchModel(a); });
  return failures == 0 ? 0 : 1;
}

// ---- Hugging Face layout: config.json + model.safetensors -> logits ---------------------------

std::string readText(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A top-level scalar of a flat JSON object ("key": 12 / "key": "gelu_new"); "" when absent or null.
std::string jsonScalar(const std::string& json, const std::string& key) {
  std::smatch m;
  std::regex re("\"" + key + "\"\\s*:\\s*(\"([^\"]*)\"|[-+0-9.eE]+|true|false|null)");
  if (!std::regex_search(json, m, re)) return "";
  if (m[2].matched) return m[2].str();
  return m[1].str() == "null" ? "" : m[1].str();
}

// Reads every tensor of a safetensors file (header parsed here, data by the core's loader).
std::map<std::string, at::Tensor> readSafetensors(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  std::string header(n, '\0');
  f.read(header.data(), static_cast<std::streamsize>(n));
  std::vector<tc::SafetensorsEntry> entries;
  std::regex re(R"re("([^"]+)"\s*:\s*\{\s*"dtype"\s*:\s*"(\w+)"\s*,\s*"shape"\s*:\s*\[([^\]]*)\]\s*,\s*"data_offsets"\s*:\s*\[\s*(\d+)\s*,\s*(\d+)\s*\]\s*\})re");
  for (auto it = std::sregex_iterator(header.begin(), header.end(), re); it != std::sregex_iterator(); ++it) {
    tc::SafetensorsEntry e;
    e.name = (*it)[1];
    e.dtype = (*it)[2];
    std::stringstream dims((*it)[3].str());
    for (std::string dim; std::getline(dims, dim, ',');)
      if (dim.find_first_of("0123456789") != std::string::npos) e.shape.push_back(std::stoll(dim));
    e.begin = std::stoull((*it)[4]);
    e.end = std::stoull((*it)[5]);
    entries.push_back(e);
  }
  if (entries.empty()) throw std::runtime_error(path + ": no tensors found in the header");
  return tc::loadSafetensors(path, 8 + n, entries);
}

void writeSafetensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors) {
  std::string header = "{";
  uint64_t offset = 0;
  std::vector<at::Tensor> data;
  for (auto& [name, t0] : tensors) {
    at::Tensor t = t0.detach().to(c10::kCPU, c10::kFloat).contiguous();
    std::string shape;
    for (int64_t s : t.sizes()) shape += (shape.empty() ? "" : ",") + std::to_string(s);
    uint64_t bytes = static_cast<uint64_t>(t.numel()) * 4;
    header += (header.size() > 1 ? "," : "") + ("\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[" + shape +
                                                "],\"data_offsets\":[" + std::to_string(offset) + "," +
                                                std::to_string(offset + bytes) + "]}");
    offset += bytes;
    data.push_back(t);
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  std::ofstream f(path, std::ios::binary);
  uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f.write(header.data(), static_cast<std::streamsize>(n));
  for (auto& t : data) f.write(reinterpret_cast<const char*>(t.data_ptr<float>()), static_cast<std::streamsize>(t.numel() * 4));
  if (!f) throw std::runtime_error("cannot write " + path);
}

int runHfForward(const Args& a) {
  const std::string dir = a.str("model", ""), tokensPath = a.str("tokens", ""), out = a.str("out", "");
  if (dir.empty() || tokensPath.empty() || out.empty()) throw std::invalid_argument("hf-forward needs --model, --tokens and --out");
  std::string cfgText = readText(dir + "/config.json");
  if (jsonScalar(cfgText, "model_type") != "gpt2") throw std::runtime_error("hf-forward supports model_type gpt2 only");
  auto num = [&](const std::string& k, int64_t def) {
    std::string v = jsonScalar(cfgText, k);
    return v.empty() ? def : std::stoll(v);
  };
  tc::ModelConfig c = gpt2Config(num("n_layer", 0), num("n_embd", 0), num("n_head", 0), num("vocab_size", 0), num("n_positions", 0));
  if (std::string inner = jsonScalar(cfgText, "n_inner"); !inner.empty()) c.dMlp = std::stoll(inner);
  if (std::string eps = jsonScalar(cfgText, "layer_norm_epsilon"); !eps.empty()) c.lnEps = std::stod(eps);
  std::string act = jsonScalar(cfgText, "activation_function");
  if (!act.empty() && act != "gelu_new") throw std::runtime_error("hf-forward: activation " + act + " not handled here (gelu_new only)");
  c.scaleAttnByInverseLayerIdx = jsonScalar(cfgText, "scale_attn_by_inverse_layer_idx") == "true";

  std::map<std::string, at::Tensor> hf;
  for (auto& [k, v] : readSafetensors(dir + "/model.safetensors"))
    hf[k.rfind("transformer.", 0) == 0 ? k.substr(12) : k] = v;
  auto model = buildModel(c, std::move(hf), gDevice);
  at::Tensor tokens = readSafetensors(tokensPath).at("input_ids");
  tc::ForwardResult r = model->forward(tokens, tc::ForwardOptions());
  writeSafetensors(out, {{"logits", r.logits}});
  std::printf("hf-forward: %s, tokens %s on %s -> %s\n", dir.c_str(), c10::str(tokens.sizes()).c_str(), gDevice.str().c_str(),
              out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
  try {
    Args a = parseArgs(argc, argv);
    int threads = static_cast<int>(a.num("threads", std::max(1u, std::thread::hardware_concurrency())));
    at::set_num_threads(threads);
    std::string dev = a.str("device", torch::cuda::is_available() ? "cuda" : "cpu");
    gDevice = c10::Device(dev);
    if (gDevice.is_cuda() && !torch::cuda::is_available())
      throw std::runtime_error("--device cuda but this libtorch sees no CUDA device (a CPU libtorch, or libtorch_cuda not loaded)");
    std::printf("gpu-check: torch %s, device %s%s, %d CPU threads\n", TORCH_VERSION, gDevice.str().c_str(),
                gDevice.is_cuda() ? (" (" + std::to_string(torch::cuda::device_count()) + " CUDA devices)").c_str() : "", threads);
    if (a.command == "check") {
      std::string ref = a.str("reference", "cpu");
      if (ref != "cpu" && ref != "cpu64") throw std::invalid_argument("--reference: cpu or cpu64");
      gRefDtype = ref == "cpu64" ? c10::kDouble : c10::kFloat;
      return runChecks();
    }
    if (a.command == "bench") return runBench(a);
    if (a.command == "hf-forward") return runHfForward(a);
    throw std::invalid_argument("unknown command '" + a.command + "' (check | bench | hf-forward)");
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "gpu-check: libtorch: %s\n", e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpu-check: %s\n", e.what());
  }
  return 2;
}
