"""PyTorch baselines for the transcoder training benchmark (bench/train.ts).

Written from the published definitions, not from any project's code:

* ``paper``: the transcoder paper's training step (Dunefsky et al. 2024, the trainer of
  jacobdunefsky/transcoder_circuits, see docs/transcoders.md): decoder rows set to unit norm at
  the start of the step, pre = (x - b_dec) W_enc + b_enc, f = relu(pre), y_hat = f W_dec +
  b_dec_out, loss = mean((y_hat - y)^2 / ||y||) + l1 * mean_rows(sum |f|), the gradient parallel
  to each decoder row removed, torch.optim.Adam (betas 0.9/0.999, eps 1e-8), the per-feature
  "steps since fired" counter. Ghost gradients are not part of it: they only switch on for
  features that have not fired for 5000 steps, which a benchmark of a few steps never reaches.
* ``sparsify``: the TopK step of EleutherAI/sparsify (sparse_coder.py / fused_encoder.py at
  9d3b136) for a transcoder: pre = relu(x W_enc^T + b_enc) with W_enc stored [m, d] as
  nn.Linear does, (values, indices) = topk(pre, k), y_hat = sum_j values_j W_dec[indices_j] +
  b_dec (embedding_bag, the decoder rows of the k active latents only), FVU =
  sum (y - y_hat)^2 / sum (y - mean y)^2; AuxK over the latents dead for more than `window` steps:
  k_aux = d_out / 2, scale = min(dead / k_aux, 1), e_hat = decode(top-k_aux of the dead
  pre-activations), auxk = scale * sum (e_hat - e.detach())^2 / total variance of y, loss =
  FVU + auxk_alpha * auxk. The encoder backward uses only the selected entries (sparsify's
  FusedEncoder): the gradient that reaches pre (AuxK's) is dropped, so AuxK trains the decoder
  only. A transcoder's decoder is not renormalised (sparsify does that for SAEs only). Adam as
  above (sparsify's `--optimizer adam` without bitsandbytes).
  The weight gradient of the encoder, sum over entries of g * x[token] into row `latent`, is
  computed by sorting the N*k entries by latent and one embedding_bag over x (CSR segments);
  sparsify's own eager path (an [N*k, d] outer-product tensor and index_add_) gives the same
  numbers and took 2.5x longer on the development machine.
* ``sparsify --match-ours``: the same sparse step with this project's TopK algorithm, for the
  agreement check: the input pre-bias b_dec (x - b_dec), topk on pre then relu of the values,
  unit-norm decoder rows with the parallel gradient removed, output bias b_dec_out, features
  counted as firing when their value is > 0, and AuxK as this project defines it: top-k_aux of
  the dead pre-activations, values relu(pre) (their gradient trains the encoder, as in OpenAI's
  reference), e_hat without bias, auxk_alpha * min(dead / k_aux, 1) * FVU(e_hat, e).

Usage:
    /usr/bin/python3 bench/train_baseline.py generate --out DATA.safetensors --steps S --batch N \
        --d-in D --d-out D [--seed 0]
    /usr/bin/python3 bench/train_baseline.py serve --algo paper|sparsify --data DATA.safetensors \
        --init INIT.safetensors --threads T [--lr 4e-4] [--l1 1.4e-4] [--k 32] [--auxk-alpha 0.03125]
        [--dead-window 1000] [--match-ours] [--out FINAL.safetensors]

`generate` writes x.<i> [N, d_in] and y.<i> [N, d_out] (float32): x standard normal, y = 0.5
tanh(x A) + 0.1 noise with a fixed random A. `serve` loads the initial parameters (this project's
layout: W_enc [d_in, m], b_enc [m], W_dec [m, d_out], b_dec [d_in], b_dec_out [d_out], optional
since_fired [m] int64) and answers one JSON line per command read from stdin:
    peak            fp32 GEMM GFLOP/s of torch.mm (2048^3, and the step's encoder shape)
    run S           S training steps on the batches in order (cycling); per-step ms and losses
    save            writes the parameters (this project's layout) and counters to --out
    quit
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "test", "reference"))
from safetensors_io import load_file, save_file  # noqa: E402


# ---------------------------------------------------------------------------------------
# Sparse encoder gradient: only the selected (token, latent) entries, as sparsify's FusedEncoder.
# ---------------------------------------------------------------------------------------


def sparse_weight_grad(indices, grad_values, x, m):
    """[m, d] with row j = sum over entries (n, s) with indices[n, s] = j of grad_values[n, s] x[n]."""
    k = indices.shape[1]
    rows = indices.reshape(-1)
    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=m)
    offsets = torch.cumsum(counts, 0) - counts
    tokens = torch.div(order, k, rounding_mode="floor")
    return F.embedding_bag(tokens, x, offsets, mode="sum", per_sample_weights=grad_values.reshape(-1)[order])


class GatherLinear(torch.autograd.Function):
    """pre[n, indices[n, s]] for a pre computed without autograd, with the sparse backward of
    pre = xc W^T + b at those entries only: dW (rows of W [m, d]), db, and dxc by embedding_bag."""

    @staticmethod
    def forward(ctx, xc, weight_md, bias, pre, indices):
        ctx.save_for_backward(xc, weight_md, indices)
        return pre.gather(1, indices)

    @staticmethod
    def backward(ctx, grad):
        xc, weight_md, indices = ctx.saved_tensors
        m = weight_md.shape[0]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(indices, weight_md, mode="sum", per_sample_weights=grad)
        if ctx.needs_input_grad[1]:
            grad_w = sparse_weight_grad(indices, grad, xc, m)
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(m, dtype=grad.dtype).index_add_(0, indices.reshape(-1), grad.reshape(-1))
        return grad_x, grad_w, grad_b, None, None


def decode(indices, values, W_dec):
    """sum_s values[n, s] W_dec[indices[n, s]] (no dense [N, m] x [m, d] product)."""
    return F.embedding_bag(indices, W_dec, mode="sum", per_sample_weights=values)


def fvu(prediction, target):
    return (prediction - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum()


# ---------------------------------------------------------------------------------------
# The steps.
# ---------------------------------------------------------------------------------------


class PaperStep:
    def __init__(self, init, args):
        self.p = {n: init[n].clone().requires_grad_(True) for n in ("W_enc", "b_enc", "W_dec", "b_dec", "b_dec_out")}
        self.opt = torch.optim.Adam(list(self.p.values()), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
        self.l1 = args.l1
        m = self.p["W_enc"].shape[1]
        self.since_fired = init.get("since_fired", torch.zeros(m, dtype=torch.int64)).clone()
        self.act_freq = torch.zeros(m)

    def step(self, x, y):
        p = self.p
        with torch.no_grad():
            p["W_dec"].div_(p["W_dec"].norm(dim=1, keepdim=True))
        pre = torch.addmm(p["b_enc"], x - p["b_dec"], p["W_enc"])
        f = torch.relu(pre)
        y_hat = torch.addmm(p["b_dec_out"], f, p["W_dec"])
        mse = ((y_hat - y).pow(2) / y.norm(dim=-1, keepdim=True)).mean()
        l1 = self.l1 * f.abs().sum(-1).mean()
        loss = mse + l1
        with torch.no_grad():
            fires = f > 0
            self.since_fired += 1
            self.since_fired[fires.any(0)] = 0
            self.act_freq += fires.sum(0)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            g, W = p["W_dec"].grad, p["W_dec"]
            g.sub_((g * W).sum(-1, keepdim=True) * W)
        self.opt.step()
        return {"total": loss.item(), "reconstruction": mse.item(), "sparsity": l1.item()}

    def params(self):
        return {n: t.detach() for n, t in self.p.items()}


class SparsifyStep:
    def __init__(self, init, args):
        self.match = args.match_ours
        self.k = args.k
        self.alpha = args.auxk_alpha
        self.window = args.dead_window
        if self.match:
            names = ("W_enc", "b_enc", "W_dec", "b_dec", "b_dec_out")
            self.p = {n: init[n].clone().requires_grad_(True) for n in names}
        else:
            # sparsify's transcoder parameters: encoder.weight [m, d_in], encoder.bias, W_dec [m, d_out], b_dec [d_out].
            self.p = {
                "W_enc": init["W_enc"].t().contiguous().requires_grad_(True),
                "b_enc": init["b_enc"].clone().requires_grad_(True),
                "W_dec": init["W_dec"].clone().requires_grad_(True),
                "b_dec": init["b_dec_out"].clone().requires_grad_(True),
            }
        self.opt = torch.optim.Adam(list(self.p.values()), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
        m = init["W_enc"].shape[1]
        self.since_fired = init.get("since_fired", torch.zeros(m, dtype=torch.int64)).clone()

    def step(self, x, y):
        p = self.p
        dead = self.since_fired > self.window
        num_dead = int(dead.sum())
        if self.match:
            with torch.no_grad():
                p["W_dec"].div_(p["W_dec"].norm(dim=1, keepdim=True))
            xc = x - p["b_dec"]
            # Rows per latent for the sparse products (a copy: W_enc is stored [d_in, m]).
            W_md = p["W_enc"].t().contiguous()
            with torch.no_grad():
                pre = torch.addmm(p["b_enc"], xc, p["W_enc"])
                indices = pre.topk(self.k, dim=-1, sorted=False).indices
            values = torch.relu(GatherLinear.apply(xc, W_md, p["b_enc"], pre, indices))
            y_hat = decode(indices, values, p["W_dec"]) + p["b_dec_out"]
        else:
            with torch.no_grad():
                pre = torch.relu(F.linear(x, p["W_enc"], p["b_enc"]))
                indices = pre.topk(self.k, dim=-1, sorted=False).indices
            values = GatherLinear.apply(x, p["W_enc"], p["b_enc"], pre, indices)
            y_hat = decode(indices, values, p["W_dec"]) + p["b_dec"]
        e = y - y_hat
        total_variance = (y - y.mean(0)).pow(2).sum()
        reconstruction = e.pow(2).sum() / total_variance
        auxk = y_hat.new_zeros(())
        if self.alpha > 0 and num_dead > 0:
            k_aux = y.shape[-1] // 2
            scale = min(num_dead / k_aux, 1.0)
            k_aux = min(k_aux, num_dead)
            with torch.no_grad():
                masked = pre.masked_fill(~dead, float("-inf"))
                aux_indices = masked.topk(k_aux, dim=-1, sorted=False).indices
                del masked
            if self.match:
                aux_values = torch.relu(GatherLinear.apply(xc, W_md, p["b_enc"], pre, aux_indices))
                e_hat = decode(aux_indices, aux_values, p["W_dec"])
                auxk = self.alpha * scale * fvu(e_hat, e.detach())
            else:
                # sparsify: the pre-activations' gradient is dropped by the fused encoder.
                aux_values = pre.gather(1, aux_indices)
                e_hat = decode(aux_indices, aux_values, p["W_dec"]) + p["b_dec"]
                auxk = self.alpha * scale * (e_hat - e.detach()).pow(2).sum() / total_variance
        loss = reconstruction + auxk
        with torch.no_grad():
            fired = torch.zeros(pre.shape[1], dtype=torch.bool)
            fired[indices[values > 0] if self.match else indices.reshape(-1)] = True
            self.since_fired += 1
            self.since_fired[fired] = 0
        del pre
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.match:
            with torch.no_grad():
                g, W = p["W_dec"].grad, p["W_dec"]
                g.sub_((g * W).sum(-1, keepdim=True) * W)
        self.opt.step()
        return {"total": loss.item(), "reconstruction": reconstruction.item(), "sparsity": float(auxk), "dead": num_dead}

    def params(self):
        if self.match:
            return {n: t.detach() for n, t in self.p.items()}
        p = self.p
        return {"W_enc": p["W_enc"].detach().t().contiguous(), "b_enc": p["b_enc"].detach(), "W_dec": p["W_dec"].detach(), "b_dec_out": p["b_dec"].detach()}


# ---------------------------------------------------------------------------------------
# Commands.
# ---------------------------------------------------------------------------------------


def gemm_gflops(m, k, n, iters=3):
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(iters):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * m * k * n / best / 1e9


def generate(args):
    g = torch.Generator().manual_seed(args.seed)
    A = torch.randn(args.d_in, args.d_out, generator=g) / args.d_in**0.5
    out = {}
    for i in range(args.steps):
        x = torch.randn(args.batch, args.d_in, generator=g)
        y = 0.5 * torch.tanh(x @ A) + 0.1 * torch.randn(args.batch, args.d_out, generator=g)
        out[f"x.{i}"], out[f"y.{i}"] = x, y
    tmp = args.out + ".tmp"
    save_file(out, tmp)
    os.replace(tmp, args.out)


def serve(args):
    torch.set_num_threads(args.threads)
    data = load_file(args.data)
    steps = sorted(int(k[2:]) for k in data if k.startswith("x."))
    batches = [(data[f"x.{i}"], data[f"y.{i}"]) for i in steps]
    init = load_file(args.init)
    trainer = PaperStep(init, args) if args.algo == "paper" else SparsifyStep(init, args)
    position = 0
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "quit":
            break
        if cmd[0] == "peak":
            N, D = batches[0][0].shape
            m = init["W_enc"].shape[1]
            print(json.dumps({"gemm_2048": gemm_gflops(2048, 2048, 2048), "gemm_step": gemm_gflops(N, D, m, iters=2)}), flush=True)
        elif cmd[0] == "run":
            ms, metrics = [], []
            for _ in range(int(cmd[1])):
                x, y = batches[position % len(batches)]
                position += 1
                start = time.perf_counter()
                metrics.append(trainer.step(x, y))
                ms.append((time.perf_counter() - start) * 1000.0)
            print(json.dumps({"ms": ms, "metrics": metrics}), flush=True)
        elif cmd[0] == "save":
            out = dict(trainer.params())
            out["since_fired"] = trainer.since_fired
            save_file(out, args.out)
            print(json.dumps({"saved": args.out}), flush=True)
        else:
            raise SystemExit(f"unknown command {cmd[0]!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--out", required=True)
    g.add_argument("--steps", type=int, required=True)
    g.add_argument("--batch", type=int, required=True)
    g.add_argument("--d-in", type=int, required=True)
    g.add_argument("--d-out", type=int, required=True)
    g.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("serve")
    s.add_argument("--algo", choices=("paper", "sparsify"), required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--init", required=True)
    s.add_argument("--threads", type=int, default=torch.get_num_threads())
    s.add_argument("--lr", type=float, default=4e-4)
    s.add_argument("--l1", type=float, default=1.4e-4)
    s.add_argument("--k", type=int, default=32)
    s.add_argument("--auxk-alpha", type=float, default=1 / 32)
    s.add_argument("--dead-window", type=int, default=1000)
    s.add_argument("--match-ours", action="store_true")
    s.add_argument("--out", default="")
    args = parser.parse_args()
    (generate if args.command == "generate" else serve)(args)


if __name__ == "__main__":
    main()
