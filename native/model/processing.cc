#include "model/processing.h"

#include <ATen/ATen.h>

namespace tc {

namespace {

// Removes the mean over the d_model axis `dim` (reading weights after folding, writing weights).
at::Tensor centered(const at::Tensor& t, int64_t dim) { return t - t.mean(dim, /*keepdim=*/true); }

// fold_ln for one norm feeding `W` whose d_model axis is 0:
//   b += b_ln @ W,  W <- diag(gain) W,  and for a LayerNorm W centred over d_model (LayerNormPre
//   centres its input, so only the mean-free part of each reading direction matters).
void foldInto(const ModelConfig& cfg, at::Tensor& W, at::Tensor& b, at::Tensor& lnW, at::Tensor& lnB) {
  std::vector<int64_t> lnShape(W.dim(), 1);
  lnShape[0] = -1;
  if (lnB.defined()) b = b + (W * lnB.view(lnShape)).sum(0);
  W = W * normGain(cfg, lnW).view(lnShape);
  if (cfg.norm == Norm::LayerNorm) W = centered(W, 0);
}

}  // namespace

void processLikeTransformerLens(const ModelConfig& cfg, Weights& w) {
  const bool layerNorm = cfg.norm == Norm::LayerNorm;
  // fold_ln (+ centring of the reading weights for LayerNorm). One norm can feed several maps.
  for (auto& L : w.layers) {
    foldInto(cfg, L.W_QKV, L.b_QKV, L.ln1W, L.ln1B);  // W_QKV [d, (H + 2K) dh], b_QKV [(H + 2K) dh]
    if (L.W_gate.defined()) foldInto(cfg, L.W_gate, L.b_gate, L.ln2W, L.ln2B);
    foldInto(cfg, L.W_in, L.b_in, L.ln2W, L.ln2B);    // W_in [d, dm]
    L.ln1W = L.ln1B = L.ln2W = L.ln2B = at::Tensor();
  }
  foldInto(cfg, w.W_U, w.b_U, w.lnFinalW, w.lnFinalB);  // W_U [d, V]
  w.lnFinalW = w.lnFinalB = at::Tensor();

  // center_writing_weights: everything written to the residual stream becomes mean-zero over
  // d_model. Only LayerNorm models: an RMSNorm reads the mean too.
  if (layerNorm) {
    w.W_E = centered(w.W_E, -1);
    if (w.W_pos.defined()) w.W_pos = centered(w.W_pos, -1);
    for (auto& L : w.layers) {
      L.W_O = centered(L.W_O, -1);
      L.b_O = L.b_O - L.b_O.mean();
      L.W_out = centered(L.W_out, -1);
      L.b_out = L.b_out - L.b_out.mean();
    }
  }

  // center_unembed: shifting every logit of a position by the same amount leaves log-probs
  // unchanged (not with a final soft-cap, which is not shift-invariant).
  if (cfg.finalSoftcap == 0) {
    w.W_U = w.W_U - w.W_U.mean(-1, /*keepdim=*/true);
    w.b_U = w.b_U - w.b_U.mean();
  }

  // fold_value_biases: attention rows sum to one, so b_V's contribution is a constant b_V W_O per
  // head (with grouped-query attention, query head h reads value head h / (H / K)). Not through
  // Gemma's post-attention norm, which comes after W_O but is not linear.
  if (cfg.sandwichNorms) return;
  for (auto& L : w.layers) {
    const int64_t H = L.W_O.size(0), dh = L.W_O.size(1), K = cfg.kvHeads();
    at::Tensor b_V = L.b_QKV.narrow(0, (H + K) * dh, K * dh).view({K, dh}).repeat_interleave(H / K, 0);  // [H, dh]
    L.b_O = L.b_O + (b_V.unsqueeze(-1) * L.W_O).sum(at::IntArrayRef{0, 1});  // sum_h b_V[h] W_O[h]
    L.b_QKV = L.b_QKV.clone();
    L.b_QKV.narrow(0, (H + K) * dh, K * dh).zero_();
  }
}

}  // namespace tc
