"""Region hit: the overlap of patches with boxes, the per-frame hit and its
chance level against independent brute-force computations, the set-level best query, the
target boxes of dataset items against the pixels, and the evaluation / viz wiring."""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_train_helpers import synthetic_root, tiny_config

import art_fast
from art_fast.data import CenterCrop, Compose, Diving48, Resize, ThreeCrop, supports_boxes
from art_fast.data import binding as bd
from art_fast.data import synthetic as syn
from art_fast.data.sampling import multiview_indices
from art_fast.train import (
    RegionHitAccumulator,
    evaluate,
    load_trained,
    patch_box_overlap,
    region_hit,
    region_hit_sums,
    summarize_region_hit,
    train,
)
from art_fast.train import trainer as trainer_mod
from art_fast.train.distributed import DistContext

# ----------------------------------------------------------------------- brute-force references

SUB = 4  # sub-pixels per pixel side in the brute-force masks (box coordinates: multiples of 1/4)


def _brute_overlap(box, grid, hw):
    """Overlap of each patch with ``box`` by counting sub-pixels (centres) inside the box."""
    (gh, gw), (H, W) = grid, hw
    ys = (np.arange(H * SUB) + 0.5) / SUB
    xs = (np.arange(W * SUB) + 0.5) / SUB
    x0, y0, x1, y1 = box
    inside = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    ph, pw = H * SUB // gh, W * SUB // gw
    cells = inside.reshape(gh, ph, gw, pw).mean((1, 3))
    return cells.reshape(-1)


def _brute_hit(idx, w, ov):
    """hit of one query and frame: idx, w [heads, k] (numpy), ov [N]."""
    num = sum(float(w[h, j]) * ov[int(idx[h, j])] for h in range(idx.shape[0])
              for j in range(idx.shape[1]))
    return num / float(w.sum())


def _frac_boxes(rng, n, lo, hi):
    """n random boxes with coordinates in multiples of 1/SUB, some empty or reversed."""
    a = rng.integers(lo * SUB, hi * SUB, size=(n, 4)) / SUB
    return a


# ----------------------------------------------------------------------- patch_box_overlap

def test_overlap_half_covered_patch_outside_and_empty_boxes():
    grid, S = (4, 4), 32  # patches of 8 x 8
    ov = patch_box_overlap(torch.tensor([[0.0, 0.0, 4.0, 8.0],      # left half of patch 0
                                         [8.0, 8.0, 16.0, 16.0],    # exactly patch 5
                                         [-50.0, -50.0, 100.0, 100.0],  # the whole image+
                                         [40.0, 0.0, 60.0, 32.0],   # wholly outside
                                         [10.0, 10.0, 10.0, 20.0],  # empty (zero width)
                                         [20.0, 20.0, 10.0, 30.0]]),  # reversed
                           grid, S)
    assert ov.shape == (6, 16) and ov.dtype == torch.float32
    want0 = torch.zeros(16)
    want0[0] = 0.5
    torch.testing.assert_close(ov[0], want0)
    assert ov[1, 5] == 1.0 and ov[1].sum() == 1.0
    assert torch.equal(ov[2], torch.ones(16))
    assert not ov[3:].any()
    nan = patch_box_overlap(torch.tensor([float("nan"), 0.0, 8.0, 8.0]), grid, S)
    assert torch.isnan(nan).all()


@pytest.mark.parametrize("grid,hw", [((4, 4), (28, 28)), ((3, 4), (24, 36)), ((7, 7), (49, 49))])
def test_overlap_matches_brute_force_on_random_boxes(grid, hw):
    rng = np.random.default_rng(sum(grid) + hw[1])
    boxes = _frac_boxes(rng, 60, -8, max(hw) + 8)  # partly / wholly outside, empty, reversed
    boxes[:5, 2:] = boxes[:5, :2] + rng.integers(1, 3 * SUB, (5, 2)) / SUB  # small, unaligned
    ov = patch_box_overlap(torch.from_numpy(boxes), grid, hw)
    assert ov.dtype == torch.float64
    for b, got in zip(boxes, ov.numpy()):
        np.testing.assert_allclose(got, _brute_overlap(b, grid, hw), atol=1e-12)


def test_overlap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="boxes"):
        patch_box_overlap(torch.zeros(3, 5), (4, 4), 32)
    with pytest.raises(ValueError, match="grid"):
        patch_box_overlap(torch.zeros(3, 4), (0, 4), 32)
    with pytest.raises(ValueError, match="image_size"):
        patch_box_overlap(torch.zeros(3, 4), (4, 4), -1)


# ----------------------------------------------------------------------- region_hit

def _one(idx, w, boxes, grid=(4, 4), S=32):
    """region_hit of B=1, K=len(idx), T=1 from nested lists [K][heads][k]."""
    i = torch.tensor(idx, dtype=torch.int64)[None, :, None]  # [1, K, 1, heads, k]
    ww = torch.tensor(w, dtype=torch.float64)[None, :, None]
    return region_hit(i, ww, torch.tensor([[boxes]], dtype=torch.float64), grid, S)


def test_hit_inside_outside_half_and_weights():
    box = [0.0, 0.0, 16.0, 16.0]  # patches 0, 1, 4, 5 of the 4 x 4 grid (8 px patches)
    r = _one([[[0, 5], [1, 4]],            # all kept patches inside -> 1
              [[15, 10], [2, 12]],         # none touches the box -> 0
              [[0, 15], [5, 15]]],         # weights 0.8 / 0.2 on inside / outside, twice
             [[[0.5, 0.5], [0.9, 0.1]],
              [[0.5, 0.5], [0.3, 0.7]],
              [[0.8, 0.2], [0.8, 0.2]]], box)
    torch.testing.assert_close(r["hit"][0, :, 0], torch.tensor([1.0, 0.0, 0.8],
                                                               dtype=torch.float64))
    assert r["chance"][0, 0] == 4 / 16 and bool(r["valid"][0, 0])
    # a half-covered patch: [0, 0, 4, 8] covers half of patch 0
    half = _one([[[0], [0]]], [[[1.0], [1.0]]], [0.0, 0.0, 4.0, 8.0])
    assert half["hit"].item() == 0.5
    # weights matter: one head on the half patch (0.5), one on a whole one (1.0), 3:1
    mix = _one([[[0, 1]]], [[[0.25, 0.75]]], [0.0, 0.0, 16.0, 8.0])
    assert mix["hit"].item() == pytest.approx(1.0)  # patches 0 and 1 both wholly inside
    mix = _one([[[0, 1]]], [[[0.25, 0.75]]], [0.0, 0.0, 12.0, 8.0])
    assert mix["hit"].item() == pytest.approx(0.25 * 1.0 + 0.75 * 0.5)


def test_chance_of_a_box_covering_16_of_64_patches():
    idx = torch.zeros(1, 1, 1, 1, 1, dtype=torch.int64)
    r = region_hit(idx, torch.ones(1, 1, 1, 1, 1), torch.tensor([[[0.0, 0.0, 32.0, 32.0]]]),
                   (8, 8), 64)
    assert r["chance"].item() == 0.25 and r["hit"].item() == 1.0
    assert r["hit"].dtype == torch.float32


def test_hit_and_chance_match_brute_force_on_random_inputs():
    rng = np.random.default_rng(5)
    B, K, T, heads, k, grid, S = 3, 4, 5, 2, 3, (4, 4), 28  # 7 px patches: boxes unaligned
    N = 16
    idx = torch.from_numpy(rng.integers(0, N, (B, K, T, heads, k)))
    w = torch.from_numpy(rng.random((B, K, T, heads, k)))
    w = w / w.sum(-1, keepdim=True)
    boxes = _frac_boxes(rng, B * T, -4, S + 4).reshape(B, T, 4)
    boxes[..., 2:] = np.maximum(boxes[..., 2:], boxes[..., :2] + 1)  # non-empty
    boxes[0, 1] = [-10, -10, -2, 5]  # wholly outside: not valid
    boxes[1, 2] = np.nan             # no box
    r = region_hit(idx, w, torch.from_numpy(boxes), grid, S)
    assert r["hit"].shape == (B, K, T) and r["chance"].shape == (B, T)
    assert r["valid"].dtype == torch.bool
    invalid = 0
    for b in range(B):
        for t in range(T):
            ov = _brute_overlap(boxes[b, t], grid, (S, S))
            if not np.isfinite(boxes[b, t]).all() or ov.sum() == 0:  # no box / none inside
                assert not r["valid"][b, t] and torch.isnan(r["chance"][b, t])
                assert torch.isnan(r["hit"][b, :, t]).all()
                invalid += 1
                continue
            assert r["valid"][b, t]
            assert r["chance"][b, t].item() == pytest.approx(ov.mean(), abs=1e-12)
            for q in range(K):
                want = _brute_hit(idx[b, q, t].numpy(), w[b, q, t].numpy(), ov)
                assert r["hit"][b, q, t].item() == pytest.approx(want, abs=1e-12)
    assert 2 <= invalid < B * T
    sums = region_hit_sums(r)
    assert int(sums["frames"].sum()) == B * T - invalid
    h = r["hit"].double()
    torch.testing.assert_close(sums["hit_sum"], torch.nan_to_num(h).sum(-1))


def test_bad_shapes_name_the_argument():
    idx = torch.zeros(2, 3, 4, 2, 5, dtype=torch.int64)
    w = torch.ones(2, 3, 4, 2, 5)
    boxes = torch.zeros(2, 4, 4)
    with pytest.raises(ValueError, match="indices"):
        region_hit(idx[0], w[0], boxes, (4, 4), 32)
    with pytest.raises(ValueError, match="indices must be an integer"):
        region_hit(idx.float(), w, boxes, (4, 4), 32)
    with pytest.raises(ValueError, match="weights"):
        region_hit(idx, w[..., :4], boxes, (4, 4), 32)
    with pytest.raises(ValueError, match="weights must be floating"):
        region_hit(idx, w.long(), boxes, (4, 4), 32)
    with pytest.raises(ValueError, match="boxes"):
        region_hit(idx, w, boxes[:, :3], (4, 4), 32)
    with pytest.raises(ValueError, match="boxes"):
        region_hit(idx, w, boxes[..., :3], (4, 4), 32)
    with pytest.raises(ValueError, match="boxes must be floating"):
        region_hit(idx, w, boxes.long(), (4, 4), 32)
    with pytest.raises(ValueError, match=r"indices must lie in 0\.\.15"):
        region_hit(idx + 16, w, boxes, (4, 4), 32)
    with pytest.raises(ValueError, match="grid"):
        region_hit(idx, w, boxes, (4,), 32)


# ----------------------------------------------------------------------- the set-level query

def test_best_query_is_one_choice_for_the_whole_set():
    """Clip A: query 0 always inside, query 1 never; clip B (3 valid frames of 4): query 0
    never, query 1 always. Per clip the max is 1; over the set, query 0 has 4/7 (4 of 7
    valid clip-frames) and query 1 3/7: query 0, region_hit 4/7."""
    T = 4
    box = [0.0, 0.0, 16.0, 16.0]  # patches 0, 1, 4, 5; chance 0.25
    inside, outside = 5, 15
    idx = torch.tensor([[inside, outside], [outside, inside]]).view(2, 2, 1, 1, 1)
    idx = idx.expand(2, 2, T, 1, 1).contiguous()
    w = torch.ones(2, 2, T, 1, 1)
    boxes = torch.tensor(box).expand(2, T, 4).clone()
    boxes[1, 3] = float("nan")
    acc = RegionHitAccumulator()
    acc.add(region_hit(idx, w, boxes, (4, 4), 32))
    s = acc.summary()
    assert s["region_hit_query"] == 0
    assert s["region_hit"] == pytest.approx(4 / 7)
    assert s["region_hit_per_query"] == pytest.approx([4 / 7, 3 / 7])
    assert s["region_hit_chance"] == pytest.approx(0.25)
    assert s["region_hit_frames"] == 7
    json.dumps(s)  # plain values
    # the same clips in two batches (or two ranks) give the same summary
    a, b = RegionHitAccumulator(), RegionHitAccumulator()
    a.add(region_hit(idx[:1], w[:1], boxes[:1], (4, 4), 32))
    b.add(region_hit(idx[1:], w[1:], boxes[1:], (4, 4), 32))
    a.merge(b)
    assert a.summary() == s  # the same sums (exact: dyadic values)
    # ties: the lowest index
    tie = summarize_region_hit(torch.tensor([[1.0, 1.0]]), torch.tensor([0.5]),
                               torch.tensor([2]))
    assert tie["region_hit_query"] == 0 and tie["region_hit"] == 0.5
    # nothing valid: None
    none = summarize_region_hit(torch.zeros(3, 2), torch.zeros(3),
                                torch.zeros(3, dtype=torch.int64))
    assert none["region_hit"] is None and none["region_hit_per_query"] == [None, None]
    assert RegionHitAccumulator().summary()["region_hit_frames"] == 0
    with pytest.raises(ValueError, match="queries"):
        a.add_sums(torch.zeros(1, 3), torch.zeros(1), torch.zeros(1, dtype=torch.int64))


# ----------------------------------------------------------------------- box mapping (transforms)

def _clip_with_box(T, H, W, boxes):
    """uint8 [T, H, W, 3]: white inside each frame's integer box, black elsewhere."""
    v = np.zeros((T, H, W, 3), dtype=np.uint8)
    for t, b in enumerate(boxes):
        if b is not None:
            x0, y0, x1, y1 = b
            v[t, y0:y1, x0:x1] = 255
    return v


def _check_pixels_in_box(frame, box, tol=1.5):
    """Bright pixels (> 128) lie inside the box grown by ``tol``; the box shrunk by ``tol`` is
    bright. frame uint8 [h, w, 3] (or [h, w]); box x0, y0, x1, y1."""
    g = frame.astype(np.float64)
    g = g.mean(-1) if g.ndim == 3 else g
    h, w = g.shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5  # pixel centres
    x0, y0, x1, y1 = box
    grown = (xx > x0 - tol) & (xx < x1 + tol) & (yy > y0 - tol) & (yy < y1 + tol)
    shrunk = (xx > x0 + tol) & (xx < x1 - tol) & (yy > y0 + tol) & (yy < y1 - tol)
    bright = g > 128
    assert not (bright & ~grown).any(), (box, np.argwhere(bright & ~grown)[:3])
    assert bright[shrunk].all(), box


@pytest.mark.parametrize("transform", [Compose([Resize(32), CenterCrop(32)]),
                                       Compose([Resize(40), CenterCrop(40)]),
                                       Compose([Resize(24), ThreeCrop(24)]),
                                       Compose([Resize(64), CenterCrop((56, 64))])])
def test_transform_map_boxes_against_the_pixels(transform):
    T, H, W = 3, 48, 72
    boxes = [(4, 6, 30, 40), (50, 2, 70, 20), (20, 10, 60, 44)]  # some cut by the crops
    video = torch.from_numpy(_clip_with_box(T, H, W, boxes))
    out = transform(video)
    mapped, size = transform.map_boxes(torch.tensor(boxes, dtype=torch.float64), (H, W))
    assert tuple(out.shape[-3:-1]) == size
    if out.dim() == 4:
        out, mapped = out[None], mapped[None]
    assert mapped.shape == (out.shape[0], T, 4)
    for v in range(out.shape[0]):
        for t in range(T):
            _check_pixels_in_box(out[v, t].numpy(), mapped[v, t].tolist())
    assert supports_boxes(transform)
    nan = transform.map_boxes(torch.full((1, 4), float("nan")), (H, W))[0]
    assert torch.isnan(nan).all()
    far = transform.map_boxes(torch.tensor([[-40.0, -40.0, -20.0, -20.0]]), (H, W))[0]
    assert (far[..., 2] - far[..., 0] == 0).all()  # wholly outside: empty after clipping


# ----------------------------------------------------------------------- boxes of dataset items

def _handmade_set(root, H=48, W=64, F_=12, meta_override=None):
    """A Diving48-layout set of 2 test videos (H x W, F_ frames): a white box moving 4 px a
    frame on black (video 1: frame 5 has no box), with binding_meta.json holding the boxes."""
    os.makedirs(os.path.join(root, "rgb"), exist_ok=True)
    codec, options = syn._encoder()
    entries, videos = [], {}
    for n in range(2):
        name = f"v{n}"
        boxes = [(2 + 4 * f + n, 8 + f, 14 + 4 * f + n, 30 + f) for f in range(F_)]
        if n == 1:
            boxes[5] = None
        syn._write_mp4(os.path.join(root, "rgb", name + ".mp4"),
                       _clip_with_box(F_, H, W, boxes), codec, options)
        entries.append({"vid_name": name, "label": n, "start_frame": 0, "end_frame": F_})
        videos[name] = {"target": 1, "actors": [
            {"actor_boxes": [[0, 0, 1, 1]] * F_},
            {"actor_boxes": [list(b) if b else None for b in boxes]}]}
    for split in ("train", "test"):
        with open(os.path.join(root, f"Diving48_V2_{split}.json"), "w") as f:
            json.dump(entries, f)
    with open(os.path.join(root, "Diving48_vocab.json"), "w") as f:
        json.dump([["a", "b", "c", "d"], ["e", "f", "g", "h"]], f)
    meta = {"videos": videos} if meta_override is None else meta_override
    with open(os.path.join(root, "binding_meta.json"), "w") as f:
        f.write(meta if isinstance(meta, str) else json.dumps(meta))
    return videos


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("handmade"))
    return root, _handmade_set(root)


@pytest.mark.parametrize("views,size", [((1, 1), 32), ((2, 3), 24), ((1, 1), 80)])
def test_item_boxes_follow_frames_and_crops(handmade, views, size):
    """Every view: the boxes returned with the item lie where the white box is in the item's
    pixels (non-square 48 x 64 frames, so the centre / three crops cut), the frames are the
    ones the loader sampled (the box moves 4 px a frame), no-box frames are NaN."""
    root, videos = handmade
    ds = Diving48(root, "test", num_frames=4, image_size=size, views=views)
    assert ds.has_boxes and ds.can_map_boxes
    for i in range(len(ds)):
        video, label, boxes = ds.get_with_boxes(i)
        plain, _ = ds[i]
        assert torch.equal(video, plain)
        if video.dim() == 4:
            video, boxes = video[None], boxes[None]
        V = views[0] * views[1]
        assert boxes.shape == (V, 4, 4) and boxes.dtype == torch.float32
        frames = multiview_indices(12, 4, views[0])
        src = videos[f"v{i}"]["actors"][1]["actor_boxes"]
        for v in range(V):
            for t in range(4):
                f = int(frames[v // views[1]][t])
                if src[f] is None:
                    assert torch.isnan(boxes[v, t]).all()
                    assert video[v, t].max() < 60
                    continue
                _check_pixels_in_box(video[v, t].numpy(), boxes[v, t].tolist())
                # and the mapping is the resize + crop arithmetic (independently)
                h, w = (size, round(64 * size / 48))
                lefts = [(w - size) // 2] if views[1] == 1 else [0, (w - size) // 2, w - size]
                left = lefts[v % views[1]]
                x0, y0, x1, y1 = src[f]
                want = [min(max(x0 * w / 64 - left, 0), size), y0 * h / 48,
                        min(max(x1 * w / 64 - left, 0), size), y1 * h / 48]
                assert boxes[v, t].tolist() == pytest.approx(want, abs=1e-4)
    train_ds = Diving48(root, "train", num_frames=4, image_size=size)
    assert train_ds.has_boxes and not train_ds.can_map_boxes
    with pytest.raises(ValueError, match="deterministic transform"):
        train_ds.get_with_boxes(0)


def _find_checker(frame, side):
    """(x0, y0) of the best normalised match of the target's checkerboard mark, scaled to
    ``side`` pixels, in an RGB uint8 frame."""
    g = torch.from_numpy(frame).float().mean(-1)[None, None]
    tpl = torch.from_numpy(bd._mark_pattern("checker", 8)).float()[None, None]
    tpl = F.interpolate(tpl, size=(side, side), mode="bilinear", antialias=True,
                        align_corners=False)
    tpl = (tpl - tpl.mean()) / (tpl - tpl.mean()).norm()
    ones = torch.ones_like(tpl)
    n = side * side
    s1, s2 = F.conv2d(g, ones), F.conv2d(g * g, ones)
    ncc = F.conv2d(g, tpl) / (s2 - s1 * s1 / n).clamp_min(1e-6).sqrt()
    r, c = divmod(int(ncc.flatten().argmax()), ncc.shape[-1])
    return c, r


@pytest.fixture(scope="module")
def binding_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rh_binding") / "b"
    bd.make_binding(root, classes=2, videos_per_class=2, frames=8, size=64, test_fraction=0.5,
                    seed=0, workers=1)
    return root


@pytest.mark.parametrize("size", [48, 80])
def test_binding_items_checkerboard_inside_the_mapped_box(binding_root, size):
    """Through Diving48 at a size other than the clips' 64: in every frame the model sees, the
    checkerboard mark (found in the pixels by template matching; the distractor's stripes do
    not match it) lies inside the target box returned with the item."""
    ds = Diving48(binding_root, "test", num_frames=4, image_size=size)
    side = round(8 * size / 64)
    for i in range(len(ds)):
        video, _, boxes = ds.get_with_boxes(i)
        assert torch.isfinite(boxes).all()
        for t in range(4):
            c, r = _find_checker(video[t].numpy(), side)
            x0, y0, x1, y1 = boxes[t].tolist()
            assert x0 - 1 <= c and c + side <= x1 + 1, (i, t, c, boxes[t])
            assert y0 - 1 <= r and r + side <= y1 + 1, (i, t, r, boxes[t])


@pytest.mark.parametrize("meta,match", [
    ("{not json", "not valid JSON"),
    ({"params": {}}, "'videos' object"),
    ({"videos": {"v0": []}}, r"videos\['v0'\] must be an object"),
    ({"videos": {"v0": {"target": 2, "actors": [{"actor_boxes": [[0, 0, 1, 1]]}]}}},
     "'target' must be an index"),
    ({"videos": {"v0": {"target": 0, "actors": [{"boxes": [[0, 0, 1, 1]]}]}}},
     "'actor_boxes'"),
    ({"videos": {"v0": {"target": 0, "actors": [{"actor_boxes": [[0, 0, 1]]}]}}},
     r"actor_boxes\[0\] must be null or \[x0, y0, x1, y1\]"),
    ({"videos": {"v0": {"target": 0, "actors": [{"actor_boxes": [[5, 0, 1, 1]]}]}}},
     r"x0 <= x1"),
])
def test_malformed_binding_meta_is_a_clear_error(tmp_path, meta, match):
    root = str(tmp_path)
    _handmade_set(root, F_=8, meta_override=meta)
    with pytest.raises(ValueError, match=match) as info:
        Diving48(root, "test", num_frames=4, image_size=32)
    assert "binding_meta.json" in str(info.value)


def test_box_count_must_match_the_frames_and_no_file_means_no_boxes(tmp_path):
    root = str(tmp_path)
    meta = {"videos": {f"v{n}": {"target": 0, "actors": [{"actor_boxes": [[0, 0, 4, 4]] * 7}]}
                       for n in range(2)}}
    _handmade_set(root, F_=8, meta_override=meta)
    ds = Diving48(root, "test", num_frames=4, image_size=32)
    with pytest.raises(ValueError, match=r"binding_meta.json: 7 boxes for .*8 frames"):
        ds.get_with_boxes(0)
    os.remove(os.path.join(root, "binding_meta.json"))
    ds = Diving48(root, "test", num_frames=4, image_size=32)
    assert not ds.has_boxes and not ds.can_map_boxes
    with pytest.raises(ValueError, match="no target boxes"):
        ds.get_with_boxes(0)


# ----------------------------------------------------------------------- evaluation and viz

@pytest.fixture(scope="module")
def binding_run(tmp_path_factory, binding_root):
    """One training step of the tiny model on the binding set (frames 64 -> 32 model input);
    the end-of-run evaluation runs through _predict with the boxes."""
    out = str(tmp_path_factory.mktemp("rh_run"))
    cfg = tiny_config(out, f"data.root={binding_root}", "train.max_steps=1",
                      "train.eval_every=1")
    train(cfg)
    return out, cfg


def _check_region_keys(m):
    for key in ("region_hit", "region_hit_chance"):
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
    assert m["region_hit_query"] in (0, 1) and len(m["region_hit_per_query"]) == 2
    assert m["region_hit"] == max(m["region_hit_per_query"])


def test_evaluate_writes_region_hit(binding_run):
    out, cfg = binding_run
    cfg = copy.deepcopy(cfg)
    rec = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))][-1]
    _check_region_keys(rec["eval"])
    assert "region_hit" in open(os.path.join(out, "train.log")).read()
    rep = evaluate(cfg, "last")
    saved = json.load(open(os.path.join(out, "eval", "eval_metrics.json")))
    _check_region_keys(saved)
    assert saved["region_hit"] == rep["region_hit"] == rec["eval"]["region_hit"]
    assert saved["region_hit_frames"] == 2 * 4  # 2 test clips x 4 frames, all with a box
    log = open(os.path.join(out, "eval", "eval.log")).read()
    assert "region_hit" in log and "chance" in log
    # independently: the model on every item, brute-force overlaps
    model, _, _ = load_trained(os.path.join(out, "last.pt"))
    ds = Diving48(cfg.data.root, "test", num_frames=4, image_size=32)
    grid = tuple(model.backbone.visual.grid_size)
    per_q, chance, n = np.zeros(2), 0.0, 0
    with torch.no_grad():
        for i in range(len(ds)):
            video, _, boxes = ds.get_with_boxes(i)
            o = model(art_fast.data.to_model_input(video[None]))
            for t in range(4):
                ov = _brute_overlap_float(boxes[t].tolist(), grid, (32, 32))
                chance += ov.mean()
                n += 1
                for q in range(2):
                    per_q[q] += _brute_hit(o.region_indices[0, q, t].numpy(),
                                           o.region_weights[0, q, t].double().numpy(), ov)
    assert saved["region_hit_per_query"] == pytest.approx(list(per_q / n), abs=1e-5)
    assert saved["region_hit_chance"] == pytest.approx(chance / n, abs=1e-5)
    # multi-view: every view's frames count, each with its own mapping
    cfg.eval.views = [2, 3]
    multi = evaluate(cfg, "last", os.path.join(out, "eval_mv"))
    _check_region_keys(multi)
    assert multi["region_hit_frames"] == 2 * 6 * 4


def _brute_overlap_float(box, grid, hw, sub=64):
    """Overlap by fine sub-pixel sampling for boxes with arbitrary float coordinates."""
    (gh, gw), (H, W) = grid, hw
    ys = (np.arange(H * sub) + 0.5) / sub
    xs = (np.arange(W * sub) + 0.5) / sub
    x0, y0, x1, y1 = box
    inside = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return inside.reshape(gh, H * sub // gh, gw, W * sub // gw).mean((1, 3)).reshape(-1)


def test_predict_without_boxes_or_tracklets_has_no_region_keys(binding_run, tmp_path):
    out, cfg = binding_run
    ctx = DistContext()
    model, _, _ = load_trained(os.path.join(out, "last.pt"))
    plain = tiny_config(str(tmp_path), f"data.root={synthetic_root()}")
    from art_fast.train import build_dataset

    ds = build_dataset(plain, None, train=False)
    assert not ds.has_boxes
    torch.manual_seed(0)
    with_tracklets = art_fast.ART(ds.classes, backbone="tiny", num_frames=4, image_size=32,
                                  latent_dim=16, heads=2, se_layers=1, rssa_layers=1,
                                  text_cache_dir=str(tmp_path))
    pred = trainer_mod._predict(with_tracklets, ds, plain, ctx)
    assert "region_hit_sum" not in pred
    m = trainer_mod._eval_report(pred, ds, str(tmp_path), plain, write=False)
    assert not any(k.startswith("region_hit") for k in m)
    no_tracklets = art_fast.ART(model.class_names, backbone="tiny", num_frames=4, image_size=32,
                                latent_dim=16, heads=2, se_layers=1, rssa_layers=1,
                                tracklet_branch=False, text_cache_dir=str(tmp_path))
    bds = build_dataset(cfg, None, train=False)
    assert bds.can_map_boxes
    pred = trainer_mod._predict(no_tracklets, bds, cfg, ctx)
    assert "region_hit_sum" not in pred
    assert trainer_mod._region_hit_text({"top1": 0.5}) == ""


def test_predict_gathers_every_ranks_region_sums(binding_run, monkeypatch):
    """Two simulated ranks (each scores its shard; the gather hands rank 0 both parts) give
    the same per-clip sums and metrics as one process."""
    out, cfg = binding_run
    cfg = copy.deepcopy(cfg)
    model, _, _ = load_trained(os.path.join(out, "last.pt"))
    ds = Diving48(cfg.data.root, "test", num_frames=4, image_size=32)
    cfg.eval.batch_size = 1
    single = trainer_mod._predict(model, ds, cfg, DistContext())
    parts = {}

    def fake_gather(ctx, obj):
        parts[ctx.rank] = obj
        return [parts[r] for r in sorted(parts)]

    monkeypatch.setattr(trainer_mod, "gather_objects", fake_gather)
    assert trainer_mod._predict(model, ds, cfg, DistContext(rank=1, world_size=2)) is None
    assert parts[1]["region_frames"].numel() == 1  # rank 1 scored one of the 2 clips
    both = trainer_mod._predict(model, ds, cfg, DistContext(rank=0, world_size=2))
    for k in ("region_hit_sum", "region_chance_sum", "region_frames", "indices"):
        torch.testing.assert_close(both[k], single[k], msg=k)
    assert int(both["region_frames"].sum()) == 8


def test_viz_draws_the_box_and_returns_per_frame_hits(binding_run, tmp_path, capsys):
    out, cfg = binding_run
    from art_fast.cli import viz
    from art_fast.viz import draw_tracklets

    model, _, _ = load_trained(os.path.join(out, "last.pt"))
    ds = Diving48(cfg.data.root, "test", num_frames=4, image_size=32)
    video, _, boxes = ds.get_with_boxes(0)
    info = draw_tracklets(model, video.numpy(), tmp_path / "t.png", cell=64,
                          boxes=boxes.numpy())
    assert len(info["region_hit"]) == 2 and all(len(h) == 4 for h in info["region_hit"])
    with torch.no_grad():
        o = model(art_fast.data.to_model_input(video[None]))
    grid = tuple(model.backbone.visual.grid_size)
    ovs = [_brute_overlap_float(boxes[t].tolist(), grid, (32, 32)) for t in range(4)]
    want = [[_brute_hit(o.region_indices[0, q, t].numpy(),
                        o.region_weights[0, q, t].double().numpy(), ovs[t]) for t in range(4)]
            for q in range(2)]
    np.testing.assert_allclose(info["region_hit"], want, atol=1e-6)
    np.testing.assert_allclose(info["region_hit_chance"], [ov.mean() for ov in ovs], atol=1e-9)
    img = np.asarray(Image.open(info["path"]).convert("RGB"))
    # frame 0 of tracklet 0: the cell at (pad 4, title 16); the box's left edge is yellow
    x0, y0, x1, y1 = (boxes[0] * 64 / 32).tolist()
    edge = img[4 + 16 + int(math.ceil(y0)) + 1: 4 + 16 + int(y1) - 1, 4 + int(x0)]
    assert (edge == (255, 255, 0)).all(-1).mean() > 0.8
    # the command: one line per tracklet, the chance line, the JSON with the hits
    assert viz(os.path.join(out, "last.pt"), str(tmp_path / "cli.png"), index=1) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("viz: tracklet 0 region_hit per frame:")
    assert len(lines[0].split(":")[-1].split()) == 4
    assert lines[2].startswith("viz: region_hit chance per frame:")
    last = json.loads(lines[-1][len("viz: "):])
    assert len(last["region_hit"]) == 2 and len(last["region_hit_chance"]) == 4
    assert os.path.isfile(tmp_path / "cli.png")
