#include "circuits/graph.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/errors.h"

namespace tc {

namespace {

std::string block(int64_t l) { return "blocks." + std::to_string(l) + "."; }

// Contractions of a [B, n, d] gather are done in chunks of at most this many elements.
constexpr int64_t kChunkElements = int64_t{1} << 24;
// With at least this many active features per position on average, a layer's feature columns
// are one small GEMM per position instead of a gather.
constexpr int64_t kPerPositionProducts = 8;

}  // namespace

AttributionGraph::AttributionGraph(std::shared_ptr<const ReplacementModel> replacement, const at::Tensor& tokens, int64_t batchSize)
    : replacement_(std::move(replacement)) {
  const Transformer& model = replacement_->model();
  const ModelConfig& cfg = model.config();
  const Weights& w = model.weights();
  at::Tensor ids = model.prepareTokens(tokens);
  if (ids.size(0) != 1) throw InvalidArgument("an attribution graph is built for one prompt at a time ([T] tokens)");
  if (batchSize < 1) throw InvalidArgument("batchSize must be at least 1, got " + std::to_string(batchSize));
  T_ = ids.size(1);
  L_ = cfg.nLayers;
  B_ = batchSize;
  hasPositional_ = w.W_pos.defined();
  const int64_t d = cfg.dModel;

  // The prompt once, without grad: activations, errors, constants, targets' values, and the frozen
  // patterns and scales the backward passes run through.
  std::vector<at::Tensor> mlpOut(L_);
  {
    at::NoGradGuard noGrad;
    ForwardOptions o;
    o.hooks = {"hook_embed", "unembed.hook_pre"};
    if (hasPositional_) o.hooks.push_back("hook_pos_embed");
    for (const std::string& name : FrozenTranspose::hooks(cfg)) o.hooks.push_back(name);
    for (int64_t l = 0; l < L_; ++l) {
      o.hooks.push_back(block(l) + "hook_mlp_out");
      if (cfg.sandwichNorms) o.hooks.push_back(block(l) + "ln1_post.hook_scale");
      if (replacement_->has(l)) o.hooks.push_back(replacement_->placement(l).hookIn);
    }
    std::sort(o.hooks.begin(), o.hooks.end());
    o.hooks.erase(std::unique(o.hooks.begin(), o.hooks.end()), o.hooks.end());
    ForwardResult r = model.forward(ids, o);
    auto get = [&](const std::string& name) { return r.cache.at(name)[0]; };
    transpose_ = std::make_unique<FrozenTranspose>(replacement_, r.cache);
    embed_ = get("hook_embed");
    if (hasPositional_) posEmbed_ = get("hook_pos_embed");
    finalNormed_ = get("unembed.hook_pre");
    lastLogits_ = r.logits[0][T_ - 1].to(at::kCPU, c10::kFloat);

    std::vector<at::Tensor> layers, positions, indices, acts;
    int64_t start = 0;
    targetValue_.resize(L_);
    const CrossLayerTranscoder* clt = replacement_->crossLayer();
    std::vector<at::Tensor> written(L_);  // a cross-layer transcoder: what the layers so far wrote into each layer [T, d]
    for (int64_t l = 0; l < L_; ++l) {
      mlpOut[l] = get(block(l) + "hook_mlp_out");
      at::Tensor mlpConst = at::zeros({d}, mlpOut[l].options());
      layerFeatStart_.push_back(start);
      if (replacement_->has(l)) {
        at::Tensor x = get(replacement_->placement(l).hookIn);
        targetValue_[l] = x;
        at::Tensor a, decoderRows, W_skip;  // activations [T, m]; what one unit of each feature writes [m, targets, d]
        if (clt) {
          const CrossLayerParams& p = clt->params();
          at::Tensor xt = x.to(p.W_enc.options());
          a = clt->activate(l, clt->preActivations(l, xt));
          at::Tensor w = clt->decodeFrom(l, a);  // [T, L - l, d]
          for (int64_t t = l; t < L_; ++t) written[t] = written[t].defined() ? written[t] + w.select(1, t - l) : w.select(1, t - l);
          errors_.push_back(mlpOut[l] - clt->addBiasAndSkip(l, written[l], xt).to(mlpOut[l].options()));
          written[l] = at::Tensor();
          decoderRows = p.W_dec[l];
          mlpConst = p.b_dec[l].to(mlpConst.options());
          if (p.W_skip.defined()) W_skip = p.W_skip[l];
        } else {
          const Transcoder& tc = replacement_->transcoder(l);
          const TranscoderParams& p = tc.params();
          at::Tensor xt = x.to(p.W_enc.options());
          a = tc.encode(xt);  // [T, m]
          errors_.push_back(mlpOut[l] - tc.decode(a, xt).to(mlpOut[l].options()));
          decoderRows = p.W_dec.unsqueeze(1);
          mlpConst = p.b_dec_out.to(mlpConst.options());
          W_skip = p.W_skip;
        }
        at::Tensor nz = a.nonzero();  // [n, 2], sorted by (position, feature)
        at::Tensor pos = nz.select(1, 0), idx = nz.select(1, 1);
        at::Tensor val = a.index({pos, idx}).to(c10::kFloat);
        layerFeatPos_.push_back(pos);
        layerSource_.push_back(
            decoderRows.index_select(0, idx).to(c10::kFloat).mul_(val.to(decoderRows.device()).view({-1, 1, 1})).to(mlpOut[l].device()));
        at::Tensor counts = at::bincount(pos.to(at::kCPU), {}, T_).cumsum(0).to(c10::kLong).contiguous();
        std::vector<int64_t> posStart = {0};
        posStart.insert(posStart.end(), counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + T_);
        layerPosStart_.push_back(std::move(posStart));
        layers.push_back(at::full({nz.size(0)}, l, nz.options()));
        positions.push_back(pos);
        indices.push_back(idx);
        acts.push_back(val);
        start += nz.size(0);
        // What the reconstruction adds whatever the input: the output bias, and the skip path of the
        // input's constant (a raw LayerNorm's bias, when the transcoder reads the MLP input).
        const at::Tensor& beta2 = w.layers[l].ln2B;
        if (W_skip.defined() && beta2.defined() && replacement_->placement(l).input == MlpReplacement::Input::MlpIn)
          mlpConst = mlpConst + at::matmul(beta2.to(W_skip.options()), W_skip).to(mlpConst.options());
      } else {
        errors_.push_back(mlpOut[l]);  // no transcoder: the whole MLP output is an error node
        at::Tensor none = at::zeros({0}, at::TensorOptions().dtype(c10::kLong).device(mlpOut[l].device()));
        layerFeatPos_.push_back(none);
        layerSource_.push_back(at::zeros({0, 1, d}, mlpOut[l].options().dtype(c10::kFloat)));
        layerPosStart_.push_back(std::vector<int64_t>(T_ + 1, 0));
      }
      mlpConst_.push_back(mlpConst);

      // Attention's constant: with the pattern frozen (rows sum to one) the value path of ln1's bias
      // and the value bias is the same at every position: sum_h (beta1 W_V[h] + b_V[h]) W_O[h] + b_O,
      // then through Gemma's frozen post-attention norm.
      const LayerWeights& Lw = w.layers[l];
      const int64_t H = cfg.nHeads, K = cfg.kvHeads();
      at::Tensor W_V = weightByName(w, block(l) + "attn.W_V"), b_V = weightByName(w, block(l) + "attn.b_V");  // [K, d, dh], [K, dh]
      at::Tensor vConst = Lw.ln1B.defined() ? at::matmul(Lw.ln1B, W_V) + b_V : b_V;  // [K, dh]
      vConst = vConst.repeat_interleave(H / K, 0);                                   // [H, dh]
      at::Tensor outConst = (vConst.unsqueeze(-1) * Lw.W_O).sum(at::IntArrayRef{0, 1}) + Lw.b_O;  // [d]
      if (cfg.sandwichNorms) {
        at::Tensor scale = get(block(l) + "ln1_post.hook_scale");  // [T, 1]
        attnConst_.push_back(normGain(cfg, Lw.ln1PostW) * outConst / scale);
      } else {
        attnConst_.push_back(outConst.unsqueeze(0).expand({T_, d}));
      }
    }
    layerFeatStart_.push_back(start);
    auto cat = [](std::vector<at::Tensor>& parts, c10::ScalarType type) {
      return parts.empty() ? at::zeros({0}, at::TensorOptions().dtype(type)) : at::cat(parts).to(at::kCPU, type);
    };
    featLayer_ = cat(layers, c10::kLong);
    featPos_ = cat(positions, c10::kLong);
    featIdx_ = cat(indices, c10::kLong);
    featAct_ = cat(acts, c10::kFloat);
    errorNorms_ = at::stack(errors_).norm(2, -1).reshape({-1}).to(at::kCPU, c10::kFloat);
  }

}

int64_t AttributionGraph::numSources() const { return biasOffset() + L_ + 1; }

at::Tensor AttributionGraph::readingVector(const GraphTarget& t) const {
  const Transformer& model = replacement_->model();
  const ModelConfig& cfg = model.config();
  const at::TensorOptions opts = embed_.options();
  switch (t.kind) {
    case GraphTarget::Kind::Feature: {
      if (t.layer < 0 || t.layer >= L_ || !replacement_->has(t.layer))
        throw InvalidArgument("feature target: layer " + std::to_string(t.layer) + " has no transcoder");
      const int64_t m = replacement_->featureCount(t.layer);
      if (t.index < 0 || t.index >= m)
        throw InvalidArgument("feature target: feature " + std::to_string(t.index) + " is out of range [0, " + std::to_string(m) + ")");
      return encoderColumn(t.layer, t.index).to(opts);
    }
    case GraphTarget::Kind::Logit: {
      if (t.index < 0 || t.index >= cfg.vocabSize)
        throw InvalidArgument("logit target: token id " + std::to_string(t.index) + " is out of range [0, " + std::to_string(cfg.vocabSize) + ")");
      // The demeaned unembedding column, as circuit-tracer: the logit minus the mean logit.
      const at::Tensor& W_U = model.weights().W_U;
      return (W_U.select(1, t.index) - W_U.mean(1)).to(opts);
    }
    case GraphTarget::Kind::Direction:
      if (!t.direction.defined() || t.direction.dim() != 1 || t.direction.size(0) != cfg.dModel)
        throw InvalidArgument("direction target: the direction must have shape [" + std::to_string(cfg.dModel) + "]");
      return t.direction.to(opts);
  }
  return {};
}

double AttributionGraph::ownConstant(const GraphTarget& t, const at::Tensor& u) const {
  const Weights& w = replacement_->model().weights();
  if (t.kind == GraphTarget::Kind::Feature) {
    at::Tensor column = encoderColumn(t.layer, t.index).to(c10::kDouble);
    double c = encoderConstant(t.layer, t.index);
    const at::Tensor& beta2 = w.layers[t.layer].ln2B;
    if (beta2.defined() && replacement_->placement(t.layer).input == MlpReplacement::Input::MlpIn)
      c += at::dot(column, beta2.to(c10::kDouble)).item<double>();
    return c;
  }
  double c = w.lnFinalB.defined() ? at::dot(u.to(c10::kDouble), w.lnFinalB.to(c10::kDouble)).item<double>() : 0.0;
  if (t.kind == GraphTarget::Kind::Logit) c += (w.b_U[t.index] - w.b_U.mean()).item<double>();
  return c;
}

at::Tensor AttributionGraph::encoderColumn(int64_t layer, int64_t feature) const {
  if (const CrossLayerTranscoder* clt = replacement_->crossLayer()) return clt->params().W_enc[layer].select(1, feature);
  return replacement_->transcoder(layer).params().W_enc.select(1, feature);
}

double AttributionGraph::encoderConstant(int64_t layer, int64_t feature) const {
  // b_enc, and a per-layer transcoder's input pre-bias read through its encoder column.
  if (const CrossLayerTranscoder* clt = replacement_->crossLayer()) return clt->params().b_enc[layer][feature].item<double>();
  const TranscoderParams& p = replacement_->transcoder(layer).params();
  return p.b_enc[feature].item<double>() - at::dot(p.W_enc.select(1, feature).to(c10::kDouble), p.b_dec.to(c10::kDouble)).item<double>();
}

void AttributionGraph::contractFeatures(int64_t source, int64_t target, const at::Tensor& gMlp, at::Tensor& R) const {
  const int64_t P = gMlp.size(1), m = gMlp.size(0), d = gMlp.size(2);
  const std::vector<int64_t>& starts = layerPosStart_[source];
  const int64_t n = starts[P];  // features at positions below P (sorted by position)
  if (n == 0) return;
  const at::Tensor V = layerSource_[source].select(1, target - source);  // [n_l, d]: activation x decoder row into `target`
  const int64_t first = layerFeatStart_[source];
  if (n >= kPerPositionProducts * P) {
    // Many features per position: one small GEMM per position, gradient [m, d] x vectors^T.
    for (int64_t p = 0; p < P; ++p) {
      const int64_t a = starts[p], b = starts[p + 1];
      if (b > a) R.narrow(1, first + a, b - a).add_(at::mm(gMlp.select(1, p), V.narrow(0, a, b - a).t()));
    }
    return;
  }
  // Few per position: gather the gradient at each feature's position, in chunks.
  const int64_t chunk = std::max<int64_t>(1, kChunkElements / std::max<int64_t>(1, m * d));
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    const int64_t nc = std::min(chunk, n - c0);
    at::Tensor G = gMlp.index_select(1, layerFeatPos_[source].narrow(0, c0, nc));  // [m, nc, d]
    R.narrow(1, first + c0, nc).add_((G * V.narrow(0, c0, nc).unsqueeze(0)).sum(-1));
  }
}

GraphRows AttributionGraph::rows(const std::vector<GraphTarget>& targets, double threshold, int64_t topK) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const int64_t n = static_cast<int64_t>(targets.size()), S = numSources();
  const Weights& w = replacement_->model().weights();
  // Validate, and order the targets by (layer, position) so that each batch reaches down from as
  // low a layer and over as short a prefix as possible; rows come back in the caller's order.
  std::vector<int64_t> position(n), layerKey(n), order(n);
  std::vector<at::Tensor> reading(n);
  for (int64_t i = 0; i < n; ++i) {
    const GraphTarget& t = targets[i];
    position[i] = t.position < 0 ? T_ + t.position : t.position;
    if (position[i] < 0 || position[i] >= T_) throw InvalidArgument("target position " + std::to_string(t.position) + " is outside the prompt of " + std::to_string(T_) + " tokens");
    layerKey[i] = t.kind == GraphTarget::Kind::Feature ? t.layer : L_;
    reading[i] = readingVector(t);  // throws for a bad layer, feature or token
  }
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return std::make_pair(layerKey[a], position[a]) < std::make_pair(layerKey[b], position[b]); });

  std::vector<std::vector<int32_t>> rowColumns(n);
  std::vector<std::vector<float>> rowValues(n);
  std::vector<double> targetValues(n), dropped(n);
  at::NoGradGuard noGrad;
  for (int64_t start = 0; start < n; start += B_) {
    const int64_t m = std::min(B_, n - start);
    int64_t prefix = 0;
    std::vector<FrozenTranspose::Injection> injections;
    std::vector<int64_t> ownBias(m);
    std::vector<double> own(m);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t k = order[start + i];
      const GraphTarget& t = targets[k];
      const int64_t pos = position[k];
      prefix = std::max(prefix, pos + 1);
      const at::Tensor& u = reading[k];
      own[i] = ownConstant(t, u);
      injections.push_back({i, layerKey[k], pos, u});
      ownBias[i] = layerKey[k];
      if (t.kind == GraphTarget::Kind::Feature) {
        // The feature's pre-activation: its encoder column only (the whole row would read all of
        // W_enc, 75 MB at GPT-2-small width, once per visited feature).
        targetValues[k] = at::dot(targetValue_[t.layer][pos].to(c10::kDouble), encoderColumn(t.layer, t.index).to(c10::kDouble)).item<double>() +
                          encoderConstant(t.layer, t.index);
      } else {
        // The demeaned logit (before any final soft-cap) or the direction's reading of the final norm's output.
        double value = at::dot(u.to(c10::kDouble), finalNormed_[pos].to(c10::kDouble)).item<double>();
        if (t.kind == GraphTarget::Kind::Logit) value += (w.b_U[t.index] - w.b_U.mean()).item<double>();
        targetValues[k] = value;
      }
    }

    // One backward pass over the prefix; each layer's gradients are contracted with its sources.
    at::Tensor R = at::zeros({m, S}, embed_.options().dtype(c10::kFloat));
    const int64_t P = prefix;
    auto contract = [&](const at::Tensor& grad, const at::Tensor& vec) {  // [m, P, d] . [T, d] -> [m, P]
      return (grad * vec.narrow(0, 0, P).to(c10::kFloat).unsqueeze(0)).sum(-1);
    };
    at::Tensor gEmbed = transpose_->backward(m, P, injections, [&](int64_t l, const at::Tensor& gA, const at::Tensor& gM) {
      at::Tensor bias = at::zeros({m}, R.options());
      if (gA.defined()) bias = bias + (gA * attnConst_[l].narrow(0, 0, P).to(c10::kFloat).unsqueeze(0)).sum(at::IntArrayRef{1, 2});
      if (gM.defined()) {
        bias = bias + (gM * mlpConst_[l].to(c10::kFloat)).sum(at::IntArrayRef{1, 2});
        R.narrow(1, errorOffset() + l * T_, P).copy_(contract(gM, errors_[l]));
        // Every layer whose features write into layer l's MLP output: l itself, and with a
        // cross-layer transcoder each layer below it (one column per feature, summed over targets).
        for (int64_t s = 0; s <= l; ++s)
          if (layerSource_[s].size(1) > l - s) contractFeatures(s, l, gM, R);
      }
      R.select(1, biasOffset() + l).copy_(bias);
    });
    R.narrow(1, tokenOffset(), P).copy_(contract(gEmbed, embed_));
    if (hasPositional_) R.narrow(1, positionalOffset(), P).copy_(contract(gEmbed, posEmbed_));

    // Sparse rows: each target's own constant (encoder bias terms; b_U and the final norm's bias)
    // on its layer's bias node, then the non-zeros above the threshold, at most topK of them.
    at::Tensor Rc = R.to(at::kCPU).contiguous();
    float* data = Rc.data_ptr<float>();
    std::vector<int32_t> kept;
    for (int64_t i = 0; i < m; ++i) {
      const int64_t k = order[start + i];
      float* row = data + i * S;
      row[biasOffset() + ownBias[i]] += static_cast<float>(own[i]);
      kept.clear();
      double droppedSum = 0;
      for (int64_t s = 0; s < S; ++s) {
        float v = row[s];
        if (v == 0.0f) continue;
        if (std::abs(v) > threshold) kept.push_back(static_cast<int32_t>(s));
        else droppedSum += std::abs(v);
      }
      if (topK > 0 && static_cast<int64_t>(kept.size()) > topK) {
        std::nth_element(kept.begin(), kept.begin() + topK, kept.end(), [&](int32_t a, int32_t b) { return std::abs(row[a]) > std::abs(row[b]); });
        for (size_t j = topK; j < kept.size(); ++j) droppedSum += std::abs(row[kept[j]]);
        kept.resize(topK);
        std::sort(kept.begin(), kept.end());
      }
      rowColumns[k] = kept;
      rowValues[k].resize(kept.size());
      for (size_t j = 0; j < kept.size(); ++j) rowValues[k][j] = row[kept[j]];
      dropped[k] = droppedSum;
    }
  }

  GraphRows out;
  int64_t nnz = 0;
  for (const auto& c : rowColumns) nnz += static_cast<int64_t>(c.size());
  out.rowStart = at::empty({n + 1}, at::TensorOptions().dtype(c10::kLong));
  out.columns = at::empty({nnz}, at::TensorOptions().dtype(c10::kInt));
  out.values = at::empty({nnz}, at::TensorOptions().dtype(c10::kFloat));
  int64_t* rs = out.rowStart.data_ptr<int64_t>();
  int32_t* cs = out.columns.data_ptr<int32_t>();
  float* vs = out.values.data_ptr<float>();
  rs[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    std::copy(rowColumns[i].begin(), rowColumns[i].end(), cs + rs[i]);
    std::copy(rowValues[i].begin(), rowValues[i].end(), vs + rs[i]);
    rs[i + 1] = rs[i] + static_cast<int64_t>(rowColumns[i].size());
  }
  out.targetValues = at::tensor(targetValues, at::TensorOptions().dtype(c10::kDouble));
  out.droppedMass = at::tensor(dropped, at::TensorOptions().dtype(c10::kDouble));
  return out;
}

}  // namespace tc
