// Temporary: replaced by the real kernel.
#include "../ops.h"
namespace art_fast {
std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_regions_fwd_cpu(const at::Tensor&, const at::Tensor&, int64_t) { TORCH_CHECK(false, "todo"); }
std::tuple<at::Tensor, at::Tensor> topk_regions_bwd_cpu(const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, const at::Tensor&) { TORCH_CHECK(false, "todo"); }
}
