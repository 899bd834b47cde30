"""The model runtime's error types; callers (the command line, the server, the evaluation) catch these by type."""


class ConfigError(ValueError):
    """A runtime setting out of range or unknown; the message names it."""


class ModelLoadError(Exception):
    """A model or adapter could not be found or read; the message says which and why, in one line."""


class RemoteError(Exception):
    """The endpoint could not be reached or answered something unusable; the message is one line for people."""


class SlabFull(RuntimeError):
    """The working KV slab would pass its bound (`RuntimeConfig.slab_tokens` rows). The engine keeps its prompts and
    generations within it, so this reaches a caller only that hands the engine a token prompt too long itself."""

    def __init__(self, needed: int, max_tokens: int):
        super().__init__(f"{needed} tokens do not fit the KV slab of {max_tokens} rows "
                         "(RuntimeConfig.max_context_tokens + max_new_tokens)")
        self.needed = needed
        self.max_tokens = max_tokens
