"""The self-check of ``auto`` (art_fast/_selftest.py) and ``art-fast info --selftest``.

Faults are injected where the cpu backend calls its kernels (the ``torch.ops.art_fast.*``
operators the ops look up on every call), so the checker sees what a broken build would give.
Every test starts with no verdicts and puts the process's verdicts back afterwards: the other
tests of this process rely on ``auto`` choosing the cpu backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import art_fast
from art_fast import _backend, _selftest, reference
from art_fast._contract import _CONTRACTS
from tests._util import require_backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_verdicts(monkeypatch):
    """No cached verdicts during the test; the process's verdicts (and ENABLED) afterwards."""
    saved = dict(_selftest._VERDICTS), dict(_selftest.FAILURES)
    _selftest.reset()
    monkeypatch.setattr(_selftest, "ENABLED", True)
    yield
    _selftest.reset()
    _selftest._VERDICTS.update(saved[0])
    _selftest.FAILURES.update(saved[1])


@pytest.fixture
def ext_op(monkeypatch):
    """``ext_op(name, wrapper)``: replace the cpu backend's entry ``art_fast::<name>`` (as the
    op's contract hands it out: ``CONTRACT.impl("cpu").<entry>``) by ``wrapper(original,
    *args)`` for the test."""
    require_backend("cross_attention", "cpu")

    def install(name: str, wrapper) -> None:
        op, entry = name.rsplit("_", 1)
        impl = _CONTRACTS[op].impl("cpu")
        original = getattr(impl, entry)
        monkeypatch.setattr(impl, entry, lambda *args: wrapper(original, *args))

    return install


def _self_check_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught
            if issubclass(w.category, RuntimeWarning) and "self-check" in str(w.message)]


def _ca_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 2, 3, 8, generator=g, dtype=dtype)
    k = torch.randn(2, 2, 11, 8, generator=g, dtype=dtype)
    return q, k, torch.randn(2, 2, 11, 8, generator=g, dtype=dtype)


def _raising_cross_attention(ext_op, message: str = "simulated launch failure"):
    """Make the cpu backend's cross_attention forward raise ``RuntimeError(message)`` (a launch
    failure of a broken build); returns inputs for it (``_ca_inputs()``)."""

    def broken(original, *args):
        raise RuntimeError(message)

    ext_op("cross_attention_fwd", broken)
    return _ca_inputs()


def test_raising_backend_is_disabled_once_and_auto_falls_back(ext_op):
    q, k, v = _raising_cross_attention(ext_op, "simulated launch failure\nsecond line")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = art_fast.cross_attention(q, k, v)  # auto
        again = art_fast.cross_attention(q, k, v)
        art_fast.cross_attention(q, k, v, return_weights=True)
    msgs = _self_check_warnings(caught)
    assert len(msgs) == 1, msgs
    for part in ("cross_attention", "'cpu'", "torch.float32", "cpu",
                 "RuntimeError: simulated launch failure"):
        assert part in msgs[0], (part, msgs[0])
    assert "second line" not in msgs[0]
    truth = reference.cross_attention(q, k, v)  # auto fell back to the torch backend
    assert torch.equal(out, truth) and torch.equal(again, truth)
    assert _selftest._VERDICTS[("cross_attention", "cpu", torch.float32, "cpu", None)] is False
    # the other ops keep their backend
    assert _backend.resolve("topk_regions", None, CPU, torch.float32) == "cpu"


def test_wrong_numbers_are_disabled(ext_op):
    def off_by_1e4(original, scores, values, k):
        pooled, idx, w = original(scores, values, k)
        return pooled * (1 + 1e-4), idx, w  # above float32's rtol 1e-5

    ext_op("topk_regions_fwd", off_by_1e4)
    s, v = torch.randn(2, 3, 20), torch.randn(2, 20, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pooled, idx, w = art_fast.topk_regions(s, v, 4)
    msgs = _self_check_warnings(caught)
    assert len(msgs) == 1 and "topk_regions" in msgs[0] and "max error" in msgs[0], msgs
    assert torch.equal(pooled, reference.topk_regions(s, v, 4)[0])


def test_wrong_gradients_are_disabled(ext_op):
    """A backward-only fault (the per-row InfoNCE backward) is caught too."""

    def bad_grad(original, *args):
        ga, gc = original(*args)
        return ga * 1.001, gc

    ext_op("info_nce_bwd", bad_grad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _backend.resolve("info_nce", None, CPU, torch.float32) == "torch"
    msgs = _self_check_warnings(caught)
    assert len(msgs) == 1 and "grad anchors" in msgs[0], msgs


def test_verdicts_are_per_dtype(ext_op):
    def broken_bf16(original, q, *args):
        if q.dtype == torch.bfloat16:
            raise RuntimeError("simulated: no bf16 kernel")
        return original(q, *args)

    ext_op("cross_attention_fwd", broken_bf16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _backend.resolve("cross_attention", "auto", CPU, torch.float32) == "cpu"
        assert _backend.resolve("cross_attention", "auto", CPU, torch.bfloat16) == "torch"
        assert _backend.resolve("cross_attention", "auto", CPU, torch.bfloat16) == "torch"
        # a caller that does not say the dtype gets a backend that passes every dtype
        assert _backend.resolve("cross_attention", "auto", CPU) == "torch"
    msgs = _self_check_warnings(caught)
    assert len(msgs) == 1 and "torch.bfloat16" in msgs[0], msgs


def test_correct_backend_passes_and_is_used(ext_op):
    calls = []

    def counting(original, *args):
        calls.append(1)
        return original(*args)

    ext_op("cross_attention_fwd", counting)
    q, k, v = _ca_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all
        with torch.inference_mode():  # the check still runs with autograd on
            out = art_fast.cross_attention(q, k, v)
    checked = len(calls) - 1
    assert checked >= 2, "the self-check ran the cpu kernel"
    assert _selftest._VERDICTS[("cross_attention", "cpu", torch.float32, "cpu", None)] is True
    assert torch.equal(out, art_fast.cross_attention(q, k, v, backend="cpu"))
    calls.clear()
    assert torch.equal(art_fast.cross_attention(q, k, v), out)
    assert len(calls) == 1, "a cached verdict: no second check"
    shared = q[:1].expand(2, -1, -1, -1)
    assert torch.equal(art_fast.cross_attention(shared, k, v),
                       art_fast.cross_attention(shared, k, v, backend="cpu"))


def test_global_rng_is_untouched():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    art_fast.info_nce(torch.ones(1, 2, 3), torch.ones(1, 2, 3), torch.zeros(1, 2).long())
    assert _selftest._VERDICTS, "the check ran"
    assert torch.equal(torch.rand(3), expected)


def test_backend_by_name_is_never_checked_or_replaced(ext_op):
    q, k, v = _raising_cross_attention(ext_op)
    with pytest.raises(RuntimeError, match="simulated launch failure"):
        art_fast.cross_attention(q, k, v, backend="cpu")
    with art_fast.use_backend("cpu"), pytest.raises(RuntimeError, match="simulated"):
        art_fast.cross_attention(q, k, v)
    art_fast.set_backend("cpu")
    with pytest.raises(RuntimeError, match="simulated"):
        art_fast.cross_attention(q, k, v)
    assert _selftest._VERDICTS == {}, "no check for a backend chosen by name"
    # ... even after auto has disabled it
    art_fast.set_backend(None)
    with pytest.warns(RuntimeWarning, match="self-check"):
        art_fast.cross_attention(q, k, v)
    with pytest.raises(RuntimeError, match="simulated"):
        art_fast.cross_attention(q, k, v, backend="cpu")


def test_selfcheck_off_skips_the_check(ext_op, monkeypatch):
    q, k, v = _raising_cross_attention(ext_op)
    monkeypatch.setattr(_selftest, "ENABLED", False)
    with pytest.raises(RuntimeError, match="simulated"):  # auto = the static order: cpu
        art_fast.cross_attention(q, k, v)
    assert _selftest._VERDICTS == {}


def test_no_check_while_compiling():
    require_backend("info_nce", "cpu")
    a = torch.randn(2, 3, 8, requires_grad=True)
    t = torch.tensor([[0, 1, -100], [2, 0, 1]])
    torch._dynamo.reset()
    fn = torch.compile(lambda a: art_fast.info_nce(a, a, t), fullgraph=True)
    fn(a).backward()
    assert _selftest._VERDICTS == {}, "no check while tracing"
    torch.testing.assert_close(a.grad, torch.autograd.grad(
        art_fast.info_nce(a, a, t, backend="cpu"), a)[0])


def test_compiled_code_uses_the_cached_verdict(ext_op):
    q, k, v = _raising_cross_attention(ext_op)
    with pytest.warns(RuntimeWarning, match="self-check"):
        art_fast.cross_attention(q, k, v)  # eager: the check disables cpu
    # Traced with the fault still in place: the cpu kernel would raise. (Dynamo's eager
    # backend: inductor's first import chokes on the patched torch.ops.art_fast.)
    torch._dynamo.reset()
    out = torch.compile(lambda q, k, v: art_fast.cross_attention(q, k, v), fullgraph=True,
                        backend="eager")(q, k, v)
    torch.testing.assert_close(out, reference.cross_attention(q, k, v))


def test_info_selftest_exit_status_1_on_a_failure(ext_op, monkeypatch, capsys):
    from art_fast import cli

    def off(original, *args):
        loss, lse = original(*args)
        return loss * 1.01, lse

    ext_op("info_nce_fwd", off)
    monkeypatch.setattr(_selftest, "DTYPES", (torch.float32,))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # triton rows: the reason only
    assert cli.info(as_json=True, selftest=True) == 1
    st = json.loads(capsys.readouterr().out)["selftest"]
    assert st["all_agree"] is False
    by = {(r["op"], r["backend"]): r for r in st["rows"]}
    assert by[("info_nce", "cpu")]["ok"] is False
    assert "output 0: max error" in by[("info_nce", "cpu")]["agrees"]
    assert by[("info_nce", "torch")]["ok"] is True and by[("cross_attention", "cpu")]["ok"]
    assert _selftest._VERDICTS == {}, "the report does not change what auto uses"


def _run(args: list[str], **env) -> subprocess.CompletedProcess:
    # Without the test process's Triton interpreter (tests/conftest.py): triton rows give the
    # reason, and the command stays fast. One thread: the suite shares 2 cores.
    base = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env = {**base, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)


def test_environment_variable_turns_the_check_off():
    code = "import art_fast._selftest as s; print(s.ENABLED)"
    res = _run(["-c", code], ART_FAST_SELFCHECK="0")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_cli_info_selftest():
    require_backend("cross_attention", "cpu")
    res = _run(["-m", "art_fast.cli", "info", "--selftest"])
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [line.split() for line in res.stdout.splitlines() if line.startswith("  ")
            and line.split()[0] in _backend.OPS and len(line.split()) > 2
            and line.split()[2] in ("float32", "bfloat16", "float16", "float64")]
    combos = {(r[0], r[1], r[2]) for r in rows}
    assert len(rows) == len(combos) == 3 * 4 * 4, res.stdout
    for r in rows:
        if r[1] in ("torch", "cpu"):
            assert r[3:5] == ["yes", "yes"], r
    assert "not a benchmark" in res.stdout

    res = _run(["-m", "art_fast.cli", "info", "--selftest", "--json"])
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)["selftest"]
    assert st["all_agree"] is True and st["device"] == "cpu"
    assert len(st["rows"]) == 48
    by = {(r["op"], r["backend"], r["dtype"]): r for r in st["rows"]}
    assert by[("info_nce", "cpu", "bfloat16")]["agrees"] == "yes"
    assert by[("info_nce", "cpu", "bfloat16")]["ms"] > 0
    assert "TRITON_INTERPRET=1" in by[("topk_regions", "triton", "float32")]["built"]
    assert by[("topk_regions", "triton", "float32")]["ok"] is None
