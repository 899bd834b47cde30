"""Spreading a suite out: shards (`--shard i/n`), a Ray cluster (`--backend ray`), and merging shard files.

Shards: the tasks are ordered by repository (repositories in order of first appearance, the suite's order within
one) and cut into n contiguous pieces of near-equal size; shard i is piece i. A repository is split across at most
the shards at its ends, so each shard opens few workspaces; and as every task's context is independent of the
others (eval.runner.settle), any split gives the predictions of a single run. Each shard writes its own prediction
file (in suite order); `repocomplete eval merge` joins finished shard files into one, in suite order, which is then
line for line the file a single run writes.

Ray: one actor per worker, each building its own batch runner once (the runner's: a model loaded once, its own
Completer); the driver gives actor k shard k of the remaining tasks, one batch at a time, and hands each batch's
predictions to the run as they arrive, so a Ray run resumes like a local one. The repositories folder must be
readable by every worker at the same path (a shared file system, or a single machine).

This module knows tasks and prediction files, not how a batch is run: eval.runner imports it (for `select`,
`batches` and `run_ray`) and hands `run_ray` a function that makes a batch runner; nothing here imports the runner.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from repocomplete.context_engine.errors import InputError
from repocomplete.eval.predictions import PredictionFile, read_predictions, write_predictions


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


def select(tasks: Sequence, limit: int | None = None, shard_of: tuple[int, int] | None = None) -> list:
    """The tasks a run covers: the first `limit` of the suite, then shard i of n of those (suite order kept)."""
    chosen = list(tasks[:limit] if limit else tasks)
    return shard(chosen, *shard_of) if shard_of else chosen


def batches(tasks: Sequence, size: int) -> Iterator[list]:
    """Batches of one repository each: repositories in order of first appearance, at most `size` tasks."""
    by_repo: dict[str, list] = {}
    for t in tasks:
        by_repo.setdefault(t.repository, []).append(t)
    for group in by_repo.values():
        for k in range(0, len(group), size):
            yield group[k : k + size]


def merge(tasks: Sequence, parts: Sequence[str | Path], out: str | Path, limit: int | None = None) -> dict:
    """Join finished prediction files into `out`, in suite order. Refuses unfinished shards, a task predicted in two
    files, predictions made with different settings, ids the suite does not have, and a task of the suite (its
    first `limit`, if the shards ran with one) that no file predicts: a merged file is a finished one."""
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
    write_predictions(out.path, sorted(records.values(), key=lambda r: rank[r["task_id"]]))
    if settings is not None:
        out.write_meta({"settings": settings[1], "merged_from": [str(p) for p in parts], "predictions": len(records)})
    return {"out": str(out.path), "predictions": len(records)}


# -- Ray -------------------------------------------------------------------------------------------------------


class _Worker:
    """A Ray actor: one batch runner (made once, on the actor), batches of tasks in, prediction records out."""

    def __init__(self, make_runner: Callable[[], object]):
        self.runner = make_runner()

    def run(self, tasks: list) -> list[dict]:
        return self.runner.run(tasks)

    def close(self) -> None:
        self.runner.close()


def init_ray():
    """Join the cluster named by RAY_ADDRESS, or start a local one; reuse a connection made by the caller."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False, log_to_driver=False)
    return ray


def run_ray(todo: Sequence, make_runner: Callable[[], object], workers: int | None, batch_size: int,
            sink: Callable[[list[dict]], None]) -> None:
    """Run the remaining tasks on Ray actors; `sink` gets each batch's records on the driver as they arrive.

    make_runner: a picklable function returning an object with run(tasks) -> records and close(), called once on
    each actor. workers: actors (None: the cluster's CPUs)."""
    ray = init_ray()
    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    workers = min(workers, len(todo))
    if workers == 0:
        return
    queues = [list(batches(shard(todo, k, workers), batch_size)) for k in range(workers)]
    actor_class = ray.remote(num_cpus=1)(_Worker)
    actors = [actor_class.remote(make_runner) for _ in range(workers)]
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
