"""Autograd helpers of the hot-path ops, used by the op contracts
(``art_fast._contract``) and the ops' backwards (``art_fast/ops/<op>.py``). Imports torch
only.

- :func:`once_differentiable`: the kernels' backwards are not differentiable. Under
  ``create_graph=True`` their gradients are tied to the tensors they depend on through a node
  whose backward raises a RuntimeError saying so (not a silent zero or None; only when a
  second derivative is actually asked for: ``create_graph=True`` alone still works, and so
  does ``torch.func.grad``, which always builds the graph).
- :func:`transforms_active` / :func:`transformable`: the autograd.Function that
  ``torch.library.register_autograd`` generates for an op (``torch/_library/autograd.py``,
  ``make_autograd_impl``) defines ``forward(ctx, *args)`` and no ``setup_context``, so
  ``torch.func.grad`` / ``vmap`` refuse it ("it must override the setup_context staticmethod").
  Under a torch.func transform the public functions therefore call the op through an
  autograd.Function of their own, built by :func:`transformable` from the same forward,
  setup_context and backward (``art_fast._contract.OpContract.function``), with an explicit
  vmap rule (the vmapped dim folded into the op's batch dim: one kernel call, no per-sample
  loop). Outside transforms nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def transforms_active() -> bool:
    """Whether a torch.func transform (grad, vmap, jvp, ...) is active (never while tracing:
    torch.compile does not see the check)."""
    return not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() \
        is not None


def is_batched(t: torch.Tensor) -> bool:
    """Whether ``t`` is, or wraps (torch.func.grad inside vmap), a vmap BatchedTensor: no
    data-dependent Python control flow on it."""
    ft = torch._C._functorch
    while ft.is_functorch_wrapped_tensor(t):
        if ft.is_batchedtensor(t):
            return True
        t = ft.get_unwrapped(t)
    return False


class _DoubleBackwardError(torch.autograd.Function):
    """``forward(grad, msg, *deps) = grad.clone()``; its backward raises RuntimeError(msg)."""

    generate_vmap_rule = True  # a clone: vmappable as it is (vmap over torch.func.grad)

    @staticmethod
    def forward(grad, msg, *deps):
        return grad.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.msg = inputs[1]

    @staticmethod
    def backward(ctx, *_grads):
        raise RuntimeError(ctx.msg)


def once_differentiable(
    op: str, backend: str, grads: Sequence[torch.Tensor | None], deps: Sequence[object]
) -> tuple[torch.Tensor | None, ...]:
    """``grads`` (what an op's backward returns) as they are, unless the backward runs with
    ``create_graph=True`` and one of ``deps`` (the backward's tensor inputs: upstream
    gradients, saved tensors) requires grad: each gradient is then a copy whose backward raises
    ``RuntimeError("art_fast.<op>: double backward is not supported on the <backend>
    backend; use backend='torch'")`` (the kernels' gradients are not themselves
    differentiable: without this, a second derivative through them would be a silent 0)."""
    if not torch.is_grad_enabled():
        return tuple(grads)
    tensors = [t for t in deps if isinstance(t, torch.Tensor)]
    if not any(t.requires_grad for t in tensors):
        return tuple(grads)
    msg = (f"art_fast.{op}: double backward is not supported on the {backend} backend; "
           f"use backend='torch'")
    return tuple(None if g is None else _DoubleBackwardError.apply(g, msg, *tensors)
                 for g in grads)


def no_double_backward(op: str, backend: str) -> None:
    """Raise at once when a backward whose inputs are not at hand runs with
    ``create_graph=True`` (the fused info_nce backward: it only scales gradients computed in
    the forward, so nothing could carry a lazy error)."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"art_fast.{op}: double backward is not supported on the {backend} backend "
            f"(backward with create_graph=True); use backend='torch'"
        )


VmapRule = Callable[..., tuple[object, object]]


def transformable(name: str, forward: Callable, setup_context: Callable, backward: Callable,
                  vmap_rule: VmapRule) -> type[torch.autograd.Function]:
    """An autograd.Function (setup_context style, so torch.func accepts it) running ``forward``
    (the op) with the op's registered ``setup_context`` / ``backward``;
    ``vmap_rule(apply, info, in_dims, *args) -> (outputs, out_dims)`` calls ``apply`` (this
    Function's) on the inputs with the vmapped dim folded into the batch dim."""
    cls = type(name, (torch.autograd.Function,), {
        "forward": staticmethod(lambda *args: forward(*args)),
        "setup_context": staticmethod(setup_context),
        "backward": staticmethod(backward),
    })
    cls.vmap = staticmethod(lambda info, in_dims, *args: vmap_rule(cls.apply, info, in_dims,
                                                                   *args))
    return cls


_VMAP_REGISTERED: set[str] = set()


def register_vmap_once(qualname: str, make_rule: Callable[[Callable], Callable]) -> None:
    """``torch.library.register_vmap(qualname, make_rule(op))``, the first time only: the
    backward ops' vmap rules (vmap over torch.func.grad runs the backward on batched tensors;
    without a rule functorch loops over the samples, with a warning)."""
    if qualname in _VMAP_REGISTERED:
        return
    namespace, name = qualname.split("::")
    torch.library.register_vmap(qualname, make_rule(getattr(getattr(torch.ops, namespace),
                                                            name)))
    _VMAP_REGISTERED.add(qualname)


def batch_first(x: torch.Tensor, bdim: int | None, size: int, at: int = 0) -> torch.Tensor:
    """``x`` with the vmapped dim at ``at`` (``[V, *shape]`` for 0); expanded to V when not
    vmapped (``bdim`` None)."""
    if bdim is None:
        return x.unsqueeze(at).expand(*x.shape[:at], size, *x.shape[at:])
    return x.movedim(bdim, at)


def fold(x: torch.Tensor, at: int = 0) -> torch.Tensor:
    """``[..., V, B, ...]`` (V at ``at``) -> contiguous ``[..., V * B, ...]`` (the kernels index
    their inputs as contiguous)."""
    return x.flatten(at, at + 1).contiguous()


def unfold(x: torch.Tensor, size: int, dim: int = 0) -> tuple[torch.Tensor, int]:
    """An output ``[..., V * B, ...]`` (the folded batch at ``dim``) as ``[..., V, B, ...]``
    and its vmapped dim."""
    return x.unflatten(dim, (size, x.shape[dim] // size)), dim
