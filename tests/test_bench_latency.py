"""`repocomplete bench latency`: the typing session's series; with --root, the same keystrokes with repository
context through the Completer, and the share of each prompt the prefix cache reused."""

from __future__ import annotations

import shutil
from pathlib import Path

from repocomplete.bench.latency import BenchOptions, format_report, run_latency_bench
from repocomplete.bench.session import BUNDLED_FILE
from repocomplete.cli import main
from repocomplete.context_engine.config import ContextConfig
from repocomplete.model_runtime.config import RuntimeConfig


def test_repository_context_series_reports_context_and_reuse(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("[project]\nname = 'pkg'\n")
    shutil.copy(BUNDLED_FILE, repo / "pkg" / "textwrap_copy.py")
    (repo / "pkg" / "helpers.py").write_text(
        "def fill_paragraphs(text, width=70):\n    \"\"\"Wrap every paragraph of text.\"\"\"\n"
        "    return '\\n\\n'.join(p for p in text.split('\\n\\n'))\n" * 3)
    runtime = RuntimeConfig(model=str(tiny_model_dir), device="cpu", quantize="none", cache_dir=tmp_path / "mc")
    # (jedi's providers answer behind a deadline in an editor: left out, so each keystroke packs the same records.)
    context = ContextConfig(budget_tokens=256, providers=("retrieval", "repo_map", "neighbours"),
                            index_dir=tmp_path / "index")
    options = BenchOptions(file=str(repo / "pkg" / "textwrap_copy.py"), keystrokes=4, context_tokens=300,
                           max_new_tokens=2, uncached_every=4, peers=(), repo=str(repo), context=context,
                           healing_cursors=0)
    report = run_latency_bench(runtime, options, progress=False)
    series = report["modes"]["engine_cache_repo"]
    assert series["n"] == 3  # the first keystroke warms up
    assert 0 < series["mean_context_tokens"] <= 256
    # Each keystroke's prompt = the context + the file's window; typing keeps most of it in the prefix cache.
    assert 0.9 < series["reused_fraction"] < 1
    assert series["mean_cached_tokens"] > series["mean_prefill_tokens"]
    assert "the prefix cache reused" in format_report(report)
    assert "repo" not in report["modes"]["engine_cache"]  # the in-file series stays as it was


def test_repo_without_a_file_inside_it_is_a_usage_error(tmp_path, capsys):
    assert main(["bench", "latency", "--root", str(tmp_path), "--file", str(BUNDLED_FILE)]) == 2
    assert "--root needs --file, a file inside that repository" in capsys.readouterr().err


def test_a_session_types_into_a_gap_and_the_text_after_the_cursor_stays_put():
    from repocomplete.bench.session import Session

    text = "def f(x):\n    return x + 1\n\nprint(f(2))\n"
    start = text.index("return")
    session = Session(Path("a.py"), text, start, [start + k for k in range(6)])
    buffers = [session.buffer(k) for k in range(6)]
    suffixes = {buf[cursor:] for buf, cursor in buffers}
    assert suffixes == {text[start + 6:]}  # the characters still to type are not in the buffer yet
    assert [buf[:cursor] for buf, cursor in buffers] == [text[: start + k] for k in range(6)]
