"""art_fast: ART (Action-Region Tracking) with custom kernels for its hot paths."""

from . import _ext  # noqa: F401  (loads art_fast._C, warns when it cannot)
from ._backend import available_backends, backend_status, get_backend, set_backend, use_backend
from .model import ART, ARTOptions, ARTOutput
from .ops import cross_attention, info_nce, topk_regions

__version__ = "0.1.0"

__all__ = [
    "ART",
    "ARTOptions",
    "ARTOutput",
    "cross_attention",
    "topk_regions",
    "info_nce",
    "available_backends",
    "backend_status",
    "get_backend",
    "set_backend",
    "use_backend",
    "__version__",
]
