"""The video classification dataset all readers share: sampling, transforms, robustness.

A reader (``Diving48``, ``FineGym``, ...) only parses its annotation files into a list of
:class:`VideoSample` and a list of class descriptions; this base class does the rest:

* construction: files that do not exist are counted (``.missing``), logged once, and skipped;
* ``__getitem__(i)``: opens the video (one decode thread), picks frame indices (TSN segments or a
  dense clip; several temporal views in multi-view evaluation), decodes them, applies the
  transforms, and returns ``(uint8 tensor, int label)``;
* broken files: the policy of :mod:`art_fast.data.robust` (bounded retry, next sample,
  ``bad_videos.txt``, stop past ``max_bad_fraction``);
* target boxes (readers that have them, e.g. :class:`~art_fast.data.Diving48` with a
  ``binding_meta.json``): :meth:`VideoClassificationDataset.get_with_boxes` returns an item
  with the target's box in every frame the model sees, in model-input pixels (the frames'
  indices as the loader sampled them, the boxes mapped through the evaluation transform);
  :class:`WithTargetBoxes` wraps a dataset so that its items are ``(video, label, boxes)``.

Reproducibility: sample ``i`` in epoch ``e`` draws everything (frame offsets, crop box, flip,
RandAugment ops) from ``numpy.random.default_rng([seed, e, i])``, so it does not depend on the
worker or the order of loading. Call :meth:`VideoClassificationDataset.set_epoch` each epoch,
or pass the index as a tuple ``(i, e)`` (for persistent DataLoader workers, whose dataset
copies do not see ``set_epoch`` calls made in the main process).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .robust import BadVideoPolicy
from .sampling import dense_indices, dense_multiview_indices, multiview_indices, segment_indices
from .transforms import (
    CenterCrop,
    Compose,
    RandAugment,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ThreeCrop,
    supports_boxes,
)
from .video import VideoReader

__all__ = ["VideoSample", "VideoClassificationDataset", "WithTargetBoxes"]

logger = logging.getLogger(__name__)

_SAMPLINGS = ("segments", "dense")


@dataclass(frozen=True)
class VideoSample:
    """One annotated clip: the file, the class index, and optionally the frame range
    ``[start, end)`` to sample from (``end=None``: to the end of the video)."""

    path: str
    label: int
    start: int = 0
    end: int | None = None


def _files_in(directory: str) -> set[str] | None:
    try:
        return set(os.listdir(directory))
    except OSError:
        return None


def existing(paths: Sequence[str]) -> list[bool]:
    """Whether each path exists, listing each directory once (fast on large datasets)."""
    by_dir: dict[str, set[str] | None] = {}
    out = []
    for p in paths:
        d, name = os.path.split(p)
        if d not in by_dir:
            by_dir[d] = _files_in(d or ".")
        listing = by_dir[d]
        out.append(listing is not None and name in listing)
    return out


class VideoClassificationDataset(Dataset):
    """Map-style dataset of ``(video, label)`` pairs over a list of :class:`VideoSample`.

    Args:
        samples: the clips (path, label, optional frame range).
        classes: class descriptions (the texts a text encoder encodes), all distinct;
            ``labels`` index into it.
        num_frames: frames per clip ``T``.
        train: training mode (random frame offsets, random resized crop, optional flip and
            RandAugment) or evaluation (centre offsets, resize + centre crop, multi-view).
        image_size: output side ``S`` (square).
        sampling: ``"segments"`` (TSN: one frame per equal segment) or ``"dense"``
            (``num_frames`` consecutive frames ``dense_stride`` apart).
        dense_stride: frame step of dense clips.
        views: ``(clips, crops)`` for evaluation: temporal clips x spatial crops (1: centre
            crop, 3: :class:`ThreeCrop`). Ignored in training.
        hflip: random horizontal flip in training (off by default: direction-sensitive
            classes).
        seed: base seed of the per-sample generators.
        crop_scale, crop_ratio: area fraction and aspect-ratio range of the training
            :class:`RandomResizedCrop`.
        randaugment: ``(num_ops, magnitude)`` of a training :class:`RandAugment` (after the
            crop and the flip; the same ops on every frame of a clip; magnitude in 0..30);
            ``num_ops=0`` (the default): off.
        transform: replaces the default pipeline: called as ``transform(uint8 [T, H, W, 3],
            numpy Generator)``, returns uint8 ``[T, h, w, 3]`` (or ``[V, T, h, w, 3]``).
        check_files: count and drop samples whose file is missing at construction.
        output_dir: where ``bad_videos.txt`` is written (None: no report file).
        max_retries, max_bad_fraction: the broken-video policy (:mod:`art_fast.data.robust`).
        backend: decoding backend, ``"auto"`` | ``"decord"`` | ``"pyav"``.

    Items:
        ``(video, label)``: ``video`` uint8 ``[T, S, S, 3]``, or ``[V, T, S, S, 3]`` with
        ``V = clips * crops`` (clip-major) when evaluating with more than one view; ``label``
        int.

    Target boxes: ``target_boxes`` maps a sample's path to the float32 ``[F, 4]`` target box
    (``x0, y0, x1, y1``, exclusive ends, the file's pixels; NaN rows: no box) of each of the
    ``F`` frames of its file. The base class has none (``{}``); readers with box annotations
    fill it (:class:`~art_fast.data.Diving48`). ``has_boxes``: some sample has boxes;
    ``can_map_boxes``: ``has_boxes`` and the items go through a transform that maps boxes
    (evaluation mode with the default resize + centre / three crop); then
    :meth:`get_with_boxes` gives ``(video, label, boxes)``.
    """

    def __init__(self, samples: Sequence[VideoSample], classes: Sequence[str], *,
                 num_frames: int = 8, train: bool = False, image_size: int = 224,
                 sampling: str = "segments", dense_stride: int = 4,
                 views: Sequence[int] = (1, 1), hflip: bool = False, seed: int = 0,
                 crop_scale: Sequence[float] = (0.25, 1.0),
                 crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
                 randaugment: Sequence[int] = (0, 9),
                 transform: Callable[..., torch.Tensor] | None = None,
                 check_files: bool = True, output_dir: str | os.PathLike[str] | None = None,
                 max_retries: int = 2, max_bad_fraction: float = 0.05,
                 backend: str = "auto") -> None:
        if sampling not in _SAMPLINGS:
            raise ValueError(f"sampling must be one of {_SAMPLINGS}, got {sampling!r}")
        if int(num_frames) < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames!r}")
        if int(image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size!r}")
        if int(dense_stride) < 1:
            raise ValueError(f"dense_stride must be >= 1, got {dense_stride!r}")
        if len(views) != 2 or int(views[0]) < 1 or int(views[1]) not in (1, 3):
            raise ValueError(f"views must be (clips >= 1, crops in {{1, 3}}), got {views!r}")
        if backend not in ("auto", "decord", "pyav"):
            raise ValueError(f"backend must be 'auto', 'decord' or 'pyav', got {backend!r}")
        if len(randaugment) != 2 or int(randaugment[0]) < 0 or \
                not 0 <= int(randaugment[1]) <= 30:
            raise ValueError(f"randaugment must be (num_ops >= 0, magnitude in 0..30), got "
                             f"{randaugment!r}")
        self.classes: list[str] = [str(c) for c in classes]
        dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if dup:
            raise ValueError(f"class descriptions must be distinct; repeated: {dup[:5]}")
        samples = list(samples)
        for s in samples:
            if not 0 <= s.label < len(self.classes):
                raise ValueError(f"label {s.label} of {s.path} is outside "
                                 f"0..{len(self.classes) - 1} ({len(self.classes)} classes)")
        self.num_frames = int(num_frames)
        self.train = bool(train)
        self.image_size = int(image_size)
        self.sampling = sampling
        self.dense_stride = int(dense_stride)
        self.views = (int(views[0]), int(views[1]))
        self.hflip = bool(hflip)
        self.seed = int(seed)
        self.backend = backend
        self.epoch = 0
        self.missing = 0
        self.missing_paths: list[str] = []
        if check_files and samples:
            ok = existing([s.path for s in samples])
            self.missing_paths = [s.path for s, o in zip(samples, ok) if not o]
            self.missing = len(self.missing_paths)
            if self.missing:
                if self.missing == len(samples):
                    raise FileNotFoundError(
                        f"{type(self).__name__}: none of the {len(samples)} videos exists; "
                        f"the first expected file is {samples[0].path}")
                logger.warning("%s: %d of %d videos are missing and skipped (first: %s)",
                               type(self).__name__, self.missing, len(samples),
                               self.missing_paths[0])
                samples = [s for s, o in zip(samples, ok) if o]
        if not samples:
            raise ValueError(f"{type(self).__name__}: no samples")
        self.samples: list[VideoSample] = samples
        if transform is not None:
            self.transform = transform
        elif self.train:
            steps: list[Any] = [RandomResizedCrop(self.image_size, crop_scale, crop_ratio)]
            if self.hflip:
                steps.append(RandomHorizontalFlip(0.5))
            if int(randaugment[0]) > 0:
                steps.append(RandAugment(int(randaugment[0]), int(randaugment[1])))
            self.transform = Compose(steps)
        else:
            crop = ThreeCrop(self.image_size) if self.views[1] == 3 else CenterCrop(
                self.image_size)
            self.transform = Compose([Resize(self.image_size), crop])
        self.policy = BadVideoPolicy(len(self.samples), self.path_of, max_retries=max_retries,
                                     max_bad_fraction=max_bad_fraction, output_dir=output_dir)
        self.target_boxes: dict[str, np.ndarray] = {}
        self.box_file: str | None = None  # where target_boxes came from (for messages)

    # -- basic accessors ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        """Class index of every sample, in order."""
        return [s.label for s in self.samples]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def path_of(self, index: int) -> str:
        """The video file of sample ``index``."""
        return self.samples[index].path

    def class_counts(self) -> list[int]:
        """Number of samples per class."""
        counts: dict[int, int] = defaultdict(int)
        for s in self.samples:
            counts[s.label] += 1
        return [counts[c] for c in range(len(self.classes))]

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s random draws from now on (see the module docstring)."""
        self.epoch = int(epoch)

    @property
    def multiview(self) -> bool:
        """True when evaluation items carry a view dimension."""
        return not self.train and self.views[0] * self.views[1] > 1

    # -- loading -----------------------------------------------------------------------------

    def frame_indices(self, num_frames_in_range: int, rng: np.random.Generator
                      ) -> list[np.ndarray]:
        """The temporal views' frame indices (relative to the sampled range): one array in
        training or single-clip evaluation, ``views[0]`` arrays in multi-clip evaluation."""
        n, t = num_frames_in_range, self.num_frames
        if self.sampling == "segments":
            if self.train:
                return [segment_indices(n, t, train=True, rng=rng)]
            return multiview_indices(n, t, self.views[0])
        if self.train:
            return [dense_indices(n, t, self.dense_stride, train=True, rng=rng)]
        return dense_multiview_indices(n, t, self.dense_stride, self.views[0])

    def load(self, index: int, epoch: int | None = None) -> tuple[torch.Tensor, int]:
        """Sample ``index`` without the broken-video policy (raises on a bad file).

        Returns ``(uint8 [T, S, S, 3] or [V, T, S, S, 3], label)``."""
        video, label, _ = self._load(index, epoch, with_boxes=False)
        return video, label

    def load_with_boxes(self, index: int, epoch: int | None = None
                        ) -> tuple[torch.Tensor, int, torch.Tensor]:
        """:meth:`load` plus the target box of every frame of the item, in the item's pixels.

        Returns ``(video, label, boxes)``: ``video`` as :meth:`load`; ``boxes`` float32
        ``[T, 4]`` (or ``[V, T, 4]`` with the video's views, in the same clip-major order)
        ``x0, y0, x1, y1`` with exclusive ends in model-input pixels: each sampled frame's
        box in the file (``target_boxes``) mapped through the transform exactly as the
        pixels are (resize, then the view's crop, clipped to it). A frame with no box, a
        sample with no boxes, gives NaN rows. Every view has its own mapping (its own frame
        indices and crop).

        Raises:
            ValueError: the set has no boxes, the transform cannot map boxes (training mode,
                a custom transform), or the sample's box list does not have one box per
                decoded frame of its file.
        """
        if not self.has_boxes:
            raise ValueError(f"{type(self).__name__}: this set has no target boxes")
        if not supports_boxes(self.transform):
            raise ValueError(f"{type(self).__name__}: boxes can only be mapped through a "
                             f"deterministic transform (evaluation mode, default transform), "
                             f"not {self.transform!r}")
        video, label, boxes = self._load(index, epoch, with_boxes=True)
        assert boxes is not None
        return video, label, boxes

    def _load(self, index: int, epoch: int | None, with_boxes: bool
              ) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        s = self.samples[index]
        ep = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, ep, int(index)])
        with VideoReader(s.path, backend=self.backend) as reader:  # type: ignore[arg-type]
            total = len(reader)
            start = min(max(s.start, 0), total - 1)
            end = total if s.end is None else min(s.end, total)
            end = max(end, start + 1)
            views = self.frame_indices(end - start, rng)
            flat = np.concatenate(views) + start
            frames = torch.from_numpy(reader.get(flat))
        t = self.num_frames
        clips = [frames[k * t:(k + 1) * t] for k in range(len(views))]
        out = [self.transform(c, rng) for c in clips]
        boxes, boxes_v = None, []
        if with_boxes:
            raw = self._file_boxes(index, total)
            size = (int(frames.shape[1]), int(frames.shape[2]))
            boxes_v = [self.transform.map_boxes(torch.from_numpy(raw[v + start]), size)[0]
                       for v in views]
        if self.train or not self.multiview:
            return out[0], s.label, (boxes_v[0] if with_boxes else None)
        # [clips] x ([crops, T, S, S, 3] or [T, S, S, 3]) -> [clips * crops, T, S, S, 3]
        out = [o if o.dim() == 5 else o.unsqueeze(0) for o in out]
        if with_boxes:
            boxes = torch.cat([b if b.dim() == 3 else b.unsqueeze(0) for b in boxes_v], 0)
        return torch.cat(out, 0), s.label, boxes

    def _file_boxes(self, index: int, total: int) -> np.ndarray:
        """float32 ``[total, 4]`` target boxes of sample ``index``'s file (NaN: none)."""
        path = self.samples[index].path
        raw = self.target_boxes.get(path)
        if raw is None:
            return np.full((total, 4), np.nan, dtype=np.float32)
        if len(raw) != total:
            raise ValueError(f"{self.box_file or 'target boxes'}: {len(raw)} boxes for {path}, "
                             f"which decodes to {total} frames (one box per frame is required)")
        return raw

    def _split_index(self, index: int | tuple[int, int]) -> tuple[int, int]:
        if isinstance(index, tuple):
            i, ep = int(index[0]), int(index[1])
        else:
            i, ep = int(index), self.epoch
        if i < 0:
            i += len(self.samples)
        return i, ep

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """``(video, label)``; ``index`` may be ``(i, epoch)``. A broken file is replaced by
        the next readable sample (see :mod:`art_fast.data.robust`)."""
        i, ep = self._split_index(index)
        return self.policy.load(i, lambda j: self.load(j, ep))

    # -- target boxes ------------------------------------------------------------------------

    @property
    def has_boxes(self) -> bool:
        """True when some sample has target boxes (``target_boxes`` is not empty)."""
        return bool(self.target_boxes)

    @property
    def can_map_boxes(self) -> bool:
        """True when :meth:`get_with_boxes` works: ``has_boxes`` and a transform that maps
        boxes (evaluation mode with the default transform)."""
        return self.has_boxes and supports_boxes(self.transform)

    def get_with_boxes(self, index: int | tuple[int, int]
                       ) -> tuple[torch.Tensor, int, torch.Tensor]:
        """``(video, label, boxes)`` of :meth:`load_with_boxes` with the broken-video policy
        of ``__getitem__`` (a substituted sample comes with its own boxes); ``index`` may be
        ``(i, epoch)``."""
        i, ep = self._split_index(index)
        return self.policy.load(i, lambda j: self.load_with_boxes(j, ep))

    def __repr__(self) -> str:
        mode = "train" if self.train else f"eval, views={self.views}"
        return (f"{type(self).__name__}({len(self)} videos, {len(self.classes)} classes, "
                f"T={self.num_frames}, size={self.image_size}, {self.sampling}, {mode}, "
                f"missing={self.missing})")


class WithTargetBoxes(Dataset):
    """A view of a :class:`VideoClassificationDataset` whose items carry the target boxes:
    ``(video, label, boxes)`` from :meth:`VideoClassificationDataset.get_with_boxes`
    (``boxes`` float32 ``[T, 4]`` or ``[V, T, 4]``, model-input pixels, NaN rows: no box);
    indices as the dataset's (``i`` or ``(i, epoch)``). The default collate stacks the boxes
    to ``[B, T, 4]`` / ``[B, V, T, 4]``."""

    def __init__(self, dataset: VideoClassificationDataset) -> None:
        if not dataset.can_map_boxes:
            raise ValueError(f"WithTargetBoxes: {dataset!r} cannot give target boxes "
                             f"(has_boxes={dataset.has_boxes}; boxes need the evaluation "
                             f"transform)")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int | tuple[int, int]
                    ) -> tuple[torch.Tensor, int, torch.Tensor]:
        return self.dataset.get_with_boxes(index)
