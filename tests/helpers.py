"""Small helpers shared by the tests (pytest puts this folder on sys.path)."""

from __future__ import annotations

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
