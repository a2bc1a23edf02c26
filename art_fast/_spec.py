"""One spec per op (docs/adding_an_op.md): what the tests, the benchmarks and the GPU
check need to know about an op, declared once in ``art_fast/ops/<op>.py`` as ``SPEC``.

``art_fast.ops.SPECS`` collects them (one per module of ``art_fast/ops``); the backend table
(``art_fast._backend.OPS``), the registration and compile tests, the per-op test files,
``benchmarks/bench_ops.py``, its pytest-benchmark suite and ``benchmarks/gpu_check.sh`` all
iterate over it, and ``tests/test_op_specs.py`` fails when an op lacks a backend, a spec field
or a doc page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Shape = dict[str, int]


@dataclass
class Case:
    """One op's inputs at one shape: tensors passed positionally, the rest by keyword (the
    public function's keywords; ``backend=`` is added by the caller)."""

    label: str
    args: tuple[torch.Tensor, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def grad_inputs(self) -> tuple[torch.Tensor, ...]:
        """The inputs gradients are taken with respect to (every input that requires grad)."""
        return tuple(t for t in self.args if t.requires_grad)


@dataclass(frozen=True)
class OpSpec:
    """Everything shared about one op.

    Attributes:
        name: the op's name (``art_fast.<name>``, ``art_fast/ops/<name>.py``, the entries
            ``<name>_fwd`` ...).
        fn: the public function (``fn(*case.args, **case.kwargs, backend=...)``).
        reference: the pure-PyTorch reference, called as ``reference(*case.args,
            **case.kwargs)`` (the benchmarks' ``compile`` provider).
        entries: the contract's entries (``("fwd", "bwd")``, info_nce adds ``"fused"``).
        make_case: ``make_case(shape, dtype, device, generator) -> Case``, seeded inputs
            (random leaves that require grad) at one shape of the keys of ``shapes``.
        sample_shapes: small, odd shapes for the tests (every backend, opcheck, compile).
        bench_shapes: ``{"cpu": ..., "cuda": ..., "quick": ..., "small": ...}``, the
            benchmark shapes (``bench_ops.py``: the paper shapes; ``quick``: a smoke test;
            ``small``: the pytest-benchmark suite, the paper's structure at a fraction of the
            batch).
        entry_samples: ``entry_samples(device) -> {entry: [args, ...]}``: direct calls of the
            compiled entries (``torch.library.opcheck``: schema, fake kernel, autograd).
        check_tol: the benchmarks' loose agreement check per dtype, ``max |x - ref| <= tol *
            (1 + max |ref|)`` (the tests hold the ops to the tighter rules of
            tests/_util.py).
        doc: the op's design page, relative to the repository root.
    """

    name: str
    fn: Callable[..., Any]
    reference: Callable[..., Any]
    entries: tuple[str, ...]
    make_case: Callable[[Shape, torch.dtype, str | torch.device, torch.Generator], Case]
    sample_shapes: tuple[Shape, ...]
    bench_shapes: dict[str, tuple[Shape, ...]]
    entry_samples: Callable[[str | torch.device], dict[str, list[tuple]]]
    check_tol: dict[torch.dtype, float] = field(default_factory=lambda: {
        torch.float32: 2e-3, torch.bfloat16: 5e-2, torch.float16: 2e-2, torch.float64: 1e-9})
    doc: str = ""

    @classmethod
    def of(cls, contract: Any, fn: Callable[..., Any], make_case: Callable[..., Case],
           entry_samples: Callable[[str | torch.device], dict[str, list[tuple]]],
           **fields: Any) -> OpSpec:
        """The spec of the op that ``contract`` (an :class:`art_fast._contract.OpContract`)
        declares: ``name`` and ``entries`` from the contract, ``reference`` the function of
        the same name in :mod:`art_fast.reference`, ``doc`` ``docs/kernels/<name>.md``; the
        other fields as keywords."""
        from . import reference

        fields.setdefault("doc", f"docs/kernels/{contract.op}.md")
        return cls(name=contract.op, fn=fn, reference=getattr(reference, contract.op),
                   entries=contract.entries, make_case=make_case, entry_samples=entry_samples,
                   **fields)

    def shapes(self, device: str, quick: bool = False) -> tuple[Shape, ...]:
        """The benchmark shapes for ``device`` (``cpu`` / ``cuda``; the tiny ones when
        ``quick``)."""
        return self.bench_shapes["quick" if quick else ("cuda" if device == "cuda" else "cpu")]

    def cases(self, device: str | torch.device, dtype: torch.dtype = torch.float32,
              seed: int = 0, shapes: Sequence[Shape] | None = None) -> list[Case]:
        """Seeded inputs at every sample shape (or ``shapes``)."""
        gen = torch.Generator().manual_seed(seed)
        return [self.make_case(s, dtype, device, gen)
                for s in (self.sample_shapes if shapes is None else shapes)]


def randn(gen: torch.Generator, shape: Sequence[int], dtype: torch.dtype,
          device: str | torch.device, grad: bool = True) -> torch.Tensor:
    """A seeded standard-normal leaf (drawn in float32 on the CPU, then moved and cast: the
    same values on every device)."""
    t = torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)
    return t.requires_grad_(grad)
