"""`repocomplete bench context`: every figure is there, beside its target, with the CPU."""

from __future__ import annotations

import torch

from helpers import write_tree

from repocomplete.bench.context import TARGETS, format_report, run_context_bench
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
    text = format_report(report)
    for target in (f"< {TARGETS['cli_index_s']} s", f"< {TARGETS['cli_context_s']} s",
                   f"< {TARGETS['server_ready_s']} s", f"< {TARGETS['server_rss_mb']:.0f} MB",
                   f"p95 < {TARGETS['incremental_p95_ms']:.0f} ms"):
        assert target in text
    assert f"({report['cpu']['capability']})" in text and "load average" in text
