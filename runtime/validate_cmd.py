"""``ensemble validate SCORE [--json] [--render [N]]``: check a score without running it.

Owns the command's arguments and output: a summary (or, with ``--json``,
exactly one JSON object describing the planned sheets and their
dependencies), and with ``--render`` the prompt each sheet's first attempt
would send. Exit status 0 when the score is valid, 2 with the error when it is
not. It only loads, plans and renders; nothing runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from runtime.errors import ConfigError
from runtime.instruments import load_profiles
from runtime.plan import Plan
from runtime.preflight import missing_instruments_message, plan_score, unknown_instruments
from runtime.prompts import PromptError, PromptTemplate, build_prompt
from runtime.score import Score, load_score

EXIT_VALID = 0
EXIT_INVALID = 2


def plan_document(plan: Plan) -> dict[str, Any]:
    """The ``--json`` form of a plan: sheets in order, dependency lists sorted."""
    return {
        "name": plan.name,
        "total_sheets": plan.total_sheets,
        "sheets": [
            {
                "num": sheet.num,
                "stage": sheet.stage,
                "instance": sheet.instance,
                "fan_count": sheet.fan_count,
                "instrument": sheet.instrument,
                "model": sheet.model,
                "fallbacks": list(sheet.fallbacks),
                "timeout_seconds": sheet.timeout_seconds,
                "start_item": sheet.start_item,
                "end_item": sheet.end_item,
            }
            for sheet in plan.sheets
        ],
        "dependencies": {
            str(sheet.num): sorted(plan.dependencies.get(sheet.num, ())) for sheet in plan.sheets
        },
    }


def render_prompts(score: Score, plan: Plan, only: int | None = None) -> dict[int, str]:
    """The first attempt's prompt of every sheet (or of sheet ``only``)."""
    template = PromptTemplate(score.prompt.template or "", variables=score.prompt.variables)
    numbers = [only] if only else [sheet.num for sheet in plan.sheets]
    prompts: dict[int, str] = {}
    for num in numbers:
        try:
            prompts[num] = build_prompt(plan, plan.sheet(num), template, attempt=1)
        except PromptError as exc:
            raise PromptError(
                f"sheet {num}: {exc.message}", key_path=exc.key_path, source=score.source
            ) from None
    return prompts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ensemble validate",
        description="Check a score: load it, plan its sheets and, on request, render prompts.",
    )
    parser.add_argument("score", help="path to the score's YAML file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--render",
        nargs="?",
        type=int,
        const=0,
        default=None,
        metavar="N",
        help="print the prompt of every sheet, or of sheet N, as its first attempt sends it",
    )
    return parser


def validate_main(argv: list[str], *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return EXIT_VALID if exit_.code == 0 else EXIT_INVALID
    try:
        score = load_score(args.score)
        # As `ensemble run` checks and plans it (raw_prompt profiles get no preamble).
        profiles = load_profiles()
        plan = plan_score(score, profiles)
        missing = unknown_instruments(plan, profiles)
        if missing:
            # A warning: the profile may be installed where the score will run.
            print(
                f"warning: {score.source or args.score}: "
                f"{missing_instruments_message(missing, profiles)}; "
                "'ensemble run' here would refuse the score",
                file=err,
            )
        prompts: dict[int, str] = {}
        if args.render is not None:
            if args.render and not 1 <= args.render <= plan.total_sheets:
                raise ConfigError(
                    f"--render {args.render}: the score has sheets 1 to {plan.total_sheets}",
                    source=args.score,
                )
            prompts = render_prompts(score, plan, args.render or None)
    except ConfigError as exc:
        print(f"error: {exc}", file=err)
        if args.json:
            print(
                json.dumps(
                    {
                        "valid": False,
                        "error": exc.message,
                        "key_path": exc.key_path,
                        "source": exc.source,
                        "line": exc.line,
                    }
                ),
                file=out,
            )
        return EXIT_INVALID

    if args.json:
        document = plan_document(plan)
        if args.render is not None:
            document["prompts"] = {str(num): text for num, text in prompts.items()}
        print(json.dumps(document), file=out)
        return EXIT_VALID

    stages = f" in {plan.total_stages} stages" if plan.total_stages != plan.total_sheets else ""
    print(
        f"{args.score}: valid score '{plan.name}': {plan.total_sheets} sheets{stages}, "
        f"instruments: {', '.join(sorted(plan.instruments)) or 'none'}",
        file=out,
    )
    for warning in [*score.warnings, *plan.warnings]:
        print(f"warning: {warning}", file=out)
    for num, text in prompts.items():
        sheet = plan.sheet(num)
        voice = f", voice {sheet.instance}/{sheet.fan_count}" if sheet.fan_count > 1 else ""
        print(
            f"\n===== sheet {num} (stage {sheet.stage}{voice}, {sheet.instrument}) =====", file=out
        )
        print(text, file=out, end="" if text.endswith("\n") else "\n")
    return EXIT_VALID


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(validate_main(sys.argv[1:]))
