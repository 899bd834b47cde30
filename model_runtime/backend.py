"""One way to get an engine: local model or remote endpoint, chosen by the config."""

from __future__ import annotations

from repocomplete.model_runtime.config import RuntimeConfig


def make_engine(config: RuntimeConfig):
    """An `Engine` over a local model, or a `RemoteEngine` when the config names an endpoint."""
    config.validate()
    if config.endpoint:
        from repocomplete.model_runtime.remote import RemoteEngine

        return RemoteEngine(config)
    from repocomplete.model_runtime.engine import Engine
    from repocomplete.model_runtime.loading import load_model

    return Engine(load_model(config), config)
