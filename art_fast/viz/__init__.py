"""Visualisation: tracklet overlays (and training curves)."""

from .tracklets import draw_tracklets, overlay_grid, region_heatmaps

__all__ = ["draw_tracklets", "overlay_grid", "region_heatmaps"]
