"""Region hit: how much of what each ART query attends to lies inside the target's box.

The ART model keeps, per query ``k``, frame ``t`` and head, the ``k_region`` patches of the
last RSSA layer with their attention weights (``ARTOutput.region_indices`` /
``region_weights``, ``[B, K, T, heads, k]``, each head's weights summing to 1). When the
evaluation set annotates a target box per frame (the binding set's ``binding_meta.json``, see
:class:`art_fast.data.Diving48`), this module scores those selections against the box.

Definitions (all in model-input pixels, boxes ``xyxy`` with exclusive ends, so a box
``[x0, y0, x1, y1]`` covers ``x0 <= x < x1``, ``y0 <= y < y1``; the ``gh x gw`` patch grid
cuts the ``H x W`` input into patches of ``H / gh x W / gw`` pixels, numbered row-major):

* **overlap** of a patch with a box (:func:`patch_box_overlap`): the fraction of the patch's
  area inside the box, in ``[0, 1]`` (exact for fractional coordinates: the box is a continuous
  rectangle). Parts of a box outside the image cover no patch; an empty box (zero width or
  height, or ``x1 < x0``) overlaps nothing.
* **hit** of query ``k`` in frame ``t`` of a clip (:func:`region_hit`): the attention-weighted
  mean overlap of the patches it kept, over every head and kept patch:
  ``sum_{h,j} w[h,j] * overlap(idx[h,j]) / sum_{h,j} w[h,j]``. 1: all the attention is on
  patches wholly inside the box; 0: none of it touches the box.
* **chance** of a frame: the mean overlap over all ``N`` patches, i.e. the expected hit of
  patches drawn uniformly at random (= the box's area inside the image / the image area).
* **valid** frames: the box is finite (a NaN row means "no box in this frame") and has a
  positive area inside the image (chance > 0). Other frames get NaN hit and chance and are
  left out of every mean.

The set-level number (:class:`RegionHitAccumulator`, :func:`summarize_region_hit`):

* **best-matching query**: ONE query index ``k*`` for the whole evaluation set, the one with
  the highest mean hit over all valid clip-frames (ties: the lowest index). A per-clip maximum
  over queries would be biased upwards (with ``K`` noisy queries the max beats chance even when
  no query tracks anything); one choice for the whole set costs one selection among ``K``, not
  one per clip.
* ``region_hit``: the mean hit of ``k*`` over the valid clip-frames; ``region_hit_chance``: the
  mean chance over the same clip-frames (compare the two); ``region_hit_query``: ``k*``;
  ``region_hit_per_query``: the ``K`` means; ``region_hit_frames``: the number of valid
  clip-frames. A query index means the same in every clip: the query seeded by the clip's
  ``k``-th ranked class (ART's top-K semantics).
* Multi-view evaluation: each view (temporal clip x spatial crop) is a clip of its own here,
  with the boxes mapped through its own frame indices and crop; its frames count as clip-frames
  (see :meth:`art_fast.data.VideoClassificationDataset.get_with_boxes`).
* With no valid clip-frame (no boxes at all) the means are None.

Per-clip sums (:func:`region_hit_sums`) are what travels between ranks in distributed
evaluation: the set-level means are ratios of sums over every clip of every rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["patch_box_overlap", "region_hit", "region_hit_sums", "summarize_region_hit",
           "RegionHitAccumulator", "REGION_HIT_KEYS"]

REGION_HIT_KEYS = ("region_hit", "region_hit_chance", "region_hit_query",
                   "region_hit_per_query", "region_hit_frames")
"""The keys :func:`summarize_region_hit` returns (and the evaluation metrics carry)."""


def _grid2(grid: Sequence[int]) -> tuple[int, int]:
    try:
        gh, gw = (int(g) for g in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (rows, cols), got {grid!r}") from None
    if gh < 1 or gw < 1:
        raise ValueError(f"grid must be (rows >= 1, cols >= 1), got {grid!r}")
    return gh, gw


def _size2(image_size: int | Sequence[int]) -> tuple[float, float]:
    if isinstance(image_size, (int, float)):
        h = w = float(image_size)
    else:
        try:
            h, w = (float(s) for s in image_size)
        except (TypeError, ValueError):
            raise ValueError(f"image_size must be an int or (height, width), got "
                             f"{image_size!r}") from None
    if not (h > 0 and w > 0):
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return h, w


def _float_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dt = torch.float32
    for t in tensors:
        if t.dtype.is_floating_point:
            dt = torch.promote_types(dt, t.dtype)
    return dt


def patch_box_overlap(boxes: torch.Tensor, grid: Sequence[int],
                      image_size: int | Sequence[int]) -> torch.Tensor:
    """Fraction of each patch's area inside a box.

    Args:
        boxes: ``[..., 4]`` ``x0, y0, x1, y1`` in model-input pixels (exclusive ends; any
            real values: boxes partly or wholly outside the image, empty or reversed boxes
            are fine). Floating (integer tensors are converted to float32).
        grid: the patch grid ``(rows gh, cols gw)`` (``model.backbone.visual.grid_size``).
        image_size: the model input's side ``S`` (square) or ``(H, W)``; patches are
            ``H / gh x W / gw`` pixels.

    Returns:
        ``[..., N]`` (``N = gh * gw``, row-major), the boxes' floating dtype (float32 for
        integer boxes, float16/bfloat16 computed as float32), on the boxes' device: each value
        in ``[0, 1]``; all zeros for an empty box; NaN where the box has a NaN coordinate.
    """
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"boxes must be a torch.Tensor [..., 4], got {type(boxes).__name__}")
    if boxes.dim() < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [..., 4] (x0, y0, x1, y1), got "
                         f"{tuple(boxes.shape)}")
    gh, gw = _grid2(grid)
    H, W = _size2(image_size)
    dt = _float_dtype(boxes)
    b = boxes.to(dt)
    xs = torch.arange(gw + 1, dtype=dt, device=b.device) * (W / gw)
    ys = torch.arange(gh + 1, dtype=dt, device=b.device) * (H / gh)
    x0, y0, x1, y1 = (b[..., i:i + 1] for i in range(4))  # [..., 1]
    ox = (torch.minimum(x1, xs[1:]) - torch.maximum(x0, xs[:-1])).clamp(min=0) / (W / gw)
    oy = (torch.minimum(y1, ys[1:]) - torch.maximum(y0, ys[:-1])).clamp(min=0) / (H / gh)
    out = oy.unsqueeze(-1) * ox.unsqueeze(-2)  # [..., gh, gw]
    return out.flatten(-2).clamp(max=1.0)


def region_hit(indices: torch.Tensor, weights: torch.Tensor, boxes: torch.Tensor,
               grid: Sequence[int], image_size: int | Sequence[int]) -> dict[str, torch.Tensor]:
    """Per clip, query and frame: the attention-weighted share of the kept patches inside the
    target box (see the module docstring for the definitions).

    Args:
        indices: ``[B, K, T, heads, k]`` integer patch indices in ``0 .. N-1`` (row-major in
            ``grid``), ``ARTOutput.region_indices``.
        weights: ``[B, K, T, heads, k]`` floating, non-negative, ``ARTOutput.region_weights``.
        boxes: ``[B, T, 4]`` floating ``x0, y0, x1, y1`` target boxes in model-input pixels
            (exclusive ends); a row with a NaN means no box in that frame.
        grid: the patch grid ``(gh, gw)``, ``N = gh * gw``.
        image_size: the model input side ``S`` or ``(H, W)``.

    Returns:
        ``{"hit": [B, K, T], "chance": [B, T], "valid": [B, T] bool, "overlap": [B, T, N]}``:
        hit and chance in ``[0, 1]`` and NaN where not valid; floating dtype = the promotion
        of float32, ``weights`` and ``boxes`` (float64 in gives float64 out); on
        ``weights``' device. A frame whose kept weights sum to 0 gets hit 0.

    Raises:
        ValueError: a shape, dtype or index that does not fit, naming the argument.
    """
    for name, t in (("indices", indices), ("weights", weights), ("boxes", boxes)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"region_hit: {name} must be a torch.Tensor, got "
                             f"{type(t).__name__}")
    if indices.dim() != 5:
        raise ValueError(f"region_hit: indices must be [B, K, T, heads, k], got "
                         f"{tuple(indices.shape)}")
    if indices.dtype.is_floating_point or indices.dtype == torch.bool or indices.is_complex():
        raise ValueError(f"region_hit: indices must be an integer tensor, got {indices.dtype}")
    if tuple(weights.shape) != tuple(indices.shape):
        raise ValueError(f"region_hit: weights must have the shape of indices "
                         f"{tuple(indices.shape)}, got {tuple(weights.shape)}")
    if not weights.dtype.is_floating_point:
        raise ValueError(f"region_hit: weights must be floating, got {weights.dtype}")
    B, K, T, Hh, k = indices.shape
    if tuple(boxes.shape) != (B, T, 4):
        raise ValueError(f"region_hit: boxes must be [B, T, 4] = [{B}, {T}, 4] (from indices "
                         f"[B, K, T, heads, k]), got {tuple(boxes.shape)}")
    if not boxes.dtype.is_floating_point:
        raise ValueError(f"region_hit: boxes must be floating (NaN rows: no box), got "
                         f"{boxes.dtype}")
    gh, gw = _grid2(grid)
    N = gh * gw
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= N):
        raise ValueError(f"region_hit: indices must lie in 0..{N - 1} (grid {gh}x{gw}), got "
                         f"{int(indices.min())}..{int(indices.max())}")
    dt = _float_dtype(weights, boxes)
    dev = weights.device
    b = boxes.to(dev, dt)
    finite = torch.isfinite(b).all(-1)  # [B, T]
    ov = patch_box_overlap(torch.where(finite.unsqueeze(-1), b, torch.zeros_like(b)), (gh, gw),
                           image_size)  # [B, T, N]
    chance = ov.mean(-1)
    valid = finite & (chance > 0)
    idx = indices.to(dev, torch.int64).reshape(B, K, T, Hh * k)
    g = ov.unsqueeze(1).expand(B, K, T, N).gather(-1, idx)  # [B, K, T, heads * k]
    w = weights.to(dt).reshape(B, K, T, Hh * k)
    ws = w.sum(-1)
    num = (w * g).sum(-1)
    hit = torch.where(ws > 0, num / torch.where(ws > 0, ws, torch.ones_like(ws)),
                      torch.zeros_like(ws))
    nan = torch.tensor(float("nan"), dtype=dt, device=dev)
    return {"hit": torch.where(valid.unsqueeze(1), hit, nan),
            "chance": torch.where(valid, chance, nan), "valid": valid, "overlap": ov}


def region_hit_sums(result: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-clip sums over the valid frames of a :func:`region_hit` result.

    Args:
        result: ``{"hit": [B, K, T], "chance": [B, T], "valid": [B, T] bool, ...}``.

    Returns:
        ``{"hit_sum": [B, K] float64, "chance_sum": [B] float64, "frames": [B] int64}`` on
        the CPU (sums of hit and chance over the clip's valid frames, and their number).
    """
    valid = result["valid"].cpu()
    hit = result["hit"].detach().cpu().double()
    chance = result["chance"].detach().cpu().double()
    zero = torch.zeros((), dtype=torch.float64)
    return {"hit_sum": torch.where(valid.unsqueeze(1), hit, zero).sum(-1),
            "chance_sum": torch.where(valid, chance, zero).sum(-1),
            "frames": valid.sum(-1).to(torch.int64)}


def summarize_region_hit(hit_sum: torch.Tensor, chance_sum: torch.Tensor,
                         frames: torch.Tensor) -> dict[str, Any]:
    """The set-level region hit of the best-matching query from per-clip sums.

    Args:
        hit_sum: ``[n, K]`` floating, each clip's sum of hit over its valid frames.
        chance_sum: ``[n]`` floating, each clip's sum of chance over its valid frames.
        frames: ``[n]`` integer, each clip's number of valid frames.

    Returns:
        ``{"region_hit": float | None, "region_hit_chance": float | None,
        "region_hit_query": int | None, "region_hit_per_query": list of K (float | None),
        "region_hit_frames": int}`` (plain Python values, JSON-ready): the query with the
        highest mean hit over all valid clip-frames (ties: the lowest index), its mean, the
        mean chance over the same clip-frames, every query's mean and the number of valid
        clip-frames. None (and a list of None) when there is no valid clip-frame.
    """
    if hit_sum.dim() != 2:
        raise ValueError(f"hit_sum must be [n, K], got {tuple(hit_sum.shape)}")
    n, K = hit_sum.shape
    if tuple(chance_sum.shape) != (n,) or tuple(frames.shape) != (n,):
        raise ValueError(f"chance_sum and frames must be [n] = [{n}], got "
                         f"{tuple(chance_sum.shape)} and {tuple(frames.shape)}")
    total = int(frames.sum())
    if total == 0:
        return {"region_hit": None, "region_hit_chance": None, "region_hit_query": None,
                "region_hit_per_query": [None] * K, "region_hit_frames": 0}
    per = hit_sum.double().sum(0) / total  # [K]
    best = int(torch.nonzero(per == per.max())[0, 0])
    return {"region_hit": float(per[best]),
            "region_hit_chance": float(chance_sum.double().sum() / total),
            "region_hit_query": best, "region_hit_per_query": [float(v) for v in per],
            "region_hit_frames": total}


class RegionHitAccumulator:
    """Collects per-clip region-hit sums over an evaluation set and reduces them.

    Usage::

        acc = RegionHitAccumulator()
        for batch ...:
            acc.add(region_hit(out.region_indices, out.region_weights, boxes, grid, S))
        metrics = acc.summary()  # see summarize_region_hit

    In distributed evaluation gather :meth:`sums` of every rank (or each rank's per-clip
    sums) and reduce them with :func:`summarize_region_hit` / :meth:`merge`.
    """

    def __init__(self) -> None:
        self._hit: list[torch.Tensor] = []
        self._chance: list[torch.Tensor] = []
        self._frames: list[torch.Tensor] = []
        self.num_queries: int | None = None

    def add(self, result: dict[str, torch.Tensor]) -> None:
        """Add a :func:`region_hit` result (``B`` clips)."""
        self.add_sums(**region_hit_sums(result))

    def add_sums(self, hit_sum: torch.Tensor, chance_sum: torch.Tensor,
                 frames: torch.Tensor) -> None:
        """Add per-clip sums: ``hit_sum [n, K]``, ``chance_sum [n]``, ``frames [n]`` (as
        :func:`region_hit_sums` returns)."""
        if hit_sum.dim() != 2:
            raise ValueError(f"hit_sum must be [n, K], got {tuple(hit_sum.shape)}")
        if self.num_queries is None:
            self.num_queries = int(hit_sum.shape[1])
        elif hit_sum.shape[1] != self.num_queries:
            raise ValueError(f"hit_sum has {hit_sum.shape[1]} queries, earlier batches "
                             f"{self.num_queries}")
        self._hit.append(hit_sum.detach().cpu().double())
        self._chance.append(chance_sum.detach().cpu().double())
        self._frames.append(frames.detach().cpu().to(torch.int64))

    def merge(self, other: RegionHitAccumulator) -> None:
        """Add every clip of ``other`` (e.g. another rank's accumulator)."""
        s = other.sums()
        if s["hit_sum"].shape[0]:
            self.add_sums(**s)

    def sums(self) -> dict[str, torch.Tensor]:
        """``{"hit_sum": [n, K] float64, "chance_sum": [n] float64, "frames": [n] int64}``
        of every clip added so far."""
        K = self.num_queries or 0
        if not self._hit:
            return {"hit_sum": torch.zeros(0, K, dtype=torch.float64),
                    "chance_sum": torch.zeros(0, dtype=torch.float64),
                    "frames": torch.zeros(0, dtype=torch.int64)}
        return {"hit_sum": torch.cat(self._hit), "chance_sum": torch.cat(self._chance),
                "frames": torch.cat(self._frames)}

    def summary(self) -> dict[str, Any]:
        """:func:`summarize_region_hit` of every clip added so far."""
        return summarize_region_hit(**self.sums())
