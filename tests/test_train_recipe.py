"""The training-recipe options (art_fast.train.recipe): label smoothing, MixUp / CutMix, the
weight EMA and layer-wise lr decay, each checked against an independent computation, on
2-step runs of the tiny config; bad values are rejected naming the key; a run with EMA and
mixing on resumes bitwise exactly; checkpoints without ``model_ema`` still resume."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch
from test_train_helpers import tiny_config

import art_fast.train.trainer as trainer_mod
from art_fast.losses import classification_loss
from art_fast.train import ConfigError, build_dataset, build_model, load_checkpoint, train
from art_fast.train.recipe import (
    BatchMixer,
    auxiliary_weight,
    classification_losses,
    layer_decay_groups,
    scale_auxiliary,
    tower_layer_id,
)
from art_fast.train.trainer import weights_to_load

RECIPE = ("train.deterministic=true", "train.save_every=1", "train.warmup_steps=1",
          "model.dropout=0.3", "train.label_smoothing=0.1", "train.mixup=0.8",
          "train.cutmix=1.0", "train.mixup_switch_prob=0.5", "train.ema_decay=0.9",
          "train.layer_decay=0.7")
DECAY, LAYER_DECAY, EPS = 0.9, 0.7, 0.1


def smoothed_ce(logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """Label-smoothed cross-entropy written out: mean_i sum_c -q_ic log p_ic in float64 with
    q = (1 - eps) t + eps / C (t: one-hot of int labels, or the soft target)."""
    z = logits.double()
    C = z.shape[1]
    t = (torch.nn.functional.one_hot(target, C).double() if target.dim() == 1
         else target.double())
    q = (1 - eps) * t + eps / C
    logp = z - z.exp().sum(1, keepdim=True).log()
    return -(q * logp).sum(1).mean()


# ----------------------------------------------------------------------------- a recipe run

@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """2 steps with every option on; records each mixed batch, each classification-loss call,
    and the checkpoint of step 1 (save_every=1: written before the callback)."""
    out = str(tmp_path_factory.mktemp("recipe"))
    mixes, ce_calls, seen, step1 = [], [], [], {}
    real_mix, real_cl = BatchMixer.__call__, trainer_mod.classification_losses

    def mix(self, video, labels, step, micro=0):
        m = real_mix(self, video, labels, step, micro)
        mixes.append({"video": video.clone(), "labels": labels.clone(), "mixed": m,
                      "step": step, "micro": micro})
        return m

    def cl(losses, logits, logits_v, target, eps):
        new = real_cl(losses, logits, logits_v, target, eps)
        ce_calls.append({k: v.detach().clone() for k, v in dict(
            logits=logits, logits_v=logits_v, target=target, ce=new["ce"], ce_v=new["ce_v"],
            total=new["total"], old_total=losses["total"], old_ce=losses["ce"],
            old_ce_v=losses["ce_v"]).items()})
        return new

    def cb(info):
        seen.append(info)
        if info["step"] == 1:
            step1.update(load_checkpoint(os.path.join(out, "last.pt")))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BatchMixer, "__call__", mix)
        mp.setattr(trainer_mod, "classification_losses", cl)
        result = train(tiny_config(out, *RECIPE), callbacks=[cb])
    return dict(out=out, result=result, mixes=mixes, ce_calls=ce_calls, seen=seen,
                step1=step1, final=load_checkpoint(os.path.join(out, "last.pt")))


def test_recipe_run_is_finite_and_writes_ema_metrics(recipe_run):
    r = recipe_run
    assert [s["step"] for s in r["seen"]] == [1, 2]
    assert all(math.isfinite(s["loss"]) for s in r["seen"])
    lines = [json.loads(x) for x in open(os.path.join(r["out"], "metrics.jsonl"))]
    rec = lines[-1]
    assert all(math.isfinite(v) for v in rec["train"].values())
    for k in ("top1", "top5", "mean_class", "loss"):
        assert f"{k}_ema" in rec["eval"] and 0 <= rec["eval"]["top1_ema"] <= 1
        assert r["result"][f"{k}_ema"] == rec["eval"][f"{k}_ema"]
    assert "num_samples_ema" not in rec["eval"]
    log = open(os.path.join(r["out"], "train.log")).read()
    assert "(EMA weights): top1" in log and "layer decay 0.7" in log


def test_recipe_run_mixes_every_batch(recipe_run):
    """One mixed micro-batch per step, from the step's own generator; the classification
    losses got the mixer's soft target."""
    mixes = recipe_run["mixes"]
    assert [(m["step"], m["micro"]) for m in mixes] == [(0, 0), (1, 0)]
    for m, call in zip(mixes, recipe_run["ce_calls"]):
        mb = m["mixed"]
        assert torch.equal(call["target"], mb.target)
        assert mb.target.shape == (2, 4) and torch.allclose(mb.target.sum(1), torch.ones(2))
        # the same draw again from a fresh mixer with the run's seed
        again = BatchMixer(4, mixup=0.8, cutmix=1.0, switch_prob=0.5, seed=0)(
            m["video"], m["labels"], m["step"], m["micro"])
        assert torch.equal(again.video, mb.video) and again.lam == mb.lam


def test_label_smoothing_and_soft_targets_in_the_run(recipe_run):
    """ce and ce_v of the run equal the written-out smoothed CE against the soft target, and
    total changed by exactly the difference."""
    for c in recipe_run["ce_calls"]:
        for k, logits in (("ce", c["logits"]), ("ce_v", c["logits_v"])):
            want = smoothed_ce(logits, c["target"], EPS)
            assert float(c[k]) == pytest.approx(float(want), rel=1e-5)
        diff = c["ce"] + c["ce_v"] - c["old_ce"] - c["old_ce_v"]
        assert float(c["total"]) == pytest.approx(float(c["old_total"] + diff), rel=1e-5)


def test_ema_is_the_exponential_average_of_the_raw_weights(recipe_run):
    """e_1 = w_1 (the first update copies), e_2 = d e_1 + (1 - d) w_2 (parameters and the
    bank buffer); the checkpoint holds model_ema beside the raw model."""
    s1, fin = recipe_run["step1"], recipe_run["final"]
    assert s1["model_ema_updates"] == 1 and fin["model_ema_updates"] == 2
    assert s1["model_ema"].keys() == s1["model"].keys() == fin["model_ema"].keys()
    for k, w1 in s1["model"].items():
        assert torch.equal(s1["model_ema"][k], w1), k
    moved = 0
    for k, w2 in fin["model"].items():
        if not w2.is_floating_point():
            assert torch.equal(fin["model_ema"][k], w2), k
            continue
        want = DECAY * s1["model"][k].double() + (1 - DECAY) * w2.double()
        torch.testing.assert_close(fin["model_ema"][k].double(), want, rtol=1e-6, atol=1e-7,
                                   msg=k)
        moved += not torch.equal(s1["model"][k], w2)
    assert moved > 10  # the raw weights did move between the steps
    assert not torch.equal(fin["model_ema"]["bank"], fin["model"]["bank"])
    assert weights_to_load(fin) is fin["model_ema"]


def test_layer_decay_in_the_run(recipe_run):
    """The optimiser's tower groups carry decay^(L + 1 - layer) x backbone lr; the schedule
    scales every group by the same factor."""
    groups = recipe_run["step1"]["optimizer"]["param_groups"]
    L = 2  # the tiny tower's blocks
    names = [g["name"] for g in groups]
    assert {f"backbone_layer{i}" for i in range(L + 2)} <= set(names)
    for g in groups:
        m = re.fullmatch(r"backbone(?:_no_decay)?_layer(\d+)", g["name"])
        want = 1e-3 * (0.1 * LAYER_DECAY ** (L + 1 - int(m.group(1))) if m else 1.0)
        assert g["initial_lr"] == pytest.approx(want, rel=1e-12), g["name"]
    ratios = {g["lr"] / g["initial_lr"] for g in groups}  # the schedule's factor at step 1
    assert min(ratios) > 0 and max(ratios) == pytest.approx(min(ratios), rel=1e-12)


# ----------------------------------------------------------------------------- exact resume

def test_exact_resume_with_ema_and_mixing(recipe_run, tmp_path):
    """Killed after step 1 (its checkpoint written), resumed: weights, EMA, optimiser state
    and metrics are bitwise those of the uninterrupted run."""
    full = recipe_run["final"]
    out = str(tmp_path)

    class Killed(Exception):
        pass

    def kill(info):
        if info["step"] == 1:
            raise Killed

    with pytest.raises(Killed):
        train(tiny_config(out, *RECIPE), callbacks=[kill])
    assert load_checkpoint(os.path.join(out, "last.pt"))["step"] == 1
    steps = []
    train(tiny_config(out, *RECIPE, "train.resume=auto"),
          callbacks=[lambda i: steps.append(i["step"])])
    assert steps == [2]
    done = load_checkpoint(os.path.join(out, "last.pt"))
    assert done["model_ema_updates"] == full["model_ema_updates"] == 2
    for key in ("model", "model_ema"):
        assert done[key].keys() == full[key].keys()
        for k, v in full[key].items():
            assert torch.equal(v, done[key][k]), (key, k)
    for pid, st in full["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, done["optimizer"]["state"][pid][k]), (pid, k)
    assert done["metrics"] == full["metrics"]


def test_checkpoint_without_ema_resumes_with_ema_on(tmp_path):
    """A checkpoint of a run without EMA resumes with train.ema_decay on: the EMA starts at
    the next step (a copy of the weights), and eval keeps loading the raw weights before."""
    out = str(tmp_path)
    train(tiny_config(out, "train.max_steps=1", "train.eval_every=0"))
    first = load_checkpoint(os.path.join(out, "last.pt"))
    assert "model_ema" not in first and weights_to_load(first) is first["model"]
    train(tiny_config(out, "train.max_steps=2", "train.eval_every=0", "train.ema_decay=0.99",
                      "train.resume=auto"))
    done = load_checkpoint(os.path.join(out, "last.pt"))
    assert done["step"] == 2 and done["model_ema_updates"] == 1
    for k, v in done["model"].items():
        assert torch.equal(done["model_ema"][k], v), k
    assert "holds no weight EMA" in open(os.path.join(out, "train.log")).read()


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("key, value", [
    ("train.label_smoothing", "-0.1"), ("train.label_smoothing", "1.5"),
    ("train.mixup", "-1"), ("train.cutmix", "-0.5"), ("train.mixup_switch_prob", "1.1"),
    ("train.ema_decay", "-0.1"), ("train.ema_decay", "2"), ("train.layer_decay", "0"),
    ("train.layer_decay", "1.2"), ("train.mixup", "nan"), ("train.aux_warmup_epochs", "-1"),
    ("train.aux_warmup_epochs", "nan")])
def test_bad_values_are_rejected_naming_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError, match=re.escape(key)):
        tiny_config(str(tmp_path), f"{key}={value}")


@pytest.mark.parametrize("key", ["train.label_smoothing", "train.ema_decay"])
def test_an_open_upper_end_is_rejected_at_run_start(tmp_path, key):
    cfg = tiny_config(str(tmp_path), f"{key}=1.0")
    with pytest.raises(ConfigError, match=re.escape(key)):
        train(cfg)
    assert not os.path.exists(tmp_path / "last.pt")


def test_defaults_are_off(tmp_path):
    t = tiny_config(str(tmp_path)).train
    assert (t.label_smoothing, t.mixup, t.cutmix, t.ema_decay, t.layer_decay,
            t.aux_warmup_epochs) == (0.0, 0.0, 0.0, 0.0, 1.0, 0.0)


# ----------------------------------------------------------------------------- units

def test_classification_loss_matches_the_formula():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 7, generator=g) * 3
    labels = torch.tensor([0, 6, 3, 3, 1])
    soft = torch.softmax(torch.randn(5, 7, generator=g), 1)
    for eps in (0.0, 0.1, 0.5):
        for t in (labels, soft):
            assert float(classification_loss(logits, t, eps)) == pytest.approx(
                float(smoothed_ce(logits, t, eps)), rel=1e-5)
    losses = {"ce": torch.tensor(1.0), "ce_v": torch.tensor(2.0), "total": torch.tensor(10.0),
              "sema_video": torch.tensor(0.5)}
    new = classification_losses(losses, logits, logits, labels, 0.1)
    want = float(smoothed_ce(logits, labels, 0.1))
    assert float(new["ce"]) == pytest.approx(want, rel=1e-5)
    assert float(new["total"]) == pytest.approx(7.0 + 2 * want, rel=1e-5)
    assert new["sema_video"] is losses["sema_video"] and float(losses["total"]) == 10.0


def clips(B: int = 4, T: int = 3, H: int = 8, W: int = 10) -> torch.Tensor:
    """Clips whose every value is distinct (so a pasted pixel can be told apart)."""
    return torch.arange(B * T * 3 * H * W, dtype=torch.float32).view(B, T, 3, H, W) / 100


def test_mixup_is_a_convex_combination_with_a_permutation():
    x, y = clips(), torch.tensor([0, 1, 2, 3])
    mixer = BatchMixer(5, mixup=0.4, seed=3)
    m = mixer(x, y, step=7, micro=1)
    assert m.kind == "mixup" and m.box is None and 0 < m.lam < 1
    assert sorted(m.perm.tolist()) == [0, 1, 2, 3]
    perm = m.perm.tolist()
    want = torch.stack([m.lam * x[i] + (1 - m.lam) * x[perm[i]] for i in range(4)])
    torch.testing.assert_close(m.video, want, rtol=1e-6, atol=1e-6)
    eye = torch.eye(5)
    for i in range(4):
        torch.testing.assert_close(m.target[i], m.lam * eye[y[i]] + (1 - m.lam) *
                                   eye[y[perm[i]]])
    hard = y if m.lam >= 0.5 else y[m.perm]
    assert torch.equal(m.labels, hard)
    # seeded by (seed, rank, step, micro): the same call again is the same draw, others differ
    again = mixer(x, y, step=7, micro=1)
    assert again.lam == m.lam and torch.equal(again.perm, m.perm)
    lams = {mixer(x, y, step=s, micro=0).lam for s in range(6)}
    assert len(lams) == 6
    assert BatchMixer(5, mixup=0.4, seed=3, rank=1)(x, y, 7, 1).lam != m.lam
    # the global RNG is not drawn from
    state = torch.get_rng_state()
    mixer(x, y, 8)
    assert torch.equal(torch.get_rng_state(), state)


def test_cutmix_pastes_one_box_in_every_frame():
    x, y = clips(B=4, T=3, H=8, W=10), torch.tensor([3, 2, 1, 0])
    mixer = BatchMixer(4, cutmix=1.0, seed=0)
    seen_box = False
    for step in range(20):
        m = mixer(x, y, step)
        assert m.kind == "cutmix"
        perm = m.perm.tolist()
        changed = torch.zeros(8, 10, dtype=torch.bool)
        for i in range(4):
            if perm[i] == i:
                continue
            diff = m.video[i] != x[i]  # [T, 3, H, W]
            # the pasted pixels come from the partner, the rest is the clip itself
            assert torch.equal(m.video[i][diff], x[perm[i]][diff])
            # the same region in every frame and channel
            region = diff[0, 0]
            assert torch.equal(diff, region.expand_as(diff))
            changed = region if not changed.any() else changed
            assert torch.equal(region, changed)
        if not changed.any():
            continue
        rows = changed.any(1).nonzero().flatten()
        cols = changed.any(0).nonzero().flatten()
        y1, y2, x1, x2 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        assert bool(changed[y1:y2, x1:x2].all())  # a rectangle
        assert m.box == (y1, y2, x1, x2)
        assert m.lam == pytest.approx(1 - (y2 - y1) * (x2 - x1) / 80)
        seen_box = True
    assert seen_box


def test_switch_prob_chooses_between_mixup_and_cutmix():
    x, y = clips(), torch.tensor([0, 1, 2, 3])
    kinds = lambda p: {BatchMixer(4, mixup=1.0, cutmix=1.0, switch_prob=p)(x, y, s).kind
                       for s in range(20)}
    assert kinds(0.0) == {"mixup"} and kinds(1.0) == {"cutmix"}
    assert kinds(0.5) == {"mixup", "cutmix"}
    assert not BatchMixer(4).active


# ----------------------------------------------------------------------------- layer decay

def _expected_scale(name: str, L: int, decay: float) -> float:
    """From the name alone: block i of the tower decay^(L - i), the embeddings decay^(L + 1),
    the rest of the tower (ln_post, proj) 1."""
    m = re.match(r"backbone\.visual\.transformer\.resblocks\.(\d+)\.", name)
    if m:
        return decay ** (L - int(m.group(1)))
    if re.match(r"backbone\.visual\.(conv1|class_embedding|positional_embedding|ln_pre)",
                name):
        return decay ** (L + 1)
    return 1.0


@pytest.mark.parametrize("backbone", ["tiny", "uniformerv2-tiny"])
def test_layer_decay_groups(tmp_path, backbone):
    cfg = tiny_config(str(tmp_path), f"model.backbone={backbone}")
    model = build_model(cfg, build_dataset(cfg, None, True).classes)
    L = len(model.backbone.visual.transformer.resblocks)
    lr, mult, decay = 1e-3, cfg.model.backbone_lr_mult, 0.6
    base = model.param_groups(lr, 0.05)
    groups = layer_decay_groups(model, base, decay)
    names = {id(p): n for n, p in model.named_parameters()}
    grouped = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(names[id(p)] for g in base for p in g["params"])
    blocks_seen = set()
    for g in groups:
        for p in g["params"]:
            n = names[id(p)]
            tower = n.startswith("backbone.visual.") and ".lmhra" not in n
            want = lr * (mult * _expected_scale(n, L, decay) if tower else 1.0)
            assert g["lr"] == pytest.approx(want, rel=1e-12), n
            assert g["weight_decay"] in (0.0, 0.05)
            m = re.search(r"resblocks\.(\d+)\.", n)
            if m and tower:
                blocks_seen.add(int(m.group(1)))
    assert blocks_seen == set(range(L))
    assert tower_layer_id("backbone.visual.positional_embedding", L) == 0
    assert tower_layer_id("backbone.visual.ln_post.weight", L) == L + 1
    assert tower_layer_id("head.fc.weight", L) is None
    if backbone == "uniformerv2-tiny":  # the new LMHRAs in the blocks stay with the head
        lm = [g for g in groups for p in g["params"] if ".lmhra" in names[id(p)]]
        assert lm and all(g["lr"] == lr for g in lm)
    assert layer_decay_groups(model, base, 1.0)[0]["lr_scale"] == 1.0
    with pytest.raises(ValueError):
        layer_decay_groups(model, base, 0.0)


# ----------------------------------------------------------------------------- aux warm-up

def test_auxiliary_weight_ramps_linearly_from_zero():
    assert auxiliary_weight(0, 10, 0.0) == 1.0 and auxiliary_weight(7, 10, 0.0) == 1.0
    # 2 epochs of 10 steps: 0 at the first step, 0.5 after one epoch, 1 from step 20 on
    assert [auxiliary_weight(s, 10, 2.0) for s in (0, 5, 10, 19, 20, 35)] == [
        0.0, 0.25, 0.5, 0.95, 1.0, 1.0]


def test_scale_auxiliary_weights_only_the_auxiliary_part():
    losses = {"ce": torch.tensor(1.5), "ce_v": torch.tensor(0.25),
              "mtc_spatial": torch.tensor(3.0), "sema_video": torch.tensor(2.0),
              "total": torch.tensor(1.5 + 0.25 + 1.0 * 3.0 + 5.0 * 2.0)}
    for w, want in ((0.0, 1.75), (0.5, 1.75 + 6.5), (1.0, 14.75)):
        new = scale_auxiliary(losses, w)
        assert float(new["total"]) == pytest.approx(want, rel=1e-6)
        assert new["sema_video"] is losses["sema_video"] and new["ce"] is losses["ce"]
    assert float(losses["total"]) == 14.75


def test_aux_warmup_in_the_run(tmp_path):
    """0.5 epochs of 6 steps (12 training clips, batch 2): the auxiliary part of the loss that
    is backpropagated has weight 0, 1/3, 2/3 at steps 0-2 and full weight from step 3 on."""
    calls, seen = [], []
    real = trainer_mod.scale_auxiliary

    def scale(losses, w):
        new = real(losses, w)
        calls.append((w, float(losses["total"]), float(new["total"]),
                      float(losses["ce"] + losses["ce_v"])))
        return new

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod, "scale_auxiliary", scale)
        train(tiny_config(str(tmp_path), "train.max_steps=4", "train.eval_every=0",
                          "train.aux_warmup_epochs=0.5"), callbacks=[seen.append])
    assert [c[0] for c in calls] == pytest.approx([0.0, 1 / 3, 2 / 3])
    for (w, total, scaled, cls), info in zip(calls, seen):
        assert total > cls  # the auxiliary terms are on (gamma1 = gamma2 = 5 by default)
        assert scaled == pytest.approx(cls + w * (total - cls), rel=1e-5)
        assert info["loss"] == pytest.approx(scaled, rel=1e-6)
    assert "over the first 0.5 epochs (3 steps" in open(tmp_path / "train.log").read()


def test_aux_warmup_first_step_is_the_cross_entropies_alone(tmp_path):
    """At weight 0 the first step's update equals that of a run with gamma1 = gamma2 = 0."""
    common = ("train.max_steps=1", "train.eval_every=0", "train.deterministic=true")
    train(tiny_config(str(tmp_path / "warm"), *common, "train.aux_warmup_epochs=1"))
    train(tiny_config(str(tmp_path / "off"), *common, "model.gamma1=0", "model.gamma2=0"))
    a = load_checkpoint(str(tmp_path / "warm" / "last.pt"))["model"]
    b = load_checkpoint(str(tmp_path / "off" / "last.pt"))["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)
