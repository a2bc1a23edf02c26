"""The synthetic fine-grained set: files, format, determinism, and the construction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from art_fast.data import Diving48, make_synthetic, read_frames
from art_fast.data import synthetic as syn
from tests._util import files_bytes

SMALL = dict(classes=3, videos_per_class=3, frames=8, size=40, test_fraction=0.34)




@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "a"
    summary = make_synthetic(root, seed=0, **SMALL)
    return root, summary


def test_layout_and_diving48_format(small_set):
    root, summary = small_set
    assert summary["num_train"] == 6 and summary["num_test"] == 3
    train = json.loads((root / "Diving48_V2_train.json").read_text())
    test = json.loads((root / "Diving48_V2_test.json").read_text())
    vocab = json.loads((root / "Diving48_vocab.json").read_text())
    assert len(vocab) == 3 and all(len(v) == 4 for v in vocab)
    for e in train + test:
        assert set(e) == {"vid_name", "label", "start_frame", "end_frame"}
        assert (root / "rgb" / f"{e['vid_name']}.mp4").is_file()
        assert e["start_frame"] == 0 and e["end_frame"] == 8
    names = [e["vid_name"] for e in train + test]
    assert any(n.startswith("-") for n in names) and any(n.startswith("_") for n in names)
    assert sorted(e["label"] for e in test) == [0, 1, 2]  # stratified
    ds = Diving48(root, "train", num_frames=4, image_size=32)
    assert ds.classes == summary["classes"] and len(set(ds.classes)) == 3
    assert ds.classes[1] == "moves-right, fast, straight-path, checkered-square"
    video, label = ds[0]
    assert video.shape == (4, 32, 32, 3) and label == ds.labels[0]
    assert len(Diving48(root, "test")) == 3


def test_same_seed_same_bytes_other_seed_differs(small_set, tmp_path):
    root, _ = small_set
    make_synthetic(tmp_path / "b", seed=0, **SMALL)
    make_synthetic(tmp_path / "c", seed=1, **SMALL)
    a, b, c = files_bytes(root), files_bytes(tmp_path / "b"), files_bytes(tmp_path / "c")
    assert a.keys() == b.keys() and a == b
    videos = [k for k in a if k.endswith(".mp4")]
    assert len(videos) == 9
    assert all(a[k] != c[k] for k in videos)


def test_cue_is_visible_and_moves_as_its_class_says(small_set):
    """The decoded pixels inside the recorded cue box are the checkered square, and the box
    moves in the direction and at the speed of the class tokens."""
    root, summary = small_set
    meta = json.loads((root / "synthetic_meta.json").read_text())
    speeds = {}
    for name, info in meta["videos"].items():
        boxes = np.array(info["cue_boxes_xywh"])
        direction, speed = summary["vocab"][info["label"]][:2]
        dx, dy = boxes[-1, :2] - boxes[0, :2]
        ux, uy = syn._DIRECTIONS[direction]
        assert dx * ux + dy * uy > 0 and abs(dx * uy - dy * ux) <= 1, (name, dx, dy)
        speeds.setdefault(speed, []).append(float(np.hypot(dx, dy)))
        frames = read_frames(root / "rgb" / f"{name}.mp4", [0, 7])
        for f, (x, y, w, h) in zip(frames, boxes[[0, 7]]):
            patch = f[y:y + h, x:x + w].astype(np.float64).mean(-1)
            cell = max(2, w // 3)
            yy, xx = np.mgrid[0:h, 0:w]
            checker = (((yy // cell) + (xx // cell)) % 2) * 255.0
            assert np.abs(patch - checker).mean() < 40, name
    assert min(speeds["fast"]) > 2 * max(speeds["slow"])


def test_distractors_do_not_depend_on_the_label():
    """Distractor and global motion draws use the same code path for every class: with one
    generator state, two different classes give identical frames outside the cue."""
    a, box_a = syn.render_clip(("moves-right", "slow", "straight-path"), 6, 48,
                               np.random.default_rng(5))
    b, box_b = syn.render_clip(("moves-up", "fast", "straight-path"), 6, 48,
                               np.random.default_rng(5))
    outside = np.ones(a.shape[:3], bool)
    for f in range(6):
        for (x, y, w, h) in (box_a[f], box_b[f]):
            outside[f, y:y + h, x:x + w] = False
    assert np.array_equal(a[outside], b[outside])
    assert not np.array_equal(a, b)


def test_vocab_and_argument_errors(tmp_path):
    v = syn.synthetic_vocab(syn.MAX_CLASSES)
    assert len({tuple(x) for x in v}) == syn.MAX_CLASSES
    with pytest.raises(ValueError, match="classes"):
        make_synthetic(tmp_path, classes=1)
    with pytest.raises(ValueError, match="size"):
        make_synthetic(tmp_path, size=41)
    with pytest.raises(ValueError, match="videos_per_class"):
        make_synthetic(tmp_path, videos_per_class=1)


def test_main_entry_point(tmp_path, capsys):
    rc = syn.main(["--out", str(tmp_path / "m"), "--classes", "2", "--videos-per-class", "2",
                   "--frames", "4", "--size", "40", "--seed", "3"])
    assert rc == 0
    assert "2 train + 2 test clips, 2 classes" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "m" / "Diving48_vocab.json").read_text())) == 2
    assert syn.main(["--out", str(tmp_path / "x"), "--classes", "99"]) == 2
    with pytest.raises(SystemExit):
        syn.main(["--classes", "2"])  # --out is required
