"""Every op is complete (docs/adding_an_op.md): a spec, a contract, every backend, a
reference, a test file and a doc page. Run for one op with
``pytest tests/test_op_specs.py -k <op>`` (``make op-check OP=<op>`` also runs its tests).

The files an op consists of (the guide's list; nothing else is edited but one export line in
``art_fast/ops/__init__.py``):
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import art_fast
from art_fast import _backend, _ext, reference
from art_fast._contract import _CONTRACTS
from art_fast.ops import SPECS
from tests import _util as U

ROOT = Path(__file__).resolve().parents[1]

FILES = (
    "csrc/{op}.h",  # the C++ contract: checks, launcher declarations, host functions per entry
    "csrc/cpu/{op}.cpp",  # CPU kernels; ART_FAST_DEFINE_OP (schemas, TORCH_LIBRARY_IMPL CPU)
    "csrc/cuda/{op}.cu",  # CUDA kernels, launchers; ART_FAST_IMPL (TORCH_LIBRARY_IMPL CUDA)
    "kernels/{op}.py",  # the Triton kernels, the art_fast_triton:: entries, AOT_SCENARIOS
    "art_fast/reference/{op}.py",  # the pure-PyTorch reference
    "art_fast/ops/{op}.py",  # the public function, CONTRACT and SPEC
    "tests/test_{op}.py",  # the op's tests over every backend
    "docs/kernels/{op}.md",  # the design page
)
__doc__ += "".join(f"\n- ``{f}``" for f in FILES)

OPS = tuple(SPECS)


def test_the_op_list_is_the_list_of_op_modules():
    """One op list: the modules of art_fast/ops, their specs, the backend table, the contracts
    and the extension's entry table name the same ops."""
    assert set(SPECS) == set(_backend.OPS) == set(_CONTRACTS) == set(_ext.ENTRIES)
    assert OPS, "no op found"


@pytest.mark.parametrize("op", OPS)
def test_files(op):
    missing = [f.format(op=op) for f in FILES if not (ROOT / f.format(op=op)).is_file()]
    assert not missing, f"{op}: missing {missing} (docs/adding_an_op.md)"
    assert len(FILES) <= 8  # the budget: eight files and one export line
    triton = (ROOT / f"kernels/{op}.py").read_text()
    assert "AOT_SCENARIOS" in triton, f"kernels/{op}.py declares no AOT_SCENARIOS"
    assert f'_contract.provided("{op}")' in triton, f"kernels/{op}.py does not register"


@pytest.mark.parametrize("op", OPS)
def test_spec(op):
    spec = SPECS[op]
    assert spec.name == op
    assert getattr(art_fast, op) is spec.fn and op in art_fast.__all__, \
        f"art_fast.{op} is not exported (art_fast/ops/__init__.py)"
    assert spec.reference is getattr(reference, op), \
        f"{op}: the reference is not art_fast.reference.{op}"
    assert spec.entries == _CONTRACTS[op].entries and {"fwd", "bwd"} <= set(spec.entries)
    assert spec.sample_shapes and {"cpu", "cuda", "quick", "small"} <= set(spec.bench_shapes)
    assert all(spec.bench_shapes[k] for k in ("cpu", "cuda", "quick", "small"))
    assert {torch.float32, torch.bfloat16, torch.float16} <= set(spec.check_tol)
    assert spec.doc == f"docs/kernels/{op}.md" and (ROOT / spec.doc).is_file()
    # The samples are real inputs: every case runs on the reference and has a leaf with grad.
    for case in spec.cases("cpu"):
        assert case.grad_inputs, f"{op} {case.label}: no input requires grad"
        out = spec.fn(*case.args, **case.kwargs, backend="torch")
        assert out is not None
    samples = spec.entry_samples("cpu")
    assert "fwd" in samples and set(samples) <= set(spec.entries)


@pytest.mark.parametrize("op", OPS)
def test_every_backend(op):
    """The C++ entries (schema, a CPU kernel; a CUDA kernel in a CUDA build) and the Triton
    entries exist and carry the contract's fake kernels and autograd."""
    contract = _CONTRACTS[op]
    U.require_backend(op, "cpu")  # a skip only where ART_FAST_REQUIRE_EXT=0, else a failure
    assert _ext.op_status(op)["cpu"] == (True, ""), _ext.op_status(op)["cpu"]
    if _ext.compiled_with_cuda():
        for entry in _ext.ENTRIES[op]:
            assert _ext.has_kernel(entry, "CUDA"), f"art_fast::{entry} has no CUDA kernel"
    assert contract.impl("cpu") is not None
    ok, why = _backend._STATUS[("triton", op)]
    if not ok:
        pytest.skip(f"triton: {why}")
    assert contract.provides("art_fast_triton") and contract.impl("triton") is not None


@pytest.mark.parametrize("op", OPS)
def test_the_test_file_covers_every_backend(op):
    """tests/test_<op>.py runs the op on every backend: its source names each one."""
    src = (ROOT / f"tests/test_{op}.py").read_text()
    tree = ast.parse(src)
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
               and isinstance(n.value, str)}
    names = ({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
             | {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)})
    assert {"SPECS", "check_spec_cases"} & names, \
        f"tests/test_{op}.py does not run the spec's cases"
    cases = {"BACKEND_CASES", "FAST_CASES", "TRITON_CASES"} & names
    assert cases or {"cpu", "triton", "cuda"} <= strings, \
        f"tests/test_{op}.py does not name every backend"


@pytest.mark.parametrize("op", OPS)
def test_the_doc_page_describes_the_contract(op):
    text = (ROOT / SPECS[op].doc).read_text()
    for entry in SPECS[op].entries:
        assert f"{op}_{entry}" in text, f"{SPECS[op].doc} does not describe {op}_{entry}"
