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
//            large (otherwise): tiles of 32 rows x 64 columns, 256 threads (8 warps), one
//                  block per (group, 32 rows); two implementations of the same three kernels:
//                  (a) exact FMA path (float64; float32 unless TF32 is allowed; any dtype on a
//                      device below sm_80): D in chunks of 32 through shared memory in acc_t,
//                      each thread 8 logits of the tile by scalar fma, d in increasing order.
//                  (b) tensor-core path (sm_80+; bfloat16 and float16 always, float32 as TF32
//                      only when torch allows TF32 for CUDA matmuls, read by nce_allow_tf32):
//                      WMMA 16x16x16 (16-bit) or 16x16x8 (TF32) fragments with float
//                      accumulators, one 16x16 fragment of the 32x64 tile per warp. D in chunks
//                      of 64: the raw inputs go to shared memory (16-byte loads when D is a
//                      multiple of 8 (16-bit) / 4 (float), zero-padded tails in rows and d),
//                      products go back through shared memory (store_matrix_sync), never read
//                      from fragment registers. Gradient products: operand A is the scaled dL
//                      tile rounded once to the input dtype (dL / g_i * rc_j (rows), dL * ra_i
//                      (columns), times 2^-e with e the exponent of the tile's largest column
//                      factor, so |A| <= 1: no fp16 overflow, no flush of a small tile), operand
//                      B the raw input rows (exact); the float result is multiplied back by
//                      2^e (and g_i in the row kernel).
//                  forward: online log-sum-exp over the candidate tiles (running max and
//                  rescaled sum), target logit picked up on the way.
//                  backward, split so that every output row has one owner (no atomics):
//                  row kernel: one block per (group, 32 anchor rows) walks the candidate tiles,
//                  recomputes S, dL = g_i / T (exp(S - lse_i) - onehot) and accumulates
//                  dA_hat += dL C_hat_tile into an acc scratch row it owns;
//                  column kernel: one block per (group, 32 candidate rows) walks the anchor
//                  tiles, recomputes S^T (bitwise the same logits: the same products in the same
//                  order; path (b) forms them with the anchors as matrix_a as the row kernels
//                  do, and stores the fragment transposed), and accumulates
//                  dC_hat += dL^T A_hat_tile;
//                  then one warp per row applies the normalisation's backward (as the tiny
//                  regime: the normalisation is folded into the products, never a normalised
//                  copy of the inputs).
//                  The fused op runs the forward (row losses, lse), then the backward with the
//                  upstream gradient w = 1 / max(count, 1) ("mean") or 1 ("sum") per row.
//            (last) fused: one block sums the row losses in float64 (fixed order) and divides by
//                  the count ("mean"; 0 when every row is ignored).
//   precision acc_t = float (double for double); the log-sum-exp is max-subtracted (online in
//            the large regime), so logits of any magnitude are safe. The tiny regime recomputes
//            lse from the logits in the backward; the large regime uses the saved lse.
//            Path (b): the logits' products of 16-bit inputs are exact, summed in float (the
//            tensor cores' order); the gradient products see dL rounded once to bfloat16 /
//            float16 (as eager autograd and the Triton kernel do), the inputs unrounded. With
//            TF32 both operands are rounded to TF32 (10-bit mantissa).
//   determinism every sum has one fixed order (d chunks in order, k steps in order, tiles in
//            order, fixed butterflies / trees; the MMA instructions are deterministic); no
//            atomics anywhere: bitwise reproducible run to run on one device and setting
//            (paths (a) and (b) give different bits; TF32 on / off changes float32's path).
//   index    32-bit inside a group (M * D, N * D < 2^31, checked by nce_limits below), 64-bit for
//            the group offsets; the only integer division of a large-regime kernel is the
//            block's (group, row block) split, once per block, in 32 bits.
//   bad input a target outside [0, N) that is not -100 is never dereferenced: its row's loss
//            is NaN and its gradient contributions NaN (the Python wrapper rejects such targets
//            before the call).
//   UNVERIFIED ON GPU: path (b) (and the 32-bit index rewrite) was written and compiled
//            (sm_80, sm_90: ptxas, no spills) without a GPU; its numerics were simulated on the
//            CPU only. The gpu-marked tests that check it: tests/test_cuda_ops.py
//            (test_info_nce_large_paper_shapes, test_info_nce_large_tensor_cores,
//            test_info_nce_tf32_switch, test_bitwise_reproducible_on_gpu) and the cuda-cuda
//            cases of tests/test_info_nce.py (test_low_precision (1, 200, 260, 64), ...).
//
// Host side (after the launcher): the CUDA side of the entries' host functions of
// ../info_nce.h (InfoNceCuda: the limits of these kernels, scratch allocation, device guard and
// stream, the TF32 switch, the launch; the host functions check the inputs and allocate the
// outputs as the schemas say) and the registration for the CUDA dispatch key. Per-operator ATen
// headers (see cross_attention.cu).
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <mma.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "../info_nce.h"
#include "common.cuh"
#include "host.h"

namespace art_fast {
namespace cuda {

namespace {

namespace wmma = nvcuda::wmma;

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
  int64_t R, Cn, D, G;  // rows and columns per group (R * D, Cn * D < 2^31: nce_limits)
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
  bool vec;  // tensor-core path: D % (16 / sizeof(T)) == 0 and X, Y 16-byte aligned
};

// The block's group g and first row: blockIdx.x = g * nrb + row block (32-bit: the grid has
// < 2^31 blocks, nce_limits).
__device__ __forceinline__ void block_rows(int64_t R, int64_t* g, int* row0) {
  const unsigned nrb = static_cast<unsigned>((R + kBR - 1) / kBR);
  const unsigned gb = blockIdx.x / nrb;
  *g = gb;
  *row0 = static_cast<int>(blockIdx.x - gb * nrb) * kBR;
}

// Per-row information of the block's rows (kFwd, kRowGrad), before the first tile.
template <typename A, int Mode, typename Args>
__device__ __forceinline__ void init_rows(const Args& p, int64_t g, int row0, int nr, A* rinfo0,
                                          A* rinfo1, A* rinfo2, int64_t* rt) {
  const int tid = threadIdx.x;
  if (tid >= kBR) return;
  if (Mode == kFwd) {
    rinfo0[tid] = neg_inf<A>();
    rinfo1[tid] = A(0);
    rinfo2[tid] = A(0);
  }
  if (Mode != kColGrad) {
    const int64_t gi = g * p.R + row0 + tid;
    rt[tid] = tid < nr ? p.targets[gi] : kIgnore;
    if (Mode == kRowGrad) {
      rinfo0[tid] = tid < nr ? p.lse_in[gi] : A(0);
      rinfo1[tid] = tid < nr ? row_grad(p.targets, gi, p.Cn, p.gl, p.count, p.mean, p.invT)
                             : A(0);
    }
  }
}

// Forward step 4 (both paths): online log-sum-exp of the logits tile St (row stride ld), one
// warp per 4 rows, lanes over the 64 columns; the target logit picked up on the way.
template <typename A>
__device__ __forceinline__ void online_lse(const A* St, int ld, int nr, int c0, int nc,
                                           A* rmax, A* rsum, A* rtgt, const int64_t* rt) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int rr = warp * 4; rr < warp * 4 + 4; ++rr) {
    if (rr >= nr) break;
    const A v0 = St[rr * ld + lane], v1 = St[rr * ld + lane + 32];
    const A tmax = warp_max(max_skip_nan(v0, v1));
    const A mold = rmax[rr];
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
      rsum[rr] = rsum[rr] * f + tsum;
      rmax[rr] = mnew;
      const int64_t t = rt[rr];
      if (t >= c0 && t < c0 + nc) rtgt[rr] = St[rr * ld + static_cast<int>(t - c0)];
    }
  }
}

// Forward step 6 (both paths): lse = m + log(l); loss = lse - target logit (0 ignored, NaN for
// a bad target).
template <typename A, typename Args>
__device__ __forceinline__ void finish_rows(const Args& p, int64_t g, int row0, int nr,
                                            const A* rmax, const A* rsum, const A* rtgt,
                                            const int64_t* rt) {
  const int tid = threadIdx.x;
  if (tid >= nr) return;
  const int64_t gi = g * p.R + row0 + tid;
  const A mx = rmax[tid];
  const A l = mx == neg_inf<A>() ? quiet_nan<A>() : rsum[tid];
  const A lse = mx + log_acc(l);
  const int64_t t = rt[tid];
  const A loss = t == kIgnore ? A(0) : ((t >= 0 && t < p.Cn) ? lse - rtgt[tid] : quiet_nan<A>());
  if (p.lse_out) p.lse_out[gi] = lse;
  if (p.loss_out) p.loss_out[gi] = loss;
  if (p.rowloss) p.rowloss[gi] = loss;
}

// ---- (a) the exact FMA path: float32 (TF32 not allowed), float64, and any dtype on a device
//      below sm_80 -------------------------------------------------------------------------------
template <typename T, int Mode>
__global__ void __launch_bounds__(kTileThreads, 3) tile_kernel(TileArgs<T> p) {
  using A = acc_t<T>;
  __shared__ A Xs[kBR][kKD + 1];
  __shared__ A Ys[kBC][kKD + 1];
  __shared__ A St[kBR][kBC + 1];
  __shared__ A rinfo[3][kBR];  // kFwd: running max, sum, target logit; kRowGrad: lse, g, -
  __shared__ A cinfo[2][kBC];  // kColGrad: the anchors' lse, g
  __shared__ int64_t rt[kBR];  // targets of the rows (kFwd, kRowGrad)
  __shared__ int64_t ct[kBC];  // targets of the columns (kColGrad)
  const int R = static_cast<int>(p.R), Cn = static_cast<int>(p.Cn), D = static_cast<int>(p.D);
  int64_t g;
  int row0;
  block_rows(p.R, &g, &row0);
  const int nr = min(kBR, R - row0);
  const int tid = threadIdx.x;
  const int r = tid / 8, cq = tid % 8;  // this thread's tile row and column phase
  const T* Xg = p.X + (g * R + row0) * int64_t(D);
  const T* Yg = p.Y + g * Cn * int64_t(D);
  const A* rxg = p.rx + g * R + row0;
  const A* ryg = p.ry + g * Cn;

  // 1. per-row information.
  init_rows<A, Mode>(p, g, row0, nr, rinfo[0], rinfo[1], rinfo[2], rt);

  for (int c0 = 0; c0 < Cn; c0 += kBC) {
    const int nc = min(kBC, Cn - c0);
    if (Mode == kColGrad && tid < kBC) {
      const int64_t gi = g * Cn + c0 + tid;  // the column's anchor row
      const bool in = tid < nc;
      cinfo[0][tid] = in ? p.lse_in[gi] : A(0);
      cinfo[1][tid] = in ? row_grad(p.targets, gi, p.R, p.gl, p.count, p.mean, p.invT) : A(0);
      ct[tid] = in ? p.targets[gi] : kIgnore;
    }
    // 2. the tile's dot products, D in chunks of kKD (d in increasing order).
    A acc[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) acc[u] = A(0);
    for (int d0 = 0; d0 < D; d0 += kKD) {
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
      // 4. online log-sum-exp (the next tile's first __syncthreads orders its updates).
      online_lse<A>(&St[0][0], kBC + 1, nr, c0, nc, rinfo[0], rinfo[1], rinfo[2], rt);
    } else {
      // 5. gradient rows: gacc[row] += sum_c St[row, c] y_hat_c, D in chunks of kKD; this
      //    thread owns (r, dd = cq + 8 v) for v < 4; columns c in increasing order.
      for (int d0 = 0; d0 < D; d0 += kKD) {
        __syncthreads();
        for (int i = tid; i < kBC * kKD; i += kTileThreads) {
          const int cc = i / kKD, dd = i % kKD;
          Ys[cc][dd] = (cc < nc && d0 + dd < D)
                           ? to_acc(Yg[(c0 + cc) * D + d0 + dd]) * ryg[c0 + cc]
                           : A(0);
        }
        __syncthreads();
        if (r < nr) {
          A* grow = p.gacc + (g * R + row0 + r) * int64_t(D) + d0;
#pragma unroll
          for (int v = 0; v < 4; ++v) {
            const int dd = cq + 8 * v;
            if (d0 + dd >= D) continue;
            A part = A(0);
            for (int cc = 0; cc < kBC; ++cc) part = fma(St[r][cc], Ys[cc][dd], part);
            grow[dd] = (c0 == 0 ? A(0) : grow[dd]) + part;
          }
        }
      }
    }
  }
  if (Mode == kFwd) {
    __syncthreads();
    // 6. lse = m + log(l); loss = lse - target logit.
    finish_rows<A>(p, g, row0, nr, rinfo[0], rinfo[1], rinfo[2], rt);
  }
}

// ---- (b) the tensor-core path (sm_80+): bfloat16 / float16 inputs, and float32 as TF32 when
//      torch allows TF32 (torch.backends.cuda.matmul.allow_tf32) ---------------------------------
// WMMA 16 x 16 fragments with float accumulators: k = 16 for the 16-bit types, k = 8 for TF32.
// Every operand goes global -> shared memory (zero-padded tails) -> fragment; every product
// goes fragment -> shared memory (store_matrix_sync) -> threads, so no assumption is made about
// the element <-> (row, column) mapping of a fragment. Alignment: fragment pointers are 32-byte
// aligned (__align__(128) buffers; row strides and column offsets below are multiples of 32
// bytes), leading dimensions are multiples of 8 (16-bit) / 4 (float) elements.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define ART_NCE_TC 1  // the WMMA types of sm_80 exist in this compilation pass
#else
#define ART_NCE_TC 0
#endif

constexpr int kTcKD = 64;  // d chunk of the logits product (= kBC: one product buffer shape)
static_assert(kTcKD == kBC, "the product buffer St holds a [kBR, kBC] and a [kBR, kTcKD] tile");
template <typename T>
constexpr int tc_pad() {
  return 16 / static_cast<int>(sizeof(T));  // 16 bytes of padding per row
}

#if ART_NCE_TC
template <typename T>
struct Tc;
template <>
struct Tc<__half> {
  using Frag = __half;
  static constexpr int K = 16;
};
template <>
struct Tc<__nv_bfloat16> {
  using Frag = __nv_bfloat16;
  static constexpr int K = 16;
};
template <>
struct Tc<float> {
  using Frag = wmma::precision::tf32;
  static constexpr int K = 8;
};

template <typename T, typename Frag>
__device__ __forceinline__ void tc_round(Frag& f) {
  if constexpr (std::is_same_v<T, float>) {
#pragma unroll
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = wmma::__float_to_tf32(f.x[i]);
  }
}
#endif  // ART_NCE_TC

// Rows [0, Rows) of the kTcKD-wide chunk at d0 of a row-major [*, D] matrix (src: its first
// row) into dst [Rows][ld], raw (no conversion), zero outside rows < valid and d < D. vec:
// 16-byte loads (D a multiple of 16 / sizeof(T), src 16-byte aligned).
template <typename T, int Rows>
__device__ __forceinline__ void tc_load(T* __restrict__ dst, int ld, const T* __restrict__ src,
                                        int valid, int D, int d0, bool vec) {
  const int tid = threadIdx.x;
  if (vec) {
    constexpr int V = 16 / static_cast<int>(sizeof(T)), PER = kTcKD / V;
    for (int i = tid; i < Rows * PER; i += kTileThreads) {
      const int rr = i / PER, v = i % PER, d = d0 + v * V;
      uint4 val = make_uint4(0u, 0u, 0u, 0u);
      if (rr < valid && d < D) val = *reinterpret_cast<const uint4*>(src + rr * D + d);
      *reinterpret_cast<uint4*>(dst + rr * ld + v * V) = val;
    }
  } else {
    const T zero = from_acc<T>(0.0f);
    for (int i = tid; i < Rows * kTcKD; i += kTileThreads) {
      const int rr = i / kTcKD, dd = i % kTcKD, d = d0 + dd;
      dst[rr * ld + dd] = (rr < valid && d < D) ? src[rr * D + d] : zero;
    }
  }
}

// Blocks per SM the register allocation aims at (ptxas -v: no spills on sm_80 / sm_90 with
// these; TF32 fragments take more registers).
template <typename T>
constexpr int tc_min_blocks() {
  return sizeof(T) == 2 ? 3 : 2;
}

template <typename T, int Mode>
__global__ void __launch_bounds__(kTileThreads, tc_min_blocks<T>()) tc_tile_kernel(TileArgs<T> p) {
#if !ART_NCE_TC
  __trap();  // never launched below sm_80 (the launcher checks the device)
#else
  using F = typename Tc<T>::Frag;
  constexpr int KS = Tc<T>::K;
  constexpr int kTcUnroll = 4;  // k steps unrolled (16-bit: 4 per chunk, TF32: 8)
  constexpr int LDI = kTcKD + tc_pad<T>();  // Xs, Ys row stride (elements)
  constexpr int LDP = kBC + tc_pad<T>();    // Ps row stride
  constexpr int LDS = kBC + 4;              // St row stride (float)
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, KS, F, wmma::row_major>;
  using FragBc = wmma::fragment<wmma::matrix_b, 16, 16, KS, F, wmma::col_major>;
  using FragBr = wmma::fragment<wmma::matrix_b, 16, 16, KS, F, wmma::row_major>;
  using FragC = wmma::fragment<wmma::accumulator, 16, 16, KS, float>;
  __shared__ __align__(128) T Xs[kBR * LDI];   // the block's rows, one d chunk
  __shared__ __align__(128) T Ys[kBC * LDI];   // the tile's rows, one d chunk
  __shared__ __align__(128) T Ps[kBR * LDP];   // gradients: the scaled dL tile (operand)
  __shared__ __align__(128) float St[kBR * LDS];  // logits tile; gradients: product chunk
  __shared__ float rinfo[3][kBR];
  __shared__ float cinfo[2][kBC];
  __shared__ float colw[kBC];   // gradients: the factor of the operand's column
  __shared__ float cmax[2];     // gradients: max |colw| per half tile
  __shared__ int64_t rt[kBR];
  __shared__ int64_t ct[kBC];
  const int R = static_cast<int>(p.R), Cn = static_cast<int>(p.Cn), D = static_cast<int>(p.D);
  int64_t g;
  int row0;
  block_rows(p.R, &g, &row0);
  const int nr = min(kBR, R - row0);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int r = tid / 8, cq = tid % 8;     // element phase: row r, columns cq + 8 u
  const int wr = warp >> 2, wc = warp & 3;  // fragment: rows 16 wr, columns 16 wc
  const T* Xg = p.X + (g * R + row0) * int64_t(D);
  const T* Yg = p.Y + g * Cn * int64_t(D);
  const float* rxg = p.rx + g * R + row0;
  const float* ryg = p.ry + g * Cn;

  init_rows<float, Mode>(p, g, row0, nr, rinfo[0], rinfo[1], rinfo[2], rt);

  for (int c0 = 0; c0 < Cn; c0 += kBC) {
    const int nc = min(kBC, Cn - c0);
    const T* Yt = Yg + int64_t(c0) * D;
    if (Mode != kFwd && tid < kBC) {
      // Column information (warps 0, 1). The operand of the gradient product is
      // dL[r, c] * y_scale[c] / g_scale (rows) or dL[r, c] * y_scale[c] (columns), scaled by
      // 2^-e, e the exponent of the tile's largest |colw|: |operand| <= 1, so a 16-bit
      // operand neither overflows nor loses the small tiles to underflow; the power of two
      // is undone exactly in float after the product.
      const bool in = tid < nc;
      float w = in ? ryg[c0 + tid] : 0.0f;
      if (Mode == kColGrad) {
        const int64_t gi = g * Cn + c0 + tid;  // the column's anchor row
        const float gs = in ? row_grad(p.targets, gi, p.R, p.gl, p.count, p.mean, p.invT) : 0.0f;
        cinfo[0][tid] = in ? p.lse_in[gi] : 0.0f;
        cinfo[1][tid] = gs;
        ct[tid] = in ? p.targets[gi] : kIgnore;
        w *= gs;
      }
      colw[tid] = w;
      const float m = warp_max(fabsf(w));
      if (lane == 0) cmax[warp] = m;
    }
    // 1. the logits tile, D in chunks of kTcKD, k steps in increasing order. The column
    //    kernel computes S (anchors x candidates) with the anchors as matrix_a, exactly as the
    //    row kernels, and stores it transposed: bitwise the same logits in all three modes.
    FragC acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int d0 = 0; d0 < D; d0 += kTcKD) {
      __syncthreads();
      tc_load<T, kBR>(Xs, LDI, Xg, nr, D, d0, p.vec);
      tc_load<T, kBC>(Ys, LDI, Yt, nc, D, d0, p.vec);
      __syncthreads();
#pragma unroll kTcUnroll
      for (int ks = 0; ks < kTcKD; ks += KS) {
        FragA a;
        FragBc b;
        if (Mode == kColGrad) {
          wmma::load_matrix_sync(a, Ys + wc * 16 * LDI + ks, LDI);
          wmma::load_matrix_sync(b, Xs + wr * 16 * LDI + ks, LDI);
        } else {
          wmma::load_matrix_sync(a, Xs + wr * 16 * LDI + ks, LDI);
          wmma::load_matrix_sync(b, Ys + wc * 16 * LDI + ks, LDI);
        }
        tc_round<T>(a);
        tc_round<T>(b);
        wmma::mma_sync(acc, a, b, acc);
      }
    }
    // St[r][c]: rows of the block, columns of the tile.
    wmma::store_matrix_sync(St + wr * 16 * LDS + wc * 16, acc, LDS,
                            Mode == kColGrad ? wmma::mem_col_major : wmma::mem_row_major);
    __syncthreads();
    // 2. logits (factor (ra rc) / T in the same order in every mode), then the mode's
    //    transform; each element is read and written by one thread.
    int e = 0;
    if (Mode != kFwd) {
      const float m = max_skip_nan(cmax[0], cmax[1]);
      if (m > 0.0f && m <= 3.0e38f) {
        frexpf(m, &e);
        e = max(-120, min(120, e));
      }
    }
    const float down = ldexpf(1.0f, -e);
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const int cc = cq + 8 * u;
      const bool in = r < nr && cc < nc;
      float v = 0.0f;
      if (in) {
        const float rxr = rxg[r], ryc = ryg[c0 + cc];
        const float f = Mode == kColGrad ? (ryc * rxr) : (rxr * ryc);
        v = St[r * LDS + cc] * f * p.invT;
      }
      if constexpr (Mode == kFwd) {
        St[r * LDS + cc] = in ? v : neg_inf<float>();
      } else {
        // dL / g = exp(S - lse) - onehot; g folded in below (rows) or in colw (columns).
        const bool rows = Mode == kRowGrad;
        const float gs = rows ? rinfo[1][r] : cinfo[1][cc];
        const float lse = rows ? rinfo[0][r] : cinfo[0][cc];
        const bool tgt = rows ? rt[r] == c0 + cc : ct[cc] == row0 + r;
        float op = 0.0f;  // an ignored row / column: exactly 0
        if (in && gs != 0.0f) op = (exp_acc(v - lse) - (tgt ? 1.0f : 0.0f)) * colw[cc] * down;
        Ps[r * LDP + cc] = from_acc<T>(op);
      }
    }
    __syncthreads();
    if constexpr (Mode == kFwd) {
      // 3. online log-sum-exp (the next tile's first __syncthreads orders its updates).
      online_lse<float>(St, LDS, nr, c0, nc, rinfo[0], rinfo[1], rinfo[2], rt);
    } else {
      // 4. gradient rows: gacc[row, d] += up * sum_c Ps[row, c] y[c, d] (raw y: the 16-bit
      //    input itself), D in chunks of kTcKD; up = g_row 2^e (rows) or 2^e (columns).
      //    This thread owns (r, d0 + cq + 8 v), the same elements for every tile: tiles in
      //    increasing order, one fixed order per element.
      const float up = ldexpf(1.0f, e) * (Mode == kRowGrad ? rinfo[1][r] : 1.0f);
      float* grow = p.gacc + (g * R + row0 + r) * int64_t(D);
      for (int d0 = 0; d0 < D; d0 += kTcKD) {
        __syncthreads();
        tc_load<T, kBC>(Ys, LDI, Yt, nc, D, d0, p.vec);
        __syncthreads();
        FragC out;
        wmma::fill_fragment(out, 0.0f);
#pragma unroll kTcUnroll
        for (int ks = 0; ks < kBC; ks += KS) {
          FragA a;
          FragBr b;
          wmma::load_matrix_sync(a, Ps + wr * 16 * LDP + ks, LDP);
          wmma::load_matrix_sync(b, Ys + ks * LDI + wc * 16, LDI);
          tc_round<T>(a);
          tc_round<T>(b);
          wmma::mma_sync(out, a, b, out);
        }
        wmma::store_matrix_sync(St + wr * 16 * LDS + wc * 16, out, LDS, wmma::mem_row_major);
        __syncthreads();
        if (r < nr) {
#pragma unroll
          for (int v = 0; v < 8; ++v) {
            const int dd = cq + 8 * v, d = d0 + dd;
            if (d < D) grow[d] = (c0 == 0 ? 0.0f : grow[d]) + St[r * LDS + dd] * up;
          }
        }
      }
    }
  }
  if (Mode == kFwd) {
    __syncthreads();
    finish_rows<float>(p, g, row0, nr, rinfo[0], rinfo[1], rinfo[2], rt);
  }
#endif
}

// True when the current device runs the tensor-core kernels (sm_80 or newer).
bool tc_device() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
    return false;
  return major >= 8;
}

// The three large-regime kernels of one path.
template <typename T, bool TC>
struct Large {
  template <int Mode>
  static void launch(const TileArgs<T>& p, unsigned blocks, cudaStream_t stream) {
    if constexpr (TC) {
      tc_tile_kernel<T, Mode><<<blocks, kTileThreads, 0, stream>>>(p);
    } else {
      tile_kernel<T, Mode><<<blocks, kTileThreads, 0, stream>>>(p);
    }
  }
};

template <typename T, bool TC>
void run_large(const TileArgs<T>& base, const T* a, const T* c, const NceDims& s,
               const Scratch& sc, void* loss, void* lse, const void* saved_lse, bool grad,
               bool fused, acc_t<T>* rowloss, cudaStream_t stream) {
  using A = acc_t<T>;
  using L = Large<T, TC>;
  const A* lse_for_grad = static_cast<const A*>(saved_lse);
  const bool need_fwd = loss != nullptr || lse != nullptr || fused;
  const unsigned row_blocks = static_cast<unsigned>(s.G * ceil_div(s.M, kBR));
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
    L::template launch<kFwd>(p, row_blocks, stream);
    if (!lse_for_grad) lse_for_grad = p.lse_out;
  }
  if (!grad) return;
  TileArgs<T> p = base;
  p.lse_in = lse_for_grad;
  // rows: anchors -> d A_hat
  p.X = a;
  p.Y = c;
  p.rx = static_cast<const A*>(sc.ra);
  p.ry = static_cast<const A*>(sc.rc);
  p.R = s.M;
  p.Cn = s.N;
  p.gacc = static_cast<A*>(sc.gacc_a);
  L::template launch<kRowGrad>(p, row_blocks, stream);
  // rows: candidates -> d C_hat (columns: anchors)
  p.X = c;
  p.Y = a;
  p.rx = static_cast<const A*>(sc.rc);
  p.ry = static_cast<const A*>(sc.ra);
  p.R = s.N;
  p.Cn = s.M;
  p.gacc = static_cast<A*>(sc.gacc_c);
  L::template launch<kColGrad>(p, static_cast<unsigned>(s.G * ceil_div(s.N, kBR)), stream);
}

template <typename T>
cudaError_t run(const void* anchors, const void* candidates, const int64_t* targets,
                double temperature, bool normalize, bool mean, bool allow_tf32,
                const NceDims& s, void* loss, void* lse, const void* grad_loss,
                const void* saved_lse, void* ga, void* gc, void* total, void* scratch,
                cudaStream_t stream) {
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
    base.gl = gl;
    constexpr int V = 16 / static_cast<int>(sizeof(T));
    base.vec = s.D % V == 0 && reinterpret_cast<uintptr_t>(a) % 16 == 0 &&
               reinterpret_cast<uintptr_t>(c) % 16 == 0;
    bool tc = false;
    if constexpr (!std::is_same_v<T, double>) {
      tc = (!std::is_same_v<T, float> || allow_tf32) && tc_device();
    }
    if (tc) {
      if constexpr (!std::is_same_v<T, double>) {
        run_large<T, true>(base, a, c, s, sc, loss, lse, saved_lse, grad, fused, rowloss,
                           stream);
      }
    } else {
      run_large<T, false>(base, a, c, s, sc, loss, lse, saved_lse, grad, fused, rowloss,
                          stream);
    }
    if (grad) {
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
                            bool mean, bool allow_tf32, const NceDims& s, void* loss,
                            void* lse, const void* grad_loss, const void* saved_lse, void* ga,
                            void* gc, void* total, void* scratch, cudaStream_t stream) {
  return dispatch(dt, [&]<typename T>() {
    return run<T>(anchors, candidates, targets, temperature, normalize, mean, allow_tf32, s,
                  loss, lse, grad_loss, saved_lse, ga, gc, total, scratch, stream);
  });
}

// ---- host side: the CUDA side of the entries' host functions (../info_nce.h) -----------------
namespace {

// The checked dims, within the limits of these kernels: the grid of row blocks, 32-bit index
// math inside a group. (The values of targets are not checked: that needs a device -> host
// copy; a target outside [0, N) that is not -100 gives a NaN loss and gradient, never an
// out-of-bounds read; the Python wrapper rejects such targets before the call.)
NceDims nce_limits(const InfoNceDims& c) {
  const NceDims d{c.G, c.M, c.N, c.D};
  TORCH_CHECK(d.G * ((std::max(d.M, d.N) + 31) / 32) <= kMaxGrid &&
                  d.G * std::max(d.M, d.N) * 32 <= int64_t(256) * kMaxGrid,
              "art_fast: info_nce (CUDA): G*M or G*N too large for one grid");
  TORCH_CHECK(d.M * d.D <= kMaxInt32 && d.N * d.D <= kMaxInt32,
              "art_fast: info_nce (CUDA) indexes one group with 32-bit integers: M*D and N*D "
              "must be < 2^31, got M = ", d.M, ", N = ", d.N, ", D = ", d.D);
  return d;
}

// float32 in the large regime may run on TF32 tensor cores when torch allows TF32 for CUDA
// matmuls (torch.backends.cuda.matmul.allow_tf32 / fp32_precision "tf32"); when the legacy and
// the new API were mixed, torch refuses to answer: then the exact path.
bool nce_allow_tf32() {
  try {
    return at::globalContext().allowTF32CuBLAS();
  } catch (const c10::Error&) {
    return false;
  }
}

// The limits of these kernels (nce_limits), then, on the device of anchors, targets made
// contiguous; each entry is one info_nce_launch on the current stream of that device, with its
// scratch.
struct InfoNceCuda {
  static constexpr c10::DeviceType kDevice = c10::kCUDA;
  const NceDims d;
  const LaunchContext ctx;
  const at::Tensor t;

  InfoNceCuda(const InfoNceDims& c, const at::Tensor& anchors, const at::Tensor& targets)
      : d(nce_limits(c)), ctx(anchors, "anchors"), t(targets.contiguous()) {}

  void fwd(const at::Tensor& anchors, const at::Tensor& candidates, double temperature,
           bool normalize, at::Tensor& loss, at::Tensor& lse) const {
    launch("info_nce_fwd", anchors, candidates, temperature, normalize, false, loss.data_ptr(),
           lse.data_ptr(), nullptr, nullptr, nullptr, nullptr, nullptr);
  }

  void bwd(const at::Tensor& gl, const at::Tensor& anchors, const at::Tensor& candidates,
           const at::Tensor& l, double temperature, bool normalize, at::Tensor& da,
           at::Tensor& dc) const {
    launch("info_nce_bwd", anchors, candidates, temperature, normalize, false, nullptr, nullptr,
           gl.data_ptr(), l.data_ptr(), da.data_ptr(), dc.data_ptr(), nullptr);
  }

  void fused(const at::Tensor& anchors, const at::Tensor& candidates, double temperature,
             bool normalize, bool mean, at::Tensor& loss, at::Tensor* da,
             at::Tensor* dc) const {
    launch("info_nce_fused", anchors, candidates, temperature, normalize, mean, nullptr, nullptr,
           nullptr, nullptr, da ? da->data_ptr() : nullptr, dc ? dc->data_ptr() : nullptr,
           loss.data_ptr());
  }

 private:
  // info_nce_launch with its scratch (a gradient is wanted when ga is given).
  void launch(const char* op, const at::Tensor& anchors, const at::Tensor& candidates,
              double temperature, bool normalize, bool mean, void* loss, void* lse,
              const void* grad_loss, const void* saved_lse, void* ga, void* gc,
              void* total) const {
    const size_t bytes = info_nce_scratch_bytes(d, ctx.dt, ga != nullptr);
    const at::Tensor scratch =
        at::empty({static_cast<int64_t>(bytes)}, anchors.options().dtype(at::kByte));
    check_launch(info_nce_launch(ctx.dt, anchors.data_ptr(), candidates.data_ptr(),
                                 t.data_ptr<int64_t>(), temperature, normalize, mean,
                                 nce_allow_tf32(), d, loss, lse, grad_loss, saved_lse, ga, gc,
                                 total, scratch.data_ptr(), ctx.stream),
                 op);
  }
};

}  // namespace

}  // namespace cuda
}  // namespace art_fast

ART_FAST_IMPL(CUDA, art_fast::info_nce_impl<art_fast::cuda::InfoNceCuda>)
