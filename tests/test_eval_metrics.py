"""CrossCodeEval's metrics against hand-computed values, the predictions file's bad input, and `eval score`."""

from __future__ import annotations

import json

import pytest

from repocomplete.context_engine.errors import InputError
from repocomplete.eval.metrics import (
    edit_similarity, first_statement, format_scores, identifiers, load_predictions, remove_comments, score,
    score_task,
)
from repocomplete.eval.suites import EvalTask, write_tasks
from repocomplete.cli import main


def task(groundtruth: str, prompt: str = "def f(x):\n    ", language: str = "python", task_id: str = "t",
         repository: str = "r") -> EvalTask:
    return EvalTask(task_id, repository, "a.py", prompt, groundtruth, "\n", prompt.count("\n"), language)


def test_python_prediction_is_cut_to_the_first_statement():
    prompt = "def f(x):\n    "
    assert first_statement(prompt, "return foo(x)\n    y = 2\n", "python") == "return foo(x)"
    # a newline inside an open bracket is no statement's end: the cut waits for the closing line
    assert first_statement("x = 1\n", "y = call(a,\n         b)\nz = 3", "python") == "y = call(a,\n         b)"
    assert first_statement(prompt, "return foo(x)", "python") == "return foo(x)"  # no newline: all of it
    assert first_statement(prompt, "\nreturn 1", "python") == "\nreturn 1"  # a leading newline is no cut
    assert first_statement(prompt, "if ok:\n        go()", "python") == "if ok:"  # a header alone parses
    # a prompt that does not parse never parses with more code after it: nothing is cut (theirs does the same)
    assert first_statement("def (:\n    ", "a = 1\nb = 2", "python") == "a = 1\nb = 2"


def test_bracket_languages_are_cut_after_the_first_semicolon_or_brace():
    assert first_statement("", "int x = foo();\nbar();", "java") == "int x = foo();"
    assert first_statement("", "if (ok) {\n  go();\n}", "typescript") == "if (ok) {"
    assert first_statement("", ";x", "java") == ";x"  # theirs: a cut at index 0 keeps everything
    assert first_statement("", "a\nb", "markdown") == "a\nb"


def test_comments_and_identifiers_as_crosscodeeval_extracts_them():
    assert remove_comments("x = a // 2  # halve") == "x = a "  # their regexes, `//` included
    assert identifiers("return not x is None and True", "python") == ["x", "True"]  # True/False stay
    assert identifiers('log("hello world", n_1, 2x, _y)', "python") == ["log", "n_1", "_y"]  # no strings or numbers
    assert identifiers("if (this.count == null) return size;", "java") == ["count", "null", "size"]
    assert identifiers("const total = items.length", "javascript") == ["total", "items", "length"]


def test_exact_match_edit_similarity_and_identifier_scores():
    perfect = score_task(task("return foo(x)"), "return foo(x)\n    y = 2\n")
    assert (perfect.em, perfect.es, perfect.id_em, perfect.id_f1) == (1.0, 100.0, 1.0, 1.0)
    assert perfect.prediction == "return foo(x)"

    # foo(a) vs foo(b): Indel distance 2 over 12 characters; ids {foo, a} vs {foo, b}: tp 1, fp 1, fn 1
    close = score_task(task("foo(b)"), "foo(a)")
    assert close.em == 0.0 and close.es == pytest.approx(100 * (1 - 2 / 12))
    assert close.id_em == 0.0 and close.id_f1 == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert close.id_precision == 0.5 and close.id_recall == 0.5

    # comments go before scoring; strings hold no identifiers: 'log("bye")' vs 'log("hello world")' share
    # the 8 characters l o g ( " e " ) -> Indel distance 10 + 18 - 2 * 8 = 12 over 28
    strings = score_task(task('log("hello world")  # greet'), 'log("bye")')
    assert strings.target == 'log("hello world")  '
    assert strings.em == 0.0 and strings.es == pytest.approx(100 * (1 - 12 / 28))
    assert strings.id_em == 1.0 and strings.id_f1 == 1.0

    # multi-line ground truth: lines compared stripped, empty ones dropped
    multi = score_task(task("y = call(a,\n b)", prompt="x = 1\n"), "y = call(a,\n         b)\nz = 3")
    assert multi.em == 1.0 and multi.prediction == "y = call(a,\n         b)"

    # no identifiers on either side: ID-EM 1 but ID-F1 0 (CrossCodeEval's zero-denominator rule)
    numbers = score_task(task("1 + 2"), "1 + 2")
    assert (numbers.em, numbers.id_em, numbers.id_f1) == (1.0, 1.0, 0.0)

    missing = score_task(task("foo(b)"), None)
    assert missing.missing and (missing.em, missing.es, missing.id_f1) == (0.0, 0.0, 0.0)
    assert edit_similarity("  abc ", "abc") == 100.0


def test_report_per_repository_with_missing_predictions():
    tasks = [task("foo(b)", task_id="1", repository="alpha"), task("return x", task_id="2", repository="alpha"),
             task("bar(c)", task_id="3", repository="beta")]
    report = score(tasks, {"1": "foo(b)", "2": "return y"})
    assert (report["tasks"], report["predictions"], report["missing"]) == (3, 2, 1)
    assert report["missing_scored_as"] == "empty prediction"
    es_2 = 100 * (1 - 2 / 16)  # "return y" vs "return x"
    assert report["per_repository"]["alpha"] == {
        "n": 2, "missing": 0, "em": 50.0, "es": round((100 + es_2) / 2, 2), "id_em": 50.0, "id_f1": 50.0}
    assert report["per_repository"]["beta"] == {"n": 1, "missing": 1, "em": 0.0, "es": 0.0, "id_em": 0.0, "id_f1": 0.0}
    assert report["overall"]["em"] == round(100 / 3, 2) and report["overall"]["es"] == round((100 + es_2) / 3, 2)
    assert "per_setting" not in report
    table = format_scores(report).split("\n")
    assert table[0].split() == ["repository", "tasks", "EM", "ES", "ID-EM", "ID-F1"]
    assert table[1].split() == ["alpha", "2", "50.00", f"{(100 + es_2) / 2:.2f}", "50.00", "50.00"]
    assert table[3].split()[:3] == ["overall", "3", "33.33"]
    assert table[-1] == "3 tasks, 2 predictions, 1 missing (scored as empty predictions)"
    assert len({len(line) for line in table[:-1]}) == 1  # aligned


def test_repobench_settings_are_reported_apart():
    a, b = task("x = 1", task_id="a"), task("y = 2", task_id="b")
    a.setting, b.setting = "in_file", "cross_file_first"
    report = score([a, b], {"a": "x = 1", "b": "nope"})
    assert report["per_setting"]["in_file"]["em"] == 100.0 and report["per_setting"]["cross_file_first"]["em"] == 0.0


@pytest.fixture
def tasks_file(tmp_path):
    path = tmp_path / "tasks.jsonl"
    write_tasks([task("foo(b)", task_id="r/a.py:1"), task("return x", task_id="r/a.py:2")], path)
    return path


def write_lines(path, lines):
    path.write_text("".join(l + "\n" for l in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("lines, message", [
    (['{"task_id": "r/a.py:1", "pred": "x"}', '{"task_id": '], ":2: not valid JSON"),
    (['{"task_id": "r/a.py:9", "pred": "x"}'], ":1: unknown task id 'r/a.py:9' (not in the tasks file)"),
    (['{"task_id": "r/a.py:1"}'], ":1: missing field pred"),
    (['{"task_id": "r/a.py:1", "pred": null}'], ":1: field pred must be str, got NoneType"),
    (['"just a string"'], ":1: a prediction must be a JSON object"),
    (['{"task_id": "r/a.py:1", "pred": "a"}', "", '{"task_id": "r/a.py:1", "pred": "b"}'],
     ":3: second prediction for task 'r/a.py:1' (first on line 1)"),
])
def test_bad_prediction_lines_name_the_file_and_line(tmp_path, tasks_file, lines, message):
    from repocomplete.eval.suites import load_tasks

    path = write_lines(tmp_path / "pred.jsonl", lines)
    with pytest.raises(InputError) as e:
        load_predictions(path, load_tasks(tasks_file))
    assert str(e.value).startswith(f"{path}:") and message in str(e.value)


def test_empty_prediction_file_is_a_clear_error(tmp_path, tasks_file, capsys):
    path = write_lines(tmp_path / "pred.jsonl", [])
    assert main(["eval", "score", "--tasks", str(tasks_file), "--pred", str(path)]) == 2
    assert capsys.readouterr().err == f"repocomplete: no predictions in {path} (expected JSONL lines " \
                                      '{"task_id": ..., "pred": ...})\n'


def test_cli_score(tmp_path, tasks_file, capsys):
    pred = write_lines(tmp_path / "pred.jsonl", [json.dumps({"task_id": "r/a.py:1", "pred": "foo(b)\nmore()"})])
    assert main(["eval", "score", "--tasks", str(tasks_file), "--pred", str(pred), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["tasks"], report["predictions"], report["missing"]) == (2, 1, 1)
    assert report["overall"] == {"n": 2, "missing": 1, "em": 50.0, "es": 50.0, "id_em": 50.0, "id_f1": 50.0}
    assert main(["eval", "score", "--tasks", str(tasks_file), "--pred", str(pred)]) == 0
    out = capsys.readouterr().out
    assert out.split("\n")[1].split() == ["r", "2", "50.00", "50.00", "50.00", "50.00"]
    assert "1 missing (scored as empty predictions)" in out
    bad = write_lines(tmp_path / "bad.jsonl", ['{"task_id": "nope", "pred": ""}'])
    assert main(["eval", "score", "--tasks", str(tasks_file), "--pred", str(bad)]) == 2
    assert capsys.readouterr().err == f"repocomplete: {bad}:1: unknown task id 'nope' (not in the tasks file)\n"
