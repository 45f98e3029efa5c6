// Feature interventions (circuit-tracer's feature_intervention): run the model with some transcoder
// features set to given values. At each layer with a transcoder the MLP output gets the change of
// the transcoder's reconstruction, decode(activations with the new values) - decode(activations);
// the rest of the model runs as usual. Options freeze the clean run's attention patterns
// (freezeAttention), and with directEffects also every norm scale and every MLP output (except the
// intervention's change and the change of its skip path), so that only the intervened features'
// direct effects through the residual stream remain: exactly what an attribution graph's edges measure.
#pragma once
#include <ATen/Tensor.h>

#include <map>
#include <vector>

#include "circuits/replacement_model.h"

namespace tc {

struct FeatureIntervention {
  int64_t layer = 0, position = 0, feature = 0;
  double value = 0;
};

struct InterventionOptions {
  bool freezeAttention = true;
  bool directEffects = false;
  // Layers whose activations stay at the clean run's values (except the interventions).
  std::vector<int64_t> constrainedLayers;
};

struct InterventionResult {
  at::Tensor logits;                            // [T, V]
  std::map<int64_t, at::Tensor> activations;    // per transcoder layer: [T, m] after the intervention
  std::map<int64_t, at::Tensor> preActivations; // per transcoder layer: [T, m]
};

// `tokens` [T]; positions in the interventions may be negative (-1: the last token).
InterventionResult intervene(const ReplacementModel& replacement, const at::Tensor& tokens,
                             const std::vector<FeatureIntervention>& interventions, const InterventionOptions& options);

}  // namespace tc
