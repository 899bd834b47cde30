"""Fine-tuning: data cut from a repository as the runtime builds prompts, the LoRA loop, checkpoints, adapters."""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers import write_tree

from repocomplete.cli import main
from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.errors import InputError
from repocomplete.eval.metrics import edit_similarity
from repocomplete.finetune import (
    CURRICULUM,
    ExampleCutter,
    FinetuneOptions,
    corpus,
    cut_examples,
    cut_span,
)
from repocomplete.model_runtime.adapters import RECORD, AdapterRecord, read_record
from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.model_runtime.healing import VocabIndex
from repocomplete.model_runtime.templates import get_template, render
from repocomplete.model_runtime import training

SOURCE = '''import os


class Loader:
    """Reads settings."""

    def __init__(self, root, name="app"):
        self.root = root
        self.name = name

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def load(self):
        if not os.path.exists(self.path("settings.ini")):
            return {}
        with open(self.path("settings.ini")) as f:
            return dict(line.split("=", 1) for line in f.read().splitlines() if line)
'''


@pytest.fixture
def repo(tmp_path):
    return write_tree(tmp_path / "repo", {
        "pkg/loader.py": SOURCE,
        "pkg/util.py": "def twice(x):\n    return helper(x) * 2\n\n\ndef helper(value):\n    return value.strip().lower()\n",
        "pkg/held.py": "HELD_OUT_MARKER = compute_held_out(1, 2)\n" * 5,
        "vendor/skip.py": "EXCLUDED_MARKER = build_excluded()\n" * 5,
        "build/gen.py": "IGNORED_MARKER = 1\n" * 5,
        ".gitignore": "build/\n",
        "secrets.json": '{"SECRET_MARKER": "x"}\n',
        "pkg/keys.py": "password = 'hunter2hunter2x'\nAWS = 'AKIAIOSFODNN7EXAMPLE'\nvalue = password.strip()\n",
    })


def _cutter(repo, tokenizer, **changes):
    options = FinetuneOptions(repo=str(repo), out="unused", **changes)
    template = get_template("smollm2-fim")
    return ExampleCutter(repo.resolve(), tokenizer, template, "spm", options, ContextConfig(slow_provider_deadline_ms=None))


# -- data ------------------------------------------------------------------------------------------------------


def test_corpus_keeps_held_out_excluded_ignored_and_secret_files_out_of_training(repo, tokenizer):
    config = ContextConfig(slow_provider_deadline_ms=None)
    train, val, _ = corpus(repo.resolve(), config, hold_out=("pkg/held.py",), exclude=("vendor/*",))
    assert val == ["pkg/held.py"]
    assert sorted(train) == ["pkg/keys.py", "pkg/loader.py", "pkg/util.py"]
    cutter = _cutter(repo, tokenizer)
    try:
        examples = cut_examples(cutter, train, 20_000, random.Random(0))
    finally:
        cutter.close()
    assert len(examples) > 20
    text = "".join(tokenizer.decode(e.prompt + e.target) for e in examples)
    for marker in ("HELD_OUT_MARKER", "EXCLUDED_MARKER", "IGNORED_MARKER", "SECRET_MARKER", "hunter2", "AKIAIOSF"):
        assert marker not in text
    assert {e.path for e in examples} == set(train)
    assert set(cutter.kinds) <= set(CURRICULUM) and cutter.kinds["line_rest"] > 0


@pytest.mark.parametrize("kind", list(CURRICULUM))
def test_every_span_kind_cuts_inside_the_file(kind):
    rng = random.Random(1)
    for _ in range(30):
        start, end = cut_span(SOURCE, kind, rng)
        assert 0 <= start <= end <= len(SOURCE)
        middle = SOURCE[start:end]
        if kind == "empty":
            assert middle == "" and SOURCE[end] == "\n"
        elif kind == "call":
            assert middle.endswith(")") and "(" in middle
        elif kind == "line_rest":
            assert middle and "\n" not in middle and SOURCE[end] == "\n"
        elif kind == "block":
            assert SOURCE[:start].rstrip(" ").endswith("\n") and middle.strip()


def test_a_curriculum_of_named_kinds_cuts_only_those():
    from repocomplete.finetune import curriculum, cut_spans

    shares = curriculum(("line", "empty"))
    assert shares == {"line": CURRICULUM["line"], "empty": CURRICULUM["empty"]}
    spans = cut_spans(SOURCE, 40, random.Random(3), shares)
    assert len(spans) == 40 and {k for _, _, k in spans} == {"line", "empty"}
    assert all(SOURCE[e] == "\n" for _, e, _ in spans)  # both kinds end where their line ends
    # a kind without a candidate is skipped, not replaced by the rest of a line the curriculum left out
    assert cut_spans("x = 1\n", 5, random.Random(0), curriculum(("call",))) == []
    assert curriculum(()) == CURRICULUM
    with pytest.raises(InputError, match="unknown span kinds lines_rest"):
        curriculum(("lines_rest",))


def test_an_example_is_the_runtime_prompt_then_the_healed_text_and_the_middle(repo, tokenizer):
    """Mid-token: the cursor inside `self.root`; token healing moves the prefix's last token into the target."""
    cutter = _cutter(repo, tokenizer)
    try:
        offset = SOURCE.index("self.root = root") + len("self.ro")
        end = SOURCE.index("\n", offset)
        rel = "pkg/loader.py"
        buffer = SOURCE[:offset] + SOURCE[end:]
        from repocomplete.pipeline import CompletionOptions

        parts, _ = cutter.completer.prompt_parts(str(repo / rel), buffer, offset, CompletionOptions(context="infile"))
        ex = training.fim_example(tokenizer, cutter.template, "spm", parts, SOURCE[offset:end], VocabIndex(tokenizer),
                                  1024)
    finally:
        cutter.close()
    template = get_template("smollm2-fim")
    prompt = render(template, parts, "spm")
    assert prompt.startswith("<issue_start><issue_comment>\n        self.name = name\n")
    assert prompt.endswith("<issue_closed>import os\n" + SOURCE[len("import os\n"):offset])
    assert parts.path == "loader.py"
    healed = tokenizer.decode(ex.target[:-1])
    assert healed.endswith("ot = root") and len(healed) > len("ot = root")  # the backed-off token comes first
    assert tokenizer.decode(ex.prompt) + healed == prompt + "ot = root"
    assert ex.target[-1] == tokenizer.convert_tokens_to_ids("<empty_output>")


def test_repository_context_hides_the_spans_own_text(repo, tokenizer):
    cutter = _cutter(repo, tokenizer, context="repo", budget=400)
    try:
        rng = random.Random(3)
        examples = list(cutter.examples("pkg/util.py", (repo / "pkg/util.py").read_text(), 6, rng))
    finally:
        cutter.close()
    assert examples
    for ex in examples:
        text = tokenizer.decode(ex.prompt)
        assert text.startswith("<repo_name>repo\n")
        assert "<filename>pkg/util.py\n<issue_start>" in text
        middle = tokenizer.decode(ex.target[:-1])
        if len(middle) > 12:  # the middle is in the target, never in the prompt's context
            assert middle.strip() not in text.split("<filename>pkg/util.py")[0]


def test_an_infile_share_of_repository_training_builds_in_file_prompts(repo, tokenizer):
    cutter = _cutter(repo, tokenizer, context="repo", budget=400, infile_share=0.5)
    try:
        examples = list(cutter.examples("pkg/loader.py", SOURCE, 24, random.Random(5)))
    finally:
        cutter.close()
    with_repo = [ex for ex in examples if tokenizer.decode(ex.prompt).startswith("<repo_name>")]
    assert 0 < len(with_repo) < len(examples)
    assert cutter.contexts == {"repo": len(with_repo), "infile": len(examples) - len(with_repo)}


# -- training --------------------------------------------------------------------------------------------------


def _toy_examples(tokenizer, n=6):
    rng = random.Random(0)
    out = []
    for i in range(n):
        prompt = tokenizer.encode(f"def f{i}(x):\n    return x +", add_special_tokens=False)
        target = tokenizer.encode(f" {rng.randint(1, 9)}\n", add_special_tokens=False) + [16]
        out.append(training.TrainExample(prompt, target))
    return out


def _tiny_peft(tiny_model_dir, **changes):
    config = training.TrainConfig(**{"rank": 4, "layers": 1, "autocast": "fp32", "lr": 1e-2, "warmup": 1,
                                     "batch_tokens": 64, "checkpoint_every": 1, **changes})
    model = training.add_lora(training.load_base(tiny_model_dir, torch.device("cpu")), config)
    return model, config


def test_packing_changes_no_logit(tiny_model_dir, tokenizer):
    model, _ = _tiny_peft(tiny_model_dir)
    model.eval()
    examples = _toy_examples(tokenizer, 3)
    with torch.no_grad():
        packed = model(input_ids=training.pack(examples, "cpu")["input_ids"],
                       position_ids=training.pack(examples, "cpu")["position_ids"]).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([e.prompt + e.target])).logits[0] for e in examples])
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-4)


def test_a_few_steps_lower_the_loss(tiny_model_dir, tokenizer, tmp_path):
    model, config = _tiny_peft(tiny_model_dir, steps=12)
    examples = _toy_examples(tokenizer)
    before = training.eval_loss(model, examples, 64, None, torch.device("cpu"))
    result = training.train(model, tokenizer, examples, examples, config, tmp_path / "out",
                            AdapterRecord("smollm2-fim", "spm"), exact_match_examples=2)
    assert result.steps == 12 and result.val_loss < before - 0.5
    assert (tmp_path / "out" / "adapter_config.json").is_file()
    assert read_record(tmp_path / "out") == AdapterRecord("smollm2-fim", "spm")
    # Only the upper layer carries the adapter.
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".layers.1." in n for n in names)


def test_held_out_generation_ends_as_the_engine_ends(tiny_model_dir, tokenizer):
    """The adapter's end comes out as any of SmolLM2's untrained special tokens: the held-out generation ends at
    any stop token, as the engine does (exact match scored 0% when only the template's end token counted), and its
    edit similarity is `eval score`'s."""
    model, _ = _tiny_peft(tiny_model_dir)
    x = tokenizer.encode("x", add_special_tokens=False)[0]
    gh_stars, empty = (tokenizer.convert_tokens_to_ids(t) for t in ("<gh_stars>", "<empty_output>"))
    steps = [{x: 0.6, gh_stars: 0.3, empty: 0.1},  # "x"
             {x: 0.2, gh_stars: 0.5, empty: 0.3}]  # then the end, as <gh_stars>
    calls = []

    def scripted(module, inputs, output):
        probabilities = steps[min(len(calls), len(steps) - 1)]
        calls.append(1)
        out = torch.full_like(output, float("-inf"))
        for token, p in probabilities.items():
            out[..., -1, token] = float(torch.tensor(p).log())
        return out

    hook = model.get_output_embeddings().register_forward_hook(scripted)
    try:
        example = training.TrainExample(tokenizer.encode("y = ", add_special_tokens=False), [x, empty])
        generate = training.held_out_generation
        assert generate(model, tokenizer, [example], {gh_stars, empty}, None, torch.device("cpu")) == (1.0, 100.0)
        calls.clear()
        # Only <empty_output> ends it: "x" then "<gh_stars>" is written, then "<empty_output>" ends (0.5 > 0.3).
        steps.append({x: 0.1, gh_stars: 0.3, empty: 0.6})
        em, es = generate(model, tokenizer, [example], {empty}, None, torch.device("cpu"))
        assert em == 0.0 and es == round(edit_similarity("x<gh_stars>", "x"), 2)
        assert generate(model, tokenizer, [], {empty}, None, torch.device("cpu")) is None
    finally:
        hook.remove()


def test_resume_after_an_interruption_continues_from_the_same_step(tiny_model_dir, tokenizer, tmp_path):
    examples = _toy_examples(tokenizer)
    record = AdapterRecord("smollm2-fim", "spm")
    model, config = _tiny_peft(tiny_model_dir, steps=6)
    straight = training.train(model, tokenizer, examples, examples, config, tmp_path / "a", record,
                              exact_match_examples=0)
    model, config = _tiny_peft(tiny_model_dir, steps=6)
    first = training.train(model, tokenizer, examples, examples, config, tmp_path / "b", record, stop_after=3)
    assert first.steps == 3 and first.val_loss is None and not (tmp_path / "b" / "adapter_config.json").exists()
    model, config = _tiny_peft(tiny_model_dir, steps=6, seed=123)  # a fresh process: other initial weights
    second = training.train(model, tokenizer, examples, examples, config, tmp_path / "b", record, resume=True,
                            exact_match_examples=0)
    assert second.resumed_from == 3 and second.steps == 6
    assert second.losses == pytest.approx(straight.losses, abs=1e-4)
    assert second.val_loss == pytest.approx(straight.val_loss, abs=1e-4)


def _trained(tiny_model_dir, tokenizer, out, **changes):
    """A tiny adapter trained a few steps into `out`: the peft model (in eval mode) and its examples."""
    model, config = _tiny_peft(tiny_model_dir, **{"steps": 3, **changes})
    examples = _toy_examples(tokenizer)
    training.train(model, tokenizer, examples, examples, config, out, AdapterRecord("smollm2-fim", "spm"),
                   exact_match_examples=0)
    model.eval()
    return model, examples


def test_adapter_round_trip_gives_identical_logits_and_selects_its_template(tiny_model_dir, tokenizer, tmp_path):
    from peft import PeftModel

    from repocomplete.model_runtime.engine import Engine
    from repocomplete.model_runtime.loading import load_model

    model, examples = _trained(tiny_model_dir, tokenizer, tmp_path / "ad")
    ids = torch.tensor([examples[0].prompt])
    with torch.no_grad():
        trained = model(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(training.load_base(tiny_model_dir, torch.device("cpu")), tmp_path / "ad")
        again = reloaded(input_ids=ids).logits
        base = training.load_base(tiny_model_dir, torch.device("cpu"))(input_ids=ids).logits
    assert torch.equal(trained, again)
    assert not torch.allclose(trained, base, atol=1e-3)  # the adapter changes something
    runtime = RuntimeConfig(model=str(tiny_model_dir), adapter=str(tmp_path / "ad"), cache_dir=tmp_path / "c",
                            device="cpu", dtype="float32", quantize="none", fast_forward=False)
    loaded = load_model(runtime)
    with torch.no_grad():
        merged = loaded.model(input_ids=ids).logits
    torch.testing.assert_close(merged, trained, atol=1e-4, rtol=1e-4)
    assert Engine(loaded, runtime).template.name == "smollm2-fim"
    assert json.loads((tmp_path / "ad" / RECORD).read_text())["fim_template"] == "smollm2-fim"


def test_sentinel_ids_are_the_template_s_special_tokens(tokenizer):
    from repocomplete.finetune import sentinel_ids
    from repocomplete.model_runtime.templates import get_template

    ids = sentinel_ids(tokenizer, get_template("smollm2-fim"))
    assert tokenizer.convert_ids_to_tokens(ids) == ["<repo_name>", "<file_sep>", "<filename>", "<issue_start>",
                                                    "<issue_comment>", "<issue_closed>", "<empty_output>"]


def test_sentinel_rows_train_and_the_runtime_loads_them_merged(tiny_model_dir, tokenizer, tmp_path):
    """SmolLM2's unused specials never trained and its output embedding is its input one: with the sentinel rows
    trainable they move (tied: every output row has a gradient through the softmax), no other row does, and the
    runtime merges them."""
    from repocomplete.model_runtime.loading import load_model

    rows = (3, 8, 16)
    before = training.load_base(tiny_model_dir, torch.device("cpu")).get_input_embeddings().weight.detach().clone()
    model, examples = _trained(tiny_model_dir, tokenizer, tmp_path / "ad", steps=6, token_rows=rows)
    runtime = RuntimeConfig(model=str(tiny_model_dir), adapter=str(tmp_path / "ad"), cache_dir=tmp_path / "c",
                            device="cpu", dtype="float32", quantize="none", fast_forward=False)
    merged = load_model(runtime).model
    after = merged.get_input_embeddings().weight.detach()
    moved = (after - before).abs().amax(dim=1).nonzero().flatten().tolist()
    assert moved == [3, 8, 16]
    torch.testing.assert_close(merged.get_output_embeddings().weight[16], after[16])  # tied: the output row too
    ids = torch.tensor([examples[0].prompt + examples[0].target])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_continuing_an_adapter_adds_sentinel_rows_without_changing_its_logits(tiny_model_dir, tokenizer, tmp_path):
    model, examples = _trained(tiny_model_dir, tokenizer, tmp_path / "ad")
    continued = training.continue_adapter(training.load_base(tiny_model_dir, torch.device("cpu")), tmp_path / "ad",
                                          (16,))
    continued.eval()
    ids = torch.tensor([examples[0].prompt])
    with torch.no_grad():
        torch.testing.assert_close(continued(input_ids=ids).logits, model(input_ids=ids).logits)
    names = [n for n, p in continued.named_parameters() if p.requires_grad]
    assert any("trainable_tokens" in n for n in names) and any("lora_A" in n for n in names)


def test_resuming_with_other_trainable_weights_is_a_clear_error(tiny_model_dir, tokenizer, tmp_path):
    from repocomplete.model_runtime.errors import ConfigError

    examples = _toy_examples(tokenizer)
    record = AdapterRecord("smollm2-fim", "spm")
    _trained(tiny_model_dir, tokenizer, tmp_path / "ad", steps=2, token_rows=(3, 16))
    base = lambda: training.load_base(tiny_model_dir, torch.device("cpu"))
    _, config = _tiny_peft(tiny_model_dir, steps=4)  # the tiny runs' settings
    model = training.continue_adapter(base(), tmp_path / "ad", (3, 16))  # rows trained
    training.train(model, tokenizer, examples, examples, config, tmp_path / "run", record, stop_after=2)
    model = training.continue_adapter(base(), tmp_path / "ad")  # rows frozen: fewer trainable tensors
    with pytest.raises(ConfigError, match="resume with the options it was started with"):
        training.train(model, tokenizer, examples, examples, config, tmp_path / "run", record, resume=True)


def test_continuing_without_sentinel_rows_freezes_the_rows_the_adapter_brings(tiny_model_dir, tokenizer, tmp_path):
    """Rows an adapter trained are kept as they are unless asked to train: only LoRA weights get gradients, so
    backward stops at the adapted layers; the saved adapter still holds the rows."""
    _trained(tiny_model_dir, tokenizer, tmp_path / "ad", steps=2, token_rows=(3, 16))
    base = lambda: training.load_base(tiny_model_dir, torch.device("cpu"))
    frozen = training.continue_adapter(base(), tmp_path / "ad")
    trainable = [n for n, p in frozen.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("trainable_tokens" in n for n, _ in frozen.named_parameters())
    frozen.save_pretrained(tmp_path / "again")
    from safetensors.torch import load_file
    assert any("trainable_tokens" in k for k in load_file(str(tmp_path / "again" / "adapter_model.safetensors")))
    rows = training.continue_adapter(base(), tmp_path / "ad", (3, 16))
    assert any("trainable_tokens" in n for n, p in rows.named_parameters() if p.requires_grad)


# -- the command -----------------------------------------------------------------------------------------------


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_finetune_command_end_to_end_and_its_report(capsys, repo, tmp_path, tiny_model_dir):
    out = tmp_path / "adapter"
    code, stdout, _ = _cli(capsys, "finetune", repo, "--out", out, "--base-model", tiny_model_dir, "--steps", 3,
                           "--batch-tokens", 256, "--layers", 1, "--rank", 4, "--hold-out", "pkg/held.py",
                           "--exact-match-examples", 2, "--eval-every", 2, "--json")
    assert code == 0
    report = json.loads(stdout)
    assert report == json.loads((out / "training-report.json").read_text())
    assert report["steps"] == 3 and report["finished"] and len(report["losses"]) == 3
    assert report["held_out_files"] == ["pkg/held.py"] and report["template"] == "smollm2-fim"
    assert report["corpus"]["train_files"] == 3
    assert report["examples"]["val"] > 4  # held-out spans from every pass over the held-out file, not one file's first
    assert report["val_loss"] > 0 and 0 <= report["val_exact_match"] <= 1
    assert 0 <= report["val_edit_similarity"] <= 100
    assert report["curve"][-1] == {"step": 3, "train_tokens": report["train_tokens"], "val_loss": report["val_loss"],
                                   "val_exact_match": report["val_exact_match"],
                                   "val_edit_similarity": report["val_edit_similarity"]}
    # The learning curve: the model before the first step, a point at step 2 with the same measures, and the
    # adapter as it was then.
    first, middle = report["curve"][:-1]
    assert (first["step"], first["train_tokens"]) == (0, 0) and set(first) == set(report["curve"][-1])
    assert middle["step"] == 2 and set(middle) == set(report["curve"][-1]) and middle["val_loss"] > 0
    assert read_record(out / "curve" / "step-2").fim_template == "smollm2-fim"
    assert report["command"][:2] == ["repocomplete", "finetune"]
    assert (out / "adapter_config.json").is_file() and read_record(out).fim_template == "smollm2-fim"
    # Tuning further from it: its template, its LoRA shape, and its weights (the first loss is the trained one's).
    more = tmp_path / "more"
    code, stdout, _ = _cli(capsys, "finetune", repo, "--out", more, "--base-model", tiny_model_dir, "--steps", 1,
                           "--batch-tokens", 256, "--init-adapter", out, "--hold-out", "pkg/held.py",
                           "--exact-match-examples", 0, "--json")
    assert code == 0
    again = json.loads(stdout)
    assert again["init_adapter"] == str(out) and again["template"] == "smollm2-fim"
    assert again["trainable_params"] == report["trainable_params"]
    assert again["losses"][0] < report["losses"][0]
    # The same directory again without --resume: refused.
    code, stdout, err = _cli(capsys, "finetune", repo, "--out", out, "--base-model", tiny_model_dir)
    assert code == 2 and stdout == "" and err == f"repocomplete: {out} is not empty: --resume continues its checkpoint\n"


def test_finetune_bad_inputs_one_line_exit_2(capsys, tmp_path, tiny_model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["finetune", empty, "--out", tmp_path / "o1", "--base-model", tiny_model_dir],
         f"no files to train on in {empty.resolve()} (empty, or every file excluded)"),
        (["finetune", tmp_path / "missing", "--out", tmp_path / "o2"], f"repository not found: {tmp_path / 'missing'}"),
        (["finetune", empty, "--out", tmp_path / "o3", "--steps", 0], "steps must be >= 1, got 0"),
        (["finetune", empty, "--out", tmp_path / "o4", "--infile-share", 1.5],
         "--infile-share must be between 0 and 1, not 1.5"),
    ]
    for argv, message in cases:
        code, out, err = _cli(capsys, *argv)
        assert (code, out, err) == (2, "", f"repocomplete: {message}\n")
    src = write_tree(tmp_path / "r", {"m.py": "x = 1\n"}) / "m.py"
    not_adapter = tmp_path / "not-adapter"
    not_adapter.mkdir()
    for adapter, message in ((not_adapter, f"not a LoRA adapter: {not_adapter} has no adapter_config.json"),
                             (tmp_path / "nowhere", f"adapter not found: {tmp_path / 'nowhere'}")):
        code, out, err = _cli(capsys, "complete", src, "--line", 1, "--col", 5, "--model", tiny_model_dir,
                              "--device", "cpu", "--adapter", adapter)
        assert (code, out, err) == (2, "", f"repocomplete: {message}\n")
