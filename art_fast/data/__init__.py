"""Data: video decoding, frame samplers, clip transforms, dataset readers, the synthetic set.

Public names (see each module for details):

* decoding (:mod:`.video`): ``read_frames``, ``num_frames``, ``VideoReader``,
  ``VideoDecodeError``;
* sampling (:mod:`.sampling`): ``segment_indices``, ``dense_indices``, ``multiview_indices``,
  ``dense_multiview_indices``;
* transforms (:mod:`.transforms`, on ``torchvision.transforms.v2``): ``RandomResizedCrop``,
  ``ScaleJitterCrop``, ``RandomHorizontalFlip``, ``RandAugment``, ``Resize``, ``CenterCrop``,
  ``ThreeCrop``, ``Compose``, ``to_model_input``, ``CLIP_MEAN``, ``CLIP_STD``;
* datasets (:mod:`.base`, :mod:`.datasets`): ``VideoClassificationDataset``, ``VideoSample``,
  ``Diving48``, ``FineGym``, ``SomethingSomethingV2``, ``Kinetics400``, ``VideoList``,
  ``diving48_sentence``, ``finegym_classes``; target boxes: ``WithTargetBoxes``,
  ``read_target_boxes``, ``supports_boxes``;
* broken videos (:mod:`.robust`): ``BadVideoLog``, ``BadVideoPolicy``, ``RobustVideoDataset``;
* synthetic set (:mod:`.synthetic`): ``make_synthetic`` (``art-fast synth`` calls
  ``art_fast.data.synthetic.main``).
"""

# Each module's ``__all__`` is the package's public API for that part (one list, not two).
from . import base, datasets, robust, sampling, transforms, video
from .base import *  # noqa: F403
from .datasets import *  # noqa: F403
from .robust import *  # noqa: F403
from .sampling import *  # noqa: F403
from .synthetic import make_synthetic
from .transforms import *  # noqa: F403
from .video import *  # noqa: F403

__all__ = [*video.__all__, *sampling.__all__, *transforms.__all__, *base.__all__,
           *datasets.__all__, *robust.__all__, "make_synthetic"]
