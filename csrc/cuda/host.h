// Helpers shared by the CUDA host wrappers (cuda/<op>_host.cpp): the DType of a tensor for the
// launchers (launch.h), the launch error check, the grid and 32-bit index limits.
//
// Host code only, compiled by the C++ compiler. Every host wrapper checks the device type of
// its first input, runs the op's device-neutral check (checks.h), then the limits of its CUDA
// kernels, allocates the outputs as the schemas say and launches on the current CUDA stream
// of the inputs' device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <optional>

#include "../checks.h"
#include "launch.h"

namespace art_fast {
namespace cuda {

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
