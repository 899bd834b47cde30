"""`repocomplete bench quality DIR`: does repository context help? A small CrossCodeEval-style check.

Line-completion tasks are cut from a real repository: lines that use a name defined in another file of it. The
cursor sits after the line's indentation; the target is the rest of the line. While a task runs, the file is
served to the context engine with the target line removed (an unsaved buffer), so nothing leaks. Each
configuration (in-file only, all providers, each provider alone) completes every task with the same engine;
exact match and edit similarity (rapidfuzz's ratio, as CrossCodeEval computes it) are reported per
configuration. The full harness (suite files, resumable runs, reports) is the evaluation issue's.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from rapidfuzz import fuzz

from context_engine.config import ContextConfig
from context_engine.document import Window
from repocomplete.pipeline import cursor_prompt
from context_engine.engine import ContextEngine
from context_engine.records import KINDS
from model_runtime.engine import CompletionRequest, Engine

@dataclass
class Task:
    path: str
    line: int  # 1-based
    text: str  # the whole file
    offset: int  # the cursor: after the target line's indentation
    target: str  # the rest of the line


def cut_tasks(engine: ContextEngine, n: int, seed: int = 0) -> list[Task]:
    """Lines using a name that another file of the repository defines or that it imports from one (tests
    excluded): the suite builder's cutter, several tasks per file allowed (nothing is written to disk here)."""
    from eval.build_suite import cut_tasks as cut

    return [Task(t.file, t.lineno + 1, t.prompt + t.groundtruth + t.right_context, len(t.prompt), t.groundtruth.strip())
            for t in cut(engine.index, engine.root.name, n, seed, per_file=None)]


def score(prediction: str, target: str) -> tuple[float, float]:
    p, t = prediction.strip(), target.strip()
    return float(p == t), fuzz.ratio(p, t)


def run_quality(source: Path, model: Engine, n: int = 40, seed: int = 0, budget: int = 512,
                configurations: tuple[str, ...] = ("infile", "repo", *KINDS), progress: bool = True,
                config: ContextConfig | None = None) -> dict:
    # Results must not depend on timing: wait for every provider.
    config = (config or ContextConfig()).replace(budget_tokens=budget, slow_provider_deadline_ms=None)
    engine = ContextEngine(source, config)
    engine.build(progress=progress)
    tasks = cut_tasks(engine, n, seed)
    window = Window(max_prefix_chars=4000, max_suffix_chars=1000)
    results = {}
    for name in configurations:
        ems, ess, seconds = [], [], []
        items = tasks
        if progress:
            from tqdm import tqdm

            items = tqdm(tasks, desc=name, leave=False)
        for task in items:
            lines = task.text.split("\n")
            without_target = "\n".join(lines[: task.line - 1] + lines[task.line :])
            engine.set_buffer(task.path, without_target)
            if name == "infile":
                parts = cursor_prompt(task.text, task.offset, mode="infile", path=task.path, window=window)
            else:
                providers = KINDS if name == "repo" else (name,)
                engine.config.providers = providers
                parts, _ = engine.prompt_parts(task.path, task.text, task.offset, window=window)
            parts.suffix = parts.suffix.split("\n", 1)[1] if "\n" in parts.suffix else ""  # the target line is gone
            t = time.perf_counter()
            result = model.complete(CompletionRequest(parts, multiline=False))
            seconds.append(time.perf_counter() - t)
            em, es = score(result.text, task.target)
            ems.append(em)
            ess.append(es)
            engine.clear_buffer(task.path)
        engine.config.providers = KINDS
        results[name] = {
            "n": len(tasks),
            "exact_match": round(100 * statistics.mean(ems), 1) if ems else None,
            "edit_similarity": round(statistics.mean(ess), 1) if ess else None,
            "mean_latency_s": round(statistics.mean(seconds), 2) if seconds else None,
        }
    engine.close()
    report = {"source": str(source), "model": model.name, "tasks": len(tasks), "seed": seed, "budget": budget,
              "results": results}
    if "infile" in results and "repo" in results and results["infile"]["edit_similarity"] is not None:
        report["repo_minus_infile_es"] = round(results["repo"]["edit_similarity"] - results["infile"]["edit_similarity"], 1)
    return report


def format_report(r: dict) -> str:
    lines = [f"{r['tasks']} line completions cut from {r['source']} (seed {r['seed']}), model {r['model']}, "
             f"context budget {r['budget']} tokens", "", f"{'configuration':<14} {'EM':>6} {'ES':>6} {'s/task':>7}"]
    for name, m in r["results"].items():
        lines.append(f"{name:<14} {m['exact_match']:>6} {m['edit_similarity']:>6} {m['mean_latency_s']:>7}")
    if "repo_minus_infile_es" in r:
        lines.append(f"\nrepo - infile edit similarity: {r['repo_minus_infile_es']:+} points (goal >= +5)")
    return "\n".join(lines)
