"""Tests for actors.posix_spawn and how actors.process uses it: the child it
starts must be the child Popen(start_new_session=True, close_fds=True) would
start (own session, only fds 0-2, SIGPIPE at its default, exact env and cwd),
and any failure must fall over to Popen, whose error the user then sees."""

from __future__ import annotations

import errno
import os
import signal
import stat
from pathlib import Path

import pytest
from support import in_hub_thread, wait_for_exit

from actors import posix_spawn, process
from actors.process import run_process

pytestmark = pytest.mark.skipif(
    not posix_spawn.available(),
    reason="this libc has no posix_spawn with chdir and closefrom (glibc < 2.34)",
)

WAIT_SECONDS = 20.0


def spawn_and_read(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    """Start argv through posix_spawn with stdout on a pipe; its output once it exited."""
    read_end, write_end = posix_spawn.pipe()
    try:
        pid = posix_spawn.spawn(argv[0], argv, env, cwd, process._devnull(), write_end, write_end)
    finally:
        posix_spawn.close(write_end)
    try:
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
    finally:
        os.close(read_end)
    wait_for_exit(pid, WAIT_SECONDS, argv[0])
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return b"".join(chunks).decode()


def signal_mask(status_text: str, field: str) -> int:
    line = next(line for line in status_text.splitlines() if line.startswith(field + ":"))
    return int(line.split()[1], 16)


def test_the_child_has_its_own_session_and_default_signals() -> None:
    # In /proc/self/stat, after the command name: state, ppid, pgrp, session.
    text = spawn_and_read(["/bin/cat", "/proc/self/stat", "/proc/self/status"], {})
    stat_line, status = text.split("\n", 1)
    pid = int(stat_line.split()[0])
    fields = stat_line.rsplit(")", 1)[1].split()
    assert int(fields[2]) == pid  # process group
    assert int(fields[3]) == pid  # session
    sigpipe_bit = 1 << (signal.SIGPIPE - 1)
    assert signal_mask(status, "SigIgn") & sigpipe_bit == 0  # Python ignores it; the child not
    assert signal_mask(status, "SigBlk") == 0


def test_only_the_standard_streams_are_inherited() -> None:
    inheritable = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(inheritable, True)
    try:
        listing = spawn_and_read(["/bin/ls", "/proc/self/fd"], {})
    finally:
        os.close(inheritable)
    # ls itself opens the folder it lists, as the next free descriptor.
    assert set(listing.split()) == {"0", "1", "2", "3"}


def test_environment_and_working_directory_are_exactly_as_given(tmp_path: Path) -> None:
    assert spawn_and_read(["/usr/bin/env"], {"ONLY": "this"}, tmp_path) == "ONLY=this\n"
    assert spawn_and_read(["/bin/pwd"], {}, tmp_path) == f"{tmp_path}\n"


def test_a_failed_start_is_an_oserror_with_the_errno(tmp_path: Path) -> None:
    read_end, write_end = posix_spawn.pipe()
    try:
        with pytest.raises(OSError) as missing_executable:
            posix_spawn.spawn(
                str(tmp_path / "nothing"), ["nothing"], {}, None,
                process._devnull(), write_end, write_end,
            )  # fmt: skip
        with pytest.raises(OSError) as missing_cwd:
            posix_spawn.spawn(
                "/bin/true", ["true"], {}, tmp_path / "gone",
                process._devnull(), write_end, write_end,
            )  # fmt: skip
    finally:
        posix_spawn.close(read_end)
        posix_spawn.close(write_end)
    assert missing_executable.value.errno == errno.ENOENT
    assert missing_cwd.value.errno == errno.ENOENT


def test_pipes_are_not_inherited_and_only_the_read_end_may_be_non_blocking() -> None:
    read_end, write_end = posix_spawn.pipe(nonblocking_read=True)
    try:
        assert not os.get_inheritable(read_end) and not os.get_inheritable(write_end)
        assert not os.get_blocking(read_end)
        assert os.get_blocking(write_end)
    finally:
        posix_spawn.close(read_end)
        posix_spawn.close(write_end)


# --- as actors.process uses it -------------------------------------------------


def write_tool(folder: Path, says: str) -> Path:
    folder.mkdir(exist_ok=True)
    tool = folder / "ensemble-test-tool"
    tool.write_text(f"#!/bin/sh\necho {says}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return tool


def test_a_remembered_executable_that_moved_is_found_again_by_popen(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    env = {"PATH": f"{first}:{second}"}
    write_tool(first, "first")

    def run_tool() -> bytes:
        result = in_hub_thread(lambda: run_process(["ensemble-test-tool"], env=env, timeout=10))
        assert result.exit_code == 0, result
        return result.stdout

    assert run_tool() == b"first\n"
    remembered = process._EXECUTABLES[("ensemble-test-tool", env["PATH"])]
    assert remembered == str(first / "ensemble-test-tool")

    (first / "ensemble-test-tool").unlink()
    write_tool(second, "second")

    assert run_tool() == b"second\n"  # posix_spawn failed on the stale path; Popen searched
    assert ("ensemble-test-tool", env["PATH"]) not in process._EXECUTABLES


def test_errors_are_still_popens_words(tmp_path: Path) -> None:
    missing = in_hub_thread(lambda: run_process(["ensemble-no-such-tool"], timeout=10))
    bad_cwd = in_hub_thread(lambda: run_process(["true"], cwd=tmp_path / "gone", timeout=10))

    assert missing.spawn_error == "executable not found: ensemble-no-such-tool"
    assert bad_cwd.spawn_error == f"working directory not found: {tmp_path / 'gone'}"


def test_a_relative_path_entry_is_left_to_popen() -> None:
    # Popen resolves it from the child's working directory, which a search
    # made here could not do.
    assert process._executable("ensemble-test-tool", "relative/bin") is None
    assert process._executable("./tool", "/usr/bin") == "./tool"
