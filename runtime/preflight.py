"""What the ``ensemble`` command checks of a score before anything starts.

Owns ``check_score``: everything a runtime built from the instrument profiles
would refuse at submit, found in advance, so that ``run`` starts no job while
another of its scores is bad. That is the plan, the prompt template compiling
(``plan_score``), and a profile for every instrument a sheet may run on,
fallbacks included (``unknown_instruments``; ``validate`` only warns of those,
since a profile may be installed where the score will run). Each problem is a
``ConfigError`` naming the score's file, and the line where it knows it. It
starts nothing and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from runtime.errors import UnknownInstrumentError
from runtime.instruments import InstrumentProfile, raw_prompt_instruments
from runtime.plan import Plan, build_plan
from runtime.prompts import PromptError, PromptTemplate
from runtime.score import Score

__all__ = ["check_score", "missing_instruments_message", "plan_score", "unknown_instruments"]


def plan_score(score: Score, profiles: Mapping[str, InstrumentProfile]) -> Plan:
    """The score's plan as a runtime on these ``profiles`` would make it, its
    prompt template compiled; raises the ``ConfigError`` a submit would."""
    plan = build_plan(score, raw_prompt_instruments=raw_prompt_instruments(profiles))
    try:
        PromptTemplate(score.prompt.template or "", variables=score.prompt.variables)
    except PromptError as exc:
        raise score.error(exc.message, *(exc.key_path or "prompt.template").split(".")) from None
    return plan


def unknown_instruments(plan: Plan, profiles: Mapping[str, InstrumentProfile]) -> list[str]:
    """The instruments a sheet may run on (fallbacks included) with no profile."""
    return sorted((plan.instruments | plan.fallback_instruments) - profiles.keys())


def check_score(score: Score, profiles: Mapping[str, InstrumentProfile]) -> Plan:
    """``plan_score``, and a profile for every instrument the plan may use:
    everything a runtime built from these profiles would refuse at submit."""
    plan = plan_score(score, profiles)
    missing = unknown_instruments(plan, profiles)
    if missing:
        raise UnknownInstrumentError(
            f"{missing_instruments_message(missing, profiles)}; fix the name, or add a "
            "profile in ./.ensemble/instruments/ or ~/.ensemble/instruments/ "
            "(see: ensemble instruments list)",
            key_path="instrument",
            source=score.source,
            line=score.line_of(("instrument",)),
        )
    return plan


def missing_instruments_message(
    missing: list[str], profiles: Mapping[str, InstrumentProfile]
) -> str:
    return (
        f"no instrument profile named {', '.join(repr(name) for name in missing)} "
        f"(known: {', '.join(sorted(profiles))})"
    )
