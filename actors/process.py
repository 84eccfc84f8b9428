"""Run one child process cooperatively under gevent.

This module owns the mechanics of running a single child process from a greenlet,
on whichever thread's hub the caller lives in (Ensemble's dedicated hub thread or
a host's main-thread hub): starting it in its own session and process group,
feeding its stdin, draining stdout and stderr without deadlock and with bounded
memory, waiting for it to exit without blocking the hub, and killing its whole
process group on timeout, cancel or when the calling greenlet is killed, so that
no descendant survives and no zombie is left behind.

It must not decide anything about outcomes: it does not classify errors, retry,
or interpret output; it reports what happened in a `ProcessResult`. It never
monkey-patches and never uses `gevent.subprocess`, whose child watchers only
work on the default loop (``TypeError: child watchers are only available on the
default loop``); instead it starts the child with libc's posix_spawn
(`actors.posix_spawn`) or, where that is unavailable, the stdlib
`subprocess.Popen`, and learns of its exit from a pidfd watched by the hub.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
import gevent.os
from loguru import logger

from actors import posix_spawn

__all__ = ["ProcessResult", "decode_output", "run_process", "start_spawn_threads"]

# A Linux pipe holds 64 KiB by default, so larger reads rarely return more.
_READ_CHUNK_BYTES = 64 * 1024

# After the group has been killed every pipe writer is gone and the drains see
# EOF at once; this only bounds the wait if a descendant escaped the group
# (setsid) and still holds our pipes open.
_DRAIN_GRACE_SECONDS = 2.0

# SIGKILL cannot be caught, so the leader exits promptly; this bound only
# matters for a process stuck in uninterruptible sleep (e.g. a dead NFS mount).
_SIGKILL_WAIT_SECONDS = 5.0

# Threads per hub that start children (see _start_off_the_hub). A start is
# mostly waiting for the child's exec, so more threads than cores overlap
# more of it; measured on 2 cores, 16 start 1000 shells faster than 8 or 4
# and as fast as 64.
_SPAWN_THREADS = 16
# Not a ThreadPoolExecutor: its submit() costs the hub a semaphore and a
# future per start, which shows with hundreds of starts at once.
_SPAWN_JOBS: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
_SPAWNER_LOCK = threading.Lock()
_spawn_threads_running = False

# Used only where pidfd_open is unavailable (non-Linux, kernels before 5.3,
# sandboxes that filter the syscall).
_EXIT_POLL_INTERVAL_SECONDS = 0.05


@dataclass(frozen=True)
class ProcessResult:
    """What happened to one child process; no judgement about success."""

    exit_code: int | None
    """The exit status, negative signal number if killed by a signal (as in
    `subprocess`); None if the process could not be started (see `spawn_error`)
    or its status was lost (see `wait_error`)."""
    stdout: bytes
    """The last `max_output_bytes` bytes written to stdout."""
    stderr: bytes
    """The last `max_output_bytes` bytes written to stderr."""
    timed_out: bool
    cancelled: bool
    duration_seconds: float
    stdout_truncated: bool
    stderr_truncated: bool
    spawn_error: str | None
    """Why the process could not be started, in words a user can act on."""
    wait_error: str | None = None
    """Set when the process ran but its exit status could not be collected:
    something else in this process reaped it (e.g. `gevent.subprocess` used on
    the default loop installs a SIGCHLD handler that reaps every child)."""


def decode_output(data: bytes) -> str:
    """Decode captured output for display; invalid UTF-8 never raises."""
    return data.decode("utf-8", errors="replace")


def run_process(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float | None = None,
    kill_grace_seconds: float = 5.0,
    cancel: gevent.event.Event | None = None,
    max_output_bytes: int = 10 * 1024 * 1024,
    on_start: Callable[[int], None] | None = None,
) -> ProcessResult:
    """Run `argv` to completion, timeout or cancel, without blocking the hub.

    Must be called from a greenlet inside a gevent hub (any thread's). The child
    gets its own session, so its pid is also its process group id; on timeout or
    cancel the group gets SIGTERM, then SIGKILL after `kill_grace_seconds`.
    When the leader has exited, the group gets SIGKILL once more, so no
    background descendant outlives the run (also after a normal exit: it would
    otherwise keep our pipes open). `cancel` must belong to the caller's hub.
    `on_start` receives the child's pid right after it started (for tests and
    logging). If the calling greenlet is killed, the group is killed and the
    child reaped before the GreenletExit propagates.
    """
    if not argv:
        raise ValueError("argv must name an executable")
    if max_output_bytes < 0:
        raise ValueError("max_output_bytes must not be negative")
    kill_grace_seconds = max(0.0, kill_grace_seconds)

    started_at = time.monotonic()
    try:
        proc, pidfd = _start_off_the_hub(argv, cwd, env, with_stdin=stdin is not None)
    except (OSError, ValueError) as exc:
        return ProcessResult(
            exit_code=None,
            stdout=b"",
            stderr=b"",
            timed_out=False,
            cancelled=False,
            duration_seconds=time.monotonic() - started_at,
            stdout_truncated=False,
            stderr_truncated=False,
            spawn_error=_describe_spawn_error(exc, argv[0], cwd),
        )

    pid = proc.pid
    stdout_buffer = _TailBuffer(max_output_bytes)
    stderr_buffer = _TailBuffer(max_output_bytes)
    # Created before anything can fail, so the finally block may rely on them.
    # Hub callbacks, not a greenlet per fd: with hundreds of children starting
    # at once the hub's time is the bottleneck, and a callback costs no
    # greenlet creation or switch.
    loop = gevent.get_hub().loop
    leader_exit = _ExitWatch(loop, pid, pidfd)
    drains = _Drains(loop, [(proc.stdout_fd, stdout_buffer), (proc.stderr_fd, stderr_buffer)])
    feeder: gevent.Greenlet | None = None
    if proc.stdin_fd is not None:
        feeder = gevent.spawn(_feed_stdin, proc, stdin or b"")

    timed_out = False
    cancelled = False
    exit_code: int | None = None
    wait_error: str | None = None
    # `killed`: the final SIGKILL-and-reap step ran; `reaped`: the child's exit
    # status was collected (no zombie left, the pidfd watcher is finished).
    killed = False
    reaped = False
    try:
        if on_start is not None:
            on_start(pid)

        remaining = None if timeout is None else max(0.0, started_at + timeout - time.monotonic())
        _wait_for_exit_or_cancel(leader_exit.exited, cancel, remaining)

        if not leader_exit.exited.is_set():
            # Cancel wins over timeout when both happened: it is the more
            # deliberate of the two.
            if cancel is not None and cancel.is_set():
                cancelled = True
            else:
                timed_out = True
            # Ask politely first so the child can clean up (flush, kill its own
            # children); SIGKILL follows in _kill_group_and_reap.
            _signal_group(pid, signal.SIGTERM)
            leader_exit.exited.wait(timeout=kill_grace_seconds)

        killed = True
        reaped, exit_code, wait_error = _kill_group_and_reap(proc, leader_exit)

        # Drains finish at EOF, i.e. once every writer of the pipes is gone.
        drains.finished.wait(timeout=_DRAIN_GRACE_SECONDS)
    finally:
        if not killed:
            # Reached when the calling greenlet is killed (GreenletExit) or
            # on_start raised: nothing of the group may survive us.
            reaped = _kill_group_and_reap(proc, leader_exit)[0]
        drains.close()
        if feeder is not None:
            feeder.kill()
        if reaped:
            leader_exit.close()
        else:
            # The child did not die even after SIGKILL (uninterruptible sleep):
            # the exit watch still owns the pidfd; hand both to a reaper.
            gevent.spawn(_reap_later, proc, leader_exit)
        proc.close_pipes()

    return ProcessResult(
        exit_code=exit_code,
        stdout=stdout_buffer.getvalue(),
        stderr=stderr_buffer.getvalue(),
        timed_out=timed_out,
        cancelled=cancelled,
        duration_seconds=time.monotonic() - started_at,
        stdout_truncated=stdout_buffer.truncated,
        stderr_truncated=stderr_buffer.truncated,
        spawn_error=None,
        wait_error=wait_error,
    )


def _wait_for_exit_or_cancel(
    exited: gevent.event.Event, cancel: gevent.event.Event | None, timeout: float | None
) -> None:
    """Return once `exited` or `cancel` is set, or after `timeout`.

    Not gevent.wait(): its general machinery costs the hub noticeably more,
    which shows with hundreds of children at once.
    """
    if cancel is None:
        exited.wait(timeout)
        return
    either = gevent.event.Event()

    def wake(_: object) -> None:
        either.set()

    exited.rawlink(wake)
    cancel.rawlink(wake)
    try:
        either.wait(timeout)
    finally:
        exited.unlink(wake)
        cancel.unlink(wake)


class _Child:
    """A started child: its pid (and Popen, if Popen started it), and the
    parent's ends of its pipes.

    The pipes are plain descriptors, not Popen's file objects: nothing here
    reads them through Python's io layer, and hundreds of children at once
    make the objects' creation and closing show. stdout and stderr are
    non-blocking; ``stdin_fd`` is None unless input was asked for.
    """

    __slots__ = ("_output_open", "pid", "popen", "stderr_fd", "stdin_fd", "stdout_fd")

    def __init__(
        self,
        pid: int,
        popen: subprocess.Popen[bytes] | None,
        stdin_fd: int | None,
        stdout_fd: int,
        stderr_fd: int,
    ) -> None:
        self.pid = pid
        self.popen = popen
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        self._output_open = True

    def set_exit_code(self, exit_code: int) -> None:
        if self.popen is not None:
            # Popen must not try to reap the child again (its __del__ would).
            self.popen.returncode = exit_code

    def close_stdin(self) -> None:
        if self.stdin_fd is not None:
            os.close(self.stdin_fd)
            self.stdin_fd = None

    def close_pipes(self) -> None:
        """Close every pipe end still open (after their watchers are closed)."""
        self.close_stdin()
        if self._output_open:
            self._output_open = False
            os.close(self.stdout_fd)
            os.close(self.stderr_fd)


_devnull_fd: int | None = None


def _devnull() -> int:
    """A read-only /dev/null for every child's stdin, opened once per process."""
    global _devnull_fd
    if _devnull_fd is None:
        with _DEVNULL_LOCK:  # the first starts come from several spawn threads at once
            if _devnull_fd is None:
                _devnull_fd = os.open(os.devnull, os.O_RDONLY)  # not inherited (PEP 446)
    return _devnull_fd


_DEVNULL_LOCK = threading.Lock()


def _pipe(*, nonblocking_read: bool) -> tuple[int, int]:
    """A pipe (read end, write end), neither inherited by children."""
    if posix_spawn.available():
        return posix_spawn.pipe(nonblocking_read=nonblocking_read)
    read_end, write_end = os.pipe()
    if nonblocking_read:
        os.set_blocking(read_end, False)
    return read_end, write_end


def _close(fd: int) -> None:
    # In a spawn thread, where os.close's release of the GIL costs a wait
    # behind the hub (see actors.posix_spawn).
    if posix_spawn.available():
        posix_spawn.close(fd)
    else:
        os.close(fd)


def _popen(
    argv: Sequence[str],
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    with_stdin: bool,
) -> _Child:
    """Start the child with fresh pipes for stdout and stderr (and stdin if
    asked, else /dev/null); raise OSError as Popen does, leaking no descriptor.

    Through posix_spawn where this libc allows it (``actors.posix_spawn``),
    else, or when that fails, through Popen, whose error then says why."""
    opened: list[int] = []
    try:
        stdout_read, stdout_write = _pipe(nonblocking_read=True)
        opened += (stdout_read, stdout_write)
        stderr_read, stderr_write = _pipe(nonblocking_read=True)
        opened += (stderr_read, stderr_write)
        stdin_read, stdin_write = _devnull(), None
        if with_stdin:
            stdin_read, stdin_write = _pipe(nonblocking_read=False)
            opened += (stdin_read, stdin_write)
        popen: subprocess.Popen[bytes] | None = None
        pid = _spawn(argv, cwd, env, stdin_read, stdout_write, stderr_write)
        if pid is None:
            popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=stdin_read,
                stdout=stdout_write,
                stderr=stderr_write,
                # Own session => own process group with pgid == pid, which we can
                # signal as a whole without touching our own group.
                start_new_session=True,
                close_fds=True,
            )
            pid = popen.pid
    except BaseException:
        for fd in opened:
            _close(fd)
        raise
    # The child holds its own copies of these ends; ours would keep the pipes
    # from ever reaching EOF.
    _close(stdout_write)
    _close(stderr_write)
    if stdin_write is not None:
        _close(stdin_read)
    return _Child(pid, popen, stdin_write, stdout_read, stderr_read)


def _spawn(
    argv: Sequence[str],
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    stdin_fd: int,
    stdout_fd: int,
    stderr_fd: int,
) -> int | None:
    """Start the child through posix_spawn and return its pid; None to leave
    it to Popen (no posix_spawn here, an unusual case, or a failure that
    Popen will report in its own words)."""
    if not posix_spawn.available() or min(stdin_fd, stdout_fd, stderr_fd) < 3:
        # A source descriptor 0-2 would need dup2 onto itself, which Popen handles.
        return None
    environment = os.environ if env is None else env
    path = environment.get("PATH", os.defpath)
    executable = _executable(argv[0], path)
    if executable is None:
        return None
    try:
        return posix_spawn.spawn(executable, argv, environment, cwd, stdin_fd, stdout_fd, stderr_fd)
    except OSError:
        _EXECUTABLES.pop((argv[0], path), None)
        return None


# (name, PATH) -> the absolute path Popen would run: a PATH search is a stat
# per folder, remembered as a shell's hash table does. A stale entry only makes
# one start fail over to Popen, which searches afresh.
_EXECUTABLES: dict[tuple[str, str], str] = {}
_MAX_REMEMBERED_EXECUTABLES = 256


def _executable(name: str, path: str) -> str | None:
    """What Popen would execute for ``name`` with this PATH, when certain."""
    if os.sep in name:
        return name  # run as given, relative to the cwd, as Popen does
    found = _EXECUTABLES.get((name, path))
    if found is None:
        found = shutil.which(name, path=path)
        if found is None or not os.path.isabs(found):
            # Not found, or on a relative PATH entry, which Popen resolves
            # from the child's cwd: Popen's case.
            return None
        if len(_EXECUTABLES) >= _MAX_REMEMBERED_EXECUTABLES:
            _EXECUTABLES.clear()
        _EXECUTABLES[(name, path)] = found
    return found


class _Start:
    """One child being started in a spawn thread.

    Whoever takes ``proc`` out (under ``lock``) owns the child: the caller once
    notified, or the thread itself when the caller or its hub is gone.
    """

    __slots__ = ("abandoned", "error", "lock", "pidfd", "proc")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.proc: _Child | None = None
        # Belongs to whoever owns ``proc``.
        self.pidfd: int | None = None
        self.error: Exception | None = None

    def take(self) -> _Child | None:
        with self.lock:
            proc, self.proc = self.proc, None
            return proc


def _start_off_the_hub(
    argv: Sequence[str],
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    *,
    with_stdin: bool,
) -> tuple[_Child, int | None]:
    """Start the child from a spawn thread; raise OSError as Popen does.

    Returns the child and its pidfd (None where unavailable, see _open_pidfd).

    Popen returns only once the child has called exec, which takes milliseconds
    on a busy or virtualised machine: on the hub, 500 starts would freeze every
    actor for seconds, and starts could not overlap. In threads they overlap
    (the wait releases the GIL) and the hub keeps serving meanwhile. The
    threads are the process's, not a hub's (not gevent's thread pool): a
    start whose caller or hub went away is cleaned up by its thread alone.
    """
    start = _Start()
    started = gevent.event.Event()
    # An active async watcher keeps the hub's loop running while it waits, and
    # is the one thing a foreign thread may poke to wake it.
    wake = gevent.get_hub().loop.async_()
    wake.start(started.set)
    try:
        _submit_to_spawner(lambda: _start_in_thread(start, wake, argv, cwd, env, with_stdin))
        started.wait()
    except BaseException:
        # The caller was killed while the child was being started: whatever
        # is started must not outlive it.
        with start.lock:
            start.abandoned = True
        orphan = start.take()
        if orphan is not None:
            orphan_pidfd = start.pidfd
            _submit_to_spawner(lambda: _kill_abandoned(orphan, orphan_pidfd))
        raise
    finally:
        wake.close()
    if start.error is not None:
        raise start.error
    proc = start.take()
    assert proc is not None
    return proc, start.pidfd


def start_spawn_threads() -> None:
    """Start the threads that start children, if they are not running yet.

    `run_process` does this on first use; a backend that will run processes
    calls it up front, so its first child does not also wait for 16 threads
    to be created while the hub is busy dispatching the job's first sheets.
    """
    global _spawn_threads_running
    if _spawn_threads_running:
        return
    with _SPAWNER_LOCK:
        if not _spawn_threads_running:
            for index in range(_SPAWN_THREADS):
                # Daemons: idle ones must not keep the interpreter alive.
                threading.Thread(
                    target=_spawn_worker, name=f"ensemble-spawn_{index}", daemon=True
                ).start()
            _spawn_threads_running = True


def _submit_to_spawner(job: Callable[[], None]) -> None:
    """Run `job` in one of the spawn threads, started on first use."""
    start_spawn_threads()
    _SPAWN_JOBS.put(job)


def _spawn_worker() -> None:
    while True:
        job = _SPAWN_JOBS.get()
        try:
            job()
        except Exception:
            # The jobs handle their own errors; whatever escapes is a bug,
            # which must be seen but not cost the pool a thread.
            logger.exception("a process start job failed")
        del job


def _forget_spawn_threads() -> None:
    # A forked child has none of its parent's threads; start new ones there.
    global _spawn_threads_running, _SPAWN_JOBS
    _spawn_threads_running = False
    _SPAWN_JOBS = queue.SimpleQueue()


os.register_at_fork(after_in_child=_forget_spawn_threads)


def _start_in_thread(
    start: _Start,
    wake: Any,
    argv: Sequence[str],
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    with_stdin: bool,
) -> None:
    """Runs in a spawn thread: start the child, then wake the caller's hub."""
    proc: _Child | None = None
    pidfd: int | None = None
    try:
        proc = _popen(argv, cwd, env, with_stdin)
    except Exception as exc:
        # Whatever it is (also Popen's ValueError for a NUL byte, or a string
        # that cannot be encoded): the caller must be woken to report it.
        start.error = exc
    else:
        # Done here rather than on the hub, whose time is the scarcer.
        pidfd = _open_pidfd(proc.pid)
    with start.lock:
        abandoned = start.abandoned
        if not abandoned:
            start.proc = proc
            start.pidfd = pidfd
    if abandoned:
        if proc is not None:
            _kill_abandoned(proc, pidfd)
        return
    try:
        wake.send()
    except Exception:
        # The hub was destroyed (or the watcher closed by a caller that went
        # away meanwhile): nobody will collect the child but us.
        orphan = start.take()
        if orphan is not None:
            _kill_abandoned(orphan, pidfd)


def _kill_abandoned(proc: _Child, pidfd: int | None) -> None:
    """Kill the group of a child nobody waits for and reap it; runs in a pool
    thread, where blocking is fine. The same order as _kill_group_and_reap:
    kill, wait for the leader without reaping, sweep the group, reap."""
    _signal_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    _signal_group(proc.pid, signal.SIGKILL)
    _reap_blocking(proc)
    if pidfd is not None:
        os.close(pidfd)
    proc.close_pipes()


def _reap_blocking(proc: _Child) -> None:
    try:
        _, status = os.waitpid(proc.pid, 0)
    except ChildProcessError:
        proc.set_exit_code(-1)
        return
    proc.set_exit_code(os.waitstatus_to_exitcode(status))


class _TailBuffer:
    """Keeps the last `limit` bytes of a stream while it is read.

    Whole chunks are dropped from the front as soon as the rest still covers
    the limit, so memory stays below limit + one chunk however much is read.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.truncated = False

    def append(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._chunks and self._size - len(self._chunks[0]) >= self._limit:
            self._size -= len(self._chunks.popleft())
            self.truncated = True

    def getvalue(self) -> bytes:
        data = b"".join(self._chunks)
        if len(data) > self._limit:
            self.truncated = True
            # Not data[-limit:]: with limit 0 that would keep everything.
            data = data[len(data) - self._limit :]
        return data


def _describe_spawn_error(
    exc: OSError | ValueError, executable: str, cwd: str | os.PathLike[str] | None
) -> str:
    """Say what could not be started and why, naming the executable or the cwd."""
    if not isinstance(exc, OSError):
        # Popen's words for what no process can be given: "embedded null byte",
        # "illegal environment variable name", or an unencodable string.
        return f"could not start {executable}: {exc}"
    # Popen reports a failed chdir with the cwd as the error's filename and a
    # failed exec with the executable's, so the filename tells them apart.
    cwd_text = os.fsdecode(cwd) if cwd is not None else None
    about_cwd = (
        cwd_text is not None and exc.filename is not None and os.fsdecode(exc.filename) == cwd_text
    )
    if about_cwd:
        if isinstance(exc, FileNotFoundError):
            return f"working directory not found: {cwd_text}"
        if isinstance(exc, NotADirectoryError):
            return f"working directory is not a directory: {cwd_text}"
        if isinstance(exc, PermissionError):
            return f"permission denied for working directory: {cwd_text}"
        return f"cannot use working directory {cwd_text}: {exc.strerror or exc}"
    if isinstance(exc, FileNotFoundError):
        return f"executable not found: {executable}"
    if isinstance(exc, NotADirectoryError):
        return f"executable not found (a path component is not a directory): {executable}"
    if isinstance(exc, PermissionError):
        return f"permission denied, cannot execute: {executable}"
    return f"could not start {executable}: {exc.strerror or exc}"


def _open_pidfd(pid: int) -> int | None:
    """A pidfd becomes readable when the process exits, without reaping it."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        # ENOSYS or a seccomp filter: fall back to polling.
        return None


class _ExitWatch:
    """Sets `exited` once the child has exited, leaving it unreaped (a zombie).

    Not reaping here keeps the pid, and so the process group id, reserved
    until the group has been swept with SIGKILL. Owns the pidfd.
    """

    def __init__(self, loop: Any, pid: int, pidfd: int | None) -> None:
        self.exited = gevent.event.Event()
        self._pidfd = pidfd
        self._watcher: Any = None
        self._poller: gevent.Greenlet | None = None
        if pidfd is not None:
            self._watcher = loop.io(pidfd, 1)
            self._watcher.start(self._on_exit)
        else:
            self._poller = gevent.spawn(self._poll, pid)

    def _on_exit(self) -> None:
        self._watcher.stop()
        self.exited.set()

    def _poll(self, pid: int) -> None:
        while True:
            try:
                # WNOWAIT: look at the exit without consuming it.
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break  # Reaped by someone else; _reap reports it.
            if info is not None:
                break
            gevent.sleep(_EXIT_POLL_INTERVAL_SECONDS)
        self.exited.set()

    def close(self) -> None:
        """Stop watching and close the pidfd (the watcher first: it uses the fd)."""
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        if self._poller is not None:
            self._poller.kill()
            self._poller = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def _reap(proc: _Child) -> tuple[int | None, str | None]:
    """Collect the exit status of an exited child; never blocks.

    Not Popen.wait(): it turns "already reaped by someone else" (ECHILD) into
    exit code 0, which would report a failed run as a success.
    """
    try:
        waited_pid, status = os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:
        proc.set_exit_code(-1)
        return None, (
            f"exit status of process {proc.pid} was lost: another part of this "
            "program reaped it (is gevent.subprocess used on the default loop?)"
        )
    if waited_pid == 0:
        # Only reachable if called before the exit; keep the API honest.
        return None, f"process {proc.pid} had not exited when reaped"
    exit_code = os.waitstatus_to_exitcode(status)
    proc.set_exit_code(exit_code)
    return exit_code, None


def _reap_later(proc: _Child, leader_exit: _ExitWatch) -> None:
    """Last resort for a child that did not die within the SIGKILL wait."""
    try:
        leader_exit.exited.wait()
        _signal_group(proc.pid, signal.SIGKILL)
        _reap(proc)
    finally:
        leader_exit.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # The whole group is already gone.
    except PermissionError:
        pass  # Only members we may not signal remain (e.g. setuid): nothing we can do.


def _kill_group_and_reap(
    proc: _Child, leader_exit: _ExitWatch
) -> tuple[bool, int | None, str | None]:
    """SIGKILL the group unless the leader has exited, wait for the leader,
    sweep the group, reap.

    Returns (reaped, exit_code, wait_error). After a normal exit the sweep
    only hits leftover background descendants; they would otherwise survive
    the run and keep our pipes open.
    """
    if not leader_exit.exited.is_set():
        _signal_group(proc.pid, signal.SIGKILL)
    if not leader_exit.exited.wait(timeout=_SIGKILL_WAIT_SECONDS):
        return (
            False,
            None,
            f"process {proc.pid} did not exit after SIGKILL; it is reaped in the background",
        )
    # Once more now that the leader has exited, for any member still alive
    # (cheap; ProcessLookupError when the group is empty). The leader is a
    # zombie until reaped, so its pid (= the pgid) cannot have been reused
    # yet: this signal cannot hit a stranger. Hence sweep first, reap second.
    _signal_group(proc.pid, signal.SIGKILL)
    exit_code, wait_error = _reap(proc)
    return True, exit_code, wait_error


class _Drains:
    """Reads non-blocking pipes until EOF into tail buffers, from hub callbacks.

    Sets `finished` once every pipe has reached EOF, i.e. once every writer
    of the pipes is gone. One read per readiness event, so a child flooding
    its output cannot starve the other greenlets of the hub.
    """

    def __init__(self, loop: Any, pipes: Sequence[tuple[int, _TailBuffer]]) -> None:
        self.finished = gevent.event.Event()
        self._watchers: dict[int, Any] = {}
        for fd, buffer in pipes:
            watcher = loop.io(fd, 1)
            self._watchers[fd] = watcher
            watcher.start(self._on_readable, fd, buffer)

    def _on_readable(self, fd: int, buffer: _TailBuffer) -> None:
        try:
            chunk = os.read(fd, _READ_CHUNK_BYTES)
        except BlockingIOError:
            return  # Spurious wake-up.
        except OSError:
            chunk = b""  # Nothing more can be read from it (EIO and the like).
        if chunk:
            buffer.append(chunk)
            return
        watcher = self._watchers.pop(fd)
        watcher.close()
        if not self._watchers:
            self.finished.set()

    def close(self) -> None:
        """Stop reading (before the pipes are closed: the watchers use the fds)."""
        for watcher in self._watchers.values():
            watcher.close()
        self._watchers.clear()


def _feed_stdin(proc: _Child, data: bytes) -> None:
    """Write `data` to the child's stdin, then close it so the child sees EOF."""
    fd = proc.stdin_fd
    assert fd is not None
    try:
        gevent.os.make_nonblocking(fd)
        view = memoryview(data)
        while view:
            written = gevent.os.nb_write(fd, view)
            view = view[written:]
    except BrokenPipeError:
        pass  # The child exited or closed stdin without reading it all: its choice.
    finally:
        proc.close_stdin()
