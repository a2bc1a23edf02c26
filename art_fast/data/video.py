"""Video decoding behind one small interface: decord first, PyAV as the automatic fallback.

``read_frames(path, indices)`` returns RGB uint8 frames ``[len(indices), H, W, 3]``;
``num_frames(path)`` the number of frames; :class:`VideoReader` keeps one file open for both
(what a dataset's ``__getitem__`` uses: open, count, sample, read, close).

Backends
--------
* ``"decord"``: ``decord.VideoReader(path, num_threads=1)`` and ``get_batch`` (one decode
  thread: parallelism comes from DataLoader workers).
* ``"pyav"``: a sequential single-threaded decode from the start of the file up to the largest
  requested index; only the requested frames are converted to RGB. The frame count is the
  container's (``stream.frames``) or, when the container has none (WebM), the number of video
  packets.
* ``"auto"`` (default): decord when it imports and opens/decodes the file, otherwise PyAV. The
  first fallback of a process is logged at WARNING, later ones at DEBUG. decord2 3.4.0 raises on
  some small frame widths (16, 24, 32, 48, 96, 144 px: "DECORDArrayCopyFromTo: The size must
  exactly match"); such files decode through PyAV transparently.

Both backends give identical frames: decord converts YUV to RGB with the colour matrix and
range the stream is tagged with (BT.601 when untagged); PyAV's ``to_ndarray(format="rgb24")``
ignores the tags, so the PyAV path passes the frame's colour space and range to
``VideoFrame.reformat`` explicitly (see :func:`_to_rgb`). Tests compare the two on h264/mp4,
vp8/webm, mpeg4/avi and BT.709 / full-range files.

Paths are made absolute before they reach FFmpeg, so a file name starting with '-' or '_' (or
containing ':') is never read as an option or a protocol.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

__all__ = [
    "VideoDecodeError",
    "VideoReader",
    "read_frames",
    "num_frames",
    "decord_available",
]

logger = logging.getLogger(__name__)

Backend = Literal["auto", "decord", "pyav"]
_BACKENDS = ("auto", "decord", "pyav")

_decord_module: Any = None
_decord_checked = False
_fallback_warned = False

# swscale colour-matrix ids (SWS_CS_*) that coincide with the AVColorSpace tag values.
_SWS_COLORSPACES = {1, 4, 5, 6, 7, 9}
_SWS_CS_DEFAULT = 5  # BT.601, what FFmpeg uses for untagged streams
_RANGE_MPEG, _RANGE_JPEG = 1, 2


class VideoDecodeError(RuntimeError):
    """A video file exists but cannot be decoded (corrupt, truncated, unsupported codec)."""


def _decord() -> Any:
    """The decord module, or None when it cannot be imported (checked once per process)."""
    global _decord_module, _decord_checked
    if not _decord_checked:
        _decord_checked = True
        try:
            import decord

            _decord_module = decord
        except Exception as exc:  # ImportError, or a broken shared library
            logger.warning("decord is not importable (%s); decoding with PyAV", exc)
            _decord_module = None
    return _decord_module


def decord_available() -> bool:
    """True when ``import decord`` works in this process."""
    return _decord() is not None


def _note_fallback(path: str, exc: BaseException) -> None:
    global _fallback_warned
    msg = "decord failed on %s (%s: %s); decoding it with PyAV"
    first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    if not _fallback_warned:
        _fallback_warned = True
        logger.warning(msg + " (further fallbacks are logged at DEBUG)", path,
                       type(exc).__name__, first_line)
    else:
        logger.debug(msg, path, type(exc).__name__, first_line)


def _check_path(path: str | os.PathLike[str]) -> str:
    p = os.path.abspath(os.fspath(path))
    if not os.path.isfile(p):
        if os.path.exists(p):
            raise FileNotFoundError(f"video path is not a regular file: {p}")
        raise FileNotFoundError(f"video file not found: {p}")
    return p


def _check_indices(indices: Sequence[int] | np.ndarray, n: int, path: str) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"indices must be a 1-D sequence of frame numbers, got shape "
                         f"{idx.shape} for {path}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        if not np.all(np.equal(np.mod(idx, 1), 0)):
            raise ValueError(f"indices must be integers, got {idx.dtype} values for {path}")
    idx = idx.astype(np.int64)
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise IndexError(f"frame index {int(bad[0])} out of range for {path}, which has {n} "
                         f"frames (valid: 0..{n - 1})")
    return idx


def _to_rgb(frame: Any) -> np.ndarray:
    """One PyAV frame as RGB uint8 ``[H, W, 3]``, converted like decord (FFmpeg's scale filter):
    the matrix of the frame's colour-space tag (BT.601 when untagged) and its range (full range
    for ``yuvj*`` formats).

    PyAV only applies colour-space details when the source and destination ranges differ, so
    the destination range is set to the other value: swscale ignores the destination range of
    an RGB output, it only serves as that switch."""
    cs = int(frame.colorspace)
    cs = cs if cs in _SWS_COLORSPACES else _SWS_CS_DEFAULT
    full = int(frame.color_range) == _RANGE_JPEG or frame.format.name.startswith("yuvj")
    src_range = _RANGE_JPEG if full else _RANGE_MPEG
    dst_range = _RANGE_MPEG if full else _RANGE_JPEG
    out = frame.reformat(format="rgb24", src_colorspace=cs, src_color_range=src_range,
                         dst_color_range=dst_range)
    return out.to_ndarray()


class _PyAVFile:
    """A file opened with PyAV; single-threaded sequential decoding."""

    def __init__(self, path: str) -> None:
        import av

        self.path = path
        self._av = av
        try:
            self.container = av.open(path, mode="r")
        except av.error.FileNotFoundError as exc:  # raced with a deletion
            raise FileNotFoundError(f"video file not found: {path}") from exc
        except Exception as exc:
            raise VideoDecodeError(f"cannot open video {path}: {exc}") from exc
        try:
            if not self.container.streams.video:
                raise VideoDecodeError(f"no video stream in {path}")
            self.stream = self.container.streams.video[0]
            self.stream.thread_type = "SLICE"
            self.stream.codec_context.thread_count = 1
            self.length = self._count()
        except VideoDecodeError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise VideoDecodeError(f"cannot read video {path}: {exc}") from exc
        if self.length <= 0:
            self.close()
            raise VideoDecodeError(f"video {path} has no frames")

    def _count(self) -> int:
        n = int(self.stream.frames or 0)
        if n > 0:
            return n
        # No frame count in the container (WebM/Matroska): count the video packets.
        n = sum(1 for pkt in self.container.demux(self.stream) if pkt.size)
        self._reopen()
        return n

    def _reopen(self) -> None:
        # A fresh demuxer/decoder after counting, so decoding starts at frame 0 exactly.
        self.container.close()
        self.container = self._av.open(self.path, mode="r")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "SLICE"
        self.stream.codec_context.thread_count = 1

    def get(self, idx: np.ndarray) -> np.ndarray:
        if idx.size == 0:
            raise ValueError(f"indices is empty for {self.path}: expected at least one frame")
        wanted = set(int(i) for i in idx)
        last = int(idx.max())
        frames: dict[int, np.ndarray] = {}
        i = -1
        try:
            for i, frame in enumerate(self.container.decode(self.stream)):
                if i in wanted:
                    frames[i] = _to_rgb(frame)
                if i >= last:
                    break
        except Exception as exc:
            raise VideoDecodeError(f"decoding {self.path} failed at frame {i + 1}: {exc}") from exc
        if last not in frames:
            raise VideoDecodeError(
                f"{self.path} ended after {i + 1} decodable frames, but frame {last} was "
                f"requested (the container reports {self.length} frames)")
        return np.stack([frames[int(j)] for j in idx])

    def close(self) -> None:
        try:
            self.container.close()
        except Exception:
            pass


class VideoReader:
    """One open video file: ``len(reader)`` frames, ``reader.get(indices)`` RGB frames.

    Args:
        path: the video file (mp4, webm, avi, anything FFmpeg reads).
        backend: ``"auto"`` (decord, PyAV when decord is missing or fails on the file),
            ``"decord"`` or ``"pyav"`` (no fallback).

    Raises:
        FileNotFoundError: the file does not exist.
        VideoDecodeError: the file cannot be opened or decoded by any allowed backend.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], backend: Backend = "auto") -> None:
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self.path = _check_path(path)
        self.requested_backend = backend
        self._dec: Any = None
        self._av: _PyAVFile | None = None
        if backend in ("auto", "decord"):
            decord = _decord()
            if decord is None:
                if backend == "decord":
                    raise RuntimeError("backend='decord' was requested but decord is not "
                                       "importable (pip install decord2)")
            else:
                try:
                    self._dec = decord.VideoReader(self.path, num_threads=1)
                    self._len = len(self._dec)
                    if self._len <= 0:
                        raise VideoDecodeError(f"video {self.path} has no frames")
                except Exception as exc:
                    self._dec = None
                    if backend == "decord":
                        raise VideoDecodeError(f"decord cannot open {self.path}: {exc}") from exc
                    _note_fallback(self.path, exc)
        if self._dec is None:
            self._open_pyav()

    def _open_pyav(self) -> None:
        self._av = _PyAVFile(self.path)
        self._len = self._av.length

    @property
    def backend(self) -> str:
        """The backend in use now: ``"decord"`` or ``"pyav"``."""
        return "decord" if self._dec is not None else "pyav"

    def __len__(self) -> int:
        return self._len

    def get(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """RGB frames ``uint8 [len(indices), H, W, 3]`` at ``indices`` (any order, repeats
        allowed, each in ``0 .. len(self) - 1``; negative indices are out of range).

        Raises:
            IndexError: an index is out of range (the message names it, the file and the
                frame count).
            VideoDecodeError: the frames cannot be decoded.
        """
        idx = _check_indices(indices, self._len, self.path)
        if idx.size == 0:
            raise ValueError(f"indices is empty for {self.path}: expected at least one frame")
        # Decode each distinct frame once, in file order (decord seeks back for every index
        # that goes backwards), then put the frames in the requested order.
        uniq, inverse = np.unique(idx, return_inverse=True)
        frames = self._get_sorted(uniq)
        return frames if uniq.size == idx.size and np.array_equal(uniq, idx) else frames[inverse]

    def _get_sorted(self, idx: np.ndarray) -> np.ndarray:
        if self._dec is not None:
            try:
                out = self._dec.get_batch(idx.tolist()).asnumpy()
                if out.dtype != np.uint8 or out.ndim != 4 or out.shape[0] != idx.size:
                    raise VideoDecodeError(f"decord returned {out.dtype} {out.shape} for "
                                           f"{idx.size} frames of {self.path}")
                return out
            except Exception as exc:
                if self.requested_backend == "decord":
                    raise VideoDecodeError(f"decord cannot decode {self.path}: {exc}") from exc
                _note_fallback(self.path, exc)
                self._dec = None
                n_decord = self._len
                self._open_pyav()
                if int(idx.max()) >= self._len:
                    raise VideoDecodeError(
                        f"{self.path}: decord reported {n_decord} frames but failed ({exc}); "
                        f"PyAV finds only {self._len}, fewer than frame {int(idx.max())} needs"
                    ) from exc
        assert self._av is not None
        return self._av.get(idx)

    def close(self) -> None:
        """Release the file (decord's reader or PyAV's container)."""
        self._dec = None
        if self._av is not None:
            self._av.close()
            self._av = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def read_frames(path: str | os.PathLike[str], indices: Sequence[int] | np.ndarray, *,
                backend: Backend = "auto") -> np.ndarray:
    """Decode the frames at ``indices`` of the video at ``path``.

    Args:
        path: video file.
        indices: frame numbers, 1-D, each in ``0 .. num_frames(path) - 1``; any order, repeats
            allowed.
        backend: ``"auto"`` | ``"decord"`` | ``"pyav"`` (see the module docstring).

    Returns:
        ``np.ndarray`` uint8 ``[len(indices), H, W, 3]``, RGB.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IndexError: an index is out of range (the message names it, the file, the frame count).
        VideoDecodeError: the file cannot be decoded.
    """
    with VideoReader(path, backend=backend) as reader:
        return reader.get(indices)


def num_frames(path: str | os.PathLike[str], *, backend: Backend = "auto") -> int:
    """Number of frames of the video at ``path`` (what ``read_frames`` accepts as indices).

    Raises FileNotFoundError / VideoDecodeError like :func:`read_frames`."""
    with VideoReader(path, backend=backend) as reader:
        return len(reader)
