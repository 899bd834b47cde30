"""Where a completion ends: stop rules over the generated text, and trimming of text the right context repeats.

Pure functions over strings, so that the engine, the remote backend and the tests share them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_OPENERS = (":", "{", "(", "[", "=>", "->", " do", " then")
# A line that closes the block: a bracket, or a closing keyword as a whole word (not `files = []`).
_CLOSER = re.compile(r"[})\]]|(?:end|fi|esac|done)\b")


# A loop: the text ends with one piece (2-32 characters) written 4 times or more in a row, 16 characters at least.
_LOOP = re.compile(r"(.{2,32}?)\1{3,}$", re.S)
LOOP_COPIES = 4
LOOP_CHARS = 16


def loop_end(text: str) -> int | None:
    """Where the first copy of a loop that ends `text` ends (None: no loop). A loop is a piece with a letter and two
    different characters in it, written LOOP_COPIES times or more back to back at the end, LOOP_CHARS characters in
    all (`.style.style.style.style`, a short line written again and again): small models fall into them, and no code
    wants four copies of the same name in a row (`0xFFFFFFFF` and `[0, 0, 0, 0]` are no loop). Only the text's tail
    is searched (a step's cost stays flat however long the completion)."""
    tail_start = max(0, len(text) - 32 * (LOOP_COPIES + 1))
    m = _LOOP.search(text, tail_start)
    if m is None:
        return None
    unit = m.group(1)
    if len(text) - m.start() < LOOP_CHARS or len(set(unit)) < 2 or not any(c.isalpha() for c in unit):
        return None
    start = m.start()
    while start >= len(unit) and text[start - len(unit):start] == unit:  # the loop began before the tail
        start -= len(unit)
    return start + len(unit)


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


@dataclass(frozen=True)
class StopRules:
    multiline: bool
    # Indentation of the line the cursor is on, and whether the text before the cursor opens a block there.
    block_indent: int = 0
    opens_block: bool = False
    loops: bool = True  # a loop ends the completion at its first copy (`loop_end`)

    @classmethod
    def at_cursor(cls, prefix: str, multiline: bool, loops: bool = True) -> "StopRules":
        line = prefix.rsplit("\n", 1)[-1]
        code = line.rstrip()
        if not code.strip():
            # The cursor sits on an empty or indentation-only line: that indentation is the block.
            return cls(multiline, len(line), False, loops)
        return cls(multiline, indent_of(line), code.endswith(_OPENERS), loops)

    def cut(self, text: str) -> tuple[str, str | None]:
        """The text to keep and, if the rules end the completion inside `text`, the reason (a loop keeps its first
        copy: `repetition`)."""
        end = loop_end(text) if self.loops else None
        if end is not None:
            kept, why = self._cut(text[:end])
            return kept, why or "repetition"
        return self._cut(text)

    def _cut(self, text: str) -> tuple[str, str | None]:
        if not self.multiline:
            head, newline, _ = text.partition("\n")
            if newline:
                return head, "newline"
            return text, None
        lines = text.split("\n")
        blank_run = 0
        for i, line in enumerate(lines[1:], start=1):
            complete = i < len(lines) - 1  # the last line may still be growing
            if not line.strip():
                if not complete:
                    continue  # "\n\n   " may still become a line of the block
                blank_run += 1
                if blank_run >= 2:
                    return "\n".join(lines[: i - 1]).rstrip("\n"), "blank_lines"
                continue
            blank_run = 0
            indent = indent_of(line)
            # Decide on a line once its indentation is known (it has a non-blank character).
            if self.opens_block:
                ended = indent <= self.block_indent
            else:
                ended = indent < self.block_indent
            if ended:
                keep = lines[:i]
                closes = indent == self.block_indent and _CLOSER.match(line.strip())
                if closes and complete:
                    keep = lines[: i + 1]  # the block's closing bracket belongs to it
                elif closes:
                    return text, None  # wait for the closing line to finish
                return "\n".join(keep).rstrip("\n"), "indent"
        return text, None


def trim_suffix_overlap(completion: str, suffix: str) -> str:
    """Drop the end of a completion that merely repeats the text after the cursor.

    Two cases: the completion's tail equals the head of the rest of the cursor's line (`foo(x` + `)` when `)`
    already follows the cursor), and a completion line that equals the next non-blank line of the suffix (the
    model started to rewrite what is already there).
    """
    if not completion or not suffix:
        return completion
    rest_of_line = suffix.split("\n", 1)[0]
    if rest_of_line.strip():
        for k in range(min(len(completion), len(rest_of_line)), 0, -1):
            if completion.endswith(rest_of_line[:k]):
                completion = completion[:-k]
                break
    next_line = next((line.strip() for line in suffix.split("\n")[1:] if line.strip()), None)
    if next_line is not None and "\n" in completion:
        lines = completion.split("\n")
        for i, line in enumerate(lines[1:], start=1):
            if line.strip() == next_line:
                completion = "\n".join(lines[:i])
                break
    return completion.rstrip() if "\n" in completion else completion


def final_text(rules: StopRules, text: str, reason: str, suffix: str) -> str:
    """What the editor gets from the decoded text: cut by the stop rules, nothing for a cancelled request or for
    blanks alone (spaces typed for the user are no suggestion), and without the part that repeats what follows the
    cursor."""
    if reason == "cancelled":
        return ""
    kept, _ = rules.cut(text)
    kept = trim_suffix_overlap(kept, suffix) if suffix else kept
    return kept if kept.strip(" \t") else ""
