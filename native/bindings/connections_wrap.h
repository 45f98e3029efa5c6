// Bindings of the input-invariant connections (native/circuits/connections.h), exported as the
// addon's `Connections` object and typed by lib/circuits/connections.ts.
#pragma once
#include <napi.h>

namespace tc {

// { featureConnections, deEmbedding, logitEffects, logitEffectsOn, topkConnections, gemmGflops }: each returns a Promise.
Napi::Object connectionsExports(Napi::Env env);

}  // namespace tc
