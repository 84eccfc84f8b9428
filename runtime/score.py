"""Score models and YAML loading.

Owns the shape of a score (pydantic models for every key Marianne accepts, each
forbidding unknown keys), reading it from a file, a mapping or YAML text, the
warnings for keys Ensemble accepts but does not act on, and turning every
problem into a ``ScoreError`` that names the key path, the file and, where YAML
knows it, the line. Relative ``workspace``, ``template_file`` and prompt
extension files resolve against the score's folder.

It does not plan sheets (``runtime.plan``), render prompts (``runtime.prompts``)
or run validations (``runtime.validations``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from loguru import logger
from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from runtime.conditions import parse_skip_expression, parse_validation_condition
from runtime.config_yaml import duplicate_notes, line_at, located_validation_error, parse_yaml
from runtime.errors import ConditionError, ScoreError
from runtime.score_extras import (
    NOT_ACTED_ON,
    NOT_ACTED_ON_NESTED,
    AIReviewConfig,
    BridgeConfig,
    CheckpointConfig,
    ConductorConfig,
    FeedbackConfig,
    GroundingConfig,
    IsolationConfig,
    LearningConfig,
    LogConfig,
    NotificationConfig,
    Section,
    SpecConfig,
    StaleDetectionConfig,
    TechniqueConfig,
    WorkspaceLifecycleConfig,
    check_regex,
)

# A sheet number, stage number or movement number: YAML keys like ``3:``.
Positive = Annotated[int, Field(ge=1)]
InjectionCategory = Literal["context", "skill", "tool"]


# --- sheet ---------------------------------------------------------------------------------


class InjectionItem(Section):
    """A prelude or cadenza entry: one file or directory injected into the prompt."""

    file: str | None = None
    directory: str | None = None
    as_: InjectionCategory = Field(alias="as")

    @model_validator(mode="after")
    def _one_source(self) -> InjectionItem:
        if (self.file is None) == (self.directory is None):
            raise ValueError("an injection item needs exactly one of 'file' or 'directory'")
        return self

    @property
    def category(self) -> InjectionCategory:
        return self.as_

    @property
    def path(self) -> str:
        return self.file if self.file is not None else self.directory or ""


class SkipWhenCommand(Section):
    """S5: run ``command``; exit 0 skips the sheet, anything else (or a timeout) runs it."""

    command: str
    description: str | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, le=60)


class SheetConfig(Section):
    size: int = Field(default=1, ge=1)
    total_items: int = Field(ge=0)
    start_item: int = Field(default=1, ge=1)
    dependencies: dict[Positive, list[Positive]] = Field(default_factory=dict)
    fan_out: dict[Positive, Positive] = Field(default_factory=dict)
    # Keyed by stage.
    skip_when: dict[Positive, str] = Field(default_factory=dict)
    skip_when_command: dict[Positive, SkipWhenCommand] = Field(default_factory=dict)
    # Keyed by final sheet number.
    descriptions: dict[Positive, str] = Field(default_factory=dict)
    cadenzas: dict[Positive, list[InjectionItem]] = Field(default_factory=dict)
    per_sheet_instruments: dict[Positive, Annotated[str, Field(min_length=1)]] = Field(
        default_factory=dict
    )
    per_sheet_instrument_config: dict[Positive, dict[str, Any]] = Field(default_factory=dict)
    per_sheet_fallbacks: dict[Positive, list[str]] = Field(default_factory=dict)
    instrument_map: dict[Annotated[str, Field(min_length=1)], list[Positive]] = Field(
        default_factory=dict
    )
    prompt_extensions: dict[Positive, list[str]] = Field(default_factory=dict)
    spec_tags: dict[Positive, list[str]] = Field(default_factory=dict)
    prelude: list[InjectionItem] = Field(default_factory=list)
    # Marianne computes or fills these itself; a score may carry them (ignored, warned).
    total_sheets: int | None = None
    fan_out_stage_map: dict[Positive, dict[str, int]] | None = None

    @field_validator("skip_when")
    @classmethod
    def _expressions_parse(cls, rules: dict[int, str]) -> dict[int, str]:
        for stage, expression in rules.items():
            try:
                parse_skip_expression(expression)
            except ConditionError as exc:
                raise ValueError(f"stage {stage}: {exc.message}") from None
        return rules

    @field_validator("instrument_map")
    @classmethod
    def _each_sheet_once(cls, mapping: dict[str, list[int]]) -> dict[str, list[int]]:
        owner: dict[int, str] = {}
        for instrument, sheets in mapping.items():
            for sheet in sheets:
                if sheet in owner and owner[sheet] != instrument:
                    raise ValueError(
                        f"sheet {sheet} is listed under both '{owner[sheet]}' and "
                        f"'{instrument}'; list each sheet under one instrument"
                    )
                if sheet in owner:
                    raise ValueError(
                        f"sheet {sheet} is listed twice under '{instrument}'; list it once"
                    )
                owner[sheet] = instrument
        return mapping

    @model_validator(mode="after")
    def _fan_out_shape(self) -> SheetConfig:
        if self.fan_out and (self.size != 1 or self.start_item != 1):
            raise ValueError(
                f"fan_out needs size: 1 and start_item: 1 (got size: {self.size}, "
                f"start_item: {self.start_item}); each stage is one item"
            )
        return self


# --- prompt --------------------------------------------------------------------------------


class PromptConfig(Section):
    template: str | None = None
    template_file: str | None = None
    variables: dict[str, Any] = Field(default_factory=dict)
    stakes: str | None = None
    thinking_method: str | None = None
    prompt_extensions: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_source(self) -> PromptConfig:
        if self.template is not None and self.template_file is not None:
            raise ValueError("give either 'template' or 'template_file', not both")
        return self


# --- validations ---------------------------------------------------------------------------

ValidationType = Literal[
    "file_exists", "file_modified", "content_contains", "content_regex", "command_succeeds"
]


class ValidationRule(Section):
    type: ValidationType
    path: str | None = None
    pattern: str | None = None
    description: str | None = None
    command: str | None = None
    working_directory: str | None = None
    stage: int = Field(default=1, ge=1, le=10)
    condition: str | None = None
    sheet: int | None = Field(default=None, ge=1)
    timeout_seconds: float | None = Field(default=None, gt=0)
    # Accepted for compatibility: Ensemble validates after the instrument has
    # exited, so the filesystem races these paper over do not arise.
    retry_count: int = Field(default=3, ge=0, le=10)
    retry_delay_ms: int = Field(default=200, ge=0, le=5000)

    @field_validator("condition")
    @classmethod
    def _condition_parses(cls, condition: str | None) -> str | None:
        if condition is not None:
            try:
                parse_validation_condition(condition)
            except ConditionError as exc:
                raise ValueError(exc.message) from None
        return condition

    @model_validator(mode="after")
    def _fields_for_type(self) -> ValidationRule:
        if self.type == "command_succeeds":
            if not self.command:
                raise ValueError("a command_succeeds validation needs 'command'")
        elif not self.path:
            raise ValueError(f"a {self.type} validation needs 'path'")
        if self.type in ("content_contains", "content_regex") and self.pattern is None:
            raise ValueError(f"a {self.type} validation needs 'pattern'")
        if self.type == "content_regex" and self.pattern is not None:
            check_regex(self.pattern)
        return self

    @property
    def effective_condition(self) -> str | None:
        """``condition``, or ``sheet_num == N`` from the ``sheet: N`` shorthand."""
        if self.condition is not None:
            return self.condition
        if self.sheet is not None:
            return f"sheet_num == {self.sheet}"
        return None


# --- execution settings ------------------------------------------------------------------


class RetryConfig(Section):
    max_retries: int = Field(default=3, ge=0)
    base_delay_seconds: float = Field(default=10.0, ge=0)
    max_delay_seconds: float = Field(default=3600.0, gt=0)
    exponential_base: float = Field(default=2.0, ge=1)
    jitter: bool = True
    max_completion_attempts: int = Field(default=5, ge=0)
    completion_delay_seconds: float = Field(default=5.0, ge=0)
    completion_threshold_percent: float = Field(default=50.0, gt=0, le=100)

    @model_validator(mode="after")
    def _delays_ordered(self) -> RetryConfig:
        if self.base_delay_seconds > self.max_delay_seconds:
            raise ValueError(
                f"base_delay_seconds ({self.base_delay_seconds}) must not exceed "
                f"max_delay_seconds ({self.max_delay_seconds})"
            )
        return self


_DEFAULT_RATE_LIMIT_PATTERNS = (
    r"rate.?limit",
    r"usage.?limit",
    r"quota",
    r"too many requests",
    r"429",
    r"capacity",
    r"try again later",
)


class RateLimitConfig(Section):
    detection_patterns: list[str] = Field(
        default_factory=lambda: list(_DEFAULT_RATE_LIMIT_PATTERNS)
    )
    wait_minutes: float = Field(default=60, gt=0)
    max_waits: int = Field(default=24, ge=1)
    max_quota_waits: int = Field(default=48, ge=1)

    @field_validator("detection_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for index, pattern in enumerate(patterns):
            check_regex(pattern, f"detection_patterns[{index}]")
        return patterns


class CircuitBreakerConfig(Section):
    enabled: bool = True
    failure_threshold: int = Field(default=5, ge=1, le=100)
    recovery_timeout_seconds: float = Field(default=300.0, gt=0, le=3600)
    cross_workspace_coordination: bool = True
    honor_other_jobs_rate_limits: bool = True


class CostLimitConfig(Section):
    enabled: bool = False
    max_cost_per_sheet: float | None = Field(default=None, gt=0)
    max_cost_per_job: float | None = Field(default=None, gt=0)
    cost_per_1k_input_tokens: float = Field(default=0.003, gt=0)
    cost_per_1k_output_tokens: float = Field(default=0.015, gt=0)
    warn_at_percent: float = Field(default=80.0, gt=0, le=100)

    @model_validator(mode="before")
    @classmethod
    def _limits_enable(cls, data: Any) -> Any:
        # Setting a limit turns cost tracking on unless 'enabled' says otherwise.
        if (
            isinstance(data, Mapping)
            and "enabled" not in data
            and (
                data.get("max_cost_per_sheet") is not None
                or data.get("max_cost_per_job") is not None
            )
        ):
            return {**data, "enabled": True}
        return data

    @model_validator(mode="after")
    def _enabled_needs_limit(self) -> CostLimitConfig:
        if self.enabled and self.max_cost_per_sheet is None and self.max_cost_per_job is None:
            raise ValueError(
                "cost limits are enabled but neither max_cost_per_sheet nor max_cost_per_job is set"
            )
        return self


class ParallelConfig(Section):
    enabled: bool = False
    max_concurrent: int = Field(default=3, ge=1)
    fail_fast: bool = True
    budget_partition: bool = True
    stagger_delay_ms: int = Field(default=0, ge=0, le=5000)


class CrossSheetConfig(Section):
    auto_capture_stdout: bool = False
    max_output_chars: int = Field(default=2000, gt=0)
    capture_files: list[str] = Field(default_factory=list)
    lookback_sheets: int = Field(default=3, ge=0)


# --- instruments and backend -------------------------------------------------------------


class InstrumentDef(Section):
    """A score-local alias: ``profile`` plus config merged over the score's."""

    profile: str = Field(min_length=1)
    config: dict[str, Any] = Field(default_factory=dict)


class MovementDef(Section):
    name: str | None = None
    description: str | None = None
    instrument: str | None = Field(default=None, min_length=1)
    instrument_config: dict[str, Any] = Field(default_factory=dict)
    instrument_fallbacks: list[str] = Field(default_factory=list)
    # Shorthand for ``sheet.fan_out: {movement: voices}``.
    voices: int | None = Field(default=None, ge=1)


class SheetBackendOverride(Section):
    cli_model: str | None = None
    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    timeout_seconds: float | None = Field(default=None, gt=0)


class RecursiveLightConfig(Section):
    endpoint: str = "http://localhost:8080"
    user_id: str | None = None
    timeout: float = Field(default=30.0, gt=0)


class OllamaConfig(Section):
    base_url: str = "http://localhost:11434"
    model: str = "llama3.1:8b"
    num_ctx: int = Field(default=32768, ge=4096)
    dynamic_tools: bool = True
    compression_level: Literal["minimal", "moderate", "aggressive"] = "moderate"
    timeout_seconds: float = Field(default=300.0, gt=0)
    keep_alive: str = "5m"
    max_tool_iterations: int = Field(default=10, ge=1, le=50)
    health_check_timeout: float = 10.0


DEFAULT_BACKEND_TYPE = "claude_cli"


class BackendConfig(Section):
    type: str = Field(default=DEFAULT_BACKEND_TYPE, min_length=1)
    timeout_seconds: float = Field(default=1800.0, gt=0)
    timeout_overrides: dict[Positive, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    sheet_overrides: dict[Positive, SheetBackendOverride] = Field(default_factory=dict)
    skip_permissions: bool = True
    disable_mcp: bool = True
    output_format: Literal["json", "text", "stream-json"] = "text"
    cli_model: str | None = None
    allowed_tools: list[str] | None = None
    system_prompt_file: str | None = None
    working_directory: str | None = None
    cli_extra_args: list[str] = Field(default_factory=list)
    max_output_capture_bytes: int = Field(default=51200, gt=0)
    model: str | None = None
    api_key_env: str = "ANTHROPIC_API_KEY"
    max_tokens: int = Field(default=16384, ge=1)
    temperature: float = Field(default=0.7, ge=0, le=1)
    recursive_light: RecursiveLightConfig = Field(default_factory=RecursiveLightConfig)
    ollama: OllamaConfig = Field(default_factory=OllamaConfig)


# --- chaining ------------------------------------------------------------------------------


class PostSuccessHook(Section):
    type: Literal["run_job", "run_command", "run_script"]
    job_path: str | None = None
    job_workspace: str | None = None
    inherit_learning: bool = True
    command: str | None = None
    working_directory: str | None = None
    description: str | None = None
    on_failure: Literal["continue", "abort"] = "continue"
    timeout_seconds: float = Field(default=300.0, gt=0)
    detached: bool = False
    fresh: bool = False
    pause_before_chain: bool = False

    @model_validator(mode="after")
    def _fields_for_type(self) -> PostSuccessHook:
        if self.type == "run_job" and not self.job_path:
            raise ValueError("a run_job hook needs 'job_path'")
        if self.type != "run_job" and not self.command:
            raise ValueError(f"a {self.type} hook needs 'command'")
        return self


class ConcertConfig(Section):
    enabled: bool = False
    max_chain_depth: int = Field(default=5, ge=1, le=100)
    cooldown_between_jobs_seconds: float = Field(default=5.0, ge=0)
    inherit_workspace: bool = True
    concert_log_path: str | None = None
    abort_concert_on_hook_failure: bool = False


# --- the score -----------------------------------------------------------------------------


class Score(Section):
    """A parsed score. ``workspace`` is absolute once loaded from a file or mapping."""

    name: str = Field(min_length=1)
    description: str | None = None
    workspace: str = "./workspace"
    instrument: str | None = Field(default=None, min_length=1)
    instrument_config: dict[str, Any] = Field(default_factory=dict)
    instrument_fallbacks: list[str] = Field(default_factory=list)
    instruments: dict[str, InstrumentDef] = Field(default_factory=dict)
    movements: dict[Positive, MovementDef] = Field(default_factory=dict)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    sheet: SheetConfig
    prompt: PromptConfig
    validations: list[ValidationRule] = Field(default_factory=list)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    cost_limits: CostLimitConfig = Field(default_factory=CostLimitConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    cross_sheet: CrossSheetConfig | None = None
    pause_between_sheets_seconds: float = Field(default=2.0, ge=0)
    on_success: list[PostSuccessHook] = Field(default_factory=list)
    concert: ConcertConfig = Field(default_factory=ConcertConfig)
    # Accepted, type-checked, warned about: not acted on yet (runtime.score_extras).
    notifications: list[NotificationConfig] = Field(default_factory=list)
    state_backend: Literal["json", "sqlite"] = "sqlite"
    state_path: str | None = None
    isolation: IsolationConfig = Field(default_factory=IsolationConfig)
    workspace_lifecycle: WorkspaceLifecycleConfig = Field(default_factory=WorkspaceLifecycleConfig)
    techniques: dict[str, TechniqueConfig] = Field(default_factory=dict)
    spec: SpecConfig = Field(default_factory=SpecConfig)
    learning: LearningConfig = Field(default_factory=LearningConfig)
    grounding: GroundingConfig = Field(default_factory=GroundingConfig)
    checkpoints: CheckpointConfig = Field(default_factory=CheckpointConfig)
    ai_review: AIReviewConfig = Field(default_factory=AIReviewConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    logging: LogConfig = Field(default_factory=LogConfig)
    conductor: ConductorConfig = Field(default_factory=ConductorConfig)
    bridge: BridgeConfig | None = None
    agent_card: dict[str, Any] | None = None
    stale_detection: StaleDetectionConfig = Field(default_factory=StaleDetectionConfig)

    _warnings: list[str] = PrivateAttr(default_factory=list)
    _source: str | None = PrivateAttr(default=None)
    _base_dir: str | None = PrivateAttr(default=None)
    _lines: dict[tuple[Any, ...], int] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _one_instrument_selector(self) -> Score:
        if self.instrument is not None and self.backend.type != DEFAULT_BACKEND_TYPE:
            raise ValueError(
                f"both 'instrument: {self.instrument}' and 'backend.type: {self.backend.type}' "
                "are set; keep one of them"
            )
        return self

    @property
    def warnings(self) -> list[str]:
        """Keys that were accepted but have no effect, and similar notes from loading."""
        return list(self._warnings)

    @property
    def source(self) -> str | None:
        """The file this score was loaded from, if any."""
        return self._source

    @property
    def base_dir(self) -> str | None:
        """The folder relative paths of the score resolve against (its file's folder)."""
        return self._base_dir

    def line_of(self, key_path: Sequence[Any]) -> int | None:
        """The YAML line of the deepest known key along ``key_path``."""
        return line_at(self._lines, key_path)

    def error(self, message: str, *key_path: Any) -> ScoreError:
        """A ``ScoreError`` at ``key_path`` with this score's file and line."""
        return ScoreError(
            message,
            key_path=".".join(str(part) for part in key_path) or None,
            source=self._source,
            line=self.line_of(key_path),
        )


def score_warnings(score: Score) -> list[str]:
    return score.warnings


# Marianne's legacy ``backend.type`` values and the instrument each one means.
_LEGACY_BACKENDS = {"claude_cli": "claude-code", "anthropic_api": "claude-code"}


def legacy_instrument(backend_type: str) -> str:
    return _LEGACY_BACKENDS.get(backend_type, backend_type)


# --- loading -------------------------------------------------------------------------------


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
    data, lines, duplicates = parse_yaml(text, source_name=source_name, error=ScoreError)
    if not isinstance(data, Mapping):
        raise ScoreError(
            "a score must be a YAML mapping with at least 'name', 'sheet' and 'prompt'",
            source=source_name,
        )
    return score_from_mapping(
        data,
        base_dir=base_dir,
        source_name=source_name,
        lines=lines,
        notes=duplicate_notes(duplicates),
    )


def score_from_mapping(
    data: Mapping[str, Any],
    *,
    base_dir: Path,
    source_name: str,
    lines: Mapping[tuple[Any, ...], int] | None = None,
    notes: Sequence[str] = (),
) -> Score:
    lines = dict(lines or {})
    if not isinstance(data, Mapping):
        raise ScoreError(
            "a score must be a mapping with at least 'name', 'sheet' and 'prompt'",
            source=source_name,
        )
    try:
        score = Score.model_validate(dict(data))
    except ValidationError as exc:
        raise located_validation_error(
            exc, data, source=source_name, lines=lines, root=Score, error=ScoreError
        ) from None
    except RecursionError:
        raise ScoreError("the score is nested too deeply", source=source_name) from None
    located = _Located(source_name, lines)
    workspace = Path(score.workspace).expanduser()
    if not workspace.is_absolute():
        workspace = (base_dir / workspace).resolve()
    prompt = score.prompt
    updates: dict[str, Any] = {}
    if prompt.template_file is not None:
        template_path = Path(prompt.template_file).expanduser()
        if not template_path.is_absolute():
            template_path = (base_dir / template_path).resolve()
        updates["template"] = located.read(
            template_path, ("prompt", "template_file"), "template file"
        )
        updates["template_file"] = None
    if prompt.prompt_extensions:
        updates["prompt_extensions"] = [
            _extension_text(text, base_dir, located, ("prompt", "prompt_extensions", index))
            for index, text in enumerate(prompt.prompt_extensions)
        ]
    sheet = score.sheet
    if sheet.prompt_extensions:
        sheet = sheet.model_copy(
            update={
                "prompt_extensions": {
                    num: [
                        _extension_text(
                            text, base_dir, located, ("sheet", "prompt_extensions", num, index)
                        )
                        for index, text in enumerate(texts)
                    ]
                    for num, texts in sheet.prompt_extensions.items()
                }
            }
        )
    if updates:
        prompt = prompt.model_copy(update=updates)
    loaded = score.model_copy(
        update={"workspace": str(workspace), "prompt": prompt, "sheet": sheet}
    )
    loaded._source = source_name
    loaded._base_dir = str(base_dir)
    loaded._lines = lines
    loaded._warnings = [*notes, *_warnings_for(data, score)]
    for warning in loaded._warnings:
        logger.warning("{}: {}", source_name, warning)
    return loaded


class _Located:
    """Reads files named by a score, turning failures into located errors."""

    def __init__(self, source: str, lines: Mapping[tuple[Any, ...], int]) -> None:
        self.source = source
        self.lines = lines

    def error(self, message: str, key_path: tuple[Any, ...]) -> ScoreError:
        return ScoreError(
            message,
            key_path=".".join(str(part) for part in key_path),
            source=self.source,
            line=line_at(self.lines, key_path),
        )

    def read(self, path: Path, key_path: tuple[Any, ...], what: str) -> str:
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise self.error(f"cannot read {what} {path}: {reason}", key_path) from None


_EXTENSION_FILE = re.compile(r"[^\n]+\.(md|txt)")


def _extension_text(text: str, base_dir: Path, located: _Located, key_path: tuple[Any, ...]) -> str:
    """A prompt extension is inline text, or a .md/.txt file next to the score."""
    if not _EXTENSION_FILE.fullmatch(text.strip()):
        return text
    path = Path(text.strip()).expanduser()
    if not path.is_absolute():
        path = (base_dir / path).resolve()
    return located.read(path, key_path, "prompt extension file")


def _warnings_for(data: Mapping[str, Any], score: Score) -> list[str]:
    notes = [
        f"{key}: accepted but not acted on by Ensemble yet; it has no effect"
        for key in NOT_ACTED_ON
        if key in data
    ]
    for section, key in NOT_ACTED_ON_NESTED:
        values = data.get(section)
        if isinstance(values, Mapping) and key in values:
            notes.append(
                f"{section}.{key}: accepted but not acted on by Ensemble yet; it has no effect"
            )
    sheet = data.get("sheet")
    if isinstance(sheet, Mapping):
        for key in ("total_sheets", "fan_out_stage_map"):
            if key in sheet:
                notes.append(f"sheet.{key}: computed by the planner; the value given is ignored")
    if score.prompt.template is None and score.prompt.template_file is None:
        notes.append(
            "prompt: neither 'template' nor 'template_file' is set; sheets get an empty template"
        )
    if not score.parallel.budget_partition:
        notes.append("parallel.budget_partition: false is not acted on; costs are checked per job")
    return notes
