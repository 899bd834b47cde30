"""aider's repo map: definitions ranked by PageRank over the reference graph, fitted to a token budget.

Files are nodes; a file that references a name defined in another file gets an edge to it, weighted by how often
it uses the name (sqrt, so one chatty file does not dominate; names defined in many places count less). The walk
restarts at the current file, so the map favours what the current file depends on. Each file's rank is shared
among the definitions its referrers use, and the best definitions are shown as their signatures, grouped by file.

The graph is built once per index state (`RepoGraph`); a query is a personalised PageRank by power iteration
over sparse matrices (milliseconds), so the map can follow the cursor from file to file. Its inputs are kept per
file (`GraphData`: the names each file defines, the names it references and how often), updated file by file and
kept in the workspace's snapshot (`state` / `restore`), so neither a change nor a restart rebuilds them from the
whole repository; the definitions themselves are looked up in the index only for the names a query ranks.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from scipy import sparse

from repocomplete.context_engine.packing import RecordTokens, approx_tokens, text_tokens
from repocomplete.context_engine.records import ContextRecord, Definition
from repocomplete.context_engine.snapshot import SnapshotError, pack_strings, unpack_strings

DAMPING = 0.85


class RepoGraph:
    """The reference graph of one state of the repository, ready for personalised PageRank queries.

    Built from `definitions` and `identifiers` (path -> name counts), or from arrays (`from_arrays`, what
    `GraphData` keeps). The edges are never listed: a name defined in k files joins each of its referrers to all k,
    which in a large repository makes millions of edges (every `forward` to every other `forward`). The transition
    matrix factors through the names instead (referrers -> names -> definers, less the edge from a file to itself),
    so a PageRank step and the per-definition scores cost one pass over the (file, name) pairs.
    """

    def __init__(self, definitions: Iterable[Definition] = (), identifiers: Mapping[str, Counter] | None = None,
                 lookup: Callable[[list[tuple[str, str]]], Mapping[tuple[str, str], list[Definition]]] | None = None):
        by_key: dict[tuple[str, str], list[Definition]] = defaultdict(list)
        for d in definitions:
            by_key[(d.path, d.name)].append(d)
        identifiers = identifiers or {}
        files = sorted(set(identifiers) | {path for path, _ in by_key})
        node = {f: i for i, f in enumerate(files)}
        names: dict[str, int] = {}
        ref_file, ref_name, ref_count = [], [], []
        for path, counts in identifiers.items():
            for name, count in counts.items():
                ref_file.append(node[path])
                ref_name.append(names.setdefault(name, len(names)))
                ref_count.append(count)
        def_file = [node[path] for path, _ in by_key]
        def_name = [names.setdefault(name, len(names)) for _, name in by_key]
        self._setup(files, list(names), np.array(ref_file, np.int64), np.array(ref_name, np.int64),
                    np.array(ref_count, np.float64), np.array(def_file, np.int64), np.array(def_name, np.int64))
        self.lookup = lookup or (lambda keys: {k: by_key.get(k, []) for k in keys})

    @classmethod
    def from_arrays(cls, files: list[str], names: list[str], ref_file, ref_name, ref_count, def_file, def_name,
                    lookup) -> RepoGraph:
        """files: node order; (ref_file, ref_name, ref_count): how often each file references each name (one entry
        per pair); (def_file, def_name): which file defines which name (one entry per pair); names by id.
        lookup(keys): the definitions of each (path, name) key."""
        graph = cls.__new__(cls)
        graph._setup(files, names, np.asarray(ref_file, np.int64), np.asarray(ref_name, np.int64),
                     np.asarray(ref_count, np.float64), np.asarray(def_file, np.int64),
                     np.asarray(def_name, np.int64))
        graph.lookup = lookup
        return graph

    def _setup(self, files, names, ref_file, ref_name, ref_count, def_file, def_name) -> None:
        self.files = files
        self.node = {f: i for i, f in enumerate(files)}
        self.names = names
        n, n_names = len(files), len(names)
        definers = np.bincount(def_name, minlength=n_names).astype(np.float64)  # |D(name)|
        inv = np.divide(1.0, definers, out=np.zeros(n_names), where=definers > 0)
        keep = definers[ref_name] > 0  # a name defined nowhere makes no edge
        ref_file, ref_name, weight = ref_file[keep], ref_name[keep], np.sqrt(ref_count[keep])
        ref_key, def_key = ref_file * n_names + ref_name, def_file * n_names + def_name
        # Each definer's own reference to the name it defines, if any: where its key is among the sorted references.
        order = np.argsort(ref_key, kind="stable")
        sorted_keys = ref_key[order]
        at = np.searchsorted(sorted_keys, def_key)
        at_ok = at < len(order)
        hit = np.zeros(len(def_key), dtype=bool)
        hit[at_ok] = sorted_keys[at[at_ok]] == def_key[at_ok]
        # A file's edges for a name go to every definer but itself: weight sqrt(count) / |D| each.
        if (sorted_keys[1:] != sorted_keys[:-1]).all():  # one entry per (file, name): the hits are the self-references
            self_ref = np.zeros(len(ref_key), dtype=bool)
            self_ref[order[at[hit]]] = True
        else:
            self_ref = np.isin(ref_key, def_key)
        self.out_weight = np.bincount(ref_file, weights=weight * (definers[ref_name] - self_ref) * inv[ref_name],
                                      minlength=n) if n else np.zeros(0)
        # The weight of each definer's own reference to the name it defines (0 when it does not use it).
        self.def_self = np.zeros(len(def_key))
        self.def_self[hit] = weight[order[at[hit]]]
        self.def_file, self.def_name, self.def_inv = def_file, def_name, inv[def_name]
        # referrers -> names (weights sqrt(count)), names -> definers (1 / |D|), and the self-edges taken out.
        self.refs = sparse.csr_matrix((weight, (ref_name, ref_file)), shape=(n_names, n))
        self.defs = sparse.csr_matrix((self.def_inv, (def_file, def_name)), shape=(n, n_names))
        self.self_weight = np.bincount(def_file, weights=self.def_self * self.def_inv, minlength=n) if n else \
            np.zeros(0)
        self.dangling = self.out_weight == 0
        self.has_edges = bool((self.out_weight > 0).any())

    def _per_name(self, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rank / out-weight per file, the rank each name receives from its referrers)."""
        share = np.divide(rank, self.out_weight, out=np.zeros(len(rank)), where=self.out_weight > 0)
        return share, self.refs @ share

    def _step(self, rank: np.ndarray) -> np.ndarray:
        """The transition matrix times `rank`: what flows from each referrer to what it references."""
        share, by_name = self._per_name(rank)
        return np.maximum(self.defs @ by_name - self.self_weight * share, 0.0)

    def pagerank(self, current: str | None, iterations: int = 50, tol: float = 1e-8) -> np.ndarray:
        n = len(self.files)
        if current in self.node:
            restart = np.zeros(n)
            restart[self.node[current]] = 1.0
        else:
            restart = np.full(n, 1.0 / n)
        rank = np.full(n, 1.0 / n)
        for _ in range(iterations):
            spread = DAMPING * (self._step(rank) + rank[self.dangling].sum() * restart) + (1 - DAMPING) * restart
            if np.abs(spread - rank).sum() < tol:
                return spread
            rank = spread
        return rank

    def ranked_keys(self, current: str | None = None, limit: int = 2000) -> list[tuple[float, tuple[str, str]]]:
        """(score, (path, name)) of the best `limit` names, best first; the current file's own left out."""
        if not self.has_edges:
            return []
        rank = self.pagerank(current)
        share, by_name = self._per_name(rank)
        # A (file, name) key scores what the name's referrers other than the file itself send it.
        total = by_name[self.def_name] * self.def_inv
        scores = total - self.def_self * share[self.def_file] * self.def_inv
        scores[scores <= 1e-12 * total] = 0.0  # (rounding, where the file is the name's only referrer)
        top = _top(scores, limit)
        keep = scores[top] > 0
        if current in self.node:
            keep &= self.def_file[top] != self.node[current]  # the current file is in the prompt already
        top = top[keep]
        files, names = self.files, self.names
        return [(score, (files[f], names[n])) for score, f, n in
                zip(scores[top].tolist(), self.def_file[top].tolist(), self.def_name[top].tolist())]

    def definitions_of(self, keys: list[tuple[float, tuple[str, str]]]) -> list[tuple[float, Definition]]:
        """The (score, definition) pairs of ranked keys, in the ranking's order (score, then path and line)."""
        found = self.lookup([key for _, key in keys])
        ranked = [(score, d) for score, key in keys for d in found.get(key, ())]
        ranked.sort(key=lambda pair: (-pair[0], pair[1].path, pair[1].start_line))
        return ranked

    def rank_definitions(self, current: str | None = None, limit: int = 2000,
                         enough: int | None = None) -> list[tuple[float, Definition]]:
        """(score, definition) pairs, best first (at most `limit` names); the current file's own left out.

        `enough`: only the first `enough` pairs are wanted; fewer names are looked up (those tied with the last
        one needed included): what comes back is a prefix of the whole ranking, `enough` long at least when it
        has as many."""
        keys = self.ranked_keys(current, limit)
        return self.definitions_of(_prefix(keys, enough) if enough is not None else keys)


def _top(scores: np.ndarray, limit: int) -> np.ndarray:
    """np.argsort(-scores, kind="stable")[:limit] (best first, ties in index order), sorting only the best."""
    if len(scores) <= limit:
        return np.argsort(-scores, kind="stable")
    negated = -scores
    kth = np.partition(negated, limit - 1)[limit - 1]
    if np.isnan(kth):
        return np.argsort(negated, kind="stable")[:limit]
    head = np.flatnonzero(negated <= kth)  # every score above the limit-th, and all those tied with it (in order)
    return head[np.argsort(negated[head], kind="stable")][:limit]


def _prefix(keys: list[tuple[float, tuple[str, str]]], n: int) -> list[tuple[float, tuple[str, str]]]:
    """The first `n` ranked keys and every key tied with the last of them (each key has a definition at least, so
    their definitions are the first `n` of the ranking at least, and an exact prefix of it)."""
    if len(keys) <= n:
        return keys
    cut = keys[max(n, 1) - 1][0]
    return [(score, key) for score, key in keys if score >= cut]


def _cat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays).astype(np.int32, copy=False) if arrays else np.zeros(0, np.int32)


def _bounds(sizes: list[int]) -> np.ndarray:
    out = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=out[1:])
    return out


class _FileRefs:
    """One file's part of the graph: the names it references (ids, how often) and those it defines (ids)."""

    __slots__ = ("def_names", "ref_counts", "ref_names", "stamp")

    def __init__(self, stamp: str | None, ref_names: np.ndarray, ref_counts: np.ndarray, def_names: np.ndarray):
        self.stamp = stamp  # the sha1 of the file on disk it was read from; None: an editor buffer
        self.ref_names = ref_names  # int32, distinct
        self.ref_counts = ref_counts  # int32
        self.def_names = def_names  # int32, distinct

    def same(self, other: _FileRefs) -> bool:
        return (np.array_equal(self.ref_names, other.ref_names) and np.array_equal(self.ref_counts, other.ref_counts)
                and np.array_equal(self.def_names, other.def_names))


class GraphData:
    """The repo map's inputs, file by file, kept current by `set_file`; `graph()` is the RepoGraph of the current
    state (made again only after a change: a pass over the (file, name) pairs, no parsing, no database)."""

    def __init__(self):
        self._files: dict[str, _FileRefs] = {}
        self._names: dict[str, int] = {}
        self._name_list: list[str] = []
        self._lock = threading.Lock()
        self.version = 0  # bumped on every change

    def __len__(self) -> int:
        return len(self._files)

    def stamps(self) -> dict[str, str]:
        """path -> stamp of the files whose data came from disk (an editor buffer's has none)."""
        with self._lock:
            return {p: f.stamp for p, f in self._files.items() if f.stamp is not None}

    def _ids(self, names: Iterable[str]) -> np.ndarray:
        ids = []
        for name in names:
            i = self._names.get(name)
            if i is None:
                i = self._names[name] = len(self._name_list)
                self._name_list.append(name)
            ids.append(i)
        return np.array(ids, dtype=np.int32)

    def set_file(self, path: str, refs: Mapping[str, int] | None, defines: Iterable[str] = (),
                 stamp: str | None = None) -> None:
        """A file's references (name -> count) and defined names; `refs` None: the file is gone."""
        with self._lock:
            if refs is None:
                if self._files.pop(path, None) is not None:
                    self.version += 1
                return
            names = sorted(refs)
            new = _FileRefs(stamp, self._ids(names), np.array([refs[n] for n in names], dtype=np.int32),
                            self._ids(sorted(set(defines))))
            old = self._files.get(path)
            self._files[path] = new
            if old is None or not new.same(old):
                self.version += 1

    def graph(self, lookup) -> RepoGraph:
        """The RepoGraph of the current state; `lookup(keys)` finds the definitions of (path, name) keys."""
        with self._lock:
            files = sorted(self._files)
            parts = [self._files[p] for p in files]
            names = list(self._name_list)
            version = self.version
        ref_file = np.repeat(np.arange(len(files)), [len(f.ref_names) for f in parts])
        def_file = np.repeat(np.arange(len(files)), [len(f.def_names) for f in parts])
        graph = RepoGraph.from_arrays(files, names, ref_file, _cat([f.ref_names for f in parts]),
                                      _cat([f.ref_counts for f in parts]), def_file,
                                      _cat([f.def_names for f in parts]), lookup)
        graph.version = version
        return graph

    # -- the snapshot ------------------------------------------------------------------------------------------

    def state(self) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(meta, arrays) for a snapshot; None while a file's data came from an editor buffer. Names no file uses
        any more are left out."""
        with self._lock:
            if any(f.stamp is None for f in self._files.values()):
                return None
            files = sorted(self._files)
            parts = [self._files[p] for p in files]
            ref_names, def_names = _cat([f.ref_names for f in parts]), _cat([f.def_names for f in parts])
            seen = np.zeros(len(self._name_list), dtype=bool)
            seen[ref_names] = True
            seen[def_names] = True
            used = np.flatnonzero(seen)
            remap = np.full(len(self._name_list), -1, dtype=np.int32)
            remap[used] = np.arange(len(used), dtype=np.int32)
            arrays = {
                "paths": pack_strings(files),
                "stamps": pack_strings(f.stamp for f in parts),
                "names": pack_strings(self._name_list[i] for i in used.tolist()),
                "ref_bounds": _bounds([len(f.ref_names) for f in parts]),
                "ref_names": remap[ref_names],
                "ref_counts": _cat([f.ref_counts for f in parts]),
                "def_bounds": _bounds([len(f.def_names) for f in parts]),
                "def_names": remap[def_names],
            }
            return {"files": len(files), "names": len(used)}, arrays

    def restore(self, meta: dict, a: dict[str, np.ndarray]) -> dict[str, str]:
        """Replace everything with a snapshot's state; returns its files' stamps. Raises SnapshotError, with nothing
        changed, when the arrays are not consistent."""
        try:
            n_files, n_names = int(meta["files"]), int(meta["names"])
        except (KeyError, TypeError, ValueError) as e:
            raise SnapshotError(f"bad meta ({e})") from None

        def array(name: str, dtype, n: int | None = None) -> np.ndarray:
            x = a.get(name)
            if x is None or x.dtype != np.dtype(dtype) or x.ndim != 1 or (n is not None and len(x) != n):
                raise SnapshotError(f"array {name}: missing or malformed")
            return x

        paths = unpack_strings(array("paths", np.uint8), n_files)
        stamps = unpack_strings(array("stamps", np.uint8), n_files)
        names = unpack_strings(array("names", np.uint8), n_names)
        if len(set(paths)) != n_files or len(set(names)) != n_names:
            raise SnapshotError("duplicate paths or names")
        parts = {}
        for kind in ("ref", "def"):
            b = array(f"{kind}_bounds", np.int64, n_files + 1)
            ids = array(f"{kind}_names", np.int32)
            if b[0] != 0 or b[-1] != len(ids) or (np.diff(b) < 0).any():
                raise SnapshotError(f"inconsistent {kind} bounds")
            if len(ids) and (ids.min() < 0 or ids.max() >= n_names):
                raise SnapshotError(f"{kind} name ids out of range")
            parts[kind] = (b.tolist(), ids)
        counts = array("ref_counts", np.int32, len(parts["ref"][1]))
        (rb, ref_names), (db, def_names) = parts["ref"], parts["def"]
        files = {
            p: _FileRefs(stamp, ref_names[rb[i] : rb[i + 1]], counts[rb[i] : rb[i + 1]], def_names[db[i] : db[i + 1]])
            for i, (p, stamp) in enumerate(zip(paths, stamps))
        }
        with self._lock:
            self._files = files
            self._name_list = list(names)
            self._names = dict(zip(names, range(n_names)))
            self.version += 1
            return dict(zip(paths, stamps))


def rank_definitions(
    definitions: Iterable[Definition], identifiers: Mapping[str, Counter], current: str | None = None
) -> list[tuple[float, Definition]]:
    return RepoGraph(definitions, identifiers).rank_definitions(current)


def _file_text(items: list[tuple[float, Definition]]) -> tuple[str, list[tuple[float, Definition]]]:
    """One file's definitions (in rank order) as its record shows them: signatures in file order."""
    items = sorted(items, key=lambda pair: pair[1].start_line)
    return "\n".join(("    " if d.parent else "") + d.signature.strip() for _, d in items), items


def render(ranked: list[tuple[float, Definition]]) -> list[ContextRecord]:
    """One record per file: the chosen definitions' signatures, in file order."""
    by_path: dict[str, list[tuple[float, Definition]]] = defaultdict(list)
    for score, d in ranked:
        by_path[d.path].append((score, d))
    records = []
    for path, items in by_path.items():
        text, items = _file_text(items)
        records.append(
            ContextRecord(
                text=text,
                path=path,
                start_line=items[0][1].start_line,
                end_line=max(d.end_line for _, d in items),
                score=sum(score for score, _ in items),
                kind="repo_map",
                why=f"PageRank of {len(items)} definition(s) referenced from the current file's neighbourhood",
            )
        )
    records.sort(key=lambda r: -r.score)
    return records


MAX_PER_TOKEN = 4  # a definition costs a token at least: a budget takes this many per token at most, with room


def fit(ranked: list[tuple[float, Definition]], budget: int, count_tokens: Callable[[str], int] = approx_tokens,
        record_tokens: RecordTokens | None = None):
    """As many of the best definitions as fit in `budget` tokens, rendered. A record costs record_tokens(path,
    text), its header in the prompt included (default: count_tokens of its text).

    The definitions are added best first until the next one would pass the budget; each addition changes one
    file's record, so only that record is counted again (a tokenizer counts a few dozen texts, not every record
    at every step of a search)."""
    if not ranked or budget <= 0:
        return []
    return render(ranked[: _fitting(ranked, budget, record_tokens or text_tokens(count_tokens))])


def _fitting(ranked: list[tuple[float, Definition]], budget: int, cost_of: RecordTokens) -> int:
    """How many of the first definitions `fit` takes."""
    by_path: dict[str, list[tuple[float, Definition]]] = defaultdict(list)
    costs: dict[str, int] = {}
    total = n = 0
    for score, d in ranked:
        items = [*by_path[d.path], (score, d)]
        cost = cost_of(d.path, _file_text(items)[0])
        if total - costs.get(d.path, 0) + cost > budget:
            break
        total += cost - costs.get(d.path, 0)
        by_path[d.path], costs[d.path] = items, cost
        n += 1
    return n


def fit_graph(graph: RepoGraph, current: str | None, budget: int, count_tokens: Callable[[str], int] = approx_tokens,
              record_tokens: RecordTokens | None = None) -> list[ContextRecord]:
    """`fit` of the graph's ranking for `current`, the same records, looking up only the definitions the budget
    could take (more only if it takes all of those)."""
    if budget <= 0:
        return []
    cost_of = record_tokens or text_tokens(count_tokens)
    keys = graph.ranked_keys(current)
    want = MAX_PER_TOKEN * budget + 1
    while True:
        chosen = _prefix(keys, want)
        ranked = graph.definitions_of(chosen)
        n = _fitting(ranked, budget, cost_of)
        if n < len(ranked) or len(chosen) == len(keys):  # the budget stopped it, or the ranking is whole
            return render(ranked[:n])
        want *= 4


def repo_map(
    definitions: Iterable[Definition],
    identifiers: Mapping[str, Counter],
    budget: int,
    current: str | None = None,
    count_tokens: Callable[[str], int] = approx_tokens,
    record_tokens: RecordTokens | None = None,
) -> list[ContextRecord]:
    return fit(rank_definitions(definitions, identifiers, current), budget, count_tokens, record_tokens)
