// Helpers shared by the C++ CPU kernels: dtype conversion into float32 (or float64) work
// buffers, the input checks every kernel repeats, and small vector loops written so that GCC
// vectorises them at -O3 without reassociating any sum (every reduction order is fixed, which
// keeps the results bitwise reproducible for any thread count).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace art_fast {
namespace cpu {

#define ART_CHECK_CPU_CONTIG(x, name)                                                      \
  TORCH_CHECK((x).device().is_cpu(), "art_fast: ", name, " must be a CPU tensor, got ",    \
              (x).device());                                                               \
  TORCH_CHECK((x).is_contiguous(), "art_fast: ", name, " must be contiguous")

#define ART_CHECK_DIM(x, name, n, shape)                                                   \
  TORCH_CHECK((x).dim() == (n), "art_fast: ", name, " must have shape ", shape, ", got ",  \
              (x).sizes())

// The accumulation dtype: float64 for float64 inputs, float32 for float32/bf16/fp16. Saved
// row statistics (log-sum-exp) are kept in it, so float64 runs stay float64 throughout.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

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

// Transposed load: src [rows, cols] row-major -> dst [cols, ld_dst] row-major (ld_dst >= rows;
// the default ld_dst = rows packs it).
template <typename acc_t, typename scalar_t>
inline void load_t(acc_t* __restrict__ dst, const scalar_t* __restrict__ src, int64_t rows,
                   int64_t cols, int64_t ld_dst = -1, acc_t alpha = acc_t(1)) {
  if (ld_dst < 0) ld_dst = rows;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      dst[c * ld_dst + r] = static_cast<acc_t>(src[r * cols + c]) * alpha;
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

// Sums and maxima in 8 interleaved lanes, combined in a fixed order: GCC vectorises the lane
// loop without -ffast-math, and the order (hence the result) does not depend on threads.
constexpr int kLanes = 8;

template <typename acc_t>
inline acc_t sum(const acc_t* __restrict__ x, int64_t n) {
  acc_t lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] += x[i + j];
  for (int j = 0; i < n; ++i, ++j) lane[j] += x[i];
  acc_t total = 0;
  for (int j = 0; j < kLanes; ++j) total += lane[j];
  return total;
}

template <typename acc_t>
inline acc_t dot(const acc_t* __restrict__ x, const acc_t* __restrict__ y, int64_t n) {
  acc_t lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] += x[i + j] * y[i + j];
  for (int j = 0; i < n; ++i, ++j) lane[j] += x[i] * y[i];
  acc_t total = 0;
  for (int j = 0; j < kLanes; ++j) total += lane[j];
  return total;
}

// Maximum that ignores NaN (a NaN row is caught by the exp that follows); -inf for n == 0.
template <typename acc_t>
inline acc_t max(const acc_t* __restrict__ x, int64_t n) {
  constexpr acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  acc_t lane[kLanes] = {ninf, ninf, ninf, ninf, ninf, ninf, ninf, ninf};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
  for (int j = 0; i < n; ++i, ++j) lane[j] = x[i] > lane[j] ? x[i] : lane[j];
  acc_t m = ninf;
  for (int j = 0; j < kLanes; ++j) m = lane[j] > m ? lane[j] : m;
  return m;
}

// exp for softmax arguments (x <= 0 or NaN), vectorisable: Cody-Waite range reduction
// x = n ln2 + r, |r| <= ln2/2, the Cephes degree-6 polynomial for exp(r) (relative error
// below 2e-7 in float32), and 2^n built in the exponent bits. Below -87.3 (where exp underflows
// to the subnormals) the result is 0, so -inf gives exactly 0; NaN gives NaN. float64 uses
// std::exp.
inline float exp_neg(float x) {
  const float xc = x < -87.3f ? -87.3f : (x > 88.0f ? 88.0f : x);
  const float n = std::nearbyint(xc * 1.44269504088896341f);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  const float out = y * std::bit_cast<float>(e);
  return x < -87.3f ? 0.0f : (x != x ? x : out);
}
inline double exp_neg(double x) { return std::exp(x); }

// x[i] = exp(x[i] - shift) in place; returns sum_i x[i] (lanes as in sum()).
template <typename acc_t>
inline acc_t exp_shift(acc_t* x, acc_t shift, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = exp_neg(x[i] - shift);
  return sum(x, n);
}

// ---- a small register-blocked GEMM for the per-(b, h) tiles ----------------------------------
// C[R, Cc] = op(A) B[K, Cc], all row-major with leading dimensions lda, ldb, ldc, where
// op(A) = A [R, K] (TransA = false) or A^T with A stored [K, R] (TransA = true; the kernel only
// broadcasts single elements of A, so the transpose costs nothing). R must be a multiple of kMR
// and Cc a multiple of nr<acc_t>() (callers pad their work buffers with zeros).
// kMR vector accumulators (GCC vector extensions, one native vector wide) stay in registers
// while K is walked in increasing order, so each C element is one fixed-order sum. GCC's own
// vectoriser does 5-8x worse on this loop nest when the sizes are not compile-time constants.
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
constexpr int kMR = 8;

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(kVecBytes)));
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(kVecBytes)));
};

template <typename acc_t>
constexpr int nr() {
  return kVecBytes / static_cast<int>(sizeof(acc_t));
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <bool TransA, typename acc_t>
void gemm(const acc_t* __restrict__ A, int64_t lda, const acc_t* __restrict__ B, int64_t ldb,
          acc_t* __restrict__ C, int64_t ldc, int64_t R, int64_t K, int64_t Cc) {
  using V = typename Vec<acc_t>::type;
  constexpr int NR = nr<acc_t>();
  for (int64_t i0 = 0; i0 < R; i0 += kMR) {
    const acc_t* a0 = TransA ? A + i0 : A + i0 * lda;
    const int64_t si = TransA ? 1 : lda, sk = TransA ? lda : 1;
    for (int64_t j0 = 0; j0 < Cc; j0 += NR) {
      V acc[kMR];
#pragma GCC unroll 8
      for (int i = 0; i < kMR; ++i) acc[i] = V{};
      for (int64_t kk = 0; kk < K; ++kk) {
        V b;
        std::memcpy(&b, B + kk * ldb + j0, sizeof(V));
#pragma GCC unroll 8
        for (int i = 0; i < kMR; ++i) acc[i] += a0[i * si + kk * sk] * b;
      }
#pragma GCC unroll 8
      for (int i = 0; i < kMR; ++i) std::memcpy(C + (i0 + i) * ldc + j0, &acc[i], sizeof(V));
    }
  }
}

// dst [rows, ld_dst] <- src [rows, cols] converted, the padding columns zeroed; the rows from
// `rows` to `rows_pad` are zeroed too.
template <typename acc_t, typename scalar_t>
inline void load_pad(acc_t* __restrict__ dst, int64_t ld_dst, int64_t rows_pad,
                     const scalar_t* __restrict__ src, int64_t rows, int64_t cols,
                     acc_t alpha = acc_t(1)) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[r * ld_dst + c] = static_cast<acc_t>(src[r * cols + c]) * alpha;
    for (int64_t c = cols; c < ld_dst; ++c) dst[r * ld_dst + c] = acc_t(0);
  }
  for (int64_t r = rows; r < rows_pad; ++r)
    for (int64_t c = 0; c < ld_dst; ++c) dst[r * ld_dst + c] = acc_t(0);
}

// Transpose a padded work buffer: dst [cols_pad, ld_dst] <- src [rows_pad, ld_src]^T for the
// first rows_pad rows and cols_pad columns of src.
template <typename acc_t>
inline void transpose(acc_t* __restrict__ dst, int64_t ld_dst, const acc_t* __restrict__ src,
                      int64_t ld_src, int64_t rows_pad, int64_t cols_pad) {
  for (int64_t r = 0; r < rows_pad; ++r)
    for (int64_t c = 0; c < cols_pad; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
}

}  // namespace cpu
}  // namespace art_fast
