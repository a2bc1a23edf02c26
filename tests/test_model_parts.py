"""The ART building blocks against independent plain-PyTorch formulations: query-to-patch
attention (dense and top-k), the MTC levels, the semantic losses, tracklet aggregation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import art_fast
from art_fast.losses import bank_logits, mtc_losses, sema_losses
from art_fast.model.semantics import select_topk_classes
from art_fast.model.tracklets import aggregate_tracklets, build_tracklets
from art_fast.nn import QueryPatchAttention, TrackletContrastiveLoss

BACKENDS = ["torch", "cpu"]


def _attention_oracle(mod: QueryPatchAttention, queries, tokens, k):
    """Dense softmax attention with every non-selected patch masked to -inf: the top-k form
    written without topk_regions (ties cannot occur with random float64 inputs)."""
    G, M, C = queries.shape
    H = mod.heads
    dh = C // H
    q = mod.q(queries).view(G, M, H, dh).transpose(1, 2)
    kv = mod.kv(tokens).view(G, tokens.shape[1], 2, H, dh).permute(2, 0, 3, 1, 4)
    s = q @ kv[0].transpose(-1, -2) * dh**-0.5
    if k is not None:
        thresh = s.topk(k, dim=-1).values[..., -1:]
        s = s.masked_fill(s < thresh, float("-inf"))
    out = torch.softmax(s, -1) @ kv[1]
    return mod.proj(out.transpose(1, 2).reshape(G, M, C))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [None, 1, 5, 13])
def test_query_patch_attention_matches_masked_softmax(backend, k):
    torch.manual_seed(0)
    mod = QueryPatchAttention(32, 4, k_region=k).double()
    queries, tokens = torch.randn(3, 2, 32, dtype=torch.float64), torch.randn(3, 13, 32,
                                                                              dtype=torch.float64)
    with art_fast.use_backend(backend):
        out, idx, w = mod(queries, tokens, return_regions=True)
    kk = 13 if k is None else k
    assert idx.shape == w.shape == (3, 4, 2, kk)
    torch.testing.assert_close(out, _attention_oracle(mod, queries, tokens, k), rtol=1e-10,
                               atol=1e-10)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 4, 2, dtype=torch.float64))


def _info_nce_oracle(a, c, temperature):
    logits = F.normalize(a, dim=-1) @ F.normalize(c, dim=-1).transpose(-1, -2) / temperature
    tgt = torch.arange(a.shape[1]).expand(a.shape[0], -1)
    return F.cross_entropy(logits.flatten(0, 1), tgt.flatten())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,K,T", [(2, 3, 5), (1, 2, 2), (3, 1, 4), (2, 2, 1)])
@pytest.mark.parametrize("negatives", ["frame", "batch"])
def test_mtc_levels_match_their_definition(backend, B, K, T, negatives):
    torch.manual_seed(1)
    tr = torch.randn(B, K, T, 8, dtype=torch.float64)
    with art_fast.use_backend(backend):
        got = mtc_losses(tr, temperature=0.2, temporal_negatives=negatives)
    frames = tr.permute(0, 2, 1, 3)  # [B, T, K, d]
    want_sp = _info_nce_oracle(frames.flatten(0, 1), frames.flatten(0, 1), 0.2)
    torch.testing.assert_close(got["spatial"], want_sp)
    if T == 1:
        assert float(got["temporal"]) == 0.0 and float(got["tracklet"]) == 0.0
        return
    if negatives == "frame":
        want_t = _info_nce_oracle(frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1), 0.2)
    else:  # per t, all B*K responses at t against all at t+1
        rows = [_info_nce_oracle(frames[:, t].reshape(1, B * K, 8),
                                 frames[:, t + 1].reshape(1, B * K, 8), 0.2) for t in range(T - 1)]
        want_t = torch.stack(rows).mean()
    torch.testing.assert_close(got["temporal"], want_t)
    h = T // 2
    want_tr = _info_nce_oracle(tr[:, :, :h].mean(2), tr[:, :, h:].mean(2), 0.2)
    torch.testing.assert_close(got["tracklet"], want_tr)


def test_tracklet_loss_weights_and_errors():
    tr = torch.randn(2, 2, 4, 8, dtype=torch.float64)
    total, levels = TrackletContrastiveLoss((1.0, 0.5, 2.0), 0.1)(tr)
    torch.testing.assert_close(
        total, levels["spatial"] + 0.5 * levels["temporal"] + 2.0 * levels["tracklet"]
    )
    with pytest.raises(ValueError, match="weights"):
        TrackletContrastiveLoss((1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="temporal_negatives"):
        mtc_losses(tr, temporal_negatives="video")
    with pytest.raises(ValueError, match=r"\[B, K, T, d\]"):
        mtc_losses(tr[0])


def test_sema_losses_match_loops():
    torch.manual_seed(2)
    P, C, Ct, B = 3, 5, 6, 4
    bank = torch.randn(P, C, Ct, dtype=torch.float64)
    z, protos = torch.randn(B, Ct, dtype=torch.float64), torch.randn(C, Ct, dtype=torch.float64)
    labels = torch.tensor([0, 4, 2, 2])
    got = sema_losses(z, protos, bank, labels, temperature=0.5)

    def logits(x):
        out = torch.empty(x.shape[0], C, dtype=torch.float64)
        for i in range(x.shape[0]):
            for c in range(C):
                out[i, c] = max(F.cosine_similarity(x[i], bank[p, c], dim=0) for p in range(P))
        return out / 0.5

    torch.testing.assert_close(got["video"], F.cross_entropy(logits(z), labels))
    torch.testing.assert_close(got["proto"], F.cross_entropy(logits(protos), torch.arange(C)))
    torch.testing.assert_close(bank_logits(z, bank, 0.5), logits(z))


def test_topk_class_ranking_prefers_lower_index_on_ties_and_has_no_grad():
    bank = torch.zeros(2, 4, 3)
    bank[:, 0, 0] = bank[:, 1, 0] = 1.0  # classes 0 and 1 identical
    bank[:, 2, 1] = bank[:, 3, 2] = 1.0
    z = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.2, 1.0]], requires_grad=True)
    got = select_topk_classes(z, bank, 2)
    assert got.tolist() == [[0, 1], [3, 2]]
    assert not got.requires_grad


def test_tracklet_aggregation():
    torch.manual_seed(3)
    tr, sem = torch.randn(2, 3, 5, 4, dtype=torch.float64), torch.randn(2, 3, 4,
                                                                       dtype=torch.float64)
    agg, w = aggregate_tracklets(tr, sem, temperature=0.3)
    for b in range(2):
        for k in range(3):
            cos = F.cosine_similarity(tr[b, k], sem[b, k].expand(5, -1), dim=-1)
            wk = torch.softmax(cos / 0.3, 0)
            torch.testing.assert_close(w[b, k], wk)
            torch.testing.assert_close(agg[b, k], (wk[:, None] * tr[b, k]).sum(0))
    resp = torch.arange(2 * 3 * 2 * 1.0).view(6, 2, 1)  # [B*T, K, d] with B=2, T=3
    trk = build_tracklets(resp, 2)
    assert trk.shape == (2, 2, 3, 1)
    assert trk[1, 0, 2, 0] == resp[1 * 3 + 2, 0, 0]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("T,C,fraction", [(5, 16, 0.25), (3, 7, 0.5), (1, 8, 0.25), (4, 8, 1.0)])
def test_temporal_shift_matches_loop(T, C, fraction, batch_first):
    from art_fast.model.backbone import temporal_shift

    B, L = 2, 3
    x = torch.randn(B * T, L, C, dtype=torch.float64)
    c = int(C * fraction / 2)
    want = x.clone()
    for b in range(B):
        for t in range(T):
            g = b * T + t
            want[g, :, :c] = x[g - 1, :, :c] if t > 0 else 0
            want[g, :, c:2 * c] = x[g + 1, :, c:2 * c] if t < T - 1 else 0
    if T == 1:
        want = x
    xin = x if batch_first else x.transpose(0, 1)
    got = temporal_shift(xin, T, fraction, batch_first)
    got = got if batch_first else got.transpose(0, 1)
    assert torch.equal(got, want)
    assert torch.equal(temporal_shift(xin, T, 0.0, batch_first), xin)


def test_temporal_shift_in_the_tower_mixes_only_neighbouring_frames():
    """With the shift, a frame's features depend on frames up to `layers` steps away (one
    step per block) and on no others; without it the tower is per-frame. The state_dict is
    the same either way."""
    from art_fast.model.backbone import VideoBackbone, build_clip

    torch.manual_seed(0)
    T = 7
    video = torch.randn(1, T, 3, 32, 32)
    bumped = video.clone()
    bumped[:, 0] += 1.0
    keys = None
    for shift in (0.0, 0.25):
        clip, _, _ = build_clip("tiny", None, 32)
        vb = VideoBackbone(clip.visual, T, temporal_shift=shift).eval()
        keys = keys or set(vb.state_dict())
        assert set(vb.state_dict()) == keys
        layers = len(vb.visual.transformer.resblocks)
        with torch.no_grad():
            tok0, _, _ = vb(video)
            tok1, _, _ = vb(bumped)
        changed = [(tok0[0, t] - tok1[0, t]).abs().max().item() > 1e-6 for t in range(T)]
        reach = layers if shift else 0
        assert changed == [t <= reach for t in range(T)], (shift, changed)
    with pytest.raises(ValueError, match="temporal_shift"):
        VideoBackbone(clip.visual, T, temporal_shift=1.5)
    with pytest.raises(ValueError, match="temporal_shift"):
        art_fast.ART(["a", "b"], backbone="tiny", num_frames=2, image_size=32,
                     temporal_shift=-0.1, text_cache=False)


def test_conv3d_stem_tokens_reach_and_shape():
    """stem="conv3d": the tower starts from Conv3dStem's tokens (one per patch and frame, the
    patch embedding's shape); a frame's tokens depend on the frames up to 3 steps away (three
    3x3x3 convs; no temporal shift here) and on no others; the tokens are non-negative (maxima
    of ReLU features: no projection at the tiny tower's width) and a projection appears at
    another width; bad values are rejected."""
    from art_fast.model.backbone import Conv3dStem, VideoBackbone, build_clip

    torch.manual_seed(0)
    T, S = 7, 32
    clip, _, _ = build_clip("tiny", None, S)
    vb = VideoBackbone(clip.visual, T, stem="conv3d").eval()
    assert isinstance(vb.stem, Conv3dStem) and isinstance(vb.visual.conv1, torch.nn.Identity)
    assert not any(k.startswith("visual.conv1") for k in vb.state_dict())
    video = torch.randn(2, T, 3, S, S)
    with torch.no_grad():
        x = vb.stem(video)
        assert x.shape == (2 * T, vb.width, S // 8, S // 8)
        tok0, frames, x_cls = vb(video)
        assert tok0.shape == (2, T, vb.num_patches, vb.width) and x_cls.shape == (2, vb.embed_dim)
        bumped = video.clone()
        bumped[:, 0] += 1.0
        tok1, _, _ = vb(bumped)
    changed = [(tok0[0, t] - tok1[0, t]).abs().max().item() > 1e-6 for t in range(T)]
    assert changed == [t <= 3 for t in range(T)], changed
    assert x.min() >= 0 and isinstance(vb.stem.proj, torch.nn.Identity)
    wide = Conv3dStem(96, 8)
    assert isinstance(wide.proj, torch.nn.Conv3d)
    assert wide(video[:, :2]).shape == (4, 96, S // 8, S // 8)
    with pytest.raises(ValueError, match="stem"):
        VideoBackbone(build_clip("tiny", None, S)[0].visual, T, stem="conv2d")
    with pytest.raises(ValueError, match="divisible by 4"):
        Conv3dStem(16, 6)
    with pytest.raises(ValueError, match="option stem"):
        art_fast.ART(["a", "b"], backbone="tiny", num_frames=2, image_size=32, stem="big",
                     text_cache=False)


def test_conv3d_stem_trains_in_art():
    """ART with stem="conv3d": a training step runs, the stem gets gradients, and its
    parameters fall in the full-lr ("head") groups (new weights, not the CLIP tower's)."""
    torch.manual_seed(0)
    model = art_fast.ART(["a", "b", "c"], backbone="tiny", num_frames=4, image_size=32,
                         latent_dim=16, heads=2, se_layers=1, rssa_layers=1, k_region=4,
                         stem="conv3d", temporal_shift=0.25, text_cache=False)
    out = model(torch.randn(2, 4, 3, 32, 32), torch.tensor([0, 2]))
    out.losses["total"].backward()
    stem = dict(model.backbone.stem.named_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stem.values())
    groups = {g["name"]: {id(p) for p in g["params"]} for g in model.param_groups(1e-3, 0.05)}
    stem_ids = {id(p) for p in stem.values()}
    assert stem_ids <= groups["head"] | groups["head_no_decay"]


def test_token_norm_and_frame_pool():
    """token_norm / frame_pool: the defaults are open_clip's own forward (bit-identical);
    "pre" hands the blocks' residual stream to the tracklet branch (no ln_post), "max" pools a
    frame as ln_post(channel-wise max over its patch tokens) @ proj, both recomputed here from
    the tower's parts; the state_dict does not change; bad values and UniFormerV2 are
    rejected; ART trains a step with both set and every new path gets gradients."""
    from art_fast.model.backbone import VideoBackbone, build_clip

    T, S = 3, 32
    video = torch.randn(2, T, 3, S, S)
    ref_vis = build_clip("tiny", None, S, 0)[0].visual
    ref = VideoBackbone(ref_vis, T).eval()
    for norm, pool in (("post", "cls"), ("pre", "cls"), ("post", "max"), ("pre", "max")):
        vb = VideoBackbone(build_clip("tiny", None, S, 0)[0].visual, T, token_norm=norm,
                           frame_pool=pool).eval()
        vb.load_state_dict(ref.state_dict())  # same keys, same weights
        with torch.no_grad():
            tokens, frames, x_cls = vb(video)
            vis = vb.visual
            stream = vis.transformer(vis._embeds(video.flatten(0, 1)))
            patches = stream[:, 1:]
            want_tok = patches if norm == "pre" else vis.ln_post(patches)
            want_fr = vis.ln_post(patches.amax(1) if pool == "max" else stream[:, 0]) @ vis.proj
            ref_out = ref(video)
        torch.testing.assert_close(tokens, want_tok.reshape(tokens.shape))
        torch.testing.assert_close(frames, want_fr.reshape(frames.shape))
        torch.testing.assert_close(x_cls, vb.temporal(frames))
        if (norm, pool) == ("post", "cls"):
            for a, b in zip((tokens, frames, x_cls), ref_out):
                assert torch.equal(a, b)
        else:  # each option changes what it names, and only that
            assert torch.equal(tokens, ref_out[0]) == (norm == "post")
            assert torch.equal(frames, ref_out[1]) == (pool == "cls")
    for kw, match in ((dict(token_norm="mid"), "token_norm"), (dict(frame_pool="mean"),
                                                                "frame_pool")):
        with pytest.raises(ValueError, match=match):
            VideoBackbone(build_clip("tiny", None, S)[0].visual, T, **kw)
        with pytest.raises(ValueError, match=f"option {match}"):
            art_fast.ART(["a", "b"], backbone="tiny", num_frames=2, image_size=S,
                         text_cache=False, **kw)
    for kw in (dict(token_norm="pre"), dict(frame_pool="max"), dict(stem="conv3d")):
        with pytest.raises(ValueError, match="per-frame open_clip towers"):
            art_fast.ART(["a", "b"], backbone="uniformerv2-tiny", num_frames=4, image_size=S,
                         text_cache=False, **kw)
    torch.manual_seed(0)
    model = art_fast.ART(["a", "b", "c"], backbone="tiny", num_frames=4, image_size=S,
                         latent_dim=16, heads=2, se_layers=1, rssa_layers=1, k_region=4,
                         stem="conv3d", token_norm="pre", frame_pool="max", text_cache=False)
    out = model(torch.randn(2, 4, 3, S, S), torch.tensor([0, 2]))
    out.losses["total"].backward()
    vis = model.backbone.visual
    for p in (vis.ln_post.weight, vis.proj, vis.transformer.resblocks[-1].mlp.c_proj.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_segment_temporal_module():
    """temporal_module="segments": conv -> BatchNorm -> ReLU over the frames, the means of S
    ordered spans that tile the T frames (odd T, S not dividing T), linear, LayerNorm, all
    recomputed here by hand; swapping the two halves of a clip changes x_cls; bad S values
    and UniFormerV2 are rejected; in ART the module gets gradients."""
    from art_fast.model.backbone import SegmentTemporalModule, VideoBackbone, build_clip

    torch.manual_seed(0)
    for T, S in ((7, 3), (16, 2), (5, 5), (4, 1)):
        m = SegmentTemporalModule(12, T, S).train()
        frames = torch.randn(3, T, 12)
        got = m(frames)
        conv, bn = m.conv[0], m.conv[1]
        h = torch.nn.functional.conv1d(frames.transpose(1, 2), conv.weight, padding=1)
        mu, var = h.mean((0, 2), keepdim=True), h.var((0, 2), unbiased=False, keepdim=True)
        h = torch.relu((h - mu) / torch.sqrt(var + bn.eps) * bn.weight[:, None]
                       + bn.bias[:, None])
        edges = [round(i * T / S) for i in range(S + 1)]
        assert sorted(set(edges)) == edges and edges[0] == 0 and edges[-1] == T
        seg = torch.cat([h[:, :, a:b].mean(-1) for a, b in zip(edges, edges[1:])], 1)
        want = torch.nn.functional.layer_norm(m.proj(seg), (12,), m.ln.weight, m.ln.bias)
        torch.testing.assert_close(got, want)
        assert got.shape == (3, 12)
    m = SegmentTemporalModule(12, 8, 2).eval()
    clip = torch.randn(1, 8, 12)
    swapped = torch.cat([clip[:, 4:], clip[:, :4]], 1)
    assert (m(clip) - m(swapped)).abs().max() > 1e-3
    for bad in (0, 9, True, 2.0):
        with pytest.raises(ValueError, match="temporal_segments"):
            SegmentTemporalModule(12, 8, bad)
    with pytest.raises(ValueError, match="temporal_module"):
        VideoBackbone(build_clip("tiny", None, 32)[0].visual, 4, temporal_module="lstm")
    for kw, match in ((dict(temporal_module="lstm"), "option temporal_module"),
                      (dict(temporal_module="segments", temporal_segments=0),
                       "option temporal_segments"),
                      (dict(temporal_module="segments", temporal_segments=5),
                       "temporal_segments")):
        with pytest.raises(ValueError, match=match):
            art_fast.ART(["a", "b"], backbone="tiny", num_frames=4, image_size=32,
                         text_cache=False, **kw)
    with pytest.raises(ValueError, match="per-frame open_clip towers"):
        art_fast.ART(["a", "b"], backbone="uniformerv2-tiny", num_frames=4, image_size=32,
                     temporal_module="segments", text_cache=False)
    model = art_fast.ART(["a", "b", "c"], backbone="tiny", num_frames=4, image_size=32,
                         latent_dim=16, heads=2, se_layers=1, rssa_layers=1, k_region=4,
                         temporal_module="segments", text_cache=False)
    assert isinstance(model.backbone.temporal, SegmentTemporalModule)
    model(torch.randn(2, 4, 3, 32, 32), torch.tensor([0, 2])).losses["total"].backward()
    for p in model.backbone.temporal.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_tower_layer_scale():
    """tower_layer_scale: every tower block's residual branches are scaled per channel
    (x + g1 * attn(ln_1(x)), then x + g2 * mlp(ln_2(x))), recomputed here from the blocks'
    parts; g = 1 is the plain tower exactly; the scales are parameters with gradients, outside
    weight decay; bad values, a tower that already has LayerScale and UniFormerV2 are
    rejected (the ART option and the config key alike)."""
    from art_fast.model.backbone import VideoBackbone, build_clip
    from art_fast.train.config import ConfigError, load_config

    T, S = 3, 32
    video = torch.randn(2, T, 3, S, S)
    ref = VideoBackbone(build_clip("tiny", None, S, 0)[0].visual, T).eval()
    for init in (1.0, 0.1, 1e-4):
        vb = VideoBackbone(build_clip("tiny", None, S, 0)[0].visual, T, layer_scale=init)
        vb.load_state_dict(ref.state_dict(), strict=False)  # the same tower, plus the gammas
        gammas = [n for n, _ in vb.named_parameters() if n.endswith(".gamma")]
        assert len(gammas) == 2 * len(vb.visual.transformer.resblocks)
        torch.manual_seed(1)
        with torch.no_grad():  # random per-channel scales, so the test sees each channel's
            for blk in vb.visual.transformer.resblocks:
                blk.ls_1.gamma.mul_(1 + 0.5 * torch.rand_like(blk.ls_1.gamma))
                blk.ls_2.gamma.mul_(1 + 0.5 * torch.rand_like(blk.ls_2.gamma))
        vb.eval()
        with torch.no_grad():
            vis = vb.visual
            x = vis._embeds(video.flatten(0, 1))
            for blk in vis.transformer.resblocks:
                h = blk.ln_1(x)
                a = blk.attn(h, h, h, need_weights=False)[0]
                x = x + blk.ls_1.gamma * a
                x = x + blk.ls_2.gamma * blk.mlp(blk.ln_2(x))
            want = vis.ln_post(x[:, 1:])
            tokens, _, _ = vb(video)
            plain = ref(video)[0]
        torch.testing.assert_close(tokens, want.reshape(tokens.shape), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(tokens, plain, atol=1e-4)
    one = VideoBackbone(build_clip("tiny", None, S, 0)[0].visual, T, layer_scale=1.0).eval()
    one.load_state_dict(ref.state_dict(), strict=False)
    with torch.no_grad():
        for a, b in zip(one(video), ref(video)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    for bad in (0, -0.1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="layer_scale"):
            VideoBackbone(build_clip("tiny", None, S, 0)[0].visual, T, layer_scale=bad)
        with pytest.raises(ValueError, match="option tower_layer_scale"):
            art_fast.ART(["a", "b"], backbone="tiny", num_frames=2, image_size=S,
                         text_cache=False, tower_layer_scale=bad)
    twice = build_clip("tiny", None, S, 0)[0].visual
    VideoBackbone(twice, T, layer_scale=0.1)
    with pytest.raises(ValueError, match="already has LayerScale"):
        VideoBackbone(twice, T, layer_scale=0.1)
    with pytest.raises(ValueError, match="per-frame open_clip towers"):
        art_fast.ART(["a", "b"], backbone="uniformerv2-tiny", num_frames=4, image_size=S,
                     text_cache=False, tower_layer_scale=0.1)
    for bad in ("0", "-1", "nan"):
        with pytest.raises(ConfigError, match="model.tower_layer_scale"):
            load_config(None, ["data.root=x", f"model.tower_layer_scale={bad}"])
    assert load_config(None, ["data.root=x", "model.tower_layer_scale=0.1"]
                       ).model.tower_layer_scale == 0.1
    torch.manual_seed(0)
    model = art_fast.ART(["a", "b", "c"], backbone="tiny", num_frames=4, image_size=S,
                         latent_dim=16, heads=2, se_layers=1, rssa_layers=1, k_region=4,
                         tower_layer_scale=0.1, text_cache=False)
    model(torch.randn(2, 4, 3, S, S), torch.tensor([0, 2])).losses["total"].backward()
    no_decay = {id(p) for g in model.param_groups(1e-3, 0.1) if g["weight_decay"] == 0
                for p in g["params"]}
    for blk in model.backbone.visual.transformer.resblocks:
        for g in (blk.ls_1.gamma, blk.ls_2.gamma):
            assert g.grad is not None and torch.isfinite(g.grad).all() and g.grad.abs().sum() > 0
            assert id(g) in no_decay
