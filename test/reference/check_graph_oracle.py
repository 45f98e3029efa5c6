"""Self-check for graph_oracle.py (CPU only, no transformers needed).

Builds tiny random checkpoints (GPT-2 Conv1D layout, GPT-NeoX parallel and sequential, and every
family of check_modern_reference.py: Llama with GQA + biases + llama3 RoPE, Mistral sliding window,
Qwen2 per-layer windows, Qwen3 q/k norms, Gemma-2 sandwich norms + soft-caps, Gemma-3) with random
relu / topk / jumprelu transcoders (with and without skip) reading every supported input hook
(ln2.hook_normalized: TL semantics, before the gain on RMSNorm models), one
layer left without a transcoder on the 3-layer models, and checks:
  * the oracle's own float64 real forward against hf_reference / hf_modern_reference (float32):
    logits, MLP outputs, the transcoder inputs at their hooks, attention patterns;
  * the frozen unperturbed forward reproduces the real one (logits, 1e-10) and the target values
    equal direct computations (pre-activations from x_in, demeaned real logits);
  * complete decomposition: sum_check ~ 0 (1e-9 relative), and all coefficients zero gives 0;
  * every effect equals (a) the gradient of the target w.r.t. the source's coefficient (autograd,
    one backward per target) and (b) the effect of subtracting the source vector written out
    explicitly (token embedding, W_pos row, a W_dec[f], err, and the bias node's constants by the
    closed formula b_O + sum_h (ln1.b W_V + b_V) W_O, Gemma gain / post_scale, b_dec_out + ln2.b W_skip,
    b_enc - b_dec W_enc + W_enc ln2.b, ln_f.b u + b_U - mean b_U);
  * linearity: scale 2, -1, 0.5 give 2x, -1x, 0.5x effects;
  * topk keeps at most k features per position, jumprelu only pre > threshold;
  * the CLI end to end (SPEC.json with relative paths, output shapes and values) and error paths.
Cross-layer transcoders (SPEC.json "cross_layer"; relu+skip, topk, jumprelu, batchtopk on GPT-2, NeoX
parallel / sequential, Llama, Qwen2, Gemma-2, Gemma-3, reading every input hook) get all the checks above
(effects vs autograd and vs explicit writes into every layer a feature decodes into, sum_check, linearity,
causality, direct effects only, the CLI) and:
  * activations and y_hat_t = sum_{s <= t} f_s W_dec_{s}[:, t - s] + b_dec[t] (+ x_t W_skip[t]) computed
    straight from the file's tensors equal the oracle's (mlp_out - errors), feature targets equal
    x_s W_enc[s][:, j] + b_enc[s][j] from the file, and the cross-layer decoders do change y_hat;
  * the frozen forward (CLT writes + errors) reproduces the real logits;
  * one source per feature: a feature's effect = the sum of the effects of its writes W_dec_{s}[j, t - s]
    into each layer t >= s injected one at a time, and the writes into later layers reach the top
    layer's feature targets;
  * a CLT whose decoders write only into their own layer gives exactly (torch.equal) the outputs of the
    equivalent per-layer transcoder set;
  * bad files and specs (both keys, missing / misshapen / unknown W_dec_*, layer count, arch vs threshold,
    topk without k, hook templates, feature index out of range) are refused; an inactive feature has no effect.

Usage: /usr/bin/python3 test/reference/check_graph_oracle.py
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
import check_modern_reference as cmr  # noqa: E402
import graph_oracle as go  # noqa: E402
import hf_modern_reference as hfm  # noqa: E402
import hf_reference as hfr  # noqa: E402
from safetensors_io import load_file, save_file  # noqa: E402

DT = torch.float64
T = 10
VOCAB = 100
FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what)


def rel_err(a, b):
    a, b = a.to(DT), b.to(DT)
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-30)) if a.numel() else 0.0


def close(a, b, tol, what):
    e = rel_err(a, b)
    check(e <= tol, f"{what}: relative error {e:.3g} > {tol:g}")
    return e


# ---------------------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------------------


def gpt2_checkpoint(path, gen, n_layer=3, d=64, H=4):
    cfg = dict(model_type="gpt2", n_embd=d, n_head=H, n_layer=n_layer, n_positions=32, vocab_size=VOCAB,
               layer_norm_epsilon=1e-5, activation_function="gelu_new")
    r = lambda *s, sc=1.0: torch.randn(*s, generator=gen) * sc  # noqa: E731
    sd = {"transformer.wte.weight": r(VOCAB, d), "transformer.wpe.weight": r(32, d, sc=0.5),
          "transformer.ln_f.weight": 1 + r(d, sc=0.2), "transformer.ln_f.bias": r(d, sc=0.1)}
    for L in range(n_layer):
        p = f"transformer.h.{L}."
        sd.update({
            p + "ln_1.weight": 1 + r(d, sc=0.2), p + "ln_1.bias": r(d, sc=0.1),
            p + "attn.c_attn.weight": r(d, 3 * d, sc=d ** -0.5), p + "attn.c_attn.bias": r(3 * d, sc=0.1),
            p + "attn.c_proj.weight": r(d, d, sc=d ** -0.5), p + "attn.c_proj.bias": r(d, sc=0.1),
            p + "ln_2.weight": 1 + r(d, sc=0.2), p + "ln_2.bias": r(d, sc=0.1),
            p + "mlp.c_fc.weight": r(d, 4 * d, sc=d ** -0.5), p + "mlp.c_fc.bias": r(4 * d, sc=0.1),
            p + "mlp.c_proj.weight": r(4 * d, d, sc=(4 * d) ** -0.5), p + "mlp.c_proj.bias": r(d, sc=0.1),
        })
    cmr.write_checkpoint(path, cfg, sd)


def neox_checkpoint(path, gen, parallel, n_layer=2, d=64, H=4):
    cfg = dict(model_type="gpt_neox", hidden_size=d, num_attention_heads=H, num_hidden_layers=n_layer,
               intermediate_size=4 * d, rotary_pct=0.25, rotary_emb_base=10000, layer_norm_eps=1e-5,
               use_parallel_residual=parallel, hidden_act="gelu", vocab_size=VOCAB, max_position_embeddings=64)
    r = lambda *s, sc=1.0: torch.randn(*s, generator=gen) * sc  # noqa: E731
    sd = {"gpt_neox.embed_in.weight": r(VOCAB, d), "embed_out.weight": r(VOCAB, d, sc=d ** -0.5),
          "gpt_neox.final_layer_norm.weight": 1 + r(d, sc=0.2), "gpt_neox.final_layer_norm.bias": r(d, sc=0.1)}
    for L in range(n_layer):
        p = f"gpt_neox.layers.{L}."
        sd.update({
            p + "input_layernorm.weight": 1 + r(d, sc=0.2), p + "input_layernorm.bias": r(d, sc=0.1),
            p + "post_attention_layernorm.weight": 1 + r(d, sc=0.2), p + "post_attention_layernorm.bias": r(d, sc=0.1),
            p + "attention.query_key_value.weight": r(3 * d, d, sc=d ** -0.5),
            p + "attention.query_key_value.bias": r(3 * d, sc=0.1),
            p + "attention.dense.weight": r(d, d, sc=d ** -0.5), p + "attention.dense.bias": r(d, sc=0.1),
            p + "mlp.dense_h_to_4h.weight": r(4 * d, d, sc=d ** -0.5), p + "mlp.dense_h_to_4h.bias": r(4 * d, sc=0.1),
            p + "mlp.dense_4h_to_h.weight": r(d, 4 * d, sc=(4 * d) ** -0.5), p + "mlp.dense_4h_to_h.bias": r(d, sc=0.1),
        })
    cmr.write_checkpoint(path, cfg, sd)


def modern_checkpoint(path, gen, name):
    cfg = cmr.CONFIGS[name]
    cmr.write_checkpoint(path, cfg, cmr.random_state(cfg, gen))


HOOKS = {"ln2": ("ln2.hook_normalized", "hook_mlp_out"), "mlp_in": ("mlp.hook_in", "mlp.hook_out"),
         "mid": ("hook_resid_mid", "mlp.hook_out"), "pre": ("hook_resid_pre", "hook_mlp_out")}


def transcoder_file(path, gen, layer, d, arch, skip, hook, m=48, k=6, k_as_tensor=False):
    r = lambda *s, sc=1.0, sh=0.0: torch.randn(*s, generator=gen) * sc + sh  # noqa: E731
    p = {"W_enc": r(d, m, sc=0.3), "b_enc": r(m, sc=0.2, sh=0.3 if arch == "jumprelu" else -0.1),
         "W_dec": r(m, d, sc=0.3), "b_dec": r(d, sc=0.1), "b_dec_out": r(d, sc=0.1)}
    if skip:
        p["W_skip"] = r(d, d, sc=0.08)
    if arch == "jumprelu":
        p["threshold"] = 0.2 + 0.2 * torch.rand(m, generator=gen)
    hin, hout = HOOKS[hook]
    meta = {"arch": arch, "hook_in": f"blocks.{layer}.{hin}", "hook_out": f"blocks.{layer}.{hout}"}
    if arch == "topk":
        if k_as_tensor:
            p["k"] = torch.tensor([k], dtype=torch.int64)
        else:
            meta["k"] = str(k)
    save_file(p, path, metadata=meta)


# (name, builder, {layer: (arch, skip, hook)})
CASES = [
    ("gpt2", lambda p, g: gpt2_checkpoint(p, g), {0: ("relu", True, "ln2"), 1: ("topk", False, "mid")}),
    ("gpt2-b", lambda p, g: gpt2_checkpoint(p, g, n_layer=2),
     {0: ("jumprelu", True, "mlp_in"), 1: ("relu", True, "pre")}),
    ("neox-parallel", lambda p, g: neox_checkpoint(p, g, True),
     {0: ("jumprelu", True, "mlp_in"), 1: ("topk", True, "pre")}),
    ("neox-sequential", lambda p, g: neox_checkpoint(p, g, False),
     {0: ("topk", True, "mid"), 1: ("relu", True, "ln2")}),
    ("llama", lambda p, g: modern_checkpoint(p, g, "llama"), {0: ("relu", True, "ln2"), 1: ("topk", False, "mid")}),
    ("llama-b", lambda p, g: modern_checkpoint(p, g, "llama"), {0: ("topk", True, "mlp_in"), 1: ("relu", True, "ln2")}),
    ("mistral", lambda p, g: modern_checkpoint(p, g, "mistral"),
     {0: ("jumprelu", False, "mlp_in"), 1: ("relu", True, "mid")}),
    ("qwen2", lambda p, g: modern_checkpoint(p, g, "qwen2"), {0: ("topk", True, "mlp_in"), 2: ("jumprelu", True, "pre")}),
    ("qwen3", lambda p, g: modern_checkpoint(p, g, "qwen3"), {0: ("jumprelu", True, "mlp_in"), 1: ("relu", False, "mid")}),
    ("gemma2", lambda p, g: modern_checkpoint(p, g, "gemma2"),
     {0: ("jumprelu", False, "mlp_in"), 1: ("relu", True, "ln2"), 2: ("topk", True, "mid")}),
    ("gemma3_text", lambda p, g: modern_checkpoint(p, g, "gemma3_text"),
     {0: ("relu", True, "mlp_in"), 1: ("topk", True, "pre"), 2: ("jumprelu", True, "mid")}),
]


def clt_file(path, gen, L, d, arch, skip, hook, F=32, k=6, cross=True):
    """A random cross-layer transcoder file; cross=False zeroes W_dec_{s}[:, t - s] for t > s. Returns
    its tensors (float32, as written)."""
    r = lambda *s, sc=1.0, sh=0.0: torch.randn(*s, generator=gen) * sc + sh  # noqa: E731
    p = {"W_enc": r(L, d, F, sc=0.3), "b_enc": r(L, F, sc=0.2, sh=0.3 if arch == "jumprelu" else -0.1),
         "b_dec": r(L, d, sc=0.1)}
    for src in range(L):
        W = r(F, L - src, d, sc=0.25)
        if not cross:
            W[:, 1:] = 0
        p[f"W_dec_{src}"] = W
    if skip:
        p["W_skip"] = r(L, d, d, sc=0.08)
    if arch == "jumprelu":
        p["threshold"] = 0.2 + 0.2 * torch.rand(L, F, generator=gen)
    if arch == "batchtopk":  # some thresholds below 0, where relu(pre) * (pre > threshold) != jumprelu
        p["threshold"] = -0.3 + 0.6 * torch.rand(L, F, generator=gen)
    hin, hout = HOOKS[hook]
    meta = {"arch": arch, "hook_in": "blocks.{layer}." + hin, "hook_out": "blocks.{layer}." + hout}
    if arch == "topk":
        meta["k"] = str(k)
    save_file(p, path, metadata=meta)
    return p


# (name, builder, arch, skip, hook): every model has 3 layers (2 for llama), so features of layer 0 write
# into layers 1 and 2 and the top layer's targets read them.
CLT_CASES = [
    ("clt-gpt2", lambda p, g: gpt2_checkpoint(p, g), "relu", True, "ln2"),
    ("clt-neox-parallel", lambda p, g: neox_checkpoint(p, g, True, n_layer=3), "topk", True, "pre"),
    ("clt-neox-seq", lambda p, g: neox_checkpoint(p, g, False, n_layer=3), "jumprelu", False, "mid"),
    ("clt-llama", lambda p, g: modern_checkpoint(p, g, "llama"), "relu", True, "mlp_in"),
    ("clt-qwen2", lambda p, g: modern_checkpoint(p, g, "qwen2"), "topk", False, "mid"),
    ("clt-gemma2", lambda p, g: modern_checkpoint(p, g, "gemma2"), "jumprelu", True, "mlp_in"),
    ("clt-gemma3", lambda p, g: modern_checkpoint(p, g, "gemma3_text"), "batchtopk", True, "ln2"),
]


# ---------------------------------------------------------------------------------------
# Independent pieces.
# ---------------------------------------------------------------------------------------


def reference_hooks(model_dir, tokens):
    fam = json.load(open(os.path.join(model_dir, "config.json")))["model_type"]
    if fam in ("gpt2", "gpt_neox"):
        return hfr.forward(model_dir, [tokens])
    return hfm.forward(model_dir, [tokens])


def compare_real(name, M, R, tcs, hooks):
    close(R["logits"], hooks["logits"][0], 1e-4, f"{name}: real logits vs reference")
    for l, rl in enumerate(R["layers"]):
        p = f"blocks.{l}."
        close(rl["mlp_out"], hooks[p + "hook_mlp_out"][0], 1e-4, f"{name}: mlp_out[{l}] vs reference")
        close(rl["pattern"], hooks[p + "attn.hook_pattern"][0], 1e-4, f"{name}: pattern[{l}] vs reference")
        tc = tcs.get(l)
        if tc is None:
            continue
        hook = tc["hook_in"]
        if hook.endswith("mlp.hook_in") and M["norm"] == "layer":
            hook = p + "ln2.hook_normalized"  # classic reference: LayerNorm output incl. w, b
        close(rl["x_in"], hooks[hook][0], 1e-4, f"{name}: x_in[{l}] ({tc['hook_in']}) vs reference {hook}")


def coefficient_gradients(M, R, tcs, targets, sources):
    """[n_sources, n_targets]: d target / d coefficient(source), by autograd."""
    c = go.ones_coefficients(M, R, 1)
    leaves = [c["tok"], c["pos"], c["bias"], c["err"]] + c["feat"]
    for t in leaves:
        t.requires_grad_(True)
    with torch.enable_grad():
        vals, _ = go.run_frozen(M, R, tcs, targets, c)
        cols = []
        for i in range(len(targets)):
            g = torch.autograd.grad(vals[0, i], leaves, retain_graph=True, allow_unused=True)
            g = [torch.zeros_like(t) if gi is None else gi for gi, t in zip(g, leaves)]
            col = []
            for s in sources:
                k = s["kind"]
                if k == "token":
                    col.append(g[0][0, s["position"]])
                elif k == "positional":
                    col.append(g[1][0, s["position"]])
                elif k == "bias":
                    col.append(g[2][0, s["layer"]])
                elif k == "error":
                    col.append(g[3][0, s["layer"], s["position"]])
                else:
                    j = go.feature_index(R, s["layer"], s["position"], s["feature"])
                    col.append(g[4 + s["layer"]][0, j] if j is not None else torch.zeros((), dtype=DT))
            cols.append(torch.stack(col) if col else torch.zeros(0, dtype=DT))
    return torch.stack(cols, 1).detach()


def explicit_effects(M, R, tcs, targets, sources, base):
    """Effects by subtracting each source's vector written out by hand (coefficients all 1)."""
    nL, d = len(M["layers"]), M["d"]
    rows = []
    for s in sources:
        extra = {}
        z = lambda: torch.zeros(1, R["T"], d, dtype=DT)  # noqa: E731
        k = s["kind"]
        if k == "token":
            e = z()
            e[0, s["position"]] = -M["W_E"][R["tokens"][s["position"]]] * M["embed_scale"]
            extra["embed"] = e
        elif k == "positional":
            e = z()
            e[0, s["position"]] = -M["W_pos"][s["position"]]
            extra["embed"] = e
        elif k in ("error", "feature"):
            l, p = s["layer"], s["position"]
            e = z()
            if k == "error":
                e[0, p] = -R["layers"][l]["err"][p]
            else:
                a = R["layers"][l]["acts"][p, s["feature"]]
                e[0, p] = -a * tcs[l]["W_dec"][s["feature"]]
                for t, tct in tcs.items():  # a cross-layer feature also writes into later layers
                    for src, W in tct.get("cross_in", ()):
                        if src == l:
                            et = z()
                            et[0, p] = -a * W[s["feature"]]
                            extra[("mlp", t)] = et
            extra[("mlp", l)] = e
        else:
            l = s["layer"]
            if l < nL:
                lay, rl = M["layers"][l], R["layers"][l]
                ln1_b = lay["ln1"][1] if lay["ln1"][1] is not None else torch.zeros(d, dtype=DT)
                H, dh = lay["H"], lay["dh"]
                kv = go.kv_map(lay)
                const = lay["b_O"].clone()
                WV = lay["W_V"].reshape(d, lay["Hkv"], dh)
                bV = lay["b_V"].reshape(lay["Hkv"], dh)
                WO = lay["W_O"].reshape(H, dh, d)
                for h in range(H):
                    const = const + (ln1_b @ WV[:, kv[h]] + bV[kv[h]]) @ WO[h]
                attn_c = const.expand(R["T"], d)
                if lay["post_attn"] is not None:
                    attn_c = lay["post_attn"] * attn_c / rl["post_attn_scale"]
                extra[("attn", l)] = -attn_c[None].clone()
                tc = tcs.get(l)
                ln2_b = lay["ln2"][1]
                reads_norm_bias = tc is not None and tc["reads"] in ("mlp_in", "ln2_normalized") and ln2_b is not None
                if tc is not None:
                    mc = tc["b_dec_out"].clone()
                    if reads_norm_bias and "W_skip" in tc:
                        mc = mc + ln2_b @ tc["W_skip"]
                    extra[("mlp", l)] = -mc.expand(1, R["T"], d).clone()
                for i, t in enumerate(targets):
                    if t["kind"] == "feature" and t["layer"] == l:
                        f = t["feature"]
                        tcst = tc["b_enc"][f] - tc["W_enc"][:, f] @ tc["b_dec"]
                        if reads_norm_bias:
                            tcst = tcst + tc["W_enc"][:, f] @ ln2_b
                        extra[("target", i)] = -tcst.reshape(1)
            else:
                lnf_b = M["ln_f"][1]
                for i, t in enumerate(targets):
                    if t["kind"] == "logit":
                        v = t["token"]
                        u = M["W_U"][:, v] - M["W_U"].mean(1)
                        val = M["b_U"][v] - M["b_U"].mean()
                        if lnf_b is not None:
                            val = val + lnf_b @ u
                        extra[("target", i)] = -val.reshape(1)
        with torch.no_grad():
            vals, _ = go.run_frozen(M, R, tcs, targets, go.ones_coefficients(M, R, 1), extra)
        rows.append(base - vals[0])
    return torch.stack(rows) if rows else torch.zeros(0, len(targets), dtype=DT)


def pick_targets(M, R, tcs, gen, n_feat=30, n_logit=8):
    targets = []
    layers = sorted(tcs)
    for _ in range(n_feat):
        l = layers[int(torch.randint(len(layers), (1,), generator=gen))]
        act = R["layers"][l]["active"]
        if act.shape[0] and torch.rand(1, generator=gen) < 0.8:  # mostly active features, a few inactive
            p, f = act[int(torch.randint(act.shape[0], (1,), generator=gen))].tolist()
        else:
            p, f = int(torch.randint(R["T"], (1,), generator=gen)), int(torch.randint(tcs[l]["m"], (1,), generator=gen))
        targets.append({"kind": "feature", "layer": l, "position": p, "feature": f})
    V = M["W_U"].shape[1]
    for i in range(n_logit):
        p = R["T"] - 1 if i < n_logit // 2 else int(torch.randint(R["T"], (1,), generator=gen))
        targets.append({"kind": "logit", "position": p, "token": int(torch.randint(V, (1,), generator=gen))})
    return targets


# ---------------------------------------------------------------------------------------
# One case.
# ---------------------------------------------------------------------------------------


def test_case(tmp, gen, name, build, plan):
    mdir = os.path.join(tmp, name)
    build(mdir, gen)
    M = go.load_model(mdir)
    files = {}
    for l, (arch, skip, hook) in plan.items():
        path = os.path.join(mdir, f"layer_{l}.safetensors")
        transcoder_file(path, gen, l, M["d"], arch, skip, hook, k_as_tensor=(name == "gpt2-b"))
        files[l] = path
    tcs = {l: go.load_transcoder(p, l, M["d"], M["parallel"], lambda x: x) for l, p in files.items()}
    tokens = torch.randint(VOCAB, (T,), generator=gen).tolist()
    spec_tc = {"transcoders": {str(l): os.path.join(name, os.path.basename(p)) for l, p in files.items()}}
    run_checks(tmp, gen, name, mdir, M, tcs, tokens, spec_tc)
    return mdir, files, tokens


def run_checks(tmp, gen, name, mdir, M, tcs, tokens, spec_tc):
    """Every check of one model + transcoders (per-layer set or CLT); spec_tc: the SPEC.json key."""
    R0 = go.real_forward(M, tokens, tcs)
    targets = pick_targets(M, R0, tcs, gen)
    sources = go.all_sources(M, R0)
    t0 = time.time()
    out = go.compute(M, tcs, tokens, [], targets)
    t_compute = time.time() - t0
    R = out["_record"]
    base, eff = out["target_values"], out["_all_effects"]

    # Real forward vs the float32 references.
    compare_real(name, M, R, tcs, reference_hooks(mdir, tokens))

    # Frozen unperturbed == real.
    close(out["logits"], out["real_logits"], 1e-10, f"{name}: frozen logits vs real")
    for i, t in enumerate(targets):
        if t["kind"] == "feature":
            rl, tc = R["layers"][t["layer"]], tcs[t["layer"]]
            want = ((rl["x_in"][t["position"]] - tc["b_dec"]) @ tc["W_enc"][:, t["feature"]] + tc["b_enc"][t["feature"]])
            check(abs(float(want - rl["pre"][t["position"], t["feature"]])) < 1e-12, f"{name}: pre bookkeeping")
        else:
            lg = R["logits"][t["position"]]
            if M["final_softcap"] is not None:
                cap = M["final_softcap"]
                lg = torch.atanh(lg / cap) * cap
            want = lg[t["token"]] - lg.mean()
        err = abs(float(base[i] - want)) / max(1.0, abs(float(want)))
        check(err < 1e-9, f"{name}: target {i} ({t['kind']}) value {float(base[i])} vs direct {float(want)}")

    # Transcoder activation rules.
    for l, tc in tcs.items():
        rl = R["layers"][l]
        if tc["arch"] == "topk":
            check(int((rl["acts"] != 0).sum(-1).max()) <= tc["k"], f"{name}: topk > k active")
        if tc["arch"] == "jumprelu":
            on = rl["acts"] != 0
            check(bool((rl["pre"][on] > tc["threshold"].expand_as(rl["pre"])[on]).all()), f"{name}: jumprelu gate")
        if tc["arch"] == "batchtopk":
            thr = tc["threshold"].expand_as(rl["pre"])
            check(torch.equal(rl["acts"], torch.where((rl["pre"] > thr) & (rl["pre"] > 0), rl["pre"], 0.0)),
                  f"{name}: batchtopk gate relu(pre) * (pre > threshold)")
        check(rl["active"].shape[0] > 0, f"{name}: layer {l} has no active feature")

    # Complete decomposition.
    scale = float(base.abs().max()) + float(eff.abs().sum(0).max())
    sc = float(out["sum_check"].abs().max()) / scale
    check(sc < 1e-9, f"{name}: sum_check {sc:.3g} relative")
    zero = go.ones_coefficients(M, R, 1)
    for key in ("tok", "pos", "bias", "err"):
        zero[key].zero_()
    for t in zero["feat"]:
        t.zero_()
    with torch.no_grad():
        zvals, _ = go.run_frozen(M, R, tcs, targets, zero)
    check(float(zvals.abs().max()) / scale < 1e-12, f"{name}: all-zero coefficients give {float(zvals.abs().max())}")

    # Effects == autograd gradients == explicit vector subtraction.
    grads = coefficient_gradients(M, R, tcs, targets, sources)
    close(eff, grads, 1e-10, f"{name}: effects vs autograd")
    expl = explicit_effects(M, R, tcs, targets, sources, base)
    close(eff, expl, 1e-10, f"{name}: effects vs explicit vectors")
    with torch.no_grad():
        direct = go.effects_of(M, R, tcs, targets, sources, base, alone=True)
    close(eff, direct, 1e-10, f"{name}: effects vs effects_direct")
    kinds = {}
    for s, row in zip(sources, eff):
        kinds.setdefault(s["kind"], []).append(float(row.abs().max()))
    for k, v in kinds.items():
        check(max(v) > 1e-6, f"{name}: every {k} effect is zero")

    # Linearity, through the public perturbation path (incl. an inactive feature: zero effect).
    sample = [s for i, s in enumerate(sources) if i % 7 == 0] + [s for s in sources if s["kind"] == "bias"]
    inactive = None
    for l in tcs:
        acts = R["layers"][l]["acts"]
        zs = (acts == 0).nonzero()
        if zs.shape[0]:
            inactive = {"kind": "feature", "layer": l, "position": int(zs[0, 0]), "feature": int(zs[0, 1])}
            break
    with torch.no_grad():
        e1 = go.effects_of(M, R, tcs, targets, sample, base)
        for factor in (2.0, -1.0, 0.5):
            ef = go.effects_of(M, R, tcs, targets, [dict(s, scale=factor) for s in sample], base)
            close(ef, factor * e1, 1e-10, f"{name}: scale {factor} linearity")
        if inactive is not None:
            ei = go.effects_of(M, R, tcs, targets, [inactive], base)
            check(float(ei.abs().max()) == 0.0, f"{name}: inactive feature has an effect")
        # Causality: a logit target at position p ignores sources at later positions.
        for j, t in enumerate(targets):
            for s, row, drow in zip(sources, eff, direct):
                if "position" in s and s["position"] > t["position"] and (abs(float(row[j])) > 1e-12 * scale
                                                                          or float(drow[j]) != 0.0):
                    check(False, f"{name}: source {s} moves earlier target {t}")
                    break
        # Direct effects only: no feature or error of layer l reaches targets of layers <= l.
        for j, t in enumerate(targets):
            if t["kind"] != "feature":
                continue
            for s, row, drow in zip(sources, eff, direct):
                if s["kind"] in ("feature", "error") and s["layer"] >= t["layer"] and (
                        abs(float(row[j])) > 1e-13 * scale or float(drow[j]) != 0.0):
                    check(False, f"{name}: {s} reaches target {t}")
                    break

    # CLI end to end, relative paths against the spec's directory.
    perts = sample[:25] + ([inactive] if inactive else []) + [dict(sample[0], scale=2.0)]
    spec = {"model_dir": name, "tokens": tokens, "processing": "none", **spec_tc,
            "perturbations": perts, "targets": targets}
    spec_path = os.path.join(tmp, f"{name}.json")
    json.dump(spec, open(spec_path, "w"))
    out_path = os.path.join(tmp, f"{name}.out.safetensors")
    t0 = time.time()
    proc = subprocess.run([sys.executable, os.path.join(HERE, "graph_oracle.py"), spec_path, out_path],
                          capture_output=True, text=True, cwd="/")
    t_cli = time.time() - t0
    check(proc.returncode == 0, f"{name}: CLI failed: {proc.stderr[-2000:]}")
    if proc.returncode == 0:
        got = load_file(out_path)
        check(got["effects"].dtype == DT and tuple(got["effects"].shape) == (len(perts), len(targets)), f"{name}: effects shape")
        check(tuple(got["logits"].shape) == (T, M["W_U"].shape[1]), f"{name}: logits shape")
        want = go.effects_of(M, R, tcs, targets, perts, base)
        close(got["effects"], want, 1e-12, f"{name}: CLI effects")
        close(got["effects_direct"], want, 1e-10, f"{name}: CLI effects_direct")
        close(got["target_values"], base, 1e-12, f"{name}: CLI target_values")
        check(float(got["sum_check"].abs().max()) / scale < 1e-9, f"{name}: CLI sum_check")
        check(int(got["n_sources"][0]) == len(sources), f"{name}: n_sources")
    n_act = sum(R["layers"][l]["active"].shape[0] for l in tcs)
    print(f"{name:16s} sources {len(sources):4d} (features {n_act:3d})  targets {len(targets)}  "
          f"sum_check {sc:.1e}  compute {t_compute:.2f} s  CLI {t_cli:.2f} s")
    return out, targets, sources


def clt_from_raw(raw, arch, k, x):
    """The CLT written out from its file tensors (float64): acts [L, T, F], y_hat [L, T, d] for inputs x [L, T, d]."""
    raw = {n: t.to(DT) for n, t in raw.items()}
    L = raw["W_enc"].shape[0]
    acts, y_hat = [], []
    for src in range(L):
        pre = x[src] @ raw["W_enc"][src] + raw["b_enc"][src]
        if arch == "relu":
            f = pre.clamp_min(0)
        elif arch == "jumprelu":
            f = torch.where(pre > raw["threshold"][src], pre, 0.0)
        elif arch == "batchtopk":
            f = torch.where((pre > raw["threshold"][src]) & (pre > 0), pre, 0.0)
        else:
            f = torch.zeros_like(pre)
            for p in range(pre.shape[0]):
                idx = torch.argsort(pre[p], descending=True)[:k]
                f[p, idx] = pre[p, idx].clamp_min(0)
        acts.append(f)
    for t in range(L):
        y = raw["b_dec"][t].expand(x.shape[1], -1).clone()
        for src in range(t + 1):
            y = y + acts[src] @ raw[f"W_dec_{src}"][:, t - src, :]
        if "W_skip" in raw:
            y = y + x[t] @ raw["W_skip"][t]
        y_hat.append(y)
    return torch.stack(acts), torch.stack(y_hat)


def test_clt_case(tmp, gen, name, build, arch, skip, hook):
    mdir = os.path.join(tmp, name)
    build(mdir, gen)
    M = go.load_model(mdir)
    nL, d = len(M["layers"]), M["d"]
    path = os.path.join(mdir, "clt.safetensors")
    raw = clt_file(path, gen, nL, d, arch, skip, hook)
    tcs = go.load_cross_layer(path, nL, d, M["parallel"], lambda x: x)
    tokens = torch.randint(VOCAB, (T,), generator=gen).tolist()
    out, targets, sources = run_checks(tmp, gen, name, mdir, M, tcs, tokens,
                                       {"cross_layer": os.path.join(name, "clt.safetensors")})
    R, base, eff = out["_record"], out["target_values"], out["_all_effects"]

    # The CLT straight from its file tensors, on the hook inputs (checked against the references above):
    # activations, y_hat_t = sum_{s <= t} f_s W_dec_{s}[:, t - s] + b_dec[t] (+ skip), errors = mlp_out - y_hat.
    x = torch.stack([rl["x_in"] for rl in R["layers"]])
    acts, y_hat = clt_from_raw(raw, arch, 6, x)
    close(torch.stack([rl["acts"] for rl in R["layers"]]), acts, 1e-12, f"{name}: CLT activations from the file")
    close(out["mlp_out"] - out["errors"], y_hat, 1e-12, f"{name}: y_hat from the file (mlp_out - errors)")
    own = {n: (torch.cat([v[:, :1], torch.zeros_like(v[:, 1:])], 1) if n.startswith("W_dec_") else v) for n, v in raw.items()}
    check(rel_err(clt_from_raw(own, arch, 6, x)[1], y_hat) > 1e-3, f"{name}: the cross-layer decoders do not change y_hat")
    for i, t in enumerate(targets):
        if t["kind"] == "feature":
            s_, p, j = t["layer"], t["position"], t["feature"]
            want = x[s_, p] @ raw["W_enc"][s_, :, j].to(DT) + raw["b_enc"][s_, j].to(DT)
            check(abs(float(base[i] - want)) < 1e-12 * max(1.0, abs(float(want))),
                  f"{name}: target {i} pre-activation {float(base[i])} vs the file's {float(want)}")
    if arch == "batchtopk":
        thr = raw["threshold"].to(DT)[:, None, :].expand_as(acts)
        pre = torch.stack([rl["pre"] for rl in R["layers"]])
        check(bool(((pre > thr) & (pre <= 0)).any()), f"{name}: batchtopk case never differs from jumprelu")

    # Frozen model with the CLT-replaced MLP outputs + errors reproduces the real forward (all layers).
    close(out["logits"], R["logits"], 1e-10, f"{name}: frozen CLT forward vs real logits")

    # One source per feature: its effect is the sum of the effects of its writes W_dec_{s}[j, t - s] (from
    # the file) into each layer t >= s, each injected alone; the writes into later layers reach the top
    # layer's targets (direct cross-layer edges).
    z = lambda: torch.zeros(1, T, d, dtype=DT)  # noqa: E731
    via_later = 0.0
    scale = float(base.abs().max()) + float(eff.abs().sum(0).max())
    feats = [(i, s_) for i, s_ in enumerate(sources) if s_["kind"] == "feature" and s_["layer"] < nL - 1]
    for i, s_ in feats[::max(1, len(feats) // 12)]:
        src, p, j = s_["layer"], s_["position"], s_["feature"]
        a = R["layers"][src]["acts"][p, j]
        total = torch.zeros(len(targets), dtype=DT)
        for t in range(src, nL):
            e = z()
            e[0, p] = -a * raw[f"W_dec_{src}"][j, t - src].to(DT)
            with torch.no_grad():
                vals, _ = go.run_frozen(M, R, tcs, targets, go.ones_coefficients(M, R, 1), {("mlp", t): e})
            part = base - vals[0]
            total = total + part
            if t > src:
                for jj, tg in enumerate(targets):
                    if tg["kind"] == "feature" and tg["layer"] > t:
                        via_later = max(via_later, abs(float(part[jj])))
        close(eff[i], total, 1e-10, f"{name}: feature {s_} effect vs the sum of its per-layer writes")
    if nL >= 3:  # (with 2 layers, a write into layer 1 reaches logits only)
        check(via_later > 1e-6 * scale, f"{name}: no cross-layer write reaches a later feature target ({via_later:.3g})")

    # A CLT whose decoders only write into their own layer == the same per-layer transcoders, exactly.
    if arch != "batchtopk":
        g2 = torch.Generator().manual_seed(7)
        p0 = os.path.join(mdir, "clt_own.safetensors")
        raw0 = clt_file(p0, g2, nL, d, arch, skip, hook, cross=False)
        tcs0 = go.load_cross_layer(p0, nL, d, M["parallel"], lambda x: x)
        files = {}
        for l in range(nL):
            pl = {"W_enc": raw0["W_enc"][l], "b_enc": raw0["b_enc"][l], "W_dec": raw0[f"W_dec_{l}"][:, 0].contiguous(),
                  "b_dec_out": raw0["b_dec"][l]}
            if skip:
                pl["W_skip"] = raw0["W_skip"][l]
            if "threshold" in raw0:
                pl["threshold"] = raw0["threshold"][l]
            hin, hout = HOOKS[hook]
            meta = {"arch": arch, "hook_in": f"blocks.{l}.{hin}", "hook_out": f"blocks.{l}.{hout}"}
            if arch == "topk":
                meta["k"] = "6"
            files[l] = os.path.join(mdir, f"own_{l}.safetensors")
            save_file({n: v.contiguous() for n, v in pl.items()}, files[l], metadata=meta)
        tcs1 = {l: go.load_transcoder(f, l, d, M["parallel"], lambda x: x) for l, f in files.items()}
        R1 = go.real_forward(M, tokens, tcs1)
        tg = pick_targets(M, R1, tcs1, g2)
        src = go.all_sources(M, R1)
        perts = src[::5] + [dict(src[0], scale=-1.5)]
        o0 = go.compute(M, tcs0, tokens, perts, tg)
        o1 = go.compute(M, tcs1, tokens, perts, tg)
        for key in ("effects", "effects_direct", "target_values", "logits", "real_logits", "sum_check",
                    "active_features", "activation_values", "errors", "mlp_out", "n_sources", "_all_effects"):
            check(torch.equal(o0[key], o1[key]), f"{name}: own-layer CLT vs per-layer transcoders differ in {key} "
                  f"(relative {rel_err(o0[key], o1[key]):.3g})")
    return mdir, path, tokens


def test_clt_errors(tmp, gen, mdir, path, tokens, tc_files):
    """Bad cross-layer specs and files are refused with a message (on a 3-layer model)."""
    raw = load_file(path)
    meta = go.read_metadata(path)
    nL, F = raw["W_enc"].shape[0], raw["W_enc"].shape[2]

    def variant(tag, tensors, **m):
        p = os.path.join(tmp, f"clt_bad_{tag}.safetensors")
        save_file(tensors, p, metadata={**meta, **m})
        return p

    def run(spec):
        p = os.path.join(tmp, "bad_clt.json")
        json.dump(spec, open(p, "w"))
        r = subprocess.run([sys.executable, os.path.join(HERE, "graph_oracle.py"), p, os.path.join(tmp, "bad.out")],
                           capture_output=True, text=True)
        return r.returncode, r.stderr

    drop = lambda *names: {n: v for n, v in raw.items() if n not in names}  # noqa: E731
    base = {"model_dir": mdir, "tokens": tokens, "processing": "none", "cross_layer": path,
            "perturbations": [], "targets": []}
    thr = 0.2 + torch.zeros(nL, F)
    cases = [
        (dict(base, transcoders={"0": tc_files[0]}), "not both"),
        (dict(base, cross_layer=variant("nodec", drop("W_dec_1"))), "missing tensor W_dec_1"),
        (dict(base, cross_layer=variant("shape", dict(raw, W_dec_1=raw["W_dec_1"][:, :1].contiguous()))),
         "W_dec_1 has shape"),
        (dict(base, cross_layer=variant("extra", dict(raw, **{f"W_dec_{nL}": raw["W_dec_0"][:, :1].contiguous()}))),
         "unknown tensors"),
        (dict(base, cross_layer=variant("L", {n: (v[:2] if n in ("W_enc", "b_enc", "b_dec") else v)
                                               for n, v in drop(f"W_dec_{nL - 1}").items()})), "covers 2 layers"),
        (dict(base, cross_layer=variant("jr", dict(raw), arch="jumprelu")), "needs a threshold"),
        (dict(base, cross_layer=variant("btk", dict(raw), arch="batchtopk")), "needs a threshold"),
        (dict(base, cross_layer=variant("thr", dict(raw, threshold=thr), arch="relu")), "threshold given"),
        (dict(base, cross_layer=variant("k", dict(raw), arch="topk")), "topk needs k"),
        (dict(base, cross_layer=variant("arch", dict(raw), arch="gated")), "unknown arch"),
        (dict(base, cross_layer=variant("tmpl", dict(raw), hook_in="blocks.0.hook_resid_pre")), "{layer}"),
        (dict(base, cross_layer=variant("hook", dict(raw), hook_out="blocks.{layer}.hook_attn_out")), "hook_out"),
        (dict(base, perturbations=[{"kind": "feature", "layer": 2, "position": 0, "feature": F}]), f"feature = {F}"),
        (dict(base, targets=[{"kind": "feature", "layer": nL, "position": 0, "feature": 0}]), "layer"),
    ]
    for spec, word in cases:
        rc, err = run(spec)
        check(rc != 0 and word in err, f"CLT error path {word!r}: rc {rc}, {err[-300:]}")
    # An inactive feature is a source with no effect, as for per-layer transcoders.
    M = go.load_model(mdir)
    tcs = go.load_cross_layer(path, nL, M["d"], M["parallel"], lambda x: x)
    R = go.real_forward(M, tokens, tcs)
    p_, j = (R["layers"][0]["acts"] == 0).nonzero()[0].tolist()
    o = go.compute(M, tcs, tokens, [{"kind": "feature", "layer": 0, "position": p_, "feature": j}],
                   [{"kind": "logit", "position": T - 1, "token": 3}, {"kind": "feature", "layer": 2, "position": T - 1,
                                                                       "feature": 0}], with_sum_check=False)
    check(float(o["effects"].abs().max()) == 0.0 and float(o["effects_direct"].abs().max()) == 0.0,
          "CLT: an inactive feature has an effect")


def test_errors(tmp, gen, mdir, files, tokens):
    """Bad specs are refused with a message."""
    def run(spec):
        p = os.path.join(tmp, "bad.json")
        json.dump(spec, open(p, "w"))
        r = subprocess.run([sys.executable, os.path.join(HERE, "graph_oracle.py"), p, os.path.join(tmp, "bad.out")],
                           capture_output=True, text=True)
        return r.returncode, r.stderr

    base = {"model_dir": mdir, "tokens": tokens, "processing": "none",
            "transcoders": {str(l): p for l, p in files.items()}, "perturbations": [], "targets": []}
    cases = [
        (dict(base, processing="transformerlens"), "processing"),
        (dict(base, perturbations=[{"kind": "positional", "position": 0}]), "positional"),
        (dict(base, perturbations=[{"kind": "feature", "layer": 5, "position": 0, "feature": 0}]), "layer"),
        (dict(base, targets=[{"kind": "logit", "position": T, "token": 0}]), "position"),
        (dict(base, transcoders={"1": files[0]}), "hook_in"),
    ]
    for spec, word in cases:
        rc, err = run(spec)
        check(rc != 0 and word in err, f"error path {word!r}: rc {rc}, {err[-300:]}")


def main():
    start = time.time()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2024)
    with tempfile.TemporaryDirectory() as tmp:
        kept = {}
        for name, build, plan in CASES:
            kept[name] = test_case(tmp, gen, name, build, plan)
        test_errors(tmp, gen, *kept["llama"])
        clt = {}
        for name, build, arch, skip, hook in CLT_CASES:
            clt[name] = test_clt_case(tmp, gen, name, build, arch, skip, hook)
        test_clt_errors(tmp, gen, *clt["clt-gpt2"], kept["gpt2"][1])
    print(f"{len(FAILURES)} failure(s) in {time.time() - start:.1f} s")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
