"""The CLI backend with real processes: a fake agent CLI (tests/fakes/fake_agent.py)
stands in for Claude Code and Aider. Parsing, cost (S24), classification (S12,
S17), timeouts and cancel with the whole process group gone (S13, S26), the
environment allow-list, floods and invalid UTF-8."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import gevent
import gevent.event
import gevent.socket
import pytest
from support import WAIT_SECONDS, RuntimeFactory, ScoreFactory, in_hub_thread, wait_for_exit

import runtime
from actors.backends.cli import CliBackend, default_backends, interpret_process, run_cli_request
from actors.backends.http import HttpBackend
from actors.process import ProcessResult
from runtime.instrument_output import RESULT_KEEP_CHARS
from runtime.instruments import (
    InstrumentProfile,
    builtin_profiles,
    load_profile_file,
    profile_from_mapping,
)
from runtime.messages import ExecutionRequest
from runtime.outcomes import ExecutionResult
from runtime.outcomes import OutcomeKind as K

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc to check process groups"
)

FAKE_AGENT = Path(__file__).resolve().parent / "fakes" / "fake_agent.py"
T = TypeVar("T")


def fake_profile(base: str = "claude-code", **top: Any) -> InstrumentProfile:
    """A built-in profile that runs the fake agent.

    Through this interpreter rather than the script's `#!/usr/bin/env python3`:
    a version manager's shim on PATH would add its own variables to the
    environment (and a shell's start-up time to every run).
    """
    data = builtin_profiles()[base].model_dump()
    data["cli"]["command"]["executable"] = sys.executable
    data["cli"]["command"]["subcommand"] = str(FAKE_AGENT)
    data["name"] = f"fake-{base}"
    data.update(top)
    return profile_from_mapping(data)


def request(
    prompt: str, workspace: Path, *, timeout: float = 30.0, model: str | None = None
) -> ExecutionRequest:
    return ExecutionRequest(
        request_id="job/1/1",
        job_id="job",
        sheet_num=1,
        attempt=1,
        instrument="fake",
        prompt=prompt,
        workspace=str(workspace),
        timeout_seconds=timeout,
        model=model,
    )


def run(spec: CliBackend, req: ExecutionRequest, **kwargs: Any) -> ExecutionResult:
    return in_hub_thread(lambda: run_cli_request(spec, req, **kwargs))


def host_environment(**extra: str) -> dict[str, str]:
    # LANG keeps Python in the fake from adding LC_CTYPE on its own (PEP 538).
    return {"PATH": os.environ["PATH"], "HOME": str(Path.home()), "LANG": "C.UTF-8", **extra}


def alive(pid: int) -> bool:
    """Running, not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def assert_gone(pids: list[int], timeout: float = 5.0) -> None:
    """Every process exits within ``timeout``: a process that was just sent
    SIGKILL may still be running its exit; its pidfd turns readable once done."""
    for pid in pids:
        wait_for_exit(pid, timeout, f"process {pid}")
        assert not alive(pid)


def run_until_started(
    spec: CliBackend, workspace: Path, mode: str, *, timeout: float, cancel_when_started: bool
) -> tuple[ExecutionResult, list[int]]:
    """Run the fake in ``mode`` (hang or stubborn); return the result and the pids
    of the tool and its child, read from a FIFO the fake writes once both run."""
    fifo = workspace / "pids"
    os.mkfifo(fifo)

    def scenario() -> tuple[ExecutionResult, list[int]]:
        cancel = gevent.event.Event()
        # Non-blocking open of the read end succeeds with no writer yet.
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            runner = gevent.spawn(
                run_cli_request, spec, request(f"{mode} {fifo}", workspace, timeout=timeout), cancel
            )
            gevent.socket.wait_read(fd, timeout=WAIT_SECONDS)
            pids = [int(pid) for pid in os.read(fd, 100).split()]
        finally:
            os.close(fd)
        if cancel_when_started:
            cancel.set()
        return runner.get(timeout=WAIT_SECONDS), pids

    return in_hub_thread(scenario)


# --- answers, cost, classification ---------------------------------------------------------


def test_S24_claude_style_json_gives_the_answer_and_cost_from_tokens(tmp_path: Path) -> None:
    spec = CliBackend(fake_profile())

    result = run(spec, request("answer hello there", tmp_path, model="claude-sonnet-4-5"))

    assert result.kind is K.SUCCESS
    assert result.exit_code == 0
    assert result.stdout == "hello there"
    # 1200 input and 300 output tokens at 0.003 / 0.015 USD per 1000.
    assert result.cost == pytest.approx(1.2 * 0.003 + 0.3 * 0.015)


def test_S24_cost_reported_by_the_tool_wins(tmp_path: Path) -> None:
    result = run(CliBackend(fake_profile()), request("cost x", tmp_path, model="claude-opus-4-1"))

    assert result.cost == pytest.approx(0.25)


def test_S24_default_model_prices_apply_when_the_sheet_names_no_model(tmp_path: Path) -> None:
    spec = CliBackend(fake_profile(default_model="claude-haiku-4-5"))

    result = run(spec, request("answer a", tmp_path))

    assert result.cost == pytest.approx(1.2 * 0.001 + 0.3 * 0.005)


def test_the_prompt_goes_on_stdin_and_the_model_as_a_flag(tmp_path: Path) -> None:
    result = run(CliBackend(fake_profile()), request("argv", tmp_path, model="claude-haiku-4-5"))

    argv = json.loads(result.stdout)
    assert argv == [
        "--model",
        "claude-haiku-4-5",
        "--dangerously-skip-permissions",
        "--output-format",
        "json",
        "-p",
    ]


def test_S17_rate_limit_printed_on_stdout_with_exit_0(tmp_path: Path) -> None:
    result = run(CliBackend(fake_profile()), request("ratelimit-ok", tmp_path))

    assert result.kind is K.RATE_LIMITED
    assert result.exit_code == 0
    assert result.wait_seconds == 300
    assert result.error is not None and "Rate limit reached" in result.error


def test_S17_rate_limit_printed_on_stdout_with_exit_1_waits_for_the_reset(
    tmp_path: Path,
) -> None:
    before = datetime.now(UTC)
    result = run(CliBackend(fake_profile()), request("ratelimit-fail", tmp_path))
    after = datetime.now(UTC)

    assert result.kind is K.RATE_LIMITED
    assert result.exit_code == 1
    assert result.wait_seconds is not None
    # The wait was measured from a moment between `before` and `after`, so
    # from `before` it lands on 17:00 Paris time or up to the run's length
    # earlier (the same day's 17:00 either way: no midnight to straddle).
    landed = (before + timedelta(seconds=result.wait_seconds)).astimezone(ZoneInfo("Europe/Paris"))
    early = (landed.replace(hour=17, minute=0, second=0, microsecond=0) - landed).total_seconds()
    assert -1 <= early <= (after - before).total_seconds() + 1


def test_S12_auth_failure(tmp_path: Path) -> None:
    result = run(CliBackend(fake_profile()), request("auth", tmp_path))

    assert result.kind is K.AUTH_FAILED
    assert result.error is not None and "Invalid API key" in result.error
    assert "Please run /login" in result.stderr


def test_overload_is_a_short_rate_limit(tmp_path: Path) -> None:
    result = run(CliBackend(fake_profile()), request("overloaded", tmp_path))

    assert result.kind is K.RATE_LIMITED
    assert result.wait_seconds == 60


def test_is_error_with_exit_0_is_a_failure(tmp_path: Path) -> None:
    result = run(CliBackend(fake_profile()), request("is-error", tmp_path))

    assert result.kind is K.FAILURE
    assert result.error == "exit code 0: the tool gave up"


def test_text_tool_answer_is_its_stdout(tmp_path: Path) -> None:
    result = run(CliBackend(fake_profile("aider")), request("answer plain words", tmp_path))

    assert result.kind is K.SUCCESS
    assert result.stdout == "plain words\n"
    assert result.cost == 0.0


def test_missing_executable_says_how_to_fix_it(tmp_path: Path) -> None:
    profile = profile_from_mapping(
        {"name": "ghost", "cli": {"command": {"executable": "ensemble-no-such-tool"}}}
    )

    result = run(CliBackend(profile), request("hi", tmp_path))

    assert result.kind is K.FAILURE
    assert result.error is not None
    assert result.error.startswith("executable not found: ensemble-no-such-tool")
    assert "ensemble instruments check ghost" in result.error


MARIANNE_CLAUDE = (
    Path(__file__).parents[1].parent / "shared" / "marianne" / "instruments" / "claude-code.yaml"
)


@pytest.mark.skipif(not MARIANNE_CLAUDE.exists(), reason="../shared/marianne is not here")
@pytest.mark.parametrize(
    ("prompt", "kind"),
    [("answer ok", K.SUCCESS), ("ratelimit-ok", K.RATE_LIMITED), ("auth", K.AUTH_FAILED)],
)
def test_S17_marianne_claude_profile_runs_unchanged_but_for_its_executable(
    tmp_path: Path, prompt: str, kind: K
) -> None:
    data = load_profile_file(MARIANNE_CLAUDE).model_dump()
    data["cli"]["command"]["executable"] = sys.executable
    data["cli"]["command"]["subcommand"] = str(FAKE_AGENT)
    spec = CliBackend(profile_from_mapping(data))

    result = run(spec, request(prompt, tmp_path, model="claude-sonnet-4-6"))

    assert result.kind is kind
    if kind is K.SUCCESS:
        assert result.cost == pytest.approx(1.2 * 0.003 + 0.3 * 0.015)


# --- environment -------------------------------------------------------------------------


def test_only_allow_listed_variables_reach_the_tool_and_keys_are_redacted(
    tmp_path: Path,
) -> None:
    key = "sk-ant-api03-" + "k" * 40
    host = host_environment(
        ANTHROPIC_API_KEY=key,
        OPENAI_API_KEY="sk-openai-must-not-leak-0123456789",
        DATABASE_PASSWORD="hunter2hunter2",
        PYTHONPATH="/somewhere",
        EXTRA_ALLOWED="yes",
    )
    spec = CliBackend(fake_profile(), pass_env=["EXTRA_ALLOWED"], extra_env={"SET_BY_HOST": "1"})

    result = run(spec, request("env", tmp_path), environment=host)

    environment = json.loads(result.stdout)
    assert set(environment) == {
        "PATH",
        "HOME",
        "LANG",
        "ANTHROPIC_API_KEY",
        "EXTRA_ALLOWED",
        "SET_BY_HOST",
        "ENSEMBLE_JOB_ID",
        "ENSEMBLE_SHEET_NUM",
        "ENSEMBLE_ATTEMPT",
        "ENSEMBLE_WORKSPACE",
    }
    # The tool got the key; what Ensemble keeps of its output does not show it.
    assert environment["ANTHROPIC_API_KEY"] == "[REDACTED]"
    assert key not in result.stdout
    assert environment["ENSEMBLE_WORKSPACE"] == str(tmp_path)


def test_the_builtin_cli_instrument_runs_bash_c_in_the_workspace(tmp_path: Path) -> None:
    spec = CliBackend()

    result = run(
        spec, request('echo "$ENSEMBLE_SHEET_NUM $(pwd)"; echo oops >&2; exit 4', tmp_path)
    )

    assert result.kind is K.FAILURE
    assert result.exit_code == 4
    assert result.stdout == f"1 {tmp_path}\n"
    assert result.error == "exit code 4: oops"


def test_another_shell_for_the_cli_instrument(tmp_path: Path) -> None:
    result = run(CliBackend(shell="sh"), request("echo $0", tmp_path))

    assert (result.kind, result.stdout) == (K.SUCCESS, "sh\n")


# --- output volume and encoding ------------------------------------------------------------


def test_a_50_mib_flood_is_drained_and_only_the_tail_kept(tmp_path: Path) -> None:
    result = run(CliBackend(fake_profile("aider")), request("flood 50", tmp_path))

    assert result.kind is K.SUCCESS
    assert result.stdout.endswith("x\nEND\n")
    assert len(result.stdout) == RESULT_KEEP_CHARS


def test_invalid_utf8_is_replaced_not_fatal(tmp_path: Path) -> None:
    result = run(CliBackend(fake_profile("aider")), request("badutf8", tmp_path))

    assert result.kind is K.SUCCESS
    assert result.stdout == "ok \ufffd\ufffd\ufffd \ufffd( end\n"
    assert result.stderr == "warn \ufffd\n"


@pytest.mark.parametrize(
    ("exit_code", "timed_out", "spawn_error", "kind"),
    [
        (0, False, None, K.SUCCESS),
        (1, False, None, K.FAILURE),
        (None, True, None, K.TIMEOUT),
        (None, False, "executable not found: claude", K.FAILURE),
    ],
    ids=["success", "failure", "timeout", "spawn-error"],
)
def test_an_attempt_lasts_as_long_as_its_process_ran(
    tmp_path: Path, exit_code: int | None, timed_out: bool, spawn_error: str | None, kind: K
) -> None:
    process = ProcessResult(
        exit_code=exit_code,
        stdout=b"",
        stderr=b"",
        timed_out=timed_out,
        cancelled=False,
        duration_seconds=12.5,
        stdout_truncated=False,
        stderr_truncated=False,
        spawn_error=spawn_error,
    )
    result = interpret_process(fake_profile(), request("x", tmp_path), process)
    assert (result.kind, result.duration_seconds) == (kind, 12.5)


# --- timeout and cancel (S13, S26) ---------------------------------------------------------


def test_S13_a_hung_tool_and_its_child_are_gone_after_the_timeout(tmp_path: Path) -> None:
    result, pids = run_until_started(
        CliBackend(fake_profile()), tmp_path, "hang", timeout=2.0, cancel_when_started=False
    )

    assert result.kind is K.TIMEOUT
    assert result.error == "timed out after 2 s; the process group was killed"
    assert len(pids) == 2
    assert_gone(pids)


def test_S13_sigterm_ignored_the_group_is_killed_after_the_grace(tmp_path: Path) -> None:
    spec = CliBackend(fake_profile(), kill_grace_seconds=0.2)

    result, pids = run_until_started(
        spec, tmp_path, "stubborn", timeout=60.0, cancel_when_started=True
    )

    assert result.kind is K.CANCELLED
    assert result.exit_code == -9
    assert_gone(pids)


def test_S26_cancel_stops_the_tool_and_its_child(tmp_path: Path) -> None:
    result, pids = run_until_started(
        CliBackend(fake_profile()), tmp_path, "hang", timeout=60.0, cancel_when_started=True
    )

    assert result.kind is K.CANCELLED
    assert_gone(pids)


# --- specs and the runtime -----------------------------------------------------------------


def test_default_backends_has_a_spec_per_profile() -> None:
    profiles = builtin_profiles()

    specs = default_backends(profiles)

    assert specs.keys() == profiles.keys()
    assert isinstance(specs["claude-code"], CliBackend)
    assert isinstance(specs["ollama"], HttpBackend)
    assert specs["ollama"].max_concurrent == 4
    assert specs["cli"].max_concurrent is None
    claude = fake_profile(models=[{"name": "m", "max_concurrent": 3}])
    assert CliBackend(claude).model_limits == {"m": 3}


def test_a_cli_spec_refuses_an_http_profile() -> None:
    with pytest.raises(ValueError, match="not a CLI instrument"):
        CliBackend(builtin_profiles()["ollama"])


def test_S24_a_job_on_a_profile_instrument_completes_with_its_cost(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    profile = fake_profile(default_model="claude-sonnet-4-5")
    rt = rt_factory({"fake-claude": CliBackend(profile)})
    score = make_score(
        instrument="fake-claude", sheets=2, independent=True, template="answer {{ sheet_num }}"
    )

    result = rt.submit(score).wait(WAIT_SECONDS)

    assert result.status is runtime.JobStatus.COMPLETED
    assert result.cost == pytest.approx(2 * (1.2 * 0.003 + 0.3 * 0.015))


def test_S12_a_job_whose_tool_fails_auth_fails_without_retrying(
    rt_factory: RuntimeFactory, make_score: ScoreFactory
) -> None:
    rt = rt_factory({"fake-claude": CliBackend(fake_profile())})
    score = make_score(instrument="fake-claude", sheets=1, template="auth", max_retries=3)

    result = rt.submit(score).wait(WAIT_SECONDS)

    assert result.status is runtime.JobStatus.FAILED
    sheet = result.sheets[1]
    assert sheet.attempts == 1
    assert sheet.error_kind == "auth_failed"


@pytest.mark.parametrize("case", ["no-shebang", "moved-since-looked-up"])
def test_a_program_that_cannot_be_started_directly_runs_through_the_shell(
    tmp_path: Path, case: str
) -> None:
    """A script without '#!' (bash runs it as a shell script; exec refuses it),
    or a program that left its folder after its path was remembered: the cli
    instrument falls back to bash, which behaves as it always would."""
    bin_dir, elsewhere = tmp_path / "bin", tmp_path / "elsewhere"
    bin_dir.mkdir()
    elsewhere.mkdir()
    tool = bin_dir / f"ensemble-test-tool-{case}"
    body = 'echo "ran $1"\n'
    tool.write_text(body if case == "no-shebang" else "#!/bin/sh\n" + body)
    tool.chmod(0o755)
    # The same PATH throughout: the remembered path is looked up under it.
    environment = host_environment(PATH=f"{bin_dir}:{elsewhere}:{os.environ['PATH']}")
    spec = CliBackend(builtin_profiles()["cli"])
    if case == "moved-since-looked-up":
        req = request(f"{tool.name} first", tmp_path)
        assert run(spec, req, environment=environment).stdout == "ran first\n"
        tool.rename(elsewhere / tool.name)

    result = run(spec, request(f"{tool.name} x", tmp_path), environment=environment)

    assert (result.kind, result.stdout) == (K.SUCCESS, "ran x\n")


def test_a_simple_command_runs_without_a_shell_and_anything_else_under_bash() -> None:
    """The cli instrument skips bash for one plain command (as make does); shell
    syntax, builtins and unknown programs still go to bash, so behaviour is the same."""
    from actors.backends.cli import without_shell

    path = os.environ.get("PATH", os.defpath)
    direct = without_shell(["bash", "-c", "sleep  1"], path)
    assert os.path.basename(direct[0]) == "sleep" and direct[1:] == ["1"]
    for script in (
        "echo hi > out",
        "cd sub",
        "exit 3",
        "A=1 env",
        "echo $HOME",
        "a\nb",
        "no-such-program-here x",
        "echo 'quoted'",
        "",
        "echo --help",  # a builtin that is also a program, which would print its usage
        "time sleep 1",
        "./run.sh",  # resolved by the shell in the workspace, not in our directory
        "sleep\xa01",  # one word for bash
        "sleep 1\r",
    ):
        assert without_shell(["bash", "-c", script], path) == ["bash", "-c", script]
    assert without_shell(["claude", "-p", "sleep 1"], path) == ["claude", "-p", "sleep 1"]
    # bash searches a relative PATH entry (or an empty one: ".") in the workspace.
    for relative in (f"bin:{path}", f"{path}:"):
        assert without_shell(["bash", "-c", "sleep 1"], relative) == ["bash", "-c", "sleep 1"]
