// C++ CPU kernel for art_fast::cross_attention_{fwd,bwd}.
//
// out = softmax(q k^T * scale) v, per (b, h), with M (queries) small and N (patches) ~ 200.
//
// Profile
//   inputs   q [Bq,H,M,D] (Bq = 1: one query set shared by all B groups), k, v [B,H,N,D];
//            float64, float32, bf16 or fp16, contiguous.
//   outputs  out [B,H,M,D] (input dtype), lse [B,H,M] float32, weights [B,H,M,N] on request.
//   saved    q, k, v, lse (out is part of the schema for the GPU kernels; this kernel does not
//            read it). The score matrix is never saved: the backward recomputes it from lse.
//   grid     at::parallel_for over the B*H (b, h) pairs; each pair is one task that owns its
//            outputs, so no two threads write the same element.
//   memory   per thread: k^T, v (N*D each) and the [M, N] scores, in the accumulation type.
//   precision fp32 accumulation for fp32/bf16/fp16 (float64 for float64); softmax subtracts the
//            row max before exp; the backward's row term delta = sum_n P dP is computed from
//            the recomputed P and dP in the accumulation type, not from the rounded out.
//   determinism every sum has a fixed order; the gradient of a shared query (Bq = 1) is summed
//            over b in increasing b after the parallel region, so results do not depend on the
//            thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../ops.h"
#include "common.h"

namespace art_fast {

namespace {

using cpu::axpy;
using cpu::fill;
using cpu::load;
using cpu::load_scaled;
using cpu::load_t;
using cpu::row_times_t;
using cpu::store;

struct Dims {
  int64_t B, Bq, H, M, N, D;
};

Dims check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  ART_CHECK_CPU_CONTIG(q, "q");
  ART_CHECK_CPU_CONTIG(k, "k");
  ART_CHECK_CPU_CONTIG(v, "v");
  ART_CHECK_DIM(q, "q", 4, "[B, H, M, D]");
  ART_CHECK_DIM(k, "k", 4, "[B, H, N, D]");
  TORCH_CHECK(v.sizes() == k.sizes(), "art_fast: v must have the shape of k ", k.sizes(),
              ", got ", v.sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && k.scalar_type() == v.scalar_type(),
              "art_fast: q, k, v must share one dtype");
  Dims d{k.size(0), q.size(0), k.size(1), q.size(2), k.size(2), k.size(3)};
  TORCH_CHECK(d.Bq == d.B || d.Bq == 1, "art_fast: q must have shape [B or 1, H, M, D]");
  TORCH_CHECK(q.size(1) == d.H && q.size(3) == d.D,
              "art_fast: q must have shape [B, H, M, D] with H, D of k");
  TORCH_CHECK(d.B > 0 && d.H > 0 && d.M > 0 && d.N > 0 && d.D > 0,
              "art_fast: cross_attention got an empty tensor");
  return d;
}

template <typename scalar_t>
void fwd_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                const Dims& s, at::Tensor& out, at::Tensor& lse, at::Tensor* weights) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* kp = k.data_ptr<scalar_t>();
  const scalar_t* vp = v.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  float* lp = lse.data_ptr<float>();
  scalar_t* wp = weights ? weights->data_ptr<scalar_t>() : nullptr;
  const int64_t M = s.M, N = s.N, D = s.D, H = s.H;
  const acc_t sc = static_cast<acc_t>(scale);

  at::parallel_for(0, s.B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> qs(M * D), kt(D * N), vv(N * D), p(M * N), o(D);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t h = bh % H;
      const int64_t qbh = (s.Bq == 1 ? h : bh);
      // 1. q * scale, k^T and v into the accumulation type.
      load_scaled(qs.data(), qp + qbh * M * D, M * D, sc);
      load_t(kt.data(), kp + bh * N * D, N, D);
      load(vv.data(), vp + bh * N * D, N * D);
      for (int64_t m = 0; m < M; ++m) {
        acc_t* row = p.data() + m * N;
        // 2. scores row: S[m, :] = (q[m] * scale) k^T
        row_times_t(row, qs.data() + m * D, kt.data(), D, N);
        // 3. softmax with the row max subtracted; a NaN anywhere makes the row NaN, as in
        //    torch.softmax; a row of -inf gives NaN, as in torch.softmax.
        acc_t mx = -std::numeric_limits<acc_t>::infinity();
        for (int64_t n = 0; n < N; ++n) mx = row[n] > mx ? row[n] : mx;
        acc_t sum = 0;
        for (int64_t n = 0; n < N; ++n) {
          row[n] = std::exp(row[n] - mx);
          sum += row[n];
        }
        const acc_t inv = acc_t(1) / sum;
        for (int64_t n = 0; n < N; ++n) row[n] *= inv;
        lp[bh * M + m] = static_cast<float>(mx + std::log(sum));
        // 4. out[m] = P[m, :] v
        fill(o.data(), acc_t(0), D);
        for (int64_t n = 0; n < N; ++n) axpy(o.data(), vv.data() + n * D, row[n], D);
        store(op + (bh * M + m) * D, o.data(), D);
      }
      // 5. the probabilities, only when asked for.
      if (wp) store(wp + bh * M * N, p.data(), M * N);
    }
  });
}

template <typename scalar_t>
void bwd_kernel(const at::Tensor& go, const at::Tensor* gw, const at::Tensor& q,
                const at::Tensor& k, const at::Tensor& v, const at::Tensor& lse, double scale,
                const Dims& s, scalar_t* dq_direct, at::Tensor* dq_part, at::Tensor& dk,
                at::Tensor& dv) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* gop = go.data_ptr<scalar_t>();
  const scalar_t* gwp = gw ? gw->data_ptr<scalar_t>() : nullptr;
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* kp = k.data_ptr<scalar_t>();
  const scalar_t* vp = v.data_ptr<scalar_t>();
  const float* lp = lse.data_ptr<float>();
  acc_t* dqpart = dq_part ? dq_part->data_ptr<acc_t>() : nullptr;
  scalar_t* dkp = dk.data_ptr<scalar_t>();
  scalar_t* dvp = dv.data_ptr<scalar_t>();
  const int64_t M = s.M, N = s.N, D = s.D, H = s.H;
  const acc_t sc = static_cast<acc_t>(scale);

  at::parallel_for(0, s.B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> qq(M * D), qs(M * D), kk(N * D), kt(D * N), vt(D * N), dO(M * D),
        p(M * N), dp(M * N), acc(D), dqrow(D);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t h = bh % H;
      const int64_t qbh = (s.Bq == 1 ? h : bh);
      // 1. inputs into the accumulation type.
      load(qq.data(), qp + qbh * M * D, M * D);
      for (int64_t i = 0; i < M * D; ++i) qs[i] = qq[i] * sc;
      load(kk.data(), kp + bh * N * D, N * D);
      load_t(kt.data(), kp + bh * N * D, N, D);
      load_t(vt.data(), vp + bh * N * D, N, D);
      load(dO.data(), gop + bh * M * D, M * D);
      for (int64_t m = 0; m < M; ++m) {
        acc_t* prow = p.data() + m * N;
        acc_t* dprow = dp.data() + m * N;
        // 2. recompute P[m, :] = exp(S[m, :] - lse[m]).
        row_times_t(prow, qs.data() + m * D, kt.data(), D, N);
        const acc_t l = static_cast<acc_t>(lp[bh * M + m]);
        for (int64_t n = 0; n < N; ++n) prow[n] = std::exp(prow[n] - l);
        // 3. dP[m, :] = dO[m] v^T (+ the gradient of the returned weights).
        row_times_t(dprow, dO.data() + m * D, vt.data(), D, N);
        if (gwp) {
          const scalar_t* g = gwp + (bh * M + m) * N;
          for (int64_t n = 0; n < N; ++n) dprow[n] += static_cast<acc_t>(g[n]);
        }
        // 4. dS = P * (dP - delta), delta = sum_n P dP; the scale is applied in 5 and 6.
        acc_t delta = 0;
        for (int64_t n = 0; n < N; ++n) delta += prow[n] * dprow[n];
        for (int64_t n = 0; n < N; ++n) dprow[n] = prow[n] * (dprow[n] - delta);
        // 5. dq[m] = scale * dS[m, :] k
        fill(dqrow.data(), acc_t(0), D);
        for (int64_t n = 0; n < N; ++n) axpy(dqrow.data(), kk.data() + n * D, dprow[n], D);
        for (int64_t d = 0; d < D; ++d) dqrow[d] *= sc;
        if (dqpart) {
          std::copy(dqrow.begin(), dqrow.end(), dqpart + (bh * M + m) * D);
        } else {
          store(dq_direct + (bh * M + m) * D, dqrow.data(), D);
        }
      }
      // 6. dk[n] = scale * sum_m dS[m, n] q[m];  7. dv[n] = sum_m P[m, n] dO[m].
      for (int64_t n = 0; n < N; ++n) {
        fill(acc.data(), acc_t(0), D);
        for (int64_t m = 0; m < M; ++m) axpy(acc.data(), qq.data() + m * D, dp[m * N + n], D);
        for (int64_t d = 0; d < D; ++d) acc[d] *= sc;
        store(dkp + (bh * N + n) * D, acc.data(), D);
        fill(acc.data(), acc_t(0), D);
        for (int64_t m = 0; m < M; ++m) axpy(acc.data(), dO.data() + m * D, p[m * N + n], D);
        store(dvp + (bh * N + n) * D, acc.data(), D);
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
    bool return_weights) {
  const Dims s = check_inputs(q, k, v);
  auto out = at::empty({s.B, s.H, s.M, s.D}, q.options());
  auto lse = at::empty({s.B, s.H, s.M}, q.options().dtype(at::kFloat));
  auto weights = return_weights ? at::empty({s.B, s.H, s.M, s.N}, q.options())
                                : at::empty({0}, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "cross_attention_fwd_cpu", [&] {
                                    fwd_kernel<scalar_t>(q, k, v, scale, s, out, lse,
                                                         return_weights ? &weights : nullptr);
                                  });
  return {out, lse, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_attention_bwd_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_weights,
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, double scale) {
  (void)out;  // see the profile at the top of the file
  const Dims s = check_inputs(q, k, v);
  ART_CHECK_CPU_CONTIG(grad_out, "grad_out");
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({s.B, s.H, s.M, s.D}) &&
                  grad_out.scalar_type() == q.scalar_type(),
              "art_fast: grad_out must be [B, H, M, D] in the dtype of q");
  ART_CHECK_CPU_CONTIG(lse, "lse");
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({s.B, s.H, s.M}) &&
                  lse.scalar_type() == at::kFloat,
              "art_fast: lse must be [B, H, M] float32");
  const at::Tensor* gw = nullptr;
  if (grad_weights.has_value() && grad_weights->defined() && grad_weights->numel() > 0) {
    ART_CHECK_CPU_CONTIG(*grad_weights, "grad_weights");
    TORCH_CHECK(grad_weights->sizes() == at::IntArrayRef({s.B, s.H, s.M, s.N}) &&
                    grad_weights->scalar_type() == q.scalar_type(),
                "art_fast: grad_weights must be [B, H, M, N] in the dtype of q");
    gw = &*grad_weights;
  }
  auto dq = at::empty_like(q);
  auto dk = at::empty_like(k);
  auto dv = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "cross_attention_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (s.Bq == s.B && s.B != 1) {
      bwd_kernel<scalar_t>(grad_out, gw, q, k, v, lse, scale, s, dq.data_ptr<scalar_t>(),
                           nullptr, dk, dv);
      return;
    }
    // Shared query (or B == 1): per-b partial gradients in the accumulation type, then a
    // fixed-order sum over b.
    auto part = at::empty({s.B, s.H, s.M, s.D},
                          q.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    bwd_kernel<scalar_t>(grad_out, gw, q, k, v, lse, scale, s, nullptr, &part, dk, dv);
    const acc_t* pp = part.data_ptr<acc_t>();
    scalar_t* dqp = dq.data_ptr<scalar_t>();
    const int64_t inner = s.H * s.M * s.D;
    at::parallel_for(0, inner, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        acc_t total = 0;
        for (int64_t b = 0; b < s.B; ++b) total += pp[b * inner + i];
        dqp[i] = static_cast<scalar_t>(total);
      }
    });
  });
  return {dq, dk, dv};
}

}  // namespace art_fast
