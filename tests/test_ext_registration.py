"""The extension registers itself per op: every op's schemas and CPU kernels come
from its own csrc/cpu/<op>.cpp and its CUDA kernels from csrc/cuda/<op>.cu; art_fast._ext knows
which entry points each op needs (ENTRIES) and a stale or partial build disables only the op
and device that lack one (op_status). The input contract of each op is checked once, in C++,
for both devices (check_<op>_* of csrc/<op>.h, with the macros of csrc/checks.h): a direct
torch.ops call with a bad input fails with a message naming the argument."""

from __future__ import annotations

import warnings

import pytest
import torch

from art_fast import _backend, _ext
from tests._util import HAS_CUDA, require_backend

ENTRY_PARAMS = [pytest.param(op, e, id=e) for op, entries in _ext.ENTRIES.items() for e in entries]


def _require_ext() -> None:
    if not _ext.EXT_LOADED:
        pytest.skip(f"art_fast._C is not usable: {_ext.EXT_ERROR}")


# ---- (a) what the build registers -----------------------------------------------------------


def test_entries_cover_every_op_and_every_registered_operator():
    assert set(_ext.ENTRIES) == set(_backend.OPS)
    _require_ext()
    registered = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names()
                  if n.startswith("art_fast::")}
    listed = {e for entries in _ext.ENTRIES.values() for e in entries}
    assert registered == listed, "art_fast::* operators and _ext.ENTRIES disagree"


@pytest.mark.parametrize(("op", "entry"), ENTRY_PARAMS)
def test_every_entry_has_a_schema_and_kernels(op, entry):
    _require_ext()
    assert hasattr(torch.ops.art_fast, entry), f"art_fast::{entry} has no schema"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"art_fast::{entry}", "CPU")
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(f"art_fast::{entry}", "CUDA")
    assert has_cuda == _ext.compiled_with_cuda(), (entry, has_cuda)
    assert _ext.has_schema(entry) and _ext.has_kernel(entry, "CPU")
    assert _ext.has_kernel(entry, "CUDA") == has_cuda
    assert _ext.defines(op)


def test_the_real_build_is_complete():
    """This checkout's build lacks nothing: every op is usable on the CPU, no import warning."""
    _require_ext()
    for op in _ext.ENTRIES:
        st = _ext.op_status(op)
        assert st["cpu"] == (True, ""), (op, st)
        if _ext.compiled_with_cuda():
            assert st["cuda"] == (True, ""), (op, st)
        else:
            assert st["cuda"] == (False, "art_fast._C was built without CUDA kernels"), (op, st)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _ext.warn_incomplete()


# ---- (b) a partial build disables only what it lacks ----------------------------------------


@pytest.fixture
def fake_build(monkeypatch):
    """A loaded extension whose lookups answer from a set of missing (entry, key) pairs
    (key "schema", "CPU" or "CUDA"); CUDA kernels built. Independent of the real build."""
    missing: set[tuple[str, str]] = set()
    monkeypatch.setattr(_ext, "EXT_LOADED", True)
    monkeypatch.setattr(_ext, "has_schema", lambda e: (e, "schema") not in missing)
    monkeypatch.setattr(_ext, "has_kernel", lambda e, key: (e, "schema") not in missing
                        and (e, key) not in missing)
    monkeypatch.setattr(_ext, "compiled_with_cuda", lambda: True)
    return missing


def test_complete_fake_build_is_usable(fake_build):
    for op in _ext.ENTRIES:
        assert _ext.op_status(op) == {"cpu": (True, ""), "cuda": (True, "")}


def test_missing_cpu_kernel_disables_only_that_op_on_cpu(fake_build):
    fake_build.add(("info_nce_fused", "CPU"))
    st = _ext.op_status("info_nce")
    ok, reason = st["cpu"]
    assert not ok
    assert "no CPU kernel for art_fast::info_nce_fused" in reason and "make install" in reason
    assert "info_nce_fwd" not in reason and "info_nce_bwd" not in reason
    assert st["cuda"] == (True, "")
    for op in ("cross_attention", "topk_regions"):
        assert _ext.op_status(op) == {"cpu": (True, ""), "cuda": (True, "")}
    # what the backends table (and `art-fast info`) then says
    status = _backend._compute_status()
    assert status[("cpu", "info_nce")] == st["cpu"]
    assert status[("cpu", "cross_attention")] == (True, "")
    assert status[("cpu", "topk_regions")] == (True, "")
    with pytest.warns(RuntimeWarning, match=r"info_nce \(cpu\): .*info_nce_fused"):
        _ext.warn_incomplete()


def test_missing_cuda_kernel_disables_only_that_op_on_cuda(fake_build):
    fake_build.update({("cross_attention_bwd", "CUDA")})
    st = _ext.op_status("cross_attention")
    assert st["cpu"] == (True, "")
    assert not st["cuda"][0] and "no CUDA kernel for art_fast::cross_attention_bwd" in st["cuda"][1]
    assert _ext.op_status("info_nce")["cuda"] == (True, "")
    status = _backend._compute_status()
    assert status[("cuda", "cross_attention")] == st["cuda"]  # the kernel, not the device
    if not HAS_CUDA:
        assert status[("cuda", "info_nce")] == (False, "no CUDA device is visible")


def test_missing_schema_disables_the_op_on_every_device(fake_build):
    fake_build.add(("topk_regions_bwd", "schema"))
    st = _ext.op_status("topk_regions")
    for dev in ("cpu", "cuda"):
        assert not st[dev][0] and "does not define art_fast::topk_regions_bwd" in st[dev][1]
    assert not _ext.defines("topk_regions") and _ext.defines("info_nce")
    assert _ext.op_status("info_nce")["cpu"] == (True, "")


def test_cpu_only_build_says_so(fake_build, monkeypatch):
    monkeypatch.setattr(_ext, "compiled_with_cuda", lambda: False)
    for entries in _ext.ENTRIES.values():
        fake_build.update((e, "CUDA") for e in entries)
    for op in _ext.ENTRIES:
        assert _ext.op_status(op) == {
            "cpu": (True, ""), "cuda": (False, "art_fast._C was built without CUDA kernels")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _ext.warn_incomplete()  # a CPU-only build is not incomplete


def test_extension_not_loaded(monkeypatch):
    monkeypatch.setattr(_ext, "EXT_LOADED", False)
    monkeypatch.setattr(_ext, "EXT_ERROR", "ImportError: no _C here")
    for op in _ext.ENTRIES:
        for ok, reason in _ext.op_status(op).values():
            assert not ok and reason == "art_fast._C is not usable: ImportError: no _C here"
    with pytest.raises(ValueError, match="unknown op"):
        _ext.op_status("attention")


# ---- (c) the C++ checks, one contract for both devices --------------------------------------

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]),
]


def _ca(dev, q_shape=(2, 2, 3, 4), kv_shape=(2, 2, 5, 4), dtype=torch.float32):
    q = torch.randn(q_shape, device=dev, dtype=dtype)
    k = torch.randn(kv_shape, device=dev, dtype=dtype)
    v = torch.randn(kv_shape, device=dev, dtype=dtype)
    return q, k, v


def _tk(dev):
    """scores [3, 4, 7], values [3, 7, 5], k = 2."""
    return torch.randn(3, 4, 7, device=dev), torch.randn(3, 7, 5, device=dev), 2


def _nce(dev):
    """anchors [2, 3, 4], candidates [2, 5, 4], targets (one ignored), temperature 0.1."""
    a, c = torch.randn(2, 3, 4, device=dev), torch.randn(2, 5, 4, device=dev)
    return a, c, torch.tensor([[0, 1, 4], [2, -100, 0]], device=dev), 0.1


# Bad forward inputs: (valid inputs -> the bad ones, the message that must name them).
CA_FWD_BAD = [
    (lambda q, k, v: (q[0], k, v), r"q must have shape \[B, H, M, D\], got \[2, 3, 4\]"),
    (lambda q, k, v: (q, k[..., 0].contiguous(), v), r"k must have shape \[B, H, N, D\]"),
    (lambda q, k, v: (q, k, v[:, :, :4].contiguous()), r"v must have the shape of k"),
    (lambda q, k, v: (q, k, v.double()), r"q, k, v must share one dtype"),
    (lambda q, k, v: (q.int(), k.int(), v.int()),
     r"q must be float32, bfloat16, float16 or float64, got Int"),
    (lambda q, k, v: (q[:, :1].contiguous(), k, v), r"q must have shape .* with H, D of k"),
    (lambda q, k, v: (q[:1].expand(3, -1, -1, -1).contiguous(), k, v),
     r"q must have shape \[B or 1"),
    (lambda q, k, v: (q, k.transpose(2, 3).contiguous().transpose(2, 3), v),
     r"k must be contiguous"),
]

TK_FWD_BAD = [
    (lambda s, v, k: (s[0], v, k), r"scores must have shape \[B, M, N\], got \[4, 7\]"),
    (lambda s, v, k: (s, v[:, :6].contiguous(), k), r"values must have shape \[B, N, C\] with"),
    (lambda s, v, k: (s, v.double(), k), r"scores and values must share one dtype"),
    (lambda s, v, k: (s.long(), v.long(), k), r"scores must be float32, .* got Long"),
    (lambda s, v, k: (s, v, 8), r"topk_regions needs 1 <= k <= N = 7, got k = 8"),
    (lambda s, v, k: (s, v, 0), r"1 <= k <= N"),
    (lambda s, v, k: (s.transpose(1, 2).contiguous().transpose(1, 2), v, k),
     r"scores must be contiguous"),
]

NCE_FWD_BAD = [
    (lambda a, c, t, tau: (a[0], c, t, tau), r"anchors must have shape \[G, M, D\], got \[3, 4\]"),
    (lambda a, c, t, tau: (a, c[..., :3].contiguous(), t, tau),
     r"anchors \[G, M, D\] and candidates \[G, N, D\] must agree on G and D"),
    (lambda a, c, t, tau: (a, c.double(), t, tau),
     r"anchors and candidates must share one dtype, got Float and Double"),
    (lambda a, c, t, tau: (a, c, t[:, :2].contiguous(), tau),
     r"targets must have shape \[G, M\] = \[2, 3\], got \[2, 2\]"),
    (lambda a, c, t, tau: (a, c, t.int(), tau), r"targets must be int64, got Int"),
    (lambda a, c, t, tau: (a, c, t, 0.0), r"temperature must be finite and > 0, got 0"),
    (lambda a, c, t, tau: (a, c, t, float("nan")), r"temperature must be finite and > 0"),
    (lambda a, c, t, tau: (a, c[:, :0].contiguous(), t, tau), r"needs N > 0 candidates"),
]

# forward entry -> (its op, the valid inputs on a device, the arguments after them, the bad cases)
FWD_ENTRIES = {
    "cross_attention_fwd": ("cross_attention", _ca, (0.5, False), CA_FWD_BAD),
    "topk_regions_fwd": ("topk_regions", _tk, (), TK_FWD_BAD),
    "info_nce_fwd": ("info_nce", _nce, (True,), NCE_FWD_BAD),
    "info_nce_fused": ("info_nce", _nce, (True, True, True), NCE_FWD_BAD),
}


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize(("entry", "case"), [
    pytest.param(entry, i, id=f"{entry}-{i}")
    for entry, (*_, bad) in FWD_ENTRIES.items() for i in range(len(bad))])
def test_forward_checks(dev, entry, case):
    op, inputs, tail, bad = FWD_ENTRIES[entry]
    require_backend(op, dev)
    make, match = bad[case]
    with pytest.raises(RuntimeError, match=match):
        getattr(torch.ops.art_fast, entry)(*make(*inputs(dev)), *tail)


@pytest.mark.parametrize("dev", DEVICES)
def test_cross_attention_bwd_checks(dev):
    require_backend("cross_attention", dev)
    q, k, v = _ca(dev)
    out, lse, _ = torch.ops.art_fast.cross_attention_fwd(q, k, v, 0.5, False)
    bwd = torch.ops.art_fast.cross_attention_bwd
    go = torch.randn_like(out)
    with pytest.raises(RuntimeError, match=r"grad_out must be \[B, H, M, D\]"):
        bwd(go[:, :, :2].contiguous(), None, q, k, v, out, lse, 0.5)
    with pytest.raises(RuntimeError, match=r"lse must be \[B, H, M\] in the accumulation"):
        bwd(go, None, q, k, v, out, lse.double(), 0.5)
    with pytest.raises(RuntimeError, match=r"grad_weights must be \[B, H, M, N\]"):
        bwd(go, torch.ones(2, 2, 3, 4, device=dev), q, k, v, out, lse, 0.5)
    dq, dk, dv = bwd(go, None, q, k, v, out, lse, 0.5)  # the same call, valid, passes
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape


@pytest.mark.parametrize("dev", DEVICES)
def test_topk_regions_bwd_checks(dev):
    require_backend("topk_regions", dev)
    s, v, k = _tk(dev)
    pooled, idx, w = torch.ops.art_fast.topk_regions_fwd(s, v, k)
    bwd = torch.ops.art_fast.topk_regions_bwd
    gp = torch.randn_like(pooled)
    with pytest.raises(RuntimeError, match=r"indices must be int64, got Int"):
        bwd(gp, None, s, v, idx.int())
    with pytest.raises(RuntimeError, match=r"indices must have shape \[B, M, k\] with"):
        bwd(gp, None, s, v, idx[:2].contiguous())
    with pytest.raises(RuntimeError, match=r"grad_pooled must be \[B, M, C\]"):
        bwd(gp[..., :4].contiguous(), None, s, v, idx)
    with pytest.raises(RuntimeError, match=r"grad_weights must be \[B, M, k\]"):
        bwd(gp, torch.ones(3, 4, 3, device=dev), s, v, idx)
    gs, gv = bwd(gp, torch.ones_like(w), s, v, idx)
    assert gs.shape == s.shape and gv.shape == v.shape


@pytest.mark.parametrize("dev", DEVICES)
def test_info_nce_bwd_checks(dev):
    require_backend("info_nce", dev)
    a, c, t, tau = _nce(dev)
    loss, lse = torch.ops.art_fast.info_nce_fwd(a, c, t, tau, True)
    bwd = torch.ops.art_fast.info_nce_bwd
    gl = torch.ones_like(loss)
    with pytest.raises(RuntimeError, match=r"grad_loss must be \[G, M\] = \[2, 3\] Float"):
        bwd(gl.double(), a, c, t, lse, 0.1, True)
    with pytest.raises(RuntimeError, match=r"lse must be \[G, M\] = \[2, 3\] Float"):
        bwd(gl, a, c, t, lse[:, :2].contiguous(), 0.1, True)
    with pytest.raises(RuntimeError, match=r"candidates must be contiguous"):
        bwd(gl, a, c.transpose(1, 2).contiguous().transpose(1, 2), t, lse, 0.1, True)
    ga, gc = bwd(gl, a, c, t, lse, 0.1, True)
    assert ga.shape == a.shape and gc.shape == c.shape


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_mixed_devices_name_the_argument():
    """The first input's device type is the device code's check; every other tensor must be on
    the first input's device (the device-neutral check)."""
    require_backend("cross_attention", "cuda")
    q, k, v = _ca("cuda")
    with pytest.raises(RuntimeError, match=r"k must be on the device of q \(cuda:0\), got cpu"):
        torch.ops.art_fast.cross_attention_fwd(q, k.cpu(), v, 0.5, False)
    with pytest.raises(RuntimeError, match=r"q must be a CUDA tensor, got cpu"):
        torch.ops.art_fast.cross_attention_fwd(q.cpu(), k, v, 0.5, False)
    a = torch.randn(2, 3, 4, device="cuda")
    with pytest.raises(RuntimeError, match=r"targets must be on the device of anchors"):
        torch.ops.art_fast.info_nce_fwd(a, a, torch.zeros(2, 3, dtype=torch.long), 0.1, True)
