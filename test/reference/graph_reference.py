"""Independent reference for attribution-graph influence, pruning and scores (numpy, float64, dense).

Written from the published definitions (circuit-tracer's influence and pruning, docs/graphs.md), not
from lib/graphs: influence is a matrix inverse here, where the library sums a series on a sparse matrix.

    usage: graph_reference.py IN.json OUT.json

IN.json:  {"kinds": [...], "adjacency": [[...], ...] (n x n, rows targets), "logit_weights": [...],
           "node_threshold": 0.8, "edge_threshold": 0.98}
OUT.json: {"node_influence", "node_mask", "edge_mask" ([[target, source], ...]), "cumulative",
           "pruned_influence", "edge_scores" (n x n), "replacement_score", "completeness_score"}

Definitions:
  Â = |A| / max(row L1 sum of |A|, 1e-10), row by row
  influence(Â, w) = w ((I - Â)^-1 - I)          (= w Â + w Â^2 + ..., Â nilpotent on a DAG)
  threshold(x, f): sort x descending, cumulative share c = cumsum / sum; the value at the first index
                   with c >= f (searchsorted, left), the last value if there is none
  prune: keep nodes with influence >= threshold(influence, node_f), inputs (token, positional, bias)
         and logits always; restrict A to kept nodes; score = Â' * (influence' + w)[target];
         keep entries with score >= threshold(all n^2 scores, edge_f) and nonzero weight;
         then drop feature/error nodes with no kept edge out and features with no kept edge in,
         edges of dropped nodes with them, until nothing changes
  cumulative: in descending influence order (stable), cumsum / sum
  replacement = input influence / (input + error influence)
  completeness = sum_t (1 - sum_{s error} Â[t,s]) (influence + w)[t] / sum_t (influence + w)[t]
"""

import json
import sys

import numpy as np

INPUT_KINDS = {"token", "positional", "bias"}


def normalise(a):
    magnitude = np.abs(a)
    return magnitude / np.maximum(magnitude.sum(axis=1, keepdims=True), 1e-10)


def influence(a_hat, w):
    n = a_hat.shape[0]
    identity = np.eye(n)
    return w @ (np.linalg.inv(identity - a_hat) - identity)


def threshold(values, fraction):
    ordered = np.sort(values.ravel())[::-1]
    share = np.cumsum(ordered) / ordered.sum() if ordered.sum() > 0 else np.zeros_like(ordered)
    index = int(np.searchsorted(share, fraction, side="left")) if ordered.sum() > 0 else len(ordered) - 1
    return ordered[min(index, len(ordered) - 1)]


def main(path_in, path_out):
    spec = json.load(open(path_in))
    kinds = spec["kinds"]
    a = np.array(spec["adjacency"], dtype=np.float64)
    w = np.array(spec["logit_weights"], dtype=np.float64)
    n = len(kinds)
    always = np.array([k in INPUT_KINDS or k == "logit" for k in kinds])
    is_feature = np.array([k == "feature" for k in kinds])
    is_error = np.array([k == "error" for k in kinds])
    is_input = np.array([k in INPUT_KINDS for k in kinds])
    prunable = is_feature | is_error

    a_hat = normalise(a)
    node_influence = influence(a_hat, w)
    node_mask = (node_influence >= threshold(node_influence, spec["node_threshold"])) | always

    pruned = a * node_mask[:, None] * node_mask[None, :]
    pruned_hat = normalise(pruned)
    pruned_influence = influence(pruned_hat, w)
    scores = pruned_hat * (pruned_influence + w)[:, None]
    edge_mask = (scores >= threshold(scores, spec["edge_threshold"])) & (pruned != 0)

    while True:
        edge_mask &= node_mask[:, None] & node_mask[None, :]
        has_out = edge_mask.any(axis=0)
        has_in = edge_mask.any(axis=1)
        new_mask = node_mask & ~(prunable & ~has_out) & ~(is_feature & ~has_in)
        if (new_mask == node_mask).all():
            break
        node_mask = new_mask

    order = np.argsort(-node_influence, kind="stable")
    total = node_influence.sum()
    cumulative = np.zeros(n)
    if total > 0:
        cumulative[order] = np.cumsum(node_influence[order]) / total

    input_influence = node_influence[is_input].sum()
    error_influence = node_influence[is_error].sum()
    replacement = input_influence / (input_influence + error_influence) if input_influence + error_influence > 0 else 0.0
    non_error = 1 - a_hat[:, is_error].sum(axis=1)
    output_influence = node_influence + w
    completeness = float((non_error * output_influence).sum() / output_influence.sum())

    targets, sources = np.nonzero(edge_mask)
    json.dump(
        {
            "node_influence": node_influence.tolist(),
            "node_mask": node_mask.astype(int).tolist(),
            "edge_mask": [[int(t), int(s)] for t, s in zip(targets, sources)],
            "cumulative": cumulative.tolist(),
            "pruned_influence": pruned_influence.tolist(),
            "edge_scores": scores.tolist(),
            "replacement_score": float(replacement),
            "completeness_score": completeness,
        },
        open(path_out, "w"),
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
