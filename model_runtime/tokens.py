"""Counting prompt tokens as the engine encodes them: what a context item costs, the bound of a whole prompt.

The engine (`engine.encode_prompt`) tokenizes a prompt piece by piece: template text (sentinels, path headers,
separators) as it is, user text (context items, prefix, suffix) with special tokens split. Context items are
rendered one after another, each as `template.file_item`; the piece of template text before item i is the end of
item i-1 followed by the head of item i ("\\n\\n# Path: b.py\\n" for the plain template). So an item costs its
frame (`item_frame`) plus its text as the template shows it (`context_text`), and the context part of a prompt,
the tokens it has more than the same prompt without context items, is the sum of its items' costs: the first
item's frame stands for the separator the current file's header gains once items come before it.

That sum is exact wherever the tokenizer does not merge across the start of a header (byte-level BPE splits
whitespace from what follows, and special tokens split everything): so a budget is the prompt's tokens, not an
estimate. Counts are cached by text (the same records come back at every keystroke).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from repocomplete.model_runtime.templates import ContextItem, FimTemplate, comment_prefix, context_text

CACHE_ITEMS = 8192  # texts whose counts are kept (a few MB of keys at most)


def item_frame(template: FimTemplate, path: str) -> str:
    """The template text counted with a context item: the end of the item before it, then its own head."""
    head, _, tail = template.file_item.partition("{text}")
    fields = {"path": path, "comment": comment_prefix(path)}
    return tail.format(**fields) + head.format(**fields)


class PromptTokens:
    """Token counts of a model's prompts with its tokenizer (a transformers one, the local engine's): `item(path,
    text)` is what a context item adds to the prompt."""

    def __init__(self, template: FimTemplate, tokenizer):
        self.template = template
        self.tokenizer = tokenizer
        self.user = functools.lru_cache(CACHE_ITEMS)(self._user)
        self.plain = functools.lru_cache(1024)(self._plain)

    def _user(self, text: str) -> int:
        """User text, as the engine encodes it: special-token strings in it are split, never special."""
        return len(self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))

    def _plain(self, text: str) -> int:
        """Template text (it may hold the template's special tokens)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def item(self, path: str, text: str) -> int:
        """The tokens a context item adds to the prompt: its frame and its text as the template shows it."""
        shown = context_text(self.template, ContextItem(path, text))
        return self.plain(item_frame(self.template, path)) + self.user(shown)


@dataclass(frozen=True)
class PromptLimit:
    """The most tokens a prompt may hold for a model, and where the bound comes from."""

    tokens: int
    why: str


def prompt_limit(window: int | None, max_context_tokens: int, max_new_tokens: int) -> PromptLimit:
    """The prompt's bound: the model's window (max_position_embeddings) less the tokens generated, and at most
    the runtime's `max_context_tokens` (beyond which the engine drops the prompt's start)."""
    if window is not None and window - max_new_tokens < max_context_tokens:
        return PromptLimit(max(0, window - max_new_tokens),
                           f"the model's window is {window} tokens and {max_new_tokens} are kept for the completion")
    return PromptLimit(max_context_tokens, f"a prompt holds at most {max_context_tokens} tokens "
                                           f"(RuntimeConfig.max_context_tokens)")


def model_window(model) -> int | None:
    """The positions a loaded model was trained for (its config's max_position_embeddings), if it says."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "max_position_embeddings", None)
    return int(window) if isinstance(window, int) and window > 0 else None
