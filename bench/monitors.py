"""`repocomplete bench monitors`: what monitor-guided decoding adds to a completion's latency.

The tasks of a suite (default: the shipped `rich_member` one) are completed through the `Completer` with the
monitors on, in the editor's configuration (a decode step waits at most `ContextConfig.monitor_wait_ms` for an
analysis the model's own text triggers); the engine reports the time its monitors took (`Completion.monitor_ms`:
the sites, the masks, the waits for jedi) and the decode steps. Printed: ms added per decode step (mean over all
steps, and p95 over completions of their own mean) and ms added per completion (p50, p95), the decode step with the
monitors on and off (the whole step: where the analysis' worker answers while the model runs a step, the two share
the CPU), the share of completions some monitor constrained, and the mask alone (`NameMask.allowed` for the names
in scope, uncached), each figure with the CPU. A first pass warms jedi's worker (not measured); its questions are
then answered and forgotten, so that the measured pass asks each anew of a worker with the files parsed (a request
at a new place); a pass with the monitors off gives the baseline decode step.

Then the typing passes (`keystrokes` > 0): at each task the user types the first characters of the answer, one
completion a keystroke, as an editor asks (on its line: where the answer breaks the line, typing stops), the monitors
on, then off; each task's first keystroke asks anew (the questions are forgotten between tasks), the next ones find
what the analysis answered for the earlier ones (the names in scope on the line, a receiver's members).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from repocomplete.bench.stats import percentiles
from repocomplete.context_engine.config import ContextConfig
from repocomplete.eval.suites import load_tasks, repo_dir

DEFAULT_SUITE = Path(__file__).resolve().parent.parent / "eval" / "suites" / "rich_member"


def cpu_capability() -> str:
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # an older torch
        return "unknown"


def run_monitors_bench(runtime, suite: Path = DEFAULT_SUITE, n: int = 12, max_tokens: int = 24,
                       progress: bool = True, keystrokes: int = 4) -> dict:
    from repocomplete.model_runtime.backend import make_engine
    from repocomplete.model_runtime.monitor import MONITOR_KINDS, NameMask
    from repocomplete.pipeline import Completer, CompletionOptions

    suite = Path(suite)
    tasks = [t for t in load_tasks(suite / "tasks.jsonl") if t.language == "python"][:n]
    engine = make_engine(runtime.replace(max_new_tokens=max_tokens))
    completer = Completer(engine, ContextConfig())  # the editor's waits
    try:
        # Each pass completes every task in turn, so that a completion follows the previous task's in both passes
        # (the engine drafts from the previous completion's tokens: an off run right after the same task's on run
        # would have its answer drafted for it).
        runs = {}
        for phase, monitors in (("warm", MONITOR_KINDS), ("on", MONITOR_KINDS), ("off", ())):
            for i, task in enumerate(tasks):
                root = repo_dir(suite / "repos", task)
                completer.add_analysis_root(root)
                text, offset = task.buffer()
                c = completer.complete(str(root / task.file), text, offset,
                                       CompletionOptions(context="infile", monitors=monitors)).completion
                runs[phase, i] = c
                if progress and phase == "on":
                    print(f"  {i + 1}/{len(tasks)} {task.task_id}: {c.monitor_ms:.1f} ms over "
                          f"{c.generated_tokens} steps", flush=True)
            if phase == "warm":
                # jedi has the files parsed; the questions are asked anew, as an editor's new text asks them (and
                # none is still queued from the warm pass, which waited at most monitor_wait_ms for each)
                completer.settle_analysis(forget=True)
        rows = [_row(task.task_id, runs["on", i], runs["off", i]) for i, task in enumerate(tasks)]
        typing_rows = []
        if keystrokes > 0:
            typed = {}
            for phase, monitors in (("on", MONITOR_KINDS), ("off", ())):
                for i, task in enumerate(tasks):
                    completer.settle_analysis(forget=True)  # the task's first keystroke asks anew
                    root = repo_dir(suite / "repos", task)
                    text, offset = task.buffer()
                    for k in range(1, min(keystrokes, len(task.groundtruth)) + 1):
                        chars = task.groundtruth[:k]
                        if "\n" in chars:
                            break
                        typed[phase, i, k] = completer.complete(
                            str(root / task.file), text[:offset] + chars + text[offset:], offset + k,
                            CompletionOptions(context="infile", monitors=monitors)).completion
            typing_rows = [_row(f"{task.task_id}+{k}", typed["on", i, k], typed["off", i, k])
                           for i, task in enumerate(tasks) for k in range(1, keystrokes + 1) if ("on", i, k) in typed]
        # The mask alone: the names in scope at a typical point (a few hundred), not cached.
        names = NameMask.for_vocab(engine.vocab)
        scope = tuple(sorted({w for t in tasks for w in _identifiers(t.prompt)}))[:400]
        from repocomplete.model_runtime.monitor import Constraint

        times = []
        for partial in ("", "s", "se", "sel"):
            names._cache.clear()
            t0 = time.perf_counter()
            names.allowed(Constraint(scope, partial, 0, skip_space=True))
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        completer.close()
    return {
        "cpu": cpu_capability(),
        "suite": str(suite),
        "tasks": len(rows),
        "max_tokens": max_tokens,
        "monitor_wait_ms": ContextConfig().monitor_wait_ms,
        **_summary(rows),
        "mask_ms": {"names": len(scope), **percentiles(times, (50, 95), 3)},
        "rows": rows,
        "keystrokes": keystrokes,
        "typing": ({"completions": len(typing_rows), **_summary(typing_rows), "rows": typing_rows}
                   if typing_rows else None),
    }


def _row(task_id: str, on, off) -> dict:
    return {"task": task_id, "monitor_ms": on.monitor_ms, "steps": max(1, on.generated_tokens),
            "constrained": bool(on.monitor_spans),
            "decode_ms_per_step_on": on.decode_s * 1000 / max(1, on.generated_tokens),
            "decode_ms_per_step_off": off.decode_s * 1000 / max(1, off.generated_tokens)}


def _summary(rows: list[dict]) -> dict:
    per_completion = [r["monitor_ms"] for r in rows]
    per_step = [r["monitor_ms"] / r["steps"] for r in rows]
    all_steps = sum(r["steps"] for r in rows)
    return {
        "ms_per_step": round(sum(per_completion) / all_steps, 3) if all_steps else None,
        "ms_per_step_p95": percentiles(per_step, (95,), 3)["p95"],
        "ms_per_completion": percentiles(per_completion, (50, 95), 2),
        "constrained_share": round(sum(r["constrained"] for r in rows) / len(rows), 2) if rows else None,
        "decode_ms_per_step_off": _mean(rows, "decode_ms_per_step_off"),
        "decode_ms_per_step_on": _mean(rows, "decode_ms_per_step_on"),
    }


def _mean(rows: list[dict], key: str) -> float | None:
    return round(statistics.fmean(r[key] for r in rows), 2) if rows else None


def _identifiers(text: str) -> set[str]:
    import re

    return set(re.findall(r"[^\W\d]\w*", text[-4000:]))


def format_report(report: dict) -> str:
    cpu = report["cpu"]
    pc = report["ms_per_completion"]
    lines = [
        f"monitors on {report['tasks']} tasks of {Path(report['suite']).name} (max {report['max_tokens']} tokens, "
        f"analysis wait {report['monitor_wait_ms']} ms)",
        f"  added per decode step:  {report['ms_per_step']} ms mean, {report['ms_per_step_p95']} ms p95 of "
        f"completions  [{cpu}]",
        f"  added per completion:   {pc['p50']} ms p50, {pc['p95']} ms p95  [{cpu}]",
        f"  decode step, monitors off: {report['decode_ms_per_step_off']} ms, on: {report['decode_ms_per_step_on']} ms "
        f"(all of it: the model, the monitors, what the analysis' worker takes of the CPU)  [{cpu}]",
        f"  mask of {report['mask_ms']['names']} names in scope: {report['mask_ms']['p50']} ms p50, "
        f"{report['mask_ms']['p95']} ms p95  [{cpu}]",
        f"  completions a monitor constrained: {report['constrained_share']}",
    ]
    typing = report.get("typing")
    if typing:
        tc = typing["ms_per_completion"]
        lines += [
            f"  while typing ({report['keystrokes']} keystrokes of the answer at each task, {typing['completions']} "
            f"completions):",
            f"    added per decode step: {typing['ms_per_step']} ms mean, {typing['ms_per_step_p95']} ms p95 of "
            f"completions  [{cpu}]",
            f"    added per completion:  {tc['p50']} ms p50, {tc['p95']} ms p95  [{cpu}]",
            f"    decode step, monitors off: {typing['decode_ms_per_step_off']} ms, "
            f"on: {typing['decode_ms_per_step_on']} ms  [{cpu}]",
            f"    completions a monitor constrained: {typing['constrained_share']}",
        ]
    return "\n".join(lines)
