"""The outline: the current file's own definitions that the model's window does not show.

The prompt shows the current file from the start of its prefix window to the cursor, and the suffix window after it
where the template shows the suffix (a left-to-right model sees none of it). What lies outside (a method of the
cursor's class defined further down, a module helper at the bottom, the top of a file too long for the prefix
window) is nowhere else in the context: the repo map and the imports leave the current file out, as being in the
prompt already. The outline lists those definitions' headers, the cursor's own class first, in the budget it is
given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from repocomplete.context_engine.packing import RecordTokens
from repocomplete.context_engine.records import ContextRecord, Definition

# What a definition is worth to the line being written: a member of the class the cursor is in (`self.` reaches
# it), a module-level function or class (called by name), a member of another class of the file. Each falls off
# with its distance from the cursor in lines, halved every DECAY_LINES.
SIBLING, TOP_LEVEL, OTHER_MEMBER = 3.0, 2.0, 1.0
DECAY_LINES = 400


def hidden(definitions: Iterable[Definition], window: tuple[int, int]) -> list[Definition]:
    """The definitions whose header the window (first, last line shown) does not show: entirely after it, or
    starting before it (the top of a long file, the header of the class the cursor is in)."""
    first, last = window
    return [d for d in definitions if d.kind != "module" and not first <= d.start_line <= last]


def rank(definitions: Sequence[Definition], line: int, window: tuple[int, int]) -> list[tuple[float, Definition]]:
    """(score, definition) of the hidden definitions, best first."""
    enclosing = {d.name for d in definitions if d.parent == "" and d.start_line <= line <= d.end_line
                 and d.kind not in ("function", "method", "variable", "constant")}
    ranked = []
    for d in hidden(definitions, window):
        if d.parent and d.parent in enclosing:
            weight = SIBLING
        elif not d.parent:
            weight = TOP_LEVEL
        else:
            weight = OTHER_MEMBER
        ranked.append((weight * 0.5 ** (abs(d.start_line - line) / DECAY_LINES), d))
    ranked.sort(key=lambda pair: (-pair[0], pair[1].start_line))
    return ranked


def render(chosen: Iterable[Definition], parents: dict[str, Definition]) -> str:
    """Headers in file order; a member goes under its class's header (written once, even where the window shows
    it, so that the member's owner is clear)."""
    lines: list[str] = []
    shown_parent = None
    for d in sorted(chosen, key=lambda d: d.start_line):
        if d.parent:
            if shown_parent != d.parent and d.parent in parents:
                lines.append(parents[d.parent].signature.split("\n", 1)[0].strip())
            shown_parent = d.parent
            lines.append("    " + d.signature.strip())
        else:
            shown_parent = d.name if d.kind == "class" else None
            lines.append(d.signature.strip())
    return "\n".join(lines)


def outline(definitions: Sequence[Definition], path: str, line: int, window: tuple[int, int], budget: int,
            cost_of: RecordTokens) -> list[ContextRecord]:
    """The current file's hidden definitions, best first until the next would pass `budget` tokens, as one record
    (none when nothing is hidden or nothing fits)."""
    if budget <= 0:
        return []
    parents = {d.name: d for d in definitions if not d.parent and d.kind == "class"}
    ranked = [d for _, d in rank(definitions, line, window)]
    # The cost of the first k grows with k: the largest k that fits, by binary search.
    lo, hi, k = 1, len(ranked), 0
    while lo <= hi:
        mid = (lo + hi) // 2
        if cost_of(path, render(ranked[:mid], parents)) <= budget:
            k, lo = mid, mid + 1
        else:
            hi = mid - 1
    chosen = ranked[:k]
    if not chosen:
        return []
    shown = [*chosen, *(parents[d.parent] for d in chosen if d.parent in parents)]
    return [ContextRecord(
        text=render(chosen, parents), path=path,
        start_line=min(d.start_line for d in shown), end_line=max(d.end_line for d in chosen),
        score=1.0, kind="outline",
        why=f"{len(chosen)} of this file's definitions outside the window the model sees (lines {window[0]}-"
            f"{window[1]})")]
