"""Decoding: decord vs PyAV (identical frames), the fallback, errors, frame identity."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from art_fast.data import VideoDecodeError, VideoReader, num_frames, read_frames
from art_fast.data import video as video_mod
from tests._util import level, make_frames, write_corrupt, write_video

N = 11  # frames per fixture video

needs_decord = pytest.mark.skipif(not video_mod.decord_available(),
                                  reason="decord is not importable")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("videos")
    frames = make_frames(N)
    out = {ext: write_video(d / f"clip.{ext}", frames) for ext in ("mp4", "webm", "avi")}
    # Colour-tagged files: BT.709 limited range and BT.709 full range (yuvj420p).
    out["bt709"] = write_video(d / "bt709.mp4", frames, colorspace=1)
    out["bt709full"] = write_video(d / "bt709full.mp4", frames, colorspace=1, full_range=True)
    out["dash"] = write_video(d / "-starts-with-dash.mp4", frames[:5])
    out["under"] = write_video(d / "_starts_with_underscore.mp4", frames[:5])
    return out


@needs_decord
@pytest.mark.parametrize("kind", ["mp4", "webm", "avi", "bt709", "bt709full"])
def test_decord_and_pyav_identical(videos, kind):
    path = videos[kind]
    assert num_frames(path, backend="decord") == N
    assert num_frames(path, backend="pyav") == N
    idx = list(range(N))
    a = read_frames(path, idx, backend="decord")
    b = read_frames(path, idx, backend="pyav")
    assert a.dtype == np.uint8 and a.shape == (N, 40, 64, 3)
    assert b.shape == a.shape
    diff = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
    assert diff == 0, f"{kind}: decord and PyAV differ by up to {diff}"


def test_pyav_colour_tags_matter(videos):
    """The BT.709 file really exercises the colour-matrix path: converting it with the default
    (BT.601) matrix gives visibly different pixels than the tag-aware conversion."""
    import av

    with av.open(videos["bt709"]) as c:
        frame = next(c.decode(video=0))
        assert int(frame.colorspace) == 1
        plain = frame.to_ndarray(format="rgb24")
    tagged = read_frames(videos["bt709"], [0], backend="pyav")[0]
    assert np.abs(plain.astype(int) - tagged.astype(int)).max() > 2


@pytest.mark.parametrize("backend", ["auto", "pyav", pytest.param("decord", marks=needs_decord)])
@pytest.mark.parametrize("ext", ["mp4", "webm", "avi"])
def test_frames_are_the_requested_ones(videos, backend, ext):
    idx = [7, 2, 2, 10, 0]
    got = read_frames(videos[ext], idx, backend=backend)
    assert got.shape == (5, 40, 64, 3) and got.dtype == np.uint8
    for k, frame in zip(idx, got):
        flat = frame[10:, 10:].astype(np.float64)  # away from the noisy corner
        assert abs(flat.mean() - level(k)) < 4, (ext, k, flat.mean(), level(k))
    assert np.array_equal(got[1], got[2])


def test_reader_count_and_get(videos):
    with VideoReader(videos["mp4"]) as r:
        assert len(r) == N
        assert r.backend in ("decord", "pyav")
        assert r.get(np.array([3])).shape == (1, 40, 64, 3)


@pytest.mark.parametrize("backend", ["auto", "pyav", pytest.param("decord", marks=needs_decord)])
@pytest.mark.parametrize("bad", [N, 100, -1])
def test_out_of_range_names_index_file_and_count(videos, backend, bad):
    with pytest.raises(IndexError) as info:
        read_frames(videos["mp4"], [0, bad], backend=backend)
    msg = str(info.value)
    assert str(bad) in msg and "clip.mp4" in msg and f"{N} frames" in msg


def test_non_integer_and_empty_indices(videos):
    with pytest.raises(ValueError, match="integers"):
        read_frames(videos["mp4"], [0.5])
    with pytest.raises(ValueError, match="empty"):
        read_frames(videos["mp4"], [])
    with pytest.raises(ValueError, match="1-D"):
        read_frames(videos["mp4"], [[0, 1]])


@pytest.mark.parametrize("backend", ["auto", "pyav", "decord"])
def test_missing_file(tmp_path, backend):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_frames(tmp_path / "nope.mp4", [0], backend=backend)
    with pytest.raises(FileNotFoundError):
        num_frames(tmp_path / "nope.mp4", backend=backend)


@pytest.mark.parametrize("backend", ["auto", "pyav", pytest.param("decord", marks=needs_decord)])
def test_corrupt_file_raises_video_decode_error(tmp_path, backend):
    path = write_corrupt(tmp_path / "-corrupt.mp4")
    with pytest.raises(VideoDecodeError, match="-corrupt.mp4"):
        read_frames(path, [0], backend=backend)
    assert issubclass(VideoDecodeError, RuntimeError)


def test_truncated_file(tmp_path, videos):
    data = open(videos["mp4"], "rb").read()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match="truncated.mp4"):
        read_frames(path, list(range(N)))


@pytest.mark.parametrize("name", ["dash", "under"])
def test_names_starting_with_dash_or_underscore(videos, name):
    assert os.path.basename(videos[name])[0] in "-_"
    got = read_frames(videos[name], [0, 4])
    assert abs(got[1, 10:, 10:].mean() - level(4)) < 4


def test_fallback_when_decord_is_not_importable(videos, monkeypatch):
    monkeypatch.setattr(video_mod, "_decord", lambda: None)
    with VideoReader(videos["webm"]) as r:
        assert r.backend == "pyav"
        got = r.get([1, 5])
    ref = read_frames(videos["webm"], [1, 5], backend="pyav")
    assert np.array_equal(got, ref)
    with pytest.raises(RuntimeError, match="decord"):
        VideoReader(videos["webm"], backend="decord")


class _FailingDecord:
    """A decord stand-in whose reader raises when opened, or on get_batch."""

    def __init__(self, fail_on_open: bool) -> None:
        self.fail_on_open = fail_on_open
        self.opened = 0

    def VideoReader(self, path, num_threads=1):  # noqa: N802 - mimics decord's API
        self.opened += 1
        if self.fail_on_open:
            raise RuntimeError("simulated decord open failure")
        outer = self

        class _R:
            def __len__(self):
                return N

            def get_batch(self, idx):
                outer.batch_calls = getattr(outer, "batch_calls", 0) + 1
                raise RuntimeError("simulated decord decode failure")

        return _R()


@pytest.mark.parametrize("fail_on_open", [True, False])
def test_fallback_when_decord_raises(videos, monkeypatch, caplog, fail_on_open):
    fake = _FailingDecord(fail_on_open)
    monkeypatch.setattr(video_mod, "_decord", lambda: fake)
    monkeypatch.setattr(video_mod, "_fallback_warned", False)
    with caplog.at_level(logging.DEBUG, logger="art_fast.data.video"):
        got = read_frames(videos["avi"], [0, 3, 10])
    assert fake.opened == 1
    ref = read_frames(videos["avi"], [0, 3, 10], backend="pyav")
    assert np.array_equal(got, ref)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "clip.avi" in warnings[0].getMessage()
    # Later fallbacks are logged at DEBUG only.
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="art_fast.data.video"):
        read_frames(videos["avi"], [1])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r for r in caplog.records if r.levelno == logging.DEBUG]
    # An explicit decord backend does not fall back.
    with pytest.raises(VideoDecodeError, match="decord"):
        read_frames(videos["avi"], [0], backend="decord")


def test_width_decord2_rejects_still_decodes(tmp_path):
    """decord2 3.4.0 raises on 32-px-wide frames; 'auto' must still return the frames."""
    frames = make_frames(6, h=32, w=32)
    path = write_video(tmp_path / "w32.mp4", frames)
    got = read_frames(path, [0, 5])
    ref = read_frames(path, [0, 5], backend="pyav")
    assert np.array_equal(got, ref)
    assert abs(got[1, 10:, 10:].mean() - level(5)) < 4


def test_bad_backend_name(videos):
    with pytest.raises(ValueError, match="backend"):
        read_frames(videos["mp4"], [0], backend="opencv")
