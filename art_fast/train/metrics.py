"""Classification metrics and the files that report them.

* :func:`classification_metrics`: top-1, top-5, mean-class accuracy and the confusion matrix
  from class scores and labels;
* :func:`write_confusion_csv`, :func:`write_confusion_png` (the row-normalised matrix drawn
  with matplotlib: class names on both axes, per-cell counts, a colour bar, top-1 and
  mean-class in the title), :func:`write_predictions_csv`;
* :func:`write_curves`: ``curves.png``, the train loss terms and the evaluation accuracies
  per epoch, drawn from ``metrics.jsonl``;
* :class:`MetricsLog`: one JSON line per epoch in ``metrics.jsonl`` (``curves.png`` redrawn
  after each), and TensorBoard scalars when asked for and available.

matplotlib is imported inside the drawing functions only (``import art_fast`` stays light),
and figures are built with :class:`matplotlib.figure.Figure` (Agg, no pyplot, no display).

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
    "read_metrics_jsonl",
    "topk_accuracy",
    "write_confusion_csv",
    "confusion_figure",
    "curves_figure",
    "write_confusion_png",
    "write_curves",
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


#: above this many classes the cells carry no count (too small to read)
CONFUSION_MAX_COUNTS = 40
#: above this many classes the axes carry class indices and a legend file holds the names
CONFUSION_MAX_NAMES = 100


def _names_from_csv(csv_path: str, num_classes: int) -> list[str] | None:
    """The class names of the header of a :func:`write_confusion_csv` file, or None when the
    file is missing, unreadable or does not have ``num_classes`` columns."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f))
    except (OSError, StopIteration, csv.Error, UnicodeDecodeError):
        return None
    names = header[1:]
    return names if len(names) == num_classes else None


def confusion_figure(confusion: torch.Tensor | np.ndarray,
                     class_names: Sequence[str] | None = None, *,
                     top1: float | None = None, mean_class: float | None = None,
                     title: str | None = None, max_side: int = 2400, dpi: int = 100
                     ) -> tuple[Any, dict[str, Any]]:
    """The confusion figure (a :class:`matplotlib.figure.Figure`, not saved) and what it shows.

    Colours are the row-normalised matrix (the share of each true class predicted as each
    class: the diagonal is the per-class recall), white 0 to dark blue 1, with a colour bar;
    each cell carries its count (up to :data:`CONFUSION_MAX_COUNTS` classes). Up to
    :data:`CONFUSION_MAX_NAMES` classes the axes carry the full class names (the prediction
    on x, rotated; the true class on y; font size shrinking with the number of classes);
    beyond, class indices (every n-th) and ``legend`` lists ``index: name``. The title gives
    the number of clips, top-1 and mean-class accuracy (computed from the matrix when not
    given: top-1 = trace / total, mean-class = mean recall over the classes present).

    Returns:
        ``(figure, info)``: ``info`` = ``{"xticklabels", "yticklabels", "cell_text"
        (C lists of C strings, or None when the counts are dropped), "title", "legend"
        (list of ``"i: name"`` lines, or None), "fontsize"}``.
    """
    from matplotlib.figure import Figure

    conf = np.asarray(confusion.cpu() if isinstance(confusion, torch.Tensor) else confusion,
                      dtype=np.int64)
    C = conf.shape[0]
    names = [str(n) for n in class_names] if class_names is not None \
        else [str(i) for i in range(C)]
    if len(names) != C:
        raise ValueError(f"confusion_figure: {len(names)} class names for a {C} x {C} matrix")
    rows = conf.sum(1, keepdims=True)
    norm = conf / np.maximum(rows, 1)
    total = int(conf.sum())
    if top1 is None and total:
        top1 = float(np.trace(conf)) / total
    if mean_class is None and total:
        mean_class = mean_class_accuracy(torch.from_numpy(conf))
    if title is None:
        title = f"Confusion matrix: {total} clips, {C} classes"
        acc = []
        if top1 is not None and math.isfinite(top1):
            acc.append(f"top-1 {100 * top1:.1f}%")
        if mean_class is not None and math.isfinite(mean_class):
            acc.append(f"mean-class {100 * mean_class:.1f}%")
        if acc:
            title += "\n" + ", ".join(acc)

    with_counts = C <= CONFUSION_MAX_COUNTS
    with_names = C <= CONFUSION_MAX_NAMES
    fontsize = float(min(10.0, max(5.0, 200.0 / max(C, 1))))
    # the matrix gets ~0.32 in per class (at least 4 in, at most max_side pixels); the class
    # names fall outside the axes and savefig(bbox_inches="tight") widens the image for them
    side_in = min(max_side / dpi, max(4.0, 0.32 * C + 1.5))
    fig = Figure(figsize=(side_in * 1.3, side_in * 1.15), dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("share of the true class (row-normalised)")
    if with_names:
        ticks = list(range(C))
        xt = yt = names
        legend = None
    else:
        every = math.ceil(C / 50)
        ticks = list(range(0, C, every))
        xt = yt = [str(i) for i in ticks]
        legend = [f"{i}: {n}" for i, n in enumerate(names)]
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(xt, rotation=60 if with_names else 90, ha="right" if with_names
                       else "center", rotation_mode="anchor" if with_names else "default",
                       fontsize=fontsize)
    ax.set_yticklabels(yt, fontsize=fontsize)
    ax.set_xlabel("predicted class" + ("" if with_names else " (index; names in the legend "
                                       "file)"))
    ax.set_ylabel("true class" + ("" if with_names else " (index)"))
    ax.set_title(title, fontsize=11)
    cell_text = None
    if with_counts:
        cell_text = []
        for i in range(C):
            row = []
            for j in range(C):
                txt = str(int(conf[i, j]))
                row.append(txt)
                if conf[i, j] or C <= 12:
                    ax.text(j, i, txt, ha="center", va="center", fontsize=fontsize * 0.9,
                            color="white" if norm[i, j] > 0.5 else "black")
            cell_text.append(row)
    return fig, {"xticklabels": list(xt), "yticklabels": list(yt), "cell_text": cell_text,
                 "title": title, "legend": legend, "fontsize": fontsize}


def write_confusion_png(path: str, confusion: torch.Tensor, max_side: int = 2400, *,
                        class_names: Sequence[str] | None = None, top1: float | None = None,
                        mean_class: float | None = None, title: str | None = None,
                        dpi: int = 100) -> dict[str, Any]:
    """Draw the confusion matrix (:func:`confusion_figure`) into the PNG ``path``.

    ``class_names`` default: the header of ``confusion.csv`` next to ``path`` when it has C
    names (the trainer writes it first), else class indices. ``max_side`` caps the matrix
    part of the figure, in pixels. With more than :data:`CONFUSION_MAX_NAMES` classes the
    names go to ``<path stem>_classes.txt`` (one ``index: name`` per line).

    Returns:
        the ``info`` of :func:`confusion_figure` plus ``"path"`` and ``"legend_path"`` (or
        None).
    """
    C = int(confusion.shape[0])
    if class_names is None:
        class_names = _names_from_csv(
            os.path.join(os.path.dirname(os.path.abspath(path)), "confusion.csv"), C)
    fig, info = confusion_figure(confusion, class_names, top1=top1, mean_class=mean_class,
                                 title=title, max_side=max_side, dpi=dpi)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    info["path"] = path
    info["legend_path"] = None
    if info["legend"] is not None:
        legend_path = os.path.splitext(path)[0] + "_classes.txt"
        with open(legend_path, "w", encoding="utf-8") as f:
            f.write("\n".join(info["legend"]) + "\n")
        info["legend_path"] = legend_path
    return info


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


# --------------------------------------------------------------------------- curves

#: the evaluation accuracies drawn by :func:`curves_figure` (``record["eval"]`` keys)
CURVE_EVAL_KEYS = ("top1", "mean_class")


def read_metrics_jsonl(path: str) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (lines that do not parse as a JSON object, e.g. a
    line cut by a crash, are skipped); when a step appears twice (a resumed run), the last
    record of that step is kept, in the order of the first."""
    records: dict[Any, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                records[rec.get("step", f"line{n}")] = rec
    return list(records.values())


def _curve_x(rec: dict[str, Any]) -> float | None:
    """The epoch of a record: ``epoch + 1`` for a complete epoch (the curve point sits at the
    end of the epoch), ``epoch`` + 0.5 for a record written part-way (e.g. ``max_steps``)."""
    if not isinstance(rec.get("epoch"), (int, float)):
        return None
    return rec["epoch"] + (1.0 if rec.get("epoch_complete", True) else 0.5)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def curves_figure(records: Sequence[dict[str, Any]], *, dpi: int = 100
                  ) -> tuple[Any, dict[str, Any]]:
    """The training-curve figure (not saved) from metrics.jsonl records.

    Left: every train loss term (each key of ``record["train"]``; ``total`` drawn thicker)
    per epoch. Right: ``top1`` and ``mean_class`` of each evaluation (``record["eval"]``), in
    percent. x is the epoch (the end of it; a record written part-way sits at ``epoch +
    0.5``). NaN / null values are left out.

    Returns:
        ``(figure, data)``: ``data = {"train": {term: (xs, ys)}, "eval": {key: (xs, ys in
        [0, 1])}}``; each line of the figure has its key as label.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    train: dict[str, tuple[list[float], list[float]]] = {}
    evals: dict[str, tuple[list[float], list[float]]] = {}
    for rec in records:
        x = _curve_x(rec)
        if x is None:
            continue
        for key, v in (rec.get("train") or {}).items():
            y = _num(v)
            if y is not None:
                xs, ys = train.setdefault(str(key), ([], []))
                xs.append(x)
                ys.append(y)
        ev = rec.get("eval") or {}
        for key in CURVE_EVAL_KEYS:
            y = _num(ev.get(key)) if isinstance(ev, dict) else None
            if y is not None:
                xs, ys = evals.setdefault(key, ([], []))
                xs.append(x)
                ys.append(y)

    fig = Figure(figsize=(12, 4.5), dpi=dpi)
    ax_l, ax_r = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for key in sorted(train, key=lambda k: (k != "total", k)):
        xs, ys = train[key]
        ax_l.plot(xs, ys, marker="o", markersize=3, label=key,
                  linewidth=2.5 if key == "total" else 1.2, color="black" if key == "total"
                  else None)
    ax_l.set_title("train loss terms (mean over the epoch)")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("loss")
    ax_l.grid(alpha=0.3)
    if train:
        ax_l.legend(fontsize=8, ncol=2)
    else:
        ax_l.text(0.5, 0.5, "no train record yet", ha="center", va="center",
                  transform=ax_l.transAxes)
    names = {"top1": "top-1", "mean_class": "mean-class"}
    for key in CURVE_EVAL_KEYS:
        if key in evals:
            xs, ys = evals[key]
            line, = ax_r.plot(xs, [100 * y for y in ys], marker="o", markersize=4,
                              label=key)
            if ys:
                ax_r.annotate(f"{names[key]} {100 * ys[-1]:.1f}%", (xs[-1], 100 * ys[-1]),
                              textcoords="offset points", xytext=(4, 4), fontsize=8,
                              color=line.get_color())
    ax_r.set_title("evaluation accuracy (top-1, mean-class)")
    ax_r.set_xlabel("epoch")
    ax_r.set_ylabel("accuracy (%)")
    ax_r.set_ylim(0, 100)
    ax_r.grid(alpha=0.3)
    if evals:
        ax_r.legend(fontsize=8, loc="lower right")
    else:
        ax_r.text(0.5, 0.5, "no evaluation yet", ha="center", va="center",
                  transform=ax_r.transAxes)
    for ax in (ax_l, ax_r):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig, {"train": train, "eval": evals}


def write_curves(metrics_jsonl_path: str, out_png: str, *, dpi: int = 100) -> dict[str, Any]:
    """Draw :func:`curves_figure` of ``metrics_jsonl_path`` into ``out_png`` (written to a
    temporary file first and renamed, so a reader never sees half a PNG).

    Returns:
        the ``data`` of :func:`curves_figure` plus ``"path"``.
    """
    fig, data = curves_figure(read_metrics_jsonl(metrics_jsonl_path), dpi=dpi)
    tmp = f"{out_png}.tmp{os.getpid()}.png"
    try:
        fig.savefig(tmp, dpi=dpi, facecolor="white")
        os.replace(tmp, out_png)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    data["path"] = out_png
    return data


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
    """``<output_dir>/metrics.jsonl`` (one JSON object per line, appended and flushed),
    ``<output_dir>/curves.png`` redrawn from it after each record (:func:`write_curves`; with
    ``curves=True``) and, optionally, TensorBoard scalars under ``<output_dir>/tensorboard``.

    A failure to draw the curves (e.g. matplotlib missing) logs a warning and never stops
    the run. Only the process that writes (rank 0) should create one.
    """

    def __init__(self, output_dir: str, tensorboard: bool = False, *, curves: bool = True
                 ) -> None:
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.curves_path = os.path.join(output_dir, "curves.png") if curves else None
        self._curves_warned = False
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
        self.draw_curves()
        if self.tb is not None:
            step = int(record.get("step", 0))
            for key, value in _flatten(record).items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)) \
                        and not isinstance(value, bool):
                    self.tb.add_scalar(key, value, step)
            self.tb.flush()

    def draw_curves(self) -> bool:
        """Redraw ``curves.png`` from ``metrics.jsonl``; False (and a warning, once) when that
        fails."""
        if self.curves_path is None:
            return False
        try:
            write_curves(self.path, self.curves_path)
        except Exception as e:  # drawing must never stop training
            (log.debug if self._curves_warned else log.warning)(
                "could not draw %s (%s: %s); training continues", self.curves_path,
                type(e).__name__, e)
            self._curves_warned = True
            return False
        return True

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
