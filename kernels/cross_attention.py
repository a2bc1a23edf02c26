"""Triton kernels of ``art_fast.cross_attention`` (DESIGN §3.1): forward and backward.

out = softmax(q k^T * scale) v for q ``[Bq, H, M, D]`` (Bq = B, or 1 for a query set shared
by every group), k, v ``[B, H, N, D]``. Profile note: ``docs/kernels/cross_attention.md``.

Kernels:

- ``_fwd``: grid ``(B * H, cdiv(M, BLOCK_M))``. One program owns a block of query rows of one
  (b, h) and streams k/v in tiles of BLOCK_N patches with an online softmax (FlashAttention);
  it writes out and the per-row log-sum-exp, and, when asked, the weights exp(s - max) / sum
  in a second pass over the tiles.
- ``_bwd``: grid ``(B * H,)``. One program owns every query row of one (b, h), so dk and dv of
  a patch tile are produced by exactly one program: no atomics. Per row block, three passes
  over the patch tiles: the softmax's max and sum (recomputed: exp(s - lse) would carry the
  rounding of a large lse), delta = sum P dP, then the gradients. For M > BLOCK_M the program
  loops over the row blocks in order and adds into dk/dv (float32 buffers) it wrote itself.
  dq of a shared query set is written per b into a float32 buffer ``[B, L = H M D]``.
- ``_sum_over_b``: dq of a shared query set = sum over b of that buffer, as a tree of levels
  (:func:`_sum_over_b_host`): grid ``(cdiv(rows, 32) * cdiv(L, 128),)``, each program sums a
  [32, 128] tile over its rows with ``tl.sum`` into a partial buffer, until one row is left.
  Parallel over B (the old kernel had cdiv(L, 1024) programs looping over B), fixed tiles and
  warps (not autotuned), no atomics: bitwise reproducible; int64 offsets.

The ops are ``art_fast_triton::cross_attention_fwd`` / ``_bwd`` (``torch.library.custom_op``),
the same contract as the C++ ``art_fast::`` ops: their fake kernels and autograd are registered
once for every backend in ``art_fast/ops/cross_attention.py``. Saved for the backward: q, k, v
(as the op received them: any strides, the ops are public), out, lse. The kernels index q, k,
v as contiguous, so the bwd host makes q, k, v, dO and dW contiguous exactly as the fwd host
does (its outputs are contiguous; so are the fake kernels').
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from art_fast import _contract

from ._common import (
    NAMESPACE,
    acc_dtype,
    check_device,
    configs,
    device_ctx,
    pow2,
    split_float,
    tl_acc,
    tl_dot,
)

# Autotune lists, kept short (CI compiles every config ahead of time: benchmarks/triton_aot.py)
# and chosen from ahead-of-time compiles (docs/kernels/cross_attention.md, "Registers and
# shared memory"): no register spill for fp32 and bf16 on sm_80 and sm_90 at the paper shapes
# (M = 2 and 16, N = 196, D = 32, with and without the weights), with triton 3.8 (CI) and 3.6
# (the GPU box), and every config within shared memory in every dtype of the full sweep.
# 4-warp fwd configs and 8-warp or wider bwd configs spill at D = 64-128 in fp32 (some already
# at D = 32 with the weights; (32, 8, 1) in bf16 on sm_80 with triton 3.6).
_FWD_CONFIGS = configs(
    {"BLOCK_N": 16},
    [({"BLOCK_N": bn}, w, s) for bn, w, s in ((32, 8, 2), (32, 8, 3), (64, 8, 2))],
)
_BWD_CONFIGS = configs(
    {"BLOCK_N": 16},
    [({"BLOCK_N": bn}, w, s) for bn, w, s in ((16, 4, 1), (32, 4, 2))],
)
# float64 tiles take twice the shared memory: (32, 4, 2) at M > 64, D = 64 needs 180224 B with
# triton 3.6 (over sm_80's 166912 B), so float64 tunes over the 1-stage config alone.
_BWD_CONFIGS_F64 = configs({"BLOCK_N": 16}, [({"BLOCK_N": 16}, 4, 1)])


@triton.autotune(configs=_FWD_CONFIGS, key=["M", "N", "D", "WRITE_W"])
@triton.jit
def _fwd(
    Q, K, V, Out, LSE, W,
    q_bstride, H, M, N, D, scale_hi, scale_lo,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    WRITE_W: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    # 1. Which (b, h) and which block of query rows; the scale in ACC (see split_float).
    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < M
    mask_d = offs_d < D
    # 2. The query tile stays in registers; q_bstride is 0 for a shared query set. Rows past M
    #    and columns past D are loaded as 0 (the tile is padded, the tensor is not).
    q_base = Q + b * q_bstride + h * M * D
    q = tl.load(q_base + offs_m[:, None] * D + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0).to(DOT)
    kv_base = pid_bh * N * D
    m_i = tl.full([BLOCK_M], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_M], ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    # 3. Online softmax over the patch tiles (precision: scores, max, sum and the output
    #    accumulator in ACC = float32, float64 for float64 inputs; fp32 dots without TF32).
    for start in range(0, N, BLOCK_N):
        n = start + offs_n
        mask_n = n < N
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(K + kv_base + n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0).to(DOT)
        v = tl.load(V + kv_base + n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0).to(DOT)
        s = tl.dot(q, tl.trans(k), input_precision="ieee").to(ACC) * scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # a row whose scores so far are all -inf keeps a finite reference point (no inf - inf)
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_ref)
        p = tl.exp(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        pv = tl.dot(p.to(v.dtype), v, input_precision="ieee").to(ACC)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    # 4. Normalise. An all -inf row gives 0 / 0 = NaN, as torch.softmax does; a NaN score
    #    makes l_i NaN and the whole row NaN, as torch.softmax does.
    out = acc / l_i[:, None]
    o_ptrs = Out + pid_bh * M * D + offs_m[:, None] * D + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    # 5. The row statistic of the contract: lse = max + log(sum), in ACC (every backend's
    #    layout). The backwards do not read it for P (they recompute max and sum:
    #    exp(s - lse) would carry the rounding of a large lse); an all -inf row gives -inf.
    tl.store(LSE + pid_bh * M + offs_m, m_i + tl.log(l_i), mask=mask_m)
    # 6. Weights (only when asked): a second pass recomputes the scores;
    #    w = exp(s - max) / sum.
    if WRITE_W:
        for start in range(0, N, BLOCK_N):
            n = start + offs_n
            mask_n = n < N
            k, s = _k_scores(q, K, kv_base, n, mask_n, offs_d, mask_d, scale, D, ACC, DOT)
            w = tl.exp(s - m_i[:, None]) / l_i[:, None]
            tl.store(W + pid_bh * M * N + offs_m[:, None] * N + n[None, :],
                     w.to(W.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _k_scores(q, K, kv_base, n, mask_n, offs_d, mask_d, scale, D,
              ACC: tl.constexpr, DOT: tl.constexpr):
    # The k tile of patches n and the scores s = q k^T * scale in ACC (fp32 dot without TF32).
    k = tl.load(K + kv_base + n[:, None] * D + offs_d[None, :],
                mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(DOT)
    return k, tl.dot(q, tl.trans(k), input_precision="ieee").to(ACC) * scale


@triton.jit
def _p_dp(q, do, K, V, DW, kv_base, row_base, n, mask_n, offs_m, mask_m, offs_d, mask_d, m_i,
          l_i, scale, N, D, HAS_DW: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr):
    # One patch tile n of the backward: k, v; P = exp(s - m) / l (0 outside the rows and
    # patches); dP = dO v^T (+ dW). Returns k (for dq), the tile mask, P and dP.
    nd = mask_n[:, None] & mask_d[None, :]
    k = tl.load(K + kv_base + n[:, None] * D + offs_d[None, :], mask=nd, other=0.0).to(DOT)
    v = tl.load(V + kv_base + n[:, None] * D + offs_d[None, :], mask=nd, other=0.0).to(DOT)
    s = tl.dot(q, tl.trans(k), input_precision="ieee").to(ACC) * scale
    mn = mask_m[:, None] & mask_n[None, :]
    p = tl.exp(tl.where(mn, s - m_i[:, None], float("-inf"))) / l_i[:, None]
    dp = tl.dot(do, tl.trans(v), input_precision="ieee").to(ACC)
    if HAS_DW:
        dp += tl.load(DW + (row_base + offs_m[:, None]) * N + n[None, :], mask=mn,
                      other=0.0).to(ACC)
    return k, nd, p, dp


@triton.jit
def _bwd(
    Q, K, V, DO, DW, LSE, DQ, DK, DV,  # LSE: the contract's, not read (step 2)
    q_bstride, H, M, N, D, scale_hi, scale_lo,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_DW: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    # 1. One program per (b, h): it owns dk and dv of every patch of this (b, h).
    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)
    pid_bh = tl.program_id(0).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    q_base = Q + b * q_bstride + h * M * D
    kv_base = pid_bh * N * D
    row_base = pid_bh * M
    for start_m in range(0, M, BLOCK_M):
        # 2. The row block: q, dO; the row max m and the row sum l of exp(s - m) in a first
        #    pass over the tiles (the forward's online softmax: P = exp(s - m) / l as
        #    torch.softmax computes it; not exp(s - lse) from the saved lse, whose rounding
        #    at large scores, ulp(lse) ~1e-3 relative at |s| ~ 1e4, P would carry; the C++
        #    backwards recompute them too); then delta_i = sum_n P_in dP_in with dP = dO v^T
        #    (+ dW) in a second pass. (Not <dO_i, O_i>: O is rounded to the output dtype, and
        #    a pass with the very dP of step 3 makes dP - delta exactly 0 where the softmax is
        #    constant, e.g. N = 1, as in float64.) Three passes over k: one QK^T more than with
        #    a saved (max, sum) pair; folding m and l into the delta pass spilled on sm_80.
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        md = mask_m[:, None] & mask_d[None, :]
        q = tl.load(q_base + offs_m[:, None] * D + offs_d[None, :], mask=md, other=0.0).to(DOT)
        m_i = tl.full([BLOCK_M], float("-inf"), ACC)
        l_i = tl.zeros([BLOCK_M], ACC)
        for start in range(0, N, BLOCK_N):
            n = start + offs_n
            mask_n = n < N
            k, s = _k_scores(q, K, kv_base, n, mask_n, offs_d, mask_d, scale, D, ACC, DOT)
            s = tl.where(mask_n[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # no inf - inf (as forward)
            l_i = l_i * tl.exp(m_i - m_ref) + tl.sum(tl.exp(s - m_ref[:, None]), 1)
            m_i = m_new
        # Rows past M: l = 1, so their P is 0 (not 0 / 0) and adds nothing to dk, dv. A real
        # row of -inf scores keeps l = 0: NaN, as torch.softmax.
        m_i = tl.where(m_i == float("-inf"), 0.0, m_i)
        l_i = tl.where(mask_m, l_i, 1.0)
        do = tl.load(DO + (row_base + offs_m[:, None]) * D + offs_d[None, :], mask=md,
                     other=0.0).to(DOT)
        delta = tl.zeros([BLOCK_M], ACC)
        for start in range(0, N, BLOCK_N):
            n = start + offs_n
            mask_n = n < N
            k, nd, p, dp = _p_dp(q, do, K, V, DW, kv_base, row_base, n, mask_n, offs_m, mask_m,
                                 offs_d, mask_d, m_i, l_i, scale, N, D, HAS_DW, ACC, DOT)
            delta += tl.sum(p * dp, 1)
        # 3. Patch tiles: P = exp(s - m) / l, dP = dO v^T (+ dW), dS = P (dP - delta);
        #    dv = P^T dO, dk = scale dS^T q, dq += scale dS k.
        dq = tl.zeros([BLOCK_M, BLOCK_D], ACC)
        for start in range(0, N, BLOCK_N):
            n = start + offs_n
            mask_n = n < N
            k, nd, p, dp = _p_dp(q, do, K, V, DW, kv_base, row_base, n, mask_n, offs_m, mask_m,
                                 offs_d, mask_d, m_i, l_i, scale, N, D, HAS_DW, ACC, DOT)
            ds = p * (dp - delta[:, None])
            dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision="ieee").to(ACC)
            dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision="ieee").to(ACC) * scale
            dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee").to(ACC)
            dk_ptrs = DK + kv_base + n[:, None] * D + offs_d[None, :]
            dv_ptrs = DV + kv_base + n[:, None] * D + offs_d[None, :]
            # 4. Row blocks after the first add to what this program stored for the earlier
            #    ones (float32 buffers then; the barrier orders the program's own store/load).
            if start_m > 0:
                tl.debug_barrier()
                dk += tl.load(dk_ptrs, mask=nd, other=0.0).to(ACC)
                dv += tl.load(dv_ptrs, mask=nd, other=0.0).to(ACC)
            tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=nd)
            tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=nd)
        # 5. dq of this (b, h): its own slot even when q is shared (summed over b later).
        tl.store(DQ + (row_base + offs_m[:, None]) * D + offs_d[None, :],
                 (dq * scale).to(DQ.dtype.element_ty), mask=md)


# One autotuner per dtype class over the same kernel (each compiles and tunes its own list).
_BWD_TUNED = {
    "f64": triton.autotune(configs=_BWD_CONFIGS_F64, key=["M", "N", "D", "HAS_DW"])(_bwd),
    "other": triton.autotune(configs=_BWD_CONFIGS, key=["M", "N", "D", "HAS_DW"])(_bwd),
}


@triton.jit
def _sum_over_b(X, Y, R, L, n_lblocks, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    # Y[c, l] = sum of X[r, l] over the rows r of chunk c (c * BLOCK_R <= r < (c + 1) * BLOCK_R).
    # 1. The program's chunk of rows and block of columns (a 1-D grid of n_chunks x n_lblocks
    #    programs: no 65535 limit on the second grid axis); offsets in int64 (R * L may pass
    #    2^31).
    pid = tl.program_id(0)
    pid_c = (pid // n_lblocks).to(tl.int64)
    pid_l = (pid % n_lblocks).to(tl.int64)
    offs_r = pid_c * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_l = offs_l < L
    # 2. One [BLOCK_R, BLOCK_L] tile, summed over its rows by tl.sum: a reduction tree fixed
    #    by the block sizes and num_warps, which the host fixes (no autotuning, no atomics:
    #    bitwise reproducible). Precision: X and Y are float32 (float64 for float64 inputs),
    #    except the last level's Y, the output in q's dtype.
    x = tl.load(X + offs_r[:, None] * L + offs_l[None, :],
                mask=(offs_r < R)[:, None] & mask_l[None, :], other=0.0)
    tl.store(Y + pid_c * L + offs_l, tl.sum(x, 0).to(Y.dtype.element_ty), mask=mask_l)


# _sum_over_b tiles: 32 rows x 128 columns (32 elements per thread at 4 warps).
_SUM_BLOCK_R = 32
_SUM_BLOCK_L = 128


def _sum_over_b_host(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[l] = sum_b x[b, l] for x ``[B, L]`` (float32 / float64), ``out`` any float dtype
    with L elements: a tree of _sum_over_b levels, each summing chunks of 32 rows in parallel
    into a ``[cdiv(rows, 32), L]`` partial buffer (dtype of x) until one row is left, which the
    last level writes to ``out``. The levels, tiles and warps depend on (B, L) only: bitwise
    reproducible. B = 512, L = H M D = 4096: 512 -> 16 -> 1 rows, two launches of 16 x 32 and
    1 x 32 programs (the old kernel: 4 programs each looping over the 512 rows)."""
    R, L = x.shape
    block_l = min(_SUM_BLOCK_L, pow2(L))
    n_lblocks = triton.cdiv(L, block_l)
    while True:
        block_r = min(_SUM_BLOCK_R, pow2(R, 2))
        chunks = triton.cdiv(R, block_r)
        y = out if chunks == 1 else torch.empty((chunks, L), dtype=x.dtype, device=x.device)
        _sum_over_b[(chunks * n_lblocks,)](x, y, R, L, n_lblocks, BLOCK_R=block_r,
                                            BLOCK_L=block_l, num_warps=4)
        if chunks == 1:
            return out
        x, R = y, chunks


def _block_m(M: int) -> int:
    return min(64, pow2(M))


def _fwd_host(q, k, v, scale, return_weights):
    check_device("cross_attention", q, k, v)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, H, N, D = k.shape
    M = q.shape[2]
    out = torch.empty((B, H, M, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, M), dtype=acc_dtype(q.dtype), device=q.device)
    weights = torch.empty((B, H, M, N) if return_weights else (0,), dtype=q.dtype,
                          device=q.device)
    block_m = _block_m(M)
    q_bstride = 0 if q.shape[0] == 1 else H * M * D
    with device_ctx(q):
        _fwd[lambda meta: (B * H, triton.cdiv(M, block_m))](
            q, k, v, out, lse, weights if return_weights else out,
            q_bstride, H, M, N, D, *split_float(scale),
            BLOCK_M=block_m, BLOCK_D=pow2(D), WRITE_W=bool(return_weights),
            ACC=tl_acc(q.dtype), DOT=tl_dot(q.dtype),
        )
    return out, lse, weights


def _bwd_host(grad_out, grad_weights, q, k, v, out, lse, scale):
    check_device("cross_attention", q, k, v)
    # The same contiguous tensors as the forward: autograd saves the op's inputs, which may
    # have any strides (the kernels index them as contiguous).
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    grad_out = grad_out.contiguous()
    grad_weights = None if grad_weights is None else grad_weights.contiguous()
    lse = lse.contiguous()
    B, H, N, D = k.shape
    M = q.shape[2]
    shared = q.shape[0] == 1 and B > 1
    acc = acc_dtype(q.dtype)
    block_m = _block_m(M)
    # dk/dv: written once per tile when the rows fit one block, else accumulated in float32
    kv_dtype = k.dtype if M <= block_m else acc
    dk = torch.empty((B, H, N, D), dtype=kv_dtype, device=k.device)
    dv = torch.empty((B, H, N, D), dtype=kv_dtype, device=k.device)
    dq_b = torch.empty((B, H, M, D), dtype=acc if shared else q.dtype, device=q.device)
    has_dw = grad_weights is not None
    q_bstride = 0 if q.shape[0] == 1 else H * M * D
    with device_ctx(q):
        _BWD_TUNED["f64" if q.dtype == torch.float64 else "other"][(B * H,)](
            q, k, v, grad_out, grad_weights if has_dw else grad_out, lse, dq_b, dk, dv,
            q_bstride, H, M, N, D, *split_float(scale),
            BLOCK_M=block_m, BLOCK_D=pow2(D), HAS_DW=has_dw,
            ACC=tl_acc(q.dtype), DOT=tl_dot(q.dtype),
        )
        if shared:
            dq = torch.empty_like(q)
            _sum_over_b_host(dq_b.view(B, H * M * D), dq.view(H * M * D))
        elif q.shape[0] == 1:
            dq = dq_b.view_as(q)
        else:
            dq = dq_b
    return dq, dk.to(k.dtype), dv.to(v.dtype)


# The ops of the contract (art_fast/ops/cross_attention.py: the schema, the fake kernels and
# the autograd, registered there for every backend; the C++ schema in csrc/ is the same).
@torch.library.custom_op(f"{NAMESPACE}::cross_attention_fwd", mutates_args=())
def cross_attention_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float, return_weights: bool
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """(out ``[B, H, M, D]``, lse ``[B, H, M]`` float32/float64, weights ``[B, H, M, N]`` or
    ``[0]``); q ``[B or 1, H, M, D]``, k, v ``[B, H, N, D]``."""
    return _fwd_host(q, k, v, scale, return_weights)


@torch.library.custom_op(f"{NAMESPACE}::cross_attention_bwd", mutates_args=())
def cross_attention_bwd(grad_out: Tensor, grad_weights: Tensor | None, q: Tensor, k: Tensor,
                        v: Tensor, out: Tensor, lse: Tensor, scale: float
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """(dq like q, summed over B when q is shared; dk; dv)."""
    return _bwd_host(grad_out, grad_weights, q, k, v, out, lse, scale)


# ---- ahead-of-time compile scenarios (benchmarks/triton_aot.py: compiled for sm_80 / sm_90 in
# CI, every launch of the host functions at these shapes on meta tensors) ----------------------
def _aot(B, Bq, H, M, N, D, weights=False):
    def run(dtype, meta, backward):
        acc = acc_dtype(dtype)
        q, k, v = meta((Bq, H, M, D), dtype), meta((B, H, N, D), dtype), meta((B, H, N, D), dtype)
        _fwd_host(q, k, v, D**-0.5, weights)
        backward()
        gw = meta((B, H, M, N), dtype) if weights else None
        _bwd_host(meta((B, H, M, D), dtype), gw, q, k, v, meta((B, H, M, D), dtype),
                  meta((B, H, M), acc), D**-0.5)

    return run


# (name, run, dtypes "paper" | "all", sets "ci" (ci + full) | "full", spills fail it).
# B*T = 512 (B = 64 clips x T = 8), H = 8 heads, M = 2 / 16 queries, N = 196 patches, D = 32;
# a query set shared by every b (Bq = 1) in RSSA.
AOT_SCENARIOS = (
    ("paper M=2 shared q", _aot(512, 1, 8, 2, 196, 32), "paper", "ci", True),
    ("paper M=16", _aot(512, 512, 8, 16, 196, 32), "paper", "ci", True),
    ("paper M=2 shared q", _aot(512, 1, 8, 2, 196, 32), "all", "full", True),
    ("paper M=16", _aot(512, 512, 8, 16, 196, 32), "all", "full", True),
    ("M=16 weights", _aot(512, 512, 8, 16, 196, 32, weights=True), "all", "full", True),
    ("M=100 D=64", _aot(64, 64, 8, 100, 196, 64), "all", "full", False),
    ("M=16 D=128", _aot(64, 64, 8, 16, 196, 128), "all", "full", False),
)


_contract.provided("cross_attention")  # the fake kernels and autograd of the contract
