// art_fast::info_nce_{fwd,bwd,fused}: the C++ contract of the op, shared by its CPU kernels
// (cpu/info_nce.cpp, which also holds the schemas: TORCH_LIBRARY_FRAGMENT) and its CUDA
// kernels (cuda/info_nce.cu): the dims, the device-neutral input checks (the macros of
// checks.h) and the CUDA launcher's declarations. Fake kernels and the autograd formula are
// registered from Python (art_fast/ops/info_nce.py). Shapes use the names of DESIGN §3.
//
// Schemas and their tensor contracts:
//   info_nce_fwd(Tensor anchors, Tensor candidates, Tensor targets, float temperature,
//                bool normalize) -> (Tensor, Tensor)
//     anchors [G,M,D], candidates [G,N,D], targets [G,M] int64 in [0,N) or -100 (ignored).
//     -> loss [G,M], lse [G,M], both in the accumulation dtype (float64 for float64 inputs,
//        else float32); loss is 0 on ignored rows.
//   info_nce_bwd(Tensor grad_loss, Tensor anchors, Tensor candidates, Tensor targets,
//                Tensor lse, float temperature, bool normalize) -> (Tensor, Tensor)
//     grad_loss [G,M] in the accumulation dtype (upstream gradient per row), saved inputs and
//     lse.
//     -> grad_anchors [G,M,D], grad_candidates [G,N,D] (dtype of the inputs).
//   info_nce_fused(Tensor anchors, Tensor candidates, Tensor targets, float temperature,
//                  bool normalize, bool mean, bool compute_grad) -> (Tensor, Tensor, Tensor)
//     The reduced loss and, when compute_grad, its gradients, in one pass (reduction "mean"
//     over non-ignored rows when mean, else "sum"): the upstream gradient of a reduced loss is
//     one scalar, so the autograd backward only scales the saved gradients.
//     -> loss [] in the accumulation dtype (0 for "mean" when every row is ignored),
//        grad_anchors [G,M,D], grad_candidates [G,N,D] (dtype of the inputs; d loss / d input)
//        when compute_grad, else two empty tensors [0].
//
// Plain C++ (ATen's Tensor and c10's checks, no device code), so that both the C++ and the
// CUDA compiler include it; the launcher's declarations need the CUDA runtime API and are
// there only in a CUDA build (ART_FAST_WITH_CUDA, set by setup.py).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "checks.h"

namespace art_fast {

struct InfoNceDims {
  int64_t G, M, N, D;
};

namespace detail {

// grad_loss / lse: [G, M] in the accumulation dtype of the inputs, on the device of anchors.
inline void info_nce_check_row_tensor(const at::Tensor& x, const char* name,
                                      const InfoNceDims& d, const at::Tensor& anchors) {
  ART_CHECK_SAME_DEVICE(x, anchors, name, "anchors");
  const auto acc = acc_dtype(anchors.scalar_type());
  TORCH_CHECK(x.scalar_type() == acc && x.sizes() == at::IntArrayRef({d.G, d.M}),
              "art_fast: ", name, " must be [G, M] = [", d.G, ", ", d.M, "] ", acc, ", got ",
              x.sizes(), " ", x.scalar_type());
}

}  // namespace detail

// anchors [G,M,D], candidates [G,N,D] (contiguous, one supported dtype, N > 0, D > 0),
// targets [G,M] int64 (any layout; its values are the kernel's to check), temperature finite
// and > 0; every tensor on the device of anchors. Also the check of info_nce_fused.
inline InfoNceDims check_info_nce_fwd(const at::Tensor& a, const at::Tensor& c,
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

// The forward's inputs, and grad_loss, lse [G,M] in the accumulation dtype (any layout), on
// the device of anchors.
inline InfoNceDims check_info_nce_bwd(const at::Tensor& grad_loss, const at::Tensor& anchors,
                                      const at::Tensor& candidates, const at::Tensor& targets,
                                      const at::Tensor& lse, double temperature) {
  const InfoNceDims d = check_info_nce_fwd(anchors, candidates, targets, temperature);
  detail::info_nce_check_row_tensor(grad_loss, "grad_loss", d, anchors);
  detail::info_nce_check_row_tensor(lse, "lse", d, anchors);
  return d;
}

}  // namespace art_fast

#ifdef ART_FAST_WITH_CUDA
#include "cuda/host.h"  // DType and the launchers' conventions (cudaError_t, cudaStream_t)

namespace art_fast {
namespace cuda {

// ---- launcher (cuda/info_nce.cu) --------------------------------------------------------------
struct NceDims {
  int64_t G, M, N, D;
};

// Scratch (bytes) that info_nce_launch needs for these dims, mode and dtype.
size_t info_nce_scratch_bytes(const NceDims& s, DType dt, bool grad);

// One entry point for the three ops:
//   loss, lse     [G,M] acc, or nullptr (not wanted)
//   grad_loss     [G,M] acc upstream gradient per row, or nullptr: then each non-ignored row
//                 gets the weight 1 / max(count, 1) (mean) or 1 (sum), count = the number of
//                 non-ignored rows, counted on the device (no host synchronisation).
//   saved_lse     [G,M] acc from the forward (backward only; the large regime uses it).
//   ga, gc        [G,M,D], [G,N,D] in the input dtype, or nullptr (no gradient wanted).
//   total         [] acc: the reduced loss (mean or sum), or nullptr.
//   scratch       info_nce_scratch_bytes(...) bytes of device memory.
//   allow_tf32    float32 inputs in the large regime may use TF32 tensor cores (torch's
//                 allow_tf32 for CUDA matmuls); otherwise float32 takes the exact FMA path.
//                 bfloat16 / float16 use tensor cores on sm_80+ regardless, float64 never.
// The large regime needs M * D and N * D < 2^31 (32-bit offsets inside a group).
cudaError_t info_nce_launch(DType dt, const void* anchors, const void* candidates,
                            const int64_t* targets, double temperature, bool normalize,
                            bool mean, bool allow_tf32, const NceDims& s, void* loss,
                            void* lse, const void* grad_loss, const void* saved_lse, void* ga,
                            void* gc, void* total, void* scratch, cudaStream_t stream);

}  // namespace cuda
}  // namespace art_fast
#endif  // ART_FAST_WITH_CUDA
