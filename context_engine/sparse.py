"""Sparse similarity of code windows: sliding windows, code tokens, BM25 (bm25s) and CrossCodeEval's Jaccard.

A window's tokens are kept as counts (distinct token ids and how often each occurs), which is all both measures
need. bm25s has no incremental add and builds its index document by document in Python (~0.3 s for 5k windows),
so `bm25_from_counts` assembles the eager score matrix bm25s would build from those counts in a few vectorised
numpy operations (and scipy's CSR -> CSC transpose) and hands it to a `bm25s.BM25` for scoring (`tests/test_retrieval.py` checks it scores exactly as
`BM25.index` does). Jaccard's |A ∩ B| is read off the same postings.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import bm25s
import numpy as np
from scipy import sparse

K1, B = 1.5, 0.75  # bm25s defaults (method "lucene")

_WORD = re.compile(r"\w+")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


# -- text ------------------------------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """Code tokens: each word lowercased, followed by its snake_case / camelCase parts when it has several.

    `parseHTTPResponse` -> parsehttpresponse, parse, http, response; `max_len` -> max_len, max, len.
    Punctuation and whitespace are dropped.
    """
    out: list[str] = []
    for word in _WORD.findall(text):
        out.extend(_word_tokens(word))
    return out


@functools.lru_cache(maxsize=1 << 16)
def _word_tokens(word: str) -> tuple[str, ...]:
    """One word's tokens (code repeats its words: each is split once)."""
    parts = [p for piece in word.split("_") if piece for p in (_CAMEL.findall(piece) or [piece])]
    if len(parts) > 1:
        return (word.lower(), *(p.lower() for p in parts))
    return (word.lower(),)


def windows(text: str, size: int, stride: int) -> list[tuple[int, int, str]]:
    """(start_line, end_line, text) of each window, 1-based inclusive; blank windows left out.

    Windows start every `stride` lines; the last one ends at the last line (a tail that would only repeat lines of
    the previous window is not made).
    """
    lines = text.split("\n")
    if "\r" in text:
        lines = [line.rstrip("\r") for line in lines]
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline is no line of its own
    out = []
    start = 0
    while start < len(lines):
        end = min(start + size, len(lines))
        chunk = "\n".join(lines[start:end])
        if chunk.strip():
            out.append((start + 1, end, chunk))
        if end >= len(lines):
            break
        start += stride
    return out


# -- counts and scores ------------------------------------------------------------------------------------------


@dataclass
class Counts:
    """One distinct window text and its bag of tokens (ids into a vocabulary)."""

    text: str | None  # None: not kept (the retriever reads it back from its file when needed)
    ids: np.ndarray  # distinct token ids, int32, ascending
    tf: np.ndarray  # their counts, float32
    length: int  # tokens in all (BM25's document length)


def count_windows(counts: dict[bytes, Counts], vocab: dict[str, int], text: str,
                  spans: list[tuple[int, int, str]], keys: list[bytes]) -> None:
    """Add to `counts` the windows of `text` (`spans` as `windows` cuts them, `keys` their content keys) that it
    lacks; new tokens get the next ids of `vocab`."""
    lines = None
    line_ids: dict[int, list[int]] = {}  # tokens per line, computed once for the overlapping windows
    for (start, end, chunk), key in zip(spans, keys):
        if key in counts:
            continue
        if lines is None:
            lines = text.split("\n")
        ids: list[int] = []
        for n in range(start - 1, end):
            if n not in line_ids:
                line_ids[n] = [vocab.setdefault(t, len(vocab)) for t in tokenize(lines[n])]
            ids.extend(line_ids[n])
        uniq, tf = np.unique(np.asarray(ids, dtype=np.int32), return_counts=True)
        counts[key] = Counts(chunk, uniq, tf.astype(np.float32), len(ids))


def bm25_from_counts(
    ids: np.ndarray,
    tf: np.ndarray,
    nnz: np.ndarray,
    lengths: np.ndarray,
    n_vocab: int,
    stats: tuple[np.ndarray, int, float] | None = None,
) -> bm25s.BM25:
    """The `bm25s.BM25` that `BM25().index(corpus)` builds (method "lucene", k1 1.5, b 0.75), assembled vectorised.

    Document d's distinct token ids are the next `nnz[d]` entries of `ids` (counts in `tf`), its token count is
    `lengths[d]`; ids are < `n_vocab`. `stats=(document frequencies, documents, mean length)` scores these
    documents as part of a larger corpus (the overlay of edited files) instead of on their own.
    """
    n_docs = len(nnz)
    doc = np.repeat(np.arange(n_docs, dtype=np.int32), nnz)
    df = np.bincount(ids, minlength=n_vocab)
    df_all, n_all, avg_len = stats if stats is not None else (df, n_docs, lengths.mean() if n_docs else 1.0)
    idf = np.log1p((n_all - df_all + 0.5) / (df_all + 0.5)).astype(np.float32)
    norm = (K1 * ((1 - B) + B * lengths / avg_len)).astype(np.float32)[doc]
    data = idf[ids] * tf / (norm + tf)
    # CSC (by token, documents ascending within one): the rows as CSR, transposed by scipy's counting sort.
    rows = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(nnz, out=rows[1:])
    csc = sparse.csr_matrix((data, ids, rows), shape=(n_docs, n_vocab)).tocsc()
    return bm25_from_csc(csc.data, csc.indices.astype(np.int32, copy=False), csc.indptr.astype(np.int64), n_docs)


def bm25_from_csc(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, n_docs: int) -> bm25s.BM25:
    """A `bm25s.BM25` scoring with a CSC matrix of weights made before (`bm25_from_counts`, or a snapshot)."""
    bm25 = bm25s.BM25(k1=K1, b=B, method="lucene")
    bm25.scores = {"data": data, "indices": indices, "indptr": indptr, "num_docs": n_docs}
    bm25.nonoccurrence_array = None
    return bm25


def window_text(text: str, start: int, end: int) -> str:
    """The text of the window of `text` from line `start` to `end` (1-based, inclusive), as `windows` cuts it."""
    lines = text.split("\n")
    chunk = lines[start - 1 : end]
    if "\r" in text:
        chunk = [line.rstrip("\r") for line in chunk]
    return "\n".join(chunk)


def similarity(query_text: str, vocab: dict[str, int], segments, nnz: np.ndarray, method: str) -> np.ndarray:
    """Every window's similarity to the query, 0 where they share no token: BM25, or (method "jaccard") the
    Jaccard similarity of their token sets.

    `segments` score consecutive rows: each has `first` and `n` (its rows), `bm25` (from `bm25_from_counts`) and
    `n_vocab` (token ids at or above it came after it was built); `nnz` is every row's number of distinct tokens.
    """
    tokens = tokenize(query_text)
    # As in bm25s, a token the query repeats counts each time; Jaccard compares sets.
    ids = [vocab[t] for t in tokens if t in vocab]
    if method == "jaccard":
        ids = sorted(set(ids))
    out = np.zeros(len(nnz), dtype=np.float32)
    for seg in segments:
        known = [i for i in ids if i < seg.n_vocab]
        if not known:
            continue
        if method == "bm25":
            out[seg.first : seg.first + seg.n] = seg.bm25.get_scores_from_ids(known)
        else:  # Jaccard's |A ∩ B| from the postings: every stored entry is a token present in that window
            ptr, docs = seg.bm25.scores["indptr"], seg.bm25.scores["indices"]
            hits = np.concatenate([docs[ptr[t] : ptr[t + 1]] for t in known])
            out[seg.first : seg.first + seg.n] = np.bincount(hits, minlength=seg.n)
    if method == "jaccard":
        out /= np.maximum(nnz + len(set(tokens)) - out, 1)
    return out


def ranked(scores: np.ndarray):
    """Rows with a positive score, best first (ties: the earlier row first), sorting only as deep as is read."""
    candidates = np.flatnonzero(scores > 0)
    done, depth = 0, 64
    while done < len(candidates):
        head = candidates
        if len(candidates) > depth:
            # Everything tied with the depth-th score comes along, so each head is a prefix of the full order.
            kth = np.partition(scores[candidates], len(candidates) - depth)[len(candidates) - depth]
            head = candidates[scores[candidates] >= kth]
        order = head[np.lexsort((head, -scores[head]))]
        yield from order[done:].tolist()
        done = len(order)
        depth *= 8
