"""`repocomplete finetune`: training data cut from a repository, prompts built as the runtime builds them.

This module sits in the pipeline layer because its prompts need both layers: the files come from the context
engine's walk (its exclusion and secret rules, credentials scrubbed), the prompt parts from `Completer.prompt_parts`
(the same window, the same repository context with the span's text removed from the buffer, as an editor's buffer
would be), and the tokens from the model runtime (`training.fim_example`: the same template, truncation and token
healing as `Engine`). The training loop itself is the model runtime's (`model_runtime/training.py`).

Spans are cut at arbitrary character positions, also inside a token, with a curriculum that over-samples what
completion meets (after "Improving FIM Code Completions via Context & Curriculum"): the rest of a line, whole lines,
call expressions, argument lists, attribute chains, short blocks, some random spans, and a share of empty middles
(a cursor at the end of a finished line). Held-out files (the --hold-out patterns, else a hashed few percent) give
the validation examples and never a training one.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import random
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.document import Window
from repocomplete.context_engine.errors import InputError
from repocomplete.pipeline import Completer, CompletionOptions

# The curriculum: span kinds and their shares (a kind without a candidate in a file falls back to line_rest).
CURRICULUM = {
    "line_rest": 0.30, "line": 0.10, "lines": 0.05, "call": 0.08, "args": 0.08, "attr": 0.08, "block": 0.06,
    "random": 0.10, "empty": 0.15,
}
MAX_MIDDLE_CHARS = 240
SPANS_PER_FILE = 4  # spans cut from a file per pass over the corpus
VAL_PERCENT = 5
MAX_VAL_EXAMPLES = 48
MAX_FILE_CHARS = 200_000

_CALL = re.compile(r"[A-Za-z_][\w.]*\(")
_ATTR = re.compile(r"\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


@dataclass
class FinetuneOptions:
    repo: str
    out: str
    steps: int = 200
    rank: int = 8
    lr: float = 5e-4
    batch_tokens: int = 1024
    context: str = "infile"  # none | infile | repo
    base_model: str = "default"
    resume: bool = False
    layers: int | None = 8
    template: str | None = None  # None: the model's FIM template (an --init-adapter's), else smollm2-fim
    init_adapter: str | None = None  # start from this adapter's weights (per-repository tuning of the shipped one)
    train_sentinels: bool = False  # the template's special tokens' embedding rows train too (its end token's row)
    hold_out: tuple[str, ...] = ()  # fnmatch patterns of validation files (never trained on)
    exclude: tuple[str, ...] = ()  # fnmatch patterns of files left out altogether
    prefix_chars: int = 1200  # the training window (the runtime's Window; a short one trains faster)
    suffix_chars: int = 400
    budget: int = 256  # repository context tokens (--context repo)
    infile_share: float = 0.0  # with --context repo: this share of the examples is built with in-file context only
    max_prompt_tokens: int = 1024  # prompts cut as the engine cuts them (its window is the model's: train near it)
    kinds: tuple[str, ...] = ()  # the curriculum's span kinds to cut (empty: all of them)
    seed: int = 0
    device: str | None = None
    autocast: str = "auto"
    eval_every: int | None = None
    checkpoint_every: int = 25
    threads: int | None = None
    cache_dir: str | None = None
    index_dir: str | None = None
    exact_match_examples: int = 32
    command: list[str] = field(default_factory=lambda: list(sys.argv))


def sentinel_ids(tokenizer, template) -> list[int]:
    """The ids of the special tokens a FIM template writes (its sentinels, file separators and end token)."""
    from repocomplete.model_runtime.templates import end_token

    forms = " ".join(f or "" for f in (template.psm, template.spm, template.repo_start, template.file_item,
                                         template.repo_psm, template.repo_spm))
    texts = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    found = {t for t in texts if t and t in forms} | {end_token(template)}
    return sorted({tokenizer.convert_tokens_to_ids(t) for t in found} - {tokenizer.unk_token_id, None})


# -- the corpus ------------------------------------------------------------------------------------------------


def _matches(rel: str, patterns) -> bool:
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel, p.rstrip("/") + "/*") for p in patterns)


def held_out_by_hash(rel: str, percent: int = VAL_PERCENT) -> bool:
    return int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16) % 100 < percent


def corpus(root: Path, config: ContextConfig, hold_out=(), exclude=()) -> tuple[list[str], list[str], dict]:
    """The repository's trainable files as the context engine's walk admits them (ignore files, exclusions, secret
    files), split into training and held-out files; and counts for the report."""
    from repocomplete.context_engine.gate import Gate

    gate = Gate(root, config)
    skipped: list = []
    files = sorted(e.path for e in gate.walk(skipped) if not _matches(e.path, exclude))
    if not files:
        raise InputError(f"no files to train on in {root} (empty, or every file excluded)")
    if hold_out:
        val = [f for f in files if _matches(f, hold_out)]
    else:
        val = [f for f in files if held_out_by_hash(f)]
        if not val and len(files) >= 2:
            val = [files[-1]]
    train = [f for f in files if f not in set(val)]
    if not train:
        raise InputError(f"no training files left in {root} once the held-out files are set aside")
    return train, val, {"files": len(files), "train_files": len(train), "val_files": len(val),
                        "skipped_by_walk": len(skipped)}


# -- spans -----------------------------------------------------------------------------------------------------


def _lines(text: str) -> list[tuple[int, int, int]]:
    """(start, indentation end, end) of each non-blank line (end: before its newline)."""
    out, pos = [], 0
    for line in text.split("\n"):
        if line.strip():
            out.append((pos, pos + len(line) - len(line.lstrip()), pos + len(line.rstrip("\r"))))
        pos += len(line) + 1
    return out


def _close_paren(text: str, open_at: int, limit: int = MAX_MIDDLE_CHARS) -> int | None:
    depth = 0
    for i in range(open_at, min(len(text), open_at + limit)):
        ch = text[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i
    return None


def cut_span(text: str, kind: str, rng: random.Random) -> tuple[int, int] | None:
    """A span [start, end) of `text` of the given curriculum kind, or None when the file has no candidate."""
    lines = _lines(text)
    if not lines:
        return None
    if kind in ("line_rest", "line", "empty"):
        start, ind, end = rng.choice(lines)
        if kind == "empty":
            return end, end
        if kind == "line":
            return ind, end
        return rng.randrange(ind, end), end  # any character: mid-token too
    if kind == "lines":
        i = rng.randrange(len(lines))
        j = min(len(lines) - 1, i + rng.randint(1, 3))
        return lines[i][1], lines[j][2]
    if kind == "random":
        start = rng.randrange(len(text))
        return start, min(len(text), start + rng.randint(1, 64))
    if kind in ("call", "args"):
        found = list(_CALL.finditer(text))
        if not found:
            return None
        m = rng.choice(found)
        close = _close_paren(text, m.end() - 1)
        if close is None:
            return None
        if kind == "call":
            return m.start(), close + 1
        open_at = m.end()
        return (open_at if close == open_at or rng.random() < 0.5 else rng.randrange(open_at, close)), close
    if kind == "attr":
        found = list(_ATTR.finditer(text))
        if not found:
            return None
        m = rng.choice(found)
        dot = text.index(".", m.start())
        return rng.randrange(dot + 1, m.end()), m.end()
    if kind == "block":
        heads = [k for k, (s, i, e) in enumerate(lines[:-1]) if text[s:e].rstrip().endswith(":")
                 and lines[k + 1][1] - lines[k + 1][0] > i - s]
        if not heads:
            return None
        k = rng.choice(heads)
        indent = lines[k][1] - lines[k][0]
        body = [ln for ln in lines[k + 1 : k + 7]]
        last = k + 1
        for n, ln in enumerate(body):
            if ln[1] - ln[0] <= indent:
                break
            last = k + 1 + n
        return lines[k + 1][1], lines[last][2]
    raise ValueError(f"unknown span kind {kind!r}")


def curriculum(kinds=()) -> dict[str, float]:
    """The curriculum, or its share of the named kinds (their weights as they are: rng.choices normalizes)."""
    unknown = [k for k in kinds if k not in CURRICULUM]
    if unknown:
        raise InputError(f"unknown span kinds {', '.join(unknown)}; expected some of {', '.join(CURRICULUM)}")
    return {k: w for k, w in CURRICULUM.items() if not kinds or k in kinds}


def cut_spans(text: str, n: int, rng: random.Random, shares: dict[str, float] = CURRICULUM
              ) -> list[tuple[int, int, str]]:
    kinds, weights = zip(*shares.items())
    out = []
    for _ in range(n * 3):
        if len(out) >= n:
            break
        kind = rng.choices(kinds, weights)[0]
        span = cut_span(text, kind, rng)
        if span is None and "line_rest" in shares:
            kind, span = "line_rest", cut_span(text, "line_rest", rng)
        if span is None or span[1] - span[0] > MAX_MIDDLE_CHARS:
            continue
        out.append((span[0], span[1], kind))
    return out


# -- examples --------------------------------------------------------------------------------------------------


class PromptModel(SimpleNamespace):
    """What the completer needs of a model to build and count prompts, without loading one: its tokenizer,
    template and order (so repository context is counted in the model's tokens)."""


def fim_template_for(tokenizer, requested: str | None):
    from repocomplete.model_runtime.templates import SMOLLM2_FIM, detect_template, get_template

    if requested:
        return get_template(requested)
    detected = detect_template(tokenizer.get_vocab())
    if not detected.left_to_right:
        return detected
    vocab = tokenizer.get_vocab()
    if all(t in vocab for t in SMOLLM2_FIM.values()):
        return get_template("smollm2-fim")
    raise InputError("the model has no FIM tokens and not SmolLM2's unused ones: name a template with --template")


class ExampleCutter:
    """Cuts FIM examples from files and builds their prompts through a `Completer`, as the runtime does."""

    def __init__(self, root: Path, tokenizer, template, order: str, options: FinetuneOptions,
                 context_config: ContextConfig):
        from repocomplete.model_runtime.healing import VocabIndex

        self.root = root
        self.tokenizer = tokenizer
        self.template = template
        self.order = order
        self.options = options
        self.vocab = VocabIndex(tokenizer)
        self.shares = curriculum(options.kinds)
        model = PromptModel(tokenizer=tokenizer, template=template, order=order, name="finetune")
        self.completer = Completer(model, context_config,
                                   window=Window(options.prefix_chars, options.suffix_chars))
        self.workspace = self.completer.open_workspace(root) if options.context == "repo" else None
        from repocomplete.context_engine.gate import Gate

        self.gate = Gate(root, context_config)
        self.kinds: Counter = Counter()
        self.contexts: Counter = Counter()

    def read(self, rel: str) -> str | None:
        from repocomplete.context_engine.walker import content_problem, decode

        try:
            data = (self.root / rel).read_bytes()
        except OSError:
            return None
        if content_problem(data) or len(data) > MAX_FILE_CHARS * 4:
            return None
        text = decode(data)[:MAX_FILE_CHARS]
        return self.gate.scrub(text, rel)  # credentials never reach training data

    def examples(self, rel: str, text: str, n: int, rng: random.Random):
        from repocomplete.model_runtime.training import fim_example

        path = str(self.root / rel)
        for start, end, kind in cut_spans(text, n, rng, self.shares):
            buffer = text[:start] + text[end:]
            context = self.options.context
            if context == "repo" and self.options.infile_share and rng.random() < self.options.infile_share:
                context = "infile"  # the prompt a file without useful repository context gets
            options = CompletionOptions(context=context, budget=self.options.budget)
            workspace = self.workspace if context == "repo" else None
            if workspace is not None:
                workspace.set_buffer(rel, buffer)  # the span's text is nowhere in the index either
                workspace.settle()
            try:
                parts, _ = self.completer.prompt_parts(path, buffer, start, options, workspace=workspace)
            finally:
                if workspace is not None:
                    workspace.clear_buffer(rel)
            ex = fim_example(self.tokenizer, self.template, self.order, parts, text[start:end], self.vocab,
                             self.options.max_prompt_tokens, path=rel, kind=kind)
            self.kinds[kind] += 1
            self.contexts[context] += 1
            yield ex

    def close(self) -> None:
        self.completer.close()


def cut_examples(cutter: ExampleCutter, files: list[str], tokens_wanted: int, rng: random.Random,
                 max_examples: int | None = None, progress: bool = False) -> list:
    """Examples from the files, a few spans per file per pass in shuffled order, until `tokens_wanted` tokens."""
    out, tokens = [], 0
    order = list(files)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=tokens_wanted, desc="cutting examples", unit="tok", dynamic_ncols=True)
    texts: dict[str, str | None] = {}
    for _ in range(64):  # passes over the corpus (a small repository is cut many times, at other places)
        rng.shuffle(order)
        progressed = False
        for rel in order:
            if rel not in texts:
                texts[rel] = cutter.read(rel)
            text = texts[rel]
            if not text or not text.strip():
                continue
            for ex in cutter.examples(rel, text, SPANS_PER_FILE, rng):
                out.append(ex)
                tokens += len(ex)
                progressed = True
                if bar is not None:
                    bar.update(len(ex))
            if tokens >= tokens_wanted or (max_examples is not None and len(out) >= max_examples):
                if bar is not None:
                    bar.close()
                return out
        if not progressed:
            break
    if bar is not None:
        bar.close()
    return out


# -- the command -----------------------------------------------------------------------------------------------


def validate(options: FinetuneOptions) -> Path:
    from repocomplete.context_engine.document import CONTEXT_MODES

    root = Path(options.repo).expanduser()
    if not root.exists():
        raise InputError(f"repository not found: {root}")
    if not root.is_dir():
        raise InputError(f"not a directory: {root}")
    if options.context not in CONTEXT_MODES:
        raise InputError(f"unknown context mode {options.context!r}; expected one of {', '.join(CONTEXT_MODES)}")
    out = Path(options.out).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out is not a directory: {out}")
    from repocomplete.model_runtime.training import has_checkpoint

    if out.is_dir() and any(out.iterdir()) and not options.resume:
        raise InputError(f"{out} is not empty" + (": --resume continues its checkpoint" if has_checkpoint(out) else ""))
    if options.budget < 0 or options.prefix_chars < 1 or options.suffix_chars < 0 or options.max_prompt_tokens < 16:
        raise InputError("budget, window and prompt limits must be positive")
    if not 0.0 <= options.infile_share <= 1.0:
        raise InputError(f"--infile-share must be between 0 and 1, not {options.infile_share}")
    curriculum(options.kinds)
    return root.resolve()


def run_finetune(options: FinetuneOptions, progress: bool = False) -> dict:
    """Cut the data (once: `data.pt`), train (resuming from the checkpoint when asked), write the adapter, its
    record and `training-report.json`; return the report."""
    import torch

    from repocomplete.model_runtime import training
    from repocomplete.model_runtime.adapters import AdapterRecord
    from repocomplete.model_runtime.config import RuntimeConfig
    from repocomplete.model_runtime.cpu import configure_threads
    from repocomplete.model_runtime.loading import load_tokenizer, pick_device, resolve_model_dir

    root = validate(options)
    out = Path(options.out).expanduser()
    config = training.TrainConfig(steps=options.steps, rank=options.rank, lr=options.lr,
                                  batch_tokens=options.batch_tokens, layers=options.layers, autocast=options.autocast,
                                  seed=options.seed, device=options.device, threads=options.threads,
                                  checkpoint_every=options.checkpoint_every)
    try:
        config.validate()
    except ValueError as e:
        raise InputError(str(e)) from None
    device = pick_device(options.device)
    if device.type == "cpu":
        configure_threads(options.threads)
    cache_dir = Path(options.cache_dir) if options.cache_dir else RuntimeConfig().cache_dir
    model_dir, model_name = resolve_model_dir(options.base_model, cache_dir)
    tokenizer = load_tokenizer(model_dir)
    if options.init_adapter:
        from repocomplete.model_runtime.adapters import check_adapter_dir, read_record

        init = read_record(check_adapter_dir(options.init_adapter))
        if init is not None and not options.template:
            options.template = init.fim_template
    template = fim_template_for(tokenizer, options.template)
    order = "spm" if template.supports_spm else "psm"
    record = AdapterRecord(template.name, order, options.base_model)
    out.mkdir(parents=True, exist_ok=True)
    data_path = out / "data.pt"
    t0 = time.perf_counter()
    if options.resume and data_path.is_file():
        train_examples, val_examples, meta = training.load_examples(data_path)
    else:
        context_config = ContextConfig(slow_provider_deadline_ms=None)
        if options.index_dir:
            context_config.index_dir = Path(options.index_dir)
        train_files, val_files, counts = corpus(root, context_config, options.hold_out, options.exclude)
        cutter = ExampleCutter(root, tokenizer, template, order, options, context_config)
        try:
            rng = random.Random(options.seed)
            wanted = int(options.steps * options.batch_tokens * 1.05)
            train_examples = cut_examples(cutter, train_files, wanted, rng, progress=progress)
            val_examples = cut_examples(cutter, val_files, sys.maxsize, random.Random(options.seed + 1),
                                        max_examples=MAX_VAL_EXAMPLES) if val_files else []
            val_examples = val_examples[:MAX_VAL_EXAMPLES]
        finally:
            cutter.close()
        if not train_examples:
            raise InputError(f"no training examples could be cut from {root}")
        rng.shuffle(train_examples)
        meta = {"root": str(root), **counts, "kinds": dict(cutter.kinds), "contexts": dict(cutter.contexts),
                "val_file_list": val_files[:200], "cut_seconds": round(time.perf_counter() - t0, 1)}
        training.save_examples(data_path, train_examples, val_examples, meta)
    model = training.load_base(model_dir, device)
    if options.train_sentinels:
        config.token_rows = tuple(sentinel_ids(tokenizer, template))
    if options.init_adapter:
        model = training.continue_adapter(model, Path(options.init_adapter).expanduser(), config.token_rows)
    else:
        model = training.add_lora(model, config)
    result = training.train(model, tokenizer, train_examples, val_examples, config, out, record,
                            resume=options.resume, progress=progress, eval_every=options.eval_every,
                            exact_match_examples=options.exact_match_examples)
    report = {
        "command": options.command,
        "base_model": {"spec": options.base_model, "name": model_name, "weights": str(model_dir),
                       "note": "float32 base weights (the embedded GGUF de-quantized), not the inference plan"},
        "template": template.name, "order": order, "context": options.context, "init_adapter": options.init_adapter,
        "corpus": {k: v for k, v in meta.items() if k != "val_file_list"},
        "held_out_files": meta.get("val_file_list", []),
        "examples": {"train": len(train_examples), "val": len(val_examples),
                     "train_tokens_available": sum(len(e) for e in train_examples)},
        "config": {**asdict(config), "window": [options.prefix_chars, options.suffix_chars],
                   "budget": options.budget, "infile_share": options.infile_share,
                   "max_prompt_tokens": options.max_prompt_tokens, "kinds": list(options.kinds) or "all"},
        "steps": result.steps, "resumed_from": result.resumed_from, "finished": result.steps >= options.steps,
        "train_tokens": result.train_tokens, "seconds": result.seconds, "tokens_per_s": result.tokens_per_s,
        "device": result.device, "autocast": result.autocast, "threads": torch.get_num_threads(),
        "cpu": _cpu_name(), "trainable_params": result.trainable_params,
        "val_loss": result.val_loss, "val_exact_match": result.val_exact_match,
        "val_edit_similarity": result.val_edit_similarity, "curve": result.curve,
        "losses": result.losses, "adapter": str(out),
    }
    training.write_report(out / "training-report.json", report)
    return report


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


def format_report(report: dict) -> str:
    losses = report["losses"]
    head = sum(losses[:10]) / max(1, len(losses[:10]))
    tail = sum(losses[-10:]) / max(1, len(losses[-10:]))
    lines = [
        f"adapter  {report['adapter']} ({report['template']}, {report['order']}, context {report['context']})",
        f"corpus   {report['corpus'].get('train_files')} training files, {report['corpus'].get('val_files')} held out; "
        f"{report['examples']['train']} + {report['examples']['val']} examples",
        f"steps    {report['steps']} ({report['train_tokens']} tokens, {report['seconds']} s, "
        f"{report['tokens_per_s']} tok/s on {report['device']} {report['autocast']})",
        f"loss     {head:.3f} (first 10 steps) -> {tail:.3f} (last 10)",
    ]
    if report["finished"]:
        em, es = report["val_exact_match"], report.get("val_edit_similarity")
        lines.append(f"held out loss {report['val_loss']}, exact match {'-' if em is None else f'{100 * em:.1f}%'}, "
                     f"edit similarity {'-' if es is None else es}")
        if len(report["curve"]) > 1:
            lines.append("curve    " + ", ".join(
                f"step {p['step']}: loss {p['val_loss']}" + (f" ES {p['val_edit_similarity']}"
                                                             if "val_edit_similarity" in p else "")
                for p in report["curve"]))
    else:
        lines.append("stopped before the last step: --resume continues from the checkpoint")
    return "\n".join(lines)


def dumps(report: dict) -> str:
    return json.dumps(report, indent=2)
