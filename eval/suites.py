"""Evaluation suites: line-completion tasks plus the repository snapshots they were cut from.

A suite is a JSONL file of tasks and a folder of repositories (`REPOS/<repository>/...`). Two formats load into one
`EvalTask`, detected line by line:

- CrossCodeEval: `prompt`, `groundtruth`, `right_context`, `metadata.{task_id, repository, file,
  groundtruth_start_lineno}`, optionally `crossfile_context` ({text, list: [{retrieved_chunk, filename, score}]}).
  `write_tasks` writes this format; `eval build-suite` produces it.
- RepoBench v1.1: `repo_name`, `file_path`, `context` ([{identifier, path, snippet}]), `import_statement`,
  `cropped_code`, `all_code`, `next_line`, `gold_snippet_index`, `level`; the setting (cross_file_first,
  cross_file_random, in_file) comes from a `setting` field or the file's name. The ground truth is `next_line`
  after its indentation; the prompt is the file's code before it (`all_code`, the uncropped `cropped_code`, with
  the import statement in front when `all_code` lacks it) plus that indentation. RepoBench has no task ids: a
  task is `<setting>/<i>`, its index among the file's tasks of that setting (the Hugging Face split's index when
  the file is an export of the splits).

The runner serves the task's file as an unsaved buffer, `task.buffer()`: the file with the target removed and the
cursor where the target was, so the answer never reaches the context engine even when the snapshot on disk still
holds it (RepoBench's; the suites built here have the target line blanked on disk too).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path

from repocomplete.context_engine.errors import InputError

SETTINGS = ("cross_file_first", "cross_file_random", "in_file")
# Suites shipped with the package: <name>/tasks.jsonl, <name>/repos/, <name>/SOURCE.md (see eval/build_suite.py).
SUITES_DIR = Path(__file__).parent / "suites"
_EXTRA_LANGUAGES = {".cs": "csharp"}  # CrossCodeEval has C#, which the context engine does not parse


@dataclass
class EvalTask:
    task_id: str
    repository: str  # folder name under the repos dir
    file: str  # path relative to the repository root (posix)
    prompt: str  # the current file's text before the cursor
    groundtruth: str  # the text to predict (rest of the line)
    right_context: str  # the current file's text after the groundtruth
    lineno: int  # 0-based line of the groundtruth start (CrossCodeEval's groundtruth_start_lineno)
    language: str = "python"
    crossfile_context: list[dict] | None = None  # as given by the suite (CrossCodeEval's list, RepoBench's context)
    setting: str | None = None  # RepoBench setting

    def buffer(self) -> tuple[str, int]:
        """The file as the editor holds it while the task runs: the target removed, and the cursor offset."""
        return self.prompt + self.right_context, len(self.prompt)


def language_of(path: str) -> str:
    from repocomplete.context_engine.parsing import language_for

    suffix = posixpath.splitext(path)[1].lower()
    return language_for(path) or _EXTRA_LANGUAGES.get(suffix) or (suffix.lstrip(".") or "unknown")


# -- loading ------------------------------------------------------------------------------------------------------


def load_tasks(path: str | Path, repos: str | Path | None = None) -> list[EvalTask]:
    """The tasks of a CrossCodeEval or RepoBench JSONL file; with `repos`, each task's snapshot must exist."""
    path = Path(path)
    text = read_input(path, "tasks file")
    file_setting = next((s for s in SETTINGS if s in path.name), None)
    tasks: list[EvalTask] = []
    first_line: dict[str, int] = {}
    per_setting: dict[str | None, int] = {}
    for lineno, where, record in jsonl_records(path, text, "a task"):
        if "next_line" in record:
            setting = _setting(record, file_setting, where)
            index = per_setting.get(setting, 0)
            per_setting[setting] = index + 1
            task = _from_repobench(record, setting, index, where)
        elif "groundtruth" in record or "metadata" in record:
            task = _from_crosscodeeval(record, where)
        else:
            raise InputError(f"{where}: neither a CrossCodeEval task (prompt, groundtruth, right_context, metadata) "
                             f"nor a RepoBench one (next_line, cropped_code, ...)")
        if task.task_id in first_line:
            raise InputError(f"{where}: duplicate task id {task.task_id!r} (first on line {first_line[task.task_id]})")
        first_line[task.task_id] = lineno
        tasks.append(task)
    if not tasks:
        raise InputError(f"no tasks in {path}")
    if repos is not None:
        for task in tasks:
            repo_dir(repos, task)
    return tasks


def required_field(record: dict, key: str, kind: type | tuple[type, ...], where: str, prefix: str = ""):
    if key not in record:
        raise InputError(f"{where}: missing field {prefix}{key}")
    value = record[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise InputError(f"{where}: field {prefix}{key} must be {names}, got {type(value).__name__}")
    return value


def _relative(value: str, what: str, where: str) -> str:
    rel = posixpath.normpath(value.replace("\\", "/"))
    if not value or value.startswith("/") or rel == "." or rel == ".." or rel.startswith("../"):
        raise InputError(f"{where}: {what} must be a relative path inside the repository, got {value!r}")
    return rel


def _from_crosscodeeval(record: dict, where: str) -> EvalTask:
    meta = required_field(record, "metadata", dict, where)
    prompt = required_field(record, "prompt", str, where)
    groundtruth = required_field(record, "groundtruth", str, where)
    right_context = required_field(record, "right_context", str, where)
    task_id = required_field(meta, "task_id", str, where, "metadata.")
    repository = _relative(required_field(meta, "repository", str, where, "metadata."), "metadata.repository", where)
    file = _relative(required_field(meta, "file", str, where, "metadata."), "metadata.file", where)
    lineno = required_field(meta, "groundtruth_start_lineno", int, where, "metadata.")
    if not task_id:
        raise InputError(f"{where}: metadata.task_id is empty")
    if lineno < 0:
        raise InputError(f"{where}: metadata.groundtruth_start_lineno must be >= 0, got {lineno}")
    language = meta.get("language") or language_of(file)
    if not isinstance(language, str):
        raise InputError(f"{where}: metadata.language must be str, got {type(language).__name__}")
    setting = meta.get("setting")
    if setting is not None and not isinstance(setting, str):
        raise InputError(f"{where}: metadata.setting must be str, got {type(setting).__name__}")
    return EvalTask(task_id, repository, file, prompt, groundtruth, right_context, lineno, language,
                    _crossfile_context(record.get("crossfile_context"), where), setting)


def _crossfile_context(value, where: str) -> list[dict] | None:
    """CrossCodeEval's {text, list} (or "" / {} when there is none), or a list of chunks as given."""
    if value in (None, "", {}, []):
        return None
    if isinstance(value, dict):
        value = value.get("list", [])
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise InputError(f"{where}: crossfile_context must be {{text, list: [objects]}} or a list of objects")
    return value or None


def _setting(record: dict, file_setting: str | None, where: str) -> str | None:
    setting = record.get("setting", file_setting)
    if setting is not None and setting not in SETTINGS:
        raise InputError(f"{where}: unknown RepoBench setting {setting!r} (known: {', '.join(SETTINGS)})")
    return setting


def _from_repobench(record: dict, setting: str | None, index: int, where: str) -> EvalTask:
    repository = _relative(required_field(record, "repo_name", str, where), "repo_name", where)
    file = _relative(required_field(record, "file_path", str, where), "file_path", where)
    next_line = required_field(record, "next_line", str, where)
    cropped = required_field(record, "cropped_code", str, where)
    all_code = required_field(record, "all_code", str, where)
    imports = required_field(record, "import_statement", str, where)
    context = required_field(record, "context", list, where)
    for key, kind in (("gold_snippet_index", int), ("level", str)):
        if key in record:
            required_field(record, key, kind, where)
    if not all(isinstance(c, dict) for c in context):
        raise InputError(f"{where}: field context must be a list of objects")
    next_line = next_line.rstrip("\r\n")
    indent = next_line[: len(next_line) - len(next_line.lstrip())]
    code, right = _code_before(all_code, cropped, next_line)
    if imports.strip() and imports.strip() not in code:
        code = imports.rstrip("\n") + "\n" + code
    prompt = (code.rstrip("\n") + "\n" if code.strip() else "") + indent
    return EvalTask(
        task_id=f"{setting or 'repobench'}/{index}",
        repository=repository,
        file=file,
        prompt=prompt,
        groundtruth=next_line[len(indent):],
        right_context=right,
        lineno=prompt.count("\n"),
        language=language_of(file),
        crossfile_context=context or None,
        setting=setting,
    )


def _code_before(all_code: str, cropped: str, next_line: str) -> tuple[str, str]:
    """The file's code before the next line and, when all_code reaches past it, the code after it."""
    tail = cropped.rstrip()
    if not all_code.strip():
        return cropped, ""
    if all_code.rstrip().endswith(tail):
        return all_code, ""
    # all_code holding the whole file: cut it where the cropped code and the next line meet
    at = all_code.find(tail + "\n" + next_line) if tail else -1
    if at >= 0:
        end = at + len(tail) + 1
        return all_code[:end], all_code[end + len(next_line):]
    return cropped, ""


def repo_dir(repos: str | Path, task: EvalTask) -> Path:
    """The snapshot of the task's repository; InputError naming the task when it is missing."""
    path = Path(repos) / task.repository
    if not path.is_dir():
        raise InputError(f"task {task.task_id}: repository snapshot not found: {path}")
    return path


# -- writing ------------------------------------------------------------------------------------------------------


def to_crosscodeeval(task: EvalTask) -> dict:
    metadata = {"task_id": task.task_id, "repository": task.repository, "file": task.file,
                "groundtruth_start_lineno": task.lineno, "language": task.language}
    if task.setting is not None:
        metadata["setting"] = task.setting
    record = {"prompt": task.prompt, "groundtruth": task.groundtruth, "right_context": task.right_context,
              "metadata": metadata}
    if task.crossfile_context:
        record["crossfile_context"] = {"list": task.crossfile_context}
    return record


def write_tasks(tasks: list[EvalTask], path: str | Path) -> None:
    """CrossCodeEval JSONL, one task a line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for task in tasks:
            f.write(json.dumps(to_crosscodeeval(task), ensure_ascii=False) + "\n")


def task_id_for(repository: str, file: str, lineno: int) -> str:
    """The id `eval build-suite` gives a task: `<repo>/<file>:<1-based line>`."""
    return f"{repository}/{file}:{lineno + 1}"


# -- reading input files --------------------------------------------------------------------------------------


def read_input(path: str | Path, what: str, errors: str = "strict") -> str:
    """The text of an input file (UTF-8); a missing or unreadable one is an InputError naming `what` it is."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8", errors=errors)
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {what} {path}: {e}") from None


def jsonl_object(line: str, where: str, what: str) -> dict:
    """One JSONL line that must hold a JSON object; otherwise an InputError naming `where` ("file:line")."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise InputError(f"{where}: {what} must be a JSON object, got {type(record).__name__}")
    return record


def jsonl_records(path, text: str, what: str):
    """(line number, "file:line", object) for each non-blank line of a JSONL text; a line that is not a JSON object
    is an InputError naming its file and line."""
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip():
            where = f"{path}:{lineno}"
            yield lineno, where, jsonl_object(line, where, what)
