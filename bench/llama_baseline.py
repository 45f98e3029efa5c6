"""PyTorch eager baseline for the Llama forward benchmark (bench/llama.ts).

Usage:
    /usr/bin/python3 bench/llama_baseline.py MODEL_DIR --batch 4 --seq 256 --threads N \
        --warmup 1 --iters 2 [--logits-out FILE --logit-positions 0,100,255] [--gemm]

A Llama forward written from the Hugging Face definition (transformers' modeling_llama.py and
modeling_rope_utils.py), eager, float32, inference mode: RMSNorm (statistics in float32, then the
gain), grouped-query attention with repeat_kv, rotate-half RoPE with the "llama3" frequency scaling,
causal softmax attention, SwiGLU MLP (down(silu(gate(x)) * up(x))), final RMSNorm, logits through the
unembedding (the embedding matrix when tie_word_embeddings). Written efficiently as a user who
cares about speed would: Q/K/V in one matmul, gate/up in one matmul, weights pre-transposed and
contiguous, cos/sin and the causal mask precomputed once per sequence length.

Reads MODEL_DIR/config.json and the safetensors checkpoint with test/reference/safetensors_io.py
(single file or shards); BF16/F16 weights are upcast to float32.

Prints one JSON line: timings of each timed forward, load time, optionally the fp32 GEMM peak
(torch.mm 2048^3); with --logits-out, writes float32 logits [B, P, V] of the given positions there
(raw little-endian) for the caller to compare.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "test", "reference"))
from safetensors_io import load_file  # noqa: E402


def load_state(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    state = {}
    for shard in shards:
        part = load_file(os.path.join(model_dir, shard))
        # Upcast tensor by tensor so that at most one bf16 shard and its float32 copy coexist.
        for name in list(part):
            state[name] = part.pop(name).float()
    return state


def rope_inv_freq(cfg, head_dim):
    """modeling_rope_utils: default inverse frequencies, then the 'llama3' scaling if configured."""
    base = cfg.get("rope_theta", 10000.0)
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind != "llama3":
        raise ValueError(f"rope_type {kind!r} is not handled by this baseline")
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are divided by factor, short ones kept, the band between interpolated.
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def prepare(cfg, state, seq):
    d = cfg["hidden_size"]
    H = cfg["num_attention_heads"]
    K = cfg.get("num_key_value_heads") or H
    dh = cfg.get("head_dim") or d // H
    model = {"H": H, "K": K, "dh": dh, "eps": cfg.get("rms_norm_eps", 1e-6), "layers": []}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        w = lambda n: state.pop(p + n)  # noqa: E731
        # nn.Linear stores [out, in]; x @ W.T, so keep W.T contiguous ([in, out]) for torch.mm.
        qkv = torch.cat([w("self_attn.q_proj.weight"), w("self_attn.k_proj.weight"), w("self_attn.v_proj.weight")], 0)
        gate_up = torch.cat([w("mlp.gate_proj.weight"), w("mlp.up_proj.weight")], 0)
        model["layers"].append({
            "ln1": w("input_layernorm.weight"),
            "W_qkv": qkv.t().contiguous(),
            "W_o": w("self_attn.o_proj.weight").t().contiguous(),
            "ln2": w("post_attention_layernorm.weight"),
            "W_gu": gate_up.t().contiguous(),
            "W_down": w("mlp.down_proj.weight").t().contiguous(),
        })
        del qkv, gate_up
    model["embed"] = state.pop("model.embed_tokens.weight")
    model["norm"] = state.pop("model.norm.weight")
    unembed = state.pop("lm_head.weight", None)
    if unembed is None:
        if not cfg.get("tie_word_embeddings", False):
            raise ValueError("lm_head.weight is missing and tie_word_embeddings is false")
        unembed = model["embed"]
    model["W_U"] = unembed.t().contiguous()  # [d, V]
    inv_freq = rope_inv_freq(cfg, dh)
    angle = torch.arange(seq, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
    emb = torch.cat([angle, angle], -1)  # [T, dh]
    model["cos"], model["sin"] = emb.cos(), emb.sin()
    model["mask"] = torch.full((seq, seq), float("-inf")).triu(1)
    return model


def rms_norm(x, weight, eps):
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), -1)


def repeat_kv(x, n_rep):
    """[B, K, T, dh] -> [B, K * n_rep, T, dh], as transformers' repeat_kv."""
    if n_rep == 1:
        return x
    B, K, T, dh = x.shape
    return x[:, :, None].expand(B, K, n_rep, T, dh).reshape(B, K * n_rep, T, dh)


def forward(model, tokens):
    B, T = tokens.shape
    H, K, dh, eps = model["H"], model["K"], model["dh"], model["eps"]
    x = F.embedding(tokens, model["embed"]).reshape(B * T, -1)
    cos, sin = model["cos"][:T], model["sin"][:T]
    for lw in model["layers"]:
        h = rms_norm(x, lw["ln1"], eps)
        qkv = torch.mm(h, lw["W_qkv"])
        q = qkv[:, : H * dh].view(B, T, H, dh).transpose(1, 2)
        k = qkv[:, H * dh : (H + K) * dh].view(B, T, K, dh).transpose(1, 2)
        v = qkv[:, (H + K) * dh :].view(B, T, K, dh).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = repeat_kv(k, H // K), repeat_kv(v, H // K)
        scores = torch.baddbmm(model["mask"], q.reshape(B * H, T, dh), k.reshape(B * H, T, dh).transpose(1, 2), alpha=1.0 / math.sqrt(dh))
        z = torch.bmm(torch.softmax(scores, -1), v.reshape(B * H, T, dh))
        z = z.view(B, H, T, dh).transpose(1, 2).reshape(B * T, H * dh)
        x = x + torch.mm(z, lw["W_o"])
        h = rms_norm(x, lw["ln2"], eps)
        gu = torch.mm(h, lw["W_gu"])
        d_mlp = gu.shape[1] // 2
        x = x + torch.mm(F.silu(gu[:, :d_mlp]) * gu[:, d_mlp:], lw["W_down"])
    x = rms_norm(x, model["norm"], eps)
    return torch.mm(x, model["W_U"]).view(B, T, -1)


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
    parser.add_argument("model_dir")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--tokens", default="", help="comma-separated ids, batch-major (default: the benchmark's formula)")
    parser.add_argument("--logits-out", default="")
    parser.add_argument("--logit-positions", default="")
    parser.add_argument("--gemm", action="store_true", help="also measure the fp32 GEMM peak")
    args = parser.parse_args()
    if args.iters < 1:
        parser.error("--iters must be at least 1")

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with open(os.path.join(args.model_dir, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "llama":
        parser.error(f"model_type {cfg.get('model_type')!r}: this baseline runs Llama checkpoints only")
    model = prepare(cfg, load_state(args.model_dir), args.seq)
    load_s = time.perf_counter() - start
    V = cfg["vocab_size"]
    if args.tokens:
        ids = [int(t) for t in args.tokens.split(",")]
    else:
        # The same ids as bench/llama.ts: (b * 7919 + t * 104729) mod V.
        ids = [(b * 7919 + t * 104729) % V for b in range(args.batch) for t in range(args.seq)]
    tokens = torch.tensor(ids, dtype=torch.long).view(args.batch, args.seq)

    times_ms = []
    with torch.inference_mode():
        peak = gemm_gflops() if args.gemm else 0.0
        for i in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            logits = forward(model, tokens)
            elapsed = (time.perf_counter() - t0) * 1000.0
            if i >= args.warmup:
                times_ms.append(elapsed)
            if args.logits_out and i == 0:
                positions = [int(p) for p in args.logit_positions.split(",")] if args.logit_positions else list(range(args.seq))
                logits[:, positions].contiguous().numpy().tofile(args.logits_out)
            del logits

    print(json.dumps({
        "ms_per_forward_all": times_ms,
        "ms_per_forward_median": statistics.median(times_ms),
        "load_s": load_s,
        "gemm_gflops": peak,
        "threads": args.threads,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
