"""Protocol <-> engine: the one place where LSP types meet the completer's.

Positions arrive in the negotiated encoding (UTF-16 by default); pygls' position codec turns them into code points
and the engine only ever sees a character offset into the document's text. Results go back as inline completion
items (ghost text), as classic completion items, or as plain JSON for the commands.
"""

from __future__ import annotations

import re
from typing import Any

from lsprotocol import types

from repocomplete.context_engine.engine import Context
from repocomplete.context_engine.records import ContextRecord
from repocomplete.pipeline import CompletionResult

_WORD = re.compile(r"[\w$]+$")


class PositionError(ValueError):
    """A position outside the document (the message says where)."""


def offset_at(document, position: types.Position) -> tuple[int, types.Position]:
    """The character offset of a client position, and the position itself with its character clamped: a character
    past the end of its line means the end of the line (as the LSP specification says); a line past the end of the
    document is an error."""
    if position.line < 0 or position.character < 0:
        raise PositionError(f"negative position {position.line}:{position.character}")
    lines = document.lines
    ends_open = not lines or lines[-1].endswith(("\n", "\r"))
    last = len(lines) if ends_open else len(lines) - 1
    if position.line > last:
        raise PositionError(f"line {position.line} is past the end of {document.uri} ({last + 1} lines)")
    start = sum(len(line) for line in lines[: position.line])
    if position.line == len(lines):
        return start, types.Position(position.line, 0)
    line = lines[position.line].rstrip("\r\n")
    codec = document.position_codec
    character = min(position.character, codec.client_num_units(line))
    # pygls' codec clamps a character past the end to the one before it: clamp first, then convert one line.
    code_points = codec.position_from_client_units([line], types.Position(0, character)).character
    return start + code_points, types.Position(position.line, character)


def word_before(text: str, offset: int) -> str:
    """The identifier characters just before the cursor (what a client filters classic completions by)."""
    line_start = text.rfind("\n", 0, offset) + 1
    match = _WORD.search(text, line_start, offset)
    return match.group(0) if match else ""


def inline_items(completion: str, position: types.Position) -> list[types.InlineCompletionItem]:
    """Ghost text at the cursor: the completion is inserted there, nothing is replaced."""
    if not completion:
        return []
    return [types.InlineCompletionItem(insert_text=completion, range=types.Range(position, position))]


def completion_list(completion: str, text: str, offset: int, position: types.Position, document) -> types.CompletionList:
    """One classic item carrying the whole completion. It replaces the word before the cursor with word+completion,
    so that a client filtering by the typed word keeps it; the label is the first line of what gets inserted.
    Incomplete: the next keystroke asks again (a completion is only good for one prefix)."""
    if not completion:
        return types.CompletionList(is_incomplete=True, items=[])
    word = word_before(text, offset)
    units = document.position_codec.client_num_units(word)
    start = types.Position(position.line, max(0, position.character - units))
    new_text = word + completion
    label = new_text.split("\n", 1)[0] or completion.strip().split("\n", 1)[0] or completion
    item = types.CompletionItem(
        label=label,
        kind=types.CompletionItemKind.Text,
        detail="repocomplete",
        filter_text=word + completion.split("\n", 1)[0],
        sort_text="0",
        preselect=True,
        insert_text_format=types.InsertTextFormat.PlainText,
        text_edit=types.TextEdit(range=types.Range(start, position), new_text=new_text),
        documentation=(
            types.MarkupContent(kind=types.MarkupKind.Markdown, value=f"```\n{new_text}\n```")
            if "\n" in completion else None
        ),
    )
    return types.CompletionList(is_incomplete=True, items=[item])


def record_json(record: ContextRecord) -> dict:
    return {
        "path": record.path,
        "start_line": record.start_line,
        "end_line": record.end_line,
        "kind": record.kind,
        "score": round(float(record.score), 4),
        "why": record.why,
        "text": record.text,
    }


def explain(result: CompletionResult, context_mode: str) -> dict[str, Any]:
    """What showContext returns for a completion made: the text, the workspace root and why, the context records
    and where the time went."""
    done = result.completion
    timings = {
        "context": result.context_ms,
        "prefill": round(done.prefill_s * 1000, 2),
        "decode": round(done.decode_s * 1000, 2),
        "engine": result.engine_ms,
    }
    if done.monitor_spans or done.monitor_ms:
        timings["monitors"] = done.monitor_ms
    explained = _explained(done.text, result.context, done.prompt_tokens, timings, done.stop_reason, context_mode)
    # Monitor-guided decoding: which monitor constrained (or yielded) which span of the completion.
    explained["monitors"] = list(done.monitor_spans)
    # Token provenance: which prompt tokens were template, repository context (and from which item), prefix, suffix,
    # and which were generated.
    explained["prompt_spans"] = [span.to_json() for span in done.spans]
    return explained


def explain_context(context: Context | None, prompt_tokens: int | None, context_ms: float, context_mode: str) -> dict[str, Any]:
    """What showContext returns where no completion was made: the context for the position, and its time."""
    return _explained(None, context, prompt_tokens, {"context": context_ms}, None, context_mode)


def _explained(completion: str | None, context: Context | None, prompt_tokens: int | None, timings: dict,
               stop_reason: str | None, context_mode: str) -> dict[str, Any]:
    if context is not None:
        timings.update({f"provider.{k}": round(v, 2) for k, v in context.timings_ms.items()})
    return {
        "completion": completion,  # None: no completion was made at this position
        # The workspace the records come from and why that folder (None: no repository context here).
        "root": context.root if context is not None else None,
        "root_reason": context.root_reason if context is not None else None,
        "records": [record_json(r) for r in context.records] if context is not None else [],
        "prompt_tokens": prompt_tokens,
        # The repository context's tokens in the prompt and the budget they were packed into (None without one);
        # notes: what bent the request (a budget reduced to fit the model's window).
        "context_tokens": context.packed.tokens if context is not None else None,
        "context_budget": context.packed.budget if context is not None else None,
        "notes": list(context.notes) if context is not None else [],
        "timings_ms": timings,
        "stop_reason": stop_reason,
        "context_mode": context_mode,
    }


def parse_position_argument(arguments: Any) -> tuple[str, types.Position]:
    """The [{uri, position: {line, character}}] arguments of repocomplete.showContext."""
    arg = arguments[0] if isinstance(arguments, (list, tuple)) and len(arguments) == 1 else arguments
    try:
        uri = arg["uri"]
        line, character = arg["position"]["line"], arg["position"]["character"]
    except (TypeError, KeyError, IndexError):
        raise ValueError("expected arguments [{uri, position: {line, character}}]") from None
    if not isinstance(uri, str) or not all(isinstance(v, int) and not isinstance(v, bool) for v in (line, character)):
        raise ValueError("expected arguments [{uri: string, position: {line: int, character: int}}]")
    return uri, types.Position(line=line, character=character)
