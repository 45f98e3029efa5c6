"""torch.distributed's gloo all-reduce of one training step's gradients, for bench/train_distributed.ts.

Written from the torch.distributed documentation (init_process_group, all_reduce): every rank packs
the same gradient sizes into flat float32 buckets of at most BUCKET bytes (a larger tensor alone), as
our data-parallel step does, and all-reduces them (all started with async_op, then waited for), ITERS
times. Rank 0 prints the median seconds per step as JSON.

usage: allreduce_baseline.py PORT RANK WORLD BUCKET_BYTES ITERS SIZE [SIZE ...]
"""
import json
import statistics
import sys
import time

import torch
import torch.distributed as dist


def main():
    port, rank, world, bucket, iters = (int(a) for a in sys.argv[1:6])
    sizes = [int(a) for a in sys.argv[6:]]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    buckets, current, used = [], [], 0
    for n in sizes:
        if current and used + 4 * n > bucket:
            buckets.append(sum(current))
            current, used = [], 0
        current.append(n)
        used += 4 * n
    if current:
        buckets.append(sum(current))
    tensors = [torch.ones(n) for n in buckets]
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        works = [dist.all_reduce(t, async_op=True) for t in tensors]
        for w in works:
            w.wait()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        print(json.dumps({"seconds": statistics.median(times[1:] if len(times) > 1 else times), "buckets": len(buckets), "torch": torch.__version__}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
