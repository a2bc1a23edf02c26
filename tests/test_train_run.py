"""A short training run on the tiny synthetic set writes every output; evaluate() writes the
predictions; the sharded sampler's order, resume position and evaluation coverage."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
import yaml
from test_train_helpers import tiny_config
from test_train_helpers import tiny_overrides as tiny_config_overrides

from art_fast.train import evaluate, load_checkpoint, load_config, train
from art_fast.train.distributed import ShardedBatchSampler
from art_fast.train.schedule import LRSchedule


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run2"))
    cfg = tiny_config(out, "train.warmup_steps=1")
    seen = []
    result = train(cfg, callbacks=[seen.append])
    return out, cfg, result, seen


def test_two_step_run_writes_outputs(two_step_run):
    out, cfg, result, seen = two_step_run
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "train.log",
                 "confusion.csv", "confusion.png", "predictions.csv"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert [s["step"] for s in seen] == [1, 2]
    assert seen[0]["lr"] == pytest.approx(1e-3)  # warmup of 1 step: the peak at step 0
    assert result["step"] == 2 and 0.0 <= result["top1"] <= 1.0
    assert result["top5"] == 1.0  # 4 classes: the top 5 hold every class
    # the saved config reloads into the same config
    assert load_config(os.path.join(out, "config.yaml")) == cfg
    lines = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert len(lines) == 1
    rec = lines[0]
    # epochs count from 1 in metrics.jsonl and train.log
    assert rec["step"] == 2 and rec["epoch"] == 1 and rec["epoch_complete"] is False
    assert set(rec["train"]) >= {"total", "ce", "ce_v", "mtc_spatial", "sema_video"}
    assert rec["eval"]["num_samples"] == 4 and rec["clips_per_s"] > 0
    assert rec["eval"]["top1"] == result["top1"]
    log = open(os.path.join(out, "train.log")).read()
    assert "eval epoch 1 step 2" in log and "saved last.pt" in log


def test_checkpoint_contents_weights_only(two_step_run):
    out, cfg, result, _ = two_step_run
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert ckpt["step"] == 2 and ckpt["epoch"] == 0 and ckpt["batch_in_epoch"] == 2
    assert {"bank", "agent_bank"} <= set(ckpt["model"])
    assert ckpt["optimizer"]["state"] and ckpt["scheduler"]["step"] == 2
    assert ckpt["config"]["train"]["max_steps"] == 2 and len(ckpt["class_names"]) == 4
    rng = ckpt["rng"][0]
    assert rng["torch"].dtype == torch.uint8 and rng["numpy"]["keys"].numel() == 624
    assert ckpt["metrics"]["top1"] == result["top1"]
    # the bank moved by the EMA (S <- mu S + (1 - mu) S_a) after the agent bank was trained
    assert not torch.equal(ckpt["model"]["bank"], ckpt["model"]["agent_bank"])


def test_evaluate_writes_predictions(two_step_run):
    out, cfg, result, _ = two_step_run
    cfg.eval.views = [2, 3]
    cfg.eval.save_scores = True
    rep = evaluate(cfg, "last")
    assert rep["num_samples"] == 4 and rep["step"] == 2
    rows = list(csv.DictReader(open(os.path.join(out, "eval", "predictions.csv"))))
    assert [int(r["index"]) for r in rows] == [0, 1, 2, 3]
    for r in rows:
        scores = [float(r[f"score_{c}"]) for c in range(4)]
        assert sum(scores) == pytest.approx(1.0, abs=1e-4)  # mean of softmaxes over 6 views
        assert int(r["prediction"]) == max(range(4), key=scores.__getitem__)
        assert r["top5"].split()[0] == r["prediction"] and os.path.isfile(r["path"])
    top1 = sum(int(r["correct"]) for r in rows) / 4
    assert rep["top1"] == pytest.approx(top1)
    saved = json.load(open(os.path.join(out, "eval", "eval_metrics.json")))
    assert saved["top1"] == rep["top1"] and saved["views"] == [2, 3]
    with pytest.raises(FileNotFoundError):
        evaluate(cfg, os.path.join(out, "nope.pt"))
    assert load_checkpoint(os.path.join(out, "best.pt"))["step"] == 2


def test_sampler_order_resume_and_shards():
    s = ShardedBatchSampler(10, 2, train=True, seed=3)
    s.set_epoch(1)
    full = list(s)
    assert len(full) == 5 and all(e == 1 for b in full for _, e in b)
    s.set_epoch(1, start_batch=3)
    assert list(s) == full[3:]  # a resumed epoch continues with the same order
    s.set_epoch(2)
    assert list(s) != full  # a new order each epoch
    # two ranks x batch 2 == one rank x batch 4, global batch by global batch
    one = ShardedBatchSampler(10, 4, train=True, seed=3)
    r0 = ShardedBatchSampler(10, 2, rank=0, world_size=2, train=True, seed=3)
    r1 = ShardedBatchSampler(10, 2, rank=1, world_size=2, train=True, seed=3)
    for smp in (one, r0, r1):
        smp.set_epoch(1)
    assert [sorted(a + b) for a, b in zip(r0, r1)] == [sorted(b) for b in one]
    assert len(one) == 2  # 10 // 4: the incomplete global batch is dropped
    # evaluation: every index exactly once over 3 ranks, uneven shards, no padding
    ev = [ShardedBatchSampler(10, 3, rank=r, world_size=3, train=False) for r in range(3)]
    got = sorted(i for smp in ev for b in smp for i, _ in b)
    assert got == list(range(10))
    assert ShardedBatchSampler(10, 2, train=True, multiple_of=3).batches_per_epoch() == 3


def test_lr_schedules():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.01}, {"params": [], "lr": 0.001}], lr=0.01)
    step = LRSchedule(opt, total_steps=500, kind="step", steps_per_epoch=10, step_epochs=20,
                      gamma=0.1)
    # the paper: 0.01 for epochs 0-19, 0.001 for 20-39, 1e-4 from 40
    for s, want in ((0, 0.01), (199, 0.01), (200, 0.001), (399, 0.001), (400, 1e-4)):
        step.apply(s)
        assert opt.param_groups[0]["lr"] == pytest.approx(want)
        assert opt.param_groups[1]["lr"] == pytest.approx(want / 10)
    cos = LRSchedule(opt, total_steps=110, warmup_steps=10, kind="cosine", min_lr_ratio=0.1)
    assert cos.factor(0) == pytest.approx(0.1) and cos.factor(9) == pytest.approx(1.0)
    assert cos.factor(10) == pytest.approx(1.0) and cos.factor(60) == pytest.approx(0.55)
    assert cos.factor(110) == pytest.approx(0.1)


def test_too_small_dataset_is_a_clear_error(tmp_path):
    cfg = tiny_config(str(tmp_path), "train.batch_size=13")
    with pytest.raises(ValueError, match="fewer than one optimiser step"):
        train(cfg)


def test_config_yaml_is_plain(two_step_run):
    out = two_step_run[0]
    text = open(os.path.join(out, "config.yaml")).read()
    assert yaml.safe_load(text)["model"]["backbone"] == "tiny"


def test_variants_sgd_step_accum_frozen_ablation(tmp_path):
    """SGD + step schedule, gradient accumulation, a frozen backbone and the global-token-only
    ablation in one short run: the frozen tower does not move, the rest does."""
    out = str(tmp_path)
    cfg = tiny_config(out, "train.optimizer=sgd", "train.schedule=step", "train.lr=0.05",
                      "train.step_epochs=1", "train.grad_accum=2", "train.max_steps=4",
                      "model.tracklet_branch=false", "model.freeze_backbone=true")
    seen = []
    res = train(cfg, callbacks=[seen.append])
    # 12 clips / batch 2 = 6 micro-batches = 3 steps per epoch: step 4 is in epoch 1
    assert [(s["step"], s["epoch"], s["batch_in_epoch"]) for s in seen] == [
        (1, 0, 2), (2, 0, 4), (3, 0, 6), (4, 1, 2)]
    assert [s["lr"] for s in seen] == pytest.approx([0.05, 0.05, 0.05, 0.005])  # x0.1/epoch
    assert res["step"] == 4
    from art_fast.train import build_dataset, build_model
    init = build_model(cfg, build_dataset(cfg, None, True).classes).state_dict()
    final = load_checkpoint(os.path.join(out, "last.pt"))["model"]
    assert "se.proj.weight" not in final  # the ablation has no tracklet branch
    for k, v in init.items():
        if k.startswith("backbone.visual."):
            assert torch.equal(v, final[k]), k
    assert not torch.equal(init["head.fc.weight"], final["head.fc.weight"])
    lines = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert [(r["epoch"], r["epoch_complete"]) for r in lines] == [(1, True), (2, False)]


def test_grad_accum_matches_larger_batch(tmp_path):
    """2 micro-batches of 2 with accumulation == one batch of 4 (no dropout, SGD)."""
    common = ("model.dropout=0.0", "train.optimizer=sgd", "train.lr=0.05", "train.max_steps=2",
              "train.eval_every=0")
    train(tiny_config(str(tmp_path / "a"), *common, "train.batch_size=2", "train.grad_accum=2"))
    train(tiny_config(str(tmp_path / "b"), *common, "train.batch_size=4"))
    a = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_cli_entries(two_step_run, tmp_path, capsys):
    """main_eval (the checkpoint's own config + overrides) and load_trained; main_train."""
    from art_fast.train import load_trained, main_eval, main_train

    out = two_step_run[0]
    assert main_eval(os.path.join(out, "last.pt"), ["eval.views=[1,3]"],
                     str(tmp_path / "ev")) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("eval: ")
    rep = json.loads(line[len("eval: "):])
    assert rep["views"] == [1, 3] and rep["num_samples"] == 4
    assert os.path.isfile(tmp_path / "ev" / "predictions.csv")
    model, cfg, ckpt = load_trained(os.path.join(out, "last.pt"))
    assert not model.training and model.class_names == ckpt["class_names"]
    assert cfg.data.image_size == 32
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"output_dir: {tmp_path / 'run'}\n")
    overrides = [o for o in tiny_config_overrides(str(tmp_path / "run"))
                 if not o.startswith("output_dir")] + ["train.max_steps=1", "train.eval_every=0"]
    assert main_train(str(cfg_file), overrides, resume="auto") == 0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["train"]["resume"] == "auto"


@pytest.mark.parametrize("adapt", [True, False])
def test_thread_governor_wiring(tmp_path, monkeypatch, adapt):
    """train.adapt_threads: on a CPU run with more than one thread the trainer builds the
    governor with the thread count in force and ticks it once per optimiser step; off, it
    builds none. A change it reports is logged."""
    import art_fast.train.trainer as trainer_mod

    built = []

    class FakeGovernor:
        def __init__(self, max_threads, on_change=None, **kw):
            self.max_threads, self.ticks, self.on_change = max_threads, 0, on_change
            built.append(self)

        def tick(self):
            self.ticks += 1
            if self.ticks == 1:
                self.on_change(2, 1, 1.3)
            return 1

    monkeypatch.setattr(trainer_mod, "ThreadGovernor", FakeGovernor)
    cfg = tiny_config(str(tmp_path), "train.threads=2", f"train.adapt_threads={str(adapt).lower()}")
    train(cfg)
    if not adapt:
        assert built == []
        return
    (gov,) = built
    assert gov.max_threads == 2 and gov.ticks == cfg.train.max_steps
    log = open(os.path.join(tmp_path, "train.log")).read()
    assert "threads: 2 -> 1 (other processes used 1.3 cores)" in log


def test_optimizer_impls_agree_and_resume_across_them(tmp_path):
    """train.optimizer_impl: fused, foreach and for-loop move the weights the same (float
    rounding apart) from the same start: SGD weights compared directly; AdamW by its logged
    losses over 3 steps (AdamW turns the float noise on parameters whose true gradient is 0,
    e.g. attention key biases, into full-size steps of either sign, which the losses do not
    see). A run resumed with another impl than it was written with runs that impl (the saved
    param groups carry their flags)."""
    common = ("model.dropout=0.0", "train.eval_every=0", "train.adapt_threads=false",
              "train.log_every=1")
    sgd, adamw = {}, {}
    for impl in ("fused", "foreach", "for-loop"):
        out = str(tmp_path / f"sgd-{impl}")
        train(tiny_config(out, *common, "train.max_steps=2", "train.optimizer=sgd",
                          f"train.optimizer_impl={impl}"))
        sgd[impl] = load_checkpoint(os.path.join(out, "last.pt"))["model"]
        seen = []
        train(tiny_config(str(tmp_path / f"adamw-{impl}"), *common, "train.max_steps=3",
                          f"train.optimizer_impl={impl}"), callbacks=[seen.append])
        adamw[impl] = [s["loss"] for s in seen]
    for impl in ("foreach", "for-loop"):
        for k, v in sgd["fused"].items():
            torch.testing.assert_close(sgd[impl][k], v, rtol=1e-5, atol=1e-7,
                                       msg=lambda m, k=k, impl=impl: f"sgd {impl} {k}: {m}")
        assert adamw[impl] == pytest.approx(adamw["fused"], rel=1e-5), impl
    out = str(tmp_path / "mixed")
    train(tiny_config(out, *common, "train.optimizer_impl=for-loop"))
    seen = []
    train(tiny_config(out, "train.max_steps=4", "model.dropout=0.0", "train.eval_every=0",
                      "train.adapt_threads=false", "train.optimizer_impl=fused",
                      "train.resume=auto"),
          callbacks=[seen.append])
    assert [s["step"] for s in seen] == [3, 4]
    ckpt = load_checkpoint(os.path.join(out, "last.pt"))
    assert all(g["fused"] is True for g in ckpt["optimizer"]["param_groups"])
