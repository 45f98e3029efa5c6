"""The logits of a random GPT-2 checkpoint in Hugging Face layout: ours (gpu-check hf-forward, on
--device) against Hugging Face transformers (CPU, float32), and against the repository's
plain-PyTorch reference (test/reference/hf_reference.py) when transformers is missing.

Usage: python3 tools/gpu-check/hf_compare.py DRIVER [--device cuda] [--tol 1e-4]
Prints one PASS / FAIL / SKIP line; exit status 1 on FAIL.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "test", "reference"))
from safetensors_io import load_file, save_file  # noqa: E402

CONFIG = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_layer=2, n_embd=64, n_head=4,
              vocab_size=300, n_positions=64, n_ctx=64, n_inner=None, activation_function="gelu_new",
              layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)


def random_checkpoint(folder, seed=0, std=0.2):
    """config.json + model.safetensors with GPT-2's Hugging Face keys ("transformer." prefix)."""
    g = torch.Generator().manual_seed(seed)
    c = CONFIG
    d, m = c["n_embd"], 4 * c["n_embd"]

    def rnd(*shape, s=std):
        return torch.randn(*shape, generator=g) * s

    t = {"wte.weight": rnd(c["vocab_size"], d), "wpe.weight": rnd(c["n_positions"], d),
         "ln_f.weight": 1 + rnd(d, s=0.1), "ln_f.bias": rnd(d, s=0.1)}
    for L in range(c["n_layer"]):
        p = f"h.{L}."
        t.update({p + "ln_1.weight": 1 + rnd(d, s=0.1), p + "ln_1.bias": rnd(d, s=0.1),
                  p + "attn.c_attn.weight": rnd(d, 3 * d), p + "attn.c_attn.bias": rnd(3 * d, s=0.1),
                  p + "attn.c_proj.weight": rnd(d, d), p + "attn.c_proj.bias": rnd(d, s=0.1),
                  p + "ln_2.weight": 1 + rnd(d, s=0.1), p + "ln_2.bias": rnd(d, s=0.1),
                  p + "mlp.c_fc.weight": rnd(d, m), p + "mlp.c_fc.bias": rnd(m, s=0.1),
                  p + "mlp.c_proj.weight": rnd(m, d), p + "mlp.c_proj.bias": rnd(d, s=0.1)})
    save_file({"transformer." + k: v for k, v in t.items()}, os.path.join(folder, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(c, f, indent=2)


def reference_logits(folder, tokens):
    try:
        import transformers
    except ImportError:
        from hf_reference import forward
        return forward(folder, tokens.tolist())["logits"], "the repository's plain-PyTorch reference (transformers missing)"
    try:  # the plain attention path (transformers >= 4.36 also has SDPA / flash paths)
        model = transformers.GPT2LMHeadModel.from_pretrained(folder, torch_dtype=torch.float32, attn_implementation="eager")
    except (TypeError, ValueError):
        model = transformers.GPT2LMHeadModel.from_pretrained(folder, torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(tokens).logits, f"transformers {transformers.__version__}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("driver")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpu-check-hf-") as tmp:
        random_checkpoint(tmp)
        tokens = torch.randint(0, CONFIG["vocab_size"], (3, 48), generator=torch.Generator().manual_seed(1))
        save_file({"input_ids": tokens}, os.path.join(tmp, "tokens.safetensors"))
        out = os.path.join(tmp, "logits.safetensors")
        r = subprocess.run([a.driver, "hf-forward", "--device", a.device, "--model", tmp,
                            "--tokens", os.path.join(tmp, "tokens.safetensors"), "--out", out],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"FAIL hf-forward: the driver failed: {r.stderr.strip() or r.stdout.strip()}")
            return 1
        ours = load_file(out)["logits"].double()
        ref, what = reference_logits(tmp, tokens)
        ref = ref.double()
        if ours.shape != ref.shape:
            print(f"FAIL hf gpt2 logits vs {what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}")
            return 1
        err = ((ours - ref).norm() / ref.norm()).item()
        ok = err <= a.tol
        print(f"{'PASS' if ok else 'FAIL'} hf gpt2 logits ({a.device}) vs {what}: rel.err {err:.2e} (tol {a.tol:.0e})")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
