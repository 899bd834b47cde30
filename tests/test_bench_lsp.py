"""`repocomplete bench lsp`: the typing session through the real server; the report's figures add up."""

from __future__ import annotations

from repocomplete.bench.lsp import LspBenchOptions, format_report, run_lsp_bench
from repocomplete.model_runtime.config import RuntimeConfig


def test_bench_lsp_reports_latency_engine_time_and_overhead(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    runtime = RuntimeConfig(model=str(tiny_model_dir), device="cpu", quantize="none", cache_dir=tmp_path / "mc",
                            max_new_tokens=4)
    report = run_lsp_bench(runtime, LspBenchOptions(keystrokes=3, burst_keystrokes=3, burst_interval_ms=1,
                                                    context_tokens=200), progress=False)
    rows = report["requests"]
    assert [r["phase"] for r in rows] == ["paced"] * 3 + ["burst"] * 3
    assert report["paced"]["outcomes"] == {"completed": 3}  # each paced keystroke waited for its answer
    for r in rows:
        if r["outcome"] == "completed":
            assert 0 < r["engine_ms"] <= r["latency_ms"]
    paced = [r for r in rows if r["phase"] == "paced"]
    overheads = sorted(r["latency_ms"] - r["engine_ms"] - r["debounce_ms"] for r in paced)
    assert report["paced"]["overhead_ms"]["p50"] == round(overheads[1], 2)
    # Every burst request was answered one way or another, and the server counted each.
    assert sum(report["burst"]["outcomes"].values()) == 3
    assert report["superseded"]["count"] == report["paced"]["outcomes"].get("superseded", 0) + \
        report["burst"]["outcomes"].get("superseded", 0)
    text = format_report(report)
    assert "server overhead p50" in text and "superseded requests" in text
    # The server's CPU and path stand beside the figures: --quantize none is plain fp32, fixed by the flag.
    import torch

    assert report["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    path = report["cpu"]["path"]
    assert (path["decode"], path["prefill"], path["kv"], path["source"]) == ("fp32", "fp32", "fp32", "flags")
    assert f"({report['cpu']['capability']}), {path['threads']} threads: decode fp32, prefill fp32, kv fp32 (flags)" \
        in text
