"""Cross-sheet context: what a sheet's prompt may see of the sheets before it.

Owns ``previous_outputs`` (SEMANTICS S31: the last successful output of each of
the previous ``lookback_sheets`` sheets, cut to ``max_output_chars``,
"[SKIPPED]" for skipped ones) and ``previous_files`` (S32: files matched by the
``capture_files`` globs inside the workspace, never outside it, cut the same
way), both with credentials redacted. It reads files but decides nothing: the
job supplies the outputs it has checkpointed, the sheet actor calls these
functions when it prepares an attempt.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from runtime.redaction import redact
from runtime.score import CrossSheetConfig

SKIPPED_MARKER = "[SKIPPED]"
# A capture glob such as "**/*" in a large workspace must not read everything.
MAX_CAPTURED_FILES = 50


@dataclass(frozen=True, slots=True)
class PriorOutput:
    """What the job knows about one earlier sheet: its last good output, or that it was skipped."""

    text: str = ""
    skipped: bool = False


def lookback_window(sheet_num: int, lookback_sheets: int) -> range:
    """The sheet numbers whose outputs sheet ``sheet_num`` sees (0 = all earlier sheets)."""
    first = 1 if lookback_sheets == 0 else max(1, sheet_num - lookback_sheets)
    return range(first, sheet_num)


def truncate(text: str, max_chars: int, *, keep: str = "head") -> str:
    """Cut ``text`` to ``max_chars`` and say so; ``keep="tail"`` keeps the end instead."""
    if len(text) <= max_chars:
        return text
    cut = len(text) - max_chars
    if keep == "tail":
        return f"[... {cut} earlier characters cut]\n" + text[-max_chars:]
    return text[:max_chars] + f"\n[... {cut} more characters cut]"


def previous_outputs(
    sheet_num: int,
    cross_sheet: CrossSheetConfig | None,
    outputs: Mapping[int, PriorOutput],
) -> dict[int, str]:
    """S31: ``previous_outputs`` for a sheet, from what the job recorded of earlier sheets.

    Sheets missing from ``outputs`` (not finished, failed) are left out.
    """
    if cross_sheet is None or not cross_sheet.auto_capture_stdout:
        return {}
    result: dict[int, str] = {}
    for num in lookback_window(sheet_num, cross_sheet.lookback_sheets):
        prior = outputs.get(num)
        if prior is None:
            continue
        if prior.skipped:
            result[num] = SKIPPED_MARKER
        else:
            result[num] = truncate(redact(prior.text), cross_sheet.max_output_chars, keep="tail")
    return result


def capture_files(
    patterns: Iterable[str],
    workspace: str | os.PathLike[str],
    max_chars: int,
    *,
    render: Callable[[str], str] | None = None,
) -> dict[str, str]:
    """S32: ``previous_files`` {path: content} for the capture globs.

    Each pattern is first rendered (``{{ workspace }}/notes.md``), then taken
    relative to the workspace; matches that resolve outside the workspace (by
    ``..`` or a symlink) are ignored. Contents are cut to ``max_chars`` and
    credentials are redacted.
    """
    root = Path(workspace).resolve()
    found: dict[str, str] = {}
    for raw in patterns:
        pattern = render(raw) if render is not None else raw
        absolute = pattern if os.path.isabs(pattern) else os.path.join(root, pattern)
        for match in sorted(glob.glob(absolute, recursive=True)):
            if len(found) >= MAX_CAPTURED_FILES:
                logger.warning(
                    "cross_sheet.capture_files: more than {} files match; the rest are left out",
                    MAX_CAPTURED_FILES,
                )
                return found
            if match in found:
                continue
            path = Path(match)
            try:
                resolved = path.resolve()
            except (OSError, RuntimeError):
                continue
            if not resolved.is_relative_to(root) or not resolved.is_file():
                continue
            content = _read_prefix(resolved, max_chars)
            if content is None:
                continue
            text, more = content
            text = redact(text)
            if more:
                found[match] = text[:max_chars] + "\n[... more characters cut]"
            else:
                found[match] = truncate(text, max_chars)
    return found


# Read past the cut so that a credential straddling it is still recognised.
_READ_MARGIN = 4096


def _read_prefix(path: Path, max_chars: int) -> tuple[str, bool] | None:
    """The start of a file (without loading a huge one whole) and whether more follows."""
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            head = handle.read(max_chars + _READ_MARGIN)
            more = bool(handle.read(1))
    except OSError as exc:
        logger.warning("cross_sheet.capture_files: cannot read {}: {}", path, exc)
        return None
    return head, more
