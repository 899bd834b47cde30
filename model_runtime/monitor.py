"""Monitor-guided decoding (MGD): a monitor names the identifiers allowed at a point; the engine masks the tokens.

A monitor (`Monitor`) is asked before every decode step with the prompt text before the cursor (what token healing
backed off is not in it: the generation re-produces it, so `obj.` may be regenerated) and the text generated so
far. It answers None (silent) or a `Constraint`: the allowed names (sorted), the identifier characters already
written since the trigger (`partial`), and where the identifier starts. `NameMask` turns a constraint into a token
mask over the decoded vocabulary: a token is allowed when

* partial + its text is a prefix of an allowed name (it extends a valid name, or ends exactly at a name's end), or
* partial + its leading identifier characters is exactly an allowed name and the token continues with a
  non-identifier character (it completes the name and goes on: `fetch(`; for a name written only as a keyword,
  `assign`, that character is its `=`), or
* partial is already a whole allowed name and the token starts with a non-identifier character (`=` after a
  keyword's name, `assign`), or
* nothing of the identifier is written yet and the token does not start one (`free_other`: a number, a bracket, a
  string; `skip_space`: after leading spaces), or, where the site is after a keyword whose space is still to come
  (`free_glued`), the token has no leading space (it goes on with the keyword's word: `return` + `_code`).

Once the identifier is complete the monitor's trigger is gone and the model is free again.

A monitor may also say where a call must not be closed yet (`closing`: a required parameter is not passed). The
guide asks it when the model's first choice closes a bracket (`)`, `),`) or writes an empty call (`()`, `():`,
asked as if the `(` were written), and refuses those tokens under the same yield rules; and where a name that starts
an argument is no keyword of the call (`keyword`): the guide asks it when the model's first choice is that name's
`=` (or becomes it once the arity rule refused a close, and the other way round), and refuses the tokens that
write it or go on with the name (the constraint's span is the name's: where the args monitor yielded the name, this
rule yields too).

A constraint may allow no name at all (`close`): where a call takes no more arguments, only its close (blanks, or
an end the closing rule makes the close) may follow, under the same yield rules; a single-line completion ends right
after a close the mask chose over the model's argument.

A monitor may also refuse a name (`refusal`): asked where the model's choice would write one, it names what may not
be written there (the scope monitor: `self` or `cls` where nothing binds them, a classmethod's `self`), and the guide
masks the tokens that would complete it, under the same yield rules, except that what the model writes in its place
need not be a name.

`Guide` applies the monitors of one request on top of the healing mask. The yield rules: if a constraint leaves no
token, or, at the identifier's first constrained step, the tokens it allows hold less than `MIN_ALLOWED_MASS` of
the (healed) distribution, the monitor yields that span (the identifier starting there is not constrained at all,
for the rest of the request): never an empty completion because of a monitor, never NaN when sampling, never a
forced name the model gives no weight to. Where the mask refuses the model's first choice it yields too when the
swap would not be a name for a name (`Guide._refused`): the model wrote a valid prefix of its own and goes on
where no allowed name does (the mask would finish the prefix into an unrelated name: `l` -> `lambda`), the best
token left starts no name at all (a newline where the model wrote a keyword argument), or the allowed names hold
less than `MIN_SWAP_MASS` where the name starts (the best of them is a guess). A swap never writes a dunder or
mangled name (`__x`) the model did not start itself (`self.` + `handle` went on `__getattribute__(request)`): where
only such names are left in the model's place, the monitor yields.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from repocomplete.model_runtime.config import MONITOR_KINDS  # noqa: F401  (the monitors the pipeline has)

MIN_ALLOWED_MASS = 1e-6  # below this share of the probability the allowed names are "vanishing": yield
# Below this share a swap of the model's first choice for a valid name is a guess (the model does not know the
# receiver's type or the scope it writes in): yield, the model's name stays. 0.1 on the base model (session 22);
# 0.01 with the shipped adapter, which is surer of the names it invents (session 26: valid identifiers on the
# member suites 92-93% at 0.1, 94.8% at 0.02, 96-97% at 0.01, eval/RESULTS.md "Session 26").
MIN_SWAP_MASS = 0.01
MASK_CACHE = 64  # masks kept per vocabulary (the same names and partial recur from step to step)


@dataclass(frozen=True)
class Constraint:
    names: tuple[str, ...]  # sorted
    partial: str  # identifier characters written since `start`
    start: int  # offset of the identifier's first character in (before + generated)
    monitor: str = ""
    what: str = ""  # what the names are of (a type, a call, a module), for showContext
    skip_space: bool = False  # spaces may come before the identifier (after `return`, `= `)
    free_other: bool = True  # a token that starts no identifier is allowed while nothing is written
    free_glued: bool = False  # (with skip_space) a token with no leading space is allowed while nothing is written:
    # it continues the word before the site (`return` + `_code`), which is then no keyword and the site no site
    assign: tuple[str, ...] = ()  # names (of `names`) written only as keywords: once whole, `=` must follow
    refuse: bool = False  # `names` are refused, not allowed (`Monitor.refusal`): a name nothing binds
    close: bool = False  # no argument may start here (the call takes no more): only its close, or blanks, follow


class Monitor(Protocol):
    name: str

    def constraint(self, before: str, generated: str) -> Constraint | None: ...

    # Optional: `keyword(before, generated) -> Constraint | None`, a constraint (its names unused) where the name the
    # text ends with may not be followed by a keyword argument's `=`.
    # Optional: `refusal(before, generated, token) -> Constraint | None`, where the model's choice `token` would
    # write (more of) a name the constraint's names refuse: the tokens that complete one of them are masked.
    # Optional: `closing(before, generated) -> Constraint | None`, a constraint (its names unused) where the call
    # open at the end of before + generated must not be closed yet.
    # Optional: `ahead(before, generated) -> None`, told the text of the next step as soon as the model chose its
    # token, before the model runs that step: a monitor starts what the step will ask (its analysis), not waiting.


def _fit(mask: torch.Tensor, n: int) -> torch.Tensor:
    """A mask over the tokenizer's vocabulary cut or padded (with False) to a logits row of n."""
    if mask.shape[0] < n:
        return torch.cat([mask, mask.new_zeros(n - mask.shape[0])])
    return mask[:n]


def _word(c: str) -> bool:
    return c.isalnum() or c == "_"


def _word_len(s: str, start: int = 0) -> int:
    i = start
    while i < len(s) and _word(s[i]):
        i += 1
    return i - start


def _assigns(t: str) -> bool:
    return t.startswith("=") and not t.startswith("==")


def _starts_name(t: str) -> bool:
    s = t.lstrip(" ")
    return bool(s) and _word(s[0]) and not s[0].isdigit()


class NameMask:
    """The decoded vocabulary grouped for names: tokens by their leading word (whole-word tokens, and tokens that
    go on past the word), with and without leading spaces. Built once per tokenizer (`for_vocab`)."""

    def __init__(self, texts: Sequence[str]):
        self.size = len(texts)
        self.texts = list(texts)
        self.whole: dict[str, list[int]] = {}
        self.cont: dict[str, list[int]] = {}
        self.sp_whole: dict[str, list[int]] = {}
        self.sp_cont: dict[str, list[int]] = {}
        free = torch.zeros(self.size, dtype=torch.bool)
        free_sp = torch.zeros(self.size, dtype=torch.bool)
        ends = torch.zeros(self.size, dtype=torch.bool)
        for i, t in enumerate(texts):
            if t and _word(t[0]):
                k = _word_len(t)
                (self.whole if k == len(t) else self.cont).setdefault(t[:k], []).append(i)
                if t[0].isdigit():  # a number: starts no identifier, may go on with one (`x` + `2`)
                    free[i] = free_sp[i] = True
                continue
            ends[i] = free[i] = True
            s = t.lstrip(" ")
            if s and s != t and _word(s[0]) and not s[0].isdigit():
                k = _word_len(s)
                (self.sp_whole if k == len(s) else self.sp_cont).setdefault(s[:k], []).append(i)
            else:
                free_sp[i] = True
        self.free, self.free_sp, self.ends = free, free_sp, ends
        self.word_led = torch.tensor([bool(t) and _word(t[0]) for t in texts], dtype=torch.bool)
        self.blank = torch.tensor([bool(t) and not t.strip(" \t") for t in texts], dtype=torch.bool)  # spaces alone
        self.spaces = torch.tensor([bool(t) and not t.strip() for t in texts], dtype=torch.bool)  # and line breaks
        # A keyword argument's `=` (`=`, ` =`, `=True`; not `==`), and name tokens that end with it (`name=`).
        self.assign_led = torch.tensor([_assigns(t.lstrip(" ")) for t in texts], dtype=torch.bool)
        self.cont_assign: dict[str, list[int]] = {}
        self.sp_cont_assign: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            s = t.lstrip(" ")
            if s and _word(s[0]) and not s[0].isdigit() and _assigns(s[_word_len(s):]):
                (self.cont_assign if s == t else self.sp_cont_assign).setdefault(s[:_word_len(s)], []).append(i)
        # Tokens that start an identifier (after leading spaces): what the model writes where it wants a name.
        self.name_start = torch.tensor([_starts_name(t) for t in texts], dtype=torch.bool)
        # Tokens that end an identifier written before them (`)`, `(`, `en(`), against those that go on with it.
        self.name_end = torch.tensor([_word_len(t) < len(t) or not t for t in texts], dtype=torch.bool)
        # Tokens that merge a dot with what follows (`.get`, `.<`): they start a member without a step at the dot.
        self.dot_whole: dict[str, list[int]] = {}
        self.dot_cont: dict[str, list[int]] = {}
        dot_led = torch.zeros(self.size, dtype=torch.bool)
        for i, t in enumerate(texts):
            if len(t) > 1 and t[0] == ".":
                dot_led[i] = True
                if _word(t[1]) and not t[1].isdigit():
                    k = _word_len(t, 1)
                    (self.dot_whole if k == len(t) - 1 else self.dot_cont).setdefault(t[1:1 + k], []).append(i)
        self.dot_led = dot_led
        # Tokens that close a bracket (`)`, ` )`, `),`) and that write an empty call (`()`, `():`, `())`).
        self.closes = torch.tensor([t.lstrip(" ").startswith(")") for t in texts], dtype=torch.bool)
        self.empty_call = torch.tensor([t.startswith("()") for t in texts], dtype=torch.bool)
        self.closing_ids = frozenset(self.closes.nonzero().flatten().tolist())  # (a step's test is a set lookup)
        self.empty_call_ids = frozenset(self.empty_call.nonzero().flatten().tolist())
        self.assign_ids = frozenset(self.assign_led.nonzero().flatten().tolist())
        self.name_ids = frozenset((self.name_start | self.word_led).nonzero().flatten().tolist())  # (more of) a name
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @classmethod
    def for_vocab(cls, vocab) -> "NameMask":
        """The mask of a `healing.VocabIndex` (kept on it: one per tokenizer)."""
        mask = getattr(vocab, "_name_mask", None)
        if mask is None:
            mask = cls(vocab.texts)
            vocab._name_mask = mask
        return mask

    def after_dot(self, c: Constraint) -> torch.Tensor:
        """For a member constraint `c` that starts after a dot not written yet: every token that does not merge a
        dot allowed, and of those that do (`.get`), the ones whose rest `c` allows."""
        key = ("." , c.names)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        ids: list[int] = []
        prefixes: set[str] = set()
        for n in c.names:
            prefixes.update(n[:j] for j in range(1, len(n) + 1))
        for p in prefixes:
            ids += self.dot_whole.get(p, ())
        for n in c.names:
            ids += self.dot_cont.get(n, ())
        return self._keep(key, ~self.dot_led, ids)

    def _keep(self, key: tuple, mask: torch.Tensor, ids: list[int]) -> torch.Tensor:
        """`mask` with the tokens `ids` set, cached under `key` (the least recently used dropped past MASK_CACHE)."""
        if ids:
            mask[torch.tensor(ids, dtype=torch.long)] = True
        self._cache[key] = mask
        if len(self._cache) > MASK_CACHE:
            self._cache.popitem(last=False)
        return mask

    def refusing(self, c: Constraint) -> torch.Tensor:
        """A bool tensor over the vocabulary: the tokens that would complete one of `c.names` after `c.partial`
        (the rest of the name as the token's whole leading word, after spaces where nothing is written yet)."""
        key = ("refuse", c.names, c.partial)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        ids: list[int] = []
        for n in c.names:
            rest = n[len(c.partial):] if n.startswith(c.partial) else ""
            if not rest:
                continue
            for group in (self.whole, self.cont) + ((self.sp_whole, self.sp_cont) if not c.partial else ()):
                ids += group.get(rest, ())
        return self._keep(key, torch.zeros(self.size, dtype=torch.bool), ids)

    def allowed(self, c: Constraint) -> torch.Tensor:
        """A bool tensor over the vocabulary: the tokens `c` allows."""
        key = (c.names, c.partial, c.skip_space, c.free_other, c.free_glued, c.assign, c.close)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        if c.close:
            return self._keep(key, self.closes | self.spaces, [])
        ids: list[int] = []
        names = c.names
        if not c.partial:
            base = (self.free_sp if c.skip_space else self.free) if c.free_other else None
            rests = [n for n in names if n and not n[0].isdigit()]
            spaced = c.skip_space
        else:
            lo = bisect.bisect_left(names, c.partial)
            hi = bisect.bisect_left(names, c.partial + "\U0010ffff")
            exact = lo < len(names) and names[lo] == c.partial
            base = (self.assign_led if c.partial in c.assign else self.ends) if exact else None
            rests = [n[len(c.partial):] for n in names[lo:hi]]
            rests = [r for r in rests if r]
            spaced = False
        assign = {n[len(c.partial):] for n in c.assign if n.startswith(c.partial)}
        prefixes: set[str] = set()
        for r in rests:
            prefixes.update(r[:j] for j in range(1, len(r) + 1))
        for p in prefixes:
            ids += self.whole.get(p, ())
            if spaced:
                ids += self.sp_whole.get(p, ())
        for r in rests:  # a token that completes the name and goes on: with `=` where the name is a keyword's
            ids += (self.cont_assign if r in assign else self.cont).get(r, ())
            if spaced:
                ids += (self.sp_cont_assign if r in assign else self.sp_cont).get(r, ())
        mask = base.clone() if base is not None else torch.zeros(self.size, dtype=torch.bool)
        if c.free_glued and not c.partial:
            mask |= self.word_led
        return self._keep(key, mask, ids)


@dataclass
class Span:
    """One identifier a monitor constrained (or yielded): offsets in the generated text (healed part included)."""

    monitor: str
    start: int
    names: int  # how many names were allowed
    what: str = ""
    yielded: str = ""  # why the monitor yielded ("" : it constrained the identifier)
    steps: int = 0  # decode steps it masked
    redirected: bool = False  # the mask took the model off its first choice at some step
    mass: float | None = None  # the share of the probability the allowed tokens held at the first step


@dataclass
class Guide:
    """The monitors of one request, applied each decode step after the healing mask."""

    monitors: Sequence[Monitor]
    names: NameMask
    before: str  # the prompt's text before the cursor, less what healing backed off
    min_mass: float = MIN_ALLOWED_MASS
    min_swap: float | None = None  # None: MIN_SWAP_MASS
    # Where the cursor is in (before + generated): what lies before it the user typed (healing regenerates it).
    # None: at the end of `before` (nothing healed).
    cursor: int | None = None
    # The tokens that end a single-line completion (stop tokens, a line break after blanks: `decoding.Closing`'s),
    # where its closing rule would turn an end into the call's closer; None where it does not apply.
    ends: torch.Tensor | None = None
    spans: dict[tuple[str, int], Span] = field(default_factory=dict)
    ms: float = 0.0  # time spent in monitors and masks
    steps: int = 0
    _ends: tuple | None = field(default=None, repr=False)  # (vocabulary size, end ids, closers | ends, ends mask)
    _closed: bool = field(default=False, repr=False)  # this step's close was the mask's, not the model's

    def apply(self, logits: torch.Tensor, generated: str) -> torch.Tensor:
        """logits [vocab] (healing's mask already added) -> logits with the monitors' masks added."""
        t0 = time.perf_counter()
        self.steps += 1
        try:
            closed, self._closed = self._closed, False
            if closed and self.ends is not None and generated.endswith(")"):
                # The model meant to give the call arguments and the mask closed it: what the model writes after a
                # close it did not choose is no plan of its own (anyio's `aclose(` went on `).close()`, `receive(`
                # on `), self.receive_stream.receive(), ...`). A single-line completion ends there (its closing
                # rule closes what else is open).
                ends = self._end_masks(logits.shape[-1])[2].to(logits.device)
                masked = logits.masked_fill(~ends, float("-inf"))
                if torch.isfinite(masked).any():
                    return masked
            for monitor in self.monitors:
                c = monitor.constraint(self.before, generated)
                if c is not None:
                    allowed = self.names.allowed(c)
                    if c.close and self.ends is not None:  # an end is a close too: the closing rule writes it
                        n = logits.shape[-1]
                        allowed = _fit(allowed, n) | self._end_masks(n)[1]
                    logits = self._mask(logits, monitor, c, allowed, build=self.names.allowed)
                    span = self.spans.get((c.monitor or monitor.name, c.start))
                    self._closed |= c.close and span is not None and span.redirected and not span.yielded
            top = int(torch.argmax(logits))
            refused: set[tuple[str, ...]] = set()
            while top in self.names.name_ids:
                # The model writes (more of) a name: a monitor may refuse it where it would be a name nothing binds
                # (`self` in a classmethod, where the scope monitor is silent: a call's first argument); the
                # model's next choice is asked in turn (`cls`, in a plain function).
                asked = len(refused)
                for monitor in self.monitors:
                    refusal = getattr(monitor, "refusal", None)
                    c = refusal(self.before, generated, self.names.texts[top]) if refusal is not None else None
                    if c is not None and c.names not in refused:
                        refused.add(c.names)
                        logits = self._mask(logits, monitor, c, ~self.names.refusing(c))
                if len(refused) == asked:
                    break  # nothing refused: the model's choice stands (no second argmax on the common step)
                top = int(torch.argmax(logits))
            # A token that merges a dot with a member (`.get`) starts an identifier without a step at the dot: when
            # the model's choice is such a token, the monitors are asked as if the dot were written.
            if top < self.names.size and self.names.dot_led[top]:
                for monitor in self.monitors:
                    c = monitor.constraint(self.before, generated + ".")
                    if c is not None and not c.free_other:
                        after = self.names.after_dot(c)
                        logits = self._mask(logits, monitor, c, after, build=self.names.after_dot)
            else:
                logits = self._call_rules(logits, generated, top)
            return logits
        finally:
            self.ms += (time.perf_counter() - t0) * 1000

    def ahead(self, generated: str) -> None:
        """The model chose its token (`generated` is the next step's text): the monitors may start that step's
        analysis while the model runs it (`Monitor.ahead`)."""
        t0 = time.perf_counter()
        try:
            for monitor in self.monitors:
                ahead = getattr(monitor, "ahead", None)
                if ahead is not None:
                    ahead(self.before, generated)
        finally:
            self.ms += (time.perf_counter() - t0) * 1000

    def _call_rules(self, logits: torch.Tensor, generated: str, top: int) -> torch.Tensor:
        """The arity rule where the model's choice `top` closes a call, the keyword rule where it is a `=` after a
        name; each at most once, on what the other leaves (`ConsoleOptions(options` then `))`: the close refused, the
        `=` the model writes instead is judged as its own choice)."""
        asked: set[str] = set()
        unclosed: tuple[torch.Tensor, list[Span]] | None = None  # the logits before the arity rule, its spans
        while True:
            refused, empty = self._closing_tokens(top, logits.shape[-1])
            if refused is not None and "closing" not in asked:
                asked.add("closing")
                unclosed = (logits, [])
                # The model closes a call (or writes an empty one, or ends where the closing rule would close it):
                # the arity rule, asked as if the `(` of an empty call were written.
                for monitor in self.monitors:
                    closing = getattr(monitor, "closing", None)
                    if closing is None:
                        continue
                    c = closing(self.before, generated + ("(" if empty else ""))
                    if c is None and empty and (self.before + generated).endswith("("):
                        # `f(` then `()`: an empty tuple where the call needs its argument is the empty call the
                        # rule refused a step before, written in two tokens
                        c = closing(self.before, generated)
                    if c is not None:
                        logits = self._mask(logits, monitor, c, ~refused)
                        unclosed[1].append(self.spans[(c.monitor or monitor.name, c.start)])
            elif refused is None and top in self.names.assign_ids and "keyword" not in asked:
                asked.add("keyword")
                # The model makes the name before it a keyword (`=`): the keyword rule. The name ends there (the
                # model meant it whole): no `=`, and no token that would go on with it into another name.
                refuse = ~(self.names.assign_led | self.names.word_led)
                for monitor in self.monitors:
                    keyword = getattr(monitor, "keyword", None)
                    c = keyword(self.before, generated) if keyword is not None else None
                    if c is None:
                        continue
                    masked = self._mask(logits, monitor, c, refuse)
                    if masked is not logits and unclosed is not None and not all(s.yielded for s in unclosed[1]):
                        # The close was refused and the keyword the model wrote instead is refused too: it has no
                        # argument to give (`ConsoleOptions(options` went on `options.max_width, options.max_height,
                        # ...` to the token limit). The arity rule yields; the keyword rule stands.
                        for span in unclosed[1]:
                            span.yielded = "no argument the model would write"
                        masked = self._mask(unclosed[0], monitor, c, refuse)
                    logits = masked
            else:
                return logits
            top = int(torch.argmax(logits))

    def _without_dunders(self, c: Constraint, top: int) -> tuple[str, ...] | None:
        """The names a swap may write in place of the model's choice `top`: `c`'s less the dunder and mangled ones
        (`__x`), unless the identifier (with `top`) starts with `__`; None where that leaves none out (or where `c`
        allows no names: a close, a refusal)."""
        if c.close or c.refuse or top >= self.names.size or \
                (c.partial + self.names.texts[top].lstrip(" .")).startswith("__"):
            return None
        kept = tuple(n for n in c.names if not n.startswith("__"))
        return kept if len(kept) < len(c.names) else None

    def _closing_tokens(self, top: int, n: int) -> tuple[torch.Tensor | None, bool]:
        """The tokens the arity rule refuses where the model's choice `top` closes a call, and whether that choice
        is an empty call; (None, False) where it closes nothing."""
        names = self.names
        if top in names.empty_call_ids:
            return names.empty_call, True
        if self.ends is None:
            return (names.closes, False) if top in names.closing_ids else (None, False)
        end_ids, closes_or_ends, _ = self._end_masks(n)
        if top in names.closing_ids or top in end_ids:
            return closes_or_ends, False
        return None, False

    def _end_masks(self, n: int) -> tuple[frozenset, torch.Tensor, torch.Tensor]:
        """For a vocabulary of n: the end tokens' ids, the mask of closers or ends, and of ends (`ends` given)."""
        if self._ends is None or self._ends[0] != n:
            ids = self.ends[self.ends < n].cpu()
            closes = _fit(self.names.closes, n)
            ends = torch.zeros(n, dtype=torch.bool)
            ends[ids] = True
            self._ends = (n, frozenset(ids.tolist()), closes | ends, ends)
        return self._ends[1], self._ends[2], self._ends[3]

    def _mask(self, logits: torch.Tensor, monitor, c: Constraint, allowed: torch.Tensor, build=None) -> torch.Tensor:
        """`logits` masked to `allowed` under the yield rules; `build`: how `allowed` was made from `c`'s names
        (`NameMask.allowed`, `after_dot`), for a swap's narrower mask (None: a swap keeps `allowed`)."""
        key = (c.monitor or monitor.name, c.start)
        span = self.spans.get(key)
        if span is None:
            span = self.spans[key] = Span(key[0], c.start - len(self.before), len(c.names), c.what)
        if span.yielded:
            return logits
        allowed = _fit(allowed, logits.shape[-1]).to(logits.device)
        masked = logits.masked_fill(~allowed, float("-inf"))
        if not torch.isfinite(masked).any():
            span.yielded = "no token left"
            return logits
        probs = None
        if not span.steps:  # judged where the identifier starts
            probs = torch.softmax(logits.float(), dim=-1)
            span.mass = float(probs[allowed].sum())
            if span.mass < self.min_mass:
                span.yielded = "vanishing probability"
                return logits
        top = int(torch.argmax(logits))
        names = self.names
        if not allowed[top] and not c.partial and top < names.size and names.name_start[top] and \
                (c.free_glued or c.skip_space):
            # The model starts a name the mask refuses (` Current` after `return`): a swap goes to a name in its
            # place, never to a token glued to the keyword before the site (`return` + `s`: free only where the
            # model itself goes on with it), nor to spaces alone (the name would follow two spaces).
            drop = names.blank | names.word_led if c.free_glued else names.blank
            allowed = allowed & ~_fit(drop, allowed.shape[0]).to(allowed.device)
            masked = logits.masked_fill(~allowed, float("-inf"))
            if not torch.isfinite(masked).any():
                span.yielded = "no token left"
                return logits
        if not allowed[top]:
            why = self._refused(c, logits, probs, allowed, masked, top, span)
            kept = self._without_dunders(c, top) if not why and build is not None else None
            if kept is not None:
                # A swap writes no dunder or mangled name (`__x`) the model did not start itself: the names left
                # must still give a name (or the rest of one) in the model's place, else the monitor yields.
                narrower = build(dataclasses.replace(c, names=kept))
                narrower = allowed & _fit(narrower, allowed.shape[0]).to(allowed.device)
                masked = logits.masked_fill(~narrower, float("-inf"))
                best = int(torch.argmax(masked))
                if not torch.isfinite(masked).any() or (not c.partial and names.name_start[top] and (
                        best >= names.size or not names.name_start[best])):
                    why = "no allowed name in the model's place"
            if why:
                span.yielded = why
                return logits
            span.redirected = True
        span.steps += 1
        return masked

    def _refused(self, c: Constraint, logits, probs, allowed, masked, top: int, span: Span) -> str:
        """Why the monitor should leave the model its first choice `top`, which the mask refuses ("" : it should
        not). A mask that swaps the model's name for another valid one is the point; two swaps are not:

        * the model wrote, by its own choice, the start of a name that is a prefix of allowed ones, and now goes
          on where no allowed name does, and the mask would turn an end of the name into more of it or more of
          it into an end (`l` then `)`: `lambda`; `set` then `_table`: `set(`): the valid name that prefix
          begins is not the model's. Unless the valid continuations together outweigh the model's choice, it
          yields (the rest of the identifier is free). Where both go on (`is_code` then `block`: `_block`) the
          mask corrects a spelling and keeps the name.
        * nothing of the name is written, the model starts one, and the best token the mask leaves starts none (a
          newline, a bracket): the mask would not replace the name but drop it (`f(a=1, ` then a newline).
        * nothing of the name is written and the allowed names hold less than `min_swap` of the probability: the
          best of them is a guess (`token.append(...)` swapped for `token.content = ...`).
        """
        names = self.names
        if c.partial:
            if span.redirected:
                return ""  # the mask chose this name's start: it finishes what it began
            cursor = len(self.before) if self.cursor is None else self.cursor
            if c.start + len(c.partial) <= cursor:
                return ""  # all of it was typed by the user (or regenerated by healing): the name must start so
            best = int(torch.argmax(masked))
            if max(top, best) >= names.size or bool(names.name_end[top]) == bool(names.name_end[best]):
                return ""  # a name for a name, or a spelling corrected
            if probs is None:
                probs = torch.softmax(logits.float(), dim=-1)
            if float(probs[allowed].sum()) < float(probs[top]):
                return "the model's name is not allowed"
            return ""
        if top < names.size and names.name_start[top] and not (c.refuse or c.close):
            # (a refused name, an argument the call does not take, is an error, not a guess: what the model writes
            # in its place need not be a name)
            best = int(torch.argmax(masked))
            if best >= names.size or not names.name_start[best]:
                return "no allowed name in the model's place"
        min_swap = MIN_SWAP_MASS if self.min_swap is None else self.min_swap
        if span.mass is not None and not span.steps and span.mass < min_swap:
            return "the allowed names are a guess"
        return ""

    def report(self, generated: str, healed: str) -> list[dict]:
        """The spans as the completion reports them: offsets in the completion's text (after the healed part),
        the identifier the model wrote there."""
        out: dict[int, dict] = {}
        for span in self.spans.values():
            if not span.steps and not span.yielded:
                continue
            start = max(0, span.start)
            while start < len(generated) and generated[start] in " \t":  # a trigger before spaces (`return `)
                start += 1
            end = start + _word_len(generated, start)
            first = start if span.start >= 0 else span.start  # the identifier began in the prompt (user-typed)
            entry = {"monitor": span.monitor, "start": first - len(healed), "end": end - len(healed),
                     "text": generated[start:end], "names": span.names, "what": span.what,
                     "yielded": span.yielded or None, "redirected": span.redirected,
                     "mass": None if span.mass is None else round(span.mass, 4)}
            if end > start or span.yielded or (not span.names and span.redirected):  # (the arity rule: no name)
                out.setdefault(first, entry)  # one entry per identifier: the first monitor that saw it
        return list(out.values())
