"""Helpers shared by the data tests (this module holds no tests): tiny video writers.

Frame ``k`` of a written video is a flat grey level ``level(k)`` with a small random-noise
corner, so tests can tell which frame was decoded (an oracle independent of the decoders).
Frame widths avoid 16/24/32/48/96/144 px, where decord2 3.4.0 raises (the PyAV fallback
covers those; a dedicated test uses one).
"""

from __future__ import annotations

import os

import av
import numpy as np

H, W = 40, 64  # frame size of the fixture videos

CODECS = {  # extension -> (codec, container format)
    "mp4": ("libx264", "mp4"),
    "webm": ("libvpx", "webm"),
    "avi": ("mpeg4", "avi"),
}


def level(k: int) -> int:
    """Grey level of frame ``k`` (distinct for k < 12, far apart for a lossy codec)."""
    return 15 + 20 * (k % 12)


def make_frames(n: int, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """uint8 [n, h, w, 3]: frame k flat at level(k), a noisy 8x8 corner."""
    rng = np.random.default_rng(seed)
    frames = np.empty((n, h, w, 3), np.uint8)
    for k in range(n):
        frames[k] = level(k)
        frames[k, :8, :8] = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return frames


def write_video(path: str | os.PathLike, frames: np.ndarray, ext: str | None = None,
                colorspace: int | None = None, full_range: bool = False) -> str:
    """Write RGB uint8 frames [n, h, w, 3] with PyAV (codec chosen by the extension)."""
    path = os.fspath(path)
    ext = ext or path.rsplit(".", 1)[-1]
    codec, fmt = CODECS[ext]
    opts = {"threads": "1"}
    if codec == "libx264":
        opts["crf"] = "10"
        if colorspace == 1:
            opts["colormatrix"] = "bt709"
        if full_range:
            opts["fullrange"] = "on"
    with av.open(path, mode="w", format=fmt) as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "yuvj420p" if full_range else "yuv420p"
        s.codec_context.thread_count = 1
        if codec == "mpeg4" or codec == "libvpx":
            s.bit_rate = 4_000_000
        if colorspace is not None:
            s.codec_context.colorspace = colorspace
        if full_range:
            s.codec_context.color_range = 2
        s.options = opts
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_corrupt(path: str | os.PathLike, nbytes: int = 4096, seed: int = 1) -> str:
    """Random bytes under a video file name."""
    path = os.fspath(path)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    return path
