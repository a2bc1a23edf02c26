"""Pure-PyTorch references of the hot-path ops: the truth every kernel is tested against, the
``torch`` backend, and the fallback when the extension is missing. Any floating dtype,
float64 included; any device; gradients by autograd."""

from .cross_attention import cross_attention
from .info_nce import info_nce
from .topk_regions import topk_regions, topk_select

__all__ = ["cross_attention", "topk_regions", "topk_select", "info_nce"]
