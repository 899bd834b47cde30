"""The repository index: every source file's definitions, imports and referenced names, in SQLite, kept current.

One database per workspace, `config.index_dir / <sha1 of the resolved root>.sqlite`, in WAL mode so that readers
never wait for a writer. The cache is keyed by (path, size, mtime_ns) and versioned (aider's rule): a restart
stats every file and reads only those whose stat changed, and of those re-parses only those whose sha1 changed;
a different FORMAT_VERSION, or a different parser (its source files are hashed), starts from an empty database.

Everything about one file (its `files` row, definitions, imports, identifiers) is written in one transaction,
many files per transaction during a build, so an interrupted build leaves whole files or none; the next build
picks up where it stopped. Files the walk or the reader turned down are remembered with their reason and stat
(`skipped` table), so a restart does not re-read them either.

What may be indexed is the workspace's `gate.Gate` (the walk's rules, one identity per path); every text is
scrubbed of credentials (`scrub.py`) before it is parsed, stored or served. The database, its -wal/-shm files and
their folder are private to the user (0600 / 0700): they hold signatures and docstrings.

Unsaved editor buffers live in memory only: `set_buffer` parses the text and serves it in place of the file on
disk until `clear_buffer`. `start_watching` follows the disk (watch.py: file events, debounced, to `update_file` /
`remove_file` on a background thread); one lock serialises the writers, another the connection.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from repocomplete.context_engine.config import ContextConfig, default_cache_root
from repocomplete.context_engine.errors import ParseTimeout
from repocomplete.context_engine.gate import Gate, private_dir, private_file
from repocomplete.context_engine.records import Definition, FileSymbols, Import
from repocomplete.context_engine.walker import Skipped, Unindexable, WalkEntry, is_utf8, read_source
from repocomplete.context_engine.watch import Watcher

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
BATCH_FILES = 256  # files per transaction during a build
BATCH_BYTES = 8_000_000
FILE_DEFINITIONS = 1024  # files whose looked-up definitions `definitions_for` keeps (the repo map asks again)

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha1 TEXT NOT NULL,
                    language TEXT NOT NULL, has_errors INTEGER NOT NULL);
CREATE TABLE definitions (path TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, start_line INTEGER NOT NULL,
                          end_line INTEGER NOT NULL, signature TEXT NOT NULL, doc TEXT NOT NULL, parent TEXT NOT NULL);
CREATE TABLE imports (path TEXT NOT NULL, module TEXT NOT NULL, names TEXT NOT NULL, alias TEXT NOT NULL,
                      level INTEGER NOT NULL, line INTEGER NOT NULL);
CREATE TABLE identifiers (path TEXT NOT NULL, name TEXT NOT NULL, count INTEGER NOT NULL);
CREATE TABLE skipped (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE INDEX definitions_name ON definitions(name);
CREATE INDEX definitions_path ON definitions(path);
CREATE INDEX imports_path ON imports(path);
CREATE INDEX identifiers_path ON identifiers(path);
"""


@dataclass
class IndexStats:
    files: int = 0  # indexed files after the build
    bytes: int = 0  # their total size
    definitions: int = 0
    parsed: int = 0  # files read and parsed by this build
    skipped: list[Skipped] = field(default_factory=list)  # with reasons (remembered ones included)
    seconds: float = 0.0
    restamped: int = 0  # files whose stat changed but whose content did not: only the stat was written
    removed: int = 0  # files gone from disk (or now ignored) and taken out of the index
    changed: list[str] = field(default_factory=list)  # paths parsed or removed
    cancelled: bool = False  # the build stopped early (asked to): the files done so far are in, the rest are not


@dataclass
class _Pending:
    """One file's outcome, waiting for its batch's transaction."""

    path: str
    known: bool  # had rows before (so they must be deleted first)
    entry: WalkEntry | None = None
    sha1: str = ""
    symbols: FileSymbols | None = None  # None with a reason: skipped; None without: restamp only
    reason: str = ""


def db_path_for(root: Path, config: ContextConfig) -> Path:
    digest = hashlib.sha1(str(Path(root).resolve()).encode("utf-8")).hexdigest()[:20]
    return Path(config.index_dir) / f"{digest}.sqlite"


def _parser_identity(parse) -> str:
    """What the cached symbols were computed with: the real parser by the hash of its code and queries."""
    from repocomplete.context_engine import parsing

    if parse is not parsing.parse_source:
        return f"{getattr(parse, '__module__', '?')}.{getattr(parse, '__qualname__', type(parse).__name__)}"
    h = hashlib.sha1()
    sources = [Path(parsing.__file__)] + sorted(Path(parsing.QUERY_DIR).glob("*.scm"))
    for p in sources:
        try:
            h.update(p.name.encode() + b"\0" + p.read_bytes())
        except OSError:
            pass
    return "parsing:" + h.hexdigest()[:16]


class RepoIndex:
    def __init__(self, root: Path, config: ContextConfig | None = None, parse: Callable | None = None,
                 gate: Gate | None = None):
        if parse is None:
            from repocomplete.context_engine.parsing import parse_source as parse
        self.root = Path(root).resolve()
        self.config = config or ContextConfig()
        self.parse = parse
        self.gate = gate or Gate(root, self.config)
        self.rules = self.gate.rules
        self.db_path = db_path_for(self.root, self.config)
        self._db_lock = threading.RLock()  # the one connection
        self._write_lock = threading.RLock()  # builds and single-file updates, one at a time
        self._buffers: dict[str, tuple[str, FileSymbols | None]] = {}
        self._identifiers: dict[str, Counter] | None = None  # all_identifiers(), loaded once, kept current
        self._recent: tuple[str, str, str] | None = None  # (path, sha1, scrubbed text) of the file parsed last
        self._recent_symbols: tuple[str, str, FileSymbols] | None = None  # (path, sha1, its symbols) likewise
        # The definitions the repo map looked up lately, per file and name (rowid order): dropped with the file's rows.
        self._file_definitions: OrderedDict[str, dict[str, list[Definition]]] = OrderedDict()
        self._data_version = None  # the database's PRAGMA data_version when they were read (other writers change it)
        self.generation = 0  # bumped on every change to what the queries return
        self._watcher: Watcher | None = None
        self._conn = self._open()

    # -- the database ---------------------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        cache_root = default_cache_root()
        if cache_root in self.db_path.parents:  # our own cache folder: private as a whole (models, plans, jedi)
            private_dir(cache_root)
        private_dir(self.db_path.parent)
        expected = {"format_version": str(FORMAT_VERSION), "parser": _parser_identity(self.parse)}
        for _ in range(2):
            conn = None
            try:
                conn = self._connect()
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "meta" in tables:
                    meta = dict(conn.execute("SELECT key, value FROM meta"))
                    if all(meta.get(k) == v for k, v in expected.items()):
                        self.instance = meta.get("instance") or self._new_instance(conn)
                        return conn
                    log.info("index %s: format or parser changed (%s), rebuilding", self.db_path, meta)
                elif not tables:
                    self._create(conn, expected)
                    self.instance = self._new_instance(conn)
                    return conn
            except sqlite3.DatabaseError as e:  # not a database, or a damaged one: it is a cache, start over
                log.warning("index %s unreadable (%s), rebuilding", self.db_path, e)
            if conn is not None:
                conn.close()
            self._delete_db()
        raise RuntimeError(f"cannot create the index at {self.db_path}")

    def _connect(self) -> sqlite3.Connection:
        # One connection shared by the caller's and the watcher's threads, always used under _db_lock.
        private_file(self.db_path)  # created 0600 before SQLite opens it; -wal and -shm take its mode
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode = WAL")
        for suffix in ("-wal", "-shm"):  # (made by an older version, perhaps with a wider mode)
            if os.path.exists(str(self.db_path) + suffix):
                private_file(str(self.db_path) + suffix)
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable up to the last checkpoint, never corrupt
        conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    def _create(self, conn: sqlite3.Connection, meta: dict[str, str]) -> None:
        conn.execute("BEGIN IMMEDIATE")  # (executescript would commit on its own: the statements run one by one)
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [*meta.items(), ("root", str(self.root))])
        conn.execute("COMMIT")

    @staticmethod
    def _new_instance(conn: sqlite3.Connection) -> str:
        """A name for this database, made with it: what is derived from it elsewhere (the engine's snapshot) says
        which database it came from, so a database made again (new format or parser, damage) disowns it."""
        instance = uuid.uuid4().hex
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('instance', ?)", (instance,))
        return instance

    def _delete_db(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(str(self.db_path) + suffix)
            except FileNotFoundError:
                pass

    def _query(self, sql: str, args: Iterable = ()) -> list[tuple]:
        with self._db_lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    def _write(self, batch: list[_Pending]) -> None:
        """One transaction for the whole batch: each file's rows go in (or out) together."""
        if not batch:
            return
        files, skipped, defs, imps, idents, gone, restamp = [], [], [], [], [], [], []
        for p in batch:
            e = p.entry
            if p.symbols is not None:
                s = p.symbols
                files.append((p.path, e.size, e.mtime_ns, p.sha1, s.language or e.language, int(bool(s.has_errors))))
                defs.extend((p.path, d.name, d.kind, d.start_line, d.end_line, d.signature, d.doc, d.parent)
                            for d in s.definitions)
                imps.extend((p.path, i.module, json.dumps([list(n) for n in i.names]), i.alias, i.level, i.line)
                            for i in s.imports)
                idents.extend((p.path, name, n) for name, n in Counter(s.identifiers).items())
            elif p.reason:
                skipped.append((p.path, e.size if e else -1, e.mtime_ns if e else -1, p.reason))
            elif e is not None:
                restamp.append((e.size, e.mtime_ns, p.path))
            if p.known and (p.symbols is not None or p.reason or e is None):
                gone.append((p.path,))
        with self._db_lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                if gone:
                    for table in ("files", "definitions", "imports", "identifiers", "skipped"):
                        c.executemany(f"DELETE FROM {table} WHERE path = ?", gone)
                c.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", files)
                c.executemany("INSERT INTO definitions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", defs)
                c.executemany("INSERT INTO imports VALUES (?, ?, ?, ?, ?, ?)", imps)
                c.executemany("INSERT INTO identifiers VALUES (?, ?, ?)", idents)
                c.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?, ?)", skipped)
                c.executemany("UPDATE files SET size = ?, mtime_ns = ? WHERE path = ?", restamp)
                if files:  # a file that was skipped before and is indexable now
                    c.executemany("DELETE FROM skipped WHERE path = ?", [(f[0],) for f in files])
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            for p in batch:
                self._file_definitions.pop(p.path, None)
            if self._identifiers is not None:
                for p in batch:
                    if p.symbols is not None:
                        self._identifiers[p.path] = Counter(p.symbols.identifiers)
                    elif p.reason or p.entry is None:
                        self._identifiers.pop(p.path, None)
            if files or gone:
                self.generation += 1

    # -- building -------------------------------------------------------------------------------------------------

    def build(self, progress: bool = False, on_progress: Callable[[int, int], None] | None = None,
              cancelled: Callable[[], bool] | None = None) -> IndexStats:
        """Bring the index in line with the disk: unchanged files are not opened, changed ones re-parsed.

        on_progress(done, total) is called after each file walked (an editor shows it as indexing progress).
        cancelled() is asked before each file: True stops the build there, with the files done so far written
        (whole) and `stats.cancelled` set; the next build goes on from them."""
        from tqdm import tqdm

        t0 = time.perf_counter()
        stats = IndexStats()
        with self._write_lock:
            known = {path: (size, mtime, sha1) for path, size, mtime, sha1 in
                     self._query("SELECT path, size, mtime_ns, sha1 FROM files")}
            remembered = {path: (size, mtime, reason) for path, size, mtime, reason in
                          self._query("SELECT path, size, mtime_ns, reason FROM skipped")}
            entries = list(self.rules.walk(stats.skipped, sniff=False))
            seen = set()
            batch: list[_Pending] = []
            batch_bytes = 0
            bar = tqdm(total=len(entries), unit="file", desc="indexing", disable=not progress)
            try:
                for done, entry in enumerate(entries, 1):
                    if cancelled is not None and cancelled():
                        stats.cancelled = True
                        break
                    bar.update(1)
                    if on_progress is not None:
                        on_progress(done, len(entries))
                    seen.add(entry.path)
                    old = known.get(entry.path)
                    if old is not None and old[:2] == (entry.size, entry.mtime_ns):
                        continue
                    skip = remembered.get(entry.path)
                    if skip is not None and skip[:2] == (entry.size, entry.mtime_ns):
                        stats.skipped.append(Skipped(entry.path, skip[2]))
                        continue
                    try:
                        pending = self._prepare(entry, old[2] if old else None, old is not None or skip is not None)
                    except BaseException:
                        self._write(batch)  # keep the files finished so far: the next build starts after them
                        raise
                    if pending.reason:
                        stats.skipped.append(Skipped(entry.path, pending.reason))
                    elif pending.symbols is not None:
                        stats.parsed += 1
                        stats.changed.append(entry.path)
                    else:
                        stats.restamped += 1
                    batch.append(pending)
                    batch_bytes += entry.size
                    if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
                        self._write(batch)
                        batch, batch_bytes = [], 0
                self._write(batch)
            finally:
                bar.close()
            if stats.cancelled:  # files not seen yet are not gone: leave them to the next build
                known = remembered = {}
            gone = [p for p in known if p not in seen] + [p for p in remembered if p not in seen and p not in known]
            for i in range(0, len(gone), 10_000):
                self._write([_Pending(p, known=True) for p in gone[i : i + 10_000]])
            stats.removed = sum(1 for p in gone if p in known)
            stats.changed.extend(p for p in gone if p in known)
        row = self._query("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files")[0]
        stats.files, stats.bytes = row
        stats.definitions = self._query("SELECT COUNT(*) FROM definitions")[0][0]
        stats.seconds = time.perf_counter() - t0
        return stats

    def _prepare(self, entry: WalkEntry, old_sha1: str | None, known: bool) -> _Pending:
        """Read one changed file: its new symbols, or only a new stat (same sha1), or why it is skipped."""
        try:
            source = read_source(entry.abspath, self.config.max_file_bytes)
        except Unindexable as e:
            log.debug("skipped %s: %s", entry.path, e.reason)
            return _Pending(entry.path, known, entry, reason=e.reason)
        if source.sha1 == old_sha1:
            return _Pending(entry.path, known, entry, sha1=source.sha1)
        try:
            text = self.gate.scrub(source.text, entry.path)
            self._recent = (entry.path, source.sha1, text)  # what `source` is asked next, after an update
            symbols = self.parse(entry.path, text)
        except ParseTimeout as e:  # pathological input: the file is skipped, remembered with its stat
            log.info("skipped %s: %s", entry.path, e)
            return _Pending(entry.path, known, entry, reason=str(e))
        except Exception as e:  # a parser bug on one file costs that file, not the build
            log.warning("parsing %s failed: %s: %s", entry.path, type(e).__name__, e)
            return _Pending(entry.path, known, entry, reason=f"parser error ({type(e).__name__}: {e})"[:300])
        if symbols is None:
            return _Pending(entry.path, known, entry, reason="no parser for this language")
        self._recent_symbols = (entry.path, source.sha1, symbols)  # what `references` is asked next
        return _Pending(entry.path, known, entry, sha1=source.sha1, symbols=symbols)

    # -- one file ---------------------------------------------------------------------------------------------

    def relative(self, path: str | os.PathLike) -> str | None:
        """A repository-relative POSIX path for an absolute or relative one (the gate's one identity per file); None
        when outside the root, or named in bytes that are not UTF-8 (such a name is never stored)."""
        rel = self.gate.rel(path)
        if rel is None or not is_utf8(rel):
            return None
        return rel

    def update_file(self, path: str | os.PathLike) -> bool:
        """Re-index one file (created, changed, or now ignored/gone); True when it is indexed afterwards."""
        rel = self.relative(path)
        if rel is None:
            return False
        with self._write_lock:
            entry, reason = self.gate.check(rel)
            row = self._query("SELECT size, mtime_ns, sha1 FROM files WHERE path = ?", (rel,))
            was_skipped = bool(self._query("SELECT 1 FROM skipped WHERE path = ?", (rel,)))
            known = bool(row) or was_skipped
            if entry is None:
                log.debug("not indexed %s: %s", rel, reason or "not source")
                if known:
                    self._write([_Pending(rel, True)])
                return False
            if row and tuple(row[0][:2]) == (entry.size, entry.mtime_ns):
                return True
            pending = self._prepare(entry, row[0][2] if row else None, known)
            self._write([pending])
            return pending.reason == ""

    def remove_file(self, path: str | os.PathLike) -> None:
        rel = self.relative(path)
        if rel is None:
            return
        with self._write_lock:
            self._write([_Pending(rel, known=True)])

    # -- editor buffers ---------------------------------------------------------------------------------------

    def set_buffer(self, path: str | os.PathLike, text: str) -> bool:
        """Serve `text` for `path` instead of the disk (memory only). False (and nothing kept) for a path the
        index would not take: a secret, an ignored file, a language without a parser, a symlink out of the root.
        The text is kept scrubbed of credentials."""
        rel = self.relative(path)
        if rel is None:
            return False
        if self.gate.reason_rel(rel) is not None:
            self.clear_buffer(rel)
            return False
        text = self.gate.scrub(text, rel)
        try:
            symbols = self.parse(rel, text)
        except Exception as e:  # pathological or unparsable text: served as text, without symbols
            log.info("buffer %s not parsed: %s: %s", rel, type(e).__name__, e)
            symbols = None
        with self._db_lock:
            self._buffers[rel] = (text, symbols)
            self.generation += 1
        return True

    def buffer_text(self, path: str | os.PathLike) -> str | None:
        """The open buffer's text as kept (scrubbed), None when the index refused it or holds none."""
        buffered = self._buffers.get(self.relative(path))
        return buffered[0] if buffered is not None else None

    def clear_buffer(self, path: str | os.PathLike) -> None:
        rel = self.relative(path)
        with self._db_lock:
            if self._buffers.pop(rel, None) is not None:
                self.generation += 1

    # -- queries ----------------------------------------------------------------------------------------------

    def files(self) -> list[str]:
        """Indexed paths (and paths with an open buffer), repository-relative, sorted."""
        paths = {r[0] for r in self._query("SELECT path FROM files")}
        return sorted(paths | self._buffers.keys())

    def text(self, path: str | os.PathLike) -> str | None:
        """The buffer, else the file on disk if it is indexed; None otherwise (never a secret or ignored file)."""
        source = self.source(path)
        return source[0] if source is not None else None

    def source(self, path: str | os.PathLike) -> tuple[str, str | None] | None:
        """(text, sha1): the buffer's text with None, else the indexed file's text as on disk now with the sha1 of
        the bytes it came from; None when neither (never a secret or ignored file)."""
        rel = self.relative(path)
        if rel is None:
            return None
        buffered = self._buffers.get(rel)
        if buffered is not None:
            return buffered[0], None
        source = self._read_indexed(rel)
        if source is None:
            return None
        recent = self._recent
        if recent is not None and recent[:2] == (rel, source.sha1):  # scrubbed a moment ago (scrubbing is slow)
            return recent[2], source.sha1
        return self.gate.scrub(source.text, rel), source.sha1

    def window(self, path: str | os.PathLike, start: int, end: int) -> str | None:
        """Lines `start`..`end` (1-based, inclusive) of the buffer, else of the indexed file as on disk now, cut as
        retrieval cuts its windows (`sparse.window_text`) and scrubbed on their own: a caller that needs the text
        as the whole file's scrubbing gives it checks it (retrieval compares its content key), since a secret
        spanning lines is masked only with the lines around it. None: neither buffered nor indexed."""
        from repocomplete.context_engine.sparse import window_text

        rel = self.relative(path)
        if rel is None:
            return None
        buffered = self._buffers.get(rel)
        if buffered is not None:
            return window_text(buffered[0], start, end)
        source = self._read_indexed(rel)
        if source is None:
            return None
        return self.gate.scrub(window_text(source.text, start, end), rel)

    def _read_indexed(self, rel: str):
        """The indexed file `rel` as on disk now (read_source's result), or None when not indexed or unreadable."""
        if not self._query("SELECT 1 FROM files WHERE path = ?", (rel,)):
            return None
        try:
            return read_source(str(self.root / rel), self.config.max_file_bytes)
        except Unindexable:
            return None

    def stamps(self) -> dict[str, str]:
        """path -> sha1 of every indexed file (as last indexed; buffers aside)."""
        return dict(self._query("SELECT path, sha1 FROM files"))

    def references(self, path: str | os.PathLike) -> tuple[Counter, set[str], str | None] | None:
        """What the repo map needs of one file: how often it references each name, the names it defines, and the
        sha1 of the indexed file (None for a buffer); None when the file is neither indexed nor buffered."""
        rel = self.relative(path)
        if rel is None:
            return None
        buffered = self._buffers.get(rel)
        if buffered is not None:
            symbols = buffered[1]
            if symbols is None:
                return Counter(), set(), None
            return Counter(symbols.identifiers), {d.name for d in symbols.definitions}, None
        with self._db_lock:
            row = self._query("SELECT sha1 FROM files WHERE path = ?", (rel,))
            if not row:
                return None
            recent = self._recent_symbols
            if recent is not None and recent[:2] == (rel, row[0][0]):  # its rows were written from these a moment ago
                symbols = recent[2]
                return Counter(symbols.identifiers), {d.name for d in symbols.definitions}, row[0][0]
            refs = Counter(dict(self._query("SELECT name, count FROM identifiers WHERE path = ?", (rel,))))
            defined = {r[0] for r in self._query("SELECT DISTINCT name FROM definitions WHERE path = ?", (rel,))}
        return refs, defined, row[0][0]

    def definitions_for(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[Definition]]:
        """The definitions of each (path, name) key, in file order (buffers replace their files); one query per
        file for the names not asked before (what was found is kept per file until a write touches the file's rows,
        or another connection writes the database)."""
        wanted: dict[str, set[str]] = defaultdict(set)
        for path, name in keys:
            wanted[path].add(name)
        buffers = dict(self._buffers)
        out: dict[tuple[str, str], list[Definition]] = {}
        checked = False  # whether this call has looked for other writers (once a call, not once a file)
        for path, names in wanted.items():
            if path in buffers:
                symbols = buffers[path][1]
                for d in (symbols.definitions if symbols else []):
                    if d.name in names:
                        out.setdefault((path, d.name), []).append(d)
                continue
            by_name = self._named_definitions(path, names, checked)
            checked = True
            for name in sorted(names):
                found = by_name[name]
                if found and len(names) > 500:  # (as when asked 500 at a time, SQLite's bound on parameters, and
                    found = sorted(found, key=lambda d: (d.start_line, d.end_line))  # put back in line order)
                if found:
                    out[(path, name)] = list(found)  # (a copy: what is kept stays as read)
        return out

    def _named_definitions(self, rel: str, names: set[str], checked: bool = False) -> dict[str, list[Definition]]:
        """name -> the definitions of that name in the indexed file `rel` (rowid order; [] for none), for `names`:
        those asked before from what is kept, the others from the database (and kept). checked: the caller has
        already looked for other writers in this lookup."""
        with self._db_lock:
            if not checked:
                version = self._conn.execute("PRAGMA data_version").fetchone()[0]
                if version != self._data_version:  # another process wrote the database (`repocomplete index`)
                    self._file_definitions.clear()
                    self._data_version = version
            kept = self._file_definitions.get(rel)
            if kept is None:
                kept = self._file_definitions[rel] = {}
                while len(self._file_definitions) > FILE_DEFINITIONS:
                    self._file_definitions.popitem(last=False)
            else:
                self._file_definitions.move_to_end(rel)
            missing = sorted(n for n in names if n not in kept)
            for i in range(0, len(missing), 500):  # (SQLite's bound on parameters)
                chunk = missing[i : i + 500]
                for name in chunk:
                    kept[name] = []
                for d in self._definitions(f"WHERE path = ? AND name IN ({', '.join('?' * len(chunk))})",
                                           (rel, *chunk)):
                    kept[d.name].append(d)
            return {name: kept[name] for name in names}

    def symbols(self, path: str | os.PathLike) -> FileSymbols | None:
        rel = self.relative(path)
        if rel is None:
            return None
        buffered = self._buffers.get(rel)
        if buffered is not None:
            return buffered[1]
        with self._db_lock:
            row = self._query("SELECT language, has_errors FROM files WHERE path = ?", (rel,))
            if not row:
                return None
            defs = self._definitions("WHERE path = ?", (rel,))
            imports = [
                Import(module, tuple(tuple(n) for n in json.loads(names)), alias, level, line)
                for module, names, alias, level, line in self._query(
                    "SELECT module, names, alias, level, line FROM imports WHERE path = ? ORDER BY rowid", (rel,))
            ]
            idents = self._query("SELECT name, count FROM identifiers WHERE path = ? ORDER BY rowid", (rel,))
        identifiers = [name for name, n in idents for _ in range(n)]
        return FileSymbols(rel, row[0][0], defs, imports, identifiers, bool(row[0][1]))

    def _definitions(self, where: str, args: tuple) -> list[Definition]:
        rows = self._query(
            f"SELECT name, kind, path, start_line, end_line, signature, doc, parent FROM definitions {where}"
            " ORDER BY path, rowid", args)
        return [Definition(*r) for r in rows]

    def definitions(self, name: str | None = None, path: str | None = None) -> list[Definition]:
        """Definitions by name and/or file (all of them when neither is given); buffers replace their files."""
        rel = self.relative(path) if path is not None else None
        if path is not None and rel is None:
            return []
        buffers = dict(self._buffers)
        if rel is not None and rel in buffers:
            symbols = buffers[rel][1]
            return [d for d in (symbols.definitions if symbols else []) if name is None or d.name == name]
        clauses, args = [], []
        if name is not None:
            clauses.append("name = ?")
            args.append(name)
        if rel is not None:
            clauses.append("path = ?")
            args.append(rel)
        found = self._definitions(("WHERE " + " AND ".join(clauses)) if clauses else "", tuple(args))
        if not buffers or rel is not None:
            return found
        found = [d for d in found if d.path not in buffers]
        for path_, (_, symbols) in sorted(buffers.items()):
            if symbols is not None:
                found.extend(d for d in symbols.definitions if name is None or d.name == name)
        return found

    def all_identifiers(self) -> dict[str, Counter]:
        """path -> how often each name is referenced there (read-only: the Counters are the index's own)."""
        with self._db_lock:
            if self._identifiers is None:
                cache: dict[str, Counter] = {}
                for path, name, n in self._conn.execute("SELECT path, name, count FROM identifiers"):
                    counter = cache.get(path)
                    if counter is None:
                        counter = cache[path] = Counter()
                    counter[name] = n
                for (path,) in self._conn.execute("SELECT path FROM files"):
                    cache.setdefault(path, Counter())
                self._identifiers = cache
            result = dict(self._identifiers)
            for path, (_, symbols) in self._buffers.items():
                result[path] = Counter(symbols.identifiers) if symbols else Counter()
        return result

    def resolve_python_module(self, module: str, from_path: str | None = None, level: int = 0) -> str | None:
        """The repository path of a Python module (its .py, or its package's __init__.py), or None.

        `level` > 0 is a relative import (`from ..a import b` is module "a", level 2) from `from_path`. An absolute
        name is looked up at the root, then in any folder that holds it (a `src/` layout, a monorepo's packages),
        preferring the folder closest to `from_path`, then the shortest path.
        """
        parts = [p for p in module.split(".") if p]
        if level > 0:
            rel = self.relative(from_path) if from_path is not None else None
            if rel is None:
                return None
            base = rel.split("/")[:-1]
            if level - 1 > len(base):
                return None
            base = base[: len(base) - (level - 1)]
            if not parts:  # `from . import x`: the package itself
                return self._existing([f"{'/'.join(base + ['__init__.py'])}", f"{'/'.join(base + ['__init__.pyi'])}"])
            stem = "/".join(base + parts)
            return self._existing([f"{stem}/__init__.py", f"{stem}.py", f"{stem}/__init__.pyi", f"{stem}.pyi"])
        if not parts:
            return None
        stem = "/".join(parts)
        candidates = [f"{stem}/__init__.py", f"{stem}.py", f"{stem}/__init__.pyi", f"{stem}.pyi"]
        found = self._existing(candidates)
        if found:
            return found
        # Elsewhere in the repository: `src/pkg`, `packages/x/pkg`, ... (LIKE ignores ASCII case: check again)
        likes = ["%/" + c.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") for c in candidates]
        rows = self._query("SELECT path FROM files WHERE " + " OR ".join(["path LIKE ? ESCAPE '\\'"] * len(likes)),
                           likes)
        matches = []
        for path in [r[0] for r in rows] + list(self._buffers):
            for kind, c in enumerate(candidates):
                if path.endswith("/" + c):
                    matches.append((path[: len(path) - len(c)], kind, path))
                    break
        if not matches:
            return None
        origin = (self.relative(from_path) or "") if from_path else ""

        def rank(match: tuple[str, int, str]) -> tuple:
            prefix, kind, path = match
            near = origin.startswith(prefix)  # the source root that holds the importing file
            return (not near, -len(prefix) if near else len(prefix), kind, path)

        return min(matches, key=rank)[2]

    def _existing(self, candidates: list[str]) -> str | None:
        for candidate in candidates:
            if candidate in self._buffers or self._query("SELECT 1 FROM files WHERE path = ?", (candidate,)):
                return candidate
        return None

    # -- live updates -----------------------------------------------------------------------------------------

    def start_watching(self, on_change: Callable[[list[str]], None] | None = None) -> None:
        """Follow the disk: file events update the index on a background thread, ~100 ms after they settle.

        `on_change` gets the repository paths each batch touched. A change to an ignore file, or a folder that
        appears, disappears or moves, is answered with a (warm, stat-only) `build()`.
        """
        if self._watcher is None:
            self._watcher = Watcher(self, on_change)
            self._watcher.start()

    @property
    def watching(self) -> bool:
        return self._watcher is not None

    def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def close(self) -> None:
        self.stop_watching()
        with self._db_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]
        self._buffers.clear()

    def __enter__(self) -> RepoIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

