// What the CUDA side of every op shares on the host: the element type of the launchers (DType)
// and of a tensor (dtype_of), the launchers' dispatch on it (dispatch, in the .cu files), the
// launch error check, the grid and 32-bit index limits, and where a host function launches
// (LaunchContext). Included by each op's contract header csrc/<op>.h (for its launchers'
// declarations, in a CUDA build) and by its cuda/<op>.cu.
//
// The launchers (declared in csrc/<op>.h, defined in cuda/<op>.cu next to the kernels) are
// plain C++: pointers are untyped and the element type is a DType. Every launcher runs on
// `stream`, returns the first CUDA error it met (launch or attribute), and expects contiguous
// tensors of the shapes given (checked by the caller). Element types: the inputs' dtype `dt`;
// "acc" = float (double for DType::f64) for lse, losses, partial sums and scratch.
//
// The host functions of an op (csrc/<op>.h, one for both devices) check the device type of
// their first input and the op's device-neutral contract, and allocate the outputs as the
// schemas say; the CUDA side (in cuda/<op>.cu, after the launchers) checks the limits of its
// CUDA kernels, holds a LaunchContext on the inputs' device and launches on its current CUDA
// stream. Host code only, no device code: per-operator ATen headers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>
#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#include <cstddef>
#include <cstdint>
#include <limits>

#include "../checks.h"

namespace art_fast {
namespace cuda {

enum class DType { f32, f64, f16, bf16 };

inline DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kDouble: return DType::f64;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default:
      TORCH_CHECK(false, "art_fast: ", name,
                  " must be float32, bfloat16, float16 or float64, got ", t.scalar_type());
  }
  return DType::f32;  // not reached
}

#ifdef __CUDACC__
// The launchers' dispatch on the element type (in the .cu files): f.template operator()<T>()
// for the type T that dt names (float, double, __half, __nv_bfloat16), e.g.
//   return dispatch(dt, [&]<typename T>() { return fwd_launch<T>(...); });
template <typename F>
cudaError_t dispatch(DType dt, F&& f) {
  switch (dt) {
    case DType::f32: return f.template operator()<float>();
    case DType::f64: return f.template operator()<double>();
    case DType::f16: return f.template operator()<__half>();
    case DType::bf16: return f.template operator()<__nv_bfloat16>();
  }
  return cudaErrorInvalidValue;
}
#endif  // __CUDACC__

inline constexpr int64_t kMaxGrid = std::numeric_limits<int32_t>::max();
// Largest extent the kernels index with 32-bit integers (inside one (b, h) pair / group).
inline constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "art_fast: ", op, ": CUDA error: ", cudaGetErrorString(err));
}

// Where the launches of a host function go: its first input x is on a CUDA device; a device
// guard on it (held while the host function runs, so that the outputs are allocated and the
// kernels launched there), the current CUDA stream of that device and the element type of x.
struct LaunchContext {
  const c10::cuda::CUDAGuard guard;
  const cudaStream_t stream;
  const DType dt;

  LaunchContext(const at::Tensor& x, const char* name)
      : guard(x.device()),
        stream(c10::cuda::getCurrentCUDAStream(x.device().index()).stream()),
        dt(dtype_of(x, name)) {}
};

}  // namespace cuda
}  // namespace art_fast
