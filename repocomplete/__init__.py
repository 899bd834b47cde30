"""repocomplete: repository-aware code completion (the command line lives in repocomplete.cli)."""

__version__ = "0.1.0"
