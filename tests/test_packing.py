"""Packing, the repo map and neighbours: pure functions over records and definitions."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from repocomplete.context_engine.neighbours import Neighbours
from repocomplete.context_engine.packing import MIN_NAMES, pack
from repocomplete.context_engine.records import ContextRecord, Definition
from repocomplete.context_engine.repo_map import rank_definitions, repo_map


def rec(kind, path, start, end, score, text=None):
    return ContextRecord(text or f"{kind}:{path}:{start}", path, start, end, score, kind, "test")


def tokens(text: str) -> int:
    return 10  # every record costs 10 tokens: the arithmetic below stays exact


QUOTAS = {"imports": 0.5, "retrieval": 0.3, "repo_map": 0.2}


def test_quotas_then_leftovers_by_rank_in_their_providers():
    by = {
        # an import used thirty times, then names used once: scores that fall steeply
        "imports": [rec("imports", "a.py", 1, 5, 31.0), rec("imports", "b.py", 1, 5, 2.0), rec("imports", "c.py", 1, 5, 1.0)],
        # BM25 windows: scores close together
        "retrieval": [rec("retrieval", "d.py", 1, 20, 25.0), rec("retrieval", "e.py", 1, 20, 24.5),
                      rec("retrieval", "f.py", 1, 20, 24.0)],
        "repo_map": [],
    }
    packed = pack(by, budget=50, quotas=QUOTAS, count_tokens=tokens)
    # imports quota 25 -> a, b; retrieval quota 15 -> d; leftovers take turns by their rank in their provider: e
    # (second of retrieval), then c (third of imports, before the third window on the tie); f is left over. By score
    # relative to each provider's best, c (1/31) would have come after f (24/25).
    assert [(r.kind, r.path) for r in packed.records] == [
        ("imports", "a.py"), ("imports", "b.py"), ("imports", "c.py"), ("retrieval", "d.py"), ("retrieval", "e.py")
    ]
    assert packed.tokens == 50
    assert [(r.path, why) for r, why in packed.dropped] == [("f.py", "over budget")]


def test_stable_kinds_come_first_in_the_prompt():
    by = {
        "typed_holes": [rec("typed_holes", "x.py", 3, 3, 5.0)],
        "retrieval": [rec("retrieval", "r.py", 1, 20, 1.0)],
        "repo_map": [rec("repo_map", "m.py", 1, 9, 0.1)],
        "imports": [rec("imports", "i.py", 1, 2, 0.5)],
    }
    packed = pack(by, budget=100, quotas={k: 0.25 for k in by}, count_tokens=tokens)
    assert [r.kind for r in packed.records] == ["repo_map", "imports", "retrieval", "typed_holes"]


def test_duplicates_and_the_current_window_are_dropped():
    same_text = "def f(): pass"
    by = {
        "retrieval": [
            rec("retrieval", "a.py", 1, 20, 0.9),
            rec("retrieval", "a.py", 11, 30, 0.8),  # overlaps the first window
            rec("retrieval", "cur.py", 40, 60, 0.7),  # inside the current file's window
            rec("retrieval", "cur.py", 200, 220, 0.6),  # elsewhere in the current file: allowed
        ],
        "imports": [rec("imports", "b.py", 1, 1, 0.5, same_text), rec("imports", "c.py", 1, 1, 0.4, same_text)],
    }
    packed = pack(by, 1000, {"retrieval": 0.5, "imports": 0.5}, tokens, own_window=("cur.py", 30, 80))
    assert [(r.path, r.start_line) for r in packed.records] == [("b.py", 1), ("a.py", 1), ("cur.py", 200)]
    assert sorted((r.path, r.start_line, why) for r, why in packed.dropped) == [
        ("a.py", 11, "duplicate"), ("c.py", 1, "duplicate"), ("cur.py", 40, "already in the current file's window")
    ]


def test_one_definition_from_two_providers_is_shown_once_the_cursors_summary_first():
    """A class both imported and a typed hole's type: the typed hole's summary (focused on the cursor) is kept, the
    import's and the repo map's of the same span are duplicates; where the focused one does not fit, the next
    provider's summary of that definition takes its place. Windows inside the class are other text: kept."""
    def by(hole_text):
        return {
            "repo_map": [rec("repo_map", "t.py", 10, 90, 0.9, "class Table: ...")],
            "retrieval": [rec("retrieval", "t.py", 20, 39, 0.9)],
            "imports": [rec("imports", "t.py", 10, 90, 0.8, "class Table:\n    def add_column(self, header): ...")],
            "typed_holes": [rec("typed_holes", "t.py", 10, 90, 0.7, hole_text)],
        }
    quotas = {"repo_map": 0.25, "retrieval": 0.25, "imports": 0.25, "typed_holes": 0.25}

    def cost(path, text):
        return 30 if "add_row" in text and "huge" in text else 10

    packed = pack(by("class Table:\n    def add_row(self, *cells): ..."), 100, quotas, record_tokens=cost)
    assert sorted((r.kind, r.start_line) for r in packed.records) == [("retrieval", 20), ("typed_holes", 10)]
    assert sorted((r.kind, why) for r, why in packed.dropped) == [("imports", "duplicate"), ("repo_map", "duplicate")]
    packed = pack(by("class Table:\n    def add_row(self, *cells): ...  # huge"), 100, quotas, record_tokens=cost)
    assert sorted((r.kind, r.start_line) for r in packed.records) == [("imports", 10), ("retrieval", 20)]


def test_zero_budget_keeps_nothing():
    packed = pack({"imports": [rec("imports", "a.py", 1, 1, 1.0)]}, 0, {"imports": 1.0}, tokens)
    assert packed.records == [] and packed.tokens == 0


def d(name, path, line, parent=""):
    return Definition(name, "function", path, line, line + 3, f"def {name}():", parent=parent)


def test_repo_map_ranks_what_the_current_file_uses():
    defs = [d("load", "io.py", 1), d("save", "io.py", 10), d("helper", "util.py", 1), d("unused", "util.py", 9),
            d("main", "app.py", 1)]
    identifiers = {
        "app.py": Counter({"load": 5, "helper": 1}),
        "util.py": Counter({"save": 1}),
        "io.py": Counter(),
    }
    ranked = rank_definitions(defs, identifiers, current="app.py")
    names = [x.name for _, x in ranked]
    assert names[0] == "load" and set(names) == {"load", "helper", "save"}
    assert "unused" not in names and "main" not in names  # never referenced / the current file


def test_repo_map_fits_the_budget_by_binary_search():
    defs = [d(f"f{i}", f"m{i}.py", 1) for i in range(10)]
    identifiers = {"app.py": Counter({f"f{i}": 10 - i for i in range(10)})}
    full = repo_map(defs, identifiers, budget=10_000, current="app.py", count_tokens=tokens)
    assert len(full) == 10
    three = repo_map(defs, identifiers, budget=30, current="app.py", count_tokens=tokens)
    assert [r.path for r in three] == ["m0.py", "m1.py", "m2.py"]  # the most used first
    assert all(r.kind == "repo_map" and r.text.startswith("def f") for r in three)
    assert repo_map(defs, identifiers, budget=0, current="app.py") == []


def test_neighbours_newest_edit_first_and_not_the_cursor_region():
    n = Neighbours(radius=2)
    n.open("a.py", "\n".join(f"a{i}" for i in range(1, 31)))
    n.open("b.py", "\n".join(f"b{i}" for i in range(1, 31)))
    n.open("cur.py", "\n".join(f"c{i}" for i in range(1, 31)))
    n.record_edit("a.py", 10, at=1.0)
    n.record_edit("b.py", 20, at=2.0)
    n.record_edit("cur.py", 5, at=3.0)  # next to the cursor: not shown
    records = n.records(current="cur.py", cursor_line=6)
    assert [(r.path, r.start_line, r.end_line) for r in records] == [("b.py", 18, 22), ("a.py", 8, 12)]
    assert records[0].text == "b18\nb19\nb20\nb21\nb22" and records[0].why == "edited recently (line 20)"
    n.close("b.py")
    assert [r.path for r in n.records(current="cur.py", cursor_line=6)] == ["a.py"]


def test_a_record_too_large_for_its_quota_does_not_block_smaller_ones():
    big = ContextRecord("x " * 100, "big.py", 1, 30, 0.9, "imports", "test")
    by = {"imports": [big, rec("imports", "small.py", 1, 5, 0.5)],
          "retrieval": [rec("retrieval", f"{p}.py", 1, 20, s) for p, s in (("d", .95), ("e", .94), ("f", .93),
                                                                             ("g", .92))],
          "repo_map": []}
    packed = pack(by, budget=40, quotas=QUOTAS, count_tokens=lambda t: 100 if t == big.text else 10)
    # small.py fitted the imports' quota that the big stub could not; the windows had theirs, then the rest.
    assert sorted(r.path for r in packed.records) == ["d.py", "e.py", "f.py", "small.py"]


def test_leftovers_compete_by_score_relative_to_their_provider():
    # BM25 scores run in tens, import ranks in units: raw scores would give every leftover to retrieval.
    by = {
        "imports": [rec("imports", "a.py", 1, 5, 4.0), rec("imports", "b.py", 1, 5, 3.0)],
        "retrieval": [rec("retrieval", "d.py", 1, 20, 40.0), rec("retrieval", "e.py", 1, 20, 20.0)],
        "repo_map": [],
    }
    quotas = {"imports": 0.25, "retrieval": 0.25}
    packed = pack(by, budget=30, quotas=quotas, count_tokens=tokens)
    # Quotas: a and d; the last 10 tokens go to b (3/4 of the imports' best) before e (1/2 of retrieval's).
    assert sorted(r.path for r in packed.records) == ["a.py", "b.py", "d.py"]
    assert [(r.path, why) for r, why in packed.dropped] == [("e.py", "over budget")]


def test_a_summary_over_the_budget_shows_its_short_form_and_a_window_never_does():
    def cost(path, text):
        return len(text)  # one token a character: the short forms below are exactly priced

    long_class = ContextRecord("class Table:\n" + "    def m(self): ...\n" * 20, "table.py", 10, 400, 0.9,
                               "imports", "imported", short="class Table:\n    # members: add_row, add_column")
    window = ContextRecord("\n".join(["x = 1"] * 30), "w.py", 1, 30, 5.0, "retrieval", "BM25", short="never used")
    small = rec("imports", "a.py", 1, 2, 0.5, text="def f(): ...")
    by = {"imports": [long_class, small], "retrieval": [window]}
    packed = pack(by, budget=90, quotas={"imports": 0.3, "retrieval": 0.0}, record_tokens=cost)
    shown = {r.path: r for r in packed.records}
    assert shown["table.py"].text == "class Table:\n    # members: add_row, add_column"
    assert shown["table.py"].why == "imported (names only: the summary is over the budget)"
    assert shown["table.py"].short == "" and "short" not in shown["table.py"].to_json()
    assert shown["a.py"].text == "def f(): ..."
    # The window does not fit whole either: its head fills what is left, never its short form.
    assert shown["w.py"].text.startswith("x = 1") and "never used" not in shown["w.py"].text
    assert packed.tokens <= 90
    # Without a short form, the summary is dropped, as before.
    packed = pack({"imports": [replace(long_class, short=""), small]}, budget=90, quotas={"imports": 0.3},
                  record_tokens=cost)
    assert [r.path for r in packed.records] == ["a.py"] and ("table.py", "over budget") in [
        (r.path, why) for r, why in packed.dropped]


def test_a_fuller_record_of_a_definition_takes_the_place_of_one_it_covers():
    def cost(path, text):
        return len(text)

    header = ContextRecord("class Text(Mixin):", "text.py", 10, 900, 0.5, "repo_map", "PageRank")
    summary = ContextRecord("class Text(Mixin):\n    def stylize(self, style): ...", "text.py", 10, 900, 0.9,
                            "imports", "imported")
    # The repo map's header is chosen in its quota first; the summary then takes its place, paying the difference.
    packed = pack({"repo_map": [header], "imports": [summary]}, budget=60, quotas={"repo_map": 0.5},
                  record_tokens=cost)
    assert [r.text for r in packed.records] == [summary.text] and packed.tokens == len(summary.text)
    assert (header, "superseded by a fuller record of the same definition") in packed.dropped
    # Too large to take its place: its short form does (it covers the header too).
    big = replace(summary, text=summary.text + "\n    def other(self): ..." * 10,
                  short="class Text(Mixin):\n    # members: stylize, other")
    packed = pack({"repo_map": [header], "imports": [big]}, budget=60, quotas={"repo_map": 0.5},
                  record_tokens=cost)
    assert [r.text for r in packed.records] == [big.short] and packed.tokens == len(big.short)
    # The repo map writes a member's header as the source does (over lines); the summary its own way, on one line
    # with short defaults, or in its short form's `# members:` list: the summary still shows it.
    multi = replace(header, text='class Text(Mixin):\n    def append(\n        self, text: "Text", style=None\n'
                                 '    ) -> "Text":\n    def copy(self) -> "Text": ...')
    one_line = replace(summary, text='class Text(Mixin):\n    def append(self, text, style=None) -> "Text": ...\n'
                                     '    # also: copy')
    packed = pack({"repo_map": [multi], "imports": [one_line]}, budget=200, quotas={"repo_map": 0.5},
                  record_tokens=cost)
    assert [r.text for r in packed.records] == [one_line.text]
    missing = replace(one_line, text='class Text(Mixin):\n    def append(self, text, style=None) -> "Text": ...')
    packed = pack({"repo_map": [multi], "imports": [missing]}, budget=200, quotas={"repo_map": 0.5},
                  record_tokens=cost)
    assert [r.text for r in packed.records] == [multi.text]  # `copy` is not in the summary: it stays a duplicate
    # A record that shows something the other does not is a duplicate, as before: the first one stays.
    other = replace(header, text="class Text(Mixin):  # the repo map's own line")
    packed = pack({"repo_map": [other], "imports": [summary]}, budget=60, quotas={"repo_map": 1.0},
                  record_tokens=cost)
    assert [r.text for r in packed.records] == [other.text] and (summary, "duplicate") in packed.dropped


def test_a_short_form_over_the_budget_gives_as_many_names_as_fit():
    def cost(path, text):
        return len(text)

    names = [f"m{i:02d}" for i in range(40)]  # 3 characters each, ", " between: the first ones are the cursor's
    summary = ContextRecord("class Text(Mixin):\n" + "".join(f"    def {n}(self): ...\n" for n in names), "text.py",
                            10, 900, 0.9, "typed_holes", "type of `t`",
                            short="class Text(Mixin):\n    # members: " + ", ".join(names[:30]) + " (+10)")
    head = "class Text(Mixin):\n    # members: "
    ten = head + ", ".join(names[:10]) + " (+30)"
    packed = pack({"typed_holes": [summary]}, budget=len(ten) + 4, quotas={"typed_holes": 1.0}, record_tokens=cost)
    [shown] = packed.records
    assert shown.text == ten  # the first 10 names (an 11th is 5 characters more) and the count of the others
    assert shown.why == "type of `t` (names only, 10 of 40: the summary is over the budget)"
    assert packed.tokens == len(shown.text) <= packed.budget
    # The repo map's header of the class is in: the names take its place, paying the difference.
    header = ContextRecord("class Text(Mixin):", "text.py", 10, 900, 0.5, "repo_map", "PageRank")
    packed = pack({"repo_map": [header], "typed_holes": [summary]}, budget=len(ten) + 4,
                  quotas={"repo_map": 0.5, "typed_holes": 0.0}, record_tokens=cost)
    assert [r.text for r in packed.records] == [shown.text]
    assert (header, "superseded by a fuller record of the same definition") in packed.dropped
    # Room for fewer than MIN_NAMES names: the header stays and the summary is over the budget.
    packed = pack({"repo_map": [header], "typed_holes": [summary]}, budget=len(head) + 5 * MIN_NAMES,
                  quotas={"repo_map": 0.5, "typed_holes": 0.0}, record_tokens=cost)
    assert [r.text for r in packed.records] == [header.text]
    assert (summary, "over budget (its header is in)") in packed.dropped
