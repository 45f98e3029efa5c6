#include "model/processing.h"

#include <ATen/ATen.h>

namespace tc {

namespace {

// Removes the mean over the d_model axis `dim` (reading weights after folding, writing weights).
at::Tensor centered(const at::Tensor& t, int64_t dim) { return t - t.mean(dim, /*keepdim=*/true); }

// fold_ln for one LayerNorm feeding `W` whose d_model axis is 0:
//   b += b_ln @ W,  W <- diag(w_ln) W,  then W centred over d_model (LayerNormPre centres its input,
//   so only the mean-free part of each reading direction matters).
void foldInto(at::Tensor& W, at::Tensor& b, at::Tensor& lnW, at::Tensor& lnB) {
  std::vector<int64_t> lnShape(W.dim(), 1);
  lnShape[0] = -1;
  b = b + (W * lnB.view(lnShape)).sum(0);
  W = centered(W * lnW.view(lnShape), 0);
  lnW = at::Tensor();
  lnB = at::Tensor();
}

}  // namespace

void processLikeTransformerLens(Weights& w) {
  // fold_ln (+ centring of the reading weights).
  for (auto& L : w.layers) {
    foldInto(L.W_QKV, L.b_QKV, L.ln1W, L.ln1B);  // W_QKV [d, 3, H, dh], b_QKV [3, H, dh]
    foldInto(L.W_in, L.b_in, L.ln2W, L.ln2B);    // W_in [d, dm]
  }
  foldInto(w.W_U, w.b_U, w.lnFinalW, w.lnFinalB);  // W_U [d, V]

  // center_writing_weights: everything written to the residual stream becomes mean-zero over d_model.
  w.W_E = centered(w.W_E, -1);
  if (w.W_pos.defined()) w.W_pos = centered(w.W_pos, -1);
  for (auto& L : w.layers) {
    L.W_O = centered(L.W_O, -1);
    L.b_O = L.b_O - L.b_O.mean();
    L.W_out = centered(L.W_out, -1);
    L.b_out = L.b_out - L.b_out.mean();
  }

  // center_unembed: shifting every logit of a position by the same amount leaves log-probs unchanged.
  w.W_U = w.W_U - w.W_U.mean(-1, /*keepdim=*/true);
  w.b_U = w.b_U - w.b_U.mean();

  // fold_value_biases: attention rows sum to one, so b_V's contribution is a constant b_V W_O per head.
  for (auto& L : w.layers) {
    at::Tensor b_V = L.b_QKV.select(0, 2);                                    // [H, dh]
    L.b_O = L.b_O + (b_V.unsqueeze(-1) * L.W_O).sum(at::IntArrayRef{0, 1});  // sum_h b_V[h] W_O[h]
    L.b_QKV = L.b_QKV.clone();
    L.b_QKV.select(0, 2).zero_();
  }
}

}  // namespace tc
