"""`repocomplete bench attention`: dense against sparse attention, for the kernels and for the embedded model.

Kernel level (bench.attention_kernels.kernel_figures): prefill and decode attention at 8k/32k/64k tokens, head_dim
64, GQA 3:1, dense SDPA against ours (Triton on a GPU, the torch path on the CPU).

Model level, on the loaded model at a long prompt (default 8k tokens: the bundled typing session's file, about 2k
tokens before the cursor, after `context_tokens` of repository context made of this package's own source files):
  * cold prefill: the whole prompt on an empty cache, dense and sparse;
  * decode tokens/s: greedy steps after that prompt (no speculation, no stop rules);
  * keystroke p50: bench latency's typing replay with that repository context in every prompt (prefix cache on,
    single-line completions), against today's replay at 2k (the same file and keystrokes, no repository context,
    dense attention with the machine's measured KV dtype).
Each engine is built from the same config with only `attention` changed (sparse: `--attention sparse`, which sets
its K/V store to bf16 on the CPU; dense: the measured plan's). Ratios: decode sparse/dense, prefill dense/sparse,
keystroke p50 sparse@8k over dense@2k. The CPU goes beside every figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from repocomplete.bench.latency import Series, _sample, cpu_line, cpu_report
from repocomplete.bench.session import SessionOptions, load_session
from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.model_runtime.engine import CompletionRequest, Engine
from repocomplete.model_runtime.loading import load_model
from repocomplete.model_runtime.templates import ContextItem, PromptParts
from repocomplete.pipeline import cursor_prompt

PACKAGE = Path(__file__).resolve().parent.parent  # this package's own sources: repository context that ships with it


@dataclass
class AttentionOptions:
    context_tokens: int = 6144  # repository context before the file
    file_tokens: int = 2048  # the typing session's cursor, this many tokens into the file
    keystrokes: int = 12
    decode_tokens: int = 32
    kernels: bool = True
    kernel_lengths: tuple[int, ...] = (8192, 32768, 65536)
    model: bool = True
    # Prompt lengths (repository context + the same file) for the crossover of decode speed, dense against sparse:
    # where sparse attention starts paying (RuntimeConfig.sparse_min_tokens).
    sweep_lengths: tuple[int, ...] = (2048, 3072, 4096, 6144)
    shared_prefix_tokens: int = 4096  # Hydragen: the shared prompt of the batched-decode figure


def context_items(tokenizer, tokens: int, root: Path = PACKAGE) -> list[ContextItem]:
    """Whole source files of `root` (sorted, tests left out) until they hold at least `tokens` tokens."""
    items, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if total >= tokens or "tests" in path.parts:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        items.append(ContextItem(str(path.relative_to(root)), text))
        total += len(tokenizer.encode(text, add_special_tokens=False))
    return items


def cut_items(tokenizer, items: list[ContextItem], tokens: int) -> list[ContextItem]:
    """The items, whole lines only, until they hold `tokens` tokens."""
    out, total = [], 0
    for item in items:
        keep = []
        for line in item.text.split("\n"):
            n = len(tokenizer.encode(line + "\n", add_special_tokens=False))
            if total + n > tokens:
                break
            keep.append(line)
            total += n
        out.append(ContextItem(item.path, "\n".join(keep)))
        if total + 64 >= tokens:
            break
    return out


# The needle: a definition that only the repository context holds, placed in the middle of it, which the completion
# must reproduce (a value no model guesses).
NEEDLE = ContextItem("billing/secrets.py", 'import os\n\n\nLEDGER_SIGNING_KEY = "qz7-marmot-4411"\nLEDGER_REGION = '
                                           '"eu-north"\n')
NEEDLE_PREFIX = 'from billing import secrets\n\n\ndef test_signing_key():\n    assert secrets.LEDGER_SIGNING_KEY == "'
NEEDLE_ANSWER = 'qz7-marmot-4411"'


def with_needle(tokenizer, items: list[ContextItem], depth: float) -> list[ContextItem]:
    """The items with NEEDLE inserted after the line where `depth` of their tokens lie before it (the item holding
    that line is split in two around the needle)."""
    counts = [[len(tokenizer.encode(line + "\n", add_special_tokens=False)) for line in item.text.split("\n")]
              for item in items]
    target, seen = depth * sum(map(sum, counts)), 0
    for i, (item, lines) in enumerate(zip(items, counts)):
        if seen + sum(lines) >= target:
            cut = next(j for j in range(len(lines) + 1) if seen + sum(lines[:j]) >= target)
            text = item.text.split("\n")
            head, tail = "\n".join(text[:cut]), "\n".join(text[cut:])
            return items[:i] + [ContextItem(item.path, head), NEEDLE, ContextItem(item.path, tail)] + items[i + 1 :]
        seen += sum(lines)
    return items + [NEEDLE]


def needle_figures(loaded, config: RuntimeConfig, context_tokens: int,
                   depths: tuple[float, ...] = (0.25, 0.5, 0.75)) -> dict:
    """Does the completion use a definition placed deep in `context_tokens` of repository context? For each depth
    (the share of the context items before the needle) and attention mode: the completion, whether it is the
    needle's value, and how deep the needle sat (tokens before the cursor). Per mode: how many depths found it."""
    filler = cut_items(loaded.tokenizer, context_items(loaded.tokenizer, 2 * context_tokens), context_tokens)
    out: dict = {"modes": {}, "rows": []}
    for depth in depths:
        parts = PromptParts(NEEDLE_PREFIX, "", "tests/test_billing.py", with_needle(loaded.tokenizer, filler, depth),
                            "shop")
        for mode in ("dense", "sparse", "auto"):
            engine = Engine(loaded, config.replace(attention=mode))
            _, encoded = engine.encode(parts)
            start = next(s.start for s in encoded.spans if s.kind == "context" and s.path == NEEDLE.path)
            done = engine.complete(CompletionRequest(parts))
            found = done.text.startswith(NEEDLE_ANSWER)
            out["rows"].append({"mode": mode, "depth": depth, "completion": done.text, "found": found,
                                "prompt_tokens": done.prompt_tokens, "depth_tokens": len(encoded.ids) - start})
            out["modes"][mode] = out["modes"].get(mode, 0) + found
    out["of"] = len(depths)
    return out


def _parts(base: PromptParts, context: list[ContextItem]) -> PromptParts:
    return PromptParts(base.prefix, base.suffix, base.path, list(context), "repocomplete" if context else "")


def keystroke_series(engine: Engine, session, context: list[ContextItem]) -> dict:
    series = Series()
    prompt_tokens = []
    for cursor in session.cursors:
        parts = _parts(cursor_prompt(session.text, cursor, mode="infile", path=session.path.name), context)
        done = engine.complete(CompletionRequest(parts))
        series.add(_sample(done))
        prompt_tokens.append(done.prompt_tokens)
    summary = series.summary()
    summary["prompt_tokens"] = max(prompt_tokens)
    return summary


def model_figures(config: RuntimeConfig, options: AttentionOptions, progress=print) -> dict:
    config = config.replace(max_new_tokens=16, multiline=False)
    loaded = load_model(config)
    session = load_session(SessionOptions(context_tokens=options.file_tokens, keystrokes=options.keystrokes),
                           loaded.tokenizer)
    context = cut_items(loaded.tokenizer, context_items(loaded.tokenizer, 2 * options.context_tokens),
                        options.context_tokens)
    rows = {}
    for mode in ("dense", "sparse"):
        engine = Engine(loaded, config.replace(attention=mode))
        parts = _parts(cursor_prompt(session.text, session.start, mode="infile", path=session.path.name), context)
        _, encoded = engine.encode(parts)
        ids, spans = encoded.ids, encoded.spans
        progress(f"{mode}: cold prefill of {len(ids)} tokens")
        t0 = time.perf_counter()
        _, prefill_s, _ = engine.greedy_tokens(ids, 1, spans)
        wall = time.perf_counter() - t0
        progress(f"{mode}: {options.decode_tokens} decode steps")
        _, _, decode_s = engine.greedy_tokens(ids, options.decode_tokens + 1, spans)
        progress(f"{mode}: typing replay, {options.keystrokes} keystrokes")
        keys = keystroke_series(engine, session, context)
        rows[mode] = {
            "prompt_tokens": len(ids),
            "context_tokens": sum(s.end - s.start for s in spans if s.kind == "context"),
            "kv_dtype": str(engine.slab.layers[0].store_dtype or "").replace("torch.", ""),
            "cold_prefill_s": round(prefill_s, 2),
            "cold_wall_s": round(wall, 2),
            "decode_tok_s": round(options.decode_tokens / decode_s, 1),
            "keystroke": keys,
        }
        del engine
    sweep = []
    for length in options.sweep_lengths:
        row = {"prompt_tokens": length}
        for mode in ("dense", "sparse"):
            engine = Engine(loaded, config.replace(attention=mode))
            base = cursor_prompt(session.text, session.start, mode="infile", path=session.path.name)
            file_tokens = len(engine.encode(_parts(base, []))[1].ids)
            items = cut_items(loaded.tokenizer, context, max(0, length - file_tokens))
            _, encoded = engine.encode(_parts(base, items))
            progress(f"sweep {mode}: {len(encoded.ids)} tokens")
            engine.greedy_tokens(encoded.ids, 1, encoded.spans)
            _, _, decode_s = engine.greedy_tokens(encoded.ids, options.decode_tokens + 1, encoded.spans)
            row[f"{mode}_decode_tok_s"] = round(options.decode_tokens / decode_s, 1)
            row["actual_tokens"] = len(encoded.ids)
        row["decode_sparse_over_dense"] = round(row["sparse_decode_tok_s"] / row["dense_decode_tok_s"], 2)
        sweep.append(row)
    progress("shared prefix: 16 sequences x 32 tokens after a 4k-token prompt, batched against one by one")
    from repocomplete.bench.shared_prefix import run_shared_prefix_bench

    shared = run_shared_prefix_bench(loaded, prompt_tokens=options.shared_prefix_tokens, sequences=16, new_tokens=32)
    progress("needle: a definition in the middle of the repository context, dense / sparse / auto")
    needle = needle_figures(loaded, config, options.context_tokens)
    progress("dense at 2k: typing replay without repository context (today's)")
    today = Engine(loaded, config.replace(attention="dense"))
    rows["dense_2k"] = {"keystroke": keystroke_series(today, session, [])}
    dense, sparse = rows["dense"], rows["sparse"]
    ratios = {
        "decode_sparse_over_dense": round(sparse["decode_tok_s"] / dense["decode_tok_s"], 2),
        "prefill_dense_over_sparse": round(dense["cold_prefill_s"] / sparse["cold_prefill_s"], 2),
        "keystroke_p50_sparse_8k_over_dense_2k": round(
            sparse["keystroke"]["p50_ms"] / rows["dense_2k"]["keystroke"]["p50_ms"], 2),
        "keystroke_p50_dense_8k_over_dense_2k": round(
            dense["keystroke"]["p50_ms"] / rows["dense_2k"]["keystroke"]["p50_ms"], 2),
    }
    targets = {
        "decode at 8k >= 1.5x dense": ratios["decode_sparse_over_dense"] >= 1.5,
        "cold 8k prefill >= 1.8x dense": ratios["prefill_dense_over_sparse"] >= 1.8,
        "keystroke p50 at 8k within 1.25x of today's at 2k": ratios["keystroke_p50_sparse_8k_over_dense_2k"] <= 1.25,
    }
    return {"model": loaded.name, "cpu": cpu_report(loaded), "threads": torch.get_num_threads(), "modes": rows,
            "needle": needle, "sweep": sweep, "shared_prefix": shared, "ratios": ratios, "targets": targets}


def run_attention_bench(config: RuntimeConfig, options: AttentionOptions, progress=print) -> dict:
    report: dict = {}
    if options.kernels:
        from repocomplete.bench.attention_kernels import kernel_figures

        progress("kernels: " + ", ".join(map(str, options.kernel_lengths)) + " tokens")
        report["kernels"] = kernel_figures(lengths=options.kernel_lengths)
    if options.model:
        report["model"] = model_figures(config, options, progress)
    return report


def format_report(report: dict) -> str:
    lines = []
    if "kernels" in report:
        lines.append("kernels (ms; speedup = dense / sparse):")
        for row in report["kernels"]:
            if row.get("skipped"):
                lines.append(f"  {row['phase']:7} {row['tokens']:>6}  skipped: {row['skipped']}")
                continue
            grouped = f"  grouped decode {row['grouped_ms']:.2f}" if row.get("grouped_ms") is not None else ""
            lines.append(f"  {row['phase']:7} {row['tokens']:>6}  dense {row['dense_ms']:9.2f}  sparse "
                         f"{row['sparse_ms']:9.2f}  x{row['speedup']:.2f}{grouped}  [{row['backend']}, {row['device']}]")
    model = report.get("model")
    if model:
        lines.append(f"model {model['model']}, {model['threads']} torch threads; {cpu_line(model['cpu'])}")
        for mode, row in model["modes"].items():
            keys = row["keystroke"]
            head = (f"  {mode:8} prompt {row.get('prompt_tokens', keys['prompt_tokens']):>5} tokens"
                    + (f" (context {row['context_tokens']}, kv {row['kv_dtype']}): cold prefill "
                       f"{row['cold_prefill_s']:.2f} s, decode {row['decode_tok_s']:.1f} tok/s," if "decode_tok_s" in row
                       else ":"))
            lines.append(f"{head} keystroke p50 {keys['p50_ms']:.0f} ms, p95 {keys['p95_ms']:.0f} ms")
        for row in model.get("sweep", []):
            lines.append(f"  decode at {row['actual_tokens']:>5} tokens: dense {row['dense_decode_tok_s']:.1f} tok/s, "
                         f"sparse {row['sparse_decode_tok_s']:.1f} tok/s (x{row['decode_sparse_over_dense']:.2f})")
        shared = model.get("shared_prefix")
        if shared:
            lines.append(f"  shared prefix ({shared['sequences']} sequences x {shared['new_tokens']} tokens after "
                         f"{shared['prompt_tokens']}): one by one {shared['sequential_s']:.2f} s, batched "
                         f"{shared['batched_s']:.2f} s (x{shared['speedup']:.2f})")
        needle = model.get("needle")
        if needle:
            for row in needle["rows"]:
                lines.append(f"  needle {row['mode']:6} {row['depth_tokens']:>5} tokens before the cursor (prompt "
                             f"{row['prompt_tokens']}): {'found' if row['found'] else 'missed'} {row['completion']!r}")
            lines.append("  needle found: " + ", ".join(f"{m} {n}/{needle['of']}" for m, n in needle["modes"].items()))
        for name, value in model["ratios"].items():
            lines.append(f"  {name}: {value}")
        for name, ok in model["targets"].items():
            lines.append(f"  target {name}: {'met' if ok else 'NOT met'}")
    return "\n".join(lines)
