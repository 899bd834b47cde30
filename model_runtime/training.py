"""LoRA fine-tuning of a model's unquantized base weights: the data format, the training loop, checkpoints.

A training example is a prompt exactly as the engine builds it (`encode_prompt`, the engine's truncation, token
healing) and a target: the text healing backed off, then the middle, then the template's end token. The loss is on
the target only. Examples are packed into rows of at most `batch_tokens` tokens; each example keeps its own
positions (position_ids restart at 0), which transformers turns into a block-diagonal causal mask, so packing
changes no logit (tests/test_finetune.py checks it).

The model trained is the base model as `resolve_model_dir` finds it: the embedded GGUF de-quantized to float32,
never the planned (fused, int8) model `load_model` returns for inference. The adapter only touches the upper
`layers` layers (backward stops there); on a CPU with bf16 the forward and backward run under bf16 autocast.

A run writes into its output directory: `checkpoint/` (the adapter, the optimizer, the step, the losses: what
`resume` continues from after a kill), `data.pt` (the examples, cut once), the final adapter with its record
(`adapters.RECORD`) and `training-report.json`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from repocomplete.model_runtime.adapters import AdapterRecord, write_record
from repocomplete.model_runtime.engine import encode_prompt, heal_prompt, stop_token_ids, truncate
from repocomplete.model_runtime.errors import ConfigError, ModelLoadError
from repocomplete.model_runtime.loading import undertrained_tokens
from repocomplete.model_runtime.templates import FimTemplate, PromptParts, end_token, get_template, model_view

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IGNORE = -100


@dataclass
class TrainExample:
    prompt: list[int]  # what the model reads (no loss)
    target: list[int]  # what it learns to write: the healed text, the middle, the end token
    path: str = ""
    kind: str = ""  # the curriculum's span kind

    def __len__(self) -> int:
        return len(self.prompt) + len(self.target)


def fim_example(tokenizer, template: FimTemplate, order: str, parts: PromptParts, middle: str, vocab,
                max_prompt_tokens: int, heal: bool = True, path: str = "", kind: str = "") -> TrainExample:
    """One example from prompt parts and the middle the model should write, encoded as the engine encodes it."""
    _, encoded = encode_prompt(tokenizer, template, model_view(template, parts), order)
    encoded = truncate(encoded, max_prompt_tokens)
    ids, healed = heal_prompt(encoded, parts.prefix, tokenizer, vocab) if heal else (encoded.ids, "")
    end = tokenizer.convert_tokens_to_ids(end_token(template))
    target = tokenizer.encode(healed + middle, add_special_tokens=False, split_special_tokens=True) + [end]
    return TrainExample(list(ids), target, path, kind)


@dataclass
class TrainConfig:
    steps: int = 200
    rank: int = 8
    alpha: float | None = None  # None: 2 x rank
    lr: float = 5e-4
    batch_tokens: int = 1024  # tokens per step (one packed row)
    layers: int | None = 8  # adapt the top N layers only (None: every layer)
    targets: tuple[str, ...] = LORA_TARGETS
    autocast: str = "auto"  # auto (bf16 where the device has it) | bf16 | fp32
    warmup: int = 10
    checkpoint_every: int = 25
    seed: int = 0
    device: str | None = None  # None: cuda when present, else cpu
    threads: int | None = None
    # Token ids whose embedding rows train too (peft's trainable tokens; where the output embedding is tied to the
    # input one, as in SmolLM2, the output rows are the same rows): the template's sentinels, so that its end token
    # gets an output row of its own instead of the direction every untrained token shares.
    token_rows: tuple[int, ...] = ()

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.rank < 1:
            raise ConfigError(f"rank must be >= 1, got {self.rank}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.batch_tokens < 16:
            raise ConfigError(f"batch tokens must be >= 16, got {self.batch_tokens}")
        if self.layers is not None and self.layers < 1:
            raise ConfigError(f"layers must be >= 1, got {self.layers}")
        if self.autocast not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"autocast must be auto, bf16 or fp32, got {self.autocast!r}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.autocast == "fp32":
        return None
    if config.autocast == "bf16" or device.type == "cuda" or cpu_has_bf16():
        return torch.bfloat16
    return None


# -- the base model and the adapter ----------------------------------------------------------------------------


def load_base(model_dir: Path, device: torch.device):
    """The base model's float32 weights from a Hugging Face directory (the de-quantized GGUF for the embedded one)."""
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        except Exception as e:
            raise ModelLoadError(f"cannot load model from {model_dir}: {type(e).__name__}: {e}") from None
    model.config.use_cache = False
    return model.to(device)


def add_lora(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model

    n = model.config.get_text_config().num_hidden_layers
    layers = list(range(max(0, n - config.layers), n)) if config.layers else None
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha or 2 * config.rank, lora_dropout=0.0,
                      target_modules=list(config.targets), layers_to_transform=layers,
                      layers_pattern="layers" if layers else None, bias="none", task_type="CAUSAL_LM",
                      trainable_token_indices=_token_indices(config.token_rows))
    torch.manual_seed(config.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, lora)


def _token_indices(rows: Sequence[int]) -> dict[str, list[int]] | None:
    return {"embed_tokens": sorted(set(rows))} if rows else None


def continue_adapter(model, adapter_dir: Path, token_rows: Sequence[int] = ()):
    """A trainable peft model whose LoRA weights start from an existing adapter (its rank and layers); `token_rows`
    that the adapter does not train yet are added, starting from the base model's rows. Without `token_rows` the
    adapter's own embedding rows stay as they are, frozen: a gradient for them would have to flow back through
    every layer (about twice the step time of LoRA on the top 8 layers alone: `bench micro train`)."""
    from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    from repocomplete.model_runtime.adapters import check_adapter_dir

    check_adapter_dir(adapter_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = LoraConfig.from_pretrained(str(adapter_dir))
        had = set((config.trainable_token_indices or {}).get("embed_tokens", []))
        if not token_rows or set(token_rows) <= had:
            peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)
            if not token_rows:
                for name, param in peft_model.named_parameters():
                    if "trainable_tokens" in name:
                        param.requires_grad_(False)
            return peft_model
        config.trainable_token_indices = _token_indices([*had, *token_rows])
        config.inference_mode = False
        peft_model = get_peft_model(model, config)
        fresh = get_peft_model_state_dict(peft_model)  # the new rows' starting values (the base model's rows)
        saved = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(peft_model, {**fresh, **saved})
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ModelLoadError(f"adapter {adapter_dir} holds weights this model does not have: {unexpected[:3]}")
    return peft_model


# -- batches ---------------------------------------------------------------------------------------------------


def pack(examples: Sequence[TrainExample], device) -> dict[str, torch.Tensor]:
    """One row: the examples back to back, positions restarting at each, loss on the targets only."""
    ids, labels, positions = [], [], []
    for ex in examples:
        seq = ex.prompt + ex.target
        ids += seq
        # Label of position i is token i (transformers shifts): the prompt's tokens are not learnt.
        labels += [IGNORE] * len(ex.prompt) + ex.target
        positions += list(range(len(seq)))
    as_tensor = lambda values: torch.tensor([values], dtype=torch.long, device=device)
    return {"input_ids": as_tensor(ids), "labels": as_tensor(labels), "position_ids": as_tensor(positions)}


def next_row(examples: Sequence[TrainExample], cursor: int, batch_tokens: int) -> tuple[list[TrainExample], int]:
    """The examples of the next row from `cursor` (wrapping around), at most batch_tokens tokens (at least one)."""
    row, total = [], 0
    n = len(examples)
    while len(row) < n:
        ex = examples[cursor % n]
        if row and total + len(ex) > batch_tokens:
            break
        row.append(ex)
        total += len(ex)
        cursor += 1
    return row, cursor


def row_loss(model, batch: dict[str, torch.Tensor], dtype: torch.dtype | None) -> tuple[torch.Tensor, int]:
    """Summed token loss over the targets of a packed row, and the number of target tokens."""
    device_type = batch["input_ids"].device.type
    with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    labels = batch["labels"][:, 1:]
    logits = logits[:, :-1].float()
    # A packed row: the label after an example's last token is the next example's first prompt token (IGNORE).
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                             ignore_index=IGNORE, reduction="sum")
    return loss, int((labels != IGNORE).sum())


@torch.no_grad()
def eval_loss(model, examples: Sequence[TrainExample], batch_tokens: int, dtype, device) -> float | None:
    """Mean token loss on the targets of `examples` (None without examples)."""
    if not examples:
        return None
    was = model.training
    model.eval()
    total, count, cursor = 0.0, 0, 0
    while cursor < len(examples):
        row, new = next_row(examples[cursor:], 0, batch_tokens)
        cursor += new
        loss, n = row_loss(model, pack(row, device), dtype)
        total, count = total + float(loss), count + n
    model.train(was)
    return total / max(1, count)


@torch.no_grad()
def held_out_generation(model, tokenizer, examples: Sequence[TrainExample], end_ids: Sequence[int], dtype, device,
                        max_new_tokens: int = 48) -> tuple[float, float] | None:
    """Greedy decoding of each held-out prompt until it ends as the engine ends it (any of its stop tokens: the
    adapter's end comes out as any of SmolLM2's untrained tokens): (the share that writes its target exactly, the
    mean edit similarity to it, 0-100, as `eval score` counts it: rapidfuzz's ratio of the stripped texts)."""
    from rapidfuzz import fuzz

    if not examples:
        return None
    was = model.training
    model.eval()
    ends = sorted(end_ids)
    hits, similarity = 0, 0.0
    for ex in examples:
        ids = torch.tensor([ex.prompt], dtype=torch.long, device=device)
        want = ex.target[:-1]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=min(max_new_tokens, len(want) + 8), do_sample=False,
                                 eos_token_id=ends, pad_token_id=ends[0])
        got = out[0, ids.shape[1]:].tolist()
        stop = next((i for i, t in enumerate(got) if t in end_ids), len(got))
        text, target = tokenizer.decode(got[:stop]), tokenizer.decode(want)
        hits += text == target
        similarity += fuzz.ratio(text.strip(), target.strip())
    model.train(was)
    return hits / len(examples), round(similarity / len(examples), 2)


# -- checkpoints -----------------------------------------------------------------------------------------------


def _save_checkpoint(model, optimizer, state: dict, out: Path) -> None:
    """Write the checkpoint into a temporary sibling and rename it: a kill leaves the previous one whole."""
    tmp = out / "checkpoint.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "adapter")
    torch.save({"optimizer": optimizer.state_dict(), "state": state, "rng": torch.get_rng_state()}, tmp / "state.pt")
    final = out / "checkpoint"
    old = out / "checkpoint.old"
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def _load_checkpoint(model, optimizer, out: Path) -> dict:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    ckpt = out / "checkpoint"
    if not (ckpt / "state.pt").is_file() and (out / "checkpoint.old" / "state.pt").is_file():
        ckpt = out / "checkpoint.old"  # killed between the two renames
    saved = torch.load(ckpt / "state.pt", weights_only=False)
    weights = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
    set_peft_model_state_dict(model, weights)
    try:
        optimizer.load_state_dict(saved["optimizer"])
    except ValueError:  # other trainable weights: --train-sentinels, --rank or --layers changed since
        raise ConfigError(f"the checkpoint in {out} trained other weights than these options do (--train-sentinels, "
                          "--rank, --layers): resume with the options it was started with") from None
    torch.set_rng_state(saved["rng"])
    return saved["state"]


def has_checkpoint(out: Path) -> bool:
    return (Path(out) / "checkpoint" / "state.pt").is_file() or (Path(out) / "checkpoint.old" / "state.pt").is_file()


# -- the loop --------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    losses: list[float]
    train_tokens: int
    seconds: float
    tokens_per_s: float
    val_loss: float | None
    val_exact_match: float | None
    val_edit_similarity: float | None = None
    curve: list[dict] = field(default_factory=list)
    device: str = ""
    autocast: str = ""
    trainable_params: int = 0


def held_out(model, tokenizer, val_examples: Sequence[TrainExample], config: TrainConfig, record: AdapterRecord,
             dtype, device, generate: int) -> dict:
    """A point of the learning curve: the held-out loss, and the exact match and edit similarity of greedy
    completions of the first `generate` held-out spans (none when 0)."""
    scores: dict = {"val_loss": round(eval_loss(model, val_examples, config.batch_tokens, dtype, device), 4)}
    end_ids = stop_token_ids(tokenizer, get_template(record.fim_template), undertrained_tokens(model, tokenizer))
    generated = held_out_generation(model, tokenizer, list(val_examples)[:generate], end_ids, dtype, device)
    if generated is not None:
        scores["val_exact_match"], scores["val_edit_similarity"] = generated
    return scores


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(model, tokenizer, train_examples: Sequence[TrainExample], val_examples: Sequence[TrainExample],
          config: TrainConfig, out: Path, record: AdapterRecord, resume: bool = False,
          progress: bool = False, stop_after: int | None = None, eval_every: int | None = None,
          exact_match_examples: int = 32, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train a LoRA adapter on `model` (a peft model from `add_lora`), checkpointing into `out`.

    resume: continue from out/checkpoint (same step, same data position, same optimizer state). stop_after: stop
    (with a checkpoint) after this many steps of this call (tests simulate a kill with it). eval_every: the
    held-out measures (`held_out`) every so many steps: the learning curve, each point's adapter saved under
    out/curve/step-N."""
    config.validate()
    if not train_examples:
        raise ConfigError("no training examples")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    dtype = autocast_dtype(config, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0, betas=(0.9, 0.99))
    state = {"step": 0, "cursor": 0, "losses": [], "tokens": 0, "seconds": 0.0, "curve": []}
    start = 0
    if resume and has_checkpoint(out):
        state = _load_checkpoint(model, optimizer, out)
        start = state["step"]
    model.train()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, initial=start, desc="finetune", unit="step", dynamic_ncols=True)
    if eval_every and start == 0 and not state["curve"]:
        # The curve's first point: the model before this run's first step (the base model, or the adapter tuned on).
        state["curve"].append({"step": 0, "train_tokens": 0, **held_out(model, tokenizer, val_examples, config, record,
                                                                          dtype, device, exact_match_examples)})
    last = start
    t_start = time.perf_counter()
    seconds_before = state["seconds"]
    tokens_this_run = 0
    step = start
    while step < config.steps:
        if stop_after is not None and step - start >= stop_after:
            break
        row, state["cursor"] = next_row(train_examples, state["cursor"], config.batch_tokens)
        batch = pack(row, device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        loss_sum, n = row_loss(model, batch, dtype)
        loss = loss_sum / max(1, n)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        value = float(loss)
        state["losses"].append(round(value, 4))
        state["tokens"] += int(batch["input_ids"].numel())
        tokens_this_run += int(batch["input_ids"].numel())
        state["step"] = step
        elapsed = time.perf_counter() - t_start
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}", tok_s=f"{tokens_this_run / max(elapsed, 1e-9):.0f}")
        if on_step is not None:
            on_step(step, value)
        if eval_every and step % eval_every == 0 and step < config.steps:
            state["curve"].append({"step": step, "train_tokens": state["tokens"],
                                   **held_out(model, tokenizer, val_examples, config, record, dtype, device,
                                              exact_match_examples)})
            model.save_pretrained(out / "curve" / f"step-{step}")
            write_record(out / "curve" / f"step-{step}", record)
        if step % config.checkpoint_every == 0 or step == config.steps:
            state["seconds"] = seconds_before + (time.perf_counter() - t_start)
            _save_checkpoint(model, optimizer, state, out)
        last = step
    if bar is not None:
        bar.close()
    state["seconds"] = seconds_before + (time.perf_counter() - t_start)
    if last > start and last % config.checkpoint_every != 0:
        _save_checkpoint(model, optimizer, state, out)
    train_s = time.perf_counter() - t_start
    done = state["step"] >= config.steps
    scores: dict = {}
    if done:
        scores = held_out(model, tokenizer, val_examples, config, record, dtype, device, exact_match_examples)
        state["curve"].append({"step": state["step"], "train_tokens": state["tokens"], **scores})
        model.save_pretrained(out)
        write_record(out, record)
    return TrainResult(
        steps=state["step"], resumed_from=start, losses=list(state["losses"]), train_tokens=state["tokens"],
        seconds=round(state["seconds"], 1), tokens_per_s=round(tokens_this_run / max(train_s, 1e-9), 1),
        val_loss=scores.get("val_loss"), val_exact_match=scores.get("val_exact_match"),
        val_edit_similarity=scores.get("val_edit_similarity"), curve=state["curve"],
        device=str(device), autocast="bf16" if dtype == torch.bfloat16 else "fp32",
        trainable_params=sum(p.numel() for p in params),
    )




def save_examples(path: Path, train_examples: Sequence[TrainExample], val_examples: Sequence[TrainExample],
                  meta: dict) -> None:
    tmp = Path(str(path) + ".tmp")
    torch.save({"train": [asdict(e) for e in train_examples], "val": [asdict(e) for e in val_examples],
                "meta": meta}, tmp)
    os.replace(tmp, path)


def load_examples(path: Path) -> tuple[list[TrainExample], list[TrainExample], dict]:
    data = torch.load(path, weights_only=False)
    return ([TrainExample(**e) for e in data["train"]], [TrainExample(**e) for e in data["val"]], data["meta"])


def write_report(path: Path, report: dict) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
