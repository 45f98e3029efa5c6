// Intra-op thread count for libtorch (OpenMP / native pool) and OpenBLAS.
// OpenMP's count is per OS thread, so a libuv worker keeps whatever it first saw: every Task
// re-applies the wanted count at the start of its work.
#pragma once

namespace tc {

void setNumThreads(int n);
int numThreads();
// Applies the wanted count to the calling thread (cheap when already applied).
void applyThreadSettings();

// How many Tasks execute native work right now (a Task waiting for a JS callback does not count),
// and the most that ever did at once since resetMaxExecuting(): the tests check through this count,
// kept apart from lib/device-queue.ts's own, that the per-device queue really serialises the work.
void workStarted();
void workStopped();
int workExecuting();
int workMaxExecuting();
void resetMaxExecuting();

}  // namespace tc
