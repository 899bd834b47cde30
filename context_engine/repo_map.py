"""aider's repo map: definitions ranked by PageRank over the reference graph, fitted to a token budget.

Files are nodes; a file that references a name defined in another file gets an edge to it, weighted by how often
it uses the name (sqrt, so one chatty file does not dominate; names defined in many places count less). The walk
restarts at the current file, so the map favours what the current file depends on. Each file's rank is shared
among the definitions its referrers use, and the best definitions are shown as their signatures, grouped by file.

The graph is built once per index state (`RepoGraph`); a query is a personalised PageRank by power iteration
over a sparse matrix (milliseconds), so the map can follow the cursor from file to file.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from scipy import sparse

from repocomplete.context_engine.packing import RecordTokens, approx_tokens, text_tokens
from repocomplete.context_engine.records import ContextRecord, Definition

DAMPING = 0.85


class RepoGraph:
    def __init__(self, definitions: Iterable[Definition], identifiers: Mapping[str, Counter]):
        defines: dict[str, set[str]] = defaultdict(set)
        self.by_key: dict[tuple[str, str], list[Definition]] = defaultdict(list)
        for d in definitions:
            defines[d.name].add(d.path)
            self.by_key[(d.path, d.name)].append(d)
        files = sorted(set(identifiers) | {p for paths in defines.values() for p in paths})
        self.files = files
        self.node = {f: i for i, f in enumerate(files)}
        src, dst, weight, names = [], [], [], []
        for referrer, counts in identifiers.items():
            for name, count in counts.items():
                targets = defines.get(name)
                if not targets:
                    continue
                w = math.sqrt(count) / len(targets)
                for target in targets:
                    if target != referrer:
                        src.append(self.node[referrer])
                        dst.append(self.node[target])
                        weight.append(w)
                        names.append(name)
        self.src = np.array(src, dtype=np.int64)
        self.dst = np.array(dst, dtype=np.int64)
        self.weight = np.array(weight, dtype=np.float64)
        # Each edge feeds one (defining file, name) key: scores are summed per key with one bincount.
        key_ids: dict[tuple[int, str], int] = {}
        self.edge_key = np.array([key_ids.setdefault((d, name), len(key_ids)) for d, name in zip(dst, names)],
                                 dtype=np.int64)
        self.keys = [(files[d], name) for d, name in key_ids]
        n = len(files)
        self.out_weight = np.bincount(self.src, weights=self.weight, minlength=n) if n else np.zeros(0)
        # Column-stochastic transition matrix: rank flows from a referrer to what it references.
        share = self.weight / np.where(self.out_weight[self.src] > 0, self.out_weight[self.src], 1)
        self.matrix = sparse.csr_matrix((share, (self.dst, self.src)), shape=(n, n))
        self.dangling = self.out_weight == 0

    def pagerank(self, current: str | None, iterations: int = 50, tol: float = 1e-8) -> np.ndarray:
        n = len(self.files)
        if current in self.node:
            restart = np.zeros(n)
            restart[self.node[current]] = 1.0
        else:
            restart = np.full(n, 1.0 / n)
        rank = np.full(n, 1.0 / n)
        for _ in range(iterations):
            spread = DAMPING * (self.matrix @ rank + rank[self.dangling].sum() * restart) + (1 - DAMPING) * restart
            if np.abs(spread - rank).sum() < tol:
                return spread
            rank = spread
        return rank

    def rank_definitions(self, current: str | None = None, limit: int = 2000) -> list[tuple[float, Definition]]:
        """(score, definition) pairs, best first (at most `limit` names); the current file's own left out."""
        if len(self.src) == 0:
            return []
        rank = self.pagerank(current)
        contribution = rank[self.src] * self.weight / self.out_weight[self.src]
        scores = np.bincount(self.edge_key, weights=contribution, minlength=len(self.keys))
        ranked = []
        for k in np.argsort(-scores)[:limit]:
            path, name = self.keys[k]
            if path == current or scores[k] <= 0:
                continue  # the current file is in the prompt already
            for d in self.by_key.get((path, name), ()):
                ranked.append((float(scores[k]), d))
        ranked.sort(key=lambda pair: (-pair[0], pair[1].path, pair[1].start_line))
        return ranked


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


def fit(ranked: list[tuple[float, Definition]], budget: int, count_tokens: Callable[[str], int] = approx_tokens,
        record_tokens: RecordTokens | None = None):
    """As many of the best definitions as fit in `budget` tokens, rendered. A record costs record_tokens(path,
    text), its header in the prompt included (default: count_tokens of its text).

    The definitions are added best first until the next one would pass the budget; each addition changes one
    file's record, so only that record is counted again (a tokenizer counts a few dozen texts, not every record
    at every step of a search)."""
    if not ranked or budget <= 0:
        return []
    cost_of = record_tokens or text_tokens(count_tokens)
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
    return render(ranked[:n])


def repo_map(
    definitions: Iterable[Definition],
    identifiers: Mapping[str, Counter],
    budget: int,
    current: str | None = None,
    count_tokens: Callable[[str], int] = approx_tokens,
    record_tokens: RecordTokens | None = None,
) -> list[ContextRecord]:
    return fit(rank_definitions(definitions, identifiers, current), budget, count_tokens, record_tokens)
