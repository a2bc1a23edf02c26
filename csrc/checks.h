// art_fast._C: the input contract of every operator, shared by the CPU kernels (cpu/<op>.cpp)
// and the CUDA host wrappers (cuda/<op>_host.cpp).
//
// The check macros are defined here, once. Each op's file csrc/<op>.cpp defines its schemas
// (TORCH_LIBRARY_FRAGMENT, with the tensor contracts next to them) and the device-neutral
// check_<op>_* functions declared below: shapes, dtypes, contiguity and "every tensor on the
// device of the first input". What only one device needs stays with that device's code: the
// device type of the first input ("must be a CPU tensor" / "must be a CUDA tensor", one
// ART_CHECK_DEVICE_TYPE before the check_<op>_* call; the others then follow from the
// same-device checks), checks that read tensor values (CPU), and the limits of one kernel's
// implementation (the CUDA kernels' 32-bit index math and grid sizes, shared memory; the rank
// keys of the topk selection). The Python wrappers in art_fast/ops/ validate user input
// before these are reached; the kernels re-check what they rely on here, so a direct
// torch.ops call with a bad shape is an error, never an out-of-bounds access.
//
// Adding an op: its schema + check file csrc/<op>.cpp, its kernels cpu/<op>.cpp (and
// cuda/<op>.cu + cuda/<op>_host.cpp), each registering itself (setup.py globs them); shared
// files only gain declarations: its check_<op>_* here, its launchers in cuda/launch.h, its
// entry points in art_fast/_ext.py (ENTRIES).
//
// Per-operator ATen headers only (not ATen/ATen.h), so that the CUDA host files that include
// this keep compiling fast.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

// x lives on a device of type `devtype` (c10::kCPU, c10::kCUDA): "art_fast: q must be a CUDA
// tensor, got cpu".
#define ART_CHECK_DEVICE_TYPE(x, name, devtype)                                             \
  TORCH_CHECK((x).device().type() == (devtype), "art_fast: ", name, " must be a ",         \
              c10::DeviceTypeName(devtype), " tensor, got ", (x).device())

#define ART_CHECK_CONTIG(x, name)                                                           \
  TORCH_CHECK((x).is_contiguous(), "art_fast: ", name, " must be contiguous")

#define ART_CHECK_SAME_DEVICE(x, ref, name, refname)                                        \
  TORCH_CHECK((x).device() == (ref).device(), "art_fast: ", name,                          \
              " must be on the device of ", refname, " (", (ref).device(), "), got ",       \
              (x).device())

#define ART_CHECK_DIM(x, name, n, shape)                                                    \
  TORCH_CHECK((x).dim() == (n), "art_fast: ", name, " must have shape ", shape, ", got ",   \
              (x).sizes())

// The floating dtypes every kernel is instantiated for.
#define ART_CHECK_FLOAT_DTYPE(x, name)                                                      \
  TORCH_CHECK((x).scalar_type() == at::kFloat || (x).scalar_type() == at::kDouble ||       \
                  (x).scalar_type() == at::kHalf || (x).scalar_type() == at::kBFloat16,    \
              "art_fast: ", name, " must be float32, bfloat16, float16 or float64, got ",   \
              (x).scalar_type())

namespace art_fast {

// The accumulation dtype: float64 for float64 inputs, float32 for float32/bf16/fp16. Saved
// row statistics (log-sum-exp) and losses are kept in it.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// An optional gradient that is given and holds values (autograd passes None, or an undefined
// or empty tensor, for an output that got no gradient).
inline bool has_values(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() && t->numel() > 0;
}

// ---- cross_attention (csrc/cross_attention.cpp) -----------------------------------------------
struct CrossAttentionDims {
  int64_t B, Bq, H, M, N, D;
};
// q [Bq,H,M,D] (Bq in {1, B}), k, v [B,H,N,D]: contiguous, on the device of q, one supported
// dtype, no empty dimension.
CrossAttentionDims check_cross_attention_fwd(const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v);
// The forward's inputs, and grad_out [B,H,M,D] (dtype of q), grad_weights [B,H,M,N] (dtype of
// q; only when has_values), lse [B,H,M] (accumulation dtype): contiguous, on the device of q.
CrossAttentionDims check_cross_attention_bwd(const at::Tensor& grad_out,
                                             const std::optional<at::Tensor>& grad_weights,
                                             const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v, const at::Tensor& lse);

// ---- topk_regions (csrc/topk_regions.cpp) -----------------------------------------------------
struct TopkRegionsDims {
  int64_t B, M, N, C, k;
};
// scores [B,M,N], values [B,N,C] (one supported dtype), 1 <= k <= N: contiguous, on the
// device of scores.
TopkRegionsDims check_topk_regions_fwd(const at::Tensor& scores, const at::Tensor& values,
                                       int64_t k);
// scores and values as in the forward, indices [B,M,k] int64 (1 <= k <= N; the values are the
// kernel's to check), grad_pooled [B,M,C] (dtype of values), grad_weights [B,M,k] (dtype of
// scores; only when has_values): contiguous, on the device of scores. Returns k of indices.
TopkRegionsDims check_topk_regions_bwd(const at::Tensor& grad_pooled,
                                       const std::optional<at::Tensor>& grad_weights,
                                       const at::Tensor& scores, const at::Tensor& values,
                                       const at::Tensor& indices);

// ---- info_nce (csrc/info_nce.cpp) -------------------------------------------------------------
struct InfoNceDims {
  int64_t G, M, N, D;
};
// anchors [G,M,D], candidates [G,N,D] (contiguous, one supported dtype, N > 0, D > 0),
// targets [G,M] int64 (any layout; its values are the kernel's to check), temperature finite
// and > 0; every tensor on the device of anchors. Also the check of info_nce_fused.
InfoNceDims check_info_nce_fwd(const at::Tensor& anchors, const at::Tensor& candidates,
                               const at::Tensor& targets, double temperature);
// The forward's inputs, and grad_loss, lse [G,M] in the accumulation dtype (any layout), on
// the device of anchors.
InfoNceDims check_info_nce_bwd(const at::Tensor& grad_loss, const at::Tensor& anchors,
                               const at::Tensor& candidates, const at::Tensor& targets,
                               const at::Tensor& lse, double temperature);

}  // namespace art_fast
