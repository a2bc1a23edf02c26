// Helpers shared by the C++ CPU kernels: dtype conversion into float32 (or float64) work
// buffers, outputs advised for huge pages, and small vector loops written so that GCC
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
#include <type_traits>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "../checks.h"

namespace art_fast {
namespace cpu {

// The accumulation dtype (checks.h): float64 for float64 inputs, float32 for
// float32/bf16/fp16. Saved row statistics (log-sum-exp) are kept in it, so float64 runs stay
// float64 throughout.
using art_fast::acc_dtype;

// at::empty_like(t), its memory advised for transparent huge pages when large. The torch CPU
// allocator does not cache: a large output is fresh memory from glibc (an mmap, or heap pages
// returned to the system), and on first touch every 4 KiB page costs a fault plus the zeroing
// of the page. For outputs written once by a memory-bound kernel this dominates: ~1-2 us a page,
// ~10 ms of CPU for the 51 MB of cross_attention's dk and dv (measured on a Zen4 VM), against
// ~2 ms to write them. MADV_HUGEPAGE on the 2 MiB-aligned interior of the block (what torch
// itself does for its allocations under THP_MEM_ALLOC_ENABLE=1, but here for these outputs
// only) makes it ~25 faults of 2 MiB. The advice changes no content; where the pages are
// already resident (memory glibc reused) it is a no-op for this call, and where it is refused
// (THP disabled, not anonymous memory) it is ignored.
inline constexpr int64_t kHugeAdviseBytes = int64_t(8) << 20;

inline at::Tensor empty_like_huge(const at::Tensor& t) {
  at::Tensor r = at::empty_like(t, at::MemoryFormat::Contiguous);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (static_cast<int64_t>(r.nbytes()) >= kHugeAdviseBytes) {
    constexpr uintptr_t kHuge = uintptr_t(2) << 20;
    const auto p = reinterpret_cast<uintptr_t>(r.data_ptr());
    const uintptr_t lo = (p + kHuge - 1) & ~(kHuge - 1), hi = (p + r.nbytes()) & ~(kHuge - 1);
    if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
  }
#endif
  return r;
}

// dst[i] = (acc_t) src[i]
template <typename acc_t, typename scalar_t>
inline void load(acc_t* __restrict__ dst, const scalar_t* __restrict__ src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<acc_t>(src[i]);
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

// Dot products and maxima in kLanes interleaved lanes (one 512-bit vector), combined
// pairwise in a fixed order: GCC vectorises the lane loop without -ffast-math, and the order
// (hence the result) never depends on the thread count.
template <typename acc_t>
constexpr int kLanes = std::is_same_v<acc_t, float> ? 16 : 8;

template <typename acc_t>
inline acc_t reduce_lanes(acc_t* s) {
  constexpr int L = kLanes<acc_t>;
  for (int w = L / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) s[l] += s[l + w];
  return s[0];
}

template <typename acc_t>
inline acc_t dot(const acc_t* __restrict__ a, const acc_t* __restrict__ b, int64_t n) {
  constexpr int L = kLanes<acc_t>;
  acc_t s[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) s[l] += a[i + l] * b[i + l];
  for (int l = 0; i < n; ++i, ++l) s[l] += a[i] * b[i];
  return reduce_lanes(s);
}

// The lane maxima of max below: s[l] = the maximum of x[l], x[l + L], ... (NaN skipped; -inf
// for a lane with no element).
template <typename acc_t>
inline void max_lanes(const acc_t* __restrict__ x, int64_t n, acc_t* s) {
  constexpr int L = kLanes<acc_t>;
  for (int l = 0; l < L; ++l) s[l] = -std::numeric_limits<acc_t>::infinity();
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) s[l] = x[i + l] > s[l] ? x[i + l] : s[l];
  for (int l = 0; i < n; ++i, ++l) s[l] = x[i] > s[l] ? x[i] : s[l];
}

// Maximum that skips NaN (a NaN row is caught by the exp that follows); -inf for n == 0.
template <typename acc_t>
inline acc_t max(const acc_t* __restrict__ x, int64_t n) {
  constexpr int L = kLanes<acc_t>;
  acc_t s[L];
  max_lanes(x, n, s);
  for (int w = L / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) s[l] = s[l + w] > s[l] ? s[l + w] : s[l];
  return s[0];
}

// exp for float, vectorisable: Cephes expf (Cody-Waite range reduction by ln 2, degree-5
// polynomial; ~1 ulp), branch free. exp(x) = 0 for x < -87.3 (no subnormals, and -inf gives
// exactly 0); +inf for x > 88.37; NaN propagates.
inline float exp_fast(float x) {
  const float xc0 = x > 88.3762626647949f ? 88.3762626647949f : x;
  const float xc = xc0 < -87.3365447504f ? -87.3365447504f : xc0;
  // Round to nearest by the 1.5 * 2^23 trick (no rounding call, so loops vectorise); the low
  // bits of the biased sum are n.
  const float biased = xc * 1.44269504088896341f + 12582912.0f;
  const float fn = biased - 12582912.0f;
  float r = xc - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t n = std::bit_cast<int32_t>(biased) - 0x4B400000;
  const float scale = std::bit_cast<float>(static_cast<int32_t>((n + 127) << 23));
  float out = y * scale;
  out = x < -87.3365447504f ? 0.0f : out;
  out = x > 88.3762626647949f ? std::numeric_limits<float>::infinity() : out;
  return out;
}
// exp in the accumulation type: exp_fast for float, std::exp for double.
inline float exp_acc(float x) { return exp_fast(x); }
inline double exp_acc(double x) { return std::exp(x); }

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

// A vector of VB bytes of T (GCC vector extension; lowered to the widest native registers).
template <typename T, int VB = kVecBytes>
struct Vec {
  typedef T type __attribute__((vector_size(VB)));
};

// Elements of acc_t in one VB-byte vector.
template <typename acc_t, int VB = kVecBytes>
constexpr int nr() {
  return VB / static_cast<int>(sizeof(acc_t));
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Whether stream_store<acc_t, VB> is a non-temporal store (else it is a plain store).
template <typename acc_t, int VB>
constexpr bool kCanStream =
    (std::is_same_v<acc_t, float> || std::is_same_v<acc_t, double>) &&
    ((VB == 64 && kVecBytes == 64) || (VB == 32 && kVecBytes >= 32));

// Stores one vector to p (VB-byte aligned when kCanStream) with a non-temporal hint: the line
// goes to memory without being read first or kept in cache. For large outputs written once
// (dk, dv) this halves their memory traffic and leaves the caches to the inputs. The stores are
// weakly ordered: a kernel that streams calls stream_fence() before its results are read.
template <typename acc_t, int VB>
inline void stream_store(acc_t* p, typename Vec<acc_t, VB>::type x) {
#if defined(__AVX512F__)
  if constexpr (VB == 64 && std::is_same_v<acc_t, float>) return _mm512_stream_ps(p, (__m512)x);
  if constexpr (VB == 64 && std::is_same_v<acc_t, double>) return _mm512_stream_pd(p, (__m512d)x);
#endif
#if defined(__AVX__)
  if constexpr (VB == 32 && std::is_same_v<acc_t, float>) return _mm256_stream_ps(p, (__m256)x);
  if constexpr (VB == 32 && std::is_same_v<acc_t, double>) return _mm256_stream_pd(p, (__m256d)x);
#endif
  std::memcpy(p, &x, sizeof(x));
}

inline void stream_fence() {
#if defined(__AVX__)
  _mm_sfence();
#endif
}

// One MR x (NV vectors) tile of C; see gemm below.
template <bool TransA, int MR, int VB, bool Accum, int NV, bool Stream, typename acc_t>
inline void gemm_tile(const acc_t* __restrict__ a0, int64_t si, int64_t sk,
                      const acc_t* __restrict__ B, int64_t ldb, acc_t* __restrict__ C,
                      int64_t ldc, int64_t K) {
  using V = typename Vec<acc_t, VB>::type;
  constexpr int NR = nr<acc_t, VB>();
  V acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      if constexpr (Accum) {
        std::memcpy(&acc[i][v], C + i * ldc + v * NR, sizeof(V));
      } else {
        acc[i][v] = V{};
      }
    }
  }
  for (int64_t kk = 0; kk < K; ++kk) {
    V b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) std::memcpy(&b[v], B + kk * ldb + v * NR, sizeof(V));
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const acc_t a = a0[i * si + kk * sk];
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[i][v] += a * b[v];
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      if constexpr (Stream) {
        stream_store<acc_t, VB>(C + i * ldc + v * NR, acc[i][v]);
      } else {
        std::memcpy(C + i * ldc + v * NR, &acc[i][v], sizeof(V));
      }
    }
  }
}

// MR rows of C at a time (R % MR == 0), one or two VB-byte vectors of columns at a time
// (Cc % nr<acc_t, VB>() == 0; two vectors -- 16 accumulators -- where the registers allow it,
// ~1.5x faster on AVX-512). Narrower VB / MR serve tiles with few columns or rows (a few
// queries) without padding them to a full 512-bit vector. Accum = true adds to C (the sum
// continues from C's values, so a K range split in two calls sums in the same order as one).
// Stream = true writes C with stream_store (C and ldc aligned to VB bytes; see there).
// PF > 0 (A not transposed) prefetches (towards L2) the rows of A that are PF rows ahead of each
// row block: for an A streamed from memory (a k or v tile read once), the hardware prefetcher
// alone leaves the broadcasts waiting on its lines. Prefetches never fault, so PF may run past
// the end of A.
// Every C element is one sum over K in increasing order, whatever the tiling.
template <bool TransA, int MR = kMR, int VB = kVecBytes, bool Accum = false,
          bool Stream = false, int PF = 0, typename acc_t>
void gemm(const acc_t* __restrict__ A, int64_t lda, const acc_t* __restrict__ B, int64_t ldb,
          acc_t* __restrict__ C, int64_t ldc, int64_t R, int64_t K, int64_t Cc) {
  constexpr int NR = nr<acc_t, VB>();
  constexpr bool kPairs = VB == 64 && MR <= 8;  // 2 * MR accumulators + 2 fit 32 registers
  const int64_t si = TransA ? 1 : lda, sk = TransA ? lda : 1;
  for (int64_t i0 = 0; i0 < R; i0 += MR) {
    const acc_t* a0 = TransA ? A + i0 : A + i0 * lda;
    if constexpr (PF > 0 && !TransA) {  // the rows of A PF rows ahead, one line at a time
      const int64_t bytes = MR * lda * static_cast<int64_t>(sizeof(acc_t));
      const char* pf = reinterpret_cast<const char*>(A + (i0 + PF) * lda);
      for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(pf + b, 0, 1);
    }
    int64_t j0 = 0;
    if constexpr (kPairs) {
      for (; j0 + 2 * NR <= Cc; j0 += 2 * NR)
        gemm_tile<TransA, MR, VB, Accum, 2, Stream>(a0, si, sk, B + j0, ldb, C + i0 * ldc + j0,
                                                    ldc, K);
    }
    for (; j0 < Cc; j0 += NR)
      gemm_tile<TransA, MR, VB, Accum, 1, Stream>(a0, si, sk, B + j0, ldb, C + i0 * ldc + j0, ldc,
                                                  K);
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

}  // namespace cpu
}  // namespace art_fast
