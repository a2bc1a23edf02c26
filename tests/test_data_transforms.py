"""Clip transforms (the same geometry on every frame) and the uint8 -> float model input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from art_fast import data
from art_fast.data import transforms as T


def _clip(t=4, h=30, w=50, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=g)


def _resize_oracle(frame: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One frame [h, w, 3] resized in float64 (antialiased bilinear), rounded."""
    x = frame.permute(2, 0, 1)[None].double()
    y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255)


@pytest.mark.parametrize("gen_kind", ["torch", "numpy"])
def test_random_resized_crop_same_box_every_frame(gen_kind):
    video = _clip()
    t = T.RandomResizedCrop(16, scale=(0.25, 1.0))

    def gen():
        return (torch.Generator().manual_seed(3) if gen_kind == "torch"
                else np.random.default_rng(3))

    top, left, h, w = t.get_params(30, 50, gen())
    out = t(video, gen())
    assert out.shape == (4, 16, 16, 3) and out.dtype == torch.uint8
    for f in range(4):  # each frame = that frame cropped at the one box, resized
        ref = _resize_oracle(video[f, top:top + h, left:left + w], (16, 16))
        assert (out[f].double() - ref).abs().max() <= 1
    assert torch.equal(out, t(video, gen()))  # reproducible from the generator


def test_random_resized_crop_parameter_ranges():
    t = T.RandomResizedCrop(8, scale=(0.25, 0.5), ratio=(0.5, 2.0))
    rng = np.random.default_rng(0)
    areas, boxes = [], set()
    for _ in range(300):
        top, left, h, w = t.get_params(100, 120, rng)
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 120
        areas.append(h * w / (100 * 120))
        assert 0.5 * 0.9 <= w / h <= 2.0 * 1.1
        boxes.add((top, left, h, w))
    assert 0.24 <= min(areas) and max(areas) <= 0.52
    assert len(boxes) > 250  # random


def test_random_resized_crop_fallback_is_centre_crop():
    t = T.RandomResizedCrop(8, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    # A 10x40 frame cannot hold a full-area square: falls back to the centred 10x10 box.
    assert t.get_params(10, 40, np.random.default_rng(0)) == (0, 15, 10, 10)


def test_flip():
    video = _clip()
    assert torch.equal(T.RandomHorizontalFlip(1.0)(video), video.flip(2))
    assert torch.equal(T.RandomHorizontalFlip(0.0)(video), video)
    rng = np.random.default_rng(0)
    flips = {torch.equal(T.RandomHorizontalFlip(0.5)(video, rng), video) for _ in range(30)}
    assert flips == {True, False}
    with pytest.raises(ValueError, match="p must be"):
        T.RandomHorizontalFlip(1.5)


def test_resize_short_side_and_centre_crop():
    video = _clip(h=30, w=50)
    out = T.Resize(12)(video)
    assert out.shape == (4, 12, 20, 3) and out.dtype == torch.uint8
    ref = _resize_oracle(video[2], (12, 20))
    assert (out[2].double() - ref).abs().max() <= 1
    tall = T.Resize(12)(_clip(h=50, w=30))
    assert tall.shape == (4, 20, 12, 3)
    crop = T.CenterCrop(10)(out)
    assert torch.equal(crop, out[:, 1:11, 5:15])
    with pytest.raises(ValueError, match="resize first"):
        T.CenterCrop(40)(video)


def test_three_crop_along_long_side():
    wide = _clip(h=10, w=30)
    out = T.ThreeCrop(10)(wide)
    assert out.shape == (3, 4, 10, 10, 3)
    for k, left in enumerate((0, 10, 20)):
        assert torch.equal(out[k], wide[:, :, left:left + 10])
    tall = _clip(h=31, w=10)
    out = T.ThreeCrop(10)(tall)
    for k, top in enumerate((0, 10, 21)):
        assert torch.equal(out[k], tall[:, top:top + 10, :])


def test_scale_jitter_and_compose():
    video = _clip(h=30, w=50)
    t = T.Compose([T.ScaleJitterCrop(12, (14, 20)), T.RandomHorizontalFlip(0.5)])
    a = t(video, np.random.default_rng(1))
    b = t(video, np.random.default_rng(1))
    assert a.shape == (4, 12, 12, 3) and torch.equal(a, b)
    with pytest.raises(ValueError, match="short_side_range"):
        T.ScaleJitterCrop(12, (8, 20))


def test_transforms_reject_wrong_input():
    with pytest.raises(TypeError, match="uint8"):
        T.CenterCrop(4)(torch.zeros(2, 8, 8, 3))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        T.CenterCrop(4)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


@pytest.mark.parametrize("views", [False, True])
def test_to_model_input_matches_float64_formula(views):
    shape = (2, 3, 4, 5, 6, 3) if views else (2, 4, 5, 6, 3)
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    y = T.to_model_input(x, "cpu")
    assert y.dtype == torch.float32 and y.is_contiguous()
    want_shape = shape[:-3] + (3,) + shape[-3:-1]
    assert tuple(y.shape) == want_shape
    mean = torch.tensor(T.CLIP_MEAN, dtype=torch.float64)
    std = torch.tensor(T.CLIP_STD, dtype=torch.float64)
    ref = ((x.double() / 255 - mean) / std).movedim(-1, -3)
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-6)
    yb = T.to_model_input(x, "cpu", dtype=torch.bfloat16)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.double(), ref, rtol=1e-2, atol=1e-2)


def test_to_model_input_errors():
    with pytest.raises(TypeError, match="uint8"):
        T.to_model_input(torch.zeros(1, 2, 4, 4, 3), "cpu")
    with pytest.raises(ValueError, match="B, T, H, W, 3"):
        T.to_model_input(torch.zeros(2, 4, 4, 3, dtype=torch.uint8), "cpu")
    with pytest.raises(ValueError, match="floating"):
        T.to_model_input(torch.zeros(1, 2, 4, 4, 3, dtype=torch.uint8), "cpu", dtype=torch.int32)


def test_the_package_exports_the_transforms():
    """``art_fast.data`` re-exports the public names of its transforms module (used here)."""
    assert set(T.__all__) <= set(data.__all__)
    for name in T.__all__:
        assert getattr(data, name) is getattr(T, name), name
