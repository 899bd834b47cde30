"""`repocomplete bench context DIR` (or `--repo PATH`): the context engine's speed on a real repository.

The repository is copied to a temporary folder (the incremental step edits a file) with a fresh index folder:
  * cold indexing: the first build, in MB/s of indexed source; then retrieval, the repo map and their snapshot;
  * warm start: the command line's `index` and `context` end to end (a new process each, as a user runs them: the
    interpreter's start, the imports, the warm index and snapshot, the providers), and a server's context engine
    in a process of its own (open + build on the warm index, without the model) with its memory once it has
    answered;
  * incremental update: one file edited on disk, then `file_changed`, repeated; p50/p95 ms (and the same with
    retrieval's overlay and the repo map's graph made again, what the next request would otherwise pay);
  * context assembly: `context()` at cursor positions sampled in the repository's files; p50/p95 ms in all and
    per provider.
Each figure is printed beside its target (the 2-core machine of the README), with the CPU. The command-line
figures are the best and the median of `--runs` runs: on a shared machine a single run says little.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from repocomplete.bench.stats import percentiles
from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.engine import ContextEngine

MODEL_FREE = "retrieval,repo_map,neighbours"  # the providers without jedi (what the snapshot serves)
TARGETS = {  # seconds, MB, ms: on the 2-core machine, for a repository of ~3k files (a copy of transformers)
    "cli_index_s": 2.0,
    "cli_context_s": 1.5,
    "server_ready_s": 3.0,
    "server_rss_mb": 600.0,
    "incremental_p95_ms": 50.0,
}


def _cursors(engine: ContextEngine, n: int, seed: int) -> list[tuple[str, str, int, int]]:
    """(path, text, line, col) at the end of code lines inside Python files, sampled reproducibly."""
    rng = random.Random(seed)
    files = [p for p in engine.index.files() if p.endswith(".py")]
    out = []
    while files and len(out) < n:
        path = rng.choice(files)
        text = engine.index.text(path) or ""
        lines = text.split("\n")
        candidates = [i for i, l in enumerate(lines) if l.strip() and not l.strip().startswith(("#", '"', "'"))]
        if not candidates:
            continue
        i = rng.choice(candidates)
        out.append((path, text, i + 1, len(lines[i]) + 1))
    return out


def _walk_in_files(engine: ContextEngine, files: int, per_file: int, seed: int) -> list[tuple[str, str, int, int]]:
    """Editing as a person does: a few files, and in each the cursor moving down through consecutive code lines."""
    rng = random.Random(seed + 1)
    paths = sorted(p for p in engine.index.files() if p.endswith(".py"))
    out = []
    for path in rng.sample(paths, min(files, len(paths))):
        text = engine.index.text(path) or ""
        lines = text.split("\n")
        code = [i for i, l in enumerate(lines) if l.strip() and not l.strip().startswith(("#", '"', "'"))]
        if len(code) < per_file:
            continue
        start = rng.randrange(0, len(code) - per_file + 1)
        out += [(path, text, i + 1, len(lines[i]) + 1) for i in code[start : start + per_file]]
    return out


def _edit_file(engine: ContextEngine, root: Path, rel: str, edits: int) -> tuple[list[float], list[float]]:
    """ms per `file_changed` after appending a function to `rel`, and with retrieval's overlay and the repo map's
    graph made too (what the next request would otherwise pay); the file is put back afterwards."""
    target = root / rel
    original = target.read_text(encoding="utf-8")
    update_ms, visible_ms = [], []
    for i in range(edits):
        target.write_text(original + f"\n\ndef _bench_edit_{i}(x):\n    return x + {i}\n", encoding="utf-8")
        t = time.perf_counter()
        engine.file_changed(rel)
        update_ms.append((time.perf_counter() - t) * 1000)
        engine.retriever.build()  # the overlay the next query would make
        engine._build_graph()  # what the worker thread would make
        visible_ms.append((time.perf_counter() - t) * 1000)
    target.write_text(original, encoding="utf-8")
    engine.file_changed(rel)
    return update_ms, visible_ms


TYPED = "result = self.compute_total(values, scale=2)"


def _type_in_file(engine: ContextEngine, root: Path, rel: str, edits: int) -> tuple[float, list[float], list[float]]:
    """As an editor types in `rel`: the open (`set_buffer` of the whole text, ms), then `edits` changes that type a
    statement into a new line in the middle of the file (`set_buffer` with the edited line, as the server's
    didChange sends it), ms each, and the same with retrieval's overlay and the repo map's graph made again."""
    path = str(root / rel)
    lines = (root / rel).read_text(encoding="utf-8").split("\n")
    at = len(lines) // 2
    indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
    t = time.perf_counter()
    engine.set_buffer(path, "\n".join(lines))
    open_ms = (time.perf_counter() - t) * 1000
    update_ms, visible_ms = [], []
    for i in range(edits):
        typed = TYPED[: max(1, round(len(TYPED) * (i + 1) / edits))]
        text = "\n".join([*lines[:at], indent + typed, *lines[at:]])
        t = time.perf_counter()
        engine.set_buffer(path, text, edited_line=at + 1)
        update_ms.append((time.perf_counter() - t) * 1000)
        engine.retriever.build()
        engine._build_graph()
        visible_ms.append((time.perf_counter() - t) * 1000)
    engine.clear_buffer(path)
    return open_ms, update_ms, visible_ms


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def _timed_contexts(engine: ContextEngine, cursors) -> tuple[list[float], int, dict[str, list[float]]]:
    total, incomplete, per_provider = [], 0, {}
    for path, text, line, col in cursors:
        ctx = engine.context(path, text, line, col)
        total.append(ctx.timings_ms["total"])
        incomplete += not ctx.complete
        for kind, ms in ctx.timings_ms.items():
            if kind != "total":
                per_provider.setdefault(kind, []).append(ms)
    return total, incomplete, per_provider


# -- fresh processes -------------------------------------------------------------------------------------------


def _child_env() -> tuple[dict, str]:
    """(environment, working folder) for a fresh process that imports this very repocomplete: `python -m` puts
    the working folder first on the path, so it must not be a checkout of another one."""
    import repocomplete

    env = dict(os.environ)
    here = str(Path(repocomplete.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env, tempfile.gettempdir()


def _cli(args: list[str], runs: int) -> dict:
    """`repocomplete ARGS` in a new process, `runs` times: wall seconds (best, median, each)."""
    times = []
    env, cwd = _child_env()
    for _ in range(runs):
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "repocomplete", *args], check=False, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
        times.append(time.perf_counter() - t)
        if done.returncode != 0:
            raise RuntimeError(f"repocomplete {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return {"best": round(min(times), 3), "median": round(statistics.median(times), 3),
            "runs": [round(x, 3) for x in times]}


def _server_probe(root: Path, index_dir: Path, queries: int, seed: int, runs: int) -> dict:
    """A server's context engine in a fresh process, `runs` times: open + build on the warm index, then context
    requests at sampled cursors (the editor's configuration); its memory once they are answered."""
    results = []
    for _ in range(runs):
        probe = "import time; t0 = time.perf_counter(); from repocomplete.bench.context import probe_main; probe_main(t0)"
        done = subprocess.run([sys.executable, "-c", probe, str(root), str(index_dir), str(queries), str(seed)],
                              capture_output=True, text=True, check=False, env=_child_env()[0],
                              cwd=_child_env()[1])
        if done.returncode != 0:
            raise RuntimeError(f"server probe failed ({done.returncode}): {done.stderr[-2000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    best = min(results, key=lambda r: r["ready_s"])
    return {
        "import_s": round(statistics.median(r["import_s"] for r in results), 3),
        "ready_s": {"best": best["ready_s"], "median": round(statistics.median(r["ready_s"] for r in results), 3),
                    "runs": [r["ready_s"] for r in results]},
        "rss_mb_ready": round(statistics.median(r["rss_mb_ready"] for r in results), 1),
        "rss_mb": round(statistics.median(r["rss_mb"] for r in results), 1),
        "jedi_rss_mb": round(statistics.median(r["jedi_rss_mb"] for r in results), 1),
        "context_ms": best["context_ms"],
        "reparsed_files": best["reparsed_files"],
    }


def _rss_mb(pid: int | str = "self") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def probe_main(t0: float) -> None:
    """In a fresh process (see `_server_probe`), started at `t0` (before its imports): prints one JSON line."""
    root, index_dir, queries, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    import_s = time.perf_counter() - t0
    t = time.perf_counter()
    engine = ContextEngine(root, ContextConfig(index_dir=index_dir))  # the editor's (jedi behind its deadline)
    stats = engine.build()
    ready_s = time.perf_counter() - t
    rss_ready = _rss_mb()
    times, _, _ = _timed_contexts(engine, _cursors(engine, queries, seed))
    engine.wait_background(timeout=600)
    pid = getattr(engine._slow_pool, "pid", None)
    out = {"import_s": round(import_s, 3), "ready_s": round(ready_s, 3), "rss_mb_ready": round(rss_ready, 1),
           "rss_mb": round(_rss_mb(), 1), "jedi_rss_mb": round(_rss_mb(pid) if pid else 0.0, 1),
           "context_ms": percentiles(times), "reparsed_files": stats.parsed}
    engine.close()
    print(json.dumps(out))


# -- the benchmark ---------------------------------------------------------------------------------------------


def run_context_bench(source: Path, config: ContextConfig | None = None, edits: int = 30, queries: int = 50,
                      seed: int = 0, progress: bool = True, runs: int = 3) -> dict:
    config = config or ContextConfig()
    work = Path(tempfile.mkdtemp(prefix="rc-bench-context-"))
    try:
        root = work / "repo"
        shutil.copytree(source, root, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        index_dir = work / "index"
        config = config.replace(index_dir=index_dir)

        t = time.perf_counter()
        cold_engine = ContextEngine(root, config)
        cold = cold_engine.index.build(progress=progress)
        cold_index_s = time.perf_counter() - t
        t = time.perf_counter()
        cold_engine.build()  # retrieval and the repo map from every file, and their snapshot
        cold_state_s = time.perf_counter() - t
        cold_engine.close()
        snapshot_mb = cold_engine.state_path.stat().st_size / 1e6 if cold_engine.state_path.exists() else 0.0

        t = time.perf_counter()
        engine = ContextEngine(root, config)
        warm = engine.index.build()
        warm_index_s = time.perf_counter() - t
        py_files = sorted(p for p in engine.index.files() if p.endswith(".py")) or engine.index.files()
        engine.close()

        # The command line and a server's engine, each in a process of its own, on the warm index.
        probe_file = root / py_files[len(py_files) // 3]
        probe_line = max(1, min(40, len(probe_file.read_text(encoding="utf-8").split("\n"))))
        where = ["--root", str(root), "--index-dir", str(index_dir)]
        cli_index = _cli(["index", str(root), "--json", "--index-dir", str(index_dir)], runs)
        ctx_args = ["context", str(probe_file), "--line", str(probe_line), "--col", "1", "--json", *where]
        cli_context = _cli([*ctx_args, "--providers", MODEL_FREE], runs)
        cli_context_all = _cli(ctx_args, runs)
        server = _server_probe(root, index_dir, min(queries, 20), seed, runs)

        from repocomplete.lsp_server.worker import settle_heap  # (not at the top: the server probe imports us)

        engine = ContextEngine(root, config)
        engine.build()
        settle_heap()  # as the server does once a workspace is open
        # The file of median size (a typical edit), then the largest (the worst one): first typed in as an editor
        # does (its open is the process's first sight of it), then changed on disk.
        by_size = sorted(py_files, key=lambda p: ((root / p).stat().st_size, p))
        median_file, largest_file = by_size[len(by_size) // 2], by_size[-1]
        update_ms, visible_ms = _edit_file(engine, root, median_file, edits)
        typing_open_ms, typing_ms, typing_visible_ms = _type_in_file(engine, root, largest_file, edits)
        largest_ms, largest_visible_ms = _edit_file(engine, root, largest_file, max(3, edits // 3))

        # As the editor asks (jedi providers behind their deadline): first requests in random files (jedi cold
        # there, the worst case), then a cursor moving down through a few files; then waiting for every provider.
        cursors = _cursors(engine, queries, seed)
        context_ms, incomplete, per_provider = _timed_contexts(engine, cursors)
        engine.wait_background(timeout=600)  # let the late jedi answers finish
        editing = _walk_in_files(engine, files=5, per_file=max(1, queries // 5), seed=seed)
        editing_ms, editing_incomplete, _ = _timed_contexts(engine, editing)
        engine.wait_background(timeout=600)  # let the late jedi answers finish
        waited_ms = [engine.context(path, text, line, col, wait=True).timings_ms["total"]
                     for path, text, line, col in cursors]
        engine.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mb = cold.bytes / 1e6
    report = {
        "source": str(source),
        "cpu": cpu_report(),
        "load_average": _load_average(),
        "files": cold.files,
        "megabytes": round(mb, 2),
        "definitions": cold.definitions,
        "skipped": len(cold.skipped),
        "cold_index_s": round(cold_index_s, 2),
        "cold_mb_per_s": round(mb / cold_index_s, 2),
        "cold_state_s": round(cold_state_s, 2),
        "snapshot_mb": round(snapshot_mb, 1),
        "warm_index_s": round(warm_index_s, 3),
        "warm_reparsed_files": warm.parsed,
        "cold_over_warm": round(cold_index_s / warm_index_s, 1),
        "cli_index_s": cli_index,
        "cli_context_s": cli_context,
        "cli_context_all_providers_s": cli_context_all,
        "server": server,
        "incremental_file": {"path": median_file, "lines": _lines(source / median_file)},
        "incremental_update_ms": {"n": edits, **percentiles(update_ms)},
        "incremental_visible_ms": {"n": edits, **percentiles(visible_ms)},
        "incremental_largest_file": {"path": largest_file, "lines": _lines(source / largest_file)},
        "incremental_largest_ms": {"n": len(largest_ms), **percentiles(largest_ms)},
        "incremental_largest_visible_ms": {"n": len(largest_ms), **percentiles(largest_visible_ms)},
        "typing_largest_open_ms": round(typing_open_ms, 2),
        "typing_largest_ms": {"n": len(typing_ms), **percentiles(typing_ms)},
        "typing_largest_visible_ms": {"n": len(typing_ms), **percentiles(typing_visible_ms)},
        "context_ms": {"n": len(context_ms), **percentiles(context_ms), "deadline_ms": config.slow_provider_deadline_ms,
                       "jedi_missed_deadline": incomplete},
        "context_ms_per_provider_p95": {k: percentiles(v, qs=(95,))["p95"] for k, v in per_provider.items()},
        "context_ms_editing": {"n": len(editing_ms), **percentiles(editing_ms),
                               "jedi_missed_deadline": editing_incomplete},
        "context_ms_waiting_for_all": percentiles(waited_ms),
    }
    report["targets"] = {
        "cold >= 2 MB/s": report["cold_mb_per_s"] >= 2,
        "warm restart >= 10x faster than cold": report["cold_over_warm"] >= 10,
        f"`index` warm < {TARGETS['cli_index_s']} s": cli_index["best"] < TARGETS["cli_index_s"],
        f"`context` ({MODEL_FREE}) < {TARGETS['cli_context_s']} s": cli_context["best"] < TARGETS["cli_context_s"],
        f"`context` (all providers) < {TARGETS['cli_context_s']} s": cli_context_all["best"] < TARGETS["cli_context_s"],
        f"server ready < {TARGETS['server_ready_s']} s": server["ready_s"]["best"] < TARGETS["server_ready_s"],
        f"server memory < {TARGETS['server_rss_mb']:.0f} MB": server["rss_mb"] < TARGETS["server_rss_mb"],
        f"incremental update p95 < {TARGETS['incremental_p95_ms']:.0f} ms":
            report["incremental_update_ms"]["p95"] < TARGETS["incremental_p95_ms"],
        f"incremental update p95 < {TARGETS['incremental_p95_ms']:.0f} ms (typing in the largest file)":
            report["typing_largest_ms"]["p95"] < TARGETS["incremental_p95_ms"],
        "context assembly p95 < 30 ms (first request in a file)": report["context_ms"]["p95"] < 30,
        "context assembly p95 < 30 ms (moving within files)": report["context_ms_editing"]["p95"] < 30,
    }
    return report


def cpu_report() -> dict:
    """The CPU the figures were measured on (name, torch's capability, threads), as the other benchmarks print it."""
    from repocomplete.model_runtime.cpu import cpu_info

    info = cpu_info()
    return {"name": info.name, "capability": info.capability, "threads": info.threads, "cores": os.cpu_count()}


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _times(t: dict) -> str:
    return f"best {t['best']} s, median {t['median']} s (runs {t['runs']})"


def format_report(r: dict) -> str:
    cpu, server = r["cpu"], r["server"]
    lines = [
        f"{r['source']}: {r['files']} files, {r['megabytes']} MB, {r['definitions']} definitions, {r['skipped']} skipped",
        (f"cpu {cpu['name']} ({cpu['capability']}), {cpu['threads']} threads, {cpu['cores']} cores; "
        f"load average {r['load_average']} (a shared machine: figures are noisy)"),
        (f"cold index      {r['cold_index_s']} s  = {r['cold_mb_per_s']} MB/s   (then retrieval + repo map + snapshot "
        f"{r['cold_state_s']} s; snapshot {r['snapshot_mb']} MB)"),
        (f"warm index      {r['warm_index_s']} s  ({r['warm_reparsed_files']} files re-read) = {r['cold_over_warm']}x "
        "faster"),
        f"`index` (CLI, warm, new process)             {_times(r['cli_index_s'])}   target < {TARGETS['cli_index_s']} s",
        f"`context` (CLI, {MODEL_FREE})  {_times(r['cli_context_s'])}   target < {TARGETS['cli_context_s']} s",
        f"`context` (CLI, all providers, jedi waited for) {_times(r['cli_context_all_providers_s'])}",
        (f"server engine ready (open + build, warm)     best {server['ready_s']['best']} s, median "
        f"{server['ready_s']['median']} s (+ imports {server['import_s']} s)   target < {TARGETS['server_ready_s']} s"),
        (f"server memory (context side)                 {server['rss_mb']} MB RSS after its requests (context p50 "
        f"{server['context_ms'].get('p50')} ms; {server['rss_mb_ready']} MB when ready; the jedi worker process "
        f"{server['jedi_rss_mb']} MB besides)   target < {TARGETS['server_rss_mb']:.0f} MB"),
        (f"incremental     p50 {r['incremental_update_ms']['p50']} ms  p95 {r['incremental_update_ms']['p95']} ms   "
        f"target p95 < {TARGETS['incremental_p95_ms']:.0f} ms  (a file of median size, "
        f"{r['incremental_file']['lines']} lines; with retrieval's overlay and the graph made again: "
        f"p50 {r['incremental_visible_ms']['p50']} ms  p95 {r['incremental_visible_ms']['p95']} ms)"),
        (f"incremental, the largest file changed on disk ({r['incremental_largest_file']['path']}, "
        f"{r['incremental_largest_file']['lines']} lines; after the typing below): "
        f"p50 {r['incremental_largest_ms']['p50']} ms  "
        f"p95 {r['incremental_largest_ms']['p95']} ms  (+ overlay and graph: p50 "
        f"{r['incremental_largest_visible_ms']['p50']} ms  p95 {r['incremental_largest_visible_ms']['p95']} ms)"),
        (f"typing in the largest file as an editor does: the open {r['typing_largest_open_ms']} ms (the process's first "
        f"sight of the file), then per edit "
        f"p50 {r['typing_largest_ms']['p50']} ms  p95 {r['typing_largest_ms']['p95']} ms  (+ overlay and graph: p50 "
        f"{r['typing_largest_visible_ms']['p50']} ms  p95 {r['typing_largest_visible_ms']['p95']} ms)"),
        (f"context, first request in a file: p50 {r['context_ms']['p50']} ms  p95 {r['context_ms']['p95']} ms  "
        f"(jedi deadline {r['context_ms']['deadline_ms']} ms, missed in {r['context_ms']['jedi_missed_deadline']}"
        f"/{r['context_ms']['n']}; p95 per provider: {r['context_ms_per_provider_p95']})"),
        (f"context, moving within files: p50 {r['context_ms_editing']['p50']} ms  p95 {r['context_ms_editing']['p95']} ms"
        f"  (jedi missed the deadline in {r['context_ms_editing']['jedi_missed_deadline']}/{r['context_ms_editing']['n']})"),
        (f"context, waiting for every provider (jedi warm): p50 {r['context_ms_waiting_for_all']['p50']} ms  "
        f"p95 {r['context_ms_waiting_for_all']['p95']} ms"),
    ]
    lines += [f"target {k}: {'met' if v else 'NOT met'}" for k, v in r["targets"].items()]
    return "\n".join(lines)
