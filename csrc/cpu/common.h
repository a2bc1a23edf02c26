// Helpers shared by the C++ CPU kernels: dtype conversion into float32 (or float64) work
// buffers, the input checks every kernel repeats, and small vector loops written so that GCC
// vectorises them at -O3 without reassociating any sum (every reduction order is fixed, which
// keeps the results bitwise reproducible for any thread count).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cstdint>

namespace art_fast {
namespace cpu {

#define ART_CHECK_CPU_CONTIG(x, name)                                                      \
  TORCH_CHECK((x).device().is_cpu(), "art_fast: ", name, " must be a CPU tensor, got ",    \
              (x).device());                                                               \
  TORCH_CHECK((x).is_contiguous(), "art_fast: ", name, " must be contiguous")

#define ART_CHECK_DIM(x, name, n, shape)                                                   \
  TORCH_CHECK((x).dim() == (n), "art_fast: ", name, " must have shape ", shape, ", got ",  \
              (x).sizes())

// dst[i] = (acc_t) src[i]
template <typename acc_t, typename scalar_t>
inline void load(acc_t* __restrict__ dst, const scalar_t* __restrict__ src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<acc_t>(src[i]);
}

// dst[i] = (acc_t) src[i] * alpha
template <typename acc_t, typename scalar_t>
inline void load_scaled(acc_t* __restrict__ dst, const scalar_t* __restrict__ src, int64_t n,
                        acc_t alpha) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<acc_t>(src[i]) * alpha;
}

// dst[i] = (scalar_t) src[i]
template <typename scalar_t, typename acc_t>
inline void store(scalar_t* __restrict__ dst, const acc_t* __restrict__ src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

// Transposed load: src [rows, cols] row-major -> dst [cols, rows] row-major.
template <typename acc_t, typename scalar_t>
inline void load_t(acc_t* __restrict__ dst, const scalar_t* __restrict__ src, int64_t rows,
                   int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * rows + r] = static_cast<acc_t>(src[r * cols + c]);
}

// y[i] += a * x[i]
template <typename acc_t>
inline void axpy(acc_t* __restrict__ y, const acc_t* __restrict__ x, acc_t a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

template <typename acc_t>
inline void fill(acc_t* __restrict__ y, acc_t v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = v;
}

// Row r of the product C = A B^T, computed as sum_d A[r,d] * Bt[d,:] (Bt = B transposed, so
// the inner loop is an axpy over the columns). a: [D], bt: [D, cols], out: [cols].
template <typename acc_t>
inline void row_times_t(acc_t* __restrict__ out, const acc_t* __restrict__ a,
                        const acc_t* __restrict__ bt, int64_t D, int64_t cols) {
  fill(out, acc_t(0), cols);
  for (int64_t d = 0; d < D; ++d) axpy(out, bt + d * cols, a[d], cols);
}

}  // namespace cpu
}  // namespace art_fast
