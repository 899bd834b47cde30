"""aider's repo map: definitions ranked by PageRank over the reference graph, fitted to a token budget.

Files are nodes; a file that references a name defined in another file gets an edge to it, weighted by how often
it uses the name (sqrt, so one chatty file does not dominate; names defined in many places count less). The walk
restarts at the current file, so the map favours what the current file depends on. Each file's rank is shared
among the definitions its referrers use, and the best definitions are shown as their signatures, grouped by file.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping

import networkx as nx

from context_engine.packing import approx_tokens
from context_engine.records import ContextRecord, Definition


def rank_definitions(
    definitions: Iterable[Definition],
    identifiers: Mapping[str, Counter],
    current: str | None = None,
    mentioned: Iterable[str] = (),
) -> list[tuple[float, Definition]]:
    """(score, definition) pairs, best first."""
    defines: dict[str, set[str]] = defaultdict(set)  # name -> files defining it
    by_key: dict[tuple[str, str], list[Definition]] = defaultdict(list)
    for d in definitions:
        defines[d.name].add(d.path)
        by_key[(d.path, d.name)].append(d)
    mentioned = set(mentioned)
    graph = nx.MultiDiGraph()
    for referrer, names in identifiers.items():
        graph.add_node(referrer)
        for name, count in names.items():
            targets = defines.get(name)
            if not targets:
                continue
            weight = math.sqrt(count) / len(targets)
            if name in mentioned:
                weight *= 10
            for target in targets:
                if target != referrer:
                    graph.add_edge(referrer, target, weight=weight, name=name)
    if graph.number_of_edges() == 0:
        return []
    personalization = {current: 1.0} if current and current in graph else None
    try:
        ranks = nx.pagerank(graph, weight="weight", personalization=personalization)
    except nx.PowerIterationFailedConvergence:
        ranks = nx.pagerank(graph, weight="weight", personalization=personalization, max_iter=500, tol=1e-4)
    # Share each referrer's rank among the (file, name) definitions it uses, in proportion to edge weight.
    scores: Counter = Counter()
    for referrer in graph.nodes:
        out = list(graph.out_edges(referrer, data=True))
        total = sum(data["weight"] for _, _, data in out)
        for _, target, data in out:
            scores[(target, data["name"])] += ranks[referrer] * data["weight"] / total
    ranked = []
    for (path, name), score in scores.items():
        if path == current:
            continue  # the current file is in the prompt already
        for d in by_key.get((path, name), ()):
            ranked.append((score, d))
    ranked.sort(key=lambda pair: (-pair[0], pair[1].path, pair[1].start_line))
    return ranked


def render(ranked: list[tuple[float, Definition]]) -> list[ContextRecord]:
    """One record per file: the chosen definitions' signatures, in file order."""
    by_path: dict[str, list[tuple[float, Definition]]] = defaultdict(list)
    for score, d in ranked:
        by_path[d.path].append((score, d))
    records = []
    for path, items in by_path.items():
        items.sort(key=lambda pair: pair[1].start_line)
        lines = []
        for _, d in items:
            indent = "    " if d.parent else ""
            lines.append(indent + d.signature.strip())
        records.append(
            ContextRecord(
                text="\n".join(lines),
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


def repo_map(
    definitions: Iterable[Definition],
    identifiers: Mapping[str, Counter],
    budget: int,
    current: str | None = None,
    mentioned: Iterable[str] = (),
    count_tokens: Callable[[str], int] = approx_tokens,
) -> list[ContextRecord]:
    """The map's records, as many of the best definitions as fit in `budget` tokens (binary search)."""
    ranked = rank_definitions(definitions, identifiers, current, mentioned)
    if not ranked or budget <= 0:
        return []

    def cost(n: int) -> int:
        return sum(count_tokens(r.text) for r in render(ranked[:n]))

    lo, hi = 0, len(ranked)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return render(ranked[:lo])
