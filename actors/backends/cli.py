"""The CLI backend: one backend actor kind for every command-line instrument.

Owns running one request on a CLI instrument described by its profile
(``runtime.instruments``): the command line (prompt by flag, positional or on
stdin, model, output format, extra flags), the environment (only the base
allow-list, the profile's ``required_env``, explicitly passed variables and
the ``ENSEMBLE_*`` variables describing the sheet), the workspace as working
directory, the process in its own session (SIGTERM to the group on timeout or
cancel, SIGKILL after the grace period: ``actors.process.run_process``), and
turning what came back into an ``ExecutionResult`` with
``runtime.instrument_output`` (answer, cost, outcome kind, wait, redacted
output tails). The built-in ``cli`` instrument is the profile that runs
``bash -c PROMPT``. It decides nothing about retries or waits.

``default_backends`` builds a backend spec for every loaded profile, HTTP ones
included (``actors.backends.http``).
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import gevent
import gevent.event
from pykka import ActorRef

from actors.backends.base import BackendSpec, ProfileBackend
from actors.base import ActorContext
from actors.hub import in_pool
from actors.process import ProcessResult, decode_output, run_process, start_spawn_threads
from runtime.instrument_output import (
    OFF_HUB_BYTES,
    RESULT_KEEP_CHARS,
    STDERR_KEEP_CHARS,
    attempt_cost,
    classify,
    output_tail,
    parse_output,
)
from runtime.instruments import (
    BASE_ENVIRONMENT,
    InstrumentProfile,
    build_command,
    build_environment,
    builtin_profiles,
    load_profiles,
    profile_from_mapping,
    secret_values,
)
from runtime.messages import ExecutionRequest
from runtime.outcomes import ExecutionResult, OutcomeKind
from runtime.redaction import redact

__all__ = ["BASE_ENVIRONMENT", "CliBackend", "default_backends"]

_SHELL_PROFILE: dict[str, Any] = {
    "name": "cli",
    "kind": "cli",
    "raw_prompt": True,
    "cli": {"command": {"executable": "bash", "prompt_flag": "-c"}},
}


class CliBackend(ProfileBackend):
    """Spec of a CLI instrument for ``runtime.start(backends=...)``.

    ``CliBackend()`` is the built-in ``cli`` instrument (``bash -c PROMPT``;
    ``shell`` picks another shell). ``CliBackend(profile)`` runs any CLI
    profile. ``pass_env`` names further host variables the tool may see;
    ``extra_env`` sets variables outright. ``auto_approve=False`` leaves out
    the profile's flag that skips the tool's permission prompts.
    """

    def __init__(
        self,
        profile: InstrumentProfile | None = None,
        *,
        shell: str | None = None,
        max_concurrent: int | None = None,
        kill_grace_seconds: float = 5.0,
        extra_env: Mapping[str, str] | None = None,
        pass_env: Sequence[str] = (),
        auto_approve: bool = True,
        max_output_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        if profile is None:
            profile = builtin_profiles().get("cli") or profile_from_mapping(_SHELL_PROFILE)
        if profile.cli is None:
            raise ValueError(
                f"instrument {profile.name!r} is 'kind: {profile.kind}', not a CLI instrument; "
                "use actors.backends.http.HttpBackend"
            )
        if shell is not None:
            command = profile.cli.command.model_copy(update={"executable": shell})
            cli = profile.cli.model_copy(update={"command": command})
            profile = profile.model_copy(update={"cli": cli})
        super().__init__(profile, max_concurrent)
        self.kill_grace_seconds = kill_grace_seconds
        self.extra_env = dict(extra_env or {})
        self.pass_env = tuple(pass_env)
        self.auto_approve = auto_approve
        self.max_output_bytes = max_output_bytes

    def start_actor(self, context: ActorContext, instrument: str) -> ActorRef[Any]:
        start_spawn_threads()
        return super().start_actor(context, instrument)

    def run(self, request: ExecutionRequest, cancel: gevent.event.Event) -> ExecutionResult:
        return run_cli_request(self, request, cancel)


def run_cli_request(
    spec: CliBackend,
    request: ExecutionRequest,
    cancel: gevent.event.Event | None = None,
    *,
    environment: Mapping[str, str] | None = None,
) -> ExecutionResult:
    """Run ``request`` on the spec's instrument from a greenlet; never raises
    for anything the tool does. ``environment`` stands in for the host's."""
    profile = spec.profile
    host = os.environ if environment is None else environment
    command = build_command(
        profile,
        request.prompt,
        model=request.model,
        workspace=request.workspace,
        timeout_seconds=request.timeout_seconds,
        auto_approve=spec.auto_approve,
    )
    env = build_environment(
        profile,
        host,
        pass_env=spec.pass_env,
        extra={
            **spec.extra_env,
            "ENSEMBLE_JOB_ID": request.job_id,
            "ENSEMBLE_SHEET_NUM": str(request.sheet_num),
            "ENSEMBLE_ATTEMPT": str(request.attempt),
            "ENSEMBLE_WORKSPACE": request.workspace,
        },
    )
    run = functools.partial(
        run_process,
        cwd=request.workspace,
        env=env,
        stdin=command.stdin,
        timeout=request.timeout_seconds,
        kill_grace_seconds=spec.kill_grace_seconds,
        cancel=cancel,
        max_output_bytes=spec.max_output_bytes,
    )
    direct = without_shell(command.argv, env.get("PATH", os.defpath))
    process = run(direct)
    if process.spawn_error is not None and direct != list(command.argv):
        # The shell copes where a direct start cannot: a script without "#!",
        # a program moved since its path was remembered. Its words decide.
        process = run(list(command.argv))
    secrets = secret_values(profile, host)
    if len(process.stdout) + len(process.stderr) > OFF_HUB_BYTES:
        return in_pool(interpret_process, profile, request, process, secrets)
    return interpret_process(profile, request, process, secrets)


# Shell syntax: a script with none of these is one plain "program arg..." line.
_SHELL_SYNTAX = frozenset("|&;<>()$`\\\"'*?[]#~=%{}!\n\t")
# Builtins that must run in a shell even where a program of the same name exists.
_SHELL_ONLY = frozenset(
    {
        "alias",
        "bg",
        "break",
        "builtin",
        "caller",
        "cd",
        "command",
        "compgen",
        "complete",
        "continue",
        "declare",
        "dirs",
        "disown",
        "enable",
        "eval",
        "exec",
        "exit",
        "export",
        "fc",
        "fg",
        "getopts",
        "hash",
        "help",
        "history",
        "jobs",
        "let",
        "local",
        "logout",
        "mapfile",
        "popd",
        "pushd",
        "read",
        "readarray",
        "readonly",
        "return",
        "set",
        "shift",
        "shopt",
        "source",
        "suspend",
        "times",
        "trap",
        "type",
        "typeset",
        "ulimit",
        "umask",
        "unalias",
        "unset",
        "wait",
        ".",
        # Builtins or reserved words that also exist as programs, which behave
        # differently ("echo --help", the format of "time").
        "echo",
        "false",
        "kill",
        "printf",
        "pwd",
        "test",
        "time",
        "true",
    }
)
_SHELLS = frozenset({"bash", "sh", "dash"})


def without_shell(argv: Sequence[str], path: str) -> list[str]:
    """``[shell, "-c", script]`` as ``[program, args...]`` when the script is one
    simple command, as make does: starting a shell first cost about a millisecond
    per sheet, most of a fan-out's overhead. Anything else runs as given: shell
    syntax, a builtin, a name with a '/' or a PATH with a relative entry (the
    shell resolves those in the workspace), anything but printable ASCII (the
    shell splits words on spaces and tabs only). If the program then cannot be
    started, run_cli_request runs the script through the shell after all."""
    if len(argv) != 3 or os.path.basename(argv[0]) not in _SHELLS or argv[1] != "-c":
        return list(argv)
    script = argv[2]
    if not (script.isascii() and script.isprintable()) or _SHELL_SYNTAX.intersection(script):
        return list(argv)
    words = [word for word in script.split(" ") if word]
    if not words or "/" in words[0] or words[0] in _SHELL_ONLY:
        return list(argv)
    if any(not os.path.isabs(folder) for folder in path.split(os.pathsep)):
        return list(argv)  # bash searches a relative (or empty: ".") entry in the workspace
    program = _which(words[0], path)
    if program is None:
        return list(argv)  # let the shell say "command not found"
    return [program, *words[1:]]


@functools.lru_cache(maxsize=256)
def _which(name: str, path: str) -> str | None:
    # A PATH search is a stat per folder: remembered, as a shell's hash table does.
    return shutil.which(name, path=path)


def interpret_process(
    profile: InstrumentProfile,
    request: ExecutionRequest,
    process: ProcessResult,
    secrets: Sequence[str] = (),
    now: datetime | None = None,
) -> ExecutionResult:
    """The ``ExecutionResult`` of a finished process, timed as the process ran;
    pure apart from the clock."""
    assert profile.cli is not None
    stdout, stderr = decode_output(process.stdout), decode_output(process.stderr)
    stderr_tail = output_tail(stderr, STDERR_KEEP_CHARS, secrets)
    if process.spawn_error is not None:
        error = process.spawn_error
        if error.startswith("executable not found"):
            error += (
                f"; install it or set 'cli.command.executable' in the {profile.name!r} profile"
                f" (run: ensemble instruments check {profile.name})"
            )
        return ExecutionResult(
            kind=OutcomeKind.FAILURE, duration_seconds=process.duration_seconds, error=error
        )
    if process.cancelled or process.timed_out:
        kind = OutcomeKind.CANCELLED if process.cancelled else OutcomeKind.TIMEOUT
        error = (
            "cancelled"
            if process.cancelled
            else f"timed out after {request.timeout_seconds:g} s; the process group was killed"
        )
        return ExecutionResult(
            kind=kind,
            duration_seconds=process.duration_seconds,
            exit_code=process.exit_code,
            stdout=output_tail(stdout, RESULT_KEEP_CHARS, secrets),
            stderr=stderr_tail,
            error=error,
        )
    if process.wait_error is not None:
        return ExecutionResult(
            kind=OutcomeKind.FAILURE,
            duration_seconds=process.duration_seconds,
            stdout=output_tail(stdout, RESULT_KEEP_CHARS, secrets),
            stderr=stderr_tail,
            error=process.wait_error,
        )
    parsed = parse_output(profile.cli.output, stdout)
    verdict = classify(
        profile.cli.errors,
        exit_code=process.exit_code,
        stdout=stdout,
        stderr=stderr,
        parsed=parsed,
        output_format=profile.cli.output.format,
        # The tool prints a reset time without a zone in this machine's local time.
        now=now if now is not None else datetime.now().astimezone(),
        secrets=secrets,
    )
    answer = parsed.result if parsed.structured else stdout
    return ExecutionResult(
        kind=verdict.kind,
        duration_seconds=process.duration_seconds,
        exit_code=process.exit_code,
        stdout=output_tail(answer, RESULT_KEEP_CHARS, secrets),
        stderr=stderr_tail,
        cost=attempt_cost(profile, request.model, parsed),
        wait_seconds=verdict.wait_seconds,
        error=redact(verdict.error, secrets) if verdict.error is not None else None,
    )


def default_backends(
    profiles: Mapping[str, InstrumentProfile] | None = None,
) -> dict[str, BackendSpec]:
    """A backend spec per profile (loaded from the usual folders when None):
    ``CliBackend`` for ``kind: cli``, ``HttpBackend`` for ``kind: http``."""
    from actors.backends.http import HttpBackend

    if profiles is None:
        profiles = load_profiles()
    specs: dict[str, BackendSpec] = {}
    for name, profile in profiles.items():
        specs[name] = HttpBackend(profile) if profile.kind == "http" else CliBackend(profile)
    return specs
