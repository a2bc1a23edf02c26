"""Triton kernels of art_fast, installed as ``art_fast.kernels`` (one module per op).

- ``cross_attention``: fused forward (online softmax; weights on request) and backward (one
  program per (b, h): no atomics; a shared query set's gradient summed over B by a parallel
  tree of fixed order).
- ``topk_regions``: selection by k rounds of masked arg-max (ties to the lower index, NaN
  last), softmax and pooling; backward by dense rows and a tiled W^T g_pooled matmul.
- ``info_nce``: tiny-group kernels (several groups per program) and large-group kernels
  (online log-sum-exp over candidate tiles, logits as a K-loop over D; split row / column
  backward, as Inf-CL, each program owning one D chunk of its gradient rows).

Every kernel is compiled ahead of time for sm_80 and sm_90 in CI (benchmarks/triton_aot.py,
tests/test_triton_aot.py): no compile error, shared memory within the limit, no spills at the
paper shapes. Launch parameters (warps, block shapes, autotune lists) come from those tables.

Each module registers its ops as ``art_fast_triton::<op>_fwd`` / ``_bwd`` custom ops (fake
kernels and autograd: ``torch.compile(fullgraph=True)`` traces them) and defines ``forward``,
the entry point ``art_fast.ops`` calls for ``backend="triton"``. They run on CUDA tensors, or on
CPU tensors when ``TRITON_INTERPRET=1`` is set before ``import art_fast``. Profile notes:
``docs/kernels/<op>.md``.
"""
