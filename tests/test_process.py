"""Tests for actors.process: real child processes, hubs in dedicated threads.

Each test runs `run_process` the way the runtime does: in a gevent hub that lives
in its own OS thread (see DESIGN.md, "gevent and the host"), except the one test
that checks the main-thread hub too. Nothing here sleeps to wait for something;
the tests wait on results, pidfds and FIFOs, always with a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import gevent
import gevent.event
import gevent.socket
import pytest
from support import assert_group_gone, in_hub_thread, live_members

from actors import posix_spawn, process
from actors.process import ProcessResult, decode_output, run_process

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="uses /proc and pidfds to check process groups"
)


PY = sys.executable
RESULT_TIMEOUT = 20.0


@pytest.fixture(autouse=True, params=["posix_spawn", "popen"])
def start_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with both ways of starting a child: libc's posix_spawn
    (actors.posix_spawn) and Popen, which is used where that is unavailable."""
    if request.param == "popen":
        monkeypatch.setattr(posix_spawn, "available", lambda: False)
    elif not posix_spawn.available():
        pytest.skip("this libc has no posix_spawn with chdir and closefrom (glibc < 2.34)")
    return str(request.param)


def open_pipes_and_pidfds() -> set[tuple[int, str]]:
    """This process's open pipe and pidfd descriptors, with what they point at."""
    found = set()
    for entry in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{entry}")
        except FileNotFoundError:
            continue  # The descriptor listdir itself used, now closed.
        if target.startswith("pipe:") or "pidfd" in target:
            found.add((int(entry), target))
    return found


def run(argv: list[str], **kwargs: object) -> ProcessResult:
    """run_process(argv, **kwargs) in a dedicated hub thread."""
    return in_hub_thread(lambda: run_process(argv, **kwargs))  # type: ignore[arg-type]


def assert_reaped(pid: int) -> None:
    """The child is no zombie of ours: it was waited for."""
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


# --- plain runs ---------------------------------------------------------------


def test_stdout_stderr_and_exit_code() -> None:
    result = run(["bash", "-c", "echo out; echo err >&2; exit 3"])

    assert result.exit_code == 3
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert not (result.timed_out or result.cancelled)
    assert not (result.stdout_truncated or result.stderr_truncated)
    assert result.spawn_error is None and result.wait_error is None


def test_the_child_is_started_the_chosen_way(start_path: str) -> None:
    child = process._popen(["true"], None, None, False)
    try:
        assert (child.popen is None) == (start_path == "posix_spawn")
        assert os.waitpid(child.pid, 0)[1] == 0
    finally:
        child.set_exit_code(0)
        child.close_pipes()


@pytest.mark.parametrize("code", [0, 1, 255])
def test_exit_codes(code: int) -> None:
    assert run(["bash", "-c", f"exit {code}"]).exit_code == code


def test_death_by_signal_is_a_negative_exit_code() -> None:
    assert run(["bash", "-c", "kill -USR1 $$"]).exit_code == -signal.SIGUSR1


def test_cwd_and_env_are_used(tmp_path: Path) -> None:
    result = run(
        ["bash", "-c", 'pwd; echo "$ENSEMBLE_TEST"'],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "ENSEMBLE_TEST": "yes"},
    )

    assert result.stdout == f"{tmp_path}\nyes\n".encode()


def test_on_start_receives_the_pid_which_is_reaped_afterwards() -> None:
    pids: list[int] = []

    result = run(["true"], on_start=pids.append)

    assert result.exit_code == 0
    assert len(pids) == 1
    assert_reaped(pids[0])


# --- stdin --------------------------------------------------------------------


def test_stdin_is_fed_to_cat() -> None:
    assert run(["cat"], stdin=b"hello\nworld\n").stdout == b"hello\nworld\n"


def test_large_stdin_flows_through_cat_while_output_drains() -> None:
    # Far more than a pipe holds: writing and draining must interleave.
    data = bytes(range(256)) * 20_000  # ~5 MB

    result = run(["cat"], stdin=data)

    assert result.exit_code == 0
    assert result.stdout == data


def test_without_stdin_the_child_reads_eof() -> None:
    result = run(["cat"])

    assert result.exit_code == 0
    assert result.stdout == b""


def test_child_that_ignores_stdin_does_not_break_the_writer() -> None:
    result = run(["true"], stdin=b"x" * (4 * 1024 * 1024))

    assert result.exit_code == 0
    assert result.spawn_error is None


# --- spawn errors -------------------------------------------------------------


def test_missing_executable() -> None:
    result = run(["ensemble-no-such-executable", "--version"])

    assert result.exit_code is None
    assert result.spawn_error == "executable not found: ensemble-no-such-executable"
    assert result.stdout == b"" and result.stderr == b""


def test_missing_cwd(tmp_path: Path) -> None:
    missing = tmp_path / "nope"

    result = run(["true"], cwd=missing)

    assert result.exit_code is None
    assert result.spawn_error == f"working directory not found: {missing}"


def test_cwd_that_is_a_file(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")

    result = run(["true"], cwd=a_file)

    assert result.exit_code is None
    assert result.spawn_error == f"working directory is not a directory: {a_file}"


@pytest.mark.parametrize(
    ("argv", "env", "error"),
    [
        (["echo", "keep\0dropped"], None, "embedded null byte"),
        (["echo", "x"], {"PATH": os.defpath, "A=B": "c"}, "illegal environment variable name"),
        (["echo", "\ud83d"], None, "surrogates not allowed"),
    ],
    ids=["nul-in-argument", "equals-in-name", "unencodable"],
)
def test_what_no_process_can_be_given_is_a_spawn_error_not_a_shortened_command(
    argv: list[str], env: dict[str, str] | None, error: str
) -> None:
    """Both ways of starting refuse it in Popen's words, at once; nothing runs
    with an argument cut at the NUL, and the caller is never left waiting."""
    result = run(argv, env=env, timeout=RESULT_TIMEOUT)

    assert result.exit_code is None and result.stdout == b""
    assert result.spawn_error is not None
    assert result.spawn_error.startswith("could not start echo: ") and error in result.spawn_error


def test_executable_without_permission(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)

    result = run([str(script)])

    assert result.exit_code is None
    assert result.spawn_error == f"permission denied, cannot execute: {script}"


def test_empty_argv_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="argv"):
        run([])


# --- output -------------------------------------------------------------------


def test_flood_on_both_streams_keeps_the_tail() -> None:
    # 50 MiB on each stream, interleaved: a child blocks on whichever pipe is
    # full, so both must be drained at once. Chunk i is made of letter i % 26.
    mib = 1024 * 1024
    script = textwrap.dedent(
        """
        import sys
        out, err = sys.stdout.buffer, sys.stderr.buffer
        for i in range(50):
            chunk = bytes([65 + i % 26]) * (1024 * 1024)
            out.write(chunk)
            err.write(chunk)
        out.write(b"END-OUT")
        err.write(b"END-ERR")
        """
    )
    limit = mib + mib // 2  # the tail spans the last two chunks

    result = run([PY, "-c", script], max_output_bytes=limit)

    def expected_tail(marker: bytes) -> bytes:
        chunk_48, chunk_49 = bytes([65 + 48 % 26]) * mib, bytes([65 + 49 % 26]) * mib
        return (chunk_48 + chunk_49 + marker)[-limit:]

    assert result.exit_code == 0
    assert result.stdout_truncated and result.stderr_truncated
    assert len(result.stdout) == len(result.stderr) == limit
    assert result.stdout == expected_tail(b"END-OUT")
    assert result.stderr == expected_tail(b"END-ERR")


@pytest.mark.parametrize(
    ("limit", "expected", "truncated"),
    [(4, b"6789", True), (10, b"0123456789", False), (11, b"0123456789", False), (0, b"", True)],
)
def test_output_limit(limit: int, expected: bytes, truncated: bool) -> None:
    result = run(["printf", "0123456789"], max_output_bytes=limit)

    assert result.stdout == expected
    assert result.stdout_truncated is truncated
    assert not result.stderr_truncated


def test_invalid_utf8_comes_back_intact() -> None:
    raw = b"ok \xff\xfe\x80 \xc3\x28 end"
    script = f"import sys; sys.stdout.buffer.write({raw!r}); sys.stderr.buffer.write({raw!r})"

    result = run([PY, "-c", script])

    assert result.stdout == raw
    assert result.stderr == raw
    assert decode_output(raw) == "ok \ufffd\ufffd\ufffd \ufffd( end"


# --- timeout, cancel, kill ----------------------------------------------------


def test_timeout_kills_the_whole_group() -> None:
    pids: list[int] = []

    result = run(
        ["bash", "-c", "sleep 100 & sleep 100 & wait"],
        timeout=0.3,
        on_start=pids.append,
    )

    assert result.timed_out
    assert not result.cancelled
    assert result.exit_code == -signal.SIGTERM
    assert_reaped(pids[0])
    assert_group_gone(pids[0])


def test_sigterm_ignored_escalates_to_sigkill() -> None:
    pids: list[int] = []

    result = run(
        ["bash", "-c", 'trap "" TERM; sleep 100 & sleep 100'],
        timeout=0.2,
        kill_grace_seconds=0.2,
        on_start=pids.append,
    )

    assert result.timed_out
    assert result.exit_code == -signal.SIGKILL
    assert_reaped(pids[0])
    assert_group_gone(pids[0])


def test_cancel_stops_the_process() -> None:
    pids: list[int] = []

    def scenario() -> ProcessResult:
        cancel = gevent.event.Event()

        def started(pid: int) -> None:
            pids.append(pid)
            # Set from another greenlet once run_process is waiting.
            gevent.spawn(cancel.set)

        # A grace far above the test's result timeout: only SIGTERM working
        # lets this finish in time.
        return run_process(["sleep", "100"], cancel=cancel, kill_grace_seconds=60, on_start=started)

    result = in_hub_thread(scenario)

    assert result.cancelled
    assert not result.timed_out
    assert result.exit_code == -signal.SIGTERM
    assert_reaped(pids[0])
    assert_group_gone(pids[0])


def test_cancel_set_before_start() -> None:
    def scenario() -> ProcessResult:
        cancel = gevent.event.Event()
        cancel.set()
        return run_process(["sleep", "100"], cancel=cancel, timeout=60)

    result = in_hub_thread(scenario)

    assert result.cancelled
    assert result.exit_code == -signal.SIGTERM


def test_background_child_does_not_outlive_a_normal_exit() -> None:
    pids: list[int] = []

    # The leader exits at once; the background sleep holds stdout open.
    result = run(["bash", "-c", "sleep 100 & echo started"], on_start=pids.append)

    assert result.exit_code == 0
    assert result.stdout == b"started\n"
    assert not result.timed_out
    assert_group_gone(pids[0])


def test_killing_the_caller_kills_the_group(tmp_path: Path) -> None:
    fifo = tmp_path / "ready"
    os.mkfifo(fifo)
    pids: list[int] = []

    def scenario() -> tuple[BaseException | None, int]:
        # Opening the read end non-blocking succeeds without a writer; it
        # turns readable once bash has started the background sleep.
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            caller = gevent.spawn(
                run_process,
                ["bash", "-c", f"sleep 100 & echo $! > {fifo}; wait"],
                on_start=pids.append,
            )
            gevent.socket.wait_read(fd, timeout=10)
            grandchild = int(os.read(fd, 100))
        finally:
            os.close(fd)
        caller.kill(timeout=10)
        return caller.value, grandchild

    value, grandchild = in_hub_thread(scenario)

    assert isinstance(value, gevent.GreenletExit)
    assert_reaped(pids[0])
    assert_group_gone(pids[0])
    assert grandchild not in live_members(pids[0])


def test_killing_the_caller_while_the_child_is_starting_kills_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Children start in spawn threads; the caller may be killed while the
    # thread is still inside Popen. The child it then starts must not survive.
    entered_read, entered_write = os.pipe()
    release = threading.Event()
    killed = threading.Event()
    started: list[process._Child] = []
    real_popen, real_kill = process._popen, process._kill_abandoned

    def slow_popen(*args: object) -> process._Child:
        os.write(entered_write, b"x")
        release.wait(RESULT_TIMEOUT)
        proc = real_popen(*args)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    def traced_kill(proc: process._Child, pidfd: int | None) -> None:
        try:
            real_kill(proc, pidfd)
        finally:
            killed.set()

    monkeypatch.setattr(process, "_popen", slow_popen)
    monkeypatch.setattr(process, "_kill_abandoned", traced_kill)

    fds_before = open_pipes_and_pidfds()

    def scenario() -> BaseException | None:
        caller = gevent.spawn(run_process, ["bash", "-c", "sleep 100 & wait"])
        gevent.socket.wait_read(entered_read, timeout=10)
        caller.kill(timeout=10)
        outcome: BaseException | None = caller.value
        return outcome

    try:
        # The hub is gone when the child starts: the spawn thread cleans up alone.
        value = in_hub_thread(scenario)
        release.set()
        assert killed.wait(RESULT_TIMEOUT)
        # The spawn thread closed the orphan's pipes and pidfd too.
        assert open_pipes_and_pidfds() == fds_before
    finally:
        release.set()
        os.close(entered_read)
        os.close(entered_write)

    assert isinstance(value, gevent.GreenletExit)
    assert len(started) == 1
    assert_reaped(started[0].pid)
    assert_group_gone(started[0].pid)


# --- hubs and concurrency -----------------------------------------------------


def test_works_in_a_main_thread_hub() -> None:
    result = gevent.spawn(run_process, ["bash", "-c", "echo main"], timeout=10).get(timeout=10)

    assert result.exit_code == 0
    assert result.stdout == b"main\n"


def test_two_processes_run_concurrently_in_one_hub(tmp_path: Path) -> None:
    # Opening a FIFO blocks until the other end is opened too: the writer can
    # only finish while the reader runs, so one after the other would time out.
    fifo = tmp_path / "rendezvous"
    os.mkfifo(fifo)

    def scenario() -> list[ProcessResult]:
        greenlets = [
            gevent.spawn(run_process, ["bash", "-c", f"echo hello > {fifo}"], timeout=10),
            gevent.spawn(run_process, ["cat", str(fifo)], timeout=10),
        ]
        gevent.joinall(greenlets, raise_error=True)
        return [g.value for g in greenlets]

    writer, reader = in_hub_thread(scenario)

    assert not (writer.timed_out or reader.timed_out)
    assert writer.exit_code == reader.exit_code == 0
    assert reader.stdout == b"hello\n"


def test_no_pipe_or_pidfd_outlives_a_run(tmp_path: Path) -> None:
    # Normal exit, stdin fed, timeout, cancel, spawn error and a killed caller:
    # each must close the pipes and the pidfd it opened.
    fds_before = open_pipes_and_pidfds()

    def scenario() -> None:
        assert run_process(["true"]).exit_code == 0
        assert run_process(["cat"], stdin=b"data").stdout == b"data"
        assert run_process(["sleep", "100"], timeout=0.05, kill_grace_seconds=0).timed_out
        cancel = gevent.event.Event()
        cancel.set()
        assert run_process(["sleep", "100"], cancel=cancel).cancelled
        assert run_process(["true"], cwd=tmp_path / "missing").spawn_error is not None
        started = gevent.event.Event()
        caller = gevent.spawn(run_process, ["sleep", "100"], on_start=lambda pid: started.set())
        assert started.wait(RESULT_TIMEOUT)
        caller.kill(timeout=RESULT_TIMEOUT)
        assert caller.dead

    in_hub_thread(scenario)

    assert open_pipes_and_pidfds() == fds_before


def test_without_pidfd_exit_is_polled(monkeypatch: pytest.MonkeyPatch) -> None:
    # Kernels before 5.3 or sandboxes without pidfd_open.
    monkeypatch.setattr(process, "_open_pidfd", lambda pid: None)
    pids: list[int] = []

    assert run(["bash", "-c", "exit 7"]).exit_code == 7
    result = run(["bash", "-c", "sleep 100 & wait"], timeout=0.2, on_start=pids.append)

    assert result.timed_out
    assert_reaped(pids[0])
    assert_group_gone(pids[0])


def test_a_stolen_exit_status_is_never_reported_as_success() -> None:
    # gevent.subprocess on the default loop makes libev reap every child of
    # the process on SIGCHLD; stdlib Popen.wait would then report exit code 0.
    # Run in a fresh interpreter: that SIGCHLD handler cannot be undone.
    script = textwrap.dedent(
        """
        import gevent, gevent.subprocess
        from actors.process import run_process

        def main():
            gevent.subprocess.Popen(["true"]).wait()
            for _ in range(10):
                r = run_process(["bash", "-c", "exit 3"])
                assert r.exit_code == 3 or (r.exit_code is None and r.wait_error), r
            print("ok")

        gevent.spawn(main).get()
        """
    )
    root = Path(__file__).resolve().parent.parent

    done = subprocess.run(
        [PY, "-c", script], cwd=root, capture_output=True, timeout=RESULT_TIMEOUT, check=False
    )

    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout == b"ok\n"
