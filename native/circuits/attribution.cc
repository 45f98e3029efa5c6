#include "circuits/attribution.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "core/errors.h"

namespace tc {

namespace {

std::string layerName(int64_t l) { return "blocks." + std::to_string(l) + "."; }

}  // namespace

AttributionContext::AttributionContext(std::shared_ptr<const ReplacementModel> replacement, const at::Tensor& tokens)
    : replacement_(std::move(replacement)) {
  at::NoGradGuard noGrad;
  const Transformer& model = replacement_->model();
  const ModelConfig& cfg = model.config();
  parallel_ = cfg.parallelResidual;
  // LayerNorm weights are present exactly when the model was loaded raw (processing 'none').
  centre_ = cfg.norm == Norm::LayerNorm && model.weights().layers.front().ln1W.defined();
  ForwardOptions o;
  o.logits = false;
  o.hooks.push_back("ln_final.hook_scale");
  for (int64_t l = 0; l < cfg.nLayers; ++l) {
    for (const char* h : {"hook_resid_pre", "hook_resid_post", "ln1.hook_scale", "ln2.hook_scale", "attn.hook_pattern", "attn.hook_v", "hook_mlp_out"})
      o.hooks.push_back(layerName(l) + h);
    if (!parallel_) o.hooks.push_back(layerName(l) + "hook_resid_mid");
    if (cfg.sandwichNorms) o.hooks.push_back(layerName(l) + "ln1_post.hook_scale");
  }
  for (int64_t l : replacement_->layers()) o.hooks.push_back(replacement_->placement(l).hookIn);
  std::sort(o.hooks.begin(), o.hooks.end());
  o.hooks.erase(std::unique(o.hooks.begin(), o.hooks.end()), o.hooks.end());
  at::Tensor ids = tokens.dim() == 2 ? tokens : tokens.unsqueeze(0);
  if (ids.size(0) != 1) throw InvalidArgument("attribution works on one prompt at a time ([T] tokens)");
  ForwardResult r = model.forward(ids, o);
  T_ = ids.size(1);
  auto get = [&](const std::string& name) { return r.cache.at(name)[0]; };
  lnFinalScale_ = get("ln_final.hook_scale").squeeze(-1);
  for (int64_t l = 0; l < cfg.nLayers; ++l) {
    const std::string p = layerName(l);
    residPre_.push_back(get(p + "hook_resid_pre"));
    residMid_.push_back(parallel_ ? at::Tensor() : get(p + "hook_resid_mid"));
    residPost_.push_back(get(p + "hook_resid_post"));
    ln1Scale_.push_back(get(p + "ln1.hook_scale").squeeze(-1));
    ln2Scale_.push_back(get(p + "ln2.hook_scale").squeeze(-1));
    pattern_.push_back(get(p + "attn.hook_pattern"));
    at::Tensor v = get(p + "attn.hook_v");  // [T, K, dh]
    values_.push_back(cfg.kvHeads() == cfg.nHeads ? v : v.repeat_interleave(cfg.nHeads / cfg.kvHeads(), 1));
    if (cfg.sandwichNorms) attnPostScale_.push_back(get(p + "ln1_post.hook_scale").squeeze(-1));
    mlpOut_.push_back(get(p + "hook_mlp_out"));
  }
  for (int64_t l : replacement_->layers()) {
    const Transcoder& tc = replacement_->transcoder(l);
    tcIn_[l] = get(replacement_->placement(l).hookIn);
    acts_[l] = tc.encode(tcIn_[l].to(tc.params().W_enc.options()));
  }
}

at::Tensor AttributionContext::throughNorm(const at::Tensor& u, const at::Tensor& w, double c) const {
  at::Tensor gain = normGain(model().config(), w);
  at::Tensor v = gain.defined() ? u * gain.to(u.options()) : u;
  if (centre_) v = v - v.mean();
  return v * c;
}

double AttributionContext::alongBias(const at::Tensor& u, const at::Tensor& b) {
  return b.defined() ? at::dot(u, b.to(u.options())).item<double>() : 0.0;
}

std::pair<at::Tensor, double> AttributionContext::featureInput(int64_t layer, int64_t feature, int64_t position, double factor) const {
  const TranscoderParams& p = transcoder(layer).params();
  at::Tensor column = p.W_enc.select(1, feature);
  double bias = factor * featureBias(layer, feature);
  if (replacement_->placement(layer).input == MlpReplacement::Input::Residual) return {(column * factor).to(residPre_[0].options()), bias};
  return {throughNorm(column, model().weights().layers[layer].ln2W, factor * lnConstant(layer, position, true)).to(residPre_[0].options()), bias};
}

double AttributionContext::lnConstant(int64_t layer, int64_t position, bool ln2) const {
  if (position < 0 || position >= T_) throw InvalidArgument("position " + std::to_string(position) + " is outside the prompt");
  const int64_t n = model().config().nLayers;
  if (layer == n) return 1.0 / lnFinalScale_[position].item<double>();
  if (layer < 0 || layer > n) throw InvalidArgument("layer " + std::to_string(layer) + " is not a layer of the model");
  return 1.0 / (ln2 ? ln2Scale_ : ln1Scale_)[layer][position].item<double>();
}

const at::Tensor& AttributionContext::residual(int64_t layer, Sublayer s) const {
  if (layer < 0 || layer >= model().config().nLayers) throw InvalidArgument("layer " + std::to_string(layer) + " is not a layer of the model");
  if (s == Sublayer::ResidMid && parallel_) throw InvalidArgument("a parallel block has no resid_mid");
  return s == Sublayer::ResidPre ? residPre_[layer] : s == Sublayer::ResidMid ? residMid_[layer] : residPost_[layer];
}

const Transcoder& AttributionContext::transcoder(int64_t layer) const { return replacement_->transcoder(layer); }

const at::Tensor& AttributionContext::activations(int64_t layer) const {
  transcoder(layer);
  return acts_.at(layer);
}

const at::Tensor& AttributionContext::transcoderOutput(int64_t layer) const {
  const Transcoder& tc = transcoder(layer);
  std::lock_guard<std::mutex> lock(tcOutMutex_);
  auto it = tcOut_.find(layer);
  if (it == tcOut_.end()) {
    at::NoGradGuard noGrad;
    at::Tensor x = tcIn_.at(layer).to(tc.params().W_enc.options());
    it = tcOut_.emplace(layer, tc.decode(acts_.at(layer), x).to(mlpOut_[layer].options())).first;  // reuses the activations
  }
  return it->second;
}

at::Tensor AttributionContext::featureContributions(const at::Tensor& v, int64_t layer, int64_t position) const {
  const Transcoder& tc = transcoder(layer);
  at::Tensor g = at::mv(tc.params().W_dec, v.to(tc.params().W_dec.options()));  // gradient of v . output w.r.t. f
  return g * acts_.at(layer)[position];
}

std::vector<AttributionNode> AttributionContext::featureChildren(const at::Tensor& v, int64_t layer, int64_t position,
                                                                 int64_t k, bool withVectors) const {
  const Transcoder& tc = transcoder(layer);
  at::Tensor g = at::mv(tc.params().W_dec, v.to(tc.params().W_dec.options()));  // gradient of v . output w.r.t. f
  at::Tensor contribs = g * acts_.at(layer)[position];
  auto top = at::topk(contribs, std::min<int64_t>(k, contribs.size(0)));
  at::Tensor indices = std::get<1>(top);
  // One transfer each for the values, indices and gradients of the selected features.
  at::Tensor values = std::get<0>(top).to(c10::kCPU, c10::kDouble), gradients = g.index_select(0, indices).to(c10::kCPU, c10::kDouble);
  indices = indices.cpu();
  std::vector<AttributionNode> out;
  for (int64_t j = 0; j < indices.size(0); ++j) {
    AttributionNode n;
    n.kind = NodeKind::Feature;
    n.layer = layer;
    n.position = position;
    n.feature = indices[j].item<int64_t>();
    n.contrib = values[j].item<double>();
    n.gradient = gradients[j].item<double>();
    n.sublayer = mlpInput();
    if (withVectors) materialize(n, v, position);
    out.push_back(std::move(n));
  }
  return out;
}

void AttributionContext::materialize(AttributionNode& n, const at::Tensor& v, int64_t parentPosition) const {
  switch (n.kind) {
    case NodeKind::Feature: {
      // Feature i's pre-activation reads its encoder column off the residual, scaled by the parent gradient.
      std::tie(n.vector, n.bias) = featureInput(n.layer, n.feature, n.position, n.gradient);
      break;
    }
    case NodeKind::Attention: {
      AttributionNode child = attentionChild(v, n.layer, parentPosition, n.head, n.source, n.contrib);
      n.vector = child.vector;
      n.bias = child.bias;
      break;
    }
    case NodeKind::Embedding: n.vector = v; break;
    case NodeKind::Logit: throw InvalidArgument("a logit is never a child");
  }
}

at::Tensor AttributionContext::beforeAttentionPostNorm(const at::Tensor& v, int64_t layer, int64_t position) const {
  if (attnPostScale_.empty()) return v;
  at::Tensor gain = normGain(model().config(), model().weights().layers[layer].ln1PostW);
  return v * gain.to(v.options()) / attnPostScale_[layer][position].item<double>();
}

at::Tensor AttributionContext::attentionContributions(const at::Tensor& v, int64_t layer, int64_t position) const {
  const at::Tensor W_O = weightByName(model().weights(), "blocks." + std::to_string(layer) + ".attn.W_O");  // [H, dh, d]
  at::Tensor ov = at::matmul(W_O, beforeAttentionPostNorm(v, layer, position).to(W_O.options()));             // [H, dh]
  at::Tensor perSource = (values_[layer] * ov.unsqueeze(0)).sum(-1).t();                                       // [H, T]
  return pattern_[layer].select(1, position) * perSource;
}

AttributionNode AttributionContext::attentionChild(const at::Tensor& v, int64_t layer, int64_t position, int64_t head,
                                                   int64_t source, double contrib) const {
  const std::string p = "blocks." + std::to_string(layer) + ".attn.";
  const Weights& w = model().weights();
  const int64_t kvHead = head / (model().config().nHeads / model().config().kvHeads());  // GQA: the value head it reads
  at::Tensor W_O = weightByName(w, p + "W_O")[head], W_V = weightByName(w, p + "W_V")[kvHead], b_V = weightByName(w, p + "b_V")[kvHead];
  AttributionNode n;
  n.kind = NodeKind::Attention;
  n.layer = layer;
  n.position = source;
  n.source = source;
  n.head = head;
  n.contrib = contrib;
  n.sublayer = Sublayer::ResidPre;
  // OV circuit, the attention weight, and ln1 frozen at the source: n.vector . resid_pre[s] + n.bias = contrib,
  // the bias being what ln1's bias and the value bias carry along the head's output.
  double weight = pattern_[layer][head][position][source].item<double>();
  at::Tensor out = at::mv(W_O, beforeAttentionPostNorm(v, layer, position).to(W_O.options()));  // [dh]
  at::Tensor u = at::mv(W_V, out);                                                           // [d]
  n.vector = throughNorm(u, w.layers[layer].ln1W, weight * lnConstant(layer, source, false)).to(residPre_[0].options());
  n.bias = weight * (alongBias(u, w.layers[layer].ln1B) + at::dot(b_V.to(out.options()), out).item<double>());
  return n;
}

double AttributionContext::embeddingContribution(const at::Tensor& v, int64_t position) const {
  return at::dot(residPre_[0][position], v.to(residPre_[0].options())).item<double>();
}

double AttributionContext::transcoderError(const at::Tensor& v, int64_t layer, int64_t position) const {
  return at::dot(mlpOut_[layer][position] - transcoderOutput(layer)[position], v.to(mlpOut_[layer].options())).item<double>();
}

AttributionNode AttributionContext::featureRoot(int64_t layer, int64_t feature, int64_t position) const {
  const Transcoder& tc = transcoder(layer);
  if (feature < 0 || feature >= tc.spec().dSae)
    throw InvalidArgument("feature " + std::to_string(feature) + " is out of range [0, " + std::to_string(tc.spec().dSae) + ")");
  if (position < 0 || position >= T_) throw InvalidArgument("position " + std::to_string(position) + " is outside the prompt");
  AttributionNode n;
  n.kind = NodeKind::Feature;
  n.layer = layer;
  n.position = position;
  n.feature = feature;
  n.sublayer = mlpInput();
  n.contrib = acts_.at(layer)[position][feature].item<double>();
  std::tie(n.vector, n.bias) = featureInput(layer, feature, position, 1.0);
  return n;
}

AttributionNode AttributionContext::logitRoot(int64_t position, int64_t token, int64_t minus) const {
  const ModelConfig& cfg = model().config();
  if (position < 0 || position >= T_) throw InvalidArgument("position " + std::to_string(position) + " is outside the prompt");
  auto checkToken = [&](int64_t id) {
    if (id < 0 || id >= cfg.vocabSize)
      throw InvalidArgument("token id " + std::to_string(id) + " is out of range [0, " + std::to_string(cfg.vocabSize) + ")");
  };
  checkToken(token);
  if (minus >= 0) checkToken(minus);
  const Weights& w = model().weights();
  const at::Tensor& resid = residPost_[cfg.nLayers - 1][position];
  at::Tensor u = w.W_U.select(1, token).to(resid.options());
  double bU = w.b_U[token].item<double>();
  if (minus >= 0) {
    u = u - w.W_U.select(1, minus).to(resid.options());
    bU -= w.b_U[minus].item<double>();
  }
  AttributionNode n;
  n.kind = NodeKind::Logit;
  n.layer = cfg.nLayers - 1;
  n.position = position;
  n.token = token;
  n.minus = minus;
  n.sublayer = Sublayer::ResidPost;
  n.vector = throughNorm(u, w.lnFinalW, lnConstant(cfg.nLayers, position, false));
  n.bias = alongBias(u, w.lnFinalB) + bU;
  n.contrib = at::dot(n.vector, resid).item<double>() + n.bias;
  return n;
}

double AttributionContext::featureBias(int64_t layer, int64_t feature) const {
  const Transcoder& tc = transcoder(layer);
  if (feature < 0 || feature >= tc.spec().dSae)
    throw InvalidArgument("feature " + std::to_string(feature) + " is out of range [0, " + std::to_string(tc.spec().dSae) + ")");
  const TranscoderParams& p = tc.params();
  at::Tensor column = p.W_enc.select(1, feature).to(c10::kFloat);
  double bias = p.b_enc[feature].item<double>() - at::dot(column, p.b_dec.to(column.options())).item<double>();
  if (replacement_->placement(layer).input == MlpReplacement::Input::MlpIn) bias += alongBias(column, model().weights().layers[layer].ln2B);
  return bias;
}

double AttributionContext::activation(int64_t layer, int64_t position, int64_t feature) const {
  const at::Tensor& a = activations(layer);
  if (position < 0 || position >= T_) throw InvalidArgument("position " + std::to_string(position) + " is outside the prompt");
  if (feature < 0 || feature >= a.size(1)) throw InvalidArgument("feature " + std::to_string(feature) + " is out of range [0, " + std::to_string(a.size(1)) + ")");
  return a[position][feature].item<double>();
}

int64_t AttributionContext::mlpLayersBefore(int64_t layer, Sublayer s) const { return s == Sublayer::ResidPost ? layer + 1 : layer; }

int64_t AttributionContext::attentionLayersBefore(int64_t layer, Sublayer s) const { return s == Sublayer::ResidPre ? layer : layer + 1; }

std::vector<AttributionNode> AttributionContext::children(const AttributionNode& parent, int64_t k, bool ignoreBos,
                                                          double cap, bool keepAll) const {
  at::NoGradGuard noGrad;
  const at::Tensor& v = parent.vector;
  const int64_t t = parent.position;
  // Candidates first (scores only); vectors are built for the ones returned.
  std::vector<AttributionNode> all;
  for (int64_t l = 0; l < mlpLayersBefore(parent.layer, parent.sublayer); ++l) {
    if (!replacement_->has(l)) continue;
    auto kids = featureChildren(v, l, t, k, /*withVectors=*/false);
    all.insert(all.end(), kids.begin(), kids.end());
  }
  for (int64_t l = 0; l < attentionLayersBefore(parent.layer, parent.sublayer); ++l) {
    at::Tensor c = attentionContributions(v, l, t).narrow(1, 0, t + 1);  // causal: sources <= t
    if (ignoreBos) c = c.narrow(1, 1, t);
    if (c.numel() == 0) continue;
    auto top = at::topk(c.reshape({-1}), std::min<int64_t>(k, c.numel()));
    at::Tensor values = std::get<0>(top).to(c10::kCPU, c10::kDouble), indices = std::get<1>(top).cpu();
    const int64_t sources = c.size(1);
    for (int64_t j = 0; j < indices.size(0); ++j) {
      int64_t flat = indices[j].item<int64_t>();
      AttributionNode n;
      n.kind = NodeKind::Attention;
      n.layer = l;
      n.head = flat / sources;
      n.source = n.position = flat % sources + (ignoreBos ? 1 : 0);
      n.contrib = values[j].item<double>();
      n.sublayer = Sublayer::ResidPre;
      all.push_back(std::move(n));
    }
  }
  AttributionNode embed;
  embed.kind = NodeKind::Embedding;
  embed.layer = 0;
  embed.position = t;
  embed.sublayer = Sublayer::ResidPre;
  embed.contrib = embeddingContribution(v, t);
  all.push_back(embed);
  if (std::isfinite(cap)) {
    for (auto& n : all) {
      if (n.contrib > cap) {
        n.contrib = cap;
        n.capped = true;
      }
    }
  }
  std::stable_sort(all.begin(), all.end(), [](const AttributionNode& a, const AttributionNode& b) { return a.contrib > b.contrib; });
  if (!keepAll && static_cast<int64_t>(all.size()) > k) all.resize(k);
  for (auto& n : all) materialize(n, v, t);
  return all;
}

}  // namespace tc
