"""The context engine's error types; callers (the command line, the server, the evaluation) catch these by type."""


class InputError(Exception):
    """Bad input from the user (file, position, mode, suite); the message is one line meant for them."""


class ContextConfigError(ValueError):
    """A context-engine setting out of range or unknown; the message names it."""


class ParseTimeout(Exception):
    """Parsing a file ran past its time budget (pathological input): its symbols are unknown."""


class Cancelled(Exception):
    """Work stopped early because it was asked to (the server shutting down, a folder closed)."""
