"""Real editors against the real server: headless Neovim 0.12 (ghost text), Emacs with eglot, Helix's command.

The configuration snippets under editors/ are the ones README shows (a test checks they are the same text).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from repocomplete.eval.suites import SUITES_DIR, load_tasks
from test_lsp_protocol import RawClient, engine_completion

ROOT = Path(__file__).resolve().parent.parent
EDITORS = ROOT / "editors"
NVIM = Path(sys.executable).parent / "nvim"
SUITE = SUITES_DIR / "markdown_it_py"


def serve_command(model_dir: Path) -> list[str]:
    return [sys.executable, "-m", "repocomplete", "serve", "--model", str(model_dir), "--quantize", "none",
            "--device", "cpu", "--monitors", "none"]  # as `engine_completion` runs: no analysis timing in either


def env_for(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg-cache")}


@pytest.fixture
def real_repo(tmp_path) -> Path:
    """A copy of a real repository (the shipped suite's markdown-it-py snapshot), as a git work tree."""
    root = shutil.copytree(SUITE / "repos" / "markdown_it_py", tmp_path / "markdown_it_py")
    (root / ".git").mkdir()
    return root


@pytest.fixture
def engine_text(tiny_model_dir, tmp_path):
    """What the engine itself completes at a cursor (in-file context, 6 tokens unless told), for comparison."""
    return lambda path, text, offset, max_tokens=6: engine_completion(tiny_model_dir, tmp_path, path, text, offset,
                                                                      max_tokens)


def typed(task, code: str = "value = ") -> tuple[str, int]:
    """The task's buffer with `code` typed at its cursor (a line with code on it: at a line of indentation alone the
    random test model, healing the indentation, answers nothing), and the cursor after it."""
    text, offset = task.buffer()
    return text[:offset] + code + text[offset:], offset + len(code)


def readme_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [m.group(1) for m in re.finditer(rf"```{language}\n(.*?)```", text, re.S)]


@pytest.mark.parametrize("snippet, language", [("nvim/repocomplete.lua", "lua"), ("helix/languages.toml", "toml"),
                                               ("emacs/repocomplete.el", "elisp")])
def test_readme_shows_the_tested_snippets(snippet, language):
    assert (EDITORS / snippet).read_text() in readme_blocks(language)


def test_neovim_shows_accepts_and_renews_ghost_text(tmp_path, tiny_model_dir, real_repo, engine_text):
    task = load_tasks(SUITE / "tasks.jsonl")[0]
    path = real_repo / task.file
    assert path.read_text() == task.buffer()[0]  # the snapshot holds the task's buffer
    text, offset = typed(task)
    path.write_text(text)
    line = task.prompt.count("\n") + 1
    out = tmp_path / "nvim.json"
    env = {**env_for(tmp_path), "RC_SNIPPET": str(EDITORS / "nvim/repocomplete.lua"),
           "RC_CMD": json.dumps(serve_command(tiny_model_dir)), "RC_FILE": str(path), "RC_LINE": str(line),
           "RC_OUT": str(out)}
    proc = subprocess.run([str(NVIM), "--headless", "--clean", "-c", f"luafile {EDITORS / 'nvim/drive.lua'}"], env=env,
                          cwd=real_repo, capture_output=True, text=True, timeout=180)
    assert out.exists(), proc.stderr[-2000:]
    seen = json.loads(out.read_text())
    assert seen.get("error") is None, (seen, proc.stderr[-2000:])
    expected = engine_text(path, text, offset)
    assert expected, "the test model gave an empty completion here: pick another cursor"
    assert seen["first"] == expected  # the ghost text is the engine's completion
    assert seen["line_after_accept"] == text[text.rfind("\n", 0, offset) + 1:offset] + expected  # accepted in place
    # After typing, the next ghost text is the engine's for the edited buffer.
    buffer = seen["buffer"] + "\n"
    lines = buffer.split("\n")
    offset2 = sum(len(l) + 1 for l in lines[: seen["second_line"] - 1]) + seen["second_col"]  # ASCII: bytes = chars
    assert seen["second"] == (engine_text(path, buffer, offset2) or None)
    assert seen["steps"] == ["attached", "ready", "ghost text", "accepted", "next ghost text"]


@pytest.mark.skipif(shutil.which("emacs") is None, reason="emacs is not installed (CI installs emacs-nox + elpa-eglot)")
def test_emacs_eglot_completion_at_point_offers_the_completion(tmp_path, tiny_model_dir, real_repo, engine_text):
    task = load_tasks(SUITE / "tasks.jsonl")[1]
    path = real_repo / task.file
    # The user has typed `x` where the task's line was: the completion item carries the word and what follows.
    text, offset = task.prompt + "x" + task.right_context, len(task.prompt) + 1
    path.write_text(text)
    line = task.prompt.count("\n") + 1
    col = len(task.prompt) - (task.prompt.rfind("\n") + 1) + 1
    out = tmp_path / "emacs.json"
    env = {**env_for(tmp_path), "RC_CMD": json.dumps(serve_command(tiny_model_dir)), "RC_FILE": str(path),
           "RC_LINE": str(line), "RC_COL": str(col), "RC_OUT": str(out)}
    proc = subprocess.run(["emacs", "--batch", "-q", "-l", str(EDITORS / "emacs/repocomplete.el"),
                           "-l", str(EDITORS / "emacs/drive.el")], env=env, cwd=real_repo, capture_output=True,
                          text=True, timeout=180)
    assert out.exists(), proc.stderr[-2000:]
    seen = json.loads(out.read_text())
    assert "error" not in seen, (seen, proc.stderr[-2000:])
    expected = "x" + engine_text(path, text, offset).split("\n", 1)[0]
    assert expected.strip() != "x" and expected in seen["candidates"], (expected, seen)


def test_helix_snippet_starts_a_server_that_completes(tmp_path, tiny_model_dir, real_repo, engine_text):
    """Helix cannot be installed here: its configuration is checked, and its command run as Helix would run it."""
    config = tomllib.loads((EDITORS / "helix/languages.toml").read_text())
    server = config["language-server"]["repocomplete"]
    assert any("repocomplete" in lang["language-servers"] for lang in config["language"])
    # Helix runs `command args...`; `repocomplete` is this venv's entry point, with the test model's arguments.
    command = [str(Path(sys.executable).parent / server["command"]), *server["args"],
               *serve_command(tiny_model_dir)[4:]]
    client = RawClient(command, env_for(tmp_path))
    try:
        init = client.request("initialize", {"processId": None, "rootUri": real_repo.as_uri(), "capabilities": {},
                                             "initializationOptions": {**server["config"], "context": "infile",
                                                                       "maxTokens": 4}})
        assert client.response(init)["result"]["capabilities"]["completionProvider"] is not None
        client.notify("initialized", {})
        task = load_tasks(SUITE / "tasks.jsonl")[2]
        uri = (real_repo / task.file).as_uri()
        text, offset = typed(task)
        client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                                "text": text}})
        position = {"line": task.prompt.count("\n"), "character": offset - text.rfind("\n", 0, offset) - 1}
        import time

        deadline, result = time.monotonic() + 60, None
        while result is None and time.monotonic() < deadline:
            answer = client.response(client.request("textDocument/completion",
                                                    {"textDocument": {"uri": uri}, "position": position}))
            result = answer.get("result")
            if result is None:
                time.sleep(0.2)  # the model is still loading
        expected = engine_text(real_repo / task.file, text, offset, 4)
        assert expected, "the test model gave an empty completion here: pick another cursor"
        # No word before the cursor (`value = |`): the item inserts the completion there.
        assert [item["textEdit"] for item in result["items"]] == [
            {"range": {"start": position, "end": position}, "newText": expected}]
    finally:
        client.proc.stdin.close()
        client.proc.wait(timeout=20)
