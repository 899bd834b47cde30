"""Which repository a file belongs to when no one says (context_engine/roots.py), and where the choice is shown."""

from __future__ import annotations

import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import write_tree
from repocomplete.cli import main
from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.engine import ContextEngine
from repocomplete.context_engine.gate import WorkspaceError
from repocomplete.context_engine.roots import PROJECT_MARKERS, VCS_MARKERS, Root, find_root, locate_root
from repocomplete.lsp_server import convert
from repocomplete.pipeline import Completer

OWN_FOLDER = "the file's own folder (no repository marker or Python package above it)"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A home folder of its own: the walk up stops below it, so nothing outside the test's trees is seen."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("USERPROFILE", raising=False)
    return home


def marker(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if name.startswith("."):
        (folder / name).mkdir()  # a version control folder
    else:
        (folder / name).write_text("")


# -- each marker -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VCS_MARKERS)
def test_each_version_control_folder(home, name):
    marker(home / "proj", name)
    write_tree(home / "proj", {"a/b/c.py": "x = 1\n"})
    assert locate_root(home / "proj/a/b/c.py") == Root(home / "proj", f"nearest {name}")


def test_a_git_file_counts(home):
    """A worktree's or a submodule's .git is a file naming the real one."""
    write_tree(home / "wt", {".git": "gitdir: /elsewhere/.git/worktrees/wt\n", "src/m.py": ""})
    assert locate_root(home / "wt/src/m.py") == Root(home / "wt", "nearest .git")


@pytest.mark.parametrize("name", PROJECT_MARKERS)
def test_each_project_file(home, name):
    marker(home / "proj", name)
    write_tree(home / "proj", {"lib/m.py": ""})
    assert locate_root(home / "proj/lib/m.py") == Root(home / "proj", f"nearest {name}")


def test_a_folder_named_like_a_project_file_is_not_one(home):
    (home / "proj/pyproject.toml").mkdir(parents=True)
    write_tree(home / "proj", {"m.py": ""})
    assert locate_root(home / "proj/m.py").reason == OWN_FOLDER


# -- precedence --------------------------------------------------------------------------------------------------


def test_monorepo_subfolder_gets_the_whole_checkout(home):
    """.git at the top, pyproject.toml in packages/foo: the checkout, as an editor opened on it has it."""
    write_tree(home / "mono", {
        "packages/foo/pyproject.toml": "", "packages/foo/src/foo/__init__.py": "", "packages/foo/src/foo/x.py": "",
        "packages/bar/pyproject.toml": "", "packages/bar/bar.py": "",
    })
    marker(home / "mono", ".git")
    assert locate_root(home / "mono/packages/foo/src/foo/x.py") == Root(home / "mono", "nearest .git")


def test_the_nearest_version_control_folder_wins(home):
    """A repository inside another (a submodule, a vendored checkout) is its own workspace."""
    marker(home / "outer", ".git")
    marker(home / "outer/vendor/lib", ".hg")
    write_tree(home / "outer", {"vendor/lib/m.py": "", "app.py": ""})
    assert locate_root(home / "outer/vendor/lib/m.py") == Root(home / "outer/vendor/lib", "nearest .hg")
    assert locate_root(home / "outer/app.py") == Root(home / "outer", "nearest .git")


def test_sdist_without_version_control(home):
    """An unpacked sdist: its pyproject.toml, not the src/ folder above the package chain."""
    write_tree(home / "foo-1.0", {"pyproject.toml": "", "src/foo/__init__.py": "", "src/foo/sub/__init__.py": "",
                                  "src/foo/sub/x.py": ""})
    assert locate_root(home / "foo-1.0/src/foo/sub/x.py") == Root(home / "foo-1.0", "nearest pyproject.toml")


def test_without_version_control_the_nearest_project_file_wins(home):
    write_tree(home / "copied", {"package.json": "", "packages/foo/pyproject.toml": "", "packages/foo/foo.py": ""})
    assert locate_root(home / "copied/packages/foo/foo.py") == Root(home / "copied/packages/foo",
                                                                    "nearest pyproject.toml")


def test_package_chain_without_markers(home):
    """A file deep in an unpacked package lands at the folder above its top package."""
    write_tree(home / "unpacked", {"pkg/__init__.py": "", "pkg/a/__init__.py": "", "pkg/a/b/__init__.py": "",
                                   "pkg/a/b/deep.py": "", "pkg/other.py": ""})
    assert locate_root(home / "unpacked/pkg/a/b/deep.py") == Root(
        home / "unpacked", "top of the Python package chain (the folder above package pkg)")


def test_package_chain_starts_at_the_files_own_folder(home):
    """A folder without __init__.py (data, scripts) is not in a package: the chain is not looked for above it."""
    write_tree(home / "x", {"pkg/__init__.py": "", "pkg/scripts/run.py": ""})
    assert locate_root(home / "x/pkg/scripts/run.py") == Root(home / "x/pkg/scripts", OWN_FOLDER)


def test_package_directly_in_home_is_its_own_root(home):
    write_tree(home, {"pkg/__init__.py": "", "pkg/sub/__init__.py": "", "pkg/sub/m.py": ""})
    assert locate_root(home / "pkg/sub/m.py") == Root(
        home / "pkg", "top Python package pkg (the folder above it is not one to index)")


def test_the_files_own_folder_when_nothing_else(home):
    write_tree(home / "scratch", {"notes.py": ""})
    assert locate_root(home / "scratch/notes.py") == Root(home / "scratch", OWN_FOLDER)


# -- the bounds: never home, never /, never a refused folder ----------------------------------------------------


def test_file_directly_in_home_or_in_the_filesystem_root_has_no_workspace(home):
    (home / "script.py").write_text("x = 1\n")
    for path in (home / "script.py", Path("/x.py")):
        with pytest.raises(WorkspaceError, match="no workspace for .*home folder or the filesystem root"):
            locate_root(path)


def test_home_is_never_a_root_even_with_git(home):
    """A home folder under version control (dotfiles) is passed over: the project inside it is the workspace."""
    marker(home, ".git")
    write_tree(home, {"proj/pyproject.toml": "", "proj/m.py": "", "scratch/s.py": ""})
    assert locate_root(home / "proj/m.py") == Root(home / "proj", "nearest pyproject.toml")
    assert locate_root(home / "scratch/s.py") == Root(home / "scratch", OWN_FOLDER)


def test_nothing_above_home_is_looked_at(home, tmp_path):
    marker(tmp_path, ".git")  # home's parent
    (tmp_path / "pyproject.toml").write_text("")
    write_tree(home, {"scratch/s.py": ""})
    assert locate_root(home / "scratch/s.py") == Root(home / "scratch", OWN_FOLDER)


def test_a_folder_the_gate_refuses_is_passed_over(home, monkeypatch):
    """A .git in the temporary folder itself (refused as a root) does not make it the workspace."""
    tmp = home / "tmp"
    marker(tmp, ".git")
    write_tree(tmp, {"proj/setup.cfg": "", "proj/m.py": "", "loose/l.py": "", "l.py": ""})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    assert locate_root(tmp / "proj/m.py") == Root(tmp / "proj", "nearest setup.cfg")
    assert locate_root(tmp / "loose/l.py") == Root(tmp / "loose", OWN_FOLDER)
    with pytest.raises(WorkspaceError, match="no workspace for .*refusing to index"):
        locate_root(tmp / "l.py")


def test_a_file_not_yet_saved(home):
    marker(home / "proj", ".git")
    assert locate_root(home / "proj/new/module.py") == Root(home / "proj", "nearest .git")
    with pytest.raises(WorkspaceError, match="workspace root not found"):
        locate_root(home / "nowhere/module.py")


# -- symlinks ----------------------------------------------------------------------------------------------------


def test_a_symlinked_file_does_not_move_the_root(home):
    marker(home / "a", ".git")
    marker(home / "b", ".git")
    write_tree(home, {"b/deep/target.py": "x = 1\n"})
    (home / "a/link.py").symlink_to(home / "b/deep/target.py")
    assert locate_root(home / "a/link.py") == Root(home / "a", "nearest .git")
    assert find_root(home / "a/link.py") == home / "a"


def test_a_symlinked_folder_is_taken_as_given(home):
    write_tree(home / "real/proj", {"pyproject.toml": "", "m.py": ""})
    (home / "alias").symlink_to(home / "real/proj")
    assert locate_root(home / "alias/m.py") == Root(home / "alias", "nearest pyproject.toml")


# -- where the choice is shown -----------------------------------------------------------------------------------


SDIST = {
    "pyproject.toml": "[project]\nname = 'shop'\n",
    "src/shop/__init__.py": "",
    "src/shop/models.py": "class Inventory:\n    def restock_all_shelves(self, count):\n        return count\n",
    "src/shop/sub/__init__.py": "",
    "src/shop/sub/use.py": "from shop.models import Inventory\n\n\ndef run(inv: Inventory):\n    inv.restock_all\n",
}


def test_completer_opens_the_located_root_and_its_context_says_why(home, tmp_path):
    """An sdist without .git: the context engine sees the whole project (the file's own folder saw one file)."""
    root = write_tree(home / "shop-1.0", SDIST)
    completer = Completer(None, ContextConfig(index_dir=tmp_path / "index", slow_provider_deadline_ms=None),
                          make_context_engine=lambda r, cfg: ContextEngine(r, cfg, slow_executor=ThreadPoolExecutor(1)))
    try:
        text = SDIST["src/shop/sub/use.py"]
        _, ctx = completer.prompt_parts(str(root / "src/shop/sub/use.py"), text, len(text) - 1)
        assert completer.workspaces() == [root.resolve()]
        assert (ctx.root, ctx.root_reason) == (str(root.resolve()), "nearest pyproject.toml")
        assert any(r.path == "src/shop/models.py" for r in ctx.records), ctx.records
        shown = convert.explain_context(ctx, 10, 1.0, "repo")
        assert (shown["root"], shown["root_reason"]) == (str(root.resolve()), "nearest pyproject.toml")
        # A workspace opened by its caller says so; the first opener's reason stays.
        other = write_tree(home / "other", {"m.py": "x = 1\n"})
        assert completer.open_workspace(other, reason="the editor's workspace folder").root_reason == \
            "the editor's workspace folder"
        assert completer.open_workspace(other, reason="--root").root_reason == "the editor's workspace folder"
    finally:
        completer.close()
    assert convert.explain_context(None, 10, 1.0, "infile")["root"] is None


def test_complete_json_has_the_root_and_why(home, tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr("repocomplete.context_engine.config.default_index_dir", lambda: tmp_path / "cli-index")
    monkeypatch.setattr("platformdirs.user_cache_dir", lambda appname=None, *a, **k: str(tmp_path / "c" / appname))
    root = write_tree(home / "shop-1.0", SDIST)
    argv = ["complete", str(root / "src/shop/sub/use.py"), "--line", "5", "--col", "20", "--model",
            str(tiny_model_dir), "--quantize", "none", "--max-tokens", "2", "--json", "--providers", "retrieval"]
    for extra, expected in (([], (str(root.resolve()), "nearest pyproject.toml")),
                            (["--root", str(root / "src")], (str((root / "src").resolve()), "--root")),
                            (["--context", "infile"], (None, None))):
        assert main(argv + (["--context", "repo"] if "--context" not in extra else []) + extra) == 0
        out = json.loads(capsys.readouterr().out)
        assert (out["root"], out["root_reason"]) == expected
    # A file directly in the home folder: one line, exit 2, nothing indexed.
    (home / "script.py").write_text("x = 1\n")
    assert main(["complete", str(home / "script.py"), "--line", "1", "--col", "3", "--context", "repo",
                 "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("repocomplete: no workspace for") and err.count("\n") == 1
