"""Token provenance: every prompt token is known as template, repository context (which item), prefix or suffix,
through truncation and token healing, and the generated tail follows."""

from __future__ import annotations

import pytest

from repocomplete.model_runtime.engine import CompletionRequest, Engine, Span, drop_span_tokens, truncate
from repocomplete.model_runtime.templates import ContextItem, PromptParts

PARTS = PromptParts(
    "import util\n\ndef main():\n    total = util.",
    "\n    return total\n",
    "app.py",
    [ContextItem("util.py", "def area(w, h):\n    return w * h\n"), ContextItem("lib/shapes.py", "class Square:\n    side = 1\n")],
    "demo",
)


def covers(spans, n):
    assert spans[0].start == 0 and spans[-1].end == n
    assert all(a.end == b.start for a, b in zip(spans, spans[1:]))  # no gaps, no overlaps


@pytest.mark.parametrize("template", ["plain", "smollm2-fim"])
def test_spans_cover_the_prompt_and_name_each_context_item(tiny_loaded, tiny_config, tokenizer, template):
    engine = Engine(tiny_loaded, tiny_config.replace(fim_template=template))
    _, encoded = engine.encode(PARTS)
    covers(encoded.spans, len(encoded.ids))
    context = [s for s in encoded.spans if s.kind == "context"]
    assert [(s.source, s.path) for s in context] == [(0, "util.py"), (1, "lib/shapes.py")]
    text = lambda s: tokenizer.decode(encoded.ids[s.start : s.end])  # noqa: E731
    assert "area(w, h)" in text(context[0]) and "class Square" in text(context[1])
    (prefix,) = [s for s in encoded.spans if s.kind == "prefix"]
    suffix = [text(s) for s in encoded.spans if s.kind == "suffix"]
    assert text(prefix) == PARTS.prefix
    assert suffix == ([] if template == "plain" else [PARTS.suffix])  # a left-to-right model never sees the suffix
    assert prefix.end == encoded.prefix_end


def test_truncation_keeps_the_spans_of_what_is_left(tiny_loaded, tiny_config):
    engine = Engine(tiny_loaded, tiny_config)
    _, encoded = engine.encode(PARTS)
    cut = truncate(encoded, len(encoded.ids) - 5)
    covers(cut.spans, len(cut.ids))
    dropped = len(encoded.ids) - len(cut.ids)
    for before, after in zip(encoded.spans[::-1], cut.spans[::-1]):  # the end of the prompt is untouched
        if before.start >= dropped:
            assert (after.kind, after.start, after.end) == (before.kind, before.start - dropped, before.end - dropped)


def test_drop_span_tokens_shrinks_and_shifts():
    spans = [Span("template", 0, 2), Span("prefix", 2, 10), Span("suffix", 10, 14)]
    assert drop_span_tokens(spans, 8, 2) == [Span("template", 0, 2), Span("prefix", 2, 8), Span("suffix", 8, 12)]
    assert drop_span_tokens(spans, 0, 3) == [Span("prefix", 0, 7), Span("suffix", 7, 11)]


def test_a_completion_reports_healed_spans_and_its_generated_tail(tiny_loaded, tiny_config):
    engine = Engine(tiny_loaded, tiny_config.replace(token_healing=True, max_new_tokens=4, speculative_tokens=0))
    done = engine.complete(CompletionRequest(PARTS))
    _, encoded = engine.encode(PARTS)
    spans = done.spans
    prompt = [s for s in spans if s.kind != "generated"]
    covers(prompt, done.prompt_tokens)
    (prefix,) = [s for s in spans if s.kind == "prefix"]
    healed = len(encoded.ids) - done.prompt_tokens
    assert healed >= 1 and done.healed  # "util." ends in a token healing backs off
    assert prefix.end == encoded.prefix_end - healed
    assert spans[-1] == Span("generated", done.prompt_tokens, done.prompt_tokens + done.generated_tokens)
    assert engine.spans == prompt
