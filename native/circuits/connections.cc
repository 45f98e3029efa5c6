#include "circuits/connections.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <string>

#include "core/errors.h"
#include "model/weights.h"

namespace tc {

namespace {

std::string str(int64_t v) { return std::to_string(v); }

// ---- the scan merge ------------------------------------------------------------------------------

// Width of the vectorisable "does anything in this chunk beat the k-th best?" pre-check.
constexpr int64_t kChunk = 32;

// Inserts x (global column j) into a row's list v/ix of n <= k entries sorted by value descending.
// Equal values keep their earlier (smaller) column first: columns arrive in increasing order.
inline void insert(float* v, int64_t* ix, int64_t& n, int64_t k, float x, int64_t j) {
  int64_t q;
  if (n < k) {
    q = n++;
  } else {
    if (!(x > v[k - 1])) return;
    q = k - 1;
  }
  while (q > 0 && v[q - 1] < x) {
    v[q] = v[q - 1];
    ix[q] = ix[q - 1];
    --q;
  }
  v[q] = x;
  ix[q] = j;
}

// Merges the `cols` scores of one row (global columns offset .. offset + cols) into its running list.
// NaN scores are skipped.
void scanRow(const float* s, int64_t cols, int64_t offset, float* v, int64_t* ix, int64_t& n, int64_t k) {
  int64_t j = 0;
  for (; j < cols && n < k; ++j) {
    if (!std::isnan(s[j])) insert(v, ix, n, k, s[j], offset + j);
  }
  while (j < cols) {
    const int64_t end = std::min(cols, j + kChunk);
    if (end - j == kChunk) {
      const float threshold = v[k - 1];
      int any = 0;
      for (int64_t t = 0; t < kChunk; ++t) any |= s[j + t] > threshold;
      if (!any) {
        j = end;
        continue;
      }
    }
    for (; j < end; ++j) {
      if (s[j] > v[k - 1]) insert(v, ix, n, k, s[j], offset + j);
    }
  }
}

// Merges a contiguous [rows, cols] block of scores into rows' lists (values/indices [rows, k] row-major).
void scanBlock(const float* s, int64_t rows, int64_t cols, int64_t offset, float* values, int64_t* indices, int64_t* counts,
               int64_t k) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) scanRow(s + r * cols, cols, offset, values + r * k, indices + r * k, counts[r], k);
  });
}

// Rows that saw fewer than k non-NaN scores: index -1, value NaN in the remaining slots.
void padShortRows(float* values, int64_t* indices, const int64_t* counts, int64_t rows, int64_t k) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t q = counts[r]; q < k; ++q) {
      values[r * k + q] = std::numeric_limits<float>::quiet_NaN();
      indices[r * k + q] = -1;
    }
  }
}

bool useScan(TopKMerge merge, const at::Tensor& t) {
  if (merge == TopKMerge::Scan && !t.is_cpu()) throw InvalidArgument("merge 'scan' runs on the CPU only (use 'topk' or 'auto' on " + t.device().str() + ")");
  return merge == TopKMerge::Scan || (merge == TopKMerge::Auto && t.is_cpu());
}

void checkK(int64_t k, int64_t available, const std::string& of) {
  if (k < 1) throw InvalidArgument("k must be at least 1, got " + str(k));
  if (k > available) throw InvalidArgument("k = " + str(k) + " exceeds the " + str(available) + " " + of);
}

void checkFloating(const at::Tensor& t, const char* name) {
  if (!t.defined()) throw InvalidArgument(std::string(name) + " is missing");
  if (!at::isFloatingType(t.scalar_type())) throw InvalidArgument(std::string(name) + " must be a floating-point tensor");
}

// ---- model and transcoder weights ------------------------------------------------------------------

at::Tensor modelWeight(const Transformer& model, const std::string& name, c10::Device device) {
  return weightByName(model.weights(), name).to(device, c10::kFloat);
}

std::string attnName(int64_t layer, const char* w) { return "blocks." + str(layer) + ".attn." + w; }

void checkFeature(const Transcoder& tc, int64_t feature, int64_t layer) {
  const int64_t m = tc.spec().dSae;
  if (feature < 0 || feature >= m) {
    throw InvalidArgument("feature " + str(feature) + " is out of range for the " + (layer >= 0 ? "layer-" + str(layer) + " " : std::string()) +
                          "transcoder (d_sae = " + str(m) + ")");
  }
}

LayerConnections toList(int64_t layer, int64_t attnLayer, int64_t head, const at::Tensor& indices, const at::Tensor& values) {
  LayerConnections c;
  c.layer = layer;
  c.attnLayer = attnLayer;
  c.head = head;
  c.indices = indices.to(at::kCPU).contiguous();
  c.values = values.to(at::kCPU, c10::kFloat).contiguous();
  return c;
}

}  // namespace

// ---- top-k ----------------------------------------------------------------------------------------

TopK rowTopK(const at::Tensor& scores, int64_t k, bool largest, TopKMerge merge) {
  checkFloating(scores, "scores");
  if (scores.dim() == 1) {
    TopK t = rowTopK(scores.unsqueeze(0), k, largest, merge);
    return {t.indices.squeeze(0), t.values.squeeze(0)};
  }
  if (scores.dim() != 2) throw InvalidArgument("scores must be [R, C] or [C]");
  const int64_t R = scores.size(0), C = scores.size(1);
  checkK(k, C, "scores per row");
  at::NoGradGuard noGrad;
  if (!useScan(merge, scores)) {
    auto [values, indices] = at::topk(scores.to(c10::kFloat), k, 1, largest, /*sorted=*/true);
    return {indices, values};
  }
  at::Tensor s = (largest ? scores.to(c10::kFloat) : scores.to(c10::kFloat).neg()).contiguous();
  at::Tensor values = at::empty({R, k}, s.options());
  at::Tensor indices = at::empty({R, k}, s.options().dtype(c10::kLong));
  std::vector<int64_t> counts(R, 0);
  scanBlock(s.data_ptr<float>(), R, C, 0, values.data_ptr<float>(), indices.data_ptr<int64_t>(), counts.data(), k);
  padShortRows(values.data_ptr<float>(), indices.data_ptr<int64_t>(), counts.data(), R, k);
  return {indices, largest ? values : values.neg()};
}

TopK topkConnections(const at::Tensor& W_dec_src, const at::Tensor& W_enc_dst, const ConnectionOptions& o) {
  checkFloating(W_dec_src, "W_dec_src");
  checkFloating(W_enc_dst, "W_enc_dst");
  if (W_dec_src.dim() != 2) throw InvalidArgument("W_dec_src must be [m1, d], got " + str(W_dec_src.dim()) + " dimensions");
  if (W_enc_dst.dim() != 2) throw InvalidArgument("W_enc_dst must be [d, m2], got " + str(W_enc_dst.dim()) + " dimensions");
  if (W_dec_src.size(1) != W_enc_dst.size(0)) {
    throw InvalidArgument("W_dec_src [m1, d] and W_enc_dst [d, m2] must share d, got d = " + str(W_dec_src.size(1)) + " and " +
                          str(W_enc_dst.size(0)));
  }
  if (W_dec_src.device() != W_enc_dst.device()) throw InvalidArgument("W_dec_src and W_enc_dst must be on the same device");
  if (o.blockSize < 1) throw InvalidArgument("blockSize must be at least 1, got " + str(o.blockSize));
  const bool downstream = o.direction == ConnectionDirection::Downstream;
  at::NoGradGuard noGrad;
  // Scores of the output's rows: A @ B, A [R, d], B [d, C] (transposed views upstream: BLAS reads them as is).
  at::Tensor src = W_dec_src.to(c10::kFloat), dst = W_enc_dst.to(c10::kFloat);
  at::Tensor A = downstream ? src : dst.t();
  at::Tensor B = downstream ? dst : src.t();
  const int64_t R = A.size(0), C = B.size(1), k = o.k;
  checkK(k, C, downstream ? "target features (columns of W_enc_dst)" : "source features (rows of W_dec_src)");
  const bool scan = useScan(o.merge, A);
  const int64_t rowBlock = std::min(o.blockSize, R), colBlock = std::min(o.blockSize, C);

  at::Tensor values = at::empty({R, k}, A.options());
  at::Tensor indices = at::empty({R, k}, A.options().dtype(c10::kLong));
  if (R == 0) return {indices, values};
  if (scan) {
    at::Tensor buffer = at::empty({rowBlock * colBlock}, A.options());
    std::vector<int64_t> counts(rowBlock);
    float* v = values.data_ptr<float>();
    int64_t* ix = indices.data_ptr<int64_t>();
    for (int64_t r0 = 0; r0 < R; r0 += rowBlock) {
      const int64_t rb = std::min(rowBlock, R - r0);
      const at::Tensor Ar = A.narrow(0, r0, rb);
      std::fill(counts.begin(), counts.end(), 0);
      for (int64_t c0 = 0; c0 < C; c0 += colBlock) {
        const int64_t cb = std::min(colBlock, C - c0);
        at::Tensor S = buffer.narrow(0, 0, rb * cb).view({rb, cb});
        at::mm_out(S, Ar, B.narrow(1, c0, cb));
        scanBlock(S.data_ptr<float>(), rb, cb, c0, v + r0 * k, ix + r0 * k, counts.data(), k);
      }
      padShortRows(v + r0 * k, ix + r0 * k, counts.data(), rb, k);
    }
    return {indices, values};
  }
  // at::topk merge: the block's own top-k, then the top-k of [running best, block best].
  for (int64_t r0 = 0; r0 < R; r0 += rowBlock) {
    const int64_t rb = std::min(rowBlock, R - r0);
    const at::Tensor Ar = A.narrow(0, r0, rb);
    at::Tensor bestV, bestI;
    for (int64_t c0 = 0; c0 < C; c0 += colBlock) {
      const int64_t cb = std::min(colBlock, C - c0);
      at::Tensor S = at::mm(Ar, B.narrow(1, c0, cb));
      auto [bv, bi] = at::topk(S, std::min(k, cb), 1, /*largest=*/true, /*sorted=*/true);
      bi.add_(c0);
      if (!bestV.defined()) {
        bestV = bv;
        bestI = bi;
        continue;
      }
      at::Tensor catV = at::cat({bestV, bv}, 1), catI = at::cat({bestI, bi}, 1);
      auto [mv, pos] = at::topk(catV, std::min(k, catV.size(1)), 1, /*largest=*/true, /*sorted=*/true);
      bestV = mv;
      bestI = catI.gather(1, pos);
    }
    values.narrow(0, r0, rb).copy_(bestV);
    indices.narrow(0, r0, rb).copy_(bestI);
  }
  return {indices, values};
}

// ---- one feature ------------------------------------------------------------------------------------

FeatureConnections featureConnections(const ReplacementModel& rm, int64_t layer, int64_t feature, int64_t k, bool throughAttention) {
  at::NoGradGuard noGrad;
  const Transformer& model = rm.model();
  const ModelConfig& cfg = model.config();
  std::map<int64_t, const Transcoder*> transcoders;
  for (int64_t l : rm.layers()) transcoders[l] = &rm.transcoder(l);
  const Transcoder& self = rm.transcoder(layer);
  checkFeature(self, feature, layer);
  if (k < 1) throw InvalidArgument("k must be at least 1, got " + str(k));
  for (const auto& [l, tc] : transcoders) {
    if (l != layer && k > tc->spec().dSae) {
      throw InvalidArgument("k = " + str(k) + " exceeds the layer-" + str(l) + " transcoder's d_sae = " + str(tc->spec().dSae));
    }
  }

  const c10::Device device = self.params().W_enc.device();
  auto f32 = [&](const at::Tensor& t) { return t.to(device, c10::kFloat); };
  const at::Tensor n = f32(self.params().W_enc.select(1, feature));  // what the feature reads [d]
  const at::Tensor w = f32(self.params().W_dec.select(0, feature));  // what it writes [d]

  FeatureConnections out;
  auto push = [&](std::vector<LayerConnections>& into, int64_t l, int64_t la, const at::Tensor& scores) {
    // scores: [m] direct, or [H, m] one row per head of attention layer la.
    TopK t = rowTopK(scores, k);
    if (scores.dim() == 1) {
      into.push_back(toList(l, -1, -1, t.indices, t.values));
      return;
    }
    for (int64_t h = 0; h < scores.size(0); ++h) into.push_back(toList(l, la, h, t.indices[h], t.values[h]));
  };

  for (const auto& [l, tc] : transcoders) {
    if (l < layer) push(out.upstream, l, -1, at::mv(f32(tc->params().W_dec), n));
    if (l > layer) push(out.downstream, l, -1, at::matmul(w, f32(tc->params().W_enc)));
  }
  if (!throughAttention) return out;

  // Upstream through head h of attention la (l1 < la <= layer): W_dec[l1] @ (W_V[la,h] (W_O[la,h] n)).
  for (int64_t la = 1; la <= layer; ++la) {
    if (transcoders.empty() || transcoders.begin()->first >= la) continue;
    const at::Tensor WV = modelWeight(model, attnName(la, "W_V"), device);  // [H, d, dh]
    const at::Tensor WO = modelWeight(model, attnName(la, "W_O"), device);  // [H, dh, d]
    const at::Tensor U = at::bmm(WV, at::matmul(WO, n).unsqueeze(2)).squeeze(2);  // [H, d]
    for (const auto& [l1, tc] : transcoders) {
      if (l1 >= la) break;
      push(out.upstream, l1, la, at::mm(U, f32(tc->params().W_dec).t()));
    }
  }
  // Downstream through head h of attention la (layer < la <= l2): ((w W_V[la,h]) W_O[la,h]) @ W_enc[l2].
  for (int64_t la = layer + 1; la < cfg.nLayers; ++la) {
    if (transcoders.rbegin()->first < la) break;
    const at::Tensor WV = modelWeight(model, attnName(la, "W_V"), device);
    const at::Tensor WO = modelWeight(model, attnName(la, "W_O"), device);
    const at::Tensor Wt = at::bmm(at::matmul(w, WV).unsqueeze(1), WO).squeeze(1);  // [H, d]
    for (const auto& [l2, tc] : transcoders) {
      if (l2 >= la) push(out.downstream, l2, la, at::mm(Wt, f32(tc->params().W_enc)));
    }
  }
  return out;
}

namespace {

TokenEffects tokenEffects(const at::Tensor& scores, int64_t k) {
  checkK(k, scores.size(0), "tokens of the vocabulary");
  TopK top = rowTopK(scores, k, true), bottom = rowTopK(scores, k, false);
  return {{top.indices.cpu(), top.values.cpu()}, {bottom.indices.cpu(), bottom.values.cpu()}};
}

}  // namespace

namespace {

void checkHead(const ModelConfig& cfg, int64_t attnLayer, int64_t head) {
  if ((attnLayer < 0) != (head < 0)) throw InvalidArgument("attnLayer and head go together: give both or neither");
  if (attnLayer < 0) return;
  if (attnLayer >= cfg.nLayers) throw InvalidArgument("attnLayer " + str(attnLayer) + " is not a layer of the model (0.." + str(cfg.nLayers - 1) + ")");
  if (head >= cfg.nHeads) throw InvalidArgument("head " + str(head) + " is out of range (the model has " + str(cfg.nHeads) + " heads)");
}

// v W_V[h] W_O[h] ([d]; TransformerLens shapes W_V [H, d, dh], W_O [H, dh, d]).
at::Tensor throughHead(const Transformer& model, const at::Tensor& v, int64_t attnLayer, int64_t head) {
  const at::Tensor WV = modelWeight(model, attnName(attnLayer, "W_V"), v.device())[head];  // [d, dh]
  const at::Tensor WO = modelWeight(model, attnName(attnLayer, "W_O"), v.device())[head];  // [dh, d]
  return at::mv(WO.t(), at::mv(WV.t(), v));
}

}  // namespace

TokenEffects deEmbedding(const ReplacementModel& rm, int64_t layer, int64_t feature, int64_t k, int64_t attnLayer, int64_t head) {
  at::NoGradGuard noGrad;
  const Transformer& model = rm.model();
  const Transcoder& tc = rm.transcoder(layer);
  checkFeature(tc, feature, layer);
  checkHead(model.config(), attnLayer, head);
  if (attnLayer > layer)
    throw InvalidArgument("attnLayer " + str(attnLayer) + " comes after the transcoder's layer " + str(layer) + ": its output cannot reach the feature");
  const c10::Device device = model.device();
  at::Tensor n = tc.params().W_enc.select(1, feature).to(device, c10::kFloat);
  if (attnLayer >= 0) {
    const at::Tensor WV = modelWeight(model, attnName(attnLayer, "W_V"), device)[head];  // [d, dh]
    const at::Tensor WO = modelWeight(model, attnName(attnLayer, "W_O"), device)[head];  // [dh, d]
    n = at::mv(WV, at::mv(WO, n));
  }
  return tokenEffects(at::mv(modelWeight(model, "embed.W_E", device), n), k);
}

TokenEffects logitEffects(const ReplacementModel& rm, int64_t layer, int64_t feature, int64_t k) {
  at::NoGradGuard noGrad;
  const Transformer& model = rm.model();
  const Transcoder& tc = rm.transcoder(layer);
  checkFeature(tc, feature, layer);
  const c10::Device device = model.device();
  const at::Tensor w = tc.params().W_dec.select(0, feature).to(device, c10::kFloat);
  return tokenEffects(at::matmul(w, modelWeight(model, "unembed.W_U", device)), k);
}

at::Tensor logitEffectsOn(const ReplacementModel& rm, int64_t layer, int64_t feature, const at::Tensor& tokens, int64_t attnLayer,
                          int64_t head) {
  at::NoGradGuard noGrad;
  const Transformer& model = rm.model();
  const Transcoder& tc = rm.transcoder(layer);
  checkFeature(tc, feature, layer);
  checkHead(model.config(), attnLayer, head);
  if (attnLayer >= 0 && attnLayer <= layer)
    throw InvalidArgument("attnLayer " + str(attnLayer) + " does not come after the transcoder's layer " + str(layer) + ": it cannot carry the feature's output");
  if (tokens.dim() != 1 || at::isFloatingType(tokens.scalar_type())) throw InvalidArgument("tokens must be a list of token ids");
  const int64_t V = model.config().vocabSize;
  if (tokens.numel() > 0 && (tokens.min().item<int64_t>() < 0 || tokens.max().item<int64_t>() >= V))
    throw InvalidArgument("a token id is out of range [0, " + str(V) + ")");
  const c10::Device device = model.device();
  at::Tensor w = tc.params().W_dec.select(0, feature).to(device, c10::kFloat);
  if (attnLayer >= 0) w = throughHead(model, w, attnLayer, head);
  const at::Tensor WU = modelWeight(model, "unembed.W_U", device).index_select(1, tokens.to(device, c10::kLong));  // [d, n]
  return at::mv(WU.t(), w).cpu();
}

double gemmGflops(int64_t m, int64_t kk, int64_t n, int64_t iters) {
  if (m < 1 || kk < 1 || n < 1) throw InvalidArgument("gemm sizes must be positive");
  if (iters < 1) throw InvalidArgument("iters must be at least 1");
  at::NoGradGuard noGrad;
  at::Tensor a = at::randn({m, kk}), b = at::randn({kk, n}), c = at::empty({m, n});
  at::mm_out(c, a, b);
  double best = std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < iters; ++i) {
    auto start = std::chrono::steady_clock::now();
    at::mm_out(c, a, b);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return 2.0 * static_cast<double>(m) * static_cast<double>(kk) * static_cast<double>(n) / best / 1e9;
}

}  // namespace tc
