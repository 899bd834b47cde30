"""What the context engine hands upward for one cursor: the text around it and the repository snippets chosen.

The model runtime has its own prompt type (`model_runtime.templates.PromptParts`); the pipeline
(`repocomplete.pipeline`) converts, so neither layer imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Snippet:
    """One piece of repository context: a file path (relative to the repository) and some of its text."""

    path: str
    text: str


@dataclass
class CursorParts:
    prefix: str
    suffix: str = ""
    path: str = ""  # the current file, relative to the repository
    context: list[Snippet] = field(default_factory=list)
    repo_name: str = ""
