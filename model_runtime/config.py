"""The one configuration dataclass of the model runtime.

Every knob of loading and decoding lives here, with defaults that run on a laptop CPU. The command line, the
LSP server and the benchmarks build one of these; nothing else reads environment variables or constants.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from repocomplete.model_runtime.errors import ConfigError

MONITOR_KINDS = ("deref", "scope", "args", "imports")  # the monitors the pipeline has (RuntimeConfig.monitors)

DEFAULT_MODEL = "default"
QUANTIZE_MODES = ("auto", "none", "int8", "int4")
ATTENTION_MODES = ("auto", "dense", "sparse")
KV_DTYPES = ("auto", "float32", "bfloat16")


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("repocomplete"))


def private_dir(path: Path) -> Path:
    """Create a cache folder (and its missing parents) for the user alone (0700), tightening an existing one: the
    converted models and the CPU plans sit beside the index, whose excerpts of the user's code are private."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        path.chmod(0o700)
    except OSError:  # not ours (a shared cache given on purpose): leave it as it is
        pass
    return path


@dataclass
class RuntimeConfig:
    # What to load: "default" (the embedded SmolLM2-135M), a Hugging Face directory or a .gguf path.
    model: str = DEFAULT_MODEL
    adapter: str | None = None  # a peft LoRA adapter directory, merged into the weights at load
    device: str | None = None  # None: cuda when present, else cpu
    dtype: str | None = None  # None: bfloat16 on cuda; on the cpu the measured plan's (float32 with --quantize none)
    # "auto": on the CPU, the weight form and activation dtype of each phase (decode, prefill) measured once per
    # machine (model_runtime.cpu_path: int8 with bf16 activations decodes 2.3x faster than fp32 on an AVX-512 CPU
    # with bf16, 3x slower on an AVX2 one); none on CUDA. "int8": weight-only int8 linears with bf16 activations;
    # "int4": group-wise int4 (GGUF Q4_1's layout), +2.6% NLL; "none": dense weights in the dtype.
    quantize: str = "auto"
    threads: int | None = None  # CPU threads; None: the physical cores this process may use (affinity, cgroup)
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())  # converted GGUF models land here
    # Remote backend: an OpenAI-compatible completions endpoint replaces the local model when set.
    endpoint: str | None = None
    endpoint_model: str | None = None  # the "model" field sent to the endpoint
    endpoint_timeout_s: float = 30.0
    endpoint_retries: int = 2
    fim_template: str | None = None  # force a template by name; None: chosen from the tokenizer
    fim_order: str = "auto"  # "psm", "spm", or "auto": SPM where the family has it (a keystroke only changes the end)
    # Decoding.
    max_new_tokens: int = 64
    multiline: bool = False
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    time_budget_s: float = 5.0  # decoding stops after this long, whatever it has (prefill is not counted)
    token_healing: bool = True
    # A single-line completion on a line that has no code yet may open a line comment. Off by default: small models
    # often answer such a line with a comment, which is rarely what the user wanted there (typing the comment's
    # first character asks for one, and a completion after code may still end in one).
    suggest_comments: bool = False
    # A completion that falls into a loop (a piece written four times in a row) ends at its first copy
    # (stopping.loop_end); off: it runs to its other stop rules.
    stop_loops: bool = True
    # Monitor-guided decoding (monitor.py): the monitors that mask each step's tokens with what static analysis
    # allows (deref, scope, args, imports); () none; None the default (`active_monitors`): every monitor with a
    # local model, none with an endpoint (the remote backend sees text). On by default since session 27: valid
    # identifiers 95.7-98.7% on the member suites against 82-86% without, no loss of edit similarity (eval/RESULTS.md,
    # "Session 27").
    monitors: tuple[str, ...] | None = None
    # Greedy decoding verifies up to this many tokens drafted from the prompt in one forward pass (prompt lookup;
    # up to 16 rows stay in the decode kernels); 0 turns it off. Output is the same token for token.
    speculative_tokens: int = 8
    # Alternatives per request (an editor cycles through them): the first is the completion above, the others are
    # sampled (batch.py: at `temperature`, or 0.8 when greedy; top_p 0.95; seed + i) after the same prompt, decoded
    # together over its shared K/V. Duplicates and empty ones are dropped.
    candidates: int = 1
    # Prefix-KV cache.
    prefix_cache: bool = True
    # The bound of the prefix cache's block pool (kv_cache.BlockPool), whatever the prompts: the least recently
    # used blocks go first, and a prompt with more blocks than fit stores only the blocks that fit.
    prefix_cache_bytes: int = 512 * 2**20
    block_size: int = 16
    # Prompt tokens kept (the engine drops the start of a longer prompt). The pipeline keeps repository context
    # within it and within the model's window (max_position_embeddings) less max_new_tokens: SmolLM2-135M's 8192.
    max_context_tokens: int = 8192
    # A long uncached prompt is prefilled in chunks of this many tokens, each stored in the prefix cache at once, so
    # a cancelled cold prefill (the user typed on) is resumed by the next request instead of redone.
    prefill_chunk_tokens: int = 512
    # Attention over long prompts (model_runtime/sparse.py, kernels/): "dense" reads every cached token; "sparse" attends
    # to the sink tokens, the recent window, the current file's tokens and the top-k repository-context blocks chosen
    # per K/V head from per-block key summaries (Quest), and prefills long uncached tails block-sparse (MInference);
    # "auto": sparse once the prompt reaches `sparse_min_tokens`, dense below.
    attention: str = "auto"
    sparse_min_tokens: int = 4096
    sparse_block_tokens: int = 64  # the unit of selection (a multiple of block_size keeps prefix blocks whole)
    sparse_top_k: int = 16  # repository-context blocks per K/V head and decode step (per query block in prefill)
    sparse_sink_tokens: int = 64
    sparse_window_tokens: int = 512
    # The dtype of the decode KV cache: "auto" (CPU: the measured plan's under dense attention, bfloat16 where sparse
    # attention may run: its gathered blocks are contiguous, where bf16 is the fast form), "float32" or "bfloat16".
    kv_dtype: str = "auto"
    fast_forward: bool = True  # our own Llama-family forward where the architecture allows (fast_llama.py)
    # A static-shape decode step under torch.compile (artefacts kept in cache_dir/inductor). Off: on the 2-core AVX-512
    # EPYC it decoded 2.9 tok/s against 62 eager at 2k context and took 118 s to compile, and it rules out speculation.
    compile_decode: bool = False

    @property
    def slab_tokens(self) -> int:
        """The bound of the working KV slab in rows (kv_cache.SlabCache): the longest prompt kept plus the tokens
        generated. A request asking for more than `max_new_tokens` decodes until the slab is full ("length")."""
        return self.max_context_tokens + self.max_new_tokens

    @property
    def active_monitors(self) -> tuple[str, ...]:
        """The monitors in use: those asked for, else (None) every one with a local model and none with an endpoint."""
        if self.monitors is not None:
            return tuple(self.monitors)
        return () if self.endpoint else MONITOR_KINDS

    def replace(self, **changes) -> "RuntimeConfig":
        return dataclasses.replace(self, **changes)

    def to_argv(self) -> list[str]:
        """The `repocomplete serve` flags that reproduce this config (the knobs the command line has; the others,
        cache_dir, time_budget_s and the like, are the defaults on that side)."""
        argv = ["--model", str(self.model), "--quantize", self.quantize, "--max-tokens", str(self.max_new_tokens),
                "--temperature", repr(float(self.temperature))]
        for flag, value in (("--adapter", self.adapter), ("--endpoint", self.endpoint), ("--device", self.device),
                            ("--dtype", self.dtype), ("--fim-template", self.fim_template), ("--threads", self.threads)):
            if value:
                argv += [flag, str(value)]
        argv += ["--speculative-tokens", str(self.speculative_tokens), "--candidates", str(self.candidates),
                 "--attention", self.attention, "--sparse-min-tokens", str(self.sparse_min_tokens),
                 "--sparse-top-k", str(self.sparse_top_k)]
        if not self.token_healing:
            argv.append("--no-token-healing")
        if self.suggest_comments:
            argv.append("--suggest-comments")
        if not self.stop_loops:
            argv.append("--no-stop-loops")
        if self.monitors is not None:
            argv += ["--monitors", ",".join(self.monitors) or "none"]
        if self.compile_decode:
            argv.append("--compile")
        if self.multiline:
            argv.append("--multiline")
        return argv

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.block_size < 1:
            raise ConfigError(f"block_size must be >= 1, got {self.block_size}")
        if self.prefix_cache_bytes < 0:
            raise ConfigError("prefix_cache_bytes must be >= 0")
        if self.quantize not in QUANTIZE_MODES:
            raise ConfigError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {self.quantize!r}")
        if self.fim_order not in ("auto", "psm", "spm"):
            raise ConfigError(f"fim_order must be 'auto', 'psm' or 'spm', got {self.fim_order!r}")
        if not 0 <= self.speculative_tokens <= 15:
            raise ConfigError(f"speculative_tokens must be in [0, 15], got {self.speculative_tokens}")
        if not 1 <= self.candidates <= 8:
            raise ConfigError(f"candidates must be in [1, 8], got {self.candidates}")
        if self.prefill_chunk_tokens < 1:
            raise ConfigError(f"prefill_chunk_tokens must be >= 1, got {self.prefill_chunk_tokens}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        unknown = [m for m in self.monitors or () if m not in MONITOR_KINDS]
        if unknown:
            raise ConfigError(f"unknown monitors {unknown}; known: {', '.join(MONITOR_KINDS)}")
        if self.monitors and self.endpoint:
            raise ConfigError("monitors need a local model: the remote backend (endpoint) returns text, not the "
                              "logits a monitor masks; use --monitors none with --endpoint")
        if self.attention not in ATTENTION_MODES:
            raise ConfigError(f"attention must be one of {', '.join(ATTENTION_MODES)}, got {self.attention!r}")
        if self.kv_dtype not in KV_DTYPES:
            raise ConfigError(f"kv_dtype must be one of {', '.join(KV_DTYPES)}, got {self.kv_dtype!r}")
        if self.sparse_block_tokens < 1 or self.sparse_block_tokens % self.block_size:
            raise ConfigError(f"sparse_block_tokens must be a positive multiple of block_size ({self.block_size}), "
                              f"got {self.sparse_block_tokens}")
        for name in ("sparse_min_tokens", "sparse_top_k", "sparse_sink_tokens", "sparse_window_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_context_tokens < 16:
            raise ConfigError("max_context_tokens must be >= 16")
