"""Spreading a suite out: shards (`--shard i/n`), a Ray cluster (`--backend ray`), and merging shard files.

Shards: the tasks are ordered by repository (repositories in order of first appearance, the suite's order within
one) and cut into n contiguous pieces of near-equal size; shard i is piece i. A repository is split across at most
the shards at its ends, so each shard opens few workspaces; and as every task's context is independent of the
others (eval.runner.settle), any split gives the predictions of a single run. Each shard writes its own prediction
file (in suite order); `repocomplete eval merge` joins finished shard files into one, in suite order, which is then
line for line the file a single run writes.

Ray: one actor per worker, each loading the model once and building its own Completer; the driver gives actor k
shard k of the remaining tasks, one batch at a time, and appends each batch's predictions to the run's partial
file as it arrives, so a Ray run resumes like a local one. The repositories folder must be readable by every
worker at the same path (a shared file system, or a single machine).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from context_engine.errors import InputError


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"--shard wants i/n (0 <= i < n), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"--shard wants i/n with 0 <= i < n, got {text!r}")
    return i, n


def by_repository(tasks: Sequence) -> list:
    """The tasks grouped by repository: repositories in order of first appearance, suite order within each."""
    first: dict[str, int] = {}
    for t in tasks:
        first.setdefault(t.repository, len(first))
    return sorted(tasks, key=lambda t: first[t.repository])  # stable


def shard(tasks: Sequence, i: int, n: int) -> list:
    """Shard i of n: the i-th of n contiguous, near-equal pieces of the repository-grouped tasks, in suite order."""
    grouped = by_repository(tasks)
    lo, hi = len(grouped) * i // n, len(grouped) * (i + 1) // n
    keep = {t.task_id for t in grouped[lo:hi]}
    return [t for t in tasks if t.task_id in keep]


def merge(tasks: Sequence, parts: Sequence[str | Path], out: str | Path, limit: int | None = None) -> dict:
    """Join finished prediction files into `out`, in suite order. Refuses unfinished shards, a task predicted in two
    files, predictions made with different settings, ids the suite does not have, and a task of the suite (its
    first `limit`, if the shards ran with one) that no file predicts: a merged file is a finished one."""
    from eval.runner import PredictionFile, _write_lines, read_predictions, select

    records: dict[str, dict] = {}
    where: dict[str, str] = {}
    settings = None
    for part in parts:
        files = PredictionFile(part)
        if not files.path.exists():
            if files.partial.exists():
                raise InputError(f"{part} is unfinished ({files.partial.name} exists): run that shard to the end first")
            raise InputError(f"prediction file not found: {part}")
        if files.partial.exists():
            raise InputError(f"{part} is unfinished ({files.partial.name} exists): run that shard to the end first")
        meta = files.meta() or {}
        if meta.get("settings") is not None:
            if settings is not None and meta["settings"] != settings[1]:
                raise InputError(f"{part} was made with other settings than {settings[0]}")
            settings = settings or (str(part), meta["settings"])
        for task_id, record in read_predictions(files.path).items():
            if task_id in records:
                raise InputError(f"task {task_id!r} is in both {where[task_id]} and {part}")
            records[task_id] = record
            where[task_id] = str(part)
    rank = {t.task_id: k for k, t in enumerate(tasks)}
    unknown = [task_id for task_id in records if task_id not in rank]
    if unknown:
        raise InputError(f"{len(unknown)} predictions for tasks the suite does not have, e.g. {unknown[0]!r}")
    missing = [t.task_id for t in select(tasks, limit) if t.task_id not in records]
    if missing:
        raise InputError(f"{len(missing)} tasks have no prediction in these files (e.g. {missing[0]!r}): are all the "
                         f"shards there?" + ("" if limit else " (--limit N if they ran with one)"))
    out = PredictionFile(out)
    out.path.parent.mkdir(parents=True, exist_ok=True)
    _write_lines(out.path, sorted(records.values(), key=lambda r: rank[r["task_id"]]))
    if settings is not None:
        out.write_meta({"settings": settings[1], "merged_from": [str(p) for p in parts], "predictions": len(records)})
    return {"out": str(out.path), "predictions": len(records)}


# -- Ray -------------------------------------------------------------------------------------------------------


class _Worker:
    """A Ray actor: one model, one Completer, batches of tasks in, prediction records out."""

    def __init__(self, runtime, context, repos: str, options):
        from repocomplete.pipeline import Completer
        from eval.runner import BatchRunner, eval_context_engine
        from model_runtime.backend import make_engine

        completer = Completer(make_engine(runtime), context, make_context_engine=eval_context_engine)
        self.runner = BatchRunner(completer, Path(repos), options)

    def run(self, tasks: list) -> list[dict]:
        return self.runner.run(tasks)

    def close(self) -> None:
        self.runner.close()
        self.runner.completer.close()


def init_ray():
    """Join the cluster named by RAY_ADDRESS, or start a local one; reuse a connection made by the caller."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False, log_to_driver=False)
    return ray


def run_ray(todo: Sequence, repos: Path, runtime, context, options, sink: Callable[[list[dict]], None]) -> None:
    """Run the remaining tasks on Ray actors; `sink` gets each batch's records on the driver as they arrive."""
    from eval.runner import batches

    ray = init_ray()
    workers = options.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    workers = min(workers, len(todo))
    if workers == 0:
        return
    queues = [list(batches(shard(todo, k, workers), options.batch_size)) for k in range(workers)]
    actor_class = ray.remote(num_cpus=1)(_Worker)
    actors = [actor_class.remote(runtime, context, str(Path(repos).resolve()), options) for _ in range(workers)]
    pending = {}
    try:
        for k, queue in enumerate(queues):
            if queue:
                pending[actors[k].run.remote(queue.pop(0))] = k
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            k = pending.pop(ready[0])
            try:
                records = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                raise (cause if isinstance(cause, Exception) else e) from None
            sink(records)
            if queues[k]:
                pending[actors[k].run.remote(queues[k].pop(0))] = k
    finally:
        try:  # let each actor close its workspaces (their jedi processes) before it goes
            ray.get([actor.close.remote() for actor in actors], timeout=30)
        except Exception:  # noqa: BLE001 - a failed worker is being torn down anyway
            pass
        for actor in actors:
            ray.kill(actor)
