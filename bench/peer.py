"""llama.cpp's own HTTP server as a peer for `bench lsp`: the same typing session, the same GGUF, the same prompts.

Two servers are known, tried in this order unless one is named:

  * `llama-server` (llama.cpp's server binary, on PATH or given with --peer-command): POST /completion with
    `cache_prompt: true`, which keeps the previous prompt's KV and evaluates only the new suffix;
  * `llama_cpp.server` (llama-cpp-python's server, `pip install 'llama-cpp-python[server]'`, in this Python or the one
    given with --peer-python): POST /v1/completions; the model keeps the previous prompt's KV and reuses the longest
    common prefix (llama-cpp-python's prompt reuse).

Each request asks for a greedy single line (stop at a newline, `max_tokens` at most), as the editor's inline
completion does, and is timed from this process's clock, end to end over HTTP (our server is timed the same way
over stdio JSON-RPC). Nothing is downloaded: when neither server is installed the peer is skipped with one line
saying what to install.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

KINDS = ("auto", "llama-server", "llama-cpp-python", "none")


class PeerUnavailable(Exception):
    """No peer server can be started here (the message says what to install or pass)."""


@dataclass
class PeerAnswer:
    latency_ms: float
    tokens: int  # tokens generated, as the peer reports them
    text: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _has_module(python: str, module: str) -> bool:
    try:
        return subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class LlamaCppPeer:
    """A llama.cpp server process on a free local port; `complete` one prompt; `close` it."""

    def __init__(self, kind: str, argv: list[str], port: int):
        self.kind, self.argv, self.port = kind, argv, port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self._log = None  # the server's output (a file: a pipe nobody reads would fill and stall it)
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy

    @classmethod
    def find(cls, gguf: Path, threads: int, n_ctx: int, kind: str = "auto", command: str | None = None,
             python: str | None = None) -> LlamaCppPeer:
        """The peer to run, or PeerUnavailable saying why none can."""
        if kind not in KINDS or kind == "none":
            raise PeerUnavailable(f"peer {kind!r} not run")
        port = _free_port()
        binary = command or shutil.which("llama-server")
        if kind in ("auto", "llama-server") and binary:
            return cls("llama-server", [binary, "-m", str(gguf), "-c", str(n_ctx), "-t", str(threads), "-tb",
                                        str(threads), "-np", "1", "--host", "127.0.0.1", "--port", str(port)], port)
        python = python or sys.executable
        if kind in ("auto", "llama-cpp-python") and _has_module(python, "llama_cpp.server"):
            return cls("llama-cpp-python", [python, "-m", "llama_cpp.server", "--model", str(gguf),
                                            "--n_ctx", str(n_ctx), "--n_threads", str(threads),
                                            "--n_threads_batch", str(threads), "--n_batch", "512",
                                            "--host", "127.0.0.1", "--port", str(port)], port)
        wanted = {"auto": "llama.cpp's llama-server on PATH (or --peer-command) nor llama-cpp-python's server",
                  "llama-server": "llama-server on PATH (or --peer-command)",
                  "llama-cpp-python": "llama-cpp-python's server"}[kind]
        raise PeerUnavailable(
            f"the llama.cpp peer is skipped: found neither {wanted} in {python} "
            "(install one: pip install 'llama-cpp-python[server]', or pass --peer-python / --peer-command)"
            if kind == "auto" else f"the llama.cpp peer is skipped: {wanted} is not installed for {python}")

    def start(self, timeout: float = 300) -> None:
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT)
        probe = "/health" if self.kind == "llama-server" else "/v1/models"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")[-2000:]
                raise PeerUnavailable(f"the {self.kind} peer exited with code {self.process.returncode}: {err}")
            try:
                with self._http.open(self.url + probe, timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.2)
        self.close()
        raise PeerUnavailable(f"the {self.kind} peer did not start in {timeout:.0f} s")

    def complete(self, prompt: str, max_tokens: int) -> PeerAnswer:
        if self.kind == "llama-server":
            path, body = "/completion", {"prompt": prompt, "n_predict": max_tokens, "temperature": 0.0, "top_k": 1,
                                         "stop": ["\n"], "cache_prompt": True}
        else:
            path, body = "/v1/completions", {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                                             "top_k": 1, "stop": ["\n"]}
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with self._http.open(request, timeout=600) as r:
            answer = json.loads(r.read())
        latency = (time.perf_counter() - t0) * 1000
        if self.kind == "llama-server":
            return PeerAnswer(latency, int(answer.get("tokens_predicted", 0)), answer.get("content", ""))
        return PeerAnswer(latency, int(answer["usage"]["completion_tokens"]), answer["choices"][0]["text"])

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LlamaCppPeer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
