// art_fast._C: the Python module entry point (what the build holds).
//
// The operators register themselves under torch.ops.art_fast when the module is loaded: each
// op's schemas and device-neutral input checks in csrc/<op>.cpp (TORCH_LIBRARY_FRAGMENT), its
// CPU kernels in cpu/<op>.cpp and its CUDA host wrappers in cuda/<op>_host.cpp (each ending
// with its own TORCH_LIBRARY_IMPL). Fake kernels and the autograd formulas are registered from
// Python (art_fast/ops/<op>.py), as in pytorch/extension-cpp; art_fast/_ext.py checks which
// op has a kernel for which device.
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
