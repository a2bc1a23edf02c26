"""A synthetic fine-grained action set, written as real mp4 files in the Diving48 format.

``make_synthetic(out_dir)`` (command line: ``art-fast synth --out DIR``) writes::

    DIR/rgb/<vid_name>.mp4            one clip per video (h264 yuv420p, CRF 12, no B-frames)
    DIR/Diving48_V2_train.json        [{vid_name, label, start_frame, end_frame}, ...]
    DIR/Diving48_V2_test.json
    DIR/Diving48_vocab.json           one list of 4 attribute tokens per class
    DIR/synthetic_meta.json           generation parameters and, per video, the cue's box in
                                      every frame (ground truth for region visualisations)

so ``art_fast.data.Diving48(DIR, split)`` reads it unchanged (class descriptions come out as
e.g. ``"moves-right, fast, straight-path, checkered-square"``).

Construction (every clip, ``S x S`` pixels, ``F`` frames):

* **Cue (decides the class)**: a small black-and-white checkered square, side ``0.22 S``
  (14 px at 64, 4-px cells; under 5% of the frame), drawn on top of everything. Against the
  tiny tower's 8-px patches it fills at least 7 x 7 px of one patch in every frame, as a real
  action region covers several 16-px patches of a 224-px ViT input; at 0.14 S (9 px, the first
  version) it was split across up to four patches and the tower did not find it within the
  demo's budget (see docs/demo.md). Its *motion* is the class: direction (right, left,
  up, down; then the four diagonals) x speed (slow: 0.18 S over the clip, fast: 0.5 S) x path
  (straight; then zigzag: a perpendicular sine of amplitude 0.06 S, two periods). The first 8
  classes are the 4 cardinal directions x 2 speeds, the next 8 the diagonals x 2 speeds, the
  last 16 repeat those with a zigzag path (``classes`` <= 32). Its start point is uniform
  among the points that keep its whole path inside the frame. Its appearance is identical in
  every class, so colour/texture says *where* the cue is, never *which* class.
* **Global motion (shared, label-independent)**: a smooth colour texture that pans in a
  uniformly random direction at a random speed (up to 0.3 S over the clip), and a large
  semi-transparent ellipse (radii 0.2 S - 0.3 S, random colour) crossing the frame at a random
  velocity. Both cover far more pixels than the cue.
* **Distractors (shared, label-independent)**: ``distractors`` solid discs of random colour
  (radius 0.06 S), each moving with an attribute combination drawn uniformly from the same
  set the classes use, so the motion statistics of the non-cue objects carry no label
  information: a model must find the checkered square and read its motion.

Every clip comes from its own generator ``numpy.random.default_rng([seed, class, i])``; frames
are converted to yuv420p (BT.601, limited range) in exact integer arithmetic and the encoder
runs single-threaded without B-frames or macroblock-tree rate control, so the bytes are
identical for a seed (on the same libraries; libx264's mb-tree/B-frame path was measured to be
nondeterministic here).
Splits are stratified: the last ``round(test_fraction * videos_per_class)`` videos of every
class are the test split. Every third video name starts with '-' and every third with '_'
(the real Diving48 names do too), so those names travel the same code path.

Defaults: 8 classes x 200 videos (150 train + 50 test each), 16 frames, 64 x 64, seed 0:
1600 files in about 23 s on 2 cores. Train with mild spatial augmentation (a random
resized crop with scale >= 0.6, no flip: the classes are direction-sensitive), or the cue can
be cropped out of the clip.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["make_synthetic", "main", "synthetic_vocab", "render_clip", "MAX_CLASSES"]

_DIRECTIONS = {  # name -> unit vector (x right, y down)
    "moves-right": (1.0, 0.0), "moves-left": (-1.0, 0.0),
    "moves-up": (0.0, -1.0), "moves-down": (0.0, 1.0),
    "moves-up-right": (math.sqrt(0.5), -math.sqrt(0.5)),
    "moves-down-left": (-math.sqrt(0.5), math.sqrt(0.5)),
    "moves-up-left": (-math.sqrt(0.5), -math.sqrt(0.5)),
    "moves-down-right": (math.sqrt(0.5), math.sqrt(0.5)),
}
_CARDINAL = ["moves-right", "moves-left", "moves-up", "moves-down"]
_DIAGONAL = ["moves-up-right", "moves-down-left", "moves-up-left", "moves-down-right"]
_SPEEDS = {"slow": 0.18, "fast": 0.5}  # displacement over the clip, in frame sides
_PATHS = ("straight-path", "zigzag-path")
_OBJECT = "checkered-square"
_CUE_SIDE = 0.22
_ZIGZAG_AMP = 0.06
_DISTRACTOR_R = 0.06
_CRF = 12


def _attribute_table() -> list[tuple[str, str, str]]:
    out = []
    for path in _PATHS:
        for group in (_CARDINAL, _DIAGONAL):
            for d in group:
                for sp in _SPEEDS:
                    out.append((d, sp, path))
    return out


_TABLE = _attribute_table()
MAX_CLASSES = len(_TABLE)


def synthetic_vocab(classes: int) -> list[list[str]]:
    """The 4 tokens (direction, speed, path, object) of each of the first ``classes``
    classes."""
    if not 2 <= classes <= MAX_CLASSES:
        raise ValueError(f"classes must be in 2..{MAX_CLASSES}, got {classes!r}")
    return [[d, sp, p, _OBJECT] for d, sp, p in _TABLE[:classes]]


def _trajectory(attrs: tuple[str, str, str], frames: int, size: int, side: int,
                rng: np.random.Generator) -> np.ndarray:
    """Top-left corners ``[frames, 2]`` (x, y) of an object of ``side`` pixels moving with
    ``attrs`` (direction, speed, path), entirely inside the frame."""
    d, sp, path = attrs
    ux, uy = _DIRECTIONS[d]
    t = np.arange(frames, dtype=np.float64) / max(frames - 1, 1)
    dist = _SPEEDS[sp] * size
    off = np.stack([ux * dist * t, uy * dist * t], 1)
    if path == "zigzag-path":
        wob = _ZIGZAG_AMP * size * np.sin(2 * math.pi * 2 * t)
        off += np.stack([-uy * wob, ux * wob], 1)
    lo = -off.min(0)
    hi = (size - side) - off.max(0)
    start = lo + (hi - lo) * rng.random(2)
    return np.round(start + off).astype(np.int64)


def _texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random colour texture ``[size, size, 3]`` float in about [60, 190]."""

    def upsample(cells: int) -> np.ndarray:
        g = rng.random((cells + 1, cells + 1, 3))
        pos = np.linspace(0, cells, size)
        i0 = np.minimum(pos.astype(np.int64), cells - 1)
        f = (pos - i0)[:, None]
        rows = g[i0] * (1 - f[:, :, None]) + g[i0 + 1] * f[:, :, None]  # [size, cells+1, 3]
        cols = rows[:, i0] * (1 - f[None, :, :]) + rows[:, i0 + 1] * f[None, :, :]
        return cols

    low = upsample(max(2, size // 24))
    mid = upsample(max(3, size // 8))
    tint = 0.6 + 0.4 * rng.random(3)
    return 60 + 130 * (0.55 * low + 0.45 * mid) * tint


def render_clip(label_attrs: tuple[str, str, str], frames: int, size: int,
                rng: np.random.Generator, distractors: int = 2
                ) -> tuple[np.ndarray, np.ndarray]:
    """One clip: RGB uint8 ``[frames, size, size, 3]`` and the cue boxes ``[frames, 4]``
    (x, y, w, h) (see the module docstring for the construction)."""
    s = size
    # Background: a texture larger than the frame, panned with a random velocity.
    pan = 0.3 * s * rng.random()
    ang = 2 * math.pi * rng.random()
    margin = int(math.ceil(pan)) + 1
    tex = _texture(s + 2 * margin, rng)
    t = np.arange(frames, dtype=np.float64) / max(frames - 1, 1)
    pan_dir = np.array([math.cos(ang), math.sin(ang)])
    pan_xy = np.round(margin + pan_dir[None, :] * pan * (t[:, None] - 0.5)).astype(np.int64)
    # Large semi-transparent ellipse crossing the frame.
    rx, ry = s * (0.2 + 0.1 * rng.random(2))
    e_col = rng.random(3) * 255
    e0 = rng.random(2) * s
    e_v = (rng.random(2) - 0.5) * 0.8 * s
    # Distractor discs with class-like motion drawn uniformly from the whole table.
    r = max(2.0, _DISTRACTOR_R * s)
    dside = int(round(2 * r))
    dis = []
    for _ in range(distractors):
        attrs = _TABLE[int(rng.integers(len(_TABLE)))]
        dis.append((_trajectory(attrs, frames, s, dside, rng), rng.random(3) * 255))
    # The cue.
    side = max(4, int(round(_CUE_SIDE * s)))
    cue = _trajectory(label_attrs, frames, s, side, rng)
    cell = max(2, side // 3)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    cy, cx = np.mgrid[0:side, 0:side]
    checker = (((cy // cell) + (cx // cell)) % 2).astype(np.float64)[..., None] * 255.0
    out = np.empty((frames, s, s, 3), np.uint8)
    for f in range(frames):
        ox, oy = pan_xy[f]
        img = tex[oy:oy + s, ox:ox + s].copy()
        ex, ey = e0 + e_v * (t[f] - 0.5)
        inside = ((xx - ex) / rx) ** 2 + ((yy - ey) / ry) ** 2 <= 1.0
        img[inside] = 0.4 * img[inside] + 0.6 * e_col
        for traj, col in dis:
            dx, dy = traj[f] + r
            img[(xx - dx + 0.5) ** 2 + (yy - dy + 0.5) ** 2 <= r * r] = col
        x0, y0 = cue[f]
        img[y0:y0 + side, x0:x0 + side] = checker
        out[f] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    boxes = np.concatenate([cue, np.full((frames, 2), side, np.int64)], 1)
    return out, boxes


def _encoder() -> tuple[str, dict[str, str]]:
    import av

    try:
        av.codec.Codec("libx264", "w")
        # No B-frames and no macroblock tree: with either, libx264 (single-threaded, same
        # input) was measured to give different bytes in about 1 encode in 20.
        return "libx264", {"crf": str(_CRF), "preset": "medium", "threads": "1",
                           "x264-params": "bframes=0:mbtree=0"}
    except Exception:
        return "mpeg4", {"threads": "1"}


def rgb_to_yuv420p(img: np.ndarray) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` (H, W even) -> the planar yuv420p layout ``[H * 3 / 2, W]``
    that ``av.VideoFrame.from_ndarray(..., format="yuv420p")`` takes.

    BT.601 limited range in exact integer arithmetic, chroma from the mean of each 2 x 2 block.
    Done here rather than by swscale inside the encoder because swscale's SIMD paths depend on
    buffer alignment, which made the encoded bytes vary from run to run."""
    x = img.astype(np.int32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    h, w = r.shape
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    s4 = x.reshape(h // 2, 2, w // 2, 2, 3).sum((1, 3))  # 2 x 2 sums
    r4, g4, b4 = s4[..., 0], s4[..., 1], s4[..., 2]
    u = ((-38 * r4 - 74 * g4 + 112 * b4 + 512) >> 10) + 128
    v = ((112 * r4 - 94 * g4 - 18 * b4 + 512) >> 10) + 128
    planes = [y, u.reshape(h // 4, w), v.reshape(h // 4, w)]
    return np.concatenate([np.clip(p, 0, 255).astype(np.uint8) for p in planes], 0)


def _write_mp4(path: str, clip: np.ndarray, codec: str, options: dict[str, str],
               fps: int = 16) -> None:
    import av

    tmp = path + ".part"
    with av.open(tmp, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = clip.shape[2], clip.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        if codec == "mpeg4":
            stream.bit_rate = 8_000_000  # near-lossless at these sizes
        stream.options = dict(options)
        for i, img in enumerate(clip):
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(img), format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def prepare_layout(out_dir: str | os.PathLike[str], videos_per_class: int,
                   test_fraction: float) -> tuple[str, str, str, dict[str, str], int]:
    """Create ``out_dir/rgb``; returns (out_dir, video_dir, codec, encoder options, number of
    training videos per class: the last ``round(test_fraction * videos_per_class)``, at least
    1 and at most ``videos_per_class - 1``, are the test split)."""
    out_dir = os.fspath(out_dir)
    video_dir = os.path.join(out_dir, "rgb")
    os.makedirs(video_dir, exist_ok=True)
    codec, options = _encoder()
    n_test = min(int(videos_per_class) - 1, max(1, round(test_fraction * videos_per_class)))
    return out_dir, video_dir, codec, options, int(videos_per_class) - n_test


def write_layout(out_dir: str | os.PathLike[str], train: list[dict], test: list[dict],
                 vocab: list[list[str]], meta_name: str, meta_head: dict[str, Any],
                 meta_videos: dict[str, Any]) -> list[str]:
    """Write the JSON side of the Diving48 V2 layout (train/test splits, vocab) and the set's
    meta file ``meta_name`` = ``{**meta_head, "class_descriptions": [...], **rest,
    "videos": meta_videos}``, each atomically (a ``.part`` file, then a rename); returns the
    class descriptions. Shared by the synthetic sets (the displacement and the binding set)."""
    from .datasets import diving48_sentence  # lazily, as before (the readers are not needed)

    def dump(obj: Any, name: str) -> None:
        tmp = os.path.join(out_dir, name + ".part")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.replace(tmp, os.path.join(out_dir, name))

    dump(train, "Diving48_V2_train.json")
    dump(test, "Diving48_V2_test.json")
    dump(vocab, "Diving48_vocab.json")
    sentences = [diving48_sentence(v) for v in vocab]
    head = dict(meta_head)
    rest = {k: head.pop(k) for k in list(head) if k != "params"}
    dump({**head, "class_descriptions": sentences, **rest, "videos": meta_videos}, meta_name)
    return sentences


def _name(c: int, i: int) -> str:
    prefix = ("", "-", "_")[i % 3]
    return f"{prefix}syn{c:02d}_{i:04d}"


def make_synthetic(out_dir: str | os.PathLike[str], *, classes: int = 8,
                   videos_per_class: int = 200, frames: int = 16, size: int = 64, seed: int = 0,
                   test_fraction: float = 0.25, distractors: int = 2,
                   verbose: bool = False) -> dict[str, Any]:
    """Write the synthetic set (see the module docstring) and return a summary.

    Args:
        out_dir: output folder (created; files of an earlier run are overwritten).
        classes: number of classes, 2..32.
        videos_per_class: clips per class (train + test).
        frames: frames per clip (>= 4).
        size: frame side in pixels (even, >= 32).
        seed: generation seed.
        test_fraction: fraction of each class in the test split (at least one clip).
        distractors: distractor discs per clip.

    Returns:
        dict with ``out_dir``, ``classes`` (descriptions), ``vocab``, ``num_train``,
        ``num_test``, ``frames``, ``size``, ``seed``, ``codec``, ``seconds``.
    """

    if not 2 <= int(classes) <= MAX_CLASSES:
        raise ValueError(f"classes must be in 2..{MAX_CLASSES}, got {classes!r}")
    if int(videos_per_class) < 2:
        raise ValueError(f"videos_per_class must be >= 2 (train + test), got "
                         f"{videos_per_class!r}")
    if int(frames) < 4:
        raise ValueError(f"frames must be >= 4, got {frames!r}")
    if int(size) < 32 or int(size) % 2:
        raise ValueError(f"size must be an even number >= 32 (yuv420p), got {size!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if int(distractors) < 0:
        raise ValueError(f"distractors must be >= 0, got {distractors!r}")
    t0 = time.perf_counter()
    out_dir, video_dir, codec, options, n_train = prepare_layout(out_dir, videos_per_class,
                                                                 test_fraction)
    vocab = synthetic_vocab(int(classes))
    train, test, meta_videos = [], [], {}
    for c in range(int(classes)):
        attrs = tuple(vocab[c][:3])
        for i in range(int(videos_per_class)):
            rng = np.random.default_rng([int(seed), c, i])
            clip, boxes = render_clip(attrs, int(frames), int(size), rng, int(distractors))
            name = _name(c, i)
            _write_mp4(os.path.join(video_dir, name + ".mp4"), clip, codec, options)
            entry = {"vid_name": name, "label": c, "start_frame": 0, "end_frame": int(frames)}
            (train if i < n_train else test).append(entry)
            meta_videos[name] = {"label": c, "cue_boxes_xywh": boxes.tolist()}
        if verbose:
            print(f"synth: class {c + 1}/{classes} done", file=sys.stderr)

    params = {"classes": int(classes), "videos_per_class": int(videos_per_class),
              "frames": int(frames), "size": int(size), "seed": int(seed),
              "test_fraction": float(test_fraction), "distractors": int(distractors),
              "codec": codec, "encoder_options": options}
    sentences = write_layout(out_dir, train, test, vocab, "synthetic_meta.json",
                             {"params": params}, meta_videos)
    return {"out_dir": os.path.abspath(out_dir), "classes": sentences, "vocab": vocab,
            "num_train": len(train), "num_test": len(test), "frames": int(frames),
            "size": int(size), "seed": int(seed), "codec": codec,
            "seconds": round(time.perf_counter() - t0, 2)}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``art-fast synth`` options (added to ``parser`` when given)."""
    p = parser or argparse.ArgumentParser(
        prog="art-fast synth",
        description="Write the synthetic fine-grained action set (mp4 + Diving48-format "
                    "JSON) that the demo trains on.")
    p.add_argument("--kind", choices=("displacement", "binding"), default="displacement",
                   help="which set: 'displacement' (a checkered square's motion is the class) "
                        "or 'binding' (which of two look-alike actors did which limb motions "
                        "in which order; art_fast.data.binding) (default: displacement)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--classes", type=int, default=None,
                   help=f"classes, 2..{MAX_CLASSES} (binding: 2..6) (default: 8; binding: 6)")
    p.add_argument("--videos-per-class", type=int, default=200,
                   help="clips per class, train + test (default: 200)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (default: 16)")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels, even "
                   "(default: 64)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default: 0)")
    p.add_argument("--test-fraction", type=float, default=0.25,
                   help="fraction of each class in the test split (default: 0.25)")
    p.add_argument("--distractors", type=int, default=2,
                   help="distractor objects per clip (default: 2; displacement only)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes (binding only; default: the CPU count; the files do not "
                        "depend on it)")
    from .binding import STYLES  # here, not at the top: binding imports this module

    p.add_argument("--style", choices=STYLES, default=None,
                   help="binding only: the rendering, 'discs' (the original set) or "
                        "'squares' (other actors, marks and motions, for a held-out check) "
                        "(default: discs)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``art-fast synth``: parse ``argv``, write the set, print a one-line summary."""
    args = build_parser().parse_args(argv)
    try:
        if args.kind == "binding":
            from .binding import make_binding

            s = make_binding(args.out, classes=6 if args.classes is None else args.classes,
                             videos_per_class=args.videos_per_class, frames=args.frames,
                             size=args.size, seed=args.seed,
                             test_fraction=args.test_fraction, workers=args.workers,
                             style="discs" if args.style is None else args.style)
        elif args.style is not None:
            raise ValueError(f"--style applies to --kind binding only, got --style "
                             f"{args.style} with --kind {args.kind}")
        else:
            s = make_synthetic(args.out, classes=8 if args.classes is None else args.classes,
                               videos_per_class=args.videos_per_class, frames=args.frames,
                               size=args.size, seed=args.seed,
                               test_fraction=args.test_fraction, distractors=args.distractors)
    except ValueError as exc:
        print(f"art-fast synth: error: {exc}", file=sys.stderr)
        return 2
    print(f"synth: {s['num_train']} train + {s['num_test']} test clips, {len(s['classes'])} "
          f"classes, {s['frames']} frames of {s['size']}x{s['size']} ({s['codec']}) in "
          f"{s['out_dir']} ({s['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
