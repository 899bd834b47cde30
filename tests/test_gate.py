"""Trust: nothing excluded ever reaches a record or a prompt, whatever the route (issue 12).

Planted secrets (a secret-pattern file, gitignored files, an ignored folder, a symlink out of the root, credentials
written into ordinary files) are looked for in every provider's records, the prompt an OpenAI-compatible endpoint
receives, the index database and jedi's cache; plus the workspace's bounds, paths and cache permissions.
"""

from __future__ import annotations

import os
import random
import sqlite3
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import write_tree
from repocomplete.cli import main
from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.engine import ContextEngine
from repocomplete.context_engine.gate import Gate, WorkspaceError, check_workspace_root
from repocomplete.context_engine.index import RepoIndex, db_path_for
from repocomplete.context_engine.records import KINDS
from repocomplete.context_engine.scrub import REDACTED, scrub

AWS_KEY = "AKIAZ7Q4MPLE3XR2JH5T"
PASSWORD = "tr0ub4dor-and-3"
PEM_BODY = "MIIEowIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9OrZ1BbdDVuexBbXvOg0PmI5y7Kq"
PEM = f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n{PEM_BODY[::-1]}\n-----END RSA PRIVATE KEY-----"
# Text that only excluded files hold: none of it may appear in any record, prompt or cache.
EXCLUDED = ("VAULT_SENTINEL_S3CR3T", "DEPLOY_SENTINEL_TOKEN", "LOCAL_SENTINEL_CONF", "OUTSIDE_SENTINEL_LINK")
PLANTED = (AWS_KEY, PASSWORD, PEM_BODY, PEM_BODY[::-1]) + EXCLUDED

REPO = {
    ".gitignore": "deploy_secrets.py\nlocal/*.py\n",
    "config/__init__.py": "",
    "config/secrets.py": 'class Vault:\n    """VAULT_SENTINEL_S3CR3T"""\n    def open_vault(self): ...\n\n'
                         'VAULT_KEY = "VAULT_SENTINEL_S3CR3T"\n',
    "deploy_secrets.py": 'class Deploy:\n    """DEPLOY_SENTINEL_TOKEN"""\n    def deploy_now(self): ...\n\n'
                         "DEPLOY_ID = 'DEPLOY_SENTINEL_TOKEN'\n",
    "local/__init__.py": "",
    "local/conf.py": 'class LocalConf:\n    """LOCAL_SENTINEL_CONF"""\n    def local_setting(self): ...\n',
    "settings.py": f'AWS_ACCESS_KEY_ID = "{AWS_KEY}"\ndb_password = "{PASSWORD}"\n\nSIGNING_KEY = """{PEM}"""\n\n\n'
                   "def connect(host):\n    return host\n",
    "inventory.py": 'class Inventory:\n    """Stock of items."""\n    def restock(self, n: int) -> None: ...\n',
    "app.py": "from config.secrets import Vault, VAULT_KEY\nimport deploy_secrets\n"
              "from local.conf import LocalConf\nfrom settings import connect, AWS_ACCESS_KEY_ID\n"
              "from inventory import Inventory\n\n\ndef run(v: Vault, c: LocalConf, d: deploy_secrets.Deploy):\n"
              "    inv = Inventory()\n    inv.restock(3)\n    v.",
}


@pytest.fixture
def repo(tmp_path) -> Path:
    root = write_tree(tmp_path / "repo", REPO)
    (root / ".git").mkdir()
    outside = write_tree(tmp_path / "outside", {"target.py": "class Outside:\n    '''OUTSIDE_SENTINEL_LINK'''\n"})
    (root / "leak.py").symlink_to(outside / "target.py")
    return root


def config_for(tmp_path, **changes) -> ContextConfig:
    return ContextConfig(index_dir=tmp_path / "cache" / "index", jedi_cache_dir=tmp_path / "cache" / "jedi",
                         slow_provider_deadline_ms=None, budget_tokens=4000, **changes)


@pytest.fixture
def engine(repo, tmp_path):
    e = ContextEngine(repo, config_for(tmp_path), slow_executor=ThreadPoolExecutor(max_workers=1))
    e.build()
    yield e
    e.close()


def leaks(text: str) -> list[str]:
    return [p for p in PLANTED if p in text]


def open_excluded_buffers(engine: ContextEngine, repo: Path) -> None:
    """The editor has the excluded files open (and edits them): a second route to the prompt."""
    for rel in ("config/secrets.py", "deploy_secrets.py", "local/conf.py", "leak.py"):
        text = (repo / rel).read_text() + "\n\n# VAULT_SENTINEL_S3CR3T edited\n"
        engine.set_buffer(str(repo / rel), text)
        engine.set_buffer(str(repo / rel), text, edited_line=2)


# -- the routes -----------------------------------------------------------------------------------------------------


def test_no_excluded_text_in_any_record(engine, repo):
    open_excluded_buffers(engine, repo)
    text = (repo / "app.py").read_text()
    lines = text.split("\n")
    ctx = engine.context(str(repo / "app.py"), text, len(lines), len(lines[-1]) + 1, providers=KINDS, wait=True)
    # What reached the prompt, and what the packer dropped as another record's duplicate (it came through too).
    came = ctx.records + [r for r, why in ctx.packed.dropped if why == "duplicate"]
    assert {"imports", "typed_holes", "retrieval", "repo_map"} <= {r.kind for r in came}  # every route was open
    assert any(r.path == "inventory.py" for r in ctx.records)  # allowed files still come through
    for r in came:
        assert r.path not in ("config/secrets.py", "deploy_secrets.py", "local/conf.py", "leak.py"), r
        assert leaks(r.text) == [], (r.kind, r.path, r.text)
    assert any(REDACTED in r.text for r in ctx.records if r.path == "settings.py")


def test_no_excluded_text_in_jedi_cache_and_it_is_private(engine, repo, tmp_path):
    text = (repo / "app.py").read_text()
    engine.context(str(repo / "app.py"), text, 10, 5, providers=("imports", "typed_holes"), wait=True)
    jedi_dir = tmp_path / "cache" / "jedi"
    pickles = [p for p in jedi_dir.rglob("*.pkl")]
    assert pickles  # jedi did cache the project files it parsed, in our cache
    for p in pickles:
        data = p.read_bytes()
        assert not [s for s in EXCLUDED if s.encode() in data], p
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    for d in [jedi_dir, *(p.parent for p in pickles)]:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_index_stores_no_secret_and_is_private(engine, tmp_path):
    db = engine.index.db_path
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT signature || doc FROM definitions").fetchall()
    conn.close()
    assert rows and not [r for r in rows if leaks(r[0])]
    assert 'AWS_ACCESS_KEY_ID = "<redacted>"' in [r[0] for r in rows]
    for suffix in ("", "-wal", "-shm"):
        assert stat.S_IMODE(os.stat(str(db) + suffix).st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700


def test_prompt_received_by_endpoint_holds_no_excluded_text(repo, tmp_path, monkeypatch):
    from test_remote import FakeEndpoint, sse

    from repocomplete.model_runtime.config import RuntimeConfig
    from repocomplete.model_runtime.remote import RemoteEngine
    from repocomplete.pipeline import Completer, CompletionOptions

    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    server = FakeEndpoint()
    server.replies = [sse("open_vault()")]
    model = RemoteEngine(RuntimeConfig(endpoint=server.url, endpoint_model="Qwen2.5-Coder-1.5B", endpoint_retries=0))
    completer = Completer(model, config_for(tmp_path),
                          make_context_engine=lambda root, cfg: ContextEngine(
                              root, cfg, slow_executor=ThreadPoolExecutor(max_workers=1)))
    try:
        workspace = completer.open_workspace(repo)
        open_excluded_buffers(workspace, repo)
        text = (repo / "app.py").read_text()
        completer.complete(str(repo / "app.py"), text, len(text), CompletionOptions(context="repo"))
    finally:
        completer.close()
        server.close()
    prompt = server.posts()[-1]["prompt"]
    assert "inventory.py" in prompt and "restock" in prompt  # repository context was sent
    assert leaks(prompt) == []
    assert REDACTED in prompt


# -- scrubbing ------------------------------------------------------------------------------------------------------


def test_scrub_masks_credential_shapes_and_keeps_code_shape():
    text = (f'key = "{AWS_KEY}"\npassword = "{PASSWORD}"\nPEM = """{PEM}"""\n'
            f"gh = 'ghp_{'a1B2' * 9}'\nx = 1\n")
    out = scrub(text, "settings.py")
    assert leaks(out) == [] and "ghp_" not in out
    assert out.count("\n") == text.count("\n")
    assert out.split("\n")[0] == f'key = "{REDACTED}"'
    assert out.split("\n")[1] == f'password = "{REDACTED}"'
    assert "-----BEGIN RSA PRIVATE KEY-----" in out and "-----END RSA PRIVATE KEY-----" in out
    assert scrub(out, "settings.py") == out  # idempotent
    # code that names secrets without holding one is left alone (the same object comes back)
    code = 'password = get_password()\ntoken = request.headers["token"]\nif password == "":\n    pass\n'
    assert scrub(code, "a.py") is code


@pytest.mark.parametrize("token", [
    "ghp_" + "a1B2" * 9,  # GitHub (the plugin reports only `ghp`)
    "glpat-" + "x7Yz" * 5,  # GitLab
    "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",  # Stripe
    "xoxb-1234567890-0987654321-" + "AbCdEfGhIjKlMnOpQrStUvWx",  # Slack
    "pypi-AgEIcHlwaS5vcmc" + "A1b2C3d4E5f6G7h8I9j0" * 4,  # PyPI
])
def test_a_token_is_masked_whole_not_only_the_part_its_plugin_reports(token):
    text = f"TOKEN = '{token}'\nprint(TOKEN)\n"
    out = scrub(text, "tokens.py")
    assert out.split("\n")[0] == f"TOKEN = '{REDACTED}'", out
    assert token[-12:] not in out


def test_scrub_after_an_edit_scans_only_new_lines_and_equals_a_whole_scrub(monkeypatch):
    """A path scrubbed again (the index after an edit, the prefix at each keystroke) gives what scrubbing the whole
    text gives, secrets added, removed, moved, a key block appearing (the path is scrubbed whole from then on)."""
    from repocomplete.context_engine import scrub as scrub_module

    rng = random.Random(7)
    body = [f"def f{i}(x):\n    return x + {i}" for i in range(60)]
    secrets = [f'key = "{AWS_KEY}"', f'password = "{PASSWORD}"', f"gh = 'ghp_{'a1B2' * 9}'"]
    scanned: list[int] = []
    whole = scrub_module._scrub

    def counting(text, path):
        scanned.append(text.count("\n") + 1)
        return whole(text, path)

    monkeypatch.setattr(scrub_module, "_scrub", counting)
    path = f"edited_{rng.random()}.py"
    lines = list(body)
    scrub("\n".join(lines), path)  # the first time, the whole text is scanned
    for step in range(40):
        i = rng.randrange(len(lines) + 1)
        if step % 4 == 3 and len(lines) > 10:
            del lines[i - 1]
        else:
            lines.insert(i, rng.choice(secrets) if step % 3 == 0 else f"y{step} = {step}")
        text = "\n".join(lines)
        scanned.clear()
        out = scrub(text, path)
        assert out == whole(text, path), step
        assert leaks(out) == [] and "ghp_" not in out
        assert sum(scanned) <= 3, (step, scanned)  # the new line, not the file
        prefix = text[: rng.randrange(len(text))]  # a keystroke's prefix: its lines are known, the last may not be
        assert scrub(prefix, path) == whole(prefix, path)
    keyed = "\n".join(lines[:5] + [f'PEM = """{PEM}"""'] + lines[5:])
    assert scrub(keyed, path) == whole(keyed, path) and leaks(scrub(keyed, path)) == []
    edited = keyed.replace("return x + 1\n", "return x + 2\n", 1)
    scanned.clear()
    assert scrub(edited, path) == whole(edited, path)
    assert scanned[0] == edited.count("\n") + 1  # a path with a key block: whole again


# -- paths ----------------------------------------------------------------------------------------------------------


def test_non_utf8_name_is_skipped_and_never_crashes(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    (root / "ok.py").write_text("x = 1\n")
    with open(os.path.join(os.fsencode(root), b"caf\xe9.py"), "w") as f:
        f.write("y = 2\n")
    os.mkdir(os.path.join(os.fsencode(root), b"d\xe9"))
    with open(os.path.join(os.fsencode(root), b"d\xe9", b"z.py"), "w") as f:
        f.write("z = 3\n")
    for _ in range(2):  # a later run too
        with RepoIndex(root, ContextConfig(index_dir=tmp_path / "index")) as index:
            stats = index.build()
            assert index.files() == ["ok.py"]
            reasons = {s.path: s.reason for s in stats.skipped}
            assert reasons == {"caf\\xe9.py": "file name not UTF-8", "d\\xe9/": "file name not UTF-8"}
            assert index.update_file(os.path.join(os.fsdecode(root), os.fsdecode(b"caf\xe9.py"))) is False


def test_symlinked_current_file_yields_nothing_and_keeps_the_root(repo, tmp_path, monkeypatch, capsys):
    home = tmp_path / "cache-home"
    monkeypatch.setattr("platformdirs.user_cache_dir", lambda appname=None, *a, **k: str(home / appname))
    monkeypatch.chdir(repo)
    code = main(["context", "leak.py", "--line", "2", "--col", "1", "--json", "--providers", "retrieval,repo_map"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "OUTSIDE_SENTINEL" not in out and out.strip() == "[]"
    index_dir = home / "repocomplete" / "index"
    assert db_path_for(repo, ContextConfig(index_dir=index_dir)).exists()
    assert not db_path_for(tmp_path / "outside", ContextConfig(index_dir=index_dir)).exists()
    assert Gate(repo).reason("leak.py") == "symlink outside the root"


def test_symlinked_root_and_current_file_not_its_own_context(repo, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(repo)
    text = "from inventory import Inventory\n\ninv = Inventory()\ninv.restock(3)\n" * 3 + "inv."
    e = ContextEngine(link, config_for(tmp_path), slow_executor=ThreadPoolExecutor(max_workers=1))
    try:
        e.build()
        assert "inventory.py" in e.index.files()
        (repo / "user.py").write_text(text)
        e.file_changed(str(link / "user.py"))
        # the buffer through the link, the request through the real path: one file
        e.set_buffer(str(link / "user.py"), text)
        e.set_buffer(str(link / "user.py"), text, edited_line=2)
        for form in (str(repo / "user.py"), str(link / "user.py"), "user.py"):
            ctx = e.context(form, text, 13, 5, providers=("retrieval", "neighbours"))
            assert ctx.records and all(r.path != "user.py" and not r.path.startswith("/") for r in ctx.records)
    finally:
        e.close()


@pytest.mark.parametrize("bad", ["missing", "file"])
def test_bad_root_exits_2_and_creates_nothing(repo, tmp_path, monkeypatch, capsys, bad):
    home = tmp_path / "cache-home"
    monkeypatch.setattr("platformdirs.user_cache_dir", lambda appname=None, *a, **k: str(home / appname))
    root = tmp_path / "nonexistent" if bad == "missing" else repo / "app.py"
    for argv in (["context", str(repo / "app.py"), "--line", "1", "--col", "1", "--root", str(root)],
                 ["index", str(root)]):
        assert main(argv) == 2
        _, err = capsys.readouterr()
        assert err.startswith("repocomplete: workspace root") and err.count("\n") == 1
    assert not home.exists()


# -- workspace bounds ------------------------------------------------------------------------------------------------


def test_filesystem_root_home_and_system_folders_refused(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for folder in ("/", str(home), "/etc", "/usr", "/tmp", "/proc"):
        if os.path.isdir(folder):
            with pytest.raises(WorkspaceError):
                check_workspace_root(folder)
    with pytest.raises(WorkspaceError, match="refusing"):
        ContextEngine(home, ContextConfig(index_dir=tmp_path / "index"))
    assert not (tmp_path / "index").exists()
    monkeypatch.setattr("platformdirs.user_cache_dir", lambda appname=None, *a, **k: str(tmp_path / "c" / appname))
    assert main(["index", "/"]) == 2
    assert "refusing" in capsys.readouterr().err
    assert check_workspace_root(tmp_path) == tmp_path  # an ordinary folder is fine


def test_workspace_caps(tmp_path):
    root = write_tree(tmp_path / "r", {f"m{i}.py": f"x{i} = {i}\n" * 10 for i in range(6)})
    with RepoIndex(root, ContextConfig(index_dir=tmp_path / "i", max_workspace_files=3)) as index:
        stats = index.build()
        assert len(index.files()) == 3
        assert any("workspace limit" in s.reason for s in stats.skipped)
    with RepoIndex(root, ContextConfig(index_dir=tmp_path / "j", max_workspace_bytes=100)) as index:
        index.build()
        assert len(index.files()) == 1
