"""KV storage: the working slab the model decodes into, and the prefix cache of token blocks (vLLM-style).

Three layers, each testable alone:
  * `hash_blocks`: pure chained hashing of full token blocks (hash of the parent block's hash and the tokens);
  * `BlockPool`: block storage bounded in bytes, with LRU eviction (deepest blocks first among equals);
  * `PrefixCache`: answers "how many tokens of this prompt are cached" and stores new blocks.

The `SlabCache` is a transformers `Cache` whose layers write into preallocated buffers and hand attention a
view, instead of `torch.cat` on every step as `DynamicCache` does (which copies the whole cache per token). Its
buffers grow by doubling up to a bound in rows (`RuntimeConfig.slab_tokens`); a write past it raises `SlabFull`
before allocating anything, and the engine keeps within it (the prompt is cut to `max_context_tokens`, decoding
stops with "length" when the slab is full).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, DynamicLayer

from repocomplete.model_runtime.errors import SlabFull


# ---------------------------------------------------------------------------------------------------------------
# The working slab.


class SlabLayer(DynamicLayer):
    """One layer's K/V in a buffer that grows by doubling up to `max_tokens` rows (None: no bound);
    `keys`/`values` are views of the filled part."""

    def __init__(self, capacity: int = 256, store_dtype: torch.dtype | None = None, max_tokens: int | None = None,
                 reserve: bool = False):
        super().__init__()
        self.max_tokens = max_tokens
        # reserve: allocate the bound at once. The buffers are untouched memory until rows are written (the OS
        # commits pages on first write: 8256 rows reserved, 256 written, is ~256 rows of resident memory), so
        # growth never copies the cache.
        if reserve and max_tokens is not None:
            capacity = max_tokens
        self.capacity = capacity if max_tokens is None else min(capacity, max_tokens)
        # Per-block key summaries (Quest): the min and max of each key dimension over each full block of
        # `summary_tokens` rows, computed on demand for the blocks written since (`summaries`).
        self.kmin: torch.Tensor | None = None
        self.kmax: torch.Tensor | None = None
        # The same bounds as one table for scoring: [centre | radius] per block ((kmax + kmin) / 2, (kmax - kmin) / 2),
        # so that Quest's bound q.centre + |q|.radius is one matmul (kernels.topk_decode.box_scores).
        self.box: torch.Tensor | None = None
        self.summary_tokens = 0
        self.summarized = 0  # full blocks whose summaries are current
        self.store_dtype = store_dtype  # None: the dtype of the first K/V written
        self.length = 0
        self.k_buf: torch.Tensor | None = None
        self.v_buf: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = self.store_dtype or key_states.dtype, key_states.device
        b, h, _, d = key_states.shape
        self.k_buf = key_states.new_empty(b, h, self.capacity, d, dtype=self.dtype)
        self.v_buf = value_states.new_empty(b, h, self.capacity, value_states.shape[-1], dtype=self.dtype)
        self.is_initialized = True
        self._set_views()

    def _set_views(self) -> None:
        self.keys = self.k_buf[:, :, : self.length]
        self.values = self.v_buf[:, :, : self.length]
        if self.summary_tokens:  # a block rewritten or cut loses its summary
            self.summarized = min(self.summarized, self.length // self.summary_tokens)

    def summaries(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(kmin, kmax), each [batch, kv heads, full blocks, dim] in float32: the per-dimension bounds of the keys
        of each full block of `block` rows (the last, partial block has none). Only the blocks written since the
        last call are computed; a truncation or a rewrite drops the summaries of the blocks it touched."""
        b, h, _, d = self.k_buf.shape
        if self.summary_tokens != block or self.kmin is None or self.kmin.shape[2] * block < self.capacity:
            blocks = -(-self.capacity // block)
            self.kmin = self.k_buf.new_empty(b, h, blocks, d, dtype=torch.float32)
            self.kmax = self.k_buf.new_empty(b, h, blocks, d, dtype=torch.float32)
            self.box = self.k_buf.new_empty(b, h, blocks, 2 * d, dtype=torch.float32)
            self.summary_tokens, self.summarized = block, 0
        full = self.length // block
        if full > self.summarized:
            a = self.summarized
            keys = self.k_buf[:, :, a * block : full * block].float().view(b, h, full - a, block, d)
            kmin, kmax = keys.amin(dim=3), keys.amax(dim=3)
            self.kmin[:, :, a:full], self.kmax[:, :, a:full] = kmin, kmax
            self.box[:, :, a:full, :d] = (kmax + kmin) / 2
            self.box[:, :, a:full, d:] = (kmax - kmin) / 2
            self.summarized = full
        return self.kmin[:, :, :full], self.kmax[:, :, :full]

    def boxes(self, block: int, blocks: int) -> torch.Tensor:
        """The [centre | radius] table of the first `blocks` blocks ([batch, kv heads, blocks, 2 * dim]), current for
        the full ones; a partial last block's row is stale (whoever asks for it must not rank it)."""
        self.summaries(block)
        return self.box[:, :, :blocks]

    def _reserve(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        if self.max_tokens is not None and needed > self.max_tokens:
            raise SlabFull(needed, self.max_tokens)
        capacity = max(needed, 2 * self.capacity)
        if self.max_tokens is not None:
            capacity = min(capacity, self.max_tokens)
        k_buf = self.k_buf.new_empty(*self.k_buf.shape[:2], capacity, self.k_buf.shape[-1])
        v_buf = self.v_buf.new_empty(*self.v_buf.shape[:2], capacity, self.v_buf.shape[-1])
        k_buf[:, :, : self.length] = self.k_buf[:, :, : self.length]
        v_buf[:, :, : self.length] = self.v_buf[:, :, : self.length]
        self.k_buf, self.v_buf, self.capacity = k_buf, v_buf, capacity
        self.kmin = self.kmax = self.box = None

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        self._reserve(self.length + n)
        self.k_buf[:, :, self.length : self.length + n] = key_states
        self.v_buf[:, :, self.length : self.length + n] = value_states
        self.length += n
        self._set_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)
        if self.is_initialized:
            self._set_views()

    def crop(self, tokens_to_remove: int) -> None:
        self.truncate(self.length - abs(tokens_to_remove))

    def write(self, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Place stored K/V (shape [batch, heads, n, dim]) at positions start..start+n; the slab ends there."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        n = keys.shape[-2]
        self._reserve(start + n)
        self.k_buf[:, :, start : start + n] = keys
        self.v_buf[:, :, start : start + n] = values
        self.length = start  # (drops the summaries of the blocks rewritten)
        self._set_views()
        self.length = start + n
        self._set_views()

    def reset(self) -> None:
        self.length = 0
        if self.is_initialized:
            self._set_views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.k_buf = self.k_buf.repeat_interleave(repeats, dim=0)
            self.v_buf = self.v_buf.repeat_interleave(repeats, dim=0)
            self.kmin = self.kmax = self.box = None
            self._set_views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.k_buf, self.v_buf = self.k_buf[indices], self.v_buf[indices]
            self.kmin = self.kmax = self.box = None
            self._set_views()


class SlabCache(Cache):
    """A transformers Cache over `SlabLayer`s, with the token ids it holds (row 0) for prefix matching; at most
    `max_tokens` rows (None: no bound)."""

    def __init__(self, n_layers: int, capacity: int = 256, store_dtype: torch.dtype | None = None,
                 max_tokens: int | None = None, reserve: bool = False):
        super().__init__(layers=[SlabLayer(capacity, store_dtype, max_tokens, reserve) for _ in range(n_layers)])
        self.max_tokens = max_tokens
        self.tokens: list[int] = []

    @property
    def length(self) -> int:
        return self.layers[0].length

    def room(self) -> int | None:
        """How many more rows fit (None: no bound)."""
        return None if self.max_tokens is None else self.max_tokens - self.length

    def convert(self, dtype: torch.dtype) -> None:
        """Store K/V in `dtype` from now on, converting the rows held (a copy into new buffers of the same capacity)."""
        for layer in self.layers:
            layer.store_dtype = dtype
            if not layer.is_initialized or layer.k_buf.dtype == dtype:
                continue
            for name in ("k_buf", "v_buf"):
                old = getattr(layer, name)
                new = old.new_empty(old.shape, dtype=dtype)
                new[:, :, : layer.length] = old[:, :, : layer.length]
                setattr(layer, name, new)
            layer.dtype = dtype
            layer._set_views()

    def resident_bytes(self) -> int:
        """The bytes of the rows written so far (what a reserved slab holds in memory; the rest is untouched)."""
        return sum(buf[:, :, : layer.length].numel() * buf.element_size() for layer in self.layers
                   for buf in (layer.k_buf, layer.v_buf) if buf is not None)

    def allocated_bytes(self) -> int:
        """The bytes of the K/V buffers as allocated now (at most `max_tokens` rows of them)."""
        return sum(buf.numel() * buf.element_size() for layer in self.layers for buf in (layer.k_buf, layer.v_buf)
                   if buf is not None)

    def truncate(self, length: int) -> None:
        for layer in self.layers:
            layer.truncate(length)
        del self.tokens[length:]

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()
        self.tokens = []

    def read_block(self, start: int, end: int) -> torch.Tensor:
        """K/V of positions start..end for every layer, as one tensor [layers, 2, heads, end-start, dim] (row 0)."""
        return torch.stack(
            [torch.stack((layer.k_buf[0, :, start:end], layer.v_buf[0, :, start:end])) for layer in self.layers]
        )

    def write_blocks(self, start: int, blocks: Sequence[torch.Tensor]) -> None:
        """Write stored blocks (as from `read_block`) at position `start`; the slab then ends after them."""
        kv = torch.cat(list(blocks), dim=3) if len(blocks) > 1 else blocks[0]
        for i, layer in enumerate(self.layers):
            layer.write(start, kv[i, 0].unsqueeze(0), kv[i, 1].unsqueeze(0))


# ---------------------------------------------------------------------------------------------------------------
# Prefix cache: hashing.


def hash_blocks(tokens: Sequence[int], block_size: int, salt: int = 0, policy: tuple | None = None) -> list[int]:
    """Chained hashes of the full blocks of `tokens`: block i's hash covers every token up to its end.

    policy = (key, first block): the K/V of the blocks from `first` on came from an attention policy that is not
    exactly dense (sparse attention), so their hashes fold in its key and never match blocks computed otherwise;
    the blocks before it are exact dense K/V and stay shared."""
    hashes = []
    parent = salt
    key, first = policy if policy is not None else (None, None)
    for i, start in enumerate(range(0, len(tokens) - block_size + 1, block_size)):
        block = tuple(tokens[start : start + block_size])
        parent = hash((parent, block)) if first is None or i < first else hash((parent, block, key))
        hashes.append(parent)
    return hashes


# ---------------------------------------------------------------------------------------------------------------
# Prefix cache: block pool.


@dataclass
class Block:
    block_id: int
    block_hash: int
    depth: int  # index of the block in its prompt: deeper blocks are evicted first among equally old ones
    kv: torch.Tensor
    last_used: int = 0


@dataclass(frozen=True)
class PoolFull:
    """Typed out-of-space result: the pool cannot take a block (its bound is smaller than one block)."""

    needed_bytes: int
    capacity_bytes: int


@dataclass
class PoolStats:
    hits: int = 0  # blocks found by lookups
    misses: int = 0
    stored: int = 0
    evicted: int = 0


class BlockPool:
    """Blocks of K/V keyed by chained hash, bounded in bytes, evicting the least recently used."""

    def __init__(self, capacity_bytes: int):
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self.blocks: dict[int, Block] = {}
        self.stats = PoolStats()
        self._clock = itertools.count(1)
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self.blocks)

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self.blocks

    def lookup(self, hashes: Sequence[int]) -> list[Block]:
        """The longest run of leading hashes present, marked as used now."""
        found = []
        for h in hashes:
            block = self.blocks.get(h)
            if block is None:
                break
            found.append(block)
        self.stats.hits += len(found)
        self.stats.misses += len(hashes) - len(found)
        self.touch(found)
        return found

    def touch(self, blocks: Sequence[Block]) -> None:
        now = next(self._clock)
        for block in blocks:
            block.last_used = now

    def put(self, block_hash: int, depth: int, kv: torch.Tensor, keep: frozenset[int] = frozenset()) -> Block | PoolFull:
        """Store a block, evicting LRU blocks (never those in `keep`) to stay under the bound."""
        if block_hash in self.blocks:
            block = self.blocks[block_hash]
            self.touch([block])
            return block
        size = kv.numel() * kv.element_size()
        if size > self.capacity_bytes:
            return PoolFull(size, self.capacity_bytes)
        if self.used_bytes + size > self.capacity_bytes:
            self._evict(self.used_bytes + size - self.capacity_bytes, keep)
            if self.used_bytes + size > self.capacity_bytes:
                return PoolFull(size, self.capacity_bytes)
        block = Block(next(self._ids), block_hash, depth, kv, next(self._clock))
        self.blocks[block_hash] = block
        self.used_bytes += size
        self.stats.stored += 1
        return block

    def _evict(self, need_bytes: int, keep: frozenset[int]) -> None:
        victims = sorted(
            (b for b in self.blocks.values() if b.block_hash not in keep), key=lambda b: (b.last_used, -b.depth)
        )
        freed = 0
        for block in victims:
            if freed >= need_bytes:
                break
            del self.blocks[block.block_hash]
            size = block.kv.numel() * block.kv.element_size()
            self.used_bytes -= size
            freed += size
            self.stats.evicted += 1

    def clear(self) -> None:
        self.blocks.clear()
        self.used_bytes = 0


# ---------------------------------------------------------------------------------------------------------------
# Prefix cache: manager.


@dataclass
class PrefixMatch:
    tokens: int  # how many leading prompt tokens are cached
    blocks: list[Block] = field(default_factory=list)


class PrefixCache:
    def __init__(self, block_size: int = 16, capacity_bytes: int = 512 * 2**20, salt: int = 0):
        self.block_size = block_size
        self.pool = BlockPool(capacity_bytes)
        self.salt = salt  # distinguishes models (or adapters) sharing one pool
        self.policy: tuple | None = None  # (attention policy key, first block it applies to): see hash_blocks

    def match(self, tokens: Sequence[int]) -> PrefixMatch:
        blocks = self.pool.lookup(hash_blocks(tokens, self.block_size, self.salt, self.policy))
        return PrefixMatch(len(blocks) * self.block_size, blocks)

    def store(self, tokens: Sequence[int], slab: SlabCache, upto: int | None = None) -> int:
        """Store the full blocks of tokens[:upto] not yet in the pool, reading K/V from the slab; return how many."""
        upto = len(tokens) if upto is None else upto
        hashes = hash_blocks(tokens[:upto], self.block_size, self.salt, self.policy)
        keep = frozenset(hashes)
        stored = 0
        present = []
        for depth, h in enumerate(hashes):
            if h in self.pool:
                present.append(self.pool.blocks[h])
                continue
            start = depth * self.block_size
            result = self.pool.put(h, depth, slab.read_block(start, start + self.block_size), keep)
            if isinstance(result, PoolFull):
                break
            stored += 1
        self.pool.touch(present)
        return stored
