"""The server's settings: one dataclass, read from initializationOptions and from `workspace/configuration`.

Clients send camelCase keys (`maxTokens`); fields are snake_case. A bad value is reported and the previous value
kept; an unknown key is reported and ignored.

The server owns five knobs (enabled, context, debounceMs, languages, completionCacheBytes). The others override a knob another layer
owns: the model's in `RuntimeConfig`, the context budget in `ContextConfig` (both from the `serve` command line).
An override left unset (None) is the owner's value; `resolve` is the one place that turns the three into what the
server uses.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields
from typing import Any

from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.document import CONTEXT_MODES
from repocomplete.model_runtime.adapters import NO_ADAPTER
from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.pipeline import CompletionOptions

SECTION = "repocomplete"  # the workspace/configuration section
DEFAULT_LANGUAGES = (
    "python", "javascript", "typescript", "typescriptreact", "javascriptreact", "go", "java", "rust",
)
# Settings whose change means loading another model (on the worker thread).
MODEL_FIELDS = ("model", "adapter", "endpoint")
# Integer settings and their ranges (the VS Code extension declares the same: tests/test_extension_settings.py).
RANGES = {"context_budget": (0, 32_768), "max_tokens": (1, 4096), "debounce_ms": (0, 5000),
          "completion_cache_bytes": (0, 2**30), "candidates": (1, 8)}


@dataclass(frozen=True)
class Settings:
    # The server's own knobs.
    enabled: bool = True
    context: str = "repo"  # one of context_engine.document.CONTEXT_MODES
    debounce_ms: int = 0  # the least wait before engine work; the server adds more only where it saves engine work (lsp_server.scheduling.Debounce)
    languages: tuple[str, ...] = DEFAULT_LANGUAGES  # LSP languageIds that get completions
    # The bound of the completion cache (lsp_server.scheduling.CompletionCache), least recently used dropped first.
    completion_cache_bytes: int = 8 * 2**20
    # Overrides of other layers' knobs; None: the owner's value (see `resolve`).
    model: str | None = None  # RuntimeConfig.model
    adapter: str | None = None  # RuntimeConfig.adapter; "": none, whatever the command line said (a client's null)
    endpoint: str | None = None  # RuntimeConfig.endpoint; "": the local model, whatever the command line said
    context_budget: int | None = None  # ContextConfig.budget_tokens: tokens of repository context
    max_tokens: int | None = None  # RuntimeConfig.max_new_tokens
    multiline: bool | None = None  # RuntimeConfig.multiline
    monitors: str | None = None  # RuntimeConfig.monitors: "none", "all" or a comma list (deref,scope,args,imports);
    # None ("auto"): the runtime's default (every monitor with a local model, none with an endpoint)
    candidates: int | None = None  # RuntimeConfig.candidates: inline completion items per request (1-8)

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Effective:
    """What the server uses: the settings resolved against the configs that own their defaults."""

    settings: Settings  # every override filled in with the value in use (what the server reports)
    runtime: RuntimeConfig  # what the model is loaded with
    options: CompletionOptions  # what each completion request asks for

    @property
    def model_name(self) -> str:
        return self.runtime.endpoint or self.runtime.model


def resolve(runtime: RuntimeConfig, context_config: ContextConfig, settings: Settings) -> Effective:
    """The RuntimeConfig to load the model with and the CompletionOptions of a request: each override that is set
    replaces its owner's value. The decoding knobs go into the options only: the model is loaded with the command
    line's, so that changing them never reloads it."""
    s = settings
    model = _owned(s.model, runtime.model)
    adapter = _owned(s.adapter, runtime.adapter)
    # A client's null (""): no adapter at all, not even the embedded model's shipped one.
    adapter = NO_ADAPTER if adapter == "" else adapter or None
    endpoint = _owned(s.endpoint, runtime.endpoint) or None
    max_tokens = _owned(s.max_tokens, runtime.max_new_tokens)
    multiline = _owned(s.multiline, runtime.multiline)
    budget = _owned(s.context_budget, context_config.budget_tokens)
    candidates = _owned(s.candidates, runtime.candidates)
    from repocomplete.monitors import monitors_text, parse_monitors

    monitors = parse_monitors(s.monitors) if s.monitors is not None else None
    if monitors is None:  # the default: the command line's, where it asked; else none with an endpoint, all without
        monitors = () if endpoint else runtime.replace(endpoint=None).active_monitors
    shown = s.replace(model=model, adapter=adapter, endpoint=endpoint, max_tokens=max_tokens, multiline=multiline,
                      context_budget=budget, monitors=monitors_text(monitors), candidates=candidates)
    return Effective(shown, runtime.replace(model=model, adapter=adapter, endpoint=endpoint,
                                              monitors=() if endpoint and runtime.monitors else runtime.monitors),
                     CompletionOptions(context=s.context, multiline=multiline, max_new_tokens=max_tokens, budget=budget,
                                       monitors=monitors, candidates=candidates))


def _owned(override, value):
    return value if override is None else override


def camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def _check(name: str, value: Any) -> Any:
    """The value converted for field `name`; ValueError with a message meant for the user if it is bad."""
    def want(ok: bool, what: str):
        if not ok:
            raise ValueError(f"{snake_to_camel(name)} must be {what}, got {value!r}")

    if name in ("enabled", "multiline"):
        want(isinstance(value, bool), "true or false")
        return value
    if name == "model":
        want(isinstance(value, str) and value.strip() != "", "a non-empty string")
        return value
    if name in ("adapter", "endpoint"):
        want(value is None or (isinstance(value, str)), "a string or null")
        return value or ""  # null or "": none (not "unset": that would be the command line's)
    if name == "context":
        want(value in CONTEXT_MODES, f"one of {', '.join(CONTEXT_MODES)}")
        return value
    if name in RANGES:
        lo, hi = RANGES[name]
        number = isinstance(value, int) or (name == "debounce_ms" and isinstance(value, float))
        want(number and not isinstance(value, bool) and lo <= value <= hi,
             f"a number of milliseconds in [{lo}, {hi}]" if name == "debounce_ms" else f"an integer in [{lo}, {hi}]")
        return int(value)
    if name == "monitors":
        from repocomplete.monitors import monitors_text, parse_monitors

        want(isinstance(value, str), "auto, none, all or a comma list of deref, scope, args, imports")
        try:
            kinds = parse_monitors(value)
            return None if kinds is None else monitors_text(kinds)  # auto: unset, the runtime's default
        except ValueError as e:
            raise ValueError(f"monitors: {e}") from None
    if name == "languages":
        want(isinstance(value, list) and all(isinstance(v, str) and v for v in value), "a list of languageIds")
        return tuple(value)
    raise AssertionError(name)


FIELDS = {f.name for f in fields(Settings)}


def apply(settings: Settings, raw: Any, shown: Settings | None = None) -> tuple[Settings, list[str]]:
    """`settings` updated from a client's settings object; the problems found, one line each (naming the values
    kept as `shown` has them: the effective settings, where an override is unset).

    Keys may be camelCase (as clients send them) or snake_case. `null` leaves a setting as it is, except for
    adapter and endpoint, where it means "none"."""
    if raw is None:
        return settings, []
    if not isinstance(raw, dict):
        return settings, [f"settings must be an object, got {type(raw).__name__}; ignored"]
    shown = shown or settings
    changes: dict[str, Any] = {}
    problems = []
    for key, value in raw.items():
        name = camel_to_snake(key) if isinstance(key, str) else None
        if name not in FIELDS:
            problems.append(f"unknown setting {key!r} ignored")
            continue
        if value is None and name not in ("adapter", "endpoint"):
            continue  # unset: keep what we have
        try:
            changes[name] = _check(name, value)
        except ValueError as e:
            problems.append(f"{e}; keeping {snake_to_camel(name)} = {getattr(shown, name)!r}")
    return settings.replace(**changes), problems


def section_of(raw: Any) -> Any:
    """Clients send either the section's object or an object holding it under "repocomplete"."""
    if isinstance(raw, dict) and isinstance(raw.get(SECTION), dict):
        return raw[SECTION]
    return raw


def to_json(settings: Settings) -> dict:
    return {snake_to_camel(k): (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(settings).items()}
