"""Reading instrument output: answers, tokens, cost (S24), outcome classification
(S12, S13, S17), waits from rate-limit messages (S17) and redaction of the kept
output (S31, S32)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from runtime.instrument_output import (
    MAX_WAIT_SECONDS,
    ParsedOutput,
    attempt_cost,
    chat_request_body,
    classify,
    interpret_chat_response,
    json_path,
    output_tail,
    parse_output,
    parse_wait_seconds,
    retry_after_seconds,
    token_cost,
)
from runtime.instruments import CliErrors, CliOutput, builtin_profiles, profile_from_mapping
from runtime.outcomes import OutcomeKind as K
from runtime.redaction import redact

NOW = datetime(2025, 6, 10, 12, 0, 0, tzinfo=UTC)
BUILTINS = builtin_profiles()
CLAUDE = BUILTINS["claude-code"]
assert CLAUDE.cli is not None
CLAUDE_OUTPUT, CLAUDE_ERRORS = CLAUDE.cli.output, CLAUDE.cli.errors


def run_verdict(
    errors: CliErrors,
    output: CliOutput,
    stdout: str,
    stderr: str = "",
    exit_code: int | None = 0,
) -> Any:
    return classify(
        errors,
        exit_code=exit_code,
        stdout=stdout,
        stderr=stderr,
        parsed=parse_output(output, stdout),
        output_format=output.format,
        now=NOW,
    )


# --- json paths and parsing --------------------------------------------------------------


def test_json_path_keys_indexes_and_wildcards() -> None:
    document = {"a": {"b": [{"c": 1}, {"c": 2}]}, "m": {"x": {"t": 3}, "y": {"t": 4}}}

    assert json_path(document, "a.b.0.c") == [1]
    assert json_path(document, "a.b.-1.c") == [2]
    assert json_path(document, "a.b.*.c") == [1, 2]
    assert json_path(document, "m.*.t") == [3, 4]
    assert json_path(document, "a.missing") == []
    assert json_path(document, "a.b.9") == []
    assert json_path([1, 2], "x") == []


def test_claude_style_json_gives_answer_tokens_and_reported_cost() -> None:
    stdout = json.dumps(
        {
            "type": "result",
            "is_error": False,
            "result": "all done",
            "total_cost_usd": 0.0123,
            "usage": {"input_tokens": 1000, "output_tokens": 200},
        }
    )

    parsed = parse_output(CLAUDE_OUTPUT, stdout)

    assert parsed.structured
    assert parsed.result == "all done"
    assert (parsed.input_tokens, parsed.output_tokens) == (1000, 200)
    assert parsed.reported_cost == pytest.approx(0.0123)
    assert not parsed.is_error


def test_json_after_a_banner_is_found_and_the_banner_kept_aside() -> None:
    stdout = 'Loaded cached credentials.\n{"response": "hi", "stats": {}}\n'
    gemini = BUILTINS["gemini-cli"].cli
    assert gemini is not None

    parsed = parse_output(gemini.output, stdout)

    assert parsed.result == "hi"
    assert parsed.other_text == "Loaded cached credentials."


def test_wildcard_token_paths_are_summed_with_aggregate() -> None:
    gemini = BUILTINS["gemini-cli"].cli
    assert gemini is not None
    stdout = json.dumps(
        {
            "response": "ok",
            "stats": {
                "models": {
                    "gemini-2.5-flash-lite": {"tokens": {"prompt": 100, "candidates": 5}},
                    "gemini-2.5-pro": {"tokens": {"prompt": 900, "candidates": 95}},
                }
            },
        }
    )

    parsed = parse_output(gemini.output, stdout)
    first_only = parse_output(gemini.output.model_copy(update={"aggregate_tokens": False}), stdout)

    assert (parsed.input_tokens, parsed.output_tokens) == (1000, 100)
    assert (first_only.input_tokens, first_only.output_tokens) == (100, 5)


def test_S24_gemini_thinking_tokens_are_billed_as_output() -> None:
    """Gemini CLI counts thoughts apart from candidates; both are output tokens,
    so the built-in profile adds the two paths."""
    gemini = BUILTINS["gemini-cli"]
    assert gemini.cli is not None
    tokens = {"prompt": 1000, "candidates": 20, "total": 1174, "cached": 0, "thoughts": 154}
    stdout = json.dumps(
        {"response": "ok", "stats": {"models": {"gemini-2.5-pro": {"tokens": tokens}}}}
    )

    parsed = parse_output(gemini.cli.output, stdout)

    assert (parsed.input_tokens, parsed.output_tokens) == (1000, 174)
    price = gemini.model("gemini-2.5-pro")
    assert price is not None
    expected = (1000 * price.cost_per_1k_input + 174 * price.cost_per_1k_output) / 1000
    assert attempt_cost(gemini, "gemini-2.5-pro", parsed) == pytest.approx(expected)
    no_thoughts = {k: v for k, v in tokens.items() if k != "thoughts"}
    plain = json.dumps({"response": "ok", "stats": {"models": {"m": {"tokens": no_thoughts}}}})
    assert parse_output(gemini.cli.output, plain).output_tokens == 20


def test_unparseable_json_output_is_the_answer_and_searchable() -> None:
    parsed = parse_output(CLAUDE_OUTPUT, "API Error: something\n")

    assert not parsed.structured
    assert parsed.result == "API Error: something\n"
    assert parsed.other_text == "API Error: something\n"


def test_codex_style_jsonl_events() -> None:
    codex = BUILTINS["codex-cli"].cli
    assert codex is not None
    events = [
        {"type": "thread.started", "thread_id": "t"},
        {"type": "item.completed", "item": {"type": "reasoning", "text": "thinking"}},
        {"type": "item.completed", "item": {"type": "agent_message", "text": "first"}},
        {"type": "turn.completed", "usage": {"input_tokens": 10, "output_tokens": 2}},
        {"type": "item.completed", "item": {"type": "agent_message", "text": "second"}},
        {"type": "turn.completed", "usage": {"input_tokens": 5, "output_tokens": 1}},
    ]
    stdout = "\n".join([*(json.dumps(event) for event in events), "a stray line"])

    parsed = parse_output(codex.output, stdout)

    assert parsed.result == "first\nsecond"
    assert (parsed.input_tokens, parsed.output_tokens) == (15, 3)
    assert parsed.other_text == "a stray line"


def test_jsonl_with_result_path_and_event_level_filter() -> None:
    # OpenCode-like text events and Cline-like "say" events.
    opencode = CliOutput(
        format="jsonl",
        completion_event_type="text",
        result_path="part.text",
        input_tokens_path="part.tokens.input",
    )
    cline = CliOutput(
        format="jsonl",
        completion_event_type="say",
        completion_event_filter={"say": "completion_result"},
    )
    opencode_out = "\n".join(
        json.dumps(e)
        for e in (
            {"type": "text", "part": {"text": "hello"}},
            {"type": "step_finish", "part": {"tokens": {"input": 7}}},
        )
    )
    cline_out = "\n".join(
        json.dumps(e)
        for e in (
            {"type": "say", "say": "text", "text": "working"},
            {"type": "say", "say": "completion_result", "text": "finished"},
        )
    )

    assert parse_output(opencode, opencode_out).result == "hello"
    assert parse_output(opencode, opencode_out).input_tokens == 7
    assert parse_output(cline, cline_out).result == "finished"


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_numbers_json_cannot_hold_are_ignored_not_fatal(number: str) -> None:
    """Python's json reads NaN, Infinity and overflowing numbers: none of them is
    a token count or a cost, so the attempt is costed from what is left."""
    usage = f'"usage": {{"input_tokens": {number}, "output_tokens": 1000}}'
    stdout = f'{{"result": "ok", "total_cost_usd": {number}, {usage}}}'
    parsed = parse_output(CLAUDE_OUTPUT, stdout)
    assert (parsed.result, parsed.input_tokens, parsed.output_tokens) == ("ok", None, 1000)
    assert parsed.reported_cost is None
    assert attempt_cost(CLAUDE, "claude-sonnet-4-5", parsed) == pytest.approx(0.015)
    answer = '"choices": [{"message": {"content": "hi"}}]'
    body = f'{{{answer}, "usage": {{"prompt_tokens": {number}}}}}'
    outcome = interpret_chat_response(OLLAMA, 200, {}, body, NOW)
    assert (outcome.verdict.kind, outcome.answer, outcome.input_tokens) == (K.SUCCESS, "hi", None)


def test_json_nested_too_deeply_to_parse_is_text() -> None:
    deep = "[" * 100_000
    parsed = parse_output(CLAUDE_OUTPUT, deep)
    assert (parsed.structured, parsed.result) == (False, deep)
    codex = BUILTINS["codex-cli"].cli
    assert codex is not None
    assert parse_output(codex.output, '{"a":' * 50_000).structured is False
    assert interpret_chat_response(OLLAMA, 500, {}, deep, NOW).verdict.kind is K.FAILURE


def test_text_output_is_the_answer() -> None:
    parsed = parse_output(CliOutput(), "plain answer\n")

    assert parsed.result == "plain answer\n"
    assert not parsed.structured
    assert parsed.other_text == ""


# --- cost (S24) -----------------------------------------------------------------------


def test_S24_cost_from_tokens_times_the_model_prices() -> None:
    profile = profile_from_mapping(
        {
            "name": "t",
            "default_model": "big",
            "models": [
                {"name": "big", "cost_per_1k_input": 0.003, "cost_per_1k_output": 0.015},
                {"name": "small", "cost_per_1k_input": 0.001, "cost_per_1k_output": 0.002},
            ],
            "cli": {"command": {"executable": "t"}},
        }
    )

    assert token_cost(profile, None, 2000, 1000) == pytest.approx(0.006 + 0.015)
    assert token_cost(profile, "small", 2000, 1000) == pytest.approx(0.002 + 0.002)
    assert token_cost(profile, "unknown", 2000, 1000) == 0.0
    assert token_cost(profile, "big", None, None) == 0.0


def test_S24_a_reported_cost_wins_over_token_prices() -> None:
    profile = BUILTINS["claude-code"]
    reported = ParsedOutput(result="", input_tokens=10**6, output_tokens=0, reported_cost=0.5)
    from_tokens = ParsedOutput(result="", input_tokens=10**6, output_tokens=10**5)

    assert attempt_cost(profile, "claude-sonnet-4-5", reported) == 0.5
    assert attempt_cost(profile, "claude-sonnet-4-5", from_tokens) == pytest.approx(3.0 + 1.5)


# --- classification ---------------------------------------------------------------------


def test_success_exit_is_success() -> None:
    stdout = json.dumps({"result": "done", "is_error": False})

    verdict = run_verdict(CLAUDE_ERRORS, CLAUDE_OUTPUT, stdout)

    assert verdict.kind is K.SUCCESS
    assert verdict.error is None


def test_S17_rate_limit_on_stdout_with_exit_0_is_rate_limited_with_its_wait() -> None:
    stdout = "API Error: Rate limit reached. Your limit resets in 5 minutes.\n"

    verdict = run_verdict(CLAUDE_ERRORS, CLAUDE_OUTPUT, stdout, exit_code=0)

    assert verdict.kind is K.RATE_LIMITED
    assert verdict.wait_seconds == 300
    assert "Rate limit reached" in verdict.error


@pytest.mark.parametrize(
    ("stdout", "wait"),
    [
        ("You've hit your session limit · resets 3pm (America/Bogota)\n", 8 * 3600),
        ("You've hit your weekly limit · resets Jun 13 at 4:30am (Asia/Calcutta)\n", 59 * 3600),
        ("You've hit your limit · resets 1pm (UTC)\n", 3600),
    ],
    ids=["session", "weekly", "plain"],
)
def test_S17_claude_code_limit_messages_are_rate_limits_until_the_reset(
    stdout: str, wait: float
) -> None:
    """Claude Code prints its usage limits as plain text, even with exit 0."""
    verdict = run_verdict(CLAUDE_ERRORS, CLAUDE_OUTPUT, stdout, exit_code=0)

    assert (verdict.kind, verdict.wait_seconds) == (K.RATE_LIMITED, wait)


def test_S17_rate_limit_on_stdout_with_exit_1_waits_until_the_reset_time() -> None:
    stdout = "You've hit your limit · resets 5pm (Europe/Paris)\n"

    verdict = run_verdict(CLAUDE_ERRORS, CLAUDE_OUTPUT, stdout, exit_code=1)

    # 12:00 UTC is 14:00 in Paris (summer time): 3 hours to 17:00.
    assert verdict.kind is K.RATE_LIMITED
    assert verdict.wait_seconds == 3 * 3600


def test_the_answer_of_a_successful_run_is_never_searched_for_rate_limits() -> None:
    stdout = json.dumps({"result": "I added a rate limit of 429 requests", "is_error": False})
    text_errors = CliErrors(rate_limit_patterns=("rate limit",))

    assert run_verdict(CLAUDE_ERRORS, CLAUDE_OUTPUT, stdout).kind is K.SUCCESS
    assert run_verdict(text_errors, CliOutput(), "wrote a rate limit\n").kind is K.SUCCESS


def test_rate_limit_streams_can_name_stdout_for_a_text_tool_or_exclude_it() -> None:
    on_stdout = CliErrors(rate_limit_patterns=("rate limit",), rate_limit_streams=("stdout",))
    stderr_only = CliErrors(rate_limit_patterns=("rate limit",), rate_limit_streams=("stderr",))

    assert run_verdict(on_stdout, CliOutput(), "rate limit hit\n").kind is K.RATE_LIMITED
    assert run_verdict(stderr_only, CliOutput(), "rate limit\n", exit_code=1).kind is K.FAILURE
    assert (
        run_verdict(stderr_only, CliOutput(), "", stderr="rate limit", exit_code=1).kind
        is K.RATE_LIMITED
    )


def test_S12_auth_failure_on_stderr() -> None:
    verdict = run_verdict(
        CLAUDE_ERRORS, CLAUDE_OUTPUT, "", stderr="Invalid API key · Please run /login", exit_code=1
    )

    assert verdict.kind is K.AUTH_FAILED
    assert "exit code 1" in verdict.error and "Invalid API key" in verdict.error


def test_capacity_is_a_short_rate_limit() -> None:
    stdout = json.dumps({"type": "error", "error": {"message": "Overloaded"}})

    verdict = run_verdict(CLAUDE_ERRORS, CLAUDE_OUTPUT, stdout, exit_code=1)

    assert verdict.kind is K.RATE_LIMITED
    assert verdict.wait_seconds == CLAUDE_ERRORS.capacity_wait_seconds == 60
    assert "over capacity" in verdict.error and "Overloaded" in verdict.error


def test_S13_a_timeout_reported_by_the_tool_is_a_timeout() -> None:
    errors = CliErrors(timeout_patterns=("deadline exceeded",))

    verdict = run_verdict(errors, CliOutput(), "", stderr="DEADLINE EXCEEDED", exit_code=1)

    assert verdict.kind is K.TIMEOUT


def test_an_is_error_result_is_a_failure_quoting_the_result() -> None:
    stdout = json.dumps({"result": "the tool gave up", "is_error": True})

    verdict = run_verdict(CLAUDE_ERRORS, CLAUDE_OUTPUT, stdout, exit_code=0)

    assert verdict.kind is K.FAILURE
    assert verdict.error == "exit code 0: the tool gave up"


def test_plain_failure_quotes_stderr_then_stdout() -> None:
    errors = CliErrors()

    with_stderr = run_verdict(errors, CliOutput(), "out", stderr="boom\n", exit_code=3)
    without = run_verdict(errors, CliOutput(), "only stdout\n", exit_code=3)
    silent = run_verdict(errors, CliOutput(), "", exit_code=3)

    assert (with_stderr.kind, with_stderr.error) == (K.FAILURE, "exit code 3: boom")
    assert without.error == "exit code 3: only stdout"
    assert silent.error == "exit code 3"


def test_custom_success_exit_codes() -> None:
    errors = CliErrors(success_exit_codes=(0, 2))

    assert run_verdict(errors, CliOutput(), "", exit_code=2).kind is K.SUCCESS
    assert run_verdict(errors, CliOutput(), "", exit_code=1).kind is K.FAILURE


def test_rate_limit_wins_over_auth_and_capacity() -> None:
    errors = CliErrors(
        rate_limit_patterns=("429",), auth_error_patterns=("key",), capacity_patterns=("503",)
    )

    verdict = run_verdict(errors, CliOutput(), "", stderr="429 and key and 503", exit_code=1)

    assert verdict.kind is K.RATE_LIMITED


def test_patterns_match_case_insensitively() -> None:
    errors = CliErrors(auth_error_patterns=("Unauthorized",))

    assert run_verdict(errors, CliOutput(), "", stderr="UNAUTHORIZED", exit_code=1).kind is (
        K.AUTH_FAILED
    )


def test_a_huge_error_output_is_classified_from_its_end() -> None:
    errors = CliErrors(rate_limit_patterns=(r"(?:server|api).*overloaded",))
    flood = "api " * 2_000_000 + "\nrate window: server overloaded\n"

    verdict = run_verdict(errors, CliOutput(), flood, exit_code=1)

    assert verdict.kind is K.RATE_LIMITED
    assert len(verdict.error) < 600


# --- waits (S17) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("Your limit resets in 5 minutes.", 300),
        ("retry after 30s", 30),
        ("Please try again in 1h 30m", 5400),
        ("try again in 1h30m", 5400),
        ("Please retry in 23.5s.", 23.5),
        ("wait 2 hours and 15 minutes", 8100),
        ("quota resets in 1 day", 86400),
        ("Retry-After: 120", 120),
        ('"retryDelay": "42s"', 42),
        ("retry in 500ms", 1),  # never below one second
        ("limit resets at 2025-06-10T13:30:00Z", 5400),
        ("resets at 2025-06-10 14:00:00+02:00", 0 + 1),  # already passed: the floor
        ("Claude AI usage limit reached|1749560400", 3600),
        ("resets 5pm (Europe/Paris)", 3 * 3600),
        ("resets at 1:30pm", 5400),
        ("resets at 11:00", 23 * 3600),  # earlier today in UTC: tomorrow
        ("resets 12am (UTC)", 12 * 3600),
        ("resets in 400 days", MAX_WAIT_SECONDS),
        ("resets in 5 minutes, or retry after 30s", 300),  # the longest
        # Dated resets: Claude's weekly limit, Codex's "try again at".
        ("You've hit your weekly limit · resets Jun 11 at 4:30am (Asia/Calcutta)", 11 * 3600),
        ("try again at Jun 12, 2025, 7:38 AM.", 43 * 3600 + 38 * 60),
        ("resets Jan 2 at 9am (UTC)", MAX_WAIT_SECONDS),  # next January: capped
        ("resets 5pm (Etc/GMT+5)", 10 * 3600),  # zones with digits (GMT+5 is UTC-5)
    ],
)
def test_S17_wait_parsed_from_messages(text: str, seconds: float) -> None:
    assert parse_wait_seconds(text, NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["rate limit exceeded", "resets 5", "error 429", "try again later", "line 5 min"],
)
def test_no_wait_when_the_message_gives_none(text: str) -> None:
    assert parse_wait_seconds(text, NOW) is None


def test_reset_time_in_a_named_zone_uses_that_zone() -> None:
    new_york_morning = datetime(2025, 1, 15, 9, 0, tzinfo=ZoneInfo("America/New_York"))

    wait = parse_wait_seconds("resets 10am (America/New_York)", new_york_morning)

    assert wait == 3600


def test_wait_parsing_needs_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_wait_seconds("resets in 5 minutes", datetime(2025, 1, 1))


def test_retry_after_header_seconds_or_http_date() -> None:
    later = NOW + timedelta(seconds=90)

    assert retry_after_seconds("30", NOW) == 30
    assert retry_after_seconds(later.strftime("%a, %d %b %Y %H:%M:%S GMT"), NOW) == 90
    assert retry_after_seconds("soon", NOW) is None
    assert retry_after_seconds(None, NOW) is None
    assert retry_after_seconds("0", NOW) == 1


# --- HTTP chat completions ---------------------------------------------------------------

OLLAMA = BUILTINS["ollama"]


def test_chat_request_body_uses_the_default_model() -> None:
    body = chat_request_body(OLLAMA, "hi", None)

    assert body["model"] == "llama3.2"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["stream"] is False


def test_chat_success_gives_the_answer_and_tokens() -> None:
    body = json.dumps(
        {
            "choices": [{"message": {"role": "assistant", "content": "hello"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3},
        }
    )

    outcome = interpret_chat_response(OLLAMA, 200, {}, body, NOW)

    assert outcome.verdict.kind is K.SUCCESS
    assert (outcome.answer, outcome.input_tokens, outcome.output_tokens) == ("hello", 12, 3)


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "wait"),
    [
        (429, {"Retry-After": "17"}, '{"error": {"message": "slow down"}}', K.RATE_LIMITED, 17),
        (429, {}, '{"error": {"message": "try again in 2 minutes"}}', K.RATE_LIMITED, 120),
        (429, {}, "", K.RATE_LIMITED, None),
        (401, {}, '{"error": {"message": "bad key"}}', K.AUTH_FAILED, None),
        (403, {}, "forbidden", K.AUTH_FAILED, None),
        (503, {}, "busy", K.RATE_LIMITED, 60),
        (503, {"retry-after": "5"}, "busy", K.RATE_LIMITED, 5),
        (404, {}, '{"error": {"message": "model not found"}}', K.FAILURE, None),
        (200, {}, "not json", K.FAILURE, None),
        (200, {}, '{"error": {"message": "model not found"}}', K.FAILURE, None),
    ],
)
def test_S17_chat_error_statuses(
    status: int, headers: dict[str, str], body: str, kind: K, wait: float | None
) -> None:
    outcome = interpret_chat_response(OLLAMA, status, headers, body, NOW)

    assert outcome.verdict.kind is kind
    assert outcome.verdict.wait_seconds == wait


# --- redaction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("key sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345 used", "key [REDACTED] used"),
        ("openai sk-proj-ABCDEFGHIJKLMNOPQRSTUV", "openai [REDACTED]"),
        ("google AIzaSyA1234567890abcdefghijklmnopqrstuv", "google [REDACTED]"),
        ("aws AKIAIOSFODNN7EXAMPLE!", "aws [REDACTED]!"),
        ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789", "gh [REDACTED]"),
        ("Authorization: Bearer abc.def-ghi_jkl", "Authorization: Bearer [REDACTED]"),
        ("export MY_API_KEY=hunter2hunter2", "export MY_API_KEY=[REDACTED]"),
        ('{"password": "correct-horse"}', '{"password": "[REDACTED]"}'),
        ("input_tokens: 123456789", "input_tokens: 123456789"),
        ("the secretary documentation", "the secretary documentation"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_credentials_are_redacted(text: str, kept: str) -> None:
    assert redact(text) == kept


def test_known_secret_values_are_redacted_anywhere() -> None:
    assert redact("token is plainvalue123 ok", ["plainvalue123"]) == "token is [REDACTED] ok"


def test_output_tail_keeps_the_end_redacted() -> None:
    text = "x" * 5000 + " API_KEY=abcdefgh12345678 end"

    tail = output_tail(text, 40)

    assert tail.endswith("API_KEY=[REDACTED] end")
    assert len(tail) == 40
    assert output_tail("abc", 0) == ""


def fragments_of(secret: str, text: str, shortest: int = 8) -> list[str]:
    """Pieces of ``secret`` (at least ``shortest`` characters) found in ``text``."""
    return [
        secret[start : start + shortest]
        for start in range(len(secret) - shortest + 1)
        if secret[start : start + shortest] in text
    ]


def test_a_credential_crossing_the_cut_of_a_tail_leaves_no_piece_in_it() -> None:
    """A session token (claude-code passes AWS_SESSION_TOKEN) longer than what
    is kept around the cut, and a private key block, each starting before the
    kept tail and ending inside it."""
    token = "IQoJb3JpZ2luX2Vj" + "Ab3dE" * 160
    tail = output_tail("x" * 10_000 + "aws said: " + token + "\n" + "y" * 900, 1000, [token])
    assert fragments_of(token, tail) == [] and len(tail) == 1000
    body = "\n".join("MIIEpAIBAAKCAQEA" + "k7Qz" * 12 for _ in range(25))
    key = f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"
    tail = output_tail("z" * 5000 + key + "\ndone\n", 1000)
    assert "MIIEpAIBAAKCAQEA" not in tail and "PRIVATE KEY" not in tail
    assert tail.endswith("[REDACTED]\ndone\n")


def test_an_error_quoting_the_end_of_a_stream_quotes_no_piece_of_a_key() -> None:
    """The error keeps the last 500 characters of stderr; a key just before
    that cut is redacted first, not cut into an unrecognisable piece."""
    key = "sk-ant-api03-" + "Q7fR2x" * 16
    stderr = "Invalid API key: " + key + " " + "." * 450
    verdict = classify(
        CLAUDE_ERRORS,
        exit_code=1,
        stdout="",
        stderr=stderr,
        parsed=parse_output(CLAUDE_OUTPUT, ""),
        output_format="json",
        now=NOW,
    )
    assert verdict.kind is K.AUTH_FAILED
    assert verdict.error is not None and fragments_of(key, verdict.error) == []
    body = json.dumps({"error": {"message": "bad key " + key + " " + "." * 450}})
    outcome = interpret_chat_response(OLLAMA, 401, {}, body, NOW, [key])
    assert outcome.verdict.error is not None and fragments_of(key, outcome.verdict.error) == []


def cli_of(name: str) -> Any:
    cli = BUILTINS[name].cli
    assert cli is not None
    return cli


def test_a_structured_answer_settles_a_successful_exit_despite_retry_chatter() -> None:
    """Gemini CLI logs the 429s it retried past, then answers: that is a success."""
    gemini = cli_of("gemini-cli")
    stdout = json.dumps({"response": "done", "stats": {}})
    stderr = "Attempt 1 failed with status 429. Retrying with backoff...\n"

    verdict = run_verdict(gemini.errors, gemini.output, stdout, stderr, exit_code=0)

    assert verdict.kind is K.SUCCESS


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("stream disconnected before completion", K.FAILURE),
        ("429 Too Many Requests", K.RATE_LIMITED),
    ],
)
def test_structured_output_with_an_error_and_no_answer_failed_even_after_exit_0(
    message: str, kind: K
) -> None:
    codex = cli_of("codex-cli")
    stdout = "\n".join(
        json.dumps(event)
        for event in (
            {"type": "thread.started", "thread_id": "t"},
            {"type": "error", "message": message},
            {"type": "turn.failed", "error": {"message": message}},
        )
    )

    verdict = run_verdict(codex.errors, codex.output, stdout, exit_code=0)

    assert verdict.kind is kind
    assert verdict.error is not None and message in verdict.error


@pytest.mark.parametrize(
    ("tool", "stdout", "kind"),
    [
        ("aider", "Added rate limiting and a timeout to the client.\nTests fail.", K.FAILURE),
        ("aider", "litellm.RateLimitError: AnthropicException - rate_limit_error", K.RATE_LIMITED),
        ("aider", "litellm.AuthenticationError: invalid x-api-key", K.AUTH_FAILED),
        ("goose", "I could not finish the authentication module or the 401 page.", K.FAILURE),
        ("goose", "Ran into this error: Rate limit exceeded: try again in 20s.", K.RATE_LIMITED),
        ("goose", "Request failed with status: 401 Unauthorized", K.AUTH_FAILED),
    ],
)
def test_a_text_tools_failure_is_classified_by_its_error_wording_not_the_agents_words(
    tool: str, stdout: str, kind: K
) -> None:
    """S12, S17: on a failed run a text tool's whole stdout is searched, the
    agent's answer included; prose about rate limits or authentication is no
    rate limit (an instrument-wide block) and no auth failure (no retry)."""
    cli = cli_of(tool)

    assert run_verdict(cli.errors, cli.output, stdout, exit_code=1).kind is kind


def test_pretty_printed_json_after_a_notice_is_the_document() -> None:
    """Gemini CLI indents its JSON; a notice line before it must not turn the
    whole output into text (tokens lost, and the answer searched for 'quota')."""
    gemini = cli_of("gemini-cli")
    document = {
        "response": "Raised the quota of the test tenant.",
        "stats": {"models": {"gemini-2.5-pro": {"tokens": {"prompt": 10, "candidates": 5}}}},
    }
    stdout = "Loaded cached credentials.\n" + json.dumps(document, indent=2) + "\n"

    parsed = parse_output(gemini.output, stdout)

    assert (parsed.structured, parsed.result) == (True, "Raised the quota of the test tenant.")
    assert (parsed.input_tokens, parsed.output_tokens) == (10, 5)
    assert parsed.other_text == "Loaded cached credentials."
    assert run_verdict(gemini.errors, gemini.output, stdout, exit_code=0).kind is K.SUCCESS


def test_a_key_header_without_its_end_hides_only_the_key_not_the_tools_error() -> None:
    """A private key block cut short is redacted up to the end of its body; the
    tool's own error after it is still read (here an aider rate limit)."""
    aider = cli_of("aider")
    stdout = (
        "Wrote key.pem (starts with -----BEGIN PRIVATE KEY-----)\n"
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n"
        "litellm.RateLimitError: AnthropicException - retry after 30s\n"
    )

    verdict = run_verdict(aider.errors, aider.output, stdout, exit_code=1)

    assert (verdict.kind, verdict.wait_seconds) == (K.RATE_LIMITED, 30)
    assert "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcw" not in (verdict.error or "")
