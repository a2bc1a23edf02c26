"""UniFormerV2 (Li et al., ICCV 2023): an open_clip ViT armed with local temporal relation
aggregators, a 3D patch embedding and a global video-token extractor — the video tower of the
ART paper's best rows. Design record: ``docs/uniformerv2.md``.

Structure (our own code, written after the public UniFormerV2 design; module names follow the
official release so that its checkpoints load through :func:`remap_official_state_dict`):

* ``visual``: the open_clip ``VisionTransformer`` itself, with two changes:

  - ``visual.conv1`` becomes a ``Conv3d`` with kernel ``(3, p, p)``, stride ``(2, p, p)`` and
    temporal padding 1, inflated from CLIP's 2D patch conv (the centre tap holds the 2D weight,
    the other two are zero). ``T`` input frames become ``T' = ceil(T / 2)`` temporal tokens; the
    j-th is centred on input frame ``2 j`` (:attr:`UniFormerV2Backbone.token_frames`).
  - every ``visual.transformer.resblocks[i]`` becomes a :class:`UniFormerV2Block`: the same
    ``ln_1 / attn / ls_1 / ln_2 / mlp / ls_2`` modules (the same parameters, not copies) plus
    two local temporal MHRAs (:class:`LocalMHRA`), added to the patch tokens' residual stream
    before the attention and before the MLP.

* ``dpe[j]`` / ``dec[j]``, j < n_layers: the global extractor. A learnable video token
  (``temporal_cls_token``) decodes, through one cross-attention layer (:class:`Extractor`) per
  block, the tokens of the last ``n_layers`` blocks; each block's patch tokens first get a
  depthwise 3x3x3 conv position encoding (DPE). The cross-attention is
  :func:`art_fast.ops.cross_attention` (one query over ``T' x (1 + N)`` tokens, many heads).
* ``balance``: x_cls = ``norm((1 - w) * video_token + w * mean_t(CLS_t))``, ``w =
  sigmoid(balance)`` per channel (zero init: w = 0.5), ``norm`` a LayerNorm (the official
  ``transformer.proj.0``; its dropout and linear classifier are ART's head).

Outputs (the :class:`~art_fast.model.backbone.VideoBackbone` interface, on T' steps): the patch
tokens after CLIP's ``ln_post`` ``[B, T', N, width]``, the per-step CLS after ``ln_post``
``[B, T', width]`` and x_cls ``[B, width]`` (``embed_dim == width``: CLIP's image projection
is not used and is removed).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..ops import cross_attention

log = logging.getLogger(__name__)

UNIFORMERV2_PREFIX = "uniformerv2-"
UNIFORMERV2_MODELS: dict[str, tuple[str, int]] = {
    # name: (open_clip model it is built on, extractor layers n_layers)
    "uniformerv2-b16": ("ViT-B-16-quickgelu", 4),
    "uniformerv2-l14": ("ViT-L-14-quickgelu", 4),
    "uniformerv2-tiny": ("art-fast-tiny", 2),
}
"""``model.backbone`` names of the UniFormerV2 towers. The official B/16 and L/14 are built on
OpenAI CLIP, whose blocks use QuickGELU: hence the ``-quickgelu`` open_clip configs (same
weights and keys as ``ViT-B-16`` / ``ViT-L-14``). ``-tiny`` is for tests and the demo."""

DEFAULT_DW_REDUCTION = 1.5
DEFAULT_EXTRACTOR_DROPOUT = 0.5


def is_uniformerv2(backbone: object) -> bool:
    """Whether ``backbone`` (a ``model.backbone`` value) names a UniFormerV2 tower."""
    return isinstance(backbone, str) and backbone.startswith(UNIFORMERV2_PREFIX)


def clip_name(backbone: str) -> str:
    """The open_clip model a UniFormerV2 ``backbone`` name is built on (ValueError if unknown)."""
    if backbone not in UNIFORMERV2_MODELS:
        raise ValueError(f"ART: backbone {backbone!r} is not a UniFormerV2 tower; known: "
                         f"{sorted(UNIFORMERV2_MODELS)}")
    return UNIFORMERV2_MODELS[backbone][0]


def num_steps(num_frames: int, temporal_downsample: bool = True) -> int:
    """T' = ceil(T / 2): temporal tokens of the (3, p, p) / stride (2, p, p) / pad (1, 0, 0)
    patch embedding for T input frames; T without the temporal downsampling."""
    return (num_frames - 1) // 2 + 1 if temporal_downsample else num_frames


class LocalMHRA(nn.Module):
    """Local temporal multi-head relation aggregator: BatchNorm3d, 1x1x1 conv down to
    ``int(width // dw_reduction)`` channels, depthwise (3, 1, 1) temporal conv, 1x1x1 conv up
    (zero init, so the block starts as the identity residual).

    ``forward(x [B, C, T', gh, gw]) -> [B, C, T', gh, gw]`` (the residual branch only).
    Module names (``pos_embed.0..3``) are the official ones.
    """

    def __init__(self, width: int, dw_reduction: float = DEFAULT_DW_REDUCTION,
                 kernel: int = 3) -> None:
        super().__init__()
        inner = int(width // dw_reduction)
        self.pos_embed = nn.Sequential(
            nn.BatchNorm3d(width),
            nn.Conv3d(width, inner, kernel_size=1),
            nn.Conv3d(inner, inner, kernel_size=(kernel, 1, 1), padding=(kernel // 2, 0, 0),
                      groups=inner),
            nn.Conv3d(inner, width, kernel_size=1),
        )
        nn.init.zeros_(self.pos_embed[3].weight)
        nn.init.zeros_(self.pos_embed[3].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_embed(x)


class UniFormerV2Block(nn.Module):
    """An open_clip ``ResidualAttentionBlock`` with local temporal MHRA before its attention and
    before its MLP. Built from the open_clip block's own modules (they are adopted, not copied:
    a CLIP-initialised tower keeps its weights).

    ``forward(x [G, 1 + N, C], steps)`` with ``G = B * T'`` (steps-minor), batch-first; the
    MHRA acts on the N patch tokens only (the CLS token is left out, as in the official code).
    With ``lmhra=False`` (the official ``no_lmhra`` layout of the Kinetics checkpoints) the
    block is the open_clip block.
    """

    def __init__(self, block: nn.Module, grid: tuple[int, int],
                 dw_reduction: float = DEFAULT_DW_REDUCTION, lmhra: bool = True) -> None:
        super().__init__()
        for name in ("ln_1", "attn", "ln_2", "mlp"):
            if not hasattr(block, name):
                raise TypeError(f"UniFormerV2Block: expected an open_clip ResidualAttentionBlock "
                                f"(with {name}), got {type(block).__name__}")
        self.ln_1, self.attn, self.ln_2, self.mlp = block.ln_1, block.attn, block.ln_2, block.mlp
        self.ls_1 = getattr(block, "ls_1", nn.Identity())
        self.ls_2 = getattr(block, "ls_2", nn.Identity())
        self.batch_first = bool(getattr(block.attn, "batch_first", False))
        width = block.ln_1.weight.shape[0]
        self.grid = tuple(grid)
        self.lmhra1 = LocalMHRA(width, dw_reduction) if lmhra else None
        self.lmhra2 = LocalMHRA(width, dw_reduction) if lmhra else None

    def _local(self, mhra: LocalMHRA, x: torch.Tensor, steps: int) -> torch.Tensor:
        G, L, C = x.shape
        gh, gw = self.grid
        p = x[:, 1:].reshape(G // steps, steps, gh, gw, C).permute(0, 4, 1, 2, 3)
        p = mhra(p).permute(0, 2, 3, 4, 1).reshape(G, L - 1, C)
        return torch.cat([x[:, :1], x[:, 1:] + p], dim=1)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
            return self.attn(x, x, x, need_weights=False)[0].transpose(0, 1)
        return self.attn(x, x, x, need_weights=False)[0]

    def forward(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        if self.lmhra1 is not None:
            x = self._local(self.lmhra1, x, steps)
        x = x + self.ls_1(self._attention(self.ln_1(x)))
        if self.lmhra2 is not None:
            x = self._local(self.lmhra2, x, steps)
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (CLIP's activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Extractor(nn.Module):
    """One layer of the global extractor: the video token ``x`` cross-attends to a block's
    tokens ``y``, then an MLP; pre-norm (``ln_1`` on x, ``ln_3`` on y, ``ln_2`` before the MLP),
    output projections zero-initialised (the layer starts as the identity).

    The projections live in an ``nn.MultiheadAttention`` (the official parameter names
    ``attn.in_proj_weight`` etc.); the attention itself is :func:`art_fast.ops.cross_attention`
    (1 query over the ``T' (1 + N)`` tokens, ``heads`` heads, scale ``head_dim ** -0.5``).

    ``forward(x [B, 1, C], y [B, L, C]) -> [B, 1, C]``.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.5,
                 act: type[nn.Module] = QuickGELU) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"Extractor: width ({width}) must be divisible by heads ({heads})")
        self.heads = heads
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1, self.ln_2, self.ln_3 = (nn.LayerNorm(width) for _ in range(3))
        hidden = round(mlp_ratio * width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)), ("gelu", act()), ("dropout", nn.Dropout(dropout)),
            ("c_proj", nn.Linear(hidden, width)),
        ]))
        nn.init.xavier_uniform_(self.attn.in_proj_weight)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)
        nn.init.xavier_uniform_(self.mlp.c_fc.weight)
        nn.init.zeros_(self.mlp.c_proj.weight)
        nn.init.zeros_(self.mlp.c_proj.bias)

    def attention(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x [B, 1, C]`` (normed query token), ``y [B, L, C]`` (normed tokens) ->
        ``[B, 1, C]``."""
        B, M, C = x.shape
        H, D = self.heads, C // self.heads
        w, b = self.attn.in_proj_weight, self.attn.in_proj_bias
        q = nn.functional.linear(x, w[:C], b[:C]).view(B, M, H, D).transpose(1, 2)
        kv = nn.functional.linear(y, w[C:], b[C:])  # [B, L, 2C]: one GEMM for k and v
        k, v = kv.view(B, -1, 2, H, D).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, L, D] each
        out = cross_attention(q, k, v, scale=D ** -0.5)  # [B, H, M, D]
        return self.attn.out_proj(out.transpose(1, 2).reshape(B, M, C))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x), self.ln_3(y))
        return x + self.mlp(self.ln_2(x))


def inflate_patch_embedding(conv2d: nn.Conv2d, kernel_t: int = 3) -> nn.Conv3d:
    """CLIP's 2D patch conv ``[C, 3, p, p]`` as a ``Conv3d`` with kernel ``(kernel_t, p, p)``,
    temporal stride 2 (``kernel_t == 3``, the temporal downsampling) or 1 (``kernel_t == 1``,
    frame-wise), temporal padding ``kernel_t // 2``; the centre temporal tap holds the 2D
    weight, the others are zero (so a clip of identical frames embeds as CLIP would)."""
    if kernel_t not in (1, 3):
        raise ValueError(f"inflate_patch_embedding: kernel_t must be 1 or 3, got {kernel_t!r}")
    w = conv2d.weight
    C, cin, ph, pw = w.shape
    stride_t = 2 if kernel_t == 3 else 1
    conv = nn.Conv3d(cin, C, (kernel_t, ph, pw), stride=(stride_t, *conv2d.stride),
                     padding=(kernel_t // 2, 0, 0), bias=conv2d.bias is not None)
    conv.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, kernel_t // 2] = w
        if conv2d.bias is not None:
            conv.bias.copy_(conv2d.bias)
    return conv


class UniFormerV2Backbone(nn.Module):
    """The UniFormerV2 video tower on an open_clip ViT (see the module docstring).

    Args:
        visual: an open_clip ``VisionTransformer`` (its ``conv1`` and blocks are replaced in
            place; CLIP weights it holds are kept and inflated).
        num_frames: T, input frames per clip (T' = ceil(T / 2) temporal tokens).
        n_layers: extractor layers; they read the last ``n_layers`` blocks (at most the depth).
        heads: extractor heads (None: the ViT's own head count).
        dw_reduction: LocalMHRA channel reduction (1.5 in the official models).
        dropout: the extractor MLPs' dropout (0.5 in the official models).
        grad_checkpointing: recompute every block in backward (saves activation memory; the
            LMHRA BatchNorm's running statistics are then updated twice per step).
        lmhra: local temporal MHRA in every block (True). False is the official ``no_lmhra``
            layout (the Kinetics-400/710 checkpoints): temporal modelling only in the extractor.
        temporal_downsample: the (3, p, p) / stride-2 patch embedding, T' = ceil(T / 2) (True);
            False: a (1, p, p) frame-wise one, T' = T (the Kinetics checkpoints' layout).

    Attributes: ``width``, ``embed_dim`` (= width), ``num_patches`` (N), ``num_steps`` (T'),
    ``token_frames`` (``[T']`` the input frame each temporal token is centred on).
    """

    def __init__(
        self, visual: nn.Module, num_frames: int, n_layers: int = 4, heads: int | None = None,
        dw_reduction: float = DEFAULT_DW_REDUCTION, dropout: float = DEFAULT_EXTRACTOR_DROPOUT,
        grad_checkpointing: bool = False, lmhra: bool = True, temporal_downsample: bool = True,
    ) -> None:
        super().__init__()
        if not hasattr(visual, "conv1") or not hasattr(visual, "transformer"):
            raise TypeError(f"ART: UniFormerV2 needs an open_clip ViT (VisionTransformer), got "
                            f"{type(visual).__name__}")
        if getattr(visual, "attn_pool", None) is not None:
            raise TypeError("ART: UniFormerV2 needs an open_clip ViT without attentional pooling")
        if not isinstance(visual.patch_dropout, nn.Identity):
            raise ValueError("ART: UniFormerV2 needs an open_clip ViT without patch dropout")
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"ART: num_frames must be an int >= 1, got {num_frames!r}")
        blocks = visual.transformer.resblocks
        depth = len(blocks)
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers:
            raise ValueError(f"ART: UniFormerV2 n_layers must be an int >= 1, got {n_layers!r}")
        n_layers = min(n_layers, depth)
        width = visual.transformer.width
        heads = heads or blocks[0].attn.num_heads
        self.grid = tuple(visual.grid_size)
        self.num_frames = num_frames
        self.lmhra, self.temporal_downsample = bool(lmhra), bool(temporal_downsample)
        self.num_steps = num_steps(num_frames, self.temporal_downsample)
        stride = 2 if self.temporal_downsample else 1
        self.register_buffer("token_frames", torch.arange(self.num_steps) * stride,
                             persistent=False)
        visual.conv1 = inflate_patch_embedding(visual.conv1, 3 if self.temporal_downsample else 1)
        visual.transformer.resblocks = nn.ModuleList(
            UniFormerV2Block(b, self.grid, dw_reduction, self.lmhra) for b in blocks)
        visual.proj = None  # x_cls is the normed fused token, in the tower's width
        act = type(blocks[0].mlp.gelu) if hasattr(blocks[0].mlp, "gelu") else QuickGELU
        self.visual = visual
        self.return_from = depth - n_layers  # blocks return_from .. depth-1 feed the extractor
        self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.dpe = nn.ModuleList(
            nn.Conv3d(width, width, 3, padding=1, groups=width) for _ in range(n_layers))
        for m in self.dpe:
            nn.init.zeros_(m.bias)
        self.dec = nn.ModuleList(
            Extractor(width, heads, dropout=dropout, act=act) for _ in range(n_layers))
        self.balance = nn.Parameter(torch.zeros(width))
        self.norm = nn.LayerNorm(width)
        self.width = self.embed_dim = width
        self.num_patches = self.grid[0] * self.grid[1]
        self.grad_checkpointing = bool(grad_checkpointing)

    def _embed(self, video: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.conv1(video.transpose(1, 2))  # [B, C, T', gh, gw]
        B, C = x.shape[:2]
        x = x.permute(0, 2, 3, 4, 1).reshape(B * self.num_steps, -1, C)  # [G, N, C]
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, C)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.ln_pre(x)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args: video ``[B, T, 3, H, W]`` float.

        Returns:
            tokens ``[B, T', N, width]`` (patch tokens after ``ln_post``), frames ``[B, T',
            width]`` (each step's CLS after ``ln_post``), x_cls ``[B, width]``.
        """
        B, T = video.shape[:2]
        if T != self.num_frames:
            raise ValueError(f"ART: UniFormerV2 was built for T = {self.num_frames} frames, "
                             f"got video {tuple(video.shape)}")
        S, (gh, gw) = self.num_steps, self.grid
        x = self._embed(video)  # [B*T', 1+N, C]
        G, L, C = x.shape
        token = self.temporal_cls_token.to(x.dtype).expand(B, 1, C)
        for i, blk in enumerate(self.visual.transformer.resblocks):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, S, use_reentrant=False)
            else:
                x = blk(x, S)
            j = i - self.return_from
            if j < 0:
                continue
            # DPE on this block's patch tokens (CLS untouched), then one extractor layer
            y = x.view(B, S, L, C)
            p = y[:, :, 1:].permute(0, 3, 1, 2).reshape(B, C, S, gh, gw)
            p = self.dpe[j](p).reshape(B, C, S, L - 1).permute(0, 2, 3, 1)
            y = torch.cat([y[:, :, :1], y[:, :, 1:] + p], dim=2).reshape(B, S * L, C)
            token = self.dec[j](token, y)
        w = torch.sigmoid(self.balance).to(x.dtype)
        cls_mean = x.view(B, S, L, C)[:, :, 0].mean(1)
        x_cls = self.norm((1 - w) * token[:, 0] + w * cls_mean)
        out = self.visual.ln_post(x).view(B, S, L, C)
        return out[:, :, 1:], out[:, :, 0], x_cls


# --------------------------------------------------------------------- official checkpoints
OFFICIAL_SKIPPED = ("transformer.proj.2.weight", "transformer.proj.2.bias")
"""Official keys that are not loaded: the video classifier (K400 / K710 / ... classes). ART's
heads are its own."""

OFFICIAL_NOT_PROVIDED = ("visual.ln_post.weight", "visual.ln_post.bias")
"""Our keys an official checkpoint does not hold: CLIP's final norm, which ART applies to the
patch tokens it reads (the official model uses only the fused token). They keep the values
they had (CLIP's, with ``text_pretrained``/CLIP weights, else the init)."""

_STRIP_PREFIXES = ("module.", "backbone.")


def _official_key(key: str) -> str | None:
    """Official key (prefixes stripped) -> our key, or None for a skipped key."""
    if key in OFFICIAL_SKIPPED:
        return None
    if key.startswith("transformer.resblocks."):
        return "visual." + key
    for head in ("conv1.", "class_embedding", "positional_embedding", "ln_pre."):
        if key.startswith(head):
            return "visual." + key
    if key.startswith("transformer.proj.0."):
        return "norm." + key[len("transformer.proj.0."):]
    for head in ("transformer.dpe.", "transformer.dec.", "transformer.temporal_cls_token",
                 "transformer.balance"):
        if key.startswith(head):
            return key[len("transformer."):]
    return key  # unknown: reported as unexpected


def remap_official_state_dict(state: Mapping[str, torch.Tensor]
                              ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an official UniFormerV2 state dict to :class:`UniFormerV2Backbone`'s keys.

    Accepted: the raw ``state_dict`` of the official ``Uniformerv2`` model (keys
    ``backbone.conv1.weight``, ``backbone.transformer.resblocks.0.lmhra1.pos_embed.0.weight``,
    ...), with or without ``backbone.`` / DDP ``module.`` prefixes, or a dict holding it under
    ``model_state``, ``state_dict`` or ``model``.

    Mapping (official -> ours): ``conv1 / class_embedding / positional_embedding / ln_pre /
    transformer.resblocks.*`` -> ``visual.*`` (block internals keep their names:
    ``lmhra1.pos_embed.{0..3}``, ``attn.*``, ``ln_1``, ``mlp.c_fc``, ``mlp.c_proj``, ``ln_2``);
    ``transformer.{dpe, dec, temporal_cls_token, balance}`` -> ``{dpe, dec, ...}``;
    ``transformer.proj.0`` (the final LayerNorm) -> ``norm``; ``transformer.proj.2`` (the
    classifier) is skipped (:data:`OFFICIAL_SKIPPED`).

    Returns:
        ``(state, skipped)``: the renamed tensors and the official keys left out.
    """
    for wrapper in ("model_state", "state_dict", "model"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
            break
    out: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in state.items():
        k = key
        for pre in _STRIP_PREFIXES:
            if k.startswith(pre):
                k = k[len(pre):]
        ours = _official_key(k)
        if ours is None:
            skipped.append(key)
            continue
        if ours in out:
            raise ValueError(f"UniFormerV2 checkpoint: keys {key!r} and another map to the same "
                             f"{ours!r}")
        out[ours] = value
    return out, skipped


def looks_official(state: Mapping[str, object]) -> bool:
    """Whether a loaded checkpoint is an official UniFormerV2 one (it has the extractor's
    ``transformer.dec.*`` and ``transformer.temporal_cls_token`` keys; LMHRA keys are optional:
    the Kinetics files have none), as opposed to a CLIP image checkpoint."""
    for wrapper in ("model_state", "state_dict", "model"):
        if wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
            break
    keys = [k for k in state if isinstance(k, str)]
    return (any("transformer.dec." in k for k in keys)
            and any(k.endswith("transformer.temporal_cls_token") for k in keys))


def _layout(keys: object, conv1: torch.Tensor | None) -> tuple[bool, bool | None]:
    """(has LMHRA, temporal downsampling or None if unknown) of a state dict in our names."""
    lmhra = any(".lmhra1." in k for k in keys)
    down = None if conv1 is None or conv1.dim() != 5 else conv1.shape[2] == 3
    return lmhra, down


def _layout_hint(mapped: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> str:
    """A sentence naming the options to set when the checkpoint's layout is not ours."""
    theirs = _layout(mapped, mapped.get("visual.conv1.weight"))
    ours = _layout(own, own.get("visual.conv1.weight"))
    if theirs == ours or theirs[1] is None:
        return ""
    return (f"the checkpoint has lmhra={str(theirs[0]).lower()}, temporal_downsample="
            f"{str(theirs[1]).lower()} (the official Kinetics-400/710 files: no local MHRA and a "
            f"frame-wise patch embedding), this model lmhra={str(ours[0]).lower()}, "
            f"temporal_downsample={str(ours[1]).lower()}: set model.lmhra={str(theirs[0]).lower()}"
            f" and model.temporal_downsample={str(theirs[1]).lower()}. ")


def read_checkpoint(path: str | Path) -> Mapping[str, object]:
    """``torch.load`` of a checkpoint file on the CPU (weights only), with a clear error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a clear line, not pickle internals
        raise ValueError(f"ART: could not read checkpoint {str(path)!r}: {e}") from e


def load_official(backbone: UniFormerV2Backbone, state: Mapping[str, object]) -> dict:
    """Load an official UniFormerV2 checkpoint (already read) into ``backbone``.

    Every tensor must match our shape (a mismatch raises ValueError naming the key, ours and
    its shape: e.g. a checkpoint for another image size, or L/14 weights into B/16). Missing
    keys other than :data:`OFFICIAL_NOT_PROVIDED` and unexpected keys other than
    :data:`OFFICIAL_SKIPPED` raise ValueError listing them.

    Returns:
        ``{"loaded": n, "skipped": [...], "not_provided": [...]}``.
    """
    mapped, skipped = remap_official_state_dict(state)
    own = backbone.state_dict()
    hint = _layout_hint(mapped, own)
    if hint:
        raise ValueError(f"ART: the UniFormerV2 checkpoint does not fit this backbone: {hint}")
    unexpected = sorted(k for k in mapped if k not in own)
    missing = sorted(k for k in own if k not in mapped and k not in OFFICIAL_NOT_PROVIDED)
    if unexpected or missing:
        raise ValueError(
            "ART: the UniFormerV2 checkpoint does not fit this backbone: "
            + (f"unexpected keys (after the remap) {unexpected[:8]}"
               + (f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else "")
               if unexpected else "")
            + ("; " if unexpected and missing else "")
            + (f"missing keys {missing[:8]}"
               + (f" and {len(missing) - 8} more" if len(missing) > 8 else "") if missing else "")
        )
    for k, v in mapped.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"ART: UniFormerV2 checkpoint key {k!r} is not a tensor")
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"ART: UniFormerV2 checkpoint key {k!r} has shape {tuple(v.shape)}, "
                             f"this backbone expects {tuple(own[k].shape)}")
        if v.is_floating_point() and not math.isfinite(float(v.float().abs().sum())):
            raise ValueError(f"ART: UniFormerV2 checkpoint key {k!r} holds non-finite values")
    backbone.load_state_dict(mapped, strict=False)
    not_provided = [k for k in OFFICIAL_NOT_PROVIDED if k in own and k not in mapped]
    log.info("UniFormerV2 checkpoint: %d tensors loaded, skipped %s, not provided %s",
             len(mapped), skipped, not_provided)
    return {"loaded": len(mapped), "skipped": skipped, "not_provided": not_provided}
