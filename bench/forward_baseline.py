"""PyTorch eager baseline for the forward-pass throughput benchmark.

Usage:
    /usr/bin/python3 bench/forward_baseline.py MODEL_DIR --batch 8 --seq 128 --threads N \
        --warmup 2 --iters 10 [--seed 0]

Loads a GPT-2 or GPT-NeoX checkpoint with the reference loader, then times an efficient
eager forward (fused ops, no activation caching, inference mode) on random token ids and
prints a single JSON line with the timings.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

# Reuse the reference checkpoint loader rather than duplicating it.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "test", "reference"))
from hf_reference import load_model  # noqa: E402


def prepare(model, seq):
    """Make weights contiguous and precompute what depends only on the sequence length."""
    model = dict(model)
    model["layers"] = [
        {k: v.contiguous() if torch.is_tensor(v) else v for k, v in layer.items()}
        for layer in model["layers"]
    ]
    model["W_U"] = model["W_U"].contiguous()
    # Additive causal mask, broadcast by baddbmm over batch*heads.
    model["mask"] = torch.full((seq, seq), float("-inf")).triu(1)
    rd = model["rotary_dim"]
    if rd:
        inv_freq = 1.0 / model["rotary_base"] ** (torch.arange(0, rd, 2).float() / rd)
        angle = torch.arange(seq).float()[:, None] * inv_freq[None, :]
        angle = torch.cat([angle, angle], -1)  # [T, rd], broadcast over [B, H, T, rd]
        model["cos"], model["sin"] = angle.cos(), angle.sin()
    return model


def apply_rotary(x, model):
    rd = model["rotary_dim"]
    r, rest = x[..., :rd], x[..., rd:]
    rotated = torch.cat([-r[..., rd // 2 :], r[..., : rd // 2]], -1)
    return torch.cat([r * model["cos"] + rotated * model["sin"], rest], -1)


def activation(name, x):
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu(x)
    if name == "relu":
        return F.relu(x)
    raise ValueError(f"unsupported activation {name!r}")


def forward(model, tokens):
    """Logits [B, T, V] for tokens [B, T]; model must come from prepare() for this T."""
    B, T = tokens.shape
    d = model["W_E"].shape[1]
    H = model["n_heads"]
    dh = d // H
    eps = model["eps"]

    x = F.embedding(tokens, model["W_E"])
    if model["W_pos"] is not None:
        x = x + model["W_pos"][:T]
    x = x.reshape(B * T, d)  # every matmul below works on [B*T, features]

    for layer in model["layers"]:
        h = F.layer_norm(x, (d,), *layer["ln1"], eps)
        qkv = torch.addmm(layer["b_qkv"], h, layer["W_qkv"])
        q, k, v = qkv.view(B, T, 3, H, dh).permute(2, 0, 3, 1, 4)  # each [B, H, T, dh]
        if model["rotary_dim"]:
            q, k = apply_rotary(q, model), apply_rotary(k, model)
        q, k, v = (t.reshape(B * H, T, dh) for t in (q, k, v))
        scores = torch.baddbmm(model["mask"], q, k.transpose(1, 2), alpha=1.0 / layer["score_div"])
        z = torch.bmm(torch.softmax(scores, -1), v)
        z = z.view(B, H, T, dh).transpose(1, 2).reshape(B * T, d)
        attn_out = torch.addmm(layer["b_O"], z, layer["W_O"])

        mlp_in = x if model["parallel"] else x + attn_out
        h = F.layer_norm(mlp_in, (d,), *layer["ln2"], eps)
        h = activation(model["act"], torch.addmm(layer["b_in"], h, layer["W_in"]))
        mlp_out = torch.addmm(layer["b_out"], h, layer["W_out"])
        x = x + attn_out + mlp_out if model["parallel"] else mlp_in + mlp_out

    x = F.layer_norm(x, (d,), *model["ln_f"], eps)
    return torch.mm(x, model["W_U"]).view(B, T, -1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.iters < 1:
        parser.error("--iters must be at least 1")

    torch.set_num_threads(args.threads)
    _, model = load_model(args.model_dir)
    if model["W_pos"] is not None and args.seq > model["W_pos"].shape[0]:
        parser.error(f"--seq {args.seq} exceeds the model's {model['W_pos'].shape[0]} positions")
    model = prepare(model, args.seq)
    vocab = model["W_E"].shape[0]
    generator = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, vocab, (args.batch, args.seq), generator=generator)

    times_ms = []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            start = time.perf_counter()
            forward(model, tokens)
            elapsed = (time.perf_counter() - start) * 1000.0
            if i >= args.warmup:
                times_ms.append(elapsed)

    median_ms = statistics.median(times_ms)
    print(json.dumps({
        "tokens_per_s": args.batch * args.seq / (median_ms / 1000.0),
        "ms_per_forward_median": median_ms,
        "ms_per_forward_all": times_ms,
        "threads": args.threads,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
