// Launchers of the CUDA kernels (csrc/cuda/<op>.cu), called by the host wrappers
// (csrc/cuda/<op>_host.cpp).
//
// Plain C++ (no ATen, no CUDA device code): pointers are untyped and the element type is a
// DType, so the host wrappers compile with the C++ compiler and the .cu files include only
// CUDA headers. Every launcher runs on `stream`, returns the first CUDA error it met (launch
// or attribute), and expects contiguous tensors of the shapes given (checked by the caller).
// Element types: the inputs' dtype `dt`; "acc" = float (double for DType::f64) for lse,
// losses, partial sums and scratch.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace art_fast {
namespace cuda {

enum class DType { f32, f64, f16, bf16 };

// ---- cross_attention --------------------------------------------------------------------------
// The kernels index inside one (b, h) pair with 32-bit integers: M * N, M * D and N * D must
// be < 2^31 (checked by cross_attention_host.cpp); the offsets of the pairs are 64-bit.
struct CrossAttnDims {
  int64_t B, Bq, H, M, N, D;
};

// Dynamic shared memory the cross-attention kernels need with `tile` patches per tile; the
// launchers pick the largest tile (<= 64) that fits the device, or report
// cudaErrorInvalidConfiguration when even one patch per tile does not.
size_t cross_attention_smem(const CrossAttnDims& s, DType dt, bool backward, int tile);
size_t cuda_max_smem();

// out [B,H,M,D], lse [B,H,M] acc, weights [B,H,M,N] or nullptr.
cudaError_t cross_attention_fwd_launch(DType dt, const void* q, const void* k, const void* v,
                                       double scale, const CrossAttnDims& s, void* out,
                                       void* lse, void* weights, cudaStream_t stream);
// dq: [Bq,H,M,D] in the input dtype; dq_part: [B,H,M,D] acc scratch, used (and then summed
// over b in a fixed order into dq) when Bq == 1; grad_weights may be nullptr.
cudaError_t cross_attention_bwd_launch(DType dt, const void* grad_out, const void* grad_weights,
                                       const void* q, const void* k, const void* v,
                                       double scale, const CrossAttnDims& s, void* dq,
                                       void* dq_part, void* dk, void* dv, cudaStream_t stream);

// ---- topk_regions -----------------------------------------------------------------------------
struct TopkDims {
  int64_t B, M, N, C, k;
};
// Rows with N > kTopkSharedMax sort their keys in a global scratch buffer of
// topk_scratch_bytes(s) bytes (0 otherwise).
constexpr int64_t kTopkSharedMax = 1024;
size_t topk_scratch_bytes(const TopkDims& s);

// pooled [B,M,C], indices [B,M,k] int64, weights [B,M,k].
cudaError_t topk_regions_fwd_launch(DType dt, const void* scores, const void* values,
                                    const TopkDims& s, void* pooled, int64_t* indices,
                                    void* weights, void* scratch, cudaStream_t stream);
// grad_scores [B,M,N], grad_values [B,N,C]; w_scratch: 2 * B*M*k acc values of scratch (the
// recomputed weights and dw); grad_weights may be nullptr.
cudaError_t topk_regions_bwd_launch(DType dt, const void* grad_pooled, const void* grad_weights,
                                    const void* scores, const void* values,
                                    const int64_t* indices, const TopkDims& s,
                                    void* grad_scores, void* grad_values, void* w_scratch,
                                    cudaStream_t stream);

// ---- info_nce ---------------------------------------------------------------------------------
struct NceDims {
  int64_t G, M, N, D;
};

// Scratch (bytes) that info_nce_launch needs for these dims, mode and dtype.
size_t info_nce_scratch_bytes(const NceDims& s, DType dt, bool grad);

// One entry point for the three ops:
//   loss, lse     [G,M] acc, or nullptr (not wanted)
//   grad_loss     [G,M] acc upstream gradient per row, or nullptr: then each non-ignored row
//                 gets the weight 1 / max(count, 1) (mean) or 1 (sum), count = the number of
//                 non-ignored rows, counted on the device (no host synchronisation).
//   saved_lse     [G,M] acc from the forward (backward only; the large regime uses it).
//   ga, gc        [G,M,D], [G,N,D] in the input dtype, or nullptr (no gradient wanted).
//   total         [] acc: the reduced loss (mean or sum), or nullptr.
//   scratch       info_nce_scratch_bytes(...) bytes of device memory.
//   allow_tf32    float32 inputs in the large regime may use TF32 tensor cores (torch's
//                 allow_tf32 for CUDA matmuls); otherwise float32 takes the exact FMA path.
//                 bfloat16 / float16 use tensor cores on sm_80+ regardless, float64 never.
// The large regime needs M * D and N * D < 2^31 (32-bit offsets inside a group).
cudaError_t info_nce_launch(DType dt, const void* anchors, const void* candidates,
                            const int64_t* targets, double temperature, bool normalize,
                            bool mean, bool allow_tf32, const NceDims& s, void* loss,
                            void* lse, const void* grad_loss, const void* saved_lse, void* ga,
                            void* gc, void* total, void* scratch, cudaStream_t stream);

}  // namespace cuda
}  // namespace art_fast
