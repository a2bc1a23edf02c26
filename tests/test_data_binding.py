"""The binding synthetic set, in both styles (discs, squares): determinism, metadata against
pixels, fairness, arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from art_fast.data import Diving48, read_frames
from art_fast.data import binding as bd
from art_fast.data import synthetic as syn
from tests._util import files_bytes

SMALL = dict(classes=6, videos_per_class=3, frames=8, size=48, test_fraction=0.34)


# per style: the (target, distractor) marks and the first class's description
STYLE_FACTS = {
    "discs": (("checker", "stripes"),
              "checkered-actor, oscillates-first, then-rotates, striped-decoy-reversed"),
    "squares": (("quadrants", "bands"),
                "quartered-actor, sweeps-first, then-circles, banded-decoy-reversed"),
}


@pytest.fixture(scope="module", params=bd.STYLES)
def small_set(request, tmp_path_factory):
    style = request.param
    root = tmp_path_factory.mktemp(f"bind_{style}") / "a"
    summary = bd.make_binding(root, seed=0, workers=1, style=style, **SMALL)
    return root, summary, style


def test_layout_and_same_bytes_whatever_the_workers(small_set, tmp_path):
    root, summary, style = small_set
    assert summary["num_train"] == 12 and summary["num_test"] == 6
    assert summary["style"] == style
    bd.make_binding(tmp_path / "b", seed=0, workers=2, style=style, **SMALL)
    bd.make_binding(tmp_path / "c", seed=1, workers=2, style=style, **SMALL)
    a, b, c = files_bytes(root), files_bytes(tmp_path / "b"), files_bytes(tmp_path / "c")
    assert a.keys() == b.keys() and a == b
    videos = [k for k in a if k.endswith(".mp4")]
    assert len(videos) == 18
    assert all(a[k] != c[k] for k in videos)
    ds = Diving48(root, "train", num_frames=4, image_size=32)
    assert ds.classes == summary["classes"] and len(set(ds.classes)) == 6
    assert ds.classes[0] == STYLE_FACTS[style][1]
    video, _ = ds[0]
    assert video.shape == (4, 32, 32, 3)
    meta = json.loads((root / "binding_meta.json").read_text())
    assert meta["params"]["kind"] == "binding" and len(meta["videos"]) == 18
    assert meta["params"]["style"] == style
    assert meta["motions"] == list(bd.STYLE_MOTIONS[style])
    names = set(bd.STYLE_MOTIONS[style])
    for info in meta["videos"].values():
        assert set(info["order"]) <= names
        assert sorted(a["mark"] for a in info["actors"]) == sorted(STYLE_FACTS[style][0])


def test_the_two_styles_differ():
    """Same seed, same class: other motion names, marks and pixels; same layout of draws
    that do not depend on the style (the background texture)."""
    clips = {st: bd.render_binding_clip(0, 8, 64, np.random.default_rng([0, 0, 0]), st)
             for st in bd.STYLES}
    (fd, md), (fs, ms) = clips["discs"], clips["squares"]
    assert md["order"] == ["oscillates", "rotates"] and ms["order"] == ["sweeps", "circles"]
    assert not np.array_equal(fd, fs)
    assert bd.binding_vocab(2, "squares") == [
        ["quartered-actor", "sweeps-first", "then-circles", "banded-decoy-reversed"],
        ["quartered-actor", "circles-first", "then-sweeps", "banded-decoy-reversed"]]
    assert bd.binding_vocab(6) == bd.binding_vocab(6, "discs")


def test_mark_patterns():
    """Every mark side used (``4 * round(S / 32)``, S even from 48 up): each kind is exactly
    half 0, half 255; a style's two marks have the same size and mean and differ in half of
    their pixels."""
    sides = sorted({bd._geometry(s)["mark"] for s in range(48, 1025, 2)})
    assert sides[0] == 8
    for side in sides:
        pats = {k: bd._mark_pattern(k, side) for k in ("checker", "stripes", "quadrants",
                                                       "bands")}
        for k, pat in pats.items():
            assert pat.shape == (side, side)
            assert (pat == 0).sum() == (pat == 255).sum() == side * side // 2, (k, side)
        for tgt, dis in (STYLE_FACTS["discs"][0], STYLE_FACTS["squares"][0]):
            assert pats[tgt].mean() == pats[dis].mean() == 127.5
            assert (pats[tgt] != pats[dis]).mean() == 0.5
    # quadrants: a 2 x 2 checkerboard; bands: horizontal stripes of a quarter of the side
    q, b = bd._mark_pattern("quadrants", 8), bd._mark_pattern("bands", 8)
    assert q[0, 0] == q[7, 7] == 0 and q[0, 7] == q[7, 0] == 255 and len(np.unique(q[:4, :4])) == 1
    assert (b == b[:, :1]).all() and b[:, 0].tolist() == [0, 0, 255, 255] * 2
    with pytest.raises(ValueError, match="multiple of 4"):
        bd._mark_pattern("bands", 10)
    with pytest.raises(ValueError, match="mark kind"):
        bd._mark_pattern("dots", 8)


def _pattern_error(patch: np.ndarray, kind: str) -> float:
    return float(np.abs(patch.astype(np.float64).mean(-1)
                        - bd._mark_pattern(kind, patch.shape[0])).mean())


def test_decoded_marks_are_where_the_metadata_says(small_set):
    """In the decoded mp4, each recorded mark box holds its own pattern (and not the other)."""
    root, _, style = small_set
    tgt_mark, dis_mark = STYLE_FACTS[style][0]
    meta = json.loads((root / "binding_meta.json").read_text())
    for name, info in meta["videos"].items():
        frames = read_frames(root / "rgb" / f"{name}.mp4", [0, 4, 7])
        assert info["actors"][info["target"]]["mark"] == tgt_mark
        for a in info["actors"]:
            other = dis_mark if a["mark"] == tgt_mark else tgt_mark
            for f, fi in zip(frames, (0, 4, 7)):
                x0, y0, x1, y1 = a["mark_boxes"][fi]
                patch = f[y0:y1, x0:x1]
                own, wrong = _pattern_error(patch, a["mark"]), _pattern_error(patch, other)
                assert own < 40 and wrong > own + 40, (name, fi, own, wrong)


@pytest.mark.parametrize("style,s", [(st, s) for st in bd.STYLES for s in (64, 48)])
def test_boxes_and_state_against_rendered_pixels(style, s):
    """In memory: every mark box holds exactly its pattern, lies inside its actor's box, the
    actors are inside the frame and never overlap, the limb moves without a jump at the
    switch, and the order/switch metadata is the class's (at 64 px and at the smallest size,
    where the placement is tightest)."""
    f = 12
    names = bd.STYLE_MOTIONS[style]
    for c in range(6):
        for i in range(4):
            frames, meta = bd.render_binding_clip(c, f, s, np.random.default_rng([7, c, i]),
                                                  style=style)
            assert frames.shape == (f, s, s, 3) and frames.dtype == np.uint8
            x, y = bd.CLASS_ORDERS[c]
            assert meta["order"] == [names[x], names[y]]
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


def _connected(mask: np.ndarray) -> bool:
    ys, xs = np.nonzero(mask)
    seen = np.zeros_like(mask)
    seen[ys[0], xs[0]] = True
    stack = [(ys[0], xs[0])]
    while stack:
        y, x = stack.pop()
        for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
            if (0 <= yy < mask.shape[0] and 0 <= xx < mask.shape[1] and mask[yy, xx]
                    and not seen[yy, xx]):
                seen[yy, xx] = True
                stack.append((yy, xx))
    return int(seen.sum()) == int(mask.sum())


@pytest.mark.parametrize("s", [48, 64])
def test_squares_limb_attached_and_within_the_reach(s):
    """The square's limb starts at its boundary along the limb's direction: body + limb is
    one 4-connected shape in every direction and at every extension, and no pixel centre is
    farther from the centre than the reach (which uses the corner's distance)."""
    g = bd._geometry(s, "squares")
    assert g["reach"] > g["half"] * np.sqrt(2) + g["l"] + g["w"] / 2
    c = np.array([s / 2 + 0.3, s / 2 - 0.2])
    for ang in np.linspace(0, 2 * np.pi, 72, endpoint=False):
        u = np.array([np.cos(ang), np.sin(ang)])
        edge = bd._body_edge(g, u)
        assert g["half"] - 1e-9 <= edge <= g["half"] * np.sqrt(2) + 1e-9
        for ext in (0.25, 0.6, 1.0):
            img, mask = np.zeros((s, s, 3)), np.zeros((s, s), bool)
            bd._disc(img, c[0], c[1], g["half"], np.ones(3), mask, square=True)
            bd._capsule(img, c + u * (edge - g["w"] / 2), c + u * (edge + g["l"] * ext),
                        g["w"] / 2, np.ones(3), mask)
            assert _connected(mask), (s, ang, ext)
            ys, xs = np.nonzero(mask)
            assert np.hypot(xs + 0.5 - c[0], ys + 0.5 - c[1]).max() <= g["reach"]


def test_motions_continue_from_the_current_state_at_matched_speeds():
    """Every motion kind starts exactly from the state it is given (so a switch never jumps),
    and the mean tip speed of a full limb (mean |d angle| x limb length x extension, over
    300 actors x 15 frames at 64 px) is near ``_TIP_SPEED`` for every angle-based motion;
    twitches jump 3 v once per 3 frames."""
    s, f = 64, 16
    v = bd._TIP_SPEED / bd._LIMB_L
    for style in bd.STYLES:
        base = bd._MOTION_BASE[style]
        for m, name in enumerate(bd.STYLE_MOTIONS[style]):
            speed = []
            for i in range(300):
                p = bd._actor_params(s, f, np.random.default_rng([3, i]), style)
                th, ex = bd._motion(base + m, 1.25, 0.4, f - 1, p)
                assert th[0] == 1.25 and ex[0] == 0.4, (style, name)
                th, ex = bd._motion(base + m, p["theta0"], 1.0, f - 1, p)
                speed.append((np.abs(np.diff(th)) * bd._LIMB_L * ex[1:]).mean())
            speed = float(np.mean(speed))
            if name != "folds":
                assert 0.8 * bd._TIP_SPEED <= speed <= 1.1 * bd._TIP_SPEED, (name, speed)
            if name == "twitches":
                d = np.abs(np.diff(th))
                assert (d[0::3] == 0).all() and (d[1::3] == 0).all()
                assert 0.9 * 3 * v <= d[2] <= 1.1 * 3 * v
            if name == "circles":
                assert np.allclose(ex[2:], 0.6)


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


@pytest.mark.parametrize("style", bd.STYLES)
def test_fairness_from_the_generator_state(style):
    """(a) the target's per-half limb signature gives the class; (b) without knowing which
    actor is the target (sum of both, or both ordered by screen x), only the unordered pair
    is readable: about half right. 6 x 200 clips (the default set's draws), last 50 of each
    class held out. Thresholds fixed a priori: (a) >= 0.95, (b) <= 0.55 (chance 1/6; an
    ideal target-agnostic reader is at 0.5); the same for both styles."""
    f, half = 16, 7
    feat_a, feat_sum, feat_pos, labels, train = [], [], [], [], []
    for c in range(6):
        for i in range(200):
            spec = bd.draw_binding_clip(c, f, 64, np.random.default_rng([0, c, i]), style)
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
    acc_pair = _nearest_centroid(np.array(feat_sum), y // 2, tr)
    print(f"fairness [{style}] (a) target known {acc_a:.3f}  (b) sum {acc_sum:.3f}  "
          f"by screen order {acc_pos:.3f}  unordered pair from the sum {acc_pair:.3f}")
    assert acc_a >= 0.95
    assert acc_sum <= 0.55 and acc_pos <= 0.55
    # The unordered pair is readable from (b): a class or its reverse, almost always.
    assert acc_pair >= 0.95
    # The renderer uses exactly these draws.
    _, meta = bd.render_binding_clip(3, f, 64, np.random.default_rng([0, 3, 5]), style)
    spec = bd.draw_binding_clip(3, f, 64, np.random.default_rng([0, 3, 5]), style)
    tgt = meta["actors"][meta["target"]]
    assert np.array_equal(tgt["angle"], spec["actors"][0]["angle"])


@pytest.mark.parametrize("style", bd.STYLES)
def test_global_frame_difference_baseline_is_near_chance(style):
    """(c) From the rendered pixels: the whole-frame mean |frame difference| per frame, plus
    its first-half and second-half means, with nearest centroid: near chance (threshold fixed
    a priori: <= 0.3 for 6 classes, chance 1/6). 6 x 60 clips, last 15 of each held out."""
    f, half = 16, 7
    feats, labels, train = [], [], []
    for c in range(6):
        for i in range(60):
            frames, _ = bd.render_binding_clip(c, f, 64, np.random.default_rng([0, c, i]),
                                               style)
            d = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean((1, 2, 3))
            feats.append(np.concatenate([d, [d[:half].mean(), d[half:].mean(),
                                             d[half:].mean() - d[:half].mean()]]))
            labels.append(c)
            train.append(i < 45)
    acc = _nearest_centroid(np.array(feats), np.array(labels), np.array(train))
    print(f"fairness [{style}] (c) global frame-difference baseline {acc:.3f}")
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
    (dict(style="triangles"), "style must be one of 'discs', 'squares'"),
    (dict(style="squares", classes=7), "classes must be in 2..6"),
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


@pytest.mark.parametrize("call", [
    lambda st: bd.binding_vocab(6, st),
    lambda st: bd.draw_binding_clip(0, 8, 64, np.random.default_rng(0), st),
    lambda st: bd.render_binding_clip(0, 8, 64, np.random.default_rng(0), style=st),
], ids=["binding_vocab", "draw_binding_clip", "render_binding_clip"])
@pytest.mark.parametrize("style", ["Squares", "", None, 1])
def test_bad_style(call, style):
    with pytest.raises(ValueError, match=r"style must be one of 'discs', 'squares', got"):
        call(style)


def test_cli_kind_binding(tmp_path, capsys):
    rc = syn.main(["--kind", "binding", "--out", str(tmp_path / "m"), "--classes", "2",
                   "--videos-per-class", "2", "--frames", "8", "--size", "48",
                   "--workers", "1"])
    assert rc == 0
    assert "2 train + 2 test clips, 2 classes" in capsys.readouterr().out
    assert (tmp_path / "m" / "binding_meta.json").is_file()
    meta = json.loads((tmp_path / "m" / "binding_meta.json").read_text())
    assert meta["params"]["style"] == "discs" and meta["motions"] == list(bd.MOTIONS)
    assert syn.main(["--kind", "binding", "--out", str(tmp_path / "x"), "--classes", "7"]) == 2
    assert "classes must be in 2..6" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        syn.main(["--kind", "other", "--out", str(tmp_path / "y")])


def test_cli_style(tmp_path, capsys):
    rc = syn.main(["--kind", "binding", "--style", "squares", "--out", str(tmp_path / "m"),
                   "--classes", "2", "--videos-per-class", "2", "--frames", "8", "--size",
                   "48", "--workers", "1"])
    assert rc == 0
    assert "2 train + 2 test clips, 2 classes" in capsys.readouterr().out
    meta = json.loads((tmp_path / "m" / "binding_meta.json").read_text())
    assert meta["params"]["style"] == "squares"
    assert meta["motions"] == ["sweeps", "circles", "twitches"]
    assert meta["class_descriptions"][1] == ("quartered-actor, circles-first, then-sweeps, "
                                             "banded-decoy-reversed")
    vocab = json.loads((tmp_path / "m" / "Diving48_vocab.json").read_text())
    assert vocab == bd.binding_vocab(2, "squares")
    # --style belongs to the binding set: with the displacement set (named or the default),
    # the usual one-line error and exit code 2, nothing written
    for kind in (["--kind", "displacement"], []):
        for style in ("squares", "discs"):
            out = tmp_path / f"d{len(kind)}{style}"
            assert syn.main([*kind, "--style", style, "--out", str(out)]) == 2
            err = capsys.readouterr().err
            assert err.startswith("art-fast synth: error: --style applies to --kind binding "
                                  "only") and err.count("\n") == 1
            assert not out.exists()
    # an unknown style: argparse's choices (exit code 2)
    with pytest.raises(SystemExit) as exc:
        syn.main(["--kind", "binding", "--style", "circles", "--out", str(tmp_path / "z")])
    assert exc.value.code == 2
    assert "invalid choice: 'circles'" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()
