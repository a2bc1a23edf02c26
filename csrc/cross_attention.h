// art_fast::cross_attention_{fwd,bwd}: the C++ contract of the op, shared by its CPU kernels
// (cpu/cross_attention.cpp, which also holds the schemas: ART_FAST_DEFINE_OP) and its CUDA
// kernels (cuda/cross_attention.cu): the dims, the device-neutral input checks (checks.h), the
// CUDA launchers' declarations and the entries' host functions, one for both devices (each
// device file provides its side: the limits of its kernels and their launch). Fake kernels and
// the autograd formula are registered from Python (art_fast/ops/cross_attention.py). Shapes use
// the names of DESIGN §3.
//
// Schemas and their tensor contracts:
//   cross_attention_fwd(Tensor q, Tensor k, Tensor v, float scale, bool return_weights)
//       -> (Tensor, Tensor, Tensor)
//     q [Bq,H,M,D] with Bq in {1,B} (1 = one query set shared by the B groups),
//     k, v [B,H,N,D], all of one floating dtype.
//     -> out [B,H,M,D] (dtype of q), lse [B,H,M] (per-row log-sum-exp of the scaled scores;
//        float64 for float64 inputs, else float32: the accumulation dtype),
//        weights [B,H,M,N] (dtype of q) when return_weights, else an empty tensor.
//   cross_attention_bwd(Tensor grad_out, Tensor? grad_weights, Tensor q, Tensor k, Tensor v,
//                       Tensor out, Tensor lse, float scale) -> (Tensor, Tensor, Tensor)
//     grad_out [B,H,M,D], grad_weights [B,H,M,N] or None, saved q, k, v, out, lse.
//     -> dq [Bq,H,M,D] (summed over B in a fixed order when Bq == 1), dk, dv [B,H,N,D].
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

struct CrossAttentionDims {
  int64_t B, Bq, H, M, N, D;
};

// q [Bq,H,M,D] (Bq in {1, B}), k, v [B,H,N,D]: contiguous, on the device of q, one supported
// dtype, no empty dimension.
inline CrossAttentionDims check_cross_attention_fwd(const at::Tensor& q, const at::Tensor& k,
                                                    const at::Tensor& v) {
  const Arg vv{v, "v", 4, "[B, H, N, D]"};
  check_float_inputs({q, "q", 4, "[B, H, M, D]"}, {k, "k", 4, "[B, H, N, D]"}, &vv);
  CrossAttentionDims d{k.size(0), q.size(0), k.size(1), q.size(2), k.size(2), k.size(3)};
  TORCH_CHECK(d.Bq == d.B || d.Bq == 1, "art_fast: q must have shape [B or 1, H, M, D]");
  TORCH_CHECK(q.size(1) == d.H && q.size(3) == d.D,
              "art_fast: q must have shape [B, H, M, D] with H, D of k");
  TORCH_CHECK(d.B > 0 && d.H > 0 && d.M > 0 && d.N > 0 && d.D > 0,
              "art_fast: cross_attention got an empty tensor");
  return d;
}

// The forward's inputs, and grad_out [B,H,M,D] (dtype of q), grad_weights [B,H,M,N] (dtype of
// q; only when has_values), lse [B,H,M] (accumulation dtype): contiguous, on the device of q.
inline CrossAttentionDims check_cross_attention_bwd(const at::Tensor& grad_out,
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

#ifdef ART_FAST_WITH_CUDA
#include "cuda/host.h"  // DType and the launchers' conventions (cudaError_t, cudaStream_t)

namespace art_fast {
namespace cuda {

// ---- launchers (cuda/cross_attention.cu) ------------------------------------------------------
// The kernels index inside one (b, h) pair with 32-bit integers: M * N, M * D and N * D must
// be < 2^31 (checked by the CUDA side in cross_attention.cu); the offsets of the pairs are
// 64-bit.
struct CrossAttnDims {
  int64_t B, Bq, H, M, N, D;
};

// Dynamic shared memory the cross-attention kernels need with `tile` patches per tile; the
// launchers pick the largest tile (<= 64) that fits the device, or report
// cudaErrorInvalidConfiguration when even one patch per tile does not.
size_t cross_attention_smem(const CrossAttnDims& s, DType dt, bool backward, int tile);
size_t cuda_max_smem();

// out [B,H,M,D], lse [B,H,M] acc, weights [B,H,M,N] or nullptr.
cudaError_t cross_attention_fwd_launch(DType dt, const void* q, const void* k, const void* v,
                                       double scale, const CrossAttnDims& s, void* out,
                                       void* lse, void* weights, cudaStream_t stream);
// dq: [Bq,H,M,D] in the input dtype; dq_part: [B,H,M,D] acc scratch, used (and then summed
// over b in a fixed order into dq) when Bq == 1; grad_weights may be nullptr.
cudaError_t cross_attention_bwd_launch(DType dt, const void* grad_out, const void* grad_weights,
                                       const void* q, const void* k, const void* v,
                                       double scale, const CrossAttnDims& s, void* dq,
                                       void* dq_part, void* dk, void* dv, cudaStream_t stream);

}  // namespace cuda
}  // namespace art_fast
#endif  // ART_FAST_WITH_CUDA

namespace art_fast {

// ---- the entries' host functions, one for both devices ----------------------------------------
// Each checks the device type of q and the contract above, lets the device side check the
// limits of its kernels, allocates the outputs as the schemas say and hands them to the device
// side. Dev, the device side (cpu/cross_attention.cpp, cuda/cross_attention.cu), provides
//   static constexpr c10::DeviceType kDevice;
//   Dev(const CrossAttentionDims& d, const at::Tensor& q, bool backward): the limits of its
//       kernels for the checked dims (and, on CUDA, the device guard and the stream);
//   static at::Tensor empty_output_like(const at::Tensor& t): dk, dv (as large as k and v,
//       written once);
//   void fwd(q, k, v, scale, out, lse, weights or nullptr) const;
//   void bwd(grad_out, grad_weights or nullptr, q, k, v, lse, scale, dq, dk, dv) const.

template <typename Dev>
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_attention_fwd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
    bool return_weights) {
  ART_CHECK_DEVICE_TYPE(q, "q", Dev::kDevice);
  const CrossAttentionDims d = check_cross_attention_fwd(q, k, v);
  const Dev dev(d, q, /*backward=*/false);
  auto out = at::empty({d.B, d.H, d.M, d.D}, q.options());
  auto lse = at::empty({d.B, d.H, d.M}, q.options().dtype(acc_dtype(q.scalar_type())));
  auto weights = return_weights ? at::empty({d.B, d.H, d.M, d.N}, q.options())
                                : at::empty({0}, q.options());
  dev.fwd(q, k, v, scale, out, lse, return_weights ? &weights : nullptr);
  return {out, lse, weights};
}

template <typename Dev>
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_attention_bwd(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, double scale) {
  (void)out;  // the kernels of both devices recompute the softmax (see their profiles)
  ART_CHECK_DEVICE_TYPE(q, "q", Dev::kDevice);
  const CrossAttentionDims d = check_cross_attention_bwd(grad_out, grad_weights, q, k, v, lse);
  const Dev dev(d, q, /*backward=*/true);
  auto dq = at::empty_like(q);
  auto dk = Dev::empty_output_like(k);
  auto dv = Dev::empty_output_like(v);
  dev.bwd(grad_out, values_or_null(grad_weights), q, k, v, lse, scale, dq, dk, dv);
  return {dq, dk, dv};
}

// Registers the entries' host functions for the device of Dev: called by the registration
// of cpu/cross_attention.cpp (ART_FAST_DEFINE_OP) and of cuda/cross_attention.cu (ART_FAST_IMPL).
template <typename Dev>
void cross_attention_impl(torch::Library& m) {
  m.impl("cross_attention_fwd", &cross_attention_fwd<Dev>);
  m.impl("cross_attention_bwd", &cross_attention_bwd<Dev>);
}

}  // namespace art_fast
