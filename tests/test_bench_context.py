"""`repocomplete bench context`: every figure is there, beside its target, with the CPU."""

from __future__ import annotations

import torch

from helpers import write_tree

from repocomplete.bench.context import TARGETS, TYPED, _type_in_file, format_report, run_context_bench
from repocomplete.context_engine.config import ContextConfig


def test_bench_context_reports_the_warm_start_beside_its_targets(tmp_path):
    files = {f"pkg/m{i}.py": "".join(f"def f{i}_{j}(x):\n    return g{j}(x) + {j}\n\n" for j in range(12 + i))
             for i in range(6)}
    files["pkg/__init__.py"] = "from .m0 import f0_0\n"
    source = write_tree(tmp_path / "src", files)
    (source / ".git").mkdir()
    report = run_context_bench(source, ContextConfig(), edits=2, queries=2, progress=False, runs=1)
    assert report["files"] == 7 and report["warm_reparsed_files"] == 0
    assert report["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    for key in ("cli_index_s", "cli_context_s", "cli_context_all_providers_s"):
        assert report[key]["best"] > 0 and len(report[key]["runs"]) == 1
    server = report["server"]
    assert server["ready_s"]["best"] > 0 and server["rss_mb"] > 0 and server["reparsed_files"] == 0
    assert report["incremental_update_ms"]["n"] == 2 and report["incremental_largest_file"]["path"].endswith(".py")
    assert report["typing_largest_open_ms"] > 0 and report["typing_largest_ms"]["n"] == 2
    text = format_report(report)
    assert "(typing in the largest file): " in text and "the open " in text
    for target in (f"< {TARGETS['cli_index_s']} s", f"< {TARGETS['cli_context_s']} s",
                   f"< {TARGETS['server_ready_s']} s", f"< {TARGETS['server_rss_mb']:.0f} MB",
                   f"p95 < {TARGETS['incremental_p95_ms']:.0f} ms"):
        assert target in text
    assert f"({report['cpu']['capability']})" in text and "load average" in text


def test_typing_goes_through_the_editor_path_and_leaves_no_buffer(tmp_path):
    from repocomplete.context_engine.engine import ContextEngine

    source = "".join(f"def f{j}(x):\n    return x + {j}\n\n" for j in range(20))
    root = write_tree(tmp_path / "repo", {"pkg/m.py": source})
    engine = ContextEngine(root, ContextConfig(index_dir=tmp_path / "idx"))
    engine.build()
    seen = []
    set_buffer = engine.set_buffer

    def recording(path, text, edited_line=None):
        seen.append((text, edited_line))
        set_buffer(path, text, edited_line)

    engine.set_buffer = recording
    try:
        open_ms, update_ms, visible_ms = _type_in_file(engine, root, "pkg/m.py", 3)
        assert open_ms > 0 and len(update_ms) == len(visible_ms) == 3
        assert seen[0] == ((root / "pkg/m.py").read_text(), None)  # the open: the whole text, no edited line
        lines = seen[-1][0].split("\n")
        assert [line for _, line in seen[1:]] == [31, 31, 31]
        assert lines[30] == TYPED  # (before `def f10`: no indentation)
        assert engine.index.buffer_text(str(root / "pkg/m.py")) is None
    finally:
        engine.close()
