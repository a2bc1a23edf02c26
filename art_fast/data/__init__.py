"""Data: video decoding, frame samplers, clip transforms, dataset readers, the synthetic set.

Public names (see each module for details):

* decoding (:mod:`.video`): ``read_frames``, ``num_frames``, ``VideoReader``,
  ``VideoDecodeError``;
* sampling (:mod:`.sampling`): ``segment_indices``, ``dense_indices``, ``multiview_indices``,
  ``dense_multiview_indices``;
* transforms (:mod:`.transforms`): ``RandomResizedCrop``, ``ScaleJitterCrop``,
  ``RandomHorizontalFlip``, ``Resize``, ``CenterCrop``, ``ThreeCrop``, ``Compose``,
  ``to_model_input``, ``CLIP_MEAN``, ``CLIP_STD``;
* datasets (:mod:`.base`, :mod:`.datasets`): ``VideoClassificationDataset``, ``VideoSample``,
  ``Diving48``, ``FineGym``, ``SomethingSomethingV2``, ``Kinetics400``, ``VideoList``,
  ``diving48_sentence``, ``finegym_classes``; target boxes: ``WithTargetBoxes``,
  ``read_target_boxes``, ``supports_boxes``;
* broken videos (:mod:`.robust`): ``BadVideoLog``, ``BadVideoPolicy``, ``RobustVideoDataset``;
* synthetic set (:mod:`.synthetic`): ``make_synthetic`` (``art-fast synth`` calls
  ``art_fast.data.synthetic.main``).
"""

from .base import VideoClassificationDataset, VideoSample, WithTargetBoxes
from .datasets import (
    Diving48,
    FineGym,
    Kinetics400,
    SomethingSomethingV2,
    VideoList,
    diving48_sentence,
    finegym_classes,
    parse_finegym_categories,
    read_target_boxes,
)
from .robust import BadVideoLog, BadVideoPolicy, RobustVideoDataset
from .sampling import dense_indices, dense_multiview_indices, multiview_indices, segment_indices
from .synthetic import make_synthetic
from .transforms import (
    CLIP_MEAN,
    CLIP_STD,
    CenterCrop,
    Compose,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ScaleJitterCrop,
    ThreeCrop,
    supports_boxes,
    to_model_input,
)
from .video import VideoDecodeError, VideoReader, num_frames, read_frames

__all__ = [
    "read_frames",
    "num_frames",
    "VideoReader",
    "VideoDecodeError",
    "segment_indices",
    "dense_indices",
    "multiview_indices",
    "dense_multiview_indices",
    "RandomResizedCrop",
    "ScaleJitterCrop",
    "RandomHorizontalFlip",
    "Resize",
    "CenterCrop",
    "ThreeCrop",
    "Compose",
    "to_model_input",
    "CLIP_MEAN",
    "CLIP_STD",
    "VideoClassificationDataset",
    "VideoSample",
    "Diving48",
    "FineGym",
    "SomethingSomethingV2",
    "Kinetics400",
    "VideoList",
    "diving48_sentence",
    "finegym_classes",
    "parse_finegym_categories",
    "read_target_boxes",
    "WithTargetBoxes",
    "supports_boxes",
    "BadVideoLog",
    "BadVideoPolicy",
    "RobustVideoDataset",
    "make_synthetic",
]
