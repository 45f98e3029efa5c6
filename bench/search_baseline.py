"""PyTorch eager baseline for the greedy path search benchmark (paper-method.md §3.1-3.5).

Usage:
    /usr/bin/python3 bench/search_baseline.py MODEL.safetensors CFG.json TRANSCODERS.safetensors \
        --tokens 1,2,3 --layer L --feature F [--position t] --iters 3 --branches 15 \
        --threads N --warmup 1 --repeats 5

MODEL.safetensors holds a TransformerLens-processed GPT-2-style model under TransformerLens names
(LayerNormPre, centred residual stream, folded value biases); CFG.json its n_layers, d_model,
n_heads, d_head, d_mlp, n_ctx, vocab and eps; TRANSCODERS.safetensors one ReLU transcoder per layer
(`L.W_enc` [d, m], `L.b_enc`, `L.W_dec` [m, d], `L.b_dec` (input pre-bias), `L.b_dec_out`), each
reading its layer's ln2-normalized MLP input.

The search is written as a researcher would write the paper's algorithm efficiently: one cached
forward pass, the transcoders run once over the prompt, and each node's children scored with
vectorised matrix-vector products over all lower layers at once and torch.topk. Raw attributions
(no zero-ablation cap), BOS ignored as an attention source, and attention candidates NOT capped
at n_heads per layer (the library's behaviour, a deliberate difference from the paper's code).

Prints one JSON line: forward+cache and search timings (medians and all timed repeats) and the
final beam ("paths"; every iteration's beam in "levels"), as node ids in the library's format
(lib/circuits/graph.ts nodeId) with contributions.
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


def load(model_path, cfg_path, transcoders_path):
    with open(cfg_path) as f:
        cfg = json.load(f)
    w = load_file(model_path)
    L = cfg["n_layers"]
    blk = lambda l, name: w[f"blocks.{l}.{name}"].contiguous()  # noqa: E731
    model = {
        "cfg": cfg,
        "W_E": w["embed.W_E"].contiguous(),
        "W_pos": w["pos_embed.W_pos"].contiguous(),
        # Q, K and V of a layer in one [d, 3*H*dh] matrix for a single matmul.
        "W_qkv": [torch.cat([blk(l, f"attn.W_{c}").permute(1, 0, 2).reshape(cfg["d_model"], -1) for c in "QKV"], 1).contiguous() for l in range(L)],
        "b_qkv": [torch.cat([blk(l, f"attn.b_{c}").reshape(-1) for c in "QKV"]) for l in range(L)],
        "W_O": torch.stack([blk(l, "attn.W_O") for l in range(L)]),  # [L, H, dh, d]
        "W_V": torch.stack([blk(l, "attn.W_V") for l in range(L)]),  # [L, H, d, dh]
        "b_O": [blk(l, "attn.b_O") for l in range(L)],
        "W_in": [blk(l, "mlp.W_in") for l in range(L)],
        "b_in": [blk(l, "mlp.b_in") for l in range(L)],
        "W_out": [blk(l, "mlp.W_out") for l in range(L)],
        "b_out": [blk(l, "mlp.b_out") for l in range(L)],
    }
    del w
    t = load_file(transcoders_path)
    # Stacked over layers so that one matvec scores the features of every lower layer.
    tcs = {}
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        tcs[name] = torch.stack([t.pop(f"{l}.{name}") for l in range(L)]).contiguous()
    del t
    return model, tcs


def forward_and_cache(model, tcs, tokens):
    """One forward pass on [T] tokens, caching what the search reads, and every transcoder's activations."""
    cfg = model["cfg"]
    H, dh, eps = cfg["n_heads"], cfg["d_head"], cfg["eps"]
    T = tokens.shape[0]
    mask = torch.full((T, T), float("-inf")).triu(1)

    def ln_pre(x):
        x = x - x.mean(-1, keepdim=True)
        scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        return x / scale, scale.squeeze(-1)

    cache = {"resid_pre": [], "resid_mid": [], "ln1_scale": [], "ln2_scale": [], "pattern": [], "v": [], "ln2_normalized": []}
    x = model["W_E"][tokens] + model["W_pos"][:T]
    for l in range(cfg["n_layers"]):
        cache["resid_pre"].append(x)
        h, s1 = ln_pre(x)
        qkv = torch.addmm(model["b_qkv"][l], h, model["W_qkv"][l]).view(T, 3, H, dh)
        q, k, v = qkv.permute(1, 2, 0, 3)  # each [H, T, dh]
        scores = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=1.0 / math.sqrt(dh))
        pattern = torch.softmax(scores, -1)  # [H, T, T]
        z = torch.bmm(pattern, v)  # [H, T, dh]
        attn_out = torch.einsum("hte,hed->td", z, model["W_O"][l]) + model["b_O"][l]
        x = x + attn_out
        cache["resid_mid"].append(x)
        h2, s2 = ln_pre(x)
        mlp = torch.addmm(model["b_out"][l], F.gelu(torch.addmm(model["b_in"][l], h2, model["W_in"][l]), approximate="tanh"), model["W_out"][l])
        x = x + mlp
        cache["ln1_scale"].append(s1)
        cache["ln2_scale"].append(s2)
        cache["pattern"].append(pattern)
        cache["v"].append(qkv[:, 2])  # hook_v: [T, H, dh]
        cache["ln2_normalized"].append(h2)
    c = {
        "resid_pre0": cache["resid_pre"][0],
        "ln1_scale": torch.stack(cache["ln1_scale"]),  # [L, T]
        "ln2_scale": torch.stack(cache["ln2_scale"]),  # [L, T]
        "pattern": torch.stack(cache["pattern"]),  # [L, H, T, T]
        "v": torch.stack(cache["v"]),  # [L, T, H, dh]
    }
    # Transcoder activations f_l = relu((x_l - b_dec) W_enc + b_enc) on each layer's ln2-normalized input: [L, T, m].
    x_in = torch.stack(cache["ln2_normalized"]) - tcs["b_dec"][:, None, :]
    c["acts"] = torch.relu(torch.baddbmm(tcs["b_enc"][:, None, :], x_in, tcs["W_enc"]))
    return c


class Node:
    __slots__ = ("id", "contrib", "layer", "sublayer", "pos", "vec")

    def __init__(self, id, contrib, layer, sublayer, pos, vec):
        self.id, self.contrib, self.layer, self.sublayer, self.pos, self.vec = id, contrib, layer, sublayer, pos, vec


def feature_root(tcs, cache, layer, feature, pos):
    vec = tcs["W_enc"][layer, :, feature] / cache["ln2_scale"][layer, pos]
    return Node(f"mlp{layer}[{feature}]@{pos}", float(cache["acts"][layer, pos, feature]), layer, "resid_mid", pos, vec)


def children(model, tcs, cache, node, k, ignore_bos=True):
    """The global top k of the node's feature, attention and embedding contributors."""
    v, t = node.vec, node.pos
    n_mlp = node.layer + 1 if node.sublayer == "resid_post" else node.layer
    n_attn = node.layer if node.sublayer == "resid_pre" else node.layer + 1
    cands = []
    if n_mlp > 0:
        # Transcoder features of every lower layer: contrib = (W_dec v) * f, one matvec over the stacked decoders.
        g = torch.matmul(tcs["W_dec"][:n_mlp], v)  # [n, m]
        values, idx = torch.topk(g * cache["acts"][:n_mlp, t], min(k, g.shape[1]), dim=1)  # [n, k]
        # Vector: W_enc[:, i] * g_i / ln2 scale.
        gi = torch.gather(g, 1, idx) / cache["ln2_scale"][:n_mlp, t, None]  # [n, k]
        cols = torch.gather(tcs["W_enc"][:n_mlp], 2, idx[:, None, :].expand(-1, v.shape[0], -1))  # [n, d, k]
        vecs = (cols * gi[:, None, :]).transpose(1, 2)  # [n, k, d]
        values, idx = values.tolist(), idx.tolist()
        for l in range(n_mlp):
            for j in range(len(idx[l])):
                cands.append(Node(f"mlp{l}[{idx[l][j]}]@{t}", values[l][j], l, "resid_mid", t, vecs[l, j]))
    first = 1 if ignore_bos else 0
    if n_attn > 0 and t + 1 > first:
        # Attention heads and sources: C[h, s] = pattern[h, t, s] * (v_s,h . W_O[h] v).
        ov = torch.matmul(model["W_O"][:n_attn], v)  # [n, H, dh]
        vs = cache["v"][:n_attn, first : t + 1]  # [n, S, H, dh]
        C = cache["pattern"][:n_attn, :, t, first : t + 1] * torch.einsum("lshe,lhe->lhs", vs, ov)  # [n, H, S]
        S = C.shape[2]
        values, flat = torch.topk(C.reshape(n_attn, -1), min(k, C.shape[1] * S), dim=1)
        heads, sources = flat // S, flat % S + first
        # Vector: W_V[h] (W_O[h] v) * pattern[h, t, s] / ln1 scale at s.
        layers = torch.arange(n_attn)[:, None].expand_as(heads)
        wv = torch.matmul(model["W_V"][:n_attn], ov[..., None]).squeeze(-1)  # [n, H, d]
        weight = cache["pattern"][layers, heads, t, sources] / cache["ln1_scale"][layers, sources]
        vecs = wv[layers, heads] * weight[..., None]  # [n, k, d]
        values, heads, sources = values.tolist(), heads.tolist(), sources.tolist()
        for l in range(n_attn):
            for j in range(len(values[l])):
                cands.append(Node(f"attn{l}.h{heads[l][j]}@{sources[l][j]}", values[l][j], l, "resid_pre", sources[l][j], vecs[l, j]))
    cands.append(Node(f"embed@{t}", float(torch.dot(cache["resid_pre0"][t], v)), 0, "resid_pre", t, v))
    cands.sort(key=lambda c: -c.contrib)  # stable
    return cands[:k]


def greedy_paths(model, tcs, cache, root, iters, branches):
    beam, levels = [[root]], []
    for _ in range(iters):
        cand = []
        for path in beam:
            leaf = path[-1]
            if leaf.layer == 0 and leaf.sublayer == "resid_pre":
                continue
            cand += [path + [c] for c in children(model, tcs, cache, leaf, branches)]
        cand.sort(key=lambda p: -p[-1].contrib)  # stable
        beam = cand[:branches]
        levels.append(beam)
    return levels


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("cfg")
    parser.add_argument("transcoders")
    parser.add_argument("--tokens", required=True, help="comma-separated token ids")
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--feature", type=int, required=True)
    parser.add_argument("--position", type=int, default=-1, help="default: the last position")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--branches", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    torch.set_num_threads(args.threads)
    tokens = torch.tensor([int(s) for s in args.tokens.split(",")], dtype=torch.long)
    position = args.position if args.position >= 0 else tokens.shape[0] + args.position
    with torch.inference_mode():
        model, tcs = load(args.model, args.cfg, args.transcoders)
        forward_ms, search_ms = [], []
        for i in range(args.warmup + args.repeats):
            start = time.perf_counter()
            cache = forward_and_cache(model, tcs, tokens)
            elapsed = (time.perf_counter() - start) * 1000.0
            if i >= args.warmup:
                forward_ms.append(elapsed)
        for i in range(args.warmup + args.repeats):
            start = time.perf_counter()
            root = feature_root(tcs, cache, args.layer, args.feature, position)
            levels = greedy_paths(model, tcs, cache, root, args.iters, args.branches)
            elapsed = (time.perf_counter() - start) * 1000.0
            if i >= args.warmup:
                search_ms.append(elapsed)

    print(json.dumps({
        "ms_forward_and_cache": statistics.median(forward_ms),
        "ms_forward_and_cache_all": forward_ms,
        "ms_search_median": statistics.median(search_ms),
        "ms_search_all": search_ms,
        "paths": [[[n.id, n.contrib] for n in path] for path in levels[-1]],
        # Every iteration's beam (the last is "paths"), for a stricter cross-check.
        "levels": [[[[n.id, n.contrib] for n in path] for path in beam] for beam in levels],
        "threads": args.threads,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
