"""The text-constrained semantics bank (DESIGN §4.2): class descriptions x prompt templates,
encoded once by the text tower of the same open_clip model, L2-normalised, cached on disk.

The bank tensor is ``[P, C, Ct]`` float32 (P prompt templates, C classes, Ct the text
embedding width). The cache key hashes (model name, weights identity, the filled prompts, the
format version), so a different model, checkpoint, class list or template set misses.

A cache file is validated on load (:func:`check_cached_bank`): the key stored in it, shape
``[P, C, Ct]`` with the text tower's width ``Ct``, dtype float32, every value finite, every row
of unit norm. A file that fails (or does not load) is not used: a warning names the file and
why, and the bank is encoded again and the file rewritten atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_save

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a video of a person {}.",
    "The person is doing {}.",
    "This is a video about {}.",
    "a video of a person doing {}.",
    "a clip of {}.",
    "Someone is performing {}.",
    "a person performing {} in a video.",
    "Human action of {}.",
)
_FORMAT = 1


def default_cache_dir() -> Path:
    """``$ART_FAST_CACHE/text_bank``, else ``~/.cache/art_fast/text_bank``."""
    root = os.environ.get("ART_FAST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "art_fast"
    )
    return Path(root) / "text_bank"


def fill_prompts(classes: list[str], templates: tuple[str, ...] | list[str]) -> list[list[str]]:
    """``[P][C]`` prompt strings: every template filled with every class description."""
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"ART: each prompt template must contain '{{}}' once, got {t!r}")
    return [[t.format(c) for c in classes] for t in templates]


def cache_key(model_name: str, weights_id: str, prompts: list[list[str]]) -> str:
    blob = json.dumps(
        {"format": _FORMAT, "model": model_name, "weights": weights_id, "prompts": prompts},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


@torch.no_grad()
def encode_prompts(
    clip_model: nn.Module, tokenizer, prompts: list[list[str]], batch_size: int = 256
) -> torch.Tensor:
    """Encode ``[P][C]`` prompts with ``clip_model.encode_text``; returns ``[P, C, Ct]``
    float32, each row L2-normalised. Runs in eval mode, on the model's device."""
    flat = [s for row in prompts for s in row]
    was_training = clip_model.training
    clip_model.eval()
    device = next(clip_model.parameters()).device
    chunks = []
    for i in range(0, len(flat), batch_size):
        tokens = tokenizer(flat[i:i + batch_size]).to(device)
        chunks.append(clip_model.encode_text(tokens).float())
    clip_model.train(was_training)
    emb = F.normalize(torch.cat(chunks), dim=-1)
    return emb.view(len(prompts), len(prompts[0]), -1).cpu()


def _text_width(clip_model: nn.Module, tokenizer, prompts: list[list[str]]) -> int:
    """The width of ``clip_model.encode_text``: from its text projection when it has one,
    else by encoding one prompt."""
    for owner in (clip_model, getattr(clip_model, "text", None)):
        proj = getattr(owner, "text_projection", None)
        if isinstance(proj, torch.Tensor) and proj.dim() == 2:
            return int(proj.shape[1])
        if isinstance(proj, nn.Linear):
            return int(proj.out_features)
    return int(encode_prompts(clip_model, tokenizer, [[prompts[0][0]]]).shape[-1])


def check_cached_bank(blob: object, key: str, shape: tuple[int, int, int]) -> str | None:
    """Why a loaded cache ``blob`` is not a valid bank for ``key`` and ``shape`` (P, C, Ct),
    or None when it is."""
    if not isinstance(blob, dict) or "bank" not in blob:
        return "not a text-bank cache (no 'bank' entry)"
    if blob.get("key") != key:
        return f"its key is {blob.get('key')!r}, expected {key!r} (a renamed or foreign file)"
    bank = blob["bank"]
    if not isinstance(bank, torch.Tensor):
        return f"the bank is a {type(bank).__name__}, not a tensor"
    if bank.dtype != torch.float32:
        return f"dtype {bank.dtype}, expected torch.float32"
    if tuple(bank.shape) != tuple(shape):
        return f"shape {list(bank.shape)}, expected {list(shape)} (P, C, width)"
    if not bool(torch.isfinite(bank).all()):
        return "it holds non-finite values (nan or inf)"
    norms = bank.norm(dim=-1)
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        return "its rows are not L2-normalised"
    return None


def load_or_encode(
    clip_model: nn.Module,
    tokenizer,
    prompts: list[list[str]],
    model_name: str,
    weights_id: str,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> tuple[torch.Tensor, bool]:
    """The bank ``[P, C, Ct]`` float32 from the disk cache, or encoded (and cached).

    Returns ``(bank, hit)``; ``hit`` says whether the cache was used. A cache file that does
    not load or fails :func:`check_cached_bank` is not used: a warning names the file and why,
    and the file is rewritten (atomically) with the encoded bank.
    """
    key = cache_key(model_name, weights_id, prompts)
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{key}.pt"
    P, C = len(prompts), len(prompts[0])
    if use_cache and path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a torn or foreign file
            why: str | None = f"it does not load ({type(e).__name__}: " \
                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})"
        else:
            why = check_cached_bank(blob, key, (P, C, _text_width(clip_model, tokenizer,
                                                                   prompts)))
            if why is None:
                return blob["bank"], True
        log.warning("text-bank cache %s is not used: %s; encoding the bank again and "
                    "rewriting the file", path, why)
    bank = encode_prompts(clip_model, tokenizer, prompts)
    if use_cache:
        atomic_save({"bank": bank, "model": model_name, "weights": weights_id, "key": key,
                     "format": _FORMAT}, path)
    return bank, False
