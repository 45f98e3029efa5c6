"""Plain-PyTorch float64 reference for a cross-layer transcoder (CLT): forward, losses, gradients.

Written from the mathematical definitions below (row-vector convention, `x @ W`), independently
of the project's own code, so the test suite can compare against it. Everything is computed in
float64 with torch autograd; the self-check is check_clt_reference.py next to this file.

Usage:
    /usr/bin/python3 test/reference/clt_reference.py IN.safetensors OPTIONS.json OUT.safetensors

Shapes: L layers (source layers s = 0..L-1), input width d_in, output width d_out, F features
per source layer, N rows.

IN.safetensors (any floating dtype; every tensor is cast to float64):
    W_enc [L, d_in, F], b_enc [L, F]
    W_dec_{s} for s = 0..L-1, shape [F, L - s, d_out]; W_dec_{s}[:, t - s, :] decodes source
        layer s's features into target layer t (t >= s)
    b_dec [L, d_out]                  output bias of each target layer
    W_skip [L, d_in, d_out]           present iff options.skip is true
    threshold [L, F]                  jumprelu only (and required there); every entry > 0
    x [N, L, d_in]                    x[n, s] is the input of source layer s
    y [N, L, d_out]                   targets: the MLP output of each layer
    dead [L, F] (uint8 or bool, 0/1)  optional; 1 = feature counted dead (used by AuxK only).
                                      Required when auxkAlpha > 0.
Any other tensor name is an error.

OPTIONS.json (unknown keys are an error; keys irrelevant to the chosen arch/sparsity are ignored):
    arch                "relu" | "jumprelu" | "topk" | "batchtopk"       (required)
    k                   positive int <= F                                 (topk, batchtopk)
    bandwidth           eps > 0                                           (jumprelu)
    skip                bool, default false
    reconstruction      "fvu" (default) | "paper"
    sparsity            "none" (default) | "l1" | "tanh" | "l0" (l0: jumprelu only)
    sparsityCoefficient lambda >= 0 (required unless sparsity is "none")
    tanhScale           c > 0 (required for tanh)
    preactCoefficient   lambda_p >= 0, default 0
    auxkAlpha           alpha >= 0, default 0; > 0 only for topk / batchtopk
    kAux                positive int (required when auxkAlpha > 0)

Forward:
    pre[n, s, :] = x[n, s, :] @ W_enc[s] + b_enc[s]
    relu:      f = relu(pre)
    jumprelu:  f = pre * H(pre - theta[s]),  H(z) = 1 if z > 0 else 0. Straight-through
               estimator (Rajamanoharan et al. 2024), rectangle kernel K(u) = 1 if |u| < 1/2
               else 0, eps = bandwidth: df/dpre = H(pre - theta),
               df/dtheta = -(theta / eps) K((pre - theta) / eps), summed over rows.
    topk:      per row n and source layer s, keep the k largest pre[n, s, :], relu them, zero
               the rest; gradient flows into the kept entries only.
    batchtopk: per source layer s, over the whole N x F matrix relu(pre[:, s, :]), keep the
               N * k largest entries, zero the rest.
    y_hat[n, t, :] = sum_{s <= t} f[n, s, :] @ W_dec_{s}[:, t - s, :] + b_dec[t]
                     (+ x[n, t, :] @ W_skip[t] when skip)
    omega[s, j] = sqrt( sum_{t >= s} ||W_dec_{s}[j, t - s, :]||^2 )   (gradients flow through it)

Loss terms (scalars):
    reconstruction
      fvu:   sum_t [ sum_n ||y[n,t] - y_hat[n,t]||^2 / sum_n ||y[n,t] - mean_n y[:,t]||^2 ]
      paper: sum_t mean_{n,i} (y_hat[n,t,i] - y[n,t,i])^2 / ||y[n,t]||   (row L2 norm, not squared)
    sparsity
      none:  0
      l1:    lambda (1/N) sum_n sum_{s,j} f[n,s,j] omega[s,j]
      tanh:  lambda (1/N) sum_n sum_{s,j} tanh(c f[n,s,j] omega[s,j])
      l0:    lambda (1/N) sum_n sum_{s,j} H(pre[n,s,j] - theta[s,j]); straight-through:
             d/dpre = 0, d/dtheta = -(1/eps) K((pre - theta) / eps)
    preact   lambda_p (1/N) sum_n sum_{s,j} relu(theta[s,j] - pre[n,s,j])   (jumprelu)
             lambda_p (1/N) sum_n sum_{s,j} relu(-pre[n,s,j])               (other archs)
    auxk     (topk / batchtopk; 0 when alpha = 0 or no feature is dead)
             e[n,t] = y[n,t] - y_hat[n,t], detached. For each source layer s with D_s dead
             features, k_s = min(kAux, D_s); per row n, among the dead features of layer s only,
             keep the k_s largest pre[n,s,j] and relu them -> faux[n,s,:] (zeros elsewhere;
             gradient flows into the kept pre-activations).
             e_hat[n,t] = sum_{s <= t} faux[n,s,:] @ W_dec_{s}[:, t - s, :]   (no bias, no skip)
             auxk = alpha sum_t [ sum_n ||e[n,t] - e_hat[n,t]||^2 / sum_n ||e[n,t] - mean_n e[:,t]||^2 ]
    total = reconstruction + sparsity + preact + auxk

OUT.safetensors (all float64):
    pre [N, L, F], f [N, L, F], y_hat [N, L, d_out], omega [L, F]
    loss.reconstruction, loss.sparsity, loss.preact, loss.auxk, loss.total: 0-d tensors (shape [])
    grad.<name> for every parameter present in IN (grad.W_enc, grad.b_enc, grad.W_dec_{s},
        grad.b_dec, grad.W_skip, grad.threshold): the gradient of loss.total (straight-through
        pseudo-gradients for the jumprelu threshold); zeros where a parameter gets no gradient.

Degenerate data (a zero-variance target layer for fvu, a zero target row for paper) is rejected
with a ValueError rather than producing inf/nan.
"""

import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import load_file, save_file  # noqa: E402

ARCHS = ("relu", "jumprelu", "topk", "batchtopk")
RECONSTRUCTIONS = ("fvu", "paper")
SPARSITIES = ("none", "l1", "tanh", "l0")
OPTION_KEYS = (
    "arch", "k", "bandwidth", "skip", "reconstruction", "sparsity", "sparsityCoefficient",
    "tanhScale", "preactCoefficient", "auxkAlpha", "kAux",
)
LOSS_NAMES = ("reconstruction", "sparsity", "preact", "auxk", "total")
DTYPE = torch.float64


# ---------------------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------------------


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_positive_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _number(opts, key, default=None, positive=False):
    if key not in opts:
        if default is None:
            raise ValueError(f"options.{key} is required here")
        return float(default)
    v = opts[key]
    if not _is_number(v) or (v <= 0 if positive else v < 0):
        kind = "a finite number > 0" if positive else "a finite number >= 0"
        raise ValueError(f"options.{key} must be {kind}, got {v!r}")
    return float(v)


def check_options(opts):
    """Return a normalised copy of opts (defaults filled in); raise ValueError on anything invalid."""
    if not isinstance(opts, dict):
        raise ValueError(f"options must be a JSON object, got {type(opts).__name__}")
    unknown = sorted(set(opts) - set(OPTION_KEYS))
    if unknown:
        raise ValueError(f"unknown options keys: {unknown} (known: {list(OPTION_KEYS)})")
    out = {}
    arch = opts.get("arch")
    if arch not in ARCHS:
        raise ValueError(f"options.arch must be one of {ARCHS}, got {arch!r}")
    out["arch"] = arch
    if arch in ("topk", "batchtopk"):
        if not _is_positive_int(opts.get("k")):
            raise ValueError(f"options.k must be a positive integer for arch {arch!r}, got {opts.get('k')!r}")
        out["k"] = opts["k"]
    if arch == "jumprelu":
        out["bandwidth"] = _number(opts, "bandwidth", positive=True)
    skip = opts.get("skip", False)
    if not isinstance(skip, bool):
        raise ValueError(f"options.skip must be a boolean, got {skip!r}")
    out["skip"] = skip
    rec = opts.get("reconstruction", "fvu")
    if rec not in RECONSTRUCTIONS:
        raise ValueError(f"options.reconstruction must be one of {RECONSTRUCTIONS}, got {rec!r}")
    out["reconstruction"] = rec
    sp = opts.get("sparsity", "none")
    if sp not in SPARSITIES:
        raise ValueError(f"options.sparsity must be one of {SPARSITIES}, got {sp!r}")
    if sp == "l0" and arch != "jumprelu":
        raise ValueError(f"options.sparsity 'l0' needs arch 'jumprelu', got arch {arch!r}")
    out["sparsity"] = sp
    out["sparsityCoefficient"] = 0.0 if sp == "none" else _number(opts, "sparsityCoefficient")
    if sp == "tanh":
        out["tanhScale"] = _number(opts, "tanhScale", positive=True)
    out["preactCoefficient"] = _number(opts, "preactCoefficient", default=0.0)
    alpha = _number(opts, "auxkAlpha", default=0.0)
    if alpha > 0:
        if arch not in ("topk", "batchtopk"):
            raise ValueError(f"options.auxkAlpha > 0 needs arch 'topk' or 'batchtopk', got arch {arch!r}")
        if not _is_positive_int(opts.get("kAux")):
            raise ValueError(f"options.kAux must be a positive integer when auxkAlpha > 0, got {opts.get('kAux')!r}")
        out["kAux"] = opts["kAux"]
    out["auxkAlpha"] = alpha
    return out


def param_names(n_layers, opts):
    names = ["W_enc", "b_enc"] + [f"W_dec_{s}" for s in range(n_layers)] + ["b_dec"]
    if opts["skip"]:
        names.append("W_skip")
    if opts["arch"] == "jumprelu":
        names.append("threshold")
    return names


def _shape(t):
    return list(t.shape)


def check_inputs(tensors, opts):
    """Split the IN tensors into (params, x, y, dead) after checking names, dtypes and shapes.

    opts must already be normalised by check_options. Floating tensors are cast to float64;
    dead becomes a bool tensor (or None).
    """
    if "W_enc" not in tensors:
        raise ValueError("missing tensor 'W_enc'")
    if tensors["W_enc"].dim() != 3:
        raise ValueError(f"W_enc must be [L, d_in, F], got shape {_shape(tensors['W_enc'])}")
    L, d_in, F = tensors["W_enc"].shape
    if L < 1 or d_in < 1 or F < 1:
        raise ValueError(f"W_enc has an empty dimension: shape {_shape(tensors['W_enc'])}")
    names = param_names(L, opts)
    allowed = set(names) | {"x", "y", "dead"}
    missing = [n for n in names + ["x", "y"] if n not in tensors]
    if missing:
        raise ValueError(f"missing tensors: {missing}")
    extra = sorted(set(tensors) - allowed)
    if extra:
        hints = []
        if "W_skip" in extra:
            hints.append("W_skip is only allowed with options.skip = true")
        if "threshold" in extra:
            hints.append("threshold is only allowed with arch 'jumprelu'")
        raise ValueError(f"unexpected tensors: {extra}" + (f" ({'; '.join(hints)})" if hints else ""))
    if tensors["b_dec"].dim() != 2:
        raise ValueError(f"b_dec must be [L, d_out], got shape {_shape(tensors['b_dec'])}")
    d_out = tensors["b_dec"].shape[1]
    x, y = tensors["x"], tensors["y"]
    if x.dim() != 3:
        raise ValueError(f"x must be [N, L, d_in], got shape {_shape(x)}")
    N = x.shape[0]
    expected = {
        "W_enc": [L, d_in, F], "b_enc": [L, F], "b_dec": [L, d_out], "W_skip": [L, d_in, d_out],
        "threshold": [L, F], "x": [N, L, d_in], "y": [N, L, d_out], "dead": [L, F],
    }
    for s in range(L):
        expected[f"W_dec_{s}"] = [F, L - s, d_out]
    for name in sorted(tensors):
        if _shape(tensors[name]) != expected[name]:
            raise ValueError(f"{name} has shape {_shape(tensors[name])}, expected {expected[name]}")
    if N < 1:
        raise ValueError("x has no rows (N = 0)")
    if d_out < 1:
        raise ValueError("b_dec has d_out = 0")
    for name in names + ["x", "y"]:
        if not tensors[name].is_floating_point():
            raise ValueError(f"{name} must have a floating dtype, got {tensors[name].dtype}")
    params = {n: tensors[n].to(DTYPE) for n in names}
    for name, t in list(params.items()) + [("x", x), ("y", y)]:
        if not torch.isfinite(t.to(DTYPE)).all():
            raise ValueError(f"{name} has non-finite entries")
    if "threshold" in params and not (params["threshold"] > 0).all():
        raise ValueError("threshold must be positive everywhere")
    if opts["arch"] in ("topk", "batchtopk") and opts["k"] > F:
        raise ValueError(f"options.k = {opts['k']} exceeds the number of features F = {F}")
    dead = None
    if "dead" in tensors:
        d = tensors["dead"]
        if d.dtype not in (torch.uint8, torch.bool):
            raise ValueError(f"dead must be uint8 or bool, got {d.dtype}")
        if d.dtype == torch.uint8 and not ((d == 0) | (d == 1)).all():
            raise ValueError("dead must hold only 0 and 1")
        dead = d.to(torch.bool)
    if opts["auxkAlpha"] > 0 and dead is None:
        raise ValueError("options.auxkAlpha > 0 needs the input tensor 'dead' [L, F]")
    x, y = x.to(DTYPE), y.to(DTYPE)
    if opts["reconstruction"] == "fvu":
        variance = (y - y.mean(0)).pow(2).sum(dim=(0, 2))
        if not (variance > 0).all():
            raise ValueError(f"y has zero variance over the rows in target layers "
                             f"{(variance <= 0).nonzero().flatten().tolist()} (fvu undefined)")
    else:
        if not (y.norm(dim=-1) > 0).all():
            raise ValueError("y has an all-zero row in some target layer (paper loss divides by ||y[n,t]||)")
    return params, x, y, dead


# ---------------------------------------------------------------------------------------
# JumpReLU straight-through estimators (rectangle kernel).
# ---------------------------------------------------------------------------------------


def rectangle(u):
    """K(u) = 1 on |u| < 1/2, else 0."""
    return (u.abs() < 0.5).to(u.dtype)


class JumpReLU(torch.autograd.Function):
    """f = pre * H(pre - theta); df/dpre = H(pre - theta), df/dtheta = -(theta/eps) K((pre - theta)/eps)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        gate = (pre > threshold).to(pre.dtype)
        d_theta = jump_theta_factor(threshold, eps) * rectangle((pre - threshold) / eps)
        # pre is [N, L, F], theta is [L, F]: sum the per-row contributions over the rows.
        return grad * gate, (grad * d_theta).sum(0), None


def jump_theta_factor(threshold, eps):
    """The -(theta / eps) factor of df/dtheta (kept separate so the self-check can mutate it)."""
    return -threshold / eps


class Step(torch.autograd.Function):
    """H(pre - theta) for the L0 penalty; dH/dpre = 0, dH/dtheta = -(1/eps) K((pre - theta)/eps)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        d_theta = -(1.0 / eps) * rectangle((pre - threshold) / eps)
        return torch.zeros_like(pre), (grad * d_theta).sum(0), None


# ---------------------------------------------------------------------------------------
# Forward pass.
# ---------------------------------------------------------------------------------------


def keep_top_per_row(scores, values, k):
    """Zeros except, in each row of the last dim, relu(values) at the k largest scores."""
    if k == 0:
        return torch.zeros_like(values)
    idx = scores.topk(k, dim=-1).indices
    return torch.zeros_like(values).scatter(-1, idx, torch.relu(values.gather(-1, idx)))


def topk_activation(pre, k):
    """Per row n and layer s: relu of the k largest pre[n, s, :]."""
    return keep_top_per_row(pre, pre, k)


def batchtopk_activation(pre, k):
    """Per layer s: the N*k largest entries of the N x F matrix relu(pre[:, s, :])."""
    N, L, F = pre.shape
    per_layer = torch.relu(pre).transpose(0, 1).reshape(L, N * F)  # [L, N*F]
    idx = per_layer.topk(N * k, dim=-1).indices
    kept = torch.zeros_like(per_layer).scatter(-1, idx, per_layer.gather(-1, idx))
    return kept.reshape(L, N, F).transpose(0, 1)


def encode(params, opts, x):
    """Return (pre, f), both [N, L, F]."""
    pre = torch.einsum("nsi,sif->nsf", x, params["W_enc"]) + params["b_enc"]
    arch = opts["arch"]
    if arch == "relu":
        f = torch.relu(pre)
    elif arch == "jumprelu":
        f = JumpReLU.apply(pre, params["threshold"], opts["bandwidth"])
    elif arch == "topk":
        f = topk_activation(pre, opts["k"])
    else:
        f = batchtopk_activation(pre, opts["k"])
    return pre, f


def decoders(params):
    L = params["W_enc"].shape[0]
    return [params[f"W_dec_{s}"] for s in range(L)]


def decode_features(params, f):
    """sum_{s <= t} f[:, s] @ W_dec_s[:, t - s]  ->  [N, L, d_out] (no bias, no skip)."""
    W_decs = decoders(params)
    L = len(W_decs)
    N, d_out = f.shape[0], W_decs[0].shape[-1]
    out = [f.new_zeros(N, d_out) for _ in range(L)]
    for s, W in enumerate(W_decs):
        contrib = torch.einsum("nf,ftd->ntd", f[:, s], W)  # targets t = s..L-1
        for t in range(s, L):
            out[t] = out[t] + contrib[:, t - s]
    return torch.stack(out, dim=1)


def decode(params, opts, f, x):
    y_hat = decode_features(params, f) + params["b_dec"]
    if opts["skip"]:
        y_hat = y_hat + torch.einsum("nti,tid->ntd", x, params["W_skip"])
    return y_hat


def decoder_norms(params):
    """omega[s, j] = sqrt(sum_{t >= s} ||W_dec_s[j, t - s]||^2)  ->  [L, F]."""
    return torch.stack([W.pow(2).sum(dim=(1, 2)).sqrt() for W in decoders(params)])


# ---------------------------------------------------------------------------------------
# Loss terms.
# ---------------------------------------------------------------------------------------


def fvu_per_layer_sum(target, prediction):
    """sum_t  sum_n ||target - prediction||^2 / sum_n ||target - mean_n target||^2, for [N, L, d]."""
    num = (target - prediction).pow(2).sum(dim=(0, 2))
    den = (target - target.mean(0)).pow(2).sum(dim=(0, 2))
    return (num / den).sum()


def reconstruction_loss(opts, y_hat, y):
    if opts["reconstruction"] == "fvu":
        return fvu_per_layer_sum(y, y_hat)
    per_element = (y_hat - y).pow(2) / y.norm(dim=-1, keepdim=True)  # [N, L, d_out]
    return per_element.mean(dim=(0, 2)).sum()


def sparsity_loss(params, opts, pre, f, omega):
    lam, N = opts["sparsityCoefficient"], pre.shape[0]
    kind = opts["sparsity"]
    if kind == "none":
        return pre.new_zeros(())
    if kind == "l1":
        return lam * (f * omega).sum() / N
    if kind == "tanh":
        return lam * torch.tanh(opts["tanhScale"] * f * omega).sum() / N
    return lam * Step.apply(pre, params["threshold"], opts["bandwidth"]).sum() / N


def preact_loss(params, opts, pre):
    lam, N = opts["preactCoefficient"], pre.shape[0]
    if opts["arch"] == "jumprelu":
        return lam * torch.relu(params["threshold"] - pre).sum() / N
    return lam * torch.relu(-pre).sum() / N


def auxk_residual(y, y_hat):
    """e = y - y_hat, detached: AuxK trains the dead features only, not what produced y_hat."""
    return (y - y_hat).detach()


def auxk_activations(opts, pre, dead):
    """faux [N, L, F]: per row and layer, relu of the k_s largest pre among that layer's dead features."""
    layers = []
    for s in range(pre.shape[1]):
        n_dead = int(dead[s].sum())
        k_s = min(opts["kAux"], n_dead)
        scores = pre[:, s].detach().masked_fill(~dead[s], float("-inf"))
        layers.append(keep_top_per_row(scores, pre[:, s], k_s))
    return torch.stack(layers, dim=1)


def auxk_loss(params, opts, pre, residual, dead):
    if opts["arch"] not in ("topk", "batchtopk") or opts["auxkAlpha"] == 0 or dead is None or not dead.any():
        return pre.new_zeros(())
    faux = auxk_activations(opts, pre, dead)
    residual_hat = decode_features(params, faux)
    return opts["auxkAlpha"] * fvu_per_layer_sum(residual, residual_hat)


def forward(params, opts, x, y, dead=None, residual=None):
    """Forward pass and every loss term; tensors stay attached to the graph of params.

    params: dict of float64 tensors (names as in IN); opts: raw or normalised options; x, y float64;
    dead: bool [L, F] or None. residual: optional fixed replacement for the detached AuxK residual
    e (the self-check's finite differences hold e at its value at the base point).
    Returns pre, f, y_hat, omega and loss.<term> (0-d).
    """
    opts = check_options(opts)  # idempotent on already-normalised options
    pre, f = encode(params, opts, x)
    y_hat = decode(params, opts, f, x)
    omega = decoder_norms(params)
    losses = {
        "reconstruction": reconstruction_loss(opts, y_hat, y),
        "sparsity": sparsity_loss(params, opts, pre, f, omega),
        "preact": preact_loss(params, opts, pre),
        "auxk": auxk_loss(params, opts, pre, auxk_residual(y, y_hat) if residual is None else residual, dead),
    }
    losses["total"] = losses["reconstruction"] + losses["sparsity"] + losses["preact"] + losses["auxk"]
    out = {"pre": pre, "f": f, "y_hat": y_hat, "omega": omega}
    out.update({f"loss.{k}": v for k, v in losses.items()})
    return out


def forward_with_grads(params, opts, x, y, dead=None):
    """forward() on fresh leaf copies of params, plus grad.<name> (gradient of loss.total)."""
    opts = check_options(opts)
    leaves = {n: p.detach().clone().to(DTYPE).requires_grad_(True) for n, p in params.items()}
    out = forward(leaves, opts, x, y, dead)
    names = list(leaves)
    grads = torch.autograd.grad(out["loss.total"], [leaves[n] for n in names], allow_unused=True)
    result = {k: v.detach() for k, v in out.items()}
    for n, g in zip(names, grads):
        result["grad." + n] = torch.zeros_like(leaves[n]) if g is None else g.detach()
    return result


# ---------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------


def run(in_path, options_path, out_path):
    with open(options_path) as fh:
        raw_opts = json.load(fh)
    opts = check_options(raw_opts)
    params, x, y, dead = check_inputs(load_file(in_path), opts)
    out = forward_with_grads(params, opts, x, y, dead)
    tensors = {k: v.to(DTYPE).contiguous() for k, v in out.items()}
    for name in LOSS_NAMES:
        tensors[f"loss.{name}"] = tensors[f"loss.{name}"].reshape(())
    save_file(tensors, out_path)


def main(argv):
    if len(argv) != 4:
        sys.exit(f"usage: {argv[0]} IN.safetensors OPTIONS.json OUT.safetensors")
    try:
        run(*argv[1:])
    except ValueError as err:
        sys.exit(f"clt_reference: error: {err}")


if __name__ == "__main__":
    main(sys.argv)
