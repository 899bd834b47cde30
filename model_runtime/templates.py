"""FIM prompt templates as data: one row per model family, chosen from the tokenizer's special tokens.

A prompt is rendered from `PromptParts` (the repository context items, then the current file's prefix and
suffix). The most stable parts come first (repository context, then the current file's path) so that the
prefix-KV cache keeps them while the user types; SPM order also puts the suffix before the prefix, so that a
keystroke at the cursor only changes the end of the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath

from repocomplete.model_runtime.errors import ConfigError


@dataclass(frozen=True)
class ContextItem:
    """One piece of repository context as the model sees it: a file path and some of its text."""

    path: str
    text: str


@dataclass
class PromptParts:
    prefix: str
    suffix: str = ""
    path: str = ""  # the current file, relative to the repository
    context: list[ContextItem] = field(default_factory=list)
    repo_name: str = ""


@dataclass(frozen=True)
class FimTemplate:
    name: str
    # Special tokens whose presence in the vocabulary identifies the family (all must be present).
    detect: tuple[str, ...]
    # The current file alone. Placeholders: {prefix} {suffix} {path}. spm is None where the family has no SPM.
    psm: str
    spm: str | None
    # Repository-level form: repo_start once, file_item per context item, then repo_psm for the current file.
    repo_start: str
    file_item: str
    repo_psm: str
    repo_spm: str | None
    # Generation ends at any of these (beside the tokenizer's EOS).
    stop: tuple[str, ...]
    # Left-to-right: the suffix is not shown to the model (used only for stop rules and trimming).
    left_to_right: bool = False
    # Context text is shown as line comments ({comment} is the comment syntax of the item's language).
    comment_context: bool = False
    # A left-to-right template that still shows the code after the cursor: {suffix} is this block ({comment},
    # {lines}: the suffix's first SUFFIX_BLOCK_LINES lines as comments), or "" when the suffix is blank.
    suffix_block: str | None = None

    @property
    def supports_spm(self) -> bool:
        return self.spm is not None


TEMPLATES: dict[str, FimTemplate] = {
    # Order matters for detection: the first row whose tokens are all in the vocabulary wins.
    "qwen2.5-coder": FimTemplate(
        name="qwen2.5-coder",
        detect=("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|repo_name|>", "<|file_sep|>"),
        psm="<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
        spm=None,
        repo_start="<|repo_name|>{repo}\n",
        file_item="<|file_sep|>{path}\n{text}\n",
        repo_psm="<|file_sep|>{path}\n<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
        repo_spm=None,
        stop=("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|fim_prefix|>", "<|im_end|>"),
    ),
    "codegemma": FimTemplate(
        name="codegemma",
        detect=("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_separator|>"),
        psm="<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
        spm="<|fim_suffix|>{suffix}<|fim_prefix|>{prefix}<|fim_middle|>",
        repo_start="",
        file_item="{path}\n{text}\n<|file_separator|>",
        repo_psm="{path}\n<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
        repo_spm="{path}\n<|fim_suffix|>{suffix}<|fim_prefix|>{prefix}<|fim_middle|>",
        stop=("<|file_separator|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<eos>"),
    ),
    # StarCoder, StarCoder2, SantaCoder. SPM is the variant BigCode trained on (sentinels stay in PSM order).
    "starcoder": FimTemplate(
        name="starcoder",
        detect=("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
        psm="<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>",
        spm="<fim_prefix><fim_suffix>{suffix}<fim_middle>{prefix}",
        repo_start="<repo_name>{repo}",
        file_item="<file_sep>{path}\n{text}",
        repo_psm="<file_sep><fim_prefix>{path}\n{prefix}<fim_suffix>{suffix}<fim_middle>",
        repo_spm="<file_sep><fim_prefix>{path}\n<fim_suffix>{suffix}<fim_middle>{prefix}",
        stop=("<|endoftext|>", "<file_sep>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<repo_name>"),
    ),
    "deepseek-coder": FimTemplate(
        name="deepseek-coder",
        detect=("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
        psm="<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>",
        spm=None,
        # DeepSeek-Coder's repository-level pre-training puts each file behind a path comment.
        repo_start="",
        file_item="# {path}\n{text}\n",
        repo_psm="# {path}\n<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>",
        repo_spm=None,
        stop=("<｜end▁of▁sentence｜>", "<|EOT|>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    ),
    "codellama": FimTemplate(
        name="codellama",
        detect=("▁<PRE>", "▁<SUF>", "▁<MID>"),
        psm="<PRE> {prefix} <SUF>{suffix} <MID>",
        spm="<PRE> <SUF>{suffix} <MID> {prefix}",
        repo_start="",
        file_item="{comment} {path}\n{text}\n\n",
        repo_psm="<PRE> {comment} {path}\n{prefix} <SUF>{suffix} <MID>",
        repo_spm="<PRE> <SUF>{suffix} <MID> {comment} {path}\n{prefix}",
        stop=("<EOT>", "</s>", "▁<EOT>"),
        comment_context=True,
    ),
    # Models without FIM tokens (the embedded SmolLM2): the file so far, after the context as comments.
    "plain": FimTemplate(
        name="plain",
        detect=(),
        psm="{prefix}",
        spm=None,
        repo_start="",
        file_item="{comment} Path: {path}\n{text}\n\n",
        repo_psm="{comment} Path: {path}\n{prefix}",
        repo_spm=None,
        stop=("<|endoftext|>", "<|im_end|>", "<file_sep>", "<repo_name>"),
        left_to_right=True,
        comment_context=True,
    ),
    # The left-to-right form that needs no training: the lines after the cursor as a labelled comment block before
    # the prefix (chosen by --fim-template plain-suffix; "plain" stays what detection picks).
    "plain-suffix": FimTemplate(
        name="plain-suffix",
        detect=(),
        psm="{suffix}{prefix}",
        spm=None,
        repo_start="",
        file_item="{comment} Path: {path}\n{text}\n\n",
        repo_psm="{suffix}{comment} Path: {path}\n{prefix}",
        repo_spm=None,
        stop=("<|endoftext|>", "<|im_end|>", "<file_sep>", "<repo_name>"),
        left_to_right=True,
        comment_context=True,
        suffix_block="{comment} The code after the cursor:\n{lines}\n{comment} The code up to the cursor:\n",
    ),
    # SmolLM2 (and other StarCoder-vocabulary models without FIM training) with the FIM adapter of
    # `repocomplete finetune`: its unused special tokens as sentinels, no new tokens. Never detected (the tokens exist
    # in the base model too, untrained): an adapter's record (model_runtime/adapters.py) selects it.
    # SPM is StarCoder's variant, the prefix last so that the middle continues it as plain text.
    "smollm2-fim": FimTemplate(
        name="smollm2-fim",
        detect=(),
        psm="<issue_start>{prefix}<issue_comment>{suffix}<issue_closed>",
        spm="<issue_start><issue_comment>{suffix}<issue_closed>{prefix}",
        repo_start="<repo_name>{repo}\n",
        file_item="<filename>{path}\n{text}<file_sep>",
        repo_psm="<filename>{path}\n<issue_start>{prefix}<issue_comment>{suffix}<issue_closed>",
        repo_spm="<filename>{path}\n<issue_start><issue_comment>{suffix}<issue_closed>{prefix}",
        stop=("<empty_output>", "<|endoftext|>", "<|im_end|>", "<|im_start|>", "<file_sep>", "<filename>",
              "<repo_name>", "<issue_start>", "<issue_comment>", "<issue_closed>"),
    ),
}

# The sentinels of "smollm2-fim" (SmolLM2's unused special tokens, ids 3-16) by role; END closes a middle in training.
SMOLLM2_FIM = {"prefix": "<issue_start>", "suffix": "<issue_comment>", "middle": "<issue_closed>",
               "end": "<empty_output>", "file": "<filename>", "file_sep": "<file_sep>", "repo": "<repo_name>"}


def end_token(template: FimTemplate) -> str:
    """The token that ends a middle (the template's first stop string): what fine-tuning teaches the model to emit."""
    return template.stop[0]


SUFFIX_BLOCK_LINES = 8  # the lines after the cursor a suffix block shows (the rest of the cursor's line included)

# Line-comment syntax by file extension, for context shown as comments.
_COMMENT = {
    ".py": "#", ".pyi": "#", ".rb": "#", ".sh": "#", ".bash": "#", ".r": "#", ".pl": "#", ".toml": "#",
    ".yaml": "#", ".yml": "#", ".jl": "#", ".ex": "#", ".exs": "#", ".nim": "#", ".cmake": "#",
    ".lua": "--", ".sql": "--", ".hs": "--", ".elm": "--", ".ml": "(*", ".el": ";;", ".clj": ";;",
    ".lisp": ";;", ".scm": ";;", ".vim": '"', ".m": "%", ".erl": "%", ".tex": "%",
}


_SLASHES = frozenset((".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx", ".mts", ".cts", ".go", ".java", ".rs", ".c", ".h",
                       ".cc", ".cpp", ".cxx", ".hpp", ".cs", ".kt", ".kts", ".swift", ".scala", ".php", ".dart", ".zig"))


def comment_prefix(path: str) -> str:
    return _COMMENT.get(PurePath(path).suffix.lower(), "//")


def line_comment(path: str) -> str | None:
    """The line-comment syntax of a file's language, None where it is not known (no guess)."""
    suffix = PurePath(path).suffix.lower()
    return _COMMENT.get(suffix) or ("//" if suffix in _SLASHES else None)


def detect_template(vocab: dict[str, int] | set[str]) -> FimTemplate:
    """Pick the template from the special tokens in a tokenizer's vocabulary ("plain" when it has no FIM tokens)."""
    for template in TEMPLATES.values():
        if template.detect and all(token in vocab for token in template.detect):
            return template
    return TEMPLATES["plain"]


def get_template(name: str) -> FimTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ConfigError(f"unknown FIM template {name!r}; known: {', '.join(TEMPLATES)}") from None


def suffix_text(template: FimTemplate, parts: PromptParts) -> str:
    """The suffix as the template shows it: as it is, or as a labelled comment block (empty when blank)."""
    if template.suffix_block is None:
        return parts.suffix
    lines = parts.suffix.split("\n")[:SUFFIX_BLOCK_LINES]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return ""
    comment = comment_prefix(parts.path or "x.py")
    shown = "\n".join(f"{comment} {line}" if line.strip() else comment for line in lines)
    return template.suffix_block.format(comment=comment, lines=shown)


def context_text(template: FimTemplate, item: ContextItem) -> str:
    """The text of a context item as the template shows it (commented out line by line where it says so)."""
    if not template.comment_context:
        return item.text
    comment = comment_prefix(item.path)
    return "\n".join(f"{comment} {line}" if line else comment for line in item.text.rstrip("\n").split("\n"))


def render(template: FimTemplate, parts: PromptParts, order: str = "psm") -> str:
    """Render prompt parts into the prompt string. order: "psm" or "spm" (falls back to psm where unsupported)."""
    if order not in ("psm", "spm"):
        raise ValueError(f"order must be 'psm' or 'spm', got {order!r}")
    comment = comment_prefix(parts.path or "x.py")
    fields = {"prefix": parts.prefix, "suffix": suffix_text(template, parts), "path": parts.path, "comment": comment}
    repo_level = bool(parts.context) or bool(parts.repo_name)
    if not repo_level:
        body = template.spm if order == "spm" and template.spm else template.psm
        return body.format(**fields)
    out = [template.repo_start.format(repo=parts.repo_name) if template.repo_start else ""]
    for item in parts.context:
        out.append(
            template.file_item.format(path=item.path, text=context_text(template, item), comment=comment_prefix(item.path))
        )
    body = template.repo_spm if order == "spm" and template.repo_spm else template.repo_psm
    out.append(body.format(**fields))
    return "".join(out)


def suffix_lines_shown(template: FimTemplate) -> int | None:
    """How many lines after the cursor's line a template shows of the suffix: none for a left-to-right model, a
    suffix block's, or all of them (None)."""
    if template.left_to_right:
        return 0 if template.suffix_block is None else SUFFIX_BLOCK_LINES - 1
    return None


def model_view(template: FimTemplate, parts: PromptParts) -> PromptParts:
    """The parts a template can use: a left-to-right model never sees the text after the cursor."""
    if suffix_lines_shown(template) == 0:
        return PromptParts(parts.prefix, "", parts.path, parts.context, parts.repo_name)
    return parts
