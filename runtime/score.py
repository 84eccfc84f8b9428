"""Score models and YAML loading.

Owns the shape of a score (pydantic models that forbid unknown keys), reading it
from a file, a mapping or YAML text, and turning every problem into a
``ScoreError`` that names the key path, the file and, where YAML knows it, the
line. It does not plan sheets (``runtime.plan``) or render prompts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runtime.errors import ScoreError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SheetConfig(_Model):
    size: int = Field(default=1, ge=1)
    total_items: int = Field(ge=0)
    start_item: int = Field(default=1, ge=1)
    dependencies: dict[int, list[int]] = Field(default_factory=dict)


class PromptConfig(_Model):
    template: str | None = None
    template_file: str | None = None
    variables: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> PromptConfig:
        if self.template is not None and self.template_file is not None:
            raise ValueError("give either 'template' or 'template_file', not both")
        if self.template is None and self.template_file is None:
            raise ValueError("a prompt needs 'template' or 'template_file'")
        return self


class RetryConfig(_Model):
    max_retries: int = Field(default=3, ge=0)
    base_delay_seconds: float = Field(default=10.0, ge=0)


class ParallelConfig(_Model):
    enabled: bool = False
    max_concurrent: int = Field(default=3, ge=1)


class BackendConfig(_Model):
    type: str = "claude_cli"
    timeout_seconds: float = Field(default=1800.0, gt=0)


class Score(_Model):
    """A parsed score. ``workspace`` is absolute once loaded from a file."""

    name: str = Field(min_length=1)
    description: str | None = None
    workspace: str = "./workspace"
    instrument: str | None = None
    backend: BackendConfig = Field(default_factory=BackendConfig)
    sheet: SheetConfig
    prompt: PromptConfig
    retry: RetryConfig = Field(default_factory=RetryConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    pause_between_sheets_seconds: float = Field(default=2.0, ge=0)


# Marianne's legacy `backend.type` values and the instrument each one means.
_LEGACY_BACKENDS = {"claude_cli": "claude-code", "anthropic_api": "claude-code"}


def legacy_instrument(backend_type: str) -> str:
    return _LEGACY_BACKENDS.get(backend_type, backend_type)


def load_score(source: str | Path | Mapping[str, Any] | Score) -> Score:
    """Load a score from a path, a mapping or a ``Score``.

    Relative ``workspace`` and ``template_file`` resolve against the score's
    folder (the current directory for a mapping).
    """
    if isinstance(source, Score):
        return source
    if isinstance(source, Mapping):
        return score_from_mapping(source, base_dir=Path.cwd(), source_name="<score>")
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScoreError("score file not found", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScoreError(f"cannot read score file: {exc}", source=str(path)) from None
    return score_from_text(text, base_dir=path.resolve().parent, source_name=str(path))


def score_from_text(text: str, *, base_dir: Path, source_name: str) -> Score:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScoreError(f"invalid YAML: {problem}", source=source_name, line=line) from None
    if not isinstance(data, Mapping):
        raise ScoreError("a score must be a YAML mapping of keys", source=source_name)
    return score_from_mapping(data, base_dir=base_dir, source_name=source_name)


def score_from_mapping(data: Mapping[str, Any], *, base_dir: Path, source_name: str) -> Score:
    try:
        score = Score.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        key_path = ".".join(str(part) for part in first["loc"]) or None
        message = _describe(first)
        more = len(exc.errors()) - 1
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ScoreError(message, key_path=key_path, source=source_name) from None
    workspace = Path(score.workspace)
    if not workspace.is_absolute():
        workspace = (base_dir / workspace).resolve()
    prompt = score.prompt
    if prompt.template_file is not None:
        template_path = Path(prompt.template_file)
        if not template_path.is_absolute():
            template_path = (base_dir / template_path).resolve()
        try:
            template = template_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ScoreError(
                f"cannot read template file {template_path}: {exc.strerror or exc}",
                key_path="prompt.template_file",
                source=source_name,
            ) from None
        prompt = prompt.model_copy(update={"template": template})
    return score.model_copy(update={"workspace": str(workspace), "prompt": prompt})


def _describe(error: Mapping[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling"
    if kind == "missing":
        return "required key is missing"
    message = str(error.get("msg", "invalid value"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    value = error.get("input")
    if kind != "missing" and not isinstance(value, Mapping | list):
        message += f" (got {value!r})"
    return message
