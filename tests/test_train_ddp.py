"""A 2-process gloo DDP run (torchrun on the CPU) matches one process with the doubled batch.

What must match for the runs to be the same computation: the global batch (the sharded sampler
gives rank r the r-th half of each global batch of 4, the single process the whole 4), each
clip's augmentation (a function of (seed, epoch, index) only), the initial weights (built from
train.seed on every rank), the loss scale (each rank's loss is a mean over its 2 clips and DDP
averages the gradients over the 2 ranks = the mean over 4; every ART loss term is a per-clip
mean or, like L_proto, independent of the batch), clipping after the all-reduce, and no
dropout (set to 0: the ranks draw different masks). The bank EMA runs on every rank from the
same S_a, so S agrees too. What may differ: the float summation order of the gradient (two
half-batch means averaged vs one mean over 4).

Tolerance: every weight within 1e-3 of how far training moved it (+1e-7). The test uses SGD,
whose update is linear in the gradient: measured max |diff| 1.5e-8, at most 1.1e-4 of the
movement. With AdamW the same runs differ by up to 1.3% of the movement: parameters whose true
gradient is zero (e.g. attention key biases, to which softmax is invariant) get float noise of
opposite signs in the two runs, and Adam normalises that noise into full-size steps; that is a
property of Adam, not of the data-parallel reduction, so the optimiser is fixed to SGD here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from test_train_helpers import tiny_overrides

from art_fast.train import build_dataset, build_model, load_checkpoint, load_config, train

STEPS = 3
COMMON = ("model.dropout=0.0", f"train.max_steps={STEPS}", "train.warmup_steps=0",
          "train.clip_grad=1.0", "train.optimizer=sgd", "train.lr=0.05")

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from art_fast.train import load_config, train
    cfg = load_config(None, sys.argv[1:])
    res = train(cfg)
    if int(os.environ["RANK"]) == 0:
        with open(os.path.join(cfg.output_dir, "result.json"), "w") as f:
            json.dump(res, f)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("ddp_extra", [(), ("train.compile=default",
                                            "train.compile_backend=aot_eager")],
                         ids=["eager", "compiled"])
def test_ddp_two_processes_match_doubled_batch(tmp_path, ddp_extra):
    """``compiled``: the DDP module through torch.compile (train.compile) gives the same
    weights as the eager single process."""
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    ddp_out = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script),
           *tiny_overrides(ddp_out, *COMMON, "train.batch_size=2", *ddp_extra)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    if ddp_extra:
        log = open(os.path.join(ddp_out, "train.log")).read()
        assert "compile: the first step took" in log and "recompiled" not in log

    one_out = str(tmp_path / "one")
    one = train(load_config(None, tiny_overrides(one_out, *COMMON, "train.batch_size=4")))
    ddp = json.load(open(os.path.join(ddp_out, "result.json")))

    a = load_checkpoint(os.path.join(ddp_out, "last.pt"))
    b = load_checkpoint(os.path.join(one_out, "last.pt"))
    assert a["step"] == b["step"] == STEPS and a["world_size"] == 2
    cfg = load_config(None, tiny_overrides(one_out, *COMMON))
    init_model = build_model(cfg, build_dataset(cfg, None, True).classes)
    init = init_model.state_dict()
    trainable = {n for n, p in init_model.named_parameters() if p.requires_grad}
    worst, moved_min, least = 0.0, float("inf"), ""
    for k, v in b["model"].items():
        if not v.is_floating_point():
            continue
        diff = float((a["model"][k] - v).abs().max())
        moved = float((v - init[k]).abs().max())  # how far training moved this tensor
        # measured: max |diff| 1.5e-8, at most 1.1e-4 of the tensor's own movement
        assert diff <= 1e-3 * moved + 1e-7, f"{k}: |diff| {diff:.3e}, moved {moved:.3e}"
        if moved > 0:
            worst = max(worst, diff / moved)
        if k in trainable and moved < moved_min:  # buffers (the EMA bank S) move far less
            moved_min, least = moved, k
    print(f"DDP vs single process: worst |diff| / movement {worst:.3e}")
    # every trainable parameter moved (the comparison is not vacuous); the smallest movement is
    # a LayerNorm gain deep in RSSA, ~1e-6 after 3 SGD steps, still well above float32 noise
    assert moved_min > 1e-7, f"{least} moved only {moved_min:.3e}"
    # same train losses (reduced over both ranks) and the same evaluation
    ddp_lines = [json.loads(x) for x in open(os.path.join(ddp_out, "metrics.jsonl"))]
    one_lines = [json.loads(x) for x in open(os.path.join(one_out, "metrics.jsonl"))]
    for k, v in one_lines[-1]["train"].items():
        assert ddp_lines[-1]["train"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert ddp["top1"] == one["top1"] and ddp["mean_class"] == one["mean_class"]
    assert ddp_lines[-1]["eval"]["num_samples"] == 4  # each test clip counted once
    assert torch.equal(a["model"]["bank"].isfinite(), torch.ones_like(a["model"]["bank"],
                                                                      dtype=torch.bool))
