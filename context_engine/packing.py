"""RepoFusion-style packing: fuse every provider's records into one token budget, keeping provenance.

Each provider first gets its quota of the budget (best records first), then whatever is left goes to the remaining
records of every provider in turns (by their rank in their provider's list); a record larger than what is then left
is cut at a line boundary to fill it (only a record that is a verbatim span of its file, so its line numbers stay
true). Records that repeat one another (the same text, overlapping windows of one provider, or one definition's span
from two providers), or the current file's own window, are dropped; a record that shows all another of its
definition shows (a class's summary, the repo map's header of that class) takes the other's place. A summary too
large for what is left shows its short form instead (a class's header and member names), where its provider made
one, or as many of those names as fit. The kept records are ordered most stable first (repo map, the current file's
outline, imports, retrieved windows, then typed holes and neighbours, which change with every cursor move), so the
prefix-KV cache keeps the head of the prompt while the user types.

A record's cost is what it takes in the prompt: `record_tokens(path, text)`. The pipeline passes one built from
the model's tokenizer and FIM template (the record's header, its text as the template shows it, the separator),
so that a budget is tokens of the prompt; without a model the cost is `approx_tokens` of the text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from repocomplete.context_engine.records import ContextRecord

# Most stable first: the order records take in the prompt.
STABILITY_ORDER = ("repo_map", "outline", "imports", "retrieval", "typed_holes", "neighbours")
# Among leftovers of equal rank in their providers: definitions (typed holes, imports, the repo map) before windows.
LEFTOVER_ORDER = ("typed_holes", "imports", "outline", "repo_map", "retrieval", "neighbours")

# Records that are not spans of a file's text: the current file's window never shows what they do (a typed hole's
# summary of the cursor's class, the outline of definitions outside the window), whatever lines they cover.
WINDOW_FREE = ("typed_holes", "outline")

# (path, text) -> the tokens a record with that text takes in the prompt, headers and separators included.
RecordTokens = Callable[[str, str], int]

# The pre-tokenizer of GPT-2-style byte-level BPE (SmolLM2's, StarCoder's, Qwen's ...), in `re` syntax: the text
# splits into these pieces first and no token crosses two of them.
_PIECES = re.compile(r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


def _piece_tokens(piece: str) -> float:
    """The mean tokens of one pre-token, by its kind and length, as measured with SmolLM2's tokenizer on Python."""
    last = piece[-1]
    if last.isspace():
        return 1.0  # a run of spaces or newlines
    space = piece[0] == " "
    word = piece[1:] if space else piece
    n = len(word)
    if not word.isascii():
        return max(1.0, len(word.encode()) / 2)
    if last.isdigit():
        return n + space  # one token a digit, the space apart
    if last.isalpha():
        if word.islower() or (word[0].isupper() and word[1:].islower()):
            return 1.02 + (max(0, n - 6) * 0.13 if space else max(0, n - 5) * 0.22)
        if word.isupper():
            return 1 + (max(0, n - 1) * 0.29 if space else max(0, n - 2) * 0.35)
        return 1 + (max(0, n - 2) * 0.13 if space else n * 0.15)  # camelCase
    return 1.0 if n <= 3 else 1 + (n - 3) * 0.6  # punctuation


@functools.lru_cache(maxsize=8192)
def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate of a text's tokens, for where no model is loaded (`repocomplete context`, an
    endpoint whose tokenizer is unknown); pass a real counter where one exists.

    The text is split as byte-level BPE splits it before merging (words, numbers, punctuation runs, whitespace
    runs) and each piece costs its mean token count for its kind and length, fitted to SmolLM2's tokenizer on
    the standard library, jedi, click, numpy, scipy and torch. On 4.46 M tokens of real Python (those, and held
    out: sympy, httpx, requests, pygls, tqdm, platformdirs, transformers, this repository) it is +0.4% in
    aggregate, each of those bodies within +-3.4% but pygls (+5.1%), 80% of files within about -4%..+6%; the old
    estimate (2/7 of the characters) was off by -10% to +16% per body. `repocomplete bench micro tokens DIR`
    measures it on any folder; tests/test_token_budgets.py holds it within 3% on a fixed corpus."""
    if not text:
        return 0
    return max(1, round(sum(map(_piece_cost, _PIECES.findall(text)))))


# The pieces of code repeat (` self`, `(`, `\n    `, names): each one's cost is worked out once.
_piece_cost = functools.lru_cache(maxsize=1 << 16)(_piece_tokens)


def text_tokens(count_tokens: Callable[[str], int]) -> RecordTokens:
    """A record's cost when how it is rendered is unknown: its text alone."""
    return lambda path, text: count_tokens(text)


@dataclass
class Packed:
    records: list[ContextRecord]
    tokens: int
    budget: int
    dropped: list[tuple[ContextRecord, str]] = field(default_factory=list)  # and why


def _overlaps(a: ContextRecord, b: ContextRecord) -> bool:
    return a.path == b.path and a.start_line <= b.end_line and b.start_line <= a.end_line


def _same_definition(a: ContextRecord, b: ContextRecord) -> bool:
    """Two records of one definition (a class that is both imported and a typed hole's type, a module the repo map
    and the imports both summarise): the same span of the same file, whatever each provider made of it."""
    return a.path == b.path and a.start_line == b.start_line and a.end_line == b.end_line


_DEF_LINE = re.compile(r"(?:async\s+)?def\s+(\w+)")


def _covers(text: str, other: str) -> bool:
    """Whether `text` shows everything `other` does: each non-blank line of `other` is a line of `text`
    (indentation aside), or is a function header (all its lines) whose name `text` shows in its own form (the repo
    map writes `def append(` over three lines as the source does, a summary on one line with short defaults, a short
    form in its `# members:` list)."""
    lines = {line.strip() for line in text.split("\n")}
    words = set(re.findall(r"\w+", text))
    in_header = False  # inside a function header written over several lines, whose name `text` shows
    for line in other.split("\n"):
        s = line.strip()
        if not s:
            continue
        if in_header:
            in_header = not s.endswith((":", "..."))
            continue
        if s in lines:
            continue
        m = _DEF_LINE.match(s)
        if m is None or m.group(1) not in words:
            return False
        in_header = not s.endswith((":", "..."))
    return True


# A short form's last line: its names, the current file's first, and how many more it left out.
_NAMES_LINE = re.compile(r"^(?P<lead>\s*# (?:members|names): )(?P<names>.*?)(?: \(\+(?P<more>\d+)\))?$")
MIN_NAMES = 4  # a short form cut to fewer names than this is not worth its header


def _most_within(lo: int, hi: int, cost_of: Callable[[int], int], room: int) -> tuple[int, int] | None:
    """The largest k in lo..hi whose cost_of(k), which grows with k, is at most `room`, and that cost (binary
    search); None if not even lo fits."""
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        c = cost_of(mid)
        if c <= room:
            best, lo = (mid, c), mid + 1
        else:
            hi = mid - 1
    return best


def fit_names(record: ContextRecord, room: int, cost: RecordTokens) -> tuple[ContextRecord, int] | None:
    """A summary's short form with as many of its names as cost at most `room` tokens (the names the current file
    uses come first in it), and its cost; None if the record has no short form or not MIN_NAMES of them fit."""
    lines = record.short.split("\n") if record.short else []
    m = _NAMES_LINE.match(lines[-1]) if lines else None
    if m is None or room <= 0:
        return None
    names = m["names"].split(", ")
    total = len(names) + int(m["more"] or 0)

    def text(k: int) -> str:
        more = f" (+{total - k})" if total > k else ""
        return "\n".join(lines[:-1] + [f"{m['lead']}{', '.join(names[:k])}{more}"])

    best = _most_within(MIN_NAMES, len(names), lambda k: cost(record.path, text(k)), room)
    if best is None:
        return None
    k, c = best
    why = f"{record.why} (names only, {k} of {total}: the summary is over the budget)"
    return replace(record, text=text(k), short="", why=why), c


def is_span(record: ContextRecord) -> bool:
    """Whether a record's text is its file's lines start_line..end_line verbatim (a window), so that its first k
    lines are lines start_line..start_line+k-1."""
    return record.text.count("\n") == record.end_line - record.start_line and record.end_line >= record.start_line


def truncate(record: ContextRecord, room: int, cost: RecordTokens) -> tuple[ContextRecord, int] | None:
    """The longest head of a window record (whole lines, at least one with text) that costs at most `room`
    tokens, with its line span and why updated, and its cost; None if none fits or the record is not a window."""
    if room <= 0 or not is_span(record):
        return None
    lines = record.text.split("\n")
    # (the whole record did not fit: at most n-1 lines)
    best = _most_within(1, len(lines) - 1, lambda k: cost(record.path, "\n".join(lines[:k])), room)
    if best is None:
        return None
    k, c = best
    while k > 0 and not lines[k - 1].strip():  # no trailing blank lines (they cost and say nothing)
        k -= 1
    if k == 0:
        return None
    if k < best[0]:
        c = cost(record.path, "\n".join(lines[:k]))
    cut = replace(record, text="\n".join(lines[:k]), end_line=record.start_line + k - 1,
                  why=f"{record.why} (first {k} of {len(lines)} lines: the rest is over the budget)")
    return cut, c


def pack(
    by_provider: Mapping[str, Sequence[ContextRecord]],
    budget: int,
    quotas: Mapping[str, float],
    count_tokens: Callable[[str], int] = approx_tokens,
    own_window: tuple[str, int, int] | None = None,
    record_tokens: RecordTokens | None = None,
) -> Packed:
    """Choose and order records within `budget` tokens. own_window = (path, first line, last line) of the
    current file's text already in the prompt. A record costs record_tokens(path, text) (default: count_tokens of
    its text); `Packed.tokens` is the sum, which for the pipeline's counter is the prompt's context part."""
    cost_of = record_tokens or text_tokens(count_tokens)
    dropped: list[tuple[ContextRecord, str]] = []
    candidates: dict[str, list[ContextRecord]] = {}
    for kind, records in by_provider.items():
        kept = []
        for r in sorted(records, key=lambda r: -r.score):
            if own_window and r.kind not in WINDOW_FREE and _overlaps(r, ContextRecord("", *own_window, 0, "", "")):
                dropped.append((r, "already in the current file's window"))
            else:
                kept.append(r)
        candidates[kind] = kept

    chosen: list[ContextRecord] = []
    costs: list[int] = []  # of each chosen record
    seen_text: set[str] = set()
    used = 0

    def duplicate(r: ContextRecord) -> bool:
        return r.text in seen_text or any(
            _same_definition(r, c) or (_overlaps(r, c) and c.kind == r.kind) for c in chosen)

    def take(r: ContextRecord, cost: int) -> None:
        nonlocal used
        chosen.append(r)
        costs.append(cost)
        seen_text.add(r.text)
        used += cost

    def superseded(r: ContextRecord) -> int | None:
        """The index of a chosen record of r's definition that shows nothing r does not (the repo map's header of
        a class whose summary r is): r takes its place rather than being dropped as its duplicate."""
        return next((i for i, c in enumerate(chosen) if _same_definition(r, c) and c.text != r.text
                     and _covers(r.text, c.text)), None)

    def supersede(i: int, r: ContextRecord, cost: int) -> None:
        nonlocal used
        dropped.append((chosen[i], "superseded by a fuller record of the same definition"))
        used += cost - costs[i]
        chosen[i], costs[i] = r, cost
        seen_text.add(r.text)

    def admit(r: ContextRecord, limit: int) -> bool:
        nonlocal used
        i = superseded(r)
        if i is not None:
            cost = cost_of(r.path, r.text)
            if used - costs[i] + cost > limit:
                return False
            supersede(i, r, cost)
            return True
        if duplicate(r):
            dropped.append((r, "duplicate"))
            return True  # handled
        cost = cost_of(r.path, r.text)
        if used + cost > limit:
            return False
        take(r, cost)
        return True

    # First pass: each provider within its quota, in descending score; a record too large for what is left of
    # the quota does not stop the smaller ones after it. Providers go in LEFTOVER_ORDER, so that of two records
    # of one definition the one made for the cursor (a typed hole's focused summary) is the one kept.
    leftovers: list[ContextRecord] = []
    order = {kind: i for i, kind in enumerate(LEFTOVER_ORDER)}
    for kind, records in sorted(candidates.items(), key=lambda item: order.get(item[0], len(order))):
        quota_end = used + int(budget * quotas.get(kind, 0.0))
        for r in records:
            if not admit(r, min(quota_end, budget)):
                leftovers.append(r)
    # Second pass: the rest of the budget to the best remaining records, whatever their provider. Providers score
    # on scales that do not compare (BM25 tens close together, an import's count of uses in the file, the repo
    # map's PageRank fractions): a record competes by its rank in its provider's list, as reciprocal rank fusion
    # does, so that the providers take turns (each one's second record, then each one's third ...); a record of a
    # provider whose scores fall steeply (a name imported and used once, after one used thirty times) is not left
    # behind every window of one whose scores are flat. Ties go to definitions before windows.
    position = {id(r): i for records in candidates.values() for i, r in enumerate(records)}

    def shortened(r: ContextRecord) -> ContextRecord:
        return replace(r, text=r.short, short="", why=f"{r.why} (names only: the summary is over the budget)")

    def relative(r: ContextRecord) -> tuple[int, int]:
        return position[id(r)], order.get(r.kind, len(order))

    over: list[ContextRecord] = []
    for r in sorted(leftovers, key=relative):
        if not admit(r, budget) and not (r.short and not is_span(r) and admit(shortened(r), budget)):
            over.append(r)
    # Last: what is still left goes to the heads of the best windows that did not fit whole, and to as many of a
    # summary's names as fit (in the place of its definition's header, the repo map's, where that is in).
    for r in over:
        if r.short and not is_span(r):
            same = next((i for i, c in enumerate(chosen) if _same_definition(r, c)), None)
            room = budget - used + (costs[same] if same is not None else 0)
            fitted = fit_names(r, room, cost_of)
            if fitted is not None and (same is None or _covers(fitted[0].text, chosen[same].text)):
                if same is None:
                    if not duplicate(fitted[0]):
                        take(*fitted)
                        continue
                else:
                    supersede(same, *fitted)
                    continue
        if duplicate(r):  # of a head taken just before, or of its definition's header that stays
            header_only = r.text not in seen_text and any(_same_definition(r, c) for c in chosen)
            dropped.append((r, "over budget (its header is in)" if header_only else "duplicate"))
            continue
        fitted = truncate(r, budget - used, cost_of) if used < budget else None
        if fitted is None:
            dropped.append((r, "over budget"))
        else:
            take(*fitted)

    rank = {kind: i for i, kind in enumerate(STABILITY_ORDER)}
    chosen.sort(key=lambda r: (rank.get(r.kind, len(rank)), r.path, r.start_line))
    return Packed(chosen, used, budget, dropped)
