"""`eval build-suite`: tasks are whole lines using another file's names, one per file, and the snapshot leaks none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_tree

from repocomplete.context_engine.errors import InputError
from repocomplete.eval.build_suite import CrossFileNames, build_suite, candidate_lines, is_test_path, mask_strings_and_comments
from repocomplete.eval.suites import load_tasks, repo_dir
from repocomplete.cli import main

REPO = {
    "pkg/__init__.py": "",
    "pkg/models.py": (
        "class Inventory:\n"
        "    def __init__(self):\n"
        "        self.stock = {}\n"
        "\n"
        "    def add_item(self, name, count):\n"
        "        self.stock[name] = self.stock.get(name, 0) + count\n"
        "\n"
        "\n"
        "def make_inventory():\n"
        "    return Inventory()\n"
    ),
    "pkg/service.py": (
        '"""Restocking: make_inventory() and Inventory.add_item in a docstring do not count."""\n'
        "from pkg.models import make_inventory\n"
        "\n"
        "\n"
        "def restock(names):\n"
        "    # make_inventory() in a comment does not count either\n"
        "    inventory = make_inventory()\n"
        "    for name in names:\n"
        "        inventory.add_item(name, 10)\n"
        "    return inventory\n"
    ),
    "pkg/report.py": (
        "from .models import Inventory\n"
        "\n"
        "\n"
        "def describe(inventory):\n"
        "    if not isinstance(inventory, Inventory):\n"
        "        raise TypeError(inventory)\n"
        "    total = sum(inventory.stock.values())\n"
        "    return f'total {total}'\n"
    ),
    "pkg/local.py": (  # no other file's name: no task here
        "def helper(values):\n"
        "    result = sorted(values, reverse=True)\n"
        "    return result[0] if result else None\n"
    ),
    "web/format.js": "export function formatTotal(total) {\n  return `total ${total}`;\n}\n",
    "web/app.js": (
        'import { formatTotal } from "./format.js";\n'
        "\n"
        "export function show(items) {\n"
        "  const label = formatTotal(items.length);\n"
        "  return label;\n"
        "}\n"
    ),
    "tests/test_models.py": (
        "from pkg.models import make_inventory\n"
        "\n"
        "\n"
        "def test_make():\n"
        "    inventory = make_inventory()\n"
        "    assert inventory.stock == {}\n"
    ),
    "LICENSE": "MIT License\n\nCopyright (c) 2025 Example\n",
    "README.md": "# demo\n",
    "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00binary",
    ".env": "TOKEN=make_inventory_secret\n",
    "node_modules/lib/index.js": "export function formatTotal() {}\n",
}
CANDIDATES = {  # file -> its candidate lines (0-based)
    # `inventory = make_inventory()`, `inventory.add_item(name, 10)`; not the docstring, comment or import
    "pkg/service.py": {6, 8},
    "pkg/report.py": {4},  # `if not isinstance(inventory, Inventory):`
    "web/app.js": {3},  # `const label = formatTotal(items.length);`
}


@pytest.fixture
def repo(tmp_path):
    return write_tree(tmp_path / "demo", REPO)


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_tasks_use_cross_file_names_and_the_snapshot_is_the_buffer(repo, tmp_path):
    out = tmp_path / "suite"
    summary = build_suite(repo, out, n=10, seed=0)
    tasks = load_tasks(out / "tasks.jsonl", repos=out / "repos")
    assert summary["tasks"] == len(tasks) == 3
    assert {t.file for t in tasks} == CANDIDATES.keys()
    assert all(t.lineno in CANDIDATES[t.file] for t in tasks)
    by_file = {t.file: t for t in tasks}
    report = by_file["pkg/report.py"]
    assert report.task_id == "demo/pkg/report.py:5"
    assert report.prompt == "from .models import Inventory\n\n\ndef describe(inventory):\n    "
    assert report.groundtruth == "if not isinstance(inventory, Inventory):"
    assert report.right_context.startswith("\n        raise TypeError(inventory)\n")
    service = by_file["pkg/service.py"]
    assert service.repository == "demo" and service.language == "python"
    assert service.groundtruth in ("inventory = make_inventory()", "inventory.add_item(name, 10)")
    assert by_file["web/app.js"].groundtruth == "const label = formatTotal(items.length);"
    assert by_file["web/app.js"].language == "javascript"
    for t in tasks:
        original = (repo / t.file).read_text()
        assert t.prompt + t.groundtruth + t.right_context == original
        snapshot = (repo_dir(out / "repos", t) / t.file).read_text()
        assert snapshot == t.buffer()[0]
        assert t.prompt.rsplit("\n", 1)[-1] + t.groundtruth not in snapshot.split("\n")
        assert t.groundtruth not in snapshot
    # the snapshot: the indexed files (tests are indexed, just not cut from) and the licence, nothing else
    files = read_tree(out / "repos" / "demo")
    assert sorted(files) == ["LICENSE", "pkg/__init__.py", "pkg/local.py", "pkg/models.py", "pkg/report.py",
                             "pkg/service.py", "tests/test_models.py", "web/app.js", "web/format.js"]
    assert files["pkg/models.py"] == (repo / "pkg/models.py").read_bytes()
    source = (out / "SOURCE.md").read_text()
    assert "`demo`" in source and "`LICENSE`" in source and "--n 10 --seed 0" in source


def test_one_task_per_file_and_tests_on_request(repo, tmp_path):
    # more candidate lines in one file: still one task from it
    extra = REPO["pkg/service.py"] + "\n\ndef again():\n    other = make_inventory()\n    return other\n"
    write_tree(repo, {"pkg/service.py": extra})
    build_suite(repo, tmp_path / "a", n=10, seed=0, include_tests=True)
    tasks = load_tasks(tmp_path / "a" / "tasks.jsonl")
    files = [t.file for t in tasks]
    assert len(files) == len(set(files)) == 4
    assert "tests/test_models.py" in files
    assert [t.lineno for t in tasks if t.file == "pkg/service.py"][0] in {6, 8, 14}
    build_suite(repo, tmp_path / "b", n=2, seed=0)
    assert len(load_tasks(tmp_path / "b" / "tasks.jsonl")) == 2


def test_deterministic_for_a_seed_across_processes(repo, tmp_path):
    build_suite(repo, tmp_path / "here", n=2, seed=3)
    # another process with another string hash seed: set and dict orders differ, the suite must not
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-m", "repocomplete", "eval", "build-suite", str(repo), "--out",
                    str(tmp_path / "there"), "--n", "2", "--seed", "3", "--json"],
                   check=True, capture_output=True, env=env, timeout=120)
    here, there = read_tree(tmp_path / "here"), read_tree(tmp_path / "there")
    assert here == there
    seeds = {read_tree_tasks(repo, tmp_path / f"seed{s}", s) for s in range(6)}
    assert len(seeds) > 1  # the seed does choose


def read_tree_tasks(repo: Path, out: Path, seed: int) -> tuple[str, ...]:
    build_suite(repo, out, n=2, seed=seed)
    return tuple(t.task_id for t in load_tasks(out / "tasks.jsonl"))


def test_candidate_lines_skip_trivial_and_partial_statements():
    source = (
        "from pkg.models import make_inventory, Inventory\n"  # 0 import
        "import re\n"
        "\n"
        "\n"
        "@decorate(make_inventory)\n"  # 4 decorator
        "def restock(names=make_inventory()):\n"  # 5 definition header
        '    """Calls make_inventory() to start."""\n'  # 6 docstring
        "    # make_inventory() again\n"  # 7 comment
        "    inventory = make_inventory()\n"  # 8 yes
        '    label = "make_inventory() in a string"\n'  # 9 only in a string
        '    text = """\n'  # 10 a string starts
        "    make_inventory() inside a string\n"  # 11 inside it
        '    """\n'
        '    pattern = re.compile(r"[a-z]+")\n'  # 13 a member of an outside module
        "    total = compute(\n"  # 14 opens a bracket
        "        make_inventory(),\n"  # 15 inside brackets
        "    )\n"
        "    value = first + \\\n"  # 17 continued
        "        make_inventory()\n"  # 18 continuation
        "    ok = inventory.add_item('x', 1)\n"  # 19 a repository member
        "    if isinstance(inventory, Inventory):\n"  # 20 yes
        "        return inventory\n"
        "    m = make_inventory(a_rather_long_argument_name, another_long_argument, yet_another_argument, x=10000)\n"
        # 22: 101 characters
        "    (Inventory)\n"  # 11 characters
        "    f(Inventory)\n"  # 12: yes
    )
    names = CrossFileNames(bare={"make_inventory", "Inventory"}, members={"add_item", "compile"}, external={"re"})
    assert candidate_lines("m.py", source, names, headers={5}) == [8, 19, 20, 24]


def test_candidate_lines_skip_typescript_continuations_and_re_exports():
    source = (
        "export { helper };\n"  # 0 a re-export
        "const a = helper(1);\n"  # 1 yes
        "type T = util.Partial<{\n"  # 2 goes on (a type literal)
        "  bag: util.Loose;\n"  # 3 its inside: continued
        "}>;\n"
        "type U = A extends B\n"
        "  ? util.Yes\n"  # 6 the rest of a conditional type
        "  : util.No;\n"  # 7 likewise
        "const b = first() &&\n"  # 8 goes on
        "  helper(2);\n"  # 9 continued
        "promise\n"
        "  .then(helper);\n"  # 11 a chain's continuation
        "const c =\n"  # 12 goes on
        "  helper(3);\n"  # 13 continued
        "if (ready) {\n"
        "  return helper(4);\n"  # 15 yes
        "}\n"
    )
    names = CrossFileNames(bare={"helper", "util"}, members=set(), external=set())
    assert candidate_lines("m.ts", source, names) == [1, 15]

def test_masking_keeps_lines_and_columns_with_non_ascii_text():
    source = 'a = "héllo"  # ünïcode\nb = f(\'x\')\n'
    masked = mask_strings_and_comments("m.py", source)
    assert masked == "a =                   \nb = f(   )\n"
    assert [len(l) for l in masked.split("\n")] == [len(l) for l in source.split("\n")]


@pytest.mark.parametrize("path, test", [
    ("tests/test_a.py", True), ("pkg/test_a.py", True), ("pkg/a_test.go", True), ("src/app.test.ts", True),
    ("conftest.py", True), ("src/FooTest.java", True), ("pkg/testing/util.py", True),
    ("pkg/latest.py", False), ("pkg/contest/a.py", False), ("pkg/attest.py", False),
])
def test_test_paths(path, test):
    assert is_test_path(path) is test


def test_bad_input(repo, tmp_path, capsys):
    with pytest.raises(InputError, match="not a directory"):
        build_suite(tmp_path / "nope", tmp_path / "o")
    with pytest.raises(InputError, match="inside the repository"):
        build_suite(repo, repo / "suite")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(InputError, match="exists and is not an empty folder"):
        build_suite(repo, tmp_path / "full")
    lonely = write_tree(tmp_path / "lonely", {"a.py": "def f():\n    return sorted([3, 2, 1])\n"})
    with pytest.raises(InputError, match="no task in"):
        build_suite(lonely, tmp_path / "o2")
    assert main(["eval", "build-suite", str(repo), "--out", str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("repocomplete: --out ") and err.count("\n") == 1


def test_cli_build_suite(repo, tmp_path, capsys):
    out = tmp_path / "suite"
    assert main(["eval", "build-suite", str(repo), "--out", str(out), "--n", "2", "--seed", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tasks"] == 2 and summary["repository"] == "demo" and summary["license_files"] == ["LICENSE"]
    assert len(load_tasks(out / "tasks.jsonl", repos=out / "repos")) == 2


def test_npm_package_source_and_typescript_tasks(tmp_path):
    # an npm package's TypeScript sources: tasks use a relative import or a namespace import's member; SOURCE.md
    # names the package, its version and licence from package.json
    repo = write_tree(tmp_path / "tiny", {
        "package.json": json.dumps({"name": "tiny-schema", "version": "1.2.3", "license": "MIT"}),
        "LICENSE": "MIT License\n\nCopyright (c) 2025 Example\n",
        "src/core.ts": "export function flattenIssues(issues: string[]): string {\n  return issues.join(', ');\n}\n",
        "src/schema.ts": "export class Schema {\n  default(value: string): string {\n    return value;\n  }\n}\n",
        # a default import from outside (a method `default` is defined in the repository): its members are not tasks
        "src/bench.ts": 'import Benchmark from "benchmark";\n\nconst suite = new Benchmark.Suite("short name");\n',
        "src/errors.ts": (
            'import * as core from "./core.js";\n'
            'import { flattenIssues } from "./core.js";\n'
            "\n"
            "export function describe(issues: string[]): string {\n"
            "  const text = core.flattenIssues(issues);\n"
            "  return text;\n"
            "}\n"
            "\n"
            "export function report(issues: string[]): string {\n"
            "  return flattenIssues(issues) + '!';\n"
            "}\n"
        ),
    })
    out = tmp_path / "suite"
    summary = build_suite(repo, out, n=5, seed=0)
    assert summary["source"] == {"kind": "npm", "package": "tiny-schema", "version": "1.2.3", "license": "MIT"}
    (task,) = load_tasks(out / "tasks.jsonl", repos=out / "repos")
    assert task.language == "typescript" and task.file == "src/errors.ts"
    assert task.groundtruth in ("const text = core.flattenIssues(issues);", "return flattenIssues(issues) + '!';")
    source = (out / "SOURCE.md").read_text()
    assert "the npm package `tiny-schema` 1.2.3" in source and "MIT; licence files copied" in source
    assert "`LICENSE`" in source


def test_member_and_kwargs_cursors():
    from repocomplete.eval.build_suite import kwargs_column, member_column

    code = "        value = self.console.render_lines(x, pad=False)"
    assert member_column(code, {"render_lines"}) == code.index("render_lines")
    assert member_column(code, {"console"}) is None  # a chain counts by its last member
    assert member_column("        x = 1.5 + y", {"five"}) is None
    assert kwargs_column(code, {"render_lines"}) == code.index("pad=")
    assert kwargs_column("    x = f(a == b, key=1)", {"f"}) == len("    x = f(a == b, ")
    assert kwargs_column("    x = f(g(k=1))", {"f"}) is None  # the keyword is g's
    assert kwargs_column("    x = other(k=1)", {"f"}) is None
