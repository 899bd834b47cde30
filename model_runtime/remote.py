"""The remote backend: completions from an OpenAI-compatible `POST /v1/completions` endpoint.

vLLM, SGLang, llama.cpp's server and TGI all serve it. The prompt is rendered here with the same FIM templates
as the local engine, and the same stop rules cut the streamed text, so both backends answer alike. The stream
is closed as soon as the stop rules end a completion, which makes the server stop generating.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.model_runtime.errors import RemoteError
from repocomplete.model_runtime.engine import CancelToken, Completion, CompletionRequest
from repocomplete.model_runtime.stopping import StopRules, final_text
from repocomplete.model_runtime.templates import FimTemplate, PromptParts, get_template, model_view, render

_FINISH = {"stop": "eos", "length": "max_tokens", None: "eos"}
_BACKOFF_S = 0.2
_BATCH_WORKERS = 4


def base_url(endpoint: str) -> str:
    """"http://h:p", "http://h:p/" and "http://h:p/v1" all mean the /v1 base."""
    url = endpoint.strip().rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def guess_template(model_name: str) -> FimTemplate:
    """The FIM template for a served model, from its name (servers do not expose the tokenizer's vocabulary)."""
    name = model_name.lower()
    squashed = re.sub(r"[-_ ]", "", name)  # "Code-Llama", "code_gemma"
    if re.search(r"qwen.*coder", name):
        return get_template("qwen2.5-coder")
    if re.search(r"deepseek.*coder", name):
        return get_template("deepseek-coder")
    if "codegemma" in squashed:
        return get_template("codegemma")
    if "codellama" in squashed:
        return get_template("codellama")
    if "starcoder" in squashed:
        return get_template("starcoder")
    return get_template("plain")


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


def _retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


class RemoteEngine:
    """The local `Engine`'s interface over an HTTP endpoint. Thread-safe: requests may run concurrently."""

    def __init__(self, config: RuntimeConfig):
        if not config.endpoint:
            raise ValueError("RemoteEngine needs config.endpoint")
        config.validate()
        self.config = config
        self.base = base_url(config.endpoint)
        self._client = httpx.Client(timeout=httpx.Timeout(config.endpoint_timeout_s))
        self._lock = threading.Lock()
        self._model: str | None = config.endpoint_model
        self._template: FimTemplate | None = get_template(config.fim_template) if config.fim_template else None

    # -- what is served (asked of the server at most once, on first use) ------------------------------------

    @property
    def name(self) -> str:
        return self._served_model()

    @property
    def template(self) -> FimTemplate:
        if self._template is None:
            self._template = guess_template(self._served_model())
        return self._template

    @property
    def order(self) -> str:
        fim_order = self.config.fim_order
        return "spm" if fim_order == "spm" or (fim_order == "auto" and self.template.supports_spm) else "psm"

    def _served_model(self) -> str:
        with self._lock:
            if self._model is None:
                self._model = self._fetch_model_id()
            return self._model

    def _fetch_model_id(self) -> str:
        url = self.base + "/models"
        with contextlib.closing(self._request("GET", url, None)) as chunks:
            body = next(chunks)
        try:
            return str(body["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise RemoteError(f"{url}: no model id in the answer: {_one_line(json.dumps(body))}") from None

    # -- HTTP ----------------------------------------------------------------------------------------------------

    def _request(self, method: str, url: str, payload: dict | None) -> Iterator[dict]:
        """Yield the JSON objects of an answer (one for a JSON body, one per SSE `data:` line), retrying failures
        until the first object has been yielded: after that a retry would repeat output already handed out."""
        attempts = self.config.endpoint_retries + 1
        for attempt in range(attempts):
            started = False
            try:
                with self._client.stream(method, url, json=payload) as response:
                    if not response.is_success:
                        body = response.read().decode("utf-8", "replace")
                        error = RemoteError(f"{url}: HTTP {response.status_code}: {_one_line(body)}")
                        if not _retryable_status(response.status_code):
                            raise error
                    elif response.headers.get("content-type", "").startswith("application/json"):
                        # Non-streaming servers, and GET /models.
                        obj = _parse_json(response.read().decode("utf-8", "replace"), url)
                        started = True
                        yield obj
                        return
                    else:
                        for line in response.iter_lines():
                            if not line.startswith("data:"):
                                continue  # blank separators, ": keep-alive" comments, event:/id: fields
                            data = line[5:].strip()
                            if data == "[DONE]":
                                return
                            obj = _parse_json(data, url)
                            if isinstance(obj, dict) and "error" in obj:
                                detail = _one_line(json.dumps(obj["error"]))
                                raise RemoteError(f"{url}: server error mid-stream: {detail}")
                            started = True
                            yield obj
                        return
            except httpx.TimeoutException:
                error = RemoteError(f"{url}: timeout after {self.config.endpoint_timeout_s:g} s")
                if started:
                    raise error from None
            except httpx.ConnectError as exc:
                error = RemoteError(f"{url}: connection refused or unreachable ({_one_line(str(exc)) or 'no detail'})")
            except httpx.TransportError as exc:
                error = RemoteError(f"{url}: connection failed: {_one_line(str(exc)) or type(exc).__name__}")
                if started:
                    raise error from None
            if attempt + 1 < attempts:
                time.sleep(_BACKOFF_S * 2**attempt)
        if attempts > 1:
            error = RemoteError(f"{error} (after {attempts} attempts)")
        raise error

    # -- completion ----------------------------------------------------------------------------------------------

    def prompt(self, parts: PromptParts) -> str:
        return render(self.template, model_view(self.template, parts), self.order)

    def complete(self, request: CompletionRequest) -> Completion:
        if request.monitors:
            raise RemoteError("monitors need a local model: the remote backend receives text from the endpoint, not "
                              "the logits a monitor masks (use monitors none with an endpoint)")
        cfg = self.config
        t0 = time.perf_counter()
        deadline = t0 + cfg.time_budget_s
        cancel = request.cancel or CancelToken()
        parts = request.parts
        multiline = cfg.multiline if request.multiline is None else request.multiline
        rules = StopRules.at_cursor(parts.prefix, multiline, cfg.stop_loops)
        if cancel.cancelled:
            return Completion("", "cancelled")
        payload = {
            "model": self._served_model(),
            "prompt": self.prompt(parts),
            "max_tokens": cfg.max_new_tokens if request.max_new_tokens is None else request.max_new_tokens,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "seed": cfg.seed,
            "stop": list(self.template.stop),
            "stream": True,
            # Without it vLLM and SGLang send no usage (prompt and cached token counts) in a stream.
            "stream_options": {"include_usage": True},
        }
        text = ""
        reason = "eos"
        usage: dict = {}
        chunks_seen = 0
        t1 = None
        with contextlib.closing(self._request("POST", self.base + "/completions", payload)) as chunks:
            for chunk in chunks:
                if t1 is None:
                    t1 = time.perf_counter()
                usage = chunk.get("usage") or usage
                choices = chunk.get("choices") or []
                if choices:
                    choice = choices[0]
                    text += choice.get("text") or ""
                    chunks_seen += 1
                    finish = choice.get("finish_reason")
                    if finish is not None:
                        reason = _FINISH.get(finish, finish)
                if cancel.cancelled:
                    reason = "cancelled"
                    break
                _, why = rules.cut(text)
                if why:
                    reason = why
                    break
                if time.perf_counter() > deadline:
                    reason = "time"
                    break
        t2 = time.perf_counter()
        t1 = t1 or t2
        kept = final_text(rules, text, reason, parts.suffix)
        details = usage.get("prompt_tokens_details") or {}
        return Completion(
            text=kept,
            stop_reason=reason,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
            generated_tokens=int(usage.get("completion_tokens") or chunks_seen),
            prefill_s=t1 - t0,
            decode_s=t2 - t1,
            raw_text=text,
        )

    def complete_batch(self, requests: Sequence[CompletionRequest]) -> list[Completion]:
        """Complete many requests a few at a time (the server batches them); results in input order."""
        if not requests:
            return []
        _ = self.template  # ask the server for its model once, not from every worker
        with ThreadPoolExecutor(max_workers=min(_BATCH_WORKERS, len(requests))) as pool:
            return list(pool.map(self.complete, requests))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RemoteEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _parse_json(data: str, url: str):
    try:
        return json.loads(data)
    except json.JSONDecodeError:
        raise RemoteError(f"{url}: malformed JSON/SSE data: {_one_line(data) or '(empty)'}") from None
