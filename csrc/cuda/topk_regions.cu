// CUDA kernels for art_fast::topk_regions_{fwd,bwd}.
//
// For each row (b, m): I = the k highest scores[b, m, :] (descending; equal scores by
// increasing index; NaN below every number, -inf included; -0.0 == +0.0), w = softmax over
// scores[b, m, I] only, pooled[b, m] = sum_j w_j values[b, I_j].
//
// Profile
//   inputs   scores [B,M,N], values [B,N,C], one dtype (float32, bfloat16, float16, float64),
//            contiguous; 1 <= k <= N < 2^32 - 1.
//   outputs  pooled [B,M,C], indices [B,M,k] int64, weights [B,M,k].
//   saved    scores, values, indices; the backward recomputes the weights in acc_t from the
//            scores gathered at indices.
//   grid     forward: one block per row (b, m). The row's N entries become distinct 96-bit
//            rank keys (an order-preserving 64-bit image of the value, NaN lowest, then the
//            index), sorted in descending rank order by a block-wide bitonic sort: in shared
//            memory when N <= 1024 (kTopkSharedMax), else in a global scratch buffer (the
//            general path, any N). The first k keys are the selection.
//            backward: (1) one block per row: weights w, dw_j = <grad_pooled, values[I_j]>
//            (+ grad_weights), dS_j = w_j (dw_j - sum_l w_l dw_l), written into the zeroed row
//            of grad_scores by one thread in j order (so a repeated index sums, as the
//            gather's backward); w is kept in a [B,M,k] acc_t scratch. (2) grad_values: one
//            block per (b, chunk of patches, chunk of channels) walks the (m, j) entries of b
//            in increasing order and accumulates w * grad_pooled[b, m] into the rows of the
//            patches it owns: a per-(b, n) gather in a fixed order, no atomics.
//   precision acc_t = float (double for double); the softmax subtracts the selection's max
//            and behaves as torch.softmax on NaN / all -inf (NaN weights).
//   determinism the selection is exact (distinct keys); every sum has a fixed order
//            (block reductions by a fixed tree, the pooled and grad_values sums in j / (m, j)
//            order).
//   index    the block splits (row -> b, block -> (b, patch chunk, channel chunk)) in 32 bits;
//            the grad_values walk over (m, j) and its [patch, channel] chunk index without
//            division; row offsets 64-bit (N may exceed 2^31 / C).
//   bad input indices outside [0, N) in the backward are never dereferenced: the row's
//            grad_scores and weights become NaN (the Python wrapper and the forward never
//            produce such indices).
//
// Host side (after the launchers): the CUDA side of the entries' host functions of
// ../topk_regions.h (TopkRegionsCuda: the limits of these kernels, scratch allocation, device
// guard and stream, the launches; the host functions check the inputs and allocate the outputs
// as the schemas say) and the registration for the CUDA dispatch key. Per-operator ATen headers
// (see cross_attention.cu).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "../topk_regions.h"
#include "common.cuh"
#include "host.h"

namespace art_fast {
namespace cuda {

namespace {

using u64 = unsigned long long;

// Order-preserving image of a value: larger value -> larger key; NaN -> 1 and the padding of
// the sort -> 0, below every number (the image of -inf is 0x007FFFFF for float).
__device__ __forceinline__ u64 order_key(float x) {
  if (x != x) return 1ull;
  if (x == 0.0f) x = 0.0f;  // -0.0 ties with +0.0
  const unsigned b = __float_as_uint(x);
  return static_cast<u64>((b & 0x80000000u) ? ~b : (b | 0x80000000u));
}
__device__ __forceinline__ u64 order_key(double x) {
  if (x != x) return 1ull;
  if (x == 0.0) x = 0.0;
  const u64 b = static_cast<u64>(__double_as_longlong(x));
  return (b & 0x8000000000000000ull) ? ~b : (b | 0x8000000000000000ull);
}

__device__ __forceinline__ bool ranks_above(u64 ka, unsigned ia, u64 kb, unsigned ib) {
  return ka > kb || (ka == kb && ia < ib);
}

__host__ __device__ inline int64_t next_pow2(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Block-wide bitonic sort of n2 (a power of two) keys into descending rank order.
__device__ void bitonic_sort_desc(u64* kv, unsigned* ki, int64_t n2) {
  const int tid = threadIdx.x, nt = blockDim.x;
  for (int64_t size = 2; size <= n2; size <<= 1) {
    for (int64_t stride = size >> 1; stride > 0; stride >>= 1) {
      for (int64_t t = tid; t < n2 / 2; t += nt) {
        const int64_t pos = 2 * t - (t & (stride - 1));
        const int64_t par = pos + stride;
        const bool desc = (pos & size) == 0;
        const u64 ka = kv[pos], kb = kv[par];
        const unsigned ia = ki[pos], ib = ki[par];
        // desc: pos must rank above par; asc (inner halves of a larger merge): the reverse.
        if (ranks_above(kb, ib, ka, ia) == desc) {
          kv[pos] = kb;
          kv[par] = ka;
          ki[pos] = ib;
          ki[par] = ia;
        }
      }
      __syncthreads();
    }
  }
}

// The softmax over the selected scores srow[idx[j]], j < k, block-wide (every thread of the
// block calls it and gets the result): mx = their maximum (NaN skipped), returns 1 / sum_j
// exp(srow[idx[j]] - mx) (NaN for a NaN or an all -inf selection). red: block reduction scratch.
template <typename T, typename Index>
__device__ __forceinline__ acc_t<T> selection_softmax(const T* srow, const Index* idx, int64_t k,
                                                      acc_t<T>* red, acc_t<T>& mx) {
  using A = acc_t<T>;
  const int tid = threadIdx.x, nt = blockDim.x;
  mx = neg_inf<A>();
  for (int64_t j = tid; j < k; j += nt) mx = max_skip_nan(mx, to_acc(srow[idx[j]]));
  mx = block_max(mx, red);
  A sum = A(0);
  for (int64_t j = tid; j < k; j += nt) sum += exp_acc(to_acc(srow[idx[j]]) - mx);
  sum = block_sum(sum, red);
  return A(1) / sum;
}

template <typename T>
__global__ void fwd_kernel(const T* __restrict__ scores, const T* __restrict__ values,
                           TopkDims s, unsigned char* __restrict__ scratch,
                           T* __restrict__ pooled, int64_t* __restrict__ indices,
                           T* __restrict__ weights) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t N = s.N, C = s.C, k = s.k;
  const int64_t n2 = next_pow2(N);
  const int64_t row = blockIdx.x;
  const int64_t b = blockIdx.x / static_cast<unsigned>(s.M);  // B*M < 2^31 (tk_limits below)
  const int tid = threadIdx.x, nt = blockDim.x;
  A* red = reinterpret_cast<A*>(smem_raw);  // [33] reduction scratch
  unsigned char* base = scratch ? scratch + row * n2 * (sizeof(u64) + sizeof(unsigned))
                                : smem_raw + 64 * sizeof(double);
  u64* kv = reinterpret_cast<u64*>(base);
  unsigned* ki = reinterpret_cast<unsigned*>(base + n2 * sizeof(u64));
  const T* srow = scores + row * N;

  // 1. rank keys of the row, padded to a power of two with keys below every entry.
  for (int64_t n = tid; n < n2; n += nt) {
    kv[n] = n < N ? order_key(to_acc(srow[n])) : 0ull;
    ki[n] = static_cast<unsigned>(n);
  }
  __syncthreads();
  // 2. descending rank order; the first k are the selection.
  bitonic_sort_desc(kv, ki, n2);
  // 3. softmax over the selected scores (max skips NaN; a NaN or an all -inf selection gives
  //    NaN weights, as torch.softmax).
  A mx;
  const A inv = selection_softmax(srow, ki, k, red, mx);
  // 4. weights (kept in acc_t over the keys, which are no longer read) and indices.
  A* wbuf = reinterpret_cast<A*>(kv);
  for (int64_t j = tid; j < k; j += nt) {
    const unsigned n = ki[j];
    const A w = exp_acc(to_acc(srow[n]) - mx) * inv;
    wbuf[j] = w;
    weights[row * k + j] = from_acc<T>(w);
    indices[row * k + j] = static_cast<int64_t>(n);
  }
  __syncthreads();
  // 5. pooled = sum_j w_j values[b, I_j], j in selection order.
  const T* vb = values + b * N * C;
  for (int64_t c = tid; c < C; c += nt) {
    A acc = A(0);
    for (int64_t j = 0; j < k; ++j) acc = fma(wbuf[j], to_acc(vb[int64_t(ki[j]) * C + c]), acc);
    pooled[row * C + c] = from_acc<T>(acc);
  }
}

// Backward, part 1: one block per row (b, m).
template <typename T>
__global__ void bwd_rows_kernel(const T* __restrict__ gp, const T* __restrict__ gw,
                                const T* __restrict__ scores, const T* __restrict__ values,
                                const int64_t* __restrict__ indices, TopkDims s,
                                T* __restrict__ gs, acc_t<T>* __restrict__ wsc,
                                acc_t<T>* __restrict__ dsc) {
  using A = acc_t<T>;
  __shared__ A red[33];
  const int64_t N = s.N, C = s.C, k = s.k;
  const int64_t row = blockIdx.x, b = blockIdx.x / static_cast<unsigned>(s.M);
  const int tid = threadIdx.x, nt = blockDim.x;
  const int64_t* I = indices + row * k;
  const T* srow = scores + row * N;
  T* gsr = gs + row * N;
  // 1. zero the row of grad_scores; check the indices.
  for (int64_t n = tid; n < N; n += nt) gsr[n] = from_acc<T>(A(0));
  int bad = 0;
  for (int64_t j = tid; j < k; j += nt) bad |= (I[j] < 0 || I[j] >= N);
  if (__syncthreads_or(bad)) {
    for (int64_t n = tid; n < N; n += nt) gsr[n] = from_acc<T>(quiet_nan<A>());
    for (int64_t j = tid; j < k; j += nt) wsc[row * k + j] = quiet_nan<A>();
    return;
  }
  // 2. the weights, recomputed from the scores at indices.
  A mx;
  const A inv = selection_softmax(srow, I, k, red, mx);
  // 3. dw_j = <grad_pooled[b, m], values[b, I_j]> (+ grad_weights), c in increasing order;
  //    delta = sum_j w_j dw_j.
  const T* gpr = gp + row * C;
  const T* vb = values + b * N * C;
  A part = A(0);
  for (int64_t j = tid; j < k; j += nt) {
    const A w = exp_acc(to_acc(srow[I[j]]) - mx) * inv;
    const T* vr = vb + I[j] * C;
    A dw = A(0);
    for (int64_t c = 0; c < C; ++c) dw = fma(to_acc(gpr[c]), to_acc(vr[c]), dw);
    if (gw) dw += to_acc(gw[row * k + j]);
    wsc[row * k + j] = w;
    dsc[row * k + j] = dw;
    part = fma(w, dw, part);
  }
  const A delta = block_sum(part, red);  // ends with __syncthreads: wsc/dsc are visible
  // 4. dS_j = w_j (dw_j - delta) into the row, one thread in j order (repeated indices sum).
  if (tid == 0) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t n = I[j];
      const A ds = wsc[row * k + j] * (dsc[row * k + j] - delta);
      gsr[n] = from_acc<T>(to_acc(gsr[n]) + ds);
    }
  }
}

// Backward, part 2: grad_values[b, n, c] = sum over (m, j) with I[b, m, j] = n, in increasing
// (m, j) order, of w[b, m, j] grad_pooled[b, m, c]. One block per (b, patch chunk, channel
// chunk); each thread owns its channels of the chunk's rows.
template <typename T>
__global__ void bwd_values_kernel(const T* __restrict__ gp, const int64_t* __restrict__ indices,
                                  const acc_t<T>* __restrict__ wsc, TopkDims s, int64_t NB,
                                  int64_t CC, unsigned nchunks, unsigned cchunks,
                                  T* __restrict__ gv) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* acc = reinterpret_cast<A*>(smem_raw);  // [NB, CC]
  const int64_t N = s.N, C = s.C, k = s.k, M = s.M;
  // The block's (b, patch chunk, channel chunk), nchunks = ceil(N / NB), cchunks =
  // ceil(C / CC): 32-bit (the grid has < 2^31 blocks).
  unsigned blk = blockIdx.x;
  const unsigned cc = blk % cchunks;
  blk /= cchunks;
  const unsigned nc = blk % nchunks;
  const int64_t b = blk / nchunks;
  const int64_t n0 = nc * NB, c0 = cc * CC;
  // nb <= 64, cw <= 256: the block's [nb, cw] accumulator is indexed in 32 bits.
  const int nb = static_cast<int>(min(NB, N - n0)), cw = static_cast<int>(min(CC, C - c0));
  const int tid = threadIdx.x, nt = blockDim.x;
  for (int i = tid; i < nb * cw; i += nt) acc[i] = A(0);
  // (each thread only ever touches the elements i with i % cw == its channels: no race)
  __syncthreads();
  const int64_t* Ib = indices + b * M * k;
  const A* wb = wsc + b * M * k;
  const T* gb = gp + b * M * C + c0;
  // (m, j) in increasing order, e = m k + j: no division per entry.
  for (int64_t m = 0, e = 0; m < M; ++m) {
    const T* g = gb + m * C;
    for (int64_t j = 0; j < k; ++j, ++e) {
      const int64_t n = Ib[e];  // the same e for every thread: a uniform branch
      if (n < n0 || n >= n0 + nb) continue;
      const A w = wb[e];
      A* arow = acc + static_cast<int>(n - n0) * cw;
      for (int c = tid; c < cw; c += nt) arow[c] = fma(w, to_acc(g[c]), arow[c]);
    }
  }
  __syncthreads();
  T* gvb = gv + (b * N + n0) * C + c0;
  for (int i = tid; i < nb * cw; i += nt) {
    const int r = i / cw, c = i - r * cw;
    gvb[r * C + c] = from_acc<T>(acc[i]);
  }
}

template <typename T>
cudaError_t fwd_launch(const void* scores, const void* values, const TopkDims& s, void* pooled,
                       int64_t* indices, void* weights, void* scratch, cudaStream_t stream) {
  const int64_t n2 = next_pow2(s.N);
  const bool shared = s.N <= kTopkSharedMax;
  const size_t bytes =
      64 * sizeof(double) + (shared ? n2 * (sizeof(u64) + sizeof(unsigned)) : 0);
  int threads = static_cast<int>(std::min<int64_t>(1024, std::max<int64_t>(n2 / 2, 32)));
  threads = std::max(64, (threads + 31) / 32 * 32);
  fwd_kernel<T><<<static_cast<unsigned>(s.B * s.M), threads, bytes, stream>>>(
      static_cast<const T*>(scores), static_cast<const T*>(values), s,
      shared ? nullptr : static_cast<unsigned char*>(scratch), static_cast<T*>(pooled), indices,
      static_cast<T*>(weights));
  return cudaGetLastError();
}

template <typename T>
cudaError_t bwd_launch(const void* gp, const void* gw, const void* scores, const void* values,
                       const int64_t* indices, const TopkDims& s, void* gs, void* gv,
                       void* w_scratch, cudaStream_t stream) {
  using A = acc_t<T>;
  A* wsc = static_cast<A*>(w_scratch);
  A* dsc = wsc + s.B * s.M * s.k;
  bwd_rows_kernel<T><<<static_cast<unsigned>(s.B * s.M), 128, 0, stream>>>(
      static_cast<const T*>(gp), static_cast<const T*>(gw), static_cast<const T*>(scores),
      static_cast<const T*>(values), indices, s, static_cast<T*>(gs), wsc, dsc);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || s.C == 0) return err;  // (no channels: grad_values is empty)
  const int64_t CC = std::min<int64_t>(s.C, 256);
  const int64_t NB = std::max<int64_t>(
      1, std::min<int64_t>(64, (32 * 1024) / (CC * static_cast<int64_t>(sizeof(A)))));
  const int64_t nchunks = ceil_div(s.N, NB), cchunks = ceil_div(s.C, CC);
  const int64_t blocks = s.B * nchunks * cchunks;
  const int threads = static_cast<int>(std::max<int64_t>(64, (CC + 31) / 32 * 32));
  bwd_values_kernel<T><<<static_cast<unsigned>(blocks), threads, NB * CC * sizeof(A), stream>>>(
      static_cast<const T*>(gp), indices, wsc, s, NB, CC, static_cast<unsigned>(nchunks),
      static_cast<unsigned>(cchunks), static_cast<T*>(gv));
  return cudaGetLastError();
}

}  // namespace

size_t topk_scratch_bytes(const TopkDims& s) {
  if (s.N <= kTopkSharedMax) return 0;
  return static_cast<size_t>(s.B * s.M * next_pow2(s.N)) * (sizeof(u64) + sizeof(unsigned));
}

cudaError_t topk_regions_fwd_launch(DType dt, const void* scores, const void* values,
                                    const TopkDims& s, void* pooled, int64_t* indices,
                                    void* weights, void* scratch, cudaStream_t stream) {
  return dispatch(dt, [&]<typename T>() {
    return fwd_launch<T>(scores, values, s, pooled, indices, weights, scratch, stream);
  });
}

cudaError_t topk_regions_bwd_launch(DType dt, const void* grad_pooled, const void* grad_weights,
                                    const void* scores, const void* values,
                                    const int64_t* indices, const TopkDims& s,
                                    void* grad_scores, void* grad_values, void* w_scratch,
                                    cudaStream_t stream) {
  return dispatch(dt, [&]<typename T>() {
    return bwd_launch<T>(grad_pooled, grad_weights, scores, values, indices, s, grad_scores,
                         grad_values, w_scratch, stream);
  });
}

// ---- host side: the CUDA side of the entries' host functions (../topk_regions.h) -------------
namespace {

// The checked dims, within the limits of these kernels: the sort carries the patch index in
// 32 bits, one block per (b, m) row.
TopkDims tk_limits(const TopkRegionsDims& c) {
  const TopkDims d{c.B, c.M, c.N, c.C, c.k};
  TORCH_CHECK(d.N < int64_t(0xFFFFFFFF), "art_fast: topk_regions needs N < 2^32 - 1, got ", d.N);
  TORCH_CHECK(d.B * d.M <= kMaxGrid, "art_fast: topk_regions (CUDA) needs B*M < 2^31");
  return d;
}

// The limits of these kernels (tk_limits), and the launches on the current stream of the device
// of scores, with their scratch.
struct TopkRegionsCuda {
  static constexpr c10::DeviceType kDevice = c10::kCUDA;
  const TopkDims d;
  const LaunchContext ctx;

  TopkRegionsCuda(const TopkRegionsDims& c, const at::Tensor& scores, bool /*backward*/)
      : d(tk_limits(c)), ctx(scores, "scores") {}

  void fwd(const at::Tensor& scores, const at::Tensor& values, at::Tensor& pooled,
           at::Tensor& indices, at::Tensor& weights) const {
    at::Tensor scratch;
    const size_t sb = topk_scratch_bytes(d);
    if (sb > 0) {
      scratch = at::empty({static_cast<int64_t>(sb)}, scores.options().dtype(at::kByte));
    }
    check_launch(topk_regions_fwd_launch(ctx.dt, scores.data_ptr(), values.data_ptr(), d,
                                         pooled.data_ptr(), indices.data_ptr<int64_t>(),
                                         weights.data_ptr(),
                                         sb > 0 ? scratch.data_ptr() : nullptr, ctx.stream),
                 "topk_regions_fwd");
  }

  void bwd(const at::Tensor& grad_pooled, const at::Tensor* gw, const at::Tensor& scores,
           const at::Tensor& values, const at::Tensor& indices, at::Tensor& grad_scores,
           at::Tensor& grad_values) const {
    TORCH_CHECK(d.B * ((d.N + 15) / 16) * ((d.C + 255) / 256) <= kMaxGrid,
                "art_fast: topk_regions (CUDA): B*N*C too large for one grid");
    const at::Tensor wsc = at::empty({2 * d.B * d.M * d.k},
                                     scores.options().dtype(acc_dtype(scores.scalar_type())));
    check_launch(topk_regions_bwd_launch(ctx.dt, grad_pooled.data_ptr(),
                                         gw ? gw->data_ptr() : nullptr, scores.data_ptr(),
                                         values.data_ptr(), indices.data_ptr<int64_t>(), d,
                                         grad_scores.data_ptr(), grad_values.data_ptr(),
                                         wsc.data_ptr(), ctx.stream),
                 "topk_regions_bwd");
  }
};

}  // namespace

}  // namespace cuda
}  // namespace art_fast

ART_FAST_IMPL(CUDA, art_fast::topk_regions_impl<art_fast::cuda::TopkRegionsCuda>)
