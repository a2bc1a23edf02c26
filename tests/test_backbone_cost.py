"""The UniFormerV2 configs load and validate; benchmarks/backbone_cost.py runs in its smoke
mode and writes its JSON / Markdown; its FLOP counter follows the stated convention (a
multiply-add counts 2 FLOPs)."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from art_fast import ARTOptions
from art_fast.model.uniformerv2 import clip_name, is_uniformerv2
from art_fast.train import config_to_dict, load_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "backbone_cost.py"
DATASETS = ("diving48", "gym99", "gym288")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize("dataset", DATASETS)
def test_uniformerv2_config_loads_and_validates(dataset):
    cfg = load_config(REPO / "configs" / f"{dataset}_uniformerv2.yaml")  # validates
    m = cfg.model
    assert m.backbone == "uniformerv2-b16" and is_uniformerv2(m.backbone)
    assert clip_name(m.backbone) == "ViT-B-16-quickgelu"
    assert m.pretrained == "openai" and m.temporal_shift == 0
    assert cfg.data.name == dataset and cfg.data.num_frames == 16 and cfg.data.image_size == 224
    # the ART options of the model section pass ARTOptions' own checks (no model is built)
    kw = m.art_kwargs()
    for k in ("backbone", "pretrained", "num_queries", "latent_dim", "k_region"):
        kw.pop(k)
    ARTOptions(**kw).validate()
    # the dataset config with the tower swapped: nothing else differs
    base = _flatten(config_to_dict(load_config(REPO / "configs" / f"{dataset}.yaml")))
    new = _flatten(config_to_dict(cfg))
    changed = {k for k in base if base[k] != new[k]}
    assert changed == {"output_dir", "model.backbone"}
    assert cfg.output_dir == f"runs/{dataset}_uniformerv2"


def test_uniformerv2_config_adamw_override():
    """The override line the configs' comment gives for UniFormerV2's own recipe applies."""
    cfg = load_config(REPO / "configs" / "diving48_uniformerv2.yaml", [
        "train.optimizer=adamw", "train.lr=1.0e-4", "train.weight_decay=0.05",
        "train.schedule=cosine", "train.warmup_epochs=5", "train.min_lr_ratio=0.01",
        "model.backbone_lr_mult=1.0"])
    assert cfg.train.optimizer == "adamw" and cfg.train.lr == 1e-4


@functools.cache
def _load_script():
    """benchmarks/backbone_cost.py as a module (sys.path as it was afterwards)."""
    path = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location("backbone_cost", SCRIPT)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path[:] = path
    return mod


def test_flop_counter_convention():
    bc = _load_script()
    batch, fin, fout = 3, 5, 7
    lin = nn.Linear(fin, fout)
    x = torch.randn(batch, fin)
    assert bc.count_flops(lambda: lin(x)) == 2 * batch * fin * fout  # bias not counted
    assert bc.forward_flops(lin, x) == 2 * batch * fin * fout
    # attention counts, on the CPU fused kernel and inside nn.MultiheadAttention in eval mode
    q, k = torch.randn(2, 4, 10, 8), torch.randn(2, 4, 12, 8)
    sdpa = bc.count_flops(lambda: nn.functional.scaled_dot_product_attention(q, k, k))
    assert sdpa == 2 * (2 * 2 * 4 * 10 * 12 * 8)  # q k^T and p v
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    y = torch.randn(2, 5, 16)
    proj = 2 * (2 * 5) * 16 * (3 * 16) + 2 * (2 * 5) * 16 * 16  # in_proj (q, k, v) + out_proj
    attn = 2 * (2 * 2 * 2 * 5 * 5 * 8)
    with torch.no_grad():
        got = bc.count_flops(lambda: mha(y, y, y, need_weights=False))
    assert got == proj + attn


@pytest.mark.slow
def test_backbone_cost_quick(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out",
                           str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "backbone_cost.json").read_text())
    head, rows = data["header"], data["rows"]
    for key in ("device", "cores", "threads", "torch", "open_clip", "art_fast_commit",
                "date_utc", "command", "flops"):
        assert head[key] not in (None, ""), key
    assert head["threads"] == 1 and "--quick" in head["command"]
    assert "multiply-add = 2 FLOPs" in head["flops"]
    assert [r["backbone"] for r in rows] == ["tiny", "tiny", "uniformerv2-tiny"]
    for r in rows:
        assert r["frames"] == 8 and r["image_size"] == 64
        for key in ("params_backbone", "params_art", "gflops_backbone", "gflops_art",
                    "train_step_s", "eval_art_s", "eval_backbone_s", "x_gflops_art",
                    "x_train_step", "x_eval_art"):
            assert r[key] > 0, (r["row"], key)
        assert r["params_art"] > r["params_backbone"] and r["gflops_art"] > r["gflops_backbone"]
        assert len(r["train_step_all_s"]) == 1  # --quick: one timed step
    assert [r["steps"] for r in rows] == [8, 8, 4]  # UniFormerV2 halves time
    assert rows[0]["x_gflops_art"] == 1.0 and rows[0]["x_train_step"] == 1.0
    # the shift moves channels only: same parameters and FLOPs as the per-frame tower
    assert rows[1]["params_art"] == rows[0]["params_art"]
    assert rows[1]["gflops_art"] == rows[0]["gflops_art"]
    md = (tmp_path / "backbone_cost.md").read_text()
    assert "| tower | T | T' |" in md and "UniFormerV2-tiny (64 px)" in md
    assert head["command"] in md


def test_script_rows_match_the_brief():
    bc = _load_script()
    fam = bc.FAMILIES["vitb16"]
    assert fam["image_size"] == 224 and fam["config"] == "configs/diving48.yaml"
    assert [(b, s) for _, b, s in fam["rows"]] == [
        ("ViT-B-16", 0.0), ("ViT-B-16", 0.25), ("uniformerv2-b16", 0.0)]
    args = bc.parse_args(["--quick"])
    assert args.frames == [8] and args.steps == 1 and bc._families(args) == ["tiny"]
    args = bc.parse_args([])
    assert args.frames == [8, 16] and bc._families(args) == ["vitb16"]
    kw = bc.model_kwargs(fam["config"])
    assert {f.name for f in dataclasses.fields(ARTOptions)} >= set(kw) - {
        "num_queries", "latent_dim", "k_region"}
    assert (kw["num_queries"], kw["latent_dim"], kw["k_region"]) == (2, 256, 16)
