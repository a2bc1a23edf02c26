// C++ CPU kernel for art_fast::topk_regions_{fwd,bwd} and the CPU side of the entries' host
// functions (TopkRegionsCpu); at the end the op's schemas and the kernel's registration for the
// CPU dispatch key (ART_FAST_DEFINE_OP). The tensor contracts, the input checks and the host
// functions are in ../topk_regions.h.
//
// For each row (b, m): I = the k highest scores[b, m, :], w = softmax(scores[b, m, I]),
// pooled[b, m] = sum_j w_j values[b, I_j]. N (patches) ~ 200, k small (~16), C ~ 32.
//
// Profile
//   inputs   scores [B,M,N], values [B,N,C], one dtype: float64, float32, bf16 or fp16,
//            contiguous; 1 <= k <= N.
//   outputs  pooled [B,M,C] (dtype of values), indices [B,M,k] int64, weights [B,M,k] (dtype
//            of scores). Order of I: descending score, equal scores by increasing index, NaN
//            below every number (-inf included), NaNs by increasing index; -0.0 == +0.0.
//   saved    scores, values, indices. The weights are not read back by the backward: it
//            recomputes them in the accumulation type from the scores gathered at indices.
//   grid     forward: at::parallel_for over the B*M rows; each row owns its outputs.
//            backward: at::parallel_for over b; each task owns grad_scores[b] and
//            grad_values[b], so there are no atomics and no two threads write one element.
//   memory   per thread: N + k (rounded up to 8) + 1 integer rank keys (see RankKey), the k
//            selected scores, one score row and one C-vector in the accumulation type; the
//            backward holds the k selected value rows transposed ([C, k]) and, for bf16/fp16,
//            grad_values[b] (N*C) in the accumulation type.
//   precision fp32 accumulation for fp32/bf16/fp16 (float64 for float64); the softmax subtracts
//            the selection's max before exp and behaves as torch.softmax on NaN / all -inf
//            (NaN weights); the backward uses the recomputed, unrounded weights.
//   determinism the selection is exact (distinct integer keys that encode the order on
//            (score, index), filtered then sorted; see select_topk); pooled sums
//            over j in selection order; grad_values[b] sums over m, then j, in increasing
//            order inside one task, so results do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "../topk_regions.h"
#include "common.h"

namespace art_fast {
namespace cpu {

namespace {

// Up to this many survivors of the threshold filter, select_topk ranks them by counting
// (O(cnt^2) vectorised compares, no branch misses) instead of sorting.
constexpr int64_t kRankCountMax = 64;

// s.B, s.M, s.N, s.C of the checked inputs (../topk_regions.h; k is passed on its own).
using Dims = TopkRegionsDims;

// The selection order as one integer per entry: rank key(v, n) > key(v', n') iff (v, n) ranks
// above (v', n'). The high half is the value mapped to a signed integer of the same order
// (sign-magnitude bits to two's complement; -0.0 read as +0.0 so that the two tie; NaN mapped
// below -inf), the low half is (all ones - n), so that among equal values the lower index ranks
// higher. float (fp32, bf16, fp16 widened) -> int64; double -> __int128. Keys are distinct.
template <typename acc_t>
struct RankKey;

template <>
struct RankKey<float> {
  using type = int64_t;
  static constexpr type kLowest = std::numeric_limits<int64_t>::min();  // below every key
  static inline type make(float v, int64_t n) {
    uint32_t bits;
    const float f = (v == 0.0f) ? 0.0f : v;
    std::memcpy(&bits, &f, sizeof(bits));
    int32_t ord = static_cast<int32_t>(bits ^ (static_cast<uint32_t>(static_cast<int32_t>(bits) >> 31) &
                                               0x7FFFFFFFu));
    ord = std::isnan(v) ? std::numeric_limits<int32_t>::min() : ord;
    return static_cast<int64_t>(ord) * (int64_t(1) << 32) +
           static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(n));
  }
  static inline int64_t index(type key) {
    return static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(key & 0xFFFFFFFF));
  }
};

template <>
struct RankKey<double> {
  using type = __int128;
  static constexpr type kLowest = static_cast<__int128>(std::numeric_limits<int64_t>::min()) *
                                  (static_cast<__int128>(1) << 64);
  static inline type make(double v, int64_t n) {
    uint64_t bits;
    const double f = (v == 0.0) ? 0.0 : v;
    std::memcpy(&bits, &f, sizeof(bits));
    int64_t ord = static_cast<int64_t>(
        bits ^ (static_cast<uint64_t>(static_cast<int64_t>(bits) >> 63) & 0x7FFFFFFFFFFFFFFFull));
    ord = std::isnan(v) ? std::numeric_limits<int64_t>::min() : ord;
    return static_cast<__int128>(ord) * (static_cast<__int128>(1) << 64) +
           static_cast<__int128>(~static_cast<uint64_t>(n));
  }
  static inline int64_t index(type key) {
    return static_cast<int64_t>(~static_cast<uint64_t>(key));
  }
};

// The k best entries of row[0..N) in rank order: their indices into sel_i, their values into
// sel_v. keys: N entries of scratch; gmax: k rounded up to 8, plus 1, entries of scratch.
//
// 1. keys of the whole row (a vectorisable loop).
// 2. when N >= 2G, a threshold T that at least k keys reach: the lowest of the maxima of G >= k
//    groups (group g = the n with n % G == g; G = k rounded up to a multiple of 8), found with
//    vectorisable max loops. Any of the k best is >= T (the G group maxima are G >= k distinct
//    keys >= T), so only the keys >= T are kept, compacted in place without branches: exactly
//    G of them for sorted or constant rows, typically 2-3 G for random ones.
// 3. the survivors ranked (counting, for at most kRankCountMax of them) or sorted in decreasing
//    key order; the first k are the selection.
template <typename acc_t>
inline void select_topk(const acc_t* __restrict__ row, int64_t N, int64_t k,
                        typename RankKey<acc_t>::type* __restrict__ keys,
                        typename RankKey<acc_t>::type* __restrict__ gmax,
                        acc_t* __restrict__ sel_v, int64_t* __restrict__ sel_i) {
  using RK = RankKey<acc_t>;
  using key_t = typename RK::type;
  for (int64_t n = 0; n < N; ++n) keys[n] = RK::make(row[n], n);
  int64_t cnt = N;
  const int64_t G = (k + 7) / 8 * 8;  // groups: >= k, a multiple of the vector width
  if (N >= 2 * G) {
    for (int64_t g = 0; g < G; ++g) gmax[g] = keys[g];
    int64_t n0 = G;
    for (; n0 + G <= N; n0 += G) {
      const key_t* kr = keys + n0;
      for (int64_t g = 0; g < G; ++g) gmax[g] = kr[g] > gmax[g] ? kr[g] : gmax[g];
    }
    for (int64_t g = 0; n0 + g < N; ++g) gmax[g] = keys[n0 + g] > gmax[g] ? keys[n0 + g] : gmax[g];
    key_t thr = gmax[0];
    for (int64_t g = 1; g < G; ++g) thr = gmax[g] < thr ? gmax[g] : thr;
    cnt = 0;
    for (int64_t n = 0; n < N; ++n) {
      const key_t key = keys[n];
      keys[cnt] = key;
      cnt += (key >= thr);
    }
  }
  const key_t* best = keys;
  if (cnt <= kRankCountMax) {
    // Few survivors: each one's rank is the count of survivors above it (keys are distinct,
    // so the ranks are a permutation); no data-dependent branch. Ranks >= k go to gmax[k].
    for (int64_t i = 0; i < cnt; ++i) {
      const key_t key = keys[i];
      int64_t r = 0;
      for (int64_t j = 0; j < cnt; ++j) r += (keys[j] > key);
      gmax[r < k ? r : k] = key;
    }
    best = gmax;
  } else if (cnt <= 4 * G) {
    std::sort(keys, keys + cnt, std::greater<key_t>());
  } else {
    std::partial_sort(keys, keys + k, keys + cnt, std::greater<key_t>());
  }
  for (int64_t j = 0; j < k; ++j) {
    sel_i[j] = RK::index(best[j]);
    sel_v[j] = row[sel_i[j]];
  }
}

// In place: s[0..k) -> softmax(s), as torch.softmax (max subtracted; NaN in, NaN out; all -inf
// gives NaN).
template <typename acc_t>
inline void softmax_inplace(acc_t* __restrict__ s, int64_t k) {
  acc_t mx = -std::numeric_limits<acc_t>::infinity();
  for (int64_t j = 0; j < k; ++j) mx = s[j] > mx ? s[j] : mx;
  acc_t sum = 0;
  for (int64_t j = 0; j < k; ++j) {
    s[j] = std::exp(s[j] - mx);
    sum += s[j];
  }
  const acc_t inv = acc_t(1) / sum;
  for (int64_t j = 0; j < k; ++j) s[j] *= inv;
}

// y[i] += a * (acc_t) x[i]
template <typename acc_t, typename scalar_t>
inline void axpy_cvt(acc_t* __restrict__ y, const scalar_t* __restrict__ x, acc_t a,
                     int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * static_cast<acc_t>(x[i]);
}

template <typename scalar_t>
void fwd_kernel(const at::Tensor& scores, const at::Tensor& values, int64_t k, const Dims& s,
                at::Tensor& pooled, at::Tensor& indices, at::Tensor& weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* sp = scores.data_ptr<scalar_t>();
  const scalar_t* vp = values.data_ptr<scalar_t>();
  scalar_t* pp = pooled.data_ptr<scalar_t>();
  int64_t* ip = indices.data_ptr<int64_t>();
  scalar_t* wp = weights.data_ptr<scalar_t>();
  const int64_t M = s.M, N = s.N, C = s.C;
  const int64_t grain = std::max<int64_t>(1, 32768 / (N + k * C + 1));

  at::parallel_for(0, s.B * M, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(std::is_same<acc_t, scalar_t>::value ? 0 : N), sel_v(k), acc(C);
    std::vector<typename RankKey<acc_t>::type> keys(N), gmax((k + 7) / 8 * 8 + 1);
    for (int64_t bm = begin; bm < end; ++bm) {
      const int64_t b = bm / M;
      int64_t* sel_i = ip + bm * k;
      // 1. the score row in the accumulation type (read in place when it already is).
      const acc_t* r;
      if constexpr (std::is_same<acc_t, scalar_t>::value) {
        r = sp + bm * N;
      } else {
        load(row.data(), sp + bm * N, N);
        r = row.data();
      }
      // 2. selection of the k best, written straight into indices.
      select_topk(r, N, k, keys.data(), gmax.data(), sel_v.data(), sel_i);
      // 3. softmax over the selected scores only.
      softmax_inplace(sel_v.data(), k);
      store(wp + bm * k, sel_v.data(), k);
      // 4. pooled = sum_j w_j values[b, I_j], in j order.
      fill(acc.data(), acc_t(0), C);
      const scalar_t* vb = vp + b * N * C;
      for (int64_t j = 0; j < k; ++j) axpy_cvt(acc.data(), vb + sel_i[j] * C, sel_v[j], C);
      store(pp + bm * C, acc.data(), C);
    }
  });
}

template <typename scalar_t>
void bwd_kernel(const at::Tensor& gp, const at::Tensor* gw, const at::Tensor& scores,
                const at::Tensor& values, const at::Tensor& indices, const Dims& s, int64_t k,
                at::Tensor& gs, at::Tensor& gv) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool direct = std::is_same<acc_t, scalar_t>::value;
  const scalar_t* gpp = gp.data_ptr<scalar_t>();
  const scalar_t* gwp = gw ? gw->data_ptr<scalar_t>() : nullptr;
  const scalar_t* sp = scores.data_ptr<scalar_t>();
  const scalar_t* vp = values.data_ptr<scalar_t>();
  const int64_t* ip = indices.data_ptr<int64_t>();
  scalar_t* gsp = gs.data_ptr<scalar_t>();
  scalar_t* gvp = gv.data_ptr<scalar_t>();
  const int64_t M = s.M, N = s.N, C = s.C;

  at::parallel_for(0, s.B, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> w(k), dw(k), go(C), vt(C * k), gvb(direct ? 0 : N * C);
    bool bad_index = false;
    for (int64_t b = begin; b < end && !bad_index; ++b) {
      // 1. this task owns grad_values[b] (accumulated in place for fp32/fp64, else in an
      //    acc_t buffer) and grad_scores[b]; both start at zero.
      acc_t* g;
      if constexpr (direct) {
        g = gvp + b * N * C;
      } else {
        g = gvb.data();
      }
      fill(g, acc_t(0), N * C);
      fill(gsp + b * M * N, scalar_t(0), M * N);
      const scalar_t* vb = vp + b * N * C;
      for (int64_t m = 0; m < M; ++m) {
        const int64_t bm = b * M + m;
        const int64_t* I = ip + bm * k;
        const scalar_t* srow = sp + bm * N;
        for (int64_t j = 0; j < k; ++j) {
          if (I[j] < 0 || I[j] >= N) bad_index = true;
        }
        if (bad_index) break;
        // 2. recompute the weights from the scores gathered at indices.
        for (int64_t j = 0; j < k; ++j) w[j] = static_cast<acc_t>(srow[I[j]]);
        softmax_inplace(w.data(), k);
        // 3. dw_j = <grad_pooled[b, m], values[b, I_j]> (+ grad_weights[b, m, j]).
        //    The k rows values[b, I_j] are gathered transposed (vt [C, k]) so that the k dot
        //    products advance together over c, each still summed in increasing c.
        load(go.data(), gpp + bm * C, C);
        for (int64_t j = 0; j < k; ++j) {
          const scalar_t* vr = vb + I[j] * C;
          for (int64_t c = 0; c < C; ++c) vt[c * k + j] = static_cast<acc_t>(vr[c]);
        }
        fill(dw.data(), acc_t(0), k);
        for (int64_t c = 0; c < C; ++c) axpy(dw.data(), vt.data() + c * k, go[c], k);
        if (gwp) {
          const scalar_t* gwr = gwp + bm * k;
          for (int64_t j = 0; j < k; ++j) dw[j] += static_cast<acc_t>(gwr[j]);
        }
        // 4. grad_scores[b, m, I_j] += w_j (dw_j - sum_l w_l dw_l) (+= so that a repeated
        //    index sums, as the gather's backward does).
        acc_t delta = 0;
        for (int64_t j = 0; j < k; ++j) delta += w[j] * dw[j];
        scalar_t* gsr = gsp + bm * N;
        for (int64_t j = 0; j < k; ++j) {
          gsr[I[j]] = static_cast<scalar_t>(static_cast<acc_t>(gsr[I[j]]) +
                                            w[j] * (dw[j] - delta));
        }
        // 5. grad_values[b, I_j] += w_j grad_pooled[b, m], in m then j order.
        for (int64_t j = 0; j < k; ++j) axpy(g + I[j] * C, go.data(), w[j], C);
      }
      if constexpr (!direct) store(gvp + b * N * C, g, N * C);
    }
    TORCH_CHECK(!bad_index, "art_fast: topk_regions_bwd: indices must lie in [0, N = ", N,
                ")");
  });
}

// The CPU side of the entries' host functions (../topk_regions.h): the limit of the forward
// kernel, and the kernels for the checked inputs and the allocated outputs.
struct TopkRegionsCpu {
  static constexpr c10::DeviceType kDevice = c10::kCPU;
  const Dims s;

  TopkRegionsCpu(const Dims& d, const at::Tensor& /*scores*/, bool backward) : s(d) {
    // A limit of the forward kernel: the rank keys of float inputs hold the index in 32 bits
    // (RankKey).
    TORCH_CHECK(backward || s.N <= int64_t(0xFFFFFFFF),
                "art_fast: topk_regions needs N < 2^32, got ", s.N);
  }

  void fwd(const at::Tensor& scores, const at::Tensor& values, at::Tensor& pooled,
           at::Tensor& indices, at::Tensor& weights) const {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(),
                                    "topk_regions_fwd_cpu", [&] {
      fwd_kernel<scalar_t>(scores, values, s.k, s, pooled, indices, weights);
    });
  }

  void bwd(const at::Tensor& grad_pooled, const at::Tensor* gw, const at::Tensor& scores,
           const at::Tensor& values, const at::Tensor& indices, at::Tensor& grad_scores,
           at::Tensor& grad_values) const {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(),
                                    "topk_regions_bwd_cpu", [&] {
      bwd_kernel<scalar_t>(grad_pooled, gw, scores, values, indices, s, s.k, grad_scores,
                           grad_values);
    });
  }
};

}  // namespace

}  // namespace cpu
}  // namespace art_fast

// The schemas (their tensor contracts are in ../topk_regions.h) and the CPU kernels.
ART_FAST_DEFINE_OP(art_fast::topk_regions_impl<art_fast::cpu::TopkRegionsCpu>,
    "topk_regions_fwd(Tensor scores, Tensor values, int k) -> (Tensor, Tensor, Tensor)",
    "topk_regions_bwd(Tensor grad_pooled, Tensor? grad_weights, Tensor scores,"
    " Tensor values, Tensor indices) -> (Tensor, Tensor)")
