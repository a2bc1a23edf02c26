"""Video transforms on uint8 clips ``[T, H, W, 3]`` (torch), the same geometry for every frame.

All transforms take and return ``torch.uint8`` tensors with channels last; batches travel to the
device as uint8 and become float there (:func:`to_model_input`). A transform is called as
``transform(clip, generator)``: random ones draw every parameter from ``generator`` (a
``numpy.random.Generator``, or a ``torch.Generator``; None: a fresh, unseeded numpy generator,
not reproducible; torch's global generator is never used), so a dataset sample is reproducible
from (seed, epoch, index) whatever the worker or the loading order.

The pixel work is :mod:`torchvision.transforms.v2.functional`: the clip is viewed, without a
copy, as a ``tv_tensors.Video`` ``[T, 3, H, W]`` (channels-last strides), and the video kernels
treat ``T`` as a batch dimension, so one call applies one set of parameters to every frame:

* resizing: ``F.resize`` / ``F.resized_crop`` (bilinear, antialiased). On CPUs with AVX2 /
  AVX512 (and ARM) torchvision resizes uint8 natively with the same ``interpolate`` call the
  hand-written version made (bit-identical); elsewhere (GPU, older CPUs) it computes in float32
  and rounds;
* crops ``F.crop``, flip ``F.horizontal_flip``, and :class:`RandAugment` torchvision's
  RandAugment op space and kernels;
* boxes (``map_boxes``): the same ``F.resize`` / ``F.crop`` on ``tv_tensors.BoundingBoxes``
  (``XYXY``).

Hand-written, because no library does it:

* drawing the random parameters from the passed generator (torchvision's random transforms
  draw from torch's global RNG, which would make samples depend on the worker and the order of
  loading). :class:`RandomResizedCrop` samples its box with torchvision's algorithm (10 tries,
  then a centre crop with the ratio clamped), :class:`RandAugment` its ops and signs as
  torchvision does; both from the generator;
* the geometry that differs from torchvision's: :class:`Resize` rounds the long side
  (``F.resize(size=[s])`` truncates it) and :class:`CenterCrop` / :class:`ThreeCrop` place
  crops at ``(H - h) // 2`` (``F.center_crop`` rounds half to even, one pixel off on odd
  margins). Keeping them keeps the evaluation frames, boxes and scores of existing runs;
* :class:`ThreeCrop` (torchvision has five and ten crops only);
* :class:`Compose`: ``v2.Compose`` passes no generator and cannot map boxes on their own;
* :func:`to_model_input`: the uint8 -> normalised float step on the device, one fused
  multiply-add with the layout change (``F.to_dtype`` + ``F.normalize`` would be two more
  full passes over the batch).

Boxes: the deterministic (evaluation) transforms ``Resize``, ``CenterCrop``, ``ThreeCrop`` and a
``Compose`` of them also map pixel boxes exactly as they map the pixels
(``map_boxes(boxes, (H, W)) -> (boxes, (h, w))``; boxes float ``[..., 4]`` ``x0, y0, x1, y1``
with exclusive ends, in the input frame's pixels). A resize scales the continuous coordinates
(``x' = x * w / W``: with ``align_corners=False`` pixel edges map to pixel edges); a crop
shifts them and clips them to the crop (a box wholly outside becomes empty, zero width or
height); NaN coordinates stay NaN. :func:`supports_boxes` tells whether a transform can.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "Compose",
    "RandAugment",
    "RandomResizedCrop",
    "ScaleJitterCrop",
    "RandomHorizontalFlip",
    "Resize",
    "CenterCrop",
    "ThreeCrop",
    "supports_boxes",
    "to_model_input",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Generator = torch.Generator | np.random.Generator | None


# -- random draws from the passed generator ---------------------------------------------------

def _rng(gen: Generator) -> torch.Generator | np.random.Generator:
    return np.random.default_rng() if gen is None else gen


def _uniform(gen: torch.Generator | np.random.Generator, lo: float, hi: float) -> float:
    if isinstance(gen, np.random.Generator):
        return float(gen.uniform(lo, hi))
    u = float(torch.rand((), generator=gen, dtype=torch.float64))
    return lo + (hi - lo) * u


def _randint(gen: torch.Generator | np.random.Generator, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` (inclusive); no draw when ``hi <= lo``."""
    if hi <= lo:
        return lo
    if isinstance(gen, np.random.Generator):
        return int(gen.integers(lo, hi + 1))
    return int(torch.randint(lo, hi + 1, (), generator=gen))


# -- layout and checks ------------------------------------------------------------------------

def _size2(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    if isinstance(size, int):
        h = w = size
    else:
        if len(size) != 2:
            raise ValueError(f"{name} must be an int or (height, width), got {size!r}")
        h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return h, w


def _check_clip(clip: torch.Tensor) -> None:
    if not isinstance(clip, torch.Tensor) or clip.dtype != torch.uint8:
        raise TypeError(f"video must be a torch.uint8 tensor [T, H, W, 3], got "
                        f"{type(clip).__name__} {getattr(clip, 'dtype', '')}")
    if clip.dim() != 4 or clip.shape[-1] != 3:
        raise ValueError(f"video must have shape [T, H, W, 3], got {tuple(clip.shape)}")


def _video(clip: torch.Tensor) -> tv_tensors.Video:
    """uint8 ``[T, H, W, 3]`` as a ``tv_tensors.Video`` ``[T, 3, H, W]`` (a view, no copy)."""
    _check_clip(clip)
    return tv_tensors.Video(clip.permute(0, 3, 1, 2))


def _clip(video: torch.Tensor) -> torch.Tensor:
    """``[..., T, 3, H, W]`` (a ``Video`` or a tensor) back to a plain contiguous uint8
    ``[..., T, H, W, 3]``."""
    return video.as_subclass(torch.Tensor).movedim(-3, -1).contiguous()


def _check_boxes(boxes: torch.Tensor) -> torch.Tensor:
    if not isinstance(boxes, torch.Tensor) or not boxes.dtype.is_floating_point:
        raise TypeError(f"boxes must be a floating torch.Tensor [..., 4], got "
                        f"{type(boxes).__name__} {getattr(boxes, 'dtype', '')}")
    if boxes.dim() < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [..., 4] (x0, y0, x1, y1), got "
                         f"{tuple(boxes.shape)}")
    return boxes


def _tv_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> tv_tensors.BoundingBoxes:
    """Float ``[..., 4]`` xyxy boxes of an ``H x W`` frame as ``BoundingBoxes [N, 4]``."""
    return tv_tensors.BoundingBoxes(boxes.reshape(-1, 4), format="XYXY",
                                    canvas_size=(int(size[0]), int(size[1])))


def _crop_boxes(boxes: torch.Tensor, size: tuple[int, int], top: int, left: int, h: int,
                w: int) -> torch.Tensor:
    """Boxes ``[..., 4]`` of an ``H x W`` frame in the pixels of the ``h x w`` crop at
    ``(top, left)``, clipped to it (``F.crop`` on ``BoundingBoxes``)."""
    out = TF.crop(_tv_boxes(boxes, size), top, left, h, w)
    return out.as_subclass(torch.Tensor).reshape(boxes.shape)


# -- transforms -------------------------------------------------------------------------------

class Compose:
    """Apply transforms in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence[Callable[..., torch.Tensor]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, video: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        gen = _rng(generator)  # one generator for all steps, also when none is given
        for t in self.transforms:
            video = t(video, gen)
        return video

    def map_boxes(self, boxes: torch.Tensor, size: tuple[int, int]
                  ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Map float boxes ``[..., 4]`` (xyxy, input pixels of an ``H x W`` frame, ``size =
        (H, W)``) through every transform in order; returns ``(boxes, (h, w))`` (a
        :class:`ThreeCrop` adds a leading dimension of 3). Raises TypeError when a transform
        cannot map boxes (random ones)."""
        for t in self.transforms:
            if not supports_boxes(t):
                raise TypeError(f"{t!r} cannot map boxes (only deterministic transforms can)")
            boxes, size = t.map_boxes(boxes, size)  # type: ignore[attr-defined]
        return boxes, size

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


def supports_boxes(transform: object) -> bool:
    """Whether ``transform`` maps boxes (``map_boxes``): :class:`Resize`, :class:`CenterCrop`,
    :class:`ThreeCrop`, and a :class:`Compose` of only those."""
    if isinstance(transform, Compose):
        return all(supports_boxes(t) for t in transform.transforms)
    return isinstance(transform, (Resize, CenterCrop, ThreeCrop))


class RandomResizedCrop:
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio`` (log-uniform),
    the same box for every frame, and resize it to ``size`` (``F.resized_crop``, bilinear,
    antialiased).

    The box is sampled with torchvision's ``RandomResizedCrop`` algorithm (10 tries, then a
    centre crop with the ratio clamped into range), from the passed generator. Input uint8
    ``[T, H, W, 3]``, output uint8 ``[T, size_h, size_w, 3]``.
    """

    def __init__(self, size: int | Sequence[int], scale: Sequence[float] = (0.25, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3)) -> None:
        self.size = _size2(size)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max <= 1, got {scale!r}")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (min, max) with 0 < min <= max, got {ratio!r}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def get_params(self, height: int, width: int, generator: Generator = None
                   ) -> tuple[int, int, int, int]:
        """A crop box ``(top, left, h, w)`` inside a ``height x width`` frame."""
        gen = _rng(generator)
        area = height * width
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(gen, *self.scale)
            ar = math.exp(_uniform(gen, *log_r))
            w = int(round(math.sqrt(target * ar)))
            h = int(round(math.sqrt(target / ar)))
            if 0 < w <= width and 0 < h <= height:
                top = _randint(gen, 0, height - h)
                left = _randint(gen, 0, width - w)
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, video: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        v = _video(video)
        top, left, h, w = self.get_params(v.shape[-2], v.shape[-1], generator)
        return _clip(TF.resized_crop(v, top, left, h, w, list(self.size),
                                     interpolation=InterpolationMode.BILINEAR, antialias=True))

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class ScaleJitterCrop:
    """Scale jitter: resize the short side to a random length in ``short_side_range``
    (inclusive, as :class:`Resize`), then take a random ``size`` crop (the same for every
    frame).

    Input uint8 ``[T, H, W, 3]``, output uint8 ``[T, size_h, size_w, 3]``."""

    def __init__(self, size: int | Sequence[int], short_side_range: Sequence[int]) -> None:
        self.size = _size2(size)
        lo, hi = int(short_side_range[0]), int(short_side_range[1])
        if not 0 < lo <= hi or lo < max(self.size):
            raise ValueError(f"short_side_range must be (lo, hi) with max(size) <= lo <= hi, "
                             f"got {short_side_range!r} for size {self.size}")
        self.range = (lo, hi)

    def __call__(self, video: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        gen = _rng(generator)
        v = _video(video)
        short = _randint(gen, *self.range)
        v = TF.resize(v, list(Resize(short).output_size(v.shape[-2], v.shape[-1])),
                      interpolation=InterpolationMode.BILINEAR, antialias=True)
        h, w = self.size
        top = _randint(gen, 0, v.shape[-2] - h)
        left = _randint(gen, 0, v.shape[-1] - w)
        return _clip(TF.crop(v, top, left, h, w))

    def __repr__(self) -> str:
        return f"ScaleJitterCrop(size={self.size}, short_side_range={self.range})"


class RandomHorizontalFlip:
    """Mirror every frame left-right with probability ``p`` (one draw per clip, always made).

    Datasets keep it off by default: it swaps direction-sensitive classes ("moving something
    from left to right")."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, video: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        _check_clip(video)
        if _uniform(_rng(generator), 0.0, 1.0) < self.p:
            return _clip(TF.horizontal_flip(_video(video)))
        return video

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandAugment:
    """RandAugment (Cubuk et al., 2020) with torchvision's op space, magnitudes and kernels,
    temporally consistent: each of the ``num_ops`` ops (drawn with replacement from the 14 of
    ``torchvision.transforms.v2.RandAugment``), its magnitude (bin ``magnitude`` of
    ``num_magnitude_bins``) and its random sign are drawn once per clip, from the passed
    generator, and applied to every frame.

    The kernels run on the clip as a batch of frames, so geometry and magnitudes are the same
    on every frame; the data-dependent colour ops (``AutoContrast``, ``Equalize``,
    ``Contrast``) take their statistics per frame, as torchvision's video kernels do.
    ``interpolation`` and ``fill`` are torchvision's (nearest, black) for the geometric ops.

    Input uint8 ``[T, H, W, 3]``, output uint8 ``[T, H, W, 3]``.
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31,
                 interpolation: InterpolationMode = InterpolationMode.NEAREST) -> None:
        if isinstance(num_ops, bool) or not isinstance(num_ops, int) or num_ops < 0:
            raise ValueError(f"num_ops must be an integer >= 0, got {num_ops!r}")
        if isinstance(num_magnitude_bins, bool) or not isinstance(num_magnitude_bins, int) \
                or num_magnitude_bins < 2:
            raise ValueError(f"num_magnitude_bins must be an integer >= 2, got "
                             f"{num_magnitude_bins!r}")
        if isinstance(magnitude, bool) or not isinstance(magnitude, int) \
                or not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"magnitude must be an integer in 0..{num_magnitude_bins - 1}, "
                             f"got {magnitude!r}")
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.num_magnitude_bins = num_magnitude_bins
        # torchvision's transform supplies the op space and applies the ops; it never draws.
        self._tv = v2.RandAugment(num_ops, magnitude, num_magnitude_bins,
                                  interpolation=interpolation)
        self.ops: tuple[str, ...] = tuple(self._tv._AUGMENTATION_SPACE)

    def draw(self, height: int, width: int, generator: Generator = None
             ) -> list[tuple[str, float]]:
        """The ``num_ops`` ``(op name, signed magnitude)`` pairs for an ``height x width``
        clip (torchvision's sampling: op uniform, sign +/- with probability 1/2 for the signed
        ops; unsigned or magnitude-less ops draw no sign)."""
        gen = _rng(generator)
        out = []
        for _ in range(self.num_ops):
            name = self.ops[_randint(gen, 0, len(self.ops) - 1)]
            magnitudes_fn, signed = self._tv._AUGMENTATION_SPACE[name]
            magnitudes = magnitudes_fn(self.num_magnitude_bins, height, width)
            mag = 0.0
            if magnitudes is not None:
                mag = float(magnitudes[self.magnitude])
                if signed and _uniform(gen, 0.0, 1.0) < 0.5:
                    mag = -mag
            out.append((name, mag))
        return out

    def apply(self, video: torch.Tensor, ops: Sequence[tuple[str, float]]) -> torch.Tensor:
        """Apply ``(op name, signed magnitude)`` pairs to a uint8 ``[T, H, W, 3]`` clip."""
        v = _video(video)
        for name, mag in ops:
            v = self._tv._apply_image_or_video_transform(
                v, name, mag, interpolation=self._tv.interpolation, fill=self._tv._fill)
        return _clip(v)

    def __call__(self, video: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        _check_clip(video)
        return self.apply(video, self.draw(video.shape[1], video.shape[2], generator))

    def __repr__(self) -> str:
        return (f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, "
                f"num_magnitude_bins={self.num_magnitude_bins})")


class Resize:
    """Resize so that the short side is ``short_side`` (aspect ratio kept, the long side
    rounded to the nearest integer), bilinear, antialiased.

    Input uint8 ``[T, H, W, 3]``, output uint8 ``[T, h, w, 3]`` with ``min(h, w) =
    short_side``."""

    def __init__(self, short_side: int) -> None:
        if int(short_side) < 1:
            raise ValueError(f"short_side must be a positive integer, got {short_side!r}")
        self.short_side = int(short_side)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(h, w)`` an ``height x width`` frame is resized to."""
        s = self.short_side
        if height <= width:
            return s, max(1, int(round(width * s / height)))
        return max(1, int(round(height * s / width))), s

    def __call__(self, video: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        v = _video(video)
        size = self.output_size(v.shape[-2], v.shape[-1])
        if size == tuple(v.shape[-2:]):
            return video
        return _clip(TF.resize(v, list(size), interpolation=InterpolationMode.BILINEAR,
                               antialias=True))

    def map_boxes(self, boxes: torch.Tensor, size: tuple[int, int]
                  ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Scale float boxes ``[..., 4]`` of an ``H x W`` frame (``size = (H, W)``) as the
        pixels are scaled; returns ``(boxes [..., 4], (h, w))``."""
        _check_boxes(boxes)
        out_size = self.output_size(int(size[0]), int(size[1]))
        out = TF.resize(_tv_boxes(boxes, size), list(out_size))
        return out.as_subclass(torch.Tensor).reshape(boxes.shape), out_size

    def __repr__(self) -> str:
        return f"Resize(short_side={self.short_side})"


def _crop_fits(name: str, video: torch.Tensor, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Check a clip for a fixed-size crop; returns ``(h, w, H, W)`` (crop and frame sides)."""
    _check_clip(video)
    h, w = size
    H, W = video.shape[1], video.shape[2]
    if H < h or W < w:
        raise ValueError(f"{name}{size} needs frames at least that large, got {H}x{W}; "
                         "resize first")
    return h, w, H, W


class CenterCrop:
    """The central ``size`` crop, at ``((H - h) // 2, (W - w) // 2)``. Input uint8
    ``[T, H, W, 3]`` with H, W >= size, output uint8 ``[T, size_h, size_w, 3]``."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _size2(size)

    def __call__(self, video: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        h, w, H, W = _crop_fits("CenterCrop", video, self.size)
        return _clip(TF.crop(_video(video), (H - h) // 2, (W - w) // 2, h, w))

    def map_boxes(self, boxes: torch.Tensor, size: tuple[int, int]
                  ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Float boxes ``[..., 4]`` of an ``H x W`` frame (``size = (H, W)``) in the crop's
        pixels, clipped to it; returns ``(boxes [..., 4], (size_h, size_w))``."""
        _check_boxes(boxes)
        h, w = self.size
        H, W = int(size[0]), int(size[1])
        return _crop_boxes(boxes, (H, W), (H - h) // 2, (W - w) // 2, h, w), (h, w)

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class ThreeCrop:
    """Three ``size`` crops along the long side (left / centre / right for landscape frames,
    top / middle / bottom for portrait), for multi-view testing.

    Input uint8 ``[T, H, W, 3]``; output uint8 ``[3, T, size_h, size_w, 3]``."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _size2(size)

    def offsets(self, height: int, width: int) -> list[tuple[int, int]]:
        """The three crops' ``(top, left)`` in an ``height x width`` frame."""
        h, w = self.size
        H, W = height, width
        if W - w >= H - h:  # landscape (or square): slide along the width
            return [((H - h) // 2, left) for left in (0, (W - w) // 2, W - w)]
        return [(top, (W - w) // 2) for top in (0, (H - h) // 2, H - h)]

    def __call__(self, video: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        h, w, H, W = _crop_fits("ThreeCrop", video, self.size)
        v = _video(video)
        return _clip(torch.stack([TF.crop(v, top, left, h, w).as_subclass(torch.Tensor)
                                  for top, left in self.offsets(H, W)]))

    def map_boxes(self, boxes: torch.Tensor, size: tuple[int, int]
                  ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Float boxes ``[..., 4]`` of an ``H x W`` frame (``size = (H, W)``) in each crop's
        pixels, clipped to it; returns ``(boxes [3, ..., 4], (size_h, size_w))``."""
        _check_boxes(boxes)
        h, w = self.size
        H, W = int(size[0]), int(size[1])
        return torch.stack([_crop_boxes(boxes, (H, W), top, left, h, w)
                            for top, left in self.offsets(H, W)]), (h, w)

    def __repr__(self) -> str:
        return f"ThreeCrop(size={self.size})"


# -- uint8 -> model input ---------------------------------------------------------------------

_NORM_CACHE: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _norm_consts(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    key = (device, dtype)
    if key not in _NORM_CACHE:
        mean = torch.tensor(CLIP_MEAN, dtype=torch.float64)
        std = torch.tensor(CLIP_STD, dtype=torch.float64)
        scale = (1.0 / (255.0 * std)).view(3, 1, 1)
        shift = (-mean / std).view(3, 1, 1)
        _NORM_CACHE[key] = (scale.to(device=device, dtype=dtype),
                            shift.to(device=device, dtype=dtype))
    return _NORM_CACHE[key]


def to_model_input(batch: torch.Tensor, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32, non_blocking: bool = True
                   ) -> torch.Tensor:
    """uint8 clips to normalised float model input on ``device``.

    Moves the uint8 batch to ``device`` first (4x fewer bytes than float32), then converts to
    ``dtype`` and applies the CLIP mean/std (``(x / 255 - mean) / std`` per channel;
    computed in float32 for float16/bfloat16 outputs, then rounded once).

    Args:
        batch: uint8 ``[B, T, H, W, 3]`` or, with a view dimension, ``[B, V, T, H, W, 3]``.
        device: target device (None: where ``batch`` is).
        dtype: floating output dtype.

    Returns:
        ``dtype`` ``[B, T, 3, H, W]`` or ``[B, V, T, 3, H, W]``, contiguous.
    """
    if not isinstance(batch, torch.Tensor) or batch.dtype != torch.uint8:
        raise TypeError(f"batch must be a torch.uint8 tensor, got {type(batch).__name__} "
                        f"{getattr(batch, 'dtype', '')}")
    if batch.dim() not in (5, 6) or batch.shape[-1] != 3:
        raise ValueError(f"batch must be [B, T, H, W, 3] or [B, V, T, H, W, 3], got "
                         f"{tuple(batch.shape)}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    dev = torch.device(device) if device is not None else batch.device
    x = batch.to(dev, non_blocking=non_blocking)
    x = x.movedim(-1, -3)  # [..., T, 3, H, W] (a view)
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    scale, shift = _norm_consts(dev, work)
    return (x.to(work) * scale + shift).to(dtype).contiguous()
