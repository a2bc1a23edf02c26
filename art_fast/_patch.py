"""``art_fast.patch(model)``: art_fast's cross-attention inside models art_fast did not build
(this module is ``art_fast._patch``; the package exports :func:`patch` and :func:`unpatch`).

Many video and vision-language models compute a *cross*-attention with
``nn.MultiheadAttention``: a few queries from one sequence attend over many keys/values from
another. The X-CLIP and UniFormerV2 video decoders do (a class/video token over every frame's
patch tokens), and so does open_clip's ``AttentionalPooler`` (CoCa: learned queries over the
image tokens). That is the shape :func:`art_fast.cross_attention` is built for.

:func:`patch` walks a model and, on every ``nn.MultiheadAttention`` it finds, replaces the
instance's ``forward`` (not the module: the class, the parameter names and the ``state_dict``
keys stay as they were, so checkpoints load either way). At each call the patched forward
decides:

1. **Recognised** (computed by art_fast): a batched call (3-D inputs) whose query is not the
   key tensor (a cross-attention; ``query is key`` is a self-attention, left alone), without
   ``attn_mask``, ``key_padding_mask`` or ``is_causal``, on a module without ``bias_k`` /
   ``bias_v`` / ``add_zero_attn``, with no attention dropout in effect (``dropout == 0`` or
   eval mode), floating dtypes. Then: the module's own input projections (one GEMM for k and v
   when ``key is value`` and the embedding sizes agree), heads split to ``[B, H, M, D]`` /
   ``[B, H, N, D]``, :func:`art_fast.cross_attention` with scale ``D ** -0.5`` (the module's),
   the module's ``out_proj``; the attention weights, when asked for (``need_weights``, the
   default of ``nn.MultiheadAttention``), come from the op's ``return_weights`` and are averaged
   over heads unless ``average_attn_weights=False``, as the module returns them.
2. **Anything else** goes to the original ``forward``, unchanged.

Outputs and gradients agree with the unpatched module to floating-point rounding (the op sums
in another order; tests/test_patch.py compares both, fp32 and fp64, both ``batch_first``
layouts, ``kdim``/``vdim``, weights on and off). :func:`unpatch` restores the original
forwards.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ._backend import _check_name
from .ops import cross_attention

__all__ = ["patch", "unpatch"]

_ORIGINAL = "_art_fast_original_forward"
_BACKEND = "_art_fast_backend"
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def patch(model: nn.Module, backend: str | None = None) -> list[str]:
    """Route the cross-attention calls of every ``nn.MultiheadAttention`` in ``model`` through
    :func:`art_fast.cross_attention` (see the module docstring for what is recognised).

    Args:
        model: any module (a model art_fast did not build); changed in place.
        backend: the art_fast backend of the patched calls (``torch``, ``cpu``, ``triton``,
            ``cuda``, ``auto``); None uses the backend in force at each call
            (:func:`art_fast.set_backend`).

    Returns:
        The qualified names of the modules patched now (``""`` for ``model`` itself), in
        ``named_modules`` order; modules patched before are left as they are and not listed.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``; ValueError: an unknown ``backend``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"art_fast.patch: model must be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    if backend is not None:
        _check_name(backend, "art_fast.patch: backend")
    done = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.MultiheadAttention) and not hasattr(mod, _ORIGINAL):
            setattr(mod, _ORIGINAL, mod.forward)
            setattr(mod, _BACKEND, backend)
            mod.forward = types.MethodType(_patched_forward, mod)
            done.append(name)
    return done


def unpatch(model: nn.Module) -> list[str]:
    """Undo :func:`patch` on every module of ``model``; returns the names restored."""
    done = []
    for name, mod in model.named_modules():
        if hasattr(mod, _ORIGINAL):
            # the instance attribute shadowed the class's forward: removing it restores that
            del mod.forward
            delattr(mod, _ORIGINAL)
            delattr(mod, _BACKEND)
            done.append(name)
    return done


def _recognised(mha: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, key_padding_mask: Any, attn_mask: Any,
                is_causal: bool) -> bool:
    """Whether this call is a cross-attention art_fast computes exactly as the module would."""
    return (query is not key and query.dim() == 3 and key.dim() == 3 and value.dim() == 3
            and key_padding_mask is None and attn_mask is None and not is_causal
            and mha.bias_k is None and mha.bias_v is None and not mha.add_zero_attn
            and (mha.dropout == 0.0 or not mha.training)
            and query.dtype in _FLOATS and key.dtype == query.dtype
            and value.dtype == query.dtype)


def _patched_forward(self: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                     need_weights: bool = True, attn_mask: torch.Tensor | None = None,
                     average_attn_weights: bool = True, is_causal: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``nn.MultiheadAttention.forward``'s signature and results; recognised cross-attention
    calls computed with :func:`art_fast.cross_attention`, the others by the original."""
    if not _recognised(self, query, key, value, key_padding_mask, attn_mask, is_causal):
        return getattr(self, _ORIGINAL)(query, key, value, key_padding_mask=key_padding_mask,
                                        need_weights=need_weights, attn_mask=attn_mask,
                                        average_attn_weights=average_attn_weights,
                                        is_causal=is_causal)
    # 1. batch first: [B, M, E] queries, [B, N, kdim] keys, [B, N, vdim] values
    if not self.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    B, M, E = query.shape
    N = key.shape[1]
    H = self.num_heads
    D = E // H
    # 2. the module's own projections; k and v in one GEMM when they read the same tensor
    bias = self.in_proj_bias
    bq, bk, bv = (None, None, None) if bias is None else bias.chunk(3)
    if self._qkv_same_embed_dim:
        w = self.in_proj_weight
        q = F.linear(query, w[:E], bq)
        if key is value:
            kv = F.linear(key, w[E:], None if bias is None else bias[E:])
            k, v = kv.view(B, N, 2, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            k = F.linear(key, w[E:2 * E], bk).view(B, N, H, D).transpose(1, 2)
            v = F.linear(value, w[2 * E:], bv).view(B, N, H, D).transpose(1, 2)
    else:
        q = F.linear(query, self.q_proj_weight, bq)
        k = F.linear(key, self.k_proj_weight, bk).view(B, N, H, D).transpose(1, 2)
        v = F.linear(value, self.v_proj_weight, bv).view(B, N, H, D).transpose(1, 2)
    q = q.view(B, M, H, D).transpose(1, 2)
    # 3. the attention: [B, H, M, D] (+ weights [B, H, M, N])
    backend = getattr(self, _BACKEND)
    if need_weights:
        out, weights = cross_attention(q, k, v, scale=D ** -0.5, return_weights=True,
                                       backend=backend)
        weights = weights.mean(1) if average_attn_weights else weights
    else:
        out, weights = cross_attention(q, k, v, scale=D ** -0.5, backend=backend), None
    # 4. heads back together, the output projection, the module's layout
    out = self.out_proj(out.transpose(1, 2).reshape(B, M, E))
    return (out if self.batch_first else out.transpose(0, 1)), weights
