"""Error types a user of Ensemble can catch and act on.

Every error raised across the host surface is an ``EnsembleError``; its message
names what was wrong and how to fix it. This module holds no logic.
"""

from __future__ import annotations


class EnsembleError(Exception):
    """Base of every error Ensemble raises on purpose."""


class ConfigError(EnsembleError):
    """A score, profile or setting is invalid.

    ``key_path`` names the offending key (``sheet.dependencies.3``), ``source``
    the file it came from and ``line`` the line YAML reported, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        key_path: str | None = None,
        source: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.key_path = key_path
        self.source = source
        self.line = line
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.source:
            where = self.source
            if self.line is not None:
                where += f":{self.line}"
            where += ": "
        key = f"{self.key_path}: " if self.key_path else ""
        return f"{where}{key}{self.message}"


class ScoreError(ConfigError):
    """A score could not be loaded or planned."""


class JobNotFoundError(EnsembleError):
    """No job with this id is known to the runtime."""


class JobExistsError(EnsembleError):
    """A job with this id already exists in the state directory."""


class UnknownInstrumentError(ConfigError):
    """A sheet names an instrument the runtime has no backend for."""


class RuntimeStoppedError(EnsembleError):
    """The runtime was stopped, or is stopping, and accepts no more calls."""


class CallTimeoutError(EnsembleError):
    """The runtime did not answer a host call in time."""


class PersistenceError(EnsembleError):
    """The checkpoint could not be written or read."""


class ConditionError(ConfigError):
    """A validation condition or a ``skip_when`` expression cannot be parsed or evaluated."""


class ProfileError(ConfigError):
    """An instrument profile cannot be read or is invalid; names the file and the key."""
