"""Planning: from a score to numbered sheets and their dependency graph.

Owns the sheet count, each sheet's item range and instrument, and the
dependency map with its reverse (dependents), checked for unknown sheets,
self-dependencies and cycles. Pure: no I/O, no actors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from runtime.errors import ScoreError
from runtime.score import Score, legacy_instrument


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


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the decision core needs to know about a job's sheets."""

    name: str
    sheets: tuple[SheetPlan, ...]
    dependencies: Mapping[int, tuple[int, ...]]
    dependents: Mapping[int, tuple[int, ...]]
    max_retries: int = 3
    retry_delay_seconds: float = 10.0
    max_parallel: int = 1
    workspace: str = "."
    instruments: frozenset[str] = field(default_factory=frozenset)

    @property
    def total_sheets(self) -> int:
        return len(self.sheets)

    def sheet(self, num: int) -> SheetPlan:
        return self.sheets[num - 1]


def sheet_count(total_items: int, size: int, start_item: int = 1) -> int:
    items = total_items - start_item + 1
    return max(0, -(-items // size))


def build_plan(score: Score) -> Plan:
    sheet_cfg = score.sheet
    count = sheet_count(sheet_cfg.total_items, sheet_cfg.size, sheet_cfg.start_item)
    instrument = score.instrument or legacy_instrument(score.backend.type)
    sheets = []
    for num in range(1, count + 1):
        start = (num - 1) * sheet_cfg.size + sheet_cfg.start_item
        end = min(start + sheet_cfg.size - 1, sheet_cfg.total_items)
        sheets.append(
            SheetPlan(
                num=num,
                start_item=start,
                end_item=end,
                instrument=instrument,
                timeout_seconds=score.backend.timeout_seconds,
                stage=num,
            )
        )
    dependencies = _sheet_dependencies(sheet_cfg.dependencies, count)
    return Plan(
        name=score.name,
        sheets=tuple(sheets),
        dependencies=dependencies,
        dependents=reverse_dependencies(dependencies, count),
        max_retries=score.retry.max_retries,
        retry_delay_seconds=score.retry.base_delay_seconds,
        max_parallel=score.parallel.max_concurrent if score.parallel.enabled else 1,
        workspace=score.workspace,
        instruments=frozenset(sheet.instrument for sheet in sheets),
    )


def _sheet_dependencies(
    declared: Mapping[int, Sequence[int]], count: int
) -> dict[int, tuple[int, ...]]:
    dependencies: dict[int, tuple[int, ...]] = {}
    for sheet, deps in declared.items():
        key = f"sheet.dependencies.{sheet}"
        if not 1 <= sheet <= count:
            raise ScoreError(f"sheet {sheet} does not exist (the score has {count})", key_path=key)
        for dep in deps:
            if dep == sheet:
                raise ScoreError(f"sheet {sheet} depends on itself", key_path=key)
            if not 1 <= dep <= count:
                raise ScoreError(
                    f"dependency {dep} does not exist (the score has {count} sheets)",
                    key_path=key,
                )
        dependencies[sheet] = tuple(sorted(set(deps)))
    _check_acyclic(dependencies)
    return dependencies


def reverse_dependencies(
    dependencies: Mapping[int, Sequence[int]], count: int
) -> dict[int, tuple[int, ...]]:
    dependents: dict[int, list[int]] = {}
    for sheet, deps in dependencies.items():
        for dep in deps:
            dependents.setdefault(dep, []).append(sheet)
    return {sheet: tuple(sorted(users)) for sheet, users in dependents.items()}


def _check_acyclic(dependencies: Mapping[int, Sequence[int]]) -> None:
    """Raise ScoreError naming one cycle, found by iterative depth-first search."""
    visiting, done = 1, 2
    mark: dict[int, int] = {}
    for root in dependencies:
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
                    cycle = [*path[path.index(dep) :], dep]
                    raise ScoreError(
                        "dependency cycle: " + " -> ".join(str(n) for n in cycle),
                        key_path="sheet.dependencies",
                    )
                if state is None:
                    stack.append((dep, 0))
            else:
                mark[node] = done
                path.pop()
