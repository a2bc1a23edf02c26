"""The ART model (DESIGN §4): backbone, text bank, SE + RSSA, tracklets, heads."""

from .art import ART, LOSS_NAMES, ARTOptions, ARTOutput
from .backbone import TINY_ALIAS, VideoBackbone, build_clip
from .text_bank import DEFAULT_TEMPLATES
from .uniformerv2 import UNIFORMERV2_MODELS, UniFormerV2Backbone, remap_official_state_dict

__all__ = ["ART", "ARTOptions", "ARTOutput", "LOSS_NAMES", "VideoBackbone", "build_clip",
           "DEFAULT_TEMPLATES", "TINY_ALIAS", "UniFormerV2Backbone", "UNIFORMERV2_MODELS",
           "remap_official_state_dict"]
