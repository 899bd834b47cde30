"""bench.micro on a tiny repository: every subcommand runs and prints its figures, with the counts it should have."""

from __future__ import annotations

import re

import numpy as np
import pytest

from repocomplete.bench.micro import main
from repocomplete.context_engine.parsing import parse_source

NUM = r"\d+(?:\.\d+)?"
SHORT = "".join(f"def helper_{i}(x):\n    return x + {i}\n\n\n" for i in range(3))
LONG = '"""Forty lines and more: retrieval queries only from files longer than 30 lines."""\n\n' + "".join(
    f"def step_{i}(value):\n    return value * {i}\n\n\n" for i in range(10))
FILES = {
    "pkg/__init__.py": "",
    "pkg/short.py": SHORT,
    "pkg/long.py": "from .short import helper_1\n\n\n" + LONG,
}


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def run(capsys, *argv: str) -> list[str]:
    assert main(list(argv)) == 0
    return capsys.readouterr().out.splitlines()


def test_parsing_counts_what_parse_source_finds(repo, capsys):
    symbols = [parse_source(rel, text) for rel, text in FILES.items()]
    counts = [sum(len(getattr(s, k)) for s in symbols) for k in ("definitions", "imports", "identifiers")]
    first, second = run(capsys, "parsing", str(repo), "--repeat", "2")
    assert first == f"3 files, 0.0 MB: {counts[0]} definitions, {counts[1]} imports, {counts[2]} identifiers"
    assert counts[0] == 13 and counts[1] == 1
    assert re.fullmatch(rf"parse_source: {NUM} s = {NUM} MB/s \(tree-sitter's parse alone: {NUM} MB/s; best of 2\)",
                        second)


def test_index_builds_a_copy_and_times_updates_of_two_files(repo, capsys):
    lines = run(capsys, "index", str(repo), "--edits", "2")
    assert lines[0] == f"{repo}: 3 files, 0.0 MB, 13 definitions, 0 skipped"
    assert re.fullmatch(rf"cold build: {NUM} s = {NUM} MB/s \(3 parsed\)", lines[1])
    assert re.fullmatch(rf"warm restart: {NUM} s \(0 parsed\), cold/warm = \d+x", lines[2])
    # the middle file by name, then the largest one
    assert [re.match(r"update_file on (\S+) \((\d+) bytes\)", line).groups() for line in lines[3:]] == [
        ("pkg/long.py", str(len(FILES["pkg/long.py"]))), ("pkg/long.py", str(len(FILES["pkg/long.py"])))]
    assert all(re.search(rf", 2 edits: p50 {NUM} ms, p95 {NUM} ms$", line) for line in lines[3:])
    assert {rel: (repo / rel).read_text() for rel in FILES} == FILES  # DIR itself is never written
    assert not list(repo.rglob("*.sqlite"))


def test_analysis_times_each_provider_case(capsys):
    lines = run(capsys, "analysis", "--calls", "1")
    pattern = re.compile(rf"(.+): (\d+) records; first call {NUM} ms; p50 {NUM} ms, p95 {NUM} ms over 1 calls")
    found = [pattern.fullmatch(line).groups() for line in lines]
    assert [label for label, _ in found] == [
        "import_context", "typed_hole_context, unclosed call argument", "typed_hole_context, after `self.inv.`",
        "typed_hole_context, end of each method-body line in turn"]
    assert all(int(n) > 0 for _, n in found[:3])  # the demo's imports, and both holes, have project definitions


def test_facts_times_the_monitors_questions_shared_and_fresh(tmp_path, capsys):
    import json

    from helpers import write_tree

    suite = tmp_path / "suite"
    main_py = "from client import Client\n\n\ndef run(u):\n    c = Client()\n    c.fetch(u)\n"
    write_tree(suite / "repos" / "proj", {
        "client.py": "class Client:\n    def fetch(self, path):\n        return path\n", "main.py": main_py})
    tasks = [("c.", "fetch(u)"), ("c.fetch(", "u)")]
    (suite / "tasks.jsonl").write_text("".join(json.dumps({
        "prompt": main_py[: main_py.index(prompt) + len(prompt)], "groundtruth": truth, "right_context": "\n",
        "metadata": {"task_id": f"proj/main.py:{i}", "repository": "proj", "file": "main.py",
                     "groundtruth_start_lineno": 5, "language": "python"}}) + "\n" for i, (prompt, truth) in
        enumerate(tasks)))
    lines = run(capsys, "facts", str(suite), "--versions", "2")
    pattern = rf"(shared|fresh) inference state: 3 questions on 2 tasks, 2 versions each; mean {NUM} ms, p50 {NUM} ms, "
    pattern += rf"p95 {NUM} ms"
    assert [re.fullmatch(pattern + " over the 3 later versions", line).group(1) for line in lines[:2]] == [
        "shared", "fresh"]  # deref at `c.`; scope and args at `fetch(`: each on 2 versions, the second timed
    assert lines[2] == "answers that differ, shared against fresh: 0 of 6"


@pytest.mark.parametrize("method", ["bm25", "jaccard"])
def test_retrieval_sizes_and_query_latencies(repo, capsys, method):
    lines = run(capsys, "retrieval", str(repo), "--queries", "3", "--method", method)
    n_lines = sum(text.count("\n") + 1 for rel, text in FILES.items())
    assert re.fullmatch(rf"3 files, {n_lines} lines, 5 windows \(5 distinct\), vocabulary \d+", lines[0])
    assert re.fullmatch(rf"add_document \(tokenise\) \d+ ms, index build {NUM} ms", lines[1])
    assert re.fullmatch(rf"query \({method}, k=8, 3 queries\): p50 {NUM} ms, p95 {NUM} ms, max {NUM} ms", lines[2])
    assert re.fullmatch(rf"edit one file \+ re-index \+ query: p50 {NUM} ms, p95 {NUM} ms, max {NUM} ms", lines[3])
    assert len(lines) == 4  # no dense figures unless asked


class StubEmbedder:
    """Unit vectors without the model: loading MiniLM alone takes seconds (test_retrieval covers the real one)."""

    dim, device = 8, "cpu"

    def __init__(self):
        self.texts: list[str] = []

    def embed(self, texts):
        self.texts += texts
        return np.eye(self.dim, dtype=np.float32)[[len(t) % self.dim for t in texts]]


def test_retrieval_dense_sample_embeds_that_many_windows(repo, capsys, monkeypatch):
    from repocomplete.context_engine.dense import Embedder

    stub = StubEmbedder()
    monkeypatch.setattr(Embedder, "shared", lambda: stub)
    lines = run(capsys, "retrieval", str(repo), "--queries", "1", "--dense-sample", "4")
    assert re.fullmatch(rf"dense embedding: 4 windows in {NUM} s = \d+ windows/s \(cpu, \d+ threads, batch 64, "
                        r"max 256 tokens\)", lines[4])
    assert re.fullmatch(rf"dense query embedding: {NUM} ms per query", lines[5])
    assert len(stub.texts) == 4 + 4 + 20  # the warm-up, the sample, one text per timed query


def test_unknown_part_and_bad_counts_are_usage_errors(capsys):
    for argv in ([], ["nothing"], ["analysis", "--calls", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2


def test_tokens_measures_the_estimate_and_the_cost_of_counting(repo, capsys):
    from repocomplete.model_runtime.errors import ModelLoadError
    from repocomplete.model_runtime.loading import embedded_gguf_path

    try:
        embedded_gguf_path()
    except ModelLoadError as e:
        pytest.skip(str(e))
    lines = run(capsys, "tokens", str(repo), "--queries", "2", "--budget", "256")
    assert re.fullmatch(rf"estimate vs .*'s tokenizer on 1 \.py files \(\d+ tokens\): [+-]{NUM}% in all; "
                        rf"per file p10 [+-]{NUM}%, p50 [+-]{NUM}%, p90 [+-]{NUM}%", lines[0]), lines[0]
    assert re.fullmatch(rf"2 context calls on {re.escape(str(repo))} \(budget 256, {NUM} records each\), .*, "
                        r"template plain:", lines[1]), lines[1]
    for line, kind in zip(lines[2:5], ("the estimate", "the tokenizer, cold", "the tokenizer, warm")):
        assert re.fullmatch(rf"  counting with {kind}: p50 {NUM} ms, p95 {NUM} ms of a context call's "
                            rf"p50 {NUM} ms, p95 {NUM} ms", line), line
    assert re.fullmatch(rf"  the current file's window, tokenized to bound the context: p50 {NUM} ms, p95 {NUM} ms",
                        lines[5])
    assert run(capsys, "tokens", str(repo), "--queries", "0")[1:] == []  # the estimate alone


def test_train_times_a_step_of_each_case_on_the_embedded_model(capsys):
    lines = run(capsys, "train", "--tokens", "32", "--steps", "1")
    assert re.match(r"cpu .+, 1 threads, autocast \S+; default \(.+\), one row of 32 tokens, best of 1 steps", lines[0])
    cases = [re.fullmatch(rf"  (.+?) +({NUM}) s a step +({NUM}) tokens/s", line) for line in lines[1:]]
    assert [c.group(1) for c in cases] == ["fresh LoRA r16, top 8 layers", "smollm2-fim, rows frozen",
                                           "smollm2-fim, rows trained"]
    assert all(float(c.group(2)) > 0 for c in cases)
