"""repocomplete: repository-aware code completion (the command line lives in repocomplete.cli).

Installed, the layers are subpackages of this package (`repocomplete.context_engine`, ...). In a source checkout
they are the repository's top-level folders: the checkout's root joins this package's search path, so that a
checkout (a git worktree, a CI clone) imports its own layers, never those of another checkout that an editable
install points at.
"""

import os as _os

__version__ = "0.1.0"

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isfile(
    _os.path.join(_root, "model_runtime", "__init__.py")
):
    __path__.append(_root)  # noqa: F821 (a package's __path__)
