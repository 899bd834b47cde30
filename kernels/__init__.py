"""Attention kernels: one file per kernel (STYLE.md, kernels/), each a Triton kernel with a launcher, a public
function that falls back to a torch path on the CPU (Triton is optional), and a plain torch reference.

    topk_decode            Quest-style top-k block decode attention (block summaries, scores, choice, attention)
    block_sparse_prefill   MInference-style block-sparse causal prefill with GQA and a partial prefix
    shared_prefix          Hydragen shared-prefix attention for a batch (torch only: two batched matmuls)

The benchmark against dense SDPA is `repocomplete bench attention --kernels-only` (bench/attention_kernels.py).
"""
