"""The `typed_holes` provider for Python (ChatLSP): what the hole at the cursor expects, and those types' definitions.

jedi answers on the unsaved buffer, broken code included: the expected type (the parameter being filled in a
call, the annotation of `x: T = |`, the return annotation on `return |`), the bindings in scope with their types,
and the receiver's type and members after `obj.`. The project classes those types name follow as stubs.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from repocomplete.context_engine.jedi_support import (Analysis, definition_at, leaf_at, leaves, outer, self_attribute, span,
                                                      statements, taint, walk)
from repocomplete.context_engine.python_stubs import class_stub_and_names, focus_names
from repocomplete.context_engine.records import ContextRecord

log = logging.getLogger(__name__)

MAX_BINDINGS = 16  # bindings listed in a hole's "in scope" line
# Attribute chains the function reaches into (`state.md.normalizeLink(...)`, `self._console._enter_buffer()`): the
# types of the last ones before the cursor, the nearest first. A binding's type shows its attributes, not theirs.
MAX_CHAINS = 3
MAX_MEMBERS = 30  # member names listed after `obj.`
HOLE_SCORE, EXPECTED_SCORE, RECEIVER_SCORE, BINDING_SCORE, CHAIN_SCORE = 10.0, 9.0, 8.0, 6.0, 5.5
BASE_PENALTY = 1.5  # a base class's stub scores this much below its subclass's (two levels of bases, about)

_SCOPES = ("funcdef", "classdef", "lambdef", "sync_comp_for", "comp_for")


@dataclass
class _Type:
    """A type as the hole shows it, and the project classes it names (module_path, line, column)."""

    text: str | None
    classes: list[tuple[Path, int, int]] = field(default_factory=list)


def _classes_of(a: Analysis, values) -> list[tuple[Path, int, int]]:
    out = []
    for v in values:
        if v.type in ("instance", "class") and a.rel(v.module_path) is not None and v.line is not None:
            out.append((Path(v.module_path), v.line, v.column))
    return out


def _annotation_type(a: Analysis, module_path: Path, annotation) -> _Type:
    """An annotation node as written, and the project classes its names resolve to (`list[Item]` -> Item)."""
    script = a.script_for(module_path)
    classes = []
    names = [annotation] if annotation.type == "name" else list(walk(annotation, ("name",)))
    for leaf in names:
        try:
            targets = script.goto(*leaf.start_pos, follow_imports=True)
        except Exception:
            taint()
            continue
        for t in targets:
            if t.type == "class":
                classes += _classes_of(a, [t])
    return _Type(annotation.get_code(include_prefix=False), classes)


def _name_type(a: Analysis, leaf) -> _Type:
    """A binding's type as jedi infers it at its definition."""
    try:
        names = a.script.goto(*leaf.start_pos)
        if not names:
            return _Type(None)
        hint = names[0].get_type_hint() or None
        return _Type(hint, _classes_of(a, names[0].infer()))
    except Exception as e:
        taint()
        log.debug("inference failed for %s at %s: %s", leaf.value, leaf.start_pos, e)
        return _Type(None)


def _param_annotation(a: Analysis, param) -> _Type:
    """The annotation of a signature's parameter: resolved in its own file when that is in the project."""
    text = param.to_string().lstrip("*")
    if not text.startswith(param.name + ":"):
        return _Type(None)
    annotation_text = _strip_default(text[len(param.name) + 1:].strip())
    if param.module_path is not None and a.rel(param.module_path) is not None:
        leaf = leaf_at(a.tree_for(param.module_path), (param.line, param.column))
        node = leaf.search_ancestor("param") if leaf is not None else None
        if node is not None and node.annotation is not None:
            return _annotation_type(a, Path(param.module_path), node.annotation)
    return _Type(annotation_text)


def _strip_default(annotation: str) -> str:
    depth = 0
    for i, c in enumerate(annotation):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "=" and depth == 0:
            return annotation[:i].strip()
    return annotation


_ANN_ASSIGN = re.compile(r"^\s*(?P<target>[A-Za-z_][\w.]*)\s*:\s*(?P<ann>[^=]+?)\s*=(?!=)")
_RETURN = re.compile(r"^\s*return\b")


def _expected(a: Analysis, line: int, column: int, prefix: str, scope) -> tuple[list[str], _Type | None, str]:
    """(hole lines, expected type, why for its definitions): the parameter being filled in a call, the annotation
    of `x: T = |`, or the enclosing function's return annotation on `return |`."""
    try:
        signatures = a.script.get_signatures(line, column)
    except Exception:
        taint()
        signatures = []
    if signatures:
        sig = signatures[0]
        lines = []
        if sig.index is not None and sig.index < len(sig.params):
            param = sig.params[sig.index]
            t = _param_annotation(a, param)
            where = f"parameter `{param.name}` of `{sig.name}`"
            lines.append(f"# expected type: {t.text} ({where})" if t.text else f"# expected: {where}")
            lines.append(f"# signature: {sig.to_string()}")
            return lines, t, f"expected type of parameter `{param.name}`"
        return [f"# signature: {sig.to_string()}"], None, ""
    m = _ANN_ASSIGN.match(prefix)
    if m:
        start = m.start("ann")
        annotation = leaf_at(a.tree, (line, start))
        node = annotation
        # climb to the whole annotation expression (`dict[str, Item]`), stopping at the annassign
        while node is not None and node.parent is not None and node.parent.type not in ("annassign", "expr_stmt",
                                                                                     "error_node", "simple_stmt"):
            node = node.parent
        if node is not None and node.start_pos == (line, start):
            t = _annotation_type(a, a.path, node)
        else:
            t = _Type(m.group("ann").strip())
        t.text = m.group("ann").strip()
        target = m.group("target")
        return [f"# expected type: {t.text} (annotation of `{target}`)"], t, f"expected type of `{target}`"
    if _RETURN.match(prefix) and scope is not None and scope.type == "funcdef" and scope.annotation is not None:
        t = _annotation_type(a, a.path, scope.annotation)
        name = scope.name.value
        return [f"# expected type: {t.text} (return type of `{name}`)"], t, f"expected return type of `{name}`"
    return [], None, ""


def _nested(leaf, scope) -> bool:
    """Whether a name lives in a scope nested inside `scope` (a nested def's own name does not)."""
    node = leaf.parent
    while node is not None and node is not scope:
        if node.type in _SCOPES and not (node.type in ("funcdef", "classdef") and node.name is leaf):
            return True
        node = node.parent
    return False


def _bindings(a: Analysis, scope, line: int, deadline: float) -> list[tuple[str, _Type]]:
    """Parameters, locals defined before the cursor line, and `self.` attributes of the enclosing class."""
    out: list[tuple[str, object, object]] = []  # (label, annotation node or None, leaf to infer at)
    method_self = None
    if scope.type == "funcdef":
        params = scope.get_params()
        if params and _enclosing_class(scope) is not None:
            if params[0].name.value in ("self", "cls") and not params[0].star_count:
                method_self = params[0].name.value
                params = params[1:]
        for p in params:  # (the name is inferred only where the annotation holds a forward reference, below)
            out.append(("*" * p.star_count + p.name.value, p.annotation, p.name if p.annotation is not None else None))
    last: dict[str, object] = {}  # name -> its last definition before the cursor line, in definition order
    for leaf in _defined_before(scope, line):
        last.pop(leaf.value, None)
        last[leaf.value] = leaf
    locals_: list[tuple[str, object, object]] = []
    params_seen = {label.lstrip("*") for label, _, _ in out}
    for leaf in (leaf for name, leaf in last.items() if name not in params_seen):
        stmt = leaf.parent
        annotation = None
        if stmt.type == "expr_stmt" and stmt.children[0] is leaf and stmt.children[1].type == "annassign":
            annotation = stmt.children[1].children[1]
        locals_.append((leaf.value, annotation, leaf))
    attributes = []
    if method_self is not None:
        for attr, annotation in _class_attributes(_enclosing_class(scope), method_self):
            attributes.append((f"{method_self}.{attr.value}", annotation, attr))
    # Over the bound: all parameters, a few attributes, then the locals defined nearest the cursor.
    out = out[:MAX_BINDINGS]
    attributes = attributes[: max(0, min(MAX_BINDINGS // 3, MAX_BINDINGS - len(out)))]
    room = MAX_BINDINGS - len(out) - len(attributes)
    out += (locals_[-room:] if room > 0 else []) + attributes
    typed = []
    for label, annotation, at in out:
        if annotation is not None:
            t = _annotation_type(a, a.path, annotation)
            if at is not None and any(leaf.type == "string" for leaf in leaves(annotation)) \
                    and time.perf_counter() < deadline:
                # A forward reference (`self._console: "Console"`, `Optional["Item"]`): the names inside the string
                # resolve through jedi's inference of the binding, not through goto on the annotation.
                t = _Type(t.text, t.classes + [c for c in _name_type(a, at).classes if c not in t.classes])
            typed.append((label, t))
        elif at is not None and time.perf_counter() < deadline:
            typed.append((label, _name_type(a, at)))
        else:
            typed.append((label, _Type(None)))
    return typed


def _chains(scope, line: int, bound: set[str]) -> list[tuple[str, object]]:
    """(text, last name leaf) of the attribute chains a scope reaches into before `line` (`state.md` in
    `state.md.normalizeLink(x)`: a chain of two or three names followed by a dot), the last used first, at most
    MAX_CHAINS; chains that are bindings already (`self.x`) left out."""
    body = leaves(scope.children[-1] if scope.type == "funcdef" else scope)
    found: dict[str, object] = {}
    for i, leaf in enumerate(body):
        if leaf.start_pos[0] >= line:
            break
        if leaf.type != "name" or i < 2 or body[i - 1].value != "." or i + 1 >= len(body) or body[i + 1].value != ".":
            continue
        names, j = [leaf.value], i - 1
        while j >= 1 and body[j].value == "." and body[j - 1].type == "name" and len(names) < 3:
            names.insert(0, body[j - 1].value)
            j -= 2
        if j >= 0 and body[j].value == ".":  # a longer chain, or one on a call's result: not inferred here
            continue
        label = ".".join(names)
        if label not in bound:
            found.pop(label, None)
            found[label] = leaf
    return list(reversed(found.items()))[:MAX_CHAINS]


def _binding_text(label: str, t: _Type) -> str:
    if not t.text:
        return label
    if t.text.startswith(label + "("):  # a local function: jedi's hint is its signature
        return t.text
    return f"{label}: {t.text}"


def _defined_before(scope, line: int):
    """Name leaves a function binds before `line` (not in nested scopes, not attributes, not imports); at module
    level only the variables of top-level statements (functions, classes and imports are other providers')."""
    if scope.type == "file_input":
        for item in scope.children:
            if item.start_pos[0] >= line:
                break
            for stmt in statements([item]):
                yield from (n for n in stmt.get_defined_names() if n.type == "name")
        return
    body = leaves(scope.children[-1])
    for i, leaf in enumerate(body):
        if leaf.start_pos[0] >= line:
            break
        if leaf.type == "name" and not _nested(leaf, scope):
            if (i == 0 or body[i - 1].value != ".") and leaf.is_definition():
                if leaf.get_definition().type not in ("import_name", "import_from"):
                    yield leaf


def _enclosing_class(funcdef):
    node = outer(funcdef).parent
    if node is not None and node.type == "suite":
        node = node.parent
    return node if node is not None and node.type == "classdef" else None


def _class_attributes(cls, self_name: str) -> list[tuple[object, object]]:
    """(name leaf, annotation or None) of `self.x` assignments anywhere in the class, first one each."""
    seen, out = set(), []
    for stmt in walk(cls.children[-1], ("expr_stmt",), stop=("classdef", "lambdef")):
        targets = stmt.children[0:-1:2] if len(stmt.children) > 1 and stmt.children[1] == "=" else stmt.children[:1]
        for target in targets:
            leaf = self_attribute(target, self_name)
            if leaf is None or leaf.value in seen:
                continue
            seen.add(leaf.value)
            annotation = stmt.children[1].children[1] if stmt.children[1].type == "annassign" else None
            out.append((leaf, annotation))
    return out


def _receiver(a: Analysis, line: int, column: int, prefix: str) -> tuple[list[str], _Type | None, str]:
    """After `obj.` (and perhaps part of a name): the receiver's type and its members."""
    i = column
    while i > 0 and (prefix[i - 1].isalnum() or prefix[i - 1] == "_"):
        i -= 1
    partial = prefix[i:column]
    j = i
    while j > 0 and prefix[j - 1] in " \t":
        j -= 1
    if j == 0 or prefix[j - 1] != ".":
        return [], None, ""
    dot = j - 1
    leaf = leaf_at(a.tree, (line, dot))
    if leaf is None or leaf.value != "." or leaf.start_pos != (line, dot):
        return [], None, ""  # a float, a string, a comment
    receiver = _receiver_text(prefix, dot)
    if not receiver:
        return [], None, ""
    try:
        values = a.script.infer(line, dot)
        completions = a.script.complete(line, column)
    except Exception as e:
        taint()
        log.warning("receiver inference failed at %s:%s: %s: %s", line, column, type(e).__name__, e)
        return [], None, ""
    shown = []
    for v in values:
        label = {"instance": v.name, "class": f"type[{v.name}]", "module": f"module {v.full_name}"}.get(v.type)
        if label and label not in shown:
            shown.append(label)
    members = [c.name for c in completions if partial.startswith("_") or not c.name.startswith("_")][:MAX_MEMBERS]
    lines = [f"# receiver `{receiver}`: {' | '.join(shown) if shown else 'unknown'}"]
    if members:
        lines.append(f"# members: {', '.join(members)}")
    return lines, _Type(" | ".join(shown), _classes_of(a, values)), f"type of `{receiver}`"


def _receiver_text(prefix: str, end: int) -> str:
    i, depth = end, 0
    while i > 0:
        c = prefix[i - 1]
        if c in ")]":
            depth += 1
        elif c in "([":
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and not (c.isalnum() or c in "_."):
            break
        i -= 1
    return prefix[i:end].strip()


def typed_hole_context(
    project_root: Path, path: Path, text: str, line: int, col: int, limit: int = 20,
    infer_budget_ms: float | None = 120.0,
) -> list[ContextRecord]:
    """The hole at 1-based (line, col): expected type, bindings in scope, receiver; then those types' definitions.

    Type inference of the bindings stops after infer_budget_ms (None: never)."""
    lines_of = text.split("\n")
    if not 1 <= line <= len(lines_of):
        return []
    column = max(0, min(col - 1, len(lines_of[line - 1])))
    prefix = lines_of[line - 1][:column]
    a = Analysis.open(project_root, path, text)
    deadline = float("inf") if infer_budget_ms is None else time.perf_counter() + infer_budget_ms / 1000
    hole: list[str] = []
    wanted: list[tuple[tuple[Path, int, int], float, str]] = []

    scope = a.scope_at(line, column)
    expected_lines, expected, why = _expected(a, line, column, prefix, scope)
    hole += expected_lines
    if expected is not None:
        wanted += [(c, EXPECTED_SCORE, why) for c in expected.classes]
    receiver_lines, receiver, why = _receiver(a, line, column, prefix)
    hole += receiver_lines
    if receiver is not None:
        wanted += [(c, RECEIVER_SCORE, why) for c in receiver.classes]
    if scope is not None and scope.type in ("funcdef", "file_input"):
        bindings = _bindings(a, scope, line, deadline)
        if bindings:
            hole.append("# in scope: " + ", ".join(_binding_text(label, t) for label, t in bindings))
        for i, (label, t) in enumerate(bindings):
            wanted += [(c, round(BINDING_SCORE - 0.01 * i, 2), f"type of `{label}`") for c in t.classes]
        for i, (label, leaf) in enumerate(_chains(scope, line, {label for label, _ in bindings})):
            if time.perf_counter() >= deadline:
                break
            t = _name_type(a, leaf)
            wanted += [(c, round(CHAIN_SCORE - 0.01 * i, 2), f"type of `{label}`") for c in t.classes]
    if not hole:
        return []
    current = a.current_rel()
    records = [ContextRecord("\n".join(hole), current, line, line, HOLE_SCORE, "typed_holes", "the hole at the cursor")]
    focus = focus_names(text, line)
    seen = set()
    i = 0
    while i < len(wanted) and len(records) < limit:  # (a class's project bases join the list as they are met)
        (module_path, def_line, def_col), score, why = wanted[i]
        i += 1
        if (module_path, def_line) in seen:
            continue
        seen.add((module_path, def_line))
        node = definition_at(a.tree_for(module_path), def_line, def_col)
        rel = a.rel(module_path)
        if node is None or node.type != "classdef" or rel is None:
            continue
        stub, short = class_stub_and_names(node, focus)
        records.append(ContextRecord(stub, rel, *span(node), score, "typed_holes", why, short))
        if score - BASE_PENALTY > 0:
            wanted += [(c, round(score - BASE_PENALTY, 2), f"base class of `{node.name.value}` ({why})")
                       for c in _bases(a, Path(module_path), node)]
    return records


def _bases(a: Analysis, module_path: Path, node) -> list[tuple[Path, int, int]]:
    """The project classes a class derives from (their members are its members: `self.run_command` is
    inherited), resolved in the class's own file; `Generic[T]`, keywords and outside classes are skipped."""
    arglist = node.get_super_arglist()
    if arglist is None:
        return []
    args = arglist.children[::2] if arglist.type == "arglist" else [arglist]
    out = []
    for arg in args:
        if arg.type == "argument":  # metaclass=..., total=False
            continue
        if arg.type in ("power", "atom_expr"):  # a.b.C, or C[T]: the name before any subscript
            names = [c for c in arg.children if c.type == "name"]
            names += [t.children[1] for t in arg.children if t.type == "trailer" and t.children[0] == "."]
            leaf = max(names, key=lambda n: n.start_pos) if names else None
        else:
            leaf = arg if arg.type == "name" else None
        if leaf is None:
            continue
        try:
            targets = a.script_for(module_path).goto(*leaf.start_pos, follow_imports=True)
        except Exception as e:  # inference on someone's half-written class header
            taint()
            log.debug("base %s of %s not resolved: %s", leaf.value, node.name.value, e)
            continue
        out += _classes_of(a, [t for t in targets if t.type == "class"])
    return out
