"""The retrieval provider: windows, BM25 / Jaccard ranking, exclusion, updates, dense fusion, RepoCoder's draft."""

from __future__ import annotations

import re

import bm25s
import numpy as np
import pytest

from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.retrieval import Retriever, query_text_for
from repocomplete.context_engine.sparse import tokenize, windows

SMALL = ContextConfig(window_lines=10, window_stride=5)


def numbered(n: int, name: str = "line") -> str:
    """n distinct filler lines: `x_1 = 1`, `x_2 = 2`, ... (no token shared with the markers the tests use)."""
    return "\n".join(f"{name}_{i} = {i}" for i in range(1, n + 1)) + "\n"


def with_lines(text: str, changes: dict[int, str]) -> str:
    lines = text.split("\n")
    for n, line in changes.items():
        lines[n - 1] = line
    return "\n".join(lines)


def spans(records) -> list[tuple[str, int, int]]:
    return [(r.path, r.start_line, r.end_line) for r in records]


# -- text ------------------------------------------------------------------------------------------------------


def test_tokenize_splits_snake_and_camel_case_and_drops_punctuation():
    assert tokenize("resp = parseHTTPResponse(max_len) + 2;") == [
        "resp", "parsehttpresponse", "parse", "http", "response", "max_len", "max", "len", "2",
    ]
    assert tokenize("__init__ -> {}") == ["__init__"]  # one part only: no duplicate


def test_windows_have_exact_spans_and_skip_blank_ones():
    text = numbered(25)
    got = windows(text, 10, 5)
    assert [(s, e) for s, e, _ in got] == [(1, 10), (6, 15), (11, 20), (16, 25)]
    assert got[1][2] == "\n".join(f"line_{i} = {i}" for i in range(6, 16))
    assert [(s, e) for s, e, _ in windows("a\nb\nc", 10, 5)] == [(1, 3)]
    # lines 13-30 blank: the windows holding nothing but whitespace are not made
    assert [(s, e) for s, e, _ in windows(numbered(12) + "\n" * 18, 10, 5)] == [(1, 10), (6, 15), (11, 20)]
    assert windows("", 10, 5) == []


def test_retriever_counts_windows_per_document():
    r = Retriever(SMALL)
    r.add_document("a.py", numbered(25))
    r.add_document("b.py", "x = 1\n")
    assert r.windows_of("a.py") == [(1, 10), (6, 15), (11, 20), (16, 25)]
    assert r.windows_of("b.py") == [(1, 1)]
    assert len(r) == 5


def test_query_text_for_takes_the_last_non_empty_lines():
    prefix = "import os\n\ndef f(a):\n    \n    b = a + 1\n    return os.pa"
    assert query_text_for(prefix, 3) == "def f(a):\n    b = a + 1\n    return os.pa"
    assert query_text_for(prefix, 10) == "import os\ndef f(a):\n    b = a + 1\n    return os.pa"
    assert query_text_for(prefix, 0) == ""


# -- BM25 ------------------------------------------------------------------------------------------------------


A_PY = with_lines(numbered(40, "a"), {23: "    frobnicate_widget(size, colour)"})


def repo(r: Retriever) -> None:
    r.add_document("util/a.py", A_PY)
    r.add_document("util/b.py", numbered(30, "b"))
    r.add_document("c.py", numbered(15, "c"))


def test_the_window_with_a_distinctive_identifier_ranks_first():
    r = Retriever(SMALL)
    repo(r)
    got = r.query("w = frobnicate_widget(", k=3)
    # line 23 lies in the windows 16-25 and 21-30; on a tie the earlier window comes first
    assert spans(got) == [("util/a.py", 16, 25), ("util/a.py", 21, 30)]
    assert got[0].kind == "retrieval"
    assert got[0].text == "\n".join(A_PY.split("\n")[15:25])
    assert got[0].score == pytest.approx(got[1].score) and got[0].score > 0
    assert got[0].why == f"BM25 {got[0].score:.1f} for the 1 line above the cursor"
    assert r.query("nothing_matches_this", k=3) == []


def test_scores_are_those_of_a_bm25s_index_over_the_windows():
    r = Retriever(SMALL)
    repo(r)
    r.add_document("d.py", "def frobnicate(widget):\n    return widget.size * 2\n\nframe_size = 3\n")
    texts = [w for path in ("util/a.py", "util/b.py", "c.py", "d.py")
             for w in (r._counts[k].text for k in r._files[path].keys)]
    reference = bm25s.BM25()  # k1 1.5, b 0.75, lucene: what the retriever builds by hand
    reference.index([tokenize(t) for t in texts], show_progress=False)
    query = "frobnicate_widget(widget.size) + a_12 * frame_size"
    expected = reference.get_scores(tokenize(query))
    got = {(rec.path, rec.start_line): rec.score for rec in r.query(query, k=100)}
    rows = [(p, s) for p in ("util/a.py", "util/b.py", "c.py", "d.py") for s, _ in r.windows_of(p)]
    assert got == pytest.approx({row: float(s) for row, s in zip(rows, expected) if s > 0}, rel=1e-5)
    assert len(got) >= 4


def test_exclude_hides_only_the_current_files_windows_that_overlap_the_cursor():
    r = Retriever(SMALL)
    marker = "zeta_marker(1)"
    current = with_lines(numbered(40, "cur"), {3: marker, 33: marker})
    r.add_document("cur.py", current)
    r.add_document("other.py", with_lines(numbered(8, "o"), {4: marker}))
    everything = r.query("zeta_marker", k=10)
    assert sorted(spans(everything)) == [("cur.py", 1, 10), ("cur.py", 26, 35), ("cur.py", 31, 40), ("other.py", 1, 8)]
    # the cursor on line 34, its window lines 24-34: windows 16-25, 21-30, 26-35 and 31-40 overlap it
    kept = r.query("zeta_marker", k=10, exclude=("cur.py", 24, 34))
    assert sorted(spans(kept)) == [("cur.py", 1, 10), ("other.py", 1, 8)]
    # the same lines of another file exclude nothing
    assert len(r.query("zeta_marker", k=10, exclude=("elsewhere.py", 24, 34))) == 4


def test_remove_document_removes_its_windows():
    r = Retriever(SMALL)
    repo(r)
    assert r.query("frobnicate_widget", k=3)
    n = len(r)
    r.remove_document("util/a.py")
    assert len(r) == n - 7  # 40 lines: windows start at 1, 6, ..., 31
    assert r.windows_of("util/a.py") == []
    assert r.query("frobnicate_widget", k=3) == []
    assert spans(r.query("b_7", k=1)) == [("util/b.py", 1, 10)]


def test_re_adding_a_changed_document_updates_the_results():
    r = Retriever(SMALL)
    repo(r)
    r.add_document("new.py", "alphaville = compute()\n")
    assert spans(r.query("alphaville", k=2)) == [("new.py", 1, 1)]
    r.add_document("new.py", "x = 0\n\nbetamax = compute()\n")
    assert r.query("alphaville", k=2) == []
    got = r.query("betamax", k=2)
    assert spans(got) == [("new.py", 1, 3)] and got[0].text == "x = 0\n\nbetamax = compute()"


WIDGETS_EDITED = with_lines(numbered(40, "w"), {5: "size = 0", 30: "colour = frobnicate_widget(size)"})


def big_repo(r: Retriever) -> None:
    """About 2,500 windows of 4 lines: big enough that edits go to the overlay instead of a full rebuild."""
    for f in range(10):
        r.add_document(f"pkg/m{f}.py", numbered(250, f"m{f}"))
    r.add_document("widgets.py", with_lines(numbered(40, "w"), {5: "size = frobnicate_widget(size)", 30: "colour = 1"}))


def test_edits_score_like_a_full_rebuild():
    """Edited files are scored in an overlay with the corpus's current statistics: ranked as from scratch."""
    config = ContextConfig(window_lines=4, window_stride=1)
    r = Retriever(config)
    big_repo(r)
    r.add_document("gone.py", "frobnicate_widget(colour)\n")
    query = "frobnicate_widget(size, colour) + m3_7"
    assert spans(r.query(query, k=1)) == [("gone.py", 1, 1)]  # the base index
    r.add_document("widgets.py", WIDGETS_EDITED)
    r.add_document("new.py", "widget = frobnicate_widget(colour)\n")
    r.remove_document("gone.py")
    overlay = r.query(query, k=10)
    assert len(r._index.segments) == 2 and r._index.dead.sum() == 37 + 1  # the overlay did the work

    fresh = Retriever(config)
    big_repo(fresh)
    fresh.add_document("widgets.py", WIDGETS_EDITED)
    fresh.add_document("new.py", "widget = frobnicate_widget(colour)\n")
    scratch = fresh.query(query, k=10)
    assert len(fresh._index.segments) == 1
    assert spans(overlay) == spans(scratch)
    assert spans(overlay)[:5] == [("new.py", 1, 1), ("widgets.py", 27, 30), ("widgets.py", 28, 31),
                                  ("widgets.py", 29, 32), ("widgets.py", 30, 33)]
    assert [x.score for x in overlay] == pytest.approx([x.score for x in scratch], rel=0.01)
    r.build(full=True)
    assert len(r._index.segments) == 1
    assert [x.score for x in r.query(query, k=10)] == pytest.approx([x.score for x in scratch], rel=1e-6)


def test_many_edits_forget_old_windows_and_tokens():
    r = Retriever(ContextConfig(window_lines=4, window_stride=2))
    r.add_document("junk.py", numbered(300, "junk"))  # its tokens take the low ids, then go
    r.add_document("lib.py", "def helper(x):\n    return x\n")
    r.remove_document("junk.py")
    word = lambda i: "q" + "".join("abcdefghij"[int(d)] for d in str(i))  # noqa: E731 - one token, no parts
    for i in range(1500):  # typing: every keystroke a new version of the buffer
        r.add_document("buf.py", f"value = {word(i)}\nhelper(value)\n")
        if i % 100 == 0:
            assert spans(r.query(word(i), k=1)) == [("buf.py", 1, 2)]
    assert len(r._counts) < 1100 and len(r._vocab) < 1100  # 1500 versions were made, the stale ones dropped
    assert spans(r.query(word(1499), k=1)) == [("buf.py", 1, 2)]
    assert r.query(word(1498), k=1) == []
    assert spans(r.query("def helper", k=1)) == [("lib.py", 1, 2)]
    r.remove_document("lib.py")
    r.add_document("lib.py", "def helper(x):\n    return x\n")  # from the cache, renumbered with the vocabulary
    got = r.query("def helper", k=2)
    assert spans(got) == [("lib.py", 1, 2), ("buf.py", 1, 2)] and got[0].score > 2 * got[1].score


def test_identical_windows_are_returned_once():
    r = Retriever(SMALL)
    block = "def shared_helper(v):\n    return v * 2\n"
    r.add_document("a.py", block)
    r.add_document("b.py", block)
    r.add_document("c.py", "y = shared_helper(3)\nz = y + y + y + y + y + y\n")
    got = r.query("shared_helper(v)", k=5)
    assert spans(got) == [("a.py", 1, 2), ("c.py", 1, 2)]
    # the copy hidden by the exclusion gives way to the other one
    assert spans(r.query("shared_helper(v)", k=5, exclude=("a.py", 1, 2))) == [("b.py", 1, 2), ("c.py", 1, 2)]


# -- Jaccard ---------------------------------------------------------------------------------------------------


def test_jaccard_ranks_by_token_set_overlap():
    r = Retriever(SMALL)
    r.add_document("a.py", "alpha beta gamma")
    r.add_document("b.py", "alpha beta beta beta")
    r.add_document("c.py", "alpha delta epsilon zeta")
    r.add_document("d.py", "omega")
    got = r.query("beta alpha", k=5, method="jaccard")
    assert spans(got) == [("b.py", 1, 1), ("a.py", 1, 1), ("c.py", 1, 1)]
    assert [x.score for x in got] == pytest.approx([1.0, 2 / 3, 1 / 5])
    assert got[1].why == "Jaccard 0.67 for the 1 line above the cursor"
    with pytest.raises(ValueError):
        r.query("alpha", method="tfidf")


# -- RepoCoder -------------------------------------------------------------------------------------------------


def test_query_iterative_pulls_up_the_window_the_draft_mentions():
    r = Retriever(ContextConfig(window_lines=10, window_stride=5, query_lines=2))
    r.add_document("orders.py", "def load_orders(db):\n    rows = db.fetch('orders')\n    return rows\n")
    r.add_document("totals.py", "def order_total(order):\n    return order.price * order.quantity\n")
    prefix = "rows = load_orders(db)\nfor row in rows:\n    total = "
    assert [x.path for x in r.query(query_text_for(prefix, 2), k=2)] == ["orders.py", "totals.py"]
    got = r.query_iterative(prefix, "order_total(row)\n    log(total)", k=2)
    assert [x.path for x in got] == ["totals.py", "orders.py"]
    assert got[0].why.endswith("for the 2 lines above the cursor and the draft")


# -- dense -----------------------------------------------------------------------------------------------------


class CountingEmbedder:
    """The real MiniLM embedder, counting the texts it is asked to embed."""

    def __init__(self):
        from repocomplete.context_engine.dense import Embedder

        self.inner = Embedder.shared()
        self.dim = self.inner.dim
        self.texts: list[str] = []

    def embed(self, texts):
        self.texts += texts
        return self.inner.embed(texts)


DENSE_DOCS = {
    "stats.py": "def compute_average(values):\n    total = sum(values)\n    return total / len(values)\n",
    "mail.py": "import smtplib\n\ndef send_email(server, to, body):\n    server.sendmail('me', to, body)\n",
    "image.py": (
        "from PIL import Image\n\ndef resize_image(img, width, height):\n"
        "    return img.resize((width, height))\n"
    ),
    "net.py": "import socket\n\ndef open_connection(host, port):\n    return socket.create_connection((host, port))\n",
}


def test_dense_retrieval_finds_the_semantically_matching_window():
    embedder = CountingEmbedder()
    r = Retriever(ContextConfig(dense=True), embedder=embedder)
    for path, text in DENSE_DOCS.items():
        r.add_document(path, text)
    r.build()
    assert sorted(embedder.texts) == sorted(t.rstrip("\n") for t in DENSE_DOCS.values())
    embedder.texts.clear()
    # no token in common with stats.py: BM25 alone finds nothing there
    got = r.query("# arithmetic mean of the numbers", k=2)
    assert got[0].path == "stats.py"
    assert re.fullmatch(r"dense 0\.\d\d \(RRF\) for the 1 line above the cursor", got[0].why)  # no BM25 part
    assert embedder.texts == ["# arithmetic mean of the numbers"]  # the windows were embedded once, before
    vectors = embedder.inner.embed(["a", "def f(): pass"])
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)

    # an unchanged file removed and added again costs no embedding; a changed one costs its changed window
    embedder.texts.clear()
    r.remove_document("image.py")
    r.add_document("image.py", DENSE_DOCS["image.py"])
    r.add_document("net.py", DENSE_DOCS["net.py"] + "\nTIMEOUT = 30\n")
    fused = r.query("shrink a picture to a smaller width", k=2)
    assert embedder.texts == [DENSE_DOCS["net.py"].rstrip("\n") + "\n\nTIMEOUT = 30",
                              "shrink a picture to a smaller width"]
    assert fused[0].path == "image.py"
    assert re.fullmatch(r"dense 0\.\d\d \+ BM25 rank \d \(RRF\) for the 1 line above the cursor", fused[0].why)


# -- files on disk: texts read back, the snapshot's state ----------------------------------------------------------


def test_stamped_documents_keep_no_text_and_read_it_back_checked():
    disk = {"util/a.py": A_PY, "c.py": numbered(15, "c")}
    reads = []

    def read_text(path):
        reads.append(path)
        return disk.get(path)

    r = Retriever(SMALL, read_text=read_text)
    for path, text in disk.items():
        r.add_document(path, text, stamp="sha-" + path)
    assert not r._counts and r.stamps() == {"util/a.py": "sha-util/a.py", "c.py": "sha-c.py"}
    plain = Retriever(SMALL)
    for path, text in disk.items():
        plain.add_document(path, text)
    query = "w = frobnicate_widget("
    assert r.query(query, k=3) == plain.query(query, k=3) and reads == ["util/a.py"]
    # The file changed on disk and nobody said so yet: its windows are passed over, never shown with other text.
    disk["util/a.py"] = A_PY.replace("frobnicate_widget", "other_name")
    r._texts.clear()
    assert [x.path for x in r.query(query, k=3)] == []
    r.add_document("util/a.py", disk["util/a.py"], stamp="sha-new")
    assert r.query("other_name", k=1)[0].path == "util/a.py"
    # A buffer keeps its text (no stamp): read_text is not asked for it.
    reads.clear()
    r.add_document("buf.py", "def frobnicate_widget_buffer():\n    pass\n")
    assert r.query("frobnicate_widget_buffer", k=1)[0].path == "buf.py" and reads == []
    assert "buf.py" not in r.stamps() and r.state() is None  # a buffer is never in a snapshot


def test_state_and_restore_score_exactly_as_a_full_build():
    config = ContextConfig(window_lines=4, window_stride=1)
    r = Retriever(config)
    big_repo(r)
    r.add_document("junk.py", "one_off_token_nobody_else_has = 1\n")
    r.remove_document("junk.py")  # its token is in the vocabulary, not in the snapshot
    assert r.state() is None  # documents without stamps
    s = Retriever(config, read_text=lambda path: texts.get(path))
    texts = {}
    for f in range(10):
        texts[f"pkg/m{f}.py"] = numbered(250, f"m{f}")
    texts["widgets.py"] = with_lines(numbered(40, "w"), {5: "size = frobnicate_widget(size)", 30: "colour = 1"})
    for path, text in texts.items():
        s.add_document(path, text, stamp=path.upper())
    s.add_document("junk.py", "one_off_token_nobody_else_has = 1\n", stamp="J")
    s.remove_document("junk.py")
    meta, arrays = s.state()
    assert "one_off_token_nobody_else_has" not in bytes(arrays["vocab"]).decode()
    restored = Retriever(config, read_text=lambda path: texts.get(path))
    assert restored.restore(meta, arrays) == {p: p.upper() for p in texts}
    for query in ("frobnicate_widget(size, colour) + m3_7", "m1_10 = 10", "size"):
        for method in ("bm25", "jaccard"):
            got = [(x.path, x.start_line, x.score, x.text) for x in restored.query(query, k=10, method=method)]
            want = [(x.path, x.start_line, x.score, x.text) for x in r.query(query, k=10, method=method)]
            assert got == want
    # Edits after a restore go to the overlay over the restored base, as they would over a built one.
    texts["widgets.py"] = WIDGETS_EDITED
    restored.add_document("widgets.py", WIDGETS_EDITED, stamp="W2")
    r.add_document("widgets.py", WIDGETS_EDITED)
    query = "frobnicate_widget(size, colour)"
    assert spans(restored.query(query, k=5)) == spans(r.query(query, k=5))
    assert len(restored._index.segments) == 2
    restored.build(full=True)
    assert [x.score for x in restored.query(query, k=5)] == pytest.approx([x.score for x in r.query(query, k=5)])


def test_dense_state_restores_the_embeddings_and_embeds_nothing_again():
    embedder = CountingEmbedder()
    config = ContextConfig(dense=True)
    r = Retriever(config, embedder=embedder, read_text=DENSE_DOCS.get)
    for path, text in DENSE_DOCS.items():
        r.add_document(path, text, stamp=path)
    query = "# arithmetic mean of the numbers"
    expected = [(x.path, x.score, x.why, x.text) for x in r.query(query, k=2)]
    meta, arrays = r.state()
    assert arrays["vectors"].shape == (len(DENSE_DOCS), embedder.dim)
    embedder.texts.clear()
    restored = Retriever(config, embedder=embedder, read_text=DENSE_DOCS.get)
    restored.restore(meta, arrays)
    assert [(x.path, x.score, x.why, x.text) for x in restored.query(query, k=2)] == expected
    assert embedder.texts == [query]  # the windows' vectors came from the snapshot
    # Saved without dense retrieval, then restored with it: embedded from the texts read back.
    sparse_only = Retriever(ContextConfig(), read_text=DENSE_DOCS.get)
    for path, text in DENSE_DOCS.items():
        sparse_only.add_document(path, text, stamp=path)
    meta, arrays = sparse_only.state()
    assert "vectors" not in arrays and Retriever(ContextConfig()).state()[0]["windows"] == 0  # (empty: fine too)
    embedder.texts.clear()
    later = Retriever(config, embedder=embedder, read_text=DENSE_DOCS.get)
    later.restore(meta, arrays)
    assert later.query(query, k=1)[0].path == "stats.py"
    assert sorted(embedder.texts[:-1]) == sorted(t.rstrip("\n") for t in DENSE_DOCS.values())


def test_repo_map_top_keys_equal_a_full_stable_sort():
    """The repo map sorts only the best scores: the same order as a stable sort of all of them, ties included."""
    import numpy as np

    from repocomplete.context_engine.repo_map import _top

    rng = np.random.default_rng(3)
    for n in (0, 1, 5, 2000, 2001, 5000):
        for spread in (3, 50, 10**6):  # many ties, some, hardly any
            scores = rng.integers(0, spread, n).astype(np.float64) / spread
            scores[rng.random(n) < 0.3] = 0.0
            for limit in (1, 10, 2000):
                assert _top(scores, limit).tolist() == np.argsort(-scores, kind="stable")[:limit].tolist()


def test_repo_map_graph_self_references_equal_a_set_membership_test():
    """Each reference of a file to a name it defines itself is found from the sorted references (one entry per
    (file, name)); the graph's weights are those a plain membership test (np.isin) gives, and with repeated
    (file, name) entries, which take that test, too."""
    from repocomplete.context_engine.repo_map import RepoGraph

    def reference(files, names, ref_file, ref_name, ref_count, def_file, def_name):
        n, n_names = len(files), len(names)
        definers = np.bincount(def_name, minlength=n_names).astype(np.float64)
        inv = np.divide(1.0, definers, out=np.zeros(n_names), where=definers > 0)
        keep = definers[ref_name] > 0
        ref_file, ref_name, weight = ref_file[keep], ref_name[keep], np.sqrt(ref_count[keep])
        self_ref = np.isin(ref_file * n_names + ref_name, def_file * n_names + def_name)
        return np.bincount(ref_file, weights=weight * (definers[ref_name] - self_ref) * inv[ref_name], minlength=n)

    rng = np.random.default_rng(5)
    for trial in range(40):
        n, n_names = int(rng.integers(1, 30)), int(rng.integers(1, 40))
        files, names = [f"f{i}.py" for i in range(n)], [f"n{i}" for i in range(n_names)]
        pairs = {(int(f), int(m)) for f, m in zip(rng.integers(0, n, 200), rng.integers(0, n_names, 200))}
        refs = sorted(pairs)
        if trial % 4 == 3 and refs:
            refs += refs[: len(refs) // 3]  # repeated pairs
        defs = sorted({(int(f), int(m)) for f, m in zip(rng.integers(0, n, 60), rng.integers(0, n_names, 60))})
        arrays = (np.array([f for f, _ in refs], np.int64), np.array([m for _, m in refs], np.int64),
                  rng.integers(1, 9, len(refs)).astype(np.float64), np.array([f for f, _ in defs], np.int64),
                  np.array([m for _, m in defs], np.int64))
        graph = RepoGraph.from_arrays(files, names, *arrays, lookup=lambda keys: {})
        assert np.array_equal(graph.out_weight, reference(files, names, *arrays)), trial
