"""LoRA adapters as repocomplete trains and loads them: the record beside `adapter_config.json`, the shipped one.

An adapter trained by `repocomplete finetune` learnt one prompt form; `repocomplete-adapter.json` in its directory
says which (the FIM template and order), and loading the adapter selects that form unless --fim-template forces
another. The embedded model's shipped FIM adapter (when the package holds one) is its default adapter;
`--adapter none` turns it off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from repocomplete.model_runtime.errors import ModelLoadError

RECORD = "repocomplete-adapter.json"
NO_ADAPTER = "none"
# The shipped FIM adapter of the embedded model (present only when one measured better than the base model).
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped" / "smollm2-fim"


@dataclass(frozen=True)
class AdapterRecord:
    fim_template: str
    fim_order: str = "auto"
    base_model: str = ""


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def check_adapter_dir(path: str | Path) -> Path:
    """The adapter directory, or ModelLoadError (one line) when it is missing or not a peft adapter."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"adapter not found: {path}")
    if not path.is_dir() or not is_adapter_dir(path):
        raise ModelLoadError(f"not a LoRA adapter: {path} has no adapter_config.json")
    return path


def write_record(adapter_dir: Path, record: AdapterRecord, **extra) -> None:
    data = {"fim_template": record.fim_template, "fim_order": record.fim_order, "base_model": record.base_model}
    (Path(adapter_dir) / RECORD).write_text(json.dumps({**data, **extra}, indent=2) + "\n")


def read_record(adapter_dir: str | Path | None) -> AdapterRecord | None:
    """The prompt form an adapter was trained with (None: no adapter, or one trained elsewhere)."""
    if not adapter_dir or adapter_dir == NO_ADAPTER:
        return None
    path = Path(adapter_dir).expanduser() / RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return AdapterRecord(str(data["fim_template"]), str(data.get("fim_order", "auto")),
                             str(data.get("base_model", "")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"bad adapter record {path}: {type(e).__name__}: {e}") from None


def resolve_adapter(model: str | None, adapter: str | None) -> str | None:
    """The adapter a config loads: the one named, none for "none", else the model's shipped default (the embedded
    model's FIM adapter, where the package holds one)."""
    from repocomplete.model_runtime.config import DEFAULT_MODEL

    if adapter == NO_ADAPTER:
        return None
    if adapter:
        return adapter
    if model in (None, "", DEFAULT_MODEL) and is_adapter_dir(SHIPPED_DIR):
        return str(SHIPPED_DIR)
    return None
