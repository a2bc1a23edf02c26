// art_fast._C: the Python module entry point (what the build holds).
//
// The operators register themselves under torch.ops.art_fast when the module is loaded: each
// op's contract (dims, device-neutral input checks, CUDA launchers, the host functions of both
// devices) is the header <op>.h, its schemas and CPU kernels are cpu/<op>.cpp (ending with
// ART_FAST_DEFINE_OP: TORCH_LIBRARY_FRAGMENT and the CPU TORCH_LIBRARY_IMPL), its CUDA kernels
// cuda/<op>.cu (ending with ART_FAST_IMPL(CUDA, ...): its TORCH_LIBRARY_IMPL). Fake kernels
// and the autograd formulas are registered from Python (art_fast/ops/<op>.py), as in
// pytorch/extension-cpp; art_fast/_ext.py checks which op has a kernel for which device.
#include <torch/extension.h>

namespace {
bool compiled_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "art_fast compiled kernels; the operators live under torch.ops.art_fast";
  m.def("compiled_with_openmp", &compiled_with_openmp,
        "Whether the CPU kernels were compiled with OpenMP");
#ifdef ART_FAST_WITH_CUDA
  m.attr("compiled_with_cuda") = true;
#else
  m.attr("compiled_with_cuda") = false;
#endif
}
