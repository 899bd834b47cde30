"""`repocomplete bench quality DIR`: does repository context help? A small CrossCodeEval-style check.

Line-completion tasks are cut from a real repository by the suite builder's cutter (eval/build_suite.py: lines that
use a name another file of it defines or that it imports from one, tests excluded; several tasks per file allowed;
nothing is written into the repository). Each configuration (in-file only, all providers, each provider alone, as
`eval report` names them) runs every task through eval's runner with the same model: the Completer, the task's file
served as an unsaved buffer with the target removed, so nothing leaks. eval's metrics score the predictions
(CrossCodeEval's exact match and edit similarity, after its first-statement cut). A quick check on any repository;
the full harness (suite files, resumable runs, the ablation report) is `repocomplete eval`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.errors import InputError
from repocomplete.context_engine.index import RepoIndex
from repocomplete.context_engine.records import KINDS
from repocomplete.eval.build_suite import cut_tasks
from repocomplete.eval.options import RunOptions
from repocomplete.eval.report import configure, summarize_config
from repocomplete.eval.runner import eval_runtime, run
from repocomplete.eval.suites import EvalTask

CONFIGURATIONS = ("infile", "repo", *KINDS)


def quality_tasks(root: Path, config: ContextConfig, n: int, seed: int = 0, progress: bool = False) -> list[EvalTask]:
    """Up to n tasks cut from the repository at `root` (its index is the one the runner's workspace then opens)."""
    index = RepoIndex(root, config)
    try:
        stats = index.build(progress=progress)
        tasks = cut_tasks(index, root.name, n, seed, per_file=None)
    finally:
        index.close()
    if not tasks:
        raise InputError(f"no task in {root}: no line of its {stats.files} indexed files uses a name defined in "
                         f"another of them (tests excluded)")
    return tasks


def run_quality(source: Path, runtime, model=None, n: int = 40, seed: int = 0, budget: int | None = None,
                configurations: tuple[str, ...] = CONFIGURATIONS, progress: bool = True,
                config: ContextConfig | None = None, make_context_engine=None) -> dict:
    """Every configuration over the same tasks and model. runtime: a RuntimeConfig; model: an engine to use
    instead of loading one from it (tests); make_context_engine: as the runner's."""
    root = Path(source).resolve()
    if not root.is_dir():
        raise InputError(f"not a directory: {source}")
    config = config or ContextConfig()
    tasks = quality_tasks(root, config, n, seed, progress)
    own_model = model is None
    if own_model:
        from repocomplete.model_runtime.backend import make_engine

        model = make_engine(eval_runtime(runtime))
    options = RunOptions(budget=budget, multiline=False, progress=progress)
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="repocomplete-bench-quality-") as tmp:
            for name in configurations:
                _, context, opts = configure(name, runtime, config, options)  # per-provider configs: copies
                pred = Path(tmp) / f"pred-{name}.jsonl"
                run(tasks, root.parent, pred, runtime, context, opts, model=model,
                    make_context_engine=make_context_engine)
                m = summarize_config(tasks, pred)
                results[name] = {
                    "n": m["n"],
                    "exact_match": round(m["em"], 1),
                    "edit_similarity": round(m["es"], 1),
                    "mean_latency_s": round(m["latency_ms_mean"] / 1000, 2),
                }
    finally:
        if own_model:
            getattr(model, "close", lambda: None)()
    report = {"source": str(source), "model": model.name, "tasks": len(tasks), "seed": seed, "budget": budget,
              "results": results}
    if "infile" in results and "repo" in results:
        report["repo_minus_infile_es"] = round(results["repo"]["edit_similarity"]
                                               - results["infile"]["edit_similarity"], 1)
    return report


def format_report(r: dict) -> str:
    lines = [f"{r['tasks']} line completions cut from {r['source']} (seed {r['seed']}), model {r['model']}, "
             f"context budget {r['budget']} tokens", "", f"{'configuration':<14} {'EM':>6} {'ES':>6} {'s/task':>7}"]
    for name, m in r["results"].items():
        lines.append(f"{name:<14} {m['exact_match']:>6} {m['edit_similarity']:>6} {m['mean_latency_s']:>7}")
    if "repo_minus_infile_es" in r:
        lines.append(f"\nrepo - infile edit similarity: {r['repo_minus_infile_es']:+} points (goal >= +5)")
    lines.append("EM, ES: CrossCodeEval's (eval/metrics.py), in percent; s/task: context + prefill + decode.")
    return "\n".join(lines)
