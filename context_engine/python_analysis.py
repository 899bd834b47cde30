"""Python context from jedi: the imported names' local APIs (LANCE) and the typed hole at the cursor (ChatLSP).

jedi does the resolving and the type inference, error-tolerantly, on the unsaved buffer; this module decides what
to ask it and renders the answers as stubs (headers, first docstring lines, member signatures as written), read
from parso trees of the definitions' files, so a record is a summary rather than a whole file. Only definitions
inside the project count: anything that resolves into the standard library or site-packages is dropped, and
absolute imports whose top-level package is not in the project are never followed at all.
"""

from __future__ import annotations

import ast
import functools
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import jedi
import parso

from context_engine.config import SKIP_DIRS
from context_engine.records import ContextRecord

log = logging.getLogger(__name__)

MAX_STAR_NAMES = 30  # names one `from m import *` contributes
MAX_STUB_LINES = 40  # lines of one class or module summary
MAX_BINDINGS = 16  # bindings listed in a hole's "in scope" line
MAX_MEMBERS = 30  # member names listed after `obj.`
KEPT_DUNDERS = ("__init__", "__call__")  # the only dunder methods a class summary shows
HOLE_SCORE, EXPECTED_SCORE, RECEIVER_SCORE, BINDING_SCORE = 10.0, 9.0, 8.0, 6.0

_SCOPES = ("funcdef", "classdef", "lambdef", "sync_comp_for", "comp_for")


@functools.lru_cache(maxsize=8)
def _project(root: str) -> jedi.Project:
    return jedi.Project(root)


@functools.lru_cache(maxsize=1)
def _grammar():
    return parso.load_grammar()  # the same object jedi parses with, so both share parso's cache


@dataclass
class _Analysis:
    """One request: the buffer's jedi Script and tree, and the trees/scripts of other files it needed."""

    root: Path
    path: Path
    project: jedi.Project
    script: jedi.Script
    tree: object  # parso Module of the buffer
    _scripts: dict = field(default_factory=dict)

    @classmethod
    def open(cls, project_root: Path, path: Path, text: str) -> "_Analysis":
        root = Path(project_root).resolve()
        path = Path(path)
        path = (path if path.is_absolute() else root / path).resolve()
        project = _project(str(root))
        script = jedi.Script(text, path=path, project=project)
        tree = getattr(script, "_module_node", None) or _grammar().parse(text)
        return cls(root, path, project, script, tree)

    def rel(self, module_path) -> str | None:
        """Repository-relative POSIX path of a file inside the project, else None."""
        if module_path is None:
            return None
        try:
            rel = Path(module_path).resolve().relative_to(self.root)
        except ValueError:
            return None
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts[:-1]):
            return None
        return rel.as_posix()

    def current_rel(self) -> str:
        return self.rel(self.path) or self.path.as_posix()

    def script_for(self, module_path: Path) -> jedi.Script:
        if Path(module_path).resolve() == self.path:
            return self.script
        key = str(module_path)
        if key not in self._scripts:
            self._scripts[key] = jedi.Script(path=module_path, project=self.project)
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
        return _definition_at(tree, name.line, name.column)

    def is_local_package(self, top: str) -> bool:
        """Whether an absolute import's first component lives in the project (else it is never followed)."""
        folders = [self.root] + [p for p in self.path.parents if p == self.root or self.root in p.parents]
        return any((d / top).is_dir() or (d / f"{top}.py").is_file() or (d / f"{top}.pyi").is_file() for d in folders)


# -- parso helpers: spans and stubs ------------------------------------------------------------------------


def _leaf_at(tree, pos: tuple[int, int]):
    """The leaf starting at `pos` where there is one (parso prefers the leaf ending there: `f(` + `x`)."""
    leaf = tree.get_leaf_for_position(pos)
    if leaf is not None and leaf.start_pos != pos and leaf.end_pos == pos:
        nxt = leaf.get_next_leaf()
        if nxt is not None and nxt.start_pos == pos:
            return nxt
    return leaf


def _definition_at(tree, line: int, column: int):
    leaf = _leaf_at(tree, (line, column))
    if leaf is None or leaf.type != "name":
        return None
    parent = leaf.parent
    if parent.type in ("classdef", "funcdef") and parent.name is leaf:
        return parent
    return leaf.get_definition()


def _outer(node):
    """The node with its `async` and decorators."""
    while node.parent is not None and node.parent.type in ("async_funcdef", "async_stmt", "decorated"):
        node = node.parent
    return node


def _end_line(node) -> int:
    last = node.get_last_leaf()
    return last.start_pos[0] if last.type == "newline" else last.end_pos[0]


def _span(node) -> tuple[int, int]:
    if node.type == "file_input":
        last = node.get_last_leaf().get_previous_leaf()  # before the endmarker
        return 1, _end_line(last) if last is not None else 1
    return _outer(node).start_pos[0], _end_line(node)


def _decorators(node) -> list[str]:
    outer = _outer(node)
    if outer.type != "decorated":
        return []
    decos = outer.children[0]
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
    indent = " " * _outer(node).start_pos[1]
    lines = [indent + d for d in _decorators(node)]
    header = _header(node)
    doc = _doc_line(node) if with_doc else ""
    if doc:
        lines += [indent + header, f'{indent}    """{doc}"""']
    else:
        lines.append(indent + header + " ...")
    return lines


def _stmt_line(stmt, indent: str, params: dict[str, str] | None = None, name: str | None = None) -> str | None:
    """One public assignment as a stub line: as written when short (`name: T = value`), else `name: T = ...`.
    `name` is given for `self.name = ...` targets; `params` maps parameter names to their annotations."""
    target = stmt.children[0]
    name = name or (target.value if target.type == "name" else None)
    if name is None or name.startswith("_"):
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


def _self_attribute(target, self_name: str):
    """The Name leaf `x` of a `self.x` target, else None."""
    if target.type not in ("atom_expr", "power") or len(target.children) != 2:
        return None
    base, trailer = target.children
    if base.type != "name" or base.value != self_name or trailer.type != "trailer" or trailer.children[0] != ".":
        return None
    return trailer.children[1]


def _body(node) -> list:
    suite = node.children[-1]
    return suite.children if suite.type == "suite" else [suite]


def _statements(items):
    """Expression statements among a body's items (a simple_stmt may hold several, `a = 1; b = 2`)."""
    for item in items:
        if item.type == "simple_stmt":
            for child in item.children:
                if child.type == "expr_stmt":
                    yield child
        elif item.type == "expr_stmt":
            yield item


def _unwrap_def(item):
    """The funcdef/classdef inside a decorated or async item, else None."""
    while item.type in ("decorated", "async_stmt", "async_funcdef"):
        item = item.children[-1]
    return item if item.type in ("funcdef", "classdef") else None


def _walk(node, types: tuple[str, ...], stop: tuple[str, ...] = ()):
    """Descendants of the given types, not descending into nodes of the `stop` types."""
    for child in getattr(node, "children", ()):
        if child.type in types:
            yield child
        if child.type not in stop:
            yield from _walk(child, types, stop)


def _init_attributes(cls) -> list[str]:
    """`self.x` attributes set in __init__, as `x: T` stub lines (T from an annotation where there is one)."""
    init = next((d for d in map(_unwrap_def, _body(cls)) if d is not None and d.name.value == "__init__"), None)
    if init is None or not init.get_params():
        return []
    params = init.get_params()
    self_name = params[0].name.value
    annotated = {p.name.value: p.annotation.get_code(include_prefix=False) for p in params[1:] if p.annotation}
    lines, seen = [], set()
    for stmt in _walk(init.children[-1], ("expr_stmt",), stop=("funcdef", "classdef", "lambdef")):
        leaf = _self_attribute(stmt.children[0], self_name)
        if leaf is None or leaf.value in seen or leaf.value.startswith("_"):
            continue
        seen.add(leaf.value)
        line = _stmt_line(stmt, "", annotated, name=leaf.value)
        if line is not None:
            lines.append(line)
    return lines


def class_stub(node) -> str:
    """Header, first docstring line, public attributes and method signatures: what a .pyi would say."""
    col = _outer(node).start_pos[1]
    inner = " " * (node.start_pos[1] + 4)
    lines = [" " * col + d for d in _decorators(node)] + [" " * node.start_pos[1] + _header(node)]
    doc = _doc_line(node)
    if doc:
        lines.append(f'{inner}"""{doc}"""')
    members: list[str] = []
    attrs = [line for line in (_stmt_line(s, inner) for s in _statements(_body(node))) if line]
    members += attrs
    have = {re.split(r"[\s:=]", a.strip(), maxsplit=1)[0] for a in attrs}
    for attr in _init_attributes(node):
        name = re.split(r"[\s:=]", attr, maxsplit=1)[0]
        if name not in have:
            members.append(inner + attr)
    for item in _body(node):
        d = _unwrap_def(item)
        if d is None:
            continue
        name = d.name.value
        if d.type == "classdef":
            if not name.startswith("_"):
                members.append(" " * d.start_pos[1] + _header(d) + " ...")
        elif not name.startswith("_") or name in KEPT_DUNDERS:
            members += _function_lines(d, with_doc=False)
    if len(members) > MAX_STUB_LINES:
        members = members[:MAX_STUB_LINES] + [f"{inner}...  # {len(members) - MAX_STUB_LINES} more"]
    if not members and not doc:
        lines[-1] += " ..."
    return _dedent("\n".join(lines + members), col)


def function_stub(node) -> str:
    return _dedent("\n".join(_function_lines(node, with_doc=True)), _outer(node).start_pos[1])


def statement_stub(node) -> str | None:
    return _stmt_line(node, "") if node.type == "expr_stmt" else None


def module_stub(tree, is_package: bool) -> str:
    """A module imported as a whole: its docstring line and the signatures of its top-level public names."""
    lines = []
    doc = _doc_line(tree)
    if doc:
        lines.append(f'"""{doc}"""')
    for item in tree.children:
        if item.type == "simple_stmt":
            for child in item.children:
                if child.type == "expr_stmt":
                    line = _stmt_line(child, "")
                    if line:
                        lines.append(line)
                elif is_package and child.type == "import_from" and child.level > 0:  # a package's re-exports
                    lines.append(child.get_code(include_prefix=False))
            continue
        d = _unwrap_def(item)
        if d is None or d.name.value.startswith("_"):
            continue
        if d.type == "funcdef":
            lines += _function_lines(d, with_doc=False)
            continue
        lines += _decorators(d) + [_header(d)]
        cls_doc = _doc_line(d)
        if cls_doc:
            lines.append(f'    """{cls_doc}"""')
        init = next((f for f in map(_unwrap_def, _body(d)) if f is not None and f.name.value == "__init__"), None)
        if init is not None:
            lines += _function_lines(init, with_doc=False)
        elif not cls_doc:
            lines[-1] += " ..."
    if len(lines) > MAX_STUB_LINES:
        lines = lines[:MAX_STUB_LINES] + [f"...  # {len(lines) - MAX_STUB_LINES} more"]
    return "\n".join(lines)


def _dedent(text: str, col: int) -> str:
    if col == 0:
        return text
    pad = " " * col
    return "\n".join(line[col:] if line.startswith(pad) else line.lstrip() for line in text.split("\n"))


def _summary(a: _Analysis, name) -> tuple[str, str, int, int] | None:
    """(text, path, start_line, end_line) of a resolved jedi Name inside the project, else None."""
    rel = a.rel(name.module_path)
    if rel is None:
        return None
    node = a.node_of(name)
    if node is None:
        return None
    if node.type == "file_input":
        text = module_stub(node, Path(name.module_path).name == "__init__.py")
    elif node.type == "classdef":
        text = class_stub(node)
    elif node.type == "funcdef":
        text = function_stub(node)
    else:
        text = statement_stub(node)
    if not text:
        return None
    return (text, rel, *_span(node))


# -- imports provider --------------------------------------------------------------------------------------


def _scan(tree) -> tuple[list, Counter]:
    """The buffer's import statements, and how often each name / dotted chain is used outside them."""
    imports, uses = [], Counter()
    leaf = tree.get_first_leaf()
    while leaf is not None:
        if leaf.type == "keyword" and leaf.value == "import" and leaf.parent.type in ("import_name", "import_from"):
            imports.append(leaf.parent)
        elif leaf.type == "name" and not _in_import(leaf):
            prev = leaf.get_previous_leaf()
            if prev is None or prev.value != ".":
                chain, nxt = leaf.value, leaf.get_next_leaf()
                uses[chain] += 1
                for _ in range(4):
                    after = nxt.get_next_leaf() if nxt is not None and nxt.value == "." else None
                    if after is None or after.type != "name":
                        break
                    chain += "." + after.value
                    uses[chain] += 1
                    nxt = after.get_next_leaf()
        leaf = leaf.get_next_leaf()
    return imports, uses


def _in_import(leaf) -> bool:
    node = leaf.parent
    while node is not None and node.type not in ("simple_stmt", "file_input", "suite"):
        if node.type in ("import_name", "import_from"):
            return True
        node = node.parent
    return False


def _goto(a: _Analysis, leaf) -> list:
    try:
        return a.script.goto(*leaf.start_pos, follow_imports=True)
    except Exception as e:  # jedi's inference can trip over broken code; one name is not worth the request
        log.debug("goto failed at %s:%s: %s", a.path, leaf.start_pos, e)
        return []


def _star_names(a: _Analysis, module) -> list:
    """The names `from module import *` binds: `__all__` when the module spells it out, else its public names."""
    tree = a.node_of(module)
    public = None
    if tree is not None:
        for stmt in _statements(tree.children):
            if stmt.children[0].type == "name" and stmt.children[0].value == "__all__":
                try:
                    public = set(ast.literal_eval(stmt.children[-1].get_code(include_prefix=False)))
                except (ValueError, SyntaxError, TypeError):
                    public = None
    names = [n for n in module.defined_names()
             if (n.name in public if public is not None else not n.name.startswith("_"))]
    return names[:MAX_STAR_NAMES]


def _module_for_relative(a: _Analysis, level: int):
    """`from . import *` names no module jedi can goto: the package's __init__ by hand."""
    folder = a.path.parent
    for _ in range(level - 1):
        folder = folder.parent
    init = folder / "__init__.py"
    if not init.is_file():
        return None
    return a.script_for(init).get_context(1, 0)  # the module's own Name


def _resolve_import(a: _Analysis, imp, uses: Counter, add) -> None:
    line = imp.start_pos[0]
    if imp.type == "import_name":
        for dotted_path, local in zip(imp.get_paths(), imp.get_defined_names()):
            dotted = ".".join(n.value for n in dotted_path)
            if not a.is_local_package(dotted_path[0].value):
                continue
            aliased = local is not dotted_path[0]
            why = f"imported module `{dotted}`" + (f" as `{local.value}`" if aliased else "") + f" (line {line})"
            for name in _goto(a, dotted_path[-1])[:1]:
                add(name, 1.0 + uses[local.value if aliased else dotted], why)
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
                    add(name, 0.5 + uses[star.name], why)
        return
    for local in imp.get_defined_names():
        why = f"imported as `{local.value}` from {module_text} (line {line})"
        for name in _goto(a, local)[:1]:
            add(name, 1.0 + uses[local.value], why)


def import_context(project_root: Path, path: Path, text: str, limit: int = 20) -> list[ContextRecord]:
    """The project definitions the current file imports, as summaries, the most used first."""
    a = _Analysis.open(project_root, path, text)
    imports, uses = _scan(a.tree)
    found: dict[tuple[str, int, int], tuple[float, int, ContextRecord]] = {}

    def add(name, score: float, why: str) -> None:
        summary = _summary(a, name)
        if summary is None:
            return
        text_, rel, start, end = summary
        key = (rel, start, end)
        if key not in found or found[key][0] < score:
            order = found[key][1] if key in found else len(found)
            found[key] = (score, order, ContextRecord(text_, rel, start, end, score, "imports", why))

    for imp in imports:
        try:
            _resolve_import(a, imp, uses, add)
        except Exception as e:  # a half-typed import statement costs its own records only
            log.debug("import at %s:%d not resolved: %s: %s", a.path, imp.start_pos[0], type(e).__name__, e)

    ranked = sorted(found.values(), key=lambda item: (-item[0], item[1]))
    return [record for _, _, record in ranked[:limit]]


# -- typed holes provider ----------------------------------------------------------------------------------


@dataclass
class _Type:
    """A type as the hole shows it, and the project classes it names (module_path, line, column)."""

    text: str | None
    classes: list[tuple[Path, int, int]] = field(default_factory=list)


def _classes_of(a: _Analysis, values) -> list[tuple[Path, int, int]]:
    out = []
    for v in values:
        if v.type in ("instance", "class") and a.rel(v.module_path) is not None and v.line is not None:
            out.append((Path(v.module_path), v.line, v.column))
    return out


def _annotation_type(a: _Analysis, module_path: Path, annotation) -> _Type:
    """An annotation node as written, and the project classes its names resolve to (`list[Item]` -> Item)."""
    script = a.script_for(module_path)
    classes = []
    names = [annotation] if annotation.type == "name" else list(_walk(annotation, ("name",)))
    for leaf in names:
        try:
            targets = script.goto(*leaf.start_pos, follow_imports=True)
        except Exception:
            continue
        for t in targets:
            if t.type == "class":
                classes += _classes_of(a, [t])
    return _Type(annotation.get_code(include_prefix=False), classes)


def _name_type(a: _Analysis, leaf) -> _Type:
    """A binding's type as jedi infers it at its definition."""
    try:
        names = a.script.goto(*leaf.start_pos)
        if not names:
            return _Type(None)
        hint = names[0].get_type_hint() or None
        return _Type(hint, _classes_of(a, names[0].infer()))
    except Exception as e:
        log.debug("inference failed for %s at %s: %s", leaf.value, leaf.start_pos, e)
        return _Type(None)


def _param_annotation(a: _Analysis, param) -> _Type:
    """The annotation of a signature's parameter: resolved in its own file when that is in the project."""
    text = param.to_string().lstrip("*")
    if not text.startswith(param.name + ":"):
        return _Type(None)
    annotation_text = _strip_default(text[len(param.name) + 1:].strip())
    if param.module_path is not None and a.rel(param.module_path) is not None:
        leaf = _leaf_at(a.tree_for(param.module_path), (param.line, param.column))
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


def _expected(a: _Analysis, line: int, column: int, prefix: str, scope) -> tuple[list[str], _Type | None, str]:
    """(hole lines, expected type, why for its definitions): the parameter being filled in a call, the annotation
    of `x: T = |`, or the enclosing function's return annotation on `return |`."""
    try:
        signatures = a.script.get_signatures(line, column)
    except Exception:
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
        annotation = _leaf_at(a.tree, (line, start))
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


def _scope(a: _Analysis, line: int, column: int):
    """The buffer's funcdef/classdef/module node enclosing the cursor (jedi knows even in broken code)."""
    try:
        context = a.script.get_context(line, column)
    except Exception:
        return None
    if context.type == "module":
        return a.tree
    node = _definition_at(a.tree, context.line, context.column)
    return node if node is not None and node.type in ("funcdef", "classdef") else None


def _nested(leaf, scope) -> bool:
    """Whether a name lives in a scope nested inside `scope` (a nested def's own name does not)."""
    node = leaf.parent
    while node is not None and node is not scope:
        if node.type in _SCOPES and not (node.type in ("funcdef", "classdef") and node.name is leaf):
            return True
        node = node.parent
    return False


def _bindings(a: _Analysis, scope, line: int, deadline: float) -> list[tuple[str, _Type]]:
    """Parameters, locals defined before the cursor line, and `self.` attributes of the enclosing class."""
    out: list[tuple[str, object, object]] = []  # (label, annotation node or None, leaf to infer at)
    method_self = None
    if scope.type == "funcdef":
        params = scope.get_params()
        if params and _enclosing_class(scope) is not None:
            if params[0].name.value in ("self", "cls") and not params[0].star_count:
                method_self = params[0].name.value
                params = params[1:]
        for p in params:
            out.append(("*" * p.star_count + p.name.value, p.annotation, None))
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
            typed.append((label, _annotation_type(a, a.path, annotation)))
        elif at is not None and time.perf_counter() < deadline:
            typed.append((label, _name_type(a, at)))
        else:
            typed.append((label, _Type(None)))
    return typed


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
            for stmt in _statements([item]):
                yield from (n for n in stmt.get_defined_names() if n.type == "name")
        return
    leaf = scope.children[-1].get_first_leaf()
    while leaf is not None and leaf.start_pos[0] < line:
        if leaf.type == "name" and not _nested(leaf, scope):
            prev = leaf.get_previous_leaf()
            if (prev is None or prev.value != ".") and leaf.is_definition():
                if leaf.get_definition().type not in ("import_name", "import_from"):
                    yield leaf
        leaf = leaf.get_next_leaf()


def _enclosing_class(funcdef):
    node = _outer(funcdef).parent
    if node is not None and node.type == "suite":
        node = node.parent
    return node if node is not None and node.type == "classdef" else None


def _class_attributes(cls, self_name: str) -> list[tuple[object, object]]:
    """(name leaf, annotation or None) of `self.x` assignments anywhere in the class, first one each."""
    seen, out = set(), []
    for stmt in _walk(cls.children[-1], ("expr_stmt",), stop=("classdef", "lambdef")):
        targets = stmt.children[0:-1:2] if len(stmt.children) > 1 and stmt.children[1] == "=" else stmt.children[:1]
        for target in targets:
            leaf = _self_attribute(target, self_name)
            if leaf is None or leaf.value in seen:
                continue
            seen.add(leaf.value)
            annotation = stmt.children[1].children[1] if stmt.children[1].type == "annassign" else None
            out.append((leaf, annotation))
    return out


def _receiver(a: _Analysis, line: int, column: int, prefix: str) -> tuple[list[str], _Type | None, str]:
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
    leaf = _leaf_at(a.tree, (line, dot))
    if leaf is None or leaf.value != "." or leaf.start_pos != (line, dot):
        return [], None, ""  # a float, a string, a comment
    receiver = _receiver_text(prefix, dot)
    if not receiver:
        return [], None, ""
    try:
        values = a.script.infer(line, dot)
        completions = a.script.complete(line, column)
    except Exception as e:
        log.debug("receiver inference failed at %s:%s: %s", line, column, e)
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
    a = _Analysis.open(project_root, path, text)
    deadline = float("inf") if infer_budget_ms is None else time.perf_counter() + infer_budget_ms / 1000
    hole: list[str] = []
    wanted: list[tuple[tuple[Path, int, int], float, str]] = []

    scope = _scope(a, line, column)
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
    if not hole:
        return []
    current = a.current_rel()
    records = [ContextRecord("\n".join(hole), current, line, line, HOLE_SCORE, "typed_holes", "the hole at the cursor")]
    seen = set()
    for (module_path, def_line, def_col), score, why in wanted:
        if (module_path, def_line) in seen:
            continue
        seen.add((module_path, def_line))
        node = _definition_at(a.tree_for(module_path), def_line, def_col)
        rel = a.rel(module_path)
        if node is None or node.type != "classdef" or rel is None:
            continue
        records.append(ContextRecord(class_stub(node), rel, *_span(node), score, "typed_holes", why))
        if len(records) >= limit:
            break
    return records


# -- micro-benchmark ---------------------------------------------------------------------------------------

_DEMO = {
    "shop/__init__.py": '"""The shop."""\nfrom .models import Inventory, Item, Store\n',
    "shop/models.py": '''"""Items and where they are kept."""


class Store:
    """A physical store."""

    def __init__(self, name: str, city: str = "Berlin") -> None:
        self.name = name
        self.city = city


class Item:
    """A thing for sale."""

    price: float = 0.0

    def __init__(self, sku: str, price: float) -> None:
        self.sku = sku
        self.price = price

    def total(self, count: int) -> float:
        """Price of `count` units."""
        return self.price * count


class Inventory:
    """Counts of items in one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.counts: dict[str, int] = {}

    def restock(self, item: Item, count: int = 1) -> None:
        """Add `count` units of `item`."""
        self.counts[item.sku] = self.counts.get(item.sku, 0) + count
''',
    "shop/util/__init__.py": "",
    "shop/util/helpers.py": '''from ..models import Item


def fmt_price(item: Item, currency: str = "EUR") -> str:
    """Format the price of an item."""
    return f"{item.price} {currency}"
''',
    "app.py": '''import os
import shop.models as m
from shop import Item, Inventory
from shop.util.helpers import *


class Shop:
    def __init__(self, inv: Inventory) -> None:
        self.inv = inv

    def sell(self, item: Item, n: int = 1) -> str:
        total = item.total(n)
        label = fmt_price(item)
        self.inv.restock(item, 
''',
}


def _bench(calls: int = 20) -> None:
    """p50/p95 latency of both providers on a small package, after one warm-up call each."""
    import statistics
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rel, content in _DEMO.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(content)
        text = _DEMO["app.py"]
        lines = text.split("\n")
        last = len(lines) - 1  # the unclosed `self.inv.restock(item, ` line
        after_dot = text.replace("restock(item, ", "")
        body_lines = [(i, len(lines[i - 1]) + 1) for i in range(1, last + 1) if lines[i - 1].startswith(" " * 8)]
        cases = {
            "import_context": lambda i: import_context(root, root / "app.py", text),
            "typed_hole_context, unclosed call argument": lambda i: typed_hole_context(
                root, root / "app.py", text, last, len(lines[last - 1]) + 1),
            "typed_hole_context, after `self.inv.`": lambda i: typed_hole_context(
                root, root / "app.py", after_dot, last, len("        self.inv.") + 1),
            "typed_hole_context, end of each method-body line in turn": lambda i: typed_hole_context(
                root, root / "app.py", text, *body_lines[i % len(body_lines)]),
        }
        for label, call in cases.items():
            t = time.perf_counter()
            records = call(0)
            cold = (time.perf_counter() - t) * 1000
            times = []
            for i in range(calls):
                t = time.perf_counter()
                call(i)
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            print(f"{label}: {len(records)} records; first call {cold:.1f} ms; "
                  f"p50 {statistics.median(times):.1f} ms, p95 {p95:.1f} ms over {calls} calls")


if __name__ == "__main__":
    import sys

    if "--bench" in sys.argv[1:]:
        _bench()
    else:
        print("usage: python -m context_engine.python_analysis --bench")
