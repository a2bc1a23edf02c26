"""The capacity-matched control (ART option ``region_attention="mean"``) and the ablation-table
runner (benchmarks/binding_ablation.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from art_fast.model import ART
from art_fast.nn.attention import QueryPatchAttention
from art_fast.train.config import ConfigError, apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["raise arm", "lower arm", "turn left"]


def _tiny(**opts):
    return ART(CLASSES, backbone="tiny", num_frames=3, image_size=64, num_queries=2,
               latent_dim=32, k_region=5, heads=4, se_layers=1, rssa_layers=2, **opts)


def test_uniform_attention_is_the_mean_of_the_values():
    torch.manual_seed(0)
    att = QueryPatchAttention(24, 3, k_region=4, uniform=True)
    q, t = torch.randn(5, 2, 24), torch.randn(5, 11, 24)
    out, idx, w = att(q, t, return_regions=True)
    v = att.kv(t)[..., 24:]  # [G, N, dim]: the value half, heads side by side
    want = att.proj(v.mean(1, keepdim=True).expand(5, 2, 24))
    torch.testing.assert_close(out, want)
    assert idx.shape == w.shape == (5, 3, 2, 11)
    assert torch.equal(idx[0, 0, 0], torch.arange(11))
    torch.testing.assert_close(w, torch.full_like(w, 1 / 11))
    # the queries change nothing: another query gives the same output
    torch.testing.assert_close(att(torch.randn(5, 2, 24), t), out)


def test_mean_control_matches_parameters_and_trains():
    torch.manual_seed(1)
    art, ctrl = _tiny(), _tiny(region_attention="mean")
    n = [sum(p.numel() for p in m.parameters()) for m in (art, ctrl)]
    assert n[0] == n[1]
    x, y = torch.randn(2, 3, 3, 64, 64), torch.tensor([0, 2])
    out = ctrl(x, y)
    out.losses["total"].backward()
    assert torch.isfinite(out.losses["total"])
    assert out.region_weights.shape[-1] == ctrl.backbone.num_patches
    assert ctrl.se.proj.weight.grad is not None and ctrl.se.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", ["uniform", "", 1, None])
def test_region_attention_bad_values(bad):
    with pytest.raises(ValueError, match="region_attention"):
        _tiny(region_attention=bad)


def test_region_attention_config_key():
    cfg = apply_overrides(load_config(ROOT / "configs/binding_tiny.yaml"),
                          ["model.region_attention=mean"])
    assert cfg.model.region_attention == "mean"
    with pytest.raises(ConfigError, match="model.region_attention"):
        apply_overrides(load_config(ROOT / "configs/binding_tiny.yaml"),
                        ["model.region_attention=uniform"])


def _ablation():
    spec = importlib.util.spec_from_file_location("binding_ablation",
                                                  ROOT / "benchmarks/binding_ablation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["binding_ablation"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_ablation_variants_are_valid_overrides():
    """Every variant is a valid config and builds its model (e.g. the UniFormerV2 variant
    resets the per-frame tower's options the config sets)."""
    from art_fast.train.trainer import build_model

    mod = _ablation()
    for name, overrides in mod.VARIANTS.items():
        cfg = apply_overrides(load_config(ROOT / "configs/binding_tiny.yaml"),
                              [*overrides, "model.text_cache=false"])
        assert build_model(cfg, [f"class {i}" for i in range(6)]) is not None, name


def test_ablation_summary():
    mod = _ablation()
    rows = [{"variant": v, "seed": s, "top1": t, "mean_class": t, "region_hit": rh,
             "region_hit_chance": 0.1 if rh is not None else None, "params": 10,
             "train_seconds": 5.0}
            for v, s, t, rh in [("full", 0, 0.9, 0.5), ("full", 1, 0.8, 0.3),
                                ("global", 0, 0.5, None), ("global", 1, 0.4, None)]]
    summary = mod.summarize(rows)
    assert [s["variant"] for s in summary] == ["full", "global"]
    full, glob = summary
    assert full["top1"][0] == pytest.approx(0.85)
    assert full["top1"][1] == pytest.approx(0.0707107, rel=1e-5)  # sample std of 0.9, 0.8
    assert full["min_top1"] == pytest.approx(0.8)
    assert full["region_hit"][0] == pytest.approx(0.4)
    assert glob["region_hit"] is None
    md = mod.markdown(summary, rows, {"date": "d", "device": "cpu", "torch": "t", "python": "p",
                                      "commit": "c", "command": "x"})
    assert "| full | 0 1 | 85.0 ± 7.1 | 80.0 |" in md and "| global | 0 1 |" in md and "n/a" in md
    assert "| train s | commit | device |" in md  # each run's (None here: rows without)


def test_ablation_refuses_a_missing_set(tmp_path, capsys):
    mod = _ablation()
    with pytest.raises(SystemExit) as e:
        mod.main(["--data", str(tmp_path)])
    assert e.value.code == 2
    assert "holds no Diving48-layout set" in capsys.readouterr().err


def test_ablation_training_curve(tmp_path):
    mod = _ablation()
    lines = [{"epoch": 1, "train": {"ce": 1.0, "mtc_spatial": 0.5, "mtc_temporal": 0.25,
                                    "mtc_tracklet": 0.125}},
             {"epoch": 2, "train": {"ce": 0.9, "mtc_spatial": 0.1, "mtc_temporal": 0.2,
                                    "mtc_tracklet": 0.3},
              "eval": {"top1": 0.5, "region_hit": 0.2}},
             {"epoch": 3, "train": {"ce": 0.8}, "eval": {"top1": 0.6, "region_hit": None}}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    curve, mtc = mod._training_curve(path)
    assert curve == [{"epoch": 2, "top1": 0.5, "region_hit": 0.2},
                     {"epoch": 3, "top1": 0.6, "region_hit": None}]
    assert mtc == pytest.approx(0.6)  # the last epoch that logged MTC terms
    assert mod._training_curve(tmp_path / "missing.jsonl") == ([], None)
    # a variant without MTC (the global ablation) has no MTC terms at all
    path.write_text(json.dumps({"epoch": 0, "train": {"ce": 1.0}}) + "\n")
    assert mod._training_curve(path) == ([], None)


def _fake_cli(mod, monkeypatch, calls):
    """mod._run replaced by a stand-in that records the command and writes what train and
    eval would (the resolved config.yaml, the metrics; the parameter count is stubbed)."""
    from art_fast.train.config import load_config, save_config
    from art_fast.train.trainer import absolute_paths

    def fake_run(cmd, log_path):
        calls.append(cmd)
        if cmd[3] == "train":
            cfg = absolute_paths(load_config(cmd[4], cmd[6:-1:2]))
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            save_config(cfg, Path(cfg.output_dir) / "config.yaml")
        if cmd[3] == "eval":
            run_dir = Path(cmd[4]).parent
            (run_dir / "eval").mkdir(parents=True, exist_ok=True)
            (run_dir / "eval" / "eval_metrics.json").write_text(json.dumps(
                {"top1": 0.5, "mean_class": 0.5, "region_hit": 0.2, "region_hit_chance": 0.05}))
    monkeypatch.setattr(mod, "_run", fake_run)
    monkeypatch.setattr(mod, "_param_count", lambda path: 7)


def test_ablation_budget_and_reuse(tmp_path, monkeypatch):
    """Every run trains at the table's budget (a --set after it wins); a finished run is
    reused only with the same config and overrides, and refused otherwise."""
    mod = _ablation()
    calls: list[list[str]] = []
    _fake_cli(mod, monkeypatch, calls)

    config = tmp_path / "c.yaml"
    config.write_text("data:\n  name: diving48\nmodel:\n  stem: conv3d\n")

    def args(*sets, force=False):
        return mod.argparse.Namespace(data="D", config=str(config), work=str(tmp_path),
                                      set=list(sets), force=force, report=False)

    row = mod.run_one("global", 1, args("train.lr=1e-3"))
    assert row["top1"] == 0.5 and row["params"] == 7 and row["seed"] == 1
    assert row["commit"] == mod.h.git_commit()  # recorded when the run started
    assert row["device"] == mod.h.device_name("cpu")
    train = calls[0]
    assert train[3] == "train" and train[4] == str(config)
    assert train[-1] == "--overwrite"
    sets = train[5:-1]
    overrides = sets[1::2]
    assert sets[::2] == ["--set"] * len(overrides)
    budget = [overrides.index(b) for b in mod.TABLE_BUDGET]
    assert max(budget) < overrides.index("train.lr=1e-3")  # the user's --set comes after
    assert "train.seed=1" in overrides and "model.tracklet_branch=false" in overrides
    assert calls[1][3] == "eval"
    # the same run again: reused, nothing runs
    assert mod.run_one("global", 1, args("train.lr=1e-3"))["top1"] == 0.5
    assert len(calls) == 2
    # another override: refused, naming the run folder; --force retrains it
    with pytest.raises(RuntimeError, match=r"global_s1 was trained with .*--force"):
        mod.run_one("global", 1, args("train.lr=2e-3"))
    assert len(calls) == 2
    mod.run_one("global", 1, args("train.lr=2e-3", force=True))
    assert len(calls) == 4
    # the config file changed since (same path, same overrides): refused, naming the key
    config.write_text("data:\n  name: diving48\nmodel:\n  stem: conv3d\n"
                      "  tower_layer_scale: 0.1\n")
    with pytest.raises(RuntimeError, match=r"no longer gives \(model.tower_layer_scale: "
                                           r"None in the run, 0.1 now\).*--force"):
        mod.run_one("global", 1, args("train.lr=2e-3"))
    mod.run_one("global", 1, args("train.lr=2e-3", force=True))
    assert len(calls) == 6
    assert mod.run_one("global", 1, args("train.lr=2e-3"))["top1"] == 0.5  # agrees again
    # a run whose config.yaml is gone or damaged is refused, not reused
    stored = tmp_path / "global_s1" / "config.yaml"
    stored.write_text("model: [unclosed\n")
    with pytest.raises(RuntimeError, match="no longer reads"):
        mod.run_one("global", 1, args("train.lr=2e-3"))
    stored.unlink()
    with pytest.raises(RuntimeError, match="config.yaml is missing"):
        mod.run_one("global", 1, args("train.lr=2e-3"))
    assert len(calls) == 6
    # a run recorded before the overrides were kept is refused too, not silently reused
    timing = tmp_path / "global_s1" / "ablation_timing.json"
    timing.write_text(json.dumps({"train_seconds": 3.0}))
    with pytest.raises(RuntimeError, match="was trained with"):
        mod.run_one("global", 1, args("train.lr=2e-3"))


def test_ablation_curve_column():
    mod = _ablation()
    r = {"region_hit_curve": [{"epoch": 5, "top1": 0.25, "region_hit": 0.125},
                              {"epoch": 10, "top1": 0.5, "region_hit": None}]}
    assert mod._curve(r) == "5: 0.250 / 0.125, 10: 0.500"
    assert mod._curve({"region_hit_curve": []}) is None


def _ablation_setup(tmp_path, monkeypatch, config_text):
    """The runner with a fake CLI, a stand-in set folder and a config file:
    ``(module, recorded commands, set folder, config path)``."""
    mod = _ablation()
    calls: list[list[str]] = []
    _fake_cli(mod, monkeypatch, calls)
    data = tmp_path / "set"
    data.mkdir()
    (data / "Diving48_vocab.json").write_text("[]")
    config = tmp_path / "c.yaml"
    config.write_text(config_text)
    return mod, calls, data, config


def test_ablation_report_tabulates_finished_runs(tmp_path, monkeypatch, capsys):
    """--report trains nothing, tabulates the finished runs and names the missing ones."""
    mod, calls, data, config = _ablation_setup(tmp_path, monkeypatch, "data:\n  name: diving48\n")
    work, out = tmp_path / "work", tmp_path / "out"
    base = ["--data", str(data), "--work", str(work), "--out", str(out),
            "--config", str(config), "--variants", "full", "global"]
    assert mod.main([*base, "--seeds", "0"]) == 0  # trains full s0 and global s0
    assert len(calls) == 4
    monkeypatch.setattr(mod.h, "write_results", lambda *a: None)
    assert mod.main([*base, "--seeds", "0", "1", "--report"]) == 0
    assert len(calls) == 4  # nothing trained
    md = capsys.readouterr().out
    assert "not run yet: full seed 1, global seed 1" in md
    assert "| full | 0 |" in md and "| global | 0 |" in md
    assert mod.main(["--data", str(data), "--work", str(tmp_path / "empty"), "--report"]) == 1
    with pytest.raises(SystemExit):
        mod.main([*base, "--report", "--force"])


def test_ablation_merge(tmp_path, monkeypatch, capsys):
    """--merge: an earlier sitting's rows stand for runs whose folders are gone, only while
    the config each recorded is this table's; bad or ambiguous merges are refused."""
    mod, calls, data, config = _ablation_setup(
        tmp_path, monkeypatch, "data:\n  name: diving48\nmodel:\n  stem: conv3d\n")

    def main(*extra):
        return mod.main(["--data", str(data), "--config", str(config), "--variants", "global",
                         "full", "--seeds", "1", *extra])

    # the first sitting: both runs, then its run folders are lost
    assert main("--work", str(tmp_path / "w1"), "--out", str(tmp_path / "o1"),
                "--provenance", "alone on a test machine") == 0
    assert len(calls) == 4
    first = tmp_path / "o1" / "binding_ablation.json"
    rows = json.loads(first.read_text())["rows"]
    assert all(r["config"]["model"]["stem"] == "conv3d" for r in rows)
    assert rows[0]["config"]["train"]["seed"] == 1
    # a later sitting merges them: nothing trains, the report names where the rows came from
    assert main("--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o2"), "--report",
                "--merge", str(first)) == 0
    assert len(calls) == 4
    second = json.loads((tmp_path / "o2" / "binding_ablation.json").read_text())
    assert [(r["variant"], r["merged_from"]) for r in second["rows"]] == [
        ("global", str(first)), ("full", str(first))]
    assert second["env"]["merged"][0]["runs"] == ["global seed 1", "full seed 1"]
    md = (tmp_path / "o2" / "binding_ablation.md").read_text()
    assert f"From an earlier sitting (`{first}`" in md
    assert "global seed 1, full seed 1. alone on a test machine" in md
    assert second["env"]["merged"][0]["provenance"] == "alone on a test machine"
    first_env = json.loads(first.read_text())["env"]
    # merging the merged table: the rows keep pointing at the sitting that ran them, with its
    # date, commit and provenance (not at the report in between, which may be overwritten)
    assert main("--work", str(tmp_path / "w3"), "--out", str(tmp_path / "o3"), "--report",
                "--merge", str(tmp_path / "o2" / "binding_ablation.json")) == 0
    third = json.loads((tmp_path / "o3" / "binding_ablation.json").read_text())
    assert [r["merged_from"] for r in third["rows"]] == [str(first)] * 2
    assert third["env"]["merged"] == [{
        "file": str(first), "date": first_env["date"], "commit": first_env["commit"],
        "provenance": "alone on a test machine", "runs": ["global seed 1", "full seed 1"]}]
    # a run both under --work and in the merge: refused
    with pytest.raises(SystemExit):
        main("--work", str(tmp_path / "w1"), "--report", "--merge", str(first))
    assert "is both under --work" in capsys.readouterr().err
    # the same pair in two files: refused
    with pytest.raises(SystemExit):
        main("--work", str(tmp_path / "w2"), "--report", "--merge", str(first), "--merge",
             str(tmp_path / "o2" / "binding_ablation.json"))
    assert "global seed 1 is in both" in capsys.readouterr().err
    # not a result file: refused, naming it
    bad = tmp_path / "bad.json"
    bad.write_text("{\"rows\": 3}")
    with pytest.raises(SystemExit):
        main("--work", str(tmp_path / "w2"), "--report", "--merge", str(bad))
    assert "not a binding_ablation.json" in capsys.readouterr().err
    # another --set than the first sitting's: the merged row is refused, naming the key
    assert main("--work", str(tmp_path / "w2"), "--report", "--merge", str(first),
                "--set", "train.lr=1e-3") == 1
    err = capsys.readouterr().err
    assert "global seed 1 was trained with a config this table would not use" in err
    assert "train.lr" in err and "rerun it" in err
    # the config file changed since: refused too
    config.write_text("data:\n  name: diving48\nmodel:\n  stem: conv3d\n  frame_pool: max\n")
    assert main("--work", str(tmp_path / "w2"), "--report", "--merge", str(first)) == 1
    assert "model.frame_pool" in capsys.readouterr().err
    # a row without a recorded config (written before rows carried one): refused
    old = json.loads(first.read_text())
    for r in old["rows"]:
        del r["config"]
    first.write_text(json.dumps(old))
    assert main("--work", str(tmp_path / "w2"), "--report", "--merge", str(first)) == 1
    assert "records no config" in capsys.readouterr().err
