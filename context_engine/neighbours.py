"""Neighbours: the other open buffers and the regions the user edited recently (what they are working on)."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from repocomplete.context_engine.records import ContextRecord


@dataclass
class Edit:
    path: str
    line: int  # 1-based
    at: float


class Neighbours:
    """Remembers the most recent edit per (file, region) and the open buffers' texts."""

    def __init__(self, max_edits: int = 32, radius: int = 6):
        self.max_edits = max_edits
        self.radius = radius  # lines shown either side of an edit
        self.edits: OrderedDict[tuple[str, int], Edit] = OrderedDict()
        self.buffers: dict[str, str] = {}

    def open(self, path: str, text: str) -> None:
        self.buffers[path] = text

    def close(self, path: str) -> None:
        self.buffers.pop(path, None)
        for key in [k for k in self.edits if k[0] == path]:
            del self.edits[key]

    def record_edit(self, path: str, line: int, text: str | None = None, at: float | None = None) -> None:
        if text is not None:
            self.buffers[path] = text
        key = (path, line // (2 * self.radius))  # one entry per region
        self.edits.pop(key, None)
        self.edits[key] = Edit(path, line, time.monotonic() if at is None else at)
        while len(self.edits) > self.max_edits:
            self.edits.popitem(last=False)

    def records(self, current: str, cursor_line: int, limit: int = 4) -> list[ContextRecord]:
        """Recently edited regions, newest first (the cursor's own region excluded), then other open buffers."""
        out = []
        shown: set[str] = set()
        for edit in reversed(self.edits.values()):
            if edit.path == current and abs(edit.line - cursor_line) <= 2 * self.radius:
                continue
            text = self.buffers.get(edit.path)
            if text is None:
                continue
            lines = text.split("\n")
            start = max(1, edit.line - self.radius)
            end = min(len(lines), edit.line + self.radius)
            rank = len(out)
            out.append(
                ContextRecord(
                    text="\n".join(lines[start - 1 : end]),
                    path=edit.path,
                    start_line=start,
                    end_line=end,
                    score=1.0 / (1 + rank),
                    kind="neighbours",
                    why=f"edited recently (line {edit.line})",
                )
            )
            shown.add(edit.path)
            if len(out) >= limit:
                return out
        for path, text in self.buffers.items():
            if path == current or path in shown:
                continue
            lines = text.split("\n")
            end = min(len(lines), 2 * self.radius)
            out.append(
                ContextRecord("\n".join(lines[:end]), path, 1, end, 0.1, "neighbours", "open in the editor")
            )
            if len(out) >= limit:
                break
        return out
