// art_fast._C: the Python module entry point (what the build holds).
//
// The operators register themselves under torch.ops.art_fast when the module is loaded: each
// op's contract (dims, device-neutral input checks, CUDA launchers) is the header <op>.h, its
// schemas (TORCH_LIBRARY_FRAGMENT) and CPU kernels are cpu/<op>.cpp, its CUDA kernels and host
// wrappers cuda/<op>.cu (each of the two ending with its own TORCH_LIBRARY_IMPL). Fake kernels
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
