"""bench/attention_kernels.py: the rows of kernel_figures at tiny lengths (the figures themselves are not checked)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # as the other kernel tests: set before the kernels are defined

from repocomplete.bench.attention_kernels import kernel_figures

KEYS = {"phase", "tokens", "dense_ms", "sparse_ms", "speedup", "backend", "device", "selected", "skipped"}


def test_kernel_figures_rows():
    rows = kernel_figures(lengths=(256, 300), head_dim=16, kv_heads=2, q_heads=6, device="cpu", block_size=16,
                          repeats=1, window=2)
    assert [(r["phase"], r["tokens"]) for r in rows] == [
        ("prefill", 256), ("decode", 256), ("prefill", 300), ("decode", 300)]
    for row in rows:
        assert KEYS <= set(row), row
        assert row["skipped"] is None and row["backend"] == "torch" and row["device"] == "cpu"
        assert row["dense_ms"] > 0 and row["sparse_ms"] > 0
        assert row["speedup"] == row["dense_ms"] / row["sparse_ms"]
        assert 0 < row["selected"] <= 1
    assert all(r["grouped_ms"] > 0 for r in rows if r["phase"] == "decode")


def test_kernel_figures_skips_long_prefills():
    rows = kernel_figures(lengths=(128,), head_dim=16, kv_heads=1, q_heads=2, device="cpu", block_size=16,
                          repeats=1, max_dense_s=0.0)
    prefill, decode = rows
    assert prefill["phase"] == "prefill" and prefill["skipped"].startswith("dense SDPA prefill estimated")
    assert prefill["dense_ms"] is None and prefill["sparse_ms"] is None and prefill["speedup"] is None
    assert decode["skipped"] is None and decode["speedup"] == decode["dense_ms"] / decode["sparse_ms"]
