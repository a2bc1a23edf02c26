"""One contract per op (docs/adding_an_op.md).

Every compiled backend of an op implements the same entries, with the same schema, outputs and
saved tensors: ``<op>_fwd`` and ``<op>_bwd`` (and, for info_nce, ``<op>_fused``), as
``art_fast::<op>_<entry>`` (the C++ extension: kernels for CPU and CUDA, ``csrc/``) and as
``art_fast_triton::<op>_<entry>`` (Triton, ``kernels/<op>.py``). The op's module
(``art_fast/ops/<op>.py``) declares, once:

- one fake kernel per entry (``@CONTRACT.fake("fwd")``: ``torch.compile`` and ``opcheck``);
- one ``setup_context`` and one backward per differentiable entry
  (``CONTRACT.differentiable("fwd", setup_context, backward)``); the backward is
  ``backward(impl, ctx, *grads)``, where ``impl`` holds the entries of the backend that ran the
  forward (``impl.bwd``), so one backward serves every backend;
- the vmap rules of the forward and the backward entry (``CONTRACT.vmap``: torch.func);

then :meth:`OpContract.seal` registers them for every namespace that provides the op's
entries, now or later (a Triton module imported after the op's module registers itself through
:func:`provided`). The public function picks a backend with ``art_fast._backend.resolve`` and
gets its entries from a table, :meth:`OpContract.impl`: no per-backend branches.

Imports torch, ``art_fast._autograd`` and ``art_fast._ext`` only: the Triton modules import it
too. The contract is the one list of an op's entries: ``art_fast._ext`` (which entry points a
build must have) learns them from it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import torch

from . import _autograd, _ext

EXT_NAMESPACE = "art_fast"
TRITON_NAMESPACE = "art_fast_triton"
NAMESPACES = {"cpu": EXT_NAMESPACE, "cuda": EXT_NAMESPACE, "triton": TRITON_NAMESPACE}
"""Compiled backend -> the torch.library namespace of its entries."""

_CONTRACTS: dict[str, OpContract] = {}


def _op_exists(namespace: str, name: str) -> bool:
    return hasattr(getattr(torch.ops, namespace), name)


class Impl:
    """The entries of an op in one namespace, as attributes (``impl.fwd``, ``impl.bwd``, ...:
    the ``torch.ops`` overload packets)."""

    def __init__(self, op: str, namespace: str, entries: Iterable[str]) -> None:
        self.op, self.namespace = op, namespace
        ns = getattr(torch.ops, namespace)
        for entry in entries:
            setattr(self, entry, getattr(ns, f"{op}_{entry}"))

    def backend(self, device: torch.device) -> str:
        """The backend name for messages: ``triton``, or the device type for the C++ ops."""
        return "triton" if self.namespace == TRITON_NAMESPACE else device.type


class OpContract:
    """The contract of one op: its entries, fake kernels, autograd and vmap rules (see the
    module docstring)."""

    def __init__(self, op: str, entries: Iterable[str] = ("fwd", "bwd")) -> None:
        self.op = op
        self.entries = tuple(entries)
        self._fakes: dict[str, Callable] = {}
        self._autograd: dict[str, tuple[Callable, Callable]] = {}
        self._vmap: tuple[_autograd.VmapRule, Callable[[Callable], Callable]] | None = None
        self._impls: dict[str, Impl] = {}
        self._functions: dict[str, type[torch.autograd.Function]] = {}
        self._sealed = False
        _CONTRACTS[op] = self
        _ext.declare(op, tuple(f"{op}_{e}" for e in self.entries))

    # ---- declaration (the op's module) -----------------------------------------------------
    def fake(self, entry: str) -> Callable[[Callable], Callable]:
        """Decorator: the fake kernel of ``entry`` (output shapes, dtypes and devices)."""
        self._check_entry(entry)

        def deco(fn: Callable) -> Callable:
            self._fakes[entry] = fn
            return fn

        return deco

    def differentiable(self, entry: str, setup_context: Callable, backward: Callable) -> None:
        """The autograd of ``entry``: ``setup_context(ctx, inputs, output)`` and
        ``backward(impl, ctx, *grads)``."""
        self._check_entry(entry)
        self._autograd[entry] = (setup_context, backward)

    def vmap(self, rule: _autograd.VmapRule, bwd_rule: Callable[[Callable], Callable]) -> None:
        """The vmap rule of the ``fwd`` entry, ``rule(apply, info, in_dims, *args)``, and
        ``bwd_rule(bwd op) -> the vmap rule of the bwd entry`` (vmap over torch.func.grad)."""
        self._vmap = (rule, bwd_rule)

    def seal(self) -> None:
        """Register the declarations for every namespace that provides all the entries (and,
        later, for one that appears: :func:`provided`)."""
        missing = [e for e in self.entries if e not in self._fakes]
        if missing:
            raise RuntimeError(f"art_fast.{self.op}: no fake kernel for {missing}")
        self._sealed = True
        for namespace in (EXT_NAMESPACE, TRITON_NAMESPACE):
            self._register(namespace)

    # ---- use (the public function) ---------------------------------------------------------
    def impl(self, backend: str) -> Impl:
        """The entries of a compiled backend (``cpu``, ``cuda``, ``triton``): a table lookup."""
        impl = self._impls.get(NAMESPACES[backend])
        if impl is None:
            raise RuntimeError(
                f"art_fast.{self.op}: backend {backend!r} provides no complete set of entries "
                f"{self.entries} in torch.ops.{NAMESPACES[backend]}"
            )
        return impl

    def function(self, backend: str) -> type[torch.autograd.Function]:
        """The ``fwd`` entry of ``backend`` as an autograd.Function that torch.func accepts
        (``_autograd.transformable``: the one ``register_autograd`` builds has no
        setup_context), with the vmap rules; built once per backend."""
        fn = self._functions.get(backend)
        if fn is None:
            impl = self.impl(backend)
            if self._vmap is None:
                raise RuntimeError(f"art_fast.{self.op}: no vmap rule declared")
            rule, bwd_rule = self._vmap
            setup_context, backward = self._autograd["fwd"]
            _autograd.register_vmap_once(f"{impl.namespace}::{self.op}_bwd", bwd_rule)
            fn = _autograd.transformable(f"{self.op}_{backend}", impl.fwd, setup_context,
                                         functools.partial(backward, impl), rule)
            self._functions[backend] = fn
        return fn

    # ---- internals -------------------------------------------------------------------------
    def _check_entry(self, entry: str) -> None:
        if entry not in self.entries:
            raise ValueError(f"art_fast.{self.op}: entry must be one of {self.entries}, "
                             f"got {entry!r}")

    def provides(self, namespace: str) -> bool:
        """Whether ``torch.ops.<namespace>`` defines every entry of the op."""
        return all(_op_exists(namespace, f"{self.op}_{e}") for e in self.entries)

    def _register(self, namespace: str) -> None:
        if namespace in self._impls or not self.provides(namespace):
            return
        impl = Impl(self.op, namespace, self.entries)
        for entry, fake in self._fakes.items():
            torch.library.register_fake(f"{namespace}::{self.op}_{entry}", fake)
        for entry, (setup_context, backward) in self._autograd.items():
            torch.library.register_autograd(f"{namespace}::{self.op}_{entry}",
                                            functools.partial(backward, impl),
                                            setup_context=setup_context)
        self._impls[namespace] = impl


def provided(op: str, namespace: str = TRITON_NAMESPACE) -> None:
    """Called by a module that defines ``op``'s entries in ``namespace`` (the Triton modules,
    at their end): registers the op's contract for it if the contract is already sealed (else
    :meth:`OpContract.seal` will)."""
    contract = _CONTRACTS.get(op)
    if contract is not None and contract._sealed:
        contract._register(namespace)
