"""The UniFormerV2 video tower (art_fast/model/uniformerv2.py) and its use in ART.

Checked against independent formulations: the open_clip ViT it wraps (identity at init), a
plain-torch transcription of the official UniFormerV2 forward (OpenGVLab/UniFormerV2,
``slowfast/models/uniformerv2_model.py``) that reads an official-layout state dict directly,
and an official-layout checkpoint generated here from the published key names and shapes (not
from our module). Also: shapes, gradients, backend dispatch of the extractor's
cross-attention, the inflated patch embedding, ART options, a ViT-B/16 training step, and the
tracklet steps of the region hit (trainer and viz).
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import art_fast
from art_fast import ART
from art_fast.model.backbone import build_clip
from art_fast.model.uniformerv2 import (
    OFFICIAL_NOT_PROVIDED,
    OFFICIAL_SKIPPED,
    UNIFORMERV2_MODELS,
    Extractor,
    UniFormerV2Backbone,
    inflate_patch_embedding,
    load_official,
    looks_official,
    remap_official_state_dict,
)
from tests._util import OpRecorder, require_backend

TINY = "uniformerv2-tiny"
CLASSES = [f"fine-grained action number {i}" for i in range(4)]
# the tiny open_clip tower (art-fast-tiny): 2 blocks, width 64, 4 heads, 8 x 8 patches, GELU,
# fixed sin-cos position embedding, no ln_pre
TINY_W, TINY_LAYERS, TINY_HEADS, TINY_PATCH = 64, 2, 4, 8
TINY_NL = UNIFORMERV2_MODELS[TINY][1]
SMALL_ART = dict(backbone=TINY, latent_dim=32, heads=4, se_layers=1, rssa_layers=1,
                 num_queries=2, k_region=4, dropout=0.0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("text_bank_uniformerv2"))


def tiny_visual(image_size: int = 64, seed: int = 0) -> nn.Module:
    clip, _, _ = build_clip("tiny", None, image_size, seed)
    return clip.visual


def video(B: int, T: int, size: int = 64, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, 3, size, size, generator=g, dtype=dtype)


def randomise_zero_init(bb: UniFormerV2Backbone, scale: float = 0.1, seed: int = 1) -> None:
    """Random values in every zero-initialised tensor of the new paths (LMHRA up-projections,
    extractor output projections, the video token), so that the paths are live."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tensors = [bb.temporal_cls_token]
        for blk in bb.visual.transformer.resblocks:
            for m in (blk.lmhra1, blk.lmhra2):
                tensors += [m.pos_embed[3].weight, m.pos_embed[3].bias]
        for d in bb.dec:
            tensors += [d.attn.out_proj.weight, d.attn.out_proj.bias, d.mlp.c_proj.weight,
                        d.mlp.c_proj.bias, d.attn.in_proj_bias]
        for t in tensors:
            t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * scale)


# --------------------------------------------------------------------------- official layout

def official_state(width: int, layers: int, heads: int, grid: int, n_layers: int,
                   num_classes: int, patch: int, *, ln_pre: bool = True, seed: int = 0,
                   prefix: str = "backbone.", lmhra: bool = True,
                   downsample: bool = True) -> dict[str, torch.Tensor]:
    """A state dict with exactly the names and shapes of an official UniFormerV2 release
    (``Uniformerv2`` of OpenGVLab/UniFormerV2), random values. Written from the published
    layout, independently of art_fast. ``ln_pre=False`` for a tower without ``ln_pre`` (the
    tiny test tower; the official ViTs all have one). ``lmhra=False, downsample=False``: the
    Kinetics files' layout (``NO_LMHRA: True``, ``TEMPORAL_DOWNSAMPLE: False``: no LMHRA keys,
    a (1, p, p) patch embedding)."""
    assert width % heads == 0
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    def ln(name):
        sd[f"{name}.weight"] = 1 + r(width, scale=0.1)
        sd[f"{name}.bias"] = r(width, scale=0.1)

    w, red = width, int(width // 1.5)
    sd: dict[str, torch.Tensor] = {}
    sd["conv1.weight"] = r(w, 3, 3 if downsample else 1, patch, patch)
    sd["class_embedding"] = r(w, scale=0.5)
    sd["positional_embedding"] = r(grid * grid + 1, w, scale=0.5)
    if ln_pre:
        ln("ln_pre")
    for i in range(layers):
        b = f"transformer.resblocks.{i}"
        for m in ("lmhra1", "lmhra2") if lmhra else ():
            p = f"{b}.{m}.pos_embed"
            sd[f"{p}.0.weight"] = 1 + r(w, scale=0.1)
            sd[f"{p}.0.bias"] = r(w, scale=0.1)
            sd[f"{p}.0.running_mean"] = r(w, scale=0.1)
            sd[f"{p}.0.running_var"] = torch.rand(w, generator=g) + 0.5
            sd[f"{p}.0.num_batches_tracked"] = torch.tensor(1000 + i)
            sd[f"{p}.1.weight"], sd[f"{p}.1.bias"] = r(red, w, 1, 1, 1, scale=0.1), r(red)
            sd[f"{p}.2.weight"], sd[f"{p}.2.bias"] = r(red, 1, 3, 1, 1, scale=0.3), r(red)
            sd[f"{p}.3.weight"], sd[f"{p}.3.bias"] = r(w, red, 1, 1, 1, scale=0.1), r(w)
        sd[f"{b}.attn.in_proj_weight"], sd[f"{b}.attn.in_proj_bias"] = r(3 * w, w), r(3 * w)
        sd[f"{b}.attn.out_proj.weight"], sd[f"{b}.attn.out_proj.bias"] = r(w, w), r(w)
        ln(f"{b}.ln_1")
        sd[f"{b}.mlp.c_fc.weight"], sd[f"{b}.mlp.c_fc.bias"] = r(4 * w, w), r(4 * w)
        sd[f"{b}.mlp.c_proj.weight"], sd[f"{b}.mlp.c_proj.bias"] = r(w, 4 * w), r(w)
        ln(f"{b}.ln_2")
    sd["transformer.temporal_cls_token"] = r(1, 1, w, scale=0.5)
    sd["transformer.balance"] = r(w, scale=1.0)
    for j in range(n_layers):
        sd[f"transformer.dpe.{j}.weight"] = r(w, 1, 3, 3, 3, scale=0.1)
        sd[f"transformer.dpe.{j}.bias"] = r(w)
        d = f"transformer.dec.{j}"
        sd[f"{d}.attn.in_proj_weight"], sd[f"{d}.attn.in_proj_bias"] = r(3 * w, w), r(3 * w)
        sd[f"{d}.attn.out_proj.weight"], sd[f"{d}.attn.out_proj.bias"] = r(w, w), r(w)
        for n in ("ln_1", "ln_2", "ln_3"):
            ln(f"{d}.{n}")
        sd[f"{d}.mlp.c_fc.weight"], sd[f"{d}.mlp.c_fc.bias"] = r(4 * w, w), r(4 * w)
        sd[f"{d}.mlp.c_proj.weight"], sd[f"{d}.mlp.c_proj.bias"] = r(w, 4 * w), r(w)
    ln("transformer.proj.0")
    sd["transformer.proj.2.weight"] = r(num_classes, w)
    sd["transformer.proj.2.bias"] = r(num_classes)
    return {prefix + k: v for k, v in sd.items()}


def tiny_official(**kw) -> dict[str, torch.Tensor]:
    return official_state(TINY_W, TINY_LAYERS, TINY_HEADS, 8, TINY_NL, 400, TINY_PATCH,
                          ln_pre=False, **kw)


# The documented mapping (docs/uniformerv2.md, "Weights"), written out by hand, one row per key
# family of an official checkpoint (keys after the backbone. / module. prefixes): official key
# -> our state_dict key, "*" the rest of the key (kept as is); None: not loaded (the classifier).
OFFICIAL_TO_OURS = {
    "conv1.*": "visual.conv1.*",
    "class_embedding": "visual.class_embedding",
    "positional_embedding": "visual.positional_embedding",
    "ln_pre.*": "visual.ln_pre.*",
    "transformer.resblocks.*": "visual.transformer.resblocks.*",
    "transformer.dpe.*": "dpe.*",
    "transformer.dec.*": "dec.*",
    "transformer.temporal_cls_token": "temporal_cls_token",
    "transformer.balance": "balance",
    "transformer.proj.0.*": "norm.*",
    "transformer.proj.2.*": None,
}


def our_key(official: str) -> str | None:
    """Our key for an official key (prefixes stripped), by its one row of OFFICIAL_TO_OURS."""
    rows = [(o, ours) for o, ours in OFFICIAL_TO_OURS.items()
            if official == o or (o.endswith("*") and official.startswith(o[:-1]))]
    assert len(rows) == 1, f"{official!r}: not one key family of OFFICIAL_TO_OURS: {rows}"
    o, ours = rows[0]
    if ours is None or not o.endswith("*"):
        return ours
    return ours[:-1] + official[len(o) - 1:]


def strip(key: str) -> str:
    for p in ("module.", "backbone."):
        if key.startswith(p):
            key = key[len(p):]
    return key


def assert_loaded(bb: UniFormerV2Backbone, state: dict[str, torch.Tensor]) -> None:
    own = bb.state_dict()
    seen = set()
    for k, v in state.items():
        k = strip(k)
        ours = our_key(k)
        assert (ours is None) == (k in OFFICIAL_SKIPPED), k
        if ours is None:
            continue
        seen.add(ours)
        assert torch.equal(own[ours], v.to(own[ours].dtype)), (k, ours)
    assert set(own) - seen == set(OFFICIAL_NOT_PROVIDED)


# ---- the official forward, transcribed in plain torch (seq-first layout [L, N*T, C]) -------

def _ln(sd, p, x):
    return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], 1e-5)


def _quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def _mlp(sd, p, x, act):
    h = act(x @ sd[f"{p}.c_fc.weight"].T + sd[f"{p}.c_fc.bias"])
    return h @ sd[f"{p}.c_proj.weight"].T + sd[f"{p}.c_proj.bias"]


def official_attention(sd, p, x, y, heads):
    """Official ``Extractor.attention`` (and ``nn.MultiheadAttention`` math for the blocks'
    self-attention when y is x): x ``[Lx, N, C]``, y ``[Ly, N, C]``."""
    C = x.shape[-1]
    D = C // heads
    W, b = sd[f"{p}.in_proj_weight"], sd[f"{p}.in_proj_bias"]
    q = x @ W[:C].T + b[:C]
    k = y @ W[C:-C].T + b[C:-C]
    v = y @ W[-C:].T + b[-C:]
    Tx, Ty, N = q.shape[0], k.shape[0], q.shape[1]
    q = q.view(Tx, N, heads, D).permute(1, 2, 0, 3)
    k = k.view(Ty, N, heads, D).permute(1, 2, 0, 3)
    v = v.view(Ty, N, heads, D).permute(1, 2, 0, 3)
    aff = (q @ k.transpose(-2, -1) / (D ** 0.5)).softmax(dim=-1)
    out = (aff @ v).permute(2, 0, 1, 3).flatten(2)
    return out @ sd[f"{p}.out_proj.weight"].T + sd[f"{p}.out_proj.bias"]


def _official_lmhra(sd, p, x):
    x = F.batch_norm(x, sd[f"{p}.0.running_mean"], sd[f"{p}.0.running_var"],
                     sd[f"{p}.0.weight"], sd[f"{p}.0.bias"], training=False, eps=1e-5)
    x = F.conv3d(x, sd[f"{p}.1.weight"], sd[f"{p}.1.bias"])
    x = F.conv3d(x, sd[f"{p}.2.weight"], sd[f"{p}.2.bias"], padding=(1, 0, 0),
                 groups=x.shape[1])
    return F.conv3d(x, sd[f"{p}.3.weight"], sd[f"{p}.3.bias"])


def _official_block(sd, p, x, T, heads, act):
    for i, m in enumerate(("lmhra1", "lmhra2")):
        if f"{p}.{m}.pos_embed.1.weight" in sd:  # the official no_lmhra layout has none
            tmp_x = x[1:, :, :]
            L, NT, C = tmp_x.shape
            N = NT // T
            H = W = int(L ** 0.5)
            tmp_x = tmp_x.view(H, W, N, T, C).permute(2, 4, 3, 0, 1).contiguous()
            tmp_x = tmp_x + _official_lmhra(sd, f"{p}.{m}.pos_embed", tmp_x)
            tmp_x = tmp_x.view(N, C, T, L).permute(3, 0, 2, 1).contiguous().view(L, NT, C)
            x = torch.cat([x[:1, :, :], tmp_x], dim=0)
        if i == 0:
            h = _ln(sd, f"{p}.ln_1", x)
            x = x + official_attention(sd, f"{p}.attn", h, h, heads)
        else:
            x = x + _mlp(sd, f"{p}.mlp", _ln(sd, f"{p}.ln_2", x), act)
    return x


def official_extractor(sd, p, x, y, heads, act):
    x = x + official_attention(sd, f"{p}.attn", _ln(sd, f"{p}.ln_1", x),
                               _ln(sd, f"{p}.ln_3", y), heads)
    return x + _mlp(sd, f"{p}.mlp", _ln(sd, f"{p}.ln_2", x), act)


def official_forward(state, clip, *, heads, patch, layers, n_layers, act):
    """The official ``Uniformerv2`` forward in eval mode, up to the classifier (x_cls = the
    output of ``transformer.proj.0``), from an official-layout state dict; also the last
    block's tokens ``[B, T', 1 + N, C]`` (before any final norm)."""
    sd = {strip(k): v for k, v in state.items()}
    kt = sd["conv1.weight"].shape[2]  # 3: temporal downsampling (stride 2), 1: frame-wise
    x = F.conv3d(clip.transpose(1, 2), sd["conv1.weight"], None,
                 stride=(2 if kt == 3 else 1, patch, patch), padding=(kt // 2, 0, 0))
    N, C, T, H, W = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(N * T, H * W, C)
    x = torch.cat([sd["class_embedding"].to(x.dtype)
                   + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype), x], dim=1)
    x = x + sd["positional_embedding"].to(x.dtype)
    if "ln_pre.weight" in sd:
        x = _ln(sd, "ln_pre", x)
    x = x.permute(1, 0, 2)  # NLD -> LND
    L, NT, C = x.shape
    cls_token = sd["transformer.temporal_cls_token"].repeat(1, N, 1)
    return_list = list(range(layers - n_layers, layers))
    j = -1
    for i in range(layers):
        x = _official_block(sd, f"transformer.resblocks.{i}", x, T, heads, act)
        if i in return_list:
            j += 1
            tmp_x = x.clone().view(L, N, T, C)
            tmp_feats = tmp_x[1:].permute(1, 3, 2, 0).reshape(N, C, T, H, W)
            tmp_feats = F.conv3d(tmp_feats, sd[f"transformer.dpe.{j}.weight"],
                                 sd[f"transformer.dpe.{j}.bias"], padding=1, groups=C)
            tmp_feats = tmp_feats.view(N, C, T, L - 1).permute(3, 0, 2, 1).contiguous()
            tmp_x[1:] = tmp_x[1:] + tmp_feats
            tmp_x = tmp_x.permute(2, 0, 1, 3).flatten(0, 1)  # T * L, N, C
            cls_token = official_extractor(sd, f"transformer.dec.{j}", cls_token, tmp_x,
                                           heads, act)
    weight = torch.sigmoid(sd["transformer.balance"])
    residual = x.view(L, N, T, C)[0].mean(1)
    x_cls = _ln(sd, "transformer.proj.0", (1 - weight) * cls_token[0, :, :] + weight * residual)
    return x_cls, x.view(L, N, T, C).permute(1, 2, 0, 3)


# =========================================================================== 1. identity at init

@pytest.mark.parametrize("T,mode", [(1, "eval"), (4, "eval"), (5, "eval"), (8, "eval"),
                                    (4, "train")])
def test_at_init_the_tokens_are_clips_tokens_of_every_other_frame(T, mode):
    """Zero-init LMHRA and balance -> 1 (only the mean-CLS path): temporal token j is the
    original ViT on frame 2 j, and x_cls = norm(mean_t CLS_t)."""
    visual = tiny_visual(64)
    ref = copy.deepcopy(visual).eval()  # the original open_clip ViT, before wrapping
    ref.output_tokens, ref.proj = True, None
    raw = copy.deepcopy(ref)
    raw.ln_post = nn.Identity()  # CLS before the final norm
    bb = UniFormerV2Backbone(visual, T, TINY_NL)
    steps = (T + 1) // 2
    assert bb.num_steps == steps and bb.token_frames.tolist() == list(range(0, T, 2))
    # live extractor paths: balance -> 1 must switch them off exactly
    for d in bb.dec:
        nn.init.normal_(d.attn.out_proj.weight, std=0.1)
        nn.init.normal_(d.mlp.c_proj.weight, std=0.1)
    with torch.no_grad():
        bb.balance.fill_(30.0)
        bb.temporal_cls_token.normal_()
    assert float(torch.sigmoid(bb.balance[:1])) == 1.0  # exactly 1 in float32
    bb.train(mode == "train")
    x = video(2, T, seed=T)
    with torch.no_grad():
        tokens, frames, x_cls = bb(x)
        want = [ref(x[:, 2 * j]) for j in range(steps)]
        cls_raw = torch.stack([raw(x[:, 2 * j])[0] for j in range(steps)], 1)
        want_cls = bb.norm(cls_raw.mean(1))
    assert tokens.shape == (2, steps, 64, TINY_W) and frames.shape == (2, steps, TINY_W)
    for j, (pooled, toks) in enumerate(want):
        torch.testing.assert_close(tokens[:, j], toks, rtol=1e-5, atol=1e-5, msg=f"step {j}")
        torch.testing.assert_close(frames[:, j], pooled, rtol=1e-5, atol=1e-5, msg=f"step {j}")
    torch.testing.assert_close(x_cls, want_cls, rtol=1e-5, atol=1e-5)


def test_at_init_the_extractor_is_the_identity():
    """Zero-init output projections: the fused token is the learnable video token itself, so
    balance 0 gives x_cls = norm(0.5 token + 0.5 mean_t CLS_t)."""
    visual = tiny_visual(64)
    raw = copy.deepcopy(visual).eval()
    raw.output_tokens, raw.proj, raw.ln_post = True, None, nn.Identity()
    bb = UniFormerV2Backbone(visual, 6, TINY_NL).eval()
    with torch.no_grad():
        bb.temporal_cls_token.normal_()
        x = video(2, 6, seed=3)
        _, _, x_cls = bb(x)
        mean = torch.stack([raw(x[:, f])[0] for f in (0, 2, 4)], 1).mean(1)
        want = bb.norm(0.5 * bb.temporal_cls_token[0] + 0.5 * mean)
    torch.testing.assert_close(x_cls, want, rtol=1e-5, atol=1e-5)


# ======================================================= official forward, independent oracle

@pytest.mark.parametrize("layout", ["ssv2", "kinetics"])
@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("T,n_layers", [(4, 2), (7, 2), (7, 1)])
def test_matches_the_official_forward_on_an_official_checkpoint(backend, T, n_layers, layout):
    """An official-layout checkpoint loaded into our tower gives the official model's x_cls
    and final tokens (float64, every path live: LMHRA, DPE, extractor, balance); n_layers=1:
    the extractor reads the last block only. ``kinetics``: the K400/K710 files' layout (no
    LMHRA, frame-wise patch embedding), loaded with ``lmhra=False, temporal_downsample=False``.
    """
    require_backend("cross_attention", backend)
    full = layout == "ssv2"
    state = official_state(TINY_W, TINY_LAYERS, TINY_HEADS, 8, n_layers, 400, TINY_PATCH,
                           ln_pre=False, lmhra=full, downsample=full)
    state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    bb = UniFormerV2Backbone(tiny_visual(64), T, n_layers, lmhra=full,
                             temporal_downsample=full).double()
    assert bb.num_steps == ((T + 1) // 2 if full else T)
    load_official(bb, state)
    bb.eval()
    x = video(2, T, dtype=torch.float64, seed=11)
    with torch.no_grad(), art_fast.use_backend(backend):
        tokens, frames, x_cls = bb(x)
    want_cls, last = official_forward(state, x, heads=TINY_HEADS, patch=TINY_PATCH,
                                      layers=TINY_LAYERS, n_layers=n_layers, act=F.gelu)
    torch.testing.assert_close(x_cls, want_cls, rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        normed = bb.visual.ln_post(last)  # not provided by the checkpoint: our own norm
    torch.testing.assert_close(tokens, normed[:, :, 1:], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(frames, normed[:, :, 0], rtol=1e-9, atol=1e-9)
    # the official model really mixes time here: with LMHRA step 0's tokens change with
    # input frame 2; without (Kinetics layout) they stay per-frame and only x_cls mixes time
    x2 = x.clone()
    x2[:, 2] += 1.0
    with torch.no_grad():
        tokens2, _, x_cls2 = bb(x2)
    assert torch.allclose(tokens2[:, 0], tokens[:, 0]) != full
    assert not torch.allclose(x_cls2, x_cls)


# =============================================================================== 2. shapes

@pytest.mark.parametrize("size", [64, 224])
@pytest.mark.parametrize("T", [2, 8, 16])
def test_shapes_backbone_and_art(cache_dir, T, size):
    torch.manual_seed(0)
    model = ART(CLASSES, num_frames=T, image_size=size, text_cache_dir=cache_dir, **SMALL_ART)
    bb = model.backbone
    assert isinstance(bb, UniFormerV2Backbone)
    steps, N, w, B, K = (T + 1) // 2, (size // TINY_PATCH) ** 2, TINY_W, 2, 2
    assert model.num_steps == bb.num_steps == steps
    assert model.step_frames == list(range(0, T, 2)) and len(model.step_frames) == steps
    assert bb.num_patches == N and bb.width == bb.embed_dim == w
    x = video(B, T, size)
    tokens, frames, x_cls = bb(x)
    assert tokens.shape == (B, steps, N, w) and frames.shape == (B, steps, w)
    assert x_cls.shape == (B, w)
    out = model(x, torch.tensor([0, 3]))
    assert out.tracklets.shape == (B, K, steps, 32)
    assert out.region_indices.shape == out.region_weights.shape == (B, K, steps, 4, 4)
    assert int(out.region_indices.max()) < N
    assert out.saliency.shape == (B, K, steps)
    assert all(torch.isfinite(v) for v in out.losses.values())


# ============================================================================ 3. gradients

def test_gradients_reach_every_new_parameter():
    torch.manual_seed(0)
    bb = UniFormerV2Backbone(tiny_visual(64), 6, TINY_NL, dropout=0.0)
    randomise_zero_init(bb)
    bb.train()
    x = video(2, 6, seed=5)
    tokens, frames, x_cls = bb(x)
    g = torch.Generator().manual_seed(9)
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in (tokens, frames, x_cls))
    loss.backward()
    bad = [n for n, p in bb.named_parameters() if p.requires_grad
           and (p.grad is None or not p.grad.any() or not torch.isfinite(p.grad).all())]
    assert bad == []
    # the tiny tower's sin-cos position embedding is fixed by open_clip; nothing else is
    assert [n for n, p in bb.named_parameters() if not p.requires_grad] == [
        "visual.positional_embedding"]
    names = [n for n, _ in bb.named_parameters()]
    for part in ("visual.conv1.weight", ".lmhra1.pos_embed.0.", ".lmhra2.pos_embed.3.",
                 "dpe.1.", "dec.0.ln_3.", "temporal_cls_token", "balance", "norm.weight"):
        assert any(part in n for n in names), part
    assert "visual.proj" not in names and "visual.proj" not in bb.state_dict()
    # the inflated side taps learn too
    assert bb.visual.conv1.weight.grad[:, :, 0].any() and bb.visual.conv1.weight.grad[:, :, 2].any()


def test_gradient_checkpointing_gives_the_same_gradients():
    x = video(2, 4, seed=2)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        bb = UniFormerV2Backbone(tiny_visual(64), 4, TINY_NL, dropout=0.0,
                                 grad_checkpointing=ckpt)
        randomise_zero_init(bb)
        tokens, _, x_cls = bb(x)
        (tokens.square().mean() + x_cls.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in bb.named_parameters() if p.requires_grad})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6, msg=n)


# ============================================================== 4. backend of the extractor

def _require_ext():
    # A missing or stale extension is a skip only where ART_FAST_REQUIRE_EXT=0 (a failure in
    # CI): require_backend's policy, not a skip of its own.
    require_backend("cross_attention", "cpu")


def _live_extractor(width=64, heads=4, seed=0):
    torch.manual_seed(seed)
    ext = Extractor(width, heads, dropout=0.0)
    for t in (ext.attn.out_proj.weight, ext.attn.out_proj.bias, ext.mlp.c_proj.weight,
              ext.mlp.c_proj.bias, ext.attn.in_proj_bias):
        nn.init.normal_(t, std=0.1)
    return ext


def _run_recorded(backend, fn, inputs, params, cot):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    for p in params:
        p.grad = None
    with art_fast.use_backend(backend), OpRecorder() as rec:
        outs = fn(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        sum((o * c).sum() for o, c in zip(outs, cot)).backward()
    grads = [t.grad for t in leaves] + [p.grad.clone() for p in params]
    return [o.detach() for o in outs], grads, rec.ops


def test_extractor_dispatches_to_the_kernels_and_matches_torch():
    _require_ext()
    ext = _live_extractor()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 1, 64, generator=g), torch.randn(3, 4 * 65, 64, generator=g)
    cot = [torch.randn(3, 1, 64, generator=g)]
    params = list(ext.parameters())
    seen = {b: _run_recorded(b, ext, [x, y], params, cot) for b in ("torch", "cpu", "auto")}
    ref_out, ref_grads, ref_ops = seen["torch"]
    assert not any(o.startswith("art_fast::") for o in ref_ops), ref_ops
    for b in ("cpu", "auto"):  # auto picks the C++ kernel for CPU tensors
        out, grads, ops = seen[b]
        assert {"art_fast::cross_attention_fwd", "art_fast::cross_attention_bwd"} <= ops, (b, ops)
        torch.testing.assert_close(out[0], ref_out[0], rtol=1e-4,
                                   atol=1e-4 * float(ref_out[0].abs().max()))
        for i, (a, r) in enumerate(zip(grads, ref_grads)):
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()),
                                       msg=f"{b}: grad {i}")


def test_whole_tower_cpu_backend_matches_torch():
    _require_ext()
    torch.manual_seed(0)
    bb = UniFormerV2Backbone(tiny_visual(64), 6, TINY_NL, dropout=0.0)
    randomise_zero_init(bb)
    bb.eval()
    x = video(2, 6, seed=4)
    g = torch.Generator().manual_seed(2)
    cot = [torch.randn(s, generator=g) for s in ((2, 3, 64, 64), (2, 3, 64), (2, 64))]
    params = [p for p in bb.parameters() if p.requires_grad]
    seen = {b: _run_recorded(b, bb, [x], params, cot) for b in ("torch", "cpu")}
    assert "art_fast::cross_attention_fwd" in seen["cpu"][2]
    assert not any(o.startswith("art_fast::") for o in seen["torch"][2])
    for a, r in zip(seen["cpu"][0] + seen["cpu"][1], seen["torch"][0] + seen["torch"][1]):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_extractor_gpu_backends_match_torch(backend):
    """The extractor inside the tiny tower on a GPU backend (T = 16: 8 x 65 keys per query)
    against the torch backend on the same device: outputs and gradients within 1e-4."""
    require_backend("cross_attention", backend)
    torch.manual_seed(0)
    bb = UniFormerV2Backbone(tiny_visual(64), 16, TINY_NL, dropout=0.0)
    randomise_zero_init(bb)
    bb = bb.cuda().eval()
    x = video(2, 16, seed=6).cuda()
    g = torch.Generator().manual_seed(3)
    cot = [torch.randn(s, generator=g).cuda() for s in ((2, 8, 64, 64), (2, 8, 64), (2, 64))]
    params = [p for p in bb.parameters() if p.requires_grad]
    seen = {b: _run_recorded(b, bb, [x], params, cot) for b in ("torch", backend)}
    for a, r in zip(seen[backend][0] + seen[backend][1], seen["torch"][0] + seen["torch"][1]):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))


# ================================================== 5. extractor vs the official formulation

@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("width,heads,L", [(64, 4, 130), (48, 3, 7), (32, 1, 1)])
def test_extractor_matches_the_official_formulation(backend, width, heads, L):
    require_backend("cross_attention", backend)
    ext = _live_extractor(width, heads, seed=L).double()
    for m in (ext.ln_1, ext.ln_2, ext.ln_3):
        nn.init.normal_(m.weight, 1.0, 0.2)
        nn.init.normal_(m.bias, 0.0, 0.2)
    ext.eval()
    sd = {f"e.{k}": v.detach() for k, v in ext.state_dict().items()}
    g = torch.Generator().manual_seed(L)
    B = 3
    x = torch.randn(B, 1, width, generator=g, dtype=torch.float64)
    y = torch.randn(B, L, width, generator=g, dtype=torch.float64)
    with torch.no_grad(), art_fast.use_backend(backend):
        att = ext.attention(ext.ln_1(x), ext.ln_3(y))
        out = ext(x, y)
    # official layout: sequence first
    xs, ys = x.transpose(0, 1), y.transpose(0, 1)
    want_att = official_attention(sd, "e.attn", _ln(sd, "e.ln_1", xs), _ln(sd, "e.ln_3", ys),
                                  heads)
    want = official_extractor(sd, "e", xs, ys, heads, _quick_gelu)
    torch.testing.assert_close(att, want_att.transpose(0, 1), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, want.transpose(0, 1), rtol=1e-10, atol=1e-10)


# ============================================================ 6. inflated patch embedding

@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("T", [1, 4, 5])
def test_inflate_patch_embedding(bias, T):
    torch.manual_seed(0)
    conv2d = nn.Conv2d(3, 16, 8, stride=8, bias=bias)
    if bias:
        nn.init.normal_(conv2d.bias)
    conv = inflate_patch_embedding(conv2d)
    assert isinstance(conv, nn.Conv3d)
    assert conv.kernel_size == (3, 8, 8) and conv.stride == (2, 8, 8)
    assert conv.padding == (1, 0, 0)
    assert torch.equal(conv.weight[:, :, 1], conv2d.weight)
    assert not conv.weight[:, :, 0].any() and not conv.weight[:, :, 2].any()
    assert (conv.bias is None) == (not bias)
    if bias:
        assert torch.equal(conv.bias, conv2d.bias)
    g = torch.Generator().manual_seed(T)
    frame = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        same = conv(frame.unsqueeze(2).expand(-1, -1, T, -1, -1))  # T identical frames
        want = conv2d(frame)
        assert same.shape == (2, 16, (T + 1) // 2, 4, 4)
        for j in range(same.shape[2]):  # the padded ends too: only the centre tap is non-zero
            torch.testing.assert_close(same[:, :, j], want, rtol=1e-5, atol=1e-5)
        frames = torch.randn(2, 3, T, 32, 32, generator=g)  # distinct frames: frame 2 j
        out = conv(frames)
        for j in range(out.shape[2]):
            torch.testing.assert_close(out[:, :, j], conv2d(frames[:, :, 2 * j]), rtol=1e-5,
                                       atol=1e-5)


# ================================================================ 7. official checkpoints

@pytest.fixture(scope="module")
def b16():
    """A ViT-B/16 (QuickGELU) UniFormerV2 tower, random init at 224, T = 8, and an
    official-layout B/16 checkpoint for it (K400 classifier)."""
    name, n_layers = UNIFORMERV2_MODELS["uniformerv2-b16"]
    assert name == "ViT-B-16-quickgelu" and n_layers == 4
    clip, _, _ = build_clip(name, None, 224)
    bb = UniFormerV2Backbone(clip.visual, 8, n_layers)
    del clip
    state = official_state(768, 12, 12, 14, 4, 400, 16, seed=5)
    return bb, state


@pytest.fixture(params=["tiny", "b16"])
def tower(request):
    if request.param == "tiny":
        return UniFormerV2Backbone(tiny_visual(64), 8, TINY_NL), tiny_official(seed=3)
    return request.getfixturevalue("b16")


SKIPPED = ["backbone.transformer.proj.2.weight", "backbone.transformer.proj.2.bias"]


def test_official_checkpoint_loads_every_tensor(tower):
    bb, state = tower
    ln_post = {k: v.clone() for k, v in bb.visual.ln_post.state_dict().items()}
    report = load_official(bb, state)
    assert report["skipped"] == SKIPPED
    assert report["not_provided"] == list(OFFICIAL_NOT_PROVIDED)
    assert report["loaded"] == len(state) - 2
    assert_loaded(bb, state)
    own = bb.state_dict()
    w = bb.width
    # spot checks, written out
    assert torch.equal(own["dec.0.attn.in_proj_weight"],
                       state["backbone.transformer.dec.0.attn.in_proj_weight"])
    assert own["dec.0.attn.in_proj_weight"].shape == (3 * w, w)
    assert torch.equal(own["norm.weight"], state["backbone.transformer.proj.0.weight"])
    assert torch.equal(own["norm.bias"], state["backbone.transformer.proj.0.bias"])
    assert torch.equal(own["visual.transformer.resblocks.1.lmhra2.pos_embed.2.weight"],
                       state["backbone.transformer.resblocks.1.lmhra2.pos_embed.2.weight"])
    assert torch.equal(own["visual.conv1.weight"], state["backbone.conv1.weight"])
    assert torch.equal(own["temporal_cls_token"], state["backbone.transformer.temporal_cls_token"])
    assert torch.equal(own["balance"], state["backbone.transformer.balance"])
    assert torch.equal(own["dpe.1.weight"], state["backbone.transformer.dpe.1.weight"])
    assert torch.equal(
        own["visual.transformer.resblocks.0.lmhra1.pos_embed.0.num_batches_tracked"],
        state["backbone.transformer.resblocks.0.lmhra1.pos_embed.0.num_batches_tracked"])
    for k, v in bb.visual.ln_post.state_dict().items():  # not provided: kept
        assert torch.equal(v, ln_post[k]), k


@pytest.mark.parametrize("wrap", ["model_state", "module", "both", "state_dict", "model"])
def test_official_checkpoint_wrapped_or_prefixed(wrap):
    bb = UniFormerV2Backbone(tiny_visual(64), 8, TINY_NL)
    state = tiny_official(seed=4)
    skipped = SKIPPED
    if wrap in ("module", "both"):
        state = {"module." + k: v for k, v in state.items()}
        skipped = ["module." + k for k in SKIPPED]
    if wrap == "both":
        state = {"model_state": state, "epoch": 30}
    elif wrap in ("model_state", "state_dict", "model"):
        state = {wrap: state}
    report = load_official(bb, state)
    assert report["skipped"] == skipped
    assert report["not_provided"] == list(OFFICIAL_NOT_PROVIDED)
    inner = state["model_state"] if wrap == "both" else state.get(wrap, state)
    assert_loaded(bb, inner)
    # the bare remap, without the prefix
    mapped, skipped_bare = remap_official_state_dict(
        {strip(k): v for k, v in inner.items()})
    assert skipped_bare == list(OFFICIAL_SKIPPED)
    assert set(mapped) == set(bb.state_dict()) - set(OFFICIAL_NOT_PROVIDED)


@pytest.mark.parametrize("official,ours", [
    ("backbone.conv1.weight", "visual.conv1.weight"),
    ("backbone.class_embedding", "visual.class_embedding"),
    ("backbone.positional_embedding", "visual.positional_embedding"),
    ("backbone.ln_pre.bias", "visual.ln_pre.bias"),
    ("module.backbone.transformer.resblocks.3.lmhra2.pos_embed.0.running_var",
     "visual.transformer.resblocks.3.lmhra2.pos_embed.0.running_var"),
    ("backbone.transformer.resblocks.11.mlp.c_proj.weight",
     "visual.transformer.resblocks.11.mlp.c_proj.weight"),
    ("backbone.transformer.dpe.2.bias", "dpe.2.bias"),
    ("backbone.transformer.dec.3.attn.in_proj_weight", "dec.3.attn.in_proj_weight"),
    ("backbone.transformer.temporal_cls_token", "temporal_cls_token"),
    ("backbone.transformer.balance", "balance"),
    ("backbone.transformer.proj.0.weight", "norm.weight"),
    ("transformer.proj.2.bias", None),
])
def test_remap_official_key(official, ours):
    """One key of each family, renamed as written out here (None: skipped)."""
    t = torch.zeros(1)
    mapped, skipped = remap_official_state_dict({official: t})
    if ours is None:
        assert mapped == {} and skipped == [official]
    else:
        assert list(mapped) == [ours] and mapped[ours] is t and skipped == []
    assert our_key(strip(official)) == ours  # OFFICIAL_TO_OURS (assert_loaded) agrees


def _bad_cases(state, w):
    """(name, modified state, the key the message must name)."""
    k_res = "backbone.transformer.resblocks.1.attn.in_proj_weight"
    k_dec = "backbone.transformer.dec.0.ln_1.weight"
    k_pos = "backbone.positional_embedding"
    cases = []
    s = dict(state)
    s[k_res] = torch.zeros(3 * w, w + 1)
    cases.append(("shape-block", s, "visual.transformer.resblocks.1.attn.in_proj_weight"))
    s = dict(state)
    s[k_dec] = torch.zeros(w + 2)
    cases.append(("shape-dec", s, "dec.0.ln_1.weight"))
    s = dict(state)  # a checkpoint for another image size
    s[k_pos] = torch.zeros(state[k_pos].shape[0] + 7, w)
    cases.append(("shape-pos", s, "visual.positional_embedding"))
    s = dict(state)
    s["backbone.transformer.extra_thing"] = torch.zeros(3)
    cases.append(("extra", s, "transformer.extra_thing"))
    s = dict(state)
    s["backbone.transformer.dec.9.ln_1.weight"] = torch.zeros(w)
    cases.append(("extra-dec", s, "dec.9.ln_1.weight"))
    s = dict(state)
    del s["backbone.transformer.resblocks.0.lmhra2.pos_embed.2.bias"]
    cases.append(("missing-block", s, "visual.transformer.resblocks.0.lmhra2.pos_embed.2.bias"))
    s = dict(state)
    del s["backbone.transformer.balance"]
    cases.append(("missing-balance", s, "balance"))
    s = dict(state)
    s[k_dec] = state[k_dec].clone()
    s[k_dec][3] = float("nan")
    cases.append(("non-finite", s, "dec.0.ln_1.weight"))
    return cases


def test_official_checkpoint_errors_name_the_key(tower):
    bb, state = tower
    before = {k: v.clone() for k, v in bb.state_dict().items() if k.startswith(("dec.0.", "bal"))}
    for name, bad, key in _bad_cases(state, bb.width):
        with pytest.raises(ValueError, match=re.escape(repr(key))) as info:
            load_official(bb, bad)
        assert "UniFormerV2" in str(info.value), name
    after = bb.state_dict()
    for k, v in before.items():  # nothing was loaded by a failed call
        assert torch.equal(after[k], v), k


# ====================================================================== 8. looks_official

def test_looks_official():
    state = tiny_official()
    assert looks_official(state)
    assert looks_official({strip(k): v for k, v in state.items()})
    assert looks_official({"model_state": {"module." + k: v for k, v in state.items()}})
    clip, _, _ = build_clip("tiny", None, 64)
    assert not looks_official(clip.state_dict())
    assert not looks_official({"state_dict": clip.state_dict()})
    assert not looks_official({"visual." + k: v for k, v in clip.visual.state_dict().items()})


# ========================================================= 9. ART with an official checkpoint

def test_art_loads_an_official_checkpoint_file(tmp_path, cache_dir):
    state = tiny_official(seed=7)
    path = tmp_path / "k400_tiny.pyth"
    torch.save({"model_state": state, "epoch": 1}, path)
    torch.manual_seed(0)
    model = ART(CLASSES, pretrained=str(path), num_frames=8, image_size=64,
                text_cache_dir=cache_dir, **SMALL_ART)
    rep = model.video_checkpoint_report
    assert rep["loaded"] == len(state) - 2 and rep["skipped"] == SKIPPED
    assert rep["not_provided"] == list(OFFICIAL_NOT_PROVIDED) and rep["path"] == str(path)
    saved = torch.load(path, weights_only=True)["model_state"]
    assert_loaded(model.backbone, saved)
    assert model.spec.pretrained is None  # the text tower: random init (no text_pretrained)
    out = model(video(2, 8), torch.tensor([0, 1]))
    assert torch.isfinite(out.losses["total"]) and out.tracklets.shape[2] == 4


def test_art_official_checkpoint_with_clip_text_weights(tmp_path, cache_dir):
    """text_pretrained: the text tower (and the not-provided ln_post) come from the CLIP file,
    everything the official checkpoint holds from it."""
    import open_clip

    from art_fast.model.backbone import TINY_NAME

    build_clip("tiny", None, 64)  # registers the tiny config
    torch.manual_seed(123)
    src = open_clip.create_model(TINY_NAME, pretrained=None, force_image_size=64)
    clip_path = tmp_path / "clip_tiny.pt"
    torch.save(src.state_dict(), clip_path)
    state = tiny_official(seed=8)
    path = tmp_path / "official.pt"
    torch.save(state, path)
    model = ART(CLASSES, pretrained=str(path), text_pretrained=str(clip_path), num_frames=4,
                image_size=64, text_cache_dir=cache_dir, **SMALL_ART)
    assert model.spec.weights_id.startswith("file:")
    assert_loaded(model.backbone, state)
    torch.testing.assert_close(model.backbone.visual.ln_post.weight, src.visual.ln_post.weight,
                               rtol=0, atol=0)


def test_art_inflates_a_clip_file_into_the_video_tower(tmp_path, cache_dir):
    """pretrained = a CLIP checkpoint file (what `openai` resolves to): every CLIP image weight
    lands in the tower (the patch conv at the centre temporal tap, zeros at the others), the
    UniFormerV2 parts keep their init, and the text bank is encoded by that file's text tower."""
    import open_clip

    from art_fast.model.backbone import TINY_NAME

    build_clip("tiny", None, 64)  # registers the tiny config
    torch.manual_seed(321)
    src = open_clip.create_model(TINY_NAME, pretrained=None, force_image_size=64)
    path = tmp_path / "clip_tiny.pt"
    torch.save(src.state_dict(), path)
    model = ART(CLASSES, pretrained=str(path), num_frames=4, image_size=64,
                text_cache_dir=cache_dir, **SMALL_ART)
    assert model.video_checkpoint_report is None and model.spec.weights_id.startswith("file:")
    own = model.backbone.state_dict()
    conv = own["visual.conv1.weight"]
    torch.testing.assert_close(conv[:, :, 1], src.visual.conv1.weight, rtol=0, atol=0)
    assert not conv[:, :, 0].any() and not conv[:, :, 2].any()
    n = 0
    for k, v in src.visual.state_dict().items():
        if k in ("conv1.weight", "proj"):  # inflated above; the projection is removed
            continue
        torch.testing.assert_close(own[f"visual.{k}"], v, rtol=0, atol=0, msg=k)
        n += 1
    assert n > 20 and "visual.proj" not in own
    assert not own["visual.transformer.resblocks.0.lmhra1.pos_embed.3.weight"].any()


@pytest.mark.parametrize("kwargs,match", [
    (dict(text_pretrained="x"), "text_pretrained"),                       # pretrained None
    (dict(text_pretrained="x", backbone="tiny"), "text_pretrained"),      # per-frame tower
    (dict(temporal_shift=0.25), "temporal_shift"),
    (dict(extractor_dropout=1.0), "extractor_dropout"),
    (dict(extractor_dropout=-0.1), "extractor_dropout"),
    (dict(extractor_dropout=True), "extractor_dropout"),
    (dict(backbone="uniformerv2-s16"), "not a UniFormerV2 tower"),
])
def test_art_bad_uniformerv2_options(cache_dir, kwargs, match):
    args = dict(SMALL_ART, num_frames=4, image_size=64, text_cache_dir=cache_dir)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ART(CLASSES, **args)


def test_art_text_pretrained_needs_an_official_file(tmp_path, cache_dir):
    clip, _, _ = build_clip("tiny", None, 64)
    path = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), path)  # a CLIP file, not an official UniFormerV2 one
    with pytest.raises(ValueError, match="text_pretrained"):
        ART(CLASSES, pretrained=str(path), text_pretrained="x", num_frames=4, image_size=64,
            text_cache_dir=cache_dir, **SMALL_ART)
    # without text_pretrained the CLIP file is the tower's init (inflated)
    model = ART(CLASSES, pretrained=str(path), num_frames=4, image_size=64,
                text_cache_dir=cache_dir, **SMALL_ART)
    assert model.video_checkpoint_report is None
    assert torch.equal(model.backbone.visual.conv1.weight[:, :, 1], clip.visual.conv1.weight)


def test_art_official_checkpoint_for_another_size_is_a_clear_error(tmp_path, cache_dir):
    path = tmp_path / "official.pt"
    torch.save(tiny_official(), path)  # grid 8 (64 px)
    with pytest.raises(ValueError, match="positional_embedding"):
        ART(CLASSES, pretrained=str(path), num_frames=4, image_size=32,
            text_cache_dir=cache_dir, **SMALL_ART)


def test_art_extractor_dropout_reaches_the_extractor(cache_dir):
    model = ART(CLASSES, num_frames=4, image_size=64, extractor_dropout=0.2,
                text_cache_dir=cache_dir, **SMALL_ART)
    assert [d.mlp.dropout.p for d in model.backbone.dec] == [0.2] * TINY_NL


# =========================================================== 10. ViT-B/16 UniFormerV2 on CPU

@pytest.mark.slow
def test_uniformerv2_b16_builds_offline_and_trains_a_step(tmp_path):
    torch.manual_seed(0)
    model = ART(["diving", "vault"], backbone="uniformerv2-b16", pretrained=None, num_frames=8,
                image_size=224, num_queries=2, text_cache_dir=str(tmp_path))
    bb = model.backbone
    assert isinstance(bb, UniFormerV2Backbone)
    assert bb.width == bb.embed_dim == 768 and bb.num_patches == 196
    assert len(bb.dec) == 4 and bb.return_from == 8 and bb.dec[0].heads == 12
    assert model.num_steps == 4 and model.step_frames == [0, 2, 4, 6]
    assert model.bank.shape == (8, 2, 512)
    names = ["visual.conv1.weight", "dec.0.attn.in_proj_weight",
             "visual.transformer.resblocks.11.lmhra1.pos_embed.3.weight", "balance"]
    before = {n: bb.state_dict()[n].clone() for n in names}
    opt = torch.optim.AdamW(model.param_groups(lr=1e-4, weight_decay=0.01))
    out = model(video(1, 8, 224), torch.tensor([1]))
    assert out.region_indices.shape == (1, 2, 4, 8, 16)
    loss = out.losses["total"]
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = bb.state_dict()
    for n in names:
        assert not torch.equal(after[n], before[n]), n
    assert all(torch.isfinite(p).all() for p in model.parameters())


# =================================================== 11. region hit on the T' tracklet steps

def _overlap(box, grid, size):
    """Exact share of each patch's area inside an integer box (row-major patches)."""
    gh, gw = grid
    ph, pw = size / gh, size / gw
    x0, y0, x1, y1 = box
    ov = np.zeros(gh * gw)
    for r in range(gh):
        for c in range(gw):
            dx = max(0.0, min(x1, (c + 1) * pw) - max(x0, c * pw))
            dy = max(0.0, min(y1, (r + 1) * ph) - max(y0, r * ph))
            ov[r * gw + c] = dx * dy / (ph * pw)
    return ov


def _hit(idx, w, ov):
    return float((w * ov[idx]).sum() / w.sum())


# even frames: a box each (all different); odd frames: none (NaN) or empty
EVEN_BOXES = {0: (0, 0, 32, 32), 2: (16, 8, 64, 40), 4: (8, 24, 40, 64), 6: (40, 40, 64, 64)}


def _boxes(T):
    b = np.full((T, 4), np.nan)
    for t in range(1, T, 2):
        if t % 4 == 3:
            b[t] = (10, 10, 10, 30)  # zero width: no valid box either
    for t, box in EVEN_BOXES.items():
        if t < T:
            b[t] = box
    return b


def test_draw_tracklets_uses_the_box_of_each_steps_frame(tmp_path, cache_dir):
    from art_fast.data import to_model_input
    from art_fast.viz import draw_tracklets

    T = 6
    torch.manual_seed(0)
    model = ART(CLASSES, num_frames=T, image_size=64, text_cache_dir=cache_dir, **SMALL_ART)
    frames = np.random.default_rng(0).integers(0, 255, (T, 64, 64, 3), dtype=np.uint8)
    boxes = _boxes(T)
    info = draw_tracklets(model, frames, tmp_path / "t.png", cell=32, boxes=boxes)
    assert info["step_frames"] == [0, 2, 4]
    assert len(info["region_hit"]) == 2 and all(len(h) == 3 for h in info["region_hit"])
    assert all(v is not None for h in info["region_hit"] for v in h)  # every step valid
    assert len(info["saliency"]) == 2 and len(info["saliency"][0]) == 3
    model.eval()
    with torch.no_grad():
        o = model(to_model_input(torch.from_numpy(frames)[None]))
    ovs = [_overlap(boxes[f], (8, 8), 64) for f in info["step_frames"]]
    want = [[_hit(o.region_indices[0, q, j].numpy(), o.region_weights[0, q, j].double().numpy(),
                  ovs[j]) for j in range(3)] for q in range(2)]
    np.testing.assert_allclose(info["region_hit"], want, atol=1e-6)
    np.testing.assert_allclose(info["region_hit_chance"], [ov.mean() for ov in ovs], atol=1e-12)
    img = Image.open(info["path"])
    assert img.size == (3 * (32 + 4) + 4, 2 * (32 + 4 + 16) + 4)  # T' columns, K rows


class _BoxedClips(torch.utils.data.Dataset):
    """A minimal evaluation set with target boxes (the interface _predict uses)."""

    has_boxes = can_map_boxes = True

    def __init__(self, videos, boxes, classes):
        self.videos, self.boxes, self.classes = videos, boxes, classes
        self.num_classes = len(classes)

    def __len__(self):
        return len(self.videos)

    def _i(self, index):
        return index[0] if isinstance(index, tuple) else index

    def __getitem__(self, index):
        i = self._i(index)
        return self.videos[i], i % self.num_classes

    def get_with_boxes(self, index):
        i = self._i(index)
        return self.videos[i], i % self.num_classes, self.boxes[i]


def test_trainer_region_hit_reads_the_boxes_of_the_step_frames(tmp_path, cache_dir):
    from art_fast.data import to_model_input
    from art_fast.train import load_config
    from art_fast.train import trainer as trainer_mod
    from art_fast.train.distributed import DistContext

    T = 8
    torch.manual_seed(0)
    model = ART(CLASSES, num_frames=T, image_size=64, text_cache_dir=cache_dir, **SMALL_ART)
    rng = np.random.default_rng(1)
    videos = torch.from_numpy(rng.integers(0, 255, (2, T, 64, 64, 3), dtype=np.uint8))
    boxes = torch.from_numpy(np.stack([_boxes(T), _boxes(T)]).astype(np.float32))
    boxes[1, 2] = torch.tensor([0, 0, 64, 16])  # the second clip: another box at frame 2
    ds = _BoxedClips(videos, boxes, CLASSES)
    cfg = load_config(None, [f"data.root={tmp_path}", "data.num_workers=0",
                             "train.progress=false", "eval.batch_size=2"])
    pred = trainer_mod._predict(model, ds, cfg, DistContext())
    assert pred["region_frames"].tolist() == [4, 4]  # T' = 4 steps, each with a valid box
    model.eval()
    with torch.no_grad():
        o = model(to_model_input(videos))
    for b in range(2):
        ovs = [_overlap(boxes[b, f].tolist(), (8, 8), 64) for f in model.step_frames]
        want = [sum(_hit(o.region_indices[b, q, j].numpy(),
                         o.region_weights[b, q, j].double().numpy(), ovs[j]) for j in range(4))
                for q in range(2)]
        np.testing.assert_allclose(pred["region_hit_sum"][b].numpy(), want, atol=1e-5)
        assert float(pred["region_chance_sum"][b]) == pytest.approx(
            sum(ov.mean() for ov in ovs), abs=1e-6)
    assert math.isfinite(float(pred["region_hit_sum"].sum()))


# ======================================================= the Kinetics checkpoints' layout

def test_a_kinetics_layout_checkpoint_names_the_options_to_set():
    """The official K400/K710 files have no LMHRA and a frame-wise patch embedding: loading
    one into the default (LMHRA, stride-2) tower is refused with the two options to set, and
    nothing is loaded; with those options it loads every tensor."""
    state = tiny_official(lmhra=False, downsample=False)
    assert looks_official(state)
    bb = UniFormerV2Backbone(tiny_visual(64), 8, TINY_NL)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    with pytest.raises(ValueError, match=r"model\.lmhra=false.*model\.temporal_downsample=false"):
        load_official(bb, state)
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())
    # the other way round: an SSv2-layout file into a Kinetics-layout tower
    bb_k = UniFormerV2Backbone(tiny_visual(64), 8, TINY_NL, lmhra=False,
                               temporal_downsample=False)
    with pytest.raises(ValueError, match=r"model\.lmhra=true.*model\.temporal_downsample=true"):
        load_official(bb_k, tiny_official())
    load_official(bb_k, state)
    assert_loaded(bb_k, state)
    assert bb_k.token_frames.tolist() == list(range(8))
    assert not any("lmhra" in k for k in bb_k.state_dict())


@pytest.mark.parametrize("kwargs,match", [
    (dict(backbone="tiny", lmhra=False), "lmhra"),
    (dict(backbone="tiny", temporal_downsample=False), "temporal_downsample"),
    (dict(backbone="uniformerv2-tiny", lmhra="no"), "lmhra"),
    (dict(backbone="uniformerv2-tiny", temporal_downsample=0), "temporal_downsample"),
])
def test_art_layout_options_are_checked(cache_dir, kwargs, match):
    kw = {**SMALL_ART, **kwargs}
    with pytest.raises(ValueError, match=match):
        ART(CLASSES, num_frames=8, image_size=64, text_cache_dir=cache_dir, **kw)


def test_art_kinetics_layout_runs_on_every_frame(cache_dir):
    model = ART(CLASSES, num_frames=6, image_size=64, text_cache_dir=cache_dir,
                **{**SMALL_ART, "lmhra": False, "temporal_downsample": False})
    assert model.num_steps == 6 and model.step_frames == list(range(6))
    out = model(video(2, 6), torch.tensor([0, 1]))
    assert out.tracklets.shape[2] == 6 and torch.isfinite(out.losses["total"])
