// Host side of the CUDA kernels of art_fast::cross_attention_{fwd,bwd}: the input checks (the
// device-neutral check_cross_attention_* of ../cross_attention.cpp, then the limits of these
// kernels), output allocation, device guard and stream, and the registration for the CUDA
// dispatch key. The kernels and their launchers are in cross_attention.cu (see launch.h).
//
// A .cpp compiled by the C++ compiler, not nvcc: the .cu files stay device code with CUDA
// headers only (benchmarks/cuda_ptxas.py compiles them without torch), and the host code of
// each op compiles on its own, once (not once per CUDA architecture). Per-operator ATen headers
// (not ATen/ATen.h): ~3x faster to compile. Outputs follow the schema: lse in the accumulation
// dtype (float64 for float64 inputs, else float32), everything else in the inputs' dtype.
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
using cuda::DType;
using cuda::dtype_of;
using cuda::kMaxGrid;
using cuda::kMaxInt32;
using cuda::opt_ptr;

// The checked dims, within the limits of these kernels: one block per (b, h) pair, 32-bit
// index math inside a pair.
cuda::CrossAttnDims ca_limits(const CrossAttentionDims& c) {
  const cuda::CrossAttnDims d{c.B, c.Bq, c.H, c.M, c.N, c.D};
  TORCH_CHECK(d.B * d.H <= kMaxGrid, "art_fast: cross_attention (CUDA) needs B*H < 2^31");
  TORCH_CHECK(d.M * d.N <= kMaxInt32 && d.M * d.D <= kMaxInt32 && d.N * d.D <= kMaxInt32,
              "art_fast: cross_attention (CUDA) indexes one (b, h) pair with 32-bit integers: "
              "M*N, M*D and N*D must be < 2^31, got M = ", d.M, ", N = ", d.N, ", D = ", d.D);
  return d;
}

void ca_check_smem(const cuda::CrossAttnDims& d, DType dt, bool backward) {
  const size_t need = cuda::cross_attention_smem(d, dt, backward, 1);
  const size_t have = cuda::cuda_max_smem();
  TORCH_CHECK(need <= have, "art_fast: cross_attention (CUDA) keeps the queries of one (b, h) ",
              "pair in shared memory: M = ", d.M, ", D = ", d.D, " need ", need,
              " bytes, the device allows ", have, "; use backend='torch' (or 'triton') for ",
              "such shapes");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_attention_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
    bool return_weights) {
  ART_CHECK_DEVICE_TYPE(q, "q", c10::kCUDA);
  const auto d = ca_limits(check_cross_attention_fwd(q, k, v));
  const c10::cuda::CUDAGuard guard(q.device());
  const DType dt = dtype_of(q, "q");
  ca_check_smem(d, dt, false);
  auto out = at::empty({d.B, d.H, d.M, d.D}, q.options());
  auto lse = at::empty({d.B, d.H, d.M}, q.options().dtype(acc_dtype(q.scalar_type())));
  auto weights = return_weights ? at::empty({d.B, d.H, d.M, d.N}, q.options())
                                : at::empty({0}, q.options());
  check_launch(cuda::cross_attention_fwd_launch(
                   dt, q.data_ptr(), k.data_ptr(), v.data_ptr(), scale, d, out.data_ptr(),
                   lse.data_ptr(), return_weights ? weights.data_ptr() : nullptr,
                   c10::cuda::getCurrentCUDAStream(q.device().index()).stream()),
               "cross_attention_fwd");
  return {out, lse, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_attention_bwd_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, double scale) {
  (void)out;  // the backward recomputes the softmax statistics (see cross_attention.cu)
  ART_CHECK_DEVICE_TYPE(q, "q", c10::kCUDA);
  const auto d = ca_limits(check_cross_attention_bwd(grad_out, grad_weights, q, k, v, lse));
  const void* gw = opt_ptr(grad_weights);
  const c10::cuda::CUDAGuard guard(q.device());
  const DType dt = dtype_of(q, "q");
  ca_check_smem(d, dt, true);
  auto dq = at::empty_like(q);
  auto dk = at::empty_like(k);
  auto dv = at::empty_like(v);
  at::Tensor part;
  if (d.Bq != d.B) {
    part = at::empty({d.B, d.H, d.M, d.D}, q.options().dtype(acc_dtype(q.scalar_type())));
  }
  check_launch(cuda::cross_attention_bwd_launch(
                   dt, grad_out.data_ptr(), gw, q.data_ptr(), k.data_ptr(), v.data_ptr(), scale,
                   d, dq.data_ptr(), part.defined() ? part.data_ptr() : nullptr, dk.data_ptr(),
                   dv.data_ptr(), c10::cuda::getCurrentCUDAStream(q.device().index()).stream()),
               "cross_attention_bwd");
  return {dq, dk, dv};
}

}  // namespace

}  // namespace art_fast

TORCH_LIBRARY_IMPL(art_fast, CUDA, m) {
  m.impl("cross_attention_fwd", &art_fast::cross_attention_fwd_cuda);
  m.impl("cross_attention_bwd", &art_fast::cross_attention_bwd_cuda);
}
