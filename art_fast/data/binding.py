"""The "binding" synthetic set: which actor did what, in which order.

``make_binding(out_dir)`` (command line: ``art-fast synth --kind binding --out DIR``) writes the
same Diving48 V2 layout as :mod:`.synthetic` (and with its mp4 writer, so the bytes are
identical for a seed whatever the worker count)::

    DIR/rgb/<vid_name>.mp4            one clip per video (h264 yuv420p, CRF 12, no B-frames)
    DIR/Diving48_V2_train.json        [{vid_name, label, start_frame, end_frame}, ...]
    DIR/Diving48_V2_test.json
    DIR/Diving48_vocab.json           4 tokens per class, e.g. ["checkered-actor",
                                      "oscillates-first", "then-rotates",
                                      "striped-decoy-reversed"]
    DIR/binding_meta.json             parameters and per-video ground truth (below)

Two renderings of the same task: ``style="discs"`` (the default, described first; its files are
byte for byte those written before styles existed) and ``style="squares"`` (``--style
squares``: other actors, marks and motions in the same layout, a held-out check of a
configuration tuned on the discs; see "The squares style" below).

Construction (every clip, ``S x S`` pixels, ``F`` frames):

* **Two look-alike actors**: each a filled disc (radius ``0.09 S``) with one limb, a
  capsule (length ``0.12 S``, width ``0.035 S``) from the disc's edge outwards, in a darker
  shade of the body colour. Both colours come from one hue family drawn per clip (hue within
  +-0.03, similar saturation and value). Each actor drifts slowly (``0.02 S - 0.05 S`` over the
  clip, random direction); start points are uniform among those that keep the whole reach
  (body + fully extended limb in any direction) inside the frame for the whole clip and the two
  reaches disjoint in every frame.
* **Identity marks**: a square of side ``4 * round(S / 32)`` (8 px at 64) drawn on top of each
  body's centre. The target's is a black/white checkerboard, the distractor's black/white
  vertical stripes, both with cells of a quarter of the side: same size, same mean
  brightness (exactly half 0, half 255), different pattern.
* **Three limb sub-motions**, all with about the same mean tip speed (``0.05 S`` per frame):
  ``oscillates`` (the angle swings sinusoidally, amplitude such that the mean tip speed is
  matched, period 4-5.5 frames), ``rotates`` (the angle turns at a constant rate, random
  sign), ``folds`` (the angle stays, the limb's length folds to 25-35% and extends again,
  period 3.5-4.5 frames). Every switch continues from the limb's current angle and length
  (no jump); after ``folds`` the length relaxes back to full over two frames.
* **The class** is an ordered pair ``(X, Y)``, ``X != Y`` (6 with 3 motions; class order
  ``(osc, rot), (rot, osc), (osc, fold), (fold, osc), (rot, fold), (fold, rot)``, so the
  first ``2k`` classes are ``k`` pairs with their reverses). The target does ``X`` then ``Y``,
  the distractor ``Y`` then ``X``, each switching at its own frame drawn uniformly from
  ``ceil(0.4 F) .. floor(0.6 F)``. So both sub-motions happen somewhere in the frame in every
  half of every clip, and the two actors of class ``(X, Y)`` look like those of ``(Y, X)``
  with the roles swapped: only the mark says which actor's order is the label.
* **Nuisances**: a smooth colour texture (:func:`.synthetic._texture`) panning in a random
  direction at up to ``0.3 S`` over the clip; one or two unrelated discs (radius
  ``0.06 S - 0.09 S``, random colour) crossing on straight paths, drawn under the actors. The
  target is on the left (smaller x) in half the clips, at random.

All per-actor random draws (speed, period, drift, colour jitter) come from the same
distribution for target and distractor; only the mark and the order differ.

**The squares style** (``style="squares"``; everything not named here as above: texture, pan,
blobs, drift, switch frames, class orders over the style's three motions, metadata format
and box semantics):

* **Actors**: filled axis-aligned squares of the disc's area (half-side
  ``r sqrt(pi) / 2``, 5.1 px at 64; at 48 and 50 px widened to the mark's half-side, 4 px,
  so that the mark stays inside the body), same colour scheme; the limb (same capsule) starts
  at the square's boundary along its direction (so it is attached in every direction) and is
  a *lighter* shade of the body colour (``body + 0.45 (255 - body)``). The placement uses the
  circumscribed radius ``half-side * sqrt(2)`` in the reach, so actors stay inside the frame
  and disjoint; the larger reach leaves few feasible start pairs, so candidates are drawn in
  batches (same rejection sampling, same uniform distribution).
* **Marks**: target ``quadrants`` (a 2 x 2 checkerboard, cells of half the side), distractor
  ``bands`` (horizontal stripes, cells of a quarter of the side); same side as above, both
  exactly half 0 / half 255.
* **Motions** ``sweeps``, ``circles``, ``twitches``, all angle-based. As for the discs,
  ``v = 0.05 S / l`` (``l`` the limb length) is the angular speed per frame that moves the tip
  of a full limb at ``0.05 S`` per frame (the body's radius left out), and each actor's speed
  is ``v`` times a 0.9-1.1 jitter. ``sweeps``: a triangle wave of the angle around its current
  value (constant angular speed, back and forth), period 6-8 frames, amplitude
  ``v P / 4``; ``circles``: constant-rate rotation (random sign) at ``v / 0.6`` with the limb
  held at 60% extension (reached from the current extension over two frames), so the tip
  speed matches; ``twitches``: the angle holds for two frames and jumps by ``3 v`` (random
  sign) in the third (mean ``|d angle|`` = ``v``). Every switch continues from the current
  angle and extension; after ``circles`` the extension relaxes back to full over two frames.
  Measured mean ``|d angle|`` per frame (16 frames, sampled at whole frames), in units of
  ``v``: sweeps 0.85 (the turns fall between frames), circles 1.66 (at 60% extension, so the
  tip speed is 1.00 of the target), twitches 1.00; discs: oscillates 0.93, rotates 1.00.
* **Vocabulary**: ``["quartered-actor", "<X>-first", "then-<Y>", "banded-decoy-reversed"]``.

``binding_meta.json`` (``params`` has ``"style"``; ``"motions"`` are the style's,
``["sweeps", "circles", "twitches"]`` for squares, whose marks are ``"quadrants"`` (target)
and ``"bands"``)::

    {"params": {...}, "class_descriptions": [...], "motions": ["oscillates", "rotates", "folds"],
     "videos": {<vid_name>: {
        "label": c, "order": [X, Y],            # the class's motion names, target order
        "target": 0 | 1,                         # index into "actors" of the target
        "actors": [                              # sorted by the x of the body at frame 0
          {"role": "target" | "distractor", "mark": "checker" | "stripes",
           "order": [first, second], "switch_frame": k,  # frames >= k do the second motion
           "actor_boxes": [[x0, y0, x1, y1], ...],       # per frame: body + limb pixels
           "mark_boxes": [[x0, y0, x1, y1], ...],        # per frame: the mark square
           "angle": [...], "extension": [...]},          # per frame: limb state (rad, 0..1)
          {...}]}}}

Boxes are pixel boxes with exclusive ends (``img[y0:y1, x0:x1]``); actor boxes are the tight
box of the drawn body and limb pixels, inside the frame; the mark is drawn over the body's
centre and can stick out of the disc (a fraction of a pixel at 64 px, more at 48), but lay
inside its actor's box in every clip checked (6 x 100 clips at each of 48..128 px). A square
body is at least as wide as the mark, so there the mark is inside the body (and its box;
checked on 6 x 15 clips at each of 48, 50, 52, 56, 64, 80, 96, 112, 128, 144, 176 px).

**What the set tests**: whether a model binds *identity* (a small static pattern) to
*temporal order of a local motion*: pooled motion statistics, the set of motions present,
or where motion happens cannot tell ``(X, Y)`` from ``(Y, X)`` (a target-agnostic reader is
right about half the time between a class and its reverse); a global frame-difference
baseline is near chance. The tests (``tests/test_data_binding.py``) check this from the
generator state and from the pixels.

**What it does not test**: realistic appearance, articulated bodies, occlusion between actors
(they never overlap), camera zoom or cuts, long-range temporal reasoning (one switch, near
the middle), fine spatial localisation below the mark size, or robustness to flips (a flip
keeps the classes but swaps the side of the target; it does not break them). The marks are
always fully visible; a model may solve the set by finding the checkerboard and reading
the motion of the limb next to it, which is the intended skill.

Defaults: 6 classes x 200 videos (150 train + 50 test each), 16 frames, 64 x 64, seed 0:
1200 files (about 17 MB of mp4 and a 6 MB ``binding_meta.json``) in about 10 s on 2 cores
(18 s with ``workers=1``; the same bytes). ``style="squares"``: 1200 files (15 MB of mp4,
6 MB of metadata) in 19 s with ``workers=2`` on 2 cores that were also running another
job (not comparable with the 10 s above). Measured fairness (seed 0, see the tests;
thresholds fixed a priori: >= 0.95, <= 0.55, <= 0.3), discs / squares: nearest centroid on
the target's per-half limb signature 1.00 / 0.997; on a target-agnostic signature (sum of
both actors, or both by screen order) 0.51 / 0.50 and 0.52 / 0.51; the unordered pair from
that sum 1.00 / 1.00; on whole-frame frame-difference energy from the pixels 0.22 / 0.20
(chance 0.17).
"""

from __future__ import annotations

import colorsys
import math
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from .synthetic import _name, _texture, _write_mp4, prepare_layout, write_layout

__all__ = ["make_binding", "render_binding_clip", "draw_binding_clip", "binding_vocab",
           "MOTIONS", "SQUARES_MOTIONS", "STYLES", "STYLE_MOTIONS", "CLASS_ORDERS",
           "MAX_BINDING_CLASSES", "MIN_FRAMES", "MIN_SIZE"]

STYLES = ("discs", "squares")
MOTIONS = ("oscillates", "rotates", "folds")  # the discs style's (motion kinds 0, 1, 2)
SQUARES_MOTIONS = ("sweeps", "circles", "twitches")  # the squares style's (kinds 3, 4, 5)
STYLE_MOTIONS = {"discs": MOTIONS, "squares": SQUARES_MOTIONS}
# Per style: the index of its first motion kind in _motion, the (target, distractor) marks,
# and the first and last vocabulary tokens of every class.
_MOTION_BASE = {"discs": 0, "squares": 3}
_MARKS = {"discs": ("checker", "stripes"), "squares": ("quadrants", "bands")}
# actor placement, (candidate pairs per try, tries) (see _place)
_PLACEMENT = {"discs": (1, 10000), "squares": (4096, 2500)}
_TOKENS = {"discs": ("checkered-actor", "striped-decoy-reversed"),
           "squares": ("quartered-actor", "banded-decoy-reversed")}
CLASS_ORDERS = ((0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1))
MAX_BINDING_CLASSES = len(CLASS_ORDERS)
MIN_FRAMES = 8
MIN_SIZE = 48
_BODY_R = 0.09
_LIMB_L = 0.12
_LIMB_W = 0.035
_TIP_SPEED = 0.05  # mean limb-tip speed, frame sides per frame
_DRIFT = (0.02, 0.05)
_PAN = 0.3
_BLOB_R = (0.06, 0.09)
_LIGHTEN = 0.45  # squares: limb colour = body + 0.45 * (255 - body) (discs: 0.6 * body)
_CIRCLE_EXT = 0.6  # squares, "circles": the limb's extension while it turns


def binding_vocab(classes: int, style: str = "discs") -> list[list[str]]:
    """The 4 tokens of each of the first ``classes`` classes of ``style`` (the first and last
    are the same for every class; the middle two are the target's order)."""
    _check_style(style)
    _check_classes(classes)
    first, last = _TOKENS[style]
    names = STYLE_MOTIONS[style]
    return [[first, f"{names[x]}-first", f"then-{names[y]}", last]
            for x, y in CLASS_ORDERS[:classes]]


def _check_style(style: str) -> None:
    if not isinstance(style, str) or style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(map(repr, STYLES))}, "
                         f"got {style!r}")


def _check_classes(classes: int) -> None:
    if not 2 <= int(classes) <= MAX_BINDING_CLASSES:
        raise ValueError(f"classes must be in 2..{MAX_BINDING_CLASSES} (the ordered pairs of "
                         f"{len(MOTIONS)} motions), got {classes!r}")


def _check_shape(frames: int, size: int) -> None:
    if int(frames) < MIN_FRAMES:
        raise ValueError(f"frames must be >= {MIN_FRAMES} (two sub-motions of at least 4 "
                         f"frames each), got {frames!r}")
    if int(size) < MIN_SIZE or int(size) % 2:
        raise ValueError(f"size must be an even number >= {MIN_SIZE} (two actors side by side; "
                         f"yuv420p), got {size!r}")


def _geometry(size: int, style: str = "discs") -> dict[str, float]:
    """Sizes in pixels: disc radius ``r``, limb length ``l`` and width ``w``, mark side and
    ``reach`` (the radius around the body's centre that holds body and fully extended limb
    in any direction, plus half a pixel). ``squares``: half-side ``half`` (the square has the
    disc's area, but is at least as wide as the mark, so that the mark stays inside the
    body: that widens it at 48 and 50 px only); its reach uses the circumscribed radius
    ``half * sqrt(2)`` (the corner)."""
    s = float(size)
    r = _BODY_R * s
    length = _LIMB_L * s
    width = max(2.0, round(_LIMB_W * s))
    mark = 4 * max(1, round(s / 32))
    if style == "squares":
        half = max(r * math.sqrt(math.pi) / 2, mark / 2)
        return {"r": r, "half": half, "l": length, "w": width, "mark": mark,
                "reach": half * math.sqrt(2.0) + length + width / 2 + 0.5}
    return {"r": r, "l": length, "w": width, "mark": mark,
            "reach": r + length + width / 2 + 0.5}


def _motion(kind: int, theta_s: float, ext_s: float, n: int, p: dict[str, float]
            ) -> tuple[np.ndarray, np.ndarray]:
    """Angle and extension for ``tau = 0 .. n`` frames of motion ``kind`` from the state
    ``(theta_s, ext_s)`` at ``tau = 0`` (so a switch is continuous). Kinds 0-2 are the discs
    style's ``MOTIONS``, 3-5 the squares style's ``SQUARES_MOTIONS``."""
    tau = np.arange(n + 1, dtype=np.float64)
    relax = 1.0 - (1.0 - ext_s) * np.maximum(0.0, 1.0 - tau / 2.0)
    if kind == 0:  # oscillates
        theta = theta_s + p["osc_amp"] * np.sin(2 * math.pi * tau / p["osc_period"])
        return theta, relax
    if kind == 1:  # rotates
        return theta_s + p["rot_rate"] * tau, relax
    if kind == 2:  # folds
        ext = ext_s * (1.0 - p["fold_depth"]
                       * (1.0 - np.cos(2 * math.pi * tau / p["fold_period"])) / 2.0)
        return np.full(n + 1, theta_s), ext
    if kind == 3:  # sweeps: a triangle wave (0 at tau = 0, rising first) around theta_s
        x = tau / p["sweep_period"]
        tri = 4.0 * np.abs((x - 0.25) % 1.0 - 0.5) - 1.0
        return theta_s + p["sweep_amp"] * tri, relax
    if kind == 4:  # circles: constant rate, the limb at _CIRCLE_EXT (reached in two frames)
        ext = _CIRCLE_EXT + (ext_s - _CIRCLE_EXT) * np.maximum(0.0, 1.0 - tau / 2.0)
        return theta_s + p["circle_rate"] * tau, ext
    if kind == 5:  # twitches: hold for two frames, jump by twitch_step in the third
        return theta_s + p["twitch_step"] * np.floor(tau / 3.0), relax
    raise ValueError(f"unknown motion kind {kind!r}")


def _actor_params(size: int, frames: int, rng: np.random.Generator, style: str = "discs"
                  ) -> dict[str, float]:
    """Per-actor draws, from one distribution whatever the actor's role. ``v`` is the
    angular speed (rad per frame) that moves the tip of a limb of length ``l`` at
    ``_TIP_SPEED`` (the body's radius is left out); every motion's mean speed is ``v`` times
    a 0.9-1.1 jitter (for ``folds``, the relative length speed)."""
    g = _geometry(size, style)
    v = _TIP_SPEED * size / g["l"]  # mean angular (or relative length) speed per frame
    lo, hi = math.ceil(0.4 * frames), math.floor(0.6 * frames)
    p: dict[str, float] = {}
    p["theta0"] = 2 * math.pi * rng.random()
    if style == "discs":
        p["osc_period"] = 4.0 + 1.5 * rng.random()
        p["osc_amp"] = v * p["osc_period"] / 4.0 * (0.9 + 0.2 * rng.random())
        p["rot_rate"] = v * (0.9 + 0.2 * rng.random()) * (1.0 if rng.random() < 0.5 else -1.0)
        p["fold_period"] = 3.5 + rng.random()
        p["fold_depth"] = min(0.75, v * p["fold_period"] / 2.0 * (0.9 + 0.2 * rng.random()))
    else:  # squares
        p["sweep_period"] = 6.0 + 2.0 * rng.random()
        # a triangle wave of amplitude A and period P turns by 4 A per period
        p["sweep_amp"] = v * p["sweep_period"] / 4.0 * (0.9 + 0.2 * rng.random())
        p["circle_rate"] = (v / _CIRCLE_EXT * (0.9 + 0.2 * rng.random())
                            * (1.0 if rng.random() < 0.5 else -1.0))
        # one jump per three frames: mean |d angle| = step / 3
        p["twitch_step"] = (3.0 * v * (0.9 + 0.2 * rng.random())
                            * (1.0 if rng.random() < 0.5 else -1.0))
    p["switch"] = int(rng.integers(lo, hi + 1))
    return p


def _actor_track(order: tuple[int, int], frames: int, p: dict[str, float], base: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Limb angle and extension ``[frames]`` of an actor doing ``order[0]`` then ``order[1]``
    (indices into its style's motions, whose first kind in :func:`_motion` is ``base``)."""
    k = int(p["switch"])
    th1, ex1 = _motion(base + order[0], p["theta0"], 1.0, k, p)
    th2, ex2 = _motion(base + order[1], float(th1[-1]), float(ex1[-1]), frames - 1 - k, p)
    return np.concatenate([th1[:-1], th2]), np.concatenate([ex1[:-1], ex2])


def _place(d0: np.ndarray, d1: np.ndarray, reach: float, size: int,
           rng: np.random.Generator, batch: int, tries: int) -> list[np.ndarray]:
    """Start points of two actors drifting by ``d0`` and ``d1`` over the clip: uniform among
    those that keep both reaches inside the frame and the two disjoint over the clip
    (closest approach of the linear paths ``>= 2 reach + 1``), by rejection sampling with
    ``batch`` candidate pairs per try (each pair: actor 0's two coordinates, then actor 1's).
    The discs draw one pair per try, 10 000 tries (their set's bytes depend on this draw
    order: changing it changes every discs clip). The squares' larger reach leaves few
    feasible pairs: in the worst drift configuration about 1 in 1 000 at 64 px and a few in a
    million at 48 px (0.01-0.1 s per clip there), so they draw 4096 at a time. A feasible
    pair exists for every drift at every allowed size (checked on a grid of drifts: at 48 px
    the best placement of the squares clears the required distance by 0.8 px)."""
    boxes = []
    for d in (d0, d1):
        boxes.append((reach - np.minimum(d, 0.0), (size - reach) - np.maximum(d, 0.0)))
    dr = d0 - d1
    den = float(dr @ dr)
    for _ in range(tries):
        c0, c1 = (lo + (hi - lo) * rng.random((batch, 2)) for lo, hi in boxes)
        r0 = c0 - c1
        t = np.zeros(batch) if den == 0 else np.clip(-(r0 @ dr) / den, 0.0, 1.0)
        ok = np.flatnonzero(np.linalg.norm(r0 + t[:, None] * dr, axis=1) >= 2 * reach + 1.0)
        if ok.size:
            return [c0[ok[0]], c1[ok[0]]]
    raise RuntimeError("could not place two non-overlapping actors")  # pragma: no cover


def draw_binding_clip(label: int, frames: int, size: int, rng: np.random.Generator,
                      style: str = "discs") -> dict[str, Any]:
    """All random draws of one clip of class ``label`` in ``style`` (no pixels): the spec that
    :func:`render_binding_clip` paints. Its ``"actors"`` (target first here) carry the
    per-frame limb state ``angle``/``extension`` and the centre path ``center``. ``style``
    ``"discs"`` makes the same draws in the same order as before styles existed."""
    _check_style(style)
    if not 0 <= int(label) < MAX_BINDING_CLASSES:
        raise ValueError(f"label must be in 0..{MAX_BINDING_CLASSES - 1}, got {label!r}")
    _check_shape(frames, size)
    s, f = int(size), int(frames)
    g = _geometry(s, style)
    x, y = CLASS_ORDERS[int(label)]
    t = np.arange(f, dtype=np.float64) / (f - 1)
    # Background pan (as in the displacement set).
    pan = _PAN * s * rng.random()
    ang = 2 * math.pi * rng.random()
    margin = int(math.ceil(pan)) + 1
    tex = _texture(s + 2 * margin, rng)
    pan_dir = np.array([math.cos(ang), math.sin(ang)])
    pan_xy = np.round(margin + pan_dir[None, :] * pan * (t[:, None] - 0.5)).astype(np.int64)
    # Actors: target (X then Y) and distractor (Y then X), same draws otherwise.
    hue = rng.random()
    actors = []
    t_mark, d_mark = _MARKS[style]
    for role, order, mark in (("target", (x, y), t_mark), ("distractor", (y, x), d_mark)):
        p = _actor_params(s, f, rng, style)
        theta, ext = _actor_track(order, f, p, _MOTION_BASE[style])
        h = (hue + 0.06 * (rng.random() - 0.5)) % 1.0
        rgb = np.array(colorsys.hsv_to_rgb(h, 0.55 + 0.2 * rng.random(),
                                           0.7 + 0.15 * rng.random())) * 255.0
        dlen = s * (_DRIFT[0] + (_DRIFT[1] - _DRIFT[0]) * rng.random())
        dang = 2 * math.pi * rng.random()
        actors.append({"role": role, "order": order, "mark": mark, "params": p,
                       "angle": theta, "extension": ext, "color": rgb,
                       "drift": dlen * np.array([math.cos(dang), math.sin(dang)])})
    reach = g["reach"]
    starts = _place(actors[0]["drift"], actors[1]["drift"], reach, s, rng, *_PLACEMENT[style])
    for a, c0 in zip(actors, starts):
        a["center"] = c0[None, :] + t[:, None] * a["drift"][None, :]
    # Unrelated blobs on straight paths.
    blobs = []
    for _ in range(int(rng.integers(1, 3))):
        r = s * (_BLOB_R[0] + (_BLOB_R[1] - _BLOB_R[0]) * rng.random())
        p0, p1 = rng.random(2) * s, rng.random(2) * s
        blobs.append({"r": r, "color": rng.random(3) * 255.0,
                      "center": p0[None, :] + t[:, None] * (p1 - p0)[None, :]})
    return {"label": int(label), "order": (x, y), "style": style, "frames": f, "size": s,
            "geometry": g, "texture": tex, "pan_xy": pan_xy, "actors": actors, "blobs": blobs}


def _disc(img: np.ndarray, cx: float, cy: float, r: float, col: np.ndarray,
          mask: np.ndarray | None = None, square: bool = False) -> None:
    """A filled disc of radius ``r`` (pixel centres within it), or with ``square`` an
    axis-aligned square of half-side ``r``, painted ``col``; ``mask`` gets its pixels."""
    s = img.shape[0]
    x0, x1 = max(0, int(cx - r) - 1), min(s, int(cx + r) + 2)
    y0, y1 = max(0, int(cy - r) - 1), min(s, int(cy + r) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    m = (np.abs(dx) <= r) & (np.abs(dy) <= r) if square else dx ** 2 + dy ** 2 <= r * r
    img[y0:y1, x0:x1][m] = col
    if mask is not None:
        mask[y0:y1, x0:x1] |= m


def _capsule(img: np.ndarray, a: np.ndarray, b: np.ndarray, half_w: float, col: np.ndarray,
             mask: np.ndarray) -> None:
    s = img.shape[0]
    x0 = max(0, int(min(a[0], b[0]) - half_w) - 1)
    x1 = min(s, int(max(a[0], b[0]) + half_w) + 2)
    y0 = max(0, int(min(a[1], b[1]) - half_w) - 1)
    y1 = min(s, int(max(a[1], b[1]) + half_w) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    px, py = xx + 0.5 - a[0], yy + 0.5 - a[1]
    d = b - a
    den = float(d @ d)
    u = np.clip((px * d[0] + py * d[1]) / den, 0.0, 1.0) if den > 0 else np.zeros_like(px)
    m = (px - u * d[0]) ** 2 + (py - u * d[1]) ** 2 <= half_w * half_w
    img[y0:y1, x0:x1][m] = col
    mask[y0:y1, x0:x1] |= m


def _body_edge(g: dict[str, float], u: np.ndarray) -> float:
    """Distance from the body's centre to its boundary along the unit vector ``u``: the disc's
    radius, or for a square (``g`` has ``half``) half-side .. half-side * sqrt(2). The limb's
    capsule runs from ``edge - w / 2`` to ``edge + l * extension`` along ``u``."""
    if "half" in g:
        return g["half"] / max(abs(float(u[0])), abs(float(u[1])))
    return g["r"]


def _mark_pattern(kind: str, side: int) -> np.ndarray:
    """The ``side x side`` mark ``kind`` (0 or 255, float64): ``checker`` (cells of a quarter
    of the side), ``stripes`` (vertical, a quarter), ``quadrants`` (a 2 x 2 checkerboard, cells
    of half the side), ``bands`` (horizontal, a quarter). ``side`` a multiple of 4 (as every
    mark side ``4 * round(S / 32)`` is): each is exactly half 0, half 255."""
    if side < 4 or side % 4:
        raise ValueError(f"mark side must be a positive multiple of 4, got {side!r}")
    cell = side // 4
    yy, xx = np.mgrid[0:side, 0:side]
    if kind == "checker":
        pat = ((yy // cell) + (xx // cell)) % 2
    elif kind == "stripes":
        pat = (xx // cell) % 2
    elif kind == "quadrants":
        pat = ((yy // (2 * cell)) + (xx // (2 * cell))) % 2
    elif kind == "bands":
        pat = (yy // cell) % 2
    else:
        raise ValueError(f"unknown mark kind {kind!r}")
    assert 2 * int(pat.sum()) == side * side, (kind, side)
    return (pat * 255).astype(np.float64)


def render_binding_clip(label: int, frames: int, size: int, rng: np.random.Generator,
                        style: str = "discs") -> tuple[np.ndarray, dict[str, Any]]:
    """One clip of class ``label`` in ``style`` (``"discs"`` or ``"squares"``): RGB uint8
    ``[frames, size, size, 3]`` and its metadata (the per-video entry of
    ``binding_meta.json``, with numpy arrays: ``actors[i]`` has ``actor_boxes`` and
    ``mark_boxes`` ``[frames, 4]`` int and ``angle``/``extension`` ``[frames]`` float; see
    the module docstring)."""
    spec = draw_binding_clip(label, frames, size, rng, style)
    s, f, g = spec["size"], spec["frames"], spec["geometry"]
    squares = spec["style"] == "squares"
    names = STYLE_MOTIONS[spec["style"]]
    side = int(g["mark"])
    out = np.empty((f, s, s, 3), np.uint8)
    boxes = {id(a): ([], []) for a in spec["actors"]}
    patterns = {a["mark"]: _mark_pattern(a["mark"], side)[..., None] for a in spec["actors"]}
    for fi in range(f):
        ox, oy = spec["pan_xy"][fi]
        img = spec["texture"][oy:oy + s, ox:ox + s].copy()
        for b in spec["blobs"]:
            cx, cy = b["center"][fi]
            _disc(img, cx, cy, b["r"], b["color"])
        marks = []
        for a in spec["actors"]:
            cx, cy = a["center"][fi]
            mask = np.zeros((s, s), bool)
            u = np.array([math.cos(a["angle"][fi]), math.sin(a["angle"][fi])])
            c = np.array([cx, cy])
            if squares:
                _disc(img, cx, cy, g["half"], a["color"], mask, square=True)
                limb_col = a["color"] + _LIGHTEN * (255.0 - a["color"])
            else:
                _disc(img, cx, cy, g["r"], a["color"], mask)
                limb_col = 0.6 * a["color"]
            edge = _body_edge(g, u)
            base = c + u * (edge - g["w"] / 2)
            tip = c + u * (edge + g["l"] * a["extension"][fi])
            _capsule(img, base, tip, g["w"] / 2, limb_col, mask)
            ys, xs = np.nonzero(mask)
            abox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
            mx, my = int(round(cx - side / 2)), int(round(cy - side / 2))
            marks.append((a, mx, my))
            boxes[id(a)][0].append(abox)
            boxes[id(a)][1].append([mx, my, mx + side, my + side])
        for a, mx, my in marks:
            img[my:my + side, mx:mx + side] = patterns[a["mark"]]
        out[fi] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    # Actors sorted by screen x at frame 0 (so "target" says which side it is on).
    actors = sorted(spec["actors"], key=lambda a: float(a["center"][0, 0]))
    meta = {"label": spec["label"], "order": [names[i] for i in spec["order"]],
            "target": [a["role"] for a in actors].index("target"), "actors": []}
    for a in actors:
        meta["actors"].append({
            "role": a["role"], "mark": a["mark"], "order": [names[i] for i in a["order"]],
            "switch_frame": int(a["params"]["switch"]),
            "actor_boxes": np.array(boxes[id(a)][0], np.int64),
            "mark_boxes": np.array(boxes[id(a)][1], np.int64),
            "angle": a["angle"].copy(), "extension": a["extension"].copy()})
    return out, meta


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    out = dict(meta)
    out["actors"] = []
    for a in meta["actors"]:
        b = dict(a)
        b["actor_boxes"] = a["actor_boxes"].tolist()
        b["mark_boxes"] = a["mark_boxes"].tolist()
        b["angle"] = [round(float(v), 5) for v in a["angle"]]
        b["extension"] = [round(float(v), 5) for v in a["extension"]]
        out["actors"].append(b)
    return out


def _make_one(job: tuple[str, int, int, int, int, int, str, dict[str, str], str]
              ) -> tuple[str, dict[str, Any]]:
    video_dir, seed, c, i, frames, size, codec, options, style = job
    rng = np.random.default_rng([seed, c, i])
    clip, meta = render_binding_clip(c, frames, size, rng, style)
    name = _name(c, i)
    _write_mp4(os.path.join(video_dir, name + ".mp4"), clip, codec, options)
    return name, _jsonable(meta)


def make_binding(out_dir: str | os.PathLike[str], *, classes: int = 6,
                 videos_per_class: int = 200, frames: int = 16, size: int = 64,
                 test_fraction: float = 0.25, seed: int = 0, workers: int | None = None,
                 style: str = "discs", verbose: bool = False) -> dict[str, Any]:
    """Write the binding set (see the module docstring) and return a summary.

    Args:
        out_dir: output folder (created; files of an earlier run are overwritten).
        classes: number of classes, 2..6 (ordered pairs of the 3 motions).
        videos_per_class: clips per class (train + test), >= 2.
        frames: frames per clip (>= 8).
        size: frame side in pixels (even, >= 48).
        test_fraction: fraction of each class in the test split (the last clips of each class).
        seed: generation seed (clip ``i`` of class ``c`` uses ``default_rng([seed, c, i])``).
        workers: processes (default: the CPU count); the files do not depend on it.
        style: the rendering, ``"discs"`` (the original set, same bytes as before styles
            existed) or ``"squares"`` (other actors, marks and motions; module docstring).

    Returns:
        dict with ``out_dir``, ``classes`` (descriptions), ``vocab``, ``num_train``,
        ``num_test``, ``frames``, ``size``, ``seed``, ``style``, ``codec``, ``workers``,
        ``seconds``.
    """

    _check_style(style)
    _check_classes(classes)
    if int(videos_per_class) < 2:
        raise ValueError(f"videos_per_class must be >= 2 (train + test), got "
                         f"{videos_per_class!r}")
    _check_shape(frames, size)
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    workers = int(workers) if workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    t0 = time.perf_counter()
    out_dir, video_dir, codec, options, n_train = prepare_layout(out_dir, videos_per_class,
                                                                 test_fraction)
    vocab = binding_vocab(int(classes), style)
    jobs = [(video_dir, int(seed), c, i, int(frames), int(size), codec, options, style)
            for c in range(int(classes)) for i in range(int(videos_per_class))]
    if workers == 1:
        results = [_make_one(j) for j in jobs]
    else:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            results = list(ex.map(_make_one, jobs, chunksize=8))
    train, test, meta_videos = [], [], {}
    for (_, _, c, i, *_rest), (name, meta) in zip(jobs, results):
        entry = {"vid_name": name, "label": c, "start_frame": 0, "end_frame": int(frames)}
        (train if i < n_train else test).append(entry)
        meta_videos[name] = meta
    if verbose:
        print(f"binding: {len(jobs)} clips written", file=sys.stderr)

    params = {"kind": "binding", "style": style, "classes": int(classes),
              "videos_per_class": int(videos_per_class), "frames": int(frames),
              "size": int(size), "seed": int(seed), "test_fraction": float(test_fraction),
              "codec": codec, "encoder_options": options}
    sentences = write_layout(out_dir, train, test, vocab, "binding_meta.json",
                             {"params": params, "motions": list(STYLE_MOTIONS[style])},
                             meta_videos)
    return {"out_dir": os.path.abspath(out_dir), "classes": sentences, "vocab": vocab,
            "num_train": len(train), "num_test": len(test), "frames": int(frames),
            "size": int(size), "seed": int(seed), "style": style, "codec": codec,
            "workers": workers,
            "seconds": round(time.perf_counter() - t0, 2)}
