"""One sequence's decode bookkeeping: the masks on its logits, and what each sampled token does to it.

The engine's single-sequence loop (`Engine._complete`) and the lockstep batch (`batch.py`: candidates, grouped
requests) both drive one `Decoding` per sequence, so that every path has the same stop rules, token healing and
trimming. The forward passes, speculation and the time budget stay with the loops.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from repocomplete.model_runtime.healing import _is_word_char
from repocomplete.model_runtime.stopping import StopRules, final_text


class Dangling:
    """A single-line completion does not end with an opening bracket: where the cursor's line (its text before the
    completion, `head`, and what was generated) ends with one, no token may break the line there, and no token may
    break it right after an opener of its own. The model then writes the bracket's contents on the line (a ghost
    text of `table.add_row(` alone completes nothing)."""

    def __init__(self, head: str, openers: str, blank_breaks: torch.Tensor, opening_breaks: torch.Tensor):
        self.head, self.openers = head, openers
        self.blank_breaks, self.opening_breaks = blank_breaks, opening_breaks

    def apply(self, logits: torch.Tensor, text: str) -> torch.Tensor:
        n = logits.shape[-1]
        banned = self.opening_breaks
        line = (self.head + text).rsplit("\n", 1)[-1]
        if line.rstrip(" \t")[-1:] in tuple(self.openers):
            banned = torch.cat([banned, self.blank_breaks])
        banned = banned[banned < n]
        if not len(banned):
            return logits
        out = logits.index_fill(0, banned, float("-inf"))
        return out if torch.isfinite(out).any() else logits  # (never a step with nothing left to choose)


_CLOSER_OF = {"(": ")", "[": "]", "{": "}"}
# Tokens past the limit that may finish the word it cut: a completion never ends inside a name (`ColorType.TRUEC`).
WORD_TAIL = 8


def own_unclosed(line: str, start: int, comment: str | None = None, quotes: str = "'\"",
                 openers: str = "([{") -> str | None:
    """The closers that the brackets opened at or after column `start` of `line` still need, innermost first ("" when
    they are balanced); None where the line ends inside a string literal or a comment (no bracket to close there).
    Brackets in string literals do not count, nor brackets not in `openers` (a brace language's `{` opens a block);
    a closer with no opener on the line (the text before the line's start closes it) is set aside."""
    stack: list[tuple[str, int]] = []
    i, n, quote = 0, len(line), None
    while i < n:
        c = line[i]
        if quote is not None:
            if c == "\\":
                i += 2
            elif line.startswith(quote, i):
                i, quote = i + len(quote), None
            else:
                i += 1
            continue
        if comment and line.startswith(comment, i):
            return None
        if c in quotes:
            quote = c * 3 if line.startswith(c * 3, i) else c
            i += len(quote)
            continue
        if c in openers:
            stack.append((c, i))
        elif c in ")]}" and stack and _CLOSER_OF[stack[-1][0]] == c:
            stack.pop()
        i += 1
    if quote is not None:
        return None
    return "".join(_CLOSER_OF[c] for c, at in reversed(stack) if at >= start)


_IMPORT_LIST = re.compile(r"^\s*from\s+\S+\s+import\s*\($")


# Words after which an expression goes on (an operand is missing): a closer there is no code.
_OPERATOR_WORDS = frozenset(("and", "or", "not", "in", "is", "if", "else", "lambda", "await", "return", "yield",
                             "for", "from", "import", "as", "with", "async", "del", "assert", "raise", "typeof",
                             "instanceof", "new", "void", "delete"))


def _operand_end(line: str) -> bool:
    """Does `line` end where an expression may end: after a name or literal (not an operator word), a closing
    bracket, a quote, or an opener (an empty call)? Not after an operator, a comma, a dot or a colon."""
    text = line.rstrip(" \t")
    if not text:
        return False
    c = text[-1]
    if c.isalnum() or c == "_":
        word = re.search(r"\w+$", text).group()
        return word not in _OPERATOR_WORDS
    return c in ")]}'\"`([{"


class Closing:
    """A single-line completion at the end of its line does not end with a bracket of its own still open: where the
    model would end it there (a stop token, or a line break after blanks), it writes the innermost bracket's closer
    instead, with the chance it gave to ending (`create_task_group(` ended after the `(`: now
    `create_task_group()`). What it writes afterwards is its own choice again; nothing changes where the model goes
    on, where the brackets were opened before the cursor, or where the text after the cursor is on the same line
    (the editor's auto-closed `)` is there). As for `Dangling`, `{` is a bracket in Python only: in brace languages it
    opens a block, and a line that ends with it is complete. Nor does it close where the line goes on below: an
    import list (`from m import (`), or a line that does not end with an operand (`(a and`, `f(a,`, `if (a:`).

    `head` is the text before the completion, `healed` the part of it that healing backed off (the generation
    starts by writing it again; it is the user's text: its brackets are not the completion's)."""

    def __init__(self, head: str, healed: str, ends: torch.Tensor, closers: dict[str, int], comment: str | None,
                 quotes: str, openers: str = "([{"):
        self.head = head.rsplit("\n", 1)[-1]  # the cursor's line before the completion: all a step reads of `head`
        self.healed, self.ends, self.closers = healed, ends, closers
        self.comment, self.quotes, self.openers = comment, quotes, openers

    def apply(self, logits: torch.Tensor, text: str) -> torch.Tensor:
        body = text[len(self.healed):]
        if "\n" in body or "\r" in body:
            return logits
        line = (self.head + text).rsplit("\n", 1)[-1]
        need = own_unclosed(line, len(line) - len(body), self.comment, self.quotes, self.openers)
        if need and _IMPORT_LIST.search(line):
            return logits  # `from m import (` goes on below: an import list is never empty
        if need and not (_operand_end(line) or need[0] == "]" and line.rstrip(" \t").endswith(":")):
            # `(a and` then a line break goes on below (implicit line joining), `if (a:` ends a header: `and)`, `:)`
            # are no code (a slice's `x[1:` does close)
            return logits
        token = self.closers.get(need[:1]) if need else None
        if token is None or token >= logits.shape[-1]:
            return logits
        ends = self.ends[self.ends < logits.shape[-1]]
        ending = logits.index_select(0, ends).max() if len(ends) else None
        if ending is None or not torch.isfinite(ending):
            return logits
        out = logits.index_fill(0, ends, float("-inf"))
        out[token] = torch.maximum(out[token], ending)
        return out


class Decoding:
    def __init__(self, tokenizer, vocab, stop_ids: set[int], rules: StopRules, healed: str, max_new: int,
                 prompt_ids: Sequence[int], device, no_comment: torch.Tensor | None = None,
                 processors: Sequence = (), guide=None, no_indent: torch.Tensor | None = None,
                 dangling: Dangling | None = None, never: torch.Tensor | None = None,
                 closing: Closing | None = None, no_end: torch.Tensor | None = None):
        self.tokenizer, self.vocab, self.stop_ids = tokenizer, vocab, stop_ids
        self.never = never  # tokens no completion writes (control characters)
        # On a blank line, until the completion has code: the ends and line breaks that would make it empty.
        self.no_end = no_end
        self.rules, self.healed, self.max_new = rules, healed, max_new
        self.no_comment, self.processors, self.guide = no_comment, processors, guide
        # Tokens that may not open the completion (it starts at the cursor's column, after the line's indentation).
        self.no_indent = no_indent
        self.dangling = dangling  # single-line: no line break right after an opening bracket
        self.closing = closing  # single-line, at a line's end: no end while a bracket of its own is open
        self.remaining_heal = healed  # what the generation must still reproduce before the rules apply
        self.generated: list[int] = []
        self.text = ""
        self.reason = "max_tokens"
        self.finishing = False  # past max_new, finishing the word the limit cut
        # Logits processors see the prompt and the tokens so far (transformers' signature).
        self.history = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device) if processors else None

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """This step's logits [vocab] after healing's mask, the no-comment and no-indent rules, the processors and
        the monitors; control-character tokens never, nor an empty answer on a blank line; then the closing rule (an
        end becomes a closer)."""
        if self.remaining_heal:
            logits = logits + self.vocab.mask(self.remaining_heal, logits.shape[-1], logits.device)
        elif self.no_indent is not None and len(self.text) <= len(self.healed):
            logits = logits.index_fill(0, self.no_indent[self.no_indent < logits.shape[-1]], float("-inf"))
        if self.dangling is not None and not self.remaining_heal:
            logits = self.dangling.apply(logits, self.text)
        no_comment = self.no_comment
        if no_comment is not None and not self.text[len(self.healed):].strip():
            logits = logits.index_fill(0, no_comment[no_comment < logits.shape[-1]], float("-inf"))
        for processor in self.processors:
            logits = processor(self.history, logits.unsqueeze(0)).squeeze(0)
        if self.guide is not None:
            logits = self.guide.apply(logits, self.text)
        if self.never is not None:
            kept = logits.index_fill(0, self.never[self.never < logits.shape[-1]], float("-inf"))
            logits = kept if torch.isfinite(kept).any() else logits
        if self.no_end is not None and not self.text[len(self.healed):].strip():
            kept = logits.index_fill(0, self.no_end[self.no_end < logits.shape[-1]], float("-inf"))
            logits = kept if torch.isfinite(kept).any() else logits
        if self.closing is not None and not self.remaining_heal:
            logits = self.closing.apply(logits, self.text)
        return logits

    def push(self, token: int) -> str | None:
        """Take a sampled token; the stop reason if the sequence ends with it (a stop token is not kept)."""
        if token in self.stop_ids:
            self.reason = "eos" if token == self.tokenizer.eos_token_id else "stop_token"
            return self.reason
        if self.finishing and not (token < len(self.vocab.texts) and _is_word_char(self.vocab.texts[token][:1])):
            self.reason = "max_tokens"  # the word was whole: the token after it is not kept
            return self.reason
        self.generated.append(token)
        if self.history is not None:
            self.history = torch.cat([self.history, self.history.new_tensor([[token]])], dim=1)
        self.text = self.tokenizer.decode(self.generated)
        if self.remaining_heal:
            piece = self.vocab.texts[token]
            rest = self.remaining_heal
            self.remaining_heal = rest[len(piece):] if rest.startswith(piece) else ""
        if not self.remaining_heal:
            _, why = self.rules.cut(self.text[len(self.healed):])
            if why:
                self.reason = why
                return why
        if len(self.generated) >= self.max_new:
            if not (self.text[-1:] and _is_word_char(self.text[-1]) and not self.remaining_heal
                    and len(self.generated) < self.max_new + WORD_TAIL):
                self.reason = "max_tokens"
                return self.reason
            self.finishing = True
        if self.guide is not None:  # the next step's analysis starts while the model runs it
            self.guide.ahead(self.text)
        return None

    def draft_room(self) -> int:
        """How many draft tokens the limit leaves (none while finishing a word: each token is checked alone)."""
        return max(0, self.max_new - len(self.generated))

    def stop(self, reason: str) -> None:
        """Ended from outside: cancelled, the time budget, the cache full."""
        self.reason = reason

    def final(self, suffix: str) -> str:
        """The text the editor gets (stop rules, healing's text removed, the suffix overlap trimmed)."""
        text = self.text
        body = text.removeprefix(self.healed)
        return final_text(self.rules, body, self.reason, suffix)

    def report(self) -> dict:
        """The Completion fields this sequence fills."""
        guide = self.guide
        return dict(stop_reason=self.reason, generated_tokens=len(self.generated), raw_text=self.text,
                    healed=self.healed, monitor_spans=guide.report(self.text, self.healed) if guide is not None else [],
                    monitor_ms=round(guide.ms, 3) if guide is not None else 0.0)
