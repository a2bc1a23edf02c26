// art_fast._C: declarations shared by the schema registration (ops.cpp) and the per-device
// kernels (cpu/*.cpp, later cuda/*.cu). Tensor contracts (shapes, dtypes) are documented in
// ops.cpp next to each schema; the Python wrappers in art_fast/ops/ validate user input before
// these are reached, and every kernel re-checks what it relies on with TORCH_CHECK.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace art_fast {

// ---- cross_attention ------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
    bool return_weights);
std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_attention_bwd_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, double scale);

// ---- topk_regions ---------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_regions_fwd_cpu(
    const at::Tensor& scores, const at::Tensor& values, int64_t k);
std::tuple<at::Tensor, at::Tensor> topk_regions_bwd_cpu(
    const at::Tensor& grad_pooled, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& scores, const at::Tensor& values, const at::Tensor& indices);

// ---- info_nce -------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> info_nce_fwd_cpu(
    const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& targets,
    double temperature, bool normalize);
std::tuple<at::Tensor, at::Tensor> info_nce_bwd_cpu(
    const at::Tensor& grad_loss, const at::Tensor& anchors, const at::Tensor& candidates,
    const at::Tensor& targets, const at::Tensor& lse, double temperature, bool normalize);
std::tuple<at::Tensor, at::Tensor, at::Tensor> info_nce_fused_cpu(
    const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& targets,
    double temperature, bool normalize, bool mean, bool compute_grad);

}  // namespace art_fast
