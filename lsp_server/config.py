"""The server's settings: one dataclass, read from initializationOptions and from `workspace/configuration`.

Clients send camelCase keys (`maxTokens`); fields are snake_case. A bad value is reported and the previous value
kept; an unknown key is reported and ignored. The `serve` command line gives the defaults (model, context, ...).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields
from typing import Any

SECTION = "repocomplete"  # the workspace/configuration section
CONTEXT_MODES = ("none", "infile", "repo")
DEFAULT_LANGUAGES = (
    "python", "javascript", "typescript", "typescriptreact", "javascriptreact", "go", "java", "rust",
)
# Settings whose change means loading another model (on the worker thread).
MODEL_FIELDS = ("model", "adapter", "endpoint")


@dataclass(frozen=True)
class Settings:
    enabled: bool = True
    model: str = "default"
    adapter: str | None = None
    endpoint: str | None = None
    context: str = "repo"  # none | infile | repo
    context_budget: int = 1024  # tokens of repository context
    max_tokens: int = 64
    multiline: bool = False
    debounce_ms: int = 50  # the debounce floor; see lsp_server.scheduling.Debounce
    languages: tuple[str, ...] = DEFAULT_LANGUAGES  # LSP languageIds that get completions

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


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
        return value or None
    if name == "context":
        want(value in CONTEXT_MODES, f"one of {', '.join(CONTEXT_MODES)}")
        return value
    if name == "context_budget":
        want(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 32_768,
             "an integer in [0, 32768]")
        return value
    if name == "max_tokens":
        want(isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096,
             "an integer in [1, 4096]")
        return value
    if name == "debounce_ms":
        want(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 5000,
             "a number of milliseconds in [0, 5000]")
        return int(value)
    if name == "languages":
        want(isinstance(value, list) and all(isinstance(v, str) and v for v in value), "a list of languageIds")
        return tuple(value)
    raise AssertionError(name)


FIELDS = {f.name for f in fields(Settings)}


def apply(settings: Settings, raw: Any) -> tuple[Settings, list[str]]:
    """`settings` updated from a client's settings object; the problems found, one line each.

    Keys may be camelCase (as clients send them) or snake_case. `null` leaves a setting as it is, except for
    adapter and endpoint, where it means "none"."""
    if raw is None:
        return settings, []
    if not isinstance(raw, dict):
        return settings, [f"settings must be an object, got {type(raw).__name__}; ignored"]
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
            problems.append(f"{e}; keeping {snake_to_camel(name)} = {getattr(settings, name)!r}")
    return settings.replace(**changes), problems


def section_of(raw: Any) -> Any:
    """Clients send either the section's object or an object holding it under "repocomplete"."""
    if isinstance(raw, dict) and isinstance(raw.get(SECTION), dict):
        return raw[SECTION]
    return raw


def to_json(settings: Settings) -> dict:
    return {snake_to_camel(k): (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(settings).items()}
