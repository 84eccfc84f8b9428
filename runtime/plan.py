"""Planning: from a score to numbered sheets and their dependency graph.

Owns the sheet count and item ranges, fan-out expansion of stages into sheets,
stage-level dependencies expanded to sheets (SEMANTICS S3, S4) and checked for
unknown stages, self-dependencies and cycles, and the per-sheet resolution of
instrument, instrument config, model, fallbacks and timeout in Marianne's order
(SCORE_FORMAT.md). It also carries, per sheet and per job, the settings the
decision core and the sheet actor act on (skip conditions, retry policy,
validations, injections). Pure: no I/O, no actors.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from runtime.score import (
    DEFAULT_BACKEND_TYPE,
    CircuitBreakerConfig,
    CostLimitConfig,
    CrossSheetConfig,
    InjectionItem,
    RateLimitConfig,
    RetryConfig,
    Score,
    SkipWhenCommand,
    ValidationRule,
    legacy_instrument,
)

# Planning is linear, but a typo such as `total_items: 10000000000` must be an
# error, not a process that allocates sheets until it is killed.
MAX_SHEETS = 100_000

# Instruments whose profile says `raw_prompt: true`: they get the rendered
# template alone. The runtime passes the set from its profiles; this default
# covers the built-in shell instrument.
DEFAULT_RAW_PROMPT_INSTRUMENTS: frozenset[str] = frozenset({"cli"})

_NO_CONFIG: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SheetPlan:
    num: int
    start_item: int
    end_item: int
    instrument: str
    timeout_seconds: float
    stage: int
    instance: int = 1
    fan_count: int = 1
    model: str | None = None
    instrument_config: Mapping[str, Any] = field(default_factory=lambda: _NO_CONFIG)
    # Fallback instruments in order, each with the model its alias sets (None: the
    # profile's default).
    fallbacks: tuple[str, ...] = ()
    fallback_models: tuple[str | None, ...] = ()
    description: str | None = None
    movement_name: str | None = None
    # S5, from the sheet's stage: evaluated when the sheet becomes ready.
    skip_when: str | None = None
    skip_when_command: SkipWhenCommand | None = None
    cadenzas: tuple[InjectionItem, ...] = ()
    prompt_extensions: tuple[str, ...] = ()
    spec_tags: tuple[str, ...] = ()
    raw_prompt: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the decision core needs to know about a job's sheets."""

    name: str
    sheets: tuple[SheetPlan, ...]
    dependencies: Mapping[int, tuple[int, ...]]
    dependents: Mapping[int, tuple[int, ...]]
    max_parallel: int = 1
    workspace: str = "."
    # The score's folder: injected files not found in the workspace are looked up here.
    score_dir: str | None = None
    instruments: frozenset[str] = field(default_factory=frozenset)
    fallback_instruments: frozenset[str] = field(default_factory=frozenset)
    total_stages: int = 0
    stage_sheets: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    retry: RetryConfig = field(default_factory=RetryConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    cost_limits: CostLimitConfig = field(default_factory=CostLimitConfig)
    pause_between_sheets_seconds: float = 2.0
    cross_sheet: CrossSheetConfig | None = None
    validations: tuple[ValidationRule, ...] = ()
    prelude: tuple[InjectionItem, ...] = ()
    stakes: str | None = None
    thinking_method: str | None = None
    prompt_extensions: tuple[str, ...] = ()
    # Instruments whose profile has raw_prompt (a fallback may be one of them).
    raw_prompt_instruments: frozenset[str] = DEFAULT_RAW_PROMPT_INSTRUMENTS
    warnings: tuple[str, ...] = ()

    @property
    def total_sheets(self) -> int:
        return len(self.sheets)

    def sheet(self, num: int) -> SheetPlan:
        return self.sheets[num - 1]


def sheet_count(total_items: int, size: int, start_item: int = 1) -> int:
    items = total_items - start_item + 1
    return max(0, -(-items // size))


@dataclass(frozen=True, slots=True)
class _Stage:
    stage: int
    instance: int
    fan_count: int


def build_plan(
    score: Score,
    *,
    raw_prompt_instruments: Collection[str] = DEFAULT_RAW_PROMPT_INSTRUMENTS,
) -> Plan:
    sheet_cfg = score.sheet
    warnings: list[str] = []
    fan_out = _fan_out(score)
    if fan_out:
        total_stages = sheet_cfg.total_items
        for stage in fan_out:
            if stage > total_stages:
                raise score.error(
                    f"stage {stage} does not exist (the score has {total_stages} stages, "
                    "set by total_items)",
                    "sheet",
                    "fan_out",
                    stage,
                )
        count = total_stages + sum(fan_out.values()) - len(fan_out)
    else:
        count = sheet_count(sheet_cfg.total_items, sheet_cfg.size, sheet_cfg.start_item)
        total_stages = count
    if count > MAX_SHEETS:
        raise score.error(
            f"the score expands to {count} sheets; Ensemble plans at most {MAX_SHEETS} per job",
            "sheet",
            "fan_out" if fan_out else "total_items",
        )

    stages: list[_Stage] = []
    stage_sheets: dict[int, tuple[int, ...]] = {}
    for stage in range(1, total_stages + 1):
        fan_count = fan_out.get(stage, 1)
        first = len(stages) + 1
        stages.extend(_Stage(stage, instance, fan_count) for instance in range(1, fan_count + 1))
        stage_sheets[stage] = tuple(range(first, first + fan_count))

    declared = _declared_dependencies(score, total_stages, "stage" if fan_out else "sheet")
    dependencies = _expand_dependencies(declared, stage_sheets, total_stages)
    _check_sheet_keys(score, count, total_stages, warnings)

    resolver = _Resolver(score, frozenset(raw_prompt_instruments))
    sheets = []
    for num, meta in enumerate(stages, start=1):
        if fan_out:
            start = end = num
        else:
            start = (num - 1) * sheet_cfg.size + sheet_cfg.start_item
            end = min(start + sheet_cfg.size - 1, sheet_cfg.total_items)
        sheets.append(resolver.sheet(num, meta, start, end))

    return Plan(
        name=score.name,
        sheets=tuple(sheets),
        dependencies=dependencies,
        dependents=reverse_dependencies(dependencies),
        max_parallel=score.parallel.max_concurrent if score.parallel.enabled else 1,
        workspace=score.workspace,
        score_dir=score.base_dir,
        instruments=frozenset(sheet.instrument for sheet in sheets),
        fallback_instruments=frozenset(name for sheet in sheets for name in sheet.fallbacks),
        total_stages=total_stages,
        stage_sheets=stage_sheets,
        retry=score.retry,
        rate_limit=score.rate_limit,
        circuit_breaker=score.circuit_breaker,
        cost_limits=score.cost_limits,
        pause_between_sheets_seconds=score.pause_between_sheets_seconds,
        cross_sheet=score.cross_sheet,
        validations=tuple(score.validations),
        prelude=tuple(score.sheet.prelude),
        stakes=score.prompt.stakes,
        thinking_method=score.prompt.thinking_method,
        prompt_extensions=tuple(score.prompt.prompt_extensions),
        raw_prompt_instruments=frozenset(raw_prompt_instruments),
        warnings=tuple(warnings),
    )


def _fan_out(score: Score) -> dict[int, int]:
    """``sheet.fan_out`` plus ``movements.N.voices`` (the explicit fan_out wins)."""
    fan_out = {
        movement: definition.voices
        for movement, definition in score.movements.items()
        if definition.voices is not None
    }
    fan_out.update(score.sheet.fan_out)
    if fan_out and (score.sheet.size != 1 or score.sheet.start_item != 1):
        raise score.error(
            "movement voices need size: 1 and start_item: 1; each stage is one item",
            "sheet",
        )
    return {stage: count for stage, count in fan_out.items() if count > 0}


# --- dependencies --------------------------------------------------------------------------


def _declared_dependencies(
    score: Score, total_stages: int, unit: str
) -> dict[int, tuple[int, ...]]:
    """The score's dependency map (by stage, or by sheet without fan-out), checked."""
    declared: dict[int, tuple[int, ...]] = {}
    for node, deps in score.sheet.dependencies.items():
        if node > total_stages:
            raise score.error(
                f"{unit} {node} does not exist (the score has {total_stages} {unit}s)",
                "sheet",
                "dependencies",
                node,
            )
        for index, dep in enumerate(deps):
            if dep == node:
                raise score.error(
                    f"{unit} {node} depends on itself; remove {dep} from its list",
                    "sheet",
                    "dependencies",
                    node,
                    index,
                )
            if dep > total_stages:
                raise score.error(
                    f"{unit} {node} depends on {unit} {dep}, which does not exist "
                    f"(the score has {total_stages} {unit}s)",
                    "sheet",
                    "dependencies",
                    node,
                    index,
                )
        declared[node] = tuple(dict.fromkeys(deps))
    cycle = find_cycle(declared)
    if cycle:
        raise score.error(
            f"dependency cycle between {unit}s: " + " -> ".join(str(n) for n in cycle),
            "sheet",
            "dependencies",
            cycle[0],
        )
    return declared


def _expand_dependencies(
    declared: Mapping[int, Sequence[int]],
    stage_sheets: Mapping[int, tuple[int, ...]],
    total_stages: int,
) -> dict[int, tuple[int, ...]]:
    """S3/S4: stage-level dependencies as sheet-level ones."""
    expanded: dict[int, set[int]] = {}
    if not declared:
        # S3: without a map, each stage depends on all of the previous stage.
        for stage in range(2, total_stages + 1):
            previous = stage_sheets[stage - 1]
            for sheet in stage_sheets[stage]:
                expanded[sheet] = set(previous)
    for stage, deps in declared.items():
        targets = stage_sheets[stage]
        for dep in deps:
            sources = stage_sheets[dep]
            if len(sources) == 1 or len(targets) == 1 or len(sources) != len(targets):
                # 1->N, N->1 and N->M (all-to-all); 1->1 is the trivial case of each.
                for target in targets:
                    expanded.setdefault(target, set()).update(sources)
            else:
                # N->N: instance i depends on instance i.
                for target, source in zip(targets, sources, strict=True):
                    expanded.setdefault(target, set()).add(source)
    return {sheet: tuple(sorted(deps)) for sheet, deps in sorted(expanded.items())}


def reverse_dependencies(dependencies: Mapping[int, Sequence[int]]) -> dict[int, tuple[int, ...]]:
    dependents: dict[int, list[int]] = {}
    for sheet, deps in dependencies.items():
        for dep in deps:
            dependents.setdefault(dep, []).append(sheet)
    return {sheet: tuple(sorted(users)) for sheet, users in dependents.items()}


def find_cycle(dependencies: Mapping[int, Sequence[int]]) -> list[int] | None:
    """One dependency cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    visiting, done = 1, 2
    mark: dict[int, int] = {}
    for root in sorted(dependencies):
        if mark.get(root):
            continue
        stack: list[tuple[int, int]] = [(root, 0)]
        path: list[int] = []
        while stack:
            node, index = stack.pop()
            if index == 0:
                mark[node] = visiting
                path.append(node)
            deps = dependencies.get(node, ())
            if index < len(deps):
                stack.append((node, index + 1))
                dep = deps[index]
                state = mark.get(dep)
                if state == visiting:
                    return [*path[path.index(dep) :], dep]
                if state is None:
                    stack.append((dep, 0))
            else:
                mark[node] = done
                path.pop()
    return None


# --- per-sheet keys ----------------------------------------------------------------------


def _check_sheet_keys(score: Score, count: int, stages: int, warnings: list[str]) -> None:
    """Stage-keyed maps must name real stages; sheet-keyed ones are warned about."""
    sheet_cfg = score.sheet
    for key in ("skip_when", "skip_when_command"):
        for stage in getattr(sheet_cfg, key):
            if stage > stages:
                raise score.error(
                    f"stage {stage} does not exist (the score has {stages} stages)",
                    "sheet",
                    key,
                    stage,
                )
    for movement in score.movements:
        if movement > stages:
            warnings.append(
                f"movements.{movement}: there is no stage {movement} "
                f"(the score has {stages}); ignored"
            )
    for key in (
        "descriptions",
        "cadenzas",
        "per_sheet_instruments",
        "per_sheet_instrument_config",
        "per_sheet_fallbacks",
        "prompt_extensions",
        "spec_tags",
    ):
        for num in getattr(sheet_cfg, key):
            if num > count:
                warnings.append(
                    f"sheet.{key}.{num}: there is no sheet {num} (the score has {count}); ignored"
                )
    for instrument, nums in sheet_cfg.instrument_map.items():
        for num in nums:
            if num > count:
                warnings.append(
                    f"sheet.instrument_map.{instrument}: there is no sheet {num} "
                    f"(the score has {count}); ignored"
                )


@dataclass(frozen=True, slots=True)
class _Choice:
    """What an instrument name resolves to for sheets without per-sheet settings."""

    instrument: str
    config: Mapping[str, Any]
    timeout_seconds: float
    model: str | None


class _Resolver:
    """Per-sheet instrument, config, model, fallbacks and timeout (SCORE_FORMAT order).

    Everything that does not depend on the sheet number is resolved once per
    (instrument name, movement) and shared, so planning stays linear and cheap.
    """

    def __init__(self, score: Score, raw_prompt_instruments: frozenset[str]) -> None:
        self.score = score
        self.raw = raw_prompt_instruments
        sheet_cfg = score.sheet
        self.per_sheet_instruments = sheet_cfg.per_sheet_instruments
        self.per_sheet_config = sheet_cfg.per_sheet_instrument_config
        self.per_sheet_fallbacks = sheet_cfg.per_sheet_fallbacks
        self.by_map = {
            num: instrument for instrument, nums in sheet_cfg.instrument_map.items() for num in nums
        }
        self.sheet_overrides = score.backend.sheet_overrides
        self.timeout_overrides = score.backend.timeout_overrides
        self.descriptions = sheet_cfg.descriptions
        self.cadenzas = {num: tuple(items) for num, items in sheet_cfg.cadenzas.items()}
        self.extensions = {num: tuple(texts) for num, texts in sheet_cfg.prompt_extensions.items()}
        self.spec_tags = {num: tuple(tags) for num, tags in sheet_cfg.spec_tags.items()}
        self.skip_when = sheet_cfg.skip_when
        self.skip_when_command = sheet_cfg.skip_when_command
        self.score_config: Mapping[str, Any] = MappingProxyType(dict(score.instrument_config))
        self._choices: dict[tuple[str, int | None, bool], _Choice] = {}
        self._fallback_chains: dict[int | None, tuple[tuple[str, ...], tuple[Any, ...]]] = {}

    def sheet(self, num: int, meta: _Stage, start: int, end: int) -> SheetPlan:
        score = self.score
        movement = score.movements.get(meta.stage)
        if num in self.per_sheet_instruments:
            choice = self._choice(self.per_sheet_instruments[num], None, False)
        elif num in self.by_map:
            choice = self._choice(self.by_map[num], None, False)
        else:
            movement_used = meta.stage if movement is not None else None
            if movement is not None and movement.instrument is not None:
                choice = self._choice(movement.instrument, movement_used, False)
            elif score.instrument is not None:
                choice = self._choice(score.instrument, movement_used, False)
            else:
                choice = self._choice(score.backend.type, movement_used, True)
        config, timeout, model = choice.config, choice.timeout_seconds, choice.model
        per_sheet = self.per_sheet_config.get(num)
        if per_sheet:
            config = MappingProxyType({**config, **per_sheet})
            if "timeout_seconds" in per_sheet:
                timeout = self._config_timeout(
                    per_sheet["timeout_seconds"],
                    ("sheet", "per_sheet_instrument_config", num, "timeout_seconds"),
                )
            model = _config_model(config) or model
        if num in self.timeout_overrides:
            timeout = self.timeout_overrides[num]
        override = self.sheet_overrides.get(num)
        if override is not None:
            if override.timeout_seconds is not None:
                timeout = override.timeout_seconds
            model = override.model or override.cli_model or model
        if num in self.per_sheet_fallbacks:
            fallbacks, fallback_models = self._resolve_fallbacks(self.per_sheet_fallbacks[num])
        else:
            fallbacks, fallback_models = self._movement_fallbacks(meta.stage, movement)
        return SheetPlan(
            num=num,
            start_item=start,
            end_item=end,
            instrument=choice.instrument,
            timeout_seconds=timeout,
            stage=meta.stage,
            instance=meta.instance,
            fan_count=meta.fan_count,
            model=model,
            instrument_config=config,
            fallbacks=fallbacks,
            fallback_models=fallback_models,
            description=self.descriptions.get(num),
            movement_name=movement.name if movement is not None else None,
            skip_when=self.skip_when.get(meta.stage),
            skip_when_command=self.skip_when_command.get(meta.stage),
            cadenzas=self.cadenzas.get(num, ()),
            prompt_extensions=self.extensions.get(num, ()),
            spec_tags=self.spec_tags.get(num, ()),
            raw_prompt=choice.instrument in self.raw,
        )

    def _choice(self, name: str, movement: int | None, from_backend: bool) -> _Choice:
        """Alias -> profile, config merged score -> movement -> alias, and what follows."""
        key = (name, movement, from_backend)
        cached = self._choices.get(key)
        if cached is not None:
            return cached
        config: Mapping[str, Any] = self.score_config
        origin: tuple[Any, ...] = ("instrument_config", "timeout_seconds")
        if movement is not None:
            movement_config = self.score.movements[movement].instrument_config
            if movement_config:
                config = {**config, **movement_config}
                if "timeout_seconds" in movement_config:
                    origin = ("movements", movement, "instrument_config", "timeout_seconds")
        profile = name
        alias = self.score.instruments.get(name)
        if alias is not None:
            profile = alias.profile
            if alias.config:
                config = {**config, **alias.config}
                if "timeout_seconds" in alias.config:
                    origin = ("instruments", name, "config", "timeout_seconds")
        timeout = self.score.backend.timeout_seconds
        if "timeout_seconds" in config:
            timeout = self._config_timeout(config["timeout_seconds"], origin)
        model = _config_model(config)
        if model is None and from_backend:
            backend = self.score.backend
            model = backend.cli_model if name == DEFAULT_BACKEND_TYPE else backend.model
        choice = _Choice(legacy_instrument(profile), MappingProxyType(dict(config)), timeout, model)
        self._choices[key] = choice
        return choice

    def _config_timeout(self, value: Any, origin: tuple[Any, ...]) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise self.score.error(
                f"timeout_seconds must be a positive number of seconds (got {value!r})", *origin
            )
        return float(value)

    def _movement_fallbacks(
        self, stage: int, movement: Any
    ) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
        key = stage if movement is not None and movement.instrument_fallbacks else None
        cached = self._fallback_chains.get(key)
        if cached is None:
            names = movement.instrument_fallbacks if key is not None else None
            cached = self._resolve_fallbacks(names or self.score.instrument_fallbacks)
            self._fallback_chains[key] = cached
        return cached

    def _resolve_fallbacks(
        self, names: Sequence[str]
    ) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
        """Each fallback's instrument and model: an alias in ``instruments``
        brings its profile and the model of its config."""
        instruments: list[str] = []
        models: list[str | None] = []
        for name in names:
            alias = self.score.instruments.get(name)
            if alias is not None:
                instruments.append(legacy_instrument(alias.profile))
                models.append(_config_model(alias.config))
            else:
                instruments.append(legacy_instrument(name))
                models.append(None)
        return tuple(instruments), tuple(models)


def _config_model(config: Mapping[str, Any]) -> str | None:
    for key in ("model", "cli_model"):
        value = config.get(key)
        if isinstance(value, str) and value:
            return value
    return None
