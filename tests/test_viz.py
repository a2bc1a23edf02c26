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
