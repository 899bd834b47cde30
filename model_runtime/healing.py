"""Token healing: back off the prompt's last token(s) and make the first generated tokens reproduce them.

A cursor after indentation or inside a word leaves the prompt ending on a token the model rarely saw there
("\\n    " where training text had "\\n   " + " return"); small models then answer a bare newline. Backing off
that token and constraining generation to start with its text lets the model pick the natural split.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Sequence

import torch

MAX_BACKOFF_TOKENS = 3
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f]")  # tab, line breaks, \x0b and form feed stay


class VocabIndex:
    """The text of every token, indexed for "tokens that start with s" and "tokens that are a prefix of s"."""

    def __init__(self, tokenizer):
        self.size = len(tokenizer)
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        self.texts: list[str] = []
        for token_id in range(self.size):
            self.texts.append("" if token_id in special else tokenizer.decode([token_id]))
        # Tokens of control characters (a NUL byte, an escape) that source code does not contain: never generated.
        self.unprintable = [i for i, t in enumerate(self.texts) if _CONTROL.search(t)]
        # A token that decodes to a replacement character is part of a multi-byte character: it cannot be
        # matched against text on its own, so it is never allowed while healing.
        self._sorted = sorted((t, i) for i, t in enumerate(self.texts) if t and "\ufffd" not in t)
        self._keys = [t for t, _ in self._sorted]
        self._openers: dict[str, list[int]] = {}
        self._blank_led: list[int] | None = None
        self._breaking: dict[str, tuple[list[int], list[int]]] = {}
        self._exact: dict[str, list[int]] = defaultdict(list)
        for text, token_id in self._sorted:
            self._exact[text].append(token_id)

    def starting_with(self, s: str) -> list[int]:
        lo = bisect.bisect_left(self._keys, s)
        hi = bisect.bisect_left(self._keys, s + "\U0010ffff")
        return [token_id for _, token_id in self._sorted[lo:hi]]

    def exactly(self, s: str) -> list[int]:
        """The tokens whose text is `s`."""
        return list(self._exact.get(s, ()))

    def prefixes_of(self, s: str) -> list[int]:
        return [token_id for n in range(1, len(s)) for token_id in self._exact.get(s[:n], ())]

    def allowed(self, remaining: str) -> list[int]:
        """Tokens that keep the generated text consistent with `remaining` text still to reproduce.

        Where that text ends in indentation (the cursor after the spaces an editor put there), a token must not
        run on with more spaces or tabs: the completion starts at the cursor's column, not past it (a longer run of
        spaces is a common token that small models pick, then fill the line they over-indented with a comment).

        Where it ends in a space, no token may end exactly there: byte-level BPE (GPT-2's, StarCoder's, SmolLM2's)
        gives the last space of a run before code to the next token (`"\\n" + 11 spaces`, then `" return"`), so a
        model has rarely seen a word follow a token that ends in a space. Given that token (the prompt's own
        `"\\n" + 12 spaces`, after a blank line), the base model wrote `!  \"\"\"` on click's `_textwrap.py`.
        Where nothing else is left, that token stays allowed."""
        n = len(remaining)
        longer = self.starting_with(remaining)
        if remaining[-1:] in (" ", "\t"):
            longer = [i for i in longer if self.texts[i][n : n + 1] not in (" ", "\t")]
        out = longer + self.prefixes_of(remaining)
        if remaining[-1:] == " ":
            out = [i for i in out if len(self.texts[i]) != n] or out
        return out

    def opening(self, comment: str) -> list[int]:
        """Tokens that start a line comment once leading spaces and tabs are set aside ("#", " #", "   //"), or that
        begin its syntax ("/" of "//")."""
        out = self._openers.get(comment)
        if out is None:
            out = self._openers[comment] = [
                i for i, t in enumerate(self.texts)
                if (s := t.lstrip(" \t")) and (s.startswith(comment) or comment.startswith(s))]
        return out

    def indenting(self) -> list[int]:
        """Tokens that start with a space or a tab: what would indent a line past the column the cursor is at."""
        if self._blank_led is None:
            self._blank_led = [i for i, t in enumerate(self.texts) if t[:1] in (" ", "\t")]
        return self._blank_led

    def breaking(self, openers: str) -> tuple[list[int], list[int]]:
        """Tokens that break the line: (those with only blanks before their line break, those whose text before it
        ends with one of `openers` once trailing blanks are set aside): what would leave a bracket dangling at a
        line's end after text that ends with an opener, and in any case."""
        found = self._breaking.get(openers)
        if found is None:
            blank, opening = [], []
            for i, t in enumerate(self.texts):
                cut = min((k for k in (t.find("\n"), t.find("\r")) if k >= 0), default=-1)
                if cut < 0:
                    continue
                head = t[:cut].rstrip(" \t")
                if not head:
                    blank.append(i)
                elif head[-1] in openers:
                    opening.append(i)
            found = self._breaking[openers] = (blank, opening)
        return found

    def mask(self, remaining: str, vocab_size: int, device: torch.device) -> torch.Tensor:
        """Additive logits mask: 0 for allowed tokens, -inf elsewhere."""
        m = torch.full((vocab_size,), float("-inf"), device=device)
        allowed = [i for i in self.allowed(remaining) if i < vocab_size]
        if allowed:
            m[torch.tensor(allowed, device=device)] = 0.0
        return m


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def backoff(prefix_ids: Sequence[int], texts: Sequence[str]) -> int:
    """How many trailing tokens of the prefix to remove: one, more while that would split a word (at most 3)."""
    if not prefix_ids:
        return 0
    k = 1
    while k < min(MAX_BACKOFF_TOKENS, len(prefix_ids)):
        removed_first = texts[prefix_ids[-k]][:1]
        before = texts[prefix_ids[-k - 1]][-1:]
        if removed_first and before and _is_word_char(removed_first) and _is_word_char(before):
            k += 1
        else:
            break
    return k
