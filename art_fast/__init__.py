"""art_fast: ART (Action-Region Tracking) with custom kernels for its hot paths."""

from . import _ext  # noqa: F401  (loads art_fast._C, warns when it cannot)
from ._backend import available_backends, backend_status, get_backend, set_backend, use_backend
from ._patch import patch, unpatch
from .model import ART, ARTOptions, ARTOutput
from .ops import *  # noqa: F403  (every op's public function: art_fast.ops.__all__)
from .ops import SPECS as _SPECS
from .predict import load_model  # light: the trainer is imported when it is called

__version__ = "0.1.0"

__all__ = [
    "ART",
    "ARTOptions",
    "ARTOutput",
    *_SPECS,
    "available_backends",
    "backend_status",
    "get_backend",
    "load_model",
    "patch",
    "set_backend",
    "unpatch",
    "use_backend",
    "__version__",
]
