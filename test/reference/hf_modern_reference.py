"""Plain-PyTorch reference forward pass for Hugging Face Llama, Mistral, Qwen2, Qwen3, Gemma-2 and Gemma-3.

Written from the published Hugging Face `transformers` model definitions (modeling_llama.py,
modeling_mistral.py, modeling_qwen2.py, modeling_qwen3.py, modeling_gemma2.py, modeling_gemma3.py,
modeling_rope_utils.py, masking_utils.py and the configuration_*.py defaults), following the *eager*
attention path, and recording every intermediate activation under its TransformerLens hook name so the
test suite can compare the project's forward pass against it.

Usage:
    /usr/bin/python3 test/reference/hf_modern_reference.py MODEL_DIR TOKENS_JSON OUT.safetensors \
        [--dtype float32|bfloat16]

MODEL_DIR holds config.json and model.safetensors (or model.safetensors.index.json plus shards).
`model_type` is one of llama, mistral, qwen2, qwen3, gemma2, gemma3_text, or gemma3 (the multimodal
Gemma3ForConditionalGeneration checkpoint: only its text decoder is run, on text tokens).
TOKENS_JSON holds a list of equal-length lists of token ids ([B][T]).
OUT.safetensors gets float32 tensors: `logits` [B, T, V] (after final logit soft-capping where HF applies
it), `loss` (0-d: mean next-token cross-entropy over all B*(T-1) predictions), and every hook, batch first.

--dtype float32 (default): every weight is upcast to float32 and all maths is float32.
--dtype bfloat16: weights stay bfloat16 and the HF bf16 semantics are followed (RMSNorm statistics in
float32 then cast back, rope cos/sin computed in float32 then cast, softmax in float32 then cast, Gemma
embedding normaliser rounded to bf16, residual adds in bf16); outputs are cast to float32 when saved.
"""

import argparse
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import load_file, save_file  # noqa: E402


SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gemma3")

# Constructor defaults of each HF configuration class (configuration_<family>.py): a key absent from
# config.json takes this value, exactly as PretrainedConfig subclasses do.
DEFAULTS = {
    "llama": dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=None, hidden_act="silu",
        max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_theta=10000.0, rope_scaling=None, attention_bias=False, mlp_bias=False, head_dim=None,
    ),
    "mistral": dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=None, hidden_act="silu",
        max_position_embeddings=4096 * 32, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_theta=10000.0, rope_scaling=None, sliding_window=4096,
    ),
    "qwen2": dict(
        vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, hidden_act="silu",
        max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_theta=10000.0, rope_scaling=None, use_sliding_window=False, sliding_window=4096,
        max_window_layers=28, layer_types=None, head_dim=None,
    ),
    "qwen3": dict(
        vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, head_dim=128, hidden_act="silu",
        max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_theta=10000.0, rope_scaling=None, attention_bias=False, use_sliding_window=False,
        sliding_window=4096, max_window_layers=28, layer_types=None,
    ),
    "gemma2": dict(
        vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256,
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, rms_norm_eps=1e-6,
        tie_word_embeddings=True, rope_theta=10000.0, rope_scaling=None, attention_bias=False,
        query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0, layer_types=None,
    ),
    "gemma3_text": dict(
        vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256,
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=131072, rms_norm_eps=1e-6,
        tie_word_embeddings=True, rope_theta=1_000_000.0, attention_bias=False,
        query_pre_attn_scalar=256, sliding_window=4096, layer_types=None,
        final_logit_softcapping=None, attn_logit_softcapping=None, rope_scaling=None,
        rope_local_base_freq=10_000.0, sliding_window_pattern=6, use_bidirectional_attention=False,
    ),
}


# ---------------------------------------------------------------------------------------
# Configuration: resolve config.json into one explicit architecture description.
# ---------------------------------------------------------------------------------------


def _rope_spec(theta, scaling, partial_rotary_factor):
    """A RoPE description: base, rope type and its parameters (rope_scaling dict or None)."""
    if scaling is None:
        scaling = {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))  # BC: "type" was the old key
    if rope_type not in ("default", "linear", "llama3"):
        raise NotImplementedError(f"rope_type {rope_type!r} is not supported by this reference")
    return {
        "theta": float(scaling.get("rope_theta", theta)),
        "type": rope_type,
        "params": dict(scaling),
        "partial_rotary_factor": float(partial_rotary_factor),
    }


def resolve_config(raw):
    """Return (spec, key_prefixes) for a config.json dict."""
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED:
        raise ValueError(
            f"unsupported model_type {model_type!r}: this reference handles {', '.join(SUPPORTED)}"
        )
    if model_type == "gemma3":
        # Gemma3ForConditionalGeneration: the decoder is a Gemma3TextModel configured by text_config.
        # Checkpoints on the Hub store it as language_model.model.* (lm_head, if any, as
        # language_model.lm_head.weight); newer saves use model.language_model.* and lm_head.weight.
        text = dict(raw.get("text_config") or {})
        text.setdefault("model_type", "gemma3_text")
        spec, _ = resolve_config(text)
        spec["model_type"] = "gemma3"
        # Gemma3ForConditionalGeneration.forward does not apply final_logit_softcapping
        # (only Gemma3ForCausalLM does); released configs set it to null anyway.
        spec["final_softcap"] = None
        prefixes = (["language_model.model.", "model.language_model."],
                    ["language_model.lm_head.weight", "lm_head.weight"])
        return spec, prefixes

    cfg = dict(DEFAULTS[model_type])
    cfg.update(raw)

    d = int(cfg["hidden_size"])
    n_heads = int(cfg["num_attention_heads"])
    n_kv = int(cfg["num_key_value_heads"] or n_heads)
    head_dim = cfg.get("head_dim")
    head_dim = int(head_dim) if head_dim is not None else d // n_heads
    n_layers = int(cfg["num_hidden_layers"])
    gemma = model_type in ("gemma2", "gemma3_text")
    partial = cfg.get("partial_rotary_factor", 1.0)

    # transformers v5 configs write `rope_parameters` ({rope_type, rope_theta, factor, ...}; for Gemma-3
    # one such dict per layer type) instead of rope_theta / rope_scaling.
    theta, scaling = cfg.get("rope_theta"), cfg.get("rope_scaling")
    rope_parameters = cfg.get("rope_parameters")
    nested = isinstance(rope_parameters, dict) and (
        "full_attention" in rope_parameters or "sliding_attention" in rope_parameters
    )
    if isinstance(rope_parameters, dict) and not nested:
        theta, scaling = rope_parameters.get("rope_theta", theta), rope_parameters

    # Which layers use a sliding window, and its size (None = full causal attention).
    layer_types = cfg.get("layer_types")
    if model_type == "llama":
        windows = [None] * n_layers
    elif model_type == "mistral":
        # MistralModel: create_sliding_window_causal_mask on every layer unless sliding_window is None.
        windows = [cfg.get("sliding_window")] * n_layers
    elif model_type in ("qwen2", "qwen3"):
        sw = cfg.get("sliding_window") if cfg.get("use_sliding_window") else None
        if layer_types is None:
            layer_types = [
                "sliding_attention" if sw is not None and i >= cfg["max_window_layers"] else "full_attention"
                for i in range(n_layers)
            ]
        windows = [sw if t == "sliding_attention" else None for t in layer_types]
    elif model_type == "gemma2":
        if layer_types is None:  # even layers (0, 2, ...) slide: `not bool(layer_idx % 2)`
            layer_types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]
        windows = [cfg.get("sliding_window") if t == "sliding_attention" else None for t in layer_types]
    else:  # gemma3_text
        if cfg.get("use_bidirectional_attention"):
            raise NotImplementedError("use_bidirectional_attention (EmbeddingGemma) is not supported")
        if layer_types is None:  # every sliding_window_pattern-th layer (1-based) is global
            pattern = int(cfg.get("sliding_window_pattern") or 6)
            layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]
        windows = [cfg.get("sliding_window") if t == "sliding_attention" else None for t in layer_types]
    if len(windows) != n_layers:
        raise ValueError(f"layer_types has {len(windows)} entries for {n_layers} layers")

    # RoPE per layer. Gemma-3: sliding layers use rope_local_base_freq with default rope (no scaling);
    # global layers use rope_theta with rope_scaling.
    if model_type == "gemma3_text":
        if nested:
            glob = rope_parameters.get("full_attention", {})
            loc = rope_parameters.get("sliding_attention", {})
            rope_global = _rope_spec(glob.get("rope_theta", theta), glob, partial)
            rope_local = _rope_spec(loc.get("rope_theta", cfg["rope_local_base_freq"]), loc, partial)
        else:
            rope_global = _rope_spec(theta, scaling, partial)
            rope_local = _rope_spec(cfg["rope_local_base_freq"], None, partial)
        ropes = [rope_local if w is not None else rope_global for w in windows]
    else:
        if nested:
            raise ValueError("per-layer-type rope_parameters are only expected for gemma3")
        rope = _rope_spec(theta, scaling, partial)
        ropes = [rope] * n_layers

    act = cfg.get("hidden_activation") if gemma else cfg.get("hidden_act")
    if gemma and act is None:
        act = cfg.get("hidden_act", "gelu_pytorch_tanh")

    if model_type == "llama":
        b = bool(cfg.get("attention_bias"))
        qkv_bias, o_bias, mlp_bias = b, b, bool(cfg.get("mlp_bias"))
    elif model_type == "qwen2":
        qkv_bias, o_bias, mlp_bias = True, False, False  # hard-coded in Qwen2Attention
    elif model_type == "mistral":
        qkv_bias, o_bias, mlp_bias = False, False, False
    else:  # qwen3, gemma2, gemma3_text: attention_bias for q, k, v and o; MLP never biased
        b = bool(cfg.get("attention_bias"))
        qkv_bias, o_bias, mlp_bias = b, b, False

    if gemma:
        scaling_factor = float(cfg["query_pre_attn_scalar"]) ** -0.5
    else:
        scaling_factor = head_dim ** -0.5

    if model_type == "gemma2":
        attn_softcap = cfg.get("attn_logit_softcapping")
    else:
        # Gemma3Attention never passes `softcap` to the attention function, so attn_logit_softcapping
        # is ignored there; the other families have no attention soft-capping.
        attn_softcap = None
    final_softcap = cfg.get("final_logit_softcapping") if gemma else None

    spec = {
        "model_type": model_type,
        "gemma": gemma,  # (1 + w) RMSNorm, sandwich norms, sqrt(d) embedding normaliser
        "hidden_size": d,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "n_kv_heads": n_kv,
        "head_dim": head_dim,
        "eps": float(cfg["rms_norm_eps"]),
        "act": act,
        "qkv_bias": qkv_bias,
        "o_bias": o_bias,
        "mlp_bias": mlp_bias,
        "qk_norm": model_type in ("qwen3", "gemma3_text"),
        "scaling": scaling_factor,
        "attn_softcap": attn_softcap,
        "final_softcap": final_softcap,
        "windows": windows,
        "ropes": ropes,
        "tie": bool(cfg.get("tie_word_embeddings")),
    }
    if n_heads % n_kv:
        raise ValueError(f"num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv}")
    return spec, (["model."], ["lm_head.weight"])


# ---------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------


def load_state_dict(model_dir):
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
    else:
        weight_map, shards = {}, ["model.safetensors"]
    state = {}
    for shard in shards:
        path = os.path.join(model_dir, shard)
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint file {path} not found")
        state.update(load_file(path))
    missing = set(weight_map) - set(state)
    if missing:
        raise ValueError(f"index lists tensors absent from the shards: {sorted(missing)[:5]}")
    return state


def load_model(model_dir, dtype=torch.float32):
    """Return (spec, weights): weights maps short names to tensors in `dtype`."""
    with open(os.path.join(model_dir, "config.json")) as f:
        raw = json.load(f)
    spec, (decoder_prefixes, head_keys) = resolve_config(raw)
    state = load_state_dict(model_dir)

    prefix = next((p for p in decoder_prefixes if p + "embed_tokens.weight" in state), None)
    if prefix is None:
        raise KeyError(
            f"missing weight: none of {[p + 'embed_tokens.weight' for p in decoder_prefixes]} in checkpoint"
        )

    def get(name, full=None):
        key = full if full is not None else prefix + name
        if key not in state:
            raise KeyError(f"missing weight {key!r} (model_type {spec['model_type']})")
        t = state[key]
        return t.to(dtype) if t.is_floating_point() else t

    w = {"embed": get("embed_tokens.weight"), "norm": get("norm.weight"), "layers": []}
    for L in range(spec["n_layers"]):
        p = f"layers.{L}."
        lw = {}
        for proj in ("q", "k", "v", "o"):
            lw[proj] = get(p + f"self_attn.{proj}_proj.weight")
            has_bias = spec["o_bias"] if proj == "o" else spec["qkv_bias"]
            lw[proj + "_b"] = get(p + f"self_attn.{proj}_proj.bias") if has_bias else None
        if spec["qk_norm"]:
            lw["q_norm"] = get(p + "self_attn.q_norm.weight")
            lw["k_norm"] = get(p + "self_attn.k_norm.weight")
        for proj in ("gate", "up", "down"):
            lw[proj] = get(p + f"mlp.{proj}_proj.weight")
            lw[proj + "_b"] = get(p + f"mlp.{proj}_proj.bias") if spec["mlp_bias"] else None
        lw["input_layernorm"] = get(p + "input_layernorm.weight")
        lw["post_attention_layernorm"] = get(p + "post_attention_layernorm.weight")
        if spec["gemma"]:
            lw["pre_feedforward_layernorm"] = get(p + "pre_feedforward_layernorm.weight")
            lw["post_feedforward_layernorm"] = get(p + "post_feedforward_layernorm.weight")
        w["layers"].append(lw)

    if spec["tie"]:
        w["lm_head"] = w["embed"]  # tie_weights() replaces lm_head by the input embedding
    else:
        key = next((k for k in head_keys if k in state), None)
        if key is None:
            raise KeyError(f"missing weight {head_keys[0]!r} (tie_word_embeddings is false)")
        w["lm_head"] = get(None, full=key)
    return spec, w


# ---------------------------------------------------------------------------------------
# Building blocks (each mirrors the HF module of the same role).
# ---------------------------------------------------------------------------------------


def rms_norm(x, weight, eps, gemma, hooks=None, name=None):
    """LlamaRMSNorm / Qwen*RMSNorm / MistralRMSNorm, or Gemma2/3RMSNorm when gemma is true."""
    xf = x.float()
    variance = xf.pow(2).mean(-1, keepdim=True)
    normed = xf * torch.rsqrt(variance + eps)
    if gemma:
        out = (normed * (1.0 + weight.float())).type_as(x)  # (x * (1 + w)).to(dtype)
    else:
        out = weight * normed.to(x.dtype)  # w * x.to(dtype)
    if hooks is not None:
        hooks[name + ".hook_scale"] = torch.sqrt(variance + eps)
        # TransformerLens's RMSNorm: hook_normalized is x / scale, before the gain.
        hooks[name + ".hook_normalized"] = normed.to(x.dtype)
    return out


def activation(name, x):
    if name in ("silu", "swish"):
        return F.silu(x)
    if name == "gelu_pytorch_tanh":
        return F.gelu(x, approximate="tanh")
    if name in ("gelu_new", "gelu_fast"):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    if name == "gelu":
        return F.gelu(x)
    if name == "relu":
        return F.relu(x)
    raise ValueError(f"unsupported activation {name!r}")


def rope_inv_freq(rope, head_dim):
    """inv_freq exactly as modeling_rope_utils computes it (float32)."""
    dim = int(head_dim * rope["partial_rotary_factor"])
    base = rope["theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    params = rope["params"]
    if rope["type"] == "linear":  # _compute_linear_scaling_rope_parameters
        inv_freq = inv_freq / params["factor"]
    elif rope["type"] == "llama3":  # _compute_llama3_parameters
        factor = params["factor"]
        low_freq_factor = params["low_freq_factor"]
        high_freq_factor = params["high_freq_factor"]
        old_context_len = params["original_max_position_embeddings"]
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
        is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        inv_freq = torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)
    return inv_freq


def rope_cos_sin(rope, head_dim, T, dtype):
    """cos, sin [T, rotary_dim]: computed in float32 (autocast disabled in HF), then cast to dtype."""
    inv_freq = rope_inv_freq(rope, head_dim)
    positions = torch.arange(T, dtype=torch.int64).float()
    freqs = positions[:, None] * inv_freq[None, :]  # == (inv_freq @ position_ids).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    attention_scaling = 1.0  # 1.0 for default, linear and llama3
    cos, sin = emb.cos() * attention_scaling, emb.sin() * attention_scaling
    return cos.to(dtype), sin.to(dtype)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    """x [B, T, H, dh]; cos/sin [T, rd]. Rotates the first rd dims (all of them unless partial)."""
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    rd = cos.shape[-1]
    if rd == x.shape[-1]:
        return (x * cos) + (rotate_half(x) * sin)
    rot, rest = x[..., :rd], x[..., rd:]
    return torch.cat(((rot * cos) + (rotate_half(rot) * sin), rest), dim=-1)


def allowed_mask(T, window):
    """[T, T] bool: key k visible from query q. masking_utils: causal kv <= q; sliding kv > q - window."""
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    allowed = k <= q
    if window is not None:
        allowed = allowed & (k > q - window)
    return allowed


def attention(x, lw, L, spec, hooks, p):
    B, T, _ = x.shape
    H, Hkv, dh = spec["n_heads"], spec["n_kv_heads"], spec["head_dim"]
    q = F.linear(x, lw["q"], lw["q_b"]).view(B, T, H, dh)
    k = F.linear(x, lw["k"], lw["k_b"]).view(B, T, Hkv, dh)
    v = F.linear(x, lw["v"], lw["v_b"]).view(B, T, Hkv, dh)
    hooks[p + "attn.hook_q"], hooks[p + "attn.hook_k"], hooks[p + "attn.hook_v"] = q, k, v

    if spec["qk_norm"]:  # per-head RMSNorm over head_dim, before RoPE (Qwen3: w*x, Gemma3: (1+w)*x)
        q = rms_norm(q, lw["q_norm"], spec["eps"], spec["gemma"])
        k = rms_norm(k, lw["k_norm"], spec["eps"], spec["gemma"])

    cos, sin = rope_cos_sin(spec["ropes"][L], dh, T, x.dtype)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    hooks[p + "attn.hook_rot_q"], hooks[p + "attn.hook_rot_k"] = q, k

    # eager_attention_forward: [B, H, T, dh] layout, repeat_kv, scores * scaling, softcap, + mask,
    # softmax in float32 then cast back, pattern @ v.
    n_rep = H // Hkv
    qh = q.transpose(1, 2)
    kh = k.transpose(1, 2)[:, :, None].expand(B, Hkv, n_rep, T, dh).reshape(B, H, T, dh)
    vh = v.transpose(1, 2)[:, :, None].expand(B, Hkv, n_rep, T, dh).reshape(B, H, T, dh)
    scores = torch.matmul(qh, kh.transpose(2, 3)) * spec["scaling"]
    cap = spec["attn_softcap"]
    if cap is not None:
        scores = scores / cap
        scores = torch.tanh(scores)
        scores = scores * cap
    scores = scores.masked_fill(~allowed_mask(T, spec["windows"][L]), float("-inf"))
    pattern = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    z = torch.matmul(pattern, vh).transpose(1, 2).contiguous()  # [B, T, H, dh]
    hooks[p + "attn.hook_attn_scores"], hooks[p + "attn.hook_pattern"] = scores, pattern
    hooks[p + "attn.hook_z"] = z
    return F.linear(z.reshape(B, T, H * dh), lw["o"], lw["o_b"])


def mlp(x, lw, spec, hooks, p):
    hooks[p + "mlp.hook_in"] = x
    gate = F.linear(x, lw["gate"], lw["gate_b"])
    up = F.linear(x, lw["up"], lw["up_b"])
    post = activation(spec["act"], gate) * up
    hooks[p + "mlp.hook_pre"], hooks[p + "mlp.hook_pre_linear"], hooks[p + "mlp.hook_post"] = gate, up, post
    return F.linear(post, lw["down"], lw["down_b"])


def run(spec, w, tokens):
    """Forward pass on a [B, T] token tensor; returns {name: tensor} in the model dtype."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() != 2:
        raise ValueError("tokens must be [B, T]")
    vocab = w["embed"].shape[0]
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(f"token ids must lie in [0, {vocab})")
    eps, gemma, hooks = spec["eps"], spec["gemma"], {}

    x = F.embedding(tokens, w["embed"])
    if gemma:
        # Gemma2Model: x * torch.tensor(hidden_size**0.5, dtype=x.dtype);
        # Gemma3TextScaledWordEmbedding: x * embed_scale.to(weight.dtype). Same rounding.
        x = x * torch.tensor(spec["hidden_size"] ** 0.5, dtype=x.dtype)
    hooks["hook_embed"] = x

    for L, lw in enumerate(w["layers"]):
        p = f"blocks.{L}."
        hooks[p + "hook_resid_pre"] = x
        h = rms_norm(x, lw["input_layernorm"], eps, gemma, hooks, p + "ln1")
        attn_out = attention(h, lw, L, spec, hooks, p)
        if gemma:
            attn_out = rms_norm(attn_out, lw["post_attention_layernorm"], eps, gemma, hooks, p + "ln1_post")
        hooks[p + "hook_attn_out"] = attn_out
        x = x + attn_out
        hooks[p + "hook_resid_mid"] = x
        ln2_weight = lw["pre_feedforward_layernorm"] if gemma else lw["post_attention_layernorm"]
        h = rms_norm(x, ln2_weight, eps, gemma, hooks, p + "ln2")
        mlp_out = mlp(h, lw, spec, hooks, p)
        if gemma:
            mlp_out = rms_norm(mlp_out, lw["post_feedforward_layernorm"], eps, gemma, hooks, p + "ln2_post")
        hooks[p + "mlp.hook_out"] = mlp_out
        hooks[p + "hook_mlp_out"] = mlp_out
        x = x + mlp_out
        hooks[p + "hook_resid_post"] = x

    h = rms_norm(x, w["norm"], eps, gemma, hooks, "ln_final")
    if hooks is not None:
        hooks["unembed.hook_pre"] = h  # what the unembedding reads
    logits = F.linear(h, w["lm_head"])
    cap = spec["final_softcap"]
    if cap is not None:
        logits = logits / cap
        logits = torch.tanh(logits)
        logits = logits * cap
    hooks["logits"] = logits
    # HF's ForCausalLMLoss upcasts logits to float32, shifts by one, and averages over all tokens.
    log_probs = logits.float()[:, :-1].log_softmax(-1)
    hooks["loss"] = -log_probs.gather(-1, tokens[:, 1:, None]).mean()
    return hooks


def forward(model_dir, tokens, dtype=torch.float32):
    """Load MODEL_DIR and run it on tokens ([B][T] ids); returns {hook name: float32 tensor}."""
    spec, w = load_model(model_dir, dtype)
    with torch.no_grad():
        out = run(spec, w, tokens)
    return {k: v.float().contiguous() for k, v in out.items()}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("tokens_json")
    parser.add_argument("out")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args(argv[1:])
    with open(args.tokens_json) as f:
        tokens = json.load(f)
    if (not isinstance(tokens, list) or not tokens or not all(isinstance(r, list) for r in tokens)
            or len({len(row) for row in tokens}) != 1 or not tokens[0]):
        sys.exit("TOKENS_JSON must be a non-empty list of equal-length, non-empty lists of token ids")
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    save_file(forward(args.model_dir, tokens, dtype), args.out)


if __name__ == "__main__":
    main(sys.argv)
