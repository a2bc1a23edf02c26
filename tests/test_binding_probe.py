"""benchmarks/binding_probe.py: every body runs end to end on a small binding set, writes its
curve after every epoch, and reads ART's tower the way ART does."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from art_fast.data import binding as bd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import binding_probe as bp  # noqa: E402


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe") / "set"
    bd.make_binding(root, seed=0, workers=1, classes=6, videos_per_class=2, frames=8, size=48,
                    test_fraction=0.5)
    return root


@pytest.mark.parametrize("view,body,name", [
    ("oracle", "probe", "oracle"), ("full", "stem", "full_stem_seed3"),
    ("full", "tower", "full_tower")])
def test_runs_and_writes_every_epoch(small_set, tmp_path, view, body, name):
    seed = 3 if body == "stem" else 0
    assert bp.main(["--data", str(small_set), "--view", view, "--body", body, "--epochs", "2",
                    "--crop", "16", "--batch", "4", "--seed", str(seed), "--threads", "1",
                    "--out", str(tmp_path)]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"binding_probe_{name}.json"]  # no temporary file left behind
    res = json.loads((tmp_path / files[0]).read_text())
    assert (res["view"], res["body"], res["seed"]) == (view, body, seed)
    assert res["epochs_done"] == 2 and [r["epoch"] for r in res["curve"]] == [1, 2]
    assert res["train_clips"] == 6 and res["test_clips"] == 6 and res["classes"] == 6
    assert all(0.0 <= r["test_top1"] <= 1.0 and r["train_loss"] > 0 for r in res["curve"])
    assert res["final_top1"] == res["curve"][-1]["test_top1"]
    assert res["git_commit"]


def test_art_bodies_read_the_tower_like_art():
    """The ``tower`` body's features are the spatial max of VideoBackbone's patch tokens on the
    CLIP-normalised clip; ``stem`` the max of the stem's tokens; ``tower_preln`` the max of
    the blocks' output before ln_post (computed here without the probe's code path)."""
    from art_fast.data.transforms import CLIP_MEAN, CLIP_STD

    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 32, 32)  # [N, 3, T, h, w] in [0, 1], as the probe feeds it
    v = x.transpose(1, 2)
    v = (v - torch.tensor(CLIP_MEAN).view(1, 1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(
        1, 1, 3, 1, 1)
    for body in ("tower", "stem", "tower_preln"):
        m = bp.ARTBodyProbe(6, body, 4, 32).eval()
        with torch.no_grad():
            got = m.features(x)
            if body == "tower":
                want = m.backbone(v)[0].amax(2).transpose(1, 2)
            elif body == "stem":
                want = m.backbone.stem(v).amax((2, 3)).view(2, 4, -1).transpose(1, 2)
            else:  # the blocks' residual stream, by hand: stem -> embeds -> blocks, no ln_post
                vis = m.backbone.visual
                stream = vis.transformer(vis._embeds(m.backbone.stem(v)))
                want = stream[:, 1:].reshape(2, 4, -1, stream.shape[-1]).amax(2).transpose(1, 2)
                post = vis.ln_post(stream[:, 1:]).reshape(2, 4, -1, stream.shape[-1])
                assert (want - post.amax(2).transpose(1, 2)).abs().max() > 1e-3  # not the
                # reading after ln_post
        assert got.shape == (2, m.backbone.width, 4)
        torch.testing.assert_close(got, want)
        assert m(x).shape == (2, 6)


def test_art_body_needs_the_full_view(small_set, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bp.main(["--data", str(small_set), "--view", "oracle", "--body", "tower",
                 "--epochs", "1", "--out", str(tmp_path)])
    assert "--view full" in capsys.readouterr().err


def test_temporal_head_is_arts_temporal_module(small_set, tmp_path):
    """``--head temporal``: the logits are a linear map of ART's TemporalModule over the
    body's per-frame features (recomputed here from the parts), for the 3D CNN and ART's
    tower; the result file names the head."""
    torch.manual_seed(0)
    x = torch.rand(3, 3, 4, 32, 32)
    for m in (bp.Probe3D(6, head="temporal", num_frames=4),
              bp.ARTBodyProbe(6, "tower_preln", 4, 32, head="temporal")):
        m.eval()
        with torch.no_grad():
            f = m.features(x)                                    # [N, C, T]
            want = m.head(m.temporal(f.transpose(1, 2)))
            torch.testing.assert_close(m(x), want)
        assert want.shape == (3, 6)
        assert m.temporal.pos_embedding.shape == (5, f.shape[1])
    m = bp.ARTBodyProbe(6, "tower_preln", 4, 32, head="art_segments").eval()
    with torch.no_grad():  # ART's global branch with frame_pool=max, temporal_module=segments
        f = m.features(x).transpose(1, 2)                        # [N, T, C]
        vis = m.backbone.visual
        want = m.head(m.temporal(vis.ln_post(f) @ vis.proj))
        torch.testing.assert_close(m(x), want)
    with pytest.raises(ValueError, match="ART body"):
        bp.Probe3D(6, head="art_segments", num_frames=4)(x)
    assert bp.main(["--data", str(small_set), "--view", "full", "--body", "tower_preln",
                    "--head", "temporal", "--epochs", "1", "--batch", "4", "--threads", "1",
                    "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "binding_probe_full_tower_preln_temporalhead.json").read_text())
    assert res["head"] == "temporal" and res["epochs_done"] == 1
