// art_fast::info_nce_{fwd,bwd,fused}: the schemas (with their tensor contracts) and the
// device-neutral input checks (checks.h) that the CPU kernels (cpu/info_nce.cpp) and the CUDA
// host wrappers (cuda/info_nce_host.cpp) both run. Each of those registers its own kernels;
// fake kernels and the autograd formula are registered from Python (art_fast/ops/info_nce.py).
// Shapes use the names of DESIGN §3.
#include <torch/library.h>

#include <cmath>

#include "checks.h"

TORCH_LIBRARY_FRAGMENT(art_fast, m) {
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

namespace art_fast {

namespace {

// grad_loss / lse: [G, M] in the accumulation dtype of the inputs, on the device of anchors.
void check_row_tensor(const at::Tensor& x, const char* name, const InfoNceDims& d,
                      const at::Tensor& anchors) {
  ART_CHECK_SAME_DEVICE(x, anchors, name, "anchors");
  const auto acc = acc_dtype(anchors.scalar_type());
  TORCH_CHECK(x.scalar_type() == acc && x.sizes() == at::IntArrayRef({d.G, d.M}),
              "art_fast: ", name, " must be [G, M] = [", d.G, ", ", d.M, "] ", acc, ", got ",
              x.sizes(), " ", x.scalar_type());
}

}  // namespace

InfoNceDims check_info_nce_fwd(const at::Tensor& a, const at::Tensor& c,
                               const at::Tensor& targets, double temperature) {
  ART_CHECK_CONTIG(a, "anchors");
  ART_CHECK_CONTIG(c, "candidates");
  ART_CHECK_SAME_DEVICE(c, a, "candidates", "anchors");
  ART_CHECK_DIM(a, "anchors", 3, "[G, M, D]");
  ART_CHECK_DIM(c, "candidates", 3, "[G, N, D]");
  TORCH_CHECK(a.scalar_type() == c.scalar_type(),
              "art_fast: anchors and candidates must share one dtype, got ", a.scalar_type(),
              " and ", c.scalar_type());
  ART_CHECK_FLOAT_DTYPE(a, "anchors");
  TORCH_CHECK(a.size(0) == c.size(0) && a.size(2) == c.size(2),
              "art_fast: anchors [G, M, D] and candidates [G, N, D] must agree on G and D, got ",
              a.sizes(), " and ", c.sizes());
  InfoNceDims d{a.size(0), a.size(1), c.size(1), a.size(2)};
  TORCH_CHECK(d.N > 0 && d.D > 0, "art_fast: info_nce needs N > 0 candidates and D > 0");
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature),
              "art_fast: info_nce temperature must be finite and > 0, got ", temperature);
  ART_CHECK_SAME_DEVICE(targets, a, "targets", "anchors");
  TORCH_CHECK(targets.scalar_type() == at::kLong, "art_fast: targets must be int64, got ",
              targets.scalar_type());
  TORCH_CHECK(targets.sizes() == at::IntArrayRef({d.G, d.M}),
              "art_fast: targets must have shape [G, M] = [", d.G, ", ", d.M, "], got ",
              targets.sizes());
  return d;
}

InfoNceDims check_info_nce_bwd(const at::Tensor& grad_loss, const at::Tensor& anchors,
                               const at::Tensor& candidates, const at::Tensor& targets,
                               const at::Tensor& lse, double temperature) {
  const InfoNceDims d = check_info_nce_fwd(anchors, candidates, targets, temperature);
  check_row_tensor(grad_loss, "grad_loss", d, anchors);
  check_row_tensor(lse, "lse", d, anchors);
  return d;
}

}  // namespace art_fast
