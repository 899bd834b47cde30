"""`repocomplete eval report`: an ablation over context configurations, scored, as report.md and report.png.

Configurations: `none` (the text before the cursor), `infile` (before and after it), each context provider alone
(`imports`, `typed_holes`, `retrieval`, `repo_map`, `neighbours`: the current file plus that provider's records),
and `repo` (all providers); with `--adapter`, `infile+adapter` and `repo+adapter` beside them (every other
configuration runs on the base model). Each configuration's predictions go to `OUT_DIR/pred-<config>.jsonl`
through the runner, so an interrupted report resumes where it stopped; the model is loaded once per adapter
setting, and only when some configuration still has tasks to run.

Scores are CrossCodeEval's (eval.metrics); latency is the runner's per-task figure (context assembly + prefill +
decode, in ms). The files: report.md (header: model, budget, suite, tasks, date, commit; a row per configuration),
report.png (metrics and latency per configuration), report.json (the numbers).
"""

from __future__ import annotations

import datetime as _dt
import json
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from repocomplete.bench.stats import percentile
from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.errors import InputError
from repocomplete.context_engine.records import KINDS
from repocomplete.eval.metrics import score
from repocomplete.eval.options import resolve_options
from repocomplete.eval.predictions import read_predictions
from repocomplete.eval.runner import check_unique, eval_runtime, git_head, run
from repocomplete.eval.scale import select

CONFIGS = ("none", "infile", *KINDS, "repo")
ADAPTED = ("infile+adapter", "repo+adapter")


def parse_configs(text: str | None, adapter: str | None) -> list[str]:
    if not text:
        return list(CONFIGS) + (list(ADAPTED) if adapter else [])
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        base, _, suffix = name.partition("+")
        if base not in CONFIGS or suffix not in ("", "adapter"):
            raise InputError(f"unknown configuration {name!r}; known: {', '.join(CONFIGS)} (each may end in +adapter)")
        if suffix and not adapter:
            raise InputError(f"configuration {name!r} needs --adapter")
    if len(set(names)) != len(names):
        raise InputError(f"a configuration is named twice in {text!r}")
    return names


def configure(name: str, runtime, context: ContextConfig, options):
    """The (runtime, context, options) of one configuration."""
    base, _, suffix = name.partition("+")
    runtime = runtime.replace(adapter=runtime.adapter if suffix == "adapter" else None)
    if base in ("none", "infile", "repo"):
        return runtime, context, replace(options, context=base)
    return runtime, context.replace(providers=(base,)), replace(options, context="repo")


def summarize_config(tasks: Sequence, pred_path: Path) -> dict:
    """Scores and latency of one configuration's predictions, over `tasks`."""
    ids = {t.task_id for t in tasks}
    records = {k: r for k, r in read_predictions(pred_path).items() if k in ids}
    overall = score(list(tasks), {k: r["pred"] for k, r in records.items()})["overall"]
    latency = [float(r["latency_ms"]) for r in records.values() if isinstance(r.get("latency_ms"), (int, float))]
    return {
        **overall,
        "latency_ms_mean": round(statistics.fmean(latency), 1) if latency else None,
        "latency_ms_p50": round(percentile(latency, 50), 1) if latency else None,
        "predictions": str(pred_path),
    }


def run_report(tasks: Sequence, repos, out_dir, runtime, context: ContextConfig, options, configs: Sequence[str],
               suite: str | None = None, model=None, make_context_engine=None) -> dict:
    """Run (or resume) every configuration, score them, write report.md, report.png and report.json.

    model: an engine to use for every configuration without adapter (tests); otherwise one is loaded per adapter
    setting, on first need."""
    if options.shard is not None:
        raise InputError("a report covers the whole suite: run shards with `eval run --shard` and merge them")
    check_unique(tasks)
    selected = select(tasks, options.limit)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engines: dict[str | None, object] = {}

    def engine_for(rt):
        def make():  # called by the runner only when a configuration has tasks left
            if model is not None and rt.adapter is None:
                return model
            if rt.adapter not in engines:
                from repocomplete.model_runtime.backend import make_engine

                engines[rt.adapter] = make_engine(eval_runtime(rt))
            return engines[rt.adapter]

        return make

    rows = {}
    for name in configs:
        rt, ctx, opts = configure(name, runtime, context, options)
        pred = out_dir / f"pred-{name}.jsonl"
        run(tasks, repos, pred, rt, ctx, opts, model=engine_for(rt) if opts.backend == "local" else None,
            suite=suite, make_context_engine=make_context_engine)
        rows[name] = summarize_config(selected, pred)
    for engine in engines.values():
        close = getattr(engine, "close", None)
        if close is not None:
            close()
    resolved = resolve_options(runtime, context, options)
    header = {
        "model": runtime.model,
        "adapter": runtime.adapter,
        "quantize": runtime.quantize,
        "device": runtime.device or "auto",
        "max_new_tokens": resolved.max_new_tokens,
        "budget": resolved.budget,
        "suite": suite,
        "tasks": len(selected),
        "date": _dt.date.today().isoformat(),
        "commit": git_head(),
    }
    report = {"header": header, "configs": rows}
    markdown = format_markdown(report)
    (out_dir / "report.md").write_text(markdown, encoding="utf-8")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot(report, out_dir / "report.png")
    return {**report, "markdown": markdown, "files": [str(out_dir / f) for f in ("report.md", "report.png",
                                                                                 "report.json")]}


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_markdown(report: dict) -> str:
    h, rows = report["header"], report["configs"]
    model = h["model"] + (f" + adapter {h['adapter']}" if h["adapter"] else "")
    lines = [
        f"# Context ablation: {h['suite'] or 'suite'}",
        "",
        f"- model: `{model}` (weights {h['quantize']}, device {h['device']}), at most {h['max_new_tokens']} new "
        f"tokens, greedy",
        f"- repository context budget: {h['budget']} tokens",
        f"- suite: `{h['suite']}`, {h['tasks']} tasks",
        f"- date: {h['date']}, commit `{h['commit'] or 'unknown'}`",
        "",
    ]
    infile_es = rows.get("infile", {}).get("es")
    lines.append("| configuration | n | EM | ES | ES vs in-file | ID-EM | ID-F1 | mean ms | p50 ms |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in rows.items():
        delta = "" if infile_es is None or name == "infile" else f"{m['es'] - infile_es:+.1f}"
        lines.append(f"| {name} | {m['n']} | {_fmt(m['em'])} | {_fmt(m['es'])} | {delta} | {_fmt(m['id_em'])} | "
                     f"{_fmt(m['id_f1'])} | {_fmt(m['latency_ms_mean'], 0)} | {_fmt(m['latency_ms_p50'], 0)} |")
    missing = {name: m["missing"] for name, m in rows.items() if m.get("missing")}
    if missing:
        lines += ["", "Tasks without a prediction (scored as empty): "
                  + ", ".join(f"{k} {v}" for k, v in missing.items())]
    lines += ["", "EM, ES, ID-EM, ID-F1: CrossCodeEval's metrics in percent (eval/metrics.py). Latency: per task, "
              "context assembly + prefill + decode, as the runner measured it."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["configs"]
    names = list(rows)
    y = list(range(len(names)))
    height = 0.38
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, max(3.5, 1.2 + 0.5 * len(names))), sharey=True)
    es = [rows[n]["es"] for n in names]
    em = [rows[n]["em"] for n in names]
    left.barh([v - height / 2 for v in y], es, height, label="ES", color="#3b75af")
    left.barh([v + height / 2 for v in y], em, height, label="EM", color="#ef8636")
    for v, value in zip(y, es):
        left.text(value + 0.5, v - height / 2, f"{value:.1f}", va="center", fontsize=8)
    for v, value in zip(y, em):
        left.text(value + 0.5, v + height / 2, f"{value:.1f}", va="center", fontsize=8)
    if "infile" in rows:
        left.axvline(rows["infile"]["es"], color="#3b75af", linestyle=":", linewidth=1, label="in-file ES")
    left.set_xlim(0, 105)
    left.set_xlabel("percent")
    left.set_title("edit similarity and exact match")
    left.legend(loc="lower right")
    mean = [rows[n]["latency_ms_mean"] or 0 for n in names]
    p50 = [rows[n]["latency_ms_p50"] or 0 for n in names]
    right.barh([v - height / 2 for v in y], mean, height, label="mean", color="#519e3e")
    right.barh([v + height / 2 for v in y], p50, height, label="p50", color="#8d69b8")
    right.set_xlim(0, 1.25 * max([*mean, *p50, 1]))  # room for the legend
    right.set_xlabel("ms per task")
    right.set_title("latency (context + prefill + decode)")
    right.legend(loc="lower right")
    left.set_yticks(y, names)
    left.invert_yaxis()
    h = report["header"]
    fig.suptitle(f"{h['suite'] or ''}: {h['tasks']} tasks, {h['model']}, budget {h['budget']}, {h['commit'] or ''}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
