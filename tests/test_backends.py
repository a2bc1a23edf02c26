"""Backend selection (argument, set_backend, use_backend, ART_FAST_BACKEND, auto), the
deterministic mode, and the fallback when the extension is missing."""

from __future__ import annotations

import os

import pytest
import torch

import art_fast
from art_fast import _backend, reference
from tests._util import require_backend, run_python


def _inputs():
    q = torch.randn(2, 2, 3, 4)
    kv = torch.randn(2, 2, 5, 4)
    return q, kv, kv.clone()


@pytest.fixture
def reference_calls(monkeypatch):
    """Counts calls into the reference implementation of cross_attention."""
    calls = []
    original = reference.cross_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(reference, "cross_attention", spy)
    return calls


def test_available_backends_here():
    avail = art_fast.available_backends()
    assert avail[0] == "torch"
    require_backend("cross_attention", "cpu")
    assert "cpu" in avail
    interpret = os.environ.get("TRITON_INTERPRET") == "1"  # see tests/conftest.py
    if not torch.cuda.is_available():
        assert "cuda" not in avail
        assert ("triton" in avail) == interpret
    status = art_fast.backend_status()
    assert set(status) == {"torch", "cpu", "triton", "cuda"}
    assert status["torch"]["info_nce"] == "usable"
    if not (torch.cuda.is_available() or interpret):
        assert "TRITON_INTERPRET=1" in status["triton"]["topk_regions"]


def test_precedence_argument_scope_process(reference_calls):
    require_backend("cross_attention", "cpu")
    q, k, v = _inputs()
    assert art_fast.get_backend() == "auto"
    art_fast.cross_attention(q, k, v)  # auto on CPU tensors -> the C++ kernel
    assert reference_calls == []
    art_fast.set_backend("torch")
    art_fast.cross_attention(q, k, v)
    assert len(reference_calls) == 1
    with art_fast.use_backend("cpu"):
        assert art_fast.get_backend() == "cpu"
        art_fast.cross_attention(q, k, v)
        assert len(reference_calls) == 1
        with art_fast.use_backend("torch"):
            art_fast.cross_attention(q, k, v)
            assert len(reference_calls) == 2
        art_fast.cross_attention(q, k, v, backend="torch")  # the argument wins
        assert len(reference_calls) == 3
    assert art_fast.get_backend() == "torch"
    art_fast.set_backend(None)
    assert art_fast.get_backend() == "auto"


def test_scoped_backend_is_restored_after_an_error():
    with pytest.raises(KeyError):
        with art_fast.use_backend("torch"):
            raise KeyError("boom")
    assert art_fast.get_backend() == "auto"


@pytest.mark.parametrize("name", ["cuda", "triton"])
def test_unavailable_backend_by_name_raises(name):
    if name in art_fast.available_backends():
        pytest.skip(f"{name} is usable on this machine")
    q, k, v = _inputs()
    with pytest.raises(RuntimeError, match=f"backend '{name}' is not available"):
        art_fast.cross_attention(q, k, v, backend=name)
    art_fast.set_backend(name)  # the name is valid; usability is checked per call
    with pytest.raises(RuntimeError, match="Usable here"):
        art_fast.topk_regions(torch.randn(1, 2, 3), torch.randn(1, 3, 4), 2)


def test_bad_backend_names():
    with pytest.raises(ValueError, match="backend must be one of"):
        art_fast.set_backend("fast")
    with pytest.raises(ValueError, match="backend must be one of"):
        with art_fast.use_backend("gpu"):
            pass


def test_cpu_backend_rejects_other_devices():
    require_backend("cross_attention", "cpu")
    with pytest.raises(RuntimeError, match="backend 'cpu' needs CPU tensors"):
        _backend.resolve("cross_attention", "cpu", torch.device("meta"))


def test_deterministic_mode_uses_reproducible_paths():
    q, k, v = _inputs()
    torch.use_deterministic_algorithms(True)
    first = art_fast.cross_attention(q, k, v)
    assert torch.equal(first, art_fast.cross_attention(q, k, v))


def test_environment_variable_sets_the_default():
    res = run_python("import art_fast; print(art_fast.get_backend())", ART_FAST_BACKEND="torch")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "torch"
    res = run_python("import art_fast", ART_FAST_BACKEND="quick")
    assert res.returncode != 0
    assert "ART_FAST_BACKEND must be one of" in res.stderr


MISSING_EXT = """
import sys, warnings
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "art_fast._C":
            raise ImportError("simulated: art_fast._C was not built")
sys.meta_path.insert(0, Block())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import art_fast
msgs = [str(w.message) for w in caught if "art_fast._C" in str(w.message)]
assert msgs and "simulated: art_fast._C was not built" in msgs[0], msgs
import torch
assert art_fast.available_backends() == ["torch"], art_fast.available_backends()
q, k = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 5, 4)
out = art_fast.cross_attention(q, k, k)
assert out.shape == (2, 2, 3, 4)
loss = art_fast.info_nce(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.zeros(2, 3).long())
pooled, idx, w = art_fast.topk_regions(torch.randn(1, 2, 5), torch.randn(1, 5, 3), 2)
try:
    art_fast.cross_attention(q, k, k, backend="cpu")
except RuntimeError as e:
    assert "not available" in str(e) and "simulated" in str(e), e
else:
    raise AssertionError("backend='cpu' must raise without the extension")
print("fallback ok")
"""


def test_missing_extension_falls_back_to_the_reference():
    res = run_python(MISSING_EXT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "fallback ok" in res.stdout


def test_disabled_extension_warns_with_the_cause():
    res = run_python("import art_fast; print(art_fast.available_backends())",
                     ART_FAST_DISABLE_EXT="1")
    assert res.returncode == 0, res.stderr
    assert "ART_FAST_DISABLE_EXT=1" in res.stderr
    assert res.stdout.strip() == "['torch']"
