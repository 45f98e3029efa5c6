#include "core/threads.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <atomic>
#include <thread>

namespace tc {

namespace {

int defaultThreads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

std::atomic<int> wanted{defaultThreads()};
std::atomic<int> blasApplied{-1};
thread_local int appliedHere = -1;

// at::set_num_threads does not govern OpenBLAS; call its setter when the library is loaded.
void applyBlasThreads(int n) {
  if (blasApplied.exchange(n) == n) return;
  using Setter = void (*)(int);
  if (auto set = reinterpret_cast<Setter>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(n);
}

std::atomic<int> executing{0};
std::atomic<int> maxExecuting{0};

}  // namespace

void setNumThreads(int n) { wanted.store(n < 1 ? 1 : n); }

int numThreads() { return wanted.load(); }

void applyThreadSettings() {
  int n = wanted.load();
  if (appliedHere != n) {
    at::set_num_threads(n);
    appliedHere = n;
  }
  applyBlasThreads(n);
}

void workStarted() {
  int now = executing.fetch_add(1) + 1;
  int seen = maxExecuting.load();
  while (now > seen && !maxExecuting.compare_exchange_weak(seen, now)) {
  }
}

void workStopped() { executing.fetch_sub(1); }

int workExecuting() { return executing.load(); }

int workMaxExecuting() { return maxExecuting.load(); }

void resetMaxExecuting() { maxExecuting.store(executing.load()); }

}  // namespace tc
