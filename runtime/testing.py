"""Test support for users' own tests: scripted mock backends.

Re-exports ``ScriptedBackend`` and its outcomes so a test can stand them in for
real AI tools: ``runtime.start(backends={"claude-code": ScriptedBackend(...)})``.
The pytest fixture is in ``runtime.pytest_plugin``.
"""

from actors.backends.scripted import (
    AuthFailure,
    Crash,
    Fail,
    Hang,
    Outcome,
    RateLimit,
    ScriptedBackend,
    Succeed,
)

__all__ = [
    "AuthFailure",
    "Crash",
    "Fail",
    "Hang",
    "Outcome",
    "RateLimit",
    "ScriptedBackend",
    "Succeed",
]
