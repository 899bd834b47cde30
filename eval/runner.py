"""`repocomplete eval run`: a suite of tasks -> a CrossCodeEval prediction file, through the one `Completer`.

A task's current file is the task itself: prompt + right context (the target removed), served to the context engine
as an unsaved buffer while the task runs, so the file on disk, which still holds the answer, never reaches its
prompt. Tasks are grouped by repository: one workspace (index, retriever, repo map) per repository, then the
Completer's batch entry point over batches of a repository's tasks.

Results depend on the suite and the settings only, not on timing or on the tasks run before:
  * every provider is waited for (`slow_provider_deadline_ms=None`), the typed-holes provider's type inference has
    no wall-clock cut (see `eval_context_engine`), and decoding has none either;
  * before each task's context is assembled the workspace is settled: the retriever and the repo-map graph are
    rebuilt for the task's buffer on the spot (not on a worker thread, ~30 ms on setuptools), and the caches keyed
    by cursor are dropped, so a task sees the same context whichever tasks came before it (resume, shards, Ray).

Output protocol: `OUT` exists only for a finished run.
  * predictions are appended to `OUT.partial`, a JSON line per task, flushed and fsynced after every batch;
  * `OUT.meta.json` records the settings; resuming into a file made with other settings is refused;
  * when every selected task has a prediction, the lines are written in suite order to `OUT` (a rename, so
    atomic) and `OUT.partial` is removed;
  * a re-run skips the task ids found in `OUT` or `OUT.partial`. A truncated last line (a killed run) is dropped
    and the partial file rewritten cleanly before anything is appended.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import multiprocessing as mp
import os
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from repocomplete.pipeline import Completer, CompletionOptions, CompletionResult, Cursor
from context_engine.config import ContextConfig
from context_engine.document import CONTEXT_MODES
from context_engine.errors import InputError
from context_engine.engine import ContextEngine

log = logging.getLogger(__name__)

VIAS = ("engine", "lsp")
BACKENDS = ("local", "ray")
# Decoding may not stop on the clock in an evaluation (the product's 5 s cut would make results machine-dependent).
EVAL_TIME_BUDGET_S = 600.0


@dataclass
class RunOptions:
    context: str = "repo"  # none | infile | repo
    budget: int | None = None  # None: the context config's
    multiline: bool = False  # CrossCodeEval's line completion
    max_new_tokens: int | None = None  # None: the runtime config's
    iterative: bool = False
    batch_size: int = 16  # tasks per call of the batch entry point (and per write to the partial file)
    limit: int | None = None  # the first N tasks of the suite
    shard: tuple[int, int] | None = None  # (i, n), 0 <= i < n: see eval.scale.shard
    via: str = "engine"  # engine | lsp
    backend: str = "local"  # local | ray
    workers: int | None = None  # Ray actors (None: the cluster's CPUs)
    progress: bool = True

    def validate(self) -> None:
        if self.context not in CONTEXT_MODES:
            raise InputError(f"unknown context mode {self.context!r}; expected one of {', '.join(CONTEXT_MODES)}")
        if self.via not in VIAS:
            raise InputError(f"--via must be one of {', '.join(VIAS)}, got {self.via!r}")
        if self.backend not in BACKENDS:
            raise InputError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.via == "lsp" and self.backend != "local":
            raise InputError("--via lsp runs with --backend local only")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be >= 1, got {self.workers}")
        if self.shard is not None:
            i, n = self.shard
            if not (n >= 1 and 0 <= i < n):
                raise InputError(f"--shard i/n needs 0 <= i < n, got {i}/{n}")

    def completion_options(self) -> CompletionOptions:
        return CompletionOptions(context=self.context, multiline=self.multiline, max_new_tokens=self.max_new_tokens,
                                 budget=self.budget, iterative=self.iterative)


# -- the task list ---------------------------------------------------------------------------------------------


def check_unique(tasks: Sequence) -> None:
    seen: set[str] = set()
    for t in tasks:
        if t.task_id in seen:
            raise InputError(f"duplicate task id {t.task_id!r} in the suite")
        seen.add(t.task_id)


def select(tasks: Sequence, limit: int | None = None, shard: tuple[int, int] | None = None) -> list:
    """The tasks a run covers: the first `limit` of the suite, then shard i of n of those (suite order kept)."""
    from eval.scale import shard as shard_of

    chosen = list(tasks[:limit] if limit else tasks)
    return shard_of(chosen, *shard) if shard else chosen


def batches(tasks: Sequence, size: int) -> Iterator[list]:
    """Batches of one repository each: repositories in order of first appearance, at most `size` tasks."""
    by_repo: dict[str, list] = {}
    for t in tasks:
        by_repo.setdefault(t.repository, []).append(t)
    for group in by_repo.values():
        for k in range(0, len(group), size):
            yield group[k : k + size]


# -- prediction files ------------------------------------------------------------------------------------------


def read_predictions(path: Path, tolerant: bool = False) -> dict[str, dict]:
    """{task_id: record} of a prediction file. Strict: a bad line is an InputError naming it. Tolerant (our own
    partial file): bad lines are dropped (a killed run leaves a truncated last line)."""
    records: dict[str, dict] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").split("\n")
    except FileNotFoundError:
        raise InputError(f"prediction file not found: {path}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("task_id"), str) \
                    or not isinstance(record.get("pred"), str):
                raise ValueError("expected an object with string task_id and pred")
        except ValueError as e:
            if tolerant:
                log.warning("%s:%d: dropped an unreadable line (%s)", path, n, e)
                continue
            raise InputError(f"{path}:{n}: bad prediction line: {e}") from None
        records[record["task_id"]] = record
    return records


def _write_lines(path: Path, records: Sequence[dict]) -> None:
    """Write a file whole, under a temporary name first: a reader sees the old file or the new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class PredictionFile:
    """`OUT` (finished), `OUT.partial` (being written) and `OUT.meta.json` (settings)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.meta_path = self.path.with_name(self.path.name + ".meta.json")

    @property
    def finished(self) -> bool:
        return self.path.exists() and not self.partial.exists()

    def meta(self) -> dict | None:
        try:
            return json.loads(self.meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:
            raise InputError(f"unreadable {self.meta_path}; delete it (and {self.path.name}) to start over") from None

    def write_meta(self, meta: dict) -> None:
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.meta_path)

    def check_settings(self, settings: dict) -> None:
        old = (self.meta() or {}).get("settings")
        if old is None or old == settings:
            return
        diff = ", ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now"
                         for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k))
        raise InputError(f"{self.path} was made with other settings ({diff}); use another --out or delete it")

    def load(self) -> dict[str, dict]:
        """The predictions made so far (the finished file's, then the partial file's)."""
        records = read_predictions(self.path) if self.path.exists() else {}
        if self.partial.exists():
            records.update(read_predictions(self.partial, tolerant=True))
        return records

    def begin(self, records: dict[str, dict]) -> None:
        """Make the partial file hold exactly `records` (clean lines), and no finished file claim completeness."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_lines(self.partial, list(records.values()))
        self.path.unlink(missing_ok=True)

    def append(self, records: Sequence[dict]) -> None:
        with open(self.partial, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finish(self, order: Sequence[str]) -> int:
        """Write the finished file in suite order (ids the suite does not know go last); drop the partial one."""
        records = read_predictions(self.partial, tolerant=True)
        rank = {task_id: k for k, task_id in enumerate(order)}
        ordered = sorted(records.values(), key=lambda r: rank.get(r["task_id"], len(rank)))
        _write_lines(self.path, ordered)
        self.partial.unlink(missing_ok=True)
        return len(ordered)


# -- running tasks ---------------------------------------------------------------------------------------------


def settle(engine: ContextEngine) -> None:
    """Bring a workspace up to date with its buffers now, and forget what it cached per cursor, so that the next
    context depends on the repository and the buffer only, never on timing or on the tasks that came before."""
    engine.settle()


def eval_context_engine(root: Path, config: ContextConfig) -> ContextEngine:
    """A workspace as the runner uses it: the jedi providers in their own process, without inference deadline."""
    executor = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
    return ContextEngine(root, config.replace(infer_budget_ms=None), slow_executor=executor)


def prediction_record(task, result: CompletionResult) -> dict:
    c = result.completion
    return {
        "task_id": task.task_id,
        "pred": result.text,
        "latency_ms": round(result.engine_ms, 1),  # context + prefill + decode
        "context_ms": round(result.context_ms, 1),
        "prompt_tokens": c.prompt_tokens,
        "generated_tokens": c.generated_tokens,
        "stop_reason": c.stop_reason,
    }


class BatchRunner:
    """Runs batches of one repository's tasks through a Completer; one open workspace at a time."""

    def __init__(self, completer: Completer, repos: Path, options: RunOptions):
        self.completer = completer
        self.repos = Path(repos)
        self.options = options
        self._root: Path | None = None

    def run(self, tasks: Sequence) -> list[dict]:
        from eval.suites import repo_dir

        if not tasks:
            return []
        root = repo_dir(self.repos, tasks[0]).resolve()
        if self._root is not None and self._root != root:
            self.completer.close_workspace(self._root)  # its jedi process and index go with it
        self._root = root
        options = self.options.completion_options()
        workspace = self.completer.open_workspace(root) if options.context == "repo" else None
        cursors, rel_of = [], {}
        for t in tasks:
            text, offset = t.buffer()
            cursor = Cursor(str(root / t.file), text, offset)
            cursors.append(cursor)
            rel_of[id(cursor)] = t.file
        opened: list[str] = []

        def before_each(cursor: Cursor) -> None:
            if workspace is None:
                return
            if opened:
                workspace.clear_buffer(opened.pop())
            workspace.set_buffer(rel_of[id(cursor)], cursor.text)
            opened.append(rel_of[id(cursor)])
            settle(workspace)

        try:
            results = self.completer.complete_batch(cursors, options, workspace=workspace, before_each=before_each)
        finally:
            if opened:
                workspace.clear_buffer(opened.pop())
        return [prediction_record(t, r) for t, r in zip(tasks, results)]

    def close(self) -> None:
        if self._root is not None:
            self.completer.close_workspace(self._root)
            self._root = None


# -- a run -----------------------------------------------------------------------------------------------------


def eval_runtime(runtime):
    """The runtime config an evaluation runs with: no wall-clock cut on decoding."""
    return runtime.replace(time_budget_s=max(runtime.time_budget_s, EVAL_TIME_BUDGET_S))


def eval_context(context: ContextConfig) -> ContextConfig:
    """The context config an evaluation runs with: every provider waited for, no file watching."""
    return context.replace(slow_provider_deadline_ms=None, watch=False)


def run_settings(runtime, context: ContextConfig, options: RunOptions) -> dict:
    """What a prediction file's numbers depend on; a resume must use the same."""
    repo = options.context == "repo"
    return {
        "model": runtime.model,
        "adapter": runtime.adapter,
        "endpoint": runtime.endpoint,
        "quantize": runtime.quantize,
        "dtype": runtime.dtype,
        "fim_template": runtime.fim_template,
        "max_new_tokens": options.max_new_tokens or runtime.max_new_tokens,
        "temperature": runtime.temperature,
        "token_healing": runtime.token_healing,
        "context": options.context,
        "budget": (context.budget_tokens if options.budget is None else options.budget) if repo else None,
        "providers": list(context.providers) if repo else None,
        "dense": context.dense if repo else False,
        "iterative": options.iterative and repo,
        "multiline": options.multiline,
        "via": options.via,
    }


def git_head(path: Path | None = None) -> str | None:
    """`git rev-parse --short HEAD` of the repository holding `path` (this code by default), or None."""
    path = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _progress(total: int, done: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="task", desc=desc, disable=not enabled, dynamic_ncols=True)


def run(
    tasks: Sequence,
    repos: str | Path,
    out: str | Path,
    runtime,
    context: ContextConfig | None = None,
    options: RunOptions | None = None,
    model=None,
    suite: str | None = None,
    make_context_engine: Callable | None = None,
) -> dict:
    """Complete the selected tasks into `out` (resuming it); return a summary.

    runtime: a RuntimeConfig (Ray workers build their model from it); model: an engine to use instead of loading one,
    or a function returning one, called only when there are tasks to run (local backend). make_context_engine: as Completer's (tests run jedi on a thread)."""
    from eval.suites import repo_dir

    options = options or RunOptions()
    options.validate()
    runtime = eval_runtime(runtime)
    context = eval_context(context or ContextConfig())
    context.validate()
    check_unique(tasks)
    selected = select(tasks, options.limit, options.shard)
    repos = Path(repos)
    for t in selected:  # bad input is found before a model loads
        repo_dir(repos, t)
    files = PredictionFile(out)
    settings = run_settings(runtime, context, options)
    files.check_settings(settings)
    done = files.load()
    todo = [t for t in selected if t.task_id not in done]
    summary = {"out": str(files.path), "tasks": len(selected), "skipped": len(selected) - len(todo), "ran": 0}
    if not todo and files.finished:
        return {**summary, "seconds": 0.0, "complete": True}
    files.begin(done)
    meta = files.meta() or {}
    files.write_meta({
        "settings": settings,
        "suite": suite or meta.get("suite"),
        "commit": git_head(),
        "started": meta.get("started") or _dt.datetime.now().isoformat(timespec="seconds"),
        "finished": None,
        "limit": options.limit,
        "shard": list(options.shard) if options.shard else None,
        "backend": options.backend,
    })
    t0 = time.perf_counter()
    bar = _progress(len(selected), len(selected) - len(todo), options.progress, Path(out).name)

    def sink(records: list[dict]) -> None:
        files.append(records)
        bar.update(len(records))
        summary["ran"] += len(records)

    try:
        if options.backend == "ray":
            from eval.scale import run_ray

            run_ray(todo, repos, runtime, context, options, sink)
        else:
            _run_local(todo, repos, runtime, context, options, sink, model, make_context_engine)
    finally:
        bar.close()
    n = files.finish([t.task_id for t in tasks])
    meta = files.meta() or {}
    files.write_meta({**meta, "finished": _dt.datetime.now().isoformat(timespec="seconds"), "predictions": n})
    return {**summary, "seconds": round(time.perf_counter() - t0, 1), "complete": True}


def _run_local(todo, repos, runtime, context, options, sink, model=None, make_context_engine=None) -> None:
    if options.via == "lsp":
        from eval.lsp_client import LspBatchRunner

        runner = LspBatchRunner(repos, runtime, context, options)
        completer = None
    else:
        from model_runtime.backend import make_engine

        if callable(model) and not hasattr(model, "complete_batch"):
            model = model()  # a factory: the caller shares one engine between runs that have work
        completer = Completer(model or make_engine(runtime), context,
                              make_context_engine=make_context_engine or eval_context_engine)
        runner = BatchRunner(completer, repos, options)
    try:
        for batch in batches(todo, options.batch_size):
            sink(runner.run(batch))
    finally:
        runner.close()
        if completer is not None and model is None:  # the engine is ours: close it with the completer
            completer.close()
