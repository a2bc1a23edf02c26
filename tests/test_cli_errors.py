"""``art-fast`` on user errors: one line ``art-fast <cmd>: error: ...`` on stderr, exit status
2, no traceback (``--debug``: the traceback); the line also in ``train.log`` when the run
folder exists. Every case runs the real command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/synthetic_tiny.yaml"


def cli(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    """``python -m art_fast.cli args`` (or ``python -c code args``) from the repository root."""
    env = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"},
           "PYTHONPATH": ROOT}
    head = ["-c", textwrap.dedent(code)] if code else ["-m", "art_fast.cli"]
    return subprocess.run([sys.executable, *head, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess, cmd: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith(f"art-fast {cmd}: error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_eval_of_a_text_file(tmp_path):
    bogus = tmp_path / "some.txt"
    bogus.write_text("not a checkpoint\n" * 50)
    line = one_error_line(cli("eval", str(bogus)), "eval")
    assert str(bogus) in line and "does not load as a checkpoint" in line
    line = one_error_line(cli("eval", str(tmp_path / "nope.pt")), "eval")
    assert line == f"art-fast eval: error: checkpoint {str(tmp_path / 'nope.pt')!r} does not exist"


def test_eval_of_a_damaged_checkpoint_names_the_file(tmp_path):
    from art_fast.train.checkpoint import save_checkpoint

    path = tmp_path / "best.pt"
    save_checkpoint({"format": 2, "model": {"w": torch.full((4096,), 0.75)}, "step": 3,
                     "config": {}, "class_names": ["a"]}, path)
    data = bytearray(path.read_bytes())
    at = data.find(torch.full((64,), 0.75).numpy().tobytes())
    data[at + 100] ^= 0x01  # one flipped bit in the tensor data
    path.write_bytes(bytes(data))
    line = one_error_line(cli("eval", str(path)), "eval")
    assert f"{path}: content digest mismatch" in line


@pytest.mark.parametrize("value", [".nan", ".inf", "1e400"])
def test_non_finite_override(tmp_path, value):
    proc = cli("train", CONFIG, "--set", f"train.lr={value}", "--set",
               f"output_dir={tmp_path / 'run'}")
    line = one_error_line(proc, "train")
    assert "train.lr: expected a finite number" in line
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback_and_other_config_errors(tmp_path):
    proc = cli("--debug", "train", CONFIG, "--set", "train.lr=.nan")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr
    line = one_error_line(cli("train", CONFIG, "--set", "train.lrr=1"), "train")
    assert "unknown config key 'train.lrr'" in line
    line = one_error_line(cli("train", str(tmp_path / "missing.yaml")), "train")
    assert "missing.yaml: No such file or directory (ENOENT, errno 2)" in line


def test_error_of_a_started_run_is_also_in_train_log(tmp_path):
    out = tmp_path / "run"
    proc = cli("train", CONFIG, "--set", f"output_dir={out}", "--set",
               f"data.root={tmp_path / 'no_data'}")
    line = one_error_line(proc, "train")
    assert "holds no synthetic set" in line
    msg = line[len("art-fast train: error: "):]
    log = (out / "train.log").read_text()
    assert f"ERROR art_fast.train: error: {msg}" in log and "Traceback" not in log


def test_full_disk_is_one_line_in_stderr_and_train_log(tmp_path):
    """A write error (ENOSPC) at the second save: one line naming last.pt and the errno, the
    first last.pt intact."""
    from art_fast.data.synthetic import make_synthetic

    make_synthetic(tmp_path / "syn", classes=4, videos_per_class=4, frames=4, size=32, seed=0)
    out = tmp_path / "run"
    code = """
        import errno, os, sys, torch
        real, calls = torch.save, []
        def save(obj, f, *a, **k):
            if os.path.basename(getattr(f, "name", "")).startswith(".last.pt"):
                calls.append(1)
                if len(calls) == 2:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(obj, f, *a, **k)
        torch.save = save
        from art_fast.cli import main
        sys.exit(main(sys.argv[1:]))
    """
    sets = [f"output_dir={out}", f"data.root={tmp_path / 'syn'}", "data.num_frames=4",
            "data.image_size=32", "data.num_workers=0", "model.latent_dim=16", "model.heads=2",
            "model.se_layers=1", "model.rssa_layers=1", "model.k_region=4",
            f"model.text_cache_dir={tmp_path / 'text'}", "train.max_steps=3",
            "train.batch_size=2", "train.save_every=1", "train.eval_every=0",
            "train.threads=1", "train.progress=false"]
    proc = cli("train", CONFIG, *[f"--set={s}" for s in sets], code=code)
    line = one_error_line(proc, "train")
    assert line == (f"art-fast train: error: {out / 'last.pt'}: cannot write: No space left on "
                    "device (ENOSPC, errno 28)")
    assert line[len("art-fast train: error: "):] in (out / "train.log").read_text()
    from art_fast.train import load_checkpoint

    assert load_checkpoint(out / "last.pt")["step"] == 1
    # re-running into the folder: refused (it holds a run), the CLI names both ways out
    line = one_error_line(cli("train", CONFIG, *[f"--set={s}" for s in sets]), "train")
    assert "already holds a run" in line and "--resume auto" in line and "--overwrite" in line
