"""Self-check for feature_dashboard_reference.py (CPU only, a few seconds).

Builds small random inputs and compares every output of the reference against a second,
independently written computation made of plain Python loops (no numpy reductions, sorts or
matrix products): per-entry scans for counts / max / min / row scores / argpos, a doubling loop
for the histogram range, a bin search by comparisons against the bin edges, sorted() with explicit
(value, index) keys for the rankings, math.fsum dot products for logit effects and de-embeddings.
The inputs cover:
  * sparse activations, never-active features, features active in fewer rows than K (padding
    with row -1, score 0, argpos -1) and in every row (truncation to K);
  * ties of the maximum inside a row (argpos = first index) and equal scores in different rows
    (lower row first; also 200 rows of quantised scores, where an unstable sort would show);
  * act_max exactly a power of two (R = act_max, values equal to R in the last bin), tiny
    (negative exponent) and large ranges, values exactly on bin edges, bins = 1, K > N;
  * integer-valued weights, so logit effects / de-embeddings have exact ties (lower index first);
  * tensors that must be ignored (W_enc of a layer without de-embedding, a layer not in OPTIONS);
  * the command line end to end (keys, dtypes, shapes, values), and bad inputs (missing and
    misshapen tensors, negative / NaN / integer activations, bad options), each refused with a
    ValueError naming the tensor or option, and a non-zero exit status from the CLI.
Also checks a few hand-computed values so that the two computations cannot agree by sharing a
misreading of the definitions.

Usage: /usr/bin/python3 test/reference/check_feature_dashboard_reference.py
"""

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
import feature_dashboard_reference as fdr  # noqa: E402
from safetensors_io import load_file, save_file  # noqa: E402

SCRIPT = os.path.join(HERE, "feature_dashboard_reference.py")
FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what)


# ---------------------------------------------------------------------------------------
# The second computation: loops over Python floats.
# ---------------------------------------------------------------------------------------


def slow_ranking(values, k):
    """values: list of floats -> (top idx, top val, bottom idx, bottom val), ties to the lower index."""
    desc = sorted(range(len(values)), key=lambda j: (-values[j], j))[:k]
    asc = sorted(range(len(values)), key=lambda j: (values[j], j))[:k]
    return desc, [values[j] for j in desc], asc, [values[j] for j in asc]


def slow_layer(acts, K, NB):
    """acts: nested lists [N][T][F] of floats -> dict of nested lists."""
    N, T, F = len(acts), len(acts[0]), len(acts[0][0])
    out = {key: [] for key in ("count", "act_max", "act_min", "hist", "hist_range",
                               "top_rows", "top_scores", "top_argpos")}
    row_scores = [[0.0] * F for _ in range(N)]
    for f in range(F):
        count, amax, amin, positives = 0, 0.0, None, []
        score, pos = [0.0] * N, [0] * N
        for r in range(N):
            best, best_t = acts[r][0][f], 0
            for t in range(T):
                v = acts[r][t][f]
                if v > best:  # strictly greater: the first maximum wins
                    best, best_t = v, t
                if v > 0:
                    count += 1
                    positives.append(v)
                    if amin is None or v < amin:
                        amin = v
                if v > amax:
                    amax = v
            score[r], pos[r] = best, best_t
            row_scores[r][f] = best
        if amax > 0:
            R = 1.0
            while R < amax:
                R *= 2.0
            while R / 2.0 >= amax:
                R /= 2.0
        else:
            R = 0.0
        hist = [0.0] * NB
        for v in positives:
            b = 0
            while b + 1 < NB and v >= (b + 1) * (R / NB):  # left edge of bin b + 1
                b += 1
            hist[b] += 1.0
        ranked = sorted((r for r in range(N) if score[r] > 0), key=lambda r: (-score[r], r))[:K]
        pad = K - len(ranked)
        out["count"].append(count)
        out["act_max"].append(amax)
        out["act_min"].append(0.0 if amin is None else amin)
        out["hist"].append(hist)
        out["hist_range"].append(R)
        out["top_rows"].append(ranked + [-1] * pad)
        out["top_scores"].append([score[r] for r in ranked] + [0.0] * pad)
        out["top_argpos"].append([pos[r] for r in ranked] + [-1] * pad)
    out["row_scores"] = row_scores
    return out


def slow_compute(tensors, options):
    K, NB, k = options["k"], options["bins"], options.get("logits", 0)
    lists = {name: t.to(torch.float64).tolist() for name, t in tensors.items()}
    out = {}
    for l in options["layers"]:
        for key, value in slow_layer(lists[f"acts_{l}"], K, NB).items():
            out[f"{key}_{l}"] = value
        F = len(lists[f"acts_{l}"][0][0])
        if k > 0 and f"W_dec_{l}" in lists:
            W, U = lists[f"W_dec_{l}"], lists["W_U"]
            d, V = len(U), len(U[0])
            rows = [slow_ranking([math.fsum(W[f][i] * U[i][j] for i in range(d)) for j in range(V)], k)
                    for f in range(F)]
            for n, key in enumerate(("top_idx", "top_val", "bottom_idx", "bottom_val")):
                out[f"logit_{key}_{l}"] = [row[n] for row in rows]
        if l in options.get("deembedding", []):
            E, W = lists["W_E"], lists[f"W_enc_{l}"]
            V, d = len(E), len(E[0])
            rows = [slow_ranking([math.fsum(E[j][i] * W[i][f] for i in range(d)) for j in range(V)], k)
                    for f in range(F)]
            for n, key in enumerate(("top_idx", "top_val", "bottom_idx", "bottom_val")):
                out[f"deemb_{key}_{l}"] = [row[n] for row in rows]
    return out


def expected_dtype(key):
    return np.int64 if key.split("_")[0] == "count" or "_idx_" in key or key.startswith(("top_rows", "top_argpos")) \
        else np.float64


def compare(got, want, case):
    """got: {name: numpy or torch}, want: {name: nested lists}."""
    got = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in got.items()}
    check(set(got) == set(want), f"{case}: output names {sorted(got)} != {sorted(want)}")
    for key in sorted(set(got) & set(want)):
        g, w = got[key], np.array(want[key], dtype=expected_dtype(key))
        check(g.dtype == expected_dtype(key), f"{case}: {key} dtype {g.dtype}")
        if g.shape != w.shape:
            check(False, f"{case}: {key} shape {g.shape} != {w.shape}")
            continue
        if key.startswith(("logit_", "deemb_")) and "_val_" in key:
            ok = np.allclose(g, w, rtol=1e-12, atol=1e-12)  # BLAS vs fsum rounding
        else:
            ok = np.array_equal(g, w)  # everything else is exact
        if not ok:
            bad = np.argwhere(g != w)[:3].tolist()
            check(False, f"{case}: {key} differs at {bad}: got {g[tuple(bad[0])] if bad else g}, "
                         f"want {w[tuple(bad[0])] if bad else w}")


# ---------------------------------------------------------------------------------------
# Inputs.
# ---------------------------------------------------------------------------------------


def sparse(gen, N, T, F, density=0.3):
    x = torch.relu(torch.randn(N, T, F, generator=gen) * 1.5)
    return x * (torch.rand(N, T, F, generator=gen) < density)


def case_main(gen):
    """Layers [0, 3], N=12, T=9, K=4, NB=16, 5 logits, de-embedding for layer 3."""
    N, T, d, V = 12, 9, 6, 30
    a0 = sparse(gen, N, T, 8)
    a0[:, :, 1] = 0  # never active
    a0[:, :, 2] = a0[:, :, 2].clamp(max=1.9)
    a0[4, 3, 2] = 2.0  # act_max exactly 2 -> R = 2, and 2.0 goes into the last bin
    a0[0, 0, 2] = 0.375  # exactly the left edge of bin 3 (0.375 / 2 * 16 = 3)
    a0[0, 1, 2] = 0.125  # exactly the left edge of bin 1
    a0[:, :, 3] = a0[:, :, 3].clamp(max=3.0)
    a0[5, 2, 3] = a0[5, 6, 3] = a0[5, 8, 3] = 3.5  # tie of the row maximum -> argpos 2, top row 5
    a0[:, :, 4] = 0
    a0[2, 7, 4], a0[9, 0, 4], a0[9, 5, 4] = 0.7, 0.4, 0.4  # two activating rows (< K), tie in row 9
    a0[:, :, 5] = a0[:, :, 5] * 0.001  # tiny values: negative exponent
    a0[3, 3, 5] = 0.003  # act_max 0.003 -> R = 2^-8
    a0[:, :, 6] = a0[:, :, 6] * 10
    a0[1, 1, 6] = 37.0  # R = 64
    a0[:, :, 7] = a0[:, :, 7].clamp(max=2.0)
    a0[1, 4, 7] = a0[8, 2, 7] = 2.5  # equal scores in rows 1 and 8: row 1 first
    a0[8, 0, 7] = 2.5  # ... and row 8's argpos is 0

    a3 = sparse(gen, N, T, 5)
    a3[:, :, 0] = a3[:, :, 0].clamp(max=0.45)
    a3[2, 2, 0] = a3[7, 1, 0] = 0.5  # act_max a power of two, twice, both in the last bin
    a3[:, :, 1] = 0.1 + torch.rand(N, T, generator=gen)  # every row activates: K cuts
    a3[:, :, 2] = 0
    a3[6, 4, 2] = 1e-3  # a single active entry
    a3[:, :, 4] = 0  # never active
    tensors = {
        "acts_0": a0, "acts_3": a3,
        "acts_7": sparse(gen, N, T, 3),  # not in OPTIONS.layers: ignored
        "W_dec_0": torch.randn(8, d, generator=gen), "W_dec_3": torch.randn(5, d, generator=gen),
        "W_U": torch.randn(d, V, generator=gen),
        "W_enc_0": torch.randn(d, 8, generator=gen),  # layer 0 has no de-embedding: ignored
        "W_enc_3": torch.randn(d, 5, generator=gen), "W_E": torch.randn(V, d, generator=gen),
    }
    options = {"layers": [0, 3], "k": 4, "bins": 16, "logits": 5, "deembedding": [3]}
    return {k: v.float().contiguous() for k, v in tensors.items()}, options


def case_ties(gen):
    """Integer weights (exact ties in the rankings), bins = 1, K > N; no W_dec for layer 2."""
    N, T, d, V = 3, 5, 4, 10
    acts1 = sparse(gen, N, T, 4, density=0.5)
    acts1[:, :, 0] = 0
    acts2 = sparse(gen, N, T, 2, density=0.5)
    W_dec = torch.randint(-2, 3, (4, d), generator=gen).float()
    W_U = torch.randint(-1, 2, (d, V), generator=gen).float()
    W_U[:, 7] = W_U[:, 2]  # identical columns: exact ties in every feature's logit effects
    W_E = torch.randint(-1, 2, (V, d), generator=gen).float()
    W_E[5] = W_E[1]
    W_enc = torch.randint(-2, 3, (d, 2), generator=gen).float()
    tensors = {"acts_1": acts1, "acts_2": acts2, "W_dec_1": W_dec, "W_U": W_U, "W_E": W_E, "W_enc_2": W_enc}
    options = {"layers": [2, 1], "k": 20, "bins": 1, "logits": 4, "deembedding": [2]}
    return tensors, options


def hand_checks(out):
    """A few values worked out by hand from case_main's construction."""
    g = lambda name: out[name].numpy() if isinstance(out[name], torch.Tensor) else out[name]  # noqa: E731
    check(g("hist_range_0")[2] == 2.0 and g("act_max_0")[2] == 2.0, "hand: act_max 2 -> R 2")
    check(g("hist_0")[2, 15] >= 1 and g("hist_0")[2, 3] >= 1 and g("hist_0")[2, 1] >= 1, "hand: edges / last bin")
    check(g("hist_range_0")[1] == 0 and g("count_0")[1] == 0 and not g("hist_0")[1].any(), "hand: never active")
    check(g("act_min_0")[1] == 0 and g("act_max_0")[1] == 0, "hand: never active min / max")
    check((g("top_rows_0")[1] == -1).all() and (g("top_argpos_0")[1] == -1).all()
          and (g("top_scores_0")[1] == 0).all(), "hand: never active -> padding")
    check(g("top_rows_0")[3, 0] == 5 and g("top_argpos_0")[3, 0] == 2 and g("top_scores_0")[3, 0] == 3.5,
          "hand: row-maximum tie -> argpos 2")
    check(g("top_rows_0")[4].tolist() == [2, 9, -1, -1] and g("top_argpos_0")[4].tolist() == [7, 0, -1, -1],
          f"hand: two activating rows, got {g('top_rows_0')[4].tolist()} / {g('top_argpos_0')[4].tolist()}")
    check(g("count_0")[4] == 3 and math.isclose(g("act_min_0")[4], 0.4, rel_tol=1e-7), "hand: count / min")
    check(g("hist_range_0")[5] == 2.0 ** -8, f"hand: R = 2^-8, got {g('hist_range_0')[5]}")
    check(g("hist_range_0")[6] == 64.0, "hand: R = 64")
    check(g("top_rows_0")[7, :2].tolist() == [1, 8] and g("top_argpos_0")[7, :2].tolist() == [4, 0],
          "hand: equal row scores -> lower row first")
    check(g("hist_range_3")[0] == 0.5 and g("hist_3")[0, 15] >= 2, "hand: R = 0.5, two values in the last bin")
    check((g("top_rows_3")[1] >= 0).all(), "hand: every row activates -> K rows")
    check(g("count_3")[2] == 1 and g("top_rows_3")[2].tolist() == [6, -1, -1, -1]
          and g("top_argpos_3")[2, 0] == 4, "hand: single entry")
    check(g("row_scores_0").shape == (12, 8) and g("hist_0").sum() == g("count_0").sum(), "hand: shapes / totals")
    check(not any(name.endswith("_7") for name in out), "hand: layer 7 ignored")


# ---------------------------------------------------------------------------------------
# Bad inputs.
# ---------------------------------------------------------------------------------------


def bad_cases(tensors, options):
    """(description, tensors, options, substring the error must contain)."""
    t, o = dict(tensors), dict(options)
    cases = []

    def case(what, changes=None, option_changes=None, drop=(), must=""):
        tt = {k: v for k, v in t.items() if k not in drop}
        tt.update(changes or {})
        oo = dict(o)
        oo.update(option_changes or {})
        for key in [k for k, v in oo.items() if v is None]:
            del oo[key]
        cases.append((what, tt, oo, must))

    a0 = t["acts_0"]
    neg, nan = a0.clone(), a0.clone()
    neg[1, 2, 3] = -0.5
    nan[0, 0, 0] = float("nan")
    case("missing acts", drop=("acts_3",), must="acts_3")
    case("N mismatch", {"acts_3": t["acts_3"][:5]}, must="acts_3")
    case("acts rank", {"acts_0": a0[0]}, must="acts_0")
    case("negative activation", {"acts_0": neg}, must="acts_0")
    case("NaN activation", {"acts_0": nan}, must="NaN")
    case("inf activation", {"acts_0": a0.clone().fill_(float("inf"))}, must="inf")
    case("integer activations", {"acts_0": a0.to(torch.int64)}, must="acts_0")
    case("bins not a power of two", option_changes={"bins": 12}, must="bins")
    case("bins zero", option_changes={"bins": 0}, must="bins")
    case("K zero", option_changes={"k": 0}, must="OPTIONS.k")
    case("K not an int", option_changes={"k": 2.5}, must="OPTIONS.k")
    case("missing K", option_changes={"k": None}, must="OPTIONS.k")
    case("empty layers", option_changes={"layers": []}, must="layers")
    case("duplicate layers", option_changes={"layers": [0, 0]}, must="layers")
    case("unknown option", option_changes={"topk": 3}, must="topk")
    case("negative logits", option_changes={"logits": -1}, must="logits")
    case("logits > V", option_changes={"logits": 31}, must="logits")
    case("deembedding without logits", option_changes={"logits": 0}, must="deembedding")
    case("deembedding layer not listed", option_changes={"deembedding": [5]}, must="deembedding")
    case("W_dec without W_U", drop=("W_U",), must="W_U")
    case("W_dec wrong F", {"W_dec_3": t["W_dec_3"][:4]}, must="W_dec_3")
    case("W_dec wrong d", {"W_dec_0": t["W_dec_0"][:, :5]}, must="W_dec_0")
    case("missing W_enc", drop=("W_enc_3",), must="W_enc_3")
    case("missing W_E", drop=("W_E",), must="W_E")
    case("W_E wrong V", {"W_E": t["W_E"][:29]}, must="W_E")
    case("W_enc wrong d", {"W_enc_3": t["W_enc_3"][:5]}, must="W_enc_3")
    case("NaN weight", {"W_U": t["W_U"].clone().fill_(float("nan"))}, must="W_U")
    case("unknown tensor", {"W_dec": t["W_dec_0"]}, must="W_dec")
    return cases


# ---------------------------------------------------------------------------------------


def main():
    start = time.time()
    gen = torch.Generator().manual_seed(1234)
    with tempfile.TemporaryDirectory() as tmp:
        # Case 1 through the command line.
        tensors, options = case_main(gen)
        paths = [os.path.join(tmp, n) for n in ("in.safetensors", "options.json", "out.safetensors")]
        save_file(tensors, paths[0])
        with open(paths[1], "w") as f:
            json.dump(options, f)
        proc = subprocess.run([sys.executable, SCRIPT, *paths], capture_output=True, text=True)
        check(proc.returncode == 0, f"CLI failed: {proc.stderr[-2000:]}")
        if proc.returncode == 0:
            out = load_file(paths[2])
            reloaded = load_file(paths[0])  # the exact float32 values the script saw
            compare(out, slow_compute(reloaded, options), "main (CLI)")
            hand_checks(out)

        # Case 2 in process, with exact ties in the rankings.
        tensors, options = case_ties(gen)
        out = fdr.compute(tensors, options)
        compare(out, slow_compute(tensors, options), "ties")
        check(out["logit_top_idx_1"].shape == (4, 4) and out["top_rows_1"].shape == (4, 20), "ties: shapes")
        check("logit_top_idx_2" not in out, "ties: no logit effects without W_dec_2")
        check("deemb_top_idx_1" not in out, "ties: no de-embedding for layer 1")
        # Columns 2 and 7 of W_U are equal: wherever both are ranked, 2 comes first.
        for f, row in enumerate(out["logit_top_idx_1"].tolist() + out["logit_bottom_idx_1"].tolist()):
            if 2 in row and 7 in row:
                check(row.index(2) < row.index(7), f"ties: column 2 before 7 in row {f}: {row}")

        # A few more random seeds, in process (smaller, quick).
        for seed in range(3):
            g = torch.Generator().manual_seed(100 + seed)
            acts = sparse(g, 7, 6, 5, density=0.2)
            acts[:, :, seed] = 0
            W_dec, W_U = torch.randn(5, 3, generator=g), torch.randn(3, 11, generator=g)
            tensors = {"acts_4": acts, "W_dec_4": W_dec, "W_U": W_U,
                       "W_enc_4": torch.randn(3, 5, generator=g), "W_E": torch.randn(11, 3, generator=g)}
            options = {"layers": [4], "k": 3, "bins": 8, "logits": 11, "deembedding": [4]}
            compare(fdr.compute(tensors, options), slow_compute(tensors, options), f"seed {seed}")

        # Many rows with equal scores (quantised activations), enough rows that an unstable sort
        # would reorder them: ties must still go to the lower row.
        g = torch.Generator().manual_seed(99)
        acts = torch.floor(sparse(g, 200, 4, 3, density=0.4) * 2).clamp(max=3) / 2
        tensors, options = {"acts_0": acts}, {"layers": [0], "k": 60, "bins": 4}
        compare(fdr.compute(tensors, options), slow_compute(tensors, options), "row-score ties")

        # Bad inputs, in process.
        tensors, options = case_main(torch.Generator().manual_seed(7))
        for what, tt, oo, must in bad_cases(tensors, options):
            try:
                fdr.compute(tt, oo)
            except ValueError as exc:
                check(must in str(exc), f"bad input '{what}': message {str(exc)!r} lacks {must!r}")
            else:
                check(False, f"bad input '{what}' was accepted")

        # Bad input through the command line: status 1, message on stderr, no output file.
        bad = dict(options, bins=12)
        with open(paths[1], "w") as f:
            json.dump(bad, f)
        os.remove(paths[2]) if os.path.exists(paths[2]) else None
        proc = subprocess.run([sys.executable, SCRIPT, *paths], capture_output=True, text=True)
        check(proc.returncode == 1 and "bins" in proc.stderr and not os.path.exists(paths[2]),
              f"CLI bad input: rc {proc.returncode}, stderr {proc.stderr[-500:]!r}")
        with open(paths[1], "w") as f:
            f.write("{not json")
        proc = subprocess.run([sys.executable, SCRIPT, *paths], capture_output=True, text=True)
        check(proc.returncode == 1 and "JSON" in proc.stderr, f"CLI bad JSON: rc {proc.returncode}")

    elapsed = time.time() - start
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed ({elapsed:.1f} s)")
        sys.exit(1)
    print(f"all feature dashboard reference checks passed ({elapsed:.1f} s)")


if __name__ == "__main__":
    main()
