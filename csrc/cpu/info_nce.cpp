// C++ CPU kernel for art_fast::info_nce_{fwd,bwd}.
//
// loss[g, i] = logsumexp_j S[g, i, j] - S[g, i, t_gi],  S = <a_hat_gi, c_hat_gj> / temperature,
// with a_hat, c_hat the rows L2-normalised as F.normalize does (x / max(||x||, 1e-12)) when
// normalize is set, the raw rows otherwise; rows with target -100 are ignored (loss 0).
//
// Profile
//   inputs   anchors [G,M,D], candidates [G,N,D] (one dtype: float64, float32, bf16 or fp16,
//            contiguous; they may be the same tensor), targets [G,M] int64 in [0, N) or -100.
//            grad_loss, targets and lse are made contiguous here (they are small and autograd
//            hands over expanded gradients); anchors and candidates must be contiguous.
//   outputs  loss [G,M], lse [G,M] in the accumulation dtype (float64 for float64 inputs, else
//            float32); loss is 0 on ignored rows; lse is written for every row, ignored ones
//            included (the true log-sum-exp of the row, finite for finite inputs). Backward:
//            grad_loss [G,M] in the accumulation dtype -> grad_anchors [G,M,D],
//            grad_candidates [G,N,D] in the input dtype.
//   saved    anchors, candidates, targets, lse. The [M, N] logits are never saved nor
//            materialised: the backward recomputes them tile by tile from lse.
//   grid     two regimes, chosen by size:
//            tiny  (M, N <= 64 and enough groups to fill the threads): at::parallel_for over the
//                  groups; one group is one task, with every buffer per thread (reused across
//                  groups). The group's products are three small GEMMs (S, dL C, dL^T A) when
//                  M * N >= 64, fixed-lane dot products / axpys below that (call overhead).
//            large (otherwise): the normalised rows are first written to float (float64 for
//                  float64) copies, in parallel over rows. Work items are (group, block of kBM
//                  anchor rows); the forward is an online log-sum-exp over tiles of kBN
//                  candidates, each tile product one BLAS GEMM (sgemm_/dgemm_ of the BLAS
//                  that torch links, at::addmm_ when that is absent). The backward recomputes
//                  each logits tile, forms dL, accumulates d a_hat of the block (owned by the
//                  item) and d c_hat into a partial buffer owned by the task; the tasks (a fixed
//                  split of the items in ntask = min(threads, items) contiguous chunks) are then
//                  summed in task order 0, 1, 2, ... per candidate row. No atomics.
//   memory   tiny: O((M + N) * D + M * N) per thread. large: the normalised copies
//            (G*(M+N)*D in the accumulation type), forward O(kBM * kBN) per thread; backward
//            adds O(kBM * (kBN + D)) per thread and the partial d c_hat buffers, at most
//            (G + ntask - 1) * N * D values (ntask is lowered so that the extra (ntask - 1)*N*D
//            stays under 1 GiB). Never an [M, N] buffer.
//   precision fp32 accumulation for fp32/bf16/fp16 (float64 for float64); the log-sum-exp is
//            max-subtracted (online: running max and rescaled sum), so logits of any magnitude
//            are safe. exp in float is a vectorised Cephes-style polynomial (~1 ulp; results
//            below 1e-38, i.e. arguments < -87.3, are flushed to 0). The large regime's backward
//            uses the saved lse; the tiny regime's recomputes lse from the logits row (cheap there,
//            and more exact in float32 where |lse| ~ 1e4 rounds to 1e-3).
//   determinism every sum has a fixed order for a fixed thread count: dot products use fixed
//            lanes, GEMMs run single-threaded inside the tasks, the online log-sum-exp walks the
//            tiles in order and the partial d c_hat are summed in task order. The tiny regime
//            does not depend on the thread count at all; in the large regime the task split
//            (and the block height, lowered to keep the threads busy) depends on
//            at::get_num_threads(), so the last bits of grad_candidates may change with it.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../ops.h"
#include "common.h"

// Fortran BLAS of the library torch links (MKL / OpenBLAS export these). Weak: when absent,
// the pointers are null and the kernel falls back to at::addmm_.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc)
    __attribute__((weak));
}

namespace art_fast {

namespace {

using cpu::axpy;
using cpu::fill;
using cpu::load;
using cpu::store;

constexpr int64_t kIgnoreIndex = -100;
constexpr double kNormEps = 1e-12;  // F.normalize's eps
constexpr int64_t kTinyMax = 64;    // tiny regime: M, N <= kTinyMax
constexpr int64_t kTinyGemmMin = 64;  // tiny regime: GEMMs when M * N >= this, dots below
constexpr int64_t kBM = 128;        // anchor rows per block (large regime; may be lowered)
constexpr int64_t kBN = 128;        // candidates per tile (large regime)
constexpr int64_t kMinBM = 32;
constexpr int64_t kPartialBudget = int64_t(1) << 30;  // bytes of extra partial d c_hat

struct Dims {
  int64_t G, M, N, D;
};

Dims check_inputs(const at::Tensor& a, const at::Tensor& c) {
  ART_CHECK_CPU_CONTIG(a, "anchors");
  ART_CHECK_CPU_CONTIG(c, "candidates");
  ART_CHECK_DIM(a, "anchors", 3, "[G, M, D]");
  ART_CHECK_DIM(c, "candidates", 3, "[G, N, D]");
  TORCH_CHECK(a.scalar_type() == c.scalar_type(),
              "art_fast: anchors and candidates must share one dtype, got ", a.scalar_type(),
              " and ", c.scalar_type());
  TORCH_CHECK(a.size(0) == c.size(0) && a.size(2) == c.size(2),
              "art_fast: anchors [G, M, D] and candidates [G, N, D] must agree on G and D, got ",
              a.sizes(), " and ", c.sizes());
  Dims d{a.size(0), a.size(1), c.size(1), a.size(2)};
  TORCH_CHECK(d.N > 0 && d.D > 0, "art_fast: info_nce needs N > 0 candidates and D > 0");
  return d;
}

at::Tensor check_targets(const at::Tensor& targets, const Dims& s) {
  TORCH_CHECK(targets.device().is_cpu(), "art_fast: targets must be a CPU tensor");
  TORCH_CHECK(targets.scalar_type() == at::kLong, "art_fast: targets must be int64, got ",
              targets.scalar_type());
  TORCH_CHECK(targets.sizes() == at::IntArrayRef({s.G, s.M}),
              "art_fast: targets must have shape [G, M] = [", s.G, ", ", s.M, "], got ",
              targets.sizes());
  at::Tensor t = targets.contiguous();
  const int64_t* tp = t.data_ptr<int64_t>();
  for (int64_t i = 0; i < s.G * s.M; ++i) {
    TORCH_CHECK(tp[i] == kIgnoreIndex || (tp[i] >= 0 && tp[i] < s.N),
                "art_fast: info_nce target ", tp[i], " at flat index ", i,
                " is out of range [0, ", s.N, ") and is not the ignore index -100");
  }
  return t;
}

at::Tensor check_row_tensor(const at::Tensor& x, const char* name, const Dims& s,
                            at::ScalarType acc) {
  TORCH_CHECK(x.device().is_cpu(), "art_fast: ", name, " must be a CPU tensor");
  TORCH_CHECK(x.scalar_type() == acc && x.sizes() == at::IntArrayRef({s.G, s.M}),
              "art_fast: ", name, " must be [G, M] = [", s.G, ", ", s.M, "] ", acc, ", got ",
              x.sizes(), " ", x.scalar_type());
  return x.contiguous();
}

// ---- small vector helpers: cpu::dot, cpu::max, cpu::exp_acc, cpu::reduce_lanes (common.h) ---

using cpu::dot;
using cpu::exp_acc;
using cpu::kLanes;
using cpu::reduce_lanes;
template <typename acc_t>
inline acc_t max_of(const acc_t* __restrict__ x, int64_t n) {
  return cpu::max(x, n);
}

// sum_j exp(x[j] - m), kLanes partial sums.
template <typename acc_t>
inline acc_t sum_exp(const acc_t* __restrict__ x, int64_t n, acc_t m) {
  constexpr int L = kLanes<acc_t>;
  acc_t s[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) s[l] += exp_acc(x[i + l] - m);
  for (int l = 0; i < n; ++i, ++l) s[l] += exp_acc(x[i] - m);
  return reduce_lanes(s);
}

// dst = x / max(||x||, eps) (or a copy when !normalize); returns ||x|| (1 when !normalize).
template <typename acc_t, typename scalar_t>
inline acc_t load_normalized(acc_t* __restrict__ dst, const scalar_t* __restrict__ src,
                             int64_t D, bool normalize) {
  load(dst, src, D);
  if (!normalize) return acc_t(1);
  const acc_t nrm = std::sqrt(dot(dst, dst, D));
  const acc_t den = nrm > acc_t(kNormEps) ? nrm : acc_t(kNormEps);
  for (int64_t d = 0; d < D; ++d) dst[d] = dst[d] / den;
  return nrm;
}

// Gradient through x_hat = x / max(||x||, eps): out = (g - x_hat <x_hat, g>) / ||x|| when
// ||x|| >= eps (autograd of F.normalize: clamp_min passes the gradient at equality), g / eps
// otherwise; out = g when !normalize.
template <typename acc_t, typename scalar_t>
inline void store_normalize_bwd(scalar_t* __restrict__ out, const acc_t* __restrict__ g,
                                const acc_t* __restrict__ xhat, acc_t nrm, int64_t D,
                                bool normalize, acc_t* __restrict__ tmp) {
  if (!normalize) {
    store(out, g, D);
    return;
  }
  if (nrm >= acc_t(kNormEps)) {
    const acc_t pr = dot(xhat, g, D);
    for (int64_t d = 0; d < D; ++d) tmp[d] = (g[d] - xhat[d] * pr) / nrm;
  } else {
    for (int64_t d = 0; d < D; ++d) tmp[d] = g[d] / acc_t(kNormEps);
  }
  store(out, tmp, D);
}

// ---- GEMM (row-major wrappers over the column-major BLAS) -------------------------------------

// C[m, n] = alpha * op(A) op(B) + beta * C, all row-major; op(A) is [m, k] (A is [k, m] when
// ta), op(B) is [k, n] (B is [n, k] when tb). beta == 0 ignores C's contents.
template <typename acc_t>
void gemm_rm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, acc_t alpha, const acc_t* A,
             int64_t lda, const acc_t* B, int64_t ldb, acc_t beta, acc_t* C, int64_t ldc) {
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  const char cta = ta ? 'T' : 'N', ctb = tb ? 'T' : 'N';
  const int im = static_cast<int>(n), in = static_cast<int>(m), ik = static_cast<int>(k);
  const int ilda = static_cast<int>(ldb), ildb = static_cast<int>(lda),
            ildc = static_cast<int>(ldc);
  if constexpr (std::is_same_v<acc_t, float>) {
    if (sgemm_ != nullptr) {
      sgemm_(&ctb, &cta, &im, &in, &ik, &alpha, B, &ilda, A, &ildb, &beta, C, &ildc);
      return;
    }
  } else {
    if (dgemm_ != nullptr) {
      dgemm_(&ctb, &cta, &im, &in, &ik, &alpha, B, &ilda, A, &ildb, &beta, C, &ildc);
      return;
    }
  }
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor At = ta ? at::from_blob(const_cast<acc_t*>(A), {k, m}, {lda, 1}, opts).t()
                     : at::from_blob(const_cast<acc_t*>(A), {m, k}, {lda, 1}, opts);
  at::Tensor Bt = tb ? at::from_blob(const_cast<acc_t*>(B), {n, k}, {ldb, 1}, opts).t()
                     : at::from_blob(const_cast<acc_t*>(B), {k, n}, {ldb, 1}, opts);
  at::Tensor Ct = at::from_blob(C, {m, n}, {ldc, 1}, opts);
  Ct.addmm_(At, Bt, beta, alpha);
}

// ---- tiny regime: one task per group ---------------------------------------------------------

template <typename scalar_t>
void fwd_tiny(const scalar_t* ap, const scalar_t* cp, bool same, const int64_t* tp,
              double temperature, bool normalize, const Dims& s,
              at::opmath_type<scalar_t>* lossp, at::opmath_type<scalar_t>* lsep) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t M = s.M, N = s.N, D = s.D;
  const acc_t invT = acc_t(1) / static_cast<acc_t>(temperature);
  const bool use_gemm = M * N >= kTinyGemmMin;
  at::parallel_for(0, s.G, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> ah(M * D), chb(same ? 0 : N * D), S(M * N);
    for (int64_t g = begin; g < end; ++g) {
      // 1. normalised rows in the accumulation type (the candidates are the anchors when the
      //    two inputs are one tensor).
      for (int64_t i = 0; i < M; ++i)
        load_normalized(ah.data() + i * D, ap + (g * M + i) * D, D, normalize);
      const acc_t* ch = ah.data();
      if (!same) {
        for (int64_t j = 0; j < N; ++j)
          load_normalized(chb.data() + j * D, cp + (g * N + j) * D, D, normalize);
        ch = chb.data();
      }
      // 2. logits S = A_hat C_hat^T / T: one GEMM when the group is big enough to pay for the
      //    call, plain dot products otherwise.
      if (use_gemm) {
        gemm_rm<acc_t>(false, true, M, N, D, invT, ah.data(), D, ch, D, acc_t(0), S.data(), N);
      } else {
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j)
            S[i * N + j] = dot(ah.data() + i * D, ch + j * D, D) * invT;
      }
      for (int64_t i = 0; i < M; ++i) {
        const acc_t* row = S.data() + i * N;
        // 3. max-subtracted log-sum-exp, written for every row; loss 0 on ignored rows.
        const acc_t mx = max_of(row, N);
        const acc_t l = mx + std::log(sum_exp(row, N, mx));
        const int64_t t = tp[g * M + i];
        lsep[g * M + i] = l;
        lossp[g * M + i] = t == kIgnoreIndex ? acc_t(0) : l - row[t];
      }
    }
  });
}

template <typename scalar_t>
void bwd_tiny(const at::opmath_type<scalar_t>* glp, const scalar_t* ap, const scalar_t* cp,
              bool same, const int64_t* tp, double temperature, bool normalize,
              const Dims& s, scalar_t* dap, scalar_t* dcp) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t M = s.M, N = s.N, D = s.D;
  const acc_t invT = acc_t(1) / static_cast<acc_t>(temperature);
  const bool use_gemm = M * N >= kTinyGemmMin;
  at::parallel_for(0, s.G, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> ah(M * D), chb(same ? 0 : N * D), an(M), cnb(same ? 0 : N),
        dah(M * D), dch(N * D), S(M * N), tmp(D);
    for (int64_t g = begin; g < end; ++g) {
      // 1. recompute the normalised rows and their norms.
      for (int64_t i = 0; i < M; ++i)
        an[i] = load_normalized(ah.data() + i * D, ap + (g * M + i) * D, D, normalize);
      const acc_t* ch = ah.data();
      const acc_t* cn = an.data();
      if (!same) {
        for (int64_t j = 0; j < N; ++j)
          cnb[j] = load_normalized(chb.data() + j * D, cp + (g * N + j) * D, D, normalize);
        ch = chb.data();
        cn = cnb.data();
      }
      // 2. logits S = A_hat C_hat^T / T, as in the forward.
      if (use_gemm) {
        gemm_rm<acc_t>(false, true, M, N, D, invT, ah.data(), D, ch, D, acc_t(0), S.data(), N);
      } else {
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j)
            S[i * N + j] = dot(ah.data() + i * D, ch + j * D, D) * invT;
      }
      // 3. dL[i, j] = grad_loss[i] / T * (P[i, j] - [j == t_i]) in place (0 on ignored rows),
      //    P = exp(S - lse) with lse recomputed from the row in the accumulation type (cheap
      //    here, and more exact in float32 where |lse| ~ 1e4 rounds to 1e-3).
      for (int64_t i = 0; i < M; ++i) {
        acc_t* row = S.data() + i * N;
        const int64_t t = tp[g * M + i];
        if (t == kIgnoreIndex) {
          fill(row, acc_t(0), N);
          continue;
        }
        const acc_t mx = max_of(row, N);
        const acc_t l = mx + std::log(sum_exp(row, N, mx));
        const acc_t gi = glp[g * M + i] * invT;
        for (int64_t j = 0; j < N; ++j) row[j] = gi * exp_acc(row[j] - l);
        row[t] -= gi;
      }
      // 4. d A_hat = dL C_hat;  d C_hat = dL^T A_hat (GEMMs, or axpys in a fixed order).
      if (use_gemm) {
        gemm_rm<acc_t>(false, false, M, D, N, acc_t(1), S.data(), N, ch, D, acc_t(0),
                       dah.data(), D);
        gemm_rm<acc_t>(true, false, N, D, M, acc_t(1), S.data(), N, ah.data(), D, acc_t(0),
                       dch.data(), D);
      } else {
        fill(dah.data(), acc_t(0), M * D);
        fill(dch.data(), acc_t(0), N * D);
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j) {
            axpy(dah.data() + i * D, ch + j * D, S[i * N + j], D);
            axpy(dch.data() + j * D, ah.data() + i * D, S[i * N + j], D);
          }
      }
      // 5. through the normalisation of the anchor and candidate rows.
      for (int64_t i = 0; i < M; ++i)
        store_normalize_bwd(dap + (g * M + i) * D, dah.data() + i * D, ah.data() + i * D, an[i],
                            D, normalize, tmp.data());
      for (int64_t j = 0; j < N; ++j)
        store_normalize_bwd(dcp + (g * N + j) * D, dch.data() + j * D, ch + j * D, cn[j], D,
                            normalize, tmp.data());
    }
  });
}

// ---- large regime: blocks of anchor rows against tiles of candidates --------------------------

// Normalised copies of all rows (and their norms) in the accumulation type.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void normalize_rows(const scalar_t* xp, int64_t rows, int64_t D, bool normalize, acc_t* out,
                    acc_t* norms) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / D), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      norms[r] = load_normalized(out + r * D, xp + r * D, D, normalize);
  });
}

struct Plan {
  int64_t bm, nblk, items, ntask;
};

Plan make_plan(const Dims& s, int64_t acc_bytes, bool backward) {
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  Plan p;
  p.bm = kBM;
  // Lower the block height while there are too few items to keep the threads busy.
  while (p.bm > kMinBM && s.G * ((s.M + p.bm - 1) / p.bm) < 2 * nthreads) p.bm /= 2;
  p.nblk = (s.M + p.bm - 1) / p.bm;
  p.items = s.G * p.nblk;
  p.ntask = std::min(nthreads, p.items);
  if (backward) {
    const int64_t per_task = s.N * s.D * acc_bytes;
    while (p.ntask > 1 && (p.ntask - 1) * per_task > kPartialBudget) --p.ntask;
  }
  return p;
}

// Online log-sum-exp of the rows [i0, i0 + bm) of group g: running max m, rescaled sum z, and
// the target logit when tgt != nullptr. S: [bm, kBN] scratch.
template <typename acc_t>
void lse_block(const acc_t* ablk, const acc_t* chg, int64_t bm, const Dims& s, acc_t invT,
               const int64_t* tgt, acc_t* m, acc_t* z, acc_t* tl, acc_t* S) {
  const int64_t N = s.N, D = s.D;
  for (int64_t r = 0; r < bm; ++r) {
    m[r] = -std::numeric_limits<acc_t>::infinity();
    z[r] = 0;
    tl[r] = 0;
  }
  for (int64_t j0 = 0; j0 < N; j0 += kBN) {
    const int64_t bn = std::min(kBN, N - j0);
    // 1. S = A_blk C_tile^T / T (one GEMM).
    gemm_rm<acc_t>(false, true, bm, bn, D, invT, ablk, D, chg + j0 * D, D, acc_t(0), S, bn);
    // 2. per row: new max, rescale the running sum, add the tile's terms.
    for (int64_t r = 0; r < bm; ++r) {
      const acc_t* row = S + r * bn;
      const acc_t tmax = max_of(row, bn);
      const acc_t mnew = tmax > m[r] ? tmax : m[r];
      const acc_t scale = m[r] == -std::numeric_limits<acc_t>::infinity()
                              ? acc_t(0)
                              : static_cast<acc_t>(std::exp(m[r] - mnew));
      z[r] = z[r] * scale + sum_exp(row, bn, mnew);
      m[r] = mnew;
      if (tgt) {
        const int64_t t = tgt[r];
        if (t >= j0 && t < j0 + bn) tl[r] = row[t - j0];
      }
    }
  }
}

template <typename scalar_t>
void fwd_large(const scalar_t* ap, const scalar_t* cp, bool same, const int64_t* tp,
               double temperature, bool normalize, const Dims& s,
              at::opmath_type<scalar_t>* lossp, at::opmath_type<scalar_t>* lsep) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t M = s.M, N = s.N, D = s.D;
  const acc_t invT = acc_t(1) / static_cast<acc_t>(temperature);
  // 1. normalised copies (one copy when the inputs are one tensor).
  std::vector<acc_t> ahat(s.G * M * D), an(s.G * M), chb(same ? 0 : s.G * N * D),
      cnb(same ? 0 : s.G * N);
  normalize_rows(ap, s.G * M, D, normalize, ahat.data(), an.data());
  if (!same) normalize_rows(cp, s.G * N, D, normalize, chb.data(), cnb.data());
  const acc_t* chat = same ? ahat.data() : chb.data();
  const Plan p = make_plan(s, sizeof(acc_t), false);
  // 2. items (group, anchor block) in parallel; each writes its own rows of loss and lse.
  at::parallel_for(0, p.items, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> S(p.bm * kBN), m(p.bm), z(p.bm), tl(p.bm);
    for (int64_t it = begin; it < end; ++it) {
      const int64_t g = it / p.nblk, i0 = (it % p.nblk) * p.bm;
      const int64_t bm = std::min(p.bm, M - i0);
      const int64_t* tgt = tp + g * M + i0;
      lse_block(ahat.data() + (g * M + i0) * D, chat + g * N * D, bm, s, invT, tgt, m.data(),
                z.data(), tl.data(), S.data());
      // 3. lse = m + log z; loss = lse - S[target] (0 on ignored rows).
      for (int64_t r = 0; r < bm; ++r) {
        const acc_t l = m[r] + std::log(z[r]);
        lsep[g * M + i0 + r] = l;
        lossp[g * M + i0 + r] = tgt[r] == kIgnoreIndex ? acc_t(0) : l - tl[r];
      }
    }
  });
}

template <typename scalar_t>
void bwd_large(const at::opmath_type<scalar_t>* glp, const scalar_t* ap, const scalar_t* cp,
               bool same, const int64_t* tp, const at::opmath_type<scalar_t>* lsep,
               double temperature, bool normalize, const Dims& s, scalar_t* dap,
               scalar_t* dcp) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t M = s.M, N = s.N, D = s.D;
  const acc_t invT = acc_t(1) / static_cast<acc_t>(temperature);
  // 1. normalised copies and norms, as in the forward.
  std::vector<acc_t> ahat(s.G * M * D), an(s.G * M), chb(same ? 0 : s.G * N * D),
      cnb(same ? 0 : s.G * N);
  normalize_rows(ap, s.G * M, D, normalize, ahat.data(), an.data());
  if (!same) normalize_rows(cp, s.G * N, D, normalize, chb.data(), cnb.data());
  const acc_t* chat = same ? ahat.data() : chb.data();
  const acc_t* cn = same ? an.data() : cnb.data();
  const Plan p = make_plan(s, sizeof(acc_t), true);
  // 2. task t owns the items [ibeg[t], ibeg[t + 1]) (contiguous, so a task spans the groups
  //    gfirst[t]..glast[t]) and one partial d c_hat [N, D] per group it spans.
  std::vector<int64_t> ibeg(p.ntask + 1), gfirst(p.ntask), glast(p.ntask), poff(p.ntask + 1);
  for (int64_t t = 0; t <= p.ntask; ++t) ibeg[t] = t * p.items / p.ntask;
  poff[0] = 0;
  for (int64_t t = 0; t < p.ntask; ++t) {
    gfirst[t] = ibeg[t] / p.nblk;
    glast[t] = (ibeg[t + 1] - 1) / p.nblk;
    poff[t + 1] = poff[t] + (glast[t] - gfirst[t] + 1) * N * D;
  }
  std::vector<acc_t> part(poff[p.ntask]);
  at::parallel_for(0, p.ntask, 1, [&](int64_t tbegin, int64_t tend) {
    std::vector<acc_t> S(p.bm * kBN), dA(p.bm * D), gi(p.bm), tmp(D);
    for (int64_t t = tbegin; t < tend; ++t) {
      acc_t* pt = part.data() + poff[t];
      fill(pt, acc_t(0), poff[t + 1] - poff[t]);
      for (int64_t it = ibeg[t]; it < ibeg[t + 1]; ++it) {
        const int64_t g = it / p.nblk, i0 = (it % p.nblk) * p.bm;
        const int64_t bm = std::min(p.bm, M - i0);
        const int64_t* tgt = tp + g * M + i0;
        const acc_t* ablk = ahat.data() + (g * M + i0) * D;
        const acc_t* chg = chat + g * N * D;
        acc_t* dcg = pt + (g - gfirst[t]) * N * D;
        // 3. per-row factor grad_loss / T (0 on ignored rows).
        bool any = false;
        for (int64_t r = 0; r < bm; ++r) {
          const bool ign = tgt[r] == kIgnoreIndex;
          gi[r] = ign ? acc_t(0) : glp[g * M + i0 + r] * invT;
          any = any || !ign;
        }
        if (!any) {
          fill(dA.data(), acc_t(0), bm * D);
        } else {
          for (int64_t j0 = 0; j0 < N; j0 += kBN) {
            const int64_t bn = std::min(kBN, N - j0);
            // 4. recompute the logits tile S = A_blk C_tile^T / T.
            gemm_rm<acc_t>(false, true, bm, bn, D, invT, ablk, D, chg + j0 * D, D, acc_t(0),
                           S.data(), bn);
            // 5. dL = gi * (exp(S - lse) - onehot(target)), in place (the saved lse).
            for (int64_t r = 0; r < bm; ++r) {
              acc_t* row = S.data() + r * bn;
              const acc_t gr = gi[r], l = lsep[g * M + i0 + r];
              if (tgt[r] == kIgnoreIndex) {
                fill(row, acc_t(0), bn);
                continue;
              }
              for (int64_t j = 0; j < bn; ++j) row[j] = gr * exp_acc(row[j] - l);
              const int64_t tj = tgt[r] - j0;
              if (tj >= 0 && tj < bn) row[tj] -= gr;
            }
            // 6. d a_hat_blk (+)= dL C_tile;  partial d c_hat_tile += dL^T A_blk.
            gemm_rm<acc_t>(false, false, bm, D, bn, acc_t(1), S.data(), bn, chg + j0 * D, D,
                           j0 == 0 ? acc_t(0) : acc_t(1), dA.data(), D);
            gemm_rm<acc_t>(true, false, bn, D, bm, acc_t(1), S.data(), bn, ablk, D, acc_t(1),
                           dcg + j0 * D, D);
          }
        }
        // 7. through the normalisation of the block's anchor rows (owned by this item).
        for (int64_t r = 0; r < bm; ++r)
          store_normalize_bwd(dap + (g * M + i0 + r) * D, dA.data() + r * D, ablk + r * D,
                              an[g * M + i0 + r], D, normalize, tmp.data());
      }
    }
  });
  // 8. d c_hat = the partials summed in task order, then through the normalisation.
  at::parallel_for(0, s.G * N, std::max<int64_t>(1, 4096 / D), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(D), tmp(D);
    for (int64_t gj = begin; gj < end; ++gj) {
      const int64_t g = gj / N, j = gj % N;
      bool first = true;
      for (int64_t t = 0; t < p.ntask; ++t) {
        if (g < gfirst[t] || g > glast[t]) continue;
        const acc_t* src = part.data() + poff[t] + ((g - gfirst[t]) * N + j) * D;
        if (first) {
          std::copy(src, src + D, acc.data());
          first = false;
        } else {
          for (int64_t d = 0; d < D; ++d) acc[d] += src[d];
        }
      }
      store_normalize_bwd(dcp + gj * D, acc.data(), chat + gj * D, cn[gj], D, normalize,
                          tmp.data());
    }
  });
}

bool use_tiny(const Dims& s) {
  if (s.M > kTinyMax || s.N > kTinyMax) return false;
  return s.G >= at::get_num_threads() || s.M * s.N * s.D <= (int64_t(1) << 18);
}

bool same_tensor(const at::Tensor& a, const at::Tensor& c) {
  return a.data_ptr() == c.data_ptr() && a.sizes() == c.sizes();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> info_nce_fwd_cpu(const at::Tensor& anchors,
                                                     const at::Tensor& candidates,
                                                     const at::Tensor& targets,
                                                     double temperature, bool normalize) {
  const Dims s = check_inputs(anchors, candidates);
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature),
              "art_fast: info_nce temperature must be finite and > 0, got ", temperature);
  const at::Tensor t = check_targets(targets, s);
  const at::ScalarType acc = cpu::acc_dtype(anchors.scalar_type());
  auto loss = at::empty({s.G, s.M}, anchors.options().dtype(acc));
  auto lse = at::empty({s.G, s.M}, anchors.options().dtype(acc));
  if (s.G * s.M == 0) return {loss, lse};
  const bool same = same_tensor(anchors, candidates);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anchors.scalar_type(),
                                  "info_nce_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ap = anchors.data_ptr<scalar_t>();
    const scalar_t* cp = candidates.data_ptr<scalar_t>();
    if (use_tiny(s)) {
      fwd_tiny<scalar_t>(ap, cp, same, t.data_ptr<int64_t>(), temperature, normalize, s,
                         loss.data_ptr<acc_t>(), lse.data_ptr<acc_t>());
    } else {
      fwd_large<scalar_t>(ap, cp, same, t.data_ptr<int64_t>(), temperature, normalize, s,
                          loss.data_ptr<acc_t>(), lse.data_ptr<acc_t>());
    }
  });
  return {loss, lse};
}

std::tuple<at::Tensor, at::Tensor> info_nce_bwd_cpu(const at::Tensor& grad_loss,
                                                     const at::Tensor& anchors,
                                                     const at::Tensor& candidates,
                                                     const at::Tensor& targets,
                                                     const at::Tensor& lse, double temperature,
                                                     bool normalize) {
  const Dims s = check_inputs(anchors, candidates);
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature),
              "art_fast: info_nce temperature must be finite and > 0, got ", temperature);
  const at::Tensor t = check_targets(targets, s);
  const at::ScalarType acc = cpu::acc_dtype(anchors.scalar_type());
  const at::Tensor gl = check_row_tensor(grad_loss, "grad_loss", s, acc);
  const at::Tensor l = check_row_tensor(lse, "lse", s, acc);
  auto da = at::empty_like(anchors);
  auto dc = at::empty_like(candidates);
  if (s.G * s.M == 0) {
    dc.zero_();
    return {da, dc};
  }
  const bool same = same_tensor(anchors, candidates);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anchors.scalar_type(),
                                  "info_nce_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* ap = anchors.data_ptr<scalar_t>();
    const scalar_t* cp = candidates.data_ptr<scalar_t>();
    if (use_tiny(s)) {
      bwd_tiny<scalar_t>(gl.data_ptr<acc_t>(), ap, cp, same, t.data_ptr<int64_t>(),
                         temperature, normalize, s,
                         da.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>());
    } else {
      bwd_large<scalar_t>(gl.data_ptr<acc_t>(), ap, cp, same, t.data_ptr<int64_t>(),
                          l.data_ptr<acc_t>(), temperature, normalize, s,
                          da.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>());
    }
  });
  return {da, dc};
}

}  // namespace art_fast
