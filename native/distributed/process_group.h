// A process group on libtorch's c10d: the engine PyTorch's torch.distributed runs on, so our workers
// and Python ones can share one group. Rendezvous through a TCPStore (rank 0 hosts it), collectives
// through ProcessGroupGloo (CPU tensors).
//
// The store and group are laid out exactly as torch.distributed.init_process_group lays out its
// default group (torch 1.13, distributed_c10d.py): the TCPStore under PrefixStore("default_pg"), the
// group's own store under a further PrefixStore("0"); after construction the store-based barrier on
// key "store_based_barrier_key:1" and the group's sequence number. A Python process that calls
// init_process_group("gloo", ...) with the same address, port and world size joins our group.
#pragma once
#include <ATen/ATen.h>

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace tc {

// A collective or rendezvous failed (a peer died, a timeout) -> JS DistributedError.
struct DistributedFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct GroupOptions {
  std::string host = "127.0.0.1";
  int port = 29500;
  int rank = 0;
  int size = 1;
  // For the rendezvous and every collective.
  std::chrono::milliseconds timeout{60000};
};

enum class ReduceKind { Sum, Max, Min, Product };

class ProcessGroup {
 public:
  // Joins (rank 0: hosts the store); returns once every rank has joined. Throws DistributedFailure.
  static std::shared_ptr<ProcessGroup> join(const GroupOptions& options);
  ~ProcessGroup();

  int rank() const { return options_.rank; }
  int size() const { return options_.size; }

  // The element-wise reduction of `tensor` over every rank (a new tensor; `tensor` is not changed).
  at::Tensor allReduce(const at::Tensor& tensor, ReduceKind kind);
  // Sums each of `buffers` (contiguous CPU tensors) over every rank, in place: all are started at
  // once (gloo works through them on its threads) and waited for together.
  void allReduceInPlace(std::vector<at::Tensor>& buffers, ReduceKind kind = ReduceKind::Sum);
  // `tensor` of rank `root`, on every rank.
  at::Tensor broadcast(const at::Tensor& tensor, int root);
  void barrier();

 private:
  struct State;  // the c10d store and group (their headers stay out of ours)
  ProcessGroup();
  GroupOptions options_;
  std::unique_ptr<State> state_;
};

}  // namespace tc
