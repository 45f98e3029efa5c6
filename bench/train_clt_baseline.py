"""PyTorch baseline of a TopK cross-layer transcoder's training step (bench/train_clt.ts), written
from the definitions in docs/cross-layer.md, not from our code:

    pre_s = x_s W_enc[s] + b_enc[s]   (one batched GEMM over the layers)
    per source layer s: the k largest pre_s per row, relu'd, decoded into layers s..L-1 with
        embedding_bag over W_dec_s viewed [F, (L - s) d] (the sparse decode: only active rows)
    y_hat = sum + b_dec;  loss = sum_t FVU_t + alpha * AuxK (the k_aux largest dead pre-activations
        of each layer reconstruct the detached residual of every layer they write to)
    autograd backward; torch.optim.Adam; dead counters: +1, 0 where a feature fired.

usage: train_clt_baseline.py DATA.safetensors INIT.safetensors OPTIONS.json OUT.safetensors
Prints one JSON line per step ({"step", "ms", "total", "reconstruction", "auxk"}) and writes the
final parameters to OUT (for the agreement check with our trainer).
"""

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "reference"))
from safetensors_io import load_file, save_file  # noqa: E402


def layer_fvu(y_hat, y):
    return (y_hat - y).pow(2).sum((0, 2)) / (y - y.mean(0, keepdim=True)).pow(2).sum((0, 2))


def decode_sparse(W_dec_s, idx, val, n_rows, targets, d):
    table = W_dec_s.reshape(W_dec_s.shape[0], targets * d)
    k = idx.shape[1]
    offsets = torch.arange(0, n_rows * k, k, dtype=torch.long)
    out = torch.nn.functional.embedding_bag(idx.reshape(-1), table, offsets, mode="sum", per_sample_weights=val.reshape(-1))
    return out.view(n_rows, targets, d)


def main():
    data_path, init_path, options_path, out_path = sys.argv[1:5]
    opts = json.load(open(options_path))
    torch.set_num_threads(int(opts.get("threads", torch.get_num_threads())))
    data = load_file(data_path)
    init = load_file(init_path)
    xs, ys = data["xs"].float(), data["ys"].float()  # [S, N, L, d]
    S, N, L, d = xs.shape
    k, k_aux, alpha, window = opts["k"], opts["kAux"], opts["auxkAlpha"], opts["deadFeatureWindow"]
    W_enc = init["W_enc"].clone().requires_grad_(True)
    b_enc = init["b_enc"].clone().requires_grad_(True)
    W_dec = [init[f"W_dec_{s}"].clone().requires_grad_(True) for s in range(L)]
    b_dec = init["b_dec"].clone().requires_grad_(True)
    params = [W_enc, b_enc, *W_dec, b_dec]
    F = W_enc.shape[2]
    since = init["steps_since_fired"].clone().long()
    opt = torch.optim.Adam(params, lr=opts["lr"], betas=(0.9, 0.999), eps=1e-8)
    steps = opts["steps"]
    for step in range(steps):
        x, y = xs[step % S], ys[step % S]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        dead = since > window
        pre = torch.baddbmm(b_enc.unsqueeze(1), x.transpose(0, 1), W_enc).transpose(0, 1)  # [N, L, F]
        y_hat = torch.zeros(N, L, d)
        fired = torch.zeros(L, F, dtype=torch.bool)
        for s in range(L):
            p = pre[:, s]
            idx = p.detach().topk(k, dim=1).indices
            val = torch.relu(p.gather(1, idx))
            fired[s, idx[val.detach() > 0]] = True
            y_hat = y_hat + torch.nn.functional.pad(decode_sparse(W_dec[s], idx, val, N, L - s, d), (0, 0, s, 0))
        y_hat = y_hat + b_dec
        recon = layer_fvu(y_hat, y).sum()
        auxk = torch.zeros(())
        if alpha > 0 and bool(dead.any()):
            e = (y - y_hat).detach()
            e_hat = torch.zeros(N, L, d)
            for s in range(L):
                ka = min(k_aux, int(dead[s].sum()))
                if ka == 0:
                    continue
                p = pre[:, s]
                masked = p.detach().masked_fill(~dead[s], float("-inf"))
                idx = masked.topk(ka, dim=1).indices
                val = torch.relu(p.gather(1, idx))
                e_hat = e_hat + torch.nn.functional.pad(decode_sparse(W_dec[s], idx, val, N, L - s, d), (0, 0, s, 0))
            auxk = alpha * layer_fvu(e_hat, e).sum()
        total = recon + auxk
        total.backward()
        opt.step()
        since += 1
        since[fired] = 0
        ms = (time.perf_counter() - t0) * 1000
        print(json.dumps({"step": step, "ms": ms, "total": total.item(), "reconstruction": recon.item(), "auxk": auxk.item()}), flush=True)
    out = {"W_enc": W_enc.detach(), "b_enc": b_enc.detach(), "b_dec": b_dec.detach()}
    for s in range(L):
        out[f"W_dec_{s}"] = W_dec[s].detach()
    save_file(out, out_path)


if __name__ == "__main__":
    main()
