"""Dataset readers on fixture files in the official formats, written here into tmp_path, and
the broken-video policy."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch

from art_fast.data import (
    BadVideoLog,
    BadVideoPolicy,
    Diving48,
    FineGym,
    Kinetics400,
    RobustVideoDataset,
    SomethingSomethingV2,
    VideoDecodeError,
    VideoList,
    diving48_sentence,
    finegym_classes,
    parse_finegym_categories,
)
from tests._util import level, make_frames, write_corrupt, write_video

NF = 12  # frames per fixture video

# The 48 classes of the real Diving48_vocab.json.
DIVING48_VOCAB = [
    ["Back", "15som", "05Twis", "FREE"], ["Back", "15som", "15Twis", "FREE"],
    ["Back", "15som", "25Twis", "FREE"], ["Back", "15som", "NoTwis", "PIKE"],
    ["Back", "15som", "NoTwis", "TUCK"], ["Back", "25som", "15Twis", "PIKE"],
    ["Back", "25som", "25Twis", "PIKE"], ["Back", "25som", "NoTwis", "PIKE"],
    ["Back", "25som", "NoTwis", "TUCK"], ["Back", "2som", "15Twis", "FREE"],
    ["Back", "2som", "25Twis", "FREE"], ["Back", "35som", "NoTwis", "PIKE"],
    ["Back", "35som", "NoTwis", "TUCK"], ["Back", "3som", "NoTwis", "PIKE"],
    ["Back", "3som", "NoTwis", "TUCK"], ["Back", "Dive", "NoTwis", "PIKE"],
    ["Back", "Dive", "NoTwis", "TUCK"], ["Forward", "15som", "1Twis", "FREE"],
    ["Forward", "15som", "2Twis", "FREE"], ["Forward", "15som", "NoTwis", "PIKE"],
    ["Forward", "1som", "NoTwis", "PIKE"], ["Forward", "25som", "1Twis", "PIKE"],
    ["Forward", "25som", "2Twis", "PIKE"], ["Forward", "25som", "3Twis", "PIKE"],
    ["Forward", "25som", "NoTwis", "PIKE"], ["Forward", "25som", "NoTwis", "TUCK"],
    ["Forward", "35som", "NoTwis", "PIKE"], ["Forward", "35som", "NoTwis", "TUCK"],
    ["Forward", "45som", "NoTwis", "TUCK"], ["Forward", "Dive", "NoTwis", "PIKE"],
    ["Forward", "Dive", "NoTwis", "STR"], ["Inward", "15som", "NoTwis", "PIKE"],
    ["Inward", "15som", "NoTwis", "TUCK"], ["Inward", "25som", "NoTwis", "PIKE"],
    ["Inward", "25som", "NoTwis", "TUCK"], ["Inward", "35som", "NoTwis", "TUCK"],
    ["Inward", "Dive", "NoTwis", "PIKE"], ["Reverse", "15som", "05Twis", "FREE"],
    ["Reverse", "15som", "15Twis", "FREE"], ["Reverse", "15som", "25Twis", "FREE"],
    ["Reverse", "15som", "35Twis", "FREE"], ["Reverse", "15som", "NoTwis", "PIKE"],
    ["Reverse", "25som", "15Twis", "PIKE"], ["Reverse", "25som", "NoTwis", "PIKE"],
    ["Reverse", "25som", "NoTwis", "TUCK"], ["Reverse", "35som", "NoTwis", "TUCK"],
    ["Reverse", "Dive", "NoTwis", "PIKE"], ["Reverse", "Dive", "NoTwis", "TUCK"],
]


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return make_frames(NF)


@pytest.fixture(scope="module")
def master(tmp_path_factory, frames) -> dict[str, bytes]:
    """Encoded bytes of one mp4 and one webm, copied under every fixture name (fast)."""
    d = tmp_path_factory.mktemp("master")
    return {ext: open(write_video(d / f"m.{ext}", frames), "rb").read()
            for ext in ("mp4", "webm")}


def _put(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return os.fspath(path)


def _levels(video: torch.Tensor) -> list[int]:
    """The frame numbers of a decoded clip [T, H, W, 3], read back from the grey levels."""
    table = {level(k): k for k in range(12)}
    out = []
    for f in video:
        m = float(f[f.shape[0] // 3:, f.shape[1] // 3:].double().mean())
        best = min(table, key=lambda lv: abs(lv - m))
        assert abs(best - m) < 5, m
        out.append(table[best])
    return out


# ------------------------------------------------------------------------------ Diving48


def test_diving48_sentence_example_and_fallback():
    assert diving48_sentence(["Inward", "25som", "NoTwis", "PIKE"]) == (
        "inward take-off, two and a half somersaults, no twist, pike position")
    assert diving48_sentence(["Back", "Dive", "05Twis", "STR"]) == (
        "back take-off, half a somersault, half a twist, straight position")
    assert diving48_sentence(["moves-left", "fast", "zigzag", "PIKE"]) == (
        "moves-left, fast, zigzag, pike position")
    with pytest.raises(ValueError, match="4 tokens"):
        diving48_sentence(["Back", "Dive"])


def test_diving48_all_48_real_classes_give_distinct_sentences():
    assert len(DIVING48_VOCAB) == 48
    assert len({tuple(v) for v in DIVING48_VOCAB}) == 48
    sentences = [diving48_sentence(v) for v in DIVING48_VOCAB]
    assert len(set(sentences)) == 48
    tokens = {t for v in DIVING48_VOCAB for t in v}
    for s in sentences:  # every token was translated, none left raw
        assert not any(t in s.split(", ") for t in tokens), s
        assert s.split(", ")[0].endswith("take-off") and s.endswith("position")


def _diving_root(tmp_path, master, layout: str) -> str:
    root = tmp_path / "diving48"
    vdir = root / "rgb" if layout == "rgb" else root
    names = ["-mmq0PT-u8k_00155", "_8Vy3dlHg2w_00000", "9jZYYkjJ6hw_00011", "zz_missing"]
    train = [{"vid_name": n, "label": i % 3, "start_frame": 0, "end_frame": NF}
             for i, n in enumerate(names)]
    test = [{"vid_name": names[0], "label": 2, "start_frame": 4, "end_frame": 8}]
    for n in names[:3]:
        _put(vdir / f"{n}.mp4", master["mp4"])
    os.makedirs(root, exist_ok=True)
    (root / "Diving48_V2_train.json").write_text(json.dumps(train))
    (root / "Diving48_V2_test.json").write_text(json.dumps(test))
    (root / "Diving48_vocab.json").write_text(json.dumps(DIVING48_VOCAB[:3]))
    return os.fspath(root)


@pytest.mark.parametrize("layout", ["rgb", "flat"])
def test_diving48_reader(tmp_path, master, layout):
    root = _diving_root(tmp_path, master, layout)
    ds = Diving48(root, "train", num_frames=4, image_size=24)
    assert ds.train is True
    assert ds.classes == [diving48_sentence(v) for v in DIVING48_VOCAB[:3]]
    assert len(ds) == 3 and ds.missing == 1 and ds.labels == [0, 1, 2]
    assert os.path.basename(ds.path_of(0)) == "-mmq0PT-u8k_00155.mp4"
    assert os.path.dirname(ds.path_of(0)).endswith("rgb") == (layout == "rgb")
    video, label = ds[0]
    assert video.dtype == torch.uint8 and video.shape == (4, 24, 24, 3) and label == 0


def test_diving48_start_end_restrict_sampling(tmp_path, master):
    root = _diving_root(tmp_path, master, "rgb")
    ds = Diving48(root, "test", num_frames=4, image_size=24)  # frames [4, 8)
    assert ds.train is False
    video, label = ds[0]
    assert label == 2 and _levels(video) == [4, 5, 6, 7]
    tr = Diving48(root, "test", num_frames=4, image_size=24, train=True, seed=1)
    for e in range(5):
        got = _levels(tr[(0, e)][0])
        assert all(4 <= k < 8 for k in got), got


def test_sample_is_reproducible_from_seed_epoch_index(tmp_path, master):
    root = _diving_root(tmp_path, master, "rgb")
    a = Diving48(root, "train", num_frames=4, image_size=16, seed=3)
    b = Diving48(root, "train", num_frames=4, image_size=16, seed=3)
    a.set_epoch(2)
    assert torch.equal(a[1][0], b[(1, 2)][0])
    different = [not torch.equal(a[(1, 2)][0], a[(1, e)][0]) for e in range(3, 8)]
    assert any(different)
    c = Diving48(root, "train", num_frames=4, image_size=16, seed=4)
    assert any(not torch.equal(c[(1, e)][0], b[(1, e)][0]) for e in range(4))


def test_multiview_eval(tmp_path, master):
    root = _diving_root(tmp_path, master, "rgb")
    ds = Diving48(root, "train", train=False, num_frames=3, image_size=24, views=(2, 3))
    video, _ = ds[0]
    assert video.shape == (6, 3, 24, 24, 3)
    # clip-major: views 0-2 are the 3 crops of temporal clip 0
    assert _levels(video[0]) == _levels(video[2])
    # frames [0, 12) in 3 segments of 4, two clips: offsets 1 and 3
    assert _levels(video[0]) == [1, 5, 9] and _levels(video[3]) == [3, 7, 11]
    one = Diving48(root, "train", train=False, num_frames=3, image_size=24)
    assert one[0][0].shape == (3, 24, 24, 3)
    with pytest.raises(ValueError, match="views"):
        Diving48(root, "train", views=(1, 2))


def test_dense_sampling_dataset(tmp_path, master):
    root = _diving_root(tmp_path, master, "rgb")
    ds = Diving48(root, "train", train=False, num_frames=3, image_size=16, sampling="dense",
                  dense_stride=2)
    assert _levels(ds[0][0]) == [3, 5, 7]  # span 5 in 12 frames: start 3
    with pytest.raises(ValueError, match="sampling"):
        Diving48(root, "train", sampling="random")


def test_diving48_errors(tmp_path, master):
    root = _diving_root(tmp_path, master, "rgb")
    with pytest.raises(ValueError, match="split"):
        Diving48(root, "dev")
    with pytest.raises(FileNotFoundError, match="Diving48_V2_train.json"):
        Diving48(tmp_path / "elsewhere", "train")
    bad = json.loads(open(os.path.join(root, "Diving48_V2_train.json")).read())
    bad[0]["label"] = 7
    open(os.path.join(root, "Diving48_V2_train.json"), "w").write(json.dumps(bad))
    with pytest.raises(ValueError, match="label 7"):
        Diving48(root, "train")


def test_all_videos_missing_is_an_error(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "Diving48_V2_train.json").write_text(json.dumps(
        [{"vid_name": "a", "label": 0, "start_frame": 0, "end_frame": 3}]))
    (root / "Diving48_vocab.json").write_text(json.dumps(DIVING48_VOCAB[:1]))
    with pytest.raises(FileNotFoundError, match="a.mp4"):
        Diving48(root, "train")


# ------------------------------------------------------------------------------- FineGym

_GYM_CATEGORIES = """\
Clabel: 0; set: 1; Glabel: 1; (VT) round-off, flic-flac with 0.5 turn on, stretched salto
Clabel: 1; set: 21; Glabel: 20; (FX) switch leap with 1 turn
Clabel: 2; set: 31; Glabel: 40; (BB) split jump
Clabel: 3; set: 41; Glabel: 60; (UB) giant circle backward
Clabel: 4; set: 22; Glabel: 21; (FX) split jump
Clabel: 5; set: 21; Glabel: 22; (FX) switch leap with 1 turn
Clabel: 6; set: 42; Glabel: 61; (UB) giant circle backward
"""


def test_finegym_duplicate_descriptions_made_distinct(tmp_path):
    (tmp_path / "cat.txt").write_text(_GYM_CATEGORIES)
    rows = parse_finegym_categories(tmp_path / "cat.txt")
    assert [r["event"] for r in rows][:4] == ["VT", "FX", "BB", "UB"]
    classes = finegym_classes(rows)
    assert len(set(classes)) == 7
    assert classes[0] == rows[0]["description"]  # unique ones stay as they are
    assert classes[2] == "split jump (balance beam)" and classes[4] == "split jump (floor exercise)"
    # same event and set: told apart by the element (Glabel)
    assert classes[1] == "switch leap with 1 turn (element 20)"
    assert classes[5] == "switch leap with 1 turn (element 22)"
    assert classes[3] == "giant circle backward (set 41)"


@pytest.mark.parametrize("variant", [99, 288])
def test_finegym_reader_counts_missing(tmp_path, master, variant):
    root = tmp_path / "gym"
    ann = root / "annotations"
    ann.mkdir(parents=True)
    (ann / f"gym{variant}_categories.txt").write_text(_GYM_CATEGORIES)
    ids = ["-0tCW3hUJrg_E_002407_002435_A_0003_0005", "_aBcD3hUJrg_E_000100_000200_A_0010_0012",
           "0LtLS9wROrk_E_000001_000050_A_0001_0002", "gone00000000_E_000001_000002_A_0001_0002"]
    train = "\n".join(f"{e} {i}" for i, e in enumerate(ids)) + "\n"
    (ann / f"gym{variant}_train_element_v1.1.txt").write_text(train)
    (ann / f"gym{variant}_val_element.txt").write_text(f"{ids[1]} 5\n\n")
    for e in ids[:3]:
        _put(root / f"{e}.mp4", master["mp4"])
    ds = FineGym(root, "train", variant=variant, num_frames=2, image_size=16)
    assert len(ds) == 3 and ds.missing == 1 and ds.labels == [0, 1, 2]
    assert len(ds.classes) == 7 and len(set(ds.classes)) == 7
    assert ds[0][0].shape == (2, 16, 16, 3)
    val = FineGym(root, "val", variant=variant, num_frames=2, image_size=16)
    assert len(val) == 1 and val.labels == [5] and val.train is False
    with pytest.raises(ValueError, match="variant"):
        FineGym(root, "train", variant=100)


def test_finegym_bad_categories_line(tmp_path):
    (tmp_path / "c.txt").write_text("Clabel: 0; set: 1; (VT) no glabel\n")
    with pytest.raises(ValueError, match="c.txt:1"):
        parse_finegym_categories(tmp_path / "c.txt")


# ------------------------------------------------------------------- Something-Something v2


def test_ssv2_reader(tmp_path, master):
    root = tmp_path / "ssv2"
    labels = {"Approaching something with your camera": "1",
              "Moving something from left to right": "0",
              "Putting something on a surface": "2"}
    train = [
        {"id": "78687", "label": "moving a pen from left to right",
         "template": "Moving [something] from left to right", "placeholders": ["a pen"]},
        {"id": "42326", "label": "approaching a cup with your camera",
         "template": "Approaching [something] with your camera", "placeholders": ["a cup"]},
        {"id": "100", "label": "putting a box on a surface",
         "template": "Putting [something] on a surface", "placeholders": ["a box"]},
    ]
    val = [train[1]]
    lab = root / "labels"
    lab.mkdir(parents=True)
    (lab / "labels.json").write_text(json.dumps(labels))
    (lab / "train.json").write_text(json.dumps(train))
    (lab / "validation.json").write_text(json.dumps(val))
    for e in train:
        _put(root / "20bn-something-something-v2" / f"{e['id']}.webm", master["webm"])
    ds = SomethingSomethingV2(root, "train", num_frames=3, image_size=16)
    assert ds.classes == ["Moving something from left to right",
                          "Approaching something with your camera",
                          "Putting something on a surface"]
    assert ds.labels == [0, 1, 2] and ds.hflip is False
    video, label = ds[2]
    assert video.shape == (3, 16, 16, 3) and label == 2
    v = SomethingSomethingV2(root, "validation", num_frames=3, image_size=16)
    assert len(v) == 1 and v.labels == [1]
    assert _levels(v[0][0]) == [2, 6, 10]
    with pytest.raises(ValueError, match="test split has no labels"):
        SomethingSomethingV2(root, "test")


# ------------------------------------------------------------------------------ Kinetics


@pytest.mark.parametrize("layout", ["flat", "class_folders"])
def test_kinetics_reader(tmp_path, master, layout):
    root = tmp_path / "k400"
    root.mkdir()
    header = ["youtube_id", "split", "label", "time_end", "time_start", "is_cc"]  # shuffled

    def write_csv(name, rows):
        with open(root / name, "w", newline="") as f:
            w = csv.DictWriter(f, header)
            w.writeheader()
            w.writerows(rows)

    train_rows = [
        {"label": "zumba", "youtube_id": "-abc", "time_start": 14, "time_end": 24},
        {"label": "air drumming", "youtube_id": "_xyz", "time_start": 0, "time_end": 10},
        {"label": "abseiling", "youtube_id": "q1w2", "time_start": 100, "time_end": 110},
        {"label": "abseiling", "youtube_id": "gone", "time_start": 5, "time_end": 15},
    ]
    for r in train_rows:
        r.update(split="train", is_cc=0)
    write_csv("train.csv", train_rows)
    write_csv("validate.csv", [dict(train_rows[1], split="val")])
    for r in train_rows[:3]:
        name = f"{r['youtube_id']}_{r['time_start']:06d}_{r['time_end']:06d}.mp4"
        sub = r["label"].replace(" ", "_") if layout == "class_folders" else ""
        _put(root / "train" / sub / name, master["mp4"])
        _put(root / "val" / sub / name, master["mp4"])
    ds = Kinetics400(root, "train", num_frames=2, image_size=16)
    assert ds.classes == ["abseiling", "air drumming", "zumba"]
    assert ds.labels == [2, 1, 0] and ds.missing == 1
    assert os.path.basename(ds.path_of(0)) == "-abc_000014_000024.mp4"
    assert ds[1][0].shape == (2, 16, 16, 3)
    val = Kinetics400(root, "val", num_frames=2, image_size=16)
    assert val.classes == ds.classes and val.labels == [1] and val.train is False


def test_kinetics_missing_column(tmp_path):
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start\nx,y,1\n")
    with pytest.raises(ValueError, match="time_end"):
        Kinetics400(tmp_path, "train")


# ------------------------------------------------------------------------------ VideoList


def test_video_list_with_class_csv(tmp_path, master):
    root = tmp_path / "mine"
    _put(root / "dir with space" / "-a clip.mp4", master["mp4"])
    _put(root / "_b.mp4", master["mp4"])
    (root / "list.txt").write_text("dir with space/-a clip.mp4   1\n\n_b.mp4 pour\n")
    (root / "classes.csv").write_text("id,name\n0,pour\n1,stir, slowly\n")
    ds = VideoList(root / "list.txt", class_csv=root / "classes.csv", num_frames=2,
                   image_size=16)
    assert ds.classes == ["pour", "stir, slowly"]
    assert ds.labels == [1, 0] and ds.train is False
    assert ds.path_of(0) == os.path.join(os.fspath(root), "dir with space", "-a clip.mp4")
    assert ds[0][0].shape == (2, 16, 16, 3)


def test_video_list_without_csv_and_root(tmp_path, master):
    vids = tmp_path / "videos"
    _put(vids / "x.mp4", master["mp4"])
    _put(vids / "y.mp4", master["mp4"])
    lst = tmp_path / "lists" / "l.txt"
    lst.parent.mkdir()
    lst.write_text("x.mp4 2\ny.mp4 0\n")
    ds = VideoList(lst, root=vids, num_frames=2, image_size=16)
    assert ds.classes == ["0", "1", "2"] and ds.labels == [2, 0]
    named = lst.parent / "n.txt"
    named.write_text(f"{vids / 'x.mp4'} walk\n{vids / 'y.mp4'} run\n")
    ds = VideoList(named, num_frames=2, image_size=16)
    assert ds.classes == ["run", "walk"] and ds.labels == [1, 0]


def test_video_list_errors(tmp_path):
    (tmp_path / "l.txt").write_text("just_a_path.mp4\n")
    with pytest.raises(ValueError, match="l.txt:1"):
        VideoList(tmp_path / "l.txt")
    (tmp_path / "c.csv").write_text("0,a\n2,b\n")
    (tmp_path / "l2.txt").write_text("v.mp4 0\n")
    with pytest.raises(ValueError, match="no gaps"):
        VideoList(tmp_path / "l2.txt", class_csv=tmp_path / "c.csv")
    (tmp_path / "c2.csv").write_text("0,a\n1,a\n")
    with pytest.raises(ValueError, match="distinct"):
        VideoList(tmp_path / "l2.txt", class_csv=tmp_path / "c2.csv", check_files=False)


# -------------------------------------------------------------------------- broken videos


def _list_with_bad_files(tmp_path, master, n_good=6):
    """A list of good clips with a corrupt file (index 1) and a missing one (index 3)."""
    d = tmp_path / "vids"
    lines = []
    for i in range(n_good + 2):
        name = f"-v{i}.mp4"
        if i == 1:
            write_corrupt(_put(d / name, b""))
        elif i != 3:
            _put(d / name, master["mp4"])
        lines.append(f"{name} {i % 2}")
    (d / "list.txt").write_text("\n".join(lines) + "\n")
    return d / "list.txt"


def test_bad_files_are_replaced_logged_and_reported(tmp_path, master, caplog):
    lst = _list_with_bad_files(tmp_path, master)
    out = tmp_path / "run"
    ds = VideoList(lst, num_frames=2, image_size=16, check_files=False, output_dir=out,
                   max_bad_fraction=0.3)
    with caplog.at_level("WARNING", logger="art_fast.data.robust"):
        video, label = ds[1]  # corrupt -> the next sample, index 2
    assert label == ds.labels[2] and video.shape == (2, 16, 16, 3)
    assert any("-v1.mp4" in r.getMessage() for r in caplog.records)
    video, label = ds[3]  # missing -> index 4
    assert label == ds.labels[4]
    lines = (out / "bad_videos.txt").read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(ds.path_of(1) + "\t") and "VideoDecodeError" in lines[0]
    assert lines[1].startswith(ds.path_of(3) + "\t") and "FileNotFoundError" in lines[1]
    assert ds.policy.bad_count() == 2
    # The whole dataset iterates (2 of 8 = 25% <= 30%).
    assert len([ds[i] for i in range(len(ds))]) == 8


def test_bad_fraction_exceeded_raises_clear_error(tmp_path, master):
    lst = _list_with_bad_files(tmp_path, master)
    ds = VideoList(lst, num_frames=2, image_size=16, check_files=False,
                   output_dir=tmp_path / "run", max_bad_fraction=0.2)
    ds[1]  # one bad file never stops a run
    with pytest.raises(RuntimeError, match=r"max_bad_fraction=0.2") as info:
        ds[3]
    assert "2 distinct unreadable videos out of 8" in str(info.value)


def test_one_bad_file_never_stops_a_run(tmp_path, master):
    lst = _list_with_bad_files(tmp_path, master)
    ds = VideoList(lst, num_frames=2, image_size=16, check_files=False, max_bad_fraction=0.0)
    assert ds[1][1] == ds.labels[2]


def test_count_is_shared_across_dataloader_workers(tmp_path, master):
    """Each worker meets one bad file; only the shared report file can see two."""
    lst = _list_with_bad_files(tmp_path, master)
    ds = VideoList(lst, num_frames=2, image_size=16, check_files=False,
                   output_dir=tmp_path / "run", max_bad_fraction=0.2)
    # batch_size=2, 2 workers: worker 0 loads [0, 1] (1 corrupt), worker 1 loads [2, 3] (3
    # missing).
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    with pytest.raises(RuntimeError, match="max_bad_fraction"):
        for _ in loader:
            pass
    ok = VideoList(lst, num_frames=2, image_size=16, check_files=False,
                   output_dir=tmp_path / "run2", max_bad_fraction=0.3)
    loader = torch.utils.data.DataLoader(ok, batch_size=2, num_workers=2, shuffle=False)
    assert sum(len(y) for _, y in loader) == 8
    assert len((tmp_path / "run2" / "bad_videos.txt").read_text().splitlines()) == 2


def test_policy_retries_then_substitutes():
    calls: dict[int, int] = {}

    def loader(i):
        calls[i] = calls.get(i, 0) + 1
        if i == 0 and calls[i] <= 2:  # transient: fails twice, then works
            raise OSError("flaky")
        if i == 1:
            raise VideoDecodeError("always broken")
        return i

    p = BadVideoPolicy(5, lambda i: f"/v/{i}.mp4", max_retries=2, max_bad_fraction=0.5)
    assert p.load(0, loader) == 0 and calls[0] == 3 and p.bad_count() == 0
    assert p.load(1, loader) == 2 and calls[1] == 3 and p.bad_count() == 1
    assert p.load(1, loader) == 2 and calls[1] == 3  # known bad: skipped, no retry
    with pytest.raises(KeyError):
        p.load(4, lambda i: {}["programming error"])  # other errors propagate


def test_robust_wrapper_and_log(tmp_path):
    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            if i == 2:
                raise VideoDecodeError("bad clip")
            return i

        def path_of(self, i):
            return f"/data/clip\t{i}.mp4"  # a tab in a path is escaped in the report

    ds = RobustVideoDataset(Plain(), output_dir=tmp_path, max_bad_fraction=0.5)
    assert [ds[i] for i in range(4)] == [0, 1, 3, 3]
    log = BadVideoLog(tmp_path)
    assert log.paths() == {"/data/clip\\t2.mp4"}
    assert ds.path_of(1) == "/data/clip\t1.mp4"  # attributes pass through


def test_dataset_pickles_for_spawned_workers(tmp_path, master):
    import pickle

    root = _diving_root(tmp_path, master, "rgb")
    ds = Diving48(root, "train", num_frames=2, image_size=16, output_dir=tmp_path / "run")
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[(0, 1)][0], ds[(0, 1)][0])
