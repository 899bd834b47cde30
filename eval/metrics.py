"""`repocomplete eval score --tasks T.jsonl --pred P.jsonl`: CrossCodeEval's line-completion metrics.

As CrossCodeEval's `scripts/eval_metric.py` and `eval_utils.py` compute them, per task:

1. The prediction is cut to the first statement: in Python, at the first newline where the prompt plus the
   prediction so far parses without an ERROR node (tree-sitter); in Java, C#, TypeScript (and here JavaScript, Go,
   Rust too) after the first `;`, `{` or `}`. Then comments are removed from prediction and ground truth alike
   (`#...` and `//...` to the end of the line, in any language, `a // 2` included: their regexes).
2. EM: the non-empty lines, stripped, are equal.
3. ES: fuzz.ratio of the stripped texts (0-100). CrossCodeEval used fuzzywuzzy's difflib ratio rounded to an
   integer; this is rapidfuzz's (normalised Indel similarity, not rounded), so figures can differ by a point or so.
4. Identifiers: string literals removed, `\\w+` words that start like an identifier, keywords excluded (Python's
   `keyword.kwlist` less True/False; the reserved words of the other languages). ID-EM: the two lists are equal
   (order and repeats count); ID-F1 over the two sets (0 when both are empty, as theirs).

A task without a prediction is scored as an empty prediction and counted as missing. Scores are averaged over
tasks, overall and per repository (and per RepoBench setting when the tasks have one), in percent.
"""

from __future__ import annotations

import functools
import keyword
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from rapidfuzz import fuzz

from repocomplete.eval.predictions import load_predictions
from repocomplete.eval.suites import EvalTask, load_tasks

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_WORD = re.compile(r"\w+")
_IDENTIFIER_START = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
_BRACKET_LANGUAGES = frozenset({"java", "csharp", "typescript", "javascript", "go", "rust"})

_JAVASCRIPT = """await break case catch class const continue debugger default delete do else enum export extends finally
for function if import in instanceof let new null return static super switch this throw try typeof var void while
with yield implements interface package private protected public"""
KEYWORDS = {
    "python": frozenset(k for k in keyword.kwlist if k not in ("True", "False")),
    "java": frozenset("""abstract assert boolean break byte case catch char class const continue default do double else
        enum extends final finally float for goto if implements import instanceof int interface long native new
        package private protected public return short static strictfp super switch synchronized this throw throws
        transient try void volatile while""".split()),
    "javascript": frozenset(_JAVASCRIPT.split()),
    "typescript": frozenset((_JAVASCRIPT + """ abstract any as asserts boolean constructor declare get infer is keyof
        module namespace never number object override readonly require satisfies set string symbol type undefined
        unique unknown""").split()),
    "go": frozenset("""break case chan const continue default defer else fallthrough for func go goto if import
        interface map package range return select struct switch type var nil""".split()),
    "rust": frozenset("""as async await break const continue crate dyn else enum extern fn for if impl in let loop match
        mod move mut pub ref return self Self static struct super trait type unsafe use where while""".split()),
    "csharp": frozenset("""abstract as base bool break byte case catch char checked class const continue decimal default
        delegate do double else enum event explicit extern finally fixed float for foreach goto if implicit in int
        interface internal is lock long namespace new null object operator out override params private protected
        public readonly ref return sbyte sealed short sizeof stackalloc static string struct switch this throw try
        typeof uint ulong unchecked unsafe ushort using virtual void volatile while""".split()),
}


# -- one task -----------------------------------------------------------------------------------------------------


@dataclass
class TaskScore:
    task_id: str
    repository: str
    setting: str | None
    missing: bool
    prediction: str  # after postprocessing and comment removal
    target: str  # after comment removal
    em: float
    es: float
    id_em: float
    id_precision: float
    id_recall: float
    id_f1: float


def first_statement(prompt: str, prediction: str, language: str) -> str:
    """The prediction cut as CrossCodeEval cuts it before scoring (see the module's docstring)."""
    if language == "python":
        # theirs tries every prefix but can only stop at a newline: trying the newlines alone gives the same cut
        for j, c in enumerate(prediction):
            if c == "\n" and j > 0 and _parses(prompt + prediction[:j]):
                return prediction[:j].rstrip()
        return prediction
    if language in _BRACKET_LANGUAGES:
        end = next((i for i, c in enumerate(prediction) if c in ";{}"), None)
        return prediction[: end + 1] if end else prediction  # (`if end`: a cut at 0 keeps it all, as theirs)
    return prediction


def _parses(code: str) -> bool:
    """No ERROR node in the tree (MISSING nodes pass, as in CrossCodeEval's check)."""
    root = _python_parser().parse(code.encode("utf-8", "replace")).root_node
    if not root.has_error:
        return True
    stack = [root]
    while stack:
        node = stack.pop()
        if node.is_error:
            return False
        stack.extend(child for child in node.children if child.has_error)
    return True


@functools.lru_cache(maxsize=1)
def _python_parser():
    import tree_sitter as ts

    from repocomplete.context_engine.parsing import load_grammar

    return ts.Parser(load_grammar("python", "python").language)


def remove_comments(code: str) -> str:
    return re.sub(r"//.*", "", re.sub(r"#.*", "", code))


def _lines(code: str) -> list[str]:
    return [line.strip() for line in code.split("\n") if line.strip()]


def strip_strings(code: str) -> str:
    """The code without its string literals (as the identifier metrics see it)."""
    return _STRING.sub("", code)


def identifiers(code: str, language: str) -> list[str]:
    keywords = KEYWORDS.get(language, frozenset())
    return [w for w in _WORD.findall(strip_strings(code)) if _IDENTIFIER_START.match(w) and w not in keywords]


def edit_similarity(prediction: str, target: str) -> float:
    return fuzz.ratio(prediction.strip(), target.strip())


def score_task(task: EvalTask, prediction: str | None) -> TaskScore:
    missing = prediction is None
    pred = remove_comments(first_statement(task.prompt, prediction or "", task.language))
    target = remove_comments(task.groundtruth)
    em = float(_lines(pred) == _lines(target))
    pred_ids, target_ids = identifiers(pred, task.language), identifiers(target, task.language)
    p, t = set(pred_ids), set(target_ids)
    tp, fp, fn = len(p & t), len(p - t), len(t - p)
    return TaskScore(
        task.task_id, task.repository, task.setting, missing, pred, target, em, edit_similarity(pred, target),
        id_em=float(pred_ids == target_ids),
        id_precision=tp / (tp + fp) if tp + fp else 0.0,
        id_recall=tp / (tp + fn) if tp + fn else 0.0,
        id_f1=2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0,
    )


# -- a suite ------------------------------------------------------------------------------------------------------


def summarize(scores: list[TaskScore]) -> dict:
    """Percentages over the tasks, rounded as CrossCodeEval rounds them (2 decimals)."""
    def mean(values) -> float:
        return round(statistics.fmean(values), 2) if scores else 0.0

    return {
        "n": len(scores),
        "missing": sum(s.missing for s in scores),
        "em": mean(100 * s.em for s in scores),
        "es": mean(s.es for s in scores),
        "id_em": mean(100 * s.id_em for s in scores),
        "id_f1": mean(100 * s.id_f1 for s in scores),
    }


def score(tasks: list[EvalTask], predictions: dict[str, str], per_task: bool = False) -> dict:
    scores = [score_task(t, predictions.get(t.task_id)) for t in tasks]
    report = {
        "tasks": len(tasks),
        "predictions": len(predictions),
        "missing": sum(s.missing for s in scores),
        "missing_scored_as": "empty prediction",
        "overall": summarize(scores),
        "per_repository": {repo: summarize([s for s in scores if s.repository == repo])
                           for repo in sorted({s.repository for s in scores})},
    }
    settings = sorted({s.setting for s in scores if s.setting is not None})
    if settings:
        report["per_setting"] = {name: summarize([s for s in scores if s.setting == name]) for name in settings}
    if per_task:
        report["per_task"] = [vars(s) for s in scores]
    return report


def score_files(tasks_path: str | Path, predictions_path: str | Path, per_task: bool = False,
                repos: str | Path | None = None) -> dict:
    """repos: the suite's repositories; given, the report has the valid-identifier rate (`valid_identifiers`)."""
    tasks = load_tasks(tasks_path)
    predictions = load_predictions(predictions_path, tasks)
    report = score(tasks, predictions, per_task)
    report["tasks_file"], report["predictions_file"] = str(tasks_path), str(predictions_path)
    if repos is not None:
        report["valid_identifiers"] = identifier_validity(tasks, predictions, repos)
    return report


def format_scores(report: dict) -> str:
    rows = [(name, m) for name, m in report["per_repository"].items()]
    rows += list(report.get("per_setting", {}).items())
    rows.append(("overall", report["overall"]))
    width = max(len("repository"), *(len(name) for name, _ in rows))
    lines = [f"{'repository':<{width}} {'tasks':>6} {'EM':>6} {'ES':>6} {'ID-EM':>6} {'ID-F1':>6}"]
    for name, m in rows:
        scores = " ".join(f"{m[key]:>6.2f}" for key in ("em", "es", "id_em", "id_f1"))
        lines.append(f"{name:<{width}} {m['n']:>6} {scores}")
    missing = report["missing"]
    valid = report.get("valid_identifiers")
    if valid is not None:
        lines.append(f"valid identifiers: {valid['rate']}% of {valid['identifiers']} checked; every one valid in "
                     f"{valid['tasks_valid']}% of {valid['tasks_checked']} tasks")
    lines.append(f"{report['tasks']} tasks, {report['predictions']} predictions, {missing} missing"
                 + (" (scored as empty predictions)" if missing else ""))
    return "\n".join(lines)


# -- valid identifiers (monitor-guided decoding) ----------------------------------------------------------------


def identifier_validity(tasks: list[EvalTask], predictions: dict[str, str], repos: str | Path) -> dict:
    """Of the identifiers the predictions write (Python tasks; the scored part: the first statement), the share that
    resolve by static analysis (`context_engine.facts.check_identifiers`: members of the receiver's type, keyword
    parameters of the callee, names bound in scope): `rate` over identifiers, `tasks_valid` the share of tasks
    whose every checked identifier resolves."""
    from repocomplete.context_engine.facts import check_identifiers
    from repocomplete.eval.suites import repo_dir

    checked = valid = tasks_checked = tasks_valid = 0
    invalid: dict[str, list[str]] = {}
    for task in tasks:
        if task.language != "python":
            continue
        prediction = predictions.get(task.task_id)
        pred = first_statement(task.prompt, prediction or "", task.language)
        if not pred.strip():
            continue
        root = repo_dir(repos, task)
        text = task.prompt + pred + task.right_context  # the task's line as the prediction writes it
        n, bad = check_identifiers(root, root / task.file, text, len(task.prompt), len(task.prompt) + len(pred))
        if not n:
            continue
        tasks_checked += 1
        tasks_valid += not bad
        checked += n
        valid += n - len(bad)
        if bad:
            invalid[task.task_id] = bad
    return {
        "identifiers": checked,
        "rate": round(100 * valid / checked, 2) if checked else None,
        "tasks_checked": tasks_checked,
        "tasks_valid": round(100 * tasks_valid / tasks_checked, 2) if tasks_checked else None,
        "invalid": invalid,
    }
