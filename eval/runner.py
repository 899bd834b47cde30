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

Output: a prediction file written through `eval.predictions.PredictionFile` (`OUT` exists only for a finished
run; `OUT.partial` and `OUT.meta.json` meanwhile; see there), so a killed run resumes where it stopped. Each
record keeps where its repository context came from (`context_provenance`: the records in the prompt and the
candidates the packer dropped, with reasons), which `eval explain` checks its recomputed contexts against.

Imports go one way: runner -> scale (shards, Ray), options, predictions, suites; the Ray actors get a function
that makes a batch runner (`make_batch_runner`), not an import of this module.
"""

from __future__ import annotations

import datetime as _dt
import functools
import multiprocessing as mp
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Callable, Sequence
from pathlib import Path

from repocomplete.pipeline import Completer, CompletionResult, Cursor
from repocomplete.model_runtime import cpu_path
from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.errors import InputError
from repocomplete.context_engine.engine import Context, ContextEngine
from repocomplete.context_engine.packing import RecordTokens, approx_tokens, text_tokens
from repocomplete.eval.options import RunOptions, resolve_options
from repocomplete.eval.predictions import PredictionFile
from repocomplete.eval.scale import batches, run_ray, select
from repocomplete.eval.suites import repo_dir

# Decoding may not stop on the clock in an evaluation (the product's 5 s cut would make results machine-dependent).
EVAL_TIME_BUDGET_S = 600.0


def check_unique(tasks: Sequence) -> None:
    seen: set[str] = set()
    for t in tasks:
        if t.task_id in seen:
            raise InputError(f"duplicate task id {t.task_id!r} in the suite")
        seen.add(t.task_id)


# -- running tasks ---------------------------------------------------------------------------------------------


def settle(engine: ContextEngine) -> None:
    """Bring a workspace up to date with its buffers now, and forget what it cached per cursor, so that the next
    context depends on the repository and the buffer only, never on timing or on the tasks that came before."""
    engine.settle()


def eval_context_engine(root: Path, config: ContextConfig) -> ContextEngine:
    """A workspace as the runner uses it: the jedi providers in their own process, without inference deadline."""
    executor = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
    return ContextEngine(root, config.replace(infer_budget_ms=None, slow_provider_budget_ms=None),
                         slow_executor=executor)


def context_provenance(ctx: Context | None, record_tokens: RecordTokens | None = None) -> dict | None:
    """Where the packed context of a prediction came from, in a few hundred bytes: each record in the prompt and each
    candidate the packer dropped (with its reason), as kind, path, [first line, last line] and tokens (what the
    record costs in the prompt, as the packer counted it: record_tokens(path, text), default the estimate of its
    text). No text: `eval explain` recomputes the context and checks it against this."""
    if ctx is None:
        return None
    cost = record_tokens or text_tokens(approx_tokens)

    def row(r) -> dict:
        return {"kind": r.kind, "path": r.path, "lines": [r.start_line, r.end_line], "tokens": cost(r.path, r.text)}

    return {
        "complete": ctx.complete,
        "records": [row(r) for r in ctx.packed.records],
        "dropped": [{**row(r), "reason": why} for r, why in ctx.packed.dropped],
    }


def prediction_record(task, result: CompletionResult, record_tokens: RecordTokens | None = None) -> dict:
    c = result.completion
    record = {
        "task_id": task.task_id,
        "pred": result.text,
        "latency_ms": round(result.engine_ms, 1),  # context + prefill + decode
        "context_ms": round(result.context_ms, 1),
        "prompt_tokens": c.prompt_tokens,
        "generated_tokens": c.generated_tokens,
        "monitor_ms": getattr(c, "monitor_ms", 0.0),  # monitor-guided decoding: the time its monitors took (waits included)
        "monitor_spans": len(getattr(c, "monitor_spans", ())),
        # each span: the monitor, the identifier written, whether it yielded or swapped the model's choice
        "monitors": [{k: s.get(k) for k in ("monitor", "text", "what", "yielded", "redirected", "mass")}
                     for s in getattr(c, "monitor_spans", ())],
        "stop_reason": c.stop_reason,
    }
    if result.context is not None:  # repository context: its tokens in the prompt, and the budget it had (the
        # run's, or less where the current file's window left less room in the model's window)
        record["context_tokens"] = result.context.packed.tokens
        record["context_budget"] = result.context.packed.budget
        record["context"] = context_provenance(result.context, record_tokens)  # (older files have none)
    return record


class BatchRunner:
    """Runs batches of one repository's tasks through a Completer; one open workspace at a time."""

    def __init__(self, completer: Completer, repos: Path, options: RunOptions, owns_completer: bool = False):
        self.completer = completer
        self.repos = Path(repos)
        self.options = options  # resolved (see eval.options.resolve_options)
        self.owns_completer = owns_completer  # close() closes the completer (and its model) too
        self._root: Path | None = None

    def run(self, tasks: Sequence) -> list[dict]:
        if not tasks:
            return []
        root = repo_dir(self.repos, tasks[0]).resolve()
        if self._root is not None and self._root != root:
            self.completer.close_workspace(self._root)  # its jedi process and index go with it
        self._root = root
        options = self.options.completion_options()
        workspace = self.completer.open_workspace(root) if options.context == "repo" else None
        if workspace is None:
            self.completer.add_analysis_root(root)  # the monitors' analysis: the task's repository
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
        cost = workspace.record_tokens if workspace is not None else None
        return [prediction_record(t, r, cost) for t, r in zip(tasks, results)]

    def close(self) -> None:
        if self._root is not None:
            self.completer.close_workspace(self._root)
            self._root = None
        if self.owns_completer:
            self.completer.close()


def make_batch_runner(runtime, context: ContextConfig, repos: str | Path, options: RunOptions) -> BatchRunner:
    """A batch runner with a model of its own, loaded from `runtime` (a Ray actor's); closing it closes the model."""
    from repocomplete.model_runtime.backend import make_engine

    completer = Completer(make_engine(runtime), context, make_context_engine=eval_context_engine)
    return BatchRunner(completer, Path(repos), options, owns_completer=True)


# -- a run -----------------------------------------------------------------------------------------------------


def eval_runtime(runtime):
    """The runtime config an evaluation runs with: no wall-clock cut on decoding."""
    return runtime.replace(time_budget_s=max(runtime.time_budget_s, EVAL_TIME_BUDGET_S))


def eval_context(context: ContextConfig) -> ContextConfig:
    """The context config an evaluation runs with: every provider waited for, no file watching."""
    # (jedi without a budget: the monitors' analysis too, which runs outside a workspace with in-file context)
    return context.replace(slow_provider_deadline_ms=None, slow_provider_budget_ms=None, monitor_wait_ms=None,
                           watch=False)


def run_settings(runtime, context: ContextConfig, options: RunOptions) -> dict:
    """What a prediction file's numbers depend on; a resume must use the same. options: resolved."""
    repo = options.context == "repo"
    return {
        "model": runtime.model,
        "adapter": runtime.adapter,
        "endpoint": runtime.endpoint,
        "quantize": runtime.quantize,
        "dtype": runtime.dtype,
        "fim_template": runtime.fim_template,
        "max_new_tokens": options.max_new_tokens,
        "temperature": runtime.temperature,
        "token_healing": runtime.token_healing,
        "monitors": list(runtime.active_monitors),
        "context": options.context,
        "budget": options.budget if repo else None,
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
    or a function returning one, called only when there are tasks to run (local backend). make_context_engine: as
    Completer's (tests run jedi on a thread)."""
    options = options or RunOptions()
    options.validate()
    runtime = eval_runtime(runtime)
    context = eval_context(context or ContextConfig())
    context.validate()
    options = resolve_options(runtime, context, options)
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
            make_runner = functools.partial(make_batch_runner, runtime, context, str(repos.resolve()), options)
            run_ray(todo, make_runner, options.workers, options.batch_size, sink)
        else:
            def on_engine(engine) -> None:
                files.write_meta({**(files.meta() or {}), "path": cpu_path.engine_path(engine)})

            _run_local(todo, repos, runtime, context, options, sink, model, make_context_engine, on_engine=on_engine)
    finally:
        bar.close()
    n = files.finish([t.task_id for t in tasks])
    meta = files.meta() or {}
    files.write_meta({**meta, "finished": _dt.datetime.now().isoformat(timespec="seconds"), "predictions": n})
    return {**summary, "seconds": round(time.perf_counter() - t0, 1), "complete": True}


def _run_local(todo, repos, runtime, context, options, sink, model=None, make_context_engine=None,
               on_engine=None) -> None:
    if options.via == "lsp":
        from repocomplete.eval.lsp_client import LspBatchRunner

        runner = LspBatchRunner(repos, runtime, context, options)
    else:
        from repocomplete.model_runtime.backend import make_engine

        if callable(model) and not hasattr(model, "complete_batch"):
            model = model()  # a factory: the caller shares one engine between runs that have work
        engine = model or make_engine(runtime)
        if on_engine is not None:
            on_engine(engine)
        completer = Completer(engine, context, make_context_engine=make_context_engine or eval_context_engine)
        # the engine is ours when none was given: close it with the completer
        runner = BatchRunner(completer, repos, options, owns_completer=model is None)
    try:
        for batch in batches(todo, options.batch_size):
            sink(runner.run(batch))
    finally:
        runner.close()
