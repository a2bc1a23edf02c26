// art_fast::info_nce_{fwd,bwd,fused}: the C++ contract of the op, shared by its CPU kernels
// (cpu/info_nce.cpp, which also holds the schemas: ART_FAST_DEFINE_OP) and its CUDA kernels
// (cuda/info_nce.cu): the dims, the device-neutral input checks (checks.h), the CUDA
// launcher's declarations and the entries' host functions, one for both devices (each device
// file provides its side: the limits of its kernels, the targets and the launch). Fake kernels
// and the autograd formula are registered from Python (art_fast/ops/info_nce.py). Shapes use
// the names of DESIGN §3.
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
// Plain C++ (ATen's Tensor, per-operator ATen headers and c10's checks, no device code), so that
// both the C++ and the CUDA compiler include it; the launcher's declarations need the CUDA
// runtime API and are there only in a CUDA build (ART_FAST_WITH_CUDA, set by setup.py).
#pragma once

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <tuple>

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
  check_float_inputs({a, "anchors", 3, "[G, M, D]"}, {c, "candidates", 3, "[G, N, D]"});
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

namespace art_fast {

// ---- the entries' host functions, one for both devices ----------------------------------------
// Each checks the device type of anchors and the contract above, lets the device side check
// the limits of its kernels (and the values of targets), allocates the outputs as the schemas
// say, returns them as they are for G * M == 0 (zeros where the schema wants them) and
// otherwise hands them to the device side. Dev, the device side (cpu/info_nce.cpp,
// cuda/info_nce.cu), provides
//   static constexpr c10::DeviceType kDevice;
//   Dev(const InfoNceDims& d, const at::Tensor& anchors, const at::Tensor& targets): the
//       limits of its kernels for the checked dims, targets made contiguous (the CPU checks its
//       values) and, on CUDA, the device guard;
//   void fwd(anchors, candidates, temperature, normalize, loss, lse) const;
//   void bwd(grad_loss, anchors, candidates, lse, temperature, normalize, ga, gc) const
//       (grad_loss and lse made contiguous);
//   void fused(anchors, candidates, temperature, normalize, mean, loss, ga, gc) const (ga, gc
//       nullptr when !compute_grad).

template <typename Dev>
std::tuple<at::Tensor, at::Tensor> info_nce_fwd(const at::Tensor& anchors,
                                                const at::Tensor& candidates,
                                                const at::Tensor& targets, double temperature,
                                                bool normalize) {
  ART_CHECK_DEVICE_TYPE(anchors, "anchors", Dev::kDevice);
  const InfoNceDims d = check_info_nce_fwd(anchors, candidates, targets, temperature);
  const Dev dev(d, anchors, targets);
  const auto acc = acc_dtype(anchors.scalar_type());
  auto loss = at::empty({d.G, d.M}, anchors.options().dtype(acc));
  auto lse = at::empty({d.G, d.M}, anchors.options().dtype(acc));
  if (d.G * d.M == 0) return {loss, lse};
  dev.fwd(anchors, candidates, temperature, normalize, loss, lse);
  return {loss, lse};
}

template <typename Dev>
std::tuple<at::Tensor, at::Tensor> info_nce_bwd(const at::Tensor& grad_loss,
                                                const at::Tensor& anchors,
                                                const at::Tensor& candidates,
                                                const at::Tensor& targets, const at::Tensor& lse,
                                                double temperature, bool normalize) {
  ART_CHECK_DEVICE_TYPE(anchors, "anchors", Dev::kDevice);
  const InfoNceDims d =
      check_info_nce_bwd(grad_loss, anchors, candidates, targets, lse, temperature);
  const Dev dev(d, anchors, targets);
  auto da = at::empty_like(anchors);
  auto dc = at::empty_like(candidates);
  if (d.G * d.M == 0) {
    dc.zero_();
    return {da, dc};
  }
  dev.bwd(grad_loss.contiguous(), anchors, candidates, lse.contiguous(), temperature, normalize,
          da, dc);
  return {da, dc};
}

template <typename Dev>
std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_fused(
    const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& targets,
    double temperature, bool normalize, bool mean, bool compute_grad) {
  ART_CHECK_DEVICE_TYPE(anchors, "anchors", Dev::kDevice);
  const InfoNceDims d = check_info_nce_fwd(anchors, candidates, targets, temperature);
  const Dev dev(d, anchors, targets);
  auto loss = at::empty({}, anchors.options().dtype(acc_dtype(anchors.scalar_type())));
  at::Tensor da = compute_grad ? at::empty_like(anchors) : at::empty({0}, anchors.options());
  at::Tensor dc =
      compute_grad ? at::empty_like(candidates) : at::empty({0}, candidates.options());
  if (d.G * d.M == 0) {
    loss.zero_();
    if (compute_grad) dc.zero_();
    return {loss, da, dc};
  }
  dev.fused(anchors, candidates, temperature, normalize, mean, loss,
            compute_grad ? &da : nullptr, compute_grad ? &dc : nullptr);
  return {loss, da, dc};
}

// Registers the entries' host functions for the device of Dev: called by the registration
// of cpu/info_nce.cpp (ART_FAST_DEFINE_OP) and of cuda/info_nce.cu (ART_FAST_IMPL).
template <typename Dev>
void info_nce_impl(torch::Library& m) {
  m.impl("info_nce_fwd", &info_nce_fwd<Dev>);
  m.impl("info_nce_bwd", &info_nce_bwd<Dev>);
  m.impl("info_nce_fused", &info_nce_fused<Dev>);
}

}  // namespace art_fast
