"""PyTorch baseline for the all-pairs top-k connections benchmark.

Usage:
    /usr/bin/python3 bench/connections_baseline.py --dec W_DEC.f32 --enc W_ENC.f32 --m 24576 --d 768 \
        --rows R --k 10 --block 4096 --threads N --iters 2 [--warmup-rows 4096] [--indices-out FILE]

Reads W_dec [m, d] and W_enc [d, m] (raw little-endian float32, as bench/connections.ts writes them),
then times the same blocked computation as ours: for each block of `block` source rows, torch.mm with
each block of `block` target columns, torch.topk of the block, and a torch.topk merge of the running
best with the block's best. Only the first `rows` source rows are computed (all of them by default).
Also measures torch.mm's best fp32 throughput on a 2048^3 product. Prints one JSON line.
"""

import argparse
import json
import time

import torch


def topk_connections(dec, enc, k, block):
    """Top-k of dec @ enc per row, streamed in [block, block] tiles: (values, indices) [R, k]."""
    R, C = dec.shape[0], enc.shape[1]
    out_v = torch.empty(R, k)
    out_i = torch.empty(R, k, dtype=torch.long)
    for r0 in range(0, R, block):
        a = dec[r0 : r0 + block]
        best_v = best_i = None
        for c0 in range(0, C, block):
            s = torch.mm(a, enc[:, c0 : c0 + block])
            v, i = torch.topk(s, min(k, s.shape[1]), dim=1)
            i += c0
            if best_v is None:
                best_v, best_i = v, i
                continue
            cat_v = torch.cat([best_v, v], 1)
            cat_i = torch.cat([best_i, i], 1)
            best_v, pos = torch.topk(cat_v, k, dim=1)
            best_i = cat_i.gather(1, pos)
        out_v[r0 : r0 + block] = best_v
        out_i[r0 : r0 + block] = best_i
    return out_v, out_i


def gemm_gflops(n=2048, iters=5):
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(iters):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dec", required=True)
    parser.add_argument("--enc", required=True)
    parser.add_argument("--m", type=int, required=True)
    parser.add_argument("--d", type=int, required=True)
    parser.add_argument("--rows", type=int, default=0, help="source rows to compute (default: all)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--block", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--warmup-rows", type=int, default=0, help="source rows of an untimed warm-up pass")
    parser.add_argument("--indices-out", default="")
    args = parser.parse_args()
    if args.iters < 1:
        parser.error("--iters must be at least 1")

    torch.set_num_threads(args.threads)
    dec = torch.from_file(args.dec, size=args.m * args.d, dtype=torch.float32).view(args.m, args.d)
    enc = torch.from_file(args.enc, size=args.d * args.m, dtype=torch.float32).view(args.d, args.m)
    rows = args.rows or args.m
    src = dec[:rows]

    times = []
    with torch.inference_mode():
        peak = gemm_gflops()
        if args.warmup_rows:
            topk_connections(dec[: args.warmup_rows], enc, args.k, args.block)
        for _ in range(args.iters):
            start = time.perf_counter()
            _, indices = topk_connections(src, enc, args.k, args.block)
            times.append(time.perf_counter() - start)
    if args.indices_out:
        indices.numpy().tofile(args.indices_out)
    print(json.dumps({
        "seconds_all": times,
        "rows": rows,
        "gemm_gflops": peak,
        "threads": args.threads,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
