// art_fast::cross_attention_{fwd,bwd}: the schemas (with their tensor contracts) and the
// device-neutral input checks (checks.h) that the CPU kernel (cpu/cross_attention.cpp) and the
// CUDA host wrapper (cuda/cross_attention_host.cpp) both run. Each of those registers its own
// kernels; fake kernels and the autograd formula are registered from Python
// (art_fast/ops/cross_attention.py). Shapes use the names of DESIGN §3.
#include <torch/library.h>

#include "checks.h"

TORCH_LIBRARY_FRAGMENT(art_fast, m) {
  // q [Bq,H,M,D] with Bq in {1,B} (1 = one query set shared by the B groups),
  // k, v [B,H,N,D], all of one floating dtype.
  // -> out [B,H,M,D] (dtype of q), lse [B,H,M] (per-row log-sum-exp of the scaled scores;
  //    float64 for float64 inputs, else float32: the accumulation dtype),
  //    weights [B,H,M,N] (dtype of q) when return_weights, else an empty tensor.
  m.def("cross_attention_fwd(Tensor q, Tensor k, Tensor v, float scale, bool return_weights)"
        " -> (Tensor, Tensor, Tensor)");
  // grad_out [B,H,M,D], grad_weights [B,H,M,N] or None, saved q, k, v, out, lse.
  // -> dq [Bq,H,M,D] (summed over B in a fixed order when Bq == 1), dk, dv [B,H,N,D].
  m.def("cross_attention_bwd(Tensor grad_out, Tensor? grad_weights, Tensor q, Tensor k,"
        " Tensor v, Tensor out, Tensor lse, float scale) -> (Tensor, Tensor, Tensor)");
}

namespace art_fast {

CrossAttentionDims check_cross_attention_fwd(const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v) {
  ART_CHECK_CONTIG(q, "q");
  ART_CHECK_CONTIG(k, "k");
  ART_CHECK_CONTIG(v, "v");
  ART_CHECK_SAME_DEVICE(k, q, "k", "q");
  ART_CHECK_SAME_DEVICE(v, q, "v", "q");
  ART_CHECK_DIM(q, "q", 4, "[B, H, M, D]");
  ART_CHECK_DIM(k, "k", 4, "[B, H, N, D]");
  TORCH_CHECK(v.sizes() == k.sizes(), "art_fast: v must have the shape of k ", k.sizes(),
              ", got ", v.sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && k.scalar_type() == v.scalar_type(),
              "art_fast: q, k, v must share one dtype");
  ART_CHECK_FLOAT_DTYPE(q, "q");
  CrossAttentionDims d{k.size(0), q.size(0), k.size(1), q.size(2), k.size(2), k.size(3)};
  TORCH_CHECK(d.Bq == d.B || d.Bq == 1, "art_fast: q must have shape [B or 1, H, M, D]");
  TORCH_CHECK(q.size(1) == d.H && q.size(3) == d.D,
              "art_fast: q must have shape [B, H, M, D] with H, D of k");
  TORCH_CHECK(d.B > 0 && d.H > 0 && d.M > 0 && d.N > 0 && d.D > 0,
              "art_fast: cross_attention got an empty tensor");
  return d;
}

CrossAttentionDims check_cross_attention_bwd(const at::Tensor& grad_out,
                                             const std::optional<at::Tensor>& grad_weights,
                                             const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v, const at::Tensor& lse) {
  const CrossAttentionDims d = check_cross_attention_fwd(q, k, v);
  ART_CHECK_CONTIG(grad_out, "grad_out");
  ART_CHECK_SAME_DEVICE(grad_out, q, "grad_out", "q");
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({d.B, d.H, d.M, d.D}) &&
                  grad_out.scalar_type() == q.scalar_type(),
              "art_fast: grad_out must be [B, H, M, D] in the dtype of q");
  ART_CHECK_CONTIG(lse, "lse");
  ART_CHECK_SAME_DEVICE(lse, q, "lse", "q");
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({d.B, d.H, d.M}) &&
                  lse.scalar_type() == acc_dtype(q.scalar_type()),
              "art_fast: lse must be [B, H, M] in the accumulation dtype");
  if (has_values(grad_weights)) {
    ART_CHECK_CONTIG(*grad_weights, "grad_weights");
    ART_CHECK_SAME_DEVICE(*grad_weights, q, "grad_weights", "q");
    TORCH_CHECK(grad_weights->sizes() == at::IntArrayRef({d.B, d.H, d.M, d.N}) &&
                    grad_weights->scalar_type() == q.scalar_type(),
                "art_fast: grad_weights must be [B, H, M, N] in the dtype of q");
  }
  return d;
}

}  // namespace art_fast
