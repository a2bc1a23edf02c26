// art_fast::topk_regions_{fwd,bwd}: the C++ contract of the op, shared by its CPU kernel
// (cpu/topk_regions.cpp, which also holds the schemas: ART_FAST_DEFINE_OP) and its CUDA kernels
// (cuda/topk_regions.cu): the dims, the device-neutral input checks (checks.h), the CUDA
// launchers' declarations and the entries' host functions, one for both devices (each device
// file provides its side: the limits of its kernels and their launch). Fake kernels and the
// autograd formula are registered from Python (art_fast/ops/topk_regions.py). Shapes use the
// names of DESIGN §3.
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
// Plain C++ (ATen's Tensor, per-operator ATen headers and c10's checks, no device code), so that
// both the C++ and the CUDA compiler include it; the launchers' declarations need the CUDA
// runtime API and are there only in a CUDA build (ART_FAST_WITH_CUDA, set by setup.py).
#pragma once

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <tuple>

#include "checks.h"

namespace art_fast {

struct TopkRegionsDims {
  int64_t B, M, N, C, k;
};

namespace detail {

// scores and values, common to both entries (k is left 0).
inline TopkRegionsDims topk_regions_check_scores_values(const at::Tensor& scores,
                                                        const at::Tensor& values) {
  check_float_inputs({scores, "scores", 3, "[B, M, N]"}, {values, "values", 3, "[B, N, C]"});
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

namespace art_fast {

// ---- the entries' host functions, one for both devices ----------------------------------------
// Each checks the device type of scores and the contract above, lets the device side check the
// limits of its kernels, allocates the outputs as the schemas say, returns them as they are
// for B * M == 0 (grad_values zeroed) and otherwise hands them to the device side. Dev, the
// device side (cpu/topk_regions.cpp, cuda/topk_regions.cu), provides
//   static constexpr c10::DeviceType kDevice;
//   Dev(const TopkRegionsDims& d, const at::Tensor& scores, bool backward): the limits of its
//       kernels for the checked dims (and, on CUDA, the device guard and the stream);
//   void fwd(scores, values, pooled, indices, weights) const;
//   void bwd(grad_pooled, grad_weights or nullptr, scores, values, indices, grad_scores,
//            grad_values) const.

template <typename Dev>
std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_regions_fwd(const at::Tensor& scores,
                                                                const at::Tensor& values,
                                                                int64_t k) {
  ART_CHECK_DEVICE_TYPE(scores, "scores", Dev::kDevice);
  const TopkRegionsDims d = check_topk_regions_fwd(scores, values, k);
  const Dev dev(d, scores, /*backward=*/false);
  auto pooled = at::empty({d.B, d.M, d.C}, values.options());
  auto indices = at::empty({d.B, d.M, d.k}, scores.options().dtype(at::kLong));
  auto weights = at::empty({d.B, d.M, d.k}, scores.options());
  if (d.B * d.M == 0) return {pooled, indices, weights};
  dev.fwd(scores, values, pooled, indices, weights);
  return {pooled, indices, weights};
}

template <typename Dev>
std::tuple<at::Tensor, at::Tensor> topk_regions_bwd(
    const at::Tensor& grad_pooled, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& scores, const at::Tensor& values, const at::Tensor& indices) {
  ART_CHECK_DEVICE_TYPE(scores, "scores", Dev::kDevice);
  const TopkRegionsDims d =
      check_topk_regions_bwd(grad_pooled, grad_weights, scores, values, indices);
  const Dev dev(d, scores, /*backward=*/true);
  auto grad_scores = at::empty_like(scores);
  auto grad_values = at::empty_like(values);
  if (d.B * d.M == 0) {
    grad_values.zero_();
    return {grad_scores, grad_values};
  }
  dev.bwd(grad_pooled, values_or_null(grad_weights), scores, values, indices, grad_scores,
          grad_values);
  return {grad_scores, grad_values};
}

// Registers the entries' host functions for the device of Dev: called by the registration
// of cpu/topk_regions.cpp (ART_FAST_DEFINE_OP) and of cuda/topk_regions.cu (ART_FAST_IMPL).
template <typename Dev>
void topk_regions_impl(torch::Library& m) {
  m.impl("topk_regions_fwd", &topk_regions_fwd<Dev>);
  m.impl("topk_regions_bwd", &topk_regions_bwd<Dev>);
}

}  // namespace art_fast
