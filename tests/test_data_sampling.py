"""Frame samplers: TSN segments, dense clips, multi-view."""

from __future__ import annotations

import numpy as np
import pytest

from art_fast.data import (
    dense_indices,
    dense_multiview_indices,
    multiview_indices,
    segment_indices,
)


def _segment_bounds(n: int, s: int) -> list[tuple[int, int]]:
    """Hand-written oracle: segment i covers [floor(i n / s), floor((i+1) n / s)), at least
    one frame."""
    out = []
    for i in range(s):
        lo = (i * n) // s
        hi = max(((i + 1) * n) // s, lo + 1)
        out.append((lo, hi))
    return out


def test_segment_eval_centres_by_hand():
    assert segment_indices(16, 8, train=False).tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    # n=10, 4 segments of 2.5 frames: centres 1.25, 3.75, 6.25, 8.75
    assert segment_indices(10, 4, train=False).tolist() == [1, 3, 6, 8]
    assert segment_indices(1, 3, train=False).tolist() == [0, 0, 0]


@pytest.mark.parametrize("n,s", [(100, 8), (17, 8), (8, 8), (5, 8), (1, 4), (300, 16)])
def test_segment_train_within_segments_and_reproducible(n, s):
    rng = np.random.default_rng(123)
    draws = np.stack([segment_indices(n, s, train=True, rng=rng) for _ in range(400)])
    assert draws.dtype == np.int64 and draws.shape == (400, s)
    for i, (lo, hi) in enumerate(_segment_bounds(n, s)):
        col = draws[:, i]
        assert col.min() >= lo and col.max() < hi, (i, lo, hi)
        # Uniform over the segment: every frame of a short segment shows up.
        if hi - lo <= 20:
            assert set(col.tolist()) == set(range(lo, hi))
    assert np.all(np.diff(draws, axis=1) >= 0)
    a = segment_indices(n, s, train=True, rng=np.random.default_rng(7))
    b = segment_indices(n, s, train=True, rng=np.random.default_rng(7))
    assert np.array_equal(a, b)


def test_segment_train_depends_on_rng():
    outs = {tuple(segment_indices(200, 8, train=True, rng=np.random.default_rng(k)))
            for k in range(5)}
    assert len(outs) == 5


def test_short_video_repeats_frames():
    idx = segment_indices(3, 8, train=False)
    assert len(idx) == 8 and set(idx.tolist()) == {0, 1, 2}
    idx = segment_indices(3, 8, train=True, rng=np.random.default_rng(0))
    assert len(idx) == 8 and idx.min() >= 0 and idx.max() <= 2


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_segment_errors_name_the_argument(bad):
    with pytest.raises(ValueError, match="num_frames_in_video"):
        segment_indices(bad, 4, train=False)
    with pytest.raises(ValueError, match="num_segments"):
        segment_indices(10, bad, train=False)


def test_rng_type_checked():
    with pytest.raises(TypeError, match="rng"):
        segment_indices(10, 4, train=True, rng=np.random.RandomState(0))


def test_dense_eval_centred_and_train_range():
    # span = 7 * 4 + 1 = 29; room = 71; centred start 35
    assert dense_indices(100, 8, 4, train=False).tolist() == list(range(35, 64, 4))
    rng = np.random.default_rng(0)
    starts = [int(dense_indices(100, 8, 4, train=True, rng=rng)[0]) for _ in range(2000)]
    assert min(starts) == 0 and max(starts) == 71
    clip = dense_indices(100, 8, 4, train=True, rng=np.random.default_rng(5))
    assert np.all(np.diff(clip) == 4)


def test_dense_short_video_repeats_last_frame():
    assert dense_indices(10, 8, 2, train=False).tolist() == [0, 2, 4, 6, 8, 9, 9, 9]
    assert dense_indices(10, 8, 2, train=True, rng=np.random.default_rng(0)).max() == 9
    with pytest.raises(ValueError, match="stride"):
        dense_indices(10, 8, 0, train=False)


def test_multiview_one_clip_is_centre_sampling():
    for n, s in [(16, 8), (10, 4), (3, 8), (301, 16)]:
        (v,) = multiview_indices(n, s, 1)
        assert np.array_equal(v, segment_indices(n, s, train=False))


def test_multiview_views_evenly_offset_inside_segments():
    n, s, c = 240, 8, 3  # 30 frames per segment: offsets 5, 15, 25
    views = multiview_indices(n, s, c)
    assert len(views) == c
    for k, v in enumerate(views):
        assert v.tolist() == [30 * i + 5 + 10 * k for i in range(s)]
    # Short video: still in range, right length.
    for v in multiview_indices(5, 8, 4):
        assert len(v) == 8 and v.min() >= 0 and v.max() <= 4


def test_dense_multiview():
    views = dense_multiview_indices(100, 8, 4, 3)  # room 71: starts 0, 35, 71
    assert [int(v[0]) for v in views] == [0, 35, 71]
    assert all(np.all(np.diff(v) == 4) for v in views)
    (v,) = dense_multiview_indices(100, 8, 4, 1)
    assert np.array_equal(v, dense_indices(100, 8, 4, train=False))
    for v in dense_multiview_indices(10, 8, 4, 2):
        assert v.max() == 9 and v.min() == 0
