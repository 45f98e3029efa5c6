"""Fixtures and a float64 reference for target-indexed cross-layer transcoder checkpoints, the layout
of Goreg12345/crosslayer-transcoder (a PyTorch Lightning CLT trainer).

Written from that project's published module definitions (crosslayer_transcoder/model/clt.py,
standardize.py, jumprelu.py, topk.py), not from this library's code. A saved model is a folder with
`config.yaml` (yaml.dump of {"model": to_config()}, keys sorted, plus `is_folded`) and
`checkpoint.safetensors` (the module's state_dict):

    encoder.W [L, d, F], encoder.b [L, F]             pre_l = x_l W[l] + b[l]
    decoder.W_{t} [t + 1, F, d] (CrosslayerDecoder)   y_t = sum_{s <= t} f_s W_{t}[s] + b[t]   (indexed by TARGET layer)
      or decoder.W [L, F, d] (Decoder: per-layer)     y_t = f_t W[t] + b[t]
    decoder.b [L, d]
    nonlinearity.theta [1, L, F], .bandwidth []       JumpReLU: pre * (pre > theta and pre > 0)
    nonlinearity.threshold [1] (BatchTopK) or [L] (PerLayerBatchTopK): outside training pre * (pre > max(0, threshold))
    PerLayerTopK (k in config): per row, the k largest pre, relu'd
    input_standardizer.mean / .std  ([L, d] Dimensionwise, [L] Layerwise):   x <- (x - mean) / std
    output_standardizer.mean / .std ([L, d] / [L]):                          y <- y * std + mean
With --folded, the standardizers are folded into the weights as the project's `fold()` does
(W_enc / std_in, b_enc - mean_in W_enc'; W_{t} * std_out[t], b * std_out + mean_out) and saved as null.

    usage: crosslayer_transcoder_reference.py OUT_DIR SEED L D F N
               [--nonlinearity relu|jumprelu|topk|batchtopk|perlayerbatchtopk] [--k K]
               [--standardizer none|dimensionwise|layerwise] [--folded] [--decoder crosslayer|perlayer]
               [--dtype float32|float16]
Writes OUT_DIR/config.yaml, OUT_DIR/checkpoint.safetensors and OUT_DIR.reference.safetensors
(x [N, L, d] float32 inputs, y [N, L, d] float32 outputs of the unfolded model computed in float64
from the weights exactly as stored, i.e. after rounding to --dtype).
"""

import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from safetensors_io import save_file  # noqa: E402

DT = torch.float64
PKG = "crosslayer_transcoder.model"


def yaml_dump(value, indent=0):
    """yaml.dump's default block style for the dicts/ints/floats/strings/None a config holds (keys sorted)."""
    pad = "  " * indent
    lines = []
    for key in sorted(value):
        v = value[key]
        if isinstance(v, dict) and v:
            lines.append(f"{pad}{key}:")
            lines.append(yaml_dump(v, indent + 1))
        elif isinstance(v, dict):
            lines.append(f"{pad}{key}: {{}}")
        elif v is None:
            lines.append(f"{pad}{key}: null")
        elif isinstance(v, bool):
            lines.append(f"{pad}{key}: {'true' if v else 'false'}")
        else:
            lines.append(f"{pad}{key}: {v}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    for name in ("seed", "L", "d", "F", "N"):
        ap.add_argument(name, type=int)
    ap.add_argument("--nonlinearity", default="relu", choices=["relu", "jumprelu", "topk", "batchtopk", "perlayerbatchtopk"])
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--standardizer", default="none", choices=["none", "dimensionwise", "layerwise"])
    ap.add_argument("--folded", action="store_true")
    ap.add_argument("--decoder", default="crosslayer", choices=["crosslayer", "perlayer"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    a = ap.parse_args()
    L, d, F, N = a.L, a.d, a.F, a.N
    g = torch.Generator().manual_seed(a.seed)
    randn = lambda *shape, s=1.0, m=0.0: torch.randn(*shape, generator=g, dtype=DT) * s + m  # noqa: E731
    store = getattr(torch, a.dtype)

    def rounded(t):
        return t.to(store).to(DT)

    # Parameters of the unfolded model (after rounding to the stored dtype).
    W_enc = rounded(randn(L, d, F, s=0.4))
    b_enc = rounded(randn(L, F, s=0.2))
    if a.decoder == "crosslayer":
        W_dec = [rounded(randn(t + 1, F, d, s=0.3)) for t in range(L)]
    else:
        W_dec = rounded(randn(L, F, d, s=0.3))
    b_dec = rounded(randn(L, d, s=0.1))
    nl_state = {}
    if a.nonlinearity == "jumprelu":
        # Some thresholds negative: the project's mask is (pre > theta) and (pre > 0).
        nl_state["theta"] = rounded(randn(1, L, F, s=0.3, m=0.1))
        nl_state["bandwidth"] = torch.tensor(0.01, dtype=DT)
    elif a.nonlinearity == "batchtopk":
        nl_state["threshold"] = rounded(torch.tensor([0.35], dtype=DT))
    elif a.nonlinearity == "perlayerbatchtopk":
        nl_state["threshold"] = rounded(randn(L, s=0.3, m=0.2))
        nl_state["threshold"][0] = -0.25  # below 0: max(0, threshold) gates at 0
    std_shape = (L, d) if a.standardizer == "dimensionwise" else (L,)
    if a.standardizer != "none":
        mean_in = rounded(randn(*std_shape, s=0.5))
        std_in = rounded(randn(*std_shape, s=0.3).abs() + 0.5)
        mean_out = rounded(randn(*std_shape, s=0.5))
        std_out = rounded(randn(*std_shape, s=0.3).abs() + 0.5)

    def per_layer(t, l):
        # Dimensionwise: [d] for layer l; Layerwise: a scalar.
        return t[l]

    # The reference forward (inference: the project's ReplacementModel flow, layer by layer).
    x = randn(N, L, d).to(torch.float32).to(DT)
    f = torch.zeros(N, L, F, dtype=DT)
    for l in range(L):
        xl = x[:, l]
        if a.standardizer != "none":
            xl = (xl - per_layer(mean_in, l)) / per_layer(std_in, l)
        pre = xl @ W_enc[l] + b_enc[l]
        if a.nonlinearity == "relu":
            f[:, l] = torch.relu(pre)
        elif a.nonlinearity == "jumprelu":
            f[:, l] = pre * ((pre > nl_state["theta"][0, l]) & (pre > 0))
        elif a.nonlinearity == "topk":
            vals, idx = pre.topk(a.k, dim=-1)
            f[:, l] = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        else:
            thr = nl_state["threshold"][0 if a.nonlinearity == "batchtopk" else l].item()
            f[:, l] = torch.where(pre > max(0.0, thr), pre, torch.zeros_like(pre))
    y = torch.zeros(N, L, d, dtype=DT)
    for t in range(L):
        if a.decoder == "crosslayer":
            yt = sum(f[:, s] @ W_dec[t][s] for s in range(t + 1)) + b_dec[t]
        else:
            yt = f[:, t] @ W_dec[t] + b_dec[t]
        if a.standardizer != "none":
            yt = yt * per_layer(std_out, t) + per_layer(mean_out, t)
        y[:, t] = yt

    # What is saved: the project's fold() when --folded.
    enc_W, enc_b, dec_b = W_enc.clone(), b_enc.clone(), b_dec.clone()
    dec_W = [w.clone() for w in W_dec] if a.decoder == "crosslayer" else W_dec.clone()
    if a.folded and a.standardizer != "none":
        s_in = std_in if a.standardizer == "dimensionwise" else std_in[:, None].expand(L, d)
        m_in = mean_in if a.standardizer == "dimensionwise" else mean_in[:, None].expand(L, d)
        s_out = std_out if a.standardizer == "dimensionwise" else std_out[:, None].expand(L, d)
        m_out = mean_out if a.standardizer == "dimensionwise" else mean_out[:, None].expand(L, d)
        enc_W = W_enc / s_in[:, :, None]
        enc_b = b_enc - torch.einsum("ld,ldf->lf", m_in, enc_W)
        dec_b = b_dec * s_out + m_out
        if a.decoder == "crosslayer":
            dec_W = [W_dec[t] * s_out[t] for t in range(L)]
        else:
            dec_W = W_dec * s_out[:, None, :]
    state = {"encoder.W": enc_W, "encoder.b": enc_b, "decoder.b": dec_b}
    if a.decoder == "crosslayer":
        for t in range(L):
            state[f"decoder.W_{t}"] = dec_W[t]
    else:
        state["decoder.W"] = dec_W
    for k, v in nl_state.items():
        state[f"nonlinearity.{k}"] = v
    standardized = a.standardizer != "none" and not a.folded
    if standardized:
        state.update({"input_standardizer.mean": mean_in, "input_standardizer.std": std_in,
                      "output_standardizer.mean": mean_out, "output_standardizer.std": std_out})
    # bandwidth is a 0-d float buffer in the project; everything else in the stored dtype.
    state = {k: (v.to(torch.float32) if k.endswith("bandwidth") else v.to(store)).contiguous() for k, v in state.items()}

    def cls(name, **init_args):
        return {"class_path": f"{PKG}.{name}", "init_args": init_args}

    nonlinearity = {
        "relu": cls("jumprelu.ReLU"),
        "jumprelu": cls("jumprelu.JumpReLU", theta=0.03, bandwidth=0.01, n_layers=L, d_features=F),
        "topk": cls("topk.PerLayerTopK", k=a.k, e=None, n_layers=L),
        "batchtopk": cls("topk.BatchTopK", k=a.k, e=0.01, n_layers=L),
        "perlayerbatchtopk": cls("topk.PerLayerBatchTopK", k=a.k, e=0.01, n_layers=L),
    }[a.nonlinearity]
    kind = "Dimensionwise" if a.standardizer == "dimensionwise" else "Layerwise"
    std_args = {"n_layers": L, "activation_dim": d} if a.standardizer == "dimensionwise" else {"n_layers": L, "n_exclude": 0}
    config = cls(
        "clt.CrossLayerTranscoder",
        encoder=cls("clt.Encoder", d_acts=d, d_features=F, n_layers=L),
        decoder=cls("clt.CrosslayerDecoder" if a.decoder == "crosslayer" else "clt.Decoder", d_acts=d, d_features=F, n_layers=L),
        nonlinearity=nonlinearity,
        input_standardizer=cls(f"standardize.{kind}InputStandardizer", **std_args) if standardized else None,
        output_standardizer=cls(f"standardize.{kind}OutputStandardizer", **std_args) if standardized else None,
    )
    config["is_folded"] = bool(a.folded)
    os.makedirs(a.out_dir, exist_ok=True)
    save_file(state, os.path.join(a.out_dir, "checkpoint.safetensors"))
    with open(os.path.join(a.out_dir, "config.yaml"), "w") as fh:
        fh.write(yaml_dump({"model": config}) + "\n")
    save_file({"x": x.to(torch.float32), "y": y.to(torch.float32)}, a.out_dir.rstrip("/") + ".reference.safetensors")


if __name__ == "__main__":
    main()
