"""Plain-PyTorch reference forward pass for Hugging Face GPT-2 and GPT-NeoX (Pythia) models.

Written from the mathematical definitions, in float32, recording every intermediate
activation under its TransformerLens hook name so the test suite can compare the
project's libtorch forward pass against it.

Usage:
    /usr/bin/python3 test/reference/hf_reference.py MODEL_DIR TOKENS_JSON OUT.safetensors

TOKENS_JSON holds a list of equal-length lists of token ids ([B][T]). OUT.safetensors gets
`logits` [B, T, V], every hook, and `loss` (a 0-d tensor: mean next-token cross-entropy).
"""

import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import load_file, save_file  # noqa: E402


# ---------------------------------------------------------------------------------------
# Loading: read the checkpoint and describe it in one architecture-neutral layout, with
# every matrix stored [in, out] so that the forward pass is always `x @ W + b`.
# ---------------------------------------------------------------------------------------


def load_state_dict(model_dir):
    """All tensors of a single-file or sharded checkpoint; float weights upcast to float32."""
    index_path = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
    else:
        weight_map, shards = {}, ["model.safetensors"]
    state = {}
    for shard in shards:
        state.update(load_file(os.path.join(model_dir, shard)))
    missing = set(weight_map) - set(state)
    if missing:
        raise ValueError(f"index lists tensors absent from the shards: {sorted(missing)[:5]}")
    return {k: t.float() if t.is_floating_point() else t for k, t in state.items()}


def load_model(model_dir):
    """Return (config, model) where model is the neutral layout consumed by run()."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    state = load_state_dict(model_dir)
    if config["model_type"] == "gpt2":
        return config, gpt2_layout(config, state)
    if config["model_type"] == "gpt_neox":
        return config, neox_layout(config, state)
    raise ValueError(f"unsupported model_type {config['model_type']!r}")


def gpt2_layout(config, state):
    # Keys may or may not carry a "transformer." prefix; lm_head is outside it.
    prefix = "transformer."
    sd = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    n_heads = config["n_head"]
    head_dim = config["n_embd"] // n_heads
    # Conv1D weights are already [in, out]; c_attn's columns are [Q | K | V], each head-major.
    layers = []
    for L in range(config["n_layer"]):
        p = f"h.{L}."
        div = math.sqrt(head_dim) if config.get("scale_attn_weights", True) else 1.0
        if config.get("scale_attn_by_inverse_layer_idx", False):
            div *= L + 1
        layers.append({
            "ln1": (sd[p + "ln_1.weight"], sd[p + "ln_1.bias"]),
            "W_qkv": sd[p + "attn.c_attn.weight"], "b_qkv": sd[p + "attn.c_attn.bias"],
            "W_O": sd[p + "attn.c_proj.weight"], "b_O": sd[p + "attn.c_proj.bias"],
            "score_div": div,
            "ln2": (sd[p + "ln_2.weight"], sd[p + "ln_2.bias"]),
            "W_in": sd[p + "mlp.c_fc.weight"], "b_in": sd[p + "mlp.c_fc.bias"],
            "W_out": sd[p + "mlp.c_proj.weight"], "b_out": sd[p + "mlp.c_proj.bias"],
        })
    W_E = sd["wte.weight"]
    return {
        "n_heads": n_heads,
        "eps": config["layer_norm_epsilon"],
        "act": config.get("activation_function", "gelu_new"),
        "parallel": False,
        "rotary_dim": 0,
        "rotary_base": None,
        "W_E": W_E,
        "W_pos": sd["wpe.weight"],
        "layers": layers,
        "ln_f": (sd["ln_f.weight"], sd["ln_f.bias"]),
        "W_U": sd.get("lm_head.weight", W_E).t(),  # tied unless a separate head is stored
    }


def neox_layout(config, state):
    sd = state
    d = config["hidden_size"]
    n_heads = config["num_attention_heads"]
    head_dim = d // n_heads
    zeros = torch.zeros(d)

    def linear(key, bias_size):
        # nn.Linear stores [out, in]; transpose to [in, out]. Some configs drop the biases.
        bias = sd.get(key + ".bias", torch.zeros(bias_size))
        return sd[key + ".weight"].t(), bias

    layers = []
    for L in range(config["num_hidden_layers"]):
        p = f"gpt_neox.layers.{L}."
        W_qkv, b_qkv = linear(p + "attention.query_key_value", 3 * d)
        # Output unit h*3*dh + j*dh + i (head h, j in q/k/v, dim i): regroup to [Q | K | V].
        W_qkv = W_qkv.reshape(d, n_heads, 3, head_dim).transpose(1, 2).reshape(d, 3 * d)
        b_qkv = b_qkv.reshape(n_heads, 3, head_dim).transpose(0, 1).reshape(3 * d)
        W_O, b_O = linear(p + "attention.dense", d)
        W_in, b_in = linear(p + "mlp.dense_h_to_4h", sd[p + "mlp.dense_h_to_4h.weight"].shape[0])
        W_out, b_out = linear(p + "mlp.dense_4h_to_h", d)
        layers.append({
            "ln1": (sd[p + "input_layernorm.weight"], sd.get(p + "input_layernorm.bias", zeros)),
            "W_qkv": W_qkv, "b_qkv": b_qkv,
            "W_O": W_O, "b_O": b_O,
            "score_div": math.sqrt(head_dim),
            "ln2": (sd[p + "post_attention_layernorm.weight"],
                    sd.get(p + "post_attention_layernorm.bias", zeros)),
            "W_in": W_in, "b_in": b_in,
            "W_out": W_out, "b_out": b_out,
        })
    W_E = sd["gpt_neox.embed_in.weight"]
    # Newer transformers releases renamed rotary_pct / rotary_emb_base.
    rotary_pct = config.get("rotary_pct", config.get("partial_rotary_factor", 1.0))
    return {
        "n_heads": n_heads,
        "eps": config["layer_norm_eps"],
        "act": config.get("hidden_act", "gelu"),
        "parallel": config.get("use_parallel_residual", True),
        "rotary_dim": int(head_dim * rotary_pct),
        "rotary_base": config.get("rotary_emb_base", config.get("rope_theta", 10000)),
        "W_E": W_E,
        "W_pos": None,
        "layers": layers,
        "ln_f": (sd["gpt_neox.final_layer_norm.weight"], sd["gpt_neox.final_layer_norm.bias"]),
        "W_U": sd.get("embed_out.weight", W_E).t(),
    }


# ---------------------------------------------------------------------------------------
# Forward pass.
# ---------------------------------------------------------------------------------------


def activation(name, x):
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):  # tanh approximation
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    if name == "gelu":  # exact, via erf
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    if name == "relu":
        return torch.clamp(x, min=0)
    raise ValueError(f"unsupported activation {name!r}")


def layer_norm(x, weight, bias, eps, hooks, name):
    xc = x - x.mean(-1, keepdim=True)
    scale = torch.sqrt((xc**2).mean(-1, keepdim=True) + eps)
    out = xc / scale * weight + bias
    hooks[name + ".hook_scale"] = scale
    hooks[name + ".hook_normalized"] = out
    return out


def rotary(x, rotary_dim, base):
    """Rotate the first rotary_dim dims of x [B, T, H, dh] by position-dependent angles."""
    T = x.shape[1]
    inv_freq = 1.0 / base ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim)
    angle = torch.arange(T).float()[:, None] * inv_freq[None, :]  # [T, rotary_dim/2]
    angle = torch.cat([angle, angle], -1)[:, None, :]  # [T, 1, rotary_dim], broadcast over heads
    r, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotate_half = torch.cat([-r[..., half:], r[..., :half]], -1)
    return torch.cat([r * angle.cos() + rotate_half * angle.sin(), rest], -1)


def attention(x, layer, model, hooks, p):
    B, T, d = x.shape
    H = model["n_heads"]
    q, k, v = (x @ layer["W_qkv"] + layer["b_qkv"]).split(d, dim=-1)
    q, k, v = (t.reshape(B, T, H, d // H) for t in (q, k, v))
    hooks[p + "attn.hook_q"], hooks[p + "attn.hook_k"], hooks[p + "attn.hook_v"] = q, k, v
    if model["rotary_dim"]:
        q = rotary(q, model["rotary_dim"], model["rotary_base"])
        k = rotary(k, model["rotary_dim"], model["rotary_base"])

    scores = torch.einsum("bqhi,bkhi->bhqk", q, k) / layer["score_div"]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)  # key > query
    pattern = scores.masked_fill(future, float("-inf")).softmax(-1)
    z = torch.einsum("bhqk,bkhi->bqhi", pattern, v)
    hooks[p + "attn.hook_pattern"], hooks[p + "attn.hook_z"] = pattern, z
    return z.reshape(B, T, d) @ layer["W_O"] + layer["b_O"]


def run(model, tokens):
    """Forward pass of a loaded model on a [B, T] token tensor; returns all recorded tensors."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    B, T = tokens.shape
    eps, hooks = model["eps"], {}

    x = model["W_E"][tokens]
    hooks["hook_embed"] = x
    if model["W_pos"] is not None:
        if T > model["W_pos"].shape[0]:
            raise ValueError(f"sequence length {T} exceeds n_positions")
        pos = model["W_pos"][:T].expand(B, T, -1)
        hooks["hook_pos_embed"] = pos
        x = x + pos

    for L, layer in enumerate(model["layers"]):
        p = f"blocks.{L}."
        hooks[p + "hook_resid_pre"] = x
        attn_in = layer_norm(x, *layer["ln1"], eps, hooks, p + "ln1")
        attn_out = attention(attn_in, layer, model, hooks, p)
        hooks[p + "hook_attn_out"] = attn_out
        if model["parallel"]:  # attention and MLP both read resid_pre
            mlp_in = x
        else:
            mlp_in = x + attn_out
            hooks[p + "hook_resid_mid"] = mlp_in
        h = layer_norm(mlp_in, *layer["ln2"], eps, hooks, p + "ln2")
        pre = h @ layer["W_in"] + layer["b_in"]
        post = activation(model["act"], pre)
        mlp_out = post @ layer["W_out"] + layer["b_out"]
        hooks[p + "mlp.hook_pre"], hooks[p + "mlp.hook_post"] = pre, post
        hooks[p + "hook_mlp_out"] = mlp_out
        x = x + attn_out + mlp_out if model["parallel"] else mlp_in + mlp_out
        hooks[p + "hook_resid_post"] = x

    logits = layer_norm(x, *model["ln_f"], eps, hooks, "ln_final") @ model["W_U"]
    hooks["logits"] = logits
    # Mean cross-entropy of predicting token t+1 from position t, over all B*(T-1) predictions.
    log_probs = logits[:, :-1].log_softmax(-1)
    hooks["loss"] = -log_probs.gather(-1, tokens[:, 1:, None]).mean()
    return hooks


def forward(model_dir, tokens):
    """Load MODEL_DIR and run it on tokens ([B][T] ids); returns {hook name: float32 tensor}."""
    _, model = load_model(model_dir)
    with torch.no_grad():
        return run(model, tokens)


def main(argv):
    if len(argv) != 4:
        sys.exit(f"usage: {argv[0]} MODEL_DIR TOKENS_JSON OUT.safetensors")
    model_dir, tokens_path, out_path = argv[1:]
    with open(tokens_path) as f:
        tokens = json.load(f)
    if not tokens or len({len(row) for row in tokens}) != 1:
        sys.exit("TOKENS_JSON must be a non-empty list of equal-length lists of token ids")
    outputs = forward(model_dir, tokens)
    save_file({k: v.float().contiguous() for k, v in outputs.items()}, out_path)


if __name__ == "__main__":
    main(sys.argv)
