"""The current document: reading it safely and turning "the cursor is here" into prompt parts.

Until the repository context engine lands, the context modes are "none" (the text before the cursor) and
"infile" (the text before and after it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from repocomplete.context_engine.errors import InputError
from repocomplete.context_engine.parts import CursorParts

CONTEXT_MODES = ("none", "infile", "repo")
MAX_FILE_BYTES = 10 * 2**20
# The prefix window starts on a line number that is a multiple of this, so its start stays put while the user
# types and the prefix-KV cache keeps matching.
WINDOW_LINE_STEP = 32


def read_source(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    if not path.is_file():
        raise InputError(f"not a regular file: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"file too large: {path} is {len(data)} bytes (limit {MAX_FILE_BYTES})")
    if b"\x00" in data[:8192]:
        raise InputError(f"binary file: {path}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text: {path} (byte {e.start})") from None


def offset_of(text: str, line: int, col: int) -> int:
    """Character offset of a 1-based line and column (col may be one past the end of the line)."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        raise InputError(f"line {line} out of range (the file has {len(lines)} lines)")
    length = len(lines[line - 1].rstrip("\r"))
    if not 1 <= col <= length + 1:
        raise InputError(f"column {col} out of range (line {line} has {length} characters)")
    return sum(len(l) + 1 for l in lines[: line - 1]) + col - 1


@dataclass
class Window:
    max_prefix_chars: int = 12_000
    max_suffix_chars: int = 2_000


def cursor_parts(text: str, offset: int, mode: str = "infile", path: str = "", window: Window | None = None) -> CursorParts:
    """Prompt parts for a cursor at `offset`: the prefix window (and the suffix, for "infile")."""
    if mode not in CONTEXT_MODES:
        raise InputError(f"unknown context mode {mode!r}; expected one of {', '.join(CONTEXT_MODES)}")
    if mode == "repo":
        raise InputError("repository context comes from context_engine.engine.ContextEngine.prompt_parts")
    window = window or Window()
    prefix = text[:offset]
    if len(prefix) > window.max_prefix_chars:
        # Keep whole lines, dropping the oldest in steps of WINDOW_LINE_STEP lines until it fits.
        lines = prefix.split("\n")
        dropped_chars = 0
        start = 0
        while len(prefix) - dropped_chars > window.max_prefix_chars and start + WINDOW_LINE_STEP < len(lines):
            dropped_chars += sum(len(line) + 1 for line in lines[start : start + WINDOW_LINE_STEP])
            start += WINDOW_LINE_STEP
        prefix = prefix[dropped_chars:]
    suffix = text[offset:][: window.max_suffix_chars] if mode == "infile" else ""
    return CursorParts(prefix=prefix, suffix=suffix, path=path)
