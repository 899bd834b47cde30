"""Lockstep decoding after a shared prompt (model_runtime/batch.py) against the same sequences one after another
(`repocomplete bench attention` reports it: 16 sequences after a 4k-token prompt).

Both sides start from the same prompt already in the slab (prefilled once, outside the timing: separate completions
would find it in the prefix cache too) and decode the same forced token streams, so they do the same arithmetic:
sequential = each sequence's steps over the slab (the decode path `complete` runs, without speculation);
batched = every sequence as a row of one step, the prompt's K/V read once per step for all of them. The figures are
of the machine they ran on (a shared machine drifts): say which when quoting them.
"""

from __future__ import annotations

import time

import torch


def run_shared_prefix_bench(loaded, prompt_tokens: int = 2048, sequences: int = 16, new_tokens: int = 32,
                            seed: int = 0) -> dict:
    """Seconds to decode `sequences` x `new_tokens` after one prompt, batched and sequential, and the largest
    difference between the two paths' final logits (they compute the same thing)."""
    from repocomplete.model_runtime.attention import kv_store_dtype
    from repocomplete.model_runtime.batch import Lockstep
    from repocomplete.model_runtime.fast_llama import FastLlama
    from repocomplete.model_runtime.kv_cache import SlabCache

    fast = loaded.forward
    if not isinstance(fast, FastLlama):
        raise ValueError(f"{loaded.name} runs transformers' forward: lockstep decoding needs fast-llama")
    gen = torch.Generator().manual_seed(seed)
    vocab = loaded.model.config.get_text_config().vocab_size
    prompt = torch.randint(0, vocab, (1, prompt_tokens), generator=gen, device=loaded.device)
    streams = torch.randint(0, vocab, (sequences, new_tokens - 1), generator=gen, device=loaded.device)
    slab = SlabCache(loaded.n_layers, store_dtype=loaded.kv_dtype or kv_store_dtype(loaded.device, loaded.dtype))
    p = prompt_tokens - 1
    with torch.inference_mode():
        t0 = time.perf_counter()
        for start in range(0, p, 512):
            fast(prompt[:, start : min(p, start + 512)], slab)
        prefill_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        last_seq = []
        for s in range(sequences):
            slab.truncate(p)
            logits = fast(prompt[:, p:], slab)
            for t in range(new_tokens - 1):
                logits = fast(streams[s : s + 1, t : t + 1], slab)
            last_seq.append(logits)
        sequential_s = time.perf_counter() - t0
        slab.truncate(p)

        t0 = time.perf_counter()
        run = Lockstep(fast, slab, p)
        logits = run.step(prompt[:, p:].expand(sequences, 1))
        for t in range(new_tokens - 1):
            logits = run.step(streams[:, t : t + 1])
        batched_s = time.perf_counter() - t0
    diff = float((logits.float() - torch.stack(last_seq).float()).abs().max())
    steps = sequences * new_tokens
    return {
        "model": loaded.name, "forward": loaded.forward_name, "dtype": str(loaded.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "cpu": torch.backends.cpu.get_cpu_capability(),
        "prompt_tokens": prompt_tokens, "sequences": sequences, "new_tokens": new_tokens,
        "prefill_s": round(prefill_s, 3), "sequential_s": round(sequential_s, 3), "batched_s": round(batched_s, 3),
        "sequential_tok_s": round(steps / sequential_s, 1), "batched_tok_s": round(steps / batched_s, 1),
        "speedup": round(sequential_s / batched_s, 2), "max_logit_diff": diff,
    }
