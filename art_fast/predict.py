"""Inference from a trained checkpoint: :func:`load_model`, :meth:`ART.predict
<art_fast.model.art.ART.predict>` and ``art-fast predict``.

::

    import art_fast
    model = art_fast.load_model("runs/demo/best.pt")   # an ART in eval mode, on the CPU
    print(model.predict("clip.mp4"))                    # [(class name, probability), ...]

Loading (:func:`load_model` = :func:`art_fast.train.load_trained`): a checkpoint holds every
weight, the semantics banks ``bank`` (S) and ``agent_bank`` (S_a) included, so the
architecture is built with ``pretrained=None`` and from the stored bank instead of encoding the
class names again (``ART(..., _text_bank=bank)``), and then the checkpoint's state dict is
loaded. The original weights (``model.pretrained``: an open_clip tag, a file, an official
UniFormerV2 checkpoint), the data folder and the network are never used; open_clip's
"initialized randomly" warning of that build is dropped (:func:`quiet_random_init`), the
weights being the checkpoint's. The model carries the evaluation settings of the checkpoint's
config (:class:`PredictSettings`, ``model.predict_settings``).

Prediction (:func:`predict_scores`): a video file goes through the evaluation pipeline of
``art-fast eval`` (:class:`~art_fast.data.base.VideoClassificationDataset` in evaluation mode:
``data.num_frames``, ``data.image_size``, ``data.sampling``, ``data.dense_stride`` and
``eval.views`` = temporal clips x spatial crops); the class probabilities are the softmax
averaged over the views, as in evaluation.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .model.art import ART

__all__ = ["PredictSettings", "load_model", "predict_scores", "prepare_video",
           "quiet_random_init", "read_video_list", "main_predict"]

_RANDOM_INIT_WARNING = "No pretrained weights loaded for model"


@dataclass(frozen=True)
class PredictSettings:
    """How :meth:`ART.predict <art_fast.model.art.ART.predict>` turns a video into model input:
    the evaluation settings of ``art-fast eval``.

    Attributes:
        num_frames: T, frames per clip (the model's).
        image_size: S, the frame side after resize + centre crop (the model's).
        sampling: ``"segments"`` (TSN) or ``"dense"`` (``num_frames`` frames ``dense_stride``
            apart).
        dense_stride: the frame step of dense clips.
        views: ``(clips, crops)``: temporal clips x spatial crops (1: centre, 3: three crops).
        backend: the decoder, ``"auto"`` | ``"decord"`` | ``"pyav"``.
    """

    num_frames: int
    image_size: int
    sampling: str = "segments"
    dense_stride: int = 4
    views: tuple[int, int] = (1, 1)
    backend: str = "auto"

    @classmethod
    def from_config(cls, cfg: Any) -> PredictSettings:
        """The settings of a run config (:class:`~art_fast.train.config.Config`): its ``data``
        section and ``eval.views``."""
        d = cfg.data
        views = tuple(int(v) for v in cfg.eval.views)
        return cls(int(d.num_frames), int(d.image_size), str(getattr(d, "sampling", "segments")),
                   int(getattr(d, "dense_stride", 4)), (views[0], views[1]),
                   str(getattr(d, "decode_backend", "auto")))

    @classmethod
    def for_model(cls, model: ART) -> PredictSettings:
        """The settings of a model built by hand: its T and size, segments, one view."""
        return cls(int(model.num_frames), int(model.image_size))


def check_views(views: object, name: str = "views") -> tuple[int, int]:
    """``views`` as ``(clips, crops)``, or ValueError naming ``name`` and what is expected
    (two ints: clips >= 1, crops 1 or 3)."""
    ok = (isinstance(views, (tuple, list)) and len(views) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in views)
          and views[0] >= 1 and views[1] in (1, 3))
    if not ok:
        raise ValueError(f"{name} must be (clips, crops) with clips an int >= 1 and crops 1 or 3, "
                         f"got {views!r}")
    return int(views[0]), int(views[1])  # type: ignore[index]


def _settings(model: ART, views: object) -> PredictSettings:
    s = getattr(model, "predict_settings", None) or PredictSettings.for_model(model)
    if views is not None:
        s = PredictSettings(s.num_frames, s.image_size, s.sampling, s.dense_stride,
                            check_views(views, "ART.predict: views"), s.backend)
    return s


def _eval_dataset(s: PredictSettings, classes: Sequence[str], path: str) -> Any:
    """A one-video evaluation dataset with the settings ``s`` (the pipeline of ``art-fast
    eval``; no file check, no retries: a bad file raises)."""
    from .data.base import VideoClassificationDataset, VideoSample

    return VideoClassificationDataset(
        [VideoSample(path, 0)], list(classes), num_frames=s.num_frames, train=False,
        image_size=s.image_size, sampling=s.sampling, dense_stride=s.dense_stride,
        views=s.views, check_files=False, max_retries=0, backend=s.backend)


def _as_views(video: torch.Tensor) -> torch.Tensor:
    """uint8 ``[T, S, S, 3]`` or ``[V, T, S, S, 3]`` -> ``[V, T, S, S, 3]``."""
    return video if video.dim() == 5 else video.unsqueeze(0)


def _bad_video(got: str, s: PredictSettings) -> ValueError:
    T, S = s.num_frames, s.image_size
    return ValueError(
        f"ART.predict: video must be a video file path (str or os.PathLike), a uint8 tensor "
        f"[T, H, W, 3] (frames, channels last) or [V, T={T}, S={S}, S={S}, 3] (prepared views), "
        f"or a float model input [T={T}, 3, {S}, {S}] or [V, T={T}, 3, {S}, {S}]; got {got}")


def prepare_video(model: ART, video: object, views: object = None) -> torch.Tensor:
    """The model input of one video for :func:`predict_scores`.

    Args:
        model: the :class:`~art_fast.model.art.ART` (its ``predict_settings``, or for a model
            built by hand its T and size, segment sampling and one view).
        video: a video file (str / os.PathLike), decoded and sampled as ``art-fast eval``
            does; a uint8 tensor (or numpy array) ``[T, H, W, 3]``: frames of any number and
            size, treated like a decoded file (the evaluation sampling picks ``num_frames`` of
            the ``T`` (every frame when ``T = num_frames`` with segment sampling), then resize
            + centre crop or three crops, for every view); a uint8 ``[V, T, S, S, 3]``: views
            already sampled and cropped; a float ``[T, 3, S, S]`` or ``[V, T, 3, S, S]``: an
            already normalised model input (:func:`art_fast.data.to_model_input`), used as is.
        views: ``(clips, crops)`` instead of the settings' (file and ``[T, H, W, 3]`` inputs).

    Returns:
        float ``[V, T, 3, S, S]`` on the CPU (floats: as given, on their device).

    Raises:
        TypeError / ValueError: ``video`` is none of the above (the message says what is
            expected); FileNotFoundError, VideoDecodeError: a file that is missing or does not
            decode.
    """
    from .data import to_model_input

    s = _settings(model, views)
    T, S = s.num_frames, s.image_size
    if isinstance(video, (str, os.PathLike)):
        ds = _eval_dataset(s, model.class_names, os.fspath(video))
        clip, _ = ds.load(0)  # uint8 [T, S, S, 3] or [V, T, S, S, 3]
        return to_model_input(_as_views(clip).unsqueeze(0))[0]
    if isinstance(video, np.ndarray):
        if video.dtype != np.uint8:
            raise TypeError(f"ART.predict: a numpy video must be uint8 [T, H, W, 3], got "
                            f"{video.dtype}")
        video = torch.from_numpy(np.ascontiguousarray(video))
    if not isinstance(video, torch.Tensor):
        raise TypeError(str(_bad_video(type(video).__name__, s)))
    shape = f"{video.dtype} {list(video.shape)}"
    if video.dtype == torch.uint8:
        if video.dim() == 4 and video.shape[-1] == 3 and min(video.shape[:3]) >= 1:
            # 1. the tensor is a decoded video: the evaluation sampling and crops of a file
            ds = _eval_dataset(s, model.class_names, "<tensor>")
            rng = np.random.default_rng(0)  # evaluation draws nothing; the API wants one
            frames = video.cpu()
            idx = ds.frame_indices(int(frames.shape[0]), rng)
            clips = [ds.transform(frames[torch.from_numpy(i)], rng) for i in idx]
            # 2. [clips] x ([crops, T, S, S, 3] or [T, S, S, 3]) -> [V, T, S, S, 3], clip-major
            out = torch.cat([_as_views(c) for c in clips], 0)
            return to_model_input(out.unsqueeze(0))[0]
        if video.dim() == 5 and tuple(video.shape[1:]) == (T, S, S, 3) and video.shape[0] >= 1:
            return to_model_input(video.cpu().unsqueeze(0))[0]
        raise _bad_video(shape, s)
    if video.is_floating_point():
        x = video.unsqueeze(0) if video.dim() == 4 else video
        if x.dim() == 5 and tuple(x.shape[1:]) == (T, 3, S, S) and x.shape[0] >= 1:
            return x
        raise _bad_video(shape, s)
    raise TypeError(str(_bad_video(shape, s)))


@torch.no_grad()
def predict_scores(model: ART, video: object, views: object = None) -> torch.Tensor:
    """Class probabilities of one video: the softmax of ``model``'s logits averaged over the
    views (as ``art-fast eval`` scores a clip).

    Args:
        model: an :class:`~art_fast.model.art.ART`; it runs in eval mode (its mode is
            restored afterwards), without gradients, on its own device.
        video, views: see :func:`prepare_video`.

    Returns:
        float32 ``[C]`` on the CPU, summing to 1.
    """
    x = prepare_video(model, video, views)
    p = next(model.parameters())
    x = x.to(p.device, p.dtype if p.is_floating_point() else torch.float32)
    was_training = model.training
    model.eval()
    try:
        out = model(x)
    finally:
        model.train(was_training)
    return out.logits.float().softmax(-1).mean(0).cpu()


def top_classes(model: ART, probs: torch.Tensor, top: object) -> list[tuple[str, float]]:
    """The ``top`` most probable classes of ``probs`` ``[C]``: ``[(class name, probability)]``,
    most probable first (at most C)."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"ART.predict: top must be an int >= 1, got {top!r}")
    vals, idx = probs.topk(min(top, probs.numel()))
    return [(model.class_names[int(i)], float(v)) for v, i in zip(vals, idx)]


# --------------------------------------------------------------------------- loading

class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_RANDOM_INIT_WARNING)


@contextlib.contextmanager
def quiet_random_init() -> Iterator[None]:
    """Drop open_clip's ``No pretrained weights loaded ... initialized randomly`` warning in
    the block (the load path: the weights come from a checkpoint next). open_clip logs it on
    the root logger; while the root logger has no handler, a NullHandler stands in so that
    ``logging.warning`` does not install the default console handler for good."""
    root = logging.getLogger()
    drop = _DropRandomInitWarning()
    stand_in = logging.NullHandler() if not root.handlers else None
    root.addFilter(drop)
    if stand_in is not None:
        root.addHandler(stand_in)
    try:
        yield
    finally:
        root.removeFilter(drop)
        if stand_in is not None:
            root.removeHandler(stand_in)


def load_model(checkpoint: str | os.PathLike[str], device: str | torch.device = "cpu") -> ART:
    """The trained :class:`~art_fast.model.art.ART` of a checkpoint of ``art-fast train``, in
    eval mode on ``device``, ready for :meth:`~art_fast.model.art.ART.predict`.

    Needs the checkpoint only: not the original weights (``model.pretrained``), not the data
    folder, not the network (see the module docstring). The model carries the checkpoint's
    evaluation settings (``model.predict_settings``: T, size, sampling, views).

    Raises:
        FileNotFoundError: no such file. CheckpointError: a damaged file or not a checkpoint of
            ``art-fast train``, or weights that do not fit the stored config.
    """
    from .train.trainer import load_trained

    model, _, _ = load_trained(os.fspath(checkpoint), (), device)
    return model


# --------------------------------------------------------------------------- art-fast predict

def read_video_list(list_file: str | os.PathLike[str], class_names: Sequence[str]
                    ) -> list[tuple[str, int | None]]:
    """The ``path [label]`` lines of ``list_file``: ``[(absolute path, class index or None)]``.

    The format of :class:`~art_fast.data.datasets.VideoList` (a line is split on its last
    whitespace run; relative paths are relative to the list file's folder; empty lines are
    skipped), with the label optional: a line that names an existing file as a whole, or has
    one field, has no label. A label is a class index ``0 .. C-1`` or a class name of the
    model (``class_names``).

    Raises:
        ValueError: a label that is neither (the message names the file and line).
    """
    from .data.datasets import list_file_lines

    list_file = os.fspath(list_file)
    base = os.path.dirname(os.path.abspath(list_file))
    index = {c: i for i, c in enumerate(class_names)}
    out: list[tuple[str, int | None]] = []
    for n, line, parts in list_file_lines(list_file):
        whole = line if os.path.isabs(line) else os.path.join(base, line)
        if len(parts) == 1 or os.path.isfile(whole):
            out.append((os.path.abspath(whole), None))
            continue
        path, lab = parts
        if lab in index:
            label = index[lab]
        elif lab.isascii() and lab.isdigit() and int(lab) < len(class_names):
            label = int(lab)
        else:
            raise ValueError(f"{list_file}:{n}: label {lab!r} is not a class index "
                             f"(0..{len(class_names) - 1}) nor a class name of the "
                             "checkpoint")
        full = path if os.path.isabs(path) else os.path.join(base, path)
        out.append((os.path.abspath(full), label))
    return out


def _parse_views(text: str | None) -> tuple[int, int] | None:
    from .errors import UserError

    if text is None:
        return None
    try:
        parts = tuple(int(p) for p in text.split(","))
        return check_views(parts, "--views")
    except ValueError:
        raise UserError(f"--views {text!r}: expected C,S (temporal clips >= 1, spatial crops "
                        "1 or 3), e.g. --views 2,3") from None


def main_predict(checkpoint: str, videos: Sequence[str] = (), *, list_file: str | None = None,
                 views: str | None = None, top: int = 5, as_json: bool = False,
                 out: str | None = None, device: str = "cpu") -> int:
    """``art-fast predict``: the ``top`` classes of each video (``videos``, then the lines of
    ``list_file``) with their probabilities, on stdout: a block per video, or with
    ``as_json`` one JSON object per line (``path``, ``top`` [{``class``, ``index``,
    ``prob``}], ``label`` and ``correct`` when the list gives a label) and a last
    ``{"summary": ...}`` line.

    With ``list_file`` (or ``out``), also a CSV (``out``, default ``predictions.csv`` in the
    current folder): ``path``, ``label`` and ``correct`` (with labels), ``top1``,
    ``top1_prob``, ... ``top<k>_prob``. With labels, the top-1 accuracy over the labelled
    videos is reported at the end.

    A video that cannot be read is reported on stderr as one line ``predict: cannot read
    <path>: <reason>`` and skipped.

    Returns:
        0, or 1 when some video could not be read. User errors (a missing checkpoint, bad
        ``views`` or ``top``, no video given) raise (the CLI prints one line, exit status 2).
    """
    from .data.robust import BAD_VIDEO_ERRORS
    from .errors import UserError, describe

    parsed = _parse_views(views)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise UserError(f"--top {top!r}: expected an int >= 1")
    if not videos and list_file is None:
        raise UserError("nothing to predict: give one or more VIDEO files or --list FILE")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r}: expected cpu, cuda or cuda:<n>") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device!r}: CUDA is not available here; use --device cpu")
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
    model = load_model(checkpoint, dev)
    entries: list[tuple[str, int | None]] = [(v, None) for v in videos]
    if list_file is not None:
        entries += read_video_list(list_file, model.class_names)
    k = min(top, model.num_classes)
    labelled = any(lab is not None for _, lab in entries)
    rows: list[dict[str, Any]] = []
    failed = correct = n_labelled = 0
    quiet = logging.getLogger("art_fast.data.video")  # decord -> PyAV fallback notes
    old_level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for path, label in entries:
            try:
                # 1. decode alone, with the decoders' own stderr lines silenced: a bad file is
                # reported here in one line (and skipped), not also by decord / FFmpeg
                with _native_stderr_silenced():
                    x = prepare_video(model, path, parsed)
            except BAD_VIDEO_ERRORS as e:
                failed += 1
                print(f"predict: cannot read {path}: {describe(e)}", file=sys.stderr, flush=True)
                continue
            probs = predict_scores(model, x)  # 2. the prepared float input, used as is
            vals, idx = probs.topk(k)
            best = [(int(i), model.class_names[int(i)], float(v)) for v, i in zip(vals, idx)]
            row: dict[str, Any] = {"path": path}
            if label is not None:
                n_labelled += 1
                hit = best[0][0] == label
                correct += hit
                row.update(label=model.class_names[label], correct=int(hit))
            rows.append(row | {"top": best})
            if as_json:
                obj: dict[str, Any] = {"path": path, "top": [
                    {"class": name, "index": i, "prob": p} for i, name, p in best]}
                if label is not None:
                    obj.update(label=model.class_names[label], correct=bool(hit))
                print(json.dumps(obj), flush=True)
            else:
                head = path if label is None else f"{path}  (label: {model.class_names[label]})"
                print(head)
                for r, (_, name, p) in enumerate(best, 1):
                    print(f"  {r}. {p:.4f}  {name}")
                sys.stdout.flush()
    finally:
        quiet.setLevel(old_level)
    csv_path = None
    if list_file is not None or out is not None:
        csv_path = out or "predictions.csv"
        _write_csv(csv_path, rows, k, labelled)
    accuracy = correct / n_labelled if n_labelled else None
    if as_json:
        print(json.dumps({"summary": {"videos": len(entries), "failed": failed,
                                      "labelled": n_labelled, "correct": correct,
                                      "top1_accuracy": accuracy, "csv": csv_path}}), flush=True)
    else:
        if accuracy is not None:
            print(f"predict: top-1 accuracy {accuracy:.4f} ({correct} of {n_labelled} labelled "
                  "videos)")
        if csv_path is not None:
            print(f"predict: wrote {csv_path} ({len(rows)} videos)")
        if failed:
            print(f"predict: {failed} of {len(entries)} videos could not be read")
        sys.stdout.flush()
    return 1 if failed else 0


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 goes to ``os.devnull`` for the block (restored after): the C
    libraries of the decoders (decord, FFmpeg) print their own error lines there, beside the
    exception art-fast predict reports. Python's ``sys.stderr`` is flushed first. Where fd 2
    cannot be duplicated (no such descriptor), the block runs unchanged."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        saved = None
    if saved is None:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _write_csv(path: str, rows: list[dict[str, Any]], k: int, labelled: bool) -> None:
    """The predictions CSV: path, [label, correct,] top1, top1_prob, ..., top<k>_prob."""
    head = ["path"] + (["label", "correct"] if labelled else [])
    for r in range(1, k + 1):
        head += [f"top{r}", f"top{r}_prob"]
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(head)
        for row in rows:
            line = [row["path"]]
            if labelled:
                line += [row.get("label", ""), row.get("correct", "")]
            for _, name, p in row["top"]:
                line += [name, f"{p:.6f}"]
            w.writerow(line)
