"""Input checks shared by the three ops, run before any backend is chosen, so every backend
rejects bad input the same way: TypeError for a wrong type or dtype, ValueError for a wrong
shape, rank, range or device mix, each naming the argument and what was expected."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(op: str, name: str, x: object, shape: str) -> torch.Tensor:
    """``x`` must be a floating tensor of rank ``len(shape)`` with no empty dimension."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"art_fast.{op}: {name} must be a torch.Tensor {shape}, got {type(x)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"art_fast.{op}: {name} must be float16, bfloat16, float32 or float64, got {x.dtype}"
        )
    rank = shape.count(",") + 1
    if x.dim() != rank:
        raise ValueError(
            f"art_fast.{op}: {name} must have shape {shape} ({rank} dims), got {tuple(x.shape)}"
        )
    if x.numel() == 0:
        raise ValueError(
            f"art_fast.{op}: {name} must not be empty (shape {shape}), got {tuple(x.shape)}"
        )
    return x


def check_same(op: str, names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> None:
    """The tensors share one dtype and one device."""
    first = tensors[0]
    for n, t in zip(names[1:], tensors[1:]):
        if t.dtype != first.dtype:
            raise TypeError(
                f"art_fast.{op}: {n} must have the dtype of {names[0]} ({first.dtype}), "
                f"got {t.dtype}"
            )
        if t.device != first.device:
            raise ValueError(
                f"art_fast.{op}: {n} must be on the device of {names[0]} ({first.device}), "
                f"got {t.device}"
            )


def check_dim(op: str, name: str, got: int, want: int, what: str, shape: str) -> None:
    if got != want:
        raise ValueError(
            f"art_fast.{op}: {name} must have shape {shape} with {what} = {want}, got {got}"
        )


def check_inputs(op: str, *inputs: tuple[str, object, str]) -> dict[str, int]:
    """Each ``(name, x, shape)`` passes :func:`check_tensor`; all share the first one's dtype
    and device (:func:`check_same`); and each letter of the shapes names one size: the first
    tensor with the letter sets it, every later one must match (:func:`check_dim`, in the order
    of the inputs and of their dims). Returns ``{letter: size}``."""
    for name, x, shape in inputs:
        check_tensor(op, name, x, shape)
    check_same(op, tuple(i[0] for i in inputs), tuple(i[1] for i in inputs))
    sizes: dict[str, int] = {}
    for name, x, shape in inputs:
        for letter, got in zip(shape.strip("[]").split(", "), x.shape):
            if letter in sizes:
                check_dim(op, name, got, sizes[letter], letter, shape)
            else:
                sizes[letter] = got
    return sizes


def check_float(op: str, name: str, x: object, *, positive: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"art_fast.{op}: {name} must be a float, got {type(x)}")
    x = float(x)
    if not math.isfinite(x) or (positive and x <= 0):
        want = "a finite float > 0" if positive else "a finite float"
        raise ValueError(f"art_fast.{op}: {name} must be {want}, got {x}")
    return x


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' accumulation dtype: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
