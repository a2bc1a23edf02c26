// art_fast._C: what the input contracts of every operator share: the check macros, the
// accumulation dtype and has_values. Included by each op's contract header csrc/<op>.h, which
// holds the op's dims and its device-neutral check_<op>_fwd / check_<op>_bwd (inline, run by
// both its CPU kernels cpu/<op>.cpp and its CUDA host wrappers in cuda/<op>.cu): shapes,
// dtypes, contiguity and "every tensor on the device of the first input". What only one device
// needs stays with that device's code: the device type of the first input ("must be a CPU
// tensor" / "must be a CUDA tensor", one ART_CHECK_DEVICE_TYPE before the check_<op>_* call;
// the others then follow from the same-device checks), checks that read tensor values (CPU),
// and the limits of one kernel's implementation (the CUDA kernels' 32-bit index math and grid
// sizes, shared memory; the rank keys of the topk selection). The Python wrappers in
// art_fast/ops/ validate user input before these are reached; the kernels re-check what they
// rely on here, so a direct torch.ops call with a bad shape is an error, never an
// out-of-bounds access.
//
// Adding an op edits nothing here (docs/adding_an_op.md): its contract csrc/<op>.h, its CPU
// kernels and schemas cpu/<op>.cpp and its CUDA kernels and host code cuda/<op>.cu, each
// registering itself (setup.py globs them).
//
// Per-operator ATen headers only (not ATen/ATen.h), so that the files that include this (the
// .cu files too) keep compiling fast.
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

}  // namespace art_fast
