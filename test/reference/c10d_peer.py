"""A torch.distributed peer for test/distributed.test.ts: joins a gloo group with
torch.distributed.init_process_group (tcp:// rendezvous) and runs the collectives the test runs on
the other ranks, in the same order, printing what it got as JSON. Written from torch.distributed's
documentation; it knows nothing of our implementation.

Usage: c10d_peer.py PORT RANK WORLD_SIZE

Each rank r contributes x_r = arange(6).reshape(2, 3) * (r + 1) + r (float32) and
y_r = [r + 0.5, -(r + 1)] (float64); the broadcast root is the last rank, whose tensor is
[10 * world_size, 7].
"""
import datetime
import json
import sys

import torch
import torch.distributed as dist


def main() -> None:
    port, rank, world = (int(a) for a in sys.argv[1:4])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3) * (rank + 1) + rank
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    y = torch.tensor([rank + 0.5, -float(rank + 1)], dtype=torch.float64)
    dist.all_reduce(y, op=dist.ReduceOp.MAX)
    b = torch.tensor([10.0 * world, 7.0]) if rank == world - 1 else torch.zeros(2)
    dist.broadcast(b, src=world - 1)
    dist.barrier()
    print(json.dumps({"rank": dist.get_rank(), "sum": x.flatten().tolist(), "max": y.tolist(), "broadcast": b.tolist()}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
