"""The walk: which files of a repository are indexable, and why the others are not."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import pytest

from helpers import write_tree

from repocomplete.context_engine import walker
from repocomplete.context_engine.config import SECRET_PATTERNS, ContextConfig
from repocomplete.context_engine.walker import Skipped, Unindexable, read_source, walk


make = write_tree


def run(root: Path, config: ContextConfig | None = None, **kwargs) -> tuple[list[str], dict[str, str]]:
    skipped: list[Skipped] = []
    paths = [e.path for e in walk(root, config or ContextConfig(), skipped, **kwargs)]
    return sorted(paths), {s.path: s.reason for s in skipped}


def test_gitignore_root_nested_and_negation(tmp_path):
    make(tmp_path, {
        ".gitignore": "*.log\nbuild_out/\ngen_*.py\n!gen_keep.py\n/rootonly.py\n",
        "a.py": "", "gen_x.py": "", "gen_keep.py": "", "rootonly.py": "", "notes.log": "",
        "build_out/x.py": "", "build_out/deep/y.py": "",
        "sub/rootonly.py": "",  # "/rootonly.py" is anchored at the root
        "sub/.gitignore": "local.py\n!gen_sub.py\n",
        "sub/local.py": "", "sub/gen_sub.py": "", "sub/gen_other.py": "", "sub/deeper/local.py": "",
        "other/local.py": "",  # sub/.gitignore does not reach here
        "readme.md": "",  # not source: passed over silently
    })
    paths, skipped = run(tmp_path)
    assert paths == ["a.py", "gen_keep.py", "other/local.py", "sub/gen_sub.py",
                     "sub/rootonly.py"]
    assert skipped == {
        "build_out/": "ignored by .gitignore",  # the folder once, its files never looked at
        "gen_x.py": "ignored by .gitignore",
        "rootonly.py": "ignored by .gitignore",
        "sub/deeper/local.py": "ignored by sub/.gitignore",
        "sub/gen_other.py": "ignored by .gitignore",
        "sub/local.py": "ignored by sub/.gitignore",
    }


def test_repocompleteignore_and_git_info_exclude(tmp_path):
    make(tmp_path, {
        ".gitignore": "keep.py\n",
        ".repocompleteignore": "generated/\n*_pb2.py\n!keep.py\n",  # read after .gitignore: it can re-include
        ".git/info/exclude": "scratch.py\n",
        "keep.py": "", "api_pb2.py": "", "generated/models.py": "", "scratch.py": "", "main.py": "",
    })
    paths, skipped = run(tmp_path)
    assert paths == ["keep.py", "main.py"]
    assert skipped == {
        ".git/": "skip_dirs",
        "api_pb2.py": "ignored by .repocompleteignore",
        "generated/": "ignored by .repocompleteignore",
        "scratch.py": "ignored by .git/info/exclude",
    }


def test_skip_dirs(tmp_path):
    make(tmp_path, {"node_modules/lib/x.js": "", ".venv/lib/y.py": "", "src/__pycache__/z.py": "",
                    "custom/c.py": "", "src/app.py": "", "src/app.ts": ""})
    paths, skipped = run(tmp_path)
    assert paths == ["custom/c.py", "src/app.py", "src/app.ts"]
    assert skipped == {".venv/": "skip_dirs", "node_modules/": "skip_dirs", "src/__pycache__/": "skip_dirs"}
    paths, skipped = run(tmp_path, ContextConfig(skip_dirs=("custom",)))
    assert paths == [".venv/lib/y.py", "node_modules/lib/x.js", "src/__pycache__/z.py", "src/app.py", "src/app.ts"]
    assert skipped == {"custom/": "skip_dirs"}


# One file name for every secret pattern of the default configuration (the test fails when a pattern is added
# without an example), plus copies in a subfolder: a secret is one wherever it lies.
SECRET_EXAMPLES = {
    ".env": ".env", ".env.*": ".env.production", "*.env": "prod.env", "*.pem": "server.pem", "*.key": "server.key",
    "*.crt": "server.crt", "*.p12": "cert.p12", "*.pfx": "cert.pfx", "*.jks": "store.jks",
    "*.keystore": "release.keystore", "id_rsa*": "id_rsa.pub", "id_dsa*": "id_dsa", "id_ecdsa*": "id_ecdsa",
    "id_ed25519*": "id_ed25519", ".netrc": ".netrc", ".npmrc": ".npmrc", ".pypirc": ".pypirc",
    ".git-credentials": ".git-credentials", "credentials": "credentials", "credentials.*": "credentials.py",
    "*credentials*.json": "gcp-credentials-prod.json", "secrets.*": "secrets.py", "*.secret": "api.secret",
    "*.secrets": "app.secrets", ".htpasswd": ".htpasswd", "service-account*.json": "service-account-ci.json",
    "*.kdbx": "vault.kdbx", ".aws/*": ".aws/config.py", ".ssh/*": ".ssh/id_work.py",
    ".docker/config.json": ".docker/config.json",
}


def test_every_secret_pattern_is_never_yielded_nor_opened(tmp_path, monkeypatch):
    assert set(SECRET_EXAMPLES) == set(SECRET_PATTERNS)
    secrets = list(SECRET_EXAMPLES.values()) + ["deep/er/" + n for n in SECRET_EXAMPLES.values()]
    make(tmp_path, {**{s: "def leaked_secret(): pass\n" for s in secrets}, "app.py": "", "deep/er/ok.py": ""})
    secret_abs = {str(tmp_path / s) for s in secrets}
    opened = []

    def guard(path):
        if isinstance(path, int):  # a file descriptor from os.open, checked there
            return
        path = os.fsdecode(path)
        assert path not in secret_abs, f"opened a secret: {path}"
        opened.append(path)

    real_open, real_os_open = builtins.open, os.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (guard(f), real_open(f, *a, **k))[1])
    monkeypatch.setattr(os, "open", lambda f, *a, **k: (guard(f), real_os_open(f, *a, **k))[1])
    # Every name counts as source here, so the rules cannot lean on the extension filter.
    paths, skipped = run(tmp_path, language_for=lambda name: "python")
    assert paths == ["app.py", "deep/er/ok.py"]
    assert {p for p, r in skipped.items() if r == "secret pattern"} == set(secrets)
    assert sorted(opened) == [str(tmp_path / "app.py"), str(tmp_path / "deep/er/ok.py")]  # the sniff did open


def test_binaries_and_size_limit(tmp_path):
    make(tmp_path, {
        "bin.py": b"\x7fELF\0\0\0",
        "late_nul.py": b"x = 1\n" * 2000 + b"\0",  # the NUL lies beyond the 8 KB sniffed
        "max.py": b"#" * 20_000,
        "over.py": b"#" * 20_001,
    })
    config = ContextConfig(max_file_bytes=20_000)
    paths, skipped = run(tmp_path, config)
    assert paths == ["late_nul.py", "max.py"]
    assert skipped == {"bin.py": "binary (a NUL byte in the first 8 KB)", "over.py": "too large (20001 bytes > 20000)"}
    assert run(tmp_path, config, sniff=False)[0] == ["bin.py", "late_nul.py", "max.py"]


def test_default_limit_is_one_megabyte(tmp_path):
    make(tmp_path, {"big.py": b"#" * 1_000_001, "fits.py": b"#" * 1_000_000})
    paths, skipped = run(tmp_path)
    assert paths == ["fits.py"] and skipped == {"big.py": "too large (1000001 bytes > 1000000)"}


def test_symlink_loops_terminate(tmp_path):
    make(tmp_path, {"pkg/mod.py": "", "pkg/inner/x.py": ""})
    (tmp_path / "pkg/inner/up").symlink_to("..")  # a folder loop
    (tmp_path / "a.py").symlink_to("b.py")  # a file loop
    (tmp_path / "b.py").symlink_to("a.py")
    (tmp_path / "gone.py").symlink_to("nowhere.py")
    paths, skipped = run(tmp_path)
    assert paths == ["pkg/inner/x.py", "pkg/mod.py"]
    assert skipped == {"a.py": "symlink loop", "b.py": "symlink loop", "gone.py": "dangling symlink",
                       "pkg/inner/up/": "symlink loop"}


def test_symlinks_out_of_the_root_are_not_followed(tmp_path):
    root, outside = tmp_path / "repo", tmp_path / "outside"
    make(outside, {"x.py": "", "lib/y.py": ""})
    make(root, {"real.py": "", "pkg/m.py": ""})
    (root / "ext.py").symlink_to(outside / "x.py")
    (root / "extdir").symlink_to(outside / "lib")
    (root / "alias.py").symlink_to("real.py")  # inside the root: indexed under its own name
    (root / "pkglink").symlink_to("pkg")  # inside the root: walked once, at its real path
    paths, skipped = run(root)
    assert paths == ["alias.py", "pkg/m.py", "real.py"]
    assert skipped == {"ext.py": "symlink outside the root", "extdir/": "symlink outside the root",
                       "pkglink/": "symlink to a directory walked at its real path"}


def test_directory_symlink_to_an_unwalked_folder_is_walked(tmp_path):
    make(tmp_path, {"vendor/lib/v.py": "", "app.py": ""})
    (tmp_path / "lib").symlink_to("vendor/lib")  # vendor/ is a skip dir, the link brings the code in on purpose
    paths, skipped = run(tmp_path)
    assert paths == ["app.py", "lib/v.py"]
    assert skipped == {"vendor/": "skip_dirs"}


class _Listing:
    def __init__(self, entries):
        self.entries = entries

    def __enter__(self):
        return iter(self.entries)

    def __exit__(self, *exc):
        return False


def test_file_deleted_mid_walk(tmp_path, monkeypatch):
    make(tmp_path, {"a.py": "", "doomed.py": "", "z.py": ""})
    real_scandir = os.scandir

    def scandir(path):
        with real_scandir(path) as it:
            entries = list(it)
        (tmp_path / "doomed.py").unlink(missing_ok=True)  # after the listing, before its stat
        return _Listing(entries)

    monkeypatch.setattr(os, "scandir", scandir)
    paths, skipped = run(tmp_path)
    assert paths == ["a.py", "z.py"]
    assert skipped == {"doomed.py": "vanished during the walk"}


def test_unreadable_files_and_folders(tmp_path, monkeypatch):
    make(tmp_path, {"a.py": "", "locked.py": "", "closed/x.py": "", "open/y.py": ""})
    real_os_open, real_scandir = os.open, os.scandir

    def os_open(path, *args, **kwargs):
        if os.fspath(path).endswith("locked.py"):
            raise PermissionError(13, "Permission denied")
        return real_os_open(path, *args, **kwargs)

    def scandir(path):
        if os.fspath(path).endswith("closed"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "scandir", scandir)
    paths, skipped = run(tmp_path)
    assert paths == ["a.py", "open/y.py"]
    assert skipped == {"closed/": "unreadable directory (permission denied)",
                       "locked.py": "unreadable (permission denied)"}


def test_fifo_is_not_opened(tmp_path):
    make(tmp_path, {"a.py": ""})
    os.mkfifo(tmp_path / "pipe.py")  # opening it for reading would block forever
    paths, skipped = run(tmp_path)
    assert paths == ["a.py"] and skipped == {"pipe.py": "not a regular file"}
    with pytest.raises(Unindexable, match="not a regular file"):
        read_source(str(tmp_path / "pipe.py"), 1000)


def test_languages_config_filters(tmp_path):
    make(tmp_path, {"a.py": "", "b.go": "", "c.rs": "", "d.txt": ""})
    assert run(tmp_path)[0] == ["a.py", "b.go", "c.rs"]
    assert run(tmp_path, ContextConfig(languages=("go",)))[0] == ["b.go"]


def test_ignore_files_are_compiled_once_per_file(tmp_path, monkeypatch):
    files = {".gitignore": "*.tmp.py\n", "a/.gitignore": "skip.py\n"}
    for d in range(20):
        for f in range(10):
            files[f"a/d{d}/f{f}.py"] = ""
        files[f"a/d{d}/skip.py"] = ""
    make(tmp_path, files)
    compiled = []
    real = walker.GitIgnoreSpec.from_lines
    monkeypatch.setattr(walker.GitIgnoreSpec, "from_lines", lambda lines, *a, **k: (compiled.append(1), real(lines))[1])
    rules = walker.Rules(tmp_path, ContextConfig())
    skipped: list[Skipped] = []
    assert len(list(rules.walk(skipped))) == 200 and len(skipped) == 20
    assert len(compiled) == 1 + 2  # the secret patterns, then each ignore file once (not per file, not per folder)
    assert len(list(rules.walk())) == 200 and len(compiled) == 3  # unchanged ignore files: cached
    assert rules.check("a/d3/skip.py") == (None, "ignored by a/.gitignore") and len(compiled) == 3
    (tmp_path / "a/.gitignore").write_text("f1.py\n")
    assert len(list(rules.walk())) == 200 and len(compiled) == 4  # edited: compiled again


def test_check_one_path_agrees_with_the_walk(tmp_path):
    make(tmp_path, {".gitignore": "gen_out/\n", "gen_out/x.py": "", "src/a.py": "", ".env.py": "", "node_modules/m.js": ""})
    rules = walker.Rules(tmp_path, ContextConfig())
    entry, reason = rules.check("src/a.py")
    assert (entry.path, entry.language, entry.size, reason) == ("src/a.py", "python", 0, None)
    assert rules.check("gen_out/x.py") == (None, "ignored by .gitignore")
    assert rules.check(".env.py") == (None, "secret pattern")
    assert rules.check("node_modules/m.js") == (None, "skip_dirs")
    assert rules.check("src/missing.py") == (None, "vanished during the walk")
    assert rules.check("notes.txt") == (None, None)
    assert rules.check("../escape.py")[0] is None


def test_read_source_content_rules(tmp_path):
    make(tmp_path, {
        "latin1.py": "name = 'café'\n".encode("latin-1"),
        "min.js": "var a=1;" * 2000,
        "long_file.py": "x = 1\n" * 5000,  # long, but no long line
        "bom.py": b"\xef\xbb\xbfx = 1\n",
    })
    with pytest.raises(Unindexable, match=r"not UTF-8 \(byte 11\)"):
        read_source(str(tmp_path / "latin1.py"), 10**6)
    with pytest.raises(Unindexable, match=r"minified \(a line of 16000 characters > 10000\)"):
        read_source(str(tmp_path / "min.js"), 10**6)
    with pytest.raises(Unindexable, match="vanished"):
        read_source(str(tmp_path / "nope.py"), 10**6)
    with pytest.raises(Unindexable, match="too large"):
        read_source(str(tmp_path / "long_file.py"), 100)
    assert read_source(str(tmp_path / "long_file.py"), 10**6).text.count("\n") == 5000
    bom = read_source(str(tmp_path / "bom.py"), 10**6)
    assert (bom.text, bom.size, bom.sha1) == ("x = 1\n", 9, "b38e406c011d34aec17495cd8a2a889a418b66d9")
