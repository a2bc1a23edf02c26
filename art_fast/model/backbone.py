"""The open_clip backbone (DESIGN §4.1): per-frame patch tokens and pooled features from an
open_clip vision tower, and a temporal module that gives the video token x_cls.

Also the one place that builds open_clip models, so the text bank encodes with the text tower
of exactly the model whose vision tower we keep.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..nn.transformer import PreLNBlock

TINY_ALIAS = "tiny"
TINY_NAME = "art-fast-tiny"
_CONFIG_DIR = Path(__file__).with_name("configs")
_CKPT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_registered = False


def _open_clip():
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - open_clip is a pinned requirement
        raise ImportError("art_fast.ART needs open_clip_torch (pip install open_clip_torch)") from e
    global _registered
    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR / f"{TINY_NAME}.json")
        _registered = True
    return open_clip


@dataclass(frozen=True)
class CLIPSpec:
    """What was built: the open_clip model name, where its weights came from, and a stable
    identity of those weights (used in the text-bank cache key)."""

    name: str
    pretrained: str | None
    weights_id: str


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:32]


def build_clip(
    backbone: str, pretrained: str | None, image_size: int, seed: int = 0
) -> tuple[nn.Module, object, CLIPSpec]:
    """Build an open_clip CLIP model (both towers) and its tokenizer.

    Args:
        backbone: an open_clip model name (``open_clip.list_models()``) or ``"tiny"``.
        pretrained: None (random init, offline), an open_clip pretrained tag (needs the
            network), a local checkpoint file, or ``"local-dir:<folder>"`` (an open_clip model
            folder with ``open_clip_config.json``; its config then names the model and
            ``backbone`` is ignored).
        image_size: the vision tower's input size (its position embeddings are built for it).
        seed: random init uses this seed (RNG state restored afterwards), so a random tower,
            and the text bank it encodes, is the same in every process and every run.

    Returns:
        ``(clip_model, tokenizer, spec)``.
    """
    open_clip = _open_clip()
    if not isinstance(backbone, str) or not backbone:
        raise TypeError(f"ART: backbone must be an open_clip model name, got {backbone!r}")
    name = TINY_NAME if backbone == TINY_ALIAS else backbone
    kwargs = {"force_image_size": image_size}
    if pretrained is not None and not isinstance(pretrained, str):
        raise TypeError(
            f"ART: pretrained must be None, an open_clip tag, a checkpoint path or "
            f"'local-dir:<folder>', got {pretrained!r}"
        )
    if pretrained and pretrained.startswith("local-dir:"):
        folder = Path(pretrained[len("local-dir:"):])
        cfg = folder / "open_clip_config.json"
        if not cfg.is_file():
            raise FileNotFoundError(f"ART: pretrained={pretrained!r}: no {cfg}")
        digest = hashlib.sha256()
        for f in sorted(folder.iterdir()):
            if f.is_file():
                digest.update(f.name.encode() + _file_digest(f).encode())
        weights_id = f"local-dir:{digest.hexdigest()[:32]}"
        json.loads(cfg.read_text())  # a clear error here beats one deep inside open_clip
        model = open_clip.create_model(pretrained, **kwargs)
        name = pretrained
    else:
        if name not in open_clip.list_models():
            raise ValueError(
                f"ART: backbone {backbone!r} is not an open_clip model name (see "
                f"open_clip.list_models()) nor {TINY_ALIAS!r}"
            )
        if pretrained is None:
            # the random weights depend on the seed and on the whole architecture
            cfg = json.dumps(open_clip.get_model_config(name), sort_keys=True)
            weights_id = (f"random-init:seed={seed}:image_size={image_size}:"
                          f"{hashlib.sha256(cfg.encode()).hexdigest()[:16]}")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = open_clip.create_model(name, pretrained=None, **kwargs)
        else:
            path = Path(os.path.expanduser(pretrained))
            if path.is_file():
                weights_id = f"file:{_file_digest(path)}"
                pretrained = str(path)
            elif os.sep in pretrained or pretrained.endswith(_CKPT_SUFFIXES):
                raise FileNotFoundError(f"ART: pretrained checkpoint {pretrained!r} not found")
            else:
                weights_id = f"tag:{pretrained}"
            model = open_clip.create_model(name, pretrained=pretrained, **kwargs)
    tokenizer = open_clip.get_tokenizer(name)
    return model, tokenizer, CLIPSpec(name, pretrained, weights_id)


class TemporalModule(nn.Module):
    """(ours) A small transformer over per-frame pooled features with learned temporal position
    embeddings and a video token; its output at the video token is x_cls.

    ``pos_std``: the initial scale of the position embeddings (ViT's 0.02 by default). The
    frame features they are added to have a per-channel spread of order 1, so at 0.02 the
    module starts nearly blind to the frames' order.

    ``forward(frames [B, T, E]) -> x_cls [B, E]``.
    """

    def __init__(self, dim: int, num_frames: int, layers: int = 1, heads: int | None = None,
                 pos_std: float = 0.02):
        super().__init__()
        heads = heads or max(1, dim // 64)
        self.video_token = nn.Parameter(torch.zeros(dim))
        self.pos_embedding = nn.Parameter(torch.randn(num_frames + 1, dim) * pos_std)
        self.blocks = nn.ModuleList(PreLNBlock(dim, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        B = frames.shape[0]
        x = torch.cat([self.video_token.expand(B, 1, -1).to(frames.dtype), frames], dim=1)
        x = x + self.pos_embedding.to(x.dtype)
        for blk in self.blocks:
            x = blk(x)
        return self.ln(x[:, 0])


def segment_spans(num_frames: int, segments: int) -> torch.Tensor:
    """``[segments, num_frames]`` float32 0/1: row s marks the frames of the s-th of
    ``segments`` consecutive, equal-as-possible spans (span s covers frames
    ``[bounds[s], bounds[s + 1])``, ``bounds = round(linspace(0, T, S + 1))``; every frame is in
    exactly one span). Needs 1 <= segments <= num_frames. Shared by
    :class:`SegmentTemporalModule` and the segmented tracklet aggregation
    (:func:`art_fast.model.tracklets.aggregate_tracklets`), so both split time the same way."""
    if not 1 <= segments <= num_frames:
        raise ValueError(f"segment_spans: segments must be in [1, num_frames = {num_frames}], "
                         f"got {segments}")
    bounds = torch.linspace(0, num_frames, segments + 1).round().long()
    owner = torch.zeros(segments, num_frames)
    for i in range(segments):
        owner[i, bounds[i]:bounds[i + 1]] = 1.0
    return owner


class SegmentTemporalModule(nn.Module):
    """(ours, option ``temporal_module="segments"``) An ordered read-out of the per-frame
    features: a temporal conv (kernel 3, no bias) -> BatchNorm -> ReLU over the T frames,
    then the means over ``segments`` consecutive, equal-as-possible spans of the frames
    (TSN's segments, kept in order instead of averaged), concatenated, a linear map to E and
    a LayerNorm. The transformer :class:`TemporalModule` starts blind to the frames' order
    (its position embeddings are small against the features) and, on the binding set, did not
    leave chance in the budget where this read-out does (docs/binding.md, 5.2): a class
    that is "X then Y" needs the order, which the segment means give from the first step.

    ``forward(frames [B, T, E]) -> x_cls [B, E]``; ``segments`` in [1, T].
    """

    def __init__(self, dim: int, num_frames: int, segments: int = 2):
        super().__init__()
        if isinstance(segments, bool) or not isinstance(segments, int) \
                or not 1 <= segments <= num_frames:
            raise ValueError(f"ART: temporal_segments must be an int in [1, num_frames = "
                             f"{num_frames}], got {segments!r}")
        self.segments = segments
        # BatchNorm before the ReLU: without it the conv's units died within the first epoch
        # in the binding probe this read-out comes from (benchmarks/binding_probe.py)
        self.conv = nn.Sequential(nn.Conv1d(dim, dim, 3, padding=1, bias=False),
                                  nn.BatchNorm1d(dim), nn.ReLU())
        self.proj = nn.Linear(segments * dim, dim)
        self.ln = nn.LayerNorm(dim)
        owner = segment_spans(num_frames, segments)
        owner = owner / owner.sum(1, keepdim=True)
        self.register_buffer("weights", owner, persistent=False)  # [S, T]: segment means

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        g = self.conv(frames.transpose(1, 2))                       # [B, E, T]
        seg = torch.einsum("bet,st->bse", g, self.weights.to(g.dtype))  # [B, S, E]
        return self.ln(self.proj(seg.flatten(1)))


TEMPORAL_MODULES = ("transformer", "segments")


def temporal_shift(x: torch.Tensor, num_frames: int, fraction: float,
                   batch_first: bool = True) -> torch.Tensor:
    """(ours) TSM's temporal shift (Lin et al., ICCV 2019) on a ViT's token sequence.

    Of the C channels, the first ``c = int(C * fraction / 2)`` of frame t are replaced by those of
    frame t-1 and the next c by those of frame t+1 (zeros past the clip's ends); the rest are
    unchanged. With T = 1 there is no neighbour to mix in and ``x`` is returned as it is. No
    parameters, no FLOPs: one copy.

    Args:
        x: ``[B*T, L, C]`` (``batch_first``) or ``[L, B*T, C]``, frames t-minor (G = B*T).
        num_frames: T. fraction: in [0, 1], the share of channels that move (TSM: 1/4).

    Returns:
        a tensor of ``x``'s shape and dtype.
    """
    C = x.shape[-1]
    c = int(C * fraction / 2)
    if c == 0 or num_frames == 1:
        return x
    if not batch_first:
        return temporal_shift(x.transpose(0, 1), num_frames, fraction).transpose(0, 1)
    G, L = x.shape[:2]
    v = x.view(G // num_frames, num_frames, L, C)
    from_prev = nn.functional.pad(v[:, :-1, :, :c], (0, 0, 0, 0, 1, 0))  # frame t <- t-1
    from_next = nn.functional.pad(v[:, 1:, :, c:2 * c], (0, 0, 0, 0, 0, 1))  # frame t <- t+1
    return torch.cat([from_prev, from_next, v[..., 2 * c:]], dim=-1).view(G, L, C)


def _shift_hook(num_frames: int, fraction: float, batch_first: bool):
    """A forward pre-hook that applies :func:`temporal_shift` to a module's first input."""

    def hook(_module: nn.Module, args: tuple) -> tuple:
        return (temporal_shift(args[0], num_frames, fraction, batch_first), *args[1:])

    return hook


STEMS = ("patch", "conv3d")


def check_layer_scale(value: object, what: str = "ART: layer_scale") -> None:
    """Raise ValueError unless ``value`` is None or a finite number > 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not value > 0:
        raise ValueError(f"{what} must be null (no LayerScale) or a finite number > 0, "
                         f"got {value!r}")


def add_layer_scale(transformer: nn.Module, init: float) -> None:
    """Give every block of an open_clip ``Transformer`` a LayerScale on both residual branches
    (``x + ls_1(attn(ln_1(x)))``, ``x + ls_2(mlp(ln_2(x)))``), each a learned ``[width]`` scale
    initialised to ``init`` (open_clip's own ``LayerScale``, as ``ls_init_value`` builds it).

    Raises ValueError if a block already has one (its config's ``ls_init_value``) or is not an
    open_clip residual block."""
    check_layer_scale(init)
    from open_clip.transformer import LayerScale

    for i, blk in enumerate(transformer.resblocks):
        for name in ("ls_1", "ls_2"):
            cur = getattr(blk, name, None)
            if not isinstance(cur, nn.Identity):
                raise ValueError(
                    f"ART: layer_scale: block {i} of the tower has no free {name} (it already "
                    f"has LayerScale, or is not an open_clip ResidualAttentionBlock: "
                    f"{type(cur).__name__})")
            setattr(blk, name, LayerScale(transformer.width, float(init)))
TOKEN_NORMS = ("post", "pre")
FRAME_POOLS = ("cls", "max")


def conv3d_blocks(c: int) -> nn.Sequential:
    """Three 3x3x3 conv (no bias) -> BatchNorm -> ReLU blocks of ``c``, ``2c``, ``2c`` channels
    with a 2x2 spatial max-pool after the first two: ``[B, 3, T, H, W] -> [B, 2c, T, H/4, W/4]``
    (time and size kept by the padding). The body of :class:`Conv3dStem` and of the binding
    probe's 3D CNN (``benchmarks/binding_probe.py``)."""

    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv3d(i, o, 3, padding=1, bias=False), nn.BatchNorm3d(o), nn.ReLU()]

    return nn.Sequential(*block(3, c), nn.MaxPool3d((1, 2, 2)), *block(c, 2 * c),
                         nn.MaxPool3d((1, 2, 2)), *block(2 * c, 2 * c))


class Conv3dStem(nn.Module):
    """(ours, option ``stem="conv3d"``) A small spatio-temporal convolutional stem in place of
    the ViT's linear patch embedding: three 3x3x3 conv -> BatchNorm -> ReLU blocks (``hidden``
    = c, 2c, 2c channels) with a 2x2 spatial max-pool after the first two, then a
    ``patch / 4`` spatial max-pool down to the patch grid and, only if 2c differs from the
    tower's width, a 1x1 linear projection to it. The output has the patch embedding's shape,
    one token per patch and frame, but every token is the maximum of ReLU features that have
    seen their neighbourhood at full resolution and 7 adjacent frames: a from-scratch tower can
    then represent small moving parts (a 2-px limb at 64 px) that a linear 8-px patch embedding
    does not pick up. The blocks are the body of the 3D-CNN probe that learns the binding set
    from scratch (``benchmarks/binding_probe.py``, ``Probe3D``), so the spatial max over a
    frame's tokens is that probe's feature; a two-block stem ending in a linear strided conv
    fitted its training clips without generalising (docs/binding.md).

    ``forward(video [B, T, 3, H, W])`` returns ``[B*T, width, H / patch, W / patch]``.
    """

    def __init__(self, width: int, patch: int, hidden: int = 32) -> None:
        super().__init__()
        if patch % 4:
            raise ValueError(f"ART: stem='conv3d' needs a patch size divisible by 4, got {patch}")
        c, q = hidden, patch // 4
        self.body = nn.Sequential(*conv3d_blocks(c), nn.MaxPool3d((1, q, q)))
        self.proj = nn.Identity() if 2 * c == width else nn.Conv3d(2 * c, width, 1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.body(video.transpose(1, 2)))  # [B, width, T, gh, gw]
        return x.transpose(1, 2).flatten(0, 1)


class VideoBackbone(nn.Module):
    """An open_clip vision tower applied to every frame, plus the temporal module.

    Args:
        visual: the open_clip vision tower (a ``VisionTransformer``).
        num_frames: T (the temporal position embeddings are sized for it).
        temporal_layers: blocks in the temporal module.
        grad_checkpointing: recompute the tower's blocks in backward to save memory.
        temporal_shift: (ours) share of channels in [0, 1] that :func:`temporal_shift` moves
            across frames at the input of every block's attention (TSM's residual shift; the
            skip path is unshifted). 0 keeps the tower purely per-frame. A per-frame tower sees
            motion only through the temporal module, after pooling; with the shift every patch
            token holds its neighbours in time, so motion becomes a local feature (the role the
            paper's motion-aware TEA/UniFormerV2 backbones play). The parameters and the
            state_dict are the same either way.
        stem: (ours) ``"patch"`` (the ViT's linear patch embedding) or ``"conv3d"``
            (:class:`Conv3dStem`).
        token_norm: (ours) which patch tokens the tracklet branch reads: ``"post"`` (after the
            tower's final LayerNorm ``ln_post``, open_clip's output) or ``"pre"`` (the blocks'
            residual stream before it). ``ln_post`` normalises every token over its channels,
            so a token's magnitude (how strongly its patch responds, which a spatial max or a
            top-k selection compares across patches) is gone after it.
        frame_pool: (ours) the per-frame feature: ``"cls"`` (the class token, open_clip's
            pooling) or ``"max"`` (the channel-wise maximum over the frame's patch tokens,
            before ``ln_post``); either then goes through ``ln_post`` and the projection.
        temporal_module: (ours) the read-out of the frame features into x_cls:
            ``"transformer"`` (:class:`TemporalModule`, ``temporal_layers`` blocks) or
            ``"segments"`` (:class:`SegmentTemporalModule`, ``temporal_segments`` spans).
        layer_scale: (ours) None (the tower as open_clip builds it) or a number > 0: every
            block's two residual branches get a learned per-channel scale initialised to it
            (LayerScale, as in CaiT and DeiT III; open_clip's ``ls_init_value``), so a block
            starts close to the identity and a from-scratch tower first passes its input
            tokens (e.g. the conv3d stem's) on nearly unchanged. Meant for random-init towers:
            it also scales a pretrained tower's branches. A tower that already has LayerScale
            refuses it. Adds ``ls_1.gamma`` / ``ls_2.gamma`` ``[width]`` to every block.
        The non-default token_norm / frame_pool settings need an open_clip tower that pools
        its class token after ``ln_post`` (no attention pooling, ``pool_type="tok"``: every
        ViT here); the parameters and the state_dict do not change with them.

    Attributes: ``width`` (patch token width), ``embed_dim`` (pooled feature width),
    ``num_patches`` (N), ``num_steps`` (= T: one token set per frame), ``token_frames``
    (``[T]``, the frame of each step: 0..T-1).
    """

    def __init__(
        self, visual: nn.Module, num_frames: int, temporal_layers: int = 1,
        grad_checkpointing: bool = False, temporal_shift: float = 0.0, stem: str = "patch",
        token_norm: str = "post", frame_pool: str = "cls", temporal_module: str = "transformer",
        temporal_segments: int = 2, layer_scale: float | None = None,
    ) -> None:
        super().__init__()
        if not hasattr(visual, "output_tokens") or not hasattr(visual, "conv1"):
            raise TypeError(
                f"ART: the backbone must be an open_clip ViT (VisionTransformer), got "
                f"{type(visual).__name__}"
            )
        visual.output_tokens = True
        if grad_checkpointing:
            visual.set_grad_checkpointing(True)
        self.visual = visual
        self.width = visual.transformer.width
        self.embed_dim = visual.output_dim
        gh, gw = visual.grid_size
        self.num_patches = gh * gw
        self.num_steps = num_frames
        self.register_buffer("token_frames", torch.arange(num_frames), persistent=False)
        if stem not in STEMS:
            raise ValueError(f"ART: stem must be one of {STEMS}, got {stem!r}")
        self.stem: Conv3dStem | None = None
        if stem == "conv3d":
            patch = visual.conv1.kernel_size[0]
            self.stem = Conv3dStem(self.width, patch)
            visual.conv1 = nn.Identity()  # the tower now starts from the stem's tokens
        if token_norm not in TOKEN_NORMS:
            raise ValueError(f"ART: token_norm must be one of {TOKEN_NORMS}, got {token_norm!r}")
        if frame_pool not in FRAME_POOLS:
            raise ValueError(f"ART: frame_pool must be one of {FRAME_POOLS}, got {frame_pool!r}")
        self.token_norm, self.frame_pool = token_norm, frame_pool
        self._own_pool = (token_norm, frame_pool) != ("post", "cls")
        if self._own_pool and (getattr(visual, "attn_pool", None) is not None
                               or getattr(visual, "pool_type", "tok") != "tok"
                               or getattr(visual, "final_ln_after_pool", False)):
            raise ValueError("ART: token_norm='pre' / frame_pool='max' need a ViT that pools its "
                             "class token after ln_post (no attention pooling, pool_type 'tok')")
        if temporal_module not in TEMPORAL_MODULES:
            raise ValueError(f"ART: temporal_module must be one of {TEMPORAL_MODULES}, got "
                             f"{temporal_module!r}")
        self.temporal: TemporalModule | SegmentTemporalModule = (
            TemporalModule(self.embed_dim, num_frames, temporal_layers)
            if temporal_module == "transformer"
            else SegmentTemporalModule(self.embed_dim, num_frames, temporal_segments))
        if layer_scale is not None:
            add_layer_scale(visual.transformer, layer_scale)
        if not 0.0 <= temporal_shift <= 1.0:
            raise ValueError(f"ART: temporal_shift must be in [0, 1], got {temporal_shift!r}")
        self.temporal_shift = float(temporal_shift)
        if self.temporal_shift > 0:
            batch_first = getattr(visual.transformer, "batch_first", True)
            for blk in visual.transformer.resblocks:
                # ln_1 normalises exactly the attention branch's input (open_clip
                # ResidualAttentionBlock: x = q_x + attn(ln_1(q_x))), so shifting its input
                # leaves the residual path per-frame.
                blk.ln_1.register_forward_pre_hook(
                    _shift_hook(num_frames, self.temporal_shift, batch_first))

    def project_frames(self, x: torch.Tensor) -> torch.Tensor:
        """A pooled token ``[..., width]`` -> the frame feature ``[..., embed_dim]``: the
        tower's ``ln_post``, then its projection (as open_clip pools its class token)."""
        vis = self.visual
        x = vis.ln_post(x)
        return x @ vis.proj if vis.proj is not None else x

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: video ``[B, T, 3, H, W]`` float.

        Returns:
            tokens ``[B, T, N, width]`` (patch tokens, after the tower's final norm unless
            ``token_norm="pre"``), frames ``[B, T, embed_dim]`` (pooled, projected per-frame
            features), x_cls ``[B, embed_dim]``.
        """
        B, T = video.shape[:2]
        x = video.flatten(0, 1) if self.stem is None else self.stem(video)
        if self._own_pool:
            # open_clip's VisionTransformer.forward, split where the options differ
            vis = self.visual
            stream = vis.transformer(vis._embeds(x))                # [G, 1 + N, width]
            patches = stream[:, 1:]
            pooled = self.project_frames(
                patches.amax(1) if self.frame_pool == "max" else stream[:, 0])
            tokens = patches if self.token_norm == "pre" else vis.ln_post(patches)
        else:
            pooled, tokens = self.visual(x)
        tokens = tokens.reshape(B, T, *tokens.shape[1:])
        frames = pooled.reshape(B, T, -1)
        return tokens, frames, self.temporal(frames)
