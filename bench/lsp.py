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


@dataclass
class LspBenchOptions(SessionOptions):  # keystrokes: the paced ones
    burst_keystrokes: int = 12
    burst_interval_ms: float = 30.0
    context: str = "infile"  # the server's context mode for the session (bench latency's prompts are in-file)


def serve_argv(runtime: RuntimeConfig) -> list[str]:
    return [sys.executable, "-m", "repocomplete", "serve", *runtime.to_argv()]


def _tokenizer(runtime: RuntimeConfig):
    from repocomplete.model_runtime.loading import load_tokenizer, resolve_model_dir

    model_dir, _ = resolve_model_dir(runtime.model, runtime.cache_dir)
    return load_tokenizer(model_dir)


def run_lsp_bench(runtime: RuntimeConfig, options: LspBenchOptions, progress: bool = True) -> dict:
    total = options.keystrokes + options.burst_keystrokes
    session = load_session(options, _tokenizer(runtime), keystrokes=total)
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
                                          "maxTokens": runtime.max_new_tokens},
            }, timeout=600)
            client.notify("initialized", {})
            _wait_ready(client)
            client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                                    "text": document}})
            # Warm-up: one completion at the session's start (fills the prefix cache, loads what loads lazily).
            client.request("textDocument/inlineCompletion", _params(uri, document[:start]), timeout=600)
            client.request("workspace/executeCommand", {"command": "repocomplete.stats", "arguments": [{"reset": True}]})

            version, current = 1, document
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
    return report


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
        return {
            "requests": len(phase_rows),
            "outcomes": outcomes,
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
                       "burst_interval_ms": options.burst_interval_ms},
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
             f"{r['keystrokes']['burst']} every {r['keystrokes']['burst_interval_ms']:.0f} ms"]
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
    t = r["targets"]
    lines.append(f"server overhead p50 {t['overhead_p50_ms']} ms (target < {OVERHEAD_TARGET_MS:.0f}): "
                 f"{'met' if t['overhead_p50_met'] else 'NOT met'}")
    lines.append(f"superseded requests: {r['superseded']['count']}; the engine kept at one at most "
                 f"{t['stale_running_max_ms']} ms after a newer request arrived")
    return "\n".join(lines)
