"""train.compile: the training forward through torch.compile, compiled once (no recompilation
over the steps, the last one included), checkpoints free of the compile wrapper, resume and
evaluation working, the losses equal to the eager run's on the same batches.

The quick checks trace with ``train.compile_backend=aot_eager`` (dynamo + AOTAutograd, the
custom ops in the graph through their fake kernels, no code generation); one test compiles
with inductor (the default backend) end to end."""

from __future__ import annotations

import json
import os

import pytest
import torch
from test_train_helpers import tiny_config

from art_fast.train import evaluate, load_checkpoint, train


def _log(out: str) -> str:
    return open(os.path.join(out, "train.log")).read()


def _losses(out: str) -> list[dict]:
    return [json.loads(x)["train"] for x in open(os.path.join(out, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def compiled_run(tmp_path_factory):
    torch._dynamo.reset()
    out = str(tmp_path_factory.mktemp("compiled"))
    cfg = tiny_config(out, "train.compile=default", "train.compile_backend=aot_eager",
                      "train.max_steps=4", "train.eval_every=1")
    return out, cfg, train(cfg)


def test_compiled_once_and_logged(compiled_run):
    out, _, result = compiled_run
    log = _log(out)
    assert "compile: the first step took" in log and "(train.compile=default, backend aot_eager" \
        in log
    # the whole forward, losses and art_fast ops included, in one graph
    assert "1 graph, 0 graph breaks" in log
    assert "recompiled" not in log
    assert result["step"] == 4


def test_compiled_checkpoint_loads_into_a_plain_model(compiled_run):
    out, _, _ = compiled_run
    ckpt = load_checkpoint(os.path.join(out, "last.pt"))
    assert not any("_orig_mod" in k for k in ckpt["model"])
    from art_fast import load_model

    assert not load_model(os.path.join(out, "best.pt")).training


def test_compiled_run_evaluates_and_resumes(compiled_run, tmp_path):
    out, cfg, _ = compiled_run
    metrics = evaluate(cfg, os.path.join(out, "best.pt"), out_dir=str(tmp_path / "eval"))
    assert 0.0 <= metrics["top1"] <= 1.0
    # resume the compiled run for two more steps, compiled again in the new process state
    torch._dynamo.reset()
    cfg2 = tiny_config(out, "train.compile=default", "train.compile_backend=aot_eager",
                       "train.max_steps=6", "train.eval_every=1", "train.resume=auto")
    result = train(cfg2)
    assert result["step"] == 6
    log = _log(out)
    assert "resumed from" in log and "recompiled" not in log


def test_compiled_losses_match_eager(tmp_path):
    """Same seed, same batches: the compiled run's logged losses equal the eager run's
    (dropout off: its random stream differs under compilation)."""
    extra = ("train.max_steps=3", "train.eval_every=0", "model.dropout=0.0",
             "data.crop_scale=[1.0,1.0]", "train.adapt_threads=false")
    torch._dynamo.reset()
    eager_out, comp_out = str(tmp_path / "eager"), str(tmp_path / "comp")
    train(tiny_config(eager_out, *extra))
    train(tiny_config(comp_out, *extra, "train.compile=default",
                      "train.compile_backend=aot_eager"))
    (e,), (c,) = _losses(eager_out), _losses(comp_out)
    assert set(e) == set(c)
    for k in e:
        assert c[k] == pytest.approx(e[k], rel=1e-4, abs=1e-6), k


def test_inductor_compiles_the_step(tmp_path):
    """The default backend: inductor generates the code of the whole forward and backward,
    the art_fast ops included as extern calls; one graph, no recompilation."""
    torch._dynamo.reset()
    out = str(tmp_path / "ind")
    result = train(tiny_config(out, "train.compile=default", "train.max_steps=3",
                               "train.eval_every=0"))
    log = _log(out)
    assert "compile: the first step took" in log and "backend inductor" in log
    assert "1 graph, 0 graph breaks" in log
    assert "recompiled" not in log and result["step"] == 3


@pytest.mark.parametrize("key, value", [("train.compile", "fast"),
                                        ("train.compile_backend", "tvm")])
def test_bad_compile_values(tmp_path, key, value):
    from art_fast.train.config import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny_config(str(tmp_path), f"{key}={value}")
