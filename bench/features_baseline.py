"""PyTorch baseline for the feature-dashboard benchmark: the same streaming pass as ours (docs/features.md).

Usage:
    /usr/bin/python3 bench/features_baseline.py MODEL_DIR WEIGHTS.safetensors TOKENS.safetensors OUT.safetensors \
        --examples K --quantiles Q --bins NB --batch-rows B --threads N

WEIGHTS: W_enc_{l} [d, F], b_enc_{l} [F] for every layer (relu transcoders reading each layer's MLP input,
ln_2's output). TOKENS: a token file (`tokens` int32 [rows, T]); each row is a context.

Per batch of B rows: one eager GPT-2 forward (bench/forward_baseline.py's layers), and per layer
acts = relu(h W_enc + b_enc), then the statistics: counts, max, min, a histogram whose range grows by powers of
two with exact bin merging, the top K rows per feature (unordered slots; only the features with a row better than
their worst slot are merged, and only the entering rows' activations written), and a uniform sample of (Q + 1) K activating rows (the smallest of uniform
keys). Prints one JSON line with the pass time; writes each layer's count and top rows for the agreement check.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "test", "reference"))
from forward_baseline import activation, prepare  # noqa: E402
from hf_reference import load_model  # noqa: E402
from safetensors_io import load_file, save_file  # noqa: E402

INF = float("inf")


class Stats:
    def __init__(self, F_, T, K, R, NB):
        self.count = torch.zeros(F_, dtype=torch.long)
        self.act_max = torch.zeros(F_)
        self.act_min = torch.full((F_,), INF)
        self.hist = torch.zeros(F_, NB, dtype=torch.float64)
        self.hist_exp = torch.zeros(F_, dtype=torch.long)
        self.top_score = torch.full((F_, K), -INF)
        self.top_row = torch.full((F_, K), -1, dtype=torch.long)
        self.top_acts = torch.zeros(F_, K, T)
        self.sample_key = torch.full((F_, R), INF, dtype=torch.float64)
        self.sample_score = torch.zeros(F_, R)
        self.sample_row = torch.full((F_, R), -1, dtype=torch.long)
        self.sample_acts = torch.zeros(F_, R, T)
        self.K, self.R, self.NB = K, R, NB


def ceil_log2(v):
    d = v.double()
    e = torch.ceil(torch.log2(d))
    e = torch.where(torch.exp2(e) < d, e + 1, e)
    e = torch.where(torch.exp2(e - 1) >= d, e - 1, e)
    return e.long()


def merge_slots(s, key_name, row_name, score_name, acts_name, batch_key, batch_score, acts, rows, largest):
    """Merge the batch's candidates into unordered slots: the best `keep` of both (ties to the lower row); only
    features with a candidate better than their worst slot are touched, and only entering rows are written."""
    slot_key, slot_row, slot_acts = getattr(s, key_name), getattr(s, row_name), getattr(s, acts_name)
    keep, B = slot_key.shape[1], batch_key.shape[1]
    worst = (slot_key.amin(1) if largest else slot_key.amax(1)).unsqueeze(1)
    fs = ((batch_key > worst) if largest else (batch_key < worst)).any(1).nonzero().squeeze(1)
    n = fs.shape[0]
    if n == 0:
        return
    key = torch.cat([slot_key[fs], batch_key[fs]], 1)
    row = torch.cat([slot_row[fs], rows.unsqueeze(0).expand(n, B)], 1)
    by_row = torch.sort(row, dim=1, stable=True).indices
    order = by_row.gather(1, torch.sort(key.gather(1, by_row), dim=1, descending=largest, stable=True).indices)
    chosen = torch.zeros_like(key, dtype=torch.bool).scatter_(1, order[:, :keep], True)
    dst = (~chosen[:, :keep]).nonzero()
    src = chosen[:, keep:].nonzero()
    if dst.shape[0] == 0:
        return
    dst_f, dst_s = fs[dst[:, 0]], dst[:, 1]
    src_f, src_b = fs[src[:, 0]], src[:, 1]
    slot_key[dst_f, dst_s] = batch_key[src_f, src_b]
    slot_row[dst_f, dst_s] = rows[src_b]
    if score_name:
        getattr(s, score_name)[dst_f, dst_s] = batch_score[src_f, src_b]
    slot_acts[dst_f, dst_s] = acts.permute(0, 2, 1)[src_b, src_f]


def update(s, acts, rows, gen):
    B, T, F_ = acts.shape
    active = acts > 0
    had = s.count > 0
    s.count += active.sum((0, 1))
    s.act_max = torch.maximum(s.act_max, acts.amax((0, 1)))
    s.act_min = torch.minimum(s.act_min, torch.where(active, acts, torch.tensor(INF)).amin((0, 1)))
    now = s.count > 0
    target = torch.where(now, ceil_log2(torch.where(now, s.act_max, torch.ones_like(s.act_max))), s.hist_exp)
    shift = torch.where(had, target - s.hist_exp, torch.zeros_like(target)).clamp(min=0)
    if shift.any():
        div = torch.exp2(shift.double()).unsqueeze(1)
        to = torch.floor(torch.arange(s.NB, dtype=torch.float64).unsqueeze(0) / div).long().clamp(max=s.NB - 1)
        s.hist = torch.zeros_like(s.hist).scatter_add_(1, to, s.hist)
    s.hist_exp = target
    where = active.nonzero()
    if where.shape[0]:
        f = where[:, 2]
        v = acts[active].double()
        b = torch.floor(v * torch.exp2(-s.hist_exp[f].double()) * s.NB).long().clamp(0, s.NB - 1)
        s.hist.view(-1).index_add_(0, f * s.NB + b, torch.ones_like(v))
    score = acts.amax(1).t()
    activating = score > 0
    merge_slots(s, "top_score", "top_row", None, "top_acts", torch.where(activating, score, torch.tensor(-INF)), score, acts, rows, True)
    draws = torch.rand(F_, B, generator=gen, dtype=torch.float64)
    merge_slots(s, "sample_key", "sample_row", "sample_score", "sample_acts", torch.where(activating, draws, torch.tensor(INF, dtype=torch.float64)), score, acts, rows, False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("weights")
    p.add_argument("tokens")
    p.add_argument("out")
    p.add_argument("--examples", type=int, default=10)
    p.add_argument("--quantiles", type=int, default=4)
    p.add_argument("--bins", type=int, default=64)
    p.add_argument("--batch-rows", type=int, default=8)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    _, model = load_model(a.model_dir)
    tokens = load_file(a.tokens)["tokens"].long()
    N, T = tokens.shape
    model = prepare(model, T)
    w = load_file(a.weights)
    L = len(model["layers"])
    W = [w[f"W_enc_{l}"].contiguous() for l in range(L)]
    b = [w[f"b_enc_{l}"] for l in range(L)]
    K, R = a.examples, (a.quantiles + 1) * a.examples
    stats = [Stats(W[l].shape[1], T, K, R, a.bins) for l in range(L)]
    gen = torch.Generator().manual_seed(0)
    d = model["W_E"].shape[1]
    H = model["n_heads"]
    dh = d // H
    eps = model["eps"]
    start = time.perf_counter()
    with torch.inference_mode():
        for r0 in range(0, N, a.batch_rows):
            tok = tokens[r0 : r0 + a.batch_rows]
            B = tok.shape[0]
            rows = torch.arange(r0, r0 + B)
            x = F.embedding(tok, model["W_E"]) + model["W_pos"][:T]
            x = x.reshape(B * T, d)
            mask = model["mask"]
            for l, layer in enumerate(model["layers"]):
                h = F.layer_norm(x, (d,), *layer["ln1"], eps)
                qkv = torch.addmm(layer["b_qkv"], h, layer["W_qkv"])
                q, k, v = qkv.view(B, T, 3, H, dh).permute(2, 0, 3, 1, 4)
                q, k, v = (t.reshape(B * H, T, dh) for t in (q, k, v))
                scores = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=1.0 / layer["score_div"])
                z = torch.bmm(torch.softmax(scores, -1), v).view(B, H, T, dh).transpose(1, 2).reshape(B * T, d)
                x = x + torch.addmm(layer["b_O"], z, layer["W_O"])
                h = F.layer_norm(x, (d,), *layer["ln2"], eps)
                acts = torch.relu(torch.addmm(b[l], h, W[l])).view(B, T, -1)
                update(stats[l], acts, rows, gen)
                x = x + torch.addmm(layer["b_out"], activation(model["act"], torch.addmm(layer["b_in"], h, layer["W_in"])), layer["W_out"])
    elapsed = time.perf_counter() - start
    out = {}
    for l, s in enumerate(stats):
        out[f"count_{l}"] = s.count
        out[f"top_row_{l}"] = s.top_row
    save_file(out, a.out)
    print(json.dumps({"seconds": elapsed, "tokens": N * T, "threads": a.threads, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
