// What the CUDA side of every op shares on the host: the element type of the launchers (DType)
// and of a tensor (dtype_of), the launch error check, the grid and 32-bit index limits, and the
// data of an optional gradient. Included by each op's contract header csrc/<op>.h (for its
// launchers' declarations, in a CUDA build) and by its cuda/<op>.cu.
//
// The launchers (declared in csrc/<op>.h, defined in cuda/<op>.cu next to the kernels) are
// plain C++: pointers are untyped and the element type is a DType. Every launcher runs on
// `stream`, returns the first CUDA error it met (launch or attribute), and expects contiguous
// tensors of the shapes given (checked by the caller). Element types: the inputs' dtype `dt`;
// "acc" = float (double for DType::f64) for lse, losses, partial sums and scratch.
//
// The host wrappers (in cuda/<op>.cu, after the launchers) each check the device type of their
// first input, run the op's device-neutral check (csrc/<op>.h), then the limits of its CUDA
// kernels, allocate the outputs as the schemas say and launch on the current CUDA stream of
// the inputs' device. Host code only, no device code: per-operator ATen headers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>

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

inline constexpr int64_t kMaxGrid = std::numeric_limits<int32_t>::max();
// Largest extent the kernels index with 32-bit integers (inside one (b, h) pair / group).
inline constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "art_fast: ", op, ": CUDA error: ", cudaGetErrorString(err));
}

// The data of an optional gradient, or nullptr when it holds none (checks.h has_values).
inline const void* opt_ptr(const std::optional<at::Tensor>& t) {
  return has_values(t) ? t->data_ptr() : nullptr;
}

}  // namespace cuda
}  // namespace art_fast
