"""`repocomplete bench latency`: replay a typing session and time a single-line completion after each keystroke.

The session (bench.session): a real source file (bundled: CPython's textwrap.py), the cursor placed about
`context_tokens` tokens into it, then the next `keystrokes` characters typed one at a time. Every keystroke asks the engine for a
single-line completion, as an editor would. Measured on the same prompts:
  * the engine with its prefix-KV cache (the product path);
  * the engine with the cache off (every prompt prefilled from scratch), on every Nth keystroke;
  * plain transformers `generate()` (same prompt ids, same number of new tokens), on every Nth keystroke;
  * llama-cpp-python on the same GGUF, with its prompt-prefix reuse on and off, when it is installed;
  * with `--root DIR` (the file inside DIR), the product's whole path with repository context: the Completer
    packs DIR's records before the file's window at every keystroke (the editor's configuration: jedi behind its
    deadline), and the series reports the share of each prompt that the prefix cache reused.
The first keystroke of each series warms up (it fills the cache) and is reported apart from the percentiles.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from repocomplete.bench.session import SessionOptions, load_session
from repocomplete.bench.stats import percentile
from repocomplete.context_engine.config import ContextConfig
from repocomplete.pipeline import cursor_prompt
from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.model_runtime.engine import CompletionRequest, Engine
from repocomplete.model_runtime.loading import LoadedModel, load_model, model_gguf

DECODE_PROBE_TOKENS = 64


@dataclass
class BenchOptions(SessionOptions):
    max_new_tokens: int = 16
    uncached_every: int = 4
    peers: tuple[str, ...] = ("hf", "llama-cpp")
    repo: str | None = None  # a repository holding `file`: also replay the session with its context
    context: ContextConfig | None = None  # that context's configuration (None: ContextConfig's defaults)
    iterative: bool = False  # RepoCoder's second retrieval with the draft
    healing_cursors: int = 20  # indented cursors of the token-healing probe (0: no probe)


@dataclass
class Sample:
    latency_s: float
    prefill_tokens: int
    prefill_s: float
    generated: int
    decode_s: float
    cached_tokens: int = 0
    empty_by_time: bool = False  # the time budget stopped it before it produced any text
    draft_tokens: int = 0  # speculative decoding: proposed and taken
    accepted_tokens: int = 0


@dataclass
class Series:
    samples: list[Sample] = field(default_factory=list)
    warmup: Sample | None = None

    def add(self, sample: Sample) -> None:
        if self.warmup is None:
            self.warmup = sample
        else:
            self.samples.append(sample)

    def summary(self) -> dict:
        s = self.samples
        if not s:
            return {"n": 0}
        lat = [x.latency_s * 1000 for x in s]
        prefill_s = sum(x.prefill_s for x in s)
        decode_s = sum(x.decode_s for x in s)
        # Decode rate over the tokens after the first, whose logits come out of the prefill.
        decoded = sum(max(x.generated - 1, 0) for x in s)
        return {
            "n": len(s),
            "p50_ms": round(percentile(lat, 50), 1),
            "p95_ms": round(percentile(lat, 95), 1),
            "mean_prefill_tokens": round(statistics.mean(x.prefill_tokens for x in s), 1),
            "mean_cached_tokens": round(statistics.mean(x.cached_tokens for x in s), 1),
            "reused_fraction": round(sum(x.cached_tokens for x in s) / max(1, sum(x.cached_tokens + x.prefill_tokens
                                                                                  for x in s)), 3),
            "mean_generated": round(statistics.mean(x.generated for x in s), 1),
            "prefill_tok_s": round(sum(x.prefill_tokens for x in s) / prefill_s, 1) if prefill_s else None,
            "decode_tok_s": round(decoded / decode_s, 1) if decode_s and decoded else None,
            "warmup_ms": round(self.warmup.latency_s * 1000, 1) if self.warmup else None,
            "empty_by_time": sum(x.empty_by_time for x in s) + bool(self.warmup and self.warmup.empty_by_time),
            "draft_tokens": sum(x.draft_tokens for x in s),
            "acceptance": (round(sum(x.accepted_tokens for x in s) / drafted, 3)
                           if (drafted := sum(x.draft_tokens for x in s)) else None),
        }


# ---------------------------------------------------------------------------------------------------------------
# The benchmark.


def run_latency_bench(config: RuntimeConfig, options: BenchOptions, progress: bool = True) -> dict:
    config = config.replace(max_new_tokens=options.max_new_tokens, multiline=False)
    t_load = time.perf_counter()
    loaded = load_model(config)  # the GGUF was converted on an earlier run: this is a warm start
    load_s = time.perf_counter() - t_load
    session = load_session(options, loaded.tokenizer)
    path, text = session.path, session.text
    parts = [cursor_prompt(*session.buffer(k), mode="infile", path=path.name) for k in range(len(session.cursors))]
    every = max(1, options.uncached_every)
    sparse = [0] + list(range(1, len(parts), every))  # the warm-up keystroke, then every Nth

    cached_engine = Engine(loaded, config)
    cached, generated_counts, prompts = Series(), {}, {}
    for i, p in _progress(list(enumerate(parts)), progress, "engine, prefix cache on"):
        result = cached_engine.complete(CompletionRequest(p))
        cached.add(_sample(result))
        generated_counts[i] = max(result.generated_tokens, 1)
    for i in sparse:
        # The exact token ids the engine ran (after token healing), for the peers.
        prompts[i] = _healed_ids(cached_engine, parts[i])

    uncached_engine = Engine(loaded, config.replace(prefix_cache=False))
    uncached = Series()
    for i in _progress(sparse, progress, "engine, prefix cache off"):
        uncached.add(_sample(uncached_engine.complete(CompletionRequest(parts[i]))))

    modes = {"engine_cache": cached.summary(), "engine_no_cache": uncached.summary()}
    if options.repo:
        modes["engine_cache_repo"] = repo_series(cached_engine, path, session, options, progress)
    modes["engine_decode_probe"] = decode_probe(cached_engine, prompts[0])
    healing = healing_probe(loaded, config, text, path.name, options.healing_cursors) if options.healing_cursors else None
    if "hf" in options.peers:
        modes["hf_generate"] = hf_generate_series(loaded, [prompts[i] for i in sparse], [generated_counts[i] for i in sparse], progress)
    if "llama-cpp" in options.peers:
        modes.update(llama_cpp_series(config, cached_engine, [parts[i] for i in sparse], [generated_counts[i] for i in sparse], progress))

    report = {
        "model": loaded.name,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "quantize": loaded.quantize,
        "compile_decode": config.compile_decode,
        "forward": loaded.forward_name,
        "threads": torch.get_num_threads(),
        "cpu": cpu_report(loaded),
        "load_s": round(load_s, 2),
        "file": str(path),
        "cursor_line": session.cursor_line,
        "prompt_tokens": len(prompts[0]),
        "keystrokes": options.keystrokes,
        "max_new_tokens": options.max_new_tokens,
        "modes": modes,
    }
    report["token_healing"] = healing
    report["ratios"] = ratios(modes)
    report["targets"] = {
        "p50 with cache >= 5x faster than without": (report["ratios"].get("p50_no_cache_over_cache") or 0) >= 5,
        "decode >= 30 tok/s": (modes["engine_decode_probe"]["decode_tok_s"] or 0) >= 30,
    }
    return report


def repo_series(engine: Engine, path: Path, session, options: BenchOptions, progress: bool) -> dict:
    """The session with repository context: the Completer (one workspace, the editor's configuration) builds each
    keystroke's prompt; latency counts context assembly too. The file must lie inside the repository."""
    from repocomplete.pipeline import CompletionOptions, Completer

    root = Path(options.repo).resolve()
    completer = Completer(engine, options.context or ContextConfig())
    try:
        workspace = completer.open_workspace(root)
        opts = CompletionOptions(context="repo", max_new_tokens=options.max_new_tokens, iterative=options.iterative)
        series, context_ms, context_tokens = Series(), [], []
        for k in _progress(range(len(session.cursors)), progress, "engine, prefix cache on, repository context"):
            result = completer.complete(str(path), *session.buffer(k), opts, workspace=workspace)
            sample = _sample(result.completion)
            sample.latency_s = result.engine_ms / 1000  # context assembly included
            series.add(sample)
            context_ms.append(result.context_ms)
            context_tokens.append(result.context.packed.tokens if result.context is not None else 0)
        summary = series.summary()
        summary["context_ms_p50"] = round(percentile(context_ms[1:] or context_ms, 50), 1)
        summary["mean_context_tokens"] = round(statistics.mean(context_tokens), 1)
        summary["repo"] = str(root)
        return summary
    finally:
        completer.close_workspace(root)


def ratios(modes: dict) -> dict:
    base = modes["engine_cache"].get("p50_ms")
    out = {}
    for key, name in (
        ("engine_no_cache", "p50_no_cache_over_cache"),
        ("hf_generate", "p50_hf_generate_over_cache"),
        ("llama_cpp_reuse", "p50_llama_cpp_reuse_over_cache"),
        ("llama_cpp_no_reuse", "p50_llama_cpp_no_reuse_over_cache"),
    ):
        other = modes.get(key, {}).get("p50_ms")
        if base and other:
            out[name] = round(other / base, 2)
    return out


def _sample(result) -> Sample:
    return Sample(
        latency_s=result.latency_s,
        prefill_tokens=result.prompt_tokens - result.cached_tokens,
        prefill_s=result.prefill_s,
        generated=result.generated_tokens,
        decode_s=result.decode_s,
        cached_tokens=result.cached_tokens,
        empty_by_time=result.stop_reason == "time" and not result.text.strip(),
        draft_tokens=getattr(result, "draft_tokens", 0),
        accepted_tokens=getattr(result, "accepted_tokens", 0),
    )


def cpu_report(loaded: LoadedModel) -> dict:
    """The CPU and the path the figures were measured on (`repocomplete doctor` shows the table behind it)."""
    from repocomplete.model_runtime.cpu import cpu_info

    info = cpu_info()
    out = {"name": info.name, "capability": info.capability, "isa_env": dict(info.isa_env), "threads": info.threads}
    if loaded.plan is not None:
        from repocomplete.model_runtime.cpu_path import to_dict

        plan = to_dict(loaded.plan)
        out.update(path={k: plan[k] for k in ("decode", "prefill", "kv", "source")})
    return out


def cpu_line(cpu: dict) -> str:
    env = "".join(f" {k}={v}" for k, v in cpu.get("isa_env", {}).items())
    path = cpu.get("path")
    how = (f"decode {path['decode']}, prefill {path['prefill']}, kv {path['kv']} ({path['source']})" if path
           else "no CPU plan")
    return f"cpu {cpu['name']} ({cpu['capability']}{env}), {cpu['threads']} threads: {how}"


def _healed_ids(engine: Engine, parts) -> list[int]:
    return engine.heal(engine.encode(parts)[1], parts)[0]


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False)


# ---------------------------------------------------------------------------------------------------------------
# Probes and peers.


def decode_probe(engine: Engine, prompt: list[int], steps: int = DECODE_PROBE_TOKENS) -> dict:
    """Decode speed of the engine at the session's context length, free of stop rules (one warm-up run first)."""
    engine.greedy_tokens(prompt, 4)
    _, _, decode_s = engine.greedy_tokens(prompt, steps + 1)
    return {"context_tokens": len(prompt), "steps": steps, "decode_tok_s": round(steps / decode_s, 1)}


@torch.inference_mode()
def healing_probe(loaded: LoadedModel, config: RuntimeConfig, text: str, name: str, n: int = 20) -> dict:
    """Cursors right after the indentation of indented lines: how often is the completion empty (a bare newline),
    with token healing and without? Positions run in file order, so each prompt extends the previous one."""
    lines = text.split("\n")
    offsets, offset = [], 0
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        if indent and line.strip() and not line.strip().startswith("#"):
            offsets.append(offset + indent)
        offset += len(line) + 1
    step = max(1, len(offsets) // n)
    offsets = offsets[::step][:n]
    out = {"cursors": len(offsets)}
    for label, healing in (("with_healing", True), ("without_healing", False)):
        engine = Engine(loaded, config.replace(token_healing=healing))
        empty = 0
        for o in offsets:
            result = engine.complete(CompletionRequest(cursor_prompt(text, o, mode="infile", path=name)))
            empty += not result.text.strip()
        out[f"empty_{label}"] = empty
    return out


def hf_generate_series(loaded: LoadedModel, prompts: list[list[int]], counts: list[int], progress: bool) -> dict:
    """Plain transformers: a fresh model load (SDPA attention, DynamicCache), `generate()` greedy."""
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    if loaded.plan is not None:  # the same CPU path as the engine
        from repocomplete.model_runtime.loading import apply_cpu_plan

        model = AutoModelForCausalLM.from_pretrained(loaded.source, dtype=torch.float32).eval()
        apply_cpu_plan(model, loaded.plan)
    else:
        model = AutoModelForCausalLM.from_pretrained(loaded.source, dtype=loaded.dtype).to(loaded.device).eval()
        if loaded.quantize != "none":
            from repocomplete.model_runtime.quantize import quantize

            quantize(model, loaded.quantize, act_dtype=loaded.dtype)

    class Clock(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    series = Series()
    for ids, n in _progress(list(zip(prompts, counts)), progress, "transformers generate()"):
        clock = Clock()
        t0 = time.perf_counter()
        model.generate(
            torch.tensor([ids], device=loaded.device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=loaded.device),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            streamer=clock,
            pad_token_id=loaded.tokenizer.eos_token_id,
        )
        t_end = time.perf_counter()
        # put() is called with the prompt first, then once per new token.
        first = clock.times[1] if len(clock.times) > 1 else t_end
        series.add(Sample(t_end - t0, len(ids), first - t0, n, t_end - first))
    return series.summary()


def llama_cpp_series(config: RuntimeConfig, engine: Engine, parts: list, counts: list[int], progress: bool) -> dict:
    """llama-cpp-python on the GGUF itself, prompt-prefix reuse on and off (skipped when not installed)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return {"llama_cpp": {"skipped": "llama-cpp-python is not installed (pip install llama-cpp-python)"}}
    gguf = model_gguf(config.model)
    if gguf is None:
        return {"llama_cpp": {"skipped": "the model is not a GGUF file"}}
    llm = Llama(model_path=str(gguf), n_ctx=4096, n_threads=torch.get_num_threads(), n_batch=512, verbose=False)
    # Same prompt text as the engine (its tokenizer may split it differently), no token healing.
    prompts = [llm.tokenize(engine.encode(p)[0].encode("utf-8"), add_bos=False, special=True) for p in parts]
    out = {}
    for name, reuse in (("llama_cpp_reuse", True), ("llama_cpp_no_reuse", False)):
        series = Series()
        for ids, n in _progress(list(zip(prompts, counts)), progress, f"llama.cpp, reuse {'on' if reuse else 'off'}"):
            if not reuse:
                llm.reset()
            cached_before = _llama_common_prefix(llm, ids) if reuse else 0
            t0 = time.perf_counter()
            first = None
            produced = 0
            for _ in llm.generate(ids, top_k=1, temp=0.0, reset=True):
                produced += 1
                if first is None:
                    first = time.perf_counter()
                if produced >= n:
                    break
            t_end = time.perf_counter()
            series.add(Sample(t_end - t0, len(ids) - cached_before, first - t0, produced, t_end - first, cached_before))
        out[name] = series.summary()
    return out


def _llama_common_prefix(llm, ids: list[int]) -> int:
    n = 0
    for a, b in zip(llm._input_ids[: llm.n_tokens], ids):
        if a != b:
            break
        n += 1
    return n


def format_report(report: dict) -> str:
    lines = [
        f"model {report['model']} on {report['device']} ({report['dtype']}, quantize={report['quantize']}, "
        f"compile={report['compile_decode']}, forward={report['forward']}, {report['threads']} threads), "
        f"loaded in {report['load_s']} s",
        cpu_line(report["cpu"]),
        f"session: {report['keystrokes']} keystrokes at line {report['cursor_line']} of {report['file']}, "
        f"~{report['prompt_tokens']} prompt tokens, single-line, max {report['max_new_tokens']} new tokens",
        "",
        f"{'mode':<22} {'n':>3} {'p50 ms':>9} {'p95 ms':>9} {'prefill tok':>11} {'cached tok':>10} "
        f"{'prefill tok/s':>13} {'decode tok/s':>12}",
    ]
    for name, m in report["modes"].items():
        if "skipped" in m:
            lines.append(f"{name:<22} skipped: {m['skipped']}")
        elif name == "engine_decode_probe":
            lines.append(f"{name:<22} {m['steps']} steps at {m['context_tokens']} tokens of context: {m['decode_tok_s']} tok/s")
        elif m.get("n"):
            lines.append(
                f"{name:<22} {m['n']:>3} {m['p50_ms']:>9} {m['p95_ms']:>9} {m['mean_prefill_tokens']:>11} "
                f"{m['mean_cached_tokens']:>10} {m['prefill_tok_s'] or '-':>13} {m['decode_tok_s'] or '-':>12}"
                + (f"  (speculation: {m['acceptance']:.0%} of {m['draft_tokens']} drafted tokens taken)"
                   if m.get("acceptance") is not None else "")
                + (f"  (repository context: {m['mean_context_tokens']} tokens, assembled in {m['context_ms_p50']} ms"
                   f" p50; the prefix cache reused {m['reused_fraction']:.0%} of the prompt tokens)"
                   if "repo" in m else "")
            )
    h = report.get("token_healing")
    if h:
        lines.append(
            f"token healing: empty completions at {h['cursors']} indented cursors: {h['empty_with_healing']} with, "
            f"{h['empty_without_healing']} without"
        )
    lines.append("")
    lines += [f"ratio {k}: {v}x" for k, v in report["ratios"].items()]
    lines += [f"target {k}: {'met' if v else 'NOT met'}" for k, v in report["targets"].items()]
    return "\n".join(lines)
