"""Gemma Scope transcoder fixtures and their reference outputs, written with numpy from the published
definitions (Google's Gemma Scope tutorials, `JumpReLUSAE`):

    pre = x @ W_enc + b_enc
    f   = (pre > threshold) * relu(pre)
    y   = f @ W_dec + b_dec  (+ x @ affine_skip_connection, Gemma Scope 2 only)

Gemma Scope 1: params.npz (np.savez) with W_enc [d, F], W_dec [F, d], b_enc [F], b_dec [d], threshold [F].
Gemma Scope 2: params.safetensors with w_enc, w_dec, b_enc, b_dec, threshold, optional
affine_skip_connection [d, d], and a config.json.

Usage:
    gemma_scope_reference.py fixture OUT_DIR KIND SEED D F [--skip] [--compressed] [--negative-threshold]
        KIND gs1 | gs2; writes the transcoder files into OUT_DIR and OUT_DIR/../reference-<SEED>.safetensors
        with x [N, d], pre, f, y (float32; computed in float64).
    gemma_scope_reference.py corrupt OUT_DIR
        writes malformed and unusual params.npz variants into OUT_DIR/<name>/params.npz.
    gemma_scope_reference.py clt OUT_DIR SEED L D F [--skip]
        a Gemma Scope 2 cross-layer transcoder: OUT_DIR/layer_{l}_width_{F}_clt/params.safetensors for
        l = 0..L-1 with w_enc [d, F], b_enc [F], b_dec [d], threshold [F], w_dec [F, L, d] (source layer
        l's decoders into every layer; only t >= l are used), optional affine_skip_connection [d, d],
        and a config.json each; OUT_DIR/../reference-clt-<SEED>.safetensors with x [N, L, d] and
        y [N, L, d] = sum_{s <= t} f_s @ w_dec_s[:, t, :] + b_dec_t (+ x_t @ affine_t).
"""

import io
import json
import os
import sys
import zipfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save_file  # noqa: E402

N = 16


def arrays(seed, d, F, skip, negative_threshold):
    rng = np.random.default_rng(seed)
    p = {
        "W_enc": rng.normal(size=(d, F)) / np.sqrt(d),
        "W_dec": rng.normal(size=(F, d)) * 0.3,
        "b_enc": rng.normal(size=F) * 0.2,
        "b_dec": rng.normal(size=d) * 0.1,
        "threshold": np.abs(rng.normal(size=F)) * 0.5 + 0.05,
    }
    if negative_threshold:
        p["threshold"][: F // 4] = -np.abs(p["threshold"][: F // 4])
    if skip:
        p["affine_skip_connection"] = rng.normal(size=(d, d)) * 0.1
    p = {k: v.astype(np.float32) for k, v in p.items()}
    # Inputs with no pre-activation within 1e-3 of its threshold, so that float32 and float64 agree on every gate.
    rows = []
    while len(rows) < N:
        x = rng.normal(size=d).astype(np.float32)
        pre = x.astype(np.float64) @ p["W_enc"].astype(np.float64) + p["b_enc"]
        if np.min(np.abs(pre - p["threshold"])) > 1e-3 and np.min(np.abs(pre)) > 1e-3:
            rows.append(x)
    return p, np.stack(rows)


def reference(p, x):
    f64 = {k: v.astype(np.float64) for k, v in p.items()}
    x = x.astype(np.float64)
    pre = x @ f64["W_enc"] + f64["b_enc"]
    f = (pre > f64["threshold"]) * np.maximum(pre, 0)
    y = f @ f64["W_dec"] + f64["b_dec"]
    if "affine_skip_connection" in f64:
        y = y + x @ f64["affine_skip_connection"]
    return {"pre": pre, "f": f, "y": y}


def fixture(out_dir, kind, seed, d, F, skip, compressed, negative_threshold):
    os.makedirs(out_dir, exist_ok=True)
    p, x = arrays(seed, d, F, skip, negative_threshold)
    if kind == "gs1":
        (np.savez_compressed if compressed else np.savez)(os.path.join(out_dir, "params.npz"), **p)
    else:
        renamed = {("w_enc" if k == "W_enc" else "w_dec" if k == "W_dec" else k): torch.from_numpy(v) for k, v in p.items()}
        save_file(renamed, os.path.join(out_dir, "params.safetensors"))
        layer = int(os.environ.get("GS_LAYER", "0"))
        with open(os.path.join(out_dir, "config.json"), "w") as fh:
            json.dump(
                {
                    "hf_hook_point_in": f"model.layers.{layer}.pre_feedforward_layernorm.output",
                    "hf_hook_point_out": f"model.layers.{layer}.post_feedforward_layernorm.output",
                    "width": F,
                    "model_name": "google/gemma-3-1b-pt",
                    "architecture": "jump_relu",
                    "l0": 7,
                    "affine_connection": bool(skip),
                    "type": "transcoder",
                },
                fh,
            )
    ref = reference(p, x)
    out = {"x": torch.from_numpy(x)}
    out.update({k: torch.from_numpy(v.astype(np.float32)) for k, v in ref.items()})
    save_file(out, os.path.join(os.path.dirname(os.path.abspath(out_dir)), f"reference-{seed}.safetensors"))


def clt_fixture(out_dir, seed, L, d, F, skip):
    rng = np.random.default_rng(seed)
    layers = []
    for l in range(L):
        p = {
            "w_enc": rng.normal(size=(d, F)) / np.sqrt(d),
            "b_enc": rng.normal(size=F) * 0.2,
            "b_dec": rng.normal(size=d) * 0.1,
            "threshold": np.abs(rng.normal(size=F)) * 0.5 + 0.05,
            "w_dec": rng.normal(size=(F, L, d)) * 0.3,
        }
        # The entries a source layer never uses (targets below it) are noise that must be ignored.
        p["w_dec"][:, :l, :] = 1e3
        if skip:
            p["affine_skip_connection"] = rng.normal(size=(d, d)) * 0.1
        layers.append({k: v.astype(np.float32) for k, v in p.items()})
    x = rng.normal(size=(N, L, d)).astype(np.float32)
    f64 = [{k: v.astype(np.float64) for k, v in p.items()} for p in layers]
    xs = x.astype(np.float64)
    y = np.zeros((N, L, d))
    for s in range(L):
        pre = xs[:, s] @ f64[s]["w_enc"] + f64[s]["b_enc"]
        f = (pre > f64[s]["threshold"]) * np.maximum(pre, 0)
        for t in range(s, L):
            y[:, t] += f @ f64[s]["w_dec"][:, t, :]
    for t in range(L):
        y[:, t] += f64[t]["b_dec"]
        if skip:
            y[:, t] += xs[:, t] @ f64[t]["affine_skip_connection"]
    for l, p in enumerate(layers):
        folder = os.path.join(out_dir, f"layer_{l}_width_{F}_clt")
        os.makedirs(folder, exist_ok=True)
        save_file({k: torch.from_numpy(v) for k, v in p.items()}, os.path.join(folder, "params.safetensors"))
        with open(os.path.join(folder, "config.json"), "w") as fh:
            json.dump({
                "hf_hook_point_in": f"model.layers.{l}.pre_feedforward_layernorm.output",
                "hf_hook_point_out": f"model.layers.{l}.post_feedforward_layernorm.output",
                "width": F, "model_name": "google/gemma-3-270m", "architecture": "jump_relu",
                "affine_connection": bool(skip), "type": "clt",
            }, fh)
    save_file({"x": torch.from_numpy(x), "y": torch.from_numpy(y.astype(np.float32))},
              os.path.join(os.path.dirname(os.path.abspath(out_dir)), f"reference-clt-{seed}.safetensors"))


def npy_bytes(array, version=(1, 0)):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version, allow_pickle=False)
    return buf.getvalue()


def write_npz(path, members, compression=zipfile.ZIP_STORED):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in members.items():
            z.writestr(name, data)


def corrupt(out_dir):
    p, x = arrays(7, 8, 12, False, False)
    good = {f"{k}.npy": npy_bytes(v) for k, v in p.items()}

    def variant(name, **changes):
        members = dict(good)
        for k, v in changes.items():
            if v is None:
                members.pop(f"{k}.npy")
            else:
                members[f"{k}.npy"] = v
        write_npz(os.path.join(out_dir, name, "layer_3", "params.npz"), members)

    variant("bad-magic", W_enc=b"\x93NUMPX" + good["W_enc.npy"][6:])
    variant("truncated-data", W_dec=good["W_dec.npy"][:-5])
    variant("wrong-shape", W_dec=npy_bytes(p["W_dec"][:, :7]))
    nan = p["threshold"].copy()
    nan[3] = np.nan
    variant("nan", threshold=npy_bytes(nan))
    # ml_dtypes' bfloat16 is saved as raw 2-byte void data.
    variant("bf16", b_enc=npy_bytes(p["b_enc"].view(np.uint16).view("V2")))
    variant("version-4", b_dec=good["b_dec.npy"][:6] + b"\x04\x00" + good["b_dec.npy"][8:])
    variant("missing", threshold=None)
    variant("int-dtype", b_enc=npy_bytes(p["b_enc"].astype(np.int32)))
    variant("extra", W_skip=npy_bytes(np.zeros((8, 8), np.float32)))
    # Unusual but valid: version 2.0 and 3.0 headers, Fortran order, big-endian, float16 and float64, deflated members.
    members = dict(good)
    members["W_enc.npy"] = npy_bytes(np.asfortranarray(p["W_enc"]), version=(2, 0))
    members["W_dec.npy"] = npy_bytes(p["W_dec"].astype(">f4"), version=(3, 0))
    members["b_enc.npy"] = npy_bytes(p["b_enc"].astype(np.float64))
    members["b_dec.npy"] = npy_bytes(np.asfortranarray(p["b_dec"].astype(np.float16)))
    write_npz(os.path.join(out_dir, "unusual", "layer_3", "params.npz"), members, zipfile.ZIP_DEFLATED)
    # The exact values the unusual file holds, for the comparison.
    exact = dict(p)
    exact["b_dec"] = p["b_dec"].astype(np.float16).astype(np.float32)
    ref = reference(exact, x)
    out = {"x": torch.from_numpy(x)}
    out.update({k: torch.from_numpy(v.astype(np.float32)) for k, v in ref.items()})
    save_file(out, os.path.join(out_dir, "unusual-reference.safetensors"))
    # A file that is not a zip at all, and a zip cut short.
    os.makedirs(os.path.join(out_dir, "not-zip", "layer_3"), exist_ok=True)
    with open(os.path.join(out_dir, "not-zip", "layer_3", "params.npz"), "wb") as fh:
        fh.write(npy_bytes(p["W_enc"]))
    write_npz(os.path.join(out_dir, "cut", "layer_3", "params.npz"), good)
    path = os.path.join(out_dir, "cut", "layer_3", "params.npz")
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])


if __name__ == "__main__":
    if sys.argv[1] == "fixture":
        out, kind, seed, d, F = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
        flags = set(sys.argv[7:])
        fixture(out, kind, seed, d, F, "--skip" in flags, "--compressed" in flags, "--negative-threshold" in flags)
    elif sys.argv[1] == "corrupt":
        corrupt(sys.argv[2])
    elif sys.argv[1] == "clt":
        out, seed, L, d, F = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
        clt_fixture(out, seed, L, d, F, "--skip" in sys.argv[7:])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]}")
