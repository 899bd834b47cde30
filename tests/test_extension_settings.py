"""The VS Code extension's settings (package.json `contributes.configuration`) against their Python owners.

VS Code applies package.json's defaults itself and sends every setting to the server, so a default there that
differs from the owner's would silently replace it. Each server setting's default must be the value its owner
gives it (RuntimeConfig, ContextConfig or the server's Settings), its enum and range the server's.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.document import CONTEXT_MODES
from repocomplete.lsp_server.config import RANGES, SECTION, Settings, snake_to_camel
from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.monitors import monitors_text

PACKAGE = Path(__file__).resolve().parent.parent / "vscode-extension" / "package.json"
CLIENT_ONLY = {"serverPath", "serverArgs", "trace.server"}  # read by the extension, never sent to the server

# Each server setting's default, from the one place that owns it.
OWNERS = {
    "enabled": Settings().enabled,
    "context": Settings().context,
    "debounceMs": Settings().debounce_ms,
    "languages": list(Settings().languages),
    "completionCacheBytes": Settings().completion_cache_bytes,
    "model": RuntimeConfig().model,
    "adapter": RuntimeConfig().adapter,
    "endpoint": RuntimeConfig().endpoint,
    "maxTokens": RuntimeConfig().max_new_tokens,
    "multiline": RuntimeConfig().multiline,
    "monitors": monitors_text(RuntimeConfig().monitors),
    "candidates": RuntimeConfig().candidates,
    "contextBudget": ContextConfig().budget_tokens,
}


def contributed() -> dict[str, dict]:
    properties = json.loads(PACKAGE.read_text())["contributes"]["configuration"]["properties"]
    prefix = f"{SECTION}."
    assert all(key.startswith(prefix) for key in properties), list(properties)
    return {key[len(prefix):]: spec for key, spec in properties.items()}


def test_the_extension_contributes_exactly_the_server_settings_and_its_own():
    server = {snake_to_camel(f.name) for f in fields(Settings)}
    assert set(contributed()) - CLIENT_ONLY == server
    assert CLIENT_ONLY <= set(contributed())
    assert set(OWNERS) == server


@pytest.mark.parametrize("key", sorted(OWNERS))
def test_each_default_is_its_owners(key):
    assert contributed()[key]["default"] == OWNERS[key]


def test_enums_and_ranges_are_the_servers():
    settings = contributed()
    assert settings["context"]["enum"] == list(CONTEXT_MODES)
    assert len(settings["context"]["enumDescriptions"]) == len(CONTEXT_MODES)
    declared = {key: (spec["minimum"], spec["maximum"]) for key, spec in settings.items() if "minimum" in spec}
    assert declared == {snake_to_camel(name): bounds for name, bounds in RANGES.items()}
    assert all(settings[key]["type"] == "integer" for key in declared)
    assert [key for key, spec in settings.items() if "enum" in spec] == ["context", "trace.server"]
