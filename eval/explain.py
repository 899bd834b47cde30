"""`repocomplete eval explain`: why each task of a repository-context run missed, and what each provider brought.

A task needs a definition when its ground truth uses a name that the repository defines (the context engine's
index: classes, functions, methods, module constants) and that no definition of it lies in the part of the task's
own file the model sees (the prefix window, and the suffix window where the prompt template shows it). Used after
a dot (`state.level`) any such name counts; used bare, only one the file imports from the repository or defines
itself out of view (a local variable that shares a repository name is the file's own): `eval build-suite`'s
criterion for a cross-file use. The names of builtins and of the builtin types' members (`get`, `append`, ...)
and dunders are left out, as there.

A context record shows a definition when it comes from the definition's file, its lines hold the definition's
first line, and its text holds the name (a retrieved window, an import's or a type's stub, a repo-map signature,
a neighbour's lines). Class-level fields (dataclass fields, attributes set in `__init__`) are no index
definitions: a member name is needed only where the index defines something of that name, and it is also shown
by a record that declares an attribute of that name (`self.name =`, an annotated `name: T` in a class body or
stub), the declaration an attribute has instead of an index site.

Each needed name reaches one stage: `in_prompt` (a record in the prompt shows it), `cut` (only records the packer
dropped show it: over budget, a duplicate, overlapping the current file's window; or packed but dropped from the
prompt by the model's prompt limit), `not_retrieved` (no provider's candidate shows it). A task is then:

    hit            the prediction is an exact match (CrossCodeEval's EM)
    no_need        a miss whose ground truth needs no definition from elsewhere          (d)
    not_retrieved  a miss where some needed definition was no provider's candidate      (a)
    cut            a miss where every needed definition was found, some only dropped   (b)
    model_miss     a miss with every needed definition in the prompt                    (c)

Per provider: recall of the needed names among its candidates and among its records in the prompt (over every
(task, needed name) pair), how often its records in the prompt name them at all (a retrieved window that calls a
function shows how it is used, not where it is defined), and the tokens its records take in the prompt, with the
share of them that show a needed definition. For needed names no provider found, how deep the repo map's full ranking and a deeper retrieval
query would have had to go (what a bigger quota or k would buy).

The model completes nothing here: the context of each task is recomputed as `eval run` made it (the same settings
from OUT.meta.json, the task's buffer, a settled workspace, every provider waited for, the run's model loaded so
that records cost its tokens and the context fits its window as in the run) and checked against the provenance the
run recorded, when it recorded one. The prompt template (does the model see the suffix?) and the model's prompt
limit come from the model too. `classify` and `summarize` are pure functions of the gathered facts; `gather` does
the looking up.
"""

from __future__ import annotations

import logging
import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.errors import InputError
from repocomplete.context_engine.packing import STABILITY_ORDER, approx_tokens
from repocomplete.context_engine.records import ContextRecord
from repocomplete.eval.build_suite import COMMON_NAMES

log = logging.getLogger(__name__)

CLASSES = ("hit", "no_need", "not_retrieved", "cut", "model_miss")
CLASS_LABELS = {
    "hit": "hit (exact match)",
    "no_need": "(d) miss, needs no cross-file definition",
    "not_retrieved": "(a) miss, needed definition not retrieved",
    "cut": "(b) miss, retrieved but cut",
    "model_miss": "(c) miss, definitions in the prompt",
}
STAGES = ("in_prompt", "cut", "not_retrieved")
PROVIDERS = STABILITY_ORDER  # repo_map, imports, retrieval, typed_holes, neighbours (the prompt's order)
PROMPT_LIMIT = "the model's prompt limit"
DEPTH_K = 50  # how deep the diagnostic retrieval query goes (the provider asks for 8)
_CUT_PRIORITY = ("over budget", PROMPT_LIMIT, "duplicate", "already in the current file's window")


@dataclass(frozen=True)
class Site:
    """Where a name is defined: a file and the definition's first line (1-based)."""

    path: str
    line: int


@dataclass
class TaskFacts:
    """What the classifier reads about one task (gathered by `gather`, or written by hand in tests)."""

    task_id: str
    hit: bool  # the prediction is an exact match
    es: float  # its edit similarity (0-100)
    needed: dict[str, tuple[Site, ...]]  # the needed names and their definitions
    packed: list[ContextRecord]  # the packer's records, in prompt order
    dropped: list[tuple[ContextRecord, str]] = field(default_factory=list)  # the packer's other candidates, why
    in_prompt: list[bool] | None = None  # per packed record: still in the prompt after the model's limit (None: all)
    depth: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> {provider: 1-based rank beyond its cut}
    members: frozenset[str] = frozenset()  # needed names the ground truth uses after a dot (attributes count)
    costs: list[int] | None = None  # per packed record, its tokens as the packer counted them (None: the estimate)


def name_uses(code: str, language: str) -> list[tuple[str, bool]]:
    """The names a line of code uses, in order, each with whether it follows a dot (a member: `state.level`) or
    not (a bare name: `Ruler()`); strings, comments and keywords left out (as the identifier metrics do)."""
    from repocomplete.eval.metrics import KEYWORDS, remove_comments, strip_strings

    keywords = KEYWORDS.get(language, frozenset())
    code = strip_strings(remove_comments(code))
    return [(m.group(), code[: m.start()].rstrip().endswith("."))
            for m in _NAME.finditer(code) if m.group() not in keywords]


_NAME = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*")


def needed_definitions(uses: Iterable[tuple[str, bool]], definitions: Mapping[str, Sequence[Site]], current: str,
                       visible: tuple[int, int], imported: Iterable[str] = (),
                       visible_text: str = "") -> dict[str, tuple[Site, ...]]:
    """The names a ground truth needs from elsewhere. uses: its (name, member?) pairs (`name_uses`); definitions:
    name -> the sites the repository's index knows; visible: the (first, last) line of the current file the model
    sees, and visible_text those lines' text; imported: the bare names the current file imports from the repository.

    A member the visible text declares (`self.name = ...`, a class field `name: T`) is the file's own attribute,
    which the index has no site for: `self.expand` where `__init__` in view sets it is not `Table.expand`.

    A name is needed when the index defines it and no definition of it lies in the visible lines, and, used bare,
    when the file imports it from the repository or defines it itself (elsewhere than in view): a bare name
    bound otherwise (a local variable, a parameter) is the file's own, whatever the repository defines under that
    name. Builtins, the builtin types' members and dunders are no repository's."""
    imported = set(imported)
    needed: dict[str, tuple[Site, ...]] = {}
    first, last = visible
    for name, member in uses:
        if name in needed or name in COMMON_NAMES or (name.startswith("__") and name.endswith("__")):
            continue
        sites = tuple(definitions.get(name, ()))
        if not sites or any(s.path == current and first <= s.line <= last for s in sites):
            continue
        if member and visible_text and declares_attribute(visible_text, name):
            continue
        if member or name in imported or any(s.path == current for s in sites):
            needed[name] = sites
    return needed


def shows(record: ContextRecord, name: str, sites: Iterable[Site], member: bool = False) -> bool:
    """Does the record show a definition of `name`: one of its sites in the record's file and lines, and the name in
    its text? A name used as a member is also shown by a declaration of an attribute of that name (`self.name =`,
    an annotated `name: T` in a class body or a stub), which is what an attribute has instead of an index site."""
    if any(s.path == record.path and record.start_line <= s.line <= record.end_line for s in sites) and re.search(
            rf"(?<!\w){re.escape(name)}(?!\w)", record.text):
        return True
    return member and declares_attribute(record.text, name)


def declares_attribute(text: str, name: str) -> bool:
    """`self.name = ...` / `this.name = ...` anywhere, or an indented annotation `name: T` (a class field)."""
    n = re.escape(name)
    return re.search(rf"(?:\bself|\bthis)\.{n}\s*=(?!=)|^[ \t]+{n}[ \t]*:[ \t]*[^\s=]", text, re.MULTILINE) is not None


@dataclass
class Explanation:
    task_id: str
    klass: str
    hit: bool
    es: float
    names: dict[str, dict]  # name -> {stage, reason, candidates: [providers], prompt: [providers], depth}
    providers: dict[str, dict]  # kind -> {candidates, records, tokens, needed_tokens, found, prompt}
    lost: int = 0  # packed records the model's prompt limit cut off

    def to_json(self) -> dict:
        return {"task_id": self.task_id, "class": self.klass, "hit": self.hit, "es": round(self.es, 2),
                "names": self.names, "providers": self.providers, "lost_to_prompt_limit": self.lost}


def classify(facts: TaskFacts) -> Explanation:
    """One task's class, each needed name's stage, and what each provider found and spent (see the module)."""
    in_prompt = facts.in_prompt if facts.in_prompt is not None else [True] * len(facts.packed)
    if len(in_prompt) != len(facts.packed):
        raise ValueError(f"{facts.task_id}: in_prompt has {len(in_prompt)} entries for {len(facts.packed)} records")
    costs = facts.costs if facts.costs is not None else [approx_tokens(r.text) for r in facts.packed]
    cost = {id(r): c for r, c in zip(facts.packed, costs)}
    shown = [r for r, kept in zip(facts.packed, in_prompt) if kept]
    lost = [(r, PROMPT_LIMIT) for r, kept in zip(facts.packed, in_prompt) if not kept]
    candidates = list(facts.packed) + [r for r, _ in facts.dropped]

    names: dict[str, dict] = {}

    def show(r: ContextRecord, name: str) -> bool:
        return shows(r, name, facts.needed[name], name in facts.members)

    for name in facts.needed:
        prompt = [r.kind for r in shown if show(r, name)]
        found = [r.kind for r in candidates if show(r, name)]
        reasons = [why for r, why in lost + list(facts.dropped) if show(r, name)]
        if prompt:
            stage, reason = "in_prompt", None
        elif reasons:
            stage = "cut"
            reason = min(reasons, key=lambda w: _CUT_PRIORITY.index(w) if w in _CUT_PRIORITY else len(_CUT_PRIORITY))
        else:
            stage, reason = "not_retrieved", None
        # a record may use the name without defining it (a retrieved window calling it): what an example shows
        word = re.compile(rf"(?<!\w){re.escape(name)}(?!\w)")
        mentioned = [r.kind for r in shown if word.search(r.text)]
        names[name] = {"stage": stage, "reason": reason, "candidates": sorted(set(found)),
                       "prompt": sorted(set(prompt)), "mentioned": sorted(set(mentioned)),
                       "depth": dict(facts.depth.get(name, {}))}

    providers: dict[str, dict] = {}
    for kind in sorted({r.kind for r in candidates} | set(PROVIDERS), key=_provider_rank):
        mine = [r for r in shown if r.kind == kind]
        useful = [r for r in mine if any(show(r, n) for n in facts.needed)]
        providers[kind] = {
            "candidates": sum(r.kind == kind for r in candidates),
            "records": len(mine),
            "tokens": sum(cost[id(r)] for r in mine),
            "needed_tokens": sum(cost[id(r)] for r in useful),
            "found": sorted(n for n, v in names.items() if kind in v["candidates"]),
            "prompt": sorted(n for n, v in names.items() if kind in v["prompt"]),
        }

    if facts.hit:
        klass = "hit"
    elif not names:
        klass = "no_need"
    else:
        klass = max((v["stage"] for v in names.values()), key=STAGES.index)  # the worst stage decides
        klass = "model_miss" if klass == "in_prompt" else klass
    return Explanation(facts.task_id, klass, facts.hit, facts.es, names, providers, len(lost))


def _provider_rank(kind: str) -> int:
    return PROVIDERS.index(kind) if kind in PROVIDERS else len(PROVIDERS)


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 2) if values else None  # (2 decimals, as eval.metrics; shown with 1)


def summarize(explanations: Sequence[Explanation], baseline_es: Mapping[str, float] | None = None) -> dict:
    """The suite's figures: tasks per class (with mean ES, and the baseline's ES on the same tasks when given), each
    provider's recall and tokens, why needed definitions were cut, how deep the missed ones ranked."""
    n = len(explanations)
    classes = {}
    for klass in CLASSES:
        mine = [e for e in explanations if e.klass == klass]
        row = {"tasks": len(mine), "share": round(100 * len(mine) / n, 1) if n else 0.0,
               "es": _mean([e.es for e in mine])}
        if baseline_es is not None:
            base = [baseline_es[e.task_id] for e in mine if e.task_id in baseline_es]
            row["baseline_es"] = _mean(base)
            paired = [e.es - baseline_es[e.task_id] for e in mine if e.task_id in baseline_es]
            row["es_gain"] = _mean(paired)
            row["es_gain_points"] = round(sum(paired) / n, 2) if n else 0.0  # its share of the suite's ES gain
        classes[klass] = row

    pairs = [(e, name, v) for e in explanations for name, v in e.names.items()]
    providers = {}
    for kind in PROVIDERS:
        rows = [e.providers.get(kind, {}) for e in explanations]
        tokens = sum(r.get("tokens", 0) for r in rows)
        providers[kind] = {
            "recall_candidates": round(100 * sum(kind in v["candidates"] for _, _, v in pairs) / len(pairs), 1)
            if pairs else None,
            "recall_prompt": round(100 * sum(kind in v["prompt"] for _, _, v in pairs) / len(pairs), 1)
            if pairs else None,
            "mentions_prompt": round(100 * sum(kind in v["mentioned"] for _, _, v in pairs) / len(pairs), 1)
            if pairs else None,
            "candidates_per_task": _mean([r.get("candidates", 0) for r in rows]),
            "tokens_per_task": _mean([r.get("tokens", 0) for r in rows]),
            "needed_token_share": round(100 * sum(r.get("needed_tokens", 0) for r in rows) / tokens, 1)
            if tokens else None,
        }
    stages = Counter(v["stage"] for _, _, v in pairs)
    missed = [v for _, _, v in pairs if v["stage"] == "not_retrieved"]
    depth = {}
    for kind in sorted({k for v in missed for k in v["depth"]}, key=_provider_rank):
        ranks = [v["depth"][kind] for v in missed if kind in v["depth"]]
        depth[kind] = {"found": len(ranks), "median_rank": statistics.median(ranks),
                       "within_10": sum(r <= 10 for r in ranks), "within_25": sum(r <= 25 for r in ranks)}
    return {
        "tasks": n,
        "es": _mean([e.es for e in explanations]),
        "baseline_es": _mean([baseline_es[e.task_id] for e in explanations if e.task_id in baseline_es])
        if baseline_es is not None else None,
        "classes": classes,
        "tasks_with_needs": sum(bool(e.names) for e in explanations),
        "needed_names": len(pairs),
        "stages": {s: stages.get(s, 0) for s in STAGES},
        "recall_any": round(100 * sum(v["stage"] != "not_retrieved" for _, _, v in pairs) / len(pairs), 1)
        if pairs else None,
        "cut_reasons": dict(Counter(v["reason"] for _, _, v in pairs if v["stage"] == "cut").most_common()),
        "prompt_limit_tasks": sum(e.lost > 0 for e in explanations),
        "providers": providers,
        "not_retrieved_depth": depth,
    }


def _fmt(value, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.1f}{suffix}" if isinstance(value, float) else f"{value}{suffix}"


def format_tables(summary: dict, title: str = "") -> str:
    """The summary as markdown: the classes, the providers, and a few lines on stages, cuts and depth."""
    base = summary.get("baseline_es") is not None
    lines = [f"### {title}", ""] if title else []
    head = "| class | tasks | share | ES |" + (" ES baseline | ES gain | share of suite gain |" if base else "")
    lines += [head, "|---|---:|---:|---:|" + ("---:|---:|---:|" if base else "")]
    for klass, row in summary["classes"].items():
        line = f"| {CLASS_LABELS[klass]} | {row['tasks']} | {row['share']}% | {_fmt(row['es'])} |"
        if base:
            line += f" {_fmt(row['baseline_es'])} | {_fmt(row['es_gain'])} | {row['es_gain_points']:+.1f} |"
        lines.append(line)
    line = f"| all | {summary['tasks']} | 100% | {_fmt(summary['es'])} |"
    if base:
        gain = None if summary["es"] is None else round(summary["es"] - summary["baseline_es"], 2)
        line += f" {_fmt(summary['baseline_es'])} | {_fmt(gain)} | {'-' if gain is None else f'{gain:+.1f}'} |"
    lines += [line, ""]
    lines += [("| provider | recall in candidates | recall in prompt | named in prompt | candidates/task | "
               "prompt tokens/task | tokens on needed defs |"), "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, row in summary["providers"].items():
        lines.append(f"| {kind} | {_fmt(row['recall_candidates'], '%')} | {_fmt(row['recall_prompt'], '%')} | "
                     f"{_fmt(row['mentions_prompt'], '%')} | "
                     f"{_fmt(row['candidates_per_task'])} | {_fmt(row['tokens_per_task'])} | "
                     f"{_fmt(row['needed_token_share'], '%')} |")
    stages = summary["stages"]
    lines.append("")
    lines.append(f"{summary['tasks_with_needs']} of {summary['tasks']} tasks need a definition from elsewhere, "
                 f"{summary['needed_names']} names in all: {stages['in_prompt']} in the prompt, {stages['cut']} cut, "
                 f"{stages['not_retrieved']} not retrieved (any provider's recall: "
                 f"{_fmt(summary['recall_any'], '%')}).")
    if summary["cut_reasons"]:
        lines.append("Cut: " + ", ".join(f"{why} {k}" for why, k in summary["cut_reasons"].items()) + ".")
    if summary["prompt_limit_tasks"]:
        lines.append(f"In {summary['prompt_limit_tasks']} tasks the model's prompt limit cut off packed records.")
    if summary["not_retrieved_depth"]:
        parts = [f"{kind} ranks {d['found']} of them (median rank {d['median_rank']}, {d['within_10']} within 10, "
                 f"{d['within_25']} within 25)" for kind, d in summary["not_retrieved_depth"].items()]
        lines.append(f"Not retrieved, deeper: {'; '.join(parts)}.")
    return "\n".join(lines) + "\n"


# -- gathering the facts of a run ---------------------------------------------------------------------------------


@dataclass
class PromptView:
    """What the model does with prompt parts, from its tokenizer: the template (does it show the suffix?) and the
    cut of a prompt over the model's limit (model_runtime.engine.Engine.encode: the start goes, in steps)."""

    tokenizer: object
    template: object  # model_runtime.templates.FimTemplate
    order: str
    limit: int

    @property
    def sees_suffix(self) -> bool:
        from repocomplete.model_runtime.templates import suffix_lines_shown

        return suffix_lines_shown(self.template) != 0

    def kept(self, parts) -> list[bool] | None:
        """Per context item of `parts` (PromptParts): whether its text is still in the prompt the model reads, once
        a prompt over the limit has lost its start. None when the count here disagrees with the engine's."""
        import dataclasses

        from repocomplete.model_runtime.engine import encode_prompt
        from repocomplete.model_runtime.templates import ContextItem, PromptParts, context_text, model_view, render

        parts = model_view(self.template, parts)
        if not parts.context:
            return []
        # encode_prompt's pieces, counted, noting where each context item's text starts
        tok = self.tokenizer
        values = {"prefix": parts.prefix, "suffix": parts.suffix}
        values.update({f"context{i}": context_text(self.template, item) for i, item in enumerate(parts.context)})
        marked = render(dataclasses.replace(self.template, comment_context=False), PromptParts(
            "\x00prefix\x00", "\x00suffix\x00", parts.path,
            [ContextItem(item.path, f"\x00context{i}\x00") for i, item in enumerate(parts.context)],
            parts.repo_name), self.order)
        bos = tok("")["input_ids"]
        n = 1 if bos and bos[0] == tok.bos_token_id else 0
        starts = []
        for i, piece in enumerate(marked.split("\x00")):
            if not piece:
                continue
            if i % 2 == 1:
                if piece.startswith("context"):
                    starts.append(n)
                n += len(tok.encode(values[piece], add_special_tokens=False, split_special_tokens=True))
            else:
                n += len(tok.encode(piece, add_special_tokens=False))
        if n != len(encode_prompt(tok, self.template, parts, self.order)[1].ids) or len(starts) != len(parts.context):
            return None
        if n <= self.limit:
            return [True] * len(starts)
        step = min(512, max(1, self.limit // 4))  # as Engine.encode cuts a prompt over its limit
        cut = -(-(n - self.limit) // step) * step
        return [start >= cut for start in starts]


def view_of(model) -> PromptView | None:
    """The view of a loaded model (a local `Engine`): None for one whose tokenizer is unknown here (an endpoint)."""
    tokenizer, template = getattr(model, "tokenizer", None), getattr(model, "template", None)
    if tokenizer is None or template is None:
        return None
    return PromptView(tokenizer, template, model.order, model.config.max_context_tokens)


def _facts(task, workspace, text: str, offset: int, parts, ctx, record: dict, view: PromptView | None,
           depth: bool) -> tuple[TaskFacts, bool | None]:
    """One task's facts, with its workspace holding the task's buffer; and whether the context recomputed here is
    the one the run recorded (None: the run recorded none)."""
    from repocomplete.context_engine.document import cursor_parts
    from repocomplete.eval.metrics import score_task
    from repocomplete.eval.runner import context_provenance

    rel = workspace.relative(workspace.root / task.file)
    score = score_task(task, record["pred"])
    line = text[:offset].count("\n") + 1
    window = cursor_parts(text, offset, "infile")  # the Completer's default window, as in the run
    first = line - window.prefix.count("\n")
    last = line + (window.suffix.count("\n") if view is None or view.sees_suffix else 0)
    uses = name_uses(task.groundtruth, task.language)
    definitions = {n: [Site(d.path, d.start_line) for d in workspace.index.definitions(name=n)] for n, _ in uses}
    seen = window.prefix + (window.suffix if view is None or view.sees_suffix else "")
    needed = needed_definitions(uses, definitions, rel, (first, last), imported_from_repository(workspace.index, rel),
                                visible_text=seen)
    packed, dropped = list(ctx.packed.records), list(ctx.packed.dropped)
    in_prompt = view.kept(parts) if view is not None else None
    if view is not None and (in_prompt is None or len(in_prompt) != len(packed)):
        log.warning("task %s: the prompt's context could not be matched to the packed records; taken as all kept",
                    task.task_id)
        in_prompt = None
    members = frozenset(n for n, member in uses if member and n in needed)
    found = {name for name, sites in needed.items()
             if any(shows(r, name, sites, name in members) for r in packed + [r for r, _ in dropped])}
    missed = {n: s for n, s in needed.items() if n not in found}
    ranks = _depth(workspace, rel, text, offset, line, missed, members) if depth else {}
    recorded = record.get("context")
    same = None
    if isinstance(recorded, dict):
        now = context_provenance(ctx, workspace.record_tokens)
        same = now["records"] == recorded.get("records") and now["dropped"] == recorded.get("dropped")
    costs = [workspace.record_tokens(r.path, r.text) for r in packed]
    return TaskFacts(task.task_id, bool(score.em), score.es, needed, packed, dropped, in_prompt, ranks,
                     members, costs), same


def imported_from_repository(index, rel: str) -> set[str]:
    """The bare names a file imports from the repository (`eval build-suite`'s criterion for a cross-file use)."""
    from repocomplete.eval.build_suite import cross_file_names

    defined_in: dict[str, set[str]] = {}
    for d in index.definitions():
        defined_in.setdefault(d.name, set()).add(d.path)
    return cross_file_names(index, rel, defined_in, index.all_identifiers().get(rel, ())).bare


def _depth(workspace, rel: str, text: str, offset: int, line: int, missed: dict[str, tuple[Site, ...]],
           members: frozenset[str] = frozenset()) -> dict[str, dict[str, int]]:
    """For needed names no candidate showed: their rank in the repo map's whole ranking (the provider keeps what
    fits its quota) and in a retrieval query DEPTH_K deep (the provider asks for 8)."""
    from repocomplete.context_engine.repo_map import RepoGraph
    from repocomplete.context_engine.retrieval import query_text_for

    if not missed:
        return {}
    config = workspace.config
    out: dict[str, dict[str, int]] = {name: {} for name in missed}
    if "repo_map" in config.providers:
        ranked = RepoGraph(workspace.index.definitions(), workspace.index.all_identifiers()).rank_definitions(rel)
        for name, sites in missed.items():
            rank = next((k for k, (_, d) in enumerate(ranked, 1)
                         if d.name == name and Site(d.path, d.start_line) in sites), None)
            if rank is not None:
                out[name]["repo_map"] = rank
    if "retrieval" in config.providers:
        query = query_text_for(text[:offset], config.query_lines)  # as ContextEngine._retrieve asks
        exclude = (rel, max(1, line - config.window_lines), line)
        windows = workspace.retriever.query(query, k=DEPTH_K, exclude=exclude) if query.strip() else []
        for name, sites in missed.items():
            rank = next((k for k, r in enumerate(windows, 1) if shows(r, name, sites, name in members)), None)
            if rank is not None:
                out[name]["retrieval"] = rank
    return out


def gather(tasks: Sequence, repos: str | Path, predictions: Mapping[str, dict], context: ContextConfig, options,
           view: PromptView | None, make_context_engine: Callable | None = None, depth: bool = True,
           progress: bool = False, model=None) -> tuple[list[TaskFacts], dict[str, bool | None]]:
    """The facts of each task that has a prediction, its context recomputed as `eval run` made it (one workspace per
    repository, the task's buffer set and the workspace settled before each; options: resolved RunOptions).

    model: the run's model engine, never asked to complete: the Completer counts a context in its tokens and
    bounds it by its window, as in the run (None: the estimate, and no bound). It is closed at the end."""
    from repocomplete.eval.runner import eval_context, eval_context_engine, settle
    from repocomplete.eval.suites import repo_dir
    from tqdm import tqdm

    from repocomplete.pipeline import Completer

    context = eval_context(context)
    completer = Completer(model, context, make_context_engine=make_context_engine or eval_context_engine)
    completion_options = options.completion_options()
    by_repo: dict[str, list] = {}
    for t in tasks:
        if t.task_id in predictions:
            by_repo.setdefault(t.repository, []).append(t)
    facts, same = [], {}
    bar = tqdm(total=sum(map(len, by_repo.values())), unit="task", desc="explain", disable=not progress)
    try:
        for group in by_repo.values():
            root = repo_dir(repos, group[0]).resolve()
            workspace = completer.open_workspace(root)
            for t in group:
                text, offset = t.buffer()
                workspace.set_buffer(t.file, text)
                try:
                    settle(workspace)
                    parts, ctx = completer.prompt_parts(str(root / t.file), text, offset, completion_options,
                                                        workspace=workspace)
                    f, same[t.task_id] = _facts(t, workspace, text, offset, parts, ctx, predictions[t.task_id],
                                                view, depth)
                finally:
                    workspace.clear_buffer(t.file)
                facts.append(f)
                bar.update(1)
            completer.close_workspace(root)
    finally:
        bar.close()
        completer.close()
    return facts, same


def run_settings(pred_path: str | Path) -> dict:
    """The settings `eval run` recorded beside a prediction file ({} when it recorded none)."""
    from repocomplete.eval.predictions import PredictionFile

    return (PredictionFile(pred_path).meta() or {}).get("settings") or {}


def explain(tasks: Sequence, repos: str | Path, pred_path: str | Path, runtime, context: ContextConfig, options,
            baseline: str | Path | None = None, model="auto", view: PromptView | None | str = "auto",
            make_context_engine: Callable | None = None, depth: bool = True, title: str | None = None,
            runtime_overrides: Mapping | None = None) -> dict:
    """Explain a repository-context run: its settings (budget, providers, dense, the model's) from OUT.meta.json
    where it has them, else from `context`, `options` and `runtime` (a RuntimeConfig; None: the run's, with
    `runtime_overrides`). baseline: the predictions of another run (in-file, say) whose ES is set beside each
    class. model: "auto" loads the run's model (its weights too, never run: the context's costs and bound are its
    tokenizer's), None counts with the estimate, or an engine to use; view: "auto" (the model's), or one given."""
    from dataclasses import replace

    from repocomplete.eval.metrics import score_task
    from repocomplete.eval.options import resolve_options
    from repocomplete.eval.predictions import read_predictions
    from repocomplete.eval.runner import check_unique, git_head
    from repocomplete.eval.scale import select

    options.validate()
    check_unique(tasks)
    settings = run_settings(pred_path)
    if settings.get("context", "repo") != "repo":
        raise InputError(f"{pred_path} was made with --context {settings['context']}: explain needs a repository-"
                         f"context run")
    if settings.get("iterative"):
        raise InputError(f"{pred_path} was made with --iterative: its second context came from a draft that was not "
                         f"kept, so it cannot be recomputed")
    if settings.get("providers") is not None:
        context = context.replace(providers=tuple(settings["providers"]))
    if settings.get("dense") is not None:
        context = context.replace(dense=bool(settings["dense"]))
    if settings.get("budget") is not None:
        options = replace(options, budget=settings["budget"])
    if runtime is None:
        runtime = run_runtime(settings, runtime_overrides)
    options = resolve_options(runtime, context, replace(options, context="repo", iterative=False))
    selected = select(tasks, options.limit)
    predictions = read_predictions(pred_path, known={t.task_id for t in tasks})
    predictions = {t.task_id: predictions[t.task_id] for t in selected if t.task_id in predictions}
    if not predictions:
        raise InputError(f"no predictions in {pred_path} for the selected tasks")
    if model == "auto":
        from repocomplete.eval.runner import eval_runtime
        from repocomplete.model_runtime.backend import make_engine

        model = make_engine(eval_runtime(runtime))
    if view == "auto":
        view = view_of(model)
    facts, same = gather(selected, repos, predictions, context, options, view, make_context_engine, depth,
                         progress=options.progress, model=model)
    explanations = [classify(f) for f in facts]
    baseline_es = None
    if baseline is not None:
        base = read_predictions(baseline, known={t.task_id for t in tasks})
        baseline_es = {t.task_id: score_task(t, base[t.task_id]["pred"]).es for t in selected if t.task_id in base}
    summary = summarize(explanations, baseline_es)
    check = {"matched": sum(v is True for v in same.values()),
             "differed": [k for k, v in same.items() if v is False],
             "unrecorded": sum(v is None for v in same.values())}
    header = {
        "predictions": str(pred_path),
        "baseline": str(baseline) if baseline is not None else None,
        "tasks": len(explanations),
        "skipped_without_prediction": len(selected) - len(explanations),
        "budget": options.budget,
        "providers": list(context.providers),
        "model": runtime.model,
        "template": getattr(getattr(view, "template", None), "name", None),
        "sees_suffix": view.sees_suffix if view is not None else None,
        "prompt_limit": view.limit if view is not None else None,
        "run_commit": (_meta(pred_path) or {}).get("commit"),
        "commit": git_head(),
    }
    report = {"header": header, "summary": summary, "context_check": check,
              "tasks": [e.to_json() for e in explanations]}
    report["markdown"] = format_report(report, title)
    return report


RUNTIME_SETTINGS = ("model", "adapter", "endpoint", "quantize", "dtype", "fim_template", "max_new_tokens",
                    "temperature", "token_healing", "multiline")


def run_runtime(settings: Mapping, overrides: Mapping | None = None):
    """The RuntimeConfig of a run, from its recorded settings (what the context's costs and bound depend on: the
    model, its template, the tokens kept for the completion), with `overrides` (None values ignored)."""
    from repocomplete.model_runtime.config import RuntimeConfig

    given = {k: settings[k] for k in RUNTIME_SETTINGS if settings.get(k) is not None}
    given.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return RuntimeConfig(**given)


def _meta(pred_path) -> dict | None:
    from repocomplete.eval.predictions import PredictionFile

    return PredictionFile(pred_path).meta()


def format_report(report: dict, title: str | None = None) -> str:
    h, check = report["header"], report["context_check"]
    lines = [format_tables(report["summary"], title or "")]
    notes = [f"{h['tasks']} tasks of `{h['predictions']}` (budget {h['budget']}, providers "
             f"{', '.join(h['providers'])}, model {h['model']}"
             + (f", template {h['template']}, suffix {'shown' if h['sees_suffix'] else 'not shown'}, prompt limit "
                f"{h['prompt_limit']} tokens" if h["template"] else "") + ")"]
    if h["baseline"]:
        notes.append(f"ES baseline: `{h['baseline']}` on the same tasks")
    recomputed = f"context recomputed at commit {h['commit'] or 'unknown'} (run at {h['run_commit'] or 'unknown'})"
    if check["matched"] or check["differed"]:
        recomputed += f": the run's recorded context matched for {check['matched']} tasks"
        if check["differed"]:
            recomputed += f", differed for {len(check['differed'])} ({', '.join(check['differed'][:3])}...)"
    if check["unrecorded"]:
        recomputed += f"; {check['unrecorded']} predictions recorded no context to check against"
    notes.append(recomputed)
    lines.append("; ".join(notes) + ".")
    return "\n".join(lines) + "\n"
