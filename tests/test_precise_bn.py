"""Precise BatchNorm statistics (``train.precise_bn_batches``,
:func:`art_fast.train.recipe.recompute_bn_stats`): against per-batch statistics written out
by hand, the model left as it was (modes, momenta, RNG), bad input, and in a training run
(the trained weights untouched, the saved statistics those of the final weights)."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from test_train_helpers import tiny_config, tiny_overrides
from torch import nn
from torch.nn import functional as F

from art_fast.data import to_model_input
from art_fast.train import ConfigError, build_dataset, build_model, load_checkpoint, load_config
from art_fast.train import train as run_training
from art_fast.train.distributed import ShardedBatchSampler
from art_fast.train.recipe import recompute_bn_stats


class Net(nn.Module):
    """conv -> BN2d -> ReLU -> dropout -> pool -> linear -> BN1d, dropout at 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 5)
        self.bn2 = nn.BatchNorm1d(5, momentum=0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.relu(self.bn1(self.conv(x))))
        return self.bn2(self.fc(h.mean((2, 3))))


def reference_stats(net: Net, batches: list[torch.Tensor]):
    """Each BN's input statistics per batch, the earlier BN normalising with its batch's
    biased variance (training mode), no dropout; then the plain average over the batches."""
    m1, v1, m2, v2 = [], [], [], []
    with torch.no_grad():
        for x in batches:
            x = x.double()
            a = F.conv2d(x, net.conv.weight.double(), net.conv.bias.double(), padding=1)
            mean, n = a.mean((0, 2, 3)), a.numel() / a.shape[1]
            var_b = ((a - mean[None, :, None, None]) ** 2).mean((0, 2, 3))
            m1.append(mean), v1.append(var_b * n / (n - 1))
            h = (a - mean[None, :, None, None]) / torch.sqrt(var_b[None, :, None, None]
                                                             + net.bn1.eps)
            h = F.relu(h * net.bn1.weight.double()[None, :, None, None]
                       + net.bn1.bias.double()[None, :, None, None])
            z = h.mean((2, 3)) @ net.fc.weight.double().T + net.fc.bias.double()
            m2.append(z.mean(0)), v2.append(z.var(0, unbiased=True))
    avg = [torch.stack(v).mean(0) for v in (m1, v1, m2, v2)]
    return avg


def _batches(n: int, seed: int, sizes=(6,)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(sizes[i % len(sizes)], 3, 5, 7, generator=g) * (1 + i) + i
            for i in range(n)]


@pytest.mark.parametrize("n,sizes", [(1, (6,)), (4, (6,)), (5, (3, 8, 5))])
def test_statistics_are_the_average_of_the_batches(n, sizes):
    torch.manual_seed(n)
    net = Net()
    with torch.no_grad():  # stale running statistics that must be replaced, not blended
        net.bn1.running_mean.fill_(7.0), net.bn2.running_var.fill_(0.01)
    batches = _batches(n, seed=10 + n, sizes=sizes)
    assert recompute_bn_stats(net, iter(batches)) == 2
    m1, v1, m2, v2 = reference_stats(net, batches)
    for got, want in ((net.bn1.running_mean, m1), (net.bn1.running_var, v1),
                      (net.bn2.running_mean, m2), (net.bn2.running_var, v2)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert int(net.bn1.num_batches_tracked) == n


@pytest.mark.parametrize("training", [True, False])
def test_the_model_is_left_as_it_was(training):
    torch.manual_seed(0)
    net = Net().train(training)
    params = {k: v.clone() for k, v in net.named_parameters()}
    rng = torch.get_rng_state()
    recompute_bn_stats(net, _batches(3, seed=1))
    # no dropout mask was drawn: the global RNG is where it was
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training == training for m in net.modules())
    assert (net.bn1.momentum, net.bn2.momentum) == (0.1, 0.3)
    assert all(torch.equal(v, params[k]) for k, v in net.named_parameters())
    assert all(p.grad is None for p in net.parameters())


def test_forward_and_all_reduce_hooks():
    torch.manual_seed(0)
    net, calls = Net(), []

    def forward(x):
        calls.append(x.shape[0])
        return net(x)

    recompute_bn_stats(net, _batches(2, seed=2), forward, lambda t: t * 0 + 3.0)
    assert calls == [6, 6]
    for bn in (net.bn1, net.bn2):  # the per-rank mean replaces both statistics
        assert torch.equal(bn.running_mean, torch.full_like(bn.running_mean, 3.0))
        assert torch.equal(bn.running_var, torch.full_like(bn.running_var, 3.0))


def test_a_model_without_batchnorm_is_not_run():
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))

    def never():
        raise AssertionError("the batches were read")
        yield

    assert recompute_bn_stats(net, never()) == 0


def test_empty_batches_are_refused_and_the_statistics_kept():
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.bn1.running_mean.fill_(2.5)
    with pytest.raises(ValueError, match="recompute_bn_stats: batches is empty"):
        recompute_bn_stats(net, iter([]))
    assert torch.equal(net.bn1.running_mean, torch.full((4,), 2.5))
    assert net.bn1.momentum == 0.1


def test_a_failing_batch_restores_the_statistics():
    torch.manual_seed(0)
    net = Net()
    before = net.bn1.running_var.clone()
    bad = [torch.randn(4, 3, 5, 7), torch.randn(4, 2, 5, 7)]  # wrong channel count
    with pytest.raises(RuntimeError):
        recompute_bn_stats(net, iter(bad))
    assert torch.equal(net.bn1.running_var, before) and net.training


# ----------------------------------------------------------------------------- in a run

BN_MODEL = ("model.stem=conv3d", "model.temporal_module=segments", "model.frame_pool=max",
            "train.deterministic=true", "train.save_every=0")


def test_config_key():
    assert load_config(None, ["data.root=/d"]).train.precise_bn_batches == 200
    with pytest.raises(ConfigError, match="train.precise_bn_batches: expected a value >= 0"):
        load_config(None, ["data.root=/d", "train.precise_bn_batches=-1"])


def test_in_a_run(tmp_path):
    off = run_training(tiny_config(str(tmp_path / "off"), *BN_MODEL,
                                   "train.precise_bn_batches=0"))
    on = run_training(tiny_config(str(tmp_path / "on"), *BN_MODEL,
                                  "train.precise_bn_batches=3"))
    assert off["step"] == on["step"] == 2
    a = load_checkpoint(os.path.join(off["output_dir"], "last.pt"))["model"]
    b = load_checkpoint(os.path.join(on["output_dir"], "last.pt"))["model"]
    bn_keys = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert len(bn_keys) >= 8  # 3 stem blocks + the temporal module, mean and var each
    # training itself is untouched: every parameter is bit-identical
    for k in a:
        if k not in bn_keys and not k.endswith("num_batches_tracked"):
            assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], b[k]) for k in bn_keys)
    # the saved statistics are those of the final weights over the first 3 batches of epoch
    # 0 under seed + 1 (at most the epoch's: 12 clips / batch 2 = 6 batches)
    cfg = tiny_config(str(tmp_path / "ref"), *BN_MODEL)
    ds = build_dataset(cfg, None, train=True)
    model = build_model(cfg, ds.classes)
    model.load_state_dict(a)
    sampler = ShardedBatchSampler(len(ds), 2, rank=0, world_size=1, train=True,
                                  seed=cfg.train.seed + 1)
    sampler.set_epoch(0, 0)
    batches = [to_model_input(torch.stack([ds[i][0] for i in idx]))
               for idx in itertools.islice(iter(sampler), 3)]
    recompute_bn_stats(model, iter(batches))
    ref = model.state_dict()
    for k in bn_keys:
        torch.testing.assert_close(b[k], ref[k], rtol=1e-5, atol=1e-6)


def test_raw_and_ema_weights_each_get_their_own_statistics(tmp_path):
    """With the weight EMA kept, one pass over the batches gives the raw weights and the EMA
    weights each the statistics of their own forward."""
    res = run_training(tiny_config(str(tmp_path / "ema"), *BN_MODEL, "train.ema_decay=0.5",
                                   "train.precise_bn_batches=2"))
    ckpt = load_checkpoint(os.path.join(res["output_dir"], "last.pt"))
    cfg = tiny_config(str(tmp_path / "ref"), *BN_MODEL)
    ds = build_dataset(cfg, None, train=True)
    sampler = ShardedBatchSampler(len(ds), 2, rank=0, world_size=1, train=True,
                                  seed=cfg.train.seed + 1)
    sampler.set_epoch(0, 0)
    batches = [to_model_input(torch.stack([ds[i][0] for i in idx]))
               for idx in itertools.islice(iter(sampler), 2)]
    keys = [k for k in ckpt["model"] if k.endswith(("running_mean", "running_var"))]
    assert keys
    for which in ("model", "model_ema"):
        model = build_model(cfg, ds.classes)
        model.load_state_dict(ckpt[which])
        recompute_bn_stats(model, iter(batches))
        ref = model.state_dict()
        for k in keys:
            torch.testing.assert_close(ckpt[which][k], ref[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(ckpt["model"][k], ckpt["model_ema"][k]) for k in keys)


@pytest.mark.slow
def test_in_a_two_process_ddp_run(tmp_path):
    """torchrun, 2 gloo processes: the saved statistics are the mean over the ranks of each
    rank's statistics over its own shard of the first 2 precise-BN batches."""
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent("""
        import sys
        from art_fast.train import load_config, train
        train(load_config(None, sys.argv[1:]))
    """))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp")
    overrides = tiny_overrides(out, *BN_MODEL, "train.precise_bn_batches=2",
                               "train.batch_size=2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
           str(script), *overrides]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    log = open(os.path.join(out, "train.log")).read()
    assert "precise BN: 4 BatchNorm layers, statistics of 2 batches of 4 clips" in log
    saved = load_checkpoint(os.path.join(out, "last.pt"))
    assert saved["world_size"] == 2
    cfg = load_config(None, overrides)
    ds = build_dataset(cfg, None, train=True)
    per_rank = []
    for rank in (0, 1):
        model = build_model(cfg, ds.classes)
        model.load_state_dict(saved["model"])
        sampler = ShardedBatchSampler(len(ds), 2, rank=rank, world_size=2, train=True,
                                      seed=cfg.train.seed + 1)
        sampler.set_epoch(0, 0)
        batches = [to_model_input(torch.stack([ds[i][0] for i in idx]))
                   for idx in itertools.islice(iter(sampler), 2)]
        recompute_bn_stats(model, iter(batches))
        per_rank.append(model.state_dict())
    keys = [k for k in saved["model"] if k.endswith(("running_mean", "running_var"))]
    assert len(keys) >= 8
    for k in keys:
        want = (per_rank[0][k].double() + per_rank[1][k].double()) / 2
        torch.testing.assert_close(saved["model"][k].double(), want, rtol=1e-5, atol=1e-6)
    # the two ranks' own statistics differ (the mean is not vacuous)
    assert any(not torch.allclose(per_rank[0][k], per_rank[1][k]) for k in keys)
    assert json.loads(open(os.path.join(out, "metrics.jsonl")).readlines()[-1])["eval"]
