// art_fast::topk_regions_{fwd,bwd}: the C++ contract of the op, shared by its CPU kernel
// (cpu/topk_regions.cpp, which also holds the schemas: TORCH_LIBRARY_FRAGMENT) and its CUDA
// kernels (cuda/topk_regions.cu): the dims, the device-neutral input checks (the macros of
// checks.h) and the CUDA launchers' declarations. Fake kernels and the autograd formula are
// registered from Python (art_fast/ops/topk_regions.py). Shapes use the names of DESIGN §3.
//
// Schemas and their tensor contracts:
//   topk_regions_fwd(Tensor scores, Tensor values, int k) -> (Tensor, Tensor, Tensor)
//     scores [B,M,N], values [B,N,C], 1 <= k <= N.
//     -> pooled [B,M,C] (dtype of values), indices [B,M,k] int64 (descending score, ties to
//        the lower index, NaN ranks lowest), weights [B,M,k] (dtype of scores).
//   topk_regions_bwd(Tensor grad_pooled, Tensor? grad_weights, Tensor scores, Tensor values,
//                    Tensor indices) -> (Tensor, Tensor)
//     grad_pooled [B,M,C], grad_weights [B,M,k] or None, saved scores, values, indices.
//     -> grad_scores [B,M,N] (zero outside the selection), grad_values [B,N,C].
//
// Plain C++ (ATen's Tensor and c10's checks, no device code), so that both the C++ and the
// CUDA compiler include it; the launchers' declarations need the CUDA runtime API and are
// there only in a CUDA build (ART_FAST_WITH_CUDA, set by setup.py).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "checks.h"

namespace art_fast {

struct TopkRegionsDims {
  int64_t B, M, N, C, k;
};

namespace detail {

// scores and values, common to both entries (k is left 0).
inline TopkRegionsDims topk_regions_check_scores_values(const at::Tensor& scores,
                                                        const at::Tensor& values) {
  ART_CHECK_CONTIG(scores, "scores");
  ART_CHECK_CONTIG(values, "values");
  ART_CHECK_SAME_DEVICE(values, scores, "values", "scores");
  ART_CHECK_DIM(scores, "scores", 3, "[B, M, N]");
  ART_CHECK_DIM(values, "values", 3, "[B, N, C]");
  TORCH_CHECK(scores.scalar_type() == values.scalar_type(),
              "art_fast: scores and values must share one dtype, got ", scores.scalar_type(),
              " and ", values.scalar_type());
  ART_CHECK_FLOAT_DTYPE(scores, "scores");
  TopkRegionsDims d{scores.size(0), scores.size(1), scores.size(2), values.size(2), 0};
  TORCH_CHECK(values.size(0) == d.B && values.size(1) == d.N,
              "art_fast: values must have shape [B, N, C] with B, N of scores ", scores.sizes(),
              ", got ", values.sizes());
  return d;
}

}  // namespace detail

// scores [B,M,N], values [B,N,C] (one supported dtype), 1 <= k <= N: contiguous, on the
// device of scores.
inline TopkRegionsDims check_topk_regions_fwd(const at::Tensor& scores, const at::Tensor& values,
                                              int64_t k) {
  TopkRegionsDims d = detail::topk_regions_check_scores_values(scores, values);
  TORCH_CHECK(k >= 1 && k <= d.N, "art_fast: topk_regions needs 1 <= k <= N = ", d.N,
              ", got k = ", k);
  d.k = k;
  return d;
}

// scores and values as in the forward, indices [B,M,k] int64 (1 <= k <= N; the values are the
// kernel's to check), grad_pooled [B,M,C] (dtype of values), grad_weights [B,M,k] (dtype of
// scores; only when has_values): contiguous, on the device of scores. Returns k of indices.
inline TopkRegionsDims check_topk_regions_bwd(const at::Tensor& grad_pooled,
                                              const std::optional<at::Tensor>& grad_weights,
                                              const at::Tensor& scores, const at::Tensor& values,
                                              const at::Tensor& indices) {
  TopkRegionsDims d = detail::topk_regions_check_scores_values(scores, values);
  ART_CHECK_CONTIG(indices, "indices");
  ART_CHECK_SAME_DEVICE(indices, scores, "indices", "scores");
  ART_CHECK_DIM(indices, "indices", 3, "[B, M, k]");
  TORCH_CHECK(indices.scalar_type() == at::kLong, "art_fast: indices must be int64, got ",
              indices.scalar_type());
  const int64_t k = indices.size(2);
  TORCH_CHECK(indices.size(0) == d.B && indices.size(1) == d.M && k >= 1 && k <= d.N,
              "art_fast: indices must have shape [B, M, k] with 1 <= k <= N for scores ",
              scores.sizes(), ", got ", indices.sizes());
  d.k = k;
  ART_CHECK_CONTIG(grad_pooled, "grad_pooled");
  ART_CHECK_SAME_DEVICE(grad_pooled, scores, "grad_pooled", "scores");
  TORCH_CHECK(grad_pooled.sizes() == at::IntArrayRef({d.B, d.M, d.C}) &&
                  grad_pooled.scalar_type() == values.scalar_type(),
              "art_fast: grad_pooled must be [B, M, C] = ", at::IntArrayRef({d.B, d.M, d.C}),
              " in the dtype of values, got ", grad_pooled.sizes(), " ",
              grad_pooled.scalar_type());
  if (has_values(grad_weights)) {
    ART_CHECK_CONTIG(*grad_weights, "grad_weights");
    ART_CHECK_SAME_DEVICE(*grad_weights, scores, "grad_weights", "scores");
    TORCH_CHECK(grad_weights->sizes() == indices.sizes() &&
                    grad_weights->scalar_type() == scores.scalar_type(),
                "art_fast: grad_weights must be [B, M, k] = ", indices.sizes(),
                " in the dtype of scores, got ", grad_weights->sizes(), " ",
                grad_weights->scalar_type());
  }
  return d;
}

}  // namespace art_fast

#ifdef ART_FAST_WITH_CUDA
#include "cuda/host.h"  // DType and the launchers' conventions (cudaError_t, cudaStream_t)

namespace art_fast {
namespace cuda {

// ---- launchers (cuda/topk_regions.cu) ---------------------------------------------------------
struct TopkDims {
  int64_t B, M, N, C, k;
};
// Rows with N > kTopkSharedMax sort their keys in a global scratch buffer of
// topk_scratch_bytes(s) bytes (0 otherwise).
constexpr int64_t kTopkSharedMax = 1024;
size_t topk_scratch_bytes(const TopkDims& s);

// pooled [B,M,C], indices [B,M,k] int64, weights [B,M,k].
cudaError_t topk_regions_fwd_launch(DType dt, const void* scores, const void* values,
                                    const TopkDims& s, void* pooled, int64_t* indices,
                                    void* weights, void* scratch, cudaStream_t stream);
// grad_scores [B,M,N], grad_values [B,N,C]; w_scratch: 2 * B*M*k acc values of scratch (the
// recomputed weights and dw); grad_weights may be nullptr.
cudaError_t topk_regions_bwd_launch(DType dt, const void* grad_pooled, const void* grad_weights,
                                    const void* scores, const void* values,
                                    const int64_t* indices, const TopkDims& s,
                                    void* grad_scores, void* grad_values, void* w_scratch,
                                    cudaStream_t stream);

}  // namespace cuda
}  // namespace art_fast
#endif  // ART_FAST_WITH_CUDA
