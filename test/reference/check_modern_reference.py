"""Self-check for hf_modern_reference.py (no transformers needed, CPU only, a few seconds).

Builds tiny random checkpoints in exact Hugging Face layout for every supported family, runs the
reference on them and checks:
  * internal identities (residual stream bookkeeping, logits = ln_final . W_U (+ soft-capping),
    pattern rows sum to 1 and vanish outside the causal / sliding window, loss = -log_softmax);
  * agreement with a second, deliberately different float64 implementation written here (explicit
    loops over heads and query positions, GQA by head indexing, RoPE as pairwise rotations, llama3
    frequencies in Meta's original if/elif form);
  * bfloat16 semantics (every stored activation is bf16-representable, Gemma normaliser rounding) and
    closeness of the bf16 run to the float32 run;
  * the CLI (sharded checkpoint, --dtype), the gemma3 multimodal key layout, and the error paths.

Usage: /usr/bin/python3 test/reference/check_modern_reference.py
"""

import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import hf_modern_reference as ref  # noqa: E402
from safetensors_io import load_file, save_file  # noqa: E402

B, T, VOCAB = 2, 10, 100


# ---------------------------------------------------------------------------------------
# Random checkpoints in HF layout.
# ---------------------------------------------------------------------------------------

BASE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=VOCAB, max_position_embeddings=64)

CONFIGS = {
    "llama": dict(BASE, model_type="llama", num_hidden_layers=2, rms_norm_eps=1e-5, hidden_act="silu",
                  rope_theta=10000.0, attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
                  rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
    "mistral": dict(BASE, model_type="mistral", num_hidden_layers=2, rms_norm_eps=1e-5, hidden_act="silu",
                    rope_theta=10000.0, sliding_window=4, tie_word_embeddings=False, head_dim=None),
    "qwen2": dict(BASE, model_type="qwen2", num_hidden_layers=3, rms_norm_eps=1e-6, hidden_act="silu",
                  rope_theta=1000.0, use_sliding_window=True, sliding_window=4, max_window_layers=1,
                  tie_word_embeddings=True, rope_scaling={"type": "linear", "factor": 2.0}),
    "qwen3": dict(BASE, model_type="qwen3", num_hidden_layers=2, head_dim=32, rms_norm_eps=1e-6,
                  hidden_act="silu", rope_theta=1000000.0, attention_bias=False, tie_word_embeddings=False,
                  use_sliding_window=False),
    "gemma2": dict(BASE, model_type="gemma2", num_hidden_layers=3, head_dim=32, rms_norm_eps=1e-6,
                   hidden_activation="gelu_pytorch_tanh", hidden_act="gelu_pytorch_tanh", rope_theta=10000.0,
                   query_pre_attn_scalar=24, sliding_window=4, attn_logit_softcapping=5.0,
                   final_logit_softcapping=3.0, tie_word_embeddings=True),
    # hidden 72: sqrt(72) = 8.485 rounds to 8.5 in bf16, which the bf16 check looks for.
    "gemma3_text": dict(BASE, model_type="gemma3_text", hidden_size=72, num_hidden_layers=3, head_dim=32,
                        num_key_value_heads=1, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
                        rope_theta=1000000.0, rope_local_base_freq=10000.0, sliding_window=4,
                        sliding_window_pattern=3, query_pre_attn_scalar=32, final_logit_softcapping=3.0,
                        attn_logit_softcapping=None, tie_word_embeddings=True,
                        rope_scaling={"rope_type": "linear", "factor": 8.0}),
}



def same_gain(gained, normed):
    """Whether gained = g * normed for one per-dimension g shared by every token (to 1e-5 relative)."""
    a, b = gained.double().reshape(-1, gained.shape[-1]), normed.double().reshape(-1, normed.shape[-1])
    g = (a * b).sum(0) / (b * b).sum(0).clamp_min(1e-30)
    return bool(((a - b * g).abs().max() <= 1e-5 * a.abs().max().clamp_min(1.0)).item())

def random_state(cfg, gen, scale=1.0):
    """HF state dict (nn.Linear weights [out, in]) for the config."""
    mt = cfg["model_type"]
    d, H, Hkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dh = cfg.get("head_dim") or d // H
    m = cfg["intermediate_size"]
    gemma = mt.startswith("gemma")

    def lin(o, i):
        return torch.randn(o, i, generator=gen) * (scale / math.sqrt(i))

    def vec(n, s=0.1):
        return torch.randn(n, generator=gen) * s

    def norm(n):  # Gemma stores w with (1 + w) applied; others store w itself
        return vec(n, 0.2) if gemma else 1.0 + vec(n, 0.2)

    sd = {"model.embed_tokens.weight": torch.randn(cfg["vocab_size"], d, generator=gen) * (0.3 if gemma else 1.0),
          "model.norm.weight": norm(d)}
    qkv_bias = mt == "qwen2" or (mt in ("llama", "qwen3", "gemma2", "gemma3_text") and cfg.get("attention_bias"))
    o_bias = mt != "qwen2" and bool(cfg.get("attention_bias"))
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}."
        sd[p + "self_attn.q_proj.weight"] = lin(H * dh, d)
        sd[p + "self_attn.k_proj.weight"] = lin(Hkv * dh, d)
        sd[p + "self_attn.v_proj.weight"] = lin(Hkv * dh, d)
        sd[p + "self_attn.o_proj.weight"] = lin(d, H * dh)
        if qkv_bias:
            sd[p + "self_attn.q_proj.bias"] = vec(H * dh)
            sd[p + "self_attn.k_proj.bias"] = vec(Hkv * dh)
            sd[p + "self_attn.v_proj.bias"] = vec(Hkv * dh)
        if o_bias:
            sd[p + "self_attn.o_proj.bias"] = vec(d)
        if mt in ("qwen3", "gemma3_text"):
            sd[p + "self_attn.q_norm.weight"] = norm(dh)
            sd[p + "self_attn.k_norm.weight"] = norm(dh)
        sd[p + "mlp.gate_proj.weight"] = lin(m, d)
        sd[p + "mlp.up_proj.weight"] = lin(m, d)
        sd[p + "mlp.down_proj.weight"] = lin(d, m)
        if mt == "llama" and cfg.get("mlp_bias"):
            sd[p + "mlp.gate_proj.bias"] = vec(m)
            sd[p + "mlp.up_proj.bias"] = vec(m)
            sd[p + "mlp.down_proj.bias"] = vec(d)
        sd[p + "input_layernorm.weight"] = norm(d)
        sd[p + "post_attention_layernorm.weight"] = norm(d)
        if gemma:
            sd[p + "pre_feedforward_layernorm.weight"] = norm(d)
            sd[p + "post_feedforward_layernorm.weight"] = norm(d)
    if not cfg.get("tie_word_embeddings"):
        sd["lm_head.weight"] = lin(cfg["vocab_size"], d)
    return sd


def write_checkpoint(path, cfg, sd, shards=1):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    if shards == 1:
        save_file(sd, os.path.join(path, "model.safetensors"))
        return
    names = sorted(sd)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: sd[n] for n in names[i::shards]}
        save_file(part, os.path.join(path, shard))
        weight_map.update({n: shard for n in part})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


# ---------------------------------------------------------------------------------------
# Second implementation: float64, loops, written from the maths rather than from the reference.
# ---------------------------------------------------------------------------------------


def naive_inv_freq(theta, dim, scaling):
    freqs = [1.0 / theta ** (2 * i / dim) for i in range(dim // 2)]
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "linear":
        freqs = [f / scaling["factor"] for f in freqs]
    elif kind == "llama3":  # Meta's apply_scaling, written as if/elif
        factor, lo, hi = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        out = []
        for f in freqs:
            wavelen = 2 * math.pi / f
            if wavelen < old / hi:
                out.append(f)
            elif wavelen > old / lo:
                out.append(f / factor)
            else:
                smooth = (old / wavelen - lo) / (hi - lo)
                out.append((1 - smooth) * f / factor + smooth * f)
        freqs = out
    return torch.tensor(freqs, dtype=torch.float64)


def naive_rope(x, inv_freq):
    """x [T, dh] float64: rotate pair (i, i + dh/2) by angle t * inv_freq[i]."""
    T, dh = x.shape
    half = dh // 2
    out = x.clone()
    for t in range(T):
        for i in range(half):
            a = t * inv_freq[i]
            c, s = math.cos(a), math.sin(a)
            x1, x2 = x[t, i], x[t, i + half]
            out[t, i] = x1 * c - x2 * s
            out[t, i + half] = x2 * c + x1 * s
    return out


def naive_forward(cfg, sd, tokens):
    mt = cfg["model_type"]
    gemma = mt.startswith("gemma")
    g = {k: v.double() for k, v in sd.items()}
    d, H, Hkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dh = cfg.get("head_dim") or d // H
    n_layers, eps = cfg["num_hidden_layers"], cfg["rms_norm_eps"]
    group = H // Hkv

    def norm(x, w):
        r = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
        return r * (1 + w) if gemma else r * w

    def lin(x, name):
        y = x @ g[name + ".weight"].T
        return y + g[name + ".bias"] if name + ".bias" in g else y

    def act(x):
        if gemma:
            return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
        return x * torch.sigmoid(x)

    def window_of(L):
        if mt == "mistral":
            return cfg.get("sliding_window")
        if mt in ("qwen2", "qwen3"):
            return cfg["sliding_window"] if cfg.get("use_sliding_window") and L >= cfg["max_window_layers"] else None
        if mt == "gemma2":
            return cfg["sliding_window"] if L % 2 == 0 else None
        if mt == "gemma3_text":
            return cfg["sliding_window"] if (L + 1) % cfg["sliding_window_pattern"] != 0 else None
        return None

    def inv_freq_of(L):
        if mt == "gemma3_text" and window_of(L) is not None:
            return naive_inv_freq(cfg["rope_local_base_freq"], dh, None)
        return naive_inv_freq(cfg["rope_theta"], dh, cfg.get("rope_scaling"))

    scale = cfg["query_pre_attn_scalar"] ** -0.5 if gemma else dh ** -0.5
    softcap = cfg.get("attn_logit_softcapping") if mt == "gemma2" else None
    out = {}
    logits_all = []
    for b in range(len(tokens)):
        x = torch.stack([g["model.embed_tokens.weight"][t] for t in tokens[b]])
        if gemma:
            x = x * math.sqrt(d)
        for L in range(n_layers):
            p = f"model.layers.{L}."
            h = norm(x, g[p + "input_layernorm.weight"])
            q = lin(h, p + "self_attn.q_proj").reshape(T, H, dh)
            k = lin(h, p + "self_attn.k_proj").reshape(T, Hkv, dh)
            v = lin(h, p + "self_attn.v_proj").reshape(T, Hkv, dh)
            if p + "self_attn.q_norm.weight" in g:
                q = norm(q, g[p + "self_attn.q_norm.weight"])
                k = norm(k, g[p + "self_attn.k_norm.weight"])
            inv = inv_freq_of(L)
            q = torch.stack([naive_rope(q[:, i], inv) for i in range(H)], 1)
            k = torch.stack([naive_rope(k[:, j], inv) for j in range(Hkv)], 1)
            W = window_of(L)
            z = torch.zeros(T, H, dh, dtype=torch.float64)
            pattern = torch.zeros(H, T, T, dtype=torch.float64)
            for i in range(H):
                j = i // group  # GQA: query head i reads kv head i // group
                for t in range(T):
                    lo = 0 if W is None else max(0, t - W + 1)
                    keys = list(range(lo, t + 1))
                    s = torch.stack([(q[t, i] * k[u, j]).sum() * scale for u in keys])
                    if softcap is not None:
                        s = softcap * torch.tanh(s / softcap)
                    e = torch.exp(s - s.max())
                    pr = e / e.sum()
                    pattern[i, t, lo:t + 1] = pr
                    z[t, i] = sum(pr[n] * v[u, j] for n, u in enumerate(keys))
            out[(b, L, "pattern")] = pattern
            out[(b, L, "z")] = z
            a = z.reshape(T, H * dh) @ g[p + "self_attn.o_proj.weight"].T
            if p + "self_attn.o_proj.bias" in g:
                a = a + g[p + "self_attn.o_proj.bias"]
            if gemma:
                a = norm(a, g[p + "post_attention_layernorm.weight"])
                h = norm(x + a, g[p + "pre_feedforward_layernorm.weight"])
            else:
                h = norm(x + a, g[p + "post_attention_layernorm.weight"])
            x = x + a
            mo = lin(act(lin(h, p + "mlp.gate_proj")) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
            if gemma:
                mo = norm(mo, g[p + "post_feedforward_layernorm.weight"])
            x = x + mo
            out[(b, L, "resid_post")] = x
        h = norm(x, g["model.norm.weight"])
        W_U = g["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else g["lm_head.weight"]
        lg = h @ W_U.T
        fc = cfg.get("final_logit_softcapping") if gemma else None
        if fc is not None:
            lg = fc * torch.tanh(lg / fc)
        logits_all.append(lg)
    out["logits"] = torch.stack(logits_all)
    return out


# ---------------------------------------------------------------------------------------
# Checks.
# ---------------------------------------------------------------------------------------

FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("  FAIL:", what)


def close(a, b, tol, what):
    a, b = a.double(), b.double()
    err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
    check(err < tol, f"{what}: max rel err {err:.2e} >= {tol:.0e}")
    return err


def expected_names(spec):
    names = {"hook_embed", "logits", "loss", "ln_final.hook_scale", "ln_final.hook_normalized", "unembed.hook_pre"}
    per = ["hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
           "attn.hook_v", "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_pattern",
           "attn.hook_z", "hook_attn_out", "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized",
           "mlp.hook_in", "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post", "mlp.hook_out",
           "hook_mlp_out", "hook_resid_post"]
    if spec["gemma"]:
        per += ["ln1_post.hook_scale", "ln1_post.hook_normalized", "ln2_post.hook_scale",
                "ln2_post.hook_normalized"]
    for L in range(spec["n_layers"]):
        names |= {f"blocks.{L}.{n}" for n in per}
    return names


def identities(name, cfg, spec, sd, out, tokens):
    d, H, Hkv, dh = spec["hidden_size"], spec["n_heads"], spec["n_kv_heads"], spec["head_dim"]
    m = cfg["intermediate_size"]
    check(set(out) == expected_names(spec), f"{name}: hook names {sorted(set(out) ^ expected_names(spec))}")
    shapes = {"hook_embed": (B, T, d), "logits": (B, T, VOCAB), "loss": ()}
    for L in range(spec["n_layers"]):
        p = f"blocks.{L}."
        shapes.update({p + "attn.hook_q": (B, T, H, dh), p + "attn.hook_k": (B, T, Hkv, dh),
                       p + "attn.hook_v": (B, T, Hkv, dh), p + "attn.hook_rot_q": (B, T, H, dh),
                       p + "attn.hook_rot_k": (B, T, Hkv, dh), p + "attn.hook_z": (B, T, H, dh),
                       p + "attn.hook_attn_scores": (B, H, T, T), p + "attn.hook_pattern": (B, H, T, T),
                       p + "ln1.hook_scale": (B, T, 1), p + "ln2.hook_normalized": (B, T, d),
                       p + "mlp.hook_pre": (B, T, m), p + "mlp.hook_post": (B, T, m),
                       p + "hook_resid_post": (B, T, d)})
    for k, s in shapes.items():
        check(tuple(out[k].shape) == s, f"{name}: {k} shape {tuple(out[k].shape)} != {s}")
    for k, v in out.items():
        if "attn_scores" not in k:
            check(bool(torch.isfinite(v).all()), f"{name}: {k} not finite")

    check(torch.equal(out["blocks.0.hook_resid_pre"], out["hook_embed"]), f"{name}: resid_pre0 != embed")
    for L in range(spec["n_layers"]):
        p = f"blocks.{L}."
        close(out[p + "hook_resid_mid"], out[p + "hook_resid_pre"] + out[p + "hook_attn_out"], 1e-6,
              f"{name} L{L}: resid_mid = resid_pre + attn_out")
        close(out[p + "hook_resid_post"], out[p + "hook_resid_mid"] + out[p + "hook_mlp_out"], 1e-6,
              f"{name} L{L}: resid_post = resid_mid + mlp_out")
        if L + 1 < spec["n_layers"]:
            check(torch.equal(out[f"blocks.{L + 1}.hook_resid_pre"], out[p + "hook_resid_post"]),
                  f"{name} L{L}: resid_pre[L+1] != resid_post[L]")
        # hook_normalized is before the gain (TransformerLens's RMSNorm): the MLP input is it times a
        # per-dimension gain, the same at every token.
        check(same_gain(out[p + "mlp.hook_in"], out[p + "ln2.hook_normalized"]), f"{name} L{L}: mlp.hook_in = gain * ln2.hook_normalized")
        check(torch.equal(out[p + "mlp.hook_out"], out[p + "hook_mlp_out"]), f"{name} L{L}: mlp_out names")
        x = out[p + "hook_resid_pre"]
        close(out[p + "ln1.hook_scale"], (x.double() ** 2).mean(-1, keepdim=True).add(spec["eps"]).sqrt(), 1e-6,
              f"{name} L{L}: ln1 scale")
        if spec["gemma"]:
            check(same_gain(out[p + "hook_attn_out"], out[p + "ln1_post.hook_normalized"]),
                  f"{name} L{L}: attn_out = gain * ln1_post")
            check(same_gain(out[p + "hook_mlp_out"], out[p + "ln2_post.hook_normalized"]),
                  f"{name} L{L}: mlp_out = gain * ln2_post")
        # pattern: rows sum to 1, zero exactly where masked, positive inside the window.
        pat, sc = out[p + "attn.hook_pattern"], out[p + "attn.hook_attn_scores"]
        close(pat.sum(-1), torch.ones(B, H, T), 1e-6, f"{name} L{L}: pattern rows sum to 1")
        W = spec["windows"][L]
        qi, ki = torch.arange(T)[:, None], torch.arange(T)[None, :]
        allowed = (ki <= qi) & ((ki > qi - W) if W is not None else torch.ones(T, T, dtype=torch.bool))
        check(bool((pat[..., ~allowed] == 0).all()), f"{name} L{L}: pattern nonzero outside window {W}")
        check(bool((pat[..., allowed] > 0).all()), f"{name} L{L}: pattern zero inside window {W}")
        check(bool(torch.isneginf(sc[..., ~allowed]).all()) and bool(torch.isfinite(sc[..., allowed]).all()),
              f"{name} L{L}: attn_scores masking")
        if W is not None and W < T:
            check(int(allowed.sum(-1).max()) == W, f"{name} L{L}: window {W} not exercised")
        cap = spec["attn_softcap"]
        if cap is not None:
            fin = sc[..., allowed]
            check(bool((fin.abs() < cap).all()) and float(fin.abs().max()) > 0.5 * cap,
                  f"{name} L{L}: soft-capping did not bite (max |score| {float(fin.abs().max()):.2f})")
        # RoPE is a rotation of (i, i + dh/2) pairs: pair norms are preserved.
        qn = out[p + "attn.hook_rot_q"]
        pre = out[p + "attn.hook_q"]
        if spec["qk_norm"]:
            pre = ref.rms_norm(pre, sd[f"model.layers.{L}.self_attn.q_norm.weight"], spec["eps"], spec["gemma"])
        half = dh // 2
        close(qn[..., :half] ** 2 + qn[..., half:] ** 2, pre[..., :half] ** 2 + pre[..., half:] ** 2, 1e-5,
              f"{name} L{L}: rope preserves pair norms")
        check(torch.allclose(qn[:, 0], pre[:, 0], atol=1e-6), f"{name} L{L}: rope is identity at position 0")

    W_U = sd["lm_head.weight"] if "lm_head.weight" in sd and not spec["tie"] else sd["model.embed_tokens.weight"]
    check(same_gain(out["unembed.hook_pre"], out["ln_final.hook_normalized"]), f"{name}: unembed.hook_pre = gain * ln_final.hook_normalized")
    lg = out["unembed.hook_pre"].double() @ W_U.double().T
    if spec["final_softcap"] is not None:
        c = spec["final_softcap"]
        check(float(lg.abs().max()) > c, f"{name}: final soft-capping did not bite")
        lg = c * torch.tanh(lg / c)
    close(out["logits"], lg, 1e-5, f"{name}: logits = ln_final . W_U")
    tok = torch.tensor(tokens)
    lp = out["logits"].double()[:, :-1].log_softmax(-1)
    loss = -lp.gather(-1, tok[:, 1:, None]).mean()
    check(abs(float(out["loss"]) - float(loss)) < 1e-5, f"{name}: loss {float(out['loss'])} vs {float(loss)}")


def test_family(name, tmp, gen):
    cfg = CONFIGS[name]
    sd = random_state(cfg, gen, scale=2.0 if name == "gemma2" else 1.0)
    path = os.path.join(tmp, name)
    write_checkpoint(path, cfg, sd, shards=2 if name == "qwen2" else 1)
    tokens = torch.randint(0, VOCAB, (B, T), generator=gen).tolist()
    spec, _ = ref.load_model(path)
    out = ref.forward(path, tokens)
    identities(name, cfg, spec, sd, out, tokens)

    naive = naive_forward(cfg, sd, tokens)
    errs = [close(out["logits"], naive["logits"], 1e-4, f"{name}: logits vs second implementation")]
    for b in range(B):
        for L in range(spec["n_layers"]):
            p = f"blocks.{L}."
            errs.append(close(out[p + "attn.hook_pattern"][b], naive[(b, L, "pattern")], 1e-4,
                              f"{name} b{b} L{L}: pattern vs second implementation"))
            errs.append(close(out[p + "attn.hook_z"][b], naive[(b, L, "z")], 1e-4,
                              f"{name} b{b} L{L}: z vs second implementation"))
            errs.append(close(out[p + "hook_resid_post"][b], naive[(b, L, "resid_post")], 1e-4,
                              f"{name} b{b} L{L}: resid_post vs second implementation"))

    bf = ref.forward(path, tokens, torch.bfloat16)
    for k, v in bf.items():
        if k != "loss" and "hook_scale" not in k:
            fin = v[torch.isfinite(v)]
            check(torch.equal(fin, fin.bfloat16().float()), f"{name}: bf16 run {k} not bf16-valued")
    rel = ((bf["logits"] - out["logits"]).norm() / out["logits"].norm()).item()
    check(rel < 2e-2, f"{name}: bf16 logits rel err {rel:.3e}")
    pat_err = max((bf[f"blocks.{L}.attn.hook_pattern"] - out[f"blocks.{L}.attn.hook_pattern"]).abs().max().item()
                  for L in range(spec["n_layers"]))
    check(pat_err < 3e-2, f"{name}: bf16 pattern abs err {pat_err:.3e}")
    if spec["gemma"]:
        emb = sd["model.embed_tokens.weight"].bfloat16()[torch.tensor(tokens)]
        want = emb * torch.tensor(spec["hidden_size"] ** 0.5, dtype=torch.bfloat16)
        check(torch.equal(bf["hook_embed"], want.float()), f"{name}: bf16 embedding normaliser")
    print(f"  {name:12s} max rel err vs second impl {max(errs):.1e}, bf16 logits rel err {rel:.1e}")
    return path, tokens, out


def test_llama3_inv_freq():
    # Parameters chosen so all three llama3 branches (unchanged, smoothed, divided) occur.
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    rope = ref._rope_spec(10000.0, scaling, 1.0)
    got = ref.rope_inv_freq(rope, 32).double()
    want = naive_inv_freq(10000.0, 32, scaling)
    close(got, want, 1e-6, "llama3 inv_freq vs Meta formula")
    base = naive_inv_freq(10000.0, 32, None)
    ratio = (base / want).tolist()
    check(any(abs(r - 1) < 1e-9 for r in ratio) and any(abs(r - 8) < 1e-6 for r in ratio)
          and any(1.01 < r < 7.99 for r in ratio), f"llama3 branches not all exercised: {ratio}")


def test_config_defaults():
    q3 = ref.resolve_config({"model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 2})[0]
    check(q3["head_dim"] == 128 and q3["n_kv_heads"] == 32 and not q3["tie"], "qwen3 defaults")
    ll = ref.resolve_config({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                             "num_hidden_layers": 2, "head_dim": None, "num_key_value_heads": None})[0]
    check(ll["head_dim"] == 16 and ll["n_kv_heads"] == 4, "llama head_dim/kv defaults")
    mi = ref.resolve_config({"model_type": "mistral", "num_hidden_layers": 2})[0]
    check(mi["windows"] == [4096, 4096], "mistral default sliding_window 4096")
    mi = ref.resolve_config({"model_type": "mistral", "num_hidden_layers": 2, "sliding_window": None})[0]
    check(mi["windows"] == [None, None], "mistral sliding_window null")
    g2 = ref.resolve_config({"model_type": "gemma2", "num_hidden_layers": 4})[0]
    check(g2["windows"] == [4096, None, 4096, None] and g2["attn_softcap"] == 50.0
          and g2["final_softcap"] == 30.0 and g2["tie"] and abs(g2["scaling"] - 1 / 16) < 1e-12,
          "gemma2 defaults")
    g3 = ref.resolve_config({"model_type": "gemma3_text", "num_hidden_layers": 7,
                             "rope_scaling": {"rope_type": "linear", "factor": 8.0}})[0]
    check(g3["windows"] == [4096] * 5 + [None, 4096], "gemma3 default layer pattern")
    check(g3["ropes"][0]["theta"] == 10000.0 and g3["ropes"][0]["type"] == "default"
          and g3["ropes"][5]["theta"] == 1e6 and g3["ropes"][5]["type"] == "linear", "gemma3 local/global rope")
    q2 = ref.resolve_config({"model_type": "qwen2", "num_hidden_layers": 4, "use_sliding_window": True,
                             "sliding_window": 8, "max_window_layers": 2})[0]
    check(q2["windows"] == [None, None, 8, 8] and q2["qkv_bias"] and not q2["o_bias"], "qwen2 sliding/bias")
    q2 = ref.resolve_config({"model_type": "qwen2", "num_hidden_layers": 2, "sliding_window": 8})[0]
    check(q2["windows"] == [None, None], "qwen2 sliding off unless use_sliding_window")


def test_gemma3_multimodal(tmp, gen, text_path, tokens, text_out):
    cfg = dict(CONFIGS["gemma3_text"])
    cfg["final_logit_softcapping"] = None  # Gemma3ForConditionalGeneration never soft-caps logits
    sd = load_file(os.path.join(text_path, "model.safetensors"))
    mm = {"language_model." + k: v for k, v in sd.items()}  # language_model.model.* layout
    mm["vision_tower.vision_model.post_layernorm.weight"] = torch.ones(8)
    mm["multi_modal_projector.mm_input_projection_weight"] = torch.zeros(8, cfg["hidden_size"])
    text_cfg = {k: v for k, v in cfg.items() if k != "model_type"}
    path = os.path.join(tmp, "gemma3_mm")
    write_checkpoint(path, {"model_type": "gemma3", "text_config": text_cfg, "vision_config": {}}, mm)
    out = ref.forward(path, tokens)
    path2 = os.path.join(tmp, "gemma3_text_nocap")
    write_checkpoint(path2, cfg, sd)
    want = ref.forward(path2, tokens)
    check(set(out) == set(want) and all(torch.equal(out[k], want[k]) for k in out),
          "gemma3 multimodal layout differs from gemma3_text")
    new = {("model.language_model." + k[len("model."):]): v for k, v in sd.items()}
    path3 = os.path.join(tmp, "gemma3_mm_new")
    write_checkpoint(path3, {"model_type": "gemma3", "text_config": text_cfg}, new)
    out3 = ref.forward(path3, tokens)
    check(all(torch.equal(out3[k], want[k]) for k in out3), "gemma3 model.language_model.* layout")
    check(not torch.equal(want["logits"], text_out["logits"]), "gemma3 final soft-capping had no effect")


def test_cli(tmp, path, tokens, out):
    tok_path = os.path.join(tmp, "tokens.json")
    with open(tok_path, "w") as f:
        json.dump(tokens, f)
    script = os.path.join(HERE, "hf_modern_reference.py")
    res = {}
    for dt in ("float32", "bfloat16"):
        dst = os.path.join(tmp, f"out_{dt}.safetensors")
        proc = subprocess.run([sys.executable, script, path, tok_path, dst, "--dtype", dt],
                              capture_output=True, text=True)
        check(proc.returncode == 0, f"CLI --dtype {dt} failed: {proc.stderr[-500:]}")
        if proc.returncode == 0:
            res[dt] = load_file(dst)
            check(all(v.dtype == torch.float32 for v in res[dt].values()), f"CLI {dt}: non-float32 output")
    if "float32" in res:
        check(set(res["float32"]) == set(out) and all(torch.equal(res["float32"][k], out[k]) for k in out),
              "CLI float32 output differs from in-process forward")
        check(res["float32"]["loss"].shape == (), "loss is not 0-d")
    bad = os.path.join(tmp, "bad")
    write_checkpoint(bad, {"model_type": "gpt_bigcode"}, {"x": torch.zeros(1)})
    proc = subprocess.run([sys.executable, script, bad, tok_path, os.path.join(tmp, "x.safetensors")],
                          capture_output=True, text=True)
    check(proc.returncode != 0 and "unsupported model_type 'gpt_bigcode'" in proc.stderr,
          "unknown model_type not reported clearly")


def test_missing_weight(tmp, gen):
    cfg = CONFIGS["llama"]
    sd = random_state(cfg, gen)
    del sd["model.layers.1.mlp.up_proj.bias"]
    path = os.path.join(tmp, "missing")
    write_checkpoint(path, cfg, sd)
    try:
        ref.load_model(path)
        check(False, "missing weight not reported")
    except KeyError as e:
        check("model.layers.1.mlp.up_proj.bias" in str(e), f"missing weight message: {e}")


def main():
    start = time.time()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    print("torch", torch.__version__)
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for name in CONFIGS:
            results[name] = test_family(name, tmp, gen)
        test_llama3_inv_freq()
        test_config_defaults()
        test_gemma3_multimodal(tmp, gen, *results["gemma3_text"])
        test_cli(tmp, *results["qwen2"])
        test_missing_weight(tmp, gen)
    print(f"{len(FAILURES)} failure(s) in {time.time() - start:.1f} s")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
