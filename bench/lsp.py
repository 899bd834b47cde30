"""`repocomplete bench lsp`: `bench latency`'s typing session, through the real language server over stdio.

The server (`repocomplete serve`, a subprocess, with the run's model options) gets the bundled file as an open
document in a repository folder, then the session's characters one keystroke at a time: an incremental didChange
and a `textDocument/inlineCompletion` at the new cursor, as an editor sends them. Two phases:

  * paced: each keystroke waits for its completion (the editor's latency per keystroke);
  * burst: keystrokes arrive every `burst_interval_ms`, faster than completions finish, so older requests are
    superseded by newer ones for the same document.

Client-side request latency comes from this process's clock; engine time, debounce and what happened to each
request (completed, cached, superseded, cancelled) from the server's own `repocomplete.stats`. The server's
overhead is latency - engine time - debounce (JSON-RPC, document sync, scheduling). For superseded requests the
server records how long the engine kept working after the newer request arrived (`ran_after_superseded_ms`): the
decode loop checks its cancel token every step, so this is at most about one decode step.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from repocomplete.bench.session import SessionOptions, load_session
from repocomplete.bench.stats import percentiles
from repocomplete.eval.lsp_client import JsonRpcClient, ServerError, utf16_position
from repocomplete.model_runtime.config import RuntimeConfig

OVERHEAD_TARGET_MS = 5.0
P50_RATIO_TARGET = 0.8  # our p50 over llama.cpp's, on the paced keystrokes
P95_TARGET_MS = 300.0
DECODE_TARGET_TOK_S = 50.0


@dataclass
class LspBenchOptions(SessionOptions):  # keystrokes: the paced ones
    burst_keystrokes: int = 12
    burst_interval_ms: float = 30.0
    context: str = "infile"  # the server's context mode for the session (bench latency's prompts are in-file)
    cache: bool = True  # False: the server's completion cache is off, so every keystroke reaches the engine
    peer: str = "auto"  # llama.cpp's server replaying the paced keystrokes (bench.peer.KINDS)
    peer_command: str | None = None  # a llama-server binary
    peer_python: str | None = None  # a Python with llama-cpp-python[server]


def serve_argv(runtime: RuntimeConfig) -> list[str]:
    return [sys.executable, "-m", "repocomplete", "serve", *runtime.to_argv()]


def _tokenizer(runtime: RuntimeConfig):
    from repocomplete.model_runtime.loading import load_tokenizer, resolve_model_dir

    model_dir, _ = resolve_model_dir(runtime.model, runtime.cache_dir)
    return load_tokenizer(model_dir)


def run_lsp_bench(runtime: RuntimeConfig, options: LspBenchOptions, progress: bool = True) -> dict:
    total = options.keystrokes + options.burst_keystrokes
    tokenizer = _tokenizer(runtime)
    session = load_session(options, tokenizer, keystrokes=total)
    source, text, start = session.path, session.text, session.start
    typed = text[start : start + total]
    with tempfile.TemporaryDirectory(prefix="repocomplete-bench-lsp-") as tmp:
        root = Path(tmp) / "repo"
        (root / ".git").mkdir(parents=True)
        path = root / source.name
        document = text[:start] + text[start + total :]
        path.write_text(document)
        uri = path.as_uri()
        client = JsonRpcClient(serve_argv(runtime))
        try:
            client.request("initialize", {
                "processId": None, "rootUri": root.as_uri(),
                "workspaceFolders": [{"uri": root.as_uri(), "name": root.name}],
                "capabilities": {"textDocument": {"inlineCompletion": {}}},
                "initializationOptions": {"context": options.context, "debounceMs": 0,
                                          "maxTokens": runtime.max_new_tokens,
                                          **({} if options.cache else {"completionCacheBytes": 0})},
            }, timeout=600)
            client.notify("initialized", {})
            _wait_ready(client)
            client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                                    "text": document}})
            # Warm-up: one completion at the session's start (fills the prefix cache, loads what loads lazily).
            client.request("textDocument/inlineCompletion", _params(uri, document[:start]), timeout=600)
            client.request("workspace/executeCommand", {"command": "repocomplete.stats", "arguments": [{"reset": True}]})

            version, current = 1, document
            paced_cursors: list[tuple[str, int]] = []  # (document, cursor) of each paced keystroke, for the peer
            sent: list[tuple[str, float, int]] = []  # (phase, t0, msg id)
            latency: dict[int, float] = {}
            for k, ch in enumerate(typed):
                cursor = start + k
                version += 1
                current = current[:cursor] + ch + current[cursor:]
                client.notify("textDocument/didChange", {
                    "textDocument": {"uri": uri, "version": version},
                    "contentChanges": [{"range": {"start": utf16_position(current[:cursor]),
                                                  "end": utf16_position(current[:cursor])}, "text": ch}]})
                params = _params(uri, current[: cursor + 1])
                t0 = time.perf_counter()
                msg_id = client.send_request("textDocument/inlineCompletion", params)
                phase = "paced" if k < options.keystrokes else "burst"
                sent.append((phase, t0, msg_id))
                if phase == "paced":
                    paced_cursors.append((current, cursor + 1))
                    client.response(msg_id, timeout=600)
                    latency[msg_id] = (time.perf_counter() - t0) * 1000
                else:
                    time.sleep(options.burst_interval_ms / 1000)
                if progress:
                    print(f"\rkeystroke {k + 1}/{total}", end="", file=sys.stderr, flush=True)
            for phase, t0, msg_id in sent:
                if msg_id not in latency:
                    client.response(msg_id, timeout=600)
                    latency[msg_id] = client.answered_at(msg_id) * 1000 - t0 * 1000
            if progress:
                print(file=sys.stderr)
            stats = client.request("workspace/executeCommand", {"command": "repocomplete.stats", "arguments": []})
        finally:
            client.close()
    records = [r for r in stats["requests"] if r["method"] == "textDocument/inlineCompletion"]
    if len(records) != len(sent):
        raise ServerError(f"the server counted {len(records)} requests, the client sent {len(sent)}")
    rows = []
    for (phase, _, msg_id), record in zip(sent, records):
        rows.append({"phase": phase, "latency_ms": round(latency[msg_id], 2), **record})
    report = summarize(rows, runtime, options, source)
    report["cpu"] = {"capability": stats.get("cpu"), "path": stats.get("path"), "server_model": stats.get("model")}
    threads = (stats.get("path") or {}).get("threads") or _threads()
    # The peer runs after our server has exited, on the same cores, with the same thread count.
    report["peer"] = run_peer(runtime, options, tokenizer, source.name, (document, start), paced_cursors, threads,
                              progress)
    report["comparison"] = compare(report)
    return report


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def run_peer(runtime: RuntimeConfig, options: LspBenchOptions, tokenizer, name: str, warmup: tuple[str, int],
             cursors: list[tuple[str, int]], threads: int, progress: bool) -> dict:
    """The paced keystrokes replayed against llama.cpp's server: the same in-file prompt text our engine runs,
    greedy, one line, at most the same number of new tokens."""
    from repocomplete.bench.peer import LlamaCppPeer, PeerUnavailable
    from repocomplete.model_runtime.engine import prompt_text
    from repocomplete.model_runtime.loading import model_gguf
    from repocomplete.pipeline import cursor_prompt

    if options.peer == "none":
        return {"skipped": "no peer asked for (--peer none)"}
    gguf = model_gguf(runtime.model)
    if gguf is None:
        return {"skipped": f"the llama.cpp peer needs a GGUF model, not {runtime.model}"}
    prompts = [prompt_text(tokenizer, runtime, cursor_prompt(text, cursor, mode="infile", path=name))
               for text, cursor in [warmup, *cursors]]
    longest = len(tokenizer.encode(max(prompts, key=len)))
    n_ctx = 1 << max(12, (longest + runtime.max_new_tokens).bit_length())
    try:
        peer = LlamaCppPeer.find(gguf, threads, n_ctx, options.peer, options.peer_command, options.peer_python)
        with peer:
            peer.complete(prompts[0], runtime.max_new_tokens)  # warm-up: fills its prompt cache
            answers = []
            for k, prompt in enumerate(prompts[1:]):
                answers.append(peer.complete(prompt, runtime.max_new_tokens))
                if progress:
                    print(f"\rpeer keystroke {k + 1}/{len(prompts) - 1}", end="", file=sys.stderr, flush=True)
            if progress:
                print(file=sys.stderr)
    except PeerUnavailable as e:
        return {"skipped": str(e)}
    return {"server": peer.kind, "command": " ".join(peer.argv[:3]), "threads": threads, "requests": len(answers),
            "prompts": "in-file, the text our engine runs" + ("" if options.context == "infile" else
                                                               f" (our server ran context {options.context!r})"),
            "latency_ms": percentiles(a.latency_ms for a in answers),
            "mean_tokens": round(statistics.fmean(a.tokens for a in answers), 1) if answers else None}


def compare(report: dict) -> dict:
    """Ours against the peer on the paced keystrokes: the ratios, and the issue's targets."""
    ours = report["paced"]
    peer = report["peer"]
    out = {"latency_p50_ms": ours["latency_ms"]["p50"], "latency_p95_ms": ours["latency_ms"]["p95"],
           "decode_tok_s": ours["decode_tok_s"]}
    if "latency_ms" in peer and peer["latency_ms"]["p50"]:
        out["p50_ratio_ours_over_peer"] = round(ours["latency_ms"]["p50"] / peer["latency_ms"]["p50"], 2)
        out["p95_ratio_ours_over_peer"] = round(ours["latency_ms"]["p95"] / peer["latency_ms"]["p95"], 2)
    out["targets"] = {
        f"p50 <= {P50_RATIO_TARGET}x llama.cpp": (out["p50_ratio_ours_over_peer"] <= P50_RATIO_TARGET
                                                  if "p50_ratio_ours_over_peer" in out else None),
        f"p95 <= {P95_TARGET_MS:.0f} ms": (out["latency_p95_ms"] <= P95_TARGET_MS
                                            if out["latency_p95_ms"] is not None else None),
        f"decode >= {DECODE_TARGET_TOK_S:.0f} tok/s": (out["decode_tok_s"] >= DECODE_TARGET_TOK_S
                                                       if out["decode_tok_s"] is not None else None),
    }
    return out


def _params(uri: str, before_cursor: str) -> dict:
    return {"textDocument": {"uri": uri}, "position": utf16_position(before_cursor),
            "context": {"triggerKind": 2}}


def _wait_ready(client: JsonRpcClient, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.request("workspace/executeCommand", {"command": "repocomplete.stats", "arguments": []})["state"]
        if state == "ready":
            return
        if state == "error":
            raise ServerError(f"the server could not start{client.stderr_tail()}")
        time.sleep(0.2)
    raise ServerError("the server was not ready in time")


def summarize(rows: list[dict], runtime: RuntimeConfig, options: LspBenchOptions, source: Path) -> dict:
    def phase_summary(phase_rows: list[dict]) -> dict:
        done = [r for r in phase_rows if r["outcome"] in ("completed", "cached")]
        engine = [r for r in done if r["outcome"] == "completed" and r["engine_ms"] is not None]
        overhead = [r["latency_ms"] - r["engine_ms"] - (r["debounce_ms"] or 0) for r in engine]
        outcomes: dict[str, int] = {}
        for r in phase_rows:
            outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        decoded = sum(max((r["tokens"] or 0) - 1, 0) for r in engine)
        decode_ms = sum(r["decode_ms"] or 0.0 for r in engine)
        drafted = sum(r["draft_tokens"] or 0 for r in engine)
        return {
            "requests": len(phase_rows),
            "outcomes": outcomes,
            "mean_tokens": round(statistics.fmean(r["tokens"] or 0 for r in engine), 1) if engine else None,
            # Over the tokens after the first (whose logits come out of the prefill), speculation counted.
            "decode_tok_s": round(decoded / decode_ms * 1000, 1) if decoded and decode_ms else None,
            "acceptance": (round(sum(r["accepted_tokens"] or 0 for r in engine) / drafted, 3) if drafted else None),
            "latency_ms": percentiles(r["latency_ms"] for r in done),
            "engine_ms": percentiles(r["engine_ms"] for r in engine),
            "overhead_ms": {**percentiles(overhead),
                            "mean": round(statistics.fmean(overhead), 2) if overhead else None},
            "debounce_ms": percentiles((r["debounce_ms"] for r in done), qs=(50,)),
        }

    paced = [r for r in rows if r["phase"] == "paced"]
    burst = [r for r in rows if r["phase"] == "burst"]
    superseded = [r for r in rows if r["outcome"] == "superseded"]
    ran_after = [r["ran_after_superseded_ms"] or 0.0 for r in superseded]
    all_overhead = [r["latency_ms"] - r["engine_ms"] - (r["debounce_ms"] or 0) for r in rows
                    if r["outcome"] == "completed" and r["engine_ms"] is not None]
    overhead_p50 = percentiles(all_overhead, qs=(50,))["p50"]
    return {
        "file": source.name,
        "model": runtime.model,
        "keystrokes": {"paced": options.keystrokes, "burst": options.burst_keystrokes,
                       "burst_interval_ms": options.burst_interval_ms, "cache": options.cache},
        "paced": phase_summary(paced),
        "burst": phase_summary(burst),
        "superseded": {"count": len(superseded), "ran_after_superseded_max_ms": max(ran_after, default=0.0),
                       "ran_after_superseded_p50_ms": percentiles(ran_after, qs=(50,))["p50"]},
        "targets": {
            "overhead_p50_ms": overhead_p50,
            "overhead_p50_met": overhead_p50 is not None and overhead_p50 < OVERHEAD_TARGET_MS,
            # No request keeps running after a newer one: each stopped at its next decode step.
            "stale_running_max_ms": max(ran_after, default=0.0),
        },
        "requests": rows,
    }


def format_report(r: dict) -> str:
    lines = [f"bench lsp: {r['file']}, model {r['model']}, {r['keystrokes']['paced']} paced keystrokes, "
             f"{r['keystrokes']['burst']} every {r['keystrokes']['burst_interval_ms']:.0f} ms, completion cache "
             + ("on" if r['keystrokes'].get('cache', True) else "off (every keystroke reaches the engine)")]
    cpu = r.get("cpu") or {}
    path = cpu.get("path")
    lines.append(f"server cpu {path['cpu'] if path else ''} ({cpu.get('capability')}), "
                 + (f"{path['threads']} threads: decode {path['decode']}, prefill {path['prefill']}, kv {path['kv']} "
                    f"({path['source']})" if path else "no CPU plan"))
    lines.append(f"{'phase':<8}{'requests':>9}{'latency p50/p95':>18}{'engine p50/p95':>17}{'overhead p50/p95':>19}"
                 "  outcomes")
    for phase in ("paced", "burst"):
        s = r[phase]
        lines.append(f"{phase:<8}{s['requests']:>9}{str(s['latency_ms']['p50']) + '/' + str(s['latency_ms']['p95']):>18}"
                     f"{str(s['engine_ms']['p50']) + '/' + str(s['engine_ms']['p95']):>17}"
                     f"{str(s['overhead_ms']['p50']) + '/' + str(s['overhead_ms']['p95']):>19}  {s['outcomes']}")
    paced = r["paced"]
    lines.append(f"paced: {paced['mean_tokens']} tokens a completion, engine decode {paced['decode_tok_s']} tok/s"
                 + (f" (speculation: {paced['acceptance']:.0%} of drafted tokens taken)"
                    if paced.get("acceptance") is not None else ""))
    peer = r.get("peer") or {}
    if "skipped" in peer:
        lines.append(peer["skipped"])
    elif peer:
        lines.append(f"peer {peer['server']} ({peer['command']} ..., {peer['threads']} threads), {peer['requests']} "
                     f"paced keystrokes, prompts {peer['prompts']}: latency p50/p95 {peer['latency_ms']['p50']}/"
                     f"{peer['latency_ms']['p95']} ms, {peer['mean_tokens']} tokens a completion")
    c = r.get("comparison") or {}
    if "p50_ratio_ours_over_peer" in c:
        lines.append(f"ours over llama.cpp: p50 {c['p50_ratio_ours_over_peer']}x, p95 {c['p95_ratio_ours_over_peer']}x")
    for name, met in (c.get("targets") or {}).items():
        lines.append(f"target {name}: {'not measured' if met is None else 'met' if met else 'NOT met'}")
    t = r["targets"]
    lines.append(f"server overhead p50 {t['overhead_p50_ms']} ms (target < {OVERHEAD_TARGET_MS:.0f}): "
                 f"{'met' if t['overhead_p50_met'] else 'NOT met'}")
    lines.append(f"superseded requests: {r['superseded']['count']}; the engine kept at one at most "
                 f"{t['stale_running_max_ms']} ms after a newer request arrived")
    return "\n".join(lines)
