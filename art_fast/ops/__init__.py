"""The three hot-path ops, one file each: public function, backend dispatch, torch.library
registration (fake kernel + autograd) of the compiled operators."""

from .cross_attention import cross_attention
from .info_nce import info_nce
from .topk_regions import topk_regions

__all__ = ["cross_attention", "topk_regions", "info_nce"]
