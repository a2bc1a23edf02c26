"""Pure-PyTorch references of the hot-path ops: the truth every kernel is tested against, the
``torch`` backend, and the fallback when the extension is missing. Any floating dtype,
float64 included; any device; gradients by autograd.

One module per op, ``art_fast/reference/<op>.py``, defining the function ``<op>``
(``cross_attention``, ``info_nce``, ``topk_regions``; ``topk_select`` is topk_regions' selection
rule). Every module's function is exported here by listing the package, so adding an op's
reference edits no shared file (docs/adding_an_op.md).
"""

from __future__ import annotations

import importlib
import pkgutil

from .topk_regions import topk_select

__all__ = ["topk_select"]

for _mod in pkgutil.iter_modules(__path__):
    globals()[_mod.name] = getattr(importlib.import_module(f"{__name__}.{_mod.name}"),
                                   _mod.name)
    __all__.append(_mod.name)
del _mod
