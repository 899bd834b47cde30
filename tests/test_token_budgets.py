"""Budgets are the model's tokens: the packer fills them exactly as the prompt counts, the estimate without a
tokenizer is calibrated, and the context gives way to the current file's window within the model's window."""

from __future__ import annotations

import json
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import make_tiny_model_dir
from helpers import write_tree
from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.engine import ContextEngine
from repocomplete.context_engine.packing import approx_tokens, pack, truncate
from repocomplete.context_engine.records import ContextRecord
from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.model_runtime.engine import Engine
from repocomplete.model_runtime.errors import ModelLoadError
from repocomplete.model_runtime.loading import embedded_gguf_path, load_model
from repocomplete.model_runtime.templates import PromptParts
from repocomplete.model_runtime.tokens import prompt_limit

from repocomplete.pipeline import BUDGET_STEP, Completer, CompletionOptions

ROOT = Path(__file__).resolve().parent.parent


def _smollm_missing() -> str | None:
    try:
        embedded_gguf_path()
    except ModelLoadError as e:
        return str(e)
    return None


# The tests that count with SmolLM2's tokenizer (the real one, or tiny models over it) need its GGUF file.
needs_smollm = pytest.mark.skipif(_smollm_missing() is not None, reason=f"no SmolLM2 tokenizer: {_smollm_missing()}")

# -- the estimate ------------------------------------------------------------------------------------------------

# Real Python: the bundled textwrap.py and standard-library modules that every Python 3.10+ has.
STDLIB = ("argparse", "ast", "bisect", "calendar", "contextlib", "csv", "dataclasses", "difflib", "enum", "fractions",
          "functools", "heapq", "json/decoder", "json/encoder", "pathlib", "shlex", "statistics", "string",
          "tokenize", "typing")


def corpus() -> list[Path]:
    std = Path(sysconfig.get_paths()["stdlib"])
    files = [ROOT / "bench/data/textwrap.py"] + [std / f"{name}.py" for name in STDLIB]
    return [f for f in files if f.is_file()]


@needs_smollm
def test_the_estimate_is_within_3_percent_of_smollm2_on_real_python(tokenizer):
    files = corpus()
    assert len(files) >= 15
    real = estimate = 0
    for f in files:
        text = f.read_text(encoding="utf-8")
        real += len(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))
        estimate += approx_tokens(text)
    assert real > 150_000
    assert abs(estimate / real - 1) <= 0.03, f"estimate {estimate} vs {real} tokens ({estimate / real - 1:+.2%})"


def test_the_estimate_counts_nothing_as_nothing_and_grows_with_the_text():
    assert approx_tokens("") == 0
    assert approx_tokens("x") == 1
    assert approx_tokens("def f(x):\n    return x\n" * 10) > approx_tokens("def f(x):\n    return x\n")


# -- the packer fills its budget -------------------------------------------------------------------------------------


def window(path: str, start: int, n: int, score: float, kind: str = "retrieval") -> ContextRecord:
    stem = path.split(".")[0]
    text = "\n".join(f"{stem}_{start + i} x{start + i} y{start + i} z{start + i}" for i in range(n))
    return ContextRecord(text, path, start, start + n - 1, score, kind, "BM25")


def cost(path: str, text: str) -> int:
    """A header of 3 tokens, then a token a word: a 10-line window of 4 words a line costs 43."""
    return 3 + len(text.split())


def test_what_is_left_goes_to_the_head_of_the_best_window_that_did_not_fit():
    records = [window(f"m{i}.py", 1 + 10 * i, 10, 1.0 - i / 10) for i in range(5)]
    packed = pack({"retrieval": records}, 100, {"retrieval": 1.0}, record_tokens=cost)
    # Two whole windows (86), then the best of the rest cut to 2 lines (3 + 8 = 11): 97; nothing else fits in 3.
    assert packed.tokens == 97 == sum(cost(r.path, r.text) for r in packed.records)
    cut = next(r for r in packed.records if r.path == "m2.py")
    assert (cut.start_line, cut.end_line) == (21, 22) and cut.text == "\n".join(records[2].text.split("\n")[:2])
    assert "first 2 of 10 lines" in cut.why
    assert [(r.path, why) for r, why in packed.dropped] == [("m3.py", "over budget"), ("m4.py", "over budget")]
    assert packed.budget - packed.tokens < cost("m3.py", "m3_31 x31 y31 z31")  # less than one more line


def test_only_windows_are_cut_so_line_numbers_stay_true():
    stub = ContextRecord("class A:\n    def f(self): ...\n    def g(self): ...", "a.py", 1, 40, 1.0, "imports", "import")
    assert truncate(stub, 8, cost) is None  # 3 lines standing for lines 1-40: not a verbatim span
    span = window("b.py", 5, 3, 1.0)
    cut, c = truncate(span, 8, cost)
    assert (cut.start_line, cut.end_line, c) == (5, 5, 7)
    packed = pack({"imports": [stub]}, 8, {"imports": 1.0}, record_tokens=cost)
    assert packed.records == [] and packed.dropped == [(stub, "over budget")]


def test_a_large_record_does_not_stop_smaller_ones_from_filling_the_budget():
    big = window("big.py", 1, 30, 0.9)  # 123 tokens
    small = [window(f"s{i}.py", 1, 2, 0.5 - i / 100) for i in range(6)]  # 11 each
    packed = pack({"retrieval": [big, *small]}, 70, {"retrieval": 1.0}, record_tokens=cost)
    # The six small windows (66) come in whole; what is left (4) is less than a line of the big one (7).
    assert packed.tokens == 66 and {r.path for r in packed.records} == {f"s{i}.py" for i in range(6)}
    packed = pack({"retrieval": [big, *small]}, 100, {"retrieval": 1.0}, record_tokens=cost)
    assert packed.tokens == 66 + 31 and any(r.path == "big.py" and r.end_line == 7 for r in packed.records)


# -- exact budgets through the pipeline ------------------------------------------------------------------------------


def module(i: int) -> str:
    out = [f'"""Helpers for part {i} of the shop: prices, stock and reports."""', "", "import math", ""]
    for j in range(6):
        out += ["", f"def compute_{i}_{j}(items, rate={j + 1}.5):",
                f'    """Sum the prices of the items at rate {j} (part {i})."""',
                "    total = 0", "    for item in items:",
                f"        total += math.ceil(item.price * rate) + {i * j}",
                f"    return total // {j + 2}", ""]
    return "\n".join(out)


CURRENT = ("from shop.part0 import compute_0_1\nfrom shop.part1 import compute_1_2\n\n\n"
           "def report(items):\n    a = compute_0_1(items)\n    b = compute_1_2(items)\n"
           "    total = 0\n    for item in items:\n        total += math.ceil(item.price * ")


@pytest.fixture
def shop(tmp_path) -> Path:
    files = {".git/HEAD": "ref: refs/heads/main\n", "shop/__init__.py": ""}
    files.update({f"shop/part{i}.py": module(i) for i in range(10)})
    files["shop/report.py"] = CURRENT
    return write_tree(tmp_path / "repo", files)


def completer_for(engine, tmp_path, providers=("retrieval", "repo_map", "neighbours")) -> Completer:
    config = ContextConfig(index_dir=tmp_path / "index", slow_provider_deadline_ms=None, providers=providers)
    return Completer(engine, config,
                     make_context_engine=lambda r, cfg: ContextEngine(r, cfg, slow_executor=ThreadPoolExecutor(1)))


def context_tokens(engine: Engine, parts: PromptParts) -> int:
    """The tokens the context items add to the prompt as the engine encodes it (the whole prompt, uncut)."""
    bare = PromptParts(parts.prefix, parts.suffix, parts.path, [], parts.repo_name)
    return len(engine.encode(parts)[1].ids) - len(engine.encode(bare)[1].ids)


def check_exact_budgets(completer: Completer, root: Path, budgets) -> None:
    engine = completer.model
    for budget in budgets:
        parts, ctx = completer.prompt_parts(str(root / "shop/report.py"), CURRENT, len(CURRENT),
                                            CompletionOptions(budget=budget))
        exact = context_tokens(engine, parts)
        assert ctx.packed.tokens == exact <= budget, (budget, ctx.packed.tokens, exact)
        assert not ctx.notes
        # Filled: no window left out could have given its first line (with its header).
        for r, why in ctx.packed.dropped:
            if why == "over budget" and r.kind == "retrieval":
                lines = r.text.split("\n")
                first = "\n".join(lines[: next(i for i, line in enumerate(lines) if line.strip()) + 1])
                assert budget - exact < completer.record_tokens()(r.path, first), (budget, exact, r.path)
        assert any(r.kind == "retrieval" for r in ctx.records)


@needs_smollm
def test_the_context_part_is_token_exact_with_smollm2(shop, tmp_path, tiny_loaded, tiny_config):
    completer = completer_for(Engine(tiny_loaded, tiny_config.replace(max_new_tokens=4)), tmp_path)
    try:
        assert completer.model.template.name == "plain"  # context as "# Path:" headed comments
        check_exact_budgets(completer, shop, (40, 97, 256, 401, 800))
    finally:
        completer.close()


@pytest.fixture(scope="module")
def tiny_fim_model(tmp_path_factory) -> Path:
    """A tiny random model over a byte-level BPE of 300 tokens trained here, with StarCoder's FIM tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>", "<repo_name>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([(ROOT / "bench/data/textwrap.py").read_text()], trainers.BpeTrainer(
        vocab_size=300, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-fim"), tokenizer)


def test_the_context_part_is_token_exact_with_a_tiny_fim_tokenizer(shop, tmp_path, tiny_fim_model):
    config = RuntimeConfig(model=str(tiny_fim_model), cache_dir=tmp_path / "cache", device="cpu", quantize="none",
                           max_new_tokens=4)
    completer = completer_for(Engine(load_model(config), config), tmp_path)
    try:
        assert completer.model.template.name == "starcoder"  # "<file_sep>{path}\n{text}" items, SPM order
        check_exact_budgets(completer, shop, (40, 97, 256, 401, 800))
    finally:
        completer.close()


@needs_smollm
def test_a_model_loaded_later_measures_the_open_workspaces(shop, tmp_path, tiny_loaded, tiny_config):
    completer = completer_for(None, tmp_path)  # an editor's server: the workspace opens before the model loads
    try:
        completer.open_workspace(shop)
        _, before = completer.prompt_parts(str(shop / "shop/report.py"), CURRENT, len(CURRENT),
                                           CompletionOptions(budget=300))
        assert before.packed.tokens <= 300  # the estimate counts meanwhile
        completer.model = Engine(tiny_loaded, tiny_config.replace(max_new_tokens=4))
        check_exact_budgets(completer, shop, (300,))
    finally:
        completer.close()


# -- the model's window ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_window_model(tmp_path_factory, tokenizer) -> Path:
    """A tiny model whose window is 640 positions."""
    path = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-640"), tokenizer)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 640
    (path / "config.json").write_text(json.dumps(config))
    return path


def long_file(lines: int) -> str:
    return "".join(f"value_{i} = compute_{i % 10}_{i % 6}(items, rate={i}.5)\n" for i in range(lines)) + "total = "


@needs_smollm
@pytest.mark.parametrize("max_context, why", [(8192, "the model's window is 640 tokens and 8 are kept"),
                                              (400, "a prompt holds at most 400 tokens")])
def test_a_budget_that_cannot_fit_the_window_is_reduced_with_a_note(shop, tmp_path, small_window_model, max_context,
                                                                    why):
    config = RuntimeConfig(model=str(small_window_model), cache_dir=tmp_path / "cache", device="cpu",
                           quantize="none", max_new_tokens=8, max_context_tokens=max_context)
    engine = Engine(load_model(config), config)
    completer = completer_for(engine, tmp_path)
    limit = prompt_limit(640, max_context, 8).tokens
    text = long_file(12)
    path = shop / "shop/long.py"
    path.write_text(text)
    try:
        result = completer.complete(str(path), text, len(text), CompletionOptions(budget=4096))
        ctx = result.context
        bare = PromptParts(result.parts.prefix, "", result.parts.path, [], result.parts.repo_name)
        infile = len(engine.encode(bare)[1].ids)
        assert 0 < ctx.packed.budget == (limit - infile) // BUDGET_STEP * BUDGET_STEP < 4096
        assert len(ctx.notes) == 1 and ctx.notes[0].startswith(
            f"context budget reduced from 4096 to {ctx.packed.budget} tokens: {why}")
        assert ctx.notes[0].endswith(f"the current file's window takes {infile} (context may take {ctx.packed.budget})")
        # Nothing was cut from the prompt: all of it is there, within the bound.
        assert result.completion.prompt_tokens <= infile + ctx.packed.tokens <= limit
        assert context_tokens(engine, result.parts) == ctx.packed.tokens > 0
        # A budget that fits is left alone.
        small = completer.complete(str(path), text, len(text), CompletionOptions(budget=64)).context
        assert small.packed.budget == 64 and not small.notes
    finally:
        completer.close()


@needs_smollm
def test_a_file_window_larger_than_the_model_leaves_no_context(shop, tmp_path, small_window_model):
    config = RuntimeConfig(model=str(small_window_model), cache_dir=tmp_path / "cache", device="cpu",
                           quantize="none", max_new_tokens=8)
    completer = completer_for(Engine(load_model(config), config), tmp_path)
    text = long_file(200)
    path = shop / "shop/long.py"
    path.write_text(text)
    try:
        parts, ctx = completer.prompt_parts(str(path), text, len(text), CompletionOptions(budget=512))
        assert ctx.packed.budget == 0 and not parts.context and ctx.notes
    finally:
        completer.close()


def test_the_explanation_shows_the_context_tokens_the_budget_and_the_notes():
    from repocomplete.context_engine.engine import Context
    from repocomplete.context_engine.packing import Packed
    from repocomplete.lsp_server.convert import explain_context

    note = "context budget reduced from 4096 to 896 tokens: the model's window is 8192 tokens and ..."
    shown = explain_context(Context(Packed([], 880, 896), {"total": 3.0}, notes=[note]), 7000, 3.5, "repo")
    assert (shown["context_tokens"], shown["context_budget"], shown["notes"]) == (880, 896, [note])
    plain = explain_context(None, 300, 1.0, "infile")
    assert (plain["context_tokens"], plain["context_budget"], plain["notes"]) == (None, None, [])


def test_the_estimate_prices_each_piece_once_and_sums_as_before():
    """Each pre-token's cost is worked out once per process (the pieces of code repeat); the estimate is the same
    sum over the same pieces in the same order as pricing every piece afresh."""
    from repocomplete.context_engine import packing

    source = Path(packing.__file__).read_text(encoding="utf-8") + "\n" + Path(json.__file__).read_text(encoding="utf-8")
    lines = source.split("\n")
    texts = ["\n".join(lines[i : i + 20]) for i in range(0, len(lines), 7)] + ["", " ", "é" * 5, "\t\n\n  x"]
    for text in texts:
        pieces = packing._PIECES.findall(text)
        expected = max(1, round(sum(packing._piece_tokens(p) for p in pieces))) if text else 0
        assert approx_tokens.__wrapped__(text) == expected, text
