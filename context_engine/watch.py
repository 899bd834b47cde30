"""Live updates of the repository index: watchdog's file events, debounced, applied on a background thread.

A save is often several events (write, chmod, a rename over the old file), so events only mark paths as pending;
once no event came for DEBOUNCE_S the batch goes to `RepoIndex.update_file` / `remove_file`. A change to an ignore
file, or a folder that appears, disappears or moves, is answered with a (warm, stat-only) `RepoIndex.build()`.
`RepoIndex.start_watching` is the way in.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from repocomplete.context_engine.index import RepoIndex

log = logging.getLogger(__name__)

DEBOUNCE_S = 0.1


class Watcher:
    """watchdog events -> a set of pending paths -> update_file/remove_file once no event came for DEBOUNCE_S."""

    def __init__(self, index: RepoIndex, on_change: Callable[[list[str]], None] | None):
        self.index = index
        self.on_change = on_change
        self.pending: dict[str, bool] = {}  # path -> True; the key "" asks for a whole (warm) build
        self.cond = threading.Condition()
        self.last_event = 0.0
        self.stopping = False
        self.observer = None
        self.thread = threading.Thread(target=self._run, name="repo-index-watcher", daemon=True)

    def start(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                watcher.event(event)

        self.observer = Observer()
        self.observer.schedule(Handler(), str(self.index.root), recursive=True)
        self.observer.start()
        self.thread.start()

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout=10)

    def event(self, event) -> None:
        kind = event.event_type
        if kind not in ("created", "modified", "moved", "deleted"):
            return
        paths = [event.src_path] + ([event.dest_path] if kind == "moved" and getattr(event, "dest_path", "") else [])
        wanted = []
        for p in paths:
            rel = self.index.relative(os.fsdecode(p))
            if rel is None:
                continue
            key = self._key(rel, event.is_directory, kind)
            if key is not None:
                wanted.append(key)
        if wanted:
            with self.cond:
                for key in wanted:
                    self.pending[key] = True
                self.last_event = time.monotonic()
                self.cond.notify_all()

    def _key(self, rel: str, is_dir: bool, kind: str) -> str | None:
        """The pending key for an event, or None to drop it (ignored, secret, not source, inside skip_dirs)."""
        rules = self.index.rules
        parts = rel.split("/")
        if any(p in rules.skip_dirs for p in (parts if is_dir else parts[:-1])):
            return None
        if rules.is_ignore_file(rel):
            return ""
        if is_dir:
            return "" if kind != "modified" else None
        if rules.language(rel) is None or rules.is_secret(rel):
            return None
        language, _ = rules.policy(rel)
        return rel if language is not None else None

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.pending and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    return
                # debounce: wait until the events have settled (a save is often several events)
                while not self.stopping:
                    wait = self.last_event + DEBOUNCE_S - time.monotonic()
                    if wait <= 0:
                        break
                    self.cond.wait(wait)
                if self.stopping:
                    return
                batch, self.pending = list(self.pending), {}
            changed: list[str] = []
            try:
                if "" in batch:
                    changed = self.index.build().changed
                else:
                    for rel in batch:
                        if os.path.lexists(self.index.root / rel):
                            self.index.update_file(rel)
                        else:
                            self.index.remove_file(rel)
                        changed.append(rel)
                if self.on_change is not None and changed:
                    self.on_change(changed)
            except Exception:  # the watcher outlives one bad event
                log.exception("index update failed for %s", batch)
