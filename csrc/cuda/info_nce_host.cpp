// Host side of the CUDA kernels of art_fast::info_nce_{fwd,bwd,fused}: the input checks (the
// device-neutral check_info_nce_* of ../info_nce.cpp, then the limits of these kernels),
// output and scratch allocation, device guard and stream, the TF32 switch, and the
// registration for the CUDA dispatch key. The kernels and their launcher are in info_nce.cu
// (see launch.h).
//
// A .cpp compiled by the C++ compiler, not nvcc (see cross_attention_host.cpp). Outputs follow
// the schemas: losses, lse and the fused total in the accumulation dtype (float64 for float64
// inputs, else float32), the gradients in the inputs' dtype.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../checks.h"
#include "host.h"

namespace art_fast {

namespace {

using cuda::check_launch;
using cuda::dtype_of;
using cuda::kMaxGrid;
using cuda::kMaxInt32;

// The checked dims, within the limits of these kernels: the grid of row blocks, 32-bit index
// math inside a group. (The values of targets are not checked: that needs a device -> host
// copy; a target outside [0, N) that is not -100 gives a NaN loss and gradient, never an
// out-of-bounds read; the Python wrapper rejects such targets before the call.)
cuda::NceDims nce_limits(const InfoNceDims& c) {
  const cuda::NceDims d{c.G, c.M, c.N, c.D};
  TORCH_CHECK(d.G * ((std::max(d.M, d.N) + 31) / 32) <= kMaxGrid &&
                  d.G * std::max(d.M, d.N) * 32 <= int64_t(256) * kMaxGrid,
              "art_fast: info_nce (CUDA): G*M or G*N too large for one grid");
  TORCH_CHECK(d.M * d.D <= kMaxInt32 && d.N * d.D <= kMaxInt32,
              "art_fast: info_nce (CUDA) indexes one group with 32-bit integers: M*D and N*D "
              "must be < 2^31, got M = ", d.M, ", N = ", d.N, ", D = ", d.D);
  return d;
}

// float32 in the large regime may run on TF32 tensor cores when torch allows TF32 for CUDA
// matmuls (torch.backends.cuda.matmul.allow_tf32 / fp32_precision "tf32"); when the legacy and
// the new API were mixed, torch refuses to answer: then the exact path.
bool nce_allow_tf32() {
  try {
    return at::globalContext().allowTF32CuBLAS();
  } catch (const c10::Error&) {
    return false;
  }
}

at::Tensor nce_scratch(const cuda::NceDims& d, const at::Tensor& a, bool grad) {
  const size_t bytes = cuda::info_nce_scratch_bytes(d, dtype_of(a, "anchors"), grad);
  return at::empty({static_cast<int64_t>(bytes)}, a.options().dtype(at::kByte));
}

std::tuple<at::Tensor, at::Tensor> info_nce_fwd_cuda(const at::Tensor& anchors,
                                                     const at::Tensor& candidates,
                                                     const at::Tensor& targets,
                                                     double temperature, bool normalize) {
  ART_CHECK_DEVICE_TYPE(anchors, "anchors", c10::kCUDA);
  const auto d = nce_limits(check_info_nce_fwd(anchors, candidates, targets, temperature));
  const c10::cuda::CUDAGuard guard(anchors.device());
  const at::Tensor t = targets.contiguous();
  const auto acc = acc_dtype(anchors.scalar_type());
  auto loss = at::empty({d.G, d.M}, anchors.options().dtype(acc));
  auto lse = at::empty({d.G, d.M}, anchors.options().dtype(acc));
  if (d.G * d.M == 0) return {loss, lse};
  auto scratch = nce_scratch(d, anchors, false);
  check_launch(cuda::info_nce_launch(dtype_of(anchors, "anchors"), anchors.data_ptr(),
                                     candidates.data_ptr(), t.data_ptr<int64_t>(),
                                     temperature, normalize, false, nce_allow_tf32(), d,
                                     loss.data_ptr(), lse.data_ptr(), nullptr, nullptr, nullptr,
                                     nullptr, nullptr, scratch.data_ptr(),
                                     c10::cuda::getCurrentCUDAStream(anchors.device().index())
                                         .stream()),
               "info_nce_fwd");
  return {loss, lse};
}

std::tuple<at::Tensor, at::Tensor> info_nce_bwd_cuda(const at::Tensor& grad_loss,
                                                     const at::Tensor& anchors,
                                                     const at::Tensor& candidates,
                                                     const at::Tensor& targets,
                                                     const at::Tensor& lse, double temperature,
                                                     bool normalize) {
  ART_CHECK_DEVICE_TYPE(anchors, "anchors", c10::kCUDA);
  const auto d = nce_limits(
      check_info_nce_bwd(grad_loss, anchors, candidates, targets, lse, temperature));
  const at::Tensor gl = grad_loss.contiguous();
  const at::Tensor l = lse.contiguous();
  const c10::cuda::CUDAGuard guard(anchors.device());
  const at::Tensor t = targets.contiguous();
  auto da = at::empty_like(anchors);
  auto dc = at::empty_like(candidates);
  if (d.G * d.M == 0) {
    dc.zero_();
    return {da, dc};
  }
  auto scratch = nce_scratch(d, anchors, true);
  check_launch(cuda::info_nce_launch(dtype_of(anchors, "anchors"), anchors.data_ptr(),
                                     candidates.data_ptr(), t.data_ptr<int64_t>(),
                                     temperature, normalize, false, nce_allow_tf32(), d,
                                     nullptr, nullptr, gl.data_ptr(), l.data_ptr(),
                                     da.data_ptr(), dc.data_ptr(), nullptr, scratch.data_ptr(),
                                     c10::cuda::getCurrentCUDAStream(anchors.device().index())
                                         .stream()),
               "info_nce_bwd");
  return {da, dc};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_fused_cuda(
    const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& targets,
    double temperature, bool normalize, bool mean, bool compute_grad) {
  ART_CHECK_DEVICE_TYPE(anchors, "anchors", c10::kCUDA);
  const auto d = nce_limits(check_info_nce_fwd(anchors, candidates, targets, temperature));
  const c10::cuda::CUDAGuard guard(anchors.device());
  const at::Tensor t = targets.contiguous();
  const auto acc = acc_dtype(anchors.scalar_type());
  auto loss = at::empty({}, anchors.options().dtype(acc));
  at::Tensor da = compute_grad ? at::empty_like(anchors) : at::empty({0}, anchors.options());
  at::Tensor dc =
      compute_grad ? at::empty_like(candidates) : at::empty({0}, candidates.options());
  if (d.G * d.M == 0) {
    loss.zero_();
    if (compute_grad) dc.zero_();
    return {loss, da, dc};
  }
  auto scratch = nce_scratch(d, anchors, compute_grad);
  check_launch(cuda::info_nce_launch(dtype_of(anchors, "anchors"), anchors.data_ptr(),
                                     candidates.data_ptr(), t.data_ptr<int64_t>(),
                                     temperature, normalize, mean, nce_allow_tf32(), d,
                                     nullptr, nullptr, nullptr, nullptr,
                                     compute_grad ? da.data_ptr() : nullptr,
                                     compute_grad ? dc.data_ptr() : nullptr, loss.data_ptr(),
                                     scratch.data_ptr(),
                                     c10::cuda::getCurrentCUDAStream(anchors.device().index())
                                         .stream()),
               "info_nce_fused");
  return {loss, da, dc};
}

}  // namespace

}  // namespace art_fast

TORCH_LIBRARY_IMPL(art_fast, CUDA, m) {
  m.impl("info_nce_fwd", &art_fast::info_nce_fwd_cuda);
  m.impl("info_nce_bwd", &art_fast::info_nce_bwd_cuda);
  m.impl("info_nce_fused", &art_fast::info_nce_fused_cuda);
}
