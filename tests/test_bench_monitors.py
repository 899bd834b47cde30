"""`repocomplete bench monitors`: what the monitors add, on a tiny random model over a small member suite."""

from __future__ import annotations

import json

from helpers import write_tree
from repocomplete.bench.monitors import format_report, run_monitors_bench
from repocomplete.pipeline import Completer

CLIENT = "class Client:\n    def fetch(self, path):\n        return path\n\n    def close(self):\n        pass\n"
MAIN = "from client import Client\n\n\ndef run():\n    c = Client()\n    c.fetch('/')\n"


def member_suite(tmp_path, groundtruth="fetch('/')"):
    suite = tmp_path / "suite"
    write_tree(suite / "repos" / "proj", {"client.py": CLIENT, "main.py": MAIN})
    prompt = MAIN[: MAIN.index("fetch")]
    task = {"prompt": prompt, "groundtruth": groundtruth, "right_context": "\n",
            "metadata": {"task_id": "proj/main.py:6", "repository": "proj", "file": "main.py",
                         "groundtruth_start_lineno": 5, "language": "python"}}
    (suite / "tasks.jsonl").write_text(json.dumps(task) + "\n")
    return suite


def test_the_measured_pass_asks_the_analysis_anew_and_reports_both_decode_steps(tiny_config, tmp_path, monkeypatch):
    suite = member_suite(tmp_path)
    settled = []
    original = Completer.settle_analysis

    def settle(self, forget=False):
        settled.append(forget)
        original(self, forget)

    monkeypatch.setattr(Completer, "settle_analysis", settle)
    report = run_monitors_bench(tiny_config, suite, n=1, max_tokens=3, progress=False, keystrokes=0)
    assert settled == [True]  # once, after the warm pass: its answers forgotten, asked anew when measured
    (row,) = report["rows"]
    assert row["task"] == "proj/main.py:6"
    assert row["decode_ms_per_step_on"] > 0 and row["decode_ms_per_step_off"] > 0
    assert row["monitor_ms"] > 0 and 1 <= row["steps"] <= 3 + 8  # (the word tail may finish a name the limit cut)
    text = format_report(report)
    assert "decode step, monitors off:" in text and ", on:" in text


def test_the_typing_passes_complete_at_each_keystroke_of_the_answer_on_its_line(tiny_config, tmp_path, monkeypatch):
    suite = member_suite(tmp_path, groundtruth="fe\ntch('/')")  # the answer breaks the line after two characters
    asked = []
    original = Completer.complete

    def complete(self, path, text, offset, options=None):
        asked.append((text[offset - 3:offset], bool(options.monitors)))
        return original(self, path, text, offset, options)

    monkeypatch.setattr(Completer, "complete", complete)
    report = run_monitors_bench(tiny_config, suite, n=1, max_tokens=3, progress=False, keystrokes=4)
    assert asked[:3] == [(" c.", True), (" c.", True), (" c.", False)]  # the warm, on and off passes at the cursor
    assert asked[3:] == [("c.f", True), (".fe", True), ("c.f", False), (".fe", False)]  # typing: "f", "fe", then "\n"
    typing = report["typing"]
    assert typing["completions"] == 2
    assert [r["task"] for r in typing["rows"]] == ["proj/main.py:6+1", "proj/main.py:6+2"]
    assert all(r["steps"] >= 1 and r["decode_ms_per_step_off"] > 0 for r in typing["rows"])
    assert "while typing (4 keystrokes" in format_report(report)
