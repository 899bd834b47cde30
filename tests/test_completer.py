"""The one completion pipeline: prompt parts from the context engine, then the model engine."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from repocomplete.pipeline import Completer, CompletionOptions, Cursor
from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.errors import InputError
from repocomplete.context_engine.engine import ContextEngine
from helpers import write_tree
from repocomplete.model_runtime.engine import CancelToken, Engine

FILES = {
    ".git/HEAD": "ref: refs/heads/main\n",
    "pkg/models.py": "class Inventory:\n    def restock(self, item, count):\n        return count\n",
    "pkg/use.py": "from pkg.models import Inventory\n\n\ndef run(inv: Inventory):\n    inv.\n",
    "other/lib.py": "def helper():\n    return 1\n",
}


@pytest.fixture
def completer(tmp_path, tiny_loaded, tiny_config):
    root = write_tree(tmp_path / "repo", FILES)
    # (the monitors' analysis waited for, not an editor's 15 ms: two runs of a request constrain it alike)
    config = ContextConfig(index_dir=tmp_path / "index", slow_provider_deadline_ms=None, monitor_wait_ms=None)
    c = Completer(Engine(tiny_loaded, tiny_config.replace(max_new_tokens=4)), config,
                  make_context_engine=lambda r, cfg: ContextEngine(r, cfg, slow_executor=ThreadPoolExecutor(1)))
    yield c, root
    c.close()


def test_repo_context_reaches_the_prompt_and_infile_does_not(completer):
    c, root = completer
    path = str(root / "pkg/use.py")
    text = FILES["pkg/use.py"]
    offset = text.index("inv.") + 4
    repo = c.complete(path, text, offset, CompletionOptions(context="repo"))
    infile = c.complete(path, text, offset, CompletionOptions(context="infile"))
    assert any("class Inventory" in item.text for item in repo.parts.context)
    assert repo.context is not None and repo.context.records
    assert infile.parts.context == [] and infile.context is None
    assert repo.completion.prompt_tokens > infile.completion.prompt_tokens
    assert c.workspaces() == [root.resolve()]  # opened on first use, from the file's repository


def test_workspace_for_picks_the_deepest_open_root(completer):
    c, root = completer
    outer = c.open_workspace(root)
    inner = c.open_workspace(root / "other")
    assert c.workspace_for(root / "other/lib.py") is inner
    assert c.workspace_for(root / "pkg/use.py") is outer
    c.close_workspace(root / "other")
    assert c.workspace_for(root / "other/lib.py") is outer


def test_batch_matches_one_at_a_time(completer):
    c, root = completer
    text = FILES["pkg/use.py"]
    cursors = [Cursor(str(root / "pkg/use.py"), text, text.index("inv.") + k) for k in (0, 4)]
    seen = []
    batch = c.complete_batch(cursors, CompletionOptions(context="repo"), before_each=seen.append)
    single = [c.complete(x.path, x.text, x.offset, CompletionOptions(context="repo")) for x in cursors]
    assert [r.text for r in batch] == [r.text for r in single]
    assert seen == cursors


def test_a_cancelled_request_returns_nothing(completer):
    c, root = completer
    cancel = CancelToken()
    cancel.cancel()
    text = FILES["pkg/use.py"]
    result = c.complete(str(root / "pkg/use.py"), text, len(text) - 1, CompletionOptions(context="infile"), cancel)
    assert result.text == "" and result.completion.stop_reason == "cancelled"


@pytest.mark.parametrize("options, offset, message", [
    (CompletionOptions(context="everything"), 0, "unknown context mode"),
    (CompletionOptions(budget=-1), 0, "budget must be >= 0"),
    (CompletionOptions(context="infile"), 10_000, "offset 10000 out of range"),
])
def test_bad_options_are_input_errors(completer, options, offset, message):
    c, root = completer
    with pytest.raises(InputError, match=message):
        c.complete(str(root / "pkg/use.py"), FILES["pkg/use.py"], offset, options)
