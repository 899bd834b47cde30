"""The generation engine: our own decode loop over the model's KV cache (prefill, then one token at a time).

`prefill`, `decode_one_token` and `sample` are free functions over tensors, as in gpt-fast; `Engine` adds the
prompt (templates, token healing), the prefix-KV cache, the stop rules and the trimming around them.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from repocomplete.model_runtime.attention import kv_store_dtype
from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.model_runtime.decoding import Closing, Dangling, Decoding
from repocomplete.model_runtime.errors import SlabFull
from repocomplete.model_runtime.healing import backoff
from repocomplete.model_runtime.kv_cache import PrefixCache, SlabCache
from repocomplete.model_runtime.loading import LoadedModel
from repocomplete.model_runtime.monitor import Guide, Monitor, NameMask
from repocomplete.model_runtime.sparse import SparseAttention, SparsePolicy, attention_scale, sparse_forward
from repocomplete.model_runtime.speculate import PromptLookup
from repocomplete.model_runtime.stopping import StopRules
from repocomplete.model_runtime.templates import (
    ContextItem,
    FimTemplate,
    PromptParts,
    context_text,
    detect_template,
    suffix_text,
    get_template,
    line_comment,
    model_view,
    render,
)

# A logits processor has the transformers signature: (input_ids [1, n], scores [1, vocab]) -> scores.
LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# Languages whose string literals may also be in backticks (the closing rule skips brackets inside them).
_BACKTICK_STRINGS = (".js", ".jsx", ".mjs", ".cjs", ".ts", ".tsx", ".go")


def _openers(path: str | None) -> str:
    """The brackets the single-line rules count as opening: `{` in Python only (in brace languages a line ending with
    it opens a block, a complete line)."""
    return "([{" if (path or "").lower().endswith((".py", ".pyi")) else "(["


def _unhealed(parts: PromptParts, healed: str) -> str:
    """The prefix without what healing backed off (the generation writes it again)."""
    return parts.prefix[: len(parts.prefix) - len(healed)] if parts.prefix.endswith(healed) else parts.prefix


def _line_head(parts: PromptParts, healed: str) -> str:
    """The text before the completion that its line's rules read: the unhealed prefix's last 400 characters."""
    return _unhealed(parts, healed)[-400:]


class CancelToken:
    """Set from any thread; the decode loop checks it before every step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass
class CompletionRequest:
    parts: PromptParts
    max_new_tokens: int | None = None  # None: the config's
    multiline: bool | None = None
    cancel: CancelToken | None = None
    logits_processors: Sequence[LogitsProcessor] = ()
    # Monitor-guided decoding (monitor.py): each step, after healing's mask and the logits processors, the monitors'
    # constraints become a token mask over the decoded vocabulary.
    monitors: Sequence[Monitor] = ()


@dataclass
class Completion:
    text: str
    stop_reason: str  # eos | stop_token | newline | indent | blank_lines | max_tokens | time | cancelled | length
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    raw_text: str = ""  # everything decoded, before stop rules and trimming
    healed: str = ""  # prompt text that token healing backed off (the generation re-produced it)
    draft_tokens: int = 0  # speculative decoding: tokens proposed from the prompt, and how many were taken
    accepted_tokens: int = 0
    timings: dict = field(default_factory=dict)
    # The identifiers monitors constrained or yielded (monitor.Guide.report); monitor_ms: the time they took.
    monitor_spans: list = field(default_factory=list)
    monitor_ms: float = 0.0
    # Token provenance of the prompt that ran (after truncation and healing) and of the generated tail (Span).
    spans: list = field(default_factory=list)

    @property
    def latency_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def prefill_tok_s(self) -> float | None:
        """Prefill speed of this request (None when nearly everything came from the prefix cache)."""
        fresh = self.prompt_tokens - self.cached_tokens
        return fresh / self.prefill_s if fresh >= 64 and self.prefill_s > 0 else None


@dataclass(frozen=True)
class Span:
    """Where a run of prompt tokens came from: `kind` is "template" (sentinels, paths, separators), "context" (a
    repository-context item; `source` is its index in PromptParts.context and `path` its file), "prefix",
    "suffix" or "generated"; tokens [start, end) of the prompt."""

    kind: str
    start: int
    end: int
    source: int | None = None
    path: str | None = None

    def to_json(self) -> dict:
        out = {"kind": self.kind, "start": self.start, "end": self.end}
        if self.source is not None:
            out.update(source=self.source, path=self.path)
        return out


@dataclass
class EncodedPrompt:
    ids: list[int]
    prefix_end: int  # index just past the prefix's last token (where healing backs off)
    # The provenance of every token, in order and without gaps (empty where unknown: a token prompt given directly).
    spans: list[Span] = field(default_factory=list)


def drop_span_tokens(spans: Sequence[Span], at: int, k: int) -> list[Span]:
    """The spans after removing tokens [at, at + k) of the prompt (token healing backs off the prefix's end; a
    truncated prompt loses its start): spans shrink or vanish, those after shift left."""
    out = []
    for span in spans:
        start = span.start if span.start <= at else max(at, span.start - k)
        end = span.end if span.end <= at else max(at, span.end - k)
        if end > start:
            out.append(dataclasses.replace(span, start=start, end=end))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Free functions over tensors.


def prefill(forward, cache: SlabCache, ids: Sequence[int], device) -> torch.Tensor:
    """Run the uncached tail of a prompt through the model; return the last position's logits [vocab]."""
    return forward(torch.tensor([list(ids)], dtype=torch.long, device=device), cache)


def decode_one_token(forward, cache: SlabCache, token: int, device) -> torch.Tensor:
    return forward(torch.tensor([[token]], dtype=torch.long, device=device), cache)


def sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator) -> int:
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


# ---------------------------------------------------------------------------------------------------------------
# Prompt encoding.


def prompt_format(tokenizer, config: RuntimeConfig) -> tuple[FimTemplate, str]:
    """The FIM template and order (psm | spm) the engine uses for this tokenizer and config."""
    from repocomplete.model_runtime.adapters import read_record, resolve_adapter

    # An adapter trained by `repocomplete finetune` records the prompt form it learnt; --fim-template overrides it.
    record = read_record(resolve_adapter(config.model, config.adapter))
    if config.fim_template:
        template = get_template(config.fim_template)
    elif record is not None:
        template = get_template(record.fim_template)
    else:
        template = detect_template(tokenizer.get_vocab())
    fim_order = record.fim_order if config.fim_order == "auto" and record is not None else config.fim_order
    order = "spm" if fim_order == "spm" or (fim_order == "auto" and template.supports_spm) else "psm"
    return template, order


def prompt_text(tokenizer, config: RuntimeConfig, parts: PromptParts) -> str:
    """The prompt text the engine would run for `parts` (for a peer that takes text: benchmarks)."""
    template, order = prompt_format(tokenizer, config)
    return encode_prompt(tokenizer, template, model_view(template, parts), order)[0]


def encode_prompt(tokenizer, template: FimTemplate, parts: PromptParts, order: str) -> tuple[str, EncodedPrompt]:
    """Render and tokenize: template text may hold special tokens, user text never does (it is split)."""
    prompt = render(template, parts, order)
    # Re-render with markers to learn which spans are user text, then tokenize span by span.
    values = {"prefix": parts.prefix, "suffix": suffix_text(template, parts)}
    values.update({f"context{i}": context_text(template, item) for i, item in enumerate(parts.context)})
    marked_context = [ContextItem(item.path, f"\x00context{i}\x00") for i, item in enumerate(parts.context)]
    marked_parts = PromptParts("\x00prefix\x00", "\x00suffix\x00", parts.path, marked_context, parts.repo_name)
    marked = render(dataclasses.replace(template, comment_context=False, suffix_block=None), marked_parts, order)
    ids: list[int] = list(_bos(tokenizer))
    spans = [Span("template", 0, len(ids))] if ids else []
    prefix_end = len(ids)
    for i, piece in enumerate(marked.split("\x00")):
        if not piece:
            continue
        begin = len(ids)
        if i % 2 == 1:  # a user-text field
            ids += tokenizer.encode(values[piece], add_special_tokens=False, split_special_tokens=True)
            if piece == "prefix":
                prefix_end = len(ids)
            if piece.startswith("context"):
                index = int(piece[len("context"):])
                span = Span("context", begin, len(ids), index, parts.context[index].path)
            else:
                span = Span(piece, begin, len(ids))
        else:
            ids += tokenizer.encode(piece, add_special_tokens=False)  # template text: sentinels, paths
            span = Span("template", begin, len(ids))
        if span.end > span.start:
            if spans and spans[-1].kind == span.kind == "template":
                spans[-1] = dataclasses.replace(spans[-1], end=span.end)
            else:
                spans.append(span)
    if not ids:  # an empty file: the model still needs a position to predict from
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [start if start is not None else 0]
        spans = [Span("template", 0, 1)]
    return prompt, EncodedPrompt(ids, prefix_end, spans)


def truncate(encoded: EncodedPrompt, limit: int) -> EncodedPrompt:
    """A prompt over `limit` tokens loses its start (the engine's rule; fine-tuning cuts its prompts with it too)."""
    if len(encoded.ids) <= limit:
        return encoded
    # Drop the start in coarse steps so the cut point, and so the cached prefix, stays put while typing (a step never
    # larger than a quarter of the limit: a short limit keeps some of the prompt).
    step = min(512, max(1, limit // 4))
    cut = -(-(len(encoded.ids) - limit) // step) * step
    return EncodedPrompt(encoded.ids[cut:], max(0, encoded.prefix_end - cut), drop_span_tokens(encoded.spans, 0, cut))


def heal_prompt(encoded: EncodedPrompt, prefix: str, tokenizer, vocab) -> tuple[list[int], str]:
    """Token healing: the prompt without the prefix's last token(s), and their text, which generation must reproduce
    first ("" when impossible). The engine's rule; fine-tuning puts the healed text at the start of the middle."""
    ids = encoded.ids
    if not (encoded.prefix_end > 0 and prefix):
        return ids, ""
    k = backoff(ids[: encoded.prefix_end], vocab.texts)
    healed = tokenizer.decode(ids[encoded.prefix_end - k : encoded.prefix_end])
    if not vocab.allowed(healed):  # e.g. half of a multi-byte character: nothing reproduces it alone
        return ids, ""
    return ids[: encoded.prefix_end - k] + ids[encoded.prefix_end :], healed


def _bos(tokenizer) -> list[int]:
    ids = tokenizer("")["input_ids"]
    return ids[:1] if ids and ids[0] == tokenizer.bos_token_id else []


def stop_token_ids(tokenizer, template: FimTemplate, undertrained: Sequence[int] = ()) -> set[int]:
    """What ends a completion (the engine's decode and finetune's held-out exact match alike): the template's stop
    strings, the end of text, every special token and the model's `undertrained` tokens (loading.undertrained_tokens).
    A completion never contains one; the shipped adapter's end token is one of SmolLM2's unused specials, which it
    hardly tells apart from the others."""
    vocab = tokenizer.get_vocab()
    ids = {vocab[t] for t in template.stop if t in vocab}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids |= {i for i, token in added.items() if getattr(token, "special", False)}
    ids |= set(tokenizer.all_special_ids) | set(undertrained)
    return ids


def bf16_matmuls_fast(loaded: LoadedModel) -> bool:
    """Whether bf16 matmuls are the fast ones on this machine: the measured CPU plan prefills in bf16 (an AVX-512 CPU
    with bf16 or AMX), or the model was loaded in bf16 on purpose. With AVX2 only a bf16 GEMM runs at a sixth of
    fp32's speed, so sparse attention keeps its K/V in the dense dtype there."""
    if loaded.plan is not None:
        return loaded.plan.bf16_fast
    return loaded.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------------------------
# The engine.


class Engine:
    """Completions from a local model, reusing the KV of earlier prompts. One request at a time (a lock)."""

    def __init__(self, loaded: LoadedModel, config: RuntimeConfig | None = None):
        self.config = config or RuntimeConfig()
        self.config.validate()
        self.loaded = loaded
        self.model = loaded.model
        self.forward = loaded.forward
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.template, self.order = prompt_format(self.tokenizer, self.config)
        self.stop_ids = stop_token_ids(self.tokenizer, self.template, loaded.undertrained)
        self.vocab = loaded.vocab
        # The tokens of control characters: never generated.
        never = self.vocab.unprintable
        self._never = torch.tensor(never, dtype=torch.long, device=self.device) if never else None
        self._indenting: torch.Tensor | None = None  # vocab.indenting() on the device, built on first use
        self._breaking: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # vocab.breaking(openers) on the device
        # The closing rule's tokens (built on first use): what ends a single-line completion (stop tokens, line breaks
        # after blanks), and the token of each closing bracket.
        self._ends: torch.Tensor | None = None
        self._closers: dict[str, int] = {}
        # Long prompts: sparse attention (sparse.py) where the config asks for it; its K/V from the threshold on are
        # salted apart from dense ones in the prefix cache.
        self.policy = SparsePolicy.from_config(self.config)
        self.sparse = None
        self._wrapped: tuple | None = None  # (forward, its sparse form): see `_forward`
        if self.policy is not None:
            self.sparse = SparseAttention(self.policy, attention_scale(loaded.model))
        self.slab = SlabCache(loaded.n_layers, store_dtype=self._kv_dtype(), max_tokens=self.config.slab_tokens,
                              reserve=True)
        self.prefix_cache = PrefixCache(self.config.block_size, self.config.prefix_cache_bytes, salt=hash(loaded.name))
        if self.policy is not None:
            self.prefix_cache.policy = self.policy.cache_policy(self.config.block_size)
        self.lock = threading.Lock()
        self._previous: list[int] = []  # the last completion's tokens: drafts while the user types through it
        self.spans: list[Span] = []  # the provenance of the tokens of the prompt now in the slab
        self._compiled = None
        if self.config.compile_decode:
            import os

            from repocomplete.model_runtime.config import private_dir
            from repocomplete.model_runtime.static_decode import StaticDecoder

            # Inductor's compiled artefacts persist in our private cache: only the first start pays for compiling.
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(private_dir(self.config.cache_dir / "inductor")))

            self._compiled = StaticDecoder(
                self.model, self.config.max_context_tokens + self.config.max_new_tokens + 8, self.device, loaded.dtype
            )

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def _forward(self):
        """What the engine's own prefill and decode run: `forward`, under the sparse policy where there is one
        (batch.py runs `forward` itself)."""
        if self.sparse is None:
            return self.forward
        if self._wrapped is None or self._wrapped[0] is not self.forward:
            self._wrapped = (self.forward, sparse_forward(self.forward, self.sparse))
        return self._wrapped[1]

    def _kv_dtype(self, length: int = 0) -> torch.dtype:
        """The slab's dtype for a prompt of `length` tokens: the config's, else on a GPU the model's; on the CPU the
        measured plan's under dense attention, and bfloat16 where sparse attention runs and bf16 matmuls are fast
        (`bf16_matmuls_fast`). Sparse attention gathers its blocks into contiguous tensors, where a bf16 matmul is the
        fast one (181 against 392 us for fp32 at 8k rows on the 2-core EPYC), and bf16 halves the cache (8k tokens:
        189 MB instead of 377). Dense attention keeps the plan's dtype: a bf16 matmul over the slab's strided view is
        the slow one (206 against 109 us at 2k rows)."""
        loaded = self.loaded
        if self.config.kv_dtype != "auto":
            return getattr(torch, self.config.kv_dtype)
        dense = loaded.kv_dtype or kv_store_dtype(loaded.device, loaded.dtype)
        if self.policy is None or loaded.device.type != "cpu" or not bf16_matmuls_fast(loaded):
            return dense
        current = self.slab.layers[0].store_dtype if hasattr(self, "slab") else None
        # Hysteresis: back to the dense dtype only well below the threshold, so that typing around it does not
        # convert the slab on every keystroke.
        if length >= self.policy.threshold or (current == torch.bfloat16 and length >= self.policy.threshold // 2):
            return torch.bfloat16
        return dense

    def _fit_kv(self, length: int) -> None:
        """Convert the slab to the dtype a prompt of `length` tokens runs with (sparse attention's, or dense's): the
        rows it holds are kept, rounded, so typing across the threshold loses no cached work."""
        dtype = self._kv_dtype(length)
        if self.slab.layers[0].store_dtype != dtype:
            self.slab.convert(dtype)

    # -- prompt ----------------------------------------------------------------------------------------------

    def encode(self, parts: PromptParts) -> tuple[str, EncodedPrompt]:
        prompt, encoded = encode_prompt(self.tokenizer, self.template, model_view(self.template, parts), self.order)
        return prompt, truncate(encoded, self.config.max_context_tokens)

    def heal(self, encoded: EncodedPrompt, parts: PromptParts) -> tuple[list[int], str]:
        """Token healing: the prompt without the prefix's last token(s), and their text, which generation must
        reproduce first ("" when healing is off or impossible)."""
        if not self.config.token_healing:
            return encoded.ids, ""
        return heal_prompt(encoded, parts.prefix, self.tokenizer, self.vocab)

    # -- prefix reuse ----------------------------------------------------------------------------------------

    def _reuse(self, ids: list[int]) -> int:
        """Bring the slab to the longest cached prefix of `ids` (leaving at least one token to run); return it."""
        if not self.config.prefix_cache:
            self.slab.reset()
            return 0
        limit = len(ids) - 1
        common = 0
        for a, b in zip(self.slab.tokens, ids[:limit]):
            if a != b:
                break
            common += 1
        match = self.prefix_cache.match(ids[:limit])
        if match.tokens > common:
            # Copy only the blocks the slab does not already hold.
            bs = self.prefix_cache.block_size
            first = common // bs
            self.slab.truncate(first * bs)
            self.slab.write_blocks(first * bs, [b.kv for b in match.blocks[first:]])
            self.slab.tokens = list(ids[: match.tokens])
            return match.tokens
        self.slab.truncate(common)
        return common

    def _run_prompt(self, ids: list[int], cancel: CancelToken | None = None) -> tuple[torch.Tensor | None, int]:
        """Prefill the uncached tail of `ids`; return the last logits (None if cancelled first) and the reused count.

        A long tail runs in chunks, each stored in the prefix cache as it completes, and a cancellation is honoured
        between chunks: on a slow CPU a cold prompt that the next keystroke supersedes is not wasted, the next
        request continues from the chunks already done."""
        if len(ids) > self.config.slab_tokens:  # only a token prompt given directly: encode() cuts text prompts
            raise SlabFull(len(ids), self.config.slab_tokens)
        self._fit_kv(len(ids))
        cached = self._reuse(ids)
        pos, chunk = cached, self.config.prefill_chunk_tokens
        while True:
            end = len(ids) if len(ids) - pos <= chunk else pos + chunk
            logits = prefill(self._forward, self.slab, ids[pos:end], self.device)
            self.slab.tokens = list(ids[:end])
            if self.config.prefix_cache:
                self.prefix_cache.store(ids, self.slab, upto=end)
            pos = end
            if pos == len(ids):
                return logits, cached
            if cancel is not None and cancel.cancelled:
                return None, cached

    # -- completion ------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def complete(self, request: CompletionRequest) -> Completion:
        with self.lock:
            return self._complete(request)

    def complete_batch(self, requests: Sequence[CompletionRequest]) -> list[Completion]:
        """Complete many requests, in their order: those whose prompts share a head of a block or more prefill it
        once and decode together (batch.py); the others run one by one in prompt order (the prefix cache serves
        neighbours)."""
        from repocomplete.model_runtime.batch import complete_grouped

        return complete_grouped(self, requests)

    @torch.inference_mode()
    def complete_candidates(self, request: CompletionRequest, n: int | None = None) -> list[Completion]:
        """Up to n (None: the config's `candidates`) distinct completions: the first is `complete`'s, the others are
        sampled after the same prompt, decoded together (batch.py)."""
        from repocomplete.model_runtime.batch import complete_candidates

        with self.lock:
            return complete_candidates(self, request, self.config.candidates if n is None else n)

    def _complete(self, request: CompletionRequest) -> Completion:
        cfg = self.config
        t0 = time.perf_counter()
        cancel = request.cancel or CancelToken()
        parts = request.parts
        _, encoded = self.encode(parts)
        ids = encoded.ids
        if cancel.cancelled:
            return Completion("", "cancelled", prompt_tokens=len(ids))
        ids, healed = self.heal(encoded, parts)
        spans = self._healed_spans(encoded, ids)
        self._set_spans(spans, len(ids))
        logits, cached = self._run_prompt(ids, cancel)
        t1 = time.perf_counter()
        if logits is None:
            return Completion("", "cancelled", prompt_tokens=len(ids), cached_tokens=cached, prefill_s=t1 - t0)
        if self._compiled is not None:
            self._compiled.begin(self.slab)
        # The time budget is for decoding: a slow (cold) prefill finishes and is reported in prefill_s, instead of
        # eating the budget and answering nothing.
        deadline = t1 + cfg.time_budget_s
        generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        state = self._decoding(request, ids, healed)
        # Greedy decoding verifies drafts from the prompt (speculate.py): the same tokens, fewer forward passes.
        # Sampling decodes one token at a time, so its distribution is untouched.
        speculate = cfg.speculative_tokens if cfg.temperature <= 0 and self._compiled is None else 0
        lookup = PromptLookup(ids, self._previous) if speculate else None
        queue: list[torch.Tensor] = [logits]  # the logits of the next position, then of each pending draft token
        drafts: list[int] = []
        drafted = accepted = 0
        generated = state.generated
        while True:
            token = sample(state.mask(queue.pop(0)), cfg.temperature, cfg.top_k, cfg.top_p, generator)
            if state.push(token):
                break
            if cancel.cancelled:
                state.stop("cancelled")
                break
            if time.perf_counter() > deadline:
                state.stop("time")
                break
            if (self._compiled is not None and self._compiled.full) or (self._compiled is None and self.slab.room() == 0):
                state.stop("length")  # the slab is full (a request asking for more tokens than the config's)
                break
            if lookup is not None:
                lookup.append(token)
            if drafts and token == drafts[0]:  # the verification pass already computed what follows it
                drafts.pop(0)
                accepted += 1
                continue
            if drafts:  # rejected: drop the K/V of the draft tokens that were not taken
                self._rewind(len(ids) + len(generated) - 1)
                drafts = []
            room = self.slab.room()  # the token itself takes a row; drafts get what the slab has left
            room = speculate if room is None else room - 1
            drafts = lookup.draft(min(speculate, state.draft_room(), room)) if lookup is not None else []
            drafted += len(drafts)
            queue = self._step(token, drafts)
        t2 = time.perf_counter()
        if speculate:
            self._rewind(min(self.slab.length, len(ids) + len(generated) - 1))
            self._previous = generated
        return Completion(
            text=state.final(parts.suffix),
            prompt_tokens=len(ids),
            cached_tokens=cached,
            prefill_s=t1 - t0,
            decode_s=t2 - t1,
            draft_tokens=drafted,
            accepted_tokens=accepted,
            **state.report(),
            spans=spans + [Span("generated", len(ids), len(ids) + len(state.generated))] if state.generated else spans,
        )

    def _set_spans(self, spans: list[Span], length: int) -> None:
        """The provenance of the prompt about to run (sparse attention reads it: which blocks are repository context)."""
        self.spans = spans
        if self.sparse is not None:
            self.sparse.set_spans(spans, length)

    @staticmethod
    def _healed_spans(encoded: EncodedPrompt, ids: list[int]) -> list[Span]:
        """The provenance of the prompt `ids` that healing made of `encoded` (the prefix's last tokens backed off)."""
        k = len(encoded.ids) - len(ids)
        return drop_span_tokens(encoded.spans, encoded.prefix_end - k, k) if k else list(encoded.spans)

    def _decoding(self, request: CompletionRequest, ids: list[int], healed: str) -> Decoding:
        """The per-sequence bookkeeping of one request's decode (decoding.py), for the prompt `ids`."""
        cfg, parts = self.config, request.parts
        multiline = cfg.multiline if request.multiline is None else request.multiline
        max_new = cfg.max_new_tokens if request.max_new_tokens is None else request.max_new_tokens
        closing = self._closing(parts, healed, multiline)
        guide = None
        if request.monitors:  # (where the closing rule applies, an end it would close a call with is an end to guard)
            guide = Guide(request.monitors, NameMask.for_vocab(self.vocab), _unhealed(parts, healed),
                          cursor=len(parts.prefix), ends=closing.ends if closing is not None else None)
        rules = StopRules.at_cursor(parts.prefix, multiline, cfg.stop_loops)
        return Decoding(self.tokenizer, self.vocab, self.stop_ids, rules, healed, max_new, ids, self.device,
                        self._comment_mask(parts, multiline), request.logits_processors, guide,
                        self._indent_mask(parts), self._dangling(parts, healed, multiline), self._never, closing,
                        self._no_end_mask(parts, multiline))

    def _no_end_mask(self, parts: PromptParts, multiline: bool) -> torch.Tensor | None:
        """The stop tokens and the tokens that open with a line break, where a single-line completion is asked on a
        blank line (nothing before the cursor or after it but blanks): there the model's end or line break made an
        empty answer (2-3 tasks in 50 with the shipped adapter), which no user asked for on a line with nothing on
        it yet. None elsewhere: after code an empty answer may be right."""
        if multiline or parts.prefix.rsplit("\n", 1)[-1].strip() or parts.suffix.split("\n", 1)[0].strip():
            return None
        return self._end_tokens(parts.path)

    def _end_tokens(self, path: str | None) -> torch.Tensor:
        """What ends a single-line completion: the stop tokens and the tokens with only blanks before a line break
        (built on first use, from the dangling rule's vocabulary pass)."""
        if self._ends is None:
            blank, _ = self.vocab.breaking(_openers(path))
            self._ends = torch.tensor(sorted(set(blank) | self.stop_ids), dtype=torch.long, device=self.device)
        return self._ends

    def _comment_mask(self, parts: PromptParts, multiline: bool) -> torch.Tensor | None:
        """The tokens that would open a line comment, where a single-line completion must not (the cursor's line has
        no code yet and `suggest_comments` is off); None where no such rule applies."""
        if self.config.suggest_comments or multiline or parts.prefix.rsplit("\n", 1)[-1].strip():
            return None
        comment = line_comment(parts.path or "")
        if comment is None:
            return None
        ids = self.vocab.opening(comment)
        return torch.tensor(ids, dtype=torch.long, device=self.device) if ids else None

    def _dangling(self, parts: PromptParts, healed: str, multiline: bool) -> Dangling | None:
        """The dangling-bracket rule of a single-line completion (decoding.Dangling); None when multi-line. `{` is an
        opener only in Python: in brace languages a line ending with it opens a block, a complete line."""
        if multiline:
            return None
        openers = _openers(parts.path)
        head = _line_head(parts, healed)
        masks = self._breaking.get(openers)
        if masks is None:
            masks = self._breaking[openers] = tuple(torch.tensor(ids, dtype=torch.long, device=self.device)
                                                    for ids in self.vocab.breaking(openers))
        return Dangling(head, openers, *masks)

    def _closing(self, parts: PromptParts, healed: str, multiline: bool) -> Closing | None:
        """The closing rule of a single-line completion at the end of its line (decoding.Closing); None when
        multi-line, or where the cursor's line goes on after it."""
        if multiline or parts.suffix.split("\n", 1)[0].strip():
            return None
        ends = self._end_tokens(parts.path)
        if not self._closers:
            self._closers = {c: ids[0] for c in ")]}" if (ids := self.vocab.exactly(c))}
        path = (parts.path or "").lower()
        quotes = "\"" if path.endswith(".rs") else "'\"`" if path.endswith(_BACKTICK_STRINGS) else "'\""
        return Closing(_line_head(parts, healed), healed, ends, self._closers, line_comment(parts.path or ""),
                       quotes, _openers(parts.path))

    def _indent_mask(self, parts: PromptParts) -> torch.Tensor | None:
        """The tokens that would indent past the cursor, where its line holds indentation only: the completion's
        first character is code (or a line break), never more blanks (the small model otherwise answers a run of
        spaces, or an over-indented line); None at column 0 or after code, where blanks may be what comes next."""
        line = parts.prefix.rsplit("\n", 1)[-1]
        if not line or line.strip():
            return None
        if self._indenting is None:
            self._indenting = torch.tensor(self.vocab.indenting(), dtype=torch.long, device=self.device)
        return self._indenting

    def _step(self, token: int, drafts: list[int]) -> list[torch.Tensor]:
        """Run `token` (and the draft tokens after it, verified in the same pass); the logits after each."""
        if not drafts:
            return [self._decode(token)]
        self.slab.tokens += [token, *drafts]
        ids = torch.tensor([[token, *drafts]], dtype=torch.long, device=self.device)
        return list(self._forward(ids, self.slab, all_logits=True))

    def _rewind(self, length: int) -> None:
        self.slab.truncate(length)  # the K/V and the token list

    def _decode(self, token: int) -> torch.Tensor:
        if self._compiled is not None:
            return self._compiled.step(token)  # the slab keeps the prompt only
        self.slab.tokens.append(token)
        return decode_one_token(self._forward, self.slab, token, self.device)

    @torch.inference_mode()
    def greedy_tokens(self, ids: Sequence[int], n: int, spans: Sequence[Span] = ()) -> tuple[list[int], float, float]:
        """Exactly n greedy tokens after a token prompt, no stop rules (for throughput measurements). spans: the
        prompt's provenance (none: no token is known as repository context, so sparse attention reads them all).

        Returns the tokens, the prefill seconds and the decode seconds (the n-1 steps after the first token).
        """
        with self.lock:
            self._set_spans(list(spans), len(ids))
            if len(ids) + n - 1 > self.config.slab_tokens:
                raise SlabFull(len(ids) + n - 1, self.config.slab_tokens)
            t0 = time.perf_counter()
            logits, _ = self._run_prompt(list(ids))
            if self._compiled is not None:
                self._compiled.begin(self.slab)
            tokens = [int(torch.argmax(logits))]
            t1 = time.perf_counter()
            for _ in range(n - 1):
                tokens.append(int(torch.argmax(self._decode(tokens[-1]))))
            return tokens, t1 - t0, time.perf_counter() - t1

    # -- introspection ---------------------------------------------------------------------------------------

    def logits_for(self, ids: Sequence[int], spans: Sequence[Span] = ()) -> tuple[torch.Tensor, int]:
        """Last-position logits for a token prompt through the prefix cache, and how many tokens were reused (spans:
        as for `greedy_tokens`)."""
        with self.lock, torch.inference_mode():
            self._set_spans(list(spans), len(ids))
            return self._run_prompt(list(ids))
