"""Score sections Ensemble accepts for compatibility but does not act on yet.

Marianne's scores may carry ``notifications``, ``state_backend``,
``state_path``, ``isolation``, ``workspace_lifecycle``, ``techniques``,
``spec``, ``learning``, ``grounding``, ``checkpoints``, ``ai_review``,
``feedback``, ``logging``, ``conductor``, ``bridge``, ``agent_card`` and
``stale_detection`` (SCORE_FORMAT.md). This module owns their shapes, so a
typo or a wrong type in them is still an error naming the key, while the
loader (``runtime.score``) warns that they have no effect. It holds no
behaviour: when one of them is implemented, its model moves next to the code
that acts on it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """Base of every score model: unknown keys are errors, values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def check_regex(pattern: str, where: str | None = None) -> str:
    """``pattern`` if it compiles, else a ValueError quoting it (and ``where``,
    e.g. a list index, when the field's key path alone does not say)."""
    try:
        re.compile(pattern)
    except re.error as exc:
        place = f" in {where}" if where else ""
        raise ValueError(f"invalid regular expression {pattern!r}{place}: {exc}") from None
    return pattern


NotificationEvent = Literal[
    "job_start",
    "sheet_start",
    "sheet_complete",
    "sheet_failed",
    "job_complete",
    "job_failed",
    "job_paused",
]


def _default_notification_events() -> list[NotificationEvent]:
    return ["job_complete", "job_failed"]


class NotificationConfig(Section):
    type: Literal["desktop", "slack", "webhook", "email"]
    on_events: list[NotificationEvent] = Field(default_factory=_default_notification_events)
    config: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _channel_target(self) -> NotificationConfig:
        needs = {"webhook": ("url", "url_env"), "slack": ("webhook_url", "webhook_url_env")}
        keys = needs.get(self.type)
        if keys and not any(self.config.get(key) for key in keys):
            raise ValueError(
                f"a {self.type} notification needs '{keys[0]}' or '{keys[1]}' in its config"
            )
        return self


class IsolationConfig(Section):
    enabled: bool = False
    mode: Literal["none", "worktree"] = "worktree"
    worktree_base: str | None = None
    branch_prefix: str = Field(default="marianne", pattern=r"^[a-zA-Z][a-zA-Z0-9_-]*$")
    source_branch: str | None = None
    cleanup_on_success: bool = True
    cleanup_on_failure: bool = False
    lock_during_execution: bool = True
    fallback_on_error: bool = True


class WorkspaceLifecycleConfig(Section):
    archive_on_fresh: bool = False
    archive_dir: str = "archive"
    archive_naming: Literal["iteration", "timestamp"] = "iteration"
    max_archives: int = Field(default=0, ge=0)
    preserve_patterns: list[str] = Field(
        default_factory=lambda: [
            ".iteration",
            ".marianne-*",
            ".coverage",
            "archive/**",
            ".worktrees/**",
        ]
    )

    @field_validator("preserve_patterns")
    @classmethod
    def _no_empty_pattern(cls, patterns: list[str]) -> list[str]:
        if any(not pattern for pattern in patterns):
            raise ValueError("preserve_patterns must not contain empty strings")
        return patterns


class TechniqueConfig(Section):
    kind: Literal["skill", "mcp", "protocol"]
    phases: list[str]
    required: bool = False
    config: dict[str, Any] = Field(default_factory=dict)


class SpecFragment(Section):
    name: str = Field(min_length=1)
    content: str = Field(min_length=1)
    tags: list[str] = Field(default_factory=list)
    kind: Literal["text", "structured"] = "text"
    data: dict[str, Any] | None = None


class SpecConfig(Section):
    spec_dir: str = ""
    include_claude_md: bool = False
    fragments: list[SpecFragment] = Field(default_factory=list)


class ExplorationBudgetConfig(Section):
    enabled: bool = False
    floor: float = Field(default=0.05, ge=0, le=1)
    ceiling: float = Field(default=0.5, ge=0, le=1)
    decay_rate: float = Field(default=0.95, ge=0, le=1)
    boost_amount: float = Field(default=0.1, ge=0, le=0.5)
    initial_budget: float = Field(default=0.15, ge=0, le=1)


class EntropyResponseConfig(Section):
    enabled: bool = False
    entropy_threshold: float = Field(default=0.3, ge=0, le=1)
    cooldown_seconds: int = Field(default=3600, ge=60)
    boost_budget: bool = True
    revisit_quarantine: bool = True
    max_quarantine_revisits: int = Field(default=3, ge=0, le=10)


class AutoApplyConfig(Section):
    enabled: bool = False
    trust_threshold: float = Field(default=0.85, ge=0, le=1)
    max_patterns_per_sheet: int = Field(default=3, ge=1, le=10)
    require_validated_status: bool = True
    log_applications: bool = True


class LearningConfig(Section):
    enabled: bool = True
    outcome_store_type: Literal["json", "sqlite"] = "json"
    outcome_store_path: str | None = None
    min_confidence_threshold: float = Field(default=0.3, ge=0, le=1)
    high_confidence_threshold: float = Field(default=0.7, ge=0, le=1)
    escalation_enabled: bool = False
    use_global_patterns: bool = True
    exploration_rate: float = Field(default=0.15, ge=0, le=1)
    exploration_min_priority: float = Field(default=0.05, ge=0, le=1)
    entropy_alert_threshold: float = Field(default=0.5, ge=0, le=1)
    entropy_check_interval: int = Field(default=100, ge=1)
    auto_apply_enabled: bool = False
    auto_apply_trust_threshold: float = Field(default=0.85, ge=0, le=1)
    exploration_budget: ExplorationBudgetConfig = Field(default_factory=ExplorationBudgetConfig)
    entropy_response: EntropyResponseConfig = Field(default_factory=EntropyResponseConfig)
    auto_apply: AutoApplyConfig | None = None


class GroundingHookConfig(Section):
    type: Literal["file_checksum"]
    name: str | None = None
    expected_checksums: dict[str, str] = Field(default_factory=dict)
    checksum_algorithm: Literal["md5", "sha256"] = "sha256"


class GroundingConfig(Section):
    enabled: bool = False
    hooks: list[GroundingHookConfig] = Field(default_factory=list)
    fail_on_grounding_failure: bool = True
    escalate_on_failure: bool = True
    timeout_seconds: float = Field(default=30.0, gt=0)


class CheckpointTriggerConfig(Section):
    name: str
    sheet_nums: list[int] | None = None
    prompt_contains: list[str] | None = None
    min_retry_count: int | None = Field(default=None, ge=0)
    requires_confirmation: bool = True
    message: str = ""


class CheckpointConfig(Section):
    enabled: bool = False
    triggers: list[CheckpointTriggerConfig] = Field(default_factory=list)


class AIReviewConfig(Section):
    enabled: bool = False
    min_score: int = Field(default=60, ge=0, le=100)
    target_score: int = Field(default=80, ge=0, le=100)
    on_low_score: Literal["retry", "warn", "fail"] = "warn"
    max_retry_for_review: int = Field(default=2, ge=0, le=5)
    review_prompt_template: str | None = None


class FeedbackConfig(Section):
    enabled: bool = False
    pattern: str = r"(?s)FEEDBACK_START(.+?)FEEDBACK_END"
    format: Literal["json", "yaml", "text"] = "json"

    @field_validator("pattern")
    @classmethod
    def _pattern_is_regex(cls, pattern: str) -> str:
        return check_regex(pattern)


class LogConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console", "both"] = "console"
    file_path: str | None = None
    max_file_size_mb: int = Field(default=50, gt=0, le=1000)
    backup_count: int = Field(default=5, ge=0, le=100)
    include_timestamps: bool = True
    include_context: bool = True


class ConductorPreferences(Section):
    prefer_minimal_output: bool = False
    escalation_response_timeout_seconds: float = Field(default=300.0, gt=0)
    auto_retry_on_transient_errors: bool = True
    notification_channels: list[str] = Field(default_factory=list)


class ConductorConfig(Section):
    name: str = Field(default="default", min_length=1, max_length=100)
    role: Literal["human", "ai", "hybrid"] = "human"
    identity_context: str | None = Field(default=None, max_length=500)
    preferences: ConductorPreferences = Field(default_factory=ConductorPreferences)


class MCPServerConfig(Section):
    name: str
    command: str
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = None
    timeout_seconds: float = 30.0


class BridgeConfig(Section):
    enabled: bool = False
    mcp_proxy_enabled: bool = True
    mcp_servers: list[MCPServerConfig] = Field(default_factory=list)
    hybrid_routing_enabled: bool = False
    complexity_threshold: float = Field(default=0.7, ge=0, le=1)
    fallback_to_claude: bool = True
    context_budget_percent: int = Field(default=75, ge=10, le=95)


class StaleDetectionConfig(Section):
    enabled: bool = False
    idle_timeout_seconds: float = Field(default=300.0, gt=0)
    check_interval_seconds: float = Field(default=30.0, gt=0)
    max_idle_checks_before_kill: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _interval_below_timeout(self) -> StaleDetectionConfig:
        if self.check_interval_seconds >= self.idle_timeout_seconds:
            raise ValueError(
                f"check_interval_seconds ({self.check_interval_seconds}) must be less than "
                f"idle_timeout_seconds ({self.idle_timeout_seconds})"
            )
        return self


# Top-level keys accepted and type-checked but not acted on (each warns when present).
# Keys inside sections the engine acts on, that it does not act on itself yet.
NOT_ACTED_ON_NESTED = (
    ("rate_limit", "detection_patterns"),
    ("rate_limit", "max_quota_waits"),
    ("cost_limits", "cost_per_1k_input_tokens"),
    ("cost_limits", "cost_per_1k_output_tokens"),
    ("parallel", "fail_fast"),
    ("parallel", "stagger_delay_ms"),
)

NOT_ACTED_ON = (
    "on_success",
    "concert",
    "notifications",
    "state_backend",
    "state_path",
    "isolation",
    "workspace_lifecycle",
    "techniques",
    "spec",
    "learning",
    "grounding",
    "checkpoints",
    "ai_review",
    "feedback",
    "logging",
    "conductor",
    "bridge",
    "agent_card",
    "stale_detection",
)
