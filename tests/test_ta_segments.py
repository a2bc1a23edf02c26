"""Tracklet aggregation within ordered spans of time (ART option ``ta_segments``, config key
``model.ta_segments``) and the span split it shares with ``temporal_module="segments"``.

References are independent: spans written out by hand, softmax and sums as Python loops over
plain floats."""

from __future__ import annotations

import math

import pytest
import torch
from test_mtc_forms import model_aggregation

from art_fast import ART, ARTOptions
from art_fast.model.backbone import SegmentTemporalModule, segment_spans
from art_fast.model.tracklets import aggregate_tracklets
from art_fast.train import ConfigError, build_model, load_config

CLASSES = [f"attribute combination number {i}" for i in range(5)]
SMALL = dict(backbone="tiny", image_size=32, latent_dim=32, heads=4, se_layers=1,
             rssa_layers=1, dropout=0.0, num_frames=5, num_queries=2, k_region=4)

# (T, S) -> the spans, written out: round(linspace(0, T, S + 1)) with halves to even
SPANS = {
    (5, 1): [range(0, 5)],
    (5, 2): [range(0, 2), range(2, 5)],          # 2.5 rounds to 2
    (6, 3): [range(0, 2), range(2, 4), range(4, 6)],
    (7, 3): [range(0, 2), range(2, 5), range(5, 7)],  # 2.33 -> 2, 4.67 -> 5
    (4, 4): [range(0, 1), range(1, 2), range(2, 3), range(3, 4)],
    (16, 2): [range(0, 8), range(8, 16)],
    (3, 2): [range(0, 2), range(2, 3)],          # 1.5 rounds to 2
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("text_bank"))


@pytest.mark.parametrize("T,S", sorted(SPANS))
def test_segment_spans_by_hand(T, S):
    want = torch.zeros(S, T)
    for s, span in enumerate(SPANS[(T, S)]):
        want[s, list(span)] = 1.0
    got = segment_spans(T, S)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("T,S", [(5, 0), (5, 6), (1, 2)])
def test_segment_spans_rejects_bad_counts(T, S):
    with pytest.raises(ValueError, match=r"segments must be in \[1, num_frames"):
        segment_spans(T, S)


def test_segment_module_means_are_the_spans():
    # the temporal read-out averages over exactly these spans (its weights row-normalise them)
    mod = SegmentTemporalModule(4, 7, 3)
    for s, span in enumerate(SPANS[(7, 3)]):
        row = [1.0 / len(span) if t in span else 0.0 for t in range(7)]
        torch.testing.assert_close(mod.weights[s], torch.tensor(row), rtol=0, atol=0)


def _cos(a: list[float], b: list[float]) -> float:
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b)) / (na * nb)


def segmented_loops(tr: torch.Tensor, sem: torch.Tensor, temperature: float, mode: str,
                    spans: list[range]):
    r, s = tr.tolist(), sem.tolist()
    B, K, T, d = tr.shape
    agg = torch.zeros(B, K, len(spans) * d, dtype=torch.float64)
    sal = torch.zeros(B, K, T, dtype=torch.float64)
    for b in range(B):
        for k in range(K):
            for si, span in enumerate(spans):
                if mode == "own":
                    c = {t: _cos(r[b][k][t], s[b][k]) for t in span}
                else:
                    c = {t: max(_cos(r[b][k][t], s[b][j]) for j in range(K)) for t in span}
                z = sum(math.exp(v / temperature) for v in c.values())
                for t in span:
                    w = math.exp(c[t] / temperature) / z
                    sal[b, k, t] = w
                    for i in range(d):
                        agg[b, k, si * d + i] += w * r[b][k][t][i]
    return agg, sal


@pytest.mark.parametrize("T,S", [(5, 2), (7, 3), (4, 4), (3, 2), (5, 1)])
@pytest.mark.parametrize("mode", ["own", "all"])
def test_segmented_aggregation_matches_loops(T, S, mode):
    B, K, d = 2, 3, 4
    g = torch.Generator().manual_seed(T * 10 + S)
    tr = torch.randn(B, K, T, d, generator=g, dtype=torch.float64)
    sem = torch.randn(B, K, d, generator=g, dtype=torch.float64)
    agg, w = aggregate_tracklets(tr, sem, 0.3, mode, segments=S)
    want_agg, want_w = segmented_loops(tr, sem, 0.3, mode, SPANS[(T, S)])
    assert agg.shape == (B, K, S * d) and w.shape == (B, K, T)
    torch.testing.assert_close(w, want_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(agg, want_agg, rtol=1e-10, atol=1e-12)


def test_one_segment_is_the_paper_aggregation_and_more_see_the_order():
    g = torch.Generator().manual_seed(3)
    tr = torch.randn(2, 2, 6, 5, generator=g)
    sem = torch.randn(2, 2, 5, generator=g)
    agg1, w1 = aggregate_tracklets(tr, sem, 0.2)
    agg1s, w1s = aggregate_tracklets(tr, sem, 0.2, segments=1)
    torch.testing.assert_close(agg1s, agg1, rtol=0, atol=0)
    torch.testing.assert_close(w1s, w1, rtol=0, atol=0)
    # reversing time leaves the one-softmax aggregate as it was (a weighted sum over t), not
    # the two-span one: its halves swap
    rev = tr.flip(2)
    torch.testing.assert_close(aggregate_tracklets(rev, sem, 0.2)[0], agg1)
    agg2, _ = aggregate_tracklets(tr, sem, 0.2, segments=2)
    agg2r, _ = aggregate_tracklets(rev, sem, 0.2, segments=2)
    assert not torch.allclose(agg2r, agg2, atol=1e-3)
    torch.testing.assert_close(agg2r, torch.cat([agg2[..., 5:], agg2[..., :5]], -1))


def test_segmented_aggregation_low_precision_and_gradients():
    g = torch.Generator().manual_seed(4)
    tr = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64)
    sem = torch.randn(2, 2, 6, generator=g, dtype=torch.float64)
    want, want_w = aggregate_tracklets(tr, sem, 0.1, segments=2)
    got, got_w = aggregate_tracklets(tr.bfloat16(), sem, 0.1, segments=2)
    assert got.dtype == got_w.dtype == torch.bfloat16
    torch.testing.assert_close(got_w.double(), want_w, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got.double(), want, rtol=3e-2, atol=3e-2)
    trg, semg = tr.clone().requires_grad_(), sem.clone().requires_grad_()
    for mode in ("own", "all"):
        assert torch.autograd.gradcheck(
            lambda a, b, m=mode: aggregate_tracklets(a, b, 0.3, m, segments=3)[0], (trg, semg))


@pytest.mark.parametrize("segments", [0, 6, -1, True, 1.5, "2"])
def test_aggregation_rejects_bad_segments(segments):
    tr, sem = torch.randn(1, 2, 5, 3), torch.randn(1, 2, 3)
    with pytest.raises(ValueError, match=r"aggregate_tracklets: segments must be an int in "
                                         r"\[1, T = 5\]") as e:
        aggregate_tracklets(tr, sem, 0.1, segments=segments)
    assert repr(segments) in str(e.value)


# --------------------------------------------------------------------------- the model

def test_art_with_segmented_aggregation(cache_dir):
    torch.manual_seed(0)
    model = ART(CLASSES, **SMALL, ta_segments=2, text_cache_dir=cache_dir)
    E, K, d = model.backbone.embed_dim, 2, 32
    assert model.head.fc.in_features == E + K * 2 * d
    video = torch.randn(2, 5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = model(video, torch.tensor([1, 4]))
    out.losses["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    out, x_cls, agg, w = model_aggregation(model, video, model.options.ta_semantics, 2)
    with torch.no_grad():
        want = model.head(torch.cat([x_cls, agg.flatten(1)], 1))
    torch.testing.assert_close(out.saliency, w)
    torch.testing.assert_close(out.logits, want)
    # each span of the saliency is a softmax: spans [0, 2) and [2, 5) each sum to 1
    torch.testing.assert_close(out.saliency[..., :2].sum(-1), torch.ones(2, 2))
    torch.testing.assert_close(out.saliency[..., 2:].sum(-1), torch.ones(2, 2))


def test_art_default_is_one_segment(cache_dir):
    assert ARTOptions().ta_segments == 1
    torch.manual_seed(0)
    a = ART(CLASSES, **SMALL, text_cache_dir=cache_dir)
    torch.manual_seed(0)
    b = ART(CLASSES, **SMALL, ta_segments=1, text_cache_dir=cache_dir)
    video = torch.randn(1, 5, 3, 32, 32)
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(video).logits, b(video).logits, rtol=0, atol=0)


@pytest.mark.parametrize("value", [0, -2, True, 1.5, "2"])
def test_art_rejects_bad_ta_segments(value):
    with pytest.raises(ValueError, match="ART: option ta_segments must be an int >= 1") as e:
        ART(CLASSES, backbone="tiny", image_size=32, ta_segments=value)
    assert repr(value) in str(e.value)


def test_art_rejects_more_segments_than_steps(cache_dir):
    with pytest.raises(ValueError, match=r"ART: option ta_segments must be in \[1, 5\] .* "
                                         r"got 6"):
        ART(CLASSES, **SMALL, ta_segments=6, text_cache_dir=cache_dir)
    # the global-token-only ablation has no tracklets: the option is not used there
    ART(CLASSES, **SMALL, ta_segments=6, tracklet_branch=False, text_cache_dir=cache_dir)


@pytest.mark.parametrize("override,message", [
    ("model.ta_segments=0", r"model.ta_segments: expected a value >= 1, got 0"),
    ("model.ta_segments=x", "model.ta_segments: expected an int"),
])
def test_bad_config_values(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, ["data.root=/d", override])
    assert "\n" not in str(e.value)


def test_config_key_reaches_the_model(cache_dir):
    cfg = load_config(None, [
        "data.root=/d", "data.num_frames=4", "data.image_size=32", "model.backbone=tiny",
        "model.latent_dim=32", "model.heads=4", "model.se_layers=1", "model.rssa_layers=1",
        "model.k_region=4", f"model.text_cache_dir={cache_dir}", "model.ta_segments=4",
    ])
    model = build_model(cfg, CLASSES[:3])
    assert model.options.ta_segments == 4
    assert model.head.fc.in_features == model.backbone.embed_dim + 2 * 4 * 32
