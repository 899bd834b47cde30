"""Tree-sitter parsing: a source file -> its definitions, imports and referenced names (`FileSymbols`).

What to extract lives in data, one pair of query files per language under `queries/` (aider's convention):
`<lang>-tags.scm` captures `@definition.<kind>` / `@name.definition.<kind>` (plus `@parent`, `@body`, `@doc` and
`@local.scope`) and `@name.reference.<kind>`; `<lang>-imports.scm` captures the parts of import statements. This
module runs those queries and turns their captures into records the same way for every language:

- a definition's lines start at its header (decorators and annotations excluded) and its signature is the header
  as written, up to the last token before the body;
- its doc is the first paragraph of its docstring (@doc) or of the comment block right above it;
- definitions inside function bodies (definitions of kind function/method, and @local.scope nodes) are locals
  that no other file can reach, and are dropped;
- identifiers are the @name.reference.* captures in source order, minus definition names.

Speed is the point of the layout: the reference patterns run through `captures()` (one flat pass, no per-match
dictionaries) and are the bulk of the work; definitions and imports are rare, so they go through `matches()`,
which does not descend below MAX_START_DEPTH. Node text is sliced from the source once per node, straight from the
`str` when the file is ASCII.

Work is bounded, so that no file can hold the caller: the parse stops after PARSE_BUDGET_S (`ParseTimeout`; the
index then skips the file with that reason), and the queries never enter an ERROR node of more than
MAX_ERROR_CHILDREN children (unclosed brackets by the thousand: tree-sitter's query cursor is quadratic in them,
a 200 KB file of `(` took minutes). What such a node holds gives no definitions or names; the rest of the file does.
(The queries' own progress callback is not used: py-tree-sitter 0.26 hands tree-sitter an options struct that
goes out of scope before the query runs, and crashes.)

Public API: `language_for` and `parse_source`; for other tree-sitter work over the same grammars
(eval's masking of literals, its syntax checks), `EXTENSIONS`, `load_grammar` (a `Grammar`, compiled once per
process) and `parser_for` (the calling thread's parser for it).
"""

from __future__ import annotations

import collections
import functools
import importlib
import inspect
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import tree_sitter as ts

from repocomplete.context_engine.errors import ParseTimeout
from repocomplete.context_engine.records import Definition, FileSymbols, Import

QUERY_DIR = Path(__file__).parent / "queries"

# extension -> (language, grammar). TypeScript has two grammars (.tsx adds JSX) that share one set of queries.
EXTENSIONS = {
    ".py": ("python", "python"), ".pyi": ("python", "python"),
    ".js": ("javascript", "javascript"), ".jsx": ("javascript", "javascript"),
    ".mjs": ("javascript", "javascript"), ".cjs": ("javascript", "javascript"),
    ".ts": ("typescript", "typescript"), ".tsx": ("typescript", "tsx"),
    ".go": ("go", "go"), ".java": ("java", "java"), ".rs": ("rust", "rust"),
}

# grammar -> (module, function returning the language pointer)
_GRAMMARS = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "java": ("tree_sitter_java", "language"),
    "rust": ("tree_sitter_rust", "language"),
}

# Nodes that sit between a definition and the comment documenting it, or before its header: they are skipped.
_DECORATIONS = frozenset({"decorator", "attribute_item", "annotation", "marker_annotation"})
_FUNCTION_KINDS = frozenset({"function", "method"})
_CAPTURE = re.compile(rb"@([\w.]+)")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_COMMENT_MARKERS = re.compile(r"^\s*(?:/\*+!?|\*+/|\*(?!/)|//[/!]?|#+:?)?[ \t]?")
_COMMENT_END = re.compile(r"\s*\*+/\s*$")
_PATH_SEPARATORS = re.compile(r"::|\.|/")
# Definitions and imports are looked for this many levels below the root at most: deeper ones are locals, and
# not descending into every function body makes the structure pass several times cheaper.
MAX_START_DEPTH = 8
# A parse stops after this long: tree-sitter parses megabytes a second, so only pathological input reaches it.
PARSE_BUDGET_S = 2.0
# The queries skip ERROR nodes with more children than this (their cost grows with the square of the count: 1000
# children cost well under a millisecond, 200 000 cost minutes).
MAX_ERROR_CHILDREN = 1000
_READ_CHUNK = 1 << 16


def language_for(path: str) -> str | None:
    """The language of a file by its extension ("python", "typescript", ...), None when unsupported."""
    entry = EXTENSIONS.get(Path(path).suffix.lower())
    return entry[0] if entry else None


# -- compiled grammars and queries, once per process --------------------------------------------------------------


@dataclass(frozen=True)
class _Pattern:
    """What one pattern of the structure query yields, worked out once from its capture names."""

    # (kind, definition capture, name capture) for each kind the pattern defines (alternations may hold several)
    kinds: tuple[tuple[str, str, str], ...] = ()
    scope: bool = False  # @local.scope: a function body whose definitions are locals
    import_name: str = ""  # a fixed imported name from `(#set! import.name "default")`


@dataclass(frozen=True)
class Grammar:
    """One grammar's tree-sitter language and the compiled queries of its language's files."""

    language_name: str
    language: ts.Language
    structure: ts.Query  # definitions and imports, read with matches()
    patterns: tuple[_Pattern, ...]
    references: ts.Query  # @name.reference.* only, read with captures()


def _query_source(*names: str) -> bytes:
    """The query files' text; a first line `; inherits: LANG` (as in nvim-treesitter) puts LANG's file of the same
    kind first, so a language whose grammar shares another's node types (TypeScript, JavaScript's) adds only its
    own patterns."""
    parts = []
    for name in names:
        path = QUERY_DIR / name
        if not path.is_file():
            continue
        text = path.read_bytes()
        first = text.split(b"\n", 1)[0]
        if first.startswith(b"; inherits:"):
            base = first.split(b":", 1)[1].strip().decode()
            kind = name.split("-", 1)[1]  # "imports.scm"
            parts.append(_query_source(f"{base}-{kind}"))
        parts.append(text)
    return b"\n".join(parts)


def _split_patterns(language: ts.Language, source: bytes) -> list[tuple[bytes, list[str]]]:
    """Each pattern of a query source as (its text, its capture names)."""
    if not source.strip():
        return []
    query = ts.Query(language, source)
    patterns = []
    for i in range(query.pattern_count):
        text = source[query.start_byte_for_pattern(i):query.end_byte_for_pattern(i)]
        patterns.append((text, [c.decode() for c in _CAPTURE.findall(_strip_comments(text))]))
    return patterns


def _strip_comments(text: bytes) -> bytes:
    return re.sub(rb'("(?:[^"\\]|\\.)*")|;[^\n]*', lambda m: b'""' if m.group(1) else b"", text)


@functools.lru_cache(maxsize=None)
def load_grammar(grammar: str, language_name: str) -> Grammar:
    """The compiled grammar `grammar` ("tsx") with the queries of `language_name` ("typescript"), as the values
    of EXTENSIONS pair them; compiled on the first call, the same object afterwards."""
    module_name, function = _GRAMMARS[grammar]
    language = ts.Language(getattr(importlib.import_module(module_name), function)())
    # A dialect grammar (tsx) may add patterns of its own (JSX) to its language's files.
    extra = (f"{grammar}-tags.scm",) if grammar != language_name else ()
    tagged = _split_patterns(language, _query_source(f"{language_name}-tags.scm", *extra))
    tagged += _split_patterns(language, _query_source(f"{language_name}-imports.scm"))
    # Two queries from one set of files: py-tree-sitter's Query.disable_pattern is not reliable (0.26), so the
    # patterns are split by their captures and compiled apart.
    structure, patterns, references = [], [], []
    for text, captures in tagged:
        kinds = dict.fromkeys(c[len("definition."):] for c in captures if c.startswith("definition."))
        if kinds:
            structure.append(text)
            patterns.append(_Pattern(tuple((k, f"definition.{k}", f"name.definition.{k}") for k in kinds)))
        elif "import" in captures or "local.scope" in captures:
            structure.append(text)
            patterns.append(_Pattern(scope="local.scope" in captures))
        elif any(c.startswith("name.reference.") for c in captures):
            references.append(text)
    structure_query = ts.Query(language, b"\n".join(structure))
    for i, pattern in enumerate(patterns):
        if not pattern.kinds and not pattern.scope:
            patterns[i] = _Pattern(import_name=structure_query.pattern_settings(i).get("import.name") or "")
    references_query = ts.Query(language, b"\n".join(references))
    return Grammar(language_name, language, structure_query, tuple(patterns), references_query)


_local = threading.local()


def parser_for(grammar: Grammar) -> ts.Parser:
    """The calling thread's parser for `grammar` (made on first use)."""
    # A Parser holds mutable state, so each thread gets its own (one per language).
    parsers = getattr(_local, "parsers", None)
    if parsers is None:
        parsers = _local.parsers = {}
    parser = parsers.get(id(grammar))  # grammars live in the lru_cache for good, so their ids are stable
    if parser is None:
        parser = parsers[id(grammar)] = ts.Parser(grammar.language)
    return parser


# -- parsing ------------------------------------------------------------------------------------------------------

# The last trees of the most recently parsed large files, so that a file parsed again after an edit (a save, a
# buffer change) is parsed incrementally: tree-sitter re-reads the edited region only.
RECENT_TREES = 4
INCREMENTAL_MIN_BYTES = 16_384  # smaller files parse in a few ms anyway
_trees: collections.OrderedDict[tuple[str, int], tuple[bytes, ts.Tree]] = collections.OrderedDict()
_trees_lock = threading.Lock()


def _common_prefix(a: bytes, b: bytes) -> int:
    """The length of the longest common prefix (by halving: each step one comparison in C)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _point(src: bytes, offset: int) -> tuple[int, int]:
    row = src.count(b"\n", 0, offset)
    return row, offset - (src.rfind(b"\n", 0, offset) + 1)


def _edited(old_src: bytes, old_tree: ts.Tree, src: bytes) -> ts.Tree:
    """A copy of old_tree told of the one edit that turns old_src into src (the changed middle)."""
    start = _common_prefix(old_src, src)
    tail = _common_prefix(old_src[start:][::-1], src[start:][::-1])
    old_end, new_end = len(old_src) - tail, len(src) - tail
    tree = old_tree.copy()
    tree.edit(start_byte=start, old_end_byte=old_end, new_end_byte=new_end, start_point=_point(src, start),
              old_end_point=_point(old_src, old_end), new_end_point=_point(src, new_end))
    return tree



def parse_source(path: str, text: str, budget_s: float | None = PARSE_BUDGET_S) -> FileSymbols | None:
    """Definitions, imports and referenced names of one file; None for a language we do not parse.

    Syntax errors are normal input (the file is being typed): tree-sitter recovers, the definitions that still
    parse are returned and `has_errors` is set. A parse that runs past `budget_s` seconds (None: no limit) raises
    `ParseTimeout`.
    """
    entry = EXTENSIONS.get(Path(path).suffix.lower())
    if entry is None:
        return None
    grammar = load_grammar(entry[1], entry[0])
    src = text.encode("utf-8", "replace")
    key = (path, id(grammar))
    with _trees_lock:
        last = _trees.get(key)
    old_tree = _edited(last[0], last[1], src) if last is not None else None
    tree = _parse(parser_for(grammar), src, budget_s, old_tree)
    if len(src) >= INCREMENTAL_MIN_BYTES:
        with _trees_lock:
            _trees[key] = (src, tree)
            _trees.move_to_end(key)
            while len(_trees) > RECENT_TREES:
                _trees.popitem(last=False)
    root = tree.root_node
    if len(src) == len(text):  # ASCII: byte offsets are character offsets, so slice the str itself

        def slice_(start: int, end: int) -> str:
            return text[start:end]
    else:

        def slice_(start: int, end: int) -> str:
            return src[start:end].decode("utf-8", "replace")

    runs = _query_runs(root)
    definitions, imports, definition_names = _structure(grammar, root, path, slice_, runs)
    identifiers = _identifiers(grammar, root, text if len(src) == len(text) else None, src, definition_names, runs)
    return FileSymbols(path, grammar.language_name, definitions, imports, identifiers, root.has_error)


def _parse(parser: ts.Parser, src: bytes, budget_s: float | None, old_tree: ts.Tree | None = None) -> ts.Tree:
    old = (old_tree,) if old_tree is not None else ()  # (the binding refuses None)
    if budget_s is None:
        return parser.parse(src, *old)
    deadline = time.monotonic() + budget_s

    def over(_offset: int, _has_error: bool) -> bool:
        return time.monotonic() > deadline

    try:
        tree = parser.parse(lambda byte, _point: src[byte:byte + _READ_CHUNK], *old, progress_callback=over)
    except ValueError:  # "Parsing failed": halted by the callback
        tree = None
    if tree is None:
        parser.reset()  # a halted parse would resume on the next call
        raise ParseTimeout(f"parsing took over {budget_s:g} s")
    return tree


# A query run: a node to run the query on, and the byte range it is limited to (None: all of the node).
_Run = tuple[ts.Node, "tuple[int, int] | None"]


def _query_runs(node: ts.Node) -> list[_Run]:
    """Where the queries run: the whole tree, unless it holds wide ERROR nodes. Then the tree is queried without
    them (byte ranges around them), and each of their children that is more than a token on its own."""
    if not node.has_error:
        return [(node, None)]
    wide = []
    stack = [node]
    while stack:  # only down the paths that hold an error
        current = stack.pop()
        if current.is_error and current.child_count > MAX_ERROR_CHILDREN:
            wide.append(current)
        else:
            stack.extend(child for child in current.children if child.has_error)
    if not wide:
        return [(node, None)]
    runs: list[_Run] = []
    start = node.start_byte
    for begin, end in sorted(w.byte_range for w in wide):
        if begin > start:
            runs.append((node, (start, begin)))
        start = max(start, end)
    if start < node.end_byte:
        runs.append((node, (start, node.end_byte)))
    for w in wide:
        for child in w.children:
            if child.child_count:
                runs += _query_runs(child)
    return runs


def _run(cursor: ts.QueryCursor, method: str, runs: list[_Run]):
    """matches() or captures() of each run (a match that two runs share comes twice)."""
    whole = len(runs) == 1 and runs[0][1] is None
    for node, byte_range in runs:
        if not whole:
            cursor.set_byte_range(*(byte_range or node.byte_range))
        yield getattr(cursor, method)(node)


def _structure(grammar: Grammar, root: ts.Node, path: str, slice_,
               runs: list[_Run]) -> tuple[list[Definition], list[Import], set[int]]:
    found: dict[tuple[int, int, int], tuple] = {}  # (start, end, name start) -> (kind, node, name, parent, body, doc)
    statements: dict[tuple[int, int], dict] = {}  # import node range -> its parts
    scopes: set[tuple[int, int]] = set()  # function bodies that are not definitions themselves
    patterns = grammar.patterns
    cursor = ts.QueryCursor(grammar.structure)
    cursor.set_max_start_depth(MAX_START_DEPTH)
    for index, captures in (match for matches in _run(cursor, "matches", runs) for match in matches):
        pattern = patterns[index]
        if pattern.kinds:
            for kind, definition, name in pattern.kinds:
                if definition in captures:
                    break
            node = captures[definition][0]
            name = captures[name][0]
            parent = captures.get("parent")
            key = (node.start_byte, node.end_byte, name.start_byte)
            rank = (parent is None, index)  # a match naming the enclosing class wins, then the earlier pattern
            if key in found and found[key][6] < rank:
                continue
            body = captures.get("body")
            doc = captures.get("doc")
            found[key] = (kind, node, name, parent and parent[0], body and body[0], doc and doc[0], rank)
        elif pattern.scope:
            scopes.add(captures["local.scope"][0].byte_range)
        else:
            _add_import_parts(statements, captures, pattern, slice_)

    # Definitions inside function bodies are locals: no other file can reach them.
    ordered = sorted(found.items(), key=lambda item: (item[0][0], -item[0][1], item[0][2]))
    if scopes:
        ordered += [((start, end, -1), ("", None, None, None, None, None, None)) for start, end in scopes]
        ordered.sort(key=lambda item: (item[0][0], -item[0][1], item[0][2]))
    open_functions: list[int] = []  # end bytes of the enclosing function definitions
    definitions = []
    for (start, end, name_start), (kind, node, name, parent, body, doc, _) in ordered:
        while open_functions and open_functions[-1] <= start:
            open_functions.pop()
        if node is None:  # a scope
            open_functions.append(end)
            continue
        if kind in _FUNCTION_KINDS:
            local = bool(open_functions)
            open_functions.append(end)
            if local:
                continue
        elif open_functions:
            continue
        definitions.append(_definition(kind, node, name, parent, body, doc, path, slice_))

    imports = [
        Import(s["module"], tuple(n for _, n in sorted(s["names"].items())), s["alias"], s["level"], s["line"])
        for _, s in sorted(statements.items())
    ]
    return definitions, imports, {name_start for _, _, name_start in found}


def _add_import_parts(statements: dict, captures: dict, pattern: _Pattern, slice_) -> None:
    node = captures["import"][0]
    statement = statements.get((node.start_byte, node.end_byte))
    if statement is None:
        statement = statements[(node.start_byte, node.end_byte)] = {
            "module": "", "names": {}, "alias": "", "level": 0, "line": node.start_point[0] + 1,
        }
    if (module := captures.get("import.module")) is not None:
        statement["module"] = slice_(module[0].start_byte, module[0].end_byte).strip("'\"`")
    if (level := captures.get("import.level")) is not None:
        statement["level"] = level[0].end_byte - level[0].start_byte
    if (alias := captures.get("import.alias")) is not None:
        statement["alias"] = slice_(alias[0].start_byte, alias[0].end_byte)
    local = captures.get("import.local")
    name = captures.get("import.name")
    if name is not None or local is not None:
        anchor = (name or local)[0].start_byte
        imported = slice_(name[0].start_byte, name[0].end_byte) if name else pattern.import_name
        local_name = slice_(local[0].start_byte, local[0].end_byte) if local else _PATH_SEPARATORS.split(imported)[-1]
        statement["names"][anchor] = (imported, local_name)
    if (wildcard := captures.get("import.wildcard")) is not None:
        statement["names"][wildcard[0].start_byte] = ("*", "*")


def _definition(kind, node, name, parent, body, doc, path, slice_) -> Definition:
    header = _header_start(node)
    if body is None:
        body = node.child_by_field_name("body")
    if body is not None:
        # The header ends at the last token before the body: trailing comments and half-typed code stay out of it.
        before = body.prev_sibling
        while before is not None and (before.is_error or "comment" in before.type):
            before = before.prev_sibling
        end = before.end_byte if before is not None and before.end_byte > header.start_byte else body.start_byte
        signature = slice_(header.start_byte, end).rstrip()
    else:
        signature = slice_(header.start_byte, node.end_byte)
        if kind not in _FUNCTION_KINDS:
            signature = signature.split("\n", 1)[0]
        signature = signature.rstrip().rstrip(";").rstrip()
    if doc is not None:
        docstring = _docstring(slice_(doc.start_byte, doc.end_byte))
    else:
        docstring = _comment_doc(node, slice_)
    end_row, end_column = node.end_point
    return Definition(
        name=slice_(name.start_byte, name.end_byte),
        kind=kind,
        path=path,
        start_line=header.start_point[0] + 1,
        end_line=end_row + (1 if end_column or end_row == header.start_point[0] else 0),
        signature=signature,
        doc=docstring,
        parent=slice_(parent.start_byte, parent.end_byte) if parent is not None else "",
    )


def _header_start(node: ts.Node) -> ts.Node:
    """The first node of a definition's header, past decorators and annotations (Java keeps them in `modifiers`)."""
    first = node.child(0)
    while first is not None and (first.type in _DECORATIONS or first.type == "modifiers"):
        if first.type == "modifiers":
            for child in first.children:
                if child.type not in _DECORATIONS:
                    return child
        first = first.next_sibling
    return first if first is not None else node


def _docstring(literal: str) -> str:
    body = literal.lstrip("rRbBuUfF")
    quote = body[:3] if body[:3] in ('"""', "'''") else body[:1]
    end = len(body) - len(quote) if body.endswith(quote) and len(body) >= 2 * len(quote) else len(body)
    body = body[len(quote):end].lstrip()
    blank = _BLANK_LINE.search(body)  # cut before cleandoc: docstrings can run to hundreds of lines
    return _first_paragraph(inspect.cleandoc(body[:blank.start()] if blank else body))


def _comment_doc(node: ts.Node, slice_) -> str:
    """The comment block right above a definition (or above its decorators or export wrapper)."""
    comments = []
    top = node.start_point[0]
    current = node
    while current is not None:
        previous = current.prev_named_sibling
        while previous is not None and previous.type in _DECORATIONS:
            top = previous.start_point[0]
            previous = previous.prev_named_sibling
        if previous is None:
            current = current.parent  # first in its parent: the parent may be a wrapper (export, decorated)
            if current is not None:
                top = min(top, current.start_point[0])
            continue
        while previous is not None and "comment" in previous.type:
            if _last_row(previous) != top - 1:
                break
            before = previous.prev_sibling
            if before is not None and _last_row(before) == previous.start_point[0]:
                break  # a trailing comment of the line above belongs to that line
            comments.append(slice_(previous.start_byte, previous.end_byte))
            top = previous.start_point[0]
            previous = previous.prev_named_sibling
        break
    if not comments:
        return ""
    lines = []
    for comment in reversed(comments):
        for line in comment.splitlines():
            lines.append(_COMMENT_END.sub("", _COMMENT_MARKERS.sub("", line, count=1)).rstrip())
    return _first_paragraph(inspect.cleandoc("\n".join(lines)))


def _last_row(node: ts.Node) -> int:
    """The last row a node covers (a line comment that owns its newline ends at column 0 of the next row)."""
    row, column = node.end_point
    return row - 1 if column == 0 and row > node.start_point[0] else row


def _first_paragraph(text: str) -> str:
    paragraph = []
    for line in text.strip().splitlines():
        if not line.strip() or (paragraph and line.lstrip().startswith("@")):
            break  # a blank line, or a block tag (@param, @return), ends it
        paragraph.append(line.rstrip())
    return "\n".join(paragraph)


def _identifiers(grammar: Grammar, root: ts.Node, ascii_text: str | None, src: bytes, skip: set[int],
                 runs: list[_Run]) -> list[str]:
    spans = []
    for captures in _run(ts.QueryCursor(grammar.references), "captures", runs):
        for nodes in captures.values():
            spans += [node.byte_range for node in nodes]
    spans = sorted(set(spans))  # the lists come per capture name; a node may be captured by two patterns
    if ascii_text is not None:
        return [ascii_text[start:end] for start, end in spans if start not in skip]
    # One decode for the lot: identifiers never hold a NUL.
    joined = b"\0".join([src[start:end] for start, end in spans if start not in skip])
    return joined.decode("utf-8", "replace").split("\0") if joined else []
