"""The model runtime's error types; callers (the command line, the server, the evaluation) catch these by type."""


class ConfigError(ValueError):
    """A runtime setting out of range or unknown; the message names it."""


class ModelLoadError(Exception):
    """A model or adapter could not be found or read; the message says which and why, in one line."""


class RemoteError(Exception):
    """The endpoint could not be reached or answered something unusable; the message is one line for people."""
