"""Triton kernels of ``art_fast.topk_regions`` (DESIGN §3.2): forward and backward.

For each row r = (b, m) of scores ``[B, M, N]``: the k highest scores in descending order
(ties to the lower index, NaN below every number, NaNs by index), the softmax over them, and
pooled[r] = sum_j w_j values[b, I_j]. Profile note: ``docs/kernels/topk_regions.md``.

Kernels:

- ``_fwd``: grid ``(cdiv(B * M, BLOCK_R),)``. A program holds BLOCK_R full rows of scores in
  registers (BLOCK_N = next power of two >= N) and selects by k rounds of "max, lowest index
  among the maxima" with the chosen entries masked out (no sort: tl.sort/tl.topk give no
  indices and are slow under the interpreter). Then the softmax of the k selected scores and
  the pooling (a gather of k value rows per row). BLOCK_R and num_warps come from N
  (:func:`_fwd_params`): at most 16 elements of the score tile per thread, which compiles
  without register spills (fp32 and bf16, sm_80 and sm_90; k = 16-64, C = 32-128 measured)
  for N <= 16384: rows up to 2048 wide take 4 warps and 2048 / BLOCK_N rows (16 at most),
  longer rows one row and 8 / 16 / 32 warps. 16384 < N <= MAX_N = 32768: 32 warps, 32
  elements per thread, ptxas spills (correct, slower); N > MAX_N raises.
- ``_bwd_rows``: grid ``(cdiv(B * M, BLOCK_R),)``, 4 warps. Recomputes the weights from
  scores[indices]; dw_j = gw_j + <g_pooled, values[I_j]>; g_scores = w (dw - <w, dw>)
  scattered into a dense row (zeros elsewhere) and the dense weight row W (zeros outside the
  selection), built in chunks of BLOCK_N <= 2048 columns (one store per element; no limit on
  N, no spills).
- ``_bwd_values``: grid ``(B, cdiv(N, BLOCK_N), cdiv(C, BLOCK_C))``. g_values[b] =
  W[b]^T g_pooled[b] as a tiled matmul over m in increasing order: each output tile has one
  owner, no atomics, bitwise reproducible.

The ops are ``art_fast_triton::topk_regions_fwd`` / ``_bwd`` (``torch.library.custom_op``),
the contract of the C++ ``art_fast::`` ops: their fake kernels and autograd are registered once
for every backend in ``art_fast/ops/topk_regions.py``. Saved for the backward: scores, values
and indices as the op received them (any strides: the ops are public); the kernels index them
as contiguous, so the bwd host makes scores, values, indices, g_pooled and g_weights contiguous
exactly as the fwd host does (its outputs are contiguous; so are the fake kernels').
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from art_fast import _contract

from ._common import NAMESPACE, acc_dtype, check_device, configs, device_ctx, pow2, tl_acc

MAX_N = 1 << 15  # _fwd holds a row of scores in registers (spills past N = 16384)

# _bwd_values autotune list, kept short (CI compiles every config ahead of time): spill-free
# for fp32 and bf16 on sm_80 and sm_90 at the paper shape (M = 2 and 16, N = 196, C = 32 and
# 128) and at N = 1024 (C = 64) and 16384 (ahead-of-time compiles; (64, 32, 16, 4 warps,
# 2 stages), in the old list, spills 16 B in fp32 on sm_80 at M = 2, and (64, 64, 16, 8, 2) at
# N >= 1024); <= 16 KB of shared memory.
_VAL_CONFIGS = configs(
    {"BLOCK_N": 16, "BLOCK_C": 16, "BLOCK_M": 16},
    [({"BLOCK_N": bn, "BLOCK_C": bc, "BLOCK_M": bm}, w, s)
     for bn, bc, bm, w, s in ((32, 32, 16, 4, 2), (64, 32, 16, 4, 3), (128, 64, 16, 8, 2))],
)


@triton.jit
def _select_and_weigh(s, offs_n, mask_n, k, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                      ACC: tl.constexpr):
    """k rounds of selection over the rows of s [BLOCK_R, BLOCK_N]; returns the selected
    indices [BLOCK_R, BLOCK_K] (int32) and their softmax weights (ACC)."""
    cols_k = tl.arange(0, BLOCK_K)
    is_nan = s != s
    avail = mask_n[None, :] & ((s == s) | is_nan)  # [BLOCK_R, BLOCK_N]: every real patch
    sel_s = tl.zeros([BLOCK_R, BLOCK_K], ACC)
    sel_i = tl.zeros([BLOCK_R, BLOCK_K], tl.int32)
    for j in range(k):
        # a. the numbers still available; their max; the lowest index holding it. A row
        #    with no number left takes its lowest available index (a NaN).
        valid = avail & ~is_nan
        has_valid = tl.max(valid.to(tl.int32), 1) > 0
        key = tl.where(valid, s, float("-inf"))
        mx = tl.max(key, 1)
        cand = valid & (key == mx[:, None])
        cand = tl.where(has_valid[:, None], cand, avail)
        idx = tl.min(tl.where(cand, offs_n[None, :], 1 << 30), 1)
        val = tl.where(has_valid, mx, float("nan"))
        # b. take it out, and record (index, score) in column j
        avail = avail & (offs_n[None, :] != idx[:, None])
        sel_s = tl.where(cols_k[None, :] == j, val[:, None], sel_s)
        sel_i = tl.where(cols_k[None, :] == j, idx[:, None], sel_i)
    return sel_i, _softmax_k(sel_s, k, BLOCK_K)


@triton.jit
def _softmax_k(sel_s, k, BLOCK_K: tl.constexpr):
    # The first selected score is the row max (descending order); a NaN or +-inf there gives
    # a NaN row, as torch.softmax does. Precision: exp and sum in ACC.
    cols_k = tl.arange(0, BLOCK_K)
    kmask = cols_k[None, :] < k
    first = tl.sum(tl.where(cols_k[None, :] == 0, sel_s, 0.0), 1)
    e = tl.where(kmask, tl.exp(sel_s - first[:, None]), 0.0)
    return e / tl.sum(e, 1)[:, None]


@triton.jit
def _fwd(
    S, V, P, IDX, W, R, M, N, C, k,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    # 1. BLOCK_R rows (r = b * M + m) of scores, whole, in registers.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < R
    b = rows // M
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    s = tl.load(S + rows[:, None] * N + offs_n[None, :],
                mask=mask_r[:, None] & mask_n[None, :], other=0.0).to(ACC)
    # 2. Selection and softmax over the selected (see _select_and_weigh).
    sel_i, w = _select_and_weigh(s, offs_n, mask_n, k, BLOCK_R, BLOCK_K, ACC)
    cols_k = tl.arange(0, BLOCK_K)
    rk = mask_r[:, None] & (cols_k[None, :] < k)
    tl.store(IDX + rows[:, None] * k + cols_k[None, :], sel_i.to(tl.int64), mask=rk)
    tl.store(W + rows[:, None] * k + cols_k[None, :], w.to(W.dtype.element_ty), mask=rk)
    # 3. Pooling: per chunk of C, sum_j w_j values[b, I_j, :] with j in increasing order.
    offs_c = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + offs_c
        rc = mask_r[:, None] & (c < C)[None, :]
        acc = tl.zeros([BLOCK_R, BLOCK_C], ACC)
        for j in range(k):
            wj = tl.sum(tl.where(cols_k[None, :] == j, w, 0.0), 1)
            ij = tl.sum(tl.where(cols_k[None, :] == j, sel_i, 0), 1).to(tl.int64)
            vals = tl.load(V + (b * N + ij)[:, None] * C + c[None, :], mask=rc, other=0.0)
            acc += wj[:, None] * vals.to(ACC)
        tl.store(P + rows[:, None] * C + c[None, :], acc.to(P.dtype.element_ty), mask=rc)


@triton.jit
def _bwd_rows(
    S, V, IDX, GP, GW, GS, WD, R, M, N, C, k,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_GW: tl.constexpr, ACC: tl.constexpr,
):
    # 1. The selection of the forward, and the weights recomputed from scores[indices].
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < R
    b = rows // M
    cols_k = tl.arange(0, BLOCK_K)
    rk = mask_r[:, None] & (cols_k[None, :] < k)
    sel_i = tl.load(IDX + rows[:, None] * k + cols_k[None, :], mask=rk, other=0)
    sel_s = tl.load(S + rows[:, None] * N + sel_i, mask=rk, other=0.0).to(ACC)
    w = _softmax_k(sel_s, k, BLOCK_K)
    # 2. dw_j = gw_j + <g_pooled[r], values[b, I_j]> (C in chunks, j in increasing order).
    if HAS_GW:
        dw = tl.load(GW + rows[:, None] * k + cols_k[None, :], mask=rk, other=0.0).to(ACC)
    else:
        dw = tl.zeros([BLOCK_R, BLOCK_K], ACC)
    offs_c = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + offs_c
        rc = mask_r[:, None] & (c < C)[None, :]
        gp = tl.load(GP + rows[:, None] * C + c[None, :], mask=rc, other=0.0).to(ACC)
        for j in range(k):
            ij = tl.sum(tl.where(cols_k[None, :] == j, sel_i, 0), 1)
            vals = tl.load(V + (b * N + ij)[:, None] * C + c[None, :], mask=rc, other=0.0)
            part = tl.sum(gp * vals.to(ACC), 1)
            dw = tl.where(cols_k[None, :] == j, dw + part[:, None], dw)
    # 3. Softmax backward over the selection: g_s = w (dw - <w, dw>).
    gs_sel = w * (dw - tl.sum(w * dw, 1)[:, None])
    # 4. Dense rows, in chunks of BLOCK_N columns (the registers do not grow with N): g_scores
    #    (zero outside the selection) and the weight row W for the values' gradient; each
    #    element written by one store (no zero-fill then scatter).
    offs_nc = tl.arange(0, BLOCK_N)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + offs_nc
        gs_row = tl.zeros([BLOCK_R, BLOCK_N], ACC)
        w_row = tl.zeros([BLOCK_R, BLOCK_N], ACC)
        for j in range(k):
            ij = tl.sum(tl.where(cols_k[None, :] == j, sel_i, 0), 1)
            hit = offs_n[None, :] == ij[:, None]
            gs_j = tl.sum(tl.where(cols_k[None, :] == j, gs_sel, 0.0), 1)
            w_j = tl.sum(tl.where(cols_k[None, :] == j, w, 0.0), 1)
            gs_row = tl.where(hit, gs_j[:, None], gs_row)
            w_row = tl.where(hit, w_j[:, None], w_row)
        rn = mask_r[:, None] & (offs_n < N)[None, :]
        tl.store(GS + rows[:, None] * N + offs_n[None, :], gs_row.to(GS.dtype.element_ty),
                 mask=rn)
        tl.store(WD + rows[:, None] * N + offs_n[None, :], w_row.to(WD.dtype.element_ty),
                 mask=rn)


@triton.autotune(configs=_VAL_CONFIGS, key=["M", "N", "C"])
@triton.jit
def _bwd_values(
    WD, GP, GV, M, N, C,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    # g_values[b, n, c] = sum_m W[b, m, n] g_pooled[b, m, c], m blocks in increasing order.
    b = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_n = offs_n < N
    mask_c = offs_c < C
    acc = tl.zeros([BLOCK_N, BLOCK_C], ACC)
    for m0 in range(0, M, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        mask_m = m < M
        wd = tl.load(WD + (b * M + m[:, None]) * N + offs_n[None, :],
                     mask=mask_m[:, None] & mask_n[None, :], other=0.0)
        gp = tl.load(GP + (b * M + m[:, None]) * C + offs_c[None, :],
                     mask=mask_m[:, None] & mask_c[None, :], other=0.0).to(ACC)
        acc += tl.dot(tl.trans(wd), gp, input_precision="ieee").to(ACC)
    tl.store(GV + (b * N + offs_n[:, None]) * C + offs_c[None, :], acc.to(GV.dtype.element_ty),
             mask=mask_n[:, None] & mask_c[None, :])


class _Launch(NamedTuple):
    block_r: int
    block_n: int
    block_k: int
    block_c: int
    num_warps: int


# Register budget: about 16 elements of a [BLOCK_R, BLOCK_N] tile per thread (ptxas stays
# spill-free there with up to 64 registers per thread, the cap at 32 warps; see
# docs/kernels/topk_regions.md for the measured table).
_ELEMS_PER_THREAD = 16
_ROW_TILE = 32 * 4 * _ELEMS_PER_THREAD  # elements of a row tile per 4-warp program (2048)
_MAX_WARPS = 32


def _fwd_params(N: int, k: int, C: int) -> _Launch:
    """_fwd: a row lives in registers. Rows up to 2048 wide: 4 warps and as many rows per
    program as fit 2048 elements (16 at most); longer rows: one row per program and
    8 / 16 / 32 warps (N <= 4096 / 8192 / 16384: still 16 elements per thread); beyond 16384
    (up to MAX_N) 32 warps hold 32 elements each and ptxas spills (correct, slower)."""
    block_n = pow2(N, 2)
    block_r = max(1, min(16, _ROW_TILE // block_n))
    warps = max(4, min(_MAX_WARPS, block_r * block_n // (32 * _ELEMS_PER_THREAD)))
    return _Launch(block_r, block_n, pow2(k, 2), min(128, pow2(C, 2)), warps)


def _bwd_rows_params(N: int, k: int, C: int) -> _Launch:
    """_bwd_rows: the dense rows are built in chunks of at most 2048 columns, 4 warps (no
    limit on N)."""
    block_n = min(_ROW_TILE, pow2(N, 2))
    block_r = max(1, min(16, _ROW_TILE // block_n))
    return _Launch(block_r, block_n, pow2(k, 2), min(128, pow2(C, 2)), 4)


def _check_n(N: int) -> None:
    if N > MAX_N:
        raise RuntimeError(
            f"art_fast.topk_regions: the Triton kernel holds a row of scores in registers and "
            f"supports N <= {MAX_N}, got N = {N}; use backend='cuda' or 'torch'"
        )


def _fwd_host(scores, values, k):
    check_device("topk_regions", scores, values)
    scores, values = scores.contiguous(), values.contiguous()
    B, M, N = scores.shape
    C = values.shape[2]
    _check_n(N)
    pooled = torch.empty((B, M, C), dtype=values.dtype, device=values.device)
    indices = torch.empty((B, M, k), dtype=torch.int64, device=scores.device)
    weights = torch.empty((B, M, k), dtype=scores.dtype, device=scores.device)
    R = B * M
    lp = _fwd_params(N, k, C)
    with device_ctx(scores):
        _fwd[(triton.cdiv(R, lp.block_r),)](
            scores, values, pooled, indices, weights, R, M, N, C, k,
            BLOCK_R=lp.block_r, BLOCK_N=lp.block_n, BLOCK_K=lp.block_k, BLOCK_C=lp.block_c,
            ACC=tl_acc(scores.dtype), num_warps=lp.num_warps,
        )
    return pooled, indices, weights


def _bwd_host(grad_pooled, grad_weights, scores, values, indices):
    check_device("topk_regions", scores, values)
    # The same contiguous tensors as the forward: autograd saves the op's inputs, which may
    # have any strides (the kernels index them as contiguous).
    scores, values = scores.contiguous(), values.contiguous()
    grad_pooled, indices = grad_pooled.contiguous(), indices.contiguous()
    gw = None if grad_weights is None else grad_weights.contiguous()
    B, M, N = scores.shape
    C = values.shape[2]
    k = indices.shape[2]
    acc = acc_dtype(scores.dtype)
    grad_scores = torch.empty((B, M, N), dtype=scores.dtype, device=scores.device)
    w_dense = torch.empty((B, M, N), dtype=acc, device=scores.device)
    grad_values = torch.empty((B, N, C), dtype=values.dtype, device=values.device)
    R = B * M
    lp = _bwd_rows_params(N, k, C)
    with device_ctx(scores):
        _bwd_rows[(triton.cdiv(R, lp.block_r),)](
            scores, values, indices, grad_pooled, gw if gw is not None else grad_pooled,
            grad_scores, w_dense, R, M, N, C, k,
            BLOCK_R=lp.block_r, BLOCK_N=lp.block_n, BLOCK_K=lp.block_k, BLOCK_C=lp.block_c,
            HAS_GW=gw is not None, ACC=tl_acc(scores.dtype), num_warps=lp.num_warps,
        )
        _bwd_values[lambda meta: (B, triton.cdiv(N, meta["BLOCK_N"]),
                                  triton.cdiv(C, meta["BLOCK_C"]))](
            w_dense, grad_pooled, grad_values, M, N, C, ACC=tl_acc(scores.dtype),
        )
    return grad_scores, grad_values


# The ops of the contract (art_fast/ops/topk_regions.py: the schema, the fake kernels and the
# autograd, registered there for every backend; the C++ schema in csrc/ is the same).
@torch.library.custom_op(f"{NAMESPACE}::topk_regions_fwd", mutates_args=())
def topk_regions_fwd(scores: Tensor, values: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(pooled ``[B, M, C]``, indices ``[B, M, k]`` int64, weights ``[B, M, k]``)."""
    return _fwd_host(scores, values, k)


@torch.library.custom_op(f"{NAMESPACE}::topk_regions_bwd", mutates_args=())
def topk_regions_bwd(grad_pooled: Tensor, grad_weights: Tensor | None, scores: Tensor,
                     values: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """(grad scores ``[B, M, N]``, zero outside the selection; grad values ``[B, N, C]``)."""
    return _bwd_host(grad_pooled, grad_weights, scores, values, indices)


# ---- ahead-of-time compile scenarios (benchmarks/triton_aot.py: compiled for sm_80 / sm_90 in
# CI, every launch of the host functions at these shapes on meta tensors) ----------------------
def _aot(B, M, N, C, k, grad_weights=True):
    def run(dtype, meta, backward):
        s, v = meta((B, M, N), dtype), meta((B, N, C), dtype)
        _fwd_host(s, v, k)
        backward()
        gw = meta((B, M, k), dtype) if grad_weights else None
        _bwd_host(meta((B, M, C), dtype), gw, s, v, meta((B, M, k), torch.int64))

    return run


# (name, run, dtypes "paper" | "all", sets "ci" (ci + full) | "full", spills fail it).
# scores [4096, M = 16, N = 196], values [4096, 196, 32], k = 16; the N limit 32768.
AOT_SCENARIOS = (
    ("paper", _aot(4096, 16, 196, 32, 16), "paper", "ci", True),
    ("paper", _aot(4096, 16, 196, 32, 16), "all", "full", True),
    ("paper, no grad weights", _aot(4096, 16, 196, 32, 16, grad_weights=False), "all", "full",
     True),
    ("N=1024 k=32", _aot(64, 16, 1024, 64, 32), "all", "full", False),
    ("N=16384", _aot(8, 4, 16384, 32, 16), "all", "full", False),
    ("N=32768 (limit)", _aot(2, 4, 32768, 32, 16), "all", "full", False),
)


_contract.provided("topk_regions")  # the fake kernels and autograd of the contract
