"""Readers of the official dataset files (no conversion step), formats as in DESIGN §5.

Every reader is a :class:`~art_fast.data.base.VideoClassificationDataset`: keyword options
(``num_frames``, ``train``, ``image_size``, ``sampling``, ``views``, ``hflip``, ``seed``,
``output_dir``, ``max_bad_fraction``, ...) are passed through to it, ``train`` defaults to
``split == "train"``, and every reader exposes ``.classes`` (distinct class descriptions, for
the text bank), ``.labels``, ``.missing`` (clips listed but absent, skipped) and yields
``(uint8 video, int label)``.

Layouts (``video_dir=`` overrides where the videos are looked up):

* ``Diving48(root, split)``: ``root/Diving48_V2_{train,test}.json`` (lists of {vid_name,
  label, start_frame, end_frame}) and ``root/Diving48_vocab.json`` (48 lists of 4 tokens);
  videos ``root/rgb/<vid_name>.mp4`` when ``root/rgb`` is a directory (the layout of the
  official ``Diving48_rgb.tar.gz``), else ``root/<vid_name>.mp4``. Frames are sampled from
  ``[start_frame, end_frame)`` (end exclusive, clipped to the decoded frame count).
  Class descriptions: :func:`diving48_sentence` of the vocabulary tokens. Optional
  ``root/binding_meta.json``: per-frame target boxes (see :class:`Diving48`).
* ``FineGym(root, split, variant=99|288)``: ``gym{V}_train_element_v1.1.txt`` /
  ``gym{V}_val_element.txt`` (lines ``<element_id> <label>``) and ``gym{V}_categories.txt``
  (lines ``Clabel: N; set: S; Glabel: G; (EV) description``), in ``root`` or
  ``root/annotations``; clips ``root/<element_id>.mp4``. Identical descriptions (Gym288 has
  three pairs) are made distinct by :func:`finegym_classes`.
* ``SomethingSomethingV2(root, split)``: ``something-something-v2-{labels,train,validation}.json``
  in ``root`` or ``root/labels`` (also the short names ``labels.json``, ``train.json``,
  ``validation.json`` there); videos ``<id>.webm`` in ``root/20bn-something-something-v2``,
  ``root/videos`` or ``root`` (the first that exists). Classes: the label templates, by index.
* ``Kinetics400(root, split)``: the split's CSV (``train.csv``, ``validate.csv``/``val.csv``,
  ``test.csv`` in ``root`` or ``root/annotations``, or ``annotation_file=``) read by header name
  (label, youtube_id, time_start, time_end); clips ``<youtube_id>_<start:06d>_<end:06d>.mp4``
  (or .webm/.mkv/.avi), flat or in class folders, under ``root/<split>`` when it exists, else
  ``root``. Classes: the labels of ``train.csv`` (the split's own CSV when there is no
  train.csv), sorted alphabetically.
* ``VideoList(list_file, root=None, class_csv=None)``: lines ``<path> <label>`` split on the
  last whitespace (paths may contain spaces); relative paths are relative to ``root`` or, when
  None, to the list file's folder. Labels are class ids (ints) or class names. ``class_csv``:
  ``id,name`` rows (an optional header row is skipped), ids 0..C-1.

Labels given as ids must be non-negative integers written as such: ``2.7``, ``3.0``, ``true``,
``-1``, ``1e3`` are errors naming the file and the line (the entry, in a JSON list). A
:class:`VideoList` without ``class_csv`` takes either integer ids or class names, never both
in one list, and a name may not look like a number or a boolean.

Video names may start with '-' or '_': paths are only ever joined and passed to the decoders as
absolute file names, never to anything that parses options.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .base import VideoClassificationDataset, VideoSample

__all__ = [
    "Diving48",
    "FineGym",
    "SomethingSomethingV2",
    "Kinetics400",
    "VideoList",
    "diving48_sentence",
    "finegym_classes",
    "parse_finegym_categories",
    "read_target_boxes",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

_VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov")


def _first_existing(candidates: Sequence[str], what: str) -> str:
    for c in candidates:
        if os.path.isfile(c):
            return c
    listed = "\n  ".join(candidates)
    raise FileNotFoundError(f"{what} not found; looked for:\n  {listed}")


def _load_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc


_INT_RE = re.compile(r"^[0-9]+$")


def _int_label(value: Any, where: str) -> int:
    """A class id: an ``int`` (not a bool) >= 0, or a string of ASCII digits; anything else
    (``2.7``, ``true``, ``"3.0"``, ``-1``) is a ValueError naming ``where``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return int(value)
    if isinstance(value, str) and _INT_RE.match(value.strip()):
        return int(value.strip())
    raise ValueError(f"{where}: label {value!r} is not an integer class id (0, 1, 2, ...)")


def _number_or_bool(text: str) -> bool:
    """Whether a label text reads as a number or a boolean (never a class name)."""
    if text.lower() in ("true", "false"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _default_train(split: str, options: dict[str, Any]) -> dict[str, Any]:
    options = dict(options)
    options.setdefault("train", split == "train")
    return options


# -------------------------------------------------------------------------------- Diving48

_TAKEOFF = {"Back": "back", "Forward": "forward", "Inward": "inward", "Reverse": "reverse"}
_HALVES = {0: "no", 1: "half a", 2: "one", 3: "one and a half", 4: "two", 5: "two and a half",
           6: "three", 7: "three and a half", 8: "four", 9: "four and a half"}
_SOMERSAULT = {"Dive": "half a somersault", "1som": "one somersault"}
_SOMERSAULT.update({f"{k}som": f"{_HALVES[h]} somersaults"
                    for k, h in (("15", 3), ("2", 4), ("25", 5), ("3", 6), ("35", 7), ("4", 8),
                                 ("45", 9))})
_TWIST = {"NoTwis": "no twist", "05Twis": "half a twist", "1Twis": "one twist"}
_TWIST.update({f"{k}Twis": f"{_HALVES[h]} twists"
               for k, h in (("15", 3), ("2", 4), ("25", 5), ("3", 6), ("35", 7), ("4", 8))})
_POSITION = {"FREE": "free position", "PIKE": "pike position", "STR": "straight position",
             "TUCK": "tuck position"}


def diving48_sentence(tokens: Sequence[str]) -> str:
    """A readable description of a Diving48 class from its four vocabulary tokens
    (take-off, somersaults, twists, position).

    ``['Inward', '25som', 'NoTwis', 'PIKE']`` -> ``"inward take-off, two and a half
    somersaults, no twist, pike position"``. ``Dive`` (FINA's plain dive) is half a somersault.
    An unknown token (e.g. of the synthetic set) is used as it is.
    """
    if len(tokens) != 4:
        raise ValueError(f"a Diving48 class has 4 tokens (take-off, somersaults, twists, "
                         f"position), got {list(tokens)!r}")
    take, som, twist, pos = (str(t) for t in tokens)
    parts = [
        f"{_TAKEOFF[take]} take-off" if take in _TAKEOFF else take,
        _SOMERSAULT.get(som, som),
        _TWIST.get(twist, twist),
        _POSITION.get(pos, pos),
    ]
    return ", ".join(parts)


class Diving48(VideoClassificationDataset):
    """Diving48 V2 from its official files (see the module docstring for the layout).

    Args:
        root: folder with ``Diving48_V2_{train,test}.json`` and ``Diving48_vocab.json``.
        split: ``"train"`` or ``"test"`` (``"val"`` is accepted for ``"test"``).
        video_dir: where ``<vid_name>.mp4`` are (default: ``root/rgb`` if it exists, else
            ``root``).
        **options: :class:`~art_fast.data.base.VideoClassificationDataset` options.

    Target boxes: when ``root/binding_meta.json`` exists (the binding set of
    :mod:`art_fast.data.binding` writes it; any other set can provide the same minimal
    format), it is read at construction and fills ``target_boxes`` (``has_boxes`` is then
    True; see :meth:`~art_fast.data.base.VideoClassificationDataset.get_with_boxes`). Only
    these fields are required (others are ignored)::

        {"videos": {
            "<vid_name>": {
                "target": i,                       # index into "actors" of the target
                "actors": [{"actor_boxes": [[x0, y0, x1, y1] or null, ...]}, ...]},
            ...}}

    ``actor_boxes`` holds one box per frame of the video file (F boxes for an F-frame file;
    null: no box in that frame), in the file's pixels, ``x0 <= x1``, ``y0 <= y1``, exclusive
    ends (the box covers ``img[y0:y1, x0:x1]``). A file that is not valid JSON or breaks this
    format raises ValueError naming the file and the problem (at construction; a box count
    that differs from the decoded frame count, when the clip is loaded with its boxes).
    Videos of the split with no entry have no boxes (a warning counts them). No file: no
    boxes (``has_boxes`` False).
    """

    BOX_FILE = "binding_meta.json"

    def __init__(self, root: PathLike, split: str = "train", *, video_dir: PathLike | None = None,
                 **options: Any) -> None:
        root = os.fspath(root)
        names = {"train": "train", "test": "test", "val": "test", "validation": "test"}
        if split not in names:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        ann = _first_existing([os.path.join(root, f"Diving48_V2_{names[split]}.json")],
                              f"Diving48 {split} annotations")
        vocab_file = _first_existing([os.path.join(root, "Diving48_vocab.json")],
                                     "Diving48 vocabulary")
        vocab = _load_json(vocab_file)
        if not isinstance(vocab, list) or not all(isinstance(v, list) for v in vocab):
            raise ValueError(f"{vocab_file}: expected a list of token lists")
        self.vocab: list[list[str]] = [[str(t) for t in v] for v in vocab]
        classes = [diving48_sentence(v) for v in self.vocab]
        if video_dir is None:
            rgb = os.path.join(root, "rgb")
            video_dir = rgb if os.path.isdir(rgb) else root
        self.video_dir = os.path.abspath(os.fspath(video_dir))
        entries = _load_json(ann)
        if not isinstance(entries, list):
            raise ValueError(f"{ann}: expected a list of {{vid_name, label, start_frame, "
                             f"end_frame}}")
        samples, vid_names = [], []
        for k, e in enumerate(entries):
            try:
                name, raw_label = str(e["vid_name"]), e["label"]
                start = int(e.get("start_frame", 0) or 0)
                end = e.get("end_frame")
                end = int(end) if end is not None else None
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{ann}: entry {k} ({e!r}) lacks vid_name/label or has bad "
                                 f"values: {exc}") from exc
            label = _int_label(raw_label, f"{ann}: entry {k} (vid_name {name!r})")
            if end is not None and end <= start:
                end = None
            samples.append(VideoSample(os.path.join(self.video_dir, name + ".mp4"), label,
                                       start, end))
            vid_names.append(name)
        self.split = split
        super().__init__(samples, classes, **_default_train(split, options))
        box_file = os.path.join(root, self.BOX_FILE)
        if os.path.isfile(box_file):
            boxes = read_target_boxes(box_file)
            name_of = {s.path: n for s, n in zip(samples, vid_names)}
            kept = [name_of[s.path] for s in self.samples]
            self.target_boxes = {s.path: boxes[n] for s, n in zip(self.samples, kept)
                                 if n in boxes}
            self.box_file = box_file
            lacking = len(kept) - len(self.target_boxes)
            if lacking:
                logger.warning("Diving48 %s: %d of %d videos have no entry in %s (no target "
                               "boxes for them)", split, lacking, len(kept), box_file)


def read_target_boxes(path: PathLike) -> dict[str, np.ndarray]:
    """The target boxes of a ``binding_meta.json`` (the minimal format of :class:`Diving48`).

    Returns:
        ``{vid_name: float32 [F, 4]}``, ``x0, y0, x1, y1`` per frame (NaN rows for null).

    Raises:
        ValueError: not valid JSON, or a required field missing or malformed (the message
            names the file, the video and the problem).
    """
    path = os.fspath(path)
    meta = _load_json(path)
    fmt = ('{"videos": {<vid_name>: {"target": i, "actors": [{"actor_boxes": [[x0, y0, x1, '
           'y1] or null, ...]}, ...]}}}')
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise ValueError(f"{path}: expected an object with a 'videos' object, {fmt}")
    out: dict[str, np.ndarray] = {}
    for name, v in meta["videos"].items():
        where = f"{path}: videos[{name!r}]"
        if not isinstance(v, dict):
            raise ValueError(f"{where} must be an object with 'target' and 'actors'")
        actors, target = v.get("actors"), v.get("target")
        if not isinstance(actors, list) or not actors:
            raise ValueError(f"{where}: 'actors' must be a non-empty list, got {actors!r:.80}")
        if isinstance(target, bool) or not isinstance(target, int) or not (
                0 <= target < len(actors)):
            raise ValueError(f"{where}: 'target' must be an index into its {len(actors)} "
                             f"actors, got {target!r:.80}")
        actor = actors[target]
        rows = actor.get("actor_boxes") if isinstance(actor, dict) else None
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"{where}: actors[{target}] (the target) must have a non-empty "
                             f"'actor_boxes' list")
        arr = np.full((len(rows), 4), np.nan, dtype=np.float64)
        for f, b in enumerate(rows):
            if b is None:
                continue
            ok = (isinstance(b, list) and len(b) == 4
                  and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b))
            if ok:
                arr[f] = b
                ok = bool(np.isfinite(arr[f]).all() and arr[f, 2] >= arr[f, 0]
                          and arr[f, 3] >= arr[f, 1])
            if not ok:
                raise ValueError(f"{where}: actors[{target}].actor_boxes[{f}] must be null or "
                                 f"[x0, y0, x1, y1] (finite numbers, x0 <= x1, y0 <= y1), got "
                                 f"{b!r:.80}")
        out[str(name)] = arr.astype(np.float32)
    return out


# -------------------------------------------------------------------------------- FineGym

_EVENTS = {"VT": "vault", "FX": "floor exercise", "BB": "balance beam", "UB": "uneven bars"}
_CATEGORY_RE = re.compile(
    r"^\s*Clabel:\s*(\d+)\s*;\s*set:\s*(\d+)\s*;\s*Glabel:\s*(\d+)\s*;\s*"
    r"(?:\((\w+)\)\s*)?(.*?)\s*$")


def parse_finegym_categories(path: PathLike) -> list[dict[str, Any]]:
    """Rows of a ``gym{99,288}_categories.txt``: dicts with ``clabel``, ``set``, ``glabel``,
    ``event`` (code such as ``"VT"``, or ``""``) and ``description``, sorted by ``clabel``."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            m = _CATEGORY_RE.match(line)
            if m is None:
                raise ValueError(f"{path}:{n}: expected 'Clabel: N; set: S; Glabel: G; (EV) "
                                 f"description', got {line.strip()!r}")
            rows.append({"clabel": int(m[1]), "set": int(m[2]), "glabel": int(m[3]),
                         "event": m[4] or "", "description": m[5]})
    rows.sort(key=lambda r: r["clabel"])
    if [r["clabel"] for r in rows] != list(range(len(rows))):
        raise ValueError(f"{path}: Clabel values must be 0..{len(rows) - 1} with no gaps")
    return rows


def finegym_classes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Distinct class descriptions from parsed category rows.

    A description used by one class is kept as it is. Classes sharing a description (Gym288
    has three such pairs) get a suffix that tells them apart, the first that differs within
    the group among: the event (``" (vault)"``), the set (``" (set 21)"``), the element
    (``" (element 93)"``), and finally the class number (``" (class 17)"``).
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[r["description"]].append(i)
    out = [r["description"] for r in rows]
    for desc, idx in groups.items():
        if len(idx) < 2:
            continue
        keys = [
            lambda r: _EVENTS.get(r["event"], r["event"]),
            lambda r: f"set {r['set']}",
            lambda r: f"element {r['glabel']}",
            lambda r: f"class {r['clabel']}",
        ]
        for key in keys:
            vals = [key(rows[i]) for i in idx]
            if len(set(vals)) == len(vals) and all(vals):
                for i, v in zip(idx, vals):
                    out[i] = f"{desc} ({v})"
                break
    return out


class FineGym(VideoClassificationDataset):
    """FineGym element clips (Gym99 or Gym288) from the official annotation files.

    Args:
        root: folder with ``gym{V}_*.txt`` (or ``root/annotations``) and the clips
            ``<element_id>.mp4``.
        split: ``"train"`` (``gym{V}_train_element_v1.1.txt``) or ``"val"``
            (``gym{V}_val_element.txt``; ``"test"`` is accepted too).
        variant: 99 or 288.
        video_dir: where the clips are (default ``root``).
        **options: :class:`~art_fast.data.base.VideoClassificationDataset` options.

    Clips listed but absent (FineGym's YouTube sources are partly gone) are counted in
    ``.missing`` and skipped.
    """

    def __init__(self, root: PathLike, split: str = "train", variant: int = 99, *,
                 video_dir: PathLike | None = None, **options: Any) -> None:
        root = os.fspath(root)
        if variant not in (99, 288):
            raise ValueError(f"variant must be 99 or 288, got {variant!r}")
        files = {"train": f"gym{variant}_train_element_v1.1.txt",
                 "val": f"gym{variant}_val_element.txt"}
        key = {"train": "train", "val": "val", "test": "val", "validation": "val"}.get(split)
        if key is None:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        dirs = [root, os.path.join(root, "annotations")]
        ann = _first_existing([os.path.join(d, files[key]) for d in dirs],
                              f"FineGym {variant} {split} list")
        cat = _first_existing([os.path.join(d, f"gym{variant}_categories.txt") for d in dirs],
                              f"FineGym {variant} categories")
        self.categories = parse_finegym_categories(cat)
        classes = finegym_classes(self.categories)
        self.video_dir = os.path.abspath(os.fspath(video_dir if video_dir is not None else root))
        samples = []
        with open(ann, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise ValueError(f"{ann}:{n}: expected '<element_id> <label>', got "
                                     f"{line.strip()!r}")
                label = _int_label(parts[1], f"{ann}:{n}")
                samples.append(VideoSample(os.path.join(self.video_dir, parts[0] + ".mp4"),
                                           label))
        self.split, self.variant = split, variant
        super().__init__(samples, classes, **_default_train(split, options))


# ------------------------------------------------------------------------ Something-Something


class SomethingSomethingV2(VideoClassificationDataset):
    """Something-Something v2 from its official JSON files (see the module docstring).

    Args:
        root: dataset folder.
        split: ``"train"`` or ``"validation"`` (``"val"`` accepted).
        video_dir: where ``<id>.webm`` are.
        **options: :class:`~art_fast.data.base.VideoClassificationDataset` options.
    """

    def __init__(self, root: PathLike, split: str = "train", *, video_dir: PathLike | None = None,
                 **options: Any) -> None:
        root = os.fspath(root)
        key = {"train": "train", "val": "validation", "validation": "validation"}.get(split)
        if key is None:
            raise ValueError(f"split must be 'train' or 'validation', got {split!r} (the test "
                             f"split has no labels)")

        def candidates(name: str) -> list[str]:
            return [os.path.join(root, f"something-something-v2-{name}.json"),
                    os.path.join(root, "labels", f"something-something-v2-{name}.json"),
                    os.path.join(root, "labels", f"{name}.json")]

        labels_file = _first_existing(candidates("labels"), "Something-Something v2 labels")
        ann = _first_existing(candidates(key), f"Something-Something v2 {key} list")
        table = _load_json(labels_file)
        if not isinstance(table, dict):
            raise ValueError(f"{labels_file}: expected {{template: index}}")
        index = {str(k): _int_label(v, f"{labels_file}: template {k!r}")
                 for k, v in table.items()}
        if sorted(index.values()) != list(range(len(index))):
            raise ValueError(f"{labels_file}: indices must be 0..{len(index) - 1}")
        classes = [""] * len(index)
        for text, i in index.items():
            classes[i] = text
        if video_dir is None:
            video_dir = next((d for d in (os.path.join(root, "20bn-something-something-v2"),
                                          os.path.join(root, "videos")) if os.path.isdir(d)),
                             root)
        self.video_dir = os.path.abspath(os.fspath(video_dir))
        entries = _load_json(ann)
        samples = []
        for k, e in enumerate(entries):
            try:
                vid, template = str(e["id"]), str(e["template"])
            except (KeyError, TypeError) as exc:
                raise ValueError(f"{ann}: entry {k} ({e!r}) lacks id/template") from exc
            text = template.replace("[", "").replace("]", "")
            if text not in index:
                raise ValueError(f"{ann}: entry {k} (id {vid}): template {text!r} is not in "
                                 f"{labels_file}")
            samples.append(VideoSample(os.path.join(self.video_dir, vid + ".webm"), index[text]))
        self.split = split
        super().__init__(samples, classes, **_default_train(split, options))


# ------------------------------------------------------------------------------- Kinetics


def _index_videos(directory: str, depth: int = 2) -> dict[str, str]:
    """Map file stem -> path for video files in ``directory`` and its subfolders (``depth``
    levels: flat or class folders). ``.mp4`` wins over other extensions."""
    found: dict[str, str] = {}

    def walk(d: str, level: int) -> None:
        try:
            entries = list(os.scandir(d))
        except OSError:
            return
        for e in entries:
            if e.is_dir(follow_symlinks=True):
                if level < depth:
                    walk(e.path, level + 1)
                continue
            stem, ext = os.path.splitext(e.name)
            if ext.lower() in _VIDEO_EXTS and (stem not in found or ext.lower() == ".mp4"):
                found[stem] = e.path

    walk(directory, 0)
    return found


def _read_kinetics_csv(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        fields = [h.strip() for h in (reader.fieldnames or [])]
        need = ("label", "youtube_id", "time_start", "time_end")
        lacking = [c for c in need if c not in fields]
        if lacking:
            raise ValueError(f"{path}: CSV header {fields} lacks column(s) {lacking}")
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


class Kinetics400(VideoClassificationDataset):
    """Kinetics-400 from its official CSV files (see the module docstring for the layout).

    Args:
        root: dataset folder.
        split: ``"train"``, ``"val"`` (``validate.csv``) or ``"test"``.
        video_dir: where the clips are (flat or in class folders).
        annotation_file: the CSV to read (default: found from ``split``).
        **options: :class:`~art_fast.data.base.VideoClassificationDataset` options.
    """

    _ALIASES = {"train": ("train",), "val": ("validate", "val", "validation"),
                "validate": ("validate", "val", "validation"),
                "validation": ("validate", "val", "validation"), "test": ("test",)}

    def __init__(self, root: PathLike, split: str = "train", *, video_dir: PathLike | None = None,
                 annotation_file: PathLike | None = None, **options: Any) -> None:
        root = os.fspath(root)
        if split not in self._ALIASES:
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        aliases = self._ALIASES[split]
        dirs = [root, os.path.join(root, "annotations")]
        if annotation_file is not None:
            ann = _first_existing([os.fspath(annotation_file)], "Kinetics-400 annotation CSV")
        else:
            ann = _first_existing([os.path.join(d, f"{a}.csv") for a in aliases for d in dirs],
                                  f"Kinetics-400 {split} CSV")
        rows = _read_kinetics_csv(ann)
        train_csv = next((os.path.join(d, "train.csv") for d in dirs
                          if os.path.isfile(os.path.join(d, "train.csv"))), None)
        class_rows = rows if train_csv is None or os.path.samefile(train_csv, ann) else \
            _read_kinetics_csv(train_csv)
        classes = sorted({r["label"] for r in class_rows if r["label"]})
        index = {c: i for i, c in enumerate(classes)}
        if video_dir is None:
            video_dir = next((os.path.join(root, a) for a in (split,) + aliases
                              if os.path.isdir(os.path.join(root, a))), root)
        self.video_dir = os.path.abspath(os.fspath(video_dir))
        found = _index_videos(self.video_dir)
        samples, self.unknown_labels = [], 0
        for n, r in enumerate(rows, 2):
            if r["label"] not in index:
                self.unknown_labels += 1
                continue
            try:
                stem = (f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_"
                        f"{int(float(r['time_end'])):06d}")
            except ValueError as exc:
                raise ValueError(f"{ann}:{n}: bad time_start/time_end in {r!r}") from exc
            path = found.get(stem, os.path.join(self.video_dir, stem + ".mp4"))
            samples.append(VideoSample(path, index[r["label"]]))
        if self.unknown_labels:
            logger.warning("Kinetics400 %s: %d rows have a label outside the class list (or "
                           "none) and are skipped", split, self.unknown_labels)
        self.split = split
        super().__init__(samples, classes, **_default_train(split, options))


# ------------------------------------------------------------------------------- VideoList


def list_file_lines(list_file: str) -> Iterator[tuple[int, str, list[str]]]:
    """The non-empty lines of a ``<path> <label>`` list file: ``(line number, stripped line,
    line.rsplit(None, 1))`` (the label is the last field, so paths may hold spaces). Shared by
    :class:`VideoList` and ``art-fast predict --list`` (where the label is optional)."""
    with open(list_file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if line:
                yield n, line, line.rsplit(None, 1)


def _read_class_csv(path: str) -> list[str]:
    names: dict[int, str] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{n}: expected 'id,name', got {row!r}")
            try:
                cid = int(row[0])
            except ValueError:
                if n == 1 or not names:  # a header row
                    continue
                raise ValueError(f"{path}:{n}: class id {row[0]!r} is not an integer") from None
            if cid in names:
                raise ValueError(f"{path}:{n}: class id {cid} appears twice")
            names[cid] = ",".join(row[1:]).strip()
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{path}: class ids must be 0..{len(names) - 1} with no gaps")
    return [names[i] for i in range(len(names))]


class VideoList(VideoClassificationDataset):
    """A generic list file of ``<path> <label>`` lines.

    Args:
        list_file: the list; each non-empty line is split on its last whitespace run.
        root: folder relative paths are joined to (default: the list file's folder).
        class_csv: optional ``id,name`` CSV naming the classes (``.classes``); labels in the
            list may then be ids or names.
        **options: :class:`~art_fast.data.base.VideoClassificationDataset` options
            (``train`` defaults to False).

    Without ``class_csv``: integer labels give classes ``"0" .. str(max)``; name labels give
    the sorted distinct names.
    """

    def __init__(self, list_file: PathLike, root: PathLike | None = None,
                 class_csv: PathLike | None = None, **options: Any) -> None:
        list_file = os.fspath(list_file)
        base = os.fspath(root) if root is not None else os.path.dirname(
            os.path.abspath(list_file))
        entries: list[tuple[str, str, int]] = []
        for n, line, parts in list_file_lines(list_file):
            if len(parts) != 2:
                raise ValueError(f"{list_file}:{n}: expected '<path> <label>', got {line!r}")
            entries.append((parts[0], parts[1], n))
        if class_csv is not None:
            classes = _read_class_csv(os.fspath(class_csv))
        else:
            for _, lab, n in entries:
                if _number_or_bool(lab) and not _INT_RE.match(lab):
                    raise ValueError(f"{list_file}:{n}: label {lab!r} is not an integer class "
                                     "id (0, 1, 2, ...) nor a class name")
            kinds = [(bool(_INT_RE.match(lab)), n) for _, lab, n in entries]
            for is_id, n in kinds:
                if kinds and is_id != kinds[0][0]:
                    lab = next(lab for _, lab, m in entries if m == n)
                    raise ValueError(
                        f"{list_file}:{n}: label {lab!r} mixes class names and integer class "
                        f"ids in one list (line {kinds[0][1]} has the other kind); give "
                        "data.class_csv to map names to ids")
            if entries and kinds[0][0]:
                classes = [str(i) for i in range(max(int(lab) for _, lab, _ in entries) + 1)]
            else:
                classes = sorted({lab for _, lab, _ in entries})
        by_name = {c: i for i, c in enumerate(classes)}
        samples = []
        for path, lab, n in entries:
            if _INT_RE.match(lab):
                label = int(lab)
            elif lab in by_name:
                label = by_name[lab]
            else:  # only with class_csv: without it every name is a class
                raise ValueError(f"{list_file}:{n}: label {lab!r} is not an integer class id "
                                 f"nor a class name of {os.fspath(class_csv or '')}")
            full = path if os.path.isabs(path) else os.path.join(base, path)
            samples.append(VideoSample(os.path.abspath(full), label))
        self.list_file = list_file
        options.setdefault("train", False)
        super().__init__(samples, classes, **options)

