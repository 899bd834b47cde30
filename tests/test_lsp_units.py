"""The server's pure pieces: settings, the adaptive debounce, the completion cache, position conversion."""

from __future__ import annotations

import pytest
from lsprotocol import types
from pygls.workspace import TextDocument

from lsp_server import convert
from lsp_server.config import Settings, apply, section_of, to_json
from lsp_server.scheduling import Cached, CompletionCache, Debounce


def test_settings_take_camel_case_and_keep_the_old_value_on_a_bad_one():
    s, problems = apply(Settings(), {"maxTokens": 12, "contextBudget": "lots", "debounceMs": 20, "colour": "red",
                                     "languages": ["python"], "endpoint": None})
    assert (s.max_tokens, s.context_budget, s.debounce_ms, s.languages) == (12, 1024, 20, ("python",))
    assert any("contextBudget must be an integer" in p and "keeping contextBudget = 1024" in p for p in problems)
    assert any("unknown setting 'colour'" in p for p in problems)
    assert apply(Settings(), "not an object")[0] == Settings()
    assert section_of({"repocomplete": {"enabled": False}}) == {"enabled": False}
    assert to_json(Settings())["maxTokens"] == 64


@pytest.mark.parametrize("raw", [{"enabled": "yes"}, {"maxTokens": 0}, {"maxTokens": True}, {"context": "all"},
                                 {"languages": "python"}, {"model": ""}])
def test_each_bad_value_is_reported(raw):
    s, problems = apply(Settings(), raw)
    assert s == Settings() and len(problems) == 1


def test_debounce_rises_under_pressure_and_falls_back_to_the_floor():
    d = Debounce(floor_ms=50, cap_ms=300)
    assert d.delay_ms() == 50  # nothing timed yet
    t = 0.0
    for _ in range(10):  # a request every 100 ms, the engine takes 400 ms: delay goes to the cap
        t += 0.1
        d.arrived(t)
        d.finished(400)
    assert d.delay_ms() == pytest.approx(300, abs=1)
    for _ in range(20):  # a request every 2 s: the engine keeps up, the delay falls toward the floor
        t += 2.0
        d.arrived(t)
        d.finished(400)
    assert 50 <= d.delay_ms() < 130
    fast = Debounce(floor_ms=50)
    fast.finished(20)  # an engine faster than the floor: the floor
    assert fast.delay_ms() == 50


def test_cache_serves_retyping_and_typing_through_the_ghost_text():
    c = CompletionCache(capacity=2)
    key = c.key("u", 0, "x = foo.", "\n")
    c.put(key, Cached("bar(1)", {}))
    assert c.get("u", 0, "x = foo.", "\n")[1] == "bar(1)"  # backspace + retype: the same text around the cursor
    assert c.get("u", 0, "x = foo.ba", "\n")[1] == "r(1)"  # typed "ba" of the ghost text: the rest
    assert c.get("u", 0, "x = foo.bz", "\n") is None  # typed something else
    assert c.get("u", 1, "x = foo.", "\n") is None  # settings changed
    c.put(c.key("u", 0, "a", ""), Cached("1", {}))
    c.put(c.key("u", 0, "b", ""), Cached("2", {}))
    assert len(c) == 2 and c.peek(key) is None  # least recently used dropped
    c.put(c.key("u", 0, "e", ""), Cached("", {}))
    assert c.peek(c.key("u", 0, "e", "")) is None  # empty answers are not kept


def test_positions_are_utf16_and_past_the_end_is_an_error():
    doc = TextDocument("file:///a.py", "s = '😀'\nx\n")  # the emoji is 2 UTF-16 code units
    offset, _ = convert.offset_at(doc, types.Position(line=0, character=8))
    assert doc.source[:offset] == "s = '😀'"
    with pytest.raises(convert.PositionError):
        convert.offset_at(doc, types.Position(line=9, character=0))
