"""The warm start: retrieval's index and the repo map's data kept in a snapshot beside the index, and what follows
from it (a restart reads no unchanged file and answers as a fresh build; edits, deletions and damage; privacy)."""

from __future__ import annotations

import os
import random
import stat
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from helpers import write_tree

from repocomplete.context_engine import engine as engine_module
from repocomplete.context_engine import index as index_module
from repocomplete.context_engine import snapshot
from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.engine import ContextEngine
from repocomplete.context_engine.records import Definition
from repocomplete.context_engine.repo_map import GraphData, RepoGraph

PROVIDERS = ("retrieval", "repo_map", "neighbours")  # the ones the snapshot serves (no jedi process in these tests)

FILES = {
    "shop/__init__.py": "from .models import Inventory, Item\n",
    "shop/models.py": (
        "class Item:\n    def __init__(self, sku, price_cents):\n        self.sku = sku\n"
        "        self.price_cents = price_cents\n\n    def discounted(self, percent):\n"
        "        return self.price_cents * (100 - percent) // 100\n\n\n"
        "class Inventory:\n    def __init__(self):\n        self.levels = {}\n\n"
        "    def restock(self, item, count=1):\n        self.levels[item.sku] = self.levels.get(item.sku, 0) + count\n\n"
        "    def available(self, sku):\n        return self.levels.get(sku, 0)\n"
    ),
    "shop/checkout.py": (
        "from shop.models import Inventory, Item\n\n\ndef sell(inventory, item, count):\n"
        "    if inventory.available(item.sku) < count:\n        raise ValueError(item.sku)\n"
        "    total = item.discounted(10) * count\n    return total\n"
    ),
    "shop/report.py": (
        "from shop.checkout import sell\nfrom shop.models import Inventory\n\n\ndef nightly(inventory):\n"
        "    lines = []\n    for sku, level in sorted(inventory.levels.items()):\n"
        "        lines.append(f'{sku}: {level}')\n    return '\\n'.join(lines)\n"
    ),
    "web/cart.js": "import { formatPrice } from './format.js';\nexport function cartTotal(items) {\n"
                   "  return formatPrice(items.reduce((s, i) => s + i.price, 0));\n}\n",
    "web/format.js": "export function formatPrice(cents) {\n  return (cents / 100).toFixed(2);\n}\n",
    # Refused by the gate: a secret by name, a dotenv file, an ignored file. Each holds a word nothing else has.
    "config/secrets.py": "def quuxsecretword():\n    return 'sk_live_zzz'\n",
    ".env": "TOKEN=quuxenvword\n",
    ".gitignore": "scratch/\n",
    "scratch/notes.py": "def quuxignoredword():\n    return 1\n",
}

QUERIES = [  # (path, text, line, col): a cursor in a new file and in existing ones
    ("shop/restock.py", ("from shop.models import Inventory, Item\n\n\ndef restock_all(inv, items):\n"
                        "    for item in items:\n        inv.restock(item)\n"), 6, 25),
    ("shop/checkout.py", None, 7, 11),
    ("shop/report.py", None, 8, 9),
    ("web/cart.js", None, 3, 10),
]


@pytest.fixture
def repo(tmp_path):
    root = write_tree(tmp_path / "repo", FILES)
    (root / ".git").mkdir()
    return root


def config_for(tmp_path, name: str = "index", **changes) -> ContextConfig:
    return ContextConfig(index_dir=tmp_path / name, slow_provider_deadline_ms=None, providers=PROVIDERS, **changes)


def open_engine(repo, config) -> ContextEngine:
    engine = ContextEngine(repo, config, slow_executor=ThreadPoolExecutor(1))
    engine.build()
    return engine


def answers(engine: ContextEngine, repo) -> list:
    """Every record of every query, in full (those the packer dropped as another's duplicate too, marked so)."""
    out = []
    for path, text, line, col in QUERIES:
        if text is None and not (repo / path).exists():
            continue
        text = text if text is not None else (repo / path).read_text(encoding="utf-8")
        ctx = engine.context(path, text, line, col)
        same = [r for r, why in ctx.packed.dropped if why == "duplicate"]
        out.append([(r.kind, r.path, r.start_line, r.end_line, r.text, round(r.score, 9), r.why)
                    for r in ctx.records] + [("duplicate " + r.kind, r.path, r.start_line, r.end_line, r.text,
                                              round(r.score, 9), r.why) for r in same])
    return out


def fresh_answers(repo, tmp_path, name: str) -> list:
    """What an engine built from scratch answers (no snapshot: every file read)."""
    engine = open_engine(repo, config_for(tmp_path, name, warm_state=False))
    try:
        assert not engine.state_path.exists()
        return answers(engine, repo)
    finally:
        engine.close()


def snapshot_words(engine: ContextEngine) -> tuple[set[str], set[str]]:
    """(paths, words) anywhere in the snapshot: its paths, retrieval's vocabulary, the repo map's names."""
    meta, arrays = snapshot.load(engine.state_path)
    r, g = meta["retrieval"], meta["graph"]
    paths = set(snapshot.unpack_strings(arrays["r.paths"], r["files"]))
    paths |= set(snapshot.unpack_strings(arrays["g.paths"], g["files"]))
    words = set(snapshot.unpack_strings(arrays["r.vocab"], r["vocab"]))
    words |= set(snapshot.unpack_strings(arrays["g.names"], g["names"]))
    return paths, words


@pytest.fixture
def reads(monkeypatch):
    """Every file the index reads (its content), by absolute path."""
    seen = []
    real = index_module.read_source
    monkeypatch.setattr(index_module, "read_source", lambda path, n: (seen.append(path), real(path, n))[1])
    return seen


def test_a_restart_reads_no_unchanged_file_and_answers_as_a_fresh_build(repo, tmp_path, reads):
    first = open_engine(repo, config_for(tmp_path))
    expected = answers(first, repo)
    first.close()
    assert first.state_path.exists()
    assert expected == fresh_answers(repo, tmp_path, "fresh")
    kinds = {record[0] for query in expected for record in query}
    assert {"retrieval", "repo_map"} <= kinds

    reads.clear()
    second = ContextEngine(repo, config_for(tmp_path), slow_executor=ThreadPoolExecutor(1))
    stats = second.build()
    assert stats.parsed == 0 and reads == []  # neither the index nor retrieval nor the repo map opened a file
    assert second._saved is not None and len(second.retriever) > 0
    assert answers(second, repo) == expected
    # Only the files of the windows it returned were read back (for their text).
    returned = {str(repo / record[1]) for query in expected for record in query
                if record[0] in ("retrieval", "duplicate retrieval")}
    assert reads and set(reads) <= returned
    second.close()


def test_the_snapshot_is_private_and_holds_no_text(repo, tmp_path):
    engine = open_engine(repo, config_for(tmp_path))
    engine.close()
    assert stat.S_IMODE(os.stat(engine.state_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(engine.state_path.parent).st_mode) == 0o700
    data = engine.state_path.read_bytes()
    assert b"price_cents * (100 - percent)" not in data and b"self.levels.get(sku, 0)" not in data
    assert not [p for p in os.listdir(engine.state_path.parent) if p.endswith(".tmp")]


def test_an_edit_shows_after_an_update_and_after_a_restart(repo, tmp_path):
    engine = open_engine(repo, config_for(tmp_path))
    (repo / "shop/checkout.py").write_text(FILES["shop/checkout.py"] + "\n\ndef zebra_refund(item):\n"
                                           "    return item.discounted(50)\n", encoding="utf-8")
    engine.file_changed("shop/checkout.py")
    hits = engine.retriever.query("zebra_refund(item)", k=1)
    assert [(r.path, "zebra_refund" in r.text) for r in hits] == [("shop/checkout.py", True)]
    engine.close()

    # Changed again while no engine ran: the next start finds the new sha1 and reads that file (only that one).
    (repo / "shop/checkout.py").write_text(FILES["shop/checkout.py"] + "\n\ndef yak_refund(item):\n"
                                           "    return item.discounted(75)\n", encoding="utf-8")
    restarted = open_engine(repo, config_for(tmp_path))
    assert [r.path for r in restarted.retriever.query("yak_refund(item)", k=1)] == ["shop/checkout.py"]
    assert not [r for r in restarted.retriever.query("zebra_refund", k=5) if "zebra" in r.text]
    graph = restarted._current_graph()[1]
    assert "yak_refund" in graph.names
    assert answers(restarted, repo) == fresh_answers(repo, tmp_path, "fresh")
    restarted.close()


def test_a_deleted_file_disappears(repo, tmp_path):
    engine = open_engine(repo, config_for(tmp_path))
    assert [r.path for r in engine.retriever.query("nightly", k=1)] == ["shop/report.py"]
    (repo / "shop/report.py").unlink()
    engine.file_removed("shop/report.py")
    assert engine.retriever.query("nightly", k=1) == []
    assert "shop/report.py" not in engine.graph_data.stamps()
    engine.close()

    (repo / "shop/checkout.py").unlink()  # while no engine ran
    restarted = open_engine(repo, config_for(tmp_path))
    assert restarted.retriever.query("sell", k=3) == []
    paths, _ = snapshot_words(restarted)
    assert "shop/checkout.py" not in paths  # written again without it
    assert answers(restarted, repo) == fresh_answers(repo, tmp_path, "fresh")
    restarted.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "other_format", "other_code", "bad_ids",
                                    "bad_bounds", "missing_array", "other_index"])
def test_a_damaged_or_foreign_snapshot_is_rebuilt(repo, tmp_path, damage, monkeypatch):
    engine = open_engine(repo, config_for(tmp_path))
    engine.close()
    path = engine.state_path
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "truncated":
        path.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "other_format":
        monkeypatch.setattr(engine_module, "STATE_FORMAT", engine_module.STATE_FORMAT + 1)
    elif damage == "other_code":
        monkeypatch.setattr(engine_module, "_state_code", lambda: "something-else")
    elif damage == "other_index":  # the index database made again: what was derived from the old one is void
        os.remove(engine.index.db_path)
    else:
        meta, arrays = snapshot.load(path)
        arrays = {k: np.array(v) for k, v in arrays.items()}
        if damage == "bad_ids":
            arrays["r.ids"][:] = 10**6
        elif damage == "bad_bounds":
            arrays["g.ref_bounds"][-1] += 5
        else:
            del arrays["r.indptr"]
        snapshot.save(path, meta, arrays)
    damaged = path.read_bytes()
    restarted = open_engine(repo, config_for(tmp_path))  # no crash
    assert answers(restarted, repo) == fresh_answers(repo, tmp_path, "fresh")
    restarted.close()
    assert path.read_bytes() != damaged  # written again, whole
    meta, arrays = snapshot.load(path)
    assert meta["identity"] == restarted._state_identity()
    again = ContextEngine(repo, config_for(tmp_path), slow_executor=ThreadPoolExecutor(1))
    assert again._load_state() is True
    again.close()


def test_the_snapshot_never_holds_files_the_gate_refuses(repo, tmp_path):
    engine = open_engine(repo, config_for(tmp_path))
    paths, words = snapshot_words(engine)
    assert paths == set(engine.index.files())
    assert not {"config/secrets.py", ".env", "scratch/notes.py"} & paths
    assert not {w for w in words if w.startswith("quux")}
    engine.close()

    # A file ignored later: the next start drops it from the index and writes the snapshot again without it.
    (repo / "shop/legacy.py").write_text("def quuxlegacyword():\n    return 2\n", encoding="utf-8")
    engine = open_engine(repo, config_for(tmp_path))
    assert engine.save_state() is True and "quuxlegacyword" in snapshot_words(engine)[1]
    engine.close()
    (repo / ".gitignore").write_text("scratch/\nshop/legacy.py\n", encoding="utf-8")
    engine = open_engine(repo, config_for(tmp_path))
    paths, words = snapshot_words(engine)
    assert "shop/legacy.py" not in paths and "quuxlegacyword" not in words
    assert engine.retriever.query("quuxlegacyword", k=1) == []
    engine.close()


def test_an_editor_buffer_is_never_written(repo, tmp_path):
    engine = open_engine(repo, config_for(tmp_path))
    engine.set_buffer("shop/models.py", FILES["shop/models.py"] + "\ndef quuxbufferword():\n    pass\n")
    assert [r.path for r in engine.retriever.query("quuxbufferword", k=1)] == ["shop/models.py"]
    assert engine.save_state() is False  # a buffer is part of the state: nothing written
    assert "quuxbufferword" not in snapshot_words(engine)[1]
    engine.clear_buffer("shop/models.py")
    assert engine.retriever.query("quuxbufferword", k=1) == []
    engine.close()


def test_many_changes_are_folded_into_the_snapshot(repo, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module, "STATE_FOLD_FILES", 1)
    engine = open_engine(repo, config_for(tmp_path))
    engine.close()
    before = snapshot.load(engine.state_path)[0]
    (repo / "shop/checkout.py").write_text(FILES["shop/checkout.py"] + "# one\n", encoding="utf-8")
    engine = open_engine(repo, config_for(tmp_path))  # one changed file: kept as an overlay, snapshot as it was
    engine.close()
    assert snapshot.load(engine.state_path)[0] == before and engine._saved != engine.retriever.stamps()
    (repo / "shop/report.py").write_text(FILES["shop/report.py"] + "# two\n", encoding="utf-8")
    engine = open_engine(repo, config_for(tmp_path))  # two: past the fold limit, written again
    assert engine._saved == engine.retriever.stamps() == engine.index.stamps()
    engine.close()
    (repo / "shop/models.py").write_text(FILES["shop/models.py"] + "# three\n", encoding="utf-8")
    engine = open_engine(repo, config_for(tmp_path))
    assert engine._saved != engine.retriever.stamps()
    assert engine.save_state() is True  # the `index` command folds every change in
    assert engine._saved == engine.retriever.stamps()
    engine.close()


def test_warm_state_off_writes_nothing(repo, tmp_path):
    engine = open_engine(repo, config_for(tmp_path, warm_state=False))
    assert engine.save_state() is False and not engine.state_path.exists()
    engine.close()


# -- the repo map's graph ----------------------------------------------------------------------------------------


def reference_scores(definitions, identifiers, current):
    """aider's graph with its edges listed one by one (what RepoGraph computes without listing them)."""
    import math

    defines = {}
    for d in definitions:
        defines.setdefault(d.name, set()).add(d.path)
    files = sorted(set(identifiers) | {p for ps in defines.values() for p in ps})
    node = {f: i for i, f in enumerate(files)}
    edges = [(node[r], node[t], math.sqrt(c) / len(defines[name]), (t, name))
             for r, counts in identifiers.items() for name, c in counts.items() if name in defines
             for t in defines[name] if t != r]
    n = len(files)
    out_w = np.zeros(n)
    for s, _, w, _ in edges:
        out_w[s] += w
    matrix = np.zeros((n, n))
    for s, d, w, _ in edges:
        matrix[d, s] += w / out_w[s]
    restart = np.zeros(n)
    restart[node[current]] = 1.0
    rank = np.full(n, 1.0 / n)
    for _ in range(50):
        spread = 0.85 * (matrix @ rank + rank[out_w == 0].sum() * restart) + 0.15 * restart
        if np.abs(spread - rank).sum() < 1e-8:
            rank = spread
            break
        rank = spread
    scores = Counter()
    for s, _, w, key in edges:
        scores[key] += rank[s] * w / out_w[s]
    return rank, {k: v for k, v in scores.items() if v > 0 and k[0] != current}


def random_repository(seed: int):
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(30)]
    files = [f"f{i}.py" for i in range(12)]
    definitions = [Definition(name, "function", f, line, line + 1, f"def {name}():")
                   for f in files for line, name in enumerate(rng.sample(names, rng.randint(0, 5)), 1)]
    identifiers = {f: Counter({name: rng.randint(1, 9) for name in rng.sample(names, rng.randint(0, 8))})
                   for f in files}
    return definitions, identifiers


@pytest.mark.parametrize("seed", range(8))
def test_the_factored_graph_ranks_as_the_listed_edges_do(seed):
    definitions, identifiers = random_repository(seed)
    graph = RepoGraph(definitions, identifiers)
    for current in ("f0.py", "f5.py"):
        rank, expected = reference_scores(definitions, identifiers, current)
        assert graph.pagerank(current) == pytest.approx(rank, abs=1e-12)
        got = {(d.path, d.name): score for score, d in graph.rank_definitions(current)}
        assert got == pytest.approx(expected, rel=1e-9)


def test_graph_data_follows_file_updates_like_a_rebuild():
    definitions, identifiers = random_repository(3)
    data = GraphData()
    for path, counts in identifiers.items():
        data.set_file(path, {"stale": 1}, ["gone"], stamp="old")
    for path, counts in identifiers.items():
        data.set_file(path, counts, [d.name for d in definitions if d.path == path], stamp="sha")
    data.set_file("extra.py", {"n1": 3}, ["zz"], stamp="x")
    data.set_file("extra.py", None)
    by_key = {}
    for d in definitions:
        by_key.setdefault((d.path, d.name), []).append(d)
    incremental = data.graph(lambda keys: {k: by_key.get(k, []) for k in keys})
    scratch = RepoGraph(definitions, identifiers)
    for current in ("f1.py", "f7.py", None):
        a = [(d.path, d.name, round(s, 12)) for s, d in incremental.rank_definitions(current)]
        b = [(d.path, d.name, round(s, 12)) for s, d in scratch.rank_definitions(current)]
        assert a == b
    version = data.version
    data.set_file("f1.py", identifiers["f1.py"], [d.name for d in definitions if d.path == "f1.py"], stamp="sha")
    assert data.version == version  # the same data: no new graph
    # The snapshot's round trip keeps it all (unused names dropped).
    meta, arrays = data.state()
    restored = GraphData()
    assert restored.restore(meta, arrays) == data.stamps()
    again = restored.graph(lambda keys: {k: by_key.get(k, []) for k in keys})
    assert [(d.path, d.name) for _, d in again.rank_definitions("f1.py")] == \
        [(d.path, d.name) for _, d in incremental.rank_definitions("f1.py")]
    assert "stale" not in restored._names and "gone" not in restored._names


def test_enough_looks_up_fewer_names_but_ranks_the_same_first():
    definitions, identifiers = random_repository(5)
    asked = []
    by_key = {}
    for d in definitions:
        by_key.setdefault((d.path, d.name), []).append(d)

    def lookup(keys):
        asked.append(len(keys))
        return {k: by_key.get(k, []) for k in keys}

    graph = RepoGraph(definitions, identifiers, lookup=lookup)
    full = graph.rank_definitions("f2.py")
    few = graph.rank_definitions("f2.py", enough=4)
    assert few[:4] == full[:4] and asked[1] < asked[0]


def test_an_indexed_file_that_cannot_be_read_does_not_stop_the_snapshot(repo, tmp_path, monkeypatch):
    engine = open_engine(repo, config_for(tmp_path))
    engine.close()
    real = index_module.read_source

    def unreadable(path, n):
        if path.endswith("report.py"):
            raise index_module.Unindexable("permission denied")
        return real(path, n)

    monkeypatch.setattr(index_module, "read_source", unreadable)
    os.remove(engine.state_path)
    engine = open_engine(repo, config_for(tmp_path))
    assert "shop/report.py" not in engine.retriever.stamps() and engine.state_path.exists()
    meta, arrays = snapshot.load(engine.state_path)
    assert "shop/report.py" not in snapshot.unpack_strings(arrays["r.paths"], meta["retrieval"]["files"])
    engine.close()
    monkeypatch.setattr(index_module, "read_source", real)
    engine = open_engine(repo, config_for(tmp_path))  # readable again: read and served
    assert [r.path for r in engine.retriever.query("nightly", k=1)] == ["shop/report.py"]
    engine.close()


@pytest.mark.parametrize("budget", [1, 7, 40, 400])
def test_fit_graph_fits_as_the_whole_ranking_does(budget):
    from repocomplete.context_engine.repo_map import fit, fit_graph

    definitions, identifiers = random_repository(6)
    graph = RepoGraph(definitions, identifiers)
    for current in ("f0.py", "f3.py"):
        assert fit_graph(graph, current, budget) == fit(graph.rank_definitions(current), budget)

        def free(path, text):  # a counter by which everything fits: the lookups must go on
            return 0

        assert fit_graph(graph, current, budget, record_tokens=free) == \
            fit(graph.rank_definitions(current), budget, record_tokens=free)


def test_a_window_read_back_is_the_whole_files_scrubbed_text_or_nothing(repo, tmp_path):
    """Windows are read back one by one and scrubbed on their own; a secret spanning lines is masked only with
    the lines around it, so a window cut inside it is checked against its content key and passed over."""
    key_lines = ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7Zk" + str(i) + "qwerty" for i in range(6)]
    text = ("def load_signing_material():\n    blob = '''\n-----BEGIN PRIVATE KEY-----\n" + "\n".join(key_lines)
            + "\n-----END PRIVATE KEY-----\n'''\n    return blob\n")
    (repo / "shop/signing.py").write_text(text, encoding="utf-8")
    config = config_for(tmp_path, window_lines=4, window_stride=2)
    engine = open_engine(repo, config)
    engine.close()
    engine = open_engine(repo, config)  # restored: no window text in memory
    scrubbed = engine.index.text("shop/signing.py")
    assert "qwerty" not in scrubbed
    # Lines 7-10 and 9-12 scrubbed on their own keep key lines (no BEGIN in view): never returned.
    hits = engine.retriever.query("BEGIN PRIVATE KEY END redacted blob", k=20)
    assert [(r.start_line, r.end_line) for r in hits if r.path == "shop/signing.py"] == [(3, 6), (1, 4)]
    assert all("qwerty" not in r.text for r in hits)
    for r in hits:
        if r.path == "shop/signing.py":
            assert r.text == "\n".join(scrubbed.split("\n")[r.start_line - 1 : r.end_line])
    engine.close()
