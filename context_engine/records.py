"""The units the context engine passes around.

Parsing produces `Definition`s and `Import`s per file (`FileSymbols`); every provider returns
`ContextRecord`s, so that the packer, the `context` command and the editor's show-context view speak one
language and every piece of a prompt keeps its provenance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Definition:
    name: str
    kind: str  # function | method | class | interface | struct | enum | trait | type | variable | constant | module
    path: str  # repository-relative, POSIX separators
    start_line: int  # 1-based, inclusive
    end_line: int
    signature: str  # the header as written: "def f(x: int) -> str:", "class A(B):", "func (s *S) Run() error"
    doc: str = ""  # the first paragraph of its docstring or doc comment
    parent: str = ""  # the enclosing class/struct/impl for members, "" at top level


@dataclass(frozen=True)
class Import:
    module: str  # as written: "pkg.mod", "./util", "fmt", "java.util.List", "crate::a::b"
    names: tuple[tuple[str, str], ...] = ()  # (imported name, local name); () for `import module`; (("*", "*"),)
    alias: str = ""  # `import numpy as np` -> "np"
    level: int = 0  # Python relative-import dots
    line: int = 0  # 1-based


@dataclass
class FileSymbols:
    path: str
    language: str
    definitions: list[Definition] = field(default_factory=list)
    imports: list[Import] = field(default_factory=list)
    identifiers: list[str] = field(default_factory=list)  # names referenced (not defined) in the file
    has_errors: bool = False  # tree-sitter recovered from syntax errors (normal while typing)


KINDS = ("imports", "typed_holes", "retrieval", "repo_map", "outline", "neighbours")


@dataclass(frozen=True)
class ContextRecord:
    """One piece of context and why it is there."""

    text: str
    path: str
    start_line: int
    end_line: int
    score: float
    kind: str  # one of KINDS
    why: str  # a short human reason: "imported as `Item` from inventory.models", "BM25 0.82 for the lines above"
    # A shorter text for the same span (a class summary's header and member names), shown when the whole record
    # does not fit what is left of the budget; "" when there is none.
    short: str = ""

    def to_json(self) -> dict:
        out = asdict(self)
        del out["short"]  # (the record as packed: its text is what the prompt shows)
        return out
