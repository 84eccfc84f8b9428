"""Reading what an instrument printed and deciding what the attempt was.

Owns, as pure functions over text: extracting a tool's answer, error, token
counts and reported cost from its output (``parse_output``), the cost from
tokens and the model's prices (``token_cost``), classifying a finished run into
an ``OutcomeKind`` from exit code and the profile's patterns (``classify``),
the wait a rate-limit message asks for (``parse_wait_seconds``), reading an
HTTP chat-completions answer (``interpret_chat_response``), and the output
tails kept of it, redacted (``output_tail``, with ``runtime.redaction``). It runs
nothing and keeps no state; what to do about an outcome is ``runtime.machine``'s decision.

Where patterns are searched (documented choices):

* After an exit the profile counts as failed (or a JSON ``is_error``), the
  error text is searched: stderr, the JSON error field and every part of stdout
  that is not the tool's answer (for a text tool, all of stdout). First match
  wins, in this order: rate limit, authentication, capacity, timeout.
* After a successful exit only rate limits are looked for (some tools exit 0
  when rate limited and say so on stdout): stderr and the non-answer part of
  stdout, never the answer itself, which may legitimately talk about rate
  limits. A profile's ``rate_limit_streams`` narrows the streams; naming
  ``stdout`` there for a text tool searches its whole stdout.
* A structured (JSON) answer settles a successful exit: nothing else is
  searched, since a tool that retried past a rate limit and then answered
  succeeded. The reverse holds too: structured output with an error and no
  answer is a failure even after exit 0.
* Every text is redacted before it is cut for searching or quoting.
* Capacity (overload, 503) is treated as a short rate limit: RATE_LIMITED with
  the wait the message gives, else the profile's ``capacity_wait_seconds``
  (60 s by default). An overloaded service is overloaded for every sheet, so
  waiting it out instrument-wide without consuming a retry is right (S17), and
  ``rate_limit.max_waits`` still bounds it (S20).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from runtime.instruments import CliErrors, CliOutput, InstrumentProfile, compile_patterns
from runtime.outcomes import OutcomeKind
from runtime.redaction import redact

# A wait longer than this is not believed (a parsing accident, or a quota that
# resets next month); the block is capped and the sheet tries again then.
MAX_WAIT_SECONDS = 7 * 24 * 3600.0

# How much of each stream's end is searched for error messages, and how much
# of one line (its start and its end).
SEARCH_CHARS = 64 * 1024
SEARCH_LINE_CHARS = 2048

# How much of an error is quoted in the attempt's error message.
ERROR_DETAIL_CHARS = 500

# Text is redacted before it is cut, over this much more than is kept, so that
# a credential crossing the cut is still seen whole if it is shorter than this
# (an RSA-8192 private key block is about 6.5 KB; a longer token's start could
# be cut off and its end kept).
REDACTION_MARGIN_CHARS = 16 * 1024


# --- output -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedOutput:
    """What a tool's stdout says, as far as its profile can tell."""

    result: str
    """The tool's answer: the result field, the completion events' text, or all
    of stdout for a text tool (or a JSON tool whose output did not parse)."""
    error: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    reported_cost: float | None = None
    is_error: bool = False
    structured: bool = False
    """True when stdout parsed in the profile's format."""
    other_text: str = ""
    """Stdout that is not the answer: lines that were not JSON, when the
    answer came from JSON. Searched for error messages."""


def json_path(document: Any, path: str) -> list[Any]:
    """Every value at dotted ``path`` in ``document``; ``*`` matches any key or
    item and a number indexes a list. No match gives []."""
    current = [document]
    for step in path.split("."):
        following: list[Any] = []
        for node in current:
            if step == "*":
                if isinstance(node, Mapping):
                    following.extend(node.values())
                elif isinstance(node, list):
                    following.extend(node)
            elif isinstance(node, Mapping):
                if step in node:
                    following.append(node[step])
            elif isinstance(node, list) and step.lstrip("-").isdigit():
                index = int(step)
                if -len(node) <= index < len(node):
                    following.append(node[index])
        current = following
    return current


def parse_output(output: CliOutput, stdout: str) -> ParsedOutput:
    """Read ``stdout`` as the profile's ``output`` section describes it."""
    if output.format == "json":
        return _parse_json(output, stdout)
    if output.format == "jsonl":
        return _parse_jsonl(output, stdout)
    return ParsedOutput(result=stdout)


def _parse_json(output: CliOutput, stdout: str) -> ParsedOutput:
    document, other = _json_document(stdout)
    if document is None:
        return ParsedOutput(result=stdout, other_text=stdout)
    result_values = json_path(document, output.result_path) if output.result_path else []
    result = _text(result_values[0]) if result_values else ""
    error = _first_text(document, output.error_path)
    is_error = bool(output.is_error_path and any(json_path(document, output.is_error_path)))
    return ParsedOutput(
        result=result,
        error=error,
        input_tokens=_tokens(document, output.input_tokens_path, output.aggregate_tokens),
        output_tokens=_tokens(document, output.output_tokens_path, output.aggregate_tokens),
        reported_cost=_number(document, output.cost_path),
        is_error=is_error,
        structured=True,
        other_text=other,
    )


def _json_document(stdout: str) -> tuple[Any, str]:
    """The JSON document in stdout and the text around it.

    Tools print banners or warnings before their JSON; when the whole output
    is not one document, the last line that is one is taken.
    """
    stripped = stdout.strip()
    if not stripped:
        return None, ""
    try:
        return _json_loads(stripped), ""
    except ValueError:
        pass
    found = _trailing_document(stdout)
    if found is not None:
        return found
    lines = stdout.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index].strip()
        if not line.startswith(("{", "[")):
            continue
        try:
            document = _json_loads(line)
        except ValueError:
            continue
        return document, "\n".join(lines[:index] + lines[index + 1 :])
    return None, stdout


_DOCUMENT_START = re.compile(r"^[\[{]", re.MULTILINE)


def _trailing_document(stdout: str) -> tuple[Any, str] | None:
    """A document, pretty-printed or not, that starts at the beginning of a
    line and runs to the end of the output (Gemini CLI's indented JSON after a
    notice), and the text before it."""
    decoder = json.JSONDecoder()
    end_of_text = len(stdout.rstrip())  # once: a copy per candidate would be quadratic
    for start in _DOCUMENT_START.finditer(stdout):
        try:
            document, end = decoder.raw_decode(stdout, start.start())
        except (ValueError, RecursionError):
            continue
        if end >= end_of_text:
            return document, stdout[: start.start()].rstrip("\n")
    return None


def _parse_jsonl(output: CliOutput, stdout: str) -> ParsedOutput:
    events: list[Any] = []
    other: list[str] = []
    for line in stdout.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        try:
            events.append(_json_loads(stripped))
        except ValueError:
            other.append(line)
    if not events:
        return ParsedOutput(result=stdout, other_text=stdout)
    answers: list[str] = []
    errors: list[str] = []
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float | None = None
    is_error = False
    for event in events:
        matched = _completion_object(output, event)
        if matched is not None:
            if output.result_path:
                values = json_path(event, output.result_path)
                if values:
                    answers.append(_text(values[0]))
            elif isinstance(matched.get("text"), str):
                answers.append(matched["text"])
        error = _first_text(event, output.error_path)
        if error and matched is None:
            errors.append(error)
        # Each event reports one step of the run: a run's tokens are the sum.
        input_tokens = _add(input_tokens, _tokens(event, output.input_tokens_path, True))
        output_tokens = _add(output_tokens, _tokens(event, output.output_tokens_path, True))
        event_cost = _number(event, output.cost_path)
        if event_cost is not None:
            cost = (cost or 0.0) + event_cost
        if output.is_error_path and any(json_path(event, output.is_error_path)):
            is_error = True
    return ParsedOutput(
        result="\n".join(answers),
        error="\n".join(errors) or None,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        reported_cost=cost,
        is_error=is_error,
        structured=True,
        other_text="\n".join(other),
    )


def _completion_object(output: CliOutput, event: Any) -> Mapping[str, Any] | None:
    """The event (or the object inside it) that carries an answer, if it does."""
    if not isinstance(event, Mapping):
        return None
    if output.completion_event_type is not None and event.get("type") != (
        output.completion_event_type
    ):
        return None
    wanted = output.completion_event_filter
    if not wanted:
        return event
    candidates = [event, *(value for value in event.values() if isinstance(value, Mapping))]
    for candidate in candidates:
        if all(candidate.get(key) == value for key, value in wanted.items()):
            return candidate
    return None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _first_text(document: Any, path: str | None) -> str | None:
    if not path:
        return None
    for value in json_path(document, path):
        if value is not None and value != "":
            return _text(value)
    return None


def _json_loads(text: str) -> Any:
    """``json.loads``; a document nested too deeply to parse is not JSON either."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _is_number(value: Any) -> bool:
    """A finite JSON number (json.loads also reads NaN, Infinity and 1e400)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(document: Any, path: str | None) -> float | None:
    if not path:
        return None
    for value in json_path(document, path):
        if _is_number(value):
            return float(value)
    return None


def _tokens(document: Any, path: str | tuple[str, ...] | None, aggregate: bool) -> int | None:
    if not path:
        return None
    if isinstance(path, tuple):  # several kinds of tokens, billed alike: added
        known = [
            count for part in path if (count := _tokens(document, part, aggregate)) is not None
        ]
        return sum(known) if known else None
    counts = [int(value) for value in json_path(document, path) if _is_number(value)]
    if not counts:
        return None
    return sum(counts) if aggregate else counts[0]


def _add(total: int | None, more: int | None) -> int | None:
    if more is None:
        return total
    return (total or 0) + more


def token_cost(
    profile: InstrumentProfile,
    model: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
) -> float:
    """Tokens times the model's prices per 1000 (S24); 0 for a model not listed."""
    spec = profile.model(model)
    if spec is None:
        return 0.0
    return (
        (input_tokens or 0) * spec.cost_per_1k_input
        + (output_tokens or 0) * (spec.cost_per_1k_output)
    ) / 1000.0


def attempt_cost(profile: InstrumentProfile, model: str | None, parsed: ParsedOutput) -> float:
    """The cost the tool reported, else tokens times prices."""
    if parsed.reported_cost is not None:
        return max(0.0, parsed.reported_cost)
    return token_cost(profile, model, parsed.input_tokens, parsed.output_tokens)


# --- classification ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: OutcomeKind
    error: str | None = None
    wait_seconds: float | None = None


def classify(
    errors: CliErrors,
    *,
    exit_code: int | None,
    stdout: str,
    stderr: str,
    parsed: ParsedOutput,
    output_format: str,
    now: datetime,
    secrets: Sequence[str] = (),
) -> Verdict:
    """The outcome of a run that ended on its own (not spawn error, timeout or cancel).

    A verdict that quotes the output (an error message) is worked out from
    text redacted (``secrets`` and known key formats) before it was cut, so no
    part of a credential reaches it. Searching alone needs no redaction, which
    costs tens of milliseconds on a large output: a plain success skips it."""
    arguments = (errors, exit_code, stdout, stderr, parsed, output_format, now)
    if exit_code in errors.success_exit_codes and not parsed.is_error:
        verdict = _classify(*arguments, redact_with=None)
        if verdict.error is None:
            return verdict
    return _classify(*arguments, redact_with=secrets)


def _classify(
    errors: CliErrors,
    exit_code: int | None,
    stdout: str,
    stderr: str,
    parsed: ParsedOutput,
    output_format: str,
    now: datetime,
    *,
    redact_with: Sequence[str] | None,
) -> Verdict:
    def end_of(text: str, keep: int) -> str:
        if redact_with is None:
            return text[-keep:]
        return _redacted_end(text, keep, redact_with)

    stdout = _searchable(end_of(stdout, SEARCH_CHARS))
    stderr = _searchable(end_of(stderr, SEARCH_CHARS))
    other_text = _searchable(end_of(parsed.other_text, SEARCH_CHARS))
    parsed_error = _searchable(end_of(parsed.error, SEARCH_CHARS)) if parsed.error else ""
    result_text = end_of(parsed.result, ERROR_DETAIL_CHARS)
    succeeded = exit_code is not None and exit_code in errors.success_exit_codes
    streams = errors.rate_limit_streams
    answered = parsed.structured and bool(parsed.result.strip())
    if succeeded and parsed.structured and not answered and parsed_error:
        # An error event and no answer (codex exec can exit 0 after a failed
        # turn): the run failed, whatever its exit code says.
        succeeded = False
    if succeeded and not parsed.is_error:
        if answered:
            # The tool gave its answer: a rate limit it hit and retried on the
            # way (Gemini logs "Attempt 1 failed with status 429. Retrying")
            # is history, not the outcome.
            return Verdict(OutcomeKind.SUCCESS)
        searched = []
        if streams is None or "stderr" in streams:
            searched.append(stderr)
        if streams is None or "stdout" in streams:
            searched.append(parsed_error)
            searched.append(other_text)
            if streams is not None and output_format == "text":
                searched.append(stdout)
        rate_limited = _rate_limit(errors, "\n".join(searched), now)
        return rate_limited or Verdict(OutcomeKind.SUCCESS)

    answer_is_error_text = output_format == "text" or parsed.is_error or not parsed.structured
    stdout_text = stdout if answer_is_error_text else other_text
    rate_text = "\n".join(
        part
        for stream, part in (("stderr", stderr), ("stdout", stdout_text))
        if streams is None or stream in streams
    )
    error_text = "\n".join(part for part in (parsed_error, stderr, stdout_text) if part)
    rate_limited = _rate_limit(errors, "\n".join((parsed_error, rate_text)), now)
    if rate_limited is not None:
        return rate_limited
    detail = _detail(parsed_error or (result_text if parsed.is_error else None), stderr, stdout)
    code = f"exit code {exit_code}" if exit_code is not None else "no exit status"
    auth = _search(compile_patterns(errors.auth_error_patterns), error_text)
    if auth is not None:
        return Verdict(OutcomeKind.AUTH_FAILED, f"authentication failed ({code}): {detail}")
    capacity = _search(compile_patterns(errors.capacity_patterns), error_text)
    if capacity is not None:
        wait = parse_wait_seconds(error_text, now)
        return Verdict(
            OutcomeKind.RATE_LIMITED,
            f"instrument over capacity ({code}): {detail}",
            wait if wait is not None else errors.capacity_wait_seconds,
        )
    timed_out = _search(compile_patterns(errors.timeout_patterns), error_text)
    if timed_out is not None:
        return Verdict(OutcomeKind.TIMEOUT, f"the tool reported a timeout ({code}): {detail}")
    return Verdict(OutcomeKind.FAILURE, f"{code}: {detail}" if detail else code)


def _searchable(text: str) -> str:
    """The part of a stream worth searching: its end, with very long lines cut.

    Messages that matter come last and are short. Bounding both keeps a
    profile pattern such as ``api.*overloaded`` from going quadratic on a
    flood of output.
    """
    text = text[-SEARCH_CHARS:]
    if len(text) <= SEARCH_LINE_CHARS:
        return text
    half = SEARCH_LINE_CHARS // 2
    return "\n".join(
        line if len(line) <= SEARCH_LINE_CHARS else f"{line[:half]} … {line[-half:]}"
        for line in text.split("\n")
    )


def _rate_limit(errors: CliErrors, text: str, now: datetime) -> Verdict | None:
    line = _search(compile_patterns(errors.rate_limit_patterns), text)
    if line is None:
        return None
    return Verdict(OutcomeKind.RATE_LIMITED, f"rate limited: {line}", parse_wait_seconds(text, now))


def _search(pattern: re.Pattern[str] | None, text: str) -> str | None:
    """The line where ``pattern`` first matches, trimmed for an error message."""
    if pattern is None or not text:
        return None
    match = pattern.search(text)
    if match is None:
        return None
    start = text.rfind("\n", 0, match.start()) + 1
    end = text.find("\n", match.end())
    line = text[start : end if end != -1 else len(text)].strip()
    return _shorten(line)


def _detail(preferred: str | None, stderr: str, stdout: str) -> str:
    for text in (preferred, stderr, stdout):
        if text and text.strip():
            return _shorten(text.strip(), from_end=True)
    return ""


def _shorten(text: str, *, from_end: bool = False) -> str:
    if len(text) <= ERROR_DETAIL_CHARS:
        return text
    if from_end:
        return "…" + text[-ERROR_DETAIL_CHARS:]
    return text[:ERROR_DETAIL_CHARS] + "…"


# --- waits ------------------------------------------------------------------------------

_UNIT_SECONDS = {
    "ms": 0.001,
    "millisecond": 0.001,
    "milliseconds": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_UNIT = r"(?:milliseconds?|ms|seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d)"
# Not \b after the unit: "1h30m" has no word boundary between "h" and "3".
_AMOUNT = rf"\d+(?:\.\d+)?\s*{_UNIT}(?![A-Za-z])"
# "resets in 5 minutes", "retry after 30s", "try again in 1h 30m", "wait 2 minutes",
# "Please retry in 23.4s".
_DURATION = re.compile(
    rf"(?:resets?|retry|try again|wait|available|again)\s*(?:in|after|for)?\s*:?\s*"
    rf"(?P<amounts>{_AMOUNT}(?:(?:\s*,\s*|\s+and\s+|\s*)\s*{_AMOUNT})*)",
    re.IGNORECASE,
)
_AMOUNT_PARTS = re.compile(rf"(\d+(?:\.\d+)?)\s*({_UNIT})(?![A-Za-z])", re.IGNORECASE)
# "Retry-After: 120" (a bare number is seconds), Google's "retryDelay": "42s".
_BARE_SECONDS = re.compile(
    r"(?:retry-after|retry_after|retryDelay)[\"']?\s*[:=]\s*[\"']?(\d+(?:\.\d+)?)\s*s?\b",
    re.IGNORECASE,
)
# "resets at 2025-06-10T17:00:00Z", "reset: 2025-06-10 17:00:00+02:00".
_ISO_TIME = re.compile(
    r"resets?\s*(?:at|on)?\s*:?\s*(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?"
    r"(?:Z|[+-]\d{2}:?\d{2})?)",
    re.IGNORECASE,
)
# "resets 5pm (Europe/Paris)", "resets at 5:30 pm", "resets at 17:00 (UTC)".
_CLOCK = (
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?P<ampm>am|pm)?"
    r"(?:\s*\((?P<zone>[A-Za-z_]+(?:/[A-Za-z0-9_+-]+)*)\))?"
)
_CLOCK_TIME = re.compile(rf"resets?\s*(?:at)?\s*{_CLOCK}", re.IGNORECASE)
# With a date: Claude's "resets Jul 27 at 4:30am (Asia/Calcutta)", Codex's
# "try again at Aug 20, 2026, 7:38 AM".
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DATED_TIME = re.compile(
    r"(?:resets?|again)\s*(?:at|on)?\s*(?P<month>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
    r"[a-z]*\.?\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?(?:,?\s*(?P<year>\d{4}))?,?\s*(?:at\s*)?"
    + _CLOCK,
    re.IGNORECASE,
)
# Claude's "usage limit reached|1750000000": the reset as a Unix time.
_EPOCH = re.compile(r"(?:\||reset\w*\s*(?:at)?\s*:?\s*)(\d{10})\b", re.IGNORECASE)


def parse_wait_seconds(text: str, now: datetime) -> float | None:
    """How long a rate-limit message asks to wait, in seconds; None if it does not say.

    Understands durations ("resets in 5 minutes", "retry after 30s", "try again
    in 1h 30m"), Retry-After style numbers, ISO times, clock times with an
    optional zone in parentheses ("resets 5pm (Europe/Paris)": the next such
    time), the same with a date ("resets Jul 27 at 4:30am (Asia/Calcutta)",
    "try again at Aug 20, 2026, 7:38 AM") and Unix times. A time without a
    zone is in ``now``'s zone: pass the local time for a tool on this machine.
    ``now`` must be timezone-aware. With several waits the longest is taken;
    the result is between 1 s and ``MAX_WAIT_SECONDS``.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    waits: list[float] = []
    for match in _DURATION.finditer(text):
        waits.append(
            sum(
                float(amount) * _UNIT_SECONDS[unit.lower()]
                for amount, unit in _AMOUNT_PARTS.findall(match.group("amounts"))
            )
        )
    waits.extend(float(match.group(1)) for match in _BARE_SECONDS.finditer(text))
    for match in _ISO_TIME.finditer(text):
        moment = _iso_time(match.group(1), now)
        if moment is not None:
            waits.append((moment - now).total_seconds())
    for match in _EPOCH.finditer(text):
        waits.append(float(match.group(1)) - now.timestamp())
    for match in _DATED_TIME.finditer(text):
        moment = _dated_time(match, now)
        if moment is not None:
            waits.append((moment - now).total_seconds())
    for match in _CLOCK_TIME.finditer(text):
        if (
            _ISO_TIME.match(text, match.start())
            or _EPOCH.match(text, match.start())
            or _DATED_TIME.match(text, match.start())
        ):
            continue
        moment = _next_clock_time(match, now)
        if moment is not None:
            waits.append((moment - now).total_seconds())
    if not waits:
        return None
    return min(MAX_WAIT_SECONDS, max(1.0, max(waits)))


def _iso_time(text: str, now: datetime) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=now.tzinfo)
    return moment


def _clock(match: re.Match[str], now: datetime) -> tuple[int, int, Any] | None:
    """The hour, minute and zone a ``_CLOCK`` match names (the zone of ``now``
    when it names none); None when it is no time of day."""
    hour = int(match.group("hour"))
    minute = int(match.group("minute") or 0)
    ampm = (match.group("ampm") or "").lower()
    if not ampm and match.group("minute") is None:
        return None  # a bare number ("resets 5") is not a time
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    if hour > 23 or minute > 59:
        return None
    zone: Any = now.tzinfo
    if match.group("zone"):
        try:
            zone = ZoneInfo(match.group("zone"))
        except (ZoneInfoNotFoundError, ValueError):
            zone = now.tzinfo
    return hour, minute, zone


def _dated_time(match: re.Match[str], now: datetime) -> datetime | None:
    """The moment a dated reset names; without a year, the next such date."""
    clock = _clock(match, now)
    if clock is None:
        return None
    hour, minute, zone = clock
    month = _MONTHS.index(match.group("month").lower()[:3]) + 1
    local_now = now.astimezone(zone)
    year = int(match.group("year") or local_now.year)
    try:
        moment = local_now.replace(
            year=year, month=month, day=int(match.group("day")), hour=hour, minute=minute,
            second=0, microsecond=0,
        )  # fmt: skip
        if match.group("year") is None and moment < local_now - timedelta(days=1):
            moment = moment.replace(year=year + 1)  # "Jan 2" said on Dec 30
    except ValueError:
        return None  # no such day ("Feb 30")
    return moment


def _next_clock_time(match: re.Match[str], now: datetime) -> datetime | None:
    clock = _clock(match, now)
    if clock is None:
        return None
    hour, minute, zone = clock
    local_now = now.astimezone(zone)
    moment = local_now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if moment <= local_now:
        moment += timedelta(days=1)
    return moment


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """An HTTP ``Retry-After`` header: seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - now).total_seconds()
    if math.isnan(seconds):
        return None
    return min(MAX_WAIT_SECONDS, max(1.0, seconds))


# --- HTTP chat completions ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatOutcome:
    verdict: Verdict
    answer: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None


def chat_request_body(profile: InstrumentProfile, prompt: str, model: str | None) -> dict[str, Any]:
    """The JSON body of an OpenAI-compatible chat completions request."""
    http = profile.http
    if http is None:
        raise ValueError(f"instrument {profile.name!r} is not an HTTP instrument")
    body: dict[str, Any] = {
        "model": model if model is not None else profile.default_model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": False,
    }
    if http.max_tokens is not None:
        body["max_tokens"] = http.max_tokens
    if http.temperature is not None:
        body["temperature"] = http.temperature
    return body


def interpret_chat_response(
    profile: InstrumentProfile,
    status: int,
    headers: Mapping[str, str],
    body: str,
    now: datetime,
    secrets: Sequence[str] = (),
) -> ChatOutcome:
    """Classify an HTTP answer: 2xx success, 429 rate limit (Retry-After, else
    the message), 401/403 authentication, 502/503/504/529 capacity, else failure.
    The error quoted is redacted before it is cut (see ``classify``)."""
    http = profile.http
    capacity_wait = http.capacity_wait_seconds if http is not None else 60.0
    document: Any = None
    try:
        document = _json_loads(body) if body.strip() else None
    except ValueError:
        document = None
    message = _first_text(document, "error.message") or _first_text(document, "error")
    quoted = _redacted_end((message or body).strip(), ERROR_DETAIL_CHARS, secrets)
    detail = _shorten(quoted.strip(), from_end=True) or f"HTTP {status}"
    lowered = {name.lower(): value for name, value in headers.items()}
    if 200 <= status < 300:
        if not isinstance(document, Mapping):
            return ChatOutcome(
                Verdict(OutcomeKind.FAILURE, f"HTTP {status} but the body is not JSON: {detail}")
            )
        if message is not None and not json_path(document, "choices"):
            # Some servers answer an error with 200 and no choices.
            return ChatOutcome(Verdict(OutcomeKind.FAILURE, f"HTTP {status}: {detail}"))
        answer = _first_text(document, "choices.0.message.content") or ""
        return ChatOutcome(
            Verdict(OutcomeKind.SUCCESS),
            answer=answer,
            input_tokens=_tokens(document, "usage.prompt_tokens", False),
            output_tokens=_tokens(document, "usage.completion_tokens", False),
        )
    wait = retry_after_seconds(lowered.get("retry-after"), now)
    if wait is None:
        wait = parse_wait_seconds(message or body, now)
    if status == 429:
        return ChatOutcome(
            Verdict(OutcomeKind.RATE_LIMITED, f"rate limited (HTTP 429): {detail}", wait)
        )
    if status in (401, 403):
        return ChatOutcome(
            Verdict(OutcomeKind.AUTH_FAILED, f"authentication failed (HTTP {status}): {detail}")
        )
    if status in (502, 503, 504, 529):
        return ChatOutcome(
            Verdict(
                OutcomeKind.RATE_LIMITED,
                f"instrument over capacity (HTTP {status}): {detail}",
                wait if wait is not None else capacity_wait,
            )
        )
    return ChatOutcome(Verdict(OutcomeKind.FAILURE, f"HTTP {status}: {detail}"))


# --- output tails ---------------------------------------------------------------------

# How much of the answer and of stderr an ExecutionResult keeps (the tail).
# Enough for cross-sheet context and error messages; a flood stays bounded.
RESULT_KEEP_CHARS = 64 * 1024
STDERR_KEEP_CHARS = 16 * 1024

# Output above this is decoded, parsed and searched in the hub's thread pool by
# the backends: json and regex work on megabytes would otherwise hold the hub
# (DESIGN: orjson and friends never yield).
OFF_HUB_BYTES = 512 * 1024


def output_tail(text: str, max_chars: int, secrets: Iterable[str] = ()) -> str:
    """The last ``max_chars`` of ``text``, credentials redacted."""
    if max_chars <= 0:
        return ""
    return _redacted_end(text, max_chars, secrets)[-max_chars:]


def _redacted_end(text: str, keep: int, secrets: Iterable[str] = ()) -> str:
    """The end of ``text`` that holds its last ``keep`` characters and any
    credential reaching into them, redacted; the caller cuts what it keeps.

    A credential that crosses the cut starts at most its own length before
    the kept part, so the window reaches back by more than the longest one.
    """
    secrets = list(secrets)
    margin = max([REDACTION_MARGIN_CHARS, *(len(secret) + 1 for secret in secrets)])
    return redact(text[-(keep + margin) :], secrets)


__all__ = [
    "MAX_WAIT_SECONDS",
    "OFF_HUB_BYTES",
    "RESULT_KEEP_CHARS",
    "STDERR_KEEP_CHARS",
    "ChatOutcome",
    "ParsedOutput",
    "Verdict",
    "attempt_cost",
    "chat_request_body",
    "classify",
    "interpret_chat_response",
    "json_path",
    "output_tail",
    "parse_output",
    "parse_wait_seconds",
    "retry_after_seconds",
    "token_cost",
]
