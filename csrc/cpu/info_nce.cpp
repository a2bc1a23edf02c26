// C++ CPU kernels for art_fast::info_nce_{fwd,bwd} (per-row losses, reduction "none") and
// art_fast::info_nce_fused (reduction "mean" / "sum": the reduced loss and its gradients in one
// pass; see "fused" below) and the CPU side of the entries' host functions (InfoNceCpu); at the
// end the op's schemas and the kernels' registration for the CPU dispatch key
// (ART_FAST_DEFINE_OP). The tensor contracts, the input checks and the host functions are in
// ../info_nce.h; the values of targets are checked here.
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
//
// fused    info_nce_fused(anchors, candidates, targets, temperature, normalize, mean,
//          compute_grad) -> loss [] (accumulation dtype; "mean" over the non-ignored rows, 0
//          when there is none, else "sum"; the row losses are summed in float64 in a fixed
//          order), grad_anchors, grad_candidates (dtype of the inputs: d loss / d input, or
//          two empty [0] tensors when !compute_grad). The upstream gradient of every row of a
//          reduced loss is the same scalar times w (1 / count or 1; 0 on ignored rows), so the
//          gradients are formed while the logits are hot and the autograd backward only
//          scales them (Liger-Kernel's fused linear cross-entropy trick). No recomputation.
//          tiny  one group per task; float32 inputs with D % 16 == 0 and M, N % 4 == 0 on
//                AVX-512 ("direct"): no normalised copies at all: S = <a, c> inv_a inv_c / T
//                from the raw rows by 4 x 4 register blocks of dot products (a shuffle tree
//                reduces the 16 accumulators), the norms folded into dS for
//                dA = dS diag(inv_c) C and dC = (diag(inv_a) dS)^T A (a register-blocked
//                GEMM of this file: a BLAS call costs more than a 16x16x256 product), and the
//                normalisation's backward applied to the raw rows. Other dtypes / shapes: the
//                same on zero-padded normalised copies.
//          large items (group, block of bm <= 128 anchor rows, lowered to keep
//                bm * N * 4 bytes <= 8 MiB and the threads busy);
//                per item one [bm, N] logits slab (one GEMM), the exact row lse from it,
//                dS in place, then dA_blk = dS C_hat and partial dC += dS^T A_blk (two GEMMs):
//                3 GEMMs in all, like eager's forward + backward, never an [M, N] buffer. The
//                partial dC per task are summed in task order, as in the backward below.
//          memory: tiny O((M + N) * D + M * N) per thread; large the normalised copies, one
//                slab per thread, the partial dC ((G + ntask - 1) * N * D at most), and the
//                two gradients, which autograd holds from the forward to the backward.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../info_nce.h"
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
namespace cpu {

namespace {

constexpr int64_t kIgnoreIndex = -100;
constexpr double kNormEps = 1e-12;  // F.normalize's eps
constexpr int64_t kTinyMax = 64;    // tiny regime: M, N <= kTinyMax
constexpr int64_t kTinyGemmMin = 64;  // tiny regime: GEMMs when M * N >= this, dots below
constexpr int64_t kBM = 128;        // anchor rows per block (large regime; may be lowered)
constexpr int64_t kBN = 128;        // candidates per tile (large regime)
constexpr int64_t kMinBM = 32;
constexpr int64_t kPartialBudget = int64_t(1) << 30;  // bytes of extra partial d c_hat

// s.G, s.M, s.N, s.D of the checked inputs (../info_nce.h).
using Dims = InfoNceDims;

// targets (shape and dtype checked by check_info_nce_fwd), contiguous, every value in [0, N)
// or the ignore index.
at::Tensor check_target_values(const at::Tensor& targets, const Dims& s) {
  at::Tensor t = targets.contiguous();
  const int64_t* tp = t.data_ptr<int64_t>();
  for (int64_t i = 0; i < s.G * s.M; ++i) {
    TORCH_CHECK(tp[i] == kIgnoreIndex || (tp[i] >= 0 && tp[i] < s.N),
                "art_fast: info_nce target ", tp[i], " at flat index ", i,
                " is out of range [0, ", s.N, ") and is not the ignore index -100");
  }
  return t;
}

// ---- small vector helpers: cpu::dot, cpu::max, cpu::exp_acc, cpu::reduce_lanes (common.h) ---

// Vector types, widths and the register-blocked GEMM are common.h's (cpu::Vec, cpu::nr,
// cpu::gemm).
constexpr bool kDotBlock = cpu::nr<float>() == 16;
// V16 / I16 are 16 lanes (64 bytes) on every target, so this file compiles for AVX2 and SSE as
// well as AVX-512; they are only used on the kDotBlock path (one native vector of 16 floats),
// elsewhere the generic cpu:: helpers run.
using V16 = float __attribute__((vector_size(64)));
using I16 = int32_t __attribute__((vector_size(64)));

// reduce_lanes / the lane maximum of cpu::max with the same pairwise tree (lane l += lane
// l + w for w = L/2, ..., 1), done on one vector by shuffles when the 16 float lanes are one
// AVX-512 vector: bitwise the same result, without the scalar chain through the stack that
// dominated the reductions of rows of a few hundred values.
inline V16 fold16(V16 v, bool is_max) {
  const I16 m8 = {8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7};
  const I16 m4 = {4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11};
  const I16 m2 = {2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13};
  const I16 m1 = {1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14};
  if (is_max) {
    V16 u = __builtin_shuffle(v, m8);
    v = u > v ? u : v;
    u = __builtin_shuffle(v, m4);
    v = u > v ? u : v;
    u = __builtin_shuffle(v, m2);
    v = u > v ? u : v;
    u = __builtin_shuffle(v, m1);
    return u > v ? u : v;
  }
  v += __builtin_shuffle(v, m8);
  v += __builtin_shuffle(v, m4);
  v += __builtin_shuffle(v, m2);
  return v + __builtin_shuffle(v, m1);
}

template <typename acc_t>
inline acc_t reduce_lanes_v(acc_t* s) {
  if constexpr (std::is_same_v<acc_t, float> && kLanes<float> == 16 && kDotBlock) {
    V16 v;
    std::memcpy(&v, s, sizeof(V16));
    return fold16(v, false)[0];
  } else {
    return reduce_lanes(s);
  }
}

// Maximum that skips NaN, as cpu::max: the same lanes (cpu::max_lanes), the same tree (fold16).
template <typename acc_t>
inline acc_t max_of(const acc_t* __restrict__ x, int64_t n) {
  if constexpr (std::is_same_v<acc_t, float> && kLanes<float> == 16 && kDotBlock) {
    acc_t s[16];
    max_lanes(x, n, s);
    V16 v;
    std::memcpy(&v, s, sizeof(V16));
    return fold16(v, true)[0];
  } else {
    return cpu::max(x, n);
  }
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
  return reduce_lanes_v(s);
}

inline void scale_inplace(float* __restrict__ x, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}
inline void scale_inplace(double* __restrict__ x, double a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] *= a;
}

// dst = x / max(||x||, eps) (or a copy when !normalize); returns ||x|| (1 when !normalize).
// Inv = true multiplies by 1 / den (one division per row, within 1 ulp of F.normalize's
// quotient; the divisions dominated the tiny groups' normalisation).
template <bool Inv = false, typename acc_t, typename scalar_t>
inline acc_t load_normalized(acc_t* __restrict__ dst, const scalar_t* __restrict__ src,
                             int64_t D, bool normalize) {
  load(dst, src, D);
  if (!normalize) return acc_t(1);
  const acc_t nrm = std::sqrt(dot(dst, dst, D));
  const acc_t den = nrm > acc_t(kNormEps) ? nrm : acc_t(kNormEps);
  if constexpr (Inv) {
    scale_inplace(dst, acc_t(1) / den, D);
  } else {
    for (int64_t d = 0; d < D; ++d) dst[d] = dst[d] / den;
  }
  return nrm;
}

// Gradient through x_hat = x / max(||x||, eps): out = (g - x_hat <x_hat, g>) / ||x|| when
// ||x|| >= eps (autograd of F.normalize: clamp_min passes the gradient at equality), g / eps
// otherwise; out = g when !normalize. Inv as in load_normalized.
template <bool Inv = false, typename acc_t, typename scalar_t>
inline void store_normalize_bwd(scalar_t* __restrict__ out, const acc_t* __restrict__ g,
                                const acc_t* __restrict__ xhat, acc_t nrm, int64_t D,
                                bool normalize, acc_t* __restrict__ tmp) {
  if (!normalize) {
    store(out, g, D);
    return;
  }
  const acc_t den = nrm >= acc_t(kNormEps) ? nrm : acc_t(kNormEps);
  const acc_t pr = nrm >= acc_t(kNormEps) ? dot(xhat, g, D) : acc_t(0);
  if constexpr (Inv) {
    const acc_t inv = acc_t(1) / den;
    for (int64_t d = 0; d < D; ++d) tmp[d] = (g[d] - xhat[d] * pr) * inv;
  } else {
    for (int64_t d = 0; d < D; ++d) tmp[d] = (g[d] - xhat[d] * pr) / den;
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

// Work buffers of one group, per thread: the normalised rows (the candidates' are the anchors'
// when the two inputs are one tensor), their norms, and the logits.
template <typename acc_t>
struct TinyGroup {
  std::vector<acc_t> ah, chb, an, cnb, S;
  const acc_t* ch = nullptr;  // the candidates' normalised rows (ah when same)
  const acc_t* cn = nullptr;  // their norms
  TinyGroup(const Dims& s, bool same)
      : ah(s.M * s.D), chb(same ? 0 : s.N * s.D), an(s.M), cnb(same ? 0 : s.N), S(s.M * s.N) {}

  // 1. normalised rows and norms of group g; 2. logits S = A_hat C_hat^T / T: one GEMM when
  //    the group is big enough to pay for the call, plain dot products otherwise.
  template <typename scalar_t>
  void logits(const scalar_t* ap, const scalar_t* cp, bool same, bool normalize, int64_t g,
              const Dims& s, acc_t invT, bool use_gemm) {
    const int64_t M = s.M, N = s.N, D = s.D;
    for (int64_t i = 0; i < M; ++i)
      an[i] = load_normalized(ah.data() + i * D, ap + (g * M + i) * D, D, normalize);
    ch = ah.data();
    cn = an.data();
    if (!same) {
      for (int64_t j = 0; j < N; ++j)
        cnb[j] = load_normalized(chb.data() + j * D, cp + (g * N + j) * D, D, normalize);
      ch = chb.data();
      cn = cnb.data();
    }
    if (use_gemm) {
      gemm_rm<acc_t>(false, true, M, N, D, invT, ah.data(), D, ch, D, acc_t(0), S.data(), N);
    } else {
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) S[i * N + j] = dot(ah.data() + i * D, ch + j * D, D) * invT;
    }
  }
};

template <typename scalar_t>
void fwd_tiny(const scalar_t* ap, const scalar_t* cp, bool same, const int64_t* tp,
              double temperature, bool normalize, const Dims& s,
              at::opmath_type<scalar_t>* lossp, at::opmath_type<scalar_t>* lsep) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t M = s.M, N = s.N;
  const acc_t invT = acc_t(1) / static_cast<acc_t>(temperature);
  const bool use_gemm = M * N >= kTinyGemmMin;
  at::parallel_for(0, s.G, 1, [&](int64_t begin, int64_t end) {
    TinyGroup<acc_t> w(s, same);
    for (int64_t g = begin; g < end; ++g) {
      w.logits(ap, cp, same, normalize, g, s, invT, use_gemm);
      for (int64_t i = 0; i < M; ++i) {
        const acc_t* row = w.S.data() + i * N;
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
    TinyGroup<acc_t> w(s, same);
    std::vector<acc_t> dah(M * D), dch(N * D), tmp(D);
    for (int64_t g = begin; g < end; ++g) {
      // 1.-2. recompute the normalised rows, their norms and the logits, as in the forward.
      w.logits(ap, cp, same, normalize, g, s, invT, use_gemm);
      const acc_t *ah = w.ah.data(), *ch = w.ch, *an = w.an.data(), *cn = w.cn;
      acc_t* S = w.S.data();
      // 3. dL[i, j] = grad_loss[i] / T * (P[i, j] - [j == t_i]) in place (0 on ignored rows),
      //    P = exp(S - lse) with lse recomputed from the row in the accumulation type (cheap
      //    here, and more exact in float32 where |lse| ~ 1e4 rounds to 1e-3).
      for (int64_t i = 0; i < M; ++i) {
        acc_t* row = S + i * N;
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
        gemm_rm<acc_t>(false, false, M, D, N, acc_t(1), S, N, ch, D, acc_t(0),
                       dah.data(), D);
        gemm_rm<acc_t>(true, false, N, D, M, acc_t(1), S, N, ah, D, acc_t(0),
                       dch.data(), D);
      } else {
        fill(dah.data(), acc_t(0), M * D);
        fill(dch.data(), acc_t(0), N * D);
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j) {
            axpy(dah.data() + i * D, ch + j * D, S[i * N + j], D);
            axpy(dch.data() + j * D, ah + i * D, S[i * N + j], D);
          }
      }
      // 5. through the normalisation of the anchor and candidate rows.
      for (int64_t i = 0; i < M; ++i)
        store_normalize_bwd(dap + (g * M + i) * D, dah.data() + i * D, ah + i * D, an[i],
                            D, normalize, tmp.data());
      for (int64_t j = 0; j < N; ++j)
        store_normalize_bwd(dcp + (g * N + j) * D, dch.data() + j * D, ch + j * D, cn[j], D,
                            normalize, tmp.data());
    }
  });
}

// ---- large regime: blocks of anchor rows against tiles of candidates --------------------------

// The split of the work items (group, block of nblk anchor rows per group) over ntask tasks:
// task t owns the items [ibeg[t], ibeg[t + 1]) (contiguous, so it spans the groups
// gfirst[t]..glast[t]) and, when partials are kept, one partial d c_hat [N, D] per group it
// spans, at poff[t] of one buffer of poff[ntask] values.
struct TaskSplit {
  int64_t ntask;
  std::vector<int64_t> ibeg, gfirst, glast, poff;
  TaskSplit(int64_t items, int64_t nblk, int64_t ntask_, int64_t N, int64_t D, bool partials)
      : ntask(ntask_), ibeg(ntask_ + 1), gfirst(ntask_), glast(ntask_), poff(ntask_ + 1) {
    for (int64_t t = 0; t <= ntask; ++t) ibeg[t] = t * items / ntask;
    poff[0] = 0;
    for (int64_t t = 0; t < ntask; ++t) {
      gfirst[t] = ibeg[t] / nblk;
      glast[t] = (ibeg[t + 1] - 1) / nblk;
      poff[t + 1] = poff[t] + (partials ? (glast[t] - gfirst[t] + 1) * N * D : 0);
    }
  }
};

// d c_hat = the tasks' partials summed in task order (fixed, no atomics), then through the
// normalisation of the candidate rows into dcp [G, N, D].
template <typename acc_t, typename scalar_t>
void reduce_candidate_grads(const TaskSplit& ts, const acc_t* part, const Dims& s,
                            const acc_t* chat, const acc_t* cn, bool normalize, scalar_t* dcp) {
  const int64_t N = s.N, D = s.D;
  at::parallel_for(0, s.G * N, std::max<int64_t>(1, 4096 / D), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(D), tmp(D);
    for (int64_t gj = begin; gj < end; ++gj) {
      const int64_t g = gj / N, j = gj % N;
      bool first = true;
      for (int64_t t = 0; t < ts.ntask; ++t) {
        if (g < ts.gfirst[t] || g > ts.glast[t]) continue;
        const acc_t* src = part + ts.poff[t] + ((g - ts.gfirst[t]) * N + j) * D;
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


// Normalised copies of all rows (and their norms) in the accumulation type.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void normalize_rows(const scalar_t* xp, int64_t rows, int64_t D, bool normalize, acc_t* out,
                    acc_t* norms) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / D), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      norms[r] = load_normalized(out + r * D, xp + r * D, D, normalize);
  });
}

// The normalised copies of a large-regime call: all rows of anchors and candidates (one copy
// when the inputs are one tensor) and their norms, in the accumulation type.
template <typename acc_t>
struct NormalizedRows {
  std::vector<acc_t> abuf, anbuf, cbuf, cnbuf;
  const acc_t* ahat;  // [G*M, D]
  const acc_t* an;    // [G*M]
  const acc_t* chat;  // [G*N, D] (ahat when same)
  const acc_t* cn;    // [G*N] (an when same)

  template <typename scalar_t>
  NormalizedRows(const scalar_t* ap, const scalar_t* cp, bool same, bool normalize,
                 const Dims& s)
      : abuf(s.G * s.M * s.D), anbuf(s.G * s.M), cbuf(same ? 0 : s.G * s.N * s.D),
        cnbuf(same ? 0 : s.G * s.N) {
    normalize_rows(ap, s.G * s.M, s.D, normalize, abuf.data(), anbuf.data());
    if (!same) normalize_rows(cp, s.G * s.N, s.D, normalize, cbuf.data(), cnbuf.data());
    ahat = abuf.data();
    an = anbuf.data();
    chat = same ? abuf.data() : cbuf.data();
    cn = same ? anbuf.data() : cnbuf.data();
  }
};

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
  const NormalizedRows<acc_t> x(ap, cp, same, normalize, s);
  const Plan p = make_plan(s, sizeof(acc_t), false);
  // 2. items (group, anchor block) in parallel; each writes its own rows of loss and lse.
  at::parallel_for(0, p.items, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> S(p.bm * kBN), m(p.bm), z(p.bm), tl(p.bm);
    for (int64_t it = begin; it < end; ++it) {
      const int64_t g = it / p.nblk, i0 = (it % p.nblk) * p.bm;
      const int64_t bm = std::min(p.bm, M - i0);
      const int64_t* tgt = tp + g * M + i0;
      lse_block(x.ahat + (g * M + i0) * D, x.chat + g * N * D, bm, s, invT, tgt, m.data(),
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
  const NormalizedRows<acc_t> x(ap, cp, same, normalize, s);
  const Plan p = make_plan(s, sizeof(acc_t), true);
  // 2. the tasks, each with one partial d c_hat [N, D] per group it spans (TaskSplit).
  const TaskSplit ts(p.items, p.nblk, p.ntask, N, D, true);
  const auto& ibeg = ts.ibeg;
  const auto& gfirst = ts.gfirst;
  const auto& poff = ts.poff;
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
        const acc_t* ablk = x.ahat + (g * M + i0) * D;
        const acc_t* chg = x.chat + g * N * D;
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
                              x.an[g * M + i0 + r], D, normalize, tmp.data());
      }
    }
  });
  // 8. d c_hat = the partials summed in task order, then through the normalisation.
  reduce_candidate_grads(ts, part.data(), s, x.chat, x.cn, normalize, dcp);
}

// ---- fused loss + gradients (reduction "mean" / "sum") ---------------------------------------
//
// For a reduced loss the upstream gradient of every row's loss is the same scalar times w_i
// (w_i = 1 / count for "mean", 1 for "sum", 0 on ignored rows), so the gradients of the reduced
// loss are computed once, while the logits are hot; the autograd backward only scales them.

// x[j] = exp(x[j] - m) in place; returns their sum (kLanes partial sums, fixed order).
template <typename acc_t>
inline acc_t exp_sum_inplace(acc_t* __restrict__ x, int64_t n, acc_t m) {
  constexpr int L = kLanes<acc_t>;
  acc_t s[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L)
    for (int l = 0; l < L; ++l) {
      const acc_t e = exp_acc(x[i + l] - m);
      x[i + l] = e;
      s[l] += e;
    }
  for (int l = 0; i < n; ++i, ++l) {
    const acc_t e = exp_acc(x[i] - m);
    x[i] = e;
    s[l] += e;
  }
  return reduce_lanes_v(s);
}


// S[i, j] = <a_i, c_j> for a 4 x 4 block, when one vector holds 16 values (float, AVX-512):
// the 16 dot products run in 16 vector accumulators over D (a multiple of 16; rows padded
// with zeros), then one transposing reduction tree (15 adds) turns them into one vector of the
// 16 results. No transposed copy of the candidates is needed. Fixed summation order.

template <int SZ>
inline V16 reduce_pair(V16 a, V16 b) {
  // Each segment of SZ lanes of a and b is halved: the segment's two halves are added, a's
  // result first. Built from SZ at compile time.
  if constexpr (SZ == 16) {
    const I16 lo = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const I16 hi = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    return __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, hi);
  } else if constexpr (SZ == 8) {
    const I16 lo = {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27};
    const I16 hi = {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31};
    return __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, hi);
  } else if constexpr (SZ == 4) {
    const I16 lo = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
    const I16 hi = {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31};
    return __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, hi);
  } else {
    const I16 lo = {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30};
    const I16 hi = {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31};
    return __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, hi);
  }
}

// S[4, 4] (row stride lds) = A[i0..i0+4) . C[j0..j0+4)^T, rows of length D16 (multiple of 16).
inline void dot_block_4x4(const float* __restrict__ a, int64_t lda, const float* __restrict__ c,
                          int64_t ldc, int64_t D16, float* __restrict__ S, int64_t lds) {
  if constexpr (kDotBlock) {
    V16 acc[16];
#pragma GCC unroll 16
    for (int k = 0; k < 16; ++k) acc[k] = V16{};
    for (int64_t d = 0; d < D16; d += 16) {
      V16 av[4], cv[4];
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        std::memcpy(&av[i], a + i * lda + d, sizeof(V16));
        std::memcpy(&cv[i], c + i * ldc + d, sizeof(V16));
        // Keep the 8 loaded vectors in registers (GCC otherwise re-reads them as memory
        // operands of the 16 FMAs: 20 loads per step instead of 8, and the loop is load-bound).
#if defined(__AVX512F__)
        asm("" : "+v"(av[i]), "+v"(cv[i]));
#endif
      }
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i)
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) acc[i * 4 + j] += av[i] * cv[j];
    }
    // The tree below leaves accumulator bitrev4(k) in lane k: feed it bit-reversed, so that
    // lane l ends up holding entry (l / 4, l % 4).
    constexpr int br[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
    V16 w[8], x[4], y[2];
#pragma GCC unroll 8
    for (int p = 0; p < 8; ++p) w[p] = reduce_pair<16>(acc[br[2 * p]], acc[br[2 * p + 1]]);
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) x[q] = reduce_pair<8>(w[2 * q], w[2 * q + 1]);
    y[0] = reduce_pair<4>(x[0], x[1]);
    y[1] = reduce_pair<4>(x[2], x[3]);
    const V16 z = reduce_pair<2>(y[0], y[1]);
    float out[16];
    std::memcpy(out, &z, sizeof(V16));
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) std::memcpy(S + i * lds, out + 4 * i, 4 * sizeof(float));
  }
}

// One row of logits (already divided by T) -> its loss, and when grad, the row overwritten by
// d(reduced loss)/d(logits) / T = w (softmax - onehot(t)) / T. Ignored rows: loss 0, row 0.
template <typename acc_t>
inline acc_t fused_row(acc_t* __restrict__ row, int64_t n, int64_t t, acc_t w_over_T,
                       bool grad) {
  if (t == kIgnoreIndex) {
    if (grad) fill(row, acc_t(0), n);
    return acc_t(0);
  }
  const acc_t mx = max_of(row, n);
  const acc_t st = row[t];
  if (!grad) return mx + std::log(sum_exp(row, n, mx)) - st;
  const acc_t z = exp_sum_inplace(row, n, mx);
  const acc_t loss = mx + std::log(z) - st;
  scale_inplace(row, w_over_T / z, n);
  row[t] -= w_over_T;
  return loss;
}

// Tiny regime: one group per task, everything in per-thread buffers padded for small_gemm:
// rows to cpu::kMR (and to the vector width), the D and N columns to the vector width.
// gsum[g] = the group's loss sum.
template <typename scalar_t>
void fused_tiny(const scalar_t* ap, const scalar_t* cp, bool same, const int64_t* tp,
                double temperature, bool normalize, const Dims& s, at::opmath_type<scalar_t> w,
                bool grad, double* gsum, scalar_t* dap, scalar_t* dcp) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t M = s.M, N = s.N, D = s.D;
  constexpr int64_t NR = cpu::nr<acc_t>();
  constexpr int64_t PADN = NR > cpu::kMR ? NR : cpu::kMR;
  // Logits by 4 x 4 dot blocks (float, 16-lane vectors), else by small_gemm against a
  // transposed copy of the candidates.
  constexpr bool dot_blocks = std::is_same_v<acc_t, float> && kDotBlock;
  const int64_t Dp = round_up(D, NR), Mp = round_up(M, cpu::kMR), Np = round_up(N, PADN);
  const int64_t rows_a = std::max(Mp, Np);  // the candidates' rows when they are the anchors
  const acc_t invT = acc_t(1) / static_cast<acc_t>(temperature);
  const acc_t wT = w * invT;
  at::parallel_for(0, s.G, 1, [&](int64_t begin, int64_t end) {
    // Zero-initialised once: the padding rows / columns are never written afterwards.
    std::vector<acc_t> ah(rows_a * Dp, acc_t(0)), chb(same ? 0 : Np * Dp, acc_t(0)), an(M),
        cnb(same ? 0 : N), chT(dot_blocks ? 0 : D * Np, acc_t(0)), S(Mp * Np, acc_t(0)),
        dah(grad ? Mp * Dp : 0), dch(grad ? Np * Dp : 0), tmp(D);
    for (int64_t g = begin; g < end; ++g) {
      // 1. normalised rows (the candidates are the anchors when the inputs are one tensor).
      for (int64_t i = 0; i < M; ++i)
        an[i] = load_normalized<true>(ah.data() + i * Dp, ap + (g * M + i) * D, D, normalize);
      const acc_t* ch = ah.data();
      const acc_t* cn = an.data();
      if (!same) {
        for (int64_t j = 0; j < N; ++j)
          cnb[j] =
              load_normalized<true>(chb.data() + j * Dp, cp + (g * N + j) * D, D, normalize);
        ch = chb.data();
        cn = cnb.data();
      }
      // 2. S = A_hat C_hat^T [Mp, Np] (padding entries are 0).
      if constexpr (dot_blocks) {
        for (int64_t i0 = 0; i0 < M; i0 += 4)
          for (int64_t j0 = 0; j0 < N; j0 += 4)
            dot_block_4x4(ah.data() + i0 * Dp, Dp, ch + j0 * Dp, Dp, Dp, S.data() + i0 * Np + j0,
                          Np);
      } else {
        for (int64_t j = 0; j < N; ++j)
          for (int64_t d = 0; d < D; ++d) chT[d * Np + j] = ch[j * Dp + d];
        cpu::gemm<false>(ah.data(), Dp, chT.data(), Np, S.data(), Np, Mp, D, Np);
      }
      // 3. per row: loss, and dS = w (P - onehot) / T in place; the padding stays 0.
      double total = 0;
      for (int64_t i = 0; i < M; ++i) {
        acc_t* row = S.data() + i * Np;
        scale_inplace(row, invT, N);
        total += static_cast<double>(fused_row(row, N, tp[g * M + i], wT, grad));
      }
      gsum[g] = total;
      if (!grad) continue;
      // 4. d A_hat = dS C_hat;  d C_hat = dS^T A_hat.
      cpu::gemm<false>(S.data(), Np, ch, Dp, dah.data(), Dp, Mp, N, Dp);
      cpu::gemm<true>(S.data(), Np, ah.data(), Dp, dch.data(), Dp, round_up(N, cpu::kMR), M, Dp);
      // 5. through the normalisation.
      for (int64_t i = 0; i < M; ++i)
        store_normalize_bwd<true>(dap + (g * M + i) * D, dah.data() + i * Dp, ah.data() + i * Dp,
                                 an[i], D, normalize, tmp.data());
      for (int64_t j = 0; j < N; ++j)
        store_normalize_bwd<true>(dcp + (g * N + j) * D, dch.data() + j * Dp, ch + j * Dp, cn[j],
                                 D, normalize, tmp.data());
    }
  });
}

// Dot product with four interleaved groups of kLanes partial sums (four independent FMA chains:
// the single chain of cpu::dot is latency-bound on rows of a few hundred values), combined in
// a fixed order.
template <typename acc_t>
inline acc_t dot4(const acc_t* __restrict__ a, const acc_t* __restrict__ b, int64_t n) {
  constexpr int L = kLanes<acc_t>;
  acc_t s0[L] = {}, s1[L] = {}, s2[L] = {}, s3[L] = {};
  int64_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L)
    for (int l = 0; l < L; ++l) {
      s0[l] += a[i + l] * b[i + l];
      s1[l] += a[i + L + l] * b[i + L + l];
      s2[l] += a[i + 2 * L + l] * b[i + 2 * L + l];
      s3[l] += a[i + 3 * L + l] * b[i + 3 * L + l];
    }
  for (int l = 0; i < n; ++i, ++l) s0[l % L] += a[i] * b[i];
  for (int l = 0; l < L; ++l) s0[l] = (s0[l] + s1[l]) + (s2[l] + s3[l]);
  return reduce_lanes_v(s0);
}

// 1 / max(||x||, eps) and ||x|| (1 and 1 when !normalize).
inline float inv_norm(const float* x, int64_t D, bool normalize, float* nrm_out) {
  if (!normalize) {
    *nrm_out = 1.0f;
    return 1.0f;
  }
  const float nrm = std::sqrt(dot4(x, x, D));
  *nrm_out = nrm;
  return 1.0f / (nrm > float(kNormEps) ? nrm : float(kNormEps));
}

// out = d loss / d x from g = d loss / d x_hat, x_hat = x * inv (inv = 1 / max(||x||, eps)):
// (g - x_hat <x_hat, g>) / ||x|| = (g - x (inv^2 <x, g>)) inv when ||x|| >= eps, g / eps below,
// g when !normalize.
inline void store_normalize_bwd_raw(float* __restrict__ out, const float* __restrict__ g,
                                    const float* __restrict__ x, float inv, float nrm,
                                    int64_t D, bool normalize) {
  if (!normalize) {
    std::memcpy(out, g, D * sizeof(float));
    return;
  }
  if (nrm >= float(kNormEps)) {
    const float c = inv * inv * dot4(x, g, D);
    for (int64_t d = 0; d < D; ++d) out[d] = (g[d] - x[d] * c) * inv;
  } else {
    const float e = 1.0f / float(kNormEps);
    for (int64_t d = 0; d < D; ++d) out[d] = g[d] * e;
  }
}

// Tiny regime, float inputs with D % 16 == 0 and M, N % 4 == 0 (AVX-512): no normalised copies
// at all. S = (A C^T) * inv_a inv_c / T from the raw rows by 4 x 4 dot blocks; the row norms are
// folded into dS for the gradient products (d A_hat = dS diag(inv_c) C,
// d C_hat = (diag(inv_a) dS)^T A), and the normalisation's backward is applied to the raw rows.
bool fused_tiny_direct_ok(const Dims& s) {
  return kDotBlock && s.D % 16 == 0 && s.M % 4 == 0 && s.N % 4 == 0;
}

void fused_tiny_direct(const float* ap, const float* cp, bool same, const int64_t* tp,
                       double temperature, bool normalize, const Dims& s, float w, bool grad,
                       double* gsum, float* dap, float* dcp) {
  const int64_t M = s.M, N = s.N, D = s.D;
  const int64_t Mp = round_up(M, cpu::kMR), Np = round_up(N, 16);
  const float invT = 1.0f / static_cast<float>(temperature);
  const float wT = w * invT;
  at::parallel_for(0, s.G, 1, [&](int64_t begin, int64_t end) {
    // Zero-initialised once: the padding rows / columns are never written afterwards.
    std::vector<float> S(Mp * Np, 0.0f), Sc(grad ? Mp * Np : 0, 0.0f),
        Sa(grad ? Mp * Np : 0, 0.0f), ia(M), na(M), icb(same ? 0 : N), ncb(same ? 0 : N),
        dah(grad ? Mp * D : 0), dch(grad ? Np * D : 0);
    for (int64_t g = begin; g < end; ++g) {
      const float* A = ap + g * M * D;
      const float* C = same ? A : cp + g * N * D;
      for (int64_t i = 0; i < M; ++i) ia[i] = inv_norm(A + i * D, D, normalize, &na[i]);
      const float* ic = ia.data();
      const float* nc = na.data();
      if (!same) {
        for (int64_t j = 0; j < N; ++j) icb[j] = inv_norm(C + j * D, D, normalize, &ncb[j]);
        ic = icb.data();
        nc = ncb.data();
      }
      // 1. raw products, then S = <a, c> inv_a inv_c / T.
      for (int64_t i0 = 0; i0 < M; i0 += 4)
        for (int64_t j0 = 0; j0 < N; j0 += 4)
          dot_block_4x4(A + i0 * D, D, C + j0 * D, D, D, S.data() + i0 * Np + j0, Np);
      double total = 0;
      for (int64_t i = 0; i < M; ++i) {
        float* row = S.data() + i * Np;
        const float ai = ia[i] * invT;
        for (int64_t j = 0; j < N; ++j) row[j] = row[j] * ai * ic[j];
        // 2. loss, and dS = w (P - onehot) / T in place.
        total += static_cast<double>(fused_row(row, N, tp[g * M + i], wT, grad));
      }
      gsum[g] = total;
      if (!grad) continue;
      // 3. the norms folded into dS.
      for (int64_t i = 0; i < M; ++i) {
        const float* row = S.data() + i * Np;
        float* rc = Sc.data() + i * Np;
        float* ra = Sa.data() + i * Np;
        for (int64_t j = 0; j < N; ++j) {
          rc[j] = row[j] * ic[j];
          ra[j] = row[j] * ia[i];
        }
      }
      // 4. d A_hat = dS diag(inv_c) C;  d C_hat = (diag(inv_a) dS)^T A.
      cpu::gemm<false>(Sc.data(), Np, C, D, dah.data(), D, Mp, N, D);
      cpu::gemm<true>(Sa.data(), Np, A, D, dch.data(), D, round_up(N, cpu::kMR), M, D);
      // 5. through the normalisation, straight into the outputs.
      for (int64_t i = 0; i < M; ++i)
        store_normalize_bwd_raw(dap + (g * M + i) * D, dah.data() + i * D, A + i * D, ia[i],
                                na[i], D, normalize);
      for (int64_t j = 0; j < N; ++j)
        store_normalize_bwd_raw(dcp + (g * N + j) * D, dch.data() + j * D, C + j * D, ic[j],
                                nc[j], D, normalize);
    }
  });
}

constexpr int64_t kFusedBM = 128;                       // anchor rows per block (large)
constexpr int64_t kSlabBudget = int64_t(8) << 20;       // bytes of the [bm, N] slab per thread
constexpr int64_t kMinFusedBM = 8;

// Large regime: items (group, block of bm anchor rows); a task owns a contiguous run of items,
// a [bm, N] logits slab and (when grad) one partial d c_hat [N, D] per group it spans.
// Per item: slab = A_blk C_hat^T / T (one GEMM), exact row lse from the slab, dS in place,
// dA_blk = dS C_hat and partial dC += dS^T A_blk (two GEMMs): 3 GEMMs, no recomputation.
template <typename scalar_t>
void fused_large(const scalar_t* ap, const scalar_t* cp, bool same, const int64_t* tp,
                 double temperature, bool normalize, const Dims& s,
                 at::opmath_type<scalar_t> w, bool grad, at::opmath_type<scalar_t>* rowloss,
                 scalar_t* dap, scalar_t* dcp) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t M = s.M, N = s.N, D = s.D;
  const acc_t invT = acc_t(1) / static_cast<acc_t>(temperature);
  const acc_t wT = w * invT;
  const NormalizedRows<acc_t> x(ap, cp, same, normalize, s);
  // Plan: block height within the slab budget, lowered to keep the threads busy.
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  int64_t bm = kFusedBM;
  const int64_t bm_cap =
      std::max<int64_t>(kMinFusedBM, kSlabBudget / (N * static_cast<int64_t>(sizeof(acc_t))));
  while (bm > bm_cap) bm /= 2;
  while (bm > kMinBM && s.G * ((M + bm - 1) / bm) < 2 * nthreads) bm /= 2;
  bm = std::max<int64_t>(1, std::min(bm, M));
  const int64_t nblk = (M + bm - 1) / bm, items = s.G * nblk;
  int64_t ntask = std::min(nthreads, items);
  if (grad) {
    const int64_t per_task = N * D * static_cast<int64_t>(sizeof(acc_t));
    while (ntask > 1 && (ntask - 1) * per_task > kPartialBudget) --ntask;
  }
  const TaskSplit ts(items, nblk, ntask, N, D, grad);
  const auto& ibeg = ts.ibeg;
  const auto& gfirst = ts.gfirst;
  const auto& poff = ts.poff;
  std::vector<acc_t> part(poff[ntask]);
  at::parallel_for(0, ntask, 1, [&](int64_t tbegin, int64_t tend) {
    std::vector<acc_t> slab(bm * N), dA(grad ? bm * D : 0), tmp(D);
    for (int64_t t = tbegin; t < tend; ++t) {
      acc_t* pt = part.data() + poff[t];
      for (int64_t it = ibeg[t]; it < ibeg[t + 1]; ++it) {
        const int64_t g = it / nblk, i0 = (it % nblk) * bm;
        const int64_t rows = std::min(bm, M - i0);
        const int64_t* tgt = tp + g * M + i0;
        const acc_t* ablk = x.ahat + (g * M + i0) * D;
        const acc_t* chg = x.chat + g * N * D;
        // 1. slab = A_blk C_hat^T / T.
        gemm_rm<acc_t>(false, true, rows, N, D, invT, ablk, D, chg, D, acc_t(0), slab.data(),
                       N);
        // 2. exact row lse, loss, and dS in place.
        for (int64_t r = 0; r < rows; ++r)
          rowloss[g * M + i0 + r] = fused_row(slab.data() + r * N, N, tgt[r], wT, grad);
        if (!grad) continue;
        // 3. dA_blk = dS C_hat (then through the anchors' normalisation);
        //    partial dC_g (+)= dS^T A_blk (overwritten by the task's first item of group g).
        gemm_rm<acc_t>(false, false, rows, D, N, acc_t(1), slab.data(), N, chg, D, acc_t(0),
                       dA.data(), D);
        const bool first = it == ibeg[t] || i0 == 0;
        gemm_rm<acc_t>(true, false, N, D, rows, acc_t(1), slab.data(), N, ablk, D,
                       first ? acc_t(0) : acc_t(1), pt + (g - gfirst[t]) * N * D, D);
        for (int64_t r = 0; r < rows; ++r)
          store_normalize_bwd(dap + (g * M + i0 + r) * D, dA.data() + r * D, ablk + r * D,
                              x.an[g * M + i0 + r], D, normalize, tmp.data());
      }
    }
  });
  if (!grad) return;
  // 4. d c_hat = the partials summed in task order, then through the normalisation.
  reduce_candidate_grads(ts, part.data(), s, x.chat, x.cn, normalize, dcp);
}

bool use_tiny(const Dims& s) {
  if (s.M > kTinyMax || s.N > kTinyMax) return false;
  return s.G >= at::get_num_threads() || s.M * s.N * s.D <= (int64_t(1) << 18);
}

bool same_tensor(const at::Tensor& a, const at::Tensor& c) {
  return a.data_ptr() == c.data_ptr() && a.sizes() == c.sizes();
}

// The CPU side of the entries' host functions (../info_nce.h): the values of targets, and the
// kernels for the checked inputs and the allocated outputs (the empty case G * M == 0 is
// handled there).
struct InfoNceCpu {
  static constexpr c10::DeviceType kDevice = c10::kCPU;
  const Dims s;
  const at::Tensor t;  // targets, contiguous, its values checked

  InfoNceCpu(const Dims& d, const at::Tensor& /*anchors*/, const at::Tensor& targets)
      : s(d), t(check_target_values(targets, d)) {}

  void fwd(const at::Tensor& anchors, const at::Tensor& candidates, double temperature,
           bool normalize, at::Tensor& loss, at::Tensor& lse) const {
    with_inputs(anchors, candidates,
                [&]<typename scalar_t>(const scalar_t* ap, const scalar_t* cp, bool same) {
      using acc_t = at::opmath_type<scalar_t>;
      if (use_tiny(s)) {
        fwd_tiny<scalar_t>(ap, cp, same, t.data_ptr<int64_t>(), temperature, normalize, s,
                           loss.data_ptr<acc_t>(), lse.data_ptr<acc_t>());
      } else {
        fwd_large<scalar_t>(ap, cp, same, t.data_ptr<int64_t>(), temperature, normalize, s,
                            loss.data_ptr<acc_t>(), lse.data_ptr<acc_t>());
      }
    });
  }

  void bwd(const at::Tensor& gl, const at::Tensor& anchors, const at::Tensor& candidates,
           const at::Tensor& l, double temperature, bool normalize, at::Tensor& da,
           at::Tensor& dc) const {
    with_inputs(anchors, candidates,
                [&]<typename scalar_t>(const scalar_t* ap, const scalar_t* cp, bool same) {
      using acc_t = at::opmath_type<scalar_t>;
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
  }

  // da, dc: the gradients' outputs, or nullptr when !compute_grad.
  void fused(const at::Tensor& anchors, const at::Tensor& candidates, double temperature,
             bool normalize, bool mean, at::Tensor& loss, at::Tensor* da,
             at::Tensor* dc) const {
    const int64_t* tp = t.data_ptr<int64_t>();
    int64_t count = 0;
    for (int64_t i = 0; i < s.G * s.M; ++i) count += tp[i] != kIgnoreIndex;
    const bool compute_grad = da != nullptr;
    // Per-row weight of the reduced loss: 1 / count ("mean"; no row counts when count == 0),
    // 1 ("sum"); ignored rows get 0 inside the kernels.
    const double wd = mean ? 1.0 / static_cast<double>(std::max<int64_t>(count, 1)) : 1.0;
    with_inputs(anchors, candidates,
                [&]<typename scalar_t>(const scalar_t* ap, const scalar_t* cp, bool same) {
      using acc_t = at::opmath_type<scalar_t>;
      scalar_t* dap = compute_grad ? da->data_ptr<scalar_t>() : nullptr;
      scalar_t* dcp = compute_grad ? dc->data_ptr<scalar_t>() : nullptr;
      double total = 0;
      if (use_tiny(s)) {
        std::vector<double> gsum(s.G);
        if (std::is_same_v<scalar_t, float> && fused_tiny_direct_ok(s)) {
          // (scalar_t is float here; the casts only let the other dtypes compile.)
          fused_tiny_direct(reinterpret_cast<const float*>(ap),
                            reinterpret_cast<const float*>(cp), same, tp, temperature,
                            normalize, s, static_cast<float>(wd), compute_grad, gsum.data(),
                            reinterpret_cast<float*>(dap), reinterpret_cast<float*>(dcp));
        } else {
          fused_tiny<scalar_t>(ap, cp, same, tp, temperature, normalize, s,
                               static_cast<acc_t>(wd), compute_grad, gsum.data(), dap, dcp);
        }
        for (int64_t g = 0; g < s.G; ++g) total += gsum[g];
      } else {
        std::vector<acc_t> rl(s.G * s.M);
        fused_large<scalar_t>(ap, cp, same, tp, temperature, normalize, s,
                              static_cast<acc_t>(wd), compute_grad, rl.data(), dap, dcp);
        for (int64_t i = 0; i < s.G * s.M; ++i) total += static_cast<double>(rl[i]);
      }
      loss.fill_(mean ? (count > 0 ? total / static_cast<double>(count) : 0.0) : total);
    });
  }

 private:
  // f(ap, cp, same): the inputs' data in their dtype (the dispatch over the supported dtypes)
  // and whether the two are one tensor.
  template <typename F>
  static void with_inputs(const at::Tensor& anchors, const at::Tensor& candidates, const F& f) {
    const bool same = same_tensor(anchors, candidates);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anchors.scalar_type(),
                                    "info_nce_cpu", [&] {
      f(anchors.data_ptr<scalar_t>(), candidates.data_ptr<scalar_t>(), same);
    });
  }
};

}  // namespace

}  // namespace cpu
}  // namespace art_fast

// The schemas (their tensor contracts are in ../info_nce.h) and the CPU kernels.
ART_FAST_DEFINE_OP(art_fast::info_nce_impl<art_fast::cpu::InfoNceCpu>,
    "info_nce_fwd(Tensor anchors, Tensor candidates, Tensor targets, float temperature,"
    " bool normalize) -> (Tensor, Tensor)",
    "info_nce_bwd(Tensor grad_loss, Tensor anchors, Tensor candidates, Tensor targets,"
    " Tensor lse, float temperature, bool normalize) -> (Tensor, Tensor)",
    "info_nce_fused(Tensor anchors, Tensor candidates, Tensor targets, float temperature,"
    " bool normalize, bool mean, bool compute_grad) -> (Tensor, Tensor, Tensor)")
