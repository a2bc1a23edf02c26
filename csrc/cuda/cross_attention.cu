// CUDA kernels for art_fast::cross_attention_{fwd,bwd}: out = softmax(q k^T * scale) v per
// (b, h), M (queries) small, N (patches) ~ 200, D (head dim) ~ 32.
//
// Profile
//   inputs   q [Bq,H,M,D] (Bq = 1: one query set shared by the B groups), k, v [B,H,N,D];
//            float32, bfloat16, float16 or float64, contiguous.
//   outputs  out [B,H,M,D], lse [B,H,M] (acc), weights [B,H,M,N] when asked for.
//   saved    q, k, v, lse (the autograd side saves them); the backward recomputes the scores
//            and their softmax statistics (max, sum) tile by tile instead of reading lse, so
//            P does not inherit the rounding of a large lse (exp(S - lse) is off by ulp(lse),
//            ~1e-3 at |S| ~ 1e4 in float32). The score matrix is never stored.
//   grid     one block per (b, h) pair (B*H blocks, 128 or 256 threads); the block walks the
//            N patches in tiles of TN (<= 64, the largest that fits the shared memory) and owns
//            every output of its pair, so no two blocks write one element (no atomics).
//   shared   forward: q*scale and the out accumulator [M, D], a k and a v tile [TN, D], the
//            tile's scores [M, TN], running max / sum [M]; backward: q*scale, dO, dq [M, D],
//            k and v tiles, P and dS tiles [M, TN], row statistics; all in acc_t.
//   precision acc_t = float (double for double). Online softmax: running max m and rescaled
//            sum l per row (a tile rescales the running sum by exp(m_old - m_new)); scores of a
//            row that are all -inf give NaN, as torch.softmax; NaN propagates. The backward's
//            row term delta = sum_n P dP is accumulated online in acc_t from the recomputed P
//            and dP (not from the rounded out).
//   determinism every sum runs in one fixed order (dot products over d in increasing order
//            with fma, tile sums over n in increasing order, warp reductions by a fixed xor
//            butterfly). The gradient of a shared query (Bq = 1) goes to per-b partials in
//            acc_t, then a second kernel sums them over b = 0, 1, ... in order.
//   index    32-bit inside a (b, h) pair (M*N, M*D, N*D < 2^31, checked by
//            ca_limits below), 64-bit pair offsets: no 64-bit integer division in
//            the per-element loops.
//
// Host side (after the launchers): the CUDA side of the entries' host functions of
// ../cross_attention.h (CrossAttentionCuda: the limits of these kernels, device guard and
// stream, the launches; the host functions check the inputs and allocate the outputs as the
// schemas say) and the registration for the CUDA dispatch key. Per-operator ATen headers (not
// ATen/ATen.h) keep the nvcc compile short: the host code is parsed once per CUDA architecture
// too.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "../cross_attention.h"
#include "common.cuh"
#include "host.h"

namespace art_fast {
namespace cuda {

namespace {

constexpr int kMaxTile = 64;

template <typename A>
__device__ __forceinline__ A dot_fma(const A* __restrict__ x, const A* __restrict__ y, int D) {
  A acc = A(0);
  for (int d = 0; d < D; ++d) acc = fma(x[d], y[d], acc);
  return acc;
}

// p = exp(s - m) with the conventions of a row whose running max m is still -inf: 0 for
// -inf scores, NaN for NaN scores (so a NaN is never lost to the rescaling by 0 below).
template <typename A>
__device__ __forceinline__ A exp_rel(A s, A m) {
  if (m == neg_inf<A>()) return s != s ? s : A(0);
  return exp_acc(s - m);
}

// Factor that rescales a running sum from max m_old to m_new (0 when nothing was summed yet).
template <typename A>
__device__ __forceinline__ A rescale(A m_old, A m_new) {
  return m_old == neg_inf<A>() ? A(0) : exp_acc(m_old - m_new);
}

template <typename A>
size_t fwd_smem_elems(const CrossAttnDims& s, int64_t tn) {
  return 2 * s.M * s.D + tn * (s.D + 1) + tn * s.D + s.M * tn + 3 * s.M;
}
template <typename A>
size_t bwd_smem_elems(const CrossAttnDims& s, int64_t tn) {
  return 3 * s.M * s.D + 2 * tn * (s.D + 1) + 2 * s.M * tn + 4 * s.M;
}

// ---- forward ---------------------------------------------------------------------------------
template <typename T>
__global__ void fwd_kernel(const T* __restrict__ q, const T* __restrict__ k,
                           const T* __restrict__ v, acc_t<T> scale, CrossAttnDims s, int TN,
                           T* __restrict__ out, acc_t<T>* __restrict__ lse,
                           T* __restrict__ weights) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* smem = reinterpret_cast<A*>(smem_raw);
  // 32-bit index math inside the (b, h) pair (M*N, M*D, N*D < 2^31: checked by
  // ca_limits below), 64-bit pair offsets.
  const int M = static_cast<int>(s.M), N = static_cast<int>(s.N), D = static_cast<int>(s.D);
  const int H = static_cast<int>(s.H);
  A* qs = smem;                   // [M, D]   q * scale
  A* os = qs + M * D;             // [M, D]   running (unnormalised) output
  A* kt = os + M * D;             // [TN, D+1] k tile (padded: conflict-free dot products)
  A* vt = kt + TN * (D + 1);      // [TN, D]  v tile
  A* st = vt + TN * D;            // [M, TN]  scores, then p, of the tile
  A* mrun = st + M * TN;          // [M]      running max
  A* lrun = mrun + M;             // [M]      running sum (then 1 / sum)
  A* fac = lrun + M;              // [M]      the tile's rescale factor
  const int tid = threadIdx.x, nt = blockDim.x;
  const int lane = tid & 31, warp = tid >> 5, nwarps = nt >> 5;
  const int bh = blockIdx.x;  // < 2^31 (ca_limits below)
  const int qbh = s.Bq == 1 ? bh % H : bh;
  const T* qp = q + int64_t(qbh) * M * D;
  const T* kp = k + int64_t(bh) * N * D;
  const T* vp = v + int64_t(bh) * N * D;

  // 1. q * scale into shared memory; zero the accumulators.
  for (int i = tid; i < M * D; i += nt) {
    qs[i] = to_acc(qp[i]) * scale;
    os[i] = A(0);
  }
  for (int m = tid; m < M; m += nt) {
    mrun[m] = neg_inf<A>();
    lrun[m] = A(0);
  }
  __syncthreads();

  for (int n0 = 0; n0 < N; n0 += TN) {
    const int tn = min(TN, N - n0);
    // 2. k and v tiles.
    for (int i = tid; i < tn * D; i += nt) {
      const int r = i / D, d = i - r * D;
      kt[r * (D + 1) + d] = to_acc(kp[(n0 + r) * D + d]);
      vt[r * D + d] = to_acc(vp[(n0 + r) * D + d]);
    }
    __syncthreads();
    // 3. scores of the tile: st[m, n] = <q_m * scale, k_n>, d in increasing order.
    for (int i = tid; i < M * tn; i += nt) {
      const int m = i / tn, n = i - m * tn;
      st[m * TN + n] = dot_fma(qs + m * D, kt + n * (D + 1), D);
    }
    __syncthreads();
    // 4. online softmax, one warp per row: new max, p = exp(s - m_new) in place, rescale of
    //    the running sum (and, in 5, of the output accumulator).
    for (int m = warp; m < M; m += nwarps) {
      A* row = st + m * TN;
      A tmax = neg_inf<A>();
      for (int n = lane; n < tn; n += 32) tmax = max_skip_nan(tmax, row[n]);
      tmax = warp_max(tmax);
      const A mold = mrun[m];
      const A mnew = max_skip_nan(mold, tmax);
      A tsum = A(0);
      for (int n = lane; n < tn; n += 32) {
        const A p = exp_rel(row[n], mnew);
        row[n] = p;
        tsum += p;
      }
      tsum = warp_sum(tsum);
      if (lane == 0) {
        const A f = rescale(mold, mnew);
        fac[m] = f;
        lrun[m] = lrun[m] * f + tsum;
        mrun[m] = mnew;
      }
    }
    __syncthreads();
    // 5. os = os * f + p v, each (m, d) owned by one thread, n in increasing order.
    for (int i = tid; i < M * D; i += nt) {
      const int m = i / D, d = i - m * D;
      A acc = os[i] * fac[m];
      const A* prow = st + m * TN;
      for (int n = 0; n < tn; ++n) acc = fma(prow[n], vt[n * D + d], acc);
      os[i] = acc;
    }
    __syncthreads();
  }

  // 6. lse = m + log(l); a row of -inf scores (m = -inf) is NaN throughout, as torch.softmax.
  for (int m = tid; m < M; m += nt) {
    const A mx = mrun[m];
    const A l = mx == neg_inf<A>() ? quiet_nan<A>() : lrun[m];
    lse[int64_t(bh) * M + m] = mx + log_acc(l);
    lrun[m] = A(1) / l;
  }
  __syncthreads();
  T* op = out + int64_t(bh) * M * D;
  for (int i = tid; i < M * D; i += nt) op[i] = from_acc<T>(os[i] * lrun[i / D]);
  if (weights == nullptr) return;

  // 7. the probabilities, only when asked for: the scores recomputed with the same products,
  //    p = exp(s - m) / l with the final row statistics.
  T* wp = weights + int64_t(bh) * M * N;
  for (int n0 = 0; n0 < N; n0 += TN) {
    const int tn = min(TN, N - n0);
    __syncthreads();
    for (int i = tid; i < tn * D; i += nt) {
      const int r = i / D, d = i - r * D;
      kt[r * (D + 1) + d] = to_acc(kp[(n0 + r) * D + d]);
    }
    __syncthreads();
    for (int i = tid; i < M * tn; i += nt) {
      const int m = i / tn, n = i - m * tn;
      const A sc = dot_fma(qs + m * D, kt + n * (D + 1), D);
      wp[m * N + n0 + n] = from_acc<T>(exp_acc(sc - mrun[m]) * lrun[m]);
    }
  }
}

// ---- backward --------------------------------------------------------------------------------
template <typename T>
__global__ void bwd_kernel(const T* __restrict__ go, const T* __restrict__ gw,
                           const T* __restrict__ q, const T* __restrict__ k,
                           const T* __restrict__ v, acc_t<T> scale, CrossAttnDims s, int TN,
                           T* __restrict__ dq, acc_t<T>* __restrict__ dq_part,
                           T* __restrict__ dk, T* __restrict__ dv) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* smem = reinterpret_cast<A*>(smem_raw);
  const int M = static_cast<int>(s.M), N = static_cast<int>(s.N), D = static_cast<int>(s.D);
  const int H = static_cast<int>(s.H);
  A* qs = smem;                  // [M, D]    q * scale
  A* dos = qs + M * D;           // [M, D]    dO
  A* dqs = dos + M * D;          // [M, D]    dq accumulator (before the final * scale)
  A* kt = dqs + M * D;           // [TN, D+1]
  A* vt = kt + TN * (D + 1);     // [TN, D+1]
  A* pt = vt + TN * (D + 1);     // [M, TN]   s, then P
  A* dst = pt + M * TN;          // [M, TN]   dP, then dS
  A* mrun = dst + M * TN;        // [M] running max
  A* lrun = mrun + M;            // [M] running sum, then 1 / sum
  A* trun = lrun + M;            // [M] running sum of p dP, then delta
  A* fac = trun + M;             // [M]
  const int tid = threadIdx.x, nt = blockDim.x;
  const int lane = tid & 31, warp = tid >> 5, nwarps = nt >> 5;
  const int bh = blockIdx.x;
  const int qbh = s.Bq == 1 ? bh % H : bh;
  const T* qp = q + int64_t(qbh) * M * D;
  const T* gop = go + int64_t(bh) * M * D;
  const T* kp = k + int64_t(bh) * N * D;
  const T* vp = v + int64_t(bh) * N * D;
  const T* gwp = gw ? gw + int64_t(bh) * M * N : nullptr;
  T* dkp = dk + int64_t(bh) * N * D;
  T* dvp = dv + int64_t(bh) * N * D;

  // 1. q * scale and dO into shared memory.
  for (int i = tid; i < M * D; i += nt) {
    qs[i] = to_acc(qp[i]) * scale;
    dos[i] = to_acc(gop[i]);
    dqs[i] = A(0);
  }
  for (int m = tid; m < M; m += nt) {
    mrun[m] = neg_inf<A>();
    lrun[m] = A(0);
    trun[m] = A(0);
  }
  __syncthreads();

  // Pass A: row statistics (max, sum) and delta = sum_n P dP, online over the tiles.
  for (int n0 = 0; n0 < N; n0 += TN) {
    const int tn = min(TN, N - n0);
    // 2. k and v tiles.
    for (int i = tid; i < tn * D; i += nt) {
      const int r = i / D, d = i - r * D;
      kt[r * (D + 1) + d] = to_acc(kp[(n0 + r) * D + d]);
      vt[r * (D + 1) + d] = to_acc(vp[(n0 + r) * D + d]);
    }
    __syncthreads();
    // 3. s = <q_m * scale, k_n>, dP = <dO_m, v_n> (+ grad_weights).
    for (int i = tid; i < M * tn; i += nt) {
      const int m = i / tn, n = i - m * tn;
      pt[m * TN + n] = dot_fma(qs + m * D, kt + n * (D + 1), D);
      A dp = dot_fma(dos + m * D, vt + n * (D + 1), D);
      if (gwp) dp += to_acc(gwp[m * N + n0 + n]);
      dst[m * TN + n] = dp;
    }
    __syncthreads();
    // 4. one warp per row: new max, rescaled sums of p and of p dP.
    for (int m = warp; m < M; m += nwarps) {
      const A* row = pt + m * TN;
      const A* drow = dst + m * TN;
      A tmax = neg_inf<A>();
      for (int n = lane; n < tn; n += 32) tmax = max_skip_nan(tmax, row[n]);
      tmax = warp_max(tmax);
      const A mold = mrun[m];
      const A mnew = max_skip_nan(mold, tmax);
      A tsum = A(0), tdot = A(0);
      for (int n = lane; n < tn; n += 32) {
        const A p = exp_rel(row[n], mnew);
        tsum += p;
        tdot = fma(p, drow[n], tdot);
      }
      tsum = warp_sum(tsum);
      tdot = warp_sum(tdot);
      if (lane == 0) {
        const A f = rescale(mold, mnew);
        lrun[m] = lrun[m] * f + tsum;
        trun[m] = trun[m] * f + tdot;
        mrun[m] = mnew;
      }
    }
    __syncthreads();
  }
  // 5. 1 / l and delta = (sum p dP) / l (NaN for a row of -inf scores).
  for (int m = tid; m < M; m += nt) {
    const A l = mrun[m] == neg_inf<A>() ? quiet_nan<A>() : lrun[m];
    lrun[m] = A(1) / l;
    trun[m] = trun[m] * lrun[m];
  }
  __syncthreads();

  // Pass B: P, dS = P (dP - delta), and the gradients.
  for (int n0 = 0; n0 < N; n0 += TN) {
    const int tn = min(TN, N - n0);
    for (int i = tid; i < tn * D; i += nt) {
      const int r = i / D, d = i - r * D;
      kt[r * (D + 1) + d] = to_acc(kp[(n0 + r) * D + d]);
      vt[r * (D + 1) + d] = to_acc(vp[(n0 + r) * D + d]);
    }
    __syncthreads();
    // 6. P and dS of the tile.
    for (int i = tid; i < M * tn; i += nt) {
      const int m = i / tn, n = i - m * tn;
      const A sc = dot_fma(qs + m * D, kt + n * (D + 1), D);
      const A p = exp_acc(sc - mrun[m]) * lrun[m];
      A dp = dot_fma(dos + m * D, vt + n * (D + 1), D);
      if (gwp) dp += to_acc(gwp[m * N + n0 + n]);
      pt[m * TN + n] = p;
      dst[m * TN + n] = p * (dp - trun[m]);
    }
    __syncthreads();
    // 7. dq += dS k (n in increasing order; the scale is applied at the end).
    for (int i = tid; i < M * D; i += nt) {
      const int m = i / D, d = i - m * D;
      A acc = dqs[i];
      const A* drow = dst + m * TN;
      for (int n = 0; n < tn; ++n) acc = fma(drow[n], kt[n * (D + 1) + d], acc);
      dqs[i] = acc;
    }
    // 8. dk = dS^T (q * scale), dv = P^T dO for the tile's patches (m in increasing order);
    //    each patch row is complete here and written once.
    for (int i = tid; i < tn * D; i += nt) {
      const int n = i / D, d = i - n * D;
      A ak = A(0), av = A(0);
      for (int m = 0; m < M; ++m) {
        ak = fma(dst[m * TN + n], qs[m * D + d], ak);
        av = fma(pt[m * TN + n], dos[m * D + d], av);
      }
      dkp[(n0 + n) * D + d] = from_acc<T>(ak);
      dvp[(n0 + n) * D + d] = from_acc<T>(av);
    }
    __syncthreads();
  }
  // 9. dq = scale * dS k: straight into dq, or into the per-b partial of a shared query.
  const int64_t obase = int64_t(bh) * M * D;
  for (int i = tid; i < M * D; i += nt) {
    const A g = dqs[i] * scale;
    if (dq_part) {
      dq_part[obase + i] = g;
    } else {
      dq[obase + i] = from_acc<T>(g);
    }
  }
}

// dq[i] = sum over b = 0, 1, ... of part[b, i] (fixed order), i < inner = H*M*D.
template <typename T>
__global__ void sum_over_b_kernel(const acc_t<T>* __restrict__ part, int64_t B, int64_t inner,
                                  T* __restrict__ dq) {
  using A = acc_t<T>;
#pragma unroll 1  // (no trip-count division: this loop runs once or a few times per thread)
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < inner;
       i += int64_t(gridDim.x) * blockDim.x) {
    A acc = A(0);
    for (int64_t b = 0; b < B; ++b) acc += part[b * inner + i];
    dq[i] = from_acc<T>(acc);
  }
}

// The largest tile (64, 32, ..., 1 patches) whose shared memory fits in 96 KiB (leaving room
// for a second block per SM), else the largest that fits the device's opt-in limit; 0 when
// even one patch per tile does not fit.
template <typename A>
int pick_tile(const CrossAttnDims& s, bool backward, size_t limit, size_t* bytes) {
  const size_t caps[2] = {std::min<size_t>(limit, 96 * 1024), limit};
  for (size_t cap : caps) {
    for (int tn = kMaxTile; tn >= 1; tn /= 2) {
      const size_t b =
          sizeof(A) * (backward ? bwd_smem_elems<A>(s, tn) : fwd_smem_elems<A>(s, tn));
      if (b <= cap) {
        *bytes = b;
        return tn;
      }
    }
  }
  return 0;
}

template <typename T>
cudaError_t fwd_launch(const void* q, const void* k, const void* v, double scale,
                       const CrossAttnDims& s, void* out, void* lse, void* weights,
                       cudaStream_t stream) {
  using A = acc_t<T>;
  size_t bytes = 0;
  const int tn = pick_tile<A>(s, false, max_smem_optin(), &bytes);
  if (tn == 0) return cudaErrorInvalidConfiguration;
  cudaError_t err = allow_smem(fwd_kernel<T>, bytes);
  if (err != cudaSuccess) return err;
  const int threads = s.M * tn >= 256 ? 256 : 128;
  fwd_kernel<T><<<static_cast<unsigned>(s.B * s.H), threads, bytes, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
      static_cast<A>(scale), s, tn, static_cast<T*>(out), static_cast<A*>(lse),
      static_cast<T*>(weights));
  return cudaGetLastError();
}

template <typename T>
cudaError_t bwd_launch(const void* go, const void* gw, const void* q, const void* k,
                       const void* v, double scale, const CrossAttnDims& s, void* dq,
                       void* dq_part, void* dk, void* dv, cudaStream_t stream) {
  using A = acc_t<T>;
  size_t bytes = 0;
  const int tn = pick_tile<A>(s, true, max_smem_optin(), &bytes);
  if (tn == 0) return cudaErrorInvalidConfiguration;
  cudaError_t err = allow_smem(bwd_kernel<T>, bytes);
  if (err != cudaSuccess) return err;
  const bool shared_q = s.Bq != s.B;
  const int threads = s.M * tn >= 256 ? 256 : 128;
  bwd_kernel<T><<<static_cast<unsigned>(s.B * s.H), threads, bytes, stream>>>(
      static_cast<const T*>(go), static_cast<const T*>(gw), static_cast<const T*>(q),
      static_cast<const T*>(k), static_cast<const T*>(v), static_cast<A>(scale), s, tn,
      static_cast<T*>(dq), shared_q ? static_cast<A*>(dq_part) : nullptr,
      static_cast<T*>(dk), static_cast<T*>(dv));
  err = cudaGetLastError();
  if (err != cudaSuccess || !shared_q) return err;
  const int64_t inner = s.H * s.M * s.D;
  const int64_t blocks = std::min<int64_t>(ceil_div(inner, 256), 65535);
  sum_over_b_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
      static_cast<const A*>(dq_part), s.B, inner, static_cast<T*>(dq));
  return cudaGetLastError();
}

}  // namespace

size_t cuda_max_smem() { return max_smem_optin(); }

size_t cross_attention_smem(const CrossAttnDims& s, DType dt, bool backward, int tile) {
  const size_t es = dt == DType::f64 ? sizeof(double) : sizeof(float);
  const size_t n = backward ? bwd_smem_elems<float>(s, tile) : fwd_smem_elems<float>(s, tile);
  return es * n;
}

cudaError_t cross_attention_fwd_launch(DType dt, const void* q, const void* k, const void* v,
                                       double scale, const CrossAttnDims& s, void* out,
                                       void* lse, void* weights, cudaStream_t stream) {
  return dispatch(dt, [&]<typename T>() {
    return fwd_launch<T>(q, k, v, scale, s, out, lse, weights, stream);
  });
}

cudaError_t cross_attention_bwd_launch(DType dt, const void* grad_out, const void* grad_weights,
                                       const void* q, const void* k, const void* v,
                                       double scale, const CrossAttnDims& s, void* dq,
                                       void* dq_part, void* dk, void* dv, cudaStream_t stream) {
  return dispatch(dt, [&]<typename T>() {
    return bwd_launch<T>(grad_out, grad_weights, q, k, v, scale, s, dq, dq_part, dk, dv, stream);
  });
}

// ---- host side: the CUDA side of the entries' host functions (../cross_attention.h) ----------
namespace {

// The checked dims, within the limits of these kernels: one block per (b, h) pair, 32-bit
// index math inside a pair.
CrossAttnDims ca_limits(const CrossAttentionDims& c) {
  const CrossAttnDims d{c.B, c.Bq, c.H, c.M, c.N, c.D};
  TORCH_CHECK(d.B * d.H <= kMaxGrid, "art_fast: cross_attention (CUDA) needs B*H < 2^31");
  TORCH_CHECK(d.M * d.N <= kMaxInt32 && d.M * d.D <= kMaxInt32 && d.N * d.D <= kMaxInt32,
              "art_fast: cross_attention (CUDA) indexes one (b, h) pair with 32-bit integers: "
              "M*N, M*D and N*D must be < 2^31, got M = ", d.M, ", N = ", d.N, ", D = ", d.D);
  return d;
}

void ca_check_smem(const CrossAttnDims& d, DType dt, bool backward) {
  const size_t need = cross_attention_smem(d, dt, backward, 1);
  const size_t have = cuda_max_smem();
  TORCH_CHECK(need <= have, "art_fast: cross_attention (CUDA) keeps the queries of one (b, h) ",
              "pair in shared memory: M = ", d.M, ", D = ", d.D, " need ", need,
              " bytes, the device allows ", have, "; use backend='torch' (or 'triton') for ",
              "such shapes");
}

// The limits of these kernels (ca_limits, then, on the device of q, ca_check_smem), and the
// launches on the current stream of that device.
struct CrossAttentionCuda {
  static constexpr c10::DeviceType kDevice = c10::kCUDA;
  const CrossAttnDims d;
  const LaunchContext ctx;

  CrossAttentionCuda(const CrossAttentionDims& c, const at::Tensor& q, bool backward)
      : d(ca_limits(c)), ctx(q, "q") {
    ca_check_smem(d, ctx.dt, backward);
  }

  static at::Tensor empty_output_like(const at::Tensor& t) { return at::empty_like(t); }

  void fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
           at::Tensor& out, at::Tensor& lse, at::Tensor* weights) const {
    check_launch(cross_attention_fwd_launch(ctx.dt, q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                            scale, d, out.data_ptr(), lse.data_ptr(),
                                            weights ? weights->data_ptr() : nullptr, ctx.stream),
                 "cross_attention_fwd");
  }

  // A shared query (Bq == 1 < B) first sums its per-b partials in an acc scratch.
  void bwd(const at::Tensor& grad_out, const at::Tensor* gw, const at::Tensor& q,
           const at::Tensor& k, const at::Tensor& v, const at::Tensor& /*lse*/, double scale,
           at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) const {
    at::Tensor part;
    if (d.Bq != d.B) {
      part = at::empty({d.B, d.H, d.M, d.D}, q.options().dtype(acc_dtype(q.scalar_type())));
    }
    check_launch(cross_attention_bwd_launch(
                     ctx.dt, grad_out.data_ptr(), gw ? gw->data_ptr() : nullptr, q.data_ptr(),
                     k.data_ptr(), v.data_ptr(), scale, d, dq.data_ptr(),
                     part.defined() ? part.data_ptr() : nullptr, dk.data_ptr(), dv.data_ptr(),
                     ctx.stream),
                 "cross_attention_bwd");
  }
};

}  // namespace

}  // namespace cuda
}  // namespace art_fast

ART_FAST_IMPL(CUDA, art_fast::cross_attention_impl<art_fast::cuda::CrossAttentionCuda>)
