"""Metrics against hand-computed small examples; the confusion CSV and PNG (matplotlib);
metrics.jsonl and curves.png."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch
from PIL import Image

from art_fast.train.metrics import (
    MetricsLog,
    RunningMeans,
    classification_metrics,
    confusion_figure,
    confusion_matrix,
    curves_figure,
    mean_class_accuracy,
    read_metrics_jsonl,
    topk_accuracy,
    write_confusion_csv,
    write_confusion_png,
    write_curves,
)

# 5 samples, 3 classes. Rankings (best first): s0: 0,1,2  s1: 1,0,2  s2: 2,1,0  s3: 0,2,1
# s4: 1,2,0. Labels 0, 0, 1, 2, 2.
SCORES = torch.tensor([[0.9, 0.05, 0.05],
                       [0.3, 0.6, 0.1],
                       [0.1, 0.3, 0.6],
                       [0.5, 0.1, 0.4],
                       [0.1, 0.5, 0.4]])
LABELS = torch.tensor([0, 0, 1, 2, 2])


def test_hand_computed():
    # top-1: only s0 is right -> 1/5
    assert topk_accuracy(SCORES, LABELS, 1) == pytest.approx(0.2)
    # top-2: s0 yes, s1 yes (0 is 2nd), s2 yes (1 is 2nd), s3 yes (2 is 2nd), s4 yes -> 5/5
    assert topk_accuracy(SCORES, LABELS, 2) == pytest.approx(1.0)
    conf = confusion_matrix(SCORES.argmax(1), LABELS, 3)
    # rows = true class, cols = prediction: preds are 0, 1, 2, 0, 1
    assert conf.tolist() == [[1, 1, 0],
                             [0, 0, 1],
                             [1, 1, 0]]
    # per-class recall: 1/2, 0/1, 0/2 -> mean 1/6
    assert mean_class_accuracy(conf) == pytest.approx(1 / 6)
    m = classification_metrics(SCORES, LABELS)
    assert m["top1"] == pytest.approx(0.2) and m["top5"] == 1.0  # top-min(5, C)
    assert m["mean_class"] == pytest.approx(1 / 6) and m["num_samples"] == 5
    assert torch.equal(m["confusion"], conf)


def test_top5_and_absent_classes():
    # 7 classes; label 6 ranked 6th for sample 0 (outside the top 5), 1st for sample 1
    s = torch.tensor([[7, 6, 5, 4, 3, 0, 2.0], [0, 0, 0, 0, 0, 0, 1.0]])
    y = torch.tensor([6, 6])
    m = classification_metrics(s, y)
    assert m["top1"] == 0.5 and m["top5"] == 0.5
    # classes 0..5 have no sample: mean-class is over class 6 alone -> recall 1/2
    assert m["mean_class"] == 0.5
    assert m["confusion"].sum() == 2 and m["confusion"][6].tolist() == [1, 0, 0, 0, 0, 0, 1]


def test_mean_class_differs_from_top1_under_imbalance():
    # class 0: 8 samples all right; class 1: 2 samples all wrong -> top1 0.8, mean-class 0.5
    s = torch.tensor([[1.0, 0.0]] * 10)
    y = torch.tensor([0] * 8 + [1] * 2)
    m = classification_metrics(s, y)
    assert m["top1"] == pytest.approx(0.8) and m["mean_class"] == pytest.approx(0.5)


def _png_size(path):
    img = Image.open(path)
    img.load()  # decodes the whole file
    return img.size


def test_confusion_files(tmp_path):
    conf = confusion_matrix(SCORES.argmax(1), LABELS, 3)
    write_confusion_csv(str(tmp_path / "c.csv"), conf, ["a", "b", "c,d"])
    lines = (tmp_path / "c.csv").read_text().splitlines()
    assert lines[0] == 'true\\pred,a,b,"c,d"' and lines[1] == "a,1,1,0"
    names = ["a", "a rather long class name that must not be cut at forty characters", "c,d"]
    info = write_confusion_png(str(tmp_path / "c.png"), conf, class_names=names)
    w, h = _png_size(tmp_path / "c.png")
    assert 300 <= w <= 3000 and 300 <= h <= 3000
    assert info["xticklabels"] == names and info["yticklabels"] == names  # full names
    assert info["cell_text"] == [["1", "1", "0"], ["0", "0", "1"], ["1", "1", "0"]]
    # top-1 and mean-class from the matrix when not given: 1/5 and 1/6
    assert "top-1 20.0%" in info["title"] and "mean-class 16.7%" in info["title"]
    assert "5 clips" in info["title"] and info["legend_path"] is None
    info = write_confusion_png(str(tmp_path / "d.png"), conf, top1=0.5, mean_class=0.25)
    assert "top-1 50.0%" in info["title"] and "mean-class 25.0%" in info["title"]
    assert info["xticklabels"] == ["0", "1", "2"]  # no names, no confusion.csv next to it


def test_confusion_png_takes_the_names_of_the_csv_next_to_it(tmp_path):
    # the trainer writes confusion.csv, then calls write_confusion_png(path, confusion)
    conf = confusion_matrix(SCORES.argmax(1), LABELS, 3)
    write_confusion_csv(str(tmp_path / "confusion.csv"), conf, ["x", "y", "z, w"])
    info = write_confusion_png(str(tmp_path / "confusion.png"), conf)
    assert info["yticklabels"] == ["x", "y", "z, w"]


def test_confusion_figure_draws_names_counts_and_a_colour_bar():
    conf = torch.tensor([[3, 1], [0, 4]])
    fig, info = confusion_figure(conf, ["walk", "run"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["walk", "run"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["walk", "run"]
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "3", "4"]
    assert len(fig.axes) == 2  # the matrix and its colour bar
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    # the colours are the row-normalised matrix
    assert ax.images[0].get_array().tolist() == [[0.75, 0.25], [0.0, 1.0]]
    with pytest.raises(ValueError, match="class names"):
        confusion_figure(conf, ["one"])


def test_confusion_many_classes(tmp_path):
    C = 60  # names kept, counts dropped
    conf = torch.eye(C, dtype=torch.int64) * 2
    names = [f"class {i} with a name" for i in range(C)]
    fig, info = confusion_figure(conf, names)
    assert info["cell_text"] is None and not fig.axes[0].texts
    assert info["xticklabels"] == names and info["fontsize"] == 5.0
    C = 120  # indices on the axes, the names in a legend file
    conf = torch.eye(C, dtype=torch.int64)
    names = [f"n{i}" for i in range(C)]
    info = write_confusion_png(str(tmp_path / "big.png"), conf, class_names=names)
    w, h = _png_size(tmp_path / "big.png")
    assert 500 <= w <= 4000 and 500 <= h <= 4000
    assert info["xticklabels"][:3] == ["0", "3", "6"]  # every ceil(120 / 50) = 3rd index
    legend = (tmp_path / "big_classes.txt").read_text().splitlines()
    assert info["legend_path"] == str(tmp_path / "big_classes.txt")
    assert len(legend) == 120 and legend[7] == "7: n7"


# a hand-written metrics.jsonl: 2 complete epochs (eval after each), then a record written
# part-way through epoch 2 (max_steps) with a NaN eval value; a bad line is skipped
JSONL = [
    {"epoch": 0, "step": 10, "epoch_complete": True, "train": {"total": 2.0, "ce": 1.5},
     "eval": {"top1": 0.25, "mean_class": 0.2}},
    {"epoch": 1, "step": 20, "epoch_complete": True, "train": {"total": 1.0, "ce": 0.75}},
    {"epoch": 2, "step": 25, "epoch_complete": False, "train": {"total": 0.5, "ce": None},
     "eval": {"top1": 0.5, "mean_class": None}},
]


def _write_jsonl(path, records, bad_line=True):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        if bad_line:
            f.write('{"epoch": 3, "ste')  # a line cut by a crash


def test_curves_from_a_hand_written_jsonl(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl", JSONL)
    records = read_metrics_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in records] == [10, 20, 25]
    fig, data = curves_figure(records)
    assert data["train"]["total"] == ([1.0, 2.0, 2.5], [2.0, 1.0, 0.5])
    assert data["train"]["ce"] == ([1.0, 2.0], [1.5, 0.75])  # the null left out
    assert data["eval"]["top1"] == ([1.0, 2.5], [0.25, 0.5])
    assert data["eval"]["mean_class"] == ([1.0], [0.2])
    loss_ax, acc_ax = fig.axes
    lines = {ln.get_label(): ln for ln in loss_ax.get_lines()}
    assert set(lines) == {"total", "ce"}
    assert list(lines["total"].get_ydata()) == [2.0, 1.0, 0.5]
    assert list(lines["total"].get_xdata()) == [1.0, 2.0, 2.5]
    acc = {ln.get_label(): ln for ln in acc_ax.get_lines()}
    assert list(acc["top1"].get_ydata()) == [25.0, 50.0]  # percent
    assert list(acc["mean_class"].get_ydata()) == [20.0]
    assert acc_ax.get_ylabel() == "accuracy (%)" and loss_ax.get_xlabel() == "epoch"
    out = write_curves(str(tmp_path / "metrics.jsonl"), str(tmp_path / "curves.png"))
    assert out["path"] == str(tmp_path / "curves.png")
    w, h = _png_size(tmp_path / "curves.png")
    assert 600 <= w <= 2000 and 300 <= h <= 1000
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_curves_of_a_resumed_run_keep_the_last_record_of_a_step(tmp_path):
    again = dict(JSONL[1], train={"total": 0.9, "ce": 0.7})
    _write_jsonl(tmp_path / "m.jsonl", [JSONL[0], JSONL[1], again], bad_line=False)
    _, data = curves_figure(read_metrics_jsonl(str(tmp_path / "m.jsonl")))
    assert data["train"]["total"] == ([1.0, 2.0], [2.0, 0.9])


def test_running_means_and_jsonl(tmp_path):
    r = RunningMeans()
    r.add({"total": 2.0}, 2)
    r.add({"total": 5.0}, 1)
    again = RunningMeans(r.state_dict())
    assert again.means() == {"total": pytest.approx(3.0)}
    log = MetricsLog(str(tmp_path), tensorboard=False)
    log.write({"epoch": 0, "step": 3, "eval": {"top1": float("nan")}, "t": torch.tensor(1.5)})
    log.write({"epoch": 1, "step": 6})
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"epoch": 0, "step": 3, "eval": {"top1": None}, "t": 1.5},
                     {"epoch": 1, "step": 6}]
    assert _png_size(tmp_path / "curves.png")[0] > 0  # redrawn after each record


def test_metrics_log_redraws_the_curves(tmp_path):
    log = MetricsLog(str(tmp_path))
    log.write(JSONL[0])
    log.write(JSONL[1])
    fig, data = curves_figure(read_metrics_jsonl(log.path))
    assert data["train"]["total"] == ([1.0, 2.0], [2.0, 1.0])
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert not (MetricsLog(str(tmp_path / "x"), curves=False)).draw_curves()


def test_metrics_log_survives_a_drawing_failure(tmp_path, monkeypatch, caplog):
    import art_fast.train.metrics as metrics_mod

    def broken(*args, **kwargs):
        raise RuntimeError("no display, no fonts, nothing")

    monkeypatch.setattr(metrics_mod, "write_curves", broken)
    log = MetricsLog(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="art_fast.train.metrics"):
        log.write({"epoch": 0, "step": 1, "train": {"total": 1.0}})
        log.write({"epoch": 1, "step": 2, "train": {"total": 0.5}})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "curves.png" in warnings[0].getMessage()  # warned once
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "curves.png").exists()


def test_tensorboard_missing_is_a_clear_message(tmp_path, caplog):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except Exception:
        with caplog.at_level("WARNING"):
            log = MetricsLog(str(tmp_path), tensorboard=True)
        assert log.tb is None and "pip install tensorboard" in caplog.text
    else:
        log = MetricsLog(str(tmp_path), tensorboard=True)
        log.write({"step": 1, "train": {"total": 1.0}})
        log.close()
        assert (tmp_path / "tensorboard").is_dir()


def test_importing_does_not_load_matplotlib():
    code = ("import sys, art_fast, art_fast.train, art_fast.train.metrics, art_fast.viz; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
