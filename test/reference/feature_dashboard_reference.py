"""Brute-force numpy reference for feature dashboards of SAE / transcoder features.

These are per-feature corpus statistics like those on Neuronpedia / circuit-tracer feature cards.
The code follows the definitions below directly and does not depend on the project's own
implementation, so the test suite can compare against it.

Usage:
    /usr/bin/python3 test/reference/feature_dashboard_reference.py IN.safetensors OPTIONS.json OUT.safetensors

IN.safetensors (any floating dtype, float32 expected; converted to float64 here):
    acts_{l}   [N, T, F_l]  for every layer l in OPTIONS.layers: feature activations of N context
                            rows of T tokens each (row r is one context); finite and >= 0, 0 = inactive.
                            N and T are the same for every layer.
    W_dec_{l}  [F_l, d]     optional: decoder rows, for logit effects (needs W_U).
    W_U        [d, V]       optional: unembedding, for logit effects.
    W_enc_{l}  [d, F_l]     for de-embeddings of layer l (required for the layers in OPTIONS.deembedding).
    W_E        [V, d]       embedding, for de-embeddings (required when OPTIONS.deembedding is non-empty).
    {l} is the layer number in decimal without leading zeros. All weight tensors are finite; d and V
    must agree between every tensor that carries them. Tensors of layers not in OPTIONS.layers, and
    W_enc_{l} of layers not in OPTIONS.deembedding, are ignored; any other tensor name is an error.

OPTIONS.json: {"layers": [distinct ints >= 0, non-empty],
               "k": K (int >= 1, top examples per feature),
               "bins": NB (int, a power of two >= 1, histogram bins),
               "logits": k_logits (int >= 0, at most V; default 0 = no logit effects / de-embeddings),
               "deembedding": [layers of OPTIONS.layers to compute de-embeddings for; default []]}
    Unknown keys are an error. De-embeddings use k_logits too, so a non-empty "deembedding" needs
    "logits" > 0. Logit effects are computed for every layer l that has W_dec_{l} when "logits" > 0;
    W_dec_{l} without W_U is then an error.

Definitions, per layer l and feature f (all in float64; acts = acts_{l}[:, :, f]):
    s[r]          = max_t acts[r, t]; row r is "activating" when s[r] > 0.
    count         = #{(r, t): acts[r, t] > 0}  (frequency = count / (N*T) is not written out).
    act_max       = max_{r,t} acts[r, t]  (0 when never active).
    act_min       = min of the entries > 0  (0 when never active).
    top examples  = the activating rows with the K largest s[r], by s descending, ties broken by the
                    lower row index; fewer than K when fewer rows activate, padded with row -1,
                    score 0 and argpos -1. argpos = argmax_t acts[r, t], the first t on ties.
    histogram     = over the entries > 0 only: R = 2^ceil(log2(act_max)) (computed exactly: act_max
                    itself when it is a power of two, e may be negative); the bin of v is
                    floor(v / R * NB) clamped to NB - 1 (so v == R goes into the last bin). Counts are
                    float64. R = 0 and all-zero counts for never-active features.
    logit effects = e = W_dec_{l}[f] @ W_U (length V): the k_logits largest (indices, values; by value
                    descending) and the k_logits smallest (by value ascending, most negative first).
    de-embedding  = g = W_E @ W_enc_{l}[:, f] (length V): the k_logits largest (descending) and the
                    k_logits smallest (ascending).
    Ties in the logit / de-embedding rankings go to the lower vocabulary index. (The products are
    float64 BLAS sums, so a comparison with other code should allow for rounding near ties.)

OUT.safetensors, per layer l (F = F_l):
    count_{l} int64 [F], act_max_{l} float64 [F], act_min_{l} float64 [F], hist_{l} float64 [F, NB],
    hist_range_{l} float64 [F], top_rows_{l} int64 [F, K], top_scores_{l} float64 [F, K],
    top_argpos_{l} int64 [F, K], row_scores_{l} float64 [N, F] (s for every row);
    when logit effects are computed for l: logit_top_idx_{l} int64 [F, k_logits],
    logit_top_val_{l} float64 [F, k_logits], logit_bottom_idx_{l}, logit_bottom_val_{l} (same);
    for l in OPTIONS.deembedding: deemb_top_idx_{l}, deemb_top_val_{l}, deemb_bottom_idx_{l},
    deemb_bottom_val_{l} (same dtypes and shapes).

Invalid inputs raise ValueError naming the tensor or option (the CLI prints it and exits with status 1).
"""

import json
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import load_file, save_file  # noqa: E402

OPTION_KEYS = ("layers", "k", "bins", "logits", "deembedding")
NAME_PATTERN = re.compile(r"^(acts|W_dec|W_enc)_(0|[1-9][0-9]*)$")
GLOBAL_NAMES = ("W_U", "W_E")


# ---------------------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------------------


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_options(options):
    """Return a normalised copy of OPTIONS; raise ValueError on anything invalid."""
    if not isinstance(options, dict):
        raise ValueError("OPTIONS must be a JSON object")
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ValueError(f"OPTIONS has unknown keys {unknown} (allowed: {list(OPTION_KEYS)})")
    for key in ("layers", "k", "bins"):
        if key not in options:
            raise ValueError(f"OPTIONS.{key} is missing")
    layers = options["layers"]
    if not isinstance(layers, list) or not layers or not all(is_int(l) and l >= 0 for l in layers):
        raise ValueError(f"OPTIONS.layers must be a non-empty list of ints >= 0, got {layers!r}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"OPTIONS.layers has duplicates: {layers}")
    k = options["k"]
    if not is_int(k) or k < 1:
        raise ValueError(f"OPTIONS.k must be an int >= 1, got {k!r}")
    bins = options["bins"]
    if not is_int(bins) or bins < 1 or bins & (bins - 1):
        raise ValueError(f"OPTIONS.bins must be a power of two >= 1, got {bins!r}")
    logits = options.get("logits", 0)
    if not is_int(logits) or logits < 0:
        raise ValueError(f"OPTIONS.logits must be an int >= 0, got {logits!r}")
    deemb = options.get("deembedding", [])
    if not isinstance(deemb, list) or not all(is_int(l) for l in deemb):
        raise ValueError(f"OPTIONS.deembedding must be a list of ints, got {deemb!r}")
    if len(set(deemb)) != len(deemb):
        raise ValueError(f"OPTIONS.deembedding has duplicates: {deemb}")
    stray = [l for l in deemb if l not in layers]
    if stray:
        raise ValueError(f"OPTIONS.deembedding layers {stray} are not in OPTIONS.layers {layers}")
    if deemb and logits == 0:
        raise ValueError("OPTIONS.deembedding is non-empty but OPTIONS.logits is 0 (it sets how many tokens to keep)")
    return {"layers": list(layers), "k": k, "bins": bins, "logits": logits, "deembedding": list(deemb)}


def to_float64(name, value):
    """A float64 numpy copy of a torch tensor or numpy array; rejects non-float dtypes and NaN / inf."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise ValueError(f"tensor {name!r} has dtype {value.dtype}, expected a floating dtype")
        array = value.detach().cpu().to(torch.float64).numpy().copy()
    else:
        array = np.asarray(value)
        if array.dtype.kind != "f":
            raise ValueError(f"tensor {name!r} has dtype {array.dtype}, expected a floating dtype")
        array = array.astype(np.float64, copy=True)
    if np.isnan(array).any():
        raise ValueError(f"tensor {name!r} contains NaN")
    if np.isinf(array).any():
        raise ValueError(f"tensor {name!r} contains inf")
    return array


def check_shape(name, array, expected):
    """expected: tuple of ints or None (None = any size, but the rank must match)."""
    ok = array.ndim == len(expected) and all(e is None or s == e for s, e in zip(array.shape, expected))
    if not ok:
        shown = ["*" if e is None else e for e in expected]
        raise ValueError(f"tensor {name!r} has shape {list(array.shape)}, expected {shown}")


def check_inputs(tensors, options):
    """Validate IN against OPTIONS; return {name: float64 array} for the tensors that are used."""
    for name in tensors:
        if name not in GLOBAL_NAMES and not NAME_PATTERN.match(name):
            raise ValueError(f"unknown tensor {name!r} (expected acts_<l>, W_dec_<l>, W_enc_<l>, W_U, W_E)")
    layers, logits, deemb = options["layers"], options["logits"], options["deembedding"]
    used = {}
    N = T = None
    for l in layers:
        name = f"acts_{l}"
        if name not in tensors:
            raise ValueError(f"tensor {name!r} is missing (layer {l} is in OPTIONS.layers)")
        acts = to_float64(name, tensors[name])
        if acts.ndim != 3:
            raise ValueError(f"tensor {name!r} has shape {list(acts.shape)}, expected [N, T, F]")
        if N is None:
            N, T = acts.shape[:2]
        check_shape(name, acts, (N, T, None))
        if 0 in acts.shape:
            raise ValueError(f"tensor {name!r} has an empty dimension: shape {list(acts.shape)}")
        if (acts < 0).any():
            where = np.unravel_index(np.argmin(acts), acts.shape)
            raise ValueError(f"tensor {name!r} has negative activations (min {acts.min()!r} at {list(map(int, where))})")
        used[name] = acts

    d = V = None

    def match_dim(value, current, what, name):
        if current is not None and value != current:
            raise ValueError(f"tensor {name!r}: {what} = {value} does not match {what} = {current} of the other weights")
        return value

    logit_layers = []
    if logits > 0:
        logit_layers = [l for l in layers if f"W_dec_{l}" in tensors]
        if logit_layers and "W_U" not in tensors:
            raise ValueError(f"tensor 'W_U' is missing (W_dec_{logit_layers[0]} is given and OPTIONS.logits > 0)")
        if logit_layers:
            W_U = to_float64("W_U", tensors["W_U"])
            check_shape("W_U", W_U, (None, None))
            d, V = W_U.shape
            used["W_U"] = W_U
        for l in logit_layers:
            name = f"W_dec_{l}"
            W = to_float64(name, tensors[name])
            check_shape(name, W, (used[f"acts_{l}"].shape[2], d))
            used[name] = W
    if deemb:
        if "W_E" not in tensors:
            raise ValueError("tensor 'W_E' is missing (OPTIONS.deembedding is non-empty)")
        W_E = to_float64("W_E", tensors["W_E"])
        check_shape("W_E", W_E, (None, None))
        V = match_dim(W_E.shape[0], V, "V", "W_E")
        d = match_dim(W_E.shape[1], d, "d", "W_E")
        used["W_E"] = W_E
        for l in deemb:
            name = f"W_enc_{l}"
            if name not in tensors:
                raise ValueError(f"tensor {name!r} is missing (layer {l} is in OPTIONS.deembedding)")
            W = to_float64(name, tensors[name])
            check_shape(name, W, (d, used[f"acts_{l}"].shape[2]))
            used[name] = W
    if logits > 0 and (logit_layers or deemb) and logits > V:
        raise ValueError(f"OPTIONS.logits = {logits} exceeds the vocabulary size V = {V}")
    return used, logit_layers


# ---------------------------------------------------------------------------------------
# The statistics.
# ---------------------------------------------------------------------------------------


def hist_range(act_max):
    """R = 2^ceil(log2(act_max)) exactly, per feature; 0 where act_max == 0."""
    mantissa, exponent = np.frexp(act_max)  # act_max = mantissa * 2^exponent, 0.5 <= mantissa < 1
    R = np.where(mantissa == 0.5, act_max, np.ldexp(1.0, exponent))
    return np.where(act_max > 0, R, 0.0)


def layer_dashboard(acts, K, NB):
    """acts [N, T, F] float64 -> dict of the per-layer outputs (suffix-free names)."""
    N, T, F = acts.shape
    active = acts > 0
    count = active.sum(axis=(0, 1)).astype(np.int64)
    act_max = acts.max(axis=(0, 1)) + 0.0  # + 0.0 turns -0.0 into 0.0
    act_min = np.where(active, acts, np.inf).min(axis=(0, 1))
    act_min = np.where(count > 0, act_min, 0.0)

    # Histogram: bins of width R / NB over the positive entries, R a power of two.
    R = hist_range(act_max)
    _, _, feature = np.nonzero(active)
    values = acts[active]  # same C order as np.nonzero
    bins = np.minimum(np.floor(values / R[feature] * NB).astype(np.int64), NB - 1)
    hist = np.bincount(feature * NB + bins, minlength=F * NB).reshape(F, NB).astype(np.float64)

    # Top examples: rows by score descending, stable (ties -> lower row), activating rows only.
    scores = acts.max(axis=1) + 0.0  # [N, F]
    argpos = acts.argmax(axis=1)  # [N, F], first maximum
    order = np.argsort(-scores, axis=0, kind="stable")[:K]  # [min(N, K), F]
    features = np.arange(F)[None, :]
    picked = scores[order, features]
    keep = picked > 0
    top_rows = np.full((F, K), -1, dtype=np.int64)
    top_scores = np.zeros((F, K))
    top_argpos = np.full((F, K), -1, dtype=np.int64)
    n = order.shape[0]
    top_rows[:, :n] = np.where(keep, order, -1).T
    top_scores[:, :n] = np.where(keep, picked, 0.0).T
    top_argpos[:, :n] = np.where(keep, argpos[order, features], -1).T
    return {"count": count, "act_max": act_max, "act_min": act_min, "hist": hist, "hist_range": R,
            "top_rows": top_rows, "top_scores": top_scores, "top_argpos": top_argpos, "row_scores": scores}


def top_bottom(M, k):
    """M [F, V] -> (top_idx, top_val, bottom_idx, bottom_val), each [F, k]; ties -> lower index."""
    top = np.argsort(-M, axis=1, kind="stable")[:, :k]
    bottom = np.argsort(M, axis=1, kind="stable")[:, :k]
    return (top.astype(np.int64), np.take_along_axis(M, top, axis=1),
            bottom.astype(np.int64), np.take_along_axis(M, bottom, axis=1))


def compute(tensors, options):
    """tensors: {name: torch tensor or numpy array}; options: the parsed OPTIONS.json.
    Returns {output name: numpy array} (int64 / float64)."""
    options = check_options(options)
    used, logit_layers = check_inputs(tensors, options)
    K, NB, k = options["k"], options["bins"], options["logits"]
    out = {}
    for l in options["layers"]:
        for key, value in layer_dashboard(used[f"acts_{l}"], K, NB).items():
            out[f"{key}_{l}"] = value
        if l in logit_layers:
            effects = used[f"W_dec_{l}"] @ used["W_U"]  # [F, V]
            for key, value in zip(("top_idx", "top_val", "bottom_idx", "bottom_val"), top_bottom(effects, k)):
                out[f"logit_{key}_{l}"] = value
        if l in options["deembedding"]:
            deemb = (used["W_E"] @ used[f"W_enc_{l}"]).T  # [F, V]
            for key, value in zip(("top_idx", "top_val", "bottom_idx", "bottom_val"), top_bottom(deemb, k)):
                out[f"deemb_{key}_{l}"] = value
    return out


def run(in_path, options_path, out_path):
    with open(options_path) as f:
        try:
            options = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{options_path}: not valid JSON ({exc})") from None
    out = compute(load_file(in_path), options)
    save_file({name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in out.items()}, out_path)


def main(argv):
    if len(argv) != 4:
        sys.exit(f"usage: {argv[0]} IN.safetensors OPTIONS.json OUT.safetensors")
    try:
        run(*argv[1:])
    except ValueError as exc:
        sys.exit(f"{os.path.basename(argv[0])}: error: {exc}")


if __name__ == "__main__":
    main(sys.argv)
