// CUDA kernels for art_fast::info_nce_{fwd,bwd} (per-row losses) and art_fast::info_nce_fused
// (the reduced loss with its gradients).
//
// loss[g, i] = logsumexp_j S[g, i, j] - S[g, i, t_gi],  S = <a_gi, c_gj> ra_gi rc_gj / T, with
// r = 1 / max(||x||, 1e-12) when normalize (F.normalize), 1 otherwise; rows with target -100
// are ignored (loss 0, no gradient).
//
// Profile
//   inputs   anchors [G,M,D], candidates [G,N,D] (one dtype: float32, bfloat16, float16,
//            float64; contiguous; they may be the same tensor), targets [G,M] int64.
//   outputs  loss, lse [G,M] (acc); grad_anchors, grad_candidates (input dtype); the fused op's
//            reduced loss [] (acc).
//   saved    anchors, candidates, targets, lse (the autograd side). Never an [M, N] buffer in
//            the large regime; the tiny regime holds one group's [M, N] logits in shared memory.
//   grid     (0) norms: one warp per row of anchors and of candidates -> r and ||x|| (acc
//            scratch). The fused op counts the non-ignored rows on the device (one block), so
//            "mean" needs no host synchronisation.
//            tiny  (M, N <= 64): one warp per group, several groups per block (up to 8, as the
//                  shared memory allows). The warp forms the group's logits (lanes split D, a
//                  fixed butterfly sums them), the row log-sum-exp (lanes over j), and, when a
//                  gradient is wanted, dL = g_i / T (P - onehot) in place, then dA_hat = dL C_hat
//                  and dC_hat = dL^T A_hat (lanes over d, sums over j / i in increasing order)
//                  and the normalisation's backward. Forward, backward and fused are one kernel.
//            large (otherwise): tiles of 32 rows x 64 columns, 256 threads, D walked in chunks of
//                  32 through shared memory (float FMA; no tensor cores yet).
//                  forward: one block per (group, 32 anchor rows), online log-sum-exp over the
//                  candidate tiles (running max and rescaled sum), target logit picked up on
//                  the way.
//                  backward, split so that every output row has one owner (no atomics):
//                  row kernel: one block per (group, 32 anchor rows) walks the candidate tiles,
//                  recomputes S, dL = g_i / T (exp(S - lse_i) - onehot) and accumulates
//                  dA_hat += dL C_hat_tile into an acc scratch row it owns;
//                  column kernel: one block per (group, 32 candidate rows) walks the anchor
//                  tiles, recomputes S^T (bitwise the same logits: same products, same order),
//                  and accumulates dC_hat += dL^T A_hat_tile;
//                  then one warp per row applies the normalisation's backward.
//                  The fused op runs the forward (row losses, lse), then the backward with the
//                  upstream gradient w = 1 / max(count, 1) ("mean") or 1 ("sum") per row.
//            (last) fused: one block sums the row losses in float64 (fixed order) and divides by
//                  the count ("mean"; 0 when every row is ignored).
//   precision acc_t = float (double for double); the log-sum-exp is max-subtracted (online in
//            the large regime), so logits of any magnitude are safe. The tiny regime recomputes
//            lse from the logits in the backward; the large regime uses the saved lse.
//   determinism every sum has one fixed order (d chunks in order, tiles in order, fixed
//            butterflies / trees); no atomics anywhere: bitwise reproducible run to run.
//   bad input a target outside [0, N) that is not -100 is never dereferenced: its row's loss
//            is NaN and its gradient contributions NaN (the Python wrapper rejects such targets
//            before the call).
#include <algorithm>

#include "common.cuh"
#include "launch.h"

namespace art_fast {
namespace cuda {

namespace {

constexpr int64_t kIgnore = -100;
constexpr double kNormEps = 1e-12;
constexpr int64_t kTinyMax = 64;
constexpr int kTinyWarps = 8;
constexpr int kBR = 32, kBC = 64, kKD = 32, kTileThreads = 256;

// ---- scratch layout --------------------------------------------------------------------------
struct Scratch {
  long long* count;  // [1]
  void* ra;          // [G*M] acc  1 / max(||a||, eps) (1 when !normalize)
  void* na;          // [G*M] acc  ||a||
  void* rc;          // [G*N]
  void* nc;          // [G*N]
  void* rowloss;     // [G*M] acc  (fused)
  void* lse;         // [G*M] acc  (fused, large regime)
  void* gacc_a;      // [G*M*D] acc (large regime, gradients)
  void* gacc_c;      // [G*N*D] acc
  size_t bytes;
};

bool use_tiny(const NceDims& s, size_t es) {
  return s.M <= kTinyMax && s.N <= kTinyMax &&
         static_cast<size_t>(s.M * s.N + s.D) * es <= 48 * 1024;
}

Scratch layout(const NceDims& s, size_t es, bool grad, void* base) {
  Scratch sc{};
  char* p = static_cast<char*>(base);
  size_t off = 0;
  auto take = [&](size_t n) {
    void* r = p ? p + off : nullptr;
    off += (n + 15) / 16 * 16;
    return r;
  };
  sc.count = static_cast<long long*>(take(sizeof(long long)));
  sc.ra = take(s.G * s.M * es);
  sc.na = take(s.G * s.M * es);
  sc.rc = take(s.G * s.N * es);
  sc.nc = take(s.G * s.N * es);
  sc.rowloss = take(s.G * s.M * es);
  sc.lse = take(s.G * s.M * es);
  if (grad && !use_tiny(s, es)) {
    sc.gacc_a = take(s.G * s.M * s.D * es);
    sc.gacc_c = take(s.G * s.N * s.D * es);
  }
  sc.bytes = off;
  return sc;
}

// Upstream gradient of row gi over T: 0 for an ignored row, NaN for an invalid target, else
// grad_loss[gi] / T, or w / T with w = 1 / max(count, 1) (mean) or 1 (sum).
template <typename A>
__device__ __forceinline__ A row_grad(const int64_t* targets, int64_t gi, int64_t N,
                                      const A* gl, const long long* count, bool mean, A invT) {
  const int64_t t = targets[gi];
  if (t == kIgnore) return A(0);
  if (t < 0 || t >= N) return quiet_nan<A>();
  A w;
  if (gl) {
    w = gl[gi];
  } else {
    const long long c = *count;
    w = mean ? A(1) / static_cast<A>(c > 0 ? c : 1) : A(1);
  }
  return w * invT;
}

// ---- (0) norms and the count -----------------------------------------------------------------
template <typename T>
__global__ void norms_kernel(const T* __restrict__ x, int64_t rows, int64_t D, bool normalize,
                             acc_t<T>* __restrict__ r, acc_t<T>* __restrict__ nrm) {
  using A = acc_t<T>;
  const int lane = threadIdx.x & 31;
  const int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5;
  if (row >= rows) return;
  const T* xr = x + row * D;
  A ss = A(0);
  for (int64_t d = lane; d < D; d += 32) {
    const A v = to_acc(xr[d]);
    ss = fma(v, v, ss);
  }
  ss = warp_sum(ss);
  if (lane == 0) {
    const A n = sqrt_acc(ss);
    nrm[row] = n;
    r[row] = normalize ? A(1) / (n > A(kNormEps) ? n : A(kNormEps)) : A(1);
  }
}

__global__ void count_kernel(const int64_t* __restrict__ targets, int64_t n,
                             long long* __restrict__ count) {
  __shared__ double red[33];
  double c = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) c += targets[i] != kIgnore ? 1.0 : 0.0;
  c = block_sum(c, red);
  if (threadIdx.x == 0) *count = static_cast<long long>(c);
}

// The reduced loss: sum of the row losses in float64 (each thread sums a strided subset in
// order, then a fixed tree), divided by the count for "mean" (0 when every row is ignored).
template <typename A>
__global__ void total_kernel(const A* __restrict__ rowloss, int64_t n,
                             const long long* __restrict__ count, bool mean,
                             A* __restrict__ total) {
  __shared__ double red[33];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += static_cast<double>(rowloss[i]);
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) {
    const long long c = *count;
    *total = static_cast<A>(mean ? (c > 0 ? acc / static_cast<double>(c) : 0.0) : acc);
  }
}

// Gradient through x_hat = x r: out = (g - x_hat <x_hat, g>) / ||x|| when ||x|| >= eps,
// g / eps otherwise (autograd of F.normalize), g when !normalize. One warp per row; g is the
// acc gradient row (global scratch or the warp's shared buffer).
template <typename T>
__device__ __forceinline__ void normalize_bwd_row(const acc_t<T>* g, const T* x, acc_t<T> r,
                                                  acc_t<T> n, int64_t D, bool normalize,
                                                  T* out) {
  using A = acc_t<T>;
  const int lane = threadIdx.x & 31;
  if (!normalize) {
    for (int64_t d = lane; d < D; d += 32) out[d] = from_acc<T>(g[d]);
    return;
  }
  const bool big = n >= A(kNormEps);
  A pr = A(0);
  for (int64_t d = lane; d < D; d += 32) pr = fma(to_acc(x[d]) * r, g[d], pr);
  pr = big ? warp_sum(pr) : A(0);
  const A inv = A(1) / (big ? n : A(kNormEps));
  for (int64_t d = lane; d < D; d += 32) out[d] = from_acc<T>((g[d] - to_acc(x[d]) * r * pr) * inv);
}

template <typename T>
__global__ void normalize_bwd_kernel(const acc_t<T>* __restrict__ gacc, const T* __restrict__ x,
                                     const acc_t<T>* __restrict__ r,
                                     const acc_t<T>* __restrict__ nrm, int64_t rows, int64_t D,
                                     bool normalize, T* __restrict__ out) {
  const int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5;
  if (row >= rows) return;
  normalize_bwd_row<T>(gacc + row * D, x + row * D, r[row], nrm[row], D, normalize,
                       out + row * D);
}

// ---- tiny regime: one warp per group ----------------------------------------------------------
template <typename T>
struct TinyArgs {
  const T* a;
  const T* c;
  const int64_t* targets;
  const acc_t<T>* ra;
  const acc_t<T>* na;
  const acc_t<T>* rc;
  const acc_t<T>* nc;
  const acc_t<T>* gl;
  const long long* count;
  acc_t<T>* loss;
  acc_t<T>* lse;
  acc_t<T>* rowloss;
  T* ga;
  T* gc;
  NceDims s;
  acc_t<T> invT;
  bool normalize, mean;
};

template <typename T>
__global__ void tiny_kernel(TinyArgs<T> p) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t M = p.s.M, N = p.s.N, D = p.s.D;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t g = blockIdx.x * int64_t(blockDim.x >> 5) + warp;
  if (g >= p.s.G) return;  // whole warps only: no block-wide barrier in this kernel
  A* S = reinterpret_cast<A*>(smem_raw) + warp * (M * N + D);  // [M, N]
  A* gbuf = S + M * N;                                          // [D]
  const T* ag = p.a + g * M * D;
  const T* cg = p.c + g * N * D;
  const A* ra = p.ra + g * M;
  const A* rc = p.rc + g * N;
  // 1. logits S[i, j] = <a_i, c_j> (lanes split d, fixed butterfly) * (ra_i rc_j) / T.
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      A acc = A(0);
      for (int64_t d = lane; d < D; d += 32)
        acc = fma(to_acc(ag[i * D + d]), to_acc(cg[j * D + d]), acc);
      acc = warp_sum(acc);
      if (lane == 0) S[i * N + j] = acc * (ra[i] * rc[j]) * p.invT;
    }
  }
  __syncwarp();
  const bool grad = p.ga != nullptr;
  // 2. per row: max-subtracted log-sum-exp, loss; with a gradient, dL in place.
  for (int64_t i = 0; i < M; ++i) {
    A* row = S + i * N;
    A mx = neg_inf<A>();
    for (int64_t j = lane; j < N; j += 32) mx = max_skip_nan(mx, row[j]);
    mx = warp_max(mx);
    A z = A(0);
    for (int64_t j = lane; j < N; j += 32) z += exp_acc(row[j] - mx);
    z = warp_sum(z);
    const A l = mx + log_acc(z);
    const int64_t gi = g * M + i;
    const int64_t t = p.targets[gi];
    const bool valid = t >= 0 && t < N;
    if (lane == 0) {
      const A loss = t == kIgnore ? A(0) : (valid ? l - row[t] : quiet_nan<A>());
      if (p.lse) p.lse[gi] = l;
      if (p.loss) p.loss[gi] = loss;
      if (p.rowloss) p.rowloss[gi] = loss;
    }
    __syncwarp();
    if (!grad) continue;
    const A gsc = row_grad(p.targets, gi, N, p.gl, p.count, p.mean, p.invT);
    // (an ignored row is exactly 0, whatever its logits, as on the CPU)
    for (int64_t j = lane; j < N; j += 32) row[j] = gsc == A(0) ? A(0) : gsc * exp_acc(row[j] - l);
    __syncwarp();
    if (lane == 0 && valid) row[t] -= gsc;
    __syncwarp();
  }
  if (!grad) return;
  // 3. d A_hat[i] = sum_j dL[i, j] c_hat_j (j in increasing order), then the normalisation's
  //    backward; each lane owns the d = lane (mod 32) entries of gbuf.
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t d = lane; d < D; d += 32) {
      A acc = A(0);
      for (int64_t j = 0; j < N; ++j) acc = fma(S[i * N + j] * rc[j], to_acc(cg[j * D + d]), acc);
      gbuf[d] = acc;
    }
    normalize_bwd_row<T>(gbuf, ag + i * D, ra[i], p.na[g * M + i], D, p.normalize,
                         p.ga + (g * M + i) * D);
  }
  // 4. d C_hat[j] = sum_i dL[i, j] a_hat_i (i in increasing order), then the normalisation.
  for (int64_t j = 0; j < N; ++j) {
    for (int64_t d = lane; d < D; d += 32) {
      A acc = A(0);
      for (int64_t i = 0; i < M; ++i) acc = fma(S[i * N + j] * ra[i], to_acc(ag[i * D + d]), acc);
      gbuf[d] = acc;
    }
    normalize_bwd_row<T>(gbuf, cg + j * D, rc[j], p.nc[g * N + j], D, p.normalize,
                         p.gc + (g * N + j) * D);
  }
}

// ---- large regime: 32 x 64 tiles -------------------------------------------------------------
enum Mode { kFwd = 0, kRowGrad = 1, kColGrad = 2 };

template <typename T>
struct TileArgs {
  const T* X;  // the block's rows: anchors (kFwd, kRowGrad) or candidates (kColGrad)
  const T* Y;  // the tiles walked: candidates, or anchors
  const acc_t<T>* rx;
  const acc_t<T>* ry;
  int64_t R, Cn, D, G;  // rows and columns per group
  const int64_t* targets;
  const acc_t<T>* lse_in;  // anchors' lse (gradients)
  const acc_t<T>* gl;
  const long long* count;
  acc_t<T>* lse_out;
  acc_t<T>* loss_out;
  acc_t<T>* rowloss;
  acc_t<T>* gacc;  // [G*R, D] gradient rows of X (gradients)
  acc_t<T> invT;
  bool mean;
};

template <typename T, int Mode>
__global__ void __launch_bounds__(kTileThreads) tile_kernel(TileArgs<T> p) {
  using A = acc_t<T>;
  __shared__ A Xs[kBR][kKD + 1];
  __shared__ A Ys[kBC][kKD + 1];
  __shared__ A St[kBR][kBC + 1];
  __shared__ A rinfo[3][kBR];  // kFwd: running max, sum, target logit; kRowGrad: lse, g, -
  __shared__ A cinfo[2][kBC];  // kColGrad: the anchors' lse, g
  __shared__ int64_t rt[kBR];  // targets of the rows (kFwd, kRowGrad)
  __shared__ int64_t ct[kBC];  // targets of the columns (kColGrad)
  const int64_t R = p.R, Cn = p.Cn, D = p.D;
  const int64_t nrb = (R + kBR - 1) / kBR;
  const int64_t g = blockIdx.x / nrb, row0 = (blockIdx.x % nrb) * kBR;
  const int64_t nr = min(static_cast<int64_t>(kBR), R - row0);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int r = tid / 8, cq = tid % 8;  // this thread's tile row and column phase
  const T* Xg = p.X + (g * R + row0) * D;
  const T* Yg = p.Y + g * Cn * D;
  const A* rxg = p.rx + g * R + row0;
  const A* ryg = p.ry + g * Cn;
  const int64_t N_anchor_cols = Mode == kColGrad ? R : Cn;  // N, for the target check

  // 1. per-row information.
  if (tid < kBR) {
    if (Mode == kFwd) {
      rinfo[0][tid] = neg_inf<A>();
      rinfo[1][tid] = A(0);
      rinfo[2][tid] = A(0);
    }
    if (Mode != kColGrad) {
      const int64_t gi = g * R + row0 + tid;
      rt[tid] = tid < nr ? p.targets[gi] : kIgnore;
      if (Mode == kRowGrad) {
        rinfo[0][tid] = tid < nr ? p.lse_in[gi] : A(0);
        rinfo[1][tid] =
            tid < nr ? row_grad(p.targets, gi, N_anchor_cols, p.gl, p.count, p.mean, p.invT)
                     : A(0);
      }
    }
  }

  for (int64_t c0 = 0; c0 < Cn; c0 += kBC) {
    const int64_t nc = min(static_cast<int64_t>(kBC), Cn - c0);
    if (Mode == kColGrad && tid < kBC) {
      const int64_t gi = g * Cn + c0 + tid;  // the column's anchor row
      const bool in = tid < nc;
      cinfo[0][tid] = in ? p.lse_in[gi] : A(0);
      cinfo[1][tid] =
          in ? row_grad(p.targets, gi, N_anchor_cols, p.gl, p.count, p.mean, p.invT) : A(0);
      ct[tid] = in ? p.targets[gi] : kIgnore;
    }
    // 2. the tile's dot products, D in chunks of kKD (d in increasing order).
    A acc[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) acc[u] = A(0);
    for (int64_t d0 = 0; d0 < D; d0 += kKD) {
      __syncthreads();
      for (int i = tid; i < kBR * kKD; i += kTileThreads) {
        const int rr = i / kKD, dd = i % kKD;
        Xs[rr][dd] = (rr < nr && d0 + dd < D) ? to_acc(Xg[rr * D + d0 + dd]) : A(0);
      }
      for (int i = tid; i < kBC * kKD; i += kTileThreads) {
        const int cc = i / kKD, dd = i % kKD;
        Ys[cc][dd] = (cc < nc && d0 + dd < D) ? to_acc(Yg[(c0 + cc) * D + d0 + dd]) : A(0);
      }
      __syncthreads();
#pragma unroll 4
      for (int dd = 0; dd < kKD; ++dd) {
        const A x = Xs[r][dd];
#pragma unroll
        for (int u = 0; u < 8; ++u) acc[u] = fma(x, Ys[cq + 8 * u][dd], acc[u]);
      }
    }
    // 3. logits (the factor (ra rc) / T formed in the same order in every mode, so the
    //    column kernel sees bitwise the row kernels' logits), then the mode's transform.
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int cc = cq + 8 * u;
      const bool in = r < nr && cc < nc;
      A v = A(0);
      if (in) {
        const A rxr = rxg[r], ryc = ryg[c0 + cc];
        const A f = Mode == kColGrad ? (ryc * rxr) : (rxr * ryc);
        v = acc[u] * f * p.invT;
        if (Mode == kRowGrad) {
          const A gs = rinfo[1][r];
          v = gs == A(0) ? A(0)
                         : gs * exp_acc(v - rinfo[0][r]) - (rt[r] == c0 + cc ? gs : A(0));
        } else if (Mode == kColGrad) {
          const A gs = cinfo[1][cc];
          v = gs == A(0) ? A(0)
                         : gs * exp_acc(v - cinfo[0][cc]) - (ct[cc] == row0 + r ? gs : A(0));
        }
      } else if (Mode == kFwd) {
        v = neg_inf<A>();
      }
      St[r][cc] = v;
    }
    __syncthreads();
    if constexpr (Mode == kFwd) {
      // 4. online log-sum-exp, one warp per 4 rows, lanes over the 64 columns.
      for (int rr = warp * 4; rr < warp * 4 + 4; ++rr) {
        if (rr >= nr) break;
        const A v0 = St[rr][lane], v1 = St[rr][lane + 32];
        const A tmax = warp_max(max_skip_nan(v0, v1));
        const A mold = rinfo[0][rr];
        const A mnew = max_skip_nan(mold, tmax);
        A e0, e1;
        if (mnew == neg_inf<A>()) {
          e0 = v0 != v0 ? v0 : A(0);
          e1 = v1 != v1 ? v1 : A(0);
        } else {
          e0 = exp_acc(v0 - mnew);
          e1 = exp_acc(v1 - mnew);
        }
        const A tsum = warp_sum(e0 + e1);
        if (lane == 0) {
          const A f = mold == neg_inf<A>() ? A(0) : exp_acc(mold - mnew);
          rinfo[1][rr] = rinfo[1][rr] * f + tsum;
          rinfo[0][rr] = mnew;
          const int64_t t = rt[rr];
          if (t >= c0 && t < c0 + nc) rinfo[2][rr] = St[rr][t - c0];
        }
      }
      // (the next tile's first __syncthreads orders these updates)
    } else {
    // 5. gradient rows: gacc[row] += sum_c St[row, c] y_hat_c, D in chunks of kKD; this
    //    thread owns (r, dd = cq + 8 v) for v < 4; columns c in increasing order.
    for (int64_t d0 = 0; d0 < D; d0 += kKD) {
      __syncthreads();
      for (int i = tid; i < kBC * kKD; i += kTileThreads) {
        const int cc = i / kKD, dd = i % kKD;
        Ys[cc][dd] = (cc < nc && d0 + dd < D) ? to_acc(Yg[(c0 + cc) * D + d0 + dd]) * ryg[c0 + cc]
                                              : A(0);
      }
      __syncthreads();
      if (r < nr) {
#pragma unroll
        for (int v = 0; v < 4; ++v) {
          const int dd = cq + 8 * v;
          if (d0 + dd >= D) continue;
          A part = A(0);
          for (int cc = 0; cc < kBC; ++cc) part = fma(St[r][cc], Ys[cc][dd], part);
          A* gp = p.gacc + (g * R + row0 + r) * D + d0 + dd;
          *gp = (c0 == 0 ? A(0) : *gp) + part;
        }
      }
    }
    }
  }
  if (Mode == kFwd) {
    __syncthreads();
    // 6. lse = m + log(l); loss = lse - target logit (0 ignored, NaN for a bad target).
    if (tid < nr) {
      const int64_t gi = g * R + row0 + tid;
      const A mx = rinfo[0][tid];
      const A l = mx == neg_inf<A>() ? quiet_nan<A>() : rinfo[1][tid];
      const A lse = mx + log_acc(l);
      const int64_t t = rt[tid];
      const A loss = t == kIgnore ? A(0) : ((t >= 0 && t < Cn) ? lse - rinfo[2][tid] : quiet_nan<A>());
      if (p.lse_out) p.lse_out[gi] = lse;
      if (p.loss_out) p.loss_out[gi] = loss;
      if (p.rowloss) p.rowloss[gi] = loss;
    }
  }
}

template <typename T>
cudaError_t run(const void* anchors, const void* candidates, const int64_t* targets,
                double temperature, bool normalize, bool mean, const NceDims& s, void* loss,
                void* lse, const void* grad_loss, const void* saved_lse, void* ga, void* gc,
                void* total, void* scratch, cudaStream_t stream) {
  using A = acc_t<T>;
  const bool grad = ga != nullptr;
  const Scratch sc = layout(s, sizeof(A), grad, scratch);
  const T* a = static_cast<const T*>(anchors);
  const T* c = static_cast<const T*>(candidates);
  const A invT = static_cast<A>(1.0 / temperature);
  const bool fused = total != nullptr;
  cudaError_t err;
  // 0. norms, and the count of non-ignored rows (fused).
  norms_kernel<T><<<static_cast<unsigned>(ceil_div(s.G * s.M * 32, 256)), 256, 0, stream>>>(
      a, s.G * s.M, s.D, normalize, static_cast<A*>(sc.ra), static_cast<A*>(sc.na));
  norms_kernel<T><<<static_cast<unsigned>(ceil_div(s.G * s.N * 32, 256)), 256, 0, stream>>>(
      c, s.G * s.N, s.D, normalize, static_cast<A*>(sc.rc), static_cast<A*>(sc.nc));
  if (fused) count_kernel<<<1, 1024, 0, stream>>>(targets, s.G * s.M, sc.count);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  A* rowloss = fused ? static_cast<A*>(sc.rowloss) : nullptr;
  const A* gl = static_cast<const A*>(grad_loss);

  if (use_tiny(s, sizeof(A))) {
    const size_t per_warp = static_cast<size_t>(s.M * s.N + s.D) * sizeof(A);
    const int wpb = static_cast<int>(std::max<size_t>(
        1, std::min<size_t>(kTinyWarps, (48 * 1024) / per_warp)));
    TinyArgs<T> p{a, c, targets, static_cast<const A*>(sc.ra), static_cast<const A*>(sc.na),
                  static_cast<const A*>(sc.rc), static_cast<const A*>(sc.nc), gl, sc.count,
                  static_cast<A*>(loss), static_cast<A*>(lse), rowloss,
                  static_cast<T*>(ga), static_cast<T*>(gc), s, invT, normalize, mean};
    tiny_kernel<T><<<static_cast<unsigned>(ceil_div(s.G, wpb)), 32 * wpb, wpb * per_warp,
                     stream>>>(p);
  } else {
    TileArgs<T> base{};
    base.D = s.D;
    base.G = s.G;
    base.targets = targets;
    base.count = sc.count;
    base.invT = invT;
    base.mean = mean;
    const A* lse_for_grad = static_cast<const A*>(saved_lse);
    const bool need_fwd = loss != nullptr || lse != nullptr || fused;
    if (need_fwd) {
      TileArgs<T> p = base;
      p.X = a;
      p.Y = c;
      p.rx = static_cast<const A*>(sc.ra);
      p.ry = static_cast<const A*>(sc.rc);
      p.R = s.M;
      p.Cn = s.N;
      p.lse_out = lse ? static_cast<A*>(lse) : static_cast<A*>(sc.lse);
      p.loss_out = static_cast<A*>(loss);
      p.rowloss = rowloss;
      tile_kernel<T, kFwd><<<static_cast<unsigned>(s.G * ceil_div(s.M, kBR)), kTileThreads, 0,
                             stream>>>(p);
      if (!lse_for_grad) lse_for_grad = p.lse_out;
    }
    if (grad) {
      TileArgs<T> p = base;
      p.lse_in = lse_for_grad;
      p.gl = gl;
      // rows: anchors -> d A_hat
      p.X = a;
      p.Y = c;
      p.rx = static_cast<const A*>(sc.ra);
      p.ry = static_cast<const A*>(sc.rc);
      p.R = s.M;
      p.Cn = s.N;
      p.gacc = static_cast<A*>(sc.gacc_a);
      tile_kernel<T, kRowGrad><<<static_cast<unsigned>(s.G * ceil_div(s.M, kBR)), kTileThreads,
                                 0, stream>>>(p);
      // rows: candidates -> d C_hat (columns: anchors)
      p.X = c;
      p.Y = a;
      p.rx = static_cast<const A*>(sc.rc);
      p.ry = static_cast<const A*>(sc.ra);
      p.R = s.N;
      p.Cn = s.M;
      p.gacc = static_cast<A*>(sc.gacc_c);
      tile_kernel<T, kColGrad><<<static_cast<unsigned>(s.G * ceil_div(s.N, kBR)), kTileThreads,
                                 0, stream>>>(p);
      normalize_bwd_kernel<T><<<static_cast<unsigned>(ceil_div(s.G * s.M * 32, 256)), 256, 0,
                                stream>>>(static_cast<const A*>(sc.gacc_a), a,
                                          static_cast<const A*>(sc.ra),
                                          static_cast<const A*>(sc.na), s.G * s.M, s.D,
                                          normalize, static_cast<T*>(ga));
      normalize_bwd_kernel<T><<<static_cast<unsigned>(ceil_div(s.G * s.N * 32, 256)), 256, 0,
                                stream>>>(static_cast<const A*>(sc.gacc_c), c,
                                          static_cast<const A*>(sc.rc),
                                          static_cast<const A*>(sc.nc), s.G * s.N, s.D,
                                          normalize, static_cast<T*>(gc));
    }
  }
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if (fused) {
    total_kernel<A><<<1, 1024, 0, stream>>>(rowloss, s.G * s.M, sc.count, mean,
                                            static_cast<A*>(total));
  }
  return cudaGetLastError();
}

}  // namespace

size_t info_nce_scratch_bytes(const NceDims& s, DType dt, bool grad) {
  const size_t es = dt == DType::f64 ? sizeof(double) : sizeof(float);
  return layout(s, es, grad, nullptr).bytes;
}

cudaError_t info_nce_launch(DType dt, const void* anchors, const void* candidates,
                            const int64_t* targets, double temperature, bool normalize,
                            bool mean, const NceDims& s, void* loss, void* lse,
                            const void* grad_loss, const void* saved_lse, void* ga, void* gc,
                            void* total, void* scratch, cudaStream_t stream) {
#define ART_NCE_RUN(T)                                                                        \
  return run<T>(anchors, candidates, targets, temperature, normalize, mean, s, loss, lse,     \
                grad_loss, saved_lse, ga, gc, total, scratch, stream)
  switch (dt) {
    case DType::f32: ART_NCE_RUN(float);
    case DType::f64: ART_NCE_RUN(double);
    case DType::f16: ART_NCE_RUN(__half);
    case DType::bf16: ART_NCE_RUN(__nv_bfloat16);
  }
#undef ART_NCE_RUN
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace art_fast
