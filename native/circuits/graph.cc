#include "circuits/graph.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/errors.h"

namespace tc {

namespace {

std::string block(int64_t l) { return "blocks." + std::to_string(l) + "."; }

// Contractions of a [B, n, d] gather are done in chunks of at most this many elements.
constexpr int64_t kChunkElements = int64_t{1} << 24;

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

  // 1. The prompt once, without grad: activations, errors, constants, targets' values.
  std::vector<at::Tensor> mlpOut(L_);
  {
    at::NoGradGuard noGrad;
    ForwardOptions o;
    o.hooks = {"hook_embed", "unembed.hook_pre"};
    if (hasPositional_) o.hooks.push_back("hook_pos_embed");
    for (int64_t l = 0; l < L_; ++l) {
      o.hooks.push_back(block(l) + "hook_mlp_out");
      if (cfg.sandwichNorms) o.hooks.push_back(block(l) + "ln1_post.hook_scale");
      if (replacement_->has(l)) o.hooks.push_back(replacement_->placement(l).hookIn);
    }
    std::sort(o.hooks.begin(), o.hooks.end());
    o.hooks.erase(std::unique(o.hooks.begin(), o.hooks.end()), o.hooks.end());
    ForwardResult r = model.forward(ids, o);
    auto get = [&](const std::string& name) { return r.cache.at(name)[0]; };
    embed_ = get("hook_embed");
    if (hasPositional_) posEmbed_ = get("hook_pos_embed");
    finalNormed_ = get("unembed.hook_pre");
    lastLogits_ = r.logits[0][T_ - 1].to(at::kCPU, c10::kFloat);

    std::vector<at::Tensor> layers, positions, indices, acts;
    int64_t start = 0;
    targetValue_.resize(L_);
    for (int64_t l = 0; l < L_; ++l) {
      mlpOut[l] = get(block(l) + "hook_mlp_out");
      at::Tensor mlpConst = at::zeros({d}, mlpOut[l].options());
      layerFeatStart_.push_back(start);
      if (replacement_->has(l)) {
        const Transcoder& tc = replacement_->transcoder(l);
        const TranscoderParams& p = tc.params();
        at::Tensor x = get(replacement_->placement(l).hookIn);
        targetValue_[l] = x;
        at::Tensor xt = x.to(p.W_enc.options());
        at::Tensor a = tc.encode(xt);  // [T, m]
        errors_.push_back(mlpOut[l] - tc.decode(a, xt).to(mlpOut[l].options()));
        at::Tensor nz = a.nonzero();  // [n, 2], sorted by (position, feature)
        at::Tensor pos = nz.select(1, 0), idx = nz.select(1, 1);
        at::Tensor val = a.index({pos, idx}).to(c10::kFloat);
        layerFeatPos_.push_back(pos);
        layerDecoder_.push_back(p.W_dec.index_select(0, idx).to(mlpOut[l].options()));
        layerAct_.push_back(val.to(mlpOut[l].device()));
        layers.push_back(at::full({nz.size(0)}, l, nz.options()));
        positions.push_back(pos);
        indices.push_back(idx);
        acts.push_back(val);
        start += nz.size(0);
        // What the reconstruction adds whatever the input: b_dec_out, and the skip path of the
        // input's constant (a raw LayerNorm's bias, when the transcoder reads the MLP input).
        mlpConst = p.b_dec_out.to(mlpConst.options());
        const at::Tensor& beta2 = w.layers[l].ln2B;
        if (tc.spec().skip && beta2.defined() && replacement_->placement(l).input == MlpReplacement::Input::MlpIn)
          mlpConst = mlpConst + at::matmul(beta2.to(p.W_skip.options()), p.W_skip).to(mlpConst.options());
      } else {
        errors_.push_back(mlpOut[l]);  // no transcoder: the whole MLP output is an error node
        at::Tensor none = at::zeros({0}, at::TensorOptions().dtype(c10::kLong).device(mlpOut[l].device()));
        layerFeatPos_.push_back(none);
        layerDecoder_.push_back(at::zeros({0, d}, mlpOut[l].options()));
        layerAct_.push_back(at::zeros({0}, mlpOut[l].options().dtype(c10::kFloat)));
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

  // 2. The prompt as B copies with grad through the frozen model: MLPs contribute their real output
  //    as a constant, plus the transcoder's skip path (value zero, gradient the skip's).
  ForwardOptions g;
  g.grad = true;
  g.freeze = true;
  g.embeddingLeaves = true;
  g.logits = false;
  g.hooks = {"hook_embed", "unembed.hook_pre"};
  if (hasPositional_) g.hooks.push_back("hook_pos_embed");
  for (int64_t l = 0; l < L_; ++l) {
    g.hooks.push_back(block(l) + "hook_attn_out");
    g.hooks.push_back(block(l) + "hook_mlp_out");
    if (replacement_->has(l)) g.hooks.push_back(replacement_->placement(l).hookIn);
    MlpReplacement r;
    r.kind = MlpReplacement::Kind::Module;
    r.moduleNeedsOriginal = false;
    at::Tensor cached = mlpOut[l];
    if (replacement_->has(l) && replacement_->transcoder(l).spec().skip) {
      std::shared_ptr<Transcoder> tc = replacement_->transcoderPtr(l);
      r.input = replacement_->placement(l).input;
      r.module = [tc, cached](const at::Tensor& in, const at::Tensor&) {
        at::Tensor skip = at::matmul(in.to(tc->params().W_skip.options()), tc->params().W_skip).to(in.options());
        return cached + (skip - skip.detach());
      };
    } else {
      if (replacement_->has(l)) r.input = replacement_->placement(l).input;
      // A leaf: no gradient passes through this MLP, but backward passes can still read the
      // gradient arriving at its output.
      r.module = [cached](const at::Tensor& in, const at::Tensor&) {
        return cached.unsqueeze(0).expand({in.size(0), cached.size(0), cached.size(1)}).clone().requires_grad_(true);
      };
    }
    g.mlpReplacements[l] = std::move(r);
  }
  std::sort(g.hooks.begin(), g.hooks.end());
  g.hooks.erase(std::unique(g.hooks.begin(), g.hooks.end()), g.hooks.end());
  ForwardResult r = model.forward(ids.expand({B_, T_}).contiguous(), g);
  gEmbed_ = r.cache.at("hook_embed");
  if (hasPositional_) gPos_ = r.cache.at("hook_pos_embed");
  gFinal_ = r.cache.at("unembed.hook_pre");
  gInput_.resize(L_);
  for (int64_t l = 0; l < L_; ++l) {
    gAttnOut_.push_back(r.cache.at(block(l) + "hook_attn_out"));
    gMlpOut_.push_back(r.cache.at(block(l) + "hook_mlp_out"));
    if (replacement_->has(l)) gInput_[l] = r.cache.at(replacement_->placement(l).hookIn);
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
      const Transcoder& tc = replacement_->transcoder(t.layer);
      if (t.index < 0 || t.index >= tc.spec().dSae)
        throw InvalidArgument("feature target: feature " + std::to_string(t.index) + " is out of range [0, " + std::to_string(tc.spec().dSae) + ")");
      return tc.params().W_enc.select(1, t.index).to(opts);
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
    const TranscoderParams& p = replacement_->transcoder(t.layer).params();
    at::Tensor column = p.W_enc.select(1, t.index).to(c10::kDouble);
    double c = p.b_enc[t.index].item<double>() - at::dot(column, p.b_dec.to(c10::kDouble)).item<double>();
    const at::Tensor& beta2 = w.layers[t.layer].ln2B;
    if (beta2.defined() && replacement_->placement(t.layer).input == MlpReplacement::Input::MlpIn)
      c += at::dot(column, beta2.to(c10::kDouble)).item<double>();
    return c;
  }
  double c = w.lnFinalB.defined() ? at::dot(u.to(c10::kDouble), w.lnFinalB.to(c10::kDouble)).item<double>() : 0.0;
  if (t.kind == GraphTarget::Kind::Logit) c += (w.b_U[t.index] - w.b_U.mean()).item<double>();
  return c;
}

GraphRows AttributionGraph::rows(const std::vector<GraphTarget>& targets, double threshold, int64_t topK) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const int64_t n = static_cast<int64_t>(targets.size()), S = numSources(), d = embed_.size(-1);
  std::vector<int64_t> rowStart = {0}, columns;
  std::vector<float> values;
  std::vector<double> targetValues, dropped;
  for (int64_t start = 0; start < n; start += B_) {
    const int64_t m = std::min(B_, n - start);
    // Reading vectors injected as output gradients, batch element i for target start + i.
    std::map<int64_t, at::Tensor> inputGrads;
    at::Tensor finalGrad;
    std::vector<int64_t> ownBias(m);
    std::vector<double> own(m);
    for (int64_t i = 0; i < m; ++i) {
      const GraphTarget& t = targets[start + i];
      const int64_t pos = t.position < 0 ? T_ + t.position : t.position;
      if (pos < 0 || pos >= T_) throw InvalidArgument("target position " + std::to_string(t.position) + " is outside the prompt of " + std::to_string(T_) + " tokens");
      at::Tensor u = readingVector(t);
      own[i] = ownConstant(t, u);
      at::NoGradGuard noGrad;
      if (t.kind == GraphTarget::Kind::Feature) {
        at::Tensor& G = inputGrads[t.layer];
        if (!G.defined()) G = at::zeros_like(gInput_[t.layer]);
        G[i][pos].copy_(u);
        ownBias[i] = t.layer;
        const Transcoder& tc = replacement_->transcoder(t.layer);
        at::Tensor x = targetValue_[t.layer][pos].to(tc.params().W_enc.options()).unsqueeze(0);
        targetValues.push_back(tc.preActivations(x)[0][t.index].item<double>());
      } else {
        if (!finalGrad.defined()) finalGrad = at::zeros_like(gFinal_);
        finalGrad[i][pos].copy_(u);
        ownBias[i] = L_;
        // The demeaned logit (before any final soft-cap) or the direction's reading of the final norm's output.
        double value = at::dot(u.to(c10::kDouble), finalNormed_[pos].to(c10::kDouble)).item<double>();
        if (t.kind == GraphTarget::Kind::Logit) {
          const at::Tensor& b_U = replacement_->model().weights().b_U;
          value += (b_U[t.index] - b_U.mean()).item<double>();
        }
        targetValues.push_back(value);
      }
    }
    std::vector<at::Tensor> outputs, gradOutputs;
    for (auto& [layer, G] : inputGrads) outputs.push_back(gInput_[layer]), gradOutputs.push_back(G);
    if (finalGrad.defined()) outputs.push_back(gFinal_), gradOutputs.push_back(finalGrad);
    std::vector<at::Tensor> inputs = {gEmbed_};
    if (hasPositional_) inputs.push_back(gPos_);
    for (int64_t l = 0; l < L_; ++l) inputs.push_back(gAttnOut_[l]), inputs.push_back(gMlpOut_[l]);
    std::vector<at::Tensor> grads;
    {
      at::AutoGradMode enable(true);
      grads = torch::autograd::grad(outputs, inputs, gradOutputs, /*retain_graph=*/true, /*create_graph=*/false, /*allow_unused=*/true);
    }
    at::NoGradGuard noGrad;
    auto f32 = [](const at::Tensor& t) { return t.defined() ? t.to(c10::kFloat) : t; };
    at::Tensor R = at::zeros({B_, S}, embed_.options().dtype(c10::kFloat));
    auto contract = [&](const at::Tensor& grad, const at::Tensor& vec) {  // [B, T, d] . [T, d] -> [B, T]
      return (f32(grad) * vec.to(c10::kFloat).unsqueeze(0)).sum(-1);
    };
    size_t gi = 0;
    at::Tensor gE = f32(grads[gi++]);
    if (gE.defined()) R.narrow(1, tokenOffset(), T_).copy_(contract(gE, embed_));
    if (hasPositional_) {
      at::Tensor gP = f32(grads[gi++]);
      if (gP.defined()) R.narrow(1, positionalOffset(), T_).copy_(contract(gP, posEmbed_));
    }
    for (int64_t l = 0; l < L_; ++l) {
      at::Tensor gA = f32(grads[gi++]), gM = f32(grads[gi++]);
      at::Tensor bias = at::zeros({B_}, R.options());
      if (gA.defined()) bias = bias + (gA * attnConst_[l].to(c10::kFloat).unsqueeze(0)).sum(at::IntArrayRef{1, 2});
      if (!gM.defined()) {
        R.select(1, biasOffset() + l).copy_(bias);
        continue;
      }
      bias = bias + (gM * mlpConst_[l].to(c10::kFloat)).sum(at::IntArrayRef{1, 2});
      R.select(1, biasOffset() + l).copy_(bias);
      R.narrow(1, errorOffset() + l * T_, T_).copy_(contract(gM, errors_[l]));
      // Features: activation x (decoder row . gradient at the feature's position), in chunks.
      const int64_t nl = layerFeatPos_[l].size(0);
      const int64_t chunk = std::max<int64_t>(1, kChunkElements / std::max<int64_t>(1, B_ * d));
      for (int64_t c0 = 0; c0 < nl; c0 += chunk) {
        const int64_t nc = std::min(chunk, nl - c0);
        at::Tensor G = gM.index_select(1, layerFeatPos_[l].narrow(0, c0, nc));              // [B, nc, d]
        at::Tensor D = layerDecoder_[l].narrow(0, c0, nc).to(c10::kFloat);                  // [nc, d]
        R.narrow(1, layerFeatStart_[l] + c0, nc).copy_((G * D.unsqueeze(0)).sum(-1) * layerAct_[l].narrow(0, c0, nc));
      }
    }
    // Each target's own constant (encoder bias terms; b_U and the final norm's bias) on its layer's bias node.
    at::Tensor Rc = R.narrow(0, 0, m).to(at::kCPU).contiguous();
    float* data = Rc.data_ptr<float>();
    std::vector<int64_t> order(S);
    for (int64_t i = 0; i < m; ++i) {
      float* row = data + i * S;
      row[biasOffset() + ownBias[i]] += static_cast<float>(own[i]);
      std::vector<int64_t> kept;
      double droppedSum = 0;
      for (int64_t s = 0; s < S; ++s) {
        float v = row[s];
        if (v != 0.0f && std::abs(v) > threshold) kept.push_back(s);
        else droppedSum += std::abs(v);
      }
      if (topK > 0 && static_cast<int64_t>(kept.size()) > topK) {
        std::nth_element(kept.begin(), kept.begin() + topK, kept.end(), [&](int64_t a, int64_t b) { return std::abs(row[a]) > std::abs(row[b]); });
        for (size_t j = topK; j < kept.size(); ++j) droppedSum += std::abs(row[kept[j]]);
        kept.resize(topK);
        std::sort(kept.begin(), kept.end());
      }
      for (int64_t s : kept) columns.push_back(s), values.push_back(row[s]);
      rowStart.push_back(static_cast<int64_t>(columns.size()));
      dropped.push_back(droppedSum);
    }
  }
  GraphRows out;
  auto i64 = at::TensorOptions().dtype(c10::kLong);
  out.rowStart = at::tensor(rowStart, i64);
  out.columns = columns.empty() ? at::zeros({0}, i64) : at::tensor(columns, i64);
  out.values = values.empty() ? at::zeros({0}, at::TensorOptions().dtype(c10::kFloat)) : at::tensor(values, at::TensorOptions().dtype(c10::kFloat));
  out.targetValues = at::tensor(targetValues, at::TensorOptions().dtype(c10::kDouble));
  out.droppedMass = at::tensor(dropped, at::TensorOptions().dtype(c10::kDouble));
  return out;
}

}  // namespace tc
