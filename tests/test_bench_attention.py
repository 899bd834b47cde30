"""`repocomplete bench attention` at model level, on a tiny random model with short lengths: the figures it reports and
how its ratios and targets follow from them."""

from __future__ import annotations

from repocomplete.bench.attention import AttentionOptions, NEEDLE, cut_items, format_report, run_attention_bench
from repocomplete.model_runtime.templates import ContextItem


def test_model_figures_report_both_modes_the_needle_and_ratios(tiny_config, monkeypatch):
    monkeypatch.setattr("repocomplete.model_runtime.engine.bf16_matmuls_fast", lambda loaded: True)  # AVX-512 bf16
    # Short lengths: sparse from 256 tokens on, so the ~600-token prompts run sparse and the 2k baseline does not.
    config = tiny_config.replace(sparse_min_tokens=256, max_new_tokens=4)
    options = AttentionOptions(context_tokens=400, file_tokens=200, keystrokes=3, decode_tokens=4, kernels=False,
                               sweep_lengths=(300, 500), shared_prefix_tokens=64)
    report = run_attention_bench(config, options, progress=lambda line: None)["model"]
    dense, sparse = report["modes"]["dense"], report["modes"]["sparse"]
    assert dense["prompt_tokens"] == sparse["prompt_tokens"] > 400
    assert (dense["kv_dtype"], sparse["kv_dtype"]) == ("float32", "bfloat16")
    assert 350 <= sparse["context_tokens"] <= 700
    assert report["ratios"]["decode_sparse_over_dense"] == round(sparse["decode_tok_s"] / dense["decode_tok_s"], 2)
    assert report["ratios"]["prefill_dense_over_sparse"] == round(dense["cold_prefill_s"] / sparse["cold_prefill_s"], 2)
    assert report["targets"]["decode at 8k >= 1.5x dense"] == (report["ratios"]["decode_sparse_over_dense"] >= 1.5)
    assert report["modes"]["dense_2k"]["keystroke"]["n"] == 2  # the first keystroke warms up
    needle = report["needle"]
    assert set(needle["modes"]) == {"dense", "sparse", "auto"} and needle["of"] == 3 and len(needle["rows"]) == 9
    assert all(0 < row["depth_tokens"] < row["prompt_tokens"] for row in needle["rows"])
    deep = [row["depth_tokens"] for row in needle["rows"] if row["mode"] == "dense"]
    assert deep == sorted(deep, reverse=True) and len(set(deep)) == 3  # placed later: closer to the cursor
    assert needle["modes"]["dense"] == sum(row["found"] for row in needle["rows"] if row["mode"] == "dense")
    assert [row["prompt_tokens"] for row in report["sweep"]] == [300, 500]
    assert all(abs(row["actual_tokens"] - row["prompt_tokens"]) < 80 for row in report["sweep"])
    shared = report["shared_prefix"]
    assert abs(shared["speedup"] - shared["sequential_s"] / shared["batched_s"]) < 0.05 * shared["speedup"]
    assert shared["sequences"] == 16
    text = format_report({"model": report})
    assert "needle found: dense" in text and "decode_sparse_over_dense" in text


def test_cut_items_keeps_whole_lines_within_the_tokens(tokenizer):
    items = [ContextItem("a.py", "x = 1\n" * 5), ContextItem("b.py", "y = 2\n" * 50), NEEDLE]
    cut = cut_items(tokenizer, items, 120)
    total = sum(len(tokenizer.encode(line + "\n", add_special_tokens=False)) for item in cut
                for line in item.text.split("\n") if line)
    assert [item.path for item in cut] == ["a.py", "b.py"] and 100 <= total <= 120
    assert all(line in ("x = 1", "y = 2", "") for item in cut for line in item.text.split("\n"))
