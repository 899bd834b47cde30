"""Small helpers shared by the tests (pytest puts this folder on sys.path)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    """Write {relative path: text or bytes} under root, creating folders; return root."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def hostile_files() -> dict[str, str]:
    """Small files that once stalled the server: 200 KB of unclosed brackets (Python and JavaScript), one 900 KB
    line, deep nesting, NUL bytes."""
    return {
        "unclosed.py": ("(" * 99 + "\n") * 2000,
        "unclosed.js": "[" * 200_000,
        "oneline.py": "x = [" + ", ".join(str(i) for i in range(130_000)) + "]\n",
        "deep.py": "x = " + "[" * 50_000 + "]" * 50_000 + "\n",
        "nul.py": "def f\x00(a):\n    return (\x00\n" * 5000,
    }


# -- processes (Linux: read from /proc) ----------------------------------------------------------------------------


def process_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_gone(pids, timeout: float) -> list[int]:
    """Wait until none of `pids` is alive, at most `timeout` seconds; the ones still alive."""
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if process_alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def child_pids(pid: int) -> set[int]:
    """The pids of a process's children."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.add(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return found


def needs_interpreted_triton(kernel):
    """A pytest mark that skips unless `kernel` (a kernels/ module's @triton.jit function, None without triton) was
    defined under TRITON_INTERPRET=1, the only way it runs on CPU tensors."""
    import pytest

    interpreted = kernel is not None and type(kernel).__name__ == "InterpretedFunction"
    return pytest.mark.skipif(not interpreted, reason="triton missing, or not in interpreter mode")
