"""The generation engine on a tiny random model: a scripted logits processor makes the output exact."""

from __future__ import annotations

import threading

import pytest
import torch

from repocomplete.model_runtime.decoding import WORD_TAIL
from repocomplete.model_runtime.engine import CancelToken, CompletionRequest, Engine
from repocomplete.model_runtime.static_decode import StaticDecoder
from repocomplete.model_runtime.templates import PromptParts


class Script:
    """A logits processor that forces a token sequence (then EOS), and records what it saw."""

    def __init__(self, tokenizer, text: str, then=None):
        self.ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
        self.step = 0
        self.history_lengths: list[int] = []
        self.then = then

    def __call__(self, input_ids, scores):
        self.history_lengths.append(input_ids.shape[1])
        forced = torch.full_like(scores, float("-inf"))
        forced[0, self.ids[min(self.step, len(self.ids) - 1)]] = 0.0
        self.step += 1
        if self.then:
            self.then(self.step)
        return forced


@pytest.fixture
def engine(tiny_loaded, tiny_config):
    return Engine(tiny_loaded, tiny_config.replace(token_healing=False, max_new_tokens=32))


def run(engine, prefix, script=None, suffix="", **kw):
    processors = [script] if script else []
    return engine.complete(CompletionRequest(PromptParts(prefix, suffix), logits_processors=processors, **kw))


def test_single_line_stops_at_the_newline(engine, tokenizer):
    result = run(engine, "x = ", Script(tokenizer, "compute(1)\nmore()"))
    assert (result.text, result.stop_reason) == ("compute(1)", "newline")
    assert result.raw_text.startswith("compute(1)\n")


def test_eos_ends_the_completion(engine, tokenizer):
    result = run(engine, "x = ", Script(tokenizer, "42"))
    assert (result.text, result.stop_reason, result.generated_tokens) == ("42", "eos", 2)  # one token per digit


def test_multiline_stops_when_the_block_ends(engine, tokenizer):
    script = Script(tokenizer, "\n    a = 1\n    return a\ndef g():\n    pass")
    result = run(engine, "def f():", script, multiline=True)
    assert (result.text, result.stop_reason) == ("\n    a = 1\n    return a", "indent")


def test_multiline_stops_at_a_blank_line_pair(engine, tokenizer):
    script = Script(tokenizer, "a = 1\nb = 2\n\n\nc = 3")
    result = run(engine, "", script, multiline=True)
    assert (result.text, result.stop_reason) == ("a = 1\nb = 2", "blank_lines")


def test_max_tokens(engine, tokenizer):
    words = ["one", "two", "three", "four", "five", "six", "seven"] * 6
    result = run(engine, "x = ", Script(tokenizer, " ".join(words)), max_new_tokens=5)
    assert (result.stop_reason, result.generated_tokens, result.text) == ("max_tokens", 5, "one two three four five")


def test_the_limit_does_not_end_a_completion_inside_a_word(engine, tokenizer):
    """A limit that falls inside a name lets the word finish (up to WORD_TAIL tokens more); the token after the
    word is not kept."""
    text = "x = ColorType.TRUECOLOR)"
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = [tokenizer.decode(ids[:n]) for n in range(1, len(ids) + 1)]
    cut = next(n for n, piece in enumerate(pieces, start=1) if piece.startswith("x = ColorType.TR")
               and not piece.endswith("TRUECOLOR"))  # the limit ends mid-name
    result = run(engine, "y = ", Script(tokenizer, text), max_new_tokens=cut)
    assert (result.text, result.stop_reason) == ("x = ColorType.TRUECOLOR", "max_tokens")
    assert result.generated_tokens == pieces.index("x = ColorType.TRUECOLOR") + 1 > cut
    long_name = "_".join(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"])
    assert len(tokenizer.encode(long_name, add_special_tokens=False)) > 3 + WORD_TAIL
    result = run(engine, "y = ", Script(tokenizer, long_name + " + 1"), max_new_tokens=3)
    assert (result.stop_reason, result.generated_tokens) == ("max_tokens", 3 + WORD_TAIL)  # the tail is bounded


def test_a_loop_ends_the_completion_at_its_first_copy(engine, tokenizer, tiny_loaded):
    result = run(engine, "x = ", Script(tokenizer, "theme" + ".style" * 30), max_new_tokens=40)
    assert (result.stop_reason, result.text) == ("repetition", "theme.style")
    assert result.generated_tokens < 12  # it stopped at the fourth copy, not at the token limit
    engine = Engine(tiny_loaded, engine.config.replace(stop_loops=False))
    result = run(engine, "x = ", Script(tokenizer, "theme" + ".style" * 30), max_new_tokens=40)
    assert (result.stop_reason, result.generated_tokens) == ("max_tokens", 40)


def test_suffix_overlap_is_trimmed(engine, tokenizer):
    result = run(engine, "print(foo(", Script(tokenizer, "x))\n"), suffix="))\n")
    assert result.text == "x"


def test_processor_sees_the_growing_history(engine, tokenizer):
    script = Script(tokenizer, "a b c")
    result = run(engine, "start", script)
    n = result.prompt_tokens
    assert script.history_lengths == [n, n + 1, n + 2, n + 3]


def test_cancel_before_start(engine, tokenizer):
    token = CancelToken()
    token.cancel()
    result = run(engine, "x = ", Script(tokenizer, "1"), cancel=token)
    assert (result.text, result.stop_reason, result.generated_tokens) == ("", "cancelled", 0)


def test_cancel_from_another_thread_stops_the_loop(engine, tokenizer):
    token = CancelToken()

    def cancel_after_three(step):
        if step == 3:
            threading.Thread(target=token.cancel).start()
            threading.Event().wait(0.05)  # let the other thread set it before the engine checks

    script = Script(tokenizer, " ".join(["word"] * 30), then=cancel_after_three)
    result = run(engine, "x = ", script, cancel=token)
    assert (result.stop_reason, result.generated_tokens, result.text) == ("cancelled", 3, "")


def test_time_budget(tiny_loaded, tiny_config, tokenizer):
    engine = Engine(tiny_loaded, tiny_config.replace(token_healing=False, time_budget_s=0.0))
    result = run(engine, "x = ", Script(tokenizer, " ".join(["word"] * 30)))
    assert (result.stop_reason, result.generated_tokens) == ("time", 1)


def test_token_healing_backs_off_the_indentation_and_reproduces_it(tiny_loaded, tiny_config, tokenizer):
    engine = Engine(tiny_loaded, tiny_config.replace(token_healing=True, max_new_tokens=8))
    prefix = "def f(x):\n    "
    plain = Engine(tiny_loaded, tiny_config.replace(token_healing=False)).encode(PromptParts(prefix))[1].ids
    result = run(engine, prefix)
    assert result.healed == "\n    "
    assert result.prompt_tokens == len(plain) - 1  # the "\n    " token is backed off
    assert result.raw_text.startswith("\n    ")  # the constrained tokens re-produced it
    assert not result.text.startswith("\n")


def test_token_healing_inside_a_word(tiny_loaded, tiny_config, tokenizer):
    engine = Engine(tiny_loaded, tiny_config.replace(token_healing=True, max_new_tokens=6))
    # A scripted continuation that re-types the word in the natural split: " return" then " x".
    script = Script(tokenizer, " return x")
    result = run(engine, "def f(x):\n    retu", script)
    assert result.healed == "    retu"[-len(result.healed):] and result.healed.endswith("retu")
    assert result.text == "rn x"


def test_sampling_is_deterministic_for_a_seed(tiny_loaded, tiny_config):
    config = tiny_config.replace(temperature=0.9, top_p=0.9, top_k=50, seed=3, max_new_tokens=8)
    a = run(Engine(tiny_loaded, config), "import os\n")
    b = run(Engine(tiny_loaded, config), "import os\n")
    c = run(Engine(tiny_loaded, config.replace(seed=4)), "import os\n")
    assert a.raw_text == b.raw_text
    assert a.raw_text != c.raw_text


def test_batch_matches_one_by_one_in_input_order(tiny_loaded, tiny_config):
    config = tiny_config.replace(max_new_tokens=6)
    prefixes = ["def b():\n    ", "import os\n", "def a():\n    ", "class C:\n"]
    requests = [CompletionRequest(PromptParts(p), multiline=True) for p in prefixes]
    batched = Engine(tiny_loaded, config).complete_batch(requests)
    single = [Engine(tiny_loaded, config).complete(r) for r in requests]
    assert [r.raw_text for r in batched] == [r.raw_text for r in single]


def test_static_decode_step_matches_the_slab(tiny_loaded, tiny_config):
    """The static-shape step (run eagerly here; compiled in the benchmark) gives the slab path's logits."""
    engine = Engine(tiny_loaded, tiny_config)
    static = StaticDecoder(tiny_loaded.model, 64, tiny_loaded.device, tiny_loaded.dtype, compile=False)
    prompt = torch.randint(100, 20000, (20,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.inference_mode():
        engine.logits_for(prompt)
        static.begin(engine.slab)
        for token in (11, 12, 13):
            engine.slab.tokens.append(token)
            from repocomplete.model_runtime.engine import decode_one_token

            expected = decode_one_token(tiny_loaded.forward, engine.slab, token, tiny_loaded.device)
            torch.testing.assert_close(static.step(token), expected, rtol=1e-4, atol=1e-4)
    assert static.tokens == prompt + [11, 12, 13]


def test_compiled_decoding_keeps_its_artefacts_in_the_private_cache(tiny_loaded, tiny_config, monkeypatch, tmp_path):
    import os
    import stat

    import repocomplete.model_runtime.static_decode as static_decode

    made = []
    monkeypatch.setattr(static_decode, "StaticDecoder", lambda *a, **k: made.append(a) or object())
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")  # restored after the test, whatever the engine sets
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    config = tiny_config.replace(compile_decode=True, cache_dir=tmp_path / "cache")
    Engine(tiny_loaded, config)
    folder = tmp_path / "cache" / "inductor"
    assert made and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder)  # survives restarts: one compile
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_healing_never_indents_past_the_cursor(tokenizer):
    """Backed-off indentation is reproduced to the cursor's column: a longer run of spaces or tabs (a common
    token, "\\n" + 12 spaces) is not allowed, the exact run, shorter runs and " word" after them are."""
    from repocomplete.model_runtime.healing import VocabIndex

    vocab = VocabIndex(tokenizer)
    for remaining in ("\n        ", "        ", "\n    ", "\t"):
        longer = [t for t in vocab.starting_with(remaining) if vocab.texts[t][len(remaining):][:1] in (" ", "\t")]
        assert longer, remaining  # the vocabulary has such tokens: the rule has something to refuse
        allowed = {vocab.texts[t] for t in vocab.allowed(remaining)}
        assert not any(a.startswith(remaining) and a[len(remaining):][:1] in (" ", "\t") for a in allowed)
        assert any(remaining.startswith(a) for a in allowed)  # reproducing it stays possible
    # Not indentation: a token running on past the remaining text is allowed as before.
    assert "()" in {vocab.texts[t] for t in vocab.allowed("(")}


class Prefer:
    """A logits processor that strongly prefers tokens whose text starts (spaces aside) with `start`, without
    forbidding the others."""

    def __init__(self, tokenizer, start: str):
        from repocomplete.model_runtime.healing import VocabIndex

        texts = VocabIndex(tokenizer).texts
        self.ids = torch.tensor([i for i, t in enumerate(texts) if t.lstrip(" \t").startswith(start)])

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[0, self.ids] += 1000.0
        return scores


class PreferBlanks:
    """A logits processor that strongly prefers tokens made of spaces and tabs only, and never ends (the random
    model may pick one of its special tokens, all stop tokens)."""

    def __init__(self, tokenizer):
        from repocomplete.model_runtime.healing import VocabIndex

        texts = VocabIndex(tokenizer).texts
        self.ids = torch.tensor([i for i, t in enumerate(texts) if t and not t.strip(" \t")])
        self.specials = torch.tensor(sorted(tokenizer.added_tokens_decoder))

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[0, self.ids] += 1000.0
        scores[0, self.specials] = float("-inf")
        return scores


@pytest.mark.parametrize("healing", [False, True])
def test_a_completion_after_indentation_starts_at_the_cursors_column(tiny_loaded, tiny_config, tokenizer, healing):
    """On a line holding indentation only, the first generated character is not another blank (the embedded model
    answered 48 tokens of spaces on such lines); at column 0, or after code, blanks stay allowed."""
    blanks = PreferBlanks(tokenizer)
    engine = Engine(tiny_loaded, tiny_config.replace(max_new_tokens=4, token_healing=healing))
    indented = "def f(x):\n    y = x\n    "
    result = engine.complete(CompletionRequest(PromptParts(indented, "", "a.py"), logits_processors=[blanks]))
    body = result.raw_text.removeprefix(result.healed)
    assert body and body[0] not in " \t", result.raw_text
    for prefix in ("def f(x):\n", "y = x"):  # column 0; code before the cursor
        result = engine.complete(CompletionRequest(PromptParts(prefix, "", "a.py"), logits_processors=[blanks]))
        body = result.raw_text.removeprefix(result.healed)
        assert body[:1] in (" ", "\t"), (prefix, result.raw_text)


class PreferEnds:
    """A logits processor that strongly prefers the engine's stop tokens and the tokens that open with a line break:
    the model wants to leave the line empty."""

    def __init__(self, engine):
        blank, _ = engine.vocab.breaking("")
        self.ids = torch.tensor(sorted(set(blank) | engine.stop_ids))

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[0, self.ids] += 1000.0
        return scores


def test_a_single_line_completion_on_a_blank_line_is_not_empty(tiny_loaded, tiny_config):
    """Where the cursor's line has nothing on it, the model's end or line break would answer nothing (the shipped
    adapter did on 2-3 tasks in 50): until it has written code, neither is taken. After code, with text after the
    cursor on its line, or multi-line, an end stays the model's to choose."""
    engine = Engine(tiny_loaded, tiny_config.replace(max_new_tokens=4, token_healing=False))
    ends = PreferEnds(engine)
    for prefix, suffix in [("def f(x):\n    y = x\n    ", ""), ("def f(x):\n    y = x\n    ", "\n    return y"),
                           ("x = 1\n", "\ny = 2\n")]:
        result = engine.complete(CompletionRequest(PromptParts(prefix, suffix, "a.py"), logits_processors=[ends]))
        assert result.text.strip(), (prefix, suffix, result)
    for prefix, suffix, multiline in [("def f(x):\n    y = x", "", False), ("def f(x):\n    ", "y = x", False),
                                      ("def f(x):\n    y = x\n    ", "", True)]:
        result = engine.complete(CompletionRequest(PromptParts(prefix, suffix, "a.py"), logits_processors=[ends],
                                                   multiline=multiline))
        assert not result.text.strip(), (prefix, suffix, multiline, result)


@pytest.mark.parametrize("path,comment", [("a.py", "#"), ("a.ts", "//")])
def test_a_single_line_completion_on_an_empty_line_writes_code_not_a_comment(tiny_loaded, tiny_config, tokenizer,
                                                                             path, comment):
    prefix = "def f(x):\n    y = x\n    "
    prefer = Prefer(tokenizer, comment[0])
    base = tiny_config.replace(max_new_tokens=4, token_healing=False)  # (healing would pick the random first token)
    on = Engine(tiny_loaded, base)
    result = on.complete(CompletionRequest(PromptParts(prefix, "", path), logits_processors=[prefer]))
    assert not result.raw_text.lstrip(" \t").startswith(comment)  # (something else; random weights: anything)
    if comment == "#":  # code first (a blank line's completion does not end empty either), a comment after it at most
        assert result.raw_text.split("#")[0].strip(), result.raw_text
    # Asked for, or where the line has code already, or in a block: the comment comes.
    allowed = Engine(tiny_loaded, base.replace(suggest_comments=True))
    result = allowed.complete(CompletionRequest(PromptParts(prefix, "", path), logits_processors=[prefer]))
    assert result.text.lstrip().startswith(comment[0])
    result = on.complete(CompletionRequest(PromptParts(prefix + "y = 1 ", "", path), logits_processors=[prefer]))
    assert result.text.lstrip().startswith(comment[0])
    result = on.complete(CompletionRequest(PromptParts(prefix, "", path), logits_processors=[prefer], multiline=True))
    assert result.text.lstrip().startswith(comment[0])
    # A language whose comment syntax is not known: no rule.
    result = on.complete(CompletionRequest(PromptParts(prefix, "", "notes.unknown"), logits_processors=[prefer]))
    assert result.text.lstrip().startswith(comment[0])


class PreferBreaks:
    """A logits processor that strongly prefers tokens that break the line."""

    def __init__(self, tokenizer):
        from repocomplete.model_runtime.healing import VocabIndex

        texts = VocabIndex(tokenizer).texts
        self.ids = torch.tensor([i for i, t in enumerate(texts) if "\n" in t])

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[0, self.ids] += 1000.0
        return scores


def test_the_vocabulary_s_line_breaks_after_blanks_and_after_openers(tokenizer):
    from repocomplete.model_runtime.healing import VocabIndex

    vocab = VocabIndex(tokenizer)
    blank, opening = vocab.breaking("([")
    texts = [vocab.texts[i] for i in blank]
    assert "\n" in texts and "\n    " in texts and all(not t.split("\n")[0].strip() for t in texts)
    assert all(vocab.texts[i].split("\n")[0].rstrip(" \t")[-1] in "([" for i in opening)
    # SmolLM2's pre-tokenizer keeps line breaks apart from code: no token holds an opener and a break.
    assert opening == [i for i, t in enumerate(vocab.texts) if "\n" in t and t.split("\n")[0].rstrip(" \t")[-1:] in "(["
                       and t.split("\n")[0].strip()] == []


@pytest.mark.parametrize("healing", [False, True])
def test_a_single_line_completion_does_not_end_on_an_open_bracket(tiny_loaded, tiny_config, tokenizer, healing):
    """`table.add_row(` alone completes nothing: where the line ends with an opener, the line does not break there;
    after any other character it may (the model's line ends), and a multi-line completion is not constrained."""
    breaks = PreferBreaks(tokenizer)
    engine = Engine(tiny_loaded, tiny_config.replace(max_new_tokens=4, token_healing=healing))
    for prefix in ("def f(table):\n    table.add_row(", "def f(table):\n    x = [", "def f(t):\n    return {"):
        result = engine.complete(CompletionRequest(PromptParts(prefix, "", "a.py"), logits_processors=[breaks]))
        assert not result.raw_text.removeprefix(result.healed).startswith(("\n", " \n")), (prefix, result.raw_text)
    # After other text the line may end; in a brace language `{` opens a block (a complete line); multi-line is free.
    for prefix, path, multiline in (("def f(table):\n    table.add_row(x)", "a.py", False),
                                    ("function f() {", "a.ts", False),
                                    ("def f(table):\n    table.add_row(", "a.py", True)):
        result = engine.complete(CompletionRequest(PromptParts(prefix, "", path), logits_processors=[breaks],
                                                   multiline=multiline))
        assert "\n" in result.raw_text.removeprefix(result.healed), (prefix, result.raw_text)


class Weights:
    """A logits processor that sets fixed probabilities on some tokens (the rest get none)."""

    def __init__(self, probabilities: dict[int, float]):
        self.probabilities = probabilities

    def __call__(self, input_ids, scores):
        out = torch.full_like(scores, float("-inf"))
        for token, p in self.probabilities.items():
            out[0, token] = float(torch.tensor(p).log())
        return out


def test_every_special_token_stops(engine, tokenizer):
    """`<gh_stars>` and `<jupyter_code>` are in no template's stop list: special tokens stop all the same, none
    reaches the text (the shipped adapter's end came out as any of SmolLM2's unused specials)."""
    x = tokenizer.encode("x", add_special_tokens=False)[0]
    for special in ("<gh_stars>", "<jupyter_code>", "<empty_output>"):
        token = tokenizer.convert_tokens_to_ids(special)
        result = run(engine, "y = ", Weights({x: 0.3, token: 0.4}))
        assert (result.text, result.stop_reason, result.generated_tokens) == ("", "stop_token", 0), special
        assert token in engine.stop_ids
    comma = tokenizer.encode(",", add_special_tokens=False)[0]
    result = run(engine, "y = ", Weights({comma: 0.5, tokenizer.convert_tokens_to_ids("<gh_stars>"): 0.4}),
                 max_new_tokens=3)
    assert (result.text, result.stop_reason) == (",,,", "max_tokens")


def test_control_character_tokens_are_never_written(engine, tokenizer):
    """A NUL byte (the shipped adapter wrote `wait()\\x00from __future__:`) or an escape is no source code."""
    nul, esc = (tokenizer.encode(c, add_special_tokens=False)[0] for c in ("\x00", "\x1b"))
    plus = tokenizer.encode("+", add_special_tokens=False)[0]
    result = run(engine, "y = ", Weights({nul: 0.5, esc: 0.3, plus: 0.2}), max_new_tokens=2)
    assert result.text == "++"


def test_own_unclosed_counts_the_completion_s_brackets_outside_strings_and_comments():
    from repocomplete.model_runtime.decoding import own_unclosed

    assert own_unclosed("    x = f(a, g(", 4) == "))"
    assert own_unclosed("    x = f(a, g(", 10) == ")"  # `f(` was there before the completion: not its own
    assert own_unclosed("x = {k: [f(", 0) == ")]}"
    assert own_unclosed("f(a)[0].g()", 0) == ""
    assert own_unclosed("a) + b(", 0) == ")"  # a closer of the text before the line is set aside
    assert own_unclosed('x = f("(", ', 0) == ")"  # brackets in strings do not count
    assert own_unclosed("x = f(')', ", 0) == ")"
    assert own_unclosed('x = f("a\\"(")', 0) == ""  # an escaped quote does not end the string
    assert own_unclosed('x = f("abc(', 0) is None  # inside a string: nothing to close
    assert own_unclosed('x = f("""abc', 0) is None
    assert own_unclosed("x = f(  # (", 0, "#") is None  # inside a comment
    assert own_unclosed("x = f(`)`", 0, None, "'\"`") == ")"
    assert own_unclosed("if (ok) {", 0, "//", "'\"`", "([") == ""  # a brace language's `{` opens a block
    assert own_unclosed("if (f({", 0, "//", "'\"`", "([") == "))"


def test_closing_turns_an_end_into_the_closer_only_while_an_own_bracket_is_open():
    from repocomplete.model_runtime.decoding import Closing

    inf = float("-inf")
    rule = Closing("    x = ", "", torch.tensor([1, 2]), {")": 3, "]": 4}, "#", "'\"")
    logits = torch.tensor([0.0, 2.0, 1.0, -1.0, -3.0])
    assert rule.apply(logits, "f(").tolist() == [0.0, inf, inf, 2.0, -3.0]  # the end's chance goes to `)`
    assert rule.apply(logits, "f(a[").tolist() == [0.0, inf, inf, -1.0, 2.0]  # the innermost first
    assert rule.apply(torch.tensor([3.0, 0.0, 1.0, 2.0, 0.0]), "f(").tolist() == [3.0, inf, inf, 2.0, 0.0]
    for text in ("f()", "f", 'f("(', "f(  # (", "f(\n"):
        assert rule.apply(logits, text).tolist() == logits.tolist(), text
    assert rule.apply(logits, "if (a == b:").equal(logits)  # a header's end: `:)` is no code
    for text in ("f(a and", "f(a +", "f(a,", "f(a.", "f(not"):  # an operand is missing: the line goes on below
        assert rule.apply(logits, text).equal(logits), text
    for text in ("f(a", "f(a[0]", "f('a'", "f(1", "f(g()", "f(self.x_1"):
        assert rule.apply(logits, text).tolist()[3] == 2.0, text
    assert rule.apply(logits, "x[1:").tolist()[4] == 2.0  # a slice closes
    # an import list goes on below (`from m import ()` is no Python)
    assert Closing("    ", "", torch.tensor([1, 2]), {")": 3}, "#", "'").apply(logits, "from m import (").equal(logits)
    assert Closing("x = f(", "", torch.tensor([1, 2]), {")": 3}, "#", "'").apply(logits, "a").equal(logits)
    # healing's text is the user's: `f(` backed off and written again is not the completion's bracket
    healed = Closing("x = ", "f(", torch.tensor([1, 2]), {")": 3}, "#", "'")
    assert healed.apply(logits, "f(").equal(logits) and healed.apply(logits, "f(g(").tolist()[3] == 2.0


class EndsAfter:
    """Forces `text`, then prefers ending (EOS 0.6) over `x` (0.3) and `)` (0.1)."""

    def __init__(self, tokenizer, text: str):
        self.ids = tokenizer.encode(text, add_special_tokens=False)
        self.eos = tokenizer.eos_token_id
        self.x, self.close = (tokenizer.encode(c, add_special_tokens=False)[0] for c in ("x", ")"))
        self.step = 0

    def __call__(self, input_ids, scores):
        out = torch.full_like(scores, float("-inf"))
        if self.step < len(self.ids):
            out[0, self.ids[self.step]] = 0.0
        else:
            for token, p in ((self.eos, 0.6), (self.x, 0.3), (self.close, 0.1)):
                out[0, token] = float(torch.tensor(p).log())
        self.step += 1
        return out


def test_a_completion_at_the_line_s_end_closes_its_bracket_where_it_would_end(engine, tokenizer):
    """`create_task_group(` and an end: the end became `)`; after it, ending is the model's choice again."""
    result = run(engine, "x = ", EndsAfter(tokenizer, "f("))
    assert (result.text, result.stop_reason) == ("f()", "eos")
    result = run(engine, "x = ", EndsAfter(tokenizer, "f(g([a"))
    assert (result.text, result.stop_reason) == ("f(g([a]))", "eos")
    # The editor's auto-closed `)` after the cursor, a multi-line completion, a bracket opened before the cursor,
    # and a bracket in a string literal: ends as the model chose.
    assert run(engine, "x = ", EndsAfter(tokenizer, "f("), suffix=")\n").text == "f("
    assert run(engine, "x = ", EndsAfter(tokenizer, "f("), multiline=True).text == "f("
    assert run(engine, "x = f(", EndsAfter(tokenizer, "a")).text == "a"
    assert run(engine, "x = ", EndsAfter(tokenizer, 'f("(')).text == 'f("('
    # In a brace language a line that ends with `{` opens a block: complete as it is.
    brace = engine.complete(CompletionRequest(PromptParts("", "\n", "a.ts"), logits_processors=[
        EndsAfter(tokenizer, "if (ok) {")]))
    assert brace.text == "if (ok) {"
    brace = engine.complete(CompletionRequest(PromptParts("", "\n", "a.ts"), logits_processors=[
        EndsAfter(tokenizer, "if (ok")]))
    assert brace.text == "if (ok)"


def test_dangling_bans_breaks_after_an_opener_and_never_leaves_nothing():
    from repocomplete.model_runtime.decoding import Dangling

    rule = Dangling("    x = ", "([", torch.tensor([1]), torch.tensor([2]))
    inf = float("-inf")
    assert rule.apply(torch.zeros(4), "f(").tolist() == [0.0, inf, inf, 0.0]  # after `(`: no break at all
    assert rule.apply(torch.zeros(4), "f(a").tolist() == [0.0, 0.0, inf, 0.0]  # `(\n` tokens: never
    assert rule.apply(torch.zeros(4), "f(a)  ").tolist() == [0.0, 0.0, inf, 0.0]
    assert Dangling("x = [", "([", torch.tensor([1]), torch.tensor([2])).apply(torch.zeros(4), "").tolist()[1] == inf
    only_breaks = torch.tensor([inf, 0.0, 0.0])
    assert rule.apply(only_breaks, "f(").tolist() == only_breaks.tolist()  # nothing left: the rule yields
