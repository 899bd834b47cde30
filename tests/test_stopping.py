"""Stop rules, suffix-overlap trimming and token healing's vocabulary index."""

from __future__ import annotations

import pytest

from repocomplete.model_runtime.healing import VocabIndex, backoff
from repocomplete.model_runtime.stopping import StopRules, final_text, indent_of, trim_suffix_overlap

# -- StopRules.at_cursor ---------------------------------------------------------------------------------------


def test_indent_of():
    assert indent_of("    x") == 4
    assert indent_of("\t\tx") == 2
    assert indent_of("x") == 0
    assert indent_of("   ") == 3


@pytest.mark.parametrize(
    "prefix, expected",
    [
        ("def f():", StopRules(True, 0, True)),
        ("class A:\n    def f(self):", StopRules(True, 4, True)),
        ("int main() {", StopRules(True, 0, True)),
        ("    call(", StopRules(True, 4, True)),
        ("def f():\n    ", StopRules(True, 4, False)),  # indented blank line: that indentation is the block
        ("def f():\n", StopRules(True, 0, False)),  # empty line
        ("def f():\n    x = foo", StopRules(True, 4, False)),  # mid-line
        ("        return a + ", StopRules(True, 8, False)),
        ("def f():   ", StopRules(True, 0, True)),  # trailing spaces after the opener
    ],
)
def test_at_cursor(prefix, expected):
    assert StopRules.at_cursor(prefix, True) == expected


def test_at_cursor_keeps_multiline_flag():
    assert StopRules.at_cursor("def f():", False) == StopRules(False, 0, True)


# -- cut: single line ------------------------------------------------------------------------------------------


def test_single_line_cuts_at_first_newline():
    rules = StopRules(multiline=False)
    assert rules.cut("x + 1)\n    return y\n") == ("x + 1)", "newline")
    assert rules.cut("\n    return 1") == ("", "newline")
    assert rules.cut("x + 1") == ("x + 1", None)
    assert rules.cut("") == ("", None)


# -- cut: multi line -------------------------------------------------------------------------------------------


def test_multiline_stops_when_indentation_returns_to_the_openers_block():
    rules = StopRules.at_cursor("def f():", True)
    assert rules.cut("\n    return 1\nprint(2)\n") == ("\n    return 1", "indent")
    # Decided as soon as the dedented line has a non-blank character.
    assert rules.cut("\n    return 1\np") == ("\n    return 1", "indent")


def test_multiline_in_a_block_stops_below_the_block():
    # Cursor on an indented blank line: lines at the same indentation continue, a dedent ends it.
    rules = StopRules.at_cursor("def f():\n    ", True)
    assert rules.cut("x = 1\n    y = 2\n") == ("x = 1\n    y = 2\n", None)
    assert rules.cut("x = 1\n    return x\nprint(f())") == ("x = 1\n    return x", "indent")


def test_multiline_keeps_a_closing_brace_at_the_block_indent():
    rules = StopRules.at_cursor("int f() {", True)
    assert rules.cut("\n    return 1;\n}\nint g() {") == ("\n    return 1;\n}", "indent")
    assert rules.cut("\n    return 1;\n}\n") == ("\n    return 1;\n}", "indent")
    # The closing line is still growing ("}" may become "};" or "} else {"): wait.
    assert rules.cut("\n    return 1;\n}") == ("\n    return 1;\n}", None)
    nested = StopRules.at_cursor("    if (x) {", True)
    assert nested.cut("\n        y();\n    }\n    z();") == ("\n        y();\n    }", "indent")


def test_multiline_closer_keyword_must_be_a_whole_word():
    # "files" and "end_time" are ordinary names at the opener's indentation, not the block closers "fi" and
    # "end" of shell and Ruby: the completion ends before them.
    rules = StopRules.at_cursor("def f():", True)
    assert rules.cut("\n    return 1\nfiles = []\n") == ("\n    return 1", "indent")
    assert rules.cut("\n    return 1\nend_time = 3\n") == ("\n    return 1", "indent")
    assert rules.cut("\n    return 1\nfinder()\n") == ("\n    return 1", "indent")


def test_multiline_keeps_a_real_keyword_closer():
    rules = StopRules.at_cursor("if [ -f x ]; then", True)
    assert rules.opens_block
    assert rules.cut("\n  echo yes\nfi\necho after") == ("\n  echo yes\nfi", "indent")
    ruby = StopRules.at_cursor("items.each do", True)
    assert ruby.cut("\n  puts 1\nend\nputs 2") == ("\n  puts 1\nend", "indent")


def test_multiline_stops_at_a_pair_of_blank_lines():
    rules = StopRules.at_cursor("def f():", True)
    assert rules.cut("\n    a = 1\n\n\nb = 2") == ("\n    a = 1", "blank_lines")
    assert rules.cut("\n    a = 1\n\n\n") == ("\n    a = 1", "blank_lines")
    # One blank line followed by code in the block is not a stop.
    assert rules.cut("\n    a = 1\n\n    b = 2") == ("\n    a = 1\n\n    b = 2", None)


def test_multiline_growing_line_is_not_decided_early():
    rules = StopRules.at_cursor("def f():", True)
    # The last line has only indentation so far: it may still become "    b = 2" (no stop yet).
    assert rules.cut("\n    a = 1\n") == ("\n    a = 1\n", None)
    assert rules.cut("\n    a = 1\n  ") == ("\n    a = 1\n  ", None)
    # SmolLM2 emits "\n\n   " as one token between two statements of a block ('\n    x = 1\n\n    y = 2'):
    # one blank line and a growing indentation-only line is not yet a pair of blank lines.
    assert rules.cut("\n    a = 1\n\n") == ("\n    a = 1\n\n", None)
    assert rules.cut("\n    a = 1\n\n   ") == ("\n    a = 1\n\n   ", None)


def test_multiline_no_stop_inside_the_block():
    rules = StopRules.at_cursor("for i in range(3):", True)
    text = "\n    if i:\n        print(i)\n    else:\n        pass"
    assert rules.cut(text) == (text, None)


# -- trim_suffix_overlap ---------------------------------------------------------------------------------------


def test_trim_tail_repeating_rest_of_line():
    assert trim_suffix_overlap("foo(x)", ")\n") == "foo(x"
    assert trim_suffix_overlap("foo(x))", "))\nnext()") == "foo(x"
    assert trim_suffix_overlap('get("a")', '")\n') == 'get("a'


def test_trim_whole_completion_repeat():
    assert trim_suffix_overlap(")", ")\n") == ""
    assert trim_suffix_overlap("bar()", "bar()\n") == ""


def test_trim_multiline_repeat_of_next_suffix_line():
    completion = "x = 1\n    y = 2\n    return y\n"
    assert trim_suffix_overlap(completion, "\n    return y\n") == "x = 1\n    y = 2"
    # The next non-blank line counts, past blank ones.
    assert trim_suffix_overlap("a()\nb()\nc()", "\n\n\nb()\n") == "a()"


def test_trim_no_overlap_unchanged():
    assert trim_suffix_overlap("foo(x", "\nbar()\n") == "foo(x"
    assert trim_suffix_overlap("value", " + 1\n") == "value"
    assert trim_suffix_overlap("a = 1\nb = 2", "\nc = 3\n") == "a = 1\nb = 2"


def test_trim_empty_suffix_or_completion_unchanged():
    assert trim_suffix_overlap("foo(x)\n  ", "") == "foo(x)\n  "
    assert trim_suffix_overlap("", ")\n") == ""


# -- token healing ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return VocabIndex(tokenizer)


def _id(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, ids)
    return ids[0]


def test_vocab_index_allowed_for_indentation(tokenizer, vocab):
    nl3, nl4, ret = _id(tokenizer, "\n   "), _id(tokenizer, "\n    "), _id(tokenizer, " return")
    assert (nl3, nl4, ret) == (472, 2367, 1003)
    allowed = set(vocab.allowed("\n    "))
    assert nl3 in allowed  # a prefix of the text
    # Not the text itself: it would end on the run's last space, which BPE always gives to the next token, so
    # the model would write its first word after a token it has rarely seen one follow (`!  """` on click).
    assert nl4 not in allowed
    assert _id(tokenizer, "\n") in allowed
    assert ret not in allowed
    # After "\n   ", the last space to reproduce: " return" takes it; the bare " " does not, nor "  " (more blanks).
    last = set(vocab.allowed(" "))
    assert ret in last and _id(tokenizer, " ") not in last and _id(tokenizer, "  ") not in last
    # Tabs are not split that way (no token begins with a tab and goes on with a word): the tab itself stays.
    assert _id(tokenizer, "\t") in set(vocab.allowed("\t"))
    # Where only the exact token would reproduce the text, it stays allowed (never an empty mask).
    class Few:
        all_special_ids = []
        pieces = ["x", "\n  ", " ", "\n"]

        def __len__(self):
            return len(self.pieces)

        def decode(self, ids):
            return "".join(self.pieces[i] for i in ids)

    few = VocabIndex(Few())
    assert sorted(few.allowed(" ")) == [2]
    assert sorted(few.allowed("\n  ")) == [3]  # "\n", then " " alone: the exact token goes
    # Every allowed token is consistent with the text to reproduce.
    for token_id in allowed:
        t = vocab.texts[token_id]
        assert t.startswith("\n    ") or "\n    ".startswith(t), repr(t)


def test_vocab_index_special_tokens_have_no_text(tokenizer, vocab):
    assert vocab.size == len(tokenizer) == 49152
    assert vocab.texts[5] == "" and vocab.texts[0] == ""
    assert 5 not in vocab.allowed("<file_sep>")


def test_backoff(tokenizer, vocab):
    ids = tokenizer.encode("    retu", add_special_tokens=False)
    assert [vocab.texts[i] for i in ids] == ["   ", " ret", "u"]
    assert backoff(ids, vocab.texts) == 2  # "u" continues the word " ret": both go
    assert backoff(tokenizer.encode("def f(x):\n    ", add_special_tokens=False), vocab.texts) == 1
    assert backoff(tokenizer.encode("print(abc", add_special_tokens=False), vocab.texts) == 1
    # A long run of word pieces is capped at three tokens.
    assert backoff(tokenizer.encode("xqzjvkwpqzzxq", add_special_tokens=False), vocab.texts) == 3
    assert backoff([], vocab.texts) == 0


def test_blanks_alone_are_no_completion():
    rules = StopRules.at_cursor("def f():\n    ", multiline=False)
    assert final_text(rules, "        ", "eos", "") == ""
    assert final_text(rules, "\t \t", "max_tokens", "") == ""
    assert final_text(rules, "  x = 1", "eos", "") == "  x = 1"


@pytest.mark.parametrize("text, kept", [
    ('theme.styles = [Style("Theme.style.style.style.style.style', 'theme.styles = [Style("Theme.style'),
    ("return self.__hash__*self.__hash__*self.__hash__*self.__hash__*", "return self.__hash__*"),
    ("x = 1\n    pass\n    pass\n    pass\n    pass", "x = 1\n    pass"),
])
def test_a_loop_keeps_its_first_copy(text, kept):
    rules = StopRules(multiline="\n" in text)
    assert rules.cut(text) == (kept, "repetition")
    assert final_text(rules, text, "max_tokens", "") == kept
    assert StopRules.at_cursor("x = ", True, loops=False).cut(text)[1] != "repetition"  # --no-stop-loops


@pytest.mark.parametrize("text", [
    "node.parent.parent.parent",  # three copies
    "mask = 0xFFFFFFFF", "table = [0, 0, 0, 0, 0, 0, 0, 0]", "bits = 0x0f0f0f0f",  # one character, no letter, short
    'line = "-=-=-=-=-=-=-=-=-=-="', "\n" + " " * 40 + "x",
])
def test_repetition_that_code_has_is_no_loop(text):
    assert StopRules(multiline=True).cut(text)[1] != "repetition"
    assert StopRules(multiline=False).cut(text)[1] != "repetition"
