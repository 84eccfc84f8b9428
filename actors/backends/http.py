"""The HTTP backend: instruments behind an OpenAI-compatible chat completions endpoint.

Owns sending one request per attempt (``POST {base_url}/chat/completions``,
the prompt as one user message) to Ollama, vLLM, llama.cpp's server or any
compatible service, honouring the attempt's timeout and cancel, and turning
the answer into an ``ExecutionResult`` with
``runtime.instrument_output.interpret_chat_response`` (429 with Retry-After,
authentication, capacity). It decides nothing about retries or waits.

The client is the standard library's ``http.client`` on gevent's cooperative
sockets (``gevent.socket``, ``gevent.ssl``), without monkey-patching: a request
waits on the hub of the thread it runs in, like every other Ensemble task.
Why no third-party client: one request and one response per attempt, no
connection reuse worth having next to a model's seconds of latency, and the
standard parser is mature; ``geventhttpclient`` would add a compiled
dependency for none of that.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.event
import gevent.socket
import gevent.ssl

from actors.backends.base import ProfileBackend
from actors.hub import in_pool
from runtime.instrument_output import (
    OFF_HUB_BYTES,
    RESULT_KEEP_CHARS,
    ParsedOutput,
    attempt_cost,
    chat_request_body,
    interpret_chat_response,
    output_tail,
)
from runtime.instruments import InstrumentProfile, secret_values
from runtime.messages import ExecutionRequest
from runtime.outcomes import ExecutionResult, OutcomeKind
from runtime.redaction import redact

__all__ = ["HttpBackend", "run_http_request"]

# A chat answer is text; anything larger than this is not one.
MAX_RESPONSE_BYTES = 32 * 1024 * 1024


class HttpBackend(ProfileBackend):
    """Spec of an HTTP instrument for ``runtime.start(backends=...)``.

    ``api_key`` overrides the variable named by the profile's ``api_key_env``.
    """

    def __init__(
        self,
        profile: InstrumentProfile,
        *,
        max_concurrent: int | None = None,
        api_key: str | None = None,
    ) -> None:
        if profile.http is None:
            raise ValueError(
                f"instrument {profile.name!r} is 'kind: {profile.kind}', not an HTTP instrument; "
                "use actors.backends.cli.CliBackend"
            )
        super().__init__(profile, max_concurrent)
        self.api_key = api_key

    def run(self, request: ExecutionRequest, cancel: gevent.event.Event) -> ExecutionResult:
        return run_http_request(self, request, cancel)


class _Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _CooperativeConnection(http.client.HTTPConnection):
    """``http.client`` on a gevent socket (TLS through gevent's ssl when asked)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        tls: gevent.ssl.SSLContext | None,
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._tls = tls

    def connect(self) -> None:
        sock = gevent.socket.create_connection((self.host, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock


def _post(url: str, headers: Mapping[str, str], body: bytes, timeout: float) -> _Response:
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    tls = None
    if secure:
        tls = _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    connection = _CooperativeConnection(
        parts.hostname or "localhost",
        parts.port or (443 if secure else 80),
        timeout=timeout,
        tls=tls,
    )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        connection.request("POST", path, body=body, headers=dict(headers))
        response = connection.getresponse()
        data = response.read(MAX_RESPONSE_BYTES + 1)
        return _Response(response.status, dict(response.getheaders()), data)
    finally:
        connection.close()


@functools.lru_cache(maxsize=4)
def _tls_context(cert_file: str | None, cert_dir: str | None) -> gevent.ssl.SSLContext:
    """Verifying TLS through gevent's own SSL sockets.

    Not ``gevent.ssl.create_default_context()``: without monkey-patching that
    is the standard library's, whose sockets would block the hub. The system's
    CAs, or those named by SSL_CERT_FILE / SSL_CERT_DIR (hence the arguments:
    one context per setting), are trusted. Made once: loading the CAs holds
    the hub for about 40 ms, which per request would stall every actor.
    """
    context = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT)
    context.load_default_certs()
    return context


def _post_or_error(
    url: str, headers: Mapping[str, str], body: bytes, timeout: float
) -> _Response | Exception:
    # Returned, not raised: a greenlet that dies of an exception has gevent
    # print its traceback, and a refused connection is no programming error.
    try:
        return _post(url, headers, body, timeout)
    except Exception as exc:
        return exc


def run_http_request(
    spec: HttpBackend,
    request: ExecutionRequest,
    cancel: gevent.event.Event | None = None,
    *,
    environment: Mapping[str, str] | None = None,
) -> ExecutionResult:
    """Send ``request`` to the spec's endpoint from a greenlet; never raises for
    anything the server or the network does."""
    profile = spec.profile
    http_config = profile.http
    assert http_config is not None
    host = os.environ if environment is None else environment
    api_key = spec.api_key
    if api_key is None and http_config.api_key_env:
        api_key = host.get(http_config.api_key_env)
    secrets = [*secret_values(profile, host), *([api_key] if api_key else [])]
    model = request.model if request.model is not None else profile.default_model
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    headers.update(http_config.headers)
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    body = json.dumps(chat_request_body(profile, request.prompt, model)).encode("utf-8")
    url = http_config.chat_url
    started = time.monotonic()
    sender = gevent.spawn(_post_or_error, url, headers, body, request.timeout_seconds)
    waitables: list[Any] = [sender]
    if cancel is not None:
        waitables.append(cancel)
    try:
        gevent.wait(waitables, timeout=request.timeout_seconds, count=1)
    finally:
        if not sender.ready():
            sender.kill(block=True)
    duration = time.monotonic() - started
    outcome = sender.value
    if not isinstance(outcome, _Response):
        if cancel is not None and cancel.is_set():
            return ExecutionResult(
                kind=OutcomeKind.CANCELLED, error="cancelled", duration_seconds=duration
            )
        if not isinstance(outcome, Exception) or isinstance(outcome, TimeoutError):
            # Killed at the deadline (GreenletExit), or a socket operation timed out.
            return ExecutionResult(
                kind=OutcomeKind.TIMEOUT,
                error=f"no answer from {url} within {request.timeout_seconds:g} s",
                duration_seconds=duration,
            )
        return ExecutionResult(
            kind=OutcomeKind.FAILURE,
            error=redact(_describe_network_error(url, outcome), secrets),
            duration_seconds=duration,
        )
    response = outcome
    if len(response.body) > MAX_RESPONSE_BYTES:
        return ExecutionResult(
            kind=OutcomeKind.FAILURE,
            error=f"the answer from {url} is larger than {MAX_RESPONSE_BYTES} bytes",
            duration_seconds=duration,
        )
    arguments = (profile, model, response, secrets, duration)
    if len(response.body) > OFF_HUB_BYTES:
        return in_pool(interpret_response, *arguments)
    return interpret_response(*arguments)


def interpret_response(
    profile: InstrumentProfile,
    model: str | None,
    response: _Response,
    secrets: Sequence[str],
    duration: float,
) -> ExecutionResult:
    """The ``ExecutionResult`` of an answer that arrived; pure apart from the clock."""
    text = response.body.decode("utf-8", errors="replace")
    chat = interpret_chat_response(
        profile, response.status, response.headers, text, datetime.now().astimezone(), secrets
    )
    tokens = ParsedOutput(
        result=chat.answer, input_tokens=chat.input_tokens, output_tokens=chat.output_tokens
    )
    verdict = chat.verdict
    return ExecutionResult(
        kind=verdict.kind,
        stdout=output_tail(chat.answer, RESULT_KEEP_CHARS, secrets),
        stderr="" if verdict.kind is OutcomeKind.SUCCESS else output_tail(text, 4096, secrets),
        cost=attempt_cost(profile, model, tokens),
        duration_seconds=duration,
        wait_seconds=verdict.wait_seconds,
        error=redact(verdict.error, secrets) if verdict.error is not None else None,
    )


def _describe_network_error(url: str, error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return f"cannot connect to {url}: connection refused; is the server running?"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host of {url}: {error.strerror or error}"
    if isinstance(error, http.client.HTTPException):
        return f"invalid HTTP answer from {url}: {type(error).__name__}: {error}"
    if isinstance(error, OSError):
        return f"request to {url} failed: {error.strerror or error}"
    return f"request to {url} failed: {type(error).__name__}: {error}"
