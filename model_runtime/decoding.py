"""One sequence's decode bookkeeping: the masks on its logits, and what each sampled token does to it.

The engine's single-sequence loop (`Engine._complete`) and the lockstep batch (`batch.py`: candidates, grouped
requests) both drive one `Decoding` per sequence, so that every path has the same stop rules, token healing and
trimming. The forward passes, speculation and the time budget stay with the loops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
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


class Decoding:
    def __init__(self, tokenizer, vocab, stop_ids: set[int], rules: StopRules, healed: str, max_new: int,
                 prompt_ids: Sequence[int], device, no_comment: torch.Tensor | None = None,
                 processors: Sequence = (), guide=None, no_indent: torch.Tensor | None = None,
                 dangling: Dangling | None = None, never: torch.Tensor | None = None):
        self.tokenizer, self.vocab, self.stop_ids = tokenizer, vocab, stop_ids
        self.never = never  # tokens no completion writes (control characters)
        self.rules, self.healed, self.max_new = rules, healed, max_new
        self.no_comment, self.processors, self.guide = no_comment, processors, guide
        # Tokens that may not open the completion (it starts at the cursor's column, after the line's indentation).
        self.no_indent = no_indent
        self.dangling = dangling  # single-line: no line break right after an opening bracket
        self.remaining_heal = healed  # what the generation must still reproduce before the rules apply
        self.generated: list[int] = []
        self.text = ""
        self.reason = "max_tokens"
        # Logits processors see the prompt and the tokens so far (transformers' signature).
        self.history = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device) if processors else None

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """This step's logits [vocab] after healing's mask, the no-comment and no-indent rules, the processors and
        the monitors; control-character tokens never."""
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
        return logits

    def push(self, token: int) -> str | None:
        """Take a sampled token; the stop reason if the sequence ends with it (a stop token is not kept)."""
        if token in self.stop_ids:
            self.reason = "eos" if token == self.tokenizer.eos_token_id else "stop_token"
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
            self.reason = "max_tokens"
            return self.reason
        return None

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
