"""Self-check for clt_reference.py (CPU only, float64, well under a minute). Exits non-zero on failure.

For every option combination (arch x reconstruction x sparsity x preact x auxk x skip; l0 only
with jumprelu, auxk only with topk / batchtopk) it builds random inputs whose sample point sits
away from every kink (|pre| or |pre - theta| and every top-k boundary gap > MARGIN) and checks:
  * forward (pre, f, y_hat, omega) and each loss term against a second, deliberately different
    implementation written here with explicit Python loops over rows, layers and features (ranks
    counted instead of sorted, sums accumulated element by element);
  * the autograd gradient of loss.total for every parameter against central finite differences
    of the reference's own loss (the AuxK residual e held at its base-point value, since e is
    detached); for jumprelu the threshold gradient is a straight-through pseudo-derivative, so
    it is checked instead against the closed-form formula evaluated by loops (upstream dL/df
    derived by hand);
  * AuxK special cases (no dead feature, D_s < kAux), dead being ignored by relu / jumprelu;
  * the CLI (float64 and float32 inputs, uint8 dead, 0-d loss scalars, grad names) and the
    ValueError paths (each message must name the offending field);
  * mutations of the reference (a dropped decoder slice, wrong / detached decoder norms, a wrong
    threshold pseudo-derivative, an undetached AuxK residual, per-row instead of batch top-k, FVU
    without mean subtraction) that must make the checks above fail.

Usage: /usr/bin/python3 test/reference/check_clt_reference.py
"""

import contextlib
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import clt_reference as ref  # noqa: E402
from safetensors_io import load_file, save_file  # noqa: E402

torch.set_default_dtype(torch.float64)

N, L, D_IN, D_OUT, F = 6, 3, 4, 3, 5
K, K_AUX = 2, 2
DEAD_PER_LAYER = (3, 1, 0)  # layer 0: D_s > kAux, layer 1: D_s < kAux, layer 2: no dead feature
MARGIN = 1e-4   # distance of every kink from the sample point
H = 1e-6        # finite-difference step (moves pre by < MARGIN / 10)
FWD_TOL = 1e-10
FD_ABS, FD_REL = 2e-6, 1e-6

OPTION_VALUES = dict(k=K, bandwidth=0.6, sparsityCoefficient=0.3, tanhScale=1.7,
                     preactCoefficient=0.2, auxkAlpha=0.5, kAux=K_AUX)


# ---------------------------------------------------------------------------------------
# Option combinations and random cases.
# ---------------------------------------------------------------------------------------


def make_options(arch, rec, sparsity, preact, auxk, skip):
    opts = {"arch": arch, "reconstruction": rec, "sparsity": sparsity, "skip": skip}
    if arch in ("topk", "batchtopk"):
        opts["k"] = K
    if arch == "jumprelu":
        opts["bandwidth"] = OPTION_VALUES["bandwidth"]
    if sparsity != "none":
        opts["sparsityCoefficient"] = OPTION_VALUES["sparsityCoefficient"]
    if sparsity == "tanh":
        opts["tanhScale"] = OPTION_VALUES["tanhScale"]
    if preact:
        opts["preactCoefficient"] = OPTION_VALUES["preactCoefficient"]
    if auxk:
        opts["auxkAlpha"] = OPTION_VALUES["auxkAlpha"]
        opts["kAux"] = K_AUX
    return opts


def all_combos():
    combos = []
    for arch in ref.ARCHS:
        sparsities = ["none", "l1", "tanh"] + (["l0"] if arch == "jumprelu" else [])
        auxks = [False, True] if arch in ("topk", "batchtopk") else [False]
        for rec, sp, preact, auxk, skip in itertools.product(
                ("fvu", "paper"), sparsities, (False, True), auxks, (False, True)):
            combos.append(make_options(arch, rec, sp, preact, auxk, skip))
    return combos


def random_tensors(opts, gen):
    def normal(shape, mean=0.0, std=1.0):
        return mean + std * torch.randn(*shape, generator=gen)

    params = {"W_enc": normal((L, D_IN, F), std=0.6), "b_enc": normal((L, F), mean=0.2, std=0.3)}
    for s in range(L):
        params[f"W_dec_{s}"] = normal((F, L - s, D_OUT), std=0.5)
    params["b_dec"] = normal((L, D_OUT), std=0.3)
    if opts.get("skip"):
        params["W_skip"] = normal((L, D_IN, D_OUT), std=0.3)
    if opts["arch"] == "jumprelu":
        params["threshold"] = 0.2 + 0.5 * torch.rand(L, F, generator=gen)
    x = normal((N, L, D_IN))
    y = normal((N, L, D_OUT))
    dead = torch.zeros(L, F, dtype=torch.bool)
    for s, count in enumerate(DEAD_PER_LAYER):
        dead[s, torch.randperm(F, generator=gen)[:count]] = True
    return params, x, y, dead


def gap_ok(values, k):
    """The k-th and (k+1)-th largest of values are more than MARGIN apart (or there is no (k+1)-th)."""
    v = sorted(values, reverse=True)
    return k >= len(v) or k == 0 or v[k - 1] - v[k] > MARGIN


def sample_point_ok(opts, params, pre, dead):
    """True when no kink or top-k boundary is within MARGIN of the sample point."""
    arch = opts["arch"]
    if arch == "jumprelu":
        th = params["threshold"].numpy()
        u = (pre - th) / opts["bandwidth"]
        inside = np.abs(u) < 0.5
        # Need kernel hits on both sides of the jump, and no entry on a kernel edge.
        if np.abs(pre - th).min() <= MARGIN or np.abs(np.abs(u) - 0.5).min() <= 1e-6:
            return False
        return (inside & (pre > th)).any() and (inside & (pre < th)).any()
    if np.abs(pre).min() <= MARGIN:
        return False
    for s in range(L):
        if arch == "topk" and not all(gap_ok(pre[n, s], K) for n in range(N)):
            return False
        if arch == "batchtopk":
            v = sorted(np.maximum(pre[:, s], 0).ravel(), reverse=True)
            if v[N * K - 1] <= MARGIN or v[N * K - 1] - v[N * K] <= MARGIN:
                return False
        if opts.get("auxkAlpha"):
            idx = [j for j in range(F) if dead[s, j]]
            k_s = min(K_AUX, len(idx))
            if not all(gap_ok(pre[n, s, idx], k_s) for n in range(N)):
                return False
            # AuxK must actually reach a dead feature with a positive pre-activation.
            if idx and not any(pre[n, s, j] > 0 for n in range(N) for j in idx):
                return False
    return True


def make_case(opts, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(500):
        params, x, y, dead = random_tensors(opts, gen)
        pre = loop_pre(to_numpy(params), x.numpy())
        if sample_point_ok(opts, params, pre, dead.numpy()):
            return params, x, y, dead
    raise RuntimeError(f"no valid sample point found for {opts}")


def to_numpy(params):
    return {n: p.detach().numpy().astype(np.float64) for n, p in params.items()}


# ---------------------------------------------------------------------------------------
# Second implementation: explicit loops over rows, layers and features.
# ---------------------------------------------------------------------------------------


def relu(v):
    return v if v > 0 else 0.0


def loop_pre(P, x):
    n_rows, n_layers, d_in = x.shape
    n_feat = P["b_enc"].shape[1]
    pre = np.zeros((n_rows, n_layers, n_feat))
    for n in range(n_rows):
        for s in range(n_layers):
            for j in range(n_feat):
                acc = P["b_enc"][s, j]
                for i in range(d_in):
                    acc += x[n, s, i] * P["W_enc"][s, i, j]
                pre[n, s, j] = acc
    return pre


def loop_activation(P, opts, pre):
    n_rows, n_layers, n_feat = pre.shape
    f = np.zeros_like(pre)
    arch = opts["arch"]
    for s in range(n_layers):
        for n in range(n_rows):
            for j in range(n_feat):
                v = pre[n, s, j]
                if arch == "relu":
                    f[n, s, j] = relu(v)
                elif arch == "jumprelu":
                    f[n, s, j] = v if v > P["threshold"][s, j] else 0.0
                elif arch == "topk":
                    rank = sum(1 for jj in range(n_feat) if pre[n, s, jj] > v)
                    f[n, s, j] = relu(v) if rank < opts["k"] else 0.0
                else:  # batchtopk: rank of relu(v) among all N*F entries of layer s
                    rv = relu(v)
                    rank = sum(1 for nn in range(n_rows) for jj in range(n_feat) if relu(pre[nn, s, jj]) > rv)
                    f[n, s, j] = rv if rank < n_rows * opts["k"] else 0.0
    return f


def loop_omega(P, n_layers, n_feat):
    omega = np.zeros((n_layers, n_feat))
    for s in range(n_layers):
        W = P[f"W_dec_{s}"]
        for j in range(n_feat):
            acc = 0.0
            for t in range(s, n_layers):
                for i in range(W.shape[2]):
                    acc += W[j, t - s, i] ** 2
            omega[s, j] = math.sqrt(acc)
    return omega


def loop_decode(P, acts, n_layers, d_out):
    """sum_{s <= t} sum_j acts[n, s, j] W_dec_s[j, t - s, i], no bias."""
    n_rows, _, n_feat = acts.shape
    out = np.zeros((n_rows, n_layers, d_out))
    for n in range(n_rows):
        for t in range(n_layers):
            for i in range(d_out):
                acc = 0.0
                for s in range(t + 1):
                    for j in range(n_feat):
                        acc += acts[n, s, j] * P[f"W_dec_{s}"][j, t - s, i]
                out[n, t, i] = acc
    return out


def loop_fvu_sum(target, pred):
    n_rows, n_layers, d = target.shape
    total = 0.0
    for t in range(n_layers):
        mean = [sum(target[n, t, i] for n in range(n_rows)) / n_rows for i in range(d)]
        num = sum((target[n, t, i] - pred[n, t, i]) ** 2 for n in range(n_rows) for i in range(d))
        den = sum((target[n, t, i] - mean[i]) ** 2 for n in range(n_rows) for i in range(d))
        total += num / den
    return total


def loop_forward(P, opts, x, y, dead):
    """Everything the reference computes, by loops. P: numpy params; x, y, dead numpy."""
    n_rows, n_layers, d_in = x.shape
    n_feat, d_out = P["b_enc"].shape[1], P["b_dec"].shape[1]
    pre = loop_pre(P, x)
    f = loop_activation(P, opts, pre)
    omega = loop_omega(P, n_layers, n_feat)
    y_hat = loop_decode(P, f, n_layers, d_out)
    for n in range(n_rows):
        for t in range(n_layers):
            for i in range(d_out):
                y_hat[n, t, i] += P["b_dec"][t, i]
                if opts.get("skip"):
                    for a in range(d_in):
                        y_hat[n, t, i] += x[n, t, a] * P["W_skip"][t, a, i]

    if opts.get("reconstruction", "fvu") == "fvu":
        rec = loop_fvu_sum(y, y_hat)
    else:
        rec = 0.0
        for t in range(n_layers):
            acc = 0.0
            for n in range(n_rows):
                norm = math.sqrt(sum(y[n, t, i] ** 2 for i in range(d_out)))
                for i in range(d_out):
                    acc += (y_hat[n, t, i] - y[n, t, i]) ** 2 / norm
            rec += acc / (n_rows * d_out)

    lam = opts.get("sparsityCoefficient", 0.0)
    sparsity = 0.0
    for n in range(n_rows):
        for s in range(n_layers):
            for j in range(n_feat):
                kind = opts.get("sparsity", "none")
                if kind == "l1":
                    sparsity += f[n, s, j] * omega[s, j]
                elif kind == "tanh":
                    sparsity += math.tanh(opts["tanhScale"] * f[n, s, j] * omega[s, j])
                elif kind == "l0":
                    sparsity += 1.0 if pre[n, s, j] > P["threshold"][s, j] else 0.0
    sparsity *= lam / n_rows

    preact = 0.0
    for n in range(n_rows):
        for s in range(n_layers):
            for j in range(n_feat):
                if opts["arch"] == "jumprelu":
                    preact += relu(P["threshold"][s, j] - pre[n, s, j])
                else:
                    preact += relu(-pre[n, s, j])
    preact *= opts.get("preactCoefficient", 0.0) / n_rows

    auxk = 0.0
    faux = np.zeros_like(pre)
    if opts["arch"] in ("topk", "batchtopk") and opts.get("auxkAlpha", 0) > 0 and dead.any():
        e = y - y_hat
        for s in range(n_layers):
            dead_js = [j for j in range(n_feat) if dead[s, j]]
            k_s = min(opts["kAux"], len(dead_js))
            for n in range(n_rows):
                for j in dead_js:
                    rank = sum(1 for jj in dead_js if pre[n, s, jj] > pre[n, s, j])
                    if rank < k_s:
                        faux[n, s, j] = relu(pre[n, s, j])
        e_hat = loop_decode(P, faux, n_layers, d_out)
        auxk = opts["auxkAlpha"] * loop_fvu_sum(e, e_hat)

    losses = {"reconstruction": rec, "sparsity": sparsity, "preact": preact, "auxk": auxk}
    losses["total"] = rec + sparsity + preact + auxk
    return {"pre": pre, "f": f, "y_hat": y_hat, "omega": omega, "faux": faux, "losses": losses}


def loop_threshold_grad(P, opts, x, y, out):
    """Closed-form straight-through gradient of the total loss w.r.t. theta (jumprelu), by loops.

    theta enters through f (df/dtheta = -(theta/eps) K(u)), the l0 step (dH/dtheta = -(1/eps) K(u))
    and the preact term (d relu(theta - pre)/dtheta = 1[theta > pre]), u = (pre - theta)/eps.
    The upstream dL/df is derived by hand from the reconstruction and sparsity formulas.
    """
    pre, f, y_hat, omega = out["pre"], out["f"], out["y_hat"], out["omega"]
    n_rows, n_layers, n_feat = pre.shape
    d_out = y.shape[2]
    eps, th = opts["bandwidth"], P["threshold"]
    # dR/dy_hat
    dy = np.zeros_like(y)
    for t in range(n_layers):
        if opts.get("reconstruction", "fvu") == "fvu":
            mean = [sum(y[n, t, i] for n in range(n_rows)) / n_rows for i in range(d_out)]
            den = sum((y[n, t, i] - mean[i]) ** 2 for n in range(n_rows) for i in range(d_out))
            for n in range(n_rows):
                for i in range(d_out):
                    dy[n, t, i] = -2.0 * (y[n, t, i] - y_hat[n, t, i]) / den
        else:
            for n in range(n_rows):
                norm = math.sqrt(sum(y[n, t, i] ** 2 for i in range(d_out)))
                for i in range(d_out):
                    dy[n, t, i] = 2.0 * (y_hat[n, t, i] - y[n, t, i]) / (n_rows * d_out * norm)
    lam = opts.get("sparsityCoefficient", 0.0)
    lam_p = opts.get("preactCoefficient", 0.0)
    kind = opts.get("sparsity", "none")
    grad = np.zeros((n_layers, n_feat))
    for s in range(n_layers):
        W = P[f"W_dec_{s}"]
        for j in range(n_feat):
            acc = 0.0
            for n in range(n_rows):
                g = 0.0  # dL/df[n, s, j]
                for t in range(s, n_layers):
                    for i in range(d_out):
                        g += dy[n, t, i] * W[j, t - s, i]
                if kind == "l1":
                    g += lam / n_rows * omega[s, j]
                elif kind == "tanh":
                    c = opts["tanhScale"]
                    g += lam / n_rows * c * omega[s, j] * (1.0 - math.tanh(c * f[n, s, j] * omega[s, j]) ** 2)
                u = (pre[n, s, j] - th[s, j]) / eps
                kernel = 1.0 if abs(u) < 0.5 else 0.0
                acc += g * (-th[s, j] / eps) * kernel
                if kind == "l0":
                    acc += lam / n_rows * (-1.0 / eps) * kernel
                if th[s, j] > pre[n, s, j]:
                    acc += lam_p / n_rows
            grad[s, j] = acc
    return grad


# ---------------------------------------------------------------------------------------
# Comparisons.
# ---------------------------------------------------------------------------------------


def max_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max()) if a.size else 0.0


def fd_gradients(params, opts, x, y, dead, residual, names):
    """Central differences of the reference's loss.total (AuxK residual fixed at `residual`)."""
    work = {n: p.detach().clone() for n, p in params.items()}
    result = {}
    with torch.no_grad():
        for name in names:
            flat = work[name].view(-1)
            g = torch.zeros_like(flat)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + H
                lp = ref.forward(work, opts, x, y, dead, residual)["loss.total"].item()
                flat[i] = old - H
                lm = ref.forward(work, opts, x, y, dead, residual)["loss.total"].item()
                flat[i] = old
                g[i] = (lp - lm) / (2 * H)
            result[name] = g.view_as(work[name])
    return result


def check_case(opts, params, x, y, dead, fd=True):
    """Return a list of failure messages (empty = pass)."""
    failures = []
    out = ref.forward_with_grads(params, opts, x, y, dead)
    P = to_numpy(params)
    loop = loop_forward(P, {**ref.check_options(opts)}, x.numpy(), y.numpy(), dead.numpy())
    for key in ("pre", "f", "y_hat", "omega"):
        err = max_err(out[key], loop[key])
        if not err <= FWD_TOL * (1 + np.abs(loop[key]).max()):
            failures.append(f"{key}: max |ref - loops| = {err:.3g}")
    for term, value in loop["losses"].items():
        got = out[f"loss.{term}"].item()
        if not abs(got - value) <= FWD_TOL * (1 + abs(value)):
            failures.append(f"loss.{term}: ref {got!r} vs loops {value!r}")

    if fd:
        names = [n for n in params if not (n == "threshold")]
        residual = (y - out["y_hat"]).detach()
        fd_g = fd_gradients(params, opts, x, y, dead, residual, names)
        for name in names:
            g = out["grad." + name]
            bad = (g - fd_g[name]).abs() > FD_ABS + FD_REL * g.abs()
            if bad.any():
                failures.append(f"grad.{name}: {int(bad.sum())} entries differ from finite differences "
                                f"(max {float((g - fd_g[name]).abs().max()):.3g})")
    if "threshold" in params:
        expected = loop_threshold_grad(P, ref.check_options(opts), x.numpy(), y.numpy(), loop)
        err = max_err(out["grad.threshold"], expected)
        if not err <= 1e-10 * (1 + np.abs(expected).max()):
            failures.append(f"grad.threshold: max |ref - closed form| = {err:.3g}")
    return failures, out, loop


# ---------------------------------------------------------------------------------------
# Individual checks.
# ---------------------------------------------------------------------------------------

FAILED = []


def expect(condition, message):
    if not condition:
        FAILED.append(message)
        print("FAIL:", message)


def check_all_combos():
    combos = all_combos()
    nonzero_threshold = 0
    for index, opts in enumerate(combos):
        params, x, y, dead = make_case(opts, seed=1000 + index)
        failures, out, loop = check_case(opts, params, x, y, dead)
        for msg in failures:
            expect(False, f"{json.dumps(opts, sort_keys=True)}: {msg}")
        # The terms the options enable must be active (so the comparisons above mean something).
        for term, on in (("sparsity", opts["sparsity"] != "none"), ("preact", "preactCoefficient" in opts),
                         ("auxk", "auxkAlpha" in opts)):
            value = out[f"loss.{term}"].item()
            expect((value != 0) == on, f"{opts}: loss.{term} = {value} but enabled = {on}")
        for name in params:
            if name != "threshold":
                expect(out["grad." + name].abs().max() > 0, f"{opts}: grad.{name} is all zero")
        if "threshold" in params:
            nonzero_threshold += int(out["grad.threshold"].abs().max() > 0)
    expect(nonzero_threshold == sum(c["arch"] == "jumprelu" for c in combos), "some grad.threshold all zero")
    return len(combos)


def check_auxk_special_cases():
    for arch in ("topk", "batchtopk"):
        opts = make_options(arch, "fvu", "l1", True, True, True)
        params, x, y, dead = make_case(opts, seed=7)
        with_aux = ref.forward_with_grads(params, opts, x, y, dead)
        # No dead feature: auxk = 0 and the gradients equal the auxkAlpha = 0 run.
        none_dead = ref.forward_with_grads(params, opts, x, y, torch.zeros_like(dead))
        no_alpha = ref.forward_with_grads(params, make_options(arch, "fvu", "l1", True, False, True), x, y, dead)
        expect(none_dead["loss.auxk"].item() == 0.0, f"{arch}: auxk with no dead feature is not 0")
        for name in params:
            expect(torch.equal(none_dead["grad." + name], no_alpha["grad." + name]),
                   f"{arch}: grad.{name} with no dead feature differs from auxkAlpha = 0")
        # AuxK reaches the dead features' encoder weights only (plus the decoders).
        diff = (with_aux["grad.W_enc"] - no_alpha["grad.W_enc"]).abs().sum(dim=1)  # [L, F]
        expect(bool((diff[~dead] == 0).all()) and bool((diff[dead] > 0).any()),
               f"{arch}: AuxK gradient reaches W_enc of live features or of no dead feature")
        loop = loop_forward(to_numpy(params), ref.check_options(opts), x.numpy(), y.numpy(), dead.numpy())
        per_layer = (loop["faux"] > 0).sum(axis=2)
        expect(per_layer[:, 1].max() <= 1 and per_layer[:, 2].max() == 0 and per_layer[:, 0].max() <= K_AUX,
               f"{arch}: k_s = min(kAux, D_s) violated in the loop implementation")
    # dead is ignored by relu / jumprelu.
    for arch in ("relu", "jumprelu"):
        opts = make_options(arch, "fvu", "l1", True, False, False)
        params, x, y, dead = make_case(opts, seed=8)
        a = ref.forward_with_grads(params, opts, x, y, dead)
        b = ref.forward_with_grads(params, opts, x, y, None)
        expect(all(torch.equal(a[k], b[k]) for k in a), f"{arch}: dead changes the result")


def check_cli():
    cases = [
        (make_options("jumprelu", "paper", "l0", True, False, True), torch.float64),
        (make_options("batchtopk", "fvu", "tanh", True, True, False), torch.float64),
        (make_options("topk", "paper", "l1", False, True, True), torch.float32),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for index, (opts, dtype) in enumerate(cases):
            params, x, y, dead = make_case(opts, seed=500 + index)
            stored = {n: p.to(dtype) for n, p in params.items()}
            stored.update(x=x.to(dtype), y=y.to(dtype), dead=dead.to(torch.uint8))
            in_path, opt_path, out_path = (os.path.join(tmp, f"{index}.{e}") for e in ("in.st", "json", "out.st"))
            save_file(stored, in_path)
            with open(opt_path, "w") as fh:
                json.dump(opts, fh)
            proc = subprocess.run([sys.executable, os.path.join(HERE, "clt_reference.py"), in_path, opt_path,
                                   out_path], capture_output=True, text=True)
            expect(proc.returncode == 0, f"CLI failed: {proc.stderr}")
            if proc.returncode != 0:
                continue
            got = load_file(out_path)
            want = ref.forward_with_grads({n: p.to(torch.float64) for n, p in stored.items()
                                           if n not in ("x", "y", "dead")}, opts,
                                          stored["x"].double(), stored["y"].double(), dead)
            expected_names = {"pre", "f", "y_hat", "omega"} | {f"loss.{t}" for t in ref.LOSS_NAMES} | \
                {"grad." + n for n in params}
            expect(set(got) == expected_names, f"CLI output names {sorted(got)}")
            for name, value in got.items():
                expect(value.dtype == torch.float64, f"CLI {name} dtype {value.dtype}")
                expect(torch.equal(value, want[name].reshape(value.shape)) and value.shape == want[name].shape,
                       f"CLI {name} differs from the in-process result")
            for t in ref.LOSS_NAMES:
                expect(list(got[f"loss.{t}"].shape) == [], f"CLI loss.{t} has shape {list(got[f'loss.{t}'].shape)}")
        # An error exits non-zero with the field named.
        opts = {"arch": "topk"}
        with open(opt_path, "w") as fh:
            json.dump(opts, fh)
        proc = subprocess.run([sys.executable, os.path.join(HERE, "clt_reference.py"), in_path, opt_path, out_path],
                              capture_output=True, text=True)
        expect(proc.returncode != 0 and "options.k" in proc.stderr, f"CLI error path: {proc.returncode} {proc.stderr}")


def check_errors():
    base = make_options("topk", "fvu", "l1", False, True, True)
    params, x, y, dead = make_case(base, seed=3)
    jump = make_options("jumprelu", "fvu", "l0", False, False, False)
    jparams, jx, jy, jdead = make_case(jump, seed=4)

    def tensors_of(p, xx, yy, dd):
        t = dict(p)
        t.update(x=xx, y=yy, dead=dd)
        return t

    option_cases = [
        ({"arch": "gelu"}, "options.arch"),
        ({"arch": "topk"}, "options.k"),
        ({"arch": "topk", "k": 0}, "options.k"),
        ({"arch": "topk", "k": True}, "options.k"),
        ({"arch": "topk", "k": 1.5}, "options.k"),
        ({"arch": "jumprelu"}, "options.bandwidth"),
        ({"arch": "jumprelu", "bandwidth": -1}, "options.bandwidth"),
        ({"arch": "relu", "sparsity": "l0", "sparsityCoefficient": 1}, "options.sparsity"),
        ({"arch": "relu", "sparsity": "l2"}, "options.sparsity"),
        ({"arch": "relu", "sparsity": "l1"}, "options.sparsityCoefficient"),
        ({"arch": "relu", "sparsity": "l1", "sparsityCoefficient": "1"}, "options.sparsityCoefficient"),
        ({"arch": "relu", "sparsity": "tanh", "sparsityCoefficient": 1}, "options.tanhScale"),
        ({"arch": "relu", "auxkAlpha": 1, "kAux": 2}, "options.auxkAlpha"),
        ({"arch": "topk", "k": 1, "auxkAlpha": 1}, "options.kAux"),
        ({"arch": "relu", "sparsityCoeff": 1}, "sparsityCoeff"),
        ({"arch": "relu", "skip": "yes"}, "options.skip"),
        ({"arch": "relu", "reconstruction": "mse"}, "options.reconstruction"),
        ({"arch": "relu", "preactCoefficient": -1}, "options.preactCoefficient"),
        ({"arch": "relu", "preactCoefficient": float("nan")}, "options.preactCoefficient"),
        ([], "JSON object"),
    ]
    for opts, needle in option_cases:
        try:
            ref.check_options(opts)
            expect(False, f"check_options({opts}) did not raise")
        except ValueError as err:
            expect(needle in str(err), f"check_options({opts}) message {err!r} lacks {needle!r}")

    def drop(t, name):
        t = dict(t)
        del t[name]
        return t

    def put(t, name, value):
        t = dict(t)
        t[name] = value
        return t

    good = tensors_of(params, x, y, dead)
    jgood = tensors_of(jparams, jx, jy, jdead)
    no_skip = {**base, "skip": False}
    input_cases = [
        (base, put(good, "W_dec_1", torch.zeros(F, L, D_OUT)), "W_dec_1"),
        (base, drop(good, "W_dec_2"), "W_dec_2"),
        (base, drop(good, "W_skip"), "W_skip"),
        (no_skip, good, "W_skip"),
        (base, put(good, "threshold", torch.ones(L, F)), "threshold"),
        (jump, drop(jgood, "threshold"), "threshold"),
        (jump, put(jgood, "threshold", -jparams["threshold"]), "threshold"),
        (base, put(good, "x", torch.zeros(N, L + 1, D_IN)), "x"),
        (base, put(good, "y", torch.zeros(N, L, D_OUT + 1)), "y"),
        (base, put(good, "dead", dead.double()), "dead"),
        (base, put(good, "dead", torch.full((L, F), 2, dtype=torch.uint8)), "dead"),
        (base, put(good, "dead", dead[:, :-1]), "dead"),
        (base, drop(good, "dead"), "dead"),
        ({**base, "k": F + 1}, good, "options.k"),
        (base, put(good, "y", torch.ones(N, L, D_OUT)), "variance"),
        ({**base, "reconstruction": "paper"}, put(good, "y", torch.zeros(N, L, D_OUT)), "y"),
        (base, put(good, "W_enc", torch.zeros(L, D_IN, F, dtype=torch.int32)), "W_enc"),
        (base, put(good, "W_enc", torch.zeros(L, D_IN)), "W_enc"),
        (base, put(good, "b_enc", torch.full((L, F), float("inf"))), "b_enc"),
        (base, put(good, "extra", torch.zeros(1)), "extra"),
    ]
    for opts, tensors, needle in input_cases:
        try:
            ref.check_inputs(tensors, ref.check_options(opts))
            expect(False, f"check_inputs did not raise (expected {needle!r})")
        except ValueError as err:
            expect(needle in str(err), f"check_inputs message {err!r} lacks {needle!r}")
    # And the good inputs pass, with dead converted to bool and everything to float64.
    p, xx, yy, dd = ref.check_inputs({**good, "dead": dead.to(torch.uint8), "x": x.float()}, ref.check_options(base))
    expect(dd.dtype == torch.bool and xx.dtype == torch.float64 and set(p) == set(params), "check_inputs outputs")


@contextlib.contextmanager
def patched(name, replacement):
    original = getattr(ref, name)
    setattr(ref, name, replacement)
    try:
        yield
    finally:
        setattr(ref, name, original)


def check_mutations():
    """Each mutation of the reference must be caught by check_case."""
    original_decode_features = ref.decode_features

    def drop_slice(params, f):  # forget source layer 0 -> target layer 1
        out = original_decode_features(params, f)
        W = params["W_dec_0"]
        return out - torch.stack([torch.zeros_like(out[:, 0]), f[:, 0] @ W[:, 1], torch.zeros_like(out[:, 2])], 1)

    def norm_first_slice_only(params):
        return torch.stack([ref.decoders(params)[s][:, 0].norm(dim=-1) for s in range(L)])

    original_norms = ref.decoder_norms

    def detached_norms(params):
        return original_norms(params).detach()

    def per_row_batchtopk(pre, k):
        return ref.topk_activation(pre, k)

    def fvu_no_mean(target, prediction):
        return ((target - prediction).pow(2).sum(dim=(0, 2)) / target.pow(2).sum(dim=(0, 2))).sum()

    original_step = ref.Step

    class StepDoubleKernel(original_step):  # l0 pseudo-derivative twice too large
        @staticmethod
        def backward(ctx, grad):
            d_pre, d_theta, _ = original_step.backward(ctx, grad)
            return d_pre, 2 * d_theta, None

    def preact_ignoring_threshold(params, opts, pre):
        return opts["preactCoefficient"] * torch.relu(-pre).sum() / pre.shape[0]

    mutations = [
        ("Step", StepDoubleKernel, make_options("jumprelu", "fvu", "l0", False, False, False), False),
        ("preact_loss", preact_ignoring_threshold, make_options("jumprelu", "fvu", "none", True, False, False), False),
        ("decode_features", drop_slice, make_options("relu", "fvu", "none", False, False, False), False),
        ("decoder_norms", norm_first_slice_only, make_options("relu", "fvu", "l1", False, False, False), False),
        ("decoder_norms", norm_first_slice_only, make_options("jumprelu", "paper", "tanh", False, False, True), False),
        ("decoder_norms", detached_norms, make_options("topk", "fvu", "l1", False, False, False), True),
        ("jump_theta_factor", lambda th, eps: -1.0 / eps + 0 * th,
         make_options("jumprelu", "fvu", "l1", False, False, False), False),
        ("auxk_residual", lambda y, y_hat: y - y_hat, make_options("topk", "fvu", "none", False, True, False), True),
        ("batchtopk_activation", per_row_batchtopk, make_options("batchtopk", "fvu", "none", False, False, False), False),
        ("fvu_per_layer_sum", fvu_no_mean, make_options("relu", "fvu", "none", False, False, False), False),
    ]
    for name, replacement, opts, fd in mutations:
        params, x, y, dead = make_case(opts, seed=99)
        clean, _, _ = check_case(opts, params, x, y, dead, fd=fd)
        expect(not clean, f"unmutated reference fails the mutation case {name}: {clean}")
        with patched(name, replacement):
            failures, _, _ = check_case(opts, params, x, y, dead, fd=fd)
        expect(bool(failures), f"mutation {name} ({opts['arch']}, {opts['sparsity']}) was not caught")
        print(f"  mutation {name:22s} caught: {failures[0] if failures else 'NOT CAUGHT'}")
    return len(mutations)


def main():
    start = time.time()
    n = check_all_combos()
    print(f"{n} option combinations: forward, losses, gradients ({time.time() - start:.1f} s)")
    check_auxk_special_cases()
    print("AuxK special cases and dead-mask handling checked")
    check_errors()
    print("validation error paths checked")
    check_cli()
    print("CLI checked")
    m = check_mutations()
    print(f"{m} mutations checked")
    print(f"total {time.time() - start:.1f} s")
    if FAILED:
        print(f"{len(FAILED)} FAILURES")
        sys.exit(1)
    print("all CLT reference checks passed")


if __name__ == "__main__":
    main()
