// Host side of the CUDA kernels of art_fast::topk_regions_{fwd,bwd}: the input checks (the
// device-neutral check_topk_regions_* of ../topk_regions.cpp, then the limits of these
// kernels), output and scratch allocation, device guard and stream, and the registration for
// the CUDA dispatch key. The kernels and their launchers are in topk_regions.cu (see launch.h).
//
// A .cpp compiled by the C++ compiler, not nvcc (see cross_attention_host.cpp). Outputs follow
// the schema: pooled in the dtype of values, indices int64, weights and grad_scores in the
// dtype of scores, grad_values in the dtype of values.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../checks.h"
#include "host.h"

namespace art_fast {

namespace {

using cuda::check_launch;
using cuda::dtype_of;
using cuda::kMaxGrid;
using cuda::opt_ptr;

// The checked dims, within the limits of these kernels: the sort carries the patch index in
// 32 bits, one block per (b, m) row.
cuda::TopkDims tk_limits(const TopkRegionsDims& c) {
  const cuda::TopkDims d{c.B, c.M, c.N, c.C, c.k};
  TORCH_CHECK(d.N < int64_t(0xFFFFFFFF), "art_fast: topk_regions needs N < 2^32 - 1, got ", d.N);
  TORCH_CHECK(d.B * d.M <= kMaxGrid, "art_fast: topk_regions (CUDA) needs B*M < 2^31");
  return d;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_regions_fwd_cuda(
    const at::Tensor& scores, const at::Tensor& values, int64_t k) {
  ART_CHECK_DEVICE_TYPE(scores, "scores", c10::kCUDA);
  const auto d = tk_limits(check_topk_regions_fwd(scores, values, k));
  const c10::cuda::CUDAGuard guard(scores.device());
  auto pooled = at::empty({d.B, d.M, d.C}, values.options());
  auto indices = at::empty({d.B, d.M, k}, scores.options().dtype(at::kLong));
  auto weights = at::empty({d.B, d.M, k}, scores.options());
  if (d.B * d.M == 0) return {pooled, indices, weights};
  at::Tensor scratch;
  const size_t sb = cuda::topk_scratch_bytes(d);
  if (sb > 0) scratch = at::empty({static_cast<int64_t>(sb)}, scores.options().dtype(at::kByte));
  check_launch(cuda::topk_regions_fwd_launch(
                   dtype_of(scores, "scores"), scores.data_ptr(), values.data_ptr(), d,
                   pooled.data_ptr(), indices.data_ptr<int64_t>(), weights.data_ptr(),
                   sb > 0 ? scratch.data_ptr() : nullptr,
                   c10::cuda::getCurrentCUDAStream(scores.device().index()).stream()),
               "topk_regions_fwd");
  return {pooled, indices, weights};
}

std::tuple<at::Tensor, at::Tensor> topk_regions_bwd_cuda(
    const at::Tensor& grad_pooled, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& scores, const at::Tensor& values, const at::Tensor& indices) {
  ART_CHECK_DEVICE_TYPE(scores, "scores", c10::kCUDA);
  const auto d =
      tk_limits(check_topk_regions_bwd(grad_pooled, grad_weights, scores, values, indices));
  const int64_t k = d.k;
  const void* gw = opt_ptr(grad_weights);
  const c10::cuda::CUDAGuard guard(scores.device());
  auto grad_scores = at::empty_like(scores);
  auto grad_values = at::empty_like(values);
  if (grad_scores.numel() == 0 && grad_values.numel() == 0) return {grad_scores, grad_values};
  if (d.B * d.M == 0) {
    grad_values.zero_();
    return {grad_scores, grad_values};
  }
  TORCH_CHECK(d.B * ((d.N + 15) / 16) * ((d.C + 255) / 256) <= kMaxGrid,
              "art_fast: topk_regions (CUDA): B*N*C too large for one grid");
  auto wsc = at::empty({2 * d.B * d.M * k}, scores.options().dtype(acc_dtype(scores.scalar_type())));
  check_launch(cuda::topk_regions_bwd_launch(
                   dtype_of(scores, "scores"), grad_pooled.data_ptr(), gw, scores.data_ptr(),
                   values.data_ptr(), indices.data_ptr<int64_t>(), d, grad_scores.data_ptr(),
                   grad_values.data_ptr(), wsc.data_ptr(),
                   c10::cuda::getCurrentCUDAStream(scores.device().index()).stream()),
               "topk_regions_bwd");
  return {grad_scores, grad_values};
}

}  // namespace

}  // namespace art_fast

TORCH_LIBRARY_IMPL(art_fast, CUDA, m) {
  m.impl("topk_regions_fwd", &art_fast::topk_regions_fwd_cuda);
  m.impl("topk_regions_bwd", &art_fast::topk_regions_bwd_cuda);
}
