#!/usr/bin/env python
"""Probes of the binding set: is it localisation, binding or motion that a model cannot learn?

One small 3D CNN (three 3x3x3 conv + BatchNorm + ReLU layers, 2x2 spatial max-pools after the
first two, a spatial max over what is left, a temporal conv, then the means over the first and
the second half of the frames -> linear) is trained from scratch on three views of the same
clips, same budget and optimiser, and scored on the test split:

* ``oracle``: a ``crop x crop`` window centred on the *target* actor (the centre of its boxes
  over the clip, from ``binding_meta.json``): the motion order of a known actor, no binding;
* ``both``: the target's and the distractor's windows side by side in a random order per clip
  (drawn once, seeded): binding needed (the mark says which window's order is the label), no
  search over the frame;
* ``full``: the whole frame (the model ART sees, without any box): localisation + binding.

All views are decoded with :func:`art_fast.data.read_frames` (every frame of the clip) and
kept in memory as uint8. The ground truth is only used to cut the windows; ``full`` reads no
metadata. This is a diagnostic of the set, not a baseline of the package.

Status (2026-12-04): the ``oracle`` view learns the motion order of a known actor, slowly:
test top-1 at chance for 4 epochs, 0.25-0.28 for epochs 5-11 while the training loss falls,
then 0.51 (epoch 12) and 0.87 at epoch 20 (``--epochs 20``, default set, 2 cores, ~16 s per
epoch; the test score swings between epochs, e.g. 0.28 at epoch 14;
``benchmarks/results/binding/binding_probe_oracle.json``). The ``full`` view (the whole
frame, no metadata) learns the whole task: chance for 6 epochs, 0.52 at epoch 11, 0.91 at 16,
0.92 at 20 (``--epochs 20``, ~80 s per epoch; ``binding_probe_full.json``); a second seed
leaves chance at the same epoch (0.61 at epoch 10, ``binding_probe_full_seed1.json``).
``both`` has not been run that long.

``--body stem`` / ``--body tower`` (full view only) put the same head on ART's own tiny tower
with ``model.stem=conv3d`` (:class:`ARTBodyProbe`), read before / after its ViT blocks, to
split ART's failure on this set between its tower and its heads (docs/binding.md, 5.2).

Results: one line per epoch (train loss, test top-1) and
``<out>/binding_probe_<view>[_<body>][_seed<N>].json`` (the per-epoch curve, device, versions,
date, the command, the git commit), rewritten after every epoch.

Usage::

    python benchmarks/binding_probe.py --data data/binding --view oracle [--epochs 8]
        [--body probe|stem|tower] [--crop 32] [--batch 16] [--lr 2e-3] [--seed 0]
        [--out benchmarks/results/binding]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402  (also puts the repository root on sys.path)

VIEWS = ("oracle", "both", "full")
BODIES = ("probe", "stem", "tower", "tower_preln")
HEADS = ("probe", "temporal", "temporal_pos1", "art_segments")


def _window(frames: np.ndarray, boxes: list[list[float]], crop: int) -> np.ndarray:
    """``frames [T, H, W, 3]`` -> ``[T, crop, crop, 3]`` centred on the mean box centre."""
    b = np.asarray(boxes, dtype=np.float64)
    cx, cy = float((b[:, 0] + b[:, 2]).mean() / 2), float((b[:, 1] + b[:, 3]).mean() / 2)
    H, W = frames.shape[1:3]
    x0 = int(round(min(max(cx - crop / 2, 0), W - crop)))
    y0 = int(round(min(max(cy - crop / 2, 0), H - crop)))
    return frames[:, y0:y0 + crop, x0:x0 + crop]


def load_split(root: Path, split: str, view: str, crop: int, seed: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The split as ``(x uint8 [N, 3, T, h, w], y int64 [N])`` in the given view."""
    from art_fast.data.video import num_frames, read_frames

    items = json.loads((root / f"Diving48_V2_{split}.json").read_text())
    meta = json.loads((root / "binding_meta.json").read_text())["videos"] if view != "full" \
        else None
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for it in items:
        path = root / "rgb" / f"{it['vid_name']}.mp4"
        fr = read_frames(str(path), list(range(num_frames(str(path)))))
        if view != "full":
            v = meta[it["vid_name"]]
            tgt = v["actors"][v["target"]]
            dis = v["actors"][1 - v["target"]]
            wt = _window(fr, tgt["actor_boxes"], crop)
            if view == "oracle":
                fr = wt
            else:
                wd = _window(fr, dis["actor_boxes"], crop)
                fr = np.concatenate([wt, wd] if rng.random() < 0.5 else [wd, wt], axis=2)
        xs.append(torch.from_numpy(np.ascontiguousarray(fr)).permute(3, 0, 1, 2))
        ys.append(int(it["label"]))
    return torch.stack(xs), torch.tensor(ys)


class _ProbeHead(nn.Module):
    """The probe's head on a body's ``[N, C, T]`` features (:meth:`features`, per subclass).

    ``head="probe"``: a temporal conv, then the means over the first and the second half of
    the frames -> linear. ``head="temporal"``: ART's global-branch read-out instead,
    :class:`art_fast.model.backbone.TemporalModule` (a transformer over the T frame features
    with learned position embeddings and a video token, as ``VideoBackbone`` builds it with
    one layer) -> linear on the video token; ``head="temporal_pos1"``: the same with its
    position embeddings initialised at std 1 (the scale of the frame features) instead of
    0.02; ``head="art_segments"`` (ART bodies): ART's global branch with ``frame_pool="max"``
    and ``temporal_module="segments"``: the tower's ``ln_post`` and projection of each frame's
    feature, :class:`art_fast.model.backbone.SegmentTemporalModule`, linear."""

    def _add_head(self, c: int, classes: int, head: str = "probe", num_frames: int = 0
                  ) -> None:
        from art_fast.model.backbone import SegmentTemporalModule, TemporalModule

        self.head_kind = head
        if head == "art_segments":  # ART's global branch: frame_readout, segments, linear
            self.temporal = SegmentTemporalModule(c, num_frames, 2)
            self.head = nn.Linear(c, classes)
            return
        if head.startswith("temporal"):
            pos_std = 1.0 if head == "temporal_pos1" else 0.02
            self.temporal = TemporalModule(c, num_frames, 1, pos_std=pos_std)
            self.head = nn.Linear(c, classes)
            return
        # BatchNorm before the ReLU: without it the temporal conv's units died within the
        # first epoch (every view then sat at ln(classes))
        self.temporal = nn.Sequential(nn.Conv1d(c, c, 3, padding=1, bias=False),
                                      nn.BatchNorm1d(c), nn.ReLU())
        self.head = nn.Linear(2 * c, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def frame_readout(self, f: torch.Tensor) -> torch.Tensor:
        """``[N, T, C]`` -> ``[N, T, E]``: what the ``art_segments`` head reads per frame."""
        raise ValueError("--head art_segments needs an ART body (tower_preln)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)                                     # [N, C, T]
        if self.head_kind == "art_segments":
            return self.head(self.temporal(self.frame_readout(f.transpose(1, 2))))
        if self.head_kind.startswith("temporal"):
            return self.head(self.temporal(f.transpose(1, 2)))
        g = self.temporal(f)
        half = g.shape[-1] // 2
        return self.head(torch.cat([g[..., :half].mean(-1), g[..., half:].mean(-1)], 1))


class Probe3D(_ProbeHead):
    """``x float [N, 3, T, h, w]`` in [0, 1] -> logits ``[N, classes]``: the 3D CNN
    (:func:`art_fast.model.backbone.conv3d_blocks`, the body of ART's ``Conv3dStem``) and the
    probe's head."""

    def __init__(self, classes: int, width: int = 32, head: str = "probe",
                 num_frames: int = 0) -> None:
        from art_fast.model.backbone import conv3d_blocks

        super().__init__()
        self.body = conv3d_blocks(width)
        self._add_head(2 * width, classes, head, num_frames)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, 3, T, h, w]`` in [0, 1] -> ``[N, C, T]``: the body, then a spatial max."""
        return self.body(x).amax(dim=(3, 4))


class ARTBodyProbe(_ProbeHead):
    """The probe's head (spatial max, temporal conv, half-means) on ART's own tower: the tiny
    open_clip ViT with the 3D-conv stem and the temporal shift (``model.stem=conv3d``, as
    ``configs/binding_tiny.yaml`` builds it), random init. ``body="stem"`` reads the stem's
    tokens (before the ViT blocks), ``body="tower"`` the tower's patch tokens (after them and
    the final LayerNorm ``ln_post``, what ART reads), ``body="tower_preln"`` the residual stream
    after the blocks but before ``ln_post`` (the per-token LayerNorm removes each token's
    magnitude, which a spatial max relies on). Splits ART's failure on the binding set between
    its tower and its heads."""

    def __init__(self, classes: int, body: str, num_frames: int, image_size: int,
                 head: str = "probe") -> None:
        from art_fast.data.transforms import CLIP_MEAN, CLIP_STD
        from art_fast.model.backbone import VideoBackbone, build_clip

        super().__init__()
        visual = build_clip("tiny", None, image_size)[0].visual
        self.body_kind = body
        # tower_preln: ART's option token_norm="pre" (the blocks' output before ln_post)
        self.backbone = VideoBackbone(visual, num_frames, 1, False, 0.25, "conv3d",
                                      token_norm="pre" if body == "tower_preln" else "post")
        self._add_head(self.backbone.embed_dim if head == "art_segments"
                       else self.backbone.width, classes, head, num_frames)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 1, 3, 1, 1))

    def frame_readout(self, f: torch.Tensor) -> torch.Tensor:
        """ART's frame feature with ``frame_pool="max"``: the tower's ``ln_post`` of the
        spatial max, then its projection."""
        return self.backbone.project_frames(f)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        v = (x.transpose(1, 2) - self.mean) / self.std           # [N, T, 3, h, w]
        B, T = v.shape[:2]
        if self.body_kind == "stem":
            tok = self.backbone.stem(v)                          # [N*T, C, gh, gw]
            f = tok.flatten(2).amax(-1).view(B, T, -1)
        else:
            tokens, _frames, _x = self.backbone(v)               # [N, T, P, C]
            f = tokens.amax(2)
        return f.transpose(1, 2)                                 # [N, C, T]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a binding set (art-fast synth --kind binding)")
    p.add_argument("--view", required=True, choices=VIEWS)
    p.add_argument("--body", default="probe", choices=BODIES,
                   help="probe: the 3D CNN; stem / tower / tower_preln: ART's tiny tower with "
                        "the conv3d stem, read before its ViT blocks / after them and ln_post "
                        "/ after them, before ln_post (full view only)")
    p.add_argument("--head", default="probe", choices=HEADS,
                   help="probe: temporal conv + half-means; temporal: ART's TemporalModule "
                        "(transformer over the frame features, video token); temporal_pos1: "
                        "the same, position embeddings initialised at std 1; art_segments: "
                        "ART's ln_post + projection + SegmentTemporalModule (ART bodies)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/binding")
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    root = Path(a.data)
    t0 = time.perf_counter()
    xtr, ytr = load_split(root, "train", a.view, a.crop, a.seed)
    xte, yte = load_split(root, "test", a.view, a.crop, a.seed + 1)
    classes = int(max(ytr.max(), yte.max())) + 1
    print(f"probe {a.view}: train {tuple(xtr.shape)} test {tuple(xte.shape)} "
          f"({time.perf_counter() - t0:.0f} s to decode)", flush=True)
    if a.body == "probe":
        model: Probe3D = Probe3D(classes, head=a.head, num_frames=xtr.shape[2])
    else:
        if a.view != "full":
            p.error(f"--body {a.body} reads whole frames: it needs --view full")
        model = ARTBodyProbe(classes, a.body, xtr.shape[2], xtr.shape[3], a.head)
    opt = torch.optim.AdamW(model.parameters(), a.lr, weight_decay=0.01)
    curve: list[dict[str, Any]] = []
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = (a.view + ("" if a.body == "probe" else f"_{a.body}")
            + ("" if a.head == "probe" else f"_{a.head}head")
            + (f"_seed{a.seed}" if a.seed else ""))
    path = out / f"binding_probe_{name}.json"
    commit = h.git_commit(short=True)

    def write() -> None:
        """The results so far, rewritten (atomically: :func:`write_json` of the harness) after
        every epoch: a run stopped early keeps its curve (``epochs_done`` < ``epochs``)."""
        res = {"view": a.view, "body": a.body, "head": a.head, "data": str(a.data),
               "epochs": a.epochs,
               "epochs_done": len(curve), "crop": a.crop, "batch": a.batch, "lr": a.lr,
               "seed": a.seed, "classes": classes, "train_clips": len(ytr),
               "test_clips": len(yte), "params": sum(q.numel() for q in model.parameters()),
               "final_top1": curve[-1]["test_top1"] if curve else None,
               "best_top1": max((r["test_top1"] for r in curve), default=None),
               "curve": curve,
               "device": f"{platform.processor() or platform.machine()}, "
                         f"{torch.get_num_threads()} threads",
               "torch": torch.__version__, "python": platform.python_version(),
               "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": "python benchmarks/binding_probe.py " + " ".join(sys.argv[1:]),
               "git_commit": commit}
        h.write_json(path, res)

    g = torch.Generator().manual_seed(a.seed)
    for ep in range(a.epochs):
        t1 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(ytr), generator=g)
        total = 0.0
        for i in range(0, len(perm), a.batch):
            idx = perm[i:i + a.batch]
            loss = F.cross_entropy(model(xtr[idx].float() / 255), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(xte[i:i + 50].float() / 255).argmax(1)
                              for i in range(0, len(yte), 50)])
        acc = (pred == yte).float().mean().item()
        row = {"epoch": ep + 1, "train_loss": round(total / len(ytr), 4),
               "test_top1": round(acc, 4), "seconds": round(time.perf_counter() - t1, 1)}
        curve.append(row)
        print(f"probe {a.view}: epoch {row['epoch']} loss {row['train_loss']:.3f} "
              f"test top-1 {acc:.3f} ({row['seconds']:.0f} s)", flush=True)
        write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
