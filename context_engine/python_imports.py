"""The `imports` provider for Python (LANCE): the project definitions the current file imports, as stubs.

jedi resolves each imported name on the unsaved buffer; the definitions it lands on inside the project are
summarised (`python_stubs`) and ranked by how often the function (or class) around the cursor uses the name, then
the whole buffer: the code being written uses what its neighbours use (rich's `Traceback.__rich_console__` calls
`loop_last` once, and the file annotates with `RenderResult` everywhere). A name imported and not used anywhere in
the buffer yet ranks first, where a file has only a few such names: it was imported for the code being written (the
user imports, then writes the first use; an evaluation task's missing line is that use). Absolute
imports whose top-level package is not in the project are never followed, and anything resolving outside it is
dropped.
"""

from __future__ import annotations

import ast
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from repocomplete.context_engine.jedi_support import Analysis, leaves, span, statements, taint
from repocomplete.context_engine.python_stubs import (
    class_stub_and_names, focus_names, function_stub, module_stub_and_names, statement_stub,
)
from repocomplete.context_engine.records import ContextRecord

log = logging.getLogger(__name__)

MAX_STAR_NAMES = 30  # names one `from m import *` contributes
# A file with more imported names unused than this re-exports them (a package's __init__): none is ranked first.
MAX_UNUSED_FIRST = 4


def _summary(a: Analysis, name, focus: Mapping[str, float] | None = None) -> tuple[str, str, int, int, str] | None:
    """(text, path, start_line, end_line, short) of a resolved jedi Name inside the project, else None; classes
    and modules summarised with `focus` (python_stubs.focus_names) show the members the current file uses, and
    have a short form (their names only) for when the summary does not fit."""
    rel = a.rel(name.module_path)
    if rel is None:
        return None
    node = a.node_of(name)
    if node is None:
        return None
    short = ""
    if node.type == "file_input":
        text, short = module_stub_and_names(node, Path(name.module_path).name == "__init__.py", focus)
    elif node.type == "classdef":
        text, short = class_stub_and_names(node, focus)
    elif node.type == "funcdef":
        text = function_stub(node)
    else:
        text = statement_stub(node)
    if not text:
        return None
    return (text, rel, *span(node), short)


def _scan(tree, scope: tuple[int, int] | None = None) -> tuple[list, Counter, Counter]:
    """The buffer's import statements, how often each name / dotted chain is used outside them, and how often
    within the lines `scope` (first, last)."""
    imports, uses, near = [], Counter(), Counter()
    all_leaves = leaves(tree)
    last = len(all_leaves) - 1
    for i, leaf in enumerate(all_leaves):
        if leaf.type == "keyword" and leaf.value == "import" and leaf.parent.type in ("import_name", "import_from"):
            imports.append(leaf.parent)
        elif leaf.type == "name" and not _in_import(leaf) and (i == 0 or all_leaves[i - 1].value != "."):
            counters = (uses, near) if scope is not None and scope[0] <= leaf.start_pos[0] <= scope[1] else (uses,)
            chain = leaf.value
            for counter in counters:
                counter[chain] += 1
            j = i + 1  # the leaf after the chain so far
            for _ in range(4):
                if j + 1 > last or all_leaves[j].value != "." or all_leaves[j + 1].type != "name":
                    break
                chain += "." + all_leaves[j + 1].value
                for counter in counters:
                    counter[chain] += 1
                j += 2
    return imports, uses, near


def _in_import(leaf) -> bool:
    node = leaf.parent
    while node is not None and node.type not in ("simple_stmt", "file_input", "suite"):
        if node.type in ("import_name", "import_from"):
            return True
        node = node.parent
    return False


def _goto(a: Analysis, leaf) -> list:
    try:
        return a.script.goto(*leaf.start_pos, follow_imports=True)
    except Exception as e:  # jedi's inference can trip over broken code; one name is not worth the request
        taint()
        log.debug("goto failed at %s:%s: %s", a.path, leaf.start_pos, e)
        return []


def _star_names(a: Analysis, module) -> list:
    """The names `from module import *` binds: `__all__` when the module spells it out, else its public names."""
    tree = a.node_of(module)
    public = None
    if tree is not None:
        for stmt in statements(tree.children):
            if stmt.children[0].type == "name" and stmt.children[0].value == "__all__":
                try:
                    public = set(ast.literal_eval(stmt.children[-1].get_code(include_prefix=False)))
                except (ValueError, SyntaxError, TypeError):
                    public = None
    names = [n for n in module.defined_names()
             if (n.name in public if public is not None else not n.name.startswith("_"))]
    return names[:MAX_STAR_NAMES]


def _module_for_relative(a: Analysis, level: int):
    """`from . import *` names no module jedi can goto: the package's __init__ by hand."""
    folder = a.path.parent
    for _ in range(level - 1):
        folder = folder.parent
    init = folder / "__init__.py"
    if not init.is_file():
        return None
    return a.script_for(init).get_context(1, 0)  # the module's own Name


def _type_checking(node) -> bool:
    """Whether an import sits under `if TYPE_CHECKING:` (its names are used in annotations, often as strings)."""
    while node is not None:
        if node.type == "if_stmt" and "TYPE_CHECKING" in node.children[1].get_code():
            return True
        node = node.parent
    return False


def _resolve_import(a: Analysis, imp, uses: Counter, add) -> None:
    """Each project definition `imp` binds, by `add(name, score, why, unused)`."""
    line = imp.start_pos[0]
    typing_only = _type_checking(imp)
    if imp.type == "import_name":
        for dotted_path, local in zip(imp.get_paths(), imp.get_defined_names()):
            dotted = ".".join(n.value for n in dotted_path)
            if not a.is_local_package(dotted_path[0].value):
                continue
            aliased = local is not dotted_path[0]
            why = f"imported module `{dotted}`" + (f" as `{local.value}`" if aliased else "") + f" (line {line})"
            used = uses[local.value if aliased else dotted]
            for name in _goto(a, dotted_path[-1])[:1]:
                add(name, 1.0 + used, why, not used and not typing_only, local.value if aliased else dotted)
        return
    from_names = imp.get_from_names()
    module_text = "." * imp.level + ".".join(n.value for n in from_names)
    if imp.level == 0 and (not from_names or not a.is_local_package(from_names[0].value)):
        return
    if imp.is_star_import():
        modules = _goto(a, from_names[-1]) if from_names else [_module_for_relative(a, imp.level)]
        for module in [m for m in modules if m is not None and m.type == "module"][:1]:
            for star in _star_names(a, module):
                for name in star.goto(follow_imports=True)[:1]:
                    why = f"imported as `{star.name}` by `from {module_text} import *` (line {line})"
                    add(name, 0.5 + uses[star.name], why, False)
        return
    for local in imp.get_defined_names():
        why = f"imported as `{local.value}` from {module_text} (line {line})"
        for name in _goto(a, local)[:1]:
            add(name, 1.0 + uses[local.value], why, not uses[local.value] and not typing_only, local.value)


def _block_above(imp, line: int, column: int) -> set[str] | None:
    """For an import inside a block (a function's body, `if __name__ == "__main__":`) that holds the cursor, above
    it: the names used between it and the cursor; None for any other import."""
    suite = imp.parent
    while suite is not None and suite.type not in ("suite", "file_input"):
        suite = suite.parent
    if suite is None or suite.type != "suite" or not imp.end_pos <= (line, column) or suite.end_pos[0] < line:
        return None
    return {leaf.value for leaf in leaves(suite)
            if leaf.type == "name" and imp.end_pos <= leaf.start_pos < (line, column)}


def import_context(project_root: Path, path: Path, text: str, limit: int = 20,
                   cursor: tuple[int, int] | None = None) -> list[ContextRecord]:
    """The project definitions the current file imports, as summaries, the most used first. cursor: (1-based line,
    0-based column); the names a block holding it imports above it and has not used yet come first."""
    a = Analysis.open(project_root, path, text)
    scope = a.scope_at(*cursor) if cursor else None
    imports, uses, scope_uses = _scan(a.tree, span(scope) if scope is not None and scope is not a.tree else None)
    found: dict[tuple[str, int, int], tuple[float, int, ContextRecord]] = {}
    unused: set[tuple[str, int, int]] = set()
    near: set[tuple[str, int, int]] = set()  # imported just above the cursor, in its block, and not used since
    used_here: dict[tuple[str, int, int], int] = {}  # uses in the function or class around the cursor
    focus = focus_names(text)  # (the whole file alike: these records stay put while the cursor moves)
    used_since: set[str] | None = None  # (of the import statement being resolved)

    def add(name, score: float, why: str, not_used: bool, local: str = "") -> None:
        summary = _summary(a, name, focus)
        if summary is None:
            return
        text_, rel, start, end, short = summary
        key = (rel, start, end)
        if not_used:
            unused.add(key)
        if used_since is not None and local and local.split(".")[0] not in used_since:
            near.add(key)
        if local and scope_uses[local]:
            used_here[key] = max(used_here.get(key, 0), scope_uses[local])
        if key not in found or found[key][0] < score:
            order = found[key][1] if key in found else len(found)
            found[key] = (score, order, ContextRecord(text_, rel, start, end, score, "imports", why, short))

    for imp in imports:
        used_since = _block_above(imp, *cursor) if cursor else None
        try:
            _resolve_import(a, imp, uses, add)
        except Exception as e:  # a half-typed import statement costs its own records only
            taint()
            log.debug("import at %s:%d not resolved: %s: %s", a.path, imp.start_pos[0], type(e).__name__, e)

    # Used around the cursor: first, the most used there first, then by the file's uses (every score under `top`).
    top = max((score for score, _, _ in found.values()), default=0.0) + 1.0
    for key, n in used_here.items():
        score, order, r = found[key]
        score += top * n
        found[key] = (score, order, replace(r, score=score, why=f"{r.why}, used {n}x around the cursor"))
    first = max((score for score, _, _ in found.values()), default=0.0) + 1.0
    if 0 < len(unused) <= MAX_UNUSED_FIRST:  # imported for the code being written: first
        for key in unused:
            score, order, r = found[key]
            found[key] = (first, order, replace(r, score=first, why=f"{r.why}, not used yet"))
    for key in near - (unused if len(unused) <= MAX_UNUSED_FIRST else set()):
        # A local import above the cursor is for the code being written, however many names the file re-exports.
        score, order, r = found[key]
        found[key] = (first, order, replace(r, score=first, why=f"{r.why}, in the cursor's block, not used yet"))
    ranked = sorted(found.values(), key=lambda item: (-item[0], item[1]))
    return [record for _, _, record in ranked[:limit]]
