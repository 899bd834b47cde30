"""The evaluation runner: suite -> prediction file through the Completer, resumable, deterministic, shardable."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.errors import InputError
from repocomplete.context_engine.engine import ContextEngine
from repocomplete.eval.options import RunOptions
from repocomplete.eval.predictions import PredictionFile, read_predictions
from repocomplete.eval.runner import EVAL_TIME_BUDGET_S, run
from repocomplete.eval.scale import merge, parse_shard, shard
from repocomplete.eval.suites import EvalTask, load_tasks, write_tasks
from helpers import write_tree
from repocomplete.model_runtime.engine import Engine

USE_TASK = (
    "from shop.models import Inventory\n\n\n"
    "def refill(inv: Inventory, apples: int) -> int:\n"
    "    # TASK_VERSION\n"
    "    total = inv.restock_everything(apples)\n"
    "    return total\n"
)
# On disk the file holds a different body and, far from the cursor, a function whose text the task must never see.
USE_DISK = USE_TASK.replace("TASK_VERSION", "disk version") + "\n" * 30 + (
    "def disk_only_refill(inv: Inventory, apples: int) -> int:\n"
    "    # DISK_ONLY\n"
    "    total = inv.restock_everything(apples)\n"
    "    return total\n"
)
ALPHA = {
    ".git/HEAD": "ref: refs/heads/main\n",
    "shop/models.py": (
        "class Inventory:\n"
        "    def restock_everything(self, count: int) -> int:\n"
        "        return count\n\n"
        "    def audit(self) -> list[str]:\n"
        "        return []\n"
    ),
    "shop/use.py": USE_DISK,
    "shop/report.py": "from shop.models import Inventory\n\n\ndef summary(inv: Inventory) -> str:\n"
                      "    lines = inv.audit()\n    return '\\n'.join(lines)\n",
}
BETA = {
    "lib/geometry.py": "import math\n\n\ndef area(radius: float) -> float:\n    return math.pi * radius ** 2\n",
    "lib/main.py": "from lib.geometry import area\n\n\ndef report(r):\n    value = area(r)\n    return value\n",
}


def _task(task_id: str, repository: str, file: str, text: str, line_text: str, cut: int) -> EvalTask:
    """A task whose target is the rest of the line holding `line_text`, from character `cut` of it."""
    start = text.index(line_text)
    end = start + len(line_text)
    return EvalTask(task_id, repository, file, text[: start + cut], line_text[cut:], text[end:],
                    text[:start].count("\n"))


def make_tasks() -> list[EvalTask]:
    return [
        _task("alpha/use-1", "alpha", "shop/use.py", USE_TASK, "    total = inv.restock_everything(apples)", 12),
        _task("beta/main-1", "beta", "lib/main.py", BETA["lib/main.py"], "    value = area(r)", 12),
        _task("alpha/report-1", "alpha", "shop/report.py", ALPHA["shop/report.py"], "    lines = inv.audit()", 12),
        _task("alpha/use-2", "alpha", "shop/use.py", USE_TASK, "    return total", 4),
        _task("beta/main-2", "beta", "lib/main.py", BETA["lib/main.py"], "    return value", 4),
        _task("alpha/report-2", "alpha", "shop/report.py", ALPHA["shop/report.py"], "    return '\\n'.join(lines)", 4),
    ]


@pytest.fixture
def suite(tmp_path):
    repos = tmp_path / "repos"
    write_tree(repos / "alpha", ALPHA)
    write_tree(repos / "beta", BETA)
    tasks_path = tmp_path / "tasks.jsonl"
    write_tasks(make_tasks(), tasks_path)
    return tasks_path, repos


class Recorder:
    """The tiny engine, remembering every request's prompt parts; optionally failing on the nth batch."""

    def __init__(self, engine: Engine, fail_on_batch: int | None = None):
        self.engine = engine
        self.requests = []
        self.batches = 0
        self.fail_on_batch = fail_on_batch

    @property
    def name(self):
        return self.engine.name

    def complete_batch(self, requests):
        self.batches += 1
        if self.batches == self.fail_on_batch:
            raise RuntimeError("the model fell over")
        self.requests.extend(requests)
        return self.engine.complete_batch(requests)


@pytest.fixture
def model(tiny_loaded, tiny_config):
    # (as eval_runtime gives a run's own model: no wall-clock cut, which a loaded machine reached while the monitors'
    # first analysis started, and two runs then differed)
    return Engine(tiny_loaded, tiny_config.replace(max_new_tokens=6, time_budget_s=EVAL_TIME_BUDGET_S))


@pytest.fixture
def go(tmp_path, tiny_config, monkeypatch):
    """run(...) with the tiny model, jedi on a thread (without its inference deadline, as the runner's jedi process
    has it), the index in tmp_path."""
    context = ContextConfig(index_dir=tmp_path / "index", budget_tokens=256, infer_budget_ms=None)

    def go(tasks, repos, out, model, **options):
        options.setdefault("progress", False)
        return run(tasks, repos, out, tiny_config.replace(max_new_tokens=6), context, RunOptions(**options),
                   model=model, make_context_engine=lambda root, cfg: ContextEngine(
                       root, cfg, slow_executor=ThreadPoolExecutor(1)))

    return go


def lines(path) -> list[tuple[str, str]]:
    return [(r["task_id"], r["pred"]) for r in map(json.loads, path.read_text().splitlines())]


def test_the_current_file_comes_from_the_task_not_the_disk(suite, tmp_path, model, go):
    tasks_path, repos = suite
    tasks = load_tasks(tasks_path)
    recorder = Recorder(model)
    out = tmp_path / "pred.jsonl"
    summary = go(tasks, repos, out, recorder, context="repo", batch_size=2)
    assert summary["ran"] == 6 and summary["complete"]
    assert len(recorder.requests) == 6
    for request, task in zip(_in_run_order(recorder, tasks), tasks):
        parts = request.parts
        assert parts.prefix == task.prompt  # the file is small: the window holds all of it
        assert parts.suffix == task.right_context
        prompt_text = parts.prefix + parts.suffix + "".join(item.text for item in parts.context)
        if task.file == "shop/use.py":  # its disk version never shows: not in the window, not in the context
            assert "DISK_ONLY" not in prompt_text and "disk version" not in prompt_text
            assert parts.context  # repository context did reach the prompt
        elif task.repository == "alpha":  # to the other files of the repository, use.py is its disk version
            assert "DISK_ONLY" in prompt_text
    assert [tid for tid, _ in lines(out)] == [t.task_id for t in tasks]  # suite order


def test_a_prediction_keeps_its_contexts_provenance(suite, tmp_path, model, go):
    from repocomplete.context_engine.packing import approx_tokens

    tasks_path, repos = suite
    tasks = load_tasks(tasks_path)
    recorder = Recorder(model)
    out = tmp_path / "pred.jsonl"
    go(tasks, repos, out, recorder, context="repo", batch_size=6)
    records = read_predictions(out)
    for request, task in zip(_in_run_order(recorder, tasks), tasks):
        record = records[task.task_id]
        context = record["context"]
        assert record["context_budget"] == 256 and context["complete"] is True
        # the records in the prompt, in prompt order, with their costs (the recorder shows no tokenizer: the
        # estimate); nothing but these in the prompt
        assert [(r["path"], r["tokens"]) for r in context["records"]] == [
            (item.path, approx_tokens(item.text)) for item in request.parts.context]
        assert record["context_tokens"] == sum(r["tokens"] for r in context["records"]) <= 256
        assert all(r["kind"] in ("imports", "typed_holes", "retrieval", "repo_map", "neighbours")
                   and r["lines"][0] <= r["lines"][1] for r in context["records"] + context["dropped"])
        assert all(d["reason"] for d in context["dropped"])
    assert any(r["context"]["records"] for r in records.values())
    # with the model's own counter the costs are its tokens, as the packer counted them
    out = tmp_path / "model.jsonl"
    go(tasks, repos, out, model, context="repo")
    for record in read_predictions(out).values():
        assert record["context_tokens"] == sum(r["tokens"] for r in record["context"]["records"])
    # in-file runs have no repository context, and so no provenance
    out = tmp_path / "infile.jsonl"
    go(tasks, repos, out, model, context="infile")
    assert all("context" not in r for r in read_predictions(out).values())


def _in_run_order(recorder, tasks):
    """The recorded requests matched to the tasks (each request's prefix is its task's prompt)."""
    by_prompt = {}
    for r in recorder.requests:
        by_prompt.setdefault(r.parts.prefix + "\0" + r.parts.suffix, r)
    return [by_prompt[t.prompt + "\0" + t.right_context] for t in tasks]


def test_the_buffer_is_cleared_after_each_batch(suite, tmp_path, model, tiny_config):
    from repocomplete.pipeline import Completer
    from repocomplete.eval.runner import BatchRunner

    tasks_path, repos = suite
    tasks = [t for t in load_tasks(tasks_path) if t.repository == "alpha"]
    completer = Completer(model, ContextConfig(index_dir=tmp_path / "index", slow_provider_deadline_ms=None),
                          make_context_engine=lambda r, c: ContextEngine(r, c, slow_executor=ThreadPoolExecutor(1)))
    runner = BatchRunner(completer, repos, RunOptions(context="repo"))
    records = runner.run(tasks)
    workspace = completer.open_workspace(repos / "alpha")
    assert [r["task_id"] for r in records] == [t.task_id for t in tasks]
    assert "DISK_ONLY" in workspace.index.text("shop/use.py")  # the disk again, once the task is over
    assert workspace.neighbours.buffers == {}
    runner.close()
    assert completer.workspaces() == []


def test_a_task_sees_the_same_context_whatever_ran_before(suite, tmp_path, monkeypatch):
    import repocomplete.context_engine.retrieval as retrieval
    import repocomplete.eval.runner as runner

    monkeypatch.setattr(retrieval, "OVERLAY_MIN_BASE", 1)  # the overlay a large repository gets, on a small one
    tasks_path, repos = suite
    tasks = [t for t in load_tasks(tasks_path) if t.repository == "alpha"]
    seen = {}
    for k, order in enumerate((tasks, tasks[::-1])):
        engine = ContextEngine(repos / "alpha", ContextConfig(index_dir=tmp_path / f"index{k}", budget_tokens=256,
                               slow_provider_deadline_ms=None, infer_budget_ms=None), slow_executor=ThreadPoolExecutor(1))
        engine.build()
        for t in order:
            text, offset = t.buffer()
            engine.set_buffer(t.file, text)
            runner.settle(engine)
            _, ctx = engine.prompt_parts(t.file, text, offset)
            engine.clear_buffer(t.file)
            records = [(r.kind, r.path, r.start_line, round(r.score, 6)) for r in ctx.records]
            assert seen.setdefault(t.task_id, records) == records, t.task_id
        engine.close()
    # and the runner settles the workspace before every task
    calls = []
    monkeypatch.setattr(runner, "settle", lambda engine: calls.append(engine))
    from repocomplete.pipeline import Completer

    completer = Completer(_NoModel(), ContextConfig(index_dir=tmp_path / "index", slow_provider_deadline_ms=None),
                          make_context_engine=lambda r, c: ContextEngine(r, c, slow_executor=ThreadPoolExecutor(1)))
    runner.BatchRunner(completer, repos, RunOptions(context="repo")).run(tasks)
    assert len(calls) == len(tasks)


class _NoModel:
    def complete_batch(self, requests):
        from repocomplete.model_runtime.engine import Completion

        return [Completion("", "max_tokens") for _ in requests]


def test_the_runner_jedi_process_has_no_inference_deadline(tmp_path):
    from repocomplete.eval.runner import eval_context_engine

    engine = eval_context_engine(write_tree(tmp_path / "repo", {"a.py": "x = 1\n"}),
                                 ContextConfig(index_dir=tmp_path / "index"))
    try:
        assert engine.config.infer_budget_ms is None  # the jedi worker gets it with every job
    finally:
        engine.close()
    assert ContextConfig().infer_budget_ms == 120.0  # the editor's default is untouched


def test_a_rerun_gives_the_same_predictions(suite, tmp_path, model, go):
    tasks_path, repos = suite
    tasks = load_tasks(tasks_path)
    go(tasks, repos, tmp_path / "a.jsonl", model, context="repo", batch_size=4)
    go(tasks, repos, tmp_path / "b.jsonl", model, context="repo", batch_size=4)
    a = lines(tmp_path / "a.jsonl")
    assert a == lines(tmp_path / "b.jsonl")
    assert sum(1 for _, pred in a if pred) >= 2  # not a comparison of empty strings
    # Each prediction says how much repository context its prompt had, within the run's budget.
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert all(0 <= r["context_tokens"] <= r["context_budget"] == 256 for r in records)
    assert any(r["context_tokens"] > 0 for r in records)


def test_resume_skips_done_tasks_and_drops_a_truncated_line(suite, tmp_path, model, go):
    tasks_path, repos = suite
    tasks = load_tasks(tasks_path)
    full = tmp_path / "full.jsonl"
    go(tasks, repos, full, model, context="infile")
    out = tmp_path / "pred.jsonl"
    go(tasks, repos, out, model, context="infile", limit=2)
    assert [tid for tid, _ in lines(out)] == ["alpha/use-1", "beta/main-1"]
    # A killed run: the finished file of the first two was taken back into the partial one, a third task was being
    # written when the process died.
    files = PredictionFile(out)
    out.rename(files.partial)
    with open(files.partial, "a") as f:
        f.write('{"task_id": "alpha/report-1", "pr')
    recorder = Recorder(model)
    summary = go(tasks, repos, out, recorder, context="infile")
    assert summary["skipped"] == 2 and summary["ran"] == 4
    assert len(recorder.requests) == 4
    assert not files.partial.exists()
    assert lines(out) == lines(full)  # every line whole, in suite order, the same predictions as one run
    # Finished: a further run has nothing to do and leaves the file alone.
    before = out.read_bytes()
    recorder = Recorder(model)
    assert go(tasks, repos, out, recorder, context="infile")["ran"] == 0
    assert recorder.requests == [] and out.read_bytes() == before


def test_a_crash_leaves_no_complete_looking_file_and_the_rerun_resumes(suite, tmp_path, model, go):
    tasks_path, repos = suite
    tasks = load_tasks(tasks_path)
    out = tmp_path / "pred.jsonl"
    files = PredictionFile(out)
    with pytest.raises(RuntimeError, match="fell over"):
        go(tasks, repos, out, Recorder(model, fail_on_batch=3), context="infile", batch_size=1)
    assert not out.exists()
    assert len(read_predictions(files.partial)) == 2
    assert files.meta()["finished"] is None
    recorder = Recorder(model)
    summary = go(tasks, repos, out, recorder, context="infile", batch_size=1)
    assert summary == {**summary, "skipped": 2, "ran": 4, "complete": True}
    assert len(recorder.requests) == 4 and not files.partial.exists()
    assert [tid for tid, _ in lines(out)] == [t.task_id for t in tasks]
    assert files.meta()["finished"] is not None and files.meta()["predictions"] == 6


def test_resuming_with_other_settings_is_refused(suite, tmp_path, model, go):
    tasks_path, repos = suite
    tasks = load_tasks(tasks_path)
    out = tmp_path / "pred.jsonl"
    go(tasks, repos, out, model, context="infile", limit=1)
    with pytest.raises(InputError, match="other settings.*context: 'infile' there, 'none' now"):
        go(tasks, repos, out, model, context="none")


def test_shards_merge_into_the_single_run(suite, tmp_path, model, go):
    tasks_path, repos = suite
    tasks = load_tasks(tasks_path)
    single = tmp_path / "single.jsonl"
    go(tasks, repos, single, model, context="repo", batch_size=2)
    parts = []
    for i in range(3):
        part = tmp_path / f"shard{i}.jsonl"
        go(tasks, repos, part, model, context="repo", batch_size=2, shard=(i, 3))
        parts.append(part)
    shard_ids = [[tid for tid, _ in lines(p)] for p in parts]
    assert sorted(sum(shard_ids, [])) == sorted(t.task_id for t in tasks)
    assert shard_ids[0] == ["alpha/use-1", "alpha/report-1"]  # contiguous in repository order
    merged = tmp_path / "merged.jsonl"
    assert merge(tasks, parts, merged) == {"out": str(merged), "predictions": 6}
    assert lines(merged) == lines(single)
    assert merged.read_text().count("\n") == 6


def test_merge_refuses_unfinished_and_overlapping_shards(suite, tmp_path, model, go):
    tasks_path, repos = suite
    tasks = load_tasks(tasks_path)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    go(tasks, repos, a, model, context="none", shard=(0, 2))
    go(tasks, repos, b, model, context="none", limit=1)  # alpha/use-1 again
    with pytest.raises(InputError, match="alpha/use-1.*in both"):
        merge(tasks, [a, b], tmp_path / "m.jsonl")
    with pytest.raises(InputError, match="3 tasks have no prediction in these files"):
        merge(tasks, [a], tmp_path / "m.jsonl")
    b.rename(PredictionFile(b).partial)
    with pytest.raises(InputError, match="unfinished"):
        merge(tasks, [a, b], tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()
    halves = [tmp_path / "h0.jsonl", tmp_path / "h1.jsonl"]
    for i, half in enumerate(halves):
        go(tasks, repos, half, model, context="none", limit=4, shard=(i, 2))
    with pytest.raises(InputError, match="2 tasks have no prediction.*--limit N"):
        merge(tasks, halves, tmp_path / "m.jsonl")
    assert merge(tasks, halves, tmp_path / "m.jsonl", limit=4)["predictions"] == 4


def test_shard_split_is_contiguous_by_repository_and_covers_everything():
    tasks = make_tasks()
    pieces = [shard(tasks, i, 4) for i in range(4)]
    ids = [[t.task_id for t in p] for p in pieces]
    assert sorted(sum(ids, [])) == sorted(t.task_id for t in tasks)
    assert [len(p) for p in pieces] == [1, 2, 1, 2]
    assert ids[1] == ["alpha/report-1", "alpha/use-2"] and ids[3] == ["beta/main-1", "beta/main-2"]
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)


def test_missing_repository_is_an_input_error_naming_the_task(suite, tmp_path, model, go):
    tasks_path, repos = suite
    tasks = load_tasks(tasks_path)
    shutil.rmtree(repos / "beta")
    recorder = Recorder(model)
    with pytest.raises(InputError, match="task beta/main-1: repository snapshot not found"):
        go(tasks, repos, tmp_path / "pred.jsonl", recorder, context="infile")
    assert recorder.requests == [] and not (tmp_path / "pred.jsonl.partial").exists()


def test_the_ray_backend_matches_the_local_run(suite, tmp_path, model, go, tiny_config):
    ray = pytest.importorskip("ray")
    tasks_path, repos = suite
    tasks = load_tasks(tasks_path)
    local = tmp_path / "local.jsonl"
    go(tasks, repos, local, model, context="repo", batch_size=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run(tasks, repos, tmp_path / "ray.jsonl", tiny_config.replace(max_new_tokens=6),
                      ContextConfig(index_dir=tmp_path / "index", budget_tokens=256),
                      RunOptions(context="repo", batch_size=2, backend="ray", workers=2, progress=False))
    finally:
        ray.shutdown()
    assert summary["ran"] == 6
    assert lines(tmp_path / "ray.jsonl") == lines(local)


# -- the command line ------------------------------------------------------------------------------------------


def test_cli_run_writes_predictions_and_a_bad_line_is_exit_2(suite, tmp_path, tiny_model_dir, capsys):
    from repocomplete.cli import main

    tasks_path, repos = suite
    out = tmp_path / "pred.jsonl"
    args = ["eval", "run", "--tasks", str(tasks_path), "--repos", str(repos), "--out", str(out), "--context",
            "infile", "--model", str(tiny_model_dir), "--quantize", "none", "--max-tokens", "4", "--limit", "3",
            "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ran"] == 3 and summary["complete"] and len(out.read_text().splitlines()) == 3
    # the run's meta names the CPU path its answers came from (`complete --json` reports the same)
    path = PredictionFile(out).meta()["path"]
    assert path["decode"] == path["prefill"] == "fp32" and path["cpu"] and path["threads"] >= 1, path
    bad = tmp_path / "bad.jsonl"
    bad.write_text(tasks_path.read_text().splitlines()[0] + "\n{not json\n")
    assert main([*args[:2], "--tasks", str(bad), *args[4:]]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    assert main([*args, "--shard", "2/2"]) == 2
    assert "--shard" in capsys.readouterr().err


def test_via_lsp_drives_the_real_server_and_matches_the_engine(suite, tmp_path, tiny_loaded, go, tiny_config):
    tasks_path, repos = suite
    tasks = [t for t in load_tasks(tasks_path) if t.repository == "alpha"]  # one repository: one server
    engine_out, lsp_out = tmp_path / "engine.jsonl", tmp_path / "lsp.jsonl"
    # Monitors off on both paths: the server waits for their analysis an editor's 15 ms, the engine path until it
    # answers, so with them a slow machine could make the two differ.
    quiet = tiny_config.replace(monitors=())
    go(tasks, repos, engine_out, Engine(tiny_loaded, quiet.replace(max_new_tokens=6)), context="infile")
    summary = run(tasks, repos, lsp_out, quiet.replace(max_new_tokens=6), ContextConfig(),
                  RunOptions(context="infile", via="lsp", progress=False))
    assert summary["ran"] == 4
    assert lines(lsp_out) == lines(engine_out)
    records = [json.loads(line) for line in lsp_out.read_text().splitlines()]
    assert all("context_ms" not in r and r["outcome"] == "completed" and r["stop_reason"] for r in records)
    assert PredictionFile(lsp_out).meta()["settings"]["via"] == "lsp"
