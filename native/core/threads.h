// Intra-op thread count for libtorch (OpenMP / native pool) and OpenBLAS.
// OpenMP's count is per OS thread, so a libuv worker keeps whatever it first saw: every Task
// re-applies the wanted count at the start of its work.
#pragma once

namespace tc {

void setNumThreads(int n);
int numThreads();
// Applies the wanted count to the calling thread (cheap when already applied).
void applyThreadSettings();

}  // namespace tc
