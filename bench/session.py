"""The typing session that `bench latency` and `bench lsp` replay: a real source file, the cursor placed about
`context_tokens` tokens into it, then the next `keystrokes` characters typed one at a time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BUNDLED_FILE = Path(__file__).parent / "data" / "textwrap.py"  # CPython's textwrap.py (see data/README.md)


@dataclass
class SessionOptions:
    file: str | None = None  # None: the bundled file
    keystrokes: int = 24
    context_tokens: int = 2048  # tokens before the session's first cursor


@dataclass
class Session:
    path: Path
    text: str
    start: int  # the first cursor: the first code character of the line ~context_tokens into the file
    cursors: list[int]  # start, start + 1, ...: one per keystroke

    @property
    def cursor_line(self) -> int:
        return self.text[: self.start].count("\n") + 1

    def buffer(self, k: int) -> tuple[str, int]:
        """The buffer and cursor at keystroke k: the first k of the session's characters typed at `start`, the ones
        still to type not yet in the buffer (a user typing new code has no copy of it after the cursor; the text
        after the cursor stays put while typing, as FIM templates that put the suffix first rely on)."""
        end = self.cursors[-1] + 1 if self.cursors else self.start
        cursor = self.cursors[k]
        return self.text[:cursor] + self.text[end:], cursor


def typing_session(text: str, tokenizer, context_tokens: int, keystrokes: int) -> tuple[int, list[int]]:
    """The cursor offsets of the session: start at the first code character of the line ~context_tokens in."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= context_tokens:
        raise ValueError(f"the file has only {len(ids)} tokens; need more than {context_tokens}")
    offset = len(tokenizer.decode(ids[:context_tokens]))
    line_start = text.index("\n", offset) + 1
    while not text[line_start:].split("\n", 1)[0].strip():  # skip blank lines
        line_start = text.index("\n", line_start) + 1
    start = line_start + len(text[line_start:]) - len(text[line_start:].lstrip(" \t"))
    return start, [start + k for k in range(keystrokes)]


def load_session(options: SessionOptions, tokenizer, keystrokes: int | None = None) -> Session:
    """The session of `options` (its file, or the bundled one), `keystrokes` long (default: options.keystrokes)."""
    path = Path(options.file) if options.file else BUNDLED_FILE
    text = path.read_text(encoding="utf-8")
    start, cursors = typing_session(text, tokenizer, options.context_tokens,
                                    options.keystrokes if keystrokes is None else keystrokes)
    return Session(path, text, start, cursors)
