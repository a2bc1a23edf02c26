// Temporary: replaced by the real kernel.
#include "../ops.h"
namespace art_fast {
std::tuple<at::Tensor, at::Tensor> info_nce_fwd_cpu(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, bool) { TORCH_CHECK(false, "todo"); }
std::tuple<at::Tensor, at::Tensor> info_nce_bwd_cpu(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, bool) { TORCH_CHECK(false, "todo"); }
}
