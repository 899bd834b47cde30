"""The monitors of monitor-guided decoding for Python: where an identifier starts and which names may go there.

The pipeline joins the context engine's analysis (`context_engine.facts`, jedi in its worker process) and the
model runtime's token mask (`model_runtime.monitor`). A `Session` follows one completion: it scans the buffer's
text before the cursor once (strings, comments, brackets, the logical line) and the generated text as it grows,
finds the identifier being written (`Site`), and asks the analysis for the facts at its start, once per trigger
(cached by the text before it; the wait is budgeted per completion: an answer later than that leaves the span alone).

* `deref`: after `expr.`, the members of the receiver's inferred type.
* `scope`: a new identifier at the start of an expression (after `= `, `return `, an operator, `, ` inside
  brackets, ...) must be bound, a builtin, a keyword or imported; the names in scope come from the analysis at
  the cursor, plus every identifier already written on the statement or generated. Places where a name may be
  defined are never constrained: statement starts, `def`/`class` lines, `for ... in`, `as`, `lambda`, `global`,
  the first element of a bracket (a comprehension may bind it), conditions of `if`/`while` (a walrus).
* `args`: in a call whose signature is known: a keyword parameter not given yet (followed by `=` where no name of
  its own is in scope), or, while positional slots remain, a name in scope (the first argument only when the
  function takes nothing by position: a generator expression could bind names). Silent for `**kwargs` functions,
  after `*`/`**` unpacking, for overloaded functions (jedi lists only some overloads) and where the call already
  passes a keyword or more positional arguments than the signature takes (it is not the signature of this call).
  And a call is not closed while a required parameter of its signature is not passed (`run_sync()` where
  `run_sync(func, *args)`; `get_style(` then `)` where `get_style(name, *, default=None)`): MGD's arity monitor.
* `imports`: `from pkg.mod import ` offers that module's names, `import pkg.` / `from pkg.` its submodules.

Unknown facts (dynamic code, `Any`, failed inference, a late answer) leave the monitor silent.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from repocomplete.model_runtime.monitor import MONITOR_KINDS, Constraint

MONITORS = MONITOR_KINDS
# Keywords that may start an expression: always allowed where a name in scope is.
EXPRESSION_KEYWORDS = ("False", "None", "True", "await", "lambda", "not", "yield")
_IDENT = re.compile(r"[^\W\d]\w*")
# A method's first parameter by convention: read where nothing binds it, a NameError, and never a new name a
# comprehension or an assignment binds.
RECEIVERS = frozenset({"self", "cls"})
_OPERATOR_END = re.compile(r"(?:[-+*/%&|^~<>@=]|\*\*|//|==|!=|<=|>=|<<|>>|->)$")
_EXPR_KEYWORD_END = re.compile(r"(?:^|[^\w.])(return|yield|await|not|and|or|in|is|if|else|assert|raise|except|with|"
                               r"from|print)$")
_DEFINING_START = re.compile(r"^\s*(?:async\s+)?(?:def|class|global|nonlocal|del|import)\b")
_CONDITION_START = re.compile(r"^\s*(?:if|elif|while)\s*$")
_FROM_IMPORT = re.compile(r"^\s*from\s+[\w.]+\s+import\s+\(?\s*(?:\w+(?:\s+as\s+\w+)?\s*,\s*)*$")
_MODULE_PATH = re.compile(r"^\s*(?:from|import)\s+[\w.]*\.$")


def parse_monitors(value: str | None) -> tuple[str, ...] | None:
    """`none`, `all`, or a comma list of deref, scope, args, imports; `auto` (None): the default, every monitor with
    a local model and none with an endpoint (`RuntimeConfig.active_monitors`). ValueError names the unknown ones."""
    if value is None:
        return ()
    value = value.strip()
    if value == "auto":
        return None
    if value in ("", "none"):
        return ()
    if value == "all":
        return MONITORS
    kinds = tuple(dict.fromkeys(k.strip() for k in value.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in MONITORS]
    if unknown:
        raise ValueError(f"unknown monitors {', '.join(unknown)}; expected auto, none, all or a comma list of "
                         f"{', '.join(MONITORS)}")
    return kinds


def monitors_text(kinds) -> str:
    """The inverse of `parse_monitors`: "auto" (None), "none", "all" or the comma list."""
    if kinds is None:
        return "auto"
    kinds = tuple(kinds)
    if not kinds:
        return "none"
    return "all" if set(kinds) == set(MONITORS) else ",".join(kinds)


# -- scanning -----------------------------------------------------------------------------------------------------


@dataclass
class ScanState:
    """Where a scan of Python text stands: inside a string (its quote) or a comment, the open brackets
    (char, offset, is a call), the offset where the logical line starts."""

    quote: str = ""
    comment: bool = False
    brackets: list = field(default_factory=list)
    line_start: int = 0
    pos: int = 0  # how much text was scanned

    def copy(self) -> "ScanState":
        return ScanState(self.quote, self.comment, list(self.brackets), self.line_start, self.pos)


_TOKEN = re.compile(r'"""' + r"|'''" + r"""|["'#()\[\]{}\n;\\]""")
_STRING_END = {
    '"': re.compile(r'(?:[^"\\\n]|\\.)*("|\n)', re.S),
    "'": re.compile(r"(?:[^'\\\n]|\\.)*('|\n)", re.S),
    '"""': re.compile(r'(?:[^"\\]|\\.|"(?!""))*"""', re.S),
    "'''": re.compile(r"(?:[^'\\]|\\.|'(?!''))*'''", re.S),
}
_HEADS: OrderedDict[tuple[int, int], ScanState] = OrderedDict()  # the scans of texts' heads, most recent last
_HEADS_KEPT = 16
_HEADS_LOCK = threading.Lock()


def scan_head(text: str, upto: int) -> ScanState:
    """The scan of text[:upto] from the text's start: only a scan from the start knows whether a line is inside a
    string (the source a triple-quoted string hands to `compile` looks like any other line). The scan up to the line
    holding `upto` is kept (by the head's length and hash), so typing on a line, and the steps of one completion,
    scan that line alone; on a new line the kept head of the line above is scanned on from."""
    head = text.rfind("\n", 0, upto) + 1
    key = (head, hash(text[:head]))
    with _HEADS_LOCK:
        state = _HEADS.get(key)
        if state is not None:
            _HEADS.move_to_end(key)
    if state is None:
        # A new line below a kept head (the user pressed Enter): scan on from the kept head's state.
        before = text.rfind("\n", 0, max(0, head - 1)) + 1 if head else 0
        with _HEADS_LOCK:
            kept = _HEADS.get((before, hash(text[:before]))) if before < head else None
        state = scan(kept.copy() if kept is not None else ScanState(), text, head)
        with _HEADS_LOCK:
            _HEADS[key] = state
            while len(_HEADS) > _HEADS_KEPT:
                _HEADS.popitem(last=False)
    return scan(state.copy(), text, upto)


def scan(state: ScanState, text: str, upto: int) -> ScanState:
    """Advance `state` over text[state.pos:upto] (in place), jumping from one string, comment, bracket or line end
    to the next."""
    i = state.pos
    while i < upto:
        if state.quote:
            m = _STRING_END[state.quote].match(text, i, upto)
            if m is None:  # the string goes on past `upto`
                break
            i = m.end()
            state.quote = ""
            if text[i - 1] == "\n" and not state.brackets:  # an unterminated one-line string ends with its line
                state.line_start = i
            continue
        if state.comment:
            j = text.find("\n", i, upto)
            if j < 0:
                break
            state.comment = False
            i = j  # the newline itself is handled below
        m = _TOKEN.search(text, i, upto)
        if m is None:
            break
        c = m.group(0)
        i = m.end()
        if c in ('"', "'", '"""', "'''"):
            state.quote = c
        elif c == "#":
            state.comment = True
        elif c == "\\":
            i += 1  # an escaped character: a line continuation
        elif c in "([{":
            j = m.start()
            while j > 0 and text[j - 1] in " \t":
                j -= 1
            call = c == "(" and j > 0 and (text[j - 1] in ")]" or (_word_char(text[j - 1]) and not _keyword_before(text, j)))
            state.brackets.append((c, m.start(), call))
        elif c in ")]}":
            if state.brackets:
                state.brackets.pop()
        elif c in "\n;" and not state.brackets:
            state.line_start = i
    state.pos = max(state.pos, upto)
    return state


def _word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _keyword_before(text: str, end: int) -> bool:
    m = re.search(r"(\w+)$", text[max(0, end - 12):end])
    return bool(m) and m.group(1) in ("if", "in", "not", "and", "or", "return", "yield", "elif", "while", "for",
                                      "else", "is", "await", "assert", "del", "with", "lambda", "except", "print")


@dataclass(frozen=True)
class Site:
    """The identifier being written: its monitor kind, where it starts, what of it is written."""

    kind: str  # deref | scope | args | imports
    start: int
    partial: str
    skip_space: bool = False
    call: int = -1  # args: offset of the call's "("
    line_start: int = 0  # where the logical line (the statement) starts
    glued: bool = False  # the site is after a keyword not yet followed by its space: a token glued to it is free


# Keywords an expression follows: where the text ends with one, the expression's first name starts after its space.
_KEYWORD_TRIGGERS = frozenset({"return", "yield", "await", "not", "and", "or", "in", "is", "if", "else", "assert",
                               "raise", "except", "with"})


def site_at(text: str, state: ScanState) -> Site | None:
    """Classify the end of `text` (`state`: the scan up to where the trailing identifier starts)."""
    site = _after_keyword(text, state) or _site_at(text, state)
    return replace(site, line_start=state.line_start) if site is not None else None


def _after_keyword(text: str, state: ScanState) -> Site | None:
    """`return` as the text's end: the tokenizer writes the space and the name after it as one token (` value`), so
    the name's site is the one after `return `, with the space to come (`skip_space`). A token glued to the keyword
    (`return` + `_code`: another name) is free."""
    p = len(text)
    while p > 0 and _word_char(text[p - 1]):
        p -= 1
    if text[p:] not in _KEYWORD_TRIGGERS or (p > 0 and text[p - 1] == "."):
        return None
    site = _site_at(text + " ", state)
    if site is None or site.kind != "scope" or site.partial:
        return None
    return replace(site, skip_space=True, glued=True)


def _site_at(text: str, state: ScanState) -> Site | None:
    end = len(text)
    p = end
    while p > 0 and _word_char(text[p - 1]):
        p -= 1
    partial = text[p:end]
    if partial[:1].isdigit():
        return None
    if state.quote or state.comment:
        return None
    line = text[state.line_start:p]
    stripped = line.rstrip(" \t")
    spaced = len(stripped) < len(line)
    if "\n" in line and not state.brackets:
        return None
    if stripped.endswith("."):
        if spaced or stripped.endswith("..."):
            return None
        if _MODULE_PATH.match(stripped):
            return Site("imports", p, partial)
        before_dot = stripped[:-1]
        if not before_dot or not (_word_char(before_dot[-1]) or before_dot[-1] in ")]\"'"):
            return None
        m = re.search(r"[\w.]+$", before_dot)
        if m and re.fullmatch(r"\d[\d_]*", m.group(0)):
            return None  # a number: `1.`
        if re.fullmatch(r"\s*(?:self|cls)\.", stripped):
            return None  # `self.name = ...` at a statement's start may define the attribute
        return Site("deref", p, partial, line_start=state.line_start)
    if _FROM_IMPORT.match(line):
        return Site("imports", p, partial, skip_space=not spaced and not line.endswith(("(", ",")))
    logical = text[state.line_start:p]
    if _DEFINING_START.match(logical) or re.search(r"\blambda\b", logical):
        return None
    if re.search(r"(?:^|[^\w.])as\s*$", stripped) or re.search(r"(?:^|\W)(global|nonlocal)\b", logical):
        return None
    last_for = None
    for m in re.finditer(r"(?:^|[^\w.])for\b", logical):
        last_for = m
    if last_for is not None and not re.search(r"\bin\b", logical[last_for.end():]):
        return None  # a `for` target, in a statement or a comprehension
    if _CONDITION_START.match(stripped):
        return None  # `if x := ...`
    if not stripped:
        return None  # a statement starts: an assignment target may be defined
    last = stripped[-1]
    top = state.brackets[-1] if state.brackets else None
    if last in "([{":
        if last == "(" and top is not None and top[2]:
            return Site("args", p, partial, call=top[1])
        return None  # the first element of a bracket: a comprehension may bind the name
    if last == ",":
        if top is None:
            return None  # `a, b = ...`
        if top[2]:
            return Site("args", p, partial, call=top[1])
        return Site("scope", p, partial)
    if last == ":":
        return Site("scope", p, partial) if top is not None and top[0] in "[{" else None
    if last == "=" and top is not None and top[2] and re.search(r"[\w\s]=$", stripped) and \
            not re.search(r"[=!<>]=$", stripped):
        return Site("scope", p, partial, skip_space=not spaced)  # a keyword argument's value
    if _OPERATOR_END.search(stripped) and not stripped.endswith((":=",)):
        return Site("scope", p, partial, skip_space=not spaced)
    if _EXPR_KEYWORD_END.search(stripped):
        if not spaced and not partial:
            return Site("scope", p, partial, skip_space=True)
        if spaced:
            return Site("scope", p, partial)
    return None


# -- the session of one completion ----------------------------------------------------------------------------------


def _identifiers(text: str) -> set[str]:
    return set(_IDENT.findall(text))


def _call_state(text: str, call: int, end: int, last: bool = False) -> tuple[int, set[str], bool]:
    """(positional arguments given, keywords given, an unpacking seen) between a call's "(" and `end` (`last`: the
    argument being written, after the last comma, counts too)."""
    depth, positional, keywords, unpack = 0, 0, set(), False
    segment_start = call + 1
    segments = []
    i = call + 1
    while i < end:
        c = text[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            segments.append(text[segment_start:i])
            segment_start = i + 1
        i += 1
    if last:
        segments.append(text[segment_start:end])
    for seg in segments:
        s = seg.strip()
        m = re.match(r"([^\W\d]\w*)\s*=(?!=)", s)
        if m:
            keywords.add(m.group(1))
        elif s.startswith("*"):
            unpack = True
        elif s:
            positional += 1
    return positional, keywords, unpack


class Session:
    """One completion's view of the buffer: the scan of the text before the cursor, the analysis' answers."""

    def __init__(self, analyst, rel: str, text: str, offset: int, kinds: tuple[str, ...], wait_s: float | None):
        self.analyst = analyst
        self.rel = rel
        self.buffer_before = text[:offset]
        self.suffix = text[offset:]
        self.kinds = kinds
        # What the decode loop may wait for the analysis in all (None: until answered): shared by the triggers of
        # the completion, so its added latency stays bounded however many identifiers the model starts.
        self.wait_left = wait_s
        self.window_prefix_len: int | None = None  # the model's window of the text before the cursor (pipeline)
        self._prompt_len: int | None = None  # the length of the buffer text the engine's `before` ends at
        self._state: ScanState | None = None
        self._scope_names: tuple[str, ...] | None | bool = False  # False: not asked yet
        self._facts: dict[tuple, object] = {}
        self._last: tuple | None = None
        self._ahead: tuple | None = None  # the last question submitted ahead of its step
        self.waited_ms = 0.0
        self.queries = 0

    def _base(self, before: str) -> tuple[str, ScanState]:
        """The buffer's text before the cursor less what healing backed off (the engine's `before` is the model's
        window of it: its length tells how much was backed off), and its scan."""
        if self._prompt_len is None:
            healed = max(0, self.window_prefix_len - len(before)) if self.window_prefix_len is not None else 0
            self._prompt_len = len(self.buffer_before) - healed
            buffer = self.buffer_before[: self._prompt_len]
            self._state = scan_head(buffer, len(buffer))
        return self.buffer_before[: self._prompt_len], self._state

    def site_for(self, before: str, generated: str) -> tuple[Site, str] | None:
        key = (len(before), generated)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        base, state = self._base(before)
        text = base + generated
        p = len(text)
        while p > 0 and _word_char(text[p - 1]):
            p -= 1
        if p < state.pos:  # the identifier started in the prompt: scan the prompt up to its start afresh
            state = scan_head(text, p)
        else:
            state = scan(state.copy(), text, p)
        site = site_at(text, state)
        result = (site, text) if site is not None else None
        self._last = (key, result)
        return result

    @staticmethod
    def _query(site: Site, text: str) -> tuple[str, str, int]:
        """What the analysis is asked for a site: (kind, the text before the identifier, its offset)."""
        at = site.call + 1 if site.kind == "args" else site.start
        return site.kind, text[:at], at

    def ahead(self, before: str, generated: str) -> None:
        """The model chose its token and the next step's text is known: where it ends at a site the analysis answers
        (`obj.`, `f(`, `from m import `), submit the question now, not waiting, so that the worker answers it while
        the model runs its next step, and the step's `_ask` finds it answered."""
        submit = getattr(self.analyst, "submit", None)
        found = self.site_for(before, generated) if submit is not None else None
        if found is None or found[0].kind == "scope" or found[0].kind not in self.kinds:
            return
        kind, head, at = self._query(*found)
        key = (kind, len(head), hash(head))
        if key in self._facts or key == self._ahead:
            return
        self._ahead = key
        submit(kind, self.rel, head + self.suffix, at)

    def _ask(self, site: Site, text: str):
        """The facts for a site (once per trigger: cached by the text before the identifier)."""
        kind, before, at = self._query(site, text)
        key = (kind, len(before), hash(before))
        if key not in self._facts:
            t0 = time.perf_counter()
            self.queries += 1
            facts = self.analyst.facts(kind, self.rel, before + self.suffix, at, self.wait_left)
            self._waited(t0)
            if facts is None:  # late: the answer stays cached in the analyst, this span goes unconstrained
                return None
            self._facts[key] = facts
        return self._facts[key]

    def _waited(self, t0: float) -> None:
        spent = time.perf_counter() - t0
        self.waited_ms += spent * 1000
        if self.wait_left is not None:
            self.wait_left = max(0.0, self.wait_left - spent)

    def scope_names(self) -> tuple[str, ...] | None:
        """The names in scope at the cursor (asked once per completion)."""
        if self._scope_names is False:
            at = len(self.buffer_before)
            while at > 0 and _word_char(self.buffer_before[at - 1]):
                at -= 1
            t0 = time.perf_counter()
            facts = self.analyst.facts("scope", self.rel, self.buffer_before[:at] + self.suffix, at, self.wait_left)
            self._waited(t0)
            self._scope_names = facts.names if facts is not None else None
        return self._scope_names

    def _in_scope(self, text: str, site: Site) -> tuple[str, ...] | None:
        names = self.scope_names()
        if names is None:
            return None
        # what the statement wrote so far (a comprehension's variable) and what the model generated (multi-line)
        extra = _identifiers(text[site.line_start: site.start]) | set(EXPRESSION_KEYWORDS)
        extra |= _identifiers(text[min(self._prompt_len or 0, site.start): site.start])
        return tuple(sorted(set(names) | extra))

    def constraint(self, kind: str, before: str, generated: str) -> Constraint | None:
        found = self.site_for(before, generated)
        if found is None:
            return None
        site, text = found
        if site.kind != kind:
            return None
        c = self._constraint(kind, site, text)
        if c is None:
            return None
        return replace(c, start=self._engine_offset(site.start, before))

    def _engine_offset(self, at: int, before: str) -> int:
        """An offset of the buffer text as the engine counts (in before + generated: the model's window)."""
        return at - (self._prompt_len or 0) + len(before)

    def _constraint(self, kind: str, site: Site, text: str) -> Constraint | None:
        if kind in ("deref", "imports"):
            facts = self._ask(site, text)
            if facts is None or facts.names is None:
                return None
            return Constraint(facts.names, site.partial, site.start, kind, facts.what, skip_space=site.skip_space,
                              free_other=kind != "deref")
        if kind == "scope":
            names = self._in_scope(text, site)
            if names is None:
                return None
            return Constraint(names, site.partial, site.start, kind, "names in scope", skip_space=site.skip_space,
                              free_glued=site.glued)
        # args
        facts = self._ask(site, text)
        if facts is None or not facts.signatures:
            return None
        if any(sig.any_keyword for sig in facts.signatures):
            return None
        if len(facts.signatures) > 1:
            return None  # overloads: jedi lists only some (anyio's lru_cache: not the keyword-only one)
        positional, given, unpack = _call_state(text, site.call, site.start)
        if unpack:
            return None
        if given - {k for sig in facts.signatures for k in sig.keywords} or \
                all(sig.positional is not None and positional > sig.positional for sig in facts.signatures):
            return None  # the call already passes what no signature takes: they do not describe it
        keywords = set()
        for sig in facts.signatures:  # less the parameters given by position, and the keywords given
            keywords |= set(sig.keywords) - set(sig.by_position[:positional])
        keywords -= given
        slots = [sig.positional for sig in facts.signatures]
        first = text[site.call + 1: site.start].strip() == ""
        positional_left = any(s is None or s > positional for s in slots)
        if positional_left:
            if first:
                return None  # a generator expression could bind names: `sum(x for x in xs)`
            names = self._in_scope(text, site)
            if names is None:
                return None
            allowed = set(names) | keywords
            assign = keywords - set(names)  # a parameter's name that nothing binds here is a keyword: `name=`
        else:
            allowed = assign = keywords
        if not allowed:
            if site.partial:
                return None  # a name the user began
            if facts.signatures[0].kind == "class" and not facts.signatures[0].params:
                return None  # object's: a decorator jedi does not follow may write the class's `__init__` (attrs)
            # The call takes no more arguments (`aclose(`, `receive(`: the model wrote `aclose(exc_type=exc_type)`):
            # none may start here, only the call's close (or blanks: a call written over lines).
            more = " more" if positional or given else ""
            return Constraint((), "", site.start, kind, f"`{facts.what}` takes no{more} arguments", skip_space=True,
                              close=True)
        return Constraint(tuple(sorted(allowed)), site.partial, site.start, kind, f"arguments of `{facts.what}`",
                          skip_space=True, assign=tuple(sorted(assign)))

    def _open_call(self, text: str, upto: int, state: ScanState, where=None) -> tuple[int, object] | None:
        """The call open at `upto` of `text` (`state`: the scan of the prompt), as (the offset of its "(", the
        analysis' facts), where the facts give one signature; None outside a call's brackets
        (in a string, a comment, another bracket, a `def`'s or `lambda`'s parameters), where `where(call)` is false,
        or for an unknown or overloaded signature."""
        state = scan(state.copy(), text, upto) if upto >= state.pos else scan_head(text, upto)
        if state.quote or state.comment or not state.brackets:
            return None
        char, call, is_call = state.brackets[-1]
        if char != "(" or not is_call or (where is not None and not where(call)):
            return None
        logical = text[state.line_start:call]
        if _DEFINING_START.match(logical) or re.search(r"\blambda\b", logical):
            return None  # `def f(`: parameters, not arguments
        facts = self._ask(Site("args", call + 1, "", call=call), text)
        if facts is None or len(facts.signatures) != 1:
            return None  # unknown, or overloads: jedi lists only some
        return call, facts

    def missing_argument(self, before: str, generated: str) -> Constraint | None:
        """Where the text ends inside a call whose signature has a required parameter the call does not pass yet:
        a constraint (no names: the engine refuses the tokens that close the call) at the text's end. Silent where
        the args monitor would be: unknown or overloaded signatures, unpacking, arguments no signature takes."""
        base, state = self._base(before)
        text = base + generated
        found = self._open_call(text, len(text), state)
        if found is None:
            return None
        call, facts = found
        sig = facts.signatures[0]
        positional, given, unpack = _call_state(text, call, len(text), last=True)
        too_many = sig.positional is not None and positional > sig.positional
        if unpack or too_many or (given - set(sig.keywords) and not sig.any_keyword):
            return None
        missing = sig.missing(positional, given)
        if not missing:
            return None
        at = self._engine_offset(len(text), before)
        return Constraint((), "", at, "args", f"`{facts.what}` needs `{missing[0]}`")

    def misplaced_keyword(self, before: str, generated: str) -> Constraint | None:
        """Where the text ends with a name that starts an argument (right after its call's `(` or a `,`) and the
        call's one signature takes no keyword of that name (nor `**kwargs`): a constraint (no names: the engine
        refuses the `=` that would make the name a keyword, and more of the name) at the name's start. The first
        argument too, which the args monitor leaves free (a generator expression may bind its names, but never puts
        `=` after its first one): `ConsoleOptions(options=options)`. Silent where the args monitor would be."""
        base, state = self._base(before)
        text = base + generated
        m = re.search(r"(?<![\w.])([^\W\d]\w*)[ \t]*$", text)
        if m is None:
            return None
        name, start = m.group(1), m.start(1)
        lead = text[:start].rstrip()
        found = self._open_call(text, start, state, lambda call: lead.endswith(",") or len(lead) == call + 1)
        if found is None:
            return None
        call, facts = found
        sig = facts.signatures[0]
        positional, given, unpack = _call_state(text, call, start)
        too_many = sig.positional is not None and positional > sig.positional
        if sig.any_keyword or unpack or too_many or given - set(sig.keywords) or name in sig.keywords:
            return None
        # (at the name's start: the span of the args monitor's constraint on the name, where there was one, so a
        # name the model insisted on, which that monitor yielded, is not refused its `=` either)
        at = self._engine_offset(start, before)
        return Constraint((), "", at, "args", f"`{facts.what}` takes no `{name}=`")

    def unbound_receiver(self, before: str, generated: str, token: str) -> Constraint | None:
        """Where the model's next token would write `self` or `cls` (whole, or the rest of it) as a name read in code
        and the scope binds it not (a classmethod's `self`, a function's): a constraint refusing it, wherever the
        scope monitor is silent too (a call's first argument, a statement's start: a comprehension or an assignment
        may bind a new name there, but never by these names). Silent in parameter lists and other definitions,
        after a dot, in strings and comments, for a name the user began typing, and where the scope is unknown."""
        base, state = self._base(before)
        # (asked at most steps: what the name would be is found from the text's last characters alone)
        end = base[-8:] + generated if len(generated) < 8 else generated
        p = len(end)
        while p > 0 and _word_char(end[p - 1]):
            p -= 1
        partial = end[p:]
        word = token if partial else token.lstrip(" ")
        k = 0
        while k < len(word) and _word_char(word[k]):
            k += 1
        written = partial + word[:k]
        if not k or written not in RECEIVERS:
            return None
        text = base + generated
        p = len(text) - len(partial)
        if p > 0 and text[p - 1] == ".":
            return None
        if partial and p < len(self.buffer_before):
            return None  # the user began it
        if written in _identifiers(text[min(self._prompt_len or 0, p):p]):
            return None  # the completion wrote it before (a method it defines: `def f(self):`)
        st = scan(state.copy(), text, p) if p >= state.pos else scan_head(text, p)
        if st.quote or st.comment:
            return None
        logical = text[st.line_start:p]
        if _DEFINING_START.match(logical) or re.search(r"\b(?:lambda|as|for)\b", logical):
            return None  # parameters, names being defined (`for self in`, `as cls`: legal, if odd)
        names = self.scope_names()
        if names is None or written in names:
            return None
        return Constraint((written,), partial, self._engine_offset(p, before), "scope",
                          f"`{written}` is not bound here", skip_space=not partial, refuse=True)


class PythonMonitor:
    """One monitor kind over a shared session (the engine asks each in turn)."""

    def __init__(self, session: Session, kind: str):
        self.session = session
        self.name = kind

    def constraint(self, before: str, generated: str) -> Constraint | None:
        return self.session.constraint(self.name, before, generated)

    def closing(self, before: str, generated: str) -> Constraint | None:
        """The args monitor's arity rule (`Guide`: asked where the model's choice closes a call)."""
        return self.session.missing_argument(before, generated) if self.name == "args" else None

    def refusal(self, before: str, generated: str, token: str) -> Constraint | None:
        """The scope monitor's receiver rule (`Guide`: asked where the model's choice writes a name)."""
        return self.session.unbound_receiver(before, generated, token) if self.name == "scope" else None

    def ahead(self, before: str, generated: str) -> None:
        self.session.ahead(before, generated)

    def keyword(self, before: str, generated: str) -> Constraint | None:
        """The args monitor's keyword rule (`Guide`: asked where the model's choice is a `=` after a name)."""
        return self.session.misplaced_keyword(before, generated) if self.name == "args" else None


def python_monitors(analyst, rel: str, text: str, offset: int, kinds: tuple[str, ...],
                    wait_s: float | None) -> list[PythonMonitor]:
    """The monitors of one completion at `offset` of a Python buffer; the analysis at the cursor is asked now."""
    if not kinds:
        return []
    session = Session(analyst, rel, text, offset, kinds, wait_s)
    prefetch(session)
    return [PythonMonitor(session, kind) for kind in kinds]


def prefetch(session: Session) -> None:
    """Submit (not wait for) the analysis at the cursor: it runs in the worker while the prompt is prefilled."""
    text = session.buffer_before
    at = len(text)
    while at > 0 and _word_char(text[at - 1]):
        at -= 1
    submit = getattr(session.analyst, "submit", None)
    if submit is None:
        return
    if "scope" in session.kinds or "args" in session.kinds:
        submit("scope", session.rel, text[:at] + session.suffix, at)
    if at > 0 and text[at - 1] == "." and ("deref" in session.kinds or "imports" in session.kinds):
        kind = "imports" if _MODULE_PATH.match(text[text.rfind("\n", 0, at) + 1:at]) else "deref"
        submit(kind, session.rel, text[:at] + session.suffix, at)
