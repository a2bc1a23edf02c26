"""Metrics against hand-computed small examples; the confusion CSV and PNG; metrics.jsonl."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch

from art_fast.train.metrics import (
    MetricsLog,
    RunningMeans,
    classification_metrics,
    confusion_matrix,
    mean_class_accuracy,
    topk_accuracy,
    write_confusion_csv,
    write_confusion_png,
    write_png,
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


def _read_png(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks.setdefault(kind, b"")
        chunks[kind] += body
        pos += 12 + n
    w, h, depth, color = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    raw = zlib.decompress(chunks[b"IDAT"])
    rows = [raw[y * (3 * w + 1):(y + 1) * (3 * w + 1)] for y in range(h)]
    assert all(r[0] == 0 for r in rows)  # filter type none
    return np.frombuffer(b"".join(r[1:] for r in rows), np.uint8).reshape(h, w, 3)


def test_png_writer_roundtrip(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    write_png(str(tmp_path / "a.png"), img)
    assert np.array_equal(_read_png(str(tmp_path / "a.png")), img)
    try:  # an independent decoder when one is installed
        from PIL import Image
    except ImportError:
        return
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png").convert("RGB")), img)


def test_confusion_files(tmp_path):
    conf = confusion_matrix(SCORES.argmax(1), LABELS, 3)
    write_confusion_csv(str(tmp_path / "c.csv"), conf, ["a", "b", "c,d"])
    lines = (tmp_path / "c.csv").read_text().splitlines()
    assert lines[0] == 'true\\pred,a,b,"c,d"' and lines[1] == "a,1,1,0"
    write_confusion_png(str(tmp_path / "c.png"), conf)
    img = _read_png(str(tmp_path / "c.png"))
    cell = img.shape[0] // 3
    assert img.shape[0] == img.shape[1] == 3 * cell
    mid = cell // 2
    # row 1 (class b) is all in column 2 -> darkest; its column 0 is 0 -> white
    dark, white = img[cell + mid, 2 * cell + mid], img[cell + mid, mid]
    assert white.tolist() == [255, 255, 255] and dark.sum() < 200


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
