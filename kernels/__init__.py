"""Triton kernels of art_fast, installed as ``art_fast.kernels`` (one module per op).

The Triton kernels arrive with their own issue; until then this package holds none, and the
``triton`` backend reports itself unavailable.
"""
