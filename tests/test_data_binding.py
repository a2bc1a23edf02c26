"""The binding synthetic set: determinism, metadata against pixels, fairness, arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from art_fast.data import Diving48, read_frames
from art_fast.data import binding as bd
from art_fast.data import synthetic as syn
from tests._util import files_bytes

SMALL = dict(classes=6, videos_per_class=3, frames=8, size=48, test_fraction=0.34)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("bind") / "a"
    summary = bd.make_binding(root, seed=0, workers=1, **SMALL)
    return root, summary


def test_layout_and_same_bytes_whatever_the_workers(small_set, tmp_path):
    root, summary = small_set
    assert summary["num_train"] == 12 and summary["num_test"] == 6
    bd.make_binding(tmp_path / "b", seed=0, workers=2, **SMALL)
    bd.make_binding(tmp_path / "c", seed=1, workers=2, **SMALL)
    a, b, c = files_bytes(root), files_bytes(tmp_path / "b"), files_bytes(tmp_path / "c")
    assert a.keys() == b.keys() and a == b
    videos = [k for k in a if k.endswith(".mp4")]
    assert len(videos) == 18
    assert all(a[k] != c[k] for k in videos)
    ds = Diving48(root, "train", num_frames=4, image_size=32)
    assert ds.classes == summary["classes"] and len(set(ds.classes)) == 6
    assert ds.classes[0] == ("checkered-actor, oscillates-first, then-rotates, "
                             "striped-decoy-reversed")
    video, _ = ds[0]
    assert video.shape == (4, 32, 32, 3)
    meta = json.loads((root / "binding_meta.json").read_text())
    assert meta["params"]["kind"] == "binding" and len(meta["videos"]) == 18


def _pattern_error(patch: np.ndarray, kind: str) -> float:
    return float(np.abs(patch.astype(np.float64).mean(-1)
                        - bd._mark_pattern(kind, patch.shape[0])).mean())


def test_decoded_marks_are_where_the_metadata_says(small_set):
    """In the decoded mp4, each recorded mark box holds its own pattern (and not the other)."""
    root, _ = small_set
    meta = json.loads((root / "binding_meta.json").read_text())
    for name, info in meta["videos"].items():
        frames = read_frames(root / "rgb" / f"{name}.mp4", [0, 4, 7])
        assert info["actors"][info["target"]]["mark"] == "checker"
        for a in info["actors"]:
            other = "stripes" if a["mark"] == "checker" else "checker"
            for f, fi in zip(frames, (0, 4, 7)):
                x0, y0, x1, y1 = a["mark_boxes"][fi]
                patch = f[y0:y1, x0:x1]
                own, wrong = _pattern_error(patch, a["mark"]), _pattern_error(patch, other)
                assert own < 40 and wrong > own + 40, (name, fi, own, wrong)


def test_boxes_and_state_against_rendered_pixels():
    """In memory: every mark box holds exactly its pattern, lies inside its actor's box, the
    actors are inside the frame and never overlap, the limb moves without a jump at the
    switch, and the order/switch metadata is the class's."""
    s, f = 64, 12
    for c in range(6):
        for i in range(4):
            frames, meta = bd.render_binding_clip(c, f, s, np.random.default_rng([7, c, i]))
            assert frames.shape == (f, s, s, 3) and frames.dtype == np.uint8
            x, y = bd.CLASS_ORDERS[c]
            assert meta["order"] == [bd.MOTIONS[x], bd.MOTIONS[y]]
            tgt = meta["actors"][meta["target"]]
            dis = meta["actors"][1 - meta["target"]]
            assert tgt["role"] == "target" and tgt["order"] == meta["order"]
            assert dis["order"] == meta["order"][::-1]
            assert meta["actors"][0]["mark_boxes"][0, 0] <= meta["actors"][1]["mark_boxes"][0, 0]
            for a in meta["actors"]:
                assert round(0.4 * f) <= a["switch_frame"] <= round(0.6 * f)
                ab, mb = a["actor_boxes"], a["mark_boxes"]
                assert ab.shape == mb.shape == (f, 4)
                assert (ab[:, :2] >= 0).all() and (ab[:, 2:] <= s).all()
                assert (ab[:, :2] < ab[:, 2:]).all()
                assert (mb[:, :2] >= ab[:, :2]).all() and (mb[:, 2:] <= ab[:, 2:]).all()
                for fi in range(f):
                    x0, y0, x1, y1 = mb[fi]
                    patch = frames[fi, y0:y1, x0:x1].astype(np.float64)
                    want = bd._mark_pattern(a["mark"], x1 - x0)
                    assert np.array_equal(patch, np.repeat(want[..., None], 3, -1))
                    assert patch.mean() == 127.5
                step = np.abs(np.diff(a["angle"])).max() + np.abs(np.diff(a["extension"])).max()
                k = a["switch_frame"]
                jump = (abs(a["angle"][k] - a["angle"][k - 1])
                        + abs(a["extension"][k] - a["extension"][k - 1]))
                assert jump <= step + 1e-9
            # The two actors' boxes are disjoint in every frame (reaches are disjoint).
            b0, b1 = meta["actors"][0]["actor_boxes"], meta["actors"][1]["actor_boxes"]
            overlap_x = np.minimum(b0[:, 2], b1[:, 2]) > np.maximum(b0[:, 0], b1[:, 0])
            overlap_y = np.minimum(b0[:, 3], b1[:, 3]) > np.maximum(b0[:, 1], b1[:, 1])
            assert not (overlap_x & overlap_y).any()


def _signature(angle: np.ndarray, ext: np.ndarray, half: int) -> np.ndarray:
    """Per half: mean |d angle|, |mean d angle|, std d angle, mean |d extension|."""
    da, de = np.diff(angle), np.diff(ext)
    out = []
    for sl in (slice(0, half), slice(half, None)):
        out += [np.abs(da[sl]).mean(), abs(da[sl].mean()), da[sl].std(), np.abs(de[sl]).mean()]
    return np.array(out)


def _nearest_centroid(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-9
    z = (x - mu) / sd
    cents = np.stack([z[train & (y == c)].mean(0) for c in np.unique(y)])
    pred = np.argmin(((z[~train][:, None] - cents[None]) ** 2).sum(-1), 1)
    return float((pred == y[~train]).mean())


def test_fairness_from_the_generator_state():
    """(a) the target's per-half limb signature gives the class; (b) without knowing which
    actor is the target (sum of both, or both ordered by screen x), only the unordered pair
    is readable: about half right. 6 x 200 clips (the default set's draws), last 50 of each
    class held out. Thresholds fixed a priori: (a) >= 0.95, (b) <= 0.55 (chance 1/6; an
    ideal target-agnostic reader is at 0.5)."""
    f, half = 16, 7
    feat_a, feat_sum, feat_pos, labels, train = [], [], [], [], []
    for c in range(6):
        for i in range(200):
            spec = bd.draw_binding_clip(c, f, 64, np.random.default_rng([0, c, i]))
            tgt, dis = spec["actors"]
            assert tgt["role"] == "target"
            sig = {id(a): _signature(a["angle"], a["extension"], half) for a in spec["actors"]}
            feat_a.append(sig[id(tgt)])
            feat_sum.append(sig[id(tgt)] + sig[id(dis)])
            left, right = sorted(spec["actors"], key=lambda a: float(a["center"][0, 0]))
            feat_pos.append(np.concatenate([sig[id(left)], sig[id(right)]]))
            labels.append(c)
            train.append(i < 150)
    y, tr = np.array(labels), np.array(train)
    acc_a = _nearest_centroid(np.array(feat_a), y, tr)
    acc_sum = _nearest_centroid(np.array(feat_sum), y, tr)
    acc_pos = _nearest_centroid(np.array(feat_pos), y, tr)
    print(f"fairness (a) target known {acc_a:.3f}  (b) sum {acc_sum:.3f}  "
          f"by screen order {acc_pos:.3f}")
    assert acc_a >= 0.95
    assert acc_sum <= 0.55 and acc_pos <= 0.55
    # The unordered pair is readable from (b): a class or its reverse, almost always.
    assert _nearest_centroid(np.array(feat_sum), y // 2, tr) >= 0.95
    # The renderer uses exactly these draws.
    _, meta = bd.render_binding_clip(3, f, 64, np.random.default_rng([0, 3, 5]))
    spec = bd.draw_binding_clip(3, f, 64, np.random.default_rng([0, 3, 5]))
    tgt = meta["actors"][meta["target"]]
    assert np.array_equal(tgt["angle"], spec["actors"][0]["angle"])


def test_global_frame_difference_baseline_is_near_chance():
    """(c) From the rendered pixels: the whole-frame mean |frame difference| per frame, plus
    its first-half and second-half means, with nearest centroid: near chance (threshold fixed
    a priori: <= 0.3 for 6 classes, chance 1/6). 6 x 60 clips, last 15 of each held out."""
    f, half = 16, 7
    feats, labels, train = [], [], []
    for c in range(6):
        for i in range(60):
            frames, _ = bd.render_binding_clip(c, f, 64, np.random.default_rng([0, c, i]))
            d = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean((1, 2, 3))
            feats.append(np.concatenate([d, [d[:half].mean(), d[half:].mean(),
                                             d[half:].mean() - d[:half].mean()]]))
            labels.append(c)
            train.append(i < 45)
    acc = _nearest_centroid(np.array(feats), np.array(labels), np.array(train))
    print(f"fairness (c) global frame-difference baseline {acc:.3f}")
    assert acc <= 0.3


# (make_binding keyword arguments, the message of the ValueError they raise)
BAD_ARGUMENTS = [
    (dict(classes=7), "classes must be in 2..6"),
    (dict(classes=1), "classes"),
    (dict(frames=7), "frames must be >= 8"),
    (dict(size=46), "size must be an even number >= 48"),
    (dict(size=65), "size"),
    (dict(videos_per_class=1), "videos_per_class"),
    (dict(workers=0), "workers"),
]


@pytest.mark.parametrize("kwargs,match", BAD_ARGUMENTS,
                         ids=[",".join(f"{k}={v}" for k, v in kw.items())
                              for kw, _ in BAD_ARGUMENTS])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bd.make_binding(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing written before the checks


def test_render_needs_enough_frames():
    with pytest.raises(ValueError, match="frames"):
        bd.render_binding_clip(0, 4, 64, np.random.default_rng(0))


def test_cli_kind_binding(tmp_path, capsys):
    rc = syn.main(["--kind", "binding", "--out", str(tmp_path / "m"), "--classes", "2",
                   "--videos-per-class", "2", "--frames", "8", "--size", "48",
                   "--workers", "1"])
    assert rc == 0
    assert "2 train + 2 test clips, 2 classes" in capsys.readouterr().out
    assert (tmp_path / "m" / "binding_meta.json").is_file()
    assert syn.main(["--kind", "binding", "--out", str(tmp_path / "x"), "--classes", "7"]) == 2
    assert "classes must be in 2..6" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        syn.main(["--kind", "other", "--out", str(tmp_path / "y")])
