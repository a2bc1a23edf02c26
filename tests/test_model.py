"""The ART model: shapes, losses, gradients, the text bank and its cache, the EMA, backend
equivalence, learning on a toy batch, a ViT-B/16 build, and bad input."""

from __future__ import annotations

import pytest
import torch

import art_fast
from art_fast import ART
from art_fast.model import LOSS_NAMES
from tests._util import OpRecorder

CLASSES = [f"attribute combination number {i}" for i in range(6)]
# tiny open_clip tower at 32 x 32 with 8 x 8 patches: N = 16 patches per frame
SMALL = dict(backbone="tiny", image_size=32, latent_dim=32, heads=4, se_layers=1,
             rssa_layers=2, dropout=0.0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("text_bank"))


def make(cache_dir, **kw):
    args = dict(SMALL, num_frames=4, num_queries=2, k_region=4, text_cache_dir=cache_dir)
    args.update(kw)
    return ART(CLASSES, **args)


def clip(B, T, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, 3, size, size, generator=g)


@pytest.mark.parametrize("K,T,k_region", [
    (1, 1, None), (2, 2, 1), (4, 8, 16), (2, 8, None), (4, 2, 1), (1, 8, 16), (2, 1, 16),
])
def test_shapes_and_finite_losses(cache_dir, K, T, k_region):
    torch.manual_seed(0)
    model = make(cache_dir, num_frames=T, num_queries=K, k_region=k_region)
    B, N, H, d = 3, 16, 4, 32
    out = model(clip(B, T), torch.tensor([0, 5, 3]))
    kk = N if k_region is None else k_region
    assert out.logits.shape == out.logits_v.shape == (B, len(CLASSES))
    assert out.tracklets.shape == (B, K, T, d)
    assert out.region_indices.shape == out.region_weights.shape == (B, K, T, H, kk)
    assert out.region_indices.dtype == torch.int64
    assert int(out.region_indices.min()) >= 0 and int(out.region_indices.max()) < N
    torch.testing.assert_close(out.region_weights.sum(-1), torch.ones(B, K, T, H))
    assert out.topk_classes.shape == (B, K) and out.saliency.shape == (B, K, T)
    assert set(out.losses) == set(LOSS_NAMES)
    for name, v in out.losses.items():
        assert v.dim() == 0 and torch.isfinite(v), name
    o = model.options
    total = (out.losses["ce"] + out.losses["ce_v"]
             + o.gamma1 * (out.losses["mtc_spatial"] + out.losses["mtc_temporal"]
                           + out.losses["mtc_tracklet"])
             + o.gamma2 * (out.losses["sema_video"] + out.losses["sema_proto"]))
    torch.testing.assert_close(out.losses["total"], total)
    assert model(clip(B, T)).losses is None


def test_gradients_reach_every_trainable_tensor_and_never_the_bank(cache_dir):
    torch.manual_seed(0)
    model = make(cache_dir, num_queries=2, k_region=4)
    bank0 = model.bank.clone()
    out = model(clip(2, 4), torch.tensor([1, 2]))
    out.losses["total"].backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []
    groups = {"backbone.temporal.", "semantics.to_text.", "semantics.to_latent.", "se.",
              "rssa.layers.", "rssa.prompts", "head.", "head_v.", "agent_bank",
              "backbone.visual."}
    names = [n for n, _ in model.named_parameters()]
    for g in groups:
        assert any(n.startswith(g) for n in names), g
    assert "bank" in dict(model.named_buffers()) and not model.bank.requires_grad
    assert model.bank.grad is None
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()
    assert torch.equal(model.bank, bank0)  # only update_bank moves S


def test_text_tower_released_and_not_counted(cache_dir):
    model = make(cache_dir)
    names = [n for n, _ in model.named_parameters()] + list(model.state_dict())
    assert not any("token_embedding" in n or n.startswith(("transformer.", "text.")) for n in names)
    assert not any(isinstance(m, torch.nn.Embedding) for m in model.modules())


def test_update_bank_is_the_ema_step(cache_dir):
    model = make(cache_dir, bank_momentum=0.9)
    with torch.no_grad():
        model.agent_bank.add_(torch.randn_like(model.agent_bank))
    s, sa = model.bank.clone(), model.agent_bank.detach().clone()
    model.update_bank()
    torch.testing.assert_close(model.bank, 0.9 * s + 0.1 * sa, rtol=0, atol=1e-6)
    assert (model.bank - sa).norm() < (s - sa).norm()


def test_text_cache_hits_and_misses(tmp_path):
    d = str(tmp_path / "cache")
    a = make(d)
    assert a.bank_cache_hit is False
    files = list((tmp_path / "cache").glob("*.pt"))
    assert len(files) == 1
    b = make(d)
    assert b.bank_cache_hit is True and torch.equal(a.bank, b.bank)
    # a fresh encode (cache off) gives the same bank: the cache stores what encoding gives
    c = make(d, text_cache=False)
    assert c.bank_cache_hit is False and torch.equal(a.bank, c.bank)
    # other prompts, other model weights, other classes: misses
    assert make(d, num_prompts=3).bank_cache_hit is False
    assert make(d, init_seed=1).bank_cache_hit is False
    assert ART(CLASSES[:4], **dict(SMALL, num_frames=4, text_cache_dir=d)).bank_cache_hit is False
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4
    # a torn cache file is a miss and is rewritten
    files[0].write_bytes(b"not a torch file")
    e = make(d)
    assert e.bank_cache_hit is False and torch.equal(e.bank, a.bank)
    assert make(d).bank_cache_hit is True


def test_bank_shape_and_normalisation(cache_dir):
    model = make(cache_dir)
    P, C, Ct = model.bank.shape
    assert (P, C) == (8, len(CLASSES)) and Ct == 64
    torch.testing.assert_close(model.bank.norm(dim=-1), torch.ones(P, C))
    # different templates give different embeddings (the bank is not degenerate)
    assert (model.bank[0] - model.bank[1]).abs().max() > 1e-3


def test_eval_forward_is_deterministic(cache_dir):
    torch.manual_seed(0)
    model = make(cache_dir, dropout=0.5).eval()
    x, y = clip(2, 4), torch.tensor([0, 1])
    a, b = model(x, y), model(x, y)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.losses["total"], b.losses["total"])
    assert torch.equal(a.region_indices, b.region_indices)


@pytest.mark.parametrize("k_region", [None, 4])
@pytest.mark.parametrize("negatives", ["frame", "batch"])
def test_one_switch_for_the_whole_model(cache_dir, k_region, negatives):
    """In eval mode the cpu backend reproduces the reference's logits and total loss within
    1e-4 relative, and every hot path of the model really goes through the backend."""
    if "cpu" not in art_fast.available_backends():
        pytest.fail("the cpu backend must be built for the tests")
    torch.manual_seed(0)
    model = make(cache_dir, k_region=k_region, temporal_negatives=negatives).eval()
    x, y = clip(3, 4, seed=1), torch.tensor([0, 4, 2])
    seen = {}
    for backend in ("torch", "cpu"):
        with art_fast.use_backend(backend), OpRecorder() as rec:
            seen[backend] = (model(x, y), rec.ops)
    (ref, ref_ops), (fast, fast_ops) = seen["torch"], seen["cpu"]
    assert not any(k.startswith("art_fast::") for k in ref_ops)
    want = {"art_fast::cross_attention_fwd"} | (
        {"art_fast::topk_regions_fwd"} if k_region else set())
    assert want <= fast_ops, fast_ops
    assert any(k.startswith("art_fast::info_nce") for k in fast_ops), fast_ops
    torch.testing.assert_close(fast.logits, ref.logits, rtol=1e-4, atol=1e-4 * float(
        ref.logits.abs().max()))
    torch.testing.assert_close(fast.losses["total"], ref.losses["total"], rtol=1e-4, atol=0)


def test_tiny_model_learns_a_fixed_batch(cache_dir):
    torch.manual_seed(0)
    model = make(cache_dir)
    x, y = clip(6, 4, seed=3), torch.arange(6)
    opt = torch.optim.AdamW(model.param_groups(lr=3e-3, weight_decay=0.01))
    losses = []
    for _ in range(20):
        out = model(x, y)
        opt.zero_grad()
        out.losses["total"].backward()
        opt.step()
        model.update_bank()
        losses.append(float(out.losses["total"]))
    assert losses[-1] < 0.7 * losses[0], losses


def test_param_groups(cache_dir):
    model = make(cache_dir, backbone_lr_mult=0.1)
    groups = {g["name"]: g for g in model.param_groups(lr=1.0, weight_decay=0.05)}
    assert groups["backbone"]["lr"] == pytest.approx(0.1) and groups["head"]["lr"] == 1.0
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    ids = {id(p) for g in groups.values() for p in g["params"]}
    assert ids == {id(p) for p in model.parameters() if p.requires_grad}  # every trainable once
    assert sum(len(g["params"]) for g in groups.values()) == len(ids)
    nd = {id(p) for g in ("backbone_no_decay", "head_no_decay") for p in groups[g]["params"]}
    assert id(model.agent_bank) in nd and id(model.rssa.prompts) in nd
    assert all(p.dim() >= 2 for g in ("backbone", "head") for p in groups[g]["params"])
    frozen = make(cache_dir, freeze_backbone=True)
    names = {g["name"] for g in frozen.param_groups(1.0, 0.0)}
    assert "backbone" not in names and "backbone_no_decay" not in names
    out = frozen(clip(2, 4), torch.tensor([0, 1]))
    out.losses["total"].backward()
    assert all(p.grad is None for p in frozen.backbone.visual.parameters())


def test_global_token_only_ablation(cache_dir):
    model = make(cache_dir, tracklet_branch=False)
    out = model(clip(2, 4), torch.tensor([0, 1]))
    assert out.tracklets is None and out.region_indices is None
    assert float(out.losses["mtc_spatial"]) == 0.0 and torch.isfinite(out.losses["total"])
    assert not hasattr(model, "rssa")


def test_vit_b16_builds_offline_and_trains_a_step(tmp_path):
    torch.manual_seed(0)
    model = ART(["diving", "vault"], backbone="ViT-B-16", pretrained=None, num_frames=2,
                image_size=224, num_queries=2, text_cache_dir=str(tmp_path))
    assert model.backbone.num_patches == 196 and model.backbone.width == 768
    assert model.backbone.embed_dim == 512 and model.bank.shape == (8, 2, 512)
    out = model(clip(1, 2, size=224), torch.tensor([1]))
    assert out.region_indices.shape == (1, 2, 2, 8, 16)
    out.losses["total"].backward()
    assert model.backbone.visual.conv1.weight.grad is not None
    assert torch.isfinite(out.losses["total"])


@pytest.mark.parametrize("bad,exc,match", [
    (lambda: clip(2, 3), ValueError, r"T=4"),                     # wrong T
    (lambda: clip(2, 4, size=48), ValueError, r"H=32"),           # wrong H, W
    (lambda: clip(2, 4)[0], ValueError, r"\[B, T=4, 3"),          # rank
    (lambda: clip(2, 4).to(torch.uint8), TypeError, r"float"),    # dtype
    (lambda: clip(2, 4).numpy(), TypeError, r"float tensor"),
])
def test_bad_video(cache_dir, bad, exc, match):
    model = make(cache_dir)
    with pytest.raises(exc, match=match):
        model(bad())


def test_bad_labels(cache_dir):
    model = make(cache_dir)
    x = clip(2, 4)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 6\)"):
        model(x, torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="labels must be in"):
        model(x, torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="int64"):
        model(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[B\] = \[2\]"):
        model(x, torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(class_names=[]), ValueError, "must not be empty"),
    (dict(class_names=["a", "b", "a"]), ValueError, "distinct"),
    (dict(class_names="abc"), TypeError, "list of strings"),
    (dict(class_names=["a", ""]), ValueError, "non-empty"),
    (dict(num_queries=7), ValueError, "num_queries"),
    (dict(k_region=17), ValueError, r"k_region.*N = 16"),
    (dict(k_region=0), ValueError, "k_region"),
    (dict(latent_dim=30), ValueError, "divisible"),
    (dict(bogus=1), TypeError, r"unknown options \['bogus'\]"),
    (dict(temporal_negatives="all"), ValueError, "temporal_negatives"),
    (dict(dropout=1.5), ValueError, "dropout"),
    (dict(backbone="ViT-Q-99"), ValueError, "open_clip model name"),
    (dict(pretrained="/no/such/file.pt"), FileNotFoundError, "not found"),
    (dict(pretrained="local-dir:/no/such/dir"), FileNotFoundError, "open_clip_config"),
])
def test_bad_construction(cache_dir, kwargs, exc, match):
    args = dict(SMALL, class_names=CLASSES, num_frames=4, text_cache_dir=cache_dir)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        ART(**args)


def test_local_checkpoint_file_is_loaded(tmp_path, cache_dir):
    """A checkpoint file: the weights come from it (and its digest keys the text cache)."""
    import open_clip

    from art_fast.model.backbone import TINY_NAME, build_clip

    build_clip("tiny", None, 32)  # registers the tiny config
    torch.manual_seed(123)
    src = open_clip.create_model(TINY_NAME, pretrained=None, force_image_size=32)
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": src.state_dict()}, path)
    model = make(cache_dir, pretrained=str(path))
    torch.testing.assert_close(model.backbone.visual.conv1.weight, src.visual.conv1.weight)
    assert model.spec.weights_id.startswith("file:")
    assert model.bank_cache_hit is False


def test_gradient_checkpointing_gives_the_same_gradients(cache_dir):
    x, y = clip(2, 4), torch.tensor([0, 3])
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = make(cache_dir, grad_checkpointing=ckpt)
        assert model.backbone.visual.transformer.grad_checkpointing is ckpt
        model(x, y).losses["total"].backward()
        grads.append(model.backbone.visual.conv1.weight.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)
