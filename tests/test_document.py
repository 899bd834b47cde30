"""The current document: safe reading, line/column to offset, and the prompt parts at a cursor."""

from __future__ import annotations

import pytest

import repocomplete.context_engine.document as document
from repocomplete.context_engine.document import (
    WINDOW_LINE_STEP,
    InputError,
    Window,
    cursor_parts,
    offset_of,
    read_source,
)

# -- read_source ------------------------------------------------------------------------------------------------


def _message(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as e:
        fn(*args, **kwargs)
    return str(e.value)


def test_read_source_reads_utf8(tmp_path):
    f = tmp_path / "ok.py"
    f.write_bytes("x = 'é'\r\ny = 2\n".encode())
    assert read_source(f) == "x = 'é'\r\ny = 2\n"
    assert read_source(str(f)) == "x = 'é'\r\ny = 2\n"


def test_read_source_missing_file(tmp_path):
    missing = tmp_path / "nope.py"
    assert _message(read_source, missing) == f"file not found: {missing}"


def test_read_source_directory(tmp_path):
    assert _message(read_source, tmp_path) == f"not a regular file: {tmp_path}"


def test_read_source_binary(tmp_path):
    f = tmp_path / "blob.py"
    f.write_bytes(b"abc\x00def")
    assert _message(read_source, f) == f"binary file: {f}"


def test_read_source_not_utf8(tmp_path):
    f = tmp_path / "latin1.py"
    f.write_bytes(b"name = 'caf\xe9'\n")
    assert _message(read_source, f) == f"not UTF-8 text: {f} (byte 11)"


def test_read_source_too_large(tmp_path, monkeypatch):
    monkeypatch.setattr(document, "MAX_FILE_BYTES", 10)
    f = tmp_path / "big.py"
    f.write_text("x = 1234567\n")
    assert _message(read_source, f) == f"file too large: {f} is 12 bytes (limit 10)"
    small = tmp_path / "small.py"
    small.write_text("x = 12345\n")  # exactly at the limit
    assert read_source(small) == "x = 12345\n"


# -- offset_of --------------------------------------------------------------------------------------------------

TEXT = "ab\ncde\n\nfg"


@pytest.mark.parametrize(
    "line, col, offset",
    [
        (1, 1, 0),
        (1, 3, 2),  # one past the end of the line
        (2, 1, 3),
        (2, 4, 6),
        (3, 1, 7),  # empty line
        (4, 1, 8),  # last line
        (4, 3, 10),  # end of file
    ],
)
def test_offset_of(line, col, offset):
    assert offset_of(TEXT, line, col) == offset


def test_offset_of_line_out_of_range():
    assert _message(offset_of, TEXT, 5, 1) == "line 5 out of range (the file has 4 lines)"
    assert _message(offset_of, TEXT, 0, 1) == "line 0 out of range (the file has 4 lines)"


def test_offset_of_col_out_of_range():
    assert _message(offset_of, TEXT, 2, 5) == "column 5 out of range (line 2 has 3 characters)"
    assert _message(offset_of, TEXT, 1, 0) == "column 0 out of range (line 1 has 2 characters)"
    assert _message(offset_of, TEXT, 3, 2) == "column 2 out of range (line 3 has 0 characters)"


def test_offset_of_crlf():
    text = "ab\r\ncd\r\n"
    # The "\r" is not a column: line 1 has 2 characters, col 3 is before the "\r".
    assert offset_of(text, 1, 3) == 2
    assert text[offset_of(text, 2, 1)] == "c"
    assert offset_of(text, 2, 1) == 4
    assert _message(offset_of, text, 1, 4) == "column 4 out of range (line 1 has 2 characters)"


def test_offset_of_counts_characters_not_bytes():
    text = "é = 1\nπ = 2\n"
    assert offset_of(text, 2, 2) == 7
    assert text[offset_of(text, 2, 2)] == " "


# -- cursor_parts -----------------------------------------------------------------------------------------------

SOURCE = "def f(x):\n    return x\n\nprint(f(1))\n"


def test_cursor_parts_infile():
    offset = offset_of(SOURCE, 2, 12)
    parts = cursor_parts(SOURCE, offset, mode="infile", path="m.py")
    assert (parts.prefix, parts.suffix, parts.path) == ("def f(x):\n    return ", "x\n\nprint(f(1))\n", "m.py")
    assert parts.context == [] and parts.repo_name == ""


def test_cursor_parts_default_mode_is_infile():
    assert cursor_parts(SOURCE, 10).suffix == SOURCE[10:]


def test_cursor_parts_none_has_no_suffix():
    parts = cursor_parts(SOURCE, 21, mode="none")
    assert (parts.prefix, parts.suffix) == ("def f(x):\n    return ", "")


def test_cursor_parts_repo_mode_is_refused():
    # Repository context needs the workspace: the context engine builds those parts, not this function.
    assert _message(cursor_parts, SOURCE, 0, mode="repo") == (
        "repository context comes from context_engine.engine.ContextEngine.prompt_parts"
    )


def test_cursor_parts_unknown_mode():
    assert _message(cursor_parts, SOURCE, 0, mode="files") == (
        "unknown context mode 'files'; expected one of none, infile, repo"
    )


def test_cursor_parts_suffix_window():
    parts = cursor_parts("abc" + "x" * 50, 3, window=Window(max_prefix_chars=100, max_suffix_chars=7))
    assert parts.suffix == "xxxxxxx"


def _numbered(n: int) -> str:
    # 10 characters a line, newline included.
    return "".join(f"l{i:04d}xxxx\n" for i in range(n))


def test_prefix_window_keeps_whole_lines_on_a_line_step():
    assert WINDOW_LINE_STEP == 32
    text = _numbered(200)
    offset = 150 * 10 + 3  # line 151 (index 150), after "l01"
    parts = cursor_parts(text, offset, mode="none", window=Window(max_prefix_chars=1000))
    # 1503 characters before the cursor: dropping 64 lines (640 characters, the first multiple of 32 lines
    # that brings it under 1000) leaves 863.
    assert parts.prefix.startswith("l0064xxxx\nl0065xxxx\n")
    assert parts.prefix.endswith("l0149xxxx\nl01")
    assert len(parts.prefix) == 863
    assert parts.prefix == text[640:offset]


def test_prefix_window_cut_stays_put_while_typing():
    text = _numbered(200)
    window = Window(max_prefix_chars=1000)
    offset = 150 * 10 + 3
    before = cursor_parts(text, offset, mode="infile", window=window)
    after = cursor_parts(text, offset + 1, mode="infile", window=window)
    assert after.prefix == before.prefix + text[offset]
    assert after.prefix.startswith("l0064xxxx\n")
    assert after.suffix == text[offset + 1 :]


def test_prefix_window_under_the_limit_is_untouched():
    text = _numbered(50)
    assert cursor_parts(text, 499, mode="none", window=Window(max_prefix_chars=1000)).prefix == text[:499]
