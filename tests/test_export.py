"""Export of the ART model, as docs/export.md describes it: what works and,
where an exporter fails, the exact failure.

- ``torch.export.export`` works with the art_fast ops inside the graph
  (``art_fast::cross_attention_fwd``, ``art_fast::topk_regions_fwd``), a dynamic batch
  included; the saved program loads only where art_fast is imported. With ``backend="torch"``
  the graph holds ATen ops only and loads anywhere.
- ONNX: the TorchScript exporter (``dynamo=False``) fails; the dynamo exporter fails on the
  class ranking's ``aten::sort.stable`` unless it is given a translation (the one of
  docs/export.md, ONNX ``TopK``), and then exports the ``backend="torch"`` model, which
  onnxruntime runs to the eager outputs; the art_fast ops have no ONNX translation.
- ``torch.jit.trace`` works (with TracerWarnings, and torch's deprecation of TorchScript);
  the traced art_fast ops, like the exported ones, need art_fast imported to load.

The ONNX cases need onnx / onnxscript (and onnxruntime to run the model): the dev extra
installs them; without them those cases skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import art_fast
from art_fast import ART

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [f"attribute combination number {i}" for i in range(6)]
# the tiny open_clip tower at 32 x 32 (tests/test_model.py): N = 16 patches per frame
SMALL = dict(backbone="tiny", image_size=32, latent_dim=32, heads=4, se_layers=1,
             rssa_layers=2, dropout=0.0)
ART_OPS = {"art_fast.cross_attention_fwd.default", "art_fast.topk_regions_fwd.default"}

needs_cpu_ops = pytest.mark.skipif(
    "cpu" not in art_fast.available_backends(),
    reason="art_fast._C's CPU kernels are not usable here (art-fast info says why)")


class Outputs(torch.nn.Module):
    """ART's forward as a tuple of tensors (docs/export.md): an exporter takes tensors and
    containers of them, not the ARTOutput dataclass."""

    def __init__(self, model: ART) -> None:
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor):
        out = self.model(video)
        return out.logits, out.region_indices, out.region_weights, out.tracklets


def sort_stable(self, *, stable=None, dim: int = -1, descending: bool = False):
    """ONNX translation of ``aten::sort.stable`` (docs/export.md): ``TopK`` over the whole axis;
    ``TopK`` breaks ties by the lower index, which is the stable order."""
    from onnxscript import opset18 as op

    n = op.Shape(self, start=dim) if dim == -1 else op.Shape(self, start=dim, end=dim + 1)
    return op.TopK(self, n, axis=dim, largest=descending, sorted=True)


@pytest.fixture(scope="module")
def model() -> Outputs:
    torch.manual_seed(0)
    art = ART(CLASSES, **SMALL, num_frames=4, num_queries=2, k_region=4,
              text_cache_dir=tempfile.mkdtemp(prefix="art_fast_export_bank_"))
    return Outputs(art).eval()


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    return torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _close(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w.is_floating_point():
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(g, w)


def _export(model, video, backend, **kw):
    with art_fast.use_backend(backend), torch.no_grad():
        return torch.export.export(model, (video,), **kw), model(video)


def _art_targets(ep) -> set[str]:
    return {str(n.target) for n in ep.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("art_fast")}


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------------------------
# torch.export
# --------------------------------------------------------------------------------------------


@needs_cpu_ops
def test_torch_export_keeps_the_art_fast_ops_and_loads_with_art_fast(model, video, tmp_path):
    ep_cpu, want = _export(model, video, "cpu")
    assert _art_targets(ep_cpu) == ART_OPS
    _close(ep_cpu.module()(video), want)
    ep_torch, want_torch = _export(model, video, "torch")
    assert _art_targets(ep_torch) == set()
    _close(ep_torch.module()(video), want_torch)

    torch.export.save(ep_cpu, tmp_path / "art_cpu.pt2")
    torch.export.save(ep_torch, tmp_path / "art_torch.pt2")
    torch.save({"video": video, "cpu": want, "torch": want_torch}, tmp_path / "io.pt")
    # a fresh process without art_fast: the ATen-only program loads and runs, the one with
    # the art_fast ops cannot resolve them
    res = _python(f"""
        import sys, torch
        io = torch.load({str(tmp_path / 'io.pt')!r})
        ep = torch.export.load({str(tmp_path / 'art_torch.pt2')!r})
        got = ep.module()(io["video"])
        want = io["torch"]
        assert all(torch.allclose(g.float(), w.float(), atol=1e-5) for g, w in zip(got, want))
        print("torch program ok")
        assert "art_fast" not in sys.modules
        torch.export.load({str(tmp_path / 'art_cpu.pt2')!r})
        """, tmp_path)
    assert "torch program ok" in res.stdout, res.stderr[-3000:]
    assert res.returncode != 0
    assert "failed to resolve torch.ops.art_fast.cross_attention_fwd.default" in res.stderr
    # with `import art_fast` first it loads and gives the eager outputs
    res = _python(f"""
        import torch
        import art_fast  # registers the art_fast ops the program calls
        io = torch.load({str(tmp_path / 'io.pt')!r})
        ep = torch.export.load({str(tmp_path / 'art_cpu.pt2')!r})
        got = ep.module()(io["video"])
        assert all(torch.allclose(g.float(), w.float(), atol=1e-5) for g, w in zip(got, io["cpu"]))
        print("art_fast program ok")
        """, ROOT)
    assert res.returncode == 0 and "art_fast program ok" in res.stdout, res.stderr[-3000:]


@needs_cpu_ops
def test_torch_export_with_a_dynamic_batch(model, video):
    batch = torch.export.Dim("batch", min=1, max=64)
    ep, _ = _export(model, video, "cpu", dynamic_shapes={"video": {0: batch}})
    assert _art_targets(ep) == ART_OPS
    v3 = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with art_fast.use_backend("cpu"), torch.no_grad():
        for v in (v3, video[:1]):
            _close(ep.module()(v), model(v))


def test_the_dataclass_output_needs_the_tuple_wrapper(model, video):
    """ART itself returns an ARTOutput, which torch.export does not know how to flatten."""
    with torch.no_grad(), pytest.raises(RuntimeError, match="ARTOutput'> in output, which is "
                                                           "not a known type"):
        torch.export.export(model.model, (video,))


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------


def test_onnx_torchscript_exporter_fails(model, video, tmp_path):
    """dynamo=False: under no_grad at open_clip's fused attention, with grad on at the class
    ranking's stable sort (the legacy symbolic of aten::sort misreads the .stable overload's
    arguments as an out= argument)."""
    path = tmp_path / "art.onnx"
    with art_fast.use_backend("torch"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad(), pytest.raises(torch.onnx.errors.UnsupportedOperatorError,
                                            match="aten::_native_multi_head_attention"):
            torch.onnx.export(model, (video,), str(path), dynamo=False)
        with pytest.raises(torch.onnx.errors.OnnxExporterError,
                           match="ONNX export of operator Sort, Out parameter is not supported"):
            torch.onnx.export(model, (video,), str(path), dynamo=False)
    assert not path.exists()


def test_onnx_dynamo_exporter_needs_the_sort_translation(model, video):
    pytest.importorskip("onnxscript")
    with art_fast.use_backend("torch"), torch.no_grad(), pytest.raises(Exception) as exc:
        torch.onnx.export(model, (video,), dynamo=True, verbose=False)
    assert type(exc.value).__name__ == "ConversionError"
    assert "No ONNX function found for <OpOverload(op='aten.sort', overload='stable')>" in str(
        exc.value)


def test_onnx_dynamo_export_with_the_sort_translation_runs(model, video, tmp_path):
    pytest.importorskip("onnxscript")
    path = tmp_path / "art.onnx"
    with art_fast.use_backend("torch"), torch.no_grad():
        program = torch.onnx.export(
            model, (video,), dynamo=True, verbose=False, input_names=["video"],
            output_names=["logits", "region_indices", "region_weights", "tracklets"],
            custom_translation_table={torch.ops.aten.sort.stable: sort_stable})
        want = model(video)
    program.save(str(path))
    assert path.stat().st_size > 0
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["video"]
    got = sess.run(None, {"video": video.numpy()})
    _close([torch.from_numpy(g) for g in got], want)


@needs_cpu_ops
def test_onnx_dynamo_export_has_no_translation_for_the_art_fast_ops(model, video):
    pytest.importorskip("onnxscript")
    with art_fast.use_backend("cpu"), torch.no_grad(), pytest.raises(Exception) as exc:
        torch.onnx.export(model, (video,), dynamo=True, verbose=False,
                          custom_translation_table={torch.ops.aten.sort.stable: sort_stable})
    assert type(exc.value).__name__ == "ConversionError"
    assert "No ONNX function found for <OpOverload(op='art_fast." in str(exc.value)


# --------------------------------------------------------------------------------------------
# torch.jit.trace
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_jit_trace(model, video, tmp_path, backend):
    if backend not in art_fast.available_backends():
        pytest.skip(f"backend {backend} is not usable here")
    v3 = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with art_fast.use_backend(backend), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings (shape checks), TorchScript's deprecation
        traced = torch.jit.trace(model, (video,))
        _close(traced(video), model(video))
        _close(traced(v3), model(v3))  # another batch size
    path = tmp_path / f"art_{backend}.jit.pt"
    traced.save(str(path))
    res = _python(f"""
        import torch, warnings
        warnings.simplefilter("ignore")
        m = torch.jit.load({str(path)!r})
        print(tuple(m(torch.randn(2, 4, 3, 32, 32))[0].shape))
        """, tmp_path)
    if backend == "torch":
        assert res.returncode == 0 and "(2, 6)" in res.stdout, res.stderr[-3000:]
    else:  # the traced art_fast ops need art_fast imported
        assert res.returncode != 0
        assert "art_fast.cross_attention_fwd" in res.stderr, res.stderr[-3000:]
