"""The hot-path ops, one module each (``art_fast/ops/<op>.py``): the public function, the op's
contract (``CONTRACT``: fake kernels and autograd, registered for every backend) and its spec
(``SPEC``: samples, benchmark shapes, tolerances, doc page).

:data:`SPECS` holds every op's spec, found by listing this package: an op is added by adding
its module (docs/adding_an_op.md) and its export line below.
"""

from __future__ import annotations

import importlib
import pkgutil

from .. import _backend
from .._spec import OpSpec
from .cross_attention import cross_attention as cross_attention
from .info_nce import info_nce as info_nce
from .topk_regions import topk_regions as topk_regions


def _collect() -> dict[str, OpSpec]:
    specs: dict[str, OpSpec] = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("_"):
            continue
        spec = getattr(importlib.import_module(f"{__name__}.{mod.name}"), "SPEC", None)
        if not isinstance(spec, OpSpec) or spec.name != mod.name:
            raise RuntimeError(f"art_fast.ops.{mod.name} must define SPEC, an OpSpec named "
                               f"{mod.name!r}")
        specs[mod.name] = spec
    return specs


SPECS: dict[str, OpSpec] = _collect()
"""Op name -> its spec, in the order of the module names."""

__all__ = ["SPECS", *(name for name in SPECS)]

_backend.compute_status()
