"""The model side of the binding benchmark: the paper form of the MTC losses (mtc_form,
mtc_lambda), the bank that seeds the queries (query_bank) and tracklet aggregation over every
selected semantic (ta_semantics); each as an ART option and a config key.

Every reference here is an independent formulation: Python loops over b, k, t on plain floats."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import art_fast
from art_fast import ART, ARTOptions
from art_fast.losses import mtc_losses, mtc_losses_paper
from art_fast.model.semantics import TopKSemantics
from art_fast.model.tracklets import aggregate_tracklets
from art_fast.nn import TrackletContrastiveLoss
from art_fast.train import ConfigError, build_model, load_config
from art_fast.train.trainer import main_train

LEVELS = ("spatial", "temporal", "tracklet")
CLASSES = [f"attribute combination number {i}" for i in range(5)]
SMALL = dict(backbone="tiny", image_size=32, latent_dim=32, heads=4, se_layers=1,
             rssa_layers=1, dropout=0.0, num_frames=3, num_queries=2, k_region=4)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("text_bank"))


# --------------------------------------------------------------------------- loop references

def _cos(a: list[float], b: list[float]) -> float:
    """Cosine; 0 when either vector is zero (the paper form's documented convention)."""
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return sum(x * y for x, y in zip(a, b)) / (na * nb)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def paper_loops(tr: torch.Tensor, lam: float) -> dict[str, float]:
    """The paper form written out: r[b][k][t] is a list of d floats."""
    r = tr.tolist()
    B, K, T = len(r), len(r[0]), len(r[0][0])
    spatial = [_cos(r[b][i][t], r[b][j][t]) ** 2
               for b in range(B) for t in range(T) for i in range(K) for j in range(K) if i != j]
    temporal = [(_cos(r[b][k][t], r[b][k][t + 1]) - lam) ** 2
                for b in range(B) for k in range(K) for t in range(T - 1)]
    means = [[[sum(r[b][k][t][c] for t in range(T)) / T for c in range(len(r[b][k][0]))]
              for k in range(K)] for b in range(B)]
    tracklet = [_cos(means[b][i], means[b][j]) ** 2
                for b in range(B) for i in range(K) for j in range(K) if i != j]
    return {"spatial": _mean(spatial), "temporal": _mean(temporal),
            "tracklet": _mean(tracklet)}


def aggregation_loops(tr: torch.Tensor, sem: torch.Tensor, temperature: float, mode: str):
    r, s = tr.tolist(), sem.tolist()
    B, K, T, d = tr.shape
    agg = torch.zeros(B, K, d, dtype=torch.float64)
    sal = torch.zeros(B, K, T, dtype=torch.float64)
    for b in range(B):
        for k in range(K):
            if mode == "own":
                c = [_cos(r[b][k][t], s[b][k]) for t in range(T)]
            else:
                c = [max(_cos(r[b][k][t], s[b][j]) for j in range(K)) for t in range(T)]
            e = [math.exp(x / temperature) for x in c]
            w = [x / sum(e) for x in e]
            for t in range(T):
                sal[b, k, t] = w[t]
                for i in range(d):
                    agg[b, k, i] += w[t] * r[b][k][t][i]
    return agg, sal


# --------------------------------------------------------------------------- the paper form

@pytest.mark.parametrize("B,K,T,d", [(2, 3, 5, 7), (1, 1, 5, 7), (3, 3, 1, 7), (2, 1, 1, 4),
                                     (1, 2, 2, 3), (4, 5, 3, 2)])
@pytest.mark.parametrize("lam", [0.6, 0.25, 1.0])
def test_paper_form_matches_loops(B, K, T, d, lam):
    g = torch.Generator().manual_seed(B * 1000 + K * 100 + T * 10 + d)
    tr = torch.randn(B, K, T, d, generator=g, dtype=torch.float64)
    got = mtc_losses_paper(tr, lam=lam)
    want = paper_loops(tr, lam)
    assert set(got) == set(LEVELS)
    for name in LEVELS:
        assert got[name].dim() == 0 and got[name].dtype == torch.float64
        assert float(got[name]) == pytest.approx(want[name], rel=1e-10, abs=1e-12), name
    if K == 1:
        assert float(got["spatial"]) == 0.0 and float(got["tracklet"]) == 0.0
    if T == 1:
        assert float(got["temporal"]) == 0.0


def test_paper_form_through_the_module_and_weights():
    tr = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    total, levels = TrackletContrastiveLoss((1.0, 0.5, 2.0), form="paper", lam=0.3)(tr)
    want = paper_loops(tr, 0.3)
    for name in LEVELS:
        assert float(levels[name]) == pytest.approx(want[name], rel=1e-10)
    assert float(total) == pytest.approx(
        want["spatial"] + 0.5 * want["temporal"] + 2.0 * want["tracklet"], rel=1e-10)


def test_paper_form_low_precision_is_computed_in_float32():
    tr = torch.randn(2, 2, 3, 8).to(torch.bfloat16)
    got = mtc_losses_paper(tr)
    want = paper_loops(tr.double(), 0.6)
    for name in LEVELS:
        assert got[name].dtype == torch.float32
        assert float(got[name]) == pytest.approx(want[name], rel=1e-5, abs=1e-6)


def _chain(cosines: list[float]) -> torch.Tensor:
    """One tracklet [1, 1, T, 3] of unit vectors in a plane (scaled differently) whose adjacent
    cosines are the given values."""
    angle, rows = 0.0, [[1.0, 0.0, 0.0]]
    for i, c in enumerate(cosines):
        angle += math.acos(c)
        scale = 1.0 + 0.5 * i  # the loss is about directions: norms must not matter
        rows.append([scale * math.cos(angle), scale * math.sin(angle), 0.0])
    return torch.tensor(rows, dtype=torch.float64).view(1, 1, -1, 3)


@pytest.mark.parametrize("lam", [0.6, 0.2, 0.95, 1.0])
def test_lambda_is_the_fixed_point_of_the_temporal_level(lam):
    tr = _chain([lam] * 4)
    got = mtc_losses_paper(tr, lam=lam)
    assert float(got["temporal"]) == pytest.approx(0.0, abs=1e-14)
    other = 0.5 if lam != 0.5 else 0.7
    want = (lam - other) ** 2
    assert float(mtc_losses_paper(tr, lam=other)["temporal"]) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("start", [0.95, 0.85, 0.3, -0.4])
def test_temporal_gradient_moves_the_cosine_toward_lambda(start):
    lam = 0.6
    tr = _chain([start]).requires_grad_(True)
    for _ in range(200):
        loss = mtc_losses_paper(tr, lam=lam)["temporal"]
        (g,) = torch.autograd.grad(loss, tr)
        assert torch.isfinite(g).all()
        with torch.no_grad():
            tr -= 0.5 * g
    r = tr.detach()[0, 0]
    end = float(F.cosine_similarity(r[0], r[1], dim=0))
    # from above it went down, from below up, and it got (nearly) there, not past it
    assert abs(end - lam) < 0.1 * abs(start - lam)
    if start > lam:
        assert lam - 1e-3 <= end < start
    else:
        assert start < end <= lam + 1e-3


def test_first_step_direction_from_both_sides():
    lam = 0.6
    for start, sign in ((0.9, -1.0), (0.2, 1.0)):
        tr = _chain([start]).requires_grad_(True)
        (g,) = torch.autograd.grad(mtc_losses_paper(tr, lam=lam)["temporal"], tr)
        new = (tr - 1e-3 * g).detach()[0, 0]
        moved = float(F.cosine_similarity(new[0], new[1], dim=0)) - start
        assert sign * moved > 0, (start, moved)


def _grads(tr: torch.Tensor, lam: float = 0.6) -> torch.Tensor:
    tr = tr.clone().requires_grad_(True)
    levels = mtc_losses_paper(tr, lam=lam)
    for name in LEVELS:
        assert torch.isfinite(levels[name]), name
    (g,) = torch.autograd.grad(sum(levels.values()), tr)
    return g


def test_gradients_finite_for_zero_and_identical_responses():
    g = _grads(torch.zeros(2, 3, 4, 5, dtype=torch.float64))
    assert torch.isfinite(g).all()
    part = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    part[0, 1] = 0.0  # one whole tracklet is zero (and so its mean)
    part[1, :, 2] = 0.0  # one frame of zeros
    assert torch.isfinite(_grads(part)).all()
    levels = mtc_losses_paper(part)
    want = paper_loops(part, 0.6)
    for name in LEVELS:
        assert float(levels[name]) == pytest.approx(want[name], rel=1e-10, abs=1e-12)
    same = torch.randn(5, dtype=torch.float64).expand(2, 3, 4, 5).contiguous()
    got = mtc_losses_paper(same, lam=0.6)
    assert float(got["spatial"]) == pytest.approx(1.0) and float(got["tracklet"]) == \
        pytest.approx(1.0)
    assert float(got["temporal"]) == pytest.approx(0.4 ** 2)
    assert torch.isfinite(_grads(same)).all()
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.isfinite(_grads(torch.zeros(1, 2, 3, 4, dtype=dtype)).float()).all()


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 3, 4), (2, 2, 1, 3), (1, 3, 2, 2)])
def test_paper_form_gradcheck(shape):
    g = torch.Generator().manual_seed(7)
    tr = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    for lam in (0.6, 1.0):
        assert torch.autograd.gradcheck(
            lambda x, lam=lam: tuple(mtc_losses_paper(x, lam=lam)[n] for n in LEVELS), (tr,))


# --------------------------------------------------------------------------- the infonce form

@pytest.mark.parametrize("negatives", ["frame", "batch"])
def test_infonce_form_is_mtc_losses(negatives):
    tr = torch.randn(3, 2, 5, 6, dtype=torch.float64)
    total, levels = TrackletContrastiveLoss((1.0, 2.0, 3.0), 0.2, negatives, form="infonce")(tr)
    want = mtc_losses(tr, temperature=0.2, temporal_negatives=negatives)
    for name in LEVELS:
        torch.testing.assert_close(levels[name], want[name], rtol=0, atol=0)
    torch.testing.assert_close(
        total, want["spatial"] + 2.0 * want["temporal"] + 3.0 * want["tracklet"])
    # and the module's default form is the infonce one (the default until measured otherwise)
    _, default_levels = TrackletContrastiveLoss((1.0, 2.0, 3.0), 0.2, negatives)(tr)
    for name in LEVELS:
        torch.testing.assert_close(default_levels[name], want[name], rtol=0, atol=0)


def test_defaults_are_todays_behaviour():
    o = ARTOptions()
    assert (o.mtc_form, o.mtc_lambda, o.query_bank, o.ta_semantics) == \
        ("infonce", 0.6, "agent", "own")


# --------------------------------------------------------------------------- aggregation

@pytest.mark.parametrize("B,K,T,d", [(2, 3, 5, 7), (1, 1, 4, 3), (3, 2, 1, 5), (2, 4, 3, 2)])
@pytest.mark.parametrize("mode", ["own", "all"])
def test_aggregation_matches_loops(B, K, T, d, mode):
    g = torch.Generator().manual_seed(B + 10 * K + 100 * T)
    tr = torch.randn(B, K, T, d, generator=g, dtype=torch.float64)
    sem = torch.randn(B, K, d, generator=g, dtype=torch.float64)
    agg, w = aggregate_tracklets(tr, sem, 0.3, mode)
    want_agg, want_w = aggregation_loops(tr, sem, 0.3, mode)
    assert agg.shape == (B, K, d) and w.shape == (B, K, T)
    torch.testing.assert_close(w, want_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(agg, want_agg, rtol=1e-10, atol=1e-12)


def test_aggregation_own_is_the_default_and_all_differs():
    g = torch.Generator().manual_seed(11)
    tr = torch.randn(2, 3, 6, 4, generator=g, dtype=torch.float64)
    sem = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    agg, w = aggregate_tracklets(tr, sem, 0.3)
    agg_own, w_own = aggregate_tracklets(tr, sem, 0.3, "own")
    torch.testing.assert_close(w, w_own, rtol=0, atol=0)
    torch.testing.assert_close(agg, agg_own, rtol=0, atol=0)
    _, w_all = aggregate_tracklets(tr, sem, 0.3, "all")
    assert not torch.allclose(w_all, w_own)
    one_sem = sem[:, :1]  # K = 1: both modes are the same
    a1, w1 = aggregate_tracklets(tr[:, :1], one_sem, 0.3, "all")
    a2, w2 = aggregate_tracklets(tr[:, :1], one_sem, 0.3, "own")
    torch.testing.assert_close(w1, w2, rtol=0, atol=0)
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    with pytest.raises(ValueError, match="aggregate_tracklets: mode must be one of"):
        aggregate_tracklets(tr, sem, 0.3, "every")


def test_aggregation_all_has_finite_gradients():
    tr = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    sem = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: aggregate_tracklets(a, b, 0.5, "all"), (tr, sem))


# --------------------------------------------------------------------------- query bank

@pytest.mark.parametrize("query_bank", ["agent", "ema"])
def test_topk_semantics_embeds_the_chosen_bank(query_bank):
    torch.manual_seed(5)
    P, C, Ct, E, d, K = 3, 6, 5, 4, 7, 2
    bank, agent = torch.randn(P, C, Ct), torch.randn(P, C, Ct)
    mod = TopKSemantics(E, Ct, d, K, query_bank)
    x = torch.randn(4, E)
    s_topk, classes, z = mod(x, bank, agent)
    source = (agent if query_bank == "agent" else bank).tolist()
    for b in range(4):
        for k in range(K):
            c = int(classes[b, k])
            unit = []
            for p in range(P):
                v = source[p][c]
                n = math.sqrt(sum(e * e for e in v))
                unit.append([e / n for e in v])
            mean = [sum(unit[p][i] for p in range(P)) / P for i in range(Ct)]
            n = math.sqrt(sum(e * e for e in mean))
            emb = torch.tensor([e / n for e in mean])
            torch.testing.assert_close(s_topk[b, k], mod.to_latent(emb), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="TopKSemantics: query_bank must be one of"):
        TopKSemantics(E, Ct, d, K, "both")


def model_aggregation(model: ART, video: torch.Tensor, mode: str, segments: int = 1):
    """The model's eval-mode output and its tracklet aggregation recomputed from its parts:
    ``(out, x_cls, aggregate, saliency)``."""
    model.eval()
    with torch.no_grad():
        out = model(video)
        _, _, x_cls = model.backbone(video)
        s_topk, _, _ = model.semantics(x_cls, model.bank, model.agent_bank)
        agg, w = aggregate_tracklets(out.tracklets, s_topk, model.options.ta_temperature,
                                     mode, segments)
    return out, x_cls, agg, w


def _tiny(cache_dir: str, **kw) -> ART:
    torch.manual_seed(0)
    return ART(CLASSES, **{**SMALL, "text_cache_dir": cache_dir, **kw})


def _clip(B: int = 2, T: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, 3, 32, 32, generator=g)


def _agent_grad(model: ART, loss: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, model.agent_bank, retain_graph=True, allow_unused=True)
    return torch.zeros_like(model.agent_bank) if g is None else g


def test_query_bank_decides_whether_the_main_losses_reach_the_agent_bank(cache_dir):
    labels = torch.tensor([1, 3])
    ema, agent = _tiny(cache_dir, query_bank="ema"), _tiny(cache_dir, query_bank="agent")
    for model in (ema, agent):
        with torch.no_grad():  # make S and S_a differ (as after training)
            model.agent_bank.add_(0.3 * torch.randn_like(model.agent_bank))
    out_e, out_a = ema(_clip(), labels), agent(_clip(), labels)
    for out in (out_e, out_a):
        for name, v in out.losses.items():
            assert torch.isfinite(v), name
    # ce alone: nothing reaches S_a under "ema"; it does under "agent"
    assert float(_agent_grad(ema, out_e.losses["ce"]).abs().max()) == 0.0
    assert float(_agent_grad(ema, out_e.losses["mtc_spatial"] + out_e.losses["mtc_temporal"]
                             + out_e.losses["mtc_tracklet"]).abs().max()) == 0.0
    assert float(_agent_grad(agent, out_a.losses["ce"]).abs().max()) > 0.0
    # L_sema still trains S_a under "ema", and it is the only thing that does
    sema = out_e.losses["sema_video"] + out_e.losses["sema_proto"]
    g_sema = _agent_grad(ema, sema)
    assert float(g_sema.abs().max()) > 0.0
    g_total = _agent_grad(ema, out_e.losses["total"])
    torch.testing.assert_close(g_total, ema.options.gamma2 * g_sema)
    # the EMA bank is never a leaf of the graph
    assert not ema.bank.requires_grad and ema.bank.grad is None


def test_query_bank_ema_backward_leaves_no_main_loss_gradient(cache_dir):
    """The brief's check on .grad after backward of ce only."""
    model = _tiny(cache_dir, query_bank="ema")
    model(_clip(), torch.tensor([0, 2])).losses["ce"].backward()
    g = model.agent_bank.grad
    assert g is None or float(g.abs().max()) == 0.0
    model = _tiny(cache_dir, query_bank="agent")
    model(_clip(), torch.tensor([0, 2])).losses["ce"].backward()
    assert model.agent_bank.grad is not None and float(model.agent_bank.grad.abs().max()) > 0


# --------------------------------------------------------------------------- the model

COMBOS = list(itertools.product(["infonce", "paper"], ["agent", "ema"], ["own", "all"]))


@pytest.mark.parametrize("mtc_form,query_bank,ta_semantics", COMBOS)
def test_every_combination_trains(cache_dir, mtc_form, query_bank, ta_semantics):
    model = _tiny(cache_dir, mtc_form=mtc_form, mtc_lambda=0.35, query_bank=query_bank,
                  ta_semantics=ta_semantics)
    assert model.mtc.form == mtc_form and model.semantics.query_bank == query_bank
    video, labels = _clip(seed=1), torch.tensor([4, 0])
    out = model(video, labels)
    for name, v in out.losses.items():
        assert v.dim() == 0 and torch.isfinite(v), name
    out.losses["total"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # the levels are the chosen form's, on the model's own tracklets
    tr = out.tracklets.detach()
    if mtc_form == "paper":
        want = paper_loops(tr.double(), 0.35)
        for name in LEVELS:
            assert float(out.losses[f"mtc_{name}"]) == pytest.approx(want[name], rel=1e-4,
                                                                     abs=1e-6)
    else:
        want = mtc_losses(tr, temperature=model.options.mtc_temperature)
        for name in LEVELS:
            torch.testing.assert_close(out.losses[f"mtc_{name}"], want[name].float())
    # the saliency is the chosen aggregation over the chosen bank's S_topk
    out, _, _, w = model_aggregation(model, video, ta_semantics)
    torch.testing.assert_close(out.saliency, w)


# --------------------------------------------------------------------------- bad values

BAD = [
    ("mtc_form", "InfoNCE", "mtc_form must be one of"),
    ("mtc_form", True, "mtc_form must be one of"),
    ("mtc_lambda", 0, r"mtc_lambda must be a number in \(0, 1\]"),
    ("mtc_lambda", 0.0, r"mtc_lambda must be a number in \(0, 1\]"),
    ("mtc_lambda", 1.5, r"mtc_lambda must be a number in \(0, 1\]"),
    ("mtc_lambda", -0.2, r"mtc_lambda must be a number in \(0, 1\]"),
    ("mtc_lambda", "x", r"mtc_lambda must be a number in \(0, 1\]"),
    ("mtc_lambda", True, r"mtc_lambda must be a number in \(0, 1\]"),
    ("mtc_lambda", float("nan"), r"mtc_lambda must be a number in \(0, 1\]"),
    ("query_bank", "S", "query_bank must be one of"),
    ("query_bank", False, "query_bank must be one of"),
    ("ta_semantics", "mean", "ta_semantics must be one of"),
    ("ta_semantics", 1, "ta_semantics must be one of"),
]


@pytest.mark.parametrize("name,value,message", BAD)
def test_bad_option_values_through_art(name, value, message):
    # validation comes first: no model is built
    with pytest.raises(ValueError, match=f"ART: option {message}") as e:
        ART(CLASSES, backbone="tiny", image_size=32, **{name: value})
    assert "\n" not in str(e.value) and repr(value) in str(e.value)
    with pytest.raises(ValueError, match=message):
        ARTOptions(**{name: value}).validate()


def test_bad_values_of_the_functions():
    tr = torch.randn(1, 2, 3, 4)
    for lam in (0, 1.5, "x", True):
        with pytest.raises(ValueError, match="lam must be a number in"):
            mtc_losses_paper(tr, lam=lam)
        with pytest.raises(ValueError, match="TrackletContrastiveLoss: lam must be"):
            TrackletContrastiveLoss(form="paper", lam=lam)
    with pytest.raises(ValueError, match="TrackletContrastiveLoss: form must be one of"):
        TrackletContrastiveLoss(form="cosine")
    with pytest.raises(ValueError, match=r"\[B, K, T, d\]"):
        mtc_losses_paper(tr[0])
    mtc_losses_paper(tr, lam=1)  # an int in range is fine


@pytest.mark.parametrize("override,message", [
    ("model.mtc_form=cosine", r"model.mtc_form: expected one of \['infonce', 'paper'\], got "
                              "'cosine'"),
    ("model.mtc_form=true", "model.mtc_form: expected a string, got True"),
    ("model.mtc_lambda=0", r"model.mtc_lambda: expected a value > 0(\.0)?, got 0"),
    ("model.mtc_lambda=1.5", r"model.mtc_lambda: expected a value <= 1(\.0)?, got 1.5"),
    ("model.mtc_lambda=x", "model.mtc_lambda: expected a number, got 'x'"),
    ("model.mtc_lambda=true", "model.mtc_lambda: expected a number, got True"),
    ("model.query_bank=both", r"model.query_bank: expected one of \['agent', 'ema'\], got "
                              "'both'"),
    ("model.ta_semantics=mean", r"model.ta_semantics: expected one of \['own', 'all'\], got "
                                "'mean'"),
])
def test_bad_config_values(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, ["data.root=/d", override])
    assert "\n" not in str(e.value)
    # `art-fast train ... --set KEY=VALUE` fails the same way, before anything is built
    with pytest.raises(ConfigError, match=message):
        main_train(None, ["data.root=/d", f"output_dir={tmp_path}/run", override])
    assert not (tmp_path / "run").exists()
    cfg_file = tmp_path / "c.yaml"
    key, value = override.split("=")
    cfg_file.write_text(f"data: {{root: /d}}\nmodel: {{{key.split('.')[1]}: {value}}}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(str(cfg_file))


def test_config_keys_reach_the_model(cache_dir):
    cfg = load_config(None, [
        "data.root=/d", "data.num_frames=2", "data.image_size=32", "model.backbone=tiny",
        "model.latent_dim=32", "model.heads=4", "model.se_layers=1", "model.rssa_layers=1",
        "model.k_region=4", f"model.text_cache_dir={cache_dir}",
        "model.mtc_form=paper", "model.mtc_lambda=0.3", "model.query_bank=ema",
        "model.ta_semantics=all",
    ])
    assert (cfg.model.mtc_form, cfg.model.mtc_lambda) == ("paper", 0.3)
    assert load_config(None, ["data.root=/d", "model.mtc_lambda=1"]).model.mtc_lambda == 1.0
    model = build_model(cfg, CLASSES[:3])
    o = model.options
    assert (o.mtc_form, o.mtc_lambda, o.query_bank, o.ta_semantics) == ("paper", 0.3, "ema",
                                                                         "all")
    assert (model.mtc.form, model.mtc.lam, model.semantics.query_bank) == ("paper", 0.3, "ema")
    assert isinstance(model, art_fast.ART)
