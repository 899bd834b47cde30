"""Prediction files: the one reader and writer of them.

A prediction file is CrossCodeEval's format, JSONL with an object a line holding at least a string `task_id` and a
string `pred` (the runner adds its figures: latency_ms, prompt_tokens, ...; with repository context, `context`: the
packed context's provenance, see `runner.context_provenance`; files written before it have none, and no reader
requires it). `eval run` writes them, `eval merge` joins them, `eval score`, `eval report` and `eval explain` read
them.

The run's files, `PredictionFile`:
  * predictions are appended to `OUT.partial`, a JSON line per task, flushed and fsynced after every batch;
  * `OUT.meta.json` records the settings; resuming into a file made with other settings is refused;
  * when every selected task has a prediction, the lines are written in suite order to `OUT` (a rename, so
    atomic) and `OUT.partial` is removed;
  * a re-run skips the task ids found in `OUT` or `OUT.partial`. A truncated last line (a killed run) is dropped
    and the partial file rewritten cleanly before anything is appended.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path

from repocomplete.context_engine.errors import InputError
from repocomplete.eval.suites import EvalTask, jsonl_object, read_input, required_field

log = logging.getLogger(__name__)


def read_predictions(path: str | Path, tolerant: bool = False, known: Collection[str] | None = None) -> dict[str, dict]:
    """{task_id: record} of a prediction file, in file order.

    Strict: a bad line (not a JSON object, no string task_id or pred, a task id not in `known` when given, a second
    prediction for a task) is an InputError naming the file and line. Tolerant (the run's own partial file): bad
    lines are dropped with a warning (a killed run leaves a truncated last line), a later line for a task wins."""
    path = Path(path)
    text = read_input(path, "predictions file", errors="replace" if tolerant else "strict")
    records: dict[str, dict] = {}
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = jsonl_object(line, where, "a prediction")
            task_id = required_field(record, "task_id", str, where)
            required_field(record, "pred", str, where)
            if not tolerant and known is not None and task_id not in known:
                raise InputError(f"{where}: unknown task id {task_id!r} (not in the tasks file)")
            if not tolerant and task_id in first_line:
                raise InputError(f"{where}: second prediction for task {task_id!r} (first on line "
                                 f"{first_line[task_id]})")
        except InputError as e:
            if not tolerant:
                raise
            log.warning("dropped an unreadable line: %s", e)
            continue
        first_line.setdefault(task_id, lineno)
        records[task_id] = record
    return records


def load_predictions(path: str | Path, tasks: Sequence[EvalTask]) -> dict[str, str]:
    """task id -> prediction of a file to score against `tasks`: strict, and at least one prediction."""
    records = read_predictions(path, known={t.task_id for t in tasks})
    if not records:
        raise InputError(f"no predictions in {path} (expected JSONL lines {{\"task_id\": ..., \"pred\": ...}})")
    return {task_id: r["pred"] for task_id, r in records.items()}


def _append_lines(f, records: Sequence[dict]) -> None:
    for r in records:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def write_predictions(path: str | Path, records: Sequence[dict]) -> None:
    """Write a prediction file whole, under a temporary name first: a reader sees the old file or the new, never
    half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        _append_lines(f, records)
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
        write_predictions(self.partial, list(records.values()))
        self.path.unlink(missing_ok=True)

    def append(self, records: Sequence[dict]) -> None:
        with open(self.partial, "a", encoding="utf-8") as f:
            _append_lines(f, records)

    def finish(self, order: Sequence[str]) -> int:
        """Write the finished file in suite order (ids the suite does not know go last); drop the partial one."""
        records = read_predictions(self.partial, tolerant=True)
        rank = {task_id: k for k, task_id in enumerate(order)}
        ordered = sorted(records.values(), key=lambda r: rank.get(r["task_id"], len(rank)))
        write_predictions(self.path, ordered)
        self.partial.unlink(missing_ok=True)
        return len(ordered)
