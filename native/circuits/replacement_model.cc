#include "circuits/replacement_model.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <shared_mutex>

#include "core/errors.h"
#include "model/hooks.h"
#include "transcoder/topk.h"

namespace tc {

namespace {

std::string block(int64_t layer) { return "blocks." + std::to_string(layer) + "."; }

}  // namespace

MlpReplacement::Input inputOfHook(const std::string& hookIn) {
  auto endsWith = [&](const std::string& suffix) {
    return hookIn.size() >= suffix.size() && hookIn.compare(hookIn.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return endsWith(".hook_resid_mid") || endsWith(".hook_resid_pre") ? MlpReplacement::Input::Residual : MlpReplacement::Input::MlpIn;
}

Placement resolvePlacement(const Transformer& model, const TranscoderSpec& spec) {
  const ModelConfig& cfg = model.config();
  const int64_t L = spec.layer;
  if (L < 0 || L >= cfg.nLayers)
    throw InvalidArgument("a transcoder for layer " + std::to_string(L) + ", but the model has layers 0.." + std::to_string(cfg.nLayers - 1) +
                          (L < 0 ? " (the transcoder records no layer: set its config.layer)" : ""));
  Placement p;
  p.layer = L;
  p.hookIn = spec.hookIn.empty() ? block(L) + "ln2.hook_normalized" : spec.hookIn;
  p.hookOut = spec.hookOut.empty() ? block(L) + "hook_mlp_out" : spec.hookOut;
  const std::string what = "the layer-" + std::to_string(L) + " transcoder (" + p.hookIn + " -> " + p.hookOut + ")";
  const std::vector<std::string> names = hookNames(cfg);
  for (const std::string* hook : {&p.hookIn, &p.hookOut})
    if (std::find(names.begin(), names.end(), *hook) == names.end())
      throw InvalidArgument(what + ": the model has no hook " + *hook +
                            (cfg.parallelResidual && hook->find("hook_resid_mid") != std::string::npos
                                 ? " (its attention and MLP run in parallel: the MLP reads hook_resid_pre)"
                                 : ""));
  // The residual the MLP's LayerNorm reads: resid_mid in sequential blocks, resid_pre in parallel ones.
  const std::string residual = block(L) + (cfg.parallelResidual ? "hook_resid_pre" : "hook_resid_mid");
  p.input = inputOfHook(p.hookIn);
  if (p.hookIn != block(L) + "ln2.hook_normalized" && p.hookIn != block(L) + "mlp.hook_in" && p.hookIn != residual)
    throw InvalidArgument(what + " does not replace layer " + std::to_string(L) + "'s MLP: a transcoder reads " + block(L) +
                          "ln2.hook_normalized, " + block(L) + "mlp.hook_in or " + residual);
  // TransformerLens's RMSNorm hook_normalized is x / scale, before the gain: on a raw RMSNorm model it
  // is not what the MLP receives.
  if (p.hookIn == block(L) + "ln2.hook_normalized" && cfg.norm == Norm::RMSNorm && model.weights().layers[L].ln2W.defined())
    throw InvalidArgument(what + ": on an RMSNorm model loaded raw, ln2.hook_normalized is the norm's output before its gain "
                          "(TransformerLens's convention), not the MLP's input; transcoders of the MLP input read " + block(L) +
                          "mlp.hook_in (or load the model with processing 'transformerlens', which folds the gain)");
  if (p.hookOut != block(L) + "hook_mlp_out" && p.hookOut != block(L) + "mlp.hook_out")
    throw InvalidArgument(what + " does not replace layer " + std::to_string(L) + "'s MLP: a transcoder writes " + block(L) +
                          "hook_mlp_out or " + block(L) + "mlp.hook_out");
  if (spec.dIn != cfg.dModel || spec.dOut != cfg.dModel)
    throw InvalidArgument(what + " has dIn " + std::to_string(spec.dIn) + " and dOut " + std::to_string(spec.dOut) +
                          "; the model's width is " + std::to_string(cfg.dModel));
  return p;
}

MlpReplacement transcoderReplacement(std::shared_ptr<Transcoder> tc, MlpReplacement::Input input, const at::Tensor& keep) {
  if (keep.defined() && (keep.dim() != 1 || keep.size(0) != tc->spec().dSae))
    throw InvalidArgument("a feature mask must have shape [" + std::to_string(tc->spec().dSae) + "], got " + c10::str(keep.sizes()));
  MlpReplacement r;
  r.kind = MlpReplacement::Kind::Module;
  r.input = input;
  r.moduleNeedsOriginal = false;
  at::Tensor mask = keep.defined() ? keep.to(tc->params().W_enc.options()) : at::Tensor();
  // A native transcoder runs inside the forward on the worker: no round trip to JS.
  r.module = [tc, mask](const at::Tensor& in, const at::Tensor&) {
    std::shared_lock lock(tc->mutex());
    at::Tensor x = in.to(tc->params().W_enc.options());
    if (!mask.defined()) return tc->forward(x).to(in.options());
    std::vector<int64_t> shape(in.sizes().begin(), in.sizes().end());
    shape.back() = tc->spec().dOut;
    return tc->decode(tc->encode(x) * mask, x).view(shape).to(in.options());
  };
  return r;
}

ReplacementModel::ReplacementModel(std::shared_ptr<const Transformer> model, const std::vector<std::shared_ptr<Transcoder>>& transcoders)
    : model_(std::move(model)) {
  if (transcoders.empty()) throw InvalidArgument("a replacement model needs at least one transcoder");
  for (const auto& tc : transcoders) {
    if (!tc) throw InvalidArgument("a replacement model's transcoders must be Transcoders");
    Placement p = resolvePlacement(*model_, tc->spec());
    if (slots_.count(p.layer)) throw InvalidArgument("two transcoders for layer " + std::to_string(p.layer));
    if (tc->params().W_enc.device() != model_->device())
      throw InvalidArgument("the layer-" + std::to_string(p.layer) + " transcoder is on " + tc->params().W_enc.device().str() +
                            ", the model on " + model_->device().str() + ": load both on one device");
    slots_.emplace(p.layer, Slot{tc, std::move(p)});
  }
}

ReplacementModel::ReplacementModel(std::shared_ptr<const Transformer> model, std::shared_ptr<CrossLayerTranscoder> crossLayer)
    : model_(std::move(model)), crossLayer_(std::move(crossLayer)) {
  if (!crossLayer_) throw InvalidArgument("a replacement model needs a cross-layer transcoder");
  if (crossLayer_->params().W_enc.device() != model_->device())
    throw InvalidArgument("the cross-layer transcoder is on " + crossLayer_->params().W_enc.device().str() + ", the model on " +
                          model_->device().str() + ": load both on one device");
  for (Placement& p : resolveCrossLayerPlacements(*model_, crossLayer_->spec())) slots_.emplace(p.layer, Slot{nullptr, std::move(p)});
}

int64_t ReplacementModel::featureCount(int64_t layer) const {
  if (crossLayer_) return crossLayer_->spec().dSae;
  return transcoder(layer).spec().dSae;
}

at::Tensor ReplacementModel::skipWeight(int64_t layer) const {
  if (crossLayer_) return crossLayer_->params().W_skip.defined() ? crossLayer_->params().W_skip[layer] : at::Tensor();
  return has(layer) ? transcoder(layer).params().W_skip : at::Tensor();
}

std::vector<std::shared_lock<std::shared_mutex>> ReplacementModel::readLocks() const {
  std::vector<std::shared_lock<std::shared_mutex>> locks;
  if (crossLayer_) locks.emplace_back(crossLayer_->mutex());
  for (const auto& [layer, slot] : slots_)
    if (slot.transcoder) locks.emplace_back(slot.transcoder->mutex());
  return locks;
}

std::vector<int64_t> ReplacementModel::layers() const {
  std::vector<int64_t> out;
  for (const auto& [layer, slot] : slots_) out.push_back(layer);
  return out;
}

const ReplacementModel::Slot& ReplacementModel::slot(int64_t layer) const {
  auto it = slots_.find(layer);
  if (it == slots_.end()) throw InvalidArgument("no transcoder for layer " + std::to_string(layer));
  return it->second;
}

const Transcoder& ReplacementModel::transcoder(int64_t layer) const { return *transcoderPtr(layer); }
const std::shared_ptr<Transcoder>& ReplacementModel::transcoderPtr(int64_t layer) const {
  const Slot& s = slot(layer);
  if (!s.transcoder)
    throw InvalidArgument("layer " + std::to_string(layer) + "'s MLP is replaced by a cross-layer transcoder, not a transcoder of its own; " +
                          "this analysis takes per-layer transcoders");
  return s.transcoder;
}
const Placement& ReplacementModel::placement(int64_t layer) const { return slot(layer).placement; }

MlpReplacement ReplacementModel::replacement(int64_t layer, const at::Tensor& keep) const {
  const Slot& s = slot(layer);
  transcoderPtr(layer);  // a cross-layer transcoder replaces every layer at once (crossLayerReplacements)
  return transcoderReplacement(s.transcoder, s.placement.input, keep);
}

}  // namespace tc

namespace tc {

std::vector<Placement> resolveCrossLayerPlacements(const Transformer& model, const CrossLayerSpec& spec) {
  if (spec.nLayers != model.config().nLayers)
    throw InvalidArgument("a cross-layer transcoder of " + std::to_string(spec.nLayers) + " layers, but the model has " +
                          std::to_string(model.config().nLayers) + ": a CLT replaces every MLP of its model");
  std::vector<Placement> out;
  for (int64_t l = 0; l < spec.nLayers; ++l) {
    TranscoderSpec layer;
    layer.dIn = spec.dIn;
    layer.dOut = spec.dOut;
    layer.layer = l;
    if (!spec.hookIn.empty()) layer.hookIn = spec.hookIn[l];
    if (!spec.hookOut.empty()) layer.hookOut = spec.hookOut[l];
    out.push_back(resolvePlacement(model, layer));
    if (out.back().input != out.front().input)
      throw InvalidArgument("a cross-layer transcoder reads one kind of hook at every layer; layer 0 reads " + out.front().hookIn +
                            ", layer " + std::to_string(l) + " " + out.back().hookIn);
  }
  return out;
}

std::map<int64_t, MlpReplacement> crossLayerReplacements(std::shared_ptr<CrossLayerTranscoder> clt, MlpReplacement::Input input,
                                                         const at::Tensor& keep) {
  const CrossLayerSpec& spec = clt->spec();
  if (keep.defined() && (keep.dim() != 2 || keep.size(0) != spec.nLayers || keep.size(1) != spec.dSae))
    throw InvalidArgument("a cross-layer feature mask must have shape [" + std::to_string(spec.nLayers) + ", " + std::to_string(spec.dSae) +
                          "], got " + c10::str(keep.sizes()));
  // What the layers run so far wrote into each later layer, [rows, d_out] per target layer.
  struct Written {
    std::vector<at::Tensor> into;
    int64_t next = 0;
  };
  auto written = std::make_shared<Written>();
  at::Tensor mask = keep.defined() ? keep.to(clt->params().W_enc.options()) : at::Tensor();
  std::map<int64_t, MlpReplacement> out;
  for (int64_t l = 0; l < spec.nLayers; ++l) {
    MlpReplacement r;
    r.kind = MlpReplacement::Kind::Module;
    r.input = input;
    r.moduleNeedsOriginal = false;
    r.module = [clt, mask, written, l](const at::Tensor& in, const at::Tensor&) {
      const CrossLayerSpec& spec = clt->spec();
      const int64_t L = spec.nLayers;
      // Layer 0 starts every forward; the layers then run in order.
      if (l == 0) *written = Written{std::vector<at::Tensor>(L), 0};
      if (written->next != l)
        throw InvalidArgument("a cross-layer transcoder's replacements must run every layer in order: layer " + std::to_string(l) +
                              " ran after layer " + std::to_string(written->next - 1));
      std::shared_lock lock(clt->mutex());
      at::Tensor x = in.to(clt->params().W_enc.options()).reshape({-1, spec.dIn});
      at::Tensor pre = clt->preActivations(l, x);
      at::Tensor contribution;
      if (spec.arch == TranscoderArch::TopK && !mask.defined()) {
        at::Tensor idx = topkIndices(pre, spec.k);
        contribution = clt->decodeFromTopK(l, idx, at::relu(pre.gather(-1, idx)));
      } else {
        at::Tensor f = clt->activate(l, pre);
        if (mask.defined()) f = f * mask[l];
        contribution = clt->decodeFrom(l, f);
      }
      for (int64_t t = l; t < L; ++t) {
        at::Tensor part = contribution.select(1, t - l);
        written->into[t] = written->into[t].defined() ? written->into[t] + part : part;
      }
      at::Tensor y = clt->addBiasAndSkip(l, written->into[l], x);
      written->into[l] = at::Tensor();
      ++written->next;
      std::vector<int64_t> shape(in.sizes().begin(), in.sizes().end());
      shape.back() = spec.dOut;
      return y.view(shape).to(in.options());
    };
    out.emplace(l, std::move(r));
  }
  return out;
}

}  // namespace tc
