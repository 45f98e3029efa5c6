"""Where the time of OUR training step goes: an op-for-op replica of the native step
(native/train/step_trainer.cc trainStep, native/transcoder/losses.cc transcoderLoss,
native/transcoder/transcoder.cc, native/train/adam.cc) in Debian's PyTorch 1.13, which is the same
ATen/OpenBLAS build the addon links, so each ATen call costs what it costs in the addon. The native
step is nothing but these ATen calls; compare the replica's total with bench/train.ts's measured
step time to confirm (README, Performance).

Usage:
    /usr/bin/python3 bench/train_profile.py --arch relu|topk [--d-in 768] [--d-sae 24576] \
        [--batch 4096] [--k 32] [--steps 2] [--threads 2] [--json]

Prints, per phase, the median wall time over the steps (after one warm-up step), and the backward
pass broken down by autograd op (torch.autograd.profiler, self CPU time).
"""

import argparse
import json
import math
import statistics
import time
from collections import defaultdict

import torch


class Phases:
    def __init__(self):
        self.times = defaultdict(list)
        self.current = None

    def mark(self, name):
        now = time.perf_counter()
        if self.current is not None:
            self.times[self.current[0]].append(now - self.current[1])
        self.current = (name, now) if name else None


def fvu(y_hat, y):
    return (y_hat - y).pow(2).sum() / (y - y.mean(0, keepdim=True)).pow(2).sum()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=("relu", "topk"), required=True)
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=24576)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    D, M, N = args.d_in, args.d_sae, args.batch
    g = torch.Generator().manual_seed(0)
    bound_enc, bound_dec = math.sqrt(6 / M), math.sqrt(6 / D)
    P = {
        "W_enc": torch.empty(D, M).uniform_(-bound_enc, bound_enc, generator=g),
        "b_enc": torch.zeros(M),
        "W_dec": torch.empty(M, D).uniform_(-bound_dec, bound_dec, generator=g),
        "b_dec": torch.zeros(D),
        "b_dec_out": torch.zeros(D),
    }
    P["W_dec"] /= P["W_dec"].norm(dim=1, keepdim=True)
    since = torch.zeros(M, dtype=torch.long)
    window = 5000 if args.arch == "relu" else 1000
    if args.arch == "topk":  # as bench/train.ts: a quarter of the features dead, AuxK on
        P["b_enc"][::4] = -0.3
        since[::4] = window + 1
    for p in P.values():
        p.requires_grad_(True)
    state = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in P.items()}
    x = torch.randn(N, D, generator=g)
    y = 0.5 * torch.tanh(x @ (torch.randn(D, D, generator=g) / D**0.5))
    lr, b1, b2, eps, l1c, alpha, k_aux = 4e-4, 0.9, 0.999, 1e-8, 1.4e-4, 1 / 32, D // 2
    total_times = []
    ph_all = Phases()
    backward_ops = defaultdict(float)

    for step in range(args.steps + 1):
        ph = Phases() if step == 0 else ph_all
        t0 = time.perf_counter()
        ph.mark("decoder renormalisation")
        with torch.no_grad():
            P["W_dec"].div_(P["W_dec"].norm(2, 1, keepdim=True))
        dead = since > window
        ph.mark("encoder GEMM (x - b_dec) W_enc + b_enc")
        pre = torch.addmm(P["b_enc"], (x - P["b_dec"]).reshape(-1, D), P["W_enc"])
        if args.arch == "topk":
            ph.mark("topk selection (k)")
            top_v, top_i = torch.topk(pre, args.k, -1)
            values = torch.relu(top_v)
            ph.mark("sparse decode (embedding_bag)")
            offsets = torch.arange(0, N * args.k, args.k)
            y_hat = torch.embedding_bag(P["W_dec"], top_i.reshape(-1), offsets, False, 0, False, values.reshape(-1))[0] + P["b_dec_out"]
            ph.mark("dense f = zeros.scatter (metrics)")
            f = torch.zeros_like(pre).scatter(-1, top_i, values)
            ph.mark("reconstruction (FVU)")
            rec = fvu(y_hat, y)
            any_dead = bool(dead.any())
            ph.mark("AuxK: masked_fill + topk(k_aux) over [N, m]")
            n_dead = int(dead.sum())
            ka = min(k_aux, n_dead)
            e = (y - y_hat).detach()
            masked = pre.masked_fill(~dead, float("-inf"))
            idx = torch.topk(masked, ka, -1)[1]
            ph.mark("AuxK: gather + decode + FVU")
            vals = torch.relu(pre.gather(1, idx))
            off2 = torch.arange(0, N * ka, ka)
            e_hat = torch.embedding_bag(P["W_dec"], idx.reshape(-1), off2, False, 0, False, vals.reshape(-1))[0]
            sparsity = alpha * min(1.0, n_dead / k_aux) * fvu(e_hat, e) if any_dead else torch.zeros(())
        else:
            ph.mark("relu")
            f = torch.relu(pre)
            ph.mark("decoder GEMM f W_dec + b_dec_out")
            y_hat = torch.mm(f, P["W_dec"]) + P["b_dec_out"]
            ph.mark("loss: normalised MSE + L1")
            rec = ((y_hat - y).pow(2) / y.norm(2, -1, keepdim=True)).mean()
            any_dead = bool(dead.any())
            sparsity = l1c * f.abs().sum(-1).mean()
        total = rec + sparsity
        ph.mark("metrics (fired, l0, fvu, .item())")
        with torch.no_grad():
            fired = (f > 0).any(0)
            since.add_(1).masked_fill_(fired, 0)
            _ = total.item(), rec.item(), sparsity.item(), fvu(y_hat, y).item()
            _ = (f > 0).sum(-1).double().mean().item(), dead.double().mean().item()
        for p in P.values():
            p.grad = None
        ph.mark("backward")
        if step == args.steps:
            with torch.autograd.profiler.profile() as prof:
                total.backward()
            for ev in prof.key_averages():
                backward_ops[ev.key] += ev.self_cpu_time_total / 1e6
        else:
            total.backward()
        ph.mark("finite checks (gradients)")
        with torch.no_grad():
            ok = torch.stack([p.grad.isfinite().all() for p in P.values()]).all().item()
            ph.mark("decoder gradient projection")
            gW = P["W_dec"].grad
            gW.sub_((gW * P["W_dec"]).sum(-1, keepdim=True) * P["W_dec"])
            ph.mark("Adam")
            bc1, bc2 = 1 - b1 ** (step + 1), math.sqrt(1 - b2 ** (step + 1))
            for n, p in P.items():
                m, v = state[n]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (v.sqrt() / bc2).add_(eps)
                p.addcdiv_(m, denom, value=-lr / bc1)
            ph.mark("finite checks (parameters)")
            ok = ok and torch.stack([p.isfinite().all() for p in P.values()]).all().item()
        ph.mark(None)
        del pre, f, y_hat, total
        if args.arch == "topk":
            del masked
        if step > 0:
            total_times.append(time.perf_counter() - t0)

    step_s = statistics.median(total_times)
    if args.json:
        print(json.dumps({
            "step_ms": step_s * 1000,
            "phases_ms": {name: statistics.median(ts) * 1000 for name, ts in ph_all.times.items()},
            "backward_ops_ms": {n: t * 1000 for n, t in sorted(backward_ops.items(), key=lambda kv: -kv[1])[:12]},
        }))
        return
    print(f"our {args.arch} step, replica ({N} x {D} -> {M}, {args.threads} threads): median {step_s * 1000:.0f} ms over {args.steps} steps")
    for name, ts in ph_all.times.items():
        t = statistics.median(ts)
        print(f"  {t * 1000:8.0f} ms  {100 * t / step_s:5.1f} %  {name}")
    print("  backward by autograd op (self CPU, last step):")
    bw_total = sum(backward_ops.values())
    for name, t in sorted(backward_ops.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {t * 1000:8.0f} ms  {100 * t / bw_total:5.1f} %  {name}")


if __name__ == "__main__":
    main()
