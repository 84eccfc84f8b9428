"""Credential redaction: one rule for everything Ensemble keeps of a tool's words.

Owns ``redact``, used wherever text from an instrument or a workspace is kept
or passed on: output tails and error messages (``runtime.instrument_output``),
earlier sheets' outputs and captured files in a prompt (``runtime.context``).
It replaces the given secret values, well-known key formats and the values of
key-like names with ``[REDACTED]``. It reads and writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["REDACTED", "redact"]

REDACTED = "[REDACTED]"

_SECRET_PATTERNS = re.compile(
    "|".join(
        (
            # A whole block, or one cut short: its header and the base64 body
            # that follows, not the rest of the text (a tool's own error after it).
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----"
            r"(?:(?s:.*?)-----END [A-Z ]*PRIVATE KEY-----|[A-Za-z0-9+/=\s]*)",
            r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}",  # Anthropic, OpenAI
            r"\bAIza[0-9A-Za-z_\-]{30,}",  # Google API keys
            r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
            r"\bgh[pousr]_[A-Za-z0-9]{20,}",  # GitHub tokens
            r"\bgithub_pat_[A-Za-z0-9_]{20,}",
            r"\bxox[abposr]-[A-Za-z0-9\-]{10,}",  # Slack tokens
            r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",  # JWTs
        )
    )
)
# `API_KEY=x`, `"password": "x"`, `Authorization: Bearer x`, `Bearer x`: keep the
# name, hide the value. Only after `:` or `=` (prose such as "secretary
# documentation" stays), and a value needs a letter (token counts stay).
_SECRET_VALUE = r"(?=[A-Za-z0-9_\-./+=]*[A-Za-z])[A-Za-z0-9_\-./+=]{8,}"
_SECRET_ASSIGNMENTS = re.compile(
    r"(?P<name>(?:\b(?:[A-Za-z0-9_]*(?:api[_-]?key|token|secret|password|passwd|credential)"
    r"[A-Za-z0-9_]*|authorization)[\"']?\s*[:=]\s*[\"']?(?:bearer\s+)?|\bbearer\s+))"
    rf"(?P<value>{_SECRET_VALUE})",
    re.IGNORECASE,
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credentials replaced by ``[REDACTED]``: the given secret
    values, well-known key formats and values assigned to key-like names."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _SECRET_PATTERNS.sub(REDACTED, text)
    return _SECRET_ASSIGNMENTS.sub(lambda match: match.group("name") + REDACTED, text)
