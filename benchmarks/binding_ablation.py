#!/usr/bin/env python
"""The ablation table of the binding set: ART against its ablations and a
capacity-matched control, several seeds each, the same config and budget for every row.

Variants (each is ``configs/binding_tiny.yaml`` plus these overrides):

============  =====================================  ==========================================
name          overrides                              what it removes
============  =====================================  ==========================================
full          (none)                                 nothing: ART as configured
global        ``model.tracklet_branch=false``        queries, tracklets, MTC: x_cls only
no_time       ``model.query_time_embedding=false``   the frame-index query embedding (the
                                                     tracklet aggregation is then order-blind)
mean_pool     ``model.region_attention=mean``        region selection: every cross-attention
                                                     is a mean over the patches (same layers,
                                                     same parameter count)
no_mtc        ``model.gamma1=0``                     the multi-level tracklet contrastive loss
paper_        ``model.mtc_form=paper``,              (not run by default) today's choices of
options       ``model.query_bank=ema``,              the MTC form, the query bank and the TA
              ``model.ta_semantics=all``             semantics, replaced by the paper's
no_shift      ``model.temporal_shift=0``             (not run by default) the tower's temporal
                                                     shift: a purely per-frame tower
uniformerv2   ``model.backbone=uniformerv2-tiny``,   (not run by default) the per-frame tower,
              ``model.temporal_shift=0``, and the    replaced by the UniFormerV2 tiny tower
              per-frame tower's read-out options     (local temporal MHRA, T/2 steps)
              at their defaults
============  =====================================  ==========================================

Each run is ``art-fast train`` then ``art-fast eval`` in a subprocess (the real CLI, one run
at a time: wall times are only comparable on a quiet machine), into ``<work>/<variant>_s<seed>``.
The budget is the table's, ``TABLE_BUDGET`` (20 epochs, not the demo's 10), for every row.
A run whose ``eval/eval_metrics.json`` exists is reused (``--force`` reruns it), so an
interrupted table resumes; it is reused only if it was trained with the same config and
overrides (recorded in its ``ablation_timing.json``), else the runner stops and says so.
Reported per run: top-1, mean-class accuracy, region_hit and its chance level, parameters,
training wall time; per variant: mean +- std over the seeds and the minimum top-1. Output:
``<out>/binding_ablation.{json,md}`` with device, versions and date.

Usage::

    python benchmarks/binding_ablation.py --data data/binding [--seeds 0 1 2]
        [--variants full global ...] [--config configs/binding_tiny.yaml]
        [--work runs/ablation] [--out benchmarks/results/binding] [--set key=value ...]
        [--force | --report] [--merge earlier/binding_ablation.json ...]

``--report`` trains nothing: it writes the table of the runs finished so far and names the
missing ones (a table filled over several sittings). ``--merge FILE`` takes the rows of an
earlier sitting's ``binding_ablation.json`` for the runs not under ``--work`` (their folders
may be gone): each row carries its run's resolved config, and a row is used only if that
config is the one this table would train it with now (all but ``output_dir``), else the
runner stops and names the keys. The report names the rows that came from each file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h  # noqa: E402  (also puts the repository root on sys.path)

from art_fast.model.art import PER_FRAME_OPTIONS, ARTOptions  # noqa: E402

ROOT = h.ROOT


def _yaml(value: object) -> str:
    """A default as an override's value (None -> null; the YAML reading of the rest is theirs)."""
    return "null" if value is None else str(value)


VARIANTS: dict[str, tuple[str, ...]] = {
    "full": (),
    "global": ("model.tracklet_branch=false",),
    "no_time": ("model.query_time_embedding=false",),
    "mean_pool": ("model.region_attention=mean",),
    "no_mtc": ("model.gamma1=0",),
    # not in the table: the paper's options together (DESIGN §4 items 2, 3, 7, 9)
    "paper_options": ("model.mtc_form=paper", "model.query_bank=ema", "model.ta_semantics=all"),
    # the tower: the per-frame tiny ViT without its temporal shift, and the
    # UniFormerV2 tiny tower (local temporal MHRA, 3D patch embedding: T' = T/2 steps)
    "no_shift": ("model.temporal_shift=0",),
    "uniformerv2": ("model.backbone=uniformerv2-tiny", "model.temporal_shift=0",
                    *(f"model.{o}={_yaml(getattr(ARTOptions(), o))}" for o in PER_FRAME_OPTIONS)),
}
DEFAULT_VARIANTS = ("full", "global", "no_time", "mean_pool", "no_mtc")
# The table's budget: 20 epochs, an evaluation every 5. The config's own 10 epochs are the
# demo's (`make demo` within 20 minutes on 2 cores); at 10 epochs every run is still climbing
# (docs/binding.md 5.2), so the table compares the variants where ART has converged. A --set
# given on the command line comes after these and wins.
TABLE_BUDGET = ("train.epochs=20", "train.eval_every=5")


def _run(cmd: list[str], log_path: Path) -> None:
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); last lines of "
                           f"{log_path}:\n" + "\n".join(tail))


def _param_count(checkpoint: Path) -> int:
    from art_fast.train.trainer import load_trained

    model, _, _ = load_trained(str(checkpoint))
    return sum(p.numel() for p in model.parameters())


def _drift(then: Any, config: str, overrides: list[str], ignore: tuple[str, ...] = ()
           ) -> list[str]:
    """How a run's recorded config ``then`` (a :class:`~art_fast.train.config.Config`) differs
    from ``config`` with ``overrides`` resolved now (paths absolute, as the trainer stores
    them): one ``"key: <run's> in the run, <now> now"`` per differing key not in ``ignore``."""
    from art_fast.train.config import config_diff, load_config
    from art_fast.train.trainer import absolute_paths

    now = absolute_paths(load_config(config, overrides))
    return [f"{k}: {a!r} in the run, {b!r} now" for k, a, b in config_diff(then, now)
            if k not in ignore]


def config_drift(run_dir: Path, config: str, overrides: list[str]) -> list[str]:
    """How the config a finished run recorded (its ``config.yaml``) differs from ``config``
    with ``overrides`` resolved now (paths absolute, as the trainer stores them): one
    ``"key: <run's> in the run, <now> now"`` per differing key; ``[]`` when they agree."""
    from art_fast.train.config import ConfigError, load_config

    stored = run_dir / "config.yaml"
    if not stored.is_file():
        return [f"{stored} is missing"]
    try:
        then = load_config(stored)
    except (ConfigError, ValueError) as e:
        return [f"{stored} no longer reads: {e}"]
    return _drift(then, config, overrides)


def _run_dir(variant: str, seed: int, args: argparse.Namespace) -> Path:
    """``<work>/<variant>_s<seed>``: the folder of one run."""
    return Path(args.work) / f"{variant}_s{seed}"


def _overrides(variant: str, seed: int, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """``(common, overrides)`` of one run: the overrides train and eval share (the set, the
    table's budget, the user's --set), and the whole list the run is trained with."""
    run_dir = _run_dir(variant, seed, args)
    common = [f"data.root={args.data}", *TABLE_BUDGET, *args.set]
    return common, [*common, f"output_dir={run_dir}", f"train.seed={seed}", *VARIANTS[variant]]


def is_finished(variant: str, seed: int, args: argparse.Namespace) -> bool:
    """Whether ``<work>/<variant>_s<seed>`` holds a finished run (evaluated and timed)."""
    run_dir = _run_dir(variant, seed, args)
    return ((run_dir / "eval" / "eval_metrics.json").is_file()
            and (run_dir / "ablation_timing.json").is_file())


def load_merged(paths: list[str]) -> dict[tuple[str, int], tuple[dict[str, Any], str, dict]]:
    """The rows of earlier ``binding_ablation.json`` files (``--merge``), by (variant, seed):
    ``(row, file, the file's env)``. A pair in two files, or a file that is not such a
    result, is refused (ValueError naming the file)."""
    out: dict[tuple[str, int], tuple[dict[str, Any], str, dict]] = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            rows, env = data["rows"], data["env"]
            keys = [(r["variant"], int(r["seed"])) for r in rows]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--merge {path}: not a binding_ablation.json ({e})") from e
        for key, row in zip(keys, rows):
            if key in out:
                raise ValueError(f"--merge: {key[0]} seed {key[1]} is in both {out[key][1]} "
                                 f"and {path}")
            out[key] = (row, path, env)
    return out


def merged_row(variant: str, seed: int, args: argparse.Namespace,
               merged: dict[tuple[str, int], tuple[dict[str, Any], str, dict]]
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The row of (variant, seed) from a ``--merge`` file and its ``merge_origin``, after
    checking that the config its run recorded (the row's ``config``) is what this table would
    train it with now (all but ``output_dir``); RuntimeError naming the file and the keys
    otherwise."""
    from art_fast.train.config import ConfigError, config_from_dict

    row, path, file_env = merged[(variant, seed)]
    if not isinstance(row.get("config"), dict):
        raise RuntimeError(f"--merge {path}: {variant} seed {seed} records no config, so it "
                           "cannot be checked against this table's: rerun it instead")
    try:
        then = config_from_dict(row["config"])
    except (ConfigError, ValueError) as e:
        raise RuntimeError(f"--merge {path}: {variant} seed {seed}: its config no longer "
                           f"reads ({e})") from e
    drift = _drift(then, args.config, _overrides(variant, seed, args)[1], ignore=("output_dir",))
    if drift:
        raise RuntimeError(f"--merge {path}: {variant} seed {seed} was trained with a config "
                           f"this table would not use ({'; '.join(drift)}): rerun it instead")
    origin = merge_origin(row, path, file_env)
    return {**row, "merged_from": origin["file"]}, origin


def merge_origin(row: dict[str, Any], path: str, file_env: dict[str, Any]) -> dict[str, Any]:
    """Where a merged row was first reported: ``{"file", "date", "commit", "provenance"}``.
    A row that ``path`` had itself merged from an earlier file keeps that file and the entry
    ``path``'s env recorded for it, so merging a merged table does not point rows at a report
    that the new one may overwrite, and the earlier sittings' dates and provenance lines
    (``--provenance``) are carried on."""
    origin = row.get("merged_from")
    if origin and origin != path:
        for m in file_env.get("merged") or []:
            if m.get("file") == origin:
                return {"file": origin, "date": m.get("date"), "commit": m.get("commit"),
                        "provenance": m.get("provenance")}
    return {"file": path, "date": file_env.get("date"), "commit": file_env.get("commit"),
            "provenance": file_env.get("provenance")}


def run_one(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any] | None:
    """Train and evaluate one (variant, seed); returns its row (None with ``args.report``
    when the run has not finished: nothing is trained then)."""
    run_dir = _run_dir(variant, seed, args)
    metrics = run_dir / "eval" / "eval_metrics.json"
    timing = run_dir / "ablation_timing.json"
    common, overrides = _overrides(variant, seed, args)
    if not args.force and is_finished(variant, seed, args):
        # a finished run is reused only if it ran with exactly this config and these overrides
        done = json.loads(timing.read_text())
        if (done.get("config"), done.get("overrides")) != (args.config, overrides):
            raise RuntimeError(
                f"{run_dir} was trained with --config {done.get('config')!r} and overrides "
                f"{done.get('overrides')!r}, not {args.config!r} and {overrides!r}: pass "
                "another --work, or --force to retrain it")
        drift = config_drift(run_dir, args.config, overrides)
        if drift:  # the same file and overrides, but the file (or a default) has changed
            raise RuntimeError(
                f"{run_dir} was trained with a config that {args.config} with these overrides "
                f"no longer gives ({'; '.join(drift)}): pass another --work, or --force to "
                "retrain it")
    elif args.report:
        return None
    else:
        sets = [x for o in overrides for x in ("--set", o)]
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        commit = h.git_commit()  # the code this run imports (HEAD may move before the report)
        device = h.device_name("cpu")  # the machine (a table filled over sittings may mix them)
        t0 = time.perf_counter()
        _run([sys.executable, "-m", "art_fast.cli", "train", args.config, *sets, "--overwrite"],
             Path(args.work) / f"{variant}_s{seed}.train.log")
        train_s = time.perf_counter() - t0
        _run([sys.executable, "-m", "art_fast.cli", "eval", str(run_dir / "best.pt"),
              *[x for o in common for x in ("--set", o)]],
             Path(args.work) / f"{variant}_s{seed}.eval.log")
        timing.write_text(json.dumps({"train_seconds": round(train_s, 1), "config": args.config,
                                      "overrides": overrides, "commit": commit,
                                      "device": device}) + "\n")
    from art_fast.train.config import config_to_dict, load_config

    m = json.loads(metrics.read_text())
    timed = json.loads(timing.read_text())
    curve, mtc_last = _training_curve(run_dir / "metrics.jsonl")
    return {"variant": variant, "seed": seed, "top1": m["top1"], "mean_class": m["mean_class"],
            "region_hit": m.get("region_hit"), "region_hit_chance": m.get("region_hit_chance"),
            "params": _param_count(run_dir / "best.pt"),
            "train_seconds": timed["train_seconds"],
            "commit": timed.get("commit"), "device": timed.get("device"),  # None: older runs
            "mtc_last_epoch": mtc_last, "region_hit_curve": curve,
            # the run's resolved config: what --merge checks a row against in a later sitting
            "config": config_to_dict(load_config(run_dir / "config.yaml"))}


def _training_curve(path: Path) -> tuple[list[dict[str, Any]], float | None]:
    """From a run's metrics.jsonl: the in-training evaluations as ``[{epoch, top1,
    region_hit}]`` and the sum of the three MTC terms' means over the last epoch (None for a
    variant without MTC)."""
    curve, mtc = [], None
    if not path.is_file():
        return curve, mtc
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        t = r.get("train") or {}
        terms = [t[k] for k in ("mtc_spatial", "mtc_temporal", "mtc_tracklet") if k in t]
        if terms:
            mtc = float(sum(terms))
        ev = r.get("eval")
        if ev:
            curve.append({"epoch": r.get("epoch", 1), "top1": ev.get("top1"),  # 1-based
                          "region_hit": ev.get("region_hit")})
    return curve, mtc


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant (in the order of the rows): mean/std of each metric over seeds, min top-1."""
    out = []
    for v in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == v]
        s: dict[str, Any] = {"variant": v, "seeds": [r["seed"] for r in rs],
                             "params": rs[0]["params"], "min_top1": min(r["top1"] for r in rs)}
        for k in ("top1", "mean_class", "region_hit", "region_hit_chance", "train_seconds"):
            vals = [r[k] for r in rs if r[k] is not None]
            s[k] = _mean_std(vals) if vals else None
        out.append(s)
    return out


def _fmt(ms: tuple[float, float] | None, pct: bool = True) -> str:
    if ms is None:
        return "n/a"
    return f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f}" if pct else f"{ms[0]:.0f} ± {ms[1]:.0f}"


def _curve(r: dict[str, Any]) -> str | None:
    """``epoch: top-1 / region_hit`` at each in-training evaluation (region_hit omitted for a
    variant without queries)."""
    def one(c: dict[str, Any]) -> str:
        rh = "" if c["region_hit"] is None else f" / {c['region_hit']:.3f}"
        return f"{c['epoch']}: {c['top1']:.3f}{rh}"
    return ", ".join(one(c) for c in r.get("region_hit_curve") or []) or None


def _short(commit: str | None) -> str | None:
    """A commit as 7 hex digits, ``-dirty`` kept (None stays None: a run that predates it)."""
    if not commit:
        return None
    return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")


SUMMARY_COLUMNS = [
    h.Column("variant", "variant"),
    h.Column("seeds", lambda s: " ".join(map(str, s["seeds"]))),
    h.Column("top-1 %", lambda s: _fmt(s["top1"])),
    h.Column("min top-1 %", lambda s: 100 * s["min_top1"], ".1f"),
    h.Column("mean-class %", lambda s: _fmt(s["mean_class"])),
    h.Column("region_hit %", lambda s: _fmt(s["region_hit"])),
    h.Column("chance %", lambda s: _fmt(s["region_hit_chance"])),
    h.Column("params", "params", ","),
    h.Column("train s", lambda s: _fmt(s["train_seconds"], pct=False)),
]
RUN_COLUMNS = [
    h.Column("variant", "variant"),
    h.Column("seed", "seed"),
    h.Column("top-1", "top1", ".4f"),
    h.Column("mean-class", "mean_class", ".4f"),
    h.Column("region_hit", "region_hit", ".4f"),
    h.Column("chance", "region_hit_chance", ".4f"),
    h.Column("MTC", lambda r: r.get("mtc_last_epoch"), ".2g"),
    h.Column("curve", _curve),
    h.Column("train s", "train_seconds", ".0f"),
    h.Column("commit", lambda r: _short(r.get("commit"))),
    h.Column("device", lambda r: r.get("device")),
]


def markdown(summary: list[dict[str, Any]], rows: list[dict[str, Any]], env: dict[str, Any]
             ) -> str:
    """The summary table (per variant) and the per-run table, under the environment lines
    (and the runs not finished yet, ``env["missing"]``, for a ``--report`` of a partial
    table)."""
    missing = env.get("missing") or []
    lines = [f"Device: {env['device']}; torch {env['torch']}, python {env['python']}, "
             f"art_fast commit {env['commit']} when this report was written (each run's "
             "commit and machine, recorded when it started, in the per-run table).",
             f"Command: `{env['command']}`"]
    for m in env.get("merged") or []:
        lines.append(f"From an earlier sitting (`{m['file']}`, {m['date']}, commit "
                     f"{m['commit']}; each run's recorded config checked against this table's): "
                     + ", ".join(m["runs"]) + "." + (f" {m['provenance']}" if m.get("provenance")
                                                        else ""))
    if env.get("provenance"):
        lines.append(f"Runs of this sitting: {env['provenance']}")
    if missing:
        lines.append("**Partial table**: not run yet: " + ", ".join(missing) + ".")
    return h.document(
        f"# Binding-set ablation ({env['date']})", lines,
        h.table(SUMMARY_COLUMNS, summary),
        "Per run (MTC: the sum of the three MTC terms' means over the last epoch; "
        "curve: top-1 / region_hit at each in-training evaluation, by epoch):",
        h.table(RUN_COLUMNS, rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the binding set (art-fast synth --kind binding)")
    p.add_argument("--config", default="configs/binding_tiny.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                   choices=list(VARIANTS))
    p.add_argument("--work", default="runs/ablation", help="run folders")
    p.add_argument("--out", default="benchmarks/results/binding")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for every run, after the table's budget "
                   f"({' '.join(TABLE_BUDGET)}; e.g. train.epochs=4 for a quick look)")
    p.add_argument("--force", action="store_true", help="rerun runs that already have results")
    p.add_argument("--report", action="store_true",
                   help="train nothing: tabulate the finished runs and name the missing ones")
    p.add_argument("--merge", action="append", default=[], metavar="JSON",
                   help="an earlier binding_ablation.json whose rows stand for runs not under "
                   "--work (each checked against this table's config)")
    p.add_argument("--provenance", metavar="TEXT",
                   help="a line for the report on how the runs under --work ran (e.g. alone "
                   "or beside other jobs); it travels with their rows when the report is "
                   "merged later")
    args = p.parse_args(argv)
    if args.report and args.force:
        p.error("--report trains nothing: it cannot be combined with --force")
    if not os.path.isfile(os.path.join(args.data, "Diving48_vocab.json")):
        p.error(f"--data {args.data!r} holds no Diving48-layout set (make one with "
                f"`art-fast synth --kind binding --out {args.data}`)")
    try:
        merged = load_merged(args.merge)
    except ValueError as e:
        p.error(str(e))
    rows, missing = [], []
    used: dict[str, tuple[dict[str, Any], list[str]]] = {}  # origin file -> (origin, runs)
    for v in args.variants:
        for seed in args.seeds:
            if (v, seed) in merged and is_finished(v, seed, args):
                p.error(f"{v} seed {seed} is both under --work {args.work} and in --merge "
                        f"{merged[(v, seed)][1]}: keep one")
            try:
                if (v, seed) in merged:
                    r, origin = merged_row(v, seed, args, merged)
                    used.setdefault(origin["file"], (origin, []))[1].append(f"{v} seed {seed}")
                else:
                    r = run_one(v, seed, args)
            except RuntimeError as e:  # a refused reuse or merge, a failed run: no traceback
                print(f"binding_ablation: {e}", file=sys.stderr)
                return 1
            if r is None:
                missing.append(f"{v} seed {seed}")
                continue
            rows.append(r)
            print(f"{v} seed {seed}: top1 {r['top1']:.4f} mean_class {r['mean_class']:.4f} "
                  f"region_hit {r['region_hit']} (chance {r['region_hit_chance']}) "
                  f"{r['train_seconds']:.0f} s", flush=True)
    if not rows:
        print("binding_ablation: no finished run under --work " + args.work, file=sys.stderr)
        return 1
    e = h.environment("cpu")  # this file's env keys predate the harness: kept as they were
    env = {"date": h.utc_now("%Y-%m-%d %H:%M UTC"), "device": e["device_name"],
           "torch": e["torch"], "python": e["python"], "commit": e["git_commit"],
           "command": "python benchmarks/binding_ablation.py " + " ".join(
               sys.argv[1:] if argv is None else argv), "missing": missing,
           "merged": [{**origin, "runs": runs} for origin, runs in used.values()]}
    if args.provenance:
        env["provenance"] = args.provenance
    summary = summarize(rows)
    md = markdown(summary, rows, env)
    h.write_results(args.out, "binding_ablation", {"env": env, "rows": rows, "summary": summary},
                    md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
