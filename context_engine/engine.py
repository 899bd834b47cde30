"""The context engine: "the cursor is here" -> the records that matter, packed into a budget, with provenance.

One object per workspace owns the index, the retriever and the neighbours; the command line, the LSP server and
the evaluation harness all ask it the same question (`context`) and turn the answer into prompt parts.

Trust: the workspace's `gate.Gate` decides which files may yield text (buffers included: one the index refuses
reaches neither retrieval nor neighbours), every path is known by one identity (`relative`), and the assembled
context passes a final check (records from refused paths dropped, all text scrubbed of credentials) before it
is packed. A root the gate refuses (missing, a file, /, home, a system folder) raises `gate.WorkspaceError`
before anything is created.

Warm start: what retrieval and the repo map need (retrieval's BM25 index, the graph's per-file inputs) is kept in
a snapshot beside the index (`<index>.warm`, snapshot.py; `config.warm_state`), stamped per file with the sha1 it
was made from and with the index database it belongs to. `build` maps it back, then brings it in line with the
index file by file: only files whose sha1 changed are read again, no unchanged file is opened. The snapshot is
written again when it was missing or unusable (damaged, another format, another database), when files left the
index (nothing of a file the gate now refuses stays in it) or when more than a few changed; `save_state` folds in
every change. It holds token ids and counts, names and paths, never a text, and files on disk only (no buffer).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import threading
import time
from concurrent.futures import CancelledError, Executor, Future, ThreadPoolExecutor, TimeoutError
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.document import Window, cursor_parts
from repocomplete.context_engine.facts import Analyst
from repocomplete.context_engine.gate import Gate, check_workspace_root
from repocomplete.context_engine.neighbours import Neighbours
from repocomplete.context_engine.packing import Packed, RecordTokens, approx_tokens, pack, text_tokens
from repocomplete.context_engine.records import ContextRecord
from repocomplete.context_engine.parts import CursorParts, Snippet
from repocomplete.context_engine.roots import GIVEN, find_root  # noqa: F401 (find_root lived here; still importable)
from repocomplete.context_engine.slow_pool import SlowPool

log = logging.getLogger(__name__)

SLOW_PROVIDERS = ("imports", "typed_holes")  # jedi inference
SLOW_START_S = 30.0  # what a request waiting for jedi allows for a fresh worker process to start
RETRIEVAL_K = 8  # retrieved windows asked for a budget of up to 1024 tokens; a larger budget asks for more
STATE_FORMAT = 1  # the snapshot's layout (retrieval.Retriever.state, repo_map.GraphData.state)
# A warm start re-reads the files changed since the snapshot; past this many it writes the snapshot again.
STATE_FOLD_FILES = 32


@dataclass
class Context:
    packed: Packed
    timings_ms: dict[str, float] = field(default_factory=dict)  # per provider, and "total"
    complete: bool = True  # False: a slow provider missed the deadline (its answer serves a later request)
    root: str | None = None  # the workspace the records come from (resolved)
    root_reason: str | None = None  # why that folder is the workspace (roots.py: "nearest .git", ...)
    notes: list[str] = field(default_factory=list)  # what the explanation should say (a budget reduced to fit)

    @property
    def records(self) -> list[ContextRecord]:
        return self.packed.records


class ContextEngine:
    def __init__(
        self,
        root: Path,
        config: ContextConfig | None = None,
        count_tokens: Callable[[str], int] = approx_tokens,
        slow_executor: Executor | None = None,  # where the jedi providers run (default: a process)
        record_tokens: RecordTokens | None = None,
    ):
        """count_tokens: tokens of a text; record_tokens(path, text): the tokens a record takes in the prompt, its
        header and separator included (default: count_tokens of its text). The pipeline sets the model's
        (`set_record_tokens`), so that a budget is tokens of the prompt."""
        from repocomplete.context_engine.index import RepoIndex
        from repocomplete.context_engine.repo_map import GraphData
        from repocomplete.context_engine.retrieval import Retriever

        given = check_workspace_root(root)  # raises WorkspaceError before anything is created
        self.root = given.resolve()
        self.root_reason = GIVEN  # why this folder: set by whoever chose it (roots.locate_root, --root, the editor)
        self.config = config or ContextConfig()
        self.config.validate()
        self.count_tokens = count_tokens
        self.record_tokens = record_tokens or text_tokens(count_tokens)
        self.gate = Gate(given, self.config)
        self.index = RepoIndex(self.root, self.config, gate=self.gate)
        self.retriever = Retriever(self.config, read_text=self.index.text, read_window=self.index.window)
        self.graph_data = GraphData()  # the repo map's inputs per file
        self.state_path = self.index.db_path.with_suffix(".warm")
        self._state_loaded = False  # the snapshot was read (or found unusable) once
        self._saved: dict[str, str] | None = None  # the retriever's stamps as the snapshot on disk has them
        self._state_lock = threading.RLock()  # a sync (snapshot, then file by file) and single-file refreshes
        self.neighbours = Neighbours()
        self._graph = None  # (graph_data.version, RepoGraph)
        self._graph_lock = threading.Lock()
        self._graph_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="repocomplete-graph")
        self._graph_job: Future | None = None
        # jedi runs in a worker process of its own, one call at a time, each within its budget (slow_pool.py).
        budget = self.config.slow_provider_budget_ms
        self._slow_pool = slow_executor or SlowPool(None if budget is None else budget / 1000,
                                                    initializer=lower_priority)
        self._slow_results: dict[tuple, Future] = {}
        # Monitor-guided decoding's analysis (facts.py), on the same jedi worker, cached per position and text.
        self.analyst = Analyst(self.root, self._slow_pool, self.config)
        self._map_cache: dict[tuple[str, int], list[ContextRecord]] = {}
        self._line_cache: tuple[tuple, Context] | None = None

    # -- the workspace -------------------------------------------------------------------------------------

    def build(self, progress: bool = False, on_progress: Callable[[int, int], None] | None = None,
              cancelled: Callable[[], bool] | None = None):
        """Index the workspace and prepare the retriever and the repo map; `cancelled()` True stops it between two
        files (stats.cancelled: the index holds the files done, the rest waits for the next build).

        Warm (a snapshot that matches the index): no unchanged file is read, see the module's docstring."""
        stats = self.index.build(progress=progress, on_progress=on_progress, cancelled=cancelled)
        if stats.cancelled:
            return stats
        if self.config.watch:
            self.start_watching()
        self._sync()
        # Pay the one-off costs now rather than in the first completion: the BM25 index and the reference graph.
        self.retriever.build()
        self._build_graph()
        return stats

    def save_state(self) -> bool:
        """Bring the snapshot up to date with every change now (the `index` command does); False when it is not
        written: `config.warm_state` off, an editor buffer in the state, or a write error (logged)."""
        return self._sync(fold=True)

    def _sync(self, fold: bool = False) -> bool:
        """Retrieval and the repo map in line with the index: from the snapshot the first time, then file by file
        (only files whose sha1 differs are read); the snapshot written again as the module's docstring says."""
        with self._state_lock:
            first = not self._state_loaded
            self._state_loaded = True
            restored = first and self.config.warm_state and self._load_state()
            stamps = self.index.stamps()
            have_r, have_g = self.retriever.stamps(), self.graph_data.stamps()
            changed = [p for p, sha1 in stamps.items() if have_r.get(p) != sha1 or have_g.get(p) != sha1]
            gone = sorted((have_r.keys() | have_g.keys()) - stamps.keys())
            for rel in gone + changed:
                self._refresh(rel)
            if not self.config.warm_state:
                return False
            now = self.retriever.stamps()
            read = sum(1 for p in changed if now.get(p) == stamps[p])  # (a file that cannot be read is not counted)
            if not ((first and not restored) or gone or read > STATE_FOLD_FILES or (fold and now != self._saved)):
                return fold and self._saved is not None
            return self._save_state(stamps)

    def _state_identity(self) -> dict:
        return {"format": STATE_FORMAT, "code": _state_code(), "index": self.index.instance, "root": str(self.root)}

    def _load_state(self) -> bool:
        """Retrieval and the repo map from the snapshot; False (both left empty) when there is none or it is unusable:
        damaged, of another format or code, or made with another index database."""
        from repocomplete.context_engine import snapshot
        from repocomplete.context_engine.repo_map import GraphData
        from repocomplete.context_engine.retrieval import Retriever

        t = time.perf_counter()
        try:
            meta, arrays = snapshot.load(self.state_path)
        except snapshot.SnapshotError as e:
            if os.path.lexists(self.state_path):
                log.info("snapshot %s not used (%s): rebuilding it", self.state_path, e)
            return False
        try:
            if meta.get("identity") != self._state_identity():
                raise snapshot.SnapshotError("made by another version, or for another index")

            def part(prefix: str) -> dict:
                return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

            self.graph_data.restore(meta["graph"], part("g."))
            saved = self.retriever.restore(meta["retrieval"], part("r."))
        except Exception as e:  # noqa: BLE001 - damaged, foreign or from another version: a cache, start over
            log.info("snapshot %s not used (%s: %s): rebuilding it", self.state_path, type(e).__name__, e)
            self.retriever = Retriever(self.config, read_text=self.index.text, read_window=self.index.window)
            self.graph_data = GraphData()
            return False
        self._saved = saved
        log.debug("snapshot %s loaded in %.3f s", self.state_path, time.perf_counter() - t)
        return True

    def _save_state(self, stamps: dict[str, str]) -> bool:
        """Write the snapshot (files on disk only, each as the index holds it now); False when it cannot be."""
        from repocomplete.context_engine import snapshot
        from repocomplete.context_engine.gate import private_dir

        t = time.perf_counter()
        retrieval, graph = self.retriever.state(), self.graph_data.state()
        if retrieval is None or graph is None:
            return False  # an editor buffer is part of the state: the next start folds the changes in
        r_stamps = self.retriever.stamps()  # (an indexed file that cannot be read now is left out: read next time)
        if any(stamps.get(p) != sha1 for p, sha1 in r_stamps.items()) or self.graph_data.stamps() != stamps:
            log.debug("snapshot not written: files changed while it was made")  # the next start catches up
            return False
        arrays = {f"r.{k}": v for k, v in retrieval[1].items()} | {f"g.{k}": v for k, v in graph[1].items()}
        meta = {"identity": self._state_identity(), "retrieval": retrieval[0], "graph": graph[0]}
        try:
            private_dir(self.state_path.parent)
            size = snapshot.save(self.state_path, meta, arrays)
        except OSError as e:
            log.warning("snapshot %s not written: %s", self.state_path, e)
            return False
        self._saved = r_stamps
        log.debug("snapshot %s: %d bytes in %.3f s", self.state_path, size, time.perf_counter() - t)
        return True

    def _refresh(self, rel: str) -> None:
        """Retrieval and the repo map's data for one path, as the index has it now: the buffer, else the file on
        disk, else nothing (gone, refused, not indexable)."""
        with self._state_lock:  # (the watcher's thread waits for a sync in progress)
            source = self.index.source(rel)
            if source is None:
                self.retriever.remove_document(rel)
            else:
                self.retriever.add_document(rel, source[0], stamp=source[1])
            refs = self.index.references(rel)
            if refs is None:
                self.graph_data.set_file(rel, None)
            else:
                self.graph_data.set_file(rel, refs[0], refs[1], stamp=refs[2])

    def file_changed(self, path: str) -> None:
        """A file changed on disk (or was created): refresh the index, the retriever and the repo map's data."""
        rel = self.index.relative(path)
        if rel is None:
            return
        self.index.update_file(rel)
        self._refresh(rel)

    def file_removed(self, path: str) -> None:
        rel = self.index.relative(path)
        if rel is None:
            return
        self.index.remove_file(rel)
        self._refresh(rel)

    def set_buffer(self, path: str, text: str, edited_line: int | None = None) -> None:
        """An unsaved editor buffer: it overrides the file on disk until cleared. A buffer the gate refuses (a
        secret, an ignored file, a symlink out of the root, outside the root) feeds nothing."""
        rel = self.index.relative(path)
        if rel is None:
            return
        if not self.index.set_buffer(rel, text):
            self.neighbours.close(rel)
            self._refresh(rel)
            return
        self._refresh(rel)  # the repo map catches up on a worker thread
        text = self.index.buffer_text(rel)  # as the index keeps it: scrubbed
        if edited_line is None:
            self.neighbours.open(rel, text)
        else:
            self.neighbours.record_edit(rel, edited_line, text)

    def clear_buffer(self, path: str) -> None:
        rel = self.index.relative(path)
        if rel is None:
            return
        self.index.clear_buffer(rel)
        self.neighbours.close(rel)
        self._refresh(rel)

    def start_watching(self) -> None:
        """Follow the disk: the index updates itself (watchdog); retrieval and the repo map follow the paths it
        touched."""
        self.index.start_watching(on_change=self._on_disk_change)

    def _on_disk_change(self, paths: list[str]) -> None:
        for path in paths:
            self._refresh(path)

    def close(self) -> None:
        self._slow_pool.shutdown(wait=False, cancel_futures=True)
        self._graph_pool.shutdown(wait=False, cancel_futures=True)
        self.index.stop_watching()
        self.index.close()

    def set_record_tokens(self, record_tokens: RecordTokens) -> None:
        """Measure records with another counter from now on (another model was loaded): what was packed with the
        old one is forgotten."""
        self.record_tokens = record_tokens
        self._map_cache.clear()
        self._line_cache = None

    # -- the question --------------------------------------------------------------------------------------

    def relative(self, path: str | Path) -> str:
        """The one identity of a file (the gate's); a file outside the root goes by its name."""
        rel = self.gate.rel(path)
        return rel if rel is not None else Path(path).name

    def context(
        self,
        path: str,
        text: str,
        line: int,
        col: int,
        budget: int | None = None,
        own_window: tuple[int, int] | None = None,
        providers: tuple[str, ...] | None = None,
        draft: str | None = None,
        wait: bool = False,
    ) -> Context:
        """Records for a cursor at 1-based (line, col) of `text` (the file at repo-relative `path`).

        draft: a first completion at the cursor (RepoCoder's iterative step): retrieval then queries with it, and
        where its first line reaches into an object (`table.add_row(`), typed holes answer for the hole after
        that receiver (`table.`): its type's members and its class's summary, focused on the member drafted.
        wait: ask the slow providers afresh and wait for them, whatever the configured deadline."""
        rel = self.relative(path)
        budget = self.config.budget_tokens if budget is None else budget
        if self.gate.rel(path) is not None and self.gate.reason_rel(rel) == "symlink outside the root":
            # A link out of the workspace yields nothing (nor does the text behind it query anything).
            return Context(pack({}, budget, self.config.quotas, record_tokens=self.record_tokens), {"total": 0.0}, True,
                           str(self.root), self.root_reason)
        providers = providers or self.config.providers
        prefix = "\n".join(text.split("\n")[: line - 1] + [text.split("\n")[line - 1][: col - 1]]) if text else ""
        timings: dict[str, float] = {}
        by_provider: dict[str, list[ContextRecord]] = {}
        t_all = time.perf_counter()
        deadline = None if wait else self.config.slow_provider_deadline_ms
        wait_s = self._slow_wait_s() if deadline is None else None
        complete = True
        # jedi-backed providers can take hundreds of ms on a file's first visit: they run on their own thread
        # and, past the deadline, this request goes without them; their answer serves the next keystrokes.
        hole = hole_key(rel, line, prefix)
        futures = {}
        for kind in providers:
            if kind in SLOW_PROVIDERS and _language(rel) == "python":
                at = draft_receiver(text, line, col, draft) if kind == "typed_holes" and draft else None
                if at is not None:  # the hole after the draft's receiver: its type's members, its class's summary
                    text_d, col_d = at
                    drafted = text_d.split("\n")[line - 1][col - 1: col_d - 1]
                    futures[kind] = self._slow(kind, hole_key(rel, line, prefix + drafted), rel, text_d, line, col_d,
                                               fresh=wait)
                else:
                    futures[kind] = self._slow(kind, hole, rel, text, line, col, fresh=wait)
        for kind in providers:
            if kind in futures:
                continue
            t = time.perf_counter()
            if kind == "retrieval" and draft:
                by_provider[kind] = self._retrieve(rel, prefix, line, draft, budget)
            else:
                by_provider[kind] = self._safe_provide(kind, rel, text, prefix, line, col, budget, own_window)
            timings[kind] = round((time.perf_counter() - t) * 1000, 2)
        for kind, future in futures.items():
            t = time.perf_counter()
            limit = wait_s if deadline is None else deadline / 1000
            remaining = None if limit is None else max(0.0, limit - (t - t_all))
            try:
                by_provider[kind] = future.result(timeout=remaining)
            except (TimeoutError, CancelledError):  # late (or dropped for a request that waits): asked again later
                by_provider[kind] = []
                complete = False
            except Exception as e:  # over its budget, its worker gone: this hole goes without it
                log.info("provider %s on %s:%d: %s: %s", kind, rel, line, type(e).__name__, e)
                by_provider[kind] = []
            timings[kind] = round((time.perf_counter() - t) * 1000, 2)
        # The final check: whatever route a record came by, a path the gate refuses yields nothing, and the text
        # of the rest is scrubbed of credentials.
        by_provider = {kind: self.gate.records(records) for kind, records in by_provider.items()}
        window = (rel, *own_window) if own_window else None
        packed = pack(by_provider, budget, self.config.quotas, own_window=window, record_tokens=self.record_tokens)
        timings["total"] = round((time.perf_counter() - t_all) * 1000, 2)
        return Context(packed, timings, complete, str(self.root), self.root_reason)

    def _safe_provide(self, kind, rel, text, prefix, line, col, budget, window=None) -> list[ContextRecord]:
        try:
            return self._provide(kind, rel, text, prefix, line, col, budget, window)
        except Exception as e:  # a provider's failure costs its records, never the completion
            log.warning("provider %s failed on %s:%d: %s: %s", kind, rel, line, type(e).__name__, e)
            return []

    def _slow_wait_s(self) -> float | None:
        """How long a request that waits for jedi waits at most: the call in progress and its own, each within its
        budget, and a fresh process's start (None: jedi has no budget)."""
        budget = self.config.slow_provider_budget_ms
        return None if budget is None else 2 * budget / 1000 + SLOW_START_S

    def _slow(self, kind, hole, rel, text, line, col, fresh: bool = False) -> Future:
        """The pending or finished answer of a slow provider for this hole (one per hole, newest kept)."""
        key = (kind, hole)
        future = None if fresh else self._slow_results.get(key)
        if future is None or future.cancelled():
            if fresh:  # a request that waits goes first: what is queued for other holes is dropped
                for (_, other_hole), other in self._slow_results.items():
                    if other_hole != hole:
                        other.cancel()
            future = self._slow_pool.submit(slow_provider, kind, str(self.root), rel, text, line, col,
                                            self.config.infer_budget_ms, self.config)
            self._slow_results[key] = future
            while len(self._slow_results) > 64:
                self._slow_results.pop(next(iter(self._slow_results))).cancel()
        return future

    def _provide(self, kind: str, rel: str, text: str, prefix: str, line: int, col: int, budget: int,
                 window: tuple[int, int] | None = None):
        language = _language(rel)
        if kind in SLOW_PROVIDERS and language == "python":
            return slow_provider(kind, str(self.root), rel, text, line, col, self.config.infer_budget_ms,
                                 self.config)
        if kind == "imports":
            return self._index_imports(rel)
        if kind == "typed_holes":
            return []  # jedi is the only type inference here: Python only
        if kind == "retrieval":
            return self._retrieve(rel, prefix, line, budget=budget)
        if kind == "repo_map":
            return self._repo_map(rel, int(budget * self.config.quotas.get("repo_map", 0.1)))
        if kind == "outline":
            return self._outline(rel, line, window or (1, line), int(budget * self.config.quotas.get("outline", 0.1)))
        if kind == "neighbours":
            return self.neighbours.records(rel, line)
        raise ValueError(f"unknown provider {kind!r}")

    def _retrieve(self, rel: str, prefix: str, line: int, draft: str | None = None,
                  budget: int | None = None) -> list[ContextRecord]:
        from repocomplete.context_engine.retrieval import query_text_for

        # Enough windows to fill the budget when the other providers have little: 8 up to 1024 tokens, one more
        # per 128 tokens past that (a 20-line window is some 150-250 tokens).
        k = max(RETRIEVAL_K, (budget or 0) // 128)
        exclude = (rel, max(1, line - self.config.window_lines), line)  # the cursor's own window
        if draft:
            return self.retriever.query_iterative(prefix, draft, k=k, exclude=exclude)
        query = query_text_for(prefix, self.config.query_lines)
        return self.retriever.query(query, k=k, exclude=exclude) if query.strip() else []

    def _repo_map(self, rel: str, budget: int) -> list[ContextRecord]:
        # The graph is made once per state of the repo map's data; each file then costs one personalised PageRank.
        # After a change the old graph serves while the new one is made on a worker thread (the map changes slowly).
        from repocomplete.context_engine.repo_map import fit_graph

        version, graph = self._current_graph()
        key = (rel, budget, version)
        if key not in self._map_cache:
            if len(self._map_cache) > 256:
                self._map_cache.clear()
            self._map_cache[key] = fit_graph(graph, rel, budget, record_tokens=self.record_tokens)
        return self._map_cache[key]

    def _build_graph(self) -> None:
        graph = self.graph_data.graph(self.index.definitions_for)
        with self._graph_lock:
            if self._graph is None or self._graph[0] < graph.version:
                self._graph = (graph.version, graph)

    def _current_graph(self) -> tuple:
        """(version, RepoGraph): the newest made; a newer one is started in the background if the data changed."""
        if self._graph is None:
            self._build_graph()
        elif self._graph[0] != self.graph_data.version and (self._graph_job is None or self._graph_job.done()):
            self._graph_job = self._graph_pool.submit(self._build_graph)
        return self._graph

    def _outline(self, rel: str, line: int, window: tuple[int, int], budget: int) -> list[ContextRecord]:
        """The current file's definitions outside the window the model sees (as the index has the buffer)."""
        from repocomplete.context_engine.outline import outline

        symbols = self.index.symbols(rel)
        if symbols is None:
            return []
        return outline(symbols.definitions, rel, line, window, budget, self.record_tokens)

    def _index_imports(self, rel: str) -> list[ContextRecord]:
        """Languages without a type checker here: imported names that the index defines, as signatures."""
        symbols = self.index.symbols(rel)
        if symbols is None:
            return []
        records = []
        for imp in symbols.imports:
            last = re.split(r"::|[./]", imp.module.rstrip("/"))[-1]  # a.b, crate::a::b, net/http
            names = [local for _, local in imp.names if local != "*"] or [imp.alias or last]
            for name in names:
                for d in self.index.definitions(name=name)[:3]:
                    if d.path == rel:
                        continue
                    records.append(
                        ContextRecord(d.signature + (f"\n{d.doc}" if d.doc else ""), d.path, d.start_line, d.end_line,
                                      1.0, "imports", f"`{name}` imported from {imp.module} (line {imp.line})")
                    )
        return records

    def wait_background(self, timeout: float = 10.0) -> None:
        """Wait for the work started in the background (the repo map's graph, the jedi providers' late answers),
        so that the next request sees its results."""
        if self._graph_job is not None:
            self._graph_job.result(timeout)
        for future in list(self._slow_results.values()):
            if not future.cancelled():
                future.exception(timeout)  # a late answer, or a call over its budget: either way it has ended

    def settle(self) -> None:
        """Bring the workspace up to date with its buffers now, and forget what was cached per cursor, so that the
        next context depends on the repository and the buffers only, never on timing or on earlier requests
        (evaluation: each task sees the same context whichever tasks came before it)."""
        self.retriever.build(full=True)  # no overlay whose statistics depend on which files were edited earlier
        self._build_graph()  # the repo map's graph now, not on a worker thread
        self._map_cache.clear()
        self._line_cache = None
        self._slow_results.clear()  # keyed by the text above the line only

    # -- prompt parts --------------------------------------------------------------------------------------

    def prompt_parts(
        self, path: str, text: str, offset: int, window: Window | None = None, budget: int | None = None,
        draft: str | None = None, room: Callable[[CursorParts, int], tuple[int, str] | None] | None = None,
        suffix_lines: int | None = None,
    ) -> tuple[CursorParts, Context]:
        """The current file's window plus packed repository context, as the model runtime renders them.

        room(parts without context, budget): the most tokens the context may take beside that window in the
        model's prompt, and why (None: the budget fits); a budget over it is reduced to it, with a note in
        `Context.notes`. suffix_lines: how many lines after the cursor's the model's template shows of the suffix
        (0 for a left-to-right model; None: all of it), so that context is not dropped as shown when it is not."""
        rel = self.relative(path)
        parts = cursor_parts(text, offset, mode="infile", path=rel, window=window)
        line_start = text.rfind("\n", 0, offset) + 1
        line = text[:offset].count("\n") + 1
        col = offset - line_start + 1
        first_line = line - parts.prefix.count("\n")
        after = parts.suffix.count("\n")  # the lines after the cursor's that the window holds
        last_line = line + (after if suffix_lines is None else min(after, suffix_lines))
        parts.prefix = self.gate.scrub(parts.prefix, rel)  # the current file's credentials stay home too
        parts.suffix = self.gate.scrub(parts.suffix, rel)
        parts.repo_name = self.root.name
        requested = self.config.budget_tokens if budget is None else budget
        note = None
        bound = room(parts, requested) if room is not None else None
        if bound is not None and bound[0] < requested:
            budget = max(0, bound[0])
            note = f"context budget reduced from {requested} to {budget} tokens: {bound[1]}"
        # While the user types a name, the context stays as it was: the prompt's head is then unchanged from
        # keystroke to keystroke and the prefix-KV cache reuses all of it. A new line, or a character that opens
        # a new hole (`obj.`, `f(`, `a, `, `x = `), asks the providers again.
        key = (hole_key(rel, line, text[:offset]), budget, self.config.providers, draft, first_line, last_line)
        if self._line_cache and self._line_cache[0] == key:
            ctx = self._line_cache[1]
        else:
            ctx = self.context(rel, text, line, col, budget=budget, own_window=(first_line, last_line), draft=draft)
            if ctx.complete:  # an incomplete one is asked again, to pick up the late provider's answer
                self._line_cache = (key, ctx)
        if note is not None:
            ctx = dataclasses.replace(ctx, notes=[*ctx.notes, note])  # the cached one stays as it was
        parts.context = [Snippet(r.path, r.text) for r in self.gate.records(ctx.records)]
        return parts, ctx


_state_code_hash: str | None = None


def _state_code() -> str:
    """What the snapshot's contents were computed with: the code that tokenises, scrubs and lays them out."""
    global _state_code_hash
    if _state_code_hash is None:
        from repocomplete.context_engine import repo_map, retrieval, scrub, snapshot, sparse

        h = hashlib.sha1()
        for module in (sparse, retrieval, scrub, repo_map, snapshot):
            try:
                h.update(Path(module.__file__).read_bytes())
            except OSError:
                h.update(module.__name__.encode())
        _state_code_hash = h.hexdigest()[:16]
    return _state_code_hash


def slow_provider(kind: str, root: str, rel: str, text: str, line: int, col: int,
                  infer_budget_ms: float | None = 120.0, config: ContextConfig | None = None) -> list[ContextRecord]:
    """The jedi providers, as a module-level function so a worker process can run them: behind the workspace's
    gate (jedi reads no refused file), with jedi's cache in ours; a huge buffer reaches jedi as a view."""
    from repocomplete.context_engine import jedi_support, python_imports, typed_holes
    from repocomplete.context_engine.jedi_support import BufferView, Unanalysable

    config = config or ContextConfig()
    try:
        jedi_support.use_cache_dir(config.jedi_cache_dir)
        view = BufferView.of(text, line, col)  # a huge buffer: its imports and the lines around the cursor
        with jedi_support.gated(_worker_gate(root, config)) as gate:
            if kind == "imports":
                records = python_imports.import_context(Path(root), Path(root) / rel, view.text,
                                                        cursor=(view.line, view.col - 1))
            else:
                records = typed_holes.typed_hole_context(Path(root), Path(root) / rel, view.text, view.line,
                                                         view.col, infer_budget_ms=infer_budget_ms)
            return gate.records(view.to_buffer(records, rel))
    except Exception as e:  # a provider's failure costs its records, never the completion
        level = logging.INFO if isinstance(e, Unanalysable) else logging.WARNING
        log.log(level, "provider %s failed on %s:%d: %s: %s", kind, rel, line, type(e).__name__, e)
        return []


_worker_gates: dict[tuple[str, str], Gate] = {}


def _worker_gate(root: str, config: ContextConfig) -> Gate:
    """One gate per workspace in the jedi worker (its compiled ignore files are cached)."""
    key = (root, repr(config))
    if key not in _worker_gates:
        if len(_worker_gates) > 8:
            _worker_gates.clear()
        _worker_gates[key] = Gate(root, config)
    return _worker_gates[key]


def lower_priority() -> None:
    """In the jedi worker process: yield the cores to the model. On a 2-core machine its inference for the next
    keystroke otherwise takes a core from the decode threads of this one, and OpenMP threads that wait on a
    descheduled sibling stall the whole step."""
    try:
        os.nice(10)
    except OSError:  # not permitted here: run at the normal priority
        pass


# The last `receiver.` of a drafted line: a name, call or subscript, then a dot (not a number's, not `...`).
_DRAFT_RECEIVER = re.compile(r"[A-Za-z_)\]][\w]*\.(?=[A-Za-z_]|$)")


def draft_receiver(text: str, line: int, col: int, draft: str) -> tuple[str, int] | None:
    """The buffer with the draft's first line written at the cursor (1-based line, col), and the column just
    after that line's last receiver dot; None where the drafted line reaches into no object."""
    first = draft.split("\n", 1)[0]
    ends = [m.end() for m in _DRAFT_RECEIVER.finditer(first)]
    if not ends:
        return None
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        return None
    row = lines[line - 1]
    column = max(0, min(col - 1, len(row)))
    lines[line - 1] = row[:column] + first + row[column:]
    return "\n".join(lines), column + ends[-1] + 1


def hole_key(rel: str, line: int, prefix: str) -> tuple:
    """What the context depends on while the user types: the file, the line, the text above it, and the line up
    to the last character that opens a hole (`obj.`, `f(`, `a, `, `x = `, `a[`)."""
    line_start = prefix.rfind("\n") + 1
    line_text = prefix[line_start:]
    opened = max(line_text.rfind(c) for c in ".(,=[") + 1
    return (rel, line, hash(prefix[:line_start]), line_text[:opened])


def _language(path: str) -> str | None:
    from repocomplete.context_engine.parsing import language_for

    return language_for(path)
