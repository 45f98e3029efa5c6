// The feature-statistics functions of feature dashboards (native/features/feature_stats.h), over a
// state held in JS as named tensors (lib/features/feature-stats.ts).
#pragma once
#include <napi.h>

namespace tc {

// { featureStatsInit(options) -> state, featureStatsUpdate(state, acts, rows, options) -> Promise<state> }
Napi::Object featuresExports(Napi::Env env);

}  // namespace tc
