"""Triton kernels of ``art_fast.info_nce`` (DESIGN §3.3): forward and backward, two regimes.

logits[g, i, j] = <a_gi, c_gj> / T (after L2 normalisation when ``normalize``),
loss[g, i] = logsumexp_j logits[g, i, :] - logits[g, i, t_gi] (0 when t_gi = -100).
Profile note: ``docs/kernels/info_nce.md``.

Normalisation is never materialised: ``_norms`` writes ||x|| per row, and the kernels scale
the raw dot products, logits = <a, c> / (max(||a||, eps) max(||c||, eps) T). The gradient
through x_hat = x / max(||x||, eps) is (g - x_hat <x_hat, g>) / ||x|| when ||x|| >= eps (the
autograd of F.normalize) and g / eps below; <a_hat_i, g_ahat_i> = sum_j dL_ij L_ij needs no
second pass over D.

Regimes (chosen per call from M, N, D; ``regime`` forces one, for tests):

- tiny (M, N <= 64): ``_tiny_fwd`` / ``_tiny_bwd``, grid ``(cdiv(G, GROUPS),)``; a program
  handles GROUPS groups one after the other, each with its whole [M, N] logits in registers;
  the backward computes both gradients of a group in the same program.
- large: ``_rows_fwd`` grid ``(G, cdiv(M, BLOCK_M))``, an online log-sum-exp over candidate
  tiles (no [M, N] buffer: memory O(M + N)); backward in two passes, as Inf-CL does:
  ``_rows_bwd`` (same grid) accumulates grad anchors over candidate tiles, ``_cols_bwd`` (grid
  ``(G, cdiv(N, BLOCK_N))``) accumulates grad candidates over anchor tiles. Every output tile
  has one owner: no atomics, bitwise reproducible.

The ops are ``art_fast_triton::info_nce_fwd`` (per-row loss, row max and sum) and
``_bwd`` (custom ops with fake kernels and autograd); :func:`forward` applies the reduction on
top (a sum over [G, M] rows in torch, deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

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
TINY_MAX_TILE = 1 << 15  # (BLOCK_M + BLOCK_N) * BLOCK_D elements in registers, at most
AUTO, TINY, LARGE = 0, 1, 2

_ROW_CONFIGS = configs(
    {"BLOCK_M": 16, "BLOCK_N": 16},
    [({"BLOCK_M": bm, "BLOCK_N": bn}, w, s)
     for bm, bn, w, s in ((64, 64, 4, 2), (64, 64, 8, 3), (128, 64, 8, 3), (64, 128, 8, 3),
                          (32, 64, 4, 2))],
)
_COL_CONFIGS = _ROW_CONFIGS


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
def _grad_through_norm(gx_hat, x, inv, proj, dot_xhat_g):
    # (g - x_hat <x_hat, g>) / ||x|| (projection) or g / eps; x_hat = x inv.
    corr = tl.where(proj, inv * dot_xhat_g, 0.0)
    return (gx_hat - x * corr[:, None]) * inv[:, None]


@triton.jit
def _tiny_fwd(
    A, Cd, T, NA, NC, LOSS, LSE, ss, G, M, N, D, it_hi, it_lo, eps_hi, eps_lo,
    GROUPS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    NORMALIZE: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    inv_temp = tl.cast(it_hi, ACC) + tl.cast(it_lo, ACC)  # 1 / T and eps in ACC (see split_float)
    eps = tl.cast(eps_hi, ACC) + tl.cast(eps_lo, ACC)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    for gi in range(GROUPS):
        # 1. Group g (past G: every mask false, nothing stored).
        g = tl.program_id(0).to(tl.int64) * GROUPS + gi
        gv = g < G
        mask_m = (offs_m < M) & gv
        mask_n = (offs_n < N) & gv
        a = tl.load(A + (g * M + offs_m[:, None]) * D + offs_d[None, :],
                    mask=mask_m[:, None] & (offs_d < D)[None, :], other=0.0).to(DOT)
        c = tl.load(Cd + (g * N + offs_n[:, None]) * D + offs_d[None, :],
                    mask=mask_n[:, None] & (offs_d < D)[None, :], other=0.0).to(DOT)
        inv_a, _pa = _inv(tl.load(NA + g * M + offs_m, mask=mask_m, other=1.0).to(ACC), eps,
                          NORMALIZE)
        inv_c, _pc = _inv(tl.load(NC + g * N + offs_n, mask=mask_n, other=1.0).to(ACC), eps,
                          NORMALIZE)
        # 2. Logits in registers (fp32 dot without TF32; ACC = float64 for float64 inputs).
        L = tl.dot(a, tl.trans(c), input_precision="ieee").to(ACC)
        L = L * (inv_a[:, None] * inv_temp) * inv_c[None, :]
        L = tl.where((offs_n < N)[None, :], L, float("-inf"))  # (finite rows past G)
        # 3. Row log-sum-exp and the target logit (a target never indexes memory).
        mx = tl.max(L, 1)
        l_i = tl.sum(tl.exp(L - mx[:, None]), 1)
        tgt = tl.load(T + g * M + offs_m, mask=mask_m, other=_IGNORE)
        lt = tl.sum(tl.where(offs_n[None, :] == tgt[:, None], L, 0.0), 1)
        # 4. loss = (max - target logit) + log(sum). The LSE is kept in two parts (max, sum of
        #    exp(L - max)) everywhere: its rounding at the scale of large logits would cost
        #    the softmax its precision; P = exp(L - max) / sum, as torch.softmax computes it.
        loss = tl.where(tgt != _IGNORE, (mx - lt) + tl.log(l_i), 0.0)
        tl.store(LOSS + g * M + offs_m, loss, mask=mask_m)
        tl.store(LSE + g * M + offs_m, mx, mask=mask_m)
        tl.store(LSE + ss + g * M + offs_m, l_i, mask=mask_m)


@triton.jit
def _tiny_bwd(
    A, Cd, T, NA, NC, LSE, ss, GL, GA, GC, G, M, N, D, it_hi, it_lo, eps_hi, eps_lo,
    GROUPS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    NORMALIZE: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    inv_temp = tl.cast(it_hi, ACC) + tl.cast(it_lo, ACC)  # 1 / T and eps in ACC (see split_float)
    eps = tl.cast(eps_hi, ACC) + tl.cast(eps_lo, ACC)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    for gi in range(GROUPS):
        # 1. Group g: recompute the logits as in _tiny_fwd.
        g = tl.program_id(0).to(tl.int64) * GROUPS + gi
        gv = g < G
        mask_m = (offs_m < M) & gv
        mask_n = (offs_n < N) & gv
        a = tl.load(A + (g * M + offs_m[:, None]) * D + offs_d[None, :],
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0).to(DOT)
        c = tl.load(Cd + (g * N + offs_n[:, None]) * D + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(DOT)
        inv_a, proj_a = _inv(tl.load(NA + g * M + offs_m, mask=mask_m, other=1.0).to(ACC), eps,
                             NORMALIZE)
        inv_c, proj_c = _inv(tl.load(NC + g * N + offs_n, mask=mask_n, other=1.0).to(ACC), eps,
                             NORMALIZE)
        L = tl.dot(a, tl.trans(c), input_precision="ieee").to(ACC)
        L = L * (inv_a[:, None] * inv_temp) * inv_c[None, :]
        mn = mask_m[:, None] & mask_n[None, :]
        # 2. dL = g_i (softmax - onehot(t_i)), 0 on ignored rows and padding.
        mx = tl.load(LSE + g * M + offs_m, mask=mask_m, other=0.0).to(ACC)
        l_i = tl.load(LSE + ss + g * M + offs_m, mask=mask_m, other=1.0).to(ACC)
        tgt = tl.load(T + g * M + offs_m, mask=mask_m, other=_IGNORE)
        gl = tl.load(GL + g * M + offs_m, mask=mask_m, other=0.0).to(ACC)
        gl = tl.where(tgt != _IGNORE, gl, 0.0)
        onehot = tl.where(offs_n[None, :] == tgt[:, None], 1.0, 0.0)
        p = tl.exp(tl.where(mn, L - mx[:, None], float("-inf"))) / l_i[:, None]
        dL = tl.where(mn, gl[:, None] * (p - onehot), 0.0)
        dLL = tl.where(mn, dL * L, 0.0)
        # 3. Grad of a_hat = dL c_hat / T, of c_hat = dL^T a_hat / T; then through the norms.
        ga_hat = tl.dot((dL * inv_c[None, :]).to(c.dtype), c, input_precision="ieee").to(ACC)
        gc_hat = tl.dot(tl.trans((dL * inv_a[:, None]).to(a.dtype)), a,
                        input_precision="ieee").to(ACC)
        ga = _grad_through_norm(ga_hat * inv_temp, a.to(ACC), inv_a, proj_a, tl.sum(dLL, 1))
        gc = _grad_through_norm(gc_hat * inv_temp, c.to(ACC), inv_c, proj_c, tl.sum(dLL, 0))
        tl.store(GA + (g * M + offs_m[:, None]) * D + offs_d[None, :],
                 ga.to(GA.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
        tl.store(GC + (g * N + offs_n[:, None]) * D + offs_d[None, :],
                 gc.to(GC.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])


@triton.autotune(configs=_ROW_CONFIGS, key=["M", "N", "D"])
@triton.jit
def _rows_fwd(
    A, Cd, T, NA, NC, LOSS, LSE, ss, M, N, D, it_hi, it_lo, eps_hi, eps_lo,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    NORMALIZE: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    inv_temp = tl.cast(it_hi, ACC) + tl.cast(it_lo, ACC)  # 1 / T and eps in ACC (see split_float)
    eps = tl.cast(eps_hi, ACC) + tl.cast(eps_lo, ACC)
    # 1. An anchor tile of group g, whole D, in registers.
    g = tl.program_id(0).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < M
    mask_d = offs_d < D
    a = tl.load(A + (g * M + offs_m[:, None]) * D + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0).to(DOT)
    inv_a, _pa = _inv(tl.load(NA + g * M + offs_m, mask=mask_m, other=1.0).to(ACC), eps,
                      NORMALIZE)
    row_scale = inv_a * inv_temp
    tgt = tl.load(T + g * M + offs_m, mask=mask_m, other=_IGNORE)
    m_i = tl.full([BLOCK_M], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_M], ACC)
    lt = tl.zeros([BLOCK_M], ACC)
    # 2. Online log-sum-exp over candidate tiles; the target logit is picked up in its tile.
    for n0 in range(0, N, BLOCK_N):
        n = n0 + offs_n
        mask_n = n < N
        c = tl.load(Cd + (g * N + n[:, None]) * D + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(DOT)
        inv_c, _pc = _inv(tl.load(NC + g * N + n, mask=mask_n, other=1.0).to(ACC), eps,
                          NORMALIZE)
        L = tl.dot(a, tl.trans(c), input_precision="ieee").to(ACC)
        L = L * row_scale[:, None] * inv_c[None, :]
        L = tl.where(mask_n[None, :], L, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(L, 1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(L - m_new[:, None]), 1)
        m_i = m_new
        lt += tl.sum(tl.where(n[None, :] == tgt[:, None], L, 0.0), 1)
    # 3. loss = (max - target logit) + log(sum) (0 when ignored); max and sum stored apart.
    loss = tl.where(tgt != _IGNORE, (m_i - lt) + tl.log(l_i), 0.0)
    tl.store(LOSS + g * M + offs_m, loss, mask=mask_m)
    tl.store(LSE + g * M + offs_m, m_i, mask=mask_m)
    tl.store(LSE + ss + g * M + offs_m, l_i, mask=mask_m)


@triton.autotune(configs=_ROW_CONFIGS, key=["M", "N", "D"])
@triton.jit
def _rows_bwd(
    A, Cd, T, NA, NC, LSE, ss, GL, GA, M, N, D, it_hi, it_lo, eps_hi, eps_lo,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    NORMALIZE: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    inv_temp = tl.cast(it_hi, ACC) + tl.cast(it_lo, ACC)  # 1 / T and eps in ACC (see split_float)
    eps = tl.cast(eps_hi, ACC) + tl.cast(eps_lo, ACC)
    # 1. Row pass of the backward: an anchor tile, its LSE, targets and upstream gradient.
    g = tl.program_id(0).to(tl.int64)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < M
    mask_d = offs_d < D
    a = tl.load(A + (g * M + offs_m[:, None]) * D + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0).to(DOT)
    inv_a, proj_a = _inv(tl.load(NA + g * M + offs_m, mask=mask_m, other=1.0).to(ACC), eps,
                         NORMALIZE)
    row_scale = inv_a * inv_temp
    mx = tl.load(LSE + g * M + offs_m, mask=mask_m, other=0.0).to(ACC)
    l_i = tl.load(LSE + ss + g * M + offs_m, mask=mask_m, other=1.0).to(ACC)
    tgt = tl.load(T + g * M + offs_m, mask=mask_m, other=_IGNORE)
    gl = tl.load(GL + g * M + offs_m, mask=mask_m, other=0.0).to(ACC)
    gl = tl.where(tgt != _IGNORE, gl, 0.0)
    ga_hat = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    r = tl.zeros([BLOCK_M], ACC)
    # 2. Over candidate tiles: dL = g (P - onehot); ga_hat += dL c_hat; r += sum_j dL L.
    for n0 in range(0, N, BLOCK_N):
        n = n0 + offs_n
        mask_n = n < N
        c = tl.load(Cd + (g * N + n[:, None]) * D + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(DOT)
        inv_c, _pc = _inv(tl.load(NC + g * N + n, mask=mask_n, other=1.0).to(ACC), eps,
                          NORMALIZE)
        L = tl.dot(a, tl.trans(c), input_precision="ieee").to(ACC)
        L = L * row_scale[:, None] * inv_c[None, :]
        mn = mask_m[:, None] & mask_n[None, :]
        onehot = tl.where(n[None, :] == tgt[:, None], 1.0, 0.0)
        p = tl.exp(tl.where(mn, L - mx[:, None], float("-inf"))) / l_i[:, None]
        dL = tl.where(mn, gl[:, None] * (p - onehot), 0.0)
        r += tl.sum(tl.where(mn, dL * L, 0.0), 1)
        ga_hat += tl.dot((dL * inv_c[None, :]).to(c.dtype), c, input_precision="ieee").to(ACC)
    # 3. Through the normalisation; one store per tile.
    ga = _grad_through_norm(ga_hat * inv_temp, a.to(ACC), inv_a, proj_a, r)
    tl.store(GA + (g * M + offs_m[:, None]) * D + offs_d[None, :], ga.to(GA.dtype.element_ty),
             mask=mask_m[:, None] & mask_d[None, :])


@triton.autotune(configs=_COL_CONFIGS, key=["M", "N", "D"])
@triton.jit
def _cols_bwd(
    A, Cd, T, NA, NC, LSE, ss, GL, GC, M, N, D, it_hi, it_lo, eps_hi, eps_lo,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    NORMALIZE: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
):
    inv_temp = tl.cast(it_hi, ACC) + tl.cast(it_lo, ACC)  # 1 / T and eps in ACC (see split_float)
    eps = tl.cast(eps_hi, ACC) + tl.cast(eps_lo, ACC)
    # 1. Column pass of the backward: a candidate tile of group g.
    g = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N
    mask_d = offs_d < D
    c = tl.load(Cd + (g * N + offs_n[:, None]) * D + offs_d[None, :],
                mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(DOT)
    inv_c, proj_c = _inv(tl.load(NC + g * N + offs_n, mask=mask_n, other=1.0).to(ACC), eps,
                         NORMALIZE)
    gc_hat = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    s = tl.zeros([BLOCK_N], ACC)
    # 2. Over anchor tiles (in increasing order): gc_hat += dL^T a_hat; s += sum_i dL L.
    for m0 in range(0, M, BLOCK_M):
        m = m0 + offs_m
        mask_m = m < M
        a = tl.load(A + (g * M + m[:, None]) * D + offs_d[None, :],
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0).to(DOT)
        inv_a, _pa = _inv(tl.load(NA + g * M + m, mask=mask_m, other=1.0).to(ACC), eps,
                          NORMALIZE)
        mx = tl.load(LSE + g * M + m, mask=mask_m, other=0.0).to(ACC)
        l_i = tl.load(LSE + ss + g * M + m, mask=mask_m, other=1.0).to(ACC)
        tgt = tl.load(T + g * M + m, mask=mask_m, other=_IGNORE)
        gl = tl.load(GL + g * M + m, mask=mask_m, other=0.0).to(ACC)
        gl = tl.where(tgt != _IGNORE, gl, 0.0)
        L = tl.dot(a, tl.trans(c), input_precision="ieee").to(ACC)
        L = L * (inv_a * inv_temp)[:, None] * inv_c[None, :]
        mn = mask_m[:, None] & mask_n[None, :]
        onehot = tl.where(offs_n[None, :] == tgt[:, None], 1.0, 0.0)
        p = tl.exp(tl.where(mn, L - mx[:, None], float("-inf"))) / l_i[:, None]
        dL = tl.where(mn, gl[:, None] * (p - onehot), 0.0)
        s += tl.sum(tl.where(mn, dL * L, 0.0), 0)
        gc_hat += tl.dot(tl.trans((dL * inv_a[:, None]).to(a.dtype)), a,
                         input_precision="ieee").to(ACC)
    # 3. Through the normalisation; one store per tile.
    gc = _grad_through_norm(gc_hat * inv_temp, c.to(ACC), inv_c, proj_c, s)
    tl.store(GC + (g * N + offs_n[:, None]) * D + offs_d[None, :], gc.to(GC.dtype.element_ty),
             mask=mask_n[:, None] & mask_d[None, :])


def _norm_rows(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    G, R, D = x.shape
    out = torch.empty((G, R), dtype=acc_dtype(x.dtype), device=x.device)
    block_r = 16
    _norms[(triton.cdiv(G * R, block_r),)](
        x, out, G * R, D, NORMALIZE=normalize, BLOCK_R=block_r, BLOCK_D=min(128, pow2(D)),
        ACC=tl_acc(x.dtype),
    )
    return out


def _regime(M: int, N: int, D: int, regime: int) -> int:
    if regime in (TINY, LARGE):
        if regime == TINY and max(M, N) > TINY_MAX:
            raise RuntimeError(f"art_fast.info_nce: the tiny regime needs M, N <= {TINY_MAX}")
        return regime
    tiles = (pow2(M) + pow2(N)) * pow2(D)
    return TINY if max(M, N) <= TINY_MAX and tiles <= TINY_MAX_TILE else LARGE


def _groups_per_program(G: int, M: int, N: int) -> int:
    # several small groups per program (fewer, fuller programs); at least ~1 program per group
    # block of 8 when G is large.
    return max(1, min(8, 256 // (pow2(M) * pow2(N) // 16)))


def _fwd_host(anchors, candidates, targets, temperature, normalize, regime):
    check_device("info_nce", anchors, candidates)
    a, c, t = anchors.contiguous(), candidates.contiguous(), targets.contiguous()
    G, M, D = a.shape
    N = c.shape[1]
    acc = acc_dtype(a.dtype)
    loss = torch.empty((G, M), dtype=acc, device=a.device)
    lse = torch.empty((2, G, M), dtype=acc, device=a.device)  # (max, sum of exp(L - max))
    with device_ctx(a):
        na, nc = _norm_rows(a, normalize), _norm_rows(c, normalize)
        scal = (*split_float(1.0 / temperature), *split_float(EPS))
        common = dict(NORMALIZE=normalize, ACC=tl_acc(a.dtype), DOT=tl_dot(a.dtype),
                      BLOCK_D=pow2(D))
        if _regime(M, N, D, regime) == TINY:
            gpp = _groups_per_program(G, M, N)
            _tiny_fwd[(triton.cdiv(G, gpp),)](
                a, c, t, na, nc, loss, lse, G * M, G, M, N, D, *scal,
                GROUPS=gpp, BLOCK_M=pow2(M), BLOCK_N=pow2(N), **common,
            )
        else:
            _rows_fwd[lambda meta: (G, triton.cdiv(M, meta["BLOCK_M"]))](
                a, c, t, na, nc, loss, lse, G * M, M, N, D, *scal, **common,
            )
    return loss, lse


def _bwd_host(grad_loss, anchors, candidates, targets, lse, temperature, normalize, regime):
    check_device("info_nce", anchors, candidates)
    a, c, t = anchors.contiguous(), candidates.contiguous(), targets.contiguous()
    gl = grad_loss.contiguous()
    G, M, D = a.shape
    N = c.shape[1]
    ga = torch.empty_like(a)
    gc = torch.empty_like(c)
    with device_ctx(a):
        na, nc = _norm_rows(a, normalize), _norm_rows(c, normalize)
        scal = (*split_float(1.0 / temperature), *split_float(EPS))
        common = dict(NORMALIZE=normalize, ACC=tl_acc(a.dtype), DOT=tl_dot(a.dtype),
                      BLOCK_D=pow2(D))
        args = (a, c, t, na, nc, lse, G * M, gl)
        if _regime(M, N, D, regime) == TINY:
            gpp = _groups_per_program(G, M, N)
            _tiny_bwd[(triton.cdiv(G, gpp),)](
                *args, ga, gc, G, M, N, D, *scal,
                GROUPS=gpp, BLOCK_M=pow2(M), BLOCK_N=pow2(N), **common,
            )
        else:
            _rows_bwd[lambda meta: (G, triton.cdiv(M, meta["BLOCK_M"]))](
                *args, ga, M, N, D, *scal, **common,
            )
            _cols_bwd[lambda meta: (G, triton.cdiv(N, meta["BLOCK_N"]))](
                *args, gc, M, N, D, *scal, **common,
            )
    return ga, gc


@torch.library.custom_op(f"{NAMESPACE}::info_nce_fwd", mutates_args=())
def info_nce_fwd(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    normalize: bool,
    regime: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss ``[G, M]``, stats ``[2, G, M]``: row max and row sum of exp(L - max); LSE =
    max + log(sum)), float32 (float64 for float64 inputs); ``regime``: 0 auto, 1 tiny, 2 large."""
    return _fwd_host(anchors, candidates, targets, temperature, normalize, regime)


@info_nce_fwd.register_fake
def _(anchors, candidates, targets, temperature, normalize, regime):
    G, M, _ = anchors.shape
    acc = acc_dtype(anchors.dtype)
    return anchors.new_empty((G, M), dtype=acc), anchors.new_empty((2, G, M), dtype=acc)


@torch.library.custom_op(f"{NAMESPACE}::info_nce_bwd", mutates_args=())
def info_nce_bwd(
    grad_loss: torch.Tensor,
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    temperature: float,
    normalize: bool,
    regime: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad anchors, grad candidates) from the per-row upstream gradient ``[G, M]``."""
    return _bwd_host(grad_loss, anchors, candidates, targets, lse, temperature, normalize,
                     regime)


@info_nce_bwd.register_fake
def _(grad_loss, anchors, candidates, targets, lse, temperature, normalize, regime):
    return torch.empty_like(anchors), torch.empty_like(candidates)


def _setup_context(ctx, inputs, output):
    anchors, candidates, targets, temperature, normalize, regime = inputs
    _loss, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(anchors, candidates, targets, lse)
    ctx.temperature, ctx.normalize, ctx.regime = temperature, normalize, regime


def _backward(ctx, grad_loss, _grad_lse):
    anchors, candidates, targets, lse = ctx.saved_tensors
    ga, gc = info_nce_bwd(grad_loss.to(lse.dtype), anchors, candidates, targets, lse,
                          ctx.temperature, ctx.normalize, ctx.regime)
    return ga, gc, None, None, None, None


info_nce_fwd.register_autograd(_backward, setup_context=_setup_context)


def forward(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    normalize: bool,
    reduction: str,
    regime: int = AUTO,
) -> torch.Tensor:
    """The loss of ``art_fast.info_nce`` in the dtype of the inputs (reduction in torch)."""
    loss, _lse = info_nce_fwd(anchors, candidates, targets, temperature, normalize, regime)
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        count = (targets != IGNORE_INDEX).sum().clamp(min=1)
        loss = loss.sum() / count.to(loss.dtype)
    return loss.to(anchors.dtype)
