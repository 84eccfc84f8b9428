"""The HTTP backend against a local OpenAI-compatible server: answers and cost
(S24), 429 with Retry-After and overload (S17), authentication (S12), timeout
(S13) and cancel (S26), connection errors, and the API key kept out of errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.socket
import pytest
from support import WAIT_SECONDS, RuntimeFactory, ScoreFactory, in_hub_thread

import runtime
from actors.backends import http as http_backend
from actors.backends.http import HttpBackend, run_http_request
from runtime.instrument_output import RESULT_KEEP_CHARS
from runtime.instruments import InstrumentProfile, profile_from_mapping
from runtime.messages import ExecutionRequest
from runtime.outcomes import ExecutionResult
from runtime.outcomes import OutcomeKind as K


class FakeChatServer:
    """Answers chat completions by the prompt's first word; records requests."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        # Written to when a request arrived, for a hub to wait on without polling.
        self.arrived_read, self._arrived_write = os.pipe()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                server.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                os.write(server._arrived_write, b"!")
                prompt = body["messages"][-1]["content"]
                status, headers, reply = server.reply(prompt, dict(self.headers))
                data = reply.encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def reply(self, prompt: str, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
        # The first line that starts with a known word: the runtime may put a
        # preamble before the rendered template.
        word, rest = "", ""
        for line in prompt.splitlines():
            word, _, rest = line.strip().partition(" ")
            if word in ("answer", "busy", "overloaded", "denied", "missing", "slow"):
                break
        if word == "answer":
            return (
                200,
                {},
                json.dumps(
                    {
                        "choices": [{"message": {"role": "assistant", "content": rest}}],
                        "usage": {"prompt_tokens": 2000, "completion_tokens": 500},
                    }
                ),
            )
        if word == "busy":
            return 429, {"Retry-After": "17"}, '{"error": {"message": "too many requests"}}'
        if word == "overloaded":
            return 503, {}, "model is loading"
        if word == "denied":
            key = headers.get("Authorization", "")
            return 401, {}, json.dumps({"error": {"message": f"invalid key in {key}"}})
        if word == "missing":
            return 404, {}, '{"error": {"message": "model \\"x\\" not found"}}'
        if word == "slow":
            self.release.wait(WAIT_SECONDS)
            return 200, {}, "{}"
        return 400, {}, "unknown prompt"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        os.close(self.arrived_read)
        os.close(self._arrived_write)


@pytest.fixture
def server() -> Iterator[FakeChatServer]:
    fake = FakeChatServer()
    yield fake
    fake.close()


def http_profile(url: str, **http: Any) -> InstrumentProfile:
    return profile_from_mapping(
        {
            "name": "local",
            "kind": "http",
            "default_model": "tiny",
            "models": [
                {"name": "tiny", "cost_per_1k_input": 0.001, "cost_per_1k_output": 0.002},
                {"name": "huge", "cost_per_1k_input": 0.01, "cost_per_1k_output": 0.03},
            ],
            "http": {"base_url": url, **http},
        }
    )


def request(prompt: str, *, timeout: float = 10.0, model: str | None = None) -> ExecutionRequest:
    return ExecutionRequest(
        request_id="job/1/1",
        job_id="job",
        sheet_num=1,
        attempt=1,
        instrument="local",
        prompt=prompt,
        workspace=".",
        timeout_seconds=timeout,
        model=model,
    )


def run(spec: HttpBackend, req: ExecutionRequest, **kwargs: Any) -> ExecutionResult:
    return in_hub_thread(lambda: run_http_request(spec, req, **kwargs))


def test_S24_answer_and_cost_from_the_usage(server: FakeChatServer) -> None:
    result = run(HttpBackend(http_profile(server.url)), request("answer hello", model="huge"))

    assert result.kind is K.SUCCESS
    assert result.stdout == "hello"
    assert result.cost == pytest.approx(2 * 0.01 + 0.5 * 0.03)
    sent = server.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["model"] == "huge"
    assert sent["body"]["messages"] == [{"role": "user", "content": "answer hello"}]
    assert "Authorization" not in sent["headers"]


def test_a_large_answer_is_read_off_the_hub_and_its_tail_kept(
    server: FakeChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    real = http_backend.interpret_response

    def traced(*args: Any) -> ExecutionResult:
        threads.append(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(http_backend, "interpret_response", traced)

    def on_a_hub() -> tuple[int, ExecutionResult]:
        spec = HttpBackend(http_profile(server.url))
        return threading.get_ident(), run_http_request(
            spec, request("answer " + "x" * 700_000 + "END")
        )

    hub_thread, result = in_hub_thread(on_a_hub)

    assert result.kind is K.SUCCESS
    assert len(result.stdout) == RESULT_KEEP_CHARS and result.stdout.endswith("xEND")
    assert threads and threads[0] != hub_thread  # parsed in the hub's thread pool


def test_the_default_model_and_settings_go_in_the_body(server: FakeChatServer) -> None:
    spec = HttpBackend(http_profile(server.url, max_tokens=64, temperature=0.2))

    result = run(spec, request("answer x"))

    assert result.cost == pytest.approx(2 * 0.001 + 0.5 * 0.002)
    body = server.requests[0]["body"]
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("tiny", 64, 0.2)


def test_S17_429_waits_as_retry_after_says(server: FakeChatServer) -> None:
    result = run(HttpBackend(http_profile(server.url)), request("busy now"))

    assert result.kind is K.RATE_LIMITED
    assert result.wait_seconds == 17
    assert result.error == "rate limited (HTTP 429): too many requests"


def test_S17_503_is_a_short_capacity_wait(server: FakeChatServer) -> None:
    result = run(HttpBackend(http_profile(server.url)), request("overloaded"))

    assert result.kind is K.RATE_LIMITED
    assert result.wait_seconds == 60


def test_S12_401_is_an_auth_failure_and_the_key_is_redacted(server: FakeChatServer) -> None:
    key = "local-secret-key-0123456789"
    spec = HttpBackend(http_profile(server.url, api_key_env="LOCAL_KEY"))

    result = run(spec, request("denied"), environment={"LOCAL_KEY": key})

    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {key}"
    assert result.kind is K.AUTH_FAILED
    assert result.error is not None and "invalid key" in result.error
    assert key not in result.error and key not in result.stderr


def test_other_statuses_are_failures_with_the_message(server: FakeChatServer) -> None:
    result = run(HttpBackend(http_profile(server.url)), request("missing model"))

    assert result.kind is K.FAILURE
    assert result.error == 'HTTP 404: model "x" not found'


def test_S13_no_answer_within_the_timeout(server: FakeChatServer) -> None:
    result = run(HttpBackend(http_profile(server.url)), request("slow", timeout=0.3))

    assert result.kind is K.TIMEOUT
    assert result.error == f"no answer from {server.url}/chat/completions within 0.3 s"


def test_S26_cancel_while_waiting_for_the_answer(server: FakeChatServer) -> None:
    def scenario() -> ExecutionResult:
        cancel = gevent.event.Event()
        runner = gevent.spawn(
            run_http_request, HttpBackend(http_profile(server.url)), request("slow"), cancel
        )
        gevent.socket.wait_read(server.arrived_read, timeout=WAIT_SECONDS)
        cancel.set()
        outcome: ExecutionResult = runner.get(timeout=WAIT_SECONDS)
        return outcome

    result = in_hub_thread(scenario)

    assert result.kind is K.CANCELLED


def test_connection_refused_says_whether_the_server_runs() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"

    result = run(HttpBackend(http_profile(url)), request("answer x"))

    assert result.kind is K.FAILURE
    assert result.error == (
        f"cannot connect to {url}/chat/completions: connection refused; is the server running?"
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_https_through_gevent_ssl_verifies_the_certificate(
    server: FakeChatServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.httpd.socket = context.wrap_socket(server.httpd.socket, server_side=True)
    secure_url = server.url.replace("http://", "https://")
    spec = HttpBackend(http_profile(secure_url))

    untrusted = run(spec, request("answer x"))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    trusted = run(spec, request("answer over tls"))

    assert untrusted.kind is K.FAILURE
    assert untrusted.error is not None and "CERTIFICATE_VERIFY_FAILED" in untrusted.error
    assert (trusted.kind, trusted.stdout) == (K.SUCCESS, "over tls")


def test_an_http_spec_refuses_a_cli_profile() -> None:
    cli = profile_from_mapping({"name": "c", "cli": {"command": {"executable": "c"}}})

    with pytest.raises(ValueError, match="not an HTTP instrument"):
        HttpBackend(cli)


def test_S24_a_job_on_an_http_instrument(
    server: FakeChatServer, rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    rt = rt_factory({"local": HttpBackend(http_profile(server.url))})
    score = make_score(
        instrument="local", sheets=3, independent=True, template="answer {{ sheet_num }}"
    )

    result = rt.submit(score).wait(WAIT_SECONDS)

    assert result.status is runtime.JobStatus.COMPLETED
    assert result.cost == pytest.approx(3 * (2 * 0.001 + 0.5 * 0.002))
    assert len(server.requests) == 3
