#include "distributed/process_group.h"

#include "core/errors.h"

// The gloo process group needs gloo's headers (CMakeLists.txt finds them) and a libtorch built with
// c10d's gloo (USE_C10D_GLOO, from TorchConfig's flags); without either, joining throws.
#if defined(TRANSCODERS_WITH_GLOO) && defined(USE_C10D_GLOO)
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <c10/util/Exception.h>

#include <thread>
#include <vector>

namespace tc {

struct ProcessGroup::State {
  c10::intrusive_ptr<c10d::Store> store;  // PrefixStore("default_pg", TCPStore)
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
};

ProcessGroup::ProcessGroup() = default;
ProcessGroup::~ProcessGroup() = default;

namespace {

// What torch.distributed names the default group's keys (distributed_c10d.py, torch 1.13).
constexpr const char* kDefaultPrefix = "default_pg";
constexpr const char* kDefaultGroupName = "0";
constexpr const char* kBarrierKey = "store_based_barrier_key:1";

// Runs a c10d call; its failures (c10::Error, gloo's and the store's exceptions) as DistributedFailure.
template <class F>
auto distributed(const std::string& what, F&& f, const char* hint = "") -> decltype(f()) {
  try {
    return f();
  } catch (const InvalidArgument&) {
    throw;
  } catch (const c10::Error& e) {
    throw DistributedFailure(what + ": " + e.what_without_backtrace() + hint);
  } catch (const std::exception& e) {
    throw DistributedFailure(what + ": " + e.what() + hint);
  }
}

c10d::ReduceOp reduceOp(ReduceKind kind) {
  switch (kind) {
    case ReduceKind::Max: return c10d::ReduceOp::MAX;
    case ReduceKind::Min: return c10d::ReduceOp::MIN;
    case ReduceKind::Product: return c10d::ReduceOp::PRODUCT;
    case ReduceKind::Sum: default: return c10d::ReduceOp::SUM;
  }
}

// Why a collective usually fails: said once, after the engine's own message.
constexpr const char* kPeerHint = " (another rank exited, was killed, or did not reach this collective within the timeout)";

void waitFor(const c10::intrusive_ptr<c10d::Work>& work, std::chrono::milliseconds timeout) {
  if (!work->wait(timeout)) throw DistributedFailure("the collective did not complete");
}

}  // namespace

std::shared_ptr<ProcessGroup> ProcessGroup::join(const GroupOptions& o) {
  if (o.size < 1) throw InvalidArgument("worldSize must be at least 1, got " + std::to_string(o.size));
  if (o.rank < 0 || o.rank >= o.size) throw InvalidArgument("rank " + std::to_string(o.rank) + " is outside [0, " + std::to_string(o.size) + ")");
  if (o.port < 1 || o.port > 65535) throw InvalidArgument("port must be in [1, 65535], got " + std::to_string(o.port));
  if (o.timeout.count() < 1) throw InvalidArgument("the timeout must be positive");
  std::shared_ptr<ProcessGroup> pg(new ProcessGroup());
  pg->options_ = o;
  pg->state_ = std::make_unique<State>();
  const std::string where = "rank " + std::to_string(o.rank) + " of " + std::to_string(o.size) + " at " + o.host + ":" + std::to_string(o.port);
  distributed("joining the process group (" + where + ")", [&] {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(o.port);
    so.isServer = o.rank == 0;
    so.numWorkers = static_cast<std::size_t>(o.size);
    so.waitWorkers = true;
    so.timeout = o.timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(o.host, so);
    pg->state_->store = c10::make_intrusive<c10d::PrefixStore>(kDefaultPrefix, tcp);
    auto groupStore = c10::make_intrusive<c10d::PrefixStore>(kDefaultGroupName, pg->state_->store);
    auto options = c10d::ProcessGroupGloo::Options::create(o.timeout);
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    pg->state_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(groupStore, o.rank, o.size, options);
    // init_process_group's store-based barrier, then the group's sequence number (rank 0 sets it).
    auto& store = pg->state_->store;
    store->add(kBarrierKey, 1);
    const auto deadline = std::chrono::steady_clock::now() + o.timeout;
    while (store->add(kBarrierKey, 0) < o.size) {
      if (std::chrono::steady_clock::now() > deadline) throw DistributedFailure("timed out waiting for every rank to join");
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    pg->state_->group->setSequenceNumberForGroup();
  });
  return pg;
}

at::Tensor ProcessGroup::allReduce(const at::Tensor& tensor, ReduceKind kind) {
  if (!tensor.device().is_cpu()) throw InvalidArgument("the gloo process group reduces CPU tensors (this one is on " + tensor.device().str() + ")");
  std::vector<at::Tensor> buffers{tensor.contiguous().clone()};
  return distributed("allReduce on rank " + std::to_string(rank()), [&] {
    c10d::AllreduceOptions ao;
    ao.reduceOp = reduceOp(kind);
    ao.timeout = options_.timeout;
    waitFor(state_->group->allreduce(buffers, ao), options_.timeout);
    return buffers[0];
  }, kPeerHint);
}

void ProcessGroup::allReduceInPlace(std::vector<at::Tensor>& buffers, ReduceKind kind) {
  for (const at::Tensor& b : buffers)
    if (!b.device().is_cpu() || !b.is_contiguous()) throw InvalidArgument("allReduceInPlace takes contiguous CPU tensors");
  distributed("allReduce on rank " + std::to_string(rank()), [&] {
    c10d::AllreduceOptions ao;
    ao.reduceOp = reduceOp(kind);
    ao.timeout = options_.timeout;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    std::vector<std::vector<at::Tensor>> lists;
    lists.reserve(buffers.size());
    for (at::Tensor& b : buffers) {
      lists.push_back({b});
      works.push_back(state_->group->allreduce(lists.back(), ao));
    }
    for (auto& w : works) waitFor(w, options_.timeout);
  }, kPeerHint);
}

at::Tensor ProcessGroup::broadcast(const at::Tensor& tensor, int root) {
  if (root < 0 || root >= size()) throw InvalidArgument("broadcast root " + std::to_string(root) + " is outside [0, " + std::to_string(size()) + ")");
  if (!tensor.device().is_cpu()) throw InvalidArgument("the gloo process group broadcasts CPU tensors");
  std::vector<at::Tensor> buffers{tensor.contiguous().clone()};
  return distributed("broadcast on rank " + std::to_string(rank()), [&] {
    c10d::BroadcastOptions bo;
    bo.rootRank = root;
    bo.timeout = options_.timeout;
    waitFor(state_->group->broadcast(buffers, bo), options_.timeout);
    return buffers[0];
  }, kPeerHint);
}

void ProcessGroup::barrier() {
  distributed("barrier on rank " + std::to_string(rank()), [&] {
    c10d::BarrierOptions bo;
    bo.timeout = options_.timeout;
    waitFor(state_->group->barrier(bo), options_.timeout);
  }, kPeerHint);
}

}  // namespace tc

#else  // no gloo

namespace tc {

struct ProcessGroup::State {};
ProcessGroup::ProcessGroup() = default;
ProcessGroup::~ProcessGroup() = default;

namespace {
[[noreturn]] void unavailable() {
  throw DistributedFailure("this addon was built without c10d's gloo process group (gloo's headers were not found: on Debian, apt-get install libgloo-dev, then npm rebuild transcoders)");
}
}  // namespace

std::shared_ptr<ProcessGroup> ProcessGroup::join(const GroupOptions&) { unavailable(); }
at::Tensor ProcessGroup::allReduce(const at::Tensor&, ReduceKind) { unavailable(); }
void ProcessGroup::allReduceInPlace(std::vector<at::Tensor>&, ReduceKind) { unavailable(); }
at::Tensor ProcessGroup::broadcast(const at::Tensor&, int) { unavailable(); }
void ProcessGroup::barrier() { unavailable(); }

}  // namespace tc

#endif
