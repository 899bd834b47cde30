"""Which repository a file belongs to when no one says: the workspace root, and why it was chosen.

The walk goes up from the file's folder and stops below the home folder and the filesystem root (neither is ever
a candidate, nor anything above the home folder). A folder the gate refuses as a workspace root
(`gate.check_workspace_root`: /tmp itself, /usr, ...) is passed over. The first rule that finds a folder wins:

1. Version control: the nearest folder holding .git, .hg, .svn or .jj. It wins over a project file nearer the
   file: in a monorepo (.git at the top, pyproject.toml in packages/foo) the whole checkout is the workspace, as
   it is for an editor opened on the checkout (its workspace folder), and the other packages are cross-file
   context.
2. A project file (`PROJECT_MARKERS`: pyproject.toml, setup.py, package.json, go.mod, Cargo.toml, ...): the
   nearest folder holding one (an unpacked sdist, a copied project). The nearest, as pytest's rootdir and ruff's
   configuration discovery take it: a stray package.json higher up does not swallow every project below it.
3. The Python package chain: up from the file's folder while each folder holds __init__.py; the root is the
   folder above the top package, where `import top.sub` resolves (a file deep in an unpacked package). If that
   folder is not one to index (home, /tmp), the top package itself.
4. The file's own folder.

A file with no candidate left (a script directly in the home folder, in /tmp or in /) has no workspace:
`WorkspaceError`, one line saying so.

Paths are taken as given (made absolute, symlinks not resolved): a symlinked file's target never moves the root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from repocomplete.context_engine.gate import WorkspaceError, check_workspace_root, home_folders

VCS_MARKERS = (".git", ".hg", ".svn", ".jj")  # a folder (.git is a file in a worktree or a submodule)
PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", "package.json", "go.mod", "Cargo.toml", "pom.xml",
                   "build.gradle", "build.gradle.kts")

GIVEN = "given"  # the reason of a root its caller chose (the evaluation's repository, `index DIR`)


@dataclass(frozen=True)
class Root:
    path: Path  # absolute, symlinks as given
    reason: str  # one phrase: "nearest .git", "nearest pyproject.toml", "--root", ...

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


def locate_root(path: str | os.PathLike) -> Root:
    """The workspace root of a file (existing or not) and why (see the module docstring); raises WorkspaceError
    when no folder above the file may be a workspace."""
    path = Path(os.path.abspath(path))
    folders = _folders_up(path.parent)
    refusals: dict[Path, str | None] = {}

    def refusal(folder: Path) -> str | None:
        """None when the gate takes `folder` as a workspace root, else its one-line why not."""
        if folder not in refusals:
            try:
                check_workspace_root(folder)
                refusals[folder] = None
            except WorkspaceError as e:
                refusals[folder] = str(e)
        return refusals[folder]

    for markers, is_marker in ((VCS_MARKERS, os.path.lexists), (PROJECT_MARKERS, os.path.isfile)):
        for folder in folders:
            marker = next((m for m in markers if is_marker(folder / m)), None)
            if marker is not None and refusal(folder) is None:
                return Root(folder, f"nearest {marker}")

    top = None
    for folder in folders:
        if not (folder / "__init__.py").is_file():
            break
        top = folder
    if top is not None:
        if top.parent in folders and refusal(top.parent) is None:
            return Root(top.parent, f"top of the Python package chain (the folder above package {top.name})")
        if refusal(top) is None:
            return Root(top, f"top Python package {top.name} (the folder above it is not one to index)")

    if folders and refusal(folders[0]) is None:
        return Root(folders[0], "the file's own folder (no repository marker or Python package above it)")
    why = refusal(folders[0]) if folders else f"{path.parent} is the home folder or the filesystem root"
    raise WorkspaceError(f"no workspace for {path}: no version control, project file or Python package above it, "
                         f"and its own folder cannot be one ({why}); give the root (--root) or use in-file context")


def find_root(path: str | os.PathLike) -> Path:
    """The workspace root of a file (`locate_root(path).path`)."""
    return locate_root(path).path


def _folders_up(folder: Path) -> list[Path]:
    """`folder` and its parents, nearest first, stopping below the home folder and the filesystem root."""
    stops = home_folders()
    out = []
    for f in [folder, *folder.parents]:
        if f == f.parent or str(f) in stops or os.path.realpath(f) in stops:
            break
        out.append(f)
    return out
