"""FIM templates: the exact prompt text of every family, template detection, and prompt encoding."""

from __future__ import annotations

import pytest

from repocomplete.model_runtime.errors import ConfigError
from repocomplete.model_runtime.engine import encode_prompt
from repocomplete.model_runtime.templates import (
    TEMPLATES,
    ContextItem,
    PromptParts,
    comment_prefix,
    context_text,
    detect_template,
    get_template,
    render,
)

PREFIX = "def f(x):\n    return "
SUFFIX = "\nprint(f(1))\n"
CONTEXT = [
    ContextItem("util.py", "def g():\n    pass\n"),
    ContextItem("lib/helpers.lua", "local x = 1\n\nreturn x"),
]


def file_parts() -> PromptParts:
    return PromptParts(prefix=PREFIX, suffix=SUFFIX, path="main.py")


def repo_parts() -> PromptParts:
    return PromptParts(prefix=PREFIX, suffix=SUFFIX, path="main.py", context=list(CONTEXT), repo_name="acme/widgets")


# Hand-written expectations: (psm, spm or None where the family has no SPM).
EXPECTED_FILE = {
    "qwen2.5-coder": (
        "<|fim_prefix|>def f(x):\n    return <|fim_suffix|>\nprint(f(1))\n<|fim_middle|>",
        None,
    ),
    "codegemma": (
        "<|fim_prefix|>def f(x):\n    return <|fim_suffix|>\nprint(f(1))\n<|fim_middle|>",
        "<|fim_suffix|>\nprint(f(1))\n<|fim_prefix|>def f(x):\n    return <|fim_middle|>",
    ),
    "starcoder": (
        "<fim_prefix>def f(x):\n    return <fim_suffix>\nprint(f(1))\n<fim_middle>",
        "<fim_prefix><fim_suffix>\nprint(f(1))\n<fim_middle>def f(x):\n    return ",
    ),
    "deepseek-coder": (
        "<｜fim▁begin｜>def f(x):\n    return <｜fim▁hole｜>\nprint(f(1))\n<｜fim▁end｜>",
        None,
    ),
    "codellama": (
        "<PRE> def f(x):\n    return  <SUF>\nprint(f(1))\n <MID>",
        "<PRE> <SUF>\nprint(f(1))\n <MID> def f(x):\n    return ",
    ),
    "plain": (
        "def f(x):\n    return ",
        None,
    ),
}

EXPECTED_REPO = {
    "qwen2.5-coder": (
        "<|repo_name|>acme/widgets\n"
        "<|file_sep|>util.py\ndef g():\n    pass\n\n"
        "<|file_sep|>lib/helpers.lua\nlocal x = 1\n\nreturn x\n"
        "<|file_sep|>main.py\n<|fim_prefix|>def f(x):\n    return <|fim_suffix|>\nprint(f(1))\n<|fim_middle|>",
        None,
    ),
    "codegemma": (
        "util.py\ndef g():\n    pass\n\n<|file_separator|>"
        "lib/helpers.lua\nlocal x = 1\n\nreturn x\n<|file_separator|>"
        "main.py\n<|fim_prefix|>def f(x):\n    return <|fim_suffix|>\nprint(f(1))\n<|fim_middle|>",
        "util.py\ndef g():\n    pass\n\n<|file_separator|>"
        "lib/helpers.lua\nlocal x = 1\n\nreturn x\n<|file_separator|>"
        "main.py\n<|fim_suffix|>\nprint(f(1))\n<|fim_prefix|>def f(x):\n    return <|fim_middle|>",
    ),
    "starcoder": (
        "<repo_name>acme/widgets"
        "<file_sep>util.py\ndef g():\n    pass\n"
        "<file_sep>lib/helpers.lua\nlocal x = 1\n\nreturn x"
        "<file_sep><fim_prefix>main.py\ndef f(x):\n    return <fim_suffix>\nprint(f(1))\n<fim_middle>",
        "<repo_name>acme/widgets"
        "<file_sep>util.py\ndef g():\n    pass\n"
        "<file_sep>lib/helpers.lua\nlocal x = 1\n\nreturn x"
        "<file_sep><fim_prefix>main.py\n<fim_suffix>\nprint(f(1))\n<fim_middle>def f(x):\n    return ",
    ),
    "deepseek-coder": (
        "# util.py\ndef g():\n    pass\n\n"
        "# lib/helpers.lua\nlocal x = 1\n\nreturn x\n"
        "# main.py\n<｜fim▁begin｜>def f(x):\n    return <｜fim▁hole｜>\nprint(f(1))\n<｜fim▁end｜>",
        None,
    ),
    "codellama": (
        "# util.py\n# def g():\n#     pass\n\n"
        "-- lib/helpers.lua\n-- local x = 1\n--\n-- return x\n\n"
        "<PRE> # main.py\ndef f(x):\n    return  <SUF>\nprint(f(1))\n <MID>",
        "# util.py\n# def g():\n#     pass\n\n"
        "-- lib/helpers.lua\n-- local x = 1\n--\n-- return x\n\n"
        "<PRE> <SUF>\nprint(f(1))\n <MID> # main.py\ndef f(x):\n    return ",
    ),
    "plain": (
        "# Path: util.py\n# def g():\n#     pass\n\n"
        "-- Path: lib/helpers.lua\n-- local x = 1\n--\n-- return x\n\n"
        "# Path: main.py\ndef f(x):\n    return ",
        None,
    ),
}


def test_every_template_has_expectations():
    assert list(TEMPLATES) == ["qwen2.5-coder", "codegemma", "starcoder", "deepseek-coder", "codellama", "plain"]
    assert set(EXPECTED_FILE) == set(TEMPLATES) == set(EXPECTED_REPO)


@pytest.mark.parametrize("name", list(EXPECTED_FILE))
def test_render_current_file_psm_and_spm(name):
    template = get_template(name)
    psm, spm = EXPECTED_FILE[name]
    assert render(template, file_parts(), "psm") == psm
    assert template.supports_spm is (spm is not None)
    # Without SPM the family falls back to the PSM string.
    assert render(template, file_parts(), "spm") == (spm if spm is not None else psm)
    assert render(template, file_parts()) == psm  # psm is the default order


@pytest.mark.parametrize("name", list(EXPECTED_REPO))
def test_render_repository_level(name):
    template = get_template(name)
    psm, spm = EXPECTED_REPO[name]
    assert render(template, repo_parts(), "psm") == psm
    assert render(template, repo_parts(), "spm") == (spm if spm is not None else psm)


def test_render_repo_name_alone_switches_to_repository_form():
    parts = PromptParts(prefix="x = ", suffix="", path="m.py", repo_name="r")
    assert render(get_template("qwen2.5-coder"), parts) == (
        "<|repo_name|>r\n<|file_sep|>m.py\n<|fim_prefix|>x = <|fim_suffix|><|fim_middle|>"
    )
    assert render(get_template("starcoder"), parts) == "<repo_name>r<file_sep><fim_prefix>m.py\nx = <fim_suffix><fim_middle>"


def test_render_keeps_braces_in_user_text():
    parts = PromptParts(prefix="d = {'a': {x}", suffix="}\n", path="m.py")
    assert render(get_template("starcoder"), parts) == "<fim_prefix>d = {'a': {x}<fim_suffix>}\n<fim_middle>"


def test_render_rejects_unknown_order():
    with pytest.raises(ValueError) as e:
        render(get_template("plain"), file_parts(), "mps")
    assert str(e.value) == "order must be 'psm' or 'spm', got 'mps'"


# -- detection ------------------------------------------------------------------------------------------------

QWEN_VOCAB = {"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
              "<|endoftext|>", "def"}
CODEGEMMA_VOCAB = {"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_separator|>", "<eos>", "def"}
STARCODER_VOCAB = {"<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>", "<file_sep>", "<repo_name>",
                   "<|endoftext|>"}
DEEPSEEK_VOCAB = {"<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<｜end▁of▁sentence｜>"}
CODELLAMA_VOCAB = {"<s>", "</s>", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"}


@pytest.mark.parametrize(
    "vocab, expected",
    [
        (QWEN_VOCAB, "qwen2.5-coder"),
        (CODEGEMMA_VOCAB, "codegemma"),
        (STARCODER_VOCAB, "starcoder"),
        (DEEPSEEK_VOCAB, "deepseek-coder"),
        (CODELLAMA_VOCAB, "codellama"),
        ({"<s>", "</s>", "<|endoftext|>", "hello"}, "plain"),
        (set(), "plain"),
        # Every detect token must be present: two of three is not enough.
        ({"<fim_prefix>", "<fim_suffix>"}, "plain"),
        # CodeLlama's sentinels carry the SentencePiece space; bare "<PRE>" is not the family.
        ({"<PRE>", "<SUF>", "<MID>"}, "plain"),
    ],
)
def test_detect_template(vocab, expected):
    assert detect_template(vocab).name == expected


def test_detect_template_accepts_a_vocab_dict():
    vocab = {token: i for i, token in enumerate(sorted(STARCODER_VOCAB))}
    assert detect_template(vocab).name == "starcoder"


def test_qwen_and_codegemma_are_told_apart():
    # Both have <|fim_prefix|> <|fim_suffix|> <|fim_middle|>; the repository tokens decide.
    assert detect_template(QWEN_VOCAB) is TEMPLATES["qwen2.5-coder"]
    assert detect_template(CODEGEMMA_VOCAB) is TEMPLATES["codegemma"]
    assert "<|file_separator|>" not in QWEN_VOCAB and "<|repo_name|>" not in CODEGEMMA_VOCAB


def test_detect_template_on_smollm2_is_plain(tokenizer):
    vocab = tokenizer.get_vocab()
    # SmolLM2 has StarCoder's repository tokens but no FIM tokens.
    assert vocab["<file_sep>"] == 5 and vocab["<repo_name>"] == 3 and "<fim_prefix>" not in vocab
    assert detect_template(vocab).name == "plain"


def test_get_template_unknown_name():
    with pytest.raises(ConfigError) as e:
        get_template("gpt-9")
    assert str(e.value) == (
        "unknown FIM template 'gpt-9'; known: qwen2.5-coder, codegemma, starcoder, deepseek-coder, codellama, plain"
    )
    assert isinstance(e.value, ValueError)


# -- comments -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, expected",
    [("a.py", "#"), ("pkg/mod.PY", "#"), ("init.lua", "--"), ("app.js", "//"), ("Makefile", "//"), ("q.sql", "--")],
)
def test_comment_prefix(path, expected):
    assert comment_prefix(path) == expected


def test_context_text_comments_every_line_for_comment_context_templates():
    item = ContextItem("src/app.js", "function a() {\n\n  return 1;\n}\n")
    expected = "// function a() {\n//\n//   return 1;\n// }"
    assert context_text(TEMPLATES["codellama"], item) == expected
    assert context_text(TEMPLATES["plain"], item) == expected
    assert context_text(TEMPLATES["plain"], ContextItem("a.py", "x = 1")) == "# x = 1"
    # Templates that show context as code keep it verbatim.
    for name in ("qwen2.5-coder", "codegemma", "starcoder", "deepseek-coder"):
        assert context_text(TEMPLATES[name], item) == item.text


# -- encoding -------------------------------------------------------------------------------------------------


def _enc(tokenizer, text: str, split: bool = False) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=split)


def test_encode_prompt_special_tokens_only_from_the_template(tokenizer):
    template = get_template("starcoder")
    prefix = "s = '<file_sep>'\nx = "
    parts = PromptParts(
        prefix=prefix,
        suffix="\n",
        path="main.py",
        context=[ContextItem("a.py", "t = '<repo_name>'\n")],
        repo_name="demo",
    )
    prompt, encoded = encode_prompt(tokenizer, template, parts, "psm")
    assert prompt == (
        "<repo_name>demo<file_sep>a.py\nt = '<repo_name>'\n"
        "<file_sep><fim_prefix>main.py\ns = '<file_sep>'\nx = <fim_suffix>\n<fim_middle>"
    )
    ids = encoded.ids
    # Template sentinels in the vocabulary are single ids: <repo_name> (3) once, <file_sep> (5) twice.
    assert ids[0] == 3
    assert ids.count(3) == 1
    assert ids.count(5) == 2
    # The user's literal "<file_sep>" / "<repo_name>" is split into ordinary tokens.
    user_prefix = _enc(tokenizer, prefix, split=True)
    assert 5 not in user_prefix and len(user_prefix) > 3
    assert _enc(tokenizer, prefix) != user_prefix  # without splitting it would have been the special id
    expected = (
        [3] + _enc(tokenizer, "demo") + [5] + _enc(tokenizer, "a.py\n")
        + _enc(tokenizer, "t = '<repo_name>'\n", split=True)
        + [5] + _enc(tokenizer, "<fim_prefix>main.py\n")
        + user_prefix
        + _enc(tokenizer, "<fim_suffix>") + _enc(tokenizer, "\n", split=True) + _enc(tokenizer, "<fim_middle>")
    )
    assert ids == expected
    # prefix_end points just past the prefix's tokens.
    assert ids[encoded.prefix_end - len(user_prefix) : encoded.prefix_end] == user_prefix
    assert ids[encoded.prefix_end :] == _enc(tokenizer, "<fim_suffix>\n<fim_middle>")
    assert tokenizer.decode(ids) == prompt


def test_encode_prompt_spm_prefix_is_last(tokenizer):
    template = get_template("starcoder")
    parts = PromptParts(prefix="y = '<file_sep>'", suffix=")\n", path="m.py", repo_name="r")
    prompt, encoded = encode_prompt(tokenizer, template, parts, "spm")
    assert prompt == "<repo_name>r<file_sep><fim_prefix>m.py\n<fim_suffix>)\n<fim_middle>y = '<file_sep>'"
    assert encoded.prefix_end == len(encoded.ids)
    assert encoded.ids[:2] == [3] + _enc(tokenizer, "r")
    assert encoded.ids.count(5) == 1
    assert encoded.ids[-len(_enc(tokenizer, "y = '<file_sep>'", split=True)) :] == _enc(
        tokenizer, "y = '<file_sep>'", split=True
    )
    assert tokenizer.decode(encoded.ids) == prompt


def test_encode_prompt_plain_commented_context(tokenizer):
    template = get_template("plain")
    parts = PromptParts(prefix="import os\n", path="m.py", context=[ContextItem("u.py", "a = 1\n")])
    prompt, encoded = encode_prompt(tokenizer, template, parts, "psm")
    assert prompt == "# Path: u.py\n# a = 1\n\n# Path: m.py\nimport os\n"
    assert tokenizer.decode(encoded.ids) == prompt
    assert encoded.prefix_end == len(encoded.ids)
