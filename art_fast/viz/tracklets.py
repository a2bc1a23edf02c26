"""Tracklet overlays: each tracklet's selected regions drawn over the frames of a clip, with
each frame's saliency weight (the tracklet-aggregation weights); with target boxes (sets that
annotate them, e.g. the binding set), the box in every cell and each tracklet's per-frame
region hit (:func:`art_fast.train.region_hit.region_hit`); with ``explain=True`` a header
(prediction and its probability, the ground truth when known, how to read the picture) and
full class names wrapped over as many lines as they need."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

BOX_COLOUR = (255, 255, 0)  # the target box (yellow)
LINE = 12  # height of one wrapped text line (PIL's default font is 6 x 11 pixels)

# one colour per tracklet (RGB), cycled when K is larger
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60))


def wrap_text(text: str, width: int | None) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken at spaces only (a word longer
    than ``width`` is cut), so ``" ".join`` of the lines gives ``text`` back when it has single
    spaces; ``[text]`` when ``width`` is None."""
    if not width:
        return [text]
    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]


def region_heatmaps(
    indices: torch.Tensor, weights: torch.Tensor, num_patches: int
) -> torch.Tensor:
    """Patch saliency per tracklet and frame from the last RSSA layer's selection.

    Args:
        indices: ``[K, T, heads, k]`` int64 patch indices (row-major in the patch grid).
        weights: ``[K, T, heads, k]`` their attention weights.
        num_patches: N.

    Returns:
        ``[K, T, N]`` float32: the weights summed over heads per patch, divided by the number
        of heads (each head's weights sum to 1, so each map sums to 1).
    """
    K, T, H, k = indices.shape
    maps = torch.zeros(K, T, num_patches, dtype=torch.float32)
    maps.scatter_add_(2, indices.reshape(K, T, H * k).cpu(),
                      weights.detach().float().reshape(K, T, H * k).cpu())
    return maps / H


def overlay_grid(
    frames: np.ndarray, heatmaps: torch.Tensor, grid: tuple[int, int], *,
    labels: list[str] | None = None, cell: int = 128, boxes: np.ndarray | None = None,
    weights: np.ndarray | torch.Tensor | None = None, header: Sequence[str] | None = None,
    wrap: int | None = None,
) -> Image.Image:
    """A PNG-ready grid: one row per tracklet, one column per frame; each cell is the frame
    with the tracklet's patch saliency tinted in its colour and the strongest patch boxed.

    Args:
        frames: uint8 ``[T, H, W, 3]`` (the frames the model saw, or any frames of that clip).
        heatmaps: ``[K, T, N]`` from :func:`region_heatmaps`, N = grid[0] * grid[1].
        grid: the patch grid (rows, cols).
        labels: optional row titles.
        cell: side of each cell in pixels.
        boxes: optional float ``[T, 4]`` target boxes ``x0, y0, x1, y1`` (exclusive ends) in
            the pixels of ``frames``, drawn as a yellow (:data:`BOX_COLOUR`) rectangle in
            every cell of their frame; rows with a NaN are not drawn.
        weights: optional ``[K, T]`` per-frame weights (the model's saliency): each cell
            shows its weight as a bar along its bottom edge (full width = 1) and, when
            ``cell >= 48``, as a number (top left); both drawn under the target box.
        header: optional text lines drawn above the grid (:data:`LINE` pixels each).
        wrap: wrap each row title at this many characters (more title lines, a taller row);
            None: one line per title.

    Without ``header`` and with one-line titles the geometry is: pad 4, a 16-pixel title
    band per row when ``labels`` are given, ``cell`` x ``cell`` tiles (``weights`` draw inside
    the tiles).
    """
    K, T, N = heatmaps.shape
    gh, gw = grid
    if N != gh * gw or frames.shape[0] != T:
        raise ValueError(f"overlay_grid: heatmaps [K, T, N] = {tuple(heatmaps.shape)} do not fit "
                         f"frames {frames.shape} and grid {grid}")
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.shape != (T, 4):
            raise ValueError(f"overlay_grid: boxes must be [T, 4] = [{T}, 4], got "
                             f"{boxes.shape}")
    if weights is not None:
        weights = np.asarray(torch.as_tensor(weights).detach().float().cpu(), dtype=np.float64)
        if weights.shape != (K, T):
            raise ValueError(f"overlay_grid: weights must be [K, T] = [{K}, {T}], got "
                             f"{weights.shape}")
    fh, fw = frames.shape[1], frames.shape[2]
    pad = 4
    titles = [wrap_text(lab, wrap) for lab in labels] if labels else [[] for _ in range(K)]
    title_h = [16 + LINE * (len(t) - 1) if labels else 0 for t in titles]
    head = list(header or [])
    head_h = LINE * len(head) + pad if head else 0
    height = head_h + sum(cell + pad + h for h in title_h) + pad
    img = Image.new("RGB", (T * (cell + pad) + pad, height), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(head):
        draw.text((pad, pad + i * LINE), line, fill=(0, 0, 0))
    y0 = pad + head_h
    for kk in range(K):
        colour = np.array(PALETTE[kk % len(PALETTE)], dtype=np.float32)
        rgb = tuple(int(c) for c in colour)
        for i, line in enumerate(titles[kk]):
            draw.text((pad, y0 + i * LINE), line, fill=rgb)
        title = title_h[kk]
        for t in range(T):
            frame = Image.fromarray(frames[t]).resize((cell, cell), Image.BILINEAR)
            base = np.asarray(frame, dtype=np.float32)
            h = heatmaps[kk, t].view(1, 1, gh, gw)
            h = torch.nn.functional.interpolate(h, size=(cell, cell), mode="nearest")[0, 0]
            alpha = (h / h.max().clamp_min(1e-12)).numpy()[..., None] * 0.6
            tinted = base * (1 - alpha) + colour * alpha
            tile = Image.fromarray(tinted.clip(0, 255).astype(np.uint8))
            best = int(heatmaps[kk, t].argmax())
            r, c = divmod(best, gw)
            d = ImageDraw.Draw(tile)
            d.rectangle([c * cell / gw, r * cell / gh, (c + 1) * cell / gw - 1,
                         (r + 1) * cell / gh - 1], outline=rgb, width=2)
            if weights is not None and np.isfinite(weights[kk, t]):
                w = float(weights[kk, t])
                bar = max(2, cell // 16)
                d.rectangle([0, cell - bar, cell - 1, cell - 1], fill=(255, 255, 255))
                if w > 0:
                    d.rectangle([0, cell - bar, max(0, round(min(w, 1.0) * cell) - 1),
                                 cell - 1], fill=rgb)
                if cell >= 48:  # the number only where it leaves room for the frame
                    text = f"{w:.2f}"
                    d.rectangle([0, 0, 6 * len(text) + 1, 11], fill=(0, 0, 0))
                    d.text((1, 0), text, fill=(255, 255, 255))
            if boxes is not None and np.isfinite(boxes[t]).all():
                bx0, by0 = boxes[t, 0] * cell / fw, boxes[t, 1] * cell / fh
                bx1, by1 = boxes[t, 2] * cell / fw, boxes[t, 3] * cell / fh
                if bx1 > bx0 and by1 > by0:
                    d.rectangle([bx0, by0, max(bx0, bx1 - 1), max(by0, by1 - 1)],
                                outline=BOX_COLOUR, width=1)
            img.paste(tile, (pad + t * (cell + pad), y0 + title))
        y0 += cell + pad + title
    return img


@torch.no_grad()
def draw_tracklets(
    model: torch.nn.Module, frames: np.ndarray, out_path: str | os.PathLike, *,
    device: str | torch.device = "cpu", cell: int = 128,
    boxes: np.ndarray | torch.Tensor | None = None, label: int | None = None,
    explain: bool = False,
) -> dict:
    """Run ``model`` (an :class:`art_fast.ART`) in eval mode on one clip and write the overlay
    PNG of its tracklets' selected regions.

    Args:
        model: the ART model.
        frames: uint8 ``[T, H, W, 3]`` with T = model.num_frames and H = W = model.image_size
            (e.g. an eval-mode item of an art_fast dataset).
        out_path: the PNG to write.
        boxes: optional float ``[T, 4]`` target boxes in the pixels of ``frames`` (``x0, y0,
            x1, y1``, exclusive ends; NaN rows: no box), e.g. from
            :meth:`art_fast.data.VideoClassificationDataset.get_with_boxes`: drawn in every
            cell, and each tracklet's per-frame hit returned.
        label: the ground-truth class when known (shown with ``explain``; returned).
        explain: add a header (the prediction and its softmax probability, the ground truth
            and whether the prediction is right, how to read the picture) and wrap the row
            titles (full class names) to the width of the picture. Off: the grid alone
            (pad 4, a 16-pixel title per row, ``cell``-pixel tiles), still with the full
            names on one line and each frame's saliency weight in its tile.

    Each row is a tracklet (title: the class whose semantics seeded its query, full name);
    each tile shows the tracklet's selected patches tinted in its colour (the strongest boxed)
    and the step's saliency weight (``info["saliency"]``: the tracklet-aggregation softmax
    over the steps) as a bar along the bottom edge (and a number from ``cell`` = 48 pixels).

    The PNG has one column per tracklet step: every frame for a per-frame tower, the frames
    ``model.step_frames`` (0, 2, 4, ...) for a UniFormerV2 tower, whose T' = ceil(T / 2)
    temporal tokens are centred on them.

    Returns:
        ``{"path", "prediction", "prediction_name", "prediction_prob", "topk_classes",
        "saliency", "step_frames", "row_titles" (the lines of each row title), "header" (the
        header lines; [] without ``explain``)}`` for the caption/log; with ``label`` also
        ``"label"``, ``"label_name"`` and ``"correct"``; with ``boxes`` also
        ``"region_hit"`` (K lists of T' floats, None for a step without a valid box: each
        tracklet's attention-weighted share of its kept patches inside the box of the step's
        frame) and ``"region_hit_chance"`` (T' floats or None: the share uniformly random
        patches would give).
    """
    from ..data import to_model_input

    if frames.dtype != np.uint8 or frames.ndim != 4:
        raise ValueError(f"draw_tracklets: frames must be uint8 [T, H, W, 3], got "
                         f"{frames.dtype} {frames.shape}")
    was = model.training
    model.eval()
    x = to_model_input(torch.from_numpy(np.ascontiguousarray(frames))[None], device)
    out = model(x)
    model.train(was)
    if out.region_indices is None:
        raise ValueError("draw_tracklets: the model has no tracklet branch (tracklet_branch=False)")
    vis = model.backbone.visual
    maps = region_heatmaps(out.region_indices[0], out.region_weights[0],
                           model.backbone.num_patches)
    names = model.class_names
    topk = out.topk_classes[0].tolist()
    labels = [f"tracklet {k}: query seeded by '{names[c]}'" for k, c in enumerate(topk)]
    hits = None
    # a tracklet has one step per frame the tower keeps (UniFormerV2: every other frame)
    steps = list(getattr(model, "step_frames", range(frames.shape[0])))
    if boxes is not None:
        from ..train.region_hit import region_hit

        bx = torch.as_tensor(np.asarray(boxes, dtype=np.float64))
        T = frames.shape[0]
        if bx.shape != (T, 4):
            raise ValueError(f"draw_tracklets: boxes must be [T, 4] = [{T}, 4], got "
                             f"{tuple(bx.shape)}")
        boxes, bx = np.asarray(boxes, dtype=np.float64)[steps], bx[steps]
        hits = region_hit(out.region_indices.cpu(), out.region_weights.detach().double().cpu(),
                          bx[None], tuple(vis.grid_size), (frames.shape[1], frames.shape[2]))
    frames = frames[steps]
    probs = out.logits[0].detach().float().softmax(0).cpu()
    pred = int(probs.argmax())
    saliency = out.saliency[0].detach().float().cpu()
    header: list[str] = []
    wrap = None
    if explain:
        wrap = max(16, (len(steps) * (cell + 4) + 4 - 8) // 6)  # 6-pixel characters
        text = [f"prediction: '{names[pred]}' (p = {float(probs[pred]):.3f})"]
        if label is not None:
            ok = "correct" if int(label) == pred else "wrong"
            text.append(f"ground truth: '{names[int(label)]}' ({ok})")
        text.append("rows: tracklets; tint: the patches each tracklet keeps (strongest boxed); "
                    "bar (number): the frame's saliency weight"
                    + ("; yellow: the target box" if boxes is not None else "")
                    + f"; columns: frames {' '.join(map(str, steps))}")
        header = [line for t in text for line in wrap_text(t, wrap)]
    img = overlay_grid(frames, maps, tuple(vis.grid_size), labels=labels, cell=cell,
                       boxes=None if boxes is None else np.asarray(boxes, dtype=np.float64),
                       weights=saliency, header=header, wrap=wrap)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    img.save(out_path)
    info = {"path": os.fspath(out_path), "prediction": pred, "prediction_name": names[pred],
            "prediction_prob": float(probs[pred]), "topk_classes": topk,
            "saliency": saliency.tolist(), "step_frames": steps,
            "row_titles": [wrap_text(lab, wrap) for lab in labels],
            "header": header}
    if label is not None:
        info.update(label=int(label), label_name=names[int(label)],
                    correct=int(label) == pred)
    if hits is not None:
        def plain(v: torch.Tensor) -> list:
            return [None if not np.isfinite(x) else float(x) for x in v.tolist()]

        info["region_hit"] = [plain(h) for h in hits["hit"][0]]
        info["region_hit_chance"] = plain(hits["chance"][0])
    return info
