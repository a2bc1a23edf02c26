"""Tracklet overlays: heat maps from the region selection, and the PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import art_fast
from art_fast.viz import draw_tracklets, overlay_grid, region_heatmaps


def test_region_heatmaps_put_each_weight_on_its_patch():
    idx = torch.tensor([[[[0, 3], [3, 1]]]])  # K=1, T=1, heads=2, k=2
    w = torch.tensor([[[[0.7, 0.3], [0.6, 0.4]]]])
    maps = region_heatmaps(idx, w, num_patches=4)
    torch.testing.assert_close(maps, torch.tensor([[[0.35, 0.2, 0.0, 0.45]]]))


def test_overlay_grid_marks_the_strongest_patch():
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    maps = torch.zeros(1, 2, 4)
    maps[0, :, 3] = 1.0  # bottom-right patch of a 2 x 2 grid
    img = np.asarray(overlay_grid(frames, maps, (2, 2), cell=32))
    cell = img[4:36, 4:36]  # first frame's tile (pad 4, no title)
    assert cell[24, 24].any() and not cell[8, 8].any()  # tinted only in the bottom-right
    with pytest.raises(ValueError, match="grid"):
        overlay_grid(frames, maps, (3, 3))


def test_draw_tracklets_writes_a_png(tmp_path):
    torch.manual_seed(0)
    model = art_fast.ART(["a", "b", "c"], backbone="tiny", num_frames=3, image_size=32,
                         latent_dim=32, heads=4, se_layers=1, rssa_layers=1,
                         text_cache_dir=str(tmp_path))
    frames = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    info = draw_tracklets(model, frames, tmp_path / "t.png", cell=40)
    img = Image.open(info["path"])
    assert img.size[0] == 3 * 44 + 4 and img.size[1] == 2 * (44 + 16) + 4  # T cols, K rows
    assert model.training  # the mode is restored
    assert 0 <= info["prediction"] < 3 and len(info["topk_classes"]) == 2
    # the default picture keeps that geometry and shows the full names and the saliency
    assert info["row_titles"] == [[f"tracklet {k}: query seeded by '{'abc'[c]}'"]
                                  for k, c in enumerate(info["topk_classes"])]
    assert info["header"] == [] and 0.0 < info["prediction_prob"] <= 1.0
    assert "label" not in info


LONG = ["picking something up and putting it down again somewhere else entirely",
        "b", "c"]


def test_draw_tracklets_explains_itself(tmp_path):
    torch.manual_seed(0)
    model = art_fast.ART(LONG, backbone="tiny", num_frames=3, image_size=32,
                         latent_dim=32, heads=4, se_layers=1, rssa_layers=1,
                         text_cache_dir=str(tmp_path))
    frames = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    info = draw_tracklets(model, frames, tmp_path / "t.png", cell=40, label=0, explain=True)
    img = Image.open(info["path"])
    img.load()
    pred = info["prediction"]
    header = " ".join(info["header"])
    assert f"prediction: '{LONG[pred]}'" in header
    assert f"p = {info['prediction_prob']:.3f}" in header
    assert "ground truth:" in header and info["label"] == 0 and info["label_name"] == LONG[0]
    assert info["correct"] == (pred == 0)
    assert ("(correct)" if pred == 0 else "(wrong)") in header and "saliency" in header
    # each row title holds the full class name, wrapped (no line wider than the picture)
    for k, c in enumerate(info["topk_classes"]):
        assert " ".join(info["row_titles"][k]) == f"tracklet {k}: query seeded by '{LONG[c]}'"
        assert all(6 * len(line) <= img.size[0] for line in info["row_titles"][k])
    assert any(len(t) > 1 for t in info["row_titles"])  # the long name needed more lines
    n_title = sum(len(t) for t in info["row_titles"])
    # the header and the extra title lines make the picture taller; the width is unchanged
    assert img.size[0] == 3 * 44 + 4
    assert img.size[1] == (12 * len(info["header"]) + 4) + 2 * (44 + 16) + 12 * (n_title - 2) + 4
    assert len(info["saliency"]) == 2 and all(len(s) == 3 for s in info["saliency"])
    assert all(abs(sum(s) - 1.0) < 1e-5 for s in info["saliency"])  # a softmax over frames


def test_overlay_grid_draws_each_frames_weight():
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    maps = torch.zeros(1, 2, 4)
    maps[0, :, 0] = 1.0
    img = np.asarray(overlay_grid(frames, maps, (2, 2), cell=32,
                                  weights=torch.tensor([[1.0, 0.25]])))
    bar0, bar1 = img[4 + 31, 4:36], img[4 + 31, 40:72]  # the bottom row of each tile
    colour = np.array([230, 25, 75])  # tracklet 0
    assert (bar0 == colour).all(-1).sum() == 32  # weight 1: the whole width
    assert (bar1 == colour).all(-1).sum() == 8  # weight 0.25: a quarter
    with pytest.raises(ValueError, match="weights"):
        overlay_grid(frames, maps, (2, 2), weights=torch.ones(2, 2))
