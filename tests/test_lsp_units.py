"""The server's pure pieces: settings and their resolution, the adaptive debounce, the completion cache, request
records, document checks, position conversion."""

from __future__ import annotations

import pytest
from lsprotocol import types
from pygls.workspace import TextDocument, Workspace

from repocomplete.context_engine.config import ContextConfig
from repocomplete.lsp_server import convert
from repocomplete.lsp_server.config import Settings, apply, resolve, section_of, to_json
from repocomplete.lsp_server.documents import BINARY, LARGE, UNSYNCED, Documents, text_problem
from repocomplete.lsp_server.scheduling import Cached, CompletionCache, Debounce, RequestLog, approx_bytes
from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.pipeline import CompletionOptions


def test_settings_take_camel_case_and_keep_the_old_value_on_a_bad_one():
    shown = resolve(RuntimeConfig(), ContextConfig(budget_tokens=300), Settings()).settings
    s, problems = apply(Settings(), {"maxTokens": 12, "contextBudget": "lots", "debounceMs": 20, "colour": "red",
                                     "languages": ["python"], "endpoint": None}, shown=shown)
    assert s == Settings(max_tokens=12, debounce_ms=20, languages=("python",), endpoint="")
    assert problems == ["contextBudget must be an integer in [0, 32768], got 'lots'; keeping contextBudget = 300",
                        "unknown setting 'colour' ignored"]
    assert apply(Settings(), "not an object")[0] == Settings()
    assert section_of({"repocomplete": {"enabled": False}}) == {"enabled": False}


def test_unset_overrides_are_the_configs_values_and_set_ones_replace_them():
    runtime = RuntimeConfig(model="m.gguf", endpoint="http://127.0.0.1:1", max_new_tokens=32, multiline=True)
    context = ContextConfig(budget_tokens=700)
    plain = resolve(runtime, context, Settings(context="infile"))
    assert plain.runtime == runtime
    assert plain.options == CompletionOptions(context="infile", multiline=True, max_new_tokens=32, budget=700,
                                              monitors=(), candidates=1)  # an endpoint: no monitors (a local model only)
    assert plain.model_name == "http://127.0.0.1:1"
    assert to_json(plain.settings) == {
        "enabled": True, "context": "infile", "debounceMs": 0, "languages": list(Settings().languages),
        "model": "m.gguf", "adapter": None, "endpoint": "http://127.0.0.1:1", "contextBudget": 700, "maxTokens": 32,
        "multiline": True, "monitors": "none", "completionCacheBytes": 8 * 2**20, "candidates": 1}
    # A client's settings: another model, no endpoint (its null), other decoding knobs and budget.
    client, _ = apply(Settings(), {"model": "other", "endpoint": None, "maxTokens": 8, "multiline": False,
                                   "contextBudget": 0})
    over = resolve(runtime, context, client)
    assert over.runtime == runtime.replace(model="other", endpoint=None)  # decoding knobs: the options only
    assert over.options == CompletionOptions(context="repo", multiline=False, max_new_tokens=8, budget=0,
                                             monitors=RuntimeConfig().active_monitors, candidates=1)
    assert over.model_name == "other"
    # A client's null adapter means none at all (not the embedded model's shipped default).
    client, _ = apply(Settings(), {"adapter": None})
    assert resolve(runtime.replace(adapter="lora"), context, client).runtime.adapter == "none"


@pytest.mark.parametrize("raw", [{"enabled": "yes"}, {"maxTokens": 0}, {"maxTokens": True}, {"context": "all"},
                                 {"languages": "python"}, {"model": ""}])
def test_each_bad_value_is_reported(raw):
    s, problems = apply(Settings(), raw)
    assert s == Settings() and len(problems) == 1


def _typed(d: Debounce, gaps_ms, engine_ms, t: float = 0.0) -> float:
    """Requests arriving after each of `gaps_ms` (a scripted session); each one completes in `engine_ms` (a number,
    or one per request) when that is shorter than the gap to the next request, else it is superseded."""
    engine = [engine_ms] * len(gaps_ms) if isinstance(engine_ms, (int, float)) else list(engine_ms)
    for k, gap in enumerate(gaps_ms):
        t += gap / 1000
        d.arrived(t)
        if k + 1 == len(gaps_ms) or engine[k] <= gaps_ms[k + 1]:
            d.finished(engine[k])
    return t


def test_debounce_no_delay_before_anything_is_timed_or_on_an_idle_editor():
    d = Debounce(floor_ms=0)
    assert d.delay_ms() == 0  # nothing timed yet
    t = _typed(d, [40] * 20, engine_ms=100)  # a burst: the rule would wait
    assert d.delay_ms() > 40
    d.arrived(t + 5.0)  # the first keystroke after a pause starts at once
    assert d.delay_ms() == 0
    d.floor_ms = 20  # the user's floor (debounceMs) holds everywhere
    assert d.delay_ms() == 20


def test_debounce_no_delay_when_the_engine_keeps_up():
    # Steady typing every 150 ms, completions in 100 ms with prefix reuse: every request is answered before the
    # next keystroke, so waiting would only add latency.
    d = Debounce(floor_ms=0)
    _typed(d, [150, 140, 160, 150, 155, 145] * 4, engine_ms=100)
    assert d.delay_ms() == 0
    assert d.cost(0)["wasted_ms"] == 0


def test_debounce_starts_nothing_that_a_burst_would_waste():
    # Keystrokes every 30 ms, the engine needs 100 ms: any request started now would be superseded. The delay
    # clears the burst's gaps, so none starts until the typing stops.
    d = Debounce(floor_ms=0)
    _typed(d, [30, 28, 33, 31, 29, 30, 32, 30] * 3, engine_ms=100)
    delay = d.delay_ms()
    assert 33 <= delay <= d.cap_ms  # at least the longest gap of the burst
    assert d.cost(delay)["wasted_ms"] == 0 and d.cost(0)["wasted_ms"] > 25


def test_debounce_waits_only_where_waiting_saves_more_than_it_costs():
    # Mostly slow typing with an occasional quick pair: waiting 25 ms for every answer to save a little waste on
    # one request in eight does not pay; the delay stays at the floor.
    d = Debounce(floor_ms=0)
    _typed(d, [300, 300, 300, 20, 300, 300, 300, 300] * 3, engine_ms=100)
    c0 = d.cost(0)
    assert d.delay_ms() == 0 and c0["wasted_ms"] > 0
    assert d.cost(25)["wait_ms"] > c0["wasted_ms"]  # what the rule compared
    # Typing faster than the engine answers (gaps 60-90 ms, completions 120 ms): nothing started would be shown.
    fast = Debounce(floor_ms=0)
    _typed(fast, [60, 90, 70, 80] * 6, engine_ms=120)
    assert fast.delay_ms() == pytest.approx(95)  # the largest gap plus the margin
    assert fast.cost(fast.delay_ms())["wasted_ms"] == 0


def test_debounce_an_editor_waiting_for_each_answer_never_waits():
    # Paced typing: each keystroke comes once the previous answer is shown, so every gap is that request's own
    # engine time plus a little; engine times vary (60-300 ms), so many gaps are shorter than the median.
    d = Debounce(floor_ms=0)
    engine = [60, 300, 70, 65, 250, 75, 60, 62, 280, 70] * 3
    gaps = [100] + [e + 5 for e in engine[:-1]]
    _typed(d, gaps, engine)
    assert d.delay_ms() == 0 and d.cost(0) == {"wait_ms": 0.0, "wasted_ms": 0.0, "lost_answers": 0.0}


def test_debounce_a_slow_answer_after_a_long_wait_is_no_waste():
    # A request that took 5 s (a cold prompt) and was answered: the user waited for it, nothing was wasted.
    d = Debounce(floor_ms=0)
    _typed(d, [100, 5020, 120, 110, 130, 120], [5000, 100, 100, 100, 100, 100])
    assert d.cost(0)["wasted_ms"] == 0 and d.delay_ms() == 0


def test_debounce_does_not_drop_answers_to_save_an_occasional_burst():
    # Typing that is usually answered (gaps just over the engine time), then a short burst: waiting long enough to
    # drop the burst's requests would also drop the answers the user sees between keystrokes.
    d = Debounce(floor_ms=0)
    engine = [75] * 20 + [75] * 12
    gaps = [80, 90, 85, 95, 100, 82, 88, 90, 85, 99] * 2 + [30] * 12
    _typed(d, gaps, engine)
    assert d.delay_ms() == 0
    assert d.cost(40)["lost_answers"] > 0 and d.cost(0)["lost_answers"] == 0


def test_debounce_never_exceeds_its_cap():
    d = Debounce(floor_ms=0, cap_ms=100)
    _typed(d, [250] * 10, engine_ms=400)  # the engine is slower than any gap, but waiting past the cap is refused
    assert d.delay_ms() <= 100


def test_cache_serves_retyping_and_typing_through_the_ghost_text():
    c = CompletionCache()
    key = c.key("u", 0, "x = foo.", "\n")
    c.put(key, Cached("bar(1)", {}))
    assert c.get("u", 0, "x = foo.", "\n")[1] == "bar(1)"  # backspace + retype: the same text around the cursor
    assert c.get("u", 0, "x = foo.ba", "\n")[1] == "r(1)"  # typed "ba" of the ghost text: the rest
    assert c.get("u", 0, "x = foo.bz", "\n") is None  # typed something else
    assert c.get("u", 1, "x = foo.", "\n") is None  # settings changed
    c.put(c.key("u", 0, "e", ""), Cached("", {}))
    assert c.peek(c.key("u", 0, "e", "")) is None  # empty answers are not kept


def test_the_cache_is_bounded_in_bytes_and_drops_the_least_recently_used():
    c = CompletionCache(max_bytes=50_000)
    explain = {"records": [{"path": "a.py", "text": "y" * 2000}], "timings_ms": {"engine": 12.5}}
    keys = [c.key("file:///a.py", 0, f"line {i} = ", "\n") for i in range(200)]
    for i, key in enumerate(keys):
        c.put(key, Cached(f"value_{i}" * 20, explain))
        assert c.get("file:///a.py", 0, "line 0 = ", "\n") is not None  # kept in use: never the one dropped
        assert c.used_bytes <= 50_000
    assert 5 < len(c) < 200
    assert c.peek(keys[1]) is None and c.peek(keys[-1]) is not None  # the least recently used went first
    assert c.used_bytes == sum(approx_bytes(k) + approx_bytes(e.text) + approx_bytes(e.explain)
                               for k, (e, _) in c._items.items())
    c.resize(10_000)  # a smaller bound (the setting changed): entries go until the rest fit
    assert c.used_bytes <= 10_000 and c.peek(keys[0]) is not None
    c.put(c.key("u", 0, "huge", ""), Cached("z" * 20_000, {}))  # larger than the whole cache: not kept
    assert c.peek(c.key("u", 0, "huge", "")) is None and c.used_bytes <= 10_000
    c.resize(0)
    assert len(c) == 0 and c.used_bytes == 0


def test_cache_lookups_take_the_text_around_the_cursor():
    c = CompletionCache(prefix_chars=4, suffix_chars=2, max_typed=3)
    text = "abcdefghij"
    assert c.around(text, 8) == ("bcdefgh", "ij")  # 4 + 3 characters back: the typed-through lookups need them
    assert c.around(text, 2) == ("ab", "cd")
    assert c.key("u", 1, *c.around(text, 8)) == ("u", 1, "efgh", "ij")


def test_a_request_record_reports_its_total_time_but_not_its_clock():
    log = RequestLog()
    record = log.start("file:///a.py", "textDocument/inlineCompletion")
    record.finish(now=record.started + 0.25)
    assert record.total_ms == 250.0
    assert "started" not in record.to_json() and record.to_json()["id"] == 1


def test_binary_and_large_documents_are_told_apart():
    assert text_problem("x = 1\n", 10) is None
    assert text_problem("x" * 11, 10) == LARGE
    assert text_problem("x\x00" * 11, 10) == BINARY  # NUL first: a binary gets no completion at all


class _Worker:
    """What Documents sends the engine thread: the buffers it holds, as the engine would."""

    def __init__(self):
        self.buffers: dict[str, str] = {}

    def sync_buffer(self, path, text, edited_line=None):
        self.buffers[path] = text

    def clear_buffer(self, path):
        self.buffers.pop(path, None)


def test_only_the_most_recently_used_documents_feed_the_context_engine():
    workspace, worker = Workspace(None), _Worker()
    docs = Documents(lambda: workspace, worker, max_chars=1000, max_buffers=3)
    uris = [f"file:///w/m{i}.py" for i in range(8)]
    for i, uri in enumerate(uris):
        workspace.put_text_document(types.TextDocumentItem(uri=uri, language_id="python", version=1, text=f"x = {i}\n"))
        docs.opened(uri)
        assert len(worker.buffers) <= 3 and docs.synced == uris[max(0, i - 2) : i + 1]
    # A document past the cap still completes (in-file context); an edit brings it back, the least recent goes.
    assert docs.context_problem(uris[0], "x = 0\n") == UNSYNCED
    assert docs.locate(uris[0], types.Position(0, 2))[1] == 2
    change = types.TextDocumentContentChangePartial(range=types.Range(types.Position(0, 4), types.Position(0, 5)),
                                                    text="9")
    workspace.update_text_document(types.VersionedTextDocumentIdentifier(uri=uris[0], version=2), change)
    docs.changed(types.DidChangeTextDocumentParams(types.VersionedTextDocumentIdentifier(uri=uris[0], version=2),
                                                   [change]))
    assert docs.synced == [uris[6], uris[7], uris[0]] and worker.buffers["/w/m0.py"] == "x = 9\n"
    assert docs.context_problem(uris[0], "x = 9\n") is None and "/w/m5.py" not in worker.buffers
    # Closing frees a place; a document grown too large takes its buffer back.
    docs.closed(uris[7])
    assert docs.synced == [uris[6], uris[0]] and set(worker.buffers) == {"/w/m6.py", "/w/m0.py"}
    workspace.put_text_document(types.TextDocumentItem(uri=uris[6], language_id="python", version=3, text="y" * 2000))
    docs.opened(uris[6])
    assert docs.synced == [uris[0]] and set(worker.buffers) == {"/w/m0.py"}


def test_positions_are_utf16_and_past_the_end_is_an_error():
    doc = TextDocument("file:///a.py", "s = '😀'\nx\n")  # the emoji is 2 UTF-16 code units
    offset, _ = convert.offset_at(doc, types.Position(line=0, character=8))
    assert doc.source[:offset] == "s = '😀'"
    with pytest.raises(convert.PositionError):
        convert.offset_at(doc, types.Position(line=9, character=0))


def test_the_machine_is_called_too_slow_from_the_measured_prefill_speed():
    from repocomplete.lsp_server.completions import slow_machine_advice
    from repocomplete.lsp_server.config import Settings
    from repocomplete.model_runtime.engine import Completion

    settings = Settings(context="repo", context_budget=1024)
    cold = Completion("x", "newline", prompt_tokens=2046, cached_tokens=0, prefill_s=6.5)
    assert slow_machine_advice(cold, settings, "AVX2") == (
        "this CPU (AVX2) reads prompts at 315 tokens/s: a first completion with 2046 prompt tokens takes about 6.5 s. "
        'For faster first completions lower repocomplete.contextBudget (now 1024 tokens) or set repocomplete.context '
        'to "none".'
    )
    # Mostly cached, but the part read shows the same speed: still too slow for a cold start.
    warm = Completion("x", "newline", prompt_tokens=2046, cached_tokens=1900, prefill_s=146 / 315)
    assert "about 6.5 s" in slow_machine_advice(warm, settings, "AVX2")
    assert slow_machine_advice(Completion("x", "newline", prompt_tokens=2046, prefill_s=1.0), settings, "AVX512") is None
    # A keystroke that read a few tokens says nothing about the speed.
    assert slow_machine_advice(Completion("x", "eos", prompt_tokens=2046, cached_tokens=2040, prefill_s=0.5),
                               settings, "AVX2") is None
    infile = slow_machine_advice(cold, settings.replace(context="infile"), "AVX2")
    assert infile.endswith('For faster first completions set repocomplete.context to "none".')


def test_a_slow_machine_is_told_once_and_the_advice_stays_in_the_status(monkeypatch, tmp_path):
    from repocomplete.context_engine.config import ContextConfig
    from repocomplete.lsp_server.config import Settings
    from repocomplete.lsp_server.server import RepocompleteServer
    from repocomplete.model_runtime.config import RuntimeConfig
    from repocomplete.model_runtime.engine import Completion

    told = []
    monkeypatch.setattr(RepocompleteServer, "tell", lambda self, message, kind=None, show=False: told.append(
        (message, show)))
    server = RepocompleteServer(RuntimeConfig(cache_dir=tmp_path), ContextConfig(index_dir=tmp_path), Settings())
    slow = Completion("x", "newline", prompt_tokens=2046, prefill_s=6.5)
    server.completions.check_speed(slow)
    server.completions.check_speed(slow)
    assert len(told) == 1 and told[0][1] is True  # shown, once
    assert "lower repocomplete.contextBudget (now 1024 tokens)" in told[0][0]
    assert server.lifecycle.status_json()["advice"] == told[0][0]


def test_the_engine_thread_runs_in_file_completions_before_pending_buffers():
    import threading

    from repocomplete.lsp_server.worker import BUFFER_IDLE_S, EngineWorker

    order: list[str] = []
    applied = threading.Event()

    class Workspace:
        def set_buffer(self, path, text, edited_line):
            order.append(f"buffer {text}")
            applied.set()

    class Completer:
        model = None

        def workspace_for(self, path, open_missing=False):
            return Workspace()

        def close(self):
            pass

    worker = EngineWorker(Completer())
    gate = threading.Event()
    worker.submit(gate.wait)  # hold the thread so that the buffer and the jobs below queue behind it
    worker.start()
    worker.sync_buffer("/r/a.py", "v2", 3)
    infile = worker.submit(lambda: order.append("in-file completion"), needs_buffers=False)
    repo = worker.submit(lambda: order.append("repo completion"))
    gate.set()
    infile.result(5), repo.result(5)
    # The in-file completion did not wait for the buffer; the repository one saw it.
    assert order == ["in-file completion", "buffer v2", "repo completion"]
    # With no job to read it, a buffer is applied once the thread has been idle a moment.
    applied.clear()
    worker.sync_buffer("/r/a.py", "v3", 4)
    assert applied.wait(5 + BUFFER_IDLE_S) and order[-1] == "buffer v3"
    worker.stop()


def test_the_engine_thread_settles_the_heap_after_a_workspace_and_frees_what_was_dropped_since():
    import gc
    import weakref

    from repocomplete.lsp_server.worker import EngineWorker

    class Loaded:  # in a reference cycle, as a model's or an index's objects often are
        def __init__(self):
            self.me = self

    class Completer:
        model = None

        def __init__(self):
            self.loaded = Loaded()

        def open_workspace(self, root, **kwargs):
            return root

        def close(self):
            pass

    completer = Completer()
    dropped = weakref.ref(completer.loaded)
    worker = EngineWorker(completer)
    worker.start()
    try:
        gc.unfreeze()
        assert worker.open_workspace("/r").result(5) == "/r"
        assert gc.get_freeze_count() > 0 and dropped() is not None  # the survivors are out of the collector's view
        completer.loaded = None  # a model replaced, a workspace closed: garbage, but frozen
        worker.open_workspace("/s").result(5)
        assert dropped() is None  # the next settle collected it
    finally:
        worker.stop()
        gc.unfreeze()


def test_a_settled_heap_is_finalized_at_exit():
    """What gc.freeze kept out of sight is unfrozen at exit: native bindings (triton's nanobind) otherwise report
    every object of theirs as leaked on stderr when the server stops."""
    import subprocess
    import sys

    pytest.importorskip("triton")
    code = "import triton\nfrom repocomplete.lsp_server.worker import settle_heap\nsettle_heap()\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "leaked" not in done.stderr, done.stderr[-500:]
