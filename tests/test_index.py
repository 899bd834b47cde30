"""The repository index: build, warm restart, incremental updates, buffers, queries, bad input, the watcher."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from helpers import write_tree

from repocomplete.context_engine import index as index_module
from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.errors import ParseTimeout
from repocomplete.context_engine.index import RepoIndex, db_path_for
from repocomplete.context_engine.parsing import parse_source
from repocomplete.context_engine.records import Import

REPO = {
    "pkg/__init__.py": "from .models import Item\n",
    "pkg/models.py": "import os\n\nclass Item:\n    def price(self):\n        return os.sep\n",
    "pkg/util.py": "from .models import Item\n\ndef make():\n    return Item()\n",
    "pkg/sub/__init__.py": "",
    "pkg/sub/leaf.py": "from ..util import make\n\ndef leaf():\n    return make()\n",
    "src/other/__init__.py": "",
    "src/other/thing.py": "def thing():\n    return 1\n",
    "web/app.ts": "export function render(x: number): string { return String(x) }\n",
    "README.md": "# not source\n",
}


make = write_tree


class CountingParser:
    """The real parser, counting what it is asked to parse; `fail_after` raises like a crash mid-build."""

    def __init__(self, fail_after: int | None = None):
        self.calls: list[str] = []
        self.fail_after = fail_after

    def __call__(self, path: str, text: str):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("killed mid-build")
        self.calls.append(path)
        return parse_source(path, text)


@pytest.fixture
def repo(tmp_path):
    return make(tmp_path / "repo", REPO)


@pytest.fixture
def config(tmp_path):
    return ContextConfig(index_dir=tmp_path / "index")


def open_index(repo, config, parser=None):
    parser = parser or CountingParser()
    return RepoIndex(repo, config, parse=parser), parser


def assert_consistent(index: RepoIndex) -> None:
    """Every indexed file's rows are exactly what parsing its current text gives: no half-indexed file."""
    db = sqlite3.connect(index.db_path)
    files = {r[0] for r in db.execute("SELECT path FROM files")}
    for table in ("definitions", "imports", "identifiers"):
        orphans = {r[0] for r in db.execute(f"SELECT DISTINCT path FROM {table}")} - files
        assert not orphans, f"{table} rows without a file: {orphans}"
    for path in files:
        expected = parse_source(path, (index.root / path).read_text(encoding="utf-8"))
        got = index.symbols(path)
        assert got.definitions == expected.definitions, path
        assert got.imports == expected.imports, path
        assert Counter(got.identifiers) == Counter(expected.identifiers), path
    db.close()


def test_build_and_queries(repo, config):
    index, parser = open_index(repo, config)
    stats = index.build()
    py_ts = sorted(p for p in REPO if not p.endswith(".md"))
    assert index.files() == py_ts
    assert sorted(parser.calls) == py_ts
    assert (stats.files, stats.parsed, stats.restamped, stats.removed) == (8, 8, 0, 0)
    assert stats.bytes == sum(len(REPO[p].encode()) for p in py_ts)
    assert stats.definitions == 6  # Item, price, make, leaf, thing, render
    assert [(d.name, d.kind, d.path, d.start_line, d.end_line, d.parent) for d in index.definitions(name="price")] == [
        ("price", "method", "pkg/models.py", 4, 5, "Item")]
    assert [d.name for d in index.definitions(path="pkg/util.py")] == ["make"]
    assert [d.name for d in index.definitions(path=str(repo / "pkg/util.py"))] == ["make"]  # absolute paths too
    assert [(d.kind, d.path) for d in index.definitions(name="render")] == [("function", "web/app.ts")]
    assert len(index.definitions()) == 6
    symbols = index.symbols("pkg/sub/leaf.py")
    assert symbols.imports == [Import("util", (("make", "make"),), "", 2, 1)]
    assert (symbols.language, symbols.has_errors) == ("python", False)
    assert index.text("pkg/models.py") == REPO["pkg/models.py"]
    assert index.text("README.md") is None and index.symbols("README.md") is None
    ids = index.all_identifiers()
    assert set(ids) == set(py_ts)
    assert ids["pkg/util.py"]["Item"] == 1 and ids["pkg/sub/__init__.py"] == Counter()
    # the database: where the brief says, in WAL mode, versioned
    assert index.db_path == config.index_dir / (index_module.hashlib.sha1(str(repo.resolve()).encode()).hexdigest()[:20]
                                                + ".sqlite")
    db = sqlite3.connect(index.db_path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert dict(db.execute("SELECT key, value FROM meta"))["format_version"] == str(index_module.FORMAT_VERSION)
    db.close()
    assert_consistent(index)
    index.close()


def test_warm_restart_reads_nothing(repo, config, monkeypatch):
    index, _ = open_index(repo, config)
    index.build()
    index.close()
    reads = []
    real = index_module.read_source
    monkeypatch.setattr(index_module, "read_source", lambda path, n: (reads.append(path), real(path, n))[1])
    with RepoIndex(repo, config, parse=(parser := CountingParser())) as index:
        stats = index.build()
        assert (stats.files, stats.parsed, stats.restamped, stats.definitions) == (8, 0, 0, 6)
        assert parser.calls == [] and reads == []
        assert [d.name for d in index.definitions(name="thing")] == ["thing"]


def test_edit_reparses_only_that_file_and_touch_only_restamps(repo, config):
    index, parser = open_index(repo, config)
    index.build()
    parser.calls.clear()
    (repo / "pkg/util.py").write_text("def make():\n    return 1\n\ndef make_two():\n    return 2\n")
    stats = index.build()
    assert parser.calls == ["pkg/util.py"] and (stats.parsed, stats.restamped) == (1, 0)
    assert stats.changed == ["pkg/util.py"]
    assert [d.name for d in index.definitions(path="pkg/util.py")] == ["make", "make_two"]
    parser.calls.clear()
    st = (repo / "pkg/models.py").stat()
    os.utime(repo / "pkg/models.py", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    stats = index.build()
    assert parser.calls == [] and (stats.parsed, stats.restamped) == (0, 1)
    stats = index.build()  # the new stat was written: nothing to look at any more
    assert (stats.parsed, stats.restamped) == (0, 0)
    assert_consistent(index)
    index.close()


def test_deleted_files_disappear(repo, config):
    index, _ = open_index(repo, config)
    index.build()
    index.all_identifiers()  # loaded: must follow the deletion
    (repo / "pkg/util.py").unlink()
    stats = index.build()
    assert (stats.files, stats.removed, stats.changed) == (7, 1, ["pkg/util.py"])
    assert "pkg/util.py" not in index.files()
    assert index.definitions(name="make") == [] and index.symbols("pkg/util.py") is None
    assert "pkg/util.py" not in index.all_identifiers()
    assert_consistent(index)
    index.close()


def test_update_and_remove_single_files(repo, config):
    index, parser = open_index(repo, config)
    index.build()
    parser.calls.clear()
    make(repo, {"pkg/new.py": "def fresh():\n    pass\n", ".env.py": "def leaked():\n    pass\n",
                "build/gen.py": "def generated():\n    pass\n"})
    assert index.update_file("pkg/new.py") is True
    assert index.update_file(repo / "pkg/new.py") is True  # unchanged since: not parsed again
    assert parser.calls == ["pkg/new.py"]
    assert [d.path for d in index.definitions(name="fresh")] == ["pkg/new.py"]
    assert index.update_file(".env.py") is False and index.definitions(name="leaked") == []
    assert index.update_file("build/gen.py") is False and index.definitions(name="generated") == []
    assert index.update_file("/elsewhere/x.py") is False
    assert parser.calls == ["pkg/new.py"]
    index.remove_file("pkg/new.py")
    assert index.definitions(name="fresh") == [] and "pkg/new.py" not in index.files()
    (repo / "pkg/util.py").unlink()
    assert index.update_file("pkg/util.py") is False  # gone from disk: taken out
    assert index.definitions(name="make") == []
    assert_consistent(index)
    index.close()


def test_buffers_override_the_disk_until_cleared(repo, config):
    index, _ = open_index(repo, config)
    index.build()
    buffer = "def make_fast():\n    return 2\n"
    assert index.set_buffer("pkg/util.py", buffer) is True
    assert index.text("pkg/util.py") == buffer
    assert [d.name for d in index.symbols("pkg/util.py").definitions] == ["make_fast"]
    assert index.definitions(name="make") == []
    assert [(d.name, d.path) for d in index.definitions(name="make_fast")] == [("make_fast", "pkg/util.py")]
    assert [d.name for d in index.definitions(path="pkg/util.py")] == ["make_fast"]
    assert sorted(d.name for d in index.definitions()) == ["Item", "leaf", "make_fast", "price", "render", "thing"]
    assert index.all_identifiers()["pkg/util.py"] == Counter()
    # an unsaved new file
    assert index.set_buffer("pkg/draft.py", "def draft():\n    pass\n") is True
    assert "pkg/draft.py" in index.files() and index.definitions(name="draft")[0].path == "pkg/draft.py"
    # never a secret, never an ignored or unsupported file
    assert index.set_buffer(".env", "TOKEN=1") is False and index.text(".env") is None
    assert index.set_buffer("node_modules/x.js", "function x() {}") is False
    # buffers never reach the database
    other = RepoIndex(repo, config, parse=CountingParser())
    assert [d.name for d in other.definitions(path="pkg/util.py")] == ["make"] and other.text("pkg/draft.py") is None
    other.close()
    index.clear_buffer("pkg/util.py")
    index.clear_buffer("pkg/draft.py")
    assert index.text("pkg/util.py") == REPO["pkg/util.py"]
    assert [d.name for d in index.definitions(name="make")] == ["make"] and index.definitions(name="make_fast") == []
    assert "pkg/draft.py" not in index.files()
    index.close()


def test_resolve_python_module(repo, config):
    index, _ = open_index(repo, config)
    index.build()
    r = index.resolve_python_module
    assert r("pkg") == "pkg/__init__.py"
    assert r("pkg.models") == "pkg/models.py"
    assert r("pkg.sub") == "pkg/sub/__init__.py"
    assert r("pkg.sub.leaf") == "pkg/sub/leaf.py"
    assert r("other.thing") == "src/other/thing.py"  # a src/ layout
    assert r("other") == "src/other/__init__.py"
    assert r("os") is None and r("pkg.nope") is None and r("") is None
    assert r("util", "pkg/sub/leaf.py", level=2) == "pkg/util.py"  # from ..util import make
    assert r("leaf", "pkg/sub/__init__.py", level=1) == "pkg/sub/leaf.py"
    assert r("models", str(repo / "pkg/util.py"), level=1) == "pkg/models.py"
    assert r("", "pkg/sub/leaf.py", level=1) == "pkg/sub/__init__.py"  # from . import x
    assert r("", "pkg/sub/leaf.py", level=2) == "pkg/__init__.py"
    assert r("sub.leaf", "pkg/util.py", level=1) == "pkg/sub/leaf.py"
    assert r("x", "pkg/util.py", level=3) is None  # above the root
    assert r("nope", "pkg/util.py", level=1) is None
    # two candidates: the one in the importing file's source root wins
    make(repo, {"lib/a/other/__init__.py": "", "lib/a/main.py": "import other\n"})
    index.build()
    assert r("other", "lib/a/main.py") == "lib/a/other/__init__.py"
    assert r("other", "pkg/util.py") == "src/other/__init__.py"  # shortest path
    index.close()


def test_format_version_or_parser_change_rebuilds(repo, config, monkeypatch):
    index, _ = open_index(repo, config)
    index.build()
    index.close()
    monkeypatch.setattr(index_module, "FORMAT_VERSION", index_module.FORMAT_VERSION + 1)
    index, parser = open_index(repo, config)
    assert index.files() == []  # started from scratch
    assert index.build().parsed == 8 and len(parser.calls) == 8
    index.close()
    index, parser = open_index(repo, config)
    assert index.build().parsed == 0  # the new version is kept
    index.close()

    def other_parser(path, text):
        return parse_source(path, text)

    index = RepoIndex(repo, config, parse=other_parser)
    assert index.files() == [] and index.build().parsed == 8
    index.close()


def test_damaged_database_is_rebuilt(repo, config):
    path = db_path_for(repo, config)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 100)
    index, parser = open_index(repo, config)
    assert index.build().parsed == 8
    assert_consistent(index)
    index.close()


def test_interrupted_build_recovers(repo, config, monkeypatch):
    monkeypatch.setattr(index_module, "BATCH_FILES", 2)
    index, parser = open_index(repo, config, CountingParser(fail_after=5))
    with pytest.raises(KeyboardInterrupt):
        index.build()
    done = index.files()
    assert done == sorted(parser.calls) and len(done) == 5  # whole files only: the five parsed
    assert_consistent(index)
    index.close()
    index, parser = open_index(repo, config)
    stats = index.build()
    assert stats.parsed == 3 and sorted(parser.calls) == sorted(set(REPO) - set(done) - {"README.md"})
    assert index.files() == sorted(p for p in REPO if p != "README.md") and stats.definitions == 6
    assert_consistent(index)
    index.close()


def test_failed_write_leaves_no_half_indexed_file(repo, config, monkeypatch):
    from repocomplete.context_engine.records import Definition, FileSymbols

    def bad_parse(path, text):
        symbols = parse_source(path, text)
        if path == "pkg/util.py":  # a NOT NULL column: the insert fails halfway through the batch
            symbols = FileSymbols(path, "python", [Definition(None, "function", path, 1, 1, "")], [], ["x"])
        return symbols

    index = RepoIndex(repo, config, parse=bad_parse)
    with pytest.raises(sqlite3.IntegrityError):
        index.build()
    assert index.files() == []  # the batch held every file: none of it was written
    db = sqlite3.connect(index.db_path)
    assert [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("definitions", "identifiers")] == [0, 0]
    db.close()
    index.close()


def test_bad_input_is_skipped_with_reasons(repo, config, monkeypatch):
    make(repo, {
        "bad/latin1.py": "name = 'café'\n".encode("latin-1"),
        "bad/min.js": "var a=1;" * 2000,
        "bad/bin.py": b"\0\1\2",
        "bad/vanishing.py": "def ghost():\n    pass\n",
        "bad/big.py": "#" * 1_000_001,
        "bad/locked.py": "def locked():\n    pass\n",
    })
    (repo / "bad/loop.py").symlink_to("loop.py")
    real = index_module.read_source

    def read_source(path, n):
        if path.endswith("vanishing.py"):
            os.unlink(path)  # deleted between the walk's stat and the read
        if path.endswith("locked.py"):
            raise index_module.Unindexable("unreadable (permission denied)")
        return real(path, n)

    monkeypatch.setattr(index_module, "read_source", read_source)
    index, parser = open_index(repo, config)
    stats = index.build()
    assert {s.path: s.reason for s in stats.skipped if s.path.startswith("bad/")} == {
        "bad/big.py": "too large (1000001 bytes > 1000000)",
        "bad/bin.py": "binary (a NUL byte in the first 8 KB)",
        "bad/latin1.py": "not UTF-8 (byte 11)",
        "bad/locked.py": "unreadable (permission denied)",
        "bad/loop.py": "symlink loop",
        "bad/min.js": "minified (a line of 16000 characters > 10000)",
        "bad/vanishing.py": "vanished during the walk",
    }
    assert stats.files == 8 and not [p for p in index.files() if p.startswith("bad/")]
    assert_consistent(index)
    # remembered: a restart does not read them again, and reports the same reasons
    parser.calls.clear()
    reads = []
    monkeypatch.setattr(index_module, "read_source", lambda path, n: (reads.append(path), real(path, n))[1])
    again = index.build()
    assert reads == [] and parser.calls == []
    assert {s.path: s.reason for s in again.skipped} == {s.path: s.reason for s in stats.skipped
                                                         if s.path != "bad/vanishing.py"}
    # fixed on disk: indexed on the next build, and no longer remembered as skipped
    (repo / "bad/latin1.py").write_text("name = 'café'\n", encoding="utf-8")
    third = index.build()
    assert third.parsed == 1 and "bad/latin1.py" in index.files()
    assert "bad/latin1.py" not in {s.path for s in third.skipped}
    index.close()


@pytest.mark.parametrize("error, reason", [
    (ValueError("grammar bug"), "parser error (ValueError: grammar bug)"),
    (ParseTimeout("parsing took over 2 s"), "parsing took over 2 s"),  # pathological input, past the budget
])
def test_a_parser_error_or_timeout_costs_one_file(repo, config, error, reason):
    def parse(path, text):
        if path == "pkg/util.py":
            raise error
        return parse_source(path, text)

    index = RepoIndex(repo, config, parse=parse)
    stats = index.build()
    assert stats.files == 7 and "pkg/util.py" not in index.files()
    assert {s.path: s.reason for s in stats.skipped} == {"pkg/util.py": reason}
    assert_consistent(index)
    assert index.build().parsed == 0  # remembered: a restart does not pay for it again
    assert index.set_buffer("pkg/util.py", "def make():\n    pass\n")  # a buffer that cannot be parsed ...
    assert index.text("pkg/util.py") == "def make():\n    pass\n"  # ... is still served as text
    assert index.definitions(path="pkg/util.py") == []
    index.close()


def test_paths_are_normalised(repo, config):
    index, _ = open_index(repo, config)
    index.build()
    assert index.relative("pkg/sub/../util.py") == "pkg/util.py" == index.relative("./pkg/util.py")
    assert index.relative(repo / "pkg/util.py") == "pkg/util.py"
    assert index.relative("../outside.py") is None and index.relative(repo.parent / "x.py") is None
    assert index.text("pkg/sub/../util.py") == REPO["pkg/util.py"]
    index.close()


def test_progress_bar_goes_to_stderr(repo, config, capsys):
    index, _ = open_index(repo, config)
    index.build(progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "indexing" in err and "8/8" in err
    index.close()


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_watcher_follows_creation_edits_and_deletion(repo, config):
    index, _ = open_index(repo, config)
    index.build()
    changes: list[list[str]] = []
    index.start_watching(on_change=changes.append)
    try:
        (repo / "pkg/fresh.py").write_text("def fresh():\n    pass\n")
        (repo / ".env.py").write_text("def leaked():\n    pass\n")  # a secret: dropped
        (repo / "build").mkdir()
        assert wait_for(lambda: [d.path for d in index.definitions(name="fresh")] == ["pkg/fresh.py"])
        (repo / "pkg/fresh.py").write_text("def fresher():\n    pass\n")
        assert wait_for(lambda: index.definitions(name="fresher") and not index.definitions(name="fresh"))
        (repo / "build/out.py").write_text("def generated():\n    pass\n")  # a skip dir: dropped
        (repo / "pkg/util.py").unlink()
        assert wait_for(lambda: "pkg/util.py" not in index.files())
        (repo / "pkg/sub").rename(repo / "pkg/moved")  # a folder move: a warm rebuild
        assert wait_for(lambda: "pkg/moved/leaf.py" in index.files() and "pkg/sub/leaf.py" not in index.files())
        assert index.definitions(name="leaked") == [] and index.definitions(name="generated") == []
        assert any("pkg/fresh.py" in batch for batch in changes)
        assert not any(".env.py" in batch for batch in changes)
    finally:
        index.stop_watching()
    assert not index.watching
    assert_consistent(index)
    index.close()


def test_watcher_and_caller_share_the_index_safely(repo, config):
    import sys

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave inside the index's critical sections
    try:
        _share(repo, config)
    finally:
        sys.setswitchinterval(switch)


def _share(repo, config):
    index, _ = open_index(repo, config)
    index.build()
    errors = []

    def edit_loop():
        try:
            for i in range(100):
                (repo / "pkg/util.py").write_text(f"def make_{i}():\n    pass\n")
                index.update_file("pkg/util.py")
        except Exception as e:  # pragma: no cover - the failure is reported below
            errors.append(e)

    thread = threading.Thread(target=edit_loop)
    thread.start()
    while thread.is_alive():
        index.build()
        index.definitions()
        index.all_identifiers()
    thread.join()
    assert errors == []
    index.build()
    assert [d.name for d in index.definitions(path="pkg/util.py")] == ["make_99"]
    assert_consistent(index)
    index.close()


def test_a_cancelled_build_stops_between_files_and_the_next_goes_on(repo, config):
    asked = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) > 3  # after three files

    index, parser = open_index(repo, config)
    stats = index.build(cancelled=cancelled)
    assert stats.cancelled and len(parser.calls) == 3 and index.files() == sorted(parser.calls)
    assert stats.removed == 0  # the files not walked yet are not gone
    assert_consistent(index)
    stats = index.build()
    assert not stats.cancelled and stats.parsed == len(REPO) - 1 - 3 and len(index.files()) == len(REPO) - 1
    assert_consistent(index)
    index.close()


def _index_rows(db_path: Path) -> dict[str, list]:
    db = sqlite3.connect(db_path)
    try:
        return {table: sorted(db.execute(f"SELECT * FROM {table}"), key=repr)
                for table in ("files", "definitions", "imports", "identifiers", "skipped")}
    finally:
        db.close()


def test_kill_9_during_indexing_then_a_restart_equals_a_clean_build(tmp_path):
    """`repocomplete index` killed mid-build (SIGKILL: no cleanup runs), then run again, gives the same index as a
    clean build of the same tree."""
    import signal
    import subprocess
    import sys

    files = {f"pkg{i // 50}/mod{i}.py": f"import os\n\n\nclass C{i}:\n    def m(self, a):\n        return os.sep + a\n"
             f"\n\ndef f{i}(x):\n    return C{i}().m(x)\n" for i in range(2000)}
    root = make(tmp_path / "tree", {**files, "bad.py": ("(" * 99 + "\n") * 200, ".env": "SECRET=1\n"})

    def index(cache: Path) -> subprocess.Popen:
        env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
        return subprocess.Popen([sys.executable, "-m", "repocomplete", "index", str(root), "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    killed = index(tmp_path / "killed")
    db = None
    deadline = time.monotonic() + 120
    while killed.poll() is None and time.monotonic() < deadline:
        db = db or next((tmp_path / "killed").rglob("*.sqlite"), None)
        if db is not None:
            try:
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)
                done = conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
                conn.close()
            except sqlite3.Error:  # not created yet, or busy
                done = 0
            if done > 0:
                killed.send_signal(signal.SIGKILL)
                break
        time.sleep(0.005)
    assert killed.wait(30) == -signal.SIGKILL, "the build ended before it could be killed: make the tree larger"
    partial = _index_rows(db)["files"]
    assert 0 < len(partial) < len(files) + 1  # killed mid-way, with whole batches in

    for run in (index(tmp_path / "killed"), index(tmp_path / "clean")):
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err.decode()[-2000:]
    clean = next((tmp_path / "clean").rglob("*.sqlite"))
    restarted, fresh = _index_rows(db), _index_rows(clean)
    assert len(fresh["files"]) == len(files) + 1 and fresh["definitions"]
    assert restarted == fresh


def test_references_after_an_update_equal_what_the_database_holds(repo, config):
    """The repo map's inputs of a file just re-indexed come from its fresh parse: the same as reading its rows."""
    index, _ = open_index(repo, config)
    index.build()
    (repo / "pkg/util.py").write_text("from .models import Item\n\ndef make():\n    return Item() or Item\n\nX = make\n")
    index.update_file("pkg/util.py")
    assert index._recent_symbols is not None and index._recent_symbols[0] == "pkg/util.py"
    from_parse = index.references("pkg/util.py")
    index._recent_symbols = None
    from_rows = index.references("pkg/util.py")
    assert from_parse == from_rows and from_parse[0]["make"] >= 1 and from_parse[1] == {"make", "X"}
    # A file changed on disk since (not re-indexed yet) is answered from the rows, as indexed.
    index.update_file("pkg/util.py")
    (repo / "pkg/models.py").write_text("class Item:\n    pass\n")
    index.update_file("pkg/models.py")
    assert index.references("pkg/util.py") == from_rows
    index.close()


def test_definitions_for_follows_every_change_to_a_file(repo, config):
    """The definitions the repo map looks up are kept per file and name between requests; an update, a removal, a
    build that re-reads the file, a buffer, and a write by another process (`repocomplete index` in a shell) each
    show at the next lookup, as a fresh index would answer."""
    index, _ = open_index(repo, config)
    index.build()

    def lookup(*keys):
        return {k: [(d.name, d.start_line, d.signature) for d in v] for k, v in index.definitions_for(keys).items()}

    key = ("pkg/util.py", "make")
    assert lookup(key, ("pkg/util.py", "nothing")) == {key: [("make", 3, "def make():")]}
    assert index._file_definitions["pkg/util.py"] == {"make": index.definitions(path="pkg/util.py"), "nothing": []}
    (repo / "pkg/util.py").write_text("from .models import Item\n\n\n\ndef make(n):\n    return Item()\n")
    index.update_file("pkg/util.py")
    assert lookup(key) == {key: [("make", 5, "def make(n):")]}
    index.set_buffer("pkg/util.py", "def make(a, b):\n    pass\n")
    assert lookup(key) == {key: [("make", 1, "def make(a, b):")]}
    index.clear_buffer("pkg/util.py")
    assert lookup(key) == {key: [("make", 5, "def make(n):")]}
    (repo / "pkg/util.py").write_text("def make(n, m):\n    return n\n")
    index.build()
    assert lookup(key) == {key: [("make", 1, "def make(n, m):")]}
    (repo / "pkg/util.py").unlink()
    index.remove_file("pkg/util.py")
    assert lookup(key) == {}
    # Another process's index of the same workspace rewrites a file this one has kept.
    thing = ("src/other/thing.py", "thing")
    assert lookup(thing) == {thing: [("thing", 1, "def thing():")]}
    (repo / "src/other/thing.py").write_text("x = 1\n\ndef thing(y):\n    return y\n")
    other, _ = open_index(repo, config)
    other.update_file("src/other/thing.py")
    other.close()
    assert lookup(thing) == {thing: [("thing", 3, "def thing(y):")]}
    got = index.definitions_for([thing])
    got[thing].clear()  # a caller's list is its own
    assert lookup(thing) == {thing: [("thing", 3, "def thing(y):")]}
    fresh, _ = open_index(repo, config)
    keys = [(d.path, d.name) for d in fresh.definitions()] + [("pkg/models.py", "nothing")]
    assert index.definitions_for(keys) == fresh.definitions_for(keys)
    fresh.close()
    index.close()
