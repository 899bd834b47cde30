"""The options of an evaluation run: eval's own knobs, and overrides of the configs resolved in one place.

The model's and the context's settings live in their configs (`RuntimeConfig`, `ContextConfig`); a run may
override three of them (`budget`, `max_new_tokens`, `multiline`), `None` meaning "the config's value".
`resolve_options` turns those `None`s into the values a run actually uses; the runner, the report and the LSP
client all read the resolved values, never the configs' for these three.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from repocomplete.context_engine.document import CONTEXT_MODES
from repocomplete.context_engine.errors import InputError
from repocomplete.pipeline import CompletionOptions

VIAS = ("engine", "lsp")
BACKENDS = ("local", "ray")


@dataclass
class RunOptions:
    context: str = "repo"  # none | infile | repo
    iterative: bool = False
    batch_size: int = 16  # tasks per call of the batch entry point (and per write to the partial file)
    limit: int | None = None  # the first N tasks of the suite
    shard: tuple[int, int] | None = None  # (i, n), 0 <= i < n: see eval.scale.shard
    via: str = "engine"  # engine | lsp
    backend: str = "local"  # local | ray
    workers: int | None = None  # Ray actors (None: the cluster's CPUs)
    progress: bool = True
    # Overrides; None: the config's value (see resolve_options).
    budget: int | None = None  # the context config's budget_tokens
    max_new_tokens: int | None = None  # the runtime config's
    multiline: bool | None = None  # the runtime config's (False: CrossCodeEval's line completion)

    def validate(self) -> None:
        if self.context not in CONTEXT_MODES:
            raise InputError(f"unknown context mode {self.context!r}; expected one of {', '.join(CONTEXT_MODES)}")
        if self.via not in VIAS:
            raise InputError(f"--via must be one of {', '.join(VIAS)}, got {self.via!r}")
        if self.backend not in BACKENDS:
            raise InputError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.via == "lsp" and self.backend != "local":
            raise InputError("--via lsp runs with --backend local only")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers must be >= 1, got {self.workers}")
        if self.shard is not None:
            i, n = self.shard
            if not (n >= 1 and 0 <= i < n):
                raise InputError(f"--shard i/n needs 0 <= i < n, got {i}/{n}")

    def completion_options(self) -> CompletionOptions:
        return CompletionOptions(context=self.context, multiline=self.multiline, max_new_tokens=self.max_new_tokens,
                                 budget=self.budget, iterative=self.iterative)


def resolve_options(runtime, context, options: RunOptions) -> RunOptions:
    """`options` with each override that is None replaced by its config's value (a copy; resolving twice is the
    same as once). runtime: a RuntimeConfig; context: a ContextConfig."""
    return replace(
        options,
        budget=context.budget_tokens if options.budget is None else options.budget,
        max_new_tokens=runtime.max_new_tokens if options.max_new_tokens is None else options.max_new_tokens,
        multiline=runtime.multiline if options.multiline is None else options.multiline,
    )
