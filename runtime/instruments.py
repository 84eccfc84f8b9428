"""Instrument profiles: what a tool is, how to call it, where profiles come from.

Owns the profile models (Marianne's YAML format, SCORE_FORMAT.md "Instrument
profiles", plus a few keys of Ensemble's own, each marked below), loading them
from the built-ins shipped in ``runtime/profiles/``, then ``~/.ensemble/instruments/``,
then ``./.ensemble/instruments/`` (a later profile with the same ``name``
replaces an earlier one as a whole), and the pure construction of a CLI
instrument's command line and environment. Reading a tool's output and
classifying the outcome is ``runtime.instrument_output``; running anything is
the backends' job (``actors/backends/``): nothing here starts a process or
opens a socket.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runtime.config_yaml import duplicate_notes, located_validation_error, parse_yaml
from runtime.errors import ProfileError
from runtime.score_extras import check_regex

BUILTIN_PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
USER_PROFILE_DIR = Path("~/.ensemble/instruments")
PROJECT_PROFILE_DIR = Path(".ensemble/instruments")

# Variables every tool reasonably needs (a tool finds its own login through
# HOME); a profile's `required_env` adds the ones that carry its credentials.
# Nothing else from the host's environment reaches an instrument.
BASE_ENVIRONMENT: tuple[str, ...] = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "TZ",
)

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

# libyaml's safe loader when PyYAML was built with it: ten times faster.


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Model):
    """One model an instrument can run, with its prices per 1000 tokens."""

    name: str = Field(min_length=1)
    context_window: int | None = Field(default=None, ge=1)
    cost_per_1k_input: float = Field(default=0.0, ge=0)
    cost_per_1k_output: float = Field(default=0.0, ge=0)
    max_output_tokens: int | None = Field(default=None, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)


class CliCommand(_Model):
    """How the command line is built (``build_command``)."""

    executable: str = Field(min_length=1)
    subcommand: str | None = None
    # The prompt goes after this flag, or as the last positional argument when
    # it is null. With `prompt_via_stdin` the prompt is written to stdin and
    # the flag (if any) is followed by `stdin_sentinel` (if any), e.g. `-i -`.
    prompt_flag: str | None = None
    prompt_via_stdin: bool = False
    stdin_sentinel: str | None = None
    # Accepted for Marianne's profiles; Ensemble always starts every instrument
    # in a new session so that its whole process group can be killed (S13).
    start_new_session: bool = True
    required_env: tuple[str, ...] = ()
    model_flag: str | None = None
    auto_approve_flag: str | None = None
    output_format_flag: str | None = None
    # Null: the format flag is a switch without a value (`--json`).
    output_format_value: str | None = None
    system_prompt_flag: str | None = None
    allowed_tools_flag: str | None = None
    mcp_config_flag: str | None = None
    mcp_disable_args: tuple[str, ...] = ()
    extra_flags: tuple[str, ...] = ()
    timeout_flag: str | None = None
    working_dir_flag: str | None = None

    @field_validator("required_env")
    @classmethod
    def _variable_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return names


class CliOutput(_Model):
    """Where a tool puts its answer, its error and its token counts.

    Paths are dotted keys into the JSON document (``usage.input_tokens``); a
    ``*`` step matches every key of an object or item of a list. With
    ``aggregate_tokens`` the matches are summed, else the first one counts.
    Ensemble: a token path may also be a list of paths, whose counts are
    added (Gemini bills its ``thoughts`` tokens as output, beside ``candidates``).
    """

    format: Literal["text", "json", "jsonl"] = "text"
    result_path: str | None = None
    error_path: str | None = None
    input_tokens_path: str | tuple[str, ...] | None = None
    output_tokens_path: str | tuple[str, ...] | None = None
    aggregate_tokens: bool = False
    # jsonl: the events that carry the answer (their `type`, and key/values
    # the event or one of its objects must have, e.g. {type: agent_message}).
    completion_event_type: str | None = None
    completion_event_filter: dict[str, Any] = Field(default_factory=dict)
    # Ensemble: the cost the tool reports itself (preferred over token prices).
    cost_path: str | None = None
    # Ensemble: a true value here makes an exit that looks successful a failure.
    is_error_path: str | None = None


StreamName = Literal["stdout", "stderr"]


class CliErrors(_Model):
    """How an outcome is recognised (``runtime.instrument_output.classify``).

    Patterns are regular expressions, matched case-insensitively.
    """

    success_exit_codes: tuple[int, ...] = (0,)
    rate_limit_patterns: tuple[str, ...] = ()
    auth_error_patterns: tuple[str, ...] = ()
    capacity_patterns: tuple[str, ...] = ()
    timeout_patterns: tuple[str, ...] = ()
    # Ensemble: the streams searched for rate-limit messages. Null means both,
    # with a guard against false alarms: after a successful exit the tool's
    # answer itself is never searched (it may well talk about rate limits).
    rate_limit_streams: tuple[StreamName, ...] | None = None
    # Ensemble: how long an overloaded service is waited out when it says nothing.
    capacity_wait_seconds: float = Field(default=60.0, gt=0)

    @field_validator(
        "rate_limit_patterns", "auth_error_patterns", "capacity_patterns", "timeout_patterns"
    )
    @classmethod
    def _patterns_compile(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            check_regex(pattern)
        return patterns


class CliConfig(_Model):
    command: CliCommand
    output: CliOutput = Field(default_factory=CliOutput)
    errors: CliErrors = Field(default_factory=CliErrors)


class HttpConfig(_Model):
    """Ensemble: an OpenAI-compatible chat completions endpoint (Ollama, vLLM, ...)."""

    base_url: str = Field(pattern=r"^https?://")
    chat_path: str = "/chat/completions"
    # The variable holding the API key, sent as a bearer token; null for none.
    api_key_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    capacity_wait_seconds: float = Field(default=60.0, gt=0)

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/" + self.chat_path.lstrip("/")


class InstrumentProfile(_Model):
    """One instrument: a CLI tool (``kind: cli``) or an HTTP endpoint (``kind: http``)."""

    name: str = Field(pattern=_NAME_PATTERN)
    display_name: str | None = None
    description: str | None = None
    kind: Literal["cli", "http"] = "cli"
    capabilities: tuple[str, ...] = ()
    raw_prompt: bool = False
    default_model: str | None = None
    default_timeout_seconds: float = Field(default=1800.0, gt=0)
    # Ensemble: at most this many attempts at once on the instrument.
    max_concurrent: int | None = Field(default=None, ge=1)
    models: tuple[ModelSpec, ...] = ()
    cli: CliConfig | None = None
    http: HttpConfig | None = None

    @model_validator(mode="after")
    def _section_for_kind(self) -> InstrumentProfile:
        if self.kind == "cli" and self.cli is None:
            raise ValueError("a 'kind: cli' profile needs a 'cli' section with 'command'")
        if self.kind == "http" and self.http is None:
            raise ValueError("a 'kind: http' profile needs an 'http' section with 'base_url'")
        names = [model.name for model in self.models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"model listed twice: {', '.join(duplicates)}")
        return self

    def model(self, name: str | None) -> ModelSpec | None:
        """The spec of model ``name`` (the default model when None), if listed."""
        wanted = name if name is not None else self.default_model
        for model in self.models:
            if model.name == wanted:
                return model
        return None

    @property
    def model_limits(self) -> dict[str, int]:
        """Per-model ``max_concurrent``. A sheet that names no model counts
        against its ``default_model`` (the pool's lease table sees to that)."""
        return {
            model.name: model.max_concurrent
            for model in self.models
            if model.max_concurrent is not None
        }

    @property
    def required_env(self) -> tuple[str, ...]:
        """The variables that may carry this instrument's credentials."""
        if self.cli is not None:
            return self.cli.command.required_env
        if self.http is not None and self.http.api_key_env:
            return (self.http.api_key_env,)
        return ()


@dataclass(frozen=True, slots=True)
class FoundProfile:
    """A profile and the file it came from (``None`` for a mapping)."""

    profile: InstrumentProfile
    source: Path | None


# --- loading ----------------------------------------------------------------------


def profile_dirs(cwd: Path | None = None) -> tuple[Path, ...]:
    """Where profiles are looked for, earliest first (later ones override)."""
    return (
        BUILTIN_PROFILE_DIR,
        USER_PROFILE_DIR.expanduser(),
        (cwd or Path.cwd()) / PROJECT_PROFILE_DIR,
    )


def find_profiles(dirs: Iterable[Path] | None = None) -> list[FoundProfile]:
    """Every profile in ``dirs`` (default ``profile_dirs()``), in override order.

    A missing folder is skipped; an unreadable or invalid file, or two files
    of one folder with the same ``name``, raise ``ProfileError``.
    """
    found: list[FoundProfile] = []
    for folder in dirs if dirs is not None else profile_dirs():
        if not folder.is_dir():
            continue
        in_folder: dict[str, Path] = {}
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            profile = load_profile_file(path)
            earlier = in_folder.get(profile.name)
            if earlier is not None:
                raise ProfileError(
                    f"instrument {profile.name!r} is also defined in {earlier}; "
                    "rename one of them or delete it",
                    key_path="name",
                    source=str(path),
                )
            in_folder[profile.name] = path
            found.append(FoundProfile(profile, path))
    return found


def load_profiles(dirs: Iterable[Path] | None = None) -> dict[str, InstrumentProfile]:
    """The profiles by name; a later folder's profile replaces an earlier one."""
    return {found.profile.name: found.profile for found in find_profiles(dirs)}


def builtin_profiles() -> dict[str, InstrumentProfile]:
    """Only the profiles shipped with Ensemble (read once; profiles are immutable)."""
    return dict(_builtin_profiles())


@lru_cache(maxsize=1)
def _builtin_profiles() -> dict[str, InstrumentProfile]:
    return load_profiles([BUILTIN_PROFILE_DIR])


def load_profile_file(path: Path) -> InstrumentProfile:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot read instrument profile: {exc}", source=str(path)) from None
    data, lines, duplicates = parse_yaml(text, source_name=str(path), error=ProfileError)
    if not isinstance(data, Mapping):
        raise ProfileError("an instrument profile must be a YAML mapping", source=str(path))
    for note in duplicate_notes(duplicates):
        logger.warning("{}: {}", path, note)
    return profile_from_mapping(data, source=str(path), lines=lines)


def profile_from_mapping(
    data: Mapping[str, Any],
    *,
    source: str = "<profile>",
    lines: Mapping[tuple[Any, ...], int] | None = None,
) -> InstrumentProfile:
    """Validate a profile; ``lines`` (from ``parse_yaml``) put a line in its errors."""
    try:
        return InstrumentProfile.model_validate(dict(data))
    except ValidationError as exc:
        raise located_validation_error(
            exc, data, source=source, lines=lines or {}, root=InstrumentProfile, error=ProfileError
        ) from None


# --- the command line and its environment -----------------------------------------


@dataclass(frozen=True, slots=True)
class CommandLine:
    argv: tuple[str, ...]
    stdin: bytes | None
    """The prompt, when the tool reads it from stdin; else None (stdin is empty)."""


def build_command(
    profile: InstrumentProfile,
    prompt: str,
    *,
    model: str | None = None,
    workspace: str | None = None,
    timeout_seconds: float | None = None,
    auto_approve: bool = True,
) -> CommandLine:
    """The argv (and stdin) that runs ``prompt`` on a CLI instrument.

    Order: executable, subcommand, model, auto-approve, output format, MCP,
    extra flags, working directory, timeout, then the prompt (or its stdin
    marker) last, where positional prompts must be.
    """
    if profile.cli is None:
        raise ValueError(f"instrument {profile.name!r} is not a CLI instrument")
    command = profile.cli.command
    argv: list[str] = [command.executable]
    if command.subcommand:
        argv.append(command.subcommand)
    chosen_model = model if model is not None else profile.default_model
    if chosen_model and command.model_flag:
        argv += [command.model_flag, chosen_model]
    if auto_approve and command.auto_approve_flag:
        argv.append(command.auto_approve_flag)
    if command.output_format_flag:
        argv.append(command.output_format_flag)
        if command.output_format_value is not None:
            argv.append(command.output_format_value)
    argv += command.mcp_disable_args
    argv += command.extra_flags
    if workspace is not None and command.working_dir_flag:
        argv += [command.working_dir_flag, workspace]
    if timeout_seconds is not None and command.timeout_flag:
        argv += [command.timeout_flag, str(max(1, int(timeout_seconds)))]
    if command.prompt_via_stdin:
        if command.prompt_flag:
            argv.append(command.prompt_flag)
        if command.stdin_sentinel:
            argv.append(command.stdin_sentinel)
        return CommandLine(tuple(argv), prompt.encode("utf-8"))
    if command.prompt_flag:
        argv.append(command.prompt_flag)
    argv.append(prompt)
    return CommandLine(tuple(argv), None)


def build_environment(
    profile: InstrumentProfile,
    host_environment: Mapping[str, str],
    *,
    pass_env: Sequence[str] = (),
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The instrument's whole environment: the base allow-list, the profile's
    ``required_env`` and ``pass_env`` taken from the host when set, then ``extra``."""
    environment: dict[str, str] = {}
    # One lookup per name: os.environ encodes the key on every access.
    for name in (*BASE_ENVIRONMENT, *profile.required_env, *pass_env):
        value = host_environment.get(name)
        if value is not None:
            environment[name] = value
    environment.update(extra or {})
    return environment


# `required_env` also passes settings (ANTHROPIC_MODEL, CLOUD_ML_REGION): only
# the names that say they hold a credential have their values redacted, or a
# model name or region would become [REDACTED] in every message.
_CREDENTIAL_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


def raw_prompt_instruments(profiles: Mapping[str, InstrumentProfile]) -> frozenset[str]:
    """The instruments whose prompt is passed as written, without Ensemble's
    preamble (``raw_prompt: true``, as the built-in ``cli``)."""
    return frozenset(name for name, profile in profiles.items() if profile.raw_prompt)


def secret_values(profile: InstrumentProfile, host_environment: Mapping[str, str]) -> list[str]:
    """Values of the credential variables, to be redacted from any output kept."""
    return [
        host_environment[name]
        for name in profile.required_env
        if _CREDENTIAL_NAME.search(name) and len(host_environment.get(name, "")) >= 8
    ]


@lru_cache(maxsize=256)
def compile_patterns(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One case-insensitive regex matching any of ``patterns`` (None for none)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{pattern})" for pattern in patterns), re.IGNORECASE)


__all__ = [
    "BASE_ENVIRONMENT",
    "BUILTIN_PROFILE_DIR",
    "CliCommand",
    "CliConfig",
    "CliErrors",
    "CliOutput",
    "CommandLine",
    "FoundProfile",
    "HttpConfig",
    "InstrumentProfile",
    "ModelSpec",
    "build_command",
    "build_environment",
    "builtin_profiles",
    "compile_patterns",
    "find_profiles",
    "load_profile_file",
    "load_profiles",
    "profile_dirs",
    "profile_from_mapping",
    "secret_values",
]
