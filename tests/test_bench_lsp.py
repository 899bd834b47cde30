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
    # The tiny model is no GGUF: the llama.cpp peer is skipped with a line that says so, and nothing is compared.
    assert "needs a GGUF model" in report["peer"]["skipped"] and report["peer"]["skipped"] in text
    assert "p50_ratio_ours_over_peer" not in report["comparison"]
    assert "target p50 <= 0.8x llama.cpp: not measured" in text


def test_bench_lsp_without_the_cache_sends_every_keystroke_to_the_engine(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    runtime = RuntimeConfig(model=str(tiny_model_dir), device="cpu", quantize="none", cache_dir=tmp_path / "mc",
                            max_new_tokens=4)
    report = run_lsp_bench(runtime, LspBenchOptions(keystrokes=4, burst_keystrokes=0, context_tokens=200,
                                                    cache=False, peer="none"), progress=False)
    assert report["paced"]["outcomes"] == {"completed": 4}
    assert all(r["tokens"] is not None and r["decode_ms"] is not None for r in report["requests"])
    assert report["peer"] == {"skipped": "no peer asked for (--peer none)"}


FAKE_LLAMA_SERVER = '''
import json, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
port = int(sys.argv[sys.argv.index("--port") + 1])
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self._send({"status": "ok"})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["cache_prompt"] and body["stop"] == ["\\n"] and body["temperature"] == 0
        time.sleep(0.02)
        self._send({"content": body["prompt"][-3:], "tokens_predicted": body["n_predict"]})
HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def test_the_peer_replays_prompts_against_a_llama_server(tmp_path):
    import stat
    import sys

    from repocomplete.bench.peer import LlamaCppPeer

    script = tmp_path / "llama-server"
    script.write_text(f"#!{sys.executable}\n" + FAKE_LLAMA_SERVER)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    peer = LlamaCppPeer.find(tmp_path / "m.gguf", threads=2, n_ctx=4096, command=str(script))
    assert peer.kind == "llama-server" and ["-t", "2"] == peer.argv[peer.argv.index("-t"):peer.argv.index("-t") + 2]
    with peer:
        answer = peer.complete("def f(x):", 7)
    assert answer.text == "(x):" [-3:] and answer.tokens == 7 and answer.latency_ms >= 20
    assert peer.process.poll() is not None  # closed with the block


def test_a_missing_peer_is_skipped_with_a_line_that_says_what_to_install(tmp_path, monkeypatch):
    import shutil
    import sys

    import pytest

    from repocomplete.bench.peer import LlamaCppPeer, PeerUnavailable

    monkeypatch.setattr(shutil, "which", lambda name: None)
    python = tmp_path / "python"  # a Python without llama-cpp-python
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    with pytest.raises(PeerUnavailable, match=r"pip install 'llama-cpp-python\[server\]'"):
        LlamaCppPeer.find(tmp_path / "m.gguf", 2, 4096, python=str(python))
    with pytest.raises(PeerUnavailable, match="llama-server on PATH"):
        LlamaCppPeer.find(tmp_path / "m.gguf", 2, 4096, kind="llama-server", python=sys.executable)


def test_compare_states_ratios_and_targets():
    from repocomplete.bench.lsp import compare

    report = {"paced": {"latency_ms": {"p50": 80.0, "p95": 250.0}, "decode_tok_s": 60.0},
              "peer": {"latency_ms": {"p50": 125.0, "p95": 374.0}}}
    c = compare(report)
    assert c["p50_ratio_ours_over_peer"] == 0.64 and c["p95_ratio_ours_over_peer"] == 0.67
    assert all(c["targets"].values())
    report["paced"]["latency_ms"]["p50"] = 110.0
    assert compare(report)["targets"]["p50 <= 0.8x llama.cpp"] is False
