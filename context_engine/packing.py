"""RepoFusion-style packing: fuse every provider's records into one token budget, keeping provenance.

Each provider first gets its quota of the budget (best records first), then whatever is left goes to the best
remaining records of any provider. Records that repeat one another, or the current file's own window, are
dropped. The kept records are ordered most stable first (repo map, imports, retrieved windows, then typed holes
and neighbours, which change with every cursor move), so the prefix-KV cache keeps the head of the prompt while
the user types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from repocomplete.context_engine.records import ContextRecord

# Most stable first: the order records take in the prompt.
STABILITY_ORDER = ("repo_map", "imports", "retrieval", "typed_holes", "neighbours")


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate (code runs ~3.5 characters a token); pass a real counter where one exists."""
    return max(1, (len(text) + 3) * 2 // 7)


@dataclass
class Packed:
    records: list[ContextRecord]
    tokens: int
    budget: int
    dropped: list[tuple[ContextRecord, str]] = field(default_factory=list)  # and why


def _overlaps(a: ContextRecord, b: ContextRecord) -> bool:
    return a.path == b.path and a.start_line <= b.end_line and b.start_line <= a.end_line


def pack(
    by_provider: Mapping[str, Sequence[ContextRecord]],
    budget: int,
    quotas: Mapping[str, float],
    count_tokens: Callable[[str], int] = approx_tokens,
    own_window: tuple[str, int, int] | None = None,
) -> Packed:
    """Choose and order records within `budget` tokens. own_window = (path, first line, last line) of the
    current file's text already in the prompt."""
    dropped: list[tuple[ContextRecord, str]] = []
    candidates: dict[str, list[ContextRecord]] = {}
    for kind, records in by_provider.items():
        kept = []
        for r in sorted(records, key=lambda r: -r.score):
            if own_window and r.kind != "typed_holes" and _overlaps(r, ContextRecord("", *own_window, 0, "", "")):
                dropped.append((r, "already in the current file's window"))
            else:
                kept.append(r)
        candidates[kind] = kept

    chosen: list[ContextRecord] = []
    seen_text: set[str] = set()
    used = 0

    def admit(r: ContextRecord, limit: int) -> bool:
        nonlocal used
        if r.text in seen_text or any(_overlaps(r, c) and c.kind == r.kind for c in chosen):
            dropped.append((r, "duplicate"))
            return True  # handled
        cost = count_tokens(r.text)
        if used + cost > limit:
            return False
        chosen.append(r)
        seen_text.add(r.text)
        used += cost
        return True

    # First pass: each provider within its quota, in descending score.
    leftovers: list[ContextRecord] = []
    for kind, records in candidates.items():
        quota_end = used + int(budget * quotas.get(kind, 0.0))
        for i, r in enumerate(records):
            if not admit(r, min(quota_end, budget)):
                leftovers.extend(records[i:])
                break
    # Second pass: the rest of the budget to the best remaining records, whatever their provider.
    for r in sorted(leftovers, key=lambda r: -r.score):
        if not admit(r, budget):
            dropped.append((r, "over budget"))

    rank = {kind: i for i, kind in enumerate(STABILITY_ORDER)}
    chosen.sort(key=lambda r: (rank.get(r.kind, len(rank)), r.path, r.start_line))
    return Packed(chosen, used, budget, dropped)
