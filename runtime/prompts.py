"""Prompt rendering: a score's template, compiled once per job, rendered per sheet.

Owns the Jinja2 sandbox (a score never reaches Python internals), strict
undefined variables (an error naming the variable), and the variables every
sheet gets (SEMANTICS S33). It runs no instrument and reads no files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runtime.errors import ScoreError
from runtime.plan import Plan, SheetPlan

_ENVIRONMENT = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
)


class PromptError(ScoreError):
    """A template could not be compiled or rendered."""


class PromptTemplate:
    """A compiled template; ``render`` is cheap and safe to call for every attempt."""

    def __init__(self, source: str, *, variables: Mapping[str, Any] | None = None) -> None:
        try:
            self._template = _ENVIRONMENT.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise PromptError(
                f"template syntax error on line {exc.lineno}: {exc.message}",
                key_path="prompt.template",
            ) from None
        self._user_variables = dict(variables or {})

    def render(self, variables: Mapping[str, Any]) -> str:
        # User variables override the built-ins (SCORE_FORMAT "Prompts"). One flat
        # dict with the environment's globals and a shared context skips Jinja's
        # per-render ChainMap, which cost more than the rendering itself.
        context = {**_ENVIRONMENT.globals, **variables, **self._user_variables}
        template = self._template
        try:
            return _ENVIRONMENT.concat(  # type: ignore[attr-defined]
                template.root_render_func(template.new_context(context, shared=True))
            )
        except jinja2.UndefinedError as exc:
            raise PromptError(
                f"undefined template variable: {exc.message}", key_path="prompt.template"
            ) from None
        except jinja2.TemplateError as exc:
            raise PromptError(f"template error: {exc}", key_path="prompt.template") from None


def sheet_variables(plan: Plan, sheet: SheetPlan, *, attempt: int = 1) -> dict[str, Any]:
    """The built-in variables of one sheet (S33)."""
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
        "instrument_name": sheet.instrument,
        "attempt": attempt,
    }
