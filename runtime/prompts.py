"""Prompts: a score's template, compiled once per job, and the prompt of each attempt.

Owns the Jinja2 sandbox (a score never reaches Python internals), strict
undefined variables (an error naming the variable), the variables every sheet
gets (SEMANTICS S33), and the assembly of what an instrument receives
(SCORE_FORMAT "Prompts"): a preamble (first run or "retry #k"), prompt
extensions, injected skills and tools, injected context (prelude and cadenza
files and directories), the rendered template, the stakes, the "Success
requirements" listing the validations that apply, and in completion mode the
completion note (S8). An instrument whose profile has ``raw_prompt`` gets the
rendered template alone.

It reads the injected files (at attempt time, as Marianne does) but runs no
instrument and decides nothing about retries.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.runtime
from jinja2.sandbox import ImmutableSandboxedEnvironment
from loguru import logger

from runtime.context import truncate
from runtime.errors import ScoreError
from runtime.plan import Plan, SheetPlan
from runtime.score import InjectionItem
from runtime.validations import applicable_rules, describe_rule


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, where ``mapping[1]`` also finds a key written ``"1"``.

    YAML gives integer keys (``characters: {1: ...}``) but a score that went
    through JSON (a checkpointed job) has them as strings; templates index
    them with ``instance`` either way.
    """

    def getitem(self, obj: Any, argument: Any) -> Any:
        if (
            isinstance(obj, Mapping)
            and isinstance(argument, int)
            and not isinstance(argument, bool)
            and argument not in obj
            and str(argument) in obj
        ):
            argument = str(argument)
        return super().getitem(obj, argument)


_ENVIRONMENT = _Environment(
    undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
)
# One injected file is cut beyond this, so a stray log cannot flood a prompt.
MAX_INJECTION_CHARS = 200_000
# A directory injection includes at most this many files.
MAX_DIRECTORY_FILES = 100


class PromptError(ScoreError):
    """A template could not be compiled or rendered."""


class PromptTemplate:
    """A compiled template; ``render`` is cheap and safe to call for every attempt."""

    def __init__(
        self,
        source: str,
        *,
        variables: Mapping[str, Any] | None = None,
        key_path: str = "prompt.template",
    ) -> None:
        self.source = source
        self.key_path = key_path
        self._template = _compile(source, key_path)
        self._user_variables = dict(variables or {})

    @property
    def user_variables(self) -> Mapping[str, Any]:
        return self._user_variables

    def render(self, variables: Mapping[str, Any]) -> str:
        # User variables override the built-ins (SCORE_FORMAT "Prompts").
        context = {**variables, **self._user_variables}
        return _render(self._template, context, self.key_path)


def _compile(source: str, key_path: str) -> jinja2.Template:
    try:
        return _ENVIRONMENT.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise PromptError(
            f"template syntax error on line {exc.lineno}: {exc.message}", key_path=key_path
        ) from None


def _render(template: jinja2.Template, context: Mapping[str, Any], key_path: str) -> str:
    # One flat dict with the environment's globals, in a Context built without
    # the template's globals ChainMap: Jinja's own new_context walks that map on
    # every render, which cost more than the rendering itself.
    flat = {**_ENVIRONMENT.globals, **context}
    try:
        frame = jinja2.runtime.Context(_ENVIRONMENT, flat, template.name, template.blocks)
        return _ENVIRONMENT.concat(template.root_render_func(frame))
    except jinja2.UndefinedError as exc:
        raise PromptError(
            f"undefined template variable: {exc.message}; define it under prompt.variables "
            "or check its spelling",
            key_path=key_path,
        ) from None
    except jinja2.TemplateError as exc:
        raise PromptError(f"template error: {exc}", key_path=key_path) from None
    except RecursionError:
        raise PromptError("template recursion is too deep", key_path=key_path) from None
    except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as exc:
        raise PromptError(
            f"template failed: {type(exc).__name__}: {exc}", key_path=key_path
        ) from None


@lru_cache(maxsize=1024)
def _compiled_snippet(source: str, key_path: str) -> jinja2.Template:
    return _compile(source, key_path)


def render_snippet(source: str, variables: Mapping[str, Any], *, key_path: str) -> str:
    """Render a short template from a score (an injection path, a capture glob)."""
    if "{" not in source:
        return source
    return _render(_compiled_snippet(source, key_path), variables, key_path)


def sheet_variables(plan: Plan, sheet: SheetPlan, *, attempt: int = 1) -> dict[str, Any]:
    """The built-in variables of one sheet (S33); cross-sheet context starts empty."""
    total_stages = plan.total_stages or plan.total_sheets
    return {
        "sheet_num": sheet.num,
        "total_sheets": plan.total_sheets,
        "start_item": sheet.start_item,
        "end_item": sheet.end_item,
        "workspace": plan.workspace,
        "stage": sheet.stage,
        "movement": sheet.stage,
        "instance": sheet.instance,
        "voice": sheet.instance,
        "fan_count": sheet.fan_count,
        "voice_count": sheet.fan_count,
        "total_stages": total_stages,
        "total_movements": total_stages,
        "instrument_name": sheet.instrument,
        "attempt": attempt,
        "previous_outputs": {},
        "previous_files": {},
    }


# --- injections ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Injection:
    category: str  # context | skill | tool
    label: str
    text: str


def read_injections(
    items: Iterable[tuple[str, InjectionItem]],
    variables: Mapping[str, Any],
    workspace: str,
    score_dir: str | None = None,
) -> list[Injection]:
    """Read prelude/cadenza items; ``items`` pairs each with its key path for errors.

    Paths are templates resolved against the workspace; a relative path not
    found there is looked up next to the score (where Marianne's examples keep
    their libretto files). A missing file is logged and left out, as Marianne
    does: the seed files of a score often appear only once an earlier sheet
    has written them.
    """
    injections: list[Injection] = []
    for key_path, item in items:
        rendered = render_snippet(item.path, variables, key_path=key_path)
        path = _locate(Path(rendered).expanduser(), workspace, score_dir)
        if item.file is not None:
            text = _read_text(path, key_path)
            if text is not None:
                injections.append(Injection(item.category, path.name, text))
            continue
        if not path.is_dir():
            logger.warning("{}: directory {} does not exist; nothing injected", key_path, path)
            continue
        for file in _directory_files(path):
            text = _read_text(file, key_path)
            if text is not None:
                injections.append(Injection(item.category, str(file.relative_to(path)), text))
    return injections


def _locate(path: Path, workspace: str, score_dir: str | None) -> Path:
    if path.is_absolute():
        return path
    in_workspace = Path(workspace) / path
    if score_dir is not None and not in_workspace.exists():
        beside_score = Path(score_dir) / path
        if beside_score.exists():
            return beside_score
    return in_workspace


def _directory_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                files.append(Path(directory) / name)
                if len(files) >= MAX_DIRECTORY_FILES:
                    logger.warning(
                        "{}: more than {} files; the rest are not injected",
                        root,
                        MAX_DIRECTORY_FILES,
                    )
                    return files
    return files


def _read_text(path: Path, key_path: str) -> str | None:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            text = handle.read(MAX_INJECTION_CHARS + 1)
    except OSError as exc:
        logger.warning(
            "{}: cannot read {}: {}; nothing injected", key_path, path, exc.strerror or exc
        )
        return None
    return truncate(text, MAX_INJECTION_CHARS)


# --- assembly ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompletionNote:
    """S8: what the previous attempt got right and what is still missing."""

    passed: tuple[str, ...]
    failed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PromptParts:
    template: str
    preamble: str = ""
    extensions: tuple[str, ...] = ()
    thinking_method: str | None = None
    injections: tuple[Injection, ...] = ()
    stakes: str | None = None
    requirements: tuple[str, ...] = ()
    completion: CompletionNote | None = None


def preamble(plan: Plan, sheet: SheetPlan, retry_number: int = 0) -> str:
    """The opening lines: which sheet this is and whether it is retry #k (S11)."""
    where = f"sheet {sheet.num} of {plan.total_sheets} of the job '{plan.name}'"
    if sheet.fan_count > 1:
        where += f" (voice {sheet.instance} of {sheet.fan_count} in stage {sheet.stage})"
    if retry_number <= 0:
        return (
            f"You are working on {where}, in the workspace {plan.workspace}.\n"
            "Do the task below. Your work is checked against the success requirements "
            "at the end."
        )
    return (
        f"This is retry #{retry_number} of {where}, in the workspace {plan.workspace}.\n"
        "An earlier attempt did not succeed. Look at what is already in the workspace, "
        "then do the task below so that every success requirement holds."
    )


def completion_section(note: CompletionNote) -> str:
    lines = [
        "## Completing the previous attempt",
        "The previous attempt did part of the work. Keep what passes and finish the rest.",
    ]
    if note.passed:
        lines.append("Already passing:")
        lines.extend(f"- {text}" for text in note.passed)
    if note.failed:
        lines.append("Still failing:")
        lines.extend(f"- {text}" for text in note.failed)
    return "\n".join(lines)


_INJECTION_HEADINGS = (("skill", "Injected Skills"), ("tool", "Injected Tools"))


def assemble_prompt(parts: PromptParts, *, raw: bool = False) -> str:
    """The prompt in SCORE_FORMAT's order; ``raw`` instruments get the template alone."""
    if raw:
        return parts.template
    sections: list[str] = []
    if parts.preamble:
        sections.append(parts.preamble)
    if parts.extensions:
        sections.append("\n\n".join(text.strip() for text in parts.extensions))
    for category, heading in _INJECTION_HEADINGS:
        block = _injection_block(heading, parts.injections, category)
        if block:
            sections.append(block)
    if parts.thinking_method:
        sections.append("## Thinking method\n" + parts.thinking_method.strip())
    context = _injection_block("Injected Context", parts.injections, "context")
    if context:
        sections.append(context)
    sections.append(parts.template.strip("\n"))
    if parts.stakes:
        sections.append("## Stakes\n" + parts.stakes.strip())
    if parts.requirements:
        sections.append(
            "## Success requirements\nThis sheet is complete when all of these hold:\n"
            + "\n".join(f"- {text}" for text in parts.requirements)
        )
    if parts.completion is not None:
        sections.append(completion_section(parts.completion))
    return "\n\n".join(section for section in sections if section) + "\n"


def _injection_block(heading: str, injections: Sequence[Injection], category: str) -> str:
    chosen = [item for item in injections if item.category == category]
    if not chosen:
        return ""
    body = "\n\n".join(f"### {item.label}\n{item.text.strip()}" for item in chosen)
    return f"## {heading}\n{body}"


def injection_items(plan: Plan, sheet: SheetPlan) -> list[tuple[str, InjectionItem]]:
    """The sheet's prelude then cadenza items, each with its key path."""
    items = [(f"sheet.prelude.{index}", item) for index, item in enumerate(plan.prelude)]
    items.extend(
        (f"sheet.cadenzas.{sheet.num}.{index}", item) for index, item in enumerate(sheet.cadenzas)
    )
    return items


def build_prompt(
    plan: Plan,
    sheet: SheetPlan,
    template: PromptTemplate,
    *,
    attempt: int = 1,
    retry_number: int = 0,
    variables: Mapping[str, Any] | None = None,
    completion: CompletionNote | None = None,
) -> str:
    """Everything an attempt sends: render, read injections, list requirements, assemble.

    ``attempt`` counts every attempt of the sheet, ``retry_number`` is k for
    retry #k (0 for a first run or a completion attempt). ``variables``
    defaults to ``sheet_variables``; pass them to add cross-sheet context.
    Raises ``PromptError`` when the template (or an injection path) cannot be
    rendered.
    """
    built_in = (
        dict(variables) if variables is not None else sheet_variables(plan, sheet, attempt=attempt)
    )
    rendered = template.render(built_in)
    if sheet.raw_prompt:
        return rendered
    everything = {**built_in, **template.user_variables}
    workspace = plan.workspace
    requirements = tuple(
        describe_rule(rule, built_in, workspace)
        for _, rule in applicable_rules(plan.validations, built_in)
    )
    parts = PromptParts(
        template=rendered,
        preamble=preamble(plan, sheet, retry_number),
        extensions=(*plan.prompt_extensions, *sheet.prompt_extensions),
        thinking_method=plan.thinking_method,
        injections=tuple(
            read_injections(injection_items(plan, sheet), everything, workspace, plan.score_dir)
        ),
        stakes=plan.stakes,
        requirements=requirements,
        completion=completion,
    )
    return assemble_prompt(parts)
