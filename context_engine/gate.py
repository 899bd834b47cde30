"""The one exclusion gate: whether a path of a workspace may yield text for any record, and the workspace's bounds.

Every route by which repository text reaches a record asks the same `Gate`: the walk and the index (`walk`,
`check`), editor buffers, the jedi providers (their resolver, and the files jedi itself reads), retrieval, the repo
map, neighbours, and a final check on the assembled context (`records`). A path is refused when it is

  * ignored: `.gitignore` at any depth, `.repocompleteignore`, `.git/info/exclude`, or under a skipped folder;
  * a secret by name (`config.secret_patterns`), not source (no language the index takes), or named in bytes
    that are not UTF-8;
  * outside the root: lexically (`..`, another tree) or through a symlink whose target is outside;
  * not a regular file (a FIFO, a device, a folder).

The rules themselves are `walker.Rules` (one place, also what the walk applies); the gate adds the identity of a
path (`rel`: repository-relative POSIX, one form per file whichever form the caller had), the on-disk checks for
paths that do not come from the walk, and secret scrubbing of the text that passes (`scrub.scrub`).

`check_workspace_root` refuses roots that are not folders and the folders no one means to index whole: the
filesystem root, the home folder itself and the system folders. `private_dir` / `private_file` make the caches
that hold source excerpts readable by their owner only.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.errors import InputError
from repocomplete.context_engine.records import ContextRecord
from repocomplete.context_engine.scrub import scrub
from repocomplete.context_engine.walker import Rules, Skipped, WalkEntry, is_utf8

# Folders refused as workspace roots (the folder itself; anything under the pseudo filesystems too).
SYSTEM_DIRS = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt", "/opt", "/proc",
    "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/local", "/usr/share",
    "/var", "/var/tmp", "/var/lib", "/var/log", "/home", "/Users", "/Library", "/System", "/Applications",
    "/private", "/private/tmp", "/private/var", "/Volumes", "/snap", "/nix", "/nix/store",
)
PSEUDO_FS = ("/proc", "/sys", "/dev", "/run")
INSTALLED_CODE = ("site-packages", "dist-packages")


class WorkspaceError(InputError):
    """A workspace root that cannot or must not be indexed (missing, not a folder, the filesystem root, home, a
    system folder); the message is one line for the user."""


def home_folders() -> set[str]:
    """The user's home folder, in each form it may be named (HOME, USERPROFILE, ~; as given and resolved)."""
    folders = {os.path.abspath(os.path.expanduser("~"))}
    for var in ("HOME", "USERPROFILE"):
        if os.environ.get(var):
            folders.add(os.path.abspath(os.environ[var]))
    return folders | {os.path.realpath(f) for f in folders}


def _refused_folders() -> set[str]:
    folders = set(SYSTEM_DIRS) | {os.path.abspath(os.sep)} | home_folders()
    import tempfile

    folders.add(os.path.abspath(tempfile.gettempdir()))
    return folders | {os.path.realpath(f) for f in folders}


def check_workspace_root(root: str | os.PathLike) -> Path:
    """The root as given (absolute, symlinks not resolved); raises WorkspaceError for a root that is missing, not a
    folder, or a folder no one indexes whole (/, home itself, /etc, /usr, /tmp itself, ...)."""
    given = Path(os.path.abspath(os.fspath(root)))
    if not given.exists():
        raise WorkspaceError(f"workspace root not found: {given}")
    if not given.is_dir():
        raise WorkspaceError(f"workspace root is not a folder: {given}")
    refused = _refused_folders()
    for form in {str(given), os.path.realpath(given)}:
        if form in refused:
            raise WorkspaceError(f"refusing to index {form} as a workspace: it is the filesystem root, the home "
                                 "folder or a system folder; open a project folder instead")
        if any(form == p or form.startswith(p + os.sep) for p in PSEUDO_FS):
            raise WorkspaceError(f"refusing to index {form}: a system pseudo-filesystem")
    return given


class Gate:
    """The exclusion policy of one workspace (see the module docstring); cheap to build, safe to share."""

    def __init__(self, root: str | os.PathLike, config: ContextConfig | None = None):
        self.config = config or ContextConfig()
        self.given_root = os.path.abspath(os.fspath(root))
        self.rules = Rules(Path(self.given_root), self.config)
        self.root = self.rules.root  # resolved

    # -- identity -------------------------------------------------------------------------------------------

    def rel(self, path: str | os.PathLike) -> str | None:
        """The one identity of a file: its repository-relative POSIX path, or None outside the root.

        An absolute path counts as given (the root as given or resolved); failing that, with its folder resolved
        (a path through a symlinked folder). The file's own name is never resolved: a symlink is its own entry."""
        p = os.fspath(path)
        if not os.path.isabs(p):
            rel = posixpath.normpath(p.replace(os.sep, "/"))
            return None if rel in (".", "..") or rel.startswith("../") or rel.startswith("/") else rel
        p = os.path.abspath(p)
        forms = [p, os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))]
        for form in forms:
            for root in (self.given_root, self.root):
                if form.startswith(root.rstrip(os.sep) + os.sep):
                    return form[len(root.rstrip(os.sep)) + 1 :].replace(os.sep, "/")
        return None

    # -- the verdict ----------------------------------------------------------------------------------------

    def reason(self, path: str | os.PathLike) -> str | None:
        """None when `path` may yield text for a record, else why not."""
        rel = self.rel(path)
        if rel is None:
            return "outside the root"
        return self.reason_rel(rel)

    def reason_rel(self, rel: str) -> str | None:
        language, reason = self.rules.policy(rel)
        if language is None:
            return reason or "not source"
        abspath = os.path.join(self.root, *rel.split("/"))
        try:
            st = os.lstat(abspath)
        except FileNotFoundError:
            return None  # an unsaved buffer for a new file: the name decides
        except OSError as e:
            return f"unreadable ({e.strerror or type(e).__name__})"
        if stat.S_ISLNK(st.st_mode):
            if not self.rules.inside_root(abspath):
                return "symlink outside the root"
            try:
                st = os.stat(abspath)
            except OSError:
                return "dangling symlink"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        return None

    def allows(self, path: str | os.PathLike) -> bool:
        return self.reason(path) is None

    def may_read(self, path: str | os.PathLike) -> bool:
        """For a reader that also needs files outside the workspace (jedi: the standard library, installed
        packages): a path inside the root (as given, or once resolved) only when the gate allows it, or when it is
        installed code in an environment inside the root (`.venv/lib/.../site-packages`: read for type inference,
        never a record) and not a secret by name; anything outside the root is not ours to refuse."""
        p = os.path.abspath(os.fspath(path))
        rel = self.rel(p)
        if rel is None and not self.rules.inside_root(p):
            return True
        if rel is not None and is_utf8(rel) and not self.rules.is_secret(rel):
            if any(part in INSTALLED_CODE for part in rel.split("/")[:-1]):
                return True
        return self.allows(p)

    # -- text and records -----------------------------------------------------------------------------------

    def scrub(self, text: str, path: str = "") -> str:
        """`text` with credentials masked (see scrub.py)."""
        return scrub(text, path)

    def records(self, records: Iterable[ContextRecord]) -> list[ContextRecord]:
        """The final check: records whose path the gate refuses are dropped, the others' text scrubbed."""
        out = []
        verdicts: dict[str, bool] = {}
        for r in records:
            ok = verdicts.get(r.path)
            if ok is None:
                ok = verdicts[r.path] = self.reason(r.path) is None
            if not ok:
                continue
            text = scrub(r.text, r.path)
            out.append(r if text is r.text else ContextRecord(text, r.path, r.start_line, r.end_line, r.score,
                                                               r.kind, r.why))
        return out

    # -- the walk -------------------------------------------------------------------------------------------

    def walk(self, skipped: list[Skipped] | None = None, sniff: bool = True) -> Iterator[WalkEntry]:
        return self.rules.walk(skipped, sniff)

    def check(self, rel: str) -> tuple[WalkEntry | None, str | None]:
        return self.rules.check(rel)


# -- private caches ---------------------------------------------------------------------------------------------


def private_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and missing parents) readable by its owner only (0700), and tighten it if it exists."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _chmod(path, 0o700)
    return path


def private_file(path: str | os.PathLike) -> Path:
    """Create `path` empty if missing, with mode 0600, and tighten it if it exists (SQLite gives its -wal and -shm
    files the mode of the database file)."""
    path = Path(path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600))
    except OSError:
        pass
    _chmod(path, 0o600)
    return path


def _chmod(path: Path, mode: int) -> None:
    try:
        if stat.S_IMODE(os.stat(path).st_mode) != mode:
            os.chmod(path, mode)
    except OSError:  # not ours, or gone: the caller's open() says so if it matters
        pass
