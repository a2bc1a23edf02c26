// art_fast._C: the operator schemas, defined once, and the Python module entry point.
//
// Each hot path is a pair of operators, <op>_fwd and <op>_bwd. Kernels are registered per
// device (cpu/*.cpp here; cuda/*.cu in their own TORCH_LIBRARY_IMPL blocks); fake kernels and
// the autograd formula are registered from Python (art_fast/ops/<op>.py), as in
// pytorch/extension-cpp. All tensors reaching these ops are contiguous (the Python wrappers
// make them so); shapes below use the names of DESIGN §3.
#include <torch/extension.h>

#include "ops.h"

TORCH_LIBRARY(art_fast, m) {
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

  // scores [B,M,N], values [B,N,C], 1 <= k <= N.
  // -> pooled [B,M,C] (dtype of values), indices [B,M,k] int64 (descending score, ties to the
  //    lower index, NaN ranks lowest), weights [B,M,k] (dtype of scores).
  m.def("topk_regions_fwd(Tensor scores, Tensor values, int k) -> (Tensor, Tensor, Tensor)");
  // grad_pooled [B,M,C], grad_weights [B,M,k] or None, saved scores, values, indices.
  // -> grad_scores [B,M,N] (zero outside the selection), grad_values [B,N,C].
  m.def("topk_regions_bwd(Tensor grad_pooled, Tensor? grad_weights, Tensor scores,"
        " Tensor values, Tensor indices) -> (Tensor, Tensor)");

  // anchors [G,M,D], candidates [G,N,D], targets [G,M] int64 in [0,N) or -100 (ignored).
  // -> loss [G,M], lse [G,M], both in the accumulation dtype (float64 for float64 inputs,
  //    else float32); loss is 0 on ignored rows.
  m.def("info_nce_fwd(Tensor anchors, Tensor candidates, Tensor targets, float temperature,"
        " bool normalize) -> (Tensor, Tensor)");
  // grad_loss [G,M] in the accumulation dtype (upstream gradient per row), saved inputs and lse.
  // -> grad_anchors [G,M,D], grad_candidates [G,N,D] (dtype of the inputs).
  m.def("info_nce_bwd(Tensor grad_loss, Tensor anchors, Tensor candidates, Tensor targets,"
        " Tensor lse, float temperature, bool normalize) -> (Tensor, Tensor)");
  // The reduced loss and, when compute_grad, its gradients, in one pass (reduction "mean"
  // over non-ignored rows when mean, else "sum"): the upstream gradient of a reduced loss is
  // one scalar, so the autograd backward only scales the saved gradients.
  // -> loss [] in the accumulation dtype (0 for "mean" when every row is ignored),
  //    grad_anchors [G,M,D], grad_candidates [G,N,D] (dtype of the inputs; d loss / d input)
  //    when compute_grad, else two empty tensors [0].
  m.def("info_nce_fused(Tensor anchors, Tensor candidates, Tensor targets, float temperature,"
        " bool normalize, bool mean, bool compute_grad) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(art_fast, CPU, m) {
  m.impl("cross_attention_fwd", &art_fast::cross_attention_fwd_cpu);
  m.impl("cross_attention_bwd", &art_fast::cross_attention_bwd_cpu);
  m.impl("topk_regions_fwd", &art_fast::topk_regions_fwd_cpu);
  m.impl("topk_regions_bwd", &art_fast::topk_regions_bwd_cpu);
  m.impl("info_nce_fwd", &art_fast::info_nce_fwd_cpu);
  m.impl("info_nce_bwd", &art_fast::info_nce_bwd_cpu);
  m.impl("info_nce_fused", &art_fast::info_nce_fused_cpu);
}

namespace {
bool compiled_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "art_fast compiled kernels; the operators live under torch.ops.art_fast";
  m.def("compiled_with_openmp", &compiled_with_openmp,
        "Whether the CPU kernels were compiled with OpenMP");
#ifdef ART_FAST_WITH_CUDA
  m.attr("compiled_with_cuda") = true;
#else
  m.attr("compiled_with_cuda") = false;
#endif
}
