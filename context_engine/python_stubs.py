"""Python definitions summarised as stubs, read from their parso trees: what a .pyi would say.

Headers and signatures as written, the first docstring line, public attributes (`self.x` set in __init__ included)
and member signatures, bounded to MAX_STUB_LINES; so a record is a summary rather than a whole file.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence

from repocomplete.context_engine.jedi_support import outer, self_attribute, statements, walk

MAX_STUB_LINES = 40  # lines of one class or module summary
# A summary focused on what the current file uses (class_stub with focus): at most this many member lines, the
# other members named on one line (at most MAX_OTHER_NAMES names; the short form's list too). Every member of all but
# the largest classes: a member the list leaves out is one the model cannot name (rich's Text has 48, Console 110).
FOCUS_STUB_LINES = 12
MAX_OTHER_NAMES = 120
FOCUS_RADIUS = 60  # lines around the cursor whose attribute names weigh double
_ATTRIBUTE = re.compile(r"\.\s*([A-Za-z_]\w*)")
KEPT_DUNDERS = ("__init__", "__call__")  # the only dunder methods a class summary shows
# A signature longer than this (or written over several lines) is shown on one line, its parameters' annotations
# dropped past it: the names and short defaults are what a call needs (rich's Table.__init__, 29 lines as
# written, took 400 of a class summary's 900 tokens).
MAX_SIGNATURE_CHARS = 100
MAX_DEFAULT_CHARS = 12  # a longer default value is shown as `...`


def _decorators(node) -> list[str]:
    wrapped = outer(node)
    if wrapped.type != "decorated":
        return []
    decos = wrapped.children[0]
    decos = decos.children if decos.type == "decorators" else [decos]
    return [d.get_code(include_prefix=False).strip() for d in decos]


def _header(node) -> str:
    """`def f(x: int) -> str:` / `class A(B):` as written (continuation lines keep their source indentation)."""
    parts = ["async "] if node.parent is not None and node.parent.type in ("async_funcdef", "async_stmt") else []
    for i, child in enumerate(node.children):
        parts.append(child.get_code(include_prefix=i > 0))
        if child.type == "operator" and child.value == ":":
            break
    return "".join(parts)


def _signature(node) -> str:
    """A function's header on one line: as written where it fits MAX_SIGNATURE_CHARS, else with its blanks
    collapsed, else as parameter names with their short defaults (`def add_row(self, *renderables, style=None,
    end_section=False) -> None:`)."""
    header = _header(node)
    if "\n" not in header and len(header) <= MAX_SIGNATURE_CHARS:
        return header
    one = re.sub(r"\(\s+", "(", re.sub(r",?\s*\)(\s*(->|:))", r")\1", " ".join(header.split())))
    if len(one) <= MAX_SIGNATURE_CHARS:
        return one
    params = []
    for child in node.children[2].children[1:-1]:
        if child.type == "param":
            text = "*" * child.star_count + child.name.value
            if child.default is not None:
                value = " ".join(child.default.get_code(include_prefix=False).split())
                text += "=" + (value if len(value) <= MAX_DEFAULT_CHARS else "...")
            params.append(text)
        elif child.type == "operator" and child.value in ("*", "/"):
            params.append(child.value)
    returns = ""
    if node.children[3].type == "operator" and node.children[3].value == "->":
        annotation = " ".join(node.children[4].get_code(include_prefix=False).split())
        returns = f" -> {annotation}" if len(annotation) <= 2 * MAX_DEFAULT_CHARS else ""
    head = one[: one.index("def ")]  # `async ` where there is one
    return f"{head}def {node.name.value}({', '.join(params)}){returns}:"


def _doc_line(node) -> str:
    doc = node.get_doc_node()
    if doc is None:
        return ""
    try:
        value = ast.literal_eval(doc.get_code(include_prefix=False))
    except (ValueError, SyntaxError):
        return ""
    if not isinstance(value, str):
        return ""
    for line in value.strip().splitlines():
        return line.strip().replace('"""', r"\"\"\"")
    return ""


def _function_lines(node, with_doc: bool) -> list[str]:
    indent = " " * outer(node).start_pos[1]
    lines = [indent + d for d in _decorators(node)]
    header = _signature(node)
    doc = _doc_line(node) if with_doc else ""
    if doc:
        lines += [indent + header, f'{indent}    """{doc}"""']
    else:
        lines.append(indent + header + " ...")
    return lines


def _stmt_line(stmt, indent: str, params: dict[str, str] | None = None, name: str | None = None,
               private: bool = False) -> str | None:
    """One public assignment as a stub line: as written when short (`name: T = value`), else `name: T = ...`.
    `name` is given for `self.name = ...` targets; `params` maps parameter names to their annotations; `private`:
    a `_name` too (one the current file imports by name)."""
    target = stmt.children[0]
    name = name or (target.value if target.type == "name" else None)
    if name is None or (name.startswith("_") and not private):
        return None
    ann = stmt.children[1] if len(stmt.children) > 1 and stmt.children[1].type == "annassign" else None
    if target.type == "name":
        code = stmt.get_code(include_prefix=False)
        if "\n" not in code and len(code) <= 80:
            return indent + code
    if ann is not None:
        annotation = ann.children[1].get_code(include_prefix=False)
        has_value = len(ann.children) > 2
        if target.type == "name":
            return f"{indent}{name}: {annotation}" + (" = ..." if has_value else "")
        return f"{indent}{name}: {annotation}"
    value = stmt.children[-1]
    if params and value.type == "name" and params.get(value.value):
        return f"{indent}{name}: {params[value.value]}"  # self.x = x, with x annotated
    return f"{indent}{name} = ..."


def _body(node) -> list:
    suite = node.children[-1]
    return suite.children if suite.type == "suite" else [suite]


def _unwrap_def(item):
    """The funcdef/classdef inside a decorated or async item, else None."""
    while item.type in ("decorated", "async_stmt", "async_funcdef"):
        item = item.children[-1]
    return item if item.type in ("funcdef", "classdef") else None


def _init_attributes(cls) -> list[str]:
    """`self.x` attributes set in __init__, as `x: T` stub lines (T from an annotation where there is one)."""
    init = next((d for d in map(_unwrap_def, _body(cls)) if d is not None and d.name.value == "__init__"), None)
    if init is None or not init.get_params():
        return []
    params = init.get_params()
    self_name = params[0].name.value
    annotated = {p.name.value: p.annotation.get_code(include_prefix=False) for p in params[1:] if p.annotation}
    lines, seen = [], set()
    for stmt in walk(init.children[-1], ("expr_stmt",), stop=("funcdef", "classdef", "lambdef")):
        leaf = self_attribute(stmt.children[0], self_name)
        if leaf is None or leaf.value in seen or leaf.value.startswith("_"):
            continue
        seen.add(leaf.value)
        line = _stmt_line(stmt, "", annotated, name=leaf.value)
        if line is not None:
            lines.append(line)
    return lines


def focus_names(text: str, line: int | None = None, radius: int = FOCUS_RADIUS) -> dict[str, float]:
    """The attribute names the current file uses (`x.name`), weighted double within `radius` lines of the cursor's
    `line` (None: all alike, so the summary does not change as the cursor moves): what a summary of the classes
    and modules the file reaches should show first."""
    weights: dict[str, float] = {}
    for i, row in enumerate(text.split("\n"), start=1):
        if "." not in row:
            continue
        w = 2.0 if line is not None and abs(i - line) <= radius else 1.0
        for name in _ATTRIBUTE.findall(row):
            weights[name] = max(weights.get(name, 0.0), w)
    return weights


def _member_groups(node, inner: str, used: Mapping[str, float] | None = None) -> list[tuple[str, list[str]]]:
    """(name, stub lines) of a class's public members in source order: attributes, `self.x` set in __init__,
    nested classes, methods (with __init__ and __call__); and the private methods the current file reaches by name
    (`used`: focus_names; rich's PagerContext calls `self._console._exit_buffer()`)."""
    used = used or {}
    groups: list[tuple[str, list[str]]] = []
    attrs = [line for line in (_stmt_line(s, inner) for s in statements(_body(node))) if line]
    groups += [(_line_name(a), [a]) for a in attrs]
    have = {name for name, _ in groups}
    for attr in _init_attributes(node):
        name = _line_name(attr)
        if name not in have:
            groups.append((name, [inner + attr]))
    for item in _body(node):
        d = _unwrap_def(item)
        if d is None:
            continue
        name = d.name.value
        if d.type == "classdef":
            if not name.startswith("_"):
                groups.append((name, [" " * d.start_pos[1] + _header(d) + " ..."]))
        elif not name.startswith("_") or name in KEPT_DUNDERS or (name in used and not name.startswith("__")):
            groups.append((name, _function_lines(d, with_doc=False)))
    return groups


def _line_name(line: str) -> str:
    return re.split(r"[\s:=]", line.strip(), maxsplit=1)[0]


def _chosen(groups: list[tuple[str, list[str]]], focus: Mapping[str, float] | None, indent: str) -> list[str]:
    """The stub lines to show: without focus, members in source order up to MAX_STUB_LINES; with it, the
    constructor and the members the current file uses (nearest the cursor first), then others in source order,
    up to FOCUS_STUB_LINES, and the names of the rest on one line (what the model needs to name a member)."""
    total = sum(len(lines) for _, lines in groups)
    if focus is None:
        members = [line for _, lines in groups for line in lines]
        if total > MAX_STUB_LINES:
            members = members[:MAX_STUB_LINES] + [f"{indent}...  # {total - MAX_STUB_LINES} more"]
        return members
    if total <= FOCUS_STUB_LINES:
        return [line for _, lines in groups for line in lines]
    def weight(i: int) -> float:
        name = groups[i][0]
        return 3.0 if name == "__init__" else focus.get(name, 0.0)

    rank = sorted(range(len(groups)), key=lambda i: (-weight(i), i))
    keep, used = set(), 0
    for i in rank:
        n = len(groups[i][1])
        if used + n <= FOCUS_STUB_LINES:
            keep.add(i)
            used += n
    lines = [line for i, (_, g) in enumerate(groups) if i in keep for line in g]
    rest = list(dict.fromkeys(name for i, (name, _) in enumerate(groups) if i not in keep and name))
    if rest:
        shown = rest[:MAX_OTHER_NAMES]
        more = f" (+{len(rest) - len(shown)})" if len(rest) > len(shown) else ""
        lines.append(f"{indent}# also: {', '.join(shown)}{more}")
    return lines


def class_stub(node, focus: Mapping[str, float] | None = None) -> str:
    """Header, first docstring line, public attributes and method signatures: what a .pyi would say. With `focus`
    (focus_names of the current file), a short one: the members it uses, the others by name."""
    return _class_stub(node, focus, _member_groups(node, _inner(node), focus))


def _inner(node) -> str:
    return " " * (node.start_pos[1] + 4)  # a class's member indentation


def _class_stub(node, focus: Mapping[str, float] | None, groups: list[tuple[str, list[str]]]) -> str:
    col = outer(node).start_pos[1]
    inner = _inner(node)
    lines = [" " * col + d for d in _decorators(node)] + [" " * node.start_pos[1] + _header(node)]
    doc = _doc_line(node)
    if doc:
        lines.append(f'{inner}"""{doc}"""')
    members = _chosen(groups, focus, inner)
    if not members and not doc:
        lines[-1] += " ..."
    return _dedent("\n".join(lines + members), col)


def names_stub(stub: str, groups_names: Sequence[str], focus: Mapping[str, float] | None) -> str:
    """The shortest summary: the stub's first line (a class header; "" for a module) and its member names on one
    comment line, the ones the current file uses first; "" when it would not take half the stub's length or less."""
    names = [n for n in dict.fromkeys(groups_names) if n]
    if focus:  # (a stable sort: source order among equals)
        names = sorted(names, key=lambda n: -focus.get(n, 0.0))
    shown = names[:MAX_OTHER_NAMES]
    more = f" (+{len(names) - len(shown)})" if len(names) > len(shown) else ""
    # A class's header is its first `class` line (after any decorators); a module's stub has none.
    head = ""
    if stub.startswith(("class ", "@")):
        head = next((line for line in stub.split("\n") if line.startswith("class ")), "")
    if not shown:
        return ""
    lines = [head, f"    # members: {', '.join(shown)}{more}"] if head else [f"# names: {', '.join(shown)}{more}"]
    text = "\n".join(lines)
    return text if 2 * len(text) <= len(stub) else ""


def class_stub_and_names(node, focus: Mapping[str, float] | None = None) -> tuple[str, str]:
    """class_stub(node, focus), and its names_stub (the header and the member names)."""
    groups = _member_groups(node, _inner(node), focus)  # (walked once for both)
    stub = _class_stub(node, focus, groups)
    return stub, names_stub(stub, [name for name, _ in groups], focus)


def function_stub(node) -> str:
    return _dedent("\n".join(_function_lines(node, with_doc=True)), outer(node).start_pos[1])


def statement_stub(node) -> str | None:
    """A module-level assignment a file imports by name, as one stub line (a private one too: it was imported)."""
    return _stmt_line(node, "", private=True) if node.type == "expr_stmt" else None


def module_stub_and_names(tree, is_package: bool, focus: Mapping[str, float] | None = None) -> tuple[str, str]:
    """module_stub(tree, is_package, focus), and its names_stub (the module's public names)."""
    stub = module_stub(tree, is_package, focus)
    names = []
    for item in tree.children:
        d = _unwrap_def(item)
        if d is not None and not d.name.value.startswith("_"):
            names.append(d.name.value)
        elif item.type == "simple_stmt":
            names += [_line_name(line) for line in (_stmt_line(c, "") for c in item.children if c.type == "expr_stmt")
                      if line]
    return stub, names_stub(stub, names, focus)


def module_stub(tree, is_package: bool, focus: Mapping[str, float] | None = None) -> str:
    """A module imported as a whole: its docstring line and the signatures of its top-level public names (with
    `focus`, the names the current file uses first, the others by name past FOCUS_STUB_LINES)."""
    head = []
    doc = _doc_line(tree)
    if doc:
        head.append(f'"""{doc}"""')
    groups: list[tuple[str, list[str]]] = []
    for item in tree.children:
        if item.type == "simple_stmt":
            for child in item.children:
                if child.type == "expr_stmt":
                    line = _stmt_line(child, "")
                    if line:
                        groups.append((_line_name(line), [line]))
                elif is_package and child.type == "import_from" and child.level > 0:  # a package's re-exports
                    groups.append(("", [child.get_code(include_prefix=False)]))
            continue
        d = _unwrap_def(item)
        if d is None or d.name.value.startswith("_"):
            continue
        if d.type == "funcdef":
            groups.append((d.name.value, _function_lines(d, with_doc=False)))
            continue
        lines = _decorators(d) + [_header(d)]
        cls_doc = _doc_line(d)
        if cls_doc:
            lines.append(f'    """{cls_doc}"""')
        init = next((f for f in map(_unwrap_def, _body(d)) if f is not None and f.name.value == "__init__"), None)
        if init is not None:
            lines += _function_lines(init, with_doc=False)
        elif not cls_doc:
            lines[-1] += " ..."
        groups.append((d.name.value, lines))
    if focus is None:
        lines = head + [line for _, g in groups for line in g]
        if len(lines) > MAX_STUB_LINES:
            lines = lines[:MAX_STUB_LINES] + [f"...  # {len(lines) - MAX_STUB_LINES} more"]
        return "\n".join(lines)
    return "\n".join(head + _chosen(groups, focus, ""))


def _dedent(text: str, col: int) -> str:
    if col == 0:
        return text
    pad = " " * col
    return "\n".join(line[col:] if line.startswith(pad) else line.lstrip() for line in text.split("\n"))
