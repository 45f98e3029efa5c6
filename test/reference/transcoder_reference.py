"""Plain-PyTorch reference for transcoders (relu / topk / jumprelu) and the transcoder paper's trainer.

Written from the mathematical definitions (row-vector convention, `x @ W`), independently of
the project's libtorch code, so the test suite can compare against it.

Parameters (float32):
    W_enc [d_in, m], b_enc [m], W_dec [m, d_out], b_dec [d_in] (pre-bias subtracted from x),
    b_dec_out [d_out], optional W_skip [d_in, d_out], threshold [m] (jumprelu only, positive).

Usage (SCRIPT = test/reference/transcoder_reference.py):
    /usr/bin/python3 SCRIPT forward PARAMS.safetensors CFG.json DATA.safetensors OUT.safetensors
    /usr/bin/python3 SCRIPT train PARAMS.safetensors CFG.json BATCHES.safetensors OUT.safetensors METRICS.json
    /usr/bin/python3 SCRIPT geomedian POINTS.safetensors OUT.safetensors

forward: DATA has x [N, d_in], y [N, d_out], optional dead [m] (bool/uint8). OUT gets pre, f,
    y_hat, the 0-d scalars reconstruction, sparsity, ghost, total, and grad.<param> (of total).
train: BATCHES has x [S, N, d_in], y [S, N, d_out]. OUT gets the final parameters,
    adam.<param>.exp_avg, adam.<param>.exp_avg_sq and since_fired (int64); METRICS.json is a
    list of per-step dicts {mse, l1, l0, sparsity, ghost, total, lr, n_dead}.
geomedian: POINTS has points [N, d]; OUT gets median [d].
"""

import json
import math
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import load_file, save_file  # noqa: E402

ARCHS = ("relu", "topk", "jumprelu")
RECONSTRUCTIONS = ("paper", "fvu")
GHOST_RESIDUALS = ("input", "target")
SCHEDULES = ("constant", "constantwithwarmup", "linearwarmupdecay", "cosineannealingwarmup")
# Adam receives the parameters in this order (the paper's order, optional ones last).
PARAM_ORDER = ("W_enc", "b_enc", "W_dec", "b_dec", "b_dec_out", "W_skip", "threshold")
REQUIRED_PARAMS = PARAM_ORDER[:5]


# ---------------------------------------------------------------------------------------
# Configuration and parameter validation: fail loudly rather than silently compute
# something other than what the caller meant.
# ---------------------------------------------------------------------------------------


def check_config(cfg, training=False):
    """Return a copy of cfg with defaults filled in; raise ValueError on anything invalid."""
    cfg = dict(cfg)
    if cfg.get("arch") not in ARCHS:
        raise ValueError(f"cfg.arch must be one of {ARCHS}, got {cfg.get('arch')!r}")
    cfg.setdefault("reconstruction", "paper")
    if cfg["reconstruction"] not in RECONSTRUCTIONS:
        raise ValueError(f"cfg.reconstruction must be one of {RECONSTRUCTIONS}")
    for key in ("l1_coefficient", "l0_coefficient", "auxk_alpha"):
        cfg[key] = float(cfg.get(key) or 0.0)
    cfg.setdefault("ghost_residual", "input")  # the paper's quirk: residual = x - y_hat
    if cfg["ghost_residual"] not in GHOST_RESIDUALS:
        raise ValueError(f"cfg.ghost_residual must be one of {GHOST_RESIDUALS}")
    if cfg["arch"] == "topk":
        if not isinstance(cfg.get("k"), int) or cfg["k"] < 1:
            raise ValueError("topk needs a positive integer cfg.k")
        if cfg["auxk_alpha"] > 0 and (not isinstance(cfg.get("k_aux"), int) or cfg["k_aux"] < 1):
            raise ValueError("auxk_alpha > 0 needs a positive integer cfg.k_aux")
    if cfg["arch"] == "jumprelu":
        if not isinstance(cfg.get("bandwidth"), (int, float)) or cfg["bandwidth"] <= 0:
            raise ValueError("jumprelu needs a positive cfg.bandwidth")
        cfg["bandwidth"] = float(cfg["bandwidth"])
    if training:
        check_training_config(cfg)
    return cfg


def check_training_config(cfg):
    for key in ("lr", "dead_feature_window"):
        if key not in cfg:
            raise ValueError(f"train needs cfg.{key}")
    cfg["lr"] = float(cfg["lr"])
    cfg.setdefault("schedule", "constant")
    if cfg["schedule"] not in SCHEDULES:
        raise ValueError(f"cfg.schedule must be one of {SCHEDULES}")
    cfg.setdefault("warmup_steps", 0)
    if cfg["schedule"] in ("linearwarmupdecay", "cosineannealingwarmup"):
        if "total_steps" not in cfg or int(cfg["total_steps"]) <= int(cfg["warmup_steps"]):
            raise ValueError(f"schedule {cfg['schedule']} needs cfg.total_steps > cfg.warmup_steps")
    cfg["ghost_grads"] = bool(cfg.get("ghost_grads", False))
    if cfg["ghost_grads"] and cfg["arch"] != "relu":
        # Ghost grads are defined here for the relu (paper) architecture only.
        raise ValueError("cfg.ghost_grads is only supported with arch 'relu'")


def check_params(params, cfg):
    """Check names and shapes; returns (d_in, m, d_out)."""
    names = set(params)
    missing = [n for n in REQUIRED_PARAMS if n not in names]
    if cfg["arch"] == "jumprelu" and "threshold" not in names:
        missing.append("threshold")
    if missing:
        raise ValueError(f"missing parameters: {missing}")
    unknown = names - set(PARAM_ORDER)
    if unknown:
        raise ValueError(f"unknown parameters: {sorted(unknown)}")
    if "threshold" in names and cfg["arch"] != "jumprelu":
        raise ValueError("parameter 'threshold' is only meaningful for arch 'jumprelu'")
    d_in, m = params["W_enc"].shape
    d_out = params["W_dec"].shape[1]
    expected = {
        "W_enc": (d_in, m), "b_enc": (m,), "W_dec": (m, d_out), "b_dec": (d_in,),
        "b_dec_out": (d_out,), "W_skip": (d_in, d_out), "threshold": (m,),
    }
    for name in names:
        if tuple(params[name].shape) != expected[name]:
            raise ValueError(f"{name} has shape {list(params[name].shape)}, expected {list(expected[name])}")
    if cfg["arch"] == "topk" and cfg["k"] > m:
        raise ValueError(f"k = {cfg['k']} exceeds the number of features {m}")
    return d_in, m, d_out


# ---------------------------------------------------------------------------------------
# JumpReLU straight-through estimators (Rajamanoharan et al. 2024, rectangle kernel).
# The true derivative with respect to the threshold is zero almost everywhere, so the
# pseudo-derivatives below are what make the threshold trainable.
# ---------------------------------------------------------------------------------------


def rectangle(u):
    """K(u) = 1 on |u| < 1/2, else 0."""
    return (u.abs() < 0.5).to(u.dtype)


def sum_to_features(t):
    """Sum a [..., m] tensor down to [m]: the threshold is shared by every row."""
    return t.reshape(-1, t.shape[-1]).sum(0)


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
        d_threshold = -(threshold / eps) * rectangle((pre - threshold) / eps)
        return grad * gate, sum_to_features(grad * d_threshold), None


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
        d_threshold = -(1.0 / eps) * rectangle((pre - threshold) / eps)
        # None means a zero gradient for pre: the L0 term only trains the threshold.
        return None, sum_to_features(grad * d_threshold), None


# ---------------------------------------------------------------------------------------
# Forward pass.
# ---------------------------------------------------------------------------------------


def sparse_top(scores, values, k):
    """Zeros except, per row, relu(values) at the k largest scores (gradient flows into values)."""
    idx = scores.topk(k, dim=-1).indices
    return torch.zeros_like(values).scatter(-1, idx, torch.relu(values.gather(-1, idx)))


def encode(params, cfg, x):
    """Return (pre, f)."""
    pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    if cfg["arch"] == "relu":
        f = torch.relu(pre)
    elif cfg["arch"] == "topk":
        f = sparse_top(pre, pre, cfg["k"])
    else:
        f = JumpReLU.apply(pre, params["threshold"], cfg["bandwidth"])
    return pre, f


def decode(params, f, x):
    y_hat = f @ params["W_dec"] + params["b_dec_out"]
    if "W_skip" in params:
        y_hat = y_hat + x @ params["W_skip"]
    return y_hat


# ---------------------------------------------------------------------------------------
# Loss terms.
# ---------------------------------------------------------------------------------------


def paper_mse_elements(y_hat, y):
    """(y_hat - y)^2 / ||y|| per element, ||y|| the per-row L2 norm (not squared)."""
    return (y_hat - y).pow(2) / y.norm(dim=-1, keepdim=True)


def fvu(target, prediction):
    """Fraction of variance unexplained, variance taken around the batch mean vector."""
    return (target - prediction).pow(2).sum() / (target - target.mean(0)).pow(2).sum()


def reconstruction_loss(cfg, y_hat, y):
    if cfg["reconstruction"] == "paper":
        return paper_mse_elements(y_hat, y).mean()
    return fvu(y, y_hat)


def sparsity_loss(params, cfg, pre, f):
    """The l1 (relu) or l0 (jumprelu) penalty including its coefficient; zero for topk."""
    if cfg["arch"] == "relu":
        return cfg["l1_coefficient"] * f.abs().sum(-1).mean()
    if cfg["arch"] == "jumprelu":
        l0 = Step.apply(pre, params["threshold"], cfg["bandwidth"]).sum(-1).mean()
        return cfg["l0_coefficient"] * l0
    return pre.new_zeros(())


def auxk_loss(params, cfg, pre, y, y_hat, dead):
    """AuxK: the dead features' top-k_aux reconstruct the detached residual (FVU), scaled."""
    n_dead = int(dead.sum())
    residual = (y - y_hat).detach()
    # Only dead features compete; their pre-activations (not masked ones) carry the gradient.
    scores = pre.detach().masked_fill(~dead, float("-inf"))
    f_aux = sparse_top(scores, pre, min(cfg["k_aux"], n_dead))
    residual_hat = f_aux @ params["W_dec"]  # no bias, no skip
    scale = min(n_dead / cfg["k_aux"], 1.0)
    return cfg["auxk_alpha"] * scale * fvu(residual, residual_hat)


def ghost_loss(params, cfg, pre, x, y, y_hat, dead):
    """Ghost grads as in the transcoder paper's code (exp of dead pre-activations, rescaled)."""
    source = x if cfg["ghost_residual"] == "input" else y
    if source.shape != y_hat.shape:
        raise ValueError("ghost_residual 'input' needs d_in == d_out")
    residual = source - y_hat
    ghost = torch.exp(pre[:, dead]) @ params["W_dec"][dead]
    # Scale the ghost output to half the residual norm; the factor itself is not trained.
    scale = (residual.norm(dim=-1) / (1e-6 + 2 * ghost.norm(dim=-1))).detach()
    ghost = ghost * scale[:, None]
    residual = residual.detach()
    ghost_el = (ghost - residual).pow(2) / residual.norm(dim=-1, keepdim=True)
    # Rescale per element so the ghost loss has the magnitude of the reconstruction loss.
    mse_el = paper_mse_elements(y_hat, y)
    ghost_el = (mse_el / (ghost_el + 1e-6)).detach() * ghost_el
    return ghost_el.mean()


def forward(params, cfg, x, y, dead=None):
    """Forward pass and losses. Tensors stay attached to the graph of params.

    dead (bool [m]) with any True enables ghost grads (relu) or AuxK (topk, auxk_alpha > 0);
    it is ignored for jumprelu. Returns pre, f, y_hat, reconstruction, sparsity, ghost, total
    plus the diagnostics l1 (mean sum |f|), l0 (mean count of f > 0) and n_dead.
    """
    cfg = check_config(cfg)
    check_params(params, cfg)
    pre, f = encode(params, cfg, x)
    y_hat = decode(params, f, x)
    reconstruction = reconstruction_loss(cfg, y_hat, y)
    sparsity = sparsity_loss(params, cfg, pre, f)
    ghost = pre.new_zeros(())
    n_dead = 0 if dead is None else int(dead.sum())
    if n_dead > 0:
        dead = dead.to(torch.bool)
        if cfg["arch"] == "relu":
            ghost = ghost_loss(params, cfg, pre, x, y, y_hat, dead)
        elif cfg["arch"] == "topk" and cfg["auxk_alpha"] > 0:
            sparsity = auxk_loss(params, cfg, pre, y, y_hat, dead)
    total = reconstruction + sparsity + ghost
    with torch.no_grad():
        l1 = f.abs().sum(-1).mean()
        l0 = (f > 0).sum(-1).to(f.dtype).mean()
    return {
        "pre": pre, "f": f, "y_hat": y_hat, "reconstruction": reconstruction,
        "sparsity": sparsity, "ghost": ghost, "total": total, "l1": l1, "l0": l0, "n_dead": n_dead,
    }


def forward_with_grads(params, cfg, x, y, dead=None):
    """forward() on detached copies of params; adds grad.<param> (gradient of total)."""
    leaves = {name: p.detach().clone().requires_grad_(True) for name, p in params.items()}
    out = forward(leaves, cfg, x, y, dead)
    out["total"].backward()
    result = {k: v.detach() if torch.is_tensor(v) else v for k, v in out.items()}
    for name, leaf in leaves.items():
        result["grad." + name] = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
    return result


# ---------------------------------------------------------------------------------------
# The paper's trainer.
# ---------------------------------------------------------------------------------------


def schedule_lambda(cfg):
    """Multiplier lambda(s) of base_lr, as in the paper's get_scheduler (LambdaLR)."""
    name, warmup, total = cfg["schedule"], int(cfg["warmup_steps"]), int(cfg.get("total_steps", 0))
    lr_end = cfg["lr"] / 10  # the paper's quirk: an absolute lr used as a multiplier

    def warming(s):
        return s < warmup

    def ramp(s):
        return (s + 1) / warmup

    if name == "constant":
        return lambda s: 1.0
    if name == "constantwithwarmup":
        return lambda s: min(1.0, ramp(s)) if warmup > 0 else 1.0
    if name == "linearwarmupdecay":
        return lambda s: ramp(s) if warming(s) else (total - s) / (total - warmup)

    def cosine(s):
        if warming(s):
            return ramp(s)
        progress = (s - warmup) / (total - warmup)
        return lr_end + 0.5 * (1 - lr_end) * (1 + math.cos(math.pi * progress))

    return cosine


@torch.no_grad()
def normalize_decoder_rows(W_dec):
    W_dec.div_(W_dec.norm(dim=-1, keepdim=True))


@torch.no_grad()
def remove_parallel_gradient(W_dec):
    """Project each W_dec row's gradient orthogonal to the row (rows are unit norm here)."""
    parallel = (W_dec.grad * W_dec).sum(-1, keepdim=True)
    W_dec.grad.sub_(parallel * W_dec)


def train(params, cfg, xs, ys):
    """Run the paper's loop over batches xs [S, N, d_in], ys [S, N, d_out].

    Returns (params, adam_state, metrics): final parameters (W_dec is not renormalized after
    the last optimizer step), {name: {"exp_avg", "exp_avg_sq"}}, and one dict per step.
    """
    return train_with_counters(params, cfg, xs, ys)[:3]


def train_with_counters(params, cfg, xs, ys):
    """train(), also returning the final since_fired counters (int64 [m])."""
    cfg = check_config(cfg, training=True)
    _, m, _ = check_params(params, cfg)
    names = [n for n in PARAM_ORDER if n in params]
    leaves = {n: params[n].detach().clone().requires_grad_(True) for n in names}
    optimizer = torch.optim.Adam([leaves[n] for n in names], lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_lambda(cfg))
    uses_dead = cfg["ghost_grads"] or (cfg["arch"] == "topk" and cfg["auxk_alpha"] > 0)
    since_fired = torch.zeros(m, dtype=torch.int64)
    metrics = []
    for n in range(xs.shape[0]):
        normalize_decoder_rows(leaves["W_dec"])
        # The paper steps the scheduler before the optimizer, so step n uses lambda(n + 1);
        # PyTorch warns about that order, which is exactly what is being reproduced.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
        lr = optimizer.param_groups[0]["lr"]
        dead = since_fired > cfg["dead_feature_window"]
        out = forward(leaves, cfg, xs[n], ys[n], dead if uses_dead else None)
        since_fired += 1
        since_fired[(out["f"] > 0).any(0)] = 0
        optimizer.zero_grad()
        out["total"].backward()
        remove_parallel_gradient(leaves["W_dec"])
        optimizer.step()
        metrics.append({
            "mse": out["reconstruction"].item(), "l1": out["l1"].item(), "l0": out["l0"].item(),
            "sparsity": out["sparsity"].item(), "ghost": out["ghost"].item(),
            "total": out["total"].item(), "lr": lr, "n_dead": int(dead.sum()),
        })
    final = {n: leaf.detach() for n, leaf in leaves.items()}
    adam_state = {}
    for n in names:
        state = optimizer.state.get(leaves[n], {})
        adam_state[n] = {
            key: state[key].detach().clone() if key in state else torch.zeros_like(final[n])
            for key in ("exp_avg", "exp_avg_sq")
        }
    return final, adam_state, metrics, since_fired


# ---------------------------------------------------------------------------------------
# Geometric median (Weiszfeld), used to initialise b_dec.
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def geometric_median(points, maxiter=100, ftol=1e-20, eps=1e-6):
    """Weiszfeld iterations from the mean; stops when the mean distance stops improving."""
    median = points.mean(0)
    objective = (points - median).norm(dim=-1).mean()
    for _ in range(maxiter):
        # eps caps the weight of a point the estimate sits on.
        weights = 1.0 / (points - median).norm(dim=-1).clamp(min=eps)
        median = (weights[:, None] * points).sum(0) / weights.sum()
        new_objective = (points - median).norm(dim=-1).mean()
        if abs(objective - new_objective) <= ftol * new_objective:
            break
        objective = new_objective
    return median


# ---------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------


def load_params(path):
    return {k: v.float() for k, v in load_file(path).items()}


def load_json(path):
    with open(path) as f:
        return json.load(f)


def scalar(t):
    return t.detach().float().reshape(())


def main_forward(params_path, cfg_path, data_path, out_path):
    params, cfg, data = load_params(params_path), load_json(cfg_path), load_file(data_path)
    dead = data["dead"].to(torch.bool) if "dead" in data else None
    out = forward_with_grads(params, cfg, data["x"].float(), data["y"].float(), dead)
    tensors = {k: out[k].float().contiguous() for k in ("pre", "f", "y_hat")}
    for k in ("reconstruction", "sparsity", "ghost", "total"):
        tensors[k] = scalar(out[k])
    tensors.update({k: v.float().contiguous() for k, v in out.items() if k.startswith("grad.")})
    save_file(tensors, out_path)


def main_train(params_path, cfg_path, batches_path, out_path, metrics_path):
    params, cfg, batches = load_params(params_path), load_json(cfg_path), load_file(batches_path)
    xs, ys = batches["x"].float(), batches["y"].float()
    final, adam_state, metrics, since_fired = train_with_counters(params, cfg, xs, ys)
    tensors = {n: p.float().contiguous() for n, p in final.items()}
    for n, state in adam_state.items():
        for key, value in state.items():
            tensors[f"adam.{n}.{key}"] = value.float().contiguous()
    tensors["since_fired"] = since_fired.to(torch.int64)
    save_file(tensors, out_path)
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=1)


def main_geomedian(points_path, out_path):
    points = load_file(points_path)["points"]
    if points.dtype not in (torch.float32, torch.float64):
        points = points.float()
    save_file({"median": geometric_median(points).contiguous()}, out_path)


COMMANDS = {
    "forward": (main_forward, "forward PARAMS.safetensors CFG.json DATA.safetensors OUT.safetensors"),
    "train": (
        main_train,
        "train PARAMS.safetensors CFG.json BATCHES.safetensors OUT.safetensors METRICS.json",
    ),
    "geomedian": (main_geomedian, "geomedian POINTS.safetensors OUT.safetensors"),
}


def main(argv):
    command = COMMANDS.get(argv[1]) if len(argv) > 1 else None
    if command is None or len(argv) - 2 != command[1].count(" "):
        usage = "\n".join(f"  {argv[0]} {u}" for _, u in COMMANDS.values())
        sys.exit(f"usage:\n{usage}")
    command[0](*argv[2:])


if __name__ == "__main__":
    main(sys.argv)
