"""One request's view of a Python project through jedi and parso, shared by the `imports` and `typed_holes` providers.

`Analysis` holds the buffer's jedi Script (jedi resolves and infers error-tolerantly, on the unsaved text) and the
parso trees of the files it needed; the functions below find nodes in those trees. Only files inside the project
that the workspace's gate allows count: `Analysis.rel` turns anything in the standard library, site-packages, a
skipped or ignored folder, a secret or a symlink out of the root into None, and `Analysis.is_local_package` tells
which absolute imports are worth following at all.

jedi and parso read the files an import leads to themselves: while a gate is active (`gated`), a file inside the
root that the gate refuses reads as empty, so its text reaches neither an inference, nor a record, nor jedi's
pickled parse cache. That cache lives in repocomplete's own cache folder (`use_cache_dir`), 0700, pickles 0600,
written whole or not at all; a pickle that does not load is a cache miss.

A huge buffer reaches jedi as a `BufferView`: its first lines (the imports) and the lines around the cursor, long
lines cut, so that a 900 KB line or a megabyte of generated code costs jedi milliseconds, not minutes.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import pickle
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import jedi
import parso
import parso.cache
import parso.file_io
from jedi.inference.base_value import ValueSet
from jedi.inference.value.function import FunctionExecutionContext
from jedi.plugins.stdlib import ClassMethodArguments

from repocomplete.context_engine.gate import Gate, private_dir, private_file

log = logging.getLogger(__name__)

_GATE: contextvars.ContextVar[Gate | None] = contextvars.ContextVar("repocomplete_jedi_gate", default=None)
_original_load = parso.cache._load_from_file_system


def _gated(read):
    def gated_read(self):
        gate = _GATE.get()
        if gate is not None and self.path is not None and not gate.may_read(self.path):
            return b""  # refused by the workspace's gate: jedi sees an empty module
        return read(self)

    return gated_read


def _private_save(hashed_grammar, path, item, cache_path=None):
    """parso's pickle of a parsed module, written whole or not at all, private from its first byte. parso writes it
    in place: a jedi worker, a second server or the CLI loading it meanwhile read half a pickle, and a process killed
    mid-write left a truncated one. Here it goes to a temporary file (0600) beside it, renamed over it when done."""
    target = parso.cache._get_hashed_path(hashed_grammar, path, cache_path=cache_path)
    folder = os.path.dirname(target)
    private_dir(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(item, f, pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    private_file(target)


def _tolerant_load(hashed_grammar, path, p_time, cache_path=None):
    """A cached pickle that does not load (truncated by a crash or an older writer, from another parso version) is
    a cache miss, not an error: parso raised it into jedi's inference, and every typed hole over that module failed
    until the module changed. The module is parsed again and its pickle written whole."""
    try:
        return _original_load(hashed_grammar, path, p_time, cache_path=cache_path)
    except (EOFError, pickle.UnpicklingError, AttributeError, ImportError, IndexError, TypeError, ValueError) as e:
        log.info("parso's cache of %s did not load (%s: %s): parsed again", path, type(e).__name__, e)
        return None


# jedi's FileIO classes inherit these. Its import resolver reads a module's source through the import system and
# hands it over as KnownContentFileIO, so both are gated.
parso.file_io.FileIO.read = _gated(parso.file_io.FileIO.read)
parso.file_io.KnownContentFileIO.read = _gated(parso.file_io.KnownContentFileIO.read)
parso.cache._save_to_file_system = _private_save
parso.cache._load_from_file_system = _tolerant_load


def _returns_self(funcdef) -> bool:
    """The function is annotated `-> Self` (typing's or typing_extensions', bare, dotted or quoted)."""
    node = getattr(funcdef, "annotation", None)
    if node is None:
        return False
    code = node.get_code(include_prefix=False).strip()
    if node.type == "string":
        code = code.strip("\"'")
    return code == "Self" or code.endswith(".Self")


def _self_aware(infer_annotations):
    """jedi (0.20) reads `-> Self` as the class that declares it: `async with await open_process() as p` gave the
    base class `AsyncResource`, whose `__aenter__` returns Self, and every member of `Process` looked invented.
    A method so annotated returns the instance it was called on (the class, executed, for a classmethod)."""

    def infer(self):
        if _returns_self(self._value.tree_node):
            if isinstance(self._arguments, ClassMethodArguments):
                return self._arguments._class.execute_with_values()
            instance = getattr(self, "instance", None)  # a method called on an instance
            if instance is not None and instance.api_type == "instance":
                return ValueSet([instance])
        return infer_annotations(self)

    return infer


FunctionExecutionContext.infer_annotations = _self_aware(FunctionExecutionContext.infer_annotations)


@contextlib.contextmanager
def gated(gate: Gate):
    """jedi and parso read the workspace's files through `gate` meanwhile (this thread/context only). The Scripts
    opened meanwhile share one jedi inference state per file (`_SharedState`); a failure that leaves the block drops
    it."""
    token = _GATE.set(gate)
    try:
        yield gate
    except BaseException:
        taint()
        raise
    finally:
        _GATE.reset(token)


# jedi builds a new inference state for every Script: the values of every module an answer reads (typing, the
# classes' bases in other files) are inferred again for each question, though only the buffer changed. Inside a
# gate (the jedi worker's calls), the Scripts of one file share one state while the files it loaded are unchanged
# on disk, up to STATE_REUSES questions (what it keeps of old buffers grows ~0.4 MB a question on a 100 KB file: at
# most ~25 MB a state there).
STATE_REUSES = 64
_STATES_MAX = 2  # files with a state kept (per process; a worker answers one file at a time, an editor's two)


@dataclass
class _SharedState:
    state: object  # jedi's InferenceState
    gate: Gate
    uses: int = 0
    stamps: dict = field(default_factory=dict)  # path -> (mtime_ns, size) of the module files it loaded

    def stale(self, buffer_path: str) -> bool:
        """Whether a module file the state loaded changed on disk since it was first seen (the buffer's own module
        is replaced by each Script: its file does not count)."""
        for values in list(self.state.module_cache._name_cache.values()):
            for value in values:
                try:
                    path = value.py__file__()
                except Exception:
                    path = None
                if path is None or str(path) == buffer_path:
                    continue
                key = str(path)
                stamp = _stamp(key)
                if self.stamps.setdefault(key, stamp) != stamp:
                    return True
        return False


_STATES: dict[tuple, _SharedState] = {}
_STATES_LOCK = threading.Lock()


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _share_state(script, gate: Gate, root: Path, path: Path) -> None:
    """Give `script` the inference state the earlier Scripts of this file under this gate used (only inside
    `gated`: the worker's calls), or keep its own as the one the next ones use."""
    if _GATE.get() is not gate:
        return
    key = (threading.get_ident(), id(gate), str(root), str(path))  # (a state is never used by two threads)
    with _STATES_LOCK:
        shared = _STATES.pop(key, None)
    if shared is not None and (shared.gate is not gate or shared.uses >= STATE_REUSES or shared.stale(str(path))):
        shared = None
    if shared is None:
        shared = _SharedState(script._inference_state, gate)
    else:
        state = shared.state
        # what one question's inference leaves behind (jedi's Script starts each of these anew)
        state.reset_recursion_limitations()
        state.inferred_element_counts = {}
        state.dynamic_params_depth = 0
        state.analysis = []
        script._inference_state = state
    shared.uses += 1
    with _STATES_LOCK:
        _STATES[key] = shared  # (last used, last in order)
        while len(_STATES) > _STATES_MAX:
            _STATES.pop(next(iter(_STATES)))


def taint() -> None:
    """An inference failed (an exception out of jedi): the shared states of the active gate are dropped, since jedi
    caches the defaults it set against recursion before the failure."""
    gate = _GATE.get()
    if gate is None:
        return
    with _STATES_LOCK:
        for key in [k for k in _STATES if k[1] == id(gate)]:
            del _STATES[key]


def use_cache_dir(path: str | os.PathLike) -> None:
    """jedi's (and parso's) parse cache goes to `path`, created private (0700)."""
    path = str(private_dir(path))
    if jedi.settings.cache_directory != path:
        jedi.settings.cache_directory = path


# A buffer larger than this, or with a line longer than VIEW_MAX_LINE_CHARS, reaches jedi as a view: its first
# lines (the imports) and the lines around the cursor, each part within its lines and characters. A view loses the
# file's own classes defined elsewhere (rich's console.py, 101 KB: `self._console: "Console"` had no type), so a
# large module that looks like code (brackets about balanced) is analysed whole up to VIEW_MAX_CODE_CHARS: a 400 KB
# module took 7.2 s cold and 0.7 s warm whole (torch's scheduler.py), within the worker's 10 s budget, while 200 KB
# of unclosed brackets take jedi's error recovery minutes.
VIEW_MAX_CHARS = 100_000
VIEW_MAX_CODE_CHARS = 250_000
VIEW_MAX_UNBALANCED = 64  # brackets left open (or closed in excess) over the whole buffer
VIEW_MAX_LINE_CHARS = 1_000  # longer lines are cut to this (the cursor's around the cursor)
VIEW_HEAD = (100, 5_000)  # (lines, characters) from the top
VIEW_BEFORE = (300, 10_000)  # above the cursor, its line included
VIEW_AFTER = (50, 2_000)


# jedi's error recovery steps through an error node's children with list.index (n squared): a buffer with a wider
# one (unclosed brackets by the thousand) is not analysed.
MAX_ERROR_CHILDREN = 1000


class Unanalysable(Exception):
    """A buffer jedi would take minutes over."""


@dataclass(frozen=True)
class BufferView:
    """What jedi sees of a buffer: the text, the cursor in it, and the buffer's lines it kept (1-based, in
    order), so that records on the buffer map back to its own lines."""

    text: str
    line: int
    col: int
    lines: tuple[int, ...] | None = None  # None: the whole buffer, lines as they are

    @classmethod
    def of(cls, text: str, line: int, col: int) -> "BufferView":
        """The whole buffer when it is small and has no long line; else a view around the cursor."""
        if len(text) <= VIEW_MAX_CODE_CHARS and (len(text) <= VIEW_MAX_LINE_CHARS or
                                                  max(map(len, text.split("\n"))) <= VIEW_MAX_LINE_CHARS):
            if len(text) <= VIEW_MAX_CHARS or _unbalanced(text) <= VIEW_MAX_UNBALANCED:
                return cls(text, line, col)
        lines = [t[:VIEW_MAX_LINE_CHARS] for t in text.split("\n")]
        line = max(1, min(line, len(lines)))
        cursor_line = text.split("\n", line)[line - 1]
        if len(cursor_line) > VIEW_MAX_LINE_CHARS:  # keep what leads to the cursor
            start = max(0, col - 1 - (VIEW_MAX_LINE_CHARS - 100))
            lines[line - 1], col = cursor_line[start:start + VIEW_MAX_LINE_CHARS], col - start
        keep = set(_span(lines, 1, 1, VIEW_HEAD))
        keep.update(_span(lines, line, -1, VIEW_BEFORE), _span(lines, line + 1, 1, VIEW_AFTER))
        keep = sorted(keep)
        return cls("\n".join(lines[n - 1] for n in keep), keep.index(line) + 1, col, tuple(keep))

    def to_buffer(self, records: list, rel: str) -> list:
        """Records on the view's lines (those whose path is `rel`) moved to the buffer's own lines."""
        if self.lines is None:
            return records

        def own(n: int) -> int:
            return self.lines[max(1, min(n, len(self.lines))) - 1]

        return [replace(r, start_line=own(r.start_line), end_line=own(r.end_line)) if r.path == rel else r
                for r in records]


def _unbalanced(text: str) -> int:
    """Brackets a buffer leaves open or closes in excess, counted per kind (strings and comments included: a
    cheap sign of code jedi's error recovery would crawl through, not a parse)."""
    return sum(abs(text.count(o) - text.count(c)) for o, c in ("()", "[]", "{}"))


def _span(lines: list[str], first: int, step: int, limit: tuple[int, int]) -> list[int]:
    """Line numbers from `first` on (step 1) or back (step -1), within (lines, characters); `first` always."""
    out, chars, n = [], 0, first
    while 1 <= n <= len(lines) and len(out) < limit[0]:
        chars += len(lines[n - 1]) + 1
        if out and chars > limit[1]:
            break
        out.append(n)
        n += step
    return out


@functools.lru_cache(maxsize=8)
def _project(root: str) -> jedi.Project:
    return jedi.Project(root)


@functools.lru_cache(maxsize=1)
def _grammar():
    return parso.load_grammar()  # the same object jedi parses with, so both share parso's cache


@dataclass
class Analysis:
    """One request: the buffer's jedi Script and tree, and the trees/scripts of other files it needed."""

    root: Path
    path: Path
    project: jedi.Project
    script: jedi.Script
    tree: object  # parso Module of the buffer
    gate: Gate
    _scripts: dict = field(default_factory=dict)
    _verdicts: dict = field(default_factory=dict)

    @classmethod
    def open(cls, project_root: Path, path: Path, text: str, gate: Gate | None = None) -> "Analysis":
        """gate: the workspace's (default: the one `gated` made active, else the default rules for the root)."""
        gate = gate or _GATE.get() or Gate(project_root)
        root = Path(project_root).resolve()
        path = Path(path)
        path = Path(os.path.abspath(path if path.is_absolute() else root / path))
        path = Path(os.path.realpath(path.parent)) / path.name  # (the file's own name is never resolved)
        project = _project(str(root))
        script = jedi.Script(text, path=path, project=project)
        _share_state(script, gate, root, path)
        tree = getattr(script, "_module_node", None) or _grammar().parse(text)
        wide = widest_error(tree)
        if wide > MAX_ERROR_CHILDREN:
            raise Unanalysable(f"a syntax error node of {wide} tokens")
        return cls(root, path, project, script, tree, gate)

    def rel(self, module_path) -> str | None:
        """Repository-relative POSIX path of a file inside the project that the gate allows, else None."""
        if module_path is None:
            return None
        key = str(module_path)
        if key not in self._verdicts:
            rel = self.gate.rel(module_path)
            if rel is not None and (any(part.endswith(".egg-info") for part in rel.split("/")[:-1])
                                    or self.gate.reason_rel(rel) is not None):
                rel = None
            self._verdicts[key] = rel
        return self._verdicts[key]

    def current_rel(self) -> str:
        return self.gate.rel(self.path) or self.path.as_posix()

    def script_for(self, module_path: Path) -> jedi.Script:
        if Path(module_path).resolve() == self.path:
            return self.script
        key = str(module_path)
        if key not in self._scripts:
            code = parso.file_io.FileIO(module_path).read()  # (through the gate; jedi.Script would open() it)
            self._scripts[key] = jedi.Script(code, path=module_path, project=self.project)
        return self._scripts[key]

    def tree_for(self, module_path: Path):
        if Path(module_path).resolve() == self.path:
            return self.tree
        return _grammar().parse(path=str(module_path), cache=True, cache_path=jedi.settings.cache_directory)

    def node_of(self, name) -> object | None:
        """The parso node a jedi Name points at (class/function/statement definition, or the module)."""
        if name.module_path is None:
            return None
        try:
            tree = self.tree_for(name.module_path)
        except OSError:
            return None
        if name.type == "module":
            return tree
        return definition_at(tree, name.line, name.column)

    def scope_at(self, line: int, column: int):
        """The buffer's funcdef/classdef/module node enclosing (line, column) (jedi knows even in broken code, and on
        a blank line by its indentation), else None."""
        try:
            context = self.script.get_context(line, column)
        except Exception:
            taint()
            return None
        if context.type == "module":
            return self.tree
        node = definition_at(self.tree, context.line, context.column)
        return node if node is not None and node.type in ("funcdef", "classdef") else None

    def is_local_package(self, top: str) -> bool:
        """Whether an absolute import's first component lives in the project (else it is never followed)."""
        folders = [self.root] + [p for p in self.path.parents if p == self.root or self.root in p.parents]
        return any((d / top).is_dir() or (d / f"{top}.py").is_file() or (d / f"{top}.pyi").is_file() for d in folders)


# -- parso trees: nodes by position, spans, bodies --------------------------------------------------------


def leaves(node) -> list:
    """The leaves under a node, in order. (parso's get_next_leaf() looks itself up in its parent's children, so
    stepping through a node of n children that way costs n squared: minutes for a run of unclosed brackets.)"""
    out, stack = [], [node]
    while stack:
        current = stack.pop()
        children = getattr(current, "children", None)
        if children is None:
            out.append(current)
        else:
            stack.extend(reversed(children))
    return out


def widest_error(tree) -> int:
    """The most children any error node of a parso tree has (0 without one)."""
    widest, stack = 0, [tree]
    while stack:
        children = stack.pop().children
        for child in children:
            if hasattr(child, "children"):
                if child.type == "error_node":
                    widest = max(widest, len(child.children))
                stack.append(child)
    return widest


def leaf_at(tree, pos: tuple[int, int]):
    """The leaf starting at `pos` where there is one (parso prefers the leaf ending there: `f(` + `x`)."""
    leaf = tree.get_leaf_for_position(pos)
    if leaf is not None and leaf.start_pos != pos and leaf.end_pos == pos:
        nxt = leaf.get_next_leaf()
        if nxt is not None and nxt.start_pos == pos:
            return nxt
    return leaf


def definition_at(tree, line: int, column: int):
    """The class or function whose name is at (line, column), else the definition that name belongs to, or None."""
    leaf = leaf_at(tree, (line, column))
    if leaf is None or leaf.type != "name":
        return None
    parent = leaf.parent
    if parent.type in ("classdef", "funcdef") and parent.name is leaf:
        return parent
    return leaf.get_definition()


def outer(node):
    """The node with its `async` and decorators."""
    while node.parent is not None and node.parent.type in ("async_funcdef", "async_stmt", "decorated"):
        node = node.parent
    return node


def _end_line(node) -> int:
    last = node.get_last_leaf()
    return last.start_pos[0] if last.type == "newline" else last.end_pos[0]


def span(node) -> tuple[int, int]:
    """(first line, last line) of a definition, its decorators included; of a whole module for its tree."""
    if node.type == "file_input":
        last = node.get_last_leaf().get_previous_leaf()  # before the endmarker
        return 1, _end_line(last) if last is not None else 1
    return outer(node).start_pos[0], _end_line(node)


def self_attribute(target, self_name: str):
    """The Name leaf `x` of a `self.x` target, else None."""
    if target.type not in ("atom_expr", "power") or len(target.children) != 2:
        return None
    base, trailer = target.children
    if base.type != "name" or base.value != self_name or trailer.type != "trailer" or trailer.children[0] != ".":
        return None
    return trailer.children[1]


def statements(items):
    """Expression statements among a body's items (a simple_stmt may hold several, `a = 1; b = 2`)."""
    for item in items:
        if item.type == "simple_stmt":
            for child in item.children:
                if child.type == "expr_stmt":
                    yield child
        elif item.type == "expr_stmt":
            yield item


def walk(node, types: tuple[str, ...], stop: tuple[str, ...] = ()):
    """Descendants of the given types, not descending into nodes of the `stop` types."""
    for child in getattr(node, "children", ()):
        if child.type in types:
            yield child
        if child.type not in stop:
            yield from walk(child, types, stop)
