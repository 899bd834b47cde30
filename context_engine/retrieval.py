"""Retrieval: similar code windows from the rest of the repository (RepoCoder / CrossCodeEval style).

Every file is cut into overlapping windows of `window_lines` lines (stride `window_stride`); the lines above the
cursor query them with BM25 or CrossCodeEval's Jaccard similarity over identifier sets (sparse.py), optionally
fused by reciprocal rank with dense all-MiniLM-L6-v2 embeddings in a faiss inner-product index (dense.py).
RepoCoder's iterative step queries again with the model's draft appended.

Documents change on every keystroke (unsaved buffers), so everything per window is cached by content: the token
ids and counts, and the embedding. The index is rebuilt lazily by the first query after a change, from the cached
counts; in large repositories the files edited since the last full build are scored by a small overlay instead.

Files on disk are added with a `stamp` (the sha1 of the bytes their text came from). With a `read_text` callable
(the engine passes the index's), their window texts are not kept in memory: a query reads the few it returns
back from the file (or the buffer) and checks each against its content key; a window whose file changed since is
passed over until the file is re-added. A base built from stamped files only is what `state` hands to a snapshot
(snapshot.py) and `restore` maps back at the next start: the BM25 weights, the per-window token counts (to update
or rebuild it), the vocabulary and, with dense retrieval, the embeddings; never a text.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import bm25s
import numpy as np

from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.dense import Embedder, flat_index, nearest
from repocomplete.context_engine.records import ContextRecord
from repocomplete.context_engine.snapshot import SnapshotError, pack_strings, unpack_strings
from repocomplete.context_engine.sparse import (Counts, bm25_from_counts, bm25_from_csc, count_windows, ranked,
                                                similarity, window_text, windows)

RRF_K = 60  # the constant of Cormack et al.'s reciprocal-rank fusion
FUSION_DEPTH = 50  # how deep each ranking goes into the fusion
# Edited files score in an overlay over an index of at least OVERLAY_MIN_BASE windows (smaller ones rebuild in
# a few ms), until the overlay holds more than OVERLAY_ROWS windows or 5% of the index. The base's weights keep
# its statistics meanwhile, which only a small share of edited windows leaves nearly right.
OVERLAY_MIN_BASE = 2000
OVERLAY_ROWS = 256
TEXT_CACHE = 4096  # window texts read back from their files, kept for the next queries
KEY_BYTES = 16


# -- queries and content keys ----------------------------------------------------------------------------------


def query_text_for(prefix: str, lines: int) -> str:
    """The last `lines` non-empty lines before the cursor (the cursor's own line up to the cursor included)."""
    kept = [line for line in prefix.split("\n") if line.strip()]
    return "\n".join(kept[-lines:]) if lines > 0 else ""


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


# -- the index --------------------------------------------------------------------------------------------------


@dataclass
class _File:
    """A document's windows with their token counts laid end to end, ready to be concatenated into an index."""

    starts: np.ndarray  # int32, 1-based first line per window
    ends: np.ndarray  # int32, last line
    keys: list[bytes]  # content hash per window
    ids: np.ndarray  # the windows' distinct token ids, one window after the other
    tf: np.ndarray
    nnz: np.ndarray  # distinct tokens per window
    lengths: np.ndarray  # tokens per window
    vectors: np.ndarray | None = None  # embeddings, one row per window, made on the first dense build


@dataclass
class _Segment:
    """Rows [first, first + n) of an index: their bm25s index and, with dense retrieval, their embeddings."""

    first: int
    n: int
    n_vocab: int  # token ids at or above it came after this segment was built
    bm25: bm25s.BM25
    dense: object | None = None  # faiss.IndexFlatIP


@dataclass
class _Index:
    """What queries read: every window as a row, file after file, scored by one or two segments.

    The base segment is a full build. Files edited since then are scored by a small overlay segment appended
    after it (rows `dead` are their stale base rows), so a keystroke does not rebuild the whole repository.
    """

    paths: list[str]
    file_of: np.ndarray  # row -> index into paths
    starts: np.ndarray
    ends: np.ndarray
    keys: list[bytes]
    nnz: np.ndarray  # distinct tokens per window (Jaccard's |A|)
    rows_of: dict[str, tuple[int, int]]  # a path's live rows [lo, hi)
    segments: list[_Segment]
    dead: np.ndarray  # bool per row


@dataclass
class _Base:
    index: _Index
    files: dict[str, _File]  # the documents it was built from
    df: np.ndarray  # document frequency per token id
    total_length: float


def _rows(files: list[tuple[str, _File]], first_path: int = 0) -> dict:
    """The per-row arrays of some files, concatenated."""
    cat = lambda xs, dtype: np.concatenate(xs) if xs else np.zeros(0, dtype)  # noqa: E731
    return dict(
        file_of=cat([np.full(len(f.keys), first_path + i, np.int32) for i, (_, f) in enumerate(files)], np.int32),
        starts=cat([f.starts for _, f in files], np.int32),
        ends=cat([f.ends for _, f in files], np.int32),
        nnz=cat([f.nnz for _, f in files], np.int32),
        lengths=cat([f.lengths for _, f in files], np.float32),
        ids=cat([f.ids for _, f in files], np.int32),
        tf=cat([f.tf for _, f in files], np.float32),
    )


def _array(arrays: dict[str, np.ndarray], name: str, dtype, shape: tuple | None) -> np.ndarray:
    a = arrays.get(name)
    if a is None or a.dtype != np.dtype(dtype) or (shape is not None and a.shape != shape) or (
            shape is None and a.ndim != 1):
        raise SnapshotError(f"array {name}: missing, or not {np.dtype(dtype)} {shape}")
    return a


def _cat(arrays: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)


def _check(ok, what: str) -> None:
    if not ok:
        raise SnapshotError(f"inconsistent {what}")


def _file_counts(f: _File) -> dict[bytes, Counts]:
    """A document's windows as Counts by content key (without their texts)."""
    ends = np.cumsum(f.nnz, dtype=np.int64)
    out = {}
    for i, key in enumerate(f.keys):
        lo, hi = int(ends[i] - f.nnz[i]), int(ends[i])
        out[key] = Counts(None, f.ids[lo:hi], f.tf[lo:hi], int(f.lengths[i]))
    return out


# -- the retriever ---------------------------------------------------------------------------------------------


class Retriever:
    """Sliding windows over the repository's files, queried by the lines above the cursor."""

    def __init__(self, config: ContextConfig, embedder: Embedder | None = None,
                 read_text: Callable[[str], str | None] | None = None,
                 read_window: Callable[[str, int, int], str | None] | None = None):
        self.config = config
        self._embedder = embedder
        self._read_text = read_text  # a document's current text (buffer or disk), for windows not kept in memory
        # One window of it (path, first line, last line), cheaper than the whole text; checked by content key.
        self._read_window = read_window
        self._files: dict[str, _File] = {}
        self._stamps: dict[str, str] = {}  # documents added from disk: the sha1 of the bytes their text came from
        # By content: unchanged windows are never tokenised twice. With `read_text`, only the windows of unstamped
        # documents (editor buffers) are kept here, with their texts; others' texts are read back when returned.
        self._counts: dict[bytes, Counts] = {}
        self._texts: OrderedDict[bytes, str] = OrderedDict()  # window texts read back, most recent last
        self._vectors: dict[bytes, np.ndarray] = {}  # by content: unchanged windows are never embedded twice
        self._vocab: dict[str, int] = {}
        self._base: _Base | None = None
        self._dirty: set[str] = set()  # paths added, changed or removed since the base was built
        self._index: _Index | None = None  # None: documents changed since the last build
        self._lock = threading.RLock()  # the LSP server queries from worker threads while files change

    def __len__(self) -> int:
        with self._lock:
            return sum(len(f.keys) for f in self._files.values())

    def windows_of(self, path: str) -> list[tuple[int, int]]:
        """The (start_line, end_line) of a document's windows."""
        with self._lock:
            f = self._files.get(path)
            return [] if f is None else list(zip(f.starts.tolist(), f.ends.tolist()))

    def sizes(self) -> dict[str, int]:
        """How big the index is once up to date: windows, distinct window texts, tokens in the vocabulary."""
        with self._lock:
            self.build()
            return {"windows": len(self), "distinct": len(set(self._index.keys)), "vocabulary": len(self._vocab)}

    # -- documents ---------------------------------------------------------------------------------------------

    def stamps(self) -> dict[str, str]:
        """path -> stamp of the documents added from disk (an editor buffer has none)."""
        with self._lock:
            return dict(self._stamps)

    def add_document(self, path: str, text: str, stamp: str | None = None) -> None:
        """Add or replace a file (cheap when most of its windows are unchanged: only new ones are tokenised).

        `stamp`: the text is the file on disk, whose bytes have this sha1 (None: an editor buffer)."""
        spans = windows(text, self.config.window_lines, self.config.window_stride)
        with self._lock:
            keys = [_digest(chunk) for _, _, chunk in spans]
            starts = [s for s, _, _ in spans]
            old = self._files.get(path)
            if old is not None and old.keys == keys and old.starts.tolist() == starts:
                self._stamp(path, stamp)
                return
            keep = stamp is None or self._read_text is None  # keep the texts in memory (and the counts cached)
            local: dict[bytes, Counts] = {}
            reuse = _file_counts(old) if old is not None else {}  # its unchanged windows: counted already
            for k in keys:
                c = self._counts.get(k) or reuse.get(k)
                if c is not None:
                    local[k] = c
            count_windows(local, self._vocab, text, spans, keys)
            if old is not None and old.vectors is not None and self.config.dense:
                for k, v in zip(old.keys, old.vectors):  # its unchanged windows: embedded already
                    self._vectors.setdefault(k, v)
            if keep:
                for (_, _, chunk), k in zip(spans, keys):
                    c = local[k]
                    if c.text is None:
                        c = local[k] = Counts(chunk, c.ids, c.tf, c.length)
                    self._counts[k] = c
            counts = [local[k] for k in keys]
            self._files[path] = _File(
                starts=np.array(starts, dtype=np.int32),
                ends=np.array([e for _, e, _ in spans], dtype=np.int32),
                keys=keys,
                ids=np.concatenate([c.ids for c in counts]) if counts else np.zeros(0, np.int32),
                tf=np.concatenate([c.tf for c in counts]) if counts else np.zeros(0, np.float32),
                nnz=np.array([len(c.ids) for c in counts], dtype=np.int32),
                lengths=np.array([c.length for c in counts], dtype=np.float32),
            )
            self._stamp(path, stamp)
            self._dirty.add(path)
            self._index = None

    def _stamp(self, path: str, stamp: str | None) -> None:
        if stamp is None:
            self._stamps.pop(path, None)
        else:
            self._stamps[path] = stamp

    def remove_document(self, path: str) -> None:
        with self._lock:
            self._stamps.pop(path, None)
            if self._files.pop(path, None) is not None:
                self._dirty.add(path)
                self._index = None

    def build(self, full: bool = False) -> None:
        """Bring the index up to date now (queries do it lazily); `full`: rebuild from scratch, no overlay.

        With `config.dense`, the windows not yet embedded are embedded here.
        """
        with self._lock:
            if self._index is not None and not (full and self._dirty):
                return
            live = sum(len(f.keys) for f in self._files.values())
            overlay = sum(len(self._files[p].keys) for p in self._dirty if p in self._files)
            base_rows = len(self._base.index.keys) if self._base is not None else 0
            if (full or base_rows < OVERLAY_MIN_BASE or overlay > max(OVERLAY_ROWS, base_rows // 20)
                    or len(self._counts) > 2 * live + 1024):
                self._base = self._build_base()
                self._dirty.clear()
                self._index = self._base.index
            else:
                self._index = self._build_overlay()

    def _build_base(self) -> _Base:
        self._forget_stale()
        files = list(self._files.items())
        rows = _rows(files)
        n_vocab = len(self._vocab)
        bm25 = bm25_from_counts(rows["ids"], rows["tf"], rows["nnz"], rows["lengths"], n_vocab)
        segment = _Segment(0, len(rows["nnz"]), n_vocab, bm25, self._dense_index(files))
        rows_of, row = {}, 0
        for path, f in files:
            rows_of[path] = (row, row + len(f.keys))
            row += len(f.keys)
        index = _Index(
            paths=[p for p, _ in files],
            file_of=rows["file_of"],
            starts=rows["starts"],
            ends=rows["ends"],
            keys=[k for _, f in files for k in f.keys],
            nnz=rows["nnz"],
            rows_of=rows_of,
            segments=[segment] if row else [],
            dead=np.zeros(row, dtype=bool),
        )
        df = np.bincount(rows["ids"], minlength=n_vocab)
        return _Base(index, dict(self._files), df, float(rows["lengths"].sum()))

    def _build_overlay(self) -> _Index:
        """The base plus the files edited since, scored with the statistics of the corpus as it is now."""
        base, n_vocab = self._base, len(self._vocab)
        old = [base.files[p] for p in sorted(self._dirty) if p in base.files]
        new = [(p, self._files[p]) for p in sorted(self._dirty) if p in self._files]
        gone, rows = _rows([("", f) for f in old]), _rows(new, len(base.index.paths))
        df = np.zeros(n_vocab, dtype=np.int64)
        df[: len(base.df)] += base.df
        df -= np.bincount(gone["ids"], minlength=n_vocab)
        df += np.bincount(rows["ids"], minlength=n_vocab)
        n_docs = len(base.index.keys) - len(gone["nnz"]) + len(rows["nnz"])
        total = base.total_length - gone["lengths"].sum() + rows["lengths"].sum()
        b = base.index
        first = len(b.keys)
        rows_of = {p: r for p, r in b.rows_of.items() if p not in self._dirty}
        dead = np.zeros(first + len(rows["nnz"]), dtype=bool)
        for p in self._dirty:
            if p in b.rows_of:
                dead[slice(*b.rows_of[p])] = True
        row = first
        for p, f in new:
            rows_of[p] = (row, row + len(f.keys))
            row += len(f.keys)
        segments = list(b.segments)
        if new and row > first:
            bm25 = bm25_from_counts(rows["ids"], rows["tf"], rows["nnz"], rows["lengths"], n_vocab,
                                    stats=(df, n_docs, total / max(n_docs, 1)))
            segments.append(_Segment(first, row - first, n_vocab, bm25, self._dense_index(new)))
        return _Index(
            paths=b.paths + [p for p, _ in new],
            file_of=np.concatenate([b.file_of, rows["file_of"]]),
            starts=np.concatenate([b.starts, rows["starts"]]),
            ends=np.concatenate([b.ends, rows["ends"]]),
            keys=b.keys + [k for _, f in new for k in f.keys],
            nnz=np.concatenate([b.nnz, rows["nnz"]]),
            rows_of=rows_of,
            segments=segments,
            dead=dead,
        )

    def _forget_stale(self) -> None:
        # Every keystroke in a buffer makes new windows; drop the old ones once they clearly outnumber the live
        # ones, but keep recent history (a file removed and re-added, an undo) cheap. Embeddings cost more to
        # recompute than tokens, so more of them are kept.
        n_live = sum(len(f.keys) for f in self._files.values())
        if len(self._counts) > 2 * n_live + 1024:
            live = {k for f in self._files.values() for k in f.keys}
            self._counts = {k: v for k, v in self._counts.items() if k in live}
            self._compact_vocab()
        if len(self._vectors) > 4 * n_live + 4096:
            live = {k for f in self._files.values() for k in f.keys}
            self._vectors = {k: v for k, v in self._vectors.items() if k in live}

    def _compact_vocab(self) -> None:
        if not self._counts and not self._files:
            return
        seen = np.zeros(len(self._vocab), dtype=bool)
        for c in self._counts.values():
            seen[c.ids] = True
        for f in self._files.values():
            seen[f.ids] = True
        used = np.flatnonzero(seen)
        if len(used) * 2 > len(self._vocab):
            return
        remap = np.full(len(self._vocab), -1, dtype=np.int32)
        remap[used] = np.arange(len(used), dtype=np.int32)
        self._vocab = {t: int(remap[i]) for t, i in self._vocab.items() if remap[i] >= 0}
        for c in self._counts.values():  # remap is increasing, so the ids stay sorted
            c.ids = remap[c.ids]
        for f in self._files.values():
            f.ids = remap[f.ids]

    def _dense_index(self, files: list[tuple[str, _File]]):
        if not self.config.dense or not any(f.keys for _, f in files):
            return None
        texts: dict[bytes, str] = {}
        for path, f in files:
            if f.vectors is not None:
                continue
            for k, text in zip(f.keys, self._texts_of(path, f)):
                if k not in self._vectors and k not in texts:
                    # A window whose text is gone (its file changed since) gets a vector of zeros: never similar.
                    texts[k] = text
        if texts:
            known = [k for k, t in texts.items() if t is not None]
            vectors = self._get_embedder().embed([texts[k] for k in known])
            self._vectors.update(zip(known, vectors))
        dim = self._get_embedder().dim
        for _, f in files:
            if f.vectors is None and f.keys:
                zero = np.zeros(dim, dtype=np.float32)
                f.vectors = np.stack([self._vectors.get(k, zero) for k in f.keys])
        return flat_index(np.concatenate([f.vectors for _, f in files if f.keys]), dim)

    def _texts_of(self, path: str, f: _File) -> list[str | None]:
        """The texts of a document's windows: kept in memory, else read back (None: the document changed since)."""
        out: list[str | None] = []
        doc: list[str | None] = []
        for key, start, end in zip(f.keys, f.starts.tolist(), f.ends.tolist()):
            c = self._counts.get(key)
            if c is not None and c.text is not None:
                out.append(c.text)
                continue
            if not doc:
                doc.append(self._read_text(path) if self._read_text is not None else None)
            text = window_text(doc[0], start, end) if doc[0] is not None else None
            out.append(text if text is not None and _digest(text) == key else None)
        return out

    def _get_embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder.shared()
        return self._embedder

    # -- the snapshot ------------------------------------------------------------------------------------------

    def state(self) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(meta, arrays) for a snapshot (snapshot.py) of the index, brought up to date as a full build first; None
        while a document without a stamp (an editor buffer) is in it: a snapshot holds files on disk only.

        The vocabulary is cut to the tokens the files use (a removed file's words go with it); no text is kept."""
        with self._lock:
            if any(p not in self._stamps for p in self._files):
                return None
            self.build(full=True)
            index = self._base.index
            files = [self._base.files[p] for p in index.paths]
            n_rows = len(index.keys)
            ids = _cat([f.ids for f in files], np.int32)
            n_vocab = index.segments[0].n_vocab if index.segments else 0
            seen = np.zeros(n_vocab, dtype=bool)
            seen[ids] = True
            used = np.flatnonzero(seen)
            remap = np.full(n_vocab, -1, dtype=np.int32)
            remap[used] = np.arange(len(used), dtype=np.int32)
            tokens = [""] * len(self._vocab)
            for token, i in self._vocab.items():
                tokens[i] = token
            if index.segments:
                scores = index.segments[0].bm25.scores
                data, indices = scores["data"], scores["indices"]
                indptr = np.asarray(scores["indptr"], dtype=np.int64)[np.append(used, n_vocab)]
            else:
                data, indices, indptr = np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(1, np.int64)
            file_rows = np.zeros(len(files) + 1, dtype=np.int64)
            np.cumsum([len(f.keys) for f in files], out=file_rows[1:])
            arrays = {
                "paths": pack_strings(index.paths),
                "stamps": pack_strings(self._stamps[p] for p in index.paths),
                "vocab": pack_strings(tokens[i] for i in used.tolist()),
                "file_rows": file_rows,
                "starts": index.starts.astype(np.int32, copy=False),
                "ends": index.ends.astype(np.int32, copy=False),
                "nnz": index.nnz.astype(np.int32, copy=False),
                "lengths": _cat([f.lengths for f in files], np.float32),
                "keys": np.frombuffer(b"".join(index.keys), dtype=np.uint8).reshape(n_rows, KEY_BYTES),
                "ids": remap[ids],
                "tf": _cat([f.tf for f in files], np.float32),
                "data": np.asarray(data, dtype=np.float32),
                "indices": np.asarray(indices, dtype=np.int32),
                "indptr": indptr,
            }
            dim = 0
            if self.config.dense and n_rows and all(f.vectors is not None for f in files if f.keys):
                arrays["vectors"] = np.concatenate([f.vectors for f in files if f.keys]).astype(np.float32)
                dim = arrays["vectors"].shape[1]
            meta = {"files": len(files), "windows": n_rows, "vocab": len(used), "dim": dim,
                    "window_lines": self.config.window_lines, "window_stride": self.config.window_stride}
            return meta, arrays

    def restore(self, meta: dict, a: dict[str, np.ndarray]) -> dict[str, str]:
        """Replace everything with a snapshot's state (`state`); returns its documents' stamps. Raises
        SnapshotError, with nothing changed, when the arrays are not consistent (a damaged or foreign file)."""
        try:
            n_files, n_rows, n_vocab = int(meta["files"]), int(meta["windows"]), int(meta["vocab"])
            dim = int(meta.get("dim", 0))
            if (meta.get("window_lines"), meta.get("window_stride")) != (self.config.window_lines,
                                                                         self.config.window_stride):
                raise SnapshotError("made with other window sizes")
        except (KeyError, TypeError, ValueError) as e:
            raise SnapshotError(f"bad meta ({e})") from None
        paths = unpack_strings(_array(a, "paths", np.uint8, None), n_files)
        stamps = unpack_strings(_array(a, "stamps", np.uint8, None), n_files)
        vocab = unpack_strings(_array(a, "vocab", np.uint8, None), n_vocab)
        if len(set(paths)) != n_files or len(set(vocab)) != n_vocab:
            raise SnapshotError("duplicate paths or tokens")
        file_rows = _array(a, "file_rows", np.int64, (n_files + 1,))
        starts = _array(a, "starts", np.int32, (n_rows,))
        ends = _array(a, "ends", np.int32, (n_rows,))
        nnz = _array(a, "nnz", np.int32, (n_rows,))
        lengths = _array(a, "lengths", np.float32, (n_rows,))
        keys = _array(a, "keys", np.uint8, (n_rows, KEY_BYTES))
        n_entries = int(nnz.sum(dtype=np.int64))
        ids = _array(a, "ids", np.int32, (n_entries,))
        tf = _array(a, "tf", np.float32, (n_entries,))
        data = _array(a, "data", np.float32, (n_entries,))
        indices = _array(a, "indices", np.int32, (n_entries,))
        indptr = _array(a, "indptr", np.int64, (n_vocab + 1,))
        _check(file_rows[0] == 0 and file_rows[-1] == n_rows and (np.diff(file_rows) >= 0).all(), "file rows")
        _check(indptr[0] == 0 and indptr[-1] == n_entries and (np.diff(indptr) >= 0).all(), "postings")
        _check(not n_rows or (nnz.min() >= 0 and (starts >= 1).all() and (ends >= starts).all()), "windows")
        _check(not n_entries or (0 <= ids.min() and ids.max() < n_vocab), "token ids")
        _check(not n_entries or (0 <= indices.min() and indices.max() < n_rows), "rows")
        vectors = None
        if self.config.dense and dim and "vectors" in a:
            vectors = _array(a, "vectors", np.float32, (n_rows, dim))
            if vectors.shape[1] != self._get_embedder().dim:
                vectors = None  # another embedding model: embedded again when needed

        raw = keys.tobytes()
        key_list = [raw[i : i + KEY_BYTES] for i in range(0, len(raw), KEY_BYTES)]
        entry = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(nnz, out=entry[1:])
        bounds = file_rows.tolist()
        files: dict[str, _File] = {}
        rows_of: dict[str, tuple[int, int]] = {}
        for i, path in enumerate(paths):
            lo, hi = bounds[i], bounds[i + 1]
            e0, e1 = int(entry[lo]), int(entry[hi])
            files[path] = _File(starts[lo:hi], ends[lo:hi], key_list[lo:hi], ids[e0:e1], tf[e0:e1], nnz[lo:hi],
                                lengths[lo:hi], vectors[lo:hi] if vectors is not None else None)
            rows_of[path] = (lo, hi)
        segments = []
        if n_rows:
            dense = flat_index(np.ascontiguousarray(vectors), vectors.shape[1]) if vectors is not None else None
            segments.append(_Segment(0, n_rows, n_vocab, bm25_from_csc(data, indices, indptr, n_rows), dense))
        index = _Index(
            paths=list(paths),
            file_of=np.repeat(np.arange(n_files, dtype=np.int32), np.diff(file_rows)),
            starts=starts,
            ends=ends,
            keys=key_list,
            nnz=nnz,
            rows_of=rows_of,
            segments=segments,
            dead=np.zeros(n_rows, dtype=bool),
        )
        with self._lock:
            self._files = files
            self._stamps = dict(zip(paths, stamps))
            self._vocab = dict(zip(vocab, range(n_vocab)))
            self._counts, self._vectors = {}, {}
            self._texts.clear()
            self._base = _Base(index, dict(files), np.diff(indptr), float(lengths.sum()))
            self._dirty = set()
            self._index = index
            if self.config.dense and vectors is None and n_rows:
                self._index = None  # embedded at the first build
                self._dirty = set(paths)
            return dict(self._stamps)

    # -- queries -----------------------------------------------------------------------------------------------

    def query(
        self,
        query_text: str,
        k: int = 5,
        exclude: tuple[str, int, int] | None = None,
        method: str = "bm25",
        about: str | None = None,
    ) -> list[ContextRecord]:
        """The `k` windows most similar to `query_text`, best first, identical windows once.

        `exclude=(path, start_line, end_line)`: the windows of `path` overlapping those lines (the cursor's own
        window, which would leak the answer) are not returned; the file's other windows are.
        `method`: "bm25" or "jaccard" (CrossCodeEval's similarity over token sets); with `config.dense` either is
        fused with the dense ranking by reciprocal rank. `about` names the query in the records' `why`.
        """
        if method not in ("bm25", "jaccard"):
            raise ValueError(f"unknown retrieval method {method!r}; known: bm25, jaccard")
        if about is None:
            n = query_text.count("\n") + 1
            about = f"the {n} line{'s' if n != 1 else ''} above the cursor"
        with self._lock:
            self.build()
            index = self._index
            if k <= 0 or not index.keys:
                return []
            masked = index.dead | self._hidden(index, exclude)
            scores = similarity(query_text, self._vocab, index.segments, index.nnz, method)
            scores[masked] = 0.0
            label, digits = ("BM25", 1) if method == "bm25" else ("Jaccard", 2)
            docs: dict[str, str | None] = {}  # documents read back for this query

            def text_of(r: int) -> str | None:
                return self._row_text(index, r, docs)

            if not self.config.dense:
                rows = self._distinct(index, ranked(scores), k, text_of)
                picked = [(r, float(scores[r]), f"{label} {scores[r]:.{digits}f} for {about}") for r in rows]
            else:
                picked = self._fuse(index, query_text, scores, masked, k, label, about, text_of)
            return [
                ContextRecord(text_of(r), index.paths[index.file_of[r]], int(index.starts[r]),
                              int(index.ends[r]), score, "retrieval", why)
                for r, score, why in picked
            ]

    def query_iterative(
        self, prefix: str, draft: str, k: int = 5, exclude: tuple[str, int, int] | None = None, method: str = "bm25"
    ) -> list[ContextRecord]:
        """RepoCoder's second step: query with the last `query_lines` lines above the cursor plus the draft."""
        text = query_text_for(prefix + draft, self.config.query_lines + draft.count("\n"))
        n = self.config.query_lines
        return self.query(text, k, exclude, method, about=f"the {n} lines above the cursor and the draft")

    def _hidden(self, index: _Index, exclude: tuple[str, int, int] | None) -> np.ndarray:
        """Rows of the excluded file that overlap the excluded lines."""
        hidden = np.zeros(len(index.keys), dtype=bool)
        if exclude is not None and exclude[0] in index.rows_of:
            path, first, last = exclude
            lo, hi = index.rows_of[path]
            hidden[lo:hi] = (index.starts[lo:hi] <= last) & (index.ends[lo:hi] >= first)
        return hidden

    def _row_text(self, index: _Index, r: int, docs: dict[str, str | None]) -> str | None:
        """A row's window text: kept in memory, else read back from its document and checked against the row's
        content key (None: the document changed since it was added, or cannot be read)."""
        key = index.keys[r]
        c = self._counts.get(key)
        if c is not None and c.text is not None:
            return c.text
        text = self._texts.get(key)
        if text is not None:
            self._texts.move_to_end(key)
            return text
        path = index.paths[index.file_of[r]]
        if self._read_window is not None:
            text = self._read_window(path, int(index.starts[r]), int(index.ends[r]))
        elif self._read_text is not None:
            if path not in docs:
                docs[path] = self._read_text(path)
            text = window_text(docs[path], int(index.starts[r]), int(index.ends[r])) if docs[path] is not None \
                else None
        else:
            return None
        if text is None or _digest(text) != key:
            return None
        self._texts[key] = text
        while len(self._texts) > TEXT_CACHE:
            self._texts.popitem(last=False)
        return text

    @staticmethod
    def _distinct(index: _Index, ranked, k: int, text_of: Callable[[int], str | None] | None = None) -> list[int]:
        """The first k rows of `ranked` whose texts differ (a copied block is shown once, where it ranks first);
        with `text_of`, only rows whose text it finds."""
        seen: set[bytes] = set()
        out = []
        for r in ranked:
            if index.keys[r] not in seen:
                if text_of is not None and text_of(r) is None:
                    continue  # its file changed since it was indexed: the same text elsewhere may still come
                seen.add(index.keys[r])
                out.append(r)
                if len(out) == k:
                    break
        return out

    def _fuse(self, index: _Index, query_text: str, scores: np.ndarray, masked: np.ndarray, k: int, label: str,
              about: str, text_of: Callable[[int], str | None]) -> list[tuple[int, float, str]]:
        """Reciprocal-rank fusion of the sparse and the dense rankings (distinct texts, FUSION_DEPTH deep each)."""
        depth = max(FUSION_DEPTH, k)
        sparse = self._distinct(index, ranked(scores), depth)
        vector = self._get_embedder().embed([query_text])
        found: list[tuple[float, int]] = []
        for seg in index.segments:
            want = min(seg.n, depth + int(masked[seg.first : seg.first + seg.n].sum()))
            found += [(x, seg.first + r) for x, r in nearest(seg.dense, vector, want)]
        # Like a sparse score of 0, a similarity <= 0 says nothing: such windows stay out of the ranking.
        found = [(x, r) for x, r in sorted(found, key=lambda f: (-f[0], f[1])) if x > 0 and not masked[r]]
        similarity = {r: x for x, r in found}
        dense = self._distinct(index, (r for _, r in found), depth)
        sparse_rank = {index.keys[r]: (n, r) for n, r in enumerate(sparse, 1)}
        dense_rank = {index.keys[r]: (n, r) for n, r in enumerate(dense, 1)}
        fused: dict[bytes, float] = {}
        for ranks in (sparse_rank, dense_rank):
            for key, (n, _) in ranks.items():
                fused[key] = fused.get(key, 0.0) + 1.0 / (RRF_K + n)
        out = []
        for key in sorted(fused, key=lambda key: -fused[key]):  # a stable sort: sparse order breaks ties
            row = (sparse_rank.get(key) or dense_rank[key])[1]
            if text_of(row) is None:
                continue  # its file changed since it was indexed
            parts = []
            if key in dense_rank:
                parts.append(f"dense {similarity[dense_rank[key][1]]:.2f}")
            if key in sparse_rank:
                parts.append(f"{label} rank {sparse_rank[key][0]}")
            out.append((row, fused[key], f"{' + '.join(parts)} (RRF) for {about}"))
            if len(out) == k:
                break
        return out
