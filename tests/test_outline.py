"""The outline provider: the current file's definitions outside the window the model sees."""

from __future__ import annotations

import textwrap

import pytest

from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.engine import ContextEngine
from repocomplete.context_engine.outline import outline
from repocomplete.context_engine.packing import approx_tokens, text_tokens
from repocomplete.context_engine.parsing import parse_source
from repocomplete.model_runtime.templates import TEMPLATES, suffix_lines_shown

SOURCE = textwrap.dedent('''
    import io


    class Buffer:
        """Text kept until flushed."""

        def __init__(self) -> None:
            self.parts = []

        def write(self, text: str) -> None:
            self.parts.append(text)
            self._check_size()

        def _check_size(self) -> None:
            if len(self.parts) > 100:
                self.flush()

        def flush(self) -> str:
            out = "".join(self.parts)
            self.parts.clear()
            return out


    class Other:
        def unrelated(self, x: int) -> int:
            return x


    def make_buffer(size: int = 10) -> Buffer:
        return Buffer()
''').lstrip("\n")

COST = text_tokens(approx_tokens)


def _defs():
    return parse_source("pkg/buffer.py", SOURCE).definitions


def _line(text: str) -> int:
    return SOURCE.split("\n").index(text) + 1


def test_the_outline_shows_what_is_after_the_window_under_its_class():
    line = _line("        self.parts.append(text)")
    (record,) = outline(_defs(), "pkg/buffer.py", line, (1, line), 500, COST)
    assert record.kind == "outline" and record.path == "pkg/buffer.py"
    assert record.text.split("\n") == [
        "class Buffer:",
        "    def _check_size(self) -> None:",
        "    def flush(self) -> str:",
        "class Other:",
        "    def unrelated(self, x: int) -> int:",
        "def make_buffer(size: int = 10) -> Buffer:",
    ]
    # its span covers every definition it shows (what explain and the packer read), the class header included
    assert record.start_line == _line("class Buffer:") and record.end_line == len(SOURCE.rstrip("\n").split("\n"))


def test_a_tight_budget_keeps_the_cursors_class_first():
    line = _line("        self.parts.append(text)")
    (record,) = outline(_defs(), "pkg/buffer.py", line, (1, line), 30, COST)
    lines = record.text.split("\n")
    assert lines[:3] == ["class Buffer:", "    def _check_size(self) -> None:", "    def flush(self) -> str:"]
    assert "    def unrelated(self, x: int) -> int:" not in lines  # another class's member: last
    assert outline(_defs(), "pkg/buffer.py", line, (1, line), 3, COST) == []  # nothing fits


def test_what_the_window_shows_is_not_repeated():
    line = _line("        self.parts.append(text)")
    assert outline(_defs(), "pkg/buffer.py", line, (1, len(SOURCE.split("\n"))), 500, COST) == []
    # a window that starts inside the class: the class's header above it comes back, with the hidden members
    first = _line("    def write(self, text: str) -> None:")
    (record,) = outline(_defs(), "pkg/buffer.py", line, (first, line + 3), 500, COST)
    lines = record.text.split("\n")
    assert lines[:3] == ["class Buffer:", "    def __init__(self) -> None:", "    def flush(self) -> str:"]
    assert "    def _check_size(self) -> None:" not in lines and "    def write(self, text: str) -> None:" not in lines


def test_templates_say_how_much_of_the_suffix_they_show():
    assert suffix_lines_shown(TEMPLATES["plain"]) == 0  # left to right: nothing after the cursor
    assert suffix_lines_shown(TEMPLATES["starcoder"]) is None  # FIM: the whole suffix window
    assert suffix_lines_shown(TEMPLATES["plain-suffix"]) == 7  # a block of the cursor line's rest and 7 more


@pytest.fixture
def engine(tmp_path):
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "pkg" / "buffer.py").write_text(SOURCE)
    e = ContextEngine(root, ContextConfig(index_dir=tmp_path / "index", budget_tokens=600,
                                          slow_provider_deadline_ms=None))
    e.build()
    yield e
    e.close()


def test_a_left_to_right_model_gets_the_definitions_after_the_cursor(engine):
    path = str(engine.root / "pkg" / "buffer.py")
    offset = SOURCE.index("self.parts.append(text)")
    _, ctx = engine.prompt_parts(path, SOURCE, offset, suffix_lines=0)
    (record,) = [r for r in ctx.records if r.kind == "outline"]
    assert "    def _check_size(self) -> None:" in record.text.split("\n")
    # a FIM model sees the suffix window (the whole file here): no outline, and nothing of the file repeated
    _, ctx = engine.prompt_parts(path, SOURCE, offset)
    assert [r for r in ctx.records if r.path == "pkg/buffer.py" and r.kind != "typed_holes"] == []


def test_the_completer_tells_the_engine_what_its_model_shows_of_the_suffix():
    from types import SimpleNamespace

    from repocomplete.pipeline import ModelTokens

    assert ModelTokens(SimpleNamespace(template=TEMPLATES["plain"])).suffix_lines() == 0
    assert ModelTokens(SimpleNamespace(template=TEMPLATES["smollm2-fim"])).suffix_lines() is None
    assert ModelTokens(SimpleNamespace()).suffix_lines() is None  # an endpoint: its template is unknown here
