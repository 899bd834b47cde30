"""Suite formats: CrossCodeEval and RepoBench lines load into one EvalTask; bad input names its file and line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from repocomplete.context_engine.errors import InputError
from repocomplete.eval.suites import SUITES_DIR, EvalTask, load_tasks, repo_dir, write_tasks

ROOT = Path(__file__).resolve().parent.parent

CCEVAL = {
    "prompt": "from pkg.models import Inventory\n\n\ndef make():\n    ",
    "groundtruth": "return Inventory()",
    "right_context": "\n\n\ndef other():\n    pass\n",
    "metadata": {"task_id": "demo/0", "repository": "demo", "file": "pkg/service.py",
                 "groundtruth_start_lineno": 4},
    "crossfile_context": {
        "text": "# pkg/models.py\nclass Inventory: ...",
        "list": [{"retrieved_chunk": "class Inventory: ...", "filename": "pkg/models.py", "score": 1.0}],
    },
}

IMPORTS = "from .models import Inventory\nimport os"
CODE_BEFORE = "\n\ndef make(path):\n    base = os.path.basename(path)"
REPOBENCH = {
    "repo_name": "owner/demo",
    "file_path": "pkg/service.py",
    "context": [{"identifier": "Inventory", "path": "pkg/models.py", "snippet": "class Inventory:\n    pass"}],
    "import_statement": IMPORTS,
    "cropped_code": CODE_BEFORE,
    "all_code": IMPORTS + CODE_BEFORE,
    "next_line": "    return Inventory(base)",
    "gold_snippet_index": 0,
    "created_at": "2023-11-01T00:00:00Z",
    "level": "2k",
}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def with_meta(**changes) -> dict:
    record = json.loads(json.dumps(CCEVAL))
    record["metadata"].update(changes)
    return record


def test_crosscodeeval_line_loads_and_gives_the_buffer(tmp_path):
    (task,) = load_tasks(write_jsonl(tmp_path / "t.jsonl", [CCEVAL]))
    assert task == EvalTask(
        task_id="demo/0", repository="demo", file="pkg/service.py", prompt=CCEVAL["prompt"],
        groundtruth="return Inventory()", right_context=CCEVAL["right_context"], lineno=4, language="python",
        crossfile_context=[{"retrieved_chunk": "class Inventory: ...", "filename": "pkg/models.py", "score": 1.0}],
        setting=None,
    )
    text, offset = task.buffer()
    assert text == CCEVAL["prompt"] + CCEVAL["right_context"]
    assert offset == len(CCEVAL["prompt"]) and text[offset:].startswith("\n\n\ndef other")
    assert "return Inventory()" not in text


def test_crosscodeeval_without_crossfile_context_and_other_languages(tmp_path):
    a = dict(CCEVAL, crossfile_context="")  # how CrossCodeEval writes "none found"
    b = json.loads(json.dumps(CCEVAL))
    del b["crossfile_context"]
    b["metadata"].update(task_id="demo/1", file="src/App.java")
    c = with_meta(task_id="demo/2", file="src/Program.cs")
    tasks = load_tasks(write_jsonl(tmp_path / "t.jsonl", [a, "", b, c]))  # a blank line is skipped
    assert [t.crossfile_context for t in tasks] == [None, None, CCEVAL["crossfile_context"]["list"]]
    assert [t.language for t in tasks] == ["python", "java", "csharp"]


def test_write_then_load_round_trips(tmp_path):
    tasks = load_tasks(write_jsonl(tmp_path / "a.jsonl", [CCEVAL]))
    tasks += load_tasks(write_jsonl(tmp_path / "in_file.jsonl", [REPOBENCH]))
    write_tasks(tasks, tmp_path / "out" / "b.jsonl")
    again = load_tasks(tmp_path / "out" / "b.jsonl")
    assert again == tasks
    assert again[1].setting == "in_file" and again[1].crossfile_context == REPOBENCH["context"]


def test_repobench_line_loads_with_setting_from_the_file_name(tmp_path):
    path = write_jsonl(tmp_path / "python_cross_file_first.jsonl", [REPOBENCH, dict(REPOBENCH, next_line="x = 1")])
    first, second = load_tasks(path)
    assert first.task_id == "cross_file_first/0" and second.task_id == "cross_file_first/1"
    assert first.setting == "cross_file_first"
    assert first.repository == "owner/demo" and first.file == "pkg/service.py"
    assert first.prompt == IMPORTS + CODE_BEFORE + "\n    "  # the cursor after the next line's indentation
    assert first.groundtruth == "return Inventory(base)"
    assert first.right_context == ""
    assert first.lineno == 5 and first.prompt.split("\n")[5] == "    "
    assert first.crossfile_context == REPOBENCH["context"]
    assert second.prompt.endswith("basename(path)\n") and second.groundtruth == "x = 1"


def test_repobench_variants_of_all_code(tmp_path):
    # all_code without the imports: they go in front, as RepoBench's own prompt puts them
    no_imports = dict(REPOBENCH, all_code=CODE_BEFORE, setting="in_file")
    # all_code holding the whole file: it is cut where the cropped code meets the next line
    whole = dict(REPOBENCH, all_code=IMPORTS + CODE_BEFORE + "\n    return Inventory(base)\n\nEND = 1\n",
                 setting="cross_file_random")
    a, b = load_tasks(write_jsonl(tmp_path / "mixed.jsonl", [no_imports, whole]))
    assert (a.task_id, b.task_id) == ("in_file/0", "cross_file_random/0")
    assert a.prompt == IMPORTS + "\n" + CODE_BEFORE + "\n    "
    assert b.prompt == IMPORTS + CODE_BEFORE + "\n    "
    assert b.right_context == "\n\nEND = 1\n"
    assert b.buffer()[0] == IMPORTS + CODE_BEFORE + "\n    \n\nEND = 1\n"


@pytest.mark.parametrize("record, message", [
    ('{"prompt": "x", ', "not valid JSON"),
    ("[1, 2]", "must be a JSON object, got list"),
    ({"foo": 1}, "neither a CrossCodeEval task"),
    ({k: v for k, v in CCEVAL.items() if k != "right_context"}, "missing field right_context"),
    (dict(CCEVAL, groundtruth=3), "field groundtruth must be str, got int"),
    (with_meta(task_id=None), "field metadata.task_id must be str, got NoneType"),
    (dict(CCEVAL, metadata={"task_id": "x", "repository": "demo", "file": "a.py"}),
     "missing field metadata.groundtruth_start_lineno"),
    (with_meta(groundtruth_start_lineno="4"), "metadata.groundtruth_start_lineno must be int, got str"),
    (with_meta(groundtruth_start_lineno=True), "metadata.groundtruth_start_lineno must be int, got bool"),
    (with_meta(file="../outside.py"), "metadata.file must be a relative path inside the repository"),
    (with_meta(repository="/abs"), "metadata.repository must be a relative path"),
    (dict(CCEVAL, crossfile_context=[1]), "crossfile_context must be"),
    ({k: v for k, v in REPOBENCH.items() if k != "cropped_code"}, "missing field cropped_code"),
    (dict(REPOBENCH, context="snippets"), "field context must be list, got str"),
    (dict(REPOBENCH, setting="cross_file"), "unknown RepoBench setting 'cross_file'"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / "t.jsonl", [with_meta(task_id="ok/1"), "", record])
    with pytest.raises(InputError) as e:
        load_tasks(path)
    assert str(e.value).startswith(f"{path}:3: ")
    assert message in str(e.value)


def test_duplicate_ids_name_both_lines(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [CCEVAL, with_meta(task_id="other"), CCEVAL])
    with pytest.raises(InputError, match=r"t\.jsonl:3: duplicate task id 'demo/0' \(first on line 1\)"):
        load_tasks(path)


def test_empty_or_missing_files(tmp_path):
    with pytest.raises(InputError, match="no tasks in"):
        load_tasks(write_jsonl(tmp_path / "empty.jsonl", ["", "  "]))
    with pytest.raises(InputError, match="tasks file not found"):
        load_tasks(tmp_path / "nope.jsonl")


def test_missing_repository_names_the_task_and_path(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [CCEVAL])
    (task,) = load_tasks(path)
    repos = tmp_path / "repos"
    with pytest.raises(InputError) as e:
        repo_dir(repos, task)
    assert str(e.value) == f"task demo/0: repository snapshot not found: {repos / 'demo'}"
    with pytest.raises(InputError, match="task demo/0: repository snapshot not found"):
        load_tasks(path, repos=repos)
    (repos / "demo").mkdir(parents=True)
    assert repo_dir(repos, task) == repos / "demo"
    assert load_tasks(path, repos=repos) == [task]


# -- the shipped suite ---------------------------------------------------------------------------------------------


# name -> (tasks, the package and version SOURCE.md names, its licence, the licence file's first words, most bytes)
SHIPPED = {
    "markdown_it_py": (40, "markdown-it-py` 4.3.0", "MIT", "LICENSE", "MIT License", 1_500_000),
    "rich": (50, "rich` 15.0.0", "MIT", "LICENSE", "Copyright (c) 2020 Will McGugan", 2_500_000),
    "anyio": (37, "anyio` 4.16.0", "MIT", "LICENSE", "The MIT License", 1_500_000),
    "jinja2": (21, "Jinja2` 3.1.6", "BSD License", "LICENSE.txt", "Copyright 2007 Pallets", 1_500_000),
    "zod": (44, "npm package `zod` 4.6.7", "MIT", "LICENSE", "MIT License", 2_500_000),
    # monitor-guided decoding's: `expr.member` with a repository member, calls with keyword arguments
    "rich_member": (36, "rich` 15.0.0", "MIT", "LICENSE", "Copyright (c) 2020 Will McGugan", 2_500_000),
    "anyio_member": (36, "anyio` 4.16.0", "MIT", "LICENSE", "The MIT License", 1_500_000),
    "rich_kwargs": (30, "rich` 15.0.0", "MIT", "LICENSE", "Copyright (c) 2020 Will McGugan", 2_500_000),
    "anyio_kwargs": (17, "anyio` 4.16.0", "MIT", "LICENSE", "The MIT License", 1_500_000),
}


def test_every_shipped_suite_is_listed():
    assert sorted(p.parent.name for p in SUITES_DIR.glob("*/tasks.jsonl")) == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_suite_loads_and_its_snapshots_are_the_buffers(name):
    n, package, licence, licence_file, licence_start, most_bytes = SHIPPED[name]
    suite = SUITES_DIR / name
    tasks = load_tasks(suite / "tasks.jsonl", repos=suite / "repos")
    assert len(tasks) == n
    assert len({t.file for t in tasks}) == n  # one task per file
    assert {t.repository for t in tasks} == {name}
    for t in tasks:
        assert t.task_id == f"{name}/{t.file}:{t.lineno + 1}"
        snapshot = (repo_dir(suite / "repos", t) / t.file).read_text(encoding="utf-8")
        text, offset = t.buffer()
        assert snapshot == text
        line = t.prompt.rsplit("\n", 1)[-1] + t.groundtruth
        original = (t.prompt + t.groundtruth + t.right_context).split("\n")
        # the target line is gone (code may repeat a line elsewhere in the file: that copy stays)
        assert snapshot.split("\n").count(line) == original.count(line) - 1
        assert snapshot.split("\n")[t.lineno] == t.prompt.rsplit("\n", 1)[-1]  # what is before the cursor stays
        # (the whole line: a member or kwargs task's cursor is inside it, a line task's after its indentation)
        assert t.groundtruth.strip() and 12 <= len(line.strip()) <= 100
    source = (suite / "SOURCE.md").read_text(encoding="utf-8")
    assert package in source and licence in source and f"eval/suites/build.sh {name}" in source
    assert licence_start in (suite / "repos" / name / licence_file).read_text()
    size = sum(p.stat().st_size for p in suite.rglob("*") if p.is_file())
    assert size < most_bytes


def test_build_script_rebuilds_the_shipped_suite_unchanged(tmp_path):
    import importlib.metadata as md

    if md.version("markdown-it-py") != "4.3.0":
        pytest.skip("the suite is pinned to markdown-it-py 4.3.0")
    env = dict(os.environ, SUITES_OUT=str(tmp_path), PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    subprocess.run(["bash", str(SUITES_DIR / "build.sh"), "markdown_it_py"], check=True, capture_output=True,
                   env=env, timeout=300)
    shipped, rebuilt = SUITES_DIR / "markdown_it_py", tmp_path / "markdown_it_py"

    def tree(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert tree(rebuilt) == tree(shipped)
