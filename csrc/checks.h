// art_fast._C: what the input contracts and the host functions of every operator share: the
// check macros and check_float_inputs, the accumulation dtype, has_values / values_or_null and
// the registration macros. Included by each op's contract header csrc/<op>.h, which holds the
// op's dims, its device-neutral check_<op>_fwd / check_<op>_bwd (shapes, dtypes, contiguity and
// "every tensor on the device of the first input") and its host functions, one per entry for
// both devices (templates on the device side: cpu/<op>.cpp and cuda/<op>.cu each provide
// theirs). A host function checks the device type of the first input ("must be a CPU tensor" /
// "must be a CUDA tensor", one ART_CHECK_DEVICE_TYPE before the check_<op>_* call; the others
// then follow from the same-device checks), then the contract; what only one device needs stays
// with that device's side: checks that read tensor values (CPU), and the limits of one kernel's
// implementation (the CUDA kernels' 32-bit index math and grid sizes, shared memory; the rank
// keys of the topk selection). The Python wrappers in art_fast/ops/ validate user input before
// these are reached; the kernels re-check what they rely on here, so a direct torch.ops call
// with a bad shape is an error, never an out-of-bounds access.
//
// Adding an op edits nothing here (docs/adding_an_op.md): its contract and host functions
// csrc/<op>.h, its CPU kernels and schemas cpu/<op>.cpp and its CUDA kernels cuda/<op>.cu, each
// registering itself (setup.py globs them).
//
// Per-operator ATen headers only (not ATen/ATen.h), so that the files that include this (the
// .cu files too) keep compiling fast.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>
#include <initializer_list>
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

// ---- registration --------------------------------------------------------------------------
// An op registers itself at the end of its two files: cpu/<op>.cpp with
//   ART_FAST_DEFINE_OP(art_fast::<op>_impl<its CPU side>, "<schema>", ...)
// its schemas (one TORCH_LIBRARY_FRAGMENT: that file is compiled in every build, CUDA or not,
// so the op is defined wherever the extension is) and its CPU kernels, cuda/<op>.cu with
//   ART_FAST_IMPL(CUDA, art_fast::<op>_impl<its CUDA side>)
// its CUDA kernels. <op>_impl<Dev> (csrc/<op>.h) registers the op's host functions for the
// device of Dev.
#define ART_FAST_IMPL(key, impl)                                                            \
  TORCH_LIBRARY_IMPL(art_fast, key, m) { impl(m); }

#define ART_FAST_DEFINE_OP(impl, ...)                                                       \
  TORCH_LIBRARY_FRAGMENT(art_fast, m) {                                                     \
    for (const char* schema : {__VA_ARGS__}) m.def(schema);                                 \
  }                                                                                         \
  ART_FAST_IMPL(CPU, impl)

namespace art_fast {

// A tensor argument as the messages name it: "anchors", of rank 3, shape "[G, M, D]" (the
// names of DESIGN §3).
struct Arg {
  const at::Tensor& t;
  const char* name;
  int64_t dim;
  const char* shape;
};

// The floating inputs of an op: x, y and, when given, like_y, a second tensor of y's sizes (v
// of cross_attention, with k; its dim and shape are not read): each contiguous and on the
// device of x, x and y of their ranks, all of one dtype the kernels are instantiated for. The
// messages name the arguments: "art_fast: anchors and candidates must share one dtype, got
// Float and Double" ("art_fast: q, k, v must share one dtype" with like_y).
inline void check_float_inputs(const Arg& x, const Arg& y, const Arg* like_y = nullptr) {
  ART_CHECK_CONTIG(x.t, x.name);
  ART_CHECK_CONTIG(y.t, y.name);
  if (like_y) ART_CHECK_CONTIG(like_y->t, like_y->name);
  ART_CHECK_SAME_DEVICE(y.t, x.t, y.name, x.name);
  if (like_y) ART_CHECK_SAME_DEVICE(like_y->t, x.t, like_y->name, x.name);
  ART_CHECK_DIM(x.t, x.name, x.dim, x.shape);
  ART_CHECK_DIM(y.t, y.name, y.dim, y.shape);
  const at::ScalarType dt = x.t.scalar_type();
  if (like_y) {
    TORCH_CHECK(like_y->t.sizes() == y.t.sizes(), "art_fast: ", like_y->name,
                " must have the shape of ", y.name, " ", y.t.sizes(), ", got ",
                like_y->t.sizes());
    TORCH_CHECK(y.t.scalar_type() == dt && like_y->t.scalar_type() == dt, "art_fast: ",
                x.name, ", ", y.name, ", ", like_y->name, " must share one dtype");
  } else {
    TORCH_CHECK(y.t.scalar_type() == dt, "art_fast: ", x.name, " and ", y.name,
                " must share one dtype, got ", dt, " and ", y.t.scalar_type());
  }
  ART_CHECK_FLOAT_DTYPE(x.t, x.name);
}

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

// The tensor of an optional gradient when it holds values (has_values), else nullptr.
inline const at::Tensor* values_or_null(const std::optional<at::Tensor>& t) {
  return has_values(t) ? &*t : nullptr;
}

}  // namespace art_fast
