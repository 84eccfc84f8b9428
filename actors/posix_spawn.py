"""Start a child through libc's posix_spawn, taking the GIL back only once.

This module owns one step of ``actors.process``: given an executable path,
its arguments, environment, working directory and the three descriptors for
its standard streams, start the child in its own session with every other
descriptor closed and SIGPIPE and SIGXFSZ at their defaults, which is what
``subprocess.Popen(..., start_new_session=True, close_fds=True)`` does. It also
makes the pipes for those streams.

Why not Popen: one start releases and retakes the GIL about nine times (its
error pipe, fork_exec, the read that waits for exec, the closes). The starts
run in spawn threads, and while the hub is busy (dispatching hundreds of
sheets) it lets go of the GIL only once per switch interval (5 ms), so each
of those retakes can wait that long: a start took about 30 ms. Here the
preparation goes through ``ctypes.PyDLL``, which keeps the GIL, and only
``posix_spawn`` itself runs with the GIL released. Why not ``os.posix_spawn``:
it cannot change the working directory, and it holds the GIL for the whole
spawn, freezing the hub while the child execs.

It needs glibc 2.34 or later (``posix_spawn_file_actions_addchdir_np`` and
``addclosefrom_np``); ``available()`` says whether this libc has them, and the
caller uses Popen where it does not. It never explains a failure: ``spawn``
raises an OSError with the bare errno, and the caller starts the child with
Popen instead, whose error names the working directory or the executable.
What C strings cannot carry (a NUL byte, '=' in a variable's name) is refused
with Popen's own ValueError before anything starts, never cut short.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["available", "close", "pipe", "spawn"]

# glibc's values (bits/spawn.h); this module is only used with glibc.
_POSIX_SPAWN_SETSIGDEF = 0x04
_POSIX_SPAWN_SETSIGMASK = 0x08
_POSIX_SPAWN_SETSID = 0x80

# Larger than glibc's posix_spawn_file_actions_t (80 bytes on 64-bit),
# posix_spawnattr_t (336) and sigset_t (128): the functions only ever write
# within their own type's size.
_OPAQUE_BYTES = 512

_SYMBOLS = (
    "posix_spawn",
    "posix_spawn_file_actions_init",
    "posix_spawn_file_actions_destroy",
    "posix_spawn_file_actions_adddup2",
    "posix_spawn_file_actions_addchdir_np",
    "posix_spawn_file_actions_addclosefrom_np",
    "posix_spawnattr_init",
    "posix_spawnattr_setflags",
    "posix_spawnattr_setsigmask",
    "posix_spawnattr_setsigdefault",
    "sigemptyset",
    "sigaddset",
    "pipe2",
    "close",
    "fcntl",
)


class _Libc:
    """The C library twice: ``held`` keeps the GIL during calls, ``released``
    lets other threads run (only for the one call that waits, posix_spawn)."""

    def __init__(self) -> None:
        # None: the symbols the interpreter itself was linked with (libc).
        self.held: Any = ctypes.PyDLL(None, use_errno=True)
        self.released: Any = ctypes.CDLL(None)
        for name in _SYMBOLS:
            getattr(self.held, name)  # AttributeError: this libc lacks it
        self.empty_mask = ctypes.create_string_buffer(_OPAQUE_BYTES)
        self.held.sigemptyset(self.empty_mask)
        # Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec.
        self.default_signals = ctypes.create_string_buffer(_OPAQUE_BYTES)
        self.held.sigemptyset(self.default_signals)
        self.held.sigaddset(self.default_signals, signal.SIGPIPE)
        self.held.sigaddset(self.default_signals, signal.SIGXFSZ)
        # The same for every child, and only read by posix_spawn: built once,
        # shared by the spawn threads, never destroyed.
        self.attributes = ctypes.create_string_buffer(_OPAQUE_BYTES)
        flags = _POSIX_SPAWN_SETSID | _POSIX_SPAWN_SETSIGMASK | _POSIX_SPAWN_SETSIGDEF
        if (
            self.held.posix_spawnattr_init(self.attributes)
            or self.held.posix_spawnattr_setflags(self.attributes, ctypes.c_short(flags))
            or self.held.posix_spawnattr_setsigmask(self.attributes, self.empty_mask)
            or self.held.posix_spawnattr_setsigdefault(self.attributes, self.default_signals)
        ):
            raise OSError("cannot set up posix_spawn's attributes")


_libc: _Libc | None = None
_checked = False


def available() -> bool:
    """Whether this platform's libc can start children here (glibc >= 2.34)."""
    global _libc, _checked
    if not _checked:
        # Two spawn threads may both get here first: each builds an equal _Libc.
        try:
            # confstr raises ValueError where the name is unknown (not glibc).
            if sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION"):
                _libc = _Libc()
        except (OSError, AttributeError, ValueError):
            _libc = None
        _checked = True
    return _libc is not None


def _lib() -> _Libc:
    if not available():
        raise OSError("posix_spawn with chdir and closefrom is not available here")
    assert _libc is not None
    return _libc


def pipe(*, nonblocking_read: bool = False) -> tuple[int, int]:
    """A close-on-exec pipe (read end, write end); the read end non-blocking
    if asked. Without releasing the GIL (see the module's docstring)."""
    libc = _lib().held
    ends = (ctypes.c_int * 2)()
    if libc.pipe2(ends, os.O_CLOEXEC) != 0:
        raise OSError(ctypes.get_errno() or errno.EMFILE, "cannot create a pipe")
    read_end, write_end = ends[0], ends[1]
    if nonblocking_read and libc.fcntl(read_end, fcntl.F_SETFL, os.O_NONBLOCK) != 0:
        libc.close(read_end)
        libc.close(write_end)
        raise OSError("cannot make a pipe non-blocking")
    return read_end, write_end


def close(fd: int) -> None:
    """Close a descriptor of ``pipe`` without releasing the GIL."""
    _lib().held.close(fd)


def spawn(
    executable: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | os.PathLike[str] | None,
    stdin_fd: int,
    stdout_fd: int,
    stderr_fd: int,
) -> int:
    """Start ``executable`` with ``argv`` and exactly ``env``; return its pid.

    The child runs in ``cwd`` in a new session, with the three descriptors
    as its standard streams (none of them may be 0, 1 or 2 here) and nothing
    else open. Raises OSError(errno) if it could not be started, and
    ValueError for what no process can be given (see the module's docstring).
    """
    _refuse_what_c_would_cut(executable, argv, env, cwd)
    lib = _lib()
    libc = lib.held
    actions = ctypes.create_string_buffer(_OPAQUE_BYTES)
    if libc.posix_spawn_file_actions_init(actions) != 0:
        raise OSError(errno.ENOMEM, "posix_spawn_file_actions_init failed")
    try:
        error = 0
        for source, target in ((stdin_fd, 0), (stdout_fd, 1), (stderr_fd, 2)):
            error = error or libc.posix_spawn_file_actions_adddup2(actions, source, target)
        if cwd is not None:
            error = error or libc.posix_spawn_file_actions_addchdir_np(actions, os.fsencode(cwd))
        error = error or libc.posix_spawn_file_actions_addclosefrom_np(actions, 3)
        if error:
            raise OSError(error, os.strerror(error))
        c_argv = (ctypes.c_char_p * (len(argv) + 1))(*map(os.fsencode, argv), None)
        c_env = (ctypes.c_char_p * (len(env) + 1))(
            *(os.fsencode(f"{name}={value}") for name, value in env.items()), None
        )
        pid = ctypes.c_int()
        error = lib.released.posix_spawn(
            ctypes.byref(pid), os.fsencode(executable), actions, lib.attributes, c_argv, c_env
        )
        if error:
            raise OSError(error, os.strerror(error))
        return pid.value
    finally:
        libc.posix_spawn_file_actions_destroy(actions)


def _refuse_what_c_would_cut(
    executable: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | os.PathLike[str] | None,
) -> None:
    """Raise Popen's ValueError where a C string would silently end early: a
    NUL byte anywhere, or '=' in a variable's name (it would set another one)."""
    texts = [executable, *argv, *env.keys(), *env.values()]
    if cwd is not None:
        texts.append(os.fsdecode(cwd))
    if any("\0" in text for text in texts):
        raise ValueError("embedded null byte")
    if any("=" in name for name in env):
        raise ValueError("illegal environment variable name")
