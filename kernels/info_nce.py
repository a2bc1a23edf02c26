"""Triton kernels of ``art_fast.info_nce`` (DESIGN §3.3): forward and backward, two regimes.

logits[g, i, j] = <a_gi, c_gj> / T (after L2 normalisation when ``normalize``),
loss[g, i] = logsumexp_j logits[g, i, :] - logits[g, i, t_gi] (0 when t_gi = -100).
Profile note: ``docs/kernels/info_nce.md``.

Normalisation is never materialised: ``_norms`` writes ||x|| per row, and the kernels scale
the raw dot products, logits = <a, c> / (max(||a||, eps) max(||c||, eps) T). The gradient
through x_hat = x / max(||x||, eps) is (g - x_hat <x_hat, g>) / ||x|| when ||x|| >= eps (the
autograd of F.normalize) and g / eps below; <a_hat_i, g_ahat_i> = sum_j dL_ij L_ij needs no
second pass over D.

Regimes (chosen per call from M, N and the dtype; ``regime`` forces one, for tests):

- tiny: M, N <= 64 and a logits tile pow2(M) pow2(N) (accumulator bytes: 8 in float64, 4
  otherwise) <= TINY_MAX_BYTES = 16 KiB, i.e. every M, N <= 64 for 16/32-bit inputs and
  pow2(M) pow2(N) <= 2048 in float64 (32 x 64, not 64 x 64); any D. ``_tiny_fwd`` /
  ``_tiny_bwd``, grid ``(cdiv(G, GROUPS),)``; a program handles GROUPS groups one after the
  other, each with its whole [M, N] logits in registers, formed by a K-loop over D in BLOCK_K
  chunks; the backward computes both gradients of a group in the same program, looping over D
  in BLOCK_D chunks (the group's rows re-read, from L1/L2). Nothing of size D stays live, so the
  limit is the logits tile: fp64 64 x 64, the one tile past it, compiles without spills only
  at exactly the 128-register cap of a 16-warp block, so the large regime takes it. GROUPS,
  BLOCK_D, num_warps (4 to 16) and num_stages come from the tile sizes and dtype
  (``_tiny_meta``); a forced ``regime=TINY`` beyond the limit raises. No spills at any
  M, N <= 64 within the limit, any D, fp16 / bf16 / fp32 / fp64, sm_80 and sm_90
  (ahead-of-time compiles: the table in docs/kernels/info_nce.md).
- large: ``_rows_fwd`` grid ``(G, cdiv(M, BLOCK_M))``, an online log-sum-exp over candidate
  tiles (no [M, N] buffer: memory O(M + N)); each logits tile is a K-loop over D in BLOCK_K
  chunks (a GEMM: tiles of any D fit). Backward in two passes, as Inf-CL does: ``_rows_bwd``
  accumulates grad anchors over candidate tiles, ``_cols_bwd`` grad candidates over anchor
  tiles. The gradient accumulator cannot hold all of D, so both get a grid axis over output D
  chunks: grid ``(G * cdiv(D, BLOCK_D), cdiv(M, BLOCK_M))`` resp. ``(.., cdiv(N, BLOCK_N))``,
  program (g * nd + dj, i) owns ga[g, m-tile i, d-chunk dj] (resp. gc), recomputes the logits
  over the full D (K-loop) and accumulates only its chunk; the normalisation's row term
  r = sum_j dL L is recomputed by every chunk program of a tile (same code, same order: the
  same bits). Cost: the logits GEMM is repeated per output chunk: backward FLOPs
  4 (nd + 1) G M N D with nd = cdiv(D, BLOCK_D), against 8 G M N D without chunks, a ratio of
  (nd + 1) / 2: 1 at D <= 128, 1.5 at D = 256 (fp64, BLOCK_D = 64: 2.5), 4.5 at D = 1024.
  Every output tile has one owner: no atomics, a fixed summation order, bitwise reproducible.

Chunks: BLOCK_K = 128 bytes of a row (32 fp32, 64 fp16/bf16, 16 fp64), BLOCK_D = 128 (64 in
fp64) in the large backward, both capped at pow2(D). When D is not a multiple of 16 the host
pads a and c to one (``_aligned``: unaligned rows mean element-wise loads, which spilled), and
the large backward writes padded gradient rows that it copies out. The autotune lists (per
tile class, ``_FWD_CONFIGS`` / ``_ROW_CONFIGS`` / ``_COL_CONFIGS``) hold only configs that fit
sm_80 and sm_90 at any D without spills (measured ahead of time, docs/kernels/info_nce.md);
known residue: with M or N not a multiple of 16, fp32 large kernels (FMA dots, 8 warps) spill
4-16 bytes, where ptxas settles on 128 registers (two blocks an SM).

The ops are ``art_fast_triton::info_nce_fwd`` (per-row loss and log-sum-exp), ``_bwd`` and
``_fused`` (``torch.library.custom_op``), the contract of the C++ ``art_fast::`` ops: their fake
kernels and autograd are registered once for every backend in ``art_fast/ops/info_nce.py``.
The fused entry reduces in torch (a sum over the [G, M] rows, deterministic).
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

IGNORE_INDEX = -100  # host code
_IGNORE = tl.constexpr(IGNORE_INDEX)  # jit code (the compiler accepts constexpr globals only)
EPS = 1e-12  # F.normalize's eps
TINY_MAX = 64  # M, N <= TINY_MAX: the tiny-group kernels
TINY_MAX_BYTES = 1 << 14  # and a [BM, BN] logits tile of <= 16 KiB in ACC (_tiny_bytes)
TINY_BYTES_PER_WARP = 8192  # tiny kernels: a warp per 8 KiB live (64 registers a thread), 4-16
TINY_CHUNK_BYTES = 4096  # tiny backward: (BLOCK_M + BLOCK_N) * BLOCK_D accumulator bytes
TINY_STAGES = 2
BLOCK_D_MAX = 128  # the D chunk a large-backward program owns (64 in float64)
AUTO, TINY, LARGE = 0, 1, 2
ALIGN = 16  # the kernels read rows of a multiple of 16 elements (see _aligned)


def _tiles(*tiles: tuple[int, int, int, int]) -> list:
    """An autotune list of (BLOCK_M, BLOCK_N, num_warps, num_stages); 16 x 16 interpreted."""
    return configs({"BLOCK_M": 16, "BLOCK_N": 16},
                   [({"BLOCK_M": bm, "BLOCK_N": bn}, w, s) for bm, bn, w, s in tiles])


# Autotune lists of the large kernels, per tile class of the input dtype (_tile_class): 16 for
# fp16 / bf16 (tensor-core dots; wgmma on sm_90 wants 64-row tiles), 32 for fp32 / fp64 (fp32
# dots with input_precision="ieee" are FMAs: about twice the registers per tile element of an
# MMA; fp64 MMAs hold 8-byte accumulators). Each config of a class fits sm_80 and sm_90 for
# every dtype of the class and any D: shared memory under the limit, no spills (ptxas -v of
# ahead-of-time compiles, docs/kernels/info_nce.md). Rows are padded to 16 elements
# (_aligned) and the D chunks capped, so every D >= 128 compiles the tiles of D = 256;
# smaller D compile smaller chunks (checked at D = 16, 48, 64). Wider tiles spill (fp32
# 64 x 64 backward on sm_80, 128 x 128 in every dtype), as do 4-warp backward tiles (64 x 64;
# 32 x 32 at D = 48, 64).
_FWD_CONFIGS = {16: _tiles((64, 64, 8, 3), (128, 64, 8, 3), (64, 128, 8, 3)),
                32: _tiles((64, 64, 8, 3), (32, 64, 8, 3))}
_ROW_CONFIGS = {16: _tiles((64, 64, 8, 3), (64, 128, 8, 3)),  # _rows_bwd: loops over N
                32: _tiles((32, 64, 8, 3), (64, 32, 8, 3))}
_COL_CONFIGS = {16: _tiles((64, 64, 8, 3), (128, 64, 8, 3)),  # _cols_bwd: loops over M
                32: _tiles((32, 64, 8, 3), (32, 32, 8, 2))}


@triton.jit
def _norms(X, OUT, R, D, NORMALIZE: tl.constexpr, BLOCK_R: tl.constexpr,
           BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    # ||x_r|| in ACC (1 when not normalising: the kernels then use the raw vectors).
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < R
    if NORMALIZE:
        ss = tl.zeros([BLOCK_R], ACC)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            x = tl.load(X + rows[:, None] * D + d[None, :],
                        mask=mask_r[:, None] & (d < D)[None, :], other=0.0).to(ACC)
            ss += tl.sum(x * x, 1)
        if ACC == tl.float32:
            nrm = tl.sqrt_rn(ss)  # IEEE-rounded (tl.sqrt is the fast one on GPU)
        else:
            nrm = tl.sqrt(ss)
    else:
        nrm = tl.full([BLOCK_R], 1.0, ACC)
    tl.store(OUT + rows, nrm, mask=mask_r)


@triton.jit
def _inv(nrm, eps, NORMALIZE: tl.constexpr):
    # 1 / max(||x||, eps), and whether the projection term of the gradient applies.
    if NORMALIZE:
        inv = 1.0 / tl.maximum(nrm, eps)
        proj = nrm >= eps
    else:
        inv = nrm  # ones
        proj = nrm < 0.0  # all False
    return inv, proj


@triton.jit
def _f(hi, lo, ACC: tl.constexpr):
    # A host float passed as hi + lo float32 parts (split_float), rebuilt in ACC.
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def _inv_norm(NX, offs, mask, eps, NORMALIZE: tl.constexpr, ACC: tl.constexpr):
    # _inv of the saved norms NX[offs] (1 on masked rows). The callers pass the group's base
    # pointer and the in-group offsets (int32 vectors: an int64 g * M + offs costs registers).
    return _inv(tl.load(NX + offs, mask=mask, other=1.0).to(ACC), eps, NORMALIZE)


@triton.jit
def _row_grad(LSE, T, GL, offs, mask, ACC: tl.constexpr):
    # The backward's per-row inputs at offs of the group's rows: saved lse, target, upstream
    # gradient (0 on ignored rows, whatever it holds: they get exactly zero gradient).
    lse = tl.load(LSE + offs, mask=mask, other=0.0).to(ACC)
    tgt = tl.load(T + offs, mask=mask, other=_IGNORE)
    gl = tl.load(GL + offs, mask=mask, other=0.0).to(ACC)
    return lse, tgt, tl.where(tgt != _IGNORE, gl, 0.0)


@triton.jit
def _grad_through_norm(gx_hat, x, inv, proj, dot_xhat_g):
    # (g - x_hat <x_hat, g>) / ||x|| (projection) or g / eps; x_hat = x inv.
    corr = tl.where(proj, inv * dot_xhat_g, 0.0)
    return (gx_hat - x * corr[:, None]) * inv[:, None]


@triton.jit
def _raw_logits(A, Cd, g, M, N, D, offs_m, mask_m, offs_n, mask_n,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                ACC: tl.constexpr, DOT: tl.constexpr):
    # <a_i, c_j> of an [anchor tile, candidate tile] over the whole D, BLOCK_K columns at a
    # time (a K-loop, as a GEMM): a fixed summation order, and tiles of any D fit.
    offs_k = tl.arange(0, BLOCK_K)
    L = tl.zeros([BLOCK_M, BLOCK_N], ACC)
    for k0 in range(0, D, BLOCK_K):
        k = k0 + offs_k
        mask_k = k < D
        a = tl.load(A + (g * M + offs_m[:, None]) * D + k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(DOT)
        c = tl.load(Cd + (g * N + offs_n[:, None]) * D + k[None, :],
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0).to(DOT)
        # no TF32; the ACC accumulator (out_dtype: triton 3.6 asserts acc dtype == out_dtype,
        # float32 by default, so float64 needs it named)
        L = tl.dot(a, tl.trans(c), L, input_precision="ieee", out_dtype=ACC)
    return L


@triton.jit
def _dlogits(L, lse, gl, tgt, offs_n, mn):
    # dL = g_i (P - onehot(t_i)), P = exp(L - lse); 0 on padding (gl is 0 on ignored rows).
    onehot = tl.where(offs_n[None, :] == tgt[:, None], 1.0, 0.0)
    p = tl.exp(tl.where(mn, L - lse[:, None], float("-inf")))
    return tl.where(mn, gl[:, None] * (p - onehot), 0.0)


@triton.jit
def _tiny_fwd(
    A, Cd, T, NA, NC, LOSS, LSE, G, M, N, D, it_hi, it_lo, eps_hi, eps_lo,
    GROUPS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    NORMALIZE: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    # Grid (cdiv(G, GROUPS),). Writes the per-row loss and its log-sum-exp, which autograd
    # saves with a, c, t: never the [M, N] logits.
    inv_temp, eps = _f(it_hi, it_lo, ACC), _f(eps_hi, eps_lo, ACC)  # 1 / T and eps in ACC
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    for gi in range(GROUPS):
        # 1. Group g (past G: every mask false, nothing stored).
        g = tl.program_id(0).to(tl.int64) * GROUPS + gi
        gv = g < G
        mask_m = (offs_m < M) & gv
        mask_n = (offs_n < N) & gv
        inv_a, _pa = _inv_norm(NA + g * M, offs_m, mask_m, eps, NORMALIZE, ACC)
        inv_c, _pc = _inv_norm(NC + g * N, offs_n, mask_n, eps, NORMALIZE, ACC)
        # 2. The group's whole [M, N] logits in registers, a K-loop over D in BLOCK_K chunks
        #    (fp32 dot without TF32; ACC = float64 for float64 inputs).
        L = _raw_logits(A, Cd, g, M, N, D, offs_m, mask_m, offs_n, mask_n,
                        BLOCK_M, BLOCK_N, BLOCK_K, ACC, DOT)
        L = L * (inv_a[:, None] * inv_temp) * inv_c[None, :]
        L = tl.where((offs_n < N)[None, :], L, float("-inf"))  # (finite rows past G)
        # 3. Row log-sum-exp and the target logit (a target never indexes memory).
        mx = tl.max(L, 1)
        l_i = tl.sum(tl.exp(L - mx[:, None]), 1)
        tgt = tl.load(T + g * M + offs_m, mask=mask_m, other=_IGNORE)
        lt = tl.sum(tl.where(offs_n[None, :] == tgt[:, None], L, 0.0), 1)
        # 4. loss = (max - target logit) + log(sum); the saved statistic is lse = max +
        #    log(sum) in ACC, the layout of every backend: the backward's P =
        #    exp(L - lse) carries its rounding, half an ulp of |lse| (float32: 6e-8 |lse|).
        loss = tl.where(tgt != _IGNORE, (mx - lt) + tl.log(l_i), 0.0)
        tl.store(LOSS + g * M + offs_m, loss, mask=mask_m)
        tl.store(LSE + g * M + offs_m, mx + tl.log(l_i), mask=mask_m)


@triton.jit
def _tiny_bwd(
    A, Cd, T, NA, NC, LSE, GL, GA, GC, G, M, N, D, DO, it_hi, it_lo, eps_hi, eps_lo,
    GROUPS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr, NORMALIZE: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    # Grid (cdiv(G, GROUPS),). Reads the saved a, c, t, lse and the upstream gradient; the
    # logits are recomputed (same K-loop as the forward), both gradients written per D chunk.
    inv_temp, eps = _f(it_hi, it_lo, ACC), _f(eps_hi, eps_lo, ACC)  # 1 / T and eps in ACC
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_dd = tl.arange(0, BLOCK_D)
    for gi in range(GROUPS):
        # 1. Group g: recompute the logits as in _tiny_fwd (K-loop over D).
        g = tl.program_id(0).to(tl.int64) * GROUPS + gi
        gv = g < G
        mask_m = (offs_m < M) & gv
        mask_n = (offs_n < N) & gv
        inv_a, proj_a = _inv_norm(NA + g * M, offs_m, mask_m, eps, NORMALIZE, ACC)
        inv_c, proj_c = _inv_norm(NC + g * N, offs_n, mask_n, eps, NORMALIZE, ACC)
        L = _raw_logits(A, Cd, g, M, N, D, offs_m, mask_m, offs_n, mask_n,
                        BLOCK_M, BLOCK_N, BLOCK_K, ACC, DOT)
        L = L * (inv_a[:, None] * inv_temp) * inv_c[None, :]
        mn = mask_m[:, None] & mask_n[None, :]
        # 2. dL = g_i (softmax - onehot(t_i)), 0 on ignored rows and padding; the projection
        #    terms sum_j dL L (rows) and sum_i dL L (columns).
        lse, tgt, gl = _row_grad(LSE + g * M, T + g * M, GL + g * M, offs_m, mask_m, ACC)
        dL = _dlogits(L, lse, gl, tgt, offs_n, mn)
        dLL = tl.where(mn, dL * L, 0.0)
        r = tl.sum(dLL, 1)
        s = tl.sum(dLL, 0)
        dl_a = (dL * inv_c[None, :]).to(DOT)  # dL c_hat = (dL / ||c||) c
        dl_c = tl.trans((dL * inv_a[:, None]).to(DOT))  # dL^T a_hat
        # 3. Over D chunks of BLOCK_D (the group's tiles re-read, from L1/L2): grad of
        #    a_hat = dL c_hat / T, of c_hat = dL^T a_hat / T; then through the norms.
        for d0 in range(0, D, BLOCK_D):
            d = d0 + offs_dd
            mask_d = d < D
            a = tl.load(A + (g * M + offs_m[:, None]) * D + d[None, :],
                        mask=mask_m[:, None] & mask_d[None, :], other=0.0)
            c = tl.load(Cd + (g * N + offs_n[:, None]) * D + d[None, :],
                        mask=mask_n[:, None] & mask_d[None, :], other=0.0)
            ga_hat = tl.dot(dl_a, c.to(DOT), input_precision="ieee", out_dtype=ACC)
            gc_hat = tl.dot(dl_c, a.to(DOT), input_precision="ieee", out_dtype=ACC)
            ga = _grad_through_norm(ga_hat * inv_temp, a.to(ACC), inv_a, proj_a, r)
            gc = _grad_through_norm(gc_hat * inv_temp, c.to(ACC), inv_c, proj_c, s)
            tl.store(GA + (g * M + offs_m[:, None]) * DO + d[None, :],
                     ga.to(GA.dtype.element_ty), mask=mask_m[:, None] & (d < DO)[None, :])
            tl.store(GC + (g * N + offs_n[:, None]) * DO + d[None, :],
                     gc.to(GC.dtype.element_ty), mask=mask_n[:, None] & (d < DO)[None, :])


@triton.jit
def _rows_fwd(
    A, Cd, T, NA, NC, LOSS, LSE, M, N, D, it_hi, it_lo, eps_hi, eps_lo,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    NORMALIZE: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    # Grid (G, cdiv(M, BLOCK_M)). Writes the per-row loss and its log-sum-exp (saved, with a, c, t).
    inv_temp, eps = _f(it_hi, it_lo, ACC), _f(eps_hi, eps_lo, ACC)  # 1 / T and eps in ACC
    # 1. An anchor tile of group g (its rows' norms, targets); D is read in BLOCK_K chunks.
    g = tl.program_id(0).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    inv_a, _pa = _inv_norm(NA + g * M, offs_m, mask_m, eps, NORMALIZE, ACC)
    row_scale = inv_a * inv_temp
    tgt = tl.load(T + g * M + offs_m, mask=mask_m, other=_IGNORE)
    m_i = tl.full([BLOCK_M], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_M], ACC)
    lt = tl.zeros([BLOCK_M], ACC)
    # 2. Online log-sum-exp over candidate tiles; each logits tile is a K-loop over D
    #    (_raw_logits); the target logit is picked up in its tile.
    for n0 in range(0, N, BLOCK_N):
        n = n0 + offs_n
        mask_n = n < N
        inv_c, _pc = _inv_norm(NC + g * N, n, mask_n, eps, NORMALIZE, ACC)
        L = _raw_logits(A, Cd, g, M, N, D, offs_m, mask_m, n, mask_n,
                        BLOCK_M, BLOCK_N, BLOCK_K, ACC, DOT)
        L = L * row_scale[:, None] * inv_c[None, :]
        L = tl.where(mask_n[None, :], L, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(L, 1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(L - m_new[:, None]), 1)
        m_i = m_new
        lt += tl.sum(tl.where(n[None, :] == tgt[:, None], L, 0.0), 1)
    # 3. loss = (max - target logit) + log(sum) (0 when ignored); lse = max + log(sum).
    loss = tl.where(tgt != _IGNORE, (m_i - lt) + tl.log(l_i), 0.0)
    tl.store(LOSS + g * M + offs_m, loss, mask=mask_m)
    tl.store(LSE + g * M + offs_m, m_i + tl.log(l_i), mask=mask_m)


@triton.jit
def _rows_bwd(
    A, Cd, T, NA, NC, LSE, GL, GA, M, N, D, DO, it_hi, it_lo, eps_hi, eps_lo,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr, NORMALIZE: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    # Grid (G * cdiv(D, BLOCK_D), cdiv(M, BLOCK_M)). Reads the saved a, c, t, lse.
    inv_temp, eps = _f(it_hi, it_lo, ACC), _f(eps_hi, eps_lo, ACC)  # 1 / T and eps in ACC
    # 1. Row pass of the backward. Program (g * cdiv(D, BLOCK_D) + dj, i) owns
    #    ga[g, m-tile i, d-chunk dj]: the anchor tile's LSE, targets, upstream gradient.
    nd = tl.cdiv(D, BLOCK_D)
    g = (tl.program_id(0) // nd).to(tl.int64)
    offs_d = (tl.program_id(0) % nd) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_d = offs_d < D
    inv_a, proj_a = _inv_norm(NA + g * M, offs_m, mask_m, eps, NORMALIZE, ACC)
    row_scale = inv_a * inv_temp
    lse, tgt, gl = _row_grad(LSE + g * M, T + g * M, GL + g * M, offs_m, mask_m, ACC)
    ga_hat = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    r = tl.zeros([BLOCK_M], ACC)
    # 2. Over candidate tiles: the logits tile over the WHOLE D (K-loop, recomputed by every
    #    d-chunk program of this tile: r needs all of D); dL = g (P - onehot);
    #    r += sum_j dL L (the same bits in every d-chunk program); ga_hat += dL c_hat[:, chunk].
    for n0 in range(0, N, BLOCK_N):
        n = n0 + offs_n
        mask_n = n < N
        inv_c, _pc = _inv_norm(NC + g * N, n, mask_n, eps, NORMALIZE, ACC)
        L = _raw_logits(A, Cd, g, M, N, D, offs_m, mask_m, n, mask_n,
                        BLOCK_M, BLOCK_N, BLOCK_K, ACC, DOT)
        L = L * row_scale[:, None] * inv_c[None, :]
        mn = mask_m[:, None] & mask_n[None, :]
        dL = _dlogits(L, lse, gl, tgt, n, mn)
        r += tl.sum(tl.where(mn, dL * L, 0.0), 1)
        c = tl.load(Cd + (g * N + n[:, None]) * D + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(DOT)
        ga_hat = tl.dot((dL * inv_c[None, :]).to(c.dtype), c, ga_hat, input_precision="ieee",
                        out_dtype=ACC)
    # 3. Through the normalisation (the chunk of a it needs); one store per tile.
    a = tl.load(A + (g * M + offs_m[:, None]) * D + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0).to(ACC)
    ga = _grad_through_norm(ga_hat * inv_temp, a, inv_a, proj_a, r)
    tl.store(GA + (g * M + offs_m[:, None]) * DO + offs_d[None, :], ga.to(GA.dtype.element_ty),
             mask=mask_m[:, None] & (offs_d < DO)[None, :])


@triton.jit
def _cols_bwd(
    A, Cd, T, NA, NC, LSE, GL, GC, M, N, D, DO, it_hi, it_lo, eps_hi, eps_lo,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr, NORMALIZE: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    # Grid (G * cdiv(D, BLOCK_D), cdiv(N, BLOCK_N)). Reads the saved a, c, t, lse.
    inv_temp, eps = _f(it_hi, it_lo, ACC), _f(eps_hi, eps_lo, ACC)  # 1 / T and eps in ACC
    # 1. Column pass of the backward. Program (g * cdiv(D, BLOCK_D) + dj, j) owns
    #    gc[g, n-tile j, d-chunk dj].
    nd = tl.cdiv(D, BLOCK_D)
    g = (tl.program_id(0) // nd).to(tl.int64)
    offs_d = (tl.program_id(0) % nd) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    mask_n = offs_n < N
    mask_d = offs_d < D
    inv_c, proj_c = _inv_norm(NC + g * N, offs_n, mask_n, eps, NORMALIZE, ACC)
    gc_hat = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    s = tl.zeros([BLOCK_N], ACC)
    # 2. Over anchor tiles (in increasing order): the logits tile over the whole D (K-loop,
    #    recomputed per d-chunk program); s += sum_i dL L; gc_hat += dL^T a_hat[:, chunk].
    for m0 in range(0, M, BLOCK_M):
        m = m0 + offs_m
        mask_m = m < M
        inv_a, _pa = _inv_norm(NA + g * M, m, mask_m, eps, NORMALIZE, ACC)
        lse, tgt, gl = _row_grad(LSE + g * M, T + g * M, GL + g * M, m, mask_m, ACC)
        L = _raw_logits(A, Cd, g, M, N, D, m, mask_m, offs_n, mask_n,
                        BLOCK_M, BLOCK_N, BLOCK_K, ACC, DOT)
        L = L * (inv_a * inv_temp)[:, None] * inv_c[None, :]
        mn = mask_m[:, None] & mask_n[None, :]
        dL = _dlogits(L, lse, gl, tgt, offs_n, mn)
        s += tl.sum(tl.where(mn, dL * L, 0.0), 0)
        a = tl.load(A + (g * M + m[:, None]) * D + offs_d[None, :],
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0).to(DOT)
        gc_hat = tl.dot(tl.trans((dL * inv_a[:, None]).to(a.dtype)), a, gc_hat,
                        input_precision="ieee", out_dtype=ACC)
    # 3. Through the normalisation; one store per tile.
    c = tl.load(Cd + (g * N + offs_n[:, None]) * D + offs_d[None, :],
                mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(ACC)
    gc = _grad_through_norm(gc_hat * inv_temp, c, inv_c, proj_c, s)
    tl.store(GC + (g * N + offs_n[:, None]) * DO + offs_d[None, :], gc.to(GC.dtype.element_ty),
             mask=mask_n[:, None] & (offs_d < DO)[None, :])


def _autotuned(kernel, lists: dict) -> dict:
    """One autotuner per tile class over the same kernel (so each dtype compiles and tunes
    only the configs of its class)."""
    return {k: triton.autotune(configs=v, key=["M", "N", "D"])(kernel) for k, v in lists.items()}


_ROWS_FWD = _autotuned(_rows_fwd, _FWD_CONFIGS)
_ROWS_BWD = _autotuned(_rows_bwd, _ROW_CONFIGS)
_COLS_BWD = _autotuned(_cols_bwd, _COL_CONFIGS)


def _tile_class(dtype: torch.dtype) -> int:
    return 16 if dtype.itemsize == 2 else 32


def _norm_rows(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    G, R, D = x.shape
    out = torch.empty((G, R), dtype=acc_dtype(x.dtype), device=x.device)
    block_r = 16
    _norms[(triton.cdiv(G * R, block_r),)](
        x, out, G * R, D, NORMALIZE=normalize, BLOCK_R=block_r, BLOCK_D=min(128, pow2(D)),
        ACC=tl_acc(x.dtype),
    )
    return out


def _acc_bytes(dtype: torch.dtype) -> int:
    return 8 if dtype == torch.float64 else 4


def _tiny_bytes(M: int, N: int, dtype: torch.dtype) -> int:
    """Bytes of a group's [BLOCK_M, BLOCK_N] logits tile in the accumulation dtype: what a
    tiny program keeps in registers besides its D chunks (the size limit of the regime)."""
    return pow2(M) * pow2(N) * _acc_bytes(dtype)


def _tiny_fits(M: int, N: int, D: int, dtype: torch.dtype) -> bool:
    return max(M, N) <= TINY_MAX and _tiny_bytes(M, N, dtype) <= TINY_MAX_BYTES


def _regime(M: int, N: int, D: int, dtype: torch.dtype, regime: int) -> int:
    fits = _tiny_fits(M, N, D, dtype)
    if regime == TINY and not fits:
        raise RuntimeError(
            f"art_fast.info_nce: the tiny regime needs M, N <= {TINY_MAX} and a logits tile "
            f"pow2(M) * pow2(N) * (accumulator bytes: 8 for float64, else 4) <= "
            f"{TINY_MAX_BYTES} bytes (TINY_MAX_BYTES), got M = {M}, N = {N}, {dtype}: "
            f"{_tiny_bytes(M, N, dtype)} bytes; use the large regime")
    if regime in (TINY, LARGE):
        return regime
    return TINY if fits else LARGE


def _groups_per_program(M: int, N: int) -> int:
    # several small groups per program, one after the other (fewer, fuller programs).
    return max(1, min(8, 4096 // (pow2(M) * pow2(N))))


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _tiny_meta(M: int, N: int, D: int, dtype: torch.dtype, backward: bool) -> dict:
    """Launch parameters of the tiny kernels (tiles, D chunks, groups, warps, stages), from the
    bytes a program keeps live: its logits tiles (L, P / dL, dL L: about 3 [BM, BN] tiles in
    ACC) and its D chunks (K-loop: [BM + BN, BLOCK_K] in the input dtype; backward: a and c
    chunks, in the input dtype and in ACC, and their gradients in ACC)."""
    bm, bn, acc, elt = pow2(M), pow2(N), _acc_bytes(dtype), dtype.itemsize
    bk = _block_k(D, dtype)
    meta = dict(GROUPS=_groups_per_program(M, N), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    live = 3 * bm * bn * acc + (bm + bn) * bk * elt
    if backward:
        bd = min(pow2(D), max(16, _pow2_floor(TINY_CHUNK_BYTES // ((bm + bn) * acc))))
        meta["BLOCK_D"] = bd
        live += (bm + bn) * bd * (elt + 2 * acc)
    per_warp = TINY_BYTES_PER_WARP * acc // 4  # fp64: 16 KiB (measured: fp64 spilled at 8)
    warps = min(16, max(4, pow2(triton.cdiv(live, per_warp), lo=1)))
    meta.update(num_warps=warps, num_stages=TINY_STAGES)
    return meta


def _block_k(D: int, dtype: torch.dtype) -> int:
    """The D chunk of the logits K-loop: 128 bytes of a row (32 fp32, 64 bf16, 16 fp64)."""
    return min(pow2(D), max(16, 128 // dtype.itemsize))


def _block_d(D: int, dtype: torch.dtype) -> int:
    """The D chunk a backward program owns (its [BLOCK_M, BLOCK_D] accumulator)."""
    return min(pow2(D), BLOCK_D_MAX // _acc_bytes(dtype) * 4)


def _aligned(x: torch.Tensor) -> torch.Tensor:
    """``x`` with rows of a multiple of ALIGN elements: zero-padded copy when D is not one.
    Triton specialises D on divisibility by 16: unaligned rows give element-wise loads without
    cp.async, and those spilled in most large configs and several tiny ones (ahead-of-time
    compiles at D = 40, 33, 200). The zeros change no dot product and no norm."""
    D = x.shape[-1]
    return x if D % ALIGN == 0 else torch.nn.functional.pad(x, (0, -D % ALIGN))


def _fwd_host(anchors, candidates, targets, temperature, normalize, regime):
    check_device("info_nce", anchors, candidates)
    a, c, t = anchors.contiguous(), candidates.contiguous(), targets.contiguous()
    G, M, _ = a.shape
    N = c.shape[1]
    a, c = _aligned(a), _aligned(c)
    D = a.shape[-1]  # the row length the kernels read (a multiple of ALIGN)
    acc = acc_dtype(a.dtype)
    loss = torch.empty((G, M), dtype=acc, device=a.device)
    lse = torch.empty((G, M), dtype=acc, device=a.device)
    with device_ctx(a):
        na, nc = _norm_rows(a, normalize), _norm_rows(c, normalize)
        scal = (*split_float(1.0 / temperature), *split_float(EPS))
        common = dict(NORMALIZE=normalize, ACC=tl_acc(a.dtype), DOT=tl_dot(a.dtype))
        if _regime(M, N, D, a.dtype, regime) == TINY:
            meta = _tiny_meta(M, N, D, a.dtype, backward=False)
            _tiny_fwd[(triton.cdiv(G, meta["GROUPS"]),)](
                a, c, t, na, nc, loss, lse, G, M, N, D, *scal, **meta, **common,
            )
        else:
            _ROWS_FWD[_tile_class(a.dtype)][lambda meta: (G, triton.cdiv(M, meta["BLOCK_M"]))](
                a, c, t, na, nc, loss, lse, M, N, D, *scal,
                BLOCK_K=_block_k(D, a.dtype), **common,
            )
    return loss, lse


def _bwd_host(grad_loss, anchors, candidates, targets, lse, temperature, normalize, regime):
    check_device("info_nce", anchors, candidates)
    a, c, t = anchors.contiguous(), candidates.contiguous(), targets.contiguous()
    gl = grad_loss.contiguous()
    G, M, DO = a.shape  # DO: the gradients' row length
    N = c.shape[1]
    ga = torch.empty_like(a)
    gc = torch.empty_like(c)
    a, c = _aligned(a), _aligned(c)
    D = a.shape[-1]  # the row length the kernels read (a multiple of ALIGN)
    with device_ctx(a):
        na, nc = _norm_rows(a, normalize), _norm_rows(c, normalize)
        scal = (*split_float(1.0 / temperature), *split_float(EPS))
        common = dict(NORMALIZE=normalize, ACC=tl_acc(a.dtype), DOT=tl_dot(a.dtype))
        args = (a, c, t, na, nc, lse, gl)
        if _regime(M, N, D, a.dtype, regime) == TINY:
            meta = _tiny_meta(M, N, D, a.dtype, backward=True)
            _tiny_bwd[(triton.cdiv(G, meta["GROUPS"]),)](
                *args, ga, gc, G, M, N, D, DO, *scal, **meta, **common,
            )
        else:
            bd = _block_d(D, a.dtype)
            chunks = dict(BLOCK_K=_block_k(D, a.dtype), BLOCK_D=bd, **common)
            nd = triton.cdiv(D, bd)  # programs per output tile (grid axis 0: g * nd + chunk)
            tc = _tile_class(a.dtype)
            # Unaligned gradient rows cost the large kernels' epilogue registers (spills at
            # D = 200 in ahead-of-time compiles): they store padded rows, copied out after.
            ga_k = ga if D == DO else a.new_empty((G, M, D))
            gc_k = gc if D == DO else c.new_empty((G, N, D))
            _ROWS_BWD[tc][lambda meta: (G * nd, triton.cdiv(M, meta["BLOCK_M"]))](
                *args, ga_k, M, N, D, D, *scal, **chunks,
            )
            _COLS_BWD[tc][lambda meta: (G * nd, triton.cdiv(N, meta["BLOCK_N"]))](
                *args, gc_k, M, N, D, D, *scal, **chunks,
            )
            if D != DO:
                ga.copy_(ga_k[..., :DO])
                gc.copy_(gc_k[..., :DO])
    return ga, gc


REGIME = AUTO
"""The regime every call of the ops below uses: AUTO (chosen from M, N and the dtype), TINY or
LARGE (tests set it to reach both kernels at small shapes; not part of the op contract)."""


# The ops of the contract (art_fast/ops/info_nce.py: the schemas, the fake kernels and the
# autograd, registered there for every backend; the C++ schemas in csrc/ are the same).
@torch.library.custom_op(f"{NAMESPACE}::info_nce_fwd", mutates_args=())
def info_nce_fwd(anchors: Tensor, candidates: Tensor, targets: Tensor, temperature: float,
                 normalize: bool) -> tuple[Tensor, Tensor]:
    """(loss ``[G, M]``, lse ``[G, M]``), float32 (float64 for float64 inputs)."""
    return _fwd_host(anchors, candidates, targets, temperature, normalize, REGIME)


@torch.library.custom_op(f"{NAMESPACE}::info_nce_bwd", mutates_args=())
def info_nce_bwd(grad_loss: Tensor, anchors: Tensor, candidates: Tensor, targets: Tensor,
                 lse: Tensor, temperature: float, normalize: bool) -> tuple[Tensor, Tensor]:
    """(grad anchors, grad candidates) from the per-row upstream gradient ``[G, M]``."""
    return _bwd_host(grad_loss, anchors, candidates, targets, lse, temperature, normalize,
                     REGIME)


@torch.library.custom_op(f"{NAMESPACE}::info_nce_fused", mutates_args=())
def info_nce_fused(anchors: Tensor, candidates: Tensor, targets: Tensor, temperature: float,
                   normalize: bool, mean: bool, compute_grad: bool
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """(loss ``[]`` reduced (mean over kept rows when ``mean``, else sum), d loss / d anchors,
    d loss / d candidates, or two ``[0]`` tensors without ``compute_grad``): the fused entry of
    the contract. Here it runs the forward kernels, then, when asked, the backward kernels with
    the upstream gradient of every kept row (1 / count or 1): not one pass as the C++ kernels,
    the same outputs."""
    loss, lse = _fwd_host(anchors, candidates, targets, temperature, normalize, REGIME)
    kept = targets != IGNORE_INDEX
    scale = 1.0 / kept.sum().clamp(min=1).to(loss.dtype) if mean else loss.new_ones(())
    total = loss.sum() * scale
    if not compute_grad:
        return total, anchors.new_empty((0,)), candidates.new_empty((0,))
    grad_loss = kept.to(loss.dtype) * scale
    ga, gc = _bwd_host(grad_loss, anchors, candidates, targets, lse, temperature, normalize,
                       REGIME)
    return total, ga, gc


# ---- ahead-of-time compile scenarios (benchmarks/triton_aot.py: compiled for sm_80 / sm_90 in
# CI, every launch of the host functions at these shapes on meta tensors) ----------------------
def _aot(G, M, N, D, normalize=True):
    def run(dtype, meta, backward):
        acc = acc_dtype(dtype)
        a, c, t = meta((G, M, D), dtype), meta((G, N, D), dtype), meta((G, M), torch.int64)
        _fwd_host(a, c, t, 0.1, normalize, AUTO)
        backward()
        _bwd_host(meta((G, M), acc), a, c, t, meta((G, M), acc), 0.1, normalize, AUTO)

    return run


# (name, run, dtypes "paper" | "all", sets "ci" (ci + full) | "full", spills fail it).
# Tiny regime G = 1e5 groups of M = N = 16, D = 256; large regime one group of M = N = 2048
# and 32768 (the regime limit), D = 256.
AOT_SCENARIOS = (
    ("paper tiny", _aot(100000, 16, 16, 256), "paper", "ci", True),
    ("paper large 2048", _aot(1, 2048, 2048, 256), "paper", "ci", True),
    ("paper tiny", _aot(100000, 16, 16, 256), "all", "full", True),
    ("paper tiny, no normalize", _aot(100000, 16, 16, 256, False), "all", "full", True),
    ("paper large 2048", _aot(1, 2048, 2048, 256), "all", "full", True),
    ("large 32768 (limit)", _aot(1, 32768, 32768, 256), "all", "full", True),
    ("tiny M=N=64", _aot(4096, 64, 64, 128), "all", "full", False),
    ("large D=1024", _aot(2, 4096, 4096, 1024), "all", "full", False),
    ("large D=40 M=300", _aot(8, 300, 200, 40), "all", "full", False),
)


_contract.provided("info_nce")  # the fake kernels and autograd of the contract
