"""Micro-benchmarks of single context-engine parts, each timed on its own in this process.

    repocomplete bench micro parsing DIR [--repeat N]      tree-sitter parsing of every supported file, MB/s
    repocomplete bench micro index DIR [--edits N]         cold/warm index builds and incremental updates
    repocomplete bench micro analysis [--calls N]          the jedi providers on a small bundled package
    repocomplete bench micro facts SUITE [--versions N]    the monitors' questions at each task's cursor, as the
                                                           worker answers them: jedi's state shared and fresh
    repocomplete bench micro retrieval DIR [--queries N] [--dense-sample N] [--method bm25|jaccard]
    repocomplete bench micro decode [--context-tokens N] [--steps N]   one decode step: weights, attention, the rest
    repocomplete bench micro tokens DIR [--queries N] [--budget N]  counting budgets with SmolLM2's tokenizer
    repocomplete bench micro train [--tokens N] [--steps N] [--threads N] [--adapter DIR]   a fine-tuning step of
                                                           the embedded model: fresh LoRA, and continuing an adapter
                                                           with its token rows frozen and trained

DIR is never written: `index` works on a copy. The figures are of the machine they ran on, and a shared machine's
speed drifts, so say which one when you quote them.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from repocomplete.bench.stats import percentile


def _compile_grammars() -> None:
    """Compile every tree-sitter grammar outside the timing (once per process anyway)."""
    from repocomplete.context_engine.parsing import EXTENSIONS, load_grammar

    for language, grammar in set(EXTENSIONS.values()):
        load_grammar(grammar, language)


def _p50_p95(ms: list[float], digits: int = 1) -> str:
    return f"p50 {percentile(ms, 50):.{digits}f} ms, p95 {percentile(ms, 95):.{digits}f} ms"


# -- parsing -------------------------------------------------------------------------------------------------------


def bench_parsing(directory: Path, repeat: int) -> None:
    from repocomplete.context_engine.parsing import EXTENSIONS, load_grammar, parse_source, parser_for

    files = []
    for file in sorted(directory.rglob("*")):
        if file.suffix.lower() in EXTENSIONS and file.is_file():
            files.append((str(file.relative_to(directory)), file.read_bytes().decode("utf-8", "replace")))
    size = sum(len(text.encode("utf-8", "replace")) for _, text in files) / 1e6
    _compile_grammars()
    best = best_parse = float("inf")
    for _ in range(repeat):  # the best of a few runs: a shared machine's speed drifts
        start = time.perf_counter()
        counts = [0, 0, 0]
        for path, text in files:
            symbols = parse_source(path, text)
            counts[0] += len(symbols.definitions)
            counts[1] += len(symbols.imports)
            counts[2] += len(symbols.identifiers)
        best = min(best, time.perf_counter() - start)
        start = time.perf_counter()
        for path, text in files:
            entry = EXTENSIONS[Path(path).suffix.lower()]
            parser_for(load_grammar(entry[1], entry[0])).parse(text.encode("utf-8", "replace"))
        best_parse = min(best_parse, time.perf_counter() - start)
    print(f"{len(files)} files, {size:.1f} MB: {counts[0]} definitions, {counts[1]} imports, {counts[2]} identifiers")
    print(f"parse_source: {best:.2f} s = {size / best:.2f} MB/s "
          f"(tree-sitter's parse alone: {size / best_parse:.2f} MB/s; best of {repeat})")


# -- index ---------------------------------------------------------------------------------------------------------


def bench_index(directory: Path, edits: int) -> None:
    from repocomplete.context_engine.config import ContextConfig
    from repocomplete.context_engine.index import RepoIndex

    work = Path(tempfile.mkdtemp(prefix="rc-index-bench-"))
    try:
        root = work / "repo"
        shutil.copytree(directory, root, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        config = ContextConfig(index_dir=work / "index")
        _compile_grammars()

        t = time.perf_counter()
        index = RepoIndex(root, config)
        cold = index.build()
        cold_s = time.perf_counter() - t
        index.close()

        t = time.perf_counter()
        index = RepoIndex(root, config)
        warm = index.build()
        warm_s = time.perf_counter() - t

        py = sorted(p for p in index.files() if p.endswith(".py"))
        # the file `repocomplete bench context` edits (the middle one by name), and the largest one
        targets = [py[len(py) // 2], max(py, key=lambda p: (root / p).stat().st_size)]
        updates = []
        for rel in targets:
            target = root / rel
            original = target.read_text(encoding="utf-8")
            times = []
            for i in range(edits):
                target.write_text(original + f"\n\ndef _bench_edit_{i}(x):\n    return x + {i}\n", encoding="utf-8")
                t = time.perf_counter()
                index.update_file(target)
                times.append((time.perf_counter() - t) * 1000)
            assert index.definitions(name=f"_bench_edit_{edits - 1}", path=rel), "the edit did not reach the index"
            target.write_text(original, encoding="utf-8")
            index.update_file(target)
            updates.append((rel, target.stat().st_size, times))
        index.close()
        mb = cold.bytes / 1e6
        print(f"{directory}: {cold.files} files, {mb:.1f} MB, {cold.definitions} definitions, "
              f"{len(cold.skipped)} skipped")
        print(f"cold build: {cold_s:.2f} s = {mb / cold_s:.2f} MB/s ({cold.parsed} parsed)")
        print(f"warm restart: {warm_s:.3f} s ({warm.parsed} parsed), cold/warm = {cold_s / warm_s:.0f}x")
        for rel, size, times in updates:
            print(f"update_file on {rel} ({size} bytes), {edits} edits: {_p50_p95(times)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- the jedi providers --------------------------------------------------------------------------------------------

# A small package: a few classes, a relative import, a star import and a half-typed call at the end.
_DEMO = {
    "shop/__init__.py": '"""The shop."""\nfrom .models import Inventory, Item, Store\n',
    "shop/models.py": '''"""Items and where they are kept."""


class Store:
    """A physical store."""

    def __init__(self, name: str, city: str = "Berlin") -> None:
        self.name = name
        self.city = city


class Item:
    """A thing for sale."""

    price: float = 0.0

    def __init__(self, sku: str, price: float) -> None:
        self.sku = sku
        self.price = price

    def total(self, count: int) -> float:
        """Price of `count` units."""
        return self.price * count


class Inventory:
    """Counts of items in one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.counts: dict[str, int] = {}

    def restock(self, item: Item, count: int = 1) -> None:
        """Add `count` units of `item`."""
        self.counts[item.sku] = self.counts.get(item.sku, 0) + count
''',
    "shop/util/__init__.py": "",
    "shop/util/helpers.py": '''from ..models import Item


def fmt_price(item: Item, currency: str = "EUR") -> str:
    """Format the price of an item."""
    return f"{item.price} {currency}"
''',
    "app.py": '''import os
import shop.models as m
from shop import Item, Inventory
from shop.util.helpers import *


class Shop:
    def __init__(self, inv: Inventory) -> None:
        self.inv = inv

    def sell(self, item: Item, n: int = 1) -> str:
        total = item.total(n)
        label = fmt_price(item)
        self.inv.restock(item, 
''',
}


def bench_analysis(calls: int) -> None:
    """p50/p95 latency of both jedi providers on a small package, after one warm-up call each."""
    from repocomplete.context_engine.python_imports import import_context
    from repocomplete.context_engine.typed_holes import typed_hole_context

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rel, content in _DEMO.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(content)
        text = _DEMO["app.py"]
        lines = text.split("\n")
        last = len(lines) - 1  # the unclosed `self.inv.restock(item, ` line
        after_dot = text.replace("restock(item, ", "")
        body_lines = [(i, len(lines[i - 1]) + 1) for i in range(1, last + 1) if lines[i - 1].startswith(" " * 8)]
        cases = {
            "import_context": lambda i: import_context(root, root / "app.py", text),
            "typed_hole_context, unclosed call argument": lambda i: typed_hole_context(
                root, root / "app.py", text, last, len(lines[last - 1]) + 1),
            "typed_hole_context, after `self.inv.`": lambda i: typed_hole_context(
                root, root / "app.py", after_dot, last, len("        self.inv.") + 1),
            "typed_hole_context, end of each method-body line in turn": lambda i: typed_hole_context(
                root, root / "app.py", text, *body_lines[i % len(body_lines)]),
        }
        for label, call in cases.items():
            t = time.perf_counter()
            records = call(0)
            cold = (time.perf_counter() - t) * 1000
            times = []
            for i in range(calls):
                t = time.perf_counter()
                call(i)
                times.append((time.perf_counter() - t) * 1000)
            print(f"{label}: {len(records)} records; first call {cold:.1f} ms; {_p50_p95(times)} over {calls} calls")


# -- facts (the monitors' analysis) ---------------------------------------------------------------------------------


def bench_facts(suite: Path, versions: int) -> None:
    """The questions the monitors ask at each task's cursor (`deref` after a dot, else `scope`; `args` inside a
    call), as the jedi worker answers them (`facts_provider`, behind the workspace's gate), each on `versions`
    versions of the buffer (a comment line added on top: new text, the same file); the first version is not timed.
    Twice: with the worker's inference state shared across a file's questions, then fresh for each (jedi's own
    way), with how many answers differ."""
    from repocomplete.context_engine import jedi_support
    from repocomplete.context_engine.facts import facts_provider
    from repocomplete.eval.suites import load_tasks, repo_dir

    tasks = [t for t in load_tasks(Path(suite) / "tasks.jsonl") if t.language == "python"]
    answers: dict[str, list] = {}
    reuses = jedi_support.STATE_REUSES
    try:
        for label, limit in (("shared", reuses), ("fresh", 0)):
            jedi_support.STATE_REUSES = limit
            times, got = [], []
            for task in tasks:
                root = repo_dir(Path(suite) / "repos", task)
                text, offset = task.buffer()
                at = offset
                while at > 0 and (text[at - 1].isalnum() or text[at - 1] == "_"):
                    at -= 1
                kinds = ["deref"] if text[:at].endswith(".") else ["scope"]
                if text[:at].rstrip().endswith(("(", ",")):
                    kinds.append("args")
                for kind in kinds:
                    for v in range(versions):
                        head = f"# version {v}\n"
                        t = time.perf_counter()
                        facts = facts_provider(kind, str(root), task.file, head + text[:at] + text[offset:],
                                               len(head) + at)
                        if v:
                            times.append((time.perf_counter() - t) * 1000)
                        got.append((facts.names, facts.signatures))
            answers[label] = got
            mean = sum(times) / len(times) if times else 0.0
            print(f"{label} inference state: {len(got) // versions} questions on {len(tasks)} tasks, {versions} "
                  f"versions each; mean {mean:.1f} ms, {_p50_p95(times)} over the {len(times)} later versions")
    finally:
        jedi_support.STATE_REUSES = reuses
    differ = sum(a != b for a, b in zip(answers["shared"], answers["fresh"]))
    print(f"answers that differ, shared against fresh: {differ} of {len(answers['fresh'])}")


# -- retrieval -----------------------------------------------------------------------------------------------------


def bench_retrieval(root: Path, n_queries: int, dense_sample: int, method: str) -> None:
    from repocomplete.context_engine.config import ContextConfig
    from repocomplete.context_engine.retrieval import Retriever, query_text_for
    from repocomplete.context_engine.sparse import windows

    config = ContextConfig()
    files = {}
    for p in sorted(root.rglob("*.py")):
        try:
            files[p.relative_to(root).as_posix()] = p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
    n_lines = sum(t.count("\n") + 1 for t in files.values())
    retriever = Retriever(config)
    t = time.perf_counter()
    for path, text in files.items():
        retriever.add_document(path, text)
    t_add = time.perf_counter() - t
    t = time.perf_counter()
    retriever.build()
    t_build = time.perf_counter() - t
    sizes = retriever.sizes()
    print(f"{len(files)} files, {n_lines} lines, {sizes['windows']} windows ({sizes['distinct']} distinct), "
          f"vocabulary {sizes['vocabulary']}")
    print(f"add_document (tokenise) {t_add * 1000:.0f} ms, index build {t_build * 1000:.1f} ms")

    rng = random.Random(0)
    paths = [p for p, t in files.items() if t.count("\n") > 30]
    cursors = []
    for _ in range(n_queries):
        path = rng.choice(paths)
        lines = files[path].split("\n")
        line = rng.randrange(config.query_lines + 1, len(lines))
        prefix = "\n".join(lines[: line - 1]) + "\n" + lines[line - 1][: len(lines[line - 1]) // 2]
        cursors.append((path, line, prefix))

    def timed(fn) -> list[float]:
        out = []
        for path, line, prefix in cursors:
            t = time.perf_counter()
            fn(path, line, prefix)
            out.append((time.perf_counter() - t) * 1000)
        return out

    def ask(path, line, prefix):
        query = query_text_for(prefix, config.query_lines)
        return retriever.query(query, k=8, exclude=(path, max(1, line - config.window_lines), line), method=method)

    def report(name, ms):
        print(f"{name}: {_p50_p95(ms, 2)}, max {max(ms):.2f} ms")

    report(f"query ({method}, k=8, {n_queries} queries)", timed(ask))

    def edit_then_ask(path, line, prefix):  # a keystroke in the current buffer, then the completion's query
        text = files[path].split("\n")
        text[line - 1] = text[line - 1] + "x"
        retriever.add_document(path, "\n".join(text))
        ask(path, line, prefix)

    report("edit one file + re-index + query", timed(edit_then_ask))

    if dense_sample:
        import torch

        from repocomplete.context_engine.dense import EMBED_BATCH, EMBED_MAX_TOKENS, Embedder

        embedder = Embedder.shared()
        texts = [chunk for text in files.values() for _, _, chunk in
                 windows(text, config.window_lines, config.window_stride)][:dense_sample]
        embedder.embed(texts[:8])  # warm-up
        t = time.perf_counter()
        embedder.embed(texts)
        dt = time.perf_counter() - t
        print(f"dense embedding: {len(texts)} windows in {dt:.2f} s = {len(texts) / dt:.0f} windows/s "
              f"({embedder.device}, {torch.get_num_threads()} threads, batch {EMBED_BATCH}, "
              f"max {EMBED_MAX_TOKENS} tokens)")
        t = time.perf_counter()
        for _ in range(20):
            embedder.embed([texts[0]])
        print(f"dense query embedding: {(time.perf_counter() - t) / 20 * 1000:.1f} ms per query")


# -- decode step ---------------------------------------------------------------------------------------------------

WEIGHT_OPS = ("aten::_weight_int8pack_mm", "aten::_weight_int4pack_mm_for_cpu", "aten::_weight_int4pack_mm",
              "aten::mm", "aten::addmm")
ATTENTION_OPS = ("aten::bmm", "aten::_softmax", "aten::_scaled_dot_product_flash_attention_for_cpu",
                 "aten::_scaled_dot_product_attention_math")


def bench_decode(context_tokens: int, steps: int) -> None:
    """One decode step of the product's engine (the CPU path `doctor` chose, no speculation) at `context_tokens`
    of context, split into the weights' kernels, attention over the KV cache, and the rest (elementwise ops, casts,
    allocation, Python and dispatch per op)."""
    from torch.profiler import ProfilerActivity, profile

    from repocomplete.bench.latency import cpu_line, cpu_report
    from repocomplete.bench.session import SessionOptions, load_session
    from repocomplete.model_runtime.config import RuntimeConfig
    from repocomplete.model_runtime.engine import Engine
    from repocomplete.model_runtime.loading import load_model

    config = RuntimeConfig()
    loaded = load_model(config)
    engine = Engine(loaded, config)
    session = load_session(SessionOptions(context_tokens=context_tokens), loaded.tokenizer)
    ids = loaded.tokenizer.encode(session.text[: session.start], add_special_tokens=False)[-context_tokens:]
    engine.greedy_tokens(ids, 4)  # warm-up: the prompt is in the prefix cache from here on
    plain = min(engine.greedy_tokens(ids, steps + 1)[2] for _ in range(3)) / steps * 1000
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _, _, decode_s = engine.greedy_tokens(ids, steps + 1)
    profiled = decode_s / steps * 1000
    kernels = {"weights": 0.0, "attention": 0.0}
    for event in prof.key_averages():
        kind = "weights" if event.key in WEIGHT_OPS else "attention" if event.key in ATTENTION_OPS else None
        if kind:
            kernels[kind] += event.self_cpu_time_total / 1000 / (steps + 1)  # the prefill's first token too
    other = max(0.0, profiled - kernels["weights"] - kernels["attention"])
    print(cpu_line(cpu_report(loaded)))
    print(f"decode step at {len(ids)} tokens of context, {steps} steps: {plain:.2f} ms ({1000 / plain:.1f} tok/s) "
          f"unprofiled; profiled {profiled:.2f} ms =")
    for name, ms in (("weights (linear kernels)", kernels["weights"]), ("attention over the KV cache",
                                                                        kernels["attention"]),
                     ("other (elementwise, casts, Python, dispatch)", other)):
        print(f"  {name:<46} {ms:6.2f} ms  {ms / profiled:5.1%}")
# -- tokens --------------------------------------------------------------------------------------------------------


def bench_tokens(root: Path, n_queries: int, budget: int) -> None:
    """The calibrated estimate against SmolLM2's tokenizer on DIR's Python files, then what counting with the
    tokenizer costs a context call (records measured as the prompt shows them, cold and with the cache warm) and
    what measuring the current file's window costs a request."""
    import tempfile

    from repocomplete.context_engine.config import ContextConfig
    from repocomplete.context_engine.document import cursor_parts
    from repocomplete.context_engine.engine import ContextEngine
    from repocomplete.context_engine.packing import approx_tokens, text_tokens
    from repocomplete.model_runtime.config import default_cache_dir
    from repocomplete.model_runtime.engine import encode_prompt
    from repocomplete.model_runtime.loading import load_tokenizer, resolve_model_dir
    from repocomplete.model_runtime.templates import detect_template
    from repocomplete.model_runtime.tokens import PromptTokens

    from repocomplete.pipeline import model_parts

    model_dir, name = resolve_model_dir("default", default_cache_dir())
    tokenizer = load_tokenizer(model_dir)
    template = detect_template(tokenizer.get_vocab())
    skip = set(ContextConfig().skip_dirs) - ({"site-packages"} if "site-packages" in root.parts else set())
    files = {}
    for p in sorted(root.rglob("*.py")):
        if skip.intersection(p.relative_to(root).parts[:-1]):
            continue  # what the index leaves out (a virtual environment, build output)
        try:
            files[p] = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
    real = est = 0
    errors = []
    for text in files.values():
        if len(text) < 200:
            continue
        n = len(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))
        e = approx_tokens(text)
        real, est = real + n, est + e
        errors.append(e / n - 1)
    errors.sort()
    if errors:
        p10, p50, p90 = (100 * errors[len(errors) * k // 10] for k in (1, 5, 9))
        print(f"estimate vs {name}'s tokenizer on {len(errors)} .py files ({real} tokens): "
              f"{100 * (est / real - 1):+.2f}% in all; per file p10 {p10:+.1f}%, p50 {p50:+.1f}%, p90 {p90:+.1f}%")

    if not n_queries:
        return
    with tempfile.TemporaryDirectory(prefix="repocomplete-bench-tokens-") as tmp:
        config = ContextConfig(index_dir=Path(tmp), slow_provider_deadline_ms=None, budget_tokens=budget)
        engine = ContextEngine(root, config)
        try:
            engine.build()
            rng = random.Random(0)
            paths = [p for p in engine.index.files() if p.endswith(".py")]
            spent = [0.0]

            def timed_counter(count):
                def record(path: str, text: str) -> int:
                    t = time.perf_counter()
                    n = count(path, text)
                    spent[0] += time.perf_counter() - t
                    return n
                return record

            rows: dict[str, list[float]] = {"estimate": [], "tokenizer, cold": [], "tokenizer, warm": []}
            totals: dict[str, list[float]] = {k: [] for k in rows}
            window_ms, records = [], []
            for _ in range(n_queries):
                path = rng.choice(paths)
                text = engine.index.text(path) or ""
                lines = text.split("\n")
                line = rng.randrange(1, len(lines) + 1)
                col = len(lines[line - 1]) + 1
                for kind, spent_ms in rows.items():
                    if kind == "estimate":
                        approx_tokens.cache_clear()
                        engine.set_record_tokens(timed_counter(text_tokens(approx_tokens)))
                    elif kind == "tokenizer, cold":  # a new model counter: nothing cached
                        engine.set_record_tokens(timed_counter(PromptTokens(template, tokenizer).item))
                    spent[0] = 0.0
                    t = time.perf_counter()
                    ctx = engine.context(path, text, line, col, wait=True)
                    totals[kind].append((time.perf_counter() - t) * 1000)
                    spent_ms.append(spent[0] * 1000)
                records.append(len(ctx.records))
                offset = sum(len(x) + 1 for x in lines[: line - 1]) + col - 1
                parts = model_parts(cursor_parts(text, offset, path=path))
                parts.repo_name = root.name
                t = time.perf_counter()
                encode_prompt(tokenizer, template, parts, "psm")
                window_ms.append((time.perf_counter() - t) * 1000)
        finally:
            engine.close()
    print(f"{n_queries} context calls on {root} (budget {budget}, {sum(records) / len(records):.1f} records each), "
          f"{name}'s tokenizer, template {template.name}:")
    for kind, spent_ms in rows.items():
        print(f"  counting with the {kind}: {_p50_p95(spent_ms, 2)} of a context call's {_p50_p95(totals[kind])}")
    print(f"  the current file's window, tokenized to bound the context: {_p50_p95(window_ms, 2)}")


# -- command line --------------------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


# -- train ---------------------------------------------------------------------------------------------------------


def bench_train(tokens: int, steps: int, threads: int, adapter: Path | None) -> None:
    """Seconds per optimizer step of `finetune` on the embedded model's unquantized weights (bf16 autocast where the
    CPU has bf16), on one packed row of `tokens` random tokens (half of them targets): LoRA rank 16 on the top 8
    layers from scratch, then `adapter` (default: the shipped one) continued with its token rows frozen (backward
    stops at the adapted layers) and trained (`--train-sentinels`: the gradient reaches the embedding)."""
    import json

    import torch

    from repocomplete.model_runtime import training
    from repocomplete.model_runtime.adapters import SHIPPED_DIR
    from repocomplete.model_runtime.config import RuntimeConfig
    from repocomplete.model_runtime.cpu import cpu_info
    from repocomplete.model_runtime.loading import resolve_model_dir

    torch.set_num_threads(threads)
    model_dir, name = resolve_model_dir("default", RuntimeConfig().cache_dir)
    adapter = adapter or SHIPPED_DIR
    rows = tuple(json.loads((adapter / "adapter_config.json").read_text()).get("trainable_token_indices", {})
                 .get("embed_tokens", ()))
    config = training.TrainConfig(rank=16, layers=8)
    dtype = training.autocast_dtype(config, torch.device("cpu"))
    ids = torch.randint(20, 40_000, (1, tokens), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, : tokens // 2] = training.IGNORE
    batch = {"input_ids": ids, "labels": labels, "position_ids": torch.arange(tokens)[None]}
    info = cpu_info()
    print(f"cpu {info.name} ({info.capability}), {threads} threads, autocast {dtype or 'fp32'}; {name}, one row of "
          f"{tokens} tokens, best of {steps} steps after one warm-up")
    cases = [("fresh LoRA r16, top 8 layers", lambda base: training.add_lora(base, config)),
             (f"{adapter.name}, rows frozen", lambda base: training.continue_adapter(base, adapter)),
             (f"{adapter.name}, rows trained", lambda base: training.continue_adapter(base, adapter, rows))]
    for label, make in cases:
        if "rows" in label and not rows:
            continue
        model = make(training.load_base(Path(model_dir), torch.device("cpu")))
        params = [q for q in model.parameters() if q.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        times = []
        for _ in range(steps + 1):
            t = time.perf_counter()
            loss, _ = training.row_loss(model, batch, dtype)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - t)
        best = min(times[1:])
        print(f"  {label:<36} {best:6.2f} s a step  {tokens / best:7.1f} tokens/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="repocomplete bench micro", description=__doc__.splitlines()[0])
    parts = parser.add_subparsers(dest="part", required=True, metavar="PART")
    p = parts.add_parser("parsing", help="parse every supported file under DIR and print MB/s")
    p.add_argument("directory", type=Path, metavar="DIR")
    p.add_argument("--repeat", type=_positive, default=3, help="runs to take the best of (default 3)")
    p = parts.add_parser("index", help="copy DIR to a temporary folder and time cold/warm builds and "
                                       "incremental updates")
    p.add_argument("directory", type=Path, metavar="DIR")
    p.add_argument("--edits", type=_positive, default=30, help="edits of each timed file (default 30)")
    p = parts.add_parser("analysis", help="time the jedi providers (imports, typed holes) on a bundled package")
    p.add_argument("--calls", type=_positive, default=20, help="timed calls per case (default 20)")
    p = parts.add_parser("facts", help="time the monitors' analysis at each task's cursor of a suite, jedi's state "
                                       "shared and fresh")
    p.add_argument("suite", type=Path, metavar="SUITE", help="a suite folder (tasks.jsonl, repos/)")
    p.add_argument("--versions", type=_positive, default=3, help="buffer versions per question (default 3)")
    p = parts.add_parser("retrieval", help="index every .py file under DIR and time queries")
    p.add_argument("directory", type=Path, metavar="DIR")
    p.add_argument("--queries", type=_positive, default=50, help="cursors to query from (default 50)")
    p.add_argument("--dense-sample", type=int, default=0, metavar="N", help="also time embedding N windows")
    p.add_argument("--method", default="bm25", choices=("bm25", "jaccard"))
    p = parts.add_parser("decode", help="one decode step of the engine, split into weights, attention and the rest")
    p.add_argument("--context-tokens", type=_positive, default=2048)
    p.add_argument("--steps", type=_positive, default=32)
    p = parts.add_parser("tokens", help="the token estimate against SmolLM2's tokenizer on DIR's .py files, and "
                                        "what counting with the tokenizer costs a context call")
    p.add_argument("directory", type=Path, metavar="DIR")
    p.add_argument("--queries", type=int, default=20, help="context calls to time (default 20; 0: the estimate only)")
    p.add_argument("--budget", type=_positive, default=1024, help="their budget (default 1024)")
    p = parts.add_parser("train", help="a fine-tuning step of the embedded model: fresh LoRA, an adapter continued "
                                       "with its token rows frozen and trained")
    p.add_argument("--tokens", type=_positive, default=2560, help="tokens in the packed row (default 2560)")
    p.add_argument("--steps", type=_positive, default=3, help="timed steps per case, after one warm-up (default 3)")
    p.add_argument("--threads", type=_positive, default=1, help="CPU threads (default 1)")
    p.add_argument("--adapter", type=Path, default=None, metavar="DIR", help="the adapter to continue (default: "
                                                                             "the shipped one)")
    args = parser.parse_args(argv)
    if args.part == "train":
        bench_train(args.tokens, args.steps, args.threads, args.adapter)
    elif args.part == "decode":
        bench_decode(args.context_tokens, args.steps)
    elif args.part == "parsing":
        bench_parsing(args.directory, args.repeat)
    elif args.part == "index":
        bench_index(args.directory, args.edits)
    elif args.part == "analysis":
        bench_analysis(args.calls)
    elif args.part == "facts":
        bench_facts(args.suite, args.versions)
    elif args.part == "tokens":
        bench_tokens(args.directory, args.queries, args.budget)
    else:
        bench_retrieval(args.directory, args.queries, args.dense_sample, args.method)
    return 0


if __name__ == "__main__":
    sys.exit(main())
