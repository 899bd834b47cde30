"""Drafts for speculative decoding, taken from the prompt itself (prompt lookup decoding).

Code completion copies: a call written earlier in the file, a signature from the repository context, the rest of
the ghost text the user is typing through. So the continuation of the most recent earlier occurrence of the last
few tokens is a good guess for the next ones, and the engine verifies a whole guess in one forward pass (up to
16 rows cost about one decode step here: the step is bound by reading the weights and by per-layer overhead).
"""

from __future__ import annotations

from collections.abc import Sequence

# The longest and shortest n-grams looked up. A single repeated token predicts little (`(`, `,`), and proposing
# from it mostly wastes verification rows.
MAX_NGRAM = 3
MIN_NGRAM = 2
_SEPARATOR = -1  # between the previous completion and the prompt: never matches, ends a draft


class PromptLookup:
    """An index of the n-grams of a token sequence (the previous completion, then the prompt and what has been
    generated), answering "what followed the last time these tokens appeared"."""

    def __init__(self, tokens: Sequence[int], previous: Sequence[int] = ()):
        self.tokens: list[int] = []
        # n-gram -> (the position after its most recent occurrence, the one before that)
        self._seen: dict[tuple[int, ...], tuple[int, int | None]] = {}
        for token in [*previous, _SEPARATOR, *tokens] if previous else tokens:
            self.append(token)

    def append(self, token: int) -> None:
        self.tokens.append(token)
        end = len(self.tokens)
        for n in range(MIN_NGRAM, MAX_NGRAM + 1):
            if end >= n:
                key = tuple(self.tokens[end - n : end])
                last = self._seen.get(key)
                self._seen[key] = (end, last[0] if last else None)

    def draft(self, k: int) -> list[int]:
        """Up to k tokens that followed the longest suffix n-gram the last time it appeared before now."""
        end = len(self.tokens)
        for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
            if end < n:
                continue
            found = self._seen.get(tuple(self.tokens[end - n :]))
            if not found:
                continue
            after = found[0] if found[0] < end else found[1]  # the suffix itself is the most recent occurrence
            if after is None:
                continue
            out = []
            for token in self.tokens[after : after + k]:
                if token == _SEPARATOR:
                    break
                out.append(token)
            if out:
                return out
        return []
