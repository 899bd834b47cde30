"""Structured analysis at a position of a Python buffer: what a static analyser allows there, as data.

The monitors of monitor-guided decoding (the pipeline's `monitors.py`) ask this module, through the jedi worker
process, what may follow at the start of an identifier:

* `deref`: after `expr.`, every member of the receiver's inferred type (inherited ones and dunders included;
  `members_shown` leaves the dunders out for display). Unknown when jedi infers nothing, when a value is not an
  instance, class or module, or when the type answers any attribute (`__getattr__`).
* `scope`: the names bound at the position: locals, parameters, globals, imports, builtins and keywords.
* `args`: the parameters of the call being written (names, kinds, how many positional), all signatures jedi finds.
* `imports`: after `from pkg.mod import `, that module's names; after `import pkg.`, its submodules.

`names` None means "the analysis does not know": the monitor then stays silent. Repository types resolve through
the project as typed holes do (jedi with the workspace's project, behind its gate).
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FACT_KINDS = ("deref", "scope", "args", "imports")
_KNOWN_VALUES = ("instance", "class", "module")
# Standard-library modules never imported for their members (importing them acts: a browser, a window, a poem).
_NO_IMPORT = frozenset({"__main__", "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"})


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # POSITIONAL_ONLY | POSITIONAL_OR_KEYWORD | VAR_POSITIONAL | KEYWORD_ONLY | VAR_KEYWORD
    required: bool = False  # no default: a call must pass it (never a `*args` or `**kwargs`)


@dataclass(frozen=True)
class Signature:
    name: str
    params: tuple[Param, ...]
    kind: str = "function"  # jedi's type of the callee: "class" where the call makes an instance

    @property
    def positional(self) -> int | None:
        """How many arguments may be given by position (None: any number, a `*args`)."""
        if any(p.kind == "VAR_POSITIONAL" for p in self.params):
            return None
        return sum(p.kind in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD") for p in self.params)

    @property
    def by_position(self) -> tuple[str, ...]:
        """The names of the parameters that may be given by position, in order."""
        return tuple(p.name for p in self.params if p.kind in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD"))

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.kind in ("POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY"))

    @property
    def any_keyword(self) -> bool:
        return any(p.kind == "VAR_KEYWORD" for p in self.params)

    def missing(self, positional: int, given) -> tuple[str, ...]:
        """The required parameters a call passing `positional` arguments by position and the keywords `given`
        leaves out."""
        taken = set(self.by_position[:positional]) | set(given)
        return tuple(p.name for p in self.params if p.required and p.name not in taken)


@dataclass(frozen=True)
class Facts:
    """What the analysis allows at one position. names None: unknown (a monitor stays silent)."""

    kind: str
    names: tuple[str, ...] | None = None  # sorted
    what: str = ""  # the receiver's type, the called function, the module: for showContext
    signatures: tuple[Signature, ...] = ()  # args

    @property
    def known(self) -> bool:
        return self.names is not None or bool(self.signatures)

    @property
    def members_shown(self) -> tuple[str, ...]:
        return tuple(n for n in self.names or () if not (n.startswith("__") and n.endswith("__")))


def _required(param) -> bool:
    """A jedi parameter without a default (`to_string()`: `name: annotation=default`; an `=` inside the annotation's
    brackets or strings is not the default's)."""
    if param.kind.name in ("VAR_POSITIONAL", "VAR_KEYWORD"):
        return False
    depth, quote = 0, ""
    for c in param.to_string():
        if quote:
            quote = "" if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "=" and depth == 0:
            return False
    return True


def _offset_to_position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1)


def question(kind: str, text: str, offset: int) -> tuple[str, int]:
    """The text and offset the analysis of `kind` reads. `scope`: the names bound where a statement starts on the
    position's line, so the line itself is a placeholder statement (it keeps the line in its block; inside a call's
    brackets jedi would complete the callee's keyword parameters, `style=`, instead). Every keystroke on a line thus
    asks the same scope question (`Analyst` caches it). Idempotent."""
    if kind != "scope":
        return text, offset
    line_start = text.rfind("\n", 0, offset) + 1
    head = text[line_start:offset]
    start = line_start + len(head) - len(head.lstrip())
    line_end = text.find("\n", offset)
    return text[:start] + "pass" + (text[line_end:] if line_end >= 0 else ""), start


def analyse(root: Path, path: Path, text: str, offset: int, kind: str) -> Facts:
    """The facts of `kind` for an identifier starting at character `offset` of the buffer `text` (jedi, in-process;
    the worker runs it behind the workspace's gate, see `facts_provider`)."""
    from repocomplete.context_engine.jedi_support import Analysis, leaf_at

    if kind not in FACT_KINDS:
        raise ValueError(f"unknown fact kind {kind!r}")
    text, offset = question(kind, text, offset)
    line, column = _offset_to_position(text, offset)
    a = Analysis.open(root, path, text)
    script = a.script
    if kind == "deref":
        dot = column - 1
        leaf = leaf_at(a.tree, (line, dot)) if dot >= 0 else None
        if leaf is None or leaf.value != "." or leaf.start_pos != (line, dot):
            return Facts(kind)  # a float, a string, a comment, an ellipsis
        values = script.infer(line, dot)
        if not values or any(v.type not in _KNOWN_VALUES for v in values):
            return Facts(kind)
        if any(v.type == "instance" and v.name in ("Any", "object") for v in values):
            return Facts(kind)
        names = {c.name for c in script.complete(line, column)}
        if not names or "__getattr__" in names:
            return Facts(kind)  # a type that answers any attribute
        names |= runtime_members(values, root)
        shown = sorted({f"module {v.full_name}" if v.type == "module" else v.name for v in values})
        return Facts(kind, tuple(sorted(names)), " | ".join(shown))
    if kind == "args":
        signatures = script.get_signatures(line, column)
        if not signatures and text[offset:offset + 1] != ")":
            # An unclosed call before code that does not close it (`await self.aclose(` then the next method): the
            # parser reads on into that code and jedi finds no callee. Closed where the arguments start, it does.
            signatures = Analysis.open(root, path, text[:offset] + ")" + text[offset:]).script.get_signatures(
                line, column)
        out = []
        for sig in signatures:
            params = tuple(Param(p.name, p.kind.name, _required(p)) for p in sig.params)
            out.append(Signature(sig.name, params, "class" if sig.type == "class" else "function"))
        return Facts(kind, None, out[0].name if out else "", tuple(out))
    completions = script.complete(line, column)
    names = tuple(sorted({c.name for c in completions if not c.name.endswith("=")}))
    if not names:
        return Facts(kind)
    what = ""
    if kind == "imports":
        before = text[text.rfind("\n", 0, offset) + 1:offset]
        what = before.strip()
    return Facts(kind, names, what)


def runtime_members(values, root: Path | None = None) -> set[str]:
    """The members standard-library classes among jedi's inferred `values` have at run time. jedi reads the stubs
    and sources, and misses what a class inherits from a base it cannot follow: `socket.socket` lists neither
    `send` nor `recv` (its base `_socket.socket` is lost). Only the standard library is imported (its classes are
    what such bases hide in, and importing it runs no user code), never the repository or site-packages: a module of
    `root` named like a standard one (a project's own `logging.py`) is the project's."""
    out: set[str] = set()
    root = Path(root).resolve() if root is not None else None
    for v in values:
        module, full = v.module_name or "", v.full_name or ""
        if v.type not in ("instance", "class") or not full.startswith(module + ".") or not module:
            continue
        if root is not None and v.module_path is not None and Path(v.module_path).resolve().is_relative_to(root):
            continue
        if not _standard(module) or module.split(".")[0] in _NO_IMPORT:
            continue
        try:
            obj = importlib.import_module(module)
            for part in full[len(module) + 1:].split("."):
                obj = getattr(obj, part)
        except Exception:  # not importable here (another platform's module), or named differently at run time
            continue
        if isinstance(obj, type):
            out.update(_standard_members(obj))
    return out


def _standard(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in getattr(sys, "stdlib_module_names", ())


def _standard_members(cls: type) -> set[str]:
    """The names `cls` has through its MRO, less the functions a loaded library patched in (transformers gives
    `logging.Logger` a `warning_once`)."""
    out: set[str] = set()
    for klass in cls.__mro__:
        for name, value in vars(klass).items():
            module = getattr(value, "__module__", None) if callable(value) else None
            if isinstance(module, str) and not _standard(module):
                continue
            out.add(name)
    return out


def facts_provider(kind: str, root: str, rel: str, text: str, offset: int, config=None) -> Facts:
    """`analyse` as the jedi worker runs it: behind the workspace's gate, with jedi's cache in ours. A failure, or
    a buffer jedi would take minutes over, is "unknown"."""
    from repocomplete.context_engine import jedi_support
    from repocomplete.context_engine.config import ContextConfig
    from repocomplete.context_engine.engine import _worker_gate

    config = config or ContextConfig()
    try:
        jedi_support.use_cache_dir(config.jedi_cache_dir)
        with jedi_support.gated(_worker_gate(root, config)):
            return analyse(Path(root), Path(root) / rel, text, offset, kind)
    except Exception as e:
        log.info("analysis %s on %s@%d: %s: %s", kind, rel, offset, type(e).__name__, e)
        return Facts(kind)


class Analyst:
    """Facts for positions of buffers, answered by the jedi worker (an Executor) and cached by (kind, file, text,
    position): analysis runs once per trigger. `facts` waits at most `wait_s` (None: until answered), and not at all
    for an answer not expected in time (the fastest of the file's latest answers of that kind, counted from when each
    was asked, would come later): a late answer stays cached for the next asker."""

    MAX_CACHED = 256
    HISTORY = 5  # the latest answer times per (file, kind) that tell whether the next can come in time

    def __init__(self, root: Path, executor, config=None):
        self.root = Path(root)
        self.executor = executor
        self.config = config
        self._results: dict[tuple, tuple[Future, float]] = {}  # key -> (the answer, when it was asked)
        self._took: dict[tuple[str, str], deque] = {}  # (file, kind) -> seconds from asking to answer
        self._lock = threading.Lock()

    def _ask(self, kind: str, rel: str, text: str, offset: int) -> tuple[Future, float]:
        text, offset = question(kind, text, offset)
        key = (kind, rel, hash(text), len(text), offset)
        with self._lock:
            found = self._results.get(key)
            if found is not None and not found[0].cancelled():
                return found
            asked = time.perf_counter()
            future = self.executor.submit(facts_provider, kind, str(self.root), rel, text, offset, self.config)
            found = self._results[key] = (future, asked)
            while len(self._results) > self.MAX_CACHED:
                self._results.pop(next(iter(self._results)))[0].cancel()
        future.add_done_callback(lambda f: self._answered((rel, kind), f, asked))  # (at once if done: not locked)
        return found

    def _answered(self, key: tuple[str, str], future: Future, asked: float) -> None:
        if not future.cancelled() and future.exception() is None:
            with self._lock:
                self._took.setdefault(key, deque(maxlen=self.HISTORY)).append(time.perf_counter() - asked)

    def submit(self, kind: str, rel: str, text: str, offset: int) -> Future:
        return self._ask(kind, rel, text, offset)[0]

    def expected_s(self, kind: str, rel: str) -> float | None:
        """The fastest of the latest answers of `kind` on `rel`, from asking to answer (None: none yet)."""
        with self._lock:
            took = self._took.get((rel, kind))
            return min(took) if took else None

    def settle(self, forget: bool = False) -> None:
        """Wait until every question asked is answered (or failed); `forget`: then drop the answers, so that each
        is asked anew (of a worker whose jedi has the files parsed: a benchmark's steady state)."""
        with self._lock:
            futures = [future for future, _ in self._results.values()]
        for future in futures:
            try:
                future.result()
            except Exception:  # (failures are answered as unknown to the asker; here there is none)
                pass
        if forget:
            with self._lock:
                self._results.clear()

    def facts(self, kind: str, rel: str, text: str, offset: int, wait_s: float | None) -> Facts | None:
        """The facts, or None when they did not come within wait_s, or are not expected to (or the worker failed,
        or was shut down)."""
        try:
            future, asked = self._ask(kind, rel, text, offset)
            if wait_s is not None and not future.done():
                expected = self.expected_s(kind, rel)
                if expected is not None and asked + expected - time.perf_counter() > wait_s:
                    return None  # the wait would be spent for nothing
            return future.result(timeout=wait_s)
        except FutureTimeout:
            return None
        except Exception as e:  # over the worker's budget, the worker gone
            log.info("analysis %s on %s: %s: %s", kind, rel, type(e).__name__, e)
            return None


def check_identifiers(root: Path, path: Path, text: str, start: int, end: int) -> tuple[int, list[str]]:
    """Whether the identifiers written in text[start:end] resolve: (how many were checked, the ones that do not).

    A member after `.` must be one of its receiver's members (an unknown receiver is not checked); a keyword
    argument one of the call's parameters (not checked for `**kwargs` or an unknown callee); any other name that
    is read, not defined, must resolve (jedi's goto: a local, a global, an import, a builtin). Names being defined
    (targets, parameters, `as` names) are not checked."""
    from repocomplete.context_engine.jedi_support import Analysis, leaves

    root = Path(root).resolve()
    path = Path(path) if Path(path).is_absolute() else Path.cwd() / path
    if text[start:end].rstrip().endswith(":"):
        # A block header ends what was written (`for x in xs:`, `def f():`): without a body it does not parse as
        # one, and the names it defines would be taken for reads. The body goes after `end`: offsets stay.
        line = text[text.rfind("\n", 0, start) + 1 : start]
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        text = f"{text[:end]}\n{indent}    pass{text[end:]}"
    # Every text is analysed under a path of its own beside the file, never the file's: jedi would otherwise keep
    # this text as the module other files import (a later check would see it), and its diff parser would turn one
    # text's tree into the next's.
    def alias(i: int) -> Path:
        return Path(path).with_name(f"{Path(path).stem}__check{i}{Path(path).suffix}")

    try:
        a = Analysis.open(root, alias(0), text)
    except Exception as e:  # a buffer jedi cannot take: nothing checked
        log.info("checking identifiers in %s: %s: %s", path, type(e).__name__, e)
        return 0, []
    lines = text.split("\n")
    first = (text.count("\n", 0, start) + 1, start - (text.rfind("\n", 0, start) + 1))
    last = (text.count("\n", 0, end) + 1, end - (text.rfind("\n", 0, end) + 1))
    # First every use of the buffer's own tree and script, then the analyses of other texts: jedi parses a path's
    # new text by diffing it into the tree it has for that path, which would change `a.tree` under our feet.
    verdicts: list[tuple[str, bool | None]] = []
    later: list[tuple[str, str, int]] = []  # (kind, name, offset)
    for leaf in leaves(a.tree):
        if leaf.type != "name" or not (first <= leaf.start_pos and leaf.end_pos <= last):
            continue
        line, column = leaf.start_pos
        offset = sum(len(x) + 1 for x in lines[: line - 1]) + column
        try:
            prev = leaf.get_previous_leaf()
            nxt = leaf.get_next_leaf()
            if prev is not None and prev.value == ".":
                if not _assigned(leaf):  # `obj.name = ...` defines the attribute
                    later.append(("deref", leaf.value, offset))
            elif nxt is not None and nxt.value == "=" and leaf.parent.type == "argument":
                later.append(("args", leaf.value, offset))
            elif leaf.is_definition() or leaf.parent.type in ("param", "funcdef", "classdef", "import_as_name",
                                                              "dotted_as_name", "import_from", "import_name",
                                                              "dotted_name", "global_stmt", "nonlocal_stmt"):
                continue
            else:
                verdicts.append((leaf.value, bool(a.script.goto(line, column))))
        except Exception as e:  # an analysis that fails checks nothing
            log.debug("checking %s: %s", leaf.value, e)
    for i, (kind, name, offset) in enumerate(later, start=1):
        try:
            if kind == "deref":
                # the members as they are where the name starts (with it jedi would infer the whole `a.name`)
                facts = analyse(root, alias(i), text[:offset] + text[offset + len(name):], offset, "deref")
                if facts.names is None:
                    continue
                verdicts.append((name, name in facts.names))
            else:
                facts = analyse(root, alias(i), text, offset, "args")
                if not facts.signatures or any(s.any_keyword for s in facts.signatures):
                    continue
                verdicts.append((name, any(name in s.keywords for s in facts.signatures)))
        except Exception as e:
            log.debug("checking %s: %s", name, e)
    checked = len(verdicts)
    invalid = [name for name, ok in verdicts if not ok]
    return checked, invalid


def _assigned(leaf) -> bool:
    """Whether a member name is (the end of) an assignment's target: `self.x = ...`, `a.b.x: int = ...`."""
    trailer = leaf.parent
    if trailer is None or trailer.type != "trailer" or trailer.parent is None:
        return False
    chain = trailer.parent
    if chain.children[-1] is not trailer:
        return False
    stmt = chain.parent
    if stmt is None or stmt.type != "expr_stmt" or stmt.children[0] is not chain or len(stmt.children) < 2:
        return False
    follower = stmt.children[1]
    return follower.type == "annassign" or getattr(follower, "value", None) in ("=", "+=", "-=", "*=", "/=", "|=",
                                                                               "&=", "//=", "%=", "**=")
