"""Classification metrics and the files that report them.

* :func:`classification_metrics`: top-1, top-5, mean-class accuracy and the confusion matrix
  from class scores and labels;
* :func:`write_confusion_csv`, :func:`write_confusion_png` (a row-normalised heat map written
  by a small zlib PNG encoder: no imaging library needed), :func:`write_predictions_csv`;
* :class:`MetricsLog`: one JSON line per epoch in ``metrics.jsonl``, and TensorBoard scalars
  when asked for and available.

Conventions: the confusion matrix has the true class in rows and the prediction in columns;
mean-class accuracy is the mean per-class recall over the classes present in the evaluated
set (a class with no sample has no recall and is left out); top-5 is top-min(5, C).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "MetricsLog",
    "RunningMeans",
    "classification_metrics",
    "confusion_matrix",
    "mean_class_accuracy",
    "topk_accuracy",
    "write_confusion_csv",
    "write_confusion_png",
    "write_png",
    "write_predictions_csv",
]

log = logging.getLogger(__name__)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the ``min(k, C)`` highest scores.

    Ties are broken by :func:`torch.topk` (lower index first is not guaranteed), as usual.
    """
    if scores.shape[0] == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return float((top == labels.view(-1, 1)).any(dim=1).float().mean())


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int
                     ) -> torch.Tensor:
    """int64 ``[C, C]``: entry ``[i, j]`` counts samples of class ``i`` predicted as ``j``."""
    idx = labels.long().view(-1) * num_classes + preds.long().view(-1)
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes,
                                                                          num_classes)


def mean_class_accuracy(confusion: torch.Tensor) -> float:
    """Mean per-class recall over the classes with at least one sample."""
    rows = confusion.sum(1)
    present = rows > 0
    if not bool(present.any()):
        return float("nan")
    recall = confusion.diagonal()[present].double() / rows[present].double()
    return float(recall.mean())


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor,
                           num_classes: int | None = None) -> dict[str, Any]:
    """``{top1, top5, mean_class, num_samples, confusion}`` from ``scores`` ``[N, C]`` (any
    monotone scores: logits or probabilities) and ``labels`` ``[N]``.

    ``confusion`` is an int64 tensor ``[C, C]``; the rest are Python numbers (accuracies in
    [0, 1]).
    """
    scores = scores.detach().float().cpu()
    labels = labels.detach().long().cpu()
    C = scores.shape[1] if num_classes is None else num_classes
    preds = scores.argmax(1)
    conf = confusion_matrix(preds, labels, C)
    return {
        "top1": topk_accuracy(scores, labels, 1),
        "top5": topk_accuracy(scores, labels, 5),
        "mean_class": mean_class_accuracy(conf),
        "num_samples": int(labels.numel()),
        "confusion": conf,
    }


# --------------------------------------------------------------------------- files

def write_confusion_csv(path: str, confusion: torch.Tensor,
                        class_names: Sequence[str] | None = None) -> None:
    """The confusion matrix as CSV: a header ``true\\pred,<class 0>,...``, one row per true
    class (first column: its name), counts as integers."""
    C = confusion.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(C)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["true\\pred", *names])
        for i in range(C):
            w.writerow([names[i], *(int(x) for x in confusion[i].tolist())])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_png(path: str, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image ``[H, W, 3]`` as a PNG (8-bit, no filter, zlib level 9)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_png expects [H, W, 3] uint8, got {rgb.shape}")
    h, w = rgb.shape[:2]
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    png = (b"\x89PNG\r\n\x1a\n"
           + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + _png_chunk(b"IDAT", zlib.compress(raw, 9))
           + _png_chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


def _colormap(x: np.ndarray) -> np.ndarray:
    """White (0) -> dark blue (1), for values in [0, 1]."""
    lo = np.array([255.0, 255.0, 255.0])
    mid = np.array([107.0, 174.0, 214.0])
    hi = np.array([8.0, 48.0, 107.0])
    x = np.clip(x, 0.0, 1.0)[..., None]
    out = np.where(x < 0.5, lo + (mid - lo) * (x / 0.5), mid + (hi - mid) * ((x - 0.5) / 0.5))
    return out.round().astype(np.uint8)


def write_confusion_png(path: str, confusion: torch.Tensor, max_side: int = 800) -> None:
    """A heat map of the row-normalised confusion matrix (true class = row, top to bottom;
    prediction = column, left to right; white 0 to dark blue 1), each cell a square of pixels,
    with a one-pixel grey grid when cells are at least 4 pixels wide. Class names are in the
    CSV next to it."""
    conf = confusion.double()
    rows = conf.sum(1, keepdim=True).clamp_min(1)
    norm = (conf / rows).numpy()
    C = norm.shape[0]
    cell = max(1, min(32, max_side // max(C, 1)))
    img = _colormap(np.kron(norm, np.ones((cell, cell))))
    if cell >= 4:
        img[::cell, :, :] = 200
        img[:, ::cell, :] = 200
    write_png(path, img)


def write_predictions_csv(path: str, rows: Sequence[dict[str, Any]],
                          class_names: Sequence[str] | None = None) -> None:
    """One line per evaluated sample: ``index, path, label, prediction, correct, top5,
    top5_scores`` and, when the rows carry ``scores``, one ``score_<c>`` column per class
    (softmax probabilities averaged over the views)."""
    with_scores = bool(rows) and rows[0].get("scores") is not None
    header = ["index", "path", "label", "prediction", "correct", "top5", "top5_scores"]
    if with_scores:
        C = len(rows[0]["scores"])
        header += [f"score_{c}" for c in range(C)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            line = [r["index"], r["path"], r["label"], r["prediction"],
                    int(r["label"] == r["prediction"]),
                    " ".join(str(int(c)) for c in r["top5"]),
                    " ".join(f"{s:.6f}" for s in r["top5_scores"])]
            if with_scores:
                line += [f"{s:.6f}" for s in r["scores"]]
            w.writerow(line)


# --------------------------------------------------------------------------- logs

class RunningMeans:
    """Sums and counts of named scalars (loss terms), weighted by batch size; picklable into
    a checkpoint as plain floats so a resumed epoch reports the whole epoch."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.sums: dict[str, float] = dict((state or {}).get("sums", {}))
        self.count: float = float((state or {}).get("count", 0.0))

    def add(self, values: dict[str, float], n: int) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * n
        self.count += n

    def means(self) -> dict[str, float]:
        return {k: v / self.count for k, v in self.sums.items()} if self.count else {}

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.integer, np.floating)):
        return _jsonable(x.item())
    return x


class MetricsLog:
    """``<output_dir>/metrics.jsonl`` (one JSON object per line, appended and flushed) and,
    optionally, TensorBoard scalars under ``<output_dir>/tensorboard``.

    Only the process that writes (rank 0) should create one.
    """

    def __init__(self, output_dir: str, tensorboard: bool = False) -> None:
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception as e:  # ImportError or a broken tensorboard install
                log.warning("train.tensorboard=true but TensorBoard is unavailable (%s: %s); "
                            "install it with `pip install tensorboard`. Continuing with "
                            "metrics.jsonl only.", type(e).__name__, e)
            else:
                self.tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one JSON line; numbers also go to TensorBoard (by step)."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")
            f.flush()
        if self.tb is not None:
            step = int(record.get("step", 0))
            for key, value in _flatten(record).items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)) \
                        and not isinstance(value, bool):
                    self.tb.add_scalar(key, value, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
