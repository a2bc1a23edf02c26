// C++ CPU kernel for art_fast::cross_attention_{fwd,bwd} and the CPU side of the entries' host
// functions (CrossAttentionCpu); at the end the op's schemas and the kernel's registration for
// the CPU dispatch key (ART_FAST_DEFINE_OP). The tensor contracts, the input checks and the
// host functions are in ../cross_attention.h.
//
// out = softmax(q k^T * scale) v, per (b, h), with M (queries) small and N (patches) ~ 200.
//
// Profile
//   inputs   q [Bq,H,M,D] (Bq = 1: one query set shared by all B groups), k, v [B,H,N,D];
//            float64, float32, bf16 or fp16, contiguous.
//   outputs  out [B,H,M,D] (input dtype), lse [B,H,M] (accumulation dtype), weights [B,H,M,N] on request.
//   saved    q, k, v, lse (out and lse are in the schema for the GPU kernels; this kernel reads
//            neither: its backward recomputes the scores and their softmax exactly as the
//            forward did, which keeps P bitwise equal to the forward's). The score matrix is
//            never saved.
//   grid     at::parallel_for over the B*H (b, h) pairs; each pair is one task that owns its
//            outputs, so no two threads write the same element.
//   outputs' memory dk and dv (as large as k and v) are advised for transparent huge pages when
//            fresh (cpu::empty_like_huge) and written once, by the GEMMs' streaming stores
//            (float32, D a multiple of the vector width); see kv_grad_gemm.
//   memory   per thread: zero-padded work buffers of one pair (q, k, v, the [N, M] scores; the
//            backward adds dO and dS), in the accumulation type: ~100 KB at the paper shapes.
//            Tile products go through cpu::gemm (register-blocked, see common.h).
//   precision fp32 accumulation for fp32/bf16/fp16 (float64 for float64); softmax subtracts the
//            row max before exp; the backward's row term delta = sum_n P dP is computed from
//            the recomputed P and dP in the accumulation type, not from the rounded out.
//   determinism every sum has a fixed order; the gradient of a shared query (Bq = 1) is summed
//            over b in increasing b after the parallel region, so results do not depend on the
//            thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../cross_attention.h"
#include "common.h"

namespace art_fast {
namespace cpu {

namespace {

// s.B, s.Bq, s.H, s.M, s.N, s.D of the checked inputs (../cross_attention.h).
using Dims = CrossAttentionDims;

// Layout. Every per-pair buffer is kept "patch-major": scores, probabilities and their
// gradients live as S^T [Np, Mp] (row n holds the M queries' scores of patch n). Then every
// product of the op is a cpu::gemm with A read as is or transposed (free) and B row-major, the
// big k and v tiles are used as they are stored (no transposes), and the row softmax becomes
// a column softmax vectorised across the queries. Rows are padded to kMR, columns to one
// vector; the padding is zero.
//
// The query dimension M is a vector dimension (of S^T, dP^T) and a row dimension (of out, dq):
// VBM, the byte width of its vectors, is 16, 32 or 64 for a few, up to 8, or more queries
// (float), so the paper's M = 2 is not padded to 16; MRM rows of it form a GEMM row block.
struct Pads {
  int64_t Mp, Np, Dp;
};

template <typename acc_t, int VBM>
constexpr int mrm() {
  return cpu::nr<acc_t, VBM>() < cpu::kMR ? cpu::nr<acc_t, VBM>() : cpu::kMR;
}

template <typename acc_t, int VBM>
Pads pads(const Dims& s) {
  constexpr int64_t mvec = cpu::nr<acc_t, VBM>();
  const int64_t vec = cpu::nr<acc_t>();
  return {cpu::round_up(s.M, mvec), cpu::round_up(s.N, cpu::kMR), cpu::round_up(s.D, vec)};
}

// Calls f(std::integral_constant<int, VBM>{}) with the narrowest query-vector width that holds
// M queries: 4 elements, 8 elements, else the native width.
template <typename acc_t, typename F>
void with_query_width(int64_t M, F&& f) {
  constexpr int kMin = 4 * static_cast<int>(sizeof(acc_t));
  if constexpr (kMin < cpu::kVecBytes) {
    if (M <= 4) return f(std::integral_constant<int, kMin>{});
  }
  if constexpr (2 * kMin < cpu::kVecBytes) {
    if (M <= 8) return f(std::integral_constant<int, 2 * kMin>{});
  }
  f(std::integral_constant<int, cpu::kVecBytes>{});
}

// k or v of one pair as a zero-padded [Np, ld] matrix in the accumulation type. When the
// tensor already holds acc_t and D is a multiple of the vector width (float32 with D = 32, the
// paper's shape), its rows are read in place (ld = D) and only the rows from n8 (N rounded
// down to kMR) on are copied, zero-padded, into `buf`; otherwise all rows are copied (n8 = 0).
// Reading in place saves a copy of k and v per pair, which dominates for a few queries.
template <typename acc_t>
struct PairTile {
  const acc_t* head;  // rows [0, n8)
  const acc_t* tail;  // rows [n8, Np)
  int64_t ld, n8;

  template <typename scalar_t>
  static PairTile make(const scalar_t* src, const Dims& s, const Pads& z, acc_t* buf) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (s.D == z.Dp) {
        const int64_t n8 = s.N / cpu::kMR * cpu::kMR;
        load_pad(buf, z.Dp, z.Np - n8, src + n8 * s.D, s.N - n8, s.D);
        return {src, buf, s.D, n8};
      }
    }
    load_pad(buf, z.Dp, z.Np, src, s.N, s.D);
    return {buf, buf, z.Dp, 0};
  }
};

#if defined(__AVX512F__)
// GCC 12 flags the _mm512_undefined_ps() inside its own unmasked AVX-512 intrinsics.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Sums of 16 vectors: lane i of the result is the sum of the 16 lanes of v[i], by a fixed
// tree (pairs of lanes within 128-bit blocks, then blocks).
inline __m512 hsum16(const __m512* v) {
  __m512 s2[8], s4[4];
  for (int i = 0; i < 8; ++i)  // per 128-bit block: [a0+a2, b0+b2, a1+a3, b1+b3]
    s2[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                          _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int j = 0; j < 4; ++j)  // per 128-bit block: the block sums of v[4j .. 4j + 3]
    s4[j] = _mm512_add_ps(_mm512_shuffle_ps(s2[2 * j], s2[2 * j + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm512_shuffle_ps(s2[2 * j], s2[2 * j + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 w01 = _mm512_add_ps(_mm512_shuffle_f32x4(s4[0], s4[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(s4[0], s4[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 w23 = _mm512_add_ps(_mm512_shuffle_f32x4(s4[2], s4[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(s4[2], s4[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(w01, w23, _MM_SHUFFLE(3, 1, 3, 1)));
}

// Scores of one or two queries as dot products: C[r, m] = sum_d A[r, d] B[d, m] for rows
// r < R (R % 16 == 0), m < M <= 2, with C of 4 columns (ldc = 4; columns 2, 3 are set to 0),
// A [R, K] row-major (lda >= K, K % 16 == 0) and B [K, 4]. The broadcast GEMM would spend one
// 4-lane FMA per element of A for the 2 useful lanes; here each row of A is loaded once per
// query as whole vectors, and 16 rows' products are summed across lanes together (hsum16):
// ~3x fewer instructions. Each sum has a fixed order (lanes, then the tree of hsum16).
inline void scores_dot(const float* A, int64_t lda, const float* B, int64_t M, float* C,
                       int64_t R, int64_t K) {
  constexpr int64_t kLd = 4;
  alignas(64) float bq[2][256];
  const int64_t Kq = K <= 256 ? K : 0;  // longer rows take the GEMM (the caller checks)
  for (int64_t m = 0; m < 2; ++m)
    for (int64_t d = 0; d < Kq; ++d) bq[m][d] = m < M ? B[d * kLd + m] : 0.0f;
  // output vector t holds rows 4t .. 4t + 3 of a block: [r0, r1, 0, 0] per row
  alignas(64) static constexpr int32_t kIdx[4][16] = {
      {0, 16, 0, 0, 1, 17, 0, 0, 2, 18, 0, 0, 3, 19, 0, 0},
      {4, 20, 0, 0, 5, 21, 0, 0, 6, 22, 0, 0, 7, 23, 0, 0},
      {8, 24, 0, 0, 9, 25, 0, 0, 10, 26, 0, 0, 11, 27, 0, 0},
      {12, 28, 0, 0, 13, 29, 0, 0, 14, 30, 0, 0, 15, 31, 0, 0}};
  for (int64_t r0 = 0; r0 < R; r0 += 16) {
    const float* a = A + r0 * lda;
    // this block's first touch of A: prefetch (towards L2) the block 128 rows ahead
    const char* pf = reinterpret_cast<const char*>(a + 128 * lda);
    for (int64_t b = 0; b < 16 * lda * 4; b += 64) __builtin_prefetch(pf + b, 0, 1);
    __m512 r[2];
    for (int64_t m = 0; m < 2; ++m) {
      if (m >= M) {
        r[m] = _mm512_setzero_ps();
        continue;
      }
      __m512 v[16];
      const __m512 q0 = _mm512_load_ps(bq[m]);
      for (int i = 0; i < 16; ++i) v[i] = _mm512_mul_ps(_mm512_loadu_ps(a + i * lda), q0);
      for (int64_t d = 16; d < K; d += 16) {
        const __m512 qv = _mm512_load_ps(bq[m] + d);
        for (int i = 0; i < 16; ++i)
          v[i] = _mm512_fmadd_ps(_mm512_loadu_ps(a + i * lda + d), qv, v[i]);
      }
      r[m] = hsum16(v);
    }
    for (int t = 0; t < 4; ++t) {
      const __m512i idx = _mm512_load_si512(kIdx[t]);
      _mm512_storeu_ps(C + (r0 + 4 * t) * kLd,
                       _mm512_maskz_permutex2var_ps(0x3333, r[0], idx, r[1]));
    }
  }
}
#pragma GCC diagnostic pop
#endif

// C[Np, Cc] = T B for a PairTile T [Np, K] and the M queries of B [K, Cc]: the in-place rows
// and the copied rows are two GEMMs over row ranges (both multiples of kMR). The in-place rows
// are this pair's first touch of k or v: they are prefetched 16 row blocks ahead (which runs on
// into the next pair's). For one or two float queries (Cc = 4), the in-place rows go by
// whole blocks of 16 through scores_dot.
// Rows of a score product, prefetching A 16 row blocks ahead (also for the copied rows: one
// instantiation, and the next rows past them are the next pair's). Kept out of line: inlined
// into tile_gemm, GCC 12 spills the row strides of the kernel's inner loop (~1.5x slower).
template <int VB, typename acc_t>
__attribute__((noinline)) void rows_gemm(const acc_t* A, int64_t lda, const acc_t* B,
                                         int64_t ldb, acc_t* C, int64_t ldc, int64_t R,
                                         int64_t K, int64_t Cc) {
  cpu::gemm<false, cpu::kMR, VB, false, false, 16 * cpu::kMR>(A, lda, B, ldb, C, ldc, R, K, Cc);
}

template <int VB, typename acc_t>
void tile_gemm(const PairTile<acc_t>& t, const acc_t* B, int64_t ldb, acc_t* C, int64_t ldc,
               int64_t Np, int64_t K, int64_t Cc, int64_t M) {
  int64_t r0 = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<acc_t, float> && VB == 16) {
    if (M <= 2 && Cc == 4 && K % 16 == 0 && K <= 256) {
      r0 = t.n8 / 16 * 16;
      scores_dot(t.head, t.ld, B, M, C, r0, K);
    }
  }
#endif
  rows_gemm<VB>(t.head + r0 * t.ld, t.ld, B, ldb, C + r0 * ldc, ldc, t.n8 - r0, K, Cc);
  rows_gemm<VB>(t.tail, t.ld, B, ldb, C + t.n8 * ldc, ldc, Np - t.n8, K, Cc);
}

// C[Mp, Dp] = A^T T for A [Np, Mp] (stored patch-major) and a PairTile T [Np, Dp]: the sum
// over n runs over the in-place rows, then continues over the copied ones (one fixed order).
// Only the rows m < M of C are meant to be read: for one or two queries, rows 2 .. Mp - 1 are
// not computed (2-row blocks instead of MR: half the FMAs at the paper's M = 2).
template <int MR, typename acc_t>
void o_gemm(const acc_t* A, int64_t lda, const PairTile<acc_t>& t, acc_t* C, int64_t ldc,
            int64_t Np, int64_t Mp, int64_t Dp, int64_t M) {
  if constexpr (MR > 2) {
    if (M <= 2 && Mp % 2 == 0) return o_gemm<2>(A, lda, t, C, ldc, Np, 2, Dp, M);
  }
  cpu::gemm<true, MR>(A, lda, t.head, t.ld, C, ldc, Mp, t.n8, Dp);
  cpu::gemm<true, MR, cpu::kVecBytes, true>(A + t.n8 * lda, lda, t.tail, t.ld, C, ldc, Mp,
                                            Np - t.n8, Dp);
}

// Column softmax of st [Np, Mp] (column m = query m) over the first N rows, in place; writes
// lse[m] for m < M; zeroes the padding rows and columns. Each column's max and sum run over n
// in a fixed order, lane-parallel across m, so no sum depends on the thread count. With Mp = MV
// narrower than a native vector (a few queries), G = kVec / MV consecutive rows are one vector:
// the sum of column m is then G partial sums (over n = g mod G, in increasing n) added in
// increasing g, then the last N mod G rows in increasing n.
template <int MV, typename acc_t>
void softmax_cols(acc_t* st, const Dims& s, const Pads& z, acc_t* lse) {
  const int64_t N = s.N, Mp = z.Mp;
  constexpr int kVec = cpu::nr<acc_t>();
  constexpr int G = MV < kVec ? kVec / MV : 1;  // rows per vector when Mp == MV
  // Columns in chunks of MV (one query vector, a compile-time width), so that every inner
  // loop below is one vector operation.
  for (int64_t m0 = 0; m0 < Mp; m0 += MV) {
    acc_t mx[MV], sm[MV];
    for (int j = 0; j < MV; ++j) mx[j] = -std::numeric_limits<acc_t>::infinity();
    for (int64_t n = 0; n < N; ++n) {
      const acc_t* row = st + n * Mp + m0;
      // NaN is skipped here and caught by the exp below: a NaN makes its column NaN and a
      // column of -inf gives NaN, as in torch.softmax.
      for (int j = 0; j < MV; ++j) mx[j] = row[j] > mx[j] ? row[j] : mx[j];
    }
    for (int j = 0; j < MV; ++j) sm[j] = acc_t(0);
    int64_t n = 0;
    if (G > 1 && Mp == MV) {  // G rows at a time, as one flat vector
      acc_t mxg[G * MV], smg[G * MV];
      for (int j = 0; j < G * MV; ++j) mxg[j] = mx[j % MV], smg[j] = acc_t(0);
      for (; n + G <= N; n += G) {
        acc_t* rows = st + n * Mp;
        for (int j = 0; j < G * MV; ++j) {
          rows[j] = cpu::exp_acc(rows[j] - mxg[j]);
          smg[j] += rows[j];
        }
      }
      for (int g = 0; g < G; ++g)
        for (int j = 0; j < MV; ++j) sm[j] += smg[g * MV + j];
    }
    for (; n < N; ++n) {
      acc_t* row = st + n * Mp + m0;
      for (int j = 0; j < MV; ++j) {
        row[j] = cpu::exp_acc(row[j] - mx[j]);
        sm[j] += row[j];
      }
    }
    for (int j = 0; j < MV && m0 + j < s.M; ++j) lse[m0 + j] = mx[j] + std::log(sm[j]);
    for (int j = 0; j < MV; ++j) sm[j] = m0 + j < s.M ? acc_t(1) / sm[j] : acc_t(0);
    for (int64_t n = 0; n < N; ++n) {
      acc_t* row = st + n * Mp + m0;
      // padding columns are set (not scaled) to 0: a non-finite k makes them NaN before this
      for (int j = 0; j < MV; ++j) row[j] = m0 + j < s.M ? row[j] * sm[j] : acc_t(0);
    }
  }
  fill(st + N * Mp, acc_t(0), (z.Np - N) * Mp);
}

template <typename scalar_t, int VBM>
void fwd_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                const Dims& s, at::Tensor& out, at::Tensor& lse, at::Tensor* weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* kp = k.data_ptr<scalar_t>();
  const scalar_t* vp = v.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  acc_t* lp = lse.data_ptr<acc_t>();
  scalar_t* wp = weights ? weights->data_ptr<scalar_t>() : nullptr;
  const int64_t M = s.M, N = s.N, D = s.D, H = s.H;
  const Pads z = pads<acc_t, VBM>(s);
  constexpr int MRM = mrm<acc_t, VBM>();
  constexpr int MV = cpu::nr<acc_t, VBM>();
  const acc_t sc = static_cast<acc_t>(scale);

  at::parallel_for(0, s.B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> qt(D * z.Mp), kk(z.Np * z.Dp), vv(z.Np * z.Dp), st(z.Np * z.Mp),
        o(z.Mp * z.Dp);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t qbh = (s.Bq == 1 ? bh % H : bh);
      // 1. (q * scale)^T [D, Mp] zero-padded; k, v [Np, Dp] as PairTiles.
      fill(qt.data(), acc_t(0), D * z.Mp);
      load_t(qt.data(), qp + qbh * M * D, M, D, z.Mp, sc);
      const auto kt = PairTile<acc_t>::make(kp + bh * N * D, s, z, kk.data());
      const auto vt = PairTile<acc_t>::make(vp + bh * N * D, s, z, vv.data());
      // 2. scores S^T = k (q * scale)^T   [Np, Mp]
      tile_gemm<VBM>(kt, qt.data(), z.Mp, st.data(), z.Mp, z.Np, D, z.Mp, M);
      // 3. P^T = softmax over n of each column; lse saved for the backward.
      softmax_cols<MV>(st.data(), s, z, lp + bh * M);
      // 4. out = P v = (P^T)^T v   [Mp, Dp], over the Np rows of v (the padding rows of P^T
      //    are zero).
      o_gemm<MRM>(st.data(), z.Mp, vt, o.data(), z.Dp, z.Np, z.Mp, z.Dp, M);
      for (int64_t m = 0; m < M; ++m) store(op + (bh * M + m) * D, o.data() + m * z.Dp, D);
      // 5. the probabilities [M, N], only when asked for.
      if (wp) {
        scalar_t* w = wp + bh * M * N;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t m = 0; m < M; ++m) w[m * N + n] = static_cast<scalar_t>(st[n * z.Mp + m]);
      }
    }
  });
}

// dst [N, D] (the rows of one pair of dk or dv) = A B for A [Np, Mp] patch-major and B [Mp, Dp]:
// a sum over the M queries in increasing order (the padding columns of A are skipped, which
// halves the work at M = 2). When dst holds acc_t in rows of whole aligned vectors (float32
// with D = 32), the rows [0, n8) go straight from the GEMM's registers to dst with streaming
// stores: dk and dv are written once and not read back here, so this saves the read of their
// lines before the write, a copy, and cache space. The other rows (and every row otherwise) go
// through `buf` [Np, Dp].
template <typename scalar_t, typename acc_t>
void kv_grad_gemm(const acc_t* A, const acc_t* B, const Dims& s, const Pads& z, scalar_t* dst,
                  acc_t* buf) {
  const int64_t N = s.N, D = s.D;
  int64_t n8 = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t> && cpu::kCanStream<acc_t, cpu::kVecBytes>) {
    if (D == z.Dp && reinterpret_cast<uintptr_t>(dst) % cpu::kVecBytes == 0) {
      n8 = N / cpu::kMR * cpu::kMR;
      cpu::gemm<false, cpu::kMR, cpu::kVecBytes, false, true>(A, z.Mp, B, z.Dp, dst, D, n8, s.M,
                                                             D);
    }
  }
  cpu::gemm<false>(A + n8 * z.Mp, z.Mp, B, z.Dp, buf, z.Dp, z.Np - n8, s.M, z.Dp);
  for (int64_t n = n8; n < N; ++n) store(dst + n * D, buf + (n - n8) * z.Dp, D);
}

template <typename scalar_t, int VBM>
void bwd_kernel(const at::Tensor& go, const at::Tensor* gw, const at::Tensor& q,
                const at::Tensor& k, const at::Tensor& v, const at::Tensor& lse, double scale,
                const Dims& s, scalar_t* dq_direct, at::Tensor* dq_part, at::Tensor& dk,
                at::Tensor& dv) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* gop = go.data_ptr<scalar_t>();
  const scalar_t* gwp = gw ? gw->data_ptr<scalar_t>() : nullptr;
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* kp = k.data_ptr<scalar_t>();
  const scalar_t* vp = v.data_ptr<scalar_t>();
  acc_t* dqpart = dq_part ? dq_part->data_ptr<acc_t>() : nullptr;
  scalar_t* dkp = dk.data_ptr<scalar_t>();
  scalar_t* dvp = dv.data_ptr<scalar_t>();
  const int64_t M = s.M, N = s.N, D = s.D, H = s.H;
  const Pads z = pads<acc_t, VBM>(s);
  constexpr int MRM = mrm<acc_t, VBM>();
  constexpr int MV = cpu::nr<acc_t, VBM>();

  at::parallel_for(0, s.B * H, 1, [&](int64_t begin, int64_t end) {
    const acc_t sc = static_cast<acc_t>(scale);  // a local: the loops below keep it in a register
    std::vector<acc_t> qt(D * z.Mp), qq(z.Mp * z.Dp), kk(z.Np * z.Dp), vv(z.Np * z.Dp),
        dOt(D * z.Mp), dO(z.Mp * z.Dp), pt(z.Np * z.Mp), dpt(z.Np * z.Mp),
        l(z.Mp), r1(z.Mp * z.Dp), r2(z.Np * z.Dp);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t qbh = (s.Bq == 1 ? bh % H : bh);
      // 1. inputs into zero-padded work buffers in the accumulation type.
      fill(qt.data(), acc_t(0), D * z.Mp);
      load_t(qt.data(), qp + qbh * M * D, M, D, z.Mp, sc);
      load_pad(qq.data(), z.Dp, z.Mp, qp + qbh * M * D, M, D);
      const auto kt = PairTile<acc_t>::make(kp + bh * N * D, s, z, kk.data());
      const auto vt = PairTile<acc_t>::make(vp + bh * N * D, s, z, vv.data());
      fill(dOt.data(), acc_t(0), D * z.Mp);
      load_t(dOt.data(), gop + bh * M * D, M, D, z.Mp);
      load_pad(dO.data(), z.Dp, z.Mp, gop + bh * M * D, M, D);
      // 2. recompute S^T with the forward's exact product and P^T with the forward's exact
      //    softmax (max, exp, sum): P is bitwise the forward's, and no precision is lost to
      //    the rounding of a large lse (exp(S - lse) is off by ulp(lse), ~1e-3 at |S| ~ 1e4).
      tile_gemm<VBM>(kt, qt.data(), z.Mp, pt.data(), z.Mp, z.Np, D, z.Mp, M);
      softmax_cols<MV>(pt.data(), s, z, l.data());
      // 3. dP^T = v dO^T   [Np, Mp]
      tile_gemm<VBM>(vt, dOt.data(), z.Mp, dpt.data(), z.Mp, z.Np, D, z.Mp, M);
      if (gwp) {  // + the gradient of the returned weights ([M, N] in memory)
        for (int64_t n = 0; n < N; ++n) {
          acc_t* dprow = dpt.data() + n * z.Mp;
          const scalar_t* g = gwp + bh * M * N + n;
          for (int64_t m = 0; m < M; ++m) dprow[m] += static_cast<acc_t>(g[m * N]);
        }
      }
      for (int64_t m0 = 0; m0 < z.Mp; m0 += MV) {
        // dl is a local array, not a pointer into a heap buffer: with a pointer GCC must assume
        // that dl may alias prow / dprow, and depending on what else is inlined into this
        // function it either versions the loops or falls back to 16 scalar FMAs with a store
        // each (seen: 4a + 4b went from 17% to 52% of this function's time after an unrelated
        // refactor of the host code). A local array is one vector register in both loops.
        acc_t dl[MV];
        for (int j = 0; j < MV; ++j) dl[j] = acc_t(0);
        // 4a. delta[m] = sum_n P dP, lane-parallel over m, n in increasing order.
        for (int64_t n = 0; n < N; ++n) {
          const acc_t* prow = pt.data() + n * z.Mp + m0;
          const acc_t* dprow = dpt.data() + n * z.Mp + m0;
          for (int j = 0; j < MV; ++j) dl[j] += prow[j] * dprow[j];
        }
        // 4b. dS^T = scale * P^T * (dP^T - delta) (the scale of the scores, applied once here
        //     for both dq and dk). The padding columns (m >= M) are left as they come: no
        //     product below reads them into a kept result.
        for (int64_t n = 0; n < N; ++n) {
          const acc_t* prow = pt.data() + n * z.Mp + m0;
          acc_t* dprow = dpt.data() + n * z.Mp + m0;
          for (int j = 0; j < MV; ++j) dprow[j] = sc * (prow[j] * (dprow[j] - dl[j]));
        }
      }
      fill(dpt.data() + N * z.Mp, acc_t(0), (z.Np - N) * z.Mp);
      // 5. dq = dS k = (dS^T)^T k   [Mp, Dp]; rows m >= M are not kept.
      o_gemm<MRM>(dpt.data(), z.Mp, kt, r1.data(), z.Dp, z.Np, z.Mp, z.Dp, M);
      for (int64_t m = 0; m < M; ++m) {
        const acc_t* row = r1.data() + m * z.Dp;
        if (dqpart) {
          std::copy(row, row + D, dqpart + (bh * M + m) * D);
        } else {
          store(dq_direct + (bh * M + m) * D, row, D);
        }
      }
      // 6. dk = dS^T q   [N, D]
      kv_grad_gemm(dpt.data(), qq.data(), s, z, dkp + bh * N * D, r2.data());
      // 7. dv = P^T dO   [N, D]
      kv_grad_gemm(pt.data(), dO.data(), s, z, dvp + bh * N * D, r2.data());
    }
    cpu::stream_fence();
  });
}

// The CPU side of the entries' host functions (../cross_attention.h): the kernels for the
// checked inputs and the allocated outputs.
struct CrossAttentionCpu {
  static constexpr c10::DeviceType kDevice = c10::kCPU;
  const Dims s;

  CrossAttentionCpu(const Dims& d, const at::Tensor& /*q*/, bool /*backward*/) : s(d) {}

  // dk and dv are as large as k and v (25.7 MB each at the paper shape) and written once.
  static at::Tensor empty_output_like(const at::Tensor& t) { return empty_like_huge(t); }

  void fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
           at::Tensor& out, at::Tensor& lse, at::Tensor* weights) const {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                    "cross_attention_fwd_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      with_query_width<acc_t>(s.M, [&](auto vbm) {
        fwd_kernel<scalar_t, decltype(vbm)::value>(q, k, v, scale, s, out, lse, weights);
      });
    });
  }

  void bwd(const at::Tensor& grad_out, const at::Tensor* gw, const at::Tensor& q,
           const at::Tensor& k, const at::Tensor& v, const at::Tensor& lse, double scale,
           at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) const {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                    "cross_attention_bwd_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      if (s.Bq == s.B && s.B != 1) {
        with_query_width<acc_t>(s.M, [&](auto vbm) {
          bwd_kernel<scalar_t, decltype(vbm)::value>(grad_out, gw, q, k, v, lse, scale, s,
                                                     dq.data_ptr<scalar_t>(), nullptr, dk, dv);
        });
        return;
      }
      // Shared query (or B == 1): per-b partial gradients in the accumulation type, then a
      // fixed-order sum over b.
      auto part = at::empty({s.B, s.H, s.M, s.D},
                            q.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      with_query_width<acc_t>(s.M, [&](auto vbm) {
        bwd_kernel<scalar_t, decltype(vbm)::value>(grad_out, gw, q, k, v, lse, scale, s,
                                                   nullptr, &part, dk, dv);
      });
      const acc_t* pp = part.data_ptr<acc_t>();
      scalar_t* dqp = dq.data_ptr<scalar_t>();
      const int64_t inner = s.H * s.M * s.D;
      at::parallel_for(0, inner, 1024, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          acc_t total = 0;
          for (int64_t b = 0; b < s.B; ++b) total += pp[b * inner + i];
          dqp[i] = static_cast<scalar_t>(total);
        }
      });
    });
  }
};

}  // namespace

}  // namespace cpu
}  // namespace art_fast

// The schemas (their tensor contracts are in ../cross_attention.h) and the CPU kernels.
ART_FAST_DEFINE_OP(art_fast::cross_attention_impl<art_fast::cpu::CrossAttentionCpu>,
    "cross_attention_fwd(Tensor q, Tensor k, Tensor v, float scale, bool return_weights)"
    " -> (Tensor, Tensor, Tensor)",
    "cross_attention_bwd(Tensor grad_out, Tensor? grad_weights, Tensor q, Tensor k,"
    " Tensor v, Tensor out, Tensor lse, float scale) -> (Tensor, Tensor, Tensor)")
