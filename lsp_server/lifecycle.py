"""The server's life: initialize, settings, the model, indexing, workspace folders, shutdown, and the status it
reports (the `repocomplete/status` notification).

Settings come from initializationOptions, then `workspace/configuration` (pulled again on every change where the
client supports it). They are resolved against the RuntimeConfig and ContextConfig the server was started with
(`lsp_server.config.resolve`) and handed to the parts that use them. The model loads and the folders are indexed
on the engine thread; nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from repocomplete.context_engine.config import ContextConfig
from repocomplete.context_engine.errors import Cancelled
from repocomplete.lsp_server import config as settings_mod
from repocomplete.lsp_server.completions import Completions
from repocomplete.lsp_server.config import Effective, Settings, resolve
from repocomplete.lsp_server.documents import Documents
from repocomplete.lsp_server.worker import EngineWorker
from repocomplete.model_runtime import cpu_path
from repocomplete.model_runtime.config import RuntimeConfig

log = logging.getLogger(__name__)

STATUS = "repocomplete/status"  # {state: starting|indexing|ready|error|disabled, model, message, percentage}
CLIENT_REQUEST_TIMEOUT_S = 10.0  # a client that never answers workspace/configuration does not hold us up


class Lifecycle:
    def __init__(self, ls: LanguageServer, runtime: RuntimeConfig, context_config: ContextConfig, settings: Settings,
                 worker: EngineWorker, documents: Documents, completions: Completions,
                 tell: Callable[..., None], make_model=None):
        self.ls = ls  # for messages to the client
        self.runtime = runtime  # the owners of the model's and the context's defaults (the command line)
        self.context_config = context_config
        self.worker = worker
        self.documents = documents
        self.completions = completions
        self._tell = tell
        self._make_model = make_model
        self.settings = settings
        self.effective = self._configure(settings)
        self.state = "starting"
        self.model_name = self.effective.model_name
        self.client_progress = False
        self.client_configuration = False
        self._roots: set[Path] = set()
        self._model_job: asyncio.Future | None = None
        self._initialized = False
        self._status_message, self._status_pct = "", None

    # -- status ----------------------------------------------------------------------------------------------

    def status(self, state: str, message: str = "", percentage: int | None = None) -> None:
        """The repocomplete/status notification (held back until `initialized`, as the specification asks)."""
        self.state, self._status_message, self._status_pct = state, message, percentage
        if self._initialized:
            self.ls.protocol.notify(STATUS, {"state": state, "model": self.model_name, "message": message,
                                             "percentage": percentage})

    def _serving(self) -> str:
        return "ready" if self.settings.enabled else "disabled"

    def _model_ready(self) -> bool:
        return self._model_job is not None and self._model_job.done() and not self._model_job.exception()

    def status_json(self) -> dict:
        out = {"state": self.state, "model": self.model_name, "cpu": torch.backends.cpu.get_cpu_capability()}
        plan = getattr(getattr(self.worker.completer.model, "loaded", None), "plan", None)
        if plan is not None:
            out["path"] = cpu_path.to_dict(plan)
        if self.completions.advice:
            out["advice"] = self.completions.advice
        return out

    def advise(self, message: str) -> None:
        """The machine is too slow for the configured context size: shown once, and kept in the status."""
        self._tell(message, types.MessageType.Warning, show=True)
        self.status(self.state, message, self._status_pct)

    # -- initialize ------------------------------------------------------------------------------------------

    def initialize(self, params: types.InitializeParams) -> None:
        caps = params.capabilities
        self.client_progress = bool(caps.window and caps.window.work_done_progress)
        self.client_configuration = bool(caps.workspace and caps.workspace.configuration)
        self.apply_settings(settings_mod.section_of(params.initialization_options), initial=True)
        self.worker.start()
        self._roots = set(_folders([f.uri for f in params.workspace_folders or []] or
                                   ([params.root_uri] if params.root_uri else [])))
        self.load_model()

    async def initialized(self) -> None:
        self._initialized = True
        self.status(self.state, self._status_message, self._status_pct)
        await self.pull_configuration()
        await self.index(sorted(self._roots))

    # -- settings --------------------------------------------------------------------------------------------

    async def pull_configuration(self) -> None:
        if not self.client_configuration:
            return
        try:
            result = await asyncio.wait_for(
                self.ls.workspace_configuration_async(
                    types.ConfigurationParams(items=[types.ConfigurationItem(section=settings_mod.SECTION)])),
                CLIENT_REQUEST_TIMEOUT_S)
        except Exception as e:
            log.warning("workspace/configuration failed: %s: %s", type(e).__name__, e)
            return
        if result:
            self.apply_settings(settings_mod.section_of(result[0]))

    async def configuration_changed(self, params: types.DidChangeConfigurationParams) -> None:
        """Pull the section again where the client supports it; else take what the notification carries."""
        if self.client_configuration:
            await self.pull_configuration()
        else:
            self.apply_settings(settings_mod.section_of(params.settings))

    def _configure(self, settings: Settings) -> Effective:
        """Resolve the settings and hand them to the parts that use them."""
        effective = resolve(self.runtime, self.context_config, settings)
        self.documents.languages = settings.languages
        self.completions.configure(effective.settings, effective.options)
        return effective

    def apply_settings(self, raw: Any, initial: bool = False) -> None:
        before, was = self.settings, self.effective
        after, problems = settings_mod.apply(before, raw, shown=was.settings)
        for problem in problems:
            self._tell(problem, show=not problem.startswith("unknown"))
        if after == before:
            return
        self.settings = after
        self.effective = self._configure(after)
        if initial:
            return
        if any(getattr(self.effective.runtime, f) != getattr(was.runtime, f) for f in settings_mod.MODEL_FIELDS):
            self.load_model(previous=before)
        elif after.enabled != before.enabled:
            self.status("ready" if after.enabled and self._model_ready() else
                        "disabled" if not after.enabled else self.state)

    # -- the model -------------------------------------------------------------------------------------------

    def load_model(self, previous: Settings | None = None) -> None:
        """Load the effective settings' model on the engine thread; on failure keep `previous`'s (if any)."""
        config = self.effective.runtime
        self.model_name = self.effective.model_name
        self.status("starting", f"loading {self.model_name}")

        def make():
            if self._make_model is not None:
                return self._make_model(config)
            from repocomplete.model_runtime.backend import make_engine

            config.validate()
            return make_engine(config)

        future = asyncio.wrap_future(self.worker.load_model(make))
        self._model_job = future

        def done(f: asyncio.Future) -> None:
            if f.cancelled():
                return
            if f.exception() is not None:
                e = f.exception()
                self._tell(f"cannot load model {self.model_name}: {e}", types.MessageType.Error, show=True)
                if previous is not None:  # keep serving with the model we had
                    self.settings = self.settings.replace(
                        **{k: getattr(previous, k) for k in settings_mod.MODEL_FIELDS})
                    self.effective = self._configure(self.settings)
                    self.model_name = self.effective.model_name
                    self._model_job = asyncio.get_running_loop().create_future()
                    self._model_job.set_result(None)
                    self.status(self._serving(), str(e))
                else:
                    self.status("error", str(e))
                return
            self.completions.model_loaded()
            if self.state != "indexing":
                self.status(self._serving())

        future.add_done_callback(done)

    # -- workspace folders -----------------------------------------------------------------------------------

    async def index(self, roots: list[Path]) -> None:
        """Index workspace folders on the engine thread, reporting $/progress (if the client takes it) and status."""
        if not roots:
            return
        progress = self.ls.work_done_progress
        token = None
        if self.client_progress:
            token = f"repocomplete-index-{uuid.uuid4().hex[:8]}"
            try:
                await asyncio.wait_for(progress.create_async(token), CLIENT_REQUEST_TIMEOUT_S)
            except Exception as e:
                log.info("no progress token: %s", e)
                token = None
        if token:
            progress.begin(token, types.WorkDoneProgressBegin(
                title="repocomplete: indexing", message=", ".join(r.name for r in roots), percentage=0,
                cancellable=False))
        loop = asyncio.get_running_loop()
        for n, root in enumerate(roots):
            last = [-1]

            def report(done: int, total: int, root=root, n=n, last=last) -> None:  # on the engine thread
                pct = int(100 * (n + done / max(total, 1)) / len(roots))
                if pct != last[0]:
                    last[0] = pct
                    loop.call_soon_threadsafe(self._report_indexing, token, root, pct)

            self._report_indexing(token, root, int(100 * n / len(roots)))
            job = self.worker.open_workspace(root, on_progress=report)
            try:
                await asyncio.wrap_future(job)
            except (Cancelled, asyncio.CancelledError, concurrent.futures.CancelledError):
                return  # stopped: the server is shutting down
            except Exception as e:
                self._tell(f"indexing {root} failed: {type(e).__name__}: {e}", types.MessageType.Error)
            else:
                self.documents.resync(root)
        if token:
            progress.end(token, types.WorkDoneProgressEnd(message="indexed"))
        if self._model_job is not None and self._model_job.done():
            self.status(self._serving() if self._model_ready() else "error")
        else:
            self.status("starting", f"loading {self.model_name}")

    def _report_indexing(self, token, root: Path, pct: int) -> None:
        if token:
            self.ls.work_done_progress.report(token, types.WorkDoneProgressReport(message=root.name, percentage=pct))
        self.status("indexing", f"indexing {root.name}", pct)

    async def workspace_folders_changed(self, params: types.DidChangeWorkspaceFoldersParams) -> None:
        for root in _folders([f.uri for f in params.event.removed], must_exist=False):
            self._roots.discard(root)
            self.worker.close_workspace(root)
        added = _folders([f.uri for f in params.event.added])
        self._roots.update(added)
        await self.index(added)

    # -- shutdown --------------------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Cancel what is in flight and stop the engine thread (shutdown, or the client gone)."""
        self.completions.stop_all()
        await asyncio.get_running_loop().run_in_executor(None, self.worker.stop)


def _folders(uris: list[str], must_exist: bool = True) -> list[Path]:
    """The folders of workspace uris, resolved (those that are not folders on disk left out, if `must_exist`)."""
    roots = []
    for uri in uris:
        path = to_fs_path(uri)
        if path and (not must_exist or Path(path).is_dir()):
            roots.append(Path(path).resolve())
    return roots
