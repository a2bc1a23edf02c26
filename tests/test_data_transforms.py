"""Clip transforms (the same geometry on every frame) and the uint8 -> float model input.

The transforms run on ``torchvision.transforms.v2``; where their semantics did not change they
are checked against ``_old_transforms``, a frozen copy of the hand-written implementation they
replaced (the geometry and resizing of ``art_fast/data/transforms.py`` before the move).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from art_fast import data
from art_fast.data import transforms as T
from art_fast.data.base import VideoClassificationDataset, VideoSample
from art_fast.train.config import ConfigError, apply_overrides, load_config

# --------------------------------------------------------------- frozen old implementation


def _old_uniform(gen, lo, hi):
    if isinstance(gen, np.random.Generator):
        return float(gen.uniform(lo, hi))
    u = float(torch.rand((), generator=gen, dtype=torch.float64))
    return lo + (hi - lo) * u


def _old_randint(gen, lo, hi):
    if hi <= lo:
        return lo
    if isinstance(gen, np.random.Generator):
        return int(gen.integers(lo, hi + 1))
    return int(torch.randint(lo, hi + 1, (), generator=gen))


def _old_resize_clip(video, size):
    h, w = size
    if video.shape[1] == h and video.shape[2] == w:
        return video
    x = video.permute(0, 3, 1, 2)
    y = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return y.permute(0, 2, 3, 1).contiguous()


def _old_crop_boxes(boxes, top, left, h, w):
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 - left).clamp(0, w), (y0 - top).clamp(0, h),
                        (x1 - left).clamp(0, w), (y1 - top).clamp(0, h)], -1)


class _OldRandomResizedCrop:
    def __init__(self, size, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = (size, size), scale, ratio

    def get_params(self, height, width, generator):
        area = height * width
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _old_uniform(generator, *self.scale)
            ar = math.exp(_old_uniform(generator, *log_r))
            w = int(round(math.sqrt(target * ar)))
            h = int(round(math.sqrt(target / ar)))
            if 0 < w <= width and 0 < h <= height:
                top = _old_randint(generator, 0, height - h)
                left = _old_randint(generator, 0, width - w)
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, video, generator):
        top, left, h, w = self.get_params(video.shape[1], video.shape[2], generator)
        return _old_resize_clip(video[:, top:top + h, left:left + w], self.size)


class _OldResize:
    def __init__(self, short_side):
        self.short_side = short_side

    def output_size(self, height, width):
        s = self.short_side
        if height <= width:
            return s, max(1, int(round(width * s / height)))
        return max(1, int(round(height * s / width))), s

    def __call__(self, video, generator=None):
        return _old_resize_clip(video, self.output_size(video.shape[1], video.shape[2]))

    def map_boxes(self, boxes, size):
        H, W = size
        h, w = self.output_size(H, W)
        return boxes * boxes.new_tensor([w / W, h / H, w / W, h / H]), (h, w)


class _OldScaleJitterCrop:
    def __init__(self, size, short_side_range):
        self.size, self.range = (size, size), tuple(short_side_range)

    def __call__(self, video, generator):
        short = _old_randint(generator, *self.range)
        video = _OldResize(short)(video)
        h, w = self.size
        top = _old_randint(generator, 0, video.shape[1] - h)
        left = _old_randint(generator, 0, video.shape[2] - w)
        return video[:, top:top + h, left:left + w].contiguous()


class _OldRandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, video, generator):
        return video.flip(2) if _old_uniform(generator, 0.0, 1.0) < self.p else video


class _OldCenterCrop:
    def __init__(self, size):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, video, generator=None):
        h, w = self.size
        H, W = video.shape[1], video.shape[2]
        top, left = (H - h) // 2, (W - w) // 2
        return video[:, top:top + h, left:left + w].contiguous()

    def map_boxes(self, boxes, size):
        h, w = self.size
        H, W = size
        return _old_crop_boxes(boxes, (H - h) // 2, (W - w) // 2, h, w), (h, w)


class _OldThreeCrop:
    def __init__(self, size):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def offsets(self, H, W):
        h, w = self.size
        if W - w >= H - h:
            return [((H - h) // 2, left) for left in (0, (W - w) // 2, W - w)]
        return [(top, (W - w) // 2) for top in (0, (H - h) // 2, H - h)]

    def __call__(self, video, generator=None):
        h, w = self.size
        return torch.stack([video[:, t:t + h, s:s + w]
                            for t, s in self.offsets(video.shape[1], video.shape[2])])

    def map_boxes(self, boxes, size):
        h, w = self.size
        return torch.stack([_old_crop_boxes(boxes, t, s, h, w)
                            for t, s in self.offsets(*size)]), (h, w)


_old_transforms = SimpleNamespace(
    RandomResizedCrop=_OldRandomResizedCrop, Resize=_OldResize,
    ScaleJitterCrop=_OldScaleJitterCrop, RandomHorizontalFlip=_OldRandomHorizontalFlip,
    CenterCrop=_OldCenterCrop, ThreeCrop=_OldThreeCrop)

# Resizing: on CPUs where torchvision resizes uint8 natively (AVX2 / AVX512 / ARM) it makes the
# very interpolate call the old code made, so the outputs are equal (measured: 0 levels over
# every size here). Elsewhere it resizes in float32 and rounds, which can move a value by one
# level (the rounding of a value the uint8 path rounds differently); 1 is the bound then.
_NATIVE_UINT8 = (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
                 or __import__("platform").machine() in ("aarch64", "arm64"))
RESIZE_TOL = 0 if _NATIVE_UINT8 else 1

SIZES = [(30, 50), (31, 47), (47, 31), (33, 33), (17, 64), (64, 17), (29, 40)]


def _clip(t=4, h=30, w=50, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=g)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == torch.uint8
    return int((a.int() - b.int()).abs().max()) if a.numel() else 0


def _resize_oracle(frame: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One frame [h, w, 3] resized in float64 (antialiased bilinear), rounded."""
    x = frame.permute(2, 0, 1)[None].double()
    y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255)


# --------------------------------------------------------------- equal to the old transforms

@pytest.mark.parametrize("hw", SIZES)
def test_crops_and_flip_equal_the_old_ones(hw):
    H, W = hw
    video = _clip(3, H, W, seed=H * W)
    for s in (7, 10, 16, min(H, W)):
        for new, old in ((T.CenterCrop(s), _old_transforms.CenterCrop(s)),
                         (T.ThreeCrop(s), _old_transforms.ThreeCrop(s)),
                         (T.CenterCrop((s, min(W, s + 3))),
                          _old_transforms.CenterCrop((s, min(W, s + 3))))):
            out = new(video)
            assert out.is_contiguous() and torch.equal(out, old(video)), (new, hw)
    for seed in range(6):  # p = 0.5: the same draw, the same flips
        a = T.RandomHorizontalFlip(0.5)(video, np.random.default_rng(seed))
        b = _old_transforms.RandomHorizontalFlip(0.5)(video, np.random.default_rng(seed))
        assert torch.equal(a, b)


@pytest.mark.parametrize("hw", SIZES)
def test_resize_equals_the_old_one(hw):
    H, W = hw
    video = _clip(3, H, W, seed=H + W)
    for s in (5, 12, 15, 23, min(H, W), 40):
        new, old = T.Resize(s)(video), _old_transforms.Resize(s)(video)
        assert new.shape == old.shape and new.is_contiguous()
        assert _max_diff(new, old) <= RESIZE_TOL, (s, hw)


@pytest.mark.parametrize("hw", SIZES)
def test_random_crops_equal_the_old_ones_for_a_given_rng(hw):
    H, W = hw
    video = _clip(3, H, W, seed=7)
    for seed in range(8):
        for scale in ((0.25, 1.0), (0.08, 0.5), (1.0, 1.0)):
            new, old = T.RandomResizedCrop(9, scale), _old_transforms.RandomResizedCrop(9, scale)
            assert new.get_params(H, W, np.random.default_rng(seed)) == \
                old.get_params(H, W, np.random.default_rng(seed))
            ra, rb = np.random.default_rng(seed), np.random.default_rng(seed)
            assert _max_diff(new(video, ra), old(video, rb)) <= RESIZE_TOL
            assert ra.integers(1 << 30) == rb.integers(1 << 30)  # the same draws consumed
        lo = max(12, min(H, W) // 2)
        ra, rb = np.random.default_rng(seed), np.random.default_rng(seed)
        a = T.ScaleJitterCrop(12, (lo, lo + 5))(video, ra)
        b = _old_transforms.ScaleJitterCrop(12, (lo, lo + 5))(video, rb)
        assert a.shape == (3, 12, 12, 3) and _max_diff(a, b) <= RESIZE_TOL
        assert ra.integers(1 << 30) == rb.integers(1 << 30)


def test_training_pipeline_equals_the_old_one():
    """The default training transform (crop, flip) gives the old clip for the same rng, so
    runs with RandAugment off reproduce the clips of earlier runs."""
    video = _clip(4, 41, 57, seed=3)
    new = T.Compose([T.RandomResizedCrop(16), T.RandomHorizontalFlip(0.5)])
    old = [_old_transforms.RandomResizedCrop(16), _old_transforms.RandomHorizontalFlip(0.5)]
    for seed in range(10):
        ref, rng = video, np.random.default_rng([0, 1, seed])
        for t in old:
            ref = t(ref, rng)
        assert _max_diff(new(video, np.random.default_rng([0, 1, seed])), ref) <= RESIZE_TOL


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_map_boxes_equals_the_old_one(hw, dtype):
    H, W = hw
    g = torch.Generator().manual_seed(H * 100 + W)
    xy = torch.rand(40, 2, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2  # some outside
    xy = xy * torch.tensor([W, H], dtype=torch.float64)
    boxes = torch.cat([xy.min(1).values, xy.max(1).values], -1).to(dtype)
    boxes[3] = float("nan")
    boxes = boxes.view(2, 20, 4)  # [..., 4]
    s = min(H, W) - 2
    pairs = [(T.Compose([T.Resize(s), T.CenterCrop(s)]), [_old_transforms.Resize(s),
                                                          _old_transforms.CenterCrop(s)]),
             (T.Compose([T.Resize(s + 3), T.ThreeCrop(s)]), [_old_transforms.Resize(s + 3),
                                                             _old_transforms.ThreeCrop(s)]),
             (T.Compose([T.CenterCrop((s - 1, s - 4))]), [_old_transforms.CenterCrop(
                 (s - 1, s - 4))])]
    for new, old in pairs:
        got, size = new.map_boxes(boxes, (H, W))
        want, want_size = boxes, (H, W)
        for t in old:
            want, want_size = t.map_boxes(want, want_size)
        assert size == want_size and got.dtype == dtype and got.shape == want.shape
        # float32: equal. float64: torchvision multiplies by the scale factor held in float32
        # (relative error <= 2**-24 of the coordinate, < 1e-5 pixel at these sizes).
        tol = 0.0 if dtype == torch.float32 else 1e-5
        torch.testing.assert_close(got, want, rtol=0, atol=tol, equal_nan=True)


# --------------------------------------------------------------- behaviour

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
    assert T.Resize(9)(_clip(h=20, w=31)).shape[2] == 14  # 13.95 rounds (torchvision: 13)
    crop = T.CenterCrop(10)(out)
    assert torch.equal(crop, out[:, 1:11, 5:15])
    assert torch.equal(T.CenterCrop(4)(_clip(h=7, w=7)), _clip(h=7, w=7)[:, 1:5, 1:5])
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
    with pytest.raises(TypeError, match="uint8"):
        T.RandAugment()(torch.zeros(2, 8, 8, 3))


def test_random_transforms_leave_torch_global_rng_alone():
    video = _clip(h=31, w=45)
    state = torch.get_rng_state()
    T.Compose([T.RandomResizedCrop(16), T.RandomHorizontalFlip(0.5), T.RandAugment(3, 9)])(
        video, np.random.default_rng(0))
    T.ScaleJitterCrop(12, (14, 20))(video, np.random.default_rng(0))
    assert torch.equal(torch.get_rng_state(), state)


# --------------------------------------------------------------- boxes against the pixels

def _box_clip(H: int, W: int, boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """uint8 [len(boxes), H, W, 3]: frame t white inside its integer box, black elsewhere."""
    v = torch.zeros(len(boxes), H, W, 3, dtype=torch.uint8)
    for t, (x0, y0, x1, y1) in enumerate(boxes):
        v[t, y0:y1, x0:x1] = 255
    return v


@pytest.mark.parametrize("hw", [(37, 53), (53, 37), (41, 41)])
@pytest.mark.parametrize("kind", ["centre", "three"])
def test_mapped_boxes_stay_on_the_drawn_pixels(hw, kind):
    """A box drawn into the frames is where its mapped box says after resize + crop: the
    bright pixels lie in the mapped box grown by 1.5 px (the antialiasing blur), and the box
    shrunk by 1.5 px is bright."""
    H, W = hw
    boxes = [(3, 5, 20, 30), (W - 15, 2, W - 1, 17), (10, H - 20, W - 8, H - 3)]
    S = 23
    crop = T.ThreeCrop(S) if kind == "three" else T.CenterCrop(S)
    t = T.Compose([T.Resize(S + 4), crop])
    out = t(_box_clip(H, W, boxes))
    mapped, size = t.map_boxes(torch.tensor(boxes, dtype=torch.float32), (H, W))
    if out.dim() == 4:
        out, mapped = out[None], mapped[None]
    assert tuple(out.shape[-3:-1]) == size and mapped.shape == (out.shape[0], 3, 4)
    yy, xx = torch.meshgrid(torch.arange(S) + 0.5, torch.arange(S) + 0.5, indexing="ij")
    for v in range(out.shape[0]):
        for f in range(3):
            x0, y0, x1, y1 = mapped[v, f].tolist()
            bright = out[v, f].float().mean(-1) > 128
            grown = (xx > x0 - 1.5) & (xx < x1 + 1.5) & (yy > y0 - 1.5) & (yy < y1 + 1.5)
            shrunk = (xx > x0 + 1.5) & (xx < x1 - 1.5) & (yy > y0 + 1.5) & (yy < y1 - 1.5)
            assert not (bright & ~grown).any() and bright[shrunk].all(), (v, f)


# --------------------------------------------------------------- RandAugment

def test_randaugment_deterministic_shape_dtype():
    video = _clip(5, 33, 47, seed=2)
    ra = T.RandAugment(2, 9)
    outs = [ra(video, np.random.default_rng(s)) for s in range(12)]
    for s, out in enumerate(outs):
        assert out.shape == video.shape and out.dtype == torch.uint8 and out.is_contiguous()
        assert torch.equal(out, ra(video, np.random.default_rng(s)))
        assert ra.draw(33, 47, np.random.default_rng(s)) == \
            ra.draw(33, 47, np.random.default_rng(s))
    assert len({o.sum().item() for o in outs}) > 6  # different rngs, different ops
    assert torch.equal(T.RandAugment(0, 9)(video, np.random.default_rng(0)), video)


def test_randaugment_draws_torchvision_op_space():
    ra = T.RandAugment(3, 9)
    assert set(ra.ops) == set(v2.RandAugment._AUGMENTATION_SPACE) and len(ra.ops) == 14
    rng = np.random.default_rng(0)
    drawn = [op for _ in range(200) for op in ra.draw(40, 60, rng)]
    assert {name for name, _ in drawn} == set(ra.ops)
    rotations = {m for name, m in drawn if name == "Rotate"}
    assert rotations == {-9.0, 9.0}  # bin 9 of linspace(0, 30, 31), both signs
    assert all(m == 0.0 for name, m in drawn if name in ("Identity", "Equalize"))
    # unsigned: bits round(8 - 9 / 7.5) = 7, never negated
    assert {m for name, m in drawn if name == "Posterize"} == {7.0}


@pytest.mark.parametrize("op", sorted(v2.RandAugment._AUGMENTATION_SPACE))
def test_randaugment_same_op_on_every_frame(op):
    """Each op is torchvision's, applied with one magnitude to the whole clip: identical input
    frames stay identical, and every frame equals torchvision's op on that frame alone."""
    ra = T.RandAugment(1, 20)
    frame = _clip(1, 29, 38, seed=5)
    other = _clip(1, 29, 38, seed=6)
    video = torch.cat([frame, other, frame, frame])
    magnitudes_fn, signed = v2.RandAugment._AUGMENTATION_SPACE[op]
    mags = magnitudes_fn(31, 29, 38)
    for sign in ((1, -1) if signed else (1,)):
        mag = 0.0 if mags is None else sign * float(mags[20])
        out = ra.apply(video, [(op, mag)])
        assert out.shape == video.shape and out.dtype == torch.uint8
        assert torch.equal(out[0], out[2]) and torch.equal(out[0], out[3])
        tv = v2.RandAugment(1, 20)
        for f in range(4):
            img = video[f].permute(2, 0, 1)  # [3, H, W] image
            ref = tv._apply_image_or_video_transform(img, op, mag, interpolation=tv.interpolation,
                                                     fill=tv._fill)
            assert torch.equal(out[f], ref.permute(1, 2, 0)), (op, mag, f)


def test_randaugment_identical_frames_stay_identical_end_to_end():
    frame = _clip(1, 24, 30, seed=9)
    video = frame.expand(6, -1, -1, -1).contiguous()
    t = T.Compose([T.RandomResizedCrop(16), T.RandomHorizontalFlip(0.5), T.RandAugment(3, 12)])
    for seed in range(15):
        out = t(video, np.random.default_rng(seed))
        assert out.shape == (6, 16, 16, 3)
        assert all(torch.equal(out[0], out[f]) for f in range(1, 6)), seed


def test_randaugment_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_ops"):
        T.RandAugment(-1, 9)
    with pytest.raises(ValueError, match="magnitude"):
        T.RandAugment(2, 31)
    with pytest.raises(ValueError, match="magnitude"):
        T.RandAugment(2, 2.5)  # type: ignore[arg-type]


def test_randaugment_config_and_dataset():
    root = ["data.root=somewhere"]  # validation wants a dataset folder; none is read
    cfg = load_config(None, [*root, "data.randaugment_ops=2", "data.randaugment_magnitude=12"])
    assert (cfg.data.randaugment_ops, cfg.data.randaugment_magnitude) == (2, 12)
    assert load_config(None, root).data.randaugment_ops == 0  # off by default
    for bad, key in (("data.randaugment_ops=-1", "data.randaugment_ops"),
                     ("data.randaugment_ops=two", "data.randaugment_ops"),
                     ("data.randaugment_magnitude=31", "data.randaugment_magnitude"),
                     ("data.randaugment_magnitude=1.5", "data.randaugment_magnitude")):
        with pytest.raises(ConfigError, match=key):
            apply_overrides(load_config(None, root), [bad])

    samples = [VideoSample("nowhere.mp4", 0)]
    ds = VideoClassificationDataset(samples, ["a"], train=True, check_files=False,
                                    image_size=16, randaugment=(2, 12))
    assert isinstance(ds.transform, T.Compose)
    assert [type(t) for t in ds.transform.transforms] == [T.RandomResizedCrop, T.RandAugment]
    assert (ds.transform.transforms[1].num_ops, ds.transform.transforms[1].magnitude) == (2, 12)
    off = VideoClassificationDataset(samples, ["a"], train=True, check_files=False)
    assert not any(isinstance(t, T.RandAugment) for t in off.transform.transforms)
    ev = VideoClassificationDataset(samples, ["a"], train=False, check_files=False,
                                    randaugment=(2, 12))
    assert T.supports_boxes(ev.transform)  # evaluation: never augmented
    with pytest.raises(ValueError, match="randaugment"):
        VideoClassificationDataset(samples, ["a"], train=True, check_files=False,
                                   randaugment=(2, 40))


# --------------------------------------------------------------- model input

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


def test_randaugment_config_reaches_the_training_dataset(tmp_path):
    """data.randaugment_* go through build_dataset into the training pipeline (and not into
    evaluation's)."""
    from art_fast.train.config import build_dataset
    from tests._util import write_video

    video = write_video(tmp_path / "a.mp4", np.zeros((4, 24, 24, 3), np.uint8))
    (tmp_path / "train.txt").write_text(f"{video} 0\n{video} 1\n")
    (tmp_path / "test.txt").write_text(f"{video} 0\n")
    over = [f"data.root={tmp_path}", "data.name=list",
            f"data.train_list={tmp_path / 'train.txt'}",
            f"data.eval_list={tmp_path / 'test.txt'}", "data.image_size=16",
            "data.randaugment_ops=3", "data.randaugment_magnitude=5"]
    cfg = load_config(None, over)
    train = build_dataset(cfg, train=True)
    ra = [t for t in train.transform.transforms if isinstance(t, T.RandAugment)]
    assert [(t.num_ops, t.magnitude) for t in ra] == [(3, 5)]
    ev = build_dataset(cfg, train=False)
    assert T.supports_boxes(ev.transform)
