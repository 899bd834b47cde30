"""The `repocomplete` command: one entry point, a subcommand per job.

Bad input (a missing file, a position out of range, a binary file, a missing or corrupt model) gets one line on
stderr and exit code 2; nothing prints a traceback unless --debug is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    from repocomplete.model_runtime.config import ATTENTION_MODES, QUANTIZE_MODES, RuntimeConfig
    from repocomplete.monitors import monitors_text

    defaults = RuntimeConfig()
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help="'default' (embedded SmolLM2-135M), a HF directory or a .gguf")
    g.add_argument("--adapter", default=None, help="a peft LoRA adapter directory")
    g.add_argument("--endpoint", default=None, help="an OpenAI-compatible completions server instead of a local model")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    g.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on cuda, fp32 on cpu)")
    g.add_argument(
        "--quantize", default=None, choices=QUANTIZE_MODES,
        help="weights: auto = measured per CPU (see `repocomplete doctor`), none on cuda"
    )
    g.add_argument("--fim-template", default=None, help="force a FIM template (default: from the tokenizer/model name)")
    g.add_argument("--compile", action="store_true", help="torch.compile a static-shape decode step")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: the physical cores available)")
    g.add_argument("--speculative-tokens", type=int, default=None,
                   help=f"greedy decoding verifies up to N tokens drafted from the prompt (default "
                        f"{defaults.speculative_tokens}; 0: off)")
    g.add_argument("--attention", default=None, choices=ATTENTION_MODES,
                   help=f"attention over long prompts: sparse (sinks, recent window, the current file and the top-k "
                        f"repository-context blocks), dense, or auto: sparse from --sparse-min-tokens on (default "
                        f"{defaults.attention})")
    g.add_argument("--sparse-min-tokens", type=int, default=None,
                   help=f"with --attention auto, the prompt length where sparse attention starts (default "
                        f"{defaults.sparse_min_tokens})")
    g.add_argument("--sparse-top-k", type=int, default=None,
                   help=f"repository-context blocks each decode step attends to, per K/V head (default "
                        f"{defaults.sparse_top_k})")
    g.add_argument("--max-tokens", type=int, default=None, help=f"most tokens to generate (default {defaults.max_new_tokens})")
    g.add_argument("--candidates", type=int, default=None,
                   help=f"alternative completions per request, 1-8: the first as without it, the others sampled "
                        f"(default {defaults.candidates})")
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy (the default)")
    g.add_argument("--no-token-healing", action="store_true", help="turn token healing off")
    g.add_argument("--no-stop-loops", action="store_true",
                   help="let a completion repeat itself (by default a loop ends at its first copy)")
    g.add_argument("--suggest-comments", action="store_true",
                   help="let a single-line completion on a line with no code yet open a comment")
    g.add_argument("--monitors", default=None, metavar="auto|none|all|deref,scope,args,imports",
                   help="monitor-guided decoding: static analysis masks the tokens of member names, names in scope, "
                        "keyword arguments and imports, and refuses to close a call that lacks a required argument "
                        f"(default {monitors_text(defaults.monitors)}: all with a local model, none with --endpoint)")


def _add_context_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("repository context")
    g.add_argument("--root", default=None,
                   help="the repository (default: the nearest parent with .git/.hg/.svn/.jj, else with a project "
                        "file such as pyproject.toml, else the folder above the top Python package)")
    g.add_argument("--budget", type=int, default=None, help=f"context token budget (default {_budget_default()})")
    g.add_argument("--providers", default=None, help="comma list of imports,typed_holes,retrieval,repo_map,outline,neighbours")
    g.add_argument("--dense", action="store_true", help="add dense retrieval (all-MiniLM-L6-v2 + faiss)")
    g.add_argument(
        "--iterative", action="store_true",
        help="RepoCoder: complete once, retrieve again with the draft (typed holes answer for the receiver it "
             "reaches into), complete again")
    _add_index_dir_arg(g)


def _add_index_dir_arg(p) -> None:
    p.add_argument("--index-dir", default=None, help="where the workspace indexes live (default: the user's cache)")


def _budget_default() -> int:
    from repocomplete.context_engine.config import ContextConfig

    return ContextConfig().budget_tokens


def _context_modes() -> tuple[str, ...]:
    from repocomplete.context_engine.document import CONTEXT_MODES

    return CONTEXT_MODES


def runtime_config(args: argparse.Namespace):
    from repocomplete.model_runtime.config import RuntimeConfig

    # A flag left out means RuntimeConfig's default: the command line restates none of them.
    given = dict(model=args.model, adapter=args.adapter, endpoint=args.endpoint, device=args.device, dtype=args.dtype,
                 quantize=args.quantize, fim_template=args.fim_template, threads=args.threads,
                 speculative_tokens=args.speculative_tokens, candidates=getattr(args, "candidates", None),
                 attention=args.attention, sparse_min_tokens=args.sparse_min_tokens, sparse_top_k=args.sparse_top_k,
                 max_new_tokens=args.max_tokens, temperature=args.temperature)
    config = RuntimeConfig(**{k: v for k, v in given.items() if v is not None})
    monitors = getattr(args, "monitors", None)
    if monitors is not None:
        from repocomplete.model_runtime.errors import ConfigError
        from repocomplete.monitors import parse_monitors

        try:
            config.monitors = parse_monitors(monitors)
        except ValueError as e:
            raise ConfigError(f"--monitors: {e}") from None
    if args.compile:
        config.compile_decode = True
    if args.no_token_healing:
        config.token_healing = False
    if args.suggest_comments:
        config.suggest_comments = True
    if getattr(args, "no_stop_loops", False):
        config.stop_loops = False
    if getattr(args, "multiline", False):
        config.multiline = True
    config.validate()
    return config


def context_config(args: argparse.Namespace):
    from repocomplete.context_engine.config import ContextConfig

    # A one-shot command waits for every provider and the monitors' analysis; the deadlines are for an editor's
    # keystrokes.
    config = ContextConfig(slow_provider_deadline_ms=None, monitor_wait_ms=None)
    if getattr(args, "budget", None) is not None:
        config.budget_tokens = args.budget
    if getattr(args, "providers", None):
        config.providers = tuple(p for p in args.providers.split(",") if p)
    if getattr(args, "dense", False):
        config.dense = True
    if getattr(args, "index_dir", None):
        config.index_dir = Path(args.index_dir)
    config.validate()
    return config


def make_completer(args: argparse.Namespace, prefetch_at: tuple[str, str, int] | None = None):
    """The model engine and the context engines, as every command that completes uses them. prefetch_at: the (path,
    text, offset) of a one-shot completion outside a workspace, whose monitors' analysis starts (jedi's worker with
    it) while the model loads."""
    from repocomplete.pipeline import Completer
    from repocomplete.model_runtime.backend import make_engine

    config = runtime_config(args)
    completer = Completer(None, context_config(args))
    if prefetch_at is not None:
        completer.prefetch_analysis(*prefetch_at, config.active_monitors)
    completer.model = make_engine(config)
    return completer


def _workspace_root(file: str, args: argparse.Namespace):
    """--root, else the file's repository (`roots.locate_root`), as a `roots.Root` (the folder and why); checked
    before anything is loaded or created (bad: exit 2)."""
    from repocomplete.context_engine.gate import check_workspace_root
    from repocomplete.context_engine.roots import Root, locate_root

    if getattr(args, "root", None):
        return Root(check_workspace_root(Path(args.root)), "--root")
    return locate_root(Path(file))


def _context_engine(file: str, args: argparse.Namespace):
    from repocomplete.context_engine.engine import ContextEngine

    root = _workspace_root(file, args)
    engine = ContextEngine(root.path, context_config(args))
    engine.root_reason = root.reason
    engine.build(progress=not getattr(args, "json", False))
    return engine


def cmd_complete(args: argparse.Namespace) -> int:
    from repocomplete.pipeline import CompletionOptions
    from repocomplete.context_engine.document import offset_of, read_source

    text = read_source(args.file)
    offset = offset_of(text, args.line, args.col)
    root = _workspace_root(args.file, args) if args.context == "repo" else None
    # (in a workspace the analysis is the workspace's, opened below)
    completer = make_completer(args, prefetch_at=(args.file, text, offset) if root is None else None)
    workspace = None
    if root is not None:
        workspace = completer.open_workspace(root.path, progress=not args.json, reason=root.reason)
    options = CompletionOptions(context=args.context, multiline=args.multiline, budget=args.budget,
                                iterative=args.iterative)
    done = completer.complete(args.file, text, offset, options, workspace=workspace)
    result = done.completion
    for note in done.context.notes if done.context is not None else ():
        print(f"repocomplete: {note}", file=sys.stderr)  # a budget reduced to fit the model's window
    engine = completer.model
    if args.json:
        print(
            json.dumps(
                {
                    "completion": result.text,
                    "latency_ms": round(result.latency_s * 1000, 1),
                    "prompt_tokens": result.prompt_tokens,
                    "cached_tokens": result.cached_tokens,
                    "generated_tokens": result.generated_tokens,
                    "stop_reason": result.stop_reason,
                    "prefill_ms": round(result.prefill_s * 1000, 1),
                    "decode_ms": round(result.decode_s * 1000, 1),
                    "model": engine.name,
                    "path": _path_report(engine),
                    "root": None if workspace is None else str(workspace.root),  # None: no repository context
                    "root_reason": None if workspace is None else workspace.root_reason,
                    "monitors": result.monitor_spans,  # which monitor constrained which span
                    "monitor_ms": result.monitor_ms,
                    "candidates": [c.text for c in done.candidates],  # the first is "completion"
                }
            )
        )
    else:
        print(result.text)
        for i, other in enumerate(done.candidates[1:], start=1):
            print(f"--- candidate {i}")
            print(other.text)
    completer.close()
    return 0


def _path_report(engine) -> dict | None:
    """The CPU path the local model runs (None for an endpoint or a GPU)."""
    from repocomplete.model_runtime.cpu_path import engine_path

    return engine_path(engine)


def cmd_doctor(args: argparse.Namespace) -> int:
    """The CPU, the threads, the measured table of paths for the model's shapes, and the choice."""
    import torch

    from repocomplete.model_runtime import cpu, cpu_path
    from repocomplete.model_runtime.loading import model_shapes_of

    threads = cpu.configure_threads(args.threads)
    info = cpu.cpu_info()
    shapes, name = model_shapes_of(runtime_config(args))
    plan = cpu_path.tuned_plan(shapes, runtime_config(args).cache_dir, retune=args.retune)
    key = cpu_path.plan_key(shapes, info)
    report = {
        "cpu": info.to_json(),
        "threads": {"used": threads, "available_cores": cpu.available_cores(), "cgroup_cpus": cpu.cgroup_cpu_limit(),
                    "logical_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None},
        "model": name,
        "plan": plan.to_json(),
        "cache_file": str(cpu_path.plan_path(runtime_config(args).cache_dir, key)),
        "cuda": torch.cuda.is_available(),
    }
    runtime = runtime_config(args)
    # Long prompts: the attention policy, and the K/V dtype where it runs sparse (bf16 only where bf16 matmuls are
    # the plan's fast ones: engine.bf16_matmuls_fast).
    sparse_kv = "bfloat16" if plan.bf16_fast else str(plan.kv_torch_dtype).removeprefix("torch.")
    report["attention"] = {"mode": runtime.attention, "sparse_min_tokens": runtime.sparse_min_tokens,
                           "sparse_top_k": runtime.sparse_top_k, "sparse_kv_dtype": sparse_kv}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    t = report["threads"]
    print(f"cpu      {info.name}")
    print(f"isa      torch capability {info.capability}; flags {' '.join(info.flags) or '-'}"
          + "".join(f"; {k}={v}" for k, v in info.isa_env))
    print(f"threads  {t['used']} (physical cores available {t['available_cores']}, logical CPUs in the affinity mask "
          f"{t['logical_cpus']}, cgroup quota {t['cgroup_cpus'] or 'none'})")
    print(f"torch    {info.torch}{', CUDA available (a GPU runs bf16, no CPU plan)' if report['cuda'] else ''}")
    print(f"model    {name}")
    how = {"measured": f"measured now in {plan.seconds:.1f} s", "cache": "from the cache"}.get(plan.source, plan.source)
    print(f"plan     {plan.name} ({how}; {report['cache_file']})")
    a = report["attention"]
    if a["mode"] != "dense":
        start = "every position" if a["mode"] == "sparse" else f"positions from {a['sparse_min_tokens']} on"
        print(f"attention {a['mode']}: sparse for {start} (top {a['sparse_top_k']} context blocks per K/V head), "
              f"K/V in {a['sparse_kv_dtype']} there")
    else:
        print("attention dense")
    print()
    print(cpu_path.format_table(plan))
    print()
    print("* = chosen. --quantize and --dtype override the plan; `doctor --retune` measures again.")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from repocomplete.context_engine.engine import ContextEngine
    from repocomplete.context_engine.gate import check_workspace_root

    engine = ContextEngine(check_workspace_root(args.dir), context_config(args))
    stats = engine.build(progress=not args.json)
    engine.save_state()  # every change folded into the snapshot: the next start maps it as it is
    engine.close()
    out = {
        "root": str(engine.root),
        "files": stats.files,
        "bytes": stats.bytes,
        "definitions": stats.definitions,
        "parsed": stats.parsed,
        "skipped": len(stats.skipped),
        "seconds": round(stats.seconds, 3),
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{out['files']} files, {out['bytes']} bytes, {out['definitions']} definitions, "
            f"{out['parsed']} parsed, {out['skipped']} skipped, {out['seconds']} s"
        )
    return 0


def cmd_context(args: argparse.Namespace) -> int:
    from repocomplete.context_engine.document import offset_of, read_source

    text = read_source(args.file)
    offset = offset_of(text, args.line, args.col)
    engine = _context_engine(args.file, args)
    _, ctx = engine.prompt_parts(os.path.abspath(args.file), text, offset, budget=args.budget)
    engine.close()
    items = [
        {
            "path": r.path,
            "start_line": r.start_line,
            "end_line": r.end_line,
            "kind": r.kind,
            "score": round(r.score, 4),
            "why": r.why,
            "text": r.text,
        }
        for r in ctx.records
    ]
    if args.json:
        print(json.dumps(items, indent=2))
    else:
        for item in items:
            print(f"--- {item['path']}:{item['start_line']}-{item['end_line']} [{item['kind']} {item['score']}] {item['why']}")
            print(item["text"])
        # No model here: the tokens are the calibrated estimate (context_engine.packing.approx_tokens) of the records'
        # text, without the headers a model's prompt gives them; `complete --context repo` counts the model's.
        print(f"--- {len(items)} items, {ctx.packed.tokens}/{ctx.packed.budget} tokens (estimated), {ctx.timings_ms}")
        print(f"--- root {engine.root} ({engine.root_reason})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from repocomplete.context_engine.config import ContextConfig
    from repocomplete.context_engine.errors import InputError
    from repocomplete.lsp_server.config import Settings
    from repocomplete.lsp_server.main import serve

    tcp = None
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not port.isdigit() or not host:
            raise InputError(f"--tcp wants HOST:PORT, got {args.tcp!r}")
        tcp = (host, int(port))
    # An editor's configuration: jedi providers behind their deadline, the index following the disk.
    config = context_config(args).replace(slow_provider_deadline_ms=ContextConfig().slow_provider_deadline_ms,
                                          monitor_wait_ms=ContextConfig().monitor_wait_ms, watch=True)
    # The model's knobs (--max-tokens, --multiline, ...) and the budget are the configs'; Settings are the server's.
    return serve(runtime_config(args), config, Settings(context=args.context), tcp=tcp)


def cmd_bench_latency(args: argparse.Namespace) -> int:
    from repocomplete.bench.latency import BenchOptions, run_latency_bench
    from repocomplete.context_engine.config import ContextConfig
    from repocomplete.context_engine.errors import InputError

    if args.root and not (args.file and Path(args.root).resolve() in Path(args.file).resolve().parents):
        raise InputError("--root needs --file, a file inside that repository to type in")

    options = BenchOptions(
        file=args.file,
        keystrokes=args.keystrokes,
        context_tokens=args.context_tokens,
        max_new_tokens=args.max_tokens,
        uncached_every=args.uncached_every,
        peers=tuple(p for p in args.peers.split(",") if p),
        repo=args.root,
        iterative=args.iterative,
        # The editor's configuration: jedi providers behind their deadline.
        context=context_config(args).replace(slow_provider_deadline_ms=ContextConfig().slow_provider_deadline_ms),
    )
    report = run_latency_bench(runtime_config(args), options, progress=not args.json)
    print(json.dumps(report, indent=2) if args.json else report_text(report))
    return 0


def cmd_bench_lsp(args: argparse.Namespace) -> int:
    from repocomplete.bench.lsp import LspBenchOptions, format_report, run_lsp_bench

    options = LspBenchOptions(file=args.file, keystrokes=args.keystrokes, burst_keystrokes=args.burst_keystrokes,
                              burst_interval_ms=args.burst_interval_ms, context_tokens=args.context_tokens,
                              cache=not args.no_cache, peer=args.peer, peer_command=args.peer_command,
                              peer_python=args.peer_python)
    report = run_lsp_bench(runtime_config(args), options, progress=not args.json)
    if not args.requests:
        report.pop("requests")
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_bench_context(args: argparse.Namespace) -> int:
    from repocomplete.context_engine.errors import InputError
    from repocomplete.context_engine.config import ContextConfig
    from repocomplete.bench.context import format_report, run_context_bench

    if not (args.dir or args.repo) or (args.dir and args.repo):
        raise InputError("bench context wants one repository: DIR or --repo PATH")
    source = Path(args.dir or args.repo)
    if not source.is_dir():
        raise InputError(f"not a directory: {source}")
    # The editor's configuration: jedi providers behind their deadline (the one-shot commands wait instead).
    config = context_config(args).replace(slow_provider_deadline_ms=ContextConfig().slow_provider_deadline_ms)
    report = run_context_bench(source, config, edits=args.edits, queries=args.queries,
                               progress=not args.json, runs=args.runs)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_bench_quality(args: argparse.Namespace) -> int:
    from repocomplete.bench.quality import format_report, run_quality

    report = run_quality(Path(args.dir), runtime_config(args), n=args.n, seed=args.seed, budget=args.budget,
                         progress=not args.json)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_bench_monitors(args: argparse.Namespace) -> int:
    from repocomplete.bench.monitors import DEFAULT_SUITE, format_report, run_monitors_bench

    report = run_monitors_bench(runtime_config(args), Path(args.suite) if args.suite else DEFAULT_SUITE, n=args.n,
                                max_tokens=args.max_tokens or 24, progress=not args.json, keystrokes=args.keystrokes)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_bench_attention(args: argparse.Namespace) -> int:
    from repocomplete.bench.attention import AttentionOptions, format_report, run_attention_bench

    lengths = tuple(int(n) for n in args.kernel_lengths.split(",") if n)
    options = AttentionOptions(context_tokens=args.context_tokens, keystrokes=args.keystrokes, kernels=not args.model_only,
                               model=not args.kernels_only, kernel_lengths=lengths)
    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if not args.json else (lambda line: None)
    report = run_attention_bench(runtime_config(args), options, progress)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_bench_micro(args: argparse.Namespace) -> int:
    from repocomplete.bench.micro import main as micro

    return micro(args.extra + args.rest)


def cmd_eval_build_suite(args: argparse.Namespace) -> int:
    from repocomplete.eval.build_suite import build_suite

    summary = build_suite(args.repo, args.out, n=args.n, seed=args.seed, include_tests=args.include_tests, kind=args.kind,
                          progress=not args.json)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['tasks']} tasks from {summary['repository']} ({summary['files']} files) -> {summary['out']}: "
              f"tasks.jsonl, repos/{summary['repository']}/, SOURCE.md")
    return 0


def cmd_eval_score(args: argparse.Namespace) -> int:
    from repocomplete.eval.metrics import format_scores, score_files

    report = score_files(args.tasks, args.pred, repos=args.repos)
    print(json.dumps(report, indent=2) if args.json else format_scores(report))
    return 0


def _eval_context_config(args: argparse.Namespace):
    config = context_config(args)
    if getattr(args, "index_dir", None):
        config.index_dir = Path(args.index_dir)
    return config


def _eval_run_options(args: argparse.Namespace, **changes):
    """eval's own knobs; --budget, --max-tokens and --multiline reach the run through the configs."""
    from repocomplete.eval.options import RunOptions
    from repocomplete.eval.scale import parse_shard

    values = dict(context=getattr(args, "context", "repo"), iterative=args.iterative, batch_size=args.batch_size,
                  limit=args.limit, shard=parse_shard(args.shard) if getattr(args, "shard", None) else None,
                  via=getattr(args, "via", "engine"), backend=args.backend, workers=args.workers,
                  progress=not (args.json or args.quiet))
    return RunOptions(**{**values, **changes})


def cmd_eval_run(args: argparse.Namespace) -> int:
    from repocomplete.eval.runner import run
    from repocomplete.eval.suites import load_tasks

    tasks = load_tasks(args.tasks)
    summary = run(tasks, args.repos, args.out, runtime_config(args), _eval_context_config(args),
                  _eval_run_options(args), suite=args.tasks)
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        print(f"{summary['tasks']} tasks ({summary['skipped']} done before, {summary['ran']} run in "
              f"{summary['seconds']} s) -> {summary['out']}")
    return 0


def cmd_eval_merge(args: argparse.Namespace) -> int:
    from repocomplete.eval.scale import merge
    from repocomplete.eval.suites import load_tasks

    summary = merge(load_tasks(args.tasks), args.parts, args.out, limit=args.limit)
    print(json.dumps(summary) if args.json else f"{summary['predictions']} predictions -> {summary['out']}")
    return 0


def cmd_eval_report(args: argparse.Namespace) -> int:
    from repocomplete.eval.report import parse_configs, run_report
    from repocomplete.eval.suites import load_tasks

    tasks = load_tasks(args.tasks)
    summary = run_report(tasks, args.repos, args.out_dir, runtime_config(args), _eval_context_config(args),
                         _eval_run_options(args, context="repo"), parse_configs(args.configs, args.adapter),
                         suite=args.tasks)
    print(json.dumps(summary, indent=2) if args.json else summary["markdown"])
    return 0


def cmd_eval_explain(args: argparse.Namespace) -> int:
    from repocomplete.eval.explain import explain
    from repocomplete.eval.options import RunOptions
    from repocomplete.eval.suites import load_tasks

    tasks = load_tasks(args.tasks)
    report = explain(tasks, args.repos, args.pred, None, _eval_context_config(args),
                     RunOptions(context="repo", limit=args.limit, progress=not (args.json or args.quiet)),
                     baseline=args.baseline, depth=not args.no_depth, title=args.title,
                     runtime_overrides={"model": args.model, "fim_template": args.fim_template})
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "markdown"}, indent=2))
    else:
        print(report["markdown"], end="")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from repocomplete.finetune import FinetuneOptions, dumps, format_report, run_finetune

    layers = None if args.layers == 0 else args.layers
    options = FinetuneOptions(
        repo=args.repo, out=args.out, steps=args.steps, rank=args.rank, lr=args.lr, batch_tokens=args.batch_tokens,
        context=args.context, base_model=args.base_model, resume=args.resume, layers=layers, template=args.template,
        hold_out=tuple(args.hold_out), exclude=tuple(args.exclude), prefix_chars=args.prefix_chars,
        suffix_chars=args.suffix_chars, budget=args.budget, seed=args.seed, device=args.device,
        autocast=args.autocast, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
        threads=args.threads, index_dir=args.index_dir, exact_match_examples=args.exact_match_examples,
        init_adapter=args.init_adapter, infile_share=args.infile_share, train_sentinels=args.train_sentinels,
        max_prompt_tokens=args.max_prompt_tokens, kinds=tuple(args.kinds), command=["repocomplete", *args.argv],
    )
    report = run_finetune(options, progress=not args.json)
    print(dumps(report) if args.json else format_report(report))
    return 0


def report_text(report: dict) -> str:
    from repocomplete.bench.latency import format_report

    return format_report(report)


def _add_eval_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", required=True, help="the suite's tasks (CrossCodeEval or RepoBench JSONL)")
    p.add_argument("--repos", required=True, help="the folder holding the suite's repositories")
    p.add_argument("--limit", type=int, default=None, help="the first N tasks only")
    p.add_argument("--budget", type=int, default=None, help=f"context token budget (default {_budget_default()})")
    p.add_argument("--providers", default=None, help="comma list of imports,typed_holes,retrieval,repo_map,outline,neighbours")
    p.add_argument("--dense", action="store_true", help="add dense retrieval (all-MiniLM-L6-v2 + faiss)")
    p.add_argument(
        "--iterative", action="store_true",
        help="RepoCoder: complete once, retrieve again with the draft (typed holes answer for the receiver it "
             "reaches into), complete again")
    p.add_argument("--multiline", action="store_true", help="complete a block, not just the line")
    p.add_argument("--batch-size", type=int, default=16, help="tasks per batch (and per write)")
    p.add_argument("--index-dir", default=None, help="where the repositories' index caches go")
    p.add_argument("--backend", default="local", choices=["local", "ray"], help="ray: RAY_ADDRESS or a local Ray")
    p.add_argument("--workers", type=int, default=None, help="Ray actors (default: the cluster's CPUs)")
    p.add_argument("--json", action="store_true", help="a JSON summary, no progress bar")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_runtime_args(p)


def _add_session_args(p: argparse.ArgumentParser, keystrokes_help: str) -> None:
    """The typing session both latency benchmarks replay (bench/session.py)."""
    p.add_argument("--file", default=None, help="source file to type (default: the bundled one)")
    p.add_argument("--keystrokes", type=int, default=24, help=keystrokes_help)
    p.add_argument("--context-tokens", type=int, default=2048, help="tokens before the cursor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repocomplete", description="Repository-aware code completion.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("complete", help="complete the code at a position of a file")
    p.add_argument("file")
    p.add_argument("--line", type=int, required=True, help="1-based line")
    p.add_argument("--col", type=int, required=True, help="1-based column (characters)")
    p.add_argument("--context", default="infile", choices=_context_modes())
    p.add_argument("--multiline", action="store_true", help="complete a block, not just the line")
    p.add_argument("--json", action="store_true")
    _add_context_args(p)
    _add_runtime_args(p)
    p.set_defaults(func=cmd_complete)

    p = sub.add_parser("doctor", help="the CPU, its measured paths for the model and the one chosen")
    p.add_argument("--retune", action="store_true", help="measure again instead of reading the cached plan")
    p.add_argument("--json", action="store_true")
    _add_runtime_args(p)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("index", help="index a repository (cached; a restart re-reads only what changed)")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    _add_index_dir_arg(p)
    p.set_defaults(func=cmd_index, model_free=True)

    p = sub.add_parser("context", help="show the packed repository context for a position, with provenance")
    p.add_argument("file")
    p.add_argument("--line", type=int, required=True, help="1-based line")
    p.add_argument("--col", type=int, required=True, help="1-based column (characters)")
    p.add_argument("--json", action="store_true")
    _add_context_args(p)
    p.set_defaults(func=cmd_context, model_free=True)

    p = sub.add_parser("serve", help="the language server (LSP) for editors, over stdio or TCP")
    p.add_argument("--tcp", default=None, metavar="HOST:PORT", help="listen on TCP instead of stdio (port 0: any)")
    p.add_argument("--context", default="repo", choices=_context_modes(), help="default context mode")
    p.add_argument("--multiline", action="store_true", help="complete blocks by default, not just the line")
    _add_context_args(p)
    _add_runtime_args(p)
    p.set_defaults(func=cmd_serve)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    p = bench.add_parser("latency", help="replay a typing session: latency with and without the prefix cache")
    _add_session_args(p, "keystrokes")
    p.add_argument("--uncached-every", type=int, default=4, help="run the slow baselines on every Nth keystroke")
    p.add_argument("--peers", default="hf,llama-cpp", help="comma list: hf, llama-cpp (skipped if not installed)")
    p.add_argument("--json", action="store_true")
    _add_context_args(p)  # --root DIR: also type with DIR's repository context (--file inside it)
    _add_runtime_args(p)
    p.set_defaults(func=cmd_bench_latency, max_tokens=16)

    p = bench.add_parser("lsp", help="bench latency's typing session through the real server over stdio")
    _add_session_args(p, "paced keystrokes (each waits for its completion)")
    p.add_argument("--burst-keystrokes", type=int, default=12, help="then keystrokes faster than completions")
    p.add_argument("--burst-interval-ms", type=float, default=30.0)
    p.add_argument("--no-cache", action="store_true",
                   help="turn the server's completion cache off: every keystroke reaches the engine")
    p.add_argument("--peer", choices=("auto", "llama-server", "llama-cpp-python", "none"), default="auto",
                   help="replay the paced keystrokes against llama.cpp's server on the same GGUF (skipped with a "
                        "line when not installed)")
    p.add_argument("--peer-command", help="the llama-server binary (default: llama-server on PATH)")
    p.add_argument("--peer-python", help="a Python with llama-cpp-python[server] installed (default: this one)")
    p.add_argument("--requests", action="store_true", help="include every request's record in --json")
    p.add_argument("--json", action="store_true")
    _add_runtime_args(p)
    p.set_defaults(func=cmd_bench_lsp, max_tokens=16)

    p = bench.add_parser("context", help="context engine: cold/warm indexing, warm CLI and server start, updates, "
                                         "assembly")
    p.add_argument("dir", nargs="?", help="a repository (copied to a temporary folder first)")
    p.add_argument("--repo", default=None, metavar="PATH", help="the repository, if not given as DIR (e.g. a copy of "
                   "a large real one: transformers' ~3k files)")
    p.add_argument("--edits", type=int, default=30)
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--runs", type=int, default=3, help="fresh processes per command-line / server figure")
    p.add_argument("--json", action="store_true")
    _add_context_args(p)
    p.set_defaults(func=cmd_bench_context)

    p = bench.add_parser("quality", help="EM/edit similarity of in-file vs repository context, per provider")
    p.add_argument("dir", help="a repository to cut line-completion tasks from")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=int, default=None, help=f"context token budget (default {_budget_default()})")
    p.add_argument("--json", action="store_true")
    _add_runtime_args(p)
    p.set_defaults(func=cmd_bench_quality, max_tokens=48)

    p = bench.add_parser("monitors", help="latency monitor-guided decoding adds: ms per decode step, per completion")
    p.add_argument("--suite", default=None, help="a suite folder (tasks.jsonl, repos/; default eval/suites/rich_member)")
    p.add_argument("--n", type=int, default=12, help="tasks")
    p.add_argument("--keystrokes", type=int, default=4,
                   help="characters of each answer typed, one completion a keystroke (0: no typing passes)")
    p.add_argument("--json", action="store_true")
    _add_runtime_args(p)
    p.set_defaults(func=cmd_bench_monitors)

    p = bench.add_parser("attention", help="dense against sparse attention: the kernels at 8k-64k tokens, and the "
                                           "model's cold prefill, decode and keystrokes at 8k")
    p.add_argument("--context-tokens", type=int, default=6144, help="repository context in the model-level prompt")
    p.add_argument("--keystrokes", type=int, default=12, help="keystrokes of the typing replay")
    p.add_argument("--kernel-lengths", default="8192,32768,65536", help="comma list of kernel-level lengths")
    p.add_argument("--kernels-only", action="store_true")
    p.add_argument("--model-only", action="store_true")
    p.add_argument("--json", action="store_true")
    _add_runtime_args(p)
    p.set_defaults(func=cmd_bench_attention)

    p = bench.add_parser("micro", help="micro-benchmarks of single parts: parsing, index, analysis, retrieval",
                         add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="see `repocomplete bench micro --help`")
    p.set_defaults(func=cmd_bench_micro, passthrough=True)

    p = sub.add_parser("finetune", help="train a LoRA adapter (FIM) on a repository; load it with --adapter")
    p.add_argument("repo", metavar="REPO", help="the repository to cut training spans from")
    p.add_argument("--out", required=True, metavar="ADAPTER_DIR", help="the adapter, its checkpoints and report")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    p.add_argument("--batch-tokens", type=int, default=1024, help="tokens per step, examples packed (default 1024)")
    p.add_argument("--context", default="infile", choices=_context_modes(),
                   help="the prompts' context, built as completion builds it (default infile)")
    p.add_argument("--base-model", default="default", help="'default' (embedded SmolLM2-135M), a HF dir or a .gguf")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in ADAPTER_DIR")
    p.add_argument("--layers", type=int, default=8, help="adapt the top N layers only (0: all; default 8)")
    p.add_argument("--template", default=None, help="the FIM template (default: the model's, else smollm2-fim)")
    p.add_argument("--init-adapter", default=None, metavar="DIR",
                   help="start from this adapter's weights (e.g. the shipped one, tuned further on REPO)")
    p.add_argument("--train-sentinels", action="store_true",
                   help="train the embedding rows of the template's special tokens too (a model whose specials "
                        "never trained, like SmolLM2's: its end token gets a row of its own); without it, the rows an "
                        "--init-adapter brings stay frozen (backward then stops at the adapted layers)")
    p.add_argument("--hold-out", action="append", default=[], metavar="PATTERN",
                   help="validation files (fnmatch on the repository path; repeatable; default: a hashed 5%%)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="files left out (repeatable)")
    p.add_argument("--prefix-chars", type=int, default=1200, help="the training window before the cursor")
    p.add_argument("--suffix-chars", type=int, default=400, help="the training window after the cursor")
    p.add_argument("--budget", type=int, default=256, help="repository context tokens with --context repo")
    p.add_argument("--infile-share", type=float, default=0.0, metavar="F",
                   help="with --context repo, this share of the examples gets in-file context only (default 0)")
    p.add_argument("--max-prompt-tokens", type=int, default=1024,
                   help="prompts longer than this lose their start, as the engine cuts them (default 1024)")
    p.add_argument("--kind", dest="kinds", action="append", default=[], metavar="KIND",
                   help="cut only spans of this curriculum kind (repeatable; default all: "
                        "line_rest, line, lines, call, args, attr, block, random, empty)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda if present)")
    p.add_argument("--autocast", default="auto", choices=("auto", "bf16", "fp32"),
                   help="auto: bf16 on a GPU or a CPU with bf16 instructions, else fp32")
    p.add_argument("--eval-every", type=int, default=None,
                   help="held-out loss, exact match and edit similarity (the learning curve) and an adapter snapshot "
                        "every N steps")
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--exact-match-examples", type=int, default=32,
                   help="held-out spans decoded greedily at each point of the curve (exact match, edit similarity)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--json", action="store_true", help="the training report as JSON, no progress bar")
    _add_index_dir_arg(p)
    p.set_defaults(func=cmd_finetune)

    eval_sub = sub.add_parser("eval", help="evaluation suites: build, run, score, report, explain").add_subparsers(dest="eval", required=True)
    p = eval_sub.add_parser("build-suite", help="cut CrossCodeEval-style line-completion tasks from a repository")
    p.add_argument("repo", metavar="REPO_DIR", help="the repository to cut tasks from")
    p.add_argument("--out", required=True, help="an empty or new folder: tasks.jsonl, repos/<repo>/, SOURCE.md")
    p.add_argument("--n", type=int, default=40, help="most tasks (one per file at most)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--include-tests", action="store_true", help="cut tasks from test files too")
    p.add_argument("--kind", default="line", choices=["line", "member", "kwargs"],
                   help="line: lines using another file (CrossCodeEval); member: `expr.member` with a repository "
                        "member (cursor after the dot, or the line's start); kwargs: calls of repository functions "
                        "with keyword arguments (cursor at the first keyword)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_build_suite)

    p = eval_sub.add_parser("score", help="CrossCodeEval metrics (EM, ES, ID-EM, ID-F1) of a predictions file")
    p.add_argument("--tasks", required=True, help="the suite's tasks (CrossCodeEval or RepoBench JSONL)")
    p.add_argument("--pred", required=True, help='predictions, JSONL {"task_id": ..., "pred": ...}')
    p.add_argument("--repos", default=None,
                   help="the suite's repositories: adds the valid-identifier rate (static analysis of the predictions)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_score)

    p = eval_sub.add_parser("run", help="complete a suite's tasks into a CrossCodeEval predictions file (resumable)")
    _add_eval_run_args(p)
    p.add_argument("--out", required=True, help="predictions JSONL (OUT.partial until every task is done)")
    p.add_argument("--context", default="repo", choices=_context_modes())
    p.add_argument("--shard", default=None, help="i/n: run the i-th of n contiguous pieces (0 <= i < n)")
    p.add_argument("--via", default="engine", choices=["engine", "lsp"],
                   help="engine: the Completer in process; lsp: a `repocomplete serve` subprocess")
    p.set_defaults(func=cmd_eval_run, max_tokens=48)

    p = eval_sub.add_parser("merge", help="join finished shard prediction files into one, in suite order")
    p.add_argument("parts", nargs="+", help="the shards' predictions files")
    p.add_argument("--tasks", required=True)
    p.add_argument("--limit", type=int, default=None, help="the shards ran with --limit N")
    p.add_argument("--out", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_merge)

    p = eval_sub.add_parser("report", help="ablation: context modes and providers -> report.md, report.png")
    _add_eval_run_args(p)
    p.add_argument("--out-dir", required=True, help="pred-<config>.jsonl (resumable), report.md, report.png")
    p.add_argument("--configs", default=None,
                   help="comma list of none,infile,repo,<provider> (+adapter); default: all (and +adapter ones)")
    p.set_defaults(func=cmd_eval_report, max_tokens=48)

    p = eval_sub.add_parser("explain", help="why each task of a repository-context run missed: not retrieved, cut, "
                                            "model miss; recall and tokens per provider")
    p.add_argument("--tasks", required=True, help="the suite's tasks (CrossCodeEval or RepoBench JSONL)")
    p.add_argument("--repos", required=True, help="the folder holding the suite's repositories")
    p.add_argument("--pred", required=True, help="the predictions of an `eval run` with repository context")
    p.add_argument("--baseline", default=None, help="another run's predictions (in-file, say): its ES per class")
    p.add_argument("--limit", type=int, default=None, help="the first N tasks only")
    p.add_argument("--budget", type=int, default=None, help="the run's budget, if its meta file does not say")
    p.add_argument("--providers", default=None, help="the run's providers, if its meta file does not say")
    p.add_argument("--model", default=None, help="the model to count and bound the context with (default: the run's)")
    p.add_argument("--fim-template", default=None, help="force a FIM template (default: the run's)")
    p.add_argument("--index-dir", default=None, help="where the repositories' index caches go")
    p.add_argument("--no-depth", action="store_true", help="skip the deeper repo-map and retrieval look-ups")
    p.add_argument("--title", default=None, help="a heading for the tables")
    p.add_argument("--json", action="store_true", help="the summary and every task's explanation as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed (a training report records it)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The commands without a model need no transformers (importing it costs ~0.5 s): quieted if it comes later.
    _quiet_libraries(args.debug, now=not getattr(args, "model_free", False) or getattr(args, "dense", False))
    try:
        return args.func(args)
    except user_errors() as e:
        return _fail(e, args.debug)
    except Exception as e:
        if args.debug:
            raise
        print(f"repocomplete: internal error: {type(e).__name__}: {e} (run with --debug for details)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def user_errors() -> tuple[type[Exception], ...]:
    """Each layer's errors about the user's input (file, position, setting, model, endpoint): exit 2, one line."""
    from repocomplete.context_engine.errors import ContextConfigError, InputError
    from repocomplete.model_runtime.errors import ConfigError, ModelLoadError, RemoteError

    return (InputError, ContextConfigError, ConfigError, ModelLoadError, RemoteError)


def _fail(e: Exception, debug: bool) -> int:
    if debug:
        raise e
    print(f"repocomplete: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _quiet_libraries(debug: bool, now: bool = True) -> None:
    if debug:
        return
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # for a later import of transformers
    if not now and "transformers" not in sys.modules:
        return
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
