// Device helpers shared by the CUDA kernels of art_fast (csrc/cuda/*.cu).
//
// CUDA headers only (no ATen): each cuda/<op>.cu holds the kernels, the plain launchers
// declared in csrc/<op>.h, and after them the host side (the CUDA side of the op's host
// functions: kernel limits, device guard, stream, launches; and the registration; ATen and the
// shared host helpers of host.h).
//
// Precision: every kernel accumulates in acc_t = float for float/half/bfloat16 inputs and
// double for double inputs (the accumulation dtype of the schemas).
// Determinism: every reduction here (warp_sum, warp_max, block_sum, ...) combines its operands
// in one fixed order (xor-butterfly over the lanes, then warps in index order); no atomics.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace art_fast {
namespace cuda {

// ---- accumulation type and conversions ------------------------------------------------------
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Acc<T>::type;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(float x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <typename T>
__device__ __forceinline__ T from_acc(double x);
template <>
__device__ __forceinline__ double from_acc<double>(double x) { return x; }

// ---- math in the accumulation type -----------------------------------------------------------
__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }
__device__ __forceinline__ float sqrt_acc(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_acc(double x) { return sqrt(x); }

template <typename A>
__device__ __forceinline__ A neg_inf() {
  return -static_cast<A>(INFINITY);
}
template <typename A>
__device__ __forceinline__ A quiet_nan() {
  return static_cast<A>(NAN);
}

// Maximum that skips NaN (fmax: the non-NaN operand wins, symmetric, so a butterfly gives
// every lane the same value), as the CPU kernels' maxima; a NaN row is caught by the exp
// that follows the max.
__device__ __forceinline__ float max_skip_nan(float m, float x) { return fmaxf(m, x); }
__device__ __forceinline__ double max_skip_nan(double m, double x) { return fmax(m, x); }

// ---- warp and block reductions (fixed order) -------------------------------------------------
constexpr unsigned kFullMask = 0xffffffffu;

// Sum over the 32 lanes by an xor butterfly: every lane gets the same, bitwise reproducible
// result (the pairing of the operands is fixed).
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max_skip_nan(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Block-wide sum / max: warp_sum per warp, then warp 0 combines the warps' results in index
// order. scratch: >= 32 values of shared memory. Every thread of the block must call it; every
// thread gets the result. Ends with a __syncthreads, so scratch can be reused at once.
template <typename A, bool IsMax>
__device__ __forceinline__ A block_reduce(A v, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
  v = IsMax ? warp_max(v) : warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    A r = lane < nwarps ? scratch[lane] : (IsMax ? neg_inf<A>() : A(0));
    r = IsMax ? warp_max(r) : warp_sum(r);
    if (lane == 0) scratch[32] = r;
  }
  __syncthreads();
  const A out = scratch[32];
  __syncthreads();
  return out;
}

template <typename A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
  return block_reduce<A, false>(v, scratch);
}
template <typename A>
__device__ __forceinline__ A block_max(A v, A* scratch) {
  return block_reduce<A, true>(v, scratch);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Dynamic shared memory above the default 48 KiB needs an opt-in per kernel.
template <typename K>
inline cudaError_t allow_smem(K kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

// Largest dynamic shared memory a block may use on the current device (opt-in limit).
inline size_t max_smem_optin() {
  int dev = 0, v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 48 * 1024;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
    return 48 * 1024;
  return static_cast<size_t>(v);
}

}  // namespace cuda
}  // namespace art_fast
