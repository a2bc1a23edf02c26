"""The ART model (DESIGN §4): backbone, text bank, SE + RSSA, tracklets, heads."""

from .art import ART, LOSS_NAMES, ARTOptions, ARTOutput
from .backbone import TINY_ALIAS, VideoBackbone, build_clip
from .text_bank import DEFAULT_TEMPLATES

__all__ = ["ART", "ARTOptions", "ARTOutput", "LOSS_NAMES", "VideoBackbone", "build_clip",
           "DEFAULT_TEMPLATES", "TINY_ALIAS"]
