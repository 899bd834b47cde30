"""eval explain: the classifier on a hand-made repository with known answers, then the whole path (recomputed
context, provenance check, CLI) on it."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import write_tree
from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.engine import ContextEngine
from repocomplete.context_engine.errors import InputError
from repocomplete.context_engine.packing import approx_tokens
from repocomplete.context_engine.records import ContextRecord
from repocomplete.eval.explain import (
    PROMPT_LIMIT,
    PromptView,
    Site,
    TaskFacts,
    classify,
    explain,
    format_tables,
    name_uses,
    needed_definitions,
    shows,
    summarize,
)
from repocomplete.eval.options import RunOptions
from repocomplete.eval.predictions import PredictionFile, write_predictions
from repocomplete.eval.suites import EvalTask, write_tasks

MODELS = (
    "class Inventory:\n"                                  # 1
    '    """Goods on the shelves."""\n'                   # 2
    "\n"                                                  # 3
    "    def restock(self, count: int) -> int:\n"         # 4
    "        return count\n"                              # 5
    "\n"                                                  # 6
    "    def audit(self) -> list[str]:\n"                 # 7
    "        return []\n"                                 # 8
    "\n"                                                  # 9
    "\n"                                                  # 10
    "TAX_RATE = 0.2\n"                                    # 11
)
PRICING = "def price_with_tax(amount: float) -> float:\n    return amount * 1.2\n"
ORDERS = (
    "from shop.models import Inventory\n"                 # 1
    "\n"                                                  # 2
    "\n"                                                  # 3
    "def refill(inv: Inventory, n: int) -> int:\n"        # 4
    "    total = inv.restock(n)\n"                        # 5  task A: needs restock (models.py:4)
    "    return total\n"                                  # 6
    "\n"                                                  # 7
    "\n"                                                  # 8
    "def taxed(cart, amount: float) -> float:\n"          # 9
    "    value = cart.price_with_tax(amount)\n"           # 10 task B: needs price_with_tax (pricing.py:1)
    "    return value\n"                                  # 11
    "\n"                                                  # 12
    "\n"                                                  # 13
    "def local_helper(x):\n"                              # 14
    "    return x + 1\n"                                  # 15
    "\n"                                                  # 16
    "\n"                                                  # 17
    "def twice(y):\n"                                     # 18
    "    z = local_helper(y)\n"                           # 19 task C: local_helper is in the window: no need
    "    return z\n"                                      # 20
    "\n"                                                  # 21
    "\n"                                                  # 22
    "def checkout(inv: Inventory, cart) -> float:\n"      # 23 (uses of restock and price_with_tax the tasks keep)
    "    inv.restock(1)\n"                                # 24
    "    return cart.price_with_tax(1.0)\n"               # 25
)
REPO = {".git/HEAD": "ref: refs/heads/main\n", "shop/__init__.py": "", "shop/models.py": MODELS,
        "shop/pricing.py": PRICING, "shop/orders.py": ORDERS}
DEFINITIONS = {  # what the index knows, by name
    "Inventory": [Site("shop/models.py", 1)], "restock": [Site("shop/models.py", 4)],
    "audit": [Site("shop/models.py", 7)], "TAX_RATE": [Site("shop/models.py", 11)],
    "price_with_tax": [Site("shop/pricing.py", 1)], "refill": [Site("shop/orders.py", 4)],
    "taxed": [Site("shop/orders.py", 9)], "local_helper": [Site("shop/orders.py", 14)],
    "twice": [Site("shop/orders.py", 18)], "checkout": [Site("shop/orders.py", 23)],
    "get": [Site("shop/models.py", 4)],
}


def lines_of(text: str, first: int, last: int) -> str:
    return "\n".join(text.split("\n")[first - 1 : last])


def window(kind: str, path: str, text: str, first: int, last: int, score: float = 1.0) -> ContextRecord:
    return ContextRecord(lines_of(text, first, last), path, first, last, score, kind, "test")


STUB = ContextRecord("class Inventory:\n    def restock(self, count: int) -> int: ...\n    def audit(self) -> "
                     "list[str]: ...", "shop/models.py", 1, 8, 1.0, "imports", "`Inventory` imported")
MAP = ContextRecord("def price_with_tax(amount: float) -> float:", "shop/pricing.py", 1, 2, 0.5, "repo_map", "map")
PRICING_WINDOW = window("retrieval", "shop/pricing.py", PRICING, 1, 2)
MODELS_TAIL = window("retrieval", "shop/models.py", MODELS, 6, 11)  # audit and TAX_RATE, not restock


# -- the pure part ----------------------------------------------------------------------------------------------


def test_name_uses_tell_members_from_bare_names():
    assert name_uses("total = inv.restock(n)  # price_with_tax", "python") == [
        ("total", False), ("inv", False), ("restock", True), ("n", False)]
    assert name_uses("x = a . b('c.d', 1e5).e if f else None", "python") == [
        ("x", False), ("a", False), ("b", True), ("e", True), ("f", False)]  # None: a keyword


def test_needed_definitions_are_the_repositorys_names_outside_the_visible_window():
    uses = name_uses("total = inv.restock(n)", "python")
    assert needed_definitions(uses, DEFINITIONS, "shop/orders.py", (1, 6)) == {"restock": (Site("shop/models.py", 4),)}
    # defined in the visible part of the current file: the model sees it; outside it, it is needed
    uses = name_uses("z = local_helper(y)", "python")
    assert needed_definitions(uses, DEFINITIONS, "shop/orders.py", (1, 20)) == {}
    assert needed_definitions(uses, DEFINITIONS, "shop/orders.py", (18, 20)) == {
        "local_helper": (Site("shop/orders.py", 14),)}
    # a bare name is needed when the file imports it from the repository; otherwise it is a local of the same name
    uses = name_uses("value = price_with_tax(amount) * TAX_RATE", "python")
    assert needed_definitions(uses, DEFINITIONS, "shop/orders.py", (1, 10)) == {}
    assert list(needed_definitions(uses, DEFINITIONS, "shop/orders.py", (1, 10), imported={"TAX_RATE"})) == [
        "TAX_RATE"]
    # ... while a member is anybody's who defines it
    assert list(needed_definitions(name_uses("rate = shop.TAX_RATE", "python"), DEFINITIONS, "shop/orders.py",
                                   (1, 10))) == ["TAX_RATE"]
    # a member the visible text declares as an attribute is the file's own (the index has no site for it)
    uses = name_uses("return self.restock", "python")
    assert list(needed_definitions(uses, DEFINITIONS, "shop/orders.py", (1, 10))) == ["restock"]
    assert needed_definitions(uses, DEFINITIONS, "shop/orders.py", (1, 10),
                              visible_text="    def __init__(self):\n        self.restock = 0\n") == {}
    assert list(needed_definitions(uses, DEFINITIONS, "shop/orders.py", (1, 10),
                                   visible_text="        restock = 0\n")) == ["restock"]  # a local, not the member
    # builtins' and builtin types' names and dunders are nobody's, whatever the repository defines
    defs = {**DEFINITIONS, "__init__": [Site("a.py", 1)], "len": [Site("a.py", 2)]}
    assert needed_definitions(name_uses("d.get(x).__init__(len(y))", "python"), defs, "x.py", (1, 1),
                              imported={"len"}) == {}
    # in order of first use, once
    assert list(needed_definitions(name_uses("price_with_tax(TAX_RATE).restock(price_with_tax)", "python"),
                                   DEFINITIONS, "shop/orders.py", (9, 11), imported={"price_with_tax", "TAX_RATE"})
                ) == ["price_with_tax", "TAX_RATE", "restock"]


def test_a_record_shows_a_definition_when_it_holds_its_first_line_and_its_name():
    restock = DEFINITIONS["restock"]
    assert shows(STUB, "restock", restock)
    assert shows(window("retrieval", "shop/models.py", MODELS, 1, 5), "restock", restock)
    assert not shows(MODELS_TAIL, "restock", restock)  # the lines after it
    assert not shows(window("retrieval", "shop/models.py", MODELS, 5, 8), "restock", restock)  # its body only
    assert not shows(PRICING_WINDOW, "restock", restock)  # another file
    # a signature line that does not name it (a repo-map record spanning it without showing it)
    assert not shows(ContextRecord("class Inventory:", "shop/models.py", 1, 8, 1, "repo_map", ""), "restock", restock)
    assert not shows(ContextRecord("def restocking(self): ...", "shop/models.py", 1, 8, 1, "imports", ""),
                     "restock", restock)  # a longer name is not the name


def test_a_member_is_also_shown_by_an_attributes_declaration():
    sites = [Site("shop/tree.py", 30)]  # the index's only `content`: a property of another class
    field = ContextRecord("class Token:\n    kind: str\n    content: str = ''", "shop/token.py", 1, 9, 1, "imports", "")
    init = ContextRecord("def __init__(self):\n    self.content = ''", "shop/state.py", 5, 6, 1, "retrieval", "")
    local = ContextRecord("def f(t):\n    content = t.content\n    x = {content: 1}", "a.py", 1, 3, 1, "retrieval", "")
    assert shows(field, "content", sites, member=True) and shows(init, "content", sites, member=True)
    assert not shows(field, "content", sites)  # used bare, a name needs its index site
    assert not shows(local, "content", sites, member=True)  # a local variable or a use declares nothing
    assert not shows(ContextRecord("self.content == x", "a.py", 1, 1, 1, "retrieval", ""), "content", sites, True)
    f = TaskFacts("m", False, 10.0, {"content": tuple(sites)}, [], [(field, "over budget")], members=frozenset(
        {"content"}))
    assert classify(f).klass == "cut"


def facts(task_id, needed, packed=(), dropped=(), hit=False, es=50.0, in_prompt=None, depth=None):
    return TaskFacts(task_id, hit, es, {n: tuple(DEFINITIONS[n]) for n in needed}, list(packed), list(dropped),
                     in_prompt, depth or {})


def test_each_class():
    # (c) the definition in the prompt and still a miss
    e = classify(facts("c", ["restock"], packed=[STUB, PRICING_WINDOW]))
    assert e.klass == "model_miss" and e.names["restock"]["stage"] == "in_prompt"
    assert e.names["restock"]["prompt"] == ["imports"] and e.names["restock"]["mentioned"] == ["imports"]
    # the same with an exact match: a hit
    assert classify(facts("c", ["restock"], packed=[STUB], hit=True, es=100.0)).klass == "hit"
    # (b) found by retrieval, dropped over budget; or packed but lost to the model's prompt limit
    e = classify(facts("b", ["restock"], packed=[PRICING_WINDOW],
                       dropped=[(window("retrieval", "shop/models.py", MODELS, 1, 8), "over budget")]))
    assert e.klass == "cut" and e.names["restock"] == {
        "stage": "cut", "reason": "over budget", "candidates": ["retrieval"], "prompt": [], "mentioned": [],
        "depth": {}}
    # a window that only calls it names it without showing it
    call = window("retrieval", "shop/orders.py", ORDERS, 23, 25)
    e = classify(facts("b4", ["restock"], packed=[call]))
    assert e.klass == "not_retrieved" and e.names["restock"]["mentioned"] == ["retrieval"]
    e = classify(facts("b2", ["restock"], packed=[STUB, PRICING_WINDOW], in_prompt=[False, True]))
    assert e.klass == "cut" and e.names["restock"]["reason"] == PROMPT_LIMIT and e.lost == 1
    assert summarize([e])["prompt_limit_tasks"] == 1
    # over budget is the reason that counts when a definition was dropped several ways
    e = classify(facts("b3", ["restock"], dropped=[(STUB, "duplicate"),
                                                  (window("retrieval", "shop/models.py", MODELS, 1, 8), "over budget")]))
    assert e.names["restock"]["reason"] == "over budget"
    # (a) no candidate shows it (the window after it does not)
    e = classify(facts("a", ["restock"], packed=[MODELS_TAIL], dropped=[(PRICING_WINDOW, "over budget")],
                       depth={"restock": {"repo_map": 7}}))
    assert e.klass == "not_retrieved" and e.names["restock"]["candidates"] == []
    assert e.names["restock"]["depth"] == {"repo_map": 7}
    # (d) nothing needed from elsewhere
    assert classify(facts("d", [], packed=[STUB])).klass == "no_need"
    # the worst stage of the needed names decides: one in the prompt, one not retrieved
    e = classify(facts("ac", ["restock", "price_with_tax"], packed=[STUB]))
    assert e.klass == "not_retrieved"
    assert {n: v["stage"] for n, v in e.names.items()} == {"restock": "in_prompt", "price_with_tax": "not_retrieved"}
    with pytest.raises(ValueError):
        classify(facts("x", [], packed=[STUB], in_prompt=[True, False]))


def test_per_provider_recall_and_tokens():
    explanations = [
        # restock: imports in the prompt, retrieval a candidate (dropped); price_with_tax: the repo map's, in the prompt
        classify(facts("t1", ["restock", "price_with_tax"], packed=[STUB, MAP, MODELS_TAIL],
                       dropped=[(window("retrieval", "shop/models.py", MODELS, 1, 8), "over budget")], es=40.0)),
        # price_with_tax: retrieval in the prompt
        classify(facts("t2", ["price_with_tax"], packed=[PRICING_WINDOW], es=60.0)),
        # nothing needed; imports spends tokens on nothing needed
        classify(facts("t3", [], packed=[STUB], hit=True, es=100.0)),
    ]
    s = summarize(explanations, baseline_es={"t1": 30.0, "t2": 30.0, "t3": 100.0})
    assert s["needed_names"] == 3 and s["tasks_with_needs"] == 2
    assert s["stages"] == {"in_prompt": 3, "cut": 0, "not_retrieved": 0} and s["recall_any"] == 100.0
    p = s["providers"]
    assert p["imports"]["recall_candidates"] == p["imports"]["recall_prompt"] == round(100 / 3, 1)
    assert p["repo_map"]["recall_prompt"] == round(100 / 3, 1)
    assert p["retrieval"]["recall_candidates"] == round(200 / 3, 1) and p["retrieval"]["recall_prompt"] == round(
        100 / 3, 1)
    assert p["typed_holes"]["recall_candidates"] == 0.0 and p["typed_holes"]["tokens_per_task"] == 0.0
    stub, tail, pricing = approx_tokens(STUB.text), approx_tokens(MODELS_TAIL.text), approx_tokens(PRICING_WINDOW.text)
    assert p["imports"]["tokens_per_task"] == round((stub + stub) / 3, 2)
    assert p["imports"]["needed_token_share"] == round(100 * stub / (2 * stub), 1)  # t3's stub helped nothing
    assert p["retrieval"]["tokens_per_task"] == round((tail + pricing) / 3, 2)
    assert p["retrieval"]["needed_token_share"] == round(100 * pricing / (tail + pricing), 1)
    assert p["retrieval"]["candidates_per_task"] == round(3 / 3, 1)
    assert p["retrieval"]["mentions_prompt"] == round(100 / 3, 1)  # the pricing window; the models tail names none
    c = s["classes"]
    assert c["hit"]["tasks"] == 1 and c["model_miss"]["tasks"] == 2 and c["cut"]["tasks"] == 0
    assert c["model_miss"]["es"] == 50.0 and c["model_miss"]["baseline_es"] == 30.0
    assert c["model_miss"]["es_gain"] == 20.0 and c["model_miss"]["es_gain_points"] == round(40 / 3, 2)
    assert c["hit"]["es_gain_points"] == 0.0
    table = format_tables(s, "suite")
    assert "| (c) miss, definitions in the prompt | 2 | 66.7% | 50.0 | 30.0 | 20.0 | +13.3 |" in table
    assert table.count("\n| ") >= 5 + 5 + 2
    # the depth of what was not retrieved
    missed = [classify(facts(f"m{k}", ["restock"], depth={"restock": {"repo_map": r, "retrieval": 12}}))
              for k, r in enumerate((3, 30, 9))]
    d = summarize(missed)["not_retrieved_depth"]
    assert d["repo_map"] == {"found": 3, "median_rank": 9, "within_10": 2, "within_25": 2}
    assert d["retrieval"]["within_25"] == 3


# -- the prompt the model reads ---------------------------------------------------------------------------------


def test_prompt_view_finds_the_context_a_long_prompt_loses(tokenizer):
    from repocomplete.model_runtime.engine import encode_prompt
    from repocomplete.model_runtime.templates import ContextItem, PromptParts, get_template

    plain = get_template("plain")
    items = [ContextItem(f"shop/m{k}.py", f"def f{k}(x):\n    return x + {k}\n") for k in range(4)]
    parts = PromptParts("import os\n" * 50, "tail\n", "shop/orders.py", items, "shop")
    n = len(encode_prompt(tokenizer, plain, parts, "psm")[1].ids)
    assert PromptView(tokenizer, plain, "psm", n).kept(parts) == [True] * 4  # it fits
    view = PromptView(tokenizer, plain, "psm", n - 10)  # over by 10: cut by a step of (n - 10) // 4 tokens
    kept = view.kept(parts)
    assert kept[0] is False and kept == sorted(kept)  # the start goes first
    assert not view.sees_suffix and PromptView(tokenizer, get_template("starcoder"), "psm", 10).sees_suffix
    assert view.kept(PromptParts("x", "", "a.py", [], "shop")) == []


# -- the whole path on the hand-made repository -----------------------------------------------------------------


def _task(task_id: str, line_text: str, cut: int) -> EvalTask:
    start = ORDERS.index(line_text)
    end = start + len(line_text)
    return EvalTask(task_id, "shop", "shop/orders.py", ORDERS[: start + cut], line_text[cut:], ORDERS[end:],
                    ORDERS[:start].count("\n"))


TASKS = [
    _task("A", "    total = inv.restock(n)", 4),
    _task("B", "    value = cart.price_with_tax(amount)", 4),
    _task("C", "    z = local_helper(y)", 4),
]


@pytest.fixture
def hand_made(tmp_path):
    repos = tmp_path / "repos"
    write_tree(repos / "shop", REPO)
    write_tasks(TASKS, tmp_path / "tasks.jsonl")
    return repos


def _run_file(path, settings: dict, predictions: dict, contexts: dict | None = None):
    records = [{"task_id": k, "pred": v, **({"context": contexts[k]} if contexts and k in contexts else {})}
               for k, v in predictions.items()]
    write_predictions(path, records)
    PredictionFile(path).write_meta({"settings": settings, "commit": "abc1234"})


def _explain(tmp_path, repos, pred, **kw):
    return explain(TASKS, repos, pred, None, ContextConfig(index_dir=tmp_path / "index"),
                   RunOptions(context="repo", progress=False), model=None, view=None,
                   make_context_engine=lambda root, cfg: ContextEngine(root, cfg, slow_executor=ThreadPoolExecutor(1)),
                   **kw)


def test_explain_recomputes_each_tasks_context_and_classifies_it(tmp_path, hand_made):
    pred = tmp_path / "pred.jsonl"
    # imports only: it shows Inventory (and so restock); price_with_tax is not imported; local_helper is in view
    _run_file(pred, {"context": "repo", "budget": 512, "providers": ["imports"]},
              {"A": "total = inv.refill(n)", "B": "value = amount * 2", "C": "z = local_helper(y)"})
    report = _explain(tmp_path, hand_made, pred)
    by_id = {t["task_id"]: t for t in report["tasks"]}
    assert by_id["A"]["class"] == "model_miss" and by_id["A"]["names"]["restock"]["prompt"] == ["imports"]
    assert by_id["B"]["class"] == "not_retrieved" and list(by_id["B"]["names"]) == ["price_with_tax"]
    assert by_id["C"]["class"] == "hit" and by_id["C"]["names"] == {}
    assert report["header"]["providers"] == ["imports"] and report["header"]["budget"] == 512
    assert report["summary"]["providers"]["imports"]["recall_prompt"] == 50.0
    assert report["context_check"] == {"matched": 0, "differed": [], "unrecorded": 3}
    assert "| (a) miss, needed definition not retrieved | 1 |" in report["markdown"]

    # a budget too small for the stub: restock is found and cut; the run's provenance is checked
    small = tmp_path / "small.jsonl"
    bogus = {"budget": 4, "tokens": 0, "complete": True, "records": [], "dropped": []}
    _run_file(small, {"context": "repo", "budget": 4, "providers": ["imports"]},
              {"A": "total = inv.refill(n)", "B": "value = amount * 2"}, contexts={"A": bogus})
    report = _explain(tmp_path, hand_made, small)
    by_id = {t["task_id"]: t for t in report["tasks"]}
    assert by_id["A"]["class"] == "cut" and by_id["A"]["names"]["restock"]["reason"] == "over budget"
    assert report["header"]["tasks"] == 2 and report["header"]["skipped_without_prediction"] == 1
    assert report["context_check"] == {"matched": 0, "differed": ["A"], "unrecorded": 1}  # its dropped stub


def test_explain_checks_the_runs_recorded_context_and_looks_deeper(tmp_path, hand_made):
    from repocomplete.eval.runner import context_provenance

    # the provenance an identical context would record matches
    cfg = ContextConfig(index_dir=tmp_path / "index", budget_tokens=512, providers=("imports", "retrieval"),
                        slow_provider_deadline_ms=None, infer_budget_ms=None)
    engine = ContextEngine(hand_made / "shop", cfg, slow_executor=ThreadPoolExecutor(1))
    engine.build()
    text, offset = TASKS[0].buffer()
    engine.set_buffer("shop/orders.py", text)
    engine.settle()
    _, ctx = engine.prompt_parts("shop/orders.py", text, offset, budget=512)
    recorded = context_provenance(ctx)
    engine.close()
    pred = tmp_path / "pred.jsonl"
    _run_file(pred, {"context": "repo", "budget": 512, "providers": ["imports", "retrieval"]},
              {"A": "total = 0", "B": "value = 0"}, contexts={"A": recorded})
    report = _explain(tmp_path, hand_made, pred)
    assert report["context_check"] == {"matched": 1, "differed": [], "unrecorded": 1}
    by_id = {t["task_id"]: t for t in report["tasks"]}
    assert by_id["A"]["names"]["restock"]["prompt"] == ["imports", "retrieval"]
    assert by_id["B"]["names"]["price_with_tax"]["prompt"] == ["retrieval"]  # pricing.py's window
    # the repo map alone with no room for a signature: nothing is a candidate, but its whole ranking has them
    _run_file(pred, {"context": "repo", "budget": 4, "providers": ["repo_map"]}, {"A": "total = 0", "B": "value = 0"})
    report = _explain(tmp_path, hand_made, pred)
    by_id = {t["task_id"]: t for t in report["tasks"]}
    for task_id, name in (("A", "restock"), ("B", "price_with_tax")):
        v = by_id[task_id]["names"][name]
        assert v["stage"] == "not_retrieved" and v["candidates"] == [] and v["depth"]["repo_map"] >= 1
        assert "retrieval" not in v["depth"]  # not one of the run's providers
    assert report["summary"]["not_retrieved_depth"]["repo_map"]["found"] == 2
    assert "Not retrieved, deeper: repo_map ranks 2 of them" in report["markdown"]


def test_explain_refuses_runs_it_cannot_recompute(tmp_path, hand_made):
    pred = tmp_path / "pred.jsonl"
    _run_file(pred, {"context": "infile"}, {"A": "x"})
    with pytest.raises(InputError, match="repository-context run"):
        _explain(tmp_path, hand_made, pred)
    _run_file(pred, {"context": "repo", "iterative": True}, {"A": "x"})
    with pytest.raises(InputError, match="iterative"):
        _explain(tmp_path, hand_made, pred)


def test_cli_explain(tmp_path, hand_made, tiny_model_dir, capsys):
    from repocomplete.cli import main

    pred, base = tmp_path / "pred.jsonl", tmp_path / "infile.jsonl"
    # as a run with the tiny model records its settings (the model is loaded to count the context, never run)
    _run_file(pred, {"context": "repo", "budget": 512, "providers": ["imports"], "model": str(tiny_model_dir),
                     "quantize": "none", "dtype": "float32", "max_new_tokens": 6},
              {"A": "total = inv.refill(n)", "B": "value = amount * 2", "C": "z = local_helper(y)"})
    _run_file(base, {"context": "infile"}, {"A": "total = 0", "B": "value = 0", "C": "z = 0"})
    argv = ["eval", "explain", "--tasks", str(tmp_path / "tasks.jsonl"), "--repos", str(hand_made), "--pred",
            str(pred), "--baseline", str(base), "--index-dir", str(tmp_path / "ix")]
    assert main(argv + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [t["class"] for t in report["tasks"]] == ["model_miss", "not_retrieved", "hit"]
    assert report["header"]["template"] == "plain" and report["header"]["sees_suffix"] is False
    assert report["summary"]["classes"]["hit"]["baseline_es"] is not None
    assert main(argv + ["--quiet", "--title", "shop"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### shop") and "| provider | recall in candidates |" in out and "ES baseline" in out
    assert main(argv[:-2] + ["--index-dir", str(tmp_path / "ix"), "--pred", str(tmp_path / "nope.jsonl")]) == 2
