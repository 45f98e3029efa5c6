"""PyTorch baseline for the attribution-graph benchmark (bench/graph.ts): circuit-tracer's algorithm.

Usage:
    /usr/bin/python3 bench/graph_baseline.py make-transcoders MODEL_DIR OUT_DIR --tokens-file F \
        --d-sae 24576 --active-per-token 24 [--seed 0]
    /usr/bin/python3 bench/graph_baseline.py run MODEL_DIR TRANSCODER_DIR --tokens-file F --batch-size 32 \
        [--max-feature-nodes N] [--row-topk K] [--threads N] [--out FILE.safetensors] \
        [--check-count K] [--no-prune]

MODEL_DIR is a Hugging Face GPT-2 folder (config.json, model.safetensors), run unprocessed (as
circuit-tracer loads models: fold_ln, center_writing_weights and center_unembed off). TRANSCODER_DIR
holds circuit-tracer per-layer transcoders (`layer_{l}.safetensors`: W_enc [F, d], b_enc [F],
W_dec [F, d], b_dec [d], the output bias; relu), reading `blocks.l.ln2.hook_normalized` (the MLP's
input: TransformerLens' LayerNorm hook_normalized is after the gain and bias) and writing
`blocks.l.hook_mlp_out`. Both files are read with test/reference/safetensors_io.py.

`run` follows circuit-tracer's attribution as /work/shared/docs/peers.md §1.2-1.4 and §1.10 describe
it, written independently in plain PyTorch (no TransformerLens):

1. setup (no grad): one forward of the prompt; every layer's transcoder activations (the active
   features, ordered by layer, position, feature), decoder vectors a_s d_s, encoder rows, error
   vectors mlp_out - reconstruction, token vectors W_E[token], the logit targets (the fewest top
   tokens reaching probability 0.95, at most 10) with demeaned unembedding columns;
2. one forward of the prompt expanded to batch_size copies with grad, attention patterns and norm
   scales detached, each MLP output replaced by its cached value plus the skip path (input x 0, no
   skip connection), the embedding a leaf; the feature input of every layer and the final norm's
   output cached;
3. rows, batch_size at a time: tensor hooks on the cached inputs overwrite the gradient of batch
   element i at the target's position with its reading vector, one backward from the highest layer of
   the batch, and gradient hooks on every MLP output and on the embedding contract the gradient with
   that layer's source vectors (features, errors, tokens) into a [row_size, batch] buffer; logit rows
   first, then features (all of them, or under --max-feature-nodes the most influential first,
   re-ranked every 4 batches by partial influence), into a dense float32 edge matrix;
4. the dense n x n float32 adjacency of all nodes [features | errors | tokens | logits];
5. pruning on the dense matrix (node threshold 0.8, edge threshold 0.98: row-normalised |A|,
   influence by power series, cumulative-share thresholds, dangling-node removal).

Deliberate difference from circuit-tracer: position 0's features and errors are not zeroed (circuit-tracer
zeroes them as a BOS artefact), so that the node set is exactly the one the library builds.
--row-topk K keeps each row's K largest |A| (the library's rowTopK), zeroing the rest in the dense rows.

Prints one JSON line: timings of each phase, counts, the peak RSS (VmHWM) after loading, before pruning
and at the end, and the RSS before pruning; --out writes the logit
rows, the rows of --check-count active features (floor((i + 0.5) n / K), i < K) and the active-feature table.
"""

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "test", "reference"))
from safetensors_io import load_file, save_file  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Model: Hugging Face GPT-2, unprocessed.


def load_gpt2(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "gpt2":
        raise SystemExit(f"{model_dir}: model_type {cfg.get('model_type')!r}; this baseline runs GPT-2 checkpoints")
    w = load_file(os.path.join(model_dir, "model.safetensors"))
    w = {(k[len("transformer.") :] if k.startswith("transformer.") else k): v.float() for k, v in w.items()}
    d, H, L = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    model = {
        "d": d, "H": H, "L": L, "eps": cfg.get("layer_norm_epsilon", 1e-5),
        "W_E": w["wte.weight"], "W_pos": w["wpe.weight"],
        "ln_f": (w["ln_f.weight"], w["ln_f.bias"]),
        "layers": [],
    }
    if cfg.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        raise SystemExit(f"activation {cfg.get('activation_function')!r} is not handled by this baseline")
    for l in range(L):
        p = f"h.{l}."
        model["layers"].append({
            "ln1": (w[p + "ln_1.weight"], w[p + "ln_1.bias"]),
            "W_qkv": w[p + "attn.c_attn.weight"], "b_qkv": w[p + "attn.c_attn.bias"],  # Conv1D: x @ W + b
            "W_O": w[p + "attn.c_proj.weight"], "b_O": w[p + "attn.c_proj.bias"],
            "ln2": (w[p + "ln_2.weight"], w[p + "ln_2.bias"]),
            "W_in": w[p + "mlp.c_fc.weight"], "b_in": w[p + "mlp.c_fc.bias"],
            "W_out": w[p + "mlp.c_proj.weight"], "b_out": w[p + "mlp.c_proj.bias"],
        })
    model["W_U"] = w["lm_head.weight"].t() if "lm_head.weight" in w else model["W_E"].t()  # [d, V]
    return model


def layer_norm(x, wb, eps, freeze):
    """TransformerLens LayerNorm (centre, divide by the scale, gain and bias); a frozen scale is detached."""
    x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    if freeze:
        scale = scale.detach()
    return x / scale * wb[0] + wb[1]


def forward(model, tokens, *, freeze=False, mlp_const=None, on_embed=None, on_mlp_in=None, on_mlp_out=None):
    """tokens [B, T]. Returns the final norm's output [B, T, d]. With freeze: patterns and scales
    detached; with mlp_const: MLP outputs replaced by mlp_const[l] + input x 0 (the skip path of a
    transcoder without skip connection)."""
    B, T = tokens.shape
    d, H = model["d"], model["H"]
    dh = d // H
    eps = model["eps"]
    mask = torch.full((T, T), float("-inf")).triu(1)
    embed = model["W_E"][tokens]
    if on_embed is not None:
        embed = on_embed(embed)
    x = embed + model["W_pos"][:T]
    for l, lw in enumerate(model["layers"]):
        h = layer_norm(x, lw["ln1"], eps, freeze)
        qkv = torch.matmul(h, lw["W_qkv"]) + lw["b_qkv"]
        q, k, v = (t.view(B, T, H, dh).transpose(1, 2) for t in qkv.split(d, -1))
        pattern = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh) + mask, -1)
        if freeze:
            pattern = pattern.detach()
        z = torch.matmul(pattern, v).transpose(1, 2).reshape(B, T, d)
        x = x + torch.matmul(z, lw["W_O"]) + lw["b_O"]
        mlp_in = layer_norm(x, lw["ln2"], eps, freeze)
        if on_mlp_in is not None:
            mlp_in = on_mlp_in(l, mlp_in)
        if mlp_const is None:
            mlp_out = torch.matmul(F.gelu(torch.matmul(mlp_in, lw["W_in"]) + lw["b_in"], approximate="tanh"), lw["W_out"]) + lw["b_out"]
        else:
            mlp_out = mlp_in * 0 + mlp_const[l]
        if on_mlp_out is not None:
            mlp_out = on_mlp_out(l, mlp_out)
        x = x + mlp_out
    return layer_norm(x, model["ln_f"], eps, freeze)


def load_transcoders(tc_dir, L):
    out = []
    for l in range(L):
        t = load_file(os.path.join(tc_dir, f"layer_{l}.safetensors"))
        out.append({k: t[k].float().contiguous() for k in ("W_enc", "b_enc", "W_dec", "b_dec")})
    return out


def status(field):
    """A size field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def read_tokens(path):
    with open(path) as f:
        return torch.tensor(json.load(f), dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# make-transcoders: random relu transcoders, encoder biases set so that ~active_per_token features per
# token are active on the prompt, decoders scaled so the reconstruction has the MLP output's norm.


def make_transcoders(args):
    torch.manual_seed(args.seed)
    model = load_gpt2(args.model_dir)
    tokens = read_tokens(args.tokens_file)[None]
    T = tokens.shape[1]
    d, m = model["d"], args.d_sae
    cache_in, cache_out = {}, {}
    with torch.no_grad():
        forward(model, tokens, on_mlp_in=lambda l, x: cache_in.__setitem__(l, x[0]) or x,
                on_mlp_out=lambda l, x: cache_out.__setitem__(l, x[0]) or x)
        os.makedirs(args.out_dir, exist_ok=True)
        for l in range(model["L"]):
            W_enc = torch.randn(m, d) / math.sqrt(d)
            x = cache_in[l]
            # Input x W_enc^T is ~N(0, |x|^2 / d); jitter per feature, then a common shift so that the top
            # active_per_token * T values of the prompt are positive: every bias ends up negative.
            jitter = -0.1 * torch.randn(m).abs()
            pre0 = x @ W_enc.t() + jitter
            # Midway between the k-th and (k+1)-th largest value, so that no feature sits at the threshold
            # (where float rounding differences between implementations would decide whether it is active).
            top = pre0.flatten().topk(args.active_per_token * T + 1).values
            thr = 0.5 * (top[-1].item() + top[-2].item())
            if thr <= 0:
                raise SystemExit(f"layer {l}: the threshold {thr} is not positive")
            b_enc = jitter - thr
            acts = torch.relu(x @ W_enc.t() + b_enc)
            W_dec = torch.randn(m, d) / math.sqrt(d)
            b_dec = 0.02 * torch.randn(d)
            recon = acts @ W_dec
            scale = cache_out[l].norm(dim=-1).sum() / recon.norm(dim=-1).clamp(min=1e-12).sum()
            W_dec = W_dec * scale
            save_file({"W_enc": W_enc.contiguous(), "b_enc": b_enc.contiguous(), "W_dec": W_dec.contiguous(), "b_dec": b_dec.contiguous()},
                      os.path.join(args.out_dir, f"layer_{l}.safetensors"))
            active = int((acts > 0).sum())
            print(f"  layer {l}: bias shift -{thr:.3f}, decoder scale {scale.item():.3f}, {active / T:.1f} active/token", file=sys.stderr)
    with open(os.path.join(args.out_dir, "config.yaml"), "w") as f:
        f.write("# random relu transcoders for bench/graph.ts (circuit-tracer per-layer layout)\n")
        f.write("model_kind: transcoder_set\n")
        f.write(f"model_name: {os.path.basename(os.path.normpath(args.model_dir))}\n")
        f.write("feature_input_hook: ln2.hook_normalized\nfeature_output_hook: hook_mlp_out\nactivation: relu\n")
        f.write("transcoders:\n" + "".join(f"  - layer_{l}.safetensors\n" for l in range(model["L"])))


# ---------------------------------------------------------------------------------------------
# Influence and pruning on the dense matrix (circuit-tracer's graph.py definitions).


def normalize_matrix(A):
    N = A.abs()
    return N / N.sum(dim=1, keepdim=True).clamp(min=1e-10)


def compute_influence(A, w, max_iter=1000):
    current = w @ A
    influence = current
    it = 0
    while current.any():
        if it >= max_iter:
            raise RuntimeError("influence did not converge: the graph is not acyclic")
        current = current @ A
        influence = influence + current
        it += 1
    return influence


def find_threshold(scores, fraction):
    s = torch.sort(scores, descending=True).values
    cumulative = torch.cumsum(s, dim=0) / torch.sum(s)
    index = min(int(torch.searchsorted(cumulative, fraction).item()), len(cumulative) - 1)
    return s[index]


def prune(A, logit_probs, n_features, n_tokens, node_threshold=0.8, edge_threshold=0.98):
    n_logits = len(logit_probs)
    w = torch.zeros(A.shape[0])
    w[-n_logits:] = logit_probs
    influence = compute_influence(normalize_matrix(A), w)
    node_mask = influence >= find_threshold(influence, node_threshold)
    node_mask[-n_logits - n_tokens :] = True
    pruned = A.clone()
    pruned[~node_mask] = 0
    pruned[:, ~node_mask] = 0
    normalized = normalize_matrix(pruned)
    del pruned
    edge_scores = normalized * (compute_influence(normalized, w) + w)[:, None]
    del normalized
    edge_mask = edge_scores >= find_threshold(edge_scores.flatten(), edge_threshold)
    del edge_scores
    old = node_mask.clone()
    inner = slice(0, A.shape[0] - n_logits - n_tokens)
    node_mask[inner] &= edge_mask[:, inner].any(0)
    node_mask[:n_features] &= edge_mask[:n_features].any(1)
    while not torch.equal(node_mask, old):
        old[:] = node_mask
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[inner] &= edge_mask[:, inner].any(0)
        node_mask[:n_features] &= edge_mask[:n_features].any(1)
    return node_mask, edge_mask


def partial_influences(edge_matrix, logit_p, row_to_node, max_iter=128):
    N = edge_matrix.abs()
    N /= N.sum(dim=1, keepdim=True).clamp(min=1e-8)
    influences = torch.zeros(edge_matrix.shape[1])
    prod = torch.zeros(edge_matrix.shape[1])
    prod[-len(logit_p) :] = logit_p
    for _ in range(max_iter):
        prod = prod[row_to_node] @ N
        if not prod.any():
            break
        influences += prod
    else:
        raise RuntimeError("partial influences did not converge")
    return influences


# ---------------------------------------------------------------------------------------------
# run


def attribute(model, tcs, tokens, batch_size, max_feature_nodes, row_topk, timings):
    T = tokens.shape[0]
    L, d = model["L"], model["d"]
    t0 = time.perf_counter()

    # 1. Setup: activations, errors, token vectors, logit targets.
    mlp_in, mlp_out = {}, {}
    with torch.no_grad():
        final = forward(model, tokens[None], on_mlp_in=lambda l, x: mlp_in.__setitem__(l, x[0]) or x,
                        on_mlp_out=lambda l, x: mlp_out.__setitem__(l, x[0]) or x)
        last_logits = final[0, -1] @ model["W_U"]
        feat_layer, feat_pos, feat_idx, feat_act, dec_vecs, enc_vecs, errors = [], [], [], [], [], [], []
        for l in range(L):
            tc = tcs[l]
            acts = torch.relu(mlp_in[l] @ tc["W_enc"].t() + tc["b_enc"])  # [T, m]
            nz = acts.nonzero()  # sorted by (position, feature)
            pos, idx = nz[:, 0], nz[:, 1]
            val = acts[pos, idx]
            feat_layer.append(torch.full_like(pos, l))
            feat_pos.append(pos)
            feat_idx.append(idx)
            feat_act.append(val)
            dec_vecs.append(val[:, None] * tc["W_dec"][idx])
            enc_vecs.append(tc["W_enc"][idx])
            errors.append(mlp_out[l] - (acts @ tc["W_dec"] + tc["b_dec"]))
            del acts
        feat_layer, feat_pos, feat_idx, feat_act = (torch.cat(t) for t in (feat_layer, feat_pos, feat_idx, feat_act))
        enc_vecs = torch.cat(enc_vecs)
        errors = torch.stack(errors)  # [L, T, d]
        token_vecs = model["W_E"][tokens]
        probs = torch.softmax(last_logits, -1)
        top_p, top_i = probs.topk(10)
        n_logits = min(10, int(torch.searchsorted(top_p.cumsum(0), 0.95).item()) + 1)
        logit_tokens, logit_probs = top_i[:n_logits], top_p[:n_logits]
        W_U = model["W_U"]
        logit_vecs = (W_U[:, logit_tokens] - W_U.mean(1, keepdim=True)).t()  # [n_logits, d]
    nf = feat_layer.shape[0]
    layer_start = [0] + torch.bincount(feat_layer, minlength=L).cumsum(0).tolist()
    row_size = nf + (L + 1) * T
    err_off, tok_off = nf, nf + L * T
    t1 = time.perf_counter()

    # 2. The batched forward with grad through the frozen model.
    state = {"buf": None}
    cached = [None] * (L + 1)
    const = [mlp_out[l].detach() for l in range(L)]

    def contract_mlp(l):
        s, e = layer_start[l], layer_start[l + 1]
        pos, dec = feat_pos[s:e], dec_vecs[l]

        def hook(g):
            buf = state["buf"]
            if e > s:
                buf[s:e] += torch.einsum("bnd,nd->nb", g[:, pos], dec)
            buf[err_off + l * T : err_off + (l + 1) * T] += torch.einsum("btd,td->tb", g, errors[l])
        return hook

    def embed_hook(g):
        state["buf"][tok_off : tok_off + T] += torch.einsum("btd,td->tb", g, token_vecs)

    def on_embed(x):
        x = x.requires_grad_(True)  # a fresh tensor from the embedding lookup: the backward's leaf
        x.register_hook(embed_hook)
        return x

    def on_mlp_in(l, x):
        cached[l] = x
        return x

    def on_mlp_out(l, x):
        x.register_hook(contract_mlp(l))
        return x

    cached[L] = forward(model, tokens[None].expand(batch_size, T), freeze=True, mlp_const=const,
                        on_embed=on_embed, on_mlp_in=on_mlp_in, on_mlp_out=on_mlp_out)
    t2 = time.perf_counter()

    # 3. Rows.
    def compute_batch(layers, positions, values, retain_graph=True):
        state["buf"] = torch.zeros(row_size, batch_size)
        n = len(layers)
        batch_idx = torch.arange(n)
        handles = []
        for layer in layers.unique().tolist():
            mask = layers == layer
            bi, pi, vi = batch_idx[mask], positions[mask], values[mask]

            def inject(g, bi=bi, pi=pi, vi=vi):
                g = g.clone()
                g.index_put_((bi, pi), vi)
                return g
            handles.append(cached[layer].register_hook(inject))
        try:
            top = int(layers.max())
            cached[top].backward(gradient=torch.zeros_like(cached[top]), retain_graph=retain_graph)
        finally:
            for h in handles:
                h.remove()
        rows = state["buf"].t()[:n]
        state["buf"] = None
        if row_topk > 0 and row_topk < rows.shape[1]:
            keep = rows.abs().topk(row_topk, dim=1).indices
            rows = torch.zeros_like(rows).scatter_(1, keep, rows.gather(1, keep))
        return rows

    logit_offset = row_size
    total_nodes = logit_offset + n_logits
    budget = min(max_feature_nodes or nf, nf)
    edge_matrix = torch.zeros(budget + n_logits, total_nodes)
    row_to_node = torch.zeros(budget + n_logits, dtype=torch.long)
    for i in range(0, n_logits, batch_size):
        k = min(batch_size, n_logits - i)
        edge_matrix[i : i + k, :logit_offset] = compute_batch(torch.full((k,), L), torch.full((k,), T - 1), logit_vecs[i : i + k])
        row_to_node[i : i + k] = torch.arange(i, i + k) + logit_offset
    st = n_logits
    visited = torch.zeros(nf, dtype=torch.bool)
    n_visited = 0
    while n_visited < budget:
        if budget == nf:
            pending = torch.arange(nf)
        else:
            influences = partial_influences(edge_matrix[:st], logit_probs, row_to_node[:st])
            rank = torch.argsort(influences[:nf], descending=True)
            pending = rank[~visited[rank]][: min(4 * batch_size, budget - n_visited)]
        for j in range(0, len(pending), batch_size):
            idx = pending[j : j + batch_size]
            n_visited += len(idx)
            rows = compute_batch(feat_layer[idx], feat_pos[idx], enc_vecs[idx], retain_graph=n_visited < budget)
            edge_matrix[st : st + len(idx), :logit_offset] = rows
            row_to_node[st : st + len(idx)] = idx
            visited[idx] = True
            st += len(idx)
    t3 = time.perf_counter()

    # 4. The dense adjacency.
    selected = torch.where(visited)[0]
    if budget < nf:
        edge_matrix = edge_matrix[:, torch.cat([selected, torch.arange(nf, total_nodes)])]
    edge_matrix = edge_matrix[row_to_node.argsort()]
    n = edge_matrix.shape[1]
    A = torch.zeros(n, n)
    A[:budget] = edge_matrix[:budget]
    A[-n_logits:] = edge_matrix[budget:]
    del edge_matrix
    t4 = time.perf_counter()
    timings.update(setup_s=t1 - t0, forward_s=t2 - t1, rows_s=t3 - t2, assemble_s=t4 - t3)
    return {
        "A": A, "n": n, "nf": nf, "selected": selected, "T": T,
        "feat_layer": feat_layer, "feat_pos": feat_pos, "feat_idx": feat_idx, "feat_act": feat_act,
        "logit_tokens": logit_tokens, "logit_probs": logit_probs,
    }


def run(args):
    torch.set_num_threads(args.threads)
    model = load_gpt2(args.model_dir)
    tcs = load_transcoders(args.transcoder_dir, model["L"])
    tokens = read_tokens(args.tokens_file)
    rss_loaded = status("VmHWM")
    timings = {}
    start = time.perf_counter()
    g = attribute(model, tcs, tokens, args.batch_size, args.max_feature_nodes, args.row_topk, timings)
    t_prune = time.perf_counter()
    rss_before_prune, hwm_before_prune = status("VmRSS"), status("VmHWM")
    kept_nodes = kept_edges = -1
    if not args.no_prune:
        node_mask, edge_mask = prune(g["A"], g["logit_probs"], len(g["selected"]), g["T"])
        kept_nodes, kept_edges = int(node_mask.sum()), int(edge_mask.sum())
        del edge_mask
    end = time.perf_counter()
    timings.update(prune_s=end - t_prune, total_s=end - start)
    A = g["A"]
    n_logits = len(g["logit_tokens"])
    if args.out:
        out = {
            "logit_rows": A[-n_logits:, : A.shape[0] - n_logits].contiguous(),
            "logit_tokens": g["logit_tokens"].to(torch.int64),
            "logit_probs": g["logit_probs"].contiguous(),
            "feat_layer": g["feat_layer"], "feat_pos": g["feat_pos"], "feat_idx": g["feat_idx"],
            "selected": g["selected"],
        }
        if args.check_count:
            # Rows of K active features spread over the list (they must have been visited).
            picks = torch.tensor([int((i + 0.5) * g["nf"] / args.check_count) for i in range(args.check_count)])
            node_of = torch.full((g["nf"],), -1, dtype=torch.long)
            node_of[g["selected"]] = torch.arange(len(g["selected"]))
            out["check_rows"] = A[node_of[picks], : A.shape[0] - n_logits].contiguous()
        save_file(out, args.out)
    print(json.dumps({
        **timings,
        "n_nodes": g["n"],
        "active_features": g["nf"],
        "visited_features": len(g["selected"]),
        "n_logits": n_logits,
        "dense_bytes": 4 * g["n"] ** 2,
        "kept_nodes": kept_nodes,
        "kept_edges": kept_edges,
        "peak_rss": status("VmHWM"),
        "rss_after_load": rss_loaded,
        "rss_before_prune": rss_before_prune,
        "hwm_before_prune": hwm_before_prune,
        "threads": args.threads,
        "torch": torch.__version__,
    }))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make-transcoders")
    mk.add_argument("model_dir")
    mk.add_argument("out_dir")
    mk.add_argument("--tokens-file", required=True)
    mk.add_argument("--d-sae", type=int, default=24576)
    mk.add_argument("--active-per-token", type=int, default=24)
    mk.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("model_dir")
    r.add_argument("transcoder_dir")
    r.add_argument("--tokens-file", required=True)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--max-feature-nodes", type=int, default=0)
    r.add_argument("--row-topk", type=int, default=0)
    r.add_argument("--threads", type=int, default=torch.get_num_threads())
    r.add_argument("--out", default="")
    r.add_argument("--check-count", type=int, default=0)
    r.add_argument("--no-prune", action="store_true")
    args = parser.parse_args()
    if args.command == "make-transcoders":
        make_transcoders(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
