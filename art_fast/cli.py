"""The ``art-fast`` command: synth, train, eval, predict, bench, viz, info.

Data flows one way (DESIGN §2): cli -> train -> (data, model) -> ops. Each subcommand imports
what it needs when it runs, so ``art-fast --help`` and ``art-fast info`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
from collections.abc import Sequence

EPILOG = """examples:
  art-fast synth --out data/synth                       # the synthetic fine-grained set
  art-fast synth --kind binding --out data/binding      # the binding set (actor x order)
  art-fast train configs/synthetic_tiny.yaml --set output_dir=runs/demo
  art-fast train configs/diving48.yaml --set data.root=/data/Diving48 --resume auto
  torchrun --nproc_per_node 4 -m art_fast.cli train configs/gym99.yaml --set data.root=/data/gym
  art-fast eval runs/demo/best.pt                       # metrics + predictions.csv
  art-fast predict runs/demo/best.pt clip.mp4 --top 3  # top classes of video files
  art-fast predict runs/demo/best.pt --list videos.txt --json   # + predictions.csv
  art-fast viz runs/demo/best.pt --index 0 --out runs/demo/tracklets.png
  art-fast bench --device cpu                           # op benchmarks (art_fast.bench_ops)
  art-fast info                                         # backends built and usable, versions
  art-fast info --selftest                              # check every backend vs the reference
"""


def _add_overrides(p: argparse.ArgumentParser,
                   what: str = "a key of the checkpoint's config (e.g. data.root=...)") -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override {what}; repeatable")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train ART from a YAML config",
        description="Train ART. The config (YAML) is resolved with --set overrides (unknown keys "
                    "are errors) and saved as <output_dir>/config.yaml. Under torchrun every "
                    "process runs this command; rank 0 writes.")
    p.add_argument("config", help="YAML config, e.g. configs/synthetic_tiny.yaml")
    _add_overrides(p, "a config key (dotted, e.g. train.lr=1e-4)")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="continue from <output_dir>/last.pt (auto) or a checkpoint file")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an output_dir that holds a previous run (deletes its "
                        "checkpoints, metrics.jsonl, train.log, ...); without it or --resume, "
                        "such a folder is refused")


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a checkpoint",
        description="Evaluate a checkpoint on its config's test split (multi-view as in "
                    "eval.views): top-1, top-5, mean-class accuracy, confusion matrix, "
                    "predictions CSV.")
    p.add_argument("checkpoint", help="a checkpoint written by art-fast train (last.pt/best.pt)")
    _add_overrides(p)
    p.add_argument("--out", default=None, help="folder for the results (default: eval/ "
                   "beside the checkpoint)")


def _add_viz(sub) -> None:
    p = sub.add_parser(
        "viz", help="draw each tracklet's regions over a clip (PNG)",
        description="Load a checkpoint, run it on one test clip (by dataset index or a video "
                    "file) and draw each tracklet's selected regions over the frames. When the "
                    "test split has target boxes (the binding set), the box is drawn too and "
                    "each tracklet's per-frame region hit is printed.")
    p.add_argument("checkpoint")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--index", type=int, default=0, help="test-split index (default 0)")
    src.add_argument("--video", default=None, help="a video file instead of a dataset clip")
    p.add_argument("--out", required=True, help="PNG to write")
    _add_overrides(p)


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict", help="top classes of video files with a trained checkpoint",
        description="Load a checkpoint (alone: no data folder, no original weights, no "
                    "network) and print the top classes of each video with their "
                    "probabilities (softmax averaged over the views), decoded as art-fast "
                    "eval does (the checkpoint's frames, size, sampling and eval.views). A "
                    "video that cannot be read is reported ('predict: cannot read PATH: ...') "
                    "and skipped; the exit status is then 1.")
    p.add_argument("checkpoint", help="a checkpoint written by art-fast train (last.pt/best.pt)")
    p.add_argument("videos", nargs="*", metavar="VIDEO", help="video files")
    p.add_argument("--list", dest="list_file", default=None, metavar="FILE",
                   help="a list of 'path [label]' lines (the format of data.name=list; paths "
                        "relative to the file's folder; label: class index or name, optional): "
                        "writes the CSV (--out) and, with labels, reports the top-1 accuracy")
    p.add_argument("--views", default=None, metavar="C,S",
                   help="temporal clips, spatial crops (1 or 3) per video (default: the "
                        "checkpoint's eval.views)")
    p.add_argument("--top", type=int, default=5, help="classes shown per video (default 5)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line (and a last {\"summary\": ...} line)")
    p.add_argument("--out", default=None, metavar="CSV",
                   help="the predictions CSV (default with --list: predictions.csv in the "
                        "current directory)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:<n>")


def _add_bench(sub) -> None:
    sub.add_parser(
        "bench", help="op benchmarks (all arguments go to art_fast.bench_ops)",
        description="Run the op benchmarks; every argument after 'bench' is passed to "
                    "art_fast.bench_ops (see art-fast bench --help-bench).",
        add_help=False)


def _add_info(sub) -> None:
    p = sub.add_parser(
        "info", help="backends built and usable, versions, device",
        description="Print versions, the device and which backends are built and usable. "
                    "With --selftest, also run every op x backend x dtype on the current "
                    "device (CUDA when available, else CPU) forward and backward at small "
                    "sizes against the float64 reference (docs/selftest.md); exit status 1 "
                    "when a usable backend fails.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--selftest", action="store_true",
                   help="check every op x backend x dtype against the reference (and a "
                        "small-size smoke timing); exit 1 when a usable backend fails")


def build_parser() -> argparse.ArgumentParser:
    from .data.synthetic import build_parser as synth_parser

    p = argparse.ArgumentParser(
        prog="art-fast", description="ART (Action-Region Tracking) with custom kernels.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true",
                   help="(before the command) show the traceback of an error; by default a "
                        "user error (config, data, checkpoint, output folder, disk) is one "
                        "line 'art-fast <command>: error: ...' and exit status 2")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    synth = sub.add_parser("synth", help="write a synthetic fine-grained set (--kind "
                                         "displacement | binding)",
                           description="Write a synthetic fine-grained action set: real mp4 "
                                       "files + Diving48-format JSON splits and vocab. "
                                       "--kind displacement (default): the class is a cue's "
                                       "motion; --kind binding: which actor did what, in "
                                       "which order (art_fast/data/binding.py).")
    synth_parser(synth)
    _add_train(sub)
    _add_eval(sub)
    _add_predict(sub)
    _add_bench(sub)
    _add_viz(sub)
    _add_info(sub)
    return p


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _extension_summary() -> str:
    """art_fast._C: loaded or why not, and what the build holds (which ops are usable on which
    device, and why not, is in the per-op backend status)."""
    from . import _ext

    if not _ext.EXT_LOADED:
        return f"art_fast._C not usable: {_ext.EXT_ERROR}"
    C = _ext._C
    cuda = "yes" if _ext.compiled_with_cuda() else "no"
    openmp = "yes" if hasattr(C, "compiled_with_openmp") and C.compiled_with_openmp() else "no"
    return f"art_fast._C loaded (CUDA kernels built: {cuda}, OpenMP: {openmp})"


def info(as_json: bool = False, selftest: bool = False) -> int:
    """Print the backends (built, usable, why not: per op and backend), versions and devices.

    With ``selftest``, also the self-check table of every op x backend x dtype on the current
    device (``art_fast._selftest.report``: built, agrees with the float64 reference, median
    ms of forward+backward at the self-check sizes). Returns the exit status: 1 when a usable
    backend fails its check, else 0.
    """
    import torch

    import art_fast

    def ver(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    data = {
        "art_fast": art_fast.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": ver("triton"),
        "open_clip_torch": ver("open_clip_torch"),
        "decord2": ver("decord2"),
        "av": ver("av"),
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "extension": _extension_summary(),
        "backend_in_force": art_fast.get_backend(),
        "available_backends": art_fast.available_backends(),
        "backend_status": art_fast.backend_status(),
    }
    status = 0
    if selftest:
        from . import _selftest

        device = "cuda" if torch.cuda.is_available() else "cpu"
        rows = _selftest.report(device, repeats=_SELFTEST_REPEATS)
        status = 1 if any(r["usable"] and not r["ok"] for r in rows) else 0
        data["selftest"] = {"device": device, "all_agree": status == 0,
                            "note": _SELFTEST_NOTE, "rows": rows}
    if as_json:
        print(json.dumps(data, indent=1))
        return status
    for k, v in data.items():
        if k not in ("backend_status", "selftest"):
            print(f"{k:20s} {v}")
    print("backends (per op):")
    for backend, ops in data["backend_status"].items():
        for op, st in ops.items():
            print(f"  {backend:7s} {op:16s} {st}")
    if selftest:
        _print_selftest(data["selftest"])
    return status


_SELFTEST_REPEATS = 5
_SELFTEST_NOTE = (f"forward+backward at the self-check sizes vs the float64 reference "
                  f"(docs/selftest.md); ms = median of {_SELFTEST_REPEATS} runs (1 for Triton's "
                  f"CPU interpreter) of every case at these tiny sizes: a smoke timing, not a "
                  f"benchmark")


def _print_selftest(st: dict) -> None:
    print(f"self-check on {st['device']}: {st['note']}")
    print(f"  {'op':16s} {'backend':7s} {'dtype':9s} {'built':5s} {'agrees':6s} "
          f"{'ms':>8s}  note")
    for r in st["rows"]:
        built = "yes" if r["usable"] else "no"
        agrees = "-" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        ms = "-" if r["ms"] is None else f"{r['ms']:.2f}"
        note = "" if r["ok"] else (r["built"] if not r["usable"] else r["agrees"])
        print(f"  {r['op']:16s} {r['backend']:7s} {r['dtype']:9s} {built:5s} {agrees:6s} "
              f"{ms:>8s}  {note}".rstrip())
    print("self-check: every usable backend agrees" if st["all_agree"]
          else "self-check: FAILED (rows marked NO); exit status 1")


def main(argv: Sequence[str] | None = None) -> int:
    """``art-fast``: run the command; returns the exit status.

    A user error (:data:`art_fast.errors.USER_ERRORS`: a bad config, data, checkpoint or
    output folder, a failed write) prints one line ``art-fast <command>: error: ...`` on stderr
    and returns 2, no traceback (a training run also writes the line to its ``train.log``);
    ``--debug`` before the command raises it with its traceback instead. Other exceptions
    (bugs) propagate with their traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while argv and argv[0] == "--debug":
        debug = True
        argv.pop(0)
    prog = f"art-fast {argv[0]}" if argv and not argv[0].startswith("-") else "art-fast"
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from .errors import USER_ERRORS, describe

        if debug or not isinstance(e, USER_ERRORS):
            raise
        print(f"{prog}: error: {describe(e)}", file=sys.stderr, flush=True)
        return 2


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "synth":
        from .data.synthetic import main as synth_main

        return synth_main(argv[1:])
    if args.command == "info":
        return info(args.json, args.selftest)
    if args.command == "predict":
        from .predict import main_predict

        return main_predict(args.checkpoint, args.videos, list_file=args.list_file,
                            views=args.views, top=args.top, as_json=args.json, out=args.out,
                            device=args.device)
    from . import train as trainer  # the trainer (and torch.distributed) only when needed

    if args.command == "train":
        return trainer.main_train(args.config, args.overrides, args.resume, args.overwrite)
    if args.command == "eval":
        return trainer.main_eval(args.checkpoint, args.overrides, args.out)
    if args.command == "viz":
        return viz(args.checkpoint, args.out, index=args.index, video=args.video,
                   overrides=args.overrides)
    raise AssertionError(args.command)


def viz(checkpoint: str, out: str, *, index: int = 0, video: str | None = None,
        overrides: Sequence[str] = ()) -> int:
    """``art-fast viz``: draw the tracklets of a trained model over one clip (a test-split
    item, or ``video`` sampled and centre-cropped as in evaluation) into the PNG ``out``.

    When the test split has target boxes (``dataset.can_map_boxes``, e.g. the binding set),
    the box is drawn in every cell and each tracklet's per-frame region hit is printed (one
    ``viz: tracklet k region_hit ...`` line per tracklet, then the per-frame chance) and
    included in the ``viz: {json}`` line (``region_hit``, ``region_hit_chance``)."""
    import torch

    from .data import CenterCrop, Compose, Resize, num_frames, read_frames, segment_indices
    from .train import build_dataset, load_trained
    from .viz import draw_tracklets

    model, cfg, _ = load_trained(checkpoint, list(overrides) + ["eval.views=[1,1]"])
    T, S = model.num_frames, model.image_size
    boxes, label = None, None  # the ground truth is known for dataset clips only
    if video is not None:
        idx = segment_indices(num_frames(video), T, train=False)
        clip = Compose([Resize(S), CenterCrop(S)])(torch.from_numpy(read_frames(video, idx)))
        source = video
    else:
        dataset = build_dataset(cfg, train=False)
        if not 0 <= index < len(dataset):
            from .errors import IndexOutOfRange

            raise IndexOutOfRange(f"--index {index} is outside the test split "
                                  f"(0..{len(dataset) - 1})")
        if getattr(dataset, "can_map_boxes", False):
            clip, label, boxes = dataset.get_with_boxes(index)
        else:
            clip, label = dataset[index]
        source = f"{dataset.path_of(index)} (label {label}: {model.class_names[label]})"
    info = draw_tracklets(model, clip.numpy(), out,
                          boxes=None if boxes is None else boxes.numpy(), label=label,
                          explain=True)
    info["source"] = source
    info.pop("saliency")
    if "region_hit" in info:
        def row(values: list) -> str:
            return " ".join("-" if v is None else f"{v:.3f}" for v in values)

        for k, hits in enumerate(info["region_hit"]):
            print(f"viz: tracklet {k} region_hit per frame: {row(hits)}", flush=True)
        print(f"viz: region_hit chance per frame:  {row(info['region_hit_chance'])}",
              flush=True)
        if info["step_frames"] != list(range(T)):  # UniFormerV2: one step every other frame
            print(f"viz: (the tracklet steps are frames {' '.join(map(str, info['step_frames']))})",
                  flush=True)
    print(f"viz: {json.dumps(info)}", flush=True)
    return 0


def _bench(argv: list[str]) -> int:
    """``art-fast bench ...`` = ``python benchmarks/bench_ops.py ...``: the op benchmark,
    :mod:`art_fast.bench_ops` (part of the package: it runs from an installed art_fast too;
    results go to ``--out``, by default ``benchmarks/results/<device-slug>`` of the source
    checkout or, for an installed package, of the current directory)."""
    from . import bench_ops

    if "--help-bench" in argv:
        argv = ["--help"]
    try:
        return bench_ops.main(argv, prog="art-fast bench")
    except SystemExit as e:  # argparse: --help, a bad argument
        return int(e.code or 0) if not isinstance(e.code, str) else 1


if __name__ == "__main__":
    sys.exit(main())
