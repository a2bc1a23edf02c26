"""The text-constrained semantics bank (DESIGN §4.2): class descriptions x prompt templates,
encoded once by the text tower of the same open_clip model, L2-normalised, cached on disk.

The bank tensor is ``[P, C, Ct]`` float32 (P prompt templates, C classes, Ct the text
embedding width). The cache key hashes (model name, weights identity, the filled prompts, the
format version), so a different model, checkpoint, class list or template set misses.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._io import atomic_save

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

    Returns ``(bank, hit)``; ``hit`` says whether the cache was used. A cache file that is
    unreadable or of the wrong shape counts as a miss and is rewritten.
    """
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{cache_key(model_name, weights_id, prompts)}.pt"
    P, C = len(prompts), len(prompts[0])
    if use_cache and path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            bank = blob["bank"]
            if isinstance(bank, torch.Tensor) and bank.dim() == 3 and bank.shape[:2] == (P, C):
                return bank.float(), True
        except Exception:  # a torn or foreign file: re-encode and overwrite
            pass
    bank = encode_prompts(clip_model, tokenizer, prompts)
    if use_cache:
        atomic_save({"bank": bank, "model": model_name, "weights": weights_id}, path)
    return bank, False
