"""Which files of a repository may be indexed: a walk that yields source files and says why it passed the others.

The rules, in the order they are applied to every entry:
  * `config.skip_dirs` (other people's code, build output) and `config.secret_patterns` (files that may hold
    secrets: matched by name, never opened, not even for a peek at their first bytes);
  * only files whose language `parsing.language_for` knows (and `config.languages` allows) go further: other
    files are passed over silently, they are not "skipped", just not source;
  * `.gitignore` at any depth, `.repocompleteignore` (same syntax, read after `.gitignore` so it can re-include)
    and `.git/info/exclude`; a nested ignore file applies to its own subtree, deeper files win;
  * symlinks: one pointing outside the root, a loop or a dangling one is skipped; a directory symlink inside the
    root is walked after the real tree, and only if its target was not walked already (each physical directory,
    known by (st_dev, st_ino), is walked once, so a link to an ancestor cannot loop);
  * files over `config.max_file_bytes`, and (`sniff=True`) binaries: a NUL byte in the first 8 KB;
  * names whose bytes are not UTF-8 (files and folders): skipped with their reason, shown with the bytes escaped
    (a path with surrogate escapes can be neither stored nor sent);
  * the workspace's bounds: past `config.max_workspace_files` files or `config.max_workspace_bytes` bytes the walk
    stops, with one skip record that says so.
Files that vanish or cannot be read mid-walk are skipped with their reason; the walk goes on.

Content rules that need the whole file (not UTF-8, a minified line) are in `read_source`, which the index calls
when it reads a file anyway. Non-UTF-8 files are skipped rather than decoded with replacement characters: they
are rare in source trees, U+FFFD would leak into prompts and shift byte offsets, and a file that does not decode
is more often data than code.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pathspec import GitIgnoreSpec

from repocomplete.context_engine.config import ContextConfig

log = logging.getLogger(__name__)

IGNORE_FILES = (".gitignore", ".repocompleteignore")
SNIFF_BYTES = 8192
MAX_LINE_CHARS = 10_000  # longer lines mean minified or generated code: no use as context, slow to parse


@dataclass(frozen=True)
class WalkEntry:
    path: str  # repository-relative, POSIX separators
    abspath: str  # the path to open (under the root as the walk saw it, symlinks not resolved)
    language: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skipped:
    path: str  # repository-relative; a directory ends with "/"
    reason: str


class Unindexable(Exception):
    """A file that cannot or must not be indexed; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Spec:
    """A compiled ignore file. pathspec tries its patterns one by one; most paths match none of them, so one
    alternation of all the patterns answers those first, and only a path that some pattern matches pays for the
    exact gitignore verdict (last match wins, negations, directory patterns)."""

    def __init__(self, lines: list[str]):
        self.spec = GitIgnoreSpec.from_lines(lines)
        regexes = [p.regex.pattern for p in self.spec.patterns if p.include is not None]
        self.empty = not regexes
        # The named group marks directory matches; pathspec needs it, the prefilter does not (and names must be unique).
        self.any = re.compile("|".join(f"(?:{r.replace('(?P<ps_d>', '(?:')})" for r in regexes)) if regexes else None

    def check(self, path: str) -> bool | None:
        """True: ignored, False: re-included by a negation, None: no pattern matches."""
        if self.any is None or self.any.match(path) is None:
            return None
        return self.spec.check_file(path).include


@dataclass(frozen=True)
class _Level:
    base: str  # the directory the ignore file sits in, repository-relative ("" at the root)
    label: str  # "sub/.gitignore", for the skip reason
    spec: _Spec


def _secret_spec(patterns: tuple[str, ...]) -> _Spec:
    # gitignore anchors a pattern with an inner slash at the ignore file's folder; a secret is one wherever it is.
    lines = []
    for p in patterns:
        body = p.rstrip("/")
        if "/" in body and not p.startswith(("/", "**/")):
            p = "**/" + p
        lines.append(p)
    return _Spec(lines)


class Rules:
    """The policy of one repository: `reason_*` answer None for "index it", else why not.

    Compiled ignore files are cached per folder, keyed by the ignore files' (mtime_ns, size), so neither a walk
    over 100k files nor a stream of single-file updates compiles a pattern twice.
    """

    def __init__(self, root: Path, config: ContextConfig, language_for: Callable[[str], str | None] | None = None):
        if language_for is None:
            from repocomplete.context_engine.parsing import language_for
        self.root = os.path.realpath(root)
        self.config = config
        self.language_for = language_for
        self.languages = frozenset(config.languages)
        self.skip_dirs = frozenset(config.skip_dirs)
        self.secret = _secret_spec(tuple(config.secret_patterns))
        self._specs: dict[str, tuple[tuple, list[_Level]]] = {}
        self._by_suffix: dict[str, str | None] = {}

    # -- names --------------------------------------------------------------------------------------------------

    def language(self, rel: str) -> str | None:
        name = rel.rsplit("/", 1)[-1]
        suffix = os.path.splitext(name)[1].lower()
        # language_for goes by the extension: asked once per extension, not once per file
        if suffix and suffix in self._by_suffix:
            return self._by_suffix[suffix]
        language = self.language_for(name)
        language = language if language in self.languages else None
        if suffix:
            self._by_suffix[suffix] = language
        return language

    def is_secret(self, rel: str, is_dir: bool = False) -> bool:
        return bool(self.secret.check(rel + "/" if is_dir else rel))

    def is_ignore_file(self, rel: str) -> bool:
        return rel.rsplit("/", 1)[-1] in IGNORE_FILES

    def levels(self, dir_abs: str, dir_rel: str, names: set[str] | None = None) -> list[_Level]:
        """The ignore files in one folder, compiled (cached while they do not change)."""
        candidates = [(f, os.path.join(dir_abs, f)) for f in IGNORE_FILES]
        if dir_rel == "":
            candidates.insert(0, (".git/info/exclude", os.path.join(dir_abs, ".git", "info", "exclude")))
        stamps = []
        for label, path in candidates:
            if names is not None and label in IGNORE_FILES and label not in names:
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                stamps.append((label, path, st.st_mtime_ns, st.st_size))
        key = tuple(stamps)
        cached = self._specs.get(dir_rel)
        if cached is not None and cached[0] == key:
            return cached[1]
        levels = []
        for label, path, _, _ in stamps:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    lines = f.read().splitlines()
            except OSError as e:
                log.warning("cannot read %s: %s", path, e)
                continue
            spec = _Spec(lines)
            if not spec.empty:
                levels.append(_Level(dir_rel, f"{dir_rel}/{label}" if dir_rel else label, spec))
        self._specs[dir_rel] = (key, levels)
        return levels

    @staticmethod
    def ignored_by(chain: list[_Level], rel: str, is_dir: bool) -> str | None:
        """The ignore file that excludes `rel`, or None. The deepest file with a matching pattern decides."""
        verdict = None
        for level in chain:
            sub = rel[len(level.base) + 1 :] if level.base else rel
            include = level.spec.check(sub + "/" if is_dir else sub)
            if include is not None:
                verdict = level.label if include else None
        return verdict

    def reason_dir(self, chain: list[_Level], rel: str, name: str) -> str | None:
        if name in self.skip_dirs:
            return "skip_dirs"
        if self.is_secret(rel, is_dir=True):
            return "secret pattern"
        label = self.ignored_by(chain, rel, is_dir=True)
        return f"ignored by {label}" if label else None

    def inside_root(self, abspath: str) -> bool:
        real = os.path.realpath(abspath)
        return real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)

    # -- one path, as the index and the watcher ask ---------------------------------------------------------------

    def policy(self, rel: str) -> tuple[str | None, str | None]:
        """(language, None) when the walk would take the file at `rel` by its name and place alone (no stat);
        (None, reason) when a rule turns it down; (None, None) when it is not source.

        Every folder on the way is checked as the walk checks it: skip_dirs, secrets, ignore files.
        """
        parts = rel.split("/")
        if not rel or any(p in ("", ".", "..") for p in parts):
            return None, "not a path inside the repository"
        if not is_utf8(rel):
            return None, "file name not UTF-8"
        language = self.language(rel)
        if language is None:
            return None, None
        if self.is_secret(rel):
            return None, "secret pattern"
        chain: list[_Level] = list(self.levels(self.root, ""))
        dir_abs, dir_rel = self.root, ""
        for name in parts[:-1]:
            dir_rel = f"{dir_rel}/{name}" if dir_rel else name
            dir_abs = os.path.join(dir_abs, name)
            reason = self.reason_dir(chain, dir_rel, name)
            if reason:
                return None, reason
            chain.extend(self.levels(dir_abs, dir_rel))
        label = self.ignored_by(chain, rel, is_dir=False)
        if label:
            return None, f"ignored by {label}"
        return language, None

    def check(self, rel: str) -> tuple[WalkEntry | None, str | None]:
        """The walk's verdict on one file: (entry, None), (None, reason), or (None, None) for "not source"."""
        language, reason = self.policy(rel)
        if language is None:
            return None, reason
        abspath = os.path.join(self.root, *rel.split("/"))
        try:
            st = os.stat(abspath)
        except OSError as e:
            return None, _stat_reason(e)
        if not self.inside_root(abspath):
            return None, "symlink outside the root"
        return _regular_file(rel, abspath, language, st, self.config.max_file_bytes)

    # -- the walk -------------------------------------------------------------------------------------------------

    def walk(self, skipped: list[Skipped] | None = None, sniff: bool = True) -> Iterator[WalkEntry]:
        skip = skipped.append if skipped is not None else (lambda s: None)

        def skip_(rel: str, reason: str) -> None:
            log.debug("skipped %s: %s", rel, reason)
            skip(Skipped(rel, reason))

        root_st = os.stat(self.root)
        visited = {(root_st.st_dev, root_st.st_ino)}
        # (absolute path, relative path, ignore chain, (st_dev, st_ino) of the folders above: loop detection)
        stack = [(self.root, "", [], frozenset(visited))]
        linked: list[tuple[str, str, list[_Level], frozenset, os.stat_result]] = []  # directory symlinks, walked last
        max_bytes = self.config.max_file_bytes
        files_left, bytes_left = self.config.max_workspace_files, self.config.max_workspace_bytes
        while stack or linked:
            if stack:
                dir_abs, dir_rel, chain, ancestors = stack.pop()
            else:
                dir_abs, dir_rel, chain, ancestors, st = linked.pop(0)
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    skip_(dir_rel + "/", "symlink loop")
                    continue
                if key in visited:
                    skip_(dir_rel + "/", "symlink to a directory walked at its real path")
                    continue
                visited.add(key)
                ancestors = ancestors | {key}
            try:
                with os.scandir(dir_abs) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                skip_((dir_rel or ".") + "/", _dir_reason(e))
                continue
            names = {e.name for e in entries}
            if not dir_rel or names.intersection(IGNORE_FILES):  # (the root may also have .git/info/exclude)
                chain = chain + self.levels(dir_abs, dir_rel, names)
            subdirs = []
            for entry in entries:
                name = entry.name
                rel = f"{dir_rel}/{name}" if dir_rel else name
                if not is_utf8(name):
                    if entry.is_dir(follow_symlinks=False):
                        skip_(printable(rel) + "/", "file name not UTF-8")
                    elif self.language(name) is not None:
                        skip_(printable(rel), "file name not UTF-8")
                    continue
                try:
                    is_link = entry.is_symlink()
                    if is_link:
                        st = os.stat(entry.path)  # follows the link: ELOOP and ENOENT tell loops and dangling links
                        is_dir = stat.S_ISDIR(st.st_mode)
                    else:
                        st = None
                        is_dir = entry.is_dir(follow_symlinks=False)
                except OSError as e:
                    skip_(rel, "secret pattern" if self.is_secret(rel) else _stat_reason(e, link=True))
                    continue
                if is_dir:
                    reason = self.reason_dir(chain, rel, name)
                    if reason:
                        skip_(rel + "/", reason)
                    elif is_link:
                        if not self.inside_root(entry.path):
                            skip_(rel + "/", "symlink outside the root")
                        else:
                            linked.append((entry.path, rel, chain, ancestors, st))
                    else:
                        subdirs.append((entry, rel))
                    continue
                language = self.language(name)
                if language is None:
                    continue
                if self.is_secret(rel):
                    skip_(rel, "secret pattern")
                    continue
                label = self.ignored_by(chain, rel, is_dir=False)
                if label:
                    skip_(rel, f"ignored by {label}")
                    continue
                if is_link and not self.inside_root(entry.path):
                    skip_(rel, "symlink outside the root")
                    continue
                try:
                    st = st or entry.stat()
                except OSError as e:
                    skip_(rel, _stat_reason(e))
                    continue
                found, reason = _regular_file(rel, entry.path, language, st, max_bytes)
                if found is not None and sniff:
                    try:
                        reason = content_problem(_read(entry.path, SNIFF_BYTES))
                    except Unindexable as e:
                        reason = e.reason
                    if reason:
                        found = None
                if found is None:
                    skip_(rel, reason)
                    continue
                files_left -= 1
                bytes_left -= found.size
                if files_left < 0 or bytes_left < 0:
                    skip_(rel, f"workspace limit reached ({self.config.max_workspace_files} files or "
                               f"{self.config.max_workspace_bytes} bytes): the walk stops here")
                    log.warning("%s: workspace limit reached at %s; the rest is not indexed", self.root, rel)
                    return
                yield found
            # Pushed in reverse so that the walk goes through each folder in name order.
            for entry, rel in reversed(subdirs):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as e:
                    skip_(rel + "/", _dir_reason(e))
                    continue
                key = (st.st_dev, st.st_ino)
                if key in visited:  # a bind mount or hard-linked folder: walked once
                    skip_(rel + "/", "symlink loop" if key in ancestors else "directory walked already")
                    continue
                visited.add(key)
                stack.append((entry.path, rel, chain, ancestors | {key}))


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes: the name's bytes are not UTF-8
        return False
    return True


def printable(path: str) -> str:
    """A path whose name bytes are not UTF-8, with those bytes escaped (`caf\\xe9.py`): safe to store and show."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _stat_reason(e: OSError, link: bool = False) -> str:
    if e.errno == errno.ELOOP:
        return "symlink loop"
    if e.errno == errno.ENOENT:
        return "dangling symlink" if link else "vanished during the walk"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "unreadable (permission denied)"
    return f"unreadable ({e.strerror or type(e).__name__})"


def _dir_reason(e: OSError) -> str:
    reason = _stat_reason(e)
    return reason.replace("unreadable", "unreadable directory", 1) if reason.startswith("unreadable") else reason


def _regular_file(rel, abspath, language, st, max_bytes) -> tuple[WalkEntry | None, str | None]:
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file"  # a FIFO would block the reader forever
    if st.st_size > max_bytes:
        return None, f"too large ({st.st_size} bytes > {max_bytes})"
    return WalkEntry(rel, abspath, language, st.st_size, st.st_mtime_ns), None


def walk(
    root: Path,
    config: ContextConfig,
    skipped: list[Skipped] | None = None,
    *,
    sniff: bool = True,
    language_for: Callable[[str], str | None] | None = None,
) -> Iterator[WalkEntry]:
    """The indexable source files under `root`; what was passed over goes to `skipped`.

    Depth first, each folder's files (by name) before its subfolders (by name); linked folders come last.

    `sniff=False` leaves out the 8 KB binary check (the index reads changed files whole and checks them then,
    and must not open unchanged files at all).
    """
    return Rules(root, config, language_for).walk(skipped, sniff)


# -- reading one file ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    text: str
    sha1: str
    size: int


def content_problem(data: bytes) -> str | None:
    """Why bytes read from a source file are not indexable, or None."""
    if b"\0" in data[:SNIFF_BYTES]:
        return "binary (a NUL byte in the first 8 KB)"
    return None


def decode(data: bytes) -> str:
    """UTF-8 (a BOM is dropped); raises Unindexable for other encodings and for minified files."""
    problem = content_problem(data)
    if problem:
        raise Unindexable(problem)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Unindexable(f"not UTF-8 (byte {e.start})") from None
    if len(text) > MAX_LINE_CHARS:
        longest = max(map(len, text.split("\n")))
        if longest > MAX_LINE_CHARS:
            raise Unindexable(f"minified (a line of {longest} characters > {MAX_LINE_CHARS})")
    return text


def _read(abspath: str, limit: int) -> bytes:
    """At most `limit` bytes; a FIFO put in place of a checked file fails instead of blocking (O_NONBLOCK)."""
    try:
        fd = os.open(abspath, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise Unindexable(_stat_reason(e)) from None
    with open(fd, "rb", closefd=True) as f:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise Unindexable("not a regular file")
            return f.read(limit)
        except OSError as e:
            raise Unindexable(_stat_reason(e)) from None


def read_source(abspath: str, max_bytes: int) -> Source:
    """The text of one source file and the sha1 of its bytes; raises Unindexable with the reason."""
    data = _read(abspath, max_bytes + 1)
    if len(data) > max_bytes:
        raise Unindexable(f"too large (> {max_bytes} bytes)")
    return Source(decode(data), hashlib.sha1(data).hexdigest(), len(data))
