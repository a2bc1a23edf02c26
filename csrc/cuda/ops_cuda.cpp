// Host side of the CUDA kernels: input checks, output allocation, device guard and stream,
// and the registration of the CUDA implementations of the art_fast::* schemas (ops.cpp).
//
// Compiled by the C++ compiler (no device code): the kernels and their launchers live in
// cross_attention.cu, topk_regions.cu and info_nce.cu (see launch.h). Every launch goes to
// the current CUDA stream of the inputs' device. Outputs follow the schemas exactly: lse,
// losses and the fused total in the accumulation dtype (float64 for float64 inputs, else
// float32), everything else in the inputs' dtype (indices int64).
// Per-operator ATen headers (not ATen/ATen.h): this file compiles ~3x faster.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>

#include "launch.h"

namespace art_fast {

namespace {

using cuda::DType;

#define ART_CHECK_CUDA_CONTIG(x, name)                                                      \
  TORCH_CHECK((x).device().is_cuda(), "art_fast: ", name, " must be a CUDA tensor, got ",   \
              (x).device());                                                                \
  TORCH_CHECK((x).is_contiguous(), "art_fast: ", name, " must be contiguous")

#define ART_CHECK_DIM(x, name, n, shape)                                                    \
  TORCH_CHECK((x).dim() == (n), "art_fast: ", name, " must have shape ", shape, ", got ",   \
              (x).sizes())

#define ART_CHECK_SAME_DEVICE(x, ref, name, refname)                                        \
  TORCH_CHECK((x).device() == (ref).device(), "art_fast: ", name,                          \
              " must be on the device of ", refname, " (", (ref).device(), "), got ",       \
              (x).device())

DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kDouble: return DType::f64;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default:
      TORCH_CHECK(false, "art_fast: ", name,
                  " must be float32, bfloat16, float16 or float64, got ", t.scalar_type());
  }
  return DType::f32;  // not reached
}

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

constexpr int64_t kMaxGrid = std::numeric_limits<int32_t>::max();
// Largest extent the kernels index with 32-bit integers (inside one (b, h) pair / group).
constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "art_fast: ", op, ": CUDA error: ", cudaGetErrorString(err));
}

const void* opt_ptr(const std::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined() && t->numel() > 0) ? t->data_ptr() : nullptr;
}

// ---- cross_attention --------------------------------------------------------------------------
cuda::CrossAttnDims ca_check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  ART_CHECK_CUDA_CONTIG(q, "q");
  ART_CHECK_CUDA_CONTIG(k, "k");
  ART_CHECK_CUDA_CONTIG(v, "v");
  ART_CHECK_SAME_DEVICE(k, q, "k", "q");
  ART_CHECK_SAME_DEVICE(v, q, "v", "q");
  ART_CHECK_DIM(q, "q", 4, "[B, H, M, D]");
  ART_CHECK_DIM(k, "k", 4, "[B, H, N, D]");
  TORCH_CHECK(v.sizes() == k.sizes(), "art_fast: v must have the shape of k ", k.sizes(),
              ", got ", v.sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && k.scalar_type() == v.scalar_type(),
              "art_fast: q, k, v must share one dtype");
  dtype_of(q, "q");
  cuda::CrossAttnDims d{k.size(0), q.size(0), k.size(1), q.size(2), k.size(2), k.size(3)};
  TORCH_CHECK(d.Bq == d.B || d.Bq == 1, "art_fast: q must have shape [B or 1, H, M, D]");
  TORCH_CHECK(q.size(1) == d.H && q.size(3) == d.D,
              "art_fast: q must have shape [B, H, M, D] with H, D of k");
  TORCH_CHECK(d.B > 0 && d.H > 0 && d.M > 0 && d.N > 0 && d.D > 0,
              "art_fast: cross_attention got an empty tensor");
  TORCH_CHECK(d.B * d.H <= kMaxGrid, "art_fast: cross_attention (CUDA) needs B*H < 2^31");
  TORCH_CHECK(d.M * d.N <= kMaxInt32 && d.M * d.D <= kMaxInt32 && d.N * d.D <= kMaxInt32,
              "art_fast: cross_attention (CUDA) indexes one (b, h) pair with 32-bit integers: "
              "M*N, M*D and N*D must be < 2^31, got M = ", d.M, ", N = ", d.N, ", D = ", d.D);
  return d;
}

void ca_check_smem(const cuda::CrossAttnDims& d, DType dt, bool backward) {
  const size_t need = cuda::cross_attention_smem(d, dt, backward, 1);
  const size_t have = cuda::cuda_max_smem();
  TORCH_CHECK(need <= have, "art_fast: cross_attention (CUDA) keeps the queries of one (b, h) ",
              "pair in shared memory: M = ", d.M, ", D = ", d.D, " need ", need,
              " bytes, the device allows ", have, "; use backend='torch' (or 'triton') for ",
              "such shapes");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_attention_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
    bool return_weights) {
  const auto d = ca_check(q, k, v);
  const c10::cuda::CUDAGuard guard(q.device());
  const DType dt = dtype_of(q, "q");
  ca_check_smem(d, dt, false);
  auto out = at::empty({d.B, d.H, d.M, d.D}, q.options());
  auto lse = at::empty({d.B, d.H, d.M}, q.options().dtype(acc_dtype(q.scalar_type())));
  auto weights = return_weights ? at::empty({d.B, d.H, d.M, d.N}, q.options())
                                : at::empty({0}, q.options());
  check_launch(cuda::cross_attention_fwd_launch(
                   dt, q.data_ptr(), k.data_ptr(), v.data_ptr(), scale, d, out.data_ptr(),
                   lse.data_ptr(), return_weights ? weights.data_ptr() : nullptr,
                   c10::cuda::getCurrentCUDAStream(q.device().index()).stream()),
               "cross_attention_fwd");
  return {out, lse, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_attention_bwd_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, double scale) {
  (void)out;  // the backward recomputes the softmax statistics (see cross_attention.cu)
  const auto d = ca_check(q, k, v);
  ART_CHECK_CUDA_CONTIG(grad_out, "grad_out");
  ART_CHECK_SAME_DEVICE(grad_out, q, "grad_out", "q");
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({d.B, d.H, d.M, d.D}) &&
                  grad_out.scalar_type() == q.scalar_type(),
              "art_fast: grad_out must be [B, H, M, D] in the dtype of q");
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({d.B, d.H, d.M}) &&
                  lse.scalar_type() == acc_dtype(q.scalar_type()),
              "art_fast: lse must be [B, H, M] in the accumulation dtype");
  const void* gw = opt_ptr(grad_weights);
  if (gw) {
    ART_CHECK_CUDA_CONTIG(*grad_weights, "grad_weights");
    ART_CHECK_SAME_DEVICE(*grad_weights, q, "grad_weights", "q");
    TORCH_CHECK(grad_weights->sizes() == at::IntArrayRef({d.B, d.H, d.M, d.N}) &&
                    grad_weights->scalar_type() == q.scalar_type(),
                "art_fast: grad_weights must be [B, H, M, N] in the dtype of q");
  }
  const c10::cuda::CUDAGuard guard(q.device());
  const DType dt = dtype_of(q, "q");
  ca_check_smem(d, dt, true);
  auto dq = at::empty_like(q);
  auto dk = at::empty_like(k);
  auto dv = at::empty_like(v);
  at::Tensor part;
  if (d.Bq != d.B) {
    part = at::empty({d.B, d.H, d.M, d.D}, q.options().dtype(acc_dtype(q.scalar_type())));
  }
  check_launch(cuda::cross_attention_bwd_launch(
                   dt, grad_out.data_ptr(), gw, q.data_ptr(), k.data_ptr(), v.data_ptr(), scale,
                   d, dq.data_ptr(), part.defined() ? part.data_ptr() : nullptr, dk.data_ptr(),
                   dv.data_ptr(), c10::cuda::getCurrentCUDAStream(q.device().index()).stream()),
               "cross_attention_bwd");
  return {dq, dk, dv};
}

// ---- topk_regions ----------------------------------------------------------------------------
cuda::TopkDims tk_check(const at::Tensor& scores, const at::Tensor& values) {
  ART_CHECK_CUDA_CONTIG(scores, "scores");
  ART_CHECK_CUDA_CONTIG(values, "values");
  ART_CHECK_SAME_DEVICE(values, scores, "values", "scores");
  ART_CHECK_DIM(scores, "scores", 3, "[B, M, N]");
  ART_CHECK_DIM(values, "values", 3, "[B, N, C]");
  TORCH_CHECK(scores.scalar_type() == values.scalar_type(),
              "art_fast: scores and values must share one dtype, got ", scores.scalar_type(),
              " and ", values.scalar_type());
  dtype_of(scores, "scores");
  cuda::TopkDims d{scores.size(0), scores.size(1), scores.size(2), values.size(2), 0};
  TORCH_CHECK(values.size(0) == d.B && values.size(1) == d.N,
              "art_fast: values must have shape [B, N, C] with B, N of scores ", scores.sizes(),
              ", got ", values.sizes());
  TORCH_CHECK(d.N < int64_t(0xFFFFFFFF), "art_fast: topk_regions needs N < 2^32 - 1, got ", d.N);
  TORCH_CHECK(d.B * d.M <= kMaxGrid, "art_fast: topk_regions (CUDA) needs B*M < 2^31");
  return d;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_regions_fwd_cuda(
    const at::Tensor& scores, const at::Tensor& values, int64_t k) {
  auto d = tk_check(scores, values);
  TORCH_CHECK(k >= 1 && k <= d.N, "art_fast: topk_regions needs 1 <= k <= N = ", d.N,
              ", got k = ", k);
  d.k = k;
  const c10::cuda::CUDAGuard guard(scores.device());
  auto pooled = at::empty({d.B, d.M, d.C}, values.options());
  auto indices = at::empty({d.B, d.M, k}, scores.options().dtype(at::kLong));
  auto weights = at::empty({d.B, d.M, k}, scores.options());
  if (d.B * d.M == 0) return {pooled, indices, weights};
  at::Tensor scratch;
  const size_t sb = cuda::topk_scratch_bytes(d);
  if (sb > 0) scratch = at::empty({static_cast<int64_t>(sb)}, scores.options().dtype(at::kByte));
  check_launch(cuda::topk_regions_fwd_launch(
                   dtype_of(scores, "scores"), scores.data_ptr(), values.data_ptr(), d,
                   pooled.data_ptr(), indices.data_ptr<int64_t>(), weights.data_ptr(),
                   sb > 0 ? scratch.data_ptr() : nullptr,
                   c10::cuda::getCurrentCUDAStream(scores.device().index()).stream()),
               "topk_regions_fwd");
  return {pooled, indices, weights};
}

std::tuple<at::Tensor, at::Tensor> topk_regions_bwd_cuda(
    const at::Tensor& grad_pooled, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& scores, const at::Tensor& values, const at::Tensor& indices) {
  auto d = tk_check(scores, values);
  ART_CHECK_CUDA_CONTIG(indices, "indices");
  ART_CHECK_SAME_DEVICE(indices, scores, "indices", "scores");
  ART_CHECK_DIM(indices, "indices", 3, "[B, M, k]");
  TORCH_CHECK(indices.scalar_type() == at::kLong, "art_fast: indices must be int64, got ",
              indices.scalar_type());
  const int64_t k = indices.size(2);
  TORCH_CHECK(indices.size(0) == d.B && indices.size(1) == d.M && k >= 1 && k <= d.N,
              "art_fast: indices must have shape [B, M, k] with 1 <= k <= N for scores ",
              scores.sizes(), ", got ", indices.sizes());
  d.k = k;
  ART_CHECK_CUDA_CONTIG(grad_pooled, "grad_pooled");
  ART_CHECK_SAME_DEVICE(grad_pooled, scores, "grad_pooled", "scores");
  TORCH_CHECK(grad_pooled.sizes() == at::IntArrayRef({d.B, d.M, d.C}) &&
                  grad_pooled.scalar_type() == values.scalar_type(),
              "art_fast: grad_pooled must be [B, M, C] = ", at::IntArrayRef({d.B, d.M, d.C}),
              " in the dtype of values, got ", grad_pooled.sizes(), " ",
              grad_pooled.scalar_type());
  const void* gw = opt_ptr(grad_weights);
  if (gw) {
    ART_CHECK_CUDA_CONTIG(*grad_weights, "grad_weights");
    ART_CHECK_SAME_DEVICE(*grad_weights, scores, "grad_weights", "scores");
    TORCH_CHECK(grad_weights->sizes() == indices.sizes() &&
                    grad_weights->scalar_type() == scores.scalar_type(),
                "art_fast: grad_weights must be [B, M, k] = ", indices.sizes(),
                " in the dtype of scores, got ", grad_weights->sizes(), " ",
                grad_weights->scalar_type());
  }
  const c10::cuda::CUDAGuard guard(scores.device());
  auto grad_scores = at::empty_like(scores);
  auto grad_values = at::empty_like(values);
  if (grad_scores.numel() == 0 && grad_values.numel() == 0) return {grad_scores, grad_values};
  if (d.B * d.M == 0) {
    grad_values.zero_();
    return {grad_scores, grad_values};
  }
  TORCH_CHECK(d.B * ((d.N + 15) / 16) * ((d.C + 255) / 256) <= kMaxGrid,
              "art_fast: topk_regions (CUDA): B*N*C too large for one grid");
  auto wsc = at::empty({2 * d.B * d.M * k}, scores.options().dtype(acc_dtype(scores.scalar_type())));
  check_launch(cuda::topk_regions_bwd_launch(
                   dtype_of(scores, "scores"), grad_pooled.data_ptr(), gw, scores.data_ptr(),
                   values.data_ptr(), indices.data_ptr<int64_t>(), d, grad_scores.data_ptr(),
                   grad_values.data_ptr(), wsc.data_ptr(),
                   c10::cuda::getCurrentCUDAStream(scores.device().index()).stream()),
               "topk_regions_bwd");
  return {grad_scores, grad_values};
}

// ---- info_nce ---------------------------------------------------------------------------------
cuda::NceDims nce_check(const at::Tensor& a, const at::Tensor& c, const at::Tensor& targets,
                        double temperature) {
  ART_CHECK_CUDA_CONTIG(a, "anchors");
  ART_CHECK_CUDA_CONTIG(c, "candidates");
  ART_CHECK_SAME_DEVICE(c, a, "candidates", "anchors");
  ART_CHECK_DIM(a, "anchors", 3, "[G, M, D]");
  ART_CHECK_DIM(c, "candidates", 3, "[G, N, D]");
  TORCH_CHECK(a.scalar_type() == c.scalar_type(),
              "art_fast: anchors and candidates must share one dtype, got ", a.scalar_type(),
              " and ", c.scalar_type());
  dtype_of(a, "anchors");
  TORCH_CHECK(a.size(0) == c.size(0) && a.size(2) == c.size(2),
              "art_fast: anchors [G, M, D] and candidates [G, N, D] must agree on G and D, got ",
              a.sizes(), " and ", c.sizes());
  cuda::NceDims d{a.size(0), a.size(1), c.size(1), a.size(2)};
  TORCH_CHECK(d.N > 0 && d.D > 0, "art_fast: info_nce needs N > 0 candidates and D > 0");
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature),
              "art_fast: info_nce temperature must be finite and > 0, got ", temperature);
  TORCH_CHECK(targets.device().is_cuda(), "art_fast: targets must be a CUDA tensor, got ",
              targets.device());
  ART_CHECK_SAME_DEVICE(targets, a, "targets", "anchors");
  TORCH_CHECK(targets.scalar_type() == at::kLong, "art_fast: targets must be int64, got ",
              targets.scalar_type());
  TORCH_CHECK(targets.sizes() == at::IntArrayRef({d.G, d.M}),
              "art_fast: targets must have shape [G, M] = [", d.G, ", ", d.M, "], got ",
              targets.sizes());
  // (the values of targets are not checked here: that needs a device -> host copy; a target
  //  outside [0, N) that is not -100 gives a NaN loss and gradient, never an out-of-bounds
  //  read; the Python wrapper rejects such targets before the call)
  TORCH_CHECK(d.G * ((std::max(d.M, d.N) + 31) / 32) <= kMaxGrid &&
                  d.G * std::max(d.M, d.N) * 32 <= int64_t(256) * kMaxGrid,
              "art_fast: info_nce (CUDA): G*M or G*N too large for one grid");
  TORCH_CHECK(d.M * d.D <= kMaxInt32 && d.N * d.D <= kMaxInt32,
              "art_fast: info_nce (CUDA) indexes one group with 32-bit integers: M*D and N*D "
              "must be < 2^31, got M = ", d.M, ", N = ", d.N, ", D = ", d.D);
  return d;
}

at::Tensor nce_row_tensor(const at::Tensor& x, const char* name, const cuda::NceDims& d,
                          const at::Tensor& ref) {
  ART_CHECK_SAME_DEVICE(x, ref, name, "anchors");
  const auto acc = acc_dtype(ref.scalar_type());
  TORCH_CHECK(x.scalar_type() == acc && x.sizes() == at::IntArrayRef({d.G, d.M}),
              "art_fast: ", name, " must be [G, M] = [", d.G, ", ", d.M, "] ", acc, ", got ",
              x.sizes(), " ", x.scalar_type());
  return x.contiguous();
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

at::Tensor nce_scratch(const cuda::NceDims& d, const at::Tensor& a, bool grad) {
  const size_t bytes = cuda::info_nce_scratch_bytes(d, dtype_of(a, "anchors"), grad);
  return at::empty({static_cast<int64_t>(bytes)}, a.options().dtype(at::kByte));
}

std::tuple<at::Tensor, at::Tensor> info_nce_fwd_cuda(const at::Tensor& anchors,
                                                     const at::Tensor& candidates,
                                                     const at::Tensor& targets,
                                                     double temperature, bool normalize) {
  const auto d = nce_check(anchors, candidates, targets, temperature);
  const c10::cuda::CUDAGuard guard(anchors.device());
  const at::Tensor t = targets.contiguous();
  const auto acc = acc_dtype(anchors.scalar_type());
  auto loss = at::empty({d.G, d.M}, anchors.options().dtype(acc));
  auto lse = at::empty({d.G, d.M}, anchors.options().dtype(acc));
  if (d.G * d.M == 0) return {loss, lse};
  auto scratch = nce_scratch(d, anchors, false);
  check_launch(cuda::info_nce_launch(dtype_of(anchors, "anchors"), anchors.data_ptr(),
                                     candidates.data_ptr(), t.data_ptr<int64_t>(),
                                     temperature, normalize, false, nce_allow_tf32(), d,
                                     loss.data_ptr(), lse.data_ptr(), nullptr, nullptr, nullptr,
                                     nullptr, nullptr, scratch.data_ptr(),
                                     c10::cuda::getCurrentCUDAStream(anchors.device().index())
                                         .stream()),
               "info_nce_fwd");
  return {loss, lse};
}

std::tuple<at::Tensor, at::Tensor> info_nce_bwd_cuda(const at::Tensor& grad_loss,
                                                     const at::Tensor& anchors,
                                                     const at::Tensor& candidates,
                                                     const at::Tensor& targets,
                                                     const at::Tensor& lse, double temperature,
                                                     bool normalize) {
  const auto d = nce_check(anchors, candidates, targets, temperature);
  const at::Tensor gl = nce_row_tensor(grad_loss, "grad_loss", d, anchors);
  const at::Tensor l = nce_row_tensor(lse, "lse", d, anchors);
  const c10::cuda::CUDAGuard guard(anchors.device());
  const at::Tensor t = targets.contiguous();
  auto da = at::empty_like(anchors);
  auto dc = at::empty_like(candidates);
  if (d.G * d.M == 0) {
    dc.zero_();
    return {da, dc};
  }
  auto scratch = nce_scratch(d, anchors, true);
  check_launch(cuda::info_nce_launch(dtype_of(anchors, "anchors"), anchors.data_ptr(),
                                     candidates.data_ptr(), t.data_ptr<int64_t>(),
                                     temperature, normalize, false, nce_allow_tf32(), d,
                                     nullptr, nullptr, gl.data_ptr(), l.data_ptr(),
                                     da.data_ptr(), dc.data_ptr(), nullptr, scratch.data_ptr(),
                                     c10::cuda::getCurrentCUDAStream(anchors.device().index())
                                         .stream()),
               "info_nce_bwd");
  return {da, dc};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_fused_cuda(
    const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& targets,
    double temperature, bool normalize, bool mean, bool compute_grad) {
  const auto d = nce_check(anchors, candidates, targets, temperature);
  const c10::cuda::CUDAGuard guard(anchors.device());
  const at::Tensor t = targets.contiguous();
  const auto acc = acc_dtype(anchors.scalar_type());
  auto loss = at::empty({}, anchors.options().dtype(acc));
  at::Tensor da = compute_grad ? at::empty_like(anchors) : at::empty({0}, anchors.options());
  at::Tensor dc =
      compute_grad ? at::empty_like(candidates) : at::empty({0}, candidates.options());
  if (d.G * d.M == 0) {
    loss.zero_();
    if (compute_grad) dc.zero_();
    return {loss, da, dc};
  }
  auto scratch = nce_scratch(d, anchors, compute_grad);
  check_launch(cuda::info_nce_launch(dtype_of(anchors, "anchors"), anchors.data_ptr(),
                                     candidates.data_ptr(), t.data_ptr<int64_t>(),
                                     temperature, normalize, mean, nce_allow_tf32(), d,
                                     nullptr, nullptr, nullptr, nullptr,
                                     compute_grad ? da.data_ptr() : nullptr,
                                     compute_grad ? dc.data_ptr() : nullptr, loss.data_ptr(),
                                     scratch.data_ptr(),
                                     c10::cuda::getCurrentCUDAStream(anchors.device().index())
                                         .stream()),
               "info_nce_fused");
  return {loss, da, dc};
}

}  // namespace

TORCH_LIBRARY_IMPL(art_fast, CUDA, m) {
  m.impl("cross_attention_fwd", &cross_attention_fwd_cuda);
  m.impl("cross_attention_bwd", &cross_attention_bwd_cuda);
  m.impl("topk_regions_fwd", &topk_regions_fwd_cuda);
  m.impl("topk_regions_bwd", &topk_regions_bwd_cuda);
  m.impl("info_nce_fwd", &info_nce_fwd_cuda);
  m.impl("info_nce_bwd", &info_nce_bwd_cuda);
  m.impl("info_nce_fused", &info_nce_fused_cuda);
}

}  // namespace art_fast
