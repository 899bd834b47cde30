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
    "plain-suffix": (
        "# The code after the cursor:\n#\n# print(f(1))\n# The code up to the cursor:\ndef f(x):\n    return ",
        None,
    ),
    "smollm2-fim": (
        "<issue_start>def f(x):\n    return <issue_comment>\nprint(f(1))\n<issue_closed>",
        "<issue_start><issue_comment>\nprint(f(1))\n<issue_closed>def f(x):\n    return ",
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
    "plain-suffix": (
        "# Path: util.py\n# def g():\n#     pass\n\n"
        "-- Path: lib/helpers.lua\n-- local x = 1\n--\n-- return x\n\n"
        "# The code after the cursor:\n#\n# print(f(1))\n# The code up to the cursor:\n"
        "# Path: main.py\ndef f(x):\n    return ",
        None,
    ),
    "smollm2-fim": (
        "<repo_name>acme/widgets\n"
        "<filename>util.py\ndef g():\n    pass\n<file_sep>"
        "<filename>lib/helpers.lua\nlocal x = 1\n\nreturn x<file_sep>"
        "<filename>main.py\n<issue_start>def f(x):\n    return <issue_comment>\nprint(f(1))\n<issue_closed>",
        "<repo_name>acme/widgets\n"
        "<filename>util.py\ndef g():\n    pass\n<file_sep>"
        "<filename>lib/helpers.lua\nlocal x = 1\n\nreturn x<file_sep>"
        "<filename>main.py\n<issue_start><issue_comment>\nprint(f(1))\n<issue_closed>def f(x):\n    return ",
    ),
}


def test_every_template_has_expectations():
    assert list(TEMPLATES) == ["qwen2.5-coder", "codegemma", "starcoder", "deepseek-coder", "codellama", "plain",
                              "plain-suffix", "smollm2-fim"]
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
        "unknown FIM template 'gpt-9'; known: qwen2.5-coder, codegemma, starcoder, deepseek-coder, codellama, plain, "
        "plain-suffix, smollm2-fim"
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


# -- SmolLM2's FIM template (unused special tokens as sentinels) and its selection by an adapter --------------


def test_smollm2_fim_sentinels_are_single_unused_special_tokens(tokenizer):
    from repocomplete.model_runtime.templates import SMOLLM2_FIM, end_token

    vocab = tokenizer.get_vocab()
    ids = {role: vocab[token] for role, token in SMOLLM2_FIM.items()}
    assert ids == {"prefix": 8, "suffix": 9, "middle": 10, "end": 16, "file": 6, "file_sep": 5, "repo": 3}
    template = get_template("smollm2-fim")
    assert end_token(template) == "<empty_output>"
    # Never detected: the tokens are in the base model too, untrained.
    assert detect_template(vocab).name == "plain"
    for token in SMOLLM2_FIM.values():
        assert _enc(tokenizer, token) == [vocab[token]]


def test_smollm2_fim_splits_sentinel_strings_in_user_text(tokenizer):
    template = get_template("smollm2-fim")
    prefix = "s = '<issue_closed>'\nx = "
    parts = PromptParts(prefix=prefix, suffix="<empty_output>\n", path="m.py", repo_name="r",
                        context=[ContextItem("a.py", "t = '<file_sep><issue_start>'\n")])
    prompt, encoded = encode_prompt(tokenizer, template, parts, "spm")
    assert prompt == ("<repo_name>r\n<filename>a.py\nt = '<file_sep><issue_start>'\n<file_sep>"
                      "<filename>m.py\n<issue_start><issue_comment><empty_output>\n<issue_closed>s = '<issue_closed>'\nx = ")
    ids = encoded.ids
    # From the template only: <repo_name>, <filename> twice, <file_sep>, <issue_start>, <issue_comment>, <issue_closed>.
    assert [ids.count(i) for i in (3, 6, 5, 8, 9, 10, 16)] == [1, 2, 1, 1, 1, 1, 0]
    assert encoded.prefix_end == len(ids)
    assert ids[-len(_enc(tokenizer, prefix, split=True)):] == _enc(tokenizer, prefix, split=True)
    assert tokenizer.decode(ids) == prompt


def test_plain_suffix_shows_eight_lines_after_the_cursor_and_nothing_when_blank(tokenizer):
    from repocomplete.model_runtime.templates import SUFFIX_BLOCK_LINES, model_view

    template = get_template("plain-suffix")
    suffix = ")\n" + "".join(f"line{i}\n" for i in range(20))
    parts = PromptParts(prefix="f(a", suffix=suffix, path="m.py")
    shown = [f"# line{i}" for i in range(SUFFIX_BLOCK_LINES - 1)]
    assert SUFFIX_BLOCK_LINES == 8
    assert render(template, model_view(template, parts)) == (
        "# The code after the cursor:\n# )\n" + "\n".join(shown) + "\n# The code up to the cursor:\nf(a")
    assert render(template, PromptParts(prefix="x = 1\n", suffix="\n  \n\n", path="m.py")) == "x = 1\n"
    # Encoded, the block is user text: a sentinel string in the suffix stays split.
    prompt, encoded = encode_prompt(tokenizer, template, PromptParts("x", "<file_sep>", "m.py"), "psm")
    assert prompt == "# The code after the cursor:\n# <file_sep>\n# The code up to the cursor:\nx"
    assert 5 not in encoded.ids and tokenizer.decode(encoded.ids) == prompt


def _fake_adapter(path, template="smollm2-fim", order="spm"):
    from repocomplete.model_runtime.adapters import AdapterRecord, write_record

    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text("{}")
    write_record(path, AdapterRecord(template, order))
    return path


def test_an_adapters_record_selects_its_template(tokenizer, tmp_path):
    from repocomplete.model_runtime.config import RuntimeConfig
    from repocomplete.model_runtime.engine import prompt_format

    adapter = _fake_adapter(tmp_path / "fim")
    assert prompt_format(tokenizer, RuntimeConfig(adapter=str(adapter))) == (TEMPLATES["smollm2-fim"], "spm")
    # The base model, an adapter without a record and "none" keep detection's plain template.
    assert prompt_format(tokenizer, RuntimeConfig(adapter="none"))[0].name == "plain"
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "adapter_config.json").write_text("{}")
    assert prompt_format(tokenizer, RuntimeConfig(adapter=str(bare)))[0].name == "plain"
    # --fim-template and --fim-order still win.
    forced = RuntimeConfig(adapter=str(adapter), fim_template="plain-suffix")
    assert prompt_format(tokenizer, forced)[0].name == "plain-suffix"
    assert prompt_format(tokenizer, RuntimeConfig(adapter=str(adapter), fim_order="psm"))[1] == "psm"


def test_the_shipped_adapter_is_the_embedded_models_default_and_none_turns_it_off(tmp_path, monkeypatch):
    from repocomplete.model_runtime import adapters

    monkeypatch.setattr(adapters, "SHIPPED_DIR", tmp_path / "nothing-shipped")
    assert adapters.resolve_adapter("default", None) is None
    shipped = _fake_adapter(tmp_path / "shipped")
    monkeypatch.setattr(adapters, "SHIPPED_DIR", shipped)
    assert adapters.resolve_adapter("default", None) == str(shipped)
    assert adapters.resolve_adapter("default", "none") is None
    assert adapters.resolve_adapter("default", "/x/lora") == "/x/lora"
    assert adapters.resolve_adapter("/models/other", None) is None  # another model has no default adapter
