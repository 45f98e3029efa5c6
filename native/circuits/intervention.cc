#include "circuits/intervention.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "core/errors.h"

namespace tc {

namespace {

std::string block(int64_t l) { return "blocks." + std::to_string(l) + "."; }

// The hook names of every norm scale of a model (replayed with direct effects).
std::vector<std::string> scaleHooks(const ModelConfig& cfg) {
  std::vector<std::string> out = {"ln_final.hook_scale"};
  for (int64_t l = 0; l < cfg.nLayers; ++l) {
    out.push_back(block(l) + "ln1.hook_scale");
    out.push_back(block(l) + "ln2.hook_scale");
    if (cfg.sandwichNorms) {
      out.push_back(block(l) + "ln1_post.hook_scale");
      out.push_back(block(l) + "ln2_post.hook_scale");
    }
  }
  return out;
}

}  // namespace

InterventionResult intervene(const ReplacementModel& rm, const at::Tensor& tokens, const std::vector<FeatureIntervention>& interventions,
                             const InterventionOptions& options) {
  at::NoGradGuard noGrad;
  const Transformer& model = rm.model();
  const ModelConfig& cfg = model.config();
  at::Tensor ids = model.prepareTokens(tokens);
  if (ids.size(0) != 1) throw InvalidArgument("interventions run on one prompt at a time ([T] tokens)");
  const int64_t T = ids.size(1);
  // Interventions by layer, positions resolved and checked.
  std::map<int64_t, std::vector<FeatureIntervention>> byLayer;
  for (size_t i = 0; i < interventions.size(); ++i) {
    FeatureIntervention v = interventions[i];
    const std::string where = "intervention " + std::to_string(i);
    if (!rm.has(v.layer)) throw InvalidArgument(where + ": layer " + std::to_string(v.layer) + " has no transcoder");
    const int64_t m = rm.featureCount(v.layer);
    if (v.feature < 0 || v.feature >= m) throw InvalidArgument(where + ": feature " + std::to_string(v.feature) + " is out of range [0, " + std::to_string(m) + ")");
    if (v.position < 0) v.position += T;
    if (v.position < 0 || v.position >= T) throw InvalidArgument(where + ": position " + std::to_string(interventions[i].position) + " is outside the prompt of " + std::to_string(T) + " tokens");
    if (!std::isfinite(v.value)) throw InvalidArgument(where + ": the value must be a finite number");
    byLayer[v.layer].push_back(v);
  }
  std::set<int64_t> constrained(options.constrainedLayers.begin(), options.constrainedLayers.end());
  for (int64_t l : constrained)
    if (!rm.has(l)) throw InvalidArgument("constrained layer " + std::to_string(l) + " has no transcoder");

  // The clean run: what frozen quantities replay, and the clean activations.
  ForwardOptions clean;
  clean.logits = false;
  for (int64_t l = 0; l < cfg.nLayers; ++l) {
    if (options.freezeAttention || options.directEffects) clean.hooks.push_back(block(l) + "attn.hook_pattern");
    if (options.directEffects) clean.hooks.push_back(block(l) + "hook_mlp_out");
    if (rm.has(l)) clean.hooks.push_back(rm.placement(l).hookIn);
  }
  if (options.directEffects)
    for (const std::string& h : scaleHooks(cfg)) clean.hooks.push_back(h);
  std::sort(clean.hooks.begin(), clean.hooks.end());
  clean.hooks.erase(std::unique(clean.hooks.begin(), clean.hooks.end()), clean.hooks.end());
  ForwardResult c = model.forward(ids, clean);

  ForwardOptions run;
  for (const auto& [name, t] : c.cache)
    if (name.size() > 12 && (name.rfind("hook_pattern") == name.size() - 12 || name.rfind("hook_scale") == name.size() - 10)) run.replay[name] = t;
  auto result = std::make_shared<InterventionResult>();
  // A cross-layer transcoder: the change of layer l's features reaches every MLP output t >= l.
  std::shared_ptr<CrossLayerTranscoder> clt = rm.crossLayerPtr();
  auto pending = std::make_shared<std::vector<at::Tensor>>(cfg.nLayers);  // per layer: the change written into it so far
  for (int64_t l = 0; l < cfg.nLayers; ++l) {
    if (!rm.has(l) && !options.directEffects) continue;
    MlpReplacement r;
    r.kind = MlpReplacement::Kind::Module;
    r.moduleNeedsOriginal = !options.directEffects;
    at::Tensor cleanOut = options.directEffects ? c.cache.at(block(l) + "hook_mlp_out") : at::Tensor();
    if (!rm.has(l)) {  // direct effects: this MLP's output stays the clean run's
      r.module = [cleanOut](const at::Tensor&, const at::Tensor&) { return cleanOut; };
      run.mlpReplacements[l] = std::move(r);
      continue;
    }
    r.input = rm.placement(l).input;
    if (clt) {
      at::Tensor cleanIn = c.cache.at(rm.placement(l).hookIn);
      const bool frozenActs = options.directEffects || constrained.count(l) > 0;
      std::vector<FeatureIntervention> here = byLayer.count(l) ? byLayer[l] : std::vector<FeatureIntervention>();
      r.module = [clt, cleanIn, cleanOut, frozenActs, here, result, pending, l, direct = options.directEffects](const at::Tensor& in, const at::Tensor& original) {
        const CrossLayerParams& p = clt->params();
        at::Tensor x = in.to(p.W_enc.options())[0];  // [T, d]
        at::Tensor base = frozenActs ? cleanIn.to(p.W_enc.options())[0] : x;
        at::Tensor pre = clt->preActivations(l, base);
        at::Tensor acts = clt->activate(l, pre);
        at::Tensor changed = acts.clone();
        for (const auto& v : here) changed[v.position][v.feature] = v.value;
        at::Tensor written = clt->decodeFrom(l, changed - acts);  // [T, L - l, d]
        std::vector<at::Tensor>& into = *pending;
        for (int64_t t = l; t < static_cast<int64_t>(into.size()); ++t)
          into[t] = into[t].defined() ? into[t] + written.select(1, t - l) : written.select(1, t - l);
        at::Tensor delta = into[l];
        into[l] = at::Tensor();
        at::Tensor out = (direct ? cleanOut[0] : original[0]).to(delta.options()) + delta;
        // The skip path is linear: its change with the (perturbed) input is a direct effect too.
        if (direct && p.W_skip.defined()) out = out + at::matmul(x - cleanIn.to(x.options())[0], p.W_skip[l]);
        result->activations[l] = changed;
        result->preActivations[l] = frozenActs ? clt->preActivations(l, x) : pre;
        return out.to(in.options()).unsqueeze(0);
      };
      run.mlpReplacements[l] = std::move(r);
      continue;
    }
    std::shared_ptr<Transcoder> tc = rm.transcoderPtr(l);
    at::Tensor cleanIn = c.cache.at(rm.placement(l).hookIn);
    const bool frozenActs = options.directEffects || constrained.count(l) > 0;
    std::vector<FeatureIntervention> here = byLayer.count(l) ? byLayer[l] : std::vector<FeatureIntervention>();
    r.module = [tc, cleanIn, cleanOut, frozenActs, here, result, l, direct = options.directEffects](const at::Tensor& in, const at::Tensor& original) {
      const TranscoderParams& p = tc->params();
      at::Tensor x = in.to(p.W_enc.options())[0];                   // [T, d]
      at::Tensor base = frozenActs ? cleanIn.to(p.W_enc.options())[0] : x;
      at::Tensor pre = tc->preActivations(base);
      at::Tensor acts = tc->activate(pre);
      at::Tensor changed = acts.clone();
      for (const auto& v : here) changed[v.position][v.feature] = v.value;
      at::Tensor delta = at::matmul(changed - acts, p.W_dec);        // change of the reconstruction
      at::Tensor out;
      if (direct) {
        out = cleanOut[0].to(delta.options()) + delta;
        // The skip path is linear: its change with the (perturbed) input is a direct effect too.
        if (tc->spec().skip) out = out + at::matmul(x - cleanIn.to(x.options())[0], p.W_skip);
      } else {
        out = original[0].to(delta.options()) + delta;
      }
      result->activations[l] = changed;
      // The pre-activations the current input gives (with frozen activations: what they would be).
      result->preActivations[l] = frozenActs ? tc->preActivations(x) : pre;
      return out.to(in.options()).unsqueeze(0);
    };
    run.mlpReplacements[l] = std::move(r);
  }
  ForwardResult out = model.forward(ids, run);
  result->logits = out.logits[0];
  return std::move(*result);
}

}  // namespace tc
