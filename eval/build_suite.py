"""`repocomplete eval build-suite REPO --out DIR`: a CrossCodeEval-style suite cut from any local repository.

A task is a line that uses another file of the repository: a name imported from it (CrossCodeEval's criterion) or
a member (`state.push(...)`) that only other files define. The context engine's index finds them: its imports, its
definitions (where each name is defined) and its identifiers (which names a file references). The cursor sits
after the line's indentation and the ground truth is the rest of the line.
Trivial lines are passed over: comments, docstrings and other lines that start inside a string, imports (and
re-exports), definition headers, decorators, lines outside 12-100 characters, and lines that are not whole
statements (an open bracket before or after them, a backslash continuation; outside Python also a line that ends
in an operator or starts with one, which carries on an expression or a type); tests are left out unless asked for.

At most one task per file, so the snapshot can hold every task file with its target line blanked (the file is
exactly the task's buffer, prompt + right context): nothing leaks, whatever the runner reads from disk.
The output:

    DIR/tasks.jsonl           CrossCodeEval format, task ids `<repo>/<file>:<line>`
    DIR/repos/<repo>/...      the files the index accepted (no binaries, secrets, ignored or vendored folders),
                              plus the licence files at the repository's root
    DIR/SOURCE.md             where the code came from: the package (Python distribution or npm package.json) and
                              version, or the git commit; and its licence

The choice is deterministic for a seed: candidates are listed in path and line order, shuffled with
`random.Random(seed)`, and taken in that order while their file has no task yet.
"""

from __future__ import annotations

import builtins
import functools
import posixpath
import random
import re
import shutil
import subprocess
import tempfile
from bisect import bisect_right
from collections import Counter
from itertools import accumulate
from pathlib import Path
from typing import NamedTuple

from repocomplete.context_engine.errors import InputError
from repocomplete.eval.suites import EvalTask, language_of, task_id_for, write_tasks

MIN_CHARS, MAX_CHARS = 12, 100
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CHAIN = re.compile(r"(\.\s*)?\b([A-Za-z_][A-Za-z0-9_]*)((?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)*)")
_LAST_SEGMENT = re.compile(r"::|[./]")
_TEST_PATH = re.compile(
    r"(^|/)(tests?|testing|__tests__|spec)/"
    r"|(^|/)(test_[^/]*|[^/]*_test\.\w+|[^/]*\.(test|spec)\.\w+|conftest\.py|[^/]*Tests?\.java)$"
)
# Lines that are no completion task: imports and definition headers (the index catches the rest of the headers).
_TRIVIAL = {
    "python": re.compile(r"(import|from)\s|(async\s+)?def\s|class\s|@"),
    None: re.compile(
        r"#|((pub(\([\w:]+\))?|export|default|public|private|protected|static|async|abstract|final|declare)\s+)*"
        r"(import|package|use|mod|func|fn|function|class|interface|struct|enum|trait|impl|type|extern)\b|@"
        # re-exports (`export { a };`), and the rest of an expression or type begun on the line before
        # (`? A : B`, `| Union`, `.then(...)`, `> extends Base<T>,`): braces and `<>` do not tell those apart
        r"|export\s*(\{|\*)|[?:|&.>,+=-]"
    ),
}
# Outside Python: a line that goes on in the next one (`type A = B &`, `x: Generic<{`, `const a =`, `cond ?`).
_GOES_ON = re.compile(r"(<\s*\{|[&|=?]\s*\{?)\s*$")
# Brackets that must balance for a line to be a whole statement; braces open blocks outside Python.
_BRACKETS = {"python": ("([{", ")]}"), None: ("([", ")]")}
_HEADER_KINDS = frozenset({"function", "method", "class", "interface", "struct", "enum", "trait", "type", "module"})
# Names too common to say a line depends on another file (`d.items()`, `s.join(...)`), however the repo uses them.
COMMON_NAMES = frozenset(dir(builtins)).union(*(dir(t) for t in (dict, list, str, set, tuple, bytes, int, float, object)))
LICENSE_FILE = re.compile(r"(LICEN[CS]E|COPYING|NOTICE)([.\-_].*)?$", re.IGNORECASE)


def is_test_path(path: str) -> bool:
    return _TEST_PATH.search(path) is not None


# -- finding the tasks -----------------------------------------------------------------------------------------


KINDS = ("line", "member", "kwargs")
_MEMBER_USE = re.compile(r"(?<![\w.])((?:[A-Za-z_]\w*|\)|\])(?:\s*\.\s*[A-Za-z_]\w*|\([^()]*\)|\[[^\[\]]*\])*)\.([A-Za-z_]\w*)")
_KWARG_CALL = re.compile(r"(?<![\w.])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\(")


def member_column(code: str, members: set[str]) -> int | None:
    """Where a `member` task's cursor goes: just after the dot of the line's first `expr.member` whose member the
    repository defines (a chain `a.b.c` counts by its last member; None: no such use)."""
    for m in _MEMBER_USE.finditer(code):
        if m.group(2) in members:
            return m.start(2)
    return None


def kwargs_column(code: str, functions: set[str]) -> int | None:
    """Where a `kwargs` task's cursor goes: at the first keyword argument of a call to a repository function
    (`f(a, |key=...)`); None: no such call."""
    for m in _KWARG_CALL.finditer(code):
        if m.group(1).split(".")[-1] not in functions:
            continue
        depth, i = 0, m.end()
        arg_start = i
        while i < len(code):
            c = code[i]
            if c in "([{":
                depth += 1
            elif c in ")]}":
                if depth == 0:
                    break
                depth -= 1
            elif c == "," and depth == 0:
                arg_start = i + 1
            elif c == "=" and depth == 0 and code[i + 1:i + 2] != "=" and code[i - 1:i] not in "=!<>":
                key = code[arg_start:i].strip()
                if _IDENT.fullmatch(key):
                    return arg_start + len(code[arg_start:i]) - len(code[arg_start:i].lstrip())
                break
            i += 1
    return None


def cut_tasks(index, repository: str, n: int, seed: int = 0, include_tests: bool = False,
              per_file: int | None = 1, kind: str = "line") -> list[EvalTask]:
    """Up to n line-completion tasks from an indexed repository (a context engine `RepoIndex`), in path order.

    per_file: the most tasks one file may give (None: no limit; a suite snapshot needs 1).
    kind: "line" (the cursor after the indentation of a line that uses another file), "member" (Python: the line
    holds `expr.member` where the repository defines the member; the cursor after that dot, on every other task
    after the indentation, so the model writes the receiver too), "kwargs" (Python: a call to a repository
    function with keyword arguments; the cursor at the first keyword)."""
    if kind not in KINDS:
        raise InputError(f"unknown suite kind {kind!r}; expected one of {', '.join(KINDS)}")
    defined_in: dict[str, set[str]] = {}
    headers: dict[str, set[int]] = {}
    for d in index.definitions():
        defined_in.setdefault(d.name, set()).add(d.path)
        if d.kind in _HEADER_KINDS:
            headers.setdefault(d.path, set()).add(d.start_line - 1)
    referenced = index.all_identifiers()
    # member/kwargs suites: members the repository defines (not short, dunder or very common ones), and its
    # functions and classes (what a call with keyword arguments may name)
    repo_names = {name for name in defined_in if len(name) > 3 and not name.startswith("__") and name not in COMMON_NAMES}
    functions = {d.name for d in index.definitions() if d.kind in ("function", "method", "class")}
    candidates: list[tuple[str, int]] = []
    for path in index.files():
        if not include_tests and is_test_path(path):
            continue
        text = index.text(path)
        if text is None:
            continue
        if kind != "line":
            if language_of(path) != "python":
                continue
            candidates += [(path, i) for i in _special_lines(path, text, kind, repo_names, functions,
                                                             headers.get(path, set()))]
            continue
        names = cross_file_names(index, path, defined_in, referenced.get(path, ()))
        if names.bare or names.members:
            candidates += [(path, i) for i in candidate_lines(path, text, names, headers.get(path, set()))]
    random.Random(seed).shuffle(candidates)
    chosen: list[tuple[str, int]] = []
    taken: Counter = Counter()
    for path, i in candidates:
        if len(chosen) >= n:
            break
        if per_file is None or taken[path] < per_file:
            taken[path] += 1
            chosen.append((path, i))
    tasks = []
    for j, (path, i) in enumerate(sorted(chosen)):
        text = index.text(path)
        column = None
        if kind != "line":
            code = mask_strings_and_comments(path, text).split("\n")[i]
            column = member_column(code, repo_names) if kind == "member" else kwargs_column(code, functions)
            if kind == "member" and j % 2 == 1:
                column = None  # after the indentation: the model writes the receiver, then the member
        tasks.append(make_task(repository, path, text, i, column))
    return tasks


def _special_lines(path: str, text: str, kind: str, repo_names: set[str], functions: set[str],
                   headers: set[int]) -> list[int]:
    """The candidate lines of a member or kwargs suite: the line suite's whole statements with such a use."""
    everything = CrossFileNames({"\0"}, set(), set())  # every statement passes `uses`: filtered below
    masked = mask_strings_and_comments(path, text).split("\n")
    out = []
    for i in candidate_lines(path, text, everything, headers, any_use=True):
        code = masked[i]
        column = member_column(code, repo_names) if kind == "member" else kwargs_column(code, functions)
        if column is not None:
            out.append(i)
    return out


class CrossFileNames(NamedTuple):
    """The names whose use in a file is a use of another file of the repository.

    bare: names imported from the repository (CrossCodeEval's criterion: the names left undefined once the file's
    imports of local modules are removed), and in Go and Java those another file of the same package defines.
    members: names after a dot that only other files define (`state.push`): methods, fields, functions; less short,
    dunder and very common ones (`d.items()`), which say little about where the object came from.
    external: names imported from outside the repository: their members (`re.escape`) are not the repository's."""

    bare: set[str]
    members: set[str]
    external: set[str]


def cross_file_names(index, path: str, defined_in: dict[str, set[str]], referenced) -> CrossFileNames:
    def elsewhere(name: str) -> bool:
        paths = defined_in.get(name)
        return bool(paths) and path not in paths

    language = language_of(path)
    symbols = index.symbols(path)
    bare: set[str] = set()
    external: set[str] = set()
    for imp in symbols.imports if symbols is not None else ():
        if language == "python":
            local = imp.level > 0 or index.resolve_python_module(imp.module, path, imp.level) is not None
        else:
            local = imp.module.startswith((".", "crate", "super", "self"))
        for imported, name in imp.names:
            if name != "*":
                # `import X from "pkg"` imports `default`, which says nothing of where it is defined
                source = _LAST_SEGMENT.split(imported)[-1]
                known = source not in ("default", "*") and elsewhere(source)
                (bare if local or known else external).add(name)
        if not imp.names:  # `import a.b` binds `a` in Python; elsewhere the last segment names the module
            module = _LAST_SEGMENT.split(imp.module)[0 if language == "python" else -1]
            (bare if local else external).add(imp.alias or module)
    if language in ("go", "java"):
        folder = posixpath.dirname(path)
        bare |= {name for name in referenced if elsewhere(name)
                 and any(posixpath.dirname(p) == folder for p in defined_in[name])}
    members = {name for name in referenced
               if elsewhere(name) and len(name) > 3 and not name.startswith("__") and name not in COMMON_NAMES}
    return CrossFileNames(bare, members, external - bare)


def candidate_lines(path: str, text: str, names: CrossFileNames, headers: set[int] = frozenset(),
                    any_use: bool = False) -> list[int]:
    """0-based lines of `text` that make a task: whole, non-trivial statements that use one of `names`."""
    language = language_of(path)
    trivial = _TRIVIAL.get(language, _TRIVIAL[None])
    opening, closing = _BRACKETS.get(language, _BRACKETS[None])
    lines = text.split("\n")
    masked = mask_strings_and_comments(path, text).split("\n")
    found = []
    depth = 0
    continued = False  # the line before ended with a backslash
    for i, (line, code) in enumerate(zip(lines, masked)):
        start_depth, low = depth, depth
        for c in code:
            if c in opening:
                depth += 1
            elif c in closing:
                depth -= 1
                low = min(low, depth)
        depth = max(depth, 0)  # a stray closer (or a parse the masking got wrong) must not poison the rest
        was_continued = continued
        continued = code.rstrip().endswith("\\") or (language != "python" and _GOES_ON.search(code) is not None)
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if (
            start_depth != 0 or low < 0 or depth != 0 or was_continued or continued
            or not MIN_CHARS <= len(stripped) <= MAX_CHARS
            or not code[indent:indent + 1].strip()  # starts inside a string or a comment: docstrings, comments
            or i in headers
            or trivial.match(stripped)
        ):
            continue
        if any_use or uses(code, names):
            found.append(i)
    return found


def uses(code: str, names: CrossFileNames) -> bool:
    """Does a line (strings and comments masked) use one of the names? Chains `a.b.c` are read from their root."""
    for chain in _CHAIN.finditer(code):
        dot, root, rest = chain.groups()
        members = _IDENT.findall(rest)
        if dot:  # `f().name`, `x[0].name`: the root is a member itself
            members.insert(0, root)
        elif root in names.bare:
            return True
        elif root in names.external:
            continue
        if any(name in names.members for name in members):
            return True
    return False


def make_task(repository: str, path: str, text: str, i: int, column: int | None = None) -> EvalTask:
    """The task of line i (0-based): the cursor after its indentation (or at `column`), the rest of the line to
    predict."""
    lines = text.split("\n")
    start = sum(len(line) + 1 for line in lines[:i])
    body = lines[i].rstrip("\r")
    indent = len(body) - len(body.lstrip()) if column is None else column
    return EvalTask(
        task_id=task_id_for(repository, path, i),
        repository=repository,
        file=path,
        prompt=text[: start + indent],
        groundtruth=body[indent:],
        right_context=text[start + len(body):],
        lineno=i,
        language=language_of(path),
    )


def mask_strings_and_comments(path: str, text: str) -> str:
    """`text` with every string literal and comment blanked (newlines kept), by the file's tree-sitter grammar."""
    from repocomplete.context_engine.parsing import EXTENSIONS, load_grammar, parser_for
    import tree_sitter as ts

    entry = EXTENSIONS.get(Path(path).suffix.lower())
    if entry is None:
        return text
    grammar = load_grammar(entry[1], entry[0])
    src = text.encode("utf-8", "replace")
    root = parser_for(grammar).parse(src).root_node
    captures = ts.QueryCursor(_literal_query(entry[1], entry[0])).captures(root)
    spans = sorted(node.byte_range for nodes in captures.values() for node in nodes)
    if len(src) != len(text):  # not ASCII: byte offsets -> character offsets
        ends = list(accumulate(len(c.encode("utf-8", "replace")) for c in text))
        spans = [(bisect_right(ends, s), bisect_right(ends, e - 1) + 1) for s, e in spans]
    out, last = [], 0
    for start, end in spans:
        start = max(start, last)
        if end <= start:
            continue
        out += [text[last:start], re.sub(r"[^\n]", " ", text[start:end])]
        last = end
    out.append(text[last:])
    return "".join(out)


@functools.lru_cache(maxsize=None)
def _literal_query(grammar_name: str, language_name: str):
    """One query capturing the grammar's strings, characters, regexes and comments (found by node kind name)."""
    from repocomplete.context_engine.parsing import load_grammar
    import tree_sitter as ts

    language = load_grammar(grammar_name, language_name).language
    kinds = sorted({
        language.node_kind_for_id(i) for i in range(language.node_kind_count)
        if language.node_kind_is_named(i) and language.node_kind_is_visible(i)
    })
    literal = [k for k in kinds if k == "regex" or k.endswith(
        ("comment", "string", "string_literal", "char_literal", "character_literal", "rune_literal"))]
    return ts.Query(language, ("[" + " ".join(f"({k})" for k in literal) + "] @literal").encode())


# -- where the code came from ----------------------------------------------------------------------------------


def describe_source(root: Path) -> dict:
    """The installed distribution the folder is a copy of, else the npm package its package.json names, else its git
    commit, else just its name."""
    info = _installed_distribution(root)
    if info is None:
        info = _npm_package(root)
    if info is None:
        info = _git(root)
    if info is None:
        info = {"kind": "folder", "package": root.name, "version": "unknown", "license": "unknown", "license_files": []}
    info["license_files"] = info.get("license_files", [])
    return info


def _installed_distribution(root: Path) -> dict | None:
    import importlib.metadata as md

    tops = _packages_distributions()
    folders = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for folder in folders:
        for name in tops.get(folder.name, []):
            try:
                dist = md.distribution(name)
            except md.PackageNotFoundError:
                continue
            installed = Path(dist.locate_file(folder.name))
            if installed.is_dir() and _same_python_files(folder, installed):
                meta = dist.metadata
                license_ = meta.get("License-Expression") or ""
                if not license_:
                    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or []
                                   if c.startswith("License ::")]
                    short = (meta.get("License") or "").strip()
                    license_ = ", ".join(classifiers) or (short if short and "\n" not in short else "unknown")
                files = [Path(dist.locate_file(f)) for f in dist.files or []
                         if ".dist-info/" in f.as_posix() and LICENSE_FILE.match(f.name)]
                return {"kind": "distribution", "package": meta["Name"], "version": dist.version, "license": license_,
                        "license_files": [f for f in files if f.is_file()]}
    return None


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    import importlib.metadata as md

    return md.packages_distributions()  # reads every installed distribution's RECORD: once a process


def _same_python_files(a: Path, b: Path) -> bool:
    def files(root: Path) -> dict[str, Path]:
        return {p.relative_to(root).as_posix(): p for p in root.rglob("*.py") if "__pycache__" not in p.parts}

    fa, fb = files(a), files(b)
    return bool(fa) and fa.keys() == fb.keys() and all(fa[k].read_bytes() == fb[k].read_bytes() for k in fa)


def _npm_package(root: Path) -> dict | None:
    """The npm package whose package.json sits at the folder's root: its name, version and licence."""
    import json

    try:
        meta = json.loads((root / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return None
    license_ = meta.get("license")
    if isinstance(license_, dict):  # the old {"type": "MIT", "url": ...} form
        license_ = license_.get("type")
    return {"kind": "npm", "package": meta["name"], "version": str(meta.get("version") or "unknown"),
            "license": license_ if isinstance(license_, str) and license_ else "unknown", "license_files": []}


def _git(root: Path) -> dict | None:
    def git(*args: str) -> str:
        try:
            proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    remote = git("remote", "get-url", "origin")
    return {"kind": "git", "package": remote or root.name, "version": commit, "license": "see the licence files",
            "license_files": []}


# -- the suite -------------------------------------------------------------------------------------------------


def build_suite(repo: str | Path, out: str | Path, n: int = 40, seed: int = 0, include_tests: bool = False,
                progress: bool = False, kind: str = "line") -> dict:
    """Cut the tasks, write DIR/tasks.jsonl, DIR/repos/<repo>/ and DIR/SOURCE.md; return a summary."""
    from repocomplete.context_engine.config import ContextConfig
    from repocomplete.context_engine.index import RepoIndex

    root, out = Path(repo).resolve(), Path(out).resolve()
    if not root.is_dir():
        raise InputError(f"not a directory: {repo}")
    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    if out == root or root in out.parents:
        raise InputError(f"--out {out} is inside the repository {root}: choose a folder outside it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out} exists and is not an empty folder")
    repository = root.name
    with tempfile.TemporaryDirectory(prefix="repocomplete-suite-") as tmp:  # a throwaway index, not the user's cache
        index = RepoIndex(root, ContextConfig(index_dir=Path(tmp)))
        try:
            stats = index.build(progress=progress)
            tasks = cut_tasks(index, repository, n, seed, include_tests, kind=kind)
            if not tasks:
                raise InputError(f"no task in {root}: no line of its {stats.files} indexed files uses a name defined "
                                 f"in another of them" + ("" if include_tests else " (tests excluded)"))
            snapshot = out / "repos" / repository
            buffers = {t.file: t.buffer()[0] for t in tasks}
            files = 0
            for path in index.files():
                text = buffers.get(path, index.text(path))
                if text is None:
                    continue
                target = snapshot / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8", newline="")
                files += 1
        finally:
            index.close()
    source = describe_source(root)
    licenses = [p for p in sorted(root.iterdir()) if p.is_file() and LICENSE_FILE.match(p.name)]
    copied = [p.name for p in licenses or source["license_files"]]
    for p in licenses or source["license_files"]:
        shutil.copyfile(p, snapshot / p.name)
    write_tasks(tasks, out / "tasks.jsonl")
    summary = {"out": str(out), "repository": repository, "tasks": len(tasks), "files": files, "seed": seed,
               "include_tests": include_tests, "kind": kind, "source": {k: v for k, v in source.items() if k != "license_files"},
               "license_files": copied}
    (out / "SOURCE.md").write_text(source_markdown(summary, n), encoding="utf-8")
    return summary


def source_markdown(summary: dict, n: int) -> str:
    s = summary["source"]
    origin = {
        "distribution": f"the installed Python distribution `{s['package']}` {s['version']} (its files, unchanged)",
        "npm": f"the npm package `{s['package']}` {s['version']} (the files kept are unchanged)",
        "git": f"the git repository `{s['package']}` at commit `{s['version']}`",
        "folder": f"the local folder `{s['package']}` (no git metadata, no matching installed distribution)",
    }[s["kind"]]
    licence = f"{s['license']}" + (f"; licence files copied into `repos/{summary['repository']}/`: "
                                   + ", ".join(f"`{f}`" for f in summary["license_files"])
                                   if summary["license_files"] else "; no licence file found: check before sharing")
    tests = " --include-tests" if summary["include_tests"] else ""
    kind = summary.get("kind", "line")
    what = {
        "line": "each using a name defined in another file of the repository",
        "member": "each holding `expr.member` with a member the repository defines (the cursor just after that dot,"
                  " on every other task after the line's indentation)",
        "kwargs": "each calling a repository function with keyword arguments (the cursor at the first keyword)",
    }[kind]
    tests += f" --kind {kind}" if kind != "line" else ""
    return "\n".join([
        f"# Suite `{summary['repository']}`",
        "",
        f"- Source: {origin}.",
        f"- Licence: {licence}.",
        f"- Built with `repocomplete eval build-suite {summary['repository']} --n {n} --seed {summary['seed']}{tests}`:"
        f" {summary['tasks']} line-completion tasks, at most one per file, {what}.",
        f"- `repos/{summary['repository']}/` holds the {summary['files']} files the context engine indexed; in each"
        f" task's file the target line is blank after {'its indentation' if kind == 'line' else 'the cursor'} (the"
        " file is the task's prompt + right context).",
        "",
    ])
