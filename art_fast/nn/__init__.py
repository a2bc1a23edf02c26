"""Reusable modules on the art_fast ops: query-to-patch attention and the tracklet loss."""

from .attention import QueryPatchAttention
from .tracklet_loss import TrackletContrastiveLoss
from .transformer import MLP, PreLNBlock, SelfAttention

__all__ = ["QueryPatchAttention", "TrackletContrastiveLoss", "PreLNBlock", "SelfAttention", "MLP"]
