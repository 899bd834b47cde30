"""The one configuration dataclass of the context engine."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from repocomplete.context_engine.errors import ContextConfigError
from repocomplete.context_engine.records import KINDS

LANGUAGES = ("python", "javascript", "typescript", "go", "java", "rust")

# Folders that hold other people's code or build output: never indexed.
SKIP_DIRS = (
    ".git", ".hg", ".svn", "node_modules", ".venv", "venv", "env", "__pycache__", "build", "dist", "target",
    "vendor", "_vendor", "third_party", "site-packages", ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache",
    ".idea", ".vscode", ".gradle", ".next", "out", "coverage", ".eggs",
)

# Files that may hold secrets: never read, so they can never reach a prompt (gitignore syntax).
SECRET_PATTERNS = (
    ".env", ".env.*", "*.env", "*.pem", "*.key", "*.crt", "*.p12", "*.pfx", "*.jks", "*.keystore",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".netrc", ".npmrc", ".pypirc", ".git-credentials",
    "credentials", "credentials.*", "*credentials*.json", "secrets.*", "*.secret", "*.secrets", ".htpasswd",
    "service-account*.json", "*.kdbx", ".aws/*", ".ssh/*", ".docker/config.json",
)


def default_cache_root() -> Path:
    """repocomplete's own cache folder (the model runtime's converted models and CPU plans live there too)."""
    return Path(platformdirs.user_cache_dir("repocomplete"))


def default_index_dir() -> Path:
    return default_cache_root() / "index"


def default_jedi_dir() -> Path:
    return default_cache_root() / "jedi"


@dataclass
class ContextConfig:
    # The token budget for repository context (the current file's own window comes on top of it).
    budget_tokens: int = 1024
    providers: tuple[str, ...] = KINDS
    # Share of the budget each provider may fill before the others have had theirs; leftovers are redistributed.
    quotas: dict[str, float] = field(
        default_factory=lambda: {"typed_holes": 0.3, "imports": 0.3, "retrieval": 0.2, "repo_map": 0.1, "outline": 0.1,
                                 "neighbours": 0.05}
    )
    languages: tuple[str, ...] = LANGUAGES
    max_file_bytes: int = 1_000_000
    # A workspace's bounds: the walk stops past this many files or bytes (what it found so far is indexed).
    max_workspace_files: int = 50_000
    max_workspace_bytes: int = 1 << 30
    # Unsaved editor buffers kept (their parse, retrieval windows and neighbours entry): the most recently opened
    # or edited ones; the server sends no others (lsp_server.documents), those get in-file context until edited.
    max_buffers: int = 32
    skip_dirs: tuple[str, ...] = SKIP_DIRS
    secret_patterns: tuple[str, ...] = SECRET_PATTERNS
    # The SQLite caches, one per workspace (looked up at construction, so tests can redirect it).
    index_dir: Path = field(default_factory=lambda: default_index_dir())
    # Keep retrieval's BM25 index and the repo map's graph data in a snapshot beside the workspace's index, so that
    # a restart maps them instead of reading every file again (engine.py). False: rebuilt from the files each start.
    warm_state: bool = True
    # jedi's parse cache (pickled syntax trees of project files), in the jedi worker; private like the index.
    jedi_cache_dir: Path = field(default_factory=lambda: default_jedi_dir())
    watch: bool = False  # live updates through watchdog
    # Retrieval: sliding windows over files (RepoCoder/CrossCodeEval use 20 lines, stride 10).
    window_lines: int = 20
    window_stride: int = 10
    query_lines: int = 10  # the lines before the cursor that query retrieval
    dense: bool = False  # dense retrieval (faiss over all-MiniLM-L6-v2 embeddings) besides sparse BM25
    # How long a request waits for the jedi providers (imports, typed holes) before going without them; their
    # answer then serves the following keystrokes. None: always wait (evaluation, where results must not
    # depend on timing).
    slow_provider_deadline_ms: float | None = 15.0
    # One jedi call (a provider for one hole) may run this long once started; past it its worker process is
    # killed and a fresh one takes the next call. A request that waits for jedi (deadline None, `wait`) waits
    # for at most the call in progress and its own. None: no limit (evaluation).
    slow_provider_budget_ms: float | None = 10_000.0
    # Type inference for the bindings in scope (typed holes) stops after this long; the names are still listed.
    # None: no cut (evaluation, where records must not depend on the machine's load).
    infer_budget_ms: float | None = 120.0
    # Monitor-guided decoding: how long one completion's decode steps wait in all for the analysis of the
    # identifiers the model starts (`obj.` generated), and not at all for an answer the file's latest ones say
    # cannot come in time (`facts.Analyst`); a later answer leaves that identifier unconstrained (and is cached for
    # the next request). None: always wait (evaluation).
    monitor_wait_ms: float | None = 15.0

    def replace(self, **changes) -> "ContextConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        if self.budget_tokens < 0:
            raise ContextConfigError(f"budget_tokens must be >= 0, got {self.budget_tokens}")
        unknown = [p for p in self.providers if p not in KINDS]
        if unknown:
            raise ContextConfigError(f"unknown providers {unknown}; known: {', '.join(KINDS)}")
        unknown = [l for l in self.languages if l not in LANGUAGES]
        if unknown:
            raise ContextConfigError(f"unknown languages {unknown}; known: {', '.join(LANGUAGES)}")
        if self.max_workspace_files < 1 or self.max_workspace_bytes < 1:
            raise ContextConfigError("max_workspace_files and max_workspace_bytes must be >= 1")
        if self.max_buffers < 0:
            raise ContextConfigError(f"max_buffers must be >= 0, got {self.max_buffers}")
        if self.monitor_wait_ms is not None and self.monitor_wait_ms < 0:
            raise ContextConfigError(f"monitor_wait_ms must be >= 0, got {self.monitor_wait_ms}")
        if self.window_lines < 1 or self.window_stride < 1:
            raise ContextConfigError("window_lines and window_stride must be >= 1")
