"""Independent float64 oracle for attribution graphs: circuit-tracer's frozen local replacement model.

Written from the definitions (docs/peers.md sections 1.2, 1.3, 1.11), in plain PyTorch, not from
lib/ or native/. Model weights are loaded with the loaders of hf_reference.py (GPT-2, GPT-NeoX) and
hf_modern_reference.py (Llama, Mistral, Qwen2, Qwen3, Gemma-2, Gemma-3); the forward pass is this
file's own, because the oracle has to freeze values and inject writes inside it. All maths is float64
(weights upcast; RoPE inverse frequencies are computed in float32 exactly as the references and HF do,
then upcast).

    usage: /usr/bin/python3 test/reference/graph_oracle.py SPEC.json OUT.safetensors

SPEC.json:
    {"model_dir": DIR, "tokens": [ids...], "processing": "none",
     "transcoders": {"<layer>": PATH | {"path": PATH, "arch"?, "k"?, "hook_in"?, "hook_out"?}, ...},
     or instead "cross_layer": PATH | {"path": PATH, "arch"?, "k"?, "hook_in"?, "hook_out"?}  (one
                               cross-layer transcoder over every layer; giving both is an error),
     "perturbations": [{"kind": "feature", "layer", "position", "feature"} | {"kind": "error", "layer",
                        "position"} | {"kind": "token", "position"} | {"kind": "positional", "position"} |
                        {"kind": "bias", "layer"}   (layer 0..n_layers; n_layers = the unembedding side)
                        each optionally with "scale" (default 1: the source vector removed is scale x it)],
     "targets": [{"kind": "feature", "layer", "position", "feature"} | {"kind": "logit", "position", "token"}]}
    Relative paths are tried against the working directory, then against SPEC.json's directory.
    "tokens" may also be [[ids...]] (one row). "processing" must be "none" (or absent).

Transcoder files: safetensors with W_enc [d, m], b_enc [m], W_dec [m, d], b_dec [d] (input pre-bias,
default 0), b_dec_out [d] (default 0), optional W_skip [d, d], threshold [m], k (tensor); string fields
in __metadata__: arch (relu | topk | jumprelu; default inferred: threshold -> jumprelu, k -> topk, else
relu), k, hook_in, hook_out (defaults blocks.L.ln2.hook_normalized, blocks.L.hook_mlp_out).
    hook_in: blocks.L.mlp.hook_in = the MLP's input (the norm output including its gain and bias);
             blocks.L.ln2.hook_normalized = TransformerLens' hook: for LayerNorm models the same as
             mlp.hook_in (TL's LayerNorm hook is after w and b); for RMSNorm models x / scale, before
             the gain (TL's RMSNorm hook, as hf_modern_reference records it);
             blocks.L.hook_resid_mid (sequential blocks only); blocks.L.hook_resid_pre (block input).
    hook_out: blocks.L.hook_mlp_out or blocks.L.mlp.hook_out = what the MLP adds to the residual
             (Gemma: after the post-feedforward norm).

Cross-layer transcoder file (CLT; L = the model's number of layers, F features per source layer):
safetensors with W_enc [L, d, F], b_enc [L, F], b_dec [L, d] (output bias of each layer), W_dec_{s}
[F, L - s, d] for s = 0..L-1 (W_dec_{s}[j, t - s] is what feature j of source layer s writes into layer
t's MLP output, t >= s), optional W_skip [L, d, d], threshold [L, F], k (tensor); any other tensor is an
error. String fields in __metadata__: arch (relu | topk | jumprelu | batchtopk; default inferred as for
transcoder files; jumprelu and batchtopk need threshold, relu and topk refuse one), k, hook_in and
hook_out as templates with {layer} (e.g. blocks.{layer}.hook_resid_mid, blocks.{layer}.mlp.hook_out;
defaults blocks.{layer}.ln2.hook_normalized, blocks.{layer}.hook_mlp_out), each hook meaning as above.
    x_s = the hook_in activation of layer s; pre[s] = x_s W_enc[s] + b_enc[s] (no input pre-bias);
    f_s = relu(pre) | pre * (pre > threshold[s]) (jumprelu) | the k largest pre per position, relu'd
          (topk) | relu(pre) * (pre > threshold[s]) (batchtopk outside training);
    y_hat_t = sum_{s <= t} f_s W_dec_{s}[:, t - s] + b_dec[t] (+ x_t W_skip[t]); error_t = mlp_out_t - y_hat_t.
In the frozen model a CLT feature (s, p, j) is ONE source: its coefficient multiplies all its writes
a W_dec_{s}[j, t - s] into layers t >= s at position p; layer t's bias node carries b_dec[t] (and, as
for a transcoder's b_dec_out and W_skip, the skip's constant part through the frozen norm's bias); a
feature target is pre[s][p, j]. Everything else is as for per-layer transcoders, which are the special
case of decoders into their own layer only.

OUT.safetensors (float64 unless noted):
    effects [n_perturbations, n_targets]   target(unperturbed) - target(perturbed)
    effects_direct [n_perturbations, n_targets]  the same by linearity: the target with only the
                                            source's coefficient = scale (all others 0); no
                                            cancellation, exactly 0 where there is no path
    target_values [n_targets]               frozen unperturbed values (= real values)
    logits [T, V]                           frozen unperturbed forward (after final soft-capping)
    real_logits [T, V]                      the real forward
    sum_check [n_targets]                   target value - sum of the effects of every source
    active_features int64 [n, 3]            (layer, position, feature) sorted; activation_values [n]
    errors [n_layers, T, d]                 error vectors mlp_out - reconstruction (= the MLP output where a
                                            layer has no transcoder; a CLT's reconstruction is y_hat_t)
    mlp_out [n_layers, T, d]                real MLP outputs
    n_sources int64 [1]                     sources summed in sum_check

The frozen model is parametrised by one coefficient per source (token, positional, feature, error, the
constants of each layer); all coefficients 1 is the real forward, a perturbation sets its source's
coefficient to 1 - scale. Each perturbation is a separate element of a batched frozen forward.
"""

import json
import math
import os
import re
import struct
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import hf_modern_reference as hfm  # noqa: E402
import hf_reference as hfr  # noqa: E402
from safetensors_io import load_file, save_file  # noqa: E402

DT = torch.float64
CHUNK = 256  # perturbed runs per batched frozen forward


# ---------------------------------------------------------------------------------------
# Model: one neutral float64 layout for every family. Matrices [in, out]; heads h-major.
# ---------------------------------------------------------------------------------------


def _d(t):
    return None if t is None else t.to(DT)


def _neox_inv_freq(rotary_dim, base):
    return (1.0 / base ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)).to(DT)


def load_model(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        raw = json.load(f)
    mt = raw.get("model_type")
    if mt in ("gpt2", "gpt_neox"):
        return _classic_model(raw, model_dir)
    if mt in hfm.SUPPORTED:
        return _modern_model(model_dir)
    raise ValueError(f"unsupported model_type {mt!r}")


def _classic_model(raw, model_dir):
    _, lay = hfr.load_model(model_dir)  # float32 layout, matrices [in, out]
    d = lay["W_E"].shape[1]
    H = lay["n_heads"]
    dh = d // H
    layers = []
    for L in lay["layers"]:
        Wqkv, bqkv = _d(L["W_qkv"]), _d(L["b_qkv"])
        layers.append({
            "ln1": (_d(L["ln1"][0]), _d(L["ln1"][1])),
            "W_Q": Wqkv[:, :d], "b_Q": bqkv[:d], "W_K": Wqkv[:, d:2 * d], "b_K": bqkv[d:2 * d],
            "W_V": Wqkv[:, 2 * d:], "b_V": bqkv[2 * d:], "W_O": _d(L["W_O"]), "b_O": _d(L["b_O"]),
            "H": H, "Hkv": H, "dh": dh, "q_norm": None, "k_norm": None,
            "inv_freq": _neox_inv_freq(lay["rotary_dim"], lay["rotary_base"]) if lay["rotary_dim"] else None,
            "score_scale": 1.0 / L["score_div"], "attn_softcap": None, "window": None,
            "post_attn": None,
            "ln2": (_d(L["ln2"][0]), _d(L["ln2"][1])),
            "mlp": ("classic", _d(L["W_in"]), _d(L["b_in"]), _d(L["W_out"]), _d(L["b_out"]), lay["act"]),
            "post_mlp": None,
        })
    W_U = _d(lay["W_U"])
    return {
        "family": raw["model_type"], "norm": "layer", "eps": float(lay["eps"]), "gemma": False,
        "W_E": _d(lay["W_E"]), "embed_scale": 1.0, "W_pos": _d(lay["W_pos"]), "parallel": bool(lay["parallel"]),
        "layers": layers, "ln_f": (_d(lay["ln_f"][0]), _d(lay["ln_f"][1])),
        "W_U": W_U, "b_U": torch.zeros(W_U.shape[1], dtype=DT), "final_softcap": None, "d": d,
    }


def _modern_model(model_dir):
    spec, w = hfm.load_model(model_dir, DT)
    gemma = spec["gemma"]
    H, Hkv, dh, d = spec["n_heads"], spec["n_kv_heads"], spec["head_dim"], spec["hidden_size"]

    def gain(t):
        return None if t is None else (1.0 + t if gemma else t)

    def zeros_or(t, n):
        return torch.zeros(n, dtype=DT) if t is None else t

    layers = []
    for L, lw in enumerate(w["layers"]):
        rope = spec["ropes"][L]
        layers.append({
            "ln1": (gain(lw["input_layernorm"]), None),
            "W_Q": lw["q"].t(), "b_Q": zeros_or(lw["q_b"], H * dh),
            "W_K": lw["k"].t(), "b_K": zeros_or(lw["k_b"], Hkv * dh),
            "W_V": lw["v"].t(), "b_V": zeros_or(lw["v_b"], Hkv * dh),
            "W_O": lw["o"].t(), "b_O": zeros_or(lw["o_b"], d),
            "H": H, "Hkv": Hkv, "dh": dh,
            "q_norm": gain(lw.get("q_norm")), "k_norm": gain(lw.get("k_norm")),
            "inv_freq": hfm.rope_inv_freq(rope, dh).to(DT),
            "score_scale": spec["scaling"], "attn_softcap": spec["attn_softcap"], "window": spec["windows"][L],
            "post_attn": gain(lw["post_attention_layernorm"]) if gemma else None,
            "ln2": (gain(lw["pre_feedforward_layernorm"] if gemma else lw["post_attention_layernorm"]), None),
            "mlp": ("gated", lw["gate"], lw["gate_b"], lw["up"], lw["up_b"], lw["down"], lw["down_b"], spec["act"]),
            "post_mlp": gain(lw["post_feedforward_layernorm"]) if gemma else None,
        })
    W_U = w["lm_head"].t()
    return {
        "family": spec["model_type"], "norm": "rms", "eps": spec["eps"], "gemma": gemma,
        "W_E": w["embed"], "embed_scale": math.sqrt(d) if gemma else 1.0, "W_pos": None, "parallel": False,
        "layers": layers, "ln_f": (gain(w["norm"]), None),
        "W_U": W_U, "b_U": torch.zeros(W_U.shape[1], dtype=DT), "final_softcap": spec["final_softcap"], "d": d,
    }


# ---------------------------------------------------------------------------------------
# Building blocks.
# ---------------------------------------------------------------------------------------


def norm_scale(kind, x, eps):
    if kind == "layer":
        xc = x - x.mean(-1, keepdim=True)
        return torch.sqrt((xc * xc).mean(-1, keepdim=True) + eps)
    return torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def norm_apply(kind, x, scale, w, b, cb=None):
    """(x - mean) / scale * w + cb * b (LayerNorm) or x / scale * w (RMSNorm); scale given (frozen or not)."""
    if kind == "layer":
        x = x - x.mean(-1, keepdim=True)
    out = x / scale * w
    if b is not None:
        out = out + (b if cb is None else cb[:, None, None] * b)
    return out


def rope(x, inv_freq):
    """x [T, h, dh]: rotate the first 2 * len(inv_freq) dims (rotate-half convention)."""
    T = x.shape[0]
    rd = 2 * inv_freq.shape[0]
    angle = torch.arange(T, dtype=DT)[:, None] * inv_freq[None, :]
    angle = torch.cat([angle, angle], -1)[:, None, :]
    r, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    rot = torch.cat([-r[..., half:], r[..., :half]], -1)
    return torch.cat([r * angle.cos() + rot * angle.sin(), rest], -1)


def real_attention_pattern(h, lay, eps):
    """Pattern [H, T, T] of one layer on its (unbatched) normed input h [T, d]."""
    T = h.shape[0]
    H, Hkv, dh = lay["H"], lay["Hkv"], lay["dh"]
    q = (h @ lay["W_Q"] + lay["b_Q"]).reshape(T, H, dh)
    k = (h @ lay["W_K"] + lay["b_K"]).reshape(T, Hkv, dh)
    if lay["q_norm"] is not None:
        q = q / torch.sqrt((q * q).mean(-1, keepdim=True) + eps) * lay["q_norm"]
        k = k / torch.sqrt((k * k).mean(-1, keepdim=True) + eps) * lay["k_norm"]
    if lay["inv_freq"] is not None:
        q, k = rope(q, lay["inv_freq"]), rope(k, lay["inv_freq"])
    k = k[:, kv_map(lay)]
    scores = torch.einsum("qhi,khi->hqk", q, k) * lay["score_scale"]
    if lay["attn_softcap"] is not None:
        scores = torch.tanh(scores / lay["attn_softcap"]) * lay["attn_softcap"]
    qi, ki = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = ki <= qi
    if lay["window"] is not None:
        allowed = allowed & (ki > qi - lay["window"])
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


def kv_map(lay):
    return torch.arange(lay["H"]) // (lay["H"] // lay["Hkv"])


def attention_values(h, lay, pattern, cb):
    """Frozen-pattern attention output [B, T, d] for normed inputs h [B, T, d]; biases times cb [B]."""
    B, T, _ = h.shape
    H, Hkv, dh = lay["H"], lay["Hkv"], lay["dh"]
    v = (h @ lay["W_V"] + cb[:, None, None] * lay["b_V"]).reshape(B, T, Hkv, dh)[:, :, kv_map(lay)]
    z = torch.einsum("hqk,bkhi->bqhi", pattern, v).reshape(B, T, H * dh)
    return z @ lay["W_O"] + cb[:, None, None] * lay["b_O"]


def real_mlp(h, mlp):
    if mlp[0] == "classic":
        _, W_in, b_in, W_out, b_out, act = mlp
        return hfr.activation(act, h @ W_in + b_in) @ W_out + b_out
    _, gate, gate_b, up, up_b, down, down_b, act = mlp
    lin = torch.nn.functional.linear
    return lin(hfm.activation(act, lin(h, gate, gate_b)) * lin(h, up, up_b), down, down_b)


# ---------------------------------------------------------------------------------------
# Transcoders.
# ---------------------------------------------------------------------------------------

TC_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec", "b_dec_out", "W_skip", "threshold", "k")
HOOK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
IN_HOOKS = {"ln2.hook_normalized": "ln2_normalized", "mlp.hook_in": "mlp_in", "hook_resid_mid": "resid_mid",
            "hook_resid_pre": "resid_pre"}
OUT_HOOKS = ("hook_mlp_out", "mlp.hook_out")


def read_metadata(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
    return header.get("__metadata__") or {}


def load_transcoder(entry, layer, d, parallel, resolve):
    over = dict(entry) if isinstance(entry, dict) else {"path": entry}
    path = resolve(over["path"])
    meta = dict(read_metadata(path))
    meta.update({k: str(v) for k, v in over.items() if k != "path"})
    raw = load_file(path)
    unknown = sorted(set(raw) - set(TC_TENSORS))
    if unknown:
        print(f"graph_oracle: {path}: ignoring tensors {unknown}", file=sys.stderr)
    for name in ("W_enc", "b_enc", "W_dec"):
        if name not in raw:
            raise ValueError(f"{path}: missing tensor {name}")
    tc = {n: raw[n].to(DT) for n in TC_TENSORS if n in raw and n != "k"}
    d_in, m = tc["W_enc"].shape
    tc.setdefault("b_dec", torch.zeros(d_in, dtype=DT))
    tc.setdefault("b_dec_out", torch.zeros(tc["W_dec"].shape[1], dtype=DT))
    k = meta.get("k")
    if k is None and "k" in raw:
        k = raw["k"].reshape(-1)[0].item()
    arch = meta.get("arch") or ("jumprelu" if "threshold" in tc else "topk" if k is not None else "relu")
    if arch not in ("relu", "topk", "jumprelu"):
        raise ValueError(f"{path}: unknown arch {arch!r}")
    expect = {"W_enc": (d, m), "b_enc": (m,), "W_dec": (m, d), "b_dec": (d,), "b_dec_out": (d,),
              "W_skip": (d, d), "threshold": (m,)}
    for name, t in tc.items():
        if tuple(t.shape) != expect[name]:
            raise ValueError(f"{path}: {name} has shape {list(t.shape)}, expected {list(expect[name])}")
    if arch == "jumprelu" and "threshold" not in tc:
        raise ValueError(f"{path}: jumprelu needs threshold")
    if arch == "topk":
        if k is None:
            raise ValueError(f"{path}: topk needs k")
        k = int(float(k))
        if not 1 <= k <= m:
            raise ValueError(f"{path}: k = {k} outside [1, {m}]")
    hook_in = meta.get("hook_in", f"blocks.{layer}.ln2.hook_normalized")
    hook_out = meta.get("hook_out", f"blocks.{layer}.hook_mlp_out")
    mi, mo = HOOK_RE.match(hook_in), HOOK_RE.match(hook_out)
    if not mi or int(mi.group(1)) != layer or mi.group(2) not in IN_HOOKS:
        raise ValueError(f"{path}: hook_in {hook_in!r} is not an input hook of layer {layer}")
    if not mo or int(mo.group(1)) != layer or mo.group(2) not in OUT_HOOKS:
        raise ValueError(f"{path}: hook_out {hook_out!r} is not an MLP output hook of layer {layer}")
    reads = IN_HOOKS[mi.group(2)]
    if reads == "resid_mid" and parallel:
        raise ValueError(f"{path}: parallel-residual blocks have no hook_resid_mid")
    tc.update(arch=arch, k=k, reads=reads, hook_in=hook_in, hook_out=hook_out, m=m)
    # The pre-activation's constant: b_enc - b_dec . W_enc (the norm bias is added through x_in).
    tc["enc_const"] = tc["b_enc"] - tc["b_dec"] @ tc["W_enc"]
    return tc


def encode(tc, x):
    pre = (x - tc["b_dec"]) @ tc["W_enc"] + tc["b_enc"]
    if tc["arch"] == "relu":
        return pre, torch.relu(pre)
    if tc["arch"] == "jumprelu":
        return pre, pre * (pre > tc["threshold"]).to(DT)
    if tc["arch"] == "batchtopk":  # outside training: a per-feature threshold gate on relu(pre)
        return pre, torch.relu(pre) * (pre > tc["threshold"]).to(DT)
    r = torch.relu(pre)
    idx = r.topk(tc["k"], dim=-1).indices
    return pre, torch.zeros_like(r).scatter(-1, idx, r.gather(-1, idx))


def reconstruct(tc, f, x):
    y = f @ tc["W_dec"] + tc["b_dec_out"]
    if "W_skip" in tc:
        y = y + x @ tc["W_skip"]
    return y


# Cross-layer transcoders: one file, every layer. Loaded as one per-layer transcoder dict per layer
# (its own encoder, its decoder into its own layer as W_dec, the output bias b_dec[l] as b_dec_out,
# W_skip[l], threshold[l]; no input pre-bias) plus "cross_in": [(s, W_dec_{s}[:, l - s, :]) for every
# source layer s < l], the decoders of earlier layers' features into this layer's MLP output. A
# per-layer transcoder is the special case without cross_in.


def load_cross_layer(entry, n_layers, d, parallel, resolve):
    over = dict(entry) if isinstance(entry, dict) else {"path": entry}
    if "path" not in over:
        raise ValueError("cross_layer: needs a 'path'")
    path = resolve(over["path"])
    meta = dict(read_metadata(path))
    meta.update({k: str(v) for k, v in over.items() if k != "path"})
    raw = load_file(path)
    if "W_enc" not in raw:
        raise ValueError(f"{path}: missing tensor W_enc")
    W = raw["W_enc"]
    if W.dim() != 3:
        raise ValueError(f"{path}: W_enc has shape {list(W.shape)}, expected [n_layers, d_model, F]")
    L, _, F = W.shape
    if L != n_layers:
        raise ValueError(f"{path}: W_enc covers {L} layers, the model has {n_layers} (a cross-layer "
                         "transcoder covers every layer)")
    dec_names = [f"W_dec_{s}" for s in range(L)]
    allowed = {"W_enc", "b_enc", "b_dec", "W_skip", "threshold", "k", *dec_names}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown tensors {unknown} (a cross-layer transcoder over {L} layers "
                         f"has W_enc, b_enc, b_dec, W_dec_0..W_dec_{L - 1}, optional W_skip, threshold, k)")
    for name in ("b_enc", "b_dec", *dec_names):
        if name not in raw:
            raise ValueError(f"{path}: missing tensor {name}")
    for name, t in raw.items():
        if name != "k" and not t.is_floating_point():
            raise ValueError(f"{path}: {name} has dtype {t.dtype}, expected a floating dtype")
    expect = {"W_enc": (L, d, F), "b_enc": (L, F), "b_dec": (L, d), "W_skip": (L, d, d), "threshold": (L, F)}
    expect.update({f"W_dec_{s}": (F, L - s, d) for s in range(L)})
    for name, t in raw.items():
        if name != "k" and tuple(t.shape) != expect[name]:
            raise ValueError(f"{path}: {name} has shape {list(t.shape)}, expected {list(expect[name])}")
    if F < 1:
        raise ValueError(f"{path}: W_enc has no features")
    k = meta.get("k")
    if k is None and "k" in raw:
        k = raw["k"].reshape(-1)[0].item()
    arch = meta.get("arch") or ("jumprelu" if "threshold" in raw else "topk" if k is not None else "relu")
    if arch not in ("relu", "topk", "jumprelu", "batchtopk"):
        raise ValueError(f"{path}: unknown arch {arch!r} (relu, topk, jumprelu or batchtopk)")
    if arch in ("jumprelu", "batchtopk") and "threshold" not in raw:
        raise ValueError(f"{path}: arch {arch} needs a threshold [L, F]")
    if arch in ("relu", "topk") and "threshold" in raw:
        raise ValueError(f"{path}: threshold given but arch {arch} uses none")
    if arch == "topk":
        if k is None:
            raise ValueError(f"{path}: topk needs k")
        k = int(float(k))
        if not 1 <= k <= F:
            raise ValueError(f"{path}: k = {k} outside [1, {F}]")
    else:
        k = None
    t_in = meta.get("hook_in", "blocks.{layer}.ln2.hook_normalized")
    t_out = meta.get("hook_out", "blocks.{layer}.hook_mlp_out")
    for what, tmpl in (("hook_in", t_in), ("hook_out", t_out)):
        if "{layer}" not in tmpl:
            raise ValueError(f"{path}: {what} {tmpl!r} is not a template with {{layer}}")
    tc_all = {n: t.to(DT) for n, t in raw.items() if n != "k"}
    tcs = {}
    for l in range(L):
        hook_in, hook_out = t_in.replace("{layer}", str(l)), t_out.replace("{layer}", str(l))
        mi, mo = HOOK_RE.match(hook_in), HOOK_RE.match(hook_out)
        if not mi or int(mi.group(1)) != l or mi.group(2) not in IN_HOOKS:
            raise ValueError(f"{path}: hook_in {hook_in!r} is not an input hook of layer {l}")
        if not mo or int(mo.group(1)) != l or mo.group(2) not in OUT_HOOKS:
            raise ValueError(f"{path}: hook_out {hook_out!r} is not an MLP output hook of layer {l}")
        reads = IN_HOOKS[mi.group(2)]
        if reads == "resid_mid" and parallel:
            raise ValueError(f"{path}: parallel-residual blocks have no hook_resid_mid")
        tc = {"W_enc": tc_all["W_enc"][l], "b_enc": tc_all["b_enc"][l], "b_dec": torch.zeros(d, dtype=DT),
              "W_dec": tc_all[f"W_dec_{l}"][:, 0], "b_dec_out": tc_all["b_dec"][l],
              "cross_in": [(s, tc_all[f"W_dec_{s}"][:, l - s]) for s in range(l)]}
        if "W_skip" in tc_all:
            tc["W_skip"] = tc_all["W_skip"][l]
        if "threshold" in tc_all:
            tc["threshold"] = tc_all["threshold"][l]
        tc.update(arch=arch, k=k, reads=reads, hook_in=hook_in, hook_out=hook_out, m=F, path=path)
        tc["enc_const"] = tc["b_enc"].clone()  # no input pre-bias; the norm bias is added through x_in
        tcs[l] = tc
    return tcs


# ---------------------------------------------------------------------------------------
# The real forward (records everything the frozen model needs).
# ---------------------------------------------------------------------------------------


def real_forward(M, tokens, tcs):
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    T = tokens.shape[0]
    kind, eps = M["norm"], M["eps"]
    R = {"T": T, "tokens": tokens.tolist(), "layers": []}
    R["embed"] = M["W_E"][tokens] * M["embed_scale"]
    x = R["embed"]
    if M["W_pos"] is not None:
        if T > M["W_pos"].shape[0]:
            raise ValueError(f"sequence length {T} exceeds n_positions")
        R["pos"] = M["W_pos"][:T]
        x = x + R["pos"]
    for l, lay in enumerate(M["layers"]):
        rl = {"resid_pre": x}
        rl["ln1_scale"] = norm_scale(kind, x, eps)
        h = norm_apply(kind, x, rl["ln1_scale"], *lay["ln1"])
        rl["pattern"] = real_attention_pattern(h, lay, eps)
        attn = attention_values(h[None], lay, rl["pattern"], torch.ones(1, dtype=DT))[0]
        if lay["post_attn"] is not None:
            rl["post_attn_scale"] = norm_scale("rms", attn, eps)
            attn = norm_apply("rms", attn, rl["post_attn_scale"], lay["post_attn"], None)
        rl["attn_out"] = attn
        mlp_src = x if M["parallel"] else x + attn
        if not M["parallel"]:
            rl["resid_mid"] = mlp_src
        rl["ln2_scale"] = norm_scale(kind, mlp_src, eps)
        rl["mlp_in"] = norm_apply(kind, mlp_src, rl["ln2_scale"], *lay["ln2"])
        rl["ln2_normalized"] = rl["mlp_in"] if kind == "layer" else mlp_src / rl["ln2_scale"]
        out = real_mlp(rl["mlp_in"], lay["mlp"])
        if lay["post_mlp"] is not None:
            rl["post_mlp_scale"] = norm_scale("rms", out, eps)
            out = norm_apply("rms", out, rl["post_mlp_scale"], lay["post_mlp"], None)
        rl["mlp_out"] = out
        tc = tcs.get(l)
        if tc is not None:
            rl["x_in"] = rl[tc["reads"]]
            rl["pre"], rl["acts"] = encode(tc, rl["x_in"])
            rl["rec"] = reconstruct(tc, rl["acts"], rl["x_in"])
            for s, W in tc.get("cross_in", ()):  # cross-layer transcoder: earlier layers' features
                rl["rec"] = rl["rec"] + R["layers"][s]["acts"] @ W
            rl["err"] = out - rl["rec"]
            nz = rl["acts"].nonzero()
            rl["active"] = nz  # [n, 2] (position, feature), row-major order
            rl["active_vals"] = rl["acts"][nz[:, 0], nz[:, 1]]
        else:
            rl["err"] = out
            rl["active"] = torch.zeros(0, 2, dtype=torch.long)
            rl["active_vals"] = torch.zeros(0, dtype=DT)
        x = x + attn + out
        R["layers"].append(rl)
    R["lnf_scale"] = norm_scale(kind, x, eps)
    R["final"] = norm_apply(kind, x, R["lnf_scale"], *M["ln_f"])
    R["logits_raw"] = R["final"] @ M["W_U"] + M["b_U"]
    R["logits"] = softcap(R["logits_raw"], M["final_softcap"])
    return R


def softcap(logits, cap):
    return logits if cap is None else torch.tanh(logits / cap) * cap


# ---------------------------------------------------------------------------------------
# The frozen local replacement model, batched over coefficient settings.
# ---------------------------------------------------------------------------------------


def ones_coefficients(M, R, B):
    nL, T = len(M["layers"]), R["T"]
    return {
        "tok": torch.ones(B, T, dtype=DT), "pos": torch.ones(B, T, dtype=DT),
        "bias": torch.ones(B, nL + 1, dtype=DT), "err": torch.ones(B, nL, T, dtype=DT),
        "feat": [torch.ones(B, rl["active"].shape[0], dtype=DT) for rl in R["layers"]],
    }


def feature_writes(rl, W_dec, cf, B, T, d):
    """[B, T, d]: the active features of record layer rl (frozen activations times their coefficients
    cf [B, n_active]) decoded by W_dec [m, d], each at its position."""
    pos, feat = rl["active"][:, 0], rl["active"][:, 1]
    vecs = rl["active_vals"][:, None] * W_dec[feat]
    dec = torch.zeros(B, T, d, dtype=DT)
    for p in range(T):
        sel = (pos == p).nonzero()[:, 0]
        if sel.numel():
            dec[:, p] = cf[:, sel] @ vecs[sel]
    return dec


def frozen_forward(M, R, tcs, c, extra=None):
    """Returns (x_in per transcoder layer [B, T, d], final-norm output [B, T, d]).

    c: coefficients (see ones_coefficients). extra: optional additive writes {"embed": [B,T,d],
    ("attn", l): [B,T,d], ("mlp", l): [B,T,d]} (used by the self-check only).
    """
    extra = extra or {}
    kind = M["norm"]
    B = c["tok"].shape[0]
    T = R["T"]
    x = c["tok"][:, :, None] * R["embed"]
    if "pos" in R:
        x = x + c["pos"][:, :, None] * R["pos"]
    if "embed" in extra:
        x = x + extra["embed"]
    x_ins = {}
    for l, (lay, rl) in enumerate(zip(M["layers"], R["layers"])):
        cb = c["bias"][:, l]
        h = norm_apply(kind, x, rl["ln1_scale"], *lay["ln1"], cb=cb)
        attn = attention_values(h, lay, rl["pattern"], cb)
        if lay["post_attn"] is not None:
            attn = norm_apply("rms", attn, rl["post_attn_scale"], lay["post_attn"], None)
        if ("attn", l) in extra:
            attn = attn + extra[("attn", l)]
        mlp_src = x if M["parallel"] else x + attn
        out = c["err"][:, l, :, None] * rl["err"]
        tc = tcs.get(l)
        if tc is not None:
            if tc["reads"] == "mlp_in" or (tc["reads"] == "ln2_normalized" and kind == "layer"):
                x_in = norm_apply(kind, mlp_src, rl["ln2_scale"], *lay["ln2"], cb=cb)
            elif tc["reads"] == "ln2_normalized":  # RMSNorm: x / scale, before the gain
                x_in = mlp_src / rl["ln2_scale"]
            elif tc["reads"] == "resid_mid":
                x_in = mlp_src
            else:
                x_in = x
            x_ins[l] = x_in
            # Features: frozen activations times their coefficients, written at their positions;
            # a cross-layer transcoder's features of earlier layers write here with the same coefficient.
            dec = feature_writes(rl, tc["W_dec"], c["feat"][l], B, T, M["d"])
            for s, W in tc.get("cross_in", ()):
                dec = dec + feature_writes(R["layers"][s], W, c["feat"][s], B, T, M["d"])
            out = out + dec + cb[:, None, None] * tc["b_dec_out"]
            if "W_skip" in tc:
                out = out + x_in @ tc["W_skip"]
        if ("mlp", l) in extra:
            out = out + extra[("mlp", l)]
        x = x + attn + out
    cf = c["bias"][:, len(M["layers"])]
    final = norm_apply(kind, x, R["lnf_scale"], *M["ln_f"], cb=cf)
    return x_ins, final


def target_values(M, tcs, targets, c, x_ins, final, extra=None):
    """[B, n_targets]: feature pre-activations at the current input, demeaned logits before soft-capping."""
    extra = extra or {}
    nL = len(M["layers"])
    B = c["tok"].shape[0]
    vals = torch.zeros(B, len(targets), dtype=DT)
    groups = {}  # layer (or "logit") -> target indices
    for i, t in enumerate(targets):
        groups.setdefault(t["layer"] if t["kind"] == "feature" else "logit", []).append(i)
    for key, idx in groups.items():
        pos = torch.tensor([targets[i]["position"] for i in idx])
        if key == "logit":
            v = torch.tensor([targets[i]["token"] for i in idx])
            U = M["W_U"][:, v] - M["W_U"].mean(1, keepdim=True)  # [d, n]
            bu = M["b_U"][v] - M["b_U"].mean()
            vals[:, idx] = torch.einsum("bnd,dn->bn", final[:, pos], U) + c["bias"][:, nL, None] * bu
        else:
            tc = tcs[key]
            f = torch.tensor([targets[i]["feature"] for i in idx])
            vals[:, idx] = (torch.einsum("bnd,dn->bn", x_ins[key][:, pos], tc["W_enc"][:, f])
                            + c["bias"][:, key, None] * tc["enc_const"][f])
    for i in range(len(targets)):
        if ("target", i) in extra:
            vals[:, i] = vals[:, i] + extra[("target", i)]
    return vals


def run_frozen(M, R, tcs, targets, c, extra=None):
    x_ins, final = frozen_forward(M, R, tcs, c, extra)
    return target_values(M, tcs, targets, c, x_ins, final, extra), final


# ---------------------------------------------------------------------------------------
# Perturbations as coefficient settings.
# ---------------------------------------------------------------------------------------


def feature_index(R, l, p, f):
    """Index of (p, f) in layer l's active list, or None when inactive."""
    act = R["layers"][l]["active"]
    hit = ((act[:, 0] == p) & (act[:, 1] == f)).nonzero()
    return int(hit[0, 0]) if hit.numel() else None


def set_source(c, b, M, R, s, val):
    """Set batch row b's coefficient of source s to val."""
    k = s["kind"]
    if k == "token":
        c["tok"][b, s["position"]] = val
    elif k == "positional":
        c["pos"][b, s["position"]] = val
    elif k == "bias":
        c["bias"][b, s["layer"]] = val
    elif k == "error":
        c["err"][b, s["layer"], s["position"]] = val
    elif k == "feature":
        i = feature_index(R, s["layer"], s["position"], s["feature"])
        if i is not None:  # an inactive feature writes nothing
            c["feat"][s["layer"]][b, i] = val
    else:
        raise ValueError(f"unknown perturbation kind {k!r}")


def effects_of(M, R, tcs, targets, sources, base, alone=False):
    """[n_sources, n_targets], batched CHUNK at a time.

    alone=False (the definition): base - target(all coefficients 1, the source's 1 - scale).
    alone=True: target(the source's coefficient scale, every other 0) -- the same numbers in a linear
    model, without cancellation, and exactly 0 where the source has no path to the target.
    """
    rows = []
    for start in range(0, len(sources), CHUNK):
        chunk = sources[start:start + CHUNK]
        c = ones_coefficients(M, R, len(chunk))
        if alone:
            for t in [c["tok"], c["pos"], c["bias"], c["err"]] + c["feat"]:
                t.zero_()
        for b, s in enumerate(chunk):
            scale = float(s.get("scale", 1.0))
            set_source(c, b, M, R, s, scale if alone else 1.0 - scale)
        vals, _ = run_frozen(M, R, tcs, targets, c)
        rows.append(vals if alone else base[None, :] - vals)
    return torch.cat(rows, 0) if rows else torch.zeros(0, len(targets), dtype=DT)


def all_sources(M, R):
    nL, T = len(M["layers"]), R["T"]
    src = []
    for l, rl in enumerate(R["layers"]):
        src += [{"kind": "feature", "layer": l, "position": int(p), "feature": int(f)} for p, f in rl["active"].tolist()]
    src += [{"kind": "error", "layer": l, "position": p} for l in range(nL) for p in range(T)]
    src += [{"kind": "token", "position": p} for p in range(T)]
    if "pos" in R:
        src += [{"kind": "positional", "position": p} for p in range(T)]
    src += [{"kind": "bias", "layer": l} for l in range(nL + 1)]
    return src


# ---------------------------------------------------------------------------------------
# Spec handling and the whole computation.
# ---------------------------------------------------------------------------------------


def _int(obj, key, lo, hi, what):
    if key not in obj or isinstance(obj[key], bool) or not isinstance(obj[key], int):
        raise ValueError(f"{what}: needs an integer {key!r}")
    if not lo <= obj[key] < hi:
        raise ValueError(f"{what}: {key} = {obj[key]} outside [{lo}, {hi})")
    return obj[key]


def validate(M, R, tcs, perturbations, targets):
    nL, T, V = len(M["layers"]), R["T"], M["W_U"].shape[1]
    for i, s in enumerate(perturbations):
        what = f"perturbation {i}"
        k = s.get("kind")
        if k in ("feature", "error"):
            l = _int(s, "layer", 0, nL, what)
            _int(s, "position", 0, T, what)
            if k == "feature":
                if l not in tcs:
                    raise ValueError(f"{what}: layer {l} has no transcoder")
                _int(s, "feature", 0, tcs[l]["m"], what)
        elif k in ("token", "positional"):
            _int(s, "position", 0, T, what)
            if k == "positional" and "pos" not in R:
                raise ValueError(f"{what}: the model has no learned positional embedding")
        elif k == "bias":
            _int(s, "layer", 0, nL + 1, what)
        else:
            raise ValueError(f"{what}: unknown kind {k!r}")
    for i, t in enumerate(targets):
        what = f"target {i}"
        if t.get("kind") == "feature":
            l = _int(t, "layer", 0, nL, what)
            if l not in tcs:
                raise ValueError(f"{what}: layer {l} has no transcoder")
            _int(t, "position", 0, T, what)
            _int(t, "feature", 0, tcs[l]["m"], what)
        elif t.get("kind") == "logit":
            _int(t, "position", 0, T, what)
            _int(t, "token", 0, V, what)
        else:
            raise ValueError(f"{what}: unknown kind {t.get('kind')!r}")


def compute(M, tcs, tokens, perturbations, targets, with_sum_check=True):
    """Everything the CLI writes, as a dict of tensors (plus R under '_record')."""
    with torch.no_grad():
        R = real_forward(M, tokens, tcs)
        validate(M, R, tcs, perturbations, targets)
        base, final = run_frozen(M, R, tcs, targets, ones_coefficients(M, R, 1))
        base = base[0]
        out = {
            "target_values": base,
            "logits": softcap(final[0] @ M["W_U"] + M["b_U"], M["final_softcap"]),
            "real_logits": R["logits"],
            "effects": effects_of(M, R, tcs, targets, perturbations, base),
            "effects_direct": effects_of(M, R, tcs, targets, perturbations, base, alone=True),
            "mlp_out": torch.stack([rl["mlp_out"] for rl in R["layers"]]),
            "errors": torch.stack([rl["err"] for rl in R["layers"]]),
        }
        feats = [torch.cat([torch.full((rl["active"].shape[0], 1), l, dtype=torch.long), rl["active"]], 1)
                 for l, rl in enumerate(R["layers"])]
        out["active_features"] = torch.cat(feats, 0)
        out["activation_values"] = torch.cat([rl["active_vals"] for rl in R["layers"]])
        if with_sum_check:
            sources = all_sources(M, R)
            all_eff = effects_of(M, R, tcs, targets, sources, base)
            out["sum_check"] = base - all_eff.sum(0)
            out["n_sources"] = torch.tensor([len(sources)], dtype=torch.long)
            out["_all_effects"] = all_eff
            out["_sources"] = sources
        out["_record"] = R
    return out


def load_spec(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    base_dir = os.path.dirname(os.path.abspath(spec_path))

    def resolve(p):
        if os.path.isabs(p) or os.path.exists(p):
            return p
        return os.path.join(base_dir, p)

    if spec.get("processing", "none") != "none":
        raise ValueError(f"processing {spec['processing']!r} is not supported (only 'none')")
    tokens = spec["tokens"]
    if tokens and isinstance(tokens[0], list):
        if len(tokens) != 1:
            raise ValueError("tokens: one prompt only")
        tokens = tokens[0]
    if not tokens or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise ValueError("tokens must be a non-empty list of token ids")
    M = load_model(resolve(spec["model_dir"]))
    if max(tokens) >= M["W_E"].shape[0] or min(tokens) < 0:
        raise ValueError(f"token ids must lie in [0, {M['W_E'].shape[0]})")
    tcs = {}
    if spec.get("cross_layer") is not None:
        if spec.get("transcoders") is not None:
            raise ValueError("give either 'transcoders' or 'cross_layer', not both")
        tcs = load_cross_layer(spec["cross_layer"], len(M["layers"]), M["d"], M["parallel"], resolve)
    for key, entry in (spec.get("transcoders") or {}).items():
        l = int(key)
        if not 0 <= l < len(M["layers"]):
            raise ValueError(f"transcoder layer {l} outside [0, {len(M['layers'])})")
        tcs[l] = load_transcoder(entry, l, M["d"], M["parallel"], resolve)
    return M, tcs, tokens, spec.get("perturbations") or [], spec.get("targets") or []


def main(argv):
    if len(argv) != 3:
        sys.exit(f"usage: {argv[0]} SPEC.json OUT.safetensors")
    start = time.time()
    M, tcs, tokens, perturbations, targets = load_spec(argv[1])
    out = compute(M, tcs, tokens, perturbations, targets)
    save_file({k: v.contiguous() for k, v in out.items() if not k.startswith("_")}, argv[2])
    print(f"graph_oracle: {len(perturbations)} perturbations x {len(targets)} targets, "
          f"{int(out['n_sources'][0])} sources in the sum check, {time.time() - start:.2f} s", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
