"""Reads a cross-layer transcoder folder the way circuit-tracer's loader does and runs its forward.

The facts it follows are circuit-tracer's (circuit_tracer/transcoder/cross_layer_transcoder.py,
load_clt and _load_state_dict, 2026-04): the number of layers is the number of
W_enc_*.safetensors files; W_enc_{i}.safetensors holds W_enc_{i} [F, d], b_enc_{i} [F], b_dec_{i} [d]
and, for JumpReLU, threshold_{i} [F] (present in W_enc_0 decides); W_dec_{i}.safetensors holds
W_dec_{i} [F, L - i, d]; config.yaml has model_kind cross_layer_transcoder. The forward:
    pre[l] = x[l] @ W_enc[l]^T + b_enc[l]
    f = relu(pre)                    or  pre * (pre > threshold[l])  (jump_relu)
    y[t] = sum_{l <= t} f[l] @ W_dec_{l}[:, t - l, :] + b_dec[t]
Any key the loader would not read, or a missing one, is an error here (strict on purpose).

Usage: circuit_tracer_clt.py DIR X.safetensors OUT.safetensors   (x [N, L, d] -> y [N, L, d])
"""

import glob
import os
import re
import sys

import torch

from safetensors_io import load_file, save_file


def load(dir_):
    config = open(os.path.join(dir_, "config.yaml")).read()
    if not re.search(r"^model_kind:\s*['\"]?cross_layer_transcoder", config, re.M):
        raise ValueError("config.yaml: model_kind is not cross_layer_transcoder")
    n_layers = len(glob.glob(os.path.join(dir_, "W_enc_*.safetensors")))
    first = load_file(os.path.join(dir_, "W_enc_0.safetensors"))
    has_threshold = "threshold_0" in first
    d_transcoder, d_model = first["W_enc_0"].shape
    layers = []
    for i in range(n_layers):
        enc = load_file(os.path.join(dir_, f"W_enc_{i}.safetensors"))
        dec = load_file(os.path.join(dir_, f"W_dec_{i}.safetensors"))
        expected_enc = {f"W_enc_{i}", f"b_enc_{i}", f"b_dec_{i}"} | ({f"threshold_{i}"} if has_threshold else set())
        if set(enc) != expected_enc:
            raise ValueError(f"W_enc_{i}.safetensors has keys {sorted(enc)}, circuit-tracer reads {sorted(expected_enc)}")
        if set(dec) != {f"W_dec_{i}"}:
            raise ValueError(f"W_dec_{i}.safetensors has keys {sorted(dec)}, circuit-tracer reads ['W_dec_{i}']")
        shapes = {
            f"W_enc_{i}": (d_transcoder, d_model),
            f"b_enc_{i}": (d_transcoder,),
            f"b_dec_{i}": (d_model,),
            f"threshold_{i}": (d_transcoder,),
        }
        for key, t in enc.items():
            if tuple(t.shape) != shapes[key]:
                raise ValueError(f"{key} has shape {tuple(t.shape)}, expected {shapes[key]}")
        if tuple(dec[f"W_dec_{i}"].shape) != (d_transcoder, n_layers - i, d_model):
            raise ValueError(f"W_dec_{i} has shape {tuple(dec[f'W_dec_{i}'].shape)}, expected {(d_transcoder, n_layers - i, d_model)}")
        layers.append({k.rsplit("_", 1)[0]: v.double() for k, v in {**enc, **dec}.items()})
    return layers, has_threshold


def forward(layers, has_threshold, x):
    n, n_layers, d = x.shape
    y = torch.zeros(n, n_layers, layers[0]["b_dec"].shape[0], dtype=torch.float64)
    for t in range(n_layers):
        y[:, t] = layers[t]["b_dec"]
    for i, p in enumerate(layers):
        pre = x[:, i] @ p["W_enc"].T + p["b_enc"]
        f = pre * (pre > p["threshold"]) if has_threshold else torch.relu(pre)
        for t in range(i, n_layers):
            y[:, t] += f @ p["W_dec"][:, t - i, :]
    return y


if __name__ == "__main__":
    dir_, x_path, out_path = sys.argv[1:4]
    layers, has_threshold = load(dir_)
    x = load_file(x_path)["x"].double()
    save_file({"y": forward(layers, has_threshold, x)}, out_path)
