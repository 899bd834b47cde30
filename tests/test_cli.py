"""The `repocomplete` command: one stderr line and exit code 2 on bad input, JSON output on success."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.document import offset_of
from repocomplete.model_runtime.backend import make_engine
from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.cli import main
from repocomplete.pipeline import Completer, CompletionOptions

SOURCE = "def add(a, b):\n    return a + b\n"


@pytest.fixture
def src(tmp_path) -> Path:
    f = tmp_path / "add.py"
    f.write_text(SOURCE)
    return f


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    """Send the GGUF conversion cache to tmp_path (RuntimeConfig.cache_dir defaults to platformdirs' dir)."""
    home = tmp_path / "cache-home"
    monkeypatch.setattr("platformdirs.user_cache_dir", lambda appname=None, *a, **k: str(home / appname))
    return home


def complete_in_process(path: Path, line: int, col: int, runtime: RuntimeConfig, options: CompletionOptions):
    """What the pipeline completes at (line, col) of a file, built here in the test's process."""
    text = path.read_text()
    completer = Completer(make_engine(runtime), ContextConfig(slow_provider_deadline_ms=None))
    try:
        return completer.complete(str(path), text, offset_of(text, line, col), options)
    finally:
        completer.close()


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, message: str) -> None:
    assert code == 2
    assert out == ""
    assert err == f"repocomplete: {message}\n"
    assert "Traceback" not in err


def test_missing_file(capsys, tmp_path):
    missing = tmp_path / "nope.py"
    result = run_cli(capsys, "complete", missing, "--line", 1, "--col", 1, "--model", tmp_path / "unused")
    assert_one_line_error(*result, f"file not found: {missing}")


def test_line_out_of_range(capsys, src, tiny_model_dir):
    result = run_cli(capsys, "complete", src, "--line", 4, "--col", 1, "--model", tiny_model_dir)
    assert_one_line_error(*result, "line 4 out of range (the file has 3 lines)")


def test_column_out_of_range(capsys, src, tiny_model_dir):
    result = run_cli(capsys, "complete", src, "--line", 1, "--col", 16, "--model", tiny_model_dir)
    assert_one_line_error(*result, "column 16 out of range (line 1 has 14 characters)")


def test_binary_file(capsys, tmp_path, tiny_model_dir):
    f = tmp_path / "data.py"
    f.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00")
    result = run_cli(capsys, "complete", f, "--line", 1, "--col", 1, "--model", tiny_model_dir)
    assert_one_line_error(*result, f"binary file: {f}")


def test_non_utf8_file(capsys, tmp_path, tiny_model_dir):
    f = tmp_path / "latin1.py"
    f.write_bytes(b"# caf\xe9\n")
    result = run_cli(capsys, "complete", f, "--line", 1, "--col", 1, "--model", tiny_model_dir)
    assert_one_line_error(*result, f"not UTF-8 text: {f} (byte 5)")


def test_directory_as_file(capsys, tmp_path, tiny_model_dir):
    result = run_cli(capsys, "complete", tmp_path, "--line", 1, "--col", 1, "--model", tiny_model_dir)
    assert_one_line_error(*result, f"not a regular file: {tmp_path}")


def test_context_repo_with_a_bad_budget(capsys, src, tiny_model_dir):
    result = run_cli(capsys, "complete", src, "--line", 2, "--col", 5, "--context", "repo", "--budget", -1,
                     "--model", tiny_model_dir)
    assert_one_line_error(*result, "budget_tokens must be >= 0, got -1")


def test_bad_max_tokens(capsys, src, tiny_model_dir):
    result = run_cli(capsys, "complete", src, "--line", 2, "--col", 5, "--max-tokens", 0, "--model", tiny_model_dir)
    assert_one_line_error(*result, "max_new_tokens must be >= 1, got 0")


def test_missing_model_path(capsys, src, tmp_path):
    missing = tmp_path / "no-such-model"
    result = run_cli(capsys, "complete", src, "--line", 2, "--col", 5, "--model", missing, "--device", "cpu")
    assert_one_line_error(
        *result, f"model not found: '{missing}' (expected 'default', a model directory or a .gguf file)"
    )


def test_model_directory_without_config(capsys, src, tmp_path):
    model_dir = tmp_path / "empty-model"
    model_dir.mkdir()
    result = run_cli(capsys, "complete", src, "--line", 2, "--col", 5, "--model", model_dir, "--device", "cpu")
    assert_one_line_error(*result, f"model directory {model_dir} has no config.json")


def test_corrupt_gguf(capsys, src, tmp_path, cache_home):
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"this is not a model\x00\x01\x02" * 40)
    result = run_cli(capsys, "complete", src, "--line", 2, "--col", 5, "--model", gguf, "--device", "cpu")
    assert_one_line_error(
        *result,
        f"cannot read GGUF model {gguf}: ValueError: {gguf} does not start with the GGUF magic bytes, "
        "so it is not a GGUF file.",
    )
    # The failed conversion left nothing behind in the (redirected) cache.
    models = cache_home / "repocomplete" / "models"
    assert models.is_dir()
    assert list(models.iterdir()) == []


def test_adapter_without_config(capsys, src, tmp_path, tiny_model_dir):
    adapter = tmp_path / "lora"
    adapter.mkdir()
    result = run_cli(
        capsys, "complete", src, "--line", 2, "--col", 5, "--model", tiny_model_dir, "--device", "cpu",
        "--adapter", adapter,
    )
    assert_one_line_error(*result, f"not a LoRA adapter: {adapter} has no adapter_config.json")


def test_complete_candidates(capsys, src, tiny_model_dir):
    code, out, err = run_cli(
        capsys, "complete", src, "--line", 2, "--col", 5, "--json", "--model", tiny_model_dir,
        "--device", "cpu", "--max-tokens", 6, "--candidates", 3,
    )
    assert code == 0 and err == ""
    result = json.loads(out)
    single = json.loads(run_cli(capsys, "complete", src, "--line", 2, "--col", 5, "--json", "--model", tiny_model_dir,
                                "--device", "cpu", "--max-tokens", 6)[1])
    assert result["candidates"][0] == result["completion"] == single["completion"]
    assert 1 <= len(result["candidates"]) <= 3 and len(set(result["candidates"])) == len(result["candidates"])
    code, out, err = run_cli(capsys, "complete", src, "--line", 2, "--col", 5, "--model", tiny_model_dir,
                             "--candidates", 9)
    assert code != 0 and "candidates must be in [1, 8], got 9" in err


def test_complete_json(capsys, src, tiny_model_dir, tokenizer):
    code, out, err = run_cli(
        capsys, "complete", src, "--line", 2, "--col", 5, "--json", "--model", tiny_model_dir,
        "--device", "cpu", "--max-tokens", 4,
    )
    assert code == 0
    assert err == ""
    assert out.endswith("\n") and out.count("\n") == 1
    result = json.loads(out)
    assert list(result) == [
        "completion", "latency_ms", "prompt_tokens", "cached_tokens", "generated_tokens", "stop_reason", "prefill_ms",
        "decode_ms", "model", "path", "root", "root_reason", "monitors", "monitor_ms", "candidates",
    ]
    assert result["candidates"] == [result["completion"]]  # one asked for: the completion alone
    assert result["root"] is None and result["root_reason"] is None  # in-file context: no repository
    # The SmolLM2 vocabulary has no FIM tokens: the plain template, i.e. the prefix alone, less the one token
    # ("\n    ") that token healing backs off.
    prefix_ids = tokenizer.encode("def add(a, b):\n    ", add_special_tokens=False)
    assert result["prompt_tokens"] == len(prefix_ids) - 1 == 7
    assert result["cached_tokens"] == 0
    # The completion is the one the engine itself makes for the same prompt with the same model and settings.
    expected = complete_in_process(src, 2, 5, RuntimeConfig(model=str(tiny_model_dir), device="cpu", max_new_tokens=4),
                                   CompletionOptions(context="infile"))
    assert result["completion"] == expected.text
    assert (result["generated_tokens"], result["stop_reason"]) == (expected.completion.generated_tokens,
                                                                   expected.completion.stop_reason)
    assert 0 <= result["generated_tokens"] <= 4
    assert result["stop_reason"] in {"eos", "stop_token", "newline", "max_tokens", "time"}
    assert isinstance(result["latency_ms"], float) and result["latency_ms"] > 0
    # quantize=auto: the path measured on this CPU, named in the model when the linears are not plain fp32/bf16.
    path = result["path"]
    assert path["source"] in ("measured", "cache") and path["capability"] == torch.backends.cpu.get_cpu_capability()
    plain = path["decode"] == path["prefill"] in ("fp32", "bf16")
    suffix = "" if plain else f" {path['decode']}" + ("" if path["prefill"] == path["decode"] else f"+{path['prefill']}")
    assert result["model"] == Path(tiny_model_dir).name + suffix


def test_complete_json_without_token_healing(capsys, src, tiny_model_dir, tokenizer):
    code, out, _ = run_cli(
        capsys, "complete", src, "--line", 1, "--col", 15, "--json", "--model", tiny_model_dir,
        "--device", "cpu", "--max-tokens", 2, "--no-token-healing", "--context", "none",
    )
    assert code == 0
    result = json.loads(out)
    assert result["prompt_tokens"] == len(tokenizer.encode("def add(a, b):", add_special_tokens=False))
    assert result["generated_tokens"] <= 2
    expected = complete_in_process(src, 1, 15, RuntimeConfig(model=str(tiny_model_dir), device="cpu", max_new_tokens=2,
                                                             token_healing=False), CompletionOptions(context="none"))
    assert result["completion"] == expected.text
    assert result["generated_tokens"] == expected.completion.generated_tokens
    assert result["prompt_tokens"] == expected.completion.prompt_tokens


def test_module_entry_point_end_to_end(tmp_path, tiny_model_dir):
    """`python -m repocomplete` in a fresh process: exit 2, nothing on stdout, one stderr line, no traceback."""
    f = tmp_path / "add.py"
    f.write_text(SOURCE)
    adapter = tmp_path / "lora"
    adapter.mkdir()
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg-cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "repocomplete", "complete", str(f), "--line", "2", "--col", "5",
         "--model", str(tiny_model_dir), "--device", "cpu", "--adapter", str(adapter)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"repocomplete: not a LoRA adapter: {adapter} has no adapter_config.json\n"
    assert "Traceback" not in proc.stderr


def test_module_entry_point_ignores_files_in_the_working_directory(tmp_path):
    """The server runs in the user's repository: a `textwrap.py` there must not shadow the standard module."""
    (tmp_path / "textwrap.py").write_text("+= 2\n")
    proc = subprocess.run([sys.executable, "-m", "repocomplete", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "usage: repocomplete" in proc.stdout, proc.stderr[-1000:]


@pytest.mark.parametrize("config", [
    {},
    {"model": "some/dir", "quantize": "int4", "max_new_tokens": 7, "temperature": 0.2, "multiline": True},
    {"adapter": "lora", "device": "cpu", "dtype": "bfloat16", "fim_template": "starcoder", "token_healing": False,
     "compile_decode": True, "threads": 1, "speculative_tokens": 0, "suggest_comments": True, "stop_loops": False},
    {"endpoint": "http://localhost:8000/v1", "quantize": "none", "temperature": 1.5},
])
def test_runtime_config_to_argv_round_trips_through_the_serve_command_line(config):
    from repocomplete.cli import build_parser, runtime_config

    c = RuntimeConfig(**config)
    assert runtime_config(build_parser().parse_args(["serve", *c.to_argv()])) == c


def test_runtime_config_to_argv_covers_every_model_flag_of_serve(capsys):
    """A flag added to the command line's model options must reach the server through to_argv too."""
    import re

    from repocomplete.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = capsys.readouterr().out
    model_section = help_text[help_text.index("\nmodel:\n"):].split("\n\n")[0]
    flags = set(re.findall(r"^  (--[a-z-]+)", model_section, re.M))
    everything = RuntimeConfig(model="m", adapter="a", endpoint="http://e", device="cpu", dtype="float32",
                               quantize="int8", fim_template="starcoder", compile_decode=True, max_new_tokens=5,
                               temperature=0.5, token_healing=False, multiline=True, threads=3,
                               speculative_tokens=0, suggest_comments=True, stop_loops=False, monitors=())
    assert len(flags) >= 13 and flags <= {a for a in everything.to_argv() if a.startswith("--")}
