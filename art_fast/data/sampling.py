"""Frame-index samplers: TSN segments, dense clips, multi-view (temporal) testing.

Pure functions of their arguments: all randomness comes from the ``rng`` passed in
(``numpy.random.Generator``), so a sample is reproducible from (seed, epoch, index). Every
function returns ``np.ndarray`` int64 frame numbers in ``0 .. n - 1`` (``n`` = frames of the
video, or of the annotated segment), of the requested length, sorted ascending.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "segment_indices",
    "dense_indices",
    "multiview_indices",
    "dense_multiview_indices",
]


def _check_pos(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    return rng


def segment_indices(num_frames_in_video: int, num_segments: int, *, train: bool,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """TSN sampling: split the video into ``num_segments`` equal segments, one frame each.

    Segment ``i`` covers frames ``[floor(i n / S), floor((i + 1) n / S))``. Training draws a
    uniformly random frame of each segment (from ``rng``; a fresh unseeded generator when
    ``rng`` is None); evaluation takes each segment's centre, ``floor((i + 0.5) n / S)``.
    A video shorter than ``num_segments`` repeats frames (segments then hold a single frame).

    Returns:
        int64 ``[num_segments]``, non-decreasing, in ``0 .. n - 1``.
    """
    n = _check_pos("num_frames_in_video", num_frames_in_video)
    s = _check_pos("num_segments", num_segments)
    i = np.arange(s, dtype=np.int64)
    if not train:
        return np.minimum(((2 * i + 1) * n) // (2 * s), n - 1)
    lo = (i * n) // s
    hi = np.maximum(((i + 1) * n) // s, lo + 1)
    return _rng(rng).integers(lo, hi).astype(np.int64)


def dense_indices(n: int, clip_len: int, stride: int, *, train: bool,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """A dense clip: ``clip_len`` frames ``stride`` apart, starting at a random position
    (training) or centred in the video (evaluation).

    The clip spans ``(clip_len - 1) * stride + 1`` frames. When the video is shorter, the clip
    starts at frame 0 and positions past the end repeat the last frame.

    Returns:
        int64 ``[clip_len]``, non-decreasing, in ``0 .. n - 1``.
    """
    n = _check_pos("n", n)
    clip_len = _check_pos("clip_len", clip_len)
    stride = _check_pos("stride", stride)
    span = (clip_len - 1) * stride + 1
    room = n - span
    if room <= 0:
        start = 0
    elif train:
        start = int(_rng(rng).integers(0, room + 1))
    else:
        start = room // 2
    return np.minimum(start + stride * np.arange(clip_len, dtype=np.int64), n - 1)


def multiview_indices(n: int, num_segments: int, num_clips: int) -> list[np.ndarray]:
    """Temporal views for multi-view testing with segment sampling.

    View ``c`` of ``num_clips`` takes, in each of the ``num_segments`` segments, the frame at
    fraction ``(c + 0.5) / num_clips`` of the segment: the views are evenly offset inside the
    segments, and ``num_clips = 1`` is the centre sampling of ``segment_indices(train=False)``.

    Returns:
        ``num_clips`` int64 arrays ``[num_segments]``.
    """
    n = _check_pos("n", n)
    s = _check_pos("num_segments", num_segments)
    c = _check_pos("num_clips", num_clips)
    i = np.arange(s, dtype=np.int64)
    # frame = floor((i + (k + 0.5) / c) * n / s) = floor(((2 i c + 2 k + 1) n) / (2 s c))
    return [np.minimum(((2 * i * c + 2 * k + 1) * n) // (2 * s * c), n - 1) for k in range(c)]


def dense_multiview_indices(n: int, clip_len: int, stride: int, num_clips: int
                            ) -> list[np.ndarray]:
    """Temporal views for multi-view testing with dense clips: ``num_clips`` clips whose
    starts are evenly spread over the video (``num_clips = 1``: the centred clip of
    ``dense_indices(train=False)``).

    Returns:
        ``num_clips`` int64 arrays ``[clip_len]``.
    """
    n = _check_pos("n", n)
    clip_len = _check_pos("clip_len", clip_len)
    stride = _check_pos("stride", stride)
    c = _check_pos("num_clips", num_clips)
    span = (clip_len - 1) * stride + 1
    room = max(n - span, 0)
    if c == 1:
        starts = [room // 2]
    else:
        starts = [(k * room) // (c - 1) for k in range(c)]
    steps = stride * np.arange(clip_len, dtype=np.int64)
    return [np.minimum(s + steps, n - 1) for s in starts]
