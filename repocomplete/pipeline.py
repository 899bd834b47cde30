"""The one pipeline from "the cursor is here" to a completion: the context engine's prompt parts, then the model.

The command line, the LSP server, the evaluation harness and the benchmarks all complete through a `Completer`;
none of them assembles prompts of its own. A completer holds one model engine (local `Engine` or `RemoteEngine`)
and one `ContextEngine` per workspace root, opened on first use (or ahead of time by `open_workspace`, which is
what an editor's server does on its worker thread while it shows indexing progress).

Budgets are the model's tokens: the completer gives its context engines the model's counter
(`model_runtime.tokens.PromptTokens`: a record costs what it adds to the prompt, header and separator included),
and bounds the context so that it, the current file's window and the completion fit the model's window (a budget
that does not fit is reduced, and the explanation says so). Without a tokenizer (no model yet, an endpoint) the
context engine's calibrated estimate counts.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.document import CONTEXT_MODES, Window, cursor_parts
from repocomplete.context_engine.engine import Context, ContextEngine
from repocomplete.context_engine.errors import Cancelled, InputError
from repocomplete.context_engine.packing import RecordTokens, approx_tokens, text_tokens
from repocomplete.context_engine.parts import CursorParts
from repocomplete.context_engine.roots import locate_root
from repocomplete.model_runtime.engine import CancelToken, Completion, CompletionRequest, encode_prompt
from repocomplete.model_runtime.templates import (ContextItem, FimTemplate, PromptParts, model_view, render,
                                                  suffix_lines_shown)
from repocomplete.model_runtime.tokens import PromptTokens, model_window, prompt_limit

# A budget reduced to fit the model's window is rounded down to a multiple of this, so that it stays the same
# while the user types (and the context with it: the prefix-KV cache keeps the prompt's head).
BUDGET_STEP = 128
MAX_ANALYSTS = 4  # the monitors' jedi processes kept for files outside any workspace (one per project root)


def model_parts(parts: CursorParts) -> PromptParts:
    """The context engine's parts for a cursor, as the model runtime's prompt type."""
    return PromptParts(parts.prefix, parts.suffix, parts.path, [ContextItem(c.path, c.text) for c in parts.context],
                       parts.repo_name)


def cursor_prompt(text: str, offset: int, mode: str = "infile", path: str = "", window: Window | None = None) -> PromptParts:
    """The prompt for a cursor without repository context ("none" or "infile"), as benchmarks build it."""
    return model_parts(cursor_parts(text, offset, mode=mode, path=path, window=window))


class ModelTokens:
    """The counter of one model, built on first use: its tokenizer over records as its template renders them."""

    def __init__(self, model):
        self.model = model
        self._counter: PromptTokens | None | bool = None

    def counter(self) -> PromptTokens | None:
        """The model's counter; None where its tokenizer is unknown (an endpoint, whose template its server would
        have to be asked for, or a test double): records then cost the estimate of their text."""
        if self._counter is None:
            tokenizer = getattr(self.model, "tokenizer", None)
            template = getattr(self.model, "template", None) if tokenizer is not None else None
            self._counter = PromptTokens(template, tokenizer) if template is not None else False
        return self._counter or None

    def record(self, path: str, text: str) -> int:
        counter = self.counter()
        return approx_tokens(text) if counter is None else counter.item(path, text)

    def suffix_lines(self) -> int | None:
        """The lines after the cursor's that the model's template shows (None: all, or the template is unknown)."""
        template = getattr(self.model, "template", None)
        return suffix_lines_shown(template) if isinstance(template, FimTemplate) else None

    def room(self, parts: CursorParts, budget: int, max_new_tokens: int | None) -> tuple[int, str] | None:
        """The tokens left for repository context beside the current file's window in the model's prompt (rounded
        down to BUDGET_STEP), and why; None where the budget surely fits (or the model's tokenizer is unknown: an
        endpoint)."""
        counter = self.counter()
        model = self.model
        loaded = getattr(model, "loaded", None)
        config = getattr(model, "config", None)
        if counter is None or loaded is None or config is None:
            return None
        max_new = config.max_new_tokens if max_new_tokens is None else max_new_tokens
        limit = prompt_limit(model_window(loaded.model), config.max_context_tokens, max_new)
        template = model.template
        shown = model_view(template, model_parts(parts))
        # A token covers at least one byte of the text (two more for a start token and a leading space marker):
        # a window that small leaves the budget room without tokenizing it.
        if budget + len(render(template, shown, model.order).encode()) + 2 <= limit.tokens:
            return None
        infile = len(encode_prompt(counter.tokenizer, template, shown, model.order)[1].ids)
        left = max(0, limit.tokens - infile) // BUDGET_STEP * BUDGET_STEP
        return left, f"{limit.why}, and the current file's window takes {infile} (context may take {left})"


@dataclass
class CompletionOptions:
    context: str = "repo"  # none | infile | repo
    multiline: bool | None = None  # None: the runtime config's
    max_new_tokens: int | None = None  # None: the runtime config's
    budget: int | None = None  # None: the context config's
    iterative: bool = False  # RepoCoder: complete, retrieve again with the draft, complete again
    monitors: tuple[str, ...] | None = None  # monitor-guided decoding's monitors; None: the runtime config's
    candidates: int | None = None  # alternative completions (RuntimeConfig.candidates); None: the runtime config's

    def validate(self) -> None:
        if self.context not in CONTEXT_MODES:
            raise InputError(f"unknown context mode {self.context!r}; expected one of {', '.join(CONTEXT_MODES)}")
        if self.budget is not None and self.budget < 0:
            raise InputError(f"context budget must be >= 0, got {self.budget}")
        if self.monitors:
            from repocomplete.monitors import MONITORS

            unknown = [m for m in self.monitors if m not in MONITORS]
            if unknown:
                raise InputError(f"unknown monitors {', '.join(unknown)}; expected {', '.join(MONITORS)}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise InputError(f"max tokens must be >= 1, got {self.max_new_tokens}")
        if self.candidates is not None and not 1 <= self.candidates <= 8:
            raise InputError(f"candidates must be in [1, 8], got {self.candidates}")


@dataclass
class CompletionResult:
    completion: Completion
    parts: PromptParts
    context: Context | None  # None without repository context
    context_ms: float  # assembling the prompt parts
    engine_ms: float  # context + generation, as the completer saw it
    # Every candidate, the completion first (only it where one was asked for or the model has no candidates).
    candidates: list[Completion] = field(default_factory=list)

    def __post_init__(self):
        if not self.candidates:
            self.candidates = [self.completion]

    @property
    def text(self) -> str:
        return self.completion.text


@dataclass
class Cursor:
    """One completion to make: a file (absolute, or relative to the working directory), its text, an offset."""

    path: str
    text: str
    offset: int


class Completer:
    def __init__(
        self,
        model,
        context_config: ContextConfig | None = None,
        window: Window | None = None,
        make_context_engine: Callable[[Path, ContextConfig], ContextEngine] | None = None,
    ):
        self.context_config = context_config or ContextConfig()
        self.context_config.validate()
        self.window = window
        self._make = make_context_engine or (lambda root, config: ContextEngine(root, config))
        self._workspaces: dict[Path, ContextEngine] = {}
        # The monitors' analysis where no workspace is open (in-file context), one jedi process per project root:
        # the MAX_ANALYSTS most recently used (an editor touching files of many projects keeps few processes).
        self._analysts: OrderedDict[Path, object] = OrderedDict()
        self._analysis_roots: set[Path] = set()  # roots given for that analysis (else the file's repository)
        self._lock = threading.RLock()
        self.model = model  # model_runtime.engine.Engine or model_runtime.remote.RemoteEngine (None: none yet)

    @property
    def model(self):
        return self._model

    @model.setter
    def model(self, model) -> None:
        """Another model (the editor's server loads one, or another): its counter measures the context from now."""
        self._model = model
        self._tokens = ModelTokens(model)
        with self._lock:
            engines = list(self._workspaces.values())
        for engine in engines:
            engine.set_record_tokens(self.record_tokens())

    def record_tokens(self) -> RecordTokens:
        """What a context record costs in the current model's prompt (the calibrated estimate without a model)."""
        return self._tokens.record if self._model is not None else text_tokens(approx_tokens)

    # -- workspaces ----------------------------------------------------------------------------------------

    def open_workspace(
        self, root: str | Path, progress: bool = False, on_progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None, reason: str | None = None,
    ) -> ContextEngine:
        """The context engine of a workspace root, indexed on first use (cached and live afterwards).

        on_progress(files done, files in all) follows the indexing (an editor's progress bar); cancelled() True
        stops it between two files and raises `Cancelled` (the workspace is not opened; its index keeps the files
        done, and the next open goes on from them). reason: why this folder is the workspace (the engine's
        `root_reason`, shown with its context; the first opener's stays)."""
        root = Path(root).resolve()
        with self._lock:
            engine = self._workspaces.get(root)
            if engine is None:
                engine = self._make(root, self.context_config)
                engine.set_record_tokens(self.record_tokens())
                if reason is not None:
                    engine.root_reason = reason
                stats = engine.build(progress=progress, on_progress=on_progress, cancelled=cancelled)
                if getattr(stats, "cancelled", False):
                    engine.close()
                    raise Cancelled(f"indexing {root} stopped")
                self._workspaces[root] = engine
            return engine

    def close_workspace(self, root: str | Path) -> None:
        with self._lock:
            engine = self._workspaces.pop(Path(root).resolve(), None)
            analyst = self._analysts.pop(Path(root).resolve(), None)
            self._analysis_roots.discard(Path(root).resolve())
        if engine is not None:
            engine.close()
        if analyst is not None:
            analyst.executor.shutdown(wait=False, cancel_futures=True)

    def add_analysis_root(self, root: str | Path) -> None:
        """The project root of the files under it for the monitors' analysis, where no workspace is open (in-file
        context: the evaluation knows its task's repository; without it, `roots.locate_root` decides)."""
        with self._lock:
            self._analysis_roots.add(Path(root).resolve())

    def settle_analysis(self, forget: bool = False) -> None:
        """Wait for the monitors' analysis asked so far, in every workspace and root (`Analyst.settle`)."""
        with self._lock:
            analysts = [w.analyst for w in self._workspaces.values()] + list(self._analysts.values())
        for analyst in analysts:
            analyst.settle(forget)

    def workspaces(self) -> list[Path]:
        with self._lock:
            return list(self._workspaces)

    def workspace_for(self, path: str | Path, open_missing: bool = True) -> ContextEngine | None:
        """The open workspace that holds a file (the deepest root); else, if asked, the file's repository
        (`roots.locate_root`: version control, a project file, the Python package chain, its own folder)."""
        given = Path(os.path.abspath(path))  # the file's own name is never resolved (a symlink is its own entry)
        forms = {given, Path(os.path.realpath(given.parent)) / given.name}
        with self._lock:
            roots = [r for r in self._workspaces for p in forms if p == r or r in p.parents]
            if roots:
                return self._workspaces[max(roots, key=lambda r: len(r.parts))]
        if not open_missing:
            return None
        found = locate_root(given)
        return self.open_workspace(found.path, reason=found.reason)

    # -- completion ----------------------------------------------------------------------------------------

    def prompt_parts(
        self, path: str, text: str, offset: int, options: CompletionOptions | None = None, draft: str | None = None,
        workspace: ContextEngine | None = None,
    ) -> tuple[PromptParts, Context | None]:
        options = options or CompletionOptions()
        options.validate()
        if not 0 <= offset <= len(text):
            raise InputError(f"offset {offset} out of range (the text has {len(text)} characters)")
        if options.context != "repo":
            return cursor_prompt(text, offset, mode=options.context, path=Path(path).name, window=self.window), None
        engine = workspace or self.workspace_for(path)
        tokens = self._tokens
        parts, ctx = engine.prompt_parts(os.path.abspath(path), text, offset, window=self.window,
                                         budget=options.budget, draft=draft,
                                         room=lambda p, budget: tokens.room(p, budget, options.max_new_tokens),
                                         suffix_lines=tokens.suffix_lines())
        return model_parts(parts), ctx

    # -- monitor-guided decoding ---------------------------------------------------------------------------

    def monitor_kinds(self, options: CompletionOptions) -> tuple[str, ...]:
        """The monitors a request runs: the options', else the runtime config's; none for a model that does not
        decode here (an endpoint: asked explicitly, that is an error that says so)."""
        config = getattr(self.model, "config", None)
        kinds = options.monitors if options.monitors is not None else tuple(getattr(config, "active_monitors", ()))
        if kinds and getattr(self.model, "vocab", None) is None:
            if options.monitors:
                raise InputError("monitors need a local model: the remote backend returns text, not the logits a "
                                 "monitor masks (use monitors none)")
            return ()
        return kinds

    def _analyst(self, path: str, workspace: ContextEngine | None):
        if workspace is None:
            workspace = self.workspace_for(path, open_missing=False)
        if workspace is not None:
            return workspace.analyst, workspace.relative(path)
        from repocomplete.context_engine.engine import lower_priority
        from repocomplete.context_engine.facts import Analyst
        from repocomplete.context_engine.slow_pool import SlowPool

        given = Path(os.path.abspath(path))
        with self._lock:
            roots = [r for r in self._analysis_roots if r in given.parents]
        root = max(roots, key=lambda r: len(r.parts)) if roots else locate_root(given).path
        evicted = None
        with self._lock:
            analyst = self._analysts.get(root)
            if analyst is None:
                budget = self.context_config.slow_provider_budget_ms
                pool = SlowPool(None if budget is None else budget / 1000, initializer=lower_priority)
                analyst = self._analysts[root] = Analyst(root, pool, self.context_config)
                if len(self._analysts) > MAX_ANALYSTS:
                    _, evicted = self._analysts.popitem(last=False)
            self._analysts.move_to_end(root)
        if evicted is not None:  # (a completion still using it gets no facts: its monitors stay silent)
            evicted.executor.shutdown(wait=False, cancel_futures=True)
        rel = os.path.relpath(os.path.abspath(path), root)
        return analyst, rel if not rel.startswith("..") else Path(path).name

    def monitors(self, path: str, text: str, offset: int, options: CompletionOptions,
                 workspace: ContextEngine | None = None) -> list:
        """The monitors of one completion (Python buffers only); the analysis at the cursor starts now."""
        from repocomplete.context_engine.parsing import language_for
        from repocomplete.monitors import python_monitors

        kinds = self.monitor_kinds(options)
        if not kinds or language_for(str(path)) != "python":
            return []
        analyst, rel = self._analyst(path, workspace)
        wait_ms = self.context_config.monitor_wait_ms
        return python_monitors(analyst, rel, text, offset, kinds, None if wait_ms is None else wait_ms / 1000)

    def prefetch_analysis(self, path: str, text: str, offset: int, kinds: Sequence[str]) -> None:
        """Start the monitors' analysis at a cursor now (a one-shot command calls it before loading the model, so
        that the jedi worker starts and parses the file while the model loads, not while it decodes)."""
        from repocomplete.context_engine.parsing import language_for
        from repocomplete.monitors import Session, prefetch

        if not kinds or language_for(str(path)) != "python":
            return
        analyst, rel = self._analyst(path, None)
        prefetch(Session(analyst, rel, text, offset, tuple(kinds), None))

    @staticmethod
    def _bind(monitors: list, parts: PromptParts) -> list:
        for m in monitors[:1]:
            m.session.window_prefix_len = len(parts.prefix)
        return monitors

    def complete(
        self, path: str, text: str, offset: int, options: CompletionOptions | None = None,
        cancel: CancelToken | None = None, workspace: ContextEngine | None = None,
    ) -> CompletionResult:
        options = options or CompletionOptions()
        t0 = time.perf_counter()
        parts, ctx = self.prompt_parts(path, text, offset, options, workspace=workspace)
        monitors = self.monitors(path, text, offset, options, workspace)  # its analysis runs during the prefill
        context_ms = (time.perf_counter() - t0) * 1000
        request = CompletionRequest(parts, max_new_tokens=options.max_new_tokens, multiline=options.multiline,
                                    cancel=cancel, monitors=self._bind(monitors, parts))
        result = None
        if options.iterative and options.context == "repo":
            draft = self.model.complete(request)
            if draft.text.strip() and not _cancelled(cancel):
                t1 = time.perf_counter()
                parts, ctx = self.prompt_parts(path, text, offset, options, draft=draft.text, workspace=workspace)
                context_ms += (time.perf_counter() - t1) * 1000
                monitors = self.monitors(path, text, offset, options, workspace)
                request = CompletionRequest(parts, max_new_tokens=options.max_new_tokens, multiline=options.multiline,
                                            cancel=cancel, monitors=self._bind(monitors, parts))
            else:
                result = draft
        candidates = self._candidates(request, options) if result is None else [result]
        return CompletionResult(candidates[0], parts, ctx, round(context_ms, 2),
                                round((time.perf_counter() - t0) * 1000, 2), candidates)

    def _candidates(self, request: CompletionRequest, options: CompletionOptions) -> list[Completion]:
        """The model's completions of a request: the options' (else the runtime config's) number of candidates
        where the model has them (a local engine), else its one completion."""
        n = options.candidates
        if n is None:
            n = getattr(getattr(self.model, "config", None), "candidates", 1)
        if n > 1 and hasattr(self.model, "complete_candidates"):
            return self.model.complete_candidates(request, n)
        return [self.model.complete(request)]

    def complete_batch(
        self, cursors: Sequence[Cursor], options: CompletionOptions | None = None,
        workspace: ContextEngine | None = None, before_each: Callable[[Cursor], None] | None = None,
    ) -> list[CompletionResult]:
        """Many cursors at once: prompt parts for each, then the model's batch entry point (prefix-sharing order).

        before_each(cursor) runs before a cursor's context is assembled (the evaluation harness sets the task's
        buffer there). Iterative retrieval is not batched: with options.iterative each cursor runs `complete`.
        """
        options = options or CompletionOptions()
        if options.iterative and options.context == "repo":
            out = []
            for c in cursors:
                if before_each:
                    before_each(c)
                out.append(self.complete(c.path, c.text, c.offset, options, workspace=workspace))
            return out
        prepared = []
        for c in cursors:
            if before_each:
                before_each(c)
            t0 = time.perf_counter()
            parts, ctx = self.prompt_parts(c.path, c.text, c.offset, options, workspace=workspace)
            monitors = self.monitors(c.path, c.text, c.offset, options, workspace)
            prepared.append((parts, ctx, (time.perf_counter() - t0) * 1000, self._bind(monitors, parts)))
        requests = [CompletionRequest(p, max_new_tokens=options.max_new_tokens, multiline=options.multiline,
                                      monitors=m) for p, _, _, m in prepared]
        completions = self.model.complete_batch(requests)
        return [
            CompletionResult(done, parts, ctx, round(ms, 2), round(ms + done.latency_s * 1000, 2))
            for done, (parts, ctx, ms, _) in zip(completions, prepared)
        ]

    def close(self) -> None:
        with self._lock:
            engines, self._workspaces = list(self._workspaces.values()), {}
            analysts, self._analysts = list(self._analysts.values()), OrderedDict()
        for engine in engines:
            engine.close()
        for analyst in analysts:
            analyst.executor.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.model, "close", None)
        if close is not None:
            close()


def _cancelled(cancel: CancelToken | None) -> bool:
    return cancel is not None and cancel.cancelled
