"""Kernels that are wrong for a real GPU in the three ways benchmarks/triton_aot.py must catch
(used by tests/test_triton_aot.py, in a subprocess without TRITON_INTERPRET):

- ``_plain_global``: reads a plain module global inside jit code (the interpreter accepts it,
  the compiler does not: the bug the info_nce kernels had);
- ``_huge_smem``: a tl.dot whose operand tiles need far more shared memory than any GPU has;
- ``_spiller``: one warp keeps a 64 x 256 float32 tile live across a row reduction (512 values
  per thread, over the 255-register limit), so ptxas spills.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

OFFSET = 3  # a plain global: not a tl.constexpr


@triton.jit
def _plain_global(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(X + offs, mask=offs < n, other=0.0)
    tl.store(Y + offs, x + OFFSET, mask=offs < n)


@triton.jit
def _huge_smem(A, B, C, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    m = tl.arange(0, BM)
    n = tl.arange(0, BN)
    k = tl.arange(0, BK)
    a = tl.load(A + m[:, None] * BK + k[None, :])
    b = tl.load(B + k[:, None] * BN + n[None, :])
    tl.store(C + m[:, None] * BN + n[None, :], tl.dot(a, b))


@triton.jit
def _spiller(X, Y, R: tl.constexpr, C: tl.constexpr):
    r = tl.arange(0, R)
    c = tl.arange(0, C)
    x = tl.load(X + r[:, None] * C + c[None, :])
    s = tl.sum(tl.exp(x), 1)
    tl.store(Y + r[:, None] * C + c[None, :], x / s[:, None])


def launch_all() -> None:
    """Launch each faulty kernel once on meta tensors (under triton_aot.record_launches)."""
    f32 = dict(dtype=torch.float32, device="meta")
    x, y = torch.empty(1024, **f32), torch.empty(1024, **f32)
    _plain_global[(1,)](x, y, 1000, BLOCK=1024)
    a, b, c = (torch.empty(256 * 512, **f32), torch.empty(512 * 256, **f32),
               torch.empty(256 * 256, **f32))
    _huge_smem[(1,)](a, b, c, BM=256, BN=256, BK=512, num_warps=8)
    t, u = torch.empty(64 * 256, **f32), torch.empty(64 * 256, **f32)
    _spiller[(1,)](t, u, R=64, C=256, num_warps=1)
